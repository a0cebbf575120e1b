//! The TURN core against a small hand-built client, in virtual time.

use super::*;

const SFU: &str = "127.0.0.1:7882";

struct CountingPorts {
    next: u16,
    held: std::sync::Arc<std::sync::Mutex<Vec<SocketAddr>>>,
    limit: usize,
}

impl RelayPorts for CountingPorts {
    fn reserve(&mut self, _family: AddressFamily, _protocol: RelayProtocol) -> Option<SocketAddr> {
        let mut held = self.held.lock().unwrap();
        if held.len() >= self.limit {
            return None;
        }
        self.next += 1;
        let addr: SocketAddr = format!("127.0.0.1:{}", 40000 + self.next).parse().unwrap();
        held.push(addr);
        Some(addr)
    }
    fn release(&mut self, addr: SocketAddr, _protocol: RelayProtocol) {
        self.held.lock().unwrap().retain(|a| *a != addr);
    }
}

struct Fixture {
    server: TurnServer,
    secret: TurnSecret,
    now: Instant,
    held: std::sync::Arc<std::sync::Mutex<Vec<SocketAddr>>>,
    metrics: TurnMetrics,
}

const T0_UNIX: u64 = 1_800_000_000;

fn fixture_with(max_allocations: usize, per_credential: usize, ports: usize) -> Fixture {
    let secret = TurnSecret::random();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let metrics = TurnMetrics::unregistered();
    let now = Instant::now();
    let server = TurnServer::new(
        TurnCoreConfig {
            realm: "huizhen".into(),
            max_allocations,
            max_allocations_per_credential: per_credential,
        },
        secret.clone(),
        vec![SFU.parse().unwrap()],
        Box::new(CountingPorts {
            next: 0,
            held: held.clone(),
            limit: ports,
        }),
        metrics.clone(),
        now,
        T0_UNIX,
    );
    Fixture {
        server,
        secret,
        now,
        held,
        metrics,
    }
}

fn fixture() -> Fixture {
    fixture_with(100, 4, 100)
}

fn udp_client(port: u16) -> ClientKey {
    ClientKey {
        transport: Transport::Udp,
        client: format!("127.0.0.9:{port}").parse().unwrap(),
        listen: "127.0.0.1:3478".parse().unwrap(),
    }
}

/// A client of one 5-tuple with its credential and the server's nonce.
struct Client {
    key: ClientKey,
    username: String,
    password: String,
    nonce: Option<String>,
}

impl Client {
    fn new(f: &Fixture, port: u16, ttl: u64) -> Client {
        let c = f.secret.mint(T0_UNIX, ttl);
        Client {
            key: udp_client(port),
            username: c.username,
            password: c.password,
            nonce: None,
        }
    }

    fn credentials(&self) -> MessageIntegrityCredentials {
        LongTermKeyCredentials::new(
            self.username.clone(),
            self.password.clone(),
            "huizhen".into(),
        )
        .into()
    }

    /// A signed request with `add` attributes (unsigned while no nonce is known).
    fn request(
        &self,
        method: Method,
        tid: TransactionId,
        add: impl FnOnce(&mut MessageWriteVec, TransactionId),
    ) -> Vec<u8> {
        let mut b = Message::builder(
            turn_types::stun::message::MessageType::from_class_method(
                MessageClass::Request,
                method,
            ),
            tid,
            MessageWriteVec::new(),
        );
        add(&mut b, tid);
        if let Some(nonce) = &self.nonce {
            b.add_attribute(&Username::new(&self.username).unwrap())
                .unwrap();
            b.add_attribute(&Realm::new("huizhen").unwrap()).unwrap();
            b.add_attribute(&Nonce::new(nonce).unwrap()).unwrap();
            b.add_message_integrity(&self.credentials(), IntegrityAlgorithm::Sha1)
                .unwrap();
        }
        b.finish()
    }

