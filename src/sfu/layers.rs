//! The layers of a published video: which simulcast stream a packet belongs to, how much each
//! layer carries, whether it is being sent, and how large its pictures are.
//!
//! A publisher sends up to three simulcast layers of one track, each on its own SSRC and
//! identified by a rid (RFC 8851). str0m maps each SSRC to its rid from the header extension,
//! which the sender stops attaching once it gets receiver reports, so the core resolves the
//! layer once per SSRC and caches it. Which rid is the low layer is a naming convention:
//! `q`/`h`/`f` (quarter, half, full) and `l`/`m`/`h` are understood; other names are taken
//! in the order the publisher's SDP lists them, lowest first (the order browsers use when an
//! application gives encodings from low to high).
//!
//! The allocator needs each layer's bitrate: measured here from the bytes received, per
//! [`LayerMeter::tick`], smoothed so a keyframe does not look like a new bitrate.

use std::time::{Duration, Instant};

use super::allocation::MAX_LAYERS;
use super::keyframe::KeyframeThrottle;
use super::temporal::TemporalMeter;

/// A layer that sent nothing for this long is not offered to subscribers.
pub const LAYER_IDLE: Duration = Duration::from_millis(1500);

/// Bitrates assumed for a layer before it has been measured (bit/s, lowest first): the
/// browser client's encodings (see `static/call.js`).
pub const DEFAULT_LAYER_BITRATES: [u64; MAX_LAYERS] = [100_000, 500_000, 1_700_000];

/// Weight of the newest measurement in the smoothed bitrate (per tick of about 250 ms: a
/// change shows fully within about a second and a half).
const SMOOTHING: f64 = 0.3;

/// The layer index of `rid` among the rids the publisher declared (`declared`, SDP order).
pub fn layer_of(rid: &str, declared: &[&str]) -> usize {
    let named = |names: [&str; 3]| -> Option<usize> {
        if declared.iter().all(|r| names.contains(r)) {
            names.iter().position(|n| *n == rid)
        } else {
            None
        }
    };
    named(["q", "h", "f"])
        .or_else(|| named(["l", "m", "h"]))
        .or_else(|| declared.iter().position(|r| *r == rid))
        .unwrap_or(0)
        .min(MAX_LAYERS - 1)
}

/// Bytes a forwarded packet costs on the wire besides its payload: IPv4 20, UDP 8, RTP 12,
/// header extensions ~12 (transport-wide sequence number, audio level, ...), SRTP tag 10.
/// An Opus stream of 50 packets/s pays ~25 kbit/s on top of its ~32 kbit/s of payload.
pub const WIRE_OVERHEAD: usize = 62;

/// Bits/s of headers for `pps` packets per second.
pub fn header_rate(pps: f64) -> u64 {
    (pps * (WIRE_OVERHEAD * 8) as f64) as u64
}

/// Bytes and liveness of one layer.
#[derive(Debug, Default, Clone)]
pub struct LayerMeter {
    bytes: u64,
    bitrate: u64,
    last_tick: Option<Instant>,
    /// When a packet of this layer last arrived.
    pub last_packet: Option<Instant>,
    /// Height of the last keyframe, where the codec tells it (VP8).
    pub height: Option<u32>,
    /// Throttles keyframe requests to this layer.
    pub keyframe: KeyframeThrottle,
    /// Pictures and bytes per temporal layer.
    pub temporal: TemporalMeter,
}

impl LayerMeter {
    /// Count one received packet: its payload and its headers on the wire
    /// ([`WIRE_OVERHEAD`]). Allocation works in wire bits: at the rates of a weak link the
    /// headers of small audio packets are a third of the link. str0m's estimator counts
    /// payloads only, so the core adds the headers of what it sends to the estimate before
    /// comparing (see `Participant::wire_estimate`).
    pub fn on_packet(&mut self, now: Instant, payload_len: usize) {
        self.bytes += (payload_len + WIRE_OVERHEAD) as u64;
        self.last_packet = Some(now);
    }

    /// Fold the bytes since the last tick into the smoothed bitrate.
    pub fn tick(&mut self, now: Instant) {
        self.temporal.tick(now);
        let Some(last) = self.last_tick.replace(now) else {
            self.bytes = 0;
            return;
        };
        let dt = now.saturating_duration_since(last).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        let instant = (std::mem::take(&mut self.bytes) * 8) as f64 / dt;
        self.bitrate = if self.bitrate == 0 {
            instant as u64
        } else {
            (SMOOTHING * instant + (1.0 - SMOOTHING) * self.bitrate as f64) as u64
        };
    }

