//! The hash chain: the canonical bytes of an entry, its hash, and verification of a sequence.
//!
//! Everything here is pure (no I/O, no clock), so a verifier can run anywhere the entries can
//! be read: against the live database, an exported JSON-lines file, or a backup. The encoding is
//! specified in the [parent module's documentation](super) so it can be re-implemented
//! independently; [`canonical_json`] and [`compute_hash`] are its reference implementation.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::AuditEntry;

/// `prev_hash` of entry 1: 32 zero bytes, hex-encoded.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Why a sequence of entries is not an intact chain. Every variant names the first entry (by
/// `seq`) at which the chain breaks; entries before it are intact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// An entry is missing, duplicated or out of order: `seq` came where `expected` should be.
    #[error("audit entry {seq} found where {expected} was expected (entries missing, duplicated or reordered)")]
    UnexpectedSeq {
        /// The entry found.
        seq: u64,
        /// The entry that should have been there.
        expected: u64,
    },
    /// The entry does not link to its predecessor (the predecessor was altered or removed).
    #[error("audit entry {seq} does not link to its predecessor: prev_hash {found}, predecessor's hash {expected}")]
    PrevHashMismatch {
        /// The entry.
        seq: u64,
        /// The predecessor's hash.
        expected: String,
        /// The entry's `prev_hash`.
        found: String,
    },
    /// The entry's content does not match its hash (the entry itself was altered).
    #[error("audit entry {seq} was altered: stored hash {stored}, content hashes to {computed}")]
    HashMismatch {
        /// The entry.
        seq: u64,
        /// Its stored `hash`.
        stored: String,
        /// The hash of its content.
        computed: String,
    },
    /// `details` holds a number that is not an integer, which the canonical form excludes.
    #[error("audit entry {seq} holds a non-integer number in its details")]
    NonIntegerNumber {
        /// The entry.
        seq: u64,
    },
    /// A hash field is not 64 lowercase hex digits, so nothing can be computed from it.
    #[error("audit entry {seq} has a malformed prev_hash {value:?}")]
    MalformedHash {
        /// The entry.
        seq: u64,
        /// The value found.
        value: String,
    },
}

impl ChainError {
    /// The first entry at which the chain breaks.
    pub fn seq(&self) -> u64 {
        match self {
            ChainError::UnexpectedSeq { seq, .. }
            | ChainError::PrevHashMismatch { seq, .. }
            | ChainError::HashMismatch { seq, .. }
            | ChainError::NonIntegerNumber { seq }
            | ChainError::MalformedHash { seq, .. } => *seq,
        }
    }
}

/// The last entry of a verified (or freshly written) chain: what the next entry links to.
///
/// Publishing the head from time to time (a log line, a ticket, an e-mail to the compliance
/// office) is what makes truncation of the newest entries detectable: the chain alone cannot
/// tell a log whose tail was cut from a shorter one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// `seq` of the last entry; 0 for an empty chain.
    pub seq: u64,
    /// `hash` of the last entry; [`GENESIS_HASH`] for an empty chain.
    pub hash: String,
}

impl ChainHead {
    /// The head of an empty chain.
    pub fn genesis() -> ChainHead {
        ChainHead {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        }
    }
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// How many entries were checked.
    pub entries: usize,
    /// `seq` of the last entry checked (the start's `seq` if none were).
    pub last_seq: u64,
    /// `hash` of the last entry checked: publish it to anchor the chain.
    pub last_hash: String,
}

impl VerifyReport {
    /// The head to continue verifying from (e.g. with the next page of entries).
    pub fn head(&self) -> ChainHead {
        ChainHead {
            seq: self.last_seq,
            hash: self.last_hash.clone(),
        }
    }
}

/// Verify a whole chain, from entry 1.
pub fn verify(entries: &[AuditEntry]) -> Result<VerifyReport, ChainError> {
    verify_from(&ChainHead::genesis(), entries)
}

/// Verify `entries` as the continuation of a chain whose last intact entry is `start` (so a
/// long log can be verified page by page, passing [`VerifyReport::head`] along).
///
/// Per entry, in this order: its `seq` follows the previous one, its `prev_hash` is the previous
/// entry's `hash`, and its `hash` is the hash of its content. So an altered entry is reported as
/// [`ChainError::HashMismatch`] at its own `seq`; an altered entry whose hash was recomputed
/// breaks the link at the next `seq`; a removed entry is reported at the `seq` after it.
pub fn verify_from(start: &ChainHead, entries: &[AuditEntry]) -> Result<VerifyReport, ChainError> {
    let mut head = start.clone();
    for entry in entries {
        check_link(&head, entry)?;
        let computed = compute_hash(entry)?;
        if computed != entry.hash {
            return Err(ChainError::HashMismatch {
                seq: entry.seq,
                stored: entry.hash.clone(),
                computed,
            });
        }
        head = ChainHead {
            seq: entry.seq,
            hash: computed,
        };
    }
    Ok(VerifyReport {
        entries: entries.len(),
        last_seq: head.seq,
        last_hash: head.hash,
    })
}