    /// Send a request; on 401/438 learn the nonce and send it again, signed.
    fn call(
        &mut self,
        f: &mut Fixture,
        method: Method,
        add: impl Fn(&mut MessageWriteVec, TransactionId),
    ) -> Vec<u8> {
        for _ in 0..2 {
            let tid = TransactionId::generate();
            let bytes = self.request(method, tid, &add);
            let reply = reply_of(f.server.handle_client(f.now, self.key, &bytes));
            let msg = Message::from_bytes(&reply).unwrap();
            assert_eq!(msg.transaction_id(), tid);
            let code = error_code(&reply);
            if code == Some(ErrorCode::UNAUTHORIZED) || code == Some(ErrorCode::STALE_NONCE) {
                let nonce = msg.attribute::<Nonce>().unwrap().nonce().to_owned();
                assert_eq!(msg.attribute::<Realm>().unwrap().realm(), "huizhen");
                if self.nonce.as_deref() == Some(&nonce) {
                    return reply;
                }
                self.nonce = Some(nonce);
                continue;
            }
            return reply;
        }
        panic!("no answer after a fresh nonce");
    }

    fn allocate(&mut self, f: &mut Fixture) -> Vec<u8> {
        self.call(f, ALLOCATE, |b, _| {
            b.add_attribute(&RequestedTransport::new(UDP)).unwrap();
        })
    }

    fn permit(&mut self, f: &mut Fixture, peer: SocketAddr) -> Vec<u8> {
        self.call(f, CREATE_PERMISSION, move |b, tid| {
            b.add_attribute(&XorPeerAddress::new(peer, tid)).unwrap();
        })
    }

    fn bind(&mut self, f: &mut Fixture, number: u16, peer: SocketAddr) -> Vec<u8> {
        self.call(f, CHANNEL_BIND, move |b, tid| {
            b.add_attribute(&ChannelNumber::new(number)).unwrap();
            b.add_attribute(&XorPeerAddress::new(peer, tid)).unwrap();
        })
    }

    fn send(&self, peer: SocketAddr, data: &[u8]) -> Vec<u8> {
        let mut b = Message::builder(
            turn_types::stun::message::MessageType::from_class_method(
                MessageClass::Indication,
                SEND,
            ),
            TransactionId::generate(),
            MessageWriteVec::new(),
        );
        let tid = b.transaction_id();
        b.add_attribute(&XorPeerAddress::new(peer, tid)).unwrap();
        b.add_attribute(&AData::new(data)).unwrap();
        b.finish()
    }

    /// The reply is a success signed with this client's credential.
    fn assert_signed_success(&self, reply: &[u8]) {
        let msg = Message::from_bytes(reply).unwrap();
        assert_eq!(
            msg.class(),
            MessageClass::Success,
            "error {:?}",
            error_code(reply)
        );
        msg.validate_integrity(&self.credentials())
            .expect("signed with the client's credential");
    }
}

