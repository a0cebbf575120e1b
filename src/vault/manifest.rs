//! The recording manifest: the signed chain-of-custody record of one recording.
//!
//! When a dispute arises, the hospital must show that the copy it produces is the one the server
//! recorded, complete, and only of people who consented. The manifest lists who took part, every
//! consent decision, every track and segment (with the SHA-256 and size of each encrypted object)
//! and the wrapped data key, and the server signs it with Ed25519. Anyone holding the server's
//! public key can then check the archive without any key that decrypts it.
//!
//! # What is signed
//! [`Manifest::canonical_bytes`] is the compact `serde_json` encoding of the manifest with
//! `signature` set to the empty string. Object keys appear in the order the fields are declared
//! in this file (serde derive order, never sorted), absent options are `null`, integers are plain
//! decimal and there are no floats, so the same manifest always encodes to the same bytes. The
//! Ed25519 signature is over [`SIGNING_CONTEXT`] followed by those bytes: the prefix keeps a
//! manifest signature from being valid for anything else the server key might sign. The signer's
//! public key is inside the signed bytes. Unknown JSON fields are refused when parsing, so every
//! field present in a manifest is covered by its signature.
//!
//! Changing the field order or names here is a format change: bump [`MANIFEST_FORMAT_VERSION`].

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::keys::WrappedKey;
use super::segment::Cipher;

/// The manifest format this build writes. It reads this one and every earlier one since
/// [`OLDEST_MANIFEST_FORMAT_VERSION`]: version 2 added `participants[].refused_consent`, so a
/// version 1 manifest parses (and its signature verifies) unchanged.
pub const MANIFEST_FORMAT_VERSION: u32 = 2;

/// The oldest manifest format this build reads.
pub const OLDEST_MANIFEST_FORMAT_VERSION: u32 = 1;

/// Domain-separation prefix of the signed message.
pub const SIGNING_CONTEXT: &[u8] = b"huizhen recording manifest v1\n";

/// The signed description of one recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT_VERSION`] when written.
    pub format_version: u32,
    /// Unique id of the recording; also bound into every segment's AAD.
    pub recording_id: String,
    /// The consultation this recording belongs to.
    pub consultation: String,
    /// The media room.
    pub room: String,
    /// Wall-clock start, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// Wall-clock end; `None` while recording or after a crash.
    pub ended_at_ms: Option<u64>,
    /// Why the recording is not a clean, complete one (e.g. "server crashed; resumed",
    /// "incomplete"); `None` for a clean recording.
    pub interrupted: Option<String>,
    /// Everyone who took part, by id (no names: the manifest may travel).
    pub participants: Vec<Participant>,
    /// Every consent decision, in the order taken.
    pub consents: Vec<ConsentRecord>,
    /// One entry per recorded track (only consenting participants' media is recorded).
    pub tracks: Vec<TrackEntry>,
    /// The cipher of every segment.
    pub cipher: Cipher,
    /// The recording's data key, wrapped by the key-encryption key.
    pub wrapped_key: WrappedKey,
    /// Base64 of the signer's 32-byte Ed25519 public key.
    pub signer_public_key: String,
    /// Base64 of the 64-byte Ed25519 signature; empty in the canonical (signed) form.
    pub signature: String,
}

/// A participant of the consultation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Participant {
    /// The participant's user id.
    pub user_id: String,
    /// Their role in the consultation (e.g. `doctor`, `patient`, `interpreter`).
    pub role: String,
    /// Their last answer to the recording request was a refusal: they took part, and none of
    /// their media is in the recording (format 2; absent: false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refused_consent: bool,
}

/// A participant's answer to the recording request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsentDecision {
    /// They agreed to be recorded.
    Granted,
    /// They refused; their media must not be in the archive.
    Refused,
}

/// One consent decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRecord {
    /// Who decided.
    pub user_id: String,
    /// What they decided.
    pub decision: ConsentDecision,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// Media kind of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    /// Audio.
    Audio,
    /// Video.
    Video,
}

