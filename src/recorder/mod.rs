//! The session recorder's media core: RTP packets of consented tracks in, Matroska/WebM
//! segments out, one file per track.
//!
//! Data flow. The SFU core emits [`crate::sfu::SfuOutput::Record`] for every packet of a
//! participant being recorded, as received (reordered, duplicated, lossy; never decoded). The
//! recorder task feeds them to a [`Recording`], which keeps one [`TrackRecorder`] per
//! published track: a [`jitter`] buffer puts packets back in order and gives up on gaps,
//! [`depacketize`] rebuilds coded frames (and after loss waits for a keyframe so the file
//! stays decodable), `timing` maps RTP time onto the recording's common timeline so the
//! files of different publishers play in sync, and `mkv` writes Clusters that
//! [`segmenter`] cuts into [`Segment`]s (10 s by default). Each segment is handed out as
//! plaintext bytes for encryption and storage elsewhere; the concatenation of a track's
//! segments is a valid streaming Matroska file, and [`export::finalize`] turns it into a
//! regular seekable one.
//!
//! Everything here is sans-IO: time is passed in as `now`, nothing reads the clock, spawns
//! tasks or touches files, so tests drive it with virtual time and real media.

pub mod archiver;
pub mod depacketize;
pub mod export;
pub mod jitter;
pub mod segmenter;
pub mod task;
pub mod tools;

mod bitstream;
mod ebml;
mod mkv;
mod room;
mod timing;

pub use ebml::EbmlError;
pub use export::{finalize, ExportError};
pub use room::{Recording, RecordingEvent, StreamKey};
pub use segmenter::{Segment, TrackRecorder, TrackStats};

/// The codecs the recorder can store, and how each goes into Matroska.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordCodec {
    /// Opus audio, `A_OPUS` in WebM.
    Opus,
    /// VP8 video, `V_VP8` in WebM.
    Vp8,
    /// VP9 video, `V_VP9` in WebM.
    Vp9,
    /// H.264 video, `V_MPEG4/ISO/AVC` in Matroska (WebM does not allow H.264).
    H264,
}

impl RecordCodec {
    /// The recordable codec for a negotiated one; `None` for those the recorder skips
    /// (telephone events, comfort noise, G.711 and other codecs the SFU does not offer).
    pub fn from_codec(codec: str0m::format::Codec) -> Option<Self> {
        use str0m::format::Codec;
        match codec {
            Codec::Opus => Some(Self::Opus),
            Codec::Vp8 => Some(Self::Vp8),
            Codec::Vp9 => Some(Self::Vp9),
            Codec::H264 => Some(Self::H264),
            _ => None,
        }
    }

    /// Video rather than audio.
    pub fn is_video(self) -> bool {
        self != Self::Opus
    }

    /// RTP clock rate of the codec's payload format.
    pub fn clock_rate(self) -> u32 {
        if self.is_video() {
            90_000
        } else {
            48_000
        }
    }

    /// Matroska CodecID.
    pub fn matroska_codec_id(self) -> &'static str {
        match self {
            Self::Opus => "A_OPUS",
            Self::Vp8 => "V_VP8",
            Self::Vp9 => "V_VP9",
            Self::H264 => "V_MPEG4/ISO/AVC",
        }
    }

    /// EBML DocType of the file.
    pub fn doc_type(self) -> &'static str {
        if self == Self::H264 {
            "matroska"
        } else {
            "webm"
        }
    }

    /// File name extension an export should use.
    pub fn file_extension(self) -> &'static str {
        if self == Self::H264 {
            "mkv"
        } else {
            "webm"
        }
    }
}

/// Recorder tuning. The defaults suit a consultation on one machine: 10 s segments, a 200 ms
/// reorder window and memory bounded per track.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecorderConfig {
    /// Media time per segment, ms: at most this much is lost when the process dies.
    pub segment_ms: u64,
    /// How long past a segment boundary video may run while waiting for a keyframe to start
    /// the next segment on, ms.
    pub keyframe_grace_ms: u64,
    /// Longest Cluster, ms (a Cluster is also started at every video keyframe).
    pub max_cluster_ms: u64,
    /// A segment holding this many bytes is cut early: bounds memory per track.
    pub max_segment_bytes: usize,
    /// Largest frame accepted, bytes (a sender that never ends a frame is cut off here).
    pub max_frame_bytes: usize,
    /// Packets held while waiting for a missing one.
    pub jitter_packets: usize,
    /// How long a missing packet is waited for, ms.
    pub jitter_delay_ms: u64,
    /// When RTP time and arrival time disagree by more than this (ms), the track's timeline
    /// is re-anchored on arrival.
    pub max_skew_ms: u64,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            segment_ms: 10_000,
            keyframe_grace_ms: 2_000,
            max_cluster_ms: 5_000,
            max_segment_bytes: 16 * 1024 * 1024,
            max_frame_bytes: 8 * 1024 * 1024,
            jitter_packets: 100,
            jitter_delay_ms: 200,
            max_skew_ms: 2_000,
        }
    }
}

impl RecorderConfig {
    /// Checks the values, naming the field at fault.
    pub fn validate(&self) -> Result<(), RecorderError> {
        let bad = |field: &'static str, reason: &str| {
            Err(RecorderError::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if !(500..=600_000).contains(&self.segment_ms) {
            return bad("recorder.segment_ms", "must be between 500 and 600000");
        }
        if self.keyframe_grace_ms > self.segment_ms {
            return bad("recorder.keyframe_grace_ms", "must not exceed segment_ms");
        }
        if !(100..=30_000).contains(&self.max_cluster_ms) {
            // Blocks hold a signed 16-bit ms offset from their Cluster: 32.7 s at most.
            return bad("recorder.max_cluster_ms", "must be between 100 and 30000");
        }
        if self.max_segment_bytes < 64 * 1024 {
            return bad("recorder.max_segment_bytes", "must be at least 65536");
        }
        if self.max_frame_bytes < 64 * 1024 {
            return bad("recorder.max_frame_bytes", "must be at least 65536");
        }
        if !(1..=10_000).contains(&self.jitter_packets) {
            return bad("recorder.jitter_packets", "must be between 1 and 10000");
        }
        if self.jitter_delay_ms > 5_000 {
            return bad("recorder.jitter_delay_ms", "must be at most 5000");
        }
        if self.max_skew_ms < 500 {
            return bad("recorder.max_skew_ms", "must be at least 500");
        }
        Ok(())
    }
}

/// Why the recorder refused something. Every case is the caller's (configuration) fault:
/// damaged media is counted in [`TrackStats`], never an error, because a recording must go on
/// through whatever the network does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecorderError {
    /// A configuration value is out of range.
    #[error("{field}: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_field() {
        RecorderConfig::default().validate().unwrap();
        let err = RecorderConfig {
            max_cluster_ms: 40_000,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            err.to_string().starts_with("recorder.max_cluster_ms"),
            "{err}"
        );
        let err = RecorderConfig {
            keyframe_grace_ms: 20_000,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("keyframe_grace_ms"));
    }

    #[test]
    fn codecs_map_to_matroska() {
        use str0m::format::Codec;
        assert_eq!(
            RecordCodec::from_codec(Codec::H264).map(RecordCodec::doc_type),
            Some("matroska")
        );
        assert_eq!(
            RecordCodec::from_codec(Codec::Vp9).map(RecordCodec::matroska_codec_id),
            Some("V_VP9")
        );
        assert_eq!(RecordCodec::from_codec(Codec::PCMU), None);
        assert_eq!(RecordCodec::Opus.file_extension(), "webm");
    }
}
