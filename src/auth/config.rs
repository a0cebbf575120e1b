//! The `[auth]` configuration section and loading the keys it names.
//!
//! Checked in two steps, like the rest of the configuration: [`AuthConfig::validate`] is pure
//! (ranges and cross-field rules, no file access) so `huizhen config check` can run it anywhere;
//! reading and parsing the secret or key files happens in [`TokenVerifier::new`] /
//! [`TokenMinter::new`] at start-up, and both report the dotted field name.
//!
//! [`TokenVerifier::new`]: super::TokenVerifier::new
//! [`TokenMinter::new`]: super::TokenMinter::new

use std::fmt;
use std::path::{Path, PathBuf};

use jsonwebtoken::{DecodingKey, EncodingKey};
use serde::Deserialize;

use crate::redact::Redacted;

/// Shortest accepted HS256 secret. RFC 7518 §3.2 asks for a key at least as long as the hash
/// output (256 bits); a shorter shared secret can be brute-forced offline from one token.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// Largest accepted `leeway_secs`. Leeway absorbs clock skew between the hospital's issuer and
/// this server; minutes of skew mean a broken clock, and more leeway only extends stolen tokens.
pub const MAX_LEEWAY_SECS: u64 = 300;

/// Largest accepted `max_lifetime_secs` (30 days).
pub const MAX_LIFETIME_CAP_SECS: u64 = 30 * 24 * 3600;

/// Why the `[auth]` section (or a file it names) was refused. Every variant names the field.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// A value is out of range, missing, or contradicts another field.
    #[error("{field}: {message}")]
    Invalid {
        /// Dotted field name, e.g. `auth.hs256_secret`.
        field: &'static str,
        /// What is wrong and what is allowed. Never contains the secret.
        message: String,
    },
    /// A secret or key file could not be read.
    #[error("{field}: cannot read {path}: {source}")]
    Read {
        /// The field that names the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A secret or key file was read but holds no usable key.
    #[error("{field}: {path}: {message}")]
    BadKey {
        /// The field that names the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong. Never contains key material.
        message: String,
    },
}

impl AuthConfigError {
    /// The dotted field name, for folding into the server's configuration error.
    pub fn field(&self) -> &'static str {
        match self {
            AuthConfigError::Invalid { field, .. }
            | AuthConfigError::Read { field, .. }
            | AuthConfigError::BadKey { field, .. } => field,
        }
    }

    /// What is wrong, without the field name: for wrappers that print the field themselves
    /// (`Display` is `"{field}: {message}"`).
    pub fn message(&self) -> String {
        match self {
            AuthConfigError::Invalid { message, .. } => message.clone(),
            AuthConfigError::Read { path, source, .. } => {
                format!("cannot read {}: {source}", path.display())
            }
            AuthConfigError::BadKey { path, message, .. } => {
                format!("{}: {message}", path.display())
            }
        }
    }

    fn invalid(field: &'static str, message: impl Into<String>) -> AuthConfigError {
        AuthConfigError::Invalid {
            field,
            message: message.into(),
        }
    }
}

/// Which signature algorithm tokens use. Exactly one is accepted at a time: accepting several
/// invites algorithm-confusion attacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenAlgorithm {
    /// HMAC-SHA256 with a secret shared with the hospital's issuer. Simple; the secret must be
    /// guarded on both sides, and anyone holding it can mint tokens.
    #[default]
    Hs256,
    /// Ed25519 signatures. huizhen holds only the public key, so a leak of its configuration
    /// lets nobody mint tokens. Preferred in production.
    Eddsa,
}

impl TokenAlgorithm {
    /// The TOML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenAlgorithm::Hs256 => "hs256",
            TokenAlgorithm::Eddsa => "eddsa",
        }
    }

    /// The jsonwebtoken algorithm.
    pub(crate) fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            TokenAlgorithm::Hs256 => jsonwebtoken::Algorithm::HS256,
            TokenAlgorithm::Eddsa => jsonwebtoken::Algorithm::EdDSA,
        }
    }

    /// The `alg` header value a token must carry.
    pub(crate) fn header_name(self) -> &'static str {
        match self {
            TokenAlgorithm::Hs256 => "HS256",
            TokenAlgorithm::Eddsa => "EdDSA",
        }
    }
}

