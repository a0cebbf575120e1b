//! Growing a weak link's estimate back: padding towards the next step.
//!
//! Once a subscriber's videos are paused, its link carries only audio, and a send-side
//! estimator cannot learn that the link could carry more: the delay-based estimate may grow
//! to at most 1.5 times what is acknowledged, and str0m's own probes need a congestion state
//! that a link which just lost packets does not return to. On a 300 kbit/s link this left the
//! estimate near 190 kbit/s for good, below the ~230 kbit/s a low video layer needs beside two
//! microphones, and the video never came back.
//!
//! So, while a video waits for bandwidth, the core asks str0m to keep the link busy up to
//! the rate that would let it go ([`Prober::tick`] returns that rate as the *minimum* for
//! `set_bitrate`): str0m fills the gap with padding, never beyond its current estimate, so the
//! link is only ever asked for what the estimator believes it carries, and the estimate can
//! climb step by step. Padding costs the link what the video would, so it is spent carefully:
//! - only when the goal is within reach ([`REACH`]): on a 120 kbit/s link that barely carries
//!   the audio, the goal is nearly twice the estimate and nothing is padded;
//! - for at most [`PROBE_WINDOW`], and stopped at once when the estimate falls by
//!   [`ABORT_DROP`] (the padding met congestion);
//! - a probe that fails waits [`FIRST_WAIT`], doubling up to [`MAX_WAIT`], before the next.
//!
//! When the goal is met the allocator resumes the video (on its sustained estimate) and the
//! padding gives way to it; the next step starts a new probe window. A window that ends
//! without congestion and with the estimate within [`TRIAL_SHARE`] of the goal counts as
//! proven too ([`Probe::proven`]): padding comes in packets of at most 255 bytes, whose
//! headers take a share of the link that the video's large packets would not, so a link
//! that has room for the video cannot always show the whole goal with padding. The core
//! then lets the allocator try the step once; if the link cannot hold it, the video is paused
//! again and waits longer (the allocator's pause doubling).

use std::time::{Duration, Instant};

/// Wait before the first probe of a need, and after a success.
pub const FIRST_WAIT: Duration = Duration::from_secs(2);

/// Longest wait between failed probes.
pub const MAX_WAIT: Duration = Duration::from_secs(8);

/// Longest a probe pads without reaching its goal.
pub const PROBE_WINDOW: Duration = Duration::from_secs(8);

/// A probe starts only when the estimate is at least this share of the goal.
pub const REACH: f64 = 0.65;

/// A probe stops when the estimate falls below this share of what it was at the start.
pub const ABORT_DROP: f64 = 0.9;

/// A window that ends with the estimate at this share of the goal, and no congestion, proves
/// the step.
pub const TRIAL_SHARE: f64 = 0.9;

/// What a round of probing asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// The rate (bit/s) to keep the link busy at: the media's own when not probing.
    pub minimum: u64,
    /// A window just ended that proves the goal: the allocator may take the step once.
    pub proven: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Probing { since: Instant, floor: u64 },
}

/// One subscriber's padding probes.
#[derive(Debug, Clone)]
pub struct Prober {
    state: State,
    wait: Duration,
    next_at: Option<Instant>,
    proven: bool,
}

impl Default for Prober {
    fn default() -> Prober {
        Prober {
            state: State::Idle,
            wait: FIRST_WAIT,
            next_at: None,
            proven: false,
        }
    }
}

impl Prober {
    /// One allocation round: `estimate` and `sending` (audio and allocated video) in bit/s,
    /// `goal` the total rate that would let the next waiting video go (`None`: nothing
    /// waits). Returns the rate to keep the link busy at (`sending` when not probing).
    pub fn tick(&mut self, now: Instant, estimate: u64, sending: u64, goal: Option<u64>) -> Probe {
        self.proven = false;
        let minimum = self.next_minimum(now, estimate, sending, goal);
        Probe {
            minimum,
            proven: self.proven,
        }
    }

