//! One simulated WebRTC endpoint: a str0m `Rtc` (RTP mode, full ICE, real DTLS and SRTP) on its
//! own UDP socket, sending the synthetic media of a [`MediaClock`] and measuring what arrives.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};
use thiserror::Error;
use tokio::net::UdpSocket;

use crate::media::{MediaClock, MediaPlan, Outgoing};
use crate::payload::{self, Kind, Probe};
use crate::stats::RxStats;

/// Failures of a peer.
#[derive(Debug, Error)]
pub enum PeerError {
    /// The UDP socket could not be opened.
    #[error("cannot bind a UDP socket on {ip}: {source}")]
    Bind {
        /// Address asked for.
        ip: IpAddr,
        /// Why.
        source: std::io::Error,
    },
    /// An SDP from the other side was refused.
    #[error("SDP: {0}")]
    Sdp(String),
    /// str0m gave up on the session.
    #[error("WebRTC session failed: {0}")]
    Rtc(#[from] str0m::RtcError),
}

/// What all peers of a run share (one thread: `Rc`).
#[derive(Debug)]
pub struct Shared {
    /// Time zero of the run's send timestamps.
    pub epoch: Instant,
    /// What the receivers measured.
    pub rx: RefCell<RxStats>,
    /// Counters of the senders and sockets.
    pub tx: RefCell<TxCounters>,
}

impl Shared {
    /// A new run starting now.
    pub fn new() -> Rc<Shared> {
        Rc::new(Shared {
            epoch: Instant::now(),
            rx: RefCell::new(RxStats::new()),
            tx: RefCell::new(TxCounters::default()),
        })
    }

    /// Microseconds since the epoch.
    pub fn micros(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_micros() as u64
    }
}

/// Sender-side counters.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct TxCounters {
    /// RTP packets handed to str0m.
    pub packets_sent: u64,
    /// Datagrams the socket refused (buffer full or error).
    pub socket_errors: u64,
    /// Keyframe requests (PLI/FIR) the publishers received.
    pub keyframe_requests: u64,
    /// Packets a lagging sender skipped.
    pub skipped: u64,
}

/// A published track.
#[derive(Debug)]
struct Track {
    kind: Kind,
    mid: Mid,
    pt: Option<Pt>,
    rtp_seq: u64,
    probe_seq: u32,
}

/// One endpoint.
pub struct Peer {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    shared: Rc<Shared>,
    /// This participant's index (the subscriber in statistics, the publisher in probes).
    index: u32,
    tracks: Vec<Track>,
    clock: Option<MediaClock>,
    plan: Option<MediaPlan>,
    pending: Option<SdpPendingOffer>,
    next_timeout: Instant,
    scratch: Vec<Outgoing>,
    /// ICE and DTLS are up.
    pub connected: bool,
    /// When the first media packet arrived, if one did.
    pub first_media: Option<Instant>,
    /// str0m closed the session.
    pub failed: bool,
}

