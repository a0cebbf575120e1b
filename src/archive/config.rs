//! The `[archive]` configuration section and the store it describes.
//!
//! ```toml
//! [archive]
//! backend = "s3"                       # or "local" (the default)
//! local_dir = "huizhen-archive"        # local backend: apart from the server's data dir
//! spool_dir = "/var/lib/huizhen/spool" # segments wait here while the store is away (default: <data_dir>/spool)
//! endpoint = "https://minio.hospital.internal:9000"
//! region = "us-east-1"
//! bucket = "huizhen-recordings"
//! access_key = "huizhen"
//! secret_key_env = "HUIZHEN_S3_SECRET" # or secret_key = "..." (kept out of logs)
//! path_style = true
//! object_lock_mode = "compliance"      # or "governance"; needs a bucket with object lock
//! retention_days = 1095                # three years
//! ```
//!
//! Validation runs at start-up and names the offending `archive.*` field, so a typo in the
//! S3 settings is found when the server starts, not at the first recording.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::s3::{S3Settings, S3Store, DEFAULT_MULTIPART_THRESHOLD, MIN_PART_SIZE};
use super::spool::RetryPolicy;
use super::{ArchiveError, ArchiveStore, LocalStore};
use crate::redact::Redacted;

/// Which store recordings are archived to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveBackend {
    /// A directory ([`LocalStore`]).
    Local,
    /// An S3-compatible bucket ([`S3Store`]).
    S3,
}

/// S3 object-lock retention mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectLockMode {
    /// Nobody, not even the root account, can delete or shorten retention before it ends:
    /// what medical-record rules ask for.
    Compliance,
    /// Users with a special permission can lift the lock; useful while trialling retention.
    Governance,
}

impl ObjectLockMode {
    /// The `x-amz-object-lock-mode` header value.
    pub fn header_value(self) -> &'static str {
        match self {
            ObjectLockMode::Compliance => "COMPLIANCE",
            ObjectLockMode::Governance => "GOVERNANCE",
        }
    }
}

/// Archive settings (the `[archive]` section).
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// `"local"` or `"s3"`.
    pub backend: ArchiveBackend,
    /// Local backend: the archive directory. Put it on another disk or mount than the
    /// server's data, so one disk failure cannot take both.
    pub local_dir: PathBuf,
    /// Where encrypted objects wait until the store has them.
    pub spool_dir: Option<PathBuf>,
    /// S3: endpoint URL. `https://`, or `http://` to a loopback address only.
    pub endpoint: Option<String>,
    /// S3: signing region.
    pub region: String,
    /// S3: bucket name (must exist).
    pub bucket: Option<String>,
    /// S3: access key id.
    pub access_key: Option<String>,
    /// S3: secret access key, inline. Prefer `secret_key_env`.
    pub secret_key: Option<String>,
    /// S3: name of the environment variable holding the secret access key.
    pub secret_key_env: Option<String>,
    /// S3: path-style addressing (`endpoint/bucket/key`), needed for IP endpoints and most
    /// on-premises servers (MinIO, Ceph, s3s).
    pub path_style: bool,
    /// S3: objects larger than this are sent as multipart uploads.
    pub multipart_threshold_bytes: u64,
    /// S3: multipart part size, at least 5 MiB.
    pub multipart_part_bytes: u64,
    /// S3: object-lock mode for archived objects; unset sends no lock headers.
    pub object_lock_mode: Option<ObjectLockMode>,
    /// S3: retention in days, with `object_lock_mode`; unset leaves the bucket's default
    /// retention in charge.
    pub retention_days: Option<u32>,
    /// S3: timeout of one request, in seconds.
    pub timeout_secs: u64,
    /// S3: PEM file with extra root certificates (a hospital's private CA).
    pub ca_file: Option<PathBuf>,
    /// Spool: wait before the first retry after a failed upload, in milliseconds; doubles
    /// per consecutive failure.
    pub retry_initial_ms: u64,
    /// Spool: longest wait between retries, in milliseconds.
    pub retry_max_ms: u64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            backend: ArchiveBackend::Local,
            local_dir: PathBuf::from("huizhen-archive"),
            spool_dir: None,
            endpoint: None,
            region: "us-east-1".into(),
            bucket: None,
            access_key: None,
            secret_key: None,
            secret_key_env: None,
            path_style: true,
            multipart_threshold_bytes: DEFAULT_MULTIPART_THRESHOLD,
            multipart_part_bytes: DEFAULT_MULTIPART_THRESHOLD,
            object_lock_mode: None,
            retention_days: None,
            timeout_secs: 60,
            ca_file: None,
            retry_initial_ms: 1_000,
            retry_max_ms: 60_000,
        }
    }
}

