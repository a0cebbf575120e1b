//! Scenario 5: what strangers' idle and slow connections cost (issue 11).
//!
//! For each kind of connection in turn, `count` of them are opened from `sources` loopback
//! addresses (127.0.1.1, 127.0.1.2, ...; the server caps connections per source) and held:
//!
//! - `idle`: TCP connected, nothing sent;
//! - `slow_head`: a request head sent a byte every 2 s;
//! - `slow_body`: a REST `POST` announcing a 2 MB body without an API key, the body trickled;
//! - `slow_whip`: a WHIP `POST` to a consultation without a token, the body trickled;
//! - `ws_idle`: a WebSocket upgraded, then nothing;
//! - `ws_slow_frame`: a WebSocket whose first frame announces 1 MB, of which 10 KiB are sent.
//!
//! While they are held: the server's resident memory over its baseline, how many connections
//! it reports open (`huizhen_http_connections`), and how long an authenticated doctor takes to
//! join a call (connect, `auth`, `invite` a checked-in patient, the patient accepts,
//! `join_consultation` -> `joined`), against the same on the idle server. Then they are closed
//! and the memory is read again (given back or not). A stranger whose connection the server
//! closes reconnects after a pause, as an attacker would.
//!
//! A measuring tool: it asserts nothing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::client::{Api, Ws};
use crate::server::{Server, ServerDir, ServerSpec};
use crate::stats::{fmt_ms, mib, Latency, Report};

/// Settings of the scenario.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Connections of each kind held at once.
    pub count: usize,
    /// Source addresses they come from.
    pub sources: usize,
    /// Doctor joins measured while they are held (and on the idle server).
    pub joins: usize,
}

const SCENARIO: &str = "5 strangers held";
const CLINIC: &str = "hold-clinic";
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// A stranger the server closed reconnects after this.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);
/// Connections being opened at once.
const OPENING: usize = 256;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Idle,
    SlowHead,
    SlowBody,
    SlowWhip,
    WsIdle,
    WsSlowFrame,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Idle,
        Kind::SlowHead,
        Kind::SlowBody,
        Kind::SlowWhip,
        Kind::WsIdle,
        Kind::WsSlowFrame,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Idle => "idle",
            Kind::SlowHead => "slow_head",
            Kind::SlowBody => "slow_body",
            Kind::SlowWhip => "slow_whip",
            Kind::WsIdle => "ws_idle",
            Kind::WsSlowFrame => "ws_slow_frame",
        }
    }
}

pub async fn run(
    spec: &ServerSpec,
    dir: &ServerDir,
    settings: &Settings,
    report: &mut Report,
) -> anyhow::Result<()> {
    // A fresh server for each kind: what one kind leaves in the allocator would otherwise be
    // reused by the next and hide its cost.
    for kind in Kind::ALL {
        let dir = ServerDir::create(&dir.root.join(kind.name()))?;
        let server = Server::start(spec, &dir)?;
        let result = measure(&server, &dir, kind, settings, report).await;
        server.stop(Duration::from_secs(20))?;
        result?;
    }
    Ok(())
}

