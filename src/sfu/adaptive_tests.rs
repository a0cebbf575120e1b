//! Adaptive media in virtual time: simulcast publishers, subscribers behind limited downlinks
//! (the simulator's [`Link`]), and what each subscriber ends up receiving. Real str0m peers
//! on both sides, so bandwidth estimation runs on real transport-wide feedback.

use std::time::{Duration, Instant};

use huizhen_signaling::protocol::{ServerMessage, TrackKind, TrackPreference, TrackSource};

use super::sim::{Link, Received, SimNet};
use super::{SignalInput, MAX_PREFERENCES};

/// A video frame as a subscriber received its first packet.
#[derive(Debug, Clone, Copy)]
struct Frame {
    layer: u8,
    key: bool,
    picture_id: u16,
    rtp_time: u32,
    at: Instant,
}

/// Frames `rx` received of `tx`'s camera, in arrival order (from packets that start a frame).
fn frames(net: &SimNet, rx: usize, tx: usize) -> Vec<Frame> {
    let mids = net.mids_from(rx, tx, TrackKind::Video);
    net.clients[rx]
        .received
        .iter()
        .filter(|r| mids.contains(&r.mid) && r.payload.len() > 10 && r.payload[0] & 0x10 != 0)
        .map(|r| {
            let body = &r.payload[6..];
            let key = body[0] & 1 == 0;
            Frame {
                layer: body[if key { 10 } else { 3 }],
                key,
                picture_id: (u16::from(r.payload[2] & 0x7f) << 8) | u16::from(r.payload[3]),
                rtp_time: r.rtp_time,
                at: r.at,
            }
        })
        .collect()
}

fn since(frames: &[Frame], t: Instant) -> Vec<Frame> {
    frames.iter().copied().filter(|f| f.at >= t).collect()
}

/// Packets of `kind` `rx` received of `tx` since `t`.
fn packets_since(net: &SimNet, rx: usize, tx: usize, kind: TrackKind, t: Instant) -> usize {
    let mids = net.mids_from(rx, tx, kind);
    net.clients[rx]
        .received
        .iter()
        .filter(|r| mids.contains(&r.mid) && r.at >= t)
        .count()
}

/// Audio packets `rx` received of `tx` since `t`.
fn audio_since(net: &SimNet, rx: usize, tx: usize, t: Instant) -> usize {
    packets_since(net, rx, tx, TrackKind::Audio, t)
}

fn paused_notices(net: &SimNet, rx: usize) -> (usize, usize) {
    net.clients[rx]
        .signals
        .iter()
        .fold((0, 0), |(p, r), m| match m {
            ServerMessage::TrackPaused { .. } => (p + 1, r),
            ServerMessage::TrackResumed { .. } => (p, r + 1),
            _ => (p, r),
        })
}

/// A room with one simulcast publisher and two subscribers; the second one's downlink is
/// limited to `rate` bit/s from the start.
/// Two simulcast publishers and a subscriber that publishes nothing (the one whose link is
/// then impaired), after `warm_up` of unimpaired media.
fn two_cameras_and_a_weak_one(seed: u64, warm_up: Duration) -> (SimNet, usize, usize, usize) {
    let mut net = SimNet::new(seed);
    let a = net.add_simulcast_client("room");
    let b = net.add_simulcast_client("room");
    let weak = net.add_client("room", &[]);
    net.run_media(warm_up);
    (net, a, b, weak)
}

fn room(seed: u64, rate: Option<u64>) -> (SimNet, usize, usize, usize) {
    let mut net = SimNet::new(seed);
    let a = net.add_simulcast_client("room");
    let good = net.add_client("room", &[]);
    let weak = net.add_client("room", &[]);
    net.clients[weak].downlink = rate.map(Link::rate);
    (net, a, good, weak)
}

#[test]
fn a_weak_downlink_gets_the_low_layer_while_a_good_one_gets_the_top_layer() {
    let (mut net, a, good, weak) = room(21, Some(400_000));
    net.run_media(Duration::from_secs(20));
    let t = net.now - Duration::from_secs(5);
    let good_frames = since(&frames(&net, good, a), t);
    let weak_frames = since(&frames(&net, weak, a), t);
    assert!(
        good_frames.len() >= 95,
        "good: {} frames in 5 s",
        good_frames.len()
    );
    assert!(
        good_frames.iter().all(|f| f.layer == 2),
        "good: {good_frames:?}"
    );
    // 20 fps of the quarter layer through 400 kbit/s; the top layer would not fit.
    assert!(
        weak_frames.len() >= 95,
        "weak: {} frames in 5 s",
        weak_frames.len()
    );
    assert!(
        weak_frames.iter().all(|f| f.layer < 2),
        "weak: {weak_frames:?}"
    );
    // Audio (50 packets/s) intact beside it.
    assert!(audio_since(&net, weak, a, t) >= 245);
    assert_eq!(paused_notices(&net, weak), (0, 0));
    assert!(net.clients[weak].downlink.as_ref().unwrap().queue_drops < 200);
}

#[test]
fn below_the_floor_video_is_paused_with_a_notice_and_audio_flows() {
    let (mut net, a, good, weak) = room(22, Some(120_000));
    net.run_media(Duration::from_secs(15));
    let t = net.now - Duration::from_secs(5);
    assert!(
        since(&frames(&net, weak, a), t).is_empty(),
        "video still sent"
    );
    assert!(
        audio_since(&net, weak, a, t) >= 245,
        "audio {}",
        audio_since(&net, weak, a, t)
    );
    assert_eq!(paused_notices(&net, weak), (1, 0));
    assert_eq!(net.sfu.metrics().paused_tracks.get(), 1);
    assert!(since(&frames(&net, good, a), t).len() >= 95);
    // The link recovers: video resumes, with a notice, and climbs to the top layer.
    net.clients[weak].downlink = None;
    net.run_media(Duration::from_secs(20));
    let notices = paused_notices(&net, weak);
    assert!(notices.0 == notices.1 && notices.0 >= 1, "{notices:?}");
    let last = since(&frames(&net, weak, a), net.now - Duration::from_secs(2));
    assert!(
        last.len() >= 35 && last.iter().all(|f| f.layer == 2),
        "{last:?}"
    );
}

