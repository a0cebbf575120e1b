//! The embedded TURN server through the running server's sockets, with a small client built
//! on the `turn-types` codecs: the credential from `joined` allocates; a permission for any
//! other address is refused; data sent to another port of the SFU's own IP (where a stranger
//! listens) never arrives; an expired credential is refused; TURN over TCP frames the same;
//! a TCP allocation (RFC 6062) carries a str0m peer's ICE-TCP session to the SFU, whose
//! audio a webrtc-rs subscriber receives.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use turn_types::attribute::{
    ConnectionId, Data as AData, RequestedTransport, XorPeerAddress, XorRelayedAddress,
};
use turn_types::message::{ALLOCATE, CONNECT, CONNECTION_BIND, CREATE_PERMISSION, SEND};
use turn_types::stun::attribute::{ErrorCode, Nonce, Realm, Username};
use turn_types::stun::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageType,
    MessageWriteVec, Method, TransactionId,
};
use turn_types::stun::prelude::*;

use crate::common::media::Kind;
use crate::common::rs_client::RsPeer;
use crate::common::{self, metric_sum};

/// One TURN client over UDP or TCP.
struct Client {
    transport: Conn,
    username: String,
    password: String,
    nonce: Option<String>,
}

enum Conn {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream),
}

impl Client {
    async fn udp(server: SocketAddr, username: &str, password: &str) -> Client {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        Client {
            transport: Conn::Udp(socket, server),
            username: username.into(),
            password: password.into(),
            nonce: None,
        }
    }

