//! The REST admin API (`/api/v1`): the hospital's system creates clinics and appointments and
//! mints tokens here. Every call but the OpenAPI document needs `Authorization: Bearer <key>`.
//!
//! Errors are JSON `{"code": ..., "message": ...}` with a matching HTTP status.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use huizhen_signaling::clinic::{
    Appointment, AppointmentId, Clinic, ClinicId, ConsultationId, Millis, Role, UserId,
};
use huizhen_signaling::protocol::ErrorCode;
use serde::Deserialize;
use serde_json::json;
use subtle_eq::constant_time_eq;

use crate::auth::{Claims, TokenMinter};
use crate::clinic::{AdminRequest, ClinicHandle};
use crate::store::Store;

/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Longest token lifetime the API mints.
const MAX_TOKEN_TTL_SECS: u64 = 24 * 3600;

/// State of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    /// The clinic service.
    pub clinic: ClinicHandle,
    /// Mints tokens.
    pub minter: Arc<TokenMinter>,
    /// The API key.
    pub key: String,
    /// The database (audit trail reads).
    pub store: Store,
}

/// API routes, mounted under `/api/v1`.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/clinics", get(list_clinics).post(create_clinic))
        .route("/clinics/{id}/slots", get(list_slots).post(create_slots))
        .route("/appointments", get(list_appointments).post(create_appointment))
        .route("/consultations/{id}", get(get_consultation))
        .route("/tokens", post(create_token))
        .route("/audit", get(audit))
        .with_state(state)
}

/// An API error.
pub struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "code": self.1, "message": self.2 }))).into_response()
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, "invalid_request", message.into())
}

fn unavailable() -> ApiError {
    ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the clinic service is not running".into(),
    )
}

/// Constant-time comparison of the bearer key.
fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), state.key.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key (Authorization: Bearer <key>)".into(),
        ))
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Validate an id supplied by the hospital system: short, printable, no separators that would
/// confuse room names or URLs.
fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(bad_request(format!(
            "{field} must be 1-128 characters of A-Z, a-z, 0-9, '-', '_', '.'"
        )))
    }
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
    headers: HeaderMap,
    body: Result<Json<NewClinic>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let Json(new) = body.map_err(|e| bad_request(e.body_text()))?;
    check_id("id", &new.id)?;
    check_id("doctor", &new.doctor)?;
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
    let result = state
        .clinic
        .admin(|r| AdminRequest::UpsertClinic(clinic.clone(), r))
        .await
        .map_err(|_| unavailable())?;
    result.map_err(refused)?;
    Ok((StatusCode::CREATED, Json(clinic)).into_response())
}

async fn list_clinics(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let clinics = state
        .clinic
        .admin(AdminRequest::ListClinics)
        .await
        .map_err(|_| unavailable())?;
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
    headers: HeaderMap,
    Path(clinic): Path<String>,
    body: Result<Json<NewSlots>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let Json(new) = body.map_err(|e| bad_request(e.body_text()))?;
    if !(1..=200).contains(&new.count) || !(1..=100).contains(&new.capacity) {
        return Err(bad_request("count must be within 1..=200 and capacity within 1..=100"));
    }
    let slots = state
        .clinic
        .admin(|r| AdminRequest::AddSlots(ClinicId(clinic), Millis(new.start_ms), new.count, new.capacity, r))
        .await
        .map_err(|_| unavailable())?
        .map_err(refused)?;
    Ok((StatusCode::CREATED, Json(slots_json(&slots))).into_response())
}

async fn list_slots(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(clinic): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let slots = state
        .clinic
        .admin(|r| AdminRequest::ListSlots(ClinicId(clinic), r))
        .await
        .map_err(|_| unavailable())?
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
    headers: HeaderMap,
    body: Result<Json<NewAppointment>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let Json(new) = body.map_err(|e| bad_request(e.body_text()))?;
    check_id("id", &new.id)?;
    check_id("clinic", &new.clinic)?;
    check_id("patient", &new.patient)?;
    let appointment = Appointment {
        id: AppointmentId(new.id),
        clinic: ClinicId(new.clinic),
        patient: UserId(new.patient),
        slot_start: Millis(new.slot_start_ms),
    };
    let result = state
        .clinic
        .admin(|r| AdminRequest::AddAppointment(appointment.clone(), r))
        .await
        .map_err(|_| unavailable())?;
    result.map_err(refused)?;
    Ok((StatusCode::CREATED, Json(appointment)).into_response())
}

#[derive(Deserialize)]
struct ClinicFilter {
    clinic: Option<String>,
}

async fn list_appointments(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(filter): Query<ClinicFilter>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let list = state
        .clinic
        .admin(|r| AdminRequest::ListAppointments(filter.clinic.map(ClinicId), r))
        .await
        .map_err(|_| unavailable())?;
    Ok(Json(list).into_response())
}

async fn get_consultation(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let found = state
        .clinic
        .admin(|r| AdminRequest::GetConsultation(ConsultationId(id), r))
        .await
        .map_err(|_| unavailable())?;
    match found {
        Some(c) => Ok(Json(c).into_response()),
        None => Err(ApiError(StatusCode::NOT_FOUND, "not_found", "no such consultation".into())),
    }
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
    headers: HeaderMap,
    body: Result<Json<NewToken>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let Json(new) = body.map_err(|e| bad_request(e.body_text()))?;
    check_id("sub", &new.sub)?;
    let max_ttl = MAX_TOKEN_TTL_SECS.min(state.minter.max_lifetime_secs());
    if !(60..=max_ttl).contains(&new.ttl_secs) {
        return Err(bad_request(format!("ttl_secs must be within 60..={max_ttl}")));
    }
    let now = crate::clinic::now_ms().0 / 1000;
    let mut claims = Claims::new(new.sub, new.name, new.role, now, new.ttl_secs);
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
    Ok((StatusCode::CREATED, Json(json!({ "token": token, "expires_at": claims.exp }))).into_response())
}

#[derive(Deserialize)]
struct AuditQuery {
    from_seq: Option<u64>,
    limit: Option<usize>,
}

async fn audit(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let store = state.store.clone();
    let from = q.from_seq.unwrap_or(1);
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let entries = tokio::task::spawn_blocking(move || store.audit_entries(from))
        .await
        .map_err(|_| unavailable())?
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let page: Vec<_> = entries.into_iter().take(limit).collect();
    Ok(Json(page).into_response())
}

fn refused((code, message): (ErrorCode, String)) -> ApiError {
    let status = match code {
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
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
