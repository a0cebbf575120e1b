//! The spool: encrypted objects wait on local disk until the archive store has them.
//!
//! The recorder must never wait on the network, and a segment it has closed must never be
//! lost because the store was down, slow or unreachable. So [`Spool::enqueue`] only writes
//! the (already encrypted) object into the spool directory — temp file, `fsync`, `rename`,
//! directory `fsync` — and returns; one background task uploads spooled objects **in
//! enqueue order**, deleting each file only after the store confirmed the put.
//!
//! ```text
//! enqueue ──▶ <dir>/00000000000000000042.obj ──upload (FIFO)──▶ store.put ──ok──▶ unlink
//!                          ▲                                        │
//!                          └───── failed: retry the same object ◀───┘  after capped backoff
//! ```
//!
//! - The sequence number is the file name, so order survives restarts: on [`Spool::open`]
//!   whatever is left (after a crash, a `kill -9`, a store outage spanning a restart) is
//!   re-discovered and uploaded first. Leftover temporaries were never acknowledged to a
//!   caller and are removed.
//! - Delivery is at-least-once: a crash between the store's answer and the unlink re-uploads
//!   the object, which the stores accept as a no-op (same key, same bytes).
//! - Errors about the store (down, slow, denied, 5xx) are retried forever with capped
//!   exponential backoff: nothing is dropped while an operator fixes the store. Errors about
//!   the object itself (a [`ArchiveError::Conflict`], an invalid key) can never succeed, so
//!   such files move to `rejected/`; unreadable spool files move to `corrupt/`. Both stay on
//!   disk for an operator, and neither blocks the queue.
//! - The backlog is visible: `huizhen_archive_spool_depth` / `_spool_bytes`, upload results
//!   and failures by kind, and [`Spool::backlog`].
//!
//! The ordering and retry decisions are a sans-IO core ([`SpoolQueue`], with time passed
//! in); the file format is a pair of pure functions ([`encode_header`], [`decode`]); the
//! async task only reads the clock, moves bytes and sleeps.

mod format;
mod queue;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{watch, Notify};
use tracing::{debug, error, info, warn};

use super::local::{blocking, sync_dir};
use super::{validate_key, ArchiveError, ArchiveStore, PutOptions};

pub use format::{decode, encode_header, obj_name, parse_obj_name, SpoolHeader, MAGIC};
pub use queue::{Next, RetryPolicy, SpoolQueue};

/// Sub-directory for objects the store refused permanently.
pub const REJECTED_DIR: &str = "rejected";
/// Sub-directory for spool files that could not be read back.
pub const CORRUPT_DIR: &str = "corrupt";
/// Held with an exclusive lock while a spool is open, so two servers never share a spool.
const LOCK_FILE: &str = "LOCK";

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

/// The spool metrics. Register them in the `huizhen_archive`-prefixed registry, so the full
/// names are `huizhen_archive_spool_depth`, `_spool_bytes`, `_uploads_total{result}`,
/// `_upload_seconds` and `_upload_failures_total{kind}`.
///
/// Labels are fixed sets (results; [`ArchiveError::kind`]): never keys or recording ids.
#[derive(Clone)]
pub struct SpoolMetrics {
    depth: IntGauge,
    bytes: IntGauge,
    uploaded: IntCounter,
    failed: IntCounter,
    rejected: IntCounter,
    corrupt: IntCounter,
    upload_seconds: Histogram,
    failures: IntCounterVec,
}

