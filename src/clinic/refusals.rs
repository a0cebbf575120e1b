//! Refusals in the audit trail, bounded: the first refusal of a kind from a source (or an
//! actor) within an interval is written as it happens; the rest of that interval are counted
//! and written as one row when it ends.
//!
//! ```text
//!  refusal ──record(now)──> first of its key this interval? ──yes──> audit row now
//!                                       │ no
//!                                       └──> count += 1
//!  poll_timeout() ──> end of interval ──flush(now)──> one row per key with repeats
//! ```
//!
//! A stranger sending thousands of bad frames thus costs at most two rows per key and interval;
//! keys are capped ([`RefusalLog::new`]'s `max_keys`) and the rest share one overflow key per
//! kind, so varying the claimed user or target does not buy more rows either. Time is passed
//! in; nothing here does I/O.

use std::collections::BTreeMap;

use huizhen_signaling::clinic::Millis;
use serde_json::{json, Value};

use crate::store::PendingAudit;

/// One refusal, as it will be audited.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// Audit kind: `refused`, `token_refused`, `api_unauthorized`.
    pub kind: &'static str,
    /// The verified user, if any.
    pub actor: Option<String>,
    /// What was targeted (a clinic, invitation, consultation or appointment id).
    pub subject: Option<String>,
    /// The refused command or request.
    pub command: String,
    /// Wire error code.
    pub code: &'static str,
    /// The keyed hash of the source address ([`crate::audit::source`]).
    pub source: Option<String>,
    /// The user a refused token claimed to be (not verified).
    pub claimed_user: Option<String>,
    /// Human-readable reason.
    pub reason: String,
}

type Key = (
    &'static str,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    &'static str,
);

#[derive(Debug)]
struct Bucket {
    first: Refused,
    repeats: u64,
    first_at: Millis,
    last_at: Millis,
}

/// The aggregator. See the module docs.
#[derive(Debug)]
pub struct RefusalLog {
    interval_ms: u64,
    max_keys: usize,
    window_end: Option<Millis>,
    buckets: BTreeMap<Key, Bucket>,
}

impl RefusalLog {
    /// Aggregate per `interval_ms`, with at most `max_keys` distinct keys per interval.
    pub fn new(interval_ms: u64, max_keys: usize) -> RefusalLog {
        RefusalLog {
            interval_ms,
            max_keys,
            window_end: None,
            buckets: BTreeMap::new(),
        }
    }

    /// Note a refusal; returns the row to write now if it is the first of its key in this
    /// interval.
    pub fn record(&mut self, now: Millis, refused: Refused) -> Option<PendingAudit> {
        let end = *self.window_end.get_or_insert(now.plus(self.interval_ms));
        let _ = end;
        // A stranger chooses the target freely: for them it is recorded, not a key (varying it
        // would buy rows). An authenticated user's targets are keys: which one they tried
        // matters, and they are accountable for the rows.
        let subject = refused.actor.as_ref().and(refused.subject.clone());
        let mut key: Key = (
            refused.kind,
            refused.actor.clone(),
            refused.source.clone(),
            subject,
            refused.command.clone(),
            refused.code,
        );
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_keys {
            key = (refused.kind, None, None, None, "*".to_owned(), "overflow");
        }
        match self.buckets.get_mut(&key) {
            Some(b) => {
                b.repeats += 1;
                b.last_at = now;
                None
            }
            None => {
                let row = row(now, &refused, None);
                self.buckets.insert(
                    key,
                    Bucket {
                        first: refused,
                        repeats: 0,
                        first_at: now,
                        last_at: now,
                    },
                );
                Some(row)
            }
        }
    }

    /// When the current interval ends (and [`RefusalLog::flush`] has work).
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.window_end
    }

    /// End the interval if it is over: one row per key that repeated, with the count.
    pub fn flush(&mut self, now: Millis) -> Vec<PendingAudit> {
        match self.window_end {
            Some(end) if end <= now => {}
            _ => return Vec::new(),
        }
        self.window_end = None;
        std::mem::take(&mut self.buckets)
            .into_values()
            .filter(|b| b.repeats > 0)
            .map(|b| row(now, &b.first, Some((b.repeats, b.first_at, b.last_at))))
            .collect()
    }
}

