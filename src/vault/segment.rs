//! Encryption at rest of one recording segment: an authenticated streaming format.
//!
//! The recorder closes a media segment every few seconds and hands its bytes here before they
//! touch the spool or the store. A segment is sealed as one header followed by fixed-size chunks,
//! each an independent AEAD message (the STREAM construction of Hoang, Reyhanitabar, Rogaway and
//! Vizár, as in the `aead-stream` crate's `EncryptorBE32`):
//!
//! ```text
//! header (18 bytes, all in clear, all authenticated):
//!   magic "HZSEG" (5) | version (1) | cipher id (1) | chunk_bytes u32 BE (4) | nonce prefix (7)
//! chunk i (i = 0..n):
//!   AEAD(key, nonce = prefix (7) | i as u32 BE (4) | last flag (1: 0x01 on the final chunk),
//!        aad   = header (18) | len(recording_id) u32 BE | recording_id | segment index u32 BE,
//!        plaintext[i * chunk_bytes ..][.. chunk_bytes]) = ciphertext | 16-byte tag
//! ```
//!
//! Every chunk but the last holds exactly `chunk_bytes` of plaintext; the last holds 0 to
//! `chunk_bytes` and carries the last flag. Why this layout:
//! - the **counter in the nonce** makes reordering or swapping chunks fail authentication;
//! - the **last flag** makes dropping trailing chunks detectable ([`SegmentError::Truncated`]),
//!   which a plain sequence of AEAD messages would not be;
//! - the **header in the AAD** stops an attacker from changing the chunk size or cipher id;
//! - the **recording id and segment index in the AAD** stop a valid segment from being moved to
//!   another index or another recording (the storage object key is not trusted for this);
//! - the **random 56-bit nonce prefix** keeps nonces unique across the segments of a recording,
//!   which all share one data key (a fresh key per recording bounds the birthday risk to the
//!   segments of one recording: negligible at 2^-56 per pair).
//!
//! Chunking bounds the memory a reader needs per step and lets the recorder encrypt while the
//! segment is still being written ([`SegmentWriter`]). The code is sans-IO: bytes in, bytes out;
//! randomness is injected so tests are deterministic.
//!
//! SM4 takes a 128-bit key: with [`Cipher::Sm4Gcm`] the first 16 bytes of the 32-byte
//! [`DataKey`] are the SM4 key. The data key is uniformly random and used with exactly one cipher
//! (recorded in the manifest and bound into every chunk's AAD through the header), so truncating
//! it keeps it uniform and never shares key material between algorithms.

use std::fmt;
use std::str::FromStr;

use aes_gcm::aead::array::Array;
use aes_gcm::aead::consts::U12;
use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, AesGcm};
use rand::CryptoRng;
use serde::{Deserialize, Serialize};

use super::keys::DataKey;

/// The five bytes every sealed segment starts with.
pub const MAGIC: [u8; 5] = *b"HZSEG";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Length of the clear header.
pub const HEADER_LEN: usize = 18;
/// Length of each chunk's authentication tag.
pub const TAG_LEN: usize = 16;
/// Length of the random nonce prefix (96-bit nonce minus 32-bit counter minus flag byte).
pub const NONCE_PREFIX_LEN: usize = 7;
/// Default plaintext bytes per chunk: large enough that the 16-byte tag costs 0.02 %, small
/// enough that a reader holds little in memory per step.
pub const DEFAULT_CHUNK_BYTES: u32 = 64 * 1024;
/// Smallest chunk size the format accepts (configuration asks for more; see
/// [`super::config`]).
pub const MIN_CHUNK_BYTES: u32 = 16;
/// Largest chunk size the format accepts, so a hostile header cannot make a reader allocate
/// without bound per chunk.
pub const MAX_CHUNK_BYTES: u32 = 16 * 1024 * 1024;

type Sm4Gcm = AesGcm<sm4::Sm4, U12>;

/// The AEAD that seals a segment's chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Cipher {
    /// AES-256-GCM: the default, hardware-accelerated on every server CPU we target.
    #[default]
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
    /// SM4-GCM (GB/T 32907 block cipher in GCM mode), for deployments under Chinese commercial
    /// cryptography rules.
    #[serde(rename = "sm4-gcm")]
    Sm4Gcm,
}

impl Cipher {
    /// The byte that names this cipher in a segment header.
    pub const fn id(self) -> u8 {
        match self {
            Cipher::Aes256Gcm => 1,
            Cipher::Sm4Gcm => 2,
        }
    }

    /// The cipher a header byte names, if this build knows it.
    pub const fn from_id(id: u8) -> Option<Cipher> {
        match id {
            1 => Some(Cipher::Aes256Gcm),
            2 => Some(Cipher::Sm4Gcm),
            _ => None,
        }
    }

    /// The name used in configuration and manifests.
    pub const fn as_str(self) -> &'static str {
        match self {
            Cipher::Aes256Gcm => "aes-256-gcm",
            Cipher::Sm4Gcm => "sm4-gcm",
        }
    }
}

