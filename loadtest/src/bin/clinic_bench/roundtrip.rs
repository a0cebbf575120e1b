//! Scenario 1: a doctor's action round trip on an empty store and with a large history.
//!
//! The doctor toggles `set_away`; the round trip ends when the doctor's console receives the
//! `queue` message showing the new status (the server sends it after the change was handled:
//! audited, persisted, broadcast). Measured on a fresh store, then the server is stopped, the
//! history is written straight into its database and the server started again on it.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::client::{Api, Ws};
use crate::history;
use crate::server::{Server, ServerDir, ServerSpec};
use crate::stats::{mib, Latency, Report};

/// Settings of the scenario.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Round trips on the empty store.
    pub iterations: u32,
    /// Round trips at each history size.
    pub history_iterations: u32,
    /// History sizes: (appointments, ended consultations), growing.
    pub sizes: Vec<(u64, u64)>,
    /// Clinics the history is spread over (the measured one included).
    pub history_clinics: usize,
    /// Longest time spent measuring one size.
    pub max_secs: u64,
}

const CLINIC: &str = "rt-clinic";
const DOCTOR: &str = "rt-doctor";
const SCENARIO: &str = "1 doctor round trip";

pub async fn run(
    spec: &ServerSpec,
    dir: &ServerDir,
    settings: &Settings,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut clinics = vec![(CLINIC.to_owned(), DOCTOR.to_owned())];
    for i in 1..settings.history_clinics.max(1) {
        clinics.push((format!("hist-clinic-{i:02}"), format!("hist-doctor-{i:02}")));
    }

    eprintln!("[{SCENARIO}] empty store");
    let server = Server::start(spec, dir)?;
    let api = Api::new(&server.http, &server.api_key)?;
    for (id, doctor) in &clinics {
        api.create_clinic(id, doctor).await?;
    }
    let token = api.doctor_token(DOCTOR, &[CLINIC]).await?;
    let empty = measure(&server, &token, settings.iterations, settings.max_secs).await?;
    report.add(
        SCENARIO,
        "empty store: set_away -> queue",
        empty.latency.summary(),
    );
    report.add(SCENARIO, "empty store: server RSS", mib(empty.rss as f64));
    server.stop(Duration::from_secs(120))?;

    let now_ms = crate::now_ms();
    let (mut have_a, mut have_c) = (0, 0);
    for &(appointments, consultations) in &settings.sizes {
        eprintln!("[{SCENARIO}] history of {appointments} appointments, {consultations} ended consultations");
        let written = Instant::now();
        let totals = history::extend(
            &dir.db_path(),
            &clinics,
            have_a,
            have_c,
            appointments,
            consultations,
            now_ms,
        )
        .context("writing the history")?;
        (have_a, have_c) = (appointments, consultations);
        let written = written.elapsed();
        let label = format!(
            "{} appts + {} ended",
            short(appointments),
            short(consultations)
        );
        let server = Server::start(spec, dir)?;
        report.add(
            SCENARIO,
            &format!("{label}: rows in the store"),
            format!(
                "{} appointments, {} consultations, {} participants (written in {:.1} s)",
                totals.appointments,
                totals.consultations,
                totals.participants,
                written.as_secs_f64()
            ),
        );
        report.add(
            SCENARIO,
            &format!("{label}: server start-up"),
            format!("{:.2} s", server.startup.as_secs_f64()),
        );
        let big = measure(
            &server,
            &token,
            settings.history_iterations,
            settings.max_secs,
        )
        .await?;
        report.add(
            SCENARIO,
            &format!("{label}: set_away -> queue"),
            big.latency.summary(),
        );
        report.add(
            SCENARIO,
            &format!("{label}: ratio to empty (p50 / mean)"),
            format!(
                "{:.2}x / {:.2}x (target <= 1.5x at 100k + 20k)",
                big.latency.ms(0.5) / empty.latency.ms(0.5).max(0.001),
                big.latency.mean_ms() / empty.latency.mean_ms().max(0.001)
            ),
        );
        report.add(
            SCENARIO,
            &format!("{label}: server RSS"),
            mib(big.rss as f64),
        );
        server.stop(Duration::from_secs(300))?;
    }
    Ok(())
}

struct Measured {
    latency: Latency,
    rss: u64,
}

/// Connect the doctor, wait for the first queue, then time `iterations` round trips (after
/// 3 unrecorded warm-up ones), stopping early after `max_secs`.
async fn measure(
    server: &Server,
    token: &str,
    iterations: u32,
    max_secs: u64,
) -> anyhow::Result<Measured> {
    let step_timeout = Duration::from_secs(max_secs.max(60));
    let mut ws = Ws::open_authenticated(&server.http, token, step_timeout).await?;
    // On connect the doctor is told the queue (and comes online, which is a change too).
    ws.wait_for("queue", Instant::now() + step_timeout, |m| {
        m["clinic"] == CLINIC
    })
    .await
    .context("the doctor's first queue")?;
    // Let the connect's own change finish before timing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut latency = Latency::default();
    let mut away = false;
    let deadline = Instant::now() + Duration::from_secs(max_secs);
    for i in 0..iterations + 3 {
        if i >= 3 && Instant::now() > deadline {
            eprintln!("  time limit: {} round trips measured", latency.count());
            break;
        }
        away = !away;
        let expect = if away { "away" } else { "online" };
        let sent = Instant::now();
        ws.send(&json!({ "type": "set_away", "clinic": CLINIC, "away": away }))
            .await?;
        let (_, at) = ws
            .wait_for("queue", sent + step_timeout, |m| {
                m["clinic"] == CLINIC && m["doctor_status"] == expect
            })
            .await?;
        if i >= 3 {
            latency.record(at - sent);
        }
    }
    if away {
        // Leave the doctor available, as found.
        ws.send(&json!({ "type": "set_away", "clinic": CLINIC, "away": false }))
            .await?;
        let _ = ws
            .wait_for("queue", Instant::now() + step_timeout, |m| {
                m["doctor_status"] == "online"
            })
            .await;
    }
    let rss = server.sample().map(|s| s.rss).unwrap_or(0);
    ws.close().await;
    eprintln!("  {}", latency.summary());
    Ok(Measured { latency, rss })
}

/// 40000 -> "40k", 1500 -> "1500".
fn short(n: u64) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}