async fn measure(
    server: &Server,
    dir: &ServerDir,
    kind: Kind,
    settings: &Settings,
    report: &mut Report,
) -> anyhow::Result<()> {
    let addr: SocketAddr = server.http.parse()?;
    let api = Api::new(&server.http, &dir.api_key)?;
    api.create_clinic(CLINIC, "hold-doctor").await?;
    let doctor = api.doctor_token("hold-doctor", &[CLINIC]).await?;
    let patients = Rc::new(Patients {
        api,
        next: std::cell::Cell::new(0),
    });
    let name = kind.name();

    let mut idle = Latency::default();
    for _ in 0..settings.joins {
        idle.record(doctor_joins(&server.http, &doctor, &patients).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = server.sample()?.rss;

    let (stop_tx, stop) = watch::channel(false);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let opened = Rc::new(std::cell::Cell::new(0usize));
    let gate = Rc::new(tokio::sync::Semaphore::new(OPENING));
    for i in 0..settings.count {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + (i % settings.sources) as u8));
        let stop = stop.clone();
        let opened = opened.clone();
        let gate = gate.clone();
        tasks.spawn_local(async move { hold(kind, source, addr, stop, opened, gate).await });
    }
    // All opened (or the first ones already cut), then a moment for the server to settle.
    let open_deadline = Instant::now() + Duration::from_secs(30);
    while opened.get() < settings.count && Instant::now() < open_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held_rss = server.sample()?.rss;
    let open_gauge = gauge(&server.http, "huizhen_http_connections").await;
    let mut joins = Latency::default();
    for _ in 0..settings.joins {
        joins.record(doctor_joins(&server.http, &doctor, &patients).await?);
    }
    let _ = stop_tx.send(true);
    let mut reconnects = 0;
    while let Some(r) = tasks.join_next().await {
        reconnects += r.unwrap_or(0);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_rss = server.sample()?.rss;
    tokio::time::sleep(Duration::from_secs(27)).await;
    let later_rss = server.sample()?.rss;
    // Connections the server still had open (0 when they were cut at once).
    let held = open_gauge.saturating_sub(1);
    let grown = held_rss.saturating_sub(before) as f64;
    report.add(
        SCENARIO,
        &format!("{name}: opened in; server says open; reconnects"),
        format!("{} in {open_secs:.1} s; {held}; {reconnects}", opened.get()),
    );
    report.add(
        SCENARIO,
        &format!("{name}: RSS over the idle server's while held (per held connection)"),
        if held > 0 {
            format!("{} ({:.1} KiB)", mib(grown), grown / 1024.0 / held as f64)
        } else {
            mib(grown)
        },
    );
    report.add(
        SCENARIO,
        &format!("{name}: RSS idle server / held / 3 s after closing / 30 s after"),
        format!(
            "{} / {} / {} / {}",
            mib(before as f64),
            mib(held_rss as f64),
            mib(after_rss as f64),
            mib(later_rss as f64)
        ),
    );
    report.add(
        SCENARIO,
        &format!("{name}: doctor joins a call, idle server / while held"),
        format!("{} / {}", idle.summary(), joins.summary()),
    );
    eprintln!(
        "{name}: {held} open, RSS {} -> {} -> {} -> {}",
        mib(before as f64),
        mib(held_rss as f64),
        mib(after_rss as f64),
        mib(later_rss as f64)
    );
    let _ = fmt_ms;
    Ok(())
}

/// Patients with an appointment in the clinic, one per measured join.
struct Patients {
    api: Api,
    next: std::cell::Cell<usize>,
}

/// One measured join: a patient checks in (not timed), then the doctor connects,
/// authenticates, invites the patient, the patient accepts, and the doctor joins the
/// consultation's call; timed from the doctor's connect to its `joined`.
async fn doctor_joins(addr: &str, doctor: &str, patients: &Patients) -> anyhow::Result<Duration> {
    let k = patients.next.get();
    patients.next.set(k + 1);
    let (appointment, patient) = (format!("hold-appt-{k}"), format!("hold-patient-{k}"));
    let now = crate::now_ms();
    patients
        .api
        .create_appointment(&appointment, CLINIC, &patient, now + 10 * 60 * 1000)
        .await?;
    let token = patients.api.patient_token(&patient, &appointment).await?;
    let mut ws = Ws::open_authenticated(addr, &token, STEP_TIMEOUT).await?;
    ws.send(&json!({ "type": "check_in", "appointment": appointment }))
        .await?;
    ws.wait_for("waiting", Instant::now() + STEP_TIMEOUT, |_| true)
        .await?;

    let t0 = Instant::now();
    let mut console = Ws::open_authenticated(addr, doctor, STEP_TIMEOUT).await?;
    console
        .send(&json!({ "type": "invite", "clinic": CLINIC, "patient": patient }))
        .await?;
    let (ringing, _) = ws
        .wait_for("ringing", Instant::now() + STEP_TIMEOUT, |_| true)
        .await?;
    let invitation = ringing["invitation"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let consultation = ringing["consultation"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ws.send(&json!({ "type": "accept_invitation", "invitation": invitation }))
        .await?;
    console
        .wait_for("consultation_ready", Instant::now() + STEP_TIMEOUT, |m| {
            m["consultation"] == consultation.as_str()
        })
        .await?;
    console
        .send(&json!({ "type": "join_consultation", "consultation": consultation }))
        .await?;
    console
        .wait_for("joined", Instant::now() + STEP_TIMEOUT, |_| true)
        .await?;
    let took = t0.elapsed();
    console
        .send(&json!({ "type": "end_consultation", "consultation": consultation }))
        .await?;
    let _ = console
        .wait_for("consultation_ended", Instant::now() + STEP_TIMEOUT, |_| {
            true
        })
        .await;
    console.close().await;
    ws.close().await;
    Ok(took)
}

/// A gauge's value from `/metrics` (0 when it cannot be read).
async fn gauge(addr: &str, name: &str) -> u64 {
    let mut text = String::new();
    if let Ok(mut stream) = TcpStream::connect(addr).await {
        let request = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        if stream.write_all(request.as_bytes()).await.is_ok() {
            let _ = tokio::time::timeout(STEP_TIMEOUT, stream.read_to_string(&mut text)).await;
        }
    }
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// Hold one stranger's connection of `kind` until `stop`, reconnecting when the server closes
/// it; returns how many times it reconnected. `opened` counts first openings.
async fn hold(
    kind: Kind,
    source: IpAddr,
    server: SocketAddr,
    mut stop: watch::Receiver<bool>,
    opened: Rc<std::cell::Cell<usize>>,
    gate: Rc<tokio::sync::Semaphore>,
) -> usize {
    let mut reconnects = 0;
    let mut first = true;
    while !*stop.borrow() {
        let stream = {
            let _permit = gate.acquire().await;
            open(kind, source, server).await
        };
        if first {
            opened.set(opened.get() + 1);
            first = false;
        } else {
            reconnects += 1;
        }
        if let Some(stream) = stream {
            tokio::select! {
                _ = trickle(kind, stream) => {}
                _ = stop.changed() => return reconnects,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
            _ = stop.changed() => return reconnects,
        }
    }
    reconnects
}

/// Connect from `source` and send what the kind sends at once (a WebSocket is upgraded).
async fn open(kind: Kind, source: IpAddr, server: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(source, 0)).ok()?;
    let mut stream = tokio::time::timeout(STEP_TIMEOUT, socket.connect(server))
        .await
        .ok()?
        .ok()?;
    let head: &[u8] = match kind {
        Kind::Idle => return Some(stream),
        Kind::SlowHead => b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        Kind::SlowBody => b"POST /api/v1/clinics HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n{\"id\":\"",
        Kind::SlowWhip => b"POST /whip/consultation/c-1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\nContent-Length: 2000000\r\n\r\nv=0\r\n",
        Kind::WsIdle | Kind::WsSlowFrame => {
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        }
    };
    stream.write_all(head).await.ok()?;
    if matches!(kind, Kind::WsIdle | Kind::WsSlowFrame) {
        // The 101 response, whole.
        let mut answer = Vec::new();
        let mut buf = [0u8; 512];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.len() < 4096 {
            let n = tokio::time::timeout(STEP_TIMEOUT, stream.read(&mut buf))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        if !answer.starts_with(b"HTTP/1.1 101") {
            return None;
        }
    }
    if let Kind::WsSlowFrame = kind {
        // A masked text frame announcing 1,000,000 bytes (64-bit length), 10 KiB of it sent.
        let mut frame = vec![0x81, 0xFF];
        frame.extend_from_slice(&1_000_000u64.to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        frame.extend(std::iter::repeat_n(b'a', 10 * 1024));
        stream.write_all(&frame).await.ok()?;
    }
    Some(stream)
}

/// Go on being slow until the server closes the connection.
async fn trickle(kind: Kind, mut stream: TcpStream) {
    let mut buf = [0u8; 1024];
    let (every, byte): (Duration, &[u8]) = match kind {
        Kind::SlowHead => (Duration::from_secs(2), b"a"),
        Kind::SlowBody | Kind::SlowWhip => (Duration::from_millis(500), &[b'a'; 64]),
        Kind::Idle | Kind::WsIdle | Kind::WsSlowFrame => (Duration::from_secs(3600), b""),
    };
    loop {
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // an answer (401, 413): the server may still close
            },
            _ = tokio::time::sleep(every) => {
                if !byte.is_empty() && stream.write_all(byte).await.is_err() {
                    return;
                }
            }
        }
    }
}
