//! Scenario 4: a flood of unauthenticated WebSocket frames.
//!
//! `sockets` connections send `frames` frames in all, as fast as the server answers them (each
//! socket sends its next frame when the previous one was answered): half `auth` with bad tokens
//! (garbage, and a well-formed JWT with a wrong signature), half clinic messages before any
//! `auth`. A connection the server closes is reopened until its share was answered (an
//! attacker reconnects too). Measured: the audit rows the flood left, how many
//! connections the server closed, and the REST API's latency (`GET /api/v1/clinics`) during the
//! flood against an idle server.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Api, Ws};
use crate::server::{Server, ServerDir, ServerSpec};
use crate::stats::{fmt_ms, Latency, Report};

/// Settings of the scenario.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Frames in all.
    pub frames: usize,
    /// Connections at once.
    pub sockets: usize,
    /// REST probes on the idle server.
    pub idle_probes: usize,
    /// Longest flood.
    pub max_secs: u64,
    /// How long after the flood the audit trail is counted (a server may write refusals it
    /// aggregated when their interval ends).
    pub audit_wait_secs: u64,
}

const SCENARIO: &str = "4 unauthenticated flood";
const CLINIC: &str = "flood-clinic";
/// Well-formed HS256 JWT (a doctor of flood-clinic) whose signature is wrong.
const FORGED_JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJtYWxsb3J5IiwibmFtZSI6Ik1hbGxvcnkiLCJyb2xlIjoiZG9jdG9yIiwiY2xpbmljcyI6WyJmbG9vZC1jbGluaWMiXSwiaWF0IjoxNzAwMDAwMDAwLCJleHAiOjQxMDI0NDQ4MDB9.eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHg";
/// Pause between REST probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);

/// Frame `k` of the flood.
fn frame(k: usize) -> Value {
    if k.is_multiple_of(2) {
        let token = if k.is_multiple_of(4) {
            format!("not-a-token-{k}")
        } else {
            FORGED_JWT.to_owned()
        };
        return json!({ "type": "auth", "token": token });
    }
    match (k / 2) % 5 {
        0 => json!({ "type": "check_in", "appointment": format!("flood-appt-{k}") }),
        1 => json!({ "type": "invite", "clinic": CLINIC }),
        2 => json!({ "type": "set_away", "clinic": CLINIC, "away": true }),
        3 => json!({ "type": "accept_invitation", "invitation": format!("flood-inv-{k}") }),
        _ => json!({ "type": "end_consultation", "consultation": format!("flood-c-{k}") }),
    }
}

#[derive(Default)]
struct Counts {
    sent: Cell<u64>,
    replies: Cell<u64>,
    connections: Cell<u64>,
    connect_failures: Cell<u64>,
    closed_by_server: Cell<u64>,
    still_open: Cell<u64>,
}

