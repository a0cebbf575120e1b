//! A webrtc-rs (0.21) participant that joins through `/ws`, publishes synthetic Opus and VP8
//! RTP on sendonly transceivers and records what it receives.
//!
//! Signaling follows protocol v1: `join` → `joined`, then the client's first `offer` (its two
//! sendonly tracks) → `answer`; after that the server drives renegotiation with `offer`s, which
//! the client answers one at a time in arrival order. ICE candidates either trickle as
//! `candidate` messages after the offer ([`CandidateMode::Trickle`]) or are put in the offer
//! after gathering completes ([`CandidateMode::InOffer`]).
//!
//! Network rules (loopback only): no ICE servers; the only socket is UDP `127.0.0.1:0`, so the
//! only candidate is a 127.0.0.1 host candidate; ICE network types restricted to UDP4; mDNS
//! disabled (no multicast socket). webrtc-rs has no UPnP.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use async_trait::async_trait;
use bytes::Bytes;
use huizhen_signaling::protocol::{ClientMessage, ParticipantInfo, ServerMessage, TrackKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::network_type::NetworkType;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::media_stream::MediaStreamTrack;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCBundlePolicy, RTCConfigurationBuilder, RTCIceGatheringState,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, Registry,
    SettingEngineBuilder,
};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit, RtpSender};

use super::media::{self, Kind};
use super::{connect_ws, join, Joined, Ws};

/// How the client delivers its ICE candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateMode {
    /// Send the offer at once, then each candidate as a `candidate` message, then an empty
    /// `candidate` (end of candidates) when gathering completes.
    Trickle,
    /// Wait for gathering to complete and send the offer with its `a=candidate` lines.
    InOffer,
}

/// Per-track receive statistics.
#[derive(Debug, Default, Clone)]
pub struct TrackRx {
    /// `audio` / `video` as webrtc-rs reports the track.
    pub kind: String,
    /// RTP packets received on the track.
    pub packets: u64,
    /// Packets whose payload failed verification.
    pub corrupt: u64,
    /// First verification failure, for the assertion message.
    pub first_error: Option<String>,
    /// Distinct `seq` markers received, per publisher index.
    pub seqs: BTreeMap<u8, HashSet<u32>>,
}

/// A `track_added` the client has seen (and not yet seen removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteTrack {
    /// Publisher.
    pub participant_id: String,
    /// Server track id.
    pub track_id: String,
    /// Media id it arrives on here.
    pub mid: String,
    /// Audio or video.
    pub kind: TrackKind,
}

#[derive(Default)]
struct Shared {
    /// Every server message, in arrival order.
    log: Vec<(Instant, ServerMessage)>,
    /// Current remote tracks by mid.
    tracks: BTreeMap<String, RemoteTrack>,
    /// Remote tracks removed so far.
    removed: Vec<RemoteTrack>,
    /// Server offers answered.
    offers_answered: u32,
    /// Set once the answer to our first offer is applied.
    initial_answer_applied: bool,
    /// Client-side failures (SDP application errors, unparsable frames, …).
    failures: Vec<String>,
    /// Last SDPs exchanged, for diagnostics.
    last_remote_sdp: String,
    last_local_sdp: String,
    /// Why the socket closed, once it has.
    closed: Option<String>,
}

#[derive(Debug)]
enum CandidateEvent {
    Candidate(String),
    Complete,
}

struct Handler {
    name: String,
    candidates: mpsc::UnboundedSender<CandidateEvent>,
    gathering: watch::Sender<RTCIceGatheringState>,
    connection: watch::Sender<RTCPeerConnectionState>,
    rx: Arc<Mutex<HashMap<String, TrackRx>>>,
}

#[async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => {
                let _ = self
                    .candidates
                    .send(CandidateEvent::Candidate(init.candidate));
            }
            Err(e) => eprintln!("[{}] cannot serialize local candidate: {e}", self.name),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.candidates.send(CandidateEvent::Complete);
        }
        self.gathering.send_replace(state);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.connection.send_replace(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        // Runs on the connection's driver task: hand the track to a reader task at once.
        let rx = Arc::clone(&self.rx);
        tokio::spawn(read_track(track, rx));
    }
}

