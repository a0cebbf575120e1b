//! One participant: its str0m `Rtc`, the tracks it publishes and the tracks it receives.
//!
//! The participant knows nothing of other participants; the room logic in the parent module
//! moves packets and track announcements between participants.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use huizhen_signaling::protocol::{ServerMessage, TrackSource};

use str0m::change::SdpPendingOffer;
use str0m::format::PayloadParams;
use str0m::media::{MediaKind, Mid, Pt};
use str0m::rtp::Ssrc;
use str0m::stats::EgressQueuing;
use str0m::Rtc;

use super::allocation::{Allocator, MAX_LAYERS};
use super::layers::LayerMeter;
use super::switcher::{LayerSwitch, Rewriter};
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
    /// What it carries (decides its priority).
    pub source: TrackSource,
    /// Simulcast rids the publisher declared, lowest layer first (empty: one layer).
    pub rids: Vec<str0m::media::Rid>,
    /// Per layer: bitrate, liveness, picture height, keyframe throttle.
    pub layers: [LayerMeter; MAX_LAYERS],
    /// Audio sent with RED: the full packets' bitrate (`layers[0]` meters the primary blocks).
    pub red: LayerMeter,
    /// The bitrate cap its microphone was asked for (see [`super::speech_cap`]).
    pub speech_cap: super::speech_cap::SpeechCap,
    /// The layer handed to the recorder (the best one sent, switched on keyframes).
    pub record: LayerSwitch,
    /// Which layers the publisher was asked to send (dynacast).
    pub dynacast: super::dynacast::Dynacast,
    /// Payload params of the last seen incoming PT, so the lookup is done once per PT.
    pub last_params: Option<(Pt, PayloadParams)>,
}

impl TrackIn {
    /// Several layers are declared: switching between them needs keyframes.
    pub fn simulcast(&self) -> bool {
        self.rids.len() > 1
    }

    /// The layer index of `rid` among the rids this track declared.
    pub fn layer_of_rid(&self, rid: &str) -> usize {
        let declared: Vec<String> = self.rids.iter().map(|r| r.to_string()).collect();
        let declared: Vec<&str> = declared.iter().map(String::as_str).collect();
        super::layers::layer_of(rid, &declared)
    }

    /// The layers this track declared, as a mask (bit `i` for layer `i`).
    pub fn declared_layers(&self) -> super::dynacast::LayerMask {
        self.rids
            .iter()
            .map(|r| 1 << self.layer_of_rid(r))
            .fold(0, |m, b| m | b)
    }

    /// The rid of layer `index`, if the track declared one for it.
    pub fn rid_of_layer(&self, index: usize) -> Option<String> {
        self.rids
            .iter()
            .map(|r| r.to_string())
            .find(|r| self.layer_of_rid(r) == index)
    }
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
#[derive(Debug, Clone)]
pub struct TrackOut {
    /// The published track's id.
    pub track: TrackId,
    /// Its publisher.
    pub publisher: ParticipantId,
    /// Media id of the track in the publisher's session.
    pub source_mid: Mid,
    /// Audio or video.
    pub kind: MediaKind,
    /// What it carries.
    pub source: TrackSource,
    /// Negotiation state.
    pub state: TrackOutState,
    /// The publisher left while the track was being offered: stop it once the answer comes.
    pub stop_when_open: bool,
    /// Numbering that continues across layer switches and pauses.
    pub rewriter: Rewriter,
    /// Which layer is forwarded and which one is wanted.
    pub switch: LayerSwitch,
    /// When this subscription last had a keyframe request relayed to the publisher.
    pub last_pli: Option<Instant>,
    /// The subscriber's wishes for this track.
    pub pref: Preference,
    /// Incoming PT to outgoing PT, and the outgoing RED PT where the subscriber negotiated RED.
    pub pt_map: Option<(Pt, Pt, Option<Pt>)>,
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

    /// The `track_added` that announces this track on `mid`.
    pub fn announcement(&self, mid: Mid) -> ServerMessage {
        ServerMessage::TrackAdded {
            participant_id: self.publisher.to_string(),
            track_id: self.track.to_string(),
            mid: mid.to_string(),
            kind: super::track_kind(self.kind),
            source: self.source,
        }
    }
}

/// A subscriber's wishes for one received track (see `track_preferences`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preference {
    /// Shown at all.
    pub visible: bool,
    /// Largest useful picture height.
    pub max_height: Option<u32>,
    /// Highest useful frame rate (temporal layers above it are not sent).
    pub max_fps: Option<u32>,
    /// Shown large or pinned.
    pub pinned: bool,
}

