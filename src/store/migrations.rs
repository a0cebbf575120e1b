//! Schema migrations: an ordered list of SQL scripts, the database's `PRAGMA user_version`
//! recording how many have been applied.
//!
//! Migrations are append-only: a released migration is never edited, a schema change is a new
//! entry at the end. Each runs in its own `IMMEDIATE` transaction together with the version
//! bump, so a crash leaves the database at the previous version, and two processes opening the
//! same file cannot both apply it. A database whose version is higher than [`LATEST_VERSION`]
//! was written by a newer huizhen and is refused rather than misread.

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// One schema step.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The `user_version` after it (1, 2, 3, …: its position in [`MIGRATIONS`]).
    pub version: u32,
    /// What it does, for logs.
    pub name: &'static str,
    /// The SQL, run as one batch.
    pub sql: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "clinic state",
        sql: CLINIC_STATE,
    },
    Migration {
        version: 2,
        name: "audit log",
        sql: AUDIT_LOG,
    },
    Migration {
        version: 3,
        name: "clinic time slots",
        sql: CLINIC_SLOTS,
    },
    Migration {
        version: 4,
        name: "recordings and consent",
        sql: RECORDINGS,
    },
    Migration {
        version: 5,
        name: "writes by change, token revocations",
        sql: BY_CHANGE,
    },
];

/// Restoring reads only live rows (indexes by slot time and state); consultations name the
/// doctor who invited; token revocations.
const BY_CHANGE: &str = "
ALTER TABLE consultations ADD COLUMN invited_by TEXT;
CREATE INDEX appointments_by_slot ON appointments (slot_start_ms);
CREATE INDEX consultations_by_state ON consultations (state);
CREATE TABLE revocations (
    kind           TEXT NOT NULL CHECK (kind IN ('token', 'user')),
    id             TEXT NOT NULL,
    issued_up_to_s INTEGER NOT NULL,
    keep_until_s   INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
) STRICT;
CREATE INDEX revocations_by_expiry ON revocations (keep_until_s);
";

/// A consultation's recordings with every participant's consent decision.
const RECORDINGS: &str = "
ALTER TABLE consultations ADD COLUMN recordings_json TEXT NOT NULL DEFAULT '[]';
";

/// A clinic session's time slots (start, capacity), read and written whole with the clinic.
const CLINIC_SLOTS: &str = "
ALTER TABLE clinics ADD COLUMN slots_json TEXT NOT NULL DEFAULT '[]';
";

/// The schema version this build writes.
pub const LATEST_VERSION: u32 = MIGRATIONS.len() as u32;

/// The clinic engine's state, normalized so that it can be queried with plain SQL. The live
/// waiting room (ordering keys, promotions, invitation marks) and the small lists stay JSON:
/// they change together and are only ever read whole.
///
/// Foreign keys are deferred to commit so a snapshot can be written in any order.
const CLINIC_STATE: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE clinics (
    id                  TEXT PRIMARY KEY NOT NULL,
    doctor              TEXT NOT NULL,
    name                TEXT NOT NULL,
    slot_minutes        INTEGER NOT NULL,
    queue_json          TEXT NOT NULL,
    active_consultation TEXT,
    recent_lengths_json TEXT NOT NULL
) STRICT;