async fn read_track(track: Arc<dyn TrackRemote>, rx: Arc<Mutex<HashMap<String, TrackRx>>>) {
    let track_id = track.track_id().await;
    let kind_str = track.kind().await.to_string();
    let kind = Kind::parse(&kind_str);
    rx.lock().unwrap().entry(track_id.clone()).or_default().kind = kind_str.clone();
    while let Some(event) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(packet) = event else {
            continue;
        };
        let verdict = match kind {
            Some(kind) => media::parse_payload(&packet.payload, kind),
            None => Err(format!("track of kind {kind_str:?}")),
        };
        let mut rx = rx.lock().unwrap();
        let stats = rx.entry(track_id.clone()).or_default();
        stats.packets += 1;
        match verdict {
            Ok(marker) => {
                stats
                    .seqs
                    .entry(marker.publisher)
                    .or_default()
                    .insert(marker.seq);
            }
            Err(e) => {
                stats.corrupt += 1;
                if stats.first_error.is_none() {
                    stats.first_error = Some(format!(
                        "{e} (rtp seq {} ssrc {:#x} pt {} len {})",
                        packet.header.sequence_number,
                        packet.header.ssrc,
                        packet.header.payload_type,
                        packet.payload.len()
                    ));
                }
            }
        }
    }
}

/// One published track.
struct LocalTrack {
    kind: Kind,
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    sender: Arc<dyn RtpSender>,
}

/// Packets sent by one [`RsPeer::start_media`] run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Opus packets written.
    pub audio: u32,
    /// VP8 packets written.
    pub video: u32,
}

impl Sent {
    /// Packets of one kind.
    pub fn of(&self, kind: Kind) -> u32 {
        match kind {
            Kind::Audio => self.audio,
            Kind::Video => self.video,
        }
    }
}

