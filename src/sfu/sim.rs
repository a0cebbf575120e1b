//! In-memory network with virtual time for exercising the SFU core with real str0m peers.
//!
//! Clients are str0m `Rtc`s in RTP mode speaking the same signaling the WebSocket carries (as
//! [`SignalInput`]s and [`ServerMessage`]s), so ICE, DTLS, SRTP, NACK/RTX and RTCP all run for
//! real; only the sockets and the clock are simulated. Loss is drawn from a seeded generator,
//! so every run of a test sees the same packets dropped. Used by the core's unit tests and the
//! forwarding benchmark; not part of the server.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use huizhen_signaling::protocol::{ServerMessage, TrackKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite};
use str0m::{Candidate, Event, Input, Output, Rtc};

use super::{
    LeaveReason, ParticipantId, PeerMode, Sfu, SfuConfig, SfuMetrics, SfuOutput, SignalInput,
};

/// Address the simulated server announces and receives on.
pub const SERVER_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 7882);

/// A small deterministic PRNG (xorshift64*), enough for loss decisions.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (seed 0 is remapped).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (v >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One received RTP packet, as a client saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Mid it arrived on (client's session).
    pub mid: Mid,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Payload type (the client's own numbering).
    pub pt: Pt,
    /// RTP sequence number (low 16 bits).
    pub seq: u16,
    /// RTP timestamp.
    pub rtp_time: u32,
    /// Marker bit (last packet of a video frame).
    pub marker: bool,
    /// Virtual time of arrival.
    pub at: Instant,
}

/// A client's downlink: a bottleneck with a rate, a drop-tail queue, a delay and random loss
/// (what tc `tbf` and netem do to a real link).
#[derive(Debug, Clone)]
pub struct Link {
    /// Bit/s.
    pub rate: u64,
    /// Longest a packet may wait in the queue; beyond it, packets are dropped.
    pub queue: Duration,
    /// Extra one-way delay.
    pub delay: Duration,
    /// Probability that a media packet is lost on the link.
    pub loss: f64,
    /// When the link finishes sending what is queued.
    free_at: Option<Instant>,
    /// Packets dropped by the full queue.
    pub queue_drops: usize,
    /// Packets dropped by random loss.
    pub random_drops: usize,
    /// Bytes the link carried (IP and UDP headers included).
    pub carried_bytes: u64,
    /// Of those, per RTP payload type (RTCP under 255), for explorations.
    pub carried_by_pt: std::collections::BTreeMap<u8, u64>,
}

impl Link {
    /// A link of `rate` bit/s with a 200 ms queue and no delay or loss.
    pub fn rate(rate: u64) -> Link {
        Link {
            rate,
            queue: Duration::from_millis(200),
            delay: Duration::ZERO,
            loss: 0.0,
            free_at: None,
            queue_drops: 0,
            random_drops: 0,
            carried_bytes: 0,
            carried_by_pt: Default::default(),
        }
    }
}

/// Layers of a simulated simulcast camera: rid, bytes per frame at 20 fps, frame height.
pub const SIM_LAYERS: [(&str, usize, u16); 3] =
    [("q", 750, 120), ("h", 2_500, 240), ("f", 8_000, 480)];

/// A simulated simulcast encoder: VP8-shaped frames per layer with real payload descriptors
/// (15-bit picture ids, TL0PICIDX, three temporal layers in Chrome's L1T3 pattern: TIDs
/// 0 2 1 2, a keyframe always TID 0), keyframes with frame headers carrying their size, and the
/// layer index and frame number in the payload so receivers can tell what they got.
#[derive(Debug, Clone, Default)]
pub struct SimEncoder {
    /// Frames encoded so far.
    pub frame: u32,
    /// Next picture id per layer (each layer has its own numbering, as in Chrome).
    picture_id: [u16; 3],
    /// TL0PICIDX per layer: counts the layer's TID 0 pictures.
    tl0: [u8; 3],
    /// Keyframe wanted per layer.
    keyframe_due: [bool; 3],
    /// Next sequence number per layer.
    seq: [u64; 3],
    /// Layers declared (indexes into [`SIM_LAYERS`]).
    pub active: [bool; 3],
    /// Layers the server asked to stop (`publish_layers`), as a browser sets an encoding
    /// inactive.
    pub stopped: [bool; 3],
    /// Frames sent per layer.
    pub frames_sent: [usize; 3],
    /// Keyframes sent per layer.
    pub keyframes: [usize; 3],
}

