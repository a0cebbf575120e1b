//! The recorder task: the async edge around [`Recording`] and [`RecordingArchiver`].
//!
//! The media task hands packets of consenting participants over with
//! [`RecorderHandle::offer`], a `try_send` into a bounded queue: when the recorder is behind,
//! packets are dropped and counted, and the SFU never waits. The clinic service starts and stops
//! recordings and says whose media each SFU participant carries. Completed segments are
//! encrypted and put into the archive spool (durable on local disk before anything is
//! uploaded); the unsigned manifest is journaled next to the spool after each segment, so after
//! a crash the journal is signed at start-up, marked interrupted, and archived: a crash loses at
//! most the segments in progress.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::archiver::{RecordingArchiver, RecordingInfo, StoredObject};
use super::{RecorderConfig, Recording};
use crate::archive::{ArchiveStore, Spool};
use crate::sfu::{ParticipantId, RecordedPacket, TrackId};
use crate::vault::{Cipher, ConsentRecord, KeyWrapper, Manifest, SigningKey};
use crate::webhook::WebhookHandle;

/// Packets queued towards the recorder before further ones are dropped.
const PACKET_QUEUE: usize = 8_192;

/// Why a journaled recording is archived as interrupted.
const INTERRUPTED: &str =
    "the server stopped during the recording; media after the last listed segment was lost";

/// Control messages from the clinic service.
#[derive(Debug)]
pub enum RecorderCommand {
    /// A recording begins.
    Start {
        /// Recording id.
        recording: String,
        /// Consultation.
        consultation: String,
        /// SFU room.
        room: String,
        /// Wall-clock start.
        started_at_ms: u64,
    },
    /// `participant`'s media belongs to `recording` and is `user`'s.
    Assign {
        /// Recording id.
        recording: String,
        /// SFU participant.
        participant: ParticipantId,
        /// User id.
        user: String,
        /// Role.
        role: String,
    },
    /// `participant` no longer records (consent withdrawn, or left).
    Unassign {
        /// SFU participant.
        participant: ParticipantId,
    },
    /// The consent decisions so far (kept in the journaled manifest).
    Consents {
        /// Recording id.
        recording: String,
        /// Every decision.
        consents: Vec<ConsentRecord>,
        /// Everyone in the consultation (user id, role): the manifest lists them all, those
        /// who refused marked as such.
        people: Vec<(String, String)>,
    },
    /// The recording ends: finish every track, sign and archive the manifest.
    Stop {
        /// Recording id.
        recording: String,
        /// Wall-clock end.
        ended_at_ms: u64,
        /// Every consent decision.
        consents: Vec<ConsentRecord>,
        /// Everyone in the consultation (user id, role).
        people: Vec<(String, String)>,
    },
}

/// Cheap handle to the recorder task.
#[derive(Clone)]
pub struct RecorderHandle {
    packets: mpsc::Sender<RecordedPacket>,
    commands: mpsc::Sender<RecorderCommand>,
}

/// Tracks the recorder needs a keyframe for, for the media task to request (throttled there).
pub type KeyframeWants = mpsc::Receiver<(ParticipantId, TrackId)>;

/// How often the recorder repeats its keyframe wishes while a track waits for one (the SFU
/// lets them through at [`crate::sfu::RECORDER_KEYFRAME_RETRY`]). Browsers ignore a request
/// that comes within 300 ms of their last keyframe (libwebrtc's minimum keyframe interval), so
/// the first request of a recording may go unanswered; repeating every 100 ms starts the
/// recording's video at most ~100 ms after the browser will make a keyframe again.
const KEYFRAME_WISH_INTERVAL: Duration = crate::sfu::RECORDER_KEYFRAME_RETRY;

impl RecorderHandle {
    /// Offer a packet without waiting; false if the recorder is behind (the packet is dropped).
    pub fn offer(&self, packet: RecordedPacket) -> bool {
        self.packets.try_send(packet).is_ok()
    }

    /// Send a control message.
    pub async fn command(&self, command: RecorderCommand) {
        if self.commands.send(command).await.is_err() {
            warn!("recorder task gone; recording command lost");
        }
    }
}

