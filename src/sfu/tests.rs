//! Core tests: real str0m peers and the SFU over the simulated network (see `sim`).

use std::net::SocketAddr;
use std::time::Duration;

use huizhen_signaling::protocol::{ServerMessage, TrackKind};
use str0m::media::MediaKind;

use super::sim::SimNet;
use super::{retransmit, LeaveReason, PeerMode};

const AV: &[MediaKind] = &[MediaKind::Audio, MediaKind::Video];

/// A payload that names its sender and sequence and carries a checksum.
fn payload(sender: usize, seq: u32, len: usize) -> Vec<u8> {
    let mut p = vec![sender as u8];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend((0..len).map(|i| (i as u32).wrapping_mul(31).wrapping_add(seq) as u8));
    let sum = p.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    p.push(sum);
    p
}

fn intact(p: &[u8]) -> bool {
    let (body, sum) = p.split_at(p.len() - 1);
    body.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == sum[0]
}

/// Send `n` audio and `n` video packets from each of `senders`, 20 ms apart.
fn send_media(net: &mut SimNet, senders: &[usize], n: u32) {
    send_media_from(net, senders, 0, n)
}

/// Like [`send_media`], numbering payloads from `start`.
fn send_media_from(net: &mut SimNet, senders: &[usize], start: u32, n: u32) {
    for seq in start..start + n {
        for &s in senders {
            net.send_rtp(s, MediaKind::Audio, &payload(s, seq, 60), false);
            net.send_rtp(s, MediaKind::Video, &payload(s, seq, 900), true);
        }
        net.run_for(Duration::from_millis(20));
    }
    net.run_for(Duration::from_millis(500));
}