fn check_link(head: &ChainHead, entry: &AuditEntry) -> Result<(), ChainError> {
    let expected = head.seq + 1;
    if entry.seq != expected {
        return Err(ChainError::UnexpectedSeq {
            seq: entry.seq,
            expected,
        });
    }
    if entry.prev_hash != head.hash {
        return Err(ChainError::PrevHashMismatch {
            seq: entry.seq,
            expected: head.hash.clone(),
            found: entry.prev_hash.clone(),
        });
    }
    Ok(())
}

/// The hash an entry should carry: lowercase hex of
/// `SHA-256(bytes of prev_hash || canonical_entry_bytes(entry))`, where the 32 bytes of
/// `prev_hash` are its hex decoded. Ignores the entry's own `hash`.
pub fn compute_hash(entry: &AuditEntry) -> Result<String, ChainError> {
    let prev = decode_hash(&entry.prev_hash).ok_or_else(|| ChainError::MalformedHash {
        seq: entry.seq,
        value: entry.prev_hash.clone(),
    })?;
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(canonical_entry_bytes(entry)?);
    Ok(hex::encode(hasher.finalize()))
}

/// 64 lowercase hex digits to 32 bytes. Uppercase is refused so that each hash has exactly one
/// spelling and string comparison of hashes is exact.
fn decode_hash(hash: &str) -> Option<[u8; 32]> {
    let canonical =
        hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !canonical {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hash, &mut out).ok()?;
    Some(out)
}

/// The canonical bytes of an entry's content: the canonical JSON (see [`canonical_json`]) of
/// the object `{"actor", "at_ms", "details", "kind", "seq", "subject"}` (keys in that, sorted,
/// order; `actor` and `subject` are `null` when absent). `prev_hash` and `hash` are not part
/// of it.
pub fn canonical_entry_bytes(entry: &AuditEntry) -> Result<Vec<u8>, ChainError> {
    let details =
        canonical_json(&entry.details).ok_or(ChainError::NonIntegerNumber { seq: entry.seq })?;
    let mut out = Vec::with_capacity(details.len() + 128);
    out.extend_from_slice(b"{\"actor\":");
    write_optional_string(entry.actor.as_deref(), &mut out);
    out.extend_from_slice(b",\"at_ms\":");
    out.extend_from_slice(entry.at_ms.to_string().as_bytes());
    out.extend_from_slice(b",\"details\":");
    out.extend_from_slice(&details);
    out.extend_from_slice(b",\"kind\":");
    write_string(&entry.kind, &mut out);
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(entry.seq.to_string().as_bytes());
    out.extend_from_slice(b",\"subject\":");
    write_optional_string(entry.subject.as_deref(), &mut out);
    out.push(b'}');
    Ok(out)
}

/// Canonical JSON of a value: no whitespace, object keys sorted by Unicode code point (equal to
/// sorting their UTF-8 bytes), strings as UTF-8 with only `"`, `\` and U+0000..U+001F escaped
/// (`\b \f \n \r \t`, otherwise `\u00xx` in lowercase hex), integers in plain decimal.
///
/// `None` if the value holds a number that is not an integer in the range of `i64` or `u64`:
/// float text does not survive every JSON parser bit for bit, and an entry that re-verifies
/// differently on another machine would be a false alarm of tampering, so such entries are
/// refused rather than hashed.
///
/// Written out here rather than left to `serde_json::to_vec` because key order must not depend
/// on whether some crate in the build enables serde_json's `preserve_order` feature.
pub fn canonical_json(value: &Value) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    write_canonical(value, &mut out)?;
    Some(out)
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) -> Option<()> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => out.extend_from_slice(integer_text(n)?.as_bytes()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut fields: Vec<(&String, &Value)> = map.iter().collect();
            fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, item)) in fields.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_canonical(item, out)?;
            }
            out.push(b'}');
        }
    }
    Some(())
}

fn integer_text(n: &serde_json::Number) -> Option<String> {
    n.as_u64()
        .map(|u| u.to_string())
        .or_else(|| n.as_i64().map(|i| i.to_string()))
}

fn write_optional_string(s: Option<&str>, out: &mut Vec<u8>) {
    match s {
        Some(s) => write_string(s, out),
        None => out.extend_from_slice(b"null"),
    }
}

