//! The embedded TURN server through the running server's sockets, with a small client built
//! on the `turn-types` codecs: the credential from `joined` allocates; a permission for any
//! other address is refused; data sent to another port of the SFU's own IP (where a stranger
//! listens) never arrives; an expired credential is refused; TURN over TCP frames the same.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use turn_types::attribute::{Data as AData, RequestedTransport, XorPeerAddress, XorRelayedAddress};
use turn_types::message::{ALLOCATE, CREATE_PERMISSION, SEND};
use turn_types::stun::attribute::{ErrorCode, Nonce, Realm, Username};
use turn_types::stun::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageType,
    MessageWriteVec, Method, TransactionId,
};
use turn_types::stun::prelude::*;

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
        let (code, reply) = self
            .call(ALLOCATE, &|b, _| {
                b.add_attribute(&RequestedTransport::new(17)).unwrap();
            })
            .await;
        let msg = Message::from_bytes(&reply).unwrap();
        let relayed = msg
            .attribute::<XorRelayedAddress>()
            .ok()
            .map(|a| a.addr(msg.transaction_id()));
        (code, relayed)
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
