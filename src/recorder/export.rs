//! Turns a track's stored segments back into one regular, seekable Matroska/WebM file.
//!
//! While recording, the file is a stream: a Segment of unknown size, no Duration and no
//! index, because it is cut into pieces as it goes. That plays, but players cannot show the
//! length or seek well. After the segments are decrypted, in order, this rewrites them: the
//! Segment gets its size, Info gets a Duration, a SeekHead points at Info, Tracks and Cues,
//! and Cues index every Cluster's first keyframe. Frames are copied untouched.
//!
//! It reads only what the recorder writes (known-size Clusters, one header in the first
//! segment) and fails with [`ExportError`] on anything else, naming the segment at fault,
//! rather than producing a file that looks right and is not.

use std::io::{self, Write};

use super::ebml::{self, id, Children, EbmlError};
use super::mkv;

/// Why segments could not be turned into a file.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// No segments given.
    #[error("no segments to export")]
    Empty,
    /// The first segment does not start with a WebM/Matroska header.
    #[error("segment 0 does not start with a Matroska or WebM header")]
    NotMatroska,
    /// A segment's bytes are not well-formed EBML (damaged, truncated, or not plaintext).
    #[error("segment {segment} is malformed: {source}")]
    Malformed {
        /// Index of the segment at fault.
        segment: usize,
        /// What the reader found.
        source: EbmlError,
    },
    /// A segment holds something the recorder never writes there.
    #[error("segment {segment} holds an unexpected element {id:#x} at byte {offset}")]
    Unexpected {
        /// Index of the segment at fault.
        segment: usize,
        /// Element ID.
        id: u32,
        /// Where it starts in that segment.
        offset: usize,
    },
    /// No track header was found.
    #[error("the file has no Tracks element")]
    NoTracks,
    /// No media was found.
    #[error("the file has no media clusters")]
    NoClusters,
    /// Writing the output failed.
    #[error("writing the export: {0}")]
    Io(#[from] io::Error),
}

/// One Cluster as found: where its bytes are and what the index needs.
#[derive(Debug)]
struct ClusterRef<'a> {
    bytes: &'a [u8],
    /// First keyframe: (timestamp ms, track number, offset within the Cluster body).
    cue: Option<(u64, u64, u64)>,
    /// Timestamps of the last two blocks, to estimate the last one's duration.
    last: Option<u64>,
    before_last: Option<u64>,
}

/// The parsed pieces of a streaming file.
#[derive(Debug)]
struct Parsed<'a> {
    ebml_header: &'a [u8],
    tracks: &'a [u8],
    clusters: Vec<ClusterRef<'a>>,
}

/// Rewrites the plaintext segments of one track, in order, into a playable file with known
/// sizes, a Duration and Cues.
pub fn finalize<S: AsRef<[u8]>>(segments: &[S]) -> Result<Vec<u8>, ExportError> {
    let total: usize = segments.iter().map(|s| s.as_ref().len()).sum();
    let mut out = Vec::with_capacity(total + 4096);
    finalize_to(segments, &mut out)?;
    Ok(out)
}

/// Like [`finalize`], writing to `out` so a long recording need not be held twice in memory.
/// Returns the bytes written.
pub fn finalize_to<S: AsRef<[u8]>>(
    segments: &[S],
    out: &mut impl Write,
) -> Result<u64, ExportError> {
    let parsed = parse(segments)?;

    // Timing: the end of the last block, estimated from the spacing of the last two.
    let mut end_ms = 0u64;
    for c in &parsed.clusters {
        if let Some(last) = c.last {
            let step = c
                .before_last
                .map_or(20, |b| last.saturating_sub(b).clamp(1, 1_000));
            end_ms = end_ms.max(last.saturating_add(step));
        }
    }

    // Layout inside the Segment: SeekHead, Info, Tracks, Clusters, Cues. SeekHead positions
    // are fixed-width, so its size does not depend on them.
    let info = mkv::info(Some(end_ms as f64));
    let seek_len = seek_head(0, 0, 0).len() as u64;
    let info_pos = seek_len;
    let tracks_pos = info_pos + info.len() as u64;
    let mut pos = tracks_pos + parsed.tracks.len() as u64;
    let mut cues_body = Vec::new();
    for c in &parsed.clusters {
        if let Some((ts, track, relative)) = c.cue {
            ebml::put_master(&mut cues_body, id::CUE_POINT, |p| {
                ebml::put_uint(p, id::CUE_TIME, ts);
                ebml::put_master(p, id::CUE_TRACK_POSITIONS, |t| {
                    ebml::put_uint(t, id::CUE_TRACK, track);
                    ebml::put_uint(t, id::CUE_CLUSTER_POSITION, pos);
                    ebml::put_uint(t, id::CUE_RELATIVE_POSITION, relative);
                });
            });
        }
        pos += c.bytes.len() as u64;
    }
    let cues_pos = pos;
    let mut cues = Vec::new();
    ebml::put_element(&mut cues, id::CUES, &cues_body);
    let segment_size = cues_pos + cues.len() as u64;

    let mut written = 0u64;
    let mut put = |bytes: &[u8]| -> io::Result<()> {
        written += bytes.len() as u64;
        out.write_all(bytes)
    };
    put(parsed.ebml_header)?;
    let mut head = Vec::new();
    ebml::put_id(&mut head, id::SEGMENT);
    ebml::put_size_len(&mut head, segment_size, 8);
    put(&head)?;
    put(&seek_head(info_pos, tracks_pos, cues_pos))?;
    put(&info)?;
    put(parsed.tracks)?;
    for c in &parsed.clusters {
        put(c.bytes)?;
    }
    put(&cues)?;
    Ok(written)
}

