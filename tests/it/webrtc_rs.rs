//! End-to-end media through the SFU with webrtc-rs (0.21) clients.
//!
//! Clients join through `/ws`, publish synthetic Opus + VP8 RTP over real UDP on 127.0.0.1 and
//! check what reaches them through the server: packet counts per publisher and kind, payload
//! integrity (every payload carries publisher, kind, a counter and a checksum, see
//! `common::media`), and that each stream arrives on the mid its `track_added` announced.
//!
//! `RUST_LOG=debug cargo test --test webrtc_rs -- --nocapture` shows server and webrtc-rs logs.

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::media::{self, Kind};
use common::rs_client::{CandidateMode, RemoteTrack, RsPeer, Sent};
use huizhen_signaling::protocol::{ServerMessage, TrackKind};

/// Whole-test bound.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Time for renegotiation steps (track announcements, answers).
const SIGNALING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long media is measured.
const MEDIA_WINDOW: Duration = Duration::from_secs(3);
/// Share of the packets sent that every receiver must get.
const MIN_DELIVERY: f64 = 0.8;
/// Opus packet interval (50 packets/s).
const OPUS_PTIME: Duration = Duration::from_millis(20);
/// Time for the last packets sent to arrive.
const DRAIN: Duration = Duration::from_millis(500);

fn track_kind(kind: Kind) -> TrackKind {
    match kind {
        Kind::Audio => TrackKind::Audio,
        Kind::Video => TrackKind::Video,
    }
}

/// `who` was announced exactly one audio and one video track of `publisher`.
async fn expect_tracks_of(who: &RsPeer, publisher: &RsPeer) -> Vec<RemoteTrack> {
    let tracks = who
        .wait_tracks_of(&publisher.participant_id, 2, SIGNALING_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut kinds: Vec<TrackKind> = tracks.iter().map(|t| t.kind).collect();
    kinds.sort_by_key(|k| *k == TrackKind::Video);
    assert_eq!(
        kinds,
        vec![TrackKind::Audio, TrackKind::Video],
        "{} should see one audio and one video track of {}: {tracks:?}",
        who.name,
        publisher.name
    );
    tracks
}

/// Every stream `receiver` got arrived on a mid announced (by `track_added`) for the publisher
/// and kind its payloads carry.
async fn check_routing(receiver: &RsPeer, publishers: &[&RsPeer]) {
    let mids = receiver.track_mids().await;
    let announced = receiver.remote_tracks();
    let by_index: HashMap<u8, &RsPeer> = publishers.iter().map(|p| (p.index, *p)).collect();
    for (track_id, stats) in receiver.rx_stats() {
        for (&publisher, seqs) in &stats.seqs {
            if seqs.is_empty() {
                continue;
            }
            let publisher = by_index.get(&publisher).unwrap_or_else(|| {
                panic!(
                    "{} received packets of unknown publisher {publisher}",
                    receiver.name
                )
            });
            let mid = mids.get(&track_id).unwrap_or_else(|| {
                panic!(
                    "{}: no transceiver for received track {track_id}; {}",
                    receiver.name,
                    receiver.diagnostics()
                )
            });
            let remote = announced.get(mid).unwrap_or_else(|| {
                panic!(
                    "{}: media of {} arrived on mid {mid} that no track_added announced: {announced:?}",
                    receiver.name, publisher.name
                )
            });
            assert_eq!(
                remote.participant_id, publisher.participant_id,
                "{}: mid {mid} was announced for {} but carries {}'s media",
                receiver.name, remote.participant_id, publisher.name
            );
            let kind = Kind::parse(&stats.kind).expect("audio or video track");
            assert_eq!(
                remote.kind,
                track_kind(kind),
                "{}: mid {mid} kind announced {:?}, received {kind:?}",
                receiver.name,
                remote.kind
            );
        }
    }
}

/// The `m=` section of `sdp` with `a=mid:{mid}`, if any.
fn media_section<'a>(sdp: &'a str, mid: &str) -> Option<&'a str> {
    let needle = format!("a=mid:{mid}\r\n");
    let needle_lf = format!("a=mid:{mid}\n");
    sdp.split("m=")
        .skip(1)
        .find(|s| s.contains(&needle) || s.contains(&needle_lf))
}

