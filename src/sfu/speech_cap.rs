//! Speech bitrate hints: when a subscriber's link barely carries the call's voices, the
//! microphones speak more sparingly.
//!
//! Audio is never dropped by the allocator, but on a link of about 120 kbit/s even that is not
//! enough: two Opus voices at Chrome's default ~32 kbit/s cost ~115 kbit/s on the wire with
//! their headers, and the link also carries the feedback of its own publishing. An SFU cannot
//! re-encode, so the core asks the publishers' microphones for less (`publish_audio`,
//! `max_bitrate` [`SPEECH_CAP`]), which the browser client sets as the sender's `maxBitrate`:
//! Opus at 16 kbit/s is still wideband speech. Everyone hears that voice at the lower rate
//! while the weak link is in the call; the clinical instrument (a stethoscope) is never capped.
//!
//! A subscriber is *tight* when no video flows to it and its sustained estimate does not
//! even reach [`TIGHT`] times its audio, both in payload bits (the units of the estimator). A
//! link that merely carries little has an estimate of about 1.5 times what is sent (the
//! estimator's cap for what it has not seen), so an audio-only call on a good line is never
//! tight; a link that cannot carry the voices makes the estimator fall below them. It stays
//! tight until a video flows to it again or the estimate reaches [`ROOMY`] times its (capped)
//! audio, so the cap does not lift itself and come back. A video that eases it must stay:
//! if it is paused again within [`LIFT_DELAY`] (the allocator tried it and the link could not
//! hold it), the subscriber is tight again unless its estimate is roomy. A microphone is
//! capped while a subscriber of it is tight, and freed [`LIFT_DELAY`] after the last one
//! eased.

use std::time::{Duration, Instant};

/// Bit/s asked of a microphone while a subscriber's link is tight.
pub const SPEECH_CAP: u32 = 16_000;

/// A subscriber is tight below this many times its audio (sustained estimate, payload).
pub const TIGHT: f64 = 1.1;

/// A tight subscriber eases at this many times its audio, or when a video flows to it (the
/// capped audio is about half the voices' usual rate: twice the capped audio is no sign of
/// room).
pub const ROOMY: f64 = 3.0;

/// A cap is lifted this long after the last tight subscriber eased.
pub const LIFT_DELAY: Duration = Duration::from_secs(10);

/// One subscriber: is its link tight for audio?
#[derive(Debug, Clone, Default)]
pub struct AudioRoom {
    tight: bool,
    /// When a video that started to flow eased it from tight.
    eased_by_video: Option<Instant>,
}

impl AudioRoom {
    /// One allocation round (payload bit/s): its sustained estimate, the audio it receives,
    /// whether any video flows to it, whether its link is overfilled now (a congestion cap
    /// holds: heavy loss, and the estimator has not caught up) and whether it was lately.
    /// Returns whether it is tight.
    ///
    /// An overfilled link with no video left is tight at once: after a cut the estimator
    /// takes seconds to fall below the voices (simulator, 120 kbit/s: 4 s, losing 15 % of
    /// the audio meanwhile), while the loss already says the voices do not fit. For the same
    /// reason its estimate cannot ease it while the overfilling is recent: it was still
    /// falling through four times the capped voices when the cap ended.
    ///
    /// A video that eased it and stops within [`LIFT_DELAY`] leaves it as tight as before:
    /// at 120 kbit/s the allocator resumed a video on an estimate that had drifted up, paused
    /// it 0.2 s later, and the microphones' cap was lifted 10 s after that into a link that
    /// could not carry the full voices (Chromium: 3-4 s of voices lost, ~1 % of the 45 s
    /// measured).
    pub fn update(
        &mut self,
        now: Instant,
        sustained: u64,
        audio: u64,
        video_flows: bool,
        overfilled: bool,
        recently_overfilled: bool,
    ) -> bool {
        if audio == 0 {
            self.eased_by_video = None;
            self.tight = false;
            return false;
        }
        if video_flows {
            if self.tight {
                self.eased_by_video = Some(now);
            }
            self.tight = false;
            return false;
        }
        let was_tight = self.tight
            || self
                .eased_by_video
                .take()
                .is_some_and(|at| now.saturating_duration_since(at) < LIFT_DELAY);
        self.tight = if overfilled || (was_tight && recently_overfilled) {
            true
        } else if was_tight {
            (sustained as f64) < audio as f64 * ROOMY
        } else {
            (sustained as f64) < audio as f64 * TIGHT
        };
        self.tight
    }

    /// Tight now.
    pub fn tight(&self) -> bool {
        self.tight
    }
}

/// One published microphone: the cap it was asked for.
#[derive(Debug, Clone, Default)]
pub struct SpeechCap {
    sent: Option<u32>,
    calm_since: Option<Instant>,
}

