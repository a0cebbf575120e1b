//! Whole-recording scenarios for the archive cryptography: a recording of two tracks of three
//! segments each is sealed, described by a signed manifest and kept in an in-memory object
//! store; then the store or the manifest is damaged in the ways a dispute might reveal, and
//! `verify_recording` must name what is wrong.

use std::collections::HashMap;

use huizhen::vault::{
    encrypt_segment, open_recorded_segment, verify_recording, Cipher, ConsentDecision,
    ConsentRecord, Container, DataKey, KeyCheck, KeyError, KeyWrapper, LocalKek, Manifest,
    ManifestError, Participant, SegmentEntry, SegmentError, SegmentProblem, SigningKey, TrackEntry,
    TrackKind, VerifyReport,
};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

const RECORDING: &str = "rec-20240601-0001";
const KEK_HEX: &str = "8f2a6c1e5b3d7f90a4c2e6b8d0f1a3c5e7092b4d6f8a0c2e4b6d8f0a1c3e5b7d";

struct Fixture {
    manifest: Manifest,
    store: HashMap<String, Vec<u8>>,
    plaintexts: HashMap<String, Vec<u8>>,
    kek: LocalKek,
    signer: SigningKey,
}

fn media(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// Two consenting participants, one track each, three segments per track (sizes chosen to
/// cross chunk boundaries), sealed with `cipher` and signed.
fn record(cipher: Cipher) -> Fixture {
    let mut rng = StdRng::seed_from_u64(2024);
    let kek = LocalKek::from_encoded(KEK_HEX).unwrap();
    let signer = SigningKey::from_bytes(&[0x5e; 32]);
    let data_key = DataKey::generate(&mut rng);
    let mut manifest = Manifest::new(
        RECORDING,
        "consult-77",
        "room-12",
        1_717_200_000_000,
        cipher,
        kek.wrap(&data_key).unwrap(),
    );
    for (user, role) in [("dr-zhao", "doctor"), ("pt-chen", "patient")] {
        manifest.participants.push(Participant {
            user_id: user.into(),
            role: role.into(),
            refused_consent: false,
        });
        manifest.consents.push(ConsentRecord {
            user_id: user.into(),
            decision: ConsentDecision::Granted,
            at_ms: 1_717_200_000_500,
        });
    }
    let mut store = HashMap::new();
    let mut plaintexts = HashMap::new();
    for (track_id, user, kind, codec) in [
        ("t1", "dr-zhao", TrackKind::Video, "vp8"),
        ("t2", "pt-chen", TrackKind::Audio, "opus"),
    ] {
        let mut segments = Vec::new();
        for index in 0..3u32 {
            let plain = media(&mut rng, 150_000 + 7_000 * index as usize);
            let sealed = encrypt_segment(&data_key, cipher, RECORDING, index, &plain, &mut rng);
            let key = format!("{RECORDING}/{track_id}/{index:06}.seg");
            segments.push(SegmentEntry::for_ciphertext(
                index,
                &key,
                u64::from(index) * 10_000,
                10_000,
                plain.len() as u64,
                &sealed,
            ));
            store.insert(key.clone(), sealed);
            plaintexts.insert(key, plain);
        }
        manifest.tracks.push(TrackEntry {
            track_id: track_id.into(),
            participant: user.into(),
            kind,
            codec: codec.into(),
            container: Container::Webm,
            segments,
        });
    }
    manifest.ended_at_ms = Some(1_717_200_030_000);
    manifest.sign(&signer);
    Fixture {
        manifest,
        store,
        plaintexts,
        kek,
        signer,
    }
}

fn verify(f: &Fixture, kek: Option<&dyn KeyWrapper>) -> VerifyReport {
    verify_recording(
        &f.manifest,
        |key: &str| {
            f.store
                .get(key)
                .cloned()
                .ok_or_else(|| format!("no object `{key}`"))
        },
        huizhen::vault::Signers::Pinned(&[f.signer.verifying_key()]),
        kek,
    )
}

fn object_key(f: &Fixture, track: usize, index: usize) -> String {
    f.manifest.tracks[track].segments[index].object_key.clone()
}

#[test]
fn an_intact_recording_verifies_for_both_ciphers() {
    for cipher in [Cipher::Aes256Gcm, Cipher::Sm4Gcm] {
        let f = record(cipher);
        let report = verify(&f, Some(&f.kek));
        assert!(report.is_ok(), "{report}");
        assert!(matches!(report.key, KeyCheck::Unwrapped));
        assert_eq!(report.segments_total, 6);
        assert_eq!(report.segments_hash_ok, 6);
        assert_eq!(report.segments_authenticated, 6);
        assert_eq!(
            report.chunks_authenticated,
            6 * 3,
            "three 64 KiB chunks per segment"
        );
        assert_eq!(report.bytes_checked, f.manifest.ciphertext_bytes());
        assert!(report.to_string().ends_with("result: OK"), "{report}");

        // Without the KEK, an auditor still checks signature, sizes and hashes.
        let report = verify(&f, None);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.segments_authenticated, 0);
    }
}

