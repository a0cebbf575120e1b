//! The sans-IO routing core of the SFU.
//!
//! [`Sfu`] owns every participant's str0m [`Rtc`] and the rooms they are in. It is driven
//! entirely from outside with time passed in: datagrams ([`Sfu::handle_datagram`]), signaling
//! ([`Sfu::join`], [`Sfu::handle_signal`], [`Sfu::leave`]) and timers
//! ([`Sfu::handle_timeout`]); it answers through [`Sfu::poll_output`] with datagrams to send,
//! signaling messages for clients and removals. It never reads a clock or touches a socket,
//! so the whole forwarding path runs in tests over an in-memory network with virtual time.
//!
//! Data flow: a publisher's SRTP packet is decrypted by its `Rtc` (RTP mode, no
//! depacketizing), mapped to the published track by its mid, and written to every subscriber's
//! `Rtc` on the mid negotiated for that track, with sequence numbers rebased per subscriber.
//! Each subscriber's `Rtc` encrypts and emits its own datagram; NACK/RTX and RTCP reports are
//! handled hop by hop by str0m on both legs.

pub mod allocation;
pub mod delivery;
pub mod demux;
pub mod dynacast;
pub mod feedback;
pub mod forwarder;
pub mod keyframe;
pub mod layers;
pub mod metrics;
mod participant;
pub mod probe;
pub mod red;
pub mod resume;
pub mod retransmit;
pub mod speaker;
pub mod speech_cap;
pub mod switcher;
pub mod temporal;
pub mod view;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use huizhen_signaling::protocol::{
    ErrorCode, ParticipantInfo, ResumeGrant, ServerMessage, TrackKind, TrackPreference, TrackSource,
};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::config::DtlsCert;
use str0m::format::{Codec, PayloadParams};
use str0m::media::{
    Direction, KeyframeRequest, KeyframeRequestKind, MediaKind, Mid, Pt, Rid, Rids,
};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Vp8Descriptor};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tracing::{debug, info, warn};

use allocation::{Priority, Target, VideoTrack, MAX_LAYERS};
pub use demux::Demux;
use layers::{LayerMeter, DEFAULT_LAYER_BITRATES};
pub use metrics::{DropReason, SfuMetrics};
pub use participant::LeaveReason;
pub use participant::PeerMode;
use participant::{Participant, Preference, TrackIn, TrackOut, TrackOutState};
use retransmit::RetransmitPolicy;
use switcher::{LayerSwitch, Skip, Verdict};

/// A hash map whose iteration order depends only on its contents (SipHash with fixed keys).
/// Participant ids are assigned by the server, so there is no flooding to defend against.
type FixedMap<K, V> =
    HashMap<K, V, std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>>;

/// Server-assigned participant id. Not a user id: it means nothing outside this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(pub u64);

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// Server-assigned id of a published track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackId(pub u64);

impl fmt::Display for TrackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

/// Internal room handle (room names are user input and may be personal: not logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoomKey(u64);

/// Most packets kept for retransmission per outgoing stream (with the time limit of
/// [`SfuConfig::retransmit_history`]): 2 s of 4 Mbit/s video.
const RETRANSMIT_HISTORY_PACKETS: usize = 1024;
/// Queued retransmissions are dropped beyond this share of a stream's bytes (str0m's default
/// is 15 %). A subscriber behind 10 % loss needs about 11 % for the first repairs and more for
/// repairs that are lost again; the cap still stops a retransmission storm on a link that is
/// losing most packets (a keyframe is the cheaper repair there).
const RTX_RATIO_CAP: f32 = 0.3;

/// How often every subscriber's allocation is re-run and layer bitrates are measured (it
/// also runs at once when a subscription opens, preferences change or the estimate falls
/// below what is sent).
const ALLOCATION_TICK: Duration = Duration::from_millis(250);

/// The bandwidth estimate a subscriber starts with: enough for the lowest layer of two
/// cameras and the audio, so a participant joining on a weak link decodes video at once; the
/// estimator's probes raise it within a second or two on a good link.
const INITIAL_ESTIMATE: Bitrate = Bitrate::kbps(500);

/// The "estimate" of a subscriber whose client sends no congestion feedback (no transport-wide
/// congestion control): every layer fits, as before adaptation existed.
const NO_ESTIMATE: u64 = 1_000_000_000;

/// How often a subscriber with a paused video or a pending upgrade has its link probed.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// The longest interval between probes that found nothing.
const PROBE_INTERVAL_MAX: Duration = Duration::from_secs(16);

/// The desired rate, as a multiple of the estimate, of the probe that measures a link whose
/// ceiling lapses (str0m probes at it and at twice it, capped at twice the estimate).
const CEILING_PROBE_ABOVE: f64 = 1.25;

/// While a link is tight for the voices, the desired rate given to str0m changes only when the
/// wish moves out of this band (a factor either way) around the one held.
const TIGHT_WISH_BAND: f64 = 1.3;

/// Within the memory of an overfilling, this share of the rate the link delivered then keeps
/// the lowest layers of what flows through the estimator's fall...
const CEILING_FLOOR_SHARE: f64 = 0.9;
/// ... while the loss of the last second stays below this.
const CEILING_FLOOR_LOSS: f32 = 0.1;

/// str0m's periodic probes (twice the desired rate) go at least this multiple of the estimate
/// on a link that is not overfilled: a probe below the estimate can only lower it.
const PROBE_ABOVE_ESTIMATE: f64 = 1.1;

/// How often str0m reports a participant's statistics (loss, round trip, bytes).
const STATS_INTERVAL: Duration = Duration::from_millis(250);

/// Most `sources` entries an offer may carry (more m-lines than any client publishes).
const MAX_SOURCES: usize = 32;

/// Most tracks one participant publishes (a camera, a microphone, a screen share and a
/// clinical instrument are four; a client offering more sending m-lines is refused before its
/// offer is negotiated, so a stranger cannot make the server hold hundreds of streams).
pub const MAX_PUBLISHED_TRACKS: usize = 8;

/// Refuse an offer that would publish more than [`MAX_PUBLISHED_TRACKS`].
fn check_published(sdp: &str) -> Result<(), SfuError> {
    check_payload_types(sdp)?;
    let sending = m_line_directions(sdp)
        .iter()
        .filter(|d| **d == "sendonly" || **d == "sendrecv")
        .count();
    if sending > MAX_PUBLISHED_TRACKS {
        return Err(SfuError::InvalidMessage(format!(
            "an offer sends at most {MAX_PUBLISHED_TRACKS} tracks ({sending} sending m-lines)"
        )));
    }
    Ok(())
}
/// Every `a=rtpmap` names a payload type its m-line lists. Found by fuzzing: an audio m-line
/// mapping a payload type it does not list, which the video m-line maps too, made str0m panic
/// ("Pt locked multiple times"); no WebRTC client writes such an SDP.
fn check_payload_types(sdp: &str) -> Result<(), SfuError> {
    let mut listed: Vec<&str> = Vec::new();
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            listed = m.split_whitespace().skip(3).collect();
        } else if let Some(map) = line.strip_prefix("a=rtpmap:") {
            let pt = map.split_whitespace().next().unwrap_or("");
            if !listed.contains(&pt) {
                return Err(SfuError::InvalidSdp(format!(
                    "a=rtpmap for payload type {pt}, which its m-line does not list"
                )));
            }
        }
    }
    Ok(())
}

/// Runs one of str0m's SDP negotiations, turning a panic inside it into an error: a malformed
/// description must never take the media task down. Its session is then in an unknown state:
/// the caller removes the participant.
fn negotiate<T>(
    f: impl FnOnce() -> Result<T, str0m::RtcError>,
) -> Result<Result<T, SfuError>, SfuError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => Ok(r.map_err(|e| SfuError::InvalidSdp(e.to_string()))),
        Err(_) => Err(SfuError::InvalidSdp(
            "the session description broke the WebRTC session; leaving".into(),
        )),
    }
}

/// Most entries of one `track_preferences` (more tracks than a room of the largest size
/// sends one subscriber).
pub const MAX_PREFERENCES: usize = 512;
/// Core settings, resolved from the config and the bound sockets.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// UDP host candidates to announce.
    pub udp_candidates: Vec<SocketAddr>,
    /// Passive TCP host candidates to announce.
    pub tcp_candidates: Vec<SocketAddr>,
    /// Most participants per room (receive-only viewers apart).
    pub max_participants_per_room: usize,
    /// Most receive-only viewers (WHEP players) per room: a lecture's audience is not a
    /// meeting, and does not take its seats.
    pub max_viewers_per_room: usize,
    /// Most participants in total.
    pub max_participants: usize,
    /// Minimum interval between keyframe requests to one track.
    pub keyframe_throttle: Duration,
    /// Longest time sent packets are kept for retransmission (NACK); each subscriber's window
    /// follows its round trip below this (see [`retransmit`]).
    pub retransmit_history: Duration,
    /// Remove a connected participant silent this long.
    pub peer_timeout: Duration,
    /// Remove a participant not connected this long after joining.
    pub connect_timeout: Duration,
    /// Keep a participant whose signaling socket dropped this long, for `resume`
    /// ([`Sfu::detach`]); zero removes it at once.
    pub resume_grace: Duration,
}

impl SfuConfig {
    /// The per-subscriber retransmission window policy these settings give.
    pub fn retransmit_policy(&self) -> RetransmitPolicy {
        RetransmitPolicy::new(self.retransmit_history)
    }
}

/// A datagram to send.
#[derive(Debug)]
pub struct Transmit {
    /// UDP or TCP.
    pub proto: Protocol,
    /// Local address it leaves from.
    pub source: SocketAddr,
    /// Peer address.
    pub destination: SocketAddr,
    /// The bytes (one datagram; one RFC 4571 frame's payload on TCP).
    pub contents: Vec<u8>,
    /// When the media packet it forwards was received, for the latency histogram.
    pub forwarded_from: Option<Instant>,
}

/// What the core asks its driver to do.
#[derive(Debug)]
pub enum SfuOutput {
    /// Send a datagram.
    Transmit(Transmit),
    /// Send a signaling message to a participant.
    Signal {
        /// Recipient.
        to: ParticipantId,
        /// The message.
        message: ServerMessage,
    },
    /// A participant is gone; close its signaling socket.
    Removed {
        /// Who.
        participant: ParticipantId,
        /// Why.
        reason: LeaveReason,
    },
    /// A media packet of a participant being recorded, for the recorder (never waited on).
    Record(RecordedPacket),
}

/// One RTP packet of a recorded participant, as received (decrypted, not decoded).
#[derive(Debug, Clone)]
pub struct RecordedPacket {
    /// Publisher.
    pub participant: ParticipantId,
    /// Published track.
    pub track: TrackId,
    /// Audio or video.
    pub kind: MediaKind,
    /// Codec of this packet's payload type.
    pub codec: str0m::format::Codec,
    /// RTP clock rate (48000 for Opus, 90000 for video).
    pub clock_rate: u32,
    /// Publisher's SSRC (changes when the encoder restarts).
    pub ssrc: u32,
    /// Extended sequence number (reordering and loss are visible here).
    pub seq: u64,
    /// RTP timestamp.
    pub rtp_time: u32,
    /// RTP marker bit (end of a video frame).
    pub marker: bool,
    /// When it arrived: aligns tracks of different publishers.
    pub arrival: Instant,
    /// RTP payload.
    pub payload: std::sync::Arc<[u8]>,
    /// The SFU switched the recording to this packet's layer on it (a keyframe of a
    /// simulcast layer, or the first packet of a single stream): a stream starts here even if
    /// its SSRC was recorded before. Without it a recording that goes back to a layer it left
    /// (top layer, then the lowest when the encoder drops the top one) took the returning
    /// layer's packets for stragglers of a replaced stream and recorded no more video.
    pub starts_run: bool,
}

/// The server's side of an ICE restart made outside the SDP ([`Sfu::ice_fragment`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceRestarted {
    /// New local ufrag.
    pub ufrag: String,
    /// New local password.
    pub pwd: String,
    /// Local candidates, as `candidate:` attribute values.
    pub candidates: Vec<String>,
}

/// Signaling input for a joined participant.
#[derive(Debug, Clone)]
pub enum SignalInput {
    /// Client SDP offer, with what its sending m-lines carry (by mid).
    Offer {
        /// The SDP.
        sdp: String,
        /// Sources by mid (see [`ClientMessage::Offer`](huizhen_signaling::protocol::ClientMessage::Offer)).
        sources: std::collections::BTreeMap<String, TrackSource>,
    },
    /// The first offer of a client's fresh peer connection, which replaces its session (see
    /// [`Sfu::renew`]).
    Renew {
        /// The SDP.
        sdp: String,
        /// Sources by mid, as for an offer.
        sources: std::collections::BTreeMap<String, TrackSource>,
    },
    /// How the client shows the tracks it receives.
    Preferences(Vec<TrackPreference>),
    /// Client SDP answer.
    Answer(String),
    /// Client trickle candidate (empty = end of candidates).
    Candidate(String),
}

/// Why a request to the core failed. Grouped by fault; [`SfuError::code`] gives the wire code.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SfuError {
    /// The room is at its participant limit.
    #[error("the room is full ({0} participants)")]
    RoomFull(usize),
    /// The server is at its participant limit.
    #[error("the server is at its participant limit")]
    ServerFull,
    /// The participant is not (or no longer) known.
    #[error("unknown participant")]
    UnknownParticipant,
    /// The client's SDP was unparsable or could not be negotiated.
    #[error("invalid SDP: {0}")]
    InvalidSdp(String),
    /// The client's ICE candidate was unparsable.
    #[error("invalid ICE candidate: {0}")]
    InvalidCandidate(String),
    /// An answer without an outstanding server offer.
    #[error("no server offer is outstanding")]
    NoPendingOffer,
    /// A well-formed message whose contents are out of bounds.
    #[error("{0}")]
    InvalidMessage(String),
}

impl SfuError {
    /// Wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            SfuError::RoomFull(_) => ErrorCode::RoomFull,
            SfuError::ServerFull => ErrorCode::Unavailable,
            SfuError::UnknownParticipant => ErrorCode::NotJoined,
            SfuError::InvalidSdp(_) => ErrorCode::InvalidSdp,
            SfuError::InvalidCandidate(_) => ErrorCode::InvalidCandidate,
            SfuError::NoPendingOffer => ErrorCode::NoPendingOffer,
            SfuError::InvalidMessage(_) => ErrorCode::InvalidMessage,
        }
    }
}

struct Room {
    members: Vec<ParticipantId>,
    /// Who speaks (see [`speaker`]).
    speaker: speaker::SpeakerDetector,
}

/// Work found while draining one participant that touches other participants.
///
/// `Forward` dominates (one per media packet) so the size difference to the rare variants is
/// accepted rather than boxing every packet.
#[allow(clippy::large_enum_variant)]
enum Deferred {
    Forward(RtpPacket),
    TrackPublished(Mid, MediaKind),
    TrackUnpublished(Mid),
    /// A receive-only peer's offer has an m-line for it to receive on.
    SlotOffered(Mid, MediaKind),
    KeyframeWanted(KeyframeRequest),
    Remove(LeaveReason),
    /// The estimate fell below what is allocated: allocate again now.
    Reallocate,
}