/// The `[auth]` section: how tokens from the hospital's identity system are checked.
///
/// The defaults (HS256, no secret) are valid so that `huizhen serve` runs with no file: see
/// [`AuthConfig::is_dev_mode`]. `Debug` redacts the secret.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `hs256` or `eddsa`.
    pub algorithm: TokenAlgorithm,
    /// HS256 shared secret (its UTF-8 bytes), at least 32 bytes. Prefer `hs256_secret_file`,
    /// which keeps the secret out of the configuration file.
    pub hs256_secret: Option<String>,
    /// File holding the HS256 secret; one trailing line break is ignored.
    pub hs256_secret_file: Option<PathBuf>,
    /// PEM (SPKI, `BEGIN PUBLIC KEY`) Ed25519 public key that verifies tokens.
    pub eddsa_public_key: Option<PathBuf>,
    /// PEM (PKCS#8, `BEGIN PRIVATE KEY`) Ed25519 private key; only needed to mint tokens here
    /// (development, expert links). Production issuers keep theirs elsewhere.
    pub eddsa_private_key: Option<PathBuf>,
    /// Required `iss` claim, when set.
    pub issuer: Option<String>,
    /// Required `aud` claim, when set. When unset, tokens carrying an `aud` are refused.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    pub leeway_secs: u64,
    /// Tokens whose `exp - iat` exceeds this are refused, however well signed.
    pub max_lifetime_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            algorithm: TokenAlgorithm::Hs256,
            hs256_secret: None,
            hs256_secret_file: None,
            eddsa_public_key: None,
            eddsa_private_key: None,
            issuer: None,
            audience: None,
            leeway_secs: 30,
            max_lifetime_secs: 24 * 3600,
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("algorithm", &self.algorithm)
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|s| Redacted(s.as_str())),
            )
            .field("hs256_secret_file", &self.hs256_secret_file)
            .field("eddsa_public_key", &self.eddsa_public_key)
            .field("eddsa_private_key", &self.eddsa_private_key)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .field("max_lifetime_secs", &self.max_lifetime_secs)
            .finish()
    }
}

impl AuthConfig {
    /// HS256 with no secret configured: the server should generate one per process
    /// ([`super::generate_dev_secret`]) and put it into `hs256_secret` before building the
    /// verifier. Worth a loud log line, since no real issuer can produce such tokens.
    pub fn is_dev_mode(&self) -> bool {
        self.algorithm == TokenAlgorithm::Hs256
            && self.hs256_secret.is_none()
            && self.hs256_secret_file.is_none()
    }

    /// Check ranges and cross-field rules, without touching files.
    ///
    /// Fields that belong to the other algorithm are refused rather than ignored: a key file
    /// configured but silently unused is how an operator ends up trusting the wrong key.
    pub fn validate(&self) -> Result<(), AuthConfigError> {
        let invalid = |field, message: &str| Err(AuthConfigError::invalid(field, message));
        match self.algorithm {
            TokenAlgorithm::Hs256 => {
                if self.hs256_secret.is_some() && self.hs256_secret_file.is_some() {
                    return invalid(
                        "auth.hs256_secret_file",
                        "set either auth.hs256_secret or auth.hs256_secret_file, not both",
                    );
                }
                if let Some(secret) = &self.hs256_secret {
                    check_secret_len("auth.hs256_secret", secret.len())?;
                }
                if self.eddsa_public_key.is_some() {
                    return invalid(
                        "auth.eddsa_public_key",
                        "only used when auth.algorithm = \"eddsa\"",
                    );
                }
                if self.eddsa_private_key.is_some() {
                    return invalid(
                        "auth.eddsa_private_key",
                        "only used when auth.algorithm = \"eddsa\"",
                    );
                }
            }
            TokenAlgorithm::Eddsa => {
                if self.eddsa_public_key.is_none() {
                    return invalid(
                        "auth.eddsa_public_key",
                        "required when auth.algorithm = \"eddsa\"",
                    );
                }
                if self.hs256_secret.is_some() {
                    return invalid(
                        "auth.hs256_secret",
                        "only used when auth.algorithm = \"hs256\"",
                    );
                }
                if self.hs256_secret_file.is_some() {
                    return invalid(
                        "auth.hs256_secret_file",
                        "only used when auth.algorithm = \"hs256\"",
                    );
                }
            }
        }
        if self.issuer.as_deref() == Some("") {
            return invalid(
                "auth.issuer",
                "must not be empty (leave it out to accept any)",
            );
        }
        if self.audience.as_deref() == Some("") {
            return invalid("auth.audience", "must not be empty (leave it out)");
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return invalid("auth.leeway_secs", "must be at most 300");
        }
        if !(1..=MAX_LIFETIME_CAP_SECS).contains(&self.max_lifetime_secs) {
            return invalid(
                "auth.max_lifetime_secs",
                "must be within 1..=2592000 (30 days)",
            );
        }
        Ok(())
    }