#[test]
fn layer_switches_are_seamless_for_the_decoder() {
    let (mut net, a, _good, weak) = room(23, None);
    net.run_media(Duration::from_secs(8));
    let mut link = Link::rate(500_000);
    link.queue = Duration::from_secs(1);
    net.clients[weak].downlink = Some(link);
    net.run_media(Duration::from_secs(10));
    net.clients[weak].downlink = None;
    net.run_media(Duration::from_secs(15));
    // In the order the subscriber's decoder sees them (a repaired packet arrives late).
    let mut got = frames(&net, weak, a);
    got.sort_by_key(|f| f.rtp_time);
    got.dedup_by_key(|f| f.rtp_time);
    let layers: Vec<u8> = got.iter().map(|f| f.layer).collect();
    let switches: Vec<usize> = (1..got.len())
        .filter(|i| got[*i].layer != got[*i - 1].layer)
        .collect();
    assert!(switches.len() >= 2, "down and up again: {layers:?}");
    let mut clean = 0;
    for i in switches {
        let (before, after) = (got[i - 1], got[i]);
        if after.picture_id != (before.picture_id + 1) & 0x7fff {
            // The link's queue dropped the keyframe that started the switch (its repair came
            // too late): a loss, not a seam.
            continue;
        }
        clean += 1;
        assert!(
            after.key,
            "switch {i} not on a keyframe: {:?}",
            &got[i.saturating_sub(3)..(i + 3).min(got.len())]
        );
        assert!(
            after.rtp_time.wrapping_sub(before.rtp_time) < 90_000,
            "timestamp jump at {i}"
        );
        assert!(
            (after.rtp_time.wrapping_sub(before.rtp_time) as i32) > 0,
            "timestamp back at {i}"
        );
    }
    assert!(
        clean >= 1,
        "no switch observed without loss around it: {layers:?}"
    );
    // Sequence numbers of the forwarded video never leap forward (losses aside: none here
    // after the queue settles), and never go back to a number already used for another
    // packet. A packet behind the newest is a repair (a NACK's, or str0m's padding, which
    // resends from its cache): the same number with the same timestamp.
    let mids = net.mids_from(weak, a, TrackKind::Video);
    let mut seen: std::collections::HashMap<u16, u32> = std::collections::HashMap::new();
    let mut newest: Option<u16> = None;
    let (mut leaps, mut reused) = (0, 0);
    for r in net.clients[weak]
        .received
        .iter()
        .filter(|r| mids.contains(&r.mid))
    {
        if seen
            .insert(r.seq, r.rtp_time)
            .is_some_and(|t| t != r.rtp_time)
        {
            reused += 1;
        }
        let ahead = newest.map_or(1, |n| r.seq.wrapping_sub(n));
        if (1..0x8000).contains(&ahead) {
            if ahead > 50 && newest.is_some() {
                leaps += 1;
            }
            newest = Some(r.seq);
        }
    }
    assert_eq!(
        (leaps, reused),
        (0, 0),
        "sequence leaps forward, numbers reused"
    );
    assert!(net.sfu.metrics().layer_switches.get() >= 2);
}

#[test]
fn a_weak_subscriber_does_not_make_the_publisher_send_top_layer_keyframes() {
    let (mut net, a, _good, weak) = room(24, None);
    net.run_media(Duration::from_secs(6));
    let before = net.clients[a]
        .keyframe_requests_by_rid
        .get(&Some("f".into()))
        .copied()
        .unwrap_or(0);
    // A lossy, narrow downlink: the weak subscriber asks for keyframes again and again.
    let mut link = Link::rate(400_000);
    link.loss = 0.1;
    net.clients[weak].downlink = Some(link);
    net.run_media(Duration::from_secs(20));
    let after = net.clients[a]
        .keyframe_requests_by_rid
        .get(&Some("f".into()))
        .copied()
        .unwrap_or(0);
    assert!(
        after - before <= 1,
        "{} keyframe requests reached the top layer",
        after - before
    );
    let t = net.now - Duration::from_secs(5);
    let got = since(&frames(&net, weak, a), t);
    // It keeps decoding, or was told its video is paused (10 % of the packets are lost on top
    // of the narrow link, and the loss-based estimate can fall below the floor; a paused
    // video on such a link does not always come back yet: see the README's adaptive media
    // figures, 300 kbit/s row).
    let (paused, resumed) = paused_notices(&net, weak);
    assert!(
        !got.is_empty() || paused > resumed,
        "neither video nor a pause notice: notices {:?}, link {:?}",
        (paused, resumed),
        net.clients[weak].downlink
    );
}

/// The track id `rx` received `tx`'s camera under.
fn video_track_id(net: &SimNet, rx: usize, tx: usize) -> String {
    let pid = net.clients[tx].id.to_string();
    net.clients[rx]
        .signals
        .iter()
        .find_map(|m| match m {
            ServerMessage::TrackAdded {
                participant_id,
                track_id,
                kind: TrackKind::Video,
                ..
            } if *participant_id == pid => Some(track_id.clone()),
            _ => None,
        })
        .expect("track_added for the camera")
}

fn prefer(net: &mut SimNet, rx: usize, pref: TrackPreference) {
    let id = net.clients[rx].id;
    net.sfu
        .handle_signal(net.now, id, SignalInput::Preferences(vec![pref]))
        .expect("preferences accepted");
    net.route_outputs();
}

#[test]
fn preferences_cap_the_layer_by_tile_height_and_hide_a_video() {
    let (mut net, a, good, _weak) = room(25, None);
    net.run_media(Duration::from_secs(8));
    let track = video_track_id(&net, good, a);
    let pref = |visible, max_height| TrackPreference {
        track_id: track.clone(),
        visible,
        max_height,
        max_fps: None,
        pinned: false,
    };
    // A 120-line thumbnail: the quarter layer is enough.
    prefer(&mut net, good, pref(true, Some(120)));
    net.run_media(Duration::from_secs(3));
    let t = net.now - Duration::from_secs(1);
    let got = since(&frames(&net, good, a), t);
    assert!(
        got.len() >= 15 && got.iter().all(|f| f.layer == 0),
        "{got:?}"
    );
    // Hidden: nothing, and no pause notice (the subscriber chose it).
    prefer(&mut net, good, pref(false, None));
    net.run_media(Duration::from_secs(2));
    assert!(since(&frames(&net, good, a), net.now - Duration::from_secs(1)).is_empty());
    assert_eq!(paused_notices(&net, good), (0, 0));
    // Shown large again: back to the top layer (the estimate, idle at a thumbnail's rate,
    // is probed up again first).
    prefer(&mut net, good, pref(true, None));
    net.run_media(Duration::from_secs(8));
    let got = since(&frames(&net, good, a), net.now - Duration::from_secs(1));
    assert!(
        got.len() >= 15 && got.iter().all(|f| f.layer == 2),
        "{got:?}"
    );
}

#[test]
fn an_estimate_is_kept_while_the_subscriber_takes_far_less_than_it() {
    // A thumbnail takes a tenth of a clean link's estimate. str0m's periodic probe goes at
    // twice the desired rate, and a probe below the estimate that the link carries whole set
    // the estimate down to the probe's rate: when the tile grew again, the top layer waited
    // for the estimate to climb back (Chromium: ~10 s).
    let (mut net, a, good, _weak) = room(41, None);
    net.run_media(Duration::from_secs(10));
    let id = net.clients[good].id;
    let (before, _) = net.sfu.allocation_of(id).unwrap();
    let before = before.expect("an estimate");
    let track = video_track_id(&net, good, a);
    let pref = |max_height| TrackPreference {
        track_id: track.clone(),
        visible: true,
        max_height,
        max_fps: None,
        pinned: false,
    };
    prefer(&mut net, good, pref(Some(120)));
    let mut lowest = before;
    for _ in 0..20 {
        net.run_media(Duration::from_secs(1));
        lowest = lowest.min(net.sfu.allocation_of(id).unwrap().0.unwrap_or(0));
    }
    assert!(
        lowest as f64 >= before as f64 * 0.8,
        "estimate {before} before the thumbnail, {lowest} at the lowest in it"
    );
    prefer(&mut net, good, pref(None));
    let t = net.now;
    net.run_media(Duration::from_secs(2));
    let got = since(&frames(&net, good, a), t);
    assert!(
        got.iter().filter(|f| f.layer == 2).count() >= 15,
        "the top layer within a keyframe's wait: {got:?}"
    );
}

