//! The TURN server's core (RFC 8656 UDP allocations, RFC 6062 TCP allocations), sans-IO with
//! time passed in.
//!
//! ```text
//!  client ──UDP/TCP/TLS──▶ handle_client ──▶ Reply (to the same client)
//!                                        ├─▶ ToPeer { relayed, peer, data } ──▶ Sfu::handle_datagram
//!                                        └─▶ Bound { relayed, peer } (a TCP data connection)
//!  Sfu transmit to a relayed address ──▶ handle_peer ──▶ (client, ChannelData | Data indication)
//! ```
//!
//! A TCP allocation (RFC 6062) lets a client whose network passes only TCP reach the SFU's
//! ICE-TCP port through the relay: `Connect` names the peer (only the SFU's own ICE-TCP
//! address), the client opens a second connection and sends `ConnectionBind` with the
//! connection id, and from then that connection carries the raw byte stream (RFC 4571
//! frames) that the SFU reads as an ICE-TCP connection from the relayed address. The core
//! only decides who may bind what; the edge moves the bytes. The SFU never connects out
//! (its ICE-TCP candidates are passive), so peer-initiated connections (`ConnectionAttempt`)
//! never happen.
//!
//! The relay's only peer is this server's own SFU: a permission or channel for any other
//! address is refused with 403, and data is handed over only when it is addressed to exactly
//! one of the SFU's media addresses, so the server can never be used as an open relay. The
//! relayed "socket" is therefore not read or written: the edge feeds the SFU directly with
//! the relayed address as the source, and intercepts the SFU's datagrams to that address.
//! Each relayed address is still a real bound port ([`RelayPorts`]), so no other host
//! socket can share it and confuse the SFU's demux.
//!
//! Authentication is the long-term mechanism with the "TURN REST API" credentials of
//! [`super::credentials`]: no user table, and nonces are stateless (an expiry and a MAC over
//! it and the client's address), so an unauthenticated flood from many addresses costs no
//! memory. An allocation never outlives its credential.
//!
//! Why not `turn-server-proto`: it keeps a nonce per source address before authentication
//! (memory for anyone who can send a datagram), scans every client per relayed packet, has
//! no quota and permissions by IP only; its message codecs (`turn-types`, `stun-types`) are
//! what this module uses.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use turn_types::attribute::ConnectionId;
use turn_types::attribute::{
    AdditionalAddressFamily, ChannelNumber, Data as AData, DontFragment, EvenPort, Lifetime,
    RequestedAddressFamily, RequestedTransport, ReservationToken, XorPeerAddress,
    XorRelayedAddress,
};
use turn_types::channel::ChannelData;
use turn_types::message::{
    ALLOCATE, CHANNEL_BIND, CONNECT, CONNECTION_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND,
};
use turn_types::stun::attribute::AttributeType;
use turn_types::stun::attribute::{
    ErrorCode, Fingerprint, MessageIntegrity, MessageIntegritySha256, Nonce, Realm, Software,
    UnknownAttributes, Username, XorMappedAddress,
};
use turn_types::stun::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageIntegrityCredentials,
    MessageWriteVec, Method, TransactionId, BINDING,
};
use turn_types::stun::prelude::*;
use turn_types::AddressFamily;

use super::credentials::{CredentialError, TurnSecret};
use super::metrics::{Refusal, TurnMetrics};

/// Default allocation lifetime when the client asks for none (RFC 8656 §3.2).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// Longest allocation lifetime granted per request.
const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// Permission lifetime (RFC 8656 §9).
const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// Channel binding lifetime (RFC 8656 §12).
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// How long a nonce is accepted.
const NONCE_LIFETIME: Duration = Duration::from_secs(600);
/// Most permissions and channels per allocation (the SFU has one address per family).
const MAX_PEERS_PER_ALLOCATION: usize = 8;
/// SOFTWARE attribute.
const SOFTWARE: &str = "huizhen";
/// REQUESTED-TRANSPORT protocol number for UDP.
const UDP: u8 = 17;
/// REQUESTED-TRANSPORT protocol number for TCP (RFC 6062).
const TCP: u8 = 6;
/// How long a connection made by `Connect` waits for its `ConnectionBind` (RFC 6062 §5.2).
const CONNECTION_BIND_TIMEOUT: Duration = Duration::from_secs(30);

/// How a client reaches the TURN server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP (RFC 8656 framing: STUN messages and ChannelData padded to 4 bytes).
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl Transport {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    fn is_stream(self) -> bool {
        self != Transport::Udp
    }
}

/// A client's 5-tuple: one allocation per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// How the client reaches us.
    pub transport: Transport,
    /// The client's address.
    pub client: SocketAddr,
    /// The TURN server's address the client talks to.
    pub listen: SocketAddr,
}

/// The relayed transport of an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayProtocol {
    /// UDP (RFC 8656).
    Udp,
    /// TCP (RFC 6062).
    Tcp,
}

/// Reserves relayed addresses. The server only needs them unique on the host per protocol;
/// the edge binds a socket per address ([`BoundRelayPorts`]), tests count.
pub trait RelayPorts: Send + Sync {
    /// A free relayed address of `family`, or `None` when none is left.
    fn reserve(&mut self, family: AddressFamily, protocol: RelayProtocol) -> Option<SocketAddr>;
    /// `addr` is free again.
    fn release(&mut self, addr: SocketAddr, protocol: RelayProtocol);
}

/// [`RelayPorts`] that binds a socket per allocation on the wildcard address (port chosen by
/// the kernel, reserved on every local IP) and holds it, unread, while the allocation lives:
/// UDP for UDP allocations, TCP (bound, never listening) for TCP ones, so no other
/// connection on the host can come from the same address and be confused with the relayed
/// one in the SFU's demux. The relayed address reported is the announced IP with that port:
/// clients use it only as a name for their relay candidate, and the announced IP may be a
/// NAT's, not bindable.
pub struct BoundRelayPorts {
    ips: Vec<IpAddr>,
    held: HashMap<(SocketAddr, RelayProtocol), socket2::Socket>,
}

