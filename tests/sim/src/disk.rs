//! The simulated disk of one node: a single ordered journal holding the
//! raft log's writes and the MVCC store's batches, as cairn's fjall
//! database does (one journal for both; a synced write makes everything
//! before it durable too).
//!
//! A crash keeps a prefix of the journal: everything up to the last sync,
//! plus any number of the writes after it (the page cache may have written
//! some back), and nothing else. The node's log and store are then rebuilt
//! from that prefix, which is what opening the real database does.
//!
//! A sync can be made to fail (disk write failure): the write is refused,
//! the node stops on it as cairn does, and a later crash decides what of
//! it reached the platter.

use std::sync::{Arc, Mutex};

use cairn_mvcc::{Backend, BackendError, Batch, MemBackend, MemSnapshot};
use cairn_raft::{
    ConfState, Entry, HardState, LogStore, MemLogStore, Snapshot, SnapshotMetadata, StorageError,
};
use raft::{GetEntriesContext, RaftState};
use rand::Rng;

#[derive(Clone)]
enum Write {
    Append(Vec<Entry>, Option<HardState>),
    Conf(ConfState),
    Compact(u64),
    Snapshot(SnapshotMetadata),
    Batch(Batch),
    /// A snapshot's content about to replace the store (kept until the
    /// restore is done, as the agent keeps the streamed file).
    RestoreBegin(Arc<Vec<u8>>),
    RestoreEnd,
}

#[derive(Default)]
pub struct Journal {
    writes: Vec<Write>,
    /// Writes `[..synced]` are durable.
    synced: usize,
    /// The next sync fails.
    pub fail_next_sync: bool,
    /// Syncs done (a figure for the report).
    pub syncs: u64,
}

impl Journal {
    fn push(&mut self, w: Write, sync: bool) -> Result<(), String> {
        if sync && self.fail_next_sync {
            self.fail_next_sync = false;
            // Part of the write may still reach the disk; the crash that
            // follows decides (it is past the sync point).
            self.writes.push(w);
            return Err("injected fsync failure".into());
        }
        self.writes.push(w);
        if sync {
            self.synced = self.writes.len();
            self.syncs += 1;
        }
        Ok(())
    }

    /// What survives a crash: the synced writes and a random number of the
    /// ones after them.
    pub fn crash(&mut self, rng: &mut impl Rng) {
        let keep = rng.random_range(self.synced..=self.writes.len());
        self.writes.truncate(keep);
        self.synced = keep;
    }

    /// Writes not yet durable.
    pub fn unsynced(&self) -> usize {
        self.writes.len() - self.synced
    }
}

pub type Disk = Arc<Mutex<Journal>>;

/// The raft log over the journal.
pub struct SimLog {
    live: MemLogStore,
    disk: Disk,
}

/// The MVCC backend over the journal.
pub struct SimBackend {
    live: MemBackend,
    disk: Disk,
}

/// Opens what is on `disk`: the log and the store as the journal's writes
/// leave them, a restore cut short by a crash redone first.
pub fn open(disk: &Disk) -> (SimLog, SimBackend, Option<Arc<Vec<u8>>>) {
    let writes = disk.lock().expect("disk").writes.clone();
    let mut live = MemLogStore::new();
    let backend = MemBackend::default();
    let mut restoring = None;
    for w in writes {
        match w {
            Write::Append(e, hs) => live.append(&e, hs.as_ref(), false).expect("mem append"),
            Write::Conf(cs) => live.set_conf_state(&cs).expect("mem conf"),
            Write::Compact(i) => live.compact(i).expect("mem compact"),
            Write::Snapshot(md) => live.apply_snapshot(&md).expect("mem snapshot"),
            Write::Batch(b) => backend.commit(b, false).expect("mem commit"),
            Write::RestoreBegin(data) => restoring = Some(data),
            Write::RestoreEnd => restoring = None,
        }
    }
    (
        SimLog {
            live,
            disk: disk.clone(),
        },
        SimBackend {
            live: backend,
            disk: disk.clone(),
        },
        restoring,
    )
}

impl SimBackend {
    pub fn restore_begin(&self, data: Arc<Vec<u8>>) -> Result<(), String> {
        self.disk
            .lock()
            .expect("disk")
            .push(Write::RestoreBegin(data), true)
    }

    pub fn restore_end(&self) -> Result<(), String> {
        self.disk
            .lock()
            .expect("disk")
            .push(Write::RestoreEnd, false)
    }
}

impl Backend for SimBackend {
    type Snapshot = MemSnapshot;
    fn snapshot(&self) -> MemSnapshot {
        self.live.snapshot()
    }
    fn commit(&self, batch: Batch, durable: bool) -> Result<(), BackendError> {
        self.disk
            .lock()
            .expect("disk")
            .push(Write::Batch(batch.clone()), durable)
            .map_err(BackendError)?;
        self.live.commit(batch, durable)
    }
    fn size_bytes(&self) -> u64 {
        self.live.size_bytes()
    }
}

impl raft::Storage for SimLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.live.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.live.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.live.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.live.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.live.last_index()
    }
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.live.snapshot(request_index, to)
    }
}

impl LogStore for SimLog {
    fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        sync: bool,
    ) -> Result<(), StorageError> {
        self.disk
            .lock()
            .expect("disk")
            .push(Write::Append(entries.to_vec(), hard_state.cloned()), sync)
            .map_err(StorageError)?;
        self.live.append(entries, hard_state, sync)
    }
    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), StorageError> {
        self.disk
            .lock()
            .expect("disk")
            .push(Write::Conf(cs.clone()), false)
            .map_err(StorageError)?;
        self.live.set_conf_state(cs)
    }
    fn compact(&mut self, index: u64) -> Result<(), StorageError> {
        self.disk
            .lock()
            .expect("disk")
            .push(Write::Compact(index), false)
            .map_err(StorageError)?;
        self.live.compact(index)
    }
    fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), StorageError> {
        self.disk
            .lock()
            .expect("disk")
            .push(Write::Snapshot(meta.clone()), true)
            .map_err(StorageError)?;
        self.live.apply_snapshot(meta)
    }
}
