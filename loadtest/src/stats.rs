//! What the receivers measured: loss, reordering, jitter (RFC 3550), delay added between send
//! and receive, and join times. Sans-IO: times are passed in as microseconds since the epoch.

use std::collections::HashMap;

use hdrhistogram::Histogram;

use crate::payload::{Kind, Probe};

/// Delays above this (µs) are clamped into the top bucket.
const MAX_DELAY_US: u64 = 60_000_000;

/// One received stream: a publisher's audio or video at one subscriber.
#[derive(Debug, Clone, Default)]
struct StreamRx {
    first_seq: u32,
    highest_seq: u32,
    received: u64,
    reordered: u64,
    jitter_us: f64,
    last_transit_us: Option<i64>,
}

impl StreamRx {
    fn expected(&self) -> u64 {
        u64::from(self.highest_seq.wrapping_sub(self.first_seq)) + 1
    }
}

/// Totals over all streams at one moment (for windows: subtract two of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Packets the received sequence ranges say were sent.
    pub expected: u64,
    /// Packets received.
    pub received: u64,
}

impl Counts {
    /// Lost fraction of `self - earlier` (0 when nothing was expected).
    pub fn loss_since(&self, earlier: &Counts) -> f64 {
        let expected = self.expected.saturating_sub(earlier.expected);
        let received = self.received.saturating_sub(earlier.received);
        if expected == 0 {
            return 0.0;
        }
        expected.saturating_sub(received) as f64 / expected as f64
    }
}

/// Everything the receivers of a run measured.
#[derive(Debug)]
pub struct RxStats {
    streams: HashMap<(u32, u32, Kind), StreamRx>,
    received: u64,
    reordered: u64,
    foreign: u64,
    window_delay_us: Histogram<u64>,
    join_ms: Histogram<u64>,
    join_failures: u64,
}

impl Default for RxStats {
    fn default() -> Self {
        Self::new()
    }
}

impl RxStats {
    /// Empty statistics.
    pub fn new() -> RxStats {
        let histogram = || Histogram::new_with_max(MAX_DELAY_US, 3).expect("valid histogram bounds");
        RxStats {
            streams: HashMap::new(),
            received: 0,
            reordered: 0,
            foreign: 0,
            window_delay_us: histogram(),
            join_ms: Histogram::new_with_max(600_000, 3).expect("valid histogram bounds"),
            join_failures: 0,
        }
    }

    /// `subscriber` received `probe` at `now_us`.
    pub fn on_packet(&mut self, subscriber: u32, probe: &Probe, now_us: u64) {
        self.received += 1;
        let delay = now_us.saturating_sub(probe.sent_us).min(MAX_DELAY_US);
        self.window_delay_us.saturating_record(delay);
        let transit = now_us as i64 - probe.sent_us as i64;
        let stream = self
            .streams
            .entry((subscriber, probe.publisher, probe.kind))
            .or_insert_with(|| StreamRx {
                first_seq: probe.seq,
                highest_seq: probe.seq,
                ..StreamRx::default()
            });
        stream.received += 1;
        // Sequence numbers are the generator's own 32-bit counters: no wrap within a run.
        if probe.seq > stream.highest_seq {
            stream.highest_seq = probe.seq;
        } else if probe.seq < stream.highest_seq {
            if probe.seq < stream.first_seq {
                // Arrived before the first one we saw: it extends the range.
                stream.first_seq = probe.seq;
            }
            stream.reordered += 1;
            self.reordered += 1;
        }
        if let Some(last) = stream.last_transit_us {
            let d = (transit - last).unsigned_abs() as f64;
            stream.jitter_us += (d - stream.jitter_us) / 16.0;
        }
        stream.last_transit_us = Some(transit);
    }

    /// A payload that was not ours arrived.
    pub fn on_foreign(&mut self) {
        self.foreign += 1;
    }

    /// A participant's first media arrived `ms` after it asked to join.
    pub fn on_joined(&mut self, ms: u64) {
        self.join_ms.saturating_record(ms);
    }

    /// A participant never got going (signaling or connection failed).
    pub fn on_join_failed(&mut self) {
        self.join_failures += 1;
    }

    /// Totals now.
    pub fn counts(&self) -> Counts {
        let expected = self.streams.values().map(StreamRx::expected).sum();
        Counts {
            expected,
            received: self.received,
        }
    }

    /// Forgets the delays of the current window (the whole-run delays stay).
    pub fn reset_window(&mut self) {
        self.window_delay_us.reset();
    }

    /// Delay percentile of the current window, in µs.
    pub fn window_delay_us(&self, quantile: f64) -> u64 {
        self.window_delay_us.value_at_quantile(quantile)
    }

