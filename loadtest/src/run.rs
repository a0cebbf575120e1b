//! Runs a scenario against a target: starts participants at the ramp rate, samples the server
//! and the generator, shows progress, and measures a steady window (or, with
//! `find_capacity`, one window per load step until loss or delay go over their limits).
//! A share of the participants can connect through the server's embedded TURN (relay-only
//! ICE over TURN/UDP); the report then puts what they got next to the direct ones, with the
//! server's relayed-packet counters.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::sync::watch;

use crate::janus::{self, Feeds};
use crate::link::LinkConfig;
use crate::media::MediaPlan;
use crate::peer::{Shared, TxCounters};
use crate::procstat::{self, ProcSample};
use crate::scenario::{ParticipantSpec, Scenario};
use crate::scrape::{self, Buckets, TurnSample};
use crate::stats::{Counts, Group, GroupSummary, PathSummary, RxSummary};

/// Which SFU and where.
#[derive(Debug, Clone)]
pub enum Target {
    /// huizhen's `/ws` signaling.
    Huizhen {
        /// e.g. `ws://127.0.0.1:8080/ws`.
        url: String,
    },
    /// Janus's VideoRoom over its WebSocket transport.
    Janus {
        /// e.g. `ws://127.0.0.2:8188/`.
        url: String,
    },
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Huizhen { .. } => "huizhen",
            Target::Janus { .. } => "janus",
        }
    }
}

/// Limits of `--find-capacity`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CapacityLimits {
    /// Units added per step.
    pub step_units: u32,
    /// Measured seconds per step.
    pub step_secs: u64,
    /// Highest number of units tried.
    pub max_units: u32,
    /// Loss above which a level fails (fraction).
    pub max_loss: f64,
    /// 99th-percentile delay above which a level fails (ms).
    pub max_p99_ms: f64,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The SFU.
    pub target: Target,
    /// The scenario.
    pub scenario: Scenario,
    /// Units (visits or rooms) to run, or to start with when finding capacity.
    pub units: u32,
    /// What each publisher sends.
    pub plan: MediaPlan,
    /// The whole run stops after this, whatever happens.
    pub duration: Duration,
    /// Participants started per second.
    pub ramp_per_sec: u32,
    /// Settling time after the last join before measuring.
    pub warmup: Duration,
    /// The server's process, for CPU and memory.
    pub server_pid: Option<u32>,
    /// huizhen's `/metrics`, for the server's own forward-latency histogram.
    pub metrics_url: Option<String>,
    /// Address the simulated clients bind to.
    pub client_ip: IpAddr,
    /// Room name prefix (a fresh one per run keeps runs apart).
    pub room_prefix: String,
    /// Find the capacity instead of running a fixed load.
    pub capacity: Option<CapacityLimits>,
    /// Draw the live progress line.
    pub progress: bool,
    /// The emulated downlink of the capped receivers, if any.
    pub downlink: Option<LinkConfig>,
    /// Share of the receivers behind `downlink` (0..=1).
    pub capped_share: f64,
    /// Share of the participants that connect through the server's TURN (0..=1, huizhen only).
    pub relay_share: f64,
    /// Churn: a unit's participants leave after about this long (spread from half to one and
    /// a half times it) and a fresh unit, in new rooms, takes its place (a soak's join and
    /// leave traffic at a steady load). `None`: everyone stays to the end.
    pub churn: Option<Duration>,
}

/// What the relayed participants did, and what the server's TURN relayed in the window.
#[derive(Debug, Clone, Serialize)]
pub struct RelayReport {
    /// The share asked for (`--relay-share`).
    pub share: f64,
    /// Participants started relayed (of `participants`).
    pub participants: u32,
    /// Of which publish.
    pub publishers: u32,
    /// Relayed participants that got their TURN allocation.
    pub allocations: u64,
    /// Relayed participants whose allocation failed.
    pub allocation_failures: u64,
}