#[test]
fn the_manifest_survives_storage_as_json() {
    let f = record(Cipher::Aes256Gcm);
    let stored = f.manifest.to_json();
    let back = Manifest::from_json(&stored).unwrap();
    back.verify_signed_by(&f.signer.verifying_key()).unwrap();
    let text = String::from_utf8(stored).unwrap();
    assert!(text.contains("\"decision\": \"granted\""), "{text}");
    assert!(
        !text.contains(KEK_HEX),
        "the KEK is never stored with the data"
    );
}

#[test]
fn a_flipped_byte_names_the_segment() {
    let mut f = record(Cipher::Aes256Gcm);
    let key = object_key(&f, 0, 2);
    f.store.get_mut(&key).unwrap()[70_000] ^= 0x40;
    let report = verify(&f, Some(&f.kek));
    assert!(!report.is_ok());
    assert!(report.signature.is_ok());
    let first = report.first_failure.as_ref().unwrap();
    assert_eq!((first.track_id.as_str(), first.index), ("t1", 2));
    assert_eq!(first.object_key, key);
    assert!(
        matches!(first.problem, SegmentProblem::HashMismatch { .. }),
        "{first}"
    );
    assert_eq!(report.failed_segments, 1);
    assert!(
        report
            .to_string()
            .contains("first bad segment: track t1 segment 2"),
        "{report}"
    );
}

#[test]
fn a_dropped_segment_is_named() {
    let mut f = record(Cipher::Sm4Gcm);
    let key = object_key(&f, 1, 1);
    f.store.remove(&key);
    let report = verify(&f, Some(&f.kek));
    let first = report.first_failure.as_ref().unwrap();
    assert_eq!((first.track_id.as_str(), first.index), ("t2", 1));
    assert!(
        matches!(first.problem, SegmentProblem::Missing { .. }),
        "{first}"
    );
    assert!(
        report.to_string().contains("object missing from the store"),
        "{report}"
    );
    // The other five are still checked and counted.
    assert_eq!(report.segments_authenticated, 5);
}

#[test]
fn swapped_segments_are_named() {
    let mut f = record(Cipher::Aes256Gcm);
    let (a, b) = (object_key(&f, 0, 0), object_key(&f, 0, 1));
    let first_bytes = f.store.remove(&a).unwrap();
    let second_bytes = f.store.insert(b.clone(), first_bytes).unwrap();
    f.store.insert(a, second_bytes);
    let report = verify(&f, Some(&f.kek));
    let first = report.first_failure.as_ref().unwrap();
    assert_eq!((first.track_id.as_str(), first.index), ("t1", 0));
    assert!(
        matches!(first.problem, SegmentProblem::SizeMismatch { .. }),
        "{first}"
    );
    assert_eq!(report.failed_segments, 2);
}

#[test]
fn swapped_segments_are_caught_by_the_tags_even_with_doctored_hashes() {
    // Someone with write access to the store and the manifest, but not the signing key: the
    // signature fails, and the chunk tags (which bind the segment index) fail too.
    let mut f = record(Cipher::Aes256Gcm);
    let track = &mut f.manifest.tracks[1];
    let (a, b) = (track.segments[0].clone(), track.segments[1].clone());
    track.segments[0].object_key = b.object_key.clone();
    track.segments[0].sha256 = b.sha256.clone();
    track.segments[0].ciphertext_bytes = b.ciphertext_bytes;
    track.segments[0].plaintext_bytes = b.plaintext_bytes;
    track.segments[1].object_key = a.object_key.clone();
    track.segments[1].sha256 = a.sha256.clone();
    track.segments[1].ciphertext_bytes = a.ciphertext_bytes;
    track.segments[1].plaintext_bytes = a.plaintext_bytes;
    let report = verify(&f, Some(&f.kek));
    assert!(matches!(report.signature, Err(ManifestError::BadSignature)));
    let first = report.first_failure.as_ref().unwrap();
    assert_eq!((first.track_id.as_str(), first.index), ("t2", 0));
    assert_eq!(
        first.problem,
        SegmentProblem::Crypto(SegmentError::Tampered { chunk: 0 })
    );
}

