//! Demultiplexing one media port to many participants.
//!
//! All participants share one UDP port (and one ICE-TCP port), so each incoming datagram must
//! be handed to the right participant. STUN binding requests name the server's ICE ufrag in
//! their USERNAME attribute (`server_ufrag:client_ufrag`), which identifies the participant even
//! from an address never seen before; every other packet (DTLS, SRTP, SRTCP) is matched by its
//! source transport address, learnt from that participant's STUN checks. Both are hash-map
//! lookups, so the cost does not grow with the number of participants.

use std::collections::HashMap;
use std::net::SocketAddr;

use str0m::net::Protocol;

/// Index of who owns which ICE ufrag and which remote transport address.
#[derive(Debug)]
pub struct Demux<Id: Copy + Eq> {
    by_ufrag: HashMap<String, Id>,
    by_source: HashMap<(Protocol, SocketAddr), Id>,
}

/// RFC 7983 classification of the first byte of a datagram on a WebRTC port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketClass {
    /// STUN (ICE checks).
    Stun,
    /// DTLS records.
    Dtls,
    /// SRTP or SRTCP.
    Rtp,
    /// Anything else: dropped.
    Other,
}

/// Classify a datagram by its first byte (RFC 7983, section 7).
pub fn classify(datagram: &[u8]) -> PacketClass {
    match datagram.first() {
        Some(0..=3) => PacketClass::Stun,
        Some(20..=63) => PacketClass::Dtls,
        Some(128..=191) => PacketClass::Rtp,
        _ => PacketClass::Other,
    }
}

const STUN_MAGIC_COOKIE: u32 = 0x2112_A442;
const STUN_ATTR_USERNAME: u16 = 0x0006;
const STUN_HEADER_LEN: usize = 20;

/// The server-side ufrag from a STUN message's USERNAME attribute, if it has one.
///
/// Only the framing is checked here; message integrity is verified by the participant's ICE
/// agent after the hand-over.
pub fn stun_local_ufrag(datagram: &[u8]) -> Option<&str> {
    if datagram.len() < STUN_HEADER_LEN || classify(datagram) != PacketClass::Stun {
        return None;
    }
    let cookie = u32::from_be_bytes(datagram[4..8].try_into().ok()?);
    if cookie != STUN_MAGIC_COOKIE {
        return None;
    }
    let body_len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let body = datagram.get(STUN_HEADER_LEN..STUN_HEADER_LEN + body_len)?;
    let mut rest = body;
    while rest.len() >= 4 {
        let attr_type = u16::from_be_bytes([rest[0], rest[1]]);
        let attr_len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + attr_len)?;
        if attr_type == STUN_ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        let padded = (attr_len + 3) & !3;
        rest = rest.get(4 + padded..)?;
    }
    None
}

impl<Id: Copy + Eq> Default for Demux<Id> {
    fn default() -> Self {
        Demux {
            by_ufrag: HashMap::new(),
            by_source: HashMap::new(),
        }
    }
}

impl<Id: Copy + Eq> Demux<Id> {
    /// Register a participant's server-side ufrag.
    pub fn insert_ufrag(&mut self, ufrag: String, id: Id) {
        self.by_ufrag.insert(ufrag, id);
    }

    /// Remember that `source` belongs to `id`. Returns true if the mapping is new.
    pub fn learn_source(&mut self, proto: Protocol, source: SocketAddr, id: Id) -> bool {
        self.by_source.insert((proto, source), id) != Some(id)
    }

    /// Find the owner of a datagram.
    pub fn lookup(&self, proto: Protocol, source: SocketAddr, datagram: &[u8]) -> Option<Id> {
        if let Some(ufrag) = stun_local_ufrag(datagram) {
            if let Some(id) = self.by_ufrag.get(ufrag) {
                return Some(*id);
            }
        }
        self.by_source.get(&(proto, source)).copied()
    }

    /// Forget everything about `id`.
    pub fn remove(&mut self, id: Id, ufrag: &str) {
        self.by_ufrag.remove(ufrag);
        self.by_source.retain(|_, owner| *owner != id);
    }

    /// Forget one ufrag (a participant's credentials before its ICE restart).
    pub fn remove_ufrag(&mut self, ufrag: &str) {
        self.by_ufrag.remove(ufrag);
    }

    /// Forget a transport address (its ICE-TCP connection closed).
    pub fn forget_source(&mut self, proto: Protocol, source: SocketAddr) {
        self.by_source.remove(&(proto, source));
    }

    /// Number of known (ufrag, source) entries; used by leak tests.
    pub fn len(&self) -> (usize, usize) {
        (self.by_ufrag.len(), self.by_source.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun_with_username(username: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        attr.extend_from_slice(&STUN_ATTR_USERNAME.to_be_bytes());
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        msg.extend_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&attr);
        msg
    }

    #[test]
    fn finds_owner_by_ufrag_then_by_source() {
        let mut d: Demux<u32> = Demux::default();
        d.insert_ufrag("srv1".into(), 1);
        d.insert_ufrag("srv2".into(), 2);
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let stun = stun_with_username("srv2:cli");
        assert_eq!(stun_local_ufrag(&stun), Some("srv2"));
        assert_eq!(d.lookup(Protocol::Udp, a, &stun), Some(2));
        assert_eq!(d.lookup(Protocol::Udp, a, &[0x80, 0, 0, 0]), None);
        assert!(d.learn_source(Protocol::Udp, a, 2));
        assert_eq!(d.lookup(Protocol::Udp, a, &[0x80, 0, 0, 0]), Some(2));
        assert_eq!(d.lookup(Protocol::Tcp, a, &[0x80, 0, 0, 0]), None);
        d.remove(2, "srv2");
        assert_eq!(d.lookup(Protocol::Udp, a, &stun), None);
        assert_eq!(d.len(), (1, 0));
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let _ = stun_local_ufrag(&junk);
            let mut truncated = stun_with_username("abc:def");
            truncated.truncate(len.min(truncated.len()));
            let _ = stun_local_ufrag(&truncated);
        }
        assert_eq!(classify(&[]), PacketClass::Other);
        assert_eq!(classify(&[200]), PacketClass::Other);
        assert_eq!(classify(&[22]), PacketClass::Dtls);
    }
}
