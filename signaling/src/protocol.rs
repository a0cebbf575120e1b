//! Signaling protocol v1: the JSON messages exchanged over the `/ws` WebSocket.
//!
//! Every frame is one JSON object with a `type` field. Clients send [`ClientMessage`]s, the
//! server answers with [`ServerMessage`]s. The protocol is a public API that browser and app
//! clients code against, so it is versioned ([`PROTOCOL_VERSION`]) and documented in
//! `signaling/PROTOCOL.md`; change both together.
//!
//! Parsing is split in two steps so that a bad frame gets the most useful error: first the
//! frame must be a JSON object with a string `type` ([`ProtocolError::BadJson`],
//! [`ProtocolError::MissingType`]), then the type must be known
//! ([`ProtocolError::UnknownType`]) and its fields valid ([`ProtocolError::InvalidMessage`]).

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks. A `join` with another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest accepted text frame, in bytes. SDP offers with many m-lines stay well below it.
pub const MAX_FRAME_BYTES: usize = 256 * 1024;

/// Longest accepted room name, in bytes.
pub const MAX_ROOM_NAME_BYTES: usize = 64;

/// Whether `name` may name a room: 1-[`MAX_ROOM_NAME_BYTES`] characters of `A-Z a-z 0-9 - _ .`.
/// A small alphabet on purpose: no look-alikes (`consult\u{200b}-c1` passed for a consultation
/// room), nothing a URL path or a log line has to escape.
pub fn room_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ROOM_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Longest accepted resume token, in bytes (the server issues 43).
pub const MAX_RESUME_TOKEN_BYTES: usize = 128;

/// Longest accepted display name, in bytes.
pub const MAX_DISPLAY_NAME_BYTES: usize = 128;

/// Longest accepted text `request_id`, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 64;

/// A client's label for one request (the optional `request_id` of any client message): the
/// server echoes it in the reply to that message (the `error` it caused, or `joined`,
/// `resumed`, `answer`, ...), so a client with several requests in flight knows which one an
/// error is about. A non-negative integer or a string of at most [`MAX_REQUEST_ID_BYTES`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    /// A number.
    Number(u64),
    /// A string.
    Text(String),
}

/// The `request_id` of a client frame: `Ok(None)` when it has none (or is not a JSON object),
/// an error when it has one that is not a [`RequestId`] (the error does not quote it).
pub fn request_id_of(frame: &str) -> Result<Option<RequestId>, ProtocolError> {
    #[derive(Deserialize)]
    struct Only {
        #[serde(default)]
        request_id: Option<serde_json::Value>,
    }
    let Ok(Only { request_id }) = serde_json::from_str::<Only>(frame) else {
        return Ok(None);
    };
    let invalid = || {
        ProtocolError::InvalidMessage {
        kind: "request_id".into(),
        detail: format!(
            "request_id must be a non-negative integer or a string of at most {MAX_REQUEST_ID_BYTES} bytes"
        ),
    }
    };
    match request_id {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .map(|n| Some(RequestId::Number(n)))
            .ok_or_else(invalid),
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= MAX_REQUEST_ID_BYTES => {
            Ok(Some(RequestId::Text(s)))
        }
        Some(_) => Err(invalid()),
    }
}

/// A token to take a participant back after its socket dropped ([`ClientMessage::Resume`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeGrant {
    /// Opaque, single use, a secret of this client (like its media session).
    pub token: String,
    /// How long after the socket dropped the participant is kept, in seconds.
    pub grace_seconds: u64,
}

/// An ICE server for the client's `RTCPeerConnection` (`RTCIceServer`): the server's embedded
/// TURN, with a credential minted for this session that expires (`username` is
/// `<expiry unix seconds>:<random tag>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `turn:` / `turns:` URLs (UDP, TCP, TLS).
    pub urls: Vec<String>,
    /// The TURN username.
    pub username: String,
    /// The TURN password.
    pub credential: String,
}

/// One received track in [`ServerMessage::Resumed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumedTrack {
    /// Publisher of the track.
    pub participant_id: String,
    /// Server-assigned track id.
    pub track_id: String,
    /// The mid it is received on.
    pub mid: String,
    /// Audio or video.
    pub kind: TrackKind,
    /// What it carries.
    #[serde(default = "TrackSource::unknown_default")]
    pub source: TrackSource,
}

