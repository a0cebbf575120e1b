//! Minting tokens: for `huizhen token` in development and for the one-time expert links the
//! server issues itself. In production the hospital's identity system mints patient and doctor
//! tokens; huizhen then holds at most an EdDSA private key dedicated to expert links, or none.

use std::fmt;

use jsonwebtoken::{EncodingKey, Header};

use super::claims::Claims;
use super::config::{AuthConfig, AuthConfigError, TokenAlgorithm};
use super::TokenError;

/// Signs [`Claims`] with the configured key.
///
/// It refuses to mint what a [`super::TokenVerifier`] built from the same configuration would
/// refuse on grounds known at minting time (empty `sub`, lifetime, issuer, audience), so a
/// mistake surfaces where it is made, not as a confused user's failed login.
pub struct TokenMinter {
    algorithm: TokenAlgorithm,
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
    max_lifetime_secs: u64,
}

impl fmt::Debug for TokenMinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenMinter")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("max_lifetime_secs", &self.max_lifetime_secs)
            .finish_non_exhaustive()
    }
}

impl TokenMinter {
    /// Validate `config` and load its signing key: the HS256 secret, or for EdDSA the private
    /// key, which must belong to the configured public key (checked by signing and verifying a
    /// probe, so a mismatched pair fails at start-up instead of on every link).
    pub fn new(config: &AuthConfig) -> Result<TokenMinter, AuthConfigError> {
        config.validate()?;
        let key = config.encoding_key()?;
        if config.algorithm == TokenAlgorithm::Eddsa {
            let public = config.decoding_key()?;
            let alg = jsonwebtoken::Algorithm::EdDSA;
            let probe = b"huizhen key pair probe";
            let matches = jsonwebtoken::crypto::sign(probe, &key, alg)
                .and_then(|sig| jsonwebtoken::crypto::verify(&sig, probe, &public, alg))
                .unwrap_or(false);
            if !matches {
                return Err(AuthConfigError::Invalid {
                    field: "auth.eddsa_private_key",
                    message: "does not belong to auth.eddsa_public_key".into(),
                });
            }
        }
        Ok(TokenMinter {
            algorithm: config.algorithm,
            key,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            max_lifetime_secs: config.max_lifetime_secs,
        })
    }

    /// The longest lifetime the verifier accepts: callers minting their own tokens (demo
    /// links, expert links) cap their lifetimes with it.
    pub fn max_lifetime_secs(&self) -> u64 {
        self.max_lifetime_secs
    }

    /// Sign `claims`. A missing `iss` or `aud` is filled in from the configuration.
    pub fn mint(&self, claims: &Claims) -> Result<String, TokenError> {
        if claims.sub.is_empty() {
            return Err(TokenError::MissingClaim("sub"));
        }
        if claims.exp <= claims.iat {
            return Err(TokenError::Malformed("exp is not after iat"));
        }
        if claims.exp - claims.iat > self.max_lifetime_secs {
            return Err(TokenError::TooLongLived);
        }
        let mut claims = claims.clone();
        match (&self.issuer, &claims.iss) {
            (Some(ours), None) => claims.iss = Some(ours.clone()),
            (Some(ours), Some(theirs)) if ours != theirs => return Err(TokenError::WrongIssuer),
            _ => {}
        }
        match (&self.audience, &claims.aud) {
            (Some(ours), None) => claims.aud = Some(ours.clone()),
            (Some(ours), Some(theirs)) if ours == theirs => {}
            (None, None) => {}
            _ => return Err(TokenError::WrongAudience),
        }
        jsonwebtoken::encode(&Header::new(self.algorithm.jwt()), &claims, &self.key)
            .map_err(|_| TokenError::SigningFailed)
    }
}