fn seqs(payloads: &[&[u8]]) -> Vec<u32> {
    let mut v: Vec<u32> = payloads
        .iter()
        .map(|p| u32::from_be_bytes(p[1..5].try_into().unwrap()))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn forwards_audio_and_video_between_two_participants() {
    let mut net = SimNet::new(1);
    let a = net.add_client("room", AV);
    let b = net.add_client("room", AV);
    net.run_for(Duration::from_secs(1));
    assert!(net.clients[a].rtc.is_connected() && net.clients[b].rtc.is_connected());
    send_media(&mut net, &[a, b], 50);
    for (rx, tx) in [(a, b), (b, a)] {
        for kind in [TrackKind::Audio, TrackKind::Video] {
            let got = net.payloads_from(rx, tx, kind);
            assert!(
                got.iter().all(|p| intact(p) && p[0] == tx as u8),
                "corrupt payload"
            );
            let s = seqs(&got);
            assert!(
                s.len() >= 48,
                "{rx} got {} {kind:?} packets from {tx}",
                s.len()
            );
        }
    }
    let m = net.sfu.metrics();
    assert!(m.kind(true).packets_out.get() >= 96);
    assert!(m.kind(false).packets_out.get() >= 96);
    assert_eq!(m.kind(true).published.get(), 2);
    assert_eq!(m.kind(true).subscribed.get(), 2);
}

#[test]
fn late_joiner_gets_a_keyframe_request_sent_and_throttled() {
    let mut net = SimNet::new(2);
    let a = net.add_client("room", AV);
    net.run_for(Duration::from_secs(1));
    send_media(&mut net, &[a], 5);
    let before = net.clients[a].keyframe_requests;
    // Three subscribers arrive together while the publisher sends: one keyframe request
    // reaches the publisher, not three.
    let b = net.add_client("room", &[]);
    let _c = net.add_client("room", &[]);
    let _d = net.add_client("room", &[]);
    net.send_rtp(a, MediaKind::Video, &payload(a, 99, 900), true);
    net.run_for(Duration::from_millis(100));
    let after = net.clients[a].keyframe_requests;
    assert!(
        after > before,
        "publisher got no keyframe request on subscribe"
    );
    assert!(
        after - before <= 2,
        "throttle let {} requests through",
        after - before
    );
    assert!(net.sfu.metrics().keyframe_requests_throttled.get() >= 1);
    send_media(&mut net, &[a], 10);
    assert!(seqs(&net.payloads_from(b, a, TrackKind::Video)).len() >= 9);
}

#[test]
fn nack_recovers_lost_video_packets() {
    let mut net = SimNet::new(3);
    let a = net.add_client("room", AV);
    let b = net.add_client("room", &[]);
    net.run_for(Duration::from_secs(1));
    net.media_loss = 0.1;
    for seq in 0..200 {
        net.send_rtp(a, MediaKind::Video, &payload(a, seq, 900), true);
        net.run_for(Duration::from_millis(10));
    }
    net.media_loss = 0.0;
    net.run_for(Duration::from_secs(2));
    assert!(
        net.lost > 10,
        "the simulated network dropped only {} packets",
        net.lost
    );
    let got = seqs(&net.payloads_from(b, a, TrackKind::Video));
    // Without retransmission about 19% would be missing (loss on both legs).
    assert!(
        got.len() >= 196,
        "only {} of 200 video packets arrived",
        got.len()
    );
    let m = net.sfu.metrics();
    assert!(
        m.nacks_received.get() > 0,
        "no NACK from the subscriber was counted"
    );
    assert!(
        m.nacks_sent.get() > 0,
        "no NACK to the publisher was counted"
    );
}

#[test]
fn retransmit_window_follows_the_measured_round_trip() {
    let mut net = SimNet::new(8);
    let a = net.add_client("room", AV);
    let b = net.add_client("room", &[]);
    net.run_for(Duration::from_secs(1));
    let b_id = net.clients[b].id;
    // Round trips of ~10 ms: receiver reports keep the floor.
    send_media(&mut net, &[a], 150);
    assert_eq!(
        net.sfu.retransmit_window(b_id),
        Some(retransmit::MIN_WINDOW)
    );
    assert_eq!(net.sfu.metrics().retransmit_window_resizes.get(), 0);
    // A 200 ms round trip needs 4 x 200 + 100 = 900 ms (RTCP's 1/65536 s time units and
    // the report delay can add a step of 50 ms).
    net.latency = Duration::from_millis(100);
    send_media_from(&mut net, &[a], 150, 250);
    let window = net.sfu.retransmit_window(b_id).unwrap();
    assert!(
        (900..=950).contains(&window.as_millis()),
        "window {window:?}"
    );
    assert_eq!(net.sfu.metrics().retransmit_window_resizes.get(), 1);
    net.run_for(Duration::from_secs(1));
    assert_eq!(
        seqs(&net.payloads_from(b, a, TrackKind::Video)).len(),
        400,
        "no loss on this network"
    );
}

#[test]
fn server_offers_carry_twcc_on_every_m_line_for_bandwidth_estimation() {
    let mut net = SimNet::new(9);
    let a = net.add_client("room", AV);
    let b = net.add_client("room", AV);
    net.run_for(Duration::from_secs(1));
    let offer = net.clients[b]
        .signals
        .iter()
        .rev()
        .find_map(|m| match m {
            ServerMessage::Offer { sdp } => Some(sdp.clone()),
            _ => None,
        })
        .expect("b got a server offer for a's tracks");
    let sections: Vec<&str> = offer.split("\r\nm=").skip(1).collect();
    let twcc = |s: &str| s.contains("transport-wide-cc");
    let sending: Vec<&&str> = sections
        .iter()
        .filter(|s| s.contains("a=sendonly"))
        .collect();
    let receiving: Vec<&&str> = sections
        .iter()
        .filter(|s| s.contains("a=recvonly"))
        .collect();
    assert_eq!((sending.len(), receiving.len()), (2, 2), "{offer}");
    assert!(
        sending.iter().all(|s| twcc(s)),
        "forwarded tracks carry TWCC: {offer}"
    );
    assert!(
        receiving.iter().all(|s| twcc(s)),
        "b's own tracks keep TWCC: {offer}"
    );
    // Media still flows both ways after the answer.
    send_media(&mut net, &[a, b], 20);
    assert!(seqs(&net.payloads_from(b, a, TrackKind::Video)).len() >= 19);
    assert!(seqs(&net.payloads_from(a, b, TrackKind::Video)).len() >= 19);
}

#[test]
fn leave_removes_tracks_from_everyone_and_frees_state() {
    let mut net = SimNet::new(4);
    let a = net.add_client("room", AV);
    let b = net.add_client("room", AV);
    let c = net.add_client("room", AV);
    net.run_for(Duration::from_secs(1));
    send_media(&mut net, &[a, b, c], 5);
    assert_eq!(net.sfu.track_counts(), (6, 12));
    let c_id = net.clients[c].id;
    net.sfu.leave(net.now, c_id, LeaveReason::Left);
    net.route_outputs();
    net.run_for(Duration::from_millis(500));
    for rx in [a, b] {
        assert!(net.mids_from(rx, c, TrackKind::Video).is_empty());
        assert!(net.mids_from(rx, c, TrackKind::Audio).is_empty());
        assert!(net.clients[rx].signals.iter().any(|s| matches!(
            s, ServerMessage::ParticipantLeft { participant_id } if *participant_id == c_id.to_string()
        )));
    }
    assert_eq!(net.sfu.track_counts(), (4, 4));
    send_media_from(&mut net, &[a, b], 100, 5);
    assert!(seqs(&net.payloads_from(a, b, TrackKind::Video)).len() >= 9);
    for id in [net.clients[a].id, net.clients[b].id] {
        net.sfu.leave(net.now, id, LeaveReason::Left);
    }
    net.route_outputs();
    assert_eq!(net.sfu.participant_count(), 0);
    assert_eq!(net.sfu.room_count(), 0);
    assert_eq!(net.sfu.demux_entries(), (0, 0));
    assert_eq!(net.sfu.track_counts(), (0, 0));
    let m = net.sfu.metrics();
    assert_eq!(m.participants.get(), 0);
    assert_eq!(m.rooms.get(), 0);
    assert_eq!(m.kind(true).published.get(), 0);
    assert_eq!(m.kind(true).subscribed.get(), 0);
}

#[test]
fn silent_peer_is_removed_within_five_seconds() {
    let mut net = SimNet::new(5);
    let a = net.add_client("room", AV);
    let b = net.add_client("room", AV);
    net.run_for(Duration::from_secs(1));
    net.clients[b].mute_network = true;
    let muted_at = net.now;
    let b_id = net.clients[b].id.to_string();
    let mut removed_after = None;
    for _ in 0..100 {
        net.run_for(Duration::from_millis(100));
        let gone = net.clients[a].signals.iter().any(|s| {
            matches!(s, ServerMessage::ParticipantLeft { participant_id } if *participant_id == b_id)
        });
        if gone {
            removed_after = Some(net.now - muted_at);
            break;
        }
    }
    let after = removed_after.expect("silent participant never removed");
    assert!(after <= Duration::from_secs(5), "removed after {after:?}");
    assert!(net.mids_from(a, b, TrackKind::Video).is_empty());
    assert_eq!(net.clients[b].removed, Some(LeaveReason::Timeout));
    assert_eq!(net.sfu.participant_count(), 1);
}

#[test]
fn garbage_datagrams_are_counted_and_do_not_disturb_the_room() {
    let mut net = SimNet::new(6);
    let a = net.add_client("room", AV);
    let b = net.add_client("room", AV);
    net.run_for(Duration::from_secs(1));
    let stranger: SocketAddr = "10.9.9.9:4000".parse().unwrap();
    let b_addr = net.clients[b].addr;
    let mut rng = super::sim::Rng::new(99);
    for i in 0..500 {
        let len = (rng.next_f64() * 1400.0) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| (rng.next_f64() * 256.0) as u8).collect();
        // From nowhere, and spoofed as a real participant (SRTP auth must reject it).
        net.inject(stranger, &bytes);
        let mut rtp_like = bytes.clone();
        if let Some(first) = rtp_like.first_mut() {
            *first = 0x80 | (i as u8 & 0x3f);
        }
        net.inject(b_addr, &rtp_like);
    }
    let dropped: u64 = ["malformed", "unknown_source", "rejected"]
        .iter()
        .map(|r| {
            net.sfu
                .metrics()
                .dropped_packets
                .with_label_values(&[r])
                .get()
        })
        .sum();
    assert!(dropped >= 500, "only {dropped} garbage datagrams counted");
    assert_eq!(net.sfu.participant_count(), 2);
    send_media(&mut net, &[a, b], 20);
    assert!(seqs(&net.payloads_from(a, b, TrackKind::Video)).len() >= 19);
    assert!(seqs(&net.payloads_from(b, a, TrackKind::Audio)).len() >= 19);
}