/// A message from a client to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Enter a room. Must be the first message on a socket, and is accepted once.
    Join {
        /// Protocol version the client speaks; must equal [`PROTOCOL_VERSION`].
        v: u32,
        /// Room to join; created on first join.
        room: String,
        /// Name shown to the other participants.
        display_name: String,
        /// Access token. Reserved for signed identities (clinic issue); ignored in v1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// An SDP offer from the client (it adds or removes its own tracks).
    Offer {
        /// The session description.
        sdp: String,
        /// What each sending m-line carries, by mid (absent: a camera for video, the
        /// microphone for audio). The allocator favours screen shares and clinical
        /// instruments; receivers see it in `track_added`.
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        sources: std::collections::BTreeMap<String, TrackSource>,
        /// The first offer of a fresh peer connection that replaces the client's current one
        /// (after a change of network): the participant, its seat and its track ids stay,
        /// everything it receives is offered anew. Absent: false.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        renew: bool,
    },
    /// The client's answer to a server [`ServerMessage::Offer`].
    Answer {
        /// The session description.
        sdp: String,
    },
    /// A trickled ICE candidate of the client. An empty `candidate` means end of candidates.
    Candidate {
        /// The `candidate:` attribute line, as `RTCIceCandidate.candidate` gives it.
        candidate: String,
        /// The media id the candidate belongs to (informational; the server is bundle-only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_mid: Option<String>,
        /// The m-line index the candidate belongs to (informational).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_m_line_index: Option<u16>,
    },
    /// Leave the room; the server removes the client's tracks and closes the socket.
    Leave {},
    /// Take back a participant whose socket dropped, within the grace period, with the
    /// token from `joined` (or the last `resumed`). Instead of `join`, on a new socket; a
    /// participant that entered with an identity must `auth` as the same user first. The
    /// answer is [`ServerMessage::Resumed`] with the current state; the media session is
    /// kept (its tracks, mids and ids), so the client keeps its peer connection.
    Resume {
        /// The resume token.
        token: String,
    },
    /// Keep-alive; answered with [`ServerMessage::Pong`].
    Ping {},
    /// How the client shows the tracks it receives (sent whenever its layout changes). The
    /// server sends each track in the best layer that fits the client's downlink and these
    /// limits; tracks not listed keep their last preference (default: visible, no limit).
    TrackPreferences {
        /// One entry per received track.
        tracks: Vec<TrackPreference>,
    },

    // ----- clinic (protocol v1, clinic additions) -----
    /// Identify with a signed token; needed before any clinic message.
    Auth {
        /// The JWT issued by the hospital system (or `huizhen token` in development).
        token: String,
    },
    /// Patient: enter the waiting room of an appointment (again after a refresh: same place).
    CheckIn {
        /// The appointment id.
        appointment: String,
    },
    /// Patient: leave the waiting room.
    LeaveQueue {},
    /// Doctor: mark yourself away (or back).
    SetAway {
        /// The clinic.
        clinic: String,
        /// Away or available.
        away: bool,
    },
    /// Doctor: call the next patient, or a chosen one.
    Invite {
        /// The clinic.
        clinic: String,
        /// A patient's user id; the next in line if absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        patient: Option<String>,
    },
    /// Doctor: withdraw an unanswered invitation.
    CancelInvitation {
        /// The invitation.
        invitation: String,
    },
    /// Doctor: move a waiting patient to the front.
    MoveUp {
        /// The clinic.
        clinic: String,
        /// The patient's user id.
        patient: String,
    },
    /// Patient: answer the ringing invitation.
    AcceptInvitation {
        /// The invitation.
        invitation: String,
    },
    /// Patient: decline the ringing invitation.
    DeclineInvitation {
        /// The invitation.
        invitation: String,
    },
    /// Enter a consultation's call (doctor, expert, companion, observer; patient on rejoin).
    JoinConsultation {
        /// The consultation.
        consultation: String,
    },
    /// Doctor: admit a waiting companion.
    Admit {
        /// The consultation.
        consultation: String,
        /// The companion's user id.
        user: String,
    },
    /// Doctor: create a one-time link for a remote expert.
    InviteExpert {
        /// The consultation.
        consultation: String,
        /// Name shown for the expert.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        display_name: Option<String>,
    },
    /// Doctor: end the consultation; the room closes for everyone.
    EndConsultation {
        /// The consultation.
        consultation: String,
    },
    /// Doctor: start recording; every participant is asked for consent first.
    StartRecording {
        /// The consultation.
        consultation: String,
    },
    /// Doctor: stop recording.
    StopRecording {
        /// The consultation.
        consultation: String,
    },
    /// Answer a `consent_request` (or change the answer: refusing stops your recording).
    Consent {
        /// The consultation.
        consultation: String,
        /// Agree to be recorded.
        granted: bool,
    },
}

