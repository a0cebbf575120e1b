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

mod clinic;
pub mod migrations;
pub mod revocation;

pub use revocation::Revocation;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use huizhen_signaling::clinic::{
    Appointment, AppointmentId, ChangeSet, ClinicId, Consultation, EngineSnapshot, Millis,
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

/// An audit entry to be chained and written with the next commit.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingAudit {
    /// Wall-clock time (ms).
    pub at_ms: u64,
    /// What happened.
    pub kind: String,
    /// Who did it.
    pub actor: Option<String>,
    /// What it concerns.
    pub subject: Option<String>,
    /// The rest.
    pub details: Value,
}

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

/// What the clinic service needs from its database: commit a batch (changed rows, audit
/// entries, revocations) atomically, restore the live state, and look up history. SQLite
/// ([`Store`]) implements it today; a PostgreSQL implementation for multi-node deployments
/// slots in here without touching the clinic engine or the service.
pub trait ClinicStore: Send + Sync + 'static {
    /// See [`Store::commit`].
    fn commit(
        &self,
        changes: &ChangeSet,
        audit: &[PendingAudit],
        revocations: &[Revocation],
    ) -> Result<Vec<AuditEntry>, StoreError>;
    /// See [`Store::load_live`].
    fn load_live(&self, now: Millis, horizon_ms: u64) -> Result<EngineSnapshot, StoreError>;
    /// See [`Store::appointment`].
    fn appointment(&self, id: &AppointmentId) -> Result<Option<Appointment>, StoreError>;
    /// See [`Store::revocations`].
    fn revocations(&self, now_secs: u64) -> Result<Vec<Revocation>, StoreError>;
    /// See [`Store::consultation`].
    fn consultation(&self, id: &str) -> Result<Option<Consultation>, StoreError>;
}

impl ClinicStore for Store {
    fn commit(
        &self,
        changes: &ChangeSet,
        audit: &[PendingAudit],
        revocations: &[Revocation],
    ) -> Result<Vec<AuditEntry>, StoreError> {
        Store::commit(self, changes, audit, revocations)
    }
    fn load_live(&self, now: Millis, horizon_ms: u64) -> Result<EngineSnapshot, StoreError> {
        Store::load_live(self, now, horizon_ms)
    }
    fn appointment(&self, id: &AppointmentId) -> Result<Option<Appointment>, StoreError> {
        Store::appointment(self, id)
    }
    fn revocations(&self, now_secs: u64) -> Result<Vec<Revocation>, StoreError> {
        Store::revocations(self, now_secs)
    }
    fn consultation(&self, id: &str) -> Result<Option<Consultation>, StoreError> {
        Store::consultation(self, id)
    }
}

