//! The network clinic: a sans-IO state machine for waiting rooms, invitations and
//! consultations.
//!
//! Every operation takes the wall-clock time and the authenticated [`Actor`] (from a verified
//! token) and either refuses with a [`ClinicError`] (the grant rules live here, in one place) or
//! changes state and queues [`ClinicEvent`]s, which the server turns into notifications, audit
//! entries and persistence. Timers (invitation expiry, reconnect grace) are driven by
//! [`ClinicEngine::handle_timeout`] with [`ClinicEngine::poll_timeout`] telling when. No clock,
//! randomness or I/O is used inside, so tests run whole clinic sessions in virtual time.

pub mod changes;
pub mod model;
pub mod queue;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use changes::Dirty;

use serde::{Deserialize, Serialize};

pub use changes::ChangeSet;
pub use model::*;
pub use queue::{estimate_wait_ms, QueueEntry, QueueOrder, WaitingRoom};

/// Clinic-wide settings (from the server config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClinicSettings {
    /// Check-in opens this long before the slot.
    pub checkin_window_ms: u64,
    /// A dropped patient keeps their place (and seat) this long.
    pub grace_ms: u64,
    /// An unanswered invitation lapses after this.
    pub invite_timeout_ms: u64,
    /// Most admitted participants in one consultation.
    pub max_participants: usize,
    /// Waiting room order.
    pub queue_order: QueueOrder,
    /// Assumed consultation length before any was measured.
    pub default_consultation_ms: u64,
    /// Appointments whose slot started longer ago than this (and that nobody waits or sits
    /// for) are history: they leave memory, cannot be checked in to or booked any more, and
    /// are read from the store.
    pub history_horizon_ms: u64,
}

impl Default for ClinicSettings {
    fn default() -> Self {
        ClinicSettings {
            checkin_window_ms: 30 * 60_000,
            grace_ms: 120_000,
            invite_timeout_ms: 60_000,
            max_participants: 12,
            queue_order: QueueOrder::SlotThenArrival,
            default_consultation_ms: 10 * 60_000,
            history_horizon_ms: 24 * 3600_000,
        }
    }
}

/// Why a clinic operation was refused. [`ClinicError::code`] is the wire code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClinicError {
    /// The actor's role or grants do not allow this.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The thing does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Check-in before the window opens.
    #[error("check-in opens {minutes} minutes before your appointment (at {opens_at:?})")]
    TooEarly {
        /// When check-in opens.
        opens_at: Millis,
        /// The window length, for the message.
        minutes: u64,
    },
    /// Not possible in the current state.
    #[error("{0}")]
    InvalidState(&'static str),
    /// The consultation has no free seat.
    #[error("the consultation is full ({0} participants)")]
    Full(usize),
    /// An expert link used after its consultation ended.
    #[error("this invitation link is no longer valid: the consultation has ended")]
    LinkExpired,
    /// The request contradicts what is already recorded (an id reused with other content).
    #[error("{0}")]
    Conflict(&'static str),
}

impl ClinicError {
    /// Wire error code.
    pub fn code(&self) -> &'static str {
        match self {
            ClinicError::Forbidden(_) => "forbidden",
            ClinicError::NotFound(_) => "not_found",
            ClinicError::TooEarly { .. } => "too_early",
            ClinicError::InvalidState(_) => "invalid_state",
            ClinicError::Full(_) => "consultation_full",
            ClinicError::LinkExpired => "link_expired",
            ClinicError::Conflict(_) => "conflict",
        }
    }
}

/// Why someone left a queue or a seat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftReason {
    /// They left.
    Left,
    /// Disconnected longer than the grace period.
    GraceExpired,
    /// The consultation ended.
    Ended,
}

/// Something that happened; every event is also an audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ClinicEvent {
    /// A patient entered the waiting room.
    CheckedIn {
        /// Clinic.
        clinic: ClinicId,
        /// Patient.
        patient: UserId,
        /// Appointment.
        appointment: AppointmentId,
    },
    /// A patient came back within the grace period and kept their place.
    Reconnected {
        /// Clinic.
        clinic: ClinicId,
        /// Patient.
        patient: UserId,
    },
    /// A patient left the waiting room without a consultation.
    LeftQueue {
        /// Clinic.
        clinic: ClinicId,
        /// Patient.
        patient: UserId,
        /// Why.
        reason: LeftReason,
    },
    /// The doctor moved a patient to the front.
    MovedUp {
        /// Clinic.
        clinic: ClinicId,
        /// Patient.
        patient: UserId,
    },
    /// The doctor invited a patient.
    Invited {
        /// Clinic.
        clinic: ClinicId,
        /// Patient.
        patient: UserId,
        /// Invitation.
        invitation: InvitationId,
        /// Consultation it opens.
        consultation: ConsultationId,
    },
    /// The patient answered.
    Answered {
        /// Invitation.
        invitation: InvitationId,
        /// Consultation.
        consultation: ConsultationId,
        /// Patient.
        patient: UserId,
    },
    /// The patient declined; back in the queue.
    Declined {
        /// Invitation.
        invitation: InvitationId,
        /// The consultation it would have opened.
        consultation: ConsultationId,
        /// Patient.
        patient: UserId,
    },
    /// Nobody answered in time; back in the queue.
    InvitationExpired {
        /// Invitation.
        invitation: InvitationId,
        /// The consultation it would have opened.
        consultation: ConsultationId,
        /// Patient.
        patient: UserId,
    },
    /// The doctor withdrew the invitation; back in the queue.
    InvitationCancelled {
        /// Invitation.
        invitation: InvitationId,
        /// The consultation it would have opened.
        consultation: ConsultationId,
        /// Patient.
        patient: UserId,
    },
    /// The call started (the patient answered the doctor's invitation).
    ConsultationStarted {
        /// Consultation.
        consultation: ConsultationId,
        /// Its SFU room.
        room: String,
        /// The doctor whose invitation started it.
        doctor: UserId,
    },
    /// Someone took their seat (joined the call).
    Joined {
        /// Consultation.
        consultation: ConsultationId,
        /// Who.
        user: UserId,
        /// As what.
        role: Role,
    },
    /// Someone left the call.
    Left {
        /// Consultation.
        consultation: ConsultationId,
        /// Who.
        user: UserId,
        /// Why.
        reason: LeftReason,
    },
    /// A companion waits for the doctor's approval.
    CompanionWaiting {
        /// Consultation.
        consultation: ConsultationId,
        /// The companion.
        user: UserId,
    },
    /// The doctor admitted a companion.
    Admitted {
        /// Consultation.
        consultation: ConsultationId,
        /// The companion.
        user: UserId,
    },
    /// The doctor registered a one-time expert link.
    ExpertInvited {
        /// Consultation.
        consultation: ConsultationId,
        /// The link's token id.
        link: String,
    },
    /// The doctor ended the call; the room closes for everyone.
    ConsultationEnded {
        /// Consultation.
        consultation: ConsultationId,
        /// Its SFU room.
        room: String,
        /// Call length.
        duration_ms: u64,
    },
    /// A doctor's status changed.
    DoctorStatus {
        /// Clinic.
        clinic: ClinicId,
        /// New status.
        status: DoctorStatus,
    },
    /// The doctor started recording; participants are being asked.
    RecordingStarted {
        /// Consultation.
        consultation: ConsultationId,
        /// Recording id.
        recording: String,
    },
    /// A participant must be asked for consent (on start, or on entering a recorded call).
    ConsentRequested {
        /// Consultation.
        consultation: ConsultationId,
        /// Recording id.
        recording: String,
        /// Who is asked.
        user: UserId,
    },
    /// A participant answered.
    ConsentDecided {
        /// Consultation.
        consultation: ConsultationId,
        /// Recording id.
        recording: String,
        /// Who.
        user: UserId,
        /// Their answer.
        decision: ConsentDecision,
    },
    /// The recording stopped (doctor, or the consultation ended).
    RecordingStopped {
        /// Consultation.
        consultation: ConsultationId,
        /// Recording id.
        recording: String,
    },
}

