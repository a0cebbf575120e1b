//! What a subscriber's link demonstrably carries, from the peer statistics rounds.
//!
//! str0m's send-side estimate undershoots a weak link after congestion, and huizhen used to
//! pause a video the link was carrying without loss on that dip:
//! - its loss-based part weighs the loss of its last ~15 observations (~4 s): after a cut to
//!   300 kbit/s, with one video left that the link carried cleanly, it kept lowering the
//!   estimate 5 % a step, to ~140 kbit/s in Chromium and ~110 kbit/s in the simulator, and the
//!   last video was paused 6 s after the cut;
//! - its delay-based part drops to 85 % of the acknowledged rate on a delay spike (a keyframe
//!   on a narrow link), a rate measured while less was sent.
//!
//! So what the link delivered without loss over the last [`CARRIED_WINDOW`] is a floor under
//! the estimate for *keeping* the lowest layers of the videos that flow
//! ([`DeliveryLog::carried_floor`]; the core limits it to the audio and those layers). Never for
//! resuming or climbing, nor for holding a higher layer against a delay-based backoff: the floor
//! saves a video from a pause, it is what is sent, never more, and one lossy round removes it.
//!
//! Tried and left out: telling str0m's estimator to forget the loss of the overfilled seconds
//! once the link delivered cleanly again (a patch resetting its loss observations, as it does
//! on an ALR change). In the simulator it made a link that recovered from 120 kbit/s stay
//! audio-only for 30 s in 4 runs of 100 (1 without), and Chromium showed no clear gain.
//!
//! Pure: time and the rounds are passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Loss of a second below which a link delivers cleanly.
pub const CLEAN_LOSS: f32 = 0.02;

/// How long a link must have delivered cleanly for its delivered rate to count as carried.
pub const CARRIED_WINDOW: Duration = Duration::from_secs(2);

/// Statistics rounds kept (str0m reports four a second; the window needs eight).
const MAX_ROUNDS: usize = 16;

/// A subscriber's recent deliveries.
#[derive(Debug, Default)]
pub struct DeliveryLog {
    /// (when, wire bit/s delivered, loss of the last second) per statistics round.
    rounds: VecDeque<(Instant, u64, Option<f32>)>,
}

impl DeliveryLog {
    /// A statistics round: `delivered` wire bit/s since the last one, `loss` of the last
    /// second (`None`: nothing was reported).
    pub fn record(&mut self, now: Instant, delivered: u64, loss: Option<f32>) {
        if self.rounds.len() >= MAX_ROUNDS {
            self.rounds.pop_front();
        }
        self.rounds.push_back((now, delivered, loss));
    }

    /// Rounds have been recorded for at least `window` (the oldest kept is that old).
    pub fn covers(&self, now: Instant, window: Duration) -> bool {
        self.rounds
            .front()
            .is_some_and(|(at, _, _)| now.saturating_duration_since(*at) >= window)
    }

    /// The loss of the last second, as of the latest round that reported one.
    pub fn last_loss(&self) -> Option<f32> {
        self.rounds.iter().rev().find_map(|(_, _, loss)| *loss)
    }

    /// The least the link delivered in the rounds of the last [`CARRIED_WINDOW`], when they
    /// span most of it and every one was clean; `None` otherwise (a link just joined, silent,
    /// or losing packets proves nothing).
    pub fn carried_floor(&self, now: Instant) -> Option<u64> {
        let from = now.checked_sub(CARRIED_WINDOW)?;
        let recent = || self.rounds.iter().filter(move |(at, _, _)| *at > from);
        let first = recent().next()?.0;
        if now.saturating_duration_since(first) < CARRIED_WINDOW.mul_f32(0.7) {
            return None;
        }
        if !recent().all(|(_, _, loss)| loss.is_some_and(|l| l < CLEAN_LOSS)) {
            return None;
        }
        recent().map(|(_, rate, _)| *rate).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUND: Duration = Duration::from_millis(250);

    fn rounds(log: &mut DeliveryLog, start: Instant, rates: &[(u64, Option<f32>)]) -> Instant {
        let mut t = start;
        for &(rate, loss) in rates {
            t += ROUND;
            log.record(t, rate, loss);
        }
        t
    }

    #[test]
    fn two_clean_seconds_make_their_least_delivery_the_floor() {
        let mut log = DeliveryLog::default();
        let t0 = Instant::now();
        let clean: Vec<_> = [
            250_000, 240_000, 260_000, 255_000, 245_000, 250_000, 252_000, 248_000,
        ]
        .into_iter()
        .map(|r| (r, Some(0.0)))
        .collect();
        let now = rounds(&mut log, t0, &clean);
        assert_eq!(log.carried_floor(now), Some(240_000));
        // Older rounds fall out of the window.
        let now = rounds(&mut log, now, &[(230_000, Some(0.01))]);
        assert_eq!(log.carried_floor(now), Some(230_000));
    }

    #[test]
    fn a_lossy_round_or_a_short_history_gives_no_floor() {
        let mut log = DeliveryLog::default();
        let t0 = Instant::now();
        // Half a second proves nothing.
        let now = rounds(&mut log, t0, &[(250_000, Some(0.0)), (250_000, Some(0.0))]);
        assert_eq!(log.carried_floor(now), None);
        let now = rounds(&mut log, now, &[(250_000, Some(0.0)); 6]);
        assert!(log.carried_floor(now).is_some());
        // One lossy round in the window, or one without a report, and the floor is gone
        // until it has left the window.
        let lossy = rounds(&mut log, now, &[(250_000, Some(0.05))]);
        assert_eq!(log.carried_floor(lossy), None);
        let later = rounds(&mut log, lossy, &[(250_000, Some(0.0)); 7]);
        assert_eq!(log.carried_floor(later), None);
        let later = rounds(&mut log, later, &[(250_000, Some(0.0))]);
        assert_eq!(log.carried_floor(later), Some(250_000));
        let silent = rounds(&mut log, later, &[(0, None)]);
        assert_eq!(log.carried_floor(silent), None);
    }
}
