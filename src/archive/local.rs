//! The local-directory archive store: the embedded default.
//!
//! Meant for a path apart from the server's data (another disk, an NFS/SMB mount of the
//! hospital's archive), so losing the server's disk does not lose recordings. Every object is
//! one file at `<root>/<key>`.
//!
//! A put must never leave a half-written object behind and never replace an archived one, even
//! when the machine loses power mid-write or two writers race on one key:
//!
//! 1. write into a hidden temporary file in the object's directory and `fsync` it;
//! 2. publish it with `link(temp, final)`, which fails if `final` exists (an atomic
//!    create-if-absent, unlike `rename`, which would silently replace), then remove the temp;
//! 3. `fsync` the directory so the new name survives a crash.
//!
//! If the name already exists, the existing bytes are compared: equal is success (a retried
//! upload), different is [`ArchiveError::Conflict`]. On file systems without hard links the
//! store falls back to check-then-`rename`, which is atomic for readers but leaves a small
//! window for two racing writers of one key.
//!
//! Objects are made read-only (mode 0444) once written, as a guard against accidental edits;
//! this is no substitute for WORM storage (use S3 object lock for that).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::{validate_key, validate_prefix, ArchiveError, ArchiveStore, ObjectInfo, PutOptions};

/// Objects in a local directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    read_only: bool,
}

