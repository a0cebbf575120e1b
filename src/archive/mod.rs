//! The archive: where finished, encrypted recording segments go to be kept for years.
//!
//! Hospitals must keep consultation recordings on storage that is independent of the media
//! servers, and must never lose a segment the recorder has closed. This module is the last
//! hop of the recording data flow:
//!
//! ```text
//! recorder ──(encrypted segment, manifest)──▶ Spool::enqueue ──▶ spool dir (fsync'd)
//!                                                                   │ background task, FIFO
//!                                                                   ▼
//!                                              ArchiveStore::put ──▶ LocalStore | S3Store
//! ```
//!
//! - [`ArchiveStore`] is the storage trait: whole-object `put`/`get`/`list` under validated
//!   keys. Objects are written once: putting the same bytes again succeeds (so every upload
//!   can be retried safely), putting different bytes under an existing key is a
//!   [`ArchiveError::Conflict`].
//! - [`local::LocalStore`] keeps objects in a directory (the embedded default; put it on a
//!   disk or mount apart from the server's data). [`s3::S3Store`] speaks the S3 REST API
//!   (AWS, MinIO, Ceph RGW, …) with SigV4-signed requests, multipart upload for large objects
//!   and optional object-lock retention.
//! - [`spool::Spool`] makes the store's availability irrelevant to the recorder: `enqueue`
//!   returns as soon as the object is durable on local disk, and a background task uploads in
//!   order, retrying with capped backoff while the store is down or slow. The backlog is
//!   visible in metrics and through [`spool::Spool::backlog`].
//! - [`config::ArchiveConfig`] is the `[archive]` section and [`config::build_store`] turns
//!   it into a store.
//! - [`memory::MemoryStore`] is an in-memory store with an on/off switch, for tests of the
//!   components that write into the archive.
//!
//! Everything stored here is already encrypted by the recorder; the archive neither sees
//! plaintext nor keys, and its logs carry keys (which name recordings by opaque id, never
//! patients) but never object contents or credentials.

pub mod config;
pub mod local;
pub mod memory;
pub mod s3;
pub mod spool;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use config::{
    build_store, build_store_read_only, ArchiveBackend, ArchiveConfig, ObjectLockMode,
};
pub use local::LocalStore;
pub use memory::MemoryStore;
pub use s3::{S3Settings, S3Store};
pub use spool::{Backlog, RetryPolicy, Spool};

/// Longest accepted object key, in bytes. S3 allows 1024; staying well below leaves room for
/// a bucket path prefix and keeps local paths under common `PATH_MAX`-per-component limits.
pub const MAX_KEY_LEN: usize = 512;

/// What went wrong with an archive operation, grouped by whose fault it is, because that
/// decides what to do next: the caller's mistakes and conflicts about one object will never
/// succeed on retry, while the store being away or refusing us is retried by the spool until
/// an operator fixes it (nothing is dropped).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    // ---- The caller asked for something invalid (never retried). ----
    /// The key is not of the accepted form (see [`validate_key`]).
    #[error("invalid archive key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The object cannot be stored by this backend at all (e.g. more than 10 000 multipart
    /// parts).
    #[error("object {key:?} is too large: {reason}")]
    TooLarge {
        /// The key.
        key: String,
        /// Which limit it exceeds.
        reason: String,
    },

    // ---- The store's contents disagree with the request (never retried). ----
    /// No object under this key.
    #[error("archive object {key:?} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// An object with different content already exists under this key. Archived objects are
    /// written once; this usually means two recordings were given the same id.
    #[error("archive object {key:?} already exists with different content")]
    Conflict {
        /// The key.
        key: String,
    },
    /// The store was opened read-only (e.g. by a verification tool).
    #[error("archive store is read-only")]
    ReadOnly,

    // ---- The store is away, slow or broken (retried by the spool). ----
    /// No connection: refused, reset, DNS or TLS failure.
    #[error("archive store {store} unreachable: {reason}")]
    Unreachable {
        /// [`ArchiveStore::describe`] of the store.
        store: String,
        /// The transport error, without URLs (they carry signatures).
        reason: String,
    },
    /// No complete answer within the configured timeout.
    #[error("archive store {store} did not answer within {after:?}")]
    Timeout {
        /// [`ArchiveStore::describe`] of the store.
        store: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The store answered with an error status we have no better name for (5xx, or a 4xx
    /// such as `NoSuchBucket`).
    #[error("archive store answered HTTP {status}{}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Server {
        /// The HTTP status.
        status: u16,
        /// The S3 error code from the body, when there is one.
        code: Option<String>,
    },
    /// The store answered with something we could not understand.
    #[error("archive store sent an unexpected answer: {0}")]
    Protocol(String),
    /// A local file operation failed (local store or spool directory).
    #[error("archive I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    // ---- The store refused our credentials (retried: the operator must fix them). ----
    /// HTTP 401/403: wrong access key or secret, a clock skewed past the signature window,
    /// or a bucket policy that forbids the operation.
    #[error("archive store denied the request: HTTP {status}{}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Denied {
        /// The HTTP status.
        status: u16,
        /// The S3 error code from the body (e.g. `SignatureDoesNotMatch`).
        code: Option<String>,
    },

    // ---- Setup errors (operator or programming). ----
    /// Operator error: an `[archive]` field is missing, out of range or inconsistent.
    #[error("config field `{field}`: {message}")]
    Config {
        /// Dotted field name, e.g. `archive.endpoint`.
        field: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// Another spool (another server process) already uses this spool directory.
    #[error("spool directory {0} is in use by another process")]
    SpoolLocked(PathBuf),
    /// Environment error: the HTTP client (TLS setup) could not be built.
    #[error("cannot build S3 HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// Programming error: the metrics are already registered in this registry.
    #[error("cannot register archive metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Programming error: a component that spawns tasks was started outside a tokio runtime.
    #[error("the archive spool must be started inside a tokio runtime")]
    NoRuntime,
}

