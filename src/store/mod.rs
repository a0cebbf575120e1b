//! Durable state: the clinic engine's snapshot and the audit trail, in one embedded SQLite
//! database.
//!
//! The clinic engine is sans-IO and keeps everything in memory; the server saves
//! [`ClinicEngine::snapshot`](huizhen_signaling::clinic::ClinicEngine::snapshot) here after
//! changes and restores it with
//! [`ClinicEngine::from_snapshot`](huizhen_signaling::clinic::ClinicEngine::from_snapshot) at
//! start-up, and appends one audit entry per clinic event. Tables are normalized (one row per
//! clinic, appointment, consultation, participant and invitation) so that a DBA or an
//! inspector can answer questions with plain SQL; the schema is in [`migrations`].
//!
//! The database runs in WAL mode with `synchronous=FULL`: an audit entry that was reported
//! written survives a power cut. Calls take a mutex around one connection and are short (a
//! snapshot save is one transaction that only rewrites changed rows); async callers on tokio
//! should still wrap them in `spawn_blocking`, since each commit waits for an fsync.

pub mod migrations;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use huizhen_signaling::clinic::{
    Appointment, ClinicRecord, Consultation, EngineSnapshot, Invitation, Millis, Seat,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::audit::{AuditEntry, ChainError, ChainHead};

pub use migrations::LATEST_VERSION;

/// How long a call waits for another process holding the write lock (a backup, an inspector's
/// `sqlite3` shell) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The `meta` key holding the engine's id counter.
pub const NEXT_ID_KEY: &str = "next_id";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database's directory could not be created.
    #[error("creating the database directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database file could not be opened.
    #[error("opening the database {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// The database was written by a newer huizhen; reading it could misinterpret it.
    #[error(
        "the database has schema version {found}, newer than the {supported} this huizhen \
         supports: run a newer huizhen or restore a backup"
    )]
    TooNew {
        /// Version in the file.
        found: u32,
        /// Newest version this build knows.
        supported: u32,
    },
    /// A schema migration failed (and was rolled back).
    #[error("schema migration {version} failed: {source}")]
    Migration {
        /// The migration's version.
        version: u32,
        /// Why.
        source: rusqlite::Error,
    },
    /// SQLite refused an operation (I/O error, disk full, locked, constraint).
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Stored data cannot be decoded (edited by hand, or written by a buggy version).
    #[error("corrupt data in the database: {0}")]
    Corrupt(String),
    /// A value does not fit SQLite's signed 64-bit integers.
    #[error("{field} = {value} is too large to store")]
    TooLarge {
        /// Which value.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// An audit entry could not be chained (a malformed stored head, or non-integer numbers in
    /// its details).
    #[error("audit: {0}")]
    Audit(#[from] ChainError),
}

/// The database handle. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Open (or create) the database at `path`, creating its directory, and migrate it to the
    /// current schema.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        Store::init(conn)
    }

    /// A private, empty database in memory (tests, `--ephemeral` runs).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Store::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Store, StoreError> {
        configure(&conn)?;
        migrations::migrate(&mut conn)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The connection. A panic while it was held leaves no half-done work (an open
    /// transaction is rolled back when dropped), so a poisoned lock is safe to take.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The database's schema version.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        migrations::schema_version(&self.conn())
    }

    // ----- meta -----

    /// A value from the `meta` table (e.g. a generated development secret). [`NEXT_ID_KEY`] is
    /// the store's own.
    pub fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        get_meta(&self.conn(), key)
    }

    /// Set a value in the `meta` table.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        set_meta(&self.conn(), key, value)
    }

    // ----- clinic snapshot -----

    /// Make the clinic tables equal to `snap`, in one transaction.
    ///
    /// Rows are upserted, and rewritten only if they changed. Participants and invitations
    /// absent from `snap` are deleted. Appointments, clinics and started consultations are
    /// never deleted: they are the record of care. A consultation that never started (its
    /// invitation was declined, expired or withdrawn) is deleted with it, because the engine
    /// forgets it and keeping it would bring back a phantom "invited" consultation on restore;
    /// the audit trail keeps its history.
    pub fn save_snapshot(&self, snap: &EngineSnapshot) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for record in &snap.clinics {
            upsert_clinic(&tx, record)?;
        }
        for appointment in &snap.appointments {
            upsert_appointment(&tx, appointment)?;
        }
        save_consultations(&tx, &snap.consultations)?;
        save_invitations(&tx, &snap.invitations)?;
        set_meta(&tx, NEXT_ID_KEY, &snap.next_id.to_string())?;
        tx.commit()?;
        Ok(())
    }

    /// Rebuild the snapshot last saved (an empty one, `next_id` 1, for a new database), in the
    /// order [`ClinicEngine::snapshot`](huizhen_signaling::clinic::ClinicEngine::snapshot)
    /// produces (by id; seats in arrival order).
    pub fn load_snapshot(&self) -> Result<EngineSnapshot, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let next_id = match get_meta(&tx, NEXT_ID_KEY)? {
            Some(text) => text
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("meta {NEXT_ID_KEY} = {text:?}")))?,
            None => 1,
        };
        let snap = EngineSnapshot {
            clinics: load_clinics(&tx)?,
            appointments: load_appointments(&tx)?,
            consultations: load_consultations(&tx)?,
            invitations: load_invitations(&tx)?,
            next_id,
        };
        tx.commit()?;
        Ok(snap)
    }

    // ----- audit trail -----

    /// Append an entry to the audit trail, chained to the current last entry, and return it.
    /// There is deliberately no way to change or remove entries.
    pub fn append_audit(
        &self,
        at_ms: u64,
        kind: &str,
        actor: Option<String>,
        subject: Option<String>,
        details: Value,
    ) -> Result<AuditEntry, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let head = audit_head(&tx)?;
        let entry = AuditEntry::seal(&head, at_ms, kind, actor, subject, details)?;
        insert_audit(&tx, &entry)?;
        tx.commit()?;
        Ok(entry)
    }

    /// The last entry's `seq` and `hash` (the genesis head for an empty trail).
    pub fn audit_head(&self) -> Result<ChainHead, StoreError> {
        audit_head(&self.conn())
    }

    /// Every entry from `from_seq` on, in order. For long trails prefer [`Store::audit_page`].
    pub fn audit_entries(&self, from_seq: u64) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_page(from_seq, usize::MAX)
    }

    /// At most `limit` entries from `from_seq` on, in order: page through a long trail (verify
    /// each page with [`crate::audit::verify_from`], passing the previous page's head).
    pub fn audit_page(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, at_ms, kind, actor, subject, details, prev_hash, hash
             FROM audit_log WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
        )?;
        let from = i64::try_from(from_seq).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![from, limit], audit_row)?;
        let mut entries = Vec::new();
        for row in rows {
            entries.push(row?.into_entry()?);
        }
        Ok(entries)
    }
}

