//! Data keys and the key-encryption keys that wrap them.
//!
//! Every recording gets a fresh random [`DataKey`] that seals its segments. The data key is
//! stored only wrapped ([`WrappedKey`], inside the signed manifest) by a key-encryption key (KEK)
//! that lives apart from the archive: in a file or an environment variable for [`LocalKek`], or
//! in a hospital's KMS/HSM behind the [`KeyWrapper`] trait. Whoever holds the archive alone can
//! therefore read nothing, and rotating or revoking the KEK never touches the media objects.
//!
//! Secrets are zeroized when dropped and have no `Debug`/`Display` that shows their bytes.

use std::fmt;
use std::path::{Path, PathBuf};

use aes_kw::KwAes256;
use base64::Engine as _;
use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::secret_file::{create_secret_file, warn_if_shared, Created};

/// Length of a data key and of a [`LocalKek`].
pub const KEY_LEN: usize = 32;

/// A recording's 256-bit data key.
///
/// Boxed so moves do not leave copies of the key on the stack; zeroized on drop.
#[derive(Clone)]
pub struct DataKey(Box<[u8; KEY_LEN]>);

impl DataKey {
    /// A fresh key from a cryptographically secure RNG (`rand::rng()` in the server; a seeded
    /// RNG in tests).
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> DataKey {
        let mut key = DataKey(Box::new([0u8; KEY_LEN]));
        rng.fill_bytes(&mut key.0[..]);
        key
    }

    /// Wrap existing key bytes (e.g. returned by a KMS). The caller should zeroize its copy.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> DataKey {
        DataKey(Box::new(bytes))
    }

    /// Key bytes from a slice, which must be exactly [`KEY_LEN`] long.
    pub fn from_slice(bytes: &[u8]) -> Result<DataKey, KeyError> {
        let mut key = DataKey(Box::new([0u8; KEY_LEN]));
        if bytes.len() != KEY_LEN {
            return Err(KeyError::BadWrappedKey {
                reason: format!("unwrapped key is {} bytes, expected {KEY_LEN}", bytes.len()),
            });
        }
        key.0.copy_from_slice(bytes);
        Ok(key)
    }

    /// The raw key: for AEAD initialisation and for [`KeyWrapper`] implementations only.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for DataKey {}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// A data key wrapped by a key-encryption key: safe to store next to the data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedKey {
    /// Which KEK wrapped it ([`KeyWrapper::id`]); lets `unwrap` say "wrong KEK" instead of
    /// failing obscurely, and tells an operator which key to fetch.
    pub wrapper_id: String,
    /// The wrapping algorithm, e.g. [`LocalKek::ALGORITHM`].
    pub algorithm: String,
    /// The wrapped key (base64 in JSON).
    #[serde(with = "base64_bytes")]
    pub bytes: Vec<u8>,
}

/// Something that wraps and unwraps data keys: the local KEK, or a hospital KMS/HSM client.
///
/// Implementations must fail (never return a different key) when `wrapped` was not produced by
/// them; [`KeyError::WrongKek`] is the expected answer for another wrapper's key.
pub trait KeyWrapper: Send + Sync {
    /// A stable identifier of the key-encryption key, recorded in [`WrappedKey::wrapper_id`].
    /// It must not reveal the key.
    fn id(&self) -> &str;
    /// Wrap a data key.
    fn wrap(&self, key: &DataKey) -> Result<WrappedKey, KeyError>;
    /// Recover a data key.
    fn unwrap(&self, wrapped: &WrappedKey) -> Result<DataKey, KeyError>;
}