impl BoundRelayPorts {
    /// Relayed addresses on `ips` (one per family).
    pub fn new(ips: Vec<IpAddr>) -> Self {
        BoundRelayPorts {
            ips,
            held: HashMap::new(),
        }
    }
}

impl RelayPorts for BoundRelayPorts {
    fn reserve(&mut self, family: AddressFamily, protocol: RelayProtocol) -> Option<SocketAddr> {
        use socket2::{Domain, Protocol, Socket, Type};
        let ip = self
            .ips
            .iter()
            .find(|ip| ip.is_ipv4() == (family == AddressFamily::IPV4))?;
        let (wildcard, domain): (IpAddr, _) = if ip.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED.into(), Domain::IPV4)
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED.into(), Domain::IPV6)
        };
        let socket = match protocol {
            RelayProtocol::Udp => Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)),
            RelayProtocol::Tcp => Socket::new(domain, Type::STREAM, Some(Protocol::TCP)),
        }
        .ok()?;
        socket.bind(&SocketAddr::new(wildcard, 0).into()).ok()?;
        let port = socket.local_addr().ok()?.as_socket()?.port();
        let addr = SocketAddr::new(*ip, port);
        self.held.insert((addr, protocol), socket);
        Some(addr)
    }

    fn release(&mut self, addr: SocketAddr, protocol: RelayProtocol) {
        self.held.remove(&(addr, protocol));
    }
}

/// Limits and names of the TURN core.
#[derive(Debug, Clone)]
pub struct TurnCoreConfig {
    /// REALM.
    pub realm: String,
    /// Most allocations on the server.
    pub max_allocations: usize,
    /// Most allocations per credential (a browser makes one per transport and interface).
    pub max_allocations_per_credential: usize,
}

/// What [`TurnServer::handle_client`] asks the edge to do.
#[derive(Debug, PartialEq, Eq)]
pub enum TurnOutput<'a> {
    /// Send these bytes back to the client.
    Reply(Vec<u8>),
    /// Hand `data` to the SFU as a datagram from `relayed` to `peer`.
    ToPeer {
        /// The client's relayed address (the source the SFU sees).
        relayed: SocketAddr,
        /// One of the SFU's media addresses.
        peer: SocketAddr,
        /// The payload.
        data: &'a [u8],
    },
    /// A `ConnectionBind` succeeded: send `reply`, and from then on this client connection
    /// carries the byte stream of a TCP connection from `relayed` to `peer` (the SFU's
    /// ICE-TCP address), no longer TURN messages.
    Bound {
        /// The success response, the last TURN message on the connection.
        reply: Vec<u8>,
        /// The allocation's relayed address (the source the SFU sees).
        relayed: SocketAddr,
        /// The SFU's ICE-TCP address.
        peer: SocketAddr,
    },
}

/// A TCP data connection the core ended (its allocation went away): the edge closes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosedData {
    /// The client's data connection.
    pub key: ClientKey,
    /// The relayed address the SFU knew it by.
    pub relayed: SocketAddr,
}

struct Allocation {
    key: ClientKey,
    username: String,
    protocol: RelayProtocol,
    relayed: SocketAddr,
    expires: Instant,
    /// The credential's expiry: the allocation never lives past it.
    credential_expires: Instant,
    /// The Allocate transaction, answered again if retransmitted over UDP.
    allocate_tid: TransactionId,
    permissions: Vec<(IpAddr, Instant)>,
    channels: Vec<Channel>,
    /// The id of this TCP allocation's connection to the SFU (one is all ICE needs, and a
    /// second from the same relayed address would be indistinguishable to the SFU).
    connection: Option<u32>,
}

/// A TCP allocation's connection to the SFU (RFC 6062).
#[derive(Debug)]
struct PeerConnection {
    allocation: ClientKey,
    relayed: SocketAddr,
    peer: SocketAddr,
    /// Waiting for `ConnectionBind` until then; `None` once bound.
    bind_by: Option<Instant>,
    /// The client's data connection, once bound.
    data: Option<ClientKey>,
}

#[derive(Debug, Clone, Copy)]
struct Channel {
    number: u16,
    peer: SocketAddr,
    expires: Instant,
}

impl Allocation {
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions
            .iter()
            .any(|(p, until)| *p == ip && *until > now)
    }
}

/// The authenticated part of a request.
struct Authed {
    username: String,
    credentials: MessageIntegrityCredentials,
    credential_expires: Instant,
}

/// Why a request is answered with an error.
struct Failure {
    code: u16,
    refusal: Refusal,
    unknown: Vec<AttributeType>,
}

impl Failure {
    fn new(code: u16, refusal: Refusal) -> Self {
        Failure {
            code,
            refusal,
            unknown: Vec::new(),
        }
    }
    fn bad() -> Self {
        Failure::new(ErrorCode::BAD_REQUEST, Refusal::BadRequest)
    }
}

/// The TURN server. See the module documentation.
pub struct TurnServer {
    config: TurnCoreConfig,
    secret: TurnSecret,
    /// An instant and the unix time at it: credentials carry unix expiries.
    anchor: (Instant, u64),
    /// The SFU's media addresses: the only peers.
    peers: Vec<SocketAddr>,
    /// The SFU's ICE-TCP addresses: the only peers of TCP allocations.
    tcp_peers: Vec<SocketAddr>,
    relays: Box<dyn RelayPorts>,
    allocations: HashMap<ClientKey, Allocation>,
    /// UDP allocations by relayed address (the SFU's datagrams to them are wrapped).
    by_relayed: HashMap<SocketAddr, ClientKey>,
    /// TCP connections to the SFU by connection id, and bound ones by data connection.
    connections: HashMap<u32, PeerConnection>,
    by_data: HashMap<ClientKey, u32>,
    /// Data connections ended by the core, for the edge to close.
    closed: Vec<ClosedData>,
    /// Set by a successful `ConnectionBind` for [`Self::handle_client`] to report.
    just_bound: Option<(SocketAddr, SocketAddr)>,
    per_username: HashMap<String, usize>,
    metrics: TurnMetrics,
}

