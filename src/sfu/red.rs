//! RED per subscriber: redundant audio where it pays for itself.
//!
//! Browsers send Opus with RED (RFC 2198) when the server offers it: every packet carries
//! its own frame and the previous one, so a single lost packet costs no audio. It also nearly
//! doubles the audio's bitrate (two ~40 kbit/s microphones become ~180 kbit/s on the wire with
//! their headers), which is exactly what a 120 kbit/s link cannot afford. So the core decides
//! per subscriber: RED is forwarded while its link loses packets (the transport-wide feedback
//! of everything sent to it over the last second) and its estimate has room for the
//! redundancy beside the plain audio and the video it was given; otherwise only the primary
//! blocks go out, as plain Opus. Subscribers that did not negotiate RED always get plain Opus.
//! With RED on, the allocator charges the audio at its RED rate, so on a lossy link the video
//! gives way to intact audio, not the other way round.
//!
//! Hysteresis: on at [`LOSS_ON`] smoothed loss, off below [`LOSS_OFF`]; the loss is measured
//! before RED repairs anything, so turning RED on does not turn it off again. Never while the
//! link is overfilled (the loss of a congested queue, where more bits make it worse).

/// Smoothed loss at which RED is turned on.
pub const LOSS_ON: f32 = 0.02;

/// Smoothed loss below which RED is turned off again.
pub const LOSS_OFF: f32 = 0.005;

/// RED comes on only while its link's queue stayed under `participant::FULL_QUEUE` for
/// [`QUEUE_MEMORY`]: loss that comes with a queue is the queue's, from a link near its rate (a
/// keyframe of the one low layer a 300 kbit/s link carries beside the voices: a few packets
/// lost behind a queue of 50-110 ms), and the redundancy turned on there overfilled the link
/// and cost the voices more than it saved (simulator: 10-25 % of the voice packets for 3-4 s).
/// Random loss on a link that keeps up comes with no queue.
/// How long a queue keeps RED from coming on: about the span of the loss it is compared with
/// (a second's).
pub const QUEUE_MEMORY: std::time::Duration = std::time::Duration::from_millis(1500);

/// Weight of a new loss report (four a second, each over the last second).
const SMOOTHING: f32 = 0.3;

/// One subscriber's RED state.
#[derive(Debug, Clone, Default)]
pub struct RedPolicy {
    loss: Option<f32>,
    on: bool,
    waiting: Option<u64>,
    #[cfg(test)]
    pinned: Option<bool>,
}

impl RedPolicy {
    /// Fold in the fraction (0..=1) of packets sent to it that were lost.
    pub fn on_loss(&mut self, fraction: f32) {
        let fraction = fraction.clamp(0.0, 1.0);
        self.loss = Some(match self.loss {
            Some(l) => l + SMOOTHING * (fraction - l),
            None => fraction,
        });
    }

