#![no_main]
//! Token verification (`auth::TokenVerifier::verify`) against an HS256 key, at a fuzzed time:
//!
//! - mode `0`: the rest is the token as a client sends it (header and signature checks);
//! - mode `1`: the rest is a JWS header and claims (split at the first `\n`) that the target
//!   signs with the verifier's own key, so the claim checks see any payload.

use base64::Engine as _;
use huizhen::auth::{AuthConfig, TokenMinter, TokenVerifier};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

#[path = "../common/mod.rs"]
mod common;

const SECRET: &str = "fuzz-secret-0123456789abcdef-0123456789";
/// 2025-01-01T00:00:00Z.
const NOW: u64 = 1_735_689_600;

fn config() -> AuthConfig {
    AuthConfig {
        hs256_secret: Some(SECRET.into()),
        issuer: Some("huizhen".into()),
        ..AuthConfig::default()
    }
}

fn verifier() -> &'static TokenVerifier {
    static V: OnceLock<TokenVerifier> = OnceLock::new();
    V.get_or_init(|| TokenVerifier::new(&config()).expect("verifier"))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sign(header: &[u8], claims: &[u8]) -> String {
    let message = format!("{}.{}", b64(header), b64(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
            .expect("HMAC signs anything");
    format!("{message}.{signature}")
}

fuzz_target!(
    init: common::write_seeds(seeds),
    |data: &[u8]| {
        let mut r = common::Reader(data);
        let mode = r.u8();
        // Around NOW, within a few years either way, or anywhere.
        let skew = r.u32();
        let now = if mode & 0x80 == 0 {
            NOW.wrapping_add(u64::from(skew)).wrapping_sub(1 << 31)
        } else {
            u64::from(skew) << 32 | u64::from(skew)
        };
        let rest = r.0;
        let token = if mode & 1 == 0 {
            let Ok(token) = std::str::from_utf8(rest) else {
                return;
            };
            token.to_owned()
        } else {
            let (header, claims) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (&br#"{"alg":"HS256","typ":"JWT"}"#[..], rest),
            };
            sign(header, claims)
        };
        if let Ok(v) = verifier().verify(&token, now) {
            assert!(v.expires_at > v.issued_at);
            assert!(!v.actor.user.0.is_empty());
        }
    }
);

/// A token minted by the crate's own minter, as the raw token and as signed claims.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use huizhen::auth::Claims;
    use huizhen_signaling::clinic::Role;
    let minter = TokenMinter::new(&config()).expect("minter");
    let claims =
        Claims::new("u1", "Dr. Li", Role::Doctor, NOW, 600).with_jti("t0123");
    let token = minter.mint(&claims).expect("minted");
    let mut raw = vec![0u8, 0x80, 0, 0, 0];
    raw.extend_from_slice(token.as_bytes());
    let mut parts = token.split('.');
    let b64d = |s: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .unwrap()
    };
    let header = b64d(parts.next().unwrap());
    let payload = b64d(parts.next().unwrap());
    let mut signed = vec![1u8, 0x80, 0, 0, 0];
    signed.extend_from_slice(&header);
    signed.push(b'\n');
    signed.extend_from_slice(&payload);
    vec![("minted_token", raw), ("minted_claims", signed)]
}