fn seek_head(info: u64, tracks: u64, cues: u64) -> Vec<u8> {
    let mut out = Vec::new();
    ebml::put_master(&mut out, id::SEEK_HEAD, |s| {
        for (target, pos) in [(id::INFO, info), (id::TRACKS, tracks), (id::CUES, cues)] {
            ebml::put_master(s, id::SEEK, |e| {
                let mut target_id = Vec::new();
                ebml::put_id(&mut target_id, target);
                ebml::put_element(e, id::SEEK_ID, &target_id);
                ebml::put_uint_fixed(e, id::SEEK_POSITION, pos);
            });
        }
    });
    out
}

fn parse<S: AsRef<[u8]>>(segments: &[S]) -> Result<Parsed<'_>, ExportError> {
    let first = segments.first().ok_or(ExportError::Empty)?.as_ref();
    let malformed = |segment| move |source| ExportError::Malformed { segment, source };

    let header = ebml::read_header(first, 0).map_err(|_| ExportError::NotMatroska)?;
    if header.id != id::EBML {
        return Err(ExportError::NotMatroska);
    }
    let header_end = header
        .end(first.len())
        .map_err(|_| ExportError::NotMatroska)?;
    let doc_type = Children::new(first, header.body, header_end)
        .filter_map(Result::ok)
        .find(|(h, _)| h.id == id::DOC_TYPE)
        .map(|(_, body)| body);
    if !matches!(doc_type, Some(b"webm") | Some(b"matroska")) {
        return Err(ExportError::NotMatroska);
    }
    let segment = ebml::read_header(first, header_end).map_err(malformed(0))?;
    if segment.id != id::SEGMENT {
        return Err(ExportError::Unexpected {
            segment: 0,
            id: segment.id,
            offset: segment.start,
        });
    }
    let mut parsed = Parsed {
        ebml_header: &first[..header_end],
        tracks: &[],
        clusters: Vec::new(),
    };
    for (index, bytes) in segments.iter().enumerate() {
        let bytes = bytes.as_ref();
        let (start, end) = if index == 0 {
            (
                segment.body,
                segment.end(bytes.len()).map_err(malformed(0))?,
            )
        } else {
            (0, bytes.len())
        };
        let mut pos = start;
        while pos < end {
            let h = ebml::read_header(&bytes[..end], pos).map_err(malformed(index))?;
            let Some(_) = h.size else {
                return Err(ExportError::Unexpected {
                    segment: index,
                    id: h.id,
                    offset: h.start,
                });
            };
            let elem_end = h.end(end).map_err(malformed(index))?;
            let element = &bytes[h.start..elem_end];
            match h.id {
                id::CLUSTER => parsed
                    .clusters
                    .push(cluster(element, h.body - h.start).map_err(malformed(index))?),
                id::TRACKS if parsed.tracks.is_empty() => parsed.tracks = element,
                id::INFO | id::SEEK_HEAD | id::CUES | id::VOID => {}
                other => {
                    return Err(ExportError::Unexpected {
                        segment: index,
                        id: other,
                        offset: h.start,
                    })
                }
            }
            pos = elem_end;
        }
    }
    if parsed.tracks.is_empty() {
        return Err(ExportError::NoTracks);
    }
    if parsed.clusters.is_empty() {
        return Err(ExportError::NoClusters);
    }
    Ok(parsed)
}

