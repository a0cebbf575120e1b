//! The audit trail: an append-only, hash-chained record of who did what in which clinic and
//! consultation, kept for regulators and for the hospital's own inquiries.
//!
//! Every [`ClinicEvent`] (and every refused token or grant, and later every recording action)
//! becomes one [`AuditEntry`]. The server appends entries through
//! [`Store::append_audit`](crate::store::Store::append_audit), which stores them in the same
//! SQLite database as the clinic state; this module is the pure part: the entry, its chain, the
//! mapping from clinic events, and JSON-lines export and import.
//!
//! # Chain format (for independent verification)
//!
//! Entries are numbered `seq` = 1, 2, 3, … without gaps. Each entry carries `prev_hash`, the
//! `hash` of the entry before it (for entry 1: 64 zeros, [`GENESIS_HASH`]), and its own `hash`:
//!
//! ```text
//! hash = lowercase_hex(SHA-256(hex_decode(prev_hash) || canonical))
//! ```
//!
//! where `hex_decode(prev_hash)` is 32 bytes and `canonical` is the UTF-8 canonical JSON of the
//! object with exactly the keys `actor`, `at_ms`, `details`, `kind`, `seq`, `subject` (`actor`
//! and `subject` are `null` when absent; `prev_hash` and `hash` are not included). Canonical JSON
//! means: no whitespace; object keys sorted by Unicode code point, at every level; strings as
//! UTF-8 with only `"`, `\` and U+0000..U+001F escaped (`\b`, `\f`, `\n`, `\r`, `\t`, otherwise
//! `\u00xx` with lowercase hex); numbers are integers (within `i64` or `u64`) in decimal.
//! Non-integer numbers are not allowed in `details` (their text does not survive every JSON
//! parser bit for bit, so they would cause false alarms); entries holding one are refused. This
//! is exactly Python's
//!
//! ```text
//! hashlib.sha256(bytes.fromhex(e["prev_hash"]) + json.dumps(
//!     {k: e[k] for k in ("actor", "at_ms", "details", "kind", "seq", "subject")},
//!     sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")).hexdigest()
//! ```
//!
//! applied to the lines of [`export_jsonl`]. A chain is intact when each entry's `seq` is one
//! more than its predecessor's, its `prev_hash` equals its predecessor's `hash`, and its `hash`
//! is as above ([`verify`]). Removing the newest entries leaves an intact, shorter chain, so the
//! last hash ([`VerifyReport::last_hash`]) should be published from time to time to anchor it.

pub mod chain;
pub mod source;

use std::io::{self, BufRead, Write};

use huizhen_signaling::clinic::{ClinicEvent, LeftReason};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use chain::{
    canonical_entry_bytes, canonical_json, compute_hash, verify, verify_from, ChainError,
    ChainHead, VerifyReport, GENESIS_HASH,
};

/// One audit record. Its JSON form (field order as declared) is the line format of
/// [`export_jsonl`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// Wall-clock time (ms since the Unix epoch) the server recorded it.
    pub at_ms: u64,
    /// What happened (`checked_in`, `invited`, `token_refused`, …).
    pub kind: String,
    /// Who did it (a user id), when known.
    pub actor: Option<String>,
    /// What it concerns: a consultation, clinic, invitation or appointment id.
    pub subject: Option<String>,
    /// Everything else, as JSON.
    pub details: Value,
    /// `hash` of the previous entry ([`GENESIS_HASH`] for entry 1).
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and this entry's content; see the module docs.
    pub hash: String,
}

impl AuditEntry {
    /// The entry that follows `head`, with its hash computed. Fails only if `head.hash` is not
    /// a well-formed hash (a corrupted store).
    pub fn seal(
        head: &ChainHead,
        at_ms: u64,
        kind: &str,
        actor: Option<String>,
        subject: Option<String>,
        details: Value,
    ) -> Result<AuditEntry, ChainError> {
        let mut entry = AuditEntry {
            seq: head.seq + 1,
            at_ms,
            kind: kind.to_owned(),
            actor,
            subject,
            details,
            prev_hash: head.hash.clone(),
            hash: String::new(),
        };
        entry.hash = compute_hash(&entry)?;
        Ok(entry)
    }
}