/// Container format of a track's plaintext segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Container {
    /// WebM (Opus, VP8, VP9).
    Webm,
    /// Matroska (H.264 and anything WebM cannot hold).
    Mkv,
}

/// One recorded track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackEntry {
    /// Track id, unique within the recording.
    pub track_id: String,
    /// The user id of the participant whose media this is.
    pub participant: String,
    /// Audio or video.
    pub kind: TrackKind,
    /// Codec name, e.g. `opus`, `vp8`, `vp9`, `h264`.
    pub codec: String,
    /// Container of the decrypted segments.
    pub container: Container,
    /// The segments, by ascending index.
    pub segments: Vec<SegmentEntry>,
}

/// One encrypted segment object in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentEntry {
    /// Segment number within the track; bound into the segment's AAD.
    pub index: u32,
    /// Where the store keeps it.
    pub object_key: String,
    /// Start, milliseconds from the recording's start.
    pub start_ms: u64,
    /// Media duration in milliseconds.
    pub duration_ms: u64,
    /// Size before encryption.
    pub plaintext_bytes: u64,
    /// Size of the stored object.
    pub ciphertext_bytes: u64,
    /// Lower-case hex SHA-256 of the stored object (the ciphertext), so integrity can be
    /// checked without the key.
    pub sha256: String,
}

impl SegmentEntry {
    /// The entry for a sealed segment: size and hash computed from the stored bytes.
    pub fn for_ciphertext(
        index: u32,
        object_key: impl Into<String>,
        start_ms: u64,
        duration_ms: u64,
        plaintext_bytes: u64,
        ciphertext: &[u8],
    ) -> SegmentEntry {
        SegmentEntry {
            index,
            object_key: object_key.into(),
            start_ms,
            duration_ms,
            plaintext_bytes,
            ciphertext_bytes: ciphertext.len() as u64,
            sha256: sha256_hex(ciphertext),
        }
    }
}

/// Lower-case hex SHA-256, the form stored in [`SegmentEntry::sha256`].
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Why a manifest could not be read or trusted.
///
/// Grouped by fault: format errors mean the bytes are not a manifest this build reads;
/// authenticity errors mean it is one, but it was changed after signing, signed by someone
/// else, or never signed.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    // --- Not a manifest this build reads ---
    /// Not valid manifest JSON (or it has unknown fields).
    #[error("malformed manifest: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Written by a newer format.
    #[error("unsupported manifest format version {found} (this build reads versions {OLDEST_MANIFEST_FORMAT_VERSION} to {MANIFEST_FORMAT_VERSION})")]
    UnsupportedVersion {
        /// The version found.
        found: u32,
    },

    // --- Not authentic ---
    /// The manifest carries no signature.
    #[error("manifest is not signed")]
    Unsigned,
    /// The public key or signature field is not valid base64 of the right length.
    #[error("manifest signature fields are malformed: {reason}")]
    MalformedSignature {
        /// What is wrong.
        reason: String,
    },
    /// The signature does not verify: the manifest was changed after it was signed.
    #[error("bad manifest signature: the manifest was modified after signing (or the signature was forged)")]
    BadSignature,
    /// Signed, correctly, but by a key other than the one expected.
    #[error("manifest was signed by key {found}, not by the expected key {expected}")]
    UnexpectedSigner {
        /// Base64 of the expected public key.
        expected: String,
        /// Base64 of the key in the manifest.
        found: String,
    },
}

