//! Resume tokens: which participant a new socket may take back after its old one dropped.
//!
//! A token is issued with `joined` (and a fresh one with every `resumed`): 32 random bytes,
//! base64url, a bearer secret of the client like its DTLS session. Only its SHA-256 is kept,
//! so the table leaks nothing usable and a lookup does not compare secrets byte by byte.
//! An entry lives while its socket is open and for the grace period after it closed; it is
//! spent by the resume that uses it. The table is bounded: expired entries are dropped on
//! every change, and past [`MAX_ENTRIES`] no new token is issued (that participant simply
//! cannot resume; its call goes on).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use huizhen_signaling::clinic::{Actor, ConsultationId};
use huizhen_signaling::protocol::ResumeGrant;
use sha2::{Digest, Sha256};

use crate::sfu::ParticipantId;

/// Most tokens held at once (open sockets plus sockets in their grace period).
pub const MAX_ENTRIES: usize = 100_000;

/// What a token takes back.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The participant.
    pub participant: ParticipantId,
    /// The identity it entered with: a resume must come from the same user.
    pub actor: Option<Actor>,
    /// The consultation it is in, if any.
    pub consultation: Option<ConsultationId>,
    /// When its socket closed plus the grace; `None` while the socket is open.
    expires: Option<Instant>,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// Never issued, already spent, or its grace ended.
    #[error("unknown or expired resume token; join again")]
    Unknown,
    /// The participant entered as a user, and this socket is not authenticated as them.
    #[error("this participant entered as a signed-in user: send auth as that user first")]
    WrongUser,
}

/// The table of live tokens.
#[derive(Debug)]
pub struct ResumeRegistry {
    grace: Duration,
    entries: HashMap<[u8; 32], Entry>,
}

fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl ResumeRegistry {
    /// A table whose tokens outlive their socket by `grace` (zero: resume is off).
    pub fn new(grace: Duration) -> ResumeRegistry {
        ResumeRegistry {
            grace,
            entries: HashMap::new(),
        }
    }

    /// Number of tokens held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no token is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn prune(&mut self, now: Instant) {
        self.entries
            .retain(|_, e| e.expires.is_none_or(|t| now < t));
    }

    /// A new token for a participant about to join or resume; `None` when resume is off or
    /// the table is full. It takes effect with [`Self::register`].
    pub fn grant(&mut self, now: Instant) -> Option<(String, ResumeGrant)> {
        use base64::Engine;
        if self.grace.is_zero() {
            return None;
        }
        self.prune(now);
        if self.entries.len() >= MAX_ENTRIES {
            return None;
        }
        let bytes: [u8; 32] = rand::random();
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let grant = ResumeGrant {
            token: token.clone(),
            grace_seconds: self.grace.as_secs(),
        };
        Some((token, grant))
    }

    /// `token` (from [`Self::grant`]) now takes back `participant`, whose socket is open.
    pub fn register(
        &mut self,
        token: &str,
        participant: ParticipantId,
        actor: Option<Actor>,
        consultation: Option<ConsultationId>,
    ) {
        self.entries.insert(
            key(token),
            Entry {
                participant,
                actor,
                consultation,
                expires: None,
            },
        );
    }

    /// [`Self::grant`] and [`Self::register`] at once.
    pub fn issue(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        actor: Option<Actor>,
        consultation: Option<ConsultationId>,
    ) -> Option<(String, ResumeGrant)> {
        let (token, grant) = self.grant(now)?;
        self.register(&token, participant, actor, consultation);
        Some((token, grant))
    }

    /// The socket holding `token` closed: the token stays good for the grace.
    pub fn socket_closed(&mut self, now: Instant, token: &str) {
        if let Some(e) = self.entries.get_mut(&key(token)) {
            e.expires = Some(now + self.grace);
        }
        self.prune(now);
    }

    /// The participant left for good (its own `leave`): the token is void.
    pub fn forget(&mut self, token: &str) {
        self.entries.remove(&key(token));
    }

    /// `user` enters `consultation` afresh (`join_consultation`, e.g. after a page reload that
    /// lost its peer connection): the participants its earlier sockets left there can never be
    /// resumed and would show as a second tile of the same person. Their tokens go; the caller
    /// removes them from the room.
    pub fn supersede(
        &mut self,
        user: &huizhen_signaling::clinic::UserId,
        consultation: &ConsultationId,
    ) -> Vec<ParticipantId> {
        let mut gone = Vec::new();
        self.entries.retain(|_, e| {
            let stale = e.consultation.as_ref() == Some(consultation)
                && e.actor.as_ref().is_some_and(|a| &a.user == user);
            if stale {
                gone.push(e.participant);
            }
            !stale
        });
        gone
    }

    /// Spend `token` for a socket authenticated as `user` (or not at all). A token refused
    /// for the wrong user is kept for the right one.
    pub fn take(
        &mut self,
        now: Instant,
        token: &str,
        user: Option<&huizhen_signaling::clinic::UserId>,
    ) -> Result<Entry, ResumeError> {
        self.prune(now);
        let k = key(token);
        let entry = self.entries.get(&k).ok_or(ResumeError::Unknown)?;
        if let Some(actor) = &entry.actor {
            if user != Some(&actor.user) {
                return Err(ResumeError::WrongUser);
            }
        }
        Ok(self.entries.remove(&k).expect("present"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use huizhen_signaling::clinic::{Role, UserId};

    fn actor(user: &str) -> Actor {
        Actor::new(user, Role::Patient)
    }

    #[test]
    fn a_token_is_good_while_its_socket_is_open_and_for_the_grace_after_once() {
        let t0 = Instant::now();
        let mut r = ResumeRegistry::new(Duration::from_secs(30));
        let (token, grant) = r.issue(t0, ParticipantId(7), None, None).unwrap();
        assert_eq!(grant.grace_seconds, 30);
        assert_eq!(token.len(), 43);
        // Open socket: taken over at any time (a half-open old socket).
        let e = r.take(t0 + Duration::from_secs(300), &token, None).unwrap();
        assert_eq!(e.participant, ParticipantId(7));
        // Spent.
        assert_eq!(r.take(t0, &token, None).unwrap_err(), ResumeError::Unknown);
        let (token, _) = r.issue(t0, ParticipantId(8), None, None).unwrap();
        r.socket_closed(t0, &token);
        assert!(r.take(t0 + Duration::from_secs(30), &token, None).is_err());
        assert!(r.is_empty(), "the expired entry is dropped");
        let (token, _) = r.issue(t0, ParticipantId(9), None, None).unwrap();
        r.socket_closed(t0, &token);
        assert!(r.take(t0 + Duration::from_secs(29), &token, None).is_ok());
    }

    #[test]
    fn a_signed_in_participant_is_resumed_only_by_the_same_user() {
        let t0 = Instant::now();
        let mut r = ResumeRegistry::new(Duration::from_secs(30));
        let (token, _) = r
            .issue(t0, ParticipantId(1), Some(actor("p-1")), None)
            .unwrap();
        assert_eq!(
            r.take(t0, &token, None).unwrap_err(),
            ResumeError::WrongUser
        );
        assert_eq!(
            r.take(t0, &token, Some(&UserId("p-2".into()))).unwrap_err(),
            ResumeError::WrongUser
        );
        // Refusals did not spend it.
        assert!(r.take(t0, &token, Some(&UserId("p-1".into()))).is_ok());
    }

    #[test]
    fn a_fresh_join_of_the_same_user_supersedes_its_earlier_participants_in_that_consultation() {
        let t0 = Instant::now();
        let mut r = ResumeRegistry::new(Duration::from_secs(30));
        let c1 = ConsultationId("c1".into());
        let c2 = ConsultationId("c2".into());
        let (old, _) = r
            .issue(t0, ParticipantId(1), Some(actor("p-1")), Some(c1.clone()))
            .unwrap();
        r.socket_closed(t0, &old);
        r.issue(t0, ParticipantId(2), Some(actor("p-1")), Some(c2.clone()))
            .unwrap();
        r.issue(t0, ParticipantId(3), Some(actor("d-1")), Some(c1.clone()))
            .unwrap();
        r.issue(t0, ParticipantId(4), None, None).unwrap();
        assert_eq!(
            r.supersede(&UserId("p-1".into()), &c1),
            vec![ParticipantId(1)]
        );
        assert_eq!(r.len(), 3, "other users and consultations keep theirs");
        assert!(r.take(t0, &old, Some(&UserId("p-1".into()))).is_err());
    }

    #[test]
    fn resume_off_issues_nothing_and_forgotten_tokens_are_void() {
        let t0 = Instant::now();
        let mut off = ResumeRegistry::new(Duration::ZERO);
        assert!(off.issue(t0, ParticipantId(1), None, None).is_none());
        let mut r = ResumeRegistry::new(Duration::from_secs(5));
        let (token, _) = r.issue(t0, ParticipantId(1), None, None).unwrap();
        r.forget(&token);
        assert_eq!(r.take(t0, &token, None).unwrap_err(), ResumeError::Unknown);
        assert_eq!(
            r.take(t0, "not-a-token", None).unwrap_err(),
            ResumeError::Unknown
        );
    }
}
