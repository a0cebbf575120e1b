//! WHIP (RFC 9725) and WHEP: standard broadcast tools publish into a room or consultation, and
//! players watch one, with one HTTP exchange instead of the signaling WebSocket.
//!
//! ```text
//!  POST /whip/room/{name}            application/sdp offer   -> 201 answer, Location, ETag,
//!  POST /whip/consultation/{id}      (Bearer token)              Link rel="ice-server" (TURN)
//!  POST /whep/room/{name} | /whep/consultation/{id}            (409 + Retry-After: nobody
//!                                                                publishes yet)
//!  PATCH  {Location}  application/trickle-ice-sdpfrag, If-Match  -> 204 trickle,
//!                                                                   200 fragment: ICE restart
//!  DELETE {Location}                                            -> 200, the session ends
//! ```
//!
//! A WHIP publisher is a participant of the room that is offered nothing (it cannot be sent a
//! new offer); a WHEP viewer is a receive-only participant whose own m-lines carry the room's
//! first audio and video ([`crate::sfu::PeerMode`]), not announced to the room. Grants are the
//! WebSocket's: a room by name only where open rooms are on (a token, if sent, names the
//! publisher); a consultation with a token whose holder the clinic lets in (`join_consultation`),
//! a WHIP publisher only with a role that may publish. The session URL (128 random bits) is the
//! capability for `PATCH` and `DELETE`, as RFC 9725 allows. A session ends with `DELETE`, when
//! its participant is removed (no media within the connect or peer timeout), or when the
//! consultation closes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use huizhen_signaling::clinic::{Actor, ConsultationId};
use huizhen_signaling::protocol::{ErrorCode, ServerMessage};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::auth::Verified;
use crate::clinic::{ClinicCommand, ClinicRequest, CommandReply};
use crate::edge::{MediaCommand, SIGNAL_QUEUE};
use crate::sfu::{LeaveReason, ParticipantId, PeerMode, SfuError};

use super::ws::SessionDeps;
use super::AppState;
use huizhen_signaling::protocol::room_name_ok;

/// `Content-Type` of an offer and an answer.
pub const SDP: &str = "application/sdp";
/// `Content-Type` of a `PATCH` body (RFC 8840).
pub const SDP_FRAGMENT: &str = "application/trickle-ice-sdpfrag";
/// Largest offer or fragment read (a browser's offer with simulcast is ~6 KB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// What a WHEP player is told to wait before trying again when nobody publishes yet.
pub const RETRY_AFTER_SECS: u64 = 5;
/// Publish (WHIP) or play (WHEP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// WHIP: the client sends.
    Whip,
    /// WHEP: the client receives.
    Whep,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Whip => "whip",
            Kind::Whep => "whep",
        }
    }
}

/// One WHIP or WHEP session.
#[derive(Debug, Clone)]
struct Session {
    kind: Kind,
    participant: ParticipantId,
    /// Current entity tag (changes with each ICE restart).
    etag: String,
}

/// Open sessions by resource id.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open sessions (for tests and the gauge).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// No session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A refusal: status, short reason (never the input), extra headers.
struct Refusal {
    status: StatusCode,
    reason: String,
    retry_after: Option<u64>,
    bearer: bool,
}

impl Refusal {
    fn new(status: StatusCode, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: huizhen_signaling::protocol::bounded_message(reason.into()),
            retry_after: None,
            bearer: false,
        }
    }

    fn retry_after(mut self, secs: u64) -> Refusal {
        self.retry_after = Some(secs);
        self
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.reason),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.bearer {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"huizhen\""),
            );
        }
        response
    }
}

/// What the clinic's and the core's refusals mean in HTTP.
fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::NotAuthenticated | ErrorCode::InvalidToken | ErrorCode::ExpiredToken => {
            StatusCode::UNAUTHORIZED
        }
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::InvalidSdp => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::InvalidCandidate | ErrorCode::InvalidMessage => StatusCode::BAD_REQUEST,
        ErrorCode::RoomFull | ErrorCode::ConsultationFull | ErrorCode::Unavailable => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::CONFLICT,
    }
}

fn refused((code, message): (ErrorCode, String)) -> Refusal {
    let status = status_of(code);
    let mut r = Refusal::new(status, message);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r = r.retry_after(RETRY_AFTER_SECS);
    }
    r.bearer = status == StatusCode::UNAUTHORIZED;
    r
}

