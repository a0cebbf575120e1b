//! The Matroska/WebM layout of one recorded track, written as a stream.
//!
//! A track file is the EBML header, a Segment of unknown size (its end is not known while
//! recording), Info and Tracks, then Clusters. Each Cluster is finished in memory before it is
//! written, so it has a known size and a stored segment always ends on a Cluster boundary:
//! the concatenation of any prefix of a track's segments is a playable streaming file, which
//! is what a crash leaves behind. [`super::export`] later rewrites it with sizes, a Duration
//! and Cues.
//!
//! Choices: one track per file (track number 1), 1 ms timestamps (`TimestampScale` 1 000 000),
//! SimpleBlocks without lacing. WebM (`DocType` "webm") for VP8, VP9 and Opus; Matroska for
//! H.264, which WebM does not allow. H.264 is stored as `V_MPEG4/ISO/AVC`: AVCC frames
//! (4-byte NAL lengths) with an AVCDecoderConfigurationRecord built from the first SPS and PPS
//! as CodecPrivate; parameter sets also stay in-band so a mid-call change still decodes.

use super::ebml::{self, id};
use super::RecordCodec;

/// The only track number in a recorder file.
pub(crate) const TRACK_NUMBER: u64 = 1;

/// How far a block may sit from its Cluster's timestamp (a signed 16-bit offset in ms).
pub(crate) const MAX_BLOCK_OFFSET_MS: u64 = i16::MAX as u64;

/// What the track header needs to know, learnt from the first frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrackHeader {
    pub codec: RecordCodec,
    /// Non-zero track UID.
    pub uid: u64,
    /// Picture size (video), from the first keyframe.
    pub size: Option<(u32, u32)>,
    /// Opus channel count, from the first packet's TOC.
    pub channels: u8,
    /// H.264 SPS and PPS (NAL header byte included).
    pub parameter_sets: Option<(Vec<u8>, Vec<u8>)>,
}

/// The bytes that open a track file: EBML header, Segment start, Info, Tracks.
pub(crate) fn file_header(track: &TrackHeader) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    ebml::put_master(&mut out, id::EBML, |e| {
        ebml::put_uint(e, id::EBML_VERSION, 1);
        ebml::put_uint(e, id::EBML_READ_VERSION, 1);
        ebml::put_uint(e, id::EBML_MAX_ID_LENGTH, 4);
        ebml::put_uint(e, id::EBML_MAX_SIZE_LENGTH, 8);
        ebml::put_str(e, id::DOC_TYPE, track.codec.doc_type());
        ebml::put_uint(e, id::DOC_TYPE_VERSION, 4);
        ebml::put_uint(e, id::DOC_TYPE_READ_VERSION, 2);
    });
    ebml::put_id(&mut out, id::SEGMENT);
    out.extend_from_slice(&ebml::UNKNOWN_SIZE);
    out.extend_from_slice(&info(None));
    ebml::put_master(&mut out, id::TRACKS, |t| {
        ebml::put_master(t, id::TRACK_ENTRY, |e| track_entry(e, track));
    });
    out
}

/// The Info element; `duration_ms` only once the whole track is known (export).
pub(crate) fn info(duration_ms: Option<f64>) -> Vec<u8> {
    let mut out = Vec::new();
    ebml::put_master(&mut out, id::INFO, |i| {
        ebml::put_uint(i, id::TIMESTAMP_SCALE, 1_000_000);
        if let Some(d) = duration_ms {
            ebml::put_float(i, id::DURATION, d);
        }
        ebml::put_str(i, id::MUXING_APP, "huizhen");
        ebml::put_str(i, id::WRITING_APP, "huizhen");
    });
    out
}

