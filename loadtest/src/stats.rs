//! What the receivers measured: loss, reordering, jitter (RFC 3550), delay added between send
//! and receive, and join times. Sans-IO: times are passed in as microseconds since the epoch.

use std::collections::{HashMap, HashSet};

use hdrhistogram::Histogram;

use crate::payload::{Kind, Probe};

/// Delays above this (µs) are clamped into the top bucket.
const MAX_DELAY_US: u64 = 60_000_000;

/// A video stream that received nothing for this long at the end of a window counts as
/// paused (the server stopped it, or it starves).
const PAUSED_AFTER_US: u64 = 1_000_000;

/// Receivers are grouped by their downlink: behind the emulated cap or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// An unlimited (loopback) downlink.
    #[default]
    Uncapped,
    /// Behind `--downlink-kbps`.
    Capped,
}

impl Group {
    const ALL: [Group; 2] = [Group::Uncapped, Group::Capped];

    fn index(self) -> usize {
        match self {
            Group::Uncapped => 0,
            Group::Capped => 1,
        }
    }
}

/// What the receiving peer knows about a packet besides its probe.
#[derive(Debug, Clone, Copy, Default)]
pub struct Arrival {
    /// The payload starts a VP8 keyframe.
    pub keyframe_start: bool,
    /// Payload bytes.
    pub payload_len: usize,
}

/// One received stream: a publisher's audio or video at one subscriber, whatever layer.
///
/// Loss is counted per *segment*: a run of packets of one layer that the server forwarded
/// without a break. The server may stop forwarding a video at any packet (pause, or a switch
/// down) and start again only at a keyframe (resume, or a switch to another layer; its
/// rewriting hides this from the RTP sequence numbers, but the probe keeps the publisher's own
/// per-layer numbers). So a packet that starts a keyframe after a gap, or that comes from
/// another layer, opens a new segment: the gap is not counted as loss but as packets skipped
/// by the server. Inside a segment every gap is loss. A real loss just before a keyframe is
/// therefore counted as skipped rather than lost; the report shows both.
#[derive(Debug, Clone, Default)]
struct StreamRx {
    group: Group,
    /// The subscriber receives through TURN.
    relayed: bool,
    kind_video: bool,
    layer: u8,
    first_seq: u32,
    highest_seq: u32,
    /// Expected packets of the segments before the current one.
    closed_expected: u64,
    /// Segments opened after the first (switches and resumes).
    restarts: u64,
    /// Packets between the end of one segment and the keyframe that opened the next one on
    /// the same layer.
    skipped: u64,
    received: u64,
    bytes: u64,
    last_us: u64,
    reordered: u64,
    jitter_us: f64,
    last_transit_us: Option<i64>,
}

impl StreamRx {
    fn expected(&self) -> u64 {
        self.closed_expected + u64::from(self.highest_seq.wrapping_sub(self.first_seq)) + 1
    }

    fn open_segment(&mut self, layer: u8, seq: u32) {
        self.closed_expected = self.expected();
        self.restarts += 1;
        if layer == self.layer && seq > self.highest_seq {
            self.skipped += u64::from(seq - self.highest_seq - 1);
        }
        self.layer = layer;
        self.first_seq = seq;
        self.highest_seq = seq;
    }
}

/// Counters of one receiver group at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCounts {
    /// Packets the segments say were sent.
    pub expected: u64,
    /// Packets received.
    pub received: u64,
    /// Video payload bytes received.
    pub video_bytes: u64,
    /// Packets skipped by the server before a restarting keyframe.
    pub skipped: u64,
    /// Segments restarted (layer switches and resumes).
    pub restarts: u64,
}

/// Totals over all streams at one moment (for windows: subtract two of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Packets the received sequence ranges say were sent.
    pub expected: u64,
    /// Packets received.
    pub received: u64,
    /// The same per receiver group ([`Group`] order: uncapped, capped).
    pub groups: [GroupCounts; 2],
    /// The same per receiver path ([`Path`] order: direct, relayed through TURN).
    pub paths: [GroupCounts; 2],
}

