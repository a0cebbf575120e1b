//! Development mode: a seeded demo clinic and ready-to-open links, so `huizhen serve` shows
//! the whole flow (waiting room, invitation, call) on one machine without a hospital system.

use huizhen_signaling::clinic::{Appointment, AppointmentId, Clinic, ClinicEngine, Millis, Role};

use crate::auth::{Claims, TokenError, TokenMinter};

/// The demo clinic's id.
pub const DEMO_CLINIC: &str = "demo";
/// The demo doctor.
pub const DEMO_DOCTOR: &str = "dr-demo";
/// The demo patient.
pub const DEMO_PATIENT: &str = "patient-demo";
/// How long demo tokens live.
const DEMO_TOKEN_TTL_SECS: u64 = 12 * 3600;

/// Links printed at start in development mode.
#[derive(Debug, Clone)]
pub struct DemoLinks {
    /// Doctor console.
    pub doctor: String,
    /// Patient page (checks in to the demo appointment).
    pub patient: String,
    /// A companion of the demo patient.
    pub companion: String,
}

/// Make sure the demo clinic exists and the demo patient has an open appointment starting in
/// ten minutes. Returns that appointment.
pub fn seed(engine: &mut ClinicEngine, now: Millis) -> AppointmentId {
    engine.upsert_clinic(Clinic {
        id: DEMO_CLINIC.into(),
        doctor: DEMO_DOCTOR.into(),
        name: "Demo follow-up clinic".into(),
        slot_minutes: 30,
        slots: Vec::new(),
    });
    let open = engine
        .appointments()
        .filter(|a| a.patient.0 == DEMO_PATIENT && a.clinic.0 == DEMO_CLINIC)
        .find(|a| !engine.appointment_used(&a.id))
        .map(|a| a.id.clone());
    if let Some(id) = open {
        return id;
    }
    let id = AppointmentId(format!("demo-{}", now.0 / 1000));
    engine
        .add_appointment(Appointment {
            id: id.clone(),
            clinic: DEMO_CLINIC.into(),
            patient: DEMO_PATIENT.into(),
            slot_start: now.plus(10 * 60_000),
        })
        .expect("demo clinic exists");
    id
}

/// Tokens and page links for the demo users.
pub fn links(
    minter: &TokenMinter,
    base_url: &str,
    now_secs: u64,
    appointment: &AppointmentId,
) -> Result<DemoLinks, TokenError> {
    let ttl = DEMO_TOKEN_TTL_SECS.min(minter.max_lifetime_secs());
    let mut doctor = Claims::new(DEMO_DOCTOR, "Dr. Demo", Role::Doctor, now_secs, ttl);
    doctor.clinics = vec![DEMO_CLINIC.to_owned()];
    let mut patient = Claims::new(DEMO_PATIENT, "Demo Patient", Role::Patient, now_secs, ttl);
    patient.appointment = Some(appointment.0.clone());
    let mut companion = Claims::new(
        "companion-demo",
        "Demo Companion",
        Role::Companion,
        now_secs,
        ttl,
    );
    companion.appointment = Some(appointment.0.clone());
    Ok(DemoLinks {
        doctor: format!(
            "{base_url}/doctor?token={}&clinic={DEMO_CLINIC}",
            minter.mint(&doctor)?
        ),
        patient: format!(
            "{base_url}/patient?token={}&appointment={}",
            minter.mint(&patient)?,
            appointment.0
        ),
        companion: format!(
            "{base_url}/companion?token={}&appointment={}",
            minter.mint(&companion)?,
            appointment.0
        ),
    })
}
