#![no_main]
//! Recording manifests (`vault::Manifest`), read back from the archive: parsed, their
//! signature checked against the key they name and against the server's, their data key
//! unwrapped with the local KEK, summed; what parses must survive its own writer and signer.

use std::sync::OnceLock;

use huizhen::vault::{
    Cipher, ConsentDecision, ConsentRecord, Container, DataKey, KeyWrapper, LocalKek, Manifest,
    Participant, SegmentEntry, SigningKey, TrackEntry, TrackKind,
};
use libfuzzer_sys::fuzz_target;

#[path = "../common/mod.rs"]
mod common;

fn server_key() -> &'static SigningKey {
    static K: OnceLock<SigningKey> = OnceLock::new();
    K.get_or_init(|| SigningKey::from_bytes(&[9u8; 32]))
}

fn kek() -> &'static LocalKek {
    static K: OnceLock<LocalKek> = OnceLock::new();
    K.get_or_init(|| LocalKek::from_bytes(&[7u8; 32]).expect("a 32-byte KEK"))
}

fuzz_target!(
    init: common::write_seeds(seeds),
    |data: &[u8]| {
        let Ok(manifest) = Manifest::from_json(data) else {
            return;
        };
        let _ = manifest.signer();
        let _ = manifest.verify_signature();
        let _ = manifest.verify_signed_by(&server_key().verifying_key());
        let _ = kek().unwrap(&manifest.wrapped_key);
        let _ = manifest.segment_count();
        let _ = manifest.ciphertext_bytes();
        let again = Manifest::from_json(&manifest.to_json()).expect("a written manifest parses");
        assert_eq!(again, manifest);
        let mut signed = manifest;
        signed.sign(server_key());
        signed
            .verify_signed_by(&server_key().verifying_key())
            .expect("a manifest verifies after signing");
    }
);

/// A signed manifest made by the crate's own writers: one participant, consent, a track
/// with two segments, a data key wrapped by the local KEK.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let wrapped = kek().wrap(&DataKey::from_bytes([3u8; 32])).expect("wrap");
    let mut m = Manifest::new(
        "rec-1",
        "c-1",
        "consult-c-1",
        1_735_689_600_000,
        Cipher::Aes256Gcm,
        wrapped,
    );
    // From JSON, so the seed builds whichever optional fields a participant has.
    let participant: Participant =
        serde_json::from_str(r#"{"user_id":"d1","role":"doctor"}"#).expect("a participant");
    m.participants.push(participant);
    m.consents.push(ConsentRecord {
        user_id: "d1".into(),
        decision: ConsentDecision::Granted,
        at_ms: 1_735_689_600_100,
    });
    m.tracks.push(TrackEntry {
        track_id: "t1".into(),
        participant: "d1".into(),
        kind: TrackKind::Video,
        codec: "VP8".into(),
        container: Container::Webm,
        segments: vec![
            SegmentEntry::for_ciphertext(0, "recordings/rec-1/t1/0.seg", 0, 10_000, 1000, b"one"),
            SegmentEntry::for_ciphertext(
                1,
                "recordings/rec-1/t1/1.seg",
                10_000,
                4_000,
                500,
                b"two",
            ),
        ],
    });
    m.ended_at_ms = Some(1_735_689_614_000);
    m.sign(server_key());
    vec![("signed_manifest", m.to_json())]
}