/// Write entries as JSON lines (one object per line, all fields including both hashes): the
/// format handed to a regulator, and what [`read_jsonl`] reads back.
pub fn export_jsonl<'a, W: Write>(
    entries: impl IntoIterator<Item = &'a AuditEntry>,
    mut writer: W,
) -> io::Result<()> {
    for entry in entries {
        serde_json::to_writer(&mut writer, entry)?;
        writer.write_all(b"\n")?;
    }
    writer.flush()
}

/// A JSON-lines audit export that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadJsonlError {
    /// Reading failed.
    #[error("reading the audit export: {0}")]
    Io(#[from] io::Error),
    /// A line is not an audit entry.
    #[error("line {line} of the audit export is not an audit entry: {source}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// Read entries written by [`export_jsonl`] (blank lines are skipped), e.g. to [`verify`] an
/// export away from the server.
pub fn read_jsonl<R: BufRead>(reader: R) -> Result<Vec<AuditEntry>, ReadJsonlError> {
    let mut entries = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let entry = serde_json::from_str(&line).map_err(|source| ReadJsonlError::Malformed {
            line: index + 1,
            source,
        })?;
        entries.push(entry);
    }
    Ok(entries)
}

/// Every kind [`kind_of`] returns, for pre-registering metric label values.
pub const EVENT_KINDS: &[&str] = &[
    "checked_in",
    "reconnected",
    "left_queue",
    "moved_up",
    "invited",
    "answered",
    "declined",
    "invitation_expired",
    "invitation_cancelled",
    "consultation_started",
    "joined",
    "left",
    "companion_waiting",
    "admitted",
    "expert_invited",
    "consultation_ended",
    "doctor_status",
    "recording_started",
    "consent_requested",
    "consent_decided",
    "recording_stopped",
];

/// The audit `kind` of a clinic event: its wire tag (the `event` field of its JSON), so the
/// audit log and the event stream use the same vocabulary.
pub fn kind_of(event: &ClinicEvent) -> &'static str {
    match event {
        ClinicEvent::CheckedIn { .. } => "checked_in",
        ClinicEvent::Reconnected { .. } => "reconnected",
        ClinicEvent::LeftQueue { .. } => "left_queue",
        ClinicEvent::MovedUp { .. } => "moved_up",
        ClinicEvent::Invited { .. } => "invited",
        ClinicEvent::Answered { .. } => "answered",
        ClinicEvent::Declined { .. } => "declined",
        ClinicEvent::InvitationExpired { .. } => "invitation_expired",
        ClinicEvent::InvitationCancelled { .. } => "invitation_cancelled",
        ClinicEvent::ConsultationStarted { .. } => "consultation_started",
        ClinicEvent::Joined { .. } => "joined",
        ClinicEvent::Left { .. } => "left",
        ClinicEvent::CompanionWaiting { .. } => "companion_waiting",
        ClinicEvent::Admitted { .. } => "admitted",
        ClinicEvent::ExpertInvited { .. } => "expert_invited",
        ClinicEvent::ConsultationEnded { .. } => "consultation_ended",
        ClinicEvent::DoctorStatus { .. } => "doctor_status",
        ClinicEvent::RecordingStarted { .. } => "recording_started",
        ClinicEvent::ConsentRequested { .. } => "consent_requested",
        ClinicEvent::ConsentDecided { .. } => "consent_decided",
        ClinicEvent::RecordingStopped { .. } => "recording_stopped",
    }
}