/// Distinguishes temporaries of concurrent puts in one process; the pid distinguishes
/// processes.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl LocalStore {
    /// Open (creating if needed) a writable store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<LocalStore, ArchiveError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| ArchiveError::io(&root, e))?;
        Ok(LocalStore {
            root,
            read_only: false,
        })
    }

    /// Open an existing store for reading only (verification and export tools), so a tool
    /// run against the live archive cannot change it.
    pub fn open_read_only(root: impl Into<PathBuf>) -> Result<LocalStore, ArchiveError> {
        let root = root.into();
        let meta = fs::metadata(&root).map_err(|e| ArchiveError::io(&root, e))?;
        if !meta.is_dir() {
            return Err(ArchiveError::io(
                &root,
                io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        Ok(LocalStore {
            root,
            read_only: true,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> PathBuf {
        // validate_key guarantees `/`-separated plain names, so joining is safe.
        key.split('/').fold(self.root.clone(), |p, seg| p.join(seg))
    }

    fn put_blocking(&self, key: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
        if self.read_only {
            return Err(ArchiveError::ReadOnly);
        }
        let path = self.path_of(key);
        let dir = path
            .parent()
            .expect("a key path has a parent")
            .to_path_buf();
        create_dirs_durably(&self.root, &dir)?;

        // Cheap early answer for the common retry case; the link below is the real check.
        if path.exists() {
            return compare_existing(key, &path, bytes);
        }

        let temp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = write_temp(&temp, bytes).and_then(|()| publish(key, &temp, &path, bytes));
        // The temp is gone after a successful rename; otherwise clean it up.
        let _ = fs::remove_file(&temp);
        result?;
        sync_dir(&dir)
    }

    fn get_blocking(&self, key: &str) -> Result<Bytes, ArchiveError> {
        let path = self.path_of(key);
        match fs::read(&path) {
            Ok(data) => Ok(Bytes::from(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ArchiveError::NotFound {
                key: key.to_owned(),
            }),
            // A key naming a directory (a prefix of other keys) is no object either.
            Err(_) if path.is_dir() => Err(ArchiveError::NotFound {
                key: key.to_owned(),
            }),
            Err(e) => Err(ArchiveError::io(path, e)),
        }
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ArchiveError> {
        // Walk only the deepest directory the prefix fully names, not the whole archive.
        let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path_of(dir_part)
        };
        let mut out = Vec::new();
        let mut stack = vec![(start, dir_part.to_owned())];
        while let Some((dir, key_prefix)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) if e.kind() == io::ErrorKind::NotADirectory => continue,
                Err(e) => return Err(ArchiveError::io(&dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| ArchiveError::io(&dir, e))?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue; // not ours: every key is ASCII
                };
                if name.starts_with('.') {
                    continue; // temporaries (and anything else hidden) are not objects
                }
                let key = if key_prefix.is_empty() {
                    name
                } else {
                    format!("{key_prefix}/{name}")
                };
                let file_type = entry
                    .file_type()
                    .map_err(|e| ArchiveError::io(entry.path(), e))?;
                if file_type.is_dir() {
                    // Descend only where keys can still match the prefix.
                    let as_dir = format!("{key}/");
                    if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                        stack.push((entry.path(), key));
                    }
                } else if file_type.is_file() && key.starts_with(prefix) {
                    let size = entry
                        .metadata()
                        .map_err(|e| ArchiveError::io(entry.path(), e))?
                        .len();
                    out.push(ObjectInfo { key, size });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

#[async_trait]
impl ArchiveStore for LocalStore {
    async fn put(&self, key: &str, bytes: Bytes, _options: PutOptions) -> Result<(), ArchiveError> {
        validate_key(key)?;
        let this = self.clone();
        let key = key.to_owned();
        blocking(move || this.put_blocking(&key, &bytes)).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, ArchiveError> {
        validate_key(key)?;
        let this = self.clone();
        let key = key.to_owned();
        blocking(move || this.get_blocking(&key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ArchiveError> {
        validate_prefix(prefix)?;
        let this = self.clone();
        let prefix = prefix.to_owned();
        blocking(move || this.list_blocking(&prefix)).await
    }

    fn describe(&self) -> String {
        format!(
            "local {}{}",
            self.root.display(),
            if self.read_only { " (read-only)" } else { "" }
        )
    }
}

/// Run file-system work off the async worker threads: an fsync can take a long time.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ArchiveError> + Send + 'static,
) -> Result<T, ArchiveError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(ArchiveError::NoRuntime),
    }
}

fn write_temp(temp: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temp)
        .map_err(|e| ArchiveError::io(temp, e))?;
    file.write_all(bytes)
        .map_err(|e| ArchiveError::io(temp, e))?;
    file.sync_all().map_err(|e| ArchiveError::io(temp, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = file.set_permissions(fs::Permissions::from_mode(0o444));
    }
    Ok(())
}

/// Give the fsync'd temp its final name without ever replacing an existing object.
fn publish(key: &str, temp: &Path, path: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    match fs::hard_link(temp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => compare_existing(key, path, bytes),
        Err(e) if e.kind() == io::ErrorKind::Unsupported || e.raw_os_error() == Some(EPERM) => {
            // No hard links here (FAT, some network file systems): check, then rename.
            if path.exists() {
                return compare_existing(key, path, bytes);
            }
            fs::rename(temp, path).map_err(|e| ArchiveError::io(path, e))
        }
        Err(e) => Err(ArchiveError::io(path, e)),
    }
}

/// Linux returns EPERM from link(2) on file systems that do not support hard links.
const EPERM: i32 = 1;

fn compare_existing(key: &str, path: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    let mut existing = File::open(path).map_err(|e| ArchiveError::io(path, e))?;
    let len = existing
        .metadata()
        .map_err(|e| ArchiveError::io(path, e))?
        .len();
    if len != bytes.len() as u64 {
        return Err(ArchiveError::Conflict {
            key: key.to_owned(),
        });
    }
    let mut current = Vec::with_capacity(bytes.len());
    existing
        .read_to_end(&mut current)
        .map_err(|e| ArchiveError::io(path, e))?;
    if current == bytes {
        Ok(())
    } else {
        Err(ArchiveError::Conflict {
            key: key.to_owned(),
        })
    }
}

/// Create `dir` (inside `root`) and fsync each parent whose entries changed, so a new
/// directory is as durable as the object placed in it.
fn create_dirs_durably(root: &Path, dir: &Path) -> Result<(), ArchiveError> {
    if dir.is_dir() {
        return Ok(());
    }
    let relative = dir.strip_prefix(root).unwrap_or(dir);
    let mut current = root.to_path_buf();
    for component in relative.components() {
        let parent = current.clone();
        current.push(component);
        match fs::create_dir(&current) {
            Ok(()) => sync_dir(&parent)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && current.is_dir() => {}
            Err(e) => return Err(ArchiveError::io(&current, e)),
        }
    }
    Ok(())
}

/// Make a directory's entries (new or removed names) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| ArchiveError::io(dir, e))
    }
    #[cfg(not(unix))]
    {
        // Windows has no directory fsync; NTFS journals metadata.
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "huizhen-local-{name}-{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn put_get_list_round_trip() {
        let root = temp_root("rt");
        let store = LocalStore::open(&root).unwrap();
        store
            .put(
                "recordings/r1/a/000001.seg",
                Bytes::from_static(b"one"),
                PutOptions::default(),
            )
            .await
            .unwrap();
        store
            .put(
                "recordings/r1/manifest.json",
                Bytes::from_static(b"{}"),
                PutOptions::default(),
            )
            .await
            .unwrap();
        store
            .put(
                "recordings/r2/a/000001.seg",
                Bytes::from_static(b"x"),
                PutOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(
            &store.get("recordings/r1/a/000001.seg").await.unwrap()[..],
            b"one"
        );

        let keys = |v: Vec<ObjectInfo>| v.into_iter().map(|o| o.key).collect::<Vec<_>>();
        assert_eq!(
            keys(store.list("recordings/r1/").await.unwrap()),
            ["recordings/r1/a/000001.seg", "recordings/r1/manifest.json"]
        );
        // A partial last segment matches like an S3 prefix.
        assert_eq!(store.list("recordings/r").await.unwrap().len(), 3);
        assert_eq!(store.list("").await.unwrap().len(), 3);
        assert_eq!(store.list("recordings/r1/man").await.unwrap()[0].size, 2);
        assert!(store.list("nothing/").await.unwrap().is_empty());
        fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn same_bytes_again_is_ok_different_bytes_conflict() {
        let root = temp_root("conflict");
        let store = LocalStore::open(&root).unwrap();
        let key = "recordings/r1/a/1.seg";
        store
            .put(key, Bytes::from_static(b"abc"), PutOptions::default())
            .await
            .unwrap();
        store
            .put(key, Bytes::from_static(b"abc"), PutOptions::default())
            .await
            .unwrap();
        for other in [&b"abd"[..], b"abcd", b""] {
            let err = store
                .put(key, Bytes::copy_from_slice(other), PutOptions::default())
                .await
                .unwrap_err();
            assert!(matches!(err, ArchiveError::Conflict { .. }), "{err:?}");
        }
        assert_eq!(&store.get(key).await.unwrap()[..], b"abc");
        fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn racing_writers_of_one_key_never_both_win() {
        let root = temp_root("race");
        let store = LocalStore::open(&root).unwrap();
        let mut tasks = Vec::new();
        for i in 0..8u8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .put("k/obj", Bytes::from(vec![i; 4096]), PutOptions::default())
                    .await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => ok += 1,
                Err(ArchiveError::Conflict { .. }) => {}
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!(ok, 1, "exactly one writer publishes the object");
        let data = store.get("k/obj").await.unwrap();
        assert!(data.iter().all(|b| *b == data[0]), "no mixed content");
        // No temporaries are left behind.
        let names: Vec<_> = fs::read_dir(root.join("k"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["obj"]);
        fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn missing_objects_and_bad_keys() {
        let root = temp_root("missing");
        let store = LocalStore::open(&root).unwrap();
        store
            .put("a/b", Bytes::from_static(b"1"), PutOptions::default())
            .await
            .unwrap();
        assert!(matches!(
            store.get("a/c").await,
            Err(ArchiveError::NotFound { .. })
        ));
        assert!(matches!(
            store.get("a").await,
            Err(ArchiveError::NotFound { .. })
        ));
        for bad in ["../escape", "/abs", "a/../../b", "a/.tmp-1"] {
            assert!(matches!(
                store
                    .put(bad, Bytes::from_static(b"x"), PutOptions::default())
                    .await,
                Err(ArchiveError::InvalidKey { .. })
            ));
            assert!(matches!(
                store.get(bad).await,
                Err(ArchiveError::InvalidKey { .. })
            ));
        }
        assert!(!root.parent().unwrap().join("escape").exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn read_only_store_refuses_writes_and_hides_temporaries() {
        let root = temp_root("ro");
        let store = LocalStore::open(&root).unwrap();
        store
            .put("a/b", Bytes::from_static(b"1"), PutOptions::default())
            .await
            .unwrap();
        // A crash between write and link leaves a hidden temp: never listed.
        fs::write(root.join("a").join(".tmp-999-0"), b"partial").unwrap();
        let ro = LocalStore::open_read_only(&root).unwrap();
        assert!(ro.describe().contains("read-only"));
        assert!(matches!(
            ro.put("a/c", Bytes::from_static(b"2"), PutOptions::default())
                .await,
            Err(ArchiveError::ReadOnly)
        ));
        assert_eq!(
            ro.list("").await.unwrap(),
            [ObjectInfo {
                key: "a/b".into(),
                size: 1
            }]
        );
        assert!(LocalStore::open_read_only(root.join("missing")).is_err());
        fs::remove_dir_all(&root).unwrap();
    }
}
