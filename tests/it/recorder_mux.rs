//! The recorder's media core against real media: ffmpeg encodes a few seconds of VP8, VP9,
//! H.264 and Opus, the frames are packetized into RTP with rtc-rtp's payloaders, shuffled,
//! one packet lost and one duplicated, and pushed through [`huizhen::recorder::Recording`] in
//! virtual time. The segments are concatenated, finalized and checked with `ffprobe` (codec,
//! duration within 10 %) and `ffmpeg` (every frame decodes without an error message).
//!
//! Needs `ffmpeg` and `ffprobe` on the PATH (`apt-get install -y ffmpeg`; tests/run-all.sh
//! does it); without them the tests fail and say so. Every external command is killed after
//! 60 s, and every temporary directory is removed on drop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use huizhen::recorder::{
    finalize, RecordCodec, RecorderConfig, Recording, RecordingEvent, Segment, TrackStats,
};
use huizhen::sfu::{ParticipantId, RecordedPacket, TrackId};
use rtc_rtp::codec::{
    h264::H264Payloader, opus::OpusPayloader, vp8::Vp8Payloader, vp9::Vp9Payloader,
};
use rtc_rtp::packetizer::Payloader;
use str0m::format::Codec;
use str0m::media::MediaKind;

/// Seconds of media each test encodes.
const SECONDS: u64 = 12;
/// The longest an external command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const MTU: usize = 1_100;

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("huizhen-recorder-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs a command with a deadline; returns (success, stdout, stderr).
fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): install it with `apt-get install -y ffmpeg`")
        });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    // Read the pipes on threads so a chatty command cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} {args:?} ran past {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.success(), out.join().unwrap(), err.join().unwrap())
}

fn ffmpeg(args: &[&str]) {
    let mut all = vec!["-hide_banner", "-nostdin", "-v", "error", "-y"];
    all.extend_from_slice(args);
    let (ok, _, err) = run("ffmpeg", &all);
    assert!(ok, "ffmpeg {args:?} failed: {err}");
}

/// Coded frames of one elementary stream, in order, with their RTP timestamp step.
struct Media {
    codec: Codec,
    frames: Vec<Vec<u8>>,
    /// RTP ticks per frame.
    step: u32,
    /// Wall-clock ms per frame.
    frame_ms: u64,
}

fn encode_video(dir: &TempDir, codec: Codec) -> Media {
    let size = "testsrc=size=320x240:rate=25".to_string();
    let secs = SECONDS.to_string();
    let common = [
        "-f", "lavfi", "-i", &size, "-t", &secs, "-pix_fmt", "yuv420p",
    ];
    let (file, frames) = match codec {
        Codec::Vp8 | Codec::Vp9 => {
            let file = dir.path("in.ivf");
            let enc = if codec == Codec::Vp8 {
                "libvpx"
            } else {
                "libvpx-vp9"
            };
            let mut args: Vec<&str> = common.to_vec();
            args.extend([
                "-c:v",
                enc,
                "-deadline",
                "realtime",
                "-cpu-used",
                "8",
                "-g",
                "50",
                "-auto-alt-ref",
                "0",
                "-lag-in-frames",
                "0",
                "-b:v",
                "300k",
                "-f",
                "ivf",
            ]);
            args.push(file.to_str().unwrap());
            ffmpeg(&args);
            let frames = ivf_frames(&fs::read(&file).unwrap());
            (file, frames)
        }
        Codec::H264 => {
            let file = dir.path("in.h264");
            let mut args: Vec<&str> = common.to_vec();
            args.extend([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
                "-profile:v",
                "baseline",
                "-g",
                "50",
                "-bf",
                "0",
                "-x264-params",
                "repeat-headers=1:aud=1",
                "-f",
                "h264",
            ]);
            args.push(file.to_str().unwrap());
            ffmpeg(&args);
            let frames = annexb_access_units(&fs::read(&file).unwrap());
            (file, frames)
        }
        other => panic!("no video encoder for {other:?}"),
    };
    assert!(
        frames.len() as u64 >= SECONDS * 25 - 2,
        "{} frames from {}",
        frames.len(),
        file.display()
    );
    Media {
        codec,
        frames,
        step: 3_600,
        frame_ms: 40,
    }
}

