//! Set-ups shared by the fuzz targets that drive the SFU core.

#![allow(dead_code)]

use std::time::Instant;

use huizhen::sfu::sim::sim_config;
use huizhen::sfu::{ParticipantId, PeerMode, Sfu, SfuMetrics, SfuOutput, SignalInput};
use huizhen_signaling::protocol::ServerMessage;
use str0m::change::{SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, Rtc};

/// A core as the simulator configures it.
pub fn sfu() -> Sfu {
    Sfu::new(sim_config(), SfuMetrics::unregistered())
}

/// Everything the core has to say, dropped (the driver would send it); the offers it makes,
/// by recipient, kept.
pub fn drain(sfu: &mut Sfu) -> Vec<(ParticipantId, String)> {
    let mut offers = Vec::new();
    while let Some(out) = sfu.poll_output() {
        if let SfuOutput::Signal {
            to,
            message: ServerMessage::Offer { sdp },
        } = out
        {
            offers.push((to, sdp));
        }
    }
    offers
}

/// A real client's first offer: str0m in RTP mode with `kinds` as `direction` m-lines (a data
/// channel when none).
pub fn client_offer(
    now: Instant,
    kinds: &[MediaKind],
    direction: Direction,
) -> (Rtc, SdpOffer, SdpPendingOffer) {
    let mut rtc = Rtc::builder().set_rtp_mode(true).build(now);
    rtc.add_local_candidate(Candidate::host("10.0.1.9:5000".parse().unwrap(), "udp").unwrap());
    let mut change = rtc.sdp_api();
    for kind in kinds {
        change.add_media(*kind, direction, None, None, None);
    }
    if kinds.is_empty() {
        change.add_channel("control".into());
    }
    let (offer, pending) = change.apply().expect("a client offer");
    (rtc, offer, pending)
}

/// Join `room` as `mode` and negotiate a real client offer; returns the participant.
pub fn joined(
    sfu: &mut Sfu,
    now: Instant,
    room: &str,
    mode: PeerMode,
    kinds: &[MediaKind],
    direction: Direction,
) -> ParticipantId {
    let id = sfu
        .join_as(now, room, "fuzz", true, mode, None)
        .expect("join accepted");
    let (_rtc, offer, _) = client_offer(now, kinds, direction);
    sfu.handle_signal(
        now,
        id,
        SignalInput::Offer {
            sdp: offer.to_sdp_string(),
            sources: Default::default(),
        },
    )
    .expect("a real offer is accepted");
    id
}

/// Reads a fuzz input as a little structured program: fixed-size fields, then the rest.
/// Past the end every field reads as zero/empty, so any input is a valid program.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn u8(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub fn u64(&mut self) -> u64 {
        (u64::from(self.u32()) << 32) | u64::from(self.u32())
    }
    /// `len` bytes (fewer at the end).
    pub fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        head
    }
    /// A byte string with a 2-byte length.
    pub fn chunk(&mut self) -> &'a [u8] {
        let len = usize::from(self.u16());
        self.bytes(len)
    }
}

/// With `HUIZHEN_FUZZ_SEEDS=<dir>` set, a target's `init` writes its seed inputs (made with
/// the crate's own writers) into `<dir>` and exits; `fuzz/run.sh --seeds` does this.
pub fn write_seeds(make: impl FnOnce() -> Vec<(&'static str, Vec<u8>)>) {
    let Some(dir) = std::env::var_os("HUIZHEN_FUZZ_SEEDS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("seed directory");
    for (name, bytes) in make() {
        std::fs::write(dir.join(name), bytes).expect("seed written");
    }
    std::process::exit(0);
}