/// A participant as other participants see it. Never carries anything but the display name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    /// Server-assigned id, unique for the server's lifetime (not a patient or user id).
    pub id: String,
    /// Name chosen at join.
    pub display_name: String,
}

/// What a published track carries; decides its priority when a subscriber's downlink is short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackSource {
    /// A camera (default for video).
    Camera,
    /// A microphone: speech (default for audio).
    Microphone,
    /// A shared screen or window: one sharp layer, favoured over cameras.
    Screen,
    /// A clinical instrument on an audio input (an electronic stethoscope): never paused,
    /// first after speech.
    Instrument,
}

impl TrackSource {
    fn unknown_default() -> TrackSource {
        TrackSource::Camera
    }

    /// The source a track of `kind` has when the client names none.
    pub fn default_for(kind: TrackKind) -> TrackSource {
        match kind {
            TrackKind::Audio => TrackSource::Microphone,
            TrackKind::Video => TrackSource::Camera,
        }
    }
}

/// A subscriber's wishes for one received track ([`ClientMessage::TrackPreferences`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackPreference {
    /// The track id from `track_added`.
    pub track_id: String,
    /// The track is on screen. A hidden video track is not sent at all.
    #[serde(default = "yes")]
    pub visible: bool,
    /// Largest frame height worth sending (the tile's height in device pixels); absent: no
    /// limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_height: Option<u32>,
    /// Highest frame rate worth sending; absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fps: Option<u32>,
    /// Shown large or pinned: upgraded before the other videos.
    #[serde(default)]
    pub pinned: bool,
}

fn yes() -> bool {
    true
}

/// Kind of a media track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    /// Opus audio.
    Audio,
    /// Video (VP8, VP9 or H.264); a participant may publish several (camera, screen share).
    Video,
}