impl fmt::Display for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cipher name that is neither `aes-256-gcm` nor `sm4-gcm`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cipher `{0}`: expected `aes-256-gcm` or `sm4-gcm`")]
pub struct UnknownCipherName(pub String);

impl FromStr for Cipher {
    type Err = UnknownCipherName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "aes-256-gcm" => Ok(Cipher::Aes256Gcm),
            "sm4-gcm" => Ok(Cipher::Sm4Gcm),
            other => Err(UnknownCipherName(other.to_owned())),
        }
    }
}

/// Why a segment could not be sealed or opened.
///
/// Grouped by fault: the first group means the bytes are not a segment this build reads (wrong
/// file, newer format); the second means they are one but fail authentication (damage, tampering
/// or the wrong key: the plaintext is never released); the last is a caller mistake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    // --- Not a segment this build reads ---
    /// The bytes do not start with `HZSEG`.
    #[error("not an encrypted huizhen segment (bad magic bytes)")]
    BadMagic,
    /// A segment format this build does not know (written by a newer server).
    #[error(
        "unsupported segment format version {found} (this build reads version {FORMAT_VERSION})"
    )]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// A cipher id this build does not know.
    #[error("unknown cipher id {id} in segment header")]
    UnknownCipher {
        /// The cipher byte found.
        id: u8,
    },
    /// The header's chunk size is outside what the format allows.
    #[error("segment header chunk size {found} is outside {MIN_CHUNK_BYTES}..={MAX_CHUNK_BYTES}")]
    BadChunkSize {
        /// The chunk size found.
        found: u32,
    },

    // --- A segment, but not authentic ---
    /// The segment ends before its final chunk: it was cut short (a partial upload, a dropped
    /// last chunk).
    #[error("segment is truncated: its final chunk is missing")]
    Truncated,
    /// A chunk's tag did not verify. At chunk 0 this is also what a wrong data key looks like.
    #[error("chunk {chunk} failed authentication: wrong key or tampered data")]
    Tampered {
        /// Zero-based chunk number.
        chunk: u32,
    },
    /// Bytes follow a full-size final chunk. (Bytes appended after a short final chunk
    /// change where that chunk seems to end, so they show as [`Tampered`](Self::Tampered) at
    /// that chunk instead.)
    #[error("unexpected data after the final chunk (chunk {last_chunk})")]
    TrailingData {
        /// The chunk that carried the last flag.
        last_chunk: u32,
    },

    // --- Caller mistakes ---
    /// The plaintext would need more than 2^32 chunks.
    #[error("segment too long: more than 2^32 chunks")]
    TooLong,
}

impl SegmentError {
    /// True when the bytes are a segment but fail authentication: damage, tampering, a wrong
    /// key, or a segment moved to another index or recording.
    pub fn is_integrity_failure(&self) -> bool {
        matches!(
            self,
            SegmentError::Truncated
                | SegmentError::Tampered { .. }
                | SegmentError::TrailingData { .. }
        )
    }
}

/// The clear header at the start of a sealed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version.
    pub version: u8,
    /// The AEAD used for every chunk.
    pub cipher: Cipher,
    /// Plaintext bytes per non-final chunk.
    pub chunk_bytes: u32,
    /// Random per-segment nonce prefix.
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

impl SegmentHeader {
    /// Parse the header at the start of `bytes` (which may hold the whole segment).
    ///
    /// Only the header's shape is checked here; its authenticity is checked with the first
    /// chunk, whose AAD covers it.
    pub fn parse(bytes: &[u8]) -> Result<SegmentHeader, SegmentError> {
        let magic_len = MAGIC.len().min(bytes.len());
        if bytes[..magic_len] != MAGIC[..magic_len] {
            return Err(SegmentError::BadMagic);
        }
        if bytes.len() < HEADER_LEN {
            return Err(SegmentError::Truncated);
        }
        let version = bytes[5];
        if version != FORMAT_VERSION {
            return Err(SegmentError::UnsupportedVersion { found: version });
        }
        let cipher =
            Cipher::from_id(bytes[6]).ok_or(SegmentError::UnknownCipher { id: bytes[6] })?;
        let chunk_bytes = u32::from_be_bytes([bytes[7], bytes[8], bytes[9], bytes[10]]);
        if !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&chunk_bytes) {
            return Err(SegmentError::BadChunkSize { found: chunk_bytes });
        }
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        nonce_prefix.copy_from_slice(&bytes[11..HEADER_LEN]);
        Ok(SegmentHeader {
            version,
            cipher,
            chunk_bytes,
            nonce_prefix,
        })
    }

    /// The header's wire form.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..5].copy_from_slice(&MAGIC);
        out[5] = self.version;
        out[6] = self.cipher.id();
        out[7..11].copy_from_slice(&self.chunk_bytes.to_be_bytes());
        out[11..].copy_from_slice(&self.nonce_prefix);
        out
    }
}