/// The SFU routing core. See the module docs.
pub struct Sfu {
    config: SfuConfig,
    metrics: SfuMetrics,
    /// The DTLS certificate every participant's session presents. Generating a key pair per
    /// session was most of a join's cost (1.59 ms of a join and leave in the core) and left
    /// its C allocations behind in the soak. The certificate only has to match the
    /// fingerprint in the session's SDP, which travels over the authenticated signaling
    /// channel, and each handshake derives its own keys (ECDHE): one per SFU core serves all,
    /// as mediasoup has one per worker. `None` where the crypto provider cannot generate
    /// one: str0m then tries per session, as before.
    dtls_cert: Option<DtlsCert>,
    /// Iterated in allocation rounds, sweeps and negotiation: a fixed hasher keeps that
    /// order the same from run to run, so simulations replay exactly.
    participants: FixedMap<ParticipantId, Participant>,
    rooms: HashMap<String, RoomKey>,
    room_members: HashMap<RoomKey, Room>,
    /// Incoming SSRC -> its publisher, for media that arrives from an address ICE has not
    /// checked yet (see [`Sfu::handle_datagram`]).
    media_owners: HashMap<u32, ParticipantId>,
    demux: Demux<ParticipantId>,
    outputs: VecDeque<SfuOutput>,
    next_participant: u64,
    next_track: u64,
    next_room: u64,
    /// Reused buffers so the forwarding path does not allocate per packet.
    deferred: Vec<(ParticipantId, Deferred)>,
    dirty: Vec<ParticipantId>,
    /// The latest time any input brought (sends of forwarded packets happen at it).
    last_now: Option<Instant>,
    /// Participants' str0m wake-up times; entries are lazily invalidated (see `poll_timeout`).
    timers: BinaryHeap<Reverse<(Instant, ParticipantId)>>,
    /// Some participant's subscriptions or negotiation state changed: look for offers to send.
    renegotiate: bool,
    /// Next liveness sweep (`None` until the first `handle_timeout`).
    next_sweep: Option<Instant>,
    /// Next allocation round (`None` until the first `handle_timeout`).
    next_allocation: Option<Instant>,
    /// Subscribers to allocate for at once (subscriptions opened, preferences changed).
    reallocate: Vec<ParticipantId>,
}

/// Shortest interval between the recorder's keyframe requests to one track (see
/// [`Sfu::request_track_keyframe`]).
pub const RECORDER_KEYFRAME_RETRY: Duration = Duration::from_millis(100);

/// How often silent or never-connected participants are looked for. With the 4 s default peer
/// timeout this removes a dead peer within 4.25 s.
const LIVENESS_SWEEP: Duration = Duration::from_millis(250);
/// A participant whose media flowed and then nothing at all arrived for this long while its
/// signaling is alive is asked to restart ICE (`restart_ice`): its uplink path is broken (a
/// change of network that its page's receive-side watchdog does not see, because its
/// downlink still works). Audio alone is 50 packets/s and feedback follows whatever it
/// receives, so a second of nothing is no pause of a live call; well before `peer_timeout`.
pub const RESTART_ASK_AFTER: Duration = Duration::from_secs(1);
/// Datagrams closer than this mark a participant's media as flowing.
const FLOWING_GAP: Duration = Duration::from_millis(200);

impl Sfu {
    /// A core with no participants.
    pub fn new(config: SfuConfig, metrics: SfuMetrics) -> Sfu {
        let dtls_cert = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate();
        Sfu {
            config,
            metrics,
            dtls_cert,
            participants: FixedMap::default(),
            rooms: HashMap::new(),
            room_members: HashMap::new(),
            demux: Demux::default(),
            media_owners: HashMap::new(),
            outputs: VecDeque::new(),
            next_participant: 1,
            next_track: 1,
            next_room: 1,
            deferred: Vec::new(),
            dirty: Vec::new(),
            last_now: None,
            timers: BinaryHeap::new(),
            next_sweep: None,
            next_allocation: None,
            reallocate: Vec::new(),
            renegotiate: false,
        }
    }

    /// The metrics this core updates.
    pub fn metrics(&self) -> &SfuMetrics {
        &self.metrics
    }

    /// Participants currently joined.
    pub fn participant_ids(&self) -> Vec<ParticipantId> {
        self.participants.keys().copied().collect()
    }

    /// Number of participants.
    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    /// Rooms with at least one participant.
    pub fn room_count(&self) -> usize {
        self.room_members.len()
    }

    /// Entries in the demultiplexer (ufrags, transport addresses): zero when everyone left.
    pub fn demux_entries(&self) -> (usize, usize) {
        self.demux.len()
    }

    /// Tracks (published, received) across all participants: for leak tests.
    pub fn track_counts(&self) -> (usize, usize) {
        self.participants.values().fold((0, 0), |(i, o), p| {
            (i + p.tracks_in.len(), o + p.tracks_out.len())
        })
    }

    /// The media of `room` as operators see it (see [`view`]); `None` for a room with
    /// nobody in it.
    pub fn room_media(&self, room: &str) -> Option<view::RoomMedia> {
        let key = self.rooms.get(room)?;
        let r = self.room_members.get(key)?;
        let kind = |k: MediaKind| {
            if k == MediaKind::Audio {
                "audio"
            } else {
                "video"
            }
        };
        let participants = r
            .members
            .iter()
            .filter_map(|id| self.participants.get(id))
            .map(|p| view::ParticipantMedia {
                id: p.id.to_string(),
                estimate_bps: p.estimate,
                allocated_video_bps: p.allocated_video,
                published: p
                    .tracks_in
                    .iter()
                    .map(|t| view::PublishedTrack {
                        track_id: t.id.to_string(),
                        kind: kind(t.kind),
                        source: t.source,
                        layers: t
                            .layers
                            .iter()
                            .enumerate()
                            .filter(|(i, m)| m.last_packet.is_some() || (*i == 0 && !t.simulcast()))
                            .map(|(i, m)| view::LayerView {
                                index: i,
                                rid: t.rid_of_layer(i),
                                active: m.active(self.last_now.unwrap_or(p.joined_at)),
                                bitrate_bps: m.bitrate(),
                                height: m.height,
                            })
                            .collect(),
                    })
                    .collect(),
                received: p
                    .tracks_out
                    .iter()
                    .map(|t| {
                        let state = match (t.state, p.allocator.target(t.track)) {
                            (TrackOutState::Open(_), _) if t.kind == MediaKind::Audio => "flowing",
                            (TrackOutState::Open(_), Target::Paused) => "paused",
                            (TrackOutState::Open(_), Target::Hidden) => "hidden",
                            (TrackOutState::Open(_), _) if t.switch.waiting() => "switching",
                            (TrackOutState::Open(_), _) => "flowing",
                            _ => "negotiating",
                        };
                        view::ReceivedTrack {
                            track_id: t.track.to_string(),
                            publisher: t.publisher.to_string(),
                            kind: kind(t.kind),
                            state,
                            layer: t.switch.current,
                            target_layer: t.switch.target,
                            visible: t.pref.visible,
                            pinned: t.pref.pinned,
                            max_height: t.pref.max_height,
                            max_fps: t.pref.max_fps,
                            temporal_layer: Some(t.rewriter.temporal.target())
                                .filter(|tid| *tid != temporal::ALL),
                        }
                    })
                    .collect(),
            })
            .collect();
        Some(view::RoomMedia {
            active_speaker: r.speaker.current().map(|s| s.to_string()),
            participants,
        })
    }

    /// The track `track` that `publisher` publishes, if both are still there.
    fn track_in(&self, publisher: ParticipantId, track: TrackId) -> Option<&TrackIn> {
        self.participants
            .get(&publisher)?
            .tracks_in
            .iter()
            .find(|t| t.id == track)
    }

    /// Pin `id`'s RED decision (tests of the forwarding, apart from the policy's inputs).
    #[cfg(test)]
    pub fn pin_red(&mut self, id: ParticipantId, on: bool) {
        if let Some(p) = self.participants.get_mut(&id) {
            p.red.pin(on);
        }
    }

    /// `id`'s downlink bandwidth estimate (bit/s) and the video bitrate allocated to it.
    pub fn allocation_of(&self, id: ParticipantId) -> Option<(Option<u64>, u64)> {
        self.participants
            .get(&id)
            .map(|p| (p.estimate, p.allocated_video))
    }

    /// Tests: from now on, every estimate for `id` reads as `estimate` (`None`: str0m's own).
    #[cfg(test)]
    pub fn pin_estimate(&mut self, now: Instant, id: ParticipantId, estimate: Option<u64>) {
        if let Some(p) = self.participants.get_mut(&id) {
            p.estimate_pin = estimate;
            if let Some(e) = estimate {
                p.note_estimate(now, e);
            }
        }
    }

    /// The (minimum, desired) payload bit/s last given to `id`'s bandwidth estimator.
    #[cfg(test)]
    pub fn bwe_targets_of(&self, id: ParticipantId) -> Option<(u64, u64)> {
        self.participants.get(&id).map(|p| p.bwe_targets)
    }

    /// How long `id`'s outgoing streams keep sent packets for NACKs (see [`retransmit`]).
    pub fn retransmit_window(&self, id: ParticipantId) -> Option<Duration> {
        self.participants.get(&id).map(|p| p.retransmit_window)
    }

    /// Add a participant to `room` (created on first join). One that may not publish (an
    /// observer) still receives everything, but its offered tracks are refused.
    pub fn join(
        &mut self,
        now: Instant,
        room: &str,
        display_name: &str,
        may_publish: bool,
        resume: Option<ResumeGrant>,
    ) -> Result<ParticipantId, SfuError> {
        self.join_as(now, room, display_name, may_publish, PeerMode::Full, resume)
    }

    /// [`Sfu::join`] for a peer that negotiates as `mode` (a WHIP publisher, a WHEP viewer).
    pub fn join_as(
        &mut self,
        now: Instant,
        room: &str,
        display_name: &str,
        may_publish: bool,
        mode: PeerMode,
        resume: Option<ResumeGrant>,
    ) -> Result<ParticipantId, SfuError> {
        if self.participants.len() >= self.config.max_participants {
            self.metrics
                .joins_refused
                .with_label_values(&["server_full"])
                .inc();
            return Err(SfuError::ServerFull);
        }
        let room_key = self.room_key(room);
        let members = self
            .room_members
            .get(&room_key)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        let viewers = members
            .iter()
            .filter(|m| {
                self.participants
                    .get(m)
                    .is_some_and(|p| p.mode == PeerMode::ReceiveOnly)
            })
            .count();
        let (taken, cap) = match mode {
            PeerMode::ReceiveOnly => (viewers, self.config.max_viewers_per_room),
            _ => (
                members.len() - viewers,
                self.config.max_participants_per_room,
            ),
        };
        if taken >= cap {
            self.metrics
                .joins_refused
                .with_label_values(&["room_full"])
                .inc();
            return Err(SfuError::RoomFull(cap));
        }
        let id = ParticipantId(self.next_participant);
        self.next_participant += 1;
        let mut participant = self.new_participant(now, id, room_key, display_name);
        participant.may_publish = may_publish;
        participant.mode = mode;
        // A receive-only viewer (WHEP) is sent to on the lines it offers; everyone else only
        // on lines the server offers, so their own sendrecv lines are answered recvonly.
        if mode == PeerMode::ReceiveOnly {
            participant
                .rtc
                .direct_api()
                .set_answer_sendrecv_as_recvonly(false);
        }
        self.demux.insert_ufrag(participant.ufrag.clone(), id);
        self.timers.push(Reverse((participant.next_timeout, id)));
        self.participants.insert(id, participant);
        if members.is_empty() {
            self.room_members.insert(
                room_key,
                Room {
                    members: vec![],
                    speaker: Default::default(),
                },
            );
            self.metrics.rooms.inc();
        }
        self.announce_join(id, room_key, room, &members, resume);
        self.subscribe_to_existing(id, &members);
        if let Some(room) = self.room_members.get_mut(&room_key) {
            room.members.push(id);
        }
        self.metrics.participants.inc();
        self.metrics.joins.inc();
        info!(participant = %id, room = room_key.0, "participant joined");
        Ok(id)
    }

    fn room_key(&mut self, room: &str) -> RoomKey {
        if let Some(key) = self.rooms.get(room) {
            return *key;
        }
        let key = RoomKey(self.next_room);
        self.next_room += 1;
        self.rooms.insert(room.to_owned(), key);
        key
    }

    fn new_participant(
        &self,
        now: Instant,
        id: ParticipantId,
        room: RoomKey,
        display_name: &str,
    ) -> Participant {
        let rtc = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .clear_codecs()
            // Opus with RED (RFC 2198): str0m answers a browser's offer with RED first, so
            // browsers send each Opus frame twice (in its own packet and the next), and a single
            // lost packet costs no audio. Forwarded as is to subscribers that negotiated RED,
            // stripped to the primary block for the others and the recorder.
            .enable_opus(true, true)
            .enable_vp8(true)
            .enable_h264(true)
            .enable_vp9(true)
            .enable_bwe(Some(INITIAL_ESTIMATE))
            // Four times a second: the loss in them (over the last second) is how an
            // overfilled link is noticed (see `Participant::note_delivery`), and every 250 ms
            // sooner is 250 ms less of a weak link's audio lost when it is overfilled.
            .set_stats_interval(Some(STATS_INTERVAL));
        let mut rtc = match &self.dtls_cert {
            Some(cert) => rtc.set_dtls_cert(cert.clone()),
            None => rtc,
        }
        .build(now);
        // The server sends to a client on m-lines it offers itself (except a receive-only
        // viewer's, see `join_as`): a client's own sendrecv line is answered recvonly, without
        // its msid and SSRCs copied back (an independent client showed them as remote tracks).
        rtc.direct_api().set_answer_sendrecv_as_recvonly(true);
        for addr in &self.config.udp_candidates {
            match Candidate::host(*addr, "udp") {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => warn!(%addr, error = %e, "cannot announce UDP candidate"),
            }
        }
        for addr in &self.config.tcp_candidates {
            match Candidate::builder()
                .tcp()
                .host(*addr)
                .tcptype(TcpType::Passive)
                .build()
            {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => warn!(%addr, error = %e, "cannot announce TCP candidate"),
            }
        }
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        Participant {
            id,
            room,
            display_name: display_name.to_owned(),
            rtc,
            ufrag,
            tracks_in: Vec::new(),
            tracks_out: Vec::new(),
            ssrc_layer: HashMap::new(),
            sources: HashMap::new(),
            estimate: None,
            recent_estimates: Default::default(),
            allocator: Default::default(),
            bwe_targets: (0, 0),
            padding_floor: true,
            tight_wish: None,
            twcc_interval: feedback::MIN_INTERVAL,
            next_probe: None,
            probe_backoff: PROBE_INTERVAL,
            prober: Default::default(),
            probe_inputs: (0, None),
            last_tx: None,
            delivery: Default::default(),
            congestion_cap: None,
            ceiling_probed: None,
            allocated_video: 0,
            pending: None,
            offer_sdp: None,
            detached_since: None,
            retired_ufrag: None,
            restart_checked: false,
            flowing: false,
            rtp_received: 0,
            media_source: None,
            unverified_tries: (now, 0),
            negotiated_once: false,
            connected: false,
            joined_at: now,
            last_rx: now,
            next_timeout: now,
            stats: Default::default(),
            dirty: false,
            dirty_since: None,
            may_publish: true,
            mode: PeerMode::Full,
            slots: Vec::new(),
            recorded: false,
            red: Default::default(),
            audio_room: Default::default(),
            sent_packets: 0,
            header_rate: (0, None),
            queue_delay: None,
            queued_at: None,
            #[cfg(test)]
            estimate_pin: None,
            retransmit_window: self.config.retransmit_policy().initial(),
        }
    }

