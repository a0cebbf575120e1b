//! SFU metrics, registered into the SFU's own `huizhen_sfu_` sub-registry.
//!
//! Labels carry only bounded, non-personal values (media kind, drop reason, request kind):
//! never room names, display names or participant ids.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Why a packet was dropped; the `reason` label of `huizhen_sfu_dropped_packets_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not STUN, DTLS, RTP or RTCP.
    Malformed,
    /// From an address no participant owns, and not a STUN check for a known ufrag.
    UnknownSource,
    /// A participant's WebRTC stack refused it (bad SRTP, failed DTLS, ...).
    Rejected,
    /// The UDP socket's send buffer was full.
    SocketFull,
    /// The ICE-TCP connection's bounded queue was full (slow subscriber).
    TcpQueueFull,
    /// No connection exists for the destination (the peer went away).
    NoRoute,
    /// Arrived before the subscription started (reordered across a subscribe).
    BeforeSubscribe,
    /// The subscriber's stack could not take it (track not negotiated yet).
    NotWritable,
}

impl DropReason {
    fn label(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownSource => "unknown_source",
            DropReason::Rejected => "rejected",
            DropReason::SocketFull => "socket_full",
            DropReason::TcpQueueFull => "tcp_queue_full",
            DropReason::NoRoute => "no_route",
            DropReason::BeforeSubscribe => "before_subscribe",
            DropReason::NotWritable => "not_writable",
        }
    }
}

/// All SFU counters and gauges.
#[derive(Clone)]
pub struct SfuMetrics {
    /// Rooms with at least one participant.
    pub rooms: IntGauge,
    /// Participants joined.
    pub participants: IntGauge,
    /// Tracks being published, by kind.
    pub published_tracks: IntGaugeVec,
    /// Tracks being forwarded to a subscriber, by kind.
    pub subscribed_tracks: IntGaugeVec,
    /// RTP packets received from publishers, by kind.
    pub rtp_packets_received: IntCounterVec,
    /// RTP payload bytes received from publishers, by kind.
    pub rtp_bytes_received: IntCounterVec,
    /// RTP packets forwarded to subscribers, by kind.
    pub rtp_packets_sent: IntCounterVec,
    /// RTP payload bytes forwarded to subscribers, by kind.
    pub rtp_bytes_sent: IntCounterVec,
    /// NACKs received from subscribers.
    pub nacks_received: IntCounter,
    /// NACKs sent to publishers.
    pub nacks_sent: IntCounter,
    /// Subscribers' retransmission windows changed to follow their round trip.
    pub retransmit_window_resizes: IntCounter,
    /// Keyframe requests sent to publishers, by kind (pli, fir).
    pub keyframe_requests_sent: IntCounterVec,
    /// Keyframe requests received from subscribers, by kind (pli, fir).
    pub keyframe_requests_received: IntCounterVec,
    /// Keyframe requests not sent because of the per-track throttle.
    pub keyframe_requests_throttled: IntCounter,
    /// Dropped packets, by reason.
    pub dropped_packets: IntCounterVec,
    /// Datagrams (UDP) and frames (ICE-TCP) sent, by protocol.
    pub datagrams_sent: IntCounterVec,
    /// Datagrams (UDP) and frames (ICE-TCP) received, by protocol.
    pub datagrams_received: IntCounterVec,
    /// Participants removed, by reason.
    pub leaves: IntCounterVec,
    /// Joins accepted.
    pub joins: IntCounter,
    /// Joins refused, by reason.
    pub joins_refused: IntCounterVec,
    /// Time from receiving a media datagram to sending the forwarded copies.
    pub forward_latency: Histogram,
    /// Open ICE-TCP connections.
    pub ice_tcp_connections: IntGauge,
    /// Offers sent to clients by the server.
    pub renegotiations: IntCounter,
    /// Participants whose signaling socket dropped, kept for `resume` (see [`super::resume`]).
    pub detached: IntGauge,
    /// Participants taken back by `resume`.
    pub resumes: IntCounter,
    /// ICE restarts (client offers with new ICE credentials).
    /// `restart_ice` asks sent (a participant's media stopped while its signaling lived).
    pub ice_restart_requests: IntCounter,
    pub ice_restarts: IntCounter,
    /// Sessions renewed: a client's fresh peer connection took over its participant.
    pub session_renewals: IntCounter,
    /// Media taken from a new address on its SRTP's word, before ICE checked it.
    pub media_source_moves: IntCounter,
    /// Packets of consenting participants handed towards the recorder, by result.
    pub recorder_packets: IntCounterVec,
    /// Subscribers' send-side bandwidth estimates, sampled at each allocation round.
    pub subscriber_estimate: Histogram,
    /// Bit/s allocated to video over all subscribers (the last round of each).
    pub allocated_video_bps: IntGauge,
    /// Layer changes of received videos, by direction (up, down, pause, resume).
    pub layer_changes: IntCounterVec,
    /// Received videos paused for bandwidth now.
    pub paused_tracks: IntGauge,
    /// Layer switches completed on a keyframe of the target layer.
    pub layer_switches: IntCounter,
    /// Video packets not forwarded because their picture is above the temporal layer a
    /// subscriber asked for (`max_fps`).
    pub temporal_drops: IntCounter,
    /// Subscribers' keyframe requests answered by a pending switch or the per-subscription
    /// limit instead of reaching the publisher.
    pub keyframe_requests_absorbed: IntCounter,
    /// Dynacast requests to publishers, by what changed (`on`: a layer asked for again,
    /// `off`: layers switched off).
    pub dynacast_changes: IntCounterVec,
    /// Simulcast layers publishers were asked to switch off because nobody would receive them.
    pub dynacast_layers_off: IntGauge,
    /// Subscribers receiving RED audio now (lossy links with room for it).
    pub red_subscribers: IntGauge,
    /// Rounds in which a subscriber's link was found overfilled and its allocation capped at
    /// what the link delivered, by the signal that showed it (`loss`: a second's heavy loss;
    /// `queue`: a queue building at a fraction of what is sent, before the loss shows).
    pub congestion_caps: IntCounterVec,
    /// Speech bitrate hints to microphones, by direction (on, off).
    pub speech_cap_changes: IntCounterVec,
    /// Microphones asked to speak at the reduced rate now.
    pub speech_capped_microphones: IntGauge,
    by_kind_cache: [ByKind; 2],
}

