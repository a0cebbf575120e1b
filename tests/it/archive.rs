//! The archive store against a real S3 server process, and the spool across store outages.
//!
//! Each test starts its own `s3s-fs` (an S3 server on a local directory that checks SigV4
//! signatures) on 127.0.0.1 and a free port, with its own root directory. The binary comes
//! from `cargo install s3s-fs@0.14.1 --locked --features binary` (tests/run-all.sh does it);
//! when it is missing the tests fail and say how to install it. `S3S_FS_BIN` overrides where
//! it is looked for.
//!
//! Every wait is bounded (at most 30 s), and every server process is killed when its guard
//! is dropped, also when a test panics.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common;

use async_trait::async_trait;
use bytes::Bytes;
use common::s3::{S3sFs, ACCESS_KEY, BUCKET, SECRET_KEY};
use huizhen::archive::{
    build_store, ArchiveBackend, ArchiveConfig, ArchiveError, ArchiveStore, LocalStore, ObjectInfo,
    ObjectLockMode, PutOptions, RetryPolicy, S3Store, Spool,
};
use prometheus::Registry;
use rusty_s3::S3Action as _;
use tokio::sync::watch;

/// The longest any single wait in these tests may take.
const MAX_WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "huizhen-archive-{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Wraps a store and records the order in which puts succeeded.
struct OrderRecorder {
    inner: Arc<dyn ArchiveStore>,
    order: Mutex<Vec<String>>,
}

#[async_trait]
impl ArchiveStore for OrderRecorder {
    async fn put(&self, key: &str, bytes: Bytes, options: PutOptions) -> Result<(), ArchiveError> {
        self.inner.put(key, bytes, options).await?;
        self.order.lock().unwrap().push(key.to_owned());
        Ok(())
    }
    async fn get(&self, key: &str) -> Result<Bytes, ArchiveError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ArchiveError> {
        self.inner.list(prefix).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Deterministic pseudo-random bytes (xorshift), so a corrupted byte anywhere shows.
fn pattern(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

fn segment_key(recording: &str, index: usize) -> String {
    format!("recordings/{recording}/cam-1/{index:06}.seg")
}

/// The sum of a metric family's samples (counter or gauge) in `registry`.
fn metric(registry: &Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        // Whichever of the two this family is not reads 0.
        .map(|m| m.get_gauge().get_value() + m.get_counter().get_value())
        .sum()
}

fn archive_registry() -> Registry {
    Registry::new_custom(Some("huizhen_archive".into()), None).unwrap()
}

/// Poll `check` every 20 ms until it holds, failing after `MAX_WAIT` with `what`.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + MAX_WAIT;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {MAX_WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// S3Store against s3s-fs
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn s3_put_get_list_small_objects() {
    let root = TempDir::new("s3-small");
    let server = S3sFs::start(&root.path().join("data"));
    let mut settings = server.settings();
    // Object-lock headers are signed and sent (s3s-fs accepts and ignores them).
    settings.object_lock = Some(ObjectLockMode::Compliance);
    settings.default_retention = Some(Duration::from_secs(3 * 365 * 86_400));
    let store = S3Store::new(settings).unwrap();

    let objects = [
        (segment_key("r-1", 1), pattern(1000, 1)),
        (segment_key("r-1", 2), pattern(70_000, 2)),
        (
            "recordings/r-1/manifest.json".to_owned(),
            Bytes::from_static(b"{\"v\":1}"),
        ),
        (segment_key("r-2", 1), Bytes::new()),
    ];
    for (key, bytes) in &objects {
        store
            .put(key, bytes.clone(), PutOptions::default())
            .await
            .unwrap();
    }
    for (key, bytes) in &objects {
        assert_eq!(&store.get(key).await.unwrap(), bytes, "{key}");
    }

    let listed = store.list("recordings/r-1/").await.unwrap();
    assert_eq!(
        listed,
        [
            ObjectInfo {
                key: segment_key("r-1", 1),
                size: 1000
            },
            ObjectInfo {
                key: segment_key("r-1", 2),
                size: 70_000
            },
            ObjectInfo {
                key: "recordings/r-1/manifest.json".into(),
                size: 7
            },
        ]
    );
    assert_eq!(store.list("").await.unwrap().len(), 4);
    assert!(store.list("recordings/r-3/").await.unwrap().is_empty());

    // Write-once: the same bytes again is a no-op, different bytes a conflict.
    let (key, bytes) = &objects[0];
    store
        .put(
            key,
            bytes.clone(),
            PutOptions {
                retention_until: Some(4_102_444_800),
            },
        )
        .await
        .unwrap();
    let err = store
        .put(key, pattern(1000, 99), PutOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ArchiveError::Conflict { .. }), "{err:?}");
    assert_eq!(&store.get(key).await.unwrap(), bytes, "not overwritten");

    let err = store.get("recordings/r-1/missing.seg").await.unwrap_err();
    assert!(matches!(err, ArchiveError::NotFound { .. }), "{err:?}");
    let err = store
        .put("../outside", Bytes::new(), PutOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ArchiveError::InvalidKey { .. }), "{err:?}");
    assert!(store.describe().starts_with("s3 http://127.0.0.1:"));
    assert!(!store.describe().contains(SECRET_KEY));
}

#[tokio::test]
async fn s3_multipart_upload_round_trips_20_mib() {
    let root = TempDir::new("s3-multipart");
    let server = S3sFs::start(&root.path().join("data"));
    let store = server.store();
    let key = segment_key("r-big", 1);
    let big = pattern(20 * 1024 * 1024, 7);

    store
        .put(&key, big.clone(), PutOptions::default())
        .await
        .unwrap();
    let back = store.get(&key).await.unwrap();
    assert_eq!(back.len(), big.len());
    assert!(back == big, "20 MiB object differs after the round trip");
    assert_eq!(
        store.list("recordings/r-big/").await.unwrap(),
        [ObjectInfo {
            key: key.clone(),
            size: 20 * 1024 * 1024
        }]
    );

    // It went through multipart: S3 gives such objects an ETag of `<md5-of-md5s>-<parts>`.
    let bucket = rusty_s3::Bucket::new(
        server.endpoint().parse().unwrap(),
        rusty_s3::UrlStyle::Path,
        BUCKET,
        "us-east-1",
    )
    .unwrap();
    let credentials = rusty_s3::Credentials::new(ACCESS_KEY, SECRET_KEY);
    let url = bucket
        .head_object(Some(&credentials), &key)
        .sign(Duration::from_secs(60));
    let head = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .head(url)
        .send()
        .await
        .unwrap();
    assert!(head.status().is_success(), "{}", head.status());
    let etag = head.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_owned();
    assert!(
        etag.ends_with("-3"),
        "expected a 3-part multipart ETag, got {etag}"
    );

    // Retrying the whole upload (its first answer lost) is harmless; other bytes conflict.
    store
        .put(&key, big.clone(), PutOptions::default())
        .await
        .unwrap();
    let mut other = big.to_vec();
    other[12_345_678] ^= 1;
    let err = store
        .put(&key, Bytes::from(other), PutOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ArchiveError::Conflict { .. }), "{err:?}");
    assert!(store.get(&key).await.unwrap() == big);
}

