#![no_main]
//! Sealed recording segments (`vault::decrypt_segment`, `authenticate_segment`), read back
//! from the archive: header, chunk framing and tags, with the right data key.

use huizhen::vault::{
    authenticate_segment, decrypt_segment, encrypt_segment_chunked, Cipher, DataKey, SegmentHeader,
};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;

#[path = "../common/mod.rs"]
mod common;

const RECORDING: &str = "rec-1";

fn key() -> DataKey {
    DataKey::from_bytes([3u8; 32])
}

fuzz_target!(
    init: common::write_seeds(seeds),
    |data: &[u8]| {
        let _ = SegmentHeader::parse(data);
        let key = key();
        let index = 1;
        let plain = decrypt_segment(&key, RECORDING, index, data);
        let summary = authenticate_segment(&key, RECORDING, index, data);
        assert_eq!(plain.is_ok(), summary.is_ok());
    }
);

/// Segments sealed by the crate's own writer: both ciphers, small chunks.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let plain: Vec<u8> = (0..100u8).collect();
    let seal = |cipher, rng: &mut rand::rngs::StdRng| {
        encrypt_segment_chunked(&key(), cipher, 32, RECORDING, 1, &plain, rng).expect("sealed")
    };
    vec![
        ("aes_gcm", seal(Cipher::Aes256Gcm, &mut rng)),
        ("sm4_gcm", seal(Cipher::Sm4Gcm, &mut rng)),
    ]
}