#[test]
fn an_offer_publishing_more_than_the_track_cap_is_refused_before_negotiation() {
    use super::{SfuError, SignalInput, MAX_PUBLISHED_TRACKS};
    let mut net = SimNet::new(8);
    let a = net.add_client("room", AV);
    let id = net.clients[a].id;
    let offer = |n: usize| {
        let mut rtc = str0m::Rtc::builder().build(net.now);
        rtc.add_local_candidate(
            str0m::Candidate::host("127.0.0.9:9".parse().unwrap(), "udp").unwrap(),
        );
        let mut change = rtc.sdp_api();
        for _ in 0..n {
            change.add_media(
                MediaKind::Audio,
                str0m::media::Direction::SendOnly,
                None,
                None,
                None,
            );
        }
        change.apply().unwrap().0.to_sdp_string()
    };
    let too_many = offer(MAX_PUBLISHED_TRACKS + 1);
    for input in [
        SignalInput::Offer {
            sdp: too_many.clone(),
            sources: Default::default(),
        },
        SignalInput::Renew {
            sdp: too_many.clone(),
            sources: Default::default(),
        },
    ] {
        let err = net.sfu.handle_signal(net.now, id, input).unwrap_err();
        assert!(
            matches!(&err, SfuError::InvalidMessage(m) if m.contains("at most 8")),
            "{err:?}"
        );
    }
    assert_eq!(net.sfu.track_counts().0, 2, "still A's two tracks");
    assert_eq!(net.sfu.metrics().session_renewals.get(), 0);
}

#[test]
fn an_offer_that_made_str0m_panic_is_refused_and_a_panic_in_negotiation_is_contained() {
    use super::{negotiate, SfuError, SignalInput};
    // Found by the `whip` fuzz target: an audio m-line mapping a payload type it does not
    // list, which the video m-line maps too ("Pt locked multiple times" inside str0m).
    let crash = include_str!("../../fuzz/crashes/whip-str0m-pt-locked-multiple-times");
    let mut net = SimNet::new(9);
    let a = net.add_client("room", AV);
    let id = net.clients[a].id;
    for input in [
        SignalInput::Offer {
            sdp: crash.into(),
            sources: Default::default(),
        },
        SignalInput::Renew {
            sdp: crash.into(),
            sources: Default::default(),
        },
    ] {
        let err = net.sfu.handle_signal(net.now, id, input).unwrap_err();
        assert!(
            matches!(&err, SfuError::InvalidSdp(m) if m.contains("its m-line does not list")),
            "{err:?}"
        );
    }
    assert_eq!(
        net.sfu.track_counts().0,
        2,
        "A is still there with its tracks"
    );
    // Whatever else str0m might panic on is an error, not the end of the media task.
    let r: Result<Result<(), SfuError>, SfuError> = negotiate(|| panic!("inside str0m"));
    assert!(matches!(r, Err(SfuError::InvalidSdp(_))));
}

#[test]
fn bad_sdp_and_candidates_get_typed_errors() {
    use super::{SfuError, SignalInput};
    let mut net = SimNet::new(7);
    let a = net.add_client("room", AV);
    let id = net.clients[a].id;
    let now = net.now;
    let err = net
        .sfu
        .handle_signal(
            now,
            id,
            SignalInput::Offer {
                sdp: "v=0\r\nnonsense".into(),
                sources: Default::default(),
            },
        )
        .unwrap_err();
    assert!(matches!(err, SfuError::InvalidSdp(_)), "{err:?}");
    let err = net
        .sfu
        .handle_signal(now, id, SignalInput::Answer("v=0\r\n".into()))
        .unwrap_err();
    assert!(
        matches!(err, SfuError::InvalidSdp(_) | SfuError::NoPendingOffer),
        "{err:?}"
    );
    let err = net
        .sfu
        .handle_signal(now, id, SignalInput::Candidate("candidate:garbage".into()))
        .unwrap_err();
    assert!(matches!(err, SfuError::InvalidCandidate(_)), "{err:?}");
    assert!(net
        .sfu
        .handle_signal(now, id, SignalInput::Candidate(String::new()))
        .is_ok());
    assert_eq!(net.sfu.participant_count(), 1);
}

#[test]
fn room_limit_is_enforced() {
    let mut config = super::sim::sim_config();
    config.max_participants_per_room = 2;
    let mut net = SimNet::with_config(8, config);
    net.add_client("full", &[]);
    net.add_client("full", &[]);
    let now = net.now;
    assert_eq!(
        net.sfu.join(now, "full", "third", true, None),
        Err(super::SfuError::RoomFull(2))
    );
    assert!(net.sfu.join(now, "other", "third", true, None).is_ok());
}

#[test]
fn receive_only_viewers_have_their_own_limit_and_take_no_seat() {
    let mut config = super::sim::sim_config();
    config.max_participants_per_room = 2;
    config.max_viewers_per_room = 3;
    let mut net = SimNet::with_config(9, config);
    let now = net.now;
    let viewer = |net: &mut SimNet| {
        net.sfu
            .join_as(now, "lecture", "viewer", false, PeerMode::ReceiveOnly, None)
    };
    for _ in 0..3 {
        assert!(viewer(&mut net).is_ok());
    }
    assert_eq!(viewer(&mut net), Err(super::SfuError::RoomFull(3)));
    // The viewers took no seat: two participants still fit, not a third.
    assert!(net.sfu.join(now, "lecture", "one", true, None).is_ok());
    assert!(net.sfu.join(now, "lecture", "two", true, None).is_ok());
    assert_eq!(
        net.sfu.join(now, "lecture", "three", true, None),
        Err(super::SfuError::RoomFull(2))
    );
}

#[test]
fn forwards_h264_and_vp9() {
    use str0m::format::Codec;
    for codec in [Codec::H264, Codec::Vp9] {
        let mut net = SimNet::new(9);
        let a = net.add_client_with_codec("room", AV, Some(codec));
        let b = net.add_client_with_codec("room", &[], None);
        net.run_for(Duration::from_secs(1));
        send_media(&mut net, &[a], 30);
        let got = net.payloads_from(b, a, TrackKind::Video);
        assert!(got.iter().all(|p| intact(p)));
        assert!(
            seqs(&got).len() >= 29,
            "{codec:?}: {} packets",
            seqs(&got).len()
        );
    }
}