impl Default for Preference {
    fn default() -> Preference {
        Preference {
            visible: true,
            max_height: None,
            max_fps: None,
            pinned: false,
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
    /// Last round trip reported per sending mid. The retransmission window follows the
    /// largest: str0m measures each stream on its own, and on a queued link an audio stream's
    /// reports (1 ms) and a video stream's (~380 ms) alternated, resizing the window (and
    /// dropping the history) every 250 ms.
    pub rtt: HashMap<Mid, std::time::Duration>,
}

/// How a participant negotiates, which decides what it is given to receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerMode {
    /// A signaling client: the server offers every track of the room as it comes and goes.
    #[default]
    Full,
    /// One offer, no renegotiation, sends only (a WHIP publisher): it is offered nothing.
    PublishOnly,
    /// One offer, no renegotiation, receives only (a WHEP viewer): its own receiving m-lines
    /// are the slots it gets, each filled with a track of the room (see [`Slot`]). Not
    /// announced to the room: a lecture's audience is not a list of participants.
    ReceiveOnly,
}

/// One m-line a receive-only peer offered to receive on. It carries the earliest published
/// track of its kind that no other slot carries; when that track ends the next one takes the
/// slot, numbered on from where the last one stopped (the same `Rewriter`), because the peer
/// cannot be sent a new m-line.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The peer's m-line.
    pub mid: Mid,
    /// Audio or video.
    pub kind: MediaKind,
    /// The track it carries now.
    pub track: Option<TrackId>,
    /// Numbering of the track it carried last, continued by the next.
    pub rewriter: Rewriter,
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
    /// SSRC to (mid, layer) of incoming streams, resolved from str0m once per SSRC.
    pub ssrc_layer: HashMap<Ssrc, (Mid, usize)>,
    /// What the client said its sending m-lines carry, by mid.
    pub sources: HashMap<String, TrackSource>,
    /// Send-side bandwidth estimate of its downlink (bit/s); `None` until the first one (or
    /// for a client without transport-wide congestion control: no limit is applied).
    pub estimate: Option<u64>,
    /// Recent estimates (time, bit/s), the last [`SUSTAIN_WINDOW`] of them: resumes and
    /// upgrades go by their lowest.
    pub recent_estimates: std::collections::VecDeque<(Instant, u64)>,
    /// Which layer of each received video it gets.
    pub allocator: Allocator,
    /// The (minimum, desired) bitrates last given to its bandwidth estimator.
    pub bwe_targets: (u64, u64),
    /// Whether str0m's automatic padding floor (50 kbit/s) is on: only while video flows to it.
    pub padding_floor: bool,
    /// The desired rate held while its link is tight for the voices (see the core's
    /// `TIGHT_WISH_BAND`).
    pub tight_wish: Option<u64>,
    /// How often it gets transport-wide feedback for what it sends (see [`super::feedback`]).
    pub twcc_interval: std::time::Duration,
    /// When its link may be probed again (see `PROBE_INTERVAL`).
    pub next_probe: Option<Instant>,
    /// The interval before the probe after next (doubles while probes find nothing).
    pub probe_backoff: Duration,
    /// Padding towards the next step while a video waits (see [`super::probe`]).
    pub prober: super::probe::Prober,
    /// Last round's media rate and goal (audio and video, bit/s), for the prober.
    pub probe_inputs: (u64, Option<u64>),
    /// Media bytes sent to it at the last peer statistics (for the delivered rate).
    pub last_tx: Option<(Instant, u64)>,
    /// What its link delivered (wire bit/s) when it last lost heavily, and when: caps its allocation for
    /// [`CONGESTION_HOLD`] while the estimator catches up.
    pub congestion_cap: Option<(Instant, u64)>,
    /// When a probe was asked to measure a link whose ceiling outlived its memory with no
    /// video flowing (see [`Participant::link_ceiling`]).
    pub ceiling_probed: Option<Instant>,
    /// What its link delivered lately (see [`super::delivery`]).
    pub delivery: super::delivery::DeliveryLog,
    /// Bit/s of video allocated to it at the last round.
    pub allocated_video: u64,
    /// Our outstanding offer.
    pub pending: Option<SdpPendingOffer>,
    /// The text of the pending offer, for a client that resumes before answering it.
    pub offer_sdp: Option<String>,
    /// Its signaling socket dropped at this time; kept for `resume` until the grace ends.
    pub detached_since: Option<Instant>,
    /// The server ufrag before the client's last ICE restart: still routed until the new
    /// credentials have carried a check and then media (see `Sfu::handle_datagram`).
    pub retired_ufrag: Option<String>,
    /// A check with the new ufrag arrived since the restart.
    pub restart_checked: bool,
    /// Datagrams arrived close together lately (media flows): a silence after it asks the
    /// client to restart ICE once ([`super::RESTART_ASK_AFTER`]).
    pub flowing: bool,
    /// RTP packets of it that decrypted (counted as they are forwarded).
    pub rtp_received: u64,
    /// An address its SRTP authenticated from that ICE has not checked (a NAT rebinding):
    /// its media is accepted from there.
    pub media_source: Option<(str0m::net::Protocol, std::net::SocketAddr)>,
    /// Tries of media from unchecked addresses in the current second: (second's start, count).
    pub unverified_tries: (Instant, u32),
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
    /// How it negotiates: renegotiating over signaling, or one offer over HTTP (WHIP, WHEP).
    pub mode: PeerMode,
    /// A receive-only peer's offered m-lines and what each carries (see [`Slot`]).
    pub slots: Vec<Slot>,
    /// How long its outgoing streams keep sent packets for NACKs (follows its round trip, see
    /// [`super::retransmit`]).
    pub retransmit_window: std::time::Duration,
    /// Its media goes to the recorder (it consented to a recording in progress).
    pub recorded: bool,
    /// Whether it gets RED audio now (see [`super::red`]).
    pub red: super::red::RedPolicy,
    /// Whether its link barely carries its audio (see [`super::speech_cap`]).
    pub audio_room: super::speech_cap::AudioRoom,
    /// Packets forwarded to it since the last allocation round.
    pub sent_packets: u64,
    /// Smoothed bit/s of the headers of what is forwarded to it, and when last folded.
    pub header_rate: (u64, Option<Instant>),
    /// The queue its link showed in the last peer statistics (see [`OVERFILL_QUEUE`]).
    pub queue_delay: Option<Duration>,
    /// When its link last showed a queue of [`FULL_QUEUE`] or more.
    pub queued_at: Option<Instant>,
    /// Tests: every estimate str0m reports reads as this one (an estimator that falls the
    /// way Chromium's did, which the simulator's link does not make it do).
    #[cfg(test)]
    pub estimate_pin: Option<u64>,
}

