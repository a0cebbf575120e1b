//! The store and the audit trail against a real SQLite file: a clinic session survives a
//! restart, the schema migrates once and refuses the future, and tampering with the audit log
//! (through SQL with the guards dropped, or by editing the file's bytes) is named by `seq`.

use std::path::{Path, PathBuf};

use huizhen::audit::{self, AuditEntry, ChainError, ChainHead};
use huizhen::store::{migrations, Store, StoreError, LATEST_VERSION};
use huizhen_signaling::clinic::{
    Actor, Appointment, AppointmentId, Clinic, ClinicEngine, ClinicEvent, ClinicSettings,
    ConsultationId, ConsultationState, Millis, Role,
};
use serde_json::json;

const MIN: u64 = 60_000;
/// 09:00 on some day, in ms.
const NINE: u64 = 1_800_000_000_000;

/// A fresh directory for one test, under cargo's scratch space.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("store_audit")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn doctor(name: &str, clinic: &str) -> Actor {
    let mut a = Actor::new(name, Role::Doctor);
    a.clinics.push(clinic.into());
    a
}

fn patient(name: &str) -> Actor {
    Actor::new(name, Role::Patient)
}

fn appt(patient: &str) -> AppointmentId {
    AppointmentId(format!("appt-{patient}"))
}

/// A morning in two clinics, with `after` called after every operation (to save, audit, …).
/// Ends with: one ended consultation (so a measured length); one in progress with a doctor,
/// the patient, an admitted and a waiting (disconnected) companion, an expert who used one of
/// two links and an observer; patients waiting (one moved up, one disconnected); and an
/// outstanding invitation in the second clinic.
fn morning(mut after: impl FnMut(&mut ClinicEngine)) -> (ClinicEngine, ConsultationId) {
    let mut e = ClinicEngine::new(ClinicSettings::default());
    let (dr_li, dr_chen) = (doctor("dr-li", "cardio"), doctor("dr-chen", "derm"));
    for (id, dr, name) in [
        ("cardio", "dr-li", "Cardiology follow-up"),
        ("derm", "dr-chen", "Dermatology"),
    ] {
        e.upsert_clinic(Clinic {
            id: id.into(),
            doctor: dr.into(),
            name: name.into(),
            slot_minutes: 20,
            slots: Vec::new(),
        });
    }
    let bookings = [
        ("cardio", "wang", NINE),
        ("cardio", "li", NINE + 20 * MIN),
        ("cardio", "zhao", NINE + 40 * MIN),
        ("cardio", "sun", NINE + 60 * MIN),
        ("derm", "qian", NINE),
        ("derm", "zhou", NINE + 15 * MIN),
    ];
    for (clinic, who, slot) in bookings {
        e.add_appointment(Appointment {
            id: appt(who),
            clinic: clinic.into(),
            patient: who.into(),
            slot_start: Millis(slot),
        })
        .unwrap();
    }
    after(&mut e);
    e.set_doctor_presence(&dr_li, &"cardio".into(), true, false)
        .unwrap();
    e.set_doctor_presence(&dr_chen, &"derm".into(), true, false)
        .unwrap();
    after(&mut e);
    for (t, who) in [
        (NINE - 25 * MIN, "wang"),
        (NINE - 10 * MIN, "qian"),
        (NINE - 5 * MIN, "li"),
        (NINE, "zhou"),
    ] {
        e.check_in(Millis(t), &patient(who), &appt(who)).unwrap();
        after(&mut e);
    }

    // Wang's visit, start to end.
    let inv = e
        .invite(Millis(NINE), &dr_li, &"cardio".into(), None)
        .unwrap();
    after(&mut e);
    e.answer(Millis(NINE + 10_000), &patient("wang"), &inv.id)
        .unwrap();
    after(&mut e);
    e.join(Millis(NINE + 20_000), &dr_li, &inv.consultation)
        .unwrap();
    after(&mut e);
    e.check_in(Millis(NINE + 11 * MIN), &patient("zhao"), &appt("zhao"))
        .unwrap();
    after(&mut e);
    e.end(Millis(NINE + 12 * MIN), &dr_li, &inv.consultation)
        .unwrap();
    after(&mut e);

    // Li's visit, still running.
    let inv = e
        .invite(Millis(NINE + 13 * MIN), &dr_li, &"cardio".into(), None)
        .unwrap();
    assert_eq!(inv.patient.0, "li");
    let c = inv.consultation.clone();
    after(&mut e);
    e.answer(Millis(NINE + 13 * MIN + 5_000), &patient("li"), &inv.id)
        .unwrap();
    after(&mut e);
    e.join(Millis(NINE + 14 * MIN), &dr_li, &c).unwrap();
    after(&mut e);
    for companion in ["li-son", "li-daughter"] {
        let mut a = Actor::new(companion, Role::Companion);
        a.appointment = Some(appt("li"));
        e.join(Millis(NINE + 15 * MIN), &a, &c).unwrap();
        after(&mut e);
    }
    e.admit(&dr_li, &c, &"li-son".into()).unwrap();
    after(&mut e);
    for link in ["jti-prof", "jti-spare"] {
        e.invite_expert(&dr_li, &c, link.into()).unwrap();
        after(&mut e);
    }
    let mut expert = Actor::new("prof-zhang", Role::Expert);
    expert.consultation = Some(c.clone());
    expert.token_id = Some("jti-prof".into());
    e.join(Millis(NINE + 16 * MIN), &expert, &c).unwrap();
    after(&mut e);
    let mut observer = Actor::new("student-1", Role::Observer);
    observer.consultation = Some(c.clone());
    e.join(Millis(NINE + 17 * MIN), &observer, &c).unwrap();
    after(&mut e);

    // The waiting room moves on.
    e.check_in(Millis(NINE + 31 * MIN), &patient("sun"), &appt("sun"))
        .unwrap();
    after(&mut e);
    e.move_up(&dr_li, &"cardio".into(), &"sun".into()).unwrap();
    after(&mut e);
    e.disconnected(Millis(NINE + 32 * MIN), &"zhao".into());
    after(&mut e);
    e.disconnected(Millis(NINE + 33 * MIN), &"li-daughter".into());
    after(&mut e);
    e.invite(Millis(NINE + 32 * MIN), &dr_chen, &"derm".into(), None)
        .unwrap();
    after(&mut e);
    (e, c)
}

