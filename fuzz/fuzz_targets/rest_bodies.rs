#![no_main]
//! REST request bodies of the admin API (`/api/v1`), as `http::api` reads them: JSON into
//! the body types with their field checks, then applied to the clinic engine as the clinic
//! service applies them (clinics, slots, appointments, reschedules), and tokens minted and
//! then verified by the server's own minter and verifier.
//!
//! `http::api`'s body types and checks are private, so this target carries copies of them
//! (same fields, serde attributes and limits, marked `api.rs:` where they come from); the
//! engine, the public types the bodies turn into, and the token code are the real ones.
//!
//! Input: requests `[route][len: 2][JSON body]`.

use std::sync::OnceLock;

use huizhen::auth::{AuthConfig, Claims, TokenMinter, TokenVerifier};
use huizhen_signaling::clinic::{
    Appointment, AppointmentId, Clinic, ClinicEngine, ClinicId, ClinicSettings, Millis, Role,
    UserId,
};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

#[path = "../common/mod.rs"]
mod common;

// api.rs: limits.
const MAX_TOKEN_TTL_SECS: u64 = 24 * 3600;
const EARLIEST_MS: u64 = 946_684_800_000;
const LATEST_MS: u64 = 4_102_444_800_000;
const MAX_NAME_CHARS: usize = 200;
/// The engine's clock: 2025-01-01.
const NOW_MS: u64 = 1_735_689_600_000;

// api.rs: body types.
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
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAppointment {
    id: String,
    clinic: String,
    patient: String,
    slot_start_ms: u64,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reschedule {
    slot_start_ms: u64,
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
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ConsultationPage {
    limit: Option<usize>,
    before: Option<String>,
}

// api.rs: checks.
fn check_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
fn check_time(ms: u64) -> Option<Millis> {
    (EARLIEST_MS..=LATEST_MS)
        .contains(&ms)
        .then_some(Millis(ms))
}
fn check_name(name: &str) -> bool {
    let count = name.chars().count();
    (1..=MAX_NAME_CHARS).contains(&count) && !name.chars().any(char::is_control)
}

fn auth() -> &'static (TokenMinter, TokenVerifier) {
    static A: OnceLock<(TokenMinter, TokenVerifier)> = OnceLock::new();
    A.get_or_init(|| {
        let config = AuthConfig {
            hs256_secret: Some("fuzz-secret-0123456789abcdef-0123456789".into()),
            ..AuthConfig::default()
        };
        (
            TokenMinter::new(&config).unwrap(),
            TokenVerifier::new(&config).unwrap(),
        )
    })
}

fuzz_target!(
    init: common::write_seeds(seeds),
    |data: &[u8]| {
        let mut r = common::Reader(data);
        let mut engine = ClinicEngine::new(ClinicSettings::default());
        let now = Millis(NOW_MS);
        for _ in 0..16 {
            if r.is_empty() {
                break;
            }
            let route = r.u8();
            let body = r.chunk();
            // The path parameter of the routes that have one.
            let path = ["c1", "a1", "c2"][usize::from(route >> 4) % 3];
            match route % 6 {
                // POST /clinics
                0 => {
                    let Ok(new) = serde_json::from_slice::<NewClinic>(body) else { continue };
                    if !(check_id(&new.id) && check_id(&new.doctor) && check_name(&new.name))
                        || !(5..=240).contains(&new.slot_minutes)
                    {
                        continue;
                    }
                    engine.upsert_clinic(Clinic {
                        id: ClinicId(new.id),
                        doctor: UserId(new.doctor),
                        name: new.name,
                        slot_minutes: new.slot_minutes,
                        slots: Vec::new(),
                    });
                }
                // POST /clinics/{id}/slots
                1 => {
                    let Ok(new) = serde_json::from_slice::<NewSlots>(body) else { continue };
                    let Some(start) = check_time(new.start_ms) else { continue };
                    if !(1..=200).contains(&new.count) || !(1..=100).contains(&new.capacity) {
                        continue;
                    }
                    let clinic = ClinicId(path.into());
                    if engine.add_slots(&clinic, start, new.count, new.capacity).is_ok() {
                        let _ = engine.slot_bookings(&clinic);
                    }
                }
                // POST /appointments
                2 => {
                    let Ok(new) = serde_json::from_slice::<NewAppointment>(body) else { continue };
                    if !(check_id(&new.id) && check_id(&new.clinic) && check_id(&new.patient)) {
                        continue;
                    }
                    let Some(slot_start) = check_time(new.slot_start_ms) else { continue };
                    let _ = engine.book_appointment(
                        now,
                        Appointment {
                            id: AppointmentId(new.id),
                            clinic: ClinicId(new.clinic),
                            patient: UserId(new.patient),
                            slot_start,
                        },
                    );
                }
                // POST /appointments/{id}/reschedule
                3 => {
                    let Ok(new) = serde_json::from_slice::<Reschedule>(body) else { continue };
                    let Some(slot_start) = check_time(new.slot_start_ms) else { continue };
                    let _ = engine.reschedule_appointment(now, &AppointmentId(path.into()), slot_start);
                }
                // POST /tokens
                4 => {
                    let Ok(new) = serde_json::from_slice::<NewToken>(body) else { continue };
                    let ids_ok = check_id(&new.sub)
                        && new.clinics.iter().all(|c| check_id(c))
                        && new.clinics.len() <= 100
                        && new.consultation.as_deref().is_none_or(check_id)
                        && new.appointment.as_deref().is_none_or(check_id);
                    let (minter, verifier) = auth();
                    let max_ttl = MAX_TOKEN_TTL_SECS.min(minter.max_lifetime_secs());
                    if !ids_ok || !check_name(&new.name) || !(60..=max_ttl).contains(&new.ttl_secs) {
                        continue;
                    }
                    let now_secs = NOW_MS / 1000;
                    let mut claims = Claims::new(new.sub, new.name, new.role, now_secs, new.ttl_secs)
                        .with_jti("t0000000000000001");
                    claims.clinics = new.clinics;
                    claims.consultation = new.consultation;
                    claims.appointment = new.appointment;
                    if let Ok(token) = minter.mint(&claims) {
                        let verified = verifier
                            .verify(&token, now_secs)
                            .expect("a token the API mints verifies");
                        assert_eq!(verified.actor.user.0, claims.sub);
                        assert_eq!(verified.display_name, claims.name);
                    }
                }
                // GET /clinics/{id}/consultations (query, read as a body here).
                _ => {
                    let _ = serde_json::from_slice::<ConsultationPage>(body);
                }
            }
        }
        let _ = engine.take_changes();
        let _ = engine.snapshot();
    }
);

/// The examples of the API's documentation, one request each, in a sensible order.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let request = |route: u8, body: &str| {
        let mut out = vec![route];
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body.as_bytes());
        out
    };
    let mut flow = Vec::new();
    flow.extend(request(
        0,
        r#"{"id":"c1","doctor":"d1","name":"Cardiology","slot_minutes":30}"#,
    ));
    flow.extend(request(
        1,
        r#"{"start_ms":1735722000000,"count":4,"capacity":2}"#,
    ));
    flow.extend(request(
        2,
        r#"{"id":"a1","clinic":"c1","patient":"p1","slot_start_ms":1735722000000}"#,
    ));
    flow.extend(request(0x13, r#"{"slot_start_ms":1735723800000}"#));
    flow.extend(request(
        4,
        r#"{"sub":"p1","name":"Patient One","role":"patient","clinics":["c1"],"appointment":"a1","ttl_secs":600}"#,
    ));
    vec![("clinic_flow", flow)]
}