/// The secret must never reach a log line, even through `{config:?}` at start-up.
impl fmt::Debug for ArchiveConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArchiveConfig")
            .field("backend", &self.backend)
            .field("local_dir", &self.local_dir)
            .field("spool_dir", &self.spool_dir)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .field("secret_key", &self.secret_key.as_ref().map(Redacted))
            .field("secret_key_env", &self.secret_key_env)
            .field("path_style", &self.path_style)
            .field("multipart_threshold_bytes", &self.multipart_threshold_bytes)
            .field("multipart_part_bytes", &self.multipart_part_bytes)
            .field("object_lock_mode", &self.object_lock_mode)
            .field("retention_days", &self.retention_days)
            .field("timeout_secs", &self.timeout_secs)
            .field("ca_file", &self.ca_file)
            .field("retry_initial_ms", &self.retry_initial_ms)
            .field("retry_max_ms", &self.retry_max_ms)
            .finish()
    }
}

impl ArchiveConfig {
    /// Check ranges and cross-field rules; errors name the `archive.*` field.
    ///
    /// Numeric fields are checked whatever the backend, so a typo is caught the day it is
    /// written rather than the day S3 is switched on. Does not read the environment: that
    /// happens in [`build_store`].
    pub fn validate(&self) -> Result<(), ArchiveError> {
        let invalid = |field: &'static str, message: &str| {
            Err(ArchiveError::Config {
                field,
                message: message.to_owned(),
            })
        };
        if self
            .spool_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return invalid("archive.spool_dir", "must not be empty");
        }
        if self.multipart_part_bytes < MIN_PART_SIZE || self.multipart_part_bytes > 5 << 30 {
            return invalid(
                "archive.multipart_part_bytes",
                "must be within 5242880..=5368709120 (5 MiB to 5 GiB, the S3 limits)",
            );
        }
        if self.multipart_threshold_bytes < MIN_PART_SIZE
            || self.multipart_threshold_bytes > 5 << 30
        {
            return invalid(
                "archive.multipart_threshold_bytes",
                "must be within 5242880..=5368709120 (5 MiB to 5 GiB, the S3 limits)",
            );
        }
        if !(1..=3_600).contains(&self.timeout_secs) {
            return invalid("archive.timeout_secs", "must be within 1..=3600");
        }
        if !(1..=3_600_000).contains(&self.retry_initial_ms) {
            return invalid("archive.retry_initial_ms", "must be within 1..=3600000");
        }
        if self.retry_max_ms < self.retry_initial_ms || self.retry_max_ms > 3_600_000 {
            return invalid(
                "archive.retry_max_ms",
                "must be at least retry_initial_ms and at most 3600000 (one hour)",
            );
        }
        if let Some(days) = self.retention_days {
            if !(1..=36_500).contains(&days) {
                return invalid("archive.retention_days", "must be within 1..=36500");
            }
            if self.object_lock_mode.is_none() {
                return invalid(
                    "archive.retention_days",
                    "needs archive.object_lock_mode (\"compliance\" or \"governance\")",
                );
            }
        }
        if self.secret_key.is_some() && self.secret_key_env.is_some() {
            return invalid(
                "archive.secret_key",
                "set either secret_key or secret_key_env, not both",
            );
        }
        match self.backend {
            ArchiveBackend::Local => {
                if self.local_dir.as_os_str().is_empty() {
                    return invalid("archive.local_dir", "must not be empty");
                }
                Ok(())
            }
            ArchiveBackend::S3 => self.validate_s3(),
        }
    }

    fn validate_s3(&self) -> Result<(), ArchiveError> {
        let invalid =
            |field: &'static str, message: String| Err(ArchiveError::Config { field, message });
        let Some(endpoint) = &self.endpoint else {
            return invalid(
                "archive.endpoint",
                "required when archive.backend = \"s3\"".into(),
            );
        };
        if let Err(message) = check_endpoint(endpoint) {
            return invalid("archive.endpoint", message);
        }
        match &self.bucket {
            None => return invalid("archive.bucket", "required when archive.backend = \"s3\"".into()),
            Some(b) if !valid_bucket_name(b) => {
                return invalid(
                    "archive.bucket",
                    "must be 3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit".into(),
                )
            }
            Some(_) => {}
        }
        if self.region.is_empty()
            || !self
                .region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return invalid(
                "archive.region",
                "must be a region name like us-east-1".into(),
            );
        }
        match &self.access_key {
            None => {
                return invalid(
                    "archive.access_key",
                    "required when archive.backend = \"s3\"".into(),
                )
            }
            Some(k) if k.is_empty() => {
                return invalid("archive.access_key", "must not be empty".into())
            }
            Some(_) => {}
        }
        match (&self.secret_key, &self.secret_key_env) {
            (None, None) => invalid(
                "archive.secret_key_env",
                "required when archive.backend = \"s3\" (or set archive.secret_key)".into(),
            ),
            (Some(s), None) if s.is_empty() => {
                invalid("archive.secret_key", "must not be empty".into())
            }
            (None, Some(var)) if var.is_empty() => invalid(
                "archive.secret_key_env",
                "must name an environment variable".into(),
            ),
            _ => Ok(()),
        }
    }

    /// The spool's retry schedule.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(self.retry_initial_ms),
            max: Duration::from_millis(self.retry_max_ms),
        }
    }

    /// The S3 settings, with the secret looked up through `env` (the process environment in
    /// [`build_store`]; a map in tests). Validates first.
    pub fn s3_settings(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<S3Settings, ArchiveError> {
        self.validate()?;
        let missing = |field| ArchiveError::Config {
            field,
            message: "required when archive.backend = \"s3\"".into(),
        };
        let secret_key = match (&self.secret_key, &self.secret_key_env) {
            (Some(secret), _) => secret.clone(),
            (None, Some(var)) => {
                env(var)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| ArchiveError::Config {
                        field: "archive.secret_key_env",
                        message: format!("environment variable {var} is not set or empty"),
                    })?
            }
            (None, None) => return Err(missing("archive.secret_key_env")),
        };
        Ok(S3Settings {
            endpoint: self
                .endpoint
                .clone()
                .ok_or_else(|| missing("archive.endpoint"))?,
            region: self.region.clone(),
            bucket: self
                .bucket
                .clone()
                .ok_or_else(|| missing("archive.bucket"))?,
            access_key: self
                .access_key
                .clone()
                .ok_or_else(|| missing("archive.access_key"))?,
            secret_key,
            path_style: self.path_style,
            multipart_threshold: self.multipart_threshold_bytes,
            part_size: self.multipart_part_bytes,
            object_lock: self.object_lock_mode,
            default_retention: self
                .retention_days
                .map(|d| Duration::from_secs(u64::from(d) * 86_400)),
            timeout: Duration::from_secs(self.timeout_secs),
            ca_file: self.ca_file.clone(),
        })
    }
}

