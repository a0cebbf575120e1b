//! Verifying a token: signature and algorithm by jsonwebtoken, everything time- and
//! policy-related here against the caller's clock.

use std::collections::HashSet;
use std::fmt;

use base64::Engine as _;
use huizhen_signaling::clinic::{Actor, AppointmentId, ClinicId, ConsultationId, UserId};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;

use super::claims::{parse_role, Audience, RawClaims};
use super::config::{AuthConfig, AuthConfigError, TokenAlgorithm};
use super::TokenError;
use crate::redact::Redacted;

/// Longest token accepted. Real tokens are a few hundred bytes; the cap bounds the work an
/// unauthenticated client can make us do (base64, JSON, a signature check) per message.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A token that passed every check: the actor for the clinic engine, plus what the engine does
/// not keep but the connection needs.
#[derive(Clone, PartialEq, Eq)]
pub struct Verified {
    /// Identity and grants.
    pub actor: Actor,
    /// Display name for the other participants (personal: redacted in `Debug`).
    pub display_name: String,
    /// The token's `exp` (Unix seconds): a connection should not outlive it unchallenged.
    pub expires_at: u64,
    /// The token's `iat` (Unix seconds): revoking a user's tokens covers those issued up to a
    /// moment.
    pub issued_at: u64,
}

impl fmt::Debug for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verified")
            .field("user", &Redacted(self.actor.user.0.as_str()))
            .field("role", &self.actor.role)
            .field("display_name", &Redacted(self.display_name.as_str()))
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Checks tokens against the configured key and policy. Built once at start-up; cheap to share
/// behind an `Arc` (it holds no per-token state).
pub struct TokenVerifier {
    algorithm: TokenAlgorithm,
    key: DecodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: u64,
    max_lifetime_secs: u64,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is left out entirely: for HS256 it is the shared secret.
        f.debug_struct("TokenVerifier")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .field("max_lifetime_secs", &self.max_lifetime_secs)
            .finish_non_exhaustive()
    }
}

/// The header fields we look at before trusting anything else.
#[derive(Deserialize)]
struct HeaderProbe {
    alg: String,
    crit: Option<serde_json::Value>,
}

impl TokenVerifier {
    /// Validate `config` and load its verification key (secret file or public key PEM).
    ///
    /// HS256 with no secret ([`AuthConfig::is_dev_mode`]) is refused here: the caller decides
    /// whether to fill in a development secret.
    pub fn new(config: &AuthConfig) -> Result<TokenVerifier, AuthConfigError> {
        config.validate()?;
        let key = config.decoding_key()?;
        let mut validation = Validation::new(config.algorithm.jwt());
        // jsonwebtoken reads the system clock for `exp`/`nbf`; those checks (and `aud`, whose
        // refusal we want to name precisely) are done in `check_claims` instead.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::new();
        validation.leeway = 0;
        Ok(TokenVerifier {
            algorithm: config.algorithm,
            key,
            validation,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_secs: config.leeway_secs,
            max_lifetime_secs: config.max_lifetime_secs,
        })
    }

    /// The algorithm tokens must be signed with.
    pub fn algorithm(&self) -> TokenAlgorithm {
        self.algorithm
    }

