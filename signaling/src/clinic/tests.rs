//! Whole clinic sessions in virtual time.

use super::*;

const MIN: u64 = 60_000;
/// 09:00 on some day, in ms.
const NINE: u64 = 1_800_000_000_000;

struct World {
    engine: ClinicEngine,
    doctor: Actor,
    events: Vec<ClinicEvent>,
}

fn patient(name: &str) -> Actor {
    Actor::new(name, Role::Patient)
}

impl World {
    fn new() -> World {
        let mut engine = ClinicEngine::new(ClinicSettings::default());
        engine.upsert_clinic(Clinic {
            id: "cardio".into(),
            doctor: "dr-li".into(),
            name: "Cardiology follow-up".into(),
            slot_minutes: 30,
            slots: Vec::new(),
        });
        let mut doctor = Actor::new("dr-li", Role::Doctor);
        doctor.clinics.push("cardio".into());
        World {
            engine,
            doctor,
            events: Vec::new(),
        }
    }

    fn book(&mut self, patient: &str, slot: u64) -> AppointmentId {
        let id = AppointmentId(format!("appt-{patient}"));
        self.engine
            .add_appointment(Appointment {
                id: id.clone(),
                clinic: "cardio".into(),
                patient: patient.into(),
                slot_start: Millis(slot),
            })
            .unwrap();
        id
    }

    fn drain(&mut self) -> Vec<ClinicEvent> {
        let mut new = Vec::new();
        while let Some(e) = self.engine.poll_event() {
            new.push(e);
        }
        self.events.extend(new.clone());
        new
    }

    fn check_in(&mut self, now: u64, who: &str) -> PatientView {
        let appt = AppointmentId(format!("appt-{who}"));
        self.engine
            .check_in(Millis(now), &patient(who), &appt)
            .unwrap()
    }

    fn position(&self, now: u64, who: &str) -> Option<usize> {
        self.engine
            .patient_view(Millis(now), &who.into())
            .unwrap()
            .position
    }
}

#[test]
fn check_in_window_opens_thirty_minutes_before_the_slot() {
    let mut w = World::new();
    let appt = w.book("wang", NINE);
    let err = w
        .engine
        .check_in(Millis(NINE - 31 * MIN), &patient("wang"), &appt)
        .unwrap_err();
    assert_eq!(
        err,
        ClinicError::TooEarly {
            opens_at: Millis(NINE - 30 * MIN),
            minutes: 30
        }
    );
    assert!(err.to_string().contains("30 minutes"));
    let view = w.check_in(NINE - 30 * MIN, "wang");
    assert_eq!(view.position, Some(1));
    assert_eq!(view.doctor_status, DoctorStatus::Away);
}

#[test]
fn queue_is_ordered_by_slot_then_arrival_and_doctor_can_move_up() {
    let mut w = World::new();
    w.book("a", NINE + 10 * MIN);
    w.book("b", NINE);
    w.book("c", NINE);
    w.check_in(NINE - 20 * MIN, "a");
    w.check_in(NINE - 10 * MIN, "c");
    w.check_in(NINE - 5 * MIN, "b");
    let now = NINE - MIN;
    assert_eq!(w.position(now, "c"), Some(1));
    assert_eq!(w.position(now, "b"), Some(2));
    assert_eq!(w.position(now, "a"), Some(3));
    let doctor = w.doctor.clone();
    w.engine
        .move_up(&doctor, &"cardio".into(), &"a".into())
        .unwrap();
    assert_eq!(w.position(now, "a"), Some(1));
    assert_eq!(w.position(now, "c"), Some(2));
    let rows = w
        .engine
        .queue(Millis(now), &doctor, &"cardio".into())
        .unwrap();
    let order: Vec<_> = rows.iter().map(|r| r.patient.0.as_str()).collect();
    assert_eq!(order, ["a", "c", "b"]);
    assert_eq!(rows[1].waited_ms, 9 * MIN);
}