/// Build the configured store. Reads the S3 secret from the environment when
/// `secret_key_env` is set; sends nothing over the network.
pub fn build_store(config: &ArchiveConfig) -> Result<Arc<dyn ArchiveStore>, ArchiveError> {
    config.validate()?;
    match config.backend {
        ArchiveBackend::Local => Ok(Arc::new(LocalStore::open(&config.local_dir)?)),
        ArchiveBackend::S3 => {
            let settings = config.s3_settings(|var| std::env::var(var).ok())?;
            Ok(Arc::new(S3Store::new(settings)?))
        }
    }
}

/// [`build_store`] for tools that only read (verification, export, listing): a local archive
/// must exist already (it is never created, so a tool run from the wrong directory fails
/// naming the path it looked at instead of showing an empty archive) and is opened read-only.
pub fn build_store_read_only(
    config: &ArchiveConfig,
) -> Result<Arc<dyn ArchiveStore>, ArchiveError> {
    config.validate()?;
    match config.backend {
        ArchiveBackend::Local => Ok(Arc::new(LocalStore::open_read_only(&config.local_dir)?)),
        ArchiveBackend::S3 => build_store(config),
    }
}

/// `https://` anywhere, `http://` only to this machine: segments are encrypted, but the
/// credentials' signatures and object names would cross the network in clear text.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(endpoint).map_err(|e| format!("not a valid URL: {e}"))?;
    let Some(host) = url.host_str() else {
        return Err("needs a host".into());
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials; use access_key and secret_key".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = match bare.parse::<IpAddr>() {
                Ok(ip) => ip.is_loopback(),
                Err(_) => host.eq_ignore_ascii_case("localhost"),
            };
            if loopback {
                Ok(())
            } else {
                Err("must use https:// (http:// is allowed only for localhost/loopback)".into())
            }
        }
        other => Err(format!("unsupported scheme `{other}`; use https://")),
    }
}