    /// Summary: loss since `since` (counts at the window's start), delays of the current
    /// window, joins of the whole run.
    pub fn summary(&self, since: &Counts) -> RxSummary {
        let counts = self.counts();
        let jitters: Vec<f64> = self.streams.values().map(|s| s.jitter_us).collect();
        let mean_jitter = if jitters.is_empty() {
            0.0
        } else {
            jitters.iter().sum::<f64>() / jitters.len() as f64
        };
        let ms = |us: u64| us as f64 / 1000.0;
        RxSummary {
            streams: self.streams.len() as u64,
            received: counts.received.saturating_sub(since.received),
            expected: counts.expected.saturating_sub(since.expected),
            lost: (counts.expected.saturating_sub(since.expected))
                .saturating_sub(counts.received.saturating_sub(since.received)),
            loss: counts.loss_since(since),
            reordered: self.reordered,
            foreign: self.foreign,
            delay_p50_ms: ms(self.window_delay_us.value_at_quantile(0.5)),
            delay_p99_ms: ms(self.window_delay_us.value_at_quantile(0.99)),
            delay_max_ms: ms(self.window_delay_us.max()),
            jitter_mean_ms: mean_jitter / 1000.0,
            joins: self.join_ms.len(),
            join_failures: self.join_failures,
            join_p50_ms: self.join_ms.value_at_quantile(0.5),
            join_p99_ms: self.join_ms.value_at_quantile(0.99),
        }
    }
}

/// The receivers' figures for a report.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RxSummary {
    /// Distinct (subscriber, publisher, kind) streams that received anything.
    pub streams: u64,
    /// Packets received (in the window).
    pub received: u64,
    /// Packets the sequence ranges say were sent to the receivers (in the window).
    pub expected: u64,
    /// Expected but not received.
    pub lost: u64,
    /// `lost / expected`.
    pub loss: f64,
    /// Packets that arrived after a later one.
    pub reordered: u64,
    /// Payloads that were not the generator's.
    pub foreign: u64,
    /// Delay added between send and receive, median.
    pub delay_p50_ms: f64,
    /// 99th percentile.
    pub delay_p99_ms: f64,
    /// Largest.
    pub delay_max_ms: f64,
    /// Mean RFC 3550 interarrival jitter over the streams.
    pub jitter_mean_ms: f64,
    /// Participants whose first media arrived.
    pub joins: u64,
    /// Participants that failed to join or connect.
    pub join_failures: u64,
    /// Join request to first media packet, median.
    pub join_p50_ms: u64,
    /// 99th percentile.
    pub join_p99_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(seq: u32, sent_us: u64) -> Probe {
        Probe {
            publisher: 1,
            kind: Kind::Video,
            seq,
            sent_us,
        }
    }

    #[test]
    fn loss_reordering_and_delay_are_counted() {
        let mut s = RxStats::new();
        // Sequence 10..=19 with 13 and 17 lost, 15 arriving after 16.
        for (seq, delay) in [(10, 100), (11, 100), (12, 200), (14, 100), (16, 100), (15, 300), (18, 100), (19, 5000)] {
            s.on_packet(2, &probe(seq, 1_000_000 + u64::from(seq) * 1000), 1_000_000 + u64::from(seq) * 1000 + delay);
        }
        let sum = s.summary(&Counts::default());
        assert_eq!(sum.received, 8);
        assert_eq!(sum.expected, 10);
        assert_eq!(sum.lost, 2);
        assert!((sum.loss - 0.2).abs() < 1e-9);
        assert_eq!(sum.reordered, 1);
        assert!((sum.delay_p50_ms - 0.1).abs() < 0.001, "{}", sum.delay_p50_ms);
        assert!((sum.delay_max_ms - 5.0).abs() < 0.01, "{}", sum.delay_max_ms);
        assert!(sum.jitter_mean_ms > 0.0);
    }

    #[test]
    fn streams_are_kept_apart_per_subscriber_publisher_and_kind() {
        let mut s = RxStats::new();
        s.on_packet(1, &probe(5, 0), 10);
        s.on_packet(2, &probe(100, 0), 10);
        s.on_packet(2, &Probe { kind: Kind::Audio, ..probe(7, 0) }, 10);
        let sum = s.summary(&Counts::default());
        assert_eq!(sum.streams, 3);
        assert_eq!(sum.lost, 0);
    }

    #[test]
    fn window_loss_is_the_difference_of_two_counts() {
        let mut s = RxStats::new();
        for seq in 0..100 {
            s.on_packet(1, &probe(seq, 0), 1);
        }
        let before = s.counts();
        for seq in (100..200).filter(|n| n % 10 != 0) {
            s.on_packet(1, &probe(seq, 0), 1);
        }
        let after = s.counts();
        let loss = after.loss_since(&before);
        // 100..=199 newly expected, the ten multiples of ten never arrive.
        assert!((loss - 0.1).abs() < 1e-9, "{loss}");
    }

    #[test]
    fn join_times_have_percentiles() {
        let mut s = RxStats::new();
        for ms in 1..=100 {
            s.on_joined(ms);
        }
        s.on_join_failed();
        let sum = s.summary(&Counts::default());
        assert_eq!(sum.joins, 100);
        assert_eq!(sum.join_failures, 1);
        assert_eq!(sum.join_p50_ms, 50);
        assert_eq!(sum.join_p99_ms, 99);
    }
}
