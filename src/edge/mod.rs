//! The thin async edge around the sans-IO [`Sfu`] core.
//!
//! One task owns the core and its UDP socket: it receives datagrams, signaling commands and
//! ICE-TCP frames, feeds them to the core with the current time, and carries out what the core
//! asks (send a datagram, deliver a signaling message, close a session). Every queue towards a
//! single client is bounded and non-blocking, so a slow or dead client costs only its own
//! packets: the UDP socket is written with `try_send_to`, each ICE-TCP connection and each
//! signaling socket has its own bounded channel, and a full one drops (and counts) rather than
//! waits.

pub mod batch;
pub mod ice_tcp;
pub mod turn;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use huizhen_signaling::protocol::{ResumeGrant, ServerMessage};
use str0m::net::Protocol;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use self::batch::{SendBatch, Sent};
use crate::sfu::resume::BYE_RESUMED_ELSEWHERE;
use crate::sfu::{
    DropReason, LeaveReason, ParticipantId, Sfu, SfuError, SfuMetrics, SfuOutput, SignalInput,
    Transmit,
};

/// The signaling socket a participant's messages go to.
struct Attached {
    /// Its id (a socket that closed after another one resumed the participant changes
    /// nothing).
    session: u64,
    events: mpsc::Sender<ServerMessage>,
}

