//! The claims huizhen reads from, and writes into, a token.
//!
//! [`Claims`] is the strict shape huizhen mints. Verification reads tokens through the lenient
//! [`RawClaims`] instead, with every claim optional, so that a token lacking `role` is refused
//! as [`TokenError::MissingClaim`]`("role")` rather than as an opaque JSON error, and so that
//! extra claims from the hospital's issuer are ignored.

use std::fmt;

use huizhen_signaling::clinic::{Actor, Role};
use serde::de::IntoDeserializer;
use serde::{Deserialize, Serialize};

use super::TokenError;
use crate::redact::Redacted;

/// What a huizhen token says: who, as what, with which grants, for how long.
///
/// Build one with [`Claims::new`] and the `with_*` methods. `Debug` redacts `sub` and `name`
/// (personal data).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id in the hospital's identity system.
    pub sub: String,
    /// Display name shown to the other participants.
    pub name: String,
    /// Role (`doctor`, `patient`, `companion`, `expert`, `observer`).
    pub role: Role,
    /// Clinic ids the user may act in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clinics: Vec<String>,
    /// The one consultation the user may join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consultation: Option<String>,
    /// The appointment the user owns or accompanies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment: Option<String>,
    /// Token id; identifies one-time expert links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// Not valid before (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

impl Claims {
    /// Claims for `sub` as `role`, issued at `now` and valid for `ttl_secs`, with no grants.
    pub fn new(
        sub: impl Into<String>,
        name: impl Into<String>,
        role: Role,
        now_unix_secs: u64,
        ttl_secs: u64,
    ) -> Claims {
        Claims {
            sub: sub.into(),
            name: name.into(),
            role,
            clinics: Vec::new(),
            consultation: None,
            appointment: None,
            jti: None,
            iat: now_unix_secs,
            exp: now_unix_secs.saturating_add(ttl_secs),
            nbf: None,
            iss: None,
            aud: None,
        }
    }

    /// Claims carrying exactly an actor's identity and grants: what the server mints for an
    /// expert link, and the inverse of verification.
    pub fn for_actor(
        actor: &Actor,
        name: impl Into<String>,
        now_unix_secs: u64,
        ttl_secs: u64,
    ) -> Claims {
        Claims {
            clinics: actor.clinics.iter().map(|c| c.0.clone()).collect(),
            consultation: actor.consultation.as_ref().map(|c| c.0.clone()),
            appointment: actor.appointment.as_ref().map(|a| a.0.clone()),
            jti: actor.token_id.clone(),
            ..Claims::new(
                actor.user.0.clone(),
                name,
                actor.role,
                now_unix_secs,
                ttl_secs,
            )
        }
    }

    /// Add a clinic grant.
    pub fn with_clinic(mut self, clinic: impl Into<String>) -> Claims {
        self.clinics.push(clinic.into());
        self
    }

    /// Grant the one consultation the user may join.
    pub fn with_consultation(mut self, consultation: impl Into<String>) -> Claims {
        self.consultation = Some(consultation.into());
        self
    }

    /// Tie the token to an appointment.
    pub fn with_appointment(mut self, appointment: impl Into<String>) -> Claims {
        self.appointment = Some(appointment.into());
        self
    }

    /// Set the token id (see [`super::generate_token_id`]).
    pub fn with_jti(mut self, jti: impl Into<String>) -> Claims {
        self.jti = Some(jti.into());
        self
    }

    /// Not valid before `nbf` (Unix seconds).
    pub fn with_not_before(mut self, nbf: u64) -> Claims {
        self.nbf = Some(nbf);
        self
    }

    /// Set the issuer (otherwise [`super::TokenMinter`] uses the configured one).
    pub fn with_issuer(mut self, iss: impl Into<String>) -> Claims {
        self.iss = Some(iss.into());
        self
    }

    /// Set the audience (otherwise [`super::TokenMinter`] uses the configured one).
    pub fn with_audience(mut self, aud: impl Into<String>) -> Claims {
        self.aud = Some(aud.into());
        self
    }
}