    /// The HS256 secret, from `hs256_secret` or `hs256_secret_file`.
    pub(crate) fn load_hs256_secret(&self) -> Result<Vec<u8>, AuthConfigError> {
        if let Some(secret) = &self.hs256_secret {
            return Ok(secret.as_bytes().to_vec());
        }
        let Some(path) = &self.hs256_secret_file else {
            return Err(AuthConfigError::invalid(
                "auth.hs256_secret",
                "required: set auth.hs256_secret or auth.hs256_secret_file",
            ));
        };
        let field = "auth.hs256_secret_file";
        let mut bytes = read_file(field, path)?;
        // `echo "$SECRET" > file` leaves a line break that is not part of the secret.
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        if bytes.len() < MIN_HS256_SECRET_BYTES {
            return Err(AuthConfigError::BadKey {
                field,
                path: path.clone(),
                message: format!("secret must be at least {MIN_HS256_SECRET_BYTES} bytes"),
            });
        }
        Ok(bytes)
    }

    /// The key that verifies tokens: the HS256 secret, or the Ed25519 public key.
    pub(crate) fn decoding_key(&self) -> Result<DecodingKey, AuthConfigError> {
        match self.algorithm {
            TokenAlgorithm::Hs256 => Ok(DecodingKey::from_secret(&self.load_hs256_secret()?)),
            TokenAlgorithm::Eddsa => {
                let field = "auth.eddsa_public_key";
                let path = self.eddsa_public_key.as_deref().ok_or_else(|| {
                    AuthConfigError::invalid(field, "required when auth.algorithm = \"eddsa\"")
                })?;
                let pem = read_file(field, path)?;
                let bad = || AuthConfigError::BadKey {
                    field,
                    path: path.to_owned(),
                    message: "not an Ed25519 public key in PEM (SPKI, BEGIN PUBLIC KEY)".into(),
                };
                let key = DecodingKey::from_ed_pem(&pem).map_err(|_| bad())?;
                // The PEM parser accepts any bit string under the Ed25519 OID; a wrong-sized one
                // would only show up later as every token failing its signature check.
                if key.as_bytes().len() != ED25519_PUBLIC_KEY_BYTES {
                    return Err(bad());
                }
                Ok(key)
            }
        }
    }

    /// The key that signs tokens: the HS256 secret, or the Ed25519 private key. Checked by
    /// signing a probe, because jsonwebtoken parses a PKCS#8 key only when it first signs.
    pub(crate) fn encoding_key(&self) -> Result<EncodingKey, AuthConfigError> {
        match self.algorithm {
            TokenAlgorithm::Hs256 => Ok(EncodingKey::from_secret(&self.load_hs256_secret()?)),
            TokenAlgorithm::Eddsa => {
                let field = "auth.eddsa_private_key";
                let path = self.eddsa_private_key.as_deref().ok_or_else(|| {
                    AuthConfigError::invalid(
                        field,
                        "required to mint tokens when auth.algorithm = \"eddsa\"",
                    )
                })?;
                let pem = read_file(field, path)?;
                let bad = || AuthConfigError::BadKey {
                    field,
                    path: path.to_owned(),
                    message: "not an Ed25519 private key in PEM (PKCS#8, BEGIN PRIVATE KEY)".into(),
                };
                let key = EncodingKey::from_ed_pem(&pem).map_err(|_| bad())?;
                jsonwebtoken::crypto::sign(b"probe", &key, jsonwebtoken::Algorithm::EdDSA)
                    .map_err(|_| bad())?;
                Ok(key)
            }
        }
    }
}

/// Raw Ed25519 public key length.
const ED25519_PUBLIC_KEY_BYTES: usize = 32;