/// What a waiting patient sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientView {
    /// Clinic.
    pub clinic: ClinicId,
    /// 1-based place; `None` while being called or in a consultation.
    pub position: Option<usize>,
    /// Expected wait.
    pub estimated_wait_ms: u64,
    /// The doctor's status.
    pub doctor_status: DoctorStatus,
    /// The invitation ringing now.
    pub ringing: Option<InvitationId>,
    /// The consultation the patient is in.
    pub consultation: Option<ConsultationId>,
}

/// One row of the doctor's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRow {
    /// Patient.
    pub patient: UserId,
    /// Appointment.
    pub appointment: AppointmentId,
    /// Slot start.
    pub slot_start: Millis,
    /// How long they have waited.
    pub waited_ms: u64,
    /// Being called right now.
    pub ringing: bool,
    /// The invitation calling them, if any.
    pub invitation: Option<InvitationId>,
    /// Currently disconnected (place kept for the grace period).
    pub disconnected: bool,
}

/// Outcome of joining a consultation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    /// Admitted: join this SFU room.
    Admitted {
        /// The room.
        room: String,
        /// May send media.
        may_publish: bool,
    },
    /// A companion waiting for the doctor's approval.
    WaitingForApproval,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ClinicState {
    clinic: Clinic,
    queue: WaitingRoom,
    doctor_connected: bool,
    away: bool,
    active: Option<ConsultationId>,
    recent_lengths_ms: VecDeque<u64>,
}

impl ClinicState {
    /// What the store keeps of it (presence is not kept: nobody is connected after a restart).
    fn record(&self) -> ClinicRecord {
        ClinicRecord {
            clinic: self.clinic.clone(),
            queue: self.queue.clone(),
            active: self.active.clone(),
            recent_lengths_ms: self.recent_lengths_ms.iter().copied().collect(),
        }
    }
}

/// A clinic with its live waiting room, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClinicRecord {
    /// The clinic.
    pub clinic: Clinic,
    /// Its waiting room.
    pub queue: WaitingRoom,
    /// Its open consultation.
    pub active: Option<ConsultationId>,
    /// Lengths of its recent consultations (wait estimates).
    pub recent_lengths_ms: Vec<u64>,
}

/// Everything the engine knows, in plain records: what the store persists and restores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineSnapshot {
    /// Clinics and their queues.
    pub clinics: Vec<ClinicRecord>,
    /// Appointments.
    pub appointments: Vec<Appointment>,
    /// Consultations (all, including ended ones).
    pub consultations: Vec<Consultation>,
    /// Outstanding invitations.
    pub invitations: Vec<Invitation>,
    /// Id counter, so restored engines never reuse an id.
    pub next_id: u64,
    /// Appointments (of those above) whose consultation has ended: they cannot be checked in
    /// to again.
    #[serde(default)]
    pub ended_appointments: Vec<AppointmentId>,
}

/// What booking an appointment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Booking {
    /// A new appointment.
    Created,
    /// The same appointment was booked before (a retried request): nothing changed.
    Unchanged,
}

/// How many recent consultation lengths feed the wait estimate.
const RECENT_LENGTHS: usize = 5;

/// The whole clinic state machine. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClinicEngine {
    settings: ClinicSettings,
    clinics: BTreeMap<ClinicId, ClinicState>,
    appointments: BTreeMap<AppointmentId, Appointment>,
    consultations: BTreeMap<ConsultationId, Consultation>,
    invitations: BTreeMap<InvitationId, Invitation>,
    /// Appointments in memory whose consultation ended (the consultation itself left memory).
    #[serde(default)]
    ended_appointments: BTreeSet<AppointmentId>,
    #[serde(skip)]
    events: VecDeque<ClinicEvent>,
    #[serde(skip)]
    dirty: Dirty,
    next_id: u64,
}

impl ClinicEngine {
    /// An empty engine.
    pub fn new(settings: ClinicSettings) -> ClinicEngine {
        ClinicEngine {
            settings,
            clinics: BTreeMap::new(),
            appointments: BTreeMap::new(),
            consultations: BTreeMap::new(),
            invitations: BTreeMap::new(),
            ended_appointments: BTreeSet::new(),
            events: VecDeque::new(),
            dirty: Dirty::default(),
            next_id: 1,
        }
    }

    /// Plain records of the whole state.
    pub fn snapshot(&self) -> EngineSnapshot {
        EngineSnapshot {
            clinics: self.clinics.values().map(ClinicState::record).collect(),
            appointments: self.appointments.values().cloned().collect(),
            consultations: self.consultations.values().cloned().collect(),
            invitations: self.invitations.values().cloned().collect(),
            next_id: self.next_id,
            ended_appointments: self.ended_appointments.iter().cloned().collect(),
        }
    }

    /// Rebuild after a restart at `now`. Nobody is connected any more, so everyone waiting or
    /// seated starts their reconnect grace period now and keeps their place if they return.
    pub fn from_snapshot(
        settings: ClinicSettings,
        snapshot: EngineSnapshot,
        now: Millis,
    ) -> ClinicEngine {
        let mut engine = ClinicEngine::new(settings);
        engine.next_id = snapshot.next_id.max(1);
        for record in snapshot.clinics {
            let mut queue = record.queue;
            let patients: Vec<UserId> = queue.ordered().iter().map(|e| e.patient.clone()).collect();
            for p in patients {
                if let Some(e) = queue.get_mut(&p) {
                    e.disconnected_since.get_or_insert(now);
                }
            }
            engine.clinics.insert(
                record.clinic.id.clone(),
                ClinicState {
                    clinic: record.clinic,
                    queue,
                    doctor_connected: false,
                    away: false,
                    active: record.active,
                    recent_lengths_ms: record.recent_lengths_ms.into_iter().collect(),
                },
            );
        }
        for a in snapshot.appointments {
            engine.appointments.insert(a.id.clone(), a);
        }
        for mut c in snapshot.consultations {
            if c.state != ConsultationState::Ended {
                for seat in &mut c.seats {
                    seat.disconnected_since.get_or_insert(now);
                }
            }
            engine.consultations.insert(c.id.clone(), c);
        }
        for i in snapshot.invitations {
            engine.invitations.insert(i.id.clone(), i);
        }
        engine.ended_appointments = snapshot.ended_appointments.into_iter().collect();
        // The restart's grace marks are state like any other: written with the next commit.
        engine.dirty.clinics = engine.clinics.keys().cloned().collect();
        engine.dirty.consultations = engine
            .consultations
            .iter()
            .filter(|(_, c)| c.state != ConsultationState::Ended)
            .map(|(id, _)| id.clone())
            .collect();
        engine
    }

