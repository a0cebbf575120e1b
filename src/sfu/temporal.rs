//! Temporal layers: fewer frames per second for a subscriber that wants fewer.
//!
//! A VP8 encoder with temporal scalability (Chrome's camera simulcast is `L1T3`) tags every
//! picture with a temporal layer index (TID): at 20 fps, TID 0 carries 5 pictures a second,
//! TID 1 another 5 and TID 2 the other 10. A picture only references pictures of its own or a
//! lower TID, so dropping every picture above a TID leaves a stream the decoder plays at the
//! lower rate. A subscriber that asks for `max_fps` (a thumbnail) gets the highest TID whose
//! rate stays within it, and costs its link what those layers carry.
//!
//! - [`TemporalMeter`] measures, per published layer, the pictures per second and the share
//!   of the bytes each TID carries.
//! - [`TemporalFilter`] decides per subscription which packets go, and renumbers what is
//!   kept ([`Gaps`]): sequence numbers and picture ids continue without the dropped ones, so
//!   the subscriber neither asks for retransmissions of packets never meant for it nor waits
//!   for pictures that will not come. Going down takes effect at the next picture (a TID is
//!   per picture, so no picture is cut); going up waits for a TID 0 picture, from which every
//!   higher layer decodes.
//!
//! Streams without temporal layers (H.264, VP8 without a TID, 7-bit picture ids) pass
//! through unchanged.

use std::collections::VecDeque;
use std::time::Instant;

use str0m::rtp::Vp8Descriptor;

/// Most temporal layers tracked (VP8's TID has two bits).
pub const MAX_TEMPORAL: usize = 4;

/// Every temporal layer (no limit).
pub const ALL: u8 = u8::MAX;

/// A rate is within a subscriber's `max_fps` when at most this much above it (a camera
/// configured for 20 fps measures 20.4 now and then).
const FPS_SLACK: f64 = 1.1;

/// Weight of the newest measurement (per tick of about 250 ms), as the layers' bitrates.
const SMOOTHING: f64 = 0.3;

/// Dropped numbers are remembered one by one this far below the highest number seen; older
/// ones are only counted. A packet that late is past any use (a subscriber's resend history
/// holds at most 1024 packets): at most 8 KiB per list, two lists per limited subscription.
const GAP_MEMORY: u64 = 1024;

/// Numbers removed from a stream (the sequence numbers or picture ids of dropped pictures),
/// so that the ones kept are renumbered without holes.
///
/// Only a number above every one seen is recorded as dropped: a late packet dropped below
/// the highest seen would shift numbers already handed out, so its slot stays a hole (the
/// rule of mediasoup's `SeqManager`).
#[derive(Debug, Default, Clone)]
pub struct Gaps {
    highest: Option<u64>,
    /// Dropped numbers within [`GAP_MEMORY`] of `highest`, ascending.
    recent: VecDeque<u64>,
    /// Dropped numbers forgotten from `recent`.
    older: u64,
}

impl Gaps {
    /// `x` is dropped.
    pub fn drop(&mut self, x: u64) {
        if self.highest.is_some_and(|h| x <= h) {
            return;
        }
        self.highest = Some(x);
        self.recent.push_back(x);
        self.prune();
    }

    /// `x` is kept: its number with the dropped ones below it taken out.
    pub fn keep(&mut self, x: u64) -> u64 {
        if self.highest.is_none_or(|h| x > h) {
            self.highest = Some(x);
            self.prune();
        }
        let below = self.recent.partition_point(|d| *d < x) as u64;
        x.saturating_sub(self.older + below)
    }

    fn prune(&mut self) {
        let horizon = self.highest.unwrap_or(0).saturating_sub(GAP_MEMORY);
        while self.recent.front().is_some_and(|d| *d < horizon) {
            self.recent.pop_front();
            self.older += 1;
        }
    }
}

/// Extends 15-bit VP8 picture ids into a count that does not wrap.
#[derive(Debug, Default, Clone, Copy)]
struct PictureIds {
    last: Option<u64>,
}

impl PictureIds {
    const MODULUS: u64 = 1 << 15;

    fn extend(&mut self, pid: u16) -> u64 {
        let pid = u64::from(pid) % Self::MODULUS;
        let ext = match self.last {
            // Start well above zero so a picture reordered before the first stays positive.
            None => Self::MODULUS * 4 + pid,
            Some(last) => {
                let forward = (pid + Self::MODULUS - last % Self::MODULUS) % Self::MODULUS;
                if forward < Self::MODULUS / 2 {
                    last + forward
                } else {
                    last.saturating_sub(Self::MODULUS - forward)
                }
            }
        };
        if self.last.is_none_or(|l| ext > l) {
            self.last = Some(ext);
        }
        ext
    }
}

