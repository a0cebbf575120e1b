//! What the clinic's events mean for the people and parts concerned: the messages to each
//! socket, the SFU and recorder commands, the webhooks. Everything here only queues
//! [`Effect`]s; the service carries them out after the batch is committed, so nobody hears of
//! a change that is not on disk.

use std::collections::BTreeSet;

use huizhen_signaling::clinic::{
    Actor, ClinicEvent, ClinicId, ConsultationId, InvitationId, Millis, Role, UserId,
};
use huizhen_signaling::protocol::{QueueEntryInfo, ServerMessage};
use serde_json::json;

use super::{ringing, status_str, Effect, Service};
use crate::edge::MediaCommand;
use crate::recorder::task::RecorderCommand;
use crate::sfu::ParticipantId;

impl Service {
    pub(super) fn notify(
        &self,
        now: Millis,
        event: &ClinicEvent,
        touched: &mut BTreeSet<ClinicId>,
    ) {
        match event {
            ClinicEvent::CheckedIn { clinic, .. }
            | ClinicEvent::Reconnected { clinic, .. }
            | ClinicEvent::LeftQueue { clinic, .. }
            | ClinicEvent::MovedUp { clinic, .. }
            | ClinicEvent::DoctorStatus { clinic, .. } => {
                touched.insert(clinic.clone());
            }
            ClinicEvent::Invited {
                clinic,
                patient,
                invitation,
                consultation,
            } => {
                touched.insert(clinic.clone());
                if let Some(inv) = self.engine.invitation(invitation).cloned() {
                    self.send_to_user(patient, ringing(&inv));
                }
                self.invitation_status(clinic, invitation, consultation, patient, "sent");
            }
            ClinicEvent::Answered {
                invitation,
                consultation,
                patient,
            } => {
                if let Some(c) = self.engine.consultation(consultation).cloned() {
                    touched.insert(c.clinic.clone());
                    self.invitation_status(
                        &c.clinic,
                        invitation,
                        consultation,
                        patient,
                        "answered",
                    );
                    let ready = ServerMessage::ConsultationReady {
                        consultation: c.id.0.clone(),
                        room: c.room.clone(),
                    };
                    self.send_to_user(patient, ready.clone());
                    self.send_to_clinic_doctors(&c.clinic, ready);
                    let open = ServerMessage::ConsultationOpen {
                        consultation: c.id.0.clone(),
                    };
                    for s in self.sockets.iter().filter(|s| {
                        s.actor.role == Role::Companion
                            && s.actor.appointment.as_ref() == Some(&c.appointment)
                    }) {
                        self.effect(Effect::Send(s.events.clone(), s.session, open.clone()));
                    }
                }
            }
            ClinicEvent::Declined {
                invitation,
                consultation,
                patient,
            }
            | ClinicEvent::InvitationExpired {
                invitation,
                consultation,
                patient,
            }
            | ClinicEvent::InvitationCancelled {
                invitation,
                consultation,
                patient,
            } => {
                let status = match event {
                    ClinicEvent::Declined { .. } => "declined",
                    ClinicEvent::InvitationExpired { .. } => "expired",
                    _ => "cancelled",
                };
                if let Some(clinic) = self.engine.patient_view(now, patient).map(|v| v.clinic) {
                    touched.insert(clinic.clone());
                    self.invitation_status(&clinic, invitation, consultation, patient, status);
                }
            }
            ClinicEvent::ConsultationStarted { consultation, .. } => {
                self.webhook("consultation.started", now, consultation);
            }
            ClinicEvent::CompanionWaiting { consultation, user } => {
                if let Some(c) = self.engine.consultation(consultation).cloned() {
                    let display_name = self
                        .names
                        .get(user)
                        .cloned()
                        .unwrap_or_else(|| "Companion".into());
                    self.send_to_clinic_doctors(
                        &c.clinic,
                        ServerMessage::CompanionWaiting {
                            consultation: consultation.0.clone(),
                            user: user.0.clone(),
                            display_name,
                        },
                    );
                }
            }
            ClinicEvent::Admitted { consultation, user } => {
                if let Some(c) = self.engine.consultation(consultation) {
                    let ready = ServerMessage::ConsultationReady {
                        consultation: c.id.0.clone(),
                        room: c.room.clone(),
                    };
                    self.send_to_user(user, ready);
                }
            }
            ClinicEvent::Left {
                consultation, user, ..
            } => {
                let ended = self
                    .engine
                    .consultation(consultation)
                    .is_some_and(|c| c.ended_at.is_some());
                if ended {
                    self.send_to_user(
                        user,
                        ServerMessage::ConsultationEnded {
                            consultation: consultation.0.clone(),
                        },
                    );
                }
            }
            ClinicEvent::ConsultationEnded {
                consultation, room, ..
            } => {
                if let Some(c) = self.engine.consultation(consultation).cloned() {
                    touched.insert(c.clinic);
                }
                self.effect(Effect::Media(MediaCommand::CloseRoom {
                    room: room.clone(),
                }));
                self.webhook("consultation.ended", now, consultation);
            }
            ClinicEvent::Joined { .. } | ClinicEvent::ExpertInvited { .. } => {}
            ClinicEvent::RecordingStarted {
                consultation,
                recording,
            } => {
                if let Some(c) = self.engine.consultation(consultation) {
                    self.effect(Effect::Recorder(RecorderCommand::Start {
                        recording: recording.clone(),
                        consultation: consultation.0.clone(),
                        room: c.room.clone(),
                        started_at_ms: now.0,
                    }));
                }
                self.recording_status_to_all(consultation);
                self.apply_recording(consultation);
            }
            ClinicEvent::RecordingStopped {
                consultation,
                recording,
            } => {
                self.recording_status_to_all(consultation);
                self.apply_recording(consultation);
                self.stop_recorder(consultation, recording, now);
            }
            ClinicEvent::ConsentRequested {
                consultation,
                recording,
                user,
            } => {
                self.send_to_user(
                    user,
                    ServerMessage::ConsentRequest {
                        consultation: consultation.0.clone(),
                        recording: recording.clone(),
                    },
                );
                self.consent_status_to_doctors(consultation, recording, user, "pending");
            }
            ClinicEvent::ConsentDecided {
                consultation,
                recording,
                user,
                decision,
            } => {
                let granted = *decision == huizhen_signaling::clinic::ConsentDecision::Granted;
                self.send_to_user(
                    user,
                    ServerMessage::RecordingStatus {
                        consultation: consultation.0.clone(),
                        recording: recording.clone(),
                        active: true,
                        recorded: granted,
                    },
                );
                let label = if granted { "granted" } else { "refused" };
                self.consent_status_to_doctors(consultation, recording, user, label);
                self.apply_recording(consultation);
            }
        }
    }

