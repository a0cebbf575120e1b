//! The few facts the recorder reads from inside coded frames: is this a keyframe, and how big
//! is the picture. Nothing is decoded.
//!
//! Keyframes decide where a file may start after loss and where clusters and segments cut;
//! picture size goes into the Matroska track header so players can lay out the window before
//! decoding. RTP payload descriptors can claim a keyframe that is not (rtc-rtp's VP9 payloader
//! never sets the P bit, for one), so the frame headers themselves are the authority here.
//! Every parser is bounds-checked and returns `None` on short or odd input: the bytes come
//! from a remote sender.

/// What a frame header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct FrameInfo {
    /// Decodable on its own.
    pub keyframe: bool,
    /// Picture width and height, when the header carries them (keyframes only).
    pub size: Option<(u32, u32)>,
}

/// VP8 (RFC 6386 §9.1): a 3-byte frame tag whose bit 0 is 0 on keyframes, then a start code
/// and the 14-bit width and height.
pub(crate) fn vp8(frame: &[u8]) -> FrameInfo {
    let Some(&b0) = frame.first() else {
        return FrameInfo::default();
    };
    if b0 & 1 != 0 {
        return FrameInfo::default();
    }
    match frame.get(3..10) {
        Some([0x9D, 0x01, 0x2A, w0, w1, h0, h1]) => {
            let w = u32::from(u16::from_le_bytes([*w0, *w1]) & 0x3FFF);
            let h = u32::from(u16::from_le_bytes([*h0, *h1]) & 0x3FFF);
            FrameInfo {
                keyframe: true,
                size: Some((w, h)),
            }
        }
        // No start code: not a frame this parser understands, so never treat it as a keyframe.
        _ => FrameInfo::default(),
    }
}

/// VP9 uncompressed header (VP9 bitstream spec §6.2). A superframe starts with its first
/// frame, which is the one that decides.
pub(crate) fn vp9(frame: &[u8]) -> FrameInfo {
    vp9_header(frame).unwrap_or_default()
}

fn vp9_header(frame: &[u8]) -> Option<FrameInfo> {
    let mut r = BitReader::new(frame);
    if r.bits(2)? != 2 {
        return None;
    }
    let low = r.bit()?;
    let high = r.bit()?;
    let profile = (high << 1) | low;
    if profile == 3 {
        r.bit()?;
    }
    if r.bit()? == 1 {
        // show_existing_frame: repeats an old frame, no new picture.
        return Some(FrameInfo::default());
    }
    if r.bit()? != 0 {
        return Some(FrameInfo::default());
    }
    r.bit()?; // show_frame
    r.bit()?; // error_resilient_mode
    if r.bits(24)? != 0x49_8342 {
        return None;
    }
    if profile >= 2 {
        r.bit()?; // ten_or_twelve_bit
    }
    let color_space = r.bits(3)?;
    if color_space != 7 {
        r.bit()?; // color_range
        if profile == 1 || profile == 3 {
            r.bits(3)?; // subsampling_x, subsampling_y, reserved_zero
        }
    } else if profile == 1 || profile == 3 {
        r.bit()?;
    }
    let w = r.bits(16)? + 1;
    let h = r.bits(16)? + 1;
    Some(FrameInfo {
        keyframe: true,
        size: Some((w, h)),
    })
}

/// H.264 NAL unit types the recorder cares about.
pub(crate) mod nal {
    /// Coded slice of an IDR picture.
    pub const IDR: u8 = 5;
    /// Sequence parameter set.
    pub const SPS: u8 = 7;
    /// Picture parameter set.
    pub const PPS: u8 = 8;
}

/// Iterates the NAL units of an AVCC (4-byte length-prefixed) access unit. Stops at the first
/// length that runs past the end.
pub(crate) fn avcc_nalus(frame: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = frame;
    std::iter::from_fn(move || {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let nalu = rest.get(4..4 + len)?;
        rest = &rest[4 + len..];
        Some(nalu)
    })
}

/// An H.264 access unit (AVCC) is a keyframe when it holds an IDR slice; its size comes from
/// an SPS it carries.
pub(crate) fn h264(frame: &[u8]) -> FrameInfo {
    let mut info = FrameInfo::default();
    for nalu in avcc_nalus(frame) {
        match nalu.first().map(|b| b & 0x1F) {
            Some(nal::IDR) => info.keyframe = true,
            Some(nal::SPS) => info.size = info.size.or_else(|| sps_size(nalu)),
            _ => {}
        }
    }
    if !info.keyframe {
        info.size = None;
    }
    info
}