/// Wait until every receiver has media of both kinds from every other publisher.
async fn wait_media_flowing(peers: &[&RsPeer], min: usize) {
    for receiver in peers {
        for publisher in peers {
            if receiver.index != publisher.index {
                receiver
                    .wait_received(publisher.index, min, SIGNALING_TIMEOUT)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("media from {} to {}: {e:#}", publisher.name, receiver.name)
                    });
            }
        }
    }
}

/// Each receiver got at least `MIN_DELIVERY` of the packets each other publisher sent between
/// the two counter snapshots in `windows`.
fn check_delivery(what: &str, peers: &[&RsPeer], windows: &HashMap<u8, (Sent, Sent)>) {
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for receiver in peers {
        for publisher in peers {
            if receiver.index == publisher.index {
                continue;
            }
            let (start, end) = windows[&publisher.index];
            for kind in [Kind::Audio, Kind::Video] {
                let sent = end.of(kind) - start.of(kind);
                let got = receiver.received_in(publisher.index, kind, start.of(kind)..end.of(kind));
                let ratio = got as f64 / f64::from(sent.max(1));
                let line = format!(
                    "{} <- {} {kind:?}: {got}/{sent} ({:.1}%)",
                    receiver.name,
                    publisher.name,
                    ratio * 100.0,
                );
                if sent == 0 || ratio < MIN_DELIVERY {
                    failures.push(line.clone());
                }
                report.push(line);
            }
        }
    }
    println!("delivery ({what}):\n  {}", report.join("\n  "));
    assert!(
        failures.is_empty(),
        "delivery ({what}) below {:.0}%:\n  {}\n{}",
        MIN_DELIVERY * 100.0,
        failures.join("\n  "),
        peers
            .iter()
            .map(|p| p.diagnostics())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn check_clean(peers: &[&RsPeer]) {
    for p in peers {
        assert_eq!(
            p.corrupt_packets(),
            0,
            "{} received corrupted payloads: {}",
            p.name,
            p.diagnostics()
        );
        assert!(
            p.problems().is_empty(),
            "{} ran into problems: {:?}\n{}",
            p.name,
            p.problems(),
            p.diagnostics()
        );
    }
}

/// Publish on all `peers` until media flows everywhere, then measure a `MEDIA_WINDOW` and
/// check delivery. Returns the running publishers.
async fn run_media(peers: &[&RsPeer]) -> Vec<(u8, common::rs_client::MediaHandle)> {
    let handles: Vec<_> = peers
        .iter()
        .map(|p| (p.index, p.start_media(OPUS_PTIME)))
        .collect();
    // Warm-up: subscriptions and the first key frames settle before the window opens.
    wait_media_flowing(peers, 5).await;
    let starts: HashMap<u8, Sent> = handles.iter().map(|(i, h)| (*i, h.sent())).collect();
    tokio::time::sleep(MEDIA_WINDOW).await;
    let ends: HashMap<u8, Sent> = handles.iter().map(|(i, h)| (*i, h.sent())).collect();
    // Let the window's last packets arrive.
    tokio::time::sleep(DRAIN).await;
    let windows = starts
        .iter()
        .map(|(i, s)| (*i, (*s, ends[i])))
        .collect::<HashMap<_, _>>();
    check_delivery(
        &format!("{MEDIA_WINDOW:?} window after warm-up"),
        peers,
        &windows,
    );
    handles
}

#[test]
fn payload_marker_round_trip() {
    for (kind, first) in [
        (Kind::Audio, false),
        (Kind::Video, true),
        (Kind::Video, false),
    ] {
        let p = media::build_payload(3, kind, 77, first);
        let m = media::parse_payload(&p, kind).expect("valid payload");
        assert_eq!((m.publisher, m.kind, m.seq), (3, kind, 77));
        let mut bad = p.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        assert!(media::parse_payload(&bad, kind).is_err());
    }
    let key = media::build_payload(0, Kind::Video, 0, true);
    assert_eq!(&key[..1], &[0x10]);
    assert_eq!(&key[4..7], &[0x9d, 0x01, 0x2a]);
    assert!(
        media::parse_payload(&media::build_payload(1, Kind::Audio, 1, false), Kind::Video).is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_webrtc_rs_clients_exchange_audio_and_video() {
    common::init_tracing();
    tokio::time::timeout(TEST_TIMEOUT, two_clients())
        .await
        .expect("test did not finish within 60 s");
}

async fn two_clients() {
    let server = common::start_server().await;
    let http = server.http_addr();
    let room = common::unique_room("rs-two");

    // One client trickles its candidates, the other puts them in the offer.
    let alice = RsPeer::connect_with(http, &room, "alice", 0, CandidateMode::Trickle)
        .await
        .unwrap_or_else(|e| panic!("alice: {e:#}"));
    let bob = RsPeer::connect_with(http, &room, "bob", 1, CandidateMode::InOffer)
        .await
        .unwrap_or_else(|e| panic!("bob: {e:#}"));

    assert!(
        alice.joined_participants.is_empty(),
        "alice joined an empty room"
    );
    assert_eq!(
        bob.joined_participants
            .iter()
            .map(|p| (p.id.as_str(), p.display_name.as_str()))
            .collect::<Vec<_>>(),
        vec![(alice.participant_id.as_str(), "alice")],
        "bob's joined lists alice"
    );
    alice
        .wait_message("participant_joined(bob)", SIGNALING_TIMEOUT, |m| {
            matches!(m, ServerMessage::ParticipantJoined { participant }
                if participant.id == bob.participant_id && participant.display_name == "bob")
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));

    expect_tracks_of(&alice, &bob).await;
    expect_tracks_of(&bob, &alice).await;

    let peers = [&alice, &bob];
    let handles = run_media(&peers).await;
    // Then over the whole run, from each publisher's first packet.
    let mut totals = HashMap::new();
    for (index, h) in handles {
        totals.insert(index, (Sent::default(), h.stop().await));
    }
    tokio::time::sleep(DRAIN).await;
    check_delivery("whole run", &peers, &totals);
    check_routing(&alice, &peers).await;
    check_routing(&bob, &peers).await;
    check_clean(&peers);

    alice.close().await;
    bob.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_and_one_leaves() {
    common::init_tracing();
    tokio::time::timeout(TEST_TIMEOUT, three_clients())
        .await
        .expect("test did not finish within 60 s");
}

async fn three_clients() {
    let server = common::start_server().await;
    let http = server.http_addr();
    let room = common::unique_room("rs-three");

    let a = RsPeer::connect_with(http, &room, "amy", 0, CandidateMode::Trickle)
        .await
        .unwrap_or_else(|e| panic!("amy: {e:#}"));
    let b = RsPeer::connect_with(http, &room, "ben", 1, CandidateMode::InOffer)
        .await
        .unwrap_or_else(|e| panic!("ben: {e:#}"));
    let c = RsPeer::connect_with(http, &room, "cal", 2, CandidateMode::Trickle)
        .await
        .unwrap_or_else(|e| panic!("cal: {e:#}"));
    assert_eq!(
        c.joined_participants.len(),
        2,
        "cal's joined lists amy and ben"
    );

    let all = [&a, &b, &c];
    for receiver in all {
        for publisher in all {
            if receiver.index != publisher.index {
                expect_tracks_of(receiver, publisher).await;
            }
        }
    }

    let handles = run_media(&all).await;
    for p in all {
        check_routing(p, &all).await;
    }

    // cal leaves (after stopping its publishers, as a client would on hang-up).
    let cal_tracks: Vec<(String, Vec<RemoteTrack>)> = [&a, &b]
        .iter()
        .map(|p| {
            let tracks = p
                .remote_tracks()
                .into_values()
                .filter(|t| t.participant_id == c.participant_id)
                .collect();
            (p.name.clone(), tracks)
        })
        .collect();
    let mut handles: HashMap<u8, _> = handles.into_iter().collect();
    handles.remove(&c.index).expect("cal's media").stop().await;
    let answered_before: Vec<u32> = [&a, &b].iter().map(|p| p.offers_answered()).collect();
    let left_at = Instant::now();
    c.leave();

    for (p, (name, tracks)) in [&a, &b].into_iter().zip(&cal_tracks) {
        assert_eq!(&p.name, name);
        assert_eq!(tracks.len(), 2, "{name} had two tracks of cal");
        let deadline = Duration::from_secs(5);
        let left = p
            .wait_message("participant_left(cal)", deadline, |m| {
                matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == c.participant_id)
            })
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let remaining = deadline.saturating_sub(left_at.elapsed());
        for t in tracks {
            p.wait_message(&format!("track_removed({})", t.track_id), remaining, |m| {
                matches!(m, ServerMessage::TrackRemoved { participant_id, track_id, mid }
                    if *participant_id == c.participant_id && *track_id == t.track_id && *mid == t.mid)
            })
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        }
        assert!(
            left_at.elapsed() <= deadline,
            "{name}: track_removed/participant_left took {:?}",
            left_at.elapsed()
        );
        // The protocol sends participant_left after the tracks are removed.
        let log = p.messages();
        let left_pos = log.iter().position(|m| *m == left).expect("logged");
        for t in tracks {
            let removed_pos = log
                .iter()
                .position(|m| matches!(m, ServerMessage::TrackRemoved { track_id, .. } if *track_id == t.track_id))
                .expect("logged");
            assert!(
                removed_pos < left_pos,
                "{name}: track_removed({}) came after participant_left",
                t.track_id
            );
        }
        assert!(
            p.remote_tracks()
                .values()
                .all(|t| t.participant_id != c.participant_id),
            "{name} still has tracks of cal: {:?}",
            p.remote_tracks()
        );
    }
    // The server renegotiates the removal: a new offer in which it no longer sends on cal's mids.
    for ((p, (name, tracks)), before) in [&a, &b].into_iter().zip(&cal_tracks).zip(answered_before)
    {
        p.wait_offers_answered(before, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{name}: no renegotiation after cal left: {e:#}"));
        let sdp = p.last_remote_sdp();
        for t in tracks {
            let section = media_section(&sdp, &t.mid);
            if let Some(section) = section {
                assert!(
                    !section.contains("a=sendonly") && !section.contains("a=sendrecv"),
                    "{name}: after cal left the server still offers to send on mid {}:\n{sdp}",
                    t.mid
                );
            }
        }
    }
    let closed = c
        .wait_closed(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("server should close cal's socket after leave: {e:#}"));
    println!("cal's socket closed: {closed}");

    // amy and ben still hear each other after the renegotiation that removed cal's tracks.
    let before: Vec<usize> = [(&a, &b), (&b, &a)]
        .iter()
        .flat_map(|(rx, tx)| [Kind::Audio, Kind::Video].map(|k| rx.received_from(tx.index, k)))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after: Vec<usize> = [(&a, &b), (&b, &a)]
        .iter()
        .flat_map(|(rx, tx)| [Kind::Audio, Kind::Video].map(|k| rx.received_from(tx.index, k)))
        .collect();
    for (i, (x, y)) in before.iter().zip(&after).enumerate() {
        assert!(
            y >= &(x + 20),
            "media between amy and ben stalled after cal left (stream {i}: {x} -> {y})\n{}\n{}",
            a.diagnostics(),
            b.diagnostics()
        );
    }

    for (_, h) in handles {
        h.stop().await;
    }
    check_clean(&[&a, &b, &c]);
    a.close().await;
    b.close().await;
    c.close().await;
    server.shutdown().await;
}