#[tokio::test]
async fn s3_wrong_secret_is_denied() {
    let root = TempDir::new("s3-denied");
    let server = S3sFs::start(&root.path().join("data"));
    let mut settings = server.settings();
    settings.secret_key = "not-the-secret".into();
    let store = S3Store::new(settings).unwrap();

    let err = store
        .put(
            &segment_key("r-1", 1),
            pattern(100, 1),
            PutOptions::default(),
        )
        .await
        .unwrap_err();
    match &err {
        ArchiveError::Denied { status: 403, code } => {
            assert_eq!(code.as_deref(), Some("SignatureDoesNotMatch"), "{err}")
        }
        other => panic!("expected Denied, got {other:?}"),
    }
    assert!(
        !err.is_permanent(),
        "credentials can be fixed: the spool keeps retrying"
    );
    assert!(matches!(
        store.get(&segment_key("r-1", 1)).await,
        Err(ArchiveError::Denied { .. })
    ));
    assert!(matches!(
        store.list("").await,
        Err(ArchiveError::Denied { .. })
    ));
    // Nothing was stored.
    assert!(server.store().list("").await.unwrap().is_empty());
}

#[tokio::test]
async fn s3_store_built_from_config() {
    let root = TempDir::new("s3-config");
    let server = S3sFs::start(&root.path().join("data"));
    let config: ArchiveConfig = toml::from_str(&format!(
        r#"
        backend = "s3"
        endpoint = "{}"
        bucket = "{BUCKET}"
        access_key = "{ACCESS_KEY}"
        secret_key = "{SECRET_KEY}"
        object_lock_mode = "governance"
        retention_days = 30
        "#,
        server.endpoint()
    ))
    .unwrap();
    assert_eq!(config.backend, ArchiveBackend::S3);
    assert!(!format!("{config:?}").contains(SECRET_KEY));
    let store = build_store(&config).unwrap();
    store
        .put(
            "recordings/r-9/manifest.json",
            Bytes::from_static(b"{}"),
            PutOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(server.store().list("recordings/").await.unwrap().len(), 1);
}

#[tokio::test]
async fn s3_down_is_unreachable() {
    let root = TempDir::new("s3-down");
    let mut server = S3sFs::start(&root.path().join("data"));
    let store = server.store();
    server.kill();
    let err = store
        .put(
            &segment_key("r-1", 1),
            pattern(10, 1),
            PutOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ArchiveError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        !text.contains("X-Amz-Signature") && !text.contains(ACCESS_KEY),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------
// The spool across outages
// ---------------------------------------------------------------------------------------

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
    }
}

#[tokio::test]
async fn spool_survives_a_store_outage_and_delivers_in_order() {
    let root = TempDir::new("spool-outage");
    let mut server = S3sFs::start(&root.path().join("data"));
    let s3: Arc<dyn ArchiveStore> = Arc::new(server.store());
    let recorder = Arc::new(OrderRecorder {
        inner: s3.clone(),
        order: Mutex::new(Vec::new()),
    });
    let registry = archive_registry();
    let (_stop, shutdown) = watch::channel(false);
    let spool = Spool::open_with_policy(
        root.path().join("spool"),
        recorder.clone(),
        &registry,
        shutdown,
        quick_retries(),
    )
    .await
    .unwrap();

    // The store goes away mid-call.
    server.kill();
    let keys: Vec<String> = (0..10).map(|i| segment_key("r-outage", i)).collect();
    let started = Instant::now();
    for (i, key) in keys.iter().enumerate() {
        spool
            .enqueue(key, pattern(50_000 + i, i as u64))
            .await
            .unwrap();
    }
    // Enqueueing never waits for the (dead) network.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "enqueue took {:?}",
        started.elapsed()
    );

    eventually("failed uploads to be counted", || {
        metric(&registry, "huizhen_archive_upload_failures_total") >= 2.0
    })
    .await;
    let backlog = spool.backlog();
    assert_eq!(backlog.objects, 10, "{backlog:?}");
    assert!(backlog.bytes >= 500_000, "{backlog:?}");
    assert!(backlog.consecutive_failures >= 2, "{backlog:?}");
    assert!(
        backlog
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("unreachable"),
        "{backlog:?}"
    );
    assert_eq!(metric(&registry, "huizhen_archive_spool_depth"), 10.0);
    assert!(metric(&registry, "huizhen_archive_spool_bytes") >= 500_000.0);
    assert_eq!(
        metric(&registry, "huizhen_archive_uploads_total"),
        metric(&registry, "huizhen_archive_upload_failures_total")
    );
    assert!(recorder.order.lock().unwrap().is_empty());

    // The store comes back on the same address with the same data.
    server.restart();
    spool
        .wait_empty(MAX_WAIT)
        .await
        .unwrap_or_else(|b| panic!("spool did not drain: {b:?}"));
    assert_eq!(
        *recorder.order.lock().unwrap(),
        keys,
        "uploaded in enqueue order"
    );
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            s3.get(key).await.unwrap(),
            pattern(50_000 + i, i as u64),
            "{key}"
        );
    }
    assert_eq!(s3.list("recordings/r-outage/").await.unwrap().len(), 10);
    assert_eq!(metric(&registry, "huizhen_archive_spool_depth"), 0.0);
    assert_eq!(metric(&registry, "huizhen_archive_spool_bytes"), 0.0);
    let backlog = spool.backlog();
    assert_eq!(
        (backlog.objects, backlog.consecutive_failures),
        (0, 0),
        "{backlog:?}"
    );
    let families = registry.gather();
    let uploads = families
        .iter()
        .find(|f| f.name() == "huizhen_archive_uploads_total")
        .unwrap();
    let ok = uploads
        .get_metric()
        .iter()
        .find(|m| m.get_label().iter().any(|l| l.value() == "ok"))
        .unwrap()
        .get_counter()
        .get_value();
    assert_eq!(ok, 10.0);
    let seconds = families
        .iter()
        .find(|f| f.name() == "huizhen_archive_upload_seconds")
        .unwrap();
    assert_eq!(
        seconds.get_metric()[0].get_histogram().get_sample_count(),
        10
    );
}

