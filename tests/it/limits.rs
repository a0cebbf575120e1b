//! What a stranger's connections may cost (issue 11): per-source and total caps on HTTP
//! connections (WebSockets included), and a deadline for a request head, so that a client
//! sending its headers a byte at a time, or many idle sockets from one address, cannot hold
//! the server, while others go on connecting and joining.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::{self, metric_sum};

async fn metrics(addr: SocketAddr) -> String {
    common::http_text(&addr.to_string(), "GET", "/metrics", None, None)
        .await
        .1
}

/// A TCP connection to `server` from `source` (any port).
async fn connect_from(source: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

/// Whether the server closed `stream` within `wait` (EOF or reset), reading what it sends.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn one_source_is_capped_others_connect_and_a_slow_header_is_cut() {
    common::init_tracing();
    let mut config = huizhen::config::Config::loopback_for_tests();
    config.http.max_connections_per_source = 20;
    config.http.header_read_timeout_seconds = 1;
    let server = huizhen::server::start(config).await.unwrap();
    let addr = server.http_addr();

    // A stranger at 127.0.0.5 opens 20 connections and sends nothing: they are held (up to the
    // header deadline); the 21st is closed at once.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(connect_from("127.0.0.5", addr).await);
    }
    let mut over = connect_from("127.0.0.5", addr).await;
    assert!(
        closed_within(&mut over, Duration::from_secs(5)).await,
        "the connection over the source's cap is closed"
    );
    // Meanwhile another address joins a room over a WebSocket.
    let mut ws = common::connect_ws(addr).await;
    let joined = common::join(&mut ws, &common::unique_room("limits"), "Doctor").await;
    assert!(!joined.participant_id.is_empty());
    let text = metrics(addr).await;
    assert!(
        metric_sum(
            &text,
            "huizhen_http_connections_refused_total{reason=\"source_cap\"}"
        ) >= 1.0,
        "{text}"
    );
    // The held connections never sent a request head: each is closed by the deadline.
    for mut c in held {
        assert!(
            closed_within(&mut c, Duration::from_secs(10)).await,
            "an idle connection is closed after the header deadline"
        );
    }
    // A client that sends its head a byte a second is cut off too.
    let mut slow = connect_from("127.0.0.6", addr).await;
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n";
    let mut cut = false;
    for b in head {
        if slow.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        if closed_within(&mut slow, Duration::from_millis(400)).await {
            cut = true;
            break;
        }
    }
    assert!(cut, "a head sent a byte at a time was cut off");
    // The WebSocket, once upgraded, is not subject to the header deadline.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    common::send_msg(
        &mut ws,
        &huizhen_signaling::protocol::ClientMessage::Ping {},
    )
    .await;
    assert!(matches!(
        common::recv_msg(&mut ws).await,
        huizhen_signaling::protocol::ServerMessage::Pong {}
    ));
    // Given back: the source may connect again, and the gauge counts only what is open.
    let mut again = connect_from("127.0.0.5", addr).await;
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    again.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_total_cap_closes_what_is_over_it() {
    common::init_tracing();
    let mut config = huizhen::config::Config::loopback_for_tests();
    config.http.max_http_connections = 5;
    let server = huizhen::server::start(config).await.unwrap();
    let addr = server.http_addr();
    let mut held = Vec::new();
    for i in 0..5 {
        held.push(connect_from(&format!("127.0.1.{}", i + 1), addr).await);
    }
    let mut over = connect_from("127.0.1.9", addr).await;
    assert!(closed_within(&mut over, Duration::from_secs(5)).await);
    drop(held);
    // Room again once they are gone (the server notices the closes).
    let mut ok = false;
    for _ in 0..50 {
        let mut c = connect_from("127.0.1.9", addr).await;
        let _ = c
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer).await;
        if answer.starts_with(b"HTTP/1.1 200") {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "served again once the others closed");
    let text = metrics(addr).await;
    assert!(
        metric_sum(
            &text,
            "huizhen_http_connections_refused_total{reason=\"total_cap\"}"
        ) >= 1.0,
        "{text}"
    );
    server.shutdown().await;
}

/// A raw WebSocket upgrade from `source`; the 101 answer is read whole.
async fn raw_websocket(source: &str, server: SocketAddr) -> TcpStream {
    let mut s = connect_from(source, server).await;
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("101 in time")
            .unwrap();
        assert!(n > 0, "closed before the 101");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    s
}