CREATE TABLE appointments (
    id            TEXT PRIMARY KEY NOT NULL,
    clinic        TEXT NOT NULL REFERENCES clinics (id) DEFERRABLE INITIALLY DEFERRED,
    patient       TEXT NOT NULL,
    slot_start_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX appointments_by_clinic ON appointments (clinic, slot_start_ms);
CREATE INDEX appointments_by_patient ON appointments (patient);

CREATE TABLE consultations (
    id                TEXT PRIMARY KEY NOT NULL,
    clinic            TEXT NOT NULL REFERENCES clinics (id) DEFERRABLE INITIALLY DEFERRED,
    appointment       TEXT NOT NULL REFERENCES appointments (id) DEFERRABLE INITIALLY DEFERRED,
    room              TEXT NOT NULL,
    state             TEXT NOT NULL,
    started_at_ms     INTEGER,
    ended_at_ms       INTEGER,
    expert_links_json TEXT NOT NULL
) STRICT;
CREATE INDEX consultations_by_clinic ON consultations (clinic, started_at_ms);
CREATE INDEX consultations_by_appointment ON consultations (appointment);

CREATE TABLE participants (
    consultation          TEXT NOT NULL REFERENCES consultations (id) DEFERRABLE INITIALLY DEFERRED,
    user_id               TEXT NOT NULL,
    role                  TEXT NOT NULL,
    admitted              INTEGER NOT NULL CHECK (admitted IN (0, 1)),
    disconnected_since_ms INTEGER,
    seat_order            INTEGER NOT NULL,
    PRIMARY KEY (consultation, user_id)
) STRICT;
CREATE INDEX participants_by_user ON participants (user_id);

CREATE TABLE invitations (
    id            TEXT PRIMARY KEY NOT NULL,
    consultation  TEXT NOT NULL REFERENCES consultations (id) DEFERRABLE INITIALLY DEFERRED,
    patient       TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
) STRICT;
";

/// The audit trail. Append-only by API; the triggers make an `UPDATE` or `DELETE` through any
/// SQLite client fail too, so rewriting history takes a deliberate `DROP TRIGGER` (and is still
/// caught by the hash chain).
const AUDIT_LOG: &str = "
CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY NOT NULL CHECK (seq >= 1),
    at_ms     INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    actor     TEXT,
    subject   TEXT,
    details   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
) STRICT;
CREATE INDEX audit_log_by_subject ON audit_log (subject, seq);
CREATE INDEX audit_log_by_actor ON audit_log (actor, seq);
CREATE INDEX audit_log_by_time ON audit_log (at_ms);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
";

/// Bring the database up to [`LATEST_VERSION`]; returns how many migrations were applied
/// (0 when it was up to date).
pub fn migrate(conn: &mut Connection) -> Result<usize, StoreError> {
    migrate_with(conn, MIGRATIONS)
}

/// The database's schema version.
pub fn schema_version(conn: &Connection) -> Result<u32, StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    u32::try_from(version).map_err(|_| StoreError::Corrupt(format!("schema version {version}")))
}

fn migrate_with(conn: &mut Connection, migrations: &[Migration]) -> Result<usize, StoreError> {
    let supported = migrations.len() as u32;
    let found = schema_version(conn)?;
    if found > supported {
        return Err(StoreError::TooNew { found, supported });
    }
    let mut applied = 0;
    for migration in &migrations[found as usize..] {
        if apply(conn, migration)? {
            applied += 1;
        }
    }
    Ok(applied)
}

/// Apply one migration unless another connection got there first; `true` if applied here.
fn apply(conn: &mut Connection, migration: &Migration) -> Result<bool, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if schema_version(&tx)? >= migration.version {
        return Ok(false);
    }
    tx.execute_batch(migration.sql)
        .map_err(|source| StoreError::Migration {
            version: migration.version,
            source,
        })?;
    tx.pragma_update(None, "user_version", migration.version)?;
    tx.commit()?;
    tracing::info!(
        version = migration.version,
        name = migration.name,
        "applied schema migration"
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_positions() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.name);
        }
    }

    #[test]
    fn migrating_twice_applies_nothing_the_second_time() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), MIGRATIONS.len());
        assert_eq!(migrate(&mut conn).unwrap(), 0);
        assert_eq!(schema_version(&conn).unwrap(), LATEST_VERSION);
    }

    #[test]
    fn a_failing_migration_leaves_the_previous_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        let broken = [
            MIGRATIONS[0],
            Migration {
                version: 2,
                name: "broken",
                sql: "CREATE TABLE half (x INTEGER); THIS IS NOT SQL;",
            },
        ];
        let err = migrate_with(&mut conn, &broken).unwrap_err();
        assert!(
            matches!(err, StoreError::Migration { version: 2, .. }),
            "{err}"
        );
        assert_eq!(schema_version(&conn).unwrap(), 1);
        let half: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'half'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            half, 0,
            "the failed migration's partial work was rolled back"
        );
    }

    #[test]
    fn a_newer_database_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", LATEST_VERSION + 1)
            .unwrap();
        let err = migrate(&mut conn).unwrap_err();
        assert!(
            matches!(err, StoreError::TooNew { found, supported } if found == LATEST_VERSION + 1 && supported == LATEST_VERSION),
            "{err}"
        );
    }
}