fn drain(engine: &mut ClinicEngine) -> Vec<ClinicEvent> {
    std::iter::from_fn(|| engine.poll_event()).collect()
}

#[test]
fn the_morning_is_what_it_claims_to_be() {
    let (engine, c) = morning(|_| {});
    let snap = engine.snapshot();
    let running = snap.consultations.iter().find(|x| x.id == c).unwrap();
    assert_eq!(running.state, ConsultationState::InProgress);
    assert_eq!(running.seats.len(), 6);
    assert!(running
        .seats
        .iter()
        .any(|s| !s.admitted && s.disconnected_since.is_some()));
    assert_eq!(
        running.expert_links[0],
        ("jti-prof".into(), Some("prof-zhang".into()))
    );
    assert!(snap
        .consultations
        .iter()
        .any(|x| x.state == ConsultationState::Ended));
    assert!(snap
        .consultations
        .iter()
        .any(|x| x.state == ConsultationState::Invited));
    assert_eq!(snap.invitations.len(), 1);
    assert!(snap.clinics.iter().all(|r| !r.queue.is_empty()));
}

/// Commit what the engine changed, let history leave memory, and check that the store's live
/// state is exactly the engine's.
fn commit_and_compare(store: &Store, engine: &mut ClinicEngine, now: Millis, what: &str) {
    store.commit(&engine.take_changes(), &[], &[]).unwrap();
    engine.evict_history(now);
    let live = store
        .load_live(now, ClinicSettings::default().history_horizon_ms)
        .unwrap();
    assert_eq!(live, engine.snapshot(), "{what}");
}