/// The embedded TURN server's counters over the measured window (scraped from `/metrics`).
#[derive(Debug, Clone, Serialize)]
pub struct TurnFigures {
    /// Packets relayed from clients to the SFU in the window.
    pub relayed_in_packets: u64,
    /// Packets relayed from the SFU to clients in the window.
    pub relayed_out_packets: u64,
    /// Both directions per second.
    pub relayed_pps: f64,
    /// Payload bytes relayed in the window, both directions.
    pub relayed_bytes: u64,
    /// Allocations held at the end of the window.
    pub allocations: u64,
    /// Messages refused or dropped in the window.
    pub refused: u64,
}

/// The capped downlink of a run, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct DownlinkReport {
    /// Line rate, kbit/s.
    pub kbps: f64,
    /// Queue limit, ms.
    pub queue_ms: f64,
    /// Share of the receivers behind it.
    pub capped_share: f64,
}

/// CPU and memory figures of a process over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct ProcFigures {
    /// Mean CPU use, percent of one core.
    pub cpu_percent: f64,
    /// CPU milliseconds per 1,000 forwarded packets.
    pub cpu_ms_per_1000_packets: f64,
    /// Resident memory at the end of the window, MiB.
    pub rss_mib: f64,
    /// Growth of resident memory since before the first join, per subscribed track, KiB.
    pub rss_kib_per_subscribed_track: f64,
}

/// The server's own receive-to-send time per packet over the window (huizhen's histogram).
#[derive(Debug, Clone, Serialize)]
pub struct ServerLatency {
    /// Packets observed.
    pub packets: u64,
    /// Median, ms (interpolated within the histogram's buckets).
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

/// One load step of `--find-capacity`.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Units running.
    pub units: u32,
    /// Participants running.
    pub participants: u32,
    /// Packets received by subscribers per second.
    pub forwarded_pps: f64,
    /// Lost fraction in the window.
    pub loss: f64,
    /// Median delay, ms.
    pub delay_p50_ms: f64,
    /// 99th-percentile delay, ms.
    pub delay_p99_ms: f64,
    /// Server CPU, percent of one core (if its pid is known).
    pub server_cpu_percent: Option<f64>,
    /// Generator CPU, percent of one core.
    pub generator_cpu_percent: f64,
    /// Within the limits.
    pub good: bool,
}

/// The capacity search's result.
#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    /// The limits used.
    pub limits: CapacityLimits,
    /// Every step measured.
    pub steps: Vec<Step>,
    /// The last step within the limits, if any.
    pub last_good: Option<Step>,
    /// Why the search stopped.
    pub stopped_because: String,
}

/// The run's report (also written as JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `huizhen` or `janus`.
    pub target: String,
    /// The scenario.
    pub scenario: Scenario,
    /// Units at the end.
    pub units: u32,
    /// Participants at the end.
    pub participants: u32,
    /// Of which publish.
    pub publishers: u32,
    /// Tracks subscribed (audio and video count separately).
    pub subscribed_tracks: u32,
    /// Media plan of each publisher.
    pub video_bitrate: u64,
    /// Video frames per second.
    pub fps: u32,
    /// Packets per second one publisher sends (every layer).
    pub publisher_pps: f64,
    /// Simulcast rids each camera is published in (empty: one layer).
    pub simulcast: Vec<String>,
    /// The capped downlink, if some receivers were behind one.
    pub downlink: Option<DownlinkReport>,
    /// What each receiver group (uncapped, capped) got in the window.
    pub groups: Vec<GroupSummary>,
    /// Seconds in the measured window.
    pub measured_secs: f64,
    /// Packets the subscribers received per second in the window (= forwarded by the SFU).
    pub forwarded_pps: f64,
    /// The receivers' figures (loss and delay over the window; joins over the run).
    pub rx: RxSummary,
    /// The senders' counters (whole run).
    pub tx: TxCounters,
    /// The server's CPU and memory, when its pid was given.
    pub server: Option<ProcFigures>,
    /// The generator's own CPU and memory.
    pub generator: ProcFigures,
    /// Time a packet spends inside the server, from its own histogram (`--metrics-url`).
    pub server_latency: Option<ServerLatency>,
    /// The relayed participants, when `--relay-share` is above 0.
    pub relay: Option<RelayReport>,
    /// What the receivers got per path (direct, relayed), when some are relayed.
    pub paths: Vec<PathSummary>,
    /// The server's TURN counters in the window (`--metrics-url`, a server with TURN).
    pub turn: Option<TurnFigures>,
    /// Participants that stopped early, by reason.
    pub errors: BTreeMap<String, u64>,
    /// The capacity search, in `--find-capacity` mode.
    pub capacity: Option<Capacity>,
    /// Units that left and were replaced (`--churn-secs`).
    pub units_churned: u32,
}

