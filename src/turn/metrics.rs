//! TURN metrics, in the `huizhen_turn_` sub-registry. Labels are bounded and never personal:
//! no usernames (they are per session), no client addresses.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Why a TURN message or relayed packet was dropped or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a STUN message or ChannelData, or a STUN message that does not parse.
    Malformed,
    /// A request without valid credentials (401), or with an expired credential.
    Unauthorized,
    /// The credential had expired.
    Expired,
    /// A nonce too old or from another address (438).
    StaleNonce,
    /// A peer address other than the SFU's media addresses (403); never relayed.
    ForbiddenPeer,
    /// The credential already holds its most allocations (486).
    Quota,
    /// The server holds its most allocations, or no relay port was free (508).
    Capacity,
    /// A request that does not fit the allocation state (437, 441, 400, 420, 442, 440).
    BadRequest,
    /// Data for an allocation, permission or channel that does not exist (dropped).
    NoAllocation,
    /// A TCP/TLS client's bounded queue was full (dropped).
    QueueFull,
    /// A TCP/TLS connection refused: the listener holds its most connections.
    TooManyConnections,
}

impl Refusal {
    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Unauthorized => "unauthorized",
            Refusal::Expired => "expired",
            Refusal::StaleNonce => "stale_nonce",
            Refusal::ForbiddenPeer => "forbidden_peer",
            Refusal::Quota => "quota",
            Refusal::Capacity => "capacity",
            Refusal::BadRequest => "bad_request",
            Refusal::NoAllocation => "no_allocation",
            Refusal::QueueFull => "queue_full",
            Refusal::TooManyConnections => "too_many_connections",
        }
    }

    const ALL: [Refusal; 11] = [
        Refusal::Malformed,
        Refusal::Unauthorized,
        Refusal::Expired,
        Refusal::StaleNonce,
        Refusal::ForbiddenPeer,
        Refusal::Quota,
        Refusal::Capacity,
        Refusal::BadRequest,
        Refusal::NoAllocation,
        Refusal::QueueFull,
        Refusal::TooManyConnections,
    ];
}

/// All TURN counters and gauges.
#[derive(Clone)]
pub struct TurnMetrics {
    /// Allocations held, by client transport (`udp`, `tcp`, `tls`).
    pub allocations: IntGaugeVec,
    /// Allocations created, by client transport.
    pub allocations_created: IntCounterVec,
    /// Requests answered with success, by method.
    pub requests: IntCounterVec,
    /// Messages refused or dropped, by reason.
    pub refused: IntCounterVec,
    /// Packets relayed from clients to the SFU.
    pub relayed_in: IntCounter,
    /// Packets relayed from the SFU to clients.
    pub relayed_out: IntCounter,
    /// Bytes relayed (payload), both directions.
    pub relayed_bytes: IntCounter,
    /// Open TCP and TLS client connections, by transport.
    pub connections: IntGaugeVec,
    /// TCP allocations' data connections to the SFU (RFC 6062), bound now.
    pub tcp_relays: IntGauge,
}

impl TurnMetrics {
    /// Register into `registry` (the `huizhen_turn` component).
    pub fn new(registry: &Registry) -> TurnMetrics {
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let metrics = TurnMetrics {
            allocations: gauge_vec(
                "allocations",
                "TURN allocations held, by client transport",
                &["transport"],
            ),
            allocations_created: counter_vec(
                "allocations_created_total",
                "TURN allocations created, by client transport",
                &["transport"],
            ),
            requests: counter_vec(
                "requests_total",
                "TURN requests answered with success, by method",
                &["method"],
            ),
            refused: counter_vec(
                "refused_total",
                "TURN messages refused or dropped, by reason",
                &["reason"],
            ),
            relayed_in: counter(
                "relayed_in_packets_total",
                "Packets relayed from TURN clients to the SFU",
            ),
            relayed_out: counter(
                "relayed_out_packets_total",
                "Packets relayed from the SFU to TURN clients",
            ),
            relayed_bytes: counter(
                "relayed_bytes_total",
                "Payload bytes relayed through TURN, both directions",
            ),
            connections: gauge_vec(
                "connections",
                "Open TURN client connections over TCP and TLS",
                &["transport"],
            ),
            tcp_relays: {
                let g = IntGauge::new(
                    "tcp_relays",
                    "Data connections of TCP allocations (RFC 6062) bound to the SFU's ICE-TCP port",
                )
                .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique");
                g
            },
        };
        for t in ["udp", "tcp", "tls"] {
            metrics.allocations.with_label_values(&[t]);
            metrics.allocations_created.with_label_values(&[t]);
        }
        for t in ["tcp", "tls"] {
            metrics.connections.with_label_values(&[t]);
        }
        for r in Refusal::ALL {
            metrics.refused.with_label_values(&[r.label()]);
        }
        metrics
    }

    /// Metrics in a private registry, for unit tests.
    pub fn unregistered() -> TurnMetrics {
        TurnMetrics::new(&Registry::new())
    }

    /// Count a refusal.
    pub fn refuse(&self, reason: Refusal) {
        self.refused.with_label_values(&[reason.label()]).inc();
    }
}