/// The audit fields of a clinic event: `(kind, actor, subject, details)`.
///
/// `actor` is the user the event itself names as acting (the patient who checked in, answered
/// or left; the participant who joined or left). It is `None` for timer-driven events (expiry,
/// grace period, the end of a call) and for doctor actions, whose events do not name the
/// doctor: the caller knows the authenticated actor and should pass it instead. `subject` is
/// the consultation when the event names one, else the clinic, else the invitation. `details`
/// is the event's own JSON, so nothing is lost.
pub fn audit_fields(event: &ClinicEvent) -> (&'static str, Option<String>, Option<String>, Value) {
    // A derived Serialize of plain fields cannot fail; Null is unreachable in practice.
    let details = serde_json::to_value(event).unwrap_or(Value::Null);
    (
        kind_of(event),
        event_actor(event),
        event_subject(event),
        details,
    )
}

fn event_actor(event: &ClinicEvent) -> Option<String> {
    use ClinicEvent as E;
    let user = match event {
        E::CheckedIn { patient, .. }
        | E::Reconnected { patient, .. }
        | E::Answered { patient, .. }
        | E::Declined { patient, .. } => patient,
        E::LeftQueue {
            patient, reason, ..
        } if *reason == LeftReason::Left => patient,
        E::Joined { user, .. }
        | E::CompanionWaiting { user, .. }
        | E::ConsentDecided { user, .. } => user,
        E::Left { user, reason, .. } if *reason == LeftReason::Left => user,
        // Started by the patient's answer to the doctor's invitation: the doctor's act.
        E::ConsultationStarted { doctor, .. } if !doctor.0.is_empty() => doctor,
        _ => return None,
    };
    Some(user.0.clone())
}

fn event_subject(event: &ClinicEvent) -> Option<String> {
    use ClinicEvent as E;
    let id = match event {
        E::Invited { consultation, .. }
        | E::Answered { consultation, .. }
        | E::ConsultationStarted { consultation, .. }
        | E::Joined { consultation, .. }
        | E::Left { consultation, .. }
        | E::CompanionWaiting { consultation, .. }
        | E::Admitted { consultation, .. }
        | E::ExpertInvited { consultation, .. }
        | E::ConsultationEnded { consultation, .. }
        | E::RecordingStarted { consultation, .. }
        | E::ConsentRequested { consultation, .. }
        | E::ConsentDecided { consultation, .. }
        | E::RecordingStopped { consultation, .. } => &consultation.0,
        E::CheckedIn { clinic, .. }
        | E::Reconnected { clinic, .. }
        | E::LeftQueue { clinic, .. }
        | E::MovedUp { clinic, .. }
        | E::DoctorStatus { clinic, .. } => &clinic.0,
        E::Declined { invitation, .. }
        | E::InvitationExpired { invitation, .. }
        | E::InvitationCancelled { invitation, .. } => &invitation.0,
    };
    Some(id.clone())
}

#[cfg(test)]
mod tests {
    use huizhen_signaling::clinic::{DoctorStatus, Role};

    use super::*;