impl SpoolMetrics {
    /// Create the metrics and register them in `registry`.
    pub fn new(registry: &Registry) -> Result<SpoolMetrics, prometheus::Error> {
        let depth = IntGauge::new(
            "spool_depth",
            "Archive objects spooled on local disk, not yet in the store",
        )?;
        let bytes = IntGauge::new(
            "spool_bytes",
            "Bytes of spool files waiting for the archive store",
        )?;
        let uploads = IntCounterVec::new(
            Opts::new(
                "uploads_total",
                "Spool upload attempts by result: ok, failed (retried later), \
                 rejected (store refused the object for good) and corrupt (spool file unreadable)",
            ),
            &["result"],
        )?;
        let upload_seconds = Histogram::with_opts(
            HistogramOpts::new("upload_seconds", "Duration of successful archive uploads").buckets(
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0,
                ],
            ),
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "upload_failures_total",
                "Failed archive upload attempts by error kind (each is retried)",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(depth.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(uploads.clone()))?;
        registry.register(Box::new(upload_seconds.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        Ok(SpoolMetrics {
            depth,
            bytes,
            uploaded: uploads.with_label_values(&["ok"]),
            failed: uploads.with_label_values(&["failed"]),
            rejected: uploads.with_label_values(&["rejected"]),
            corrupt: uploads.with_label_values(&["corrupt"]),
            upload_seconds,
            failures,
        })
    }
}

// ---------------------------------------------------------------------------------------
// The async spool
// ---------------------------------------------------------------------------------------

/// A snapshot of what is waiting, from [`Spool::backlog`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    /// Objects on the spool disk not yet in the store (including one in flight).
    pub objects: u64,
    /// Their size on disk.
    pub bytes: u64,
    /// Consecutive failed uploads; 0 while the store is healthy.
    pub consecutive_failures: u32,
    /// The last upload error, until an upload succeeds.
    pub last_error: Option<String>,
    /// Files set aside in `rejected/` and `corrupt/` (found at open or since).
    pub set_aside: u64,
}

/// Handle on an open spool; cheap to clone. The upload task stops when the shutdown signal
/// fires or the last handle is dropped (dropping without waiting is like a crash: what is
/// left is uploaded by the next [`Spool::open`] on the same directory).
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    task: tokio::task::AbortHandle,
    /// Holds the directory's exclusive lock for as long as the spool is open.
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    dir: PathBuf,
    store: Arc<dyn ArchiveStore>,
    state: Mutex<State>,
    /// The next sequence number; held across a whole enqueue so sequence order is the order
    /// in which objects became durable.
    writer: tokio::sync::Mutex<u64>,
    wake: Notify,
    depth: watch::Sender<u64>,
    metrics: SpoolMetrics,
}

struct State {
    queue: SpoolQueue,
    last_error: Option<String>,
    set_aside: u64,
}

/// What one upload attempt came to.
enum Outcome {
    Uploaded {
        elapsed: Duration,
    },
    Failed(ArchiveError),
    /// The store refused the object for good; the file moved to `rejected/`.
    Rejected {
        key: String,
        error: ArchiveError,
    },
    /// The file could not be read back; it moved to `corrupt/`.
    Corrupt(String),
    /// The file disappeared (removed by hand).
    Vanished,
}

impl Spool {
    /// Open (creating if needed) the spool in `dir`, register its metrics in `registry` (the
    /// `huizhen_archive`-prefixed one), and start uploading to `store` on the current tokio
    /// runtime, retrying with [`RetryPolicy::default`]. The upload task stops when `shutdown`
    /// becomes `true` (or its sender is dropped).
    pub async fn open(
        dir: impl Into<PathBuf>,
        store: Arc<dyn ArchiveStore>,
        registry: &Registry,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Spool, ArchiveError> {
        Spool::open_with_policy(dir, store, registry, shutdown, RetryPolicy::default()).await
    }

    /// [`Spool::open`] with a retry schedule (from `ArchiveConfig::retry_policy`, or short
    /// ones in tests).
    pub async fn open_with_policy(
        dir: impl Into<PathBuf>,
        store: Arc<dyn ArchiveStore>,
        registry: &Registry,
        shutdown: watch::Receiver<bool>,
        policy: RetryPolicy,
    ) -> Result<Spool, ArchiveError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ArchiveError::NoRuntime)?;
        let dir = dir.into();
        let scan_dir = dir.clone();
        let found = blocking(move || scan(&scan_dir)).await?;
        let metrics = SpoolMetrics::new(registry)?;