    /// The consent decisions of a recording, as the manifest records them (pending ones are
    /// not consents), and when it stopped.
    fn consent_records(
        &self,
        consultation: &ConsultationId,
        recording: &str,
    ) -> Option<(
        Vec<crate::vault::ConsentRecord>,
        Vec<(String, String)>,
        Option<Millis>,
    )> {
        use huizhen_signaling::clinic::ConsentDecision as Decision;
        let c = self.engine.consultation(consultation)?;
        let rec = c.recordings.iter().find(|r| r.id == recording)?;
        let people = c
            .seats
            .iter()
            .map(|s| (s.user.0.clone(), s.role.as_str().to_owned()))
            .collect();
        let consents = rec
            .consents
            .iter()
            .filter_map(|x| {
                let decision = match x.decision {
                    Decision::Granted => crate::vault::ConsentDecision::Granted,
                    Decision::Refused => crate::vault::ConsentDecision::Refused,
                    Decision::Pending => return None,
                };
                Some(crate::vault::ConsentRecord {
                    user_id: x.user.0.clone(),
                    decision,
                    at_ms: x.at.0,
                })
            })
            .collect();
        Some((consents, people, rec.stopped_at))
    }

    /// Hand the recorder every consent decision and let it seal the manifest.
    pub(super) fn stop_recorder(
        &self,
        consultation: &ConsultationId,
        recording: &str,
        now: Millis,
    ) {
        let Some((consents, people, stopped_at)) = self.consent_records(consultation, recording)
        else {
            return;
        };
        self.effect(Effect::Recorder(RecorderCommand::Stop {
            recording: recording.to_owned(),
            ended_at_ms: stopped_at.unwrap_or(now).0,
            consents,
            people,
        }));
    }