#[test]
fn oversized_preferences_and_sources_are_refused_with_a_clear_error() {
    let (mut net, _a, good, _weak) = room(26, None);
    let id = net.clients[good].id;
    let many = (0..MAX_PREFERENCES + 1)
        .map(|i| TrackPreference {
            track_id: format!("t{i}"),
            visible: true,
            max_height: None,
            max_fps: None,
            pinned: false,
        })
        .collect();
    let err = net
        .sfu
        .handle_signal(net.now, id, SignalInput::Preferences(many))
        .unwrap_err();
    assert_eq!(
        err.code(),
        huizhen_signaling::protocol::ErrorCode::InvalidMessage
    );
    let sources = (0..40)
        .map(|i| (format!("m{i}"), TrackSource::Camera))
        .collect();
    let err = net
        .sfu
        .handle_signal(
            net.now,
            id,
            SignalInput::Offer {
                sdp: "v=0".into(),
                sources,
            },
        )
        .unwrap_err();
    assert_eq!(
        err.code(),
        huizhen_signaling::protocol::ErrorCode::InvalidMessage
    );
    // Unknown and malformed track ids are ignored; the room goes on.
    let junk = vec![TrackPreference {
        track_id: "zz\u{200b}".into(),
        visible: false,
        max_height: Some(1),
        max_fps: None,
        pinned: true,
    }];
    net.sfu
        .handle_signal(net.now, id, SignalInput::Preferences(junk))
        .unwrap();
    net.run_media(Duration::from_secs(3));
    assert!(!since(&frames(&net, good, 0), net.now - Duration::from_secs(1)).is_empty());
}

#[test]
fn a_publisher_sending_quarter_and_full_layers_only_serves_both_ends() {
    // A 640x480 browser camera: rids q and f (layers 0 and 2), no h.
    let mut net = SimNet::new(27);
    let a = net.add_simulcast_client_with("room", &["q", "f"]);
    let good = net.add_client("room", &[]);
    let weak = net.add_client("room", &[]);
    net.clients[weak].downlink = Some(Link::rate(400_000));
    net.run_media(Duration::from_secs(15));
    let t = net.now - Duration::from_secs(4);
    let good_frames = since(&frames(&net, good, a), t);
    let weak_frames = since(&frames(&net, weak, a), t);
    assert!(
        good_frames.len() >= 75 && good_frames.iter().all(|f| f.layer == 2),
        "good: {good_frames:?}"
    );
    assert!(
        weak_frames.len() >= 75 && weak_frames.iter().all(|f| f.layer == 0),
        "weak: {weak_frames:?}"
    );
    // The good subscriber's switch to f needed a keyframe of f, asked of f's own encoder.
    assert!(
        net.clients[a]
            .keyframe_requests_by_rid
            .get(&Some("f".into()))
            .copied()
            .unwrap_or(0)
            >= 1,
        "{:?}",
        net.clients[a].keyframe_requests_by_rid
    );
    // A 240-line tile asks for more than q: the next layer sent is f.
    let track = video_track_id(&net, good, a);
    prefer(
        &mut net,
        good,
        TrackPreference {
            track_id: track,
            visible: true,
            max_height: Some(240),
            max_fps: None,
            pinned: false,
        },
    );
    net.run_media(Duration::from_secs(3));
    let got = since(&frames(&net, good, a), net.now - Duration::from_secs(1));
    assert!(
        !got.is_empty() && got.iter().all(|f| f.layer == 2),
        "{got:?}"
    );
}

#[test]
fn the_active_speaker_is_announced_and_a_change_of_speaker_takes_no_layer_away() {
    let mut net = SimNet::new(28);
    let a = net.add_simulcast_client("room");
    let b = net.add_simulcast_client("room");
    // b is the speaker before the weak subscriber comes, so its camera climbs first there.
    net.clients[b].speaking = true;
    net.run_media(Duration::from_secs(3));
    let weak = net.add_client("room", &[]);
    // Room for one camera's top layer beside the other's half layer, not for two top layers
    // (~1.35 Mbit/s each on the wire).
    net.clients[weak].downlink = Some(Link::rate(2_500_000));
    net.run_media(Duration::from_secs(15));
    let speaker = |net: &SimNet, rx: usize| {
        net.clients[rx].signals.iter().rev().find_map(|m| match m {
            ServerMessage::ActiveSpeaker { participant_id } => Some(participant_id.clone()),
            _ => None,
        })
    };
    let b_id = net.clients[b].id.to_string();
    assert_eq!(speaker(&net, weak), Some(Some(b_id.clone())));
    assert_eq!(speaker(&net, a), Some(Some(b_id)));
    let t = net.now - Duration::from_secs(2);
    let top = |frames: Vec<Frame>| frames.iter().map(|f| f.layer).max().unwrap_or(0);
    let before = (
        top(since(&frames(&net, weak, a), t)),
        top(since(&frames(&net, weak, b), t)),
    );
    assert_eq!(before.1, 2, "the speaker's camera on top: {before:?}");
    assert!(before.0 < 2, "{before:?}");
    // The other one speaks now: after the hold the spotlight moves, but the layers stay where
    // they are (a swap would cost a keyframe from each publisher for nothing the subscriber
    // asked for; its page pins the tile it enlarges, and a pinned video does climb).
    let switches = net.sfu.metrics().layer_switches.get();
    net.clients[b].speaking = false;
    net.clients[a].speaking = true;
    net.run_media(Duration::from_secs(15));
    assert_eq!(
        speaker(&net, weak),
        Some(Some(net.clients[a].id.to_string()))
    );
    let t = net.now - Duration::from_secs(2);
    let after = (
        top(since(&frames(&net, weak, a), t)),
        top(since(&frames(&net, weak, b), t)),
    );
    assert_eq!(
        after.0 == 2,
        before.0 == 2,
        "the top layer stays: {before:?} -> {after:?}"
    );
    assert_eq!(
        after.1 == 2,
        before.1 == 2,
        "the top layer stays: {before:?} -> {after:?}"
    );
    assert!(
        net.sfu.metrics().layer_switches.get() - switches <= 2,
        "no swap"
    );
}