/// A simulated client.
pub struct SimClient {
    /// Its participant id.
    pub id: ParticipantId,
    /// Its WebRTC stack.
    pub rtc: Rtc,
    /// Its transport address.
    pub addr: SocketAddr,
    /// Signaling messages received, in order.
    pub signals: Vec<ServerMessage>,
    /// Media received.
    pub received: Vec<Received>,
    /// Keyframe requests received for its own tracks.
    pub keyframe_requests: usize,
    /// Mids it publishes on: (audio, video).
    pub publish_mids: Vec<(MediaKind, Mid)>,
    /// Its outstanding offer.
    pending: Option<SdpPendingOffer>,
    /// Next sequence number per published mid.
    next_seq: HashMap<Mid, u64>,
    /// Removed by the server.
    pub removed: Option<LeaveReason>,
    /// Drop everything this client sends (simulates a dead peer).
    pub mute_network: bool,
    /// The address its NAT maps it to now, if not its own: what it sends to the server comes
    /// from there, and what the server sends there reaches it (a NAT rebinding, a carrier
    /// moving the phone to another public address).
    pub nat_addr: Option<SocketAddr>,
    /// Its signaling socket is down: the server's messages to it are lost (counted in
    /// `signals_lost`), as the edge drops them for a detached participant.
    pub signaling_down: bool,
    /// Messages lost while `signaling_down`.
    pub signals_lost: usize,
    next_timeout: Instant,
    /// Its simulcast camera, if it publishes one.
    pub encoder: Option<SimEncoder>,
    /// Keyframe requests received per rid (`None`: no rid).
    pub keyframe_requests_by_rid: HashMap<Option<String>, usize>,
    /// Its downlink, if limited.
    pub downlink: Option<Link>,
    /// Its microphone hears speech (the audio level it sends).
    pub speaking: bool,
    /// The microphone bitrate the server asked for (`publish_audio`), if any.
    pub audio_cap: Option<u32>,
}

struct InFlight {
    source: SocketAddr,
    destination: SocketAddr,
    bytes: Vec<u8>,
}

/// The simulated world: the SFU core, its clients and the wire between them.
pub struct SimNet {
    /// Virtual now.
    pub now: Instant,
    /// The core under test.
    pub sfu: Sfu,
    /// Clients by index.
    pub clients: Vec<SimClient>,
    rng: Rng,
    /// Probability that an RTP/RTCP datagram is lost (STUN/DTLS are never dropped).
    pub media_loss: f64,
    /// One-way delay.
    pub latency: Duration,
    wire: BTreeMap<(Instant, u64), InFlight>,
    wire_seq: u64,
    /// Datagrams dropped by the simulated loss.
    pub lost: usize,
    /// Packets the core handed to the recorder.
    pub recorded: Vec<super::RecordedPacket>,
    /// Clients added from now on negotiate Opus with RED (RFC 2198), as browsers do.
    pub opus_red: bool,
    /// What the next client's published m-lines carry, in the order of its `publish` kinds
    /// (empty: the defaults, microphone and camera).
    pub next_sources: Vec<huizhen_signaling::protocol::TrackSource>,
}

/// SFU settings for simulations.
pub fn sim_config() -> SfuConfig {
    SfuConfig {
        udp_candidates: vec![SERVER_ADDR],
        tcp_candidates: vec![],
        max_participants_per_room: 200,
        max_viewers_per_room: 200,
        max_participants: 1_000,
        keyframe_throttle: Duration::from_millis(500),
        retransmit_history: Duration::from_millis(1000),
        peer_timeout: Duration::from_secs(4),
        connect_timeout: Duration::from_secs(20),
        resume_grace: Duration::from_secs(30),
    }
}

impl SimNet {
    /// A world with no clients.
    pub fn new(seed: u64) -> SimNet {
        SimNet::with_config(seed, sim_config())
    }

    /// A world with a custom core configuration.
    pub fn with_config(seed: u64, config: SfuConfig) -> SimNet {
        let now = Instant::now();
        SimNet {
            now,
            sfu: Sfu::new(config, SfuMetrics::unregistered()),
            clients: Vec::new(),
            rng: Rng::new(seed),
            media_loss: 0.0,
            latency: Duration::from_millis(5),
            wire: BTreeMap::new(),
            wire_seq: 0,
            lost: 0,
            recorded: Vec::new(),
            opus_red: false,
            next_sources: Vec::new(),
        }
    }