    /// Tell the SFU, for every participant in the consultation's room, whether its media goes
    /// to the recorder (only those who consented to the running recording), and the recorder
    /// whose media it is.
    pub(super) fn apply_recording(&self, consultation: &ConsultationId) {
        let recorded = self.engine.recorded_users(consultation);
        let recording = self
            .engine
            .consultation(consultation)
            .and_then(|c| c.active_recording())
            .map(|r| r.id.clone());
        if let Some(id) = &recording {
            // Journaled with every segment, so a crash cannot separate media from its consent.
            if let Some((consents, people, _)) = self.consent_records(consultation, id) {
                self.effect(Effect::Recorder(RecorderCommand::Consents {
                    recording: id.clone(),
                    consents,
                    people,
                }));
            }
        }
        let sessions: Vec<(u64, ParticipantId)> = self
            .in_room
            .iter()
            .filter(|(_, (c, _))| c == consultation)
            .map(|(session, (_, p))| (*session, *p))
            .collect();
        for (session, participant) in sessions {
            let Some(socket) = self.sockets.iter().find(|s| s.session == session) else {
                continue;
            };
            let record = recorded.contains(&socket.actor.user);
            match (&recording, record) {
                (Some(recording), true) => {
                    self.effect(Effect::Recorder(RecorderCommand::Assign {
                        recording: recording.clone(),
                        participant,
                        user: socket.actor.user.0.clone(),
                        role: socket.actor.role.as_str().to_owned(),
                    }));
                }
                _ => {
                    self.effect(Effect::Recorder(RecorderCommand::Unassign { participant }));
                }
            }
            self.effect(Effect::Media(MediaCommand::SetRecorded {
                participant,
                recorded: record,
            }));
        }
    }

    pub(super) fn push_recording_view(&self, actor: &Actor, consultation: &ConsultationId) {
        use huizhen_signaling::clinic::ConsentDecision as Decision;
        let Some(c) = self.engine.consultation(consultation) else {
            return;
        };
        let Some(rec) = c.active_recording() else {
            return;
        };
        self.send_to_user(
            &actor.user,
            ServerMessage::RecordingStatus {
                consultation: consultation.0.clone(),
                recording: rec.id.clone(),
                active: true,
                recorded: rec.records(&actor.user),
            },
        );
        let mine = rec.consents.iter().find(|x| x.user == actor.user);
        if mine.is_some_and(|x| x.decision == Decision::Pending) {
            self.send_to_user(
                &actor.user,
                ServerMessage::ConsentRequest {
                    consultation: consultation.0.clone(),
                    recording: rec.id.clone(),
                },
            );
        }
        if actor.role == Role::Doctor {
            for x in &rec.consents {
                let decision = match x.decision {
                    Decision::Pending => "pending",
                    Decision::Granted => "granted",
                    Decision::Refused => "refused",
                };
                self.send_to_user(
                    &actor.user,
                    ServerMessage::ConsentStatus {
                        consultation: consultation.0.clone(),
                        recording: rec.id.clone(),
                        user: x.user.0.clone(),
                        display_name: self
                            .names
                            .get(&x.user)
                            .cloned()
                            .unwrap_or_else(|| x.user.0.clone()),
                        decision: decision.to_owned(),
                    },
                );
            }
        }
    }

    pub(super) fn recording_status_to_all(&self, consultation: &ConsultationId) {
        let Some(c) = self.engine.consultation(consultation) else {
            return;
        };
        let Some(rec) = c.recordings.last() else {
            return;
        };
        for seat in c.seats.iter().filter(|s| s.admitted) {
            self.send_to_user(
                &seat.user,
                ServerMessage::RecordingStatus {
                    consultation: consultation.0.clone(),
                    recording: rec.id.clone(),
                    active: rec.stopped_at.is_none(),
                    recorded: rec.records(&seat.user),
                },
            );
        }
    }

    fn consent_status_to_doctors(
        &self,
        consultation: &ConsultationId,
        recording: &str,
        user: &UserId,
        decision: &str,
    ) {
        let Some(c) = self.engine.consultation(consultation) else {
            return;
        };
        let display_name = self
            .names
            .get(user)
            .cloned()
            .unwrap_or_else(|| user.0.clone());
        self.send_to_clinic_doctors(
            &c.clinic,
            ServerMessage::ConsentStatus {
                consultation: consultation.0.clone(),
                recording: recording.to_owned(),
                user: user.0.clone(),
                display_name,
                decision: decision.to_owned(),
            },
        );
    }

