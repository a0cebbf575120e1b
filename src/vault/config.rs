//! Configuration of recording encryption (the `[recording]` table's crypto fields).
//!
//! The config names where secrets come from, never the secrets themselves, so it can be logged,
//! diffed and shown by `Debug` freely. Every default runs on one machine: AES-256-GCM, 64 KiB
//! chunks, and a signing key generated in the data directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::keys::{KeyError, LocalKek};
use super::segment::{Cipher, DEFAULT_CHUNK_BYTES};
use ed25519_dalek::VerifyingKey;

/// Smallest configurable chunk: below this the per-chunk tag and call overhead dominate.
pub const MIN_CONFIG_CHUNK_BYTES: u32 = 4 * 1024;
/// Largest configurable chunk: a reader holds one chunk at a time, keep that modest.
pub const MAX_CONFIG_CHUNK_BYTES: u32 = 4 * 1024 * 1024;
/// File name of the generated signing key inside the data directory.
pub const DEFAULT_SIGNING_KEY_FILE: &str = "recording-signing-key.pem";

/// Encryption settings for recordings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultConfig {
    /// Segment cipher: `aes-256-gcm` (default) or `sm4-gcm` (Chinese commercial cryptography).
    pub cipher: Cipher,
    /// File holding the key-encryption key (32 raw bytes, 64 hex digits or base64). Must not be
    /// on the recording store.
    pub kek_file: Option<PathBuf>,
    /// Environment variable holding the key-encryption key (hex or base64).
    pub kek_env: Option<String>,
    /// PKCS#8 PEM Ed25519 key that signs manifests; default: generated in the data directory
    /// as [`DEFAULT_SIGNING_KEY_FILE`].
    pub signing_key_file: Option<PathBuf>,
    /// Plaintext bytes per encrypted chunk.
    pub chunk_bytes: u32,
    /// Public keys (base64 of the 32-byte Ed25519 key, or PEM) whose manifest signatures
    /// `huizhen recording verify` and `export` accept: the server's, and the previous one while
    /// a key is rotated. Empty: the server's own key from `signing_key_file` (or the data
    /// directory) when it is at hand; otherwise the tools refuse unless told `--any-signer`.
    pub signer_public_keys: Vec<String>,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            cipher: Cipher::default(),
            kek_file: None,
            kek_env: None,
            signing_key_file: None,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            signer_public_keys: Vec::new(),
        }
    }
}

