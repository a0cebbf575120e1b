//! Cryptography of the recording archive: encryption at rest, key wrapping and chain of custody.
//!
//! Data flow: the recorder closes a media segment, seals it with the recording's [`DataKey`]
//! ([`segment`]), hands the ciphertext to the store and adds a [`SegmentEntry`] (size and SHA-256
//! of the ciphertext) to the [`Manifest`], which the server signs ([`manifest`]). The data key is
//! stored only wrapped by a key-encryption key ([`keys`]) kept outside the archive. To check an
//! archive later, [`verify_recording`] needs only the manifest, the objects and (for the hashes
//! and signature) no secret at all; given the KEK it also authenticates every chunk.
//!
//! Everything here is sans-IO except the explicit key-file loaders: the caller fetches objects
//! (the `fetch` closure), supplies randomness and keeps time.

pub mod config;
pub mod keys;
pub mod manifest;
mod secret_file;
pub mod segment;
pub mod signing;

use std::collections::HashSet;
use std::fmt;

pub use config::{KekSource, VaultConfig, VaultConfigError};
/// The Ed25519 key types, re-exported so callers need not depend on `ed25519-dalek` directly.
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use keys::{DataKey, KeyError, KeyWrapper, LocalKek, WrappedKey};
pub use manifest::{
    sha256_hex, ConsentDecision, ConsentRecord, Container, Manifest, ManifestError, Participant,
    SegmentEntry, TrackEntry, TrackKind,
};
pub use segment::{
    authenticate_segment, decrypt_segment, encrypt_segment, encrypt_segment_chunked, Cipher,
    SegmentError, SegmentHeader, SegmentSummary, SegmentWriter,
};
pub use signing::{
    load_or_generate_signing_key, load_signing_key, load_verifying_key, parse_verifying_key,
    public_key_base64, SigningKeyError,
};

/// What is wrong with one stored segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentProblem {
    /// The store could not produce the object.
    #[error("object missing from the store: {reason}")]
    Missing {
        /// The fetch error.
        reason: String,
    },
    /// The object's size differs from the manifest.
    #[error("size mismatch: manifest says {expected} bytes, store has {actual}")]
    SizeMismatch {
        /// Size in the manifest.
        expected: u64,
        /// Size of the object.
        actual: u64,
    },
    /// The object's SHA-256 differs from the manifest.
    #[error("SHA-256 mismatch: manifest says {expected}, object is {actual}")]
    HashMismatch {
        /// Hash in the manifest.
        expected: String,
        /// Hash of the object.
        actual: String,
    },
    /// The segment header names another cipher than the manifest.
    #[error("segment is sealed with {segment}, manifest says {manifest}")]
    CipherMismatch {
        /// Cipher in the manifest.
        manifest: Cipher,
        /// Cipher in the segment header.
        segment: Cipher,
    },
    /// The segment fails to parse or authenticate under the recording's data key.
    #[error("{0}")]
    Crypto(SegmentError),
    /// The decrypted size differs from the manifest.
    #[error("plaintext size mismatch: manifest says {expected} bytes, segment holds {actual}")]
    PlaintextSizeMismatch {
        /// Size in the manifest.
        expected: u64,
        /// Decrypted size.
        actual: u64,
    },
    /// The manifest lists this index twice in the track.
    #[error("segment index listed twice in the manifest")]
    DuplicateIndex,
}

/// The first bad segment found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFailure {
    /// Track id.
    pub track_id: String,
    /// Segment index.
    pub index: u32,
    /// Store object key.
    pub object_key: String,
    /// What is wrong.
    pub problem: SegmentProblem,
}

impl fmt::Display for SegmentFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "track {} segment {} ({}): {}",
            self.track_id, self.index, self.object_key, self.problem
        )
    }
}

/// Whether chunk tags were checked.
#[derive(Debug)]
pub enum KeyCheck {
    /// No KEK given: hashes and signature only.
    NotChecked,
    /// The data key was unwrapped and every segment's tags were checked with it.
    Unwrapped,
    /// The data key could not be unwrapped (wrong KEK, KMS down): tags not checked.
    Failed(KeyError),
}