        let mut queue = SpoolQueue::new(policy);
        for &(seq, bytes) in &found.objects {
            queue.push(seq, bytes);
        }
        metrics.depth.set(queue.depth() as i64);
        metrics.bytes.set(queue.bytes() as i64);
        if queue.depth() > 0 || found.set_aside > 0 {
            info!(
                dir = %dir.display(),
                objects = queue.depth(),
                bytes = queue.bytes(),
                set_aside = found.set_aside,
                store = %store.describe(),
                "archive spool has a backlog from a previous run; uploading it first"
            );
        }
        let (depth, _) = watch::channel(queue.depth());
        let shared = Arc::new(Shared {
            dir,
            store,
            state: Mutex::new(State {
                queue,
                last_error: None,
                set_aside: found.set_aside,
            }),
            writer: tokio::sync::Mutex::new(found.next_seq),
            wake: Notify::new(),
            depth,
            metrics,
        });
        let task = runtime.spawn(run(shared.clone(), shutdown)).abort_handle();
        Ok(Spool {
            inner: Arc::new(Inner {
                shared,
                task,
                _lock: found.lock,
            }),
        })
    }

    /// Spool `bytes` for upload under `key`; see [`Spool::enqueue_with`].
    pub async fn enqueue(&self, key: &str, bytes: Bytes) -> Result<(), ArchiveError> {
        self.enqueue_with(key, bytes, PutOptions::default()).await
    }

    /// Write `bytes` durably into the spool and return; the upload happens in the
    /// background, after every object enqueued before it.
    ///
    /// Never waits for the network, only for the local disk. Errors are the caller's (an
    /// invalid key) or the local disk's; once this returns `Ok` the object survives a crash
    /// and will reach the store. Safe to cancel: the write completes regardless.
    pub async fn enqueue_with(
        &self,
        key: &str,
        bytes: Bytes,
        options: PutOptions,
    ) -> Result<(), ArchiveError> {
        validate_key(key)?;
        let shared = self.inner.shared.clone();
        let key = key.to_owned();
        // A task of its own, so a caller that gives up cannot leave a written file the
        // queue does not know about.
        match tokio::spawn(async move { shared.enqueue(&key, bytes, options).await }).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(ArchiveError::NoRuntime),
        }
    }

    /// What is waiting for the store now.
    pub fn backlog(&self) -> Backlog {
        let state = self.inner.shared.lock();
        Backlog {
            objects: state.queue.depth(),
            bytes: state.queue.bytes(),
            consecutive_failures: state.queue.failures(),
            last_error: state.last_error.clone(),
            set_aside: state.set_aside,
        }
    }

    /// Wait until every spooled object is in the store, at most `timeout`. On time-out,
    /// returns what is still waiting.
    pub async fn wait_empty(&self, timeout: Duration) -> Result<(), Backlog> {
        let mut depth = self.inner.shared.depth.subscribe();
        let empty =
            tokio::time::timeout(timeout, async { depth.wait_for(|&d| d == 0).await.is_ok() })
                .await;
        match empty {
            Ok(true) => Ok(()),
            _ => Err(self.backlog()),
        }
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish_depth(&self, state: &State) {
        self.metrics.depth.set(state.queue.depth() as i64);
        self.metrics.bytes.set(state.queue.bytes() as i64);
        self.depth.send_replace(state.queue.depth());
    }

    async fn enqueue(
        &self,
        key: &str,
        bytes: Bytes,
        options: PutOptions,
    ) -> Result<(), ArchiveError> {
        let mut next_seq = self.writer.lock().await;
        let seq = *next_seq;
        // Taken before writing: even a failed write never reuses a name.
        *next_seq += 1;
        let header = encode_header(&SpoolHeader::new(key, &bytes, unix_ms(), options));
        let dir = self.dir.clone();
        let size = blocking(move || write_durably(&dir, seq, &header, &bytes)).await?;
        {
            let mut state = self.lock();
            state.queue.push(seq, size);
            self.publish_depth(&state);
        }
        drop(next_seq);
        debug!(key, seq, size, "spooled archive object");
        self.wake.notify_one();
        Ok(())
    }

    /// One upload attempt of object `seq`, including the file moves its outcome calls for.
    async fn upload(&self, seq: u64) -> Outcome {
        let path = self.dir.join(obj_name(seq));
        let read_path = path.clone();
        let data = match blocking(move || {
            fs::read(&read_path).map_err(|e| ArchiveError::io(&read_path, e))
        })
        .await
        {
            Ok(data) => Bytes::from(data),
            Err(ArchiveError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Outcome::Vanished
            }
            Err(e) => return Outcome::Failed(e),
        };
        let (header, offset) = match decode(&data) {
            Ok(decoded) => decoded,
            Err(reason) => {
                self.set_aside(seq, CORRUPT_DIR).await;
                return Outcome::Corrupt(reason);
            }
        };
        let payload = data.slice(offset..);
        let options = PutOptions {
            retention_until: header.retention_until,
        };
        let started = Instant::now();
        match self.store.put(&header.key, payload, options).await {
            Ok(()) => {
                let elapsed = started.elapsed();
                let dir = self.dir.clone();
                let removed = blocking(move || {
                    fs::remove_file(&path).map_err(|e| ArchiveError::io(&path, e))?;
                    sync_dir(&dir)
                })
                .await;
                if let Err(e) = removed {
                    // The object is archived; the leftover file is re-uploaded (a no-op) after
                    // the next restart.
                    warn!(key = %header.key, error = %e, "archived, but the spool file could not be removed");
                }
                debug!(key = %header.key, seq, ?elapsed, "archived spooled object");
                Outcome::Uploaded { elapsed }
            }
            Err(error) if error.is_permanent() => {
                self.set_aside(seq, REJECTED_DIR).await;
                Outcome::Rejected {
                    key: header.key,
                    error,
                }
            }
            Err(error) => Outcome::Failed(error),
        }
    }

    /// Move spool file `seq` into `sub` (best effort: on failure it stays, and is tried
    /// again after a restart).
    async fn set_aside(&self, seq: u64, sub: &'static str) {
        let dir = self.dir.clone();
        let result = blocking(move || {
            let from = dir.join(obj_name(seq));
            let to = dir.join(sub).join(obj_name(seq));
            fs::rename(&from, &to).map_err(|e| ArchiveError::io(&from, e))?;
            sync_dir(&dir.join(sub))?;
            sync_dir(&dir)
        })
        .await;
        if let Err(e) = result {
            error!(seq, error = %e, "cannot set spool file aside");
        }
    }

    fn finish(&self, now: Instant, seq: u64, outcome: Outcome) {
        let mut state = self.lock();
        match outcome {
            Outcome::Uploaded { elapsed } => {
                if state.queue.failures() > 0 {
                    info!(store = %self.store.describe(), "archive store reachable again; spool draining");
                }
                state.queue.on_uploaded(seq);
                state.last_error = None;
                self.metrics.uploaded.inc();
                self.metrics.upload_seconds.observe(elapsed.as_secs_f64());
            }
            Outcome::Failed(error) => {
                let wait = state.queue.on_failed(now, seq);
                self.metrics.failed.inc();
                self.metrics
                    .failures
                    .with_label_values(&[error.kind()])
                    .inc();
                warn!(
                    error = %error,
                    backlog = state.queue.depth(),
                    failures = state.queue.failures(),
                    retry_in = ?wait,
                    "archive upload failed; segments stay spooled"
                );
                state.last_error = Some(error.to_string());
            }
            Outcome::Rejected { key, error } => {
                state.queue.on_set_aside(seq);
                state.set_aside += 1;
                self.metrics.rejected.inc();
                error!(
                    key,
                    error = %error,
                    dir = %self.dir.join(REJECTED_DIR).display(),
                    "archive store refused the object for good; spool file set aside"
                );
            }
            Outcome::Corrupt(reason) => {
                state.queue.on_set_aside(seq);
                state.set_aside += 1;
                self.metrics.corrupt.inc();
                error!(
                    seq,
                    reason,
                    dir = %self.dir.join(CORRUPT_DIR).display(),
                    "spool file unreadable; set aside"
                );
            }
            Outcome::Vanished => {
                state.queue.on_set_aside(seq);
                warn!(seq, "spool file disappeared before upload");
            }
        }
        self.publish_depth(&state);
    }
}

