//! An in-memory archive store with an on/off switch, for tests.
//!
//! Components that write into the archive (the spool, the recorder) need to be tested
//! against a store that goes away and comes back, without sockets or a real S3 server.
//! [`MemoryStore`] keeps the same write-once rules as the real backends and records the order
//! in which objects arrived.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;

use super::{validate_key, validate_prefix, ArchiveError, ArchiveStore, ObjectInfo, PutOptions};

/// Objects in memory; see the module docs.
#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, (Bytes, PutOptions)>>,
    arrivals: Mutex<Vec<String>>,
    down: AtomicBool,
    puts_attempted: AtomicU64,
}

impl MemoryStore {
    /// An empty, available store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Make every following call fail with [`ArchiveError::Unreachable`] (`false`) or work
    /// again (`true`).
    pub fn set_available(&self, available: bool) {
        self.down.store(!available, Ordering::SeqCst);
    }

    /// Keys in the order their first successful put arrived.
    pub fn arrivals(&self) -> Vec<String> {
        self.arrivals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The options an object was stored with.
    pub fn options_of(&self, key: &str) -> Option<PutOptions> {
        let objects = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        objects.get(key).map(|(_, o)| *o)
    }

    /// How many puts were attempted, failed ones included.
    pub fn puts_attempted(&self) -> u64 {
        self.puts_attempted.load(Ordering::SeqCst)
    }

    fn check_up(&self) -> Result<(), ArchiveError> {
        if self.down.load(Ordering::SeqCst) {
            Err(ArchiveError::Unreachable {
                store: self.describe(),
                reason: "switched off by the test".into(),
            })
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl ArchiveStore for MemoryStore {
    async fn put(&self, key: &str, bytes: Bytes, options: PutOptions) -> Result<(), ArchiveError> {
        validate_key(key)?;
        self.puts_attempted.fetch_add(1, Ordering::SeqCst);
        self.check_up()?;
        let mut objects = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        match objects.get(key) {
            Some((existing, _)) if *existing == bytes => Ok(()),
            Some(_) => Err(ArchiveError::Conflict {
                key: key.to_owned(),
            }),
            None => {
                objects.insert(key.to_owned(), (bytes, options));
                self.arrivals
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(key.to_owned());
                Ok(())
            }
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, ArchiveError> {
        validate_key(key)?;
        self.check_up()?;
        let objects = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        objects
            .get(key)
            .map(|(b, _)| b.clone())
            .ok_or_else(|| ArchiveError::NotFound {
                key: key.to_owned(),
            })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ArchiveError> {
        validate_prefix(prefix)?;
        self.check_up()?;
        let objects = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(objects
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (b, _))| ObjectInfo {
                key: k.clone(),
                size: b.len() as u64,
            })
            .collect())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn write_once_and_switchable() {
        let store = MemoryStore::new();
        let opts = PutOptions {
            retention_until: Some(42),
        };
        store
            .put("a/1", Bytes::from_static(b"x"), opts)
            .await
            .unwrap();
        store
            .put("a/1", Bytes::from_static(b"x"), opts)
            .await
            .unwrap();
        assert!(matches!(
            store.put("a/1", Bytes::from_static(b"y"), opts).await,
            Err(ArchiveError::Conflict { .. })
        ));
        store.set_available(false);
        assert!(matches!(
            store.get("a/1").await,
            Err(ArchiveError::Unreachable { .. })
        ));
        store.set_available(true);
        store
            .put("b/1", Bytes::from_static(b"z"), PutOptions::default())
            .await
            .unwrap();
        assert_eq!(store.arrivals(), ["a/1", "b/1"]);
        assert_eq!(store.list("a/").await.unwrap().len(), 1);
        assert_eq!(store.options_of("a/1"), Some(opts));
        assert!(matches!(
            store.get("c").await,
            Err(ArchiveError::NotFound { .. })
        ));
    }
}
