//! Bad input over real sockets: malformed signaling frames, invalid SDP, a second join, and
//! random bytes on the media ports. Each must get a typed error or be dropped and counted,
//! while the server keeps serving and the room's other participants keep their media.

use crate::common;

use std::time::Duration;

use common::rs_client::RsPeer;
use common::*;
use huizhen_signaling::protocol::{ErrorCode, ServerMessage};
use tokio::io::AsyncWriteExt;

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_text(&addr.to_string(), "GET", path, None, None).await
}

async fn expect_error(ws: &mut Ws, code: ErrorCode) -> String {
    match recv_msg(ws).await {
        ServerMessage::Error { code: got, message } => {
            assert_eq!(got, code, "error code (message: {message})");
            assert!(!message.is_empty());
            message
        }
        other => panic!("expected error {code:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_signaling_gets_typed_errors_and_the_socket_survives() {
    init_tracing();
    let server = start_server().await;
    // A stranger (neither authenticated nor joined) gets typed errors, and after three
    // refusals the socket is closed.
    let mut stranger = connect_ws(server.http_addr()).await;
    send_text(&mut stranger, r#"{"type":"offer","sdp":"v=0"}"#).await;
    expect_error(&mut stranger, ErrorCode::NotJoined).await;
    send_text(
        &mut stranger,
        r#"{"type":"join","v":99,"room":"r","display_name":"x"}"#,
    )
    .await;
    expect_error(&mut stranger, ErrorCode::UnsupportedVersion).await;
    send_text(&mut stranger, r#"{"type":"join","v":1,"room":42}"#).await;
    expect_error(&mut stranger, ErrorCode::InvalidMessage).await;
    expect_error(&mut stranger, ErrorCode::TooManyRefusals).await;
    assert!(
        matches!(
            next_event(&mut stranger, REPLY_TIMEOUT).await,
            Some(WsEvent::Closed(_))
        ),
        "the stranger's socket is closed"
    );

    // A joined socket survives every kind of bad frame.
    let mut ws = connect_ws(server.http_addr()).await;
    let room = unique_room("bad");
    join(&mut ws, &room, "patient").await;
    send_text(&mut ws, "{this is not json").await;
    expect_error(&mut ws, ErrorCode::BadJson).await;
    send_text(&mut ws, "[1,2,3]").await;
    expect_error(&mut ws, ErrorCode::BadJson).await;
    send_text(&mut ws, r#"{"no_type":true}"#).await;
    expect_error(&mut ws, ErrorCode::BadJson).await;
    send_text(&mut ws, r#"{"type":"teleport","to":"mars"}"#).await;
    expect_error(&mut ws, ErrorCode::UnknownType).await;
    send_text(&mut ws, r#"{"type":"join","v":1,"room":42}"#).await;
    expect_error(&mut ws, ErrorCode::InvalidMessage).await;

    send_msg(&mut ws, &join_msg(&room, "again")).await;
    expect_error(&mut ws, ErrorCode::AlreadyJoined).await;
    send_text(&mut ws, r#"{"type":"offer","sdp":"this is not sdp"}"#).await;
    let message = expect_error(&mut ws, ErrorCode::InvalidSdp).await;
    assert!(
        !message.contains("PointerOffset"),
        "internal detail leaked: {message}"
    );
    send_text(&mut ws, r#"{"type":"answer","sdp":"v=0\r\n"}"#).await;
    let reply = recv_msg(&mut ws).await;
    assert!(
        matches!(
            reply,
            ServerMessage::Error {
                code: ErrorCode::InvalidSdp | ErrorCode::NoPendingOffer,
                ..
            }
        ),
        "{reply:?}"
    );
    send_text(
        &mut ws,
        r#"{"type":"candidate","candidate":"candidate:nonsense"}"#,
    )
    .await;
    expect_error(&mut ws, ErrorCode::InvalidCandidate).await;
    let huge = format!(r#"{{"type":"offer","sdp":"{}"}}"#, "x".repeat(300 * 1024));
    send_text(&mut ws, huge).await;
    expect_error(&mut ws, ErrorCode::BadJson).await;

    // Still alive and joined.
    send_text(&mut ws, r#"{"type":"ping"}"#).await;
    assert_eq!(recv_msg(&mut ws).await, ServerMessage::Pong {});
    let metrics = server.render_metrics();
    assert!(metric_sum(&metrics, "huizhen_signaling_errors_total") >= 12.0);
    assert!(
        metric_sum(
            &metrics,
            "huizhen_signaling_errors_total{code=\"invalid_sdp\"}"
        ) >= 1.0
    );
    assert_eq!(metric_sum(&metrics, "huizhen_sfu_participants"), 1.0);

    send_text(&mut ws, r#"{"type":"leave"}"#).await;
    let (bye, _) = recv_until(&mut ws, REPLY_TIMEOUT, |m| {
        matches!(m, ServerMessage::Bye { .. })
    })
    .await;
    assert_eq!(
        bye,
        ServerMessage::Bye {
            reason: "left".into()
        }
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_media_ports_is_counted_and_the_room_keeps_its_media() {
    init_tracing();
    let server = start_server().await;
    let room = unique_room("garbage");
    let a = RsPeer::connect(server.http_addr(), &room, "a", 0)
        .await
        .expect("peer a");
    let b = RsPeer::connect(server.http_addr(), &room, "b", 1)
        .await
        .expect("peer b");
    a.wait_remote_tracks(2, Duration::from_secs(20))
        .await
        .expect("a sees b's tracks");
    b.wait_remote_tracks(2, Duration::from_secs(20))
        .await
        .expect("b sees a's tracks");
    let media_a = a.start_media(Duration::from_millis(20));
    let media_b = b.start_media(Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_a = a.received_total();
    let before_b = b.received_total();

    // Random datagrams from a stranger, and shaped like STUN/DTLS/RTP by their first byte.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut seed = 0x1234_5678_u32;
    for i in 0..2_000u32 {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let len = (seed % 1200) as usize;
        let mut bytes: Vec<u8> = (0..len)
            .map(|j| (seed >> (j % 24)) as u8 ^ j as u8)
            .collect();
        if let Some(first) = bytes.first_mut() {
            *first = [0u8, 1, 23, 128, 200, 255][(i % 6) as usize];
        }
        let _ = udp.send_to(&bytes, server.udp_addr()).await;
        if i % 100 == 99 {
            // Paced, so the kernel's socket buffer does not drop what the test wants counted.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Garbage on ICE-TCP: a frame of junk, then a truncated frame and a hang-up.
    let tcp_addr = server.tcp_addr().expect("ICE-TCP enabled");
    let mut tcp = tokio::net::TcpStream::connect(tcp_addr).await.unwrap();
    tcp.write_all(&[0, 5, 1, 2, 3, 4, 5, 0xff, 0xff, 9])
        .await
        .unwrap();
    drop(tcp);

    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_a = a.received_total();
    let after_b = b.received_total();
    assert!(
        after_a > before_a + 50,
        "a's media stalled: {before_a} -> {after_a}"
    );
    assert!(
        after_b > before_b + 50,
        "b's media stalled: {before_b} -> {after_b}"
    );
    let metrics = server.render_metrics();
    let dropped = metric_sum(&metrics, "huizhen_sfu_dropped_packets_total");
    assert!(
        dropped >= 1_500.0,
        "only {dropped} garbage datagrams counted:\n{metrics}"
    );
    assert_eq!(metric_sum(&metrics, "huizhen_sfu_participants"), 2.0);
    let (status, _) = http_get(server.http_addr(), "/healthz").await;
    assert_eq!(status, 200);
    media_a.stop().await;
    media_b.stop().await;
    a.close().await;
    b.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_client_pages_are_served() {
    let server = start_server().await;
    let addr = server.http_addr();
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    assert_eq!(http_get(addr, "/readyz").await.0, 200);
    let (status, page) = http_get(addr, "/room/consult-1").await;
    assert_eq!(status, 200);
    assert!(page.contains("/static/room.js"));
    assert_eq!(http_get(addr, "/static/room.js").await.0, 200);
    assert_eq!(http_get(addr, "/static/../Cargo.toml").await.0, 404);
    let (status, metrics) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "huizhen_sfu_rooms",
        "huizhen_sfu_participants",
        "huizhen_sfu_published_tracks",
        "huizhen_sfu_rtp_packets_received_total",
        "huizhen_sfu_rtp_bytes_sent_total",
        "huizhen_sfu_nacks_received_total",
        "huizhen_sfu_keyframe_requests_sent_total",
        "huizhen_sfu_dropped_packets_total",
        "huizhen_sfu_forward_latency_seconds_bucket",
        "huizhen_signaling_connections",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    // Every metric the shipped Grafana dashboard charts must exist.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/configs/grafana-dashboard.json"
    ))
    .unwrap();
    let mut charted = 0;
    for (i, _) in dashboard.match_indices("huizhen_") {
        let name: String = dashboard[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            metrics.contains(&name),
            "dashboard charts {name}, which /metrics lacks"
        );
        charted += 1;
    }
    assert!(charted >= 15, "dashboard references only {charted} metrics");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_whose_sockets_keep_being_closed_for_refusals_is_shut_out() {
    init_tracing();
    let server = start_server().await;
    // Twenty stranger sockets in a row, each closed after three refused frames.
    for i in 0..20 {
        let mut ws = connect_ws(server.http_addr()).await;
        for _ in 0..3 {
            send_text(&mut ws, "{not json").await;
        }
        let mut closed = false;
        for _ in 0..10 {
            match next_event(&mut ws, REPLY_TIMEOUT).await {
                Some(WsEvent::Closed(_)) | None => {
                    closed = true;
                    break;
                }
                Some(_) => {}
            }
        }
        assert!(closed, "socket {i} was closed after its refusals");
    }
    // The next upgrade from this address is refused cheaply, and counted.
    let url = format!("ws://{}/ws", server.http_addr());
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429)
        }
        other => panic!("expected 429, got {:?}", other.map(|(_, r)| r.status())),
    }
    assert!(
        metric_sum(
            &server.render_metrics(),
            "huizhen_signaling_blocked_upgrades_total"
        ) >= 1.0
    );
    // Plain HTTP (the REST API, pages) is not affected.
    let (status, _) = http_get(server.http_addr(), "/healthz").await;
    assert_eq!(status, 200);
    server.shutdown().await;
}

/// A server with a token key (production) admits calls through the clinic only: rooms by name
/// are refused over the WebSocket and WHIP unless `signaling.open_rooms` says otherwise.
#[tokio::test]
async fn open_rooms_are_off_in_production_unless_configured() {
    init_tracing();
    let secret = "a-production-secret-from-the-hospital-0123456789".to_owned();
    for open_rooms in [None, Some(false), Some(true)] {
        let mut config = huizhen::config::Config::loopback_for_tests();
        config.auth.hs256_secret = Some(secret.clone());
        config.signaling.open_rooms = open_rooms;
        let server = huizhen::server::start(config).await.unwrap();
        let mut ws = connect_ws(server.http_addr()).await;
        send_msg(&mut ws, &join_msg("demo", "Stranger")).await;
        let whip = reqwest::Client::new()
            .post(format!("http://{}/whip/room/demo", server.http_addr()))
            .header("content-type", "application/sdp")
            .body("v=0\r\n")
            .send()
            .await
            .unwrap()
            .status();
        if open_rooms == Some(true) {
            assert!(
                matches!(recv_msg(&mut ws).await, ServerMessage::Joined { .. }),
                "configured on: joined"
            );
            assert_ne!(
                whip.as_u16(),
                403,
                "configured on: WHIP is not refused as forbidden"
            );
        } else {
            let message = expect_error(&mut ws, ErrorCode::Forbidden).await;
            assert!(message.contains("open_rooms"), "{message}");
            assert_eq!(whip.as_u16(), 403, "{open_rooms:?}");
        }
        server.shutdown().await;
    }
}

/// Room names are a small alphabet; consultation rooms are out of reach by name in any case.
#[tokio::test]
async fn room_names_outside_the_alphabet_or_like_consultations_are_refused() {
    init_tracing();
    let server = start_server().await;
    for (room, code) in [
        ("consult\u{200b}-c1", ErrorCode::InvalidMessage),
        ("Consult-c1", ErrorCode::Forbidden),
        ("a room", ErrorCode::InvalidMessage),
    ] {
        let mut ws = connect_ws(server.http_addr()).await;
        send_msg(&mut ws, &join_msg(room, "Stranger")).await;
        let message = expect_error(&mut ws, code).await;
        assert!(!message.contains(room), "the name is not echoed: {message}");
    }
    server.shutdown().await;
}

/// Next text frame as JSON (the `request_id` is not part of [`ServerMessage`]).
async fn next_json(ws: &mut Ws) -> serde_json::Value {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("the socket is open")
            .expect("no socket error");
        if let tokio_tungstenite::tungstenite::Message::Text(text) = frame {
            return serde_json::from_str(&text).expect("JSON");
        }
    }
}

/// A request's `request_id` comes back in its reply, whether the reply is an error, a `pong`,
/// or `joined` from the media task; a bad one is refused without being quoted.
#[tokio::test]
async fn request_ids_are_echoed_in_replies_and_errors() {
    init_tracing();
    let server = start_server().await;
    let mut ws = connect_ws(server.http_addr()).await;
    send_text(&mut ws, r#"{"type":"ping","request_id":7}"#).await;
    let pong = next_json(&mut ws).await;
    assert_eq!(
        (pong["type"].as_str(), pong["request_id"].as_u64()),
        (Some("pong"), Some(7))
    );
    send_text(
        &mut ws,
        r#"{"type":"offer","sdp":"v=0","request_id":"o-1"}"#,
    )
    .await;
    let error = next_json(&mut ws).await;
    assert_eq!(error["code"], "not_joined");
    assert_eq!(error["request_id"], "o-1");
    let long = "x".repeat(65);
    send_text(
        &mut ws,
        format!(r#"{{"type":"ping","request_id":"{long}"}}"#),
    )
    .await;
    let error = next_json(&mut ws).await;
    assert_eq!(error["code"], "invalid_message");
    assert!(!error.to_string().contains(&long), "not quoted: {error}");
    send_text(
        &mut ws,
        r#"{"type":"join","v":1,"room":"rid-room","display_name":"Ann","request_id":"j-1"}"#,
    )
    .await;
    let joined = next_json(&mut ws).await;
    assert_eq!(joined["type"], "joined");
    assert_eq!(joined["request_id"], "j-1");
    // A frame without one gets a reply without one.
    send_text(&mut ws, r#"{"type":"ping"}"#).await;
    let pong = next_json(&mut ws).await;
    assert!(pong.get("request_id").is_none(), "{pong}");
    server.shutdown().await;
}