    /// The rows changed since the last call, for the store to write in one transaction.
    pub fn take_changes(&mut self) -> ChangeSet {
        let dirty = std::mem::take(&mut self.dirty);
        ChangeSet {
            clinics: dirty
                .clinics
                .iter()
                .filter_map(|id| self.clinics.get(id))
                .map(ClinicState::record)
                .collect(),
            appointments: dirty
                .appointments
                .iter()
                .filter(|id| !dirty.cancelled_appointments.contains(*id))
                .filter_map(|id| self.appointments.get(id).cloned())
                .collect(),
            cancelled_appointments: dirty.cancelled_appointments.into_iter().collect(),
            consultations: dirty
                .consultations
                .into_iter()
                .map(|id| {
                    let row = self.consultations.get(&id).cloned();
                    (id, row)
                })
                .collect(),
            invitations: dirty
                .invitations
                .into_iter()
                .map(|id| {
                    let row = self.invitations.get(&id).cloned();
                    (id, row)
                })
                .collect(),
            next_id: self.next_id,
        }
    }

    /// Whether anything changed since the last [`ClinicEngine::take_changes`].
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Let history leave memory, once it is committed: ended consultations, and appointments
    /// past the history horizon that nobody waits or sits for. The store keeps them; the admin
    /// API reads them there. Returns how many records left.
    pub fn evict_history(&mut self, now: Millis) -> usize {
        let ended: Vec<ConsultationId> = self
            .consultations
            .iter()
            .filter(|(id, c)| {
                c.state == ConsultationState::Ended && !self.dirty.consultations.contains(*id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ended {
            if let Some(c) = self.consultations.remove(id) {
                self.ended_appointments.insert(c.appointment);
            }
        }
        let cutoff = Millis(now.0.saturating_sub(self.settings.history_horizon_ms));
        let in_use: BTreeSet<&AppointmentId> = self
            .clinics
            .values()
            .flat_map(|s| s.queue.ordered().into_iter().map(|e| &e.appointment))
            .chain(self.consultations.values().map(|c| &c.appointment))
            .collect();
        let old: Vec<AppointmentId> = self
            .appointments
            .values()
            .filter(|a| {
                a.slot_start < cutoff
                    && !in_use.contains(&a.id)
                    && !self.dirty.appointments.contains(&a.id)
            })
            .map(|a| a.id.clone())
            .collect();
        for id in &old {
            self.appointments.remove(id);
            self.ended_appointments.remove(id);
        }
        ended.len() + old.len()
    }

    /// Whether the consultation of `appointment` has taken place (it cannot be used again).
    pub fn appointment_used(&self, appointment: &AppointmentId) -> bool {
        self.ended_appointments.contains(appointment)
            || self
                .consultations_of(appointment)
                .any(|c| c.state == ConsultationState::Ended)
    }

    /// Whether `user` waits in a queue or holds a seat in a live consultation.
    pub fn is_live_user(&self, user: &UserId) -> bool {
        self.clinics.values().any(|s| s.queue.get(user).is_some())
            || self.consultations.values().any(|c| c.seat(user).is_some())
    }

    /// Records held in memory: (appointments, consultations), for metrics.
    pub fn live_counts(&self) -> (usize, usize) {
        (self.appointments.len(), self.consultations.len())
    }

    /// Settings in force.
    pub fn settings(&self) -> &ClinicSettings {
        &self.settings
    }

    /// Next event to act on.
    pub fn poll_event(&mut self) -> Option<ClinicEvent> {
        self.events.pop_front()
    }

    fn emit(&mut self, event: ClinicEvent) {
        self.events.push_back(event);
    }

    fn fresh_id(&mut self, prefix: &str) -> String {
        let id = format!("{prefix}{}", self.next_id);
        self.next_id += 1;
        id
    }

    // ----- administration (REST API, already authorised by API key) -----

    /// Create or replace a clinic.
    pub fn upsert_clinic(&mut self, clinic: Clinic) {
        let order = self.settings.queue_order;
        self.dirty.clinics.insert(clinic.id.clone());
        match self.clinics.get_mut(&clinic.id) {
            Some(state) => {
                let mut clinic = clinic;
                if clinic.slots.is_empty() {
                    // Replacing a clinic's details keeps the session's timetable.
                    clinic.slots = std::mem::take(&mut state.clinic.slots);
                }
                state.clinic = clinic;
            }
            None => {
                self.clinics.insert(
                    clinic.id.clone(),
                    ClinicState {
                        clinic,
                        queue: WaitingRoom::new(order),
                        doctor_connected: false,
                        away: false,
                        active: None,
                        recent_lengths_ms: VecDeque::new(),
                    },
                );
            }
        }
    }

    /// Book an appointment.
    ///
    /// When the clinic has slots, the appointment must start at one of them and the slot must
    /// have room. Booking an id again with the same content changes nothing (a retried
    /// request); with other content it is a [`ClinicError::Conflict`]: appointments move only
    /// through [`ClinicEngine::reschedule_appointment`].
    pub fn add_appointment(&mut self, appointment: Appointment) -> Result<Booking, ClinicError> {
        if let Some(existing) = self.appointments.get(&appointment.id) {
            return if *existing == appointment {
                Ok(Booking::Unchanged)
            } else {
                Err(ClinicError::Conflict(
                    "an appointment with this id exists with other details; reschedule or cancel it instead",
                ))
            };
        }
        self.check_slot(&appointment.clinic, appointment.slot_start, &appointment.id)?;
        self.dirty.appointments.insert(appointment.id.clone());
        self.appointments
            .insert(appointment.id.clone(), appointment);
        Ok(Booking::Created)
    }

    /// Like [`ClinicEngine::add_appointment`], refusing slots that are already history at
    /// `now` (they could never be checked in to).
    pub fn book_appointment(
        &mut self,
        now: Millis,
        appointment: Appointment,
    ) -> Result<Booking, ClinicError> {
        if appointment.slot_start < Millis(now.0.saturating_sub(self.settings.history_horizon_ms))
            && !self.appointments.contains_key(&appointment.id)
        {
            return Err(ClinicError::InvalidState(
                "this slot is too far in the past to book",
            ));
        }
        self.add_appointment(appointment)
    }

    /// The slot at `start` of `clinic` exists (when the clinic has slots) and has room for
    /// one more appointment besides `ignoring`.
    fn check_slot(
        &self,
        clinic: &ClinicId,
        start: Millis,
        ignoring: &AppointmentId,
    ) -> Result<(), ClinicError> {
        let clinic_id = clinic;
        let clinic = &self
            .clinics
            .get(clinic)
            .ok_or(ClinicError::NotFound("clinic"))?
            .clinic;
        if clinic.slots.is_empty() {
            return Ok(());
        }
        let slot = clinic
            .slots
            .iter()
            .find(|s| s.start == start)
            .ok_or(ClinicError::NotFound("slot"))?;
        let booked = self
            .appointments
            .values()
            .filter(|a| &a.clinic == clinic_id && a.slot_start == slot.start && &a.id != ignoring)
            .count();
        if booked >= slot.capacity as usize {
            return Err(ClinicError::InvalidState("this slot is fully booked"));
        }
        Ok(())
    }

    /// Why an appointment cannot change now: its patient waits or is called, or its
    /// consultation runs or has ended.
    fn check_appointment_idle(&self, id: &AppointmentId) -> Result<&Appointment, ClinicError> {
        let appointment = self
            .appointments
            .get(id)
            .ok_or(ClinicError::NotFound("appointment"))?;
        let waiting = self
            .clinics
            .get(&appointment.clinic)
            .and_then(|s| s.queue.get(&appointment.patient))
            .is_some_and(|e| &e.appointment == id);
        if waiting {
            return Err(ClinicError::Conflict(
                "the patient is checked in for this appointment",
            ));
        }
        if self
            .consultations
            .values()
            .any(|c| &c.appointment == id && c.state != ConsultationState::Ended)
        {
            return Err(ClinicError::Conflict(
                "this appointment's consultation is under way",
            ));
        }
        if self.ended_appointments.contains(id) {
            return Err(ClinicError::Conflict(
                "this appointment's consultation has taken place",
            ));
        }
        Ok(appointment)
    }

    /// Move an appointment to another slot of its clinic; refused while its patient waits or
    /// its consultation runs, and after it took place.
    pub fn reschedule_appointment(
        &mut self,
        now: Millis,
        id: &AppointmentId,
        slot_start: Millis,
    ) -> Result<Appointment, ClinicError> {
        let appointment = self.check_appointment_idle(id)?.clone();
        if slot_start < Millis(now.0.saturating_sub(self.settings.history_horizon_ms)) {
            return Err(ClinicError::InvalidState(
                "this slot is too far in the past to book",
            ));
        }
        self.check_slot(&appointment.clinic, slot_start, id)?;
        let a = self.appointments.get_mut(id).expect("checked above");
        a.slot_start = slot_start;
        self.dirty.appointments.insert(id.clone());
        Ok(a.clone())
    }

    /// Cancel an appointment that has not been used: refused while its patient waits or its
    /// consultation runs, and after it took place (it is then part of the record of care).
    pub fn cancel_appointment(&mut self, id: &AppointmentId) -> Result<Appointment, ClinicError> {
        self.check_appointment_idle(id)?;
        let appointment = self.appointments.remove(id).expect("checked above");
        self.dirty.appointments.remove(id);
        self.dirty.cancelled_appointments.insert(id.clone());
        Ok(appointment)
    }

    /// Add `count` consecutive slots of the clinic's slot length from `start`, each taking
    /// `capacity` appointments. Existing slots are kept; overlapping starts are not duplicated.
    pub fn add_slots(
        &mut self,
        clinic: &ClinicId,
        start: Millis,
        count: u32,
        capacity: u32,
    ) -> Result<Vec<Slot>, ClinicError> {
        let state = self
            .clinics
            .get_mut(clinic)
            .ok_or(ClinicError::NotFound("clinic"))?;
        let length_ms = u64::from(state.clinic.slot_minutes) * 60_000;
        self.dirty.clinics.insert(clinic.clone());
        for i in 0..u64::from(count) {
            let slot_start = start.plus(i * length_ms);
            if !state.clinic.slots.iter().any(|s| s.start == slot_start) {
                state.clinic.slots.push(Slot {
                    start: slot_start,
                    capacity,
                });
            }
        }
        state.clinic.slots.sort_by_key(|s| s.start);
        Ok(state.clinic.slots.clone())
    }

    /// Appointments booked into each slot of `clinic`: `(slot, booked)`.
    pub fn slot_bookings(&self, clinic: &ClinicId) -> Vec<(Slot, usize)> {
        let Some(state) = self.clinics.get(clinic) else {
            return Vec::new();
        };
        state
            .clinic
            .slots
            .iter()
            .map(|slot| {
                let booked = self
                    .appointments
                    .values()
                    .filter(|a| &a.clinic == clinic && a.slot_start == slot.start)
                    .count();
                (*slot, booked)
            })
            .collect()
    }

    /// A clinic.
    pub fn clinic(&self, id: &ClinicId) -> Option<&Clinic> {
        self.clinics.get(id).map(|s| &s.clinic)
    }

    /// All clinics.
    pub fn clinics(&self) -> impl Iterator<Item = &Clinic> {
        self.clinics.values().map(|s| &s.clinic)
    }

    /// An appointment.
    pub fn appointment(&self, id: &AppointmentId) -> Option<&Appointment> {
        self.appointments.get(id)
    }

    /// All appointments.
    pub fn appointments(&self) -> impl Iterator<Item = &Appointment> {
        self.appointments.values()
    }

    /// A consultation.
    pub fn consultation(&self, id: &ConsultationId) -> Option<&Consultation> {
        self.consultations.get(id)
    }

    /// Consultations held (or being held) for an appointment.
    pub fn consultations_of<'a>(
        &'a self,
        appointment: &'a AppointmentId,
    ) -> impl Iterator<Item = &'a Consultation> + 'a {
        self.consultations
            .values()
            .filter(move |c| &c.appointment == appointment)
    }

    /// An invitation.
    pub fn invitation(&self, id: &InvitationId) -> Option<&Invitation> {
        self.invitations.get(id)
    }

    // ----- grant checks -----

    fn require_doctor_of(&self, actor: &Actor, clinic: &ClinicId) -> Result<(), ClinicError> {
        if actor.role != Role::Doctor {
            return Err(ClinicError::Forbidden("only a doctor may do this"));
        }
        if !actor.has_clinic(clinic) {
            return Err(ClinicError::Forbidden("no grant for this clinic"));
        }
        if !self.clinics.contains_key(clinic) {
            return Err(ClinicError::NotFound("clinic"));
        }
        Ok(())
    }

    fn consultation_of_doctor(
        &self,
        actor: &Actor,
        id: &ConsultationId,
    ) -> Result<&Consultation, ClinicError> {
        let c = self
            .consultations
            .get(id)
            .ok_or(ClinicError::NotFound("consultation"))?;
        self.require_doctor_of(actor, &c.clinic)?;
        Ok(c)
    }

    // ----- patients -----

    /// A patient enters the waiting room of their appointment's clinic (or comes back to it).
    pub fn check_in(
        &mut self,
        now: Millis,
        actor: &Actor,
        appointment: &AppointmentId,
    ) -> Result<PatientView, ClinicError> {
        if actor.role != Role::Patient {
            return Err(ClinicError::Forbidden("only the patient can check in"));
        }
        let appt = self
            .appointments
            .get(appointment)
            .ok_or(ClinicError::NotFound("appointment"))?
            .clone();
        if appt.patient != actor.user {
            return Err(ClinicError::Forbidden(
                "this appointment belongs to another patient",
            ));
        }
        let opens_at = Millis(
            appt.slot_start
                .0
                .saturating_sub(self.settings.checkin_window_ms),
        );
        if now < opens_at {
            return Err(ClinicError::TooEarly {
                opens_at,
                minutes: self.settings.checkin_window_ms / 60_000,
            });
        }
        if self.ended_appointments.contains(&appt.id)
            || self
                .consultation_of_appointment(&appt.id)
                .is_some_and(|c| c.state == ConsultationState::Ended)
        {
            return Err(ClinicError::InvalidState(
                "this appointment's consultation has ended",
            ));
        }
        let state = self
            .clinics
            .get_mut(&appt.clinic)
            .ok_or(ClinicError::NotFound("clinic"))?;
        self.dirty.clinics.insert(appt.clinic.clone());
        let added = state
            .queue
            .add(now, appt.id.clone(), actor.user.clone(), appt.slot_start);
        let event = if added {
            ClinicEvent::CheckedIn {
                clinic: appt.clinic.clone(),
                patient: actor.user.clone(),
                appointment: appt.id.clone(),
            }
        } else {
            ClinicEvent::Reconnected {
                clinic: appt.clinic.clone(),
                patient: actor.user.clone(),
            }
        };
        self.emit(event);
        self.patient_view(now, &actor.user)
            .ok_or(ClinicError::NotFound("waiting room entry"))
    }

    fn consultation_of_appointment(&self, appointment: &AppointmentId) -> Option<&Consultation> {
        self.consultations
            .values()
            .filter(|c| &c.appointment == appointment)
            .max_by_key(|c| c.started_at)
    }

    /// What `patient` sees now, if they are waiting, being called or in a consultation.
    pub fn patient_view(&self, now: Millis, patient: &UserId) -> Option<PatientView> {
        let (clinic_id, state) = self
            .clinics
            .iter()
            .find(|(_, s)| s.queue.get(patient).is_some())?;
        let entry = state.queue.get(patient)?;
        let position = state.queue.position(patient);
        let average = self.average_length(state);
        let elapsed = state
            .active
            .as_ref()
            .and_then(|c| self.consultations.get(c))
            .and_then(|c| c.started_at)
            .map(|t| now.since(t));
        Some(PatientView {
            clinic: clinic_id.clone(),
            position,
            estimated_wait_ms: position.map_or(0, |p| estimate_wait_ms(p, average, elapsed)),
            doctor_status: self.doctor_status(state),
            ringing: entry.invited.clone(),
            consultation: None,
        })
    }

    fn average_length(&self, state: &ClinicState) -> u64 {
        if state.recent_lengths_ms.is_empty() {
            return self.settings.default_consultation_ms;
        }
        state.recent_lengths_ms.iter().sum::<u64>() / state.recent_lengths_ms.len() as u64
    }

    fn doctor_status(&self, state: &ClinicState) -> DoctorStatus {
        let in_call = state
            .active
            .as_ref()
            .and_then(|c| self.consultations.get(c))
            .is_some_and(|c| c.state == ConsultationState::InProgress);
        if in_call {
            DoctorStatus::InConsultation
        } else if state.doctor_connected && !state.away {
            DoctorStatus::Online
        } else {
            DoctorStatus::Away
        }
    }

    /// The doctor's status in `clinic`.
    pub fn clinic_doctor_status(&self, clinic: &ClinicId) -> Option<DoctorStatus> {
        self.clinics.get(clinic).map(|s| self.doctor_status(s))
    }

    /// The doctor's queue, in order.
    pub fn queue(
        &self,
        now: Millis,
        actor: &Actor,
        clinic: &ClinicId,
    ) -> Result<Vec<QueueRow>, ClinicError> {
        self.require_doctor_of(actor, clinic)?;
        Ok(self.queue_rows(now, clinic))
    }

    /// The queue without a grant check (for the server's own notifications).
    pub fn queue_rows(&self, now: Millis, clinic: &ClinicId) -> Vec<QueueRow> {
        let Some(state) = self.clinics.get(clinic) else {
            return Vec::new();
        };
        state
            .queue
            .ordered()
            .into_iter()
            .map(|e| QueueRow {
                patient: e.patient.clone(),
                appointment: e.appointment.clone(),
                slot_start: e.slot_start,
                waited_ms: now.since(e.arrived),
                ringing: e.invited.is_some(),
                invitation: e.invited.clone(),
                disconnected: e.disconnected_since.is_some(),
            })
            .collect()
    }

    /// Patients waiting in `clinic` (for fan-out of position updates).
    pub fn waiting_patients(&self, clinic: &ClinicId) -> Vec<UserId> {
        self.clinics
            .get(clinic)
            .map(|s| {
                s.queue
                    .ordered()
                    .into_iter()
                    .map(|e| e.patient.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The patient leaves the waiting room.
    pub fn leave_queue(&mut self, actor: &Actor) -> Result<(), ClinicError> {
        let clinic = self
            .clinic_of_waiting(&actor.user)
            .ok_or(ClinicError::NotFound("waiting room entry"))?;
        let entry = self
            .clinics
            .get_mut(&clinic)
            .and_then(|s| s.queue.remove(&actor.user))
            .ok_or(ClinicError::NotFound("waiting room entry"))?;
        self.dirty.clinics.insert(clinic.clone());
        if let Some(inv) = entry.invited {
            self.drop_invitation(&inv);
        }
        self.emit(ClinicEvent::LeftQueue {
            clinic,
            patient: actor.user.clone(),
            reason: LeftReason::Left,
        });
        Ok(())
    }

    fn clinic_of_waiting(&self, patient: &UserId) -> Option<ClinicId> {
        self.clinics
            .iter()
            .find(|(_, s)| s.queue.get(patient).is_some())
            .map(|(id, _)| id.clone())
    }

    // ----- doctors -----

    /// The doctor's console connected or disconnected, or the doctor set themselves away.
    pub fn set_doctor_presence(
        &mut self,
        actor: &Actor,
        clinic: &ClinicId,
        connected: bool,
        away: bool,
    ) -> Result<(), ClinicError> {
        self.require_doctor_of(actor, clinic)?;
        let before = self.clinic_doctor_status(clinic);
        if let Some(s) = self.clinics.get_mut(clinic) {
            s.doctor_connected = connected;
            s.away = away;
        }
        let after = self.clinic_doctor_status(clinic);
        if before != after {
            if let Some(status) = after {
                self.emit(ClinicEvent::DoctorStatus {
                    clinic: clinic.clone(),
                    status,
                });
            }
        }
        Ok(())
    }

    /// Move a waiting patient to the front.
    pub fn move_up(
        &mut self,
        actor: &Actor,
        clinic: &ClinicId,
        patient: &UserId,
    ) -> Result<(), ClinicError> {
        self.require_doctor_of(actor, clinic)?;
        let moved = self
            .clinics
            .get_mut(clinic)
            .is_some_and(|s| s.queue.promote(patient));
        if !moved {
            return Err(ClinicError::NotFound("waiting patient"));
        }
        self.dirty.clinics.insert(clinic.clone());
        self.emit(ClinicEvent::MovedUp {
            clinic: clinic.clone(),
            patient: patient.clone(),
        });
        Ok(())
    }

    /// Invite the next patient (or `patient`): their client rings until they answer, decline,
    /// or the invitation times out.
    pub fn invite(
        &mut self,
        now: Millis,
        actor: &Actor,
        clinic: &ClinicId,
        patient: Option<&UserId>,
    ) -> Result<Invitation, ClinicError> {
        self.require_doctor_of(actor, clinic)?;
        let state = &self.clinics[clinic];
        if let Some(active) = state
            .active
            .as_ref()
            .and_then(|c| self.consultations.get(c))
        {
            if active.state != ConsultationState::Ended {
                return Err(ClinicError::InvalidState(
                    "finish or cancel the current consultation before inviting the next patient",
                ));
            }
        }
        let entry = match patient {
            Some(p) => state
                .queue
                .get(p)
                .ok_or(ClinicError::NotFound("waiting patient"))?,
            None => state
                .queue
                .next_callable()
                .ok_or(ClinicError::InvalidState("nobody is waiting"))?,
        };
        if entry.invited.is_some() {
            return Err(ClinicError::InvalidState(
                "this patient is already being called",
            ));
        }
        let (patient, appointment) = (entry.patient.clone(), entry.appointment.clone());
        let consultation_id = ConsultationId(self.fresh_id("c"));
        let invitation_id = InvitationId(self.fresh_id("inv"));
        let consultation = Consultation {
            id: consultation_id.clone(),
            clinic: clinic.clone(),
            appointment,
            room: format!("consult-{consultation_id}"),
            state: ConsultationState::Invited,
            seats: Vec::new(),
            expert_links: Vec::new(),
            recordings: Vec::new(),
            started_at: None,
            ended_at: None,
            invited_by: Some(actor.user.clone()),
        };
        self.dirty.clinics.insert(clinic.clone());
        self.dirty.consultations.insert(consultation_id.clone());
        self.dirty.invitations.insert(invitation_id.clone());
        let invitation = Invitation {
            id: invitation_id.clone(),
            consultation: consultation_id.clone(),
            patient: patient.clone(),
            expires_at: now.plus(self.settings.invite_timeout_ms),
        };
        self.consultations
            .insert(consultation_id.clone(), consultation);
        self.invitations
            .insert(invitation_id.clone(), invitation.clone());
        let state = self.clinics.get_mut(clinic).expect("checked above");
        state.active = Some(consultation_id.clone());
        if let Some(e) = state.queue.get_mut(&patient) {
            e.invited = Some(invitation_id.clone());
        }
        self.emit(ClinicEvent::Invited {
            clinic: clinic.clone(),
            patient,
            invitation: invitation_id,
            consultation: consultation_id,
        });
        Ok(invitation)
    }

    /// The doctor withdraws an unanswered invitation.
    pub fn cancel_invitation(
        &mut self,
        actor: &Actor,
        invitation: &InvitationId,
    ) -> Result<(), ClinicError> {
        let inv = self
            .invitations
            .get(invitation)
            .ok_or(ClinicError::NotFound("invitation"))?
            .clone();
        self.consultation_of_doctor(actor, &inv.consultation)?;
        self.drop_invitation(invitation);
        self.emit(ClinicEvent::InvitationCancelled {
            consultation: inv.consultation.clone(),
            invitation: inv.id,
            patient: inv.patient,
        });
        Ok(())
    }

    /// Remove an invitation and put its patient back in line (their old place).
    fn drop_invitation(&mut self, invitation: &InvitationId) {
        let Some(inv) = self.invitations.remove(invitation) else {
            return;
        };
        self.dirty.invitations.insert(inv.id.clone());
        self.dirty.consultations.insert(inv.consultation.clone());
        if let Some(c) = self.consultations.remove(&inv.consultation) {
            self.dirty.clinics.insert(c.clinic.clone());
            if let Some(state) = self.clinics.get_mut(&c.clinic) {
                if state.active.as_ref() == Some(&c.id) {
                    state.active = None;
                }
                if let Some(e) = state.queue.get_mut(&inv.patient) {
                    e.invited = None;
                }
            }
        }
    }

    /// The patient answers: the consultation starts; both join its room.
    pub fn answer(
        &mut self,
        now: Millis,
        actor: &Actor,
        invitation: &InvitationId,
    ) -> Result<JoinOutcome, ClinicError> {
        let inv = self
            .invitations
            .get(invitation)
            .ok_or(ClinicError::NotFound("invitation"))?
            .clone();
        if actor.role != Role::Patient || inv.patient != actor.user {
            return Err(ClinicError::Forbidden(
                "this invitation is for another patient",
            ));
        }
        if !self.consultations.contains_key(&inv.consultation) {
            return Err(ClinicError::NotFound("consultation"));
        }
        self.invitations.remove(invitation);
        self.dirty.invitations.insert(inv.id.clone());
        self.dirty.consultations.insert(inv.consultation.clone());
        let c = self
            .consultations
            .get_mut(&inv.consultation)
            .expect("checked above");
        c.state = ConsultationState::InProgress;
        c.started_at = Some(now);
        c.seats.push(Seat {
            user: actor.user.clone(),
            role: Role::Patient,
            admitted: true,
            disconnected_since: None,
        });
        let (room, clinic, id) = (c.room.clone(), c.clinic.clone(), c.id.clone());
        let doctor = c
            .invited_by
            .clone()
            .unwrap_or_else(|| UserId(String::new()));
        if let Some(state) = self.clinics.get_mut(&clinic) {
            state.queue.remove(&actor.user);
            self.dirty.clinics.insert(clinic.clone());
        }
        self.emit(ClinicEvent::Answered {
            invitation: inv.id,
            consultation: id.clone(),
            patient: actor.user.clone(),
        });
        self.emit(ClinicEvent::ConsultationStarted {
            consultation: id.clone(),
            room: room.clone(),
            doctor,
        });
        self.emit(ClinicEvent::Joined {
            consultation: id,
            user: actor.user.clone(),
            role: Role::Patient,
        });
        Ok(JoinOutcome::Admitted {
            room,
            may_publish: true,
        })
    }

    /// The patient declines: back in the queue, the doctor is told.
    pub fn decline(&mut self, actor: &Actor, invitation: &InvitationId) -> Result<(), ClinicError> {
        let inv = self
            .invitations
            .get(invitation)
            .ok_or(ClinicError::NotFound("invitation"))?
            .clone();
        if actor.role != Role::Patient || inv.patient != actor.user {
            return Err(ClinicError::Forbidden(
                "this invitation is for another patient",
            ));
        }
        self.drop_invitation(invitation);
        self.emit(ClinicEvent::Declined {
            consultation: inv.consultation.clone(),
            invitation: inv.id,
            patient: inv.patient,
        });
        Ok(())
    }

    /// Register a one-time expert link (its token id) for a consultation.
    pub fn invite_expert(
        &mut self,
        actor: &Actor,
        consultation: &ConsultationId,
        link: String,
    ) -> Result<(), ClinicError> {
        let c = self.consultation_of_doctor(actor, consultation)?;
        if c.state == ConsultationState::Ended {
            return Err(ClinicError::InvalidState("the consultation has ended"));
        }
        if let Some(c) = self.consultations.get_mut(consultation) {
            c.expert_links.push((link.clone(), None));
            self.dirty.consultations.insert(consultation.clone());
        }
        self.emit(ClinicEvent::ExpertInvited {
            consultation: consultation.clone(),
            link,
        });
        Ok(())
    }

    /// Take a seat in a consultation's call, subject to the grant rules of each role.
    pub fn join(
        &mut self,
        now: Millis,
        actor: &Actor,
        consultation: &ConsultationId,
    ) -> Result<JoinOutcome, ClinicError> {
        let c = self
            .consultations
            .get(consultation)
            .ok_or(ClinicError::NotFound("consultation"))?;
        self.check_join_grant(actor, c)?;
        if c.state == ConsultationState::Ended {
            return Err(if actor.role == Role::Expert {
                ClinicError::LinkExpired
            } else {
                ClinicError::InvalidState("the consultation has ended")
            });
        }
        if actor.role != Role::Doctor && c.state != ConsultationState::InProgress {
            return Err(ClinicError::InvalidState(
                "the consultation has not started",
            ));
        }
        let room = c.room.clone();
        let may_publish = actor.role.may_publish();
        self.dirty.consultations.insert(consultation.clone());
        if let Some(seat) = c.seat(&actor.user) {
            // Reconnect within the grace period: same seat.
            let admitted = seat.admitted;
            let c = self.consultations.get_mut(consultation).expect("exists");
            if let Some(seat) = c.seats.iter_mut().find(|s| s.user == actor.user) {
                seat.disconnected_since = None;
            }
            if admitted {
                // An admitted companion entering for the first time, or anyone returning.
                self.ask_consent(now, consultation, &actor.user, actor.role);
            }
            return Ok(if admitted {
                JoinOutcome::Admitted { room, may_publish }
            } else {
                JoinOutcome::WaitingForApproval
            });
        }
        let admitted_count = c.seats.iter().filter(|s| s.admitted).count();
        if admitted_count >= self.settings.max_participants {
            return Err(ClinicError::Full(self.settings.max_participants));
        }
        let admitted = actor.role != Role::Companion;
        let c = self.consultations.get_mut(consultation).expect("exists");
        if actor.role == Role::Expert {
            if let Some(link) = c
                .expert_links
                .iter_mut()
                .find(|(id, _)| Some(id) == actor.token_id.as_ref())
            {
                link.1 = Some(actor.user.clone());
            }
        }
        c.seats.push(Seat {
            user: actor.user.clone(),
            role: actor.role,
            admitted,
            disconnected_since: None,
        });
        if admitted {
            self.emit(ClinicEvent::Joined {
                consultation: consultation.clone(),
                user: actor.user.clone(),
                role: actor.role,
            });
            self.ask_consent(now, consultation, &actor.user, actor.role);
            Ok(JoinOutcome::Admitted { room, may_publish })
        } else {
            self.emit(ClinicEvent::CompanionWaiting {
                consultation: consultation.clone(),
                user: actor.user.clone(),
            });
            Ok(JoinOutcome::WaitingForApproval)
        }
    }

    fn check_join_grant(&self, actor: &Actor, c: &Consultation) -> Result<(), ClinicError> {
        let appointment = self.appointments.get(&c.appointment);
        match actor.role {
            Role::Doctor => self.require_doctor_of(actor, &c.clinic),
            Role::Patient => {
                if appointment.is_some_and(|a| a.patient == actor.user) {
                    Ok(())
                } else {
                    Err(ClinicError::Forbidden(
                        "this is another patient's consultation",
                    ))
                }
            }
            Role::Companion => {
                if actor.appointment.as_ref() == Some(&c.appointment) {
                    Ok(())
                } else {
                    Err(ClinicError::Forbidden(
                        "no grant to accompany this consultation",
                    ))
                }
            }
            Role::Expert => {
                if actor.consultation.as_ref() != Some(&c.id) {
                    return Err(ClinicError::Forbidden(
                        "the link is for another consultation",
                    ));
                }
                let link = c
                    .expert_links
                    .iter()
                    .find(|(id, _)| Some(id) == actor.token_id.as_ref());
                match link {
                    None => Err(ClinicError::Forbidden("unknown expert link")),
                    Some((_, Some(user))) if *user != actor.user => Err(ClinicError::Forbidden(
                        "this link was already used by someone else",
                    )),
                    Some(_) => Ok(()),
                }
            }
            Role::Observer => {
                if actor.consultation.as_ref() == Some(&c.id) || actor.has_clinic(&c.clinic) {
                    Ok(())
                } else {
                    Err(ClinicError::Forbidden(
                        "no grant to observe this consultation",
                    ))
                }
            }
        }
    }

    /// The doctor admits a waiting companion.
    pub fn admit(
        &mut self,
        actor: &Actor,
        consultation: &ConsultationId,
        companion: &UserId,
    ) -> Result<String, ClinicError> {
        let c = self.consultation_of_doctor(actor, consultation)?;
        if c.state == ConsultationState::Ended {
            return Err(ClinicError::InvalidState("the consultation has ended"));
        }
        let admitted_count = c.seats.iter().filter(|s| s.admitted).count();
        if admitted_count >= self.settings.max_participants {
            return Err(ClinicError::Full(self.settings.max_participants));
        }
        let c = self.consultations.get_mut(consultation).expect("exists");
        let seat = c
            .seats
            .iter_mut()
            .find(|s| &s.user == companion && !s.admitted)
            .ok_or(ClinicError::NotFound("waiting companion"))?;
        seat.admitted = true;
        self.dirty.consultations.insert(consultation.clone());
        let room = c.room.clone();
        self.emit(ClinicEvent::Admitted {
            consultation: consultation.clone(),
            user: companion.clone(),
        });
        Ok(room)
    }

    /// Someone leaves the call for good.
    pub fn leave(
        &mut self,
        actor: &Actor,
        consultation: &ConsultationId,
    ) -> Result<(), ClinicError> {
        let c = self
            .consultations
            .get_mut(consultation)
            .ok_or(ClinicError::NotFound("consultation"))?;
        let before = c.seats.len();
        c.seats.retain(|s| s.user != actor.user);
        if c.seats.len() == before {
            return Err(ClinicError::NotFound("seat"));
        }
        self.dirty.consultations.insert(consultation.clone());
        self.emit(ClinicEvent::Left {
            consultation: consultation.clone(),
            user: actor.user.clone(),
            reason: LeftReason::Left,
        });
        Ok(())
    }

    /// The doctor ends the consultation: the room closes for everyone, expert links die.
    pub fn end(
        &mut self,
        now: Millis,
        actor: &Actor,
        consultation: &ConsultationId,
    ) -> Result<(), ClinicError> {
        let c = self.consultation_of_doctor(actor, consultation)?;
        match c.state {
            ConsultationState::Ended => return Err(ClinicError::InvalidState("already ended")),
            ConsultationState::Waiting | ConsultationState::Invited => {
                return Err(ClinicError::InvalidState(
                    "the consultation has not started; cancel the invitation instead",
                ))
            }
            ConsultationState::InProgress => {}
        }
        self.stop_recording_at(now, consultation);
        let c = self.consultations.get_mut(consultation).expect("exists");
        c.state = ConsultationState::Ended;
        c.ended_at = Some(now);
        self.dirty.consultations.insert(consultation.clone());
        self.dirty.clinics.insert(c.clinic.clone());
        self.ended_appointments.insert(c.appointment.clone());
        let duration_ms = c.started_at.map_or(0, |s| now.since(s));
        let (room, clinic) = (c.room.clone(), c.clinic.clone());
        // Seats stay on the record: who took part is part of the consultation's history.
        let seats = c.seats.clone();
        if let Some(state) = self.clinics.get_mut(&clinic) {
            state.recent_lengths_ms.push_back(duration_ms);
            while state.recent_lengths_ms.len() > RECENT_LENGTHS {
                state.recent_lengths_ms.pop_front();
            }
            if state.active.as_ref() == Some(consultation) {
                state.active = None;
            }
        }
        for seat in seats.into_iter().filter(|s| s.admitted) {
            self.emit(ClinicEvent::Left {
                consultation: consultation.clone(),
                user: seat.user,
                reason: LeftReason::Ended,
            });
        }
        self.emit(ClinicEvent::ConsultationEnded {
            consultation: consultation.clone(),
            room,
            duration_ms,
        });
        Ok(())
    }

    // ----- recording consent -----

    /// The doctor starts recording: every admitted participant is asked; the doctor's own
    /// request counts as their consent. Nobody's media is recorded before they agree.
    pub fn start_recording(
        &mut self,
        now: Millis,
        actor: &Actor,
        consultation: &ConsultationId,
        recording: String,
    ) -> Result<(), ClinicError> {
        let c = self.consultation_of_doctor(actor, consultation)?;
        if c.state != ConsultationState::InProgress {
            return Err(ClinicError::InvalidState(
                "only a running consultation can be recorded",
            ));
        }
        if c.active_recording().is_some() {
            return Err(ClinicError::InvalidState("a recording is already running"));
        }
        let asked: Vec<(UserId, Role)> = c
            .seats
            .iter()
            .filter(|s| s.admitted && s.user != actor.user)
            .map(|s| (s.user.clone(), s.role))
            .collect();
        let c = self.consultations.get_mut(consultation).expect("exists");
        self.dirty.consultations.insert(consultation.clone());
        c.recordings.push(RecordingState {
            id: recording.clone(),
            started_at: now,
            stopped_at: None,
            consents: vec![ConsentRecord {
                user: actor.user.clone(),
                role: actor.role,
                decision: ConsentDecision::Granted,
                at: now,
            }],
        });
        self.emit(ClinicEvent::RecordingStarted {
            consultation: consultation.clone(),
            recording: recording.clone(),
        });
        self.emit(ClinicEvent::ConsentDecided {
            consultation: consultation.clone(),
            recording,
            user: actor.user.clone(),
            decision: ConsentDecision::Granted,
        });
        for (user, role) in asked {
            self.ask_consent(now, consultation, &user, role);
        }
        Ok(())
    }

    /// Ask `user` (who just took an admitted seat) if a recording runs and they were not asked.
    fn ask_consent(
        &mut self,
        now: Millis,
        consultation: &ConsultationId,
        user: &UserId,
        role: Role,
    ) {
        let Some(c) = self.consultations.get_mut(consultation) else {
            return;
        };
        let Some(rec) = c.recordings.last_mut().filter(|r| r.stopped_at.is_none()) else {
            return;
        };
        if rec.consents.iter().any(|x| &x.user == user) {
            return;
        }
        rec.consents.push(ConsentRecord {
            user: user.clone(),
            role,
            decision: ConsentDecision::Pending,
            at: now,
        });
        self.dirty.consultations.insert(consultation.clone());
        let recording = rec.id.clone();
        self.emit(ClinicEvent::ConsentRequested {
            consultation: consultation.clone(),
            recording,
            user: user.clone(),
        });
    }

    /// A participant answers (or changes their answer: a refusal stops their recording).
    pub fn decide_consent(
        &mut self,
        now: Millis,
        actor: &Actor,
        consultation: &ConsultationId,
        granted: bool,
    ) -> Result<(), ClinicError> {
        let c = self
            .consultations
            .get_mut(consultation)
            .ok_or(ClinicError::NotFound("consultation"))?;
        let rec = c
            .recordings
            .last_mut()
            .filter(|r| r.stopped_at.is_none())
            .ok_or(ClinicError::InvalidState("no recording is running"))?;
        let entry = rec
            .consents
            .iter_mut()
            .find(|x| x.user == actor.user)
            .ok_or(ClinicError::Forbidden(
                "you were not asked for consent in this consultation",
            ))?;
        let decision = if granted {
            ConsentDecision::Granted
        } else {
            ConsentDecision::Refused
        };
        entry.decision = decision;
        entry.at = now;
        self.dirty.consultations.insert(consultation.clone());
        let recording = rec.id.clone();
        self.emit(ClinicEvent::ConsentDecided {
            consultation: consultation.clone(),
            recording,
            user: actor.user.clone(),
            decision,
        });
        Ok(())
    }

    /// The doctor stops the recording.
    pub fn stop_recording(
        &mut self,
        now: Millis,
        actor: &Actor,
        consultation: &ConsultationId,
    ) -> Result<(), ClinicError> {
        let c = self.consultation_of_doctor(actor, consultation)?;
        if c.active_recording().is_none() {
            return Err(ClinicError::InvalidState("no recording is running"));
        }
        self.stop_recording_at(now, consultation);
        Ok(())
    }

    fn stop_recording_at(&mut self, now: Millis, consultation: &ConsultationId) {
        let Some(c) = self.consultations.get_mut(consultation) else {
            return;
        };
        let Some(rec) = c.recordings.last_mut().filter(|r| r.stopped_at.is_none()) else {
            return;
        };
        rec.stopped_at = Some(now);
        self.dirty.consultations.insert(consultation.clone());
        let recording = rec.id.clone();
        self.emit(ClinicEvent::RecordingStopped {
            consultation: consultation.clone(),
            recording,
        });
    }

    /// Users whose media the running recording of `consultation` takes.
    pub fn recorded_users(&self, consultation: &ConsultationId) -> Vec<UserId> {
        self.consultations
            .get(consultation)
            .and_then(|c| c.active_recording())
            .map(|r| {
                r.consents
                    .iter()
                    .filter(|x| x.decision == ConsentDecision::Granted)
                    .map(|x| x.user.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    // ----- connectivity -----

    /// `user`'s connection dropped: keep their place and seats for the grace period.
    pub fn disconnected(&mut self, now: Millis, user: &UserId) {
        for (id, state) in self.clinics.iter_mut() {
            if let Some(e) = state.queue.get_mut(user) {
                e.disconnected_since.get_or_insert(now);
                self.dirty.clinics.insert(id.clone());
            }
        }
        for c in self.consultations.values_mut() {
            if c.state == ConsultationState::Ended {
                continue;
            }
            if let Some(s) = c.seats.iter_mut().find(|s| &s.user == user) {
                s.disconnected_since.get_or_insert(now);
                self.dirty.consultations.insert(c.id.clone());
            }
        }
    }

    /// `user`'s seat in `consultation` is taken again without a new `join_consultation` (its
    /// participant was resumed on a new socket): its grace period ends. True if it was running.
    pub fn rejoined(&mut self, user: &UserId, consultation: &ConsultationId) -> bool {
        let Some(c) = self.consultations.get_mut(consultation) else {
            return false;
        };
        let Some(seat) = c.seats.iter_mut().find(|s| &s.user == user) else {
            return false;
        };
        if seat.disconnected_since.take().is_none() {
            return false;
        }
        self.dirty.consultations.insert(consultation.clone());
        true
    }

    /// Consultations where `user` holds a seat (for reconnecting clients).
    pub fn seats_of(&self, user: &UserId) -> Vec<ConsultationId> {
        self.consultations
            .values()
            .filter(|c| c.state != ConsultationState::Ended && c.seat(user).is_some())
            .map(|c| c.id.clone())
            .collect()
    }

    /// When [`ClinicEngine::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let grace = self.settings.grace_ms;
        let invites = self.invitations.values().map(|i| i.expires_at);
        let queue = self
            .clinics
            .values()
            .filter_map(|s| s.queue.earliest_disconnect())
            .map(|t| t.plus(grace));
        let seats = self
            .consultations
            .values()
            .filter(|c| c.state != ConsultationState::Ended)
            .flat_map(|c| c.seats.iter())
            .filter_map(|s| s.disconnected_since)
            .map(|t| t.plus(grace));
        invites.chain(queue).chain(seats).min()
    }

    /// Expire invitations and grace periods due at `now`.
    pub fn handle_timeout(&mut self, now: Millis) {
        let expired: Vec<Invitation> = self
            .invitations
            .values()
            .filter(|i| i.expires_at <= now)
            .cloned()
            .collect();
        for inv in expired {
            self.drop_invitation(&inv.id);
            self.emit(ClinicEvent::InvitationExpired {
                consultation: inv.consultation.clone(),
                invitation: inv.id,
                patient: inv.patient,
            });
        }
        let cutoff = Millis(now.0.saturating_sub(self.settings.grace_ms));
        let mut gone_from_queue = Vec::new();
        for (id, state) in self.clinics.iter_mut() {
            for e in state.queue.expire_disconnected(cutoff) {
                self.dirty.clinics.insert(id.clone());
                gone_from_queue.push((id.clone(), e));
            }
        }
        for (clinic, e) in gone_from_queue {
            if let Some(inv) = &e.invited {
                self.drop_invitation(inv);
            }
            self.emit(ClinicEvent::LeftQueue {
                clinic,
                patient: e.patient,
                reason: LeftReason::GraceExpired,
            });
        }
        let mut gone_seats = Vec::new();
        for c in self
            .consultations
            .values_mut()
            .filter(|c| c.state != ConsultationState::Ended)
        {
            let (gone, kept): (Vec<Seat>, Vec<Seat>) = std::mem::take(&mut c.seats)
                .into_iter()
                .partition(|s| s.disconnected_since.is_some_and(|t| t <= cutoff));
            c.seats = kept;
            for s in gone {
                self.dirty.consultations.insert(c.id.clone());
                gone_seats.push((c.id.clone(), s.user));
            }
        }
        for (consultation, user) in gone_seats {
            self.emit(ClinicEvent::Left {
                consultation,
                user,
                reason: LeftReason::GraceExpired,
            });
        }
    }
}

#[cfg(test)]
mod tests;