#[test]
fn every_step_of_a_session_round_trips() {
    let store = Store::open_in_memory().unwrap();
    let mut steps = 0;
    morning(|engine| {
        commit_and_compare(&store, engine, Millis(NINE), &format!("after step {steps}"));
        steps += 1;
    });
    assert!(steps > 20);
}

#[test]
fn a_restart_restores_the_clinics_and_the_session_goes_on() {
    let path = scratch("restart").join("nested").join("huizhen.db");
    let (mut engine, c) = morning(|_| {});
    let horizon = ClinicSettings::default().history_horizon_ms;
    {
        let store = Store::open(&path).unwrap();
        store.commit(&engine.take_changes(), &[], &[]).unwrap();
    }
    let ended: Vec<ConsultationId> = engine
        .snapshot()
        .consultations
        .iter()
        .filter(|x| x.state == ConsultationState::Ended)
        .map(|x| x.id.clone())
        .collect();
    assert_eq!(ended.len(), 1);
    engine.evict_history(Millis(NINE));
    let before = engine.snapshot();

    // Restart: a new process opens the file and restores only what is live.
    let store = Store::open(&path).unwrap();
    let loaded = store.load_live(Millis(NINE), horizon).unwrap();
    assert_eq!(loaded, before);
    assert!(loaded
        .consultations
        .iter()
        .all(|x| x.state != ConsultationState::Ended));
    let history = store.consultation(&ended[0].0).unwrap().unwrap();
    assert_eq!(
        history.state,
        ConsultationState::Ended,
        "history is read from the store"
    );
    let now = Millis(NINE + 40 * MIN);
    let mut restored = ClinicEngine::from_snapshot(ClinicSettings::default(), loaded, now);
    let mut expected = engine.consultation(&c).unwrap().clone();
    for seat in &mut expected.seats {
        seat.disconnected_since.get_or_insert(now);
    }
    assert_eq!(
        restored.consultation(&c),
        Some(&expected),
        "seats kept, grace period running"
    );
    assert!(
        restored.snapshot().next_id >= before.next_id,
        "ids are never reused"
    );

    // Timers run: the derm invitation lapses (its unstarted consultation is forgotten), and
    // those who were gone longer than the grace period lose their place and seat.
    restored.handle_timeout(now);
    let events = drain(&mut restored);
    assert!(events
        .iter()
        .any(|e| matches!(e, ClinicEvent::InvitationExpired { .. })));
    assert!(events
        .iter()
        .any(|e| matches!(e, ClinicEvent::Left { user, .. } if user.0 == "li-daughter")));
    commit_and_compare(&store, &mut restored, now, "after the timers");

    restored
        .end(Millis(NINE + 45 * MIN), &doctor("dr-li", "cardio"), &c)
        .unwrap();
    store.commit(&restored.take_changes(), &[], &[]).unwrap();
    restored.evict_history(Millis(NINE + 45 * MIN));
    drop(store);
    let store = Store::open(&path).unwrap();
    let after = store.load_live(Millis(NINE + 45 * MIN), horizon).unwrap();
    assert_eq!(after, restored.snapshot());
    // Ended consultations keep who took part: it is their history.
    let ended = store.consultation(&c.0).unwrap().unwrap();
    assert_eq!(
        ended.state,
        huizhen_signaling::clinic::ConsultationState::Ended
    );
    assert!(
        !ended.seats.is_empty(),
        "participants stay on record after the end"
    );
    assert_eq!(after.clinics[0].recent_lengths_ms.len(), 2);
    assert_eq!(
        ended.invited_by.as_ref().map(|u| u.0.as_str()),
        Some("dr-li"),
        "the inviting doctor is on record"
    );
}