#[test]
fn a_wrong_kek_is_a_clear_error_never_garbage() {
    let f = record(Cipher::Aes256Gcm);
    let (wrong, _) = LocalKek::generate(&mut StdRng::seed_from_u64(99));
    let report = verify(&f, Some(&wrong));
    assert!(!report.is_ok());
    let KeyCheck::Failed(err) = &report.key else {
        panic!("expected a key failure: {report}");
    };
    assert!(matches!(err, KeyError::WrongKek { .. }), "{err}");
    assert!(
        report
            .to_string()
            .contains("data key: FAILED: wrong key-encryption key"),
        "{report}"
    );
    // Export with the wrong KEK stops at the unwrap: no segment is ever decrypted.
    assert!(matches!(
        wrong.unwrap(&f.manifest.wrapped_key),
        Err(KeyError::WrongKek { .. })
    ));
    // And a wrong data key (e.g. another recording's) fails at the first chunk, with no output.
    let seg = &f.manifest.tracks[0].segments[0];
    let other_key = DataKey::generate(&mut StdRng::seed_from_u64(7));
    let err =
        open_recorded_segment(&f.manifest, seg, &other_key, &f.store[&seg.object_key]).unwrap_err();
    assert!(
        err.to_string().contains("wrong key or tampered data"),
        "{err}"
    );
}

#[test]
fn an_edited_manifest_fails_its_signature() {
    let mut f = record(Cipher::Aes256Gcm);
    f.manifest.consents[1].decision = ConsentDecision::Refused;
    let report = verify(&f, Some(&f.kek));
    assert!(matches!(report.signature, Err(ManifestError::BadSignature)));
    assert!(!report.is_ok());
    assert!(
        report
            .to_string()
            .contains("signature: FAILED: bad manifest signature"),
        "{report}"
    );

    // Re-signing with another key is caught against the expected signer.
    let mut f = record(Cipher::Aes256Gcm);
    f.manifest.consents[1].at_ms += 60_000;
    f.manifest.sign(&SigningKey::from_bytes(&[0x11; 32]));
    let report = verify(&f, None);
    assert!(
        matches!(
            report.signature,
            Err(ManifestError::UnexpectedSigner { .. })
        ),
        "{report}"
    );
}

#[test]
fn export_reproduces_every_track_exactly() {
    let f = record(Cipher::Sm4Gcm);
    let data_key = f.kek.unwrap(&f.manifest.wrapped_key).unwrap();
    for track in &f.manifest.tracks {
        for seg in &track.segments {
            let plain =
                open_recorded_segment(&f.manifest, seg, &data_key, &f.store[&seg.object_key])
                    .unwrap();
            assert_eq!(plain, f.plaintexts[&seg.object_key]);
        }
    }
}

#[test]
fn an_interrupted_recording_verifies_what_was_completed() {
    // After a crash the server re-signs the manifest with the completed segments only and says
    // so; verify passes for what is there, and the interruption is part of the signed record.
    let mut f = record(Cipher::Aes256Gcm);
    f.manifest
        .tracks
        .iter_mut()
        .for_each(|t| t.segments.truncate(2));
    f.manifest.ended_at_ms = None;
    f.manifest.interrupted = Some("server crashed; resumed".into());
    f.manifest.sign(&f.signer);
    let report = verify(&f, Some(&f.kek));
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.segments_total, 4);
    let back = Manifest::from_json(&f.manifest.to_json()).unwrap();
    assert_eq!(back.interrupted.as_deref(), Some("server crashed; resumed"));
}

#[test]
fn a_refusing_participants_track_fails_verification() {
    let mut f = record(Cipher::Aes256Gcm);
    f.manifest.consents[1] = ConsentRecord {
        user_id: "pt-chen".into(),
        decision: ConsentDecision::Refused,
        at_ms: 1_717_200_000_600,
    };
    f.manifest.sign(&f.signer);
    let report = verify(&f, Some(&f.kek));
    assert!(report.signature.is_ok());
    assert!(!report.is_ok());
    assert!(
        report
            .to_string()
            .contains("pt-chen, who has no granted consent"),
        "{report}"
    );
}

