//! The synthetic media schedule of one publisher (sans-IO: time is passed in).
//!
//! Audio: one Opus-like packet every 20 ms (50 packets/s). Video: `fps` frames per second at a
//! target bitrate; every `keyframe_interval` a keyframe `keyframe_factor` times the average
//! frame, the interframes smaller so that the bitrate holds; frames are cut into packets of at
//! most `max_payload` bytes of about equal size, like a browser's packetizer.
//!
//! With simulcast the camera is encoded up to three times (rids `q`, `h`, `f`: quarter, half
//! and full size, [`SIMULCAST_LAYERS`]): every layer has its own bitrate and its own keyframe
//! requests, shares the capture clock (one RTP timestamp per frame for all layers) and can be
//! switched off and on as the server's `publish_layers` asks (a layer switched on starts with a
//! keyframe, as a browser's encoder does).

use std::time::{Duration, Instant};

use crate::payload::{FramePart, Kind};

/// Audio packet interval.
pub const AUDIO_PTIME: Duration = Duration::from_millis(20);
/// Most packets a lagging source sends at once before skipping ahead (bounded bursts).
const MAX_CATCH_UP: Duration = Duration::from_millis(200);

/// The simulcast layers a publisher may send: rid, bitrate (`None`: the plan's
/// `video_bitrate`) and frame height. The bitrates are the browser client's `maxBitrate`s for
/// `q` and `h` (see `signaling/PROTOCOL.md`); `f` is the camera of a call without simulcast.
pub const SIMULCAST_LAYERS: [(&str, Option<u64>, u16); 3] = [
    ("q", Some(150_000), 180),
    ("h", Some(500_000), 360),
    ("f", None, 720),
];

/// Frame height of a camera without simulcast.
const SINGLE_LAYER_HEIGHT: u16 = 360;

/// One encoding of the camera.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoLayer {
    /// Its rid (`None`: a camera without simulcast).
    pub rid: Option<&'static str>,
    /// Bits per second.
    pub bitrate: u64,
    /// Frame height (told in keyframes).
    pub height: u16,
}

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
    /// Simulcast layers sent (rids of [`SIMULCAST_LAYERS`], lowest first); empty: one layer.
    pub simulcast: Vec<&'static str>,
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
            simulcast: Vec::new(),
        }
    }
}

impl MediaPlan {
    /// Whether it sends video.
    pub fn video(&self) -> bool {
        self.video_bitrate > 0 && self.fps > 0
    }

    /// The camera's encodings, lowest first (one without rid unless simulcast).
    pub fn video_layers(&self) -> Vec<VideoLayer> {
        if self.simulcast.is_empty() {
            return vec![VideoLayer {
                rid: None,
                bitrate: self.video_bitrate,
                height: SINGLE_LAYER_HEIGHT,
            }];
        }
        SIMULCAST_LAYERS
            .iter()
            .filter(|(rid, _, _)| self.simulcast.contains(rid))
            .map(|&(rid, bitrate, height)| VideoLayer {
                rid: Some(rid),
                bitrate: bitrate.unwrap_or(self.video_bitrate),
                height,
            })
            .collect()
    }

    /// Packets per second this plan sends, on average (every layer).
    pub fn packets_per_second(&self) -> f64 {
        let audio = if self.audio { 50.0 } else { 0.0 };
        if !self.video() {
            return audio;
        }
        let frames_per_gop = (self.keyframe_interval.as_secs_f64() * f64::from(self.fps)).max(1.0);
        let packets = |bytes: f64| (bytes / self.max_payload as f64).ceil();
        let video: f64 = self
            .video_layers()
            .iter()
            .map(|layer| {
                let key = self.keyframe_bytes(layer.bitrate) as f64;
                let inter = self.interframe_bytes(layer.bitrate) as f64;
                let per_gop = packets(key) + packets(inter) * (frames_per_gop - 1.0);
                per_gop / frames_per_gop * f64::from(self.fps)
            })
            .sum();
        audio + video
    }

    fn average_frame_bytes(&self, bitrate: u64) -> usize {
        (bitrate / 8 / u64::from(self.fps.max(1))) as usize
    }

    fn keyframe_bytes(&self, bitrate: u64) -> usize {
        self.average_frame_bytes(bitrate) * self.keyframe_factor as usize
    }

