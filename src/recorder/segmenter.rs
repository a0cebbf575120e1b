//! One track's recorder: packets in, finished Matroska segments out.
//!
//! The pipeline is jitter buffer → depacketizer → timeline → Cluster writer, and this module
//! decides where the byte stream is cut. A segment is the unit that gets encrypted and stored,
//! so a crash loses at most the one in progress; segments are cut every `segment_ms` of media
//! time (video waits up to `keyframe_grace_ms` for a keyframe so segments tend to start
//! decodable), when no media came for a while (so a silent track does not sit on unstored
//! data), when one grows past `max_segment_bytes`, and at the end. Segment 0 carries the file
//! header; every segment ends on a Cluster boundary, so concatenating them in order gives a
//! valid streaming Matroska file.
//!
//! Sans-IO like the rest of the server core: time comes in as `now`, nothing here reads a
//! clock, spawns or writes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sfu::RecordedPacket;

use super::depacketize::{Assembler, Frame};
use super::jitter::{JitterBuffer, Released};
use super::mkv::{self, Cluster, TrackHeader};
use super::timing::Timeline;
use super::{bitstream, RecordCodec, RecorderConfig, RecorderError};

/// A finished piece of a track file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// 0, 1, 2, … in file order; segment 0 starts with the file header.
    pub index: u32,
    /// Timestamp of its first frame, ms since the recording started.
    pub start_ms: u64,
    /// Media time it covers, ms.
    pub duration_ms: u64,
    /// Whether its first frame is a keyframe (always true for audio).
    pub starts_with_keyframe: bool,
    /// Frames in it.
    pub frames: u32,
    /// The Matroska bytes, plaintext.
    pub bytes: Vec<u8>,
}

/// What happened to a track, for metrics and the manifest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackStats {
    /// RTP packets pushed.
    pub packets: u64,
    /// Duplicate packets dropped.
    pub duplicates: u64,
    /// Packets that came after their place was given up (or duplicates of released ones).
    pub late: u64,
    /// Packets given up as lost.
    pub lost: u64,
    /// Frames written.
    pub frames: u64,
    /// Video keyframes written.
    pub keyframes: u64,
    /// Frames dropped: damaged by loss, malformed, or waiting for a keyframe.
    pub frames_dropped: u64,
    /// Packets the depacketizer rejected.
    pub bad_packets: u64,
    /// Packets of another codec than the track's (ignored).
    pub ignored_packets: u64,
    /// Sender restarts (SSRC changes).
    pub ssrc_changes: u64,
    /// Times RTP time and arrival disagreed enough to re-anchor the timeline.
    pub resyncs: u64,
    /// Segments cut for size rather than time.
    pub forced_cuts: u64,
    /// Segments produced.
    pub segments: u64,
    /// Segment bytes produced.
    pub bytes: u64,
}

/// A packet held in the jitter buffer: only what depacketizing needs.
#[derive(Debug)]
struct Held {
    rtp_time: u32,
    marker: bool,
    arrival: Instant,
    payload: Arc<[u8]>,
}

/// The segment being filled.
#[derive(Debug)]
struct Open {
    index: u32,
    start_ms: u64,
    starts_with_keyframe: bool,
    frames: u32,
    bytes: Vec<u8>,
    cluster: Option<Cluster>,
}

impl Open {
    fn len(&self) -> usize {
        self.bytes.len() + self.cluster.as_ref().map_or(0, Cluster::len)
    }
}

/// Records one published track into segments.
#[derive(Debug)]
pub struct TrackRecorder {
    config: RecorderConfig,
    codec: RecordCodec,
    uid: u64,
    recording_start: Instant,
    start_offset_ms: Option<u64>,
    ssrc: Option<u32>,
    /// SSRCs replaced by a newer one: their stragglers are dropped, not mixed in.
    old_ssrcs: VecDeque<u32>,
    jitter: JitterBuffer<Held>,
    assembler: Assembler,
    timeline: Timeline,
    /// Arrival of the last packet handed to the assembler (the one completing a frame).
    last_arrival: Option<Instant>,
    scratch: Vec<Frame>,
    header: Option<TrackHeader>,
    open: Option<Open>,
    next_index: u32,
    last_ts: Option<u64>,
    /// Recent frame spacing, to give the last frame of a segment a duration.
    frame_ms: u64,
    ready: VecDeque<Segment>,
    finished: bool,
    stats: TrackStats,
}

