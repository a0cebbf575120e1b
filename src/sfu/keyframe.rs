//! Keyframe request throttling.
//!
//! Every subscriber that joins, loses packets or switches tracks wants a keyframe, and a
//! publisher flooded with PLIs spends its uplink on keyframes. Requests to one published track
//! are therefore let through at most once per throttle interval; the rest are counted and
//! absorbed (the one keyframe serves every subscriber).

use std::time::{Duration, Instant};

/// Decides whether a keyframe request to one published track may go out now.
#[derive(Debug, Default, Clone)]
pub struct KeyframeThrottle {
    last_sent: Option<Instant>,
}

impl KeyframeThrottle {
    /// True (and remembers `now`) if no request went out within `interval` before `now`.
    pub fn allow(&mut self, now: Instant, interval: Duration) -> bool {
        match self.last_sent {
            Some(last) if now.saturating_duration_since(last) < interval => false,
            _ => {
                self.last_sent = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_per_interval() {
        let t0 = Instant::now();
        let interval = Duration::from_millis(500);
        let mut k = KeyframeThrottle::default();
        assert!(k.allow(t0, interval));
        assert!(!k.allow(t0 + Duration::from_millis(100), interval));
        assert!(!k.allow(t0 + Duration::from_millis(499), interval));
        assert!(k.allow(t0 + Duration::from_millis(500), interval));
        assert!(!k.allow(t0 + Duration::from_millis(900), interval));
        assert!(k.allow(t0 + Duration::from_millis(1000), interval));
    }
}
