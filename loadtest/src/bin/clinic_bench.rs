//! `huizhen-clinic-bench`: measures the network clinic of a real `huizhen serve` process
//! (issue 8): a doctor's action round trip with a large history against an empty store,
//! durable clinic events per second, memory per ended consultation, and a flood of
//! unauthenticated WebSocket frames. It starts and stops the server itself (one fresh data
//! directory per scenario) and prints a markdown table. See `loadtest/README.md`.
//!
//! A measuring tool: it asserts nothing about timings; it fails only when the server does
//! not start or does not follow the protocol.

#[path = "clinic_bench/client.rs"]
mod client;
#[path = "clinic_bench/events.rs"]
mod events;
#[path = "clinic_bench/flood.rs"]
mod flood;
#[path = "clinic_bench/history.rs"]
mod history;
#[path = "clinic_bench/hold.rs"]
mod hold;
#[path = "clinic_bench/roundtrip.rs"]
mod roundtrip;
#[path = "clinic_bench/server.rs"]
mod server;
#[path = "clinic_bench/stats.rs"]
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};

use crate::server::{ServerDir, ServerSpec};
use crate::stats::Report;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// 1: set_away round trip, empty store vs. a large history.
    Roundtrip,
    /// 2 and 3: durable events/s, action latencies, memory per 10,000 consultations.
    Events,
    /// 4: unauthenticated frame flood: audit rows, closed sockets, REST latency.
    Flood,
    /// 5: strangers' idle and slow connections held: memory, and a doctor joining meanwhile.
    Hold,
}