/// What a successful authentication of a whole segment found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSummary {
    /// The segment's header.
    pub header: SegmentHeader,
    /// Number of chunks, the final one included.
    pub chunks: u32,
    /// Total plaintext length.
    pub plaintext_bytes: u64,
}

/// Sealed length of a plaintext of `plaintext_len` bytes: header, data, one tag per chunk (at
/// least one chunk, even for an empty plaintext).
pub fn sealed_len(plaintext_len: u64, chunk_bytes: u32) -> u64 {
    let chunk = u64::from(chunk_bytes.max(1));
    let chunks = plaintext_len.div_ceil(chunk).max(1);
    HEADER_LEN as u64 + plaintext_len + chunks * TAG_LEN as u64
}

/// The keyed AEAD for one segment.
///
/// Boxed: the AES key schedule is large and the value lives as long as a segment.
enum SegmentAead {
    Aes(Box<Aes256Gcm>),
    Sm4(Box<Sm4Gcm>),
}

impl SegmentAead {
    fn new(key: &DataKey, cipher: Cipher) -> SegmentAead {
        let bytes = key.as_bytes();
        match cipher {
            Cipher::Aes256Gcm => SegmentAead::Aes(Box::new(Aes256Gcm::new(bytes.into()))),
            Cipher::Sm4Gcm => {
                let (sm4_key, _) = bytes.split_first_chunk::<16>().expect("32 > 16");
                SegmentAead::Sm4(Box::new(Sm4Gcm::new(sm4_key.into())))
            }
        }
    }

    /// Encrypt `plain` into `out` (same length) and return the tag.
    fn seal(&self, nonce: &[u8; 12], aad: &[u8], plain: &[u8], out: &mut [u8]) -> [u8; TAG_LEN] {
        let buf = InOutBuf::new(plain, out).expect("seal buffers have equal length");
        let nonce: &Array<u8, U12> = nonce.into();
        // Only fails on plaintext or AAD lengths beyond 2^36 bytes, which MAX_CHUNK_BYTES and
        // the in-memory recording id rule out.
        let tag = match self {
            SegmentAead::Aes(c) => c.encrypt_inout_detached(nonce, aad, buf),
            SegmentAead::Sm4(c) => c.encrypt_inout_detached(nonce, aad, buf),
        }
        .expect("chunk and AAD lengths are within GCM limits");
        tag.into()
    }

    /// Check the tag and decrypt `sealed` (ciphertext then tag) into `out`; `out` is left
    /// untouched when the tag does not verify, so no unauthenticated plaintext escapes.
    fn open(&self, nonce: &[u8; 12], aad: &[u8], sealed: &[u8], out: &mut [u8]) -> bool {
        let (ct, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let Ok(buf) = InOutBuf::new(ct, out) else {
            return false;
        };
        let nonce: &Array<u8, U12> = nonce.into();
        let tag: &Array<u8, _> = <&[u8; TAG_LEN]>::try_from(tag)
            .expect("tag is TAG_LEN bytes")
            .into();
        match self {
            SegmentAead::Aes(c) => c.decrypt_inout_detached(nonce, aad, buf, tag).is_ok(),
            SegmentAead::Sm4(c) => c.decrypt_inout_detached(nonce, aad, buf, tag).is_ok(),
        }
    }
}

fn chunk_nonce(prefix: &[u8; NONCE_PREFIX_LEN], counter: u32, last: bool) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..NONCE_PREFIX_LEN].copy_from_slice(prefix);
    nonce[NONCE_PREFIX_LEN..11].copy_from_slice(&counter.to_be_bytes());
    nonce[11] = u8::from(last);
    nonce
}

/// The associated data shared by every chunk of a segment.
fn segment_aad(header: &[u8; HEADER_LEN], recording_id: &str, index: u32) -> Vec<u8> {
    let id = recording_id.as_bytes();
    let mut aad = Vec::with_capacity(HEADER_LEN + 8 + id.len());
    aad.extend_from_slice(header);
    // Length-prefixed so that (id, index) pairs can never collide as byte strings.
    aad.extend_from_slice(&(id.len() as u32).to_be_bytes());
    aad.extend_from_slice(id);
    aad.extend_from_slice(&index.to_be_bytes());
    aad
}

/// Streaming encryptor for one segment: feed plaintext as the recorder produces it, drain sealed
/// bytes whenever convenient, and [`finish`](Self::finish) when the segment closes.
///
/// It holds back at most one chunk of plaintext, because a full chunk can only be sealed once it
/// is known whether more data follows (the final chunk carries the last flag).
pub struct SegmentWriter {
    aead: SegmentAead,
    aad: Vec<u8>,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    chunk_bytes: usize,
    counter: u32,
    pending: Vec<u8>,
    out: Vec<u8>,
    plaintext_bytes: u64,
}