fn row(now: Millis, r: &Refused, repeats: Option<(u64, Millis, Millis)>) -> PendingAudit {
    let mut details = json!({
        "command": r.command,
        "code": r.code,
        "reason": r.reason,
    });
    if let Some(source) = &r.source {
        details["source"] = Value::String(source.clone());
    }
    if let Some(claimed) = &r.claimed_user {
        details["claimed_user"] = Value::String(claimed.clone());
        details["claimed_user_verified"] = Value::Bool(false);
    }
    if let Some((count, from, to)) = repeats {
        // The first of these was written when it happened; this row stands for the rest.
        details["repeated"] = json!(count);
        details["first_at_ms"] = json!(from.0);
        details["last_at_ms"] = json!(to.0);
    }
    PendingAudit {
        at_ms: now.0,
        kind: if repeats.is_some() {
            format!("{}_repeated", r.kind)
        } else {
            r.kind.to_owned()
        },
        actor: r.actor.clone(),
        subject: r.subject.clone(),
        details,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad_token(source: &str, claimed: &str) -> Refused {
        Refused {
            kind: "token_refused",
            actor: None,
            subject: None,
            command: "auth".into(),
            code: "invalid_token",
            source: Some(source.into()),
            claimed_user: Some(claimed.into()),
            reason: "bad signature".into(),
        }
    }

    #[test]
    fn ten_thousand_refusals_from_one_source_cost_two_rows() {
        let mut log = RefusalLog::new(60_000, 64);
        let mut rows = Vec::new();
        for i in 0..10_000u64 {
            rows.extend(log.record(Millis(1_000 + i), bad_token("src-a", "u")));
        }
        assert_eq!(rows.len(), 1, "the first is written at once");
        assert_eq!(rows[0].details["claimed_user_verified"], false);
        assert!(
            log.flush(Millis(30_000)).is_empty(),
            "the interval is not over"
        );
        let end = log.poll_timeout().unwrap();
        let summary = log.flush(end);
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].kind, "token_refused_repeated");
        assert_eq!(summary[0].details["repeated"], 9_999);
        assert_eq!(log.poll_timeout(), None, "nothing pending");
    }

    #[test]
    fn varying_keys_beyond_the_cap_share_one_overflow_row() {
        let mut log = RefusalLog::new(60_000, 8);
        let mut rows = 0;
        for i in 0..1_000u64 {
            rows += usize::from(
                log.record(Millis(i), bad_token(&format!("src-{i}"), &format!("u{i}")))
                    .is_some(),
            );
        }
        assert_eq!(rows, 9, "eight keys and the overflow key");
        let summary = log.flush(Millis(60_000));
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].details["code"], "invalid_token");
        assert_eq!(summary[0].details["repeated"], 1_000 - 9);
    }

    #[test]
    fn a_strangers_targets_do_not_buy_rows_but_a_users_do() {
        let mut log = RefusalLog::new(60_000, 64);
        let before_auth = |actor: Option<&str>, i: u64| Refused {
            kind: "refused",
            actor: actor.map(str::to_owned),
            subject: Some(format!("appt-{i}")),
            command: "check_in".into(),
            code: "not_authenticated",
            source: Some("src-a".into()),
            claimed_user: None,
            reason: "auth first".into(),
        };
        let stranger = (0..1_000)
            .filter(|i| log.record(Millis(*i), before_auth(None, *i)).is_some())
            .count();
        assert_eq!(stranger, 1);
        let user = (0..10)
            .filter(|i| {
                log.record(Millis(*i), before_auth(Some("pat-a"), *i))
                    .is_some()
            })
            .count();
        assert_eq!(
            user, 10,
            "each target an authenticated user tried is on record"
        );
    }

    #[test]
    fn a_new_interval_writes_the_first_refusal_again() {
        let mut log = RefusalLog::new(1_000, 8);
        assert!(log.record(Millis(0), bad_token("s", "u")).is_some());
        assert!(log.record(Millis(10), bad_token("s", "u")).is_some() == false);
        assert_eq!(log.flush(Millis(1_000)).len(), 1);
        assert!(log.record(Millis(1_001), bad_token("s", "u")).is_some());
    }
}