/// A recording crypto setting is invalid; `field` is the dotted name, e.g. `recording.chunk_bytes`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config field `{field}`: {message}")]
pub struct VaultConfigError {
    /// Dotted field name.
    pub field: &'static str,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// Where the key-encryption key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KekSource {
    /// A file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

impl VaultConfig {
    /// Check ranges and cross-field rules; errors name the `recording.<field>`.
    pub fn validate(&self) -> Result<(), VaultConfigError> {
        let invalid =
            |field: &'static str, message: String| Err(VaultConfigError { field, message });
        if !(MIN_CONFIG_CHUNK_BYTES..=MAX_CONFIG_CHUNK_BYTES).contains(&self.chunk_bytes) {
            return invalid(
                "recording.chunk_bytes",
                format!("must be within {MIN_CONFIG_CHUNK_BYTES}..={MAX_CONFIG_CHUNK_BYTES}"),
            );
        }
        if self.kek_file.is_some() && self.kek_env.is_some() {
            return invalid(
                "recording.kek_env",
                "set only one of recording.kek_file and recording.kek_env".to_owned(),
            );
        }
        if self
            .kek_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return invalid("recording.kek_file", "must not be empty".to_owned());
        }
        if let Some(var) = &self.kek_env {
            if var.is_empty() || var.contains(['=', '\0']) {
                return invalid(
                    "recording.kek_env",
                    "must be an environment variable name (non-empty, no `=`)".to_owned(),
                );
            }
        }
        if self
            .signing_key_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return invalid("recording.signing_key_file", "must not be empty".to_owned());
        }
        for (i, key) in self.signer_public_keys.iter().enumerate() {
            if let Err(e) = crate::vault::parse_verifying_key(key) {
                return invalid(
                    "recording.signer_public_keys",
                    format!("entry {}: {e}", i + 1),
                );
            }
        }
        Ok(())
    }

    /// The pinned manifest signers configured (validated at load).
    pub fn pinned_signers(&self) -> Result<Vec<VerifyingKey>, crate::vault::SigningKeyError> {
        self.signer_public_keys
            .iter()
            .map(|k| crate::vault::parse_verifying_key(k))
            .collect()
    }

    /// Where the KEK comes from, if configured.
    pub fn kek_source(&self) -> Option<KekSource> {
        match (&self.kek_file, &self.kek_env) {
            (Some(path), _) => Some(KekSource::File(path.clone())),
            (None, Some(var)) => Some(KekSource::Env(var.clone())),
            (None, None) => None,
        }
    }

    /// Load the configured KEK (start-up I/O); `Ok(None)` when none is configured.
    pub fn load_kek(&self) -> Result<Option<LocalKek>, KeyError> {
        match self.kek_source() {
            Some(KekSource::File(path)) => LocalKek::from_file(&path).map(Some),
            Some(KekSource::Env(var)) => LocalKek::from_env(&var).map(Some),
            None => Ok(None),
        }
    }

    /// The signing key path: the configured one, or the default inside `data_dir`.
    pub fn signing_key_path(&self, data_dir: &Path) -> PathBuf {
        self.signing_key_file
            .clone()
            .unwrap_or_else(|| data_dir.join(DEFAULT_SIGNING_KEY_FILE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Wrapper {
        #[serde(default)]
        recording: VaultConfig,
    }

    fn parse(text: &str) -> Result<VaultConfig, String> {
        toml::from_str::<Wrapper>(text)
            .map(|w| w.recording)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid() {
        let c = VaultConfig::default();
        c.validate().unwrap();
        assert_eq!(c.cipher, Cipher::Aes256Gcm);
        assert_eq!(c.chunk_bytes, 65536);
        assert_eq!(parse("").unwrap(), c);
        assert_eq!(
            c.signing_key_path(Path::new("/var/lib/huizhen")),
            Path::new("/var/lib/huizhen/recording-signing-key.pem")
        );
        assert_eq!(c.kek_source(), None);
    }

    #[test]
    fn parses_all_fields() {
        let c = parse(
            r#"[recording]
cipher = "sm4-gcm"
kek_file = "/etc/huizhen/kek"
signing_key_file = "/etc/huizhen/sign.pem"
chunk_bytes = 131072
"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.cipher, Cipher::Sm4Gcm);
        assert_eq!(
            c.kek_source(),
            Some(KekSource::File("/etc/huizhen/kek".into()))
        );
        assert_eq!(c.chunk_bytes, 131072);
    }

    #[test]
    fn unknown_fields_and_ciphers_are_refused() {
        assert!(parse("[recording]\nkek = \"x\"")
            .unwrap_err()
            .contains("unknown field"));
        assert!(parse("[recording]\ncipher = \"des\"").is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let bad = |c: VaultConfig| c.validate().unwrap_err().field;
        assert_eq!(
            bad(VaultConfig {
                chunk_bytes: 100,
                ..Default::default()
            }),
            "recording.chunk_bytes"
        );
        assert_eq!(
            bad(VaultConfig {
                kek_file: Some("/k".into()),
                kek_env: Some("K".into()),
                ..Default::default()
            }),
            "recording.kek_env"
        );
        assert_eq!(
            bad(VaultConfig {
                kek_env: Some("A=B".into()),
                ..Default::default()
            }),
            "recording.kek_env"
        );
        assert_eq!(
            bad(VaultConfig {
                kek_file: Some(PathBuf::new()),
                ..Default::default()
            }),
            "recording.kek_file"
        );
        assert_eq!(
            bad(VaultConfig {
                signing_key_file: Some(PathBuf::new()),
                ..Default::default()
            }),
            "recording.signing_key_file"
        );
        let msg = VaultConfig {
            chunk_bytes: 0,
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            msg.starts_with("config field `recording.chunk_bytes`"),
            "{msg}"
        );
    }

    #[test]
    fn env_source_and_missing_variable() {
        let c = VaultConfig {
            kek_env: Some("HUIZHEN_TEST_UNSET_KEK_41c7".into()),
            ..Default::default()
        };
        assert_eq!(
            c.kek_source(),
            Some(KekSource::Env("HUIZHEN_TEST_UNSET_KEK_41c7".into()))
        );
        assert!(matches!(c.load_kek(), Err(KeyError::EnvMissing { .. })));
        assert!(VaultConfig::default().load_kek().unwrap().is_none());
    }
}
