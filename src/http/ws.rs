//! One signaling WebSocket session: parses client frames, forwards them to the media task and
//! writes the media task's messages back.
//!
//! Every refused frame gets a typed `error` frame, a log line (without personal data) and a
//! count in `huizhen_signaling_errors_total{code}`; the socket and the room stay up.
//!
//! A stranger's socket is bounded: it must authenticate (or join an open room) within
//! [`AUTH_DEADLINE`], and after [`MAX_STRANGER_REFUSALS`] refused frames it is closed. Its
//! refusals reach the audit trail through the clinic's bounded [`RefusalLog`]
//! (crate::clinic::refusals::RefusalLog), naming the source only as a keyed hash.

use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::ws_guard::{StrangerGuard, Trust};

/// A signaling WebSocket, upgraded by the server (see `http::websocket`).
pub type WebSocket = tokio_tungstenite::WebSocketStream<
    StrangerGuard<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>,
>;
use futures_util::{SinkExt, StreamExt};
use huizhen_signaling::protocol::{
    parse_client_message, request_id_of, ClientMessage, ErrorCode, RequestId, ServerMessage,
};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use huizhen_signaling::clinic::{
    Actor, AppointmentId, ClinicId, ConsultationId, InvitationId, UserId,
};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::audit::source::SourceHasher;
use crate::auth::{TokenVerifier, Verified};
use crate::clinic::refusals::Refused;
use crate::clinic::{
    ClinicCommand, ClinicHandle, ClinicRequest, CommandReply, BYE_REPLACED, BYE_REVOKED,
    BYE_TOKEN_EXPIRED,
};
use crate::edge::{MediaCommand, MediaHandle, SIGNAL_QUEUE};
use crate::redact::Redacted;
use crate::sfu::resume::BYE_RESUMED_ELSEWHERE;
use crate::sfu::{LeaveReason, ParticipantId, SignalInput};

/// Signaling metrics (`huizhen_signaling_` registry).
#[derive(Clone)]
pub struct SignalingMetrics {
    /// Open WebSocket sessions.
    pub connections: IntGauge,
    /// Frames received, by message type (unknown types count as `invalid`).
    pub messages: IntCounterVec,
    /// Error frames sent, by code.
    pub errors: IntCounterVec,
    /// Upgrades refused because the source is in the penalty box.
    pub blocked_upgrades: prometheus::IntCounter,
    /// WHIP/WHEP requests by kind, method and HTTP status.
    pub whip_requests: IntCounterVec,
    /// Open WHIP/WHEP sessions by kind.
    pub whip_sessions: prometheus::IntGaugeVec,
}

impl SignalingMetrics {
    /// Create and register.
    pub fn new(registry: &Registry) -> SignalingMetrics {
        let connections =
            IntGauge::new("connections", "Open signaling WebSockets").expect("metric");
        let messages = IntCounterVec::new(
            Opts::new(
                "messages_received_total",
                "Signaling frames received, by type",
            ),
            &["type"],
        )
        .expect("metric");
        let errors = IntCounterVec::new(
            Opts::new("errors_total", "Signaling error frames sent, by code"),
            &["code"],
        )
        .expect("metric");
        registry
            .register(Box::new(connections.clone()))
            .expect("metric");
        registry
            .register(Box::new(messages.clone()))
            .expect("metric");
        registry.register(Box::new(errors.clone())).expect("metric");
        let blocked_upgrades = prometheus::IntCounter::new(
            "blocked_upgrades_total",
            "WebSocket upgrades refused (429) from sources whose sockets kept being closed for refusals",
        )
        .expect("metric");
        registry
            .register(Box::new(blocked_upgrades.clone()))
            .expect("metric");
        for code in ErrorCode::ALL {
            errors.with_label_values(&[code.as_str()]);
        }
        for kind in MESSAGE_TYPES {
            messages.with_label_values(&[kind]);
        }
        let whip_requests = IntCounterVec::new(
            Opts::new(
                "whip_requests_total",
                "WHIP and WHEP requests, by kind (whip, whep), method and HTTP status",
            ),
            &["kind", "method", "status"],
        )
        .expect("metric");
        let whip_sessions = prometheus::IntGaugeVec::new(
            Opts::new("whip_sessions", "Open WHIP and WHEP sessions, by kind"),
            &["kind"],
        )
        .expect("metric");
        registry
            .register(Box::new(whip_requests.clone()))
            .expect("metric");
        registry
            .register(Box::new(whip_sessions.clone()))
            .expect("metric");
        for kind in ["whip", "whep"] {
            whip_sessions.with_label_values(&[kind]);
        }
        SignalingMetrics {
            connections,
            messages,
            errors,
            blocked_upgrades,
            whip_requests,
            whip_sessions,
        }
    }
}