    /// One of every variant.
    fn every_event() -> Vec<ClinicEvent> {
        use ClinicEvent as E;
        vec![
            E::CheckedIn {
                clinic: "k".into(),
                patient: "p".into(),
                appointment: "a".into(),
            },
            E::Reconnected {
                clinic: "k".into(),
                patient: "p".into(),
            },
            E::LeftQueue {
                clinic: "k".into(),
                patient: "p".into(),
                reason: LeftReason::Left,
            },
            E::MovedUp {
                clinic: "k".into(),
                patient: "p".into(),
            },
            E::Invited {
                clinic: "k".into(),
                patient: "p".into(),
                invitation: "i".into(),
                consultation: "c".into(),
            },
            E::Answered {
                invitation: "i".into(),
                consultation: "c".into(),
                patient: "p".into(),
            },
            E::Declined {
                invitation: "i".into(),
                consultation: "c".into(),
                patient: "p".into(),
            },
            E::InvitationExpired {
                invitation: "i".into(),
                consultation: "c".into(),
                patient: "p".into(),
            },
            E::InvitationCancelled {
                invitation: "i".into(),
                consultation: "c".into(),
                patient: "p".into(),
            },
            E::ConsultationStarted {
                consultation: "c".into(),
                room: "r".into(),
                doctor: "dr".into(),
            },
            E::Joined {
                consultation: "c".into(),
                user: "u".into(),
                role: Role::Expert,
            },
            E::Left {
                consultation: "c".into(),
                user: "u".into(),
                reason: LeftReason::GraceExpired,
            },
            E::CompanionWaiting {
                consultation: "c".into(),
                user: "u".into(),
            },
            E::Admitted {
                consultation: "c".into(),
                user: "u".into(),
            },
            E::ExpertInvited {
                consultation: "c".into(),
                link: "jti".into(),
            },
            E::ConsultationEnded {
                consultation: "c".into(),
                room: "r".into(),
                duration_ms: 5,
            },
            E::DoctorStatus {
                clinic: "k".into(),
                status: DoctorStatus::Online,
            },
            E::RecordingStarted {
                consultation: "c".into(),
                recording: "r1".into(),
            },
            E::ConsentRequested {
                consultation: "c".into(),
                recording: "r1".into(),
                user: "u".into(),
            },
            E::ConsentDecided {
                consultation: "c".into(),
                recording: "r1".into(),
                user: "u".into(),
                decision: huizhen_signaling::clinic::ConsentDecision::Refused,
            },
            E::RecordingStopped {
                consultation: "c".into(),
                recording: "r1".into(),
            },
        ]
    }

    #[test]
    fn every_kind_is_listed() {
        let kinds: Vec<&str> = every_event().iter().map(kind_of).collect();
        assert_eq!(
            kinds, EVENT_KINDS,
            "EVENT_KINDS must list every event, in order"
        );
    }

    #[test]
    fn kind_is_the_wire_tag_for_every_event() {
        for event in every_event() {
            let (kind, _, subject, details) = audit_fields(&event);
            assert_eq!(details["event"], kind, "{event:?}");
            assert!(subject.is_some(), "{event:?}");
        }
    }

    #[test]
    fn actor_is_who_the_event_says_acted() {
        let fields = |e: &ClinicEvent| {
            let (_, actor, subject, _) = audit_fields(e);
            (actor, subject)
        };
        let events = every_event();
        assert_eq!(fields(&events[0]), (Some("p".into()), Some("k".into())));
        assert_eq!(
            fields(&events[4]),
            (None, Some("c".into())),
            "the doctor is not in the event"
        );
        assert_eq!(
            fields(&events[7]),
            (None, Some("i".into())),
            "expiry is the system's doing"
        );
        assert_eq!(
            fields(&events[11]),
            (None, Some("c".into())),
            "grace expiry too"
        );
        let left = ClinicEvent::Left {
            consultation: "c".into(),
            user: "u".into(),
            reason: LeftReason::Left,
        };
        assert_eq!(fields(&left), (Some("u".into()), Some("c".into())));
    }

    #[test]
    fn sealed_entries_chain_and_survive_a_jsonl_round_trip() {
        let mut head = ChainHead::genesis();
        let mut entries = Vec::new();
        for (i, event) in every_event().iter().enumerate() {
            let (kind, actor, subject, details) = audit_fields(event);
            let e =
                AuditEntry::seal(&head, 1_000 + i as u64, kind, actor, subject, details).unwrap();
            head = ChainHead {
                seq: e.seq,
                hash: e.hash.clone(),
            };
            entries.push(e);
        }
        let mut out = Vec::new();
        export_jsonl(&entries, &mut out).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(text.lines().count(), entries.len());
        let back = read_jsonl(out.as_slice()).unwrap();
        assert_eq!(back, entries);
        assert_eq!(verify(&back).unwrap().last_hash, head.hash);
    }

    #[test]
    fn a_malformed_export_line_is_named() {
        let text = "\n{\"seq\":1}\n";
        let err = read_jsonl(text.as_bytes()).unwrap_err();
        assert!(
            matches!(err, ReadJsonlError::Malformed { line: 2, .. }),
            "{err}"
        );
    }
}