    /// Join `room`, publish the given kinds, and run until negotiated. Returns the index.
    pub fn add_client(&mut self, room: &str, publish: &[MediaKind]) -> usize {
        self.add_client_with_codec(room, publish, Some(Codec::Vp8))
    }

    /// Like [`SimNet::add_client`], with `video_codec` as the client's only video codec
    /// (`None`: str0m's default codec set).
    pub fn add_client_with_codec(
        &mut self,
        room: &str,
        publish: &[MediaKind],
        video_codec: Option<Codec>,
    ) -> usize {
        self.add_client_full(room, publish, video_codec, true, None, PeerMode::Full)
    }

    /// Add a one-offer client as `mode` (a WHIP publisher sending `kinds`, a WHEP viewer
    /// offering to receive `kinds`), never offered anything by the server.
    pub fn add_one_offer_client(
        &mut self,
        room: &str,
        kinds: &[MediaKind],
        mode: PeerMode,
    ) -> usize {
        self.add_client_full(room, kinds, Some(Codec::Vp8), true, None, mode)
    }

    /// Add a client that tries to publish `publish` but joined without the right to publish.
    pub fn add_observer(&mut self, room: &str, publish: &[MediaKind]) -> usize {
        self.add_client_full(room, publish, Some(Codec::Vp8), false, None, PeerMode::Full)
    }