impl SpeechCap {
    /// Fold in whether a subscriber of it is tight now; returns the message to send when
    /// the cap changes (`Some(None)`: lifted).
    pub fn update(&mut self, now: Instant, wanted: bool) -> Option<Option<u32>> {
        if wanted {
            self.calm_since = None;
            if self.sent.is_none() {
                self.sent = Some(SPEECH_CAP);
                return Some(self.sent);
            }
            return None;
        }
        self.sent?;
        let since = *self.calm_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= LIFT_DELAY {
            self.sent = None;
            self.calm_since = None;
            return Some(None);
        }
        None
    }

    /// The cap in force.
    pub fn sent(&self) -> Option<u32> {
        self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_that_barely_carries_the_audio_is_tight_until_video_flows_again() {
        let t0 = Instant::now();
        let mut r = AudioRoom::default();
        assert!(!r.update(t0, 1_000_000, 64_000, true, false, false));
        // An audio-only call on a good line: the estimate sits at ~1.5 times the audio.
        assert!(!r.update(t0, 96_000, 64_000, false, false, false));
        // The estimate falls below the voices: tight.
        assert!(r.update(t0, 60_000, 64_000, false, false, false));
        // Capped, the audio halves: still tight (no flapping back).
        assert!(r.update(t0, 60_000, 32_000, false, false, false));
        // A video flows again: eased.
        assert!(!r.update(t0, 250_000, 32_000, true, false, false));
        // Or the estimate has plenty of room.
        assert!(r.update(t0, 30_000, 32_000, false, false, false));
        assert!(r.update(t0, 70_000, 32_000, false, false, false));
        assert!(!r.update(t0, 100_000, 32_000, false, false, false));
        // No audio at all: nothing to be tight about.
        assert!(!r.update(t0, 10, 0, false, false, false));
    }

    #[test]
    fn an_overfilled_link_without_video_is_tight_before_its_estimate_falls() {
        let t0 = Instant::now();
        let mut r = AudioRoom::default();
        // Cut: the videos still flow, the estimate is stale and high.
        assert!(!r.update(t0, 1_500_000, 80_000, true, true, false));
        // Videos paused, the link still loses: tight with the estimate far above the voices.
        assert!(r.update(t0, 900_000, 80_000, false, true, false));
        // Eased by its estimate only once the overfilling is past: still falling through
        // four times the capped voices just after the cap, it stays tight.
        assert!(r.update(t0, 130_000, 32_000, false, false, true));
        // The estimate fell to the link: still tight (hysteresis).
        assert!(r.update(t0, 60_000, 32_000, false, false, false));
        // And eases once it has room for three times the capped voices.
        assert!(!r.update(t0, 100_000, 32_000, false, false, false));
    }

    #[test]
    fn a_video_tried_and_paused_again_leaves_the_link_tight() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut r = AudioRoom::default();
        assert!(r.update(at(0), 60_000, 64_000, false, false, false));
        // The voices capped, the estimate drifted up (not roomy): a video is tried.
        assert!(!r.update(at(1_000), 80_000, 32_000, true, false, false));
        // Paused again 0.2 s later: as tight as before.
        assert!(r.update(at(1_200), 80_000, 32_000, false, false, false));
        assert!(r.update(at(5_000), 80_000, 32_000, false, false, false));
        // A video that stays longer than the lift delay eases it for good: a later pause goes
        // by the first threshold.
        assert!(!r.update(at(6_000), 300_000, 32_000, true, false, false));
        assert!(!r.update(at(17_000), 80_000, 32_000, false, false, false));
        // A tried video on a link that was not tight changes nothing.
        assert!(!r.update(at(18_000), 80_000, 32_000, true, false, false));
        assert!(!r.update(at(18_200), 80_000, 32_000, false, false, false));
    }

    #[test]
    fn a_cap_is_asked_at_once_and_lifted_after_the_calm_delay() {
        let t0 = Instant::now();
        let mut c = SpeechCap::default();
        assert_eq!(c.update(t0, false), None);
        assert_eq!(c.update(t0, true), Some(Some(SPEECH_CAP)));
        assert_eq!(c.update(t0 + Duration::from_secs(1), true), None);
        assert_eq!(c.update(t0 + Duration::from_secs(2), false), None);
        // Tight again within the delay: the clock starts over.
        assert_eq!(c.update(t0 + Duration::from_secs(5), true), None);
        assert_eq!(c.update(t0 + Duration::from_secs(6), false), None);
        assert_eq!(c.update(t0 + Duration::from_secs(15), false), None);
        assert_eq!(c.update(t0 + Duration::from_secs(16), false), Some(None));
        assert_eq!(c.sent(), None);
        assert_eq!(c.update(t0 + Duration::from_secs(30), false), None);
    }
}