fn sfu_refused(e: SfuError) -> Refusal {
    refused((e.code(), e.to_string()))
}

fn media_gone() -> Refusal {
    Refusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server is shutting down",
    )
    .retry_after(RETRY_AFTER_SECS)
}

/// Where a `POST` goes.
enum Target {
    /// An open room by name.
    Room(String),
    /// A consultation's room, through the clinic.
    Consultation(String),
}

pub(super) async fn post_room(
    kind: Kind,
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = create(kind, &state, Target::Room(name), &headers, body).await;
    finish(&state, kind, "post", r)
}

pub(super) async fn post_consultation(
    kind: Kind,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = create(kind, &state, Target::Consultation(id), &headers, body).await;
    finish(&state, kind, "post", r)
}

pub(super) async fn patch(
    kind: Kind,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = ice_fragment(kind, &state, &id, &headers, body).await;
    finish(&state, kind, "patch", r)
}

pub(super) async fn delete(
    kind: Kind,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Response {
    let r = end(kind, &state, &id).await;
    finish(&state, kind, "delete", r)
}

/// `OPTIONS` on an endpoint: what it accepts.
pub(super) async fn options(kind: Kind) -> Response {
    let _ = kind;
    (
        StatusCode::NO_CONTENT,
        [
            (header::ALLOW, "OPTIONS, POST"),
            (header::HeaderName::from_static("accept-post"), SDP),
        ],
    )
        .into_response()
}

/// Count the outcome (by kind, method and status: nothing personal) and log refusals.
fn finish(state: &AppState, kind: Kind, method: &str, r: Result<Response, Refusal>) -> Response {
    let response = match r {
        Ok(response) => response,
        Err(refusal) => {
            debug!(kind = kind.as_str(), method, status = refusal.status.as_u16(), reason = %refusal.reason, "refused");
            refusal.into_response()
        }
    };
    state
        .session
        .metrics
        .whip_requests
        .with_label_values(&[kind.as_str(), method, response.status().as_str()])
        .inc();
    response
}

fn content_type_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected))
}

fn bearer(headers: &HeaderMap) -> Result<Option<&str>, Refusal> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().unwrap_or("");
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() => {
            Ok(Some(token.trim()))
        }
        _ => {
            let mut r = Refusal::new(
                StatusCode::UNAUTHORIZED,
                "Authorization must be \"Bearer <token>\"",
            );
            r.bearer = true;
            Err(r)
        }
    }
}

fn verify(deps: &SessionDeps, token: &str) -> Result<Verified, Refusal> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    deps.verifier.verify(token, now).map_err(|e| {
        let mut r = Refusal::new(StatusCode::UNAUTHORIZED, e.to_string());
        r.bearer = true;
        r
    })
}

/// The request's body, read only now that the asker is known: at most [`MAX_BODY_BYTES`]
/// (413 beyond).
async fn read_body(body: Body) -> Result<Bytes, Refusal> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            let too_long = e
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            if too_long {
                Refusal::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body exceeds {MAX_BODY_BYTES} bytes"),
                )
            } else {
                Refusal::new(StatusCode::BAD_REQUEST, "the body could not be read")
            }
        })
}

/// The offer's text, checked before anything is joined: SDP (400 otherwise) whose m-lines go
/// the way the endpoint needs (422 otherwise).
fn check_offer(kind: Kind, headers: &HeaderMap, body: &[u8]) -> Result<String, Refusal> {
    if !content_type_is(headers, SDP) {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the offer must be sent as application/sdp",
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "the offer is not UTF-8 text"))?;
    // The parser's message is not passed on: it may quote the input (addresses in candidate
    // lines are personal data, and logs keep the reason).
    if str0m::change::SdpOffer::from_sdp_string(text).is_err() {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "the body is not an SDP offer (it does not parse)",
        ));
    }
    let directions = crate::sfu::m_line_directions(text);
    if directions.is_empty() {
        return Err(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the offer has no media",
        ));
    }
    let (wrong, what) = match kind {
        // A publisher's lines send; a player's receive.
        Kind::Whip => (
            directions.contains(&"recvonly"),
            "a WHIP offer sends only (no recvonly m-lines)",
        ),
        Kind::Whep => (
            directions
                .iter()
                .any(|d| *d == "sendonly" || *d == "sendrecv"),
            "a WHEP offer receives only (recvonly m-lines)",
        ),
    };
    if wrong {
        return Err(Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, what));
    }
    Ok(text.to_owned())
}