    fn interframe_bytes(&self, bitrate: u64) -> usize {
        let frames = (self.keyframe_interval.as_secs_f64() * f64::from(self.fps))
            .round()
            .max(2.0);
        let avg = self.average_frame_bytes(bitrate) as f64;
        let key = avg * f64::from(self.keyframe_factor);
        (((avg * frames) - key) / (frames - 1.0)).max(avg / 4.0) as usize
    }
}

/// One packet to send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    /// Audio or video.
    pub kind: Kind,
    /// Video: index into the plan's [`MediaPlan::video_layers`] (0 for audio).
    pub layer: u8,
    /// RTP timestamp (48 kHz audio, 90 kHz video).
    pub rtp_time: u32,
    /// Last packet of a video frame.
    pub marker: bool,
    /// Place in the frame (video) — audio is always `Continuation`.
    pub part: FramePart,
    /// Payload bytes.
    pub size: usize,
}

/// The state of one encoding.
#[derive(Debug)]
struct LayerState {
    key_bytes: usize,
    inter_bytes: usize,
    height: u16,
    active: bool,
    force_keyframe: bool,
}

/// The running schedule of one publisher.
#[derive(Debug)]
pub struct MediaClock {
    plan: MediaPlan,
    layers: Vec<LayerState>,
    next_audio: Instant,
    next_video: Instant,
    audio_count: u32,
    frame_count: u32,
    frames_per_keyframe: u32,
    /// Packets skipped because the sender lagged by more than 200 ms.
    pub skipped: u64,
}

impl MediaClock {
    /// Starts the schedule at `start` (the first packets are due then).
    pub fn new(plan: MediaPlan, start: Instant) -> MediaClock {
        let frames_per_keyframe = (plan.keyframe_interval.as_secs_f64() * f64::from(plan.fps))
            .round()
            .max(1.0) as u32;
        let layers = plan
            .video_layers()
            .iter()
            .map(|l| LayerState {
                key_bytes: plan.keyframe_bytes(l.bitrate),
                inter_bytes: plan.interframe_bytes(l.bitrate),
                height: l.height,
                active: true,
                force_keyframe: false,
            })
            .collect();
        MediaClock {
            plan,
            layers,
            next_audio: start,
            next_video: start,
            audio_count: 0,
            frame_count: 0,
            frames_per_keyframe,
            skipped: 0,
        }
    }