    fn next_minimum(
        &mut self,
        now: Instant,
        estimate: u64,
        sending: u64,
        goal: Option<u64>,
    ) -> u64 {
        let Some(goal) = goal.filter(|g| *g > sending) else {
            self.state = State::Idle;
            self.next_at = None;
            return sending;
        };
        match self.state {
            State::Idle => {
                let next_at = *self.next_at.get_or_insert(now + self.wait);
                if now < next_at || estimate >= goal {
                    // Not yet, or the estimate already allows it (the allocator takes it).
                    return sending;
                }
                if (estimate as f64) < goal as f64 * REACH {
                    // Out of reach: look again later, without counting a failure.
                    self.next_at = Some(now + self.wait);
                    return sending;
                }
                self.state = State::Probing {
                    since: now,
                    floor: estimate,
                };
                goal
            }
            State::Probing { since, floor } => {
                let congested = (estimate as f64) < floor as f64 * ABORT_DROP;
                let ended = now.saturating_duration_since(since) >= PROBE_WINDOW;
                if !congested && ended && estimate as f64 >= goal as f64 * TRIAL_SHARE {
                    self.state = State::Idle;
                    self.next_at = Some(now + self.wait);
                    self.proven = true;
                    return sending;
                }
                if congested || ended {
                    self.state = State::Idle;
                    self.next_at = Some(now + self.wait);
                    self.wait = (self.wait * 2).min(MAX_WAIT);
                    return sending;
                }
                goal
            }
        }
    }

    /// The allocator took a step up (a resume or an upgrade): the link had the room, so
    /// the next probe comes soon, and a running one starts its window again.
    pub fn step_taken(&mut self, now: Instant, estimate: u64) {
        self.wait = FIRST_WAIT;
        if let State::Probing { .. } = self.state {
            self.state = State::Probing {
                since: now,
                floor: estimate,
            };
        }
    }

    /// Its link showed a full queue (`participant::FULL_QUEUE`): a probe padding now has
    /// found the link's rate, and stops at once as a failed one. str0m's estimate falls by
    /// [`ABORT_DROP`] only seconds later: a probe towards a second video on a 300 kbit/s link
    /// padded for 2-4 s and lost a tenth of the voices (simulator).
    pub fn queue_met(&mut self, now: Instant) {
        if self.probing() {
            self.setback(now);
        }
    }

    /// A step the allocator took did not hold (a video resumed and was paused again): the
    /// link had less room than the probe showed, so the next probe waits longer.
    pub fn setback(&mut self, now: Instant) {
        self.state = State::Idle;
        self.next_at = Some(now + self.wait);
        self.wait = (self.wait * 2).min(MAX_WAIT);
    }

    /// A probe is padding now.
    pub fn probing(&self) -> bool {
        matches!(self.state, State::Probing { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUDIO: u64 = 110_000;
    const GOAL: u64 = 230_000;

    fn ask(p: &mut Prober, now: Instant, estimate: u64, sending: u64, goal: Option<u64>) -> u64 {
        p.tick(now, estimate, sending, goal).minimum
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn nothing_waiting_means_no_padding() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        for ms in (0..20_000).step_by(250) {
            assert_eq!(ask(&mut p, at(t0, ms), 180_000, AUDIO, None), AUDIO);
        }
        // A goal that is already sent is no goal.
        assert_eq!(
            ask(&mut p, at(t0, 20_000), 180_000, AUDIO, Some(AUDIO)),
            AUDIO
        );
        assert!(!p.probing());
    }

    #[test]
    fn a_goal_within_reach_is_padded_towards_after_the_first_wait() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        assert_eq!(ask(&mut p, t0, 180_000, AUDIO, Some(GOAL)), AUDIO);
        assert_eq!(
            ask(&mut p, at(t0, 1_000), 180_000, AUDIO, Some(GOAL)),
            AUDIO
        );
        assert_eq!(ask(&mut p, at(t0, 2_000), 180_000, AUDIO, Some(GOAL)), GOAL);
        // The estimate climbs; the padding holds while the goal waits.
        assert_eq!(ask(&mut p, at(t0, 4_000), 235_000, AUDIO, Some(GOAL)), GOAL);
        // The allocator resumes the video: the goal moves to the next step, a new window.
        p.step_taken(at(t0, 5_000), 240_000);
        assert_eq!(
            ask(&mut p, at(t0, 5_000), 240_000, GOAL, Some(700_000)),
            700_000
        );
        assert!(p.probing());
    }

    #[test]
    fn a_goal_out_of_reach_is_never_padded_towards() {
        // 120 kbit/s: the estimate hovers near the audio, the goal is nearly twice that.
        let t0 = Instant::now();
        let mut p = Prober::default();
        for ms in (0..45_000).step_by(250) {
            assert_eq!(ask(&mut p, at(t0, ms), 130_000, AUDIO, Some(GOAL)), AUDIO);
        }
    }

    #[test]
    fn congestion_stops_a_probe_and_failures_wait_longer_each_time() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        let mut starts = Vec::new();
        let mut estimate = 180_000;
        for ms in (0..60_000).step_by(250) {
            let now = at(t0, ms);
            let was = p.probing();
            let ask = ask(&mut p, now, estimate, AUDIO, Some(GOAL));
            if p.probing() && !was {
                starts.push(ms);
                assert_eq!(ask, GOAL);
            }
            // Each probe meets congestion half a second in.
            estimate = if p.probing() && starts.last().is_some_and(|s| ms >= s + 500) {
                150_000
            } else {
                180_000
            };
        }
        let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.len() >= 3, "{starts:?}");
        assert!(
            gaps.windows(2).all(|g| g[1] >= g[0]),
            "waits grow: {gaps:?}"
        );
        assert!(
            *gaps.last().unwrap() <= MAX_WAIT.as_millis() as u64 + 1_000,
            "{gaps:?}"
        );
    }