/// Capacity of the command channel into the media task.
const COMMAND_QUEUE: usize = 4_096;
/// Capacity of each signaling session's outgoing queue.
pub const SIGNAL_QUEUE: usize = 256;
/// Largest datagram read from the UDP socket.
const MAX_DATAGRAM: usize = 2_048;
/// Most datagrams read from the UDP socket per wake-up of the media task.
const RECEIVE_BURST: usize = 32;
/// Longest a forwarded packet waits for the rest of its burst before the burst's output is
/// sent: batching saves CPU, this bounds what it costs in delay.
const BURST_LATENCY: Duration = Duration::from_micros(50);
/// Longest the task sleeps without looking at timers.
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// A request to the media task.
#[derive(Debug)]
pub enum MediaCommand {
    /// Join a room; the session's messages go to `events`.
    Join {
        /// Room name.
        room: String,
        /// Display name.
        display_name: String,
        /// False for observers: their offered tracks are refused.
        may_publish: bool,
        /// The signaling socket's id.
        session: u64,
        /// The resume token for `joined` (`None`: resume is off).
        resume: Option<ResumeGrant>,
        /// Where this participant's signaling messages go.
        events: mpsc::Sender<ServerMessage>,
        /// The outcome.
        reply: oneshot::Sender<Result<ParticipantId, SfuError>>,
    },
    /// Join as a one-offer peer (a WHIP publisher, a WHEP viewer) and apply its SDP offer. On
    /// success the answer is the first `answer` on `events` (queued before the reply); a
    /// refused offer removes the participant again.
    JoinWithOffer {
        /// Room name.
        room: String,
        /// Display name.
        display_name: String,
        /// Whether its offered tracks are accepted.
        may_publish: bool,
        /// How it negotiates.
        mode: crate::sfu::PeerMode,
        /// The HTTP session's id.
        session: u64,
        /// The offer.
        sdp: String,
        /// Where its messages go (the answer; the rest is dropped by the HTTP session).
        events: mpsc::Sender<ServerMessage>,
        /// The outcome.
        reply: oneshot::Sender<Result<ParticipantId, SfuError>>,
    },
    /// ICE credentials and candidates from outside the SDP ([`Sfu::ice_fragment`]).
    IceFragment {
        /// Who.
        participant: ParticipantId,
        /// The peer's `(ufrag, pwd)`, if the fragment has them.
        credentials: Option<(String, String)>,
        /// `candidate:` lines.
        candidates: Vec<String>,
        /// The server's new credentials and candidates after an ICE restart.
        reply: oneshot::Sender<Result<Option<crate::sfu::IceRestarted>, SfuError>>,
    },
    /// The signaling socket `session` of `participant` closed: keep the participant for the
    /// resume grace ([`Sfu::detach`]). Ignored when another socket has taken it over.
    Detach {
        /// Who.
        participant: ParticipantId,
        /// The socket that closed.
        session: u64,
    },
    /// A new socket takes `participant` back (its resume token was checked by signaling);
    /// a socket still attached to it is told `bye` (`resumed_elsewhere`).
    Resume {
        /// Who.
        participant: ParticipantId,
        /// The new socket's id.
        session: u64,
        /// The token for the next resume.
        grant: ResumeGrant,
        /// Where the participant's messages go from now on.
        events: mpsc::Sender<ServerMessage>,
        /// Resumed, or the participant is gone.
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    /// Signaling from a joined participant; errors come back as `error` frames.
    Signal {
        /// Who.
        participant: ParticipantId,
        /// What.
        input: SignalInput,
    },
    /// Hand a participant's media to the recorder, or stop (consent given or withdrawn).
    SetRecorded {
        /// Who.
        participant: ParticipantId,
        /// Record or not.
        recorded: bool,
    },
    /// What the core knows of a room's media, for the admin API.
    RoomMedia {
        /// The room.
        room: String,
        /// The view, `None` for a room with nobody in it.
        reply: oneshot::Sender<Option<crate::sfu::view::RoomMedia>>,
    },
    /// Remove everyone from a room (its consultation ended).
    CloseRoom {
        /// The room.
        room: String,
    },
    /// Remove a participant.
    Leave {
        /// Who.
        participant: ParticipantId,
        /// Why.
        reason: LeaveReason,
    },
    /// A new ICE-TCP connection; frames for `peer` go to `writer`.
    TcpOpened {
        /// Remote address.
        peer: SocketAddr,
        /// Bounded queue of frames to write.
        writer: mpsc::Sender<Vec<u8>>,
    },
    /// One RFC 4571 frame received on an ICE-TCP connection.
    TcpFrame {
        /// Remote address.
        peer: SocketAddr,
        /// Local address.
        local: SocketAddr,
        /// Frame payload.
        data: Vec<u8>,
    },
    /// An ICE-TCP connection closed.
    TcpClosed {
        /// Remote address.
        peer: SocketAddr,
    },
    /// A TURN client connected over TCP or TLS; bytes for it go to `writer`.
    TurnStreamOpened {
        /// The connection.
        key: crate::turn::ClientKey,
        /// Bounded queue of bytes to write.
        writer: mpsc::Sender<Vec<u8>>,
    },
    /// One TURN message (STUN or ChannelData) from a TCP or TLS client.
    TurnStreamFrame {
        /// The connection.
        key: crate::turn::ClientKey,
        /// The message.
        data: Vec<u8>,
    },
    /// A `ConnectionBind` from a TURN client over TCP or TLS (RFC 6062): the reader waits for
    /// the outcome, because on success the connection carries raw bytes from then on.
    TurnConnectionBind {
        /// The connection.
        key: crate::turn::ClientKey,
        /// The request.
        data: Vec<u8>,
        /// The relayed address and the SFU's ICE-TCP address when bound; `None` otherwise.
        bound: oneshot::Sender<Option<(SocketAddr, SocketAddr)>>,
    },
    /// A TURN client's TCP or TLS connection closed (its allocation goes with it).
    TurnStreamClosed {
        /// The connection.
        key: crate::turn::ClientKey,
    },
}

/// Cheap, clonable handle to the media task.
#[derive(Clone)]
pub struct MediaHandle {
    commands: mpsc::Sender<MediaCommand>,
    alive: Arc<AtomicBool>,
}

/// The media task is gone (shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the media engine is not running")]
pub struct MediaGone;

impl MediaHandle {
    /// Join a room.
    pub async fn join(
        &self,
        room: String,
        display_name: String,
        may_publish: bool,
        session: u64,
        resume: Option<ResumeGrant>,
        events: mpsc::Sender<ServerMessage>,
    ) -> Result<Result<ParticipantId, SfuError>, MediaGone> {
        let (reply, answer) = oneshot::channel();
        self.send(MediaCommand::Join {
            room,
            display_name,
            may_publish,
            session,
            resume,
            events,
            reply,
        })
        .await?;
        answer.await.map_err(|_| MediaGone)
    }

