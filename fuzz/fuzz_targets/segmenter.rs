#![no_main]
//! One track's recorder (`recorder::TrackRecorder`): recorded RTP packets as the SFU hands
//! them over (any order, sequence jumps, SSRC changes, codec mix-ups, gaps in time) through
//! jitter buffer, depacketizer, timeline and Matroska writer to segments. The segments it
//! cuts must make a file the exporter (`recorder::finalize`) accepts.
//!
//! Input: a codec byte, then packets `[op][ssrc][seq step: 2][rtp time step: 2][ms: 1][len:
//! 2][payload]`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use huizhen::recorder::{finalize, RecordCodec, RecorderConfig, TrackRecorder};
use huizhen::sfu::{ParticipantId, RecordedPacket, TrackId};
use libfuzzer_sys::fuzz_target;
use str0m::format::Codec;
use str0m::media::MediaKind;

#[path = "../common/mod.rs"]
mod common;

const CODECS: [(RecordCodec, Codec); 4] = [
    (RecordCodec::Opus, Codec::Opus),
    (RecordCodec::Vp8, Codec::Vp8),
    (RecordCodec::Vp9, Codec::Vp9),
    (RecordCodec::H264, Codec::H264),
];

fuzz_target!(|data: &[u8]| {
    let mut r = common::Reader(data);
    let (codec, str0m_codec) = CODECS[usize::from(r.u8() % 4)];
    let t0 = Instant::now();
    let mut now = t0;
    let config = RecorderConfig {
        segment_ms: 1_000,
        keyframe_grace_ms: 500,
        max_cluster_ms: 500,
        max_segment_bytes: 64 * 1024,
        max_frame_bytes: 64 * 1024,
        jitter_packets: 16,
        jitter_delay_ms: 100,
        max_skew_ms: 500,
    };
    let mut rec = TrackRecorder::new(t0, codec, 7, config).expect("a valid config");
    let mut segments = Vec::new();
    let mut seq = 1000u64;
    let mut rtp_time = 0u32;
    while !r.is_empty() {
        let op = r.u8();
        let ssrc = u32::from(r.u8() % 3) + 1;
        seq = seq.saturating_add_signed(i64::from(r.u16() as i16));
        rtp_time = rtp_time.wrapping_add(u32::from(r.u16()) * 10);
        now += Duration::from_millis(u64::from(r.u8()) * 4);
        let payload: Arc<[u8]> = r.chunk().into();
        let packet = RecordedPacket {
            participant: ParticipantId(1),
            track: TrackId(1),
            kind: if codec.is_video() {
                MediaKind::Video
            } else {
                MediaKind::Audio
            },
            // Now and then a packet of another codec, which the track ignores.
            codec: if op & 0x40 != 0 {
                Codec::Opus
            } else {
                str0m_codec
            },
            clock_rate: codec.clock_rate(),
            ssrc,
            seq,
            rtp_time,
            marker: op & 1 != 0,
            arrival: now,
            payload,
            starts_run: op & 2 != 0,
        };
        rec.push(now, &packet);
        if op & 4 != 0 {
            while let Some(s) = rec.poll_segment(now) {
                segments.push(s);
            }
        }
        let _ = rec.needs_keyframe();
        if let Some(t) = rec.poll_timeout() {
            assert!(t >= t0);
        }
    }
    rec.finish(now);
    while let Some(s) = rec.poll_segment(now) {
        segments.push(s);
    }
    for (i, s) in segments.iter().enumerate() {
        assert_eq!(s.index as usize, i, "segments in order");
    }
    if !segments.is_empty() {
        let bytes: Vec<&[u8]> = segments.iter().map(|s| s.bytes.as_slice()).collect();
        if let Err(e) = finalize(&bytes) {
            panic!("the recorder's own segments do not export: {e}");
        }
    }
});