/// Everything a session needs from the server.
#[derive(Clone)]
pub struct SessionDeps {
    /// The SFU.
    pub media: MediaHandle,
    /// The clinic.
    pub clinic: ClinicHandle,
    /// Verifies identity tokens.
    pub verifier: Arc<TokenVerifier>,
    /// Metrics.
    pub metrics: SignalingMetrics,
    /// Whether plain `join` by room name is allowed (development, open meetings).
    pub open_rooms: bool,
    /// Hashes source addresses for the audit trail.
    pub sources: SourceHasher,
    /// Sources whose sockets keep being closed for refusals ([`super::penalty`]).
    pub penalties: std::sync::Arc<std::sync::Mutex<super::penalty::PenaltyBox>>,
    /// Resume tokens of joined participants ([`super::resume`]).
    pub resumes: std::sync::Arc<std::sync::Mutex<super::resume::ResumeRegistry>>,
    /// TURN URLs and credentials for `joined` and `resumed` (`None`: TURN is off).
    pub turn: Option<Arc<crate::turn::TurnGrants>>,
}

/// A socket that has neither authenticated nor joined an open room by then is closed.
pub const AUTH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
/// A socket that has neither authenticated nor joined is closed after this many refusals.
pub const MAX_STRANGER_REFUSALS: u32 = 3;

/// Rooms of consultations: only reachable through `join_consultation`.
pub const CONSULTATION_ROOM_PREFIX: &str = "consult-";

/// Whether a room name is in the consultation rooms' namespace, in any letter case (a name
/// that only looks like one is refused as well).
pub fn is_consultation_room(name: &str) -> bool {
    name.get(..CONSULTATION_ROOM_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(CONSULTATION_ROOM_PREFIX))
}

struct Session {
    id: u64,
    deps: SessionDeps,
    /// Where the media task and the clinic send this session's messages; made when first
    /// handed out (a stranger's socket never needs one: its block of slots is most of what an
    /// idle socket would cost).
    events_tx: Option<mpsc::Sender<ServerMessage>>,
    /// The receiving end of a channel just made, for the session loop to take.
    events_rx: Option<mpsc::Receiver<ServerMessage>>,
    participant: Option<ParticipantId>,
    identity: Option<(Actor, String)>,
    consultation: Option<ConsultationId>,
    /// Keyed hash of the peer address (never the address).
    source: Option<String>,
    /// The peer address, only for the penalty box (never logged or stored).
    peer: Option<std::net::IpAddr>,
    /// Refused frames while neither authenticated nor joined.
    stranger_refusals: u32,
    /// Requests whose reply comes from the media task (`joined`, `resumed`, `answer`) and
    /// their `request_id`, oldest first (bounded).
    awaiting: std::collections::VecDeque<(Awaited, RequestId)>,
    /// The participant's current resume token (given in `joined` or `resumed`).
    resume_token: Option<String>,
}

/// A reply that arrives from the media task rather than from the frame's handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaited {
    Joined,
    Resumed,
    Answer,
}

/// Requests remembered for [`Awaited`] replies (more in flight lose their ids, oldest first).
const MAX_AWAITED: usize = 8;

impl Awaited {
    /// What `message` (a client request) is answered with, if it comes from the media task.
    fn of(message: &ClientMessage) -> Option<Awaited> {
        match message {
            ClientMessage::Join { .. } | ClientMessage::JoinConsultation { .. } => {
                Some(Awaited::Joined)
            }
            ClientMessage::Resume { .. } => Some(Awaited::Resumed),
            ClientMessage::Offer { .. } => Some(Awaited::Answer),
            _ => None,
        }
    }

    /// Whether `message` is this kind of reply.
    fn is(self, message: &ServerMessage) -> bool {
        matches!(
            (self, message),
            (Awaited::Joined, ServerMessage::Joined { .. })
                | (Awaited::Resumed, ServerMessage::Resumed { .. })
                | (Awaited::Answer, ServerMessage::Answer { .. })
        )
    }
}

/// What to do after a client frame.
enum Next {
    Continue,
    Reply(ServerMessage),
    Close,
}