/// Why a key could not be loaded, wrapped or unwrapped.
///
/// Grouped by fault: loading errors are the operator's configuration; unwrap errors are a
/// mismatch between the archive and the key offered; backend errors are a KMS being unavailable.
/// No variant ever carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    // --- Loading a key-encryption key ---
    /// The KEK file could not be read.
    #[error("cannot read key-encryption key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The KEK environment variable is not set.
    #[error("environment variable {var} is not set; it should hold the key-encryption key")]
    EnvMissing {
        /// The variable's name.
        var: String,
    },
    /// The KEK source holds something that is not a 256-bit key.
    #[error("key-encryption key from {origin} is not usable: {reason} (expected 32 raw bytes, 64 hex digits or base64 of 32 bytes)")]
    BadKek {
        /// Where it came from, e.g. `file /etc/huizhen/kek` or `environment variable HZ_KEK`.
        origin: String,
        /// What is wrong (never the value).
        reason: String,
    },

    // --- Unwrapping: the archive and the offered key do not match ---
    /// The data key was wrapped by a different key-encryption key (or the wrapped key is
    /// damaged): nothing can be decrypted with the key given.
    #[error("wrong key-encryption key: the recording's data key was wrapped by `{wrapped_by}`, but the key given is `{loaded}` (or the wrapped key is damaged)")]
    WrongKek {
        /// The wrapper id stored with the data.
        wrapped_by: String,
        /// The id of the key that was offered.
        loaded: String,
    },
    /// The wrapping algorithm is not one this wrapper implements.
    #[error("key wrapper `{wrapper}` cannot unwrap algorithm `{algorithm}`")]
    UnsupportedAlgorithm {
        /// The algorithm stored with the data.
        algorithm: String,
        /// The wrapper asked.
        wrapper: String,
    },
    /// The wrapped key has the wrong shape.
    #[error("malformed wrapped key: {reason}")]
    BadWrappedKey {
        /// What is wrong.
        reason: String,
    },

    // --- A remote key service failed ---
    /// A KMS/HSM backend could not be reached or refused the request.
    #[error("key service `{wrapper_id}` failed: {source}")]
    Backend {
        /// The wrapper.
        wrapper_id: String,
        /// The backend's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A key-encryption key held by this process: AES-256 key wrap (RFC 3394) of the data key.
///
/// Why AES-KW rather than AES-GCM with a random nonce: it is deterministic and nonce-free, made
/// for exactly this job, has a 64-bit integrity check that reliably reports a wrong KEK, and is
/// what KMS/HSM products speak, so a wrapped key can move to one later.
///
/// Load it from configuration ([`from_file`](Self::from_file), [`from_env`](Self::from_env));
/// it is never written anywhere by this crate.
pub struct LocalKek {
    id: String,
    kw: KwAes256,
}

impl LocalKek {
    /// The algorithm name recorded in [`WrappedKey::algorithm`].
    pub const ALGORITHM: &'static str = "AES-256-KW";

    /// A KEK from 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<LocalKek, KeyError> {
        Self::from_bytes_at(bytes, "bytes")
    }

    /// A KEK from text: 64 hex digits, or base64 (standard or URL-safe, padding optional) of 32
    /// bytes. Surrounding whitespace is ignored.
    pub fn from_encoded(text: &str) -> Result<LocalKek, KeyError> {
        Self::from_encoded_at(text, "text")
    }

    /// A KEK from a file holding 32 raw bytes, or hex or base64 text.
    ///
    /// Logs a warning (naming the path, never the key) if the file is readable by other users.
    pub fn from_file(path: &Path) -> Result<LocalKek, KeyError> {
        let origin = format!("file {}", path.display());
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?);
        warn_if_shared(path, "key-encryption key");
        if bytes.len() == KEY_LEN {
            return Self::from_bytes_at(&bytes, &origin);
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| KeyError::BadKek {
            origin: origin.clone(),
            reason: format!("{} bytes that are not text", bytes.len()),
        })?;
        Self::from_encoded_at(text, &origin)
    }

    /// A KEK from an environment variable holding hex or base64 text.
    pub fn from_env(var: &str) -> Result<LocalKek, KeyError> {
        let origin = format!("environment variable {var}");
        let value = std::env::var_os(var).ok_or_else(|| KeyError::EnvMissing {
            var: var.to_owned(),
        })?;
        let value = Zeroizing::new(value.into_string().map_err(|_| KeyError::BadKek {
            origin: origin.clone(),
            reason: "not valid UTF-8".to_owned(),
        })?);
        Self::from_encoded_at(&value, &origin)
    }

    /// The dev path: load the KEK file, or create it (64 hex digits, mode 0600) when absent.
    ///
    /// For a single machine only; production gives the KEK through configuration or a KMS. The
    /// file must live apart from the recording store, which is the point of a KEK.
    pub fn load_or_generate_file(path: &Path) -> Result<LocalKek, KeyError> {
        if !path.exists() {
            let (_, hex) = Self::generate(&mut rand::rng());
            let created =
                create_secret_file(path, hex.as_bytes()).map_err(|source| KeyError::Read {
                    path: path.to_owned(),
                    source,
                })?;
            if created == Created::New {
                tracing::info!(path = %path.display(), "generated a recording key-encryption key");
            }
        }
        Self::from_file(path)
    }

    /// A new random KEK, returned with its hex form for the operator to store (e.g. by a
    /// `keygen` tool). The hex string is zeroized on drop.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> (LocalKek, Zeroizing<String>) {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(&mut bytes[..]);
        let kek = Self::from_bytes(&bytes[..]).expect("32 bytes");
        (kek, Zeroizing::new(hex::encode(&bytes[..])))
    }

    fn from_bytes_at(bytes: &[u8], origin: &str) -> Result<LocalKek, KeyError> {
        let key: &[u8; KEY_LEN] = bytes.try_into().map_err(|_| KeyError::BadKek {
            origin: origin.to_owned(),
            reason: format!("{} bytes long", bytes.len()),
        })?;
        // A fingerprint, not the key: truncated, domain-separated SHA-256. It identifies which
        // KEK wrapped a recording and reveals nothing usable about a 256-bit random key.
        let mut h = Sha256::new();
        h.update(b"huizhen vault kek id v1\0");
        h.update(key);
        let id = format!("local:{}", hex::encode(&h.finalize()[..8]));
        let kw = <KwAes256 as aes_kw::KeyInit>::new(key.into());
        Ok(LocalKek { id, kw })
    }

    fn from_encoded_at(text: &str, origin: &str) -> Result<LocalKek, KeyError> {
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
        let bad = |reason: String| KeyError::BadKek {
            origin: origin.to_owned(),
            reason,
        };
        if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut key = Zeroizing::new([0u8; KEY_LEN]);
            hex::decode_to_slice(text, &mut key[..]).map_err(|e| bad(e.to_string()))?;
            return Self::from_bytes_at(&key[..], origin);
        }
        use base64::engine::general_purpose::{STANDARD_PAD_INDIFFERENT, URL_SAFE_PAD_INDIFFERENT};
        let decoded = STANDARD_PAD_INDIFFERENT
            .decode(text)
            .or_else(|_| URL_SAFE_PAD_INDIFFERENT.decode(text))
            .map(Zeroizing::new)
            .map_err(|_| {
                bad(format!(
                    "{} characters that are neither hex nor base64",
                    text.len()
                ))
            })?;
        if decoded.len() != KEY_LEN {
            return Err(bad(format!("base64 of {} bytes", decoded.len())));
        }
        Self::from_bytes_at(&decoded, origin)
    }
}