    async fn tcp(server: SocketAddr, username: &str, password: &str) -> Client {
        Client {
            transport: Conn::Tcp(TcpStream::connect(server).await.unwrap()),
            username: username.into(),
            password: password.into(),
            nonce: None,
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        match &mut self.transport {
            Conn::Udp(s, to) => {
                s.send_to(bytes, *to).await.unwrap();
            }
            Conn::Tcp(s) => s.write_all(bytes).await.unwrap(),
        }
    }

    async fn recv_raw(&mut self) -> Vec<u8> {
        let fut = async {
            match &mut self.transport {
                Conn::Udp(s, _) => {
                    let mut buf = vec![0u8; 2048];
                    let (n, _) = s.recv_from(&mut buf).await.unwrap();
                    buf.truncate(n);
                    buf
                }
                Conn::Tcp(s) => {
                    let mut head = [0u8; 20];
                    s.read_exact(&mut head).await.unwrap();
                    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
                    let mut msg = head.to_vec();
                    msg.resize(20 + len, 0);
                    s.read_exact(&mut msg[20..]).await.unwrap();
                    msg
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .expect("a TURN answer within 5 s")
    }

    fn request(
        &self,
        method: Method,
        tid: TransactionId,
        add: &dyn Fn(&mut MessageWriteVec, TransactionId),
    ) -> Vec<u8> {
        let mut b = Message::builder(
            MessageType::from_class_method(MessageClass::Request, method),
            tid,
            MessageWriteVec::new(),
        );
        add(&mut b, tid);
        if let Some(nonce) = &self.nonce {
            b.add_attribute(&Username::new(&self.username).unwrap())
                .unwrap();
            b.add_attribute(&Realm::new("huizhen").unwrap()).unwrap();
            b.add_attribute(&Nonce::new(nonce).unwrap()).unwrap();
            let creds: turn_types::stun::message::MessageIntegrityCredentials =
                LongTermKeyCredentials::new(
                    self.username.clone(),
                    self.password.clone(),
                    "huizhen".into(),
                )
                .into();
            b.add_message_integrity(&creds, IntegrityAlgorithm::Sha1)
                .unwrap();
        }
        b.finish()
    }

    /// A request, signed after the first 401 taught the nonce: (error code or None, reply).
    async fn call(
        &mut self,
        method: Method,
        add: &dyn Fn(&mut MessageWriteVec, TransactionId),
    ) -> (Option<u16>, Vec<u8>) {
        for _ in 0..2 {
            let tid = TransactionId::generate();
            let bytes = self.request(method, tid, add);
            self.send_raw(&bytes).await;
            let reply = self.recv_raw().await;
            let msg = Message::from_bytes(&reply).expect("a STUN reply");
            assert_eq!(msg.transaction_id(), tid);
            let code = msg.attribute::<ErrorCode>().ok().map(|e| e.code());
            if code == Some(401) && self.nonce.is_none() {
                self.nonce = Some(msg.attribute::<Nonce>().unwrap().nonce().to_owned());
                continue;
            }
            return (code, reply);
        }
        unreachable!()
    }

    async fn allocate(&mut self) -> (Option<u16>, Option<SocketAddr>) {
        self.allocate_protocol(17).await
    }

    /// An allocation relaying `protocol` (17 UDP, 6 TCP).
    async fn allocate_protocol(&mut self, protocol: u8) -> (Option<u16>, Option<SocketAddr>) {
        let (code, reply) = self
            .call(ALLOCATE, &|b, _| {
                b.add_attribute(&RequestedTransport::new(protocol)).unwrap();
            })
            .await;
        let msg = Message::from_bytes(&reply).unwrap();
        let relayed = msg
            .attribute::<XorRelayedAddress>()
            .ok()
            .map(|a| a.addr(msg.transaction_id()));
        (code, relayed)
    }

    /// `Connect` (RFC 6062): the error code, or the connection id.
    async fn connect(&mut self, peer: SocketAddr) -> Result<u32, u16> {
        let (code, reply) = self
            .call(CONNECT, &move |b, tid| {
                b.add_attribute(&XorPeerAddress::new(peer, tid)).unwrap();
            })
            .await;
        match code {
            Some(code) => Err(code),
            None => Ok(Message::from_bytes(&reply)
                .unwrap()
                .attribute::<ConnectionId>()
                .expect("a CONNECTION-ID")
                .id()),
        }
    }

    /// `ConnectionBind` (RFC 6062) on this connection: the error code, if any.
    async fn connection_bind(&mut self, id: u32) -> Option<u16> {
        self.call(CONNECTION_BIND, &move |b, _| {
            b.add_attribute(&ConnectionId::new(id)).unwrap();
        })
        .await
        .0
    }

    fn into_stream(self) -> TcpStream {
        match self.transport {
            Conn::Tcp(s) => s,
            Conn::Udp(..) => panic!("not a TCP client"),
        }
    }

    async fn permit(&mut self, peer: SocketAddr) -> Option<u16> {
        self.call(CREATE_PERMISSION, &move |b, tid| {
            b.add_attribute(&XorPeerAddress::new(peer, tid)).unwrap();
        })
        .await
        .0
    }

    async fn send_to_peer(&mut self, peer: SocketAddr, data: &[u8]) {
        let mut b = Message::builder(
            MessageType::from_class_method(MessageClass::Indication, SEND),
            TransactionId::generate(),
            MessageWriteVec::new(),
        );
        let tid = b.transaction_id();
        b.add_attribute(&XorPeerAddress::new(peer, tid)).unwrap();
        b.add_attribute(&AData::new(data)).unwrap();
        let bytes = b.finish();
        self.send_raw(&bytes).await;
    }
}

async fn metrics(server: &huizhen::server::ServerHandle) -> String {
    let (status, body) = common::http_text(
        &server.http_addr().to_string(),
        "GET",
        "/metrics",
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    body
}

#[tokio::test]
async fn the_credential_from_joined_allocates_and_only_the_sfu_is_a_peer() {
    common::init_tracing();
    let server = common::start_server().await;
    let turn = server.turn_addrs();
    let (udp, tcp) = (turn.udp.expect("TURN over UDP"), turn.tcp.expect("TCP"));
    let mut ws = common::connect_ws(server.http_addr()).await;
    let joined = common::join(&mut ws, &common::unique_room("turn"), "Ann").await;
    let ice = joined
        .ice_servers
        .first()
        .expect("joined carries the TURN server");
    assert!(ice
        .urls
        .contains(&format!("turn:127.0.0.1:{}?transport=udp", udp.port())));
    assert!(ice
        .urls
        .contains(&format!("turn:127.0.0.1:{}?transport=tcp", tcp.port())));
    assert!(!ice.username.contains("Ann"), "no name in the username");

    let mut client = Client::udp(udp, &ice.username, &ice.credential).await;
    let (code, relayed) = client.allocate().await;
    assert_eq!(code, None, "allocated");
    let relayed = relayed.expect("a relayed address");
    assert_eq!(relayed.ip(), server.udp_addr().ip());

    // Another address: 403, never relayed.
    assert_eq!(
        client.permit("127.0.0.2:9".parse().unwrap()).await,
        Some(403)
    );
    // The SFU's IP is permitted, but a stranger listening on another port of it gets nothing.
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let stranger_addr = stranger.local_addr().unwrap();
    assert_eq!(client.permit(stranger_addr).await, None);
    for _ in 0..5 {
        client.send_to_peer(stranger_addr, b"relay me").await;
    }
    let mut buf = [0u8; 64];
    let got = tokio::time::timeout(Duration::from_millis(700), stranger.recv_from(&mut buf)).await;
    assert!(got.is_err(), "nothing reached the stranger: {got:?}");
    let text = metrics(&server).await;
    assert!(
        metric_sum(
            &text,
            "huizhen_turn_refused_total{reason=\"forbidden_peer\"}"
        ) >= 6.0
    );
    assert_eq!(
        metric_sum(&text, "huizhen_turn_allocations{transport=\"udp\"}"),
        1.0
    );

    // The same over TCP with the same credential (a second allocation of the session).
    let mut over_tcp = Client::tcp(tcp, &ice.username, &ice.credential).await;
    let (code, relayed_tcp) = over_tcp.allocate().await;
    assert_eq!(code, None);
    assert_ne!(relayed_tcp, Some(relayed));
    assert_eq!(
        over_tcp.permit("127.0.0.2:9".parse().unwrap()).await,
        Some(403)
    );
    drop(over_tcp);
    // The connection's end releases its allocation.
    let mut gone = false;
    for _ in 0..50 {
        let text = metrics(&server).await;
        if metric_sum(&text, "huizhen_turn_allocations{transport=\"tcp\"}") == 0.0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the TCP allocation ended with its connection");
    server.shutdown().await;
}

#[tokio::test]
async fn credentials_from_a_shared_secret_work_until_they_expire() {
    common::init_tracing();
    let dir = std::env::temp_dir().join(format!("huizhen-turn-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = "a-secret-shared-with-the-hospital-system-0123456789";
    let path = dir.join("turn-secret");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    let mut config = huizhen::config::Config::loopback_for_tests();
    config.turn.secret_file = Some(path);
    let server = huizhen::server::start(config).await.unwrap();
    let udp = server.turn_addrs().udp.unwrap();

    // Minted outside the server, as coturn's use-auth-secret clients do.
    let mint = |expiry: u64| {
        let username = format!("{expiry}:hospital-app");
        let key = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            secret.as_bytes(),
        );
        let tag = aws_lc_rs::hmac::sign(&key, username.as_bytes());
        let password = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
        (username, password)
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (user, pass) = mint(now + 600);
    let mut fresh = Client::udp(udp, &user, &pass).await;
    assert_eq!(
        fresh.allocate().await.0,
        None,
        "a valid credential allocates"
    );

    let (user, pass) = mint(now - 1);
    let mut expired = Client::udp(udp, &user, &pass).await;
    assert_eq!(
        expired.allocate().await.0,
        Some(401),
        "an expired one is refused"
    );
    let (user, _) = mint(now + 600);
    let mut forged = Client::udp(udp, &user, "not-the-hmac").await;
    assert_eq!(
        forged.allocate().await.0,
        Some(401),
        "a wrong password is refused"
    );
    let text = metrics(&server).await;
    assert_eq!(
        metric_sum(&text, "huizhen_turn_refused_total{reason=\"expired\"}"),
        1.0
    );
    assert_eq!(
        metric_sum(&text, "huizhen_turn_allocations{transport=\"udp\"}"),
        1.0
    );
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A str0m peer publishing audio over a TCP allocation's data connection: ICE-TCP frames
/// (RFC 4571) written to and read from `data`, its local candidate the relayed address.
/// Runs until `stop` or 20 s; returns (connected, packets written).
async fn publish_through_tcp_relay(
    ws: &mut common::Ws,
    mut data: TcpStream,
    relayed: SocketAddr,
    publisher: u8,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (bool, u32) {
    use huizhen_signaling::protocol::{ClientMessage, ServerMessage};
    use std::time::Instant;
    use str0m::change::SdpAnswer;
    use str0m::media::{Direction, MediaKind, MediaTime};
    use str0m::net::{Protocol, Receive, TcpType};
    use str0m::{Candidate, Event, Input, Output, Rtc};

    let start = Instant::now();
    let mut rtc = Rtc::builder().build(start);
    let candidate = Candidate::builder()
        .tcp()
        .host(relayed)
        .tcptype(TcpType::Active)
        .build()
        .unwrap();
    rtc.add_local_candidate(candidate);
    let mut change = rtc.sdp_api();
    let mid = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    common::send_msg(
        ws,
        &ClientMessage::Offer {
            sdp: offer.to_sdp_string(),
            sources: Default::default(),
            renew: false,
        },
    )
    .await;
    let answer = loop {
        match common::recv_msg(ws).await {
            ServerMessage::Answer { sdp, .. } => break sdp,
            _ => continue,
        }
    };
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .unwrap();

    let (mut read, mut write) = data.split();
    let mut buf = vec![0u8; 65536];
    let (mut connected, mut seq) = (false, 0u32);
    let mut next_audio = Instant::now();
    let deadline = start + Duration::from_secs(20);
    while Instant::now() < deadline && !*stop.borrow() {
        let timeout = match rtc.poll_output().unwrap() {
            Output::Timeout(t) => t,
            Output::Transmit(t) => {
                assert_eq!(t.proto, Protocol::Tcp);
                let mut framed = (t.contents.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&t.contents);
                if write.write_all(&framed).await.is_err() {
                    break;
                }
                continue;
            }
            Output::Event(Event::Connected) => {
                connected = true;
                continue;
            }
            Output::Event(_) => continue,
        };
        let now = Instant::now();
        if connected && now >= next_audio {
            let writer = rtc.writer(mid).unwrap();
            let pt = writer.payload_params().next().unwrap().pt();
            let payload =
                common::media::build_payload(publisher, common::media::Kind::Audio, seq, false);
            writer
                .write(
                    pt,
                    now,
                    MediaTime::from_90khz(u64::from(seq) * 1800),
                    payload,
                )
                .unwrap();
            seq += 1;
            next_audio = now + Duration::from_millis(20);
            continue;
        }
        let wake = timeout
            .min(if connected { next_audio } else { timeout })
            .min(deadline);
        let wait = wake
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        tokio::select! {
            got = async {
                let len = read.read_u16().await.ok()? as usize;
                read.read_exact(&mut buf[..len]).await.ok()?;
                Some(len)
            } => {
                let Some(len) = got else { break };
                let source = t_peer(&answer);
                let input = Input::Receive(
                    Instant::now(),
                    Receive::new(Protocol::Tcp, source, relayed, &buf[..len]).unwrap(),
                );
                rtc.handle_input(input).unwrap();
            }
            _ = tokio::time::sleep(wait) => {
                rtc.handle_input(Input::Timeout(Instant::now())).unwrap();
            }
        }
    }
    (connected, seq)
}

/// The SFU's passive ICE-TCP candidate in an answer.
fn t_peer(answer: &str) -> SocketAddr {
    answer
        .lines()
        .filter(|l| l.starts_with("a=candidate:") && l.contains(" tcp "))
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{}:{}", f[4], f[5]).parse().ok()
        })
        .expect("a TCP candidate in the answer")
}

#[tokio::test]
async fn a_tcp_allocation_carries_an_ice_tcp_session_to_the_sfu_and_nowhere_else() {
    common::init_tracing();
    let server = common::start_server().await;
    let turn_tcp = server.turn_addrs().tcp.expect("TURN over TCP");
    let ice_tcp = server.tcp_addr().expect("ICE-TCP");
    let room = common::unique_room("turn-tcp");
    let mut ws = common::connect_ws(server.http_addr()).await;
    let joined = common::join(&mut ws, &room, "Relayed").await;
    let ice = joined.ice_servers.first().expect("TURN in joined").clone();

    let mut control = Client::tcp(turn_tcp, &ice.username, &ice.credential).await;
    let (code, relayed) = control.allocate_protocol(6).await;
    assert_eq!(code, None, "a TCP allocation");
    let relayed = relayed.expect("a relayed address");
    // Only the SFU's ICE-TCP address: not another port of its IP, not its UDP port.
    let stranger = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(
        control.connect(stranger.local_addr().unwrap()).await,
        Err(403)
    );
    assert_eq!(control.connect(server.udp_addr()).await, Err(403));
    let id = control
        .connect(ice_tcp)
        .await
        .expect("connected to the SFU");
    assert_eq!(control.connect(ice_tcp).await, Err(446), "one connection");
    // Another credential cannot bind it.
    let mut thief = Client::tcp(turn_tcp, "1:someone", "password").await;
    assert_eq!(thief.connection_bind(id).await, Some(401));
    let mut data = Client::tcp(turn_tcp, &ice.username, &ice.credential).await;
    assert_eq!(data.connection_bind(id).await, None, "bound");
    let data = data.into_stream();

    // A webrtc-rs subscriber in the same room receives what comes through the relay.
    let subscriber = RsPeer::connect(server.http_addr(), &room, "Sub", 2)
        .await
        .expect("subscriber connects");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let publish = tokio::spawn(async move {
        let result = publish_through_tcp_relay(&mut ws, data, relayed, 7, stop_rx).await;
        (result, ws)
    });
    let mut received = 0;
    for _ in 0..100 {
        received = subscriber.received_from(7, Kind::Audio);
        if received >= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A flood at the TURN UDP port from many source ports while the relayed call goes on:
    // junk, unauthenticated and wrongly signed Allocates, ChannelData and Send indications for
    // allocations that do not exist. Refused and counted; no allocation made; the call goes on.
    let udp = server.turn_addrs().udp.expect("TURN over UDP");
    let before_flood = subscriber.received_from(7, Kind::Audio);
    let flood = flood_turn_udp(udp, ice_tcp, 20_000).await;
    let mut during = 0;
    for _ in 0..50 {
        during = subscriber.received_from(7, Kind::Audio) - before_flood;
        if during >= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        during >= 50,
        "the relayed call went on through a flood of {flood} messages: {during} packets"
    );
    let text = metrics(&server).await;
    assert_eq!(
        metric_sum(&text, "huizhen_turn_allocations{transport=\"udp\"}"),
        0.0,
        "the flood made no allocation"
    );
    for reason in ["malformed", "no_allocation", "stale_nonce"] {
        assert!(
            metric_sum(
                &text,
                &format!("huizhen_turn_refused_total{{reason=\"{reason}\"}}")
            ) >= 1000.0,
            "refused as {reason}: {text}"
        );
    }
    assert_eq!(metric_sum(&text, "huizhen_turn_tcp_relays"), 1.0);
    assert!(metric_sum(&text, "huizhen_turn_relayed_in_packets_total") >= 50.0);
    assert!(
        metric_sum(
            &text,
            "huizhen_turn_refused_total{reason=\"forbidden_peer\"}"
        ) >= 2.0
    );

    // The control connection's end takes the allocation and its data connection: the
    // server closes it under the publisher, which stops.
    drop(control);
    let mut gone = false;
    for _ in 0..50 {
        let text = metrics(&server).await;
        if metric_sum(&text, "huizhen_turn_tcp_relays") == 0.0
            && metric_sum(&text, "huizhen_turn_allocations{transport=\"tcp\"}") == 0.0
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ((connected, sent), _ws) = tokio::time::timeout(Duration::from_secs(5), publish)
        .await
        .expect("the publisher saw its data connection close")
        .unwrap();
    drop(stop_tx);
    assert!(connected, "ICE-TCP and DTLS through the TCP relay");
    assert!(
        received >= 50,
        "the subscriber got {received} of {sent} packets sent through the TCP relay"
    );
    assert_eq!(subscriber.corrupt_packets(), 0);
    assert!(gone, "the data connection ended with its allocation");
    subscriber.close().await;
    server.shutdown().await;
}

/// Send `n` bad TURN messages to `server` over UDP from 16 source ports, as fast as the
/// sockets take them: junk, ChannelData and Send indications without an allocation,
/// Allocates without credentials and with a forged one. Returns how many were sent.
async fn flood_turn_udp(server: SocketAddr, peer: SocketAddr, n: usize) -> usize {
    let mut sockets = Vec::new();
    for _ in 0..16 {
        sockets.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    let forged = Client {
        transport: Conn::Udp(UdpSocket::bind("127.0.0.1:0").await.unwrap(), server),
        username: "4000000000:stranger".into(),
        password: "not-the-hmac".into(),
        nonce: Some("ffffffffff-000000000000000000000000".into()),
    };
    let unsigned = Client {
        nonce: None,
        ..Client {
            transport: Conn::Udp(UdpSocket::bind("127.0.0.1:0").await.unwrap(), server),
            username: String::new(),
            password: String::new(),
            nonce: None,
        }
    };
    let allocate = |c: &Client| {
        c.request(ALLOCATE, TransactionId::generate(), &|b, _| {
            b.add_attribute(&RequestedTransport::new(17)).unwrap();
        })
    };
    let mut send = Message::builder(
        MessageType::from_class_method(MessageClass::Indication, SEND),
        TransactionId::generate(),
        MessageWriteVec::new(),
    );
    let tid = send.transaction_id();
    send.add_attribute(&XorPeerAddress::new(peer, tid)).unwrap();
    send.add_attribute(&AData::new(b"relay me")).unwrap();
    let send = send.finish();
    let kinds: [Vec<u8>; 5] = [
        b"\x17\x03\x03 definitely not TURN".to_vec(),
        vec![0x40, 0x01, 0x00, 0x04, 1, 2, 3, 4],
        send,
        allocate(&unsigned),
        allocate(&forged),
    ];
    for i in 0..n {
        let socket = &sockets[i % sockets.len()];
        // Unbounded in nothing but count: a full socket buffer just drops (UDP).
        let _ = socket.send_to(&kinds[i % kinds.len()], server).await;
        if i % 500 == 0 {
            tokio::task::yield_now().await;
        }
    }
    n
}