/// What happens to one packet of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporal {
    /// Forward it, with this (extended) sequence number and, for VP8 with temporal layers,
    /// this 15-bit picture id: both with the dropped ones taken out.
    Forward { seq: u64, picture_id: Option<u16> },
    /// Its picture is above the subscriber's temporal layer.
    Drop,
}

/// One subscription's temporal layer: which pictures go, and their renumbering.
#[derive(Debug, Clone)]
pub struct TemporalFilter {
    /// Highest TID wanted ([`ALL`]: no limit).
    target: u8,
    /// Highest TID forwarded now.
    current: u8,
    pids: PictureIds,
    newest_picture: Option<u64>,
    seq_gaps: Gaps,
    pid_gaps: Gaps,
}

impl Default for TemporalFilter {
    fn default() -> Self {
        TemporalFilter {
            target: ALL,
            current: ALL,
            pids: PictureIds::default(),
            newest_picture: None,
            seq_gaps: Gaps::default(),
            pid_gaps: Gaps::default(),
        }
    }
}

impl TemporalFilter {
    /// The highest TID the subscriber should get ([`ALL`] for every one).
    pub fn set_target(&mut self, target: u8) {
        self.target = target;
    }

    /// The highest TID wanted.
    pub fn target(&self) -> u8 {
        self.target
    }

    /// A new run starts at a keyframe (a layer switch, a resume, a new source): every
    /// temporal layer decodes from it, and the numbers start afresh.
    pub fn restart(&mut self) {
        *self = TemporalFilter {
            target: self.target,
            current: self.target,
            ..TemporalFilter::default()
        };
    }

    /// Decide one packet with (extended) sequence number `seq` and VP8 descriptor `vp8`.
    pub fn filter(&mut self, seq: u64, vp8: Option<&Vp8Descriptor>) -> Temporal {
        let layered = vp8.and_then(
            |d| match (d.tid(), d.picture_id(), d.picture_id_is_15_bit()) {
                (Some(tid), Some(pid), Some(true)) => Some((tid, pid)),
                _ => None,
            },
        );
        let Some((tid, pid)) = layered else {
            return Temporal::Forward {
                seq: self.seq_gaps.keep(seq),
                picture_id: None,
            };
        };
        let picture = self.pids.extend(pid);
        let new_picture = self.newest_picture.is_none_or(|n| picture > n);
        if new_picture {
            self.newest_picture = Some(picture);
            // Down at once (at a picture boundary); up from a base-layer picture.
            if self.target < self.current || (self.target > self.current && tid == 0) {
                self.current = self.target;
            }
        }
        if tid > self.current {
            self.seq_gaps.drop(seq);
            if new_picture {
                self.pid_gaps.drop(picture);
            }
            return Temporal::Drop;
        }
        let out = self.pid_gaps.keep(picture) % PictureIds::MODULUS;
        Temporal::Forward {
            seq: self.seq_gaps.keep(seq),
            picture_id: Some(out as u16),
        }
    }
}

/// Pictures and bytes per temporal layer of one published layer.
#[derive(Debug, Default, Clone)]
pub struct TemporalMeter {
    pids: PictureIds,
    newest_picture: Option<u64>,
    pictures: [u32; MAX_TEMPORAL],
    bytes: [u64; MAX_TEMPORAL],
    last_tick: Option<Instant>,
    /// Smoothed pictures per second of each TID.
    fps: [f64; MAX_TEMPORAL],
    /// Smoothed bytes per second of each TID.
    rate: [f64; MAX_TEMPORAL],
}

impl TemporalMeter {
    /// Count a packet of `bytes` on the wire with descriptor `vp8`.
    pub fn on_packet(&mut self, bytes: usize, vp8: Option<&Vp8Descriptor>) {
        let Some(d) = vp8 else { return };
        let (Some(tid), Some(pid), Some(true)) =
            (d.tid(), d.picture_id(), d.picture_id_is_15_bit())
        else {
            return;
        };
        let tid = usize::from(tid).min(MAX_TEMPORAL - 1);
        let picture = self.pids.extend(pid);
        if self.newest_picture.is_none_or(|n| picture > n) {
            self.newest_picture = Some(picture);
            self.pictures[tid] += 1;
        }
        self.bytes[tid] += bytes as u64;
    }

    /// Fold what arrived since the last tick into the smoothed rates.
    pub fn tick(&mut self, now: Instant) {
        let Some(last) = self.last_tick.replace(now) else {
            self.pictures = [0; MAX_TEMPORAL];
            self.bytes = [0; MAX_TEMPORAL];
            return;
        };
        let dt = now.saturating_duration_since(last).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        let first = self.fps.iter().all(|f| *f == 0.0);
        for tid in 0..MAX_TEMPORAL {
            let fps = f64::from(std::mem::take(&mut self.pictures[tid])) / dt;
            let rate = std::mem::take(&mut self.bytes[tid]) as f64 / dt;
            let w = if first { 1.0 } else { SMOOTHING };
            self.fps[tid] = w * fps + (1.0 - w) * self.fps[tid];
            self.rate[tid] = w * rate + (1.0 - w) * self.rate[tid];
        }
    }