#[test]
fn subscriber_without_the_publishers_codec_is_skipped_not_broken() {
    use str0m::format::Codec;
    let mut net = SimNet::new(10);
    let a = net.add_client_with_codec("room", AV, Some(Codec::H264));
    let b = net.add_client_with_codec("room", AV, Some(Codec::Vp8));
    net.run_for(Duration::from_secs(1));
    send_media(&mut net, &[a, b], 20);
    // Audio (Opus) flows both ways; H.264 cannot reach a VP8-only subscriber and is counted.
    assert!(seqs(&net.payloads_from(b, a, TrackKind::Audio)).len() >= 19);
    assert!(seqs(&net.payloads_from(a, b, TrackKind::Audio)).len() >= 19);
    assert!(net.payloads_from(b, a, TrackKind::Video).is_empty());
    let not_writable = net
        .sfu
        .metrics()
        .dropped_packets
        .with_label_values(&["not_writable"])
        .get();
    assert!(not_writable >= 19, "{not_writable}");
}

#[test]
fn observer_receives_but_its_tracks_are_refused() {
    use huizhen_signaling::protocol::ErrorCode;
    let mut net = SimNet::new(11);
    let a = net.add_client("room", AV);
    let o = net.add_observer("room", AV);
    net.run_for(Duration::from_secs(1));
    send_media(&mut net, &[a, o], 20);
    assert!(
        seqs(&net.payloads_from(o, a, TrackKind::Video)).len() >= 19,
        "observer receives"
    );
    assert!(
        net.mids_from(a, o, TrackKind::Video).is_empty(),
        "observer's video not forwarded"
    );
    assert!(net.payloads_from(a, o, TrackKind::Audio).is_empty());
    assert!(net.clients[o].signals.iter().any(|s| matches!(
        s,
        ServerMessage::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    )));
    assert_eq!(net.sfu.track_counts().0, 2, "only a's tracks are published");
}

#[test]
fn closing_a_room_removes_everyone_in_it_only() {
    let mut net = SimNet::new(12);
    let a = net.add_client("consult-c1", AV);
    let b = net.add_client("consult-c1", AV);
    let c = net.add_client("elsewhere", AV);
    net.run_for(Duration::from_millis(500));
    let now = net.now;
    net.sfu.close_room(now, "consult-c1");
    net.route_outputs();
    assert_eq!(net.clients[a].removed, Some(LeaveReason::RoomClosed));
    assert_eq!(net.clients[b].removed, Some(LeaveReason::RoomClosed));
    assert_eq!(net.clients[c].removed, None);
    assert_eq!(net.sfu.participant_count(), 1);
    assert_eq!(net.sfu.room_count(), 1);
}

#[test]
fn recorder_keyframe_requests_retry_sooner_than_subscribers_may() {
    let mut net = SimNet::new(14);
    let a = net.add_client("room", AV);
    let _b = net.add_client("room", &[]);
    net.run_for(Duration::from_secs(1));
    let a_id = net.clients[a].id;
    let now = net.now;
    net.sfu.set_recorded(now, a_id, true).unwrap();
    net.route_outputs();
    send_media(&mut net, &[a], 2);
    let track = net
        .recorded
        .iter()
        .find(|r| r.kind == MediaKind::Video)
        .expect("video recorded")
        .track;
    net.run_for(Duration::from_millis(600));
    let ask = |net: &mut SimNet| {
        let now = net.now;
        net.sfu.request_track_keyframe(now, a_id, track);
        net.route_outputs();
    };
    // Every RECORDER_KEYFRAME_RETRY (100 ms), well inside the 500 ms subscriber throttle.
    let before = net.clients[a].keyframe_requests;
    for _ in 0..4 {
        ask(&mut net);
        net.run_for(super::RECORDER_KEYFRAME_RETRY);
    }
    assert_eq!(net.clients[a].keyframe_requests - before, 4);
    // Closer together than that: absorbed.
    let before = net.clients[a].keyframe_requests;
    let throttled = net.sfu.metrics().keyframe_requests_throttled.get();
    ask(&mut net);
    net.run_for(Duration::from_millis(30));
    ask(&mut net);
    net.run_for(Duration::from_millis(30));
    assert_eq!(net.clients[a].keyframe_requests - before, 1);
    assert_eq!(
        net.sfu.metrics().keyframe_requests_throttled.get(),
        throttled + 1
    );
}

#[test]
fn only_consenting_participants_are_handed_to_the_recorder() {
    let mut net = SimNet::new(13);
    let a = net.add_client("room", AV);
    let b = net.add_client("room", AV);
    net.run_for(Duration::from_secs(1));
    let (a_id, b_id) = (net.clients[a].id, net.clients[b].id);
    let keyframes_before = net.clients[a].keyframe_requests;
    let now = net.now;
    net.sfu.set_recorded(now, a_id, true).unwrap();
    net.route_outputs();
    net.run_for(Duration::from_millis(100));
    assert!(
        net.clients[a].keyframe_requests > keyframes_before,
        "recording starts at a keyframe"
    );
    send_media(&mut net, &[a, b], 10);
    assert!(
        net.recorded.iter().all(|r| r.participant == a_id),
        "b did not consent"
    );
    let video = net
        .recorded
        .iter()
        .filter(|r| r.kind == MediaKind::Video)
        .count();
    let audio = net
        .recorded
        .iter()
        .filter(|r| r.kind == MediaKind::Audio)
        .count();
    assert_eq!((audio, video), (10, 10));
    let first = &net.recorded[0];
    assert!(
        intact(&first.payload) && first.payload[0] == a as u8,
        "payload untouched"
    );
    assert!(net
        .recorded
        .iter()
        .any(|r| r.codec == str0m::format::Codec::Vp8 && r.clock_rate == 90_000));
    // Withdrawn: nothing more is recorded.
    let now = net.now;
    net.sfu.set_recorded(now, a_id, false).unwrap();
    let count = net.recorded.len();
    send_media_from(&mut net, &[a], 100, 5);
    assert_eq!(net.recorded.len(), count);
    assert_eq!(
        net.sfu.set_recorded(now, super::ParticipantId(999), true),
        Err(super::SfuError::UnknownParticipant)
    );
    let _ = b_id;
}

fn grant(token: &str) -> huizhen_signaling::protocol::ResumeGrant {
    huizhen_signaling::protocol::ResumeGrant {
        token: token.into(),
        grace_seconds: 10,
    }
}