#[test]
fn invite_answer_end_and_wait_estimates() {
    let mut w = World::new();
    w.book("a", NINE);
    w.book("b", NINE);
    w.check_in(NINE - 10 * MIN, "a");
    w.check_in(NINE - 9 * MIN, "b");
    let doctor = w.doctor.clone();
    w.engine
        .set_doctor_presence(&doctor, &"cardio".into(), true, false)
        .unwrap();
    // Nobody measured yet: default 10 min per consultation.
    assert_eq!(
        w.engine
            .patient_view(Millis(NINE), &"b".into())
            .unwrap()
            .estimated_wait_ms,
        10 * MIN
    );
    let inv = w
        .engine
        .invite(Millis(NINE), &doctor, &"cardio".into(), None)
        .unwrap();
    assert_eq!(inv.patient, UserId::from("a"));
    let view = w.engine.patient_view(Millis(NINE), &"a".into()).unwrap();
    assert_eq!(view.ringing, Some(inv.id.clone()));
    assert_eq!(w.position(NINE, "b"), Some(1));
    let outcome = w
        .engine
        .answer(Millis(NINE + 5_000), &patient("a"), &inv.id)
        .unwrap();
    let JoinOutcome::Admitted { room, may_publish } = outcome else {
        panic!()
    };
    assert!(may_publish);
    let consultation = inv.consultation.clone();
    assert_eq!(
        w.engine
            .join(Millis(NINE + 6_000), &doctor, &consultation)
            .unwrap(),
        JoinOutcome::Admitted {
            room: room.clone(),
            may_publish: true
        }
    );
    assert_eq!(
        w.engine.clinic_doctor_status(&"cardio".into()),
        Some(DoctorStatus::InConsultation)
    );
    // 4 minutes into the call, b (next) expects the remaining 6.
    let t = NINE + 5_000 + 4 * MIN;
    assert_eq!(
        w.engine
            .patient_view(Millis(t), &"b".into())
            .unwrap()
            .estimated_wait_ms,
        6 * MIN
    );
    // Nobody else can be invited while the call runs.
    assert!(matches!(
        w.engine.invite(Millis(t), &doctor, &"cardio".into(), None),
        Err(ClinicError::InvalidState(_))
    ));
    w.engine
        .end(Millis(NINE + 5_000 + 8 * MIN), &doctor, &consultation)
        .unwrap();
    let events = w.drain();
    assert!(events.iter().any(|e| matches!(e, ClinicEvent::ConsultationEnded { duration_ms, .. } if *duration_ms == 8 * MIN)));
    let lefts = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                ClinicEvent::Left {
                    reason: LeftReason::Ended,
                    ..
                }
            )
        })
        .count();
    assert_eq!(lefts, 2, "patient and doctor leave the room");
    // The measured 8 minutes now drive the estimate.
    let now = NINE + 20 * MIN;
    assert_eq!(
        w.engine
            .patient_view(Millis(now), &"b".into())
            .unwrap()
            .estimated_wait_ms,
        0
    );
    assert_eq!(
        w.engine.clinic_doctor_status(&"cardio".into()),
        Some(DoctorStatus::Online)
    );
    assert!(
        w.engine.patient_view(Millis(now), &"a".into()).is_none(),
        "a left the queue"
    );
}

#[test]
fn unanswered_invitation_times_out_back_into_the_queue() {
    let mut w = World::new();
    w.book("a", NINE);
    w.book("b", NINE);
    w.check_in(NINE - 10 * MIN, "a");
    w.check_in(NINE - 9 * MIN, "b");
    let doctor = w.doctor.clone();
    let inv = w
        .engine
        .invite(Millis(NINE), &doctor, &"cardio".into(), None)
        .unwrap();
    assert_eq!(w.engine.poll_timeout(), Some(Millis(NINE + 60_000)));
    w.engine.handle_timeout(Millis(NINE + 59_999));
    assert!(w.engine.invitation(&inv.id).is_some());
    w.engine.handle_timeout(Millis(NINE + 60_000));
    assert!(w.engine.invitation(&inv.id).is_none());
    let events = w.drain();
    assert!(events
        .iter()
        .any(|e| matches!(e, ClinicEvent::InvitationExpired { patient, .. } if patient.0 == "a")));
    assert_eq!(
        w.position(NINE + 61_000, "a"),
        Some(1),
        "back at their old place"
    );
    assert!(matches!(
        w.engine
            .answer(Millis(NINE + 61_000), &patient("a"), &inv.id),
        Err(ClinicError::NotFound(_))
    ));
    // The doctor may now invite again.
    assert!(w
        .engine
        .invite(Millis(NINE + 62_000), &doctor, &"cardio".into(), None)
        .is_ok());
}

