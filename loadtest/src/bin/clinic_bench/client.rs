//! The clients: the REST admin API (`/api/v1`) and signaling WebSockets (`/ws`), with JSON
//! kept as `serde_json::Value` so the bench reads any server version that speaks the protocol.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Lifetime of the tokens the bench mints.
const TOKEN_TTL_SECS: u64 = 6 * 3600;

/// The REST admin API.
#[derive(Clone)]
pub struct Api {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Api {
    /// A client of the server at `host:port`.
    pub fn new(addr: &str, key: &str) -> anyhow::Result<Api> {
        Ok(Api {
            base: format!("http://{addr}/api/v1"),
            key: key.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .pool_max_idle_per_host(64)
                .build()?,
        })
    }

    /// `GET path`: status and JSON body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await?;
        let status = response.status().as_u16();
        let body = response.bytes().await?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// `POST path` with a JSON body: status and JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let body = response.bytes().await?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    async fn post_ok(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let (status, reply) = self.post(path, &body).await?;
        if !(200..300).contains(&status) {
            bail!("POST /api/v1{path} {body}: HTTP {status} {reply}");
        }
        Ok(reply)
    }

    /// Create (or replace) a clinic.
    pub async fn create_clinic(&self, id: &str, doctor: &str) -> anyhow::Result<()> {
        self.post_ok(
            "/clinics",
            json!({ "id": id, "doctor": doctor, "name": format!("Bench {id}"), "slot_minutes": 15 }),
        )
        .await
        .map(drop)
    }

    /// Book an appointment.
    pub async fn create_appointment(
        &self,
        id: &str,
        clinic: &str,
        patient: &str,
        slot_start_ms: u64,
    ) -> anyhow::Result<()> {
        self.post_ok(
            "/appointments",
            json!({ "id": id, "clinic": clinic, "patient": patient, "slot_start_ms": slot_start_ms }),
        )
        .await
        .map(drop)
    }

    /// A doctor's token for `clinics`.
    pub async fn doctor_token(&self, sub: &str, clinics: &[&str]) -> anyhow::Result<String> {
        let reply = self
            .post_ok(
                "/tokens",
                json!({ "sub": sub, "name": sub, "role": "doctor", "clinics": clinics, "ttl_secs": TOKEN_TTL_SECS }),
            )
            .await?;
        token_of(reply)
    }

    /// A patient's token for `appointment`.
    pub async fn patient_token(&self, sub: &str, appointment: &str) -> anyhow::Result<String> {
        let reply = self
            .post_ok(
                "/tokens",
                json!({ "sub": sub, "name": sub, "role": "patient", "appointment": appointment, "ttl_secs": TOKEN_TTL_SECS }),
            )
            .await?;
        token_of(reply)
    }

    /// Audit entries after `after_seq` (paged, at most `max_pages` pages of 10,000): how many,
    /// by kind, and the last `seq` seen.
    pub async fn audit_since(
        &self,
        after_seq: u64,
        max_pages: usize,
    ) -> anyhow::Result<AuditCount> {
        let mut count = AuditCount {
            last_seq: after_seq,
            ..AuditCount::default()
        };
        for _ in 0..max_pages {
            let (status, page) = self
                .get(&format!(
                    "/audit?from_seq={}&limit=10000",
                    count.last_seq + 1
                ))
                .await?;
            if status != 200 {
                bail!("GET /api/v1/audit: HTTP {status} {page}");
            }
            let entries = page
                .as_array()
                .ok_or_else(|| anyhow!("audit page is not an array"))?;
            let mut advanced = false;
            for e in entries {
                let seq = e["seq"].as_u64().context("audit entry without seq")?;
                // A server that ignores from_seq would send entries again: count each once.
                if seq <= count.last_seq {
                    continue;
                }
                advanced = true;
                count.last_seq = seq;
                count.rows += 1;
                let kind = e["kind"].as_str().unwrap_or("?").to_owned();
                *count.kinds.entry(kind).or_default() += 1;
            }
            if !advanced || entries.len() < 10_000 {
                return Ok(count);
            }
        }
        count.truncated = true;
        Ok(count)
    }
}

