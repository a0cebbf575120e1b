//! A real process restart: appointments, the waiting room and the audit chain survive it;
//! `huizhen audit verify` passes, and fails naming the entry after one byte of it changed.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use huizhen_signaling::protocol::{ClientMessage, ServerMessage};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_huizhen");

struct Running {
    child: Child,
    http: String,
    api_key: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("huizhen.toml");
    let config = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[media]\nudp_listen = \"127.0.0.1:0\"\ntcp_listen = \"127.0.0.1:0\"\n[turn]\nudp_listen = \"127.0.0.1:0\"\ntcp_listen = \"127.0.0.1:0\"\n[storage]\ndata_dir = \"{}\"\n[archive]\nlocal_dir = \"{}\"\n",
        dir.join("data").display(),
        dir.join("archive").display()
    );
    std::fs::write(&path, config).unwrap();
    path
}

/// Start `huizhen serve` and read its address and generated API key from stdout.
fn start(config: &Path) -> Running {
    let mut child = Command::new(BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut http, mut api_key) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while (http.is_none() || api_key.is_none()) && Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if line.contains("/room/demo") {
            http = line
                .split("http://")
                .nth(1)
                .and_then(|r| r.split('/').next())
                .map(str::to_owned);
        }
        if let Some(rest) = line.trim().strip_prefix("API key:") {
            api_key = rest.split_whitespace().next().map(str::to_owned);
        }
    }
    Running {
        child,
        http: http.expect("address printed"),
        api_key: api_key.expect("generated API key printed"),
    }
}

fn stop(mut running: Running) {
    let pid = running.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while running.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn http(
    base: &str,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    http_json(base, method, path, Some(key), body).await
}

fn mint(config: &Path, sub: &str, role: &str, extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .args([
            "token",
            "--config",
            config.to_str().unwrap(),
            "--sub",
            sub,
            "--name",
            sub,
            "--role",
            role,
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn check_in(base: &str, token: String, appointment: &str) -> (Ws, ServerMessage) {
    let mut ws = connect_ws(base.parse().unwrap()).await;
    send_msg(&mut ws, &ClientMessage::Auth { token }).await;
    recv_until(&mut ws, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Authenticated { .. })
    })
    .await;
    send_msg(
        &mut ws,
        &ClientMessage::CheckIn {
            appointment: appointment.into(),
        },
    )
    .await;
    let (waiting, _) = recv_until(&mut ws, REPLY_TIMEOUT, |m| {
        matches!(
            m,
            ServerMessage::Waiting { .. } | ServerMessage::Error { .. }
        )
    })
    .await;
    (ws, waiting)
}

fn audit_verify(config: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["audit", "verify", "--config", config.to_str().unwrap()])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appointments_queue_and_audit_chain_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("huizhen-restart-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_config(&dir);

    let server = start(&config);
    let key = server.api_key.clone();
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 5 * 60_000;
    let (status, body) = http(
        &server.http,
        &key,
        "POST",
        "/api/v1/clinics",
        Some(json!({"id": "neuro", "doctor": "dr-x", "name": "Neurology"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    for (appt, patient) in [("ap-1", "p-1"), ("ap-2", "p-2")] {
        let (status, body) = http(
            &server.http,
            &key,
            "POST",
            "/api/v1/appointments",
            Some(json!({"id": appt, "clinic": "neuro", "patient": patient, "slot_start_ms": soon})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let t1 = mint(&config, "p-1", "patient", &["--appointment", "ap-1"]);
    let t2 = mint(&config, "p-2", "patient", &["--appointment", "ap-2"]);
    let (ws1, w1) = check_in(&server.http, t1.clone(), "ap-1").await;
    assert!(
        matches!(
            w1,
            ServerMessage::Waiting {
                position: Some(1),
                ..
            }
        ),
        "{w1:?}"
    );
    let (ws2, w2) = check_in(&server.http, t2.clone(), "ap-2").await;
    assert!(
        matches!(
            w2,
            ServerMessage::Waiting {
                position: Some(2),
                ..
            }
        ),
        "{w2:?}"
    );
    drop((ws1, ws2));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop(server);

    let before = audit_verify(&config);
    assert!(
        before.status.success(),
        "{}",
        String::from_utf8_lossy(&before.stderr)
    );
    let summary = String::from_utf8_lossy(&before.stdout).to_string();

    // Restart: the appointments are there, both patients keep their places on reconnecting.
    let server = start(&config);
    let (status, list) = http(
        &server.http,
        &server.api_key,
        "GET",
        "/api/v1/appointments?clinic=neuro",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert_eq!(ids, ["ap-1", "ap-2"]);
    let (_ws2, w2) = check_in(&server.http, t2, "ap-2").await;
    assert!(
        matches!(
            w2,
            ServerMessage::Waiting {
                position: Some(2),
                ..
            }
        ),
        "place kept: {w2:?}"
    );
    let (_ws1, w1) = check_in(&server.http, t1, "ap-1").await;
    assert!(
        matches!(
            w1,
            ServerMessage::Waiting {
                position: Some(1),
                ..
            }
        ),
        "place kept: {w1:?}"
    );
    // A reconnecting patient may be shown its place as soon as it authenticates (the queue
    // came back with the restart), before its check-in's batch is committed: the audit is
    // read again until both reconnections are in it (bounded), then checked exactly.
    let mut entries = serde_json::Value::Null;
    for _ in 0..50 {
        entries = http(&server.http, &server.api_key, "GET", "/api/v1/audit", None)
            .await
            .1;
        let reconnected = entries
            .as_array()
            .map(|a| a.iter().filter(|e| e["kind"] == "reconnected").count())
            .unwrap_or(0);
        if reconnected >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kinds: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "checked_in").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "reconnected").count(),
        2,
        "{kinds:?}"
    );
    stop(server);

    let after = audit_verify(&config);
    assert!(
        after.status.success(),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );
    assert_ne!(
        String::from_utf8_lossy(&after.stdout),
        summary,
        "the chain grew across the restart"
    );

    // One byte of entry 2 changed (by someone with file access, past the triggers).
    let db = dir.join("data").join("huizhen.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let triggers: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_log'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for t in triggers {
        conn.execute_batch(&format!("DROP TRIGGER {t}")).unwrap();
    }
    let changed = conn
        .execute("UPDATE audit_log SET at_ms = at_ms + 1 WHERE seq = 2", [])
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);
    let tampered = audit_verify(&config);
    assert!(
        !tampered.status.success(),
        "verify must fail after tampering"
    );
    let message = String::from_utf8_lossy(&tampered.stderr);
    assert!(
        message.contains("BROKEN") && message.contains('2'),
        "{message}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
