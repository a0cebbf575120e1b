//! Token round trips and refusals, all at fixed times (no clock is read).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use base64::Engine as _;
use huizhen_signaling::clinic::{Actor, Role};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};

use super::*;

const SECRET: &str = "test-secret-0123456789abcdef-0123456789";
const OTHER_SECRET: &str = "another-secret-0123456789abcdef-987654";
/// 2025-01-01T00:00:00Z: any fixed instant works.
const NOW: u64 = 1_735_689_600;

fn hs_config() -> AuthConfig {
    AuthConfig {
        hs256_secret: Some(SECRET.into()),
        ..AuthConfig::default()
    }
}

fn hs_pair(config: &AuthConfig) -> (TokenMinter, TokenVerifier) {
    (
        TokenMinter::new(config).unwrap(),
        TokenVerifier::new(config).unwrap(),
    )
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Sign an arbitrary JSON payload, for tokens `Claims` cannot express.
fn sign_json(payload: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        payload,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn valid_payload() -> Value {
    json!({"sub": "u1", "name": "Dr. Li", "role": "doctor", "iat": NOW, "exp": NOW + 600})
}

/// A scratch directory for key files, removed on drop. Named by process and counter so
/// parallel tests do not collide.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "huizhen-auth-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An EdDSA config with a freshly generated key pair written as PEM files.
fn eddsa_config(dir: &Scratch) -> AuthConfig {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    AuthConfig {
        algorithm: TokenAlgorithm::Eddsa,
        eddsa_public_key: Some(dir.write("ed.pub.pem", &pair.public_key_pem())),
        eddsa_private_key: Some(dir.write("ed.key.pem", &pair.serialize_pem())),
        ..AuthConfig::default()
    }
}

fn full_claims() -> Claims {
    Claims::new("doc-7", "Dr. Li", Role::Doctor, NOW, 3600)
        .with_clinic("cardiology")
        .with_clinic("internal")
        .with_consultation("k-1")
        .with_appointment("a-1")
        .with_jti("jti-1")
}

fn expected_actor() -> Actor {
    let mut actor = Actor::new("doc-7", Role::Doctor);
    actor.clinics = vec!["cardiology".into(), "internal".into()];
    actor.consultation = Some("k-1".into());
    actor.appointment = Some("a-1".into());
    actor.token_id = Some("jti-1".into());
    actor
}

// ----- round trips -----

#[test]
fn hs256_round_trip() {
    let (minter, verifier) = hs_pair(&hs_config());
    let token = minter.mint(&full_claims()).unwrap();
    let v = verifier.verify(&token, NOW + 10).unwrap();
    assert_eq!(v.actor, expected_actor());
    assert_eq!(v.display_name, "Dr. Li");
    assert_eq!(v.expires_at, NOW + 3600);
}

#[test]
fn eddsa_round_trip() {
    let dir = Scratch::new();
    let config = eddsa_config(&dir);
    let minter = TokenMinter::new(&config).unwrap();
    let token = minter.mint(&full_claims()).unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);

    // The verifier needs only the public key.
    let verify_only = AuthConfig {
        eddsa_private_key: None,
        ..config
    };
    let verifier = TokenVerifier::new(&verify_only).unwrap();
    assert_eq!(verifier.algorithm(), TokenAlgorithm::Eddsa);
    let v = verifier.verify(&token, NOW).unwrap();
    assert_eq!(v.actor, expected_actor());

    // Minting without the private key is a configuration error naming the field.
    let err = TokenMinter::new(&verify_only).unwrap_err();
    assert_eq!(err.field(), "auth.eddsa_private_key");
}

#[test]
fn eddsa_token_from_another_key_is_a_bad_signature() {
    let (dir_a, dir_b) = (Scratch::new(), Scratch::new());
    let token = TokenMinter::new(&eddsa_config(&dir_a))
        .unwrap()
        .mint(&full_claims())
        .unwrap();
    let verifier = TokenVerifier::new(&eddsa_config(&dir_b)).unwrap();
    assert_eq!(verifier.verify(&token, NOW), Err(TokenError::BadSignature));
}

#[test]
fn eddsa_mismatched_key_pair_is_refused_at_start_up() {
    let (dir_a, dir_b) = (Scratch::new(), Scratch::new());
    let a = eddsa_config(&dir_a);
    let b = eddsa_config(&dir_b);
    let mixed = AuthConfig {
        eddsa_private_key: b.eddsa_private_key,
        ..a
    };
    let err = TokenMinter::new(&mixed).unwrap_err();
    assert_eq!(err.field(), "auth.eddsa_private_key");
    assert!(err.to_string().contains("does not belong"), "{err}");
}

#[test]
fn eddsa_key_files_of_the_wrong_kind_are_refused() {
    let dir = Scratch::new();
    let config = eddsa_config(&dir);
    // The private key where the public one belongs, and vice versa.
    let swapped = AuthConfig {
        eddsa_public_key: config.eddsa_private_key.clone(),
        eddsa_private_key: config.eddsa_public_key.clone(),
        ..config.clone()
    };
    let err = TokenVerifier::new(&swapped).unwrap_err();
    assert_eq!(err.field(), "auth.eddsa_public_key");
    assert!(matches!(err, AuthConfigError::BadKey { .. }), "{err}");
    // An EC key is not an Ed25519 key.
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ec_config = AuthConfig {
        eddsa_public_key: Some(dir.write("ec.pub.pem", &ec.public_key_pem())),
        eddsa_private_key: Some(dir.write("ec.key.pem", &ec.serialize_pem())),
        ..config
    };
    let err = TokenVerifier::new(&ec_config).unwrap_err();
    assert_eq!(err.field(), "auth.eddsa_public_key");
    let err = TokenMinter::new(&ec_config).unwrap_err();
    assert_eq!(err.field(), "auth.eddsa_private_key");
}

#[test]
fn secret_file_and_inline_secret_interoperate() {
    let dir = Scratch::new();
    let from_file = AuthConfig {
        hs256_secret_file: Some(dir.write("secret", &format!("{SECRET}\n"))),
        ..AuthConfig::default()
    };
    let token = TokenMinter::new(&from_file)
        .unwrap()
        .mint(&full_claims())
        .unwrap();
    let verifier = TokenVerifier::new(&hs_config()).unwrap();
    assert!(verifier.verify(&token, NOW).is_ok());

    let short = AuthConfig {
        hs256_secret_file: Some(dir.write("short", "tiny\n")),
        ..AuthConfig::default()
    };
    let err = TokenVerifier::new(&short).unwrap_err();
    assert_eq!(err.field(), "auth.hs256_secret_file");
    assert!(!err.to_string().contains("tiny"), "{err}");
}

#[test]
fn dev_mode_needs_a_secret_filled_in() {
    let dev = AuthConfig::default();
    assert!(dev.is_dev_mode());
    let err = TokenVerifier::new(&dev).unwrap_err();
    assert_eq!(err.field(), "auth.hs256_secret");

    let secret = generate_dev_secret();
    assert_eq!(secret.len(), 43);
    assert_ne!(secret, generate_dev_secret());
    let filled = AuthConfig {
        hs256_secret: Some(secret),
        ..dev
    };
    let (minter, verifier) = hs_pair(&filled);
    let token = minter.mint(&full_claims()).unwrap();
    assert!(verifier.verify(&token, NOW).is_ok());
}

#[test]
fn token_ids_are_random() {
    let id = generate_token_id();
    assert_eq!(id.len(), 22);
    assert_ne!(id, generate_token_id());
}

// ----- time -----

#[test]
fn expiry_honours_the_leeway() {
    let (minter, verifier) = hs_pair(&hs_config()); // leeway 30 s
    let exp = NOW + 3600;
    let token = minter.mint(&full_claims()).unwrap();
    assert!(verifier.verify(&token, exp - 1).is_ok());
    assert!(verifier.verify(&token, exp + 29).is_ok());
    let err = verifier.verify(&token, exp + 30).unwrap_err();
    assert_eq!(err, TokenError::Expired { at: exp });
    assert_eq!(err.code(), "expired_token");

    let strict = AuthConfig {
        leeway_secs: 0,
        ..hs_config()
    };
    let verifier = TokenVerifier::new(&strict).unwrap();
    assert_eq!(
        verifier.verify(&token, exp),
        Err(TokenError::Expired { at: exp })
    );
}

#[test]
fn not_before_in_the_future_is_refused() {
    let (minter, verifier) = hs_pair(&hs_config());
    let token = minter
        .mint(&full_claims().with_not_before(NOW + 100))
        .unwrap();
    assert_eq!(verifier.verify(&token, NOW), Err(TokenError::NotYetValid));
    assert_eq!(
        verifier.verify(&token, NOW + 69),
        Err(TokenError::NotYetValid)
    );
    assert!(verifier.verify(&token, NOW + 70).is_ok()); // within leeway
    assert!(verifier.verify(&token, NOW + 100).is_ok());
}

#[test]
fn issued_in_the_future_is_refused() {
    let (minter, verifier) = hs_pair(&hs_config());
    let token = minter.mint(&full_claims()).unwrap(); // iat = NOW
    assert_eq!(
        verifier.verify(&token, NOW - 31),
        Err(TokenError::NotYetValid)
    );
    assert!(verifier.verify(&token, NOW - 30).is_ok());
}

#[test]
fn lifetime_is_capped() {
    let config = AuthConfig {
        max_lifetime_secs: 3600,
        ..hs_config()
    };
    let (minter, verifier) = hs_pair(&config);
    let ok = Claims::new("u", "n", Role::Patient, NOW, 3600);
    assert!(verifier.verify(&minter.mint(&ok).unwrap(), NOW).is_ok());

    let long = Claims::new("u", "n", Role::Patient, NOW, 3601);
    assert_eq!(minter.mint(&long), Err(TokenError::TooLongLived));
    // Signed elsewhere (the issuer ignored our cap): still refused.
    let mut payload = valid_payload();
    payload["exp"] = json!(NOW + 3601);
    let token = sign_json(&payload, SECRET);
    assert_eq!(verifier.verify(&token, NOW), Err(TokenError::TooLongLived));
}

#[test]
fn exp_not_after_iat_is_malformed() {
    let (minter, verifier) = hs_pair(&hs_config());
    let zero = Claims::new("u", "n", Role::Patient, NOW, 0);
    assert!(matches!(minter.mint(&zero), Err(TokenError::Malformed(_))));
    let mut payload = valid_payload();
    payload["exp"] = json!(NOW - 1);
    let token = sign_json(&payload, SECRET);
    assert!(matches!(
        verifier.verify(&token, NOW),
        Err(TokenError::Malformed(_))
    ));
}

// ----- forgery and confusion -----

#[test]
fn token_signed_with_another_secret_is_a_bad_signature() {
    let verifier = TokenVerifier::new(&hs_config()).unwrap();
    let token = sign_json(&valid_payload(), OTHER_SECRET);
    let err = verifier.verify(&token, NOW).unwrap_err();
    assert_eq!(err, TokenError::BadSignature);
    assert_eq!(err.code(), "invalid_token");
}

#[test]
fn tampered_payload_is_a_bad_signature() {
    let (minter, verifier) = hs_pair(&hs_config());
    let claims = Claims::new("pat-1", "Wang", Role::Patient, NOW, 600);
    let token = minter.mint(&claims).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    // Promote the patient to doctor, keep the signature.
    let mut forged = claims.clone();
    forged.role = Role::Doctor;
    forged.clinics = vec!["cardiology".into()];
    let payload = b64(&serde_json::to_vec(&forged).unwrap());
    let tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
    assert_eq!(
        verifier.verify(&tampered, NOW),
        Err(TokenError::BadSignature)
    );
    // A flipped signature character as well.
    let mut sig = parts[2].to_owned();
    let last = if sig.ends_with('A') { "B" } else { "A" };
    sig.replace_range(sig.len() - 1.., last);
    let bad_sig = format!("{}.{}.{}", parts[0], parts[1], sig);
    assert!(verifier.verify(&bad_sig, NOW).is_err());
}

#[test]
fn alg_none_is_refused() {
    let verifier = TokenVerifier::new(&hs_config()).unwrap();
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64(valid_payload().to_string().as_bytes());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}.c2ln"),
    ] {
        let err = verifier.verify(&token, NOW).unwrap_err();
        assert_eq!(err, TokenError::WrongAlgorithm);
        assert_eq!(err.code(), "invalid_token");
    }
    // Also spelled differently.
    let header = b64(br#"{"alg":"None"}"#);
    assert_eq!(
        verifier.verify(&format!("{header}.{payload}."), NOW),
        Err(TokenError::WrongAlgorithm)
    );
}