/// Per-connection settings (not stored in the file, so set on every open).
fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
        tracing::warn!(journal_mode = %mode, "the database could not switch to WAL mode");
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(())
}

// ----- value conversions -----

fn to_db(field: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::TooLarge { field, value })
}

fn opt_to_db(field: &'static str, value: Option<Millis>) -> Result<Option<i64>, StoreError> {
    value.map(|m| to_db(field, m.0)).transpose()
}

fn from_db(what: &str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} = {value}")))
}

fn opt_from_db(what: &str, value: Option<i64>) -> Result<Option<Millis>, StoreError> {
    value.map(|v| from_db(what, v).map(Millis)).transpose()
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("encoding JSON: {e}")))
}

fn from_json<T: DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// An enum's wire name (`in_progress`, `companion`), so the tables read like the API.
fn enum_to_db<T: Serialize>(value: &T) -> Result<String, StoreError> {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => Ok(s),
        other => Err(StoreError::Corrupt(format!("not a unit enum: {other:?}"))),
    }
}

fn enum_from_db<T: DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_value(Value::String(text.to_owned()))
        .map_err(|_| StoreError::Corrupt(format!("{what} = {text:?}")))
}

// ----- meta -----

fn get_meta(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    let value = conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |row| row.get(0))
        .optional()?;
    Ok(value)
}

fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE value IS NOT excluded.value",
    )?
    .execute([key, value])?;
    Ok(())
}