impl std::fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnServer")
            .field("allocations", &self.allocations.len())
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl TurnServer {
    /// A server relaying only to `peers` (the SFU's media addresses). `now_unix` is the unix
    /// time at `now`.
    pub fn new(
        config: TurnCoreConfig,
        secret: TurnSecret,
        peers: Vec<SocketAddr>,
        relays: Box<dyn RelayPorts>,
        metrics: TurnMetrics,
        now: Instant,
        now_unix: u64,
    ) -> Self {
        TurnServer {
            config,
            secret,
            anchor: (now, now_unix),
            peers,
            tcp_peers: Vec::new(),
            relays,
            allocations: HashMap::new(),
            by_relayed: HashMap::new(),
            connections: HashMap::new(),
            by_data: HashMap::new(),
            closed: Vec::new(),
            just_bound: None,
            per_username: HashMap::new(),
            metrics,
        }
    }

    /// Let TCP allocations connect to `peers` (the SFU's ICE-TCP addresses); without any,
    /// a TCP allocation is refused with 442.
    pub fn set_tcp_peers(&mut self, peers: Vec<SocketAddr>) {
        self.tcp_peers = peers;
    }

    /// Unix seconds at `now`.
    pub fn unix(&self, now: Instant) -> u64 {
        self.anchor.1 + now.saturating_duration_since(self.anchor.0).as_secs()
    }

    fn instant_of_unix(&self, unix: u64) -> Instant {
        self.anchor.0 + Duration::from_secs(unix.saturating_sub(self.anchor.1))
    }

    /// Allocations held.
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// Whether `addr` is a relayed address of a live allocation (the edge asks this for each
    /// datagram the SFU sends, so it is one hash lookup).
    pub fn owns(&self, addr: &SocketAddr) -> bool {
        !self.by_relayed.is_empty() && self.by_relayed.contains_key(addr)
    }

    /// One STUN message or ChannelData from a client (over TCP/TLS: one framed message).
    pub fn handle_client<'a>(
        &mut self,
        now: Instant,
        key: ClientKey,
        bytes: &'a [u8],
    ) -> Option<TurnOutput<'a>> {
        let Some(&first) = bytes.first() else {
            self.metrics.refuse(Refusal::Malformed);
            return None;
        };
        if (0x40..=0x4f).contains(&first) {
            return self.channel_data(now, key, bytes);
        }
        let Ok(msg) = Message::from_bytes(bytes) else {
            self.metrics.refuse(Refusal::Malformed);
            return None;
        };
        match msg.class() {
            MessageClass::Request => {
                let reply = self.request(now, key, &msg);
                match (self.just_bound.take(), reply) {
                    (Some((relayed, peer)), Some(reply)) => Some(TurnOutput::Bound {
                        reply,
                        relayed,
                        peer,
                    }),
                    (_, reply) => reply.map(TurnOutput::Reply),
                }
            }
            MessageClass::Indication if msg.method() == SEND => {
                self.send_indication(now, key, &msg, bytes)
            }
            _ => {
                // Responses and other indications have no meaning from a client.
                self.metrics.refuse(Refusal::Malformed);
                None
            }
        }
    }

    /// A datagram the SFU sends from `peer` (its media address) to `relayed`: the bytes for
    /// the owning client, or `None` (no allocation or permission: dropped and counted).
    pub fn handle_peer(
        &mut self,
        now: Instant,
        relayed: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
    ) -> Option<(ClientKey, Vec<u8>)> {
        let Some(key) = self.by_relayed.get(&relayed) else {
            self.metrics.refuse(Refusal::NoAllocation);
            return None;
        };
        let alloc = &self.allocations[key];
        if alloc.expires <= now || !alloc.permitted(peer.ip(), now) {
            self.metrics.refuse(Refusal::NoAllocation);
            return None;
        }
        let out = match alloc
            .channels
            .iter()
            .find(|c| c.peer == peer && c.expires > now)
        {
            Some(channel) => {
                let len = 4 + data.len();
                let padded = if alloc.key.transport.is_stream() {
                    len.next_multiple_of(4)
                } else {
                    len
                };
                let mut out = vec![0u8; padded];
                ChannelData::new(channel.number, data).write_into_unchecked(&mut out[..len]);
                out
            }
            None => {
                let mut b = Message::builder(
                    turn_types::stun::message::MessageType::from_class_method(
                        MessageClass::Indication,
                        DATA,
                    ),
                    TransactionId::generate(),
                    MessageWriteVec::with_capacity(data.len() + 40),
                );
                b.add_attribute(&XorPeerAddress::new(peer, b.transaction_id()))
                    .ok()?;
                b.add_attribute(&AData::new(data)).ok()?;
                b.finish()
            }
        };
        self.metrics.relayed_out.inc();
        self.metrics.relayed_bytes.inc_by(data.len() as u64);
        Some((alloc.key, out))
    }

    /// A TCP or TLS client's connection closed: its allocation goes with it (RFC 8656 §3.1);
    /// a data connection's end ends the connection to the SFU, and the allocation may
    /// `Connect` again.
    pub fn client_closed(&mut self, key: &ClientKey) {
        if let Some(id) = self.by_data.remove(key) {
            self.drop_connection(id);
            return;
        }
        self.remove(key);
    }

    /// The next data connection the core ended (its allocation expired, was deleted, or its
    /// control connection closed): the edge closes it and tells the SFU.
    pub fn poll_closed(&mut self) -> Option<ClosedData> {
        self.closed.pop()
    }

    /// Data connections bound now.
    pub fn data_connection_count(&self) -> usize {
        self.by_data.len()
    }

    /// Expire allocations, permissions, channels and unbound connections.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<ClientKey> = self
            .allocations
            .values()
            .filter(|a| a.expires <= now)
            .map(|a| a.key)
            .collect();
        for key in expired {
            self.remove(&key);
        }
        let unbound: Vec<u32> = self
            .connections
            .iter()
            .filter(|(_, c)| c.bind_by.is_some_and(|by| by <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in unbound {
            self.metrics.refuse(Refusal::NoAllocation);
            self.drop_connection(id);
        }
        for alloc in self.allocations.values_mut() {
            alloc.permissions.retain(|(_, until)| *until > now);
            alloc.channels.retain(|c| c.expires > now);
        }
    }

    /// The next time [`Self::handle_timeout`] has work (allocation expiry, a connection's
    /// bind deadline; permissions and channels are also checked lazily on use).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let allocations = self.allocations.values().map(|a| a.expires);
        let binds = self.connections.values().filter_map(|c| c.bind_by);
        allocations.chain(binds).min()
    }

    /// Forget connection `id`; its allocation may connect again.
    fn drop_connection(&mut self, id: u32) -> Option<PeerConnection> {
        let conn = self.connections.remove(&id)?;
        if let Some(data) = conn.data {
            self.by_data.remove(&data);
            self.metrics.tcp_relays.dec();
        }
        if let Some(alloc) = self.allocations.get_mut(&conn.allocation) {
            alloc.connection = None;
        }
        Some(conn)
    }

    fn remove(&mut self, key: &ClientKey) {
        let Some(alloc) = self.allocations.remove(key) else {
            return;
        };
        if let Some(conn) = alloc.connection.and_then(|id| self.drop_connection(id)) {
            if let Some(data) = conn.data {
                self.closed.push(ClosedData {
                    key: data,
                    relayed: conn.relayed,
                });
            }
        }
        if alloc.protocol == RelayProtocol::Udp {
            self.by_relayed.remove(&alloc.relayed);
        }
        self.relays.release(alloc.relayed, alloc.protocol);
        if let Some(n) = self.per_username.get_mut(&alloc.username) {
            *n -= 1;
            if *n == 0 {
                self.per_username.remove(&alloc.username);
            }
        }
        self.metrics
            .allocations
            .with_label_values(&[key.transport.label()])
            .dec();
    }

    fn channel_data<'a>(
        &mut self,
        now: Instant,
        key: ClientKey,
        bytes: &'a [u8],
    ) -> Option<TurnOutput<'a>> {
        let Ok(channel) = ChannelData::parse(bytes) else {
            self.metrics.refuse(Refusal::Malformed);
            return None;
        };
        let number = channel.id();
        let data_len = channel.data().len();
        let Some(alloc) = self.allocations.get(&key) else {
            self.metrics.refuse(Refusal::NoAllocation);
            return None;
        };
        let Some(ch) = alloc
            .channels
            .iter()
            .find(|c| c.number == number && c.expires > now)
        else {
            self.metrics.refuse(Refusal::NoAllocation);
            return None;
        };
        if alloc.expires <= now || !alloc.permitted(ch.peer.ip(), now) {
            self.metrics.refuse(Refusal::NoAllocation);
            return None;
        }
        self.deliver_to_peer(alloc.relayed, ch.peer, &bytes[4..4 + data_len])
    }

    fn send_indication<'a>(
        &mut self,
        now: Instant,
        key: ClientKey,
        msg: &Message<'_>,
        bytes: &'a [u8],
    ) -> Option<TurnOutput<'a>> {
        let peer = msg
            .attribute::<XorPeerAddress>()
            .ok()
            .map(|a| a.addr(msg.transaction_id()));
        let data = msg.attribute_and_offset::<AData>().ok();
        let (Some(peer), Some((offset, data))) = (peer, data) else {
            self.metrics.refuse(Refusal::Malformed);
            return None;
        };
        let len = data.data().len();
        let Some(alloc) = self.allocations.get(&key) else {
            self.metrics.refuse(Refusal::NoAllocation);
            return None;
        };
        if alloc.expires <= now || !alloc.permitted(peer.ip(), now) {
            self.metrics.refuse(Refusal::NoAllocation);
            return None;
        }
        // The attribute's value starts 4 bytes after its header.
        let start = offset + 4;
        self.deliver_to_peer(alloc.relayed, peer, bytes.get(start..start + len)?)
    }

    /// Data for the SFU: only to exactly one of its media addresses.
    fn deliver_to_peer<'a>(
        &mut self,
        relayed: SocketAddr,
        peer: SocketAddr,
        data: &'a [u8],
    ) -> Option<TurnOutput<'a>> {
        if !self.peers.contains(&peer) {
            self.metrics.refuse(Refusal::ForbiddenPeer);
            return None;
        }
        self.metrics.relayed_in.inc();
        self.metrics.relayed_bytes.inc_by(data.len() as u64);
        Some(TurnOutput::ToPeer {
            relayed,
            peer,
            data,
        })
    }

    /// A request: the reply (success or error).
    fn request(&mut self, now: Instant, key: ClientKey, msg: &Message<'_>) -> Option<Vec<u8>> {
        let method = msg.method();
        if method == BINDING {
            // Plain STUN: no authentication (RFC 8489 §6.3.1).
            let mut b = Message::builder_success(msg, MessageWriteVec::with_capacity(48));
            b.add_attribute(&XorMappedAddress::new(key.client, msg.transaction_id()))
                .ok()?;
            b.add_fingerprint().ok()?;
            self.metrics.requests.with_label_values(&["binding"]).inc();
            return Some(b.finish());
        }
        if ![
            ALLOCATE,
            REFRESH,
            CREATE_PERMISSION,
            CHANNEL_BIND,
            CONNECT,
            CONNECTION_BIND,
        ]
        .contains(&method)
        {
            self.metrics.refuse(Refusal::BadRequest);
            return self.error_reply(msg, None, &Failure::bad());
        }
        let authed = match self.authenticate(now, key, msg) {
            Ok(a) => a,
            Err(reply) => return reply,
        };
        let result = match method {
            m if m == ALLOCATE => self.allocate(now, key, msg, &authed),
            m if m == REFRESH => self.refresh(now, key, msg, &authed),
            m if m == CREATE_PERMISSION => self.create_permission(now, key, msg, &authed),
            m if m == CONNECT => self.connect(now, key, msg, &authed),
            m if m == CONNECTION_BIND => self.connection_bind(key, msg, &authed),
            _ => self.channel_bind(now, key, msg, &authed),
        };
        match result {
            Ok(reply) => {
                self.metrics
                    .requests
                    .with_label_values(&[method_label(method)])
                    .inc();
                Some(reply)
            }
            Err(failure) => {
                self.metrics.refuse(failure.refusal);
                self.error_reply(msg, Some(&authed.credentials), &failure)
            }
        }
    }

    /// The long-term credential checks (RFC 8489 §9.2.4): the credentials on success, else
    /// the (unsigned) 400/401/438 reply.
    fn authenticate(
        &mut self,
        now: Instant,
        key: ClientKey,
        msg: &Message<'_>,
    ) -> Result<Authed, Option<Vec<u8>>> {
        let has_integrity = msg.has_attribute(MessageIntegrity::TYPE)
            || msg.has_attribute(MessageIntegritySha256::TYPE);
        if !has_integrity {
            // The usual first request: tell the client the realm and a nonce. Not counted
            // as a refusal (every client does this once).
            return Err(self.challenge(now, key, msg, ErrorCode::UNAUTHORIZED));
        }
        let username = msg.attribute::<Username>().ok();
        let realm = msg.attribute::<Realm>().ok();
        let nonce = msg.attribute::<Nonce>().ok();
        let (Some(username), Some(realm), Some(nonce)) = (username, realm, nonce) else {
            self.metrics.refuse(Refusal::BadRequest);
            return Err(self.error_reply(msg, None, &Failure::bad()));
        };
        if realm.realm() != self.config.realm {
            self.metrics.refuse(Refusal::Unauthorized);
            return Err(self.challenge(now, key, msg, ErrorCode::UNAUTHORIZED));
        }
        if !self.nonce_valid(now, key, nonce.nonce()) {
            self.metrics.refuse(Refusal::StaleNonce);
            return Err(self.challenge(now, key, msg, ErrorCode::STALE_NONCE));
        }
        let username = username.username().to_owned();
        let expiry = match self.secret.check(&username, self.unix(now)) {
            Ok(expiry) => expiry,
            Err(e) => {
                self.metrics.refuse(match e {
                    CredentialError::Expired => Refusal::Expired,
                    CredentialError::Malformed => Refusal::Unauthorized,
                });
                return Err(self.challenge(now, key, msg, ErrorCode::UNAUTHORIZED));
            }
        };
        let password = self.secret.password(&username);
        let credentials: MessageIntegrityCredentials =
            LongTermKeyCredentials::new(username.clone(), password, self.config.realm.clone())
                .into();
        if msg.validate_integrity(&credentials).is_err() {
            self.metrics.refuse(Refusal::Unauthorized);
            return Err(self.challenge(now, key, msg, ErrorCode::UNAUTHORIZED));
        }
        Ok(Authed {
            username,
            credentials,
            credential_expires: self.instant_of_unix(expiry),
        })
    }

    /// A 401 or 438 with REALM and a fresh NONCE.
    fn challenge(
        &self,
        now: Instant,
        key: ClientKey,
        msg: &Message<'_>,
        code: u16,
    ) -> Option<Vec<u8>> {
        let nonce = self.nonce(now, key);
        let mut b = Message::builder_error(msg, MessageWriteVec::with_capacity(96));
        b.add_attribute(&ErrorCode::builder(code).build().ok()?)
            .ok()?;
        b.add_attribute(&Realm::new(&self.config.realm).ok()?)
            .ok()?;
        b.add_attribute(&Nonce::new(&nonce).ok()?).ok()?;
        b.add_attribute(&Software::new(SOFTWARE).ok()?).ok()?;
        b.add_fingerprint().ok()?;
        Some(b.finish())
    }

    /// `<expiry unix, hex>` + MAC(expiry, client address): checked without any state.
    fn nonce(&self, now: Instant, key: ClientKey) -> String {
        let expiry = self.unix(now) + NONCE_LIFETIME.as_secs();
        format!("{expiry:x}-{}", hex::encode(self.nonce_mac(expiry, key)))
    }

    fn nonce_mac(&self, expiry: u64, key: ClientKey) -> [u8; 12] {
        let mut data = Vec::with_capacity(40);
        data.extend_from_slice(&expiry.to_be_bytes());
        data.extend_from_slice(key.client.to_string().as_bytes());
        data.push(key.transport as u8);
        self.secret.mac(&data)
    }

    fn nonce_valid(&self, now: Instant, key: ClientKey, nonce: &str) -> bool {
        let Some((expiry, mac)) = nonce.split_once('-') else {
            return false;
        };
        let Ok(expiry) = u64::from_str_radix(expiry, 16) else {
            return false;
        };
        if expiry <= self.unix(now) {
            return false;
        }
        let Ok(mac) = hex::decode(mac) else {
            return false;
        };
        // Not secret-dependent timing worth protecting (the MAC covers public data), but
        // compare in constant time anyway.
        let want = self.nonce_mac(expiry, key);
        mac.len() == want.len()
            && mac
                .iter()
                .zip(want.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    fn error_reply(
        &self,
        msg: &Message<'_>,
        credentials: Option<&MessageIntegrityCredentials>,
        failure: &Failure,
    ) -> Option<Vec<u8>> {
        let mut b = Message::builder_error(msg, MessageWriteVec::with_capacity(96));
        b.add_attribute(&ErrorCode::builder(failure.code).build().ok()?)
            .ok()?;
        if !failure.unknown.is_empty() {
            b.add_attribute(&UnknownAttributes::new(&failure.unknown))
                .ok()?;
        }
        if let Some(credentials) = credentials {
            b.add_message_integrity(credentials, IntegrityAlgorithm::Sha1)
                .ok()?;
        }
        b.add_fingerprint().ok()?;
        Some(b.finish())
    }

    fn signed_success(
        &self,
        msg: &Message<'_>,
        authed: &Authed,
        add: impl FnOnce(&mut MessageWriteVec) -> Option<()>,
    ) -> Result<Vec<u8>, Failure> {
        let build = || {
            let mut b = Message::builder_success(msg, MessageWriteVec::with_capacity(96));
            add(&mut b)?;
            b.add_message_integrity(&authed.credentials, IntegrityAlgorithm::Sha1)
                .ok()?;
            b.add_fingerprint().ok()?;
            Some(b.finish())
        };
        build().ok_or(Failure::new(ErrorCode::SERVER_ERROR, Refusal::BadRequest))
    }

    fn allocate(
        &mut self,
        now: Instant,
        key: ClientKey,
        msg: &Message<'_>,
        authed: &Authed,
    ) -> Result<Vec<u8>, Failure> {
        if let Some(existing) = self.allocations.get(&key) {
            if existing.allocate_tid == msg.transaction_id() && existing.username == authed.username
            {
                // A retransmitted Allocate whose answer was lost: answer it again.
                let (relayed, lifetime) = (
                    existing.relayed,
                    existing.expires.saturating_duration_since(now),
                );
                return self.allocate_success(msg, authed, key, relayed, lifetime);
            }
            return Err(Failure::new(
                ErrorCode::ALLOCATION_MISMATCH,
                Refusal::BadRequest,
            ));
        }
        let mut transport = None;
        let mut lifetime = None;
        let mut family = AddressFamily::IPV4;
        let mut unknown = Vec::new();
        for (_, attr) in msg.iter_attributes() {
            match attr.get_type() {
                t if t == RequestedTransport::TYPE => {
                    transport = RequestedTransport::from_raw(attr)
                        .ok()
                        .map(|t| t.protocol());
                }
                t if t == Lifetime::TYPE => {
                    lifetime = Lifetime::from_raw(attr).ok().map(|l| l.seconds());
                }
                t if t == RequestedAddressFamily::TYPE => {
                    match RequestedAddressFamily::from_raw(attr) {
                        Ok(f) => family = f.family(),
                        Err(_) => return Err(Failure::bad()),
                    }
                }
                // Accepted and not acted on: the relay is in-process (no fragmentation), and
                // a dual allocation is answered with the server's family only (RFC 8656 §7.2
                // allows that).
                t if t == DontFragment::TYPE || t == AdditionalAddressFamily::TYPE => {}
                // Even ports and reservations (RTP/RTCP pairs) are not offered.
                t if t == EvenPort::TYPE || t == ReservationToken::TYPE => {
                    return Err(Failure::new(
                        ErrorCode::INSUFFICIENT_CAPACITY,
                        Refusal::Capacity,
                    ));
                }
                t if is_auth_attribute(t) => {}
                t if t.comprehension_required() => unknown.push(t),
                _ => {}
            }
        }
        if !unknown.is_empty() {
            return Err(Failure {
                code: ErrorCode::UNKNOWN_ATTRIBUTE,
                refusal: Refusal::BadRequest,
                unknown,
            });
        }
        let protocol = match transport {
            None => return Err(Failure::bad()),
            Some(UDP) => RelayProtocol::Udp,
            // RFC 6062 §5.1: a TCP allocation is made over TCP or TLS only, and here only
            // when the SFU has an ICE-TCP address to connect to.
            Some(TCP) if !key.transport.is_stream() => return Err(Failure::bad()),
            Some(TCP) if !self.tcp_peers.is_empty() => RelayProtocol::Tcp,
            Some(_) => {
                return Err(Failure::new(
                    ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL,
                    Refusal::BadRequest,
                ))
            }
        };
        if protocol == RelayProtocol::Tcp && msg.has_attribute(DontFragment::TYPE) {
            return Err(Failure::bad());
        }
        if self.by_data.contains_key(&key) {
            // A data connection carries bytes, not requests (the edge never passes any).
            return Err(Failure::bad());
        }
        if self.allocations.len() >= self.config.max_allocations {
            return Err(Failure::new(
                ErrorCode::INSUFFICIENT_CAPACITY,
                Refusal::Capacity,
            ));
        }
        let held = self
            .per_username
            .get(&authed.username)
            .copied()
            .unwrap_or(0);
        if held >= self.config.max_allocations_per_credential {
            return Err(Failure::new(
                ErrorCode::ALLOCATION_QUOTA_REACHED,
                Refusal::Quota,
            ));
        }
        let peers = match protocol {
            RelayProtocol::Udp => &self.peers,
            RelayProtocol::Tcp => &self.tcp_peers,
        };
        if !peers
            .iter()
            .any(|p| p.is_ipv4() == (family == AddressFamily::IPV4))
        {
            return Err(Failure::new(
                ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED,
                Refusal::BadRequest,
            ));
        }
        let Some(relayed) = self.relays.reserve(family, protocol) else {
            return Err(Failure::new(
                ErrorCode::INSUFFICIENT_CAPACITY,
                Refusal::Capacity,
            ));
        };
        let lifetime = granted_lifetime(lifetime);
        let expires = (now + lifetime).min(authed.credential_expires);
        let granted = expires.saturating_duration_since(now);
        self.allocations.insert(
            key,
            Allocation {
                key,
                username: authed.username.clone(),
                protocol,
                relayed,
                expires,
                credential_expires: authed.credential_expires,
                allocate_tid: msg.transaction_id(),
                permissions: Vec::new(),
                channels: Vec::new(),
                connection: None,
            },
        );
        if protocol == RelayProtocol::Udp {
            self.by_relayed.insert(relayed, key);
        }
        *self
            .per_username
            .entry(authed.username.clone())
            .or_insert(0) += 1;
        let t = key.transport.label();
        self.metrics.allocations.with_label_values(&[t]).inc();
        self.metrics
            .allocations_created
            .with_label_values(&[t])
            .inc();
        self.allocate_success(msg, authed, key, relayed, granted)
    }

    fn allocate_success(
        &self,
        msg: &Message<'_>,
        authed: &Authed,
        key: ClientKey,
        relayed: SocketAddr,
        lifetime: Duration,
    ) -> Result<Vec<u8>, Failure> {
        let tid = msg.transaction_id();
        self.signed_success(msg, authed, |b| {
            b.add_attribute(&XorRelayedAddress::new(relayed, tid))
                .ok()?;
            b.add_attribute(&Lifetime::new(lifetime.as_secs() as u32))
                .ok()?;
            b.add_attribute(&XorMappedAddress::new(key.client, tid))
                .ok()?;
            b.add_attribute(&Software::new(SOFTWARE).ok()?).ok()?;
            Some(())
        })
    }

    /// The allocation of `key`, if it exists and belongs to `authed` (437 / 441 otherwise).
    fn owned(&mut self, key: ClientKey, authed: &Authed) -> Result<&mut Allocation, Failure> {
        let alloc = self.allocations.get_mut(&key).ok_or(Failure::new(
            ErrorCode::ALLOCATION_MISMATCH,
            Refusal::NoAllocation,
        ))?;
        if alloc.username != authed.username {
            return Err(Failure::new(
                ErrorCode::WRONG_CREDENTIALS,
                Refusal::Unauthorized,
            ));
        }
        Ok(alloc)
    }

    fn refresh(
        &mut self,
        now: Instant,
        key: ClientKey,
        msg: &Message<'_>,
        authed: &Authed,
    ) -> Result<Vec<u8>, Failure> {
        let requested = msg.attribute::<Lifetime>().ok().map(|l| l.seconds());
        let alloc = self.owned(key, authed)?;
        let granted = if requested == Some(0) {
            Duration::ZERO
        } else {
            // A refresh with a newer credential of the same username cannot happen (the
            // username carries the expiry), so the cap stays the allocation's own.
            let expires = (now + granted_lifetime(requested)).min(alloc.credential_expires);
            alloc.expires = expires;
            expires.saturating_duration_since(now)
        };
        if granted.is_zero() {
            self.remove(&key);
        }
        self.signed_success(msg, authed, |b| {
            b.add_attribute(&Lifetime::new(granted.as_secs() as u32))
                .ok()?;
            Some(())
        })
    }

    /// The XOR-PEER-ADDRESS values of `msg`, each one of the SFU's media IPs (403 otherwise).
    fn allowed_peers(&self, msg: &Message<'_>) -> Result<Vec<SocketAddr>, Failure> {
        let mut peers = Vec::new();
        for (_, attr) in msg.iter_attributes() {
            let t = attr.get_type();
            if t == XorPeerAddress::TYPE {
                let addr = XorPeerAddress::from_raw(attr)
                    .map_err(|_| Failure::bad())?
                    .addr(msg.transaction_id());
                peers.push(addr);
            } else if !is_auth_attribute(t)
                && t != ChannelNumber::TYPE
                && t.comprehension_required()
            {
                return Err(Failure {
                    code: ErrorCode::UNKNOWN_ATTRIBUTE,
                    refusal: Refusal::BadRequest,
                    unknown: vec![t],
                });
            }
        }
        if peers.is_empty() {
            return Err(Failure::bad());
        }
        if peers
            .iter()
            .any(|p| !self.peers.iter().any(|s| s.ip() == p.ip()))
        {
            return Err(Failure::new(ErrorCode::FORBIDDEN, Refusal::ForbiddenPeer));
        }
        Ok(peers)
    }

    fn create_permission(
        &mut self,
        now: Instant,
        key: ClientKey,
        msg: &Message<'_>,
        authed: &Authed,
    ) -> Result<Vec<u8>, Failure> {
        let peers = self.allowed_peers(msg)?;
        let alloc = self.owned(key, authed)?;
        for peer in peers {
            permit(alloc, peer.ip(), now)?;
        }
        self.signed_success(msg, authed, |_| Some(()))
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        key: ClientKey,
        msg: &Message<'_>,
        authed: &Authed,
    ) -> Result<Vec<u8>, Failure> {
        let number = msg
            .attribute::<ChannelNumber>()
            .map_err(|_| Failure::bad())?
            .channel();
        if !(0x4000..=0x4fff).contains(&number) {
            return Err(Failure::bad());
        }
        let peers = self.allowed_peers(msg)?;
        let [peer] = peers[..] else {
            return Err(Failure::bad());
        };
        // A channel names a whole address: only the SFU's own (a permission is by IP only,
        // and data to another port of that IP is dropped in `deliver_to_peer`).
        if !self.peers.contains(&peer) {
            return Err(Failure::new(ErrorCode::FORBIDDEN, Refusal::ForbiddenPeer));
        }
        let alloc = self.owned(key, authed)?;
        // A channel is bound to one peer and a peer to one channel (RFC 8656 §12.2).
        if alloc
            .channels
            .iter()
            .any(|c| (c.number == number) != (c.peer == peer))
        {
            return Err(Failure::bad());
        }
        match alloc.channels.iter_mut().find(|c| c.number == number) {
            Some(c) => c.expires = now + CHANNEL_LIFETIME,
            None => {
                if alloc.channels.len() >= MAX_PEERS_PER_ALLOCATION {
                    return Err(Failure::new(
                        ErrorCode::INSUFFICIENT_CAPACITY,
                        Refusal::Capacity,
                    ));
                }
                alloc.channels.push(Channel {
                    number,
                    peer,
                    expires: now + CHANNEL_LIFETIME,
                });
            }
        }
        permit(alloc, peer.ip(), now)?;
        self.signed_success(msg, authed, |_| Some(()))
    }
}

impl TurnServer {
    /// `Connect` (RFC 6062 §5.2) on a TCP allocation: to the SFU's ICE-TCP address only. The
    /// "connection" is in-process, so it succeeds at once; it waits for its `ConnectionBind`.
    fn connect(
        &mut self,
        now: Instant,
        key: ClientKey,
        msg: &Message<'_>,
        authed: &Authed,
    ) -> Result<Vec<u8>, Failure> {
        let peer = msg
            .attribute::<XorPeerAddress>()
            .map_err(|_| Failure::bad())?
            .addr(msg.transaction_id());
        if let Some((_, attr)) = msg.iter_attributes().find(|(_, a)| {
            let t = a.get_type();
            t != XorPeerAddress::TYPE && !is_auth_attribute(t) && t.comprehension_required()
        }) {
            return Err(Failure {
                code: ErrorCode::UNKNOWN_ATTRIBUTE,
                refusal: Refusal::BadRequest,
                unknown: vec![attr.get_type()],
            });
        }
        let allowed = self.tcp_peers.contains(&peer);
        let alloc = self.owned(key, authed)?;
        if alloc.protocol != RelayProtocol::Tcp {
            return Err(Failure::bad());
        }
        if !allowed {
            return Err(Failure::new(ErrorCode::FORBIDDEN, Refusal::ForbiddenPeer));
        }
        if alloc.connection.is_some() {
            return Err(Failure::new(
                ErrorCode::CONNECTION_ALREADY_EXISTS,
                Refusal::BadRequest,
            ));
        }
        permit(alloc, peer.ip(), now)?;
        let relayed = alloc.relayed;
        // Unguessable, so a stranger's ConnectionBind cannot name it (it would also need the
        // allocation's credential).
        let id = loop {
            let id = rand::random::<u32>();
            if id != 0 && !self.connections.contains_key(&id) {
                break id;
            }
        };
        if let Some(alloc) = self.allocations.get_mut(&key) {
            alloc.connection = Some(id);
        }
        self.connections.insert(
            id,
            PeerConnection {
                allocation: key,
                relayed,
                peer,
                bind_by: Some(now + CONNECTION_BIND_TIMEOUT),
                data: None,
            },
        );
        self.signed_success(msg, authed, |b| {
            b.add_attribute(&ConnectionId::new(id)).ok()?;
            Some(())
        })
    }

    /// `ConnectionBind` (RFC 6062 §5.4) on a new connection: with the allocation's own
    /// credential, it becomes the data connection of a pending connection.
    fn connection_bind(
        &mut self,
        key: ClientKey,
        msg: &Message<'_>,
        authed: &Authed,
    ) -> Result<Vec<u8>, Failure> {
        if !key.transport.is_stream()
            || self.allocations.contains_key(&key)
            || self.by_data.contains_key(&key)
        {
            return Err(Failure::bad());
        }
        let id = msg
            .attribute::<ConnectionId>()
            .map_err(|_| Failure::bad())?
            .id();
        let Some(conn) = self.connections.get(&id).filter(|c| c.data.is_none()) else {
            return Err(Failure::new(ErrorCode::BAD_REQUEST, Refusal::NoAllocation));
        };
        let Some(alloc) = self.allocations.get(&conn.allocation) else {
            return Err(Failure::new(ErrorCode::BAD_REQUEST, Refusal::NoAllocation));
        };
        if alloc.username != authed.username {
            return Err(Failure::new(
                ErrorCode::WRONG_CREDENTIALS,
                Refusal::Unauthorized,
            ));
        }
        let reply = self.signed_success(msg, authed, |_| Some(()))?;
        let conn = self.connections.get_mut(&id).expect("checked above");
        conn.bind_by = None;
        conn.data = Some(key);
        self.by_data.insert(key, id);
        self.just_bound = Some((conn.relayed, conn.peer));
        self.metrics.tcp_relays.inc();
        Ok(reply)
    }
}

/// Install or refresh the permission for `ip`.
fn permit(alloc: &mut Allocation, ip: IpAddr, now: Instant) -> Result<(), Failure> {
    match alloc.permissions.iter_mut().find(|(p, _)| *p == ip) {
        Some((_, until)) => *until = now + PERMISSION_LIFETIME,
        None => {
            alloc.permissions.retain(|(_, until)| *until > now);
            if alloc.permissions.len() >= MAX_PEERS_PER_ALLOCATION {
                return Err(Failure::new(
                    ErrorCode::INSUFFICIENT_CAPACITY,
                    Refusal::Capacity,
                ));
            }
            alloc.permissions.push((ip, now + PERMISSION_LIFETIME));
        }
    }
    Ok(())
}

fn granted_lifetime(requested: Option<u32>) -> Duration {
    match requested {
        None | Some(0) => DEFAULT_LIFETIME,
        Some(s) => Duration::from_secs(u64::from(s))
            .max(DEFAULT_LIFETIME)
            .min(MAX_LIFETIME),
    }
}

fn is_auth_attribute(t: AttributeType) -> bool {
    t == Username::TYPE
        || t == Realm::TYPE
        || t == Nonce::TYPE
        || t == MessageIntegrity::TYPE
        || t == MessageIntegritySha256::TYPE
        || t == Fingerprint::TYPE
        || t == Software::TYPE
}

fn method_label(method: Method) -> &'static str {
    match method {
        m if m == ALLOCATE => "allocate",
        m if m == REFRESH => "refresh",
        m if m == CREATE_PERMISSION => "create_permission",
        m if m == CHANNEL_BIND => "channel_bind",
        m if m == CONNECT => "connect",
        m if m == CONNECTION_BIND => "connection_bind",
        _ => "other",
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
