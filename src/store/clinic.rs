//! The clinic tables: writing a change set, restoring the live state, reading history.
//!
//! Each commit writes the rows one batch of operations touched
//! ([`ChangeSet`](huizhen_signaling::clinic::ChangeSet)), so its cost does not grow with the
//! history. A restart restores only what is live: every clinic (with its waiting room), the
//! consultations not ended, the outstanding invitations, and the appointments within the
//! history horizon or still in use. Everything else is read on demand by the admin API.
//!
//! The SQL is kept portable (`INSERT … ON CONFLICT … DO UPDATE`, plain `SELECT`s with
//! positional parameters, keyset paging) so that a PostgreSQL implementation of
//! [`super::ClinicStore`] can reuse the statements.

use std::collections::{BTreeMap, BTreeSet};

use huizhen_signaling::clinic::{
    Appointment, AppointmentId, ChangeSet, Clinic, ClinicId, ClinicRecord, Consultation,
    EngineSnapshot, Invitation, Millis, Seat, WaitingRoom,
};
use rusqlite::{params, Connection, OptionalExtension};

use super::{
    enum_from_db, enum_to_db, from_db, from_json, opt_from_db, opt_to_db, set_meta, to_db, to_json,
    StoreError, NEXT_ID_KEY,
};

// ----- writing -----

/// Write `changes` (inside the caller's transaction).
pub(super) fn write_changes(tx: &Connection, changes: &ChangeSet) -> Result<(), StoreError> {
    for record in &changes.clinics {
        upsert_clinic(tx, record)?;
    }
    for a in &changes.appointments {
        upsert_appointment(tx, a)?;
    }
    for id in &changes.cancelled_appointments {
        // Only an appointment nothing refers to is ever deleted (the engine checks; the
        // foreign keys would refuse the commit otherwise).
        tx.prepare_cached("DELETE FROM appointments WHERE id = ?1")?
            .execute([&id.0])?;
    }
    for (id, row) in &changes.consultations {
        match row {
            Some(c) => write_consultation(tx, c)?,
            None => {
                // A consultation that never started (its invitation went). Started ones are
                // the record of care and are never deleted, whatever a caller passes.
                let started: Option<Option<i64>> = tx
                    .prepare_cached("SELECT started_at_ms FROM consultations WHERE id = ?1")?
                    .query_row([&id.0], |r| r.get(0))
                    .optional()?;
                if let Some(None) = started {
                    tx.prepare_cached("DELETE FROM participants WHERE consultation = ?1")?
                        .execute([&id.0])?;
                    tx.prepare_cached("DELETE FROM consultations WHERE id = ?1")?
                        .execute([&id.0])?;
                }
            }
        }
    }
    for (id, row) in &changes.invitations {
        match row {
            Some(inv) => upsert_invitation(tx, inv)?,
            None => {
                tx.prepare_cached("DELETE FROM invitations WHERE id = ?1")?
                    .execute([&id.0])?;
            }
        }
    }
    set_meta(tx, NEXT_ID_KEY, &changes.next_id.to_string())?;
    Ok(())
}

fn upsert_clinic(tx: &Connection, record: &ClinicRecord) -> Result<(), StoreError> {
    let c = &record.clinic;
    tx.prepare_cached(
        "INSERT INTO clinics (id, doctor, name, slot_minutes, queue_json, active_consultation,
                              recent_lengths_json, slots_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (id) DO UPDATE SET
             doctor = excluded.doctor, name = excluded.name, slot_minutes = excluded.slot_minutes,
             queue_json = excluded.queue_json, active_consultation = excluded.active_consultation,
             recent_lengths_json = excluded.recent_lengths_json, slots_json = excluded.slots_json",
    )?
    .execute(params![
        c.id.0,
        c.doctor.0,
        c.name,
        c.slot_minutes,
        to_json(&record.queue)?,
        record.active.as_ref().map(|a| &a.0),
        to_json(&record.recent_lengths_ms)?,
        to_json(&c.slots)?,
    ])?;
    Ok(())
}