#[tokio::test]
async fn reopened_spool_uploads_what_a_crash_left() {
    let root = TempDir::new("spool-crash");
    let mut server = S3sFs::start(&root.path().join("data"));
    let s3: Arc<dyn ArchiveStore> = Arc::new(server.store());
    let spool_dir = root.path().join("spool");
    let keys: Vec<String> = (0..5).map(|i| segment_key("r-crash", i)).collect();

    server.kill();
    {
        let (_stop, shutdown) = watch::channel(false);
        let spool = Spool::open_with_policy(
            &spool_dir,
            s3.clone(),
            &archive_registry(),
            shutdown,
            quick_retries(),
        )
        .await
        .unwrap();
        for (i, key) in keys.iter().enumerate() {
            spool.enqueue(key, pattern(10_000, i as u64)).await.unwrap();
        }
        assert_eq!(spool.backlog().objects, 5);
        // Dropped without waiting: the process "crashed" with five segments spooled.
    }

    server.restart();
    let recorder = Arc::new(OrderRecorder {
        inner: s3.clone(),
        order: Mutex::new(Vec::new()),
    });
    let registry = archive_registry();
    let (_stop, shutdown) = watch::channel(false);
    let spool = Spool::open_with_policy(
        &spool_dir,
        recorder.clone(),
        &registry,
        shutdown,
        quick_retries(),
    )
    .await
    .unwrap();
    spool
        .wait_empty(MAX_WAIT)
        .await
        .unwrap_or_else(|b| panic!("reopened spool did not drain: {b:?}"));
    assert_eq!(*recorder.order.lock().unwrap(), keys);
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(s3.get(key).await.unwrap(), pattern(10_000, i as u64));
    }
    assert_eq!(metric(&registry, "huizhen_archive_spool_depth"), 0.0);
}