/// serde_json's string escaping is exactly the one specified above; writing a `&str` into a
/// `Vec` cannot fail.
fn write_string(s: &str, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entry(seq: u64, prev_hash: &str, details: Value) -> AuditEntry {
        let mut e = AuditEntry {
            seq,
            at_ms: 1_800_000_000_000 + seq,
            kind: "checked_in".into(),
            actor: Some("wang".into()),
            subject: Some("cardio".into()),
            details,
            prev_hash: prev_hash.into(),
            hash: String::new(),
        };
        e.hash = compute_hash(&e).unwrap();
        e
    }

    fn chain(n: u64) -> Vec<AuditEntry> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let e = entry(seq, &prev, json!({ "n": seq }));
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level_and_escapes_minimally() {
        let v = json!({
            "b": [1, {"z": null, "a": true}],
            "a": "say \"hi\"\n\u{1}é/中",
            "B": -7,
        });
        assert_eq!(
            String::from_utf8(canonical_json(&v).unwrap()).unwrap(),
            r#"{"B":-7,"a":"say \"hi\"\n\u0001é/中","b":[1,{"a":true,"z":null}]}"#
        );
    }

    /// A known-answer vector, computed independently with Python:
    /// `hashlib.sha256(bytes(32) + json.dumps(obj, sort_keys=True, separators=(",", ":"),
    /// ensure_ascii=False).encode()).hexdigest()`.
    #[test]
    fn hash_matches_an_independent_implementation() {
        let e = AuditEntry {
            seq: 1,
            at_ms: 1_800_000_000_000,
            kind: "checked_in".into(),
            actor: Some("王芳".into()),
            subject: Some("cardio".into()),
            details: json!({"event": "checked_in", "clinic": "cardio", "patient": "王芳", "appointment": "a1"}),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        };
        assert_eq!(
            String::from_utf8(canonical_entry_bytes(&e).unwrap()).unwrap(),
            r#"{"actor":"王芳","at_ms":1800000000000,"details":{"appointment":"a1","clinic":"cardio","event":"checked_in","patient":"王芳"},"kind":"checked_in","seq":1,"subject":"cardio"}"#
        );
        assert_eq!(compute_hash(&e).unwrap(), KNOWN_ANSWER);
    }

    const KNOWN_ANSWER: &str = "18020152ec25d15daf0eaea56b2bd861fc333e29d9dabca390df81e3f3cb51de";

    #[test]
    fn floats_have_no_canonical_form() {
        assert_eq!(
            canonical_json(&json!({"ok": [u64::MAX, i64::MIN]}))
                .map(String::from_utf8)
                .unwrap()
                .unwrap(),
            format!("{{\"ok\":[{},{}]}}", u64::MAX, i64::MIN)
        );
        assert_eq!(canonical_json(&json!({"bitrate": 1.5})), None);
        let mut e = chain(1).remove(0);
        e.details = json!([0.1]);
        assert_eq!(
            compute_hash(&e),
            Err(ChainError::NonIntegerNumber { seq: 1 })
        );
    }

    #[test]
    fn intact_chain_verifies_and_reports_its_head() {
        let entries = chain(5);
        let report = verify(&entries).unwrap();
        assert_eq!(report.entries, 5);
        assert_eq!(report.last_seq, 5);
        assert_eq!(report.last_hash, entries[4].hash);
        let empty = verify(&[]).unwrap();
        assert_eq!(
            (empty.entries, empty.last_seq, empty.last_hash.as_str()),
            (0, 0, GENESIS_HASH)
        );
    }

    #[test]
    fn verification_continues_page_by_page() {
        let entries = chain(6);
        let first = verify(&entries[..3]).unwrap();
        let second = verify_from(&first.head(), &entries[3..]).unwrap();
        assert_eq!(second.last_seq, 6);
        assert_eq!(
            verify_from(&first.head(), &entries[4..]).unwrap_err().seq(),
            5
        );
    }

    #[test]
    fn altered_content_is_named_by_its_seq() {
        let mut entries = chain(5);
        entries[2].details = json!({ "n": 33 });
        assert!(matches!(
            verify(&entries),
            Err(ChainError::HashMismatch { seq: 3, .. })
        ));
    }

    #[test]
    fn rehashed_alteration_breaks_the_next_link() {
        let mut entries = chain(5);
        entries[2].at_ms += 1;
        entries[2].hash = compute_hash(&entries[2]).unwrap();
        assert!(matches!(
            verify(&entries),
            Err(ChainError::PrevHashMismatch { seq: 4, .. })
        ));
    }

    #[test]
    fn removal_and_reordering_are_detected() {
        let mut removed = chain(5);
        removed.remove(2);
        assert_eq!(
            verify(&removed),
            Err(ChainError::UnexpectedSeq {
                seq: 4,
                expected: 3
            })
        );
        let mut swapped = chain(5);
        swapped.swap(1, 2);
        assert_eq!(
            verify(&swapped),
            Err(ChainError::UnexpectedSeq {
                seq: 3,
                expected: 2
            })
        );
    }

    #[test]
    fn malformed_or_uppercase_hashes_are_refused() {
        let mut entries = chain(1);
        entries[0].prev_hash = GENESIS_HASH.to_uppercase().replace('0', "A");
        assert!(matches!(
            compute_hash(&entries[0]),
            Err(ChainError::MalformedHash { seq: 1, .. })
        ));
        let good = chain(1);
        let head = ChainHead {
            seq: 0,
            hash: "zz".into(),
        };
        assert!(matches!(
            verify_from(&head, &good),
            Err(ChainError::PrevHashMismatch { seq: 1, .. })
        ));
    }
}