fn upsert_appointment(tx: &Connection, a: &Appointment) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO appointments (id, clinic, patient, slot_start_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET
             clinic = excluded.clinic, patient = excluded.patient,
             slot_start_ms = excluded.slot_start_ms",
    )?
    .execute(params![
        a.id.0,
        a.clinic.0,
        a.patient.0,
        to_db("slot_start", a.slot_start.0)?
    ])?;
    Ok(())
}

/// The consultation's row and exactly its seats.
fn write_consultation(tx: &Connection, c: &Consultation) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO consultations (id, clinic, appointment, room, state, started_at_ms,
                                    ended_at_ms, expert_links_json, recordings_json, invited_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (id) DO UPDATE SET
             clinic = excluded.clinic, appointment = excluded.appointment, room = excluded.room,
             state = excluded.state, started_at_ms = excluded.started_at_ms,
             ended_at_ms = excluded.ended_at_ms, expert_links_json = excluded.expert_links_json,
             recordings_json = excluded.recordings_json, invited_by = excluded.invited_by",
    )?
    .execute(params![
        c.id.0,
        c.clinic.0,
        c.appointment.0,
        c.room,
        enum_to_db(&c.state)?,
        opt_to_db("started_at", c.started_at)?,
        opt_to_db("ended_at", c.ended_at)?,
        to_json(&c.expert_links)?,
        to_json(&c.recordings)?,
        c.invited_by.as_ref().map(|u| &u.0),
    ])?;
    let stored: Vec<String> = tx
        .prepare_cached("SELECT user_id FROM participants WHERE consultation = ?1")?
        .query_map([&c.id.0], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for user in stored
        .iter()
        .filter(|u| c.seat(&u.as_str().into()).is_none())
    {
        tx.prepare_cached("DELETE FROM participants WHERE consultation = ?1 AND user_id = ?2")?
            .execute([&c.id.0, user])?;
    }
    for (order, seat) in c.seats.iter().enumerate() {
        upsert_participant(tx, &c.id.0, order, seat)?;
    }
    Ok(())
}

fn upsert_participant(
    tx: &Connection,
    consultation: &str,
    order: usize,
    seat: &Seat,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO participants (consultation, user_id, role, admitted, disconnected_since_ms,
                                   seat_order)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (consultation, user_id) DO UPDATE SET
             role = excluded.role, admitted = excluded.admitted,
             disconnected_since_ms = excluded.disconnected_since_ms,
             seat_order = excluded.seat_order",
    )?
    .execute(params![
        consultation,
        seat.user.0,
        seat.role.as_str(),
        seat.admitted,
        opt_to_db("disconnected_since", seat.disconnected_since)?,
        to_db("seat_order", order as u64)?,
    ])?;
    Ok(())
}

fn upsert_invitation(tx: &Connection, inv: &Invitation) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO invitations (id, consultation, patient, expires_at_ms)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET
             consultation = excluded.consultation, patient = excluded.patient,
             expires_at_ms = excluded.expires_at_ms",
    )?
    .execute(params![
        inv.id.0,
        inv.consultation.0,
        inv.patient.0,
        to_db("expires_at", inv.expires_at.0)?
    ])?;
    Ok(())
}

// ----- restoring -----

const APPOINTMENT_COLUMNS: &str = "id, clinic, patient, slot_start_ms";
const CONSULTATION_COLUMNS: &str =
    "id, clinic, appointment, room, state, started_at_ms, ended_at_ms,
     expert_links_json, recordings_json, invited_by";

