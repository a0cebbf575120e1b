#![no_main]
//! The recorder's depacketizers (`recorder::depacketize::Assembler`): RTP payloads of one
//! track, in order, with losses and sender restarts, to frames. H.264 frames must come out
//! as well-formed AVCC (4-byte lengths that tile the frame exactly).
//!
//! Input: a codec byte, then packets `[flags][rtp time step: 1][len: 2][payload]`; flags bit 0
//! is the marker, bit 1 a loss before the packet, bit 2 a sender restart.

use huizhen::recorder::depacketize::{Assembler, Frame};
use huizhen::recorder::RecordCodec;
use libfuzzer_sys::fuzz_target;

#[path = "../common/mod.rs"]
mod common;

const MAX_FRAME_BYTES: usize = 64 * 1024;

fn avcc_ok(data: &[u8]) -> bool {
    let mut rest = data;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return false;
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len == 0 || len > tail.len() {
            return false;
        }
        rest = &tail[len..];
    }
    true
}

fuzz_target!(|data: &[u8]| {
    let mut r = common::Reader(data);
    let codec = [
        RecordCodec::Opus,
        RecordCodec::Vp8,
        RecordCodec::Vp9,
        RecordCodec::H264,
    ][usize::from(r.u8() % 4)];
    let mut asm = Assembler::new(codec, MAX_FRAME_BYTES);
    let mut out: Vec<Frame> = Vec::new();
    let mut rtp_time = 0u32;
    while !r.is_empty() {
        let flags = r.u8();
        rtp_time = rtp_time.wrapping_add(u32::from(r.u8()) * 3000);
        let payload = r.chunk();
        if flags & 2 != 0 {
            asm.lost();
        }
        if flags & 4 != 0 {
            asm.reset();
        }
        asm.push(rtp_time, flags & 1 != 0, payload, &mut out);
    }
    asm.lost();
    for frame in &out {
        assert!(!frame.data.is_empty());
        if codec == RecordCodec::H264 {
            assert!(avcc_ok(&frame.data), "not AVCC: {:02x?}", frame.data);
        }
    }
    let stats = asm.stats();
    assert_eq!(stats.frames, out.len() as u64);
    if let Some((sps, pps)) = asm.parameter_sets() {
        let _ = (sps.len(), pps.len());
    }
});
