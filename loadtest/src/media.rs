//! The synthetic media schedule of one publisher (sans-IO: time is passed in).
//!
//! Audio: one Opus-like packet every 20 ms (50 packets/s). Video: `fps` frames per second at a
//! target bitrate; every `keyframe_interval` a keyframe `keyframe_factor` times the average
//! frame, the interframes smaller so that the bitrate holds; frames are cut into packets of at
//! most `max_payload` bytes of about equal size, like a browser's packetizer.

use std::time::{Duration, Instant};

use crate::payload::{FramePart, Kind};

/// Audio packet interval.
pub const AUDIO_PTIME: Duration = Duration::from_millis(20);
/// Most packets a lagging source sends at once before skipping ahead (bounded bursts).
const MAX_CATCH_UP: Duration = Duration::from_millis(200);

/// What a publisher sends.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaPlan {
    /// Whether it sends audio.
    pub audio: bool,
    /// Audio payload bytes per packet (Opus at ~32 kbit/s: ~80 bytes).
    pub audio_bytes: usize,
    /// Video bitrate in bits per second; 0 = no video.
    pub video_bitrate: u64,
    /// Video frames per second.
    pub fps: u32,
    /// Time between keyframes.
    pub keyframe_interval: Duration,
    /// A keyframe's size relative to the average frame.
    pub keyframe_factor: u32,
    /// Largest RTP payload.
    pub max_payload: usize,
}

impl Default for MediaPlan {
    fn default() -> Self {
        MediaPlan {
            audio: true,
            audio_bytes: 80,
            video_bitrate: 1_200_000,
            fps: 30,
            keyframe_interval: Duration::from_secs(2),
            keyframe_factor: 5,
            max_payload: 1100,
        }
    }
}

impl MediaPlan {
    /// Whether it sends video.
    pub fn video(&self) -> bool {
        self.video_bitrate > 0 && self.fps > 0
    }

    /// Packets per second this plan sends, on average.
    pub fn packets_per_second(&self) -> f64 {
        let audio = if self.audio { 50.0 } else { 0.0 };
        if !self.video() {
            return audio;
        }
        let frames_per_gop = (self.keyframe_interval.as_secs_f64() * f64::from(self.fps)).max(1.0);
        let avg = self.average_frame_bytes() as f64;
        let key = avg * f64::from(self.keyframe_factor);
        let inter = self.interframe_bytes() as f64;
        let packets = |bytes: f64| (bytes / self.max_payload as f64).ceil();
        let per_gop = packets(key) + packets(inter) * (frames_per_gop - 1.0);
        audio + per_gop / frames_per_gop * f64::from(self.fps)
    }

    fn average_frame_bytes(&self) -> usize {
        (self.video_bitrate / 8 / u64::from(self.fps.max(1))) as usize
    }

    fn interframe_bytes(&self) -> usize {
        let frames = (self.keyframe_interval.as_secs_f64() * f64::from(self.fps)).round().max(2.0);
        let avg = self.average_frame_bytes() as f64;
        let key = avg * f64::from(self.keyframe_factor);
        (((avg * frames) - key) / (frames - 1.0)).max(avg / 4.0) as usize
    }
}

/// One packet to send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    /// Audio or video.
    pub kind: Kind,
    /// RTP timestamp (48 kHz audio, 90 kHz video).
    pub rtp_time: u32,
    /// Last packet of a video frame.
    pub marker: bool,
    /// Place in the frame (video) — audio is always `Continuation`.
    pub part: FramePart,
    /// Payload bytes.
    pub size: usize,
}

/// The running schedule of one publisher.
#[derive(Debug)]
pub struct MediaClock {
    plan: MediaPlan,
    next_audio: Instant,
    next_video: Instant,
    audio_count: u32,
    frame_count: u32,
    frames_per_keyframe: u32,
    force_keyframe: bool,
    /// Packets skipped because the sender lagged by more than 200 ms.
    pub skipped: u64,
}

impl MediaClock {
    /// Starts the schedule at `start` (the first packets are due then).
    pub fn new(plan: MediaPlan, start: Instant) -> MediaClock {
        let frames_per_keyframe = (plan.keyframe_interval.as_secs_f64() * f64::from(plan.fps))
            .round()
            .max(1.0) as u32;
        MediaClock {
            plan,
            next_audio: start,
            next_video: start,
            audio_count: 0,
            frame_count: 0,
            frames_per_keyframe,
            force_keyframe: false,
            skipped: 0,
        }
    }

    /// The next keyframe comes now rather than at its interval (a receiver asked for one).
    pub fn request_keyframe(&mut self) {
        self.force_keyframe = true;
    }

    /// When the next packet is due.
    pub fn next_due(&self) -> Option<Instant> {
        let audio = self.plan.audio.then_some(self.next_audio);
        let video = self.plan.video().then_some(self.next_video);
        [audio, video].into_iter().flatten().min()
    }