    fn announce_join(
        &mut self,
        id: ParticipantId,
        room_key: RoomKey,
        room: &str,
        members: &[ParticipantId],
        resume: Option<ResumeGrant>,
    ) {
        let me = ParticipantInfo {
            id: id.to_string(),
            display_name: self.participants[&id].display_name.clone(),
        };
        let others: Vec<ParticipantInfo> = members
            .iter()
            .filter_map(|m| self.participants.get(m))
            .filter(|p| p.mode != PeerMode::ReceiveOnly)
            .map(|p| ParticipantInfo {
                id: p.id.to_string(),
                display_name: p.display_name.clone(),
            })
            .collect();
        self.signal(
            id,
            ServerMessage::Joined {
                v: huizhen_signaling::protocol::PROTOCOL_VERSION,
                participant_id: id.to_string(),
                room: room.to_owned(),
                participants: others,
                simulcast: true,
                resume,
                // The edge that carries the message adds the TURN credentials of the session
                // (the core knows nothing of TURN).
                ice_servers: Vec::new(),
            },
        );
        // A latecomer learns who speaks now (the others heard it when it changed).
        let speaker = self
            .room_members
            .get(&room_key)
            .and_then(|r| r.speaker.current());
        if let Some(speaker) = speaker {
            self.signal(
                id,
                ServerMessage::ActiveSpeaker {
                    participant_id: Some(speaker.to_string()),
                },
            );
        }
        if self.participants[&id].mode == PeerMode::ReceiveOnly {
            return;
        }
        for member in members {
            self.signal(
                *member,
                ServerMessage::ParticipantJoined {
                    participant: me.clone(),
                },
            );
        }
    }

    /// Give a newcomer a (to be negotiated) subscription to every track already published.
    fn subscribe_to_existing(&mut self, id: ParticipantId, members: &[ParticipantId]) {
        // A one-offer peer gets nothing offered (a receive-only one fills its slots once its
        // offer names them).
        if self.participants.get(&id).map(|p| p.mode) != Some(PeerMode::Full) {
            return;
        }
        let mut wanted = Vec::new();
        for member in members {
            if let Some(p) = self.participants.get(member) {
                for t in &p.tracks_in {
                    wanted.push(new_track_out(t, p.id));
                }
            }
        }
        if let Some(p) = self.participants.get_mut(&id) {
            p.tracks_out.extend(wanted);
        }
        self.renegotiate = true;
    }

    /// Handle signaling from a joined participant.
    pub fn handle_signal(
        &mut self,
        now: Instant,
        id: ParticipantId,
        input: SignalInput,
    ) -> Result<(), SfuError> {
        if !self.participants.contains_key(&id) {
            return Err(SfuError::UnknownParticipant);
        }
        match input {
            SignalInput::Offer { sdp, sources } => {
                if sources.len() > MAX_SOURCES {
                    return Err(SfuError::InvalidMessage(format!(
                        "an offer names the sources of at most {MAX_SOURCES} m-lines"
                    )));
                }
                if let Some(p) = self.participants.get_mut(&id) {
                    p.sources.extend(sources);
                }
                self.handle_offer(now, id, &sdp)?
            }
            SignalInput::Renew { sdp, sources } => {
                if sources.len() > MAX_SOURCES {
                    return Err(SfuError::InvalidMessage(format!(
                        "an offer names the sources of at most {MAX_SOURCES} m-lines"
                    )));
                }
                self.renew(now, id, &sdp, sources)?
            }
            SignalInput::Preferences(prefs) => {
                if prefs.len() > MAX_PREFERENCES {
                    return Err(SfuError::InvalidMessage(format!(
                        "track_preferences lists at most {MAX_PREFERENCES} tracks"
                    )));
                }
                self.set_preferences(now, id, &prefs)
            }
            SignalInput::Answer(sdp) => self.handle_answer(now, id, &sdp)?,
            SignalInput::Candidate(c) => self.handle_candidate(id, &c)?,
        }
        Ok(())
    }

    fn handle_offer(&mut self, now: Instant, id: ParticipantId, sdp: &str) -> Result<(), SfuError> {
        check_published(sdp)?;
        let offer = SdpOffer::from_sdp_string(sdp).map_err(sdp_error)?;
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(SfuError::UnknownParticipant)?;
        if p.pending.is_some() {
            // Glare: the server is the impolite peer and keeps its own offer; the client (polite)
            // rolls back, answers ours and offers again afterwards.
            debug!(participant = %id, "ignoring client offer that collides with a server offer");
            return Ok(());
        }
        let answer = match negotiate(|| p.rtc.sdp_api().accept_offer(offer)) {
            Ok(answer) => answer?,
            Err(broken) => {
                warn!(participant = %id, "an offer broke the session; removing the participant");
                self.leave(now, id, LeaveReason::Disconnected);
                return Err(broken);
            }
        };
        p.negotiated_once = true;
        // An offer with new ICE credentials restarts ICE (a change of network, a failed path):
        // str0m answers with new local credentials, which the demux must route from now on.
        self.follow_local_ufrag(id);
        self.renegotiate = true;
        self.signal(
            id,
            ServerMessage::Answer {
                sdp: answer.to_sdp_string(),
                renewed: false,
            },
        );
        self.drain_and_settle(now, id);
        Ok(())
    }

    /// A client's fresh peer connection takes over its participant: a new WebRTC session
    /// from `sdp` (its first offer) replaces the old one, and the participant keeps its id,
    /// its seat, and the ids of the tracks it publishes, so the others see the same
    /// participant and tracks and nothing leaves or joins.
    ///
    /// Why: after a change of network Chromium keeps sending on its old candidate pair until
    /// that pair has received nothing for 2.5 s (or, while it still receives, until it stops
    /// being writable, ~5 s), even after an ICE restart found a working one: the others saw a
    /// 3.6-5.5 s gap. A new peer connection has no old pair; the page renews when its path
    /// watchdog fires or the server asks for a restart.
    ///
    /// The client's sending m-lines are matched to its published tracks by kind and source
    /// (camera, microphone, screen, instrument), in order; a published track without a match
    /// is unpublished. Every subscription of the participant is offered anew on the fresh
    /// session (the server's offer follows the answer, with `track_added` per track).
    /// Subscribers of its tracks go on with the same outgoing streams: the new source is
    /// numbered on from where the old one stopped, as after a layer switch.
    pub fn renew(
        &mut self,
        now: Instant,
        id: ParticipantId,
        sdp: &str,
        sources: std::collections::BTreeMap<String, TrackSource>,
    ) -> Result<(), SfuError> {
        check_published(sdp)?;
        let offer = SdpOffer::from_sdp_string(sdp).map_err(sdp_error)?;
        let p = self
            .participants
            .get(&id)
            .ok_or(SfuError::UnknownParticipant)?;
        if p.mode != PeerMode::Full {
            return Err(SfuError::InvalidMessage(
                "only a signaling client can renew its session".into(),
            ));
        }
        let (room, name) = (p.room, p.display_name.clone());
        let mut fresh = self.new_participant(now, id, room, &name);
        // A panic here broke only the fresh session, which is dropped.
        let answer = negotiate(|| fresh.rtc.sdp_api().accept_offer(offer))??;
        // The fresh session's receiving m-lines (the client sends on them), in SDP order.
        let mut offered: Vec<(Mid, MediaKind, TrackSource, Vec<Rid>)> = sdp
            .lines()
            .filter_map(|l| l.trim().strip_prefix("a=mid:"))
            .filter_map(|mid| fresh.rtc.media(Mid::from(mid)))
            .filter(|m| m.direction().is_receiving())
            .map(|m| {
                let kind = m.kind();
                let source = sources
                    .get(&m.mid().to_string())
                    .copied()
                    .unwrap_or(TrackSource::default_for(track_kind(kind)));
                let rids = match m.rids_rx() {
                    Rids::Specific(rids) if kind == MediaKind::Video => rids.clone(),
                    _ => Vec::new(),
                };
                (m.mid(), kind, source, rids)
            })
            .collect();
        // Match the published tracks; those without a match end now.
        let mut rebound: Vec<(TrackId, Mid, Mid, Vec<Rid>)> = Vec::new();
        let mut ended = Vec::new();
        for t in &p.tracks_in {
            match offered
                .iter()
                .position(|(_, kind, source, _)| *kind == t.kind && *source == t.source)
            {
                Some(pos) => {
                    let (mid, _, _, rids) = offered.remove(pos);
                    rebound.push((t.id, t.mid, mid, rids));
                }
                None => ended.push(t.mid),
            }
        }
        for mid in ended {
            self.unpublish(id, mid);
        }
        let Some(p) = self.participants.get_mut(&id) else {
            return Err(SfuError::UnknownParticipant);
        };
        // Who it is and what it may do stay; what belonged to the old session goes.
        fresh.may_publish = p.may_publish;
        fresh.recorded = p.recorded;
        fresh.detached_since = p.detached_since;
        fresh.joined_at = p.joined_at;
        fresh.negotiated_once = true;
        fresh.sources = sources.into_iter().collect();
        fresh.retransmit_window = p.retransmit_window;
        for (track, old_mid, mid, rids) in &rebound {
            let Some(pos) = p.tracks_in.iter().position(|t| t.mid == *old_mid) else {
                continue;
            };
            let mut t = p.tracks_in.swap_remove(pos);
            debug_assert_eq!(t.id, *track);
            t.mid = *mid;
            t.rids = rids.clone();
            t.layers = Default::default();
            t.red = Default::default();
            t.last_params = None;
            t.dynacast = Default::default();
            t.speech_cap = Default::default();
            // The recorder's run restarts on the new source's first keyframe.
            t.record.current = None;
            fresh.tracks_in.push(t);
        }
        let mut unsubscribed = [0u64; 2];
        fresh.tracks_out = std::mem::take(&mut p.tracks_out)
            .into_iter()
            .filter_map(|mut t| {
                let video = usize::from(t.kind == MediaKind::Video);
                match t.state {
                    TrackOutState::Open(_) => unsubscribed[video] += 1,
                    TrackOutState::ToStop(_) => {
                        unsubscribed[video] += 1;
                        return None;
                    }
                    TrackOutState::NegotiatingStop(_) => return None,
                    TrackOutState::Negotiating(_) if t.stop_when_open => return None,
                    TrackOutState::ToOpen | TrackOutState::Negotiating(_) => {}
                }
                t.state = TrackOutState::ToOpen;
                t.switch.current = None;
                t.rewriter.restart();
                t.pt_map = None;
                t.history = None;
                t.last_pli = None;
                Some(t)
            })
            .collect();
        for (video, n) in unsubscribed.into_iter().enumerate() {
            self.metrics.kind(video == 1).subscribed.sub(n as i64);
        }
        let old = std::mem::replace(p, fresh);
        self.demux.remove(id, &old.ufrag);
        self.media_owners.retain(|_, owner| *owner != id);
        if let Some(retired) = &old.retired_ufrag {
            self.demux.remove_ufrag(retired);
        }
        self.demux.insert_ufrag(p.ufrag.clone(), id);
        self.timers.push(Reverse((p.next_timeout, id)));
        drop(old);
        // Its subscribers now take the tracks from the new m-lines.
        let room = self
            .participants
            .get(&id)
            .map(|p| p.room)
            .ok_or(SfuError::UnknownParticipant)?;
        for m in self.members_except(room, id) {
            let Some(s) = self.participants.get_mut(&m) else {
                continue;
            };
            for t in s.tracks_out.iter_mut().filter(|t| t.publisher == id) {
                if let Some((_, _, mid, _)) = rebound.iter().find(|(track, ..)| *track == t.track) {
                    t.source_mid = *mid;
                    t.switch.current = None;
                    t.rewriter.restart();
                    t.last_pli = None;
                }
            }
            self.reallocate.push(m);
        }
        self.metrics.session_renewals.inc();
        info!(participant = %id, tracks = rebound.len(), "session renewed");
        self.renegotiate = true;
        self.signal(
            id,
            ServerMessage::Answer {
                sdp: answer.to_sdp_string(),
                renewed: true,
            },
        );
        self.reallocate.push(id);
        self.drain_and_settle(now, id);
        Ok(())
    }