/// Whether the `n`-th (from 0) is in a `share` of a sequence, spread evenly, so that any
/// prefix holds about `share` of them: the receivers behind the capped link, the relayed
/// participants.
pub fn in_share(n: u32, share: f64) -> bool {
    let share = share.clamp(0.0, 1.0);
    ((f64::from(n) + 1.0) * share).floor() > (f64::from(n) * share).floor()
}

/// A snapshot at the start or end of a window.
struct Mark {
    at: Instant,
    counts: Counts,
    server: Option<ProcSample>,
    generator: ProcSample,
    latency: Option<Buckets>,
    turn: Option<TurnSample>,
}

struct Runner {
    config: RunConfig,
    shared: Rc<Shared>,
    feeds: Rc<Feeds>,
    errors: Rc<RefCell<BTreeMap<String, u64>>>,
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    /// Units running now.
    units: u32,
    /// The next unit's number (its rooms' names): units that left are not reused.
    next_unit: u32,
    next_index: u32,
    /// With churn: when each running unit leaves, and how it is told to.
    lives: Vec<(Instant, watch::Sender<bool>)>,
    churned: u32,
    /// Receivers started so far (to put the capped share behind the link evenly).
    receivers: u32,
    /// Relayed participants started so far, and of them publishers.
    relayed: u32,
    relayed_publishers: u32,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
    progress: ProgressBar,
    baseline_server_rss: Option<u64>,
    baseline_generator_rss: u64,
}

/// Runs `config` to its end on the current thread (call inside a `LocalSet`).
pub async fn run(config: RunConfig) -> anyhow::Result<Report> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let progress = if config.progress {
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
        bar
    } else {
        ProgressBar::hidden()
    };
    let baseline_server_rss = match config.server_pid {
        Some(pid) => Some(procstat::sample(pid)?.rss_bytes),
        None => None,
    };
    let mut runner = Runner {
        shared: Shared::new(),
        feeds: Feeds::new(),
        errors: Rc::default(),
        stop_tx,
        stop_rx,
        units: 0,
        next_unit: 0,
        next_index: 0,
        lives: Vec::new(),
        churned: 0,
        receivers: 0,
        relayed: 0,
        relayed_publishers: 0,
        tasks: Vec::new(),
        started: Instant::now(),
        progress,
        baseline_server_rss,
        baseline_generator_rss: procstat::sample(std::process::id())?.rss_bytes,
        config,
    };
    let report = match runner.config.capacity {
        None => runner.fixed().await?,
        Some(limits) => runner.find_capacity(limits).await?,
    };
    runner.finish().await;
    Ok(report)
}

impl Runner {
    fn deadline(&self) -> Instant {
        self.started + self.config.duration
    }

    /// A mark for a window's edge: also scrapes the server's latency histogram and TURN
    /// counters.
    async fn window_mark(&self) -> anyhow::Result<Mark> {
        let (latency, turn) = match &self.config.metrics_url {
            Some(url) => {
                let body = scrape::fetch(url).await?;
                (
                    Some(Buckets::parse(&body, scrape::FORWARD_LATENCY)),
                    TurnSample::parse(&body),
                )
            }
            None => (None, None),
        };
        Ok(Mark {
            latency,
            turn,
            ..self.mark()?
        })
    }