fn check_secret_len(field: &'static str, len: usize) -> Result<(), AuthConfigError> {
    if len < MIN_HS256_SECRET_BYTES {
        return Err(AuthConfigError::invalid(
            field,
            format!("must be at least {MIN_HS256_SECRET_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn read_file(field: &'static str, path: &Path) -> Result<Vec<u8>, AuthConfigError> {
    std::fs::read(path).map_err(|source| AuthConfigError::Read {
        field,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> AuthConfig {
        #[derive(Deserialize)]
        struct Wrapper {
            auth: AuthConfig,
        }
        toml::from_str::<Wrapper>(toml_text).unwrap().auth
    }

    fn field_of(c: &AuthConfig) -> String {
        let err = c.validate().unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with(err.field()), "{text}");
        err.field().to_owned()
    }

    #[test]
    fn defaults_are_valid_and_mean_dev_mode() {
        let c = AuthConfig::default();
        c.validate().unwrap();
        assert!(c.is_dev_mode());
        assert_eq!(c.leeway_secs, 30);
        assert_eq!(c.max_lifetime_secs, 86_400);
        assert_eq!(parse("[auth]\n"), c);
    }

    #[test]
    fn full_section_parses() {
        let c = parse(
            r#"
            [auth]
            algorithm = "eddsa"
            eddsa_public_key = "/etc/huizhen/jwt.pub.pem"
            issuer = "https://id.hospital.example"
            audience = "huizhen"
            leeway_secs = 10
            max_lifetime_secs = 3600
            "#,
        );
        assert_eq!(c.algorithm, TokenAlgorithm::Eddsa);
        assert_eq!(c.audience.as_deref(), Some("huizhen"));
        c.validate().unwrap();
        assert!(!c.is_dev_mode());
    }

    #[test]
    fn unknown_field_and_algorithm_are_refused() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Wrapper {
            auth: AuthConfig,
        }
        let err = toml::from_str::<Wrapper>("[auth]\nhs256_secrt = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("hs256_secrt"), "{err}");
        let err = toml::from_str::<Wrapper>("[auth]\nalgorithm = \"rs256\"\n").unwrap_err();
        assert!(err.to_string().contains("rs256"), "{err}");
    }

    #[test]
    fn short_secret_names_the_field() {
        let c = AuthConfig {
            hs256_secret: Some("too short".into()),
            ..AuthConfig::default()
        };
        let err = c.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "auth.hs256_secret: must be at least 32 bytes"
        );
        assert_eq!(err.message(), "must be at least 32 bytes");
        assert!(!err.to_string().contains("too short"));
    }

    #[test]
    fn cross_field_rules_name_the_field() {
        let secret = Some("s".repeat(32));
        let both = AuthConfig {
            hs256_secret: secret.clone(),
            hs256_secret_file: Some("/s".into()),
            ..AuthConfig::default()
        };
        assert_eq!(field_of(&both), "auth.hs256_secret_file");

        let eddsa_without_key = AuthConfig {
            algorithm: TokenAlgorithm::Eddsa,
            ..AuthConfig::default()
        };
        assert_eq!(field_of(&eddsa_without_key), "auth.eddsa_public_key");

        let eddsa_with_secret = AuthConfig {
            algorithm: TokenAlgorithm::Eddsa,
            eddsa_public_key: Some("/k.pem".into()),
            hs256_secret: secret.clone(),
            ..AuthConfig::default()
        };
        assert_eq!(field_of(&eddsa_with_secret), "auth.hs256_secret");

        let hs_with_ed_key = AuthConfig {
            hs256_secret: secret.clone(),
            eddsa_private_key: Some("/k.pem".into()),
            ..AuthConfig::default()
        };
        assert_eq!(field_of(&hs_with_ed_key), "auth.eddsa_private_key");
    }

    #[test]
    fn ranges_name_the_field() {
        let base = AuthConfig::default();
        let c = AuthConfig {
            leeway_secs: 301,
            ..base.clone()
        };
        assert_eq!(field_of(&c), "auth.leeway_secs");
        let c = AuthConfig {
            max_lifetime_secs: 0,
            ..base.clone()
        };
        assert_eq!(field_of(&c), "auth.max_lifetime_secs");
        let c = AuthConfig {
            max_lifetime_secs: MAX_LIFETIME_CAP_SECS + 1,
            ..base.clone()
        };
        assert_eq!(field_of(&c), "auth.max_lifetime_secs");
        let c = AuthConfig {
            issuer: Some(String::new()),
            ..base.clone()
        };
        assert_eq!(field_of(&c), "auth.issuer");
        let c = AuthConfig {
            audience: Some(String::new()),
            ..base
        };
        assert_eq!(field_of(&c), "auth.audience");
    }

    #[test]
    fn debug_redacts_the_secret() {
        let secret = "correct-horse-battery-staple-0123456789";
        let c = AuthConfig {
            hs256_secret: Some(secret.into()),
            ..AuthConfig::default()
        };
        let debug = format!("{c:?}");
        assert!(!debug.contains(secret), "{debug}");
        assert!(!debug.contains("horse"), "{debug}");
        assert!(debug.contains("hs256_secret"), "{debug}");
    }

    #[test]
    fn missing_secret_file_names_the_field() {
        let c = AuthConfig {
            hs256_secret_file: Some("/nonexistent/huizhen/secret".into()),
            ..AuthConfig::default()
        };
        c.validate().unwrap();
        let err = c.load_hs256_secret().unwrap_err();
        assert_eq!(err.field(), "auth.hs256_secret_file");
        assert!(matches!(err, AuthConfigError::Read { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("{}: {}", err.field(), err.message())
        );
    }
}
