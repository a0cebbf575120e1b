#![no_main]
//! STUN and the demux: `sfu::demux` (RFC 7983 classification, its own STUN USERNAME reader,
//! the ufrag and address tables), then the datagram fed to the SFU core from a new address,
//! where a STUN check naming a participant's ufrag reaches that participant's ICE agent.
//!
//! Every `%%SERVER-UFRAG%%` in the input is replaced by the participant's real ICE ufrag
//! (random per run, 16 characters like the placeholder), so seeds and mutations can address it.

use std::net::SocketAddr;
use std::time::Instant;

use huizhen::sfu::demux::{classify, stun_local_ufrag, Demux, PacketClass};
use huizhen::sfu::sim::SERVER_ADDR;
use huizhen::sfu::{PeerMode, SfuOutput, SignalInput};
use huizhen_signaling::protocol::ServerMessage;
use libfuzzer_sys::fuzz_target;
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::Protocol;
use str0m::{Input, Output};

#[path = "../common/mod.rs"]
mod common;

const PLACEHOLDER: &[u8; 16] = b"%%SERVER-UFRAG%%";

fn replace(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

fn ufrag_of(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .map(str::to_owned)
}

fuzz_target!(
    init: common::write_seeds(seeds),
    |data: &[u8]| {
        // The demux on its own.
        let class = classify(data);
        let ufrag = stun_local_ufrag(data);
        if ufrag.is_some() {
            assert_eq!(class, PacketClass::Stun);
        }
        let from: SocketAddr = "10.0.2.2:5000".parse().unwrap();
        let mut demux = Demux::<u32>::default();
        demux.insert_ufrag("%%SERVER-UFRAG%%".into(), 1);
        demux.learn_source(Protocol::Udp, from, 2);
        let owner = demux.lookup(Protocol::Udp, from, data);
        assert!(owner == Some(2) || (owner == Some(1) && ufrag == Some("%%SERVER-UFRAG%%")));

        // The core, with one participant waiting for its first check.
        let now = Instant::now();
        let mut sfu = common::sfu();
        let id = sfu.join_as(now, "room", "fuzz", true, PeerMode::Full, None).unwrap();
        let (_rtc, offer, _) =
            common::client_offer(now, &[MediaKind::Audio], Direction::SendOnly);
        let offer = SignalInput::Offer { sdp: offer.to_sdp_string(), sources: Default::default() };
        sfu.handle_signal(now, id, offer).unwrap();
        let mut server_ufrag = None;
        while let Some(out) = sfu.poll_output() {
            if let SfuOutput::Signal { message: ServerMessage::Answer { sdp, .. }, .. } = out {
                server_ufrag = ufrag_of(&sdp);
            }
        }
        let server_ufrag = server_ufrag.expect("the answer has an ufrag");
        let datagram = replace(data, PLACEHOLDER, server_ufrag.as_bytes());
        for source in [from, "[2001:db8::7]:6000".parse().unwrap()] {
            sfu.handle_datagram(now, Protocol::Udp, source, SERVER_ADDR, &datagram);
            sfu.handle_datagram(now, Protocol::Tcp, source, SERVER_ADDR, &datagram);
            while sfu.poll_output().is_some() {}
        }
        sfu.handle_timeout(now);
        while sfu.poll_output().is_some() {}
    }
);

/// A real client's first ICE check to the server, a STUN binding request with the server's
/// ufrag as the placeholder; the same check with the ufrag as it was; a DTLS-looking and an
/// RTP-looking datagram.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let now = Instant::now();
    let mut sfu = common::sfu();
    let id = sfu
        .join_as(now, "room", "fuzz", true, PeerMode::Full, None)
        .unwrap();
    let (mut rtc, offer, pending) =
        common::client_offer(now, &[MediaKind::Audio], Direction::SendOnly);
    sfu.handle_signal(
        now,
        id,
        SignalInput::Offer {
            sdp: offer.to_sdp_string(),
            sources: Default::default(),
        },
    )
    .unwrap();
    let mut answer = None;
    while let Some(out) = sfu.poll_output() {
        if let SfuOutput::Signal {
            message: ServerMessage::Answer { sdp, .. },
            ..
        } = out
        {
            answer = Some(sdp);
        }
    }
    let answer = answer.unwrap();
    let ufrag = ufrag_of(&answer).unwrap();
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .unwrap();
    let mut t = now;
    let mut check = None;
    for _ in 0..50 {
        match rtc.poll_output().unwrap() {
            Output::Transmit(tx) if classify(&tx.contents) == PacketClass::Stun => {
                check = Some(tx.contents.to_vec());
                break;
            }
            Output::Timeout(next) => {
                t = next.max(t + std::time::Duration::from_millis(1));
                rtc.handle_input(Input::Timeout(t)).unwrap();
            }
            _ => {}
        }
    }
    let check = check.expect("the client sends a check");
    vec![
        (
            "binding_request",
            replace(&check, ufrag.as_bytes(), PLACEHOLDER),
        ),
        (
            "dtls_like",
            vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
        ),
        (
            "rtp_like",
            vec![0x80, 111, 0, 1, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78, 1, 2, 3],
        ),
    ]
}
