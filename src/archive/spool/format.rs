//! The spool file format: pure functions from bytes to header and back.
//!
//! Layout: [`MAGIC`], the header length as a big-endian `u32`, the header as JSON, then the
//! object bytes. JSON keeps the header extensible and readable with `head -c` when an
//! operator inspects a stuck spool. File names carry the sequence number, zero-padded to 20
//! digits, so a directory listing sorts in upload order.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::archive::{validate_key, PutOptions};

/// First bytes of every spool file; the digit is the format version.
pub const MAGIC: &[u8; 8] = b"HZSPOOL1";
/// Longest accepted header, so a corrupt length cannot make us allocate gigabytes.
const MAX_HEADER_LEN: usize = 4096;
/// Spool files are `<20-digit sequence>.obj`.
const OBJ_SUFFIX: &str = ".obj";

/// What a spool file says about the object it holds.
///
/// Layout: [`MAGIC`], the header length as a big-endian `u32`, the header as JSON, then the
/// object bytes. The SHA-256 lets the uploader refuse to archive a file damaged on the spool
/// disk (it would otherwise be archived as the "original").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolHeader {
    /// The archive key.
    pub key: String,
    /// Length of the object bytes.
    pub len: u64,
    /// Lowercase hex SHA-256 of the object bytes.
    pub sha256: String,
    /// When it was enqueued (unix milliseconds), for logs and age.
    pub enqueued_at_ms: u64,
    /// [`PutOptions::retention_until`] as given to `enqueue_with`.
    pub retention_until: Option<u64>,
}

impl SpoolHeader {
    /// The header for `bytes` under `key`.
    pub fn new(key: &str, bytes: &[u8], enqueued_at_ms: u64, options: PutOptions) -> SpoolHeader {
        SpoolHeader {
            key: key.to_owned(),
            len: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
            enqueued_at_ms,
            retention_until: options.retention_until,
        }
    }
}

/// The bytes that precede the object in a spool file.
pub fn encode_header(header: &SpoolHeader) -> Vec<u8> {
    let json = serde_json::to_vec(header).expect("a header always serialises");
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

/// Parse a whole spool file; returns the header and the offset of the object bytes.
/// Errors say what is wrong, for the log line when a file is set aside.
pub fn decode(file: &[u8]) -> Result<(SpoolHeader, usize), String> {
    let rest = file
        .strip_prefix(&MAGIC[..])
        .ok_or("not a spool file (bad magic)")?;
    let len_bytes: [u8; 4] = rest
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or("truncated before the header length")?;
    let header_len = u32::from_be_bytes(len_bytes) as usize;
    if header_len > MAX_HEADER_LEN {
        return Err(format!("header length {header_len} is implausible"));
    }
    let json = rest
        .get(4..4 + header_len)
        .ok_or("truncated inside the header")?;
    let header: SpoolHeader =
        serde_json::from_slice(json).map_err(|e| format!("unreadable header: {e}"))?;
    let offset = MAGIC.len() + 4 + header_len;
    let body = &file[offset..];
    if body.len() as u64 != header.len {
        return Err(format!(
            "object is {} bytes, header says {}",
            body.len(),
            header.len
        ));
    }
    if hex::encode(Sha256::digest(body)) != header.sha256 {
        return Err("object bytes do not match their SHA-256".into());
    }
    validate_key(&header.key).map_err(|e| e.to_string())?;
    Ok((header, offset))
}

/// The file name of spool object `seq`.
pub fn obj_name(seq: u64) -> String {
    format!("{seq:020}{OBJ_SUFFIX}")
}

/// The sequence number of a spool object file name.
pub fn parse_obj_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(OBJ_SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_files_round_trip_and_damage_is_detected() {
        let body = b"ciphertext".to_vec();
        let header = SpoolHeader::new(
            "recordings/r1/a/1.seg",
            &body,
            1_700_000_000_000,
            PutOptions {
                retention_until: Some(7),
            },
        );
        let mut file = encode_header(&header);
        file.extend_from_slice(&body);
        let (parsed, offset) = decode(&file).unwrap();
        assert_eq!(parsed, header);
        assert_eq!(&file[offset..], body);

        let mut flipped = file.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(decode(&flipped).unwrap_err().contains("SHA-256"));
        assert!(decode(&file[..file.len() - 1])
            .unwrap_err()
            .contains("header says"));
        assert!(decode(b"HZSPOOL1").is_err());
        assert!(decode(b"garbage!garbage").unwrap_err().contains("magic"));
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&huge).unwrap_err().contains("implausible"));
    }

    #[test]
    fn file_names_sort_in_sequence_order() {
        assert_eq!(obj_name(42), "00000000000000000042.obj");
        assert_eq!(parse_obj_name(&obj_name(42)), Some(42));
        assert_eq!(parse_obj_name(&obj_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_obj_name("42.obj"), None);
        assert_eq!(parse_obj_name(".00000000000000000042.tmp"), None);
        assert!(obj_name(9) < obj_name(10));
    }
}