/// The answer's m-lines all refused (port 0): no codec in common.
fn nothing_accepted(answer: &str) -> bool {
    let ports: Vec<&str> = answer
        .lines()
        .filter_map(|l| l.strip_prefix("m="))
        .filter(|m| m.starts_with("audio") || m.starts_with("video"))
        .filter_map(|m| m.split_whitespace().nth(1))
        .collect();
    !ports.is_empty() && ports.iter().all(|p| *p == "0")
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn new_etag() -> String {
    format!("\"{}\"", random_hex(8))
}

/// A room by name may be entered: a name of the safe alphabet, not a consultation's, and open
/// rooms on.
fn room_open(deps: &SessionDeps, name: &str) -> Result<(), Refusal> {
    if !room_name_ok(name) {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "room names are 1-64 characters of A-Z a-z 0-9 - _ .",
        ));
    }
    if super::ws::is_consultation_room(name) {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "consultation rooms are reached at /whip/consultation/{id}",
        ));
    }
    if !deps.open_rooms {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "joining rooms by name is disabled on this server (signaling.open_rooms)",
        ));
    }
    Ok(())
}

async fn create(
    kind: Kind,
    state: &AppState,
    target: Target,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let deps = &state.session;
    // Whether the room may be entered at all comes first: a stranger's body for a room that
    // is closed to it is not looked at.
    if let Target::Room(name) = &target {
        room_open(deps, name)?;
    }
    // Who is asking comes before the body is read: a stranger's body is never buffered.
    let token = bearer(headers)?;
    if matches!(target, Target::Consultation(_)) && token.is_none() {
        let mut r = Refusal::new(
            StatusCode::UNAUTHORIZED,
            "a consultation needs Authorization: Bearer <token>",
        );
        r.bearer = true;
        return Err(r);
    }
    let verified = token.map(|token| verify(deps, token)).transpose()?;
    let body = read_body(body).await?;
    let sdp = check_offer(kind, headers, &body)?;
    let session = super::ws::next_session_id();
    let (events_tx, events_rx) = mpsc::channel(SIGNAL_QUEUE);
    // The room, whether it may publish, and the clinic session to close afterwards.
    let (room, display_name, may_publish, clinic) = match target {
        Target::Room(name) => {
            let display_name = match verified {
                Some(verified) => verified.display_name,
                None => match kind {
                    Kind::Whip => "WHIP publisher".to_owned(),
                    Kind::Whep => "viewer".to_owned(),
                },
            };
            (name, display_name, kind == Kind::Whip, None)
        }
        Target::Consultation(id) => {
            let Some(verified) = verified else {
                unreachable!("a consultation without a token was refused above");
            };
            let (room, may_publish) =
                enter_consultation(deps, session, &verified, &id, events_tx.clone()).await?;
            if kind == Kind::Whip && !may_publish {
                disconnect(deps, session).await;
                return Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    "your role may not publish media in this consultation",
                ));
            }
            let may_publish = may_publish && kind == Kind::Whip;
            (
                room,
                verified.display_name,
                may_publish,
                Some((ConsultationId(id), verified.actor)),
            )
        }
    };
    let result = async {
        if kind == Kind::Whep && !has_publisher(deps, &room).await? {
            return Err(
                Refusal::new(StatusCode::CONFLICT, "nobody publishes in this room yet")
                    .retry_after(RETRY_AFTER_SECS),
            );
        }
        let mode = match kind {
            Kind::Whip => PeerMode::PublishOnly,
            Kind::Whep => PeerMode::ReceiveOnly,
        };
        let participant = deps
            .media
            .join_with_offer(
                room.clone(),
                display_name,
                may_publish,
                mode,
                session,
                sdp,
                events_tx,
            )
            .await
            .map_err(|_| media_gone())?
            .map_err(sfu_refused)?;
        Ok(participant)
    }
    .await;
    let participant = match result {
        Ok(p) => p,
        Err(r) => {
            if clinic.is_some() {
                disconnect(deps, session).await;
            }
            return Err(r);
        }
    };
    let mut events_rx = events_rx;
    let answer = match first_answer(&mut events_rx).await {
        Some(answer) if !nothing_accepted(&answer) => answer,
        other => {
            leave(deps, participant).await;
            if clinic.is_some() {
                disconnect(deps, session).await;
            }
            return Err(Refusal::new(
                if other.is_some() {
                    StatusCode::NOT_ACCEPTABLE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                },
                if other.is_some() {
                    "no codec of the offer is one the server forwards (Opus, VP8, VP9, H.264)"
                } else {
                    "no answer"
                },
            ));
        }
    };
    if let Some((consultation, _)) = &clinic {
        let _ = deps
            .clinic
            .send(ClinicRequest::InRoom {
                session,
                consultation: consultation.clone(),
                participant,
            })
            .await;
    }
    let id = random_hex(16);
    let etag = new_etag();
    state.whip.lock().insert(
        id.clone(),
        Session {
            kind,
            participant,
            etag: etag.clone(),
        },
    );
    state
        .session
        .metrics
        .whip_sessions
        .with_label_values(&[kind.as_str()])
        .inc();
    info!(kind = kind.as_str(), %participant, "WHIP/WHEP session opened");
    // Drain the participant's messages (nothing reads them) until it is removed, then forget
    // the session and leave the clinic.
    let sessions = state.whip.clone();
    let gauge = state
        .session
        .metrics
        .whip_sessions
        .with_label_values(&[kind.as_str()]);
    let deps_for_end = deps.clone();
    let resource = id.clone();
    tokio::spawn(async move {
        while let Some(message) = events_rx.recv().await {
            if matches!(message, ServerMessage::Bye { .. }) {
                break;
            }
        }
        if sessions.lock().remove(&resource).is_some() {
            gauge.dec();
        }
        if clinic.is_some() {
            disconnect(&deps_for_end, session).await;
        }
        debug!(%participant, "WHIP/WHEP session ended");
    });

    let location = format!("/{}/session/{id}", kind.as_str());
    let mut response = (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, SDP.to_owned()),
            (header::LOCATION, location),
            (header::ETAG, etag),
        ],
        answer,
    )
        .into_response();
    for link in ice_server_links(deps) {
        if let Ok(v) = HeaderValue::from_str(&link) {
            response.headers_mut().append(header::LINK, v);
        }
    }
    Ok(response)
}