#[test]
fn the_room_view_shows_estimates_layers_and_what_each_subscriber_gets() {
    let (mut net, a, good, weak) = room(29, Some(120_000));
    net.run_media(Duration::from_secs(12));
    let view = net.sfu.room_media("room").expect("the room exists");
    assert!(net.sfu.room_media("no-such-room").is_none());
    assert_eq!(view.participants.len(), 3);
    let find = |i: usize| {
        let id = net.clients[i].id.to_string();
        view.participants
            .iter()
            .find(|p| p.id == id)
            .expect("listed")
            .clone()
    };
    let publisher = find(a);
    let camera = publisher
        .published
        .iter()
        .find(|t| t.kind == "video")
        .expect("camera");
    assert_eq!(camera.layers.len(), 3);
    assert_eq!(camera.layers[2].rid.as_deref(), Some("f"));
    assert!(camera.layers.iter().all(|l| l.active && l.bitrate_bps > 0));
    assert_eq!(camera.layers[2].height, Some(480));
    let weak = find(weak);
    assert!(
        weak.estimate_bps.is_some_and(|e| e < 500_000),
        "{:?}",
        weak.estimate_bps
    );
    let video = weak
        .received
        .iter()
        .find(|t| t.kind == "video")
        .expect("video");
    assert_eq!(video.state, "paused");
    assert_eq!(video.layer, None);
    let good = find(good);
    let video = good
        .received
        .iter()
        .find(|t| t.kind == "video")
        .expect("video");
    assert_eq!((video.state, video.layer), ("flowing", Some(2)));
    // Serializes to JSON with no display names in it.
    let json = serde_json::to_string(&view).unwrap();
    assert!(!json.contains("client-"), "{json}");
}