#[test]
fn reopening_an_up_to_date_database_applies_no_migration() {
    let path = scratch("migrations").join("huizhen.db");
    Store::open(&path)
        .unwrap()
        .set_meta("dev_secret", "abc")
        .unwrap();
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), LATEST_VERSION);
    assert_eq!(
        store.get_meta("dev_secret").unwrap().as_deref(),
        Some("abc")
    );
    let mut raw = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(migrations::migrate(&mut raw).unwrap(), 0);
}

#[test]
fn a_database_from_a_newer_huizhen_is_refused() {
    let path = scratch("too_new").join("huizhen.db");
    drop(Store::open(&path).unwrap());
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.pragma_update(None, "user_version", LATEST_VERSION + 1)
        .unwrap();
    drop(raw);
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::TooNew { found, supported } if found == LATEST_VERSION + 1 && supported == LATEST_VERSION),
        "{err}"
    );
    assert!(err.to_string().contains("newer"), "{err}");
}

/// A hundred entries: the morning's real events, then refused tokens carrying a marker that
/// is unique in the file (`marker-0060` is in entry 60).
fn hundred_entries(store: &Store) -> Vec<AuditEntry> {
    let mut t = NINE;
    morning(|engine| {
        for event in drain(engine) {
            let (kind, actor, subject, details) = audit::audit_fields(&event);
            store
                .append_audit(t, kind, actor, subject, details)
                .unwrap();
            t += 1_000;
        }
    });
    let mut seq = store.audit_head().unwrap().seq;
    assert!(seq < 60, "the morning alone wrote {seq} entries");
    while seq < 100 {
        seq += 1;
        let details = json!({ "reason": "expired", "note": format!("marker-{seq:04}") });
        store
            .append_audit(t, "token_refused", None, None, details)
            .unwrap();
        t += 1_000;
    }
    let entries = store.audit_entries(1).unwrap();
    assert_eq!(entries.len(), 100);
    entries
}

/// What an insider with write access to the file could do: drop the guards, then run SQL.
fn tamper(path: &Path, sql: &str) {
    let raw = rusqlite::Connection::open(path).unwrap();
    raw.execute_batch("DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;")
        .unwrap();
    raw.execute_batch(sql).unwrap();
}

fn verify_file(path: &Path) -> Result<audit::VerifyReport, ChainError> {
    let store = Store::open(path).unwrap();
    audit::verify(&store.audit_entries(1).unwrap())
}

#[test]
fn a_hundred_entries_verify_and_match_the_head() {
    let store = Store::open_in_memory().unwrap();
    let entries = hundred_entries(&store);
    let report = audit::verify(&entries).unwrap();
    assert_eq!((report.entries, report.last_seq), (100, 100));
    assert_eq!(report.head(), store.audit_head().unwrap());
    assert!(entries
        .iter()
        .any(|e| e.kind == "checked_in" && e.actor.as_deref() == Some("wang")));

    // Page by page gives the same result.
    let mut head = ChainHead::genesis();
    loop {
        let page = store.audit_page(head.seq + 1, 7).unwrap();
        if page.is_empty() {
            break;
        }
        head = audit::verify_from(&head, &page).unwrap().head();
    }
    assert_eq!(head, report.head());
}

