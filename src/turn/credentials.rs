//! Short-lived TURN credentials in the "TURN REST API" scheme
//! (draft-uberti-behave-turn-rest, as coturn's `use-auth-secret` and LiveKit use it).
//!
//! The username is `<expiry unix seconds>:<tag>` and the password is
//! `base64(HMAC-SHA1(secret, username))`. The server keeps no table of users: a username
//! carries its own expiry, and the password follows from it and the secret, so a credential
//! is checked with one HMAC and cannot be forged or extended without the secret. The tag is
//! random per grant (never a participant's id or name: usernames travel in clear text inside
//! STUN messages), so a quota per credential is a quota per session.

use aws_lc_rs::hmac;
use base64::Engine as _;
use rand::RngCore as _;

/// The secret that signs TURN credentials, and the clock they expire by.
#[derive(Clone)]
pub struct TurnSecret {
    key: hmac::Key,
}

impl std::fmt::Debug for TurnSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TurnSecret(<redacted>)")
    }
}

/// One credential, as a client puts it into its ICE server configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// `<expiry>:<tag>`.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))`.
    pub password: String,
    /// Unix seconds after which the server refuses it.
    pub expires_at: u64,
}

/// Why a username was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Not `<unix seconds>:<tag>`.
    #[error("username is not <expiry>:<tag>")]
    Malformed,
    /// The expiry has passed.
    #[error("credential expired")]
    Expired,
}

impl TurnSecret {
    /// A secret from configured bytes (at least 32; checked by the configuration).
    pub fn new(secret: &[u8]) -> Self {
        TurnSecret {
            key: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret),
        }
    }

    /// A random secret for this process: credentials are minted and checked by the same
    /// server, so nothing outside needs to know it (a restart invalidates the old ones, and
    /// clients get new ones when they join again).
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self::new(&bytes)
    }

    /// A credential valid until `now_unix + ttl_secs`.
    pub fn mint(&self, now_unix: u64, ttl_secs: u64) -> Credential {
        let mut tag = [0u8; 9];
        rand::rng().fill_bytes(&mut tag);
        let expires_at = now_unix.saturating_add(ttl_secs);
        let username = format!(
            "{expires_at}:{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag)
        );
        let password = self.password(&username);
        Credential {
            username,
            password,
            expires_at,
        }
    }

    /// The password of `username`.
    pub fn password(&self, username: &str) -> String {
        let tag = hmac::sign(&self.key, username.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    }

    /// The expiry of `username` if it is well formed and not expired at `now_unix`.
    pub fn check(&self, username: &str, now_unix: u64) -> Result<u64, CredentialError> {
        let (expiry, tag) = username.split_once(':').ok_or(CredentialError::Malformed)?;
        if tag.is_empty() || tag.len() > 64 || expiry.len() > 20 {
            return Err(CredentialError::Malformed);
        }
        let expiry: u64 = expiry.parse().map_err(|_| CredentialError::Malformed)?;
        if expiry <= now_unix {
            return Err(CredentialError::Expired);
        }
        Ok(expiry)
    }

    /// A MAC over `data` (nonces), truncated to 12 bytes.
    pub(crate) fn mac(&self, data: &[u8]) -> [u8; 12] {
        let tag = hmac::sign(&self.key, data);
        let mut out = [0u8; 12];
        out.copy_from_slice(&tag.as_ref()[..12]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_credential_checks_until_it_expires() {
        let secret = TurnSecret::random();
        let c = secret.mint(1_000, 60);
        assert_eq!(c.expires_at, 1_060);
        assert!(c.username.starts_with("1060:"));
        assert_eq!(secret.password(&c.username), c.password);
        assert_eq!(secret.check(&c.username, 1_059), Ok(1_060));
        assert_eq!(
            secret.check(&c.username, 1_060),
            Err(CredentialError::Expired)
        );
    }

    #[test]
    fn the_password_matches_the_turn_rest_api_formula() {
        // The value `echo -n 1433463275:user | openssl dgst -sha1 -hmac north -binary | base64`
        // prints: what coturn (use-auth-secret) expects for this secret and username.
        let secret = TurnSecret::new(b"north");
        assert_eq!(
            secret.password("1433463275:user"),
            "gzINUM3WTIQQPN0XKO0t3w8OHKk="
        );
    }

    #[test]
    fn another_secret_gives_another_password_and_tags_differ() {
        let a = TurnSecret::random();
        let b = TurnSecret::random();
        let c = a.mint(0, 10);
        assert_ne!(b.password(&c.username), c.password);
        assert_ne!(a.mint(0, 10).username, c.username);
    }

    #[test]
    fn malformed_usernames_are_refused() {
        let s = TurnSecret::random();
        for bad in ["", "user", "x:tag", ":tag", "100:", "-1:tag"] {
            assert_eq!(s.check(bad, 0), Err(CredentialError::Malformed), "{bad}");
        }
        let long = format!("100:{}", "a".repeat(65));
        assert_eq!(s.check(&long, 0), Err(CredentialError::Malformed));
    }
}
