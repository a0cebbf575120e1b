//! Helpers shared by the integration tests: an in-process server, a WebSocket signaling
//! client, and a webrtc-rs peer ([`rs_client::RsPeer`]) that joins through `/ws`, publishes
//! synthetic Opus + VP8 RTP and verifies what it receives.
//!
//! Everything binds to 127.0.0.1; no packet leaves the loopback network.
#![allow(dead_code)]

pub mod media;
pub mod rs_client;
pub mod s3;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use huizhen_signaling::protocol::{
    ClientMessage, ParticipantInfo, ServerMessage, PROTOCOL_VERSION,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A client WebSocket to the server's `/ws`.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Default time to wait for one signaling reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Log to the test output when `RUST_LOG` is set (server `tracing` and webrtc-rs `log`
/// records both end up here). Safe to call from every test.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Start a server on loopback with ephemeral ports.
pub async fn start_server() -> huizhen::server::ServerHandle {
    let config = huizhen::config::Config::loopback_for_tests();
    huizhen::server::start(config)
        .await
        .expect("huizhen server starts on loopback")
}

/// A room name no other test uses.
pub fn unique_room(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// Open a WebSocket to `ws://{http_addr}/ws`.
pub async fn connect_ws(http_addr: SocketAddr) -> Ws {
    let url = format!("ws://{http_addr}/ws");
    let (ws, _response) =
        tokio::time::timeout(REPLY_TIMEOUT, tokio_tungstenite::connect_async(&url))
            .await
            .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
            .unwrap_or_else(|e| panic!("connecting to {url} failed: {e}"));
    ws
}

/// Send a raw text frame (for malformed-input tests).
pub async fn send_text(ws: &mut Ws, text: impl Into<String>) {
    ws.send(Message::text(text.into()))
        .await
        .expect("sending a WebSocket text frame");
}

/// Send one protocol message.
pub async fn send_msg(ws: &mut Ws, msg: &ClientMessage) {
    let json = serde_json::to_string(msg).expect("ClientMessage serializes");
    send_text(ws, json).await;
}

/// What the socket produced next.
#[derive(Debug)]
pub enum WsEvent {
    /// A server message.
    Msg(ServerMessage),
    /// A text frame that is not a valid [`ServerMessage`] (a server bug).
    Unparsable(String),
    /// The server closed the socket (close frame, EOF or error).
    Closed(String),
}

/// Next text frame / close from the socket, skipping pings, pongs and binary frames.
/// `None` on timeout.
pub async fn next_event(ws: &mut Ws, timeout: Duration) -> Option<WsEvent> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next()).await.ok()?;
        return Some(match next {
            Some(Ok(Message::Text(text))) => match serde_json::from_str::<ServerMessage>(&text) {
                Ok(m) => WsEvent::Msg(m),
                Err(_) => WsEvent::Unparsable(text.to_string()),
            },
            Some(Ok(Message::Close(frame))) => WsEvent::Closed(format!("close frame {frame:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => WsEvent::Closed(format!("error {e}")),
            None => WsEvent::Closed("end of stream".into()),
        });
    }
}

/// Next server message; panics on timeout, close or an unparsable frame.
pub async fn recv_msg(ws: &mut Ws) -> ServerMessage {
    match next_event(ws, REPLY_TIMEOUT).await {
        Some(WsEvent::Msg(m)) => m,
        Some(other) => panic!("expected a server message, got {other:?}"),
        None => panic!("no server message within {REPLY_TIMEOUT:?}"),
    }
}

/// Read messages until one matches; the skipped ones are returned too, in order.
pub async fn recv_until(
    ws: &mut Ws,
    timeout: Duration,
    mut pred: impl FnMut(&ServerMessage) -> bool,
) -> (ServerMessage, Vec<ServerMessage>) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_event(ws, left).await {
            Some(WsEvent::Msg(m)) if pred(&m) => return (m, skipped),
            Some(WsEvent::Msg(m)) => skipped.push(m),
            Some(other) => panic!("waiting for a message, got {other:?}; before it: {skipped:?}"),
            None => panic!("no matching message within {timeout:?}; got {skipped:?}"),
        }
    }
}

/// The server's `joined` reply.
#[derive(Debug, Clone)]
pub struct Joined {
    /// Our participant id.
    pub participant_id: String,
    /// Who was already in the room.
    pub participants: Vec<ParticipantInfo>,
    /// The TURN servers and credential handed out.
    pub ice_servers: Vec<huizhen_signaling::protocol::IceServer>,
}

/// The `join` message for protocol v1.
pub fn join_msg(room: &str, display_name: &str) -> ClientMessage {
    ClientMessage::Join {
        v: PROTOCOL_VERSION,
        room: room.to_owned(),
        display_name: display_name.to_owned(),
        token: None,
    }
}

/// Send `join` and wait for `joined` (panics on anything else first).
pub async fn join(ws: &mut Ws, room: &str, display_name: &str) -> Joined {
    send_msg(ws, &join_msg(room, display_name)).await;
    match recv_msg(ws).await {
        ServerMessage::Joined {
            v,
            participant_id,
            room: joined_room,
            participants,
            ice_servers,
            ..
        } => {
            assert_eq!(v, PROTOCOL_VERSION, "server protocol version");
            assert_eq!(joined_room, room, "joined names the room we asked for");
            Joined {
                participant_id,
                participants,
                ice_servers,
            }
        }
        other => panic!("expected joined, got {other:?}"),
    }
}

/// A minimal HTTP/1.1 request over a fresh connection: `(status, body text)`.
pub async fn http_text(
    addr: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = bearer
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// [`http_text`] with the body parsed as JSON (`Null` if it is not JSON).
pub async fn http_json(
    addr: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let (status, text) = http_text(addr, method, path, bearer, body).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// A local receiver for the hospital-system webhooks: records verified bodies.
pub async fn webhook_receiver(
    secret: &'static str,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let store = store.clone();
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                let ts: u64 = h(huizhen::webhook::HEADER_TIMESTAMP).parse().unwrap_or(0);
                let sig = h(huizhen::webhook::HEADER_SIGNATURE);
                if !huizhen::webhook::verify_signature(secret.as_bytes(), ts, &body, &sig) {
                    return StatusCode::UNAUTHORIZED;
                }
                store
                    .lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// Sum of a metric's samples whose line starts with `prefix`.
pub fn metric_sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