impl SegmentWriter {
    /// Start a segment: draws the nonce prefix from `rng` and emits the header.
    ///
    /// `chunk_bytes` must lie within [`MIN_CHUNK_BYTES`]..=[`MAX_CHUNK_BYTES`].
    pub fn new<R: CryptoRng + ?Sized>(
        key: &DataKey,
        cipher: Cipher,
        chunk_bytes: u32,
        recording_id: &str,
        index: u32,
        rng: &mut R,
    ) -> Result<SegmentWriter, SegmentError> {
        if !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&chunk_bytes) {
            return Err(SegmentError::BadChunkSize { found: chunk_bytes });
        }
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        rng.fill_bytes(&mut nonce_prefix);
        let header = SegmentHeader {
            version: FORMAT_VERSION,
            cipher,
            chunk_bytes,
            nonce_prefix,
        }
        .to_bytes();
        let mut out = Vec::with_capacity(HEADER_LEN + chunk_bytes as usize + TAG_LEN);
        out.extend_from_slice(&header);
        Ok(SegmentWriter {
            aead: SegmentAead::new(key, cipher),
            aad: segment_aad(&header, recording_id, index),
            nonce_prefix,
            chunk_bytes: chunk_bytes as usize,
            counter: 0,
            pending: Vec::with_capacity(chunk_bytes as usize),
            out,
            plaintext_bytes: 0,
        })
    }

    /// Add plaintext. Complete chunks are sealed at once (except the latest full one, held until
    /// more data or [`finish`](Self::finish) says whether it is the last).
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), SegmentError> {
        self.plaintext_bytes += data.len() as u64;
        while !data.is_empty() {
            if self.pending.len() == self.chunk_bytes {
                self.seal_non_final_pending()?;
            }
            if self.pending.is_empty() && data.len() > self.chunk_bytes {
                // More data follows this chunk, so it is not the last: seal it without copying.
                let (chunk, rest) = data.split_at(self.chunk_bytes);
                self.seal(chunk, false)?;
                data = rest;
                continue;
            }
            let take = (self.chunk_bytes - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(())
    }

    /// Take the sealed bytes produced so far (the header first), e.g. to append them to the
    /// spool file while the segment is still open.
    pub fn take_output(&mut self) -> Vec<u8> {
        let fresh = Vec::with_capacity(self.chunk_bytes + TAG_LEN);
        std::mem::replace(&mut self.out, fresh)
    }

    /// The sealed bytes produced so far, without taking them: write them out, then call
    /// [`clear_output`](Self::clear_output). Keeps one buffer for the whole segment.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Forget the sealed bytes returned by [`output`](Self::output).
    pub fn clear_output(&mut self) {
        self.out.clear();
    }

    /// Plaintext bytes written so far.
    pub fn plaintext_bytes(&self) -> u64 {
        self.plaintext_bytes
    }

    /// Seal the final chunk and return the remaining sealed bytes (all of them if
    /// [`take_output`](Self::take_output) was never called).
    pub fn finish(mut self) -> Result<Vec<u8>, SegmentError> {
        let pending = std::mem::take(&mut self.pending);
        self.seal(&pending, true)?;
        Ok(std::mem::take(&mut self.out))
    }

    fn seal_non_final_pending(&mut self) -> Result<(), SegmentError> {
        let mut pending = std::mem::take(&mut self.pending);
        let result = self.seal(&pending, false);
        if result.is_ok() {
            pending.clear();
        }
        self.pending = pending;
        result
    }

    fn seal(&mut self, plain: &[u8], last: bool) -> Result<(), SegmentError> {
        // Counter u32::MAX is left for a final chunk, so a non-final one may not take it.
        if !last && self.counter == u32::MAX {
            return Err(SegmentError::TooLong);
        }
        let nonce = chunk_nonce(&self.nonce_prefix, self.counter, last);
        let start = self.out.len();
        self.out.resize(start + plain.len(), 0);
        let tag = self
            .aead
            .seal(&nonce, &self.aad, plain, &mut self.out[start..]);
        self.out.extend_from_slice(&tag);
        self.counter = self.counter.wrapping_add(1);
        Ok(())
    }
}

impl fmt::Debug for SegmentWriter {
    // Never prints the pending plaintext or the key schedule.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("chunk_bytes", &self.chunk_bytes)
            .field("chunks_sealed", &self.counter)
            .field("plaintext_bytes", &self.plaintext_bytes)
            .finish_non_exhaustive()
    }
}

/// Seal a whole segment in memory with the default chunk size.
///
/// # Panics
/// Only if `plaintext` needs more than 2^32 chunks (256 TiB), which no segment held in memory
/// can.
pub fn encrypt_segment<R: CryptoRng + ?Sized>(
    key: &DataKey,
    cipher: Cipher,
    recording_id: &str,
    index: u32,
    plaintext: &[u8],
    rng: &mut R,
) -> Vec<u8> {
    encrypt_segment_chunked(
        key,
        cipher,
        DEFAULT_CHUNK_BYTES,
        recording_id,
        index,
        plaintext,
        rng,
    )
    .expect("the default chunk size is valid and 2^32 default chunks exceed any memory")
}