fn encode_opus(dir: &TempDir) -> Media {
    let file = dir.path("in.ogg");
    let secs = SECONDS.to_string();
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        &secs,
        "-c:a",
        "libopus",
        "-b:a",
        "32k",
        "-frame_duration",
        "20",
        "-f",
        "ogg",
        file.to_str().unwrap(),
    ]);
    let frames: Vec<Vec<u8>> = ogg_packets(&fs::read(&file).unwrap())
        .into_iter()
        .skip(2)
        .collect();
    assert!(frames.len() as u64 >= SECONDS * 50 - 2);
    Media {
        codec: Codec::Opus,
        frames,
        step: 960,
        frame_ms: 20,
    }
}

/// IVF: 32-byte file header, then per frame a 12-byte header (size, pts) and the frame.
fn ivf_frames(data: &[u8]) -> Vec<Vec<u8>> {
    assert_eq!(&data[..4], b"DKIF");
    let mut pos = usize::from(u16::from_le_bytes([data[6], data[7]]));
    let mut frames = Vec::new();
    while pos + 12 <= data.len() {
        let size = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        frames.push(data[pos + 12..pos + 12 + size].to_vec());
        pos += 12 + size;
    }
    frames
}

/// Splits an Annex B stream into access units at each access unit delimiter (x264 `aud=1`).
fn annexb_access_units(data: &[u8]) -> Vec<Vec<u8>> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 < data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            let code = if i > 0 && data[i - 1] == 0 { i - 1 } else { i };
            starts.push((code, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut units: Vec<Vec<u8>> = Vec::new();
    for (n, (code, nal)) in starts.iter().enumerate() {
        let end = starts.get(n + 1).map_or(data.len(), |(c, _)| *c);
        if data[*nal] & 0x1F == 9 {
            units.push(Vec::new());
        }
        if let Some(unit) = units.last_mut() {
            unit.extend_from_slice(&data[*code..end]);
        }
    }
    units
}

/// Ogg pages to packets (RFC 3533): lacing values of 255 continue a packet.
fn ogg_packets(data: &[u8]) -> Vec<Vec<u8>> {
    let mut packets = Vec::new();
    let mut current = Vec::new();
    let mut pos = 0;
    while pos + 27 <= data.len() {
        assert_eq!(&data[pos..pos + 4], b"OggS");
        let count = usize::from(data[pos + 26]);
        let table = &data[pos + 27..pos + 27 + count];
        let mut body = pos + 27 + count;
        for &lacing in table {
            current.extend_from_slice(&data[body..body + usize::from(lacing)]);
            body += usize::from(lacing);
            if lacing < 255 {
                packets.push(std::mem::take(&mut current));
            }
        }
        pos = body;
    }
    packets
}

/// How the network treats the packets of one track.
#[derive(Clone, Copy)]
struct Network {
    /// Reorder within windows of this many packets (1 = in order).
    shuffle: usize,
    /// Drop the packet at this fraction of the stream.
    lose_at: Option<f64>,
    /// Deliver the packet at this fraction twice.
    duplicate_at: Option<f64>,
    /// From this frame on the sender restarts with a new SSRC, sequence and RTP base.
    restart_at_frame: Option<usize>,
}

const IMPAIRED: Network = Network {
    shuffle: 4,
    lose_at: Some(0.3),
    duplicate_at: Some(0.6),
    restart_at_frame: None,
};

/// RTP packets of `media` as the SFU would hand them to the recorder, in delivery order, with
/// arrival times starting at `first_arrival`.
fn rtp_packets(
    media: &Media,
    participant: u64,
    track: u64,
    first_arrival: Instant,
    net: Network,
) -> Vec<RecordedPacket> {
    let mut payloader: Box<dyn Payloader> = match media.codec {
        Codec::Vp8 => {
            let mut p = Vp8Payloader::default();
            p.enable_picture_id = true;
            Box::new(p)
        }
        Codec::Vp9 => {
            let mut p = Vp9Payloader::default();
            p.initial_picture_id_fn = Some(Arc::new(|| 17));
            Box::new(p)
        }
        Codec::H264 => Box::new(H264Payloader::default()),
        _ => Box::new(OpusPayloader),
    };
    let kind = if media.codec == Codec::Opus {
        MediaKind::Audio
    } else {
        MediaKind::Video
    };
    let (mut ssrc, mut seq, mut rtp_base, mut restart_frame) =
        (0x1234_5678u32, 40_000u64, 4_000_000_000u32, 0usize);
    let mut sent = Vec::new();
    for (i, frame) in media.frames.iter().enumerate() {
        if net.restart_at_frame == Some(i) {
            (ssrc, seq, rtp_base, restart_frame) = (0x0BAD_CAFE, 7, 12_345, i);
        }
        let payloads = payloader
            .payload(MTU, &Bytes::copy_from_slice(frame))
            .unwrap();
        let n = payloads.len();
        let at = first_arrival + Duration::from_millis(i as u64 * media.frame_ms);
        for (k, payload) in payloads.into_iter().enumerate() {
            sent.push(RecordedPacket {
                participant: ParticipantId(participant),
                track: TrackId(track),
                kind,
                codec: media.codec,
                clock_rate: if kind == MediaKind::Audio {
                    48_000
                } else {
                    90_000
                },
                ssrc,
                seq,
                rtp_time: rtp_base
                    .wrapping_add(((i - restart_frame) as u32).wrapping_mul(media.step)),
                marker: kind == MediaKind::Video && k + 1 == n,
                arrival: at,
                payload: Arc::from(&payload[..]),
                starts_run: false,
            });
            seq += 1;
        }
    }
    // Deterministic reordering inside small windows (a tiny LCG, no randomness).
    let mut state = 0x2545_F491u64;
    for window in sent.chunks_mut(net.shuffle.max(1)) {
        for j in (1..window.len()).rev() {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            window.swap(j, (state >> 33) as usize % (j + 1));
        }
    }
    let total = sent.len() as f64;
    let mut delivered = Vec::with_capacity(sent.len() + 1);
    for (i, p) in sent.into_iter().enumerate() {
        if net.lose_at.is_some_and(|f| i == (total * f) as usize) {
            continue;
        }
        let twice = net.duplicate_at.is_some_and(|f| i == (total * f) as usize);
        delivered.push(p.clone());
        if twice {
            delivered.push(p);
        }
    }
    // Delivery times never go back, whatever the packets' own send times were.
    let mut clock = first_arrival;
    for p in &mut delivered {
        clock = clock.max(p.arrival);
        p.arrival = clock;
    }
    delivered
}

/// One track file's output.
#[derive(Default)]
struct Track {
    codec: Option<RecordCodec>,
    start_offset_ms: u64,
    segments: Vec<Segment>,
    stats: Option<TrackStats>,
}

/// Pushes all packets (merged by arrival) through a recording in virtual time.
fn record(streams: Vec<Vec<RecordedPacket>>, start: Instant, config: RecorderConfig) -> Vec<Track> {
    let mut packets: Vec<RecordedPacket> = streams.into_iter().flatten().collect();
    packets.sort_by_key(|p| p.arrival); // stable: keeps each track's delivery order
    let mut rec = Recording::new(start, config).unwrap();
    let mut tracks: Vec<Track> = Vec::new();
    let mut index = std::collections::HashMap::new();
    let mut handle = |event: RecordingEvent, tracks: &mut Vec<Track>| match event {
        RecordingEvent::TrackStarted {
            stream,
            codec,
            start_offset_ms,
        } => {
            index.insert(stream, tracks.len());
            tracks.push(Track {
                codec: Some(codec),
                start_offset_ms,
                ..Default::default()
            });
        }
        RecordingEvent::Segment { stream, segment } => {
            tracks[index[&stream]].segments.push(segment)
        }
        RecordingEvent::TrackFinished { stream, stats } => {
            tracks[index[&stream]].stats = Some(stats)
        }
    };
    let mut now = start;
    for p in &packets {
        // Wake-ups due before this packet, as the driver's timer would.
        while let Some(wake) = rec.poll_timeout().filter(|w| *w <= p.arrival) {
            now = now.max(wake);
            while let Some(e) = rec.poll(now) {
                handle(e, &mut tracks);
            }
            if rec.poll_timeout() == Some(wake) {
                break;
            }
        }
        now = now.max(p.arrival);
        rec.push(now, p);
        while let Some(e) = rec.poll(now) {
            handle(e, &mut tracks);
        }
    }
    let end = now + Duration::from_secs(1);
    rec.finish(end);
    while let Some(e) = rec.poll(end) {
        handle(e, &mut tracks);
    }
    tracks
}

/// What ffprobe says about a file.
struct Probe {
    codec_name: String,
    duration: f64,
    start_time: f64,
    frames: u64,
    width: Option<u64>,
}

fn probe(file: &Path) -> Probe {
    let (ok, out, err) = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-count_frames",
            "-show_streams",
            "-show_format",
            "-of",
            "json",
            file.to_str().unwrap(),
        ],
    );
    assert!(
        ok && err.trim().is_empty(),
        "ffprobe on {}: {err}",
        file.display()
    );
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let stream = &json["streams"][0];
    let num = |v: &serde_json::Value| v.as_str().and_then(|s| s.parse::<f64>().ok());
    Probe {
        codec_name: stream["codec_name"].as_str().unwrap_or_default().to_owned(),
        duration: num(&json["format"]["duration"]).unwrap_or(0.0),
        start_time: num(&stream["start_time"]).unwrap_or(0.0),
        frames: num(&stream["nb_read_frames"]).unwrap_or(0.0) as u64,
        width: stream["width"].as_u64(),
    }
}

