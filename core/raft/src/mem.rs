//! An in-memory [`LogStore`] over raft-rs's `MemStorage`, for tests and the
//! simulator.
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage};

use crate::{ConfState, Entry, HardState, LogStore, SnapshotMetadata, StorageError};

#[derive(Clone, Default)]
pub struct MemLogStore {
    inner: MemStorage,
    /// When set, every append fails (to test the fatal stop).
    pub fail_appends: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Number of appends that asked for an fsync (group commit shows here).
    pub synced_appends: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl MemLogStore {
    pub fn new() -> MemLogStore {
        MemLogStore::default()
    }
}

impl Storage for MemLogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.inner.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.inner.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.inner.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.inner.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.inner.last_index()
    }
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<raft::eraftpb::Snapshot> {
        self.inner.snapshot(request_index, to)
    }
}

impl LogStore for MemLogStore {
    fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        sync: bool,
    ) -> Result<(), StorageError> {
        use std::sync::atomic::Ordering;
        if self.fail_appends.load(Ordering::SeqCst) {
            return Err(StorageError("injected append failure".into()));
        }
        if sync {
            self.synced_appends.fetch_add(1, Ordering::SeqCst);
        }
        let mut core = self.inner.wl();
        if !entries.is_empty() {
            core.append(entries)
                .map_err(|e| StorageError(e.to_string()))?;
        }
        if let Some(hs) = hard_state {
            core.set_hardstate(hs.clone());
        }
        Ok(())
    }
    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), StorageError> {
        self.inner.wl().set_conf_state(cs.clone());
        Ok(())
    }
    fn compact(&mut self, index: u64) -> Result<(), StorageError> {
        self.inner
            .wl()
            .compact(index + 1)
            .map_err(|e| StorageError(e.to_string()))
    }
    fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), StorageError> {
        let mut snap = raft::eraftpb::Snapshot::default();
        snap.set_metadata(meta.clone());
        self.inner
            .wl()
            .apply_snapshot(snap)
            .map_err(|e| StorageError(e.to_string()))
    }
}