#[test]
fn other_hmac_algorithm_with_the_right_secret_is_refused() {
    let verifier = TokenVerifier::new(&hs_config()).unwrap();
    let token = jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::HS512),
        &valid_payload(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        verifier.verify(&token, NOW),
        Err(TokenError::WrongAlgorithm)
    );
}

#[test]
fn hs256_token_is_refused_by_an_eddsa_verifier() {
    let dir = Scratch::new();
    let config = eddsa_config(&dir);
    let verifier = TokenVerifier::new(&config).unwrap();
    // Any HS256 token, including the key-confusion attack: HMAC keyed with the public key PEM.
    let public_pem = std::fs::read_to_string(config.eddsa_public_key.as_deref().unwrap()).unwrap();
    for secret in [SECRET, public_pem.as_str()] {
        let token = sign_json(&valid_payload(), secret);
        assert_eq!(
            verifier.verify(&token, NOW),
            Err(TokenError::WrongAlgorithm)
        );
    }
    // And the other way round.
    let eddsa_token = TokenMinter::new(&config)
        .unwrap()
        .mint(&full_claims())
        .unwrap();
    let hs_verifier = TokenVerifier::new(&hs_config()).unwrap();
    assert_eq!(
        hs_verifier.verify(&eddsa_token, NOW),
        Err(TokenError::WrongAlgorithm)
    );
}

