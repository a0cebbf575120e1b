//! All recorded tracks of one consultation on one timeline.
//!
//! Participants come and go and publish or unpublish tracks during a call; the recording
//! follows: the first packet of a track opens a [`TrackRecorder`] (its file starts where that
//! packet arrived on the common timeline), and the driver finishes a track when the SFU says it
//! is gone. A track that comes back after being finished, or switches codec, starts a new
//! "take" (a new file) rather than mixing into the old one, since a Matroska track has one
//! codec and a finished file is already stored.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use crate::sfu::{ParticipantId, RecordedPacket, TrackId};

use super::{RecordCodec, RecorderConfig, RecorderError, Segment, TrackRecorder, TrackStats};

/// Names one track file of a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    /// Publisher.
    pub participant: ParticipantId,
    /// Published track.
    pub track: TrackId,
    /// 0 for the track's first file, then 1, 2, … if it restarts after being finished or
    /// changes codec.
    pub take: u32,
}

/// What the recording hands to its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordingEvent {
    /// A new track file begins.
    TrackStarted {
        /// Which file.
        stream: StreamKey,
        /// Its codec (decides `.webm` or `.mkv`).
        codec: RecordCodec,
        /// Where the file sits on the common timeline: its first packet's arrival, ms after
        /// the recording started. Timestamps inside the file already include it.
        start_offset_ms: u64,
    },
    /// A segment of a track file is complete: encrypt and store it.
    Segment {
        /// Which file.
        stream: StreamKey,
        /// The segment.
        segment: Segment,
    },
    /// A track file is complete; no more segments follow for it.
    TrackFinished {
        /// Which file.
        stream: StreamKey,
        /// What happened to its media.
        stats: TrackStats,
    },
}

/// The recorder of one consultation: many tracks, one start `Instant`.
#[derive(Debug)]
pub struct Recording {
    start: Instant,
    config: RecorderConfig,
    tracks: BTreeMap<(ParticipantId, TrackId), (u32, TrackRecorder)>,
    next_take: HashMap<(ParticipantId, TrackId), u32>,
    events: VecDeque<RecordingEvent>,
    unsupported_packets: u64,
}

impl Recording {
    /// A recording whose timeline starts at `start`.
    pub fn new(start: Instant, config: RecorderConfig) -> Result<Self, RecorderError> {
        config.validate()?;
        Ok(Self {
            start,
            config,
            tracks: BTreeMap::new(),
            next_take: HashMap::new(),
            events: VecDeque::new(),
            unsupported_packets: 0,
        })
    }

    /// When the recording's timeline starts.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Track files being written.
    pub fn active_tracks(&self) -> usize {
        self.tracks.len()
    }

    /// Packets skipped because their codec cannot be recorded (DTMF, comfort noise, …).
    pub fn unsupported_packets(&self) -> u64 {
        self.unsupported_packets
    }

    /// Tracks whose recorder would like a keyframe (see [`TrackRecorder::needs_keyframe`]).
    pub fn keyframes_wanted(&self) -> Vec<(ParticipantId, TrackId)> {
        self.tracks
            .iter()
            .filter(|(_, (_, t))| t.needs_keyframe())
            .map(|(key, _)| *key)
            .collect()
    }

    /// Feeds one recorded packet received at `now`.
    pub fn push(&mut self, now: Instant, packet: &RecordedPacket) {
        let Some(codec) = RecordCodec::from_codec(packet.codec) else {
            self.unsupported_packets += 1;
            return;
        };
        let key = (packet.participant, packet.track);
        if self
            .tracks
            .get(&key)
            .is_some_and(|(_, t)| t.codec() != codec)
        {
            self.finish_key(now, key);
        }
        if !self.tracks.contains_key(&key) {
            let take = self.next_take.entry(key).or_insert(0);
            let stream = StreamKey {
                participant: key.0,
                track: key.1,
                take: *take,
            };
            *take += 1;
            // A stable, non-zero UID per file; it only has to differ between tracks.
            let uid = (key.1 .0 << 8) ^ u64::from(stream.take) ^ 1;
            let mut recorder = TrackRecorder::new(self.start, codec, uid, self.config.clone())
                .expect("config validated in Recording::new");
            recorder.push(now, packet);
            self.events.push_back(RecordingEvent::TrackStarted {
                stream,
                codec,
                start_offset_ms: recorder.start_offset_ms().unwrap_or(0),
            });
            self.tracks.insert(key, (stream.take, recorder));
            return;
        }
        if let Some((_, recorder)) = self.tracks.get_mut(&key) {
            recorder.push(now, packet);
        }
    }

    /// Ends one track (unpublished, or its publisher left or withdrew consent).
    pub fn finish_track(&mut self, now: Instant, participant: ParticipantId, track: TrackId) {
        self.finish_key(now, (participant, track));
    }

    /// Ends every track of a participant who left.
    pub fn finish_participant(&mut self, now: Instant, participant: ParticipantId) {
        let keys: Vec<_> = self
            .tracks
            .keys()
            .filter(|(p, _)| *p == participant)
            .copied()
            .collect();
        for key in keys {
            self.finish_key(now, key);
        }
    }