/// Outcome of [`verify_recording`], printable as the `huizhen recording verify` report.
#[derive(Debug)]
pub struct VerifyReport {
    /// The recording.
    pub recording_id: String,
    /// The signature check (against the pinned signers, when there were any).
    pub signature: Result<(), ManifestError>,
    /// Whether the signer was checked against pinned keys; false when any key was accepted
    /// (then a good signature proves integrity, not origin).
    pub origin_pinned: bool,
    /// The data-key check.
    pub key: KeyCheck,
    /// Manifest statements that contradict its own consent records (a track of a participant
    /// with no granted consent, or not listed as a participant).
    pub consent_problems: Vec<String>,
    /// Segments listed in the manifest.
    pub segments_total: usize,
    /// Segments whose size and SHA-256 matched.
    pub segments_hash_ok: usize,
    /// Segments whose every chunk tag verified (0 without a KEK).
    pub segments_authenticated: usize,
    /// Chunks whose tag verified.
    pub chunks_authenticated: u64,
    /// Bytes fetched and hashed.
    pub bytes_checked: u64,
    /// The first bad segment, in manifest track order then index order.
    pub first_failure: Option<SegmentFailure>,
    /// How many segments are bad in all.
    pub failed_segments: usize,
}

impl VerifyReport {
    /// True when the signature verifies, the manifest is consistent, every segment is present
    /// and intact, and (when a KEK was given) every chunk authenticates.
    pub fn is_ok(&self) -> bool {
        self.signature.is_ok()
            && !matches!(self.key, KeyCheck::Failed(_))
            && self.consent_problems.is_empty()
            && self.first_failure.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "recording {}", self.recording_id)?;
        match (&self.signature, self.origin_pinned) {
            (Ok(()), true) => writeln!(f, "  signature: ok, by a pinned signer")?,
            (Ok(()), false) => writeln!(
                f,
                "  signature: ok, by the key the manifest names; ORIGIN UNVERIFIED (no pinned signer)"
            )?,
            (Err(e), _) => writeln!(f, "  signature: FAILED: {e}")?,
        }
        match &self.key {
            KeyCheck::NotChecked => writeln!(f, "  data key: not checked (no key given)")?,
            KeyCheck::Unwrapped => writeln!(f, "  data key: unwrapped")?,
            KeyCheck::Failed(e) => writeln!(f, "  data key: FAILED: {e}")?,
        }
        for p in &self.consent_problems {
            writeln!(f, "  consent: FAILED: {p}")?;
        }
        writeln!(
            f,
            "  segments: {}/{} intact (size and SHA-256), {} authenticated ({} chunks), {} bytes checked",
            self.segments_hash_ok,
            self.segments_total,
            self.segments_authenticated,
            self.chunks_authenticated,
            self.bytes_checked
        )?;
        if let Some(first) = &self.first_failure {
            writeln!(f, "  first bad segment: {first}")?;
            if self.failed_segments > 1 {
                writeln!(f, "  ({} bad segments in all)", self.failed_segments)?;
            }
        }
        write!(
            f,
            "  result: {}",
            if self.is_ok() { "OK" } else { "FAILED" }
        )
    }
}

/// Whose signature a verification accepts.
#[derive(Debug, Clone, Copy)]
pub enum Signers<'a> {
    /// Only one of these keys (the server's; more than one while a key is being rotated): a
    /// manifest that verifies came from the server. What `verify` and `export` require unless
    /// told otherwise.
    Pinned(&'a [VerifyingKey]),
    /// Whatever key the manifest names: proves that nothing changed since it was signed, not
    /// who signed it (anyone can re-sign an edited manifest with a fresh key). Only when asked
    /// for explicitly.
    AnyKey,
}

