//! One participant: its str0m `Rtc`, the tracks it publishes and the tracks it receives.
//!
//! The participant knows nothing of other participants; the room logic in the parent module
//! moves packets and track announcements between participants.

use std::collections::HashMap;
use std::time::Instant;

use str0m::change::SdpPendingOffer;
use str0m::format::PayloadParams;
use str0m::media::{MediaKind, Mid, Pt};
use str0m::rtp::Ssrc;
use str0m::Rtc;

use super::forwarder::SeqRewriter;
use super::keyframe::KeyframeThrottle;
use super::{ParticipantId, RoomKey, TrackId};

/// A track this participant publishes (the server receives it).
#[derive(Debug)]
pub struct TrackIn {
    /// Server-wide id.
    pub id: TrackId,
    /// Media id in this participant's session.
    pub mid: Mid,
    /// Audio or video.
    pub kind: MediaKind,
    /// Throttles keyframe requests towards this track.
    pub keyframe: KeyframeThrottle,
    /// Payload params of the last seen incoming PT, so the lookup is done once per PT.
    pub last_params: Option<(Pt, PayloadParams)>,
}

/// Negotiation state of a forwarded track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackOutState {
    /// Must be added in the next server offer.
    ToOpen,
    /// Offered on `mid`, waiting for the answer.
    Negotiating(Mid),
    /// Flowing on `mid`.
    Open(Mid),
    /// Must be stopped in the next server offer.
    ToStop(Mid),
    /// Stop offered, waiting for the answer.
    NegotiatingStop(Mid),
}

/// A track this participant receives from another participant.
#[derive(Debug)]
pub struct TrackOut {
    /// The published track's id.
    pub track: TrackId,
    /// Its publisher.
    pub publisher: ParticipantId,
    /// Media id of the track in the publisher's session.
    pub source_mid: Mid,
    /// Audio or video.
    pub kind: MediaKind,
    /// Negotiation state.
    pub state: TrackOutState,
    /// The publisher left while the track was being offered: stop it once the answer comes.
    pub stop_when_open: bool,
    /// Sequence number rebasing.
    pub seq: SeqRewriter,
    /// Incoming PT to outgoing PT, cached.
    pub pt_map: Option<(Pt, Pt)>,
    /// The retransmission window the outgoing stream keeps (`None`: str0m's default, not set
    /// yet).
    pub history: Option<std::time::Duration>,
}

impl TrackOut {
    /// The media id in this participant's session, once assigned.
    pub fn mid(&self) -> Option<Mid> {
        match self.state {
            TrackOutState::ToOpen => None,
            TrackOutState::Negotiating(m)
            | TrackOutState::Open(m)
            | TrackOutState::ToStop(m)
            | TrackOutState::NegotiatingStop(m) => Some(m),
        }
    }
}

/// Why a participant was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// Sent `leave`.
    Left,
    /// Its signaling socket closed (tab closed, network gone).
    SignalingClosed,
    /// No packets for longer than the peer timeout.
    Timeout,
    /// ICE/DTLS never completed within the connect timeout.
    ConnectTimeout,
    /// ICE or DTLS reported the connection gone.
    Disconnected,
    /// The server is shutting down.
    Shutdown,
    /// The room was closed (the consultation ended).
    RoomClosed,
}

impl LeaveReason {
    /// Every reason, for pre-registering metric label values.
    pub const ALL: [LeaveReason; 7] = [
        LeaveReason::Left,
        LeaveReason::SignalingClosed,
        LeaveReason::Timeout,
        LeaveReason::ConnectTimeout,
        LeaveReason::Disconnected,
        LeaveReason::Shutdown,
        LeaveReason::RoomClosed,
    ];

    /// Label for the leaves metric and the `bye` reason.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::SignalingClosed => "signaling_closed",
            LeaveReason::Timeout => "timeout",
            LeaveReason::ConnectTimeout => "connect_timeout",
            LeaveReason::Disconnected => "disconnected",
            LeaveReason::Shutdown => "shutdown",
            LeaveReason::RoomClosed => "room_closed",
        }
    }
}

/// Counters from str0m's stats events, kept to turn cumulative values into metric increments.
#[derive(Debug, Default)]
pub struct StatsMemory {
    /// Last cumulative NACK count per (mid, egress?).
    pub nacks: HashMap<(Mid, bool), u64>,
}

/// One participant of a room.
pub struct Participant {
    /// Server-assigned id.
    pub id: ParticipantId,
    /// Room it is in.
    pub room: RoomKey,
    /// Name shown to others (personal data: never logged).
    pub display_name: String,
    /// The WebRTC session.
    pub rtc: Rtc,
    /// Server-side ICE ufrag (demux key).
    pub ufrag: String,
    /// Published tracks.
    pub tracks_in: Vec<TrackIn>,
    /// Received tracks.
    pub tracks_out: Vec<TrackOut>,
    /// SSRC to mid of incoming streams, cached from str0m.
    pub ssrc_mid: HashMap<Ssrc, Mid>,
    /// Our outstanding offer.
    pub pending: Option<SdpPendingOffer>,
    /// The client's first offer has been answered; server offers may follow.
    pub negotiated_once: bool,
    /// ICE+DTLS connected at least once.
    pub connected: bool,
    /// When it joined.
    pub joined_at: Instant,
    /// Last time a datagram of it was accepted.
    pub last_rx: Instant,
    /// When str0m next wants `handle_timeout`.
    pub next_timeout: Instant,
    /// Stats bookkeeping.
    pub stats: StatsMemory,
    /// Queued in the core's dirty list (has new output to drain).
    pub dirty: bool,
    /// When the oldest packet forwarded to it and not yet sent was received.
    pub dirty_since: Option<std::time::Instant>,
    /// May send media (observers may not).
    pub may_publish: bool,
    /// How long its outgoing streams keep sent packets for NACKs (follows its round trip, see
    /// [`super::retransmit`]).
    pub retransmit_window: std::time::Duration,
    /// Its media goes to the recorder (it consented to a recording in progress).
    pub recorded: bool,
}

impl Participant {
    /// The published track on `mid`.
    pub fn track_in_mut(&mut self, mid: Mid) -> Option<&mut TrackIn> {
        self.tracks_in.iter_mut().find(|t| t.mid == mid)
    }
}
