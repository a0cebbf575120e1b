//! RTP payloads of one track, in sequence order, to whole coded frames.
//!
//! Sits after the [`super::jitter`] buffer, which hands packets over in order and says where
//! packets went missing. The codec payload formats (VP8 RFC 7741, VP9, H.264 RFC 6184, Opus
//! RFC 7587) are undone by the `rtc-rtp` crate's depacketizers; this module only groups
//! packets into frames (same RTP timestamp, ended by the marker bit), throws away frames that a
//! loss has damaged, and, for video, keeps dropping frames after a loss until a keyframe comes,
//! because a decoder fed a frame that references a missing one shows corruption until the next
//! keyframe anyway, and a file that decodes cleanly is worth more than a few extra frames.
//!
//! H.264 comes out in AVCC form (4-byte big-endian length before each NAL unit), which is
//! what Matroska's `V_MPEG4/ISO/AVC` stores; SPS and PPS stay in-band as well, and the first
//! ones seen are kept for the track header's CodecPrivate. VP9 pictures of several spatial
//! layers are joined into one superframe so they play as one Matroska block.

use bytes::Bytes;
use rtc_rtp::codec::{h264::H264Packet, vp8::Vp8Packet, vp9::Vp9Packet};
use rtc_rtp::packetizer::Depacketizer as _;

use super::bitstream::{self, nal, FrameInfo};
use super::RecordCodec;

/// One coded frame ready for the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// RTP timestamp shared by its packets.
    pub rtp_time: u32,
    /// Decodable on its own.
    pub keyframe: bool,
    /// Picture size when the frame header says (video keyframes).
    pub size: Option<(u32, u32)>,
    /// The frame as Matroska stores it.
    pub data: Vec<u8>,
}

/// Counters of what the assembler had to throw away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AssemblerStats {
    /// Frames emitted.
    pub frames: u64,
    /// Keyframes emitted.
    pub keyframes: u64,
    /// Frames dropped: damaged by loss, unparsable, too big, or waiting for a keyframe.
    pub frames_dropped: u64,
    /// Packets the depacketizer rejected as malformed.
    pub bad_packets: u64,
}

/// An H.264 depacketizer writing AVCC. It is the only one with state that spans packets (the
/// FU-A fragment buffer), and is recreated after every frame and every loss so no half-built
/// NAL unit survives into the next frame.
fn h264_depacketizer() -> H264Packet {
    let mut d = H264Packet::default();
    d.is_avc = true;
    d
}