#[test]
fn decline_and_cancel_put_the_patient_back_and_tell_the_doctor() {
    let mut w = World::new();
    w.book("a", NINE);
    w.check_in(NINE - 10 * MIN, "a");
    let doctor = w.doctor.clone();
    let inv = w
        .engine
        .invite(Millis(NINE), &doctor, &"cardio".into(), None)
        .unwrap();
    w.engine.decline(&patient("a"), &inv.id).unwrap();
    assert!(w
        .drain()
        .iter()
        .any(|e| matches!(e, ClinicEvent::Declined { .. })));
    assert_eq!(w.position(NINE, "a"), Some(1));
    let inv = w
        .engine
        .invite(
            Millis(NINE + 1_000),
            &doctor,
            &"cardio".into(),
            Some(&"a".into()),
        )
        .unwrap();
    w.engine.cancel_invitation(&doctor, &inv.id).unwrap();
    assert!(w
        .drain()
        .iter()
        .any(|e| matches!(e, ClinicEvent::InvitationCancelled { .. })));
    assert_eq!(w.position(NINE + 2_000, "a"), Some(1));
    assert!(w.engine.consultation(&inv.consultation).is_none());
}

#[test]
fn reconnect_within_grace_keeps_place_and_seat_after_grace_loses_them() {
    let mut w = World::new();
    w.book("a", NINE);
    w.book("b", NINE);
    w.check_in(NINE - 10 * MIN, "a");
    w.check_in(NINE - 9 * MIN, "b");
    // a drops and is back after 100 s: same place.
    w.engine.disconnected(Millis(NINE), &"a".into());
    w.engine.handle_timeout(Millis(NINE + 100_000));
    let view = w.check_in(NINE + 100_000, "a");
    assert_eq!(view.position, Some(1));
    assert!(w
        .drain()
        .iter()
        .any(|e| matches!(e, ClinicEvent::Reconnected { .. })));
    // b drops for longer than 120 s: gone.
    w.engine.disconnected(Millis(NINE), &"b".into());
    assert_eq!(w.engine.poll_timeout(), Some(Millis(NINE + 120_000)));
    w.engine.handle_timeout(Millis(NINE + 120_000));
    assert!(w.drain().iter().any(|e| matches!(
        e,
        ClinicEvent::LeftQueue { reason: LeftReason::GraceExpired, patient, .. } if patient.0 == "b"
    )));
    assert!(w
        .engine
        .patient_view(Millis(NINE + 121_000), &"b".into())
        .is_none());
    // A later check-in puts b at the back.
    w.book("c", NINE);
    w.check_in(NINE + 121_000, "c");
    assert_eq!(w.check_in(NINE + 122_000, "b").position, Some(3));

    // During a call: a dropped seat survives the grace period's first 119 s.
    let doctor = w.doctor.clone();
    let inv = w
        .engine
        .invite(Millis(NINE + 200_000), &doctor, &"cardio".into(), None)
        .unwrap();
    w.engine
        .answer(Millis(NINE + 201_000), &patient("a"), &inv.id)
        .unwrap();
    w.engine.disconnected(Millis(NINE + 300_000), &"a".into());
    w.engine.handle_timeout(Millis(NINE + 419_000));
    assert_eq!(
        w.engine.seats_of(&"a".into()),
        vec![inv.consultation.clone()]
    );
    assert!(matches!(
        w.engine
            .join(Millis(NINE + 419_000), &patient("a"), &inv.consultation),
        Ok(JoinOutcome::Admitted { .. })
    ));
    w.engine.disconnected(Millis(NINE + 500_000), &"a".into());
    w.engine.handle_timeout(Millis(NINE + 620_000));
    assert!(w.engine.seats_of(&"a".into()).is_empty());
}