#[derive(Debug, Parser)]
#[command(
    name = "huizhen-clinic-bench",
    version,
    about = "Clinic benchmark of a huizhen server binary: action round trip vs. history size, durable events/s, memory per consultation, unauthenticated flood"
)]
struct Args {
    /// The `huizhen` binary to measure (started as `huizhen serve --config <generated>`).
    #[arg(long, env = "HUIZHEN_BIN")]
    server: PathBuf,
    /// Scenarios to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "roundtrip,events,flood"
    )]
    scenarios: Vec<Scenario>,
    /// Directory for the servers' data (one subdirectory per scenario); default a new
    /// directory under the system temp dir, removed at the end unless --keep.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the work directory (databases, server logs).
    #[arg(long)]
    keep: bool,
    /// Pin the server to this CPU with taskset (the script uses 0 and runs the bench on 1).
    #[arg(long)]
    server_cpu: Option<usize>,
    /// Longest wait for a server to start (a large store is loaded first), seconds.
    #[arg(long, default_value_t = 600)]
    start_timeout: u64,

    /// Round trips on the empty store.
    #[arg(long, default_value_t = 200)]
    rt_iterations: u32,
    /// Round trips at each history size.
    #[arg(long, default_value_t = 50)]
    rt_history_iterations: u32,
    /// History sizes, APPOINTMENTS:ENDED_CONSULTATIONS, growing, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "40000:8000,100000:20000")]
    rt_history: Vec<String>,
    /// Clinics the history is spread over (the measured doctor's included).
    #[arg(long, default_value_t = 10)]
    rt_history_clinics: usize,
    /// Longest measuring time per store size, seconds.
    #[arg(long, default_value_t = 120)]
    rt_max_secs: u64,

    /// Doctors working at once.
    #[arg(long, default_value_t = 20)]
    doctors: usize,
    /// Consultations to run (each: check_in, invite, accept_invitation, end_consultation).
    #[arg(long, default_value_t = 10_000)]
    consultations: usize,
    /// Patients each clinic keeps checked in ahead of the one being seen.
    #[arg(long, default_value_t = 2)]
    queue_depth: usize,
    /// Longest measured window of the events scenario, seconds.
    #[arg(long, default_value_t = 300)]
    events_max_secs: u64,

    /// Unauthenticated frames in the flood.
    #[arg(long, default_value_t = 10_000)]
    flood_frames: usize,
    /// Sockets the flood uses at once.
    #[arg(long, default_value_t = 100)]
    flood_sockets: usize,
    /// REST probes on the idle server (the baseline of the flood's latency ratio).
    #[arg(long, default_value_t = 500)]
    rest_probes: usize,
    /// Longest flood, seconds.
    #[arg(long, default_value_t = 120)]
    flood_max_secs: u64,
    /// Count the flood's audit rows this long after it (a server may write the refusals it
    /// aggregated when their interval ends), seconds.
    #[arg(long, default_value_t = 65)]
    flood_audit_wait: u64,

    /// Connections of each kind held at once (scenario hold).
    #[arg(long, default_value_t = 10_000)]
    hold_count: usize,
    /// Source addresses they come from (127.0.1.1 on; the server caps 1,000 per source).
    #[arg(long, default_value_t = 20)]
    hold_sources: usize,
    /// Doctor joins measured per kind.
    #[arg(long, default_value_t = 5)]
    hold_joins: usize,

    /// Also write the table as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The host's 1-minute load average (other work on the machine skews the figures).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if !args.server.is_file() {
        bail!("no server binary at {}", args.server.display());
    }
    let sizes = args
        .rt_history
        .iter()
        .map(|s| {
            let (a, c) = s
                .split_once(':')
                .context("history size is APPOINTMENTS:CONSULTATIONS")?;
            Ok((a.trim().parse()?, c.trim().parse()?))
        })
        .collect::<anyhow::Result<Vec<(u64, u64)>>>()?;
    let (work, temporary) = match &args.work_dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!(
                "huizhen-clinic-bench-{:08x}",
                server::random_u64() as u32
            )),
            true,
        ),
    };
    std::fs::create_dir_all(&work)?;
    let spec = ServerSpec {
        bin: args.server.canonicalize()?,
        cpu: args.server_cpu,
        start_timeout: Duration::from_secs(args.start_timeout),
    };
    eprintln!(
        "server {} (work dir {})",
        spec.bin.display(),
        work.display()
    );

    let mut report = Report::default();
    let mut failed = Vec::new();
    let mut done = Vec::new();
    for scenario in &args.scenarios {
        if done.contains(scenario) {
            continue;
        }
        done.push(*scenario);
        let name = format!("{scenario:?}").to_lowercase();
        let dir = ServerDir::create(&work.join(&name))?;
        let (load_before, began) = (load_average(), std::time::Instant::now());
        let result = match scenario {
            Scenario::Roundtrip => {
                let settings = roundtrip::Settings {
                    iterations: args.rt_iterations,
                    history_iterations: args.rt_history_iterations,
                    sizes: sizes.clone(),
                    history_clinics: args.rt_history_clinics,
                    max_secs: args.rt_max_secs,
                };
                roundtrip::run(&spec, &dir, &settings, &mut report).await
            }
            Scenario::Events => {
                let settings = events::Settings {
                    doctors: args.doctors,
                    consultations: args.consultations,
                    queue_depth: args.queue_depth,
                    max_secs: args.events_max_secs,
                    setup_concurrency: 16,
                };
                events::run(&spec, &dir, &settings, &mut report).await
            }
            Scenario::Flood => {
                let settings = flood::Settings {
                    frames: args.flood_frames,
                    sockets: args.flood_sockets,
                    idle_probes: args.rest_probes,
                    max_secs: args.flood_max_secs,
                    audit_wait_secs: args.flood_audit_wait,
                };
                flood::run(&spec, &dir, &settings, &mut report).await
            }
            Scenario::Hold => {
                let settings = hold::Settings {
                    count: args.hold_count,
                    sources: args.hold_sources.clamp(1, 250),
                    joins: args.hold_joins,
                };
                tokio::task::LocalSet::new()
                    .run_until(hold::run(&spec, &dir, &settings, &mut report))
                    .await
            }
        };
        report.add(
            "host",
            &format!("{name}: 1-min load average before / after; duration"),
            format!(
                "{load_before} / {}; {:.0} s",
                load_average(),
                began.elapsed().as_secs_f64()
            ),
        );
        if let Err(e) = result {
            eprintln!("scenario {name} failed: {e:#}");
            report.add(&name, "FAILED", format!("{e:#}"));
            failed.push(name);
        }
    }

    println!("{}", report.markdown());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)?;
    }
    if temporary && !args.keep {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("kept {}", work.display());
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}
