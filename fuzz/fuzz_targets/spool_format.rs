#![no_main]
//! The spool file format (`archive::spool::decode`), read back from the spool disk after a
//! restart, and spool file names (`parse_obj_name`).

use huizhen::archive::spool::{decode, encode_header, obj_name, parse_obj_name, SpoolHeader};
use huizhen::archive::PutOptions;
use libfuzzer_sys::fuzz_target;

#[path = "../common/mod.rs"]
mod common;

fuzz_target!(
    init: common::write_seeds(seeds),
    |data: &[u8]| {
        if let Ok((header, offset)) = decode(data) {
            // What decodes is whole: the object is the rest of the file, and the header
            // written again reads back the same.
            let body = &data[offset..];
            assert_eq!(body.len() as u64, header.len);
            let mut again = encode_header(&header);
            again.extend_from_slice(body);
            assert_eq!(decode(&again).expect("re-encoded file decodes").0, header);
        }
        if let Ok(name) = std::str::from_utf8(data) {
            if let Some(seq) = parse_obj_name(name) {
                assert_eq!(obj_name(seq), name);
            }
        }
    }
);

/// A spool file written by the crate's own header writer, and a file name.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let body = b"HZSEG\x01 sealed segment bytes".to_vec();
    let header = SpoolHeader::new(
        "recordings/r1/a/00000001.seg",
        &body,
        1_735_689_600_000,
        PutOptions {
            retention_until: Some(1_900_000_000),
        },
    );
    let mut file = encode_header(&header);
    file.extend_from_slice(&body);
    vec![
        ("spool_file", file),
        ("obj_name", obj_name(42).into_bytes()),
    ]
}