#[test]
fn critical_header_extensions_are_refused() {
    let verifier = TokenVerifier::new(&hs_config()).unwrap();
    let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
    header.crit = Some(vec!["exp".into()]);
    let token = jsonwebtoken::encode(
        &header,
        &valid_payload(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert!(matches!(
        verifier.verify(&token, NOW),
        Err(TokenError::Malformed(_))
    ));
}

// ----- claims -----

#[test]
fn missing_claims_are_named() {
    let verifier = TokenVerifier::new(&hs_config()).unwrap();
    for claim in ["sub", "name", "role", "iat", "exp"] {
        let mut payload = valid_payload();
        payload.as_object_mut().unwrap().remove(claim);
        let token = sign_json(&payload, SECRET);
        assert_eq!(
            verifier.verify(&token, NOW),
            Err(TokenError::MissingClaim(claim)),
            "{claim}"
        );
    }
    let mut payload = valid_payload();
    payload["sub"] = json!("");
    let token = sign_json(&payload, SECRET);
    assert_eq!(
        verifier.verify(&token, NOW),
        Err(TokenError::MissingClaim("sub"))
    );
    let minter = TokenMinter::new(&hs_config()).unwrap();
    let nameless = Claims::new("", "n", Role::Patient, NOW, 60);
    assert_eq!(minter.mint(&nameless), Err(TokenError::MissingClaim("sub")));
}

#[test]
fn unknown_role_and_mistyped_claims_are_malformed() {
    let verifier = TokenVerifier::new(&hs_config()).unwrap();
    let mut payload = valid_payload();
    payload["role"] = json!("admin");
    let token = sign_json(&payload, SECRET);
    assert_eq!(
        verifier.verify(&token, NOW),
        Err(TokenError::Malformed("unknown role"))
    );
    for (claim, value) in [
        ("exp", json!("tomorrow")),
        ("sub", json!(42)),
        ("clinics", json!("c1")),
    ] {
        let mut payload = valid_payload();
        payload[claim] = value;
        let token = sign_json(&payload, SECRET);
        assert!(
            matches!(verifier.verify(&token, NOW), Err(TokenError::Malformed(_))),
            "{claim}"
        );
    }
}

#[test]
fn extra_claims_are_ignored() {
    let verifier = TokenVerifier::new(&hs_config()).unwrap();
    let mut payload = valid_payload();
    payload["department"] = json!("cardiology");
    payload["clinics"] = Value::Null;
    let token = sign_json(&payload, SECRET);
    let v = verifier.verify(&token, NOW).unwrap();
    assert_eq!(v.actor, Actor::new("u1", Role::Doctor));
}

#[test]
fn issuer_is_checked_when_configured() {
    let config = AuthConfig {
        issuer: Some("https://id.hospital.example".into()),
        ..hs_config()
    };
    let (minter, verifier) = hs_pair(&config);
    // The minter fills in the configured issuer.
    let token = minter.mint(&full_claims()).unwrap();
    assert!(verifier.verify(&token, NOW).is_ok());
    assert_eq!(
        minter.mint(&full_claims().with_issuer("https://evil.example")),
        Err(TokenError::WrongIssuer)
    );

    let mut payload = valid_payload();
    payload["iss"] = json!("https://evil.example");
    let wrong = sign_json(&payload, SECRET);
    assert_eq!(verifier.verify(&wrong, NOW), Err(TokenError::WrongIssuer));
    let missing = sign_json(&valid_payload(), SECRET);
    assert_eq!(verifier.verify(&missing, NOW), Err(TokenError::WrongIssuer));
}

#[test]
fn audience_is_checked() {
    let config = AuthConfig {
        audience: Some("huizhen".into()),
        ..hs_config()
    };
    let (minter, verifier) = hs_pair(&config);
    let token = minter.mint(&full_claims()).unwrap();
    assert!(verifier.verify(&token, NOW).is_ok());

    let with_aud = |aud: Value| {
        let mut payload = valid_payload();
        payload["aud"] = aud;
        sign_json(&payload, SECRET)
    };
    // One of several audiences is enough.
    assert!(verifier
        .verify(&with_aud(json!(["pacs", "huizhen"])), NOW)
        .is_ok());
    for aud in [json!("pacs"), json!(["pacs", "his"]), json!([])] {
        assert_eq!(
            verifier.verify(&with_aud(aud.clone()), NOW),
            Err(TokenError::WrongAudience),
            "{aud}"
        );
    }
    let missing = sign_json(&valid_payload(), SECRET);
    assert_eq!(
        verifier.verify(&missing, NOW),
        Err(TokenError::WrongAudience)
    );

    // No audience configured: a token addressed to someone else is still not for us.
    let open = TokenVerifier::new(&hs_config()).unwrap();
    assert_eq!(
        open.verify(&with_aud(json!("pacs")), NOW),
        Err(TokenError::WrongAudience)
    );
    let open_minter = TokenMinter::new(&hs_config()).unwrap();
    assert_eq!(
        open_minter.mint(&full_claims().with_audience("pacs")),
        Err(TokenError::WrongAudience)
    );
}

// ----- malformed input -----

#[test]
fn malformed_tokens_are_refused() {
    let verifier = TokenVerifier::new(&hs_config()).unwrap();
    let good = TokenMinter::new(&hs_config())
        .unwrap()
        .mint(&full_claims())
        .unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let cases = [
        String::new(),
        "not a token".into(),
        "a.b".into(),
        format!("{good}.extra.parts"),
        format!("!!!.{}.{}", parts[1], parts[2]),
        format!("{}.!!!.{}", parts[0], parts[2]),
        format!("{}.{}.{}", b64(b"[]"), parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], b64(b"not json"), parts[2]),
        "x".repeat(MAX_TOKEN_BYTES + 1),
    ];
    for token in &cases {
        let err = verifier.verify(token, NOW).unwrap_err();
        assert!(
            matches!(err, TokenError::Malformed(_) | TokenError::BadSignature),
            "{err:?} for {token:.40}"
        );
        assert_eq!(err.code(), "invalid_token");
    }
}

// ----- nothing secret or personal leaks -----

#[test]
fn secrets_and_tokens_stay_out_of_debug_and_errors() {
    let config = hs_config();
    let (minter, verifier) = hs_pair(&config);
    for debug in [
        format!("{config:?}"),
        format!("{minter:?}"),
        format!("{verifier:?}"),
    ] {
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
    }

    let token = minter.mint(&full_claims()).unwrap();
    let v = verifier.verify(&token, NOW).unwrap();
    let debug = format!("{v:?}");
    assert!(
        !debug.contains("Dr. Li") && !debug.contains("doc-7"),
        "{debug}"
    );

    let forged = sign_json(&valid_payload(), OTHER_SECRET);
    let errors = [
        verifier.verify(&token, NOW + 100_000).unwrap_err(),
        verifier.verify(&forged, NOW).unwrap_err(),
        verifier.verify(&format!("{token}x.y"), NOW).unwrap_err(),
    ];
    for err in errors {
        let text = format!("{err} {err:?}");
        for part in token.split('.').chain(forged.split('.')) {
            assert!(!text.contains(part), "{text}");
        }
        assert!(
            !text.contains(SECRET) && !text.contains(OTHER_SECRET),
            "{text}"
        );
    }
}

#[test]
fn codes_match_the_wire() {
    let all = [
        TokenError::Malformed("x"),
        TokenError::BadSignature,
        TokenError::WrongAlgorithm,
        TokenError::NotYetValid,
        TokenError::TooLongLived,
        TokenError::WrongIssuer,
        TokenError::WrongAudience,
        TokenError::MissingClaim("sub"),
    ];
    for err in all {
        assert_eq!(err.code(), "invalid_token", "{err:?}");
    }
    assert_eq!(TokenError::Expired { at: 1 }.code(), "expired_token");
    assert_eq!(TokenError::SigningFailed.code(), "internal");
}

#[allow(dead_code)]
fn _assert_shareable(v: TokenVerifier, m: TokenMinter) -> impl Send + Sync {
    (v, m)
}
