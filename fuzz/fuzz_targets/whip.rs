#![no_main]
//! WHIP and WHEP bodies: the SDP offer of a `POST` (checked as `http::whip` checks it, then
//! joined as a publish-only or receive-only peer, as the media task does) and the
//! trickle-ice-sdpfrag of a `PATCH` (parsed by `http::whip::parse_fragment`, then handed to
//! `Sfu::ice_fragment`).
//!
//! `http::whip`'s offer check and its `nothing_accepted` are private, so this target repeats
//! their few lines (the SDP parse and the m-line directions it relies on are the real ones).
//!
//! Input: one mode byte, then the body.

use std::time::{Duration, Instant};

use huizhen::http::whip::parse_fragment;
use huizhen::sfu::{m_line_directions, PeerMode, SignalInput};
use libfuzzer_sys::fuzz_target;
use str0m::media::{Direction, MediaKind};

#[path = "../common/mod.rs"]
mod common;

const AV: &[MediaKind] = &[MediaKind::Audio, MediaKind::Video];

/// `http::whip::check_offer` without the headers: the text, if the endpoint takes it.
fn check_offer(whip: bool, body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    str0m::change::SdpOffer::from_sdp_string(text).ok()?;
    let directions = m_line_directions(text);
    if directions.is_empty() {
        return None;
    }
    let wrong = if whip {
        directions.contains(&"recvonly")
    } else {
        directions
            .iter()
            .any(|d| *d == "sendonly" || *d == "sendrecv")
    };
    (!wrong).then(|| text.to_owned())
}

/// `http::whip::nothing_accepted`.
fn nothing_accepted(answer: &str) -> bool {
    let ports: Vec<&str> = answer
        .lines()
        .filter_map(|l| l.strip_prefix("m="))
        .filter(|m| m.starts_with("audio") || m.starts_with("video"))
        .filter_map(|m| m.split_whitespace().nth(1))
        .collect();
    !ports.is_empty() && ports.iter().all(|p| *p == "0")
}

fuzz_target!(
    init: common::write_seeds(seeds),
    |data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    let mut sfu = common::sfu();
    match mode % 3 {
        // POST /whip, /whep: an offer.
        0 | 1 => {
            let whip = mode % 3 == 0;
            let Some(sdp) = check_offer(whip, body) else {
                return;
            };
            let peer_mode = if whip {
                PeerMode::PublishOnly
            } else {
                // A player needs someone publishing in the room.
                common::joined(&mut sfu, now, "room", PeerMode::PublishOnly, AV, Direction::SendOnly);
                PeerMode::ReceiveOnly
            };
            common::drain(&mut sfu);
            let id = sfu.join_as(now, "room", "fuzz", true, peer_mode, None).unwrap();
            let offer = SignalInput::Offer { sdp, sources: Default::default() };
            if sfu.handle_signal(now, id, offer).is_ok() {
                while let Some(out) = sfu.poll_output() {
                    if let huizhen::sfu::SfuOutput::Signal {
                        message: huizhen_signaling::protocol::ServerMessage::Answer { sdp, .. },
                        ..
                    } = out
                    {
                        let _ = nothing_accepted(&sdp);
                    }
                }
            }
            run(&mut sfu, now);
        }
        // PATCH: a trickle-ice-sdpfrag for a publisher's session.
        _ => {
            let Ok(text) = std::str::from_utf8(body) else {
                return;
            };
            let Ok(fragment) = parse_fragment(text) else {
                return;
            };
            let id = common::joined(&mut sfu, now, "room", PeerMode::PublishOnly, AV, Direction::SendOnly);
            common::drain(&mut sfu);
            let credentials = fragment.ufrag.zip(fragment.pwd);
            let _ = sfu.ice_fragment(now, id, credentials, &fragment.candidates);
            run(&mut sfu, now);
        }
    }
    }
);

/// The core's timers for a moment of virtual time.
fn run(sfu: &mut huizhen::sfu::Sfu, now: Instant) {
    let mut t = now;
    for _ in 0..20 {
        common::drain(sfu);
        match sfu.poll_timeout() {
            Some(next) if next <= now + Duration::from_secs(2) => t = next.max(t),
            _ => break,
        }
        sfu.handle_timeout(t);
    }
    common::drain(sfu);
}

/// A WHIP publisher's offer and a WHEP player's (str0m clients), and the trickle fragment of
/// `http::whip`'s own test.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let now = Instant::now();
    let seed = |mode: u8, text: &str| {
        let mut v = vec![mode];
        v.extend_from_slice(text.as_bytes());
        v
    };
    let send = common::client_offer(now, AV, Direction::SendOnly)
        .1
        .to_sdp_string();
    let recv = common::client_offer(now, AV, Direction::RecvOnly)
        .1
        .to_sdp_string();
    let fragment = "a=ice-options:trickle\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n\
         a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n\
         a=candidate:1387637174 1 udp 2122260223 127.0.0.1 61764 typ host\r\n\
         a=end-of-candidates\r\n";
    let trickle = "a=candidate:1387637174 1 udp 2122260223 127.0.0.1 61764 typ host\r\n";
    vec![
        ("whip_offer", seed(0, &send)),
        ("whep_offer", seed(1, &recv)),
        ("patch_restart", seed(2, fragment)),
        ("patch_trickle", seed(2, trickle)),
    ]
}