fn start_call(w: &mut World, who: &str) -> ConsultationId {
    w.book(who, NINE);
    w.check_in(NINE - MIN, who);
    let doctor = w.doctor.clone();
    let inv = w
        .engine
        .invite(Millis(NINE), &doctor, &"cardio".into(), None)
        .unwrap();
    w.engine
        .answer(Millis(NINE + 1_000), &patient(who), &inv.id)
        .unwrap();
    w.engine
        .join(Millis(NINE + 1_000), &doctor, &inv.consultation)
        .unwrap();
    inv.consultation
}

#[test]
fn companion_waits_until_the_doctor_admits() {
    let mut w = World::new();
    let c = start_call(&mut w, "grandma");
    let mut companion = Actor::new("grandson", Role::Companion);
    companion.appointment = Some("appt-grandma".into());
    assert_eq!(
        w.engine.join(Millis(NINE + 2_000), &companion, &c).unwrap(),
        JoinOutcome::WaitingForApproval
    );
    assert!(w
        .drain()
        .iter()
        .any(|e| matches!(e, ClinicEvent::CompanionWaiting { .. })));
    // The patient cannot admit; only the doctor.
    assert!(matches!(
        w.engine.admit(&patient("grandma"), &c, &"grandson".into()),
        Err(ClinicError::Forbidden(_))
    ));
    let doctor = w.doctor.clone();
    let room = w.engine.admit(&doctor, &c, &"grandson".into()).unwrap();
    assert!(matches!(
        w.engine.join(Millis(NINE + 3_000), &companion, &c).unwrap(),
        JoinOutcome::Admitted { room: r, .. } if r == room
    ));
    // A companion of someone else is refused.
    let mut stranger = Actor::new("stranger", Role::Companion);
    stranger.appointment = Some("appt-other".into());
    assert!(matches!(
        w.engine.join(Millis(NINE), &stranger, &c),
        Err(ClinicError::Forbidden(_))
    ));
}

#[test]
fn expert_link_works_once_and_dies_with_the_consultation() {
    let mut w = World::new();
    let c = start_call(&mut w, "a");
    let doctor = w.doctor.clone();
    w.engine
        .invite_expert(&doctor, &c, "link-1".into())
        .unwrap();
    let mut expert = Actor::new("prof-zhang", Role::Expert);
    expert.consultation = Some(c.clone());
    expert.token_id = Some("link-1".into());
    assert!(matches!(
        w.engine.join(Millis(NINE + 2_000), &expert, &c),
        Ok(JoinOutcome::Admitted { .. })
    ));
    // Reusing the same link by another person is refused.
    let mut other = expert.clone();
    other.user = "someone-else".into();
    assert!(matches!(
        w.engine.join(Millis(NINE + 2_000), &other, &c),
        Err(ClinicError::Forbidden(_))
    ));
    // A forged link id is refused.
    let mut forged = expert.clone();
    forged.token_id = Some("link-x".into());
    forged.user = "forger".into();
    assert!(matches!(
        w.engine.join(Millis(NINE), &forged, &c),
        Err(ClinicError::Forbidden(_))
    ));
    w.engine.end(Millis(NINE + 600_000), &doctor, &c).unwrap();
    assert_eq!(
        w.engine
            .join(Millis(NINE + 601_000), &expert, &c)
            .unwrap_err(),
        ClinicError::LinkExpired
    );
}