// ---------------------------------------------------------------------------------------
// LocalStore
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn local_store_writes_atomically_and_once() {
    let root = TempDir::new("local");
    let store = LocalStore::open(root.path().join("archive")).unwrap();
    let key = segment_key("r-1", 1);
    let bytes = pattern(300_000, 3);
    store
        .put(&key, bytes.clone(), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(store.get(&key).await.unwrap(), bytes);

    // Atomic: the object directory holds exactly the published file, no temporaries.
    let dir = root.path().join("archive/recordings/r-1/cam-1");
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["000001.seg"]);
    // A temporary left by a crash mid-write is never an object.
    fs::write(dir.join(".tmp-1-1"), b"half a segm").unwrap();
    assert_eq!(
        store.list("recordings/").await.unwrap(),
        [ObjectInfo {
            key: key.clone(),
            size: 300_000
        }]
    );

    // Write-once.
    store
        .put(&key, bytes.clone(), PutOptions::default())
        .await
        .unwrap();
    let err = store
        .put(&key, pattern(300_000, 4), PutOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ArchiveError::Conflict { .. }), "{err:?}");
    assert_eq!(store.get(&key).await.unwrap(), bytes);

    // Keys cannot escape the root.
    for bad in [
        "../escape.seg",
        "/etc/passwd",
        "recordings/../../x",
        "recordings//x",
        ".hidden",
    ] {
        let err = store
            .put(bad, Bytes::from_static(b"x"), PutOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, ArchiveError::InvalidKey { .. }),
            "{bad}: {err:?}"
        );
    }
    assert!(!root.path().join("escape.seg").exists());
    assert!(matches!(
        store.get(&segment_key("r-1", 2)).await,
        Err(ArchiveError::NotFound { .. })
    ));

    // A spool in front of a local store works the same way.
    let (_stop, shutdown) = watch::channel(false);
    let spool = Spool::open_with_policy(
        root.path().join("spool"),
        Arc::new(store.clone()),
        &archive_registry(),
        shutdown,
        quick_retries(),
    )
    .await
    .unwrap();
    spool
        .enqueue(&segment_key("r-1", 2), pattern(10, 5))
        .await
        .unwrap();
    spool.wait_empty(MAX_WAIT).await.unwrap();
    assert_eq!(
        store.get(&segment_key("r-1", 2)).await.unwrap(),
        pattern(10, 5)
    );
}