impl TrackRecorder {
    /// A recorder for a track in `codec`, on the timeline of a recording that started at
    /// `recording_start`. `uid` goes into the file's TrackUID (made non-zero).
    pub fn new(
        recording_start: Instant,
        codec: RecordCodec,
        uid: u64,
        config: RecorderConfig,
    ) -> Result<Self, RecorderError> {
        config.validate()?;
        Ok(Self {
            codec,
            uid: uid.max(1),
            recording_start,
            start_offset_ms: None,
            ssrc: None,
            old_ssrcs: VecDeque::new(),
            jitter: JitterBuffer::new(
                config.jitter_packets,
                Duration::from_millis(config.jitter_delay_ms),
            ),
            assembler: Assembler::new(codec, config.max_frame_bytes),
            timeline: Timeline::new(recording_start, codec.clock_rate(), config.max_skew_ms),
            last_arrival: None,
            scratch: Vec::new(),
            header: None,
            open: None,
            next_index: 0,
            last_ts: None,
            frame_ms: if codec.is_video() { 33 } else { 20 },
            ready: VecDeque::new(),
            finished: false,
            stats: TrackStats::default(),
            config,
        })
    }

    /// The track's codec.
    pub fn codec(&self) -> RecordCodec {
        self.codec
    }

    /// When the track's first packet arrived, in ms after the recording started: where its
    /// file sits on the common timeline.
    pub fn start_offset_ms(&self) -> Option<u64> {
        self.start_offset_ms
    }

    /// Counters so far.
    pub fn stats(&self) -> TrackStats {
        let jitter = self.jitter.stats();
        let asm = self.assembler.stats();
        TrackStats {
            duplicates: jitter.duplicates,
            late: jitter.late + self.stats.late,
            lost: jitter.lost,
            frames: asm.frames,
            keyframes: asm.keyframes,
            frames_dropped: asm.frames_dropped,
            bad_packets: asm.bad_packets,
            resyncs: self.timeline.resyncs(),
            ..self.stats
        }
    }

    /// Whether the recorder is dropping video until a keyframe, or would like one to start
    /// the next segment on: the driver may ask the publisher for one (PLI), throttled.
    pub fn needs_keyframe(&self) -> bool {
        if !self.codec.is_video() || self.finished {
            return false;
        }
        self.assembler.needs_keyframe()
            || match (&self.open, self.last_ts) {
                (Some(open), Some(last)) => last >= open.start_ms + self.config.segment_ms,
                _ => false,
            }
    }

    /// Whether [`Self::finish`] was called.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Feeds one packet of this track received at `now`.
    pub fn push(&mut self, now: Instant, packet: &RecordedPacket) {
        if self.finished {
            return;
        }
        self.stats.packets += 1;
        if RecordCodec::from_codec(packet.codec) != Some(self.codec) {
            self.stats.ignored_packets += 1;
            return;
        }
        match self.ssrc {
            None => {
                self.ssrc = Some(packet.ssrc);
                self.start_offset_ms = Some(self.timeline.ms_since_start(packet.arrival));
                self.timeline.anchor(packet.rtp_time, packet.arrival);
            }
            Some(ssrc) if ssrc == packet.ssrc => {}
            // A straggler of a stream that was replaced, unless the SFU says a run of it
            // starts here (a simulcast recording back on a layer it recorded before).
            Some(_) if self.old_ssrcs.contains(&packet.ssrc) && !packet.starts_run => {
                self.stats.late += 1;
                return;
            }
            Some(old) => {
                // The sender restarted, or the SFU switched layers: finish what the old
                // stream had, then start over.
                self.old_ssrcs.retain(|s| *s != packet.ssrc);
                self.release(now, true);
                self.jitter.reset();
                self.assembler.reset();
                self.timeline.anchor(packet.rtp_time, packet.arrival);
                self.old_ssrcs.push_back(old);
                if self.old_ssrcs.len() > 4 {
                    self.old_ssrcs.pop_front();
                }
                self.ssrc = Some(packet.ssrc);
                self.stats.ssrc_changes += 1;
            }
        }
        let held = Held {
            rtp_time: packet.rtp_time,
            marker: packet.marker,
            arrival: packet.arrival,
            payload: packet.payload.clone(),
        };
        self.jitter.push(now, packet.seq, held);
        self.release(now, false);
    }

    /// Handles timeouts due at `now` and returns the next finished segment, if any.
    pub fn poll_segment(&mut self, now: Instant) -> Option<Segment> {
        if !self.finished {
            self.release(now, false);
            if let Some(open) = &self.open {
                let idle_cut = open.start_ms + self.idle_cut_after_ms();
                if self.timeline.ms_since_start(now) >= idle_cut {
                    self.close_segment(None);
                }
            }
        }
        self.ready.pop_front()
    }