    /// Verify `token` as of `now_unix_secs`.
    ///
    /// Order matters for what the client is told: structure, algorithm and signature first
    /// (nothing in an unsigned payload is believed), then who the token is for, then time last,
    /// so `expired_token` (which invites a retry with a fresh token) is only returned for a
    /// token that would otherwise have been accepted.
    pub fn verify(&self, token: &str, now_unix_secs: u64) -> Result<Verified, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed("token too long"));
        }
        self.check_header(token)?;
        let data = jsonwebtoken::decode::<RawClaims>(token, &self.key, &self.validation)
            .map_err(|e| from_jwt_error(e.into_kind()))?;
        self.check_claims(data.claims, now_unix_secs)
    }

    /// Refuse a foreign `alg` (including `none`) by name before any key is involved, so the
    /// refusal is [`TokenError::WrongAlgorithm`] whatever jsonwebtoken's `Algorithm` enum can
    /// parse, and refuse `crit` extensions, which RFC 7515 §4.1.11 says we must understand.
    fn check_header(&self, token: &str) -> Result<(), TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("not a three-part JWS compact token"));
        };
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| TokenError::Malformed("header is not base64url"))?;
        let header: HeaderProbe = serde_json::from_slice(&header)
            .map_err(|_| TokenError::Malformed("header is not a JWS header"))?;
        if header.alg != self.algorithm.header_name() {
            return Err(TokenError::WrongAlgorithm);
        }
        if header.crit.is_some() {
            return Err(TokenError::Malformed("unsupported critical header"));
        }
        Ok(())
    }

    fn check_claims(&self, raw: RawClaims, now: u64) -> Result<Verified, TokenError> {
        let sub = raw
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(TokenError::MissingClaim("sub"))?;
        let name = raw.name.ok_or(TokenError::MissingClaim("name"))?;
        let role = parse_role(
            raw.role
                .as_deref()
                .ok_or(TokenError::MissingClaim("role"))?,
        )?;
        let iat = raw.iat.ok_or(TokenError::MissingClaim("iat"))?;
        let exp = raw.exp.ok_or(TokenError::MissingClaim("exp"))?;

        if let Some(ours) = &self.issuer {
            if raw.iss.as_deref() != Some(ours.as_str()) {
                return Err(TokenError::WrongIssuer);
            }
        }
        match (&self.audience, &raw.aud) {
            (Some(ours), Some(aud)) if aud.names(ours) => {}
            (None, None) => {}
            (None, Some(Audience::Many(all))) if all.is_empty() => {}
            _ => return Err(TokenError::WrongAudience),
        }

        if exp <= iat {
            return Err(TokenError::Malformed("exp is not after iat"));
        }
        if exp - iat > self.max_lifetime_secs {
            return Err(TokenError::TooLongLived);
        }
        let latest_start = now.saturating_add(self.leeway_secs);
        if iat > latest_start || raw.nbf.is_some_and(|nbf| nbf > latest_start) {
            return Err(TokenError::NotYetValid);
        }
        // RFC 7519 §4.1.4: valid only *before* exp.
        if exp.saturating_add(self.leeway_secs) <= now {
            return Err(TokenError::Expired { at: exp });
        }

        Ok(Verified {
            actor: Actor {
                user: UserId(sub),
                role,
                clinics: raw
                    .clinics
                    .unwrap_or_default()
                    .into_iter()
                    .map(ClinicId)
                    .collect(),
                consultation: raw.consultation.map(ConsultationId),
                appointment: raw.appointment.map(AppointmentId),
                token_id: raw.jti,
            },
            display_name: name,
            expires_at: exp,
            issued_at: iat,
        })
    }
}

/// Map jsonwebtoken's refusal onto ours. Its messages are dropped: some quote JSON parser
/// positions and types, and none add anything a client should learn.
fn from_jwt_error(kind: ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => TokenError::WrongAlgorithm,
        ErrorKind::InvalidToken => TokenError::Malformed("not a three-part JWS compact token"),
        ErrorKind::Base64(_) => TokenError::Malformed("not base64url"),
        ErrorKind::Utf8(_) => TokenError::Malformed("not UTF-8"),
        ErrorKind::Json(_) | ErrorKind::InvalidClaimFormat(_) => {
            TokenError::Malformed("claims are not a JSON object of the expected types")
        }
        // Keys are checked at start-up, so a key error here means the token cannot be checked
        // against our key: as good as a bad signature.
        ErrorKind::InvalidKeyFormat | ErrorKind::InvalidEddsaKey => TokenError::BadSignature,
        // Claim validation (exp, nbf, iss, aud) is disabled in `Validation`, so anything else
        // is unexpected; refuse without guessing.
        _ => TokenError::Malformed("token could not be decoded"),
    }
}