impl ArchiveError {
    /// Whether this error is about the object itself, so that retrying the same put can
    /// never succeed. The spool sets such objects aside instead of blocking the queue on them;
    /// every other error is about the store (or the way to it) and is worth retrying.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ArchiveError::InvalidKey { .. }
                | ArchiveError::TooLarge { .. }
                | ArchiveError::Conflict { .. }
        )
    }

    /// A short, fixed label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ArchiveError::InvalidKey { .. } => "invalid_key",
            ArchiveError::TooLarge { .. } => "too_large",
            ArchiveError::NotFound { .. } => "not_found",
            ArchiveError::Conflict { .. } => "conflict",
            ArchiveError::ReadOnly => "read_only",
            ArchiveError::Unreachable { .. } => "unreachable",
            ArchiveError::Timeout { .. } => "timeout",
            ArchiveError::Server { .. } => "server",
            ArchiveError::Protocol(_) => "protocol",
            ArchiveError::Io { .. } => "io",
            ArchiveError::Denied { .. } => "denied",
            ArchiveError::Config { .. } => "config",
            ArchiveError::SpoolLocked(_) => "spool_locked",
            ArchiveError::Client(_) => "client",
            ArchiveError::Metrics(_) => "metrics",
            ArchiveError::NoRuntime => "no_runtime",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> ArchiveError {
        ArchiveError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Per-object options for [`ArchiveStore::put`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PutOptions {
    /// Keep the object undeletable until this unix time (seconds), where the store supports
    /// it (S3 object lock). `None` takes the store's configured default retention, if any.
    pub retention_until: Option<u64>,
}

/// One entry of [`ArchiveStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The full key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// A place that keeps archived objects.
///
/// Objects are immutable once written: `put` of identical bytes under an existing key is a
/// success (so a retried upload whose first answer was lost is harmless), different bytes are
/// a [`ArchiveError::Conflict`]. Implementations must be safe to call concurrently.
#[async_trait]
pub trait ArchiveStore: Send + Sync {
    /// Store `bytes` under `key`. Returns only once the store has the whole object durably.
    async fn put(&self, key: &str, bytes: Bytes, options: PutOptions) -> Result<(), ArchiveError>;

    /// The whole object under `key`; [`ArchiveError::NotFound`] when there is none.
    async fn get(&self, key: &str) -> Result<Bytes, ArchiveError>;

    /// Every object whose key starts with `prefix` (`""` for all), sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ArchiveError>;

    /// Where this store is, for logs: backend and location, never credentials.
    fn describe(&self) -> String;
}

/// Check that `key` is a well-formed archive key.
///
/// Keys look like `recordings/<recording_id>/<track>/<index>.seg`: `/`-separated segments of
/// ASCII letters, digits, `.`, `_` and `-`. The rules are stricter than S3's on purpose: the
/// same key must be a safe relative path in a local directory (no `..`, no absolute paths,
/// no hidden files, which the local store uses for temporaries) and a URL path that needs no
/// escaping, so both backends store exactly the same names.
pub fn validate_key(key: &str) -> Result<(), ArchiveError> {
    let invalid = |reason| {
        Err(ArchiveError::InvalidKey {
            key: key.chars().take(MAX_KEY_LEN).collect(),
            reason,
        })
    };
    if key.is_empty() {
        return invalid("is empty");
    }
    if key.len() > MAX_KEY_LEN {
        return invalid("is longer than 512 bytes");
    }
    if key.starts_with('/') {
        return invalid("starts with '/'");
    }
    if key.ends_with('/') {
        return invalid("ends with '/'");
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return invalid("has an empty path segment ('//')");
        }
        if segment == "." || segment == ".." {
            return invalid("has a '.' or '..' segment");
        }
        if segment.starts_with('.') {
            return invalid("has a segment starting with '.'");
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return invalid("may contain only ASCII letters, digits, '.', '_', '-' and '/'");
        }
    }
    Ok(())
}

/// Check a list prefix: empty, or a key prefix that could begin a valid key (a trailing `/`
/// is allowed, and the last segment may be partial).
pub fn validate_prefix(prefix: &str) -> Result<(), ArchiveError> {
    if prefix.is_empty() {
        return Ok(());
    }
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    validate_key(trimmed).map_err(|e| match e {
        ArchiveError::InvalidKey { reason, .. } => ArchiveError::InvalidKey {
            key: prefix.chars().take(MAX_KEY_LEN).collect(),
            reason,
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_recording_keys() {
        for key in [
            "recordings/r-123/audio-1/000001.seg",
            "recordings/r-123/manifest.json",
            "a",
            "A_b-c.d/e",
        ] {
            validate_key(key).unwrap();
        }
    }

    #[test]
    fn refuses_traversal_absolute_and_odd_keys() {
        for (key, why) in [
            ("", "is empty"),
            ("/etc/passwd", "starts with '/'"),
            ("recordings/../secret", "has a '.' or '..' segment"),
            ("..", "has a '.' or '..' segment"),
            ("recordings/./x", "has a '.' or '..' segment"),
            ("recordings//x", "has an empty path segment ('//')"),
            ("recordings/x/", "ends with '/'"),
            ("recordings/.tmp-1", "has a segment starting with '.'"),
            (
                "recordings/a b",
                "may contain only ASCII letters, digits, '.', '_', '-' and '/'",
            ),
            (
                "recordings/a\\..\\b",
                "may contain only ASCII letters, digits, '.', '_', '-' and '/'",
            ),
            (
                "recordings/病人",
                "may contain only ASCII letters, digits, '.', '_', '-' and '/'",
            ),
        ] {
            match validate_key(key) {
                Err(ArchiveError::InvalidKey { reason, .. }) => assert_eq!(reason, why, "{key:?}"),
                other => panic!("{key:?} gave {other:?}"),
            }
        }
        let long = "a/".repeat(300) + "b";
        assert!(validate_key(&long).is_err());
    }

    #[test]
    fn prefixes_may_end_with_a_slash_or_be_empty() {
        validate_prefix("").unwrap();
        validate_prefix("recordings/").unwrap();
        validate_prefix("recordings/r-1").unwrap();
        assert!(validate_prefix("/recordings").is_err());
        assert!(validate_prefix("recordings/../").is_err());
        assert!(validate_prefix("recordings//").is_err());
    }

    #[test]
    fn only_object_errors_are_permanent() {
        assert!(ArchiveError::Conflict { key: "k".into() }.is_permanent());
        assert!(!ArchiveError::Denied {
            status: 403,
            code: None
        }
        .is_permanent());
        assert!(!ArchiveError::Server {
            status: 503,
            code: None
        }
        .is_permanent());
        let e = ArchiveError::Denied {
            status: 403,
            code: Some("SignatureDoesNotMatch".into()),
        };
        assert_eq!(
            e.to_string(),
            "archive store denied the request: HTTP 403 (SignatureDoesNotMatch)"
        );
    }
}