    /// After an ICE restart the demux routes the new server ufrag, and the old one until the
    /// new credentials carry media (see [`Sfu::handle_datagram`]).
    fn follow_local_ufrag(&mut self, id: ParticipantId) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        let ufrag = p.rtc.direct_api().local_ice_credentials().ufrag;
        if ufrag != p.ufrag {
            let old = std::mem::replace(&mut p.ufrag, ufrag.clone());
            let older = p.retired_ufrag.replace(old);
            p.restart_checked = false;
            if let Some(older) = older {
                self.demux.remove_ufrag(&older);
            }
            self.demux.insert_ufrag(ufrag, id);
            self.metrics.ice_restarts.inc();
            info!(participant = %id, "ICE restart");
        }
    }

    /// ICE from outside the SDP (a WHIP/WHEP `PATCH` with a trickle-ice-sdpfrag): the peer's
    /// `credentials` (`(ufrag, pwd)`) and `candidates` (`candidate:` lines). Credentials that
    /// differ from the peer's current ones restart ICE: the answer is the server's new
    /// credentials and its candidates. Otherwise the candidates are trickled and there is
    /// nothing to answer.
    pub fn ice_fragment(
        &mut self,
        now: Instant,
        id: ParticipantId,
        credentials: Option<(String, String)>,
        candidates: &[String],
    ) -> Result<Option<IceRestarted>, SfuError> {
        // Parsed before anything changes: a bad candidate leaves the session as it was.
        let parsed = candidates
            .iter()
            .map(|c| {
                let c = c.trim();
                Candidate::from_sdp_string(c.strip_prefix("a=").unwrap_or(c))
                    .map_err(|_| candidate_error())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(SfuError::UnknownParticipant)?;
        if !p.negotiated_once {
            return Err(SfuError::NoPendingOffer);
        }
        let mut restarted = None;
        if let Some((ufrag, pwd)) = credentials {
            if ufrag.is_empty() || pwd.is_empty() || ufrag.len() > 256 || pwd.len() > 256 {
                return Err(SfuError::InvalidMessage(
                    "ice-ufrag and ice-pwd must be 1-256 characters".into(),
                ));
            }
            let remote = str0m::IceCreds { ufrag, pass: pwd };
            let current = p.rtc.direct_api().remote_ice_credentials();
            if current.as_ref() != Some(&remote) {
                let local = p.rtc.direct_api().ice_restart(remote);
                let candidates = p
                    .rtc
                    .direct_api()
                    .local_candidates()
                    .into_iter()
                    .map(|c| c.to_sdp_string())
                    .collect();
                restarted = Some(IceRestarted {
                    ufrag: local.ufrag,
                    pwd: local.pass,
                    candidates,
                });
            }
        }
        for c in parsed {
            p.rtc.add_remote_candidate(c);
        }
        if restarted.is_some() {
            self.follow_local_ufrag(id);
        }
        self.drain_and_settle(now, id);
        Ok(restarted)
    }

    fn handle_answer(
        &mut self,
        now: Instant,
        id: ParticipantId,
        sdp: &str,
    ) -> Result<(), SfuError> {
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(SfuError::UnknownParticipant)?;
        check_payload_types(sdp)?;
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(sdp_error)?;
        let pending = p.pending.take().ok_or(SfuError::NoPendingOffer)?;
        let accepted = match negotiate(|| p.rtc.sdp_api().accept_answer(pending, answer)) {
            Ok(accepted) => accepted,
            Err(broken) => {
                warn!(participant = %id, "an answer broke the session; removing the participant");
                self.leave(now, id, LeaveReason::Disconnected);
                return Err(broken);
            }
        };
        if let Err(e) = accepted {
            // Our offer is void: what was being opened is offered again on the next change.
            for t in &mut p.tracks_out {
                match t.state {
                    TrackOutState::Negotiating(_) => t.state = TrackOutState::ToOpen,
                    TrackOutState::NegotiatingStop(m) => t.state = TrackOutState::ToStop(m),
                    _ => {}
                }
            }
            return Err(e);
        }
        let mut opened = Vec::new();
        for t in &mut p.tracks_out {
            if let TrackOutState::Negotiating(m) = t.state {
                if t.stop_when_open {
                    t.state = TrackOutState::ToStop(m);
                } else {
                    t.state = TrackOutState::Open(m);
                    self.metrics
                        .kind(t.kind == MediaKind::Video)
                        .subscribed
                        .inc();
                    opened.push((t.publisher, t.source_mid, t.kind));
                }
            }
        }
        p.tracks_out
            .retain(|t| !matches!(t.state, TrackOutState::NegotiatingStop(_)));
        self.renegotiate = true;
        if opened.iter().any(|(_, _, kind)| *kind == MediaKind::Video) {
            // The allocation picks each new video's layer and asks for its keyframe.
            self.reallocate.push(id);
        }
        self.drain_and_settle(now, id);
        Ok(())
    }

    fn handle_candidate(&mut self, id: ParticipantId, candidate: &str) -> Result<(), SfuError> {
        let candidate = candidate.trim();
        let candidate = candidate.strip_prefix("a=").unwrap_or(candidate);
        if candidate.is_empty() {
            return Ok(());
        }
        let parsed = Candidate::from_sdp_string(candidate).map_err(|_| candidate_error())?;
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(SfuError::UnknownParticipant)?;
        p.rtc.add_remote_candidate(parsed);
        Ok(())
    }

    /// Remove a participant and everything it published.
    pub fn leave(&mut self, now: Instant, id: ParticipantId, reason: LeaveReason) {
        let Some(mut p) = self.participants.remove(&id) else {
            return;
        };
        if p.detached_since.is_some() {
            self.metrics.detached.dec();
        }
        p.rtc.disconnect();
        self.demux.remove(id, &p.ufrag);
        self.media_owners.retain(|_, owner| *owner != id);
        if let Some(old) = &p.retired_ufrag {
            self.demux.remove_ufrag(old);
        }
        if p.red.on() {
            self.metrics.red_subscribers.dec();
        }
        let members = match self.room_members.get_mut(&p.room) {
            Some(room) => {
                room.members.retain(|m| *m != id);
                room.speaker.remove(id);
                room.members.clone()
            }
            None => Vec::new(),
        };
        if members.is_empty() && self.room_members.remove(&p.room).is_some() {
            self.rooms.retain(|_, key| *key != p.room);
            self.metrics.rooms.dec();
        }
        for t in &p.tracks_in {
            self.metrics
                .kind(t.kind == MediaKind::Video)
                .published
                .dec();
        }
        for t in &p.tracks_out {
            if matches!(t.state, TrackOutState::Open(_) | TrackOutState::ToStop(_)) {
                self.metrics
                    .kind(t.kind == MediaKind::Video)
                    .subscribed
                    .dec();
            }
        }
        let track_ids: Vec<_> = p.tracks_in.iter().map(|t| t.id).collect();
        for member in &members {
            for track in &track_ids {
                self.unsubscribe(*member, id, *track);
            }
            if p.mode == PeerMode::ReceiveOnly {
                continue;
            }
            self.signal(
                *member,
                ServerMessage::ParticipantLeft {
                    participant_id: id.to_string(),
                },
            );
        }
        self.metrics.participants.dec();
        self.metrics
            .leaves
            .with_label_values(&[reason.as_str()])
            .inc();
        info!(participant = %id, reason = reason.as_str(), "participant removed");
        self.outputs.push_back(SfuOutput::Removed {
            participant: id,
            reason,
        });
        for member in members {
            self.drain_and_settle(now, member);
        }
    }

    /// Start or stop handing `participant`'s media to the recorder (after consent, or when it
    /// is withdrawn). Starting asks for keyframes so recordings begin decodable.
    pub fn set_recorded(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        recorded: bool,
    ) -> Result<(), SfuError> {
        let p = self
            .participants
            .get_mut(&participant)
            .ok_or(SfuError::UnknownParticipant)?;
        let was = std::mem::replace(&mut p.recorded, recorded);
        if recorded && !was {
            let mut video = Vec::new();
            for t in p
                .tracks_in
                .iter_mut()
                .filter(|t| t.kind == MediaKind::Video)
            {
                // The recording starts on a keyframe of the layer it takes.
                let layer = t.record.target.unwrap_or(0);
                t.record.current = None;
                // The first keyframe of a recording must not be lost to the throttle (a new
                // subscription may just have asked): reset it for this request.
                t.layers[layer].keyframe = Default::default();
                video.push((t.mid, layer));
            }
            for (mid, layer) in video {
                self.request_keyframe(now, participant, mid, layer, KeyframeRequestKind::Pli);
            }
            self.drain_and_settle(now, participant);
        }
        Ok(())
    }

    /// The recorder lacks a keyframe on `track` (start, or after a loss): ask its publisher,
    /// at most once per [`RECORDER_KEYFRAME_RETRY`]. Browsers ignore requests that come within
    /// 300 ms of their last keyframe (libwebrtc's minimum keyframe interval), so a recording
    /// started just after a keyframe would otherwise wait a whole throttle interval for its
    /// video; the recorder stops asking as soon as a keyframe arrives.
    pub fn request_track_keyframe(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        track: TrackId,
    ) {
        let Some((mid, layer)) = self
            .track_in(participant, track)
            .map(|t| (t.mid, t.record.target.unwrap_or(0)))
        else {
            return;
        };
        self.request_keyframe_within(
            now,
            participant,
            mid,
            layer,
            KeyframeRequestKind::Pli,
            RECORDER_KEYFRAME_RETRY,
        );
        self.drain_and_settle(now, participant);
    }

    /// Remove everyone from `room` (a consultation ended).
    pub fn close_room(&mut self, now: Instant, room: &str) {
        let Some(key) = self.rooms.get(room).copied() else {
            return;
        };
        let members = self
            .room_members
            .get(&key)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        for id in members {
            self.leave(now, id, LeaveReason::RoomClosed);
        }
    }

    /// Stop forwarding `track` of `publisher` to `subscriber`, telling the subscriber.
    fn unsubscribe(&mut self, subscriber: ParticipantId, publisher: ParticipantId, track: TrackId) {
        self.renegotiate = true;
        let Some(s) = self.participants.get_mut(&subscriber) else {
            return;
        };
        let Some(pos) = s.tracks_out.iter().position(|t| t.track == track) else {
            return;
        };
        if s.mode == PeerMode::ReceiveOnly {
            // Its m-line stays: the slot keeps the numbering and takes the next track.
            let out = s.tracks_out.remove(pos);
            if let Some(slot) = s.slots.iter_mut().find(|sl| sl.track == Some(track)) {
                slot.track = None;
                slot.rewriter = out.rewriter;
                self.metrics
                    .kind(out.kind == MediaKind::Video)
                    .subscribed
                    .dec();
            }
            self.fill_slots(subscriber);
            return;
        }
        let t = &mut s.tracks_out[pos];
        let mid = t.mid();
        match t.state {
            TrackOutState::ToOpen => {
                s.tracks_out.remove(pos);
            }
            TrackOutState::Negotiating(_) => t.stop_when_open = true,
            TrackOutState::Open(m) => {
                t.state = TrackOutState::ToStop(m);
            }
            TrackOutState::ToStop(_) | TrackOutState::NegotiatingStop(_) => {}
        }
        if let Some(mid) = mid {
            self.signal(
                subscriber,
                ServerMessage::TrackRemoved {
                    participant_id: publisher.to_string(),
                    track_id: track.to_string(),
                    mid: mid.to_string(),
                },
            );
        }
    }

    /// Feed one received datagram (UDP datagram or ICE-TCP frame payload).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        bytes: &[u8],
    ) {
        let Ok(contents) = bytes.try_into() else {
            self.metrics.drop_packet(DropReason::Malformed);
            return;
        };
        // RTP from an address nobody has been heard from (a NAT rebinding: the carrier moved the
        // client to another public address) goes to the publisher of its SSRC, which keeps it
        // only if it decrypts and authenticates (below).
        let (id, by_ssrc) = match self.demux.lookup(proto, source, bytes) {
            Some(id) => (id, false),
            None => match rtp_ssrc(bytes).and_then(|ssrc| self.media_owners.get(&ssrc)) {
                Some(id) => (*id, true),
                None => {
                    self.metrics.drop_packet(DropReason::UnknownSource);
                    return;
                }
            },
        };
        let input = Input::Receive(
            now,
            Receive {
                proto,
                source,
                destination,
                contents,
            },
        );
        let Some(p) = self.participants.get_mut(&id) else {
            self.metrics.drop_packet(DropReason::UnknownSource);
            return;
        };
        // Not from a checked ICE address: media from an address its SRTP authenticated from
        // before, or a first try at one (bounded per participant: each costs a decryption).
        let unverified = !p.rtc.accepts(&input);
        if unverified
            && p.media_source != Some((proto, source))
            && !(by_ssrc && p.try_unverified(now))
        {
            self.metrics.drop_packet(DropReason::UnknownSource);
            return;
        }
        let rtp_before = p.rtp_received;
        let is_stun = demux::classify(bytes) == demux::PacketClass::Stun;
        if let Err(e) = p.rtc.handle_input(input) {
            // A forged or corrupt packet must not cost the participant its call.
            debug!(participant = %id, error = %e, "datagram rejected");
            self.metrics.drop_packet(DropReason::Rejected);
            return;
        }
        // Media and its feedback, not STUN: a restart's checks arrive in bursts with pauses
        // longer than the ask's silence, and asking again would start the restart over.
        p.flowing |= !is_stun && now.saturating_duration_since(p.last_rx) < FLOWING_GAP;
        p.last_rx = now;
        if p.retired_ufrag.is_some() {
            // After an ICE restart the old ufrag is forgotten once the new credentials have
            // carried a check and then media.
            if is_stun {
                p.restart_checked |= demux::stun_local_ufrag(bytes) == Some(p.ufrag.as_str());
            } else if p.restart_checked && demux::classify(bytes) == demux::PacketClass::Rtp {
                if let Some(old) = p.retired_ufrag.take() {
                    self.demux.remove_ufrag(&old);
                    debug!(participant = %id, "old ICE credentials retired");
                    // The new credentials carry media: most often over a new path (another
                    // network), of which the old path's estimate and congestion say nothing.
                    // Left as they were, the seconds of loss before the restart kept its
                    // received video paused for 9-22 s afterwards.
                    p.congestion_cap = None;
                    p.queued_at = None;
                    p.recent_estimates.clear();
                    if p.estimate.is_some_and(|e| e < INITIAL_ESTIMATE.as_u64()) {
                        p.rtc.bwe().reset(INITIAL_ESTIMATE);
                        p.estimate = Some(INITIAL_ESTIMATE.as_u64());
                    }
                }
            }
        }
        if is_stun && self.demux.learn_source(proto, source, id) {
            debug!(participant = %id, ?proto, "learnt transport address");
        }
        self.drain_and_settle(now, id);
        if unverified && by_ssrc {
            // SRTP authenticated it (a packet was forwarded): the sender holds the session's
            // keys, so its media is taken from there at once, before ICE has checked the
            // address (the client's next consent check, 1-2.5 s later, moves what the server
            // sends). The others hear it again without waiting for that check.
            if let Some(p) = self.participants.get_mut(&id) {
                if p.rtp_received > rtp_before {
                    p.media_source = Some((proto, source));
                    self.demux.learn_source(proto, source, id);
                    self.metrics.media_source_moves.inc();
                    debug!(participant = %id, "media from a new address authenticated");
                }
            }
        }
    }

    /// An ICE-TCP connection closed: its address no longer routes anywhere.
    pub fn tcp_closed(&mut self, source: SocketAddr) {
        self.demux.forget_source(Protocol::Tcp, source);
    }

    /// Advance time: str0m timers (from the timer heap) and the periodic liveness sweep.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_sweep.is_none_or(|t| now >= t) {
            self.next_sweep = Some(now + LIVENESS_SWEEP);
            self.sweep_liveness(now);
        }
        if self.next_allocation.is_none_or(|t| now >= t) {
            self.next_allocation = Some(now + ALLOCATION_TICK);
            self.allocation_round(now);
            self.last_now = Some(self.last_now.map_or(now, |t| t.max(now)));
            self.settle(now);
        }
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(p) = self.participants.get_mut(&id) else {
                continue;
            };
            if p.next_timeout != at {
                continue; // Superseded by a later entry.
            }
            if let Err(e) = p.rtc.handle_input(Input::Timeout(now)) {
                warn!(participant = %id, error = %e, "timeout handling failed");
            }
            self.drain_and_settle(now, id);
        }
        if self.timers.len() > 64 + 4 * self.participants.len() {
            self.timers = self
                .participants
                .values()
                .map(|p| Reverse((p.next_timeout, p.id)))
                .collect();
        }
    }

    /// Remove participants that went silent or never connected; ask the ones whose media
    /// stopped to restart ICE.
    fn sweep_liveness(&mut self, now: Instant) {
        let mut ask = Vec::new();
        for p in self.participants.values_mut() {
            if p.flowing
                && p.connected
                && p.mode == PeerMode::Full
                && p.detached_since.is_none()
                && now.saturating_duration_since(p.last_rx) >= RESTART_ASK_AFTER
            {
                p.flowing = false;
                ask.push(p.id);
            }
        }
        for id in ask {
            info!(participant = %id, "media stopped arriving: asking for an ICE restart");
            self.metrics.ice_restart_requests.inc();
            self.signal(id, ServerMessage::RestartIce {});
        }
        let expired: Vec<_> =
            self.participants
                .values()
                .filter_map(|p| {
                    if p.connected
                        && now.saturating_duration_since(p.last_rx) > self.config.peer_timeout
                    {
                        Some((p.id, LeaveReason::Timeout))
                    } else if !p.connected
                        && now.saturating_duration_since(p.joined_at) > self.config.connect_timeout
                    {
                        Some((p.id, LeaveReason::ConnectTimeout))
                    } else if p.detached_since.is_some_and(|t| {
                        now.saturating_duration_since(t) >= self.config.resume_grace
                    }) {
                        // Its socket dropped and nobody resumed it within the grace.
                        Some((p.id, LeaveReason::SignalingClosed))
                    } else {
                        None
                    }
                })
                .collect();
        for (id, reason) in expired {
            self.leave(now, id, reason);
        }
    }

    /// The earliest time [`Sfu::handle_timeout`] has work to do; `None` with no participants.
    ///
    /// Amortised O(log n): stale heap entries are discarded here.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if self.participants.is_empty() {
            return None;
        }
        let periodic = match (self.next_sweep, self.next_allocation) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            match self.participants.get(&id) {
                Some(p) if p.next_timeout == at => {
                    return Some(periodic.map_or(at, |t| at.min(t)));
                }
                _ => {
                    self.timers.pop();
                }
            }
        }
        periodic
    }

    /// Outputs waiting for [`Self::poll_output`] (a driver batching sends flushes at a size).
    pub fn pending_outputs(&self) -> usize {
        self.outputs.len()
    }

    /// Next thing for the driver to do. Packets forwarded since the last call are encrypted
    /// and handed out here, one str0m pass per subscriber however many packets it got: a
    /// driver that feeds a burst of datagrams before polling sends them in one go.
    pub fn poll_output(&mut self) -> Option<SfuOutput> {
        if self.outputs.is_empty() && !self.dirty.is_empty() {
            if let Some(now) = self.last_now {
                self.send_pending(now);
            }
        }
        self.outputs.pop_front()
    }

    /// Drains every subscriber that forwarding wrote to (and publishers asked for keyframes).
    fn send_pending(&mut self, now: Instant) {
        while !self.dirty.is_empty() {
            let mut batch = std::mem::take(&mut self.dirty);
            for sub in batch.drain(..) {
                if let Some(p) = self.participants.get_mut(&sub) {
                    p.dirty = false;
                    let since = p.dirty_since.take();
                    // The timeout lets str0m run its pacer and queues for what was written.
                    if let Err(e) = p.rtc.handle_input(Input::Timeout(now)) {
                        warn!(participant = %sub, error = %e, "send failed");
                    }
                    self.drain(now, sub, since);
                }
            }
            if self.dirty.is_empty() {
                self.dirty = batch;
            }
            self.settle(now);
        }
    }

    fn signal(&mut self, to: ParticipantId, message: ServerMessage) {
        self.outputs.push_back(SfuOutput::Signal { to, message });
    }

    /// Drain `id`'s output and act on what it produced (forwarding marks subscribers dirty;
    /// they are drained by [`Self::send_pending`]), and renegotiate wherever tracks changed.
    fn drain_and_settle(&mut self, now: Instant, id: ParticipantId) {
        self.last_now = Some(self.last_now.map_or(now, |t| t.max(now)));
        self.drain(now, id, None);
        self.settle(now);
    }

    /// Acts on what draining produced; forwarded packets wait in the dirty list for
    /// [`Self::send_pending`] (driven by [`Self::poll_output`]).
    fn settle(&mut self, now: Instant) {
        while !self.deferred.is_empty() {
            let mut batch = std::mem::take(&mut self.deferred);
            for (pid, d) in batch.drain(..) {
                self.apply_deferred(now, pid, d);
            }
            if self.deferred.is_empty() {
                self.deferred = batch;
            }
        }
        if std::mem::take(&mut self.renegotiate) {
            self.negotiate_all();
        }
        if !self.reallocate.is_empty() {
            let mut ids = std::mem::take(&mut self.reallocate);
            ids.sort_unstable();
            ids.dedup();
            for id in ids {
                self.allocate(now, id);
            }
        }
    }

    fn apply_deferred(&mut self, now: Instant, id: ParticipantId, deferred: Deferred) {
        match deferred {
            Deferred::Forward(packet) => self.forward(now, id, packet),
            Deferred::TrackPublished(mid, kind) => self.publish(id, mid, kind),
            Deferred::TrackUnpublished(mid) => self.unpublish(id, mid),
            Deferred::SlotOffered(mid, kind) => {
                if let Some(p) = self.participants.get_mut(&id) {
                    if !p.slots.iter().any(|s| s.mid == mid) {
                        p.slots.push(participant::Slot {
                            mid,
                            kind,
                            track: None,
                            rewriter: Default::default(),
                        });
                    }
                }
                self.fill_slots(id);
            }
            Deferred::KeyframeWanted(req) => self.relay_keyframe_request(now, id, req),
            Deferred::Remove(reason) => self.leave(now, id, reason),
            Deferred::Reallocate => self.reallocate.push(id),
        }
    }

    /// Poll one participant's `Rtc` until it has nothing but a timeout to say.
    fn drain(&mut self, now: Instant, id: ParticipantId, received_at: Option<Instant>) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        loop {
            let output = match p.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    warn!(participant = %id, error = %e, "participant session failed");
                    self.deferred
                        .push((id, Deferred::Remove(LeaveReason::Disconnected)));
                    return;
                }
            };
            match output {
                Output::Timeout(t) => {
                    let t = t + timer_slack(p.rtc.last_timeout_reason());
                    if p.next_timeout != t {
                        p.next_timeout = t;
                        self.timers.push(Reverse((t, id)));
                    }
                    return;
                }
                Output::Transmit(t) => {
                    let is_media = demux::classify(&t.contents) == demux::PacketClass::Rtp;
                    self.outputs.push_back(SfuOutput::Transmit(Transmit {
                        proto: t.proto,
                        source: t.source,
                        destination: t.destination,
                        contents: t.contents.into(),
                        forwarded_from: if is_media { received_at } else { None },
                    }));
                }
                Output::Event(event) => {
                    if let Some(d) = on_event(
                        p,
                        &self.metrics,
                        self.config.retransmit_policy(),
                        now,
                        event,
                    ) {
                        self.deferred.push((id, d));
                    }
                }
            }
        }
    }

    /// A publisher offered a new receiving m-line: announce it to the room.
    fn publish(&mut self, id: ParticipantId, mid: Mid, kind: MediaKind) {
        let track_id = TrackId(self.next_track);
        self.next_track += 1;
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        if p.tracks_in.iter().any(|t| t.mid == mid) {
            return;
        }
        if !p.may_publish {
            debug!(participant = %id, "refusing a track from a participant who may not publish");
            self.signal(
                id,
                ServerMessage::error(
                    ErrorCode::Forbidden,
                    "your role may not publish media; your tracks are not forwarded",
                ),
            );
            return;
        }
        let source = p
            .sources
            .get(&mid.to_string())
            .copied()
            .unwrap_or(TrackSource::default_for(track_kind(kind)));
        let rids = match p.rtc.media(mid).map(|m| m.rids_rx()) {
            Some(Rids::Specific(rids)) if kind == MediaKind::Video => rids.clone(),
            _ => Vec::new(),
        };
        let track = TrackIn {
            id: track_id,
            mid,
            kind,
            source,
            // One layer is recorded: the best one sent (chosen at each allocation round).
            record: LayerSwitch {
                current: None,
                target: Some(0),
            },
            layers: Default::default(),
            red: Default::default(),
            speech_cap: Default::default(),
            last_params: None,
            rids,
            dynacast: Default::default(),
        };
        let room = p.room;
        debug!(participant = %id, track = %track_id, ?kind, layers = track.rids.len().max(1), "track published");
        let out = new_track_out(&track, id);
        p.tracks_in.push(track);
        self.metrics.kind(kind == MediaKind::Video).published.inc();
        self.renegotiate = true;
        let members = self.members_except(room, id);
        for m in members {
            let Some(s) = self.participants.get_mut(&m) else {
                continue;
            };
            match s.mode {
                PeerMode::Full => s.tracks_out.push(out.clone()),
                PeerMode::PublishOnly => {}
                PeerMode::ReceiveOnly => self.fill_slots(m),
            }
        }
    }

    /// Give each empty slot of a receive-only peer the earliest published track of its kind
    /// in the room that no slot of it carries yet (see [`participant::Slot`]).
    fn fill_slots(&mut self, id: ParticipantId) {
        let Some(p) = self.participants.get(&id) else {
            return;
        };
        if p.mode != PeerMode::ReceiveOnly || p.slots.iter().all(|s| s.track.is_some()) {
            return;
        }
        let mut published: Vec<(TrackId, TrackOut)> = self
            .members_except(p.room, id)
            .iter()
            .filter_map(|m| self.participants.get(m))
            .flat_map(|publisher| {
                publisher
                    .tracks_in
                    .iter()
                    .map(|t| (t.id, new_track_out(t, publisher.id)))
            })
            .filter(|(track, _)| !p.slots.iter().any(|s| s.track == Some(*track)))
            .collect();
        published.sort_by_key(|(track, _)| *track);
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        let mut video = false;
        for slot in p.slots.iter_mut().filter(|s| s.track.is_none()) {
            let Some(pos) = published.iter().position(|(_, t)| t.kind == slot.kind) else {
                continue;
            };
            let (track, mut out) = published.remove(pos);
            out.state = TrackOutState::Open(slot.mid);
            out.rewriter = slot.rewriter.clone();
            out.rewriter.restart();
            slot.track = Some(track);
            video |= slot.kind == MediaKind::Video;
            self.metrics
                .kind(slot.kind == MediaKind::Video)
                .subscribed
                .inc();
            debug!(participant = %id, track = %track, mid = %slot.mid, "slot filled");
            p.tracks_out.push(out);
        }
        if video {
            // The allocation picks the layer and asks the publisher for a keyframe.
            self.reallocate.push(id);
        }
    }

    fn unpublish(&mut self, id: ParticipantId, mid: Mid) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        let Some(pos) = p.tracks_in.iter().position(|t| t.mid == mid) else {
            return;
        };
        let track = p.tracks_in.remove(pos);
        let room = p.room;
        self.metrics
            .kind(track.kind == MediaKind::Video)
            .published
            .dec();
        for m in self.members_except(room, id) {
            self.unsubscribe(m, id, track.id);
        }
    }

    fn members_except(&self, room: RoomKey, id: ParticipantId) -> Vec<ParticipantId> {
        self.room_members
            .get(&room)
            .map(|r| r.members.iter().copied().filter(|m| *m != id).collect())
            .unwrap_or_default()
    }

    /// Write one received RTP packet to every subscriber of its track, in the layer each
    /// subscriber's allocation chose.
    fn forward(&mut self, now: Instant, id: ParticipantId, packet: RtpPacket) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        let ssrc = packet.header.ssrc;
        p.rtp_received += 1;
        let (mid, layer) = match p.ssrc_layer.get(&ssrc) {
            Some(known) => *known,
            None => {
                let Some((mid, rid)) = p
                    .rtc
                    .direct_api()
                    .stream_rx(&ssrc)
                    .map(|s| (s.mid(), s.rid()))
                else {
                    return;
                };
                let Some(track) = p.tracks_in.iter().find(|t| t.mid == mid) else {
                    return;
                };
                let layer = match rid {
                    Some(rid) if track.simulcast() => track.layer_of_rid(&rid.to_string()),
                    // A simulcast stream whose rid str0m has not bound yet: wait for it.
                    None if track.simulcast() => return,
                    _ => 0,
                };
                p.ssrc_layer.insert(ssrc, (mid, layer));
                self.media_owners.insert(*ssrc, id);
                (mid, layer)
            }
        };
        let pt = packet.header.payload_type;
        let codec_config_params = {
            let cached = p
                .tracks_in
                .iter()
                .find(|t| t.mid == mid)
                .and_then(|t| t.last_params.filter(|(cpt, _)| *cpt == pt));
            match cached {
                Some((_, params)) => Some(params),
                // RED rides on the Opus parameters (str0m folds it into them).
                None => p
                    .rtc
                    .codec_config()
                    .find(|c| c.pt() == pt || c.red() == Some(pt))
                    .copied(),
            }
        };
        let Some(track) = p.tracks_in.iter_mut().find(|t| t.mid == mid) else {
            return;
        };
        let Some(params) = codec_config_params else {
            return;
        };
        track.last_params = Some((pt, params));
        let track_id = track.id;
        let kind = track.kind;
        let video = kind == MediaKind::Video;
        let spec = params.spec();
        let clock_rate = spec.clock_rate.get();
        let red = !video && params.red() == Some(pt);
        // The primary block of a RED packet, for those who take plain Opus. A malformed RED
        // payload is dropped and counted.
        let primary: Option<Arc<[u8]>> = if red {
            match red_primary(&packet.payload) {
                Some(p) => Some(p),
                None => {
                    self.metrics.drop_packet(DropReason::Malformed);
                    return;
                }
            }
        } else {
            None
        };
        let vp8 = if video && spec.codec == Codec::Vp8 {
            Vp8Descriptor::parse(&packet.payload).ok()
        } else {
            None
        };
        let keyframe = video
            && match spec.codec {
                Codec::Vp8 => vp8
                    .as_ref()
                    .is_some_and(|d| d.starts_keyframe(&packet.payload)),
                Codec::H264 => str0m::format::detect_h264_keyframe(&packet.payload),
                Codec::Vp9 => str0m::format::detect_vp9_keyframe(&packet.payload),
                _ => false,
            };
        let meter = &mut track.layers[layer];
        let newly_active = video && !meter.active(now);
        // Audio is metered as plain Opus (what most subscribers get); RED's full size apart.
        meter.on_packet(
            now,
            primary.as_ref().map_or(packet.payload.len(), |p| p.len()),
        );
        if vp8.is_some() {
            meter
                .temporal
                .on_packet(packet.payload.len() + layers::WIRE_OVERHEAD, vp8.as_ref());
        }
        if red {
            track.red.on_packet(now, packet.payload.len());
        }
        if keyframe && vp8.is_some() {
            if let Some(h) = layers::vp8_descriptor_len(&packet.payload)
                .and_then(|offset| layers::vp8_keyframe_height(&packet.payload, offset))
            {
                meter.height = Some(h);
            }
        }
        // Switching needs keyframes only where there are layers to switch between; a single
        // stream is forwarded from any packet (its subscriber asks for a keyframe itself).
        let gated = track.simulcast();
        let starts = keyframe || !gated;
        let room = p.room;
        let speech = (kind == MediaKind::Audio && track.source == TrackSource::Microphone)
            .then_some(packet.header.ext_vals.audio_level)
            .flatten();
        let record_verdict = if p.recorded {
            track.record.decide(layer, starts)
        } else {
            Verdict::Drop
        };
        let kind_metrics = self.metrics.kind(video);
        kind_metrics.packets_in.inc();
        kind_metrics.bytes_in.inc_by(packet.payload.len() as u64);
        // Counted once after the fan-out, not per copy: two atomics per subscriber, and a
        // clone of every metric handle per packet before (1-2 % of the server's CPU in the
        // follow-up load).
        let (mut packets_out, mut bytes_out) = (0u64, 0u64);
        if record_verdict != Verdict::Drop {
            self.outputs.push_back(SfuOutput::Record(RecordedPacket {
                participant: id,
                track: track_id,
                kind,
                codec: spec.codec,
                clock_rate,
                ssrc: *ssrc,
                seq: *packet.seq_no,
                rtp_time: packet.header.timestamp,
                marker: packet.header.marker,
                arrival: packet.timestamp,
                payload: primary.clone().unwrap_or_else(|| packet.payload.clone()),
                starts_run: record_verdict == Verdict::Switched,
            }));
        }

        if let (Some(level), Some(r)) = (speech, self.room_members.get_mut(&room)) {
            r.speaker.on_level(id, level);
        }
        if newly_active {
            // A layer started (a new track, or one the publisher sends again): its
            // subscribers' allocations take it into account before this packet is forwarded.
            for sub in self.members_except(room, id) {
                self.allocate(now, sub);
            }
        }
        let Some(members) = self.room_members.get(&room) else {
            return;
        };
        let ext = forwarded_extensions(&packet.header.ext_vals);
        for sub_id in &members.members {
            if *sub_id == id {
                continue;
            }
            let Some(s) = self.participants.get_mut(sub_id) else {
                continue;
            };
            let Some(t) = s.tracks_out.iter_mut().find(|t| t.track == track_id) else {
                continue;
            };
            let TrackOutState::Open(out_mid) = t.state else {
                continue;
            };
            match t.switch.decide(layer, starts) {
                Verdict::Drop => continue,
                Verdict::Switched => {
                    t.rewriter.restart();
                    if gated {
                        self.metrics.layer_switches.inc();
                    }
                }
                Verdict::Forward => {}
            }
            let out = match t.rewriter.rewrite(
                now,
                *ssrc,
                *packet.seq_no,
                packet.header.timestamp,
                clock_rate,
                vp8.as_ref(),
            ) {
                Ok(out) => out,
                Err(Skip::Old) => {
                    self.metrics.drop_packet(DropReason::BeforeSubscribe);
                    continue;
                }
                Err(Skip::Temporal) => {
                    self.metrics.temporal_drops.inc();
                    continue;
                }
            };
            let (pt_plain, pt_red) = match t.pt_map {
                Some((pin, plain, red_pt)) if pin == pt => (plain, red_pt),
                _ => match negotiated_pt(&s.rtc, out_mid, params) {
                    Some(local) => {
                        t.pt_map = Some((pt, local.0, local.1));
                        local
                    }
                    None => {
                        // The subscriber cannot decode the publisher's codec (an SFU does not
                        // transcode): counted, and the subscriber's other tracks carry on.
                        self.metrics.drop_packet(DropReason::NotWritable);
                        continue;
                    }
                },
            };
            let mut api = s.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(out_mid, None) else {
                self.metrics.drop_packet(DropReason::NotWritable);
                continue;
            };
            if t.history != Some(s.retransmit_window) {
                // str0m keeps 3 s (up to 1024 packets) by default: most of a subscriber's
                // memory at video rates. Keep what NACKs can still use (the window follows the
                // subscriber's round trip; resizing drops the history, so it changes rarely).
                tx.set_rtx_cache(
                    RETRANSMIT_HISTORY_PACKETS,
                    s.retransmit_window,
                    Some(RTX_RATIO_CAP),
                );
                t.history = Some(s.retransmit_window);
            }
            // RED goes whole only to a subscriber that negotiated it and whose link wants it
            // now; everyone else gets the primary block as plain Opus.
            let (pt_out, payload) = match (&primary, pt_red) {
                (Some(_), Some(red_pt)) if s.red.on() => (red_pt, packet.payload.clone()),
                (Some(p), _) => (pt_plain, p.clone()),
                (None, _) => (pt_plain, packet.payload.clone()),
            };
            let payload_len = payload.len();
            let mut write = RtpWrite::new(
                pt_out,
                out.seq.into(),
                out.rtp_time,
                packet.timestamp,
                payload,
            )
            .marker(packet.header.marker)
            .ext_vals(ext.clone())
            .nackable(video);
            if let Some(patch) = out.vp8 {
                write = write.vp8_patch(patch);
            }
            tx.write_rtp(write);
            s.sent_packets += 1;
            packets_out += 1;
            bytes_out += payload_len as u64;
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(*sub_id);
            }
            s.dirty_since.get_or_insert(now);
        }
        let kind_metrics = self.metrics.kind(video);
        kind_metrics.packets_out.inc_by(packets_out);
        kind_metrics.bytes_out.inc_by(bytes_out);
    }

    /// A subscriber asked for a keyframe on one of its received tracks. It reaches the
    /// publisher (for the layer the subscriber receives) only when nothing else will bring
    /// one: not while a switch already waits for a keyframe, not while the track is paused,
    /// and at most once per [`participant::SUBSCRIPTION_PLI_INTERVAL`] per subscription.
    fn relay_keyframe_request(&mut self, now: Instant, id: ParticipantId, req: KeyframeRequest) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        let Some(t) = p.tracks_out.iter_mut().find(|t| t.mid() == Some(req.mid)) else {
            return;
        };
        let recent = t.last_pli.is_some_and(|at| {
            now.saturating_duration_since(at) < participant::SUBSCRIPTION_PLI_INTERVAL
        });
        let layer = match t.switch.current {
            Some(layer) if !t.switch.waiting() && !recent => layer,
            _ => {
                self.metrics.keyframe_requests_absorbed.inc();
                return;
            }
        };
        t.last_pli = Some(now);
        let (publisher, mid) = (t.publisher, t.source_mid);
        self.request_keyframe(now, publisher, mid, layer, req.kind);
    }

    /// Ask `publisher` for a keyframe of `layer` on `mid`, at most once per throttle interval.
    fn request_keyframe(
        &mut self,
        now: Instant,
        publisher: ParticipantId,
        mid: Mid,
        layer: usize,
        kind: KeyframeRequestKind,
    ) {
        self.request_keyframe_within(
            now,
            publisher,
            mid,
            layer,
            kind,
            self.config.keyframe_throttle,
        );
    }

    /// Ask `publisher` for a keyframe of `layer` on `mid` unless one went out within
    /// `interval`. Only that layer's encoder is asked: a subscriber of the low layer does not
    /// make the publisher send keyframes to everyone.
    fn request_keyframe_within(
        &mut self,
        now: Instant,
        publisher: ParticipantId,
        mid: Mid,
        layer: usize,
        kind: KeyframeRequestKind,
        interval: Duration,
    ) {
        let Some(p) = self.participants.get_mut(&publisher) else {
            return;
        };
        let Some(track) = p.track_in_mut(mid) else {
            return;
        };
        let layer = layer.min(MAX_LAYERS - 1);
        if !track.layers[layer].keyframe.allow(now, interval) {
            self.metrics.keyframe_requests_throttled.inc();
            return;
        }
        // The rid of that layer (indexes follow the rids' names: q and f are 0 and 2).
        let rid = track
            .rids
            .iter()
            .copied()
            .find(|r| track.layer_of_rid(&r.to_string()) == layer);
        let mut api = p.rtc.direct_api();
        let Some(rx) = api.stream_rx_by_mid(mid, rid) else {
            return;
        };
        rx.request_keyframe(kind);
        self.metrics
            .keyframe_requests_sent
            .with_label_values(&[keyframe_kind_label(kind)])
            .inc();
        if !p.dirty {
            p.dirty = true;
            self.dirty.push(publisher);
        }
    }

    /// A subscriber's layout changed.
    fn set_preferences(&mut self, now: Instant, id: ParticipantId, prefs: &[TrackPreference]) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        for pref in prefs {
            let Some(track) = pref
                .track_id
                .strip_prefix('t')
                .and_then(|n| n.parse().ok())
                .map(TrackId)
            else {
                continue;
            };
            if let Some(t) = p.tracks_out.iter_mut().find(|t| t.track == track) {
                let raised = match (t.pref.max_fps, pref.max_fps) {
                    (Some(old), Some(new)) => new > old,
                    (Some(_), None) => true,
                    _ => false,
                };
                if raised {
                    p.allocator.limit_raised(track, now);
                }
                t.pref = Preference {
                    visible: pref.visible,
                    max_height: pref.max_height,
                    max_fps: pref.max_fps,
                    pinned: pref.pinned,
                };
            }
        }
        self.reallocate.push(id);
    }

    /// The periodic round: measure every layer, pick the layer each recording takes, and
    /// allocate for every subscriber.
    fn allocation_round(&mut self, now: Instant) {
        let mut record_keyframes = Vec::new();
        for p in self.participants.values_mut() {
            for t in &mut p.tracks_in {
                for m in &mut t.layers {
                    m.tick(now);
                }
                t.red.tick(now);
                if t.simulcast() {
                    let best = (0..MAX_LAYERS).rev().find(|l| t.layers[*l].active(now));
                    if best.is_some() && best != t.record.target {
                        t.record.set_target(best);
                    }
                }
                // A recording that waits for a keyframe of its layer (its start, or a switch)
                // asks again every round: the browser ignores requests that come too soon
                // after its last keyframe, and the recorder sees nothing of the track until
                // the keyframe arrives, so it cannot ask itself.
                if p.recorded && t.kind == MediaKind::Video && t.record.waiting() {
                    record_keyframes.push((p.id, t.mid, t.record.target.unwrap_or(0)));
                }
            }
        }
        for (publisher, mid, layer) in record_keyframes {
            self.request_keyframe_within(
                now,
                publisher,
                mid,
                layer,
                KeyframeRequestKind::Pli,
                RECORDER_KEYFRAME_RETRY,
            );
        }
        let mut spoken = Vec::new();
        for r in self.room_members.values_mut() {
            if let Some(speaker) = r.speaker.tick(now) {
                spoken.push((r.members.clone(), speaker));
            }
        }
        for (members, speaker) in spoken {
            for m in members {
                self.signal(
                    m,
                    ServerMessage::ActiveSpeaker {
                        participant_id: speaker.map(|s| s.to_string()),
                    },
                );
            }
        }
        for p in self.participants.values_mut() {
            p.tick_headers(now);
        }
        let ids: Vec<ParticipantId> = self.participants.keys().copied().collect();
        for id in ids {
            self.allocate(now, id);
        }
        let (paused, allocated) = self.participants.values().fold((0, 0), |(n, b), p| {
            (n + p.allocator.paused(), b + p.allocated_video)
        });
        self.metrics.paused_tracks.set(paused as i64);
        self.metrics.allocated_video_bps.set(allocated as i64);
        self.dynacast_round(now);
        self.speech_cap_round(now);
    }

    /// Ask microphones for less while a subscriber of theirs has a link that barely carries
    /// the audio (see [`speech_cap`]); lift it once no subscriber is tight for a while.
    fn speech_cap_round(&mut self, now: Instant) {
        let mut tight: HashMap<TrackId, bool> = HashMap::new();
        for s in self.participants.values() {
            if !s.audio_room.tight() {
                continue;
            }
            for t in &s.tracks_out {
                if t.kind == MediaKind::Audio && matches!(t.state, TrackOutState::Open(_)) {
                    tight.insert(t.track, true);
                }
            }
        }
        let mut asks = Vec::new();
        let mut capped = 0;
        for p in self.participants.values_mut() {
            for t in &mut p.tracks_in {
                if t.kind != MediaKind::Audio || t.source != TrackSource::Microphone {
                    continue;
                }
                let wanted = tight.contains_key(&t.id);
                if let Some(cap) = t.speech_cap.update(now, wanted) {
                    debug!(participant = %p.id, track = %t.id, ?cap, "speech cap");
                    self.metrics
                        .speech_cap_changes
                        .with_label_values(&[if cap.is_some() { "on" } else { "off" }])
                        .inc();
                    asks.push((p.id, t.mid.to_string(), cap));
                }
                capped += i64::from(t.speech_cap.sent().is_some());
            }
        }
        self.metrics.speech_capped_microphones.set(capped);
        for (id, mid, max_bitrate) in asks {
            self.signal(id, ServerMessage::PublishAudio { mid, max_bitrate });
        }
    }

    /// Ask publishers to send only the simulcast layers somebody would receive (see
    /// [`dynacast`]): the ladder up to the largest layer any subscriber's tile asks for, all of
    /// it while the track is recorded, none while nobody shows it.
    fn dynacast_round(&mut self, now: Instant) {
        let mut wanted: HashMap<TrackId, dynacast::LayerMask> = HashMap::new();
        for s in self.participants.values() {
            for t in &s.tracks_out {
                if t.kind != MediaKind::Video
                    || !t.pref.visible
                    || matches!(
                        t.state,
                        TrackOutState::ToStop(_) | TrackOutState::NegotiatingStop(_)
                    )
                {
                    continue;
                }
                let Some(tin) = self.track_in(t.publisher, t.track) else {
                    continue;
                };
                if !tin.simulcast() {
                    continue;
                }
                let top = max_layer_for(&tin.layers, t.pref.max_height);
                *wanted.entry(t.track).or_default() |= dynacast::up_to(top);
            }
        }
        let mut asks = Vec::new();
        let mut off = 0;
        for p in self.participants.values_mut() {
            for t in &mut p.tracks_in {
                if !t.simulcast() {
                    continue;
                }
                let declared = t.declared_layers();
                let want = if p.recorded {
                    declared
                } else {
                    wanted.get(&t.id).copied().unwrap_or(0)
                };
                let before = t.dynacast.sent().unwrap_or(declared);
                if let Some(next) = t.dynacast.update(now, declared, want) {
                    let direction = if next & !before != 0 { "on" } else { "off" };
                    self.metrics
                        .dynacast_changes
                        .with_label_values(&[direction])
                        .inc();
                    let rids: Vec<String> = t
                        .rids
                        .iter()
                        .map(|r| r.to_string())
                        .filter(|r| next & (1 << t.layer_of_rid(r)) != 0)
                        .collect();
                    debug!(participant = %p.id, track = %t.id, ?rids, "dynacast: layers to send");
                    asks.push((p.id, t.mid.to_string(), rids));
                }
                let sent = t.dynacast.sent().unwrap_or(declared);
                off += (declared & !sent).count_ones() as i64;
            }
        }
        self.metrics.dynacast_layers_off.set(off);
        for (id, mid, rids) in asks {
            self.signal(id, ServerMessage::PublishLayers { mid, rids });
        }
    }

    /// Allocate subscriber `id`'s estimate over the videos it receives (see [`allocation`]),
    /// then carry the outcome out: targets, keyframe requests for pending switches,
    /// pause/resume notices, and the bitrates its bandwidth estimator aims for.
    fn allocate(&mut self, now: Instant, id: ParticipantId) {
        let Some(s) = self.participants.get(&id) else {
            return;
        };
        let mut videos = Vec::new();
        let mut audio = 0;
        let mut audio_with_red = 0;
        // The lowest layers of the videos that flow now (what the carried floor may keep).
        let mut lowest_flowing = 0;
        // Per received video, the highest temporal layer its `max_fps` allows, per layer.
        let mut temporal = Vec::new();
        for t in &s.tracks_out {
            if !matches!(t.state, TrackOutState::Open(_)) {
                continue;
            }
            let Some(tin) = self.track_in(t.publisher, t.track) else {
                continue;
            };
            if t.kind == MediaKind::Audio {
                audio += tin.layers[0].bitrate();
                audio_with_red += if tin.red.active(now) {
                    tin.red.bitrate()
                } else {
                    tin.layers[0].bitrate()
                };
                continue;
            }
            let speaker = self
                .room_members
                .get(&s.room)
                .and_then(|r| r.speaker.current());
            let v = video_track(now, t, tin, speaker == Some(t.publisher));
            temporal.push((
                t.track,
                tin.layers
                    .iter()
                    .map(|m| m.temporal.tid_for(t.pref.max_fps))
                    .collect::<Vec<u8>>(),
            ));
            if t.switch.target.is_some() {
                lowest_flowing += v.layers.iter().flatten().next().copied().unwrap_or(0);
            }
            videos.push(v);
        }
        let Some(s) = self.participants.get_mut(&id) else {
            return;
        };
        if s.estimate.is_some() {
            self.metrics
                .subscriber_estimate
                .observe(s.estimate.unwrap_or(0) as f64);
        }
        // Estimates count payloads; the allocation counts packets on the wire.
        // The congestion cap is in wire bits already (what the link delivered).
        let cap = s.congestion_cap(now).unwrap_or(u64::MAX);
        // What flows now and the link carries without loss is kept through the estimator's
        // dips (see `delivery`); resumes still go by the sustained estimate.
        let carried = s.estimate.and(s.delivery.carried_floor(now)).unwrap_or(0);
        let estimate = s.wire_estimate(s.estimate.unwrap_or(NO_ESTIMATE)).min(cap);
        let sustained = s.sustained_estimate(now).unwrap_or(NO_ESTIMATE);
        let sustained = s
            .wire_estimate(sustained)
            .min(cap)
            .min(s.link_ceiling(now).unwrap_or(u64::MAX));
        // Tightness in the estimator's own units (payload): see `speech_cap`.
        let (sustained_payload, audio_payload) = (s.payload_rate(sustained), s.payload_rate(audio));
        s.audio_room.update(
            now,
            sustained_payload,
            audio_payload,
            s.allocated_video > 0,
            cap != u64::MAX,
            s.embargoed(now),
        );
        let was_red = s.red.on();
        let has_video = !videos.is_empty();
        if s.red.decide(
            sustained,
            audio,
            audio_with_red,
            s.allocated_video,
            s.congested_within(now, participant::CONGESTION_MEMORY),
            s.queued_within(now, red::QUEUE_MEMORY),
            has_video,
            s.audio_room.tight(),
        ) {
            audio = audio_with_red;
        }
        if s.red.on() != was_red {
            debug!(participant = %id, red = s.red.on(), loss = ?s.red.loss(), sustained, audio_with_red, video = s.allocated_video, queue_ms = ?s.queue_delay.map(|d| d.as_millis()), "RED audio");
            self.metrics
                .red_subscribers
                .add(if s.red.on() { 1 } else { -1 });
        }
        // Padding probes (see [`probe`]) run on last round's goal; a window that proved its
        // goal lets the allocator take that step once.
        let (last_sending, last_goal) = s.probe_inputs;
        // No padding into a link known to be overfilled (str0m pads up to its own estimate,
        // which has not fallen yet).
        // Nor into one that barely carries the audio: every probe there costs voices.
        let last_goal = last_goal.filter(|_| cap == u64::MAX && !s.audio_room.tight());
        if s.queue_delay >= Some(participant::FULL_QUEUE) {
            s.prober.queue_met(now);
        }
        let probe = s.prober.tick(now, estimate, last_sending, last_goal);
        let (estimate, sustained) = match last_goal {
            Some(goal) if probe.proven => {
                // The step is taken on a budget that leaves a climb its headroom
                // (`allocation::UPGRADE_HEADROOM`): the padding proved the link carries the
                // step, and without this a subscriber on a clean link whose estimate sat
                // between the two (3.55 against 3.82 Mbit/s for two 1.7 Mbit/s cameras) was
                // proven again and again and never climbed, and each change of the active
                // speaker swapped its two videos' layers (a keyframe from each publisher).
                // The padding's goal stays the step's own rate: a goal with the headroom in
                // it starts probing later (its reach is a share of the goal), and a link
                // cleared after a cut took 14 s instead of 7-8 s to get back to the top.
                let step =
                    (goal.saturating_sub(last_sending) as f64 / allocation::RESUME_MARGIN) as u64;
                let room =
                    ((last_sending + step) as f64 / (1.0 - allocation::UPGRADE_HEADROOM)) as u64;
                let room = room.max(goal);
                debug!(participant = %id, goal, room, estimate, "probe proved the next step: trying it");
                (estimate.max(room), sustained.max(room))
            }
            _ => (estimate, sustained),
        };
        // Only as far as the lowest layers of what flows: the floor saves a video from a pause
        // on an estimator's dip, it does not hold a high layer against a delay-based backoff
        // (a link with a deep buffer delays long before it loses). The prober above judges its
        // padding by the estimator's own estimate.
        // And within the memory of an overfilling, most of what the link delivered then is a
        // floor too while it loses little now: the estimator keeps falling for seconds after a
        // cut (Chromium at 300 kbit/s: to ~200 kbit/s 4-5 s after it, below the voices and one
        // low layer), while the carried floor still waits for two clean seconds; the one video
        // that fitted was paused for 2-4 s.
        let ceiling_floor = s
            .link_ceiling(now)
            .filter(|_| {
                s.delivery
                    .last_loss()
                    .is_some_and(|l| l < CEILING_FLOOR_LOSS)
            })
            .map_or(0, |c| (c as f64 * CEILING_FLOOR_SHARE) as u64);
        let kept = estimate.max(
            carried
                .max(ceiling_floor)
                .min(cap)
                .min(audio + lowest_flowing),
        );
        let outcome = s
            .allocator
            .allocate_sustained(now, kept, sustained, audio, &videos);
        s.allocated_video = outcome.allocated;
        // The round that pauses the last video of an overfilled link makes it tight for the
        // voices now, not at the next round: the microphones are asked for less at once
        // (Chromium, a cut to 120 kbit/s: the cap went out ~0.5 s after the pause, the voices
        // still filling the link meanwhile).
        // The header rate counts everything forwarded: in the rounds after a cut it still
        // holds the paused videos' headers and may exceed the audio, whose payload must not
        // read as no audio here (the microphones were asked for less only ~0.5-1 s later,
        // Chromium at 120 kbit/s). Only here: elsewhere a subscriber whose estimate does not
        // exceed its header rate yet (joining) would read as tight.
        let newly_tight = cap != u64::MAX
            && outcome.allocated == 0
            && audio > 0
            && !s.audio_room.tight()
            && s.audio_room.update(
                now,
                sustained_payload,
                audio_payload.max(1),
                false,
                true,
                s.embargoed(now),
            );
        let mut signals = Vec::new();
        for c in &outcome.changes {
            debug!(participant = %id, track = %c.track, from = ?c.from, to = ?c.to, estimate, audio, "allocation changed");
            let Some(t) = s.tracks_out.iter_mut().find(|t| t.track == c.track) else {
                continue;
            };
            t.switch.set_target(c.to.layer());
            // Going down on an overfilled link is the same: the old layer stops at once (see
            // `LayerSwitch::set_target`), and what str0m still queues of it would only keep the
            // link full ahead of the voices (simulator, a cut to 300 kbit/s that keeps one video
            // at its lowest layer: 55 of the first 200 voice packets arrived, 140 when paused).
            let congested_down = cap != u64::MAX
                && matches!((c.from, c.to), (Target::Layer(a), Target::Layer(b)) if b < a);
            if c.to == Target::Paused || congested_down {
                // Nothing more of a paused video will be decoded (it resumes on a keyframe):
                // what str0m still holds of it would only take the link from the audio. At a
                // cut to 120 kbit/s the pacer queue, filled while the estimate was high, kept
                // the link full for 3 s after the pause (simulator).
                if let Some(mid) = t.mid() {
                    if let Some(tx) = s.rtc.direct_api().stream_tx_by_mid(mid, None) {
                        tx.drop_unsent();
                    }
                }
            }
            let direction = match (c.from, c.to) {
                (Target::Paused, Target::Layer(_)) => Some("resume"),
                (_, Target::Paused) => Some("pause"),
                (Target::Layer(a), Target::Layer(b)) if b > a => Some("up"),
                (Target::Layer(a), Target::Layer(b)) if b < a => Some("down"),
                _ => None,
            };
            if let Some(d) = direction {
                self.metrics.layer_changes.with_label_values(&[d]).inc();
            }
            if c.to == Target::Paused {
                signals.push(ServerMessage::TrackPaused {
                    participant_id: t.publisher.to_string(),
                    track_id: t.track.to_string(),
                    reason: "bandwidth".into(),
                });
            } else if c.from == Target::Paused {
                signals.push(ServerMessage::TrackResumed {
                    participant_id: t.publisher.to_string(),
                    track_id: t.track.to_string(),
                });
            }
        }
        // The temporal layers follow the spatial layer being switched to.
        for (track, tids) in temporal {
            if let Some(t) = s.tracks_out.iter_mut().find(|t| t.track == track) {
                let layer = t.switch.target.or(t.switch.current);
                if let Some(tid) = layer.and_then(|l| tids.get(l)) {
                    t.rewriter.temporal.set_target(*tid);
                }
            }
        }
        // Every switch still waiting asks for its keyframe (throttled per layer, so a lost
        // request is repeated at the next round).
        let wanted: Vec<(ParticipantId, Mid, usize)> = s
            .tracks_out
            .iter()
            .filter(|t| t.switch.waiting())
            .filter_map(|t| t.switch.target.map(|l| (t.publisher, t.source_mid, l)))
            .collect();
        // While a video waits for bandwidth, the link is kept busy (padding) up to what would
        // let it go, when that is within reach (see [`probe`]); otherwise nothing beyond the
        // media: on a link that barely carries the audio, padding costs audio packets.
        let sending = outcome.allocated + audio;
        // Nor beyond the rate the link delivered when it was last overfilled, while that
        // bounds resumes (`Participant::link_ceiling`): the step could not be taken anyway,
        // and padding towards it overfilled a link cut to 300 kbit/s 10 s after the cut
        // (simulator: ~100 kbit/s of padding for 4 s, a fifth of the voices lost).
        let ceiling = s.link_ceiling(now).unwrap_or(u64::MAX);
        let goal = outcome
            .next_step
            .map(|n| sending + (n as f64 * allocation::RESUME_MARGIN) as u64)
            .or(s.red.waiting().map(|extra| sending + extra))
            .filter(|goal| *goal <= ceiling);
        if outcome
            .changes
            .iter()
            .any(|c| c.to.layer() > c.from.layer() || c.from == Target::Paused)
        {
            // Something got better: the link has room, probe again soon.
            s.probe_backoff = PROBE_INTERVAL;
            s.prober.step_taken(now, estimate);
        }
        if outcome.changes.iter().any(|c| c.to == Target::Paused) {
            s.prober.setback(now);
        }
        // A round without an estimate (before the media connects) allocates every top layer:
        // its rate is no minimum for the first round with one. With it, str0m padded a link
        // that had just joined at 300 kbit/s up to its initial estimate (~600 kbit/s, Chromium
        // in CI): 35-44 % was lost, both videos were paused, the first frame came after 14 s.
        s.probe_inputs = if s.estimate.is_some() {
            (sending, goal)
        } else {
            (0, None)
        };
        let minimum = probe.minimum.max(sending);
        // str0m takes payload rates.
        if !s.audio_room.tight() || s.embargoed(now) {
            s.tight_wish = None;
        }
        let desired = if s.embargoed(now) {
            // Overfilled lately: no wish beyond what is sent. str0m's estimate lags the cut by
            // seconds, and sending far below it starts its periodic probes at twice the
            // desired rate: with the whole call's wish, bursts of padding kept a link cut to
            // 120 kbit/s full for seconds after every video was paused.
            minimum
        } else if s.audio_room.tight() {
            // Tight for the voices: wish for just the room that would ease it (see
            // `speech_cap::ROOMY`), so that a probe can show a link that recovered, and no more
            // (str0m's periodic probes burst at twice the wish).
            let roomy = (audio_payload as f64 * speech_cap::ROOMY * 1.1) as u64;
            let wish = s.wire_estimate(roomy);
            // Held while the voices' rate wobbles: str0m starts an allocation probe each time
            // the desired rate rises above the estimate, and a wish that followed the voices
            // round by round rose every second or two (Chromium at 120 kbit/s: probe clusters
            // every 1-2 s, the voices losing a few packets to most of them).
            let held = s.tight_wish.filter(|h| {
                let ratio = wish as f64 / *h as f64;
                (1.0 / TIGHT_WISH_BAND..=TIGHT_WISH_BAND).contains(&ratio)
            });
            let held = held.unwrap_or(wish);
            s.tight_wish = Some(held);
            held.max(minimum)
        } else {
            // At least a little over half the estimate. str0m's periodic probe, while the link
            // is used below its estimate, goes at twice the desired rate and its result replaces
            // the estimate: a wish under half the estimate probed below it, the link carried the
            // probe whole, and the estimate fell to the probe's rate (Chromium on loopback,
            // the top layer at `max_fps` 10: 1.0 -> 0.4 Mbit/s in 4 s, and the top layer was
            // lost when the full frame rate came back; at a call's start the same held a clean
            // link on the lowest layer for ~10 s). The desired rate steers only str0m's probes,
            // never padding. Not while overfilled or tight (above): there a probe below a
            // stale estimate is what brings it down to the link's rate.
            let half = s.estimate.map_or(0, |e| {
                s.wire_estimate((e as f64 * PROBE_ABOVE_ESTIMATE / 2.0) as u64)
            });
            outcome.desired.max(minimum).max(half)
        };
        let mut targets = (s.payload_rate(minimum), s.payload_rate(desired));
        // A link tight for the audio is probed too, once the embargo after its last
        // overfilling is over (`participant::PROBE_EMBARGO`): the probe is one short cluster just above the estimate (the
        // desired rate there is twice the media), and without it an audio-only link that
        // recovered may never show it (its estimate stays near 1.5 times the audio, and
        // str0m's periodic probes need the audio below 65 % of the estimate: simulator, 1 run
        // in 15 stayed audio-only for 90 s after the link cleared).
        // A ceiling that outlived its memory on a link with no video waits for a probe to
        // measure the link (see `Participant::link_ceiling`): one is asked above the estimate,
        // whatever the wish, since the stale estimate is what it must replace.
        let measure = outcome.next_step.is_some()
            && !s.embargoed(now)
            && s.ceiling_wants_probe(now)
            && s.estimate.is_some();
        if measure {
            let stale = s.estimate.unwrap_or(0);
            targets.1 = targets.1.max((stale as f64 * CEILING_PROBE_ABOVE) as u64);
            s.ceiling_probed = Some(now);
            debug!(participant = %id, estimate = stale, desired = targets.1, "the link's ceiling lapses: probe asked to measure it first");
        }
        let probe = outcome.next_step.is_some()
            && !s.embargoed(now)
            && s.estimate.is_some_and(|e| e < targets.1)
            && (measure || s.next_probe.is_none_or(|t| now >= t));
        if probe {
            // str0m probes when the desired rate rises above the estimate, once: a paused
            // video or a pending upgrade would otherwise wait for the estimate to grow on
            // its own, which a link carrying little media never makes it do. Probes that
            // bring nothing come less often (up to PROBE_INTERVAL_MAX): each one briefly
            // sends more than the estimate.
            debug!(participant = %id, minimum = targets.0, desired = targets.1, estimate = ?s.estimate, "str0m probe asked");
            s.next_probe = Some(now + s.probe_backoff);
            s.probe_backoff = (s.probe_backoff * 2).min(PROBE_INTERVAL_MAX);
            s.rtc
                .bwe()
                .set_bitrate(Bitrate::bps(targets.0), Bitrate::bps(targets.0));
            s.bwe_targets = (0, 0);
        }
        // The feedback for what it publishes shares this link (see [`feedback`]).
        let twcc = feedback::interval(s.estimate.map(|_| sustained));
        if twcc != s.twcc_interval {
            s.twcc_interval = twcc;
            s.rtc.direct_api().set_twcc_feedback_interval(twcc);
        }
        // str0m pads every link up to 50 kbit/s while media flows, for its own probing. Into a
        // link that carries no video that is pure cost (on a 120 kbit/s link it crowds out the
        // voices): the prober above pads when a paused video may come back, and only then.
        let padding_floor = outcome.allocated > 0;
        if padding_floor != s.padding_floor {
            s.padding_floor = padding_floor;
            let floor = (!padding_floor).then_some(Bitrate::ZERO);
            s.rtc.bwe().set_padding_floor(floor);
        }
        if targets != s.bwe_targets && s.estimate.is_some() {
            s.bwe_targets = targets;
            s.rtc
                .bwe()
                .set_bitrate(Bitrate::bps(targets.0), Bitrate::bps(targets.1));
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(id);
            }
        }
        for m in signals {
            self.signal(id, m);
        }
        for (publisher, mid, layer) in wanted {
            self.request_keyframe(now, publisher, mid, layer, KeyframeRequestKind::Pli);
        }
        if newly_tight {
            self.speech_cap_round(now);
        }
    }

    /// Send a server offer to everyone whose subscriptions changed and who can take one.
    fn negotiate_all(&mut self) {
        let ids: Vec<ParticipantId> = self
            .participants
            .values()
            .filter(|p| {
                p.mode == PeerMode::Full
                    && p.negotiated_once
                    && p.pending.is_none()
                    && needs_negotiation(p)
            })
            .map(|p| p.id)
            .collect();
        for id in ids {
            self.negotiate(id);
        }
    }

    fn negotiate(&mut self, id: ParticipantId) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        let mut change = p.rtc.sdp_api();
        let mut added = Vec::new();
        for t in &mut p.tracks_out {
            match t.state {
                TrackOutState::ToOpen => {
                    let mid = change.add_media(
                        t.kind,
                        Direction::SendOnly,
                        Some(t.publisher.to_string()),
                        Some(t.track.to_string()),
                        None,
                    );
                    t.state = TrackOutState::Negotiating(mid);
                    added.push(t.announcement(mid));
                }
                TrackOutState::ToStop(mid) => {
                    change.stop_media(mid);
                    t.state = TrackOutState::NegotiatingStop(mid);
                    self.metrics
                        .kind(t.kind == MediaKind::Video)
                        .subscribed
                        .dec();
                }
                _ => {}
            }
        }
        let Some((offer, pending)) = change.apply() else {
            return;
        };
        p.pending = Some(pending);
        let sdp = offer.to_sdp_string();
        // Kept while it waits for the answer: a client that resumes after its socket dropped
        // gets it again (see [`Sfu::resume`]).
        p.offer_sdp = Some(sdp.clone());
        self.metrics.renegotiations.inc();
        for m in added {
            self.signal(id, m);
        }
        // Forwarded m-lines keep transport-wide congestion control: the subscriber's feedback
        // drives the send-side bandwidth estimate the allocation runs on.
        self.signal(id, ServerMessage::Offer { sdp });
    }
}

