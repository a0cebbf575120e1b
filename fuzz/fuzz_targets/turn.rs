#![no_main]
//! The TURN server core (`turn::server::TurnServer`), sans-IO, in virtual time: datagrams and
//! stream messages from clients over UDP, TCP and TLS, datagrams from the SFU to relayed
//! addresses, timers and closed connections. Requests can be signed by the target with a
//! valid credential and the server's own nonce, so fuzzed attributes reach the allocation,
//! permission, channel and connection logic behind authentication. Every reply the server
//! sends must be a STUN message (or ChannelData) that parses.
//!
//! Input: a program of ops; see the match below.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use huizhen::turn::server::{RelayPorts, RelayProtocol, TurnCoreConfig};
use huizhen::turn::{ClientKey, Transport, TurnMetrics, TurnOutput, TurnSecret, TurnServer};
use libfuzzer_sys::fuzz_target;
use turn_types::attribute::{ChannelNumber, Data as AData, RequestedTransport, XorPeerAddress};
use turn_types::message::{
    ALLOCATE, CHANNEL_BIND, CONNECT, CONNECTION_BIND, CREATE_PERMISSION, REFRESH, SEND,
};
use turn_types::stun::attribute::{
    AttributeType, Fingerprint, MessageIntegrity, MessageIntegritySha256, Nonce, RawAttribute,
    Realm, Username,
};
use turn_types::stun::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageType,
    MessageWriteVec, Method, TransactionId, BINDING,
};
use turn_types::stun::prelude::*;
use turn_types::AddressFamily;

#[path = "../common/mod.rs"]
mod common;

const T0_UNIX: u64 = 1_800_000_000;
const SFU: &str = "127.0.0.1:7882";
const SFU_TCP: &str = "127.0.0.1:7883";
const MAX_OPS: usize = 48;

/// Relayed addresses counted out of a small range.
struct Ports {
    next: u16,
    held: Vec<SocketAddr>,
}

impl RelayPorts for Ports {
    fn reserve(&mut self, family: AddressFamily, _: RelayProtocol) -> Option<SocketAddr> {
        if self.held.len() >= 8 {
            return None;
        }
        self.next = self.next.wrapping_add(1);
        let ip = if family == AddressFamily::IPV4 {
            "127.0.0.2"
        } else {
            "[::2]"
        };
        let addr: SocketAddr = format!("{ip}:{}", 40000 + self.next % 1000).parse().ok()?;
        self.held.push(addr);
        Some(addr)
    }
    fn release(&mut self, addr: SocketAddr, _: RelayProtocol) {
        self.held.retain(|a| *a != addr);
    }
}

fn clients() -> [ClientKey; 4] {
    let listen: SocketAddr = "127.0.0.1:3478".parse().unwrap();
    let key = |transport, client: &str| ClientKey {
        transport,
        client: client.parse().unwrap(),
        listen,
    };
    [
        key(Transport::Udp, "127.0.0.9:1000"),
        key(Transport::Tcp, "127.0.0.9:1001"),
        key(Transport::Tls, "[2001:db8::9]:1002"),
        // A second TCP connection of the same client: a data connection for ConnectionBind.
        key(Transport::Tcp, "127.0.0.9:1003"),
    ]
}

const METHODS: [Method; 7] = [
    ALLOCATE,
    REFRESH,
    CREATE_PERMISSION,
    CHANNEL_BIND,
    CONNECT,
    CONNECTION_BIND,
    BINDING,
];

/// Checks what the server sends a client.
fn check_reply(bytes: &[u8]) {
    if bytes.first().is_some_and(|b| (0x40..=0x4f).contains(b)) {
        return;
    }
    Message::from_bytes(bytes).expect("the server's reply parses");
}

