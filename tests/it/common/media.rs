//! Synthetic media payloads that let a receiver prove where a packet came from and that it
//! arrived intact.
//!
//! Every RTP payload the test clients send is
//!
//! ```text
//! [codec prefix] "HZ" publisher:u8 kind:u8 seq:u32 body_len:u16 body[body_len] fnv1a32:u32
//! ```
//!
//! * codec prefix: nothing for Opus; for VP8 a one-byte payload descriptor, and on the first
//!   packet of a frame (descriptor `0x10`, start of partition) a key-frame header: 3-byte frame
//!   tag with the key-frame bit clear, start code `9d 01 2a`, 320x240. Other packets of the
//!   frame have descriptor `0x00`. Every frame is a "key frame", so an SFU that waits for one
//!   before forwarding to a new subscriber starts at once.
//! * `seq` counts the publisher's packets of that kind from 0, so "received >= N distinct seq"
//!   is a packet count that duplicates (retransmissions) cannot inflate.
//! * `body` is deterministic in (publisher, kind, seq), and the checksum covers the whole
//!   payload before it, codec prefix included.

/// Media kind as carried in the marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Opus.
    Audio,
    /// VP8.
    Video,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Audio => 0,
            Kind::Video => 1,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        match code {
            0 => Some(Kind::Audio),
            1 => Some(Kind::Video),
            _ => None,
        }
    }

    /// `"audio"` / `"video"`, as webrtc-rs and the signaling protocol spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Audio => "audio",
            Kind::Video => "video",
        }
    }

    /// From webrtc-rs' / the protocol's spelling.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "audio" => Some(Kind::Audio),
            "video" => Some(Kind::Video),
            _ => None,
        }
    }
}

const MAGIC: &[u8; 2] = b"HZ";

/// VP8 payload descriptor + key-frame header for the first packet of a frame.
pub const VP8_KEYFRAME_PREFIX: [u8; 11] = [
    0x10, // payload descriptor: S=1, PID=0
    0x10, 0x02, 0x00, // frame tag: key frame (bit 0 clear), version 0, show_frame, size
    0x9d, 0x01, 0x2a, // key-frame start code
    0x40, 0x01, // width 320
    0xf0, 0x00, // height 240
];

/// VP8 payload descriptor for a continuation packet of a frame.
pub const VP8_CONTINUATION_PREFIX: [u8; 1] = [0x00];

/// 32-bit FNV-1a.
pub fn fnv1a32(data: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for &b in data {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

fn body_byte(publisher: u8, kind: Kind, seq: u32, i: usize) -> u8 {
    let mut x = (u64::from(seq) << 16) ^ (u64::from(publisher) << 8) ^ u64::from(kind.code());
    x = x.wrapping_add(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8
}

/// Body length for a packet: varies with seq so packets differ in size.
pub fn body_len(kind: Kind, seq: u32) -> usize {
    match kind {
        Kind::Audio => 60 + (seq as usize * 37) % 100,
        Kind::Video => 700 + (seq as usize * 131) % 400,
    }
}

/// Build one payload. `first_of_frame` only matters for video.
pub fn build_payload(publisher: u8, kind: Kind, seq: u32, first_of_frame: bool) -> Vec<u8> {
    let len = body_len(kind, seq);
    let mut p = Vec::with_capacity(len + 32);
    if kind == Kind::Video {
        if first_of_frame {
            p.extend_from_slice(&VP8_KEYFRAME_PREFIX);
        } else {
            p.extend_from_slice(&VP8_CONTINUATION_PREFIX);
        }
    }
    p.extend_from_slice(MAGIC);
    p.push(publisher);
    p.push(kind.code());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p.extend((0..len).map(|i| body_byte(publisher, kind, seq, i)));
    let sum = fnv1a32(&p);
    p.extend_from_slice(&sum.to_be_bytes());
    p
}

/// What a receiver learnt from a valid payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// Publisher index (the test's client index).
    pub publisher: u8,
    /// Kind the publisher sent it as.
    pub kind: Kind,
    /// Per-publisher, per-kind packet counter.
    pub seq: u32,
}

/// Check a received payload. `expected_kind` is the kind of the track it arrived on.
pub fn parse_payload(payload: &[u8], expected_kind: Kind) -> Result<Marker, String> {
    if payload.len() < 4 {
        return Err(format!("payload of {} bytes is too short", payload.len()));
    }
    let (data, sum) = payload.split_at(payload.len() - 4);
    let sum = u32::from_be_bytes(sum.try_into().expect("4 bytes"));
    if fnv1a32(data) != sum {
        return Err(format!("checksum mismatch over {} bytes", payload.len()));
    }
    let offset = match expected_kind {
        Kind::Audio => 0,
        Kind::Video => match data.first() {
            Some(0x10) => {
                if data.len() < VP8_KEYFRAME_PREFIX.len() || data[..11] != VP8_KEYFRAME_PREFIX {
                    return Err("VP8 start-of-frame packet without the key-frame header".into());
                }
                VP8_KEYFRAME_PREFIX.len()
            }
            Some(0x00) => 1,
            other => return Err(format!("unexpected VP8 payload descriptor {other:?}")),
        },
    };
    let m = &data[offset..];
    if m.len() < 10 || &m[..2] != MAGIC {
        return Err("marker magic missing".into());
    }
    let publisher = m[2];
    let kind = Kind::from_code(m[3]).ok_or_else(|| format!("bad kind code {}", m[3]))?;
    if kind != expected_kind {
        return Err(format!("{kind:?} payload on a {expected_kind:?} track"));
    }
    let seq = u32::from_be_bytes(m[4..8].try_into().expect("4 bytes"));
    let len = u16::from_be_bytes(m[8..10].try_into().expect("2 bytes")) as usize;
    let body = &m[10..];
    if body.len() != len || len != body_len(kind, seq) {
        return Err(format!("body length {} (header says {len})", body.len()));
    }
    if body
        .iter()
        .enumerate()
        .any(|(i, &b)| b != body_byte(publisher, kind, seq, i))
    {
        return Err("body content differs from what the publisher generates".into());
    }
    Ok(Marker {
        publisher,
        kind,
        seq,
    })
}