/// How a receiver's media reaches it: straight from the SFU, or through the server's TURN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// Host candidate to the SFU.
    Direct,
    /// Relay-only ICE through the embedded TURN (UDP).
    Relayed,
}

impl Path {
    const ALL: [Path; 2] = [Path::Direct, Path::Relayed];

    fn index(self) -> usize {
        match self {
            Path::Direct => 0,
            Path::Relayed => 1,
        }
    }
}

/// What the receivers of one path got in the window.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PathSummary {
    /// Which path.
    pub path: Path,
    /// Receivers on it.
    pub receivers: u64,
    /// Receivers on it whose first media arrived.
    pub receiving: u64,
    /// Packets received per second, all of its receivers.
    pub received_pps: f64,
    /// The same per receiver.
    pub received_pps_per_receiver: f64,
    /// Lost fraction.
    pub loss: f64,
    /// Packets lost.
    pub lost: u64,
    /// Packets expected.
    pub expected: u64,
    /// Delay median, ms.
    pub delay_p50_ms: f64,
    /// 99th percentile, ms.
    pub delay_p99_ms: f64,
}

impl Counts {
    /// Lost fraction of `self - earlier` (0 when nothing was expected).
    pub fn loss_since(&self, earlier: &Counts) -> f64 {
        loss(
            self.expected.saturating_sub(earlier.expected),
            self.received.saturating_sub(earlier.received),
        )
    }
}

fn loss(expected: u64, received: u64) -> f64 {
    if expected == 0 {
        return 0.0;
    }
    expected.saturating_sub(received) as f64 / expected as f64
}