    /// Appends the packets due at `now` to `out`.
    pub fn due(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        if self.plan.audio {
            self.catch_up_audio(now);
            while self.next_audio <= now {
                out.push(Outgoing {
                    kind: Kind::Audio,
                    rtp_time: self.audio_count.wrapping_mul(960),
                    marker: false,
                    part: FramePart::Continuation,
                    size: self.plan.audio_bytes,
                });
                self.audio_count = self.audio_count.wrapping_add(1);
                self.next_audio += AUDIO_PTIME;
            }
        }
        if self.plan.video() {
            let frame_time = Duration::from_secs(1) / self.plan.fps;
            if now.saturating_duration_since(self.next_video) > MAX_CATCH_UP {
                let behind = now.duration_since(self.next_video);
                let frames = (behind.as_micros() / frame_time.as_micros().max(1)) as u32;
                self.skipped += u64::from(frames);
                self.frame_count = self.frame_count.wrapping_add(frames);
                self.next_video += frame_time * frames;
            }
            while self.next_video <= now {
                self.push_frame(out);
                self.next_video += frame_time;
            }
        }
    }

    fn catch_up_audio(&mut self, now: Instant) {
        let behind = now.saturating_duration_since(self.next_audio);
        if behind > MAX_CATCH_UP {
            let n = (behind.as_micros() / AUDIO_PTIME.as_micros()) as u32;
            self.skipped += u64::from(n);
            self.audio_count = self.audio_count.wrapping_add(n);
            self.next_audio += AUDIO_PTIME * n;
        }
    }

    fn push_frame(&mut self, out: &mut Vec<Outgoing>) {
        let keyframe =
            self.force_keyframe || self.frame_count.is_multiple_of(self.frames_per_keyframe);
        self.force_keyframe = false;
        let bytes = if keyframe {
            self.plan.average_frame_bytes() * self.plan.keyframe_factor as usize
        } else {
            self.plan.interframe_bytes()
        };
        let packets = bytes.div_ceil(self.plan.max_payload).max(1);
        let each = bytes.div_ceil(packets);
        let rtp_time = self.frame_count.wrapping_mul(90_000 / self.plan.fps);
        for i in 0..packets {
            let part = match (i, keyframe) {
                (0, true) => FramePart::KeyframeStart,
                (0, false) => FramePart::InterframeStart,
                _ => FramePart::Continuation,
            };
            out.push(Outgoing {
                kind: Kind::Video,
                rtp_time,
                marker: i + 1 == packets,
                part,
                size: each,
            });
        }
        self.frame_count = self.frame_count.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(plan: MediaPlan, secs: u64) -> Vec<Outgoing> {
        let t0 = Instant::now();
        let mut clock = MediaClock::new(plan, t0);
        let mut out = Vec::new();
        let mut now = t0;
        let end = t0 + Duration::from_secs(secs);
        while now < end {
            clock.due(now, &mut out);
            now += Duration::from_millis(5);
        }
        out
    }

    #[test]
    fn audio_is_fifty_packets_a_second() {
        let plan = MediaPlan {
            video_bitrate: 0,
            ..MediaPlan::default()
        };
        let out = run(plan, 10);
        assert_eq!(out.len(), 500);
        assert!(out.iter().all(|o| o.kind == Kind::Audio && o.size == 80));
        assert_eq!(out[1].rtp_time - out[0].rtp_time, 960);
    }

    #[test]
    fn video_holds_its_bitrate_with_periodic_keyframes() {
        let plan = MediaPlan {
            audio: false,
            ..MediaPlan::default()
        };
        let expected_pps = plan.packets_per_second();
        let out = run(plan.clone(), 10);
        let bytes: usize = out.iter().map(|o| o.size).sum();
        let bitrate = bytes as f64 * 8.0 / 10.0;
        assert!((bitrate / 1_200_000.0 - 1.0).abs() < 0.02, "bitrate {bitrate}");
        let keyframes = out.iter().filter(|o| o.part == FramePart::KeyframeStart).count();
        assert_eq!(keyframes, 5, "one keyframe every 2 s for 10 s");
        let frames = out.iter().filter(|o| o.marker).count();
        assert_eq!(frames, 300);
        assert!(out.iter().all(|o| o.size <= plan.max_payload));
        let pps = out.len() as f64 / 10.0;
        assert!((pps - expected_pps).abs() / expected_pps < 0.02, "{pps} vs {expected_pps}");
        assert!(out.iter().any(|o| o.size > 1000), "realistic video packet sizes");
    }

    #[test]
    fn a_requested_keyframe_comes_with_the_next_frame() {
        let t0 = Instant::now();
        let mut clock = MediaClock::new(MediaPlan::default(), t0);
        let mut out = Vec::new();
        clock.due(t0, &mut out);
        out.clear();
        clock.request_keyframe();
        clock.due(t0 + Duration::from_millis(40), &mut out);
        assert!(out.iter().any(|o| o.part == FramePart::KeyframeStart));
    }

    #[test]
    fn a_lagging_sender_skips_ahead_instead_of_bursting() {
        let t0 = Instant::now();
        let mut clock = MediaClock::new(MediaPlan::default(), t0);
        let mut out = Vec::new();
        clock.due(t0 + Duration::from_secs(5), &mut out);
        assert!(clock.skipped > 0);
        assert!(out.len() < 200, "{} packets at once", out.len());
        assert!(clock.next_due().unwrap() > t0 + Duration::from_secs(5));
    }
}