impl fmt::Debug for Claims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claims")
            .field("sub", &Redacted(self.sub.as_str()))
            .field("name", &Redacted(self.name.as_str()))
            .field("role", &self.role)
            .field("clinics", &self.clinics)
            .field("consultation", &self.consultation)
            .field("appointment", &self.appointment)
            .field("jti", &self.jti.as_ref().map(|j| Redacted(j.as_str())))
            .field("iat", &self.iat)
            .field("exp", &self.exp)
            .field("nbf", &self.nbf)
            .field("iss", &self.iss)
            .field("aud", &self.aud)
            .finish()
    }
}

/// A token's payload as received: everything optional, unknown claims ignored. Duplicate keys
/// and wrongly typed values fail deserialization (and the token is malformed).
#[derive(Deserialize)]
pub(crate) struct RawClaims {
    pub sub: Option<String>,
    pub name: Option<String>,
    pub role: Option<String>,
    pub clinics: Option<Vec<String>>,
    pub consultation: Option<String>,
    pub appointment: Option<String>,
    pub jti: Option<String>,
    pub iat: Option<u64>,
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    pub iss: Option<String>,
    pub aud: Option<Audience>,
}

/// RFC 7519 allows `aud` as one string or an array of strings.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    /// Whether `ours` is among the audiences.
    pub fn names(&self, ours: &str) -> bool {
        match self {
            Audience::One(a) => a == ours,
            Audience::Many(all) => all.iter().any(|a| a == ours),
        }
    }
}

/// The role named by a `role` claim. Parsed through `Role`'s own serde spelling so a role added
/// to the clinic model is accepted here without a second list to keep in step.
pub(crate) fn parse_role(role: &str) -> Result<Role, TokenError> {
    let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
        role.into_deserializer();
    Role::deserialize(de).map_err(|_| TokenError::Malformed("unknown role"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_without_empty_optional_claims() {
        let c = Claims::new("u1", "Dr. Li", Role::Doctor, 1_000, 60);
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "sub": "u1", "name": "Dr. Li", "role": "doctor", "iat": 1000, "exp": 1060
            })
        );
        let back: Claims = serde_json::from_value(json).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn builder_sets_grants() {
        let c = Claims::new("u1", "n", Role::Observer, 0, 10)
            .with_clinic("c1")
            .with_clinic("c2")
            .with_consultation("k1")
            .with_appointment("a1")
            .with_jti("j1")
            .with_not_before(5)
            .with_issuer("iss")
            .with_audience("aud");
        assert_eq!(c.clinics, ["c1", "c2"]);
        assert_eq!(c.consultation.as_deref(), Some("k1"));
        assert_eq!(c.appointment.as_deref(), Some("a1"));
        assert_eq!(c.jti.as_deref(), Some("j1"));
        assert_eq!((c.nbf, c.exp), (Some(5), 10));
        assert_eq!(c.iss.as_deref(), Some("iss"));
        assert_eq!(c.aud.as_deref(), Some("aud"));
    }

    #[test]
    fn for_actor_copies_grants() {
        let mut actor = Actor::new("e1", Role::Expert);
        actor.consultation = Some("k1".into());
        actor.token_id = Some("link-1".into());
        let c = Claims::for_actor(&actor, "Prof. Wu", 100, 600);
        assert_eq!(c.sub, "e1");
        assert_eq!(c.role, Role::Expert);
        assert_eq!(c.consultation.as_deref(), Some("k1"));
        assert_eq!(c.jti.as_deref(), Some("link-1"));
        assert_eq!((c.iat, c.exp), (100, 700));
    }

    #[test]
    fn roles_parse_by_wire_name() {
        for role in [
            Role::Doctor,
            Role::Patient,
            Role::Companion,
            Role::Expert,
            Role::Observer,
        ] {
            assert_eq!(parse_role(role.as_str()), Ok(role));
        }
        assert_eq!(
            parse_role("admin"),
            Err(TokenError::Malformed("unknown role"))
        );
    }

    #[test]
    fn debug_redacts_identity() {
        let c = Claims::new("patient-4711", "Wang Xiaoming", Role::Patient, 0, 10);
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("4711") && !debug.contains("Wang"),
            "{debug}"
        );
    }
}