    /// Ends the recording: every track is finished. Drain the events with [`Self::poll`].
    pub fn finish(&mut self, now: Instant) {
        let keys: Vec<_> = self.tracks.keys().copied().collect();
        for key in keys {
            self.finish_key(now, key);
        }
    }

    /// Handles timeouts due at `now` and returns the next event.
    pub fn poll(&mut self, now: Instant) -> Option<RecordingEvent> {
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        for (&(participant, track), (take, recorder)) in &mut self.tracks {
            while let Some(segment) = recorder.poll_segment(now) {
                let stream = StreamKey {
                    participant,
                    track,
                    take: *take,
                };
                self.events
                    .push_back(RecordingEvent::Segment { stream, segment });
            }
        }
        self.events.pop_front()
    }

    /// When [`Self::poll`] next has work without new packets.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.tracks
            .values()
            .filter_map(|(_, t)| t.poll_timeout())
            .min()
    }

    fn finish_key(&mut self, now: Instant, key: (ParticipantId, TrackId)) {
        let Some((take, mut recorder)) = self.tracks.remove(&key) else {
            return;
        };
        let stream = StreamKey {
            participant: key.0,
            track: key.1,
            take,
        };
        recorder.finish(now);
        while let Some(segment) = recorder.poll_segment(now) {
            self.events
                .push_back(RecordingEvent::Segment { stream, segment });
        }
        self.events.push_back(RecordingEvent::TrackFinished {
            stream,
            stats: recorder.stats(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use str0m::media::MediaKind;

    fn packet(
        p: u64,
        t: u64,
        seq: u64,
        arrival: Instant,
        codec: str0m::format::Codec,
    ) -> RecordedPacket {
        RecordedPacket {
            participant: ParticipantId(p),
            track: TrackId(t),
            kind: MediaKind::Audio,
            codec,
            clock_rate: 48_000,
            ssrc: 7,
            seq,
            rtp_time: seq as u32 * 960,
            marker: false,
            arrival,
            payload: Arc::from(&[0x78u8, 1, 2, 3][..]),
            starts_run: false,
        }
    }

    fn events(rec: &mut Recording, now: Instant) -> Vec<RecordingEvent> {
        std::iter::from_fn(|| rec.poll(now)).collect()
    }

    #[test]
    fn tracks_start_where_their_first_packet_arrived() {
        use str0m::format::Codec;
        let start = Instant::now();
        let mut rec = Recording::new(start, RecorderConfig::default()).unwrap();
        for i in 0..50u64 {
            let a = start + Duration::from_millis(i * 20);
            rec.push(a, &packet(1, 1, i, a, Codec::Opus));
            let b = a + Duration::from_secs(2);
            rec.push(b, &packet(2, 2, 1000 + i, b, Codec::Opus));
        }
        rec.push(start, &packet(2, 3, 0, start, Codec::Tele));
        assert_eq!(rec.unsupported_packets(), 1);
        rec.finish_participant(start + Duration::from_secs(4), ParticipantId(1));
        assert_eq!(rec.active_tracks(), 1);
        rec.finish(start + Duration::from_secs(4));
        let evs = events(&mut rec, start + Duration::from_secs(4));
        let starts: Vec<(u64, u64)> = evs
            .iter()
            .filter_map(|e| match e {
                RecordingEvent::TrackStarted {
                    stream,
                    start_offset_ms,
                    ..
                } => Some((stream.participant.0, *start_offset_ms)),
                _ => None,
            })
            .collect();
        assert_eq!(starts, [(1, 0), (2, 2_000)]);
        let segments: Vec<(u64, u64)> = evs
            .iter()
            .filter_map(|e| match e {
                RecordingEvent::Segment { stream, segment } => {
                    Some((stream.participant.0, segment.start_ms))
                }
                _ => None,
            })
            .collect();
        assert_eq!(segments, [(1, 0), (2, 2_000)]);
        assert_eq!(
            evs.iter()
                .filter(|e| matches!(e, RecordingEvent::TrackFinished { .. }))
                .count(),
            2
        );
        assert!(rec.poll_timeout().is_none());
    }

    #[test]
    fn a_codec_switch_or_return_starts_a_new_take() {
        use str0m::format::Codec;
        let start = Instant::now();
        let mut rec = Recording::new(start, RecorderConfig::default()).unwrap();
        rec.push(start, &packet(1, 1, 0, start, Codec::Opus));
        let mut vp8 = packet(1, 1, 0, start, Codec::Vp8);
        vp8.kind = MediaKind::Video;
        rec.push(start, &vp8);
        rec.finish_track(start, ParticipantId(1), TrackId(1));
        rec.push(start, &packet(1, 1, 5, start, Codec::Opus));
        rec.finish(start);
        let takes: Vec<(u32, RecordCodec)> = events(&mut rec, start)
            .into_iter()
            .filter_map(|e| match e {
                RecordingEvent::TrackStarted { stream, codec, .. } => Some((stream.take, codec)),
                _ => None,
            })
            .collect();
        assert_eq!(
            takes,
            [
                (0, RecordCodec::Opus),
                (1, RecordCodec::Vp8),
                (2, RecordCodec::Opus)
            ]
        );
    }
}
