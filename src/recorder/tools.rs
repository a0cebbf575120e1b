//! `huizhen recording list|verify|export`: the archive as an auditor or a court sees it.
//!
//! Everything here reads the independent store only (never the server's database): the
//! manifest says what should be there, its Ed25519 signature says who vouches for it, and every
//! segment is checked against the manifest's size and SHA-256 and then its chunk tags. Export
//! runs the full verification first and writes nothing unless it passes, so a wrong key or a
//! tampered file gives a clear error, never garbage output.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::archive::{ArchiveError, ArchiveStore};
use crate::vault::{
    open_recorded_segment, verify_recording, KeyWrapper, Manifest, ManifestError, Signers,
    VerifyReport,
};

use super::archiver::manifest_key;
use super::{finalize, ExportError};

/// Why a recording tool failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The store could not be read.
    #[error("archive: {0}")]
    Archive(#[from] ArchiveError),
    /// The manifest is not one this build reads.
    #[error("manifest of {id}: {source}")]
    Manifest {
        /// Recording id.
        id: String,
        /// Why.
        source: ManifestError,
    },
    /// Verification found a problem (the report names the first one).
    #[error("recording {id} FAILED verification:\n{report}")]
    Verification {
        /// Recording id.
        id: String,
        /// The report.
        report: String,
    },
    /// The data key could not be unwrapped (wrong key-encryption key).
    #[error("{0}")]
    Key(#[from] crate::vault::KeyError),
    /// A track could not be rebuilt into a file.
    #[error("track {track}: {source}")]
    Export {
        /// Track id.
        track: String,
        /// Why.
        source: ExportError,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One line of `recording list`.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Recording id.
    pub id: String,
    /// Its manifest (unverified: `verify` checks it).
    pub manifest: Manifest,
}

/// Every recording with a manifest in the store.
pub async fn list(store: &dyn ArchiveStore) -> Result<Vec<Listed>, ToolError> {
    let mut out = Vec::new();
    for object in store.list("recordings/").await? {
        let Some(id) = object
            .key
            .strip_prefix("recordings/")
            .and_then(|rest| rest.strip_suffix("/manifest.json"))
        else {
            continue;
        };
        let manifest = fetch_manifest(store, id).await?;
        out.push(Listed {
            id: id.to_owned(),
            manifest,
        });
    }
    Ok(out)
}

async fn fetch_manifest(store: &dyn ArchiveStore, id: &str) -> Result<Manifest, ToolError> {
    let bytes = store.get(&manifest_key(id)).await?;
    Manifest::from_json(&bytes).map_err(|source| ToolError::Manifest {
        id: id.to_owned(),
        source,
    })
}

/// Fetch the manifest and every object it names (a missing object stays missing: verification
/// reports it).
async fn fetch_all(
    store: &dyn ArchiveStore,
    id: &str,
) -> Result<(Manifest, HashMap<String, Vec<u8>>), ToolError> {
    let manifest = fetch_manifest(store, id).await?;
    let mut objects = HashMap::new();
    for segment in manifest.tracks.iter().flat_map(|t| t.segments.iter()) {
        match store.get(&segment.object_key).await {
            Ok(bytes) => {
                objects.insert(segment.object_key.clone(), bytes.to_vec());
            }
            Err(ArchiveError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok((manifest, objects))
}

/// Verify a recording: signature (by a pinned signer, or any key when asked), hashes, and with
/// a key-encryption key every chunk tag.
pub async fn verify(
    store: &dyn ArchiveStore,
    id: &str,
    signers: Signers<'_>,
    kek: Option<&dyn KeyWrapper>,
) -> Result<VerifyReport, ToolError> {
    let (manifest, objects) = fetch_all(store, id).await?;
    Ok(verify_recording(
        &manifest,
        |key| objects.get(key).cloned().ok_or("missing from the archive"),
        signers,
        kek,
    ))
}

/// Verify, then decrypt every track into a playable `.webm`/`.mkv` in `out_dir`. Returns the
/// files written, each with its start on the recording's timeline (ms).
pub async fn export(
    store: Arc<dyn ArchiveStore>,
    id: &str,
    signers: Signers<'_>,
    kek: &dyn KeyWrapper,
    out_dir: &Path,
) -> Result<Vec<(PathBuf, u64)>, ToolError> {
    let (manifest, objects) = fetch_all(store.as_ref(), id).await?;
    let report = verify_recording(
        &manifest,
        |key| objects.get(key).cloned().ok_or("missing from the archive"),
        signers,
        Some(kek),
    );
    if !report.is_ok() {
        return Err(ToolError::Verification {
            id: id.to_owned(),
            report: report.to_string(),
        });
    }
    let key = kek.unwrap(&manifest.wrapped_key)?;
    std::fs::create_dir_all(out_dir).map_err(|source| ToolError::Write {
        path: out_dir.to_owned(),
        source,
    })?;
    let mut files = Vec::new();
    for track in &manifest.tracks {
        let mut plain = Vec::with_capacity(track.segments.len());
        for segment in &track.segments {
            let bytes = &objects[&segment.object_key];
            // Verified above; a failure here would mean the store changed under us.
            let segment_plain =
                open_recorded_segment(&manifest, segment, &key, bytes).map_err(|e| {
                    ToolError::Verification {
                        id: id.to_owned(),
                        report: format!(
                            "segment {} of track {}: {e}",
                            segment.index, track.track_id
                        ),
                    }
                })?;
            plain.push(segment_plain);
        }
        let file = finalize(&plain).map_err(|source| ToolError::Export {
            track: track.track_id.clone(),
            source,
        })?;
        let extension = if track.codec == "h264" { "mkv" } else { "webm" };
        let path = out_dir.join(format!(
            "{}-{}-{}.{extension}",
            sanitize(&track.participant),
            track.track_id,
            track.codec
        ));
        std::fs::write(&path, file).map_err(|source| ToolError::Write {
            path: path.clone(),
            source,
        })?;
        let start = track.segments.first().map_or(0, |s| s.start_ms);
        files.push((path, start));
    }
    Ok(files)
}

/// File-name-safe form of a user id.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Why a composite could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CompositeError {
    /// `ffmpeg` is not installed (the composite is optional; the per-track files stand alone).
    #[error("ffmpeg is not installed: the side-by-side composite needs it (the per-track files are complete without it)")]
    NoFfmpeg,
    /// Nothing to compose.
    #[error("no video tracks to compose")]
    NoVideo,
    /// ffmpeg failed.
    #[error("ffmpeg failed: {0}")]
    Ffmpeg(String),
}

/// With ffmpeg installed: one side-by-side video of every video track (each fitted into a
/// 480x360 box, whatever resolutions it changes through, each placed at its own start on the shared timeline) with all audio tracks mixed, for
/// review. Files are those [`export`] wrote; `start_ms` gives each one's start offset.
pub fn composite(files: &[(PathBuf, u64)], out: &Path) -> Result<(), CompositeError> {
    let is_video = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.contains("-vp8.") || n.contains("-vp9.") || n.contains("-h264."))
    };
    let videos: Vec<&(PathBuf, u64)> = files.iter().filter(|(p, _)| is_video(p)).collect();
    let audios: Vec<&(PathBuf, u64)> = files.iter().filter(|(p, _)| !is_video(p)).collect();
    if videos.is_empty() {
        return Err(CompositeError::NoVideo);
    }
    let mut cmd = std::process::Command::new("ffmpeg");
    cmd.args(["-v", "error", "-y"]);
    // A simulcast recording changes resolution where the recorded layer changes (the top
    // layer of a camera often starts a few seconds after the low one). By default ffmpeg
    // rebuilds the filter graph at such a change, which restarts `PTS-STARTPTS` and cut the
    // composite short; the graph is kept instead and every frame is fitted into one box.
    for (path, _) in &videos {
        cmd.args(["-reinit_filter", "0"]).arg("-i").arg(path);
    }
    for (path, _) in &audios {
        cmd.arg("-i").arg(path);
    }
    let mut filter = String::new();
    for (i, (_, start)) in videos.iter().enumerate() {
        // The files carry their own start times on the shared timeline; align to zero.
        filter.push_str(&format!(
            "[{i}:v]setpts=PTS-STARTPTS+{start}/1000/TB,\
             scale=480:360:force_original_aspect_ratio=decrease,\
             pad=480:360:(ow-iw)/2:(oh-ih)/2,setsar=1[v{i}];"
        ));
    }
    if videos.len() == 1 {
        filter.push_str("[v0]null[v]");
    } else {
        for i in 0..videos.len() {
            filter.push_str(&format!("[v{i}]"));
        }
        filter.push_str(&format!("hstack=inputs={}:shortest=0[v]", videos.len()));
    }
    if !audios.is_empty() {
        filter.push(';');
        for (j, (_, start)) in audios.iter().enumerate() {
            let input = videos.len() + j;
            filter.push_str(&format!(
                "[{input}:a]asetpts=PTS-STARTPTS,adelay={start}:all=1[a{j}];"
            ));
        }
        for j in 0..audios.len() {
            filter.push_str(&format!("[a{j}]"));
        }
        filter.push_str(&format!("amix=inputs={}:duration=longest[a]", audios.len()));
    }
    cmd.arg("-filter_complex")
        .arg(&filter)
        .args(["-map", "[v]"]);
    if !audios.is_empty() {
        cmd.args(["-map", "[a]", "-c:a", "libopus"]);
    }
    cmd.args(["-c:v", "libvpx", "-deadline", "realtime", "-b:v", "1M"])
        .arg(out);
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CompositeError::NoFfmpeg),
        Err(e) => return Err(CompositeError::Ffmpeg(e.to_string())),
    };
    if !output.status.success() {
        return Err(CompositeError::Ffmpeg(
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .take(5)
                .collect::<Vec<_>>()
                .join("; "),
        ));
    }
    Ok(())
}