/// Seal a whole segment in memory with a configured chunk size.
pub fn encrypt_segment_chunked<R: CryptoRng + ?Sized>(
    key: &DataKey,
    cipher: Cipher,
    chunk_bytes: u32,
    recording_id: &str,
    index: u32,
    plaintext: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>, SegmentError> {
    let mut writer = SegmentWriter::new(key, cipher, chunk_bytes, recording_id, index, rng)?;
    let total = sealed_len(plaintext.len() as u64, chunk_bytes);
    writer
        .out
        .reserve(usize::try_from(total).unwrap_or(usize::MAX) - HEADER_LEN);
    writer.write(plaintext)?;
    writer.finish()
}

/// Authenticate and decrypt a whole segment. Nothing is returned unless every chunk verifies,
/// so a wrong key or a damaged file never yields garbage plaintext.
pub fn decrypt_segment(
    key: &DataKey,
    recording_id: &str,
    index: u32,
    ciphertext: &[u8],
) -> Result<Vec<u8>, SegmentError> {
    let mut out = Vec::new();
    open_segment(key, recording_id, index, ciphertext, &mut out, true)?;
    Ok(out)
}

/// Check every chunk tag of a segment without keeping its plaintext (one chunk of scratch
/// memory): what `huizhen recording verify` does with a key.
pub fn authenticate_segment(
    key: &DataKey,
    recording_id: &str,
    index: u32,
    ciphertext: &[u8],
) -> Result<SegmentSummary, SegmentError> {
    let mut scratch = Vec::new();
    open_segment(key, recording_id, index, ciphertext, &mut scratch, false)
}

/// Walk the chunks; with `keep` the plaintext accumulates in `out`, otherwise `out` is scratch.
fn open_segment(
    key: &DataKey,
    recording_id: &str,
    index: u32,
    ciphertext: &[u8],
    out: &mut Vec<u8>,
    keep: bool,
) -> Result<SegmentSummary, SegmentError> {
    let header = SegmentHeader::parse(ciphertext)?;
    let header_bytes: &[u8; HEADER_LEN] = ciphertext[..HEADER_LEN].try_into().expect("checked");
    let aad = segment_aad(header_bytes, recording_id, index);
    let aead = SegmentAead::new(key, header.cipher);
    let body = &ciphertext[HEADER_LEN..];
    if body.is_empty() {
        return Err(SegmentError::Truncated);
    }
    let record = header.chunk_bytes as usize + TAG_LEN;
    let records = body.len().div_ceil(record);
    if records as u64 > 1u64 << 32 {
        return Err(SegmentError::Tampered { chunk: u32::MAX });
    }
    if keep {
        out.reserve(body.len().saturating_sub(records * TAG_LEN));
    }
    for (i, sealed) in body.chunks(record).enumerate() {
        let counter = i as u32;
        let last = i + 1 == records;
        if sealed.len() < TAG_LEN {
            // Too short to be a chunk: the stream stops inside the final chunk.
            return Err(SegmentError::Truncated);
        }
        let start = if keep { out.len() } else { 0 };
        out.resize(start + sealed.len() - TAG_LEN, 0);
        let nonce = chunk_nonce(&header.nonce_prefix, counter, last);
        if aead.open(&nonce, &aad, sealed, &mut out[start..]) {
            if !keep {
                out.clear();
            }
            continue;
        }
        out.truncate(start);
        // Tell the operator what kind of damage this is: a chunk that verifies with the other
        // value of the last flag is authentic but in the wrong place in the stream.
        let other = chunk_nonce(&header.nonce_prefix, counter, !last);
        let mut probe = vec![0u8; sealed.len() - TAG_LEN];
        let err = if !aead.open(&other, &aad, sealed, &mut probe) {
            SegmentError::Tampered { chunk: counter }
        } else if last {
            SegmentError::Truncated
        } else {
            SegmentError::TrailingData {
                last_chunk: counter,
            }
        };
        return Err(err);
    }
    Ok(SegmentSummary {
        header,
        chunks: records as u32,
        plaintext_bytes: (body.len() - records * TAG_LEN) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngCore, SeedableRng};

    const RID: &str = "rec-2024-0001";
    const CHUNK: usize = DEFAULT_CHUNK_BYTES as usize;

    fn key(seed: u8) -> DataKey {
        DataKey::from_bytes([seed; 32])
    }

    fn plaintext(len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        StdRng::seed_from_u64(len as u64).fill_bytes(&mut v);
        v
    }

    fn seal(cipher: Cipher, index: u32, plain: &[u8]) -> Vec<u8> {
        encrypt_segment(
            &key(7),
            cipher,
            RID,
            index,
            plain,
            &mut StdRng::seed_from_u64(1),
        )
    }

    const CIPHERS: [Cipher; 2] = [Cipher::Aes256Gcm, Cipher::Sm4Gcm];
    const SIZES: [usize; 6] = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK];

    #[test]
    fn round_trips_at_chunk_boundaries_for_both_ciphers() {
        for cipher in CIPHERS {
            for len in SIZES {
                let plain = plaintext(len);
                let sealed = seal(cipher, 3, &plain);
                assert_eq!(
                    sealed.len() as u64,
                    sealed_len(len as u64, DEFAULT_CHUNK_BYTES),
                    "{cipher} len {len}"
                );
                assert_eq!(SegmentHeader::parse(&sealed).unwrap().cipher, cipher);
                let opened = decrypt_segment(&key(7), RID, 3, &sealed).unwrap();
                assert_eq!(opened, plain, "{cipher} len {len}");
                let summary = authenticate_segment(&key(7), RID, 3, &sealed).unwrap();
                assert_eq!(summary.plaintext_bytes, len as u64);
                assert_eq!(summary.chunks as usize, len.div_ceil(CHUNK).max(1));
            }
        }
    }

    #[test]
    fn ciphers_produce_different_ciphertexts() {
        let plain = plaintext(100);
        let a = seal(Cipher::Aes256Gcm, 0, &plain);
        let s = seal(Cipher::Sm4Gcm, 0, &plain);
        assert_ne!(a[HEADER_LEN..], s[HEADER_LEN..]);
        assert_ne!(&a[HEADER_LEN..HEADER_LEN + 100], &plain[..]);
    }

    #[test]
    fn streaming_writer_matches_one_shot_for_any_write_pattern() {
        let plain = plaintext(5 * CHUNK + 123);
        let expected = seal(Cipher::Aes256Gcm, 9, &plain);
        for step in [1usize, 7, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK] {
            let mut rng = StdRng::seed_from_u64(1);
            let mut w = SegmentWriter::new(
                &key(7),
                Cipher::Aes256Gcm,
                DEFAULT_CHUNK_BYTES,
                RID,
                9,
                &mut rng,
            )
            .unwrap();
            let mut sealed = Vec::new();
            for piece in plain.chunks(step) {
                w.write(piece).unwrap();
                sealed.extend(w.take_output());
            }
            assert_eq!(w.plaintext_bytes(), plain.len() as u64);
            sealed.extend_from_slice(w.output());
            w.clear_output();
            sealed.extend(w.finish().unwrap());
            assert_eq!(sealed, expected, "write step {step}");
        }
    }

    #[test]
    fn a_flipped_byte_anywhere_is_detected_and_named() {
        // Small chunks so every byte position can be tried.
        let chunk = 32u32;
        let plain = plaintext(5 * chunk as usize + 5);
        for cipher in CIPHERS {
            let sealed = encrypt_segment_chunked(
                &key(7),
                cipher,
                chunk,
                RID,
                0,
                &plain,
                &mut StdRng::seed_from_u64(2),
            )
            .unwrap();
            let record = chunk as usize + TAG_LEN;
            for pos in 0..sealed.len() {
                let mut bad = sealed.clone();
                bad[pos] ^= 0x01;
                let err = decrypt_segment(&key(7), RID, 0, &bad).unwrap_err();
                if pos >= HEADER_LEN {
                    let chunk_no = ((pos - HEADER_LEN) / record) as u32;
                    assert_eq!(
                        err,
                        SegmentError::Tampered { chunk: chunk_no },
                        "byte {pos}"
                    );
                } else if pos >= 11 {
                    // The nonce prefix is only checked through the tags.
                    assert_eq!(err, SegmentError::Tampered { chunk: 0 }, "byte {pos}");
                }
            }
        }
    }

    #[test]
    fn header_damage_is_named() {
        let sealed = seal(Cipher::Aes256Gcm, 0, &plaintext(10));
        let mut bad = sealed.clone();
        bad[0] = b'X';
        assert_eq!(
            decrypt_segment(&key(7), RID, 0, &bad),
            Err(SegmentError::BadMagic)
        );
        let mut bad = sealed.clone();
        bad[5] = 2;
        assert_eq!(
            decrypt_segment(&key(7), RID, 0, &bad),
            Err(SegmentError::UnsupportedVersion { found: 2 })
        );
        let mut bad = sealed.clone();
        bad[6] = 9;
        assert_eq!(
            decrypt_segment(&key(7), RID, 0, &bad),
            Err(SegmentError::UnknownCipher { id: 9 })
        );
        // Switching the cipher id to the other known cipher fails authentication.
        let mut bad = sealed.clone();
        bad[6] = Cipher::Sm4Gcm.id();
        assert_eq!(
            decrypt_segment(&key(7), RID, 0, &bad),
            Err(SegmentError::Tampered { chunk: 0 })
        );
        let mut bad = sealed.clone();
        bad[7..11].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(
            decrypt_segment(&key(7), RID, 0, &bad),
            Err(SegmentError::BadChunkSize { found: 1 })
        );
        assert_eq!(
            decrypt_segment(&key(7), RID, 0, b"HZS"),
            Err(SegmentError::Truncated)
        );
        assert_eq!(
            decrypt_segment(&key(7), RID, 0, b""),
            Err(SegmentError::Truncated)
        );
        assert_eq!(
            decrypt_segment(&key(7), RID, 0, b"PK\x03\x04"),
            Err(SegmentError::BadMagic)
        );
        assert_eq!(
            decrypt_segment(&key(7), RID, 0, &sealed[..HEADER_LEN]),
            Err(SegmentError::Truncated)
        );
        assert_eq!(
            decrypt_segment(&key(7), RID, 0, &sealed[..HEADER_LEN + 5]),
            Err(SegmentError::Truncated)
        );
    }

    #[test]
    fn dropping_the_last_chunk_is_truncation() {
        for len in [CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 10] {
            let sealed = seal(Cipher::Aes256Gcm, 0, &plaintext(len));
            let full_records = (len - 1) / CHUNK; // chunks before the final one
            let cut = HEADER_LEN + full_records * (CHUNK + TAG_LEN);
            assert_eq!(
                decrypt_segment(&key(7), RID, 0, &sealed[..cut]),
                Err(SegmentError::Truncated),
                "len {len}"
            );
            // Cut inside the final chunk.
            assert!(
                decrypt_segment(&key(7), RID, 0, &sealed[..sealed.len() - 1])
                    .unwrap_err()
                    .is_integrity_failure()
            );
            // Cut leaving less than a tag of the final chunk.
            assert_eq!(
                decrypt_segment(&key(7), RID, 0, &sealed[..cut + 3]),
                Err(SegmentError::Truncated)
            );
        }
    }

    #[test]
    fn bytes_after_the_final_chunk_are_trailing_data() {
        let sealed = seal(Cipher::Sm4Gcm, 0, &plaintext(2 * CHUNK));
        let mut long = sealed.clone();
        long.extend_from_slice(&[0u8; 40]);
        assert_eq!(
            decrypt_segment(&key(7), RID, 0, &long),
            Err(SegmentError::TrailingData { last_chunk: 1 })
        );
        // A second copy of the final chunk appended.
        let mut doubled = sealed.clone();
        doubled.extend_from_slice(&sealed[HEADER_LEN + CHUNK + TAG_LEN..]);
        assert_eq!(
            decrypt_segment(&key(7), RID, 0, &doubled),
            Err(SegmentError::TrailingData { last_chunk: 1 })
        );
    }

    #[test]
    fn swapped_chunks_are_detected() {
        let sealed = seal(Cipher::Aes256Gcm, 0, &plaintext(5 * CHUNK));
        let record = CHUNK + TAG_LEN;
        let mut swapped = sealed.clone();
        let (a, b) = (HEADER_LEN + record, HEADER_LEN + 3 * record);
        let first = sealed[a..a + record].to_vec();
        swapped.copy_within(b..b + record, a);
        swapped[b..b + record].copy_from_slice(&first);
        assert_eq!(
            decrypt_segment(&key(7), RID, 0, &swapped),
            Err(SegmentError::Tampered { chunk: 1 })
        );
    }

    #[test]
    fn a_segment_moved_to_another_index_or_recording_is_rejected() {
        let sealed = seal(Cipher::Aes256Gcm, 4, &plaintext(1000));
        assert_eq!(
            decrypt_segment(&key(7), RID, 5, &sealed),
            Err(SegmentError::Tampered { chunk: 0 })
        );
        assert_eq!(
            decrypt_segment(&key(7), "rec-2024-0002", 4, &sealed),
            Err(SegmentError::Tampered { chunk: 0 })
        );
        // Chunk from another segment of the same recording (same key) spliced in.
        let other = seal(Cipher::Aes256Gcm, 5, &plaintext(1000));
        let mut spliced = sealed.clone();
        spliced[HEADER_LEN..].copy_from_slice(&other[HEADER_LEN..]);
        assert!(decrypt_segment(&key(7), RID, 4, &spliced).is_err());
    }

    #[test]
    fn a_wrong_key_says_so() {
        for cipher in CIPHERS {
            let sealed = seal(cipher, 0, &plaintext(3 * CHUNK));
            let err = decrypt_segment(&key(8), RID, 0, &sealed).unwrap_err();
            assert_eq!(err, SegmentError::Tampered { chunk: 0 });
            assert!(err.to_string().contains("wrong key or tampered data"));
        }
    }

    #[test]
    fn writer_refuses_bad_chunk_sizes() {
        let mut rng = StdRng::seed_from_u64(0);
        for bad in [0, MIN_CHUNK_BYTES - 1, MAX_CHUNK_BYTES + 1] {
            assert_eq!(
                SegmentWriter::new(&key(1), Cipher::Aes256Gcm, bad, RID, 0, &mut rng).unwrap_err(),
                SegmentError::BadChunkSize { found: bad }
            );
        }
    }

    #[test]
    fn nonce_layout_is_prefix_counter_flag() {
        let n = chunk_nonce(&[1, 2, 3, 4, 5, 6, 7], 0x0a0b0c0d, true);
        assert_eq!(n, [1, 2, 3, 4, 5, 6, 7, 0x0a, 0x0b, 0x0c, 0x0d, 1]);
        assert_eq!(chunk_nonce(&[0; 7], 1, false)[11], 0);
    }

    #[test]
    fn cipher_names_round_trip() {
        for c in CIPHERS {
            assert_eq!(c.as_str().parse::<Cipher>().unwrap(), c);
            assert_eq!(Cipher::from_id(c.id()), Some(c));
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{c}\""));
        }
        assert!("aes".parse::<Cipher>().is_err());
    }

    #[test]
    fn known_answer_is_stable() {
        // Pins the wire format: a change here breaks every archived recording.
        let sealed = encrypt_segment_chunked(
            &DataKey::from_bytes([0x42; 32]),
            Cipher::Aes256Gcm,
            16,
            "r",
            1,
            b"hello, archive!!x",
            &mut StdRng::seed_from_u64(0),
        )
        .unwrap();
        assert_eq!(sealed.len(), HEADER_LEN + 16 + TAG_LEN + 1 + TAG_LEN);
        assert_eq!(&sealed[..11], b"HZSEG\x01\x01\x00\x00\x00\x10");
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&sealed));
        assert_eq!(digest, KAT_SHA256, "segment wire format changed");
    }

    const KAT_SHA256: &str = "eeac30520ddcc2c56e9c5ee3904423ab27dcbbf0a85f8ca7cf3b2fa4a6bbb1f7";

    #[test]
    fn layout_matches_the_documentation() {
        // Rebuild chunk 0's nonce and AAD by hand, as the module doc describes them, and open
        // it with the plain AEAD API: an independent reader could do the same.
        use aes_gcm::aead::{Aead, Payload};
        let key = DataKey::from_bytes([0x42; 32]);
        let sealed = encrypt_segment_chunked(
            &key,
            Cipher::Aes256Gcm,
            16,
            "r",
            1,
            b"hello, archive!!x",
            &mut StdRng::seed_from_u64(0),
        )
        .unwrap();
        let mut nonce = sealed[11..HEADER_LEN].to_vec();
        nonce.extend_from_slice(&[0, 0, 0, 0, 0]); // counter 0, not last
        let mut aad = sealed[..HEADER_LEN].to_vec();
        aad.extend_from_slice(&[0, 0, 0, 1, b'r', 0, 0, 0, 1]);
        let aead = Aes256Gcm::new(key.as_bytes().into());
        let chunk0 = &sealed[HEADER_LEN..HEADER_LEN + 16 + TAG_LEN];
        let plain = aead
            .decrypt(
                <&Array<u8, U12>>::try_from(&nonce[..]).unwrap(),
                Payload {
                    msg: chunk0,
                    aad: &aad,
                },
            )
            .unwrap();
        assert_eq!(plain, b"hello, archive!!");
    }

    fn check_vector(cipher: Cipher, key: &str, iv: &str, aad: &str, pt: &str, ct_tag: &str) {
        let mut key_bytes = [0u8; 32];
        let k = hex::decode(key).unwrap();
        key_bytes[..k.len()].copy_from_slice(&k);
        let aead = SegmentAead::new(&DataKey::from_bytes(key_bytes), cipher);
        let nonce: [u8; 12] = hex::decode(iv).unwrap().try_into().unwrap();
        let (aad, pt, ct_tag) = (
            hex::decode(aad).unwrap(),
            hex::decode(pt).unwrap(),
            hex::decode(ct_tag).unwrap(),
        );
        let mut out = vec![0u8; pt.len()];
        let tag = aead.seal(&nonce, &aad, &pt, &mut out);
        out.extend_from_slice(&tag);
        assert_eq!(hex::encode(&out), hex::encode(&ct_tag), "{cipher}");
        let mut back = vec![0u8; pt.len()];
        assert!(aead.open(&nonce, &aad, &ct_tag, &mut back));
        assert_eq!(back, pt);
    }

    #[test]
    fn aes_256_gcm_matches_the_gcm_specification() {
        // McGrew & Viega, "The Galois/Counter Mode of Operation", test case 16.
        check_vector(
            Cipher::Aes256Gcm,
            "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            "cafebabefacedbaddecaf888",
            "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662\
             76fc6ece0f4e1768cddf8853bb2d551b",
        );
    }

    #[test]
    fn sm4_gcm_matches_rfc_8998() {
        // RFC 8998 appendix A.1 (the SM4 key is the first 16 bytes of the data key).
        check_vector(
            Cipher::Sm4Gcm,
            "0123456789abcdeffedcba9876543210",
            "00001234567800000000abcd",
            "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            "aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbccccccccccccccccdddddddddddddddd\
             eeeeeeeeeeeeeeeeffffffffffffffffeeeeeeeeeeeeeeeeaaaaaaaaaaaaaaaa",
            "17f399f08c67d5ee19d0dc9969c4bb7d5fd46fd3756489069157b282bb200735\
             d82710ca5c22f0ccfa7cbf93d496ac15a56834cbcf98c397b4024a2691233b8d\
             83de3541e4c2b58177e065a9bf7b62ec",
        );
    }
}