/// Everything the receivers of a run measured.
#[derive(Debug)]
pub struct RxStats {
    streams: HashMap<(u32, u32, Kind), StreamRx>,
    groups: HashMap<u32, Group>,
    relayed: HashSet<u32>,
    received: u64,
    reordered: u64,
    foreign: u64,
    window_delay_us: Histogram<u64>,
    group_delay_us: [Histogram<u64>; 2],
    path_delay_us: [Histogram<u64>; 2],
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
        let histogram =
            || Histogram::new_with_max(MAX_DELAY_US, 3).expect("valid histogram bounds");
        RxStats {
            streams: HashMap::new(),
            groups: HashMap::new(),
            relayed: HashSet::new(),
            received: 0,
            reordered: 0,
            foreign: 0,
            window_delay_us: histogram(),
            group_delay_us: [histogram(), histogram()],
            path_delay_us: [histogram(), histogram()],
            join_ms: Histogram::new_with_max(600_000, 3).expect("valid histogram bounds"),
            join_failures: 0,
        }
    }

    /// `subscriber` receives through a link of `group` (uncapped unless said).
    pub fn set_group(&mut self, subscriber: u32, group: Group) {
        self.groups.insert(subscriber, group);
    }

    /// `subscriber` receives through TURN (direct unless said).
    pub fn set_relayed(&mut self, subscriber: u32) {
        self.relayed.insert(subscriber);
    }

    /// `subscriber` received `probe` at `now_us`.
    pub fn on_packet(&mut self, subscriber: u32, probe: &Probe, arrival: Arrival, now_us: u64) {
        self.received += 1;
        let delay = now_us.saturating_sub(probe.sent_us).min(MAX_DELAY_US);
        self.window_delay_us.saturating_record(delay);
        let group = self.groups.get(&subscriber).copied().unwrap_or_default();
        self.group_delay_us[group.index()].saturating_record(delay);
        let transit = now_us as i64 - probe.sent_us as i64;
        let stream = self
            .streams
            .entry((subscriber, probe.publisher, probe.kind))
            .or_insert_with(|| StreamRx {
                group,
                relayed: self.relayed.contains(&subscriber),
                kind_video: probe.kind == Kind::Video,
                layer: probe.layer,
                first_seq: probe.seq,
                highest_seq: probe.seq,
                ..StreamRx::default()
            });
        let path = if stream.relayed {
            Path::Relayed
        } else {
            Path::Direct
        };
        self.path_delay_us[path.index()].saturating_record(delay);
        stream.received += 1;
        stream.last_us = now_us;
        if probe.kind == Kind::Video {
            stream.bytes += arrival.payload_len as u64;
        }
        // Sequence numbers are the generator's own 32-bit counters: no wrap within a run.
        let restart = arrival.keyframe_start
            && (probe.layer != stream.layer || probe.seq > stream.highest_seq.saturating_add(1));
        if restart {
            stream.open_segment(probe.layer, probe.seq);
        } else if probe.layer != stream.layer {
            // A late packet of the layer before a switch: received, not part of the segment.
            stream.reordered += 1;
            self.reordered += 1;
        } else if probe.seq > stream.highest_seq {
            stream.highest_seq = probe.seq;
        } else if probe.seq < stream.highest_seq {
            if probe.seq < stream.first_seq && stream.restarts == 0 {
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
        let mut counts = Counts {
            received: self.received,
            ..Counts::default()
        };
        for s in self.streams.values() {
            let expected = s.expected();
            counts.expected += expected;
            let g = &mut counts.groups[s.group.index()];
            g.expected += expected;
            g.received += s.received;
            g.video_bytes += s.bytes;
            g.skipped += s.skipped;
            g.restarts += s.restarts;
            let p = &mut counts.paths[usize::from(s.relayed)];
            p.expected += expected;
            p.received += s.received;
        }
        counts
    }

    /// Forgets the delays of the current window (the whole-run delays stay).
    pub fn reset_window(&mut self) {
        self.window_delay_us.reset();
        for h in self
            .group_delay_us
            .iter_mut()
            .chain(self.path_delay_us.iter_mut())
        {
            h.reset();
        }
    }

    /// Delay percentile of the current window, in µs.
    pub fn window_delay_us(&self, quantile: f64) -> u64 {
        self.window_delay_us.value_at_quantile(quantile)
    }

    /// Per receiver group: what its receivers got between `since` and now (`secs` apart),
    /// and the layer each video stream was on at `now_us`. Groups without receivers are left
    /// out. `layers` names the publishers' layers (rids, lowest first; one unnamed layer
    /// without simulcast).
    pub fn groups(
        &self,
        since: &Counts,
        secs: f64,
        now_us: u64,
        layers: &[String],
    ) -> Vec<GroupSummary> {
        let now = self.counts();
        let mut out = Vec::new();
        for group in Group::ALL {
            let i = group.index();
            let receivers = self.groups.values().filter(|g| **g == group).count() as u64;
            let videos: Vec<&StreamRx> = self
                .streams
                .values()
                .filter(|s| s.group == group && s.kind_video)
                .collect();
            if receivers == 0 && videos.is_empty() {
                continue;
            }
            let (a, b) = (&since.groups[i], &now.groups[i]);
            let received = b.received.saturating_sub(a.received);
            let expected = b.expected.saturating_sub(a.expected);
            let per_sec = |x: u64| if secs > 0.0 { x as f64 / secs } else { 0.0 };
            let mut ended_on: std::collections::BTreeMap<String, u64> = Default::default();
            for v in &videos {
                let name = if now_us.saturating_sub(v.last_us) > PAUSED_AFTER_US {
                    "paused".to_string()
                } else {
                    layers
                        .get(usize::from(v.layer))
                        .cloned()
                        .unwrap_or_else(|| format!("layer {}", v.layer))
                };
                *ended_on.entry(name).or_default() += 1;
            }
            let video_kbps = per_sec(b.video_bytes.saturating_sub(a.video_bytes)) * 8.0 / 1000.0;
            out.push(GroupSummary {
                group,
                receivers,
                video_streams: videos.len() as u64,
                received_pps: per_sec(received),
                received_pps_per_receiver: if receivers > 0 {
                    per_sec(received) / receivers as f64
                } else {
                    0.0
                },
                loss: loss(expected, received),
                lost: expected.saturating_sub(received),
                skipped: b.skipped.saturating_sub(a.skipped),
                restarts: b.restarts.saturating_sub(a.restarts),
                video_kbps_per_stream: if videos.is_empty() {
                    0.0
                } else {
                    video_kbps / videos.len() as f64
                },
                delay_p50_ms: self.group_delay_us[i].value_at_quantile(0.5) as f64 / 1000.0,
                delay_p99_ms: self.group_delay_us[i].value_at_quantile(0.99) as f64 / 1000.0,
                ended_on,
            });
        }
        out
    }

    /// Per path (direct, relayed), when any receiver is relayed: what its receivers got
    /// between `since` and now (`secs` apart). Paths without receivers are left out.
    pub fn paths(&self, since: &Counts, secs: f64) -> Vec<PathSummary> {
        if self.relayed.is_empty() {
            return Vec::new();
        }
        let now = self.counts();
        let mut out = Vec::new();
        for path in Path::ALL {
            let i = path.index();
            let on_path = |subscriber: &u32| self.relayed.contains(subscriber) == (i == 1);
            let receivers = self.groups.keys().filter(|s| on_path(s)).count() as u64;
            if receivers == 0 {
                continue;
            }
            let receiving = self
                .streams
                .keys()
                .map(|(subscriber, _, _)| *subscriber)
                .filter(|s| on_path(s))
                .collect::<HashSet<u32>>()
                .len() as u64;
            let (a, b) = (&since.paths[i], &now.paths[i]);
            let received = b.received.saturating_sub(a.received);
            let expected = b.expected.saturating_sub(a.expected);
            let pps = if secs > 0.0 {
                received as f64 / secs
            } else {
                0.0
            };
            out.push(PathSummary {
                path,
                receivers,
                receiving,
                received_pps: pps,
                received_pps_per_receiver: pps / receivers as f64,
                loss: loss(expected, received),
                lost: expected.saturating_sub(received),
                expected,
                delay_p50_ms: self.path_delay_us[i].value_at_quantile(0.5) as f64 / 1000.0,
                delay_p99_ms: self.path_delay_us[i].value_at_quantile(0.99) as f64 / 1000.0,
            });
        }
        out
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
        let skipped: u64 = (0..2)
            .map(|i| {
                counts.groups[i]
                    .skipped
                    .saturating_sub(since.groups[i].skipped)
            })
            .sum();
        let restarts: u64 = (0..2)
            .map(|i| {
                counts.groups[i]
                    .restarts
                    .saturating_sub(since.groups[i].restarts)
            })
            .sum();
        RxSummary {
            streams: self.streams.len() as u64,
            received: counts.received.saturating_sub(since.received),
            expected: counts.expected.saturating_sub(since.expected),
            lost: (counts.expected.saturating_sub(since.expected))
                .saturating_sub(counts.received.saturating_sub(since.received)),
            loss: counts.loss_since(since),
            skipped_by_server: skipped,
            restarts,
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

/// What one receiver group got in the window.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GroupSummary {
    /// Which group.
    pub group: Group,
    /// Receivers in it.
    pub receivers: u64,
    /// Video streams its receivers got (publisher x receiver).
    pub video_streams: u64,
    /// Packets received per second, whole group.
    pub received_pps: f64,
    /// The same per receiver.
    pub received_pps_per_receiver: f64,
    /// Lost fraction (inside segments, see the stream accounting).
    pub loss: f64,
    /// Packets lost.
    pub lost: u64,
    /// Packets the server did not forward before a restarting keyframe (pauses, switches).
    pub skipped: u64,
    /// Layer switches and resumes seen.
    pub restarts: u64,
    /// Mean video payload bit rate received per video stream, kbit/s.
    pub video_kbps_per_stream: f64,
    /// Delay median in this group, ms.
    pub delay_p50_ms: f64,
    /// 99th percentile, ms.
    pub delay_p99_ms: f64,
    /// Video streams by the layer they were on at the end (`paused`: nothing for 1 s).
    pub ended_on: std::collections::BTreeMap<String, u64>,
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
    /// Packets the server deliberately did not forward: from where a stream stopped to the
    /// keyframe it restarted at on the same layer (not counted as lost).
    pub skipped_by_server: u64,
    /// Layer switches and resumes seen by the receivers.
    pub restarts: u64,
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
            layer: 0,
            seq,
            sent_us,
        }
    }

    #[test]
    fn loss_reordering_and_delay_are_counted() {
        let mut s = RxStats::new();
        // Sequence 10..=19 with 13 and 17 lost, 15 arriving after 16.
        for (seq, delay) in [
            (10, 100),
            (11, 100),
            (12, 200),
            (14, 100),
            (16, 100),
            (15, 300),
            (18, 100),
            (19, 5000),
        ] {
            s.on_packet(
                2,
                &probe(seq, 1_000_000 + u64::from(seq) * 1000),
                Arrival::default(),
                1_000_000 + u64::from(seq) * 1000 + delay,
            );
        }
        let sum = s.summary(&Counts::default());
        assert_eq!(sum.received, 8);
        assert_eq!(sum.expected, 10);
        assert_eq!(sum.lost, 2);
        assert!((sum.loss - 0.2).abs() < 1e-9);
        assert_eq!(sum.reordered, 1);
        assert!(
            (sum.delay_p50_ms - 0.1).abs() < 0.001,
            "{}",
            sum.delay_p50_ms
        );
        assert!(
            (sum.delay_max_ms - 5.0).abs() < 0.01,
            "{}",
            sum.delay_max_ms
        );
        assert!(sum.jitter_mean_ms > 0.0);
    }

    #[test]
    fn streams_are_kept_apart_per_subscriber_publisher_and_kind() {
        let mut s = RxStats::new();
        s.on_packet(1, &probe(5, 0), Arrival::default(), 10);
        s.on_packet(2, &probe(100, 0), Arrival::default(), 10);
        s.on_packet(
            2,
            &Probe {
                kind: Kind::Audio,
                ..probe(7, 0)
            },
            Arrival::default(),
            10,
        );
        let sum = s.summary(&Counts::default());
        assert_eq!(sum.streams, 3);
        assert_eq!(sum.lost, 0);
    }

    #[test]
    fn window_loss_is_the_difference_of_two_counts() {
        let mut s = RxStats::new();
        for seq in 0..100 {
            s.on_packet(1, &probe(seq, 0), Arrival::default(), 1);
        }
        let before = s.counts();
        for seq in (100..200).filter(|n| n % 10 != 0) {
            s.on_packet(1, &probe(seq, 0), Arrival::default(), 1);
        }
        let after = s.counts();
        let loss = after.loss_since(&before);
        // 100..=199 newly expected, the ten multiples of ten never arrive.
        assert!((loss - 0.1).abs() < 1e-9, "{loss}");
    }

    /// A video packet of `layer` with the layer's own sequence number.
    fn video(layer: u8, seq: u32, key: bool) -> (Probe, Arrival) {
        let probe = Probe {
            layer,
            ..probe(seq, 0)
        };
        let arrival = Arrival {
            keyframe_start: key,
            payload_len: 1000,
        };
        (probe, arrival)
    }

    #[test]
    fn a_layer_switch_opens_a_segment_and_is_not_loss() {
        let mut s = RxStats::new();
        // Layer 2 (f) 100..=109, then down to layer 0 (q), whose numbers are far lower, from
        // its keyframe at 40; then back up to f at its keyframe 150.
        for seq in 100..110 {
            let (p, a) = video(2, seq, seq == 100);
            s.on_packet(1, &p, a, 1);
        }
        for seq in 40..45 {
            let (p, a) = video(0, seq, seq == 40);
            s.on_packet(1, &p, a, 1);
        }
        // A late packet of q after the switch back is received, not a segment of its own.
        for (layer, seq) in [(2, 150), (2, 151), (0, 45), (2, 152)] {
            let (p, a) = video(layer, seq, seq == 150);
            s.on_packet(1, &p, a, 1);
        }
        let sum = s.summary(&Counts::default());
        assert_eq!(sum.received, 19);
        assert_eq!(sum.expected, 18, "10 + 5 + 3 in three segments");
        assert_eq!(sum.lost, 0);
        assert_eq!(sum.restarts, 2);
        assert_eq!(
            sum.skipped_by_server, 0,
            "switches between layers skip nothing countable"
        );
    }

    #[test]
    fn a_pause_on_one_layer_is_skipped_but_loss_inside_a_segment_counts() {
        let mut s = RxStats::new();
        // q 0..=9 with 5 lost, paused after 9, resumed at the keyframe 30; 33 lost.
        for seq in (0..10)
            .filter(|&n| n != 5)
            .chain(30..36)
            .filter(|&n| n != 33)
        {
            let (p, a) = video(0, seq, seq == 0 || seq == 30);
            s.on_packet(1, &p, a, 1);
        }
        let sum = s.summary(&Counts::default());
        assert_eq!(sum.expected, 16);
        assert_eq!(sum.lost, 2);
        assert_eq!(sum.skipped_by_server, 20);
        assert_eq!(sum.restarts, 1);
        // A periodic keyframe right after the previous packet is no restart.
        let (p, a) = video(0, 36, true);
        s.on_packet(1, &p, a, 1);
        assert_eq!(s.summary(&Counts::default()).restarts, 1);
    }

    #[test]
    fn groups_report_their_own_rates_and_the_layer_they_ended_on() {
        let mut s = RxStats::new();
        s.set_group(1, Group::Uncapped);
        s.set_group(2, Group::Capped);
        let start = s.counts();
        for seq in 0..100 {
            let (p, a) = video(2, seq, seq == 0);
            s.on_packet(1, &p, a, 1_000_000);
            if seq % 4 == 0 {
                let (p, a) = video(0, seq / 4, seq == 0);
                s.on_packet(2, &p, a, 1_000_000);
            }
        }
        // Subscriber 2 also gets a second publisher's video, which stopped long ago.
        let (p, a) = video(0, 0, true);
        s.on_packet(2, &Probe { publisher: 9, ..p }, a, 0);
        let layers = vec!["q".to_string(), "h".to_string(), "f".to_string()];
        let groups = s.groups(&start, 1.0, 2_500_000, &layers);
        assert_eq!(groups.len(), 2);
        let (free, capped) = (&groups[0], &groups[1]);
        assert_eq!(free.group, Group::Uncapped);
        assert_eq!(free.received_pps, 100.0);
        assert!((free.video_kbps_per_stream - 800.0).abs() < 1e-9);
        assert_eq!(
            free.ended_on.get("paused"),
            Some(&1),
            "nothing for a second at the end"
        );
        assert_eq!(capped.receivers, 1);
        assert_eq!(capped.video_streams, 2);
        assert_eq!(capped.received_pps, 26.0);
        assert_eq!(capped.loss, 0.0);
        assert_eq!(capped.ended_on.get("paused"), Some(&2));
        let groups = s.groups(&start, 1.0, 1_500_000, &layers);
        assert_eq!(groups[0].ended_on.get("f"), Some(&1));
        assert_eq!(groups[1].ended_on.get("q"), Some(&1));
        assert_eq!(groups[1].ended_on.get("paused"), Some(&1));
    }

    #[test]
    fn relayed_receivers_are_reported_apart() {
        let mut s = RxStats::new();
        for subscriber in 1..=3 {
            s.set_group(subscriber, Group::Uncapped);
        }
        assert!(
            s.paths(&Counts::default(), 1.0).is_empty(),
            "nobody relayed"
        );
        s.set_relayed(2);
        let start = s.counts();
        for seq in (0..10).filter(|&n| n != 4) {
            s.on_packet(1, &probe(seq, 0), Arrival::default(), 1000);
            s.on_packet(2, &probe(seq, 0), Arrival::default(), 3000);
        }
        s.on_packet(2, &probe(10, 0), Arrival::default(), 3000);
        let paths = s.paths(&start, 1.0);
        assert_eq!(paths.len(), 2);
        let (direct, relayed) = (&paths[0], &paths[1]);
        assert_eq!(
            (direct.path, direct.receivers, direct.receiving),
            (Path::Direct, 2, 1)
        );
        assert_eq!(
            (relayed.path, relayed.receivers, relayed.receiving),
            (Path::Relayed, 1, 1)
        );
        assert_eq!((direct.received_pps, direct.lost), (9.0, 1));
        assert_eq!((relayed.received_pps, relayed.expected), (10.0, 11));
        assert!((relayed.delay_p50_ms - 3.0).abs() < 0.01);
        assert!((direct.delay_p99_ms - 1.0).abs() < 0.01);
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
