//! From recorded segments to archive objects: encryption and the manifest.
//!
//! The [`super::Recording`] core produces plaintext Matroska segments per track; the archiver
//! encrypts each one with the recording's data key (fresh per recording, wrapped by the key
//! encryption key and stored only in wrapped form), names the object, and keeps the manifest
//! up to date: participants, consents, tracks and, per segment, size and SHA-256 of the
//! ciphertext. The manifest is signed when the recording ends (or is recovered after a crash,
//! marked interrupted). No I/O here: the caller stores the returned objects (through the spool)
//! and journals [`RecordingArchiver::draft`] so a crash loses at most the segment in progress.

use std::collections::HashMap;

use rand::CryptoRng;

use super::{RecordCodec, RecordingEvent, StreamKey};
use crate::sfu::ParticipantId;
use crate::vault::{
    encrypt_segment_chunked, Cipher, ConsentRecord, Container, DataKey, KeyError, KeyWrapper,
    Manifest, Participant, SegmentEntry, SigningKey, TrackEntry, TrackKind,
};

/// An object to put into the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// Archive key.
    pub key: String,
    /// Bytes (ciphertext, or the signed manifest JSON).
    pub bytes: Vec<u8>,
}

/// Why an archiver could not be created or a segment not sealed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiverError {
    /// The data key could not be wrapped.
    #[error("cannot wrap the recording key: {0}")]
    Key(#[from] KeyError),
    /// A segment could not be encrypted (configuration error: bad chunk size).
    #[error("cannot encrypt a segment: {0}")]
    Segment(#[from] crate::vault::SegmentError),
}

/// Archive key of a recording's manifest.
pub fn manifest_key(recording_id: &str) -> String {
    format!("recordings/{recording_id}/manifest.json")
}

/// What identifies a recording in its manifest.
#[derive(Debug, Clone, Copy)]
pub struct RecordingInfo<'a> {
    /// Recording id.
    pub recording_id: &'a str,
    /// Consultation it records.
    pub consultation: &'a str,
    /// SFU room.
    pub room: &'a str,
    /// Wall-clock start.
    pub started_at_ms: u64,
}

/// Encrypts segments and maintains the manifest of one recording.
pub struct RecordingArchiver {
    key: DataKey,
    cipher: Cipher,
    chunk_bytes: u32,
    manifest: Manifest,
    users: HashMap<ParticipantId, String>,
    streams: HashMap<StreamKey, usize>,
}

impl RecordingArchiver {
    /// A new recording: a fresh data key, wrapped by `kek`.
    pub fn new<R: CryptoRng + ?Sized>(
        info: RecordingInfo<'_>,
        cipher: Cipher,
        chunk_bytes: u32,
        kek: &dyn KeyWrapper,
        rng: &mut R,
    ) -> Result<RecordingArchiver, ArchiverError> {
        let key = DataKey::generate(rng);
        let wrapped = kek.wrap(&key)?;
        Ok(RecordingArchiver {
            key,
            cipher,
            chunk_bytes,
            manifest: Manifest::new(
                info.recording_id,
                info.consultation,
                info.room,
                info.started_at_ms,
                cipher,
                wrapped,
            ),
            users: HashMap::new(),
            streams: HashMap::new(),
        })
    }

    /// The recording id.
    pub fn recording_id(&self) -> &str {
        &self.manifest.recording_id
    }

    /// Tell whose media an SFU participant carries (ids in the manifest are user ids).
    pub fn assign(&mut self, participant: ParticipantId, user_id: &str, role: &str) {
        self.users.insert(participant, user_id.to_owned());
        if !self
            .manifest
            .participants
            .iter()
            .any(|p| p.user_id == user_id)
        {
            self.manifest.participants.push(Participant {
                user_id: user_id.to_owned(),
                role: role.to_owned(),
                refused_consent: false,
            });
        }
    }

    /// Record the consent decisions (replacing earlier ones) and who is in the consultation
    /// (user id, role): every one of them is listed as a participant, and those whose last
    /// decision is a refusal are marked, so the manifest shows who took part without being
    /// recorded.
    pub fn set_consents(&mut self, consents: Vec<ConsentRecord>, people: &[(String, String)]) {
        let participants = &mut self.manifest.participants;
        let deciders = consents.iter().map(|c| (c.user_id.as_str(), "unknown"));
        let present = people.iter().map(|(u, r)| (u.as_str(), r.as_str()));
        for (user, role) in present.chain(deciders) {
            if !participants.iter().any(|p| p.user_id == user) {
                participants.push(Participant {
                    user_id: user.to_owned(),
                    role: role.to_owned(),
                    refused_consent: false,
                });
            }
        }
        for p in participants.iter_mut() {
            let last = consents.iter().rev().find(|c| c.user_id == p.user_id);
            p.refused_consent =
                last.is_some_and(|c| c.decision == crate::vault::ConsentDecision::Refused);
        }
        self.manifest.consents = consents;
    }