impl Peer {
    /// Opens a UDP socket on `ip` and a full-ICE str0m session (Opus + VP8 only).
    pub async fn bind(ip: IpAddr, index: u32, shared: Rc<Shared>) -> Result<Peer, PeerError> {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0))
            .await
            .map_err(|source| PeerError::Bind { ip, source })?;
        let local = socket.local_addr().map_err(|source| PeerError::Bind { ip, source })?;
        let now = Instant::now();
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .set_stats_interval(None)
            .build(now);
        let candidate = Candidate::host(local, "udp").map_err(|e| PeerError::Sdp(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        Ok(Peer {
            rtc,
            socket,
            local,
            shared,
            index,
            tracks: Vec::new(),
            clock: None,
            plan: None,
            pending: None,
            next_timeout: now,
            scratch: Vec::new(),
            connected: false,
            first_media: None,
            failed: false,
        })
    }

    /// The first offer: send-only audio/video for what `plan` publishes; with nothing to
    /// publish, `recv_only` receive-only m-lines (Janus style) or a data channel (huizhen style).
    pub fn offer(&mut self, plan: Option<MediaPlan>, recv_only: &[MediaKind]) -> String {
        let mut change = self.rtc.sdp_api();
        let mut tracks = Vec::new();
        if let Some(plan) = &plan {
            if plan.audio {
                let mid = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
                tracks.push((Kind::Audio, mid));
            }
            if plan.video() {
                let mid = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
                tracks.push((Kind::Video, mid));
            }
        }
        for kind in recv_only {
            change.add_media(*kind, Direction::RecvOnly, None, None, None);
        }
        if tracks.is_empty() && recv_only.is_empty() {
            change.add_channel("control".into());
        }
        let (offer, pending) = change.apply().expect("an offer with changes");
        self.pending = Some(pending);
        self.tracks = tracks
            .into_iter()
            .map(|(kind, mid)| Track {
                kind,
                mid,
                pt: None,
                rtp_seq: 1,
                probe_seq: 0,
            })
            .collect();
        self.plan = plan;
        offer.to_sdp_string()
    }

    /// Applies the answer to our offer.
    pub fn accept_answer(&mut self, sdp: &str) -> Result<(), PeerError> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| PeerError::Sdp(e.to_string()))?;
        let Some(pending) = self.pending.take() else {
            return Err(PeerError::Sdp("an answer without an offer of ours".into()));
        };
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| PeerError::Sdp(e.to_string()))?;
        self.resolve_payload_types();
        Ok(())
    }

    /// Answers the other side's offer (our own pending offer, if any, is rolled back).
    pub fn answer(&mut self, sdp: &str) -> Result<String, PeerError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| PeerError::Sdp(e.to_string()))?;
        self.pending = None;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| PeerError::Sdp(e.to_string()))?;
        Ok(answer.to_sdp_string())
    }

    fn resolve_payload_types(&mut self) {
        for track in &mut self.tracks {
            let want = match track.kind {
                Kind::Audio => Codec::Opus,
                Kind::Video => Codec::Vp8,
            };
            track.pt = self
                .rtc
                .codec_config()
                .find(|p| p.spec().codec == want)
                .map(|p| p.pt());
        }
    }

    /// The socket, for receiving.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// One datagram arrived.
    pub fn on_datagram(&mut self, now: Instant, source: SocketAddr, bytes: &[u8]) {
        let Ok(contents) = bytes.try_into() else {
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        );
        if let Err(e) = self.rtc.handle_input(input) {
            tracing::debug!(error = %e, "datagram refused");
        }
        self.drain(now);
    }

    /// Reads what else is waiting on the socket (at most `max` datagrams) without blocking,
    /// feeding each to the session: one wake-up of the task serves a burst of packets.
    pub fn read_ready(&mut self, buf: &mut [u8], max: usize) {
        for _ in 0..max {
            match self.socket.try_recv_from(buf) {
                Ok((n, source)) => self.on_datagram(Instant::now(), source, &buf[..n]),
                Err(_) => return,
            }
        }
    }

    /// When this peer next needs [`Self::tick`].
    pub fn next_wake(&self) -> Instant {
        let media = self.clock.as_ref().and_then(MediaClock::next_due);
        media.map_or(self.next_timeout, |m| m.min(self.next_timeout))
    }

    /// Timers, due media, and everything str0m wants to send or tell.
    pub fn tick(&mut self, now: Instant) {
        if self.failed {
            return;
        }
        if now >= self.next_timeout {
            if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
                tracing::debug!(error = %e, "timeout handling failed");
            }
        }
        self.send_due(now);
        self.drain(now);
    }

    fn send_due(&mut self, now: Instant) {
        if !self.connected {
            return;
        }
        let Some(clock) = &mut self.clock else {
            return;
        };
        let mut due = std::mem::take(&mut self.scratch);
        clock.due(now, &mut due);
        let skipped = std::mem::take(&mut clock.skipped);
        let sent_us = self.shared.micros(now);
        let mut sent = 0;
        for out in due.drain(..) {
            let Some(track) = self.tracks.iter_mut().find(|t| t.kind == out.kind) else {
                continue;
            };
            let Some(pt) = track.pt else {
                continue;
            };
            let probe = Probe {
                publisher: self.index,
                kind: out.kind,
                seq: track.probe_seq,
                sent_us,
            };
            track.probe_seq += 1;
            let bytes = match out.kind {
                Kind::Audio => payload::audio(&probe, out.size),
                Kind::Video => payload::video(&probe, out.part, out.size),
            };
            let seq = track.rtp_seq;
            track.rtp_seq += 1;
            let mut api = self.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(track.mid, None) else {
                continue;
            };
            tx.write_rtp(
                RtpWrite::new(pt, seq.into(), out.rtp_time, now, bytes)
                    .marker(out.marker)
                    .nackable(out.kind == Kind::Video),
            );
            sent += 1;
        }
        self.scratch = due;
        let mut tx = self.shared.tx.borrow_mut();
        tx.packets_sent += sent;
        tx.skipped += skipped;
    }

    fn drain(&mut self, now: Instant) {
        loop {
            let output = match self.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    tracing::debug!(error = %e, "session failed");
                    self.failed = true;
                    return;
                }
            };
            match output {
                Output::Timeout(t) => {
                    self.next_timeout = t;
                    return;
                }
                Output::Transmit(t) => {
                    if self.socket.try_send_to(&t.contents, t.destination).is_err() {
                        self.shared.tx.borrow_mut().socket_errors += 1;
                    }
                }
                Output::Event(event) => self.on_event(now, event),
            }
        }
    }

    fn on_event(&mut self, now: Instant, event: Event) {
        match event {
            Event::Connected => {
                self.connected = true;
                self.resolve_payload_types();
                if let Some(plan) = self.plan.clone() {
                    self.clock = Some(MediaClock::new(plan, now));
                }
            }
            Event::RtpPacket(packet) => {
                let now = Instant::now();
                if self.first_media.is_none() {
                    self.first_media = Some(now);
                }
                match payload::read(&packet.payload) {
                    Ok(probe) => {
                        let at = self.shared.micros(now);
                        self.shared.rx.borrow_mut().on_packet(self.index, &probe, at);
                    }
                    Err(_) => self.shared.rx.borrow_mut().on_foreign(),
                }
            }
            Event::KeyframeRequest(_) => {
                self.shared.tx.borrow_mut().keyframe_requests += 1;
                if let Some(clock) = &mut self.clock {
                    clock.request_keyframe();
                }
            }
            Event::IceConnectionStateChange(str0m::IceConnectionState::Disconnected) => {
                self.failed = true;
            }
            _ => {}
        }
    }

    /// Ends the session (DTLS close is not needed: the server notices the socket).
    pub fn close(&mut self) {
        self.rtc.disconnect();
    }
}