    pub(super) fn webhook(
        &self,
        event_type: &'static str,
        now: Millis,
        consultation: &ConsultationId,
    ) {
        let Some(c) = self.engine.consultation(consultation) else {
            return;
        };
        let participants: Vec<_> = c
            .seats
            .iter()
            .map(|s| json!({ "user_id": s.user.0, "role": s.role.as_str() }))
            .collect();
        self.effect(Effect::Webhook(
            event_type,
            now.0,
            json!({
                "consultation": c.id.0,
                "clinic": c.clinic.0,
                "appointment": c.appointment.0,
                "started_at_ms": c.started_at.map(|t| t.0),
                "ended_at_ms": c.ended_at.map(|t| t.0),
                "participants": participants,
            }),
        ));
    }

    fn invitation_status(
        &self,
        clinic: &ClinicId,
        invitation: &InvitationId,
        consultation: &ConsultationId,
        patient: &UserId,
        status: &str,
    ) {
        self.send_to_clinic_doctors(
            clinic,
            ServerMessage::InvitationStatus {
                invitation: invitation.0.clone(),
                consultation: consultation.0.clone(),
                patient: patient.0.clone(),
                status: status.to_owned(),
            },
        );
    }

    /// Fresh queue to the clinic's doctors and fresh places to its waiting patients.
    pub(super) fn broadcast_clinic(&self, now: Millis, clinic: &ClinicId) {
        self.send_to_clinic_doctors(clinic, self.queue_message(now, clinic));
        for patient in self.engine.waiting_patients(clinic) {
            if let Some(view) = self.waiting_message(now, &patient) {
                self.send_to_user(&patient, view);
            }
        }
    }

    /// On connect: what this user should see right away.
    pub(super) fn push_views_to(&self, actor: &Actor, now: Millis) {
        match actor.role {
            Role::Doctor => {
                for clinic in &actor.clinics {
                    self.send_to_user(&actor.user, self.queue_message(now, clinic));
                }
            }
            Role::Patient => {
                if let Some(view) = self.waiting_message(now, &actor.user) {
                    self.send_to_user(&actor.user, view);
                }
            }
            _ => {}
        }
    }

    /// For a companion: the consultation under way for the appointment they accompany.
    pub(super) fn open_consultation_for(&self, actor: &Actor) -> Option<ServerMessage> {
        if actor.role != Role::Companion {
            return None;
        }
        let appointment = actor.appointment.as_ref()?;
        let c = self
            .engine
            .consultations_of(appointment)
            .find(|c| c.state == huizhen_signaling::clinic::ConsultationState::InProgress)?;
        Some(ServerMessage::ConsultationOpen {
            consultation: c.id.0.clone(),
        })
    }

    pub(super) fn queue_message(&self, now: Millis, clinic: &ClinicId) -> ServerMessage {
        let patients = self
            .engine
            .queue_rows(now, clinic)
            .into_iter()
            .map(|r| QueueEntryInfo {
                display_name: self
                    .names
                    .get(&r.patient)
                    .cloned()
                    .unwrap_or_else(|| "Patient".into()),
                patient: r.patient.0,
                appointment: r.appointment.0,
                slot_start_ms: r.slot_start.0,
                waited_ms: r.waited_ms,
                ringing: r.ringing,
                disconnected: r.disconnected,
                invitation: r.invitation.map(|i| i.0),
            })
            .collect();
        let status = self
            .engine
            .clinic_doctor_status(clinic)
            .map(status_str)
            .unwrap_or("away");
        ServerMessage::Queue {
            clinic: clinic.0.clone(),
            patients,
            doctor_status: status.to_owned(),
        }
    }

    pub(super) fn waiting_message(&self, now: Millis, patient: &UserId) -> Option<ServerMessage> {
        let view = self.engine.patient_view(now, patient)?;
        Some(ServerMessage::Waiting {
            clinic: view.clinic.0,
            position: view.position.map(|p| p as u32),
            estimated_wait_ms: view.estimated_wait_ms,
            doctor_status: status_str(view.doctor_status).to_owned(),
        })
    }

    pub(super) fn send_to_user(&self, user: &UserId, message: ServerMessage) {
        for s in self.sockets.iter().filter(|s| &s.actor.user == user) {
            self.effect(Effect::Send(s.events.clone(), s.session, message.clone()));
        }
    }

    pub(super) fn send_to_clinic_doctors(&self, clinic: &ClinicId, message: ServerMessage) {
        for s in self
            .sockets
            .iter()
            .filter(|s| s.actor.role == Role::Doctor && s.actor.has_clinic(clinic))
        {
            self.effect(Effect::Send(s.events.clone(), s.session, message.clone()));
        }
    }
}
