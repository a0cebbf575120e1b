#![no_main]
//! The exporter's Matroska reader (`recorder::finalize`), which reads a track's plaintext
//! segments back from the archive and must refuse damaged ones cleanly.
//!
//! Input: segments, each `[len: 2][bytes]`.

use huizhen::recorder::finalize;
use libfuzzer_sys::fuzz_target;

#[path = "../common/mod.rs"]
mod common;

fuzz_target!(
    init: common::write_seeds(seeds),
    |data: &[u8]| {
        let mut r = common::Reader(data);
        let mut segments = Vec::new();
        while !r.is_empty() && segments.len() < 16 {
            segments.push(r.chunk());
        }
        let _ = finalize(&segments);
    }
);

/// Segments cut by the crate's own recorder from a short Opus track.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use huizhen::recorder::{RecordCodec, RecorderConfig, TrackRecorder};
    use huizhen::sfu::{ParticipantId, RecordedPacket, TrackId};
    use std::time::{Duration, Instant};
    let t0 = Instant::now();
    let config = RecorderConfig {
        segment_ms: 500,
        keyframe_grace_ms: 0,
        ..RecorderConfig::default()
    };
    let mut rec = TrackRecorder::new(t0, RecordCodec::Opus, 1, config).unwrap();
    let mut segments = Vec::new();
    for i in 0..60u32 {
        let now = t0 + Duration::from_millis(u64::from(i) * 20);
        rec.push(
            now,
            &RecordedPacket {
                participant: ParticipantId(1),
                track: TrackId(1),
                kind: str0m::media::MediaKind::Audio,
                codec: str0m::format::Codec::Opus,
                clock_rate: 48_000,
                ssrc: 1,
                seq: u64::from(i),
                rtp_time: i * 960,
                marker: false,
                arrival: now,
                payload: vec![0x78, i as u8, 1, 2].into(),
                starts_run: false,
            },
        );
        while let Some(s) = rec.poll_segment(now) {
            segments.push(s.bytes);
        }
    }
    rec.finish(t0 + Duration::from_secs(2));
    while let Some(s) = rec.poll_segment(t0 + Duration::from_secs(2)) {
        segments.push(s.bytes);
    }
    let mut input = Vec::new();
    for s in &segments {
        input.extend_from_slice(&(s.len() as u16).to_be_bytes());
        input.extend_from_slice(s);
    }
    vec![("opus_segments", input)]
}