#[test]
fn reports_never_contain_key_material() {
    let f = record(Cipher::Aes256Gcm);
    let data_key = f.kek.unwrap(&f.manifest.wrapped_key).unwrap();
    let (wrong, _) = LocalKek::generate(&mut StdRng::seed_from_u64(1));
    for report in [verify(&f, Some(&f.kek)), verify(&f, Some(&wrong))] {
        let text = format!("{report}\n{report:?}");
        assert!(!text.contains(&hex::encode(data_key.as_bytes())));
        assert!(!text.contains(KEK_HEX));
    }
    assert_eq!(format!("{data_key:?}"), "DataKey(<redacted>)");
}

/// `huizhen recording verify` and `export` on a local archive holding the fixture's
/// recording: without a pinned signer they refuse (unless `--any-signer`), a pinned signer
/// accepts the real manifest, and a manifest edited and re-signed with a fresh key is refused
/// by the pinned key, given on the command line or in the configuration.
#[tokio::test]
async fn the_cli_pins_the_manifest_signer() {
    use huizhen::archive::{ArchiveStore, PutOptions};
    use std::process::Command;
    const BIN: &str = env!("CARGO_BIN_EXE_huizhen");
    let dir = std::env::temp_dir().join(format!("huizhen-signer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let archive = dir.join("archive");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let f = record(Cipher::Aes256Gcm);
    let store = huizhen::archive::local::LocalStore::open(&archive).unwrap();
    for (key, bytes) in &f.store {
        store
            .put(key, bytes.clone().into(), PutOptions::default())
            .await
            .unwrap();
    }
    let manifest_key = huizhen::recorder::archiver::manifest_key(RECORDING);
    let put_manifest = |m: &Manifest| {
        let path = archive.join(&manifest_key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, m.to_json()).unwrap();
    };
    put_manifest(&f.manifest);
    let real = huizhen::vault::public_key_base64(&f.signer.verifying_key());
    let config = dir.join("huizhen.toml");
    let write_config = |extra: &str| {
        std::fs::write(
            &config,
            format!("[archive]\nlocal_dir = \"{}\"\n{extra}", archive.display()),
        )
        .unwrap();
    };
    write_config("");
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["recording"])
            .args(args)
            .args([
                "--config",
                config.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
            ])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };

    // No signer pinned anywhere: checked, reported, refused.
    let (ok, out) = run(&["verify", RECORDING]);
    assert!(!ok, "{out}");
    assert!(out.contains("ORIGIN UNVERIFIED"), "{out}");
    assert!(out.contains("--any-signer"), "{out}");
    // Asked explicitly: integrity only, exit 0.
    let (ok, out) = run(&["verify", RECORDING, "--any-signer"]);
    assert!(ok, "{out}");
    assert!(out.contains("ORIGIN UNVERIFIED"), "{out}");
    // Pinned on the command line: the real manifest verifies.
    let (ok, out) = run(&["verify", RECORDING, "--signer", &real]);
    assert!(ok, "{out}");
    assert!(out.contains("by a pinned signer"), "{out}");
    // Export refuses without a pinned signer, before writing anything.
    let export_dir = dir.join("export");
    let (ok, out) = run(&["export", RECORDING, "--out", export_dir.to_str().unwrap()]);
    assert!(!ok);
    assert!(out.contains("not exporting"), "{out}");
    assert!(!export_dir.exists());

    // Someone with write access to the archive drops the patient's track and consent, and
    // re-signs with a key of their own.
    let mut forged = f.manifest.clone();
    forged.tracks.retain(|t| t.participant != "pt-chen");
    forged.consents.retain(|c| c.user_id != "pt-chen");
    forged.participants.retain(|p| p.user_id != "pt-chen");
    forged.sign(&SigningKey::from_bytes(&[0x77; 32]));
    put_manifest(&forged);
    let (ok, out) = run(&["verify", RECORDING, "--signer", &real]);
    assert!(!ok, "{out}");
    assert!(out.contains("not by the expected key"), "{out}");
    // Pinned in the configuration: refused the same way.
    write_config(&format!("[recording]\nsigner_public_keys = [\"{real}\"]\n"));
    let (ok, out) = run(&["verify", RECORDING]);
    assert!(!ok, "{out}");
    assert!(out.contains("not by the expected key"), "{out}");
    assert!(out.contains("recording.signer_public_keys"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