/// Loss (of everything sent to a subscriber over a second) that means its link is
/// overfilled, not merely lossy: random loss rarely reaches it, a link given several times its
/// capacity does at once.
pub const CONGESTION_LOSS: f32 = 0.35;

/// A queue this deep (the newest reported packet's delay above the least delayed of the last
/// second), building while the link delivers under [`OVERFILL_DELIVERY_SHARE`] of what is
/// sent to it, means the link is overfilled now. It shows in the first feedback after a cut,
/// where the loss shows only once a packet sent after the drops has crossed the full queue:
/// at 120 kbit/s behind a 200 ms queue the second's loss reached [`CONGESTION_LOSS`] 0.7-0.9 s
/// after the cut, the voices mostly lost meanwhile. Jitter does not reach it on a link that
/// keeps up, and a keyframe queued on a link near its rate leaves it delivering most of what
/// is sent.
pub const OVERFILL_QUEUE: Duration = Duration::from_millis(100);

/// See [`OVERFILL_QUEUE`].
pub const OVERFILL_DELIVERY_SHARE: f64 = 0.5;

/// A queue this deep means the link is at its rate, whatever it delivers: RED does not come on
/// (see `red::QUEUE_MEMORY`) and a padding probe stops (see `probe::Prober::queue_met`).
/// Measured in the simulator at 300 kbit/s with one low layer and the voices: 50-110 ms
/// behind each keyframe; random loss on a link that keeps up: none.
pub const FULL_QUEUE: Duration = Duration::from_millis(50);

/// How long a link must have been measured before its queue alone can call it overfilled. A
/// link's first seconds carry str0m's initial probes, which overfill a narrow link on
/// purpose; capping on their queue paused a video before its first packet (load generator,
/// 600 kbit/s receivers: a subscribed video never received in 15 s). There the loss acts as
/// before.
pub const QUEUE_SIGNAL_AFTER: Duration = Duration::from_secs(3);

/// Shortest receive span over which the queue's delivery rate is measured (a few packets at
/// 120 kbit/s).
pub const QUEUE_RATE_SPAN: Duration = Duration::from_millis(40);