/// The upload loop: take the next object from the queue, upload it, report; sleep while the
/// queue is empty or backing off.
async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let next = shared.lock().queue.poll(Instant::now());
        match next {
            Next::Upload(seq) => {
                let outcome = tokio::select! {
                    biased;
                    () = stopped(&mut shutdown) => break,
                    outcome = shared.upload(seq) => outcome,
                };
                shared.finish(Instant::now(), seq, outcome);
            }
            Next::WaitUntil(at) => {
                // New objects do not cut a backoff short: the store is still presumed down.
                tokio::select! {
                    () = stopped(&mut shutdown) => break,
                    () = tokio::time::sleep_until(at.into()) => {}
                }
            }
            Next::Idle => {
                tokio::select! {
                    () = stopped(&mut shutdown) => break,
                    () = shared.wake.notified() => {}
                }
            }
        }
    }
    debug!(
        backlog = shared.lock().queue.depth(),
        "archive spool uploader stopped"
    );
}

/// Resolves when shutdown is signalled or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&stop| stop).await;
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Write spool file `seq`: temp file, fsync, rename, fsync the directory. Returns its size.
fn write_durably(dir: &Path, seq: u64, header: &[u8], bytes: &[u8]) -> Result<u64, ArchiveError> {
    let temp = dir.join(format!(".{seq:020}.tmp"));
    let path = dir.join(obj_name(seq));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)?;
        file.write_all(header)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, &path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&temp);
        return Err(ArchiveError::io(&path, e));
    }
    sync_dir(dir)?;
    Ok((header.len() + bytes.len()) as u64)
}