pub async fn run(
    spec: &ServerSpec,
    dir: &ServerDir,
    settings: &Settings,
    report: &mut Report,
) -> anyhow::Result<()> {
    let server = Server::start(spec, dir)?;
    let api = Api::new(&server.http, &server.api_key)?;
    api.create_clinic(CLINIC, "flood-doctor").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    eprintln!("[{SCENARIO}] REST on the idle server");
    let idle = Prober::start(&server, settings.idle_probes, Duration::from_secs(60));
    let idle = idle.finish(false).await?;
    let head = api.audit_since(0, 100).await?.last_seq;

    eprintln!(
        "[{SCENARIO}] {} frames over {} sockets (at most {} s)",
        settings.frames, settings.sockets, settings.max_secs
    );
    let prober = Prober::start(
        &server,
        usize::MAX,
        Duration::from_secs(settings.max_secs + 60),
    );
    let counts = Counts::default();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(settings.max_secs);
    let sockets = settings.sockets.max(1);
    let workers = (0..sockets).map(|w| {
        let frames: Vec<usize> = (w..settings.frames).step_by(sockets).collect();
        worker(&server.http, frames, deadline, &counts)
    });
    futures_util::future::join_all(workers).await;
    let flood_time = started.elapsed();

    // The server may still be working through what the flood queued (audit writes): the
    // flood lasts, for the REST probe, until the audit trail stops growing.
    let mut audit = api.audit_since(head, 1000).await?;
    let settle_deadline = Instant::now() + Duration::from_secs(120);
    let mut prober = Some(prober);
    let mut during = None;
    let mut stable = 0;
    let mut busy_time = None;
    while stable < 8 && Instant::now() < settle_deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = api.audit_since(head, 1000).await?;
        stable = if now.rows == audit.rows {
            stable + 1
        } else {
            0
        };
        audit = now;
        if stable == 1 {
            busy_time.get_or_insert_with(|| started.elapsed());
            if let Some(p) = prober.take() {
                during = Some(p.finish(true).await?);
            }
        }
    }
    let during = match (during, prober) {
        (Some(d), _) => d,
        (None, Some(p)) => p.finish(true).await?,
        (None, None) => unreachable!("the prober is finished once"),
    };
    let busy_time = busy_time.unwrap_or_else(|| started.elapsed());
    let count_at = started + flood_time + Duration::from_secs(settings.audit_wait_secs);
    if Instant::now() < count_at {
        eprintln!(
            "[{SCENARIO}] waiting {:.0} s for aggregated audit rows",
            (count_at - Instant::now()).as_secs_f64()
        );
        tokio::time::sleep_until(count_at.into()).await;
        audit = api.audit_since(head, 1000).await?;
    }

    report.add(
        SCENARIO,
        "frames sent / answered",
        format!(
            "{} / {} in {:.1} s (server busy {:.1} s)",
            counts.sent.get(),
            counts.replies.get(),
            flood_time.as_secs_f64(),
            busy_time.as_secs_f64()
        ),
    );
    report.add(
        SCENARIO,
        &format!(
            "audit rows produced (counted {} s after the flood)",
            settings.audit_wait_secs
        ),
        format!(
            "{} (target <= 100){}",
            audit.rows,
            if audit.truncated { " (at least)" } else { "" }
        ),
    );
    if audit.rows > 0 {
        report.add(SCENARIO, "audit rows by kind", audit.kinds_text());
    }
    report.add(
        SCENARIO,
        "connections: opened / closed by server / open at the end",
        format!(
            "{} / {} / {}{}",
            counts.connections.get(),
            counts.closed_by_server.get(),
            counts.still_open.get(),
            if counts.connect_failures.get() > 0 {
                format!(" ({} connects failed)", counts.connect_failures.get())
            } else {
                String::new()
            }
        ),
    );
    report.add(SCENARIO, "REST GET /clinics, idle", idle.summary());
    report.add(
        SCENARIO,
        "REST GET /clinics, during the flood (until the audit trail settled)",
        during.summary(),
    );
    report.add(
        SCENARIO,
        "REST p99 during / idle",
        format!(
            "{:.1}x ({} vs {} ms; target <= 2x)",
            during.ms(0.99) / idle.ms(0.99).max(0.001),
            fmt_ms(during.ms(0.99)),
            fmt_ms(idle.ms(0.99))
        ),
    );
    server.stop(Duration::from_secs(120))?;
    // A clean stop may write what was still aggregated.
    match audit_rows_after(&dir.db_path(), head) {
        Ok(rows) if rows != audit.rows => report.add(
            SCENARIO,
            "audit rows after the server stopped",
            format!(
                "{rows} (the stop wrote {} more)",
                rows as i64 - audit.rows as i64
            ),
        ),
        Ok(_) => {}
        Err(e) => eprintln!("  could not read the audit trail from the database: {e:#}"),
    }
    Ok(())
}

