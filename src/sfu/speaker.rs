//! Who is speaking in a room, from the audio level header extension (RFC 6464) of each
//! microphone, smoothed so that a cough or a word of assent does not move the spotlight.
//!
//! Every forwarded microphone packet carries the level of its 20 ms of audio (0 dBov loudest,
//! -127 silence), set by the sender's encoder: the server reads it without decoding. Per
//! round ([`SpeakerDetector::tick`], every 250 ms) each participant's share of voiced packets
//! is folded into a smoothed activity (time constant about a second). The loudest active
//! participant becomes the speaker once they have led for [`SWITCH_HOLD`]; the speaker stays
//! until somebody else does, so the tile does not jump back and forth in a conversation or
//! go blank in a pause. Pages highlight and enlarge the speaker; the allocator favours
//! their camera.
//!
//! Pure: time is passed in. One detector per room.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::ParticipantId;

/// A packet at or above this level (dBov) counts as voiced. Speech sits around -30 to -10;
/// room noise on a good microphone well below -50.
pub const VOICED_DBOV: i8 = -50;
/// Activity (the smoothed share of voiced packets) needed to be the speaker.
pub const MIN_ACTIVITY: f64 = 0.3;
/// A challenger must lead the speaker by this much activity...
pub const SWITCH_MARGIN: f64 = 0.1;
/// ...for this long before the spotlight moves.
pub const SWITCH_HOLD: Duration = Duration::from_secs(1);
/// Weight of the newest round in the smoothed activity (per 250 ms round: about a second).
const SMOOTHING: f64 = 0.25;

#[derive(Debug, Default, Clone, Copy)]
struct Voice {
    packets: u32,
    voiced: u32,
    activity: f64,
}

/// One room's speaker detection.
#[derive(Debug, Default)]
pub struct SpeakerDetector {
    voices: HashMap<ParticipantId, Voice>,
    current: Option<ParticipantId>,
    /// Who leads the speaker now, and since when.
    challenger: Option<(ParticipantId, Instant)>,
}

impl SpeakerDetector {
    /// The speaker now.
    pub fn current(&self) -> Option<ParticipantId> {
        self.current
    }

    /// One microphone packet of `who` at `level` dBov (the extension's value, 0..=-127).
    pub fn on_level(&mut self, who: ParticipantId, level: i8) {
        let v = self.voices.entry(who).or_default();
        v.packets += 1;
        if level >= VOICED_DBOV {
            v.voiced += 1;
        }
    }

    /// `who` left (or stopped its microphone).
    pub fn remove(&mut self, who: ParticipantId) {
        self.voices.remove(&who);
        if self.challenger.is_some_and(|(c, _)| c == who) {
            self.challenger = None;
        }
    }

    /// Fold the round's packets into the activities; `Some(speaker)` when the speaker
    /// changed (to `None` only when the speaker left).
    pub fn tick(&mut self, now: Instant) -> Option<Option<ParticipantId>> {
        for v in self.voices.values_mut() {
            let share = if v.packets == 0 {
                0.0
            } else {
                f64::from(v.voiced) / f64::from(v.packets)
            };
            v.activity = SMOOTHING * share + (1.0 - SMOOTHING) * v.activity;
            v.packets = 0;
            v.voiced = 0;
        }
        let before = self.current;
        if self.current.is_some_and(|c| !self.voices.contains_key(&c)) {
            self.current = None;
        }
        let activity = |who: Option<ParticipantId>| {
            who.and_then(|w| self.voices.get(&w))
                .map_or(0.0, |v| v.activity)
        };
        // The most active participant other than the speaker (ties: the lower id).
        let leader = self
            .voices
            .iter()
            .filter(|(who, v)| Some(**who) != self.current && v.activity >= MIN_ACTIVITY)
            .max_by(|a, b| a.1.activity.total_cmp(&b.1.activity).then(b.0.cmp(a.0)))
            .map(|(who, v)| (*who, v.activity));
        match leader {
            Some((who, a))
                if self.current.is_none() || a >= activity(self.current) + SWITCH_MARGIN =>
            {
                match self.challenger {
                    Some((c, since)) if c == who => {
                        if self.current.is_none()
                            || now.saturating_duration_since(since) >= SWITCH_HOLD
                        {
                            self.current = Some(who);
                            self.challenger = None;
                        }
                    }
                    _ => {
                        self.challenger = Some((who, now));
                        if self.current.is_none() {
                            self.current = Some(who);
                            self.challenger = None;
                        }
                    }
                }
            }
            _ => self.challenger = None,
        }
        (self.current != before).then_some(self.current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(250);

    /// Runs `rounds` rounds where each of `talking` sends 12 voiced packets per round and
    /// the others 12 silent ones; returns the changes.
    fn run(
        d: &mut SpeakerDetector,
        now: &mut Instant,
        rounds: u32,
        everyone: &[u64],
        talking: &[u64],
    ) -> Vec<Option<ParticipantId>> {
        let mut changes = Vec::new();
        for _ in 0..rounds {
            for who in everyone {
                let level = if talking.contains(who) { -20 } else { -90 };
                for _ in 0..12 {
                    d.on_level(ParticipantId(*who), level);
                }
            }
            *now += TICK;
            if let Some(c) = d.tick(*now) {
                changes.push(c);
            }
        }
        changes
    }

    #[test]
    fn the_one_who_talks_becomes_the_speaker_and_stays_through_a_pause() {
        let mut d = SpeakerDetector::default();
        let mut now = Instant::now();
        let all = [1, 2, 3];
        assert!(
            run(&mut d, &mut now, 8, &all, &[]).is_empty(),
            "silence: nobody"
        );
        let changes = run(&mut d, &mut now, 8, &all, &[2]);
        assert_eq!(changes, vec![Some(ParticipantId(2))]);
        // A pause in speech: still the speaker.
        assert!(run(&mut d, &mut now, 20, &all, &[]).is_empty());
        assert_eq!(d.current(), Some(ParticipantId(2)));
    }

    #[test]
    fn a_short_interjection_does_not_move_the_spotlight_but_a_new_speaker_does() {
        let mut d = SpeakerDetector::default();
        let mut now = Instant::now();
        let all = [1, 2];
        run(&mut d, &mut now, 12, &all, &[1]);
        assert_eq!(d.current(), Some(ParticipantId(1)));
        // Participant 2 says "yes" (half a second) while 1 goes on.
        assert!(run(&mut d, &mut now, 2, &all, &[1, 2]).is_empty());
        assert!(run(&mut d, &mut now, 4, &all, &[1]).is_empty());
        // 2 takes over: the spotlight moves after the hold, once.
        let changes = run(&mut d, &mut now, 16, &all, &[2]);
        assert_eq!(changes, vec![Some(ParticipantId(2))]);
    }

    #[test]
    fn the_speaker_leaving_clears_the_spotlight() {
        let mut d = SpeakerDetector::default();
        let mut now = Instant::now();
        run(&mut d, &mut now, 8, &[1, 2], &[1]);
        d.remove(ParticipantId(1));
        now += TICK;
        assert_eq!(d.tick(now), Some(None));
        assert_eq!(d.tick(now + TICK), None);
    }
}