/// The direction attribute of each audio or video m-section (`sendrecv` when absent).
pub fn m_line_directions(sdp: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    let mut media = false;
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            media = m.starts_with("audio") || m.starts_with("video");
            if media {
                out.push("sendrecv");
            }
        } else if media {
            if let Some(d) = ["sendrecv", "sendonly", "recvonly", "inactive"]
                .into_iter()
                .find(|d| line.strip_prefix("a=") == Some(*d))
            {
                if let Some(last) = out.last_mut() {
                    *last = d;
                }
            }
        }
    }
    out
}

/// The SSRC of an RTP packet (not RTCP, RFC 5761: payload types 192-223 are RTCP).
fn rtp_ssrc(bytes: &[u8]) -> Option<u32> {
    if demux::classify(bytes) != demux::PacketClass::Rtp || bytes.len() < 12 {
        return None;
    }
    if (192..=223).contains(&bytes[1]) {
        return None;
    }
    Some(u32::from_be_bytes(bytes[8..12].try_into().ok()?))
}

/// A candidate that does not parse. The parser's message quotes the whole line, address
/// included (personal data, and the refusal is logged), and a stranger's 200 KB line came
/// back whole: the reason is fixed.
fn candidate_error() -> SfuError {
    SfuError::InvalidCandidate("not an ICE candidate line (RFC 8839 a=candidate)".into())
}