/// A message from the server to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The join succeeded. The client now sends its first `offer`.
    Joined {
        /// Protocol version of the server.
        v: u32,
        /// The id the server gave this participant.
        participant_id: String,
        /// The room joined.
        room: String,
        /// Everyone already in the room.
        participants: Vec<ParticipantInfo>,
        /// The server receives simulcast: publish cameras in up to three layers (rids `q`,
        /// `h`, `f`, lowest first). Absent (older servers): publish one layer.
        #[serde(default)]
        simulcast: bool,
        /// How to take this participant back if the socket drops (absent: resume is off).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<ResumeGrant>,
        /// ICE servers to configure (the embedded TURN, for networks that block UDP or all
        /// but a few ports). Empty when the server runs no TURN.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServer>,
    },
    /// The answer to `resume`: the participant is back, with the state as it is now (not a
    /// replay of what the socket missed). The client reconciles its view with it; a server
    /// offer that was waiting for an answer follows (with its `track_added`).
    Resumed {
        /// The participant's id (unchanged).
        participant_id: String,
        /// The room.
        room: String,
        /// Everyone else in the room now.
        participants: Vec<ParticipantInfo>,
        /// The tracks this client receives now, as `track_added` announced them.
        tracks: Vec<ResumedTrack>,
        /// Of those, the ids of the ones paused now (`track_paused`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        paused: Vec<String>,
        /// Who speaks now, if anyone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        active_speaker: Option<String>,
        /// A fresh token for the next resume (the old one is spent).
        resume: ResumeGrant,
        /// Fresh ICE server credentials (for an ICE restart after the resume).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServer>,
    },
    /// Someone entered the room.
    ParticipantJoined {
        /// Who.
        participant: ParticipantInfo,
    },
    /// Someone left the room (their tracks were removed before this is sent).
    ParticipantLeft {
        /// Who.
        participant_id: String,
    },
    /// A server offer (renegotiation: tracks to receive were added or removed).
    Offer {
        /// The session description.
        sdp: String,
    },
    /// The server's answer to a client offer.
    Answer {
        /// The session description.
        sdp: String,
        /// It answers an offer with `renew`: the answer for the fresh peer connection (an
        /// answer to an offer of the replaced one may still be on its way). Absent: false.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        renewed: bool,
    },
    /// A track of another participant is now sent to this client on `mid`.
    TrackAdded {
        /// Publisher of the track.
        participant_id: String,
        /// Server-assigned track id, stable for the track's life.
        track_id: String,
        /// The media id of the transceiver this client receives it on.
        mid: String,
        /// Audio or video.
        kind: TrackKind,
        /// What it carries (camera, microphone, screen, instrument).
        #[serde(default = "TrackSource::unknown_default")]
        source: TrackSource,
    },
    /// The server stopped sending a received video track because the client's downlink
    /// cannot carry it beside the audio (`reason: "bandwidth"`). Audio is never paused. Show
    /// the person's name and "audio only: weak connection" until `track_resumed`.
    TrackPaused {
        /// Publisher of the track.
        participant_id: String,
        /// The track id from `track_added`.
        track_id: String,
        /// Why: `bandwidth`.
        reason: String,
    },
    /// A paused track flows again (a keyframe follows).
    TrackResumed {
        /// Publisher of the track.
        participant_id: String,
        /// The track id from `track_added`.
        track_id: String,
    },
    /// Who is speaking now (smoothed over about a second, from the audio level of their
    /// microphone). Sent when it changes.
    ActiveSpeaker {
        /// The participant, or absent when nobody has spoken for a while.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        participant_id: Option<String>,
    },
    /// Publisher: which simulcast layers of a published video track somebody receives. The
    /// client keeps only these encodings active (`RTCRtpEncodingParameters.active`), saving
    /// its uplink; a layer is asked for again before anybody needs it.
    PublishLayers {
        /// The publisher's own mid of the track.
        mid: String,
        /// The rids to keep sending (`q`, `h`, `f`); empty: none.
        rids: Vec<String>,
    },
    /// Publisher: the most bit/s the microphone on `mid` should use, because a subscriber's
    /// link barely carries the call's voices (the client sets it as the sender's
    /// `maxBitrate`); without `max_bitrate`, no limit (the default again).
    PublishAudio {
        /// The publisher's own mid of the microphone track.
        mid: String,
        /// Bit/s; absent: no limit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_bitrate: Option<u32>,
    },
    /// A track this client received is gone (publisher left or stopped it).
    TrackRemoved {
        /// Publisher of the track.
        participant_id: String,
        /// The track id from the matching `track_added`.
        track_id: String,
        /// The media id it was received on.
        mid: String,
    },
    /// A request could not be served. The socket stays open unless the error says otherwise.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable detail (English).
        message: String,
    },
    /// The server removed this participant (timeout, shutdown); the socket closes after it.
    Bye {
        /// Why.
        reason: String,
    },
    /// Answer to `ping`.
    Pong {},
    /// The server stopped hearing this participant's media although its signaling is alive
    /// (its uplink path broke, as after a change of network that the page's own receive-side
    /// watchdog does not see): restart ICE (`restartIce()`, then an offer with new
    /// credentials). Sent once per silence after media flowed.
    RestartIce {},

    // ----- clinic -----
    /// The token was accepted.
    Authenticated {
        /// User id from the token.
        user_id: String,
        /// Display name from the token.
        display_name: String,
        /// Role from the token.
        role: String,
        /// Clinics the token grants.
        clinics: Vec<String>,
        /// Consultations where this user still holds a seat (reconnect within the grace period).
        seats: Vec<String>,
    },
    /// The session's token expires soon (at `expires_at`, seconds since the epoch): send `auth`
    /// with a fresh token of the same user on this socket to keep the session; at expiry the
    /// server sends `bye {reason: "token_expired"}` and closes the socket.
    TokenExpiring {
        /// When the token expires (seconds since the epoch; kept for v1 clients, use
        /// `expires_at_ms`).
        expires_at: u64,
        /// The same, milliseconds since the epoch like every other time in the protocol.
        expires_at_ms: u64,
    },
    /// A fresh token was accepted on this socket; the session now lasts until `expires_at`.
    TokenRenewed {
        /// When the new token expires (seconds since the epoch; kept for v1 clients, use
        /// `expires_at_ms`).
        expires_at: u64,
        /// The same, milliseconds since the epoch.
        expires_at_ms: u64,
    },
    /// Patient: your place in the waiting room (sent on every change).
    Waiting {
        /// The clinic.
        clinic: String,
        /// 1-based place, absent while being called.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<u32>,
        /// Expected wait in milliseconds.
        estimated_wait_ms: u64,
        /// `online`, `in_consultation` or `away`.
        doctor_status: String,
    },
    /// Doctor: the waiting room of a clinic (sent on every change).
    Queue {
        /// The clinic.
        clinic: String,
        /// Waiting patients in order.
        patients: Vec<QueueEntryInfo>,
        /// The doctor's own status as patients see it.
        doctor_status: String,
    },
    /// Patient: the doctor is calling. Answer with `accept_invitation` or `decline_invitation`.
    Ringing {
        /// The invitation.
        invitation: String,
        /// The consultation it opens.
        consultation: String,
        /// Lapses at this wall-clock time (ms since the epoch).
        expires_at_ms: u64,
    },
    /// Doctor: what became of an invitation (`sent`, `answered`, `declined`, `expired`, `cancelled`).
    InvitationStatus {
        /// The invitation.
        invitation: String,
        /// The consultation the invitation opened (for `declined`, `expired` and
        /// `cancelled`: the one it would have opened, now discarded).
        consultation: String,
        /// The patient.
        patient: String,
        /// What happened.
        status: String,
    },
    /// The call of a consultation is open to you: send `join_consultation` (the patient's
    /// client receives it after `accept_invitation`, a companion after being admitted).
    ConsultationReady {
        /// The consultation.
        consultation: String,
        /// Its SFU room.
        room: String,
    },
    /// Companion: the consultation of the appointment you accompany is under way; send
    /// `join_consultation` with this id to ask the doctor to admit you.
    ConsultationOpen {
        /// The consultation.
        consultation: String,
    },
    /// Companion: wait for the doctor to admit you.
    WaitingForApproval {
        /// The consultation.
        consultation: String,
    },
    /// Doctor: a companion asks to be admitted.
    CompanionWaiting {
        /// The consultation.
        consultation: String,
        /// The companion's user id.
        user: String,
        /// Their display name.
        display_name: String,
    },
    /// Doctor: the one-time link for a remote expert.
    ExpertLink {
        /// The consultation.
        consultation: String,
        /// Path (with token) to open on the expert's side, relative to this server.
        path: String,
        /// The link's token expires at this Unix time (seconds; kept for v1 clients, use
        /// `expires_at_ms`).
        expires_at: u64,
        /// The same, milliseconds since the epoch.
        expires_at_ms: u64,
    },
    /// The consultation ended; your media session in it is closed.
    ConsultationEnded {
        /// The consultation.
        consultation: String,
    },
    /// May this call be recorded? Answer with `consent`. Until you agree, nothing of yours is.
    ConsentRequest {
        /// The consultation.
        consultation: String,
        /// The recording.
        recording: String,
    },
    /// Whether a recording runs and whether your media is in it.
    RecordingStatus {
        /// The consultation.
        consultation: String,
        /// The recording.
        recording: String,
        /// The recording is running.
        active: bool,
        /// Your media is being recorded (you consented).
        recorded: bool,
    },
    /// Doctor: a participant's consent decision (`pending`, `granted`, `refused`).
    ConsentStatus {
        /// The consultation.
        consultation: String,
        /// The recording.
        recording: String,
        /// The participant's user id.
        user: String,
        /// Their display name.
        display_name: String,
        /// Their decision.
        decision: String,
    },
}