/// What [`Spool::open`] finds in the directory.
struct Scan {
    lock: File,
    objects: Vec<(u64, u64)>,
    next_seq: u64,
    set_aside: u64,
}

/// Create the directory layout, take the lock, drop unacknowledged temporaries and list the
/// spooled objects.
fn scan(dir: &Path) -> Result<Scan, ArchiveError> {
    for sub in [
        dir.to_path_buf(),
        dir.join(REJECTED_DIR),
        dir.join(CORRUPT_DIR),
    ] {
        fs::create_dir_all(&sub).map_err(|e| ArchiveError::io(&sub, e))?;
    }
    let lock_path = dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| ArchiveError::io(&lock_path, e))?;
    // `File::try_lock` is Rust 1.89, which rusty-s3 (the S3 signer) needs anyway.
    #[allow(clippy::incompatible_msrv)]
    let locked = lock.try_lock();
    match locked {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            return Err(ArchiveError::SpoolLocked(dir.to_path_buf()))
        }
        Err(fs::TryLockError::Error(e)) => return Err(ArchiveError::io(&lock_path, e)),
    }

    let mut objects = Vec::new();
    let mut max_seq = 0u64;
    let entries = fs::read_dir(dir).map_err(|e| ArchiveError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ArchiveError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') && name.ends_with(".tmp") {
            // Never renamed into place, so never acknowledged to a caller.
            let _ = fs::remove_file(entry.path());
            continue;
        }
        if let Some(seq) = parse_obj_name(name) {
            let size = entry
                .metadata()
                .map_err(|e| ArchiveError::io(entry.path(), e))?
                .len();
            objects.push((seq, size));
            max_seq = max_seq.max(seq);
        }
    }
    let mut set_aside = 0;
    for sub in [REJECTED_DIR, CORRUPT_DIR] {
        let path = dir.join(sub);
        for entry in fs::read_dir(&path).map_err(|e| ArchiveError::io(&path, e))? {
            let entry = entry.map_err(|e| ArchiveError::io(&path, e))?;
            if let Some(seq) = entry.file_name().to_str().and_then(parse_obj_name) {
                set_aside += 1;
                // Keep numbering above set-aside files so a later one never overwrites them.
                max_seq = max_seq.max(seq);
            }
        }
    }
    objects.sort_unstable();
    Ok(Scan {
        lock,
        objects,
        next_seq: max_seq + 1,
        set_aside,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::MemoryStore;
    use std::sync::atomic::{AtomicU64, Ordering};

    static DIRS: AtomicU64 = AtomicU64::new(0);

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "huizhen-spool-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(20),
        }
    }

    fn key(i: usize) -> String {
        format!("recordings/r1/audio/{i:06}.seg")
    }

    async fn open(
        dir: &Path,
        store: &Arc<MemoryStore>,
        registry: &Registry,
    ) -> (Spool, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        let spool = Spool::open_with_policy(dir, store.clone(), registry, rx, fast())
            .await
            .unwrap();
        (spool, tx)
    }

    fn gauge(registry: &Registry, name: &str) -> f64 {
        registry
            .gather()
            .iter()
            .find(|f| f.name() == name)
            .map(|f| {
                let m = &f.get_metric()[0];
                // Whichever of the two this family is not reads 0.
                m.get_gauge().get_value() + m.get_counter().get_value()
            })
            .unwrap_or(-1.0)
    }

    #[tokio::test]
    async fn uploads_in_order_after_an_outage() {
        let dir = temp_dir();
        let store = Arc::new(MemoryStore::new());
        let registry = Registry::new_custom(Some("huizhen_archive".into()), None).unwrap();
        store.set_available(false);
        let (spool, _tx) = open(&dir, &store, &registry).await;
        for i in 0..5 {
            spool
                .enqueue(&key(i), Bytes::from(vec![i as u8; 100]))
                .await
                .unwrap();
        }
        // Wait until at least two attempts failed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while spool.backlog().consecutive_failures < 2 {
            assert!(
                Instant::now() < deadline,
                "no failed attempts: {:?}",
                spool.backlog()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let backlog = spool.backlog();
        assert_eq!(backlog.objects, 5);
        assert!(backlog.bytes > 500);
        assert!(backlog
            .last_error
            .as_deref()
            .unwrap()
            .contains("unreachable"));
        assert_eq!(gauge(&registry, "huizhen_archive_spool_depth"), 5.0);
        assert!(spool.wait_empty(Duration::from_millis(30)).await.is_err());

        store.set_available(true);
        spool.wait_empty(Duration::from_secs(5)).await.unwrap();
        assert_eq!(store.arrivals(), (0..5).map(key).collect::<Vec<_>>());
        assert_eq!(gauge(&registry, "huizhen_archive_spool_depth"), 0.0);
        assert_eq!(gauge(&registry, "huizhen_archive_spool_bytes"), 0.0);
        let b = spool.backlog();
        assert_eq!(
            (b.objects, b.consecutive_failures, b.last_error),
            (0, 0, None)
        );
        // Only the lock file and the set-aside folders are left.
        let mut left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["LOCK", "corrupt", "rejected"]);
        drop(spool);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_reopened_spool_uploads_what_was_left_in_order() {
        let dir = temp_dir();
        let store = Arc::new(MemoryStore::new());
        store.set_available(false);
        {
            let (spool, _tx) = open(&dir, &store, &Registry::new()).await;
            for i in 0..3 {
                spool
                    .enqueue_with(
                        &key(i),
                        Bytes::from(vec![1; 10]),
                        PutOptions {
                            retention_until: Some(99),
                        },
                    )
                    .await
                    .unwrap();
            }
            // A second spool on the same directory is refused while the first is open.
            let (_tx2, rx2) = watch::channel(false);
            assert!(matches!(
                Spool::open(&dir, store.clone(), &Registry::new(), rx2).await,
                Err(ArchiveError::SpoolLocked(_))
            ));
            // Dropped without waiting: like a crash.
        }
        // An unacknowledged temporary from the crash is cleaned up.
        fs::write(dir.join(".00000000000000000009.tmp"), b"half").unwrap();
        store.set_available(true);
        let (spool, _tx) = open(&dir, &store, &Registry::new()).await;
        assert_eq!(spool.backlog().objects, 3);
        spool
            .enqueue(&key(3), Bytes::from_static(b"after restart"))
            .await
            .unwrap();
        spool.wait_empty(Duration::from_secs(5)).await.unwrap();
        assert_eq!(store.arrivals(), (0..4).map(key).collect::<Vec<_>>());
        assert_eq!(
            store.options_of(&key(0)),
            Some(PutOptions {
                retention_until: Some(99)
            })
        );
        assert!(!dir.join(".00000000000000000009.tmp").exists());
        drop(spool);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn conflicts_and_corrupt_files_are_set_aside_without_blocking() {
        let dir = temp_dir();
        let store = Arc::new(MemoryStore::new());
        store
            .put(
                &key(0),
                Bytes::from_static(b"original"),
                PutOptions::default(),
            )
            .await
            .unwrap();
        store.set_available(false);
        {
            let (spool, _tx) = open(&dir, &store, &Registry::new()).await;
            spool
                .enqueue(&key(0), Bytes::from_static(b"different"))
                .await
                .unwrap();
            spool
                .enqueue(&key(1), Bytes::from_static(b"fine"))
                .await
                .unwrap();
            spool
                .enqueue(&key(2), Bytes::from_static(b"damaged on disk"))
                .await
                .unwrap();
        }
        // Damage the third file as a failing disk would.
        let third = dir.join(obj_name(3));
        let mut data = fs::read(&third).unwrap();
        *data.last_mut().unwrap() ^= 0xff;
        fs::write(&third, data).unwrap();

        store.set_available(true);
        let registry = Registry::new();
        let (spool, _tx) = open(&dir, &store, &registry).await;
        spool.wait_empty(Duration::from_secs(5)).await.unwrap();
        assert_eq!(store.arrivals(), [key(0), key(1)]);
        assert_eq!(
            &store.get(&key(0)).await.unwrap()[..],
            b"original",
            "never overwritten"
        );
        assert!(dir.join(REJECTED_DIR).join(obj_name(1)).exists());
        assert!(dir.join(CORRUPT_DIR).join(obj_name(3)).exists());
        assert_eq!(spool.backlog().set_aside, 2);
        drop(spool);

        // After a restart, numbering continues above the set-aside files.
        store.set_available(false);
        let (spool, _tx) = open(&dir, &store, &Registry::new()).await;
        assert_eq!(spool.backlog().set_aside, 2);
        spool
            .enqueue(&key(5), Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert!(dir.join(obj_name(4)).exists());
        drop(spool);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn invalid_keys_are_refused_before_spooling() {
        let dir = temp_dir();
        let store = Arc::new(MemoryStore::new());
        let (spool, _tx) = open(&dir, &store, &Registry::new()).await;
        assert!(matches!(
            spool.enqueue("../etc/passwd", Bytes::new()).await,
            Err(ArchiveError::InvalidKey { .. })
        ));
        assert_eq!(spool.backlog().objects, 0);
        drop(spool);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn shutdown_stops_uploading_but_enqueue_still_spools() {
        let dir = temp_dir();
        let store = Arc::new(MemoryStore::new());
        let (spool, tx) = open(&dir, &store, &Registry::new()).await;
        tx.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        spool
            .enqueue(&key(0), Bytes::from_static(b"late"))
            .await
            .unwrap();
        assert!(spool.wait_empty(Duration::from_millis(50)).await.is_err());
        assert_eq!(store.puts_attempted(), 0);
        assert!(dir.join(obj_name(1)).exists(), "kept for the next start");
        drop(spool);
        fs::remove_dir_all(&dir).unwrap();
    }
}