/// An SDP error for the client: the parser's message without its internal pointer dump.
fn sdp_error(e: impl fmt::Display) -> SfuError {
    let text = e.to_string();
    let detail: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains("PointerOffset"))
        .collect();
    SfuError::InvalidSdp(detail.join("; "))
}

/// The subscriber-side payload type for `params`, if the subscriber accepted that codec on
/// `mid` in its answer, and its RED payload type for that codec if it negotiated RED.
fn negotiated_pt(rtc: &Rtc, mid: Mid, params: PayloadParams) -> Option<(Pt, Option<Pt>)> {
    let local = rtc.codec_config().match_params(params)?;
    let media = rtc.media(mid)?;
    media
        .remote_pts()
        .contains(&local.pt())
        .then(|| (local.pt(), local.red()))
}

/// The primary (last) block of a RED payload (RFC 2198), `None` when it does not parse.
fn red_primary(payload: &[u8]) -> Option<Arc<[u8]>> {
    let blocks = str0m::rtp::RedDecoder::decode(payload).ok()?;
    let primary = blocks.into_iter().find(|b| b.is_primary)?;
    Some(Arc::from(primary.payload))
}

fn needs_negotiation(p: &Participant) -> bool {
    p.tracks_out
        .iter()
        .any(|t| matches!(t.state, TrackOutState::ToOpen | TrackOutState::ToStop(_)))
}