/// `Link: <url>; rel="ice-server"; username=..; credential=..` for the embedded TURN, one per
/// URL, with a credential minted for this session (RFC 9725 section 4.4).
fn ice_server_links(deps: &SessionDeps) -> Vec<String> {
    let Some(grants) = &deps.turn else {
        return Vec::new();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut links = Vec::new();
    for server in grants.ice_servers(now) {
        for url in &server.urls {
            links.push(format!(
                "<{url}>; rel=\"ice-server\"; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                server.username, server.credential
            ));
        }
    }
    links
}

/// The clinic lets the token's holder into consultation `id` (as `join_consultation` does).
async fn enter_consultation(
    deps: &SessionDeps,
    session: u64,
    verified: &Verified,
    id: &str,
    events: mpsc::Sender<ServerMessage>,
) -> Result<(String, bool), Refusal> {
    let actor: Actor = verified.actor.clone();
    deps.clinic
        .ask(|reply| ClinicRequest::Connect {
            session,
            actor: actor.clone(),
            display_name: verified.display_name.clone(),
            token_times: (verified.issued_at, verified.expires_at),
            source: None,
            events,
            reply,
        })
        .await
        .map_err(refused)?;
    let reply = deps
        .clinic
        .command(
            session,
            actor,
            ClinicCommand::Join(ConsultationId(id.to_owned())),
        )
        .await;
    match reply {
        Ok(CommandReply::EnterRoom { room, may_publish }) => Ok((room, may_publish)),
        Ok(CommandReply::WaitingForApproval) => {
            disconnect(deps, session).await;
            Err(Refusal::new(
                StatusCode::CONFLICT,
                "waiting for the doctor's approval; try again",
            )
            .retry_after(RETRY_AFTER_SECS))
        }
        Ok(CommandReply::Done) => {
            disconnect(deps, session).await;
            Err(Refusal::new(StatusCode::CONFLICT, "not admitted"))
        }
        Err(refusal) => {
            disconnect(deps, session).await;
            Err(refused(refusal))
        }
    }
}

async fn disconnect(deps: &SessionDeps, session: u64) {
    let _ = deps
        .clinic
        .send(ClinicRequest::Disconnect { session })
        .await;
}

async fn leave(deps: &SessionDeps, participant: ParticipantId) {
    let _ = deps
        .media
        .send(MediaCommand::Leave {
            participant,
            reason: LeaveReason::Left,
        })
        .await;
}

/// Someone in `room` publishes a track.
async fn has_publisher(deps: &SessionDeps, room: &str) -> Result<bool, Refusal> {
    let view = deps
        .media
        .room_media(room.to_owned())
        .await
        .map_err(|_| media_gone())?;
    Ok(view.is_some_and(|v| v.participants.iter().any(|p| !p.published.is_empty())))
}

/// The SDP of the first `answer` queued for a participant that was just joined with its
/// offer (it is queued before the join is confirmed, so this does not wait).
async fn first_answer(events: &mut mpsc::Receiver<ServerMessage>) -> Option<String> {
    loop {
        match events.try_recv() {
            Ok(ServerMessage::Answer { sdp, .. }) => return Some(sdp),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

fn session_of(state: &AppState, kind: Kind, id: &str) -> Result<Session, Refusal> {
    state
        .whip
        .lock()
        .get(id)
        .filter(|s| s.kind == kind)
        .cloned()
        .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, "no such session"))
}

async fn end(kind: Kind, state: &AppState, id: &str) -> Result<Response, Refusal> {
    let session = session_of(state, kind, id)?;
    if state.whip.lock().remove(id).is_some() {
        state
            .session
            .metrics
            .whip_sessions
            .with_label_values(&[kind.as_str()])
            .dec();
    }
    // The drain task sees the participant's `bye` and leaves the clinic.
    leave(&state.session, session.participant).await;
    Ok(StatusCode::OK.into_response())
}

/// An RFC 8840 fragment: the ICE credentials and candidates in it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fragment {
    /// `a=ice-ufrag`.
    pub ufrag: Option<String>,
    /// `a=ice-pwd`.
    pub pwd: Option<String>,
    /// `a=candidate` values (with the `candidate:` prefix).
    pub candidates: Vec<String>,
    /// `a=end-of-candidates` was present.
    pub end: bool,
}

/// Most candidate lines read from one fragment.
pub const MAX_FRAGMENT_CANDIDATES: usize = 64;

/// Parse a trickle-ice-sdpfrag. Lines other than the ICE attributes (`m=`, `a=mid`, ...) are
/// skipped; a fragment with a password but no ufrag (or the reverse) or too many candidates is
/// refused.
pub fn parse_fragment(text: &str) -> Result<Fragment, String> {
    let mut f = Fragment::default();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
            f.ufrag = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
            f.pwd = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("a=candidate:") {
            if f.candidates.len() == MAX_FRAGMENT_CANDIDATES {
                return Err(format!(
                    "at most {MAX_FRAGMENT_CANDIDATES} candidates per fragment"
                ));
            }
            f.candidates.push(format!("candidate:{}", v.trim()));
        } else if line == "a=end-of-candidates" {
            f.end = true;
        } else if !(line.starts_with("a=") || line.starts_with("m=") || line.starts_with("c=")) {
            return Err("not an SDP fragment (lines are m=, c= or a=)".into());
        }
    }
    if f.ufrag.is_some() != f.pwd.is_some() {
        return Err("a fragment carries both a=ice-ufrag and a=ice-pwd or neither".into());
    }
    Ok(f)
}

