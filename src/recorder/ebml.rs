//! EBML, the binary format under Matroska: variable-length IDs and sizes, and typed elements.
//!
//! Written by hand because it is small (an element is an ID, a size and a body) and because the
//! recorder needs byte-level control that the Rust Matroska crates do not give together: a
//! Segment of unknown size whose Clusters are cut into independently stored pieces, and a
//! reader for exactly those pieces in [`super::export`]. The reader never trusts a size: every
//! read is bounds-checked and returns [`EbmlError`] instead of panicking, because exported data
//! comes back from storage and must fail clearly when damaged.

/// The 8-byte "unknown size" marker: all value bits set. Used for the Segment, whose end is
/// not known while recording.
pub(crate) const UNKNOWN_SIZE: [u8; 8] = [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];

/// Element IDs used by the recorder (Matroska spec, RFC 9559), with their marker bits kept as
/// they appear on the wire.
#[allow(missing_docs)]
pub(crate) mod id {
    pub const EBML: u32 = 0x1A45_DFA3;
    pub const EBML_VERSION: u32 = 0x4286;
    pub const EBML_READ_VERSION: u32 = 0x42F7;
    pub const EBML_MAX_ID_LENGTH: u32 = 0x42F2;
    pub const EBML_MAX_SIZE_LENGTH: u32 = 0x42F3;
    pub const DOC_TYPE: u32 = 0x4282;
    pub const DOC_TYPE_VERSION: u32 = 0x4287;
    pub const DOC_TYPE_READ_VERSION: u32 = 0x4285;
    pub const VOID: u32 = 0xEC;

    pub const SEGMENT: u32 = 0x1853_8067;
    pub const SEEK_HEAD: u32 = 0x114D_9B74;
    pub const SEEK: u32 = 0x4DBB;
    pub const SEEK_ID: u32 = 0x53AB;
    pub const SEEK_POSITION: u32 = 0x53AC;

    pub const INFO: u32 = 0x1549_A966;
    pub const TIMESTAMP_SCALE: u32 = 0x2A_D7B1;
    pub const DURATION: u32 = 0x4489;
    pub const MUXING_APP: u32 = 0x4D80;
    pub const WRITING_APP: u32 = 0x5741;

    pub const TRACKS: u32 = 0x1654_AE6B;
    pub const TRACK_ENTRY: u32 = 0xAE;
    pub const TRACK_NUMBER: u32 = 0xD7;
    pub const TRACK_UID: u32 = 0x73C5;
    pub const TRACK_TYPE: u32 = 0x83;
    pub const FLAG_LACING: u32 = 0x9C;
    pub const CODEC_ID: u32 = 0x86;
    pub const CODEC_PRIVATE: u32 = 0x63A2;
    pub const CODEC_DELAY: u32 = 0x56AA;
    pub const SEEK_PRE_ROLL: u32 = 0x56BB;
    pub const VIDEO: u32 = 0xE0;
    pub const PIXEL_WIDTH: u32 = 0xB0;
    pub const PIXEL_HEIGHT: u32 = 0xBA;
    pub const AUDIO: u32 = 0xE1;
    pub const SAMPLING_FREQUENCY: u32 = 0xB5;
    pub const CHANNELS: u32 = 0x9F;

    pub const CLUSTER: u32 = 0x1F43_B675;
    pub const TIMESTAMP: u32 = 0xE7;
    pub const SIMPLE_BLOCK: u32 = 0xA3;

    pub const CUES: u32 = 0x1C53_BB6B;
    pub const CUE_POINT: u32 = 0xBB;
    pub const CUE_TIME: u32 = 0xB3;
    pub const CUE_TRACK_POSITIONS: u32 = 0xB7;
    pub const CUE_TRACK: u32 = 0xF7;
    pub const CUE_CLUSTER_POSITION: u32 = 0xF1;
    pub const CUE_RELATIVE_POSITION: u32 = 0xF0;
}

/// Why bytes could not be read as EBML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EbmlError {
    /// The data ends inside an element header or body.
    #[error("truncated EBML element at byte {0}")]
    Truncated(usize),
    /// A variable-length integer has no marker bit in its first byte, or an ID is too long.
    #[error("invalid EBML variable-length integer at byte {0}")]
    BadVint(usize),
}