/// What showed a link overfilled (the label of `congestion_caps_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverfillSignal {
    /// The last second lost [`CONGESTION_LOSS`] or more.
    Loss,
    /// A queue of [`OVERFILL_QUEUE`] building at under [`OVERFILL_DELIVERY_SHARE`] of what is sent.
    Queue,
}

impl OverfillSignal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            OverfillSignal::Loss => "loss",
            OverfillSignal::Queue => "queue",
        }
    }
}

/// How long the delivered rate of a congested second caps the allocation at least.
pub const CONGESTION_HOLD: Duration = Duration::from_secs(2);

/// The cap holds on past [`CONGESTION_HOLD`] (up to [`CONGESTION_MEMORY`]) while the
/// estimator's estimate stays above this multiple of it: str0m's estimate falls over seconds
/// (measured at 120 kbit/s: 1.7 Mbit/s -> 1.1 Mbit/s in the 3 s after the link was cut), and
/// an allocation that went back to it after 2 s resumed both videos into the link and lost
/// the voices again.
pub const ESTIMATOR_BEHIND: f64 = 1.5;

/// How long after its link was overfilled a subscriber gets no RED and no bursts of str0m
/// probes: its loss was the queue's, and more bits make it worse.
pub const CONGESTION_MEMORY: Duration = Duration::from_secs(10);

/// After an overfilling, how long its link is not probed, wishes for nothing beyond what it
/// carries, and keeps a tight audio tight (counted from the last overfilled second; the
/// congestion cap holding extends it). Short enough that a link cut to 300 kbit/s gets a video
/// back soon (10 s left the weak participant audio-only for 10-15 s after the cut), long enough
/// that the estimator has fallen: the cap holds while it is more than 1.5 times the cap.
pub const PROBE_EMBARGO: Duration = Duration::from_secs(5);

/// How long after an overfilling the rate its link delivered then bounds resumes (see
/// [`Participant::link_ceiling`]). Short enough that a link that recovers gets its videos
/// back within seconds of the ceiling's end.
pub const LINK_CEILING_MEMORY: Duration = Duration::from_secs(15);

/// How long after the probe that measures a lapsing ceiling's link the ceiling lets go
/// (str0m's probe result replaces its estimate within a few feedback intervals; the
/// sustained estimate then still holds the lowest figure of [`SUSTAIN_WINDOW`]).
pub const CEILING_PROBE_SETTLE: Duration = Duration::from_secs(1);

/// The longest a ceiling holds waiting for its probe (str0m may refuse to probe while it
/// thinks the link loss-limited): past it, resumes go by the estimate as they did before.
pub const LINK_CEILING_LIMIT: Duration = Duration::from_secs(45);

/// How long an estimate must hold before resumes and upgrades go by it.
pub const SUSTAIN_WINDOW: Duration = Duration::from_secs(2);

/// Most recent estimates kept (str0m reports a few per second; the window needs fewer).
const MAX_RECENT_ESTIMATES: usize = 64;

impl Participant {
    /// Remember an estimate.
    pub fn note_estimate(&mut self, now: Instant, estimate: u64) {
        #[cfg(test)]
        let estimate = self.estimate_pin.unwrap_or(estimate);
        self.estimate = Some(estimate);
        if self.recent_estimates.len() >= MAX_RECENT_ESTIMATES {
            self.recent_estimates.pop_front();
        }
        self.recent_estimates.push_back((now, estimate));
    }

