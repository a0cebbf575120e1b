//! One simulated WebRTC endpoint: a str0m `Rtc` (RTP mode, full ICE, real DTLS and SRTP) on its
//! own UDP socket, sending the synthetic media of a [`MediaClock`] (a camera in one layer or as
//! simulcast) and measuring what arrives, optionally through an emulated capped downlink
//! ([`Link`]) that its TWCC feedback then describes to the server. A relayed peer's only ICE
//! candidate is a TURN allocation on the server's embedded TURN (over UDP, [`TurnClient`]):
//! what a browser with `iceTransportPolicy: "relay"` does.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};
use thiserror::Error;
use tokio::net::UdpSocket;

use crate::link::{Link, LinkConfig};
use crate::media::{MediaClock, MediaPlan, Outgoing};
use crate::payload::{self, Kind, Probe};
use crate::stats::{Arrival, Group, RxStats};
use crate::turn::{Incoming, TurnClient, TurnCounters};

/// How long a relayed peer may take to get its TURN allocation.
const ALLOCATE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// The TURN allocation of a relayed peer failed.
    #[error("TURN: {0}")]
    Turn(String),
}

/// The TURN server and credentials a relayed peer allocates on (from `joined.ice_servers`).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The TURN server over UDP.
    pub server: SocketAddr,
    /// TURN username.
    pub username: String,
    /// TURN password.
    pub credential: String,
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

/// Counters of the senders, the sockets, the emulated links and the adaptive-media signaling.
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
    /// Keyframe requests that named a simulcast layer (rid).
    pub keyframe_requests_by_rid: u64,
    /// `publish_layers` requests the publishers followed.
    pub publish_layers: u64,
    /// Datagrams the emulated capped downlinks dropped (queue full).
    pub downlink_drops: u64,
    /// Datagrams that crossed the emulated capped downlinks.
    pub downlink_delivered: u64,
    /// `track_paused` messages the receivers got (video stopped for bandwidth).
    pub tracks_paused: u64,
    /// `track_resumed` messages.
    pub tracks_resumed: u64,
    /// Relayed peers that got their TURN allocation.
    pub turn_allocations: u64,
    /// Relayed peers whose allocation failed.
    pub turn_allocation_failures: u64,
    /// ChannelBind successes (first binds and refreshes).
    pub turn_channel_binds: u64,
    /// Refresh successes.
    pub turn_refreshes: u64,
    /// TURN error responses (besides the expected 401/438 challenges) and unanswered requests.
    pub turn_errors: u64,
    /// Datagrams a relayed peer could not send (no channel yet and its queue full).
    pub turn_dropped: u64,
}

/// A published track.
#[derive(Debug)]
struct Track {
    kind: Kind,
    mid: Mid,
    pt: Option<Pt>,
    /// Per layer (one for audio and a camera without simulcast).
    rtp_seq: Vec<u64>,
    /// Per layer: the probe's sequence numbers are per layer too.
    probe_seq: Vec<u32>,
}