/// Appends an element ID (IDs carry their length marker, so they are written as is).
pub(crate) fn put_id(out: &mut Vec<u8>, id: u32) {
    let bytes = id.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count().min(3);
    out.extend_from_slice(&bytes[skip..]);
}

/// Appends a size in the shortest vint form. The all-ones pattern of each length is reserved
/// for "unknown", so a value equal to it takes one more byte.
pub(crate) fn put_size(out: &mut Vec<u8>, size: u64) {
    let mut len = 1usize;
    while len < 8 && size >= (1u64 << (7 * len)) - 1 {
        len += 1;
    }
    put_size_len(out, size, len);
}

/// Appends a size in exactly `len` bytes (1..=8): used where a layout must not depend on the
/// value, such as SeekHead positions computed before the data they point at.
pub(crate) fn put_size_len(out: &mut Vec<u8>, size: u64, len: usize) {
    debug_assert!((1..=8).contains(&len) && size < (1u64 << (7 * len)) - 1);
    let marked = size | (1u64 << (7 * len));
    out.extend_from_slice(&marked.to_be_bytes()[8 - len..]);
}

/// Appends a whole element with the given body.
pub(crate) fn put_element(out: &mut Vec<u8>, id: u32, body: &[u8]) {
    put_id(out, id);
    put_size(out, body.len() as u64);
    out.extend_from_slice(body);
}

/// Appends an unsigned integer element in its shortest big-endian form.
pub(crate) fn put_uint(out: &mut Vec<u8>, id: u32, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count().min(7);
    put_element(out, id, &bytes[skip..]);
}

/// Appends an unsigned integer element always 8 bytes long (fixed layout, see [`put_size_len`]).
pub(crate) fn put_uint_fixed(out: &mut Vec<u8>, id: u32, value: u64) {
    put_element(out, id, &value.to_be_bytes());
}

/// Appends a 64-bit float element.
pub(crate) fn put_float(out: &mut Vec<u8>, id: u32, value: f64) {
    put_element(out, id, &value.to_be_bytes());
}

/// Appends a string element.
pub(crate) fn put_str(out: &mut Vec<u8>, id: u32, value: &str) {
    put_element(out, id, value.as_bytes());
}

/// Appends a master element whose children were built by `f`.
pub(crate) fn put_master(out: &mut Vec<u8>, id: u32, f: impl FnOnce(&mut Vec<u8>)) {
    let mut body = Vec::new();
    f(&mut body);
    put_element(out, id, &body);
}

/// One element header as read: where it starts, its ID, and where its body lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// The element's ID, marker bits included.
    pub id: u32,
    /// Offset of the first byte of the ID.
    pub start: usize,
    /// Offset of the first body byte.
    pub body: usize,
    /// Body length, `None` for unknown size.
    pub size: Option<u64>,
}

impl Header {
    /// End of the body when the size is known and fits in `data`.
    pub fn end(&self, data_len: usize) -> Result<usize, EbmlError> {
        match self.size {
            Some(size) => {
                let end = (self.body as u64)
                    .checked_add(size)
                    .ok_or(EbmlError::Truncated(self.start))?;
                if end > data_len as u64 {
                    return Err(EbmlError::Truncated(self.start));
                }
                Ok(end as usize)
            }
            None => Ok(data_len),
        }
    }
}

/// Reads a vint at `pos`: returns (length, value without marker).
pub(crate) fn read_vint(data: &[u8], pos: usize) -> Result<(usize, u64), EbmlError> {
    let first = *data.get(pos).ok_or(EbmlError::Truncated(pos))?;
    if first == 0 {
        return Err(EbmlError::BadVint(pos));
    }
    let len = first.leading_zeros() as usize + 1;
    let bytes = data.get(pos..pos + len).ok_or(EbmlError::Truncated(pos))?;
    let mut value = u64::from(first) & ((1u64 << (8 - len)) - 1);
    for b in &bytes[1..] {
        value = (value << 8) | u64::from(*b);
    }
    Ok((len, value))
}

