//! How long a subscriber's outgoing streams keep sent packets to answer retransmission
//! requests (NACK): long enough for the subscriber's round trip, no longer.
//!
//! A receiver that misses a packet asks for it about one round trip after it was sent and asks
//! again every round trip after that. Keeping [`RTT_FACTOR`] round trips (plus a margin for
//! reordering and the receiver's own delay) answers the first request and three retries. A
//! receiver that does not know its round trip (a receive-only one often cannot measure it)
//! retries every ~100 ms, so no window is shorter than [`MIN_WINDOW`], which covers four such
//! retries. str0m keeps a slot per packet per subscriber, so on a LAN the shorter window halves
//! a subscriber's memory, while a long-distance link gets the time it needs (up to the
//! configured maximum).
//!
//! Resizing str0m's history drops what it holds, so the window only changes when the measured
//! round trip moves it by more than [`RESIZE_RATIO`] either way.

use std::time::Duration;

/// Round trips of history kept.
pub const RTT_FACTOR: u32 = 4;
/// Added to the round trips: reordering, the receiver's loss detection and NACK pacing.
pub const MARGIN: Duration = Duration::from_millis(100);
/// Shortest window, whatever the round trip: four retries of a receiver that waits its default
/// 100 ms between NACKs (str0m and libwebrtc both start from 100 ms), plus the margin.
pub const MIN_WINDOW: Duration = Duration::from_millis(500);
/// The window changes only when the wanted one differs by more than this factor.
pub const RESIZE_RATIO: f64 = 1.5;
/// Windows are whole multiples of this (fewer distinct sizes, fewer resizes).
const STEP: Duration = Duration::from_millis(50);

/// The window policy for one server, bounded by `media.retransmit_history_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitPolicy {
    max: Duration,
}

impl RetransmitPolicy {
    /// A policy whose windows never exceed `max` (the configured history).
    pub fn new(max: Duration) -> Self {
        Self { max }
    }

    /// The window before a subscriber's round trip is known: the floor. A receiver that does
    /// not know its round trip yet retries every ~100 ms, which the floor covers; starting
    /// longer would make every call's first seconds set the process's peak memory.
    pub fn initial(&self) -> Duration {
        MIN_WINDOW.min(self.max)
    }

    /// The window a round trip of `rtt` needs.
    pub fn for_rtt(&self, rtt: Duration) -> Duration {
        let wanted = rtt.saturating_mul(RTT_FACTOR).saturating_add(MARGIN);
        let stepped = round_up(wanted, STEP);
        stepped.clamp(MIN_WINDOW.min(self.max), self.max)
    }

    /// The window to change to after measuring `rtt` while `current` is in force, or `None`
    /// to keep it (the change would be too small to pay for the history it drops).
    pub fn resize(&self, current: Duration, rtt: Duration) -> Option<Duration> {
        let wanted = self.for_rtt(rtt);
        let (cur, want) = (current.as_secs_f64(), wanted.as_secs_f64());
        (want > cur * RESIZE_RATIO || want * RESIZE_RATIO < cur).then_some(wanted)
    }
}

fn round_up(d: Duration, step: Duration) -> Duration {
    let steps = d.as_nanos().div_ceil(step.as_nanos());
    step.saturating_mul(u32::try_from(steps).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn starts_with_the_floor() {
        assert_eq!(RetransmitPolicy::new(ms(1000)).initial(), MIN_WINDOW);
    }

    #[test]
    fn window_follows_the_round_trip_within_bounds() {
        let p = RetransmitPolicy::new(ms(1000));
        assert_eq!(p.for_rtt(ms(0)), MIN_WINDOW, "a LAN gets the floor");
        assert_eq!(
            p.for_rtt(ms(40)),
            MIN_WINDOW,
            "4 x 40 + 100 = 260 is under the floor"
        );
        assert_eq!(
            p.for_rtt(ms(120)),
            ms(600),
            "4 x 120 + 100 = 580, rounded up to 600"
        );
        assert_eq!(p.for_rtt(ms(150)), ms(700));
        assert_eq!(
            p.for_rtt(ms(600)),
            ms(1000),
            "capped at the configured maximum"
        );
        assert_eq!(p.for_rtt(Duration::MAX), ms(1000), "no overflow");
    }

    #[test]
    fn floor_never_exceeds_a_small_configured_maximum() {
        let p = RetransmitPolicy::new(ms(200));
        assert_eq!(p.for_rtt(ms(0)), ms(200));
        assert_eq!(p.initial(), ms(200));
    }

    #[test]
    fn resizes_only_for_large_changes() {
        let p = RetransmitPolicy::new(ms(1000));
        assert_eq!(
            p.resize(ms(1000), ms(1)),
            Some(MIN_WINDOW),
            "loopback shrinks the initial window"
        );
        assert_eq!(p.resize(MIN_WINDOW, ms(5)), None, "same window");
        assert_eq!(
            p.resize(ms(500), ms(150)),
            None,
            "500 -> 700 is under the ratio"
        );
        assert_eq!(
            p.resize(ms(500), ms(200)),
            Some(ms(900)),
            "500 -> 900 grows"
        );
        assert_eq!(
            p.resize(ms(1000), ms(150)),
            None,
            "1000 -> 700 is under the ratio"
        );
        assert_eq!(
            p.resize(ms(1000), ms(100)),
            Some(ms(500)),
            "1000 -> 500 shrinks"
        );
    }
}