impl Manifest {
    /// An unsigned manifest with no participants, consents or tracks yet.
    pub fn new(
        recording_id: impl Into<String>,
        consultation: impl Into<String>,
        room: impl Into<String>,
        started_at_ms: u64,
        cipher: Cipher,
        wrapped_key: WrappedKey,
    ) -> Manifest {
        Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            recording_id: recording_id.into(),
            consultation: consultation.into(),
            room: room.into(),
            started_at_ms,
            ended_at_ms: None,
            interrupted: None,
            participants: Vec::new(),
            consents: Vec::new(),
            tracks: Vec::new(),
            cipher,
            wrapped_key,
            signer_public_key: String::new(),
            signature: String::new(),
        }
    }

    /// Parse a stored manifest, refusing unknown fields and newer format versions.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = serde_json::from_slice(bytes)?;
        if !(OLDEST_MANIFEST_FORMAT_VERSION..=MANIFEST_FORMAT_VERSION)
            .contains(&manifest.format_version)
        {
            return Err(ManifestError::UnsupportedVersion {
                found: manifest.format_version,
            });
        }
        Ok(manifest)
    }

    /// The stored form: pretty JSON for people reading it in a dispute. Whitespace does not
    /// matter to the signature, which is over [`canonical_bytes`](Self::canonical_bytes).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a manifest always serializes")
    }

    /// The bytes the signature covers (see the module documentation).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.signature.clear();
        serde_json::to_vec(&unsigned).expect("a manifest always serializes")
    }

    fn signed_message(&self) -> Vec<u8> {
        let mut msg = SIGNING_CONTEXT.to_vec();
        msg.extend_from_slice(&self.canonical_bytes());
        msg
    }

    /// Sign with the server's key, recording its public key in the manifest. Call again after
    /// any change (e.g. a new segment, the end time).
    pub fn sign(&mut self, key: &SigningKey) {
        self.signer_public_key = b64().encode(key.verifying_key().as_bytes());
        self.signature.clear();
        let signature = key.sign(&self.signed_message());
        self.signature = b64().encode(signature.to_bytes());
    }

    /// The public key the manifest claims to be signed by (not yet checked).
    pub fn signer(&self) -> Result<VerifyingKey, ManifestError> {
        let malformed = |reason: &str| ManifestError::MalformedSignature {
            reason: reason.to_owned(),
        };
        let bytes = b64()
            .decode(&self.signer_public_key)
            .map_err(|_| malformed("signer_public_key is not base64"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| malformed("signer_public_key is not 32 bytes"))?;
        VerifyingKey::from_bytes(&bytes)
            .map_err(|_| malformed("signer_public_key is not a valid Ed25519 key"))
    }

    /// Check that the signature is valid for the key named in the manifest.
    ///
    /// This proves integrity, not origin: pair it with [`verify_signed_by`](Self::verify_signed_by)
    /// when the server's public key is known.
    pub fn verify_signature(&self) -> Result<(), ManifestError> {
        if self.signature.is_empty() {
            return Err(ManifestError::Unsigned);
        }
        let key = self.signer()?;
        let sig = b64()
            .decode(&self.signature)
            .map_err(|_| ManifestError::MalformedSignature {
                reason: "signature is not base64".to_owned(),
            })?;
        let sig = Signature::from_slice(&sig).map_err(|_| ManifestError::MalformedSignature {
            reason: "signature is not 64 bytes".to_owned(),
        })?;
        // Strict verification refuses small-order keys and non-canonical signatures, so a
        // signature cannot be mauled into a second valid one.
        key.verify_strict(&self.signed_message(), &sig)
            .map_err(|_| ManifestError::BadSignature)
    }

    /// Check that the signature is valid and made by `expected`.
    pub fn verify_signed_by(&self, expected: &VerifyingKey) -> Result<(), ManifestError> {
        if self.signature.is_empty() {
            return Err(ManifestError::Unsigned);
        }
        let found = self.signer()?;
        if found != *expected {
            return Err(ManifestError::UnexpectedSigner {
                expected: b64().encode(expected.as_bytes()),
                found: self.signer_public_key.clone(),
            });
        }
        self.verify_signature()
    }

    /// Check that the signature is valid and made by one of `pinned` (none pinned: refused).
    pub fn verify_signed_by_one_of(&self, pinned: &[VerifyingKey]) -> Result<(), ManifestError> {
        if self.signature.is_empty() {
            return Err(ManifestError::Unsigned);
        }
        let found = self.signer()?;
        if !pinned.contains(&found) {
            return Err(ManifestError::UnexpectedSigner {
                expected: pinned
                    .iter()
                    .map(|k| b64().encode(k.as_bytes()))
                    .collect::<Vec<_>>()
                    .join(" or "),
                found: self.signer_public_key.clone(),
            });
        }
        self.verify_signature()
    }

    /// Number of segments across all tracks.
    pub fn segment_count(&self) -> usize {
        self.tracks.iter().map(|t| t.segments.len()).sum()
    }

    /// Stored bytes across all segments.
    pub fn ciphertext_bytes(&self) -> u64 {
        self.tracks
            .iter()
            .flat_map(|t| &t.segments)
            .map(|s| s.ciphertext_bytes)
            .sum()
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    pub(crate) fn sample() -> Manifest {
        let mut m = Manifest::new(
            "rec-1",
            "consult-9",
            "room-3",
            1_700_000_000_000,
            Cipher::Aes256Gcm,
            WrappedKey {
                wrapper_id: "local:0011223344556677".into(),
                algorithm: "AES-256-KW".into(),
                bytes: vec![7; 40],
            },
        );
        m.participants = vec![
            Participant {
                user_id: "dr-li".into(),
                role: "doctor".into(),
                refused_consent: false,
            },
            Participant {
                user_id: "pt-wang".into(),
                role: "patient".into(),
                refused_consent: false,
            },
        ];
        m.consents = vec![
            ConsentRecord {
                user_id: "dr-li".into(),
                decision: ConsentDecision::Granted,
                at_ms: 1_700_000_000_100,
            },
            ConsentRecord {
                user_id: "pt-wang".into(),
                decision: ConsentDecision::Granted,
                at_ms: 1_700_000_000_200,
            },
        ];
        m.tracks = vec![TrackEntry {
            track_id: "t-audio-1".into(),
            participant: "pt-wang".into(),
            kind: TrackKind::Audio,
            codec: "opus".into(),
            container: Container::Webm,
            segments: vec![SegmentEntry::for_ciphertext(
                0,
                "rec-1/t-audio-1/0",
                0,
                10_000,
                3,
                b"abc",
            )],
        }];
        m
    }

    #[test]
    fn sign_then_verify() {
        let mut m = sample();
        assert!(matches!(m.verify_signature(), Err(ManifestError::Unsigned)));
        m.sign(&key(1));
        m.verify_signature().unwrap();
        m.verify_signed_by(&key(1).verifying_key()).unwrap();
        let err = m.verify_signed_by(&key(2).verifying_key()).unwrap_err();
        assert!(
            matches!(err, ManifestError::UnexpectedSigner { .. }),
            "{err}"
        );
    }

    #[test]
    fn any_edit_breaks_the_signature() {
        let mut m = sample();
        m.sign(&key(1));
        type Edit = Box<dyn Fn(&mut Manifest)>;
        let edits: Vec<Edit> = vec![
            Box::new(|m| m.consents[1].decision = ConsentDecision::Refused),
            Box::new(|m| m.consents[0].at_ms += 1),
            Box::new(|m| m.ended_at_ms = Some(1)),
            Box::new(|m| m.interrupted = Some("incomplete".into())),
            Box::new(|m| m.tracks[0].segments[0].sha256.replace_range(0..1, "f")),
            Box::new(|m| m.tracks[0].segments.clear()),
            Box::new(|m| m.wrapped_key.bytes[0] ^= 1),
            Box::new(|m| m.cipher = Cipher::Sm4Gcm),
            Box::new(|m| m.participants.pop().map(drop).unwrap_or(())),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut changed = m.clone();
            edit(&mut changed);
            assert!(
                matches!(changed.verify_signature(), Err(ManifestError::BadSignature)),
                "edit {i}"
            );
        }
        // Swapping in another key's public key (without its signature) also fails.
        let mut changed = m.clone();
        changed.signer_public_key = b64().encode(key(2).verifying_key().as_bytes());
        assert!(matches!(
            changed.verify_signature(),
            Err(ManifestError::BadSignature)
        ));
    }

    #[test]
    fn json_round_trip_keeps_the_signature_valid() {
        let mut m = sample();
        m.sign(&key(1));
        let back = Manifest::from_json(&m.to_json()).unwrap();
        assert_eq!(back, m);
        back.verify_signature().unwrap();
        // Compact or pretty, the canonical bytes are the same.
        let compact = serde_json::to_vec(&m).unwrap();
        Manifest::from_json(&compact)
            .unwrap()
            .verify_signature()
            .unwrap();
    }

    #[test]
    fn canonical_form_is_pinned() {
        let m = sample();
        let text = String::from_utf8(m.canonical_bytes()).unwrap();
        assert!(text.starts_with(
            r#"{"format_version":2,"recording_id":"rec-1","consultation":"consult-9","room":"room-3","started_at_ms":1700000000000,"ended_at_ms":null,"interrupted":null,"participants":[{"user_id":"dr-li","role":"doctor"}"#
        ), "{text}");
        assert!(
            text.ends_with(r#""signer_public_key":"","signature":""}"#),
            "{text}"
        );
        assert!(text.contains(r#""decision":"granted""#));
        assert!(text.contains(r#""kind":"audio","codec":"opus","container":"webm""#));
        assert!(text.contains(r#""cipher":"aes-256-gcm""#));
    }

    #[test]
    fn unknown_fields_and_versions_are_refused() {
        let mut m = sample();
        m.sign(&key(1));
        let mut value: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        value["note"] = "added later".into();
        assert!(matches!(
            Manifest::from_json(value.to_string().as_bytes()),
            Err(ManifestError::Malformed(_))
        ));
        for version in [0, MANIFEST_FORMAT_VERSION + 1] {
            let mut m2 = m.clone();
            m2.format_version = version;
            assert!(matches!(
                Manifest::from_json(&m2.to_json()),
                Err(ManifestError::UnsupportedVersion { found }) if found == version
            ));
        }
    }

    #[test]
    fn a_version_1_manifest_still_reads_and_verifies_and_refusers_are_marked_in_version_2() {
        // Version 1 had no `refused_consent`: a manifest written then (no participant marked)
        // has the same canonical bytes today, so its signature holds.
        let mut v1 = sample();
        v1.format_version = 1;
        v1.sign(&key(1));
        let text = String::from_utf8(v1.to_json()).unwrap();
        assert!(!text.contains("refused_consent"), "{text}");
        let read = Manifest::from_json(text.as_bytes()).unwrap();
        read.verify_signature().unwrap();
        assert_eq!(read, v1);

        let mut v2 = sample();
        v2.participants[1].refused_consent = true;
        v2.sign(&key(1));
        let text = String::from_utf8(v2.canonical_bytes()).unwrap();
        assert!(text.contains(r#""refused_consent":true"#), "{text}");
        let read = Manifest::from_json(&v2.to_json()).unwrap();
        assert!(read.participants[1].refused_consent);
        read.verify_signature().unwrap();
        // The mark is signed: removing it breaks the signature.
        let mut edited = read.clone();
        edited.participants[1].refused_consent = false;
        assert!(matches!(
            edited.verify_signature(),
            Err(ManifestError::BadSignature)
        ));
    }

    #[test]
    fn malformed_signature_fields_are_named() {
        let mut m = sample();
        m.sign(&key(1));
        let mut bad = m.clone();
        bad.signature = "***".into();
        assert!(matches!(
            bad.verify_signature(),
            Err(ManifestError::MalformedSignature { .. })
        ));
        let mut bad = m.clone();
        bad.signer_public_key = b64().encode([1u8; 31]);
        assert!(matches!(
            bad.verify_signature(),
            Err(ManifestError::MalformedSignature { .. })
        ));
    }

    #[test]
    fn totals() {
        let m = sample();
        assert_eq!(m.segment_count(), 1);
        assert_eq!(m.ciphertext_bytes(), 3);
        assert_eq!(
            m.tracks[0].segments[0].sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
