//! A TURN client over UDP (RFC 8656), just what a relayed participant needs: one UDP
//! allocation with long-term credentials (the `ice_servers` of huizhen's `joined`), a channel
//! per peer (the SFU's media address), refreshes, and ChannelData both ways. Sans-IO: the
//! participant's task sends what [`TurnClient::poll_transmit`] gives to the TURN server from its
//! own socket, hands every datagram from the server to [`TurnClient::unwrap`], and wraps what
//! str0m sends from the relayed candidate with [`TurnClient::wrap`].
//!
//! What a browser with `iceTransportPolicy: "relay"` does too, minus what the generator does not
//! need: no TCP or TLS to the TURN server, no FINGERPRINT, and responses are matched by
//! transaction id without checking their MESSAGE-INTEGRITY (loopback, the generator's own
//! server). MD5 (the long-term key) comes from the `md-5` crate, HMAC-SHA1 from str0m's crypto
//! provider.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

const MAGIC: u32 = 0x2112_A442;

const ALLOCATE: u16 = 0x003;
const REFRESH: u16 = 0x004;
const DATA_INDICATION: u16 = 0x007;
const CHANNEL_BIND: u16 = 0x009;

const REQUEST: u16 = 0;
const INDICATION: u16 = 1;
const SUCCESS: u16 = 2;
const ERROR: u16 = 3;

const USERNAME: u16 = 0x0006;
const MESSAGE_INTEGRITY: u16 = 0x0008;
const ERROR_CODE: u16 = 0x0009;
const CHANNEL_NUMBER: u16 = 0x000C;
const LIFETIME: u16 = 0x000D;
const XOR_PEER_ADDRESS: u16 = 0x0012;
const DATA: u16 = 0x0013;
const REALM: u16 = 0x0014;
const NONCE: u16 = 0x0015;
const XOR_RELAYED_ADDRESS: u16 = 0x0016;
const REQUESTED_TRANSPORT: u16 = 0x0019;

/// Allocation lifetime asked for (the server's default, RFC 8656).
const LIFETIME_SECS: u32 = 600;
/// Allocation and channels (and with them the permission, 300 s) are refreshed this often.
const REFRESH_EVERY: Duration = Duration::from_secs(120);
/// First retransmission timeout of a request (RFC 8489: 500 ms, doubling).
const RTO: Duration = Duration::from_millis(500);
/// Sends of one request before it is given up (RFC 8489's Rc = 7).
const MAX_TRIES: u32 = 7;
/// Times one request is sent again with new authentication (401 or 438).
const MAX_AUTH_RETRIES: u32 = 3;
/// Channels per allocation (the SFU has one media address per family).
const MAX_CHANNELS: usize = 8;
/// Datagrams held for a peer while its channel is being bound (ICE checks, the first DTLS).
const MAX_QUEUED: usize = 64;

/// Counters of a relayed participant's TURN client.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TurnCounters {
    /// Successful Allocate.
    pub allocations: u64,
    /// Successful ChannelBind (first binds and refreshes).
    pub channel_binds: u64,
    /// Successful Refresh.
    pub refreshes: u64,
    /// Error responses other than the expected 401/438 challenges, and requests that got no
    /// answer.
    pub errors: u64,
    /// Datagrams dropped before their channel was bound (queue full) or for lack of a channel.
    pub dropped: u64,
    /// Data indications received (data from a peer without a channel).
    pub data_indications: u64,
}

/// What a datagram from the TURN server was.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// Data relayed from `peer` (ChannelData or a Data indication).
    Media {
        /// The peer it came from (the SFU).
        peer: SocketAddr,
        /// The relayed datagram.
        data: &'a [u8],
    },
    /// A response, consumed by the client (look at [`TurnClient::poll_transmit`] afterwards).
    Handled,
    /// Not a TURN message, or one the client did not ask for.
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Allocate,
    Refresh(u32),
    ChannelBind { peer: SocketAddr, number: u16 },
}

#[derive(Debug)]
struct Transaction {
    tid: [u8; 12],
    request: Request,
    bytes: Vec<u8>,
    resend_at: Instant,
    rto: Duration,
    tries: u32,
    auth_retries: u32,
}

#[derive(Debug)]
struct Channel {
    peer: SocketAddr,
    number: u16,
    bound: bool,
    queued: Vec<Vec<u8>>,
}

