//! A capped downlink, emulated in the receiving participant: what a weak 4G or hospital line
//! does to the datagrams the SFU sends it. Sans-IO: the caller passes the time in.
//!
//! The link is a FIFO drained at `rate` (a token bucket without burst allowance: each datagram
//! occupies the line for its size on the wire divided by the rate). A datagram that would wait
//! longer than `queue` before it starts to leave is dropped, as a router's tail-drop queue of
//! `rate * queue` bytes does. A datagram leaves — is handed to str0m — when its last bit has
//! crossed the line, so the receiver's TWCC feedback reports the delays and losses a real
//! bottleneck would cause, and the server's bandwidth estimate reacts to them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// IPv4 + UDP headers, counted on the line besides the datagram.
pub const IP_UDP_OVERHEAD: usize = 28;

/// The shape of a capped link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// Line rate, bit/s.
    pub rate_bps: u64,
    /// Longest a datagram may wait in the queue before it starts to leave.
    pub queue: Duration,
}

/// A datagram waiting on the link.
#[derive(Debug)]
struct Queued<T> {
    release: Instant,
    item: T,
}

/// Counters of a link.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LinkCounters {
    /// Datagrams that crossed the link.
    pub delivered: u64,
    /// Datagrams dropped because the queue was full.
    pub dropped: u64,
    /// Bytes (on the line) that crossed.
    pub delivered_bytes: u64,
}

/// One direction of a capped link carrying items of type `T` (datagrams).
#[derive(Debug)]
pub struct Link<T> {
    config: LinkConfig,
    /// When the line finishes sending what is queued.
    free_at: Option<Instant>,
    queue: VecDeque<Queued<T>>,
    /// What happened so far.
    pub counters: LinkCounters,
}

impl<T> Link<T> {
    /// An idle link.
    pub fn new(config: LinkConfig) -> Link<T> {
        Link {
            config,
            free_at: None,
            queue: VecDeque::new(),
            counters: LinkCounters::default(),
        }
    }

    /// Time the line needs for `bytes` (a datagram; the IP/UDP headers are added).
    fn serialization(&self, bytes: usize) -> Duration {
        let bits = ((bytes + IP_UDP_OVERHEAD) * 8) as u128;
        let nanos = bits * 1_000_000_000 / u128::from(self.config.rate_bps.max(1));
        Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64)
    }

    /// A datagram of `bytes` arrives at the link at `now`. Returns false if it was dropped.
    pub fn push(&mut self, now: Instant, bytes: usize, item: T) -> bool {
        let start = self.free_at.map_or(now, |f| f.max(now));
        if start.saturating_duration_since(now) > self.config.queue {
            self.counters.dropped += 1;
            return false;
        }
        let release = start + self.serialization(bytes);
        self.free_at = Some(release);
        self.counters.delivered_bytes += (bytes + IP_UDP_OVERHEAD) as u64;
        self.queue.push_back(Queued { release, item });
        true
    }

    /// When the next datagram leaves, if one is queued.
    pub fn next_release(&self) -> Option<Instant> {
        self.queue.front().map(|q| q.release)
    }

    /// The next datagram that has left by `now`, in arrival order.
    pub fn pop(&mut self, now: Instant) -> Option<T> {
        if self.queue.front()?.release > now {
            return None;
        }
        self.counters.delivered += 1;
        self.queue.pop_front().map(|q| q.item)
    }

    /// Datagrams waiting.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(kbps: u64, queue_ms: u64) -> Link<u32> {
        Link::new(LinkConfig {
            rate_bps: kbps * 1000,
            queue: Duration::from_millis(queue_ms),
        })
    }

    /// Offers `pps` datagrams of `bytes` per second for `secs`, draining every millisecond;
    /// returns (delivered bytes on the line, dropped, delivered items in order).
    fn drive(l: &mut Link<u32>, pps: u32, bytes: usize, secs: u32) -> (u64, u64, Vec<u32>) {
        let t0 = Instant::now();
        let gap = Duration::from_secs(1) / pps;
        let mut out = Vec::new();
        let mut next = 0u32;
        let total = pps * secs;
        let mut ms = 0u64;
        let mut line_bytes = 0u64;
        while ms < u64::from(secs) * 1000 + 2000 {
            let now = t0 + Duration::from_millis(ms);
            while next < total && t0 + gap * next <= now {
                l.push(now, bytes, next);
                next += 1;
            }
            while let Some(item) = l.pop(now) {
                if ms < u64::from(secs) * 1000 {
                    line_bytes += (bytes + IP_UDP_OVERHEAD) as u64;
                }
                out.push(item);
            }
            ms += 1;
        }
        (line_bytes, l.counters.dropped, out)
    }

    #[test]
    fn an_overloaded_link_delivers_its_rate() {
        // 2 Mbit/s offered to an 800 kbit/s link for 10 s.
        let mut l = link(800, 200);
        let (bytes, dropped, _) = drive(&mut l, 250, 972, 10);
        let rate = bytes as f64 * 8.0 / 10.0;
        assert!((rate / 800_000.0 - 1.0).abs() < 0.02, "{rate} bit/s");
        assert!(dropped > 0);
        assert_eq!(l.counters.delivered + dropped, 2500);
    }

    #[test]
    fn a_link_below_its_rate_delivers_everything_almost_at_once() {
        let mut l = link(800, 200);
        let t0 = Instant::now();
        assert!(l.push(t0, 972, 1));
        // 1000 bytes on the line at 800 kbit/s: 10 ms.
        assert_eq!(l.next_release(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(l.pop(t0 + Duration::from_millis(9)), None);
        assert_eq!(l.pop(t0 + Duration::from_millis(10)), Some(1));
        let (_, dropped, out) = drive(&mut link(800, 200), 50, 472, 5);
        assert_eq!(dropped, 0);
        assert_eq!(out.len(), 250);
    }

    #[test]
    fn the_queue_limit_drops_what_would_wait_too_long() {
        // 1000-byte datagrams take 10 ms each at 800 kbit/s: a 50 ms queue holds five behind
        // the one on the line.
        let mut l = link(800, 50);
        let t0 = Instant::now();
        let accepted = (0..10).filter(|&i| l.push(t0, 972, i)).count();
        assert_eq!(accepted, 6);
        assert_eq!(l.counters.dropped, 4);
        assert_eq!(l.queued(), 6);
        // Once the line has drained, there is room again.
        let later = t0 + Duration::from_millis(60);
        while l.pop(later).is_some() {}
        assert!(l.push(later, 972, 99));
    }

    #[test]
    fn datagrams_leave_in_arrival_order_and_no_earlier_than_they_came() {
        let mut l = link(300, 500);
        let t0 = Instant::now();
        for i in 0..20 {
            l.push(
                t0 + Duration::from_millis(u64::from(i)),
                100 + 50 * i as usize,
                i,
            );
        }
        let mut got = Vec::new();
        let mut last = t0;
        for ms in 0..2000 {
            let now = t0 + Duration::from_millis(ms);
            if let Some(r) = l.next_release() {
                assert!(r >= last, "releases are monotonic");
                last = r;
            }
            while let Some(i) = l.pop(now) {
                assert!(now >= t0 + Duration::from_millis(u64::from(i)));
                got.push(i);
            }
        }
        assert_eq!(got, (0..20).collect::<Vec<_>>());
    }
}
