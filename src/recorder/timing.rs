//! RTP timestamps of one track to milliseconds on the recording's common timeline.
//!
//! Each publisher's RTP clock starts at a random value and knows nothing of the others, so the
//! track is anchored once: the RTP time of its first packet is pinned to that packet's
//! arrival, measured from the recording's start `Instant`. From then on RTP time (unwrapped
//! to 64 bits) drives the timestamps, so the files keep the sender's own pacing rather than
//! network jitter, and tracks of different publishers line up to within the network delay.
//! The anchor is renewed from arrival time when the sender restarts (new SSRC) or when RTP
//! time and arrival disagree by more than `max_skew_ms` (a sender that jumped its clock, or a
//! long pause). Timestamps only ever go forward: a file with a backward step does not play.

use std::time::Instant;

/// Maps one track's RTP time to ms since the recording started.
#[derive(Debug)]
pub(crate) struct Timeline {
    recording_start: Instant,
    clock_rate: i64,
    max_skew_ms: i64,
    /// (unwrapped RTP time, ms) pinned together.
    anchor: Option<(i64, i64)>,
    /// Last RTP time seen, raw and unwrapped, to unwrap the next.
    last_rtp: Option<(u32, i64)>,
    last_ms: Option<u64>,
    resyncs: u64,
}

impl Timeline {
    /// A timeline for a clock of `clock_rate` Hz.
    pub fn new(recording_start: Instant, clock_rate: u32, max_skew_ms: u64) -> Self {
        Self {
            recording_start,
            clock_rate: i64::from(clock_rate.max(1)),
            max_skew_ms: max_skew_ms as i64,
            anchor: None,
            last_rtp: None,
            last_ms: None,
            resyncs: 0,
        }
    }

    /// Times the anchor had to be renewed because RTP time and arrival drifted apart.
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    /// Milliseconds from the recording's start to `at` (0 if earlier).
    pub fn ms_since_start(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.recording_start)
            .as_millis() as u64
    }

    /// Pins `rtp_time` to `arrival`: at the track's first packet and after an SSRC change.
    /// Never moves time backwards.
    pub fn anchor(&mut self, rtp_time: u32, arrival: Instant) {
        let mut ms = self.ms_since_start(arrival) as i64;
        if let Some(last) = self.last_ms {
            ms = ms.max(last as i64 + 1);
        }
        self.anchor = Some((i64::from(rtp_time), ms));
        self.last_rtp = Some((rtp_time, i64::from(rtp_time)));
    }

    /// The timestamp in ms of a frame with `rtp_time` that arrived at `arrival`.
    pub fn timestamp(&mut self, rtp_time: u32, arrival: Instant) -> u64 {
        if self.anchor.is_none() {
            self.anchor(rtp_time, arrival);
        }
        let unwrapped = match self.last_rtp {
            Some((raw, ext)) => ext + i64::from(rtp_time.wrapping_sub(raw) as i32),
            None => i64::from(rtp_time),
        };
        self.last_rtp = Some((rtp_time, unwrapped));
        let (anchor_rtp, anchor_ms) = self.anchor.expect("anchored above");
        let delta = unwrapped - anchor_rtp;
        let mut ms = anchor_ms + (delta * 1000 + self.clock_rate / 2).div_euclid(self.clock_rate);
        let arrival_ms = self.ms_since_start(arrival) as i64;
        if (ms - arrival_ms).abs() > self.max_skew_ms {
            self.resyncs += 1;
            self.anchor(rtp_time, arrival);
            ms = self.anchor.expect("anchored").1;
        }
        let ms = match self.last_ms {
            Some(last) => (ms.max(0) as u64).max(last + 1),
            None => ms.max(0) as u64,
        };
        self.last_ms = Some(ms);
        ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rtp_time_drives_timestamps_from_the_arrival_anchor() {
        let start = Instant::now();
        let mut t = Timeline::new(start, 90_000, 2_000);
        let first = start + Duration::from_millis(2_000);
        assert_eq!(t.timestamp(1_000, first), 2_000);
        // 40 ms later in RTP time, arriving with 30 ms of jitter: RTP wins.
        assert_eq!(
            t.timestamp(1_000 + 3_600, first + Duration::from_millis(70)),
            2_040
        );
    }

    #[test]
    fn rtp_wraparound_is_unwrapped() {
        let start = Instant::now();
        let mut t = Timeline::new(start, 48_000, 2_000);
        let base = u32::MAX - 479; // 10 ms before the wrap
        assert_eq!(t.timestamp(base, start), 0);
        assert_eq!(
            t.timestamp(base.wrapping_add(960), start + Duration::from_millis(20)),
            20
        );
        assert_eq!(
            t.timestamp(base.wrapping_add(1920), start + Duration::from_millis(40)),
            40
        );
    }

    #[test]
    fn a_new_anchor_continues_forward() {
        let start = Instant::now();
        let mut t = Timeline::new(start, 90_000, 2_000);
        assert_eq!(t.timestamp(0, start), 0);
        assert_eq!(t.timestamp(90_000, start + Duration::from_secs(1)), 1_000);
        // Encoder restart: random new RTP base, arriving 500 ms later.
        t.anchor(123_456, start + Duration::from_millis(1_500));
        assert_eq!(
            t.timestamp(123_456, start + Duration::from_millis(1_500)),
            1_500
        );
        // An anchor whose arrival lies in the past still moves forward.
        t.anchor(5, start);
        assert_eq!(t.timestamp(5, start), 1_501);
    }

    #[test]
    fn a_clock_jump_resyncs_to_arrival() {
        let start = Instant::now();
        let mut t = Timeline::new(start, 90_000, 2_000);
        assert_eq!(t.timestamp(0, start), 0);
        // RTP claims one hour later, the packet arrived 40 ms later.
        assert_eq!(
            t.timestamp(90_000 * 3_600, start + Duration::from_millis(40)),
            40
        );
        assert_eq!(t.resyncs(), 1);
        assert_eq!(
            t.timestamp(90_000 * 3_600 + 3_600, start + Duration::from_millis(80)),
            80
        );
    }
}
