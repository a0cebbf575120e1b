//! `huizhen-loadtest`: simulated participants over real signaling, ICE, DTLS and SRTP against
//! huizhen (or Janus VideoRoom, for comparison). See `loadtest/README.md`.

mod client;
mod huizhen;
mod janus;
mod link;
mod media;
mod payload;
mod peer;
mod procstat;
mod report;
mod run;
mod scenario;
mod scrape;
mod stats;
mod turn;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};

use crate::link::LinkConfig;
use crate::media::{MediaPlan, SIMULCAST_LAYERS};
use crate::run::{CapacityLimits, RunConfig, Target};
use crate::scenario::{Scenario, ScenarioKind};

/// Which SFU to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetKind {
    /// huizhen (`/ws` signaling).
    Huizhen,
    /// Janus Gateway VideoRoom (WebSocket transport).
    Janus,
}

#[derive(Debug, Parser)]
#[command(
    name = "huizhen-loadtest",
    version,
    about = "Load generator for huizhen: follow-up visits, expert panels and teaching rooms over real WebRTC"
)]
struct Args {
    /// The SFU under load.
    #[arg(long, value_enum, default_value = "huizhen")]
    target: TargetKind,
    /// Signaling URL (huizhen: ws://127.0.0.1:8080/ws; Janus: ws://127.0.0.2:8188/).
    #[arg(long)]
    url: Option<String>,
    /// Scenario.
    #[arg(long, value_enum, default_value = "followup")]
    scenario: ScenarioKind,
    /// Units: visits (followup) or rooms (panel, teaching). With --find-capacity: the first step.
    #[arg(long, default_value_t = 4)]
    units: u32,
    /// Participants per panel room.
    #[arg(long, default_value_t = 6)]
    room_size: u32,
    /// Observers per teaching room.
    #[arg(long, default_value_t = 20)]
    observers: u32,
    /// Video bitrate per publisher, bit/s (0: audio only).
    #[arg(long, default_value_t = 1_200_000)]
    video_bitrate: u64,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Seconds between keyframes.
    #[arg(long, default_value_t = 2.0)]
    keyframe_interval: f64,
    /// Publish no audio.
    #[arg(long)]
    no_audio: bool,
    /// Publish each camera as simulcast in these layers (rids, comma separated, of `q`
    /// 150 kbit/s 320x180, `h` 500 kbit/s 640x360, `f` --video-bitrate 1280x720), e.g.
    /// `q,h,f`. A server that does not announce simulcast gets one layer. huizhen only.
    #[arg(long, value_delimiter = ',')]
    simulcast: Vec<String>,
    /// Put receivers behind an emulated downlink of this many kbit/s (a token bucket on
    /// their receive path; their TWCC feedback tells the server). huizhen only.
    #[arg(long)]
    downlink_kbps: Option<u64>,
    /// Longest a datagram may queue on the capped downlink before it is dropped, ms.
    #[arg(long, default_value_t = 200)]
    downlink_queue_ms: u64,
    /// Share of the receivers behind the capped downlink (spread evenly), 0..=1.
    #[arg(long, default_value_t = 1.0)]
    capped_share: f64,
    /// Share of the participants (spread evenly over them, 0..=1) that connect through the
    /// server's embedded TURN: the TURN/UDP server and credential of `joined.ice_servers`,
    /// relay-only ICE (a browser's `iceTransportPolicy: "relay"`). huizhen only.
    #[arg(long, default_value_t = 0.0)]
    relay_share: f64,
    /// The whole run's length in seconds (it stops by itself then).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Participants started per second.
    #[arg(long, default_value_t = 50)]
    ramp: u32,
    /// Churn for a soak: each unit's participants leave after about this many seconds
    /// (spread from half to one and a half times it) and a fresh unit, in new rooms, takes
    /// its place, so the load stays steady while people join and leave all the time.
    #[arg(long)]
    churn_secs: Option<f64>,
    /// Seconds to settle after the last join before measuring.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// The server's pid, to sample its CPU time and memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// huizhen's /metrics URL (e.g. http://127.0.0.1:8080/metrics): report the server's own
    /// receive-to-send time per packet from its forward-latency histogram.
    #[arg(long)]
    metrics_url: Option<String>,
    /// Address the simulated clients bind to (loopback; 127.0.0.2 for Janus in its namespace).
    #[arg(long, default_value = "127.0.0.1")]
    client_ip: IpAddr,
    /// Ramp the load up until loss or delay exceed their limits; report the last good level.
    #[arg(long)]
    find_capacity: bool,
    /// Units added per capacity step.
    #[arg(long, default_value_t = 4)]
    step_units: u32,
    /// Seconds measured per capacity step.
    #[arg(long, default_value_t = 8)]
    step_secs: u64,
    /// Most units the capacity search tries.
    #[arg(long, default_value_t = 1000)]
    max_units: u32,
    /// Loss limit of the capacity search, percent.
    #[arg(long, default_value_t = 1.0)]
    max_loss_percent: f64,
    /// 99th-percentile delay limit of the capacity search, ms.
    #[arg(long, default_value_t = 50.0)]
    max_p99_ms: f64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
    /// Exit with status 1 unless every participant joined, media arrived and nothing was lost
    /// to a crash (for smoke tests).
    #[arg(long)]
    require_media: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("huizhen-loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = config(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let local = tokio::task::LocalSet::new();
    let report = local.block_on(&runtime, run::run(config))?;
    println!("{}", report::table(&report));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).expect("reports serialize");
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.require_media {
        let mut problems = Vec::new();
        if !report.errors.is_empty() {
            problems.push(format!("participants stopped early: {:?}", report.errors));
        }
        if report.rx.joins < u64::from(report.participants.min(count_receivers(&report))) {
            problems.push(format!(
                "only {} participants received media",
                report.rx.joins
            ));
        }
        if report.rx.received == 0 {
            problems.push("no media received in the measured window".into());
        }
        if !problems.is_empty() {
            eprintln!("huizhen-loadtest: {}", problems.join("; "));
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Participants that receive something (every one but a teaching room's publisher).
fn count_receivers(report: &run::Report) -> u32 {
    (0..report.units)
        .flat_map(|u| report.scenario.participants(u, 0))
        .filter(|p| !p.receives.is_empty())
        .count() as u32
}

fn config(args: &Args) -> anyhow::Result<RunConfig> {
    anyhow::ensure!(
        args.units > 0 || args.find_capacity,
        "--units must be at least 1"
    );
    anyhow::ensure!(args.duration > 0, "--duration must be at least 1 s");
    if let Some(c) = args.churn_secs {
        anyhow::ensure!(c >= 1.0, "--churn-secs must be at least 1");
        anyhow::ensure!(!args.find_capacity, "--churn-secs is for a fixed load");
    }
    anyhow::ensure!(
        (2..=100).contains(&args.room_size),
        "--room-size must be within 2..=100"
    );
    anyhow::ensure!(args.fps <= 120, "--fps must be at most 120");
    anyhow::ensure!(
        args.keyframe_interval > 0.0,
        "--keyframe-interval must be positive"
    );
    let mut simulcast = Vec::new();
    for rid in &args.simulcast {
        let known = SIMULCAST_LAYERS.iter().find(|(r, _, _)| r == rid);
        let Some((rid, _, _)) = known else {
            anyhow::bail!("--simulcast: unknown rid {rid:?} (use q, h, f)");
        };
        anyhow::ensure!(!simulcast.contains(rid), "--simulcast: {rid} given twice");
        simulcast.push(*rid);
    }
    // Lowest first, whatever the order given.
    simulcast.sort_by_key(|rid| SIMULCAST_LAYERS.iter().position(|(r, _, _)| r == rid));
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.capped_share),
        "--capped-share must be within 0..=1"
    );
    let downlink = match args.downlink_kbps {
        Some(kbps) => {
            anyhow::ensure!(kbps > 0, "--downlink-kbps must be positive");
            Some(LinkConfig {
                rate_bps: kbps * 1000,
                queue: Duration::from_millis(args.downlink_queue_ms),
            })
        }
        None => None,
    };
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.relay_share),
        "--relay-share must be within 0..=1"
    );
    if args.target == TargetKind::Janus {
        anyhow::ensure!(args.relay_share == 0.0, "--relay-share is for huizhen only");
        anyhow::ensure!(simulcast.is_empty(), "--simulcast is for huizhen only");
        anyhow::ensure!(downlink.is_none(), "--downlink-kbps is for huizhen only");
    }
    let url = args.url.clone().unwrap_or_else(|| match args.target {
        TargetKind::Huizhen => "ws://127.0.0.1:8080/ws".into(),
        TargetKind::Janus => "ws://127.0.0.2:8188/".into(),
    });
    let target = match args.target {
        TargetKind::Huizhen => Target::Huizhen { url },
        TargetKind::Janus => Target::Janus { url },
    };
    let run_id = std::process::id();
    Ok(RunConfig {
        target,
        scenario: Scenario {
            kind: args.scenario,
            room_size: args.room_size,
            observers: args.observers,
        },
        units: args.units,
        plan: MediaPlan {
            audio: !args.no_audio,
            video_bitrate: args.video_bitrate,
            fps: args.fps,
            keyframe_interval: Duration::from_secs_f64(args.keyframe_interval),
            simulcast,
            ..MediaPlan::default()
        },
        duration: Duration::from_secs(args.duration),
        ramp_per_sec: args.ramp,
        warmup: Duration::from_secs_f64(args.warmup),
        server_pid: args.server_pid,
        metrics_url: args.metrics_url.clone(),
        client_ip: args.client_ip,
        room_prefix: format!("load-{run_id}"),
        capacity: args.find_capacity.then_some(CapacityLimits {
            step_units: args.step_units.max(1),
            step_secs: args.step_secs.max(1),
            max_units: args.max_units,
            max_loss: args.max_loss_percent / 100.0,
            max_p99_ms: args.max_p99_ms,
        }),
        progress: !args.quiet,
        downlink,
        capped_share: args.capped_share,
        relay_share: args.relay_share,
        churn: args.churn_secs.map(Duration::from_secs_f64),
    })
}