    /// Act on one event of the recording core; returns objects to store.
    pub fn on_event<R: CryptoRng + ?Sized>(
        &mut self,
        event: RecordingEvent,
        rng: &mut R,
    ) -> Result<Vec<StoredObject>, ArchiverError> {
        match event {
            RecordingEvent::TrackStarted { stream, codec, .. } => {
                let participant = self.user_of(stream.participant);
                let entry = TrackEntry {
                    track_id: format!("{}-{}", stream.track, stream.take),
                    participant,
                    kind: if codec.is_video() {
                        TrackKind::Video
                    } else {
                        TrackKind::Audio
                    },
                    codec: codec_name(codec).to_owned(),
                    container: if codec == RecordCodec::H264 {
                        Container::Mkv
                    } else {
                        Container::Webm
                    },
                    segments: Vec::new(),
                };
                self.manifest.tracks.push(entry);
                self.streams.insert(stream, self.manifest.tracks.len() - 1);
                Ok(Vec::new())
            }
            RecordingEvent::Segment { stream, segment } => {
                let Some(&track) = self.streams.get(&stream) else {
                    return Ok(Vec::new());
                };
                let ciphertext = encrypt_segment_chunked(
                    &self.key,
                    self.cipher,
                    self.chunk_bytes,
                    &self.manifest.recording_id,
                    segment.index,
                    &segment.bytes,
                    rng,
                )?;
                let entry = &mut self.manifest.tracks[track];
                let key = format!(
                    "recordings/{}/{}/{:06}.seg",
                    self.manifest.recording_id, entry.track_id, segment.index
                );
                entry.segments.push(SegmentEntry::for_ciphertext(
                    segment.index,
                    key.clone(),
                    segment.start_ms,
                    segment.duration_ms,
                    segment.bytes.len() as u64,
                    &ciphertext,
                ));
                Ok(vec![StoredObject {
                    key,
                    bytes: ciphertext,
                }])
            }
            RecordingEvent::TrackFinished { .. } => Ok(Vec::new()),
        }
    }

    fn user_of(&self, participant: ParticipantId) -> String {
        self.users
            .get(&participant)
            .cloned()
            .unwrap_or_else(|| participant.to_string())
    }

    /// The unsigned manifest as it stands: journal it after each segment.
    pub fn draft(&self) -> &Manifest {
        &self.manifest
    }

    /// Sign the manifest and return it as the archive's last object. `interrupted` says why
    /// the recording did not end normally (a crash recovered at start-up).
    pub fn seal(
        mut manifest: Manifest,
        ended_at_ms: u64,
        interrupted: Option<String>,
        signer: &SigningKey,
    ) -> StoredObject {
        manifest.ended_at_ms = Some(ended_at_ms);
        manifest.interrupted = interrupted;
        manifest.tracks.retain(|t| !t.segments.is_empty());
        manifest.sign(signer);
        StoredObject {
            key: manifest_key(&manifest.recording_id),
            bytes: manifest.to_json(),
        }
    }

    /// Finish: sign the manifest.
    pub fn finish(self, ended_at_ms: u64, signer: &SigningKey) -> StoredObject {
        RecordingArchiver::seal(self.manifest, ended_at_ms, None, signer)
    }
}