/// The client side of one UDP allocation.
#[derive(Debug)]
pub struct TurnClient {
    server: SocketAddr,
    username: String,
    password: String,
    realm: Option<String>,
    nonce: Option<String>,
    key: Option<[u8; 16]>,
    relayed: Option<SocketAddr>,
    channels: Vec<Channel>,
    transactions: Vec<Transaction>,
    out: VecDeque<Vec<u8>>,
    tid_prefix: u32,
    next_tid: u64,
    refresh_at: Option<Instant>,
    failed: Option<String>,
    buf: Vec<u8>,
    /// What happened so far.
    pub counters: TurnCounters,
}

impl TurnClient {
    /// A client of the TURN server at `server` with these credentials. `tid_prefix` makes the
    /// transaction ids of the run's clients distinct (the participant's index).
    pub fn new(server: SocketAddr, username: &str, password: &str, tid_prefix: u32) -> Self {
        TurnClient {
            server,
            username: username.to_string(),
            password: password.to_string(),
            realm: None,
            nonce: None,
            key: None,
            relayed: None,
            channels: Vec::new(),
            transactions: Vec::new(),
            out: VecDeque::new(),
            tid_prefix,
            next_tid: 0,
            refresh_at: None,
            failed: None,
            buf: Vec::with_capacity(1600),
            counters: TurnCounters::default(),
        }
    }

    /// The TURN server's address (every datagram of the client goes there).
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The relayed address, once the allocation succeeded.
    pub fn relayed(&self) -> Option<SocketAddr> {
        self.relayed
    }

    /// Why the allocation failed, if it did.
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Asks for the allocation (the first Allocate goes without credentials and gets the
    /// realm and a nonce in its 401).
    pub fn allocate(&mut self, now: Instant) {
        self.request(now, Request::Allocate, 0);
    }

    /// The next datagram to send to [`Self::server`].
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// When [`Self::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.transactions
            .iter()
            .map(|t| t.resend_at)
            .chain(self.refresh_at)
            .min()
    }