/// Decodes every frame; returns what ffmpeg printed at level "error" (must be nothing).
fn decode_errors(file: &Path) -> String {
    let (ok, _, err) = run(
        "ffmpeg",
        &[
            "-hide_banner",
            "-nostdin",
            "-v",
            "error",
            "-i",
            file.to_str().unwrap(),
            // Keep the file's millisecond time base (ffmpeg's default, 1/<guessed frame rate>,
            // makes close frames of variable-rate video collide in the null muxer).
            "-enc_time_base",
            "-1",
            "-f",
            "null",
            "-",
        ],
    );
    assert!(ok, "ffmpeg could not decode {}: {err}", file.display());
    err
}

/// Concatenates and finalizes a track, checks it with ffprobe and ffmpeg, and returns the probe.
fn check_track(
    dir: &TempDir,
    name: &str,
    track: &Track,
    codec_name: &str,
    expected_secs: f64,
) -> Probe {
    let codec = track.codec.unwrap();
    assert!(
        track.segments.len() >= 2,
        "{name}: {} segments",
        track.segments.len()
    );
    for (i, s) in track.segments.iter().enumerate() {
        assert_eq!(s.index as usize, i, "{name}: segments in order");
    }
    let bytes: Vec<&[u8]> = track.segments.iter().map(|s| s.bytes.as_slice()).collect();

    // The raw concatenation is itself a playable streaming file (what a crash leaves).
    let raw = dir.path(&format!("{name}-stream.{}", codec.file_extension()));
    fs::write(&raw, bytes.concat()).unwrap();
    let errors = decode_errors(&raw);
    assert!(errors.trim().is_empty(), "{name} stream: {errors}");

    let file = dir.path(&format!("{name}.{}", codec.file_extension()));
    fs::write(&file, finalize(&bytes).unwrap()).unwrap();
    let p = probe(&file);
    assert_eq!(p.codec_name, codec_name, "{name}");
    let span = p.duration - p.start_time;
    assert!(
        (span - expected_secs).abs() <= expected_secs * 0.1,
        "{name}: {span:.3} s (duration {:.3}, start {:.3}) for {expected_secs} s of input",
        p.duration,
        p.start_time
    );
    let errors = decode_errors(&file);
    assert!(errors.trim().is_empty(), "{name}: ffmpeg reported {errors}");
    let stats = track.stats.unwrap();
    assert_eq!(
        p.frames, stats.frames,
        "{name}: every written frame decodes ({stats:?})"
    );
    eprintln!(
        "{name}: {} segments, {} frames decoded, start {:.3} s, duration {:.3} s, {stats:?}",
        track.segments.len(),
        p.frames,
        p.start_time,
        p.duration
    );
    p
}