fn codec_name(codec: RecordCodec) -> &'static str {
    match codec {
        RecordCodec::Opus => "opus",
        RecordCodec::Vp8 => "vp8",
        RecordCodec::Vp9 => "vp9",
        RecordCodec::H264 => "h264",
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rand::SeedableRng;

    use super::*;
    use crate::recorder::{finalize, RecorderConfig, Recording};
    use crate::sfu::{RecordedPacket, TrackId};
    use crate::vault::{verify_recording, ConsentDecision, LocalKek};

    fn opus_packet(start: Instant, i: u64, participant: u64) -> RecordedPacket {
        RecordedPacket {
            participant: ParticipantId(participant),
            track: TrackId(participant * 10),
            kind: str0m::media::MediaKind::Audio,
            codec: str0m::format::Codec::Opus,
            clock_rate: 48_000,
            ssrc: 7 + participant as u32,
            seq: i,
            rtp_time: (i * 960) as u32,
            marker: false,
            arrival: start + Duration::from_millis(i * 20),
            payload: vec![0xFC, (i % 251) as u8, 1, 2, 3].into(),
            starts_run: false,
        }
    }

    /// Two participants' audio, 12 s, through the core and the archiver into a map "store".
    fn record(kek: &LocalKek, signer: &SigningKey) -> (HashMap<String, Vec<u8>>, Manifest) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let start = Instant::now();
        let config = RecorderConfig {
            segment_ms: 4_000,
            ..RecorderConfig::default()
        };
        let mut core = Recording::new(start, config).unwrap();
        let info = RecordingInfo {
            recording_id: "rec-1",
            consultation: "c1",
            room: "consult-c1",
            started_at_ms: 1_000,
        };
        let mut archiver =
            RecordingArchiver::new(info, Cipher::Aes256Gcm, 65_536, kek, &mut rng).unwrap();
        archiver.assign(ParticipantId(1), "pat-a", "patient");
        archiver.assign(ParticipantId(2), "dr-li", "doctor");
        let mut store = HashMap::new();
        let mut drain = |core: &mut Recording, archiver: &mut RecordingArchiver, now| {
            while let Some(event) = core.poll(now) {
                for object in archiver.on_event(event, &mut rng).unwrap() {
                    store.insert(object.key, object.bytes);
                }
            }
        };
        for i in 0..600 {
            let now = start + Duration::from_millis(i * 20);
            core.push(now, &opus_packet(start, i, 1));
            core.push(now, &opus_packet(start, i, 2));
            drain(&mut core, &mut archiver, now);
        }
        let end = start + Duration::from_secs(13);
        core.finish(end);
        drain(&mut core, &mut archiver, end);
        archiver.set_consents(
            vec![
                ConsentRecord {
                    user_id: "pat-a".into(),
                    decision: ConsentDecision::Granted,
                    at_ms: 1_500,
                },
                ConsentRecord {
                    user_id: "dr-li".into(),
                    decision: ConsentDecision::Granted,
                    at_ms: 1_000,
                },
                ConsentRecord {
                    user_id: "son-a".into(),
                    decision: ConsentDecision::Granted,
                    at_ms: 1_200,
                },
                ConsentRecord {
                    user_id: "son-a".into(),
                    decision: ConsentDecision::Refused,
                    at_ms: 1_300,
                },
            ],
            &[
                ("pat-a".into(), "patient".into()),
                ("dr-li".into(), "doctor".into()),
                ("son-a".into(), "companion".into()),
                ("expert-z".into(), "expert".into()),
            ],
        );
        let manifest_object = archiver.finish(14_000, signer);
        let manifest = Manifest::from_json(&manifest_object.bytes).unwrap();
        store.insert(manifest_object.key, manifest_object.bytes);
        (store, manifest)
    }

    #[test]
    fn a_recording_archives_verifies_and_exports() {
        let kek = LocalKek::from_bytes(&[9; 32]).unwrap();
        let signer = SigningKey::from_bytes(&[3; 32]);
        let (store, manifest) = record(&kek, &signer);
        assert_eq!(manifest.tracks.len(), 2);
        // Everyone in the consultation is listed; the companion whose last answer was a
        // refusal is marked, and nobody else is.
        let listed: Vec<(&str, &str, bool)> = manifest
            .participants
            .iter()
            .map(|p| (p.user_id.as_str(), p.role.as_str(), p.refused_consent))
            .collect();
        assert_eq!(
            listed,
            [
                ("pat-a", "patient", false),
                ("dr-li", "doctor", false),
                ("son-a", "companion", true),
                ("expert-z", "expert", false),
            ]
        );
        assert!(
            manifest.tracks.iter().all(|t| t.segments.len() >= 3),
            "4 s segments of 12 s"
        );
        assert!(store.contains_key(&manifest_key("rec-1")));
        let report = verify_recording(
            &manifest,
            |k| store.get(k).cloned().ok_or("missing"),
            crate::vault::Signers::Pinned(&[signer.verifying_key()]),
            Some(&kek),
        );
        assert!(report.is_ok(), "{report}");
        // Decrypt and finalize one track into a playable file structure.
        let key = KeyWrapper::unwrap(&kek, &manifest.wrapped_key).unwrap();
        let track = &manifest.tracks[0];
        let plain: Vec<Vec<u8>> = track
            .segments
            .iter()
            .map(|s| {
                crate::vault::open_recorded_segment(&manifest, s, &key, &store[&s.object_key])
                    .unwrap()
            })
            .collect();
        let file = finalize(&plain).unwrap();
        assert!(file.len() > 1000);
    }

    #[test]
    fn tampering_and_a_wrong_kek_are_named() {
        let kek = LocalKek::from_bytes(&[9; 32]).unwrap();
        let signer = SigningKey::from_bytes(&[3; 32]);
        let (mut store, manifest) = record(&kek, &signer);
        let victim = manifest.tracks[1].segments[1].object_key.clone();
        store.get_mut(&victim).unwrap()[40] ^= 1;
        let report = verify_recording(
            &manifest,
            |k| store.get(k).cloned().ok_or("missing"),
            crate::vault::Signers::AnyKey,
            Some(&kek),
        );
        let failure = report.first_failure.as_ref().expect("tamper found");
        assert_eq!(failure.object_key, victim);
        let wrong = LocalKek::from_bytes(&[8; 32]).unwrap();
        assert!(matches!(
            KeyWrapper::unwrap(&wrong, &manifest.wrapped_key),
            Err(KeyError::WrongKek { .. })
        ));
    }
}
