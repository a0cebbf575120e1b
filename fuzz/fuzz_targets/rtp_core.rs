#![no_main]
//! RTP and RTCP into the SFU core from connected participants: two str0m clients, connected
//! through ICE and DTLS over the simulator's in-memory network, publish and subscribe; the
//! input is a program of
//!
//! - `0`: the publisher sends an RTP packet with fuzzed header values and payload (encrypted by
//!   its real SRTP session, so the packet reaches the forwarding path: payload descriptors,
//!   keyframe detection, RED, layer switching, sequence rewriting);
//! - `1`: a raw datagram from a client's address or a stranger's (the demux, str0m's STUN,
//!   DTLS and SRTP/SRTCP parsing, the SSRC fallback for NAT rebinding);
//! - `2`: time passes.
//!
//! The first byte picks the publisher's set-up (codec, RED, simulcast, recording).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use huizhen::sfu::sim::SimNet;
use libfuzzer_sys::fuzz_target;
use str0m::format::Codec;
use str0m::media::{MediaKind, Mid, Rid};
use str0m::rtp::{ExtensionValues, RtpWrite};

#[path = "../common/mod.rs"]
mod common;

const AV: &[MediaKind] = &[MediaKind::Audio, MediaKind::Video];
const MAX_OPS: usize = 64;

fuzz_target!(
    init: common::write_seeds(seeds),
    |data: &[u8]| {
        let mut r = common::Reader(data);
        let setup = r.u8();
        let mut net = SimNet::new(1);
        net.opus_red = setup & 0x10 != 0;
        let a = match setup % 4 {
            0 => net.add_client("room", AV),
            1 => net.add_client_with_codec("room", AV, Some(Codec::Vp9)),
            2 => net.add_client_with_codec("room", AV, Some(Codec::H264)),
            _ => net.add_simulcast_client("room"),
        };
        let b = net.add_client("room", AV);
        net.run_for(Duration::from_millis(600));
        if setup & 0x20 != 0 {
            let id = net.clients[a].id;
            let _ = net.sfu.set_recorded(net.now, id, true);
        }
        let stranger: SocketAddr = "10.0.9.9:4444".parse().unwrap();
        let mut seqs: HashMap<(Mid, Option<Rid>), (u64, u32)> = HashMap::new();
        for _ in 0..MAX_OPS {
            if r.is_empty() {
                break;
            }
            match r.u8() % 3 {
                0 => {
                    let flags = r.u8();
                    let kind = if flags & 1 == 0 { MediaKind::Audio } else { MediaKind::Video };
                    let Some(&(_, mid)) =
                        net.clients[a].publish_mids.iter().find(|(k, _)| *k == kind)
                    else {
                        continue;
                    };
                    let rid = (kind == MediaKind::Video && setup % 4 == 3)
                        .then(|| Rid::from(["q", "h", "f"][usize::from(flags >> 1) % 3]));
                    let pt = match (flags & 8 != 0, net.red_pt(a)) {
                        (true, Some(red)) if kind == MediaKind::Audio => red,
                        _ => net.pt(a, kind),
                    };
                    let seq_step = i64::from(r.u16() as i16);
                    let time_step = r.u32();
                    let level = r.u8();
                    let payload = r.chunk().to_vec();
                    let (seq, time) = seqs.entry((mid, rid)).or_insert((1000, 0));
                    *seq = seq.saturating_add_signed(seq_step).max(1);
                    *time = time.wrapping_add(time_step);
                    let ext = ExtensionValues {
                        audio_level: (kind == MediaKind::Audio).then_some(-((level & 0x7f) as i8)),
                        voice_activity: (kind == MediaKind::Audio).then_some(level & 0x80 != 0),
                        ..Default::default()
                    };
                    let packet = RtpWrite::new(pt, (*seq).into(), *time, net.now, payload)
                        .marker(flags & 0x20 != 0)
                        .ext_vals(ext)
                        .nackable(true);
                    net.send_rtp_write(a, mid, rid, packet);
                }
                1 => {
                    let from = match r.u8() % 3 {
                        0 => net.clients[a].addr,
                        1 => net.clients[b].addr,
                        _ => stranger,
                    };
                    let bytes = r.chunk().to_vec();
                    net.inject(from, &bytes);
                }
                _ => {
                    let ms = u64::from(r.u8());
                    net.run_for(Duration::from_millis(ms));
                }
            }
        }
        net.run_for(Duration::from_millis(200));
    }
);

/// Programs of real-shaped packets: a VP8 keyframe and delta frame, Opus, an H.264 STAP-A
/// with SPS and PPS, a VP9 keyframe, and a datagram that is not one.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let rtp = |flags: u8, payload: &[u8]| {
        let mut op = vec![0, flags, 0, 1, 0, 0, 0x0b, 0xb8, 0x20];
        op.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        op.extend_from_slice(payload);
        op
    };
    // VP8 (RFC 7741): X=1 S=1, picture id present, then a keyframe header (3-byte tag, start
    // code, 640x480).
    let vp8_key = [
        0x90, 0x80, 0x01, 0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01,
    ];
    let vp8_delta = [0x90, 0x80, 0x02, 0x11, 0x02, 0x00];
    let opus = [0x78, 0x01, 0x02, 0x03];
    // STAP-A: SPS, PPS, then an IDR slice in its own packet.
    let stap = [24, 0, 4, 0x67, 0x42, 0xc0, 0x1f, 0, 3, 0x68, 0xce, 0x3c];
    let idr = [0x65, 0x88, 0x84, 0x00];
    // VP9: I=1 (15-bit picture id), B=1 E=1, then an uncompressed keyframe header start.
    let vp9_key = [0x8c, 0x80, 0x01, 0x82, 0x49, 0x83, 0x42, 0x00];
    let mut vp8 = vec![0x20];
    for op in [
        rtp(0x21, &vp8_key),
        rtp(0x21, &vp8_delta),
        rtp(0x00, &opus),
        vec![2, 50],
    ] {
        vp8.extend(op);
    }
    let mut h264 = vec![0x22];
    for op in [rtp(0x01, &stap), rtp(0x21, &idr), vec![2, 50]] {
        h264.extend(op);
    }
    let mut vp9 = vec![0x21];
    vp9.extend(rtp(0x21, &vp9_key));
    let mut red = vec![0x10];
    red.extend(rtp(
        0x08,
        &[0x6f, 0x00, 0x00, 0x04, 0x6f, 0x01, 0x02, 0x03, 0x04],
    ));
    let mut stun = vec![0x00, 1, 2, 0, 20];
    stun.extend([0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42]);
    stun.extend([7; 12]);
    vec![
        ("vp8", vp8),
        ("h264", h264),
        ("vp9", vp9),
        ("opus_red", red),
        ("stranger_stun", stun),
    ]
}