    /// The stream has temporal layers (pictures above TID 0 were seen).
    pub fn layered(&self) -> bool {
        self.fps[1..].iter().any(|f| *f > 0.0)
    }

    /// Pictures per second of TIDs up to `tid`.
    pub fn fps_up_to(&self, tid: u8) -> f64 {
        self.fps[..=usize::from(tid).min(MAX_TEMPORAL - 1)]
            .iter()
            .sum()
    }

    /// The highest TID whose pictures per second stay within `max_fps` (at least TID 0);
    /// [`ALL`] without a limit, or for a stream without temporal layers.
    pub fn tid_for(&self, max_fps: Option<u32>) -> u8 {
        let Some(max_fps) = max_fps else { return ALL };
        if !self.layered() {
            return ALL;
        }
        let top = (0..MAX_TEMPORAL)
            .rev()
            .find(|t| self.fps[*t] > 0.0)
            .unwrap_or(0) as u8;
        let within = (0..=top)
            .rev()
            .find(|t| self.fps_up_to(*t) <= f64::from(max_fps) * FPS_SLACK)
            .unwrap_or(0);
        if within == top {
            ALL
        } else {
            within
        }
    }

    /// Share of the layer's bytes that TIDs up to `tid` carry (1 for [`ALL`] or before any
    /// measurement).
    pub fn share_up_to(&self, tid: u8) -> f64 {
        let total: f64 = self.rate.iter().sum();
        if tid == ALL || total <= 0.0 {
            return 1.0;
        }
        let kept: f64 = self.rate[..=usize::from(tid).min(MAX_TEMPORAL - 1)]
            .iter()
            .sum();
        kept / total
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A VP8 payload: 15-bit picture id, TL0PICIDX, TID (and Y), then a frame tag.
    fn vp8(pid: u16, tl0: u8, tid: u8, start: bool, key: bool) -> Vec<u8> {
        vec![
            0x80 | if start { 0x10 } else { 0 },
            0xe0,
            0x80 | (pid >> 8) as u8,
            pid as u8,
            tl0,
            tid << 6,
            if key { 0x50 } else { 0x51 },
            0x2a,
            0,
        ]
    }

    /// Chrome's L1T3 pattern: TIDs 0 2 1 2, repeating.
    fn tid_of(picture: u16) -> u8 {
        [0, 2, 1, 2][usize::from(picture % 4)]
    }

    #[test]
    fn gaps_renumber_without_holes_and_leave_a_late_drop_as_a_hole() {
        let mut g = Gaps::default();
        assert_eq!(g.keep(10), 10);
        g.drop(11);
        g.drop(12);
        assert_eq!(g.keep(13), 11);
        assert_eq!(
            g.keep(10),
            10,
            "a reordered earlier packet keeps its number"
        );
        g.drop(12); // again: ignored
        assert_eq!(g.keep(14), 12);
        // 16 arrives before 15; 15 turns out to be dropped: too late to take out.
        assert_eq!(g.keep(16), 14);
        g.drop(15);
        assert_eq!(g.keep(17), 15);
        // Far beyond the memory: the count of old drops is kept.
        assert_eq!(g.keep(17 + GAP_MEMORY * 2), 15 + GAP_MEMORY * 2);
    }

    #[test]
    fn picture_ids_extend_across_the_wrap() {
        let mut p = PictureIds::default();
        let a = p.extend(0x7ffe);
        assert_eq!(p.extend(0x7fff), a + 1);
        assert_eq!(p.extend(0), a + 2);
        assert_eq!(p.extend(0x7fff), a + 1, "a late one");
        assert_eq!(p.extend(3), a + 5);
    }

    /// Feeds `pictures` pictures of two packets each from picture id `pid0`, returning the
    /// (sequence number, picture id) of every forwarded packet and the TIDs they carried.
    fn run(
        f: &mut TemporalFilter,
        pid0: u16,
        seq0: u64,
        pictures: u16,
    ) -> (Vec<(u64, u16)>, Vec<u8>) {
        let mut out = Vec::new();
        let mut tids = Vec::new();
        for i in 0..pictures {
            let pid = (pid0 + i) & 0x7fff;
            let tid = tid_of(pid);
            for part in 0..2u64 {
                let payload = vp8(pid, 0, tid, part == 0, false);
                let d = Vp8Descriptor::parse(&payload).unwrap();
                let seq = seq0 + u64::from(i) * 2 + part;
                if let Temporal::Forward { seq, picture_id } = f.filter(seq, Some(&d)) {
                    out.push((seq, picture_id.unwrap()));
                    if part == 0 {
                        tids.push(tid);
                    }
                }
            }
        }
        (out, tids)
    }

    #[test]
    fn only_the_wanted_temporal_layers_go_and_numbers_stay_contiguous() {
        let mut f = TemporalFilter::default();
        f.set_target(0);
        f.restart();
        let (out, tids) = run(&mut f, 0x7ff0, 1000, 32);
        assert!(tids.iter().all(|t| *t == 0), "{tids:?}");
        assert_eq!(tids.len(), 8, "one picture in four");
        for w in out.windows(2) {
            assert_eq!(w[1].0, w[0].0 + 1, "sequence numbers contiguous: {out:?}");
            let step = (w[1].1 + 0x8000 - w[0].1) & 0x7fff;
            assert!(step <= 1, "picture ids contiguous across the wrap: {out:?}");
        }
    }

    #[test]
    fn down_at_the_next_picture_up_at_a_base_layer_picture() {
        let mut f = TemporalFilter::default();
        // All layers first: pictures 0..4 (TIDs 0 2 1 2).
        let (out, tids) = run(&mut f, 0, 100, 4);
        assert_eq!(tids, vec![0, 2, 1, 2]);
        assert_eq!(out.last().unwrap().0, 107);
        // Down to TID 1 from picture 4 on: 4 (TID 0), 6 (TID 1) and 8 (TID 0) go, 5 and 7
        // do not.
        f.set_target(1);
        let (out, tids) = run(&mut f, 4, 108, 5);
        assert_eq!(tids, vec![0, 1, 0]);
        assert_eq!(
            out,
            vec![(108, 4), (109, 4), (110, 5), (111, 5), (112, 6), (113, 6)]
        );
        // Up to every layer: picture 9 (TID 2) is not a base picture, it waits for 12.
        f.set_target(ALL);
        let (out, tids) = run(&mut f, 9, 118, 3);
        assert_eq!(
            tids,
            vec![1],
            "picture 10 (TID 1) still within the old limit"
        );
        assert_eq!(out.first(), Some(&(114, 7)));
        let (out, tids) = run(&mut f, 12, 124, 4);
        assert_eq!(tids, vec![0, 2, 1, 2]);
        assert_eq!(
            out.first(),
            Some(&(116, 8)),
            "numbers continue after the drops"
        );
    }

    #[test]
    fn a_stream_without_temporal_layers_passes_unchanged() {
        let mut f = TemporalFilter::default();
        f.set_target(0);
        f.restart();
        // No TID in the descriptor (X byte with I only).
        let payload = [0x90, 0x80, 0x81, 0x23, 0x50, 0x2a, 0];
        let d = Vp8Descriptor::parse(&payload).unwrap();
        assert_eq!(
            f.filter(5, Some(&d)),
            Temporal::Forward {
                seq: 5,
                picture_id: None
            }
        );
        assert_eq!(
            f.filter(6, None),
            Temporal::Forward {
                seq: 6,
                picture_id: None
            }
        );
    }

    #[test]
    fn the_meter_maps_a_frame_rate_to_a_temporal_layer() {
        let t0 = Instant::now();
        let mut m = TemporalMeter::default();
        m.tick(t0);
        assert_eq!(m.tid_for(Some(10)), ALL, "nothing measured yet");
        // One second of 20 fps L1T3: base pictures twice as large.
        for pid in 0..20u16 {
            let tid = tid_of(pid);
            let payload = vp8(pid, 0, tid, true, false);
            let d = Vp8Descriptor::parse(&payload).unwrap();
            m.on_packet(if tid == 0 { 2000 } else { 1000 }, Some(&d));
        }
        m.tick(t0 + Duration::from_secs(1));
        assert!((m.fps_up_to(0) - 5.0).abs() < 1e-9);
        assert!((m.fps_up_to(1) - 10.0).abs() < 1e-9);
        assert!((m.fps_up_to(2) - 20.0).abs() < 1e-9);
        assert_eq!(m.tid_for(None), ALL);
        assert_eq!(m.tid_for(Some(30)), ALL);
        assert_eq!(m.tid_for(Some(20)), ALL);
        assert_eq!(m.tid_for(Some(15)), 1);
        assert_eq!(m.tid_for(Some(10)), 1);
        assert_eq!(m.tid_for(Some(5)), 0);
        assert_eq!(m.tid_for(Some(1)), 0, "never below the base layer");
        // Bytes: TID 0 5 x 2000, TID 1 5 x 1000, TID 2 10 x 1000 = 25000.
        assert!((m.share_up_to(0) - 0.4).abs() < 1e-9);
        assert!((m.share_up_to(1) - 0.6).abs() < 1e-9);
        assert_eq!(m.share_up_to(ALL), 1.0);
    }
}
