//! State shared between the control handle and the HTTP handlers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::store::Store;
use super::Kind;

/// The store plus bookkeeping that tests read.
pub(crate) struct Shared {
    store: Mutex<Store>,
    lists: [AtomicU64; 3],
    watches: [AtomicU64; 3],
    /// resourceVersions of the bookmarks sent per kind, in sending order.
    bookmarks: [Mutex<Vec<u64>>; 3],
    requests: Mutex<Vec<String>>,
    /// events.k8s.io/v1 Events by (namespace, name), as created and patched.
    events: Mutex<std::collections::BTreeMap<(String, String), serde_json::Value>>,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Shared {
            store: Mutex::new(Store::new()),
            lists: Default::default(),
            watches: Default::default(),
            bookmarks: Default::default(),
            requests: Mutex::new(Vec::new()),
            events: Mutex::default(),
        }
    }

    /// The store, locked. A panic while holding the lock (only possible in a test's own
    /// code path) leaves the data consistent enough to keep serving, so poisoning is ignored.
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn count_list(&self, kind: Kind) {
        self.lists[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_watch(&self, kind: Kind) {
        self.watches[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn lists(&self, kind: Kind) -> u64 {
        self.lists[kind.index()].load(Ordering::Relaxed)
    }

    pub(crate) fn watches(&self, kind: Kind) -> u64 {
        self.watches[kind.index()].load(Ordering::Relaxed)
    }

    pub(crate) fn record_bookmark(&self, kind: Kind, rv: u64) {
        self.bookmarks[kind.index()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(rv);
    }

    pub(crate) fn bookmarks(&self, kind: Kind) -> Vec<u64> {
        self.bookmarks[kind.index()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn record_request(&self, line: String) {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }

    pub(crate) fn events(
        &self,
    ) -> MutexGuard<'_, std::collections::BTreeMap<(String, String), serde_json::Value>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