    fn mark(&self) -> anyhow::Result<Mark> {
        Ok(Mark {
            latency: None,
            turn: None,
            at: Instant::now(),
            counts: self.shared.rx.borrow().counts(),
            server: match self.config.server_pid {
                Some(pid) => Some(procstat::sample(pid)?),
                None => None,
            },
            generator: procstat::sample(std::process::id())?,
        })
    }

    async fn fixed(&mut self) -> anyhow::Result<Report> {
        let units = self.config.units;
        self.add_units(units).await;
        self.settle().await;
        let from = self.window_mark().await?;
        self.shared.rx.borrow_mut().reset_window();
        if self.config.churn.is_some() {
            self.churn_until(self.deadline()).await;
        } else {
            self.watch_until(self.deadline()).await;
        }
        let to = self.window_mark().await?;
        Ok(self.report(&from, &to, None))
    }

    /// Until `end`: every second, the units whose time is up leave and as many fresh ones
    /// start.
    async fn churn_until(&mut self, end: Instant) {
        let end = end.min(self.deadline());
        while Instant::now() < end {
            let next = (Instant::now() + Duration::from_secs(1)).min(end);
            self.watch_until(next).await;
            let now = Instant::now();
            let before = self.lives.len();
            self.lives.retain(|(ends, stop)| {
                let leave = *ends <= now;
                if leave {
                    let _ = stop.send(true);
                }
                !leave
            });
            let left = (before - self.lives.len()) as u32;
            self.units -= left;
            self.churned += left;
            self.tasks.retain(|t| !t.is_finished());
            self.add_units(left).await;
        }
    }

    /// How long unit `n` stays with churn `mean`: spread evenly over half to one and a half
    /// times the mean (golden-ratio steps), so that leaves do not come in waves.
    fn lifetime(mean: Duration, n: u32) -> Duration {
        let frac = (f64::from(n) * 0.618_033_988_75).fract();
        mean.mul_f64(0.5 + frac)
    }

    async fn find_capacity(&mut self, limits: CapacityLimits) -> anyhow::Result<Report> {
        let mut steps: Vec<Step> = Vec::new();
        let mut first = self.config.units.max(1);
        let mut last = None;
        let stopped_because = loop {
            self.add_units(first).await;
            first = limits.step_units;
            self.settle().await;
            let from = self.window_mark().await?;
            self.shared.rx.borrow_mut().reset_window();
            let end = Instant::now() + Duration::from_secs(limits.step_secs);
            if end > self.deadline() {
                break "the run's duration ended".to_string();
            }
            self.watch_until(end).await;
            let to = self.window_mark().await?;
            let report = self.report(&from, &to, None);
            let step = Step {
                units: self.units,
                participants: report.participants,
                forwarded_pps: report.forwarded_pps,
                loss: report.rx.loss,
                delay_p50_ms: report.rx.delay_p50_ms,
                delay_p99_ms: report.rx.delay_p99_ms,
                server_cpu_percent: report.server.as_ref().map(|s| s.cpu_percent),
                generator_cpu_percent: report.generator.cpu_percent,
                good: report.rx.loss <= limits.max_loss
                    && report.rx.delay_p99_ms <= limits.max_p99_ms,
            };
            self.progress.println(format!(
                "step: {} units, {} participants, {:.0} pkt/s, loss {:.3} %, p99 {:.2} ms, server {} — {}",
                step.units,
                step.participants,
                step.forwarded_pps,
                step.loss * 100.0,
                step.delay_p99_ms,
                step.server_cpu_percent.map_or("n/a".into(), |c| format!("{c:.0} %")),
                if step.good { "good" } else { "over the limits" },
            ));
            let good = step.good;
            steps.push(step);
            last = Some(report);
            if !good {
                break format!(
                    "loss above {:.1} % or p99 delay above {} ms",
                    limits.max_loss * 100.0,
                    limits.max_p99_ms
                );
            }
            if self.units + limits.step_units > limits.max_units {
                break format!("reached --max-units {}", limits.max_units);
            }
        };
        let last_good = steps.iter().rev().find(|s| s.good).cloned();
        let mut report = match last {
            Some(r) => r,
            None => {
                let now = self.mark()?;
                self.report(&now, &now, None)
            }
        };
        report.capacity = Some(Capacity {
            limits,
            steps,
            last_good,
            stopped_because,
        });
        Ok(report)
    }