#[test]
fn grant_rules() {
    let mut w = World::new();
    w.book("a", NINE);
    w.book("b", NINE);
    w.check_in(NINE - MIN, "a");
    // A patient cannot check in to another patient's appointment, nor invite.
    assert!(matches!(
        w.engine
            .check_in(Millis(NINE), &patient("b"), &"appt-a".into()),
        Err(ClinicError::Forbidden(_))
    ));
    let mut cheeky = patient("b");
    cheeky.clinics.push("cardio".into());
    assert!(matches!(
        w.engine
            .invite(Millis(NINE), &cheeky, &"cardio".into(), None),
        Err(ClinicError::Forbidden(_))
    ));
    // A doctor of another clinic cannot invite here.
    let other_doctor = Actor::new("dr-other", Role::Doctor);
    assert!(matches!(
        w.engine
            .invite(Millis(NINE), &other_doctor, &"cardio".into(), None),
        Err(ClinicError::Forbidden(_))
    ));
    let doctor = w.doctor.clone();
    let inv = w
        .engine
        .invite(Millis(NINE), &doctor, &"cardio".into(), None)
        .unwrap();
    // b cannot answer a's invitation, nor join a's consultation.
    assert!(matches!(
        w.engine.answer(Millis(NINE), &patient("b"), &inv.id),
        Err(ClinicError::Forbidden(_))
    ));
    w.engine
        .answer(Millis(NINE), &patient("a"), &inv.id)
        .unwrap();
    assert!(matches!(
        w.engine
            .join(Millis(NINE), &patient("b"), &inv.consultation),
        Err(ClinicError::Forbidden(_))
    ));
    // An observer with a grant joins but may not publish.
    let mut observer = Actor::new("student", Role::Observer);
    observer.consultation = Some(inv.consultation.clone());
    assert!(matches!(
        w.engine.join(Millis(NINE), &observer, &inv.consultation),
        Ok(JoinOutcome::Admitted {
            may_publish: false,
            ..
        })
    ));
    // Only the doctor ends.
    assert!(matches!(
        w.engine.end(Millis(NINE), &patient("a"), &inv.consultation),
        Err(ClinicError::Forbidden(_))
    ));
}

#[test]
fn consultation_is_capped() {
    let mut w = World::new();
    w.engine.settings.max_participants = 3;
    let c = start_call(&mut w, "a");
    let doctor = w.doctor.clone();
    w.engine.invite_expert(&doctor, &c, "l1".into()).unwrap();
    w.engine.invite_expert(&doctor, &c, "l2".into()).unwrap();
    let expert = |name: &str, link: &str| {
        let mut e = Actor::new(name, Role::Expert);
        e.consultation = Some(c.clone());
        e.token_id = Some(link.into());
        e
    };
    assert!(w.engine.join(Millis(NINE), &expert("e1", "l1"), &c).is_ok());
    assert_eq!(
        w.engine
            .join(Millis(NINE), &expert("e2", "l2"), &c)
            .unwrap_err(),
        ClinicError::Full(3)
    );
}

#[test]
fn state_survives_a_serde_round_trip() {
    let mut w = World::new();
    let c = start_call(&mut w, "a");
    w.book("b", NINE);
    w.check_in(NINE, "b");
    let json = serde_json::to_string(&w.engine).unwrap();
    let restored: ClinicEngine = serde_json::from_str(&json).unwrap();
    assert_eq!(restored.consultation(&c), w.engine.consultation(&c));
    assert_eq!(
        restored.patient_view(Millis(NINE), &"b".into()),
        w.engine.patient_view(Millis(NINE), &"b".into())
    );
}

#[test]
fn snapshot_restore_keeps_places_for_the_grace_period() {
    let mut w = World::new();
    w.book("a", NINE);
    w.book("b", NINE);
    w.check_in(NINE - 10 * MIN, "a");
    w.check_in(NINE - 9 * MIN, "b");
    let doctor = w.doctor.clone();
    let first = w
        .engine
        .invite(Millis(NINE - MIN), &doctor, &"cardio".into(), None)
        .unwrap();
    w.engine.cancel_invitation(&doctor, &first.id).unwrap();
    let restart = NINE;
    let mut restored = ClinicEngine::from_snapshot(
        ClinicSettings::default(),
        w.engine.snapshot(),
        Millis(restart),
    );
    assert_eq!(
        restored.snapshot().appointments,
        w.engine.snapshot().appointments
    );
    // b reconnects in time and keeps place 2; a never comes back and is dropped after grace.
    let view = restored
        .check_in(Millis(restart + 60_000), &patient("b"), &"appt-b".into())
        .unwrap();
    assert_eq!(view.position, Some(2));
    restored.handle_timeout(Millis(restart + 120_000));
    assert_eq!(
        restored
            .patient_view(Millis(restart + 120_001), &"b".into())
            .unwrap()
            .position,
        Some(1)
    );
    assert!(restored
        .patient_view(Millis(restart + 120_001), &"a".into())
        .is_none());
    // Ids are never reused after a restart.
    let after = restored
        .invite(Millis(restart + 130_000), &doctor, &"cardio".into(), None)
        .unwrap();
    assert_ne!(after.id, first.id);
    assert_ne!(after.consultation, first.consultation);
}