async fn ice_fragment(
    kind: Kind,
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let session = session_of(state, kind, id)?;
    let Some(if_match) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) else {
        return Err(Refusal::new(
            StatusCode::PRECONDITION_REQUIRED,
            "PATCH needs If-Match: the session's ETag, or * for an ICE restart",
        ));
    };
    let if_match = if_match.trim();
    if if_match != "*" && if_match != session.etag {
        return Err(Refusal::new(
            StatusCode::PRECONDITION_FAILED,
            "If-Match does not match the session's ETag",
        ));
    }
    if !content_type_is(headers, SDP_FRAGMENT) {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "PATCH takes application/trickle-ice-sdpfrag",
        ));
    }
    let body = read_body(body).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "the fragment is not UTF-8 text"))?;
    let fragment = parse_fragment(text).map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e))?;
    let credentials = fragment.ufrag.zip(fragment.pwd);
    let restarted = state
        .session
        .media
        .ice_fragment(session.participant, credentials, fragment.candidates)
        .await
        .map_err(|_| media_gone())?
        .map_err(|e| match e {
            SfuError::UnknownParticipant => Refusal::new(StatusCode::NOT_FOUND, "no such session"),
            SfuError::InvalidCandidate(_) | SfuError::InvalidMessage(_) => {
                Refusal::new(StatusCode::BAD_REQUEST, e.to_string())
            }
            other => Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, other.to_string()),
        })?;
    let Some(restarted) = restarted else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let etag = new_etag();
    if let Some(s) = state.whip.lock().get_mut(id) {
        s.etag = etag.clone();
    }
    let mut body = format!(
        "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\n",
        restarted.ufrag, restarted.pwd
    );
    for c in &restarted.candidates {
        let _ = write!(body, "a={}\r\n", c.strip_prefix("a=").unwrap_or(c));
    }
    body.push_str("a=end-of-candidates\r\n");
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, SDP_FRAGMENT.to_owned()),
            (header::ETAG, etag),
        ],
        body,
    )
        .into_response())
}