    /// Join as a one-offer peer and apply its offer ([`MediaCommand::JoinWithOffer`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn join_with_offer(
        &self,
        room: String,
        display_name: String,
        may_publish: bool,
        mode: crate::sfu::PeerMode,
        session: u64,
        sdp: String,
        events: mpsc::Sender<ServerMessage>,
    ) -> Result<Result<ParticipantId, SfuError>, MediaGone> {
        let (reply, answer) = oneshot::channel();
        self.send(MediaCommand::JoinWithOffer {
            room,
            display_name,
            may_publish,
            mode,
            session,
            sdp,
            events,
            reply,
        })
        .await?;
        answer.await.map_err(|_| MediaGone)
    }

    /// ICE from an SDP fragment ([`MediaCommand::IceFragment`]).
    pub async fn ice_fragment(
        &self,
        participant: ParticipantId,
        credentials: Option<(String, String)>,
        candidates: Vec<String>,
    ) -> Result<Result<Option<crate::sfu::IceRestarted>, SfuError>, MediaGone> {
        let (reply, answer) = oneshot::channel();
        self.send(MediaCommand::IceFragment {
            participant,
            credentials,
            candidates,
            reply,
        })
        .await?;
        answer.await.map_err(|_| MediaGone)
    }

    /// Take `participant` back on a new socket ([`MediaCommand::Resume`]).
    pub async fn resume(
        &self,
        participant: ParticipantId,
        session: u64,
        grant: ResumeGrant,
        events: mpsc::Sender<ServerMessage>,
    ) -> Result<Result<(), SfuError>, MediaGone> {
        let (reply, answer) = oneshot::channel();
        self.send(MediaCommand::Resume {
            participant,
            session,
            grant,
            events,
            reply,
        })
        .await?;
        answer.await.map_err(|_| MediaGone)
    }

    /// The media of `room` (see [`crate::sfu::view`]).
    pub async fn room_media(
        &self,
        room: String,
    ) -> Result<Option<crate::sfu::view::RoomMedia>, MediaGone> {
        let (reply, answer) = oneshot::channel();
        self.send(MediaCommand::RoomMedia { room, reply }).await?;
        answer.await.map_err(|_| MediaGone)
    }

    /// Send any command.
    pub async fn send(&self, command: MediaCommand) -> Result<(), MediaGone> {
        self.commands.send(command).await.map_err(|_| MediaGone)
    }

    /// True while the media task runs.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed) && !self.commands.is_closed()
    }
}

/// Sockets and core for [`run`].
pub struct MediaTask {
    /// The core.
    pub sfu: Sfu,
    /// The media UDP socket.
    pub udp: UdpSocket,
    /// The addresses announced in candidates; see [`LocalAddress`].
    pub local: LocalAddress,
    /// Where media of consenting participants goes (never waited on).
    pub recorder: Option<crate::recorder::task::RecorderHandle>,
    /// Tracks the recorder wants a keyframe for.
    pub keyframe_wants: Option<crate::recorder::task::KeyframeWants>,
    /// The embedded TURN server, if on.
    pub turn: Option<turn::TurnEdge>,
}

/// Which local address to report to the core as a received datagram's destination.
///
/// str0m accepts ICE checks only on addresses it announced, and behind a 1:1 NAT the socket's
/// own address is not the announced one. The announced address of the sender's IP family is
/// used, so one announced address per family is supported.
#[derive(Debug, Clone)]
pub struct LocalAddress {
    /// Announced IPs.
    pub announce: Vec<std::net::IpAddr>,
}

impl LocalAddress {
    /// The announced address (with `port`) matching `source`'s IP family.
    pub fn for_source(&self, source: SocketAddr, port: u16) -> SocketAddr {
        let ip = self
            .announce
            .iter()
            .find(|ip| ip.is_ipv4() == source.is_ipv4())
            .or(self.announce.first())
            .copied()
            .unwrap_or(source.ip());
        SocketAddr::new(ip, port)
    }
}

