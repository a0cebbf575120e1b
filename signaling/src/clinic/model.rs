//! The clinic's nouns: identities, roles, grants, appointments, consultations.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Wall-clock time in milliseconds since the Unix epoch. Appointments are booked in wall-clock
/// time, so the clinic model uses it (passed in, never read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Millis(pub u64);

impl Millis {
    /// `self + ms`, saturating.
    pub fn plus(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }
    /// `self - earlier` in ms, 0 if `earlier` is later.
    pub fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_owned())
            }
        }
    };
}

id_type!(
    /// A user as the hospital's identity system knows them (personal: never logged in clear).
    UserId
);
id_type!(
    /// A network clinic (a doctor's or a department's session).
    ClinicId
);
id_type!(
    /// A booked appointment.
    AppointmentId
);
id_type!(
    /// A consultation (one video visit).
    ConsultationId
);
id_type!(
    /// An invitation sent to a waiting patient.
    InvitationId
);

/// What a user may do, as carried in their token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs the clinic: invites, admits, ends.
    Doctor,
    /// Checks in and is invited.
    Patient,
    /// A family member or interpreter of a patient; joins once admitted.
    Companion,
    /// A remote expert invited into one consultation by a one-time link.
    Expert,
    /// Watches a consultation without publishing (teaching, supervision).
    Observer,
}

impl Role {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Doctor => "doctor",
            Role::Patient => "patient",
            Role::Companion => "companion",
            Role::Expert => "expert",
            Role::Observer => "observer",
        }
    }

    /// Whether this role may send media.
    pub fn may_publish(self) -> bool {
        self != Role::Observer
    }
}

/// The authenticated user behind a request: identity, role and grants from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Who.
    pub user: UserId,
    /// Their role.
    pub role: Role,
    /// Clinics they may act in (doctors, observers).
    pub clinics: Vec<ClinicId>,
    /// The one consultation they may join (experts, observers).
    pub consultation: Option<ConsultationId>,
    /// The appointment they accompany (companions) or own (patients; optional).
    pub appointment: Option<AppointmentId>,
    /// Token id (`jti`), used for one-time expert links.
    pub token_id: Option<String>,
}

impl Actor {
    /// An actor with no grants.
    pub fn new(user: impl Into<String>, role: Role) -> Actor {
        Actor {
            user: UserId(user.into()),
            role,
            clinics: Vec::new(),
            consultation: None,
            appointment: None,
            token_id: None,
        }
    }

    /// Whether the actor holds a grant for `clinic`.
    pub fn has_clinic(&self, clinic: &ClinicId) -> bool {
        self.clinics.iter().any(|c| c == clinic)
    }
}

/// A doctor's availability as the waiting room shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DoctorStatus {
    /// Connected and free.
    Online,
    /// In a consultation.
    InConsultation,
    /// Stepped away (or not connected).
    Away,
}

/// Lifecycle of a consultation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsultationState {
    /// Created, patient still in the waiting room.
    Waiting,
    /// The patient's client is ringing.
    Invited,
    /// The call runs.
    InProgress,
    /// Closed for everyone.
    Ended,
}

/// A network clinic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clinic {
    /// Id.
    pub id: ClinicId,
    /// The doctor running it.
    pub doctor: UserId,
    /// Display name (e.g. department).
    pub name: String,
    /// Slot length in minutes.
    pub slot_minutes: u32,
    /// The clinic session's time slots. Empty: appointments may start at any time.
    #[serde(default)]
    pub slots: Vec<Slot>,
}

/// A bookable time slot of a clinic session; several patients may share one (a 30-minute
/// follow-up slot often holds a few short visits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// Start of the slot.
    pub start: Millis,
    /// How many appointments it takes.
    pub capacity: u32,
}

/// A booked time slot of a patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appointment {
    /// Id.
    pub id: AppointmentId,
    /// Clinic.
    pub clinic: ClinicId,
    /// The patient.
    pub patient: UserId,
    /// Start of the slot.
    pub slot_start: Millis,
}

/// A participant's seat in a consultation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seat {
    /// Who.
    pub user: UserId,
    /// As what.
    pub role: Role,
    /// Companions wait for the doctor's approval; everyone else is admitted.
    pub admitted: bool,
    /// Lost connection at this time; the seat is kept for the grace period.
    pub disconnected_since: Option<Millis>,
}

/// One video visit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consultation {
    /// Id.
    pub id: ConsultationId,
    /// Clinic.
    pub clinic: ClinicId,
    /// The appointment it serves.
    pub appointment: AppointmentId,
    /// Its SFU room name.
    pub room: String,
    /// State.
    pub state: ConsultationState,
    /// Seats, in arrival order.
    pub seats: Vec<Seat>,
    /// Registered one-time expert links (token ids) and who used each.
    pub expert_links: Vec<(String, Option<UserId>)>,
    /// Recordings made of this consultation, the last one possibly running.
    #[serde(default)]
    pub recordings: Vec<RecordingState>,
    /// When the call started.
    pub started_at: Option<Millis>,
    /// When it ended.
    pub ended_at: Option<Millis>,
    /// The doctor who sent the invitation that opened it.
    #[serde(default)]
    pub invited_by: Option<UserId>,
}

/// A participant's answer to "may this call be recorded?".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentDecision {
    /// Asked, no answer yet: not recorded.
    Pending,
    /// Agreed: their media is recorded.
    Granted,
    /// Refused: their media is never recorded.
    Refused,
}

/// One consent decision, kept with the recording (and in the audit trail).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRecord {
    /// Who.
    pub user: UserId,
    /// As what.
    pub role: Role,
    /// Their latest answer.
    pub decision: ConsentDecision,
    /// When they gave it (or were asked, while pending).
    pub at: Millis,
}

/// A recording of a consultation, with the consent of each participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingState {
    /// Recording id.
    pub id: String,
    /// Started by the doctor at.
    pub started_at: Millis,
    /// Stopped at (doctor, or the end of the consultation).
    pub stopped_at: Option<Millis>,
    /// Everyone asked, with their answer.
    pub consents: Vec<ConsentRecord>,
}

impl RecordingState {
    /// Whether `user` agreed to be recorded (and the recording runs).
    pub fn records(&self, user: &UserId) -> bool {
        self.stopped_at.is_none()
            && self
                .consents
                .iter()
                .any(|c| &c.user == user && c.decision == ConsentDecision::Granted)
    }
}

impl Consultation {
    /// The recording under way, if any.
    pub fn active_recording(&self) -> Option<&RecordingState> {
        self.recordings.last().filter(|r| r.stopped_at.is_none())
    }

    /// The seat of `user`.
    pub fn seat(&self, user: &UserId) -> Option<&Seat> {
        self.seats.iter().find(|s| &s.user == user)
    }
}

/// An invitation to a waiting patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    /// Id.
    pub id: InvitationId,
    /// The consultation it opens.
    pub consultation: ConsultationId,
    /// The invited patient.
    pub patient: UserId,
    /// Unanswered at this time, it lapses.
    pub expires_at: Millis,
}
