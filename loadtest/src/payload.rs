//! The synthetic RTP payloads: what a receiver needs to measure loss, reordering, jitter and
//! delay, inside a payload an SFU forwards like real media.
//!
//! Video payloads begin with a VP8 payload descriptor and, on the first packet of a keyframe,
//! a VP8 keyframe header (start code and the layer's size: 640x360 for one layer; 320x180,
//! 640x360 and 1280x720 for the simulcast layers `q`, `h`, `f`), so an SFU that looks for
//! keyframes finds them and can read their height. Audio payloads are opaque like Opus. After that prefix comes the probe:
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | magic `HZLT` |
//! | 4 | publisher index (the generator's numbering), big endian |
//! | 1 | kind: 0 audio, 1 video |
//! | 1 | simulcast layer: 0 `q` (or the only layer), 1 `h`, 2 `f` |
//! | 4 | sequence number of this stream (of this layer), big endian (the generator's, not RTP's) |
//! | 8 | send time in microseconds since the run's epoch, big endian |
//!
//! The rest is filler up to the packet's size.

use thiserror::Error;

const MAGIC: &[u8; 4] = b"HZLT";
const PROBE_LEN: usize = 4 + 4 + 1 + 1 + 4 + 8;
/// VP8 payload descriptor: X=0, N=0, S=1 (start of partition), PID 0.
const VP8_DESCRIPTOR_START: u8 = 0x10;
/// VP8 payload descriptor of a continuation packet.
const VP8_DESCRIPTOR_CONT: u8 = 0x00;
/// Bytes of the VP8 keyframe header: 3-byte frame tag, start code, width, height.
const VP8_KEYFRAME_HEADER: usize = 10;
/// Bytes of the VP8 interframe header (frame tag only).
const VP8_INTERFRAME_HEADER: usize = 3;

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Opus-like audio.
    Audio,
    /// VP8-like video.
    Video,
}

/// What a receiver reads from a synthetic payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// The publisher's index in the run.
    pub publisher: u32,
    /// Audio or video.
    pub kind: Kind,
    /// The simulcast layer (index in the publisher's `q`, `h`, `f`; 0 without simulcast).
    pub layer: u8,
    /// Sequence number within the publisher's stream of this kind and layer.
    pub seq: u32,
    /// Send time, microseconds since the run's epoch.
    pub sent_us: u64,
}

/// Where a video packet sits in its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramePart {
    /// First packet of a keyframe.
    KeyframeStart,
    /// First packet of an interframe.
    InterframeStart,
    /// A later packet of a frame.
    Continuation,
}

/// A payload that is not one of ours.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PayloadError {
    /// Too short or without the magic.
    #[error("not a load-test payload")]
    NotOurs,
}

/// Writes an audio payload of `size` bytes (at least the probe's length).
pub fn audio(probe: &Probe, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size.max(PROBE_LEN));
    write_probe(&mut out, probe);
    out.resize(size.max(PROBE_LEN), 0xA5);
    out
}

/// Writes a VP8-like video payload of `size` bytes; a keyframe says it is `height` pixels
/// high (and 16:9).
pub fn video(probe: &Probe, part: FramePart, size: usize, height: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(size.max(PROBE_LEN + 1 + VP8_KEYFRAME_HEADER));
    match part {
        FramePart::KeyframeStart => {
            out.push(VP8_DESCRIPTOR_START);
            // Frame tag: bit 0 = 0 (keyframe), version 0, show_frame 1, first partition size.
            out.extend_from_slice(&[0x10, 0x02, 0x00]);
            out.extend_from_slice(&[0x9d, 0x01, 0x2a]);
            out.extend_from_slice(&(height / 9 * 16).to_le_bytes());
            out.extend_from_slice(&height.to_le_bytes());
        }
        FramePart::InterframeStart => {
            out.push(VP8_DESCRIPTOR_START);
            // Frame tag: bit 0 = 1 (interframe), show_frame 1.
            out.extend_from_slice(&[0x11, 0x02, 0x00]);
        }
        FramePart::Continuation => out.push(VP8_DESCRIPTOR_CONT),
    }
    write_probe(&mut out, probe);
    let min = out.len();
    out.resize(size.max(min), 0x5A);
    out
}

