//! Revoked tokens: by token id (`jti`), or every token of a user issued up to a moment.
//!
//! A revocation matters only while a token it covers could still verify, so each row carries
//! `keep_until_s` (the token's expiry, or the longest token lifetime after the revocation) and
//! is not loaded after it. The rows are written in the same transaction as the audit entry
//! that records the revocation.

use rusqlite::{params, Connection};

use super::{from_db, to_db, StoreError};

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Revocation {
    /// One token, by its `jti`.
    Token {
        /// The token id.
        jti: String,
        /// When the row stops mattering (seconds since the epoch).
        keep_until_s: u64,
    },
    /// Every token of `user` issued at or before `issued_up_to_s`.
    User {
        /// The user id.
        user: String,
        /// Tokens with `iat` up to this (seconds) are revoked.
        issued_up_to_s: u64,
        /// When the row stops mattering (seconds since the epoch).
        keep_until_s: u64,
    },
}

impl Revocation {
    /// Whether a token with this `jti`, subject and issue time is revoked.
    pub fn covers(&self, jti: Option<&str>, user: &str, iat: u64) -> bool {
        match self {
            Revocation::Token { jti: revoked, .. } => jti == Some(revoked.as_str()),
            Revocation::User {
                user: revoked,
                issued_up_to_s,
                ..
            } => revoked == user && iat <= *issued_up_to_s,
        }
    }
}

pub(super) fn insert(tx: &Connection, r: &Revocation) -> Result<(), StoreError> {
    let (kind, id, up_to, keep) = match r {
        Revocation::Token { jti, keep_until_s } => ("token", jti, 0, *keep_until_s),
        Revocation::User {
            user,
            issued_up_to_s,
            keep_until_s,
        } => ("user", user, *issued_up_to_s, *keep_until_s),
    };
    tx.prepare_cached(
        "INSERT INTO revocations (kind, id, issued_up_to_s, keep_until_s) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (kind, id) DO UPDATE SET
             issued_up_to_s = excluded.issued_up_to_s, keep_until_s = excluded.keep_until_s",
    )?
    .execute(params![
        kind,
        id,
        to_db("issued_up_to_s", up_to)?,
        to_db("keep_until_s", keep)?
    ])?;
    Ok(())
}

pub(super) fn load(conn: &Connection, now_secs: u64) -> Result<Vec<Revocation>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT kind, id, issued_up_to_s, keep_until_s FROM revocations WHERE keep_until_s > ?1",
    )?;
    let rows: Vec<(String, String, i64, i64)> = statement
        .query_map([to_db("now", now_secs)?], |r| r.try_into())?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(kind, id, up_to, keep)| {
            let keep_until_s = from_db("revocation keep_until_s", keep)?;
            match kind.as_str() {
                "token" => Ok(Revocation::Token {
                    jti: id,
                    keep_until_s,
                }),
                "user" => Ok(Revocation::User {
                    user: id,
                    issued_up_to_s: from_db("revocation issued_up_to_s", up_to)?,
                    keep_until_s,
                }),
                other => Err(StoreError::Corrupt(format!("revocation kind {other:?}"))),
            }
        })
        .collect()
}