fn reply_of(out: Option<TurnOutput<'_>>) -> Vec<u8> {
    match out {
        Some(TurnOutput::Reply(bytes)) => bytes,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn error_code(reply: &[u8]) -> Option<u16> {
    Message::from_bytes(reply)
        .ok()?
        .attribute::<ErrorCode>()
        .ok()
        .map(|e| e.code())
}

fn relayed_of(reply: &[u8]) -> SocketAddr {
    let msg = Message::from_bytes(reply).unwrap();
    msg.attribute::<XorRelayedAddress>()
        .unwrap()
        .addr(msg.transaction_id())
}

fn refused(f: &Fixture, reason: Refusal) -> u64 {
    f.metrics.refused.with_label_values(&[reason.label()]).get()
}

fn sfu() -> SocketAddr {
    SFU.parse().unwrap()
}

#[test]
fn a_client_allocates_with_rest_credentials_and_relays_to_the_sfu_both_ways() {
    let mut f = fixture();
    let mut c = Client::new(&f, 5000, 3600);
    let reply = c.allocate(&mut f);
    c.assert_signed_success(&reply);
    let relayed = relayed_of(&reply);
    assert!(f.server.owns(&relayed));
    let msg = Message::from_bytes(&reply).unwrap();
    assert_eq!(msg.attribute::<Lifetime>().unwrap().seconds(), 600);
    assert_eq!(
        msg.attribute::<XorMappedAddress>()
            .unwrap()
            .addr(msg.transaction_id()),
        c.key.client
    );

    // No permission yet: data is dropped.
    let send = c.send(sfu(), b"check");
    assert_eq!(f.server.handle_client(f.now, c.key, &send), None);
    assert_eq!(refused(&f, Refusal::NoAllocation), 1);

    {
        let reply = c.permit(&mut f, sfu());
        c.assert_signed_success(&reply);
    }
    assert_eq!(
        f.server.handle_client(f.now, c.key, &send),
        Some(TurnOutput::ToPeer {
            relayed,
            peer: sfu(),
            data: b"check"
        })
    );

    // The SFU answers: a Data indication with the SFU as the peer.
    let (to, bytes) = f
        .server
        .handle_peer(f.now, relayed, sfu(), b"answer")
        .expect("relayed to the client");
    assert_eq!(to, c.key);
    let msg = Message::from_bytes(&bytes).unwrap();
    assert_eq!(msg.method(), DATA);
    assert_eq!(msg.class(), MessageClass::Indication);
    assert_eq!(
        msg.attribute::<XorPeerAddress>()
            .unwrap()
            .addr(msg.transaction_id()),
        sfu()
    );
    assert_eq!(msg.attribute::<AData>().unwrap().data(), b"answer");
    assert_eq!(f.metrics.relayed_in.get(), 1);
    assert_eq!(f.metrics.relayed_out.get(), 1);
}

#[test]
fn any_peer_but_the_sfu_is_refused_so_the_server_is_never_an_open_relay() {
    let mut f = fixture();
    let mut c = Client::new(&f, 5000, 3600);
    let relayed = relayed_of(&c.allocate(&mut f));
    for other in ["127.0.0.1:22", "127.0.0.2:7882", "192.0.2.1:7882"] {
        let other: SocketAddr = other.parse().unwrap();
        if other.ip() == sfu().ip() {
            continue; // same IP: the permission is by IP, the port check follows below
        }
        let reply = c.permit(&mut f, other);
        assert_eq!(error_code(&reply), Some(ErrorCode::FORBIDDEN), "{other}");
        let reply = c.bind(&mut f, 0x4001, other);
        assert_eq!(error_code(&reply), Some(ErrorCode::FORBIDDEN), "{other}");
    }
    assert_eq!(refused(&f, Refusal::ForbiddenPeer), 4);

    // A permission for the SFU's IP does not reach another port on it (ssh, a database).
    {
        let reply = c.permit(&mut f, sfu());
        c.assert_signed_success(&reply);
    }
    let other_port: SocketAddr = "127.0.0.1:22".parse().unwrap();
    let send = c.send(other_port, b"SSH-2.0-probe");
    assert_eq!(f.server.handle_client(f.now, c.key, &send), None);
    assert_eq!(refused(&f, Refusal::ForbiddenPeer), 5);
    // A channel names the whole address: only the SFU's own.
    let reply = c.bind(&mut f, 0x4002, other_port);
    assert_eq!(error_code(&reply), Some(ErrorCode::FORBIDDEN));
    assert_eq!(refused(&f, Refusal::ForbiddenPeer), 6);
    // Nor may data arrive from another port to the relayed address.
    assert!(f.server.handle_peer(f.now, relayed, sfu(), b"ok").is_some());
    let stranger: SocketAddr = "192.0.2.1:7882".parse().unwrap();
    assert_eq!(f.server.handle_peer(f.now, relayed, stranger, b"x"), None);
}

#[test]
fn channels_carry_data_both_ways_and_are_padded_on_streams() {
    let mut f = fixture();
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut c = Client::new(&f, 5000, 3600);
        c.key.transport = transport;
        let relayed = relayed_of(&c.allocate(&mut f));
        {
            let reply = c.bind(&mut f, 0x4000, sfu());
            c.assert_signed_success(&reply);
        }
        // The same peer on another channel, or another... channel number out of range: 400.
        assert_eq!(
            error_code(&c.bind(&mut f, 0x4001, sfu())),
            Some(ErrorCode::BAD_REQUEST)
        );
        assert_eq!(
            error_code(&c.bind(&mut f, 0x3fff, sfu())),
            Some(ErrorCode::BAD_REQUEST)
        );
        let mut frame = vec![0x40, 0x00, 0x00, 0x03, 1, 2, 3];
        if transport.is_stream() {
            frame.push(0);
        }
        assert_eq!(
            f.server.handle_client(f.now, c.key, &frame),
            Some(TurnOutput::ToPeer {
                relayed,
                peer: sfu(),
                data: &[1, 2, 3]
            })
        );
        // An unbound channel number is dropped.
        let stray = [0x40, 0x07, 0x00, 0x01, 9, 0, 0, 0];
        assert_eq!(f.server.handle_client(f.now, c.key, &stray), None);
        let (_, out) = f
            .server
            .handle_peer(f.now, relayed, sfu(), &[7; 5])
            .unwrap();
        let expected_len = if transport.is_stream() { 12 } else { 9 };
        assert_eq!(out.len(), expected_len, "{transport:?}");
        assert_eq!(&out[..4], &[0x40, 0x00, 0x00, 0x05]);
        assert_eq!(&out[4..9], &[7; 5]);
    }
}

#[test]
fn an_expired_credential_is_refused_and_an_allocation_ends_with_its_credential() {
    let mut f = fixture();
    let mut c = Client::new(&f, 5000, 120);
    let reply = c.allocate(&mut f);
    c.assert_signed_success(&reply);
    let relayed = relayed_of(&reply);
    // Lifetime capped at the credential's 120 s, not the default 600 s.
    let msg = Message::from_bytes(&reply).unwrap();
    assert_eq!(msg.attribute::<Lifetime>().unwrap().seconds(), 120);
    assert_eq!(
        f.server.poll_timeout(),
        Some(f.now + Duration::from_secs(120))
    );
    {
        let reply = c.permit(&mut f, sfu());
        c.assert_signed_success(&reply);
    }

    // A refresh cannot extend past the credential either.
    f.now += Duration::from_secs(60);
    let reply = c.call(&mut f, REFRESH, |b, _| {
        b.add_attribute(&Lifetime::new(3600)).unwrap();
    });
    c.assert_signed_success(&reply);
    let msg = Message::from_bytes(&reply).unwrap();
    assert_eq!(msg.attribute::<Lifetime>().unwrap().seconds(), 60);

    f.now += Duration::from_secs(60);
    f.server.handle_timeout(f.now);
    assert!(!f.server.owns(&relayed));
    assert_eq!(f.server.allocation_count(), 0);
    assert!(
        f.held.lock().unwrap().is_empty(),
        "the relay port is released"
    );
    assert_eq!(f.server.handle_peer(f.now, relayed, sfu(), b"late"), None);

    // The expired credential cannot allocate again.
    c.key = udp_client(5001);
    c.nonce = None;
    let reply = c.allocate(&mut f);
    assert_eq!(error_code(&reply), Some(ErrorCode::UNAUTHORIZED));
    assert!(refused(&f, Refusal::Expired) >= 1);
}

#[test]
fn wrong_passwords_foreign_nonces_and_stale_nonces_are_answered_without_state() {
    let mut f = fixture();
    let mut c = Client::new(&f, 5000, 3600);
    c.password = "not-the-password".into();
    assert_eq!(
        error_code(&c.allocate(&mut f)),
        Some(ErrorCode::UNAUTHORIZED)
    );
    assert_eq!(f.server.allocation_count(), 0);

    // A nonce issued to one address does not work from another.
    let mut a = Client::new(&f, 5000, 3600);
    a.allocate(&mut f);
    let mut b = Client::new(&f, 5001, 3600);
    b.nonce = a.nonce.clone();
    let tid = TransactionId::generate();
    let bytes = b.request(ALLOCATE, tid, |m, _| {
        m.add_attribute(&RequestedTransport::new(UDP)).unwrap();
    });
    let reply = reply_of(f.server.handle_client(f.now, b.key, &bytes));
    assert_eq!(error_code(&reply), Some(ErrorCode::STALE_NONCE));

    // After the nonce lifetime, 438 and a new nonce; the client goes on with it.
    f.now += NONCE_LIFETIME + Duration::from_secs(1);
    let old = a.nonce.clone();
    let reply = a.permit(&mut f, sfu());
    a.assert_signed_success(&reply);
    assert_ne!(a.nonce, old);
    assert!(refused(&f, Refusal::StaleNonce) >= 2);

    // A flood of first requests from many addresses leaves nothing behind.
    for port in 10_000..20_000u16 {
        let flood = Client::new(&f, port, 3600);
        let bytes = flood.request(ALLOCATE, TransactionId::generate(), |m, _| {
            m.add_attribute(&RequestedTransport::new(UDP)).unwrap();
        });
        let reply = reply_of(f.server.handle_client(f.now, flood.key, &bytes));
        assert_eq!(error_code(&reply), Some(ErrorCode::UNAUTHORIZED));
    }
    assert_eq!(f.server.allocation_count(), 1);
    assert!(f.server.per_username.len() <= 1);
}

#[test]
fn quotas_per_credential_and_per_server_are_enforced() {
    let mut f = fixture_with(3, 2, 100);
    let mut one = Client::new(&f, 5000, 3600);
    let (user, pass) = (one.username.clone(), one.password.clone());
    {
        let reply = one.allocate(&mut f);
        one.assert_signed_success(&reply);
    }
    let mut two = Client::new(&f, 5001, 3600);
    (two.username, two.password) = (user.clone(), pass.clone());
    {
        let reply = two.allocate(&mut f);
        two.assert_signed_success(&reply);
    }
    let mut three = Client::new(&f, 5002, 3600);
    (three.username, three.password) = (user, pass);
    assert_eq!(
        error_code(&three.allocate(&mut f)),
        Some(ErrorCode::ALLOCATION_QUOTA_REACHED)
    );
    let mut other = Client::new(&f, 5003, 3600);
    {
        let reply = other.allocate(&mut f);
        other.assert_signed_success(&reply);
    }
    let mut full = Client::new(&f, 5004, 3600);
    assert_eq!(
        error_code(&full.allocate(&mut f)),
        Some(ErrorCode::INSUFFICIENT_CAPACITY)
    );
    assert_eq!(refused(&f, Refusal::Quota), 1);
    assert_eq!(refused(&f, Refusal::Capacity), 1);

    // Freed by a refresh with lifetime 0: the quota is available again.
    let reply = one.call(&mut f, REFRESH, |b, _| {
        b.add_attribute(&Lifetime::new(0)).unwrap();
    });
    one.assert_signed_success(&reply);
    assert_eq!(f.server.allocation_count(), 2);
    {
        let reply = three.allocate(&mut f);
        three.assert_signed_success(&reply);
    }
}

#[test]
fn no_free_relay_port_is_insufficient_capacity() {
    let mut f = fixture_with(10, 10, 1);
    let mut a = Client::new(&f, 5000, 3600);
    {
        let reply = a.allocate(&mut f);
        a.assert_signed_success(&reply);
    }
    let mut b = Client::new(&f, 5001, 3600);
    assert_eq!(
        error_code(&b.allocate(&mut f)),
        Some(ErrorCode::INSUFFICIENT_CAPACITY)
    );
}

#[test]
fn a_retransmitted_allocate_gets_the_same_answer_and_another_is_a_mismatch() {
    let mut f = fixture();
    let mut c = Client::new(&f, 5000, 3600);
    c.allocate(&mut f); // learns the nonce
    f.server.client_closed(&c.key); // (drops the allocation the helper made)
    let tid = TransactionId::generate();
    let add = |m: &mut MessageWriteVec, _: TransactionId| {
        m.add_attribute(&RequestedTransport::new(UDP)).unwrap();
    };
    let first = reply_of(
        f.server
            .handle_client(f.now, c.key, &c.request(ALLOCATE, tid, add)),
    );
    let again = reply_of(
        f.server
            .handle_client(f.now, c.key, &c.request(ALLOCATE, tid, add)),
    );
    c.assert_signed_success(&first);
    c.assert_signed_success(&again);
    assert_eq!(relayed_of(&first), relayed_of(&again));
    assert_eq!(f.server.allocation_count(), 1);
    let other = reply_of(f.server.handle_client(
        f.now,
        c.key,
        &c.request(ALLOCATE, TransactionId::generate(), add),
    ));
    assert_eq!(error_code(&other), Some(ErrorCode::ALLOCATION_MISMATCH));

    // Another credential may not refresh this allocation.
    let mut thief = Client::new(&f, 5000, 3600);
    let reply = thief.call(&mut f, REFRESH, |_, _| {});
    assert_eq!(error_code(&reply), Some(ErrorCode::WRONG_CREDENTIALS));
}

#[test]
fn malformed_input_is_dropped_and_counted_and_unknown_attributes_are_named() {
    let mut f = fixture();
    let key = udp_client(5000);
    for junk in [
        &b""[..],
        b"\x00",
        b"GET / HTTP/1.1\r\n\r\n",
        &[0x40, 0x00, 0xff, 0xff, 1],
    ] {
        assert_eq!(f.server.handle_client(f.now, key, junk), None);
    }
    assert_eq!(refused(&f, Refusal::Malformed), 4);

    let mut c = Client::new(&f, 5000, 3600);
    let reply = c.call(&mut f, ALLOCATE, |b, _| {
        b.add_attribute(&RequestedTransport::new(UDP)).unwrap();
        // DATA (0x0013) is comprehension-required and meaningless in an Allocate.
        b.add_attribute(&AData::new(b"x")).unwrap();
    });
    assert_eq!(error_code(&reply), Some(ErrorCode::UNKNOWN_ATTRIBUTE));
    let msg = Message::from_bytes(&reply).unwrap();
    msg.validate_integrity(&c.credentials()).unwrap();

    // A TCP allocation over UDP (RFC 6062 §5.1), an unknown transport (SCTP), and a
    // missing REQUESTED-TRANSPORT.
    let reply = c.call(&mut f, ALLOCATE, |b, _| {
        b.add_attribute(&RequestedTransport::new(TCP)).unwrap();
    });
    assert_eq!(error_code(&reply), Some(ErrorCode::BAD_REQUEST));
    let reply = c.call(&mut f, ALLOCATE, |b, _| {
        b.add_attribute(&RequestedTransport::new(132)).unwrap();
    });
    assert_eq!(
        error_code(&reply),
        Some(ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL)
    );
    let reply = c.call(&mut f, ALLOCATE, |_, _| {});
    assert_eq!(error_code(&reply), Some(ErrorCode::BAD_REQUEST));
    assert_eq!(f.server.allocation_count(), 0);
}

#[test]
fn a_binding_request_is_answered_without_credentials() {
    let mut f = fixture();
    let key = udp_client(5000);
    let mut b = Message::builder_request(BINDING, MessageWriteVec::new());
    let tid = b.transaction_id();
    b.add_fingerprint().unwrap();
    let reply = reply_of(f.server.handle_client(f.now, key, &b.finish()));
    let msg = Message::from_bytes(&reply).unwrap();
    assert_eq!(msg.class(), MessageClass::Success);
    assert_eq!(
        msg.attribute::<XorMappedAddress>().unwrap().addr(tid),
        key.client
    );
}

// ---- TCP allocations (RFC 6062) ----

const SFU_TCP: &str = "127.0.0.1:7881";

fn sfu_tcp() -> SocketAddr {
    SFU_TCP.parse().unwrap()
}

fn tcp_fixture() -> Fixture {
    let mut f = fixture();
    f.server.set_tcp_peers(vec![sfu_tcp()]);
    f
}

impl Client {
    /// A client on its own TCP connection from `port`, sharing `other`'s credential.
    fn tcp_sibling(other: &Client, port: u16) -> Client {
        Client {
            key: ClientKey {
                transport: Transport::Tcp,
                client: format!("127.0.0.9:{port}").parse().unwrap(),
                listen: "127.0.0.1:3479".parse().unwrap(),
            },
            username: other.username.clone(),
            password: other.password.clone(),
            nonce: None,
        }
    }

    fn tcp(f: &Fixture, port: u16) -> Client {
        Client::tcp_sibling(&Client::new(f, 1, 3600), port)
    }

    fn allocate_tcp(&mut self, f: &mut Fixture) -> Vec<u8> {
        self.call(f, ALLOCATE, |b, _| {
            b.add_attribute(&RequestedTransport::new(TCP)).unwrap();
        })
    }

    fn connect(&mut self, f: &mut Fixture, peer: SocketAddr) -> Vec<u8> {
        self.call(f, CONNECT, move |b, tid| {
            b.add_attribute(&XorPeerAddress::new(peer, tid)).unwrap();
        })
    }

    /// `ConnectionBind`: the core's whole output (a `Bound` on success).
    fn connection_bind(&mut self, f: &mut Fixture, id: u32) -> TurnOutput<'static> {
        // Learn the nonce first (the 401 of an unsigned request).
        if self.nonce.is_none() {
            let first = self.request(CONNECTION_BIND, TransactionId::generate(), |b, _| {
                b.add_attribute(&ConnectionId::new(id)).unwrap();
            });
            let reply = reply_of(f.server.handle_client(f.now, self.key, &first));
            assert_eq!(error_code(&reply), Some(ErrorCode::UNAUTHORIZED));
            let msg = Message::from_bytes(&reply).unwrap();
            self.nonce = Some(msg.attribute::<Nonce>().unwrap().nonce().to_owned());
        }
        let bytes = self.request(CONNECTION_BIND, TransactionId::generate(), |b, _| {
            b.add_attribute(&ConnectionId::new(id)).unwrap();
        });
        match f.server.handle_client(f.now, self.key, &bytes) {
            Some(TurnOutput::Reply(r)) => TurnOutput::Reply(r),
            Some(TurnOutput::Bound {
                reply,
                relayed,
                peer,
            }) => TurnOutput::Bound {
                reply,
                relayed,
                peer,
            },
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn connection_id_of(reply: &[u8]) -> u32 {
    Message::from_bytes(reply)
        .unwrap()
        .attribute::<ConnectionId>()
        .expect("a CONNECTION-ID")
        .id()
}

#[test]
fn a_tcp_allocation_connects_only_to_the_sfu_ice_tcp_port_and_binds_a_data_connection() {
    let mut f = tcp_fixture();
    let mut control = Client::tcp(&f, 6000);
    let reply = control.allocate_tcp(&mut f);
    control.assert_signed_success(&reply);
    let relayed = relayed_of(&reply);
    assert!(
        !f.server.owns(&relayed),
        "a TCP relayed address is not a UDP one"
    );

    // Anything but the SFU's ICE-TCP address is refused: another host, another port of
    // the SFU's IP (ssh), the SFU's UDP media port.
    for other in ["127.0.0.2:7881", "127.0.0.1:22", SFU] {
        let reply = control.connect(&mut f, other.parse().unwrap());
        assert_eq!(error_code(&reply), Some(ErrorCode::FORBIDDEN), "{other}");
    }
    assert_eq!(refused(&f, Refusal::ForbiddenPeer), 3);

    let reply = control.connect(&mut f, sfu_tcp());
    control.assert_signed_success(&reply);
    let id = connection_id_of(&reply);
    // One connection per allocation.
    let again = control.connect(&mut f, sfu_tcp());
    assert_eq!(
        error_code(&again),
        Some(ErrorCode::CONNECTION_ALREADY_EXISTS)
    );

    // Another credential cannot take the connection, nor can an unknown id be bound.
    let mut stranger = Client::tcp(&f, 6100);
    match stranger.connection_bind(&mut f, id) {
        TurnOutput::Reply(r) => assert_eq!(error_code(&r), Some(ErrorCode::WRONG_CREDENTIALS)),
        other => panic!("a stranger bound: {other:?}"),
    }
    let mut data = Client::tcp_sibling(&control, 6001);
    match data.connection_bind(&mut f, id ^ 1) {
        TurnOutput::Reply(r) => assert_eq!(error_code(&r), Some(ErrorCode::BAD_REQUEST)),
        other => panic!("an unknown id bound: {other:?}"),
    }
    // The control connection itself cannot become the data connection.
    match control.connection_bind(&mut f, id) {
        TurnOutput::Reply(r) => assert_eq!(error_code(&r), Some(ErrorCode::BAD_REQUEST)),
        other => panic!("the control connection bound: {other:?}"),
    }

    match data.connection_bind(&mut f, id) {
        TurnOutput::Bound {
            reply,
            relayed: r,
            peer,
        } => {
            data.assert_signed_success(&reply);
            assert_eq!((r, peer), (relayed, sfu_tcp()));
        }
        other => panic!("not bound: {other:?}"),
    }
    assert_eq!(f.server.data_connection_count(), 1);
    assert_eq!(f.metrics.tcp_relays.get(), 1);
    // Bound once: a second data connection with the same id is refused.
    let mut second = Client::tcp_sibling(&control, 6002);
    match second.connection_bind(&mut f, id) {
        TurnOutput::Reply(r) => assert_eq!(error_code(&r), Some(ErrorCode::BAD_REQUEST)),
        other => panic!("bound twice: {other:?}"),
    }

    // The data connection's end frees the allocation to connect again.
    f.server.client_closed(&data.key);
    assert_eq!(f.metrics.tcp_relays.get(), 0);
    assert_eq!(f.server.poll_closed(), None, "the edge already knows");
    let reply = control.connect(&mut f, sfu_tcp());
    control.assert_signed_success(&reply);
    let id = connection_id_of(&reply);
    let mut data = Client::tcp_sibling(&control, 6003);
    assert!(matches!(
        data.connection_bind(&mut f, id),
        TurnOutput::Bound { .. }
    ));

    // The control connection's end takes the allocation and its data connection with it.
    let held = f.held.lock().unwrap().len();
    f.server.client_closed(&control.key);
    assert_eq!(
        f.server.poll_closed(),
        Some(ClosedData {
            key: data.key,
            relayed
        })
    );
    assert_eq!(f.server.poll_closed(), None);
    assert_eq!(f.server.data_connection_count(), 0);
    assert_eq!(f.metrics.tcp_relays.get(), 0);
    assert_eq!(
        f.held.lock().unwrap().len(),
        held - 1,
        "relay port released"
    );
}

#[test]
fn tcp_allocations_are_refused_where_they_cannot_work() {
    // No ICE-TCP address to connect to: 442.
    let mut f = fixture();
    let mut c = Client::tcp(&f, 6000);
    let reply = c.allocate_tcp(&mut f);
    assert_eq!(
        error_code(&reply),
        Some(ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL)
    );

    let mut f = tcp_fixture();
    // Over UDP: 400 (RFC 6062 §5.1).
    let mut over_udp = Client::new(&f, 5000, 3600);
    let reply = over_udp.allocate_tcp(&mut f);
    assert_eq!(error_code(&reply), Some(ErrorCode::BAD_REQUEST));
    // Connect on a UDP allocation: 400.
    over_udp.allocate(&mut f);
    let reply = over_udp.connect(&mut f, sfu_tcp());
    assert_eq!(error_code(&reply), Some(ErrorCode::BAD_REQUEST));
    // Connect without an allocation: 437.
    let mut none = Client::tcp(&f, 6001);
    let reply = none.connect(&mut f, sfu_tcp());
    assert_eq!(error_code(&reply), Some(ErrorCode::ALLOCATION_MISMATCH));
    // DONT-FRAGMENT makes no sense on TCP: 400.
    let mut c = Client::tcp(&f, 6002);
    let reply = c.call(&mut f, ALLOCATE, |b, _| {
        b.add_attribute(&RequestedTransport::new(TCP)).unwrap();
        b.add_attribute(&DontFragment::new()).unwrap();
    });
    assert_eq!(error_code(&reply), Some(ErrorCode::BAD_REQUEST));
    assert_eq!(f.server.allocation_count(), 1, "only the UDP allocation");
}

#[test]
fn an_unbound_connection_lapses_after_30_s_and_an_expired_allocation_closes_its_data() {
    let mut f = tcp_fixture();
    let mut control = Client::tcp(&f, 6000);
    let relayed = relayed_of(&control.allocate_tcp(&mut f));
    let id = connection_id_of(&control.connect(&mut f, sfu_tcp()));
    assert!(f.server.poll_timeout().unwrap() <= f.now + CONNECTION_BIND_TIMEOUT);
    f.now += CONNECTION_BIND_TIMEOUT;
    f.server.handle_timeout(f.now);
    let mut data = Client::tcp_sibling(&control, 6001);
    match data.connection_bind(&mut f, id) {
        TurnOutput::Reply(r) => assert_eq!(error_code(&r), Some(ErrorCode::BAD_REQUEST)),
        other => panic!("a lapsed connection bound: {other:?}"),
    }
    // The allocation may connect again, and bind in time.
    let id = connection_id_of(&control.connect(&mut f, sfu_tcp()));
    assert!(matches!(
        data.connection_bind(&mut f, id),
        TurnOutput::Bound { .. }
    ));
    // Not refreshed: the allocation expires after its lifetime, and its data connection
    // is handed to the edge to close.
    f.now += DEFAULT_LIFETIME;
    f.server.handle_timeout(f.now);
    assert_eq!(f.server.allocation_count(), 0);
    assert_eq!(
        f.server.poll_closed(),
        Some(ClosedData {
            key: data.key,
            relayed
        })
    );
}
