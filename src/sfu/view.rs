//! What the core knows about one room's media, for operators: each participant's downlink
//! estimate, what it publishes (layers, their bitrates and sizes) and what it receives (the
//! layer chosen for it, or why nothing). Served by the admin API; carries no names.

use serde::Serialize;

/// One room.
#[derive(Debug, Clone, Serialize)]
pub struct RoomMedia {
    /// The active speaker's participant id, if any.
    pub active_speaker: Option<String>,
    /// Its participants.
    pub participants: Vec<ParticipantMedia>,
}

/// One participant.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantMedia {
    /// Server-assigned id (`p7`), as in signaling.
    pub id: String,
    /// Send-side estimate of its downlink (bit/s); absent before the first estimate or for a
    /// client that sends no congestion feedback.
    pub estimate_bps: Option<u64>,
    /// Bit/s of video allocated to it at the last round.
    pub allocated_video_bps: u64,
    /// Tracks it publishes.
    pub published: Vec<PublishedTrack>,
    /// Tracks it receives.
    pub received: Vec<ReceivedTrack>,
}

/// A published track.
#[derive(Debug, Clone, Serialize)]
pub struct PublishedTrack {
    /// Track id (`t3`).
    pub track_id: String,
    /// `audio` or `video`.
    pub kind: &'static str,
    /// camera, microphone, screen, instrument.
    pub source: huizhen_signaling::protocol::TrackSource,
    /// Its layers, lowest first (one for a track without simulcast).
    pub layers: Vec<LayerView>,
}

/// One layer of a published track.
#[derive(Debug, Clone, Serialize)]
pub struct LayerView {
    /// Layer index (0 lowest).
    pub index: usize,
    /// Its rid, if simulcast.
    pub rid: Option<String>,
    /// Being sent now.
    pub active: bool,
    /// Measured bit/s, packet overhead included.
    pub bitrate_bps: u64,
    /// Picture height of its last keyframe, where known.
    pub height: Option<u32>,
}

/// A received track.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedTrack {
    /// Track id.
    pub track_id: String,
    /// Its publisher's id.
    pub publisher: String,
    /// `audio` or `video`.
    pub kind: &'static str,
    /// `flowing`, `switching` (waiting for the target layer's keyframe), `paused` (no room
    /// for it), `hidden` (not shown), or `negotiating`.
    pub state: &'static str,
    /// The layer forwarded now.
    pub layer: Option<usize>,
    /// The layer wanted.
    pub target_layer: Option<usize>,
    /// The subscriber shows it.
    pub visible: bool,
    /// The subscriber shows it large or pinned.
    pub pinned: bool,
    /// The subscriber's size limit.
    pub max_height: Option<u32>,
    /// The subscriber's frame rate limit.
    pub max_fps: Option<u32>,
    /// Highest temporal layer forwarded (`None`: all of them).
    pub temporal_layer: Option<u8>,
}