/// S3's bucket naming rules (the subset every S3-compatible server accepts).
fn valid_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3() -> ArchiveConfig {
        ArchiveConfig {
            backend: ArchiveBackend::S3,
            endpoint: Some("https://minio.hospital.example:9000".into()),
            bucket: Some("huizhen-recordings".into()),
            access_key: Some("huizhen".into()),
            secret_key_env: Some("HUIZHEN_S3_SECRET".into()),
            ..ArchiveConfig::default()
        }
    }

    fn field_of(r: Result<(), ArchiveError>) -> &'static str {
        match r {
            Err(ArchiveError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_local_and_valid() {
        let c = ArchiveConfig::default();
        assert_eq!(c.backend, ArchiveBackend::Local);
        assert_eq!(c.local_dir, PathBuf::from("huizhen-archive"));
        assert_eq!(c.spool_dir, None);
        c.validate().unwrap();
        s3().validate().unwrap();
    }

    #[test]
    fn parses_the_documented_toml() {
        let c: ArchiveConfig = toml::from_str(
            r#"
            backend = "s3"
            endpoint = "http://127.0.0.1:9000"
            region = "cn-north-1"
            bucket = "recordings"
            access_key = "ak"
            secret_key = "sk-very-secret"
            path_style = true
            multipart_threshold_bytes = 16777216
            object_lock_mode = "compliance"
            retention_days = 1095
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.object_lock_mode, Some(ObjectLockMode::Compliance));
        let settings = c.s3_settings(|_| None).unwrap();
        assert_eq!(settings.secret_key, "sk-very-secret");
        assert_eq!(
            settings.default_retention,
            Some(Duration::from_secs(1095 * 86_400))
        );
        assert!(
            toml::from_str::<ArchiveConfig>("bukket = \"x\"").is_err(),
            "unknown fields refused"
        );
        assert!(toml::from_str::<ArchiveConfig>("backend = \"ftp\"").is_err());
    }

    #[test]
    fn errors_name_the_field() {
        let with = |f: fn(&mut ArchiveConfig)| {
            let mut c = s3();
            f(&mut c);
            field_of(c.validate())
        };
        assert_eq!(with(|c| c.endpoint = None), "archive.endpoint");
        assert_eq!(
            with(|c| c.endpoint = Some("http://minio.example:9000".into())),
            "archive.endpoint"
        );
        assert_eq!(
            with(|c| c.endpoint = Some("ftp://x".into())),
            "archive.endpoint"
        );
        assert_eq!(
            with(|c| c.endpoint = Some("https://ak:sk@x".into())),
            "archive.endpoint"
        );
        assert_eq!(
            with(|c| c.bucket = Some("No_Such".into())),
            "archive.bucket"
        );
        assert_eq!(with(|c| c.access_key = None), "archive.access_key");
        assert_eq!(with(|c| c.secret_key_env = None), "archive.secret_key_env");
        assert_eq!(
            with(|c| c.secret_key = Some("x".into())),
            "archive.secret_key"
        );
        assert_eq!(
            with(|c| c.multipart_part_bytes = 1024),
            "archive.multipart_part_bytes"
        );
        assert_eq!(
            with(|c| c.multipart_threshold_bytes = 0),
            "archive.multipart_threshold_bytes"
        );
        assert_eq!(
            with(|c| c.retention_days = Some(30)),
            "archive.retention_days"
        );
        assert_eq!(with(|c| c.timeout_secs = 0), "archive.timeout_secs");
        assert_eq!(with(|c| c.retry_max_ms = 1), "archive.retry_max_ms");
        assert_eq!(with(|c| c.region = "".into()), "archive.region");
        // Loopback may use http.
        let mut c = s3();
        for ok in [
            "http://127.0.0.1:9000",
            "http://localhost:9000",
            "http://[::1]:9000",
        ] {
            c.endpoint = Some(ok.into());
            c.validate().unwrap();
        }
    }

    #[test]
    fn secret_comes_from_the_named_variable() {
        let c = s3();
        let s = c
            .s3_settings(|var| (var == "HUIZHEN_S3_SECRET").then(|| "from-env".to_owned()))
            .unwrap();
        assert_eq!(s.secret_key, "from-env");
        match c.s3_settings(|_| None) {
            Err(ArchiveError::Config { field, message }) => {
                assert_eq!(field, "archive.secret_key_env");
                assert!(message.contains("HUIZHEN_S3_SECRET"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn debug_redacts_the_secret() {
        let mut c = s3();
        c.secret_key_env = None;
        c.secret_key = Some("wJalrXUtnFEMI-secret".into());
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("wJalrXUtnFEMI"), "{dbg}");
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn builds_each_backend() {
        let dir = std::env::temp_dir().join(format!("huizhen-archive-cfg-{}", std::process::id()));
        let local = ArchiveConfig {
            local_dir: dir.clone(),
            ..ArchiveConfig::default()
        };
        assert!(build_store(&local)
            .unwrap()
            .describe()
            .starts_with("local "));
        let mut c = s3();
        c.secret_key_env = None;
        c.secret_key = Some("sk".into());
        let store = build_store(&c).unwrap();
        assert_eq!(
            store.describe(),
            "s3 https://minio.hospital.example:9000 bucket=huizhen-recordings (path-style)"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
