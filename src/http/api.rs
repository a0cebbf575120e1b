//! The REST admin API (`/api/v1`): the hospital's system creates clinics and appointments,
//! mints and revokes tokens, and reads queues, consultations and the audit trail here. Every
//! route but the OpenAPI document needs `Authorization: Bearer <key>` (checked once, by
//! [`require_key`], for the whole router; a wrong key is audited like any refusal).
//!
//! Changes are strict and durable: every field is range-checked here (400 naming the field),
//! so nothing that cannot be stored is accepted; the clinic service commits each change with
//! its audit row (actor: the key's id, never the key) before the 2xx. Reads of history go to
//! the store directly. Errors are JSON `{"code": ..., "message": ...}` with a matching status.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use huizhen_signaling::clinic::{
    Appointment, AppointmentId, Booking, Clinic, ClinicId, Millis, Role, UserId,
};
use huizhen_signaling::protocol::ErrorCode;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle_eq::constant_time_eq;

use crate::audit::source::SourceHasher;
use crate::auth::{Claims, TokenMinter};
use crate::clinic::refusals::Refused;
use crate::clinic::{AdminRequest, ClinicHandle, ClinicRequest, Refusal};
use crate::store::{Revocation, Store};

/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Longest token lifetime the API mints.
const MAX_TOKEN_TTL_SECS: u64 = 24 * 3600;
/// Largest request body (the biggest is a clinic or token request of a few hundred bytes).
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Timestamps are accepted within 2000-01-01 ..= 2100-01-01 (ms since the epoch).
const EARLIEST_MS: u64 = 946_684_800_000;
/// See [`EARLIEST_MS`].
const LATEST_MS: u64 = 4_102_444_800_000;
/// Longest display name.
const MAX_NAME_CHARS: usize = 200;
/// Default and largest page of a list.
const PAGE: usize = 100;
/// See [`PAGE`].
const MAX_PAGE: usize = 1000;

/// State of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    /// The clinic service.
    pub clinic: ClinicHandle,
    /// Mints tokens.
    pub minter: Arc<TokenMinter>,
    /// The API key.
    pub key: String,
    /// The database (reads of history and the audit trail).
    pub store: Store,
    /// Hashes source addresses for the audit trail.
    pub sources: SourceHasher,
    /// The media engine (what a consultation's call receives and sends).
    pub media: crate::edge::MediaHandle,
}

/// Who made an admin request: the API key's id (a hash prefix, never the key).
#[derive(Debug, Clone)]
pub struct ApiActor(pub String);

/// The id under which a key's actions are audited.
pub fn key_id(key: &str) -> String {
    format!(
        "api-key:{}",
        hex::encode(&Sha256::digest(key.as_bytes())[..4])
    )
}

/// API routes, mounted under `/api/v1`.
pub fn router(state: ApiState) -> Router {
    let protected = Router::new()
        .route("/clinics", get(list_clinics).post(create_clinic))
        .route("/clinics/{id}/slots", get(list_slots).post(create_slots))
        .route("/clinics/{id}/queue", get(clinic_queue))
        .route("/clinics/{id}/consultations", get(clinic_consultations))
        .route(
            "/appointments",
            get(list_appointments).post(create_appointment),
        )
        .route(
            "/appointments/{id}",
            get(get_appointment).delete(cancel_appointment),
        )
        .route(
            "/appointments/{id}/reschedule",
            post(reschedule_appointment),
        )
        .route("/consultations/{id}", get(get_consultation))
        .route("/consultations/{id}/media", get(consultation_media))
        .route("/tokens", post(create_token))
        .route("/tokens/{jti}/revoke", post(revoke_token))
        .route("/users/{user}/revoke-tokens", post(revoke_user_tokens))
        .route("/audit", get(audit))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/openapi.json", get(openapi))
        .merge(protected)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// An API error.
pub struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = huizhen_signaling::protocol::bounded_message(self.2);
        (self.0, Json(json!({ "code": self.1, "message": message }))).into_response()
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, "invalid_request", message.into())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "admin API read failed");
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the store could not be read".into(),
    )
}