/// One endpoint.
pub struct Peer {
    rtc: Rtc,
    socket: UdpSocket,
    /// The address of this peer's ICE candidate: the socket's, or the relayed address.
    local: SocketAddr,
    /// The TURN allocation of a relayed peer.
    relay: Option<TurnClient>,
    /// Its counters as last added to the shared ones.
    relay_reported: TurnCounters,
    shared: Rc<Shared>,
    /// This participant's index (the subscriber in statistics, the publisher in probes).
    index: u32,
    tracks: Vec<Track>,
    clock: Option<MediaClock>,
    plan: Option<MediaPlan>,
    /// The camera's rids, by layer (`[None]` without simulcast).
    rids: Vec<Option<Rid>>,
    /// Layers the server asked for (`publish_layers`) before the media started.
    wanted_layers: Option<Vec<usize>>,
    /// The emulated capped downlink, if this participant is behind one.
    downlink: Option<Link<(SocketAddr, Vec<u8>)>>,
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
    /// Opens a UDP socket on `ip` and a full-ICE str0m session (Opus + VP8 only). With `relay`,
    /// it first allocates on that TURN server from the socket, and the relayed address is its
    /// only candidate (relay-only ICE); without, the socket's address is (a host candidate).
    pub async fn bind(
        ip: IpAddr,
        index: u32,
        shared: Rc<Shared>,
        relay: Option<RelayConfig>,
    ) -> Result<Peer, PeerError> {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0))
            .await
            .map_err(|source| PeerError::Bind { ip, source })?;
        let host = socket
            .local_addr()
            .map_err(|source| PeerError::Bind { ip, source })?;
        let relay = match relay {
            Some(config) => {
                let result = allocate(&socket, &config, index).await;
                let mut tx = shared.tx.borrow_mut();
                match result {
                    Ok(client) => {
                        tx.turn_allocations += 1;
                        Some(client)
                    }
                    Err(e) => {
                        tx.turn_allocation_failures += 1;
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        let now = Instant::now();
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .set_stats_interval(None)
            .build(now);
        let (candidate, local) = match relay.as_ref().and_then(TurnClient::relayed) {
            Some(relayed) => (Candidate::relayed(relayed, host, "udp"), relayed),
            None => (Candidate::host(host, "udp"), host),
        };
        let candidate = candidate.map_err(|e| PeerError::Sdp(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        Ok(Peer {
            rtc,
            socket,
            local,
            relay,
            relay_reported: TurnCounters::default(),
            shared,
            index,
            tracks: Vec::new(),
            clock: None,
            plan: None,
            rids: vec![None],
            wanted_layers: None,
            downlink: None,
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
                let layers = plan.video_layers();
                let simulcast = (!plan.simulcast.is_empty()).then(|| {
                    let mut simulcast = Simulcast::new();
                    for layer in &layers {
                        simulcast.add_send_layer(SimulcastLayer::new(
                            layer.rid.expect("simulcast layers have rids"),
                        ));
                    }
                    simulcast
                });
                self.rids = layers.iter().map(|l| l.rid.map(Rid::from)).collect();
                let mid =
                    change.add_media(MediaKind::Video, Direction::SendOnly, None, None, simulcast);
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
            .map(|(kind, mid)| {
                let layers = if kind == Kind::Video {
                    self.rids.len()
                } else {
                    1
                };
                Track {
                    kind,
                    mid,
                    pt: None,
                    rtp_seq: vec![1; layers],
                    probe_seq: vec![0; layers],
                }
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

    /// Puts this participant behind a capped downlink: every datagram it receives crosses
    /// `config` first. Its receivers' figures are reported as the capped group.
    pub fn set_downlink(&mut self, config: LinkConfig) {
        self.downlink = Some(Link::new(config));
        self.shared
            .rx
            .borrow_mut()
            .set_group(self.index, Group::Capped);
    }

    /// The server's `publish_layers`: send only the layers `rids` of the camera on `mid`.
    pub fn publish_layers(&mut self, mid: &str, rids: &[String]) {
        let Some(track) = self.tracks.iter().find(|t| t.kind == Kind::Video) else {
            return;
        };
        if track.mid.to_string() != mid {
            return;
        }
        let layers: Vec<usize> = self
            .rids
            .iter()
            .enumerate()
            .filter(|(_, rid)| rid.is_some_and(|r| rids.iter().any(|w| w.as_str() == &*r)))
            .map(|(i, _)| i)
            .collect();
        self.shared.tx.borrow_mut().publish_layers += 1;
        match &mut self.clock {
            Some(clock) => clock.set_active(&layers),
            None => self.wanted_layers = Some(layers),
        }
    }

    /// What the run's peers share.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The socket, for receiving.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// One datagram arrived on the socket: it crosses the capped downlink, if there is one,
    /// else goes to the session at once.
    pub fn on_datagram(&mut self, now: Instant, source: SocketAddr, bytes: &[u8]) {
        match &mut self.downlink {
            Some(link) => {
                if !link.push(now, bytes.len(), (source, bytes.to_vec())) {
                    self.shared.tx.borrow_mut().downlink_drops += 1;
                }
            }
            None => self.deliver(now, source, bytes),
        }
    }

    /// Hands the datagrams that have crossed the downlink by `now` to the session.
    fn release_downlink(&mut self, now: Instant) {
        let mut delivered = 0;
        while let Some((source, bytes)) = self.downlink.as_mut().and_then(|l| l.pop(now)) {
            self.deliver(now, source, &bytes);
            delivered += 1;
        }
        if delivered > 0 {
            self.shared.tx.borrow_mut().downlink_delivered += delivered;
        }
    }

    /// One datagram reaches the session (a relayed peer's first crosses its TURN client).
    fn deliver(&mut self, now: Instant, source: SocketAddr, bytes: &[u8]) {
        let (source, bytes) = match &mut self.relay {
            None => (source, bytes),
            Some(relay) => match relay.unwrap(now, source, bytes) {
                Incoming::Media { peer, data } => (peer, data),
                Incoming::Handled => {
                    self.flush_relay();
                    return;
                }
                Incoming::Ignored => return,
            },
        };
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
        let link = self.downlink.as_ref().and_then(Link::next_release);
        let relay = self.relay.as_ref().and_then(TurnClient::poll_timeout);
        [media, link, relay]
            .into_iter()
            .flatten()
            .fold(self.next_timeout, Instant::min)
    }

    /// Timers, due media, and everything str0m wants to send or tell.
    pub fn tick(&mut self, now: Instant) {
        if self.failed {
            return;
        }
        self.release_downlink(now);
        if let Some(relay) = &mut self.relay {
            if relay.poll_timeout().is_some_and(|t| t <= now) {
                relay.handle_timeout(now);
                self.flush_relay();
            }
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
            let layer = usize::from(out.layer).min(track.rtp_seq.len() - 1);
            let probe = Probe {
                publisher: self.index,
                kind: out.kind,
                layer: layer as u8,
                seq: track.probe_seq[layer],
                sent_us,
            };
            track.probe_seq[layer] += 1;
            let bytes = match out.kind {
                Kind::Audio => payload::audio(&probe, out.size),
                Kind::Video => payload::video(&probe, out.part, out.size, clock.height(out.layer)),
            };
            let seq = track.rtp_seq[layer];
            track.rtp_seq[layer] += 1;
            let rid = match out.kind {
                Kind::Audio => None,
                Kind::Video => self.rids.get(layer).copied().flatten(),
            };
            let mut api = self.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(track.mid, rid) else {
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
                Output::Transmit(t) => match &mut self.relay {
                    None => {
                        if self.socket.try_send_to(&t.contents, t.destination).is_err() {
                            self.shared.tx.borrow_mut().socket_errors += 1;
                        }
                    }
                    Some(relay) => {
                        let server = relay.server();
                        if let Some(bytes) = relay.wrap(now, t.destination, &t.contents) {
                            if self.socket.try_send_to(bytes, server).is_err() {
                                self.shared.tx.borrow_mut().socket_errors += 1;
                            }
                        }
                        self.flush_relay();
                    }
                },
                Output::Event(event) => self.on_event(now, event),
            }
        }
    }

    fn on_event(&mut self, now: Instant, event: Event) {
        match event {
            Event::Connected => {
                self.connected = true;
                self.resolve_payload_types();
                // The server estimates this participant's downlink from its TWCC feedback;
                // str0m sends it when the SDP negotiated it, and this makes sure it does.
                self.rtc.direct_api().enable_twcc_feedback();
                if let Some(plan) = self.plan.clone() {
                    let mut clock = MediaClock::new(plan, now);
                    if let Some(layers) = self.wanted_layers.take() {
                        clock.set_active(&layers);
                    }
                    self.clock = Some(clock);
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
                        let arrival = Arrival {
                            keyframe_start: probe.kind == Kind::Video
                                && payload::is_keyframe_start(&packet.payload),
                            payload_len: packet.payload.len(),
                        };
                        self.shared
                            .rx
                            .borrow_mut()
                            .on_packet(self.index, &probe, arrival, at);
                    }
                    Err(_) => self.shared.rx.borrow_mut().on_foreign(),
                }
            }
            Event::KeyframeRequest(request) => {
                let mut tx = self.shared.tx.borrow_mut();
                tx.keyframe_requests += 1;
                // A request names the layer by rid (str0m maps the PLI/FIR's SSRC to it); one
                // without a rid is for the whole camera.
                let layer = request.rid.and_then(|rid| {
                    tx.keyframe_requests_by_rid += 1;
                    self.rids.iter().position(|r| *r == Some(rid))
                });
                if let Some(clock) = &mut self.clock {
                    clock.request_keyframe(layer);
                }
            }
            Event::IceConnectionStateChange(str0m::IceConnectionState::Disconnected) => {
                self.failed = true;
            }
            _ => {}
        }
    }

    /// Sends what the TURN client has queued (requests, retransmissions, datagrams that
    /// waited for their channel).
    fn flush_relay(&mut self) {
        let Some(relay) = &mut self.relay else {
            return;
        };
        let server = relay.server();
        while let Some(bytes) = relay.poll_transmit() {
            if self.socket.try_send_to(&bytes, server).is_err() {
                self.shared.tx.borrow_mut().socket_errors += 1;
            }
        }
        let now = relay.counters;
        if now != self.relay_reported {
            let was = std::mem::replace(&mut self.relay_reported, now);
            let mut tx = self.shared.tx.borrow_mut();
            tx.turn_channel_binds += now.channel_binds - was.channel_binds;
            tx.turn_refreshes += now.refreshes - was.refreshes;
            tx.turn_errors += now.errors - was.errors;
            tx.turn_dropped += now.dropped - was.dropped;
        }
    }

    /// Ends the session (DTLS close is not needed: the server notices the socket); a relayed
    /// peer frees its allocation.
    pub fn close(&mut self) {
        self.rtc.disconnect();
        self.flush_relay();
        if let Some(relay) = &mut self.relay {
            if let Some(bytes) = relay.release() {
                let _ = self.socket.try_send_to(&bytes, relay.server());
            }
        }
    }
}

/// Allocates on the TURN server of `config` from `socket` (the 401 challenge, then the signed
/// Allocate), within [`ALLOCATE_TIMEOUT`].
async fn allocate(
    socket: &UdpSocket,
    config: &RelayConfig,
    index: u32,
) -> Result<TurnClient, PeerError> {
    let mut client = TurnClient::new(config.server, &config.username, &config.credential, index);
    let deadline = Instant::now() + ALLOCATE_TIMEOUT;
    client.allocate(Instant::now());
    let mut buf = vec![0u8; 2048];
    loop {
        while let Some(bytes) = client.poll_transmit() {
            socket
                .send_to(&bytes, config.server)
                .await
                .map_err(|e| PeerError::Turn(format!("sending to {}: {e}", config.server)))?;
        }
        if client.relayed().is_some() {
            return Ok(client);
        }
        if let Some(why) = client.failed() {
            return Err(PeerError::Turn(why.to_string()));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(PeerError::Turn("no allocation within 10 s".into()));
        }
        let wake = client.poll_timeout().unwrap_or(deadline).min(deadline);
        match tokio::time::timeout_at(wake.into(), socket.recv_from(&mut buf)).await {
            Ok(Ok((n, source))) => {
                client.unwrap(Instant::now(), source, &buf[..n]);
            }
            Ok(Err(e)) => return Err(PeerError::Turn(format!("receiving: {e}"))),
            Err(_) => client.handle_timeout(Instant::now()),
        }
    }
}