/// The live state at `now`: see the module docs.
pub(super) fn load_live(
    conn: &Connection,
    now: Millis,
    horizon_ms: u64,
) -> Result<EngineSnapshot, StoreError> {
    let next_id = match super::get_meta(conn, NEXT_ID_KEY)? {
        Some(text) => text
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("meta {NEXT_ID_KEY} = {text:?}")))?,
        None => 1,
    };
    let clinics = load_clinics(conn)?;
    let consultations = query_consultations(
        conn,
        &format!(
            "SELECT {CONSULTATION_COLUMNS} FROM consultations WHERE state <> 'ended' ORDER BY id"
        ),
        [],
    )?;
    let invitations = load_invitations(conn)?;
    let cutoff = to_db("cutoff", now.0.saturating_sub(horizon_ms))?;
    let mut appointments: BTreeMap<String, Appointment> = query_appointments(
        conn,
        &format!("SELECT {APPOINTMENT_COLUMNS} FROM appointments WHERE slot_start_ms >= ?1"),
        [cutoff],
    )?
    .into_iter()
    .map(|a| (a.id.0.clone(), a))
    .collect();
    // Older appointments still in use: someone waits or sits for them.
    let in_use: BTreeSet<String> = clinics
        .iter()
        .flat_map(|r| {
            r.queue
                .ordered()
                .into_iter()
                .map(|e| e.appointment.0.clone())
        })
        .chain(consultations.iter().map(|c| c.appointment.0.clone()))
        .collect();
    for id in in_use {
        if !appointments.contains_key(&id) {
            if let Some(a) = appointment(conn, &AppointmentId(id.clone()))? {
                appointments.insert(id, a);
            }
        }
    }
    let mut ended = conn.prepare_cached(
        "SELECT 1 FROM consultations WHERE appointment = ?1 AND state = 'ended' LIMIT 1",
    )?;
    let mut ended_appointments = Vec::new();
    for id in appointments.keys() {
        if ended.exists([id])? {
            ended_appointments.push(AppointmentId(id.clone()));
        }
    }
    Ok(EngineSnapshot {
        clinics,
        appointments: appointments.into_values().collect(),
        consultations,
        invitations,
        next_id,
        ended_appointments,
    })
}

fn load_clinics(conn: &Connection) -> Result<Vec<ClinicRecord>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT id, doctor, name, slot_minutes, queue_json, active_consultation,
                recent_lengths_json, slots_json
         FROM clinics ORDER BY id",
    )?;
    type Row = (
        String,
        String,
        String,
        u32,
        String,
        Option<String>,
        String,
        String,
    );
    let rows: Vec<Row> = statement
        .query_map([], |r| Row::try_from(r))?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(
            |(id, doctor, name, slot_minutes, queue, active, lengths, slots)| {
                let queue: WaitingRoom = from_json(&format!("clinic {id} queue_json"), &queue)?;
                Ok(ClinicRecord {
                    queue,
                    recent_lengths_ms: from_json(
                        &format!("clinic {id} recent_lengths_json"),
                        &lengths,
                    )?,
                    active: active.map(|a| a.as_str().into()),
                    clinic: Clinic {
                        id: id.as_str().into(),
                        doctor: doctor.as_str().into(),
                        name,
                        slot_minutes,
                        slots: from_json(&format!("clinic {id} slots_json"), &slots)?,
                    },
                })
            },
        )
        .collect()
}

fn load_invitations(conn: &Connection) -> Result<Vec<Invitation>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT id, consultation, patient, expires_at_ms FROM invitations ORDER BY id",
    )?;
    let rows: Vec<(String, String, String, i64)> = statement
        .query_map([], |r| r.try_into())?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(id, consultation, patient, expires)| {
            Ok(Invitation {
                expires_at: Millis(from_db(&format!("invitation {id} expires_at_ms"), expires)?),
                id: id.as_str().into(),
                consultation: consultation.as_str().into(),
                patient: patient.as_str().into(),
            })
        })
        .collect()
}

fn query_appointments<P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
) -> Result<Vec<Appointment>, StoreError> {
    let mut statement = conn.prepare_cached(sql)?;
    let rows: Vec<(String, String, String, i64)> = statement
        .query_map(params, |r| r.try_into())?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(id, clinic, patient, slot)| {
            Ok(Appointment {
                slot_start: Millis(from_db(&format!("appointment {id} slot_start_ms"), slot)?),
                id: id.as_str().into(),
                clinic: clinic.as_str().into(),
                patient: patient.as_str().into(),
            })
        })
        .collect()
}

type ConsultationRow = (
    String,
    String,
    String,
    String,
    String,
    Option<i64>,
    Option<i64>,
    String,
    String,
    Option<String>,
);