/// Start the media task; returns its handle and the task's join handle.
pub fn spawn(
    task: MediaTask,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> (MediaHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let alive = Arc::new(AtomicBool::new(true));
    let handle = MediaHandle {
        commands: tx,
        alive: alive.clone(),
    };
    let join = tokio::spawn(async move {
        run(task, rx, shutdown).await;
        alive.store(false, Ordering::Relaxed);
    });
    (handle, join)
}

struct Edge {
    sfu: Sfu,
    metrics: SfuMetrics,
    /// `datagrams_received{protocol="udp"}`, resolved once (a label lookup per packet costs).
    udp_received: prometheus::IntCounter,
    /// `datagrams_sent{protocol="udp"}`.
    udp_sent: prometheus::IntCounter,
    /// `datagrams_sent{protocol="tcp"}`.
    tcp_sent: prometheus::IntCounter,
    /// UDP datagrams waiting for one `sendmmsg`.
    batch: SendBatch,
    udp: UdpSocket,
    udp_port: u16,
    local: LocalAddress,
    sessions: HashMap<ParticipantId, Attached>,
    tcp: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    recorder: Option<crate::recorder::task::RecorderHandle>,
    turn: Option<turn::TurnEdge>,
    /// `datagrams_received{protocol="turn"}`: relayed datagrams handed to the core.
    turn_received: prometheus::IntCounter,
}

async fn run(
    task: MediaTask,
    mut commands: mpsc::Receiver<MediaCommand>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let metrics = task.sfu.metrics().clone();
    let task_wants = task.keyframe_wants;
    let mut edge = Edge {
        sfu: task.sfu,
        udp_received: metrics.datagrams_received.with_label_values(&["udp"]),
        udp_sent: metrics.datagrams_sent.with_label_values(&["udp"]),
        tcp_sent: metrics.datagrams_sent.with_label_values(&["tcp"]),
        turn_received: metrics.datagrams_received.with_label_values(&["turn"]),
        batch: SendBatch::default(),
        metrics,
        udp_port: task.udp.local_addr().map(|a| a.port()).unwrap_or(0),
        udp: task.udp,
        local: task.local,
        recorder: task.recorder,
        sessions: HashMap::new(),
        tcp: HashMap::new(),
        turn: task.turn,
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut turn_buf = vec![0u8; MAX_DATAGRAM];
    let (_never_tx, never) = mpsc::channel(1);
    let mut keyframe_wants = task_wants.unwrap_or(never);
    info!(udp_port = edge.udp_port, "media engine running");
    // One timer, moved rather than re-created each turn.
    let sleep = tokio::time::sleep(MAX_SLEEP);
    tokio::pin!(sleep);
    loop {
        let now = Instant::now();
        let wake = edge
            .sfu
            .poll_timeout()
            .map_or(now + MAX_SLEEP, |t| t.min(now + MAX_SLEEP));
        let deadline = tokio::time::Instant::from_std(wake);
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        tokio::select! {
            received = edge.udp.recv_from(&mut buf) => match received {
                Ok((n, source)) => {
                    let burst_start = Instant::now();
                    edge.on_udp(source, &buf[..n]);
                    // Whatever else already waits is read now: one wake-up, one timer check
                    // and few sendmmsg calls for a burst of packets.
                    for _ in 1..RECEIVE_BURST {
                        if burst_start.elapsed() >= BURST_LATENCY {
                            break;
                        }
                        match edge.udp.try_recv_from(&mut buf) {
                            Ok((n, source)) => edge.on_udp(source, &buf[..n]),
                            Err(_) => break,
                        }
                    }
                }
                Err(e) => debug!(error = %e, "udp receive failed"),
            },
            received = recv_turn_udp(&edge.turn, &mut turn_buf) => match received {
                Ok((n, source)) => edge.on_turn_udp(source, &turn_buf[..n]),
                Err(e) => debug!(error = %e, "turn udp receive failed"),
            },
            command = commands.recv() => match command {
                Some(command) => edge.handle_command(command),
                None => break,
            },
            Some((participant, track)) = keyframe_wants.recv() => {
                edge.sfu.request_track_keyframe(Instant::now(), participant, track);
            }
            _ = &mut sleep => {}
            _ = shutdown.changed() => break,
        }
        let now = Instant::now();
        if now >= wake || edge.sfu.poll_timeout().is_some_and(|t| t <= now) {
            edge.sfu.handle_timeout(now);
        }
        if let Some(turn) = &mut edge.turn {
            turn.tick(now);
        }
        edge.close_turn_data();
        edge.flush();
    }
    edge.shutdown();
    info!("media engine stopped");
}

/// The next datagram on the TURN UDP socket (never, when TURN over UDP is off).
async fn recv_turn_udp(
    turn: &Option<turn::TurnEdge>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match turn.as_ref().and_then(|t| t.udp.as_ref()) {
        Some(udp) => udp.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

impl Edge {
    /// One datagram on the TURN UDP socket.
    fn on_turn_udp(&mut self, source: SocketAddr, bytes: &[u8]) {
        let Some(listen) = self.turn.as_ref().and_then(|t| t.udp_addr) else {
            return;
        };
        let key = crate::turn::ClientKey {
            transport: crate::turn::Transport::Udp,
            client: source,
            listen,
        };
        self.on_turn_message(key, bytes);
    }

    /// One TURN message from a client: a reply to it, or relayed data for the core. A
    /// `ConnectionBind` that succeeded returns the relayed address and the SFU's ICE-TCP
    /// address the connection now carries bytes between.
    fn on_turn_message(
        &mut self,
        key: crate::turn::ClientKey,
        bytes: &[u8],
    ) -> Option<(SocketAddr, SocketAddr)> {
        let turn = self.turn.as_mut()?;
        let now = Instant::now();
        match turn.core.handle_client(now, key, bytes) {
            Some(crate::turn::TurnOutput::Reply(reply)) => turn.send_to_client(key, reply),
            Some(crate::turn::TurnOutput::Bound {
                reply,
                relayed,
                peer,
            }) => {
                turn.send_to_client(key, reply);
                return Some((relayed, peer));
            }
            Some(crate::turn::TurnOutput::ToPeer {
                relayed,
                peer,
                data,
            }) => {
                self.turn_received.inc();
                self.sfu
                    .handle_datagram(now, Protocol::Udp, relayed, peer, data);
                if self.sfu.pending_outputs() >= batch::MAX_BATCH {
                    self.flush();
                }
            }
            None => {}
        }
        None
    }

    /// Close the TCP data connections whose allocation the TURN core ended: their writers
    /// go (the connection is shut down once its queue drains) and the SFU forgets them.
    fn close_turn_data(&mut self) {
        let Some(turn) = &mut self.turn else {
            return;
        };
        while let Some(closed) = turn.core.poll_closed() {
            turn.streams.remove(&closed.key);
            if self.tcp.remove(&closed.relayed).is_some() {
                self.metrics.ice_tcp_connections.dec();
            }
            self.sfu.tcp_closed(closed.relayed);
        }
    }

    /// One datagram from the UDP socket; the output is sent once enough has gathered.
    fn on_udp(&mut self, source: SocketAddr, bytes: &[u8]) {
        self.udp_received.inc();
        let local = self.local.for_source(source, self.udp_port);
        self.sfu
            .handle_datagram(Instant::now(), Protocol::Udp, source, local, bytes);
        if self.sfu.pending_outputs() >= batch::MAX_BATCH {
            self.flush();
        }
    }

    fn handle_command(&mut self, command: MediaCommand) {
        let now = Instant::now();
        match command {
            MediaCommand::Join {
                room,
                display_name,
                may_publish,
                session,
                resume,
                events,
                reply,
            } => {
                let result = self
                    .sfu
                    .join(now, &room, &display_name, may_publish, resume);
                self.attach(now, result, Attached { session, events }, reply);
            }
            MediaCommand::JoinWithOffer {
                room,
                display_name,
                may_publish,
                mode,
                session,
                sdp,
                events,
                reply,
            } => {
                let result = self
                    .sfu
                    .join_as(now, &room, &display_name, may_publish, mode, None)
                    .and_then(|id| {
                        let offer = SignalInput::Offer {
                            sdp,
                            sources: Default::default(),
                        };
                        match self.sfu.handle_signal(now, id, offer) {
                            Ok(()) => Ok(id),
                            Err(e) => {
                                self.sfu.leave(now, id, LeaveReason::Left);
                                Err(e)
                            }
                        }
                    });
                self.attach(now, result, Attached { session, events }, reply);
            }
            MediaCommand::IceFragment {
                participant,
                credentials,
                candidates,
                reply,
            } => {
                let _ =
                    reply.send(
                        self.sfu
                            .ice_fragment(now, participant, credentials, &candidates),
                    );
            }
            MediaCommand::Signal { participant, input } => {
                if let Err(e) = self.sfu.handle_signal(now, participant, input) {
                    debug!(%participant, error = %e, "signaling request refused");
                    self.deliver(participant, ServerMessage::error(e.code(), e.to_string()));
                }
            }
            MediaCommand::Leave {
                participant,
                reason,
            } => self.sfu.leave(now, participant, reason),
            MediaCommand::Detach {
                participant,
                session,
            } => {
                match self.sessions.get(&participant) {
                    // Another socket resumed it: this one's end changes nothing.
                    Some(a) if a.session != session => return,
                    Some(_) => {
                        self.sessions.remove(&participant);
                    }
                    None => {}
                }
                self.sfu.detach(now, participant);
            }
            MediaCommand::Resume {
                participant,
                session,
                grant,
                events,
                reply,
            } => {
                let old = self
                    .sessions
                    .insert(participant, Attached { session, events });
                match self.sfu.resume(now, participant, grant) {
                    Ok(()) => {
                        if let Some(old) = old.filter(|o| o.session != session) {
                            // A socket not yet seen to drop (a half-open one after a change
                            // of network): it must not act for the participant any more.
                            let _ = old.events.try_send(ServerMessage::Bye {
                                reason: BYE_RESUMED_ELSEWHERE.into(),
                            });
                        }
                        // `resumed` is queued before the socket learns it succeeded.
                        self.flush();
                        if reply.send(Ok(())).is_err() {
                            // The new socket closed meanwhile: detached again.
                            self.sessions.remove(&participant);
                            self.sfu.detach(now, participant);
                        }
                    }
                    Err(e) => {
                        match old {
                            Some(old) => {
                                self.sessions.insert(participant, old);
                            }
                            None => {
                                self.sessions.remove(&participant);
                            }
                        }
                        let _ = reply.send(Err(e));
                    }
                }
            }
            MediaCommand::CloseRoom { room } => self.sfu.close_room(now, &room),
            MediaCommand::RoomMedia { room, reply } => {
                let _ = reply.send(self.sfu.room_media(&room));
            }
            MediaCommand::SetRecorded {
                participant,
                recorded,
            } => {
                // The participant may have left already; nothing to do then.
                let _ = self.sfu.set_recorded(now, participant, recorded);
            }
            MediaCommand::TcpOpened { peer, writer } => {
                self.metrics.ice_tcp_connections.inc();
                self.tcp.insert(peer, writer);
            }
            MediaCommand::TcpFrame { peer, local, data } => {
                self.metrics
                    .datagrams_received
                    .with_label_values(&["tcp"])
                    .inc();
                let local = self.local.for_source(peer, local.port());
                self.sfu
                    .handle_datagram(now, Protocol::Tcp, peer, local, &data);
            }
            MediaCommand::TcpClosed { peer } => {
                if self.tcp.remove(&peer).is_some() {
                    self.metrics.ice_tcp_connections.dec();
                }
                self.sfu.tcp_closed(peer);
            }
            MediaCommand::TurnStreamOpened { key, writer } => {
                if let Some(turn) = &mut self.turn {
                    turn.streams.insert(key, writer);
                }
            }
            MediaCommand::TurnStreamFrame { key, data } => {
                self.on_turn_message(key, &data);
            }
            MediaCommand::TurnConnectionBind { key, data, bound } => {
                let result = self.on_turn_message(key, &data);
                let _ = bound.send(result);
            }
            MediaCommand::TurnStreamClosed { key } => {
                if let Some(turn) = &mut self.turn {
                    turn.streams.remove(&key);
                    turn.core.client_closed(&key);
                }
                self.close_turn_data();
            }
        }
    }

    /// Carry out everything the core asked for.
    fn flush(&mut self) {
        while let Some(output) = self.sfu.poll_output() {
            match output {
                SfuOutput::Transmit(t) => self.transmit(t),
                SfuOutput::Signal { to, message } => self.deliver(to, message),
                SfuOutput::Record(packet) => {
                    let result = match &self.recorder {
                        Some(recorder) if recorder.offer(packet) => "queued",
                        // Behind: dropped here, the recorder sees it as network loss.
                        Some(_) => "dropped",
                        None => "no_recorder",
                    };
                    self.metrics
                        .recorder_packets
                        .with_label_values(&[result])
                        .inc();
                }
                SfuOutput::Removed {
                    participant,
                    reason,
                } => {
                    if let Some(Attached { events, .. }) = self.sessions.remove(&participant) {
                        let _ = events.try_send(ServerMessage::Bye {
                            reason: reason.as_str().into(),
                        });
                    }
                }
            }
        }
        self.send_batch();
    }

    /// A join's outcome: the participant's messages go to `attached` from now on, and the
    /// requester learns the result; one that went away meanwhile takes its participant along.
    fn attach(
        &mut self,
        now: Instant,
        result: Result<ParticipantId, SfuError>,
        attached: Attached,
        reply: oneshot::Sender<Result<ParticipantId, SfuError>>,
    ) {
        if let Ok(id) = result {
            self.sessions.insert(id, attached);
            // `joined` (or the answer) must be queued before the session learns the join
            // succeeded, so it precedes any reply to the client's next frame.
            self.flush();
        }
        if reply.send(result.clone()).is_err() {
            // The socket (or HTTP request) went away while joining.
            if let Ok(id) = result {
                self.sfu.leave(now, id, LeaveReason::SignalingClosed);
            }
        }
    }

    /// Sends the UDP datagrams gathered by [`Self::transmit`] (the SFU's and TURN's).
    fn send_batch(&mut self) {
        if let Some(turn) = &mut self.turn {
            let latency = &self.metrics.forward_latency;
            turn.send_batch(|forwarded_from| {
                if let Some(received) = forwarded_from {
                    latency.observe(received.elapsed().as_secs_f64());
                }
            });
        }
        if self.batch.is_empty() {
            return;
        }
        let (metrics, sent) = (&self.metrics, &self.udp_sent);
        self.batch
            .send(&self.udp, |outcome, forwarded_from| match outcome {
                Sent::Ok => {
                    sent.inc();
                    if let Some(received) = forwarded_from {
                        metrics
                            .forward_latency
                            .observe(received.elapsed().as_secs_f64());
                    }
                }
                Sent::WouldBlock => metrics.drop_packet(DropReason::SocketFull),
                Sent::Failed(e) => {
                    debug!(error = %e, "udp send failed");
                    metrics.drop_packet(DropReason::NoRoute);
                }
            });
    }

    fn transmit(&mut self, t: Transmit) {
        let sent = match t.proto {
            Protocol::Udp => {
                if let Some(turn) = &mut self.turn {
                    if turn.core.owns(&t.destination) {
                        turn.relay_to_client(
                            Instant::now(),
                            t.source,
                            t.destination,
                            &t.contents,
                            t.forwarded_from,
                        );
                        if turn.batch.len() >= batch::MAX_BATCH {
                            self.send_batch();
                        }
                        return;
                    }
                }
                self.batch.push(t.destination, t.contents, t.forwarded_from);
                if self.batch.len() >= batch::MAX_BATCH {
                    self.send_batch();
                }
                return;
            }
            _ => match self.tcp.get(&t.destination) {
                Some(writer) => match writer.try_send(t.contents) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.metrics.drop_packet(DropReason::TcpQueueFull);
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        self.metrics.drop_packet(DropReason::NoRoute);
                        false
                    }
                },
                None => {
                    self.metrics.drop_packet(DropReason::NoRoute);
                    false
                }
            },
        };
        if sent {
            self.tcp_sent.inc();
            if let Some(received) = t.forwarded_from {
                self.metrics
                    .forward_latency
                    .observe(received.elapsed().as_secs_f64());
            }
        }
    }

    /// Queue a signaling message; a client that does not read its socket is removed rather
    /// than allowed to hold up the media task.
    fn deliver(&mut self, to: ParticipantId, message: ServerMessage) {
        let Some(Attached { events, .. }) = self.sessions.get(&to) else {
            return;
        };
        match events.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(participant = %to, "signaling queue full; removing participant");
                self.sessions.remove(&to);
                self.sfu
                    .leave(Instant::now(), to, LeaveReason::SignalingClosed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The socket is gone (its `Detach` may still be on the way): keep the
                // participant for a resume, as the socket's end would.
                self.sessions.remove(&to);
                self.sfu.detach(Instant::now(), to);
            }
        }
    }

    fn shutdown(&mut self) {
        // Detached participants too: they have no socket but still a media session.
        let ids = self.sfu.participant_ids();
        let now = Instant::now();
        for id in ids {
            self.sfu.leave(now, id, LeaveReason::Shutdown);
        }
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::sim::sim_config;

    async fn edge() -> Edge {
        let metrics = SfuMetrics::unregistered();
        Edge {
            sfu: Sfu::new(sim_config(), metrics.clone()),
            udp_received: metrics.datagrams_received.with_label_values(&["udp"]),
            udp_sent: metrics.datagrams_sent.with_label_values(&["udp"]),
            tcp_sent: metrics.datagrams_sent.with_label_values(&["tcp"]),
            turn_received: metrics.datagrams_received.with_label_values(&["turn"]),
            batch: SendBatch::default(),
            metrics,
            udp: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            udp_port: 0,
            local: LocalAddress {
                announce: vec!["127.0.0.1".parse().unwrap()],
            },
            sessions: HashMap::new(),
            tcp: HashMap::new(),
            recorder: None,
            turn: None,
        }
    }

    fn frame(to: SocketAddr) -> Transmit {
        Transmit {
            proto: Protocol::Tcp,
            source: "127.0.0.1:1".parse().unwrap(),
            destination: to,
            contents: vec![0x80; 100],
            forwarded_from: None,
        }
    }

    #[tokio::test]
    async fn a_stalled_tcp_subscriber_loses_only_its_own_frames() {
        let mut edge = edge().await;
        let slow: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let fast: SocketAddr = "127.0.0.1:4002".parse().unwrap();
        let (slow_tx, _slow_rx_never_read) = mpsc::channel(4);
        let (fast_tx, mut fast_rx) = mpsc::channel(4);
        edge.tcp.insert(slow, slow_tx);
        edge.tcp.insert(fast, fast_tx);
        for _ in 0..100 {
            edge.transmit(frame(slow));
            edge.transmit(frame(fast));
            // The fast subscriber's writer keeps up.
            while fast_rx.try_recv().is_ok() {}
        }
        let dropped = edge
            .metrics
            .dropped_packets
            .with_label_values(&["tcp_queue_full"])
            .get();
        assert_eq!(
            dropped, 96,
            "the slow queue holds 4, the rest is dropped and counted"
        );
        assert_eq!(
            edge.metrics
                .datagrams_sent
                .with_label_values(&["tcp"])
                .get(),
            104,
            "all 100 fast frames and 4 slow ones went out"
        );
    }

    #[tokio::test]
    async fn a_signaling_client_that_stops_reading_is_removed_not_waited_for() {
        let mut edge = edge().await;
        let (tx, _rx_never_read) = mpsc::channel(2);
        let now = Instant::now();
        let id = edge
            .sfu
            .join(now, "room", "slow reader", true, None)
            .unwrap();
        edge.sessions.insert(
            id,
            Attached {
                session: 1,
                events: tx,
            },
        );
        for _ in 0..3 {
            edge.deliver(id, ServerMessage::Pong {});
        }
        edge.flush();
        assert_eq!(edge.sfu.participant_count(), 0);
        assert!(edge.sessions.is_empty());
    }
}
