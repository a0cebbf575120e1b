#![no_main]
//! SDP through the server's negotiation path: a client's `offer` (first or later), `renew`,
//! `answer` to a server offer, or trickled `candidate`, handed to the SFU core as the signaling
//! task does, then the core run for a moment of virtual time.
//!
//! Input: one mode byte, then the text.

use std::time::{Duration, Instant};

use huizhen::sfu::sim::SimNet;
use huizhen::sfu::{PeerMode, SignalInput};
use libfuzzer_sys::fuzz_target;
use str0m::media::{Direction, MediaKind};

#[path = "../common/mod.rs"]
mod common;

const AV: &[MediaKind] = &[MediaKind::Audio, MediaKind::Video];

fuzz_target!(
    init: common::write_seeds(seeds),
    |data: &[u8]| {
    let Some((&mode, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let now = Instant::now();
    let mut sfu = common::sfu();
    let sdp = text.to_owned();
    let (id, input) = match mode % 5 {
        // A first offer.
        0 => {
            let id = sfu.join(now, "room", "fuzz", true, None).unwrap();
            (id, SignalInput::Offer { sdp, sources: Default::default() })
        }
        // A later offer, in a room with a publisher.
        1 => {
            common::joined(&mut sfu, now, "room", PeerMode::Full, AV, Direction::SendOnly);
            let id = common::joined(&mut sfu, now, "room", PeerMode::Full, AV, Direction::SendOnly);
            (id, SignalInput::Offer { sdp, sources: Default::default() })
        }
        // A fresh peer connection's offer replacing a session.
        2 => {
            let id = common::joined(&mut sfu, now, "room", PeerMode::Full, AV, Direction::SendOnly);
            (id, SignalInput::Renew { sdp, sources: Default::default() })
        }
        // The answer to the server's offer of a new participant's tracks, which the
        // simulator's client did not get (its signaling is down): connected participants
        // are needed for the server to offer anything.
        3 => {
            let mut net = SimNet::new(1);
            net.add_client("room", AV);
            let b = net.add_client("room", AV);
            net.clients[b].signaling_down = true;
            net.add_client("room", AV);
            let id = net.clients[b].id;
            let _ = net.sfu.handle_signal(net.now, id, SignalInput::Answer(sdp));
            net.route_outputs();
            net.run_for(Duration::from_millis(300));
            return;
        }
        // A trickled candidate.
        _ => {
            let id = common::joined(&mut sfu, now, "room", PeerMode::Full, AV, Direction::SendOnly);
            (id, SignalInput::Candidate(sdp))
        }
    };
    common::drain(&mut sfu);
    let _ = sfu.handle_signal(now, id, input);
    // Run the timers for a moment: whatever was negotiated must not upset the core later.
    let mut t = now;
    for _ in 0..20 {
        common::drain(&mut sfu);
        match sfu.poll_timeout() {
            Some(next) if next <= now + Duration::from_secs(2) => t = next.max(t),
            _ => break,
        }
        sfu.handle_timeout(t);
    }
    sfu.leave(t, id, huizhen::sfu::LeaveReason::Left);
    common::drain(&mut sfu);
    }
);

/// Real offers (str0m clients as the simulator and tests make them: audio and video,
/// simulcast, receive-only, a data channel alone), a real answer to a server offer, and a
/// candidate line.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use str0m::change::SdpOffer;
    use str0m::media::{Simulcast, SimulcastLayer};
    let now = Instant::now();
    let seed = |mode: u8, text: &str| {
        let mut v = vec![mode];
        v.extend_from_slice(text.as_bytes());
        v
    };
    let av = common::client_offer(now, AV, Direction::SendOnly)
        .1
        .to_sdp_string();
    let recv = common::client_offer(now, AV, Direction::RecvOnly)
        .1
        .to_sdp_string();
    let channel = common::client_offer(now, &[], Direction::SendOnly)
        .1
        .to_sdp_string();
    let simulcast = {
        let mut rtc = str0m::Rtc::builder().set_rtp_mode(true).build(now);
        rtc.add_local_candidate(
            str0m::Candidate::host("10.0.1.9:5000".parse().unwrap(), "udp").unwrap(),
        );
        let mut change = rtc.sdp_api();
        change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let mut layers = Simulcast::new();
        for rid in ["q", "h", "f"] {
            layers.add_send_layer(SimulcastLayer::new(rid));
        }
        change.add_media(
            MediaKind::Video,
            Direction::SendOnly,
            None,
            None,
            Some(layers),
        );
        change.apply().unwrap().0.to_sdp_string()
    };
    // A str0m client's answer (to another client's offer).
    let answer = {
        let mut rtc = str0m::Rtc::builder().set_rtp_mode(true).build(now);
        rtc.add_local_candidate(
            str0m::Candidate::host("10.0.1.8:5000".parse().unwrap(), "udp").unwrap(),
        );
        let offer = SdpOffer::from_sdp_string(&av).unwrap();
        rtc.sdp_api().accept_offer(offer).unwrap().to_sdp_string()
    };
    vec![
        ("first_offer", seed(0, &av)),
        ("first_offer_recvonly", seed(0, &recv)),
        ("first_offer_channel", seed(0, &channel)),
        ("first_offer_simulcast", seed(0, &simulcast)),
        ("later_offer", seed(1, &av)),
        ("renew", seed(2, &av)),
        ("answer", seed(3, &answer)),
        (
            "candidate",
            seed(
                4,
                "candidate:842163049 1 udp 2122260223 10.0.0.5 51234 typ host generation 0",
            ),
        ),
    ]
}