    /// The next frame of `layer` (every layer: `None`) is a keyframe (a receiver asked).
    pub fn request_keyframe(&mut self, layer: Option<usize>) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            if layer.is_none_or(|want| want == i) {
                l.force_keyframe = true;
            }
        }
    }

    /// Sends only the layers in `active` (indexes into the plan's video layers); a layer
    /// switched on starts with a keyframe.
    pub fn set_active(&mut self, active: &[usize]) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            let on = active.contains(&i);
            if on && !l.active {
                l.force_keyframe = true;
            }
            l.active = on;
        }
    }

    /// Frame height of `layer`.
    pub fn height(&self, layer: u8) -> u16 {
        self.layers
            .get(usize::from(layer))
            .map_or(SINGLE_LAYER_HEIGHT, |l| l.height)
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
                    layer: 0,
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
        let periodic = self.frame_count.is_multiple_of(self.frames_per_keyframe);
        let rtp_time = self.frame_count.wrapping_mul(90_000 / self.plan.fps);
        let max_payload = self.plan.max_payload;
        for (index, layer) in self.layers.iter_mut().enumerate() {
            if !layer.active {
                continue;
            }
            let forced = std::mem::take(&mut layer.force_keyframe);
            let keyframe = periodic || forced;
            let bytes = if keyframe {
                layer.key_bytes
            } else {
                layer.inter_bytes
            };
            let packets = bytes.div_ceil(max_payload).max(1);
            let each = bytes.div_ceil(packets);
            for i in 0..packets {
                let part = match (i, keyframe) {
                    (0, true) => FramePart::KeyframeStart,
                    (0, false) => FramePart::InterframeStart,
                    _ => FramePart::Continuation,
                };
                out.push(Outgoing {
                    kind: Kind::Video,
                    layer: index as u8,
                    rtp_time,
                    marker: i + 1 == packets,
                    part,
                    size: each,
                });
            }
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
        assert!(
            (bitrate / 1_200_000.0 - 1.0).abs() < 0.02,
            "bitrate {bitrate}"
        );
        let keyframes = out
            .iter()
            .filter(|o| o.part == FramePart::KeyframeStart)
            .count();
        assert_eq!(keyframes, 5, "one keyframe every 2 s for 10 s");
        let frames = out.iter().filter(|o| o.marker).count();
        assert_eq!(frames, 300);
        assert!(out.iter().all(|o| o.size <= plan.max_payload));
        let pps = out.len() as f64 / 10.0;
        assert!(
            (pps - expected_pps).abs() / expected_pps < 0.02,
            "{pps} vs {expected_pps}"
        );
        assert!(
            out.iter().any(|o| o.size > 1000),
            "realistic video packet sizes"
        );
    }

    #[test]
    fn a_requested_keyframe_comes_with_the_next_frame() {
        let t0 = Instant::now();
        let mut clock = MediaClock::new(MediaPlan::default(), t0);
        let mut out = Vec::new();
        clock.due(t0, &mut out);
        out.clear();
        clock.request_keyframe(None);
        clock.due(t0 + Duration::from_millis(40), &mut out);
        assert!(out.iter().any(|o| o.part == FramePart::KeyframeStart));
    }

    fn simulcast() -> MediaPlan {
        MediaPlan {
            audio: false,
            simulcast: vec!["q", "h", "f"],
            ..MediaPlan::default()
        }
    }

    #[test]
    fn simulcast_layers_hold_their_own_bitrates_on_one_capture_clock() {
        let plan = simulcast();
        let expected_pps = plan.packets_per_second();
        let out = run(plan, 10);
        for (layer, want) in [(0u8, 150_000.0), (1, 500_000.0), (2, 1_200_000.0)] {
            let bytes: usize = out
                .iter()
                .filter(|o| o.layer == layer)
                .map(|o| o.size)
                .sum();
            let bitrate = bytes as f64 * 8.0 / 10.0;
            assert!(
                (bitrate / want - 1.0).abs() < 0.03,
                "layer {layer}: {bitrate}"
            );
            let keys = out
                .iter()
                .filter(|o| o.layer == layer && o.part == FramePart::KeyframeStart)
                .count();
            assert_eq!(keys, 5, "layer {layer}");
            let frames = out.iter().filter(|o| o.layer == layer && o.marker).count();
            assert_eq!(frames, 300, "layer {layer}");
        }
        // Every frame has the same timestamp on every layer.
        let f = |layer: u8| {
            out.iter()
                .filter(|o| o.layer == layer && o.marker)
                .map(|o| o.rtp_time)
                .collect::<Vec<_>>()
        };
        assert_eq!(f(0), f(2));
        let pps = out.len() as f64 / 10.0;
        assert!(
            (pps - expected_pps).abs() / expected_pps < 0.02,
            "{pps} vs {expected_pps}"
        );
    }

    #[test]
    fn a_keyframe_request_for_one_layer_leaves_the_others_alone() {
        let t0 = Instant::now();
        let mut clock = MediaClock::new(simulcast(), t0);
        let mut out = Vec::new();
        clock.due(t0, &mut out);
        out.clear();
        clock.request_keyframe(Some(1));
        clock.due(t0 + Duration::from_millis(40), &mut out);
        let keys: Vec<u8> = out
            .iter()
            .filter(|o| o.part == FramePart::KeyframeStart)
            .map(|o| o.layer)
            .collect();
        assert_eq!(keys, vec![1]);
        assert_eq!(clock.height(1), 360);
    }

    #[test]
    fn layers_switched_off_are_not_sent_and_restart_with_a_keyframe() {
        let t0 = Instant::now();
        let mut clock = MediaClock::new(simulcast(), t0);
        let mut out = Vec::new();
        clock.due(t0, &mut out);
        clock.set_active(&[0]);
        out.clear();
        clock.due(t0 + Duration::from_millis(200), &mut out);
        assert!(out.iter().all(|o| o.layer == 0));
        assert!(out.iter().all(|o| o.part != FramePart::KeyframeStart));
        clock.set_active(&[0, 2]);
        out.clear();
        clock.due(t0 + Duration::from_millis(240), &mut out);
        let keys: Vec<u8> = out
            .iter()
            .filter(|o| o.part == FramePart::KeyframeStart)
            .map(|o| o.layer)
            .collect();
        assert_eq!(keys, vec![2]);
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