    fn add_client_full(
        &mut self,
        room: &str,
        publish: &[MediaKind],
        video_codec: Option<Codec>,
        may_publish: bool,
        simulcast: Option<&[&str]>,
        mode: PeerMode,
    ) -> usize {
        let index = self.clients.len();
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, index as u8 + 1)), 5000);
        let id = self
            .sfu
            .join_as(
                self.now,
                room,
                &format!("client-{index}"),
                may_publish,
                mode,
                None,
            )
            .expect("join accepted");
        let builder = Rtc::builder().set_rtp_mode(true);
        let builder = match video_codec {
            None => builder,
            Some(codec) => {
                let b = builder.clear_codecs().enable_opus(true, self.opus_red);
                match codec {
                    Codec::H264 => b.enable_h264(true),
                    Codec::Vp9 => b.enable_vp9(true),
                    _ => b.enable_vp8(true),
                }
            }
        };
        let mut rtc = builder.build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
        let mut change = rtc.sdp_api();
        let mut publish_mids = Vec::new();
        for kind in publish {
            let layers = simulcast.filter(|_| *kind == MediaKind::Video).map(|rids| {
                let mut layers = Simulcast::new();
                for rid in rids {
                    layers.add_send_layer(SimulcastLayer::new(rid));
                }
                layers
            });
            if mode == PeerMode::ReceiveOnly {
                change.add_media(*kind, Direction::RecvOnly, None, None, None);
                continue;
            }
            let mid = change.add_media(*kind, Direction::SendOnly, None, None, layers);
            publish_mids.push((*kind, mid));
        }
        if publish.is_empty() {
            change.add_channel("control".into());
        }
        let (offer, pending) = change.apply().expect("client offer");
        self.clients.push(SimClient {
            id,
            rtc,
            addr,
            signals: Vec::new(),
            received: Vec::new(),
            keyframe_requests: 0,
            publish_mids,
            pending: Some(pending),
            next_seq: HashMap::new(),
            removed: None,
            mute_network: false,
            nat_addr: None,
            signaling_down: false,
            signals_lost: 0,
            audio_cap: None,
            next_timeout: self.now,
            encoder: simulcast.map(|rids| SimEncoder {
                active: SIM_LAYERS.map(|(rid, _, _)| rids.contains(&rid)),
                keyframe_due: [true; 3],
                seq: [1; 3],
                ..SimEncoder::default()
            }),
            keyframe_requests_by_rid: HashMap::new(),
            downlink: None,
            speaking: false,
        });
        self.route_outputs();
        // What each published m-line carries, where the test named it (`next_sources`, in
        // the order of `publish`).
        let sources = std::mem::take(&mut self.next_sources)
            .into_iter()
            .zip(self.clients[index].publish_mids.iter())
            .map(|(source, (_, mid))| (mid.to_string(), source))
            .collect();
        self.sfu
            .handle_signal(
                self.now,
                id,
                SignalInput::Offer {
                    sdp: offer.to_sdp_string(),
                    sources,
                },
            )
            .expect("offer accepted");
        self.route_outputs();
        self.run_for(Duration::from_millis(300));
        index
    }

    /// `client` restarts ICE: an offer with new ICE credentials (as a browser's
    /// `restartIce()`), answered by the server. Returns its new ufrag.
    pub fn restart_ice(&mut self, client: usize) -> String {
        let c = &mut self.clients[client];
        let mut change = c.rtc.sdp_api();
        let creds = change.ice_restart(true);
        let (offer, pending) = change.apply().expect("restart offer");
        c.pending = Some(pending);
        let id = c.id;
        self.sfu
            .handle_signal(
                self.now,
                id,
                SignalInput::Offer {
                    sdp: offer.to_sdp_string(),
                    sources: Default::default(),
                },
            )
            .expect("restart offer accepted");
        self.route_outputs();
        creds.ufrag
    }

    /// `client` replaces its peer connection (a page's fresh `RTCPeerConnection` after a
    /// change of network): a new VP8/Opus `Rtc` at `addr` publishing the same kinds (and the
    /// same simulcast layers), whose first offer renews the session. Returns nothing: the
    /// answer and the server's offer follow as usual.
    pub fn renew_session(&mut self, client: usize, addr: SocketAddr) {
        let now = self.now;
        let opus_red = self.opus_red;
        let c = &mut self.clients[client];
        let kinds: Vec<MediaKind> = c.publish_mids.iter().map(|(k, _)| *k).collect();
        let rids: Option<Vec<&str>> = c.encoder.as_ref().map(|enc| {
            SIM_LAYERS
                .iter()
                .zip(enc.active)
                .filter(|(_, active)| *active)
                .map(|((rid, _, _), _)| *rid)
                .collect()
        });
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, opus_red)
            .enable_vp8(true)
            .build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
        let mut change = rtc.sdp_api();
        let mut publish_mids = Vec::new();
        for kind in kinds {
            let layers = rids
                .as_ref()
                .filter(|_| kind == MediaKind::Video)
                .map(|rids| {
                    let mut layers = Simulcast::new();
                    for rid in rids {
                        layers.add_send_layer(SimulcastLayer::new(rid));
                    }
                    layers
                });
            let mid = change.add_media(kind, Direction::SendOnly, None, None, layers);
            publish_mids.push((kind, mid));
        }
        if publish_mids.is_empty() {
            change.add_channel("control".into());
        }
        let (offer, pending) = change.apply().expect("client offer");
        c.rtc = rtc;
        c.addr = addr;
        c.nat_addr = None;
        c.mute_network = false;
        c.pending = Some(pending);
        c.publish_mids = publish_mids;
        c.next_seq.clear();
        c.next_timeout = now;
        if let Some(enc) = c.encoder.as_mut() {
            enc.keyframe_due = [true; 3];
        }
        let id = c.id;
        self.sfu
            .handle_signal(
                now,
                id,
                SignalInput::Renew {
                    sdp: offer.to_sdp_string(),
                    sources: Default::default(),
                },
            )
            .expect("renewal accepted");
        self.route_outputs();
    }

    /// Join `room` with a microphone and a simulcast camera (the layers of [`SIM_LAYERS`]),
    /// and run until negotiated. Returns the index.
    pub fn add_simulcast_client(&mut self, room: &str) -> usize {
        self.add_simulcast_client_with(room, &["q", "h", "f"])
    }

    /// Like [`SimNet::add_simulcast_client`], declaring and sending only the layers `rids`
    /// (of [`SIM_LAYERS`]), as a browser does for a camera too small for three.
    pub fn add_simulcast_client_with(&mut self, room: &str, rids: &[&str]) -> usize {
        self.add_client_full(
            room,
            &[MediaKind::Audio, MediaKind::Video],
            Some(Codec::Vp8),
            true,
            Some(rids),
            PeerMode::Full,
        )
    }

    /// Have every client with a simulcast camera send one frame on each active layer (and
    /// every keyframe that was asked for). Frames are 50 ms apart (20 fps).
    pub fn send_frames(&mut self) {
        let now = self.now;
        for i in 0..self.clients.len() {
            let pt = self.pt(i, MediaKind::Video);
            let c = &mut self.clients[i];
            let Some(enc) = c.encoder.as_mut() else {
                continue;
            };
            if c.removed.is_some() {
                continue;
            }
            let Some((_, mid)) = c
                .publish_mids
                .iter()
                .find(|(k, _)| *k == MediaKind::Video)
                .copied()
            else {
                continue;
            };
            let frame = enc.frame;
            enc.frame += 1;
            let rtp_time = frame.wrapping_mul(4_500);
            let mut packets = Vec::new();
            for (l, (rid, size, height)) in SIM_LAYERS.iter().enumerate() {
                if !enc.active[l] || enc.stopped[l] {
                    continue;
                }
                enc.frames_sent[l] += 1;
                let key = std::mem::take(&mut enc.keyframe_due[l]) || frame % 200 == 0;
                let size = if key { size * 3 } else { *size };
                if key {
                    enc.keyframes[l] += 1;
                }
                let pid = enc.picture_id[l];
                enc.picture_id[l] = (pid + 1) & 0x7fff;
                let tid: u8 = if key {
                    0
                } else {
                    [0, 2, 1, 2][frame as usize % 4]
                };
                if tid == 0 {
                    enc.tl0[l] = enc.tl0[l].wrapping_add(1);
                }
                let tl0 = enc.tl0[l];
                // The frame: a VP8 frame tag (keyframe: bit 0 clear, then the start code and
                // 14-bit width and height), the layer and frame number, then filler.
                let mut body = if key {
                    let w = height * 4 / 3;
                    vec![
                        0x50,
                        0x2a,
                        0x00,
                        0x9d,
                        0x01,
                        0x2a,
                        w as u8,
                        (w >> 8) as u8,
                        *height as u8,
                        (*height >> 8) as u8,
                    ]
                } else {
                    vec![0x51, 0x2a, 0x00]
                };
                body.push(l as u8);
                body.extend_from_slice(&frame.to_be_bytes());
                body.resize(size, 0xab);
                let chunks: Vec<&[u8]> = body.chunks(1_000).collect();
                let n = chunks.len();
                for (k, chunk) in chunks.into_iter().enumerate() {
                    let mut payload = vec![
                        0x80 | if k == 0 { 0x10 } else { 0 },
                        0xe0,
                        0x80 | (pid >> 8) as u8,
                        pid as u8,
                        tl0,
                        // TID, and Y (layer sync) on pictures that depend on TID 0 only.
                        tid << 6 | if tid == 2 { 0 } else { 0x20 },
                    ];
                    payload.extend_from_slice(chunk);
                    let seq = enc.seq[l];
                    enc.seq[l] += 1;
                    packets.push((Rid::from(*rid), seq, payload, k + 1 == n));
                }
            }
            let mut api = c.rtc.direct_api();
            for (rid, seq, payload, marker) in packets {
                let Some(tx) = api.stream_tx_by_mid(mid, Some(rid)) else {
                    continue;
                };
                tx.write_rtp(
                    RtpWrite::new(pt, seq.into(), rtp_time, now, payload)
                        .marker(marker)
                        .nackable(true),
                );
            }
            let _ = c.rtc.handle_input(Input::Timeout(now));
            self.drain_client(i);
        }
    }

    /// Run `d` of calls: every simulcast client sends 20 fps video and audio every 20 ms.
    pub fn run_media(&mut self, d: Duration) {
        let end = self.now + d;
        let mut tick = 0u32;
        while self.now < end {
            if tick.is_multiple_of(5) {
                self.send_frames();
            }
            if tick.is_multiple_of(2) {
                for i in 0..self.clients.len() {
                    if self.clients[i].encoder.is_some() && self.clients[i].removed.is_none() {
                        // 100 bytes per 20 ms (40 kbit/s), or what `publish_audio` allows.
                        let len = self.clients[i]
                            .audio_cap
                            .map_or(100, |cap| (cap as usize / 8 / 50).min(100));
                        self.send_rtp(i, MediaKind::Audio, &vec![0x55; len], false);
                    }
                }
            }
            tick += 1;
            self.run_for(Duration::from_millis(10));
        }
    }

    /// Payload type the client uses for `kind`.
    pub fn pt(&self, client: usize, kind: MediaKind) -> Pt {
        self.clients[client]
            .rtc
            .codec_config()
            .find(|p| {
                let codec = p.spec().codec;
                if kind == MediaKind::Audio {
                    codec == Codec::Opus
                } else {
                    codec.is_video()
                }
            })
            .expect("codec configured")
            .pt()
    }

    /// The RED payload type `client` negotiated for Opus, if it did.
    pub fn red_pt(&self, client: usize) -> Option<Pt> {
        self.clients[client]
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Opus)
            .and_then(|p| p.red())
    }

    /// Have `client` send one RTP packet on its published track of `kind`.
    pub fn send_rtp(&mut self, client: usize, kind: MediaKind, payload: &[u8], marker: bool) {
        let pt = self.pt(client, kind);
        self.send_rtp_as(client, kind, pt, payload, marker);
    }

    /// Like [`SimNet::send_rtp`], with payload type `pt` (RED, for example).
    pub fn send_rtp_as(
        &mut self,
        client: usize,
        kind: MediaKind,
        pt: Pt,
        payload: &[u8],
        marker: bool,
    ) {
        let Some((_, mid)) = self.clients[client]
            .publish_mids
            .iter()
            .find(|(k, _)| *k == kind)
            .copied()
        else {
            return;
        };
        self.send_rtp_on(client, mid, kind, pt, payload, marker);
    }

    /// Have `client` send one RTP packet on its published m-line `mid`.
    pub fn send_rtp_on(
        &mut self,
        client: usize,
        mid: Mid,
        kind: MediaKind,
        pt: Pt,
        payload: &[u8],
        marker: bool,
    ) {
        let now = self.now;
        let c = &mut self.clients[client];
        let seq = c.next_seq.entry(mid).or_insert(1);
        let this_seq = *seq;
        *seq += 1;
        let clock = if kind == MediaKind::Audio { 48 } else { 90 };
        let mut api = c.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            return;
        };
        // Microphones tell their level (RFC 6464): loud while the client speaks.
        let ext = ExtensionValues {
            audio_level: (kind == MediaKind::Audio).then_some(if c.speaking { -20 } else { -90 }),
            voice_activity: (kind == MediaKind::Audio).then_some(c.speaking),
            ..Default::default()
        };
        tx.write_rtp(
            RtpWrite::new(
                pt,
                this_seq.into(),
                (this_seq * 20 * clock) as u32,
                now,
                payload.to_vec(),
            )
            .marker(marker)
            .ext_vals(ext)
            .nackable(true),
        );
        let _ = c.rtc.handle_input(Input::Timeout(now));
        self.drain_client(client);
    }

    /// Have `client` send `packet` as it is (any header values: the fuzz targets) on its
    /// published m-line `mid`, layer `rid`.
    pub fn send_rtp_write(&mut self, client: usize, mid: Mid, rid: Option<Rid>, packet: RtpWrite) {
        let now = self.now;
        let c = &mut self.clients[client];
        let mut api = c.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, rid) else {
            return;
        };
        tx.write_rtp(packet);
        let _ = c.rtc.handle_input(Input::Timeout(now));
        self.drain_client(client);
    }

    /// Advance virtual time by `d`, delivering datagrams and firing timers.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step(end);
        }
    }

    fn step(&mut self, end: Instant) {
        let mut next = end;
        if let Some(t) = self.sfu.poll_timeout() {
            next = next.min(t);
        }
        for c in &self.clients {
            if c.removed.is_none() {
                next = next.min(c.next_timeout);
            }
        }
        if let Some(((at, _), _)) = self.wire.first_key_value() {
            next = next.min(*at);
        }
        // Always make progress, in steps no larger than 10 ms of virtual time.
        let next = next
            .max(self.now + Duration::from_micros(100))
            .min(self.now + Duration::from_millis(10));
        self.now = next.min(end).max(self.now);
        self.deliver_due();
        self.sfu.handle_timeout(self.now);
        self.route_outputs();
        for i in 0..self.clients.len() {
            if self.clients[i].removed.is_none() && self.clients[i].next_timeout <= self.now {
                let now = self.now;
                let _ = self.clients[i].rtc.handle_input(Input::Timeout(now));
                self.drain_client(i);
            }
        }
    }

    fn deliver_due(&mut self) {
        while self
            .wire
            .first_key_value()
            .is_some_and(|((at, _), _)| *at <= self.now)
        {
            let Some((_, p)) = self.wire.pop_first() else {
                break;
            };
            if p.destination == SERVER_ADDR {
                self.sfu.handle_datagram(
                    self.now,
                    Protocol::Udp,
                    p.source,
                    p.destination,
                    &p.bytes,
                );
                self.route_outputs();
            } else if let Some(i) = self
                .clients
                .iter()
                .position(|c| c.nat_addr.unwrap_or(c.addr) == p.destination)
            {
                let Ok(contents) = p.bytes.as_slice().try_into() else {
                    continue;
                };
                let input = Input::Receive(
                    self.now,
                    Receive {
                        proto: Protocol::Udp,
                        source: p.source,
                        destination: self.clients[i].addr,
                        contents,
                    },
                );
                if self.clients[i].removed.is_none() {
                    let _ = self.clients[i].rtc.handle_input(input);
                    self.drain_client(i);
                }
            }
        }
    }

    fn put_on_wire(&mut self, source: SocketAddr, destination: SocketAddr, bytes: Vec<u8>) {
        let is_media = matches!(bytes.first(), Some(128..=191));
        if is_media && self.media_loss > 0.0 && self.rng.next_f64() < self.media_loss {
            self.lost += 1;
            return;
        }
        let mut at = self.now + self.latency;
        if let Some(link) = self
            .clients
            .iter_mut()
            .find(|c| c.addr == destination)
            .and_then(|c| c.downlink.as_mut())
        {
            if is_media && link.loss > 0.0 && self.rng.next_f64() < link.loss {
                link.random_drops += 1;
                return;
            }
            let start = link.free_at.map_or(self.now, |t| t.max(self.now));
            if start.saturating_duration_since(self.now) > link.queue {
                link.queue_drops += 1;
                return;
            }
            let bits = (bytes.len() as u64 + 28) * 8;
            link.carried_bytes += bytes.len() as u64 + 28;
            if is_media {
                let pt = match bytes.get(1) {
                    Some(b @ 192..=223) if *b != 0 => 255,
                    Some(b) => b & 0x7f,
                    None => 0,
                };
                *link.carried_by_pt.entry(pt).or_default() += bytes.len() as u64 + 28;
            }
            let done = start + Duration::from_nanos(bits * 1_000_000_000 / link.rate.max(1));
            link.free_at = Some(done);
            at = done + self.latency + link.delay;
        }
        self.wire_seq += 1;
        self.wire.insert(
            (at, self.wire_seq),
            InFlight {
                source,
                destination,
                bytes,
            },
        );
    }

    /// Take every datagram in flight towards the server off the wire (benchmarks replay them).
    pub fn take_datagrams_to_server(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut taken = Vec::new();
        self.wire.retain(|_, p| {
            if p.destination == SERVER_ADDR {
                taken.push((p.source, std::mem::take(&mut p.bytes)));
                false
            } else {
                true
            }
        });
        taken
    }

    /// Inject raw bytes to the server from `source` (bad-input tests).
    pub fn inject(&mut self, source: SocketAddr, bytes: &[u8]) {
        self.sfu
            .handle_datagram(self.now, Protocol::Udp, source, SERVER_ADDR, bytes);
        self.route_outputs();
    }

    /// Move the core's outputs to the wire and to the clients' signaling inboxes.
    pub fn route_outputs(&mut self) {
        let mut signals = Vec::new();
        while let Some(out) = self.sfu.poll_output() {
            match out {
                SfuOutput::Transmit(t) => {
                    self.put_on_wire(t.source, t.destination, t.contents);
                }
                SfuOutput::Signal { to, message } => signals.push((to, message)),
                SfuOutput::Record(packet) => self.recorded.push(packet),
                SfuOutput::Removed {
                    participant,
                    reason,
                } => {
                    if let Some(c) = self.clients.iter_mut().find(|c| c.id == participant) {
                        c.removed = Some(reason);
                    }
                }
            }
        }
        for (to, message) in signals {
            self.on_signal(to, message);
        }
    }

    fn on_signal(&mut self, to: ParticipantId, message: ServerMessage) {
        let Some(i) = self.clients.iter().position(|c| c.id == to) else {
            return;
        };
        if self.clients[i].removed.is_some() {
            self.clients[i].signals.push(message);
            return;
        }
        if self.clients[i].signaling_down {
            self.clients[i].signals_lost += 1;
            return;
        }
        let reply = match &message {
            ServerMessage::Answer { sdp, .. } => {
                let c = &mut self.clients[i];
                if let Some(pending) = c.pending.take() {
                    let answer = SdpAnswer::from_sdp_string(sdp).expect("server answer parses");
                    c.rtc
                        .sdp_api()
                        .accept_answer(pending, answer)
                        .expect("answer accepted");
                }
                None
            }
            ServerMessage::Offer { sdp } => {
                let c = &mut self.clients[i];
                let offer = SdpOffer::from_sdp_string(sdp).expect("server offer parses");
                let answer = c.rtc.sdp_api().accept_offer(offer).expect("offer accepted");
                Some(answer.to_sdp_string())
            }
            ServerMessage::PublishAudio { max_bitrate, .. } => {
                self.clients[i].audio_cap = *max_bitrate;
                None
            }
            ServerMessage::PublishLayers { rids, .. } => {
                if let Some(enc) = self.clients[i].encoder.as_mut() {
                    for (l, (rid, _, _)) in SIM_LAYERS.iter().enumerate() {
                        let stop = !rids.iter().any(|r| r == rid);
                        if enc.stopped[l] && !stop {
                            // An encoding switched on again starts with a keyframe.
                            enc.keyframe_due[l] = true;
                        }
                        enc.stopped[l] = stop;
                    }
                }
                None
            }
            _ => None,
        };
        self.clients[i].signals.push(message);
        self.drain_client(i);
        if let Some(answer) = reply {
            let id = self.clients[i].id;
            self.sfu
                .handle_signal(self.now, id, SignalInput::Answer(answer))
                .expect("answer accepted by server");
            self.route_outputs();
        }
    }

    fn drain_client(&mut self, i: usize) {
        loop {
            let c = &mut self.clients[i];
            let out = match c.rtc.poll_output() {
                Ok(o) => o,
                Err(_) => return,
            };
            match out {
                Output::Timeout(t) => {
                    c.next_timeout = t;
                    return;
                }
                Output::Transmit(t) => {
                    if c.mute_network {
                        continue;
                    }
                    let (mut s, d) = (t.source, t.destination);
                    if d == SERVER_ADDR {
                        s = c.nat_addr.unwrap_or(s);
                    }
                    self.put_on_wire(s, d, t.contents.into());
                }
                Output::Event(Event::RtpPacket(p)) => {
                    let mid = c
                        .rtc
                        .direct_api()
                        .stream_rx(&p.header.ssrc)
                        .map(|s| s.mid());
                    if let Some(mid) = mid {
                        c.received.push(Received {
                            mid,
                            payload: p.payload.to_vec(),
                            pt: p.header.payload_type,
                            seq: p.header.sequence_number,
                            rtp_time: p.header.timestamp,
                            marker: p.header.marker,
                            at: self.now,
                        });
                    }
                }
                Output::Event(Event::KeyframeRequest(req)) => {
                    c.keyframe_requests += 1;
                    *c.keyframe_requests_by_rid
                        .entry(req.rid.map(|r| r.to_string()))
                        .or_default() += 1;
                    if let (Some(enc), Some(rid)) = (c.encoder.as_mut(), req.rid) {
                        if let Some(l) = SIM_LAYERS
                            .iter()
                            .position(|(r, _, _)| rid.to_string() == *r)
                        {
                            enc.keyframe_due[l] = true;
                        }
                    }
                }
                Output::Event(_) => {}
            }
        }
    }

    /// Mids on which `client` receives `publisher`'s tracks of `kind`, from `track_added`s
    /// not followed by `track_removed`.
    pub fn mids_from(&self, client: usize, publisher: usize, kind: TrackKind) -> Vec<Mid> {
        let pid = self.clients[publisher].id.to_string();
        let mut mids = Vec::new();
        for s in &self.clients[client].signals {
            match s {
                ServerMessage::TrackAdded {
                    participant_id,
                    mid,
                    kind: k,
                    ..
                } if *participant_id == pid && *k == kind => mids.push(Mid::from(mid.as_str())),
                ServerMessage::TrackRemoved { mid, .. } => {
                    mids.retain(|m| m.to_string() != *mid);
                }
                _ => {}
            }
        }
        mids
    }

    /// Payloads `client` received from `publisher`'s track of `kind`.
    pub fn payloads_from(&self, client: usize, publisher: usize, kind: TrackKind) -> Vec<&[u8]> {
        let mids = self.mids_from(client, publisher, kind);
        self.clients[client]
            .received
            .iter()
            .filter(|r| mids.contains(&r.mid))
            .map(|r| r.payload.as_slice())
            .collect()
    }
}