/// One waiting patient as the doctor's console shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntryInfo {
    /// The patient's user id.
    pub patient: String,
    /// Their display name.
    pub display_name: String,
    /// The appointment.
    pub appointment: String,
    /// Slot start (ms since the epoch).
    pub slot_start_ms: u64,
    /// How long they have waited (ms).
    pub waited_ms: u64,
    /// Being called now.
    pub ringing: bool,
    /// Disconnected; place kept for the grace period.
    pub disconnected: bool,
    /// The invitation calling them (so any doctor console can cancel it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitation: Option<String>,
}

/// Machine-readable error codes of [`ServerMessage::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not a JSON object with a string `type`, or too large.
    BadJson,
    /// The `type` is not one this protocol version knows.
    UnknownType,
    /// Known type, but fields missing, of the wrong type, or out of range.
    InvalidMessage,
    /// `join` with an unsupported protocol version.
    UnsupportedVersion,
    /// A message that needs a joined socket arrived before `join`.
    NotJoined,
    /// A second `join` on the same socket.
    AlreadyJoined,
    /// The SDP could not be parsed or negotiated.
    InvalidSdp,
    /// An ICE candidate could not be parsed.
    InvalidCandidate,
    /// An `answer` arrived while the server had no offer outstanding.
    NoPendingOffer,
    /// The room has reached its participant limit.
    RoomFull,
    /// The server is at its participant limit or shutting down.
    Unavailable,
    /// A server-side failure; the detail is logged on the server.
    Internal,
    /// A clinic message before a successful `auth`.
    NotAuthenticated,
    /// The token is malformed, forged, or for another issuer or audience.
    InvalidToken,
    /// The token has expired.
    ExpiredToken,
    /// Your role or grants do not allow this.
    Forbidden,
    /// The appointment, clinic, invitation or consultation does not exist.
    NotFound,
    /// Check-in before the window opens.
    TooEarly,
    /// Not possible now (e.g. inviting while a consultation runs).
    InvalidState,
    /// The consultation has no free seat.
    ConsultationFull,
    /// An expert link used after its consultation ended.
    LinkExpired,
    /// The request contradicts what is recorded (an id reused with other content, a change to
    /// an appointment whose patient waits or whose consultation runs).
    Conflict,
    /// The token was revoked by the hospital's system.
    RevokedToken,
    /// Too many refused frames, or no `auth` in time: the socket is closed after this.
    TooManyRefusals,
}