// ----- saving -----

fn upsert_clinic(tx: &Transaction<'_>, record: &ClinicRecord) -> Result<(), StoreError> {
    let c = &record.clinic;
    tx.prepare_cached(
        "INSERT INTO clinics (id, doctor, name, slot_minutes, queue_json, active_consultation,
                              recent_lengths_json, slots_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (id) DO UPDATE SET
             doctor = excluded.doctor, name = excluded.name, slot_minutes = excluded.slot_minutes,
             queue_json = excluded.queue_json, active_consultation = excluded.active_consultation,
             recent_lengths_json = excluded.recent_lengths_json, slots_json = excluded.slots_json
         WHERE (doctor, name, slot_minutes, queue_json, active_consultation, recent_lengths_json,
                slots_json)
               IS NOT (excluded.doctor, excluded.name, excluded.slot_minutes, excluded.queue_json,
                       excluded.active_consultation, excluded.recent_lengths_json,
                       excluded.slots_json)",
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

fn upsert_appointment(tx: &Transaction<'_>, a: &Appointment) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO appointments (id, clinic, patient, slot_start_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET
             clinic = excluded.clinic, patient = excluded.patient,
             slot_start_ms = excluded.slot_start_ms
         WHERE (clinic, patient, slot_start_ms)
               IS NOT (excluded.clinic, excluded.patient, excluded.slot_start_ms)",
    )?
    .execute(params![
        a.id.0,
        a.clinic.0,
        a.patient.0,
        to_db("slot_start", a.slot_start.0)?
    ])?;
    Ok(())
}

fn save_consultations(
    tx: &Transaction<'_>,
    consultations: &[Consultation],
) -> Result<(), StoreError> {
    let mut present = HashSet::new();
    let mut seated = HashSet::new();
    for c in consultations {
        upsert_consultation(tx, c)?;
        present.insert(c.id.0.as_str());
        for (order, seat) in c.seats.iter().enumerate() {
            upsert_participant(tx, &c.id.0, order, seat)?;
            seated.insert((c.id.0.as_str(), seat.user.0.as_str()));
        }
    }
    delete_absent_participants(tx, &seated)?;
    delete_unstarted_consultations(tx, &present)
}

fn upsert_consultation(tx: &Transaction<'_>, c: &Consultation) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO consultations (id, clinic, appointment, room, state, started_at_ms,
                                    ended_at_ms, expert_links_json, recordings_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (id) DO UPDATE SET
             clinic = excluded.clinic, appointment = excluded.appointment, room = excluded.room,
             state = excluded.state, started_at_ms = excluded.started_at_ms,
             ended_at_ms = excluded.ended_at_ms, expert_links_json = excluded.expert_links_json,
             recordings_json = excluded.recordings_json
         WHERE (clinic, appointment, room, state, started_at_ms, ended_at_ms, expert_links_json,
                recordings_json)
               IS NOT (excluded.clinic, excluded.appointment, excluded.room, excluded.state,
                       excluded.started_at_ms, excluded.ended_at_ms, excluded.expert_links_json,
                       excluded.recordings_json)",
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
    ])?;
    Ok(())
}