/// What the recorder task needs.
pub struct RecorderParts {
    /// Segmenting settings.
    pub config: RecorderConfig,
    /// Segment cipher.
    pub cipher: Cipher,
    /// Segment chunk size.
    pub chunk_bytes: u32,
    /// Wraps each recording's data key.
    pub kek: Arc<dyn KeyWrapper>,
    /// Signs manifests.
    pub signer: SigningKey,
    /// Durable upload queue to the archive.
    pub spool: Spool,
    /// Where unsigned manifests of running recordings are journaled.
    pub journal_dir: PathBuf,
    /// The archive itself, to see when a manifest has arrived.
    pub store: Arc<dyn ArchiveStore>,
    /// Tells the hospital's system when a recording is complete and archived.
    pub webhooks: WebhookHandle,
    /// Stops the archived-notification watchers on shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// Metrics registry (`huizhen_recorder_`).
    pub registry: Registry,
}

struct Active {
    core: Recording,
    archiver: RecordingArchiver,
}

struct Task {
    keyframes: mpsc::Sender<(ParticipantId, TrackId)>,
    next_wish: Instant,
    parts: RecorderParts,
    active: HashMap<String, Active>,
    owner: HashMap<ParticipantId, String>,
    recordings: IntGauge,
    counters: Counters,
}

/// What the recorder counts as it spools.
#[derive(Clone)]
struct Counters {
    objects: IntCounterVec,
    bytes: IntCounter,
}

/// Start the recorder task; it first archives recordings a crash left journaled.
pub async fn spawn(
    parts: RecorderParts,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<(RecorderHandle, KeyframeWants, tokio::task::JoinHandle<()>)> {
    let (keyframes, wants) = mpsc::channel(256);
    std::fs::create_dir_all(&parts.journal_dir)?;
    let recordings = IntGauge::new("active", "Recordings in progress").expect("metric");
    let objects = IntCounterVec::new(
        Opts::new(
            "objects_total",
            "Objects handed to the archive spool, by kind and result",
        ),
        &["kind", "result"],
    )
    .expect("metric");
    let bytes = IntCounter::new(
        "bytes_total",
        "Encrypted recording bytes handed to the spool",
    )
    .expect("metric");
    let _ = parts.registry.register(Box::new(recordings.clone()));
    let _ = parts.registry.register(Box::new(objects.clone()));
    let _ = parts.registry.register(Box::new(bytes.clone()));
    for kind in ["segment", "manifest"] {
        for result in ["spooled", "failed"] {
            objects.with_label_values(&[kind, result]);
        }
    }
    let mut task = Task {
        keyframes,
        next_wish: Instant::now(),
        parts,
        active: HashMap::new(),
        owner: HashMap::new(),
        recordings,
        counters: Counters { objects, bytes },
    };
    task.recover_journals().await;
    let (packets_tx, packets) = mpsc::channel(PACKET_QUEUE);
    let (commands_tx, commands) = mpsc::channel(256);
    let join = tokio::spawn(run(task, packets, commands, shutdown));
    Ok((
        RecorderHandle {
            packets: packets_tx,
            commands: commands_tx,
        },
        wants,
        join,
    ))
}

async fn run(
    mut task: Task,
    mut packets: mpsc::Receiver<RecordedPacket>,
    mut commands: mpsc::Receiver<RecorderCommand>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let wake = task
            .active
            .values()
            .filter_map(|a| a.core.poll_timeout())
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1))
            .min(task.next_wish);
        tokio::select! {
            packet = packets.recv() => match packet {
                Some(p) => task.on_packet(p),
                None => break,
            },
            command = commands.recv() => match command {
                Some(c) => task.on_command(c).await,
                None => break,
            },
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = shutdown.changed() => break,
        }
        task.drain_all().await;
        task.wish_keyframes();
    }
    // Shutting down: what was recorded so far is archived, marked as cut short.
    let ids: Vec<String> = task.active.keys().cloned().collect();
    for id in ids {
        task.stop(
            &id,
            crate::clinic::now_ms().0,
            None,
            Some("the server shut down during the recording".into()),
        )
        .await;
    }
}

