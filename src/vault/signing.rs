//! The server's manifest signing key on disk, and the public key auditors check against.
//!
//! Production deployments provision the key (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519`
//! writes it) and point `recording.signing_key_file` at it; the dev path generates one in the
//! data directory on first start. The public key is what a hospital publishes or escrows so that
//! `huizhen recording verify --signer` can prove a manifest came from its server.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::CryptoRng;
use zeroize::Zeroizing;

use super::secret_file::{create_secret_file, warn_if_shared, Created};

/// Why a signing or verifying key could not be loaded or stored. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    /// The file could not be read.
    #[error("cannot read signing key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A new key could not be written.
    #[error("cannot create signing key file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The contents are not a key of the expected kind.
    #[error("{origin} does not hold an Ed25519 {expected}: {reason}")]
    Parse {
        /// Where the text came from.
        origin: String,
        /// What was expected there.
        expected: &'static str,
        /// The parser's complaint.
        reason: String,
    },
}

/// A new signing key from a cryptographically secure RNG.
pub fn generate_signing_key<R: CryptoRng + ?Sized>(rng: &mut R) -> SigningKey {
    let mut secret = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut secret[..]);
    SigningKey::from_bytes(&secret)
}

/// Load a provisioned signing key (PKCS#8 PEM). Warns if the file is readable by others.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, SigningKeyError> {
    let text =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| SigningKeyError::Read {
                path: path.to_owned(),
                source,
            })?,
        );
    warn_if_shared(path, "recording signing key");
    SigningKey::from_pkcs8_pem(&text).map_err(|e| SigningKeyError::Parse {
        origin: format!("file {}", path.display()),
        expected: "private key (PKCS#8 PEM)",
        reason: e.to_string(),
    })
}

/// The dev path: load the signing key, or generate one (owner-only, 0600) when the file does not
/// exist. Safe against two processes starting at once: both end up with the same key.
pub fn load_or_generate_signing_key(path: &Path) -> Result<SigningKey, SigningKeyError> {
    if !path.exists() {
        let key = generate_signing_key(&mut rand::rng());
        let pem = signing_key_to_pem(&key);
        let created =
            create_secret_file(path, pem.as_bytes()).map_err(|source| SigningKeyError::Write {
                path: path.to_owned(),
                source,
            })?;
        if created == Created::New {
            tracing::info!(
                path = %path.display(),
                public_key = %public_key_base64(&key.verifying_key()),
                "generated a recording signing key"
            );
            return Ok(key);
        }
    }
    load_signing_key(path)
}

/// PKCS#8 PEM of a signing key (zeroized on drop).
pub fn signing_key_to_pem(key: &SigningKey) -> Zeroizing<String> {
    key.to_pkcs8_pem(LineEnding::LF)
        .expect("an Ed25519 key always encodes as PKCS#8")
}

/// SubjectPublicKeyInfo PEM of a public key, for publishing.
pub fn verifying_key_to_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(LineEnding::LF)
        .expect("an Ed25519 key always encodes as SPKI")
}

/// Base64 of the raw 32-byte public key: the form stored in manifests.
pub fn public_key_base64(key: &VerifyingKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
}

/// A public key from text: SPKI PEM, or base64 of the raw 32 bytes (as in a manifest).
pub fn parse_verifying_key(text: &str) -> Result<VerifyingKey, SigningKeyError> {
    parse_verifying_key_at(text, "text")
}

/// A public key from a file (SPKI PEM or raw base64).
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, SigningKeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| SigningKeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_verifying_key_at(&text, &format!("file {}", path.display()))
}

fn parse_verifying_key_at(text: &str, origin: &str) -> Result<VerifyingKey, SigningKeyError> {
    let text = text.trim();
    let parse_err = |reason: String| SigningKeyError::Parse {
        origin: origin.to_owned(),
        expected: "public key (SPKI PEM or base64)",
        reason,
    };
    if text.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(text).map_err(|e| parse_err(e.to_string()));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| parse_err(e.to_string()))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| parse_err(format!("{} bytes, expected 32", b.len())))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| parse_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn temp_dir(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("hz-sign-{name}-{}", std::process::id()))
    }

    #[test]
    fn generated_once_then_loaded() {
        let dir = temp_dir("gen");
        let path = dir.join("data").join("recording-signing-key.pem");
        let first = load_or_generate_signing_key(&path).unwrap();
        let again = load_or_generate_signing_key(&path).unwrap();
        assert_eq!(first.to_bytes(), again.to_bytes());
        assert_eq!(
            load_signing_key(&path).unwrap().to_bytes(),
            first.to_bytes()
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("-----BEGIN PRIVATE KEY-----"),
            "PKCS#8 PEM"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_refuses_missing_and_garbage() {
        let dir = temp_dir("bad");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key.pem");
        assert!(matches!(
            load_signing_key(&path),
            Err(SigningKeyError::Read { .. })
        ));
        std::fs::write(&path, "not a key").unwrap();
        let err = load_signing_key(&path).unwrap_err();
        assert!(matches!(err, SigningKeyError::Parse { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn public_key_forms_agree() {
        let key = generate_signing_key(&mut StdRng::seed_from_u64(3)).verifying_key();
        assert_eq!(
            parse_verifying_key(&verifying_key_to_pem(&key)).unwrap(),
            key
        );
        assert_eq!(parse_verifying_key(&public_key_base64(&key)).unwrap(), key);
        assert!(parse_verifying_key("AAAA").is_err());
    }

    #[test]
    fn pem_round_trip() {
        let key = generate_signing_key(&mut StdRng::seed_from_u64(4));
        let back = SigningKey::from_pkcs8_pem(&signing_key_to_pem(&key)).unwrap();
        assert_eq!(back.to_bytes(), key.to_bytes());
    }
}