#[test]
fn a_detached_participant_keeps_its_media_and_resumes_into_the_current_state() {
    let config = super::SfuConfig {
        resume_grace: Duration::from_secs(10),
        ..super::sim::sim_config()
    };
    let mut net = SimNet::with_config(11, config);
    let a = net.add_client("room", AV);
    let b = net.add_client("room", AV);
    net.run_for(Duration::from_secs(1));
    send_media(&mut net, &[a, b], 10);
    let b_id = net.clients[b].id;

    // B's socket drops: the core keeps B, and media keeps flowing both ways.
    net.clients[b].signaling_down = true;
    net.sfu.detach(net.now, b_id);
    assert_eq!(net.sfu.metrics().detached.get(), 1);
    let before = (
        seqs(&net.payloads_from(b, a, TrackKind::Video)).len(),
        seqs(&net.payloads_from(a, b, TrackKind::Video)).len(),
    );
    send_media_from(&mut net, &[a, b], 10, 250); // 5 s, within the grace
    let after = (
        seqs(&net.payloads_from(b, a, TrackKind::Video)).len(),
        seqs(&net.payloads_from(a, b, TrackKind::Video)).len(),
    );
    assert!(
        after.0 >= before.0 + 240 && after.1 >= before.1 + 240,
        "media while detached: {before:?} -> {after:?}"
    );
    assert!(net.clients[b].removed.is_none());
    assert!(!net.clients[a]
        .signals
        .iter()
        .any(|m| matches!(m, ServerMessage::ParticipantLeft { .. })));

    // Meanwhile C joins and publishes: B misses C's arrival, C's tracks and the offer.
    let c = net.add_client("room", AV);
    net.run_for(Duration::from_secs(1));
    assert!(
        net.clients[b].signals_lost >= 3,
        "{}",
        net.clients[b].signals_lost
    );

    // B comes back: the state as it is now, then the offer it missed.
    net.clients[b].signaling_down = false;
    let seen = net.clients[b].signals.len();
    net.sfu
        .resume(net.now, b_id, grant("next"))
        .expect("resumed");
    net.route_outputs();
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.sfu.metrics().detached.get(), 0);
    assert_eq!(net.sfu.metrics().resumes.get(), 1);
    let got = &net.clients[b].signals[seen..];
    let Some(ServerMessage::Resumed {
        participant_id,
        participants,
        tracks,
        resume,
        ..
    }) = got.first()
    else {
        panic!("resumed first, got {got:?}");
    };
    assert_eq!(participant_id, &b_id.to_string());
    assert_eq!(resume.token, "next");
    let mut others: Vec<&str> = participants.iter().map(|p| p.id.as_str()).collect();
    others.sort_unstable();
    let mut want = vec![net.clients[a].id.to_string(), net.clients[c].id.to_string()];
    want.sort_unstable();
    assert_eq!(others, want);
    // A's two tracks were open before; C's come with the offer that follows.
    let a_id = net.clients[a].id.to_string();
    assert_eq!(tracks.len(), 2);
    assert!(tracks.iter().all(|t| t.participant_id == a_id));
    let c_id = net.clients[c].id.to_string();
    let c_added = got
        .iter()
        .filter(|m| matches!(m, ServerMessage::TrackAdded { participant_id, .. } if *participant_id == c_id))
        .count();
    assert_eq!(c_added, 2, "{got:?}");
    assert!(got.iter().any(|m| matches!(m, ServerMessage::Offer { .. })));
    // The offer was answered: C's media reaches B.
    send_media(&mut net, &[c], 50);
    assert!(seqs(&net.payloads_from(b, c, TrackKind::Audio)).len() >= 45);
    assert!(seqs(&net.payloads_from(b, c, TrackKind::Video)).len() >= 45);
    // Nobody saw B leave or come back.
    let b_name = b_id.to_string();
    let seen_b = |m: &ServerMessage| match m {
        ServerMessage::ParticipantLeft { participant_id } => *participant_id == b_name,
        ServerMessage::ParticipantJoined { participant } => participant.id == b_name,
        _ => false,
    };
    assert_eq!(
        net.clients[a].signals.iter().filter(|m| seen_b(m)).count(),
        1,
        "A saw B arrive once, and never leave"
    );
    assert!(!net.clients[c].signals.iter().any(seen_b));

    // Dropped again and never resumed: removed once the grace is over.
    net.clients[b].signaling_down = true;
    net.sfu.detach(net.now, b_id);
    net.run_for(Duration::from_secs(9));
    assert!(net.clients[b].removed.is_none(), "kept within the grace");
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.clients[b].removed, Some(LeaveReason::SignalingClosed));
    assert_eq!(net.sfu.metrics().detached.get(), 0);
    assert!(net.clients[a]
        .signals
        .iter()
        .any(|m| matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == b_id.to_string())));
    assert!(net.sfu.resume(net.now, b_id, grant("late")).is_err());
}

#[test]
fn without_a_resume_grace_a_dropped_socket_leaves_at_once() {
    let config = super::SfuConfig {
        resume_grace: Duration::ZERO,
        ..super::sim::sim_config()
    };
    let mut net = SimNet::with_config(12, config);
    let a = net.add_client("room", AV);
    let b = net.add_client("room", AV);
    net.run_for(Duration::from_secs(1));
    net.sfu.detach(net.now, net.clients[b].id);
    net.route_outputs();
    assert_eq!(net.clients[b].removed, Some(LeaveReason::SignalingClosed));
    assert!(net.clients[a]
        .signals
        .iter()
        .any(|m| matches!(m, ServerMessage::ParticipantLeft { .. })));
}

#[test]
fn an_ice_restart_keeps_the_participant_and_its_tracks_and_retires_the_old_credentials() {
    let mut net = SimNet::new(13);
    let a = net.add_client("room", AV);
    let b = net.add_client("room", AV);
    net.run_for(Duration::from_secs(1));
    send_media(&mut net, &[a, b], 10);
    let b_id = net.clients[b].id;
    let mids_before = net.mids_from(b, a, TrackKind::Video);
    let (ufrags_before, _) = net.sfu.demux_entries();
    let before = seqs(&net.payloads_from(b, a, TrackKind::Video)).len();

    net.restart_ice(b);
    assert_eq!(net.sfu.metrics().ice_restarts.get(), 1);
    // Both credentials route while the new ones have not carried media yet.
    assert_eq!(net.sfu.demux_entries().0, ufrags_before + 1);
    send_media_from(&mut net, &[a, b], 10, 100);
    let after = seqs(&net.payloads_from(b, a, TrackKind::Video)).len();
    assert!(
        after >= before + 95,
        "media across the restart: {before} -> {after}"
    );
    let back = seqs(&net.payloads_from(a, b, TrackKind::Video)).len();
    assert!(
        back >= 105,
        "B's media reaches A across the restart: {back}"
    );
    // The new credentials carried checks and media: the old ufrag is forgotten.
    assert_eq!(net.sfu.demux_entries().0, ufrags_before);
    assert_eq!(net.clients[b].id, b_id);
    assert_eq!(net.mids_from(b, a, TrackKind::Video), mids_before);
    assert!(net.clients[b].removed.is_none());
    assert!(!net.clients[a]
        .signals
        .iter()
        .any(|m| matches!(m, ServerMessage::ParticipantLeft { .. })));
    // Leaving forgets every ufrag.
    net.sfu.leave(net.now, b_id, LeaveReason::Left);
    assert_eq!(net.sfu.demux_entries().0, ufrags_before - 1);
}