/// Reads the element header at `pos`.
pub(crate) fn read_header(data: &[u8], pos: usize) -> Result<Header, EbmlError> {
    let first = *data.get(pos).ok_or(EbmlError::Truncated(pos))?;
    if first == 0 || first.leading_zeros() >= 4 {
        return Err(EbmlError::BadVint(pos));
    }
    let id_len = first.leading_zeros() as usize + 1;
    let id_bytes = data
        .get(pos..pos + id_len)
        .ok_or(EbmlError::Truncated(pos))?;
    let id = id_bytes
        .iter()
        .fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
    let (size_len, size) = read_vint(data, pos + id_len)?;
    let unknown = size == (1u64 << (7 * size_len)) - 1;
    Ok(Header {
        id,
        start: pos,
        body: pos + id_len + size_len,
        size: if unknown { None } else { Some(size) },
    })
}

/// Reads an unsigned integer body (0 to 8 bytes).
pub(crate) fn read_uint(body: &[u8]) -> Option<u64> {
    if body.len() > 8 {
        return None;
    }
    Some(body.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// Iterates the children of a master element body with known bounds.
pub(crate) struct Children<'a> {
    data: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Children<'a> {
    /// Children of `data[start..end]`.
    pub fn new(data: &'a [u8], start: usize, end: usize) -> Self {
        Self {
            data,
            pos: start,
            end,
        }
    }
}

impl<'a> Iterator for Children<'a> {
    type Item = Result<(Header, &'a [u8]), EbmlError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.end {
            return None;
        }
        let item = read_header(&self.data[..self.end], self.pos).and_then(|h| {
            let end = h.end(self.end)?;
            if h.size.is_none() {
                // Unknown-size children are only expected at the Segment level.
                return Err(EbmlError::BadVint(h.start));
            }
            Ok((h, &self.data[h.body..end]))
        });
        match &item {
            Ok((h, body)) => self.pos = h.body + body.len(),
            Err(_) => self.pos = self.end,
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_the_shortest_form_and_avoid_the_reserved_pattern() {
        let enc = |v| {
            let mut out = Vec::new();
            put_size(&mut out, v);
            out
        };
        assert_eq!(enc(0), [0x80]);
        assert_eq!(enc(126), [0xFE]);
        // 127 is all ones in one byte (unknown), so it takes two.
        assert_eq!(enc(127), [0x40, 0x7F]);
        assert_eq!(enc(300), [0x41, 0x2C]);
        for v in [
            0u64,
            1,
            126,
            127,
            128,
            16_382,
            16_383,
            1 << 20,
            (1 << 35) + 7,
        ] {
            let bytes = enc(v);
            assert_eq!(read_vint(&bytes, 0).unwrap(), (bytes.len(), v));
        }
    }

    #[test]
    fn ids_round_trip_through_the_header_reader() {
        for id in [
            id::EBML,
            id::SEGMENT,
            id::TIMESTAMP_SCALE,
            id::SIMPLE_BLOCK,
            id::SEEK_ID,
        ] {
            let mut out = Vec::new();
            put_uint(&mut out, id, 1_000_000);
            let h = read_header(&out, 0).unwrap();
            assert_eq!(h.id, id);
            assert_eq!(read_uint(&out[h.body..]), Some(1_000_000));
        }
    }

    #[test]
    fn unknown_size_is_recognised() {
        let mut out = Vec::new();
        put_id(&mut out, id::SEGMENT);
        out.extend_from_slice(&UNKNOWN_SIZE);
        let h = read_header(&out, 0).unwrap();
        assert_eq!((h.id, h.size, h.body), (id::SEGMENT, None, 12));
    }

    #[test]
    fn damaged_input_errors_instead_of_panicking() {
        assert_eq!(read_header(&[], 0), Err(EbmlError::Truncated(0)));
        assert_eq!(read_header(&[0x00, 0x81], 0), Err(EbmlError::BadVint(0)));
        assert_eq!(read_header(&[0x1A, 0x45], 0), Err(EbmlError::Truncated(0)));
        // A size pointing past the end.
        let h = read_header(&[0xA3, 0x85, 1, 2], 0).unwrap();
        assert_eq!(h.end(4), Err(EbmlError::Truncated(0)));
        let mut kids = Children::new(&[0xA3, 0x85, 1, 2], 0, 4);
        assert!(kids.next().unwrap().is_err());
        assert!(kids.next().is_none());
    }
}