    /// Peer statistics came: media bytes sent so far and the loss of the last second. When
    /// the loss says the link is overfilled, remember what it delivered, in wire bits (the
    /// estimator takes seconds to fall that far; until then every packet beyond it is lost,
    /// audio first). Returns the cap when one was set, and what showed the overfilling.
    pub fn note_delivery(
        &mut self,
        now: Instant,
        bytes_tx: u64,
        loss: Option<f32>,
        received: Option<(Duration, u64, u64)>,
        queuing: Option<EgressQueuing>,
    ) -> Option<(u64, OverfillSignal)> {
        self.queue_delay = queuing.map(|q| q.delay);
        if self.queue_delay >= Some(FULL_QUEUE) {
            self.queued_at = Some(now);
        }
        let last = self.last_tx.replace((now, bytes_tx));
        let (at, before) = last?;
        let dt = now.saturating_duration_since(at).as_secs_f64();
        if dt < 0.2 {
            return None;
        }
        // In wire bits: the payload str0m counts plus the headers of what was sent (the
        // delivered share of both). Payload alone plus the *sent* header rate, as the
        // allocation converts estimates, overstated it by the lost packets' headers: ~100
        // kbit/s while a cut link was being flooded, enough to keep a video on 120 kbit/s.
        let sent = bytes_tx.saturating_sub(before) as f64 * 8.0 / dt + self.header_rate.0 as f64;
        // Best, what the client's feedback says it received in the last moments, by its
        // receive times: while the link is overfilled, the link's own rate. The sent rate of
        // this round times the loss of the last second mixes spans: once the videos were
        // paused it fell to 100-150 kbit/s on a 300 kbit/s link (Chromium), so both videos
        // paused and the cap held for ~10 s.
        let delivered = match received {
            Some((window, bytes, packets)) if !window.is_zero() => {
                let secs = window.as_secs_f64();
                (bytes as f64 * 8.0 / secs) as u64
                    + super::layers::header_rate(packets as f64 / secs)
            }
            _ => (sent * f64::from(1.0 - loss.unwrap_or(0.0).clamp(0.0, 1.0))) as u64,
        };
        self.delivery.record(now, delivered, loss);
        let (cap, signal) = if loss.is_some_and(|loss| loss >= CONGESTION_LOSS) {
            (delivered, OverfillSignal::Loss)
        } else {
            // No heavy loss known yet, but a queue building at a fraction of what is sent:
            // what arrived since it began is the link's rate.
            queuing
                .filter(|_| self.delivery.covers(now, QUEUE_SIGNAL_AFTER))
                .filter(|q| q.delay >= OVERFILL_QUEUE && q.span >= QUEUE_RATE_SPAN)
                .map(|q| {
                    let secs = q.span.as_secs_f64();
                    (q.bytes as f64 * 8.0 / secs) as u64
                        + super::layers::header_rate(q.packets as f64 / secs)
                })
                .filter(|rate| (*rate as f64) < sent * OVERFILL_DELIVERY_SHARE)
                .map(|rate| (rate, OverfillSignal::Queue))?
        };
        self.congestion_cap = Some((now, cap));
        Some((cap, signal))
    }

    /// Fold the packets forwarded since the last round into the header rate.
    pub fn tick_headers(&mut self, now: Instant) {
        let packets = std::mem::take(&mut self.sent_packets);
        let (rate, last) = self.header_rate;
        let Some(last) = last else {
            self.header_rate = (0, Some(now));
            return;
        };
        let dt = now.saturating_duration_since(last).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        let instant = super::layers::header_rate(packets as f64 / dt) as f64;
        self.header_rate = ((0.3 * instant + 0.7 * rate as f64) as u64, Some(now));
    }

    /// `payload` bit/s (str0m's estimates count RTP payloads only) as bits on the wire:
    /// plus the headers of the packets forwarded to it. The link carried those headers while
    /// the estimate was measured, so they are room the allocation, which counts headers,
    /// may spend.
    pub fn wire_estimate(&self, payload: u64) -> u64 {
        payload.saturating_add(self.header_rate.0)
    }

    /// The other way: wire bit/s as the payload bit/s str0m's `set_bitrate` expects.
    pub fn payload_rate(&self, wire: u64) -> u64 {
        wire.saturating_sub(self.header_rate.0)
    }

    /// Its link was overfilled within `window` (a congestion cap was set): its loss then
    /// came from a full queue, not from a lossy line.
    pub fn congested_within(&self, now: Instant, window: Duration) -> bool {
        self.congestion_cap
            .is_some_and(|(at, _)| now.saturating_duration_since(at) < window)
    }

    /// Its link showed a queue of [`FULL_QUEUE`] or more within `window`.
    pub fn queued_within(&self, now: Instant, window: Duration) -> bool {
        self.queued_at
            .is_some_and(|at| now.saturating_duration_since(at) < window)
    }

    /// Within the probe embargo after an overfilling (see [`PROBE_EMBARGO`]).
    pub fn embargoed(&self, now: Instant) -> bool {
        self.congestion_cap(now).is_some() || self.congested_within(now, PROBE_EMBARGO)
    }