impl KeyWrapper for LocalKek {
    fn id(&self) -> &str {
        &self.id
    }

    fn wrap(&self, key: &DataKey) -> Result<WrappedKey, KeyError> {
        let mut out = vec![0u8; KEY_LEN + aes_kw::IV_LEN];
        self.kw
            .wrap_key(key.as_bytes(), &mut out)
            .map_err(|e| KeyError::BadWrappedKey {
                reason: e.to_string(),
            })?;
        Ok(WrappedKey {
            wrapper_id: self.id.clone(),
            algorithm: Self::ALGORITHM.to_owned(),
            bytes: out,
        })
    }

    fn unwrap(&self, wrapped: &WrappedKey) -> Result<DataKey, KeyError> {
        if wrapped.algorithm != Self::ALGORITHM {
            return Err(KeyError::UnsupportedAlgorithm {
                algorithm: wrapped.algorithm.clone(),
                wrapper: self.id.clone(),
            });
        }
        let wrong = || KeyError::WrongKek {
            wrapped_by: wrapped.wrapper_id.clone(),
            loaded: self.id.clone(),
        };
        if wrapped.wrapper_id != self.id {
            return Err(wrong());
        }
        if wrapped.bytes.len() != KEY_LEN + aes_kw::IV_LEN {
            return Err(KeyError::BadWrappedKey {
                reason: format!(
                    "{} bytes, expected {}",
                    wrapped.bytes.len(),
                    KEY_LEN + aes_kw::IV_LEN
                ),
            });
        }
        let mut key = DataKey(Box::new([0u8; KEY_LEN]));
        // The RFC 3394 integrity check fails for any other KEK (chance of a false pass 2^-64).
        self.kw
            .unwrap_key(&wrapped.bytes, &mut key.0[..])
            .map_err(|_| wrong())?;
        Ok(key)
    }
}