/// Check a recording: the manifest signature, every segment's presence, size and SHA-256 and,
/// when `kek` is given, every chunk tag (by authenticating under the unwrapped data key).
///
/// `fetch` returns an object's bytes by key; its error is reported as a missing segment. Every
/// segment is checked (so the report can count them), and the first bad one is named. With
/// [`Signers::Pinned`] the manifest must be signed by one of those keys; with
/// [`Signers::AnyKey`] by the key it names (which proves integrity but not origin; the report
/// says so).
pub fn verify_recording<E: fmt::Display>(
    manifest: &Manifest,
    mut fetch: impl FnMut(&str) -> Result<Vec<u8>, E>,
    signers: Signers<'_>,
    kek: Option<&dyn KeyWrapper>,
) -> VerifyReport {
    let (signature, origin_pinned) = match signers {
        Signers::Pinned(keys) => (manifest.verify_signed_by_one_of(keys), true),
        Signers::AnyKey => (manifest.verify_signature(), false),
    };
    let (key, data_key) = match kek.map(|k| k.unwrap(&manifest.wrapped_key)) {
        None => (KeyCheck::NotChecked, None),
        Some(Ok(dk)) => (KeyCheck::Unwrapped, Some(dk)),
        Some(Err(e)) => (KeyCheck::Failed(e), None),
    };
    let mut report = VerifyReport {
        recording_id: manifest.recording_id.clone(),
        signature,
        origin_pinned,
        key,
        consent_problems: consent_problems(manifest),
        segments_total: manifest.segment_count(),
        segments_hash_ok: 0,
        segments_authenticated: 0,
        chunks_authenticated: 0,
        bytes_checked: 0,
        first_failure: None,
        failed_segments: 0,
    };
    for track in &manifest.tracks {
        let mut order: Vec<&SegmentEntry> = track.segments.iter().collect();
        order.sort_by_key(|s| s.index);
        let mut seen = HashSet::new();
        for seg in order {
            let outcome = if !seen.insert(seg.index) {
                Err(SegmentProblem::DuplicateIndex)
            } else {
                check_segment(manifest, seg, data_key.as_ref(), &mut fetch, &mut report)
            };
            if let Err(problem) = outcome {
                report.failed_segments += 1;
                report.first_failure.get_or_insert_with(|| SegmentFailure {
                    track_id: track.track_id.clone(),
                    index: seg.index,
                    object_key: seg.object_key.clone(),
                    problem,
                });
            }
        }
    }
    report
}

fn check_segment<E: fmt::Display>(
    manifest: &Manifest,
    seg: &SegmentEntry,
    data_key: Option<&DataKey>,
    fetch: &mut impl FnMut(&str) -> Result<Vec<u8>, E>,
    report: &mut VerifyReport,
) -> Result<(), SegmentProblem> {
    let bytes = fetch(&seg.object_key).map_err(|e| SegmentProblem::Missing {
        reason: e.to_string(),
    })?;
    report.bytes_checked += bytes.len() as u64;
    check_stored_bytes(manifest, seg, &bytes)?;
    report.segments_hash_ok += 1;
    if let Some(key) = data_key {
        let summary = authenticate_segment(key, &manifest.recording_id, seg.index, &bytes)
            .map_err(SegmentProblem::Crypto)?;
        if summary.plaintext_bytes != seg.plaintext_bytes {
            return Err(SegmentProblem::PlaintextSizeMismatch {
                expected: seg.plaintext_bytes,
                actual: summary.plaintext_bytes,
            });
        }
        report.segments_authenticated += 1;
        report.chunks_authenticated += u64::from(summary.chunks);
    }
    Ok(())
}

/// Size, hash and cipher checks that need no key.
fn check_stored_bytes(
    manifest: &Manifest,
    seg: &SegmentEntry,
    bytes: &[u8],
) -> Result<(), SegmentProblem> {
    if bytes.len() as u64 != seg.ciphertext_bytes {
        return Err(SegmentProblem::SizeMismatch {
            expected: seg.ciphertext_bytes,
            actual: bytes.len() as u64,
        });
    }
    let actual = sha256_hex(bytes);
    if !actual.eq_ignore_ascii_case(&seg.sha256) {
        return Err(SegmentProblem::HashMismatch {
            expected: seg.sha256.clone(),
            actual,
        });
    }
    let header = SegmentHeader::parse(bytes).map_err(SegmentProblem::Crypto)?;
    if header.cipher != manifest.cipher {
        return Err(SegmentProblem::CipherMismatch {
            manifest: manifest.cipher,
            segment: header.cipher,
        });
    }
    Ok(())
}