/// The rid lists `client` was asked to publish (`publish_layers`), in order.
fn publish_layers(net: &SimNet, client: usize) -> Vec<Vec<String>> {
    net.clients[client]
        .signals
        .iter()
        .filter_map(|m| match m {
            ServerMessage::PublishLayers { rids, .. } => Some(rids.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn layers_nobody_would_receive_are_switched_off_at_the_publisher_and_back_on_when_wanted() {
    let (mut net, a, good, weak) = room(27, None);
    net.run_media(Duration::from_secs(8));
    // Everyone shows the camera at full size: every layer is wanted, nothing is asked.
    assert!(publish_layers(&net, a).is_empty());
    let pref = |net: &SimNet, rx: usize, visible: bool, max_height: Option<u32>| TrackPreference {
        track_id: video_track_id(net, rx, a),
        visible,
        max_height,
        max_fps: None,
        pinned: false,
    };
    let sent = |net: &SimNet| {
        net.clients[a]
            .encoder
            .as_ref()
            .map(|e| e.frames_sent)
            .unwrap()
    };

    // Both show it as a 120-line thumbnail: after the delay only the quarter layer is sent.
    for rx in [good, weak] {
        let p = pref(&net, rx, true, Some(120));
        prefer(&mut net, rx, p);
    }
    net.run_media(Duration::from_secs(5));
    assert_eq!(publish_layers(&net, a), vec![vec!["q".to_string()]]);
    let before = sent(&net);
    net.run_media(Duration::from_secs(2));
    let after = sent(&net);
    assert!(after[0] >= before[0] + 30, "{before:?} -> {after:?}");
    assert_eq!(
        (after[1], after[2]),
        (before[1], before[2]),
        "h and f stopped"
    );
    for rx in [good, weak] {
        let got = since(&frames(&net, rx, a), net.now - Duration::from_secs(1));
        assert!(
            got.len() >= 15 && got.iter().all(|f| f.layer == 0),
            "{got:?}"
        );
    }
    assert_eq!(net.sfu.metrics().dynacast_layers_off.get(), 2);

    // One enlarges it: every layer is asked for again at once, and that subscriber climbs
    // back to the top layer while the other keeps its thumbnail.
    let p = pref(&net, good, true, None);
    prefer(&mut net, good, p);
    net.run_media(Duration::from_millis(500));
    let asked = publish_layers(&net, a);
    assert_eq!(
        asked.last().unwrap(),
        &vec!["q".to_string(), "h".into(), "f".into()]
    );
    net.run_media(Duration::from_secs(8));
    let got = since(&frames(&net, good, a), net.now - Duration::from_secs(1));
    assert!(
        got.len() >= 15 && got.iter().all(|f| f.layer == 2),
        "{got:?}"
    );
    let got = since(&frames(&net, weak, a), net.now - Duration::from_secs(1));
    assert!(
        got.len() >= 15 && got.iter().all(|f| f.layer == 0),
        "{got:?}"
    );

    // Nobody shows it: nothing is sent at all (the patient's uplink is spared).
    for rx in [good, weak] {
        let p = pref(&net, rx, false, None);
        prefer(&mut net, rx, p);
    }
    net.run_media(Duration::from_secs(5));
    assert_eq!(
        publish_layers(&net, a).last().unwrap(),
        &Vec::<String>::new()
    );
    let before = sent(&net);
    net.run_media(Duration::from_secs(2));
    assert_eq!(sent(&net), before);
    assert_eq!(paused_notices(&net, good), (0, 0));
}

#[test]
fn red_audio_goes_whole_where_the_link_wants_it_and_as_plain_opus_to_the_others_and_the_recorder() {
    use str0m::media::MediaKind;
    use str0m::rtp::{RedEncoder, RedundantBlock};

    let mut net = SimNet::new(28);
    net.opus_red = true;
    let a = net.add_client("room", &[MediaKind::Audio]);
    let red_sub = net.add_client("room", &[]);
    net.opus_red = false;
    let plain = net.add_client("room", &[]);
    net.run_for(Duration::from_secs(1));
    let a_id = net.clients[a].id;
    net.sfu.set_recorded(net.now, a_id, true).unwrap();
    let red_pt = net.red_pt(a).expect("the publisher negotiated RED");
    let opus_pt = net.pt(a, MediaKind::Audio);
    assert!(net.red_pt(red_sub).is_some());
    assert_eq!(net.red_pt(plain), None);

    // Frame i (40 + i bytes of i), each packet carrying its frame and the previous one (one
    // level, as browsers send).
    let frame = |i: u16| vec![i as u8; 40 + (i % 100) as usize];
    let red_packet = |i: u16| {
        let redundant = (i > 1).then(|| RedundantBlock {
            pt: *opus_pt,
            timestamp_offset: 960,
            payload: frame(i - 1),
        });
        RedEncoder::encode(*opus_pt, &frame(i), redundant.as_slice())
    };
    let send = |net: &mut SimNet, frames: std::ops::RangeInclusive<u16>| {
        for i in frames {
            net.send_rtp_as(a, MediaKind::Audio, red_pt, &red_packet(i), false);
            net.run_for(Duration::from_millis(20));
        }
    };
    let got = |net: &SimNet, rx: usize| -> Vec<(u8, Vec<u8>)> {
        let mids = net.mids_from(rx, a, TrackKind::Audio);
        net.clients[rx]
            .received
            .iter()
            .filter(|r| mids.contains(&r.mid))
            .map(|r| (*r.pt, r.payload.clone()))
            .collect()
    };
    let plain_opus = *net.pt(plain, MediaKind::Audio);
    let sub_opus = *net.pt(red_sub, MediaKind::Audio);
    let sub_red_pt = *net.red_pt(red_sub).unwrap();

    // A clean link: RED would only cost bandwidth, so the RED-capable subscriber gets plain
    // Opus too.
    send(&mut net, 1..=100);
    let clean = got(&net, red_sub);
    assert_eq!(clean.len(), 100);
    assert!(
        clean.iter().all(|(pt, _)| *pt == sub_opus),
        "{:?}",
        &clean[..3]
    );
    assert_eq!(
        clean.into_iter().map(|(_, p)| p).collect::<Vec<_>>(),
        (1..=100).map(frame).collect::<Vec<_>>()
    );
    assert_eq!(net.sfu.metrics().red_subscribers.get(), 0);

    // Once the policy says its link wants RED (decided from loss the simulator's feedback
    // under-reports, so pinned here; the policy has its own tests in `red`), it gets RED
    // whole, under its own payload type.
    let red_id = net.clients[red_sub].id;
    net.sfu.pin_red(red_id, true);
    send(&mut net, 101..=900);
    let lossy: Vec<(u8, Vec<u8>)> = got(&net, red_sub).into_iter().skip(100).collect();
    let tail: Vec<&(u8, Vec<u8>)> = lossy.iter().rev().take(40).collect();
    assert!(
        tail.iter().all(|(pt, _)| *pt == sub_red_pt),
        "RED in the end"
    );
    let sent: Vec<Vec<u8>> = (101..=900).map(red_packet).collect();
    assert!(
        tail.iter().all(|(_, p)| sent.contains(p)),
        "RED payloads forwarded unchanged"
    );
    assert_eq!(net.sfu.metrics().red_subscribers.get(), 1);

    // The subscriber without RED gets every primary frame as plain Opus, and so does the
    // recorder.
    let plain_got = got(&net, plain);
    assert!(plain_got.iter().all(|(pt, _)| *pt == plain_opus));
    assert_eq!(
        plain_got.into_iter().map(|(_, p)| p).collect::<Vec<_>>(),
        (1..=900).map(frame).collect::<Vec<_>>()
    );
    let recorded: Vec<Vec<u8>> = net.recorded.iter().map(|r| r.payload.to_vec()).collect();
    assert_eq!(recorded, (1..=900).map(frame).collect::<Vec<_>>());

    // A RED payload that does not parse (a block header cut short): dropped and counted.
    let malformed = net
        .sfu
        .metrics()
        .dropped_packets
        .with_label_values(&["malformed"])
        .get();
    net.send_rtp_as(a, MediaKind::Audio, red_pt, &[0x80 | *opus_pt, 0x01], false);
    net.run_for(Duration::from_millis(200));
    assert_eq!(
        net.sfu
            .metrics()
            .dropped_packets
            .with_label_values(&["malformed"])
            .get(),
        malformed + 1
    );
    // The subscriber leaves: the gauge follows.
    let id = net.clients[red_sub].id;
    net.sfu.leave(net.now, id, super::LeaveReason::Left);
    assert_eq!(net.sfu.metrics().red_subscribers.get(), 0);
}

#[test]
#[ignore = "exploration, run by hand: prints a weak subscriber's estimate, allocation and frames each second (RATE=bit/s)"]
fn explore_a_weak_link_over_time() {
    let rate: u64 = std::env::var("RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let (mut net, a, b, weak) = two_cameras_and_a_weak_one(seed, Duration::from_secs(10));
    net.clients[weak].downlink = Some(Link::rate(rate));
    let id = net.clients[weak].id;
    let mut carried = 0;
    let mut carried_by_pt = std::collections::BTreeMap::new();
    for s in 0..45 {
        let t = net.now;
        net.run_media(Duration::from_secs(1));
        let fa = since(&frames(&net, weak, a), t);
        let fb = since(&frames(&net, weak, b), t);
        let au = audio_since(&net, weak, a, t) + audio_since(&net, weak, b, t);
        let vmids = [
            net.mids_from(weak, a, TrackKind::Video),
            net.mids_from(weak, b, TrackKind::Video),
        ]
        .concat();
        let vpk = net.clients[weak]
            .received
            .iter()
            .filter(|r| r.at >= t && vmids.contains(&r.mid))
            .count();
        let (est, alloc) = net.sfu.allocation_of(id).unwrap();
        let l = net.clients[weak].downlink.as_ref().unwrap();
        println!("t={s:2} est={:>8?} alloc={alloc:>7} a={:2}f(l{:?}) b={:2}f(l{:?}) audio={au:3} video_pkts={vpk:3} qdrops={} kbps={}", est, fa.len(), fa.last().map(|f| f.layer), fb.len(), fb.last().map(|f| f.layer), l.queue_drops, (l.carried_bytes - carried) * 8 / 1000);
        carried = l.carried_bytes;
        let by_pt: Vec<String> = l
            .carried_by_pt
            .iter()
            .map(|(pt, b)| {
                let last = carried_by_pt.get(pt).copied().unwrap_or(0);
                format!("{pt}:{}", (b - last) * 8 / 1000)
            })
            .collect();
        println!("     kbps by payload type (255 RTCP) {}", by_pt.join(" "));
        carried_by_pt = l.carried_by_pt.clone();
    }
}

/// The `max_bitrate`s `client` was asked for (`publish_audio`), in order.
fn publish_audio(net: &SimNet, client: usize) -> Vec<Option<u32>> {
    net.clients[client]
        .signals
        .iter()
        .filter_map(|m| match m {
            ServerMessage::PublishAudio { max_bitrate, .. } => Some(*max_bitrate),
            _ => None,
        })
        .collect()
}

#[test]
fn microphones_speak_sparingly_while_a_link_barely_carries_the_voices_and_freely_after() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let (mut net, a, b, weak) = two_cameras_and_a_weak_one(29, Duration::from_secs(6));
    assert!(publish_audio(&net, a).is_empty());
    // Two voices of 40 kbit/s payload, ~140 kbit/s on the wire with their headers, into a
    // 120 kbit/s link: tight. Capped at 16 kbit/s they take ~85 kbit/s and fit.
    net.clients[weak].downlink = Some(Link::rate(120_000));
    net.run_media(Duration::from_secs(15));
    use super::speech_cap::SPEECH_CAP;
    assert_eq!(publish_audio(&net, a), vec![Some(SPEECH_CAP)]);
    assert_eq!(publish_audio(&net, b), vec![Some(SPEECH_CAP)]);
    assert_eq!(net.clients[a].audio_cap, Some(SPEECH_CAP));
    assert_eq!(net.sfu.metrics().speech_capped_microphones.get(), 2);
    // Capped, both voices get through (all but a few packets, 5 % at worst in 16 runs: str0m
    // keeps padding the link up to 50 kbit/s while the voices send less, and probes it now and
    // then). Uncapped they would need ~140 kbit/s of this 120 kbit/s link and lose ~15 %.
    let t = net.now - Duration::from_secs(4);
    let (fa, fb) = (audio_since(&net, weak, a, t), audio_since(&net, weak, b, t));
    assert!(fa >= 180 && fb >= 180, "audio packets in 4 s: {fa} / {fb}");
    // And what arrives is the capped speech: 16 kbit/s is 40 bytes per 20 ms packet.
    for publisher in [a, b] {
        let mids = net.mids_from(weak, publisher, TrackKind::Audio);
        let sizes: Vec<usize> = net.clients[weak]
            .received
            .iter()
            .filter(|r| mids.contains(&r.mid) && r.at >= t)
            .map(|r| r.payload.len())
            .collect();
        assert!(
            !sizes.is_empty() && sizes.iter().all(|n| *n == 40),
            "{sizes:?}"
        );
    }
    // The link clears: once video flows to it again and the calm delay passed, the caps go.
    net.clients[weak].downlink = None;
    net.run_media(Duration::from_secs(30));
    assert_eq!(publish_audio(&net, a), vec![Some(SPEECH_CAP), None]);
    assert_eq!(publish_audio(&net, b), vec![Some(SPEECH_CAP), None]);
    assert_eq!(net.sfu.metrics().speech_capped_microphones.get(), 0);
    assert!(!since(&frames(&net, weak, a), net.now - Duration::from_secs(1)).is_empty());
}

#[test]
fn a_link_cut_to_a_video_and_the_voices_keeps_one_video_flowing_from_the_first_seconds() {
    let (mut net, a, b, weak) = two_cameras_and_a_weak_one(35, Duration::from_secs(10));
    // Cut from ~3 Mbit/s of video to 300 kbit/s: room for the two voices (~115 kbit/s with
    // their headers) and one video's lowest layer (~130 kbit/s), not two.
    net.clients[weak].downlink = Some(Link::rate(300_000));
    net.run_media(Duration::from_secs(2));
    // The cap is what the link delivered by the client's receive times (its own rate), not
    // the round's sent rate times a second's loss, which fell below the link once the videos
    // were paused: then both videos paused and stayed so for ~10 s.
    let id = net.clients[weak].id;
    for s in 0..8 {
        let t = net.now;
        net.run_media(Duration::from_secs(1));
        let video = since(&frames(&net, weak, a), t).len() + since(&frames(&net, weak, b), t).len();
        let voices = audio_since(&net, weak, a, t) + audio_since(&net, weak, b, t);
        let allocated = net.sfu.allocation_of(id).map(|(_, v)| v);
        assert!(
            video >= 15,
            "second {s} after the first two: {video} frames, allocated video {allocated:?}"
        );
        assert!(
            voices >= 90,
            "second {s} after the first two: {voices} of 100 voice packets"
        );
    }
}

#[test]
fn an_audio_only_link_is_not_probed_at_every_wobble_of_the_voices() {
    // On a link that barely carries the voices, the desired rate given to str0m followed the
    // voices' rate round by round, and str0m starts a probe each time the desired rate rises
    // above its estimate (Chromium at 120 kbit/s: probe clusters every 1-2 s, the voices
    // losing a few packets to most of them). It is held now, within a band.
    for seed in [40, 43] {
        let (mut net, a, b, weak) = two_cameras_and_a_weak_one(seed, Duration::from_secs(10));
        net.clients[weak].downlink = Some(Link::rate(120_000));
        net.run_media(Duration::from_secs(6));
        let id = net.clients[weak].id;
        let t = net.now;
        let mut rises = 0;
        let mut last = net.sfu.bwe_targets_of(id).unwrap().1;
        for _ in 0..120 {
            net.run_media(Duration::from_millis(250));
            let desired = net.sfu.bwe_targets_of(id).unwrap().1;
            if desired > last {
                rises += 1;
            }
            last = desired;
        }
        let voices = audio_since(&net, weak, a, t) + audio_since(&net, weak, b, t);
        // The explicit probes (every 2-16 s) raise it too: a handful in 30 s.
        assert!(
            rises <= 8 && voices >= 2_950,
            "seed {seed}: the desired rate rose {rises} times in 30 s; {voices} of 3000 voice packets"
        );
    }
}

#[test]
fn the_video_a_cut_link_carries_survives_the_estimators_fall() {
    // Chromium at 300 kbit/s: str0m's estimate kept falling for seconds after the cut, to
    // 140-200 kbit/s (below the voices and one low layer) 4-5 s after it, when the congestion
    // cap had ended and the carried floor still waited for two clean seconds: the one video
    // that fitted was paused for 2-4 s. The simulator's estimator does not fall that far, so
    // the estimate is pinned there from the end of the cap's hold.
    let (mut net, a, b, weak) = two_cameras_and_a_weak_one(35, Duration::from_secs(10));
    net.clients[weak].downlink = Some(Link::rate(300_000));
    net.run_media(Duration::from_secs(2));
    let id = net.clients[weak].id;
    let now = net.now;
    net.sfu.pin_estimate(now, id, Some(150_000));
    for s in 0..6 {
        let t = net.now;
        net.run_media(Duration::from_secs(1));
        let video = since(&frames(&net, weak, a), t).len() + since(&frames(&net, weak, b), t).len();
        assert!(
            video >= 15,
            "second {s} of the fallen estimate: {video} frames"
        );
    }
}

#[test]
fn a_link_cut_to_less_than_the_voices_stops_the_video_and_carries_the_capped_voices_within_seconds()
{
    let (mut net, a, b, weak) = two_cameras_and_a_weak_one(33, Duration::from_secs(10));
    assert!(
        packets_since(
            &net,
            weak,
            a,
            TrackKind::Video,
            net.now - Duration::from_secs(1)
        ) > 100
    );
    let (paused_before, _) = paused_notices(&net, weak);
    // Cut from ~3 Mbit/s of video to 120 kbit/s, less than the two voices with their headers
    // (~115 kbit/s) and their feedback. The estimator still says ~1 Mbit/s for seconds.
    net.clients[weak].downlink = Some(Link::rate(120_000));
    net.run_media(Duration::from_secs(3));
    // The loss paused both videos (announced), and what str0m still held of them (pacer
    // queue, resends) was dropped: nothing of them reaches the link from then on.
    let (paused, _) = paused_notices(&net, weak);
    assert!(
        paused >= paused_before + 2,
        "pauses {paused_before} -> {paused}"
    );
    let id = net.clients[weak].id;
    assert_eq!(net.sfu.allocation_of(id).map(|(_, video)| video), Some(0));
    // What was already queued on the link when the second video paused still arrives.
    net.run_media(Duration::from_secs(1));
    let t = net.now;
    net.run_media(Duration::from_secs(6));
    let late_video = packets_since(&net, weak, a, TrackKind::Video, t)
        + packets_since(&net, weak, b, TrackKind::Video, t);
    assert_eq!(late_video, 0, "video reached the cut link after the pause");
    // The overfilled link with no video left was tight at once: the microphones were capped
    // without waiting for the estimate to fall below them (it was still ~900 kbit/s).
    use super::speech_cap::SPEECH_CAP;
    assert_eq!(publish_audio(&net, a), vec![Some(SPEECH_CAP)]);
    assert_eq!(publish_audio(&net, b), vec![Some(SPEECH_CAP)]);
    // And the voices got through from 3 s after the cut on: 2 x 50 packets a second, all but
    // a few (the first seconds lose most: the link's queue is full of video).
    let voices = audio_since(&net, weak, a, t) + audio_since(&net, weak, b, t);
    assert!(
        voices >= 570,
        "voice packets in the 6 s from 3 s after the cut: {voices} of 600"
    );
}

#[test]
fn a_cut_is_seen_in_the_queue_it_builds_before_its_loss_shows() {
    // A link cut from ~3 Mbit/s to 120 kbit/s behind a 200 ms queue: the packets sent after
    // the drops cross the full queue before the feedback can report the drops, and the
    // second's loss reached the congestion threshold 0.7-0.9 s after the cut (Chromium), the
    // voices mostly lost meanwhile. The queue's delay shows in the first feedback.
    for seed in [33, 35, 40] {
        let (mut net, a, b, weak) = two_cameras_and_a_weak_one(seed, Duration::from_secs(10));
        let caps = |net: &SimNet| {
            let m = &net.sfu.metrics().congestion_caps;
            (
                m.with_label_values(&["loss"]).get(),
                m.with_label_values(&["queue"]).get(),
            )
        };
        let before = caps(&net);
        net.clients[weak].downlink = Some(Link::rate(120_000));
        let cut = net.now;
        let mut capped_after = None;
        for step in 1..=40 {
            net.run_media(Duration::from_millis(25));
            let (loss, queue) = caps(&net);
            if queue > before.1 {
                // The first cap came from the queue, before the loss showed.
                assert_eq!(loss, before.0, "seed {seed}");
                capped_after = Some(step * 25);
                break;
            }
        }
        net.run_media(Duration::from_secs(2).saturating_sub(net.now - cut));
        let voices = audio_since(&net, weak, a, cut) + audio_since(&net, weak, b, cut);
        eprintln!("seed {seed}: capped {capped_after:?} ms after the cut, {voices} of 200 voice packets in 2 s");
        // Without the queue's signal: no cap within the first second, 75 of 200 voice
        // packets in the first two (seed 33); with it, capped 175 ms after the cut, 174-181.
        assert!(
            capped_after.is_some_and(|ms| ms <= 500) && voices >= 150,
            "seed {seed}: the cap came {capped_after:?} ms after the cut; {voices} of 200 voice packets in 2 s"
        );
    }
}

#[test]
fn a_stethoscope_is_never_paused_or_capped_while_the_voices_and_video_give_way() {
    use str0m::media::MediaKind;
    let mut net = SimNet::new(31);
    let a = net.add_simulcast_client("room");
    net.next_sources = vec![TrackSource::Microphone, TrackSource::Instrument];
    let doc = net.add_client("room", &[MediaKind::Audio, MediaKind::Audio]);
    let weak = net.add_client("room", &[]);
    let mids = net.clients[doc].publish_mids.clone();
    let (mic, steth) = (mids[0].1, mids[1].1);
    let pt = net.pt(doc, MediaKind::Audio);
    // The instrument at a high rate (~100 kbit/s of payload), the microphone as usual, a
    // simulcast camera beside them; the weak link carries the audio and not much more.
    let run = |net: &mut SimNet, secs: u64| {
        for tick in 0..secs * 100 {
            if tick % 5 == 0 {
                net.send_frames();
            }
            if tick % 2 == 0 {
                net.send_rtp(a, MediaKind::Audio, &[0x55; 100], false);
                let mic_len = net.clients[doc]
                    .audio_cap
                    .map_or(100, |c| (c as usize / 400).min(100));
                net.send_rtp_on(doc, mic, MediaKind::Audio, pt, &vec![0x11; mic_len], false);
                net.send_rtp_on(doc, steth, MediaKind::Audio, pt, &[0x22; 250], false);
            }
            net.run_for(Duration::from_millis(10));
        }
    };
    run(&mut net, 6);
    net.clients[weak].downlink = Some(Link::rate(250_000));
    run(&mut net, 20);
    // The camera is paused for the weak subscriber; the stethoscope never is, and the
    // microphone, not the stethoscope, was asked to speak sparingly.
    assert!(paused_notices(&net, weak).0 >= 1);
    let asked: Vec<String> = net.clients[doc]
        .signals
        .iter()
        .filter_map(|m| match m {
            ServerMessage::PublishAudio { mid, .. } => Some(mid.clone()),
            _ => None,
        })
        .collect();
    assert!(asked.iter().all(|m| *m == mic.to_string()), "{asked:?}");
    assert!(!asked.is_empty(), "the microphone was capped");
    let t = net.now - Duration::from_secs(4);
    let heard = |net: &SimNet, marker: u8| {
        let mids = net.mids_from(weak, doc, TrackKind::Audio);
        net.clients[weak]
            .received
            .iter()
            .filter(|r| mids.contains(&r.mid) && r.at >= t && r.payload.first() == Some(&marker))
            .count()
    };
    let steth_heard = heard(&net, 0x22);
    assert!(
        steth_heard >= 190,
        "stethoscope packets in 4 s: {steth_heard}"
    );
    assert!(heard(&net, 0x11) >= 190);
}

#[test]
fn a_subscriber_asking_for_fewer_frames_per_second_gets_the_base_temporal_layers() {
    let (mut net, a, good, other) = room(27, None);
    net.run_media(Duration::from_secs(8));
    let track = video_track_id(&net, good, a);
    let requests_to_top = |net: &SimNet| {
        net.clients[a]
            .keyframe_requests_by_rid
            .get(&Some("f".into()))
            .copied()
            .unwrap_or(0)
    };
    let top_requests_before = requests_to_top(&net);
    let ask = |net: &mut SimNet, max_fps| {
        prefer(
            net,
            good,
            TrackPreference {
                track_id: track.clone(),
                visible: true,
                max_height: None,
                max_fps,
                pinned: false,
            },
        )
    };
    // (frames in the last 2 s, highest TID among them, sequence numbers without a hole,
    // picture ids without a hole)
    let last_two_seconds = |net: &SimNet, rx: usize| {
        let t = net.now - Duration::from_secs(2);
        let got = since(&frames(net, rx, a), t);
        let mids = net.mids_from(rx, a, TrackKind::Video);
        let packets: Vec<&Received> = net.clients[rx]
            .received
            .iter()
            .filter(|r| mids.contains(&r.mid) && r.at >= t && r.payload.len() > 10)
            .collect();
        let tid = packets.iter().map(|r| r.payload[5] >> 6).max();
        let mut seqs: Vec<u16> = packets.iter().map(|r| r.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        let seq_holes = seqs.windows(2).filter(|w| w[1] != w[0] + 1).count();
        let mut pids: Vec<u16> = got.iter().map(|f| f.picture_id).collect();
        pids.sort_unstable();
        pids.dedup();
        let pid_holes = pids.windows(2).filter(|w| w[1] != w[0] + 1).count();
        (got.len(), tid, seq_holes, pid_holes)
    };
    // A thumbnail at 10 fps: TIDs 0 and 1 of the top layer, renumbered without holes.
    ask(&mut net, Some(10));
    net.run_media(Duration::from_secs(3));
    let (n, tid, seq_holes, pid_holes) = last_two_seconds(&net, good);
    assert!((18..=22).contains(&n), "{n} frames in 2 s at max_fps 10");
    assert_eq!(tid, Some(1));
    assert_eq!((seq_holes, pid_holes), (0, 0), "numbering without holes");
    let (n_other, tid_other, _, _) = last_two_seconds(&net, other);
    assert!(
        n_other >= 38,
        "the other subscriber keeps 20 fps: {n_other}"
    );
    assert_eq!(tid_other, Some(2));
    assert!(
        since(&frames(&net, good, a), net.now - Duration::from_secs(2))
            .iter()
            .all(|f| f.layer == 2)
    );
    // 5 fps: the base layer only.
    ask(&mut net, Some(5));
    net.run_media(Duration::from_secs(3));
    let (n, tid, seq_holes, pid_holes) = last_two_seconds(&net, good);
    assert!((8..=12).contains(&n), "{n} frames in 2 s at max_fps 5");
    assert_eq!((tid, seq_holes, pid_holes), (Some(0), 0, 0));
    // No limit again: every picture, the numbering still continuous.
    ask(&mut net, None);
    net.run_media(Duration::from_secs(3));
    let (n, tid, seq_holes, pid_holes) = last_two_seconds(&net, good);
    assert!(n >= 38, "{n} frames in 2 s without a limit");
    assert_eq!((tid, seq_holes, pid_holes), (Some(2), 0, 0));
    // Temporal layers change without a keyframe: none was asked of the publisher.
    assert_eq!(requests_to_top(&net), top_requests_before);
}

#[test]
fn a_recording_follows_the_best_layer_down_up_and_down_again_without_losing_video() {
    use crate::recorder::segmenter::TrackRecorder;
    use crate::recorder::{RecordCodec, RecorderConfig};
    use str0m::media::MediaKind;

    // The encoder drops its top layers (as Chrome does under CPU load) and takes them up
    // again: the recording goes to the best layer left, and back, each time from a keyframe.
    // Going back to a layer recorded before is a new run of that SSRC, not stragglers.
    let mut net = SimNet::new(41);
    let a = net.add_simulcast_client("room");
    let _viewer = net.add_client("room", &[]);
    net.run_media(Duration::from_secs(2));
    let a_id = net.clients[a].id;
    net.sfu.set_recorded(net.now, a_id, true).unwrap();
    let start = net.now;
    let set_top = |net: &mut SimNet, on: bool| {
        let enc = net.clients[a].encoder.as_mut().unwrap();
        enc.active[1] = on;
        enc.active[2] = on;
    };
    // A layer counts as gone ~1.5 s after its last packet: phases long enough for that.
    net.run_media(Duration::from_secs(3));
    set_top(&mut net, false);
    net.run_media(Duration::from_secs(4));
    set_top(&mut net, true);
    net.run_media(Duration::from_secs(3));
    set_top(&mut net, false);
    net.run_media(Duration::from_secs(5));
    let end = net.now;

    let video: Vec<_> = net
        .recorded
        .iter()
        .filter(|p| p.kind == MediaKind::Video)
        .collect();
    // The runs: SSRC changes in what the SFU handed over, each marked as a start.
    let mut runs = vec![video[0].ssrc];
    for w in video.windows(2) {
        if w[1].ssrc != w[0].ssrc {
            assert!(
                w[1].starts_run,
                "a switch without the mark at seq {}",
                w[1].seq
            );
            runs.push(w[1].ssrc);
        }
    }
    assert_eq!(runs.len(), 4, "top, lowest, top, lowest: {runs:?}");
    assert_eq!((runs[0], runs[1]), (runs[2], runs[3]));
    let last_run_from = video.iter().rposition(|p| p.starts_run).unwrap();
    assert!(
        video[last_run_from].arrival < start + Duration::from_secs(13),
        "the last switch came late"
    );

    let mut rec =
        TrackRecorder::new(start, RecordCodec::Vp8, 1, RecorderConfig::default()).unwrap();
    for p in &video {
        rec.push(p.arrival, p);
    }
    rec.finish(end);
    let stats = rec.stats();
    assert_eq!((stats.ssrc_changes, stats.late), (3, 0), "{stats:?}");
    // Each run is recorded from its first keyframe to its end: ~15 s at 20 fps, less the
    // waits for the lost layers to count as gone.
    assert!(stats.frames > 200, "{stats:?}");
    let last_run_frames = video[last_run_from..].iter().filter(|p| p.marker).count() as u64;
    assert!(
        last_run_frames > 40,
        "{last_run_frames} frames after the return"
    );
}

#[test]
fn a_stale_estimate_does_not_resume_a_video_into_a_cut_link_when_its_ceiling_lapses() {
    // Chromium at 120 kbit/s: with the videos paused the link carries only the voices, and
    // str0m's estimate, never saturated again, stayed where the cut left it (~260 kbit/s).
    // When the link's ceiling lapsed 15 s after the cut, a video was resumed on that figure,
    // overfilled the link with a keyframe for ~1 s and was paused again: a second's voices
    // lost (the CI failure: 3.73 % concealed against 3 %). The simulator's estimator falls to
    // the link at once, so the estimate is pinned at the stale figure until a probe is asked,
    // then at what a probe measures on the link (str0m's probe result replaces the estimate).
    let (mut net, a, b, weak) = two_cameras_and_a_weak_one(40, Duration::from_secs(10));
    net.clients[weak].downlink = Some(Link::rate(120_000));
    net.run_media(Duration::from_secs(3));
    let id = net.clients[weak].id;
    assert_eq!(net.sfu.allocation_of(id).map(|(_, video)| video), Some(0));
    const STALE: u64 = 260_000;
    const MEASURED: u64 = 110_000;
    let now = net.now;
    net.sfu.pin_estimate(now, id, Some(STALE));
    let t = net.now;
    let mut probed_at = None;
    // 30 s of the audio-only link, past the ceiling's memory (15 s) and its lapse.
    for step in 0..120 {
        net.run_media(Duration::from_millis(250));
        if probed_at.is_none() && net.sfu.bwe_targets_of(id).unwrap().1 > STALE {
            probed_at = Some(step);
            let now = net.now;
            net.sfu.pin_estimate(now, id, Some(MEASURED));
        }
    }
    let video = packets_since(&net, weak, a, TrackKind::Video, t)
        + packets_since(&net, weak, b, TrackKind::Video, t);
    assert!(
        probed_at.is_some(),
        "no probe above the stale estimate was asked in 30 s"
    );
    assert_eq!(
        video, 0,
        "video resumed into the 120 kbit/s link on the stale estimate (probe asked at step {probed_at:?})"
    );
}
