//! Puts one track's packets back in sequence order before they are depacketized.
//!
//! The SFU forwards packets as they arrive, so the recorder sees the network's reordering,
//! duplicates and loss. Latency does not matter for a recording but memory does, so the
//! window is small and bounded both ways: a missing packet is waited for at most `max_delay`
//! (of recorder time, passed in) or until `max_packets` are held behind it, then given up as
//! lost, which the caller turns into "drop the damaged frame, wait for a keyframe".

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What happened to a pushed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Held for release in order.
    Held,
    /// Already held: ignored.
    Duplicate,
    /// Its place was already released or given up as lost (a late or duplicate packet).
    Late,
}

/// What comes out, in sequence order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released<T> {
    /// The next packet.
    Packet(T),
    /// This many packets before the next one are given up.
    Lost(u64),
}

/// Counters of what the buffer saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets pushed.
    pub received: u64,
    /// Packets pushed twice while held.
    pub duplicates: u64,
    /// Packets that came after their place was released or given up.
    pub late: u64,
    /// Sequence numbers given up as lost.
    pub lost: u64,
}

/// A reorder buffer keyed by extended sequence number.
#[derive(Debug)]
pub struct JitterBuffer<T> {
    max_packets: usize,
    max_delay: Duration,
    /// The next sequence number to release; unknown until the first release, so that packets
    /// reordered at the very start are not counted as late.
    next: Option<u64>,
    held: BTreeMap<u64, (Instant, T)>,
    stats: JitterStats,
}

impl<T> JitterBuffer<T> {
    /// A buffer that gives up on a gap after `max_delay` or when more than `max_packets` wait.
    pub fn new(max_packets: usize, max_delay: Duration) -> Self {
        Self {
            max_packets: max_packets.max(1),
            max_delay,
            next: None,
            held: BTreeMap::new(),
            stats: JitterStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Adds a packet received at `now`.
    pub fn push(&mut self, now: Instant, seq: u64, item: T) -> Pushed {
        self.stats.received += 1;
        if self.next.is_some_and(|next| seq < next) {
            self.stats.late += 1;
            return Pushed::Late;
        }
        if self.held.contains_key(&seq) {
            self.stats.duplicates += 1;
            return Pushed::Duplicate;
        }
        self.held.insert(seq, (now, item));
        Pushed::Held
    }

    /// When [`Self::pop`] will next give up waiting, if something is held.
    pub fn deadline(&self) -> Option<Instant> {
        let (&first, _) = self.held.first_key_value()?;
        if self.next == Some(first) {
            // Releasable now.
            return self.held.values().map(|(t, _)| *t).min();
        }
        self.held
            .values()
            .map(|(t, _)| *t)
            .min()
            .map(|t| t + self.max_delay)
    }

    /// The next packet or gap that is due at `now`.
    pub fn pop(&mut self, now: Instant) -> Option<Released<T>> {
        self.release(|this| {
            this.held.len() > this.max_packets
                || this
                    .held
                    .values()
                    .any(|(t, _)| now.saturating_duration_since(*t) >= this.max_delay)
        })
    }

    /// The next packet or gap, without waiting: for the end of the track or a sender restart.
    pub fn drain(&mut self) -> Option<Released<T>> {
        self.release(|_| true)
    }

    /// Forgets the sequence position (a new SSRC starts a new numbering). Call after draining.
    pub fn reset(&mut self) {
        self.next = None;
        self.held.clear();
    }

    fn release(&mut self, give_up: impl Fn(&Self) -> bool) -> Option<Released<T>> {
        let (&first, _) = self.held.first_key_value()?;
        match self.next {
            Some(next) if first == next => {}
            Some(next) => {
                if !give_up(self) {
                    return None;
                }
                let lost = first - next;
                self.stats.lost += lost;
                self.next = Some(first);
                return Some(Released::Lost(lost));
            }
            None => {
                if !give_up(self) {
                    return None;
                }
            }
        }
        let (_, item) = self.held.remove(&first).expect("first key exists");
        self.next = Some(first + 1);
        Some(Released::Packet(item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_due(buf: &mut JitterBuffer<u64>, now: Instant) -> Vec<Released<u64>> {
        std::iter::from_fn(|| buf.pop(now)).collect()
    }

    #[test]
    fn reordered_packets_come_out_in_order() {
        let t0 = Instant::now();
        let mut buf = JitterBuffer::new(100, Duration::from_millis(200));
        for seq in [11, 10, 12] {
            buf.push(t0, seq, seq);
        }
        // The start waits for the window, so 10 is not taken for late.
        assert!(drain_due(&mut buf, t0).is_empty());
        let out = drain_due(&mut buf, t0 + Duration::from_millis(200));
        assert_eq!(
            out,
            [
                Released::Packet(10),
                Released::Packet(11),
                Released::Packet(12)
            ]
        );
        // Later, in-order packets go straight through; a swapped pair waits for its partner.
        buf.push(t0, 14, 14);
        assert!(drain_due(&mut buf, t0).is_empty());
        buf.push(t0, 13, 13);
        assert_eq!(
            drain_due(&mut buf, t0),
            [Released::Packet(13), Released::Packet(14)]
        );
    }

    #[test]
    fn duplicates_and_late_packets_are_counted_and_dropped() {
        let t0 = Instant::now();
        let mut buf = JitterBuffer::new(100, Duration::from_millis(200));
        buf.push(t0, 1, 1);
        drain_due(&mut buf, t0 + Duration::from_secs(1));
        assert_eq!(buf.push(t0, 3, 3), Pushed::Held);
        assert_eq!(buf.push(t0, 3, 3), Pushed::Duplicate);
        assert_eq!(buf.push(t0, 1, 1), Pushed::Late);
        let stats = buf.stats();
        assert_eq!((stats.received, stats.duplicates, stats.late), (4, 1, 1));
    }

    #[test]
    fn a_gap_is_given_up_after_the_delay() {
        let t0 = Instant::now();
        let mut buf = JitterBuffer::new(100, Duration::from_millis(200));
        buf.push(t0, 1, 1);
        assert_eq!(
            drain_due(&mut buf, t0 + Duration::from_millis(200)),
            [Released::Packet(1)]
        );
        let t1 = t0 + Duration::from_millis(300);
        buf.push(t1, 4, 4);
        buf.push(t1 + Duration::from_millis(10), 5, 5);
        assert!(drain_due(&mut buf, t1 + Duration::from_millis(199)).is_empty());
        assert_eq!(buf.deadline(), Some(t1 + Duration::from_millis(200)));
        let out = drain_due(&mut buf, t1 + Duration::from_millis(200));
        assert_eq!(
            out,
            [Released::Lost(2), Released::Packet(4), Released::Packet(5)]
        );
        assert_eq!(buf.stats().lost, 2);
        // The missing ones arriving now are late.
        assert_eq!(buf.push(t1, 2, 2), Pushed::Late);
    }

    #[test]
    fn a_full_window_gives_up_at_once() {
        let t0 = Instant::now();
        let mut buf = JitterBuffer::new(3, Duration::from_secs(10));
        buf.push(t0, 0, 0);
        assert_eq!(buf.drain(), Some(Released::Packet(0)));
        for seq in 2..6 {
            buf.push(t0, seq, seq);
        }
        let out = drain_due(&mut buf, t0);
        assert_eq!(out[0], Released::Lost(1));
        assert_eq!(out.len(), 5);
        assert!(buf.is_empty());
    }
}