fn write_probe(out: &mut Vec<u8>, probe: &Probe) {
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&probe.publisher.to_be_bytes());
    out.push(match probe.kind {
        Kind::Audio => 0,
        Kind::Video => 1,
    });
    out.push(probe.layer);
    out.extend_from_slice(&probe.seq.to_be_bytes());
    out.extend_from_slice(&probe.sent_us.to_be_bytes());
}

/// Reads the probe of a received payload of either kind.
pub fn read(payload: &[u8]) -> Result<Probe, PayloadError> {
    // Audio: the probe is first. Video: after the descriptor and, on frame starts, the header.
    let start = if payload.starts_with(MAGIC) {
        0
    } else {
        match payload.first() {
            Some(&VP8_DESCRIPTOR_START) => {
                let keyframe = payload.get(1).is_some_and(|tag| tag & 1 == 0);
                1 + if keyframe {
                    VP8_KEYFRAME_HEADER
                } else {
                    VP8_INTERFRAME_HEADER
                }
            }
            Some(&VP8_DESCRIPTOR_CONT) => 1,
            _ => return Err(PayloadError::NotOurs),
        }
    };
    let p = payload
        .get(start..start + PROBE_LEN)
        .ok_or(PayloadError::NotOurs)?;
    if &p[..4] != MAGIC {
        return Err(PayloadError::NotOurs);
    }
    let kind = match p[8] {
        0 => Kind::Audio,
        1 => Kind::Video,
        _ => return Err(PayloadError::NotOurs),
    };
    Ok(Probe {
        publisher: u32::from_be_bytes(p[4..8].try_into().expect("4 bytes")),
        kind,
        layer: p[9],
        seq: u32::from_be_bytes(p[10..14].try_into().expect("4 bytes")),
        sent_us: u64::from_be_bytes(p[14..22].try_into().expect("8 bytes")),
    })
}

/// Whether a video payload starts a keyframe.
pub fn is_keyframe_start(payload: &[u8]) -> bool {
    payload.first() == Some(&VP8_DESCRIPTOR_START) && payload.get(1).is_some_and(|t| t & 1 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(kind: Kind) -> Probe {
        Probe {
            publisher: 7,
            kind,
            layer: 2,
            seq: 123_456,
            sent_us: 9_876_543_210,
        }
    }

    #[test]
    fn audio_round_trips_at_its_size() {
        let p = probe(Kind::Audio);
        let bytes = audio(&p, 120);
        assert_eq!(bytes.len(), 120);
        assert_eq!(read(&bytes), Ok(p));
    }

    #[test]
    fn every_video_part_round_trips_and_keyframes_are_recognisable() {
        let p = probe(Kind::Video);
        for (part, key) in [
            (FramePart::KeyframeStart, true),
            (FramePart::InterframeStart, false),
            (FramePart::Continuation, false),
        ] {
            let bytes = video(&p, part, 1100, 360);
            assert_eq!(bytes.len(), 1100);
            assert_eq!(read(&bytes), Ok(p), "{part:?}");
            assert_eq!(is_keyframe_start(&bytes), key, "{part:?}");
        }
        let key = video(&p, FramePart::KeyframeStart, 1100, 720);
        assert_eq!(&key[4..7], &[0x9d, 0x01, 0x2a], "VP8 start code");
        assert_eq!(u16::from_le_bytes([key[7], key[8]]), 1280);
        assert_eq!(u16::from_le_bytes([key[9], key[10]]), 720);
    }

    #[test]
    fn foreign_and_short_payloads_are_refused() {
        assert_eq!(read(b""), Err(PayloadError::NotOurs));
        assert_eq!(read(b"HZLT\0\0"), Err(PayloadError::NotOurs));
        assert_eq!(read(&[0x90; 64]), Err(PayloadError::NotOurs));
        let mut bytes = audio(&probe(Kind::Audio), 40);
        bytes[8] = 9;
        assert_eq!(read(&bytes), Err(PayloadError::NotOurs));
    }
}