/// The longest time between two packets `client` received from `publisher` (audio and video)
/// after `from`, and how many arrived then.
fn receive_gap(
    net: &SimNet,
    client: usize,
    publisher: usize,
    from: std::time::Instant,
) -> (Duration, usize) {
    let mut mids = net.mids_from(client, publisher, TrackKind::Video);
    mids.extend(net.mids_from(client, publisher, TrackKind::Audio));
    let times: Vec<std::time::Instant> = net.clients[client]
        .received
        .iter()
        .filter(|r| mids.contains(&r.mid) && r.at >= from)
        .map(|r| r.at)
        .collect();
    let mut gap = times
        .first()
        .map_or(Duration::MAX, |t| t.duration_since(from));
    for w in times.windows(2) {
        gap = gap.max(w[1].duration_since(w[0]));
    }
    (gap, times.len())
}

#[test]
fn after_a_nat_rebinding_the_server_follows_the_media_to_the_new_address() {
    let mut net = SimNet::new(21);
    let a = net.add_client("room", AV);
    let b = net.add_client("room", AV);
    net.run_for(Duration::from_secs(1));
    send_media(&mut net, &[a, b], 10);
    let b_id = net.clients[b].id;
    // B's carrier moves it to another public address: everything it sends now comes from
    // there, and only what is sent there reaches it.
    net.clients[b].nat_addr = Some("127.99.0.2:40000".parse().unwrap());
    let t0 = net.now;
    send_media_from(&mut net, &[a, b], 10, 300);
    let (down_gap, down) = receive_gap(&net, b, a, t0);
    let (up_gap, up) = receive_gap(&net, a, b, t0);
    eprintln!("NAT rebinding: B receives again after a gap of {down_gap:?} ({down} packets), A hears B after {up_gap:?} ({up} packets)");
    assert!(
        down >= 400,
        "A's media reaches B at its new address: {down}"
    );
    assert!(up >= 400, "B's media from its new address reaches A: {up}");
    // The server follows as soon as the new address has been heard from with the ICE
    // credentials (B's next consent check) and its media arrives there: within the client's
    // check interval plus the latch's silence, far below the participant's timeout.
    assert!(
        down_gap < super::sim::sim_config().peer_timeout,
        "B's downlink came back before the peer timeout: {down_gap:?}"
    );
    // B's media is taken from its new address on its SRTP's word: A hears it at once (in
    // virtual time, the next packet), without waiting for that check.
    assert_eq!(net.sfu.metrics().media_source_moves.get(), 1);
    assert!(
        up_gap < Duration::from_millis(100),
        "A heard B again with its next packets: {up_gap:?}"
    );
    assert_eq!(net.clients[b].id, b_id);
    assert!(net.clients[b].removed.is_none(), "B was not removed");
    assert!(!net.clients[a]
        .signals
        .iter()
        .any(|m| matches!(m, ServerMessage::ParticipantLeft { .. })));
}