impl fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Serde adapter: `Vec<u8>` as standard padded base64.
pub(crate) mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const KEK_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn kek() -> LocalKek {
        LocalKek::from_encoded(KEK_HEX).unwrap()
    }

    #[test]
    fn rfc3394_test_vector_4_6() {
        // RFC 3394 §4.6: 256 bits of key data with a 256-bit KEK.
        let kek = kek();
        let data = DataKey::from_bytes(
            hex::decode("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F")
                .unwrap()
                .try_into()
                .unwrap(),
        );
        let wrapped = kek.wrap(&data).unwrap();
        assert_eq!(
            hex::encode_upper(&wrapped.bytes),
            "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21"
        );
        assert_eq!(wrapped.algorithm, LocalKek::ALGORITHM);
        assert_eq!(wrapped.wrapper_id, kek.id());
    }

    #[test]
    fn wrap_unwrap_round_trip() {
        let kek = kek();
        let key = DataKey::generate(&mut StdRng::seed_from_u64(5));
        let back = kek.unwrap(&kek.wrap(&key).unwrap()).unwrap();
        assert_eq!(back.as_bytes(), key.as_bytes());
    }

    #[test]
    fn another_kek_is_refused_clearly() {
        let (other, _) = LocalKek::generate(&mut StdRng::seed_from_u64(9));
        let wrapped = kek().wrap(&DataKey::from_bytes([3; 32])).unwrap();
        let err = other.unwrap(&wrapped).unwrap_err();
        assert!(matches!(err, KeyError::WrongKek { .. }), "{err}");
        assert!(
            err.to_string().starts_with("wrong key-encryption key"),
            "{err}"
        );

        // Even if the id were forged to match, the RFC 3394 check catches it.
        let mut forged = wrapped.clone();
        forged.wrapper_id = other.id().to_owned();
        assert!(matches!(
            other.unwrap(&forged),
            Err(KeyError::WrongKek { .. })
        ));

        // And a damaged wrapped key under the right KEK.
        let mut damaged = wrapped.clone();
        damaged.bytes[10] ^= 1;
        assert!(matches!(
            kek().unwrap(&damaged),
            Err(KeyError::WrongKek { .. })
        ));
    }

    #[test]
    fn wrapped_key_shape_is_checked() {
        let kek = kek();
        let mut w = kek.wrap(&DataKey::from_bytes([1; 32])).unwrap();
        w.bytes.pop();
        assert!(matches!(
            kek.unwrap(&w),
            Err(KeyError::BadWrappedKey { .. })
        ));
        w.algorithm = "RSA-OAEP".into();
        assert!(matches!(
            kek.unwrap(&w),
            Err(KeyError::UnsupportedAlgorithm { .. })
        ));
    }

    #[test]
    fn kek_encodings_agree() {
        let raw: Vec<u8> = (0u8..32).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        let id = kek().id().to_owned();
        assert!(id.starts_with("local:") && id.len() == 6 + 16);
        for k in [
            LocalKek::from_bytes(&raw).unwrap(),
            LocalKek::from_encoded(&format!("  {}\n", KEK_HEX.to_uppercase())).unwrap(),
            LocalKek::from_encoded(&b64).unwrap(),
            LocalKek::from_encoded(&b64url).unwrap(),
        ] {
            assert_eq!(k.id(), id);
        }
    }

    #[test]
    fn bad_keks_are_refused_without_echoing_them() {
        let secretish = "deadbeef".repeat(7);
        let err = LocalKek::from_encoded(&secretish).unwrap_err();
        assert!(!err.to_string().contains("deadbeef"), "{err}");
        assert!(LocalKek::from_bytes(&[0; 31]).is_err());
        assert!(LocalKek::from_encoded("not a key!").is_err());
        assert!(LocalKek::from_encoded(
            &base64::engine::general_purpose::STANDARD.encode([0u8; 16])
        )
        .is_err());
    }

    #[test]
    fn kek_files_raw_hex_and_base64() {
        let dir = std::env::temp_dir().join(format!("hz-kek-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let raw: Vec<u8> = (0u8..32).collect();
        let cases: [(&str, Vec<u8>); 3] = [
            ("raw", raw.clone()),
            ("hex", format!("{KEK_HEX}\n").into_bytes()),
            (
                "b64",
                base64::engine::general_purpose::STANDARD
                    .encode(&raw)
                    .into_bytes(),
            ),
        ];
        for (name, content) in cases {
            let path = dir.join(name);
            std::fs::write(&path, content).unwrap();
            assert_eq!(
                LocalKek::from_file(&path).unwrap().id(),
                kek().id(),
                "{name}"
            );
        }
        let missing = LocalKek::from_file(&dir.join("missing")).unwrap_err();
        assert!(matches!(missing, KeyError::Read { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dev_kek_file_is_generated_once() {
        let dir = std::env::temp_dir().join(format!("hz-devkek-{}", std::process::id()));
        let path = dir.join("kek.hex");
        let first = LocalKek::load_or_generate_file(&path).unwrap();
        let second = LocalKek::load_or_generate_file(&path).unwrap();
        assert_eq!(first.id(), second.id());
        assert_eq!(std::fs::read_to_string(&path).unwrap().len(), 64);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_env_var_is_named() {
        let err = LocalKek::from_env("HUIZHEN_TEST_KEK_THAT_IS_NOT_SET_9f3a").unwrap_err();
        assert!(err
            .to_string()
            .contains("HUIZHEN_TEST_KEK_THAT_IS_NOT_SET_9f3a"));
    }

    #[test]
    fn debug_shows_no_secrets() {
        let key = DataKey::from_bytes([0xAB; 32]);
        assert_eq!(format!("{key:?}"), "DataKey(<redacted>)");
        let dbg = format!("{:?}", kek());
        assert!(
            dbg.contains("local:") && !dbg.contains("0001020304"),
            "{dbg}"
        );
    }

    #[test]
    fn wrapped_key_serializes_as_base64() {
        let w = WrappedKey {
            wrapper_id: "local:x".into(),
            algorithm: LocalKek::ALGORITHM.into(),
            bytes: vec![0, 1, 2, 255],
        };
        let json = serde_json::to_string(&w).unwrap();
        assert_eq!(
            json,
            r#"{"wrapper_id":"local:x","algorithm":"AES-256-KW","bytes":"AAEC/w=="}"#
        );
        assert_eq!(serde_json::from_str::<WrappedKey>(&json).unwrap(), w);
    }
}