    /// Retransmissions and refreshes due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut given_up = Vec::new();
        for t in &mut self.transactions {
            if t.resend_at > now {
                continue;
            }
            if t.tries >= MAX_TRIES {
                given_up.push(t.tid);
                continue;
            }
            t.tries += 1;
            t.rto *= 2;
            t.resend_at = now + t.rto;
            self.out.push_back(t.bytes.clone());
        }
        for tid in given_up {
            let Some(i) = self.transactions.iter().position(|t| t.tid == tid) else {
                continue;
            };
            let t = self.transactions.remove(i);
            self.counters.errors += 1;
            if t.request == Request::Allocate {
                self.failed = Some("no answer to Allocate".into());
            }
        }
        if self.refresh_at.is_some_and(|at| at <= now) {
            self.refresh_at = Some(now + REFRESH_EVERY);
            self.request(now, Request::Refresh(LIFETIME_SECS), 0);
            let bound: Vec<(SocketAddr, u16)> = self
                .channels
                .iter()
                .filter(|c| c.bound)
                .map(|c| (c.peer, c.number))
                .collect();
            for (peer, number) in bound {
                self.request(now, Request::ChannelBind { peer, number }, 0);
            }
        }
    }

    /// A datagram str0m sends from the relayed candidate to `peer`: the ChannelData to send to
    /// the TURN server, or `None` while the channel is being bound (the datagram waits for
    /// it; the bind request is queued in [`Self::poll_transmit`]).
    pub fn wrap(&mut self, now: Instant, peer: SocketAddr, data: &[u8]) -> Option<&[u8]> {
        if self.relayed.is_none() {
            self.counters.dropped += 1;
            return None;
        }
        let Some(channel) = self.channels.iter_mut().find(|c| c.peer == peer) else {
            if self.channels.len() >= MAX_CHANNELS {
                self.counters.dropped += 1;
                return None;
            }
            let number = 0x4000 + self.channels.len() as u16;
            self.channels.push(Channel {
                peer,
                number,
                bound: false,
                queued: vec![data.to_vec()],
            });
            self.request(now, Request::ChannelBind { peer, number }, 0);
            return None;
        };
        if !channel.bound {
            if channel.queued.len() < MAX_QUEUED {
                channel.queued.push(data.to_vec());
            } else {
                self.counters.dropped += 1;
            }
            return None;
        }
        write_channel_data(&mut self.buf, channel.number, data);
        Some(&self.buf)
    }

    /// A datagram from `source`: relayed data, a response, or something else.
    pub fn unwrap<'a>(
        &mut self,
        now: Instant,
        source: SocketAddr,
        bytes: &'a [u8],
    ) -> Incoming<'a> {
        if source != self.server || bytes.len() < 4 {
            return Incoming::Ignored;
        }
        if (0x40..=0x4f).contains(&bytes[0]) {
            let number = u16::from_be_bytes([bytes[0], bytes[1]]);
            let len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
            let Some(data) = bytes.get(4..4 + len) else {
                return Incoming::Ignored;
            };
            return match self.channels.iter().find(|c| c.number == number) {
                Some(c) => Incoming::Media { peer: c.peer, data },
                None => Incoming::Ignored,
            };
        }
        let Some(msg) = Message::parse(bytes) else {
            return Incoming::Ignored;
        };
        match msg.class {
            INDICATION if msg.method == DATA_INDICATION => {
                let peer = msg
                    .attr(XOR_PEER_ADDRESS)
                    .and_then(|v| xor_address(v, &msg.tid));
                match (peer, msg.attr(DATA)) {
                    (Some(peer), Some(data)) => {
                        self.counters.data_indications += 1;
                        Incoming::Media { peer, data }
                    }
                    _ => Incoming::Ignored,
                }
            }
            SUCCESS | ERROR => {
                let Some(i) = self.transactions.iter().position(|t| t.tid == msg.tid) else {
                    return Incoming::Ignored;
                };
                let t = self.transactions.remove(i);
                if msg.method != method_of(t.request) {
                    return Incoming::Ignored;
                }
                if msg.class == SUCCESS {
                    self.on_success(now, t.request, &msg);
                } else {
                    self.on_error(now, t, &msg);
                }
                Incoming::Handled
            }
            _ => Incoming::Ignored,
        }
    }

    /// A Refresh with lifetime 0 that frees the allocation at once (sent once, unanswered):
    /// for the participant's end.
    pub fn release(&mut self) -> Option<Vec<u8>> {
        self.relayed?;
        let tid = self.tid();
        self.encode(Request::Refresh(0), tid)
    }

    fn on_success(&mut self, now: Instant, request: Request, msg: &Message<'_>) {
        match request {
            Request::Allocate => {
                let relayed = msg
                    .attr(XOR_RELAYED_ADDRESS)
                    .and_then(|v| xor_address(v, &msg.tid));
                match relayed {
                    Some(addr) => {
                        self.relayed = Some(addr);
                        self.counters.allocations += 1;
                        self.refresh_at = Some(now + REFRESH_EVERY);
                    }
                    None => self.failed = Some("Allocate success without a relayed address".into()),
                }
            }
            Request::Refresh(_) => self.counters.refreshes += 1,
            Request::ChannelBind { number, .. } => {
                self.counters.channel_binds += 1;
                let Some(channel) = self.channels.iter_mut().find(|c| c.number == number) else {
                    return;
                };
                channel.bound = true;
                for data in std::mem::take(&mut channel.queued) {
                    let mut bytes = Vec::with_capacity(4 + data.len());
                    write_channel_data(&mut bytes, number, &data);
                    self.out.push_back(bytes);
                }
            }
        }
    }

    fn on_error(&mut self, now: Instant, t: Transaction, msg: &Message<'_>) {
        let code = msg.attr(ERROR_CODE).and_then(|v| {
            let class = u16::from(*v.get(2)? & 0x07);
            Some(class * 100 + u16::from(*v.get(3)?))
        });
        let challenge = matches!(code, Some(401 | 438));
        if challenge && t.auth_retries < MAX_AUTH_RETRIES {
            let realm = msg.attr(REALM).and_then(|v| std::str::from_utf8(v).ok());
            let nonce = msg.attr(NONCE).and_then(|v| std::str::from_utf8(v).ok());
            if let (Some(realm), Some(nonce)) = (realm, nonce) {
                if self.realm.as_deref() != Some(realm) {
                    self.key = Some(md5(
                        format!("{}:{realm}:{}", self.username, self.password).as_bytes()
                    ));
                    self.realm = Some(realm.to_string());
                }
                self.nonce = Some(nonce.to_string());
                self.request(now, t.request, t.auth_retries + 1);
                return;
            }
        }
        self.counters.errors += 1;
        let why = format!("{:?} refused: {}", t.request, code.unwrap_or(0));
        tracing::debug!(%why, "TURN");
        match t.request {
            Request::Allocate => self.failed = Some(why),
            Request::ChannelBind { number, .. } => {
                // Forget the channel: the next datagram for the peer binds again.
                if let Some(i) = self.channels.iter().position(|c| c.number == number) {
                    if !self.channels[i].bound {
                        let dropped = self.channels[i].queued.len() as u64;
                        self.counters.dropped += dropped;
                        self.channels.remove(i);
                    }
                }
            }
            Request::Refresh(_) => {}
        }
    }

    fn tid(&mut self) -> [u8; 12] {
        self.next_tid += 1;
        let mut tid = [0u8; 12];
        tid[..4].copy_from_slice(&self.tid_prefix.to_be_bytes());
        tid[4..].copy_from_slice(&self.next_tid.to_be_bytes());
        tid
    }

    fn request(&mut self, now: Instant, request: Request, auth_retries: u32) {
        let tid = self.tid();
        let Some(bytes) = self.encode(request, tid) else {
            return;
        };
        self.out.push_back(bytes.clone());
        self.transactions.push(Transaction {
            tid,
            request,
            bytes,
            resend_at: now + RTO,
            rto: RTO,
            tries: 1,
            auth_retries,
        });
    }

    /// The request's bytes: with USERNAME, REALM, NONCE and MESSAGE-INTEGRITY once the server
    /// has told its realm and nonce (an Allocate before that goes without them).
    fn encode(&self, request: Request, tid: [u8; 12]) -> Option<Vec<u8>> {
        let mut b = Builder::new(method_of(request), REQUEST, tid);
        match request {
            Request::Allocate => {
                b.attr(REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
                b.attr(LIFETIME, &LIFETIME_SECS.to_be_bytes());
            }
            Request::Refresh(secs) => b.attr(LIFETIME, &secs.to_be_bytes()),
            Request::ChannelBind { peer, number } => {
                let [hi, lo] = number.to_be_bytes();
                b.attr(CHANNEL_NUMBER, &[hi, lo, 0, 0]);
                b.attr(XOR_PEER_ADDRESS, &encode_xor_address(peer, &tid));
            }
        }
        let (Some(realm), Some(nonce), Some(key)) = (&self.realm, &self.nonce, &self.key) else {
            // Only the first Allocate may go unauthenticated; anything else waits for it.
            return (request == Request::Allocate).then(|| b.finish());
        };
        b.attr(USERNAME, self.username.as_bytes());
        b.attr(REALM, realm.as_bytes());
        b.attr(NONCE, nonce.as_bytes());
        Some(b.finish_with_integrity(key))
    }
}