/// The WHIP and WHEP routes (bodies beyond [`MAX_BODY_BYTES`] get 413, read by
/// [`read_body`] once the asker is known).
pub fn router() -> axum::Router<AppState> {
    use axum::routing::{on, MethodFilter};
    let mut router = axum::Router::new();
    for kind in [Kind::Whip, Kind::Whep] {
        let base = format!("/{}", kind.as_str());
        router = router
            .route(
                &format!("{base}/room/{{name}}"),
                axum::routing::post(
                    move |s: State<AppState>, p: Path<String>, h: HeaderMap, b: Body| {
                        post_room(kind, s, p, h, b)
                    },
                )
                .options(move || options(kind)),
            )
            .route(
                &format!("{base}/consultation/{{id}}"),
                axum::routing::post(
                    move |s: State<AppState>, p: Path<String>, h: HeaderMap, b: Body| {
                        post_consultation(kind, s, p, h, b)
                    },
                )
                .options(move || options(kind)),
            )
            .route(
                &format!("{base}/session/{{id}}"),
                on(
                    MethodFilter::PATCH,
                    move |s: State<AppState>, p: Path<String>, h: HeaderMap, b: Body| {
                        patch(kind, s, p, h, b)
                    },
                )
                .delete(move |s: State<AppState>, p: Path<String>| delete(kind, s, p)),
            );
    }
    router
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fragment_gives_its_credentials_and_candidates_and_ignores_the_rest() {
        let f = parse_fragment(
            "a=ice-options:trickle\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n\
             a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n\
             a=candidate:1387637174 1 udp 2122260223 127.0.0.1 61764 typ host\r\n\
             a=end-of-candidates\r\n",
        )
        .unwrap();
        assert_eq!(f.ufrag.as_deref(), Some("EsAw"));
        assert_eq!(f.pwd.as_deref(), Some("P2uYro0UCOQ4zxjKXaWCBui1"));
        assert_eq!(
            f.candidates,
            vec!["candidate:1387637174 1 udp 2122260223 127.0.0.1 61764 typ host"]
        );
        assert!(f.end);
    }

    #[test]
    fn half_credentials_text_and_candidate_floods_are_refused() {
        assert!(parse_fragment("a=ice-ufrag:x\r\n").is_err());
        assert!(parse_fragment("hello\r\n").is_err());
        let flood = "a=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n".repeat(65);
        assert!(parse_fragment(&flood).is_err());
        assert_eq!(parse_fragment("").unwrap(), Fragment::default());
    }

    #[test]
    fn directions_are_read_per_media_section() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
                   m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=recvonly\r\n";
        assert_eq!(
            crate::sfu::m_line_directions(sdp),
            vec!["sendonly", "sendrecv"]
        );
    }

    #[test]
    fn an_answer_that_refuses_every_line_accepts_nothing() {
        assert!(nothing_accepted(
            "m=audio 0 UDP/TLS/RTP/SAVPF 0\r\nm=video 0 x 0\r\n"
        ));
        assert!(!nothing_accepted(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nm=video 0 x 0\r\n"
        ));
    }

    #[test]
    fn room_names_are_a_safe_alphabet() {
        assert!(room_name_ok("lecture-2026.12_a"));
        assert!(!room_name_ok(""));
        assert!(!room_name_ok("consult\u{200b}-c1"));
        assert!(!room_name_ok(&"a".repeat(65)));
        assert!(!room_name_ok("a/b"));
    }
}