/// The database handle. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct Store {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
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
        let open = || {
            Connection::open(path).map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })
        };
        let store = Store::init(open()?)?;
        let reader = open()?;
        configure(&reader)?;
        Ok(Store {
            reader: Arc::new(Mutex::new(reader)),
            ..store
        })
    }

    /// A private, empty database in memory (tests, `--ephemeral` runs).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Store::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Store, StoreError> {
        configure(&conn)?;
        migrations::migrate(&mut conn)?;
        let conn = Arc::new(Mutex::new(conn));
        Ok(Store {
            writer: conn.clone(),
            reader: conn,
        })
    }

    /// The writing connection. A panic while it was held leaves no half-done work (an open
    /// transaction is rolled back when dropped), so a poisoned lock is safe to take.
    fn writer(&self) -> MutexGuard<'_, Connection> {
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A connection for the admin API's reads: with a file database a second connection,
    /// which WAL lets read while a commit waits for its fsync.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.reader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The database's schema version.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        migrations::schema_version(&self.writer())
    }

    // ----- meta -----

    /// A value from the `meta` table (e.g. a generated development secret). [`NEXT_ID_KEY`] is
    /// the store's own.
    pub fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        get_meta(&self.writer(), key)
    }

    /// Set a value in the `meta` table.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        set_meta(&self.writer(), key, value)
    }

    // ----- clinic -----

    /// Commit one batch in one transaction: the rows `changes` names, the audit entries
    /// (chained after the current last entry) and the token revocations. Nothing of it is
    /// visible, or durable, unless all of it is. Returns the sealed audit entries.
    pub fn commit(
        &self,
        changes: &ChangeSet,
        audit: &[PendingAudit],
        revocations: &[Revocation],
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut conn = self.writer();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        clinic::write_changes(&tx, changes)?;
        let mut head = audit_head(&tx)?;
        let mut sealed = Vec::with_capacity(audit.len());
        for a in audit {
            let entry = AuditEntry::seal(
                &head,
                a.at_ms,
                &a.kind,
                a.actor.clone(),
                a.subject.clone(),
                a.details.clone(),
            )?;
            insert_audit(&tx, &entry)?;
            head = ChainHead {
                seq: entry.seq,
                hash: entry.hash.clone(),
            };
            sealed.push(entry);
        }
        for r in revocations {
            revocation::insert(&tx, r)?;
        }
        tx.commit()?;
        Ok(sealed)
    }

    /// The live clinic state at `now` (what a restarted engine needs): see [`clinic`].
    pub fn load_live(&self, now: Millis, horizon_ms: u64) -> Result<EngineSnapshot, StoreError> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        let snap = clinic::load_live(&tx, now, horizon_ms)?;
        tx.commit()?;
        Ok(snap)
    }

    /// One appointment, live or history.
    pub fn appointment(&self, id: &AppointmentId) -> Result<Option<Appointment>, StoreError> {
        clinic::appointment(&self.reader(), id)
    }

    /// Appointments (of one clinic) ordered by id, after `after`, at most `limit`.
    pub fn appointments_page(
        &self,
        clinic: Option<&ClinicId>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Appointment>, StoreError> {
        clinic::appointments_page(&self.reader(), clinic, after, limit)
    }

    /// One consultation with its seats, live or history.
    pub fn consultation(&self, id: &str) -> Result<Option<Consultation>, StoreError> {
        clinic::consultation(&self.reader(), id)
    }

    /// A clinic's started consultations, newest first, before the `(started_at_ms, id)`
    /// cursor, at most `limit`.
    pub fn consultations_page(
        &self,
        clinic: &ClinicId,
        before: Option<(u64, &str)>,
        limit: usize,
    ) -> Result<Vec<Consultation>, StoreError> {
        clinic::consultations_page(&self.reader(), clinic, before, limit)
    }

    /// Every revocation still in force at `now_secs`.
    pub fn revocations(&self, now_secs: u64) -> Result<Vec<Revocation>, StoreError> {
        revocation::load(&self.reader(), now_secs)
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
        let mut conn = self.writer();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let head = audit_head(&tx)?;
        let entry = AuditEntry::seal(&head, at_ms, kind, actor, subject, details)?;
        insert_audit(&tx, &entry)?;
        tx.commit()?;
        Ok(entry)
    }

    /// The last entry's `seq` and `hash` (the genesis head for an empty trail).
    pub fn audit_head(&self) -> Result<ChainHead, StoreError> {
        audit_head(&self.writer())
    }

    /// Every entry from `from_seq` on, in order. For long trails prefer [`Store::audit_page`].
    pub fn audit_entries(&self, from_seq: u64) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_page(from_seq, usize::MAX)
    }

    /// At most `limit` entries from `from_seq` on, in order: page through a long trail (verify
    /// each page with [`crate::audit::verify_from`], passing the previous page's head).
    pub fn audit_page(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.writer();
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
        Clinic, ClinicEngine, ClinicRecord, ClinicSettings, ConsultationState, Invitation,
        QueueOrder, Role, Seat, WaitingRoom,
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
            invited_by: Some("dr-li".into()),
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
            ended_appointments: Vec::new(),
        }
    }

    /// Everything in `snap` as one change set.
    fn changes(snap: &EngineSnapshot) -> ChangeSet {
        ChangeSet {
            clinics: snap.clinics.clone(),
            appointments: snap.appointments.clone(),
            cancelled_appointments: Vec::new(),
            consultations: snap
                .consultations
                .iter()
                .map(|c| (c.id.clone(), Some(c.clone())))
                .collect(),
            invitations: snap
                .invitations
                .iter()
                .map(|i| (i.id.clone(), Some(i.clone())))
                .collect(),
            next_id: snap.next_id,
        }
    }

    const NOW: Millis = Millis(1_800_000_000_000);
    const DAY: u64 = 24 * 3600_000;

    fn audit_row(kind: &str) -> PendingAudit {
        PendingAudit {
            at_ms: NOW.0,
            kind: kind.into(),
            actor: Some("dr-li".into()),
            subject: Some("cardio".into()),
            details: json!({}),
        }
    }

    #[test]
    fn a_new_database_loads_as_an_empty_engine() {
        let store = Store::open_in_memory().unwrap();
        let snap = store.load_live(NOW, DAY).unwrap();
        assert_eq!(
            snap,
            ClinicEngine::new(ClinicSettings::default()).snapshot()
        );
        assert_eq!(store.schema_version().unwrap(), LATEST_VERSION);
    }

    #[test]
    fn a_commit_round_trips_keeping_seat_order_with_its_audit_rows() {
        let store = Store::open_in_memory().unwrap();
        let sealed = store
            .commit(
                &changes(&snapshot()),
                &[audit_row("a"), audit_row("b")],
                &[],
            )
            .unwrap();
        assert_eq!(sealed.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(sealed[1].prev_hash, sealed[0].hash);
        assert_eq!(store.load_live(NOW, DAY).unwrap(), snapshot());
        assert_eq!(store.audit_head().unwrap().seq, 2);
    }

    #[test]
    fn a_commit_writes_only_the_rows_it_names() {
        let store = Store::open_in_memory().unwrap();
        let mut many = snapshot();
        many.appointments = (0..2_000)
            .map(|i| Appointment {
                id: format!("h{i}").as_str().into(),
                clinic: "cardio".into(),
                patient: format!("p{i}").as_str().into(),
                slot_start: Millis(NOW.0 - 30 * DAY),
            })
            .collect();
        many.appointments.push(snapshot().appointments[0].clone());
        many.appointments.sort_by(|x, y| x.id.cmp(&y.id));
        store.commit(&changes(&many), &[], &[]).unwrap();
        let before = store.writer().total_changes();
        let one = ChangeSet {
            clinics: vec![clinic("cardio")],
            next_id: 4,
            ..ChangeSet::default()
        };
        store
            .commit(&one, &[audit_row("doctor_status")], &[])
            .unwrap();
        let written = store.writer().total_changes() - before;
        assert!(
            written <= 3,
            "one clinic row, the id counter and one audit row; wrote {written}"
        );
        // History beyond the horizon stays on disk but is not loaded.
        let live = store.load_live(NOW, DAY).unwrap();
        assert_eq!(live.appointments.len(), 1);
        assert_eq!(
            store
                .appointments_page(None, None, usize::MAX)
                .unwrap()
                .len(),
            2_001
        );
        assert_eq!(
            store.appointment(&"h7".into()).unwrap().unwrap().patient.0,
            "p7"
        );
    }

    #[test]
    fn gone_seats_and_invitations_are_deleted_but_started_consultations_stay() {
        let store = Store::open_in_memory().unwrap();
        store.commit(&changes(&snapshot()), &[], &[]).unwrap();
        let mut later = snapshot();
        later.invitations.clear();
        later.consultations.retain(|c| c.id.0 == "c1");
        later.consultations[0].seats.remove(1);
        let change = ChangeSet {
            consultations: vec![
                ("c1".into(), Some(later.consultations[0].clone())),
                ("c2".into(), None),
            ],
            invitations: vec![("inv2".into(), None)],
            next_id: 3,
            ..ChangeSet::default()
        };
        store.commit(&change, &[], &[]).unwrap();
        assert_eq!(store.load_live(NOW, DAY).unwrap(), later);
        // Even if asked to, a started consultation is never deleted: it is a record of care.
        let wrong = ChangeSet {
            consultations: vec![("c1".into(), None)],
            next_id: 3,
            ..ChangeSet::default()
        };
        store.commit(&wrong, &[], &[]).unwrap();
        let kept = store.consultation("c1").unwrap().unwrap();
        assert_eq!(kept.seats.len(), 2);
        assert_eq!(kept.seats[0].user.0, "zeta");
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
    fn a_failed_commit_leaves_neither_rows_nor_audit_entries() {
        let store = Store::open_in_memory().unwrap();
        let mut snap = snapshot();
        snap.appointments[0].slot_start = Millis(u64::MAX);
        let err = store
            .commit(&changes(&snap), &[audit_row("appointment_booked")], &[])
            .unwrap_err();
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
            store.load_live(NOW, DAY).unwrap(),
            empty,
            "the failed commit was rolled back"
        );
        assert_eq!(
            store.audit_head().unwrap(),
            ChainHead::genesis(),
            "with its audit row"
        );
    }

    #[test]
    fn revocations_are_kept_until_they_stop_mattering() {
        let store = Store::open_in_memory().unwrap();
        let token = Revocation::Token {
            jti: "t1".into(),
            keep_until_s: 2_000,
        };
        let user = Revocation::User {
            user: "wang".into(),
            issued_up_to_s: 1_000,
            keep_until_s: 3_000,
        };
        store
            .commit(
                &ChangeSet::default(),
                &[audit_row("token_revoked")],
                &[token.clone(), user.clone()],
            )
            .unwrap();
        let now = store.revocations(1_500).unwrap();
        assert_eq!(now.len(), 2);
        assert!(user.covers(None, "wang", 999) && !user.covers(None, "wang", 1_001));
        assert!(token.covers(Some("t1"), "anyone", 0));
        assert_eq!(store.revocations(2_500).unwrap(), vec![user]);
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
            .writer()
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
        let conn = store.writer();
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