impl ErrorCode {
    /// Every code, for pre-registering metric label values.
    pub const ALL: [ErrorCode; 24] = [
        ErrorCode::BadJson,
        ErrorCode::UnknownType,
        ErrorCode::InvalidMessage,
        ErrorCode::UnsupportedVersion,
        ErrorCode::NotJoined,
        ErrorCode::AlreadyJoined,
        ErrorCode::InvalidSdp,
        ErrorCode::InvalidCandidate,
        ErrorCode::NoPendingOffer,
        ErrorCode::RoomFull,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::NotAuthenticated,
        ErrorCode::InvalidToken,
        ErrorCode::ExpiredToken,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::TooEarly,
        ErrorCode::InvalidState,
        ErrorCode::ConsultationFull,
        ErrorCode::LinkExpired,
        ErrorCode::Conflict,
        ErrorCode::RevokedToken,
        ErrorCode::TooManyRefusals,
    ];

    /// The code for a clinic error code string ([`crate::clinic::ClinicError::code`]).
    pub fn from_clinic(code: &str) -> ErrorCode {
        match code {
            "forbidden" => ErrorCode::Forbidden,
            "not_found" => ErrorCode::NotFound,
            "too_early" => ErrorCode::TooEarly,
            "invalid_state" => ErrorCode::InvalidState,
            "consultation_full" => ErrorCode::ConsultationFull,
            "link_expired" => ErrorCode::LinkExpired,
            "conflict" => ErrorCode::Conflict,
            _ => ErrorCode::Internal,
        }
    }

    /// The wire name, also used as the `code` label of the error metric.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::InvalidSdp => "invalid_sdp",
            ErrorCode::InvalidCandidate => "invalid_candidate",
            ErrorCode::NoPendingOffer => "no_pending_offer",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::NotAuthenticated => "not_authenticated",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::ExpiredToken => "expired_token",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooEarly => "too_early",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::ConsultationFull => "consultation_full",
            ErrorCode::LinkExpired => "link_expired",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RevokedToken => "revoked_token",
            ErrorCode::TooManyRefusals => "too_many_refusals",
        }
    }
}

/// Why a client frame was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// Not JSON, not an object, or too large.
    #[error("frame is not a JSON object: {0}")]
    BadJson(String),
    /// The object lacks a string `type` field.
    #[error("frame has no string \"type\" field")]
    MissingType,
    /// The `type` is unknown.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// The fields do not match the type.
    #[error("invalid {kind} message: {detail}")]
    InvalidMessage {
        /// The message type.
        kind: String,
        /// What was wrong.
        detail: String,
    },
    /// `join` with an unsupported version.
    #[error("protocol version {0} is not supported (server speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u32),
}

impl ProtocolError {
    /// The error code sent to the client for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::BadJson(_) | ProtocolError::MissingType => ErrorCode::BadJson,
            ProtocolError::UnknownType(_) => ErrorCode::UnknownType,
            ProtocolError::InvalidMessage { .. } => ErrorCode::InvalidMessage,
            ProtocolError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
        }
    }
}

const CLIENT_TYPES: &[&str] = &[
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
];