impl Task {
    /// Tell the media task which recorded tracks wait for a keyframe (never blocks).
    fn wish_keyframes(&mut self) {
        let now = Instant::now();
        if now < self.next_wish {
            return;
        }
        self.next_wish = now + KEYFRAME_WISH_INTERVAL;
        for active in self.active.values() {
            for wish in active.core.keyframes_wanted() {
                let _ = self.keyframes.try_send(wish);
            }
        }
    }

    fn on_packet(&mut self, packet: RecordedPacket) {
        let Some(recording) = self.owner.get(&packet.participant) else {
            return;
        };
        if let Some(active) = self.active.get_mut(recording) {
            active.core.push(Instant::now(), &packet);
        }
    }

    async fn on_command(&mut self, command: RecorderCommand) {
        match command {
            RecorderCommand::Start {
                recording,
                consultation,
                room,
                started_at_ms,
            } => self.start(recording, &consultation, &room, started_at_ms),
            RecorderCommand::Assign {
                recording,
                participant,
                user,
                role,
            } => {
                if let Some(active) = self.active.get_mut(&recording) {
                    active.archiver.assign(participant, &user, &role);
                    self.owner.insert(participant, recording);
                }
            }
            RecorderCommand::Unassign { participant } => {
                if let Some(recording) = self.owner.remove(&participant) {
                    if let Some(active) = self.active.get_mut(&recording) {
                        active.core.finish_participant(Instant::now(), participant);
                    }
                }
            }
            RecorderCommand::Consents {
                recording,
                consents,
                people,
            } => {
                if let Some(active) = self.active.get_mut(&recording) {
                    active.archiver.set_consents(consents, &people);
                    journal(&self.parts.journal_dir, active.archiver.draft());
                }
            }
            RecorderCommand::Stop {
                recording,
                ended_at_ms,
                consents,
                people,
            } => {
                self.stop(&recording, ended_at_ms, Some((consents, people)), None)
                    .await
            }
        }
    }

    fn start(&mut self, recording: String, consultation: &str, room: &str, started_at_ms: u64) {
        if self.active.contains_key(&recording) {
            return;
        }
        let info = RecordingInfo {
            recording_id: &recording,
            consultation,
            room,
            started_at_ms,
        };
        let mut rng = rand::rng();
        let archiver = RecordingArchiver::new(
            info,
            self.parts.cipher,
            self.parts.chunk_bytes,
            self.parts.kek.as_ref(),
            &mut rng,
        );
        let core = Recording::new(Instant::now(), self.parts.config.clone());
        match (archiver, core) {
            (Ok(archiver), Ok(core)) => {
                info!(recording = %recording, "recording started");
                self.recordings.inc();
                self.active.insert(recording, Active { core, archiver });
            }
            (Err(e), _) => error!(error = %e, "RECORDING NOT STARTED: key wrapping failed"),
            (_, Err(e)) => error!(error = %e, "RECORDING NOT STARTED: recorder configuration"),
        }
    }

    async fn stop(
        &mut self,
        recording: &str,
        ended_at_ms: u64,
        consents: Option<(Vec<ConsentRecord>, Vec<(String, String)>)>,
        interrupted: Option<String>,
    ) {
        let Some(mut active) = self.active.remove(recording) else {
            return;
        };
        self.owner.retain(|_, r| r != recording);
        active.core.finish(Instant::now());
        Self::drain(&mut active, &self.parts, &self.counters).await;
        if let Some((consents, people)) = consents {
            active.archiver.set_consents(consents, &people);
        }
        let manifest = active.archiver.draft().clone();
        let object =
            RecordingArchiver::seal(manifest, ended_at_ms, interrupted, &self.parts.signer);
        let summary = summary(&object);
        self.archive_manifest(object, summary).await;
        let _ = std::fs::remove_file(journal_path(&self.parts.journal_dir, recording));
        self.recordings.dec();
        info!(recording = %recording, "recording archived");
    }

    async fn drain_all(&mut self) {
        for active in self.active.values_mut() {
            Self::drain(active, &self.parts, &self.counters).await;
        }
    }

    /// Seal and spool every completed segment; journal the manifest after new ones.
    async fn drain(active: &mut Active, parts: &RecorderParts, objects: &Counters) {
        let sealed = Self::seal_ready(active);
        let wrote = !sealed.is_empty();
        for object in sealed {
            put(parts, objects, "segment", object).await;
        }
        if wrote {
            journal(&parts.journal_dir, active.archiver.draft());
        }
    }