#[test]
fn slots_bound_what_can_be_booked() {
    let mut w = World::new();
    let slots = w
        .engine
        .add_slots(&"cardio".into(), Millis(NINE), 4, 2)
        .unwrap();
    assert_eq!(slots.len(), 4);
    assert_eq!(slots[1].start, Millis(NINE + 30 * MIN));
    let book = |w: &mut World, id: &str, slot: u64| {
        w.engine.add_appointment(Appointment {
            id: id.into(),
            clinic: "cardio".into(),
            patient: id.into(),
            slot_start: Millis(slot),
        })
    };
    assert!(book(&mut w, "a", NINE).is_ok());
    assert!(book(&mut w, "b", NINE).is_ok());
    assert_eq!(
        book(&mut w, "c", NINE),
        Err(ClinicError::InvalidState("this slot is fully booked"))
    );
    assert_eq!(
        book(&mut w, "c", NINE + 7 * MIN),
        Err(ClinicError::NotFound("slot"))
    );
    assert!(book(&mut w, "c", NINE + 30 * MIN).is_ok());
    // Moving an appointment within its own slot does not count it twice.
    assert!(book(&mut w, "a", NINE).is_ok());
    let bookings = w.engine.slot_bookings(&"cardio".into());
    assert_eq!(
        bookings.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        [2, 1, 0, 0]
    );
    // Adding overlapping slots does not duplicate them.
    assert_eq!(
        w.engine
            .add_slots(&"cardio".into(), Millis(NINE), 2, 2)
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn recording_needs_each_participants_consent() {
    let mut w = World::new();
    let c = start_call(&mut w, "a");
    let doctor = w.doctor.clone();
    w.drain();
    // Only the doctor starts, and only a running consultation.
    assert!(matches!(
        w.engine
            .start_recording(Millis(NINE), &patient("a"), &c, "r1".into()),
        Err(ClinicError::Forbidden(_))
    ));
    w.engine
        .start_recording(Millis(NINE + 2_000), &doctor, &c, "r1".into())
        .unwrap();
    let events = w.drain();
    assert!(events
        .iter()
        .any(|e| matches!(e, ClinicEvent::ConsentRequested { user, .. } if user.0 == "a")));
    assert!(!events
        .iter()
        .any(|e| matches!(e, ClinicEvent::ConsentRequested { user, .. } if user.0 == "dr-li")));
    // Until a answers, only the doctor is recorded.
    assert_eq!(w.engine.recorded_users(&c), vec![UserId::from("dr-li")]);
    w.engine
        .decide_consent(Millis(NINE + 3_000), &patient("a"), &c, true)
        .unwrap();
    assert_eq!(w.engine.recorded_users(&c).len(), 2);
    // A late expert is asked on entry and refuses: never recorded.
    w.engine.invite_expert(&doctor, &c, "l1".into()).unwrap();
    let mut expert = Actor::new("prof", Role::Expert);
    expert.consultation = Some(c.clone());
    expert.token_id = Some("l1".into());
    w.engine.join(Millis(NINE + 4_000), &expert, &c).unwrap();
    assert!(w
        .drain()
        .iter()
        .any(|e| matches!(e, ClinicEvent::ConsentRequested { user, .. } if user.0 == "prof")));
    w.engine
        .decide_consent(Millis(NINE + 5_000), &expert, &c, false)
        .unwrap();
    assert!(!w.engine.recorded_users(&c).contains(&UserId::from("prof")));
    // Someone never asked cannot decide; asking again on a reconnect is not repeated.
    assert!(matches!(
        w.engine
            .decide_consent(Millis(NINE), &patient("stranger"), &c, true),
        Err(ClinicError::Forbidden(_))
    ));
    w.engine.join(Millis(NINE + 6_000), &expert, &c).unwrap();
    assert!(!w
        .drain()
        .iter()
        .any(|e| matches!(e, ClinicEvent::ConsentRequested { .. })));
    // a changes their mind: no longer recorded.
    w.engine
        .decide_consent(Millis(NINE + 7_000), &patient("a"), &c, false)
        .unwrap();
    assert_eq!(w.engine.recorded_users(&c), vec![UserId::from("dr-li")]);
    // The consent records stay with the recording, and the end stops it.
    w.engine.end(Millis(NINE + 60_000), &doctor, &c).unwrap();
    assert!(w
        .drain()
        .iter()
        .any(|e| matches!(e, ClinicEvent::RecordingStopped { .. })));
    let rec = &w.engine.consultation(&c).unwrap().recordings[0];
    let decisions: Vec<_> = rec
        .consents
        .iter()
        .map(|x| (x.user.0.as_str(), x.decision))
        .collect();
    assert_eq!(
        decisions,
        [
            ("dr-li", ConsentDecision::Granted),
            ("a", ConsentDecision::Refused),
            ("prof", ConsentDecision::Refused)
        ]
    );
    assert_eq!(rec.stopped_at, Some(Millis(NINE + 60_000)));
    assert!(w.engine.recorded_users(&c).is_empty());
}

/// Run one whole visit of `who` (booked at NINE): check in, invite, answer, end.
fn visit(w: &mut World, now: u64, who: &str) -> ConsultationId {
    w.book(who, NINE);
    w.check_in(now, who);
    let doctor = w.doctor.clone();
    let inv = w
        .engine
        .invite(Millis(now), &doctor, &"cardio".into(), Some(&who.into()))
        .unwrap();
    w.engine
        .answer(Millis(now + 1), &patient(who), &inv.id)
        .unwrap();
    w.engine
        .end(Millis(now + 2), &doctor, &inv.consultation)
        .unwrap();
    inv.consultation
}

#[test]
fn a_change_carries_only_the_rows_it_touched() {
    let mut w = World::new();
    for i in 0..50 {
        visit(&mut w, NINE - 20 * MIN, &format!("p{i}"));
    }
    let first = w.engine.take_changes();
    assert_eq!(first.appointments.len(), 50);
    assert_eq!(first.consultations.len(), 50);
    // 50 visits later, one doctor action writes one clinic row and nothing else.
    let doctor = w.doctor.clone();
    w.engine
        .move_up(&doctor, &"cardio".into(), &"x".into())
        .unwrap_err();
    assert!(
        w.engine.take_changes().is_empty(),
        "a refused action changes nothing"
    );
    w.book("late", NINE);
    w.check_in(NINE - 10 * MIN, "late");
    let changes = w.engine.take_changes();
    assert_eq!(changes.appointments.len(), 1);
    assert_eq!(changes.clinics.len(), 1);
    assert!(changes.consultations.is_empty() && changes.invitations.is_empty());
    // An invitation that lapses deletes its unstarted consultation and itself.
    let inv = w
        .engine
        .invite(Millis(NINE - 9 * MIN), &doctor, &"cardio".into(), None)
        .unwrap();
    w.engine.take_changes();
    w.engine.handle_timeout(inv.expires_at);
    let changes = w.engine.take_changes();
    assert_eq!(changes.invitations, vec![(inv.id.clone(), None)]);
    assert_eq!(
        changes.consultations,
        vec![(inv.consultation.clone(), None)]
    );
}

#[test]
fn history_leaves_memory_and_an_ended_visit_cannot_be_checked_in_again() {
    let mut w = World::new();
    let c = visit(&mut w, NINE - 20 * MIN, "old");
    w.engine.take_changes();
    assert_eq!(
        w.engine.evict_history(Millis(NINE)),
        1,
        "the ended consultation leaves"
    );
    assert!(w.engine.consultation(&c).is_none());
    let err = w
        .engine
        .check_in(Millis(NINE), &patient("old"), &"appt-old".into())
        .unwrap_err();
    assert_eq!(
        err,
        ClinicError::InvalidState("this appointment's consultation has ended")
    );
    // A day later the appointment is history too; waiting patients' appointments stay.
    w.book("waits", NINE);
    w.check_in(NINE - 5 * MIN, "waits");
    w.engine.take_changes();
    let next_day = NINE + 25 * 60 * MIN;
    assert_eq!(w.engine.evict_history(Millis(next_day)), 1);
    assert!(w.engine.appointment(&"appt-old".into()).is_none());
    assert!(w.engine.appointment(&"appt-waits".into()).is_some());
    assert_eq!(w.engine.live_counts(), (1, 0));
    // Booking into a slot that is already history is refused.
    let err = w
        .engine
        .book_appointment(
            Millis(next_day),
            Appointment {
                id: "late".into(),
                clinic: "cardio".into(),
                patient: "l".into(),
                slot_start: Millis(NINE),
            },
        )
        .unwrap_err();
    assert!(matches!(err, ClinicError::InvalidState(_)), "{err}");
}

#[test]
fn rebooking_an_id_with_other_content_is_a_conflict_and_moves_nothing() {
    let mut w = World::new();
    let appt = w.book("a", NINE);
    let same = w.engine.appointment(&appt).unwrap().clone();
    assert_eq!(
        w.engine.add_appointment(same.clone()),
        Ok(Booking::Unchanged)
    );
    let other = Appointment {
        patient: "intruder".into(),
        ..same.clone()
    };
    assert!(matches!(
        w.engine.add_appointment(other),
        Err(ClinicError::Conflict(_))
    ));
    assert_eq!(w.engine.appointment(&appt), Some(&same));
    // Reschedule and cancel work while idle and are refused while the patient waits or the
    // consultation runs.
    let moved = w
        .engine
        .reschedule_appointment(Millis(NINE - 60 * MIN), &appt, Millis(NINE + 30 * MIN))
        .unwrap();
    assert_eq!(moved.slot_start, Millis(NINE + 30 * MIN));
    w.check_in(NINE, "a");
    assert!(matches!(
        w.engine
            .reschedule_appointment(Millis(NINE), &appt, Millis(NINE)),
        Err(ClinicError::Conflict(_))
    ));
    assert!(matches!(
        w.engine.cancel_appointment(&appt),
        Err(ClinicError::Conflict(_))
    ));
    let doctor = w.doctor.clone();
    let inv = w
        .engine
        .invite(Millis(NINE), &doctor, &"cardio".into(), None)
        .unwrap();
    w.engine
        .answer(Millis(NINE), &patient("a"), &inv.id)
        .unwrap();
    assert!(matches!(
        w.engine.cancel_appointment(&appt),
        Err(ClinicError::Conflict(_))
    ));
    let started = w
        .drain()
        .into_iter()
        .find(|e| matches!(e, ClinicEvent::ConsultationStarted { .. }))
        .unwrap();
    assert!(
        matches!(&started, ClinicEvent::ConsultationStarted { doctor, .. } if doctor.0 == "dr-li"),
        "the call is started by the inviting doctor: {started:?}"
    );
    w.engine
        .end(Millis(NINE + 1), &doctor, &inv.consultation)
        .unwrap();
    assert!(
        matches!(
            w.engine.cancel_appointment(&appt),
            Err(ClinicError::Conflict(_))
        ),
        "part of the record now"
    );
    // An unused appointment can be cancelled: its row is deleted with the next commit.
    let b = w.book("b", NINE);
    w.engine.take_changes();
    w.engine.cancel_appointment(&b).unwrap();
    let changes = w.engine.take_changes();
    assert_eq!(changes.cancelled_appointments, vec![b]);
    assert!(changes.appointments.is_empty());
}