/// The key check for every protected route (constant-time); a refusal is audited, bounded per
/// source, with the source as a keyed hash.
async fn require_key(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), state.key.as_bytes()) {
        request
            .extensions_mut()
            .insert(ApiActor(key_id(&state.key)));
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("?", |p| p.as_str())
        .to_owned();
    let source = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| state.sources.source(c.0.ip()));
    let _ = state
        .clinic
        .send(ClinicRequest::Refused(Refused {
            kind: "api_unauthorized",
            actor: None,
            subject: None,
            command: format!("{} {route}", request.method()),
            code: "unauthorized",
            source,
            claimed_user: None,
            reason: if presented.is_empty() {
                "no API key"
            } else {
                "wrong API key"
            }
            .into(),
        }))
        .await;
    ApiError(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or wrong API key (Authorization: Bearer <key>)".into(),
    )
    .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Validate an id supplied by the hospital system: short, printable, no separators that would
/// confuse room names or URLs.
fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(bad_request(format!(
            "{field} must be 1-128 characters of A-Z, a-z, 0-9, '-', '_', '.'"
        )))
    }
}

/// A timestamp within the calendar range the store and the clinic handle.
fn check_time(field: &str, ms: u64) -> Result<Millis, ApiError> {
    if (EARLIEST_MS..=LATEST_MS).contains(&ms) {
        Ok(Millis(ms))
    } else {
        Err(bad_request(format!(
            "{field} must be a time in ms since the epoch within {EARLIEST_MS}..={LATEST_MS} (years 2000-2100)"
        )))
    }
}

/// A display name: 1-200 characters, no control characters.
fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    let count = name.chars().count();
    if (1..=MAX_NAME_CHARS).contains(&count) && !name.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(bad_request(format!(
            "{field} must be 1-{MAX_NAME_CHARS} characters without control characters"
        )))
    }
}

fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(bad_request(format!("limit must be within 1..={MAX_PAGE}"))),
    }
}