#[test]
fn the_guards_refuse_update_and_delete_from_any_client() {
    let path = scratch("guards").join("huizhen.db");
    let store = Store::open(&path).unwrap();
    hundred_entries(&store);
    let raw = rusqlite::Connection::open(&path).unwrap();
    for sql in [
        "UPDATE audit_log SET at_ms = 0 WHERE seq = 5",
        "DELETE FROM audit_log WHERE seq = 5",
    ] {
        let err = raw.execute(sql, []).unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert!(audit::verify(&store.audit_entries(1).unwrap()).is_ok());
}

#[test]
fn a_byte_flipped_in_the_file_is_named_by_seq() {
    let path = scratch("byte_flip").join("huizhen.db");
    drop(hundred_entries(&Store::open(&path).unwrap()));
    // The last connection closed: the WAL is checkpointed into the main file.
    let mut bytes = std::fs::read(&path).unwrap();
    let needle = b"marker-0060";
    let hits: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "the marker is stored once");
    bytes[hits[0]] ^= 0x01; // 'm' -> 'l': still valid JSON, different content.
    std::fs::write(&path, &bytes).unwrap();

    let err = verify_file(&path).unwrap_err();
    assert!(
        matches!(err, ChainError::HashMismatch { seq: 60, .. }),
        "{err}"
    );
    assert_eq!(err.seq(), 60);
}

#[test]
fn a_changed_timestamp_is_named_by_seq() {
    let path = scratch("at_ms").join("huizhen.db");
    hundred_entries(&Store::open(&path).unwrap());
    tamper(
        &path,
        "UPDATE audit_log SET at_ms = at_ms + 1 WHERE seq = 42",
    );
    let err = verify_file(&path).unwrap_err();
    assert!(
        matches!(err, ChainError::HashMismatch { seq: 42, .. }),
        "{err}"
    );
}

#[test]
fn a_deleted_entry_is_named_by_the_next_seq() {
    let path = scratch("delete").join("huizhen.db");
    hundred_entries(&Store::open(&path).unwrap());
    tamper(&path, "DELETE FROM audit_log WHERE seq = 50");
    assert_eq!(
        verify_file(&path),
        Err(ChainError::UnexpectedSeq {
            seq: 51,
            expected: 50
        })
    );
}

#[test]
fn reordering_is_detected() {
    // Swapping two rows' numbers in the database breaks the link at the first of them.
    let path = scratch("reorder").join("huizhen.db");
    hundred_entries(&Store::open(&path).unwrap());
    tamper(
        &path,
        "UPDATE audit_log SET seq = 1000 WHERE seq = 30;
         UPDATE audit_log SET seq = 30 WHERE seq = 31;
         UPDATE audit_log SET seq = 31 WHERE seq = 1000;",
    );
    let err = verify_file(&path).unwrap_err();
    assert!(
        matches!(err, ChainError::PrevHashMismatch { seq: 30, .. }),
        "{err}"
    );

    // Swapping two lines of an export is caught by the numbering.
    let store = Store::open_in_memory().unwrap();
    let mut entries = hundred_entries(&store);
    entries.swap(29, 30);
    assert_eq!(
        audit::verify(&entries),
        Err(ChainError::UnexpectedSeq {
            seq: 31,
            expected: 30
        })
    );
}

#[test]
fn the_jsonl_export_parses_line_by_line_and_verifies_again() {
    let store = Store::open_in_memory().unwrap();
    let entries = hundred_entries(&store);
    let mut out = Vec::new();
    audit::export_jsonl(&entries, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 100);
    for (line, entry) in lines.iter().zip(&entries) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for field in [
            "seq",
            "at_ms",
            "kind",
            "actor",
            "subject",
            "details",
            "prev_hash",
            "hash",
        ] {
            assert!(v.get(field).is_some(), "{field} missing in {line}");
        }
        assert_eq!(v["seq"], entry.seq);
        assert_eq!(v["hash"], entry.hash.as_str());
    }
    let back = audit::read_jsonl(text.as_bytes()).unwrap();
    assert_eq!(back, entries);
    let report = audit::verify(&back).unwrap();
    assert_eq!(report.head(), store.audit_head().unwrap());

    // An edited export fails too.
    let edited = text.replacen("\"checked_in\"", "\"checked_out\"", 1);
    let err = audit::verify(&audit::read_jsonl(edited.as_bytes()).unwrap()).unwrap_err();
    assert!(matches!(err, ChainError::HashMismatch { .. }), "{err}");
}