/// Picture size from an SPS NAL unit (header byte included), H.264 §7.3.2.1.1, with cropping.
pub(crate) fn sps_size(sps: &[u8]) -> Option<(u32, u32)> {
    let rbsp = unescape(sps.get(1..)?);
    let mut r = BitReader::new(&rbsp);
    let profile_idc = r.bits(8)?;
    r.bits(16)?; // constraint flags, level_idc
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = 0;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            separate_colour_plane = r.bit()?;
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? == 1 {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            let n = r.ue()?;
            if n > 255 {
                return None;
            }
            for _ in 0..n {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = r.ue()?.checked_add(1)?;
    let height_units = r.ue()?.checked_add(1)?;
    let frame_mbs_only = r.bit()?;
    if frame_mbs_only == 0 {
        r.bit()?;
    }
    r.bit()?; // direct_8x8_inference_flag
    let (mut crop_l, mut crop_r, mut crop_t, mut crop_b) = (0, 0, 0, 0);
    if r.bit()? == 1 {
        crop_l = r.ue()?;
        crop_r = r.ue()?;
        crop_t = r.ue()?;
        crop_b = r.ue()?;
    }
    let (sub_w, sub_h): (u32, u32) = match (chroma_format_idc, separate_colour_plane) {
        (0, _) | (3, 1) => (1, 1),
        (1, _) => (2, 2),
        (2, _) => (2, 1),
        _ => (1, 1),
    };
    let crop_x = sub_w;
    let crop_y = sub_h * (2 - frame_mbs_only);
    // Every value is the sender's: checked, so a size past u32 is refused, not wrapped.
    let width = width_mbs
        .checked_mul(16)?
        .checked_sub(crop_x.checked_mul(crop_l.checked_add(crop_r)?)?)?;
    let height = (2 - frame_mbs_only)
        .checked_mul(height_units)?
        .checked_mul(16)?
        .checked_sub(crop_y.checked_mul(crop_t.checked_add(crop_b)?)?)?;
    (width > 0 && height > 0 && width <= 16_384 && height <= 16_384).then_some((width, height))
}

fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Option<()> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            next = (last + i64::from(r.se()?) + 256) % 256;
        }
        if next != 0 {
            last = next;
        }
    }
    Some(())
}

/// Removes emulation-prevention bytes (`00 00 03` → `00 00`).
fn unescape(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut zeros = 0;
    for &b in data {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// Opus (RFC 6716 §3.1): the TOC byte's `s` bit says whether this packet is coded stereo.
pub(crate) fn opus_channels(packet: &[u8]) -> u8 {
    match packet.first() {
        Some(toc) if toc & 0x04 != 0 => 2,
        _ => 1,
    }
}

/// Opus (RFC 6716 §3.1): samples at 48 kHz in a packet, from the TOC's configuration (frame
/// size) and code (frame count). `None` for an empty or malformed packet.
pub(crate) fn opus_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    // Frame sizes in units of 2.5 ms.
    let frame = match config {
        0..=11 => [4, 8, 16, 24][usize::from(config % 4)],
        12..=15 => [4, 8][usize::from(config % 2)],
        _ => [1, 2, 4, 8][usize::from(config % 4)],
    };
    let count = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3F),
    };
    let samples = frame * 120 * count;
    // At most 120 ms per packet.
    (samples > 0 && samples <= 5_760).then_some(samples)
}