/// Parse and validate one client text frame.
pub fn parse_client_message(frame: &str) -> Result<ClientMessage, ProtocolError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(ProtocolError::BadJson(format!(
            "frame of {} bytes exceeds the {MAX_FRAME_BYTES} byte limit",
            frame.len()
        )));
    }
    let value: serde_json::Value =
        serde_json::from_str(frame).map_err(|e| ProtocolError::BadJson(e.to_string()))?;
    let object = value
        .as_object()
        .ok_or_else(|| ProtocolError::BadJson("top-level value is not an object".into()))?;
    let kind = object
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or(ProtocolError::MissingType)?
        .to_owned();
    if !CLIENT_TYPES.contains(&kind.as_str()) {
        return Err(ProtocolError::UnknownType(truncate(&kind, 64)));
    }
    let message: ClientMessage =
        serde_json::from_value(value).map_err(|e| ProtocolError::InvalidMessage {
            kind: kind.clone(),
            detail: e.to_string(),
        })?;
    validate(&message)?;
    Ok(message)
}

fn validate(message: &ClientMessage) -> Result<(), ProtocolError> {
    if let ClientMessage::Resume { token } = message {
        if token.is_empty() || token.len() > MAX_RESUME_TOKEN_BYTES {
            return Err(ProtocolError::InvalidMessage {
                kind: "resume".into(),
                detail: format!("token must be 1..={MAX_RESUME_TOKEN_BYTES} bytes"),
            });
        }
    }
    let invalid = |detail: String| ProtocolError::InvalidMessage {
        kind: "join".into(),
        detail,
    };
    if let ClientMessage::Join {
        v,
        room,
        display_name,
        ..
    } = message
    {
        if *v != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion(*v));
        }
        if !room_name_ok(room) {
            return Err(invalid(format!(
                "room names are 1-{MAX_ROOM_NAME_BYTES} characters of A-Z a-z 0-9 - _ ."
            )));
        }
        if display_name.len() > MAX_DISPLAY_NAME_BYTES {
            return Err(invalid(format!(
                "display_name must be at most {MAX_DISPLAY_NAME_BYTES} bytes"
            )));
        }
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

impl ServerMessage {
    /// Serialize to the JSON text frame sent on the socket.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail: no maps with non-string keys, no floats.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"serialization failed"}"#.into()
        })
    }

    /// [`Self::to_json`] with `request_id` added (the reply to a request that had one).
    pub fn to_json_for(&self, request_id: Option<&RequestId>) -> String {
        let Some(id) = request_id else {
            return self.to_json();
        };
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut map)) => {
                map.insert(
                    "request_id".into(),
                    serde_json::to_value(id).unwrap_or(serde_json::Value::Null),
                );
                serde_json::Value::Object(map).to_string()
            }
            _ => self.to_json(),
        }
    }

    /// Build an error frame.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            message: bounded_message(message.into()),
        }
    }
}

/// The longest error message sent, in bytes: messages may quote what was wrong, and what was
/// wrong may be a 200 KB candidate; a client gets the start of it.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 300;

/// `message` cut to [`MAX_ERROR_MESSAGE_BYTES`] (at a character boundary), saying how long it
/// was.
pub fn bounded_message(mut message: String) -> String {
    if message.len() <= MAX_ERROR_MESSAGE_BYTES {
        return message;
    }
    let total = message.len();
    let mut cut = MAX_ERROR_MESSAGE_BYTES;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    message.truncate(cut);
    message.push_str(&format!("... ({total} bytes in all)"));
    message
}

#[cfg(test)]
mod tests {

    #[test]
    fn error_messages_quote_a_bounded_prefix() {
        use super::*;
        let short = ServerMessage::error(ErrorCode::InvalidMessage, "bad \"x\"");
        assert!(matches!(&short, ServerMessage::Error { message, .. } if message == "bad \"x\""));
        let long = format!("invalid candidate {}", "é".repeat(100_000));
        let ServerMessage::Error { message, .. } =
            ServerMessage::error(ErrorCode::InvalidMessage, long.clone())
        else {
            unreachable!()
        };
        assert!(
            message.len() < MAX_ERROR_MESSAGE_BYTES + 40,
            "{}",
            message.len()
        );
        assert!(message.starts_with("invalid candidate éé"));
        assert!(message.ends_with(&format!("({} bytes in all)", long.len())));
    }