/// Reads one Cluster element (header included; `body` is where its children start).
fn cluster(element: &[u8], body: usize) -> Result<ClusterRef<'_>, EbmlError> {
    let mut timestamp = 0u64;
    let mut c = ClusterRef {
        bytes: element,
        cue: None,
        last: None,
        before_last: None,
    };
    for child in Children::new(element, body, element.len()) {
        let (h, data) = child?;
        match h.id {
            id::TIMESTAMP => {
                timestamp = ebml::read_uint(data).ok_or(EbmlError::BadVint(h.start))?
            }
            id::SIMPLE_BLOCK => {
                let (n, track) = ebml::read_vint(data, 0)?;
                let rest = data.get(n..n + 3).ok_or(EbmlError::Truncated(h.start))?;
                let offset = i16::from_be_bytes([rest[0], rest[1]]);
                let ts = timestamp.saturating_add_signed(i64::from(offset));
                if rest[2] & 0x80 != 0 && c.cue.is_none() {
                    c.cue = Some((ts, track, (h.start - body) as u64));
                }
                c.before_last = c.last;
                c.last = Some(ts);
            }
            _ => {}
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::ebml::read_header;
    use crate::recorder::mkv::{file_header, Cluster, TrackHeader};
    use crate::recorder::RecordCodec;

    fn stream() -> Vec<Vec<u8>> {
        let mut first = file_header(&TrackHeader {
            codec: RecordCodec::Opus,
            uid: 1,
            size: None,
            channels: 1,
            parameter_sets: None,
        });
        let mut c = Cluster::new(1_000);
        c.push(1_000, true, &[0x78, 1]);
        c.push(1_020, true, &[0x78, 2]);
        c.finish(&mut first);
        let mut second = Vec::new();
        let mut c = Cluster::new(1_040);
        c.push(1_040, true, &[0x78, 3]);
        c.push(1_060, true, &[0x78, 4]);
        c.finish(&mut second);
        vec![first, second]
    }

    #[test]
    fn the_export_has_sizes_duration_and_cues() {
        let file = finalize(&stream()).unwrap();
        let ebml = read_header(&file, 0).unwrap();
        let seg = read_header(&file, ebml.end(file.len()).unwrap()).unwrap();
        assert_eq!(seg.id, id::SEGMENT);
        assert_eq!(
            seg.end(file.len()).unwrap(),
            file.len(),
            "the Segment size covers the file"
        );
        let kids: Vec<_> = Children::new(&file, seg.body, file.len())
            .map(Result::unwrap)
            .collect();
        let ids: Vec<u32> = kids.iter().map(|(h, _)| h.id).collect();
        assert_eq!(
            ids,
            [
                id::SEEK_HEAD,
                id::INFO,
                id::TRACKS,
                id::CLUSTER,
                id::CLUSTER,
                id::CUES
            ]
        );
        let info = &kids[1];
        let duration = Children::new(&file, info.0.body, info.0.body + info.1.len())
            .map(Result::unwrap)
            .find(|(h, _)| h.id == id::DURATION)
            .unwrap();
        assert_eq!(f64::from_be_bytes(duration.1.try_into().unwrap()), 1_080.0);
        // Every SeekHead and Cue position lands on the element it names.
        let cues = &kids[5];
        let points: Vec<_> = Children::new(&file, cues.0.body, cues.0.body + cues.1.len())
            .map(Result::unwrap)
            .collect();
        assert_eq!(points.len(), 2);
        let cluster_pos: Vec<u64> = kids
            .iter()
            .filter(|(h, _)| h.id == id::CLUSTER)
            .map(|(h, _)| (h.start - seg.body) as u64)
            .collect();
        for (point, expected) in points.iter().zip(&cluster_pos) {
            let needle = {
                let mut v = Vec::new();
                ebml::put_uint(&mut v, id::CUE_CLUSTER_POSITION, *expected);
                v
            };
            assert!(point
                .1
                .windows(needle.len())
                .any(|w| w == needle.as_slice()));
        }
    }

    #[test]
    fn flipped_and_cut_bytes_never_panic() {
        let good = stream();
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..5_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut segs = good.clone();
            let which = (state % 2) as usize;
            let len = segs[which].len();
            let at = (state >> 8) as usize % len;
            if state >> 40 & 1 == 0 {
                segs[which][at] ^= 1 << (state >> 32 & 7);
            } else {
                segs[which].truncate(at);
            }
            let _ = finalize(&segs);
        }
    }

    #[test]
    fn damage_is_reported_with_the_segment_at_fault() {
        let mut segs = stream();
        assert!(matches!(
            finalize(&segs[1..]),
            Err(ExportError::NotMatroska)
        ));
        assert!(matches!(finalize::<Vec<u8>>(&[]), Err(ExportError::Empty)));
        let len = segs[1].len();
        segs[1].truncate(len - 1);
        match finalize(&segs) {
            Err(ExportError::Malformed { segment: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
        segs[1] = vec![0xFF; 10];
        assert!(matches!(
            finalize(&segs),
            Err(ExportError::Malformed { segment: 1, .. })
                | Err(ExportError::Unexpected { segment: 1, .. })
        ));
    }
}