fn new_track_out(track: &TrackIn, publisher: ParticipantId) -> TrackOut {
    // Audio flows from its first packet; a video waits for its allocation.
    let switch = match track.kind {
        MediaKind::Audio => LayerSwitch {
            current: Some(0),
            target: Some(0),
        },
        MediaKind::Video => LayerSwitch::default(),
    };
    TrackOut {
        track: track.id,
        publisher,
        source_mid: track.mid,
        kind: track.kind,
        source: track.source,
        state: TrackOutState::ToOpen,
        stop_when_open: false,
        rewriter: Default::default(),
        switch,
        last_pli: None,
        pref: Preference::default(),
        pt_map: None,
        history: None,
    }
}

/// One received video as the allocator sees it: the layers its publisher sends now (with
/// their measured bitrates), its priority and the subscriber's size limit.
fn video_track(now: Instant, t: &TrackOut, tin: &TrackIn, speaking: bool) -> VideoTrack {
    // Layer indexes follow the rids' names, not their count: a publisher sending q and f
    // has layers 0 and 2.
    let mut layers = [None; MAX_LAYERS];
    for (i, m) in tin.layers.iter().enumerate() {
        if m.active(now) {
            let measured = m.bitrate();
            let full = if measured > 0 {
                measured
            } else if tin.simulcast() {
                DEFAULT_LAYER_BITRATES[i]
            } else {
                DEFAULT_LAYER_BITRATES[0]
            };
            // A subscriber that wants fewer frames per second costs what its temporal layers
            // carry.
            let share = m.temporal.share_up_to(m.temporal.tid_for(t.pref.max_fps));
            layers[i] = Some((full as f64 * share) as u64);
        }
    }
    let priority = if t.pref.pinned {
        Priority::Pinned
    } else if tin.source == TrackSource::Screen {
        Priority::Screen
    } else if speaking {
        Priority::Speaker
    } else {
        Priority::Normal
    };
    // The size limit names a rung of the ladder; where the publisher skips that rung (q and
    // f only), the next layer it does send is the one tall enough.
    let max_layer = t.pref.visible.then(|| {
        let rung = max_layer_for(&tin.layers, t.pref.max_height);
        (rung..MAX_LAYERS)
            .find(|i| layers[*i].is_some())
            .unwrap_or(rung)
    });
    VideoTrack {
        track: t.track,
        priority,
        layers,
        max_layer,
        // A simulcast camera whose lowest layer is not flowing (its encoder starting) is
        // treated as one layer: pausing it for the price of its upper layers would announce
        // a weak connection for what is only a start.
        single_layer: !tin.simulcast()
            || tin
                .rids
                .iter()
                .map(|r| tin.layer_of_rid(r))
                .min()
                .is_none_or(|low| layers[low].is_none()),
    }
}