fuzz_target!(|data: &[u8]| {
    let mut r = common::Reader(data);
    let t0 = Instant::now();
    let mut now = t0;
    let secret = TurnSecret::new(b"fuzz-turn-secret");
    let mut server = TurnServer::new(
        TurnCoreConfig {
            realm: "huizhen".into(),
            max_allocations: 3,
            max_allocations_per_credential: 2,
        },
        secret.clone(),
        vec![SFU.parse().unwrap(), "[::1]:7882".parse().unwrap()],
        Box::new(Ports {
            next: 0,
            held: Vec::new(),
        }),
        TurnMetrics::unregistered(),
        now,
        T0_UNIX,
    );
    server.set_tcp_peers(vec![SFU_TCP.parse().unwrap()]);
    let keys = clients();
    let credential = secret.mint(T0_UNIX, 600);
    let mut nonces: HashMap<usize, String> = HashMap::new();
    let mut relayed: Vec<SocketAddr> = Vec::new();
    let mut tid = 1u128;

    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = r.u8();
        let k = usize::from(r.u8() % 4);
        let key = keys[k];
        match op % 7 {
            // Raw bytes from a client.
            0 => {
                let bytes = r.chunk();
                on_output(server.handle_client(now, key, bytes), &mut relayed);
            }
            // A request signed with a valid credential and the server's nonce.
            1 | 2 => {
                let selector = r.u8();
                let method = match METHODS.get(usize::from(selector % 8)) {
                    Some(m) => *m,
                    None => Method::new(r.u16() % 0xf000),
                };
                let helpers = r.u8();
                let attrs = usize::from(r.u8() % 4);
                let raw: Vec<(u16, &[u8])> = (0..attrs).map(|_| (r.u16(), r.chunk())).collect();
                if !nonces.contains_key(&k) {
                    let probe = request(ALLOCATE, tid, |_, _| {}, None);
                    tid += 1;
                    if let Some(TurnOutput::Reply(reply)) = server.handle_client(now, key, &probe) {
                        if let Ok(msg) = Message::from_bytes(&reply) {
                            if let Ok(n) = msg.attribute::<Nonce>() {
                                nonces.insert(k, n.nonce().to_owned());
                            }
                        }
                    }
                }
                let nonce = nonces.get(&k).cloned();
                let sha256 = helpers & 0x80 != 0;
                let bytes = request(
                    method,
                    tid,
                    |b, t| {
                        if helpers & 1 != 0 {
                            let proto = if helpers & 2 != 0 { 6 } else { 17 };
                            let _ = b.add_attribute(&RequestedTransport::new(proto));
                        }
                        if helpers & 4 != 0 {
                            let peer: SocketAddr = if helpers & 8 != 0 { SFU_TCP } else { SFU }
                                .parse()
                                .unwrap();
                            let _ = b.add_attribute(&XorPeerAddress::new(peer, t));
                        }
                        if helpers & 16 != 0 {
                            let _ = b.add_attribute(&ChannelNumber::new(
                                0x4000 | u16::from(helpers & 0x20),
                            ));
                        }
                        for (atype, value) in &raw {
                            let atype = AttributeType::new(*atype);
                            // The writer refuses these by panicking; the server sees raw ones
                            // through op 0.
                            if [
                                MessageIntegrity::TYPE,
                                MessageIntegritySha256::TYPE,
                                Fingerprint::TYPE,
                            ]
                            .contains(&atype)
                            {
                                continue;
                            }
                            let _ = b.add_attribute(&RawAttribute::new(atype, value));
                        }
                    },
                    nonce.map(|n| {
                        (
                            credential.username.clone(),
                            credential.password.clone(),
                            n,
                            sha256,
                        )
                    }),
                );
                tid += 1;
                on_output(server.handle_client(now, key, &bytes), &mut relayed);
            }
            // A Send indication to the SFU.
            3 => {
                let data = r.chunk();
                let mut b = Message::builder(
                    MessageType::from_class_method(MessageClass::Indication, SEND),
                    TransactionId::from(tid),
                    MessageWriteVec::new(),
                );
                tid += 1;
                let t = b.transaction_id();
                let _ = b.add_attribute(&XorPeerAddress::new(SFU.parse().unwrap(), t));
                let _ = b.add_attribute(&AData::new(data));
                let bytes = b.finish();
                on_output(server.handle_client(now, key, &bytes), &mut relayed);
            }
            // The SFU sends to a relayed address.
            4 => {
                let data = r.chunk();
                if let Some(addr) = relayed.get(k % relayed.len().max(1)) {
                    if let Some((_, bytes)) =
                        server.handle_peer(now, *addr, SFU.parse().unwrap(), data)
                    {
                        check_reply(&bytes);
                    }
                }
            }
            // Time passes.
            5 => {
                now += Duration::from_secs(u64::from(r.u16()));
                server.handle_timeout(now);
                while server.poll_closed().is_some() {}
                if let Some(t) = server.poll_timeout() {
                    assert!(t >= t0);
                }
            }
            // A stream connection closes.
            _ => {
                server.client_closed(&key);
                while server.poll_closed().is_some() {}
            }
        }
        let _ = server.allocation_count();
        let _ = server.data_connection_count();
    }
});

fn on_output(out: Option<TurnOutput<'_>>, relayed: &mut Vec<SocketAddr>) {
    match out {
        Some(TurnOutput::Reply(bytes)) => {
            check_reply(&bytes);
            if let Ok(msg) = Message::from_bytes(&bytes) {
                if let Ok(a) = msg.attribute::<turn_types::attribute::XorRelayedAddress>() {
                    relayed.push(a.addr(msg.transaction_id()));
                }
            }
        }
        Some(TurnOutput::Bound { reply, .. }) => check_reply(&reply),
        Some(TurnOutput::ToPeer { .. }) | None => {}
    }
}

/// A request with `add`'s attributes, signed when `auth` (username, password, nonce, SHA-256)
/// is given.
fn request(
    method: Method,
    tid: u128,
    add: impl FnOnce(&mut MessageWriteVec, TransactionId),
    auth: Option<(String, String, String, bool)>,
) -> Vec<u8> {
    let mut b = Message::builder(
        MessageType::from_class_method(MessageClass::Request, method),
        TransactionId::from(tid),
        MessageWriteVec::new(),
    );
    let t = b.transaction_id();
    add(&mut b, t);
    if let Some((username, password, nonce, sha256)) = auth {
        let (Ok(u), Ok(realm), Ok(n)) = (
            Username::new(&username),
            Realm::new("huizhen"),
            Nonce::new(&nonce),
        ) else {
            return b.finish();
        };
        let _ = b.add_attribute(&u);
        let _ = b.add_attribute(&realm);
        let _ = b.add_attribute(&n);
        let credentials = LongTermKeyCredentials::new(username, password, "huizhen".into());
        let algorithm = if sha256 {
            IntegrityAlgorithm::Sha256
        } else {
            IntegrityAlgorithm::Sha1
        };
        let _ = b.add_message_integrity(&credentials.into(), algorithm);
    }
    b.finish()
}