/// A running media publisher; stop it with [`MediaHandle::stop`].
pub struct MediaHandle {
    stop: Arc<AtomicBool>,
    counters: Arc<[AtomicU32; 2]>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl MediaHandle {
    /// Packets written so far.
    pub fn sent(&self) -> Sent {
        Sent {
            audio: self.counters[0].load(Ordering::SeqCst),
            video: self.counters[1].load(Ordering::SeqCst),
        }
    }

    /// Stop sending and return the totals. Panics if writing RTP failed.
    pub async fn stop(self) -> Sent {
        self.stop.store(true, Ordering::SeqCst);
        let sent = || Sent {
            audio: self.counters[0].load(Ordering::SeqCst),
            video: self.counters[1].load(Ordering::SeqCst),
        };
        for task in self.tasks {
            task.await
                .expect("media task panicked")
                .expect("writing RTP failed");
        }
        sent()
    }
}

/// A webrtc-rs participant.
pub struct RsPeer {
    /// Test-assigned index, carried in every payload this peer sends.
    pub index: u8,
    /// Display name.
    pub name: String,
    /// Server-assigned participant id.
    pub participant_id: String,
    /// `joined.participants`.
    pub joined_participants: Vec<ParticipantInfo>,
    pc: Arc<dyn PeerConnection>,
    out: mpsc::UnboundedSender<ClientMessage>,
    shared: Arc<Mutex<Shared>>,
    rx: Arc<Mutex<HashMap<String, TrackRx>>>,
    connection: watch::Receiver<RTCPeerConnectionState>,
    local: Vec<LocalTrack>,
    audio_pt: u8,
    video_pt: u8,
    signaling: JoinHandle<()>,
    trickle: Option<JoinHandle<()>>,
}

const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Build a webrtc-rs peer connection that can only use 127.0.0.1 over UDP.
async fn build_peer_connection(handler: Handler) -> anyhow::Result<Arc<dyn PeerConnection>> {
    let mut media_engine = MediaEngine::default();
    media_engine.register_default_codecs()?;
    let registry = register_default_interceptors(Registry::new(), &mut media_engine)?;
    // The defaults register the sdes:mid header extension for video only; offer it for audio
    // too so the server can tag every forwarded stream with its mid.
    let mid_ext = RTCRtpHeaderExtensionCapability {
        uri: "urn:ietf:params:rtp-hdrext:sdes:mid".to_owned(),
    };
    media_engine.register_header_extension(mid_ext, RtpCodecKind::Audio, None)?;

    let setting_engine = SettingEngineBuilder::new()
        // No mDNS: nothing binds 0.0.0.0:5353 or joins the multicast group.
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        // Filters local *and* remote candidates: the server's ICE-TCP candidate is ignored.
        .with_network_types(vec![NetworkType::Udp4])
        // Not read by webrtc-rs 0.21 (host candidates come from the bound sockets, see
        // `with_udp_addrs` below); set for versions that filter loopback again.
        .with_include_loopback_candidate(true)
        .build();

    let config = RTCConfigurationBuilder::new()
        .with_ice_servers(vec![])
        .with_bundle_policy(RTCBundlePolicy::MaxBundle)
        .build();

    let pc = PeerConnectionBuilder::new()
        .with_configuration(config)
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_setting_engine(setting_engine)
        .with_handler(Arc::new(handler))
        // A concrete address binds exactly that socket: the only candidate is 127.0.0.1.
        .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
        .build()
        .await?;
    Ok(Arc::new(pc))
}

/// A sendonly local track with a fixed SSRC and one codec.
fn local_track(name: &str, kind: Kind, ssrc: u32) -> Arc<TrackLocalStaticRTP> {
    let mut coding = RTCRtpEncodingParameters::default();
    coding.rtp_coding_parameters.ssrc = Some(ssrc);
    match kind {
        Kind::Audio => {
            coding.codec.mime_type = "audio/opus".to_owned();
            coding.codec.clock_rate = 48_000;
            coding.codec.channels = 2;
        }
        Kind::Video => {
            coding.codec.mime_type = "video/VP8".to_owned();
            coding.codec.clock_rate = 90_000;
            coding.codec.channels = 0;
        }
    }
    let track = MediaStreamTrack::new(
        format!("{name}-stream"),
        format!("{name}-{}", kind.as_str()),
        format!("{name} {}", kind.as_str()),
        match kind {
            Kind::Audio => RtpCodecKind::Audio,
            Kind::Video => RtpCodecKind::Video,
        },
        vec![coding],
    );
    Arc::new(TrackLocalStaticRTP::new(track))
}

async fn negotiated_payload_type(sender: &Arc<dyn RtpSender>, mime: &str) -> anyhow::Result<u8> {
    let params = sender.get_parameters().await?;
    params
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
        .map(|c| c.payload_type)
        .ok_or_else(|| {
            anyhow!(
                "{mime} not negotiated; sender codecs: {:?}",
                params
                    .rtp_parameters
                    .codecs
                    .iter()
                    .map(|c| format!("{}/{}", c.rtp_codec.mime_type, c.payload_type))
                    .collect::<Vec<_>>()
            )
        })
}

impl RsPeer {
    /// [`RsPeer::connect_with`] trickling candidates.
    pub async fn connect(
        http_addr: SocketAddr,
        room: &str,
        name: &str,
        index: u8,
    ) -> anyhow::Result<RsPeer> {
        RsPeer::connect_with(http_addr, room, name, index, CandidateMode::Trickle).await
    }

    /// Join `room` and complete the initial negotiation (offer with two sendonly tracks →
    /// answer → ICE + DTLS connected). `index` is carried in every payload this peer sends.
    pub async fn connect_with(
        http_addr: SocketAddr,
        room: &str,
        name: &str,
        index: u8,
        mode: CandidateMode,
    ) -> anyhow::Result<RsPeer> {
        let mut ws = connect_ws(http_addr).await;
        let joined = join(&mut ws, room, name).await;
        RsPeer::on_joined_socket(ws, joined, name, index, mode).await
    }

    /// Start the WebRTC session on a socket that already joined a room (e.g. a clinic
    /// socket after `auth` and `join_consultation`).
    pub async fn on_joined_socket(
        ws: Ws,
        joined: Joined,
        name: &str,
        index: u8,
        mode: CandidateMode,
    ) -> anyhow::Result<RsPeer> {
        let (cand_tx, mut cand_rx) = mpsc::unbounded_channel();
        let (gathering_tx, mut gathering_rx) = watch::channel(RTCIceGatheringState::New);
        let (connection_tx, connection_rx) = watch::channel(RTCPeerConnectionState::New);
        let rx = Arc::new(Mutex::new(HashMap::new()));
        let pc = build_peer_connection(Handler {
            name: name.to_owned(),
            candidates: cand_tx,
            gathering: gathering_tx,
            connection: connection_tx,
            rx: Arc::clone(&rx),
        })
        .await
        .context("building the webrtc-rs peer connection")?;

        let mut local = Vec::new();
        for kind in [Kind::Audio, Kind::Video] {
            let ssrc = (u32::from(index) << 24) | (u32::from(kind == Kind::Video) << 16) | 0x1234;
            let track = local_track(name, kind, ssrc);
            let transceiver = pc
                .add_transceiver_from_track(
                    Arc::clone(&track) as Arc<dyn TrackLocal>,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Sendonly,
                        streams: vec![],
                        send_encodings: vec![],
                    }),
                )
                .await
                .with_context(|| format!("adding the {kind:?} transceiver"))?;
            let sender = transceiver
                .sender()
                .await?
                .ok_or_else(|| anyhow!("{kind:?} transceiver has no sender"))?;
            local.push(LocalTrack {
                kind,
                track,
                ssrc,
                sender,
            });
        }