/// Whether an H.264 STAP-A payload's length fields stay inside it. rtc-rtp indexes past the
/// end (and panics) on a STAP-A that ends one byte after a NAL unit, so such payloads are
/// refused here first: they come from a remote sender. So are empty NAL units (a NAL unit
/// has at least its header byte), which rtc-rtp would write into the AVCC frame as
/// zero-length entries that decoders refuse.
fn stap_a_ok(payload: &[u8]) -> bool {
    if payload.first().map(|b| b & 0x1F) != Some(24) {
        return true;
    }
    let mut pos = 1;
    while pos < payload.len() {
        let Some(len) = payload.get(pos..pos + 2) else {
            return false;
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len == 0 {
            return false;
        }
        pos += 2 + len;
        if pos > payload.len() {
            return false;
        }
    }
    true
}

/// A frame being collected.
#[derive(Debug)]
struct Partial {
    rtp_time: u32,
    data: Vec<u8>,
    /// VP9: byte offsets where each spatial-layer frame starts.
    layers: Vec<usize>,
}

/// Groups in-order packets of one track into frames.
#[derive(Debug)]
pub struct Assembler {
    codec: RecordCodec,
    h264: H264Packet,
    current: Option<Partial>,
    /// RTP time of the frame whose packets are being skipped, so each is counted once.
    skipped_rtp: Option<u32>,
    /// Video only: frames are dropped until a keyframe.
    need_keyframe: bool,
    max_frame_bytes: usize,
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    stats: AssemblerStats,
}

impl Assembler {
    /// An assembler for `codec`, refusing frames larger than `max_frame_bytes` (a sender that
    /// never sets the marker must not grow memory without bound).
    pub fn new(codec: RecordCodec, max_frame_bytes: usize) -> Self {
        Self {
            codec,
            h264: h264_depacketizer(),
            current: None,
            skipped_rtp: None,
            need_keyframe: codec.is_video(),
            max_frame_bytes,
            sps: None,
            pps: None,
            stats: AssemblerStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> AssemblerStats {
        self.stats
    }

    /// Whether video frames are being dropped until a keyframe: the recorder's reason to ask
    /// the publisher for one.
    pub fn needs_keyframe(&self) -> bool {
        self.need_keyframe
    }

    /// The first SPS and PPS seen (H.264), for the track header.
    pub fn parameter_sets(&self) -> Option<(&[u8], &[u8])> {
        Some((self.sps.as_deref()?, self.pps.as_deref()?))
    }

    /// Packets went missing before the next one: the frame in progress is damaged.
    pub fn lost(&mut self) {
        if let Some(partial) = self.current.take() {
            self.stats.frames_dropped += 1;
            self.skipped_rtp = Some(partial.rtp_time);
        }
        self.h264 = h264_depacketizer();
        if self.codec.is_video() {
            self.need_keyframe = true;
        }
    }

    /// The sender restarted (new SSRC): start over from a keyframe.
    pub fn reset(&mut self) {
        self.lost();
        self.skipped_rtp = None;
    }

    /// Adds the next packet in sequence order; completed frames are appended to `out`.
    pub fn push(&mut self, rtp_time: u32, marker: bool, payload: &[u8], out: &mut Vec<Frame>) {
        if self.codec == RecordCodec::Opus {
            // One packet, one frame; the marker only flags a talkspurt start.
            if !payload.is_empty() {
                self.emit(rtp_time, payload.to_vec(), out);
            }
            return;
        }
        let payload = Bytes::copy_from_slice(payload);
        if self
            .current
            .as_ref()
            .is_some_and(|p| p.rtp_time != rtp_time)
        {
            // A new timestamp without the previous marker: the marker packet was the last one
            // and is missing (the jitter buffer reports loss first), or the sender omits it.
            // Either way the previous frame is over; keep it only if nothing was lost.
            let partial = self.current.take().expect("checked above");
            self.finish(partial, out);
        }
        if self.current.is_none() {
            let head = match self.codec {
                RecordCodec::Vp8 => Vp8Packet::default().is_partition_head(&payload),
                RecordCodec::Vp9 => Vp9Packet::default().is_partition_head(&payload),
                _ => self.h264.is_partition_head(&payload),
            };
            if !head {
                // The start of this frame is missing.
                if self.skipped_rtp != Some(rtp_time) {
                    self.stats.frames_dropped += 1;
                    self.skipped_rtp = Some(rtp_time);
                }
                return;
            }
            self.skipped_rtp = None;
            self.current = Some(Partial {
                rtp_time,
                data: Vec::new(),
                layers: Vec::new(),
            });
        }
        if let Err(()) = self.depacketize(&payload) {
            self.stats.bad_packets += 1;
            self.lost();
            return;
        }
        if self
            .current
            .as_ref()
            .is_some_and(|p| p.data.len() > self.max_frame_bytes)
        {
            self.lost();
            return;
        }
        if marker {
            if let Some(partial) = self.current.take() {
                self.finish(partial, out);
            }
        }
    }

    /// Depacketizes one payload into the current frame.
    fn depacketize(&mut self, payload: &Bytes) -> Result<(), ()> {
        let partial = self.current.as_mut().ok_or(())?;
        match self.codec {
            RecordCodec::Opus => unreachable!("Opus frames are single packets"),
            // rtc-rtp's VP8 and VP9 depacketizers carry fields over from earlier packets
            // (VP8's I/L/T/K flags when X=0; VP9's P_DIFF list, which grows until every
            // packet fails). Neither needs anything from the previous packet, so each packet
            // gets a fresh one.
            RecordCodec::Vp8 => {
                let body = Vp8Packet::default().depacketize(payload).map_err(|_| ())?;
                partial.data.extend_from_slice(&body);
            }
            RecordCodec::Vp9 => {
                let mut d = Vp9Packet::default();
                let body = d.depacketize(payload).map_err(|_| ())?;
                if d.b {
                    partial.layers.push(partial.data.len());
                }
                partial.data.extend_from_slice(&body);
            }
            RecordCodec::H264 => {
                if !stap_a_ok(payload) {
                    return Err(());
                }
                let body = self.h264.depacketize(payload).map_err(|_| ())?;
                partial.data.extend_from_slice(&body);
            }
        }
        Ok(())
    }

    /// Turns a completed partial frame into a frame, or drops it.
    fn finish(&mut self, partial: Partial, out: &mut Vec<Frame>) {
        if partial.data.is_empty() {
            self.stats.frames_dropped += 1;
            return;
        }
        let data = match self.codec {
            RecordCodec::Vp9 if partial.layers.len() > 1 => {
                match superframe(&partial.data, &partial.layers) {
                    Some(data) => data,
                    None => {
                        self.stats.frames_dropped += 1;
                        return;
                    }
                }
            }
            RecordCodec::H264 => {
                // An FU-A whose end fragment never came leaves its bytes buffered in the
                // depacketizer: the access unit is incomplete.
                self.h264 = h264_depacketizer();
                self.remember_parameter_sets(&partial.data);
                partial.data
            }
            _ => partial.data,
        };
        self.emit(partial.rtp_time, data, out);
    }

    fn remember_parameter_sets(&mut self, au: &[u8]) {
        for nalu in bitstream::avcc_nalus(au) {
            match nalu.first().map(|b| b & 0x1F) {
                Some(nal::SPS) if self.sps.is_none() => self.sps = Some(nalu.to_vec()),
                Some(nal::PPS) if self.pps.is_none() => self.pps = Some(nalu.to_vec()),
                _ => {}
            }
        }
    }

    fn emit(&mut self, rtp_time: u32, data: Vec<u8>, out: &mut Vec<Frame>) {
        let info = match self.codec {
            RecordCodec::Opus => FrameInfo {
                keyframe: true,
                size: None,
            },
            RecordCodec::Vp8 => bitstream::vp8(&data),
            RecordCodec::Vp9 => bitstream::vp9(&data),
            RecordCodec::H264 => bitstream::h264(&data),
        };
        if self.need_keyframe {
            let usable = info.keyframe
                && (self.codec != RecordCodec::H264 || self.parameter_sets().is_some());
            if !usable {
                self.stats.frames_dropped += 1;
                return;
            }
            self.need_keyframe = false;
        }
        self.stats.frames += 1;
        if info.keyframe && self.codec.is_video() {
            self.stats.keyframes += 1;
        }
        out.push(Frame {
            rtp_time,
            keyframe: info.keyframe,
            size: info.size,
            data,
        });
    }
}

/// Joins the layer frames of one VP9 picture with a superframe index (VP9 bitstream spec,
/// Annex B) so a decoder takes them as one unit.
fn superframe(data: &[u8], starts: &[usize]) -> Option<Vec<u8>> {
    if starts.len() > 8 || starts.first() != Some(&0) {
        return None;
    }
    let sizes: Vec<usize> = starts
        .iter()
        .zip(starts.iter().skip(1).chain(std::iter::once(&data.len())))
        .map(|(a, b)| b - a)
        .collect();
    let max = *sizes.iter().max()?;
    let bytes_per = match max {
        0..=0xFF => 1,
        0x100..=0xFFFF => 2,
        0x1_0000..=0xFF_FFFF => 3,
        _ => 4,
    };
    let marker = 0xC0 | ((bytes_per as u8 - 1) << 3) | (sizes.len() as u8 - 1);
    let mut out = Vec::with_capacity(data.len() + 2 + bytes_per * sizes.len());
    out.extend_from_slice(data);
    out.push(marker);
    for size in &sizes {
        out.extend_from_slice(&(*size as u32).to_le_bytes()[..bytes_per]);
    }
    out.push(marker);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VP8_KEY: [u8; 16] = [
        0x50, 0x2A, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xF0, 0x00, 1, 2, 3, 4, 5, 6,
    ];
    const VP8_INTER: [u8; 4] = [0x31, 0x2A, 0x00, 0x07];

    /// VP8 RTP payloads (rtc-rtp wants at least 4 bytes each): descriptor with the S bit on
    /// the first packet of a frame.
    fn vp8_packets(frame: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        frame
            .chunks(chunk)
            .enumerate()
            .map(|(i, c)| {
                let mut p = vec![if i == 0 { 0x10 } else { 0x00 }];
                p.extend_from_slice(c);
                p
            })
            .collect()
    }

    fn feed(a: &mut Assembler, ts: u32, frame: &[u8], out: &mut Vec<Frame>) {
        let pkts = vp8_packets(frame, 4);
        let n = pkts.len();
        for (i, p) in pkts.iter().enumerate() {
            a.push(ts, i + 1 == n, p, out);
        }
    }

    #[test]
    fn vp8_frames_are_joined_and_start_at_a_keyframe() {
        let mut a = Assembler::new(RecordCodec::Vp8, 1 << 20);
        let mut out = Vec::new();
        feed(&mut a, 0, &VP8_INTER, &mut out);
        assert!(out.is_empty(), "no keyframe yet");
        feed(&mut a, 3000, &VP8_KEY, &mut out);
        feed(&mut a, 6000, &VP8_INTER, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].data, VP8_KEY);
        assert!(out[0].keyframe);
        assert_eq!(out[0].size, Some((320, 240)));
        assert_eq!((out[1].rtp_time, out[1].keyframe), (6000, false));
        assert_eq!(a.stats().frames_dropped, 1);
    }

    #[test]
    fn loss_drops_the_partial_frame_and_waits_for_a_keyframe() {
        let mut a = Assembler::new(RecordCodec::Vp8, 1 << 20);
        let mut out = Vec::new();
        feed(&mut a, 0, &VP8_KEY, &mut out);
        let pkts = vp8_packets(&VP8_KEY, 4);
        a.push(3000, false, &pkts[0], &mut out);
        a.lost();
        a.push(3000, true, &pkts[2], &mut out); // tail of the damaged frame: skipped
        feed(&mut a, 6000, &VP8_INTER, &mut out); // not a keyframe: dropped
        assert!(a.needs_keyframe());
        feed(&mut a, 9000, &VP8_KEY, &mut out);
        let times: Vec<u32> = out.iter().map(|f| f.rtp_time).collect();
        assert_eq!(times, [0, 9000]);
        assert_eq!(a.stats().frames_dropped, 2);
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut a = Assembler::new(RecordCodec::Vp8, 8);
        let mut out = Vec::new();
        feed(&mut a, 0, &VP8_KEY, &mut out);
        assert!(out.is_empty());
        assert!(a.stats().frames_dropped >= 1);
    }

    #[test]
    fn opus_packets_are_frames() {
        let mut a = Assembler::new(RecordCodec::Opus, 1 << 20);
        let mut out = Vec::new();
        a.push(960, true, &[0x78, 1, 2], &mut out);
        a.lost();
        a.push(2880, false, &[0x78, 3], &mut out);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|f| f.keyframe));
        assert!(!a.needs_keyframe());
    }

    #[test]
    fn h264_waits_for_parameter_sets_and_writes_avcc() {
        let mut a = Assembler::new(RecordCodec::H264, 1 << 20);
        let mut out = Vec::new();
        // IDR without SPS/PPS first: cannot start a file.
        a.push(0, true, &[0x65, 0x88, 0x80], &mut out);
        assert!(out.is_empty());
        // STAP-A with SPS and PPS, then the IDR.
        let stap = [0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xCE];
        a.push(3000, false, &stap, &mut out);
        a.push(3000, true, &[0x65, 0x88, 0x80], &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].keyframe);
        assert_eq!(
            out[0].data,
            [0, 0, 0, 2, 0x67, 0x42, 0, 0, 0, 2, 0x68, 0xCE, 0, 0, 0, 3, 0x65, 0x88, 0x80]
        );
        assert_eq!(
            a.parameter_sets(),
            Some((&[0x67, 0x42][..], &[0x68, 0xCE][..]))
        );
    }

    const VP9_KEY: [u8; 12] = [
        0x82, 0x49, 0x83, 0x42, 0x00, 0x13, 0xF0, 0x0E, 0xF6, 0x06, 0x38, 0,
    ];
    const VP9_INTER: [u8; 4] = [0x86, 0x00, 0x40, 0x11];

    /// A VP9 payload the way libwebrtc sends it: flexible mode, 15-bit picture ID, a P_DIFF on
    /// inter frames, the scalability structure on keyframes, layer indices when `sid` is set.
    fn vp9_payload(
        inter: bool,
        b: bool,
        e: bool,
        sid: Option<u8>,
        pid: u16,
        body: &[u8],
    ) -> Vec<u8> {
        let key_ss = !inter && b && sid.unwrap_or(0) == 0;
        let mut p = vec![0x80 | 0x10];
        p[0] |= if inter { 0x40 } else { 0 } | if b { 0x08 } else { 0 } | if e { 0x04 } else { 0 };
        p[0] |= if sid.is_some() { 0x20 } else { 0 } | if key_ss { 0x02 } else { 0 };
        p.extend_from_slice(&[0x80 | (pid >> 8) as u8, pid as u8]);
        if let Some(sid) = sid {
            p.push(sid << 1);
        }
        if inter {
            p.push(1 << 1); // P_DIFF 1, no more
        }
        if key_ss {
            p.extend_from_slice(&[0x10, 0x01, 0x40, 0x00, 0xF0]); // one layer, 320x240
        }
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn vp9_from_libwebrtc_keeps_going_after_many_inter_frames() {
        let mut a = Assembler::new(RecordCodec::Vp9, 1 << 20);
        let mut out = Vec::new();
        a.push(
            0,
            true,
            &vp9_payload(false, true, true, None, 1, &VP9_KEY),
            &mut out,
        );
        for i in 1..20u16 {
            let ts = u32::from(i) * 3_000;
            a.push(
                ts,
                false,
                &vp9_payload(true, true, false, None, 1 + i, &VP9_INTER[..2]),
                &mut out,
            );
            a.push(
                ts,
                true,
                &vp9_payload(true, false, true, None, 1 + i, &VP9_INTER[2..]),
                &mut out,
            );
        }
        assert_eq!(out.len(), 20, "{:?}", a.stats());
        assert!(out[0].keyframe && out[0].size == Some((320, 240)));
        assert!(out[1..].iter().all(|f| !f.keyframe && f.data == VP9_INTER));
        assert_eq!(a.stats().bad_packets, 0);
    }

    #[test]
    fn vp9_spatial_layers_of_one_picture_are_one_frame() {
        let mut a = Assembler::new(RecordCodec::Vp9, 1 << 20);
        let mut out = Vec::new();
        a.push(
            0,
            false,
            &vp9_payload(false, true, true, Some(0), 1, &VP9_KEY),
            &mut out,
        );
        a.push(
            0,
            true,
            &vp9_payload(false, true, true, Some(1), 1, &VP9_INTER),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        let mut expected = VP9_KEY.to_vec();
        expected.extend_from_slice(&VP9_INTER);
        expected.extend_from_slice(&[0xC1, 12, 4, 0xC1]);
        assert_eq!(out[0].data, expected);
        assert!(out[0].keyframe);
    }

    #[test]
    fn garbage_payloads_never_panic() {
        // A STAP-A ending one byte after its first NAL unit makes rtc-rtp index past the end.
        let mut a = Assembler::new(RecordCodec::H264, 1 << 20);
        a.push(0, true, &[0x78, 0x00, 0x01, 0x65, 0x05], &mut Vec::new());
        assert_eq!(a.stats().bad_packets, 1);

        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for codec in [
            RecordCodec::Opus,
            RecordCodec::Vp8,
            RecordCodec::Vp9,
            RecordCodec::H264,
        ] {
            let mut a = Assembler::new(codec, 4_096);
            let mut out = Vec::new();
            let mut ts = 0u32;
            for _ in 0..20_000 {
                let r = next();
                let len = (r % 24) as usize;
                let mut payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                // Favour the interesting first bytes: H.264 STAP-A / FU-A, VP8/VP9 start flags.
                if let Some(first) = payload.first_mut() {
                    *first = [*first, 0x78, 0x7C, 0x10, 0x90, 0x98, 0xDA][(r >> 8) as usize % 7];
                }
                if r >> 16 & 3 == 0 {
                    ts = ts.wrapping_add(3_000);
                }
                if r >> 20 & 63 == 0 {
                    a.lost();
                }
                a.push(ts, r >> 24 & 1 == 1, &payload, &mut out);
            }
        }
    }

    #[test]
    fn a_stap_a_with_an_empty_nal_unit_is_refused() {
        // Found by fuzz/depacketize: a STAP-A with zero-length entries between its SPS and
        // the end became zero-length NAL units in the AVCC frame.
        let mut a = Assembler::new(RecordCodec::H264, 1 << 20);
        let mut out = Vec::new();
        let stap = [0x78, 0, 2, 0x67, 0x42, 0, 0, 0, 2, 0x68, 0xCE];
        a.push(3000, false, &stap, &mut out);
        a.push(3000, true, &[0x65, 0x88, 0x80], &mut out);
        assert!(out.is_empty());
        assert_eq!(a.stats().bad_packets, 1);
        // A trailing empty entry too.
        let mut a = Assembler::new(RecordCodec::H264, 1 << 20);
        a.push(0, false, &[0x78, 0, 2, 0x67, 0x42, 0, 0], &mut out);
        assert_eq!(a.stats().bad_packets, 1);
    }

    #[test]
    fn vp9_layers_become_a_superframe() {
        let joined = superframe(&[1, 2, 3, 4, 5], &[0, 2]).unwrap();
        assert_eq!(joined, [1, 2, 3, 4, 5, 0xC1, 2, 3, 0xC1]);
        assert!(superframe(&[1], &[1]).is_none());
    }
}