/// The header of a masked client text frame announcing `len` payload bytes.
fn frame_header(len: u64) -> Vec<u8> {
    let mut f = vec![0x81, 0x80 | 127];
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[1, 2, 3, 4]);
    f
}

#[tokio::test]
async fn a_stranger_announcing_a_large_frame_is_cut_and_strangers_do_not_take_the_session_seats() {
    common::init_tracing();
    let mut config = huizhen::config::Config::loopback_for_tests();
    // Two signaling sessions at most; strangers must not take them.
    config.http.max_connections = 2;
    let server = huizhen::server::start(config).await.unwrap();
    let addr = server.http_addr();

    // A frame header announcing 1 MB from a socket that never authenticated: closed at once,
    // before the payload (tungstenite would have reserved the whole length).
    let mut big = raw_websocket("127.0.2.1", addr).await;
    big.write_all(&frame_header(1_000_000)).await.unwrap();
    big.write_all(&[b'a'; 1000]).await.unwrap();
    assert!(
        closed_within(&mut big, Duration::from_secs(5)).await,
        "a stranger's 1 MB frame is refused"
    );
    // Many small frames: the stranger's budget (12 KiB) runs out well before 100 KiB.
    let mut chatty = raw_websocket("127.0.2.2", addr).await;
    let mut sent = 0usize;
    let mut cut = false;
    for _ in 0..100 {
        let mut f = vec![0x81, 0x80 | 126];
        f.extend_from_slice(&1000u16.to_be_bytes());
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(std::iter::repeat_n(b' ' ^ 1, 1000));
        if chatty.write_all(&f).await.is_err() {
            cut = true;
            break;
        }
        sent += f.len();
        if closed_within(&mut chatty, Duration::from_millis(50)).await {
            cut = true;
            break;
        }
    }
    assert!(cut, "a stranger sending {sent} bytes is cut");
    assert!(sent < 40_000, "cut after {sent} bytes");

    // Five idle strangers hold WebSockets; two participants still join (the seats are for
    // sockets that joined or authenticated) and a third is told the server is full.
    let mut strangers = Vec::new();
    for i in 0..5 {
        strangers.push(raw_websocket(&format!("127.0.2.{}", 10 + i), addr).await);
    }
    let room = common::unique_room("seats");
    let mut a = common::connect_ws(addr).await;
    common::join(&mut a, &room, "A").await;
    let mut b = common::connect_ws(addr).await;
    common::join(&mut b, &room, "B").await;
    let mut c = common::connect_ws(addr).await;
    common::send_msg(&mut c, &common::join_msg(&room, "C")).await;
    let (refused, _) = common::recv_until(&mut c, Duration::from_secs(10), |m| {
        matches!(m, huizhen_signaling::protocol::ServerMessage::Error { .. })
    })
    .await;
    assert!(
        matches!(
            &refused,
            huizhen_signaling::protocol::ServerMessage::Error { code, .. }
                if *code == huizhen_signaling::protocol::ErrorCode::Unavailable
        ),
        "{refused:?}"
    );
    drop(strangers);
    server.shutdown().await;
}

#[tokio::test]
async fn a_body_is_not_read_before_its_sender_is_known() {
    common::init_tracing();
    let mut config = huizhen::config::Config::loopback_for_tests();
    config.api.key = Some("limits-key-0123456789abcdef".into());
    let server = huizhen::server::start(config).await.unwrap();
    let addr = server.http_addr();
    // A REST body and a WHIP offer of 2 MB announced, a few bytes sent, no key and no token:
    // refused with 401 at once, while the body is still coming.
    for head in [
        "POST /api/v1/clinics HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n{\"id\":",
        "POST /whip/consultation/c-1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\nContent-Length: 2000000\r\n\r\nv=0\r\n",
        "POST /whip/consultation/c-1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not.a.token\r\nContent-Type: application/sdp\r\nContent-Length: 2000000\r\n\r\nv=0\r\n",
    ] {
        let mut s = connect_from("127.0.3.1", addr).await;
        s.write_all(head.as_bytes()).await.unwrap();
        let mut answer = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut answer))
            .await
            .expect("answered before the body was complete")
            .unwrap();
        assert_eq!(&answer, b"HTTP/1.1 401", "{head}");
    }
    server.shutdown().await;
}