type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn body<T>(body: JsonBody<T>) -> Result<T, ApiError> {
    body.map(|Json(b)| b)
        .map_err(|e| bad_request(e.body_text()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewClinic {
    id: String,
    doctor: String,
    name: String,
    #[serde(default = "default_slot_minutes")]
    slot_minutes: u32,
}

fn default_slot_minutes() -> u32 {
    30
}

async fn create_clinic(
    State(state): State<ApiState>,
    Extension(actor): Extension<ApiActor>,
    new: JsonBody<NewClinic>,
) -> Result<Response, ApiError> {
    let new = body(new)?;
    check_id("id", &new.id)?;
    check_id("doctor", &new.doctor)?;
    check_name("name", &new.name)?;
    if !(5..=240).contains(&new.slot_minutes) {
        return Err(bad_request("slot_minutes must be within 5..=240"));
    }
    let clinic = Clinic {
        id: ClinicId(new.id),
        doctor: UserId(new.doctor),
        name: new.name,
        slot_minutes: new.slot_minutes,
        slots: Vec::new(),
    };
    let c = clinic.clone();
    state
        .clinic
        .admin(&actor.0, |r| AdminRequest::UpsertClinic(c, r))
        .await
        .map_err(refused)?;
    Ok((StatusCode::CREATED, Json(clinic)).into_response())
}

async fn list_clinics(
    State(state): State<ApiState>,
    Extension(actor): Extension<ApiActor>,
) -> Result<Response, ApiError> {
    let clinics = state
        .clinic
        .admin(&actor.0, AdminRequest::ListClinics)
        .await
        .map_err(refused)?;
    Ok(Json(clinics).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSlots {
    start_ms: u64,
    #[serde(default = "one")]
    count: u32,
    #[serde(default = "one")]
    capacity: u32,
}

fn one() -> u32 {
    1
}

async fn create_slots(
    State(state): State<ApiState>,
    Extension(actor): Extension<ApiActor>,
    Path(clinic): Path<String>,
    new: JsonBody<NewSlots>,
) -> Result<Response, ApiError> {
    check_id("clinic", &clinic)?;
    let new = body(new)?;
    let start = check_time("start_ms", new.start_ms)?;
    if !(1..=200).contains(&new.count) || !(1..=100).contains(&new.capacity) {
        return Err(bad_request(
            "count must be within 1..=200 and capacity within 1..=100",
        ));
    }
    let slots = state
        .clinic
        .admin(&actor.0, |r| {
            AdminRequest::AddSlots(ClinicId(clinic), start, new.count, new.capacity, r)
        })
        .await
        .map_err(refused)?;
    Ok((StatusCode::CREATED, Json(slots_json(&slots))).into_response())
}

async fn list_slots(
    State(state): State<ApiState>,
    Extension(actor): Extension<ApiActor>,
    Path(clinic): Path<String>,
) -> Result<Response, ApiError> {
    check_id("clinic", &clinic)?;
    let slots = state
        .clinic
        .admin(&actor.0, |r| AdminRequest::ListSlots(ClinicId(clinic), r))
        .await
        .map_err(refused)?;
    Ok(Json(slots_json(&slots)).into_response())
}

fn slots_json(slots: &[(huizhen_signaling::clinic::Slot, usize)]) -> serde_json::Value {
    serde_json::Value::Array(
        slots
            .iter()
            .map(|(s, booked)| json!({ "start_ms": s.start.0, "capacity": s.capacity, "booked": booked }))
            .collect(),
    )
}

async fn clinic_queue(
    State(state): State<ApiState>,
    Extension(actor): Extension<ApiActor>,
    Path(clinic): Path<String>,
) -> Result<Response, ApiError> {
    check_id("clinic", &clinic)?;
    let rows = state
        .clinic
        .admin(&actor.0, |r| AdminRequest::Queue(ClinicId(clinic), r))
        .await
        .map_err(refused)?;
    let rows: Vec<_> = rows
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            json!({
                "position": i + 1,
                "patient": r.patient.0,
                "appointment": r.appointment.0,
                "slot_start_ms": r.slot_start.0,
                "waited_ms": r.waited_ms,
                "ringing": r.ringing,
                "invitation": r.invitation.map(|i| i.0),
                "disconnected": r.disconnected,
            })
        })
        .collect();
    Ok(Json(rows).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsultationPage {
    limit: Option<usize>,
    /// The `next` cursor of the previous page.
    before: Option<String>,
}

async fn clinic_consultations(
    State(state): State<ApiState>,
    Path(clinic): Path<String>,
    Query(q): Query<ConsultationPage>,
) -> Result<Response, ApiError> {
    check_id("clinic", &clinic)?;
    let limit = page_limit(q.limit)?;
    let before = match &q.before {
        None => None,
        Some(cursor) => {
            let (ms, id) = cursor
                .split_once('.')
                .and_then(|(ms, id)| Some((ms.parse::<u64>().ok()?, id)))
                .ok_or_else(|| {
                    bad_request("before must be the `next` cursor of a previous page")
                })?;
            check_id("before", id)?;
            Some((ms, id.to_owned()))
        }
    };
    let store = state.store.clone();
    let page = tokio::task::spawn_blocking(move || {
        store.consultations_page(
            &ClinicId(clinic),
            before.as_ref().map(|(ms, id)| (*ms, id.as_str())),
            limit,
        )
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    let next = (page.len() == limit)
        .then(|| {
            page.last()
                .map(|c| format!("{}.{}", c.started_at.map_or(0, |t| t.0), c.id.0))
        })
        .flatten();
    Ok(Json(json!({ "consultations": page, "next": next })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAppointment {
    id: String,
    clinic: String,
    patient: String,
    slot_start_ms: u64,
}

async fn create_appointment(
    State(state): State<ApiState>,
    Extension(actor): Extension<ApiActor>,
    new: JsonBody<NewAppointment>,
) -> Result<Response, ApiError> {
    let new = body(new)?;
    check_id("id", &new.id)?;
    check_id("clinic", &new.clinic)?;
    check_id("patient", &new.patient)?;
    let slot_start = check_time("slot_start_ms", new.slot_start_ms)?;
    let appointment = Appointment {
        id: AppointmentId(new.id),
        clinic: ClinicId(new.clinic),
        patient: UserId(new.patient),
        slot_start,
    };
    let a = appointment.clone();
    let booking = state
        .clinic
        .admin(&actor.0, |r| AdminRequest::AddAppointment(a, r))
        .await
        .map_err(refused)?;
    let status = match booking {
        Booking::Created => StatusCode::CREATED,
        // The same booking again (a retried request): nothing changed.
        Booking::Unchanged => StatusCode::OK,
    };
    Ok((status, Json(appointment)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppointmentPage {
    clinic: Option<String>,
    /// The last id of the previous page.
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_appointments(
    State(state): State<ApiState>,
    Query(q): Query<AppointmentPage>,
) -> Result<Response, ApiError> {
    if let Some(c) = &q.clinic {
        check_id("clinic", c)?;
    }
    if let Some(a) = &q.after {
        check_id("after", a)?;
    }
    // Without a limit the whole list comes back, as before paging existed; ask for pages.
    let limit = match q.limit {
        None => usize::MAX,
        some => page_limit(some)?,
    };
    let store = state.store.clone();
    let list = tokio::task::spawn_blocking(move || {
        store.appointments_page(q.clinic.map(ClinicId).as_ref(), q.after.as_deref(), limit)
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(Json(list).into_response())
}

async fn get_appointment(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_id("id", &id)?;
    let store = state.store.clone();
    let found = tokio::task::spawn_blocking(move || store.appointment(&AppointmentId(id)))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    match found {
        Some(a) => Ok(Json(a).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such appointment".into(),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reschedule {
    slot_start_ms: u64,
}

async fn reschedule_appointment(
    State(state): State<ApiState>,
    Extension(actor): Extension<ApiActor>,
    Path(id): Path<String>,
    new: JsonBody<Reschedule>,
) -> Result<Response, ApiError> {
    check_id("id", &id)?;
    let new = body(new)?;
    let slot_start = check_time("slot_start_ms", new.slot_start_ms)?;
    let moved = state
        .clinic
        .admin(&actor.0, |r| {
            AdminRequest::Reschedule(AppointmentId(id), slot_start, r)
        })
        .await
        .map_err(refused)?;
    Ok(Json(moved).into_response())
}

async fn cancel_appointment(
    State(state): State<ApiState>,
    Extension(actor): Extension<ApiActor>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_id("id", &id)?;
    let cancelled = state
        .clinic
        .admin(&actor.0, |r| AdminRequest::Cancel(AppointmentId(id), r))
        .await
        .map_err(refused)?;
    Ok(Json(cancelled).into_response())
}

async fn get_consultation(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_id("id", &id)?;
    let store = state.store.clone();
    let found = tokio::task::spawn_blocking(move || store.consultation(&id))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    match found {
        Some(c) => Ok(Json(c).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such consultation".into(),
        )),
    }
}

/// What the call of a consultation carries now: each participant's downlink estimate, the
/// layers of what it publishes and the layer (or pause) of what it receives. For operators
/// looking into "the patient sees no video"; participant ids only, no names.
async fn consultation_media(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_id("id", &id)?;
    let store = state.store.clone();
    let lookup = id.clone();
    let found = tokio::task::spawn_blocking(move || store.consultation(&lookup))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    let Some(consultation) = found else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such consultation".into(),
        ));
    };
    let media = state
        .media
        .room_media(consultation.room)
        .await
        .map_err(|_| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the media engine is not running".into(),
            )
        })?;
    let media = media.unwrap_or(crate::sfu::view::RoomMedia {
        active_speaker: None,
        participants: Vec::new(),
    });
    Ok(Json(serde_json::json!({ "consultation": id, "media": media })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    sub: String,
    name: String,
    role: Role,
    #[serde(default)]
    clinics: Vec<String>,
    consultation: Option<String>,
    appointment: Option<String>,
    #[serde(default = "default_ttl")]
    ttl_secs: u64,
}

fn default_ttl() -> u64 {
    3600
}

async fn create_token(
    State(state): State<ApiState>,
    Extension(actor): Extension<ApiActor>,
    new: JsonBody<NewToken>,
) -> Result<Response, ApiError> {
    let new = body(new)?;
    check_id("sub", &new.sub)?;
    check_name("name", &new.name)?;
    for c in &new.clinics {
        check_id("clinics[]", c)?;
    }
    if new.clinics.len() > 100 {
        return Err(bad_request("clinics may list at most 100 clinics"));
    }
    if let Some(c) = &new.consultation {
        check_id("consultation", c)?;
    }
    if let Some(a) = &new.appointment {
        check_id("appointment", a)?;
    }
    let max_ttl = MAX_TOKEN_TTL_SECS.min(state.minter.max_lifetime_secs());
    if !(60..=max_ttl).contains(&new.ttl_secs) {
        return Err(bad_request(format!(
            "ttl_secs must be within 60..={max_ttl}"
        )));
    }
    let now = crate::clinic::now_ms().0 / 1000;
    let jti = format!("t{:016x}", rand::random::<u64>());
    let mut claims =
        Claims::new(new.sub, new.name, new.role, now, new.ttl_secs).with_jti(jti.clone());
    claims.clinics = new.clinics;
    claims.consultation = new.consultation;
    claims.appointment = new.appointment;
    let token = state.minter.mint(&claims).map_err(|e| match e {
        crate::auth::TokenError::SigningFailed => {
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        }
        // Lifetime over the configured cap, missing or conflicting claims: the caller's to fix.
        other => bad_request(other.to_string()),
    })?;
    // Issued tokens are on the record (so revocations and refusals can be traced to them).
    let (user, role, expires_at) = (claims.sub.clone(), new.role, claims.exp);
    let id = jti.clone();
    state
        .clinic
        .admin(&actor.0, |reply| AdminRequest::TokenIssued {
            jti: id,
            user,
            role,
            expires_at,
            reply,
        })
        .await
        .map_err(refused)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": token,
            "jti": jti,
            "expires_at": claims.exp,
            "expires_at_ms": claims.exp.saturating_mul(1000),
        })),
    )
        .into_response())
}

async fn revoke_token(
    State(state): State<ApiState>,
    Extension(actor): Extension<ApiActor>,
    Path(jti): Path<String>,
) -> Result<Response, ApiError> {
    check_id("jti", &jti)?;
    let now = crate::clinic::now_ms().0 / 1000;
    // Kept as long as any token could still verify (tokens live at most this long).
    let keep_until_s = now + state.minter.max_lifetime_secs().max(MAX_TOKEN_TTL_SECS) + 300;
    let revocation = Revocation::Token {
        jti: jti.clone(),
        keep_until_s,
    };
    let ended = state
        .clinic
        .admin(&actor.0, |r| AdminRequest::Revoke(revocation, r))
        .await
        .map_err(refused)?;
    Ok(Json(json!({ "revoked": jti, "sessions_ended": ended })).into_response())
}

async fn revoke_user_tokens(
    State(state): State<ApiState>,
    Extension(actor): Extension<ApiActor>,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    check_id("user", &user)?;
    let now = crate::clinic::now_ms().0 / 1000;
    let keep_until_s = now + state.minter.max_lifetime_secs().max(MAX_TOKEN_TTL_SECS) + 300;
    let revocation = Revocation::User {
        user: user.clone(),
        issued_up_to_s: now,
        keep_until_s,
    };
    let ended = state
        .clinic
        .admin(&actor.0, |r| AdminRequest::Revoke(revocation, r))
        .await
        .map_err(refused)?;
    Ok(
        Json(json!({ "revoked_user": user, "issued_up_to": now, "sessions_ended": ended }))
            .into_response(),
    )
}

#[derive(Deserialize)]
struct AuditQuery {
    from_seq: Option<u64>,
    limit: Option<usize>,
}

async fn audit(
    State(state): State<ApiState>,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let from = q.from_seq.unwrap_or(1);
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let page = tokio::task::spawn_blocking(move || store.audit_page(from, limit))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    Ok(Json(page).into_response())
}

fn refused((code, message): Refusal) -> ApiError {
    let status = match code {
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::CONFLICT,
    };
    ApiError(status, code.as_str(), message)
}

mod subtle_eq {
    /// Compare without an early exit, so response time does not reveal how much of a key
    /// matched.
    pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route the router serves, as (method, path): kept beside [`router`].
    const ROUTES: &[(&str, &str)] = &[
        ("get", "/openapi.json"),
        ("get", "/clinics"),
        ("post", "/clinics"),
        ("get", "/clinics/{id}/slots"),
        ("post", "/clinics/{id}/slots"),
        ("get", "/clinics/{id}/queue"),
        ("get", "/clinics/{id}/consultations"),
        ("get", "/appointments"),
        ("post", "/appointments"),
        ("get", "/appointments/{id}"),
        ("delete", "/appointments/{id}"),
        ("post", "/appointments/{id}/reschedule"),
        ("get", "/consultations/{id}"),
        ("get", "/consultations/{id}/media"),
        ("post", "/tokens"),
        ("post", "/tokens/{jti}/revoke"),
        ("post", "/users/{user}/revoke-tokens"),
        ("get", "/audit"),
    ];

    #[test]
    fn every_route_is_in_the_openapi_document() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        for (method, path) in ROUTES {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} missing from openapi.json"
            );
        }
        let documented: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| {
                p.as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| *k != "parameters")
                    .count()
            })
            .sum();
        assert_eq!(
            documented,
            ROUTES.len(),
            "openapi.json documents a route the router does not serve"
        );
    }

    #[test]
    fn checks_name_the_field() {
        assert!(check_time("slot_start_ms", 1 << 63)
            .unwrap_err()
            .2
            .starts_with("slot_start_ms"));
        assert!(check_time("slot_start_ms", EARLIEST_MS).is_ok());
        assert!(check_name("name", "").is_err());
        assert!(check_name("name", "王医生").is_ok());
        assert!(check_name("name", "a\u{0}b").is_err());
        assert!(check_id("id", "consult\u{200b}-c1").is_err());
        assert_eq!(key_id("secret"), key_id("secret"));
        assert!(!key_id("secret").contains("secret"));
    }
}