fn track_entry(e: &mut Vec<u8>, track: &TrackHeader) {
    ebml::put_uint(e, id::TRACK_NUMBER, TRACK_NUMBER);
    ebml::put_uint(e, id::TRACK_UID, track.uid.max(1));
    ebml::put_uint(
        e,
        id::TRACK_TYPE,
        if track.codec.is_video() { 1 } else { 2 },
    );
    ebml::put_uint(e, id::FLAG_LACING, 0);
    ebml::put_str(e, id::CODEC_ID, track.codec.matroska_codec_id());
    match track.codec {
        RecordCodec::Opus => {
            ebml::put_element(e, id::CODEC_PRIVATE, &opus_head(track.channels));
            // No pre-skip: recording starts mid-stream, past the encoder's start-up delay.
            ebml::put_uint(e, id::CODEC_DELAY, 0);
            // 80 ms, what the WebM spec asks of Opus so a seek decodes from a settled state.
            ebml::put_uint(e, id::SEEK_PRE_ROLL, 80_000_000);
            ebml::put_master(e, id::AUDIO, |a| {
                ebml::put_float(a, id::SAMPLING_FREQUENCY, 48_000.0);
                ebml::put_uint(a, id::CHANNELS, u64::from(track.channels.max(1)));
            });
        }
        RecordCodec::H264 => {
            if let Some((sps, pps)) = &track.parameter_sets {
                ebml::put_element(e, id::CODEC_PRIVATE, &avc_decoder_config(sps, pps));
            }
        }
        RecordCodec::Vp8 | RecordCodec::Vp9 => {}
    }
    if track.codec.is_video() {
        // Players want a size before decoding; 640x480 when the keyframe did not say.
        let (w, h) = track.size.unwrap_or((640, 480));
        ebml::put_master(e, id::VIDEO, |v| {
            ebml::put_uint(v, id::PIXEL_WIDTH, u64::from(w));
            ebml::put_uint(v, id::PIXEL_HEIGHT, u64::from(h));
        });
    }
}

/// The Ogg Opus identification header (RFC 7845 §5.1) that `A_OPUS` takes as CodecPrivate.
pub(crate) fn opus_head(channels: u8) -> Vec<u8> {
    let mut head = Vec::with_capacity(19);
    head.extend_from_slice(b"OpusHead");
    head.push(1); // version
    head.push(channels.clamp(1, 2));
    head.extend_from_slice(&0u16.to_le_bytes()); // pre-skip
    head.extend_from_slice(&48_000u32.to_le_bytes()); // input sample rate (informational)
    head.extend_from_slice(&0i16.to_le_bytes()); // output gain
    head.push(0); // channel mapping family 0: mono or stereo
    head
}

/// AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.2.4.1) for one SPS and one PPS, with
/// 4-byte NAL lengths.
pub(crate) fn avc_decoder_config(sps: &[u8], pps: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(11 + sps.len() + pps.len());
    out.push(1);
    out.extend_from_slice(sps.get(1..4).unwrap_or(&[66, 0, 30]));
    out.push(0xFF); // 6 reserved bits, lengthSizeMinusOne = 3
    out.push(0xE1); // 3 reserved bits, one SPS
    out.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    out.extend_from_slice(sps);
    out.push(1);
    out.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    out.extend_from_slice(pps);
    out
}

/// A Cluster being filled: kept in memory until closed so it can be written with its size.
#[derive(Debug)]
pub(crate) struct Cluster {
    timestamp: u64,
    body: Vec<u8>,
    blocks: usize,
}

impl Cluster {
    /// An empty Cluster starting at `timestamp` ms.
    pub fn new(timestamp: u64) -> Self {
        let mut body = Vec::with_capacity(64 * 1024);
        ebml::put_uint(&mut body, id::TIMESTAMP, timestamp);
        Self {
            timestamp,
            body,
            blocks: 0,
        }
    }

    /// Its timestamp.
    pub fn timestamp(&self) -> u64 {
        self.timestamp
    }

    /// Blocks written so far.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Bytes it will take once closed (within a few header bytes).
    pub fn len(&self) -> usize {
        self.body.len() + 12
    }