fn method_of(request: Request) -> u16 {
    match request {
        Request::Allocate => ALLOCATE,
        Request::Refresh(_) => REFRESH,
        Request::ChannelBind { .. } => CHANNEL_BIND,
    }
}

/// ChannelData over UDP: number, length, data (no padding).
fn write_channel_data(buf: &mut Vec<u8>, number: u16, data: &[u8]) {
    buf.clear();
    buf.extend_from_slice(&number.to_be_bytes());
    buf.extend_from_slice(&(data.len() as u16).to_be_bytes());
    buf.extend_from_slice(data);
}

/// STUN message type from method and class (RFC 8489 §5).
fn message_type(method: u16, class: u16) -> u16 {
    (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((class & 1) << 4)
        | ((class & 2) << 7)
}

struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    fn new(method: u16, class: u16, tid: [u8; 12]) -> Builder {
        let mut buf = Vec::with_capacity(160);
        buf.extend_from_slice(&message_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC.to_be_bytes());
        buf.extend_from_slice(&tid);
        Builder { buf }
    }

    fn attr(&mut self, kind: u16, value: &[u8]) {
        self.buf.extend_from_slice(&kind.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn set_length(&mut self, body: usize) {
        self.buf[2..4].copy_from_slice(&(body as u16).to_be_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        self.set_length(self.buf.len() - 20);
        self.buf
    }

    /// MESSAGE-INTEGRITY last: HMAC-SHA1 over the message so far, its length already
    /// counting the 24 bytes of the attribute (RFC 8489 §14.5).
    fn finish_with_integrity(mut self, key: &[u8; 16]) -> Vec<u8> {
        self.set_length(self.buf.len() - 20 + 24);
        let mac = str0m::crypto::from_feature_flags()
            .sha1_hmac_provider
            .sha1_hmac(key, &[&self.buf]);
        self.attr(MESSAGE_INTEGRITY, &mac);
        self.buf
    }
}

/// A parsed STUN message (attributes by reference into the datagram).
struct Message<'a> {
    method: u16,
    class: u16,
    tid: [u8; 12],
    attrs: Vec<(u16, &'a [u8])>,
}

impl<'a> Message<'a> {
    fn parse(bytes: &'a [u8]) -> Option<Message<'a>> {
        if bytes.len() < 20 || bytes[0] & 0xC0 != 0 {
            return None;
        }
        let kind = u16::from_be_bytes([bytes[0], bytes[1]]);
        let len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        if u32::from_be_bytes(bytes[4..8].try_into().ok()?) != MAGIC || 20 + len > bytes.len() {
            return None;
        }
        let method = (kind & 0x000F) | ((kind >> 1) & 0x0070) | ((kind >> 2) & 0x0F80);
        let class = ((kind >> 4) & 1) | ((kind >> 7) & 2);
        let tid: [u8; 12] = bytes[8..20].try_into().ok()?;
        let mut attrs = Vec::new();
        let mut at = 20;
        while at + 4 <= 20 + len {
            let t = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
            let l = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
            let value = bytes.get(at + 4..at + 4 + l)?;
            attrs.push((t, value));
            at += 4 + l.next_multiple_of(4);
        }
        Some(Message {
            method,
            class,
            tid,
            attrs,
        })
    }

    fn attr(&self, kind: u16) -> Option<&'a [u8]> {
        self.attrs.iter().find(|(t, _)| *t == kind).map(|(_, v)| *v)
    }
}

fn xor_address(value: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]) ^ (MAGIC >> 16) as u16;
    let ip = match value.get(1)? {
        1 => {
            let raw = u32::from_be_bytes(value.get(4..8)?.try_into().ok()?);
            IpAddr::V4(Ipv4Addr::from(raw ^ MAGIC))
        }
        2 => {
            let mut raw: [u8; 16] = value.get(4..20)?.try_into().ok()?;
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&MAGIC.to_be_bytes());
            mask[4..].copy_from_slice(tid);
            for (r, m) in raw.iter_mut().zip(mask) {
                *r ^= m;
            }
            IpAddr::V6(Ipv6Addr::from(raw))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn encode_xor_address(addr: SocketAddr, tid: &[u8; 12]) -> Vec<u8> {
    let port = addr.port() ^ (MAGIC >> 16) as u16;
    let mut out = vec![0];
    match addr.ip() {
        IpAddr::V4(v4) => {
            out.push(1);
            out.extend_from_slice(&port.to_be_bytes());
            out.extend_from_slice(&(u32::from(v4) ^ MAGIC).to_be_bytes());
        }
        IpAddr::V6(v6) => {
            out.push(2);
            out.extend_from_slice(&port.to_be_bytes());
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&MAGIC.to_be_bytes());
            mask[4..].copy_from_slice(tid);
            out.extend(v6.octets().iter().zip(mask).map(|(a, m)| a ^ m));
        }
    }
    out
}

/// The TURN server of `urls` reached over UDP: the first `turn:HOST:PORT?transport=udp` (or
/// `turn:HOST:PORT` without a transport, which means UDP) whose host is an IP address.
pub fn udp_server(urls: &[String]) -> Option<SocketAddr> {
    urls.iter().find_map(|url| {
        let rest = url.strip_prefix("turn:")?;
        let (host_port, query) = rest.split_once('?').unwrap_or((rest, ""));
        let udp = query.is_empty() || query.split('&').any(|q| q == "transport=udp");
        if !udp {
            return None;
        }
        host_port.parse().ok()
    })
}

/// MD5 (RFC 1321), for the long-term credential key MD5(username:realm:password).
fn md5(input: &[u8]) -> [u8; 16] {
    use md5::{Digest as _, Md5};
    Md5::digest(input).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn md5_matches_rfc_1321() {
        assert_eq!(hex(&md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hex(&md5(b"abc")), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            hex(&md5(
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
            )),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
    }

    #[test]
    fn message_types_and_addresses_round_trip() {
        // Allocate request 0x0003, ChannelBind success 0x0109, Data indication 0x0017.
        assert_eq!(message_type(ALLOCATE, REQUEST), 0x0003);
        assert_eq!(message_type(CHANNEL_BIND, SUCCESS), 0x0109);
        assert_eq!(message_type(DATA_INDICATION, INDICATION), 0x0017);
        assert_eq!(message_type(ALLOCATE, ERROR), 0x0113);
        let tid = [7u8; 12];
        for addr in ["127.0.0.1:3478", "[::1]:5000"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(
                xor_address(&encode_xor_address(addr, &tid), &tid),
                Some(addr)
            );
        }
    }

    #[test]
    fn only_udp_turn_urls_are_used() {
        let urls = vec![
            "turn:127.0.0.1:3479?transport=tcp".to_string(),
            "turns:turn.example:443?transport=tcp".to_string(),
            "turn:127.0.0.1:3478?transport=udp".to_string(),
        ];
        assert_eq!(udp_server(&urls), Some("127.0.0.1:3478".parse().unwrap()));
        assert_eq!(udp_server(&urls[..2]), None);
    }

    /// A response from the server to the client's last request.
    fn respond(client: &TurnClient, class: u16, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let t = client.transactions.last().expect("a request is open");
        let mut b = Builder::new(method_of(t.request), class, t.tid);
        for (kind, value) in attrs {
            b.attr(*kind, value);
        }
        b.finish()
    }

    #[test]
    fn allocate_challenge_channel_bind_and_channel_data() {
        let server: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let sfu: SocketAddr = "127.0.0.1:7882".parse().unwrap();
        let relayed: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let now = Instant::now();
        let mut c = TurnClient::new(server, "123:abc", "secret", 9);
        c.allocate(now);
        let first = c.poll_transmit().unwrap();
        assert!(Message::parse(&first)
            .unwrap()
            .attr(MESSAGE_INTEGRITY)
            .is_none());
        // 401 with realm and nonce: the Allocate goes again, signed.
        let mut code = vec![0, 0, 4, 1];
        code.extend_from_slice(b"Unauthorized");
        let challenge = respond(
            &c,
            ERROR,
            &[
                (ERROR_CODE, code),
                (REALM, b"huizhen".to_vec()),
                (NONCE, b"n1".to_vec()),
            ],
        );
        assert_eq!(c.unwrap(now, server, &challenge), Incoming::Handled);
        let signed = c.poll_transmit().unwrap();
        let msg = Message::parse(&signed).unwrap();
        assert_eq!(msg.attr(USERNAME), Some(&b"123:abc"[..]));
        let mac = msg.attr(MESSAGE_INTEGRITY).unwrap();
        let key = md5(b"123:abc:huizhen:secret");
        let mut covered = signed[..signed.len() - 24].to_vec();
        covered[2..4].copy_from_slice(&((signed.len() - 20) as u16).to_be_bytes());
        let want = str0m::crypto::from_feature_flags()
            .sha1_hmac_provider
            .sha1_hmac(&key, &[&covered]);
        assert_eq!(mac, &want[..]);
        // Success: the relayed address.
        let tid = c.transactions.last().unwrap().tid;
        let ok = respond(
            &c,
            SUCCESS,
            &[(XOR_RELAYED_ADDRESS, encode_xor_address(relayed, &tid))],
        );
        assert_eq!(c.unwrap(now, server, &ok), Incoming::Handled);
        assert_eq!(c.relayed(), Some(relayed));
        // The first datagram to the SFU waits for its channel.
        assert!(c.wrap(now, sfu, b"stun").is_none());
        let bind = c.poll_transmit().unwrap();
        assert_eq!(Message::parse(&bind).unwrap().method, CHANNEL_BIND);
        let ok = respond(&c, SUCCESS, &[]);
        assert_eq!(c.unwrap(now, server, &ok), Incoming::Handled);
        assert_eq!(c.poll_transmit().unwrap(), b"\x40\x00\x00\x04stun");
        assert_eq!(c.wrap(now, sfu, b"dtls").unwrap(), b"\x40\x00\x00\x04dtls");
        // ChannelData from the server is the SFU's datagram.
        assert_eq!(
            c.unwrap(now, server, b"\x40\x00\x00\x03rtp"),
            Incoming::Media {
                peer: sfu,
                data: b"rtp"
            }
        );
        assert_eq!(
            c.unwrap(now, sfu, b"\x40\x00\x00\x03rtp"),
            Incoming::Ignored
        );
        assert_eq!(c.counters.allocations, 1);
        assert_eq!(c.counters.channel_binds, 1);
        assert_eq!(c.counters.errors, 0);
        // The refresh timer renews the allocation and the channel.
        let at = c.poll_timeout().unwrap();
        c.handle_timeout(at);
        let methods: Vec<u16> = std::iter::from_fn(|| c.poll_transmit())
            .map(|b| Message::parse(&b).unwrap().method)
            .collect();
        assert_eq!(methods, vec![REFRESH, CHANNEL_BIND]);
    }
}