    /// Encrypt every segment the core completed (synchronous: the RNG stays on this thread).
    fn seal_ready(active: &mut Active) -> Vec<StoredObject> {
        let mut rng = rand::rng();
        let mut sealed = Vec::new();
        while let Some(event) = active.core.poll(Instant::now()) {
            match active.archiver.on_event(event, &mut rng) {
                Ok(stored) => sealed.extend(stored),
                Err(e) => error!(error = %e, "segment not sealed"),
            }
        }
        sealed
    }

    async fn put(&self, kind: &'static str, object: StoredObject) {
        put(&self.parts, &self.counters, kind, object).await;
    }

    /// Spool a signed manifest, then tell the hospital's system once the archive has it (uploads
    /// are in order, so by then every segment listed in it is there too).
    async fn archive_manifest(&self, object: StoredObject, summary: serde_json::Value) {
        let key = object.key.clone();
        self.put("manifest", object).await;
        let store = self.parts.store.clone();
        let webhooks = self.parts.webhooks.clone();
        let mut shutdown = self.parts.shutdown.clone();
        tokio::spawn(async move {
            loop {
                if store.get(&key).await.is_ok() {
                    webhooks.send(
                        crate::webhook::event_type::RECORDING_ARCHIVED,
                        crate::clinic::now_ms().0,
                        summary,
                    );
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        });
    }

    /// Archive recordings a crash left behind, signed and marked interrupted.
    async fn recover_journals(&mut self) {
        let Ok(dir) = std::fs::read_dir(&self.parts.journal_dir) else {
            return;
        };
        for entry in dir.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let manifest = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Manifest>(&bytes).ok());
            let Some(manifest) = manifest else {
                warn!(path = %path.display(), "unreadable recording journal left in place");
                continue;
            };
            let ended = crate::clinic::now_ms().0;
            let id = manifest.recording_id.clone();
            let object = RecordingArchiver::seal(
                manifest,
                ended,
                Some(INTERRUPTED.into()),
                &self.parts.signer,
            );
            let summary = summary(&object);
            self.archive_manifest(object, summary).await;
            let _ = std::fs::remove_file(&path);
            warn!(recording = %id, "interrupted recording recovered and archived");
        }
    }
}

async fn put(parts: &RecorderParts, objects: &Counters, kind: &'static str, object: StoredObject) {
    let len = object.bytes.len() as u64;
    match parts
        .spool
        .enqueue(&object.key, Bytes::from(object.bytes))
        .await
    {
        Ok(()) => {
            objects.objects.with_label_values(&[kind, "spooled"]).inc();
            objects.bytes.inc_by(len);
        }
        Err(e) => {
            // The spool is local disk: failing here means the disk is full or broken.
            objects.objects.with_label_values(&[kind, "failed"]).inc();
            error!(error = %e, kind, "RECORDING OBJECT NOT SPOOLED");
        }
    }
}

/// The webhook body for an archived recording: ids and counts, no keys.
fn summary(object: &StoredObject) -> serde_json::Value {
    let Ok(m) = Manifest::from_json(&object.bytes) else {
        return serde_json::json!({ "manifest": object.key });
    };
    serde_json::json!({
        "recording": m.recording_id,
        "consultation": m.consultation,
        "manifest": object.key,
        "started_at_ms": m.started_at_ms,
        "ended_at_ms": m.ended_at_ms,
        "interrupted": m.interrupted,
        "tracks": m.tracks.len(),
        "segments": m.tracks.iter().map(|t| t.segments.len()).sum::<usize>(),
    })
}

fn journal_path(dir: &Path, recording: &str) -> PathBuf {
    dir.join(format!("{recording}.json"))
}

/// Write the unsigned manifest atomically (temp file + rename).
fn journal(dir: &Path, manifest: &Manifest) {
    let path = journal_path(dir, &manifest.recording_id);
    let tmp = path.with_extension("json.tmp");
    let result = serde_json::to_vec(manifest)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = result {
        error!(error = %e, "recording journal not written");
    }
}