    #[test]
    fn room_names_are_a_small_safe_alphabet() {
        for ok in ["demo", "lecture-2026.12_a", &"a".repeat(64)] {
            assert!(room_name_ok(ok), "{ok}");
        }
        for bad in [
            "",
            "consult\u{200b}-c1",
            "Room 1",
            "a/b",
            "病房",
            &"a".repeat(65),
        ] {
            assert!(!room_name_ok(bad), "{bad:?}");
            let frame = format!(
                r#"{{"type":"join","v":1,"room":{},"display_name":"d"}}"#,
                serde_json::to_string(bad).unwrap()
            );
            assert!(parse_client_message(&frame).is_err(), "{bad:?}");
        }
    }

    use super::*;

    #[test]
    fn parses_join_with_and_without_token() {
        let m =
            parse_client_message(r#"{"type":"join","v":1,"room":"r1","display_name":"Dr. Li"}"#)
                .unwrap();
        assert_eq!(
            m,
            ClientMessage::Join {
                v: 1,
                room: "r1".into(),
                display_name: "Dr. Li".into(),
                token: None
            }
        );
        let m = parse_client_message(
            r#"{"type":"join","v":1,"room":"r1","display_name":"x","token":"abc"}"#,
        )
        .unwrap();
        assert!(matches!(m, ClientMessage::Join { token: Some(t), .. } if t == "abc"));
    }

    #[test]
    fn errors_are_typed() {
        assert_eq!(
            parse_client_message("{not json").unwrap_err().code(),
            ErrorCode::BadJson
        );
        assert_eq!(
            parse_client_message("[1,2]").unwrap_err().code(),
            ErrorCode::BadJson
        );
        assert_eq!(
            parse_client_message(r#"{"sdp":"x"}"#).unwrap_err(),
            ProtocolError::MissingType
        );
        assert_eq!(
            parse_client_message(r#"{"type":"dance"}"#).unwrap_err(),
            ProtocolError::UnknownType("dance".into())
        );
        assert_eq!(
            parse_client_message(r#"{"type":"offer"}"#)
                .unwrap_err()
                .code(),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            parse_client_message(r#"{"type":"offer","sdp":5}"#)
                .unwrap_err()
                .code(),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            parse_client_message(r#"{"type":"join","v":2,"room":"r","display_name":"d"}"#)
                .unwrap_err(),
            ProtocolError::UnsupportedVersion(2)
        );
        assert_eq!(
            parse_client_message(r#"{"type":"join","v":1,"room":"","display_name":"d"}"#)
                .unwrap_err()
                .code(),
            ErrorCode::InvalidMessage
        );
    }

    #[test]
    fn oversized_frame_is_refused() {
        let big = format!(
            r#"{{"type":"offer","sdp":"{}"}}"#,
            "a".repeat(MAX_FRAME_BYTES)
        );
        assert_eq!(
            parse_client_message(&big).unwrap_err().code(),
            ErrorCode::BadJson
        );
    }

    #[test]
    fn server_messages_serialize_with_snake_case_type() {
        let json = ServerMessage::TrackAdded {
            participant_id: "p1".into(),
            track_id: "t1".into(),
            mid: "3".into(),
            kind: TrackKind::Video,
            source: TrackSource::Screen,
        }
        .to_json();
        assert_eq!(
            json,
            r#"{"type":"track_added","participant_id":"p1","track_id":"t1","mid":"3","kind":"video","source":"screen"}"#
        );
        let json = ServerMessage::error(ErrorCode::InvalidSdp, "bad").to_json();
        assert_eq!(
            json,
            r#"{"type":"error","code":"invalid_sdp","message":"bad"}"#
        );
        assert_eq!(ServerMessage::Pong {}.to_json(), r#"{"type":"pong"}"#);
    }

    #[test]
    fn leave_and_ping_need_no_fields() {
        assert_eq!(
            parse_client_message(r#"{"type":"leave"}"#).unwrap(),
            ClientMessage::Leave {}
        );
        assert_eq!(
            parse_client_message(r#"{"type":"ping"}"#).unwrap(),
            ClientMessage::Ping {}
        );
        assert_eq!(
            parse_client_message(
                r#"{"type":"track_preferences","tracks":[{"track_id":"t3","max_height":180}]}"#
            )
            .unwrap(),
            ClientMessage::TrackPreferences {
                tracks: vec![TrackPreference {
                    track_id: "t3".into(),
                    visible: true,
                    max_height: Some(180),
                    max_fps: None,
                    pinned: false,
                }]
            }
        );
    }
}
