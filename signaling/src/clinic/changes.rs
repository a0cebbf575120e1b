//! What the engine changed since the store last committed: the rows to write.
//!
//! ```text
//!  operation ──> ClinicEngine ──marks──> Dirty ids
//!                     │
//!  service: take_changes() ──> ChangeSet (current rows of the dirty ids) ──> one transaction
//!                     │                                                     with the audit rows
//!  service: evict_history(now) after the commit: ended consultations and past appointments
//!           leave memory (the store has them; reads go there)
//! ```
//!
//! A change costs the rows it touched, however long the history: the store never sees a
//! snapshot of the whole state. Deletions are explicit (a cancelled appointment, an invitation
//! that lapsed, a consultation that never started) so that something merely evicted from memory
//! is never mistaken for something removed.

use std::collections::BTreeSet;

use super::model::{
    Appointment, AppointmentId, ClinicId, Consultation, ConsultationId, Invitation, InvitationId,
};
use super::ClinicRecord;

/// Ids touched since the last [`super::ClinicEngine::take_changes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Dirty {
    pub(crate) clinics: BTreeSet<ClinicId>,
    pub(crate) appointments: BTreeSet<AppointmentId>,
    pub(crate) cancelled_appointments: BTreeSet<AppointmentId>,
    pub(crate) consultations: BTreeSet<ConsultationId>,
    pub(crate) invitations: BTreeSet<InvitationId>,
}

impl Dirty {
    pub(crate) fn is_empty(&self) -> bool {
        self.clinics.is_empty()
            && self.appointments.is_empty()
            && self.cancelled_appointments.is_empty()
            && self.consultations.is_empty()
            && self.invitations.is_empty()
    }
}

/// The rows one commit writes: for each changed entity its current record, or `None` where it
/// is gone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Clinics whose details, slots or waiting room changed.
    pub clinics: Vec<ClinicRecord>,
    /// Appointments booked or rescheduled.
    pub appointments: Vec<Appointment>,
    /// Appointments cancelled (deleted: they never had a consultation).
    pub cancelled_appointments: Vec<AppointmentId>,
    /// Consultations that changed; `None`: it never started and is dropped (its invitation
    /// lapsed, was declined or withdrawn). Started consultations are never deleted.
    pub consultations: Vec<(ConsultationId, Option<Consultation>)>,
    /// Invitations sent (`Some`) or gone (`None`).
    pub invitations: Vec<(InvitationId, Option<Invitation>)>,
    /// The id counter, so a restored engine never reuses an id.
    pub next_id: u64,
}

impl ChangeSet {
    /// Nothing to write but the counter.
    pub fn is_empty(&self) -> bool {
        self.clinics.is_empty()
            && self.appointments.is_empty()
            && self.cancelled_appointments.is_empty()
            && self.consultations.is_empty()
            && self.invitations.is_empty()
    }

    /// Rows in this change set (for metrics: rows per commit).
    pub fn rows(&self) -> usize {
        self.clinics.len()
            + self.appointments.len()
            + self.cancelled_appointments.len()
            + self.consultations.len()
            + self.invitations.len()
    }
}
