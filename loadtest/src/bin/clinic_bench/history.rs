//! A large clinic history written straight into a stopped server's SQLite database: booked
//! appointments and ended consultations with their participants, all in the past. Going
//! through the server would take hours on a server that rewrites its state per change.
//!
//! Rows name their columns, and only the columns the table has: a newer schema with more
//! columns still works as long as those are nullable or have defaults (otherwise this stops
//! with the column's name).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use rusqlite::types::Value as Sql;
use rusqlite::Connection;

/// Appointment ids of the history: `hist-a-0000001`, …
pub fn appointment_id(i: u64) -> String {
    format!("hist-a-{i:07}")
}

fn consultation_id(i: u64) -> String {
    format!("hist-c-{i:07}")
}

fn patient_id(i: u64) -> String {
    format!("hist-p-{:06}", i % 40_000)
}

/// What the database holds after [`extend`].
#[derive(Debug, Clone, Copy)]
pub struct Totals {
    /// Rows in `appointments`.
    pub appointments: u64,
    /// Rows in `consultations`.
    pub consultations: u64,
    /// Rows in `participants`.
    pub participants: u64,
}

/// Bring the history to `appointments` appointments, of which the first `consultations` have
/// an ended consultation (patient and doctor seated), spread round-robin over `clinics`
/// (`(id, doctor)` pairs that must already be rows of `clinics`). `have_*` are the counts an
/// earlier call inserted; only the difference is written, in one transaction.
pub fn extend(
    db: &Path,
    clinics: &[(String, String)],
    have_appointments: u64,
    have_consultations: u64,
    appointments: u64,
    consultations: u64,
    now_ms: u64,
) -> anyhow::Result<Totals> {
    if consultations > appointments {
        bail!("more consultations ({consultations}) than appointments ({appointments})");
    }
    if !db.is_file() {
        bail!(
            "no database at {} (has the server's file name changed?)",
            db.display()
        );
    }
    let mut conn = Connection::open(db).with_context(|| format!("opening {}", db.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    for (id, _) in clinics {
        let found: i64 =
            conn.query_row("SELECT count(*) FROM clinics WHERE id = ?1", [id], |r| {
                r.get(0)
            })?;
        if found != 1 {
            bail!(
                "clinic {id} is not in the database; the history must reference existing clinics"
            );
        }
    }
    let tx = conn.transaction()?;
    {
        let mut appointment = Insert::new(&tx, "appointments")?;
        let mut consultation = Insert::new(&tx, "consultations")?;
        let mut participant = Insert::new(&tx, "participants")?;
        let slot_ms = |i: u64| now_ms - 86_400_000 - i * 5 * 60_000;
        for i in have_appointments..appointments {
            let (clinic, _) = &clinics[(i % clinics.len() as u64) as usize];
            appointment.row(&[
                ("id", Sql::Text(appointment_id(i))),
                ("clinic", Sql::Text(clinic.clone())),
                ("patient", Sql::Text(patient_id(i))),
                ("slot_start_ms", Sql::Integer(slot_ms(i) as i64)),
            ])?;
        }
        for i in have_consultations..consultations {
            let (clinic, doctor) = &clinics[(i % clinics.len() as u64) as usize];
            let started = slot_ms(i) + 60_000;
            let id = consultation_id(i);
            consultation.row(&[
                ("id", Sql::Text(id.clone())),
                ("clinic", Sql::Text(clinic.clone())),
                ("appointment", Sql::Text(appointment_id(i))),
                ("room", Sql::Text(format!("consult-{id}"))),
                ("state", Sql::Text("ended".into())),
                ("started_at_ms", Sql::Integer(started as i64)),
                ("ended_at_ms", Sql::Integer((started + 12 * 60_000) as i64)),
                ("expert_links_json", Sql::Text("[]".into())),
                ("recordings_json", Sql::Text("[]".into())),
            ])?;
            for (order, (user, role)) in [(patient_id(i), "patient"), (doctor.clone(), "doctor")]
                .into_iter()
                .enumerate()
            {
                participant.row(&[
                    ("consultation", Sql::Text(id.clone())),
                    ("user_id", Sql::Text(user)),
                    ("role", Sql::Text(role.into())),
                    ("admitted", Sql::Integer(1)),
                    ("disconnected_since_ms", Sql::Null),
                    ("seat_order", Sql::Integer(order as i64)),
                ])?;
            }
        }
    }
    tx.commit()?;
    let count = |table: &str| -> anyhow::Result<u64> {
        Ok(
            conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                r.get::<_, i64>(0)
            })? as u64,
        )
    };
    let totals = Totals {
        appointments: count("appointments")?,
        consultations: count("consultations")?,
        participants: count("participants")?,
    };
    conn.close().map_err(|(_, e)| e)?;
    Ok(totals)
}

/// Inserts into one table, using the columns it has.
struct Insert<'c> {
    table: &'static str,
    /// Column name → NOT NULL without a default.
    columns: HashMap<String, bool>,
    statements: HashMap<Vec<&'static str>, rusqlite::CachedStatement<'c>>,
    conn: &'c Connection,
}

impl<'c> Insert<'c> {
    fn new(conn: &'c Connection, table: &'static str) -> anyhow::Result<Insert<'c>> {
        let mut columns = HashMap::new();
        let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
        let rows = stmt.query_map([], |r| {
            let name: String = r.get("name")?;
            let notnull: bool = r.get("notnull")?;
            let default: Option<String> = r.get("dflt_value")?;
            let pk: i64 = r.get("pk")?;
            Ok((name, notnull && default.is_none() && pk == 0))
        })?;
        for row in rows {
            let (name, required) = row?;
            columns.insert(name, required);
        }
        if columns.is_empty() {
            bail!("the database has no table {table}");
        }
        Ok(Insert {
            table,
            columns,
            statements: HashMap::new(),
            conn,
        })
    }

    fn row(&mut self, values: &[(&'static str, Sql)]) -> anyhow::Result<()> {
        let known: Vec<&'static str> = values
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| self.columns.contains_key(*c))
            .collect();
        if !self.statements.contains_key(&known) {
            for (column, required) in &self.columns {
                if *required && !known.contains(&column.as_str()) {
                    bail!(
                        "{}.{column} is NOT NULL without a default and unknown to this bench",
                        self.table
                    );
                }
            }
            let placeholders: Vec<String> = (1..=known.len()).map(|i| format!("?{i}")).collect();
            let sql = format!(
                "INSERT INTO {} ({}) VALUES ({})",
                self.table,
                known.join(", "),
                placeholders.join(", ")
            );
            let stmt = self.conn.prepare_cached(&sql)?;
            self.statements.insert(known.clone(), stmt);
        }
        let stmt = self.statements.get_mut(&known).expect("inserted above");
        let params: Vec<&Sql> = values
            .iter()
            .filter(|(c, _)| self.columns.contains_key(*c))
            .map(|(_, v)| v)
            .collect();
        stmt.execute(rusqlite::params_from_iter(params))
            .with_context(|| format!("inserting into {}", self.table))?;
        Ok(())
    }
}
