//! Sources that keep getting their sockets closed for refusals are shut out for a while.
//!
//! A stranger's socket is closed after a few refused frames or when it does not authenticate
//! in time ([`super::ws`]); that bounds one socket, not a source that opens socket after socket.
//! Each such closing is [`PenaltyBox::record`]ed against the source address; a source with
//! [`PenaltyBox::new`]'s `threshold` closings within `window` is refused at the upgrade (a cheap
//! HTTP 429, no WebSocket, no task) until `block` has passed. Clients that authenticate never
//! collect closings, so hospitals behind one NAT address are not affected by their own users.
//! Time is passed in; memory is bounded by `max_sources` (the oldest entries go first).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    closings: u32,
    blocked_until: Option<Instant>,
}

/// See the module docs.
#[derive(Debug)]
pub struct PenaltyBox {
    window: Duration,
    threshold: u32,
    block: Duration,
    max_sources: usize,
    sources: HashMap<IpAddr, Entry>,
}

impl PenaltyBox {
    /// `threshold` closings within `window` block a source for `block`.
    pub fn new(
        window: Duration,
        threshold: u32,
        block: Duration,
        max_sources: usize,
    ) -> PenaltyBox {
        PenaltyBox {
            window,
            threshold: threshold.max(1),
            block,
            max_sources: max_sources.max(1),
            sources: HashMap::new(),
        }
    }

    /// A socket of `source` was closed for refusals; `true` if the source is now blocked.
    pub fn record(&mut self, now: Instant, source: IpAddr) -> bool {
        if !self.sources.contains_key(&source) && self.sources.len() >= self.max_sources {
            self.forget_expired(now);
            if self.sources.len() >= self.max_sources {
                // Still full: drop the entry whose window started first.
                if let Some(oldest) = self
                    .sources
                    .iter()
                    .min_by_key(|(_, e)| e.window_start)
                    .map(|(ip, _)| *ip)
                {
                    self.sources.remove(&oldest);
                }
            }
        }
        let entry = self.sources.entry(source).or_insert(Entry {
            window_start: now,
            closings: 0,
            blocked_until: None,
        });
        if now.duration_since(entry.window_start) > self.window {
            entry.window_start = now;
            entry.closings = 0;
        }
        entry.closings += 1;
        if entry.closings >= self.threshold {
            entry.blocked_until = Some(now + self.block);
        }
        entry.blocked_until.is_some_and(|t| t > now)
    }

    /// Whether `source` is refused now.
    pub fn is_blocked(&self, now: Instant, source: IpAddr) -> bool {
        self.sources
            .get(&source)
            .and_then(|e| e.blocked_until)
            .is_some_and(|t| t > now)
    }

    fn forget_expired(&mut self, now: Instant) {
        let (window, _) = (self.window, self.block);
        self.sources.retain(|_, e| {
            e.blocked_until.is_some_and(|t| t > now) || now.duration_since(e.window_start) <= window
        });
    }

    /// Sources tracked (for tests and metrics).
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// Whether no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn a_source_is_blocked_after_the_threshold_and_released_after_the_block() {
        let t0 = Instant::now();
        let mut b = PenaltyBox::new(Duration::from_secs(10), 3, Duration::from_secs(30), 100);
        assert!(!b.record(t0, ip(1)));
        assert!(!b.record(t0 + Duration::from_secs(1), ip(1)));
        assert!(!b.is_blocked(t0 + Duration::from_secs(1), ip(1)));
        assert!(
            b.record(t0 + Duration::from_secs(2), ip(1)),
            "third closing within the window"
        );
        assert!(b.is_blocked(t0 + Duration::from_secs(31), ip(1)));
        assert!(
            !b.is_blocked(t0 + Duration::from_secs(33), ip(1)),
            "released after the block"
        );
        assert!(
            !b.is_blocked(t0 + Duration::from_secs(2), ip(2)),
            "other sources are not affected"
        );
    }

    #[test]
    fn closings_spread_beyond_the_window_do_not_block() {
        let t0 = Instant::now();
        let mut b = PenaltyBox::new(Duration::from_secs(10), 3, Duration::from_secs(30), 100);
        for i in 0..10 {
            assert!(
                !b.record(t0 + Duration::from_secs(6 * i), ip(1)),
                "closing {i}"
            );
        }
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut b = PenaltyBox::new(Duration::from_secs(10), 3, Duration::from_secs(30), 8);
        for i in 0..200u8 {
            b.record(t0, ip(i));
        }
        assert!(b.len() <= 8);
    }
}