    #[test]
    fn a_probe_that_never_reaches_its_goal_ends_after_its_window() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        ask(&mut p, t0, 180_000, AUDIO, Some(GOAL));
        assert_eq!(ask(&mut p, at(t0, 2_000), 180_000, AUDIO, Some(GOAL)), GOAL);
        assert_eq!(ask(&mut p, at(t0, 9_750), 190_000, AUDIO, Some(GOAL)), GOAL);
        let end = p.tick(at(t0, 10_000), 190_000, AUDIO, Some(GOAL));
        assert_eq!(
            end,
            Probe {
                minimum: AUDIO,
                proven: false
            }
        );
        assert!(!p.probing());
    }

    #[test]
    fn a_window_ending_close_to_its_goal_without_congestion_proves_the_step_once() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        ask(&mut p, t0, 180_000, AUDIO, Some(GOAL));
        assert_eq!(ask(&mut p, at(t0, 2_000), 180_000, AUDIO, Some(GOAL)), GOAL);
        // Padding's small packets: the estimate ends at 92 % of the goal.
        let goal_share = GOAL * 92 / 100;
        assert_eq!(
            ask(&mut p, at(t0, 9_750), goal_share, AUDIO, Some(GOAL)),
            GOAL
        );
        let end = p.tick(at(t0, 10_000), goal_share, AUDIO, Some(GOAL));
        assert_eq!(
            end,
            Probe {
                minimum: AUDIO,
                proven: true
            }
        );
        assert!(!p.tick(at(t0, 10_250), goal_share, AUDIO, Some(GOAL)).proven);
    }

    #[test]
    fn a_probe_that_meets_a_queue_stops_at_once_and_waits_longer() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        ask(&mut p, t0, 180_000, AUDIO, Some(GOAL));
        assert_eq!(ask(&mut p, at(t0, 2_000), 180_000, AUDIO, Some(GOAL)), GOAL);
        p.queue_met(at(t0, 2_250));
        assert!(!p.probing());
        // The next one after the wait, and the one after that waits twice as long.
        assert_eq!(
            ask(&mut p, at(t0, 4_000), 180_000, AUDIO, Some(GOAL)),
            AUDIO
        );
        assert_eq!(ask(&mut p, at(t0, 4_250), 180_000, AUDIO, Some(GOAL)), GOAL);
        p.queue_met(at(t0, 4_500));
        assert_eq!(
            ask(&mut p, at(t0, 8_250), 180_000, AUDIO, Some(GOAL)),
            AUDIO
        );
        assert_eq!(ask(&mut p, at(t0, 8_500), 180_000, AUDIO, Some(GOAL)), GOAL);
        // A queue while nothing pads changes nothing.
        let mut idle = Prober::default();
        idle.queue_met(t0);
        ask(&mut idle, t0, 180_000, AUDIO, Some(GOAL));
        assert_eq!(
            ask(&mut idle, at(t0, 2_000), 180_000, AUDIO, Some(GOAL)),
            GOAL
        );
    }
}