/// Pre-resolved per-kind counters so the forwarding path does no label lookups.
#[derive(Clone)]
pub struct ByKind {
    /// Packets received.
    pub packets_in: IntCounter,
    /// Bytes received.
    pub bytes_in: IntCounter,
    /// Packets sent.
    pub packets_out: IntCounter,
    /// Bytes sent.
    pub bytes_out: IntCounter,
    /// Published track gauge.
    pub published: IntGauge,
    /// Subscribed track gauge.
    pub subscribed: IntGauge,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

impl SfuMetrics {
    /// Create the metrics and register them in `registry` (use a `huizhen_sfu`-prefixed one).
    pub fn new(registry: &Registry) -> SfuMetrics {
        let r = registry;
        let published_tracks = gauge_vec(r, "published_tracks", "Tracks being published", "kind");
        let subscribed_tracks = gauge_vec(
            r,
            "subscribed_tracks",
            "Tracks forwarded to subscribers",
            "kind",
        );
        let rtp_packets_received = counter_vec(
            r,
            "rtp_packets_received_total",
            "RTP packets received from publishers",
            "kind",
        );
        let rtp_bytes_received = counter_vec(
            r,
            "rtp_bytes_received_total",
            "RTP payload bytes received from publishers",
            "kind",
        );
        let rtp_packets_sent = counter_vec(
            r,
            "rtp_packets_sent_total",
            "RTP packets forwarded to subscribers",
            "kind",
        );
        let rtp_bytes_sent = counter_vec(
            r,
            "rtp_bytes_sent_total",
            "RTP payload bytes forwarded to subscribers",
            "kind",
        );
        let forward_latency = Histogram::with_opts(
            HistogramOpts::new(
                "forward_latency_seconds",
                "Time a media packet spends inside the server, receive to send",
            )
            .buckets(vec![
                0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
                0.025, 0.05, 0.1,
            ]),
        )
        .expect("valid histogram");
        r.register(Box::new(forward_latency.clone()))
            .expect("unique metric");
        let subscriber_estimate = Histogram::with_opts(
            HistogramOpts::new(
                "subscriber_estimate_bps",
                "Subscribers' send-side bandwidth estimates at each allocation round",
            )
            .buckets(vec![
                100e3, 200e3, 300e3, 500e3, 800e3, 1.2e6, 2e6, 3e6, 5e6, 8e6, 12e6, 20e6,
            ]),
        )
        .expect("valid histogram");
        r.register(Box::new(subscriber_estimate.clone()))
            .expect("unique metric");
        let by_kind = |kind: &str| ByKind {
            packets_in: rtp_packets_received.with_label_values(&[kind]),
            bytes_in: rtp_bytes_received.with_label_values(&[kind]),
            packets_out: rtp_packets_sent.with_label_values(&[kind]),
            bytes_out: rtp_bytes_sent.with_label_values(&[kind]),
            published: published_tracks.with_label_values(&[kind]),
            subscribed: subscribed_tracks.with_label_values(&[kind]),
        };
        let by_kind_cache = [by_kind("audio"), by_kind("video")];
        let dropped_packets = counter_vec(
            r,
            "dropped_packets_total",
            "Packets dropped, by reason",
            "reason",
        );
        let keyframe_requests_sent = counter_vec(
            r,
            "keyframe_requests_sent_total",
            "Keyframe requests (PLI/FIR) sent to publishers",
            "kind",
        );
        let keyframe_requests_received = counter_vec(
            r,
            "keyframe_requests_received_total",
            "Keyframe requests (PLI/FIR) received from subscribers",
            "kind",
        );
        let metrics = SfuMetrics {
            rooms: gauge(r, "rooms", "Rooms with at least one participant"),
            participants: gauge(r, "participants", "Participants joined"),
            published_tracks,
            subscribed_tracks,
            rtp_packets_received,
            rtp_bytes_received,
            rtp_packets_sent,
            rtp_bytes_sent,
            nacks_received: counter(r, "nacks_received_total", "NACKs received from subscribers"),
            nacks_sent: counter(r, "nacks_sent_total", "NACKs sent to publishers"),
            retransmit_window_resizes: counter(
                r,
                "retransmit_window_resizes_total",
                "Subscribers' retransmission windows changed to follow their measured round trip",
            ),
            keyframe_requests_sent,
            keyframe_requests_received,
            keyframe_requests_throttled: counter(
                r,
                "keyframe_requests_throttled_total",
                "Keyframe requests suppressed by the per-track throttle",
            ),
            dropped_packets,
            datagrams_sent: counter_vec(
                r,
                "datagrams_sent_total",
                "Datagrams (UDP) or frames (ICE-TCP) sent",
                "protocol",
            ),
            datagrams_received: counter_vec(
                r,
                "datagrams_received_total",
                "Datagrams (UDP) or frames (ICE-TCP) received",
                "protocol",
            ),
            leaves: counter_vec(
                r,
                "leaves_total",
                "Participants removed, by reason",
                "reason",
            ),
            joins: counter(r, "joins_total", "Joins accepted"),
            joins_refused: counter_vec(r, "joins_refused_total", "Joins refused", "reason"),
            forward_latency,
            ice_tcp_connections: gauge(r, "ice_tcp_connections", "Open ICE-TCP connections"),
            renegotiations: counter(r, "renegotiations_total", "Offers sent by the server"),
            detached: gauge(
                r,
                "detached_participants",
                "Participants whose signaling socket dropped, kept for resume",
            ),
            resumes: counter(r, "resumes_total", "Participants taken back by resume"),
            ice_restarts: counter(
                r,
                "ice_restarts_total",
                "ICE restarts (client offers with new ICE credentials)",
            ),
            media_source_moves: counter(
                r,
                "media_source_moves_total",
                "Participants whose media came from a new address (a NAT rebinding) and was taken on its SRTP authentication",
            ),
            session_renewals: counter(
                r,
                "session_renewals_total",
                "Participants whose client replaced its peer connection (same participant and tracks)",
            ),
            ice_restart_requests: counter(
                r,
                "ice_restart_requests_total",
                "restart_ice asks sent: a participant's media stopped while its signaling lived",
            ),
            recorder_packets: counter_vec(
                r,
                "recorder_packets_total",
                "Media packets of consenting participants handed towards the recorder",
                "result",
            ),
            subscriber_estimate,
            allocated_video_bps: gauge(
                r,
                "allocated_video_bps",
                "Bit/s of video allocated over all subscribers at their last allocation round",
            ),
            layer_changes: counter_vec(
                r,
                "layer_changes_total",
                "Allocation changes of received videos, by direction",
                "direction",
            ),
            paused_tracks: gauge(
                r,
                "paused_tracks",
                "Received videos paused because the subscriber's downlink cannot carry them",
            ),
            layer_switches: counter(
                r,
                "layer_switches_total",
                "Layer switches completed on a keyframe of the target layer",
            ),
            temporal_drops: counter(
                r,
                "temporal_layer_drops_total",
                "Video packets not forwarded to a subscriber that asked for fewer frames per second (temporal layers above its limit)",
            ),
            keyframe_requests_absorbed: counter(
                r,
                "keyframe_requests_absorbed_total",
                "Subscribers' keyframe requests not relayed (a switch already waits for one, or the per-subscription limit)",
            ),
            dynacast_changes: counter_vec(
                r,
                "dynacast_changes_total",
                "Requests to publishers to change the simulcast layers they send, by direction (on, off)",
                "direction",
            ),
            dynacast_layers_off: gauge(
                r,
                "dynacast_layers_off",
                "Simulcast layers publishers were asked to switch off because nobody would receive them",
            ),
            red_subscribers: gauge(
                r,
                "red_subscribers",
                "Subscribers receiving redundant (RED) audio now: their links lose packets and carry the redundancy",
            ),
            congestion_caps: counter_vec(
                r,
                "congestion_caps_total",
                "Times a subscriber's allocation was capped at what its overfilled link delivered, by the signal that showed it (loss: heavy loss; queue: a queue building before the loss shows)",
                "signal",
            ),
            speech_cap_changes: counter_vec(
                r,
                "speech_cap_changes_total",
                "Bitrate hints to microphones (publish_audio) because a subscriber's link barely carries the audio, by direction (on, off)",
                "direction",
            ),
            speech_capped_microphones: gauge(
                r,
                "speech_capped_microphones",
                "Microphones asked to speak at the reduced rate now",
            ),
            by_kind_cache,
        };
        for direction in ["on", "off"] {
            metrics.speech_cap_changes.with_label_values(&[direction]);
        }
        for direction in ["on", "off"] {
            metrics.dynacast_changes.with_label_values(&[direction]);
        }
        for direction in ["up", "down", "pause", "resume"] {
            metrics.layer_changes.with_label_values(&[direction]);
        }
        for reason in [
            DropReason::Malformed,
            DropReason::UnknownSource,
            DropReason::Rejected,
            DropReason::SocketFull,
            DropReason::TcpQueueFull,
            DropReason::NoRoute,
            DropReason::BeforeSubscribe,
            DropReason::NotWritable,
        ] {
            metrics.dropped_packets.with_label_values(&[reason.label()]);
        }
        for reason in super::LeaveReason::ALL {
            metrics.leaves.with_label_values(&[reason.as_str()]);
        }
        for reason in ["room_full", "server_full"] {
            metrics.joins_refused.with_label_values(&[reason]);
        }
        for proto in ["udp", "tcp"] {
            metrics.datagrams_sent.with_label_values(&[proto]);
            metrics.datagrams_received.with_label_values(&[proto]);
        }
        for result in ["queued", "dropped", "no_recorder"] {
            metrics.recorder_packets.with_label_values(&[result]);
        }
        for signal in [
            super::participant::OverfillSignal::Loss,
            super::participant::OverfillSignal::Queue,
        ] {
            metrics.congestion_caps.with_label_values(&[signal.label()]);
        }
        for kind in ["pli", "fir"] {
            metrics.keyframe_requests_sent.with_label_values(&[kind]);
            metrics
                .keyframe_requests_received
                .with_label_values(&[kind]);
        }
        metrics
    }

    /// Metrics in a private registry, for unit tests and benchmarks.
    pub fn unregistered() -> SfuMetrics {
        SfuMetrics::new(&Registry::new())
    }

    /// Count a dropped packet.
    pub fn drop_packet(&self, reason: DropReason) {
        self.dropped_packets
            .with_label_values(&[reason.label()])
            .inc();
    }

    /// Per-kind counters; `video` selects video, otherwise audio.
    pub fn kind(&self, video: bool) -> &ByKind {
        &self.by_kind_cache[usize::from(video)]
    }
}