    /// Decide for this round (all bit/s): its sustained estimate, its audio plain and with
    /// RED, the video it was last allocated, and whether its link is overfilled now (loss
    /// from a queue that overflows is not helped by sending more: RED stays off), whether it
    /// queued lately (RED does not come on, see [`QUEUE_MEMORY`]), whether it receives any
    /// video at all, and whether its link is tight for the audio (see [`super::speech_cap`]).
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &mut self,
        sustained: u64,
        audio: u64,
        audio_with_red: u64,
        video: u64,
        congested: bool,
        queued: bool,
        has_video: bool,
        tight: bool,
    ) -> bool {
        #[cfg(test)]
        if let Some(on) = self.pinned {
            self.on = on;
            return on;
        }
        let lossy = match self.loss {
            Some(l) if self.on => l >= LOSS_OFF,
            Some(l) => l >= LOSS_ON,
            None => false,
        };
        let extra = audio_with_red.saturating_sub(audio);
        let spare = sustained.saturating_sub(audio + video);
        // Once on, it stays while the spare room covers half the redundancy: the estimate
        // wobbles by more than that, and RED flipping every round helps nobody. Without any
        // video to share the link with, the estimate stays near the little audio sent and
        // never shows room for more: RED goes unless the link is tight for the audio itself
        // (below).
        // Beside a flowing video the band lies above instead: on with half the redundancy
        // again to spare, off as soon as it would eat into the video's room. With the band
        // below, a link near its floor (joining at 300 kbit/s: 7-11 % loss from its own
        // queue, one low layer flowing) kept RED on while the estimate wobbled under audio,
        // video and redundancy, and the allocator, charging RED, paused the video that fitted
        // and swapped it with the other one.
        let room = if !has_video {
            true
        } else if video > 0 {
            if self.on {
                extra <= spare
            } else {
                extra.saturating_mul(3) / 2 <= spare
            }
        } else if self.on {
            extra <= spare * 2
        } else {
            extra <= spare
        };
        // A link that barely carries the audio loses packets because it is full: doubling
        // the audio would only lose more.
        let calm = self.on || !queued;
        self.on = lossy && !congested && !tight && calm && room;
        self.waiting = (lossy && !congested && !tight && calm && !self.on).then_some(extra);
        self.on
    }

    /// The redundancy's cost (bit/s) when the link wants RED but its estimate shows no room
    /// for it: a goal for the padding probes (an audio-only call's estimate stays near the
    /// little it carries and would never show the room otherwise).
    pub fn waiting(&self) -> Option<u64> {
        self.waiting
    }

    /// Decide `on` every round from now on, whatever the link does (tests of the forwarding).
    #[cfg(test)]
    pub fn pin(&mut self, on: bool) {
        self.pinned = Some(on);
    }

    /// RED is forwarded now.
    pub fn on(&self) -> bool {
        self.on
    }

    /// The smoothed loss, if any report came.
    pub fn loss(&self) -> Option<f32> {
        self.loss
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two microphones: ~110 kbit/s plain, ~180 kbit/s with RED.
    const PLAIN: u64 = 110_000;
    const RED: u64 = 180_000;

    #[test]
    fn a_clean_link_gets_plain_opus() {
        let mut r = RedPolicy::default();
        assert!(!r.decide(5_000_000, PLAIN, RED, 1_000_000, false, false, true, false));
        for _ in 0..10 {
            r.on_loss(0.0);
        }
        assert!(!r.decide(5_000_000, PLAIN, RED, 1_000_000, false, false, true, false));
    }

    #[test]
    fn a_lossy_link_with_room_gets_red_until_the_loss_is_gone() {
        let mut r = RedPolicy::default();
        for _ in 0..3 {
            r.on_loss(0.10);
        }
        assert!(r.decide(2_000_000, PLAIN, RED, 1_000_000, false, false, true, false));
        // Loss falls but stays above the off threshold: RED stays.
        for _ in 0..4 {
            r.on_loss(0.01);
        }
        assert!(r.decide(2_000_000, PLAIN, RED, 1_000_000, false, false, true, false));
        for _ in 0..20 {
            r.on_loss(0.0);
        }
        assert!(!r.decide(2_000_000, PLAIN, RED, 1_000_000, false, false, true, false));
        // And needs the on threshold again.
        for _ in 0..3 {
            r.on_loss(0.01);
        }
        assert!(!r.decide(2_000_000, PLAIN, RED, 1_000_000, false, false, true, false));
    }

    #[test]
    fn a_narrow_link_never_pays_for_red_however_lossy() {
        let mut r = RedPolicy::default();
        for _ in 0..5 {
            r.on_loss(0.2);
        }
        // 120 kbit/s carrying the plain audio only, and 300 kbit/s carrying a low layer too:
        // no room for 70 kbit/s of redundancy.
        assert!(!r.decide(120_000, PLAIN, RED, 0, false, false, true, false));
        assert!(!r.decide(300_000, PLAIN, RED, 150_000, false, false, true, false));
        // A subscriber with video whose estimate has the room: on.
        assert!(r.decide(200_000, PLAIN, RED, 0, false, false, true, false));
        assert_eq!(r.loss().map(|l| (l * 100.0).round()), Some(20.0));
        // An audio-only subscriber: its estimate hovers near the audio; on unless that is tight.
        assert!(r.decide(160_000, PLAIN, RED, 0, false, false, false, false));
        assert!(!r.decide(120_000, PLAIN, RED, 0, false, false, false, true));
        // Beside a flowing low layer: on only with half the redundancy again to spare, off
        // as soon as the redundancy would eat into the video's room.
        let mut v = RedPolicy::default();
        for _ in 0..5 {
            v.on_loss(0.08);
        }
        assert!(!v.decide(320_000, PLAIN, RED, 130_000, false, false, true, false));
        assert!(v.decide(360_000, PLAIN, RED, 130_000, false, false, true, false));
        assert!(v.decide(315_000, PLAIN, RED, 130_000, false, false, true, false));
        assert!(!v.decide(300_000, PLAIN, RED, 130_000, false, false, true, false));
        // The link overfilled (the loss comes from its queue): off, and nothing to probe for.
        assert!(!r.decide(2_000_000, PLAIN, RED, 0, true, false, true, false));
        assert_eq!(r.waiting(), None);
    }

    #[test]
    fn loss_behind_a_queue_does_not_turn_red_on_and_random_loss_does() {
        let mut r = RedPolicy::default();
        for _ in 0..3 {
            r.on_loss(0.05);
        }
        // The loss came with a queue: a link near its rate, where more bits lose more.
        assert!(!r.decide(2_000_000, PLAIN, RED, 130_000, false, true, true, false));
        assert_eq!(r.waiting(), None, "nothing to probe for either");
        // The same loss on a link that keeps up: on.
        assert!(r.decide(2_000_000, PLAIN, RED, 130_000, false, false, true, false));
        // Once on, a queue alone does not flip it (an overfilled link does, above).
        assert!(r.decide(2_000_000, PLAIN, RED, 130_000, false, true, true, false));
    }
}