/// Decrypt one stored segment of a recording for export, after the same size, hash and cipher
/// checks as [`verify_recording`]: a damaged or substituted object yields an error, never
/// plaintext.
pub fn open_recorded_segment(
    manifest: &Manifest,
    segment: &SegmentEntry,
    key: &DataKey,
    ciphertext: &[u8],
) -> Result<Vec<u8>, SegmentProblem> {
    check_stored_bytes(manifest, segment, ciphertext)?;
    let plain = decrypt_segment(key, &manifest.recording_id, segment.index, ciphertext)
        .map_err(SegmentProblem::Crypto)?;
    if plain.len() as u64 != segment.plaintext_bytes {
        return Err(SegmentProblem::PlaintextSizeMismatch {
            expected: segment.plaintext_bytes,
            actual: plain.len() as u64,
        });
    }
    Ok(plain)
}

/// Every track must belong to a listed participant who granted consent.
fn consent_problems(manifest: &Manifest) -> Vec<String> {
    let listed: HashSet<&str> = manifest
        .participants
        .iter()
        .map(|p| p.user_id.as_str())
        .collect();
    let granted: HashSet<&str> = manifest
        .consents
        .iter()
        .filter(|c| c.decision == ConsentDecision::Granted)
        .map(|c| c.user_id.as_str())
        .collect();
    let mut problems = Vec::new();
    for t in &manifest.tracks {
        if !listed.contains(t.participant.as_str()) {
            problems.push(format!(
                "track {} belongs to {}, who is not a listed participant",
                t.track_id, t.participant
            ));
        } else if !granted.contains(t.participant.as_str()) {
            problems.push(format!(
                "track {} belongs to {}, who has no granted consent",
                t.track_id, t.participant
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::HashMap;

    fn recording(cipher: Cipher) -> (Manifest, HashMap<String, Vec<u8>>, LocalKek, SigningKey) {
        let mut rng = StdRng::seed_from_u64(11);
        let kek = LocalKek::from_bytes(&[9; 32]).unwrap();
        let dk = DataKey::generate(&mut rng);
        let mut m = Manifest::new("rec-x", "c-1", "r-1", 0, cipher, kek.wrap(&dk).unwrap());
        m.participants.push(Participant {
            user_id: "u1".into(),
            role: "doctor".into(),
            refused_consent: false,
        });
        m.consents.push(ConsentRecord {
            user_id: "u1".into(),
            decision: ConsentDecision::Granted,
            at_ms: 1,
        });
        let mut store = HashMap::new();
        let mut segments = Vec::new();
        for i in 0..2u32 {
            let plain = vec![i as u8; 1000 + i as usize];
            let ct = encrypt_segment(&dk, cipher, "rec-x", i, &plain, &mut rng);
            let key = format!("rec-x/a/{i}");
            segments.push(SegmentEntry::for_ciphertext(
                i,
                &key,
                0,
                10,
                plain.len() as u64,
                &ct,
            ));
            store.insert(key, ct);
        }
        m.tracks.push(TrackEntry {
            track_id: "a".into(),
            participant: "u1".into(),
            kind: TrackKind::Audio,
            codec: "opus".into(),
            container: Container::Webm,
            segments,
        });
        let sk = SigningKey::from_bytes(&[5; 32]);
        m.sign(&sk);
        (m, store, kek, sk)
    }

    fn fetch(store: &HashMap<String, Vec<u8>>) -> impl FnMut(&str) -> Result<Vec<u8>, String> + '_ {
        |k| {
            store
                .get(k)
                .cloned()
                .ok_or_else(|| format!("no object {k}"))
        }
    }

    #[test]
    fn intact_recording_verifies_with_and_without_key() {
        for cipher in [Cipher::Aes256Gcm, Cipher::Sm4Gcm] {
            let (m, store, kek, sk) = recording(cipher);
            let r = verify_recording(
                &m,
                fetch(&store),
                Signers::Pinned(&[sk.verifying_key()]),
                Some(&kek),
            );
            assert!(r.is_ok(), "{r}");
            assert_eq!(r.segments_authenticated, 2);
            assert_eq!(r.chunks_authenticated, 2);
            let r = verify_recording(&m, fetch(&store), Signers::AnyKey, None);
            assert!(r.is_ok(), "{r}");
            assert!(matches!(r.key, KeyCheck::NotChecked));
            assert!(r.to_string().ends_with("result: OK"));
        }
    }

    #[test]
    fn a_manifest_edited_and_re_signed_with_a_fresh_key_is_refused_by_a_pinned_signer() {
        let (mut m, store, kek, server) = recording(Cipher::Aes256Gcm);
        // Someone with write access to the archive drops a track and re-signs.
        m.tracks.pop();
        let forger = SigningKey::from_bytes(&[0x55; 32]);
        m.sign(&forger);
        let pinned = [server.verifying_key()];
        let r = verify_recording(&m, fetch(&store), Signers::Pinned(&pinned), Some(&kek));
        assert!(
            matches!(r.signature, Err(ManifestError::UnexpectedSigner { .. })),
            "{r}"
        );
        assert!(!r.is_ok());
        assert!(r.to_string().ends_with("result: FAILED"), "{r}");
        // Rotation: the old and new keys pinned together, either verifies.
        let rotated = [forger.verifying_key(), server.verifying_key()];
        let (m_ok, store_ok, _, _) = recording(Cipher::Aes256Gcm);
        let r = verify_recording(&m_ok, fetch(&store_ok), Signers::Pinned(&rotated), None);
        assert!(r.is_ok() && r.origin_pinned, "{r}");
        // Any key: the forgery's integrity holds, and the report says the origin is unknown.
        let r = verify_recording(&m, fetch(&store), Signers::AnyKey, Some(&kek));
        assert!(r.signature.is_ok());
        assert!(!r.origin_pinned);
        assert!(r.to_string().contains("ORIGIN UNVERIFIED"), "{r}");
    }

    #[test]
    fn a_tampered_segment_with_fixed_up_hash_fails_only_the_tag_check() {
        // An insider with write access to both store and manifest (but not the signing key)
        // cannot fix the hash without breaking the signature; the tag check is the backstop.
        let (mut m, mut store, kek, _) = recording(Cipher::Aes256Gcm);
        let obj = store.get_mut("rec-x/a/1").unwrap();
        let last = obj.len() - 1;
        obj[last] ^= 1;
        m.tracks[0].segments[1].sha256 = sha256_hex(obj);
        let r = verify_recording(&m, fetch(&store), Signers::AnyKey, Some(&kek));
        assert!(matches!(r.signature, Err(ManifestError::BadSignature)));
        let first = r.first_failure.unwrap();
        assert_eq!((first.track_id.as_str(), first.index), ("a", 1));
        assert_eq!(
            first.problem,
            SegmentProblem::Crypto(SegmentError::Tampered { chunk: 0 })
        );
    }

    #[test]
    fn consent_problems_fail_verification() {
        let (mut m, store, _, sk) = recording(Cipher::Aes256Gcm);
        m.consents[0].decision = ConsentDecision::Refused;
        m.sign(&sk);
        let r = verify_recording(&m, fetch(&store), Signers::AnyKey, None);
        assert!(r.signature.is_ok());
        assert!(!r.is_ok());
        assert!(r.consent_problems[0].contains("no granted consent"), "{r}");
    }

    #[test]
    fn duplicate_index_and_cipher_mismatch_are_named() {
        let (mut m, store, _, sk) = recording(Cipher::Aes256Gcm);
        let dup = m.tracks[0].segments[0].clone();
        m.tracks[0].segments.push(dup);
        m.sign(&sk);
        let r = verify_recording(&m, fetch(&store), Signers::AnyKey, None);
        assert_eq!(
            r.first_failure.unwrap().problem,
            SegmentProblem::DuplicateIndex
        );

        let (mut m, store, _, sk) = recording(Cipher::Aes256Gcm);
        m.cipher = Cipher::Sm4Gcm;
        m.sign(&sk);
        let r = verify_recording(&m, fetch(&store), Signers::AnyKey, None);
        assert!(matches!(
            r.first_failure.unwrap().problem,
            SegmentProblem::CipherMismatch { .. }
        ));
    }

    #[test]
    fn open_recorded_segment_checks_before_decrypting() {
        let (m, store, kek, _) = recording(Cipher::Sm4Gcm);
        let dk = kek.unwrap(&m.wrapped_key).unwrap();
        let seg = &m.tracks[0].segments[1];
        let plain = open_recorded_segment(&m, seg, &dk, &store[&seg.object_key]).unwrap();
        assert_eq!(plain, vec![1u8; 1001]);
        let other = &store[&m.tracks[0].segments[0].object_key];
        assert!(matches!(
            open_recorded_segment(&m, seg, &dk, other),
            Err(SegmentProblem::SizeMismatch { .. })
        ));
    }
}