    /// Being sent now.
    pub fn active(&self, now: Instant) -> bool {
        self.last_packet
            .is_some_and(|t| now.saturating_duration_since(t) < LAYER_IDLE)
    }

    /// Smoothed bitrate on the wire (bit/s, headers included); 0 before the first full tick.
    pub fn bitrate(&self) -> u64 {
        self.bitrate
    }
}

/// Length of the VP8 payload descriptor at the start of `payload` (RFC 7741 section 4.2).
pub fn vp8_descriptor_len(payload: &[u8]) -> Option<usize> {
    let b0 = *payload.first()?;
    if b0 & 0x80 == 0 {
        return Some(1);
    }
    let x = *payload.get(1)?;
    let mut len = 2;
    if x & 0x80 != 0 {
        len += if payload.get(len)? & 0x80 != 0 { 2 } else { 1 };
    }
    if x & 0x40 != 0 {
        len += 1;
    }
    if x & 0x30 != 0 {
        len += 1;
    }
    (len <= payload.len()).then_some(len)
}

/// The height of a VP8 keyframe, from the frame header that follows the payload descriptor
/// (`payload_offset` bytes into the RTP payload). RFC 6386 section 9.1: a 3-byte frame tag,
/// the start code 9d 01 2a, then 14-bit width and height.
pub fn vp8_keyframe_height(payload: &[u8], payload_offset: usize) -> Option<u32> {
    let frame = payload.get(payload_offset..)?;
    if frame.len() < 10 || frame[0] & 0x01 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let height = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
    (height > 0).then_some(u32::from(height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rids_map_to_layers_by_convention_or_by_sdp_order() {
        assert_eq!(layer_of("q", &["q", "h", "f"]), 0);
        assert_eq!(layer_of("h", &["q", "h", "f"]), 1);
        assert_eq!(layer_of("f", &["q", "h", "f"]), 2);
        assert_eq!(layer_of("h", &["l", "m", "h"]), 2, "h is high among l/m/h");
        assert_eq!(layer_of("m", &["l", "m", "h"]), 1);
        assert_eq!(layer_of("h", &["q", "h"]), 1, "two layers of q/h/f");
        assert_eq!(layer_of("lo", &["lo", "mid", "hi"]), 0);
        assert_eq!(layer_of("hi", &["lo", "mid", "hi"]), 2);
        assert_eq!(
            layer_of("x", &["a", "b", "c", "d", "x"]),
            2,
            "capped at the top layer"
        );
        assert_eq!(layer_of("zzz", &["a"]), 0, "unknown rid: lowest");
    }

    #[test]
    fn the_meter_smooths_bursts_and_notices_silence() {
        let t0 = Instant::now();
        let mut m = LayerMeter::default();
        m.tick(t0);
        let mut now = t0;
        for _ in 0..20 {
            // 250 ms of 500 kbit/s.
            m.on_packet(now, 500_000 / 8 / 4 - WIRE_OVERHEAD);
            now += Duration::from_millis(250);
            m.tick(now);
        }
        assert!(
            (480_000..=520_000).contains(&m.bitrate()),
            "{}",
            m.bitrate()
        );
        // One keyframe of 4x the usual bytes moves the estimate by well under 2x.
        m.on_packet(now, 4 * 500_000 / 8 / 4 - WIRE_OVERHEAD);
        now += Duration::from_millis(250);
        m.tick(now);
        assert!(m.bitrate() < 1_000_000, "{}", m.bitrate());
        assert!(m.active(now));
        assert!(!m.active(now + LAYER_IDLE));
    }

    #[test]
    fn vp8_keyframe_height_is_read_from_the_frame_header() {
        // Descriptor: X=1, S=1; I=1 with a 15-bit picture id.
        let mut p = vec![0x90, 0x80, 0x80, 0x01];
        // Frame tag (keyframe: bit 0 clear), start code, width 640, height 480.
        p.extend_from_slice(&[0x50, 0x2a, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01]);
        assert_eq!(vp8_descriptor_len(&p), Some(4));
        assert_eq!(vp8_descriptor_len(&[0x10]), Some(1));
        assert_eq!(
            vp8_descriptor_len(&[0x90, 0xf0, 0x01, 0x02, 0x03]),
            Some(5),
            "7-bit id, L, T/K"
        );
        assert_eq!(vp8_descriptor_len(&[0x90, 0x80]), None, "truncated");
        assert_eq!(vp8_keyframe_height(&p, 4), Some(480));
        let mut inter = p.clone();
        inter[4] |= 1;
        assert_eq!(vp8_keyframe_height(&inter, 4), None);
        assert_eq!(vp8_keyframe_height(&p[..8], 4), None, "truncated");
        assert_eq!(vp8_keyframe_height(&p, 40), None);
    }
}