fn upsert_participant(
    tx: &Transaction<'_>,
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
             seat_order = excluded.seat_order
         WHERE (role, admitted, disconnected_since_ms, seat_order)
               IS NOT (excluded.role, excluded.admitted, excluded.disconnected_since_ms,
                       excluded.seat_order)",
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

fn delete_absent_participants(
    tx: &Transaction<'_>,
    seated: &HashSet<(&str, &str)>,
) -> Result<(), StoreError> {
    let stored: Vec<(String, String)> = tx
        .prepare_cached("SELECT consultation, user_id FROM participants")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut delete =
        tx.prepare_cached("DELETE FROM participants WHERE consultation = ?1 AND user_id = ?2")?;
    for (consultation, user) in stored {
        if !seated.contains(&(consultation.as_str(), user.as_str())) {
            delete.execute([consultation, user])?;
        }
    }
    Ok(())
}

/// See [`Store::save_snapshot`]: only consultations that never started are ever deleted.
fn delete_unstarted_consultations(
    tx: &Transaction<'_>,
    present: &HashSet<&str>,
) -> Result<(), StoreError> {
    let unstarted: Vec<String> = tx
        .prepare_cached(
            "SELECT id FROM consultations
             WHERE state IN ('waiting', 'invited') AND started_at_ms IS NULL",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    // Their seats (a doctor may sit in an unanswered call) went with the absent participants.
    let mut delete = tx.prepare_cached("DELETE FROM consultations WHERE id = ?1")?;
    for id in unstarted.iter().filter(|id| !present.contains(id.as_str())) {
        delete.execute([id])?;
    }
    Ok(())
}

fn save_invitations(tx: &Transaction<'_>, invitations: &[Invitation]) -> Result<(), StoreError> {
    let mut present = HashSet::new();
    for inv in invitations {
        tx.prepare_cached(
            "INSERT INTO invitations (id, consultation, patient, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET
                 consultation = excluded.consultation, patient = excluded.patient,
                 expires_at_ms = excluded.expires_at_ms
             WHERE (consultation, patient, expires_at_ms)
                   IS NOT (excluded.consultation, excluded.patient, excluded.expires_at_ms)",
        )?
        .execute(params![
            inv.id.0,
            inv.consultation.0,
            inv.patient.0,
            to_db("expires_at", inv.expires_at.0)?
        ])?;
        present.insert(inv.id.0.as_str());
    }
    let stored: Vec<String> = tx
        .prepare_cached("SELECT id FROM invitations")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut delete = tx.prepare_cached("DELETE FROM invitations WHERE id = ?1")?;
    for id in stored.iter().filter(|id| !present.contains(id.as_str())) {
        delete.execute([id])?;
    }
    Ok(())
}

// ----- loading -----

/// Every row of the parameterless query `sql`, each as a tuple of its columns.
fn select_all<T>(tx: &Transaction<'_>, sql: &str) -> Result<Vec<T>, StoreError>
where
    T: for<'a> TryFrom<&'a rusqlite::Row<'a>, Error = rusqlite::Error>,
{
    let mut statement = tx.prepare(sql)?;
    let rows = statement.query_map([], |r| T::try_from(r))?.collect::<Result<_, _>>()?;
    Ok(rows)
}

fn load_clinics(tx: &Transaction<'_>) -> Result<Vec<ClinicRecord>, StoreError> {
    type Row = (String, String, String, u32, String, Option<String>, String, String);
    let rows: Vec<Row> = select_all(
        tx,
        "SELECT id, doctor, name, slot_minutes, queue_json, active_consultation,
                recent_lengths_json, slots_json
         FROM clinics ORDER BY id",
    )?;
    rows.into_iter()
        .map(|(id, doctor, name, slot_minutes, queue, active, lengths, slots)| {
            Ok(ClinicRecord {
                queue: from_json(&format!("clinic {id} queue_json"), &queue)?,
                recent_lengths_ms: from_json(
                    &format!("clinic {id} recent_lengths_json"),
                    &lengths,
                )?,
                active: active.map(|a| a.as_str().into()),
                clinic: huizhen_signaling::clinic::Clinic {
                    id: id.as_str().into(),
                    doctor: doctor.as_str().into(),
                    name,
                    slot_minutes,
                    slots: from_json(&format!("clinic {id} slots_json"), &slots)?,
                },
            })
        })
        .collect()
}

fn load_appointments(tx: &Transaction<'_>) -> Result<Vec<Appointment>, StoreError> {
    let rows: Vec<(String, String, String, i64)> = select_all(
        tx,
        "SELECT id, clinic, patient, slot_start_ms FROM appointments ORDER BY id",
    )?;
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

fn load_consultations(tx: &Transaction<'_>) -> Result<Vec<Consultation>, StoreError> {
    type Row = (
        String,
        String,
        String,
        String,
        String,
        Option<i64>,
        Option<i64>,
        String,
        String,
    );
    let rows: Vec<Row> = select_all(
        tx,
        "SELECT id, clinic, appointment, room, state, started_at_ms, ended_at_ms,
                expert_links_json, recordings_json
         FROM consultations ORDER BY id",
    )?;
    let mut seats = load_seats(tx)?;
    rows.into_iter()
        .map(
            |(id, clinic, appointment, room, state, started, ended, links, recordings)| {
                Ok(Consultation {
                    state: enum_from_db(&format!("consultation {id} state"), &state)?,
                    started_at: opt_from_db(&format!("consultation {id} started_at_ms"), started)?,
                    ended_at: opt_from_db(&format!("consultation {id} ended_at_ms"), ended)?,
                    expert_links: from_json(
                        &format!("consultation {id} expert_links_json"),
                        &links,
                    )?,
                    recordings: from_json(
                        &format!("consultation {id} recordings_json"),
                        &recordings,
                    )?,
                    seats: seats.remove(&id).unwrap_or_default(),
                    id: id.as_str().into(),
                    clinic: clinic.as_str().into(),
                    appointment: appointment.as_str().into(),
                    room,
                })
            },
        )
        .collect()
}

/// Seats by consultation, each list in arrival order.
fn load_seats(tx: &Transaction<'_>) -> Result<BTreeMap<String, Vec<Seat>>, StoreError> {
    let rows: Vec<(String, String, String, bool, Option<i64>)> = select_all(
        tx,
        "SELECT consultation, user_id, role, admitted, disconnected_since_ms
         FROM participants ORDER BY consultation, seat_order",
    )?;
    let mut seats: BTreeMap<String, Vec<Seat>> = BTreeMap::new();
    for (consultation, user, role, admitted, disconnected) in rows {
        let what = format!("participant {user} of {consultation}");
        let seat = Seat {
            role: enum_from_db(&format!("{what} role"), &role)?,
            disconnected_since: opt_from_db(
                &format!("{what} disconnected_since_ms"),
                disconnected,
            )?,
            user: user.as_str().into(),
            admitted,
        };
        seats.entry(consultation).or_default().push(seat);
    }
    Ok(seats)
}

fn load_invitations(tx: &Transaction<'_>) -> Result<Vec<Invitation>, StoreError> {
    let rows: Vec<(String, String, String, i64)> = select_all(
        tx,
        "SELECT id, consultation, patient, expires_at_ms FROM invitations ORDER BY id",
    )?;
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

// ----- audit -----

fn audit_head(conn: &Connection) -> Result<ChainHead, StoreError> {
    let last: Option<(i64, String)> = conn
        .prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match last {
        Some((seq, hash)) => Ok(ChainHead {
            seq: from_db("audit_log seq", seq)?,
            hash,
        }),
        None => Ok(ChainHead::genesis()),
    }
}

/// `details` is stored in its canonical form: the column holds exactly the bytes that were
/// hashed, so an inspector reading it with SQL sees what the hash covers.
fn insert_audit(tx: &Transaction<'_>, e: &AuditEntry) -> Result<(), StoreError> {
    let details = crate::audit::canonical_json(&e.details)
        .ok_or(ChainError::NonIntegerNumber { seq: e.seq })?;
    let details = String::from_utf8(details).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.prepare_cached(
        "INSERT INTO audit_log (seq, at_ms, kind, actor, subject, details, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        to_db("audit seq", e.seq)?,
        to_db("audit at_ms", e.at_ms)?,
        e.kind,
        e.actor,
        e.subject,
        details,
        e.prev_hash,
        e.hash,
    ])?;
    Ok(())
}

/// An `audit_log` row as stored, decoded outside the row callback so that a bad row is
/// reported with its `seq`.
struct AuditRow {
    seq: i64,
    at_ms: i64,
    kind: String,
    actor: Option<String>,
    subject: Option<String>,
    details: String,
    prev_hash: String,
    hash: String,
}

fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        seq: r.get(0)?,
        at_ms: r.get(1)?,
        kind: r.get(2)?,
        actor: r.get(3)?,
        subject: r.get(4)?,
        details: r.get(5)?,
        prev_hash: r.get(6)?,
        hash: r.get(7)?,
    })
}

impl AuditRow {
    fn into_entry(self) -> Result<AuditEntry, StoreError> {
        let seq = from_db("audit_log seq", self.seq)?;
        Ok(AuditEntry {
            seq,
            at_ms: from_db(&format!("audit entry {seq} at_ms"), self.at_ms)?,
            kind: self.kind,
            actor: self.actor,
            subject: self.subject,
            details: from_json(&format!("audit entry {seq} details"), &self.details)?,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use huizhen_signaling::clinic::{
        Clinic, ClinicEngine, ClinicSettings, ConsultationState, QueueOrder, Role, WaitingRoom,
    };
    use serde_json::json;

    use super::*;

    fn clinic(id: &str) -> ClinicRecord {
        ClinicRecord {
            clinic: Clinic {
                id: id.into(),
                doctor: "dr-li".into(),
                name: "Cardiology".into(),
                slot_minutes: 20,
                slots: vec![huizhen_signaling::clinic::Slot {
                    start: huizhen_signaling::clinic::Millis(1_000_000),
                    capacity: 3,
                }],
            },
            queue: WaitingRoom::new(QueueOrder::Arrival),
            active: None,
            recent_lengths_ms: vec![600_000, 420_000],
        }
    }

    fn consultation(id: &str, state: ConsultationState, seats: &[&str]) -> Consultation {
        Consultation {
            id: id.into(),
            clinic: "cardio".into(),
            appointment: "a1".into(),
            room: format!("consult-{id}"),
            state,
            seats: seats
                .iter()
                .map(|u| Seat {
                    user: (*u).into(),
                    role: Role::Doctor,
                    admitted: true,
                    disconnected_since: Some(Millis(5)),
                })
                .collect(),
            expert_links: vec![
                ("jti-1".into(), Some("prof-zhang".into())),
                ("jti-2".into(), None),
            ],
            recordings: vec![huizhen_signaling::clinic::RecordingState {
                id: "rec-1".into(),
                started_at: Millis(2_000),
                stopped_at: None,
                consents: vec![huizhen_signaling::clinic::ConsentRecord {
                    user: "dr-li".into(),
                    role: Role::Doctor,
                    decision: huizhen_signaling::clinic::ConsentDecision::Granted,
                    at: Millis(2_000),
                }],
            }],
            started_at: (state == ConsultationState::InProgress).then_some(Millis(1_000)),
            ended_at: None,
        }
    }

    fn snapshot() -> EngineSnapshot {
        EngineSnapshot {
            clinics: vec![clinic("cardio")],
            appointments: vec![Appointment {
                id: "a1".into(),
                clinic: "cardio".into(),
                patient: "wang".into(),
                slot_start: Millis(1_800_000_000_000),
            }],
            consultations: vec![
                consultation(
                    "c1",
                    ConsultationState::InProgress,
                    &["zeta", "alpha", "mu"],
                ),
                consultation("c2", ConsultationState::Invited, &["dr-li"]),
            ],
            invitations: vec![Invitation {
                id: "inv2".into(),
                consultation: "c2".into(),
                patient: "wang".into(),
                expires_at: Millis(1_800_000_060_000),
            }],
            next_id: 3,
        }
    }

    #[test]
    fn a_new_database_loads_as_an_empty_engine() {
        let store = Store::open_in_memory().unwrap();
        let snap = store.load_snapshot().unwrap();
        assert_eq!(
            snap,
            ClinicEngine::new(ClinicSettings::default()).snapshot()
        );
        assert_eq!(store.schema_version().unwrap(), LATEST_VERSION);
    }

    #[test]
    fn snapshot_round_trips_keeping_seat_order() {
        let store = Store::open_in_memory().unwrap();
        store.save_snapshot(&snapshot()).unwrap();
        assert_eq!(store.load_snapshot().unwrap(), snapshot());
        let rows_changed_before = store.conn().total_changes();
        store.save_snapshot(&snapshot()).unwrap();
        assert_eq!(
            store.conn().total_changes(),
            rows_changed_before,
            "saving an unchanged snapshot rewrites no row"
        );
        assert_eq!(store.load_snapshot().unwrap(), snapshot());
    }

    #[test]
    fn absent_seats_and_invitations_go_but_started_consultations_stay() {
        let store = Store::open_in_memory().unwrap();
        store.save_snapshot(&snapshot()).unwrap();
        let mut later = snapshot();
        later.invitations.clear();
        later.consultations.retain(|c| c.id.0 == "c1");
        later.consultations[0].seats.remove(1);
        store.save_snapshot(&later).unwrap();
        assert_eq!(store.load_snapshot().unwrap(), later);

        let mut gone = later.clone();
        gone.consultations.clear();
        store.save_snapshot(&gone).unwrap();
        let loaded = store.load_snapshot().unwrap();
        assert_eq!(
            loaded.consultations.len(),
            1,
            "a started consultation is a record of care"
        );
        assert_eq!(loaded.consultations[0].id.0, "c1");
        assert!(loaded.consultations[0].seats.is_empty());
    }

    #[test]
    fn meta_values_are_kept() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(store.get_meta("dev_secret").unwrap(), None);
        store.set_meta("dev_secret", "s3cret").unwrap();
        store.set_meta("dev_secret", "rotated").unwrap();
        assert_eq!(
            store.get_meta("dev_secret").unwrap().as_deref(),
            Some("rotated")
        );
    }

    #[test]
    fn values_beyond_i64_are_refused_not_wrapped() {
        let store = Store::open_in_memory().unwrap();
        let mut snap = snapshot();
        snap.appointments[0].slot_start = Millis(u64::MAX);
        let err = store.save_snapshot(&snap).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::TooLarge {
                    field: "slot_start",
                    ..
                }
            ),
            "{err}"
        );
        let empty = ClinicEngine::new(ClinicSettings::default()).snapshot();
        assert_eq!(
            store.load_snapshot().unwrap(),
            empty,
            "the failed save was rolled back"
        );
    }

    #[test]
    fn audit_entries_chain_and_are_stored_canonically() {
        let store = Store::open_in_memory().unwrap();
        let first = store
            .append_audit(
                10,
                "checked_in",
                Some("wang".into()),
                Some("cardio".into()),
                json!({"z": 1, "a": "x"}),
            )
            .unwrap();
        let second = store
            .append_audit(20, "token_refused", None, None, json!(null))
            .unwrap();
        assert_eq!((first.seq, second.seq), (1, 2));
        assert_eq!(second.prev_hash, first.hash);
        assert_eq!(
            store.audit_head().unwrap(),
            ChainHead {
                seq: 2,
                hash: second.hash.clone()
            }
        );
        assert_eq!(
            store.audit_entries(1).unwrap(),
            vec![first.clone(), second.clone()]
        );
        assert_eq!(store.audit_page(2, 10).unwrap(), vec![second]);
        assert_eq!(store.audit_page(1, 1).unwrap(), vec![first]);
        let stored: String = store
            .conn()
            .query_row("SELECT details FROM audit_log WHERE seq = 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(stored, r#"{"a":"x","z":1}"#);
    }

    #[test]
    fn audit_rows_cannot_be_changed_or_removed_through_sql() {
        let store = Store::open_in_memory().unwrap();
        store
            .append_audit(
                10,
                "joined",
                Some("wang".into()),
                Some("c1".into()),
                json!({}),
            )
            .unwrap();
        let conn = store.conn();
        let update = conn.execute("UPDATE audit_log SET kind = 'left' WHERE seq = 1", []);
        let delete = conn.execute("DELETE FROM audit_log", []);
        for result in [update, delete] {
            assert!(result.unwrap_err().to_string().contains("append-only"));
        }
    }

    #[test]
    fn floats_in_audit_details_are_refused() {
        let store = Store::open_in_memory().unwrap();
        let err = store
            .append_audit(1, "x", None, None, json!({"ratio": 0.5}))
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Audit(ChainError::NonIntegerNumber { seq: 1 })
            ),
            "{err}"
        );
        assert_eq!(store.audit_head().unwrap(), ChainHead::genesis());
    }

    #[test]
    fn store_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
        assert_send_sync::<Store>();
        let store = Store::open_in_memory().unwrap();
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..10 {
                        store
                            .append_audit(i, "joined", Some(format!("u{t}")), None, json!({"i": i}))
                            .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let entries = store.audit_entries(1).unwrap();
        assert_eq!(crate::audit::verify(&entries).unwrap().entries, 40);
    }
}
