//! Token authentication: who is behind a connection, as the hospital's identity system vouches.
//!
//! huizhen never sees a password or an ID card. The hospital's own system verifies real names
//! and hands the browser a signed JWT; the browser presents it in the signaling `auth` message
//! (or in an expert's one-time link). This module turns that token into an
//! [`Actor`](huizhen_signaling::clinic::Actor) for the clinic engine, and refuses it with a
//! [`TokenError`] that maps onto the wire codes `invalid_token` / `expired_token`.
//!
//! The data flow is: [`AuthConfig`] (the `[auth]` TOML section) → [`TokenVerifier::new`] loads
//! the key once at start-up → [`TokenVerifier::verify`] per `auth` message, with the current
//! time passed in. [`TokenMinter`] is the other direction, for the `huizhen token` development
//! command and for expert links the server issues itself.
//!
//! Time is always an argument (Unix seconds), never read here: expiry, `nbf`, `iat` and the
//! lifetime cap are checked against the caller's `now`, so tests are exact and the server can
//! use one clock for everything. jsonwebtoken is used only for what it is good at: parsing,
//! the algorithm check and the signature check.

mod claims;
pub mod config;
mod mint;
mod verify;

#[cfg(test)]
mod tests;

use base64::Engine as _;

pub use claims::Claims;
pub use config::{AuthConfig, AuthConfigError, TokenAlgorithm};
pub use mint::TokenMinter;
pub use verify::{TokenVerifier, Verified, MAX_TOKEN_BYTES};

/// Why a token was refused (or, for [`TokenMinter::mint`], could not be issued).
///
/// Grouped by what is wrong, most fundamental first. No variant carries any part of the token
/// or of a key: these messages end up in logs and on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    // ----- not a token we can trust at all (forged, damaged, or from a confused client) -----
    /// Not a well-formed JWS compact token, or its JSON is not what a token holds. The reason is
    /// a fixed string, never an excerpt of the input.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The signature does not match the configured key: forged, tampered with, or signed by
    /// another issuer's key.
    #[error("token signature does not verify")]
    BadSignature,
    /// The header names another algorithm than the configured one (`none`, `HS512`, or HS256
    /// presented to an EdDSA server: the classic key-confusion attack).
    #[error("token algorithm is not the configured one")]
    WrongAlgorithm,

    // ----- genuine, but not valid at this time -----
    /// The token expired at `at` (Unix seconds), leeway included. The one refusal a client can
    /// fix by fetching a fresh token, hence its own wire code.
    #[error("token expired at {at}")]
    Expired {
        /// The token's `exp` claim.
        at: u64,
    },
    /// The token's `nbf`, or its `iat`, lies in the future beyond the leeway.
    #[error("token is not valid yet")]
    NotYetValid,

    // ----- genuine, but not acceptable to this server -----
    /// `exp - iat` exceeds `auth.max_lifetime_secs`: a long-lived token is a stolen-token risk,
    /// so it is refused even if the issuer signed it.
    #[error("token lifetime exceeds the configured maximum")]
    TooLongLived,
    /// `iss` is missing or not the configured issuer.
    #[error("token issuer is not the configured one")]
    WrongIssuer,
    /// `aud` is missing or does not name the configured audience, or names an audience while
    /// none is configured (RFC 7519 §4.1.3: a token addressed to someone else is refused).
    #[error("token audience is not this server")]
    WrongAudience,
    /// A claim huizhen needs is absent (or, for `sub`, empty).
    #[error("token lacks the `{0}` claim")]
    MissingClaim(&'static str),

    // ----- our own fault (minting only) -----
    /// Signing failed. The key was checked at start-up, so this should not happen; the detail is
    /// not kept because it could describe the key.
    #[error("token could not be signed")]
    SigningFailed,
}

impl TokenError {
    /// The signaling wire code (see `huizhen_signaling::protocol::ErrorCode`).
    ///
    /// Every refusal is `invalid_token` except expiry: telling a client *which* check failed
    /// helps an attacker more than it helps the client, while `expired_token` tells an honest
    /// client to fetch a new token and retry. [`TokenError::SigningFailed`] is a server fault
    /// (`internal`).
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Expired { .. } => "expired_token",
            TokenError::SigningFailed => "internal",
            _ => "invalid_token",
        }
    }
}

/// A fresh random HS256 secret for development (32 random bytes, base64url without padding,
/// 43 characters).
///
/// Used when `huizhen serve` runs without a configured secret: tokens then only verify within
/// that process, which is exactly what a local demo needs and nothing more. The string itself
/// (its UTF-8 bytes) is the secret, as with a configured `auth.hs256_secret`.
pub fn generate_dev_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh random token id (`jti`): 16 random bytes, base64url without padding.
///
/// One-time expert links are recognised by their `jti`, so it must be unguessable, not merely
/// unique.
pub fn generate_token_id() -> String {
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