#[test]
fn a_renewed_session_keeps_the_participant_its_track_ids_and_its_subscriptions() {
    let mut net = SimNet::new(23);
    let a = net.add_client("room", AV);
    let b = net.add_client("room", AV);
    net.run_for(Duration::from_secs(1));
    send_media(&mut net, &[a, b], 10);
    let b_id = net.clients[b].id;
    let tracks_of_b = |net: &SimNet| {
        let pid = b_id.to_string();
        net.clients[a]
            .signals
            .iter()
            .filter_map(|m| match m {
                ServerMessage::TrackAdded {
                    participant_id,
                    track_id,
                    mid,
                    ..
                } if *participant_id == pid => Some((track_id.clone(), mid.clone())),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let before = tracks_of_b(&net);
    assert_eq!(before.len(), 2);
    let a_signals = net.clients[a].signals.len();
    let subscribed = |net: &SimNet| {
        net.sfu.metrics().kind(true).subscribed.get()
            + net.sfu.metrics().kind(false).subscribed.get()
    };
    let subscribed_before = subscribed(&net);
    let b_mark = net.clients[b].received.len();
    let a_mark = net.clients[a].received.len();

    // B's network changes and its page replaces the peer connection.
    let t0 = net.now;
    net.renew_session(b, "127.99.0.3:41000".parse().unwrap());
    send_media_from(&mut net, &[a, b], 10, 150);

    // A: the same participant and tracks on the same mids, nothing removed or added.
    assert_eq!(tracks_of_b(&net), before);
    assert!(
        !net.clients[a].signals[a_signals..].iter().any(|m| matches!(
            m,
            ServerMessage::ParticipantLeft { .. }
                | ServerMessage::TrackRemoved { .. }
                | ServerMessage::ParticipantJoined { .. }
        ))
    );
    let (up_gap, up) = receive_gap(&net, a, b, t0);
    assert!(up >= 250, "A hears B's new session: {up} packets");
    let back = seqs(&net.payloads_from(a, b, TrackKind::Audio));
    assert!(back.contains(&149), "the last payload arrived: {back:?}");
    // The outgoing numbering continues across the new source: no jump on A's m-lines.
    let mut mids = net.mids_from(a, b, TrackKind::Audio);
    mids.extend(net.mids_from(a, b, TrackKind::Video));
    assert_eq!(mids.len(), 2);
    for mid in mids {
        let seqs: Vec<u16> = net.clients[a].received[a_mark..]
            .iter()
            .filter(|r| r.mid == mid)
            .map(|r| r.seq)
            .collect();
        assert!(seqs.len() > 100, "{} packets", seqs.len());
        let worst = seqs
            .windows(2)
            .map(|w| w[1].wrapping_sub(w[0]))
            .max()
            .unwrap();
        assert!(
            worst <= 2,
            "sequence numbers continue on mid {mid}: a step of {worst}"
        );
    }
    // B: the room's tracks offered anew on its fresh session, and received there.
    let b_after: Vec<&super::sim::Received> = net.clients[b].received[b_mark..].iter().collect();
    assert!(
        b_after.len() > 200,
        "B receives A on its new session: {}",
        b_after.len()
    );
    assert_eq!(net.clients[b].id, b_id);
    assert!(net.clients[b].removed.is_none());
    assert!(
        net.clients[b]
            .signals
            .iter()
            .any(|m| matches!(m, ServerMessage::Answer { renewed: true, .. })),
        "the renewal's answer says so"
    );
    assert_eq!(net.sfu.metrics().session_renewals.get(), 1);
    assert_eq!(subscribed(&net), subscribed_before);
    assert_eq!(net.sfu.demux_entries().0, 2, "one ufrag per participant");
    eprintln!("renewal: A hears B again after a gap of {up_gap:?} ({up} packets)");

    // A renewal that drops the camera unpublishes it (A is told), the microphone stays.
    net.clients[b]
        .publish_mids
        .retain(|(k, _)| *k == MediaKind::Audio);
    net.renew_session(b, "127.99.0.4:41000".parse().unwrap());
    net.run_for(Duration::from_millis(500));
    assert!(net.mids_from(a, b, TrackKind::Video).is_empty());
    assert_eq!(net.mids_from(a, b, TrackKind::Audio).len(), 1);
    // Bad SDP changes nothing.
    let err = net
        .sfu
        .handle_signal(
            net.now,
            b_id,
            super::SignalInput::Renew {
                sdp: "v=0".into(),
                sources: Default::default(),
            },
        )
        .unwrap_err();
    assert!(matches!(err, super::SfuError::InvalidSdp(_)), "{err:?}");
    assert_eq!(net.sfu.metrics().session_renewals.get(), 2);
}

#[test]
fn a_renewed_simulcast_publisher_is_forwarded_again_from_its_new_keyframes() {
    let mut net = SimNet::new(24);
    let a = net.add_simulcast_client("room");
    let b = net.add_simulcast_client("room");
    net.run_media(Duration::from_secs(3));
    let video = net.mids_from(a, b, TrackKind::Video);
    assert_eq!(video.len(), 1);
    let mark = net.clients[a].received.len();
    let t0 = net.now;
    net.renew_session(b, "127.99.0.5:41000".parse().unwrap());
    net.run_media(Duration::from_secs(3));
    let after = received_mids(&net, a, mark);
    let frames = net.clients[a].received[mark..]
        .iter()
        .filter(|r| r.mid == video[0] && r.marker && r.at > t0 + Duration::from_secs(1))
        .count();
    assert!(
        frames > 30,
        "A decodes B's camera from the new session on the same m-line: {frames} frames, {after:?}"
    );
    assert_eq!(net.mids_from(a, b, TrackKind::Video), video);
    let (gap, _) = receive_gap(&net, a, b, t0);
    eprintln!("simulcast renewal: A hears B again after {gap:?}");
}

#[test]
fn rtp_from_an_unchecked_address_counts_only_if_it_authenticates_and_tries_are_bounded() {
    let mut net = SimNet::new(22);
    let a = net.add_client("room", AV);
    let b = net.add_client("room", AV);
    net.run_for(Duration::from_secs(1));
    send_media(&mut net, &[a, b], 10);
    let b_id = net.clients[b].id;
    let ssrc = *net
        .sfu
        .media_owners
        .iter()
        .find(|(_, owner)| **owner == b_id)
        .expect("B's SSRC is known")
        .0;
    let a_before = net.clients[a].received.len();
    let unknown = |net: &SimNet| {
        net.sfu
            .metrics()
            .dropped_packets
            .with_label_values(&["unknown_source"])
            .get()
    };
    let dropped_before = unknown(&net);
    // A stranger who learnt B's SSRC sends RTP with it from its own address: 200 packets
    // within one virtual second.
    let stranger: SocketAddr = "127.66.0.1:4000".parse().unwrap();
    for seq in 0..200u16 {
        let mut forged = vec![0x80, 96];
        forged.extend_from_slice(&seq.to_be_bytes());
        forged.extend_from_slice(&[0, 0, 0, 1]);
        forged.extend_from_slice(&ssrc.to_be_bytes());
        forged.extend_from_slice(&[0xab; 120]);
        net.inject(stranger, &forged);
    }
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        net.clients[a].received.len(),
        a_before,
        "nothing of the stranger's reached A"
    );
    assert_eq!(net.sfu.metrics().media_source_moves.get(), 0);
    let p = net.sfu.participants.get(&b_id).unwrap();
    assert_eq!(p.media_source, None, "the stranger's address is not taken");
    // Past the per-second budget the packets are not even tried.
    let beyond = 200 - u64::from(super::participant::UNVERIFIED_TRIES_PER_SECOND);
    let dropped = unknown(&net) - dropped_before;
    assert!(dropped >= beyond, "{dropped} dropped untried");
    // B goes on as before.
    send_media_from(&mut net, &[b], 10, 20);
    assert!(net.clients[a].received.len() >= a_before + 40);
}

/// Packets `rx` received since `since` (an index into its `received`), by mid.
fn received_mids(
    net: &SimNet,
    rx: usize,
    since: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut mids = std::collections::BTreeMap::new();
    for r in &net.clients[rx].received[since..] {
        *mids.entry(r.mid.to_string()).or_default() += 1;
    }
    mids
}

#[test]
fn a_receive_only_viewer_gets_the_rooms_tracks_on_its_own_m_lines_and_the_next_publisher_takes_them_over(
) {
    let mut net = SimNet::new(41);
    let member = net.add_client("lecture", &[]);
    let lecturer = net.add_simulcast_client("lecture");
    let viewer = net.add_one_offer_client(
        "lecture",
        &[MediaKind::Audio, MediaKind::Video],
        PeerMode::ReceiveOnly,
    );
    net.run_media(Duration::from_secs(3));
    let first = received_mids(&net, viewer, 0);
    assert_eq!(
        first.len(),
        2,
        "audio and video on the viewer's two m-lines: {first:?}"
    );
    assert!(first.values().all(|n| *n > 20), "{first:?}");
    // One offer, one answer: the server never offers the viewer anything, and the room is
    // not told of it (an audience is not a list of participants).
    let viewer_id = net.clients[viewer].id.to_string();
    let offers = |net: &SimNet, c: usize| {
        net.clients[c]
            .signals
            .iter()
            .filter(|m| matches!(m, ServerMessage::Offer { .. }))
            .count()
    };
    assert_eq!(offers(&net, viewer), 0);
    for c in [member, lecturer] {
        assert!(!net.clients[c].signals.iter().any(|m| matches!(
            m,
            ServerMessage::ParticipantJoined { participant } if participant.id == viewer_id
        )));
    }
    // The lecturer leaves, another one publishes: the same m-lines carry the new tracks.
    let lecturer_id = net.clients[lecturer].id;
    net.sfu.leave(net.now, lecturer_id, LeaveReason::Left);
    net.run_for(Duration::from_millis(500));
    let second = net.add_simulcast_client("lecture");
    let mark = net.clients[viewer].received.len();
    net.run_media(Duration::from_secs(3));
    let after = received_mids(&net, viewer, mark);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        first.keys().collect::<Vec<_>>(),
        "the second lecturer on the same m-lines: {after:?}"
    );
    assert!(after.values().all(|n| *n > 20), "{after:?}");
    assert_eq!(offers(&net, viewer), 0);
    // The member, a full client, was offered the second lecturer's tracks as usual.
    assert_eq!(
        net.mids_from(member, second, TrackKind::Video).len(),
        1,
        "the member subscribes as before"
    );
    // A one-offer publisher is offered nothing either.
    let whip = net.add_one_offer_client("lecture", &[MediaKind::Video], PeerMode::PublishOnly);
    net.run_media(Duration::from_secs(1));
    assert_eq!(offers(&net, whip), 0);
    // The viewer's two slots are counted as subscriptions, and given back when it leaves.
    let subscribed = |net: &SimNet| {
        net.sfu.metrics().kind(true).subscribed.get()
            + net.sfu.metrics().kind(false).subscribed.get()
    };
    let before = subscribed(&net);
    let viewer_id = net.clients[viewer].id;
    net.sfu.leave(net.now, viewer_id, LeaveReason::Left);
    assert_eq!(subscribed(&net), before - 2);
}

#[test]
fn an_ice_restart_from_an_sdp_fragment_moves_a_one_offer_peer_to_new_credentials_and_media_carries_on(
) {
    let mut net = SimNet::new(43);
    let _lecturer = net.add_simulcast_client("lecture");
    let viewer = net.add_one_offer_client(
        "lecture",
        &[MediaKind::Audio, MediaKind::Video],
        PeerMode::ReceiveOnly,
    );
    net.run_media(Duration::from_secs(2));
    let id = net.clients[viewer].id;
    let before = received_mids(&net, viewer, 0);
    assert_eq!(before.len(), 2, "{before:?}");
    // A bad candidate is refused before anything changes; a fragment with the current
    // credentials is a trickle, not a restart.
    let current = {
        let c = &mut net.clients[viewer];
        c.rtc.direct_api().local_ice_credentials()
    };
    assert!(matches!(
        net.sfu
            .ice_fragment(net.now, id, None, &["candidate:nonsense".into()]),
        Err(super::SfuError::InvalidCandidate(_))
    ));
    assert_eq!(
        net.sfu
            .ice_fragment(
                net.now,
                id,
                Some((current.ufrag.clone(), current.pass.clone())),
                &[]
            )
            .unwrap(),
        None
    );
    // The client restarts (a WHEP player's PATCH with new credentials and its candidate).
    let (local, candidate, server_old) = {
        let c = &mut net.clients[viewer];
        let server_old = c.rtc.direct_api().remote_ice_credentials().unwrap();
        let local = c.rtc.direct_api().ice_restart(server_old.clone());
        let candidate = c.rtc.direct_api().local_candidates()[0].to_sdp_string();
        (local, candidate, server_old)
    };
    let answer = net
        .sfu
        .ice_fragment(net.now, id, Some((local.ufrag, local.pass)), &[candidate])
        .unwrap()
        .expect("new credentials restart ICE");
    assert_ne!(answer.ufrag, server_old.ufrag);
    assert!(!answer.candidates.is_empty());
    {
        let c = &mut net.clients[viewer];
        c.rtc
            .direct_api()
            .set_remote_ice_credentials(str0m::IceCreds {
                ufrag: answer.ufrag.clone(),
                pass: answer.pwd.clone(),
            });
        for cand in &answer.candidates {
            c.rtc
                .add_remote_candidate(str0m::Candidate::from_sdp_string(cand).unwrap());
        }
    }
    net.route_outputs();
    assert_eq!(net.sfu.metrics().ice_restarts.get(), 1);
    let mark = net.clients[viewer].received.len();
    net.run_media(Duration::from_secs(3));
    let after = received_mids(&net, viewer, mark);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    assert!(
        after.values().all(|n| *n > 50),
        "media after the restart: {after:?}"
    );
    // The old server ufrag is forgotten once the new one carries media.
    assert_eq!(net.sfu.demux_entries().0, 2, "one ufrag per participant");
}

#[test]
fn a_participant_whose_media_stops_arriving_is_asked_once_to_restart_ice_and_comes_back() {
    let mut net = SimNet::new(44);
    let a = net.add_simulcast_client("room");
    let b = net.add_simulcast_client("room");
    net.run_media(Duration::from_secs(2));
    let asks = |net: &SimNet| {
        net.clients[b]
            .signals
            .iter()
            .filter(|m| matches!(m, ServerMessage::RestartIce {}))
            .count()
    };
    assert_eq!(asks(&net), 0, "no ask while media flows");
    // b's uplink breaks (its downlink still works: its own page would see nothing wrong).
    net.clients[b].mute_network = true;
    net.run_media(Duration::from_millis(1600));
    assert_eq!(asks(&net), 1, "asked after a second of silence");
    net.run_media(Duration::from_millis(1000));
    assert_eq!(asks(&net), 1, "once per silence");
    assert_eq!(net.sfu.metrics().ice_restart_requests.get(), 1);
    // It restarts ICE over a path that works again: its media reaches a, nobody left.
    net.clients[b].mute_network = false;
    net.restart_ice(b);
    let mark = net.clients[a].received.len();
    net.run_media(Duration::from_secs(2));
    let from_b = net.mids_from(a, b, TrackKind::Video);
    let got = net.clients[a].received[mark..]
        .iter()
        .filter(|r| from_b.contains(&r.mid))
        .count();
    assert!(got > 20, "b's video reaches a again: {got}");
    assert!(net.clients[b].removed.is_none());
    assert_eq!(asks(&net), 1);
}