/// Rows of `audit_log` after `seq`, read from the stopped server's database.
fn audit_rows_after(db: &std::path::Path, seq: u64) -> anyhow::Result<u64> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let rows: i64 = conn.query_row(
        "SELECT count(*) FROM audit_log WHERE seq > ?1",
        [seq as i64],
        |r| r.get(0),
    )?;
    Ok(rows as u64)
}

/// Send `frames` (indices into the flood) one at a time, each after the previous one was
/// answered, so every frame counted was read by the server; reconnect when the server closes
/// the socket (a frame it closed on unanswered is sent again on the next connection).
async fn worker(addr: &str, frames: Vec<usize>, deadline: Instant, counts: &Counts) {
    let mut next = 0;
    let mut attempts = 0;
    'connection: while next < frames.len()
        && Instant::now() < deadline
        && attempts < frames.len() * 2 + 10
    {
        attempts += 1;
        let mut ws = match Ws::connect(addr).await {
            Ok(ws) => ws.into_inner(),
            Err(_) => {
                counts
                    .connect_failures
                    .set(counts.connect_failures.get() + 1);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        counts.connections.set(counts.connections.get() + 1);
        loop {
            if next >= frames.len() || Instant::now() >= deadline {
                counts.still_open.set(counts.still_open.get() + 1);
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                break 'connection;
            }
            if ws
                .send(Message::text(frame(frames[next]).to_string()))
                .await
                .is_err()
            {
                counts
                    .closed_by_server
                    .set(counts.closed_by_server.get() + 1);
                continue 'connection;
            }
            counts.sent.set(counts.sent.get() + 1);
            let reply_deadline = deadline.max(Instant::now()) + Duration::from_secs(30);
            loop {
                match tokio::time::timeout_at(reply_deadline.into(), ws.next()).await {
                    Err(_) => {
                        // Unanswered: move on.
                        next += 1;
                        break;
                    }
                    Ok(Some(Ok(Message::Text(_)))) => {
                        counts.replies.set(counts.replies.get() + 1);
                        next += 1;
                        break;
                    }
                    Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => {
                        counts
                            .closed_by_server
                            .set(counts.closed_by_server.get() + 1);
                        continue 'connection;
                    }
                    Ok(Some(Ok(_))) => {}
                }
            }
        }
    }
}

/// `GET /api/v1/clinics` in a loop on its own thread (so the flood's tasks cannot delay it in
/// the bench), until stopped or `max` probes or `max_time`.
struct Prober {
    stop: Arc<AtomicBool>,
    result: tokio::sync::oneshot::Receiver<anyhow::Result<Vec<Duration>>>,
}

impl Prober {
    fn start(server: &Server, max: usize, max_time: Duration) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, result) = tokio::sync::oneshot::channel();
        let (addr, key, flag) = (server.http.clone(), server.api_key.clone(), stop.clone());
        std::thread::spawn(move || {
            let run = || -> anyhow::Result<Vec<Duration>> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let api = Api::new(&addr, &key)?;
                    let mut out = Vec::new();
                    let until = Instant::now() + max_time;
                    while out.len() < max && !flag.load(Ordering::Relaxed) && Instant::now() < until
                    {
                        let t0 = Instant::now();
                        let (status, _) = api.get("/clinics").await?;
                        if status != 200 {
                            anyhow::bail!("GET /api/v1/clinics: HTTP {status}");
                        }
                        out.push(t0.elapsed());
                        tokio::time::sleep(PROBE_INTERVAL).await;
                    }
                    Ok(out)
                })
            };
            let _ = tx.send(run());
        });
        Prober { stop, result }
    }

    /// The latencies; `stop` ends the probing now, otherwise it runs to its limits.
    async fn finish(self, stop: bool) -> anyhow::Result<Latency> {
        if stop {
            self.stop.store(true, Ordering::Relaxed);
        }
        let samples = self
            .result
            .await
            .map_err(|_| anyhow::anyhow!("the REST prober died"))??;
        let mut latency = Latency::default();
        for s in samples {
            latency.record(s);
        }
        Ok(latency)
    }
}