/// What [`Api::audit_since`] found.
#[derive(Debug, Clone, Default)]
pub struct AuditCount {
    /// Entries after the starting seq.
    pub rows: u64,
    /// By kind.
    pub kinds: BTreeMap<String, u64>,
    /// The last seq seen (the starting one if none).
    pub last_seq: u64,
    /// Stopped at the page limit.
    pub truncated: bool,
}

impl AuditCount {
    /// `kind=count, …`, largest first.
    pub fn kinds_text(&self) -> String {
        let mut kinds: Vec<(&String, &u64)> = self.kinds.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        kinds
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn token_of(reply: Value) -> anyhow::Result<String> {
    reply["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no token in {reply}"))
}

/// Why waiting on a socket ended without the expected message.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The server closed the socket (or it broke).
    #[error("socket closed while waiting for {0}")]
    Closed(String),
    /// Nothing matching before the deadline.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// The server answered with an error frame.
    #[error("waiting for {what}: server error {code}: {message}")]
    Refused {
        /// What was awaited.
        what: String,
        /// The error code.
        code: String,
        /// Its message.
        message: String,
    },
    /// Connecting or sending failed.
    #[error("{0}")]
    Io(String),
}

/// A signaling WebSocket.
pub struct Ws {
    inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    /// Open `ws://addr/ws`.
    pub async fn connect(addr: &str) -> Result<Ws, WsError> {
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0);
        let (inner, _) = tokio_tungstenite::connect_async_with_config(
            format!("ws://{addr}/ws"),
            Some(config),
            true,
        )
        .await
        .map_err(|e| WsError::Io(format!("connecting: {e}")))?;
        Ok(Ws { inner })
    }

    /// Send one JSON frame.
    pub async fn send(&mut self, frame: &Value) -> Result<(), WsError> {
        self.inner
            .send(Message::text(frame.to_string()))
            .await
            .map_err(|e| WsError::Io(format!("sending: {e}")))
    }

    /// The next JSON message, `None` when the socket closed, `Err(Timeout)` at the deadline.
    pub async fn next_json(
        &mut self,
        deadline: Instant,
        what: &str,
    ) -> Result<Option<Value>, WsError> {
        loop {
            let next = tokio::time::timeout_at(deadline.into(), self.inner.next())
                .await
                .map_err(|_| WsError::Timeout(what.to_owned()))?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Ok(Some(serde_json::from_str(&text).unwrap_or(Value::Null)))
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Ok(None),
                Some(Ok(_)) => {}
            }
        }
    }

    /// Read until a message of `type` for which `accept` holds; skips everything else, fails on
    /// an `error` frame, a close or the deadline. Returns the message and when it arrived.
    pub async fn wait_for(
        &mut self,
        kind: &str,
        deadline: Instant,
        accept: impl Fn(&Value) -> bool,
    ) -> Result<(Value, Instant), WsError> {
        loop {
            let Some(message) = self.next_json(deadline, kind).await? else {
                return Err(WsError::Closed(kind.to_owned()));
            };
            let at = Instant::now();
            match message["type"].as_str() {
                Some(t) if t == kind && accept(&message) => return Ok((message, at)),
                Some("error") => {
                    return Err(WsError::Refused {
                        what: kind.to_owned(),
                        code: message["code"].as_str().unwrap_or("?").to_owned(),
                        message: message["message"].as_str().unwrap_or("").to_owned(),
                    })
                }
                _ => {}
            }
        }
    }

    /// Open a socket and authenticate with `token`.
    pub async fn open_authenticated(
        addr: &str,
        token: &str,
        timeout: Duration,
    ) -> Result<Ws, WsError> {
        let mut ws = Ws::connect(addr).await?;
        ws.send(&json!({ "type": "auth", "token": token })).await?;
        ws.wait_for("authenticated", Instant::now() + timeout, |_| true)
            .await?;
        Ok(ws)
    }

    /// Close politely (bounded).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.close(None)).await;
    }

    /// Split for a concurrent reader.
    pub fn into_inner(self) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        self.inner
    }
}