    /// Starts `n` more units at the ramp rate.
    async fn add_units(&mut self, n: u32) {
        let gap = Duration::from_secs_f64(1.0 / f64::from(self.config.ramp_per_sec.max(1)));
        for _ in 0..n {
            let unit = self.next_unit;
            let specs = self.config.scenario.participants(unit, self.next_index);
            self.next_index += specs.len() as u32;
            self.next_unit += 1;
            self.units += 1;
            let stop = match self.config.churn {
                Some(mean) => {
                    let (tx, rx) = watch::channel(false);
                    self.lives
                        .push((Instant::now() + Self::lifetime(mean, unit), tx));
                    rx
                }
                None => self.stop_rx.clone(),
            };
            // Publishers first: Janus subscribers wait for them anyway.
            for spec in specs {
                if Instant::now() >= self.deadline() {
                    return;
                }
                self.spawn(spec, stop.clone());
                self.show_progress();
                tokio::time::sleep(gap).await;
            }
        }
    }

    fn spawn(&mut self, spec: ParticipantSpec, stop: watch::Receiver<bool>) {
        let plan = self.config.plan.clone();
        let shared = self.shared.clone();
        let errors = self.errors.clone();
        let ip = self.config.client_ip;
        let room = format!("{}-{}", self.config.room_prefix, spec.unit);
        let target = self.config.target.clone();
        let feeds = self.feeds.clone();
        let downlink = if spec.receives.is_empty() {
            None
        } else {
            let n = self.receivers;
            self.receivers += 1;
            let capped = self.config.downlink.is_some() && in_share(n, self.config.capped_share);
            let group = if capped {
                Group::Capped
            } else {
                Group::Uncapped
            };
            shared.rx.borrow_mut().set_group(spec.index, group);
            self.config.downlink.filter(|_| capped)
        };
        let relay = matches!(target, Target::Huizhen { .. })
            && in_share(spec.index, self.config.relay_share);
        if relay {
            self.relayed += 1;
            self.relayed_publishers += u32::from(spec.publishes);
            if !spec.receives.is_empty() {
                shared.rx.borrow_mut().set_relayed(spec.index);
            }
        }
        let handle = tokio::task::spawn_local(async move {
            let result = match target {
                Target::Huizhen { url } => {
                    let media = crate::huizhen::ParticipantMedia {
                        plan,
                        downlink,
                        relay,
                    };
                    crate::huizhen::participant(url, room, spec, media, ip, shared.clone(), stop)
                        .await
                }
                Target::Janus { url } => {
                    janus::participant(url, spec, plan, ip, shared.clone(), feeds, stop).await
                }
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "participant stopped");
                shared.rx.borrow_mut().on_join_failed();
                *errors
                    .borrow_mut()
                    .entry(e.label().to_string())
                    .or_default() += 1;
            }
        });
        self.tasks.push(handle);
    }

    /// Waits for the warm-up after the last join (bounded by the deadline).
    async fn settle(&self) {
        let end = (Instant::now() + self.config.warmup).min(self.deadline());
        self.watch_until(end).await;
    }

    /// Sleeps until `end`, redrawing the progress line.
    async fn watch_until(&self, end: Instant) {
        let end = end.min(self.deadline());
        let mut last = self.mark().ok();
        while Instant::now() < end {
            let next = (Instant::now() + Duration::from_millis(500)).min(end);
            tokio::time::sleep_until(next.into()).await;
            let now = self.mark().ok();
            if let (Some(a), Some(b)) = (&last, &now) {
                self.show_rates(a, b);
            }
            last = now;
        }
    }

    fn show_progress(&self) {
        self.progress.set_message(format!(
            "{:.1}/{} s | {} participants starting ({} units)",
            self.started.elapsed().as_secs_f64(),
            self.config.duration.as_secs(),
            self.next_index,
            self.units
        ));
        self.progress.tick();
    }

    fn show_rates(&self, a: &Mark, b: &Mark) {
        let dt = b.at.duration_since(a.at).as_secs_f64().max(1e-6);
        let pps = (b.counts.received - a.counts.received) as f64 / dt;
        let cpu = |x: Option<ProcSample>, y: Option<ProcSample>| match (x, y) {
            (Some(x), Some(y)) => format!("{:.0} %", (y.cpu - x.cpu).as_secs_f64() / dt * 100.0),
            _ => "n/a".into(),
        };
        let rx = self.shared.rx.borrow();
        self.progress.set_message(format!(
            "{:.1}/{} s | {} participants, {} joined, {} failed | {:.0} pkt/s forwarded | loss {:.2} % | p99 {:.1} ms | server CPU {} | generator CPU {}",
            self.started.elapsed().as_secs_f64(),
            self.config.duration.as_secs(),
            self.next_index,
            rx.summary(&Counts::default()).joins,
            self.errors.borrow().values().sum::<u64>(),
            pps,
            b.counts.loss_since(&a.counts) * 100.0,
            rx.window_delay_us(0.99) as f64 / 1000.0,
            cpu(a.server, b.server),
            cpu(Some(a.generator), Some(b.generator)),
        ));
        self.progress.tick();
    }

    fn report(&self, from: &Mark, to: &Mark, capacity: Option<Capacity>) -> Report {
        let dt = to.at.duration_since(from.at).as_secs_f64();
        let received = to.counts.received.saturating_sub(from.counts.received);
        let forwarded_pps = if dt > 0.0 { received as f64 / dt } else { 0.0 };
        let rx = self.shared.rx.borrow().summary(&from.counts);
        let specs: Vec<ParticipantSpec> = (0..self.units)
            .flat_map(|u| self.config.scenario.participants(u, 0))
            .collect();
        let subscribed_tracks = self.config.scenario.subscribed_tracks_per_unit() * self.units;
        let figures = |a: ProcSample, b: ProcSample, baseline: u64| {
            let cpu = (b.cpu.saturating_sub(a.cpu)).as_secs_f64();
            ProcFigures {
                cpu_percent: if dt > 0.0 { cpu / dt * 100.0 } else { 0.0 },
                cpu_ms_per_1000_packets: if received > 0 {
                    cpu * 1000.0 / received as f64 * 1000.0
                } else {
                    0.0
                },
                rss_mib: b.rss_bytes as f64 / (1024.0 * 1024.0),
                rss_kib_per_subscribed_track: if subscribed_tracks > 0 {
                    b.rss_bytes.saturating_sub(baseline) as f64
                        / 1024.0
                        / f64::from(subscribed_tracks)
                } else {
                    0.0
                },
            }
        };
        Report {
            target: self.config.target.name().into(),
            scenario: self.config.scenario,
            units: self.units,
            participants: specs.len() as u32,
            publishers: specs.iter().filter(|s| s.publishes).count() as u32,
            subscribed_tracks,
            video_bitrate: self.config.plan.video_bitrate,
            fps: self.config.plan.fps,
            publisher_pps: self.config.plan.packets_per_second(),
            simulcast: self
                .config
                .plan
                .simulcast
                .iter()
                .map(|r| r.to_string())
                .collect(),
            downlink: self.config.downlink.map(|d| DownlinkReport {
                kbps: d.rate_bps as f64 / 1000.0,
                queue_ms: d.queue.as_secs_f64() * 1000.0,
                capped_share: self.config.capped_share,
            }),
            groups: {
                let layers: Vec<String> = self
                    .config
                    .plan
                    .video_layers()
                    .iter()
                    .map(|l| l.rid.unwrap_or("single").to_string())
                    .collect();
                self.shared
                    .rx
                    .borrow()
                    .groups(&from.counts, dt, self.shared.micros(to.at), &layers)
            },
            measured_secs: dt,
            forwarded_pps,
            rx,
            tx: self.shared.tx.borrow().clone(),
            server: match (from.server, to.server, self.baseline_server_rss) {
                (Some(a), Some(b), Some(base)) => Some(figures(a, b, base)),
                _ => None,
            },
            generator: figures(from.generator, to.generator, self.baseline_generator_rss),
            server_latency: match (&from.latency, &to.latency) {
                (Some(a), Some(b)) => {
                    let window = b.since(a);
                    let ms = |q: f64| window.quantile(q).map_or(0.0, |s| s * 1000.0);
                    Some(ServerLatency {
                        packets: window.count(),
                        p50_ms: ms(0.5),
                        p99_ms: ms(0.99),
                    })
                }
                _ => None,
            },
            relay: (self.config.relay_share > 0.0).then(|| {
                let tx = self.shared.tx.borrow();
                RelayReport {
                    share: self.config.relay_share,
                    participants: self.relayed,
                    publishers: self.relayed_publishers,
                    allocations: tx.turn_allocations,
                    allocation_failures: tx.turn_allocation_failures,
                }
            }),
            paths: self.shared.rx.borrow().paths(&from.counts, dt),
            turn: match (&from.turn, &to.turn) {
                (Some(a), Some(b)) => {
                    let relayed_in = b.relayed_in.saturating_sub(a.relayed_in);
                    let relayed_out = b.relayed_out.saturating_sub(a.relayed_out);
                    Some(TurnFigures {
                        relayed_in_packets: relayed_in,
                        relayed_out_packets: relayed_out,
                        relayed_pps: if dt > 0.0 {
                            (relayed_in + relayed_out) as f64 / dt
                        } else {
                            0.0
                        },
                        relayed_bytes: b.relayed_bytes.saturating_sub(a.relayed_bytes),
                        allocations: b.allocations,
                        refused: b.refused.saturating_sub(a.refused),
                    })
                }
                _ => None,
            },
            errors: self.errors.borrow().clone(),
            capacity,
            units_churned: self.churned,
        }
    }

    /// Tells every participant to leave and waits (briefly) for them.
    async fn finish(&mut self) {
        let _ = self.stop_tx.send(true);
        for (_, stop) in self.lives.drain(..) {
            let _ = stop.send(true);
        }
        let tasks = std::mem::take(&mut self.tasks);
        let all = futures_util::future::join_all(tasks);
        if tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .is_err()
        {
            tracing::warn!("some participants did not leave within 5 s");
        }
        self.progress.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::in_share;

    #[test]
    fn churned_units_live_half_to_one_and_a_half_times_the_mean_and_leave_spread_out() {
        let mean = std::time::Duration::from_secs(60);
        let lives: Vec<f64> = (0..1000)
            .map(|n| super::Runner::lifetime(mean, n).as_secs_f64())
            .collect();
        assert!(lives.iter().all(|l| (30.0..90.0).contains(l)), "{lives:?}");
        let avg = lives.iter().sum::<f64>() / lives.len() as f64;
        assert!((avg - 60.0).abs() < 1.0, "mean {avg}");
        // Spread: every 6 s bucket of the range holds some of any 100 consecutive units.
        for window in lives.chunks(100) {
            let mut buckets = [0; 10];
            for l in window {
                buckets[((l - 30.0) / 6.0) as usize] += 1;
            }
            assert!(buckets.iter().all(|b| *b > 0), "{buckets:?}");
        }
    }

    #[test]
    fn the_capped_share_is_spread_evenly_over_the_receivers() {
        let capped = |share: f64, n: u32| (0..n).filter(|&i| in_share(i, share)).count();
        assert_eq!(capped(0.5, 10), 5);
        assert_eq!(capped(1.0, 7), 7);
        assert_eq!(capped(0.0, 7), 0);
        assert_eq!(capped(0.25, 100), 25);
        // Alternating at one half: a followup visit has one capped and one free participant.
        assert!(!in_share(0, 0.5) && in_share(1, 0.5));
    }
}