fn query_consultations<P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
) -> Result<Vec<Consultation>, StoreError> {
    let mut statement = conn.prepare_cached(sql)?;
    let rows: Vec<ConsultationRow> = statement
        .query_map(params, |r| r.try_into())?
        .collect::<Result<_, _>>()?;
    let mut seats_of = conn.prepare_cached(
        "SELECT user_id, role, admitted, disconnected_since_ms
         FROM participants WHERE consultation = ?1 ORDER BY seat_order",
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, clinic, appointment, room, state, started, ended, links, recordings, invited_by) in
        rows
    {
        let seat_rows: Vec<(String, String, bool, Option<i64>)> = seats_of
            .query_map([&id], |r| r.try_into())?
            .collect::<Result<_, _>>()?;
        let mut seats = Vec::with_capacity(seat_rows.len());
        for (n, (user, role, admitted, disconnected)) in seat_rows.into_iter().enumerate() {
            // Errors are logged: they name the seat by position, never the user.
            let what = format!("seat {} of consultation {id}", n + 1);
            seats.push(Seat {
                role: enum_from_db(&format!("{what} role"), &role)?,
                disconnected_since: opt_from_db(
                    &format!("{what} disconnected_since_ms"),
                    disconnected,
                )?,
                user: user.as_str().into(),
                admitted,
            });
        }
        out.push(Consultation {
            state: enum_from_db(&format!("consultation {id} state"), &state)?,
            started_at: opt_from_db(&format!("consultation {id} started_at_ms"), started)?,
            ended_at: opt_from_db(&format!("consultation {id} ended_at_ms"), ended)?,
            expert_links: from_json(&format!("consultation {id} expert_links_json"), &links)?,
            recordings: from_json(&format!("consultation {id} recordings_json"), &recordings)?,
            invited_by: invited_by.map(|u| u.as_str().into()),
            seats,
            id: id.as_str().into(),
            clinic: clinic.as_str().into(),
            appointment: appointment.as_str().into(),
            room,
        });
    }
    Ok(out)
}

// ----- reads for the admin API -----

/// One appointment.
pub(super) fn appointment(
    conn: &Connection,
    id: &AppointmentId,
) -> Result<Option<Appointment>, StoreError> {
    Ok(query_appointments(
        conn,
        &format!("SELECT {APPOINTMENT_COLUMNS} FROM appointments WHERE id = ?1"),
        [&id.0],
    )?
    .pop())
}

/// Appointments ordered by id, after `after` (keyset paging), at most `limit`.
pub(super) fn appointments_page(
    conn: &Connection,
    clinic: Option<&ClinicId>,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Appointment>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let after = after.unwrap_or("");
    match clinic {
        Some(c) => query_appointments(
            conn,
            &format!("SELECT {APPOINTMENT_COLUMNS} FROM appointments WHERE clinic = ?1 AND id > ?2 ORDER BY id LIMIT ?3"),
            params![c.0, after, limit],
        ),
        None => query_appointments(
            conn,
            &format!("SELECT {APPOINTMENT_COLUMNS} FROM appointments WHERE id > ?1 ORDER BY id LIMIT ?2"),
            params![after, limit],
        ),
    }
}

/// One consultation with its seats.
pub(super) fn consultation(
    conn: &Connection,
    id: &str,
) -> Result<Option<Consultation>, StoreError> {
    Ok(query_consultations(
        conn,
        &format!("SELECT {CONSULTATION_COLUMNS} FROM consultations WHERE id = ?1"),
        [id],
    )?
    .pop())
}

/// A clinic's started consultations, newest first: those that started before `before`
/// (`(started_at_ms, id)`, keyset paging), at most `limit`.
pub(super) fn consultations_page(
    conn: &Connection,
    clinic: &ClinicId,
    before: Option<(u64, &str)>,
    limit: usize,
) -> Result<Vec<Consultation>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let (before_ms, before_id) = match before {
        Some((ms, id)) => (to_db("before", ms)?, id.to_owned()),
        None => (i64::MAX, String::new()),
    };
    query_consultations(
        conn,
        &format!(
            "SELECT {CONSULTATION_COLUMNS} FROM consultations
             WHERE clinic = ?1 AND started_at_ms IS NOT NULL
               AND (started_at_ms < ?2 OR (started_at_ms = ?2 AND id < ?3))
             ORDER BY started_at_ms DESC, id DESC LIMIT ?4"
        ),
        params![clinic.0, before_ms, before_id, limit],
    )
}