fn config() -> RecorderConfig {
    RecorderConfig {
        segment_ms: 4_000,
        keyframe_grace_ms: 1_000,
        ..RecorderConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

fn video_through_a_lossy_network(codec: Codec, codec_name: &str) {
    let dir = TempDir::new(codec_name);
    let media = encode_video(&dir, codec);
    let start = Instant::now();
    let packets = rtp_packets(&media, 1, 1, start, IMPAIRED);
    let tracks = record(vec![packets], start, config());
    assert_eq!(tracks.len(), 1);
    let track = &tracks[0];
    let stats = track.stats.unwrap();
    assert_eq!(stats.lost, 1, "{stats:?}");
    assert_eq!(stats.duplicates + stats.late, 1, "{stats:?}");
    // The loss costs the frames up to the next keyframe (2 s GOP), no more.
    assert!(
        stats.frames_dropped >= 1 && stats.frames_dropped <= 51,
        "{stats:?}"
    );
    // Every frame is written or counted as dropped, except one whose packets were all lost
    // (a one-packet frame): nothing of it ever reached the recorder.
    let accounted = stats.frames + stats.frames_dropped;
    let total = media.frames.len() as u64;
    assert!(
        accounted == total || accounted + 1 == total,
        "{accounted} of {total}: {stats:?}"
    );
    assert!(
        track.segments.iter().all(|s| s.starts_with_keyframe),
        "segments cut at keyframes"
    );
    let p = check_track(&dir, codec_name, track, codec_name, SECONDS as f64);
    assert_eq!(p.width, Some(320));
}

#[test]
fn vp8_is_recorded_into_webm() {
    video_through_a_lossy_network(Codec::Vp8, "vp8");
}

#[test]
fn vp9_is_recorded_into_webm() {
    video_through_a_lossy_network(Codec::Vp9, "vp9");
}

#[test]
fn h264_is_recorded_into_matroska() {
    video_through_a_lossy_network(Codec::H264, "h264");
}

#[test]
fn opus_is_recorded_into_webm() {
    let dir = TempDir::new("opus");
    let media = encode_opus(&dir);
    let start = Instant::now();
    let tracks = record(
        vec![rtp_packets(&media, 1, 1, start, IMPAIRED)],
        start,
        config(),
    );
    let track = &tracks[0];
    let stats = track.stats.unwrap();
    assert_eq!((stats.lost, stats.frames_dropped), (1, 0), "{stats:?}");
    assert_eq!(stats.frames, media.frames.len() as u64 - 1);
    check_track(&dir, "opus", track, "opus", SECONDS as f64);
}

#[test]
fn an_encoder_restart_continues_the_same_file() {
    let dir = TempDir::new("restart");
    let media = encode_video(&dir, Codec::Vp8);
    let start = Instant::now();
    // Frame 150 is a keyframe (GOP 50): the restarted encoder begins with one, as they do.
    let net = Network {
        restart_at_frame: Some(150),
        ..IMPAIRED
    };
    let tracks = record(vec![rtp_packets(&media, 1, 1, start, net)], start, config());
    assert_eq!(tracks.len(), 1, "same track, same file");
    let stats = tracks[0].stats.unwrap();
    assert_eq!(stats.ssrc_changes, 1, "{stats:?}");
    check_track(&dir, "restart", &tracks[0], "vp8", SECONDS as f64);
}

#[test]
fn publishers_starting_apart_line_up() {
    let dir = TempDir::new("sync");
    let audio = encode_opus(&dir);
    let video = encode_video(&dir, Codec::Vp8);
    let start = Instant::now();
    let clean = Network {
        shuffle: 1,
        lose_at: None,
        duplicate_at: None,
        restart_at_frame: None,
    };
    let a = rtp_packets(&audio, 1, 1, start, clean);
    let b = rtp_packets(&video, 2, 2, start + Duration::from_secs(2), clean);
    let tracks = record(vec![a, b], start, config());
    assert_eq!(tracks.len(), 2);
    let offsets: Vec<u64> = tracks.iter().map(|t| t.start_offset_ms).collect();
    assert_eq!(offsets, [0, 2_000]);
    assert_eq!(tracks[1].segments[0].start_ms, 2_000);
    let pa = check_track(&dir, "sync-audio", &tracks[0], "opus", SECONDS as f64);
    let pb = check_track(&dir, "sync-video", &tracks[1], "vp8", SECONDS as f64);
    assert!(
        (pb.start_time - pa.start_time - 2.0).abs() < 0.05,
        "{} vs {}",
        pa.start_time,
        pb.start_time
    );
}

#[test]
fn the_segments_stored_before_a_crash_still_export() {
    let dir = TempDir::new("crash");
    let media = encode_video(&dir, Codec::Vp8);
    let start = Instant::now();
    let tracks = record(
        vec![rtp_packets(&media, 1, 1, start, IMPAIRED)],
        start,
        config(),
    );
    let mut track = Track {
        codec: tracks[0].codec,
        ..Default::default()
    };
    // Only the first two segments made it to the store.
    track.segments = tracks[0].segments[..2].to_vec();
    let stored: u64 = track.segments.iter().map(|s| s.frames as u64).sum();
    track.stats = Some(TrackStats {
        frames: stored,
        ..tracks[0].stats.unwrap()
    });
    let expected = track.segments.iter().map(|s| s.duration_ms).sum::<u64>() as f64 / 1_000.0;
    check_track(&dir, "crash", &track, "vp8", expected);
}