/// MSB-first bit reader with exp-Golomb codes.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn bit(&mut self) -> Option<u32> {
        let byte = self.data.get(self.pos / 8)?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u32::from(bit))
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0u32, |acc, _| Some((acc << 1) | self.bit()?))
    }

    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        Some(((1u64 << zeros) - 1 + u64::from(rest)).min(u64::from(u32::MAX)) as u32)
    }

    fn se(&mut self) -> Option<i32> {
        let k = self.ue()?;
        let magnitude = k.div_ceil(2) as i32;
        Some(if k % 2 == 1 { magnitude } else { -magnitude })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframe_header_gives_size() {
        // Frame tag (key, version 0, show), start code, 320x240.
        let key = [
            0x50, 0x2A, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xF0, 0x00, 0xFF,
        ];
        assert_eq!(
            vp8(&key),
            FrameInfo {
                keyframe: true,
                size: Some((320, 240))
            }
        );
        let inter = [0x31, 0x2A, 0x00, 0x00];
        assert_eq!(vp8(&inter), FrameInfo::default());
        assert_eq!(vp8(&[]), FrameInfo::default());
        assert_eq!(vp8(&[0x50, 0x2A]), FrameInfo::default());
    }

    #[test]
    fn vp9_keyframe_header_gives_size() {
        // libvpx-vp9 320x240 profile 0 keyframe header (from `ffmpeg ... -c:v libvpx-vp9`).
        let key = [
            0x82, 0x49, 0x83, 0x42, 0x00, 0x13, 0xF0, 0x0E, 0xF6, 0x06, 0x38,
        ];
        assert_eq!(
            vp9(&key),
            FrameInfo {
                keyframe: true,
                size: Some((320, 240))
            }
        );
        // frame_type = 1 (inter).
        assert_eq!(vp9(&[0x86, 0x00, 0x40]), FrameInfo::default());
        assert_eq!(vp9(&[0x82, 0x49]), FrameInfo::default());
    }

    #[test]
    fn sps_size_with_cropping() {
        // x264 baseline SPS for 320x240 (`67 42 c0 0d da 05 07 ec 04 40 ...`).
        let sps = [
            0x67, 0x42, 0xC0, 0x0D, 0xDA, 0x05, 0x07, 0xEC, 0x04, 0x40, 0x00, 0x00, 0x03, 0x00,
            0x40, 0x00, 0x00, 0x0C, 0xA3, 0xC5, 0x0A, 0xA8,
        ];
        assert_eq!(sps_size(&sps), Some((320, 240)));
        assert_eq!(sps_size(&sps[..3]), None);
    }

    #[test]
    fn h264_access_unit_keyframe_needs_idr() {
        let mut au = Vec::new();
        for nalu in [&[0x67u8, 0x42][..], &[0x68, 0xCE], &[0x65, 0x88, 0x84]] {
            au.extend_from_slice(&(nalu.len() as u32).to_be_bytes());
            au.extend_from_slice(nalu);
        }
        assert!(h264(&au).keyframe);
        assert_eq!(avcc_nalus(&au).count(), 3);
        let p = [0, 0, 0, 2, 0x41, 0x9A];
        assert!(!h264(&p).keyframe);
        // A length running past the end stops the walk.
        assert_eq!(avcc_nalus(&[0, 0, 0, 9, 0x65]).count(), 0);
    }

    #[test]
    fn unescape_and_exp_golomb() {
        assert_eq!(unescape(&[0, 0, 3, 1, 0, 0, 3]), [0, 0, 1, 0, 0]);
        // ue: 1 -> 0, 010 -> 1, 011 -> 2, 00100 -> 3; se of 2 -> -1.
        let mut r = BitReader::new(&[0b1010_0110, 0b0100_0000]);
        assert_eq!(r.ue(), Some(0));
        assert_eq!(r.ue(), Some(1));
        assert_eq!(r.se(), Some(-1));
        assert_eq!(r.ue(), Some(3));
        assert_eq!(opus_channels(&[0x7C]), 2);
        assert_eq!(opus_channels(&[0x78]), 1);
        // Config 15 (hybrid FB 20 ms), code 0; config 31 (CELT FB 20 ms), code 3 with 3 frames.
        assert_eq!(opus_samples(&[0x78]), Some(960));
        assert_eq!(opus_samples(&[0xFB, 0x03]), Some(2_880));
        assert_eq!(opus_samples(&[]), None);
    }

    #[test]
    fn an_sps_whose_size_overflows_is_refused() {
        // Found by fuzz/depacketize: a baseline SPS with 2^32 - 1 macroblocks across
        // (ue 2^32 - 2) overflowed `width_mbs * 16` and panicked in debug builds.
        let sps = [
            0x67, 0x42, 0x00, 0x1F, 0xF8, 0x00, 0x00, 0x00, 0x07, 0xFF, 0xFF, 0xFF, 0xFF, 0x40,
        ];
        assert_eq!(sps_size(&sps), None);
        // And inside an access unit, as the depacketizer hands it over.
        let mut au = vec![0, 0, 0, sps.len() as u8];
        au.extend_from_slice(&sps);
        assert_eq!(h264(&au).size, None);
    }
}