    /// The rate its link delivered when it was last overfilled, for [`LINK_CEILING_MEMORY`]
    /// after: what resumes, RED and the audio's room go by may not exceed it. The estimator
    /// leaps on a probe (Chromium at 300 kbit/s: 1.2 Mbit/s for a moment, 11 s after the cut)
    /// and a paused video resumed into a link that could not hold it, cost its publisher a
    /// keyframe and was paused again within a second; RED came on the same way and its
    /// redundancy paused the one video that fitted.
    ///
    /// Past its memory the ceiling holds on while the link carries no video, until a probe
    /// asked since has had [`CEILING_PROBE_SETTLE`] to replace the estimate (at most until
    /// [`LINK_CEILING_LIMIT`]): an audio-only link never saturates, so str0m's estimate stays
    /// where the cut left it (Chromium at 120 kbit/s: ~260 kbit/s 15 s after the cut), and a
    /// video resumed on that figure overfilled the link with its keyframe for a second and
    /// was paused again, the voices lost meanwhile (3.7 % concealed in a 45 s window).
    pub fn link_ceiling(&self, now: Instant) -> Option<u64> {
        let (at, cap) = self.congestion_cap?;
        if now.saturating_duration_since(at) < LINK_CEILING_MEMORY {
            return Some(cap);
        }
        let (cap, probed) = self.overdue_ceiling(now)?;
        let settled =
            probed.is_some_and(|p| now.saturating_duration_since(p) >= CEILING_PROBE_SETTLE);
        (!settled).then_some(cap)
    }

    /// The ceiling outlived its memory on a link with no video and no probe has been asked
    /// to measure it yet: the next allocation round asks one (see [`Self::link_ceiling`]).
    pub fn ceiling_wants_probe(&self, now: Instant) -> bool {
        self.overdue_ceiling(now)
            .is_some_and(|(_, probed)| probed.is_none())
    }

    /// A ceiling past its memory, before [`LINK_CEILING_LIMIT`], on a link with no video:
    /// its rate, and when the probe that measures the link was asked since the lapse.
    fn overdue_ceiling(&self, now: Instant) -> Option<(u64, Option<Instant>)> {
        let (at, cap) = self.congestion_cap?;
        let age = now.saturating_duration_since(at);
        let overdue =
            (LINK_CEILING_MEMORY..LINK_CEILING_LIMIT).contains(&age) && self.allocated_video == 0;
        let lapsed_at = at + LINK_CEILING_MEMORY;
        overdue.then(|| (cap, self.ceiling_probed.filter(|p| *p >= lapsed_at)))
    }

    /// The congestion cap, while it holds.
    pub fn congestion_cap(&self, now: Instant) -> Option<u64> {
        let (at, cap) = self.congestion_cap?;
        let age = now.saturating_duration_since(at);
        let behind = self
            .estimate
            .is_some_and(|e| self.wire_estimate(e) as f64 > cap as f64 * ESTIMATOR_BEHIND);
        (age < CONGESTION_HOLD || (behind && age < CONGESTION_MEMORY)).then_some(cap)
    }

    /// The lowest estimate of the last [`SUSTAIN_WINDOW`] (the current one if older).
    pub fn sustained_estimate(&mut self, now: Instant) -> Option<u64> {
        while self.recent_estimates.len() > 1
            && self.recent_estimates[1].0 <= now.checked_sub(SUSTAIN_WINDOW).unwrap_or(now)
        {
            self.recent_estimates.pop_front();
        }
        let current = self.estimate?;
        Some(
            self.recent_estimates
                .iter()
                .map(|(_, e)| *e)
                .fold(current, u64::min),
        )
    }
}

/// Shortest interval between two keyframe requests of one subscription that reach the
/// publisher. A subscriber on a lossy link asks again and again; one keyframe per second is
/// all its decoder can use, and the publisher's other subscribers pay for each one.
pub const SUBSCRIPTION_PLI_INTERVAL: Duration = Duration::from_secs(1);

/// Most packets per second from unchecked addresses tried against a participant's SRTP keys
/// (a stranger who learns an SSRC can make the server try each packet it sends).
pub const UNVERIFIED_TRIES_PER_SECOND: u32 = 50;

impl Participant {
    /// One more packet from an unchecked address may be tried now (see
    /// [`UNVERIFIED_TRIES_PER_SECOND`]).
    pub fn try_unverified(&mut self, now: Instant) -> bool {
        let (start, count) = &mut self.unverified_tries;
        if now.saturating_duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *count = 0;
        }
        *count += 1;
        *count <= UNVERIFIED_TRIES_PER_SECOND
    }

    /// The published track on `mid`.
    pub fn track_in_mut(&mut self, mid: Mid) -> Option<&mut TrackIn> {
        self.tracks_in.iter_mut().find(|t| t.mid == mid)
    }
}