/// The lowest layer at least `max_height` tall (the top one without a limit). Heights come
/// from the layers' keyframes; where none is known yet, the usual quarter/half/full ladder of
/// a 720p camera is assumed.
fn max_layer_for(layers: &[LayerMeter], max_height: Option<u32>) -> usize {
    let top = layers.len().saturating_sub(1);
    let Some(wanted) = max_height else {
        return top;
    };
    if let Some(i) = layers
        .iter()
        .position(|m| m.height.is_some_and(|h| h >= wanted))
    {
        return i;
    }
    if layers.iter().any(|m| m.height.is_some()) {
        return top;
    }
    let assumed = [180, 360, 720];
    assumed
        .iter()
        .take(layers.len())
        .position(|h| *h >= wanted)
        .unwrap_or(top)
}

fn track_kind(kind: MediaKind) -> TrackKind {
    match kind {
        MediaKind::Audio => TrackKind::Audio,
        MediaKind::Video => TrackKind::Video,
    }
}

fn keyframe_kind_label(kind: KeyframeRequestKind) -> &'static str {
    match kind {
        KeyframeRequestKind::Pli => "pli",
        KeyframeRequestKind::Fir => "fir",
    }
}

/// Header extensions that describe the media itself and so travel with it. Transport-level
/// ones (transport-cc, abs-send-time, mid, rid) are per hop and set by the subscriber's stack.
fn forwarded_extensions(ext: &ExtensionValues) -> ExtensionValues {
    ExtensionValues {
        audio_level: ext.audio_level,
        voice_activity: ext.voice_activity,
        video_orientation: ext.video_orientation,
        video_content_type: ext.video_content_type,
        ..Default::default()
    }
}

/// React to one str0m event of participant `p`; cross-participant work is returned.
fn on_event(
    p: &mut Participant,
    metrics: &SfuMetrics,
    retransmit: RetransmitPolicy,
    now: Instant,
    event: Event,
) -> Option<Deferred> {
    match event {
        Event::Connected => {
            p.connected = true;
            p.last_rx = now;
            info!(participant = %p.id, "media connected");
            None
        }
        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
            // Not final: before connecting, an ICE-lite agent reports Disconnected whenever it
            // briefly has no candidate pair (e.g. only the client's UDP candidates arrived
            // while the server announces TCP), and a connected agent can recover. A peer that
            // really is gone stops sending and is removed by the liveness sweep within
            // `peer_timeout` (or `connect_timeout` if it never connected).
            debug!(participant = %p.id, connected = p.connected, "ICE reports disconnected");
            None
        }
        Event::MediaAdded(m) if m.direction.is_receiving() => {
            Some(Deferred::TrackPublished(m.mid, m.kind))
        }
        Event::MediaAdded(m) if p.mode == PeerMode::ReceiveOnly && m.direction.is_sending() => {
            Some(Deferred::SlotOffered(m.mid, m.kind))
        }
        Event::MediaChanged(m) => {
            let published = p.tracks_in.iter().any(|t| t.mid == m.mid);
            match (published, m.direction.is_receiving()) {
                (true, false) => Some(Deferred::TrackUnpublished(m.mid)),
                (false, true) => {
                    let kind = p.rtc.media(m.mid).map(|media| media.kind())?;
                    Some(Deferred::TrackPublished(m.mid, kind))
                }
                _ => None,
            }
        }
        Event::RtpPacket(packet) => Some(Deferred::Forward(packet)),
        Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
            let estimate = estimate.as_u64();
            p.note_estimate(now, estimate);
            debug!(participant = %p.id, estimate, "bandwidth estimate");
            // A drop below what is being sent is acted on now; rises wait for the round.
            (estimate < p.allocated_video).then_some(Deferred::Reallocate)
        }
        Event::KeyframeRequest(req) => {
            metrics
                .keyframe_requests_received
                .with_label_values(&[keyframe_kind_label(req.kind)])
                .inc();
            Some(Deferred::KeyframeWanted(req))
        }
        Event::MediaEgressStats(s) => {
            let last = p.stats.nacks.insert((s.mid, true), s.nacks).unwrap_or(0);
            metrics.nacks_received.inc_by(s.nacks.saturating_sub(last));
            if let Some(rtt) = s.rtt {
                p.stats.rtt.insert(s.mid, rtt);
            }
            let rtt = s.rtt.and(p.stats.rtt.values().max().copied());
            if let Some(window) = rtt.and_then(|rtt| retransmit.resize(p.retransmit_window, rtt)) {
                debug!(participant = %p.id, rtt_ms = rtt.map(|r| r.as_millis()), window_ms = window.as_millis(), "retransmission window resized");
                p.retransmit_window = window;
                metrics.retransmit_window_resizes.inc();
            }
            None
        }
        Event::PeerStats(s) => {
            // Loss of everything sent to it over the last second, from its transport-wide
            // feedback: decides whether it gets RED audio, and heavy loss caps its allocation
            // at what the link delivered.
            if let Some(loss) = s.egress_loss_fraction {
                p.red.on_loss(loss);
            }
            tracing::trace!(participant = %p.id, bwe = ?s.bwe_tx, loss = ?s.egress_loss_fraction, received = ?s.egress_received, queuing = ?s.egress_queuing, tx = s.bytes_tx, "peer stats");
            let (cap, signal) = p.note_delivery(
                now,
                s.bytes_tx,
                s.egress_loss_fraction,
                s.egress_received,
                s.egress_queuing,
            )?;
            debug!(participant = %p.id, cap, signal = signal.label(), loss = ?s.egress_loss_fraction, queue_ms = ?s.egress_queuing.map(|q| q.delay.as_millis()), "link overfilled: allocation capped at the delivered rate");
            metrics
                .congestion_caps
                .with_label_values(&[signal.label()])
                .inc();
            Some(Deferred::Reallocate)
        }
        Event::MediaIngressStats(s) => {
            let last = p.stats.nacks.insert((s.mid, false), s.nacks).unwrap_or(0);
            metrics.nacks_sent.inc_by(s.nacks.saturating_sub(last));
            None
        }
        _ => None,
    }
}

#[doc(hidden)]
pub mod sim;

/// How late a participant's session may be driven for a timer of this kind.
///
/// A subscriber's session is driven for every packet forwarded to it (str0m runs whatever
/// timers are due then), and on its own timers in between. RTCP reports tolerate a few
/// milliseconds of lateness, and while media flows the next forwarded packet comes sooner and
/// runs them on the way: driving the session just for them cost a wake-up and a full drive
/// each (~80 of the teaching load's ~1,000 timer drives a second). Statistics (~320 a second
/// there) keep their time: late by up to 20 ms, they moved the congestion signals read from
/// them enough that a simulator test saw a change of active speaker swap a subscriber's two
/// layers in 2 runs of 30 (`the_active_speaker_is_announced_and_a_change_of_speaker_takes_no_
/// layer_away`; 0 of 40 on time). ICE, DTLS, SCTP, pacing, probing, estimation, NACK and the
/// transport-wide feedback to publishers keep their exact time too.
fn timer_slack(reason: str0m::Reason) -> Duration {
    use str0m::Reason;
    match reason {
        Reason::Feedback => TIMER_SLACK,
        _ => Duration::ZERO,
    }
}

/// See [`timer_slack`].
const TIMER_SLACK: Duration = Duration::from_millis(20);

#[cfg(test)]
mod tests;

#[cfg(test)]
mod adaptive_tests;
