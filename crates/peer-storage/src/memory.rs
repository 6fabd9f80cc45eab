//! The in-memory store for tests.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::table::PeerTable;
use crate::{DEFAULT_MAX_ENTRIES, Error, PeerRecord, PeerStore, Source};

/// A [`PeerStore`] that keeps the table in memory only.
///
/// It follows exactly the same rules as [`crate::FilePeerStore`] (scores,
/// bans, bounds); [`PeerStore::flush`] does nothing.
///
/// ```
/// use peer_storage::{MemoryPeerStore, PeerStore, Source};
///
/// let store = MemoryPeerStore::new(10);
/// let addr = "127.0.0.1:3000".parse().expect("valid address");
/// store.upsert(addr, Source::Mdns, None, 100);
/// assert_eq!(store.all().len(), 1);
/// ```
#[derive(Debug)]
pub struct MemoryPeerStore {
    table: Mutex<PeerTable>,
}

impl MemoryPeerStore {
    /// An empty store holding at most `max_entries` addresses (at least 1).
    pub fn new(max_entries: usize) -> Self {
        MemoryPeerStore {
            table: Mutex::new(PeerTable::new(max_entries)),
        }
    }

    /// The number of stored addresses.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, PeerTable> {
        // Every table operation leaves the table consistent, so a panic in
        // another thread holding the lock does not make it unusable.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for MemoryPeerStore {
    fn default() -> Self {
        MemoryPeerStore::new(DEFAULT_MAX_ENTRIES)
    }
}

impl PeerStore for MemoryPeerStore {
    fn upsert(&self, addr: SocketAddr, source: Source, node_id: Option<String>, now: u64) {
        self.lock().upsert(addr, source, node_id, now);
    }

    fn record_success(&self, addr: SocketAddr, node_id: Option<String>, now: u64) {
        self.lock().record_success(addr, node_id, now);
    }

    fn record_failure(&self, addr: SocketAddr, _now: u64) {
        self.lock().record_failure(addr);
    }

    fn record_misbehaviour(&self, addr: SocketAddr, now: u64) {
        self.lock().record_misbehaviour(addr, now);
    }

    fn is_banned(&self, addr: SocketAddr, now: u64) -> bool {
        self.lock().is_banned(addr, now)
    }

    fn best(&self, limit: usize, now: u64) -> Vec<PeerRecord> {
        self.lock().best(limit, now)
    }

    fn all(&self) -> Vec<PeerRecord> {
        self.lock().all()
    }

    fn flush(&self) -> Result<(), Error> {
        Ok(())
    }

    fn get(&self, addr: SocketAddr) -> Option<PeerRecord> {
        self.lock().get(addr)
    }
}