    /// Whether a block at `ts` can be stored relative to this Cluster.
    pub fn fits(&self, ts: u64) -> bool {
        ts >= self.timestamp && ts - self.timestamp <= MAX_BLOCK_OFFSET_MS
    }

    /// Appends a SimpleBlock. The caller checked [`Self::fits`].
    pub fn push(&mut self, ts: u64, keyframe: bool, frame: &[u8]) {
        debug_assert!(self.fits(ts));
        let offset = (ts - self.timestamp).min(MAX_BLOCK_OFFSET_MS) as i16;
        let mut head = [0u8; 4];
        head[0] = 0x80 | TRACK_NUMBER as u8; // track number as a 1-byte vint
        head[1..3].copy_from_slice(&offset.to_be_bytes());
        head[3] = if keyframe { 0x80 } else { 0x00 };
        ebml::put_id(&mut self.body, id::SIMPLE_BLOCK);
        ebml::put_size(&mut self.body, (head.len() + frame.len()) as u64);
        self.body.extend_from_slice(&head);
        self.body.extend_from_slice(frame);
        self.blocks += 1;
    }

    /// Writes the closed Cluster to `out`.
    pub fn finish(self, out: &mut Vec<u8>) {
        ebml::put_element(out, id::CLUSTER, &self.body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::ebml::{read_header, read_uint, Children};

    #[test]
    fn header_declares_webm_opus_with_its_private_data() {
        let bytes = file_header(&TrackHeader {
            codec: RecordCodec::Opus,
            uid: 7,
            size: None,
            channels: 2,
            parameter_sets: None,
        });
        let ebml = read_header(&bytes, 0).unwrap();
        assert_eq!(ebml.id, id::EBML);
        let end = ebml.end(bytes.len()).unwrap();
        let doc = Children::new(&bytes, ebml.body, end)
            .map(Result::unwrap)
            .find(|(h, _)| h.id == id::DOC_TYPE)
            .unwrap();
        assert_eq!(doc.1, b"webm");
        let seg = read_header(&bytes, end).unwrap();
        assert_eq!((seg.id, seg.size), (id::SEGMENT, None));
        let needle = opus_head(2);
        assert!(bytes.windows(needle.len()).any(|w| w == needle.as_slice()));
        assert!(bytes.windows(6).any(|w| w == b"A_OPUS"));
    }

    #[test]
    fn h264_goes_into_matroska_with_avc_config() {
        let sps = vec![0x67, 0x42, 0xC0, 0x1F, 0xAA];
        let pps = vec![0x68, 0xCE];
        let bytes = file_header(&TrackHeader {
            codec: RecordCodec::H264,
            uid: 1,
            size: Some((320, 240)),
            channels: 0,
            parameter_sets: Some((sps.clone(), pps.clone())),
        });
        assert!(bytes.windows(8).any(|w| w == b"matroska"));
        let config = avc_decoder_config(&sps, &pps);
        assert_eq!(&config[..7], &[1, 0x42, 0xC0, 0x1F, 0xFF, 0xE1, 0]);
        assert!(bytes.windows(config.len()).any(|w| w == config.as_slice()));
    }

    #[test]
    fn cluster_blocks_are_relative_and_flagged() {
        let mut c = Cluster::new(5000);
        assert!(c.fits(5000 + 32_767));
        assert!(!c.fits(5000 + 32_768));
        assert!(!c.fits(4999));
        c.push(5000, true, &[1, 2]);
        c.push(5040, false, &[3]);
        let mut out = Vec::new();
        c.finish(&mut out);
        let h = read_header(&out, 0).unwrap();
        assert_eq!(h.id, id::CLUSTER);
        let kids: Vec<_> = Children::new(&out, h.body, h.end(out.len()).unwrap())
            .map(Result::unwrap)
            .collect();
        assert_eq!(read_uint(kids[0].1), Some(5000));
        assert_eq!(kids[1].1, &[0x81, 0, 0, 0x80, 1, 2]);
        assert_eq!(kids[2].1, &[0x81, 0, 40, 0x00, 3]);
    }
}