    /// When [`Self::poll_segment`] next has work to do without new packets.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let idle = self.open.as_ref().map(|o| {
            self.recording_start + Duration::from_millis(o.start_ms + self.idle_cut_after_ms())
        });
        [self.jitter.deadline(), idle].into_iter().flatten().min()
    }

    /// Ends the track: everything held is written and the last segment closed. Drain the
    /// remaining segments with [`Self::poll_segment`].
    pub fn finish(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        self.release(now, true);
        // A frame still missing its last packet will not get it now.
        self.assembler.lost();
        self.close_segment(None);
        self.finished = true;
    }

    fn idle_cut_after_ms(&self) -> u64 {
        self.config.segment_ms + self.config.keyframe_grace_ms + self.config.jitter_delay_ms
    }

    /// Moves packets due at `now` (all of them when `flush`) through the assembler and writes
    /// the frames that complete.
    fn release(&mut self, now: Instant, flush: bool) {
        loop {
            let next = if flush {
                self.jitter.drain()
            } else {
                self.jitter.pop(now)
            };
            match next {
                None => break,
                Some(Released::Lost(_)) => self.assembler.lost(),
                Some(Released::Packet(p)) => {
                    self.last_arrival = Some(p.arrival);
                    let mut frames = std::mem::take(&mut self.scratch);
                    self.assembler
                        .push(p.rtp_time, p.marker, &p.payload, &mut frames);
                    for frame in frames.drain(..) {
                        self.write_frame(frame);
                    }
                    self.scratch = frames;
                }
            }
        }
    }

    fn write_frame(&mut self, frame: Frame) {
        let arrival = self.last_arrival.unwrap_or(self.recording_start);
        let mut ts = self.timeline.timestamp(frame.rtp_time, arrival);
        // Matroska needs strictly increasing block times per track; two frames landing on the
        // same millisecond (e.g. a keyframe a publisher sends on request right after a frame)
        // would make players complain. Nudge the later one forward by a millisecond.
        if let Some(last) = self.last_ts {
            if ts <= last {
                ts = last + 1;
            }
        }
        // How long this frame lasts, for the end of a segment: Opus says; for video, the
        // last spacing that looks like a frame rate rather than a pause.
        if self.codec == RecordCodec::Opus {
            if let Some(samples) = bitstream::opus_samples(&frame.data) {
                self.frame_ms = u64::from(samples.div_ceil(48));
            }
        } else if let Some(last) = self.last_ts {
            let step = ts - last;
            if step <= 200 {
                self.frame_ms = step;
            }
        }
        if self.header.is_none() {
            self.header = Some(TrackHeader {
                codec: self.codec,
                uid: self.uid,
                size: frame.size,
                channels: if self.codec == RecordCodec::Opus {
                    bitstream::opus_channels(&frame.data)
                } else {
                    0
                },
                parameter_sets: self
                    .assembler
                    .parameter_sets()
                    .map(|(s, p)| (s.to_vec(), p.to_vec())),
            });
        }
        if let Some(open) = &self.open {
            let boundary = open.start_ms + self.config.segment_ms;
            let due = ts >= boundary
                && (!self.codec.is_video()
                    || frame.keyframe
                    || ts >= boundary + self.config.keyframe_grace_ms);
            let full = open.len() + frame.data.len() > self.config.max_segment_bytes;
            if open.frames > 0 && (due || full) {
                if full && !due {
                    self.stats.forced_cuts += 1;
                }
                self.close_segment(Some(ts));
            }
        }
        let open = match &mut self.open {
            Some(open) => open,
            None => {
                let index = self.next_index;
                self.next_index += 1;
                let mut bytes = Vec::new();
                if index == 0 {
                    bytes = mkv::file_header(self.header.as_ref().expect("set above"));
                }
                self.open.insert(Open {
                    index,
                    start_ms: ts,
                    starts_with_keyframe: frame.keyframe,
                    frames: 0,
                    bytes,
                    cluster: None,
                })
            }
        };
        let new_cluster = match &open.cluster {
            None => true,
            Some(c) => {
                !c.fits(ts)
                    || ts - c.timestamp() >= self.config.max_cluster_ms
                    || (self.codec.is_video() && frame.keyframe && c.blocks() > 0)
            }
        };
        if new_cluster {
            if let Some(c) = open.cluster.take() {
                c.finish(&mut open.bytes);
            }
            open.cluster = Some(Cluster::new(ts));
        }
        open.cluster
            .as_mut()
            .expect("set above")
            .push(ts, frame.keyframe, &frame.data);
        open.frames += 1;
        self.last_ts = Some(ts);
    }

    /// Closes the open segment; `next_ts` is where the next one starts, if known.
    fn close_segment(&mut self, next_ts: Option<u64>) {
        let Some(mut open) = self.open.take() else {
            return;
        };
        if let Some(c) = open.cluster.take() {
            c.finish(&mut open.bytes);
        }
        let end = next_ts.unwrap_or_else(|| self.last_ts.unwrap_or(open.start_ms) + self.frame_ms);
        self.stats.segments += 1;
        self.stats.bytes += open.bytes.len() as u64;
        self.ready.push_back(Segment {
            index: open.index,
            start_ms: open.start_ms,
            duration_ms: end.saturating_sub(open.start_ms),
            starts_with_keyframe: open.starts_with_keyframe,
            frames: open.frames,
            bytes: open.bytes,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::{ParticipantId, TrackId};
    use str0m::media::MediaKind;

    fn opus_packet(start: Instant, seq: u64) -> RecordedPacket {
        RecordedPacket {
            participant: ParticipantId(1),
            track: TrackId(1),
            kind: MediaKind::Audio,
            codec: str0m::format::Codec::Opus,
            clock_rate: 48_000,
            ssrc: 42,
            seq,
            rtp_time: 1_000 + seq as u32 * 960,
            marker: false,
            arrival: start + Duration::from_millis(seq * 20),
            payload: Arc::from(&[0x78u8, 0xAA, 0xBB][..]),
            starts_run: false,
        }
    }

    fn config() -> RecorderConfig {
        RecorderConfig {
            segment_ms: 1_000,
            keyframe_grace_ms: 500,
            ..RecorderConfig::default()
        }
    }

    fn drain(rec: &mut TrackRecorder, now: Instant) -> Vec<Segment> {
        std::iter::from_fn(|| rec.poll_segment(now)).collect()
    }

    #[test]
    fn audio_is_cut_every_segment_and_at_the_end() {
        let start = Instant::now();
        let mut rec = TrackRecorder::new(start, RecordCodec::Opus, 1, config()).unwrap();
        let mut segments = Vec::new();
        for seq in 0..150 {
            let p = opus_packet(start, seq);
            rec.push(p.arrival, &p);
            segments.extend(drain(&mut rec, p.arrival));
        }
        rec.finish(start + Duration::from_secs(3));
        segments.extend(drain(&mut rec, start + Duration::from_secs(3)));
        let spans: Vec<(u32, u64, u64)> = segments
            .iter()
            .map(|s| (s.index, s.start_ms, s.duration_ms))
            .collect();
        assert_eq!(spans, [(0, 0, 1_000), (1, 1_000, 1_000), (2, 2_000, 1_000)]);
        assert_eq!(segments.iter().map(|s| s.frames).sum::<u32>(), 150);
        assert!(segments[0].bytes.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]));
        assert!(
            segments[1].bytes.starts_with(&[0x1F, 0x43, 0xB6, 0x75]),
            "later segments are clusters"
        );
        assert_eq!(rec.stats().segments, 3);
        assert!(rec.poll_timeout().is_none());
    }

    #[test]
    fn a_silent_track_closes_its_segment_on_time() {
        let start = Instant::now();
        let mut rec = TrackRecorder::new(start, RecordCodec::Opus, 1, config()).unwrap();
        for seq in 0..10 {
            let p = opus_packet(start, seq);
            rec.push(p.arrival, &p);
        }
        // The jitter window (200 ms from the first packet) is the first wake-up.
        assert_eq!(rec.poll_timeout(), Some(start + Duration::from_millis(200)));
        assert!(drain(&mut rec, start + Duration::from_millis(199)).is_empty());
        let later = start + Duration::from_millis(1_000 + 500 + 200);
        assert!(rec.poll_timeout().unwrap() <= later);
        let segs = drain(&mut rec, later);
        assert_eq!(segs.len(), 1);
        assert_eq!(
            (segs[0].start_ms, segs[0].frames, segs[0].duration_ms),
            (0, 10, 200)
        );
    }

    #[test]
    fn oversized_segments_are_cut_early() {
        let start = Instant::now();
        let cfg = RecorderConfig {
            max_segment_bytes: 64 * 1024,
            ..config()
        };
        let mut rec = TrackRecorder::new(start, RecordCodec::Opus, 1, cfg).unwrap();
        let mut segments = Vec::new();
        for seq in 0..40 {
            let mut p = opus_packet(start, seq);
            p.payload = Arc::from(vec![0x78u8; 4_000]);
            rec.push(p.arrival, &p);
            segments.extend(drain(&mut rec, p.arrival));
        }
        assert!(segments.len() >= 2);
        assert!(segments.iter().all(|s| s.bytes.len() <= 64 * 1024));
        assert!(rec.stats().forced_cuts >= 2);
    }

    #[test]
    fn hostile_packet_streams_never_panic_and_still_export() {
        let mut state = 0x0123_4567_89AB_CDEFu64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for codec in [
            str0m::format::Codec::Opus,
            str0m::format::Codec::Vp8,
            str0m::format::Codec::Vp9,
            str0m::format::Codec::H264,
        ] {
            let start = Instant::now();
            let mut rec =
                TrackRecorder::new(start, RecordCodec::from_codec(codec).unwrap(), 1, config())
                    .unwrap();
            let mut now = start;
            let mut segments = Vec::new();
            for _ in 0..5_000 {
                let r = next();
                now += Duration::from_millis(r % 7);
                let mut p = opus_packet(start, r >> 8 & 0xFFF);
                p.codec = codec;
                p.ssrc = (r >> 24 & 3) as u32;
                p.rtp_time = if r >> 30 & 1 == 0 {
                    (r >> 32) as u32
                } else {
                    (now - start).as_millis() as u32 * 90
                };
                p.marker = r >> 29 & 1 == 1;
                p.arrival = now;
                let len = (r >> 40) as usize % 40;
                p.payload = (0..len).map(|_| next() as u8).collect::<Vec<u8>>().into();
                rec.push(now, &p);
                segments.extend(drain(&mut rec, now));
            }
            rec.finish(now);
            segments.extend(drain(&mut rec, now));
            // Whatever got through is still a well-formed file.
            if !segments.is_empty() {
                let bytes: Vec<&[u8]> = segments.iter().map(|s| s.bytes.as_slice()).collect();
                crate::recorder::finalize(&bytes).unwrap();
            }
        }
    }

    #[test]
    fn packets_of_a_replaced_ssrc_are_dropped() {
        let start = Instant::now();
        let mut rec = TrackRecorder::new(start, RecordCodec::Opus, 1, config()).unwrap();
        for seq in 0..5 {
            let p = opus_packet(start, seq);
            rec.push(p.arrival, &p);
        }
        let mut restarted = opus_packet(start, 1_000);
        restarted.ssrc = 43;
        restarted.arrival = start + Duration::from_millis(500);
        rec.push(restarted.arrival, &restarted);
        let straggler = opus_packet(start, 5);
        rec.push(restarted.arrival, &straggler);
        rec.finish(start + Duration::from_secs(1));
        let segs = drain(&mut rec, start + Duration::from_secs(1));
        let stats = rec.stats();
        assert_eq!((stats.ssrc_changes, stats.late, stats.frames), (1, 1, 6));
        assert_eq!(segs.len(), 1);
        assert_eq!(
            segs[0].duration_ms, 520,
            "0..80 ms, then the restart at 500 ms"
        );
    }

    #[test]
    fn a_layer_the_recording_returns_to_is_recorded_again() {
        // Simulcast: the SFU records the lowest layer (SSRC 42), switches to the top (43), and
        // back to the lowest when the encoder drops the top one; each switch starts on a
        // keyframe the SFU marks. The return is a new run of 42, not a straggler.
        let start = Instant::now();
        let mut rec = TrackRecorder::new(start, RecordCodec::Opus, 1, config()).unwrap();
        let at = |seq: u64, ssrc: u32, ms: u64, starts_run: bool| {
            let mut p = opus_packet(start, seq);
            p.ssrc = ssrc;
            p.arrival = start + Duration::from_millis(ms);
            p.rtp_time = (ms * 48) as u32;
            p.starts_run = starts_run;
            p
        };
        let mut pushed = 0;
        for (i, (ssrc, base, from_ms)) in [(42, 0, 0), (43, 5_000, 200), (42, 100, 400)]
            .into_iter()
            .enumerate()
        {
            for k in 0..5u64 {
                let p = at(base + k, ssrc, from_ms + k * 20, i > 0 && k == 0);
                rec.push(p.arrival, &p);
                pushed += 1;
            }
        }
        // Without the mark the same SSRC coming back is a straggler of a replaced stream.
        let straggler = at(50, 43, 500, false);
        rec.push(straggler.arrival, &straggler);
        rec.finish(start + Duration::from_secs(1));
        drain(&mut rec, start + Duration::from_secs(1));
        let stats = rec.stats();
        assert_eq!(
            (stats.ssrc_changes, stats.late, stats.frames),
            (2, 1, pushed)
        );
    }
}