        let offer = pc.create_offer(None).await?;
        // Before set_local_description, so it has no candidates: those trickle.
        let trickle_sdp = offer.sdp.clone();
        pc.set_local_description(offer).await?;
        let offer_sdp = match mode {
            CandidateMode::Trickle => trickle_sdp,
            CandidateMode::InOffer => {
                tokio::time::timeout(
                    NEGOTIATION_TIMEOUT,
                    gathering_rx.wait_for(|s| *s == RTCIceGatheringState::Complete),
                )
                .await
                .map_err(|_| anyhow!("ICE gathering did not complete"))??;
                let sdp = pc
                    .local_description()
                    .await
                    .ok_or_else(|| anyhow!("no local description after gathering"))?
                    .sdp;
                if !sdp.contains("a=candidate:") {
                    bail!("gathering completed but the offer has no candidates:\n{sdp}");
                }
                sdp
            }
        };
        check_loopback_only(&offer_sdp)?;

        let shared = Arc::new(Mutex::new(Shared {
            last_local_sdp: offer_sdp.clone(),
            ..Shared::default()
        }));
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        // Queued before any candidate, so the server sees the offer first.
        out_tx
            .send(ClientMessage::Offer {
                sdp: offer_sdp,
                sources: Default::default(),
                renew: false,
            })
            .map_err(|_| anyhow!("signaling task gone"))?;
        let signaling = tokio::spawn(signaling_task(
            name.to_owned(),
            ws,
            out_rx,
            Arc::clone(&pc),
            Arc::clone(&shared),
        ));
        let trickle = (mode == CandidateMode::Trickle).then(|| {
            let out = out_tx.clone();
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                while let Some(event) = cand_rx.recv().await {
                    let candidate = match event {
                        CandidateEvent::Candidate(c) => {
                            if !candidate_is_loopback_udp(&c) {
                                shared
                                    .lock()
                                    .unwrap()
                                    .failures
                                    .push(format!("non-loopback local candidate {c}"));
                                continue;
                            }
                            c
                        }
                        // End of candidates.
                        CandidateEvent::Complete => String::new(),
                    };
                    let _ = out.send(ClientMessage::Candidate {
                        candidate,
                        sdp_mid: None,
                        sdp_m_line_index: Some(0),
                    });
                }
            })
        });

        let mut peer = RsPeer {
            index,
            name: name.to_owned(),
            participant_id: joined.participant_id,
            joined_participants: joined.participants,
            pc,
            out: out_tx,
            shared,
            rx,
            connection: connection_rx,
            local,
            audio_pt: 0,
            video_pt: 0,
            signaling,
            trickle,
        };

        peer.wait_until(
            "the answer to the first offer is applied",
            NEGOTIATION_TIMEOUT,
            |s| s.initial_answer_applied,
        )
        .await?;
        let mut connection = peer.connection.clone();
        let state = *tokio::time::timeout(
            NEGOTIATION_TIMEOUT,
            connection.wait_for(|s| {
                matches!(
                    s,
                    RTCPeerConnectionState::Connected
                        | RTCPeerConnectionState::Failed
                        | RTCPeerConnectionState::Closed
                )
            }),
        )
        .await
        .map_err(|_| {
            anyhow!(
                "[{name}] peer connection not connected within {NEGOTIATION_TIMEOUT:?} (state {}); {}",
                *peer.connection.borrow(),
                peer.diagnostics()
            )
        })??;
        if state != RTCPeerConnectionState::Connected {
            bail!("[{name}] peer connection {state}; {}", peer.diagnostics());
        }
        for t in &peer.local {
            let pt = match t.kind {
                Kind::Audio => negotiated_payload_type(&t.sender, "audio/opus").await?,
                Kind::Video => negotiated_payload_type(&t.sender, "video/VP8").await?,
            };
            match t.kind {
                Kind::Audio => peer.audio_pt = pt,
                Kind::Video => peer.video_pt = pt,
            }
        }
        Ok(peer)
    }

    /// Send a protocol message on the signaling socket.
    pub fn send(&self, msg: ClientMessage) {
        let _ = self.out.send(msg);
    }

    /// Current WebRTC connection state.
    pub fn connection_state(&self) -> RTCPeerConnectionState {
        *self.connection.borrow()
    }

    /// Every server message received so far.
    pub fn messages(&self) -> Vec<ServerMessage> {
        self.shared
            .lock()
            .unwrap()
            .log
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Remote tracks currently announced, by mid.
    pub fn remote_tracks(&self) -> BTreeMap<String, RemoteTrack> {
        self.shared.lock().unwrap().tracks.clone()
    }

    /// Remote tracks removed so far.
    pub fn removed_tracks(&self) -> Vec<RemoteTrack> {
        self.shared.lock().unwrap().removed.clone()
    }

    /// Server offers answered so far.
    pub fn offers_answered(&self) -> u32 {
        self.shared.lock().unwrap().offers_answered
    }

    /// The last SDP the server sent (offer or answer).
    pub fn last_remote_sdp(&self) -> String {
        self.shared.lock().unwrap().last_remote_sdp.clone()
    }

    /// Wait until more than `count` server offers have been answered.
    pub async fn wait_offers_answered(&self, count: u32, timeout: Duration) -> anyhow::Result<()> {
        self.wait_until(
            &format!("more than {count} answered offers"),
            timeout,
            |s| s.offers_answered > count,
        )
        .await
    }

    /// Client-side failures plus any `error` the server sent.
    pub fn problems(&self) -> Vec<String> {
        let s = self.shared.lock().unwrap();
        let mut problems = s.failures.clone();
        for (_, m) in &s.log {
            if let ServerMessage::Error { code, message } = m {
                problems.push(format!("server error {code:?}: {message}"));
            }
        }
        problems
    }

    /// Why the signaling socket closed, if it has.
    pub fn closed(&self) -> Option<String> {
        self.shared.lock().unwrap().closed.clone()
    }

    /// State dump for assertion messages.
    pub fn diagnostics(&self) -> String {
        let s = self.shared.lock().unwrap();
        let rx = self.rx.lock().unwrap();
        let rx: BTreeMap<_, _> = rx
            .iter()
            .map(|(id, t)| {
                let seqs: BTreeMap<_, _> = t.seqs.iter().map(|(p, s)| (*p, s.len())).collect();
                (
                    id.clone(),
                    format!(
                        "{} packets={} corrupt={} distinct={seqs:?} err={:?}",
                        t.kind, t.packets, t.corrupt, t.first_error
                    ),
                )
            })
            .collect();
        let msgs: Vec<String> = s
            .log
            .iter()
            .map(|(_, m)| match m {
                ServerMessage::Offer { .. } => "offer".to_owned(),
                ServerMessage::Answer { .. } => "answer".to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        format!(
            "[{} {}] connection={} offers_answered={} failures={:?} closed={:?}\n  messages={msgs:?}\n  tracks={:?}\n  rx={rx:#?}\n  last remote SDP:\n{}\n  last local SDP:\n{}",
            self.name,
            self.participant_id,
            *self.connection.borrow(),
            s.offers_answered,
            s.failures,
            s.closed,
            s.tracks,
            s.last_remote_sdp,
            s.last_local_sdp
        )
    }

    async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Shared) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let s = self.shared.lock().unwrap();
                if pred(&s) {
                    return Ok(());
                }
                if !s.failures.is_empty() {
                    drop(s);
                    bail!(
                        "[{}] failed while waiting for {what}: {}",
                        self.name,
                        self.diagnostics()
                    );
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "[{}] timed out after {timeout:?} waiting for {what}: {}",
                    self.name,
                    self.diagnostics()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until the server announced `count` remote tracks (of anyone) and answered at least
    /// one server offer.
    pub async fn wait_remote_tracks(
        &self,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<RemoteTrack>> {
        self.wait_until(&format!("{count} remote tracks"), timeout, |s| {
            s.tracks.len() >= count && s.offers_answered > 0
        })
        .await?;
        Ok(self.remote_tracks().into_values().collect())
    }

    /// Wait until the server announced `count` tracks of `participant_id` and answered at
    /// least one server offer.
    pub async fn wait_tracks_of(
        &self,
        participant_id: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<RemoteTrack>> {
        self.wait_until(
            &format!("{count} tracks of {participant_id}"),
            timeout,
            |s| {
                s.tracks
                    .values()
                    .filter(|t| t.participant_id == participant_id)
                    .count()
                    >= count
                    && s.offers_answered > 0
            },
        )
        .await?;
        Ok(self
            .remote_tracks()
            .into_values()
            .filter(|t| t.participant_id == participant_id)
            .collect())
    }

    /// Wait for a server message matching `pred` (searching all messages received so far).
    pub async fn wait_message(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&ServerMessage) -> bool,
    ) -> anyhow::Result<ServerMessage> {
        let mut found = None;
        self.wait_until(what, timeout, |s| {
            found = s.log.iter().map(|(_, m)| m).find(|m| pred(m)).cloned();
            found.is_some()
        })
        .await?;
        Ok(found.expect("set when the wait succeeds"))
    }

    /// Wait until the signaling socket is closed by the server.
    pub async fn wait_closed(&self, timeout: Duration) -> anyhow::Result<String> {
        self.wait_until("the socket to close", timeout, |s| s.closed.is_some())
            .await?;
        Ok(self.closed().expect("closed"))
    }

    /// Distinct packets received from `publisher` of `kind`, over all tracks.
    pub fn received_from(&self, publisher: u8, kind: Kind) -> usize {
        self.rx
            .lock()
            .unwrap()
            .values()
            .filter(|t| Kind::parse(&t.kind) == Some(kind))
            .filter_map(|t| t.seqs.get(&publisher))
            .map(|s| s.len())
            .sum()
    }

    /// Distinct packets received from `publisher` of `kind` whose marker seq is in `seqs`.
    pub fn received_in(&self, publisher: u8, kind: Kind, seqs: std::ops::Range<u32>) -> usize {
        self.rx
            .lock()
            .unwrap()
            .values()
            .filter(|t| Kind::parse(&t.kind) == Some(kind))
            .filter_map(|t| t.seqs.get(&publisher))
            .map(|s| s.iter().filter(|seq| seqs.contains(seq)).count())
            .sum()
    }

    /// RTP packets received so far, over all tracks (valid or not, duplicates included).
    pub fn received_total(&self) -> u64 {
        self.rx.lock().unwrap().values().map(|t| t.packets).sum()
    }

    /// Packets that failed payload verification, over all tracks.
    pub fn corrupt_packets(&self) -> u64 {
        self.rx.lock().unwrap().values().map(|t| t.corrupt).sum()
    }

    /// Received-track statistics keyed by webrtc-rs track id.
    pub fn rx_stats(&self) -> HashMap<String, TrackRx> {
        self.rx.lock().unwrap().clone()
    }

    /// Wait until at least `min` packets of each kind arrived from `publisher`.
    pub async fn wait_received(
        &self,
        publisher: u8,
        min: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let (a, v) = (
                self.received_from(publisher, Kind::Audio),
                self.received_from(publisher, Kind::Video),
            );
            if a >= min && v >= min {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "[{}] got {a} audio / {v} video packets from publisher {publisher} within {timeout:?}, wanted {min}: {}",
                    self.name,
                    self.diagnostics()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Map webrtc-rs remote track ids to the mid they are received on.
    pub async fn track_mids(&self) -> HashMap<String, String> {
        let mut map = HashMap::new();
        for t in self.pc.get_transceivers().await {
            let (Ok(Some(mid)), Ok(Some(receiver))) = (t.mid().await, t.receiver().await) else {
                continue;
            };
            map.insert(receiver.track().track_id().await, mid);
        }
        map
    }

    /// Start publishing until stopped: one Opus packet every `audio_interval` (20 ms is the
    /// usual Opus frame, 50 packets/s) and VP8 at 30 frames/s of 3 packets each.
    pub fn start_media(&self, audio_interval: Duration) -> MediaHandle {
        let stop = Arc::new(AtomicBool::new(false));
        let counters: Arc<[AtomicU32; 2]> = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        let mut tasks = Vec::new();
        for t in &self.local {
            let (pt, interval, packets_per_tick, ts_step) = match t.kind {
                Kind::Audio => (
                    self.audio_pt,
                    audio_interval,
                    1u32,
                    (audio_interval.as_micros() * 48 / 1000) as u32,
                ),
                Kind::Video => (self.video_pt, Duration::from_micros(33_333), 3, 3000),
            };
            let track = Arc::clone(&t.track);
            let (kind, ssrc, publisher) = (t.kind, t.ssrc, self.index);
            let stop = Arc::clone(&stop);
            let counters = Arc::clone(&counters);
            let counter = usize::from(kind == Kind::Video);
            tasks.push(tokio::spawn(async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut seq: u32 = 0;
                let mut rtp_seq: u16 = rand::random();
                let mut timestamp: u32 = rand::random();
                while !stop.load(Ordering::SeqCst) {
                    ticker.tick().await;
                    for i in 0..packets_per_tick {
                        let mut packet = rtp::Packet::default();
                        packet.header.version = 2;
                        packet.header.payload_type = pt;
                        packet.header.sequence_number = rtp_seq;
                        packet.header.timestamp = timestamp;
                        packet.header.ssrc = ssrc;
                        packet.header.marker = match kind {
                            Kind::Audio => seq == 0,
                            Kind::Video => i + 1 == packets_per_tick,
                        };
                        packet.payload =
                            Bytes::from(media::build_payload(publisher, kind, seq, i == 0));
                        track
                            .write_rtp(packet)
                            .await
                            .with_context(|| format!("write_rtp {kind:?} seq {seq}"))?;
                        counters[counter].fetch_add(1, Ordering::SeqCst);
                        seq += 1;
                        rtp_seq = rtp_seq.wrapping_add(1);
                    }
                    timestamp = timestamp.wrapping_add(ts_step);
                }
                Ok(())
            }));
        }
        MediaHandle {
            stop,
            counters,
            tasks,
        }
    }

    /// Send `leave`.
    pub fn leave(&self) {
        self.send(ClientMessage::Leave {});
    }

    /// Close the peer connection and the signaling socket (with a close frame).
    pub async fn close(self) {
        let _ = self.pc.close().await;
        if let Some(trickle) = self.trickle {
            trickle.abort();
            let _ = trickle.await;
        }
        drop(self.out);
        let mut signaling = self.signaling;
        if tokio::time::timeout(Duration::from_secs(2), &mut signaling)
            .await
            .is_err()
        {
            signaling.abort();
        }
    }
}

/// `a=candidate` lines of our SDP must all be UDP 127.0.0.1 host candidates.
fn check_loopback_only(sdp: &str) -> anyhow::Result<()> {
    for line in sdp.lines().filter(|l| l.starts_with("a=candidate:")) {
        if !candidate_is_loopback_udp(&line[2..]) {
            bail!("non-loopback candidate in local SDP: {line}");
        }
    }
    Ok(())
}

/// The server's SDP may only announce 127.0.0.1 host candidates (UDP or ICE-TCP) in these
/// loopback tests.
fn check_remote_candidates(sdp: &str) -> anyhow::Result<()> {
    for line in sdp.lines().filter(|l| l.starts_with("a=candidate:")) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let loopback = fields.len() >= 8
            && fields[4]
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
            && fields[7] == "host";
        if !loopback {
            bail!("non-loopback candidate: {line}");
        }
    }
    Ok(())
}

/// `candidate:<foundation> <component> <transport> <priority> <address> <port> typ host ...`
fn candidate_is_loopback_udp(candidate: &str) -> bool {
    let fields: Vec<&str> = candidate.split_whitespace().collect();
    fields.len() >= 8
        && fields[2].eq_ignore_ascii_case("udp")
        && fields[4]
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
        && fields[6] == "typ"
        && fields[7] == "host"
}

/// Owns the WebSocket: writes queued client messages, applies server answers, answers server
/// offers in arrival order, and records everything else.
async fn signaling_task(
    name: String,
    mut ws: Ws,
    mut out: mpsc::UnboundedReceiver<ClientMessage>,
    pc: Arc<dyn PeerConnection>,
    shared: Arc<Mutex<Shared>>,
) {
    use futures_util::StreamExt;
    let fail = |what: String| {
        eprintln!("[{name}] {what}");
        shared.lock().unwrap().failures.push(what);
    };
    loop {
        tokio::select! {
            msg = out.recv() => {
                let Some(msg) = msg else {
                    let _ = ws.close(None).await;
                    return;
                };
                if let ClientMessage::Answer { sdp } | ClientMessage::Offer { sdp, .. } = &msg {
                    shared.lock().unwrap().last_local_sdp = sdp.clone();
                }
                if let Err(e) = send_msg_checked(&mut ws, &msg).await {
                    shared.lock().unwrap().closed.get_or_insert(format!("send failed: {e}"));
                    return;
                }
            }
            frame = ws.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => {
                        shared.lock().unwrap().closed = Some(format!("close frame {frame:?}"));
                        return;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        shared.lock().unwrap().closed = Some(format!("error {e}"));
                        return;
                    }
                    None => {
                        shared.lock().unwrap().closed = Some("end of stream".into());
                        return;
                    }
                };
                let msg: ServerMessage = match serde_json::from_str(&text) {
                    Ok(m) => m,
                    Err(e) => {
                        fail(format!("unparsable server frame ({e}): {text}"));
                        continue;
                    }
                };
                shared.lock().unwrap().log.push((Instant::now(), msg.clone()));
                match msg {
                    ServerMessage::Answer { sdp, .. } => {
                        shared.lock().unwrap().last_remote_sdp = sdp.clone();
                        if let Err(e) = check_remote_candidates(&sdp) {
                            fail(format!("server answer: {e}"));
                        }
                        let result = async {
                            pc.set_remote_description(RTCSessionDescription::answer(sdp)?).await
                        }
                        .await;
                        match result {
                            Ok(()) => shared.lock().unwrap().initial_answer_applied = true,
                            Err(e) => fail(format!("applying the server answer: {e}")),
                        }
                    }
                    ServerMessage::Offer { sdp } => {
                        if !shared.lock().unwrap().initial_answer_applied {
                            fail("server sent an offer before answering our first offer".into());
                        }
                        shared.lock().unwrap().last_remote_sdp = sdp.clone();
                        if let Err(e) = check_remote_candidates(&sdp) {
                            fail(format!("server offer: {e}"));
                        }
                        match answer_offer(&pc, sdp).await {
                            Ok(answer) => {
                                shared.lock().unwrap().last_local_sdp = answer.clone();
                                if let Err(e) =
                                    send_msg_checked(&mut ws, &ClientMessage::Answer { sdp: answer }).await
                                {
                                    shared.lock().unwrap().closed.get_or_insert(format!("send failed: {e}"));
                                    return;
                                }
                                shared.lock().unwrap().offers_answered += 1;
                            }
                            Err(e) => fail(format!("answering a server offer: {e:#}")),
                        }
                    }
                    ServerMessage::TrackAdded { participant_id, track_id, mid, kind, .. } => {
                        let track = RemoteTrack { participant_id, track_id, mid: mid.clone(), kind };
                        if let Some(old) = shared.lock().unwrap().tracks.insert(mid, track.clone()) {
                            fail(format!("track_added {track:?} reuses the mid of live track {old:?}"));
                        }
                    }
                    ServerMessage::TrackRemoved { participant_id, track_id, mid } => {
                        let mut s = shared.lock().unwrap();
                        match s.tracks.remove(&mid) {
                            Some(t) if t.track_id == track_id && t.participant_id == participant_id => {
                                s.removed.push(t)
                            }
                            other => {
                                drop(s);
                                fail(format!(
                                    "track_removed {participant_id}/{track_id} on mid {mid} does not match the announced {other:?}"
                                ));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

async fn answer_offer(pc: &Arc<dyn PeerConnection>, sdp: String) -> anyhow::Result<String> {
    pc.set_remote_description(RTCSessionDescription::offer(sdp)?)
        .await
        .context("set_remote_description(offer)")?;
    let answer = pc.create_answer(None).await.context("create_answer")?;
    pc.set_local_description(answer)
        .await
        .context("set_local_description(answer)")?;
    let sdp = pc
        .local_description()
        .await
        .ok_or_else(|| anyhow!("no local description after answering"))?
        .sdp;
    check_loopback_only(&sdp)?;
    Ok(sdp)
}

async fn send_msg_checked(
    ws: &mut Ws,
    msg: &ClientMessage,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    use futures_util::SinkExt;
    let json = serde_json::to_string(msg).expect("ClientMessage serializes");
    ws.send(Message::text(json)).await
}