pub(crate) fn next_session_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Serve one WebSocket until either side ends it. `peer` is the client's address (hashed for
/// the audit trail, never kept).
///
/// `trust` is granted once the socket authenticates, joins or resumes: until then the guard
/// under the socket bounds what it may send (see [`super::ws_guard`]).
pub async fn serve(
    socket: WebSocket,
    deps: SessionDeps,
    peer: Option<std::net::IpAddr>,
    trust: Trust,
    seats: std::sync::Arc<tokio::sync::Semaphore>,
) {
    let metrics = deps.metrics.clone();
    metrics.connections.inc();
    let (mut sink, mut stream) = socket.split();
    let mut events: Option<mpsc::Receiver<ServerMessage>> = None;
    let source = peer.map(|ip| deps.sources.source(ip));
    let mut session = Session {
        id: next_session_id(),
        deps,
        events_tx: None,
        events_rx: None,
        participant: None,
        identity: None,
        consultation: None,
        source,
        peer,
        stranger_refusals: 0,
        awaiting: Default::default(),
        resume_token: None,
    };
    let deadline = tokio::time::sleep(AUTH_DEADLINE);
    tokio::pin!(deadline);
    // Held while the socket is trusted: the cap on signaling sessions.
    let mut seat = None;
    loop {
        if events.is_none() {
            events = session.events_rx.take();
        }
        if seat.is_none() && !session.is_stranger() {
            let Ok(permit) = seats.clone().try_acquire_owned() else {
                let message = session.error(
                    ErrorCode::Unavailable,
                    "the server has all the signaling sessions it takes; retry later".into(),
                );
                let _ = send(&mut sink, &metrics, &message, None).await;
                break;
            };
            seat = Some(permit);
            // Authenticated, joined or resumed: frames up to the protocol's limit from now on.
            trust.grant();
        }
        tokio::select! {
            // Server messages first: replies to a frame must not overtake what the media task
            // queued before it (e.g. `joined`).
            biased;
            event = async {
                match events.as_mut() {
                    Some(events) => events.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let Some(mut message) = event else { break };
                session.add_ice_servers(&mut message);
                let bye = match &message {
                    ServerMessage::Bye { reason } => Some(reason.clone()),
                    _ => None,
                };
                let request_id = session
                    .awaiting
                    .iter()
                    .position(|(kind, _)| kind.is(&message))
                    .and_then(|i| session.awaiting.remove(i))
                    .map(|(_, id)| id);
                if send(&mut sink, &metrics, &message, request_id.as_ref()).await.is_err() {
                    break;
                }
                if let Some(reason) = bye {
                    if reason == BYE_RESUMED_ELSEWHERE {
                        // Another socket took the participant back (this one was stale): it
                        // no longer acts for it, and its token was spent by that resume.
                        session.participant = None;
                        session.consultation = None;
                        session.resume_token = None;
                        break;
                    }
                    if reason != BYE_REPLACED {
                        // The media session is over (or the identity is): nothing to resume.
                        // A socket replaced by another of the same user keeps its token for
                        // the grace: that socket is likely to resume the participant.
                        if let Some(token) = session.resume_token.take() {
                            session.resumes().forget(&token);
                        }
                    }
                    if [BYE_REPLACED, BYE_TOKEN_EXPIRED, BYE_REVOKED].contains(&reason.as_str()) {
                        // The clinic ended this session (another socket took over, the token
                        // expired or was revoked): the socket goes with it.
                        session.identity = None;
                        break;
                    }
                    // The media session is over; an identified user keeps the socket for the
                    // clinic (waiting room, next consultation), anyone else is done.
                    session.participant = None;
                    session.consultation = None;
                    if session.identity.is_none() {
                        break;
                    }
                }
            }
            _ = &mut deadline, if session.is_stranger() => {
                let message = session.error(
                    ErrorCode::NotAuthenticated,
                    format!("no auth within {} s; closing", AUTH_DEADLINE.as_secs()),
                );
                let _ = send(&mut sink, &metrics, &message, None).await;
                session.penalize();
                break;
            }
            frame = stream.next() => {
                let mut request_id = None;
                let next = match frame {
                    Some(Ok(Message::Text(text))) => match request_id_of(&text) {
                        Ok(id) => {
                            request_id = id;
                            // Boxed: its future is most of the session's size, and an idle socket
                            // should not carry it.
                            Box::pin(session.on_text(&text, request_id.as_ref())).await
                        }
                        Err(e) => Next::Reply(session.error(e.code(), e.to_string())),
                    },
                    Some(Ok(Message::Binary(_))) => Next::Reply(session.error(
                        ErrorCode::BadJson,
                        "binary frames are not supported; send JSON text frames".into(),
                    )),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                        Next::Continue
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Next::Close,
                };
                match next {
                    Next::Continue => {}
                    Next::Reply(message) => {
                        let refused = matches!(message, ServerMessage::Error { .. });
                        if refused {
                            // Its reply will not come from the media task.
                            if let Some(id) = &request_id {
                                session.awaiting.retain(|(_, waiting)| waiting != id);
                            }
                        }
                        if send(&mut sink, &metrics, &message, request_id.as_ref()).await.is_err() {
                            break;
                        }
                        if refused && session.is_stranger() {
                            session.stranger_refusals += 1;
                            if session.stranger_refusals >= MAX_STRANGER_REFUSALS {
                                let message = session.error(
                                    ErrorCode::TooManyRefusals,
                                    "too many refused frames before authenticating; closing".into(),
                                );
                                let _ = send(&mut sink, &metrics, &message, None).await;
                                session.penalize();
                                break;
                            }
                        }
                    }
                    Next::Close => break,
                }
            }
        }
    }
    // Boxed for the same reason as `on_text`.
    Box::pin(session.close()).await;
    let _ = sink.send(Message::Close(None)).await;
    metrics.connections.dec();
}
/// Write one message; every error frame, whoever produced it, is counted here.
/// `request_id`: the client's label of the request this answers, echoed.
async fn send(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    metrics: &SignalingMetrics,
    message: &ServerMessage,
    request_id: Option<&RequestId>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    if let ServerMessage::Error { code, .. } = message {
        metrics.errors.with_label_values(&[code.as_str()]).inc();
    }
    sink.send(Message::Text(Utf8Bytes::from(
        message.to_json_for(request_id),
    )))
    .await
}

impl Session {
    /// `joined` and `resumed` carry a TURN credential minted for this session. It is added
    /// here, on the way to the socket, because the SFU core that builds those messages knows
    /// nothing of TURN, and a credential belongs to the signaling session that hands it out.
    fn add_ice_servers(&self, message: &mut ServerMessage) {
        let Some(grants) = &self.deps.turn else {
            return;
        };
        if let ServerMessage::Joined { ice_servers, .. }
        | ServerMessage::Resumed { ice_servers, .. } = message
        {
            let now_unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            *ice_servers = grants.ice_servers(now_unix);
        }
    }

    /// This stranger's socket is being closed for refusals: it counts against its source.
    fn penalize(&self) {
        if let Some(peer) = self.peer {
            let mut penalties = self
                .deps
                .penalties
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if penalties.record(std::time::Instant::now(), peer) {
                debug!("source blocked after repeated refusals");
            }
        }
    }

    /// The sender of this session's messages (the channel is made on first use).
    fn events_tx(&mut self) -> mpsc::Sender<ServerMessage> {
        if let Some(tx) = &self.events_tx {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(SIGNAL_QUEUE);
        self.events_tx = Some(tx.clone());
        self.events_rx = Some(rx);
        tx
    }

    /// Neither authenticated nor in a room: a stranger, bounded in time and refusals.
    fn is_stranger(&self) -> bool {
        self.identity.is_none() && self.participant.is_none()
    }

    fn error(&self, code: ErrorCode, message: String) -> ServerMessage {
        debug!(code = code.as_str(), "signaling error");
        ServerMessage::error(code, message)
    }

    fn resumes(&self) -> std::sync::MutexGuard<'_, super::resume::ResumeRegistry> {
        self.deps.resumes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The socket closed: the participant is kept for the resume grace (or leaves the SFU
    /// room when resume is off); the clinic keeps places and seats for its reconnect grace.
    async fn close(&mut self) {
        if let Some(participant) = self.participant.take() {
            let command = match self.resume_token.take() {
                Some(token) => {
                    self.resumes()
                        .socket_closed(std::time::Instant::now(), &token);
                    MediaCommand::Detach {
                        participant,
                        session: self.id,
                    }
                }
                None => MediaCommand::Leave {
                    participant,
                    reason: LeaveReason::SignalingClosed,
                },
            };
            let _ = self.deps.media.send(command).await;
        }
        if self.identity.is_some() {
            let _ = self
                .deps
                .clinic
                .send(ClinicRequest::Disconnect { session: self.id })
                .await;
        }
    }

    async fn on_text(&mut self, text: &str, request_id: Option<&RequestId>) -> Next {
        let message = match parse_client_message(text) {
            Ok(m) => m,
            Err(e) => {
                self.deps
                    .metrics
                    .messages
                    .with_label_values(&["invalid"])
                    .inc();
                return Next::Reply(self.error(e.code(), e.to_string()));
            }
        };
        self.deps
            .metrics
            .messages
            .with_label_values(&[message_type(&message)])
            .inc();
        if let (Some(kind), Some(id)) = (Awaited::of(&message), request_id) {
            if self.awaiting.len() >= MAX_AWAITED {
                self.awaiting.pop_front();
            }
            self.awaiting.push_back((kind, id.clone()));
        }
        match message {
            ClientMessage::Ping {} => Next::Reply(ServerMessage::Pong {}),
            ClientMessage::Join {
                room,
                display_name,
                token,
                ..
            } => self.join_room(room, display_name, token).await,
            ClientMessage::Auth { token } => self.authenticate(&token).await,
            ClientMessage::Offer {
                sdp,
                sources,
                renew: false,
            } => self.signal(SignalInput::Offer { sdp, sources }).await,
            ClientMessage::Offer {
                sdp,
                sources,
                renew: true,
            } => self.signal(SignalInput::Renew { sdp, sources }).await,
            ClientMessage::TrackPreferences { tracks } => {
                self.signal(SignalInput::Preferences(tracks)).await
            }
            ClientMessage::Answer { sdp } => self.signal(SignalInput::Answer(sdp)).await,
            ClientMessage::Candidate { candidate, .. } => {
                self.signal(SignalInput::Candidate(candidate)).await
            }
            ClientMessage::Leave {} => self.leave().await,
            ClientMessage::Resume { token } => self.resume(&token).await,
            other => self.clinic_message(other).await,
        }
    }

    async fn join_room(
        &mut self,
        room: String,
        display_name: String,
        token: Option<String>,
    ) -> Next {
        if self.participant.is_some() {
            return Next::Reply(self.error(
                ErrorCode::AlreadyJoined,
                "this socket has already joined a room; open a new socket to join another".into(),
            ));
        }
        if is_consultation_room(&room) {
            return self
                .refuse(
                    "join",
                    ErrorCode::Forbidden,
                    "consultation rooms are entered with join_consultation",
                    None,
                )
                .await;
        }
        if !self.deps.open_rooms {
            return self
                .refuse(
                    "join",
                    ErrorCode::Forbidden,
                    "joining rooms by name is disabled on this server (signaling.open_rooms)",
                    None,
                )
                .await;
        }
        // With a token, the verified name wins over the one typed in.
        let display_name = match token {
            Some(token) => match self.verify(&token).await {
                Ok(v) => v.display_name,
                Err(reply) => return reply,
            },
            None => display_name,
        };
        self.enter_room(room, display_name, true).await
    }

    async fn enter_room(&mut self, room: String, display_name: String, may_publish: bool) -> Next {
        info!(room = %Redacted(&room), display_name = %Redacted(&display_name), "join requested");
        let grant = self.resumes().grant(std::time::Instant::now());
        let (token, grant) = grant.unzip();
        let events = self.events_tx();
        match self
            .deps
            .media
            .join(room, display_name, may_publish, self.id, grant, events)
            .await
        {
            Ok(Ok(id)) => {
                self.participant = Some(id);
                if let Some(token) = token {
                    let actor = self.identity.as_ref().map(|(a, _)| a.clone());
                    let consultation = self.consultation.clone();
                    self.resumes().register(&token, id, actor, consultation);
                    self.resume_token = Some(token);
                }
                Next::Continue
            }
            Ok(Err(e)) => Next::Reply(self.error(e.code(), e.to_string())),
            Err(_) => Next::Reply(
                self.error(ErrorCode::Unavailable, "the server is shutting down".into()),
            ),
        }
    }

    /// Refuse an action the session itself judged (before the clinic saw it): answered,
    /// counted, and audited like the clinic's own refusals.
    async fn refuse(
        &mut self,
        command: &str,
        code: ErrorCode,
        reason: &str,
        subject: Option<String>,
    ) -> Next {
        let actor = self.identity.as_ref().map(|(a, _)| a.user.0.clone());
        let _ = self
            .deps
            .clinic
            .send(ClinicRequest::Refused(Refused {
                kind: "refused",
                actor,
                subject,
                command: command.to_owned(),
                code: code.as_str(),
                source: self.source.clone(),
                claimed_user: None,
                reason: reason.to_owned(),
            }))
            .await;
        Next::Reply(self.error(code, reason.to_owned()))
    }

    /// Verify a token; a refusal is answered, counted and audited.
    async fn verify(&mut self, token: &str) -> Result<Verified, Next> {
        match self.deps.verifier.verify(token, unix_now()) {
            Ok(v) => Ok(v),
            Err(e) => {
                let code = if e.code() == "expired_token" {
                    ErrorCode::ExpiredToken
                } else {
                    ErrorCode::InvalidToken
                };
                let _ = self
                    .deps
                    .clinic
                    .send(ClinicRequest::Refused(Refused {
                        kind: "token_refused",
                        actor: None,
                        subject: None,
                        command: "auth".into(),
                        code: code.as_str(),
                        source: self.source.clone(),
                        claimed_user: claimed_subject(token),
                        reason: e.to_string(),
                    }))
                    .await;
                Err(Next::Reply(self.error(code, e.to_string())))
            }
        }
    }

    async fn authenticate(&mut self, token: &str) -> Next {
        let verified = match self.verify(token).await {
            Ok(v) => v,
            Err(reply) => return reply,
        };
        if self.identity.is_some() {
            return self.renew(verified).await;
        }
        let actor = verified.actor.clone();
        let display_name = verified.display_name.clone();
        let (session, events) = (self.id, self.events_tx());
        let seats = self
            .deps
            .clinic
            .ask(|reply| ClinicRequest::Connect {
                session,
                actor: actor.clone(),
                display_name: display_name.clone(),
                token_times: (verified.issued_at, verified.expires_at),
                source: self.source.clone(),
                events,
                reply,
            })
            .await;
        let seats = match seats {
            Ok(seats) => seats,
            Err((code, message)) => return Next::Reply(self.error(code, message)),
        };
        let reply = ServerMessage::Authenticated {
            user_id: actor.user.0.clone(),
            display_name: display_name.clone(),
            role: actor.role.as_str().to_owned(),
            clinics: actor.clinics.iter().map(|c| c.0.clone()).collect(),
            seats,
        };
        self.identity = Some((actor, display_name));
        Next::Reply(reply)
    }

    /// A fresh token on an authenticated socket extends the session (same user and role).
    async fn renew(&mut self, verified: Verified) -> Next {
        let session = self.id;
        let expires_at = verified.expires_at;
        let actor = verified.actor.clone();
        let result = self
            .deps
            .clinic
            .ask(|reply| ClinicRequest::Renew {
                session,
                actor,
                token_times: (verified.issued_at, verified.expires_at),
                reply,
            })
            .await;
        match result {
            Ok(()) => {
                if let Some((actor, name)) = &mut self.identity {
                    *actor = verified.actor;
                    *name = verified.display_name;
                }
                Next::Reply(ServerMessage::TokenRenewed {
                    expires_at,
                    expires_at_ms: expires_at.saturating_mul(1000),
                })
            }
            Err((code, message)) => Next::Reply(self.error(code, message)),
        }
    }

    /// Tell the clinic this socket's `participant` is in `consultation`'s room: it decides
    /// whether the participant's media is recorded and takes its seat as occupied.
    async fn in_room(&self, consultation: ConsultationId, participant: ParticipantId) {
        let _ = self
            .deps
            .clinic
            .send(ClinicRequest::InRoom {
                session: self.id,
                consultation,
                participant,
            })
            .await;
    }

    /// Take back the participant of `token` (see [`crate::sfu::resume`]).
    async fn resume(&mut self, token: &str) -> Next {
        if self.participant.is_some() {
            return Next::Reply(self.error(
                ErrorCode::AlreadyJoined,
                "this socket is already in a room; resume on a new socket".into(),
            ));
        }
        let now = std::time::Instant::now();
        let user = self.identity.as_ref().map(|(a, _)| a.user.clone());
        let taken = self.resumes().take(now, token, user.as_ref());
        let entry = match taken {
            Ok(entry) => entry,
            Err(e) => {
                let code = match e {
                    super::resume::ResumeError::Unknown => ErrorCode::NotFound,
                    super::resume::ResumeError::WrongUser => ErrorCode::NotAuthenticated,
                };
                return self.refuse("resume", code, &e.to_string(), None).await;
            }
        };
        let Some((new_token, grant)) = self.resumes().grant(now) else {
            return Next::Reply(self.error(
                ErrorCode::Unavailable,
                "resume is not available on this server now; join again".into(),
            ));
        };
        let participant = entry.participant;
        let events = self.events_tx();
        match self
            .deps
            .media
            .resume(participant, self.id, grant, events)
            .await
        {
            Ok(Ok(())) => {
                self.resumes().register(
                    &new_token,
                    participant,
                    entry.actor.clone(),
                    entry.consultation.clone(),
                );
                self.participant = Some(participant);
                self.resume_token = Some(new_token);
                self.consultation = entry.consultation.clone();
                if let Some(consultation) = entry.consultation {
                    // The clinic learns which socket speaks for the participant now (its
                    // seat is taken again, recording follows as before).
                    self.in_room(consultation, participant).await;
                }
                Next::Continue
            }
            Ok(Err(_)) => Next::Reply(self.error(
                ErrorCode::NotFound,
                "the participant is gone (its grace ended or the call ended); join again".into(),
            )),
            Err(_) => Next::Reply(
                self.error(ErrorCode::Unavailable, "the server is shutting down".into()),
            ),
        }
    }

    async fn leave(&mut self) -> Next {
        let Some(participant) = self.participant else {
            return Next::Reply(self.error(ErrorCode::NotJoined, "not in a room".into()));
        };
        if let Some(token) = self.resume_token.take() {
            self.resumes().forget(&token);
        }
        if let (Some(consultation), Some((actor, _))) =
            (self.consultation.clone(), self.identity.clone())
        {
            let _ = self
                .deps
                .clinic
                .command(
                    self.id,
                    actor,
                    ClinicCommand::LeaveConsultation(consultation),
                )
                .await;
        }
        let _ = self
            .deps
            .media
            .send(MediaCommand::Leave {
                participant,
                reason: LeaveReason::Left,
            })
            .await;
        // The media task answers with `bye`.
        Next::Continue
    }

    async fn signal(&mut self, input: SignalInput) -> Next {
        let Some(participant) = self.participant else {
            return Next::Reply(self.error(
                ErrorCode::NotJoined,
                "join a room before negotiating media".into(),
            ));
        };
        match self
            .deps
            .media
            .send(MediaCommand::Signal { participant, input })
            .await
        {
            Ok(()) => Next::Continue,
            Err(_) => Next::Reply(
                self.error(ErrorCode::Unavailable, "the server is shutting down".into()),
            ),
        }
    }

    async fn clinic_message(&mut self, message: ClientMessage) -> Next {
        let Some((actor, display_name)) = self.identity.clone() else {
            let subject = clinic_command(message.clone()).and_then(|c| c.subject());
            return self
                .refuse(
                    message_type(&message),
                    ErrorCode::NotAuthenticated,
                    "send auth with your token before clinic messages",
                    subject,
                )
                .await;
        };
        let Some(command) = clinic_command(message) else {
            return Next::Reply(
                self.error(ErrorCode::InvalidMessage, "not a clinic message".into()),
            );
        };
        let joining = match &command {
            ClinicCommand::Join(c) => Some(c.clone()),
            _ => None,
        };
        let actor_user = actor.user.clone();
        if joining.is_some() && self.participant.is_some() {
            return Next::Reply(self.error(
                ErrorCode::AlreadyJoined,
                "already in a call on this socket".into(),
            ));
        }
        match self.deps.clinic.command(self.id, actor, command).await {
            Ok(CommandReply::Done) => Next::Continue,
            // Answered every time, so a companion who refreshes before being admitted is told
            // again that they are waiting.
            Ok(CommandReply::WaitingForApproval) => match joining {
                Some(consultation) => Next::Reply(ServerMessage::WaitingForApproval {
                    consultation: consultation.0,
                }),
                None => Next::Continue,
            },
            Ok(CommandReply::EnterRoom { room, may_publish }) => match joining {
                Some(consultation) => {
                    // Participants this user left in the consultation on earlier sockets (a
                    // page reload: its peer connection is gone) cannot be resumed any more.
                    let stale = self.resumes().supersede(&actor_user, &consultation);
                    for participant in stale {
                        let _ = self
                            .deps
                            .media
                            .send(MediaCommand::Leave {
                                participant,
                                reason: LeaveReason::SignalingClosed,
                            })
                            .await;
                    }
                    self.consultation = Some(consultation.clone());
                    let next = self.enter_room(room, display_name, may_publish).await;
                    if let Some(participant) = self.participant {
                        self.in_room(consultation, participant).await;
                    }
                    next
                }
                // accept_invitation: the client joins with join_consultation next.
                None => Next::Continue,
            },
            Err((code, message)) => Next::Reply(self.error(code, message)),
        }
    }
}

/// The `sub` a token claims, read without verifying it (for the audit row of a refused token,
/// marked unverified there); only an id-shaped value of at most 128 characters is kept.
fn claimed_subject(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    if payload.len() > 4096 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let sub = value.get("sub")?.as_str()?;
    let ok = !sub.is_empty()
        && sub.len() <= 128
        && sub
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    ok.then(|| sub.to_owned())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The clinic command a clinic message asks for.
fn clinic_command(message: ClientMessage) -> Option<ClinicCommand> {
    Some(match message {
        ClientMessage::CheckIn { appointment } => {
            ClinicCommand::CheckIn(AppointmentId(appointment))
        }
        ClientMessage::LeaveQueue {} => ClinicCommand::LeaveQueue,
        ClientMessage::SetAway { clinic, away } => ClinicCommand::SetAway(ClinicId(clinic), away),
        ClientMessage::Invite { clinic, patient } => {
            ClinicCommand::Invite(ClinicId(clinic), patient.map(UserId))
        }
        ClientMessage::CancelInvitation { invitation } => {
            ClinicCommand::CancelInvitation(InvitationId(invitation))
        }
        ClientMessage::MoveUp { clinic, patient } => {
            ClinicCommand::MoveUp(ClinicId(clinic), UserId(patient))
        }
        ClientMessage::AcceptInvitation { invitation } => {
            ClinicCommand::Accept(InvitationId(invitation))
        }
        ClientMessage::DeclineInvitation { invitation } => {
            ClinicCommand::Decline(InvitationId(invitation))
        }
        ClientMessage::JoinConsultation { consultation } => {
            ClinicCommand::Join(ConsultationId(consultation))
        }
        ClientMessage::Admit { consultation, user } => {
            ClinicCommand::Admit(ConsultationId(consultation), UserId(user))
        }
        ClientMessage::InviteExpert {
            consultation,
            display_name,
        } => ClinicCommand::InviteExpert(ConsultationId(consultation), display_name),
        ClientMessage::EndConsultation { consultation } => {
            ClinicCommand::End(ConsultationId(consultation))
        }
        ClientMessage::StartRecording { consultation } => {
            ClinicCommand::StartRecording(ConsultationId(consultation))
        }
        ClientMessage::StopRecording { consultation } => {
            ClinicCommand::StopRecording(ConsultationId(consultation))
        }
        ClientMessage::Consent {
            consultation,
            granted,
        } => ClinicCommand::Consent(ConsultationId(consultation), granted),
        _ => return None,
    })
}

fn message_type(message: &ClientMessage) -> &'static str {
    match message {
        ClientMessage::Join { .. } => "join",
        ClientMessage::Offer { .. } => "offer",
        ClientMessage::Answer { .. } => "answer",
        ClientMessage::Candidate { .. } => "candidate",
        ClientMessage::Leave {} => "leave",
        ClientMessage::Resume { .. } => "resume",
        ClientMessage::Ping {} => "ping",
        ClientMessage::TrackPreferences { .. } => "track_preferences",
        ClientMessage::Auth { .. } => "auth",
        ClientMessage::CheckIn { .. } => "check_in",
        ClientMessage::LeaveQueue {} => "leave_queue",
        ClientMessage::SetAway { .. } => "set_away",
        ClientMessage::Invite { .. } => "invite",
        ClientMessage::CancelInvitation { .. } => "cancel_invitation",
        ClientMessage::MoveUp { .. } => "move_up",
        ClientMessage::AcceptInvitation { .. } => "accept_invitation",
        ClientMessage::DeclineInvitation { .. } => "decline_invitation",
        ClientMessage::JoinConsultation { .. } => "join_consultation",
        ClientMessage::Admit { .. } => "admit",
        ClientMessage::InviteExpert { .. } => "invite_expert",
        ClientMessage::EndConsultation { .. } => "end_consultation",
        ClientMessage::StartRecording { .. } => "start_recording",
        ClientMessage::StopRecording { .. } => "stop_recording",
        ClientMessage::Consent { .. } => "consent",
    }
}

/// All message types, for pre-registering the metric's label values.
const MESSAGE_TYPES: &[&str] = &[
    "join",
    "offer",
    "answer",
    "candidate",
    "leave",
    "resume",
    "ping",
    "track_preferences",
    "auth",
    "check_in",
    "leave_queue",
    "set_away",
    "invite",
    "cancel_invitation",
    "move_up",
    "accept_invitation",
    "decline_invitation",
    "join_consultation",
    "admit",
    "invite_expert",
    "end_consultation",
    "start_recording",
    "stop_recording",
    "consent",
    "invalid",
];
