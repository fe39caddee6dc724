//! On-disk storage: one fjall database holds the raft log and hard state, the
//! MVCC tables and the agent's own records, so one journal orders them all.
//!
//! Layout of a data directory:
//! - `cairn.format`: a one-line marker naming the format; checked at open.
//! - `db/`: the fjall database, keyspaces `kv`, `rev`, `lease`, `meta` (the
//!   MVCC tables), `raft_log`, `raft_state` and `agent_meta`.
//!
//! Every raft entry is stored with a CRC-32 that is checked whenever it is
//! read back. At open, a torn last entry is dropped (it was never
//! acknowledged: acknowledgement waits for the fsync) and a corrupt entry
//! anywhere else stops the open with its index named. After a failed write
//! the store refuses every later one (a failed fsync cannot be retried).
//!
//! Below the entries' own CRCs, fjall's journal (`db/<n>.jnl`) checksums
//! every batch; `journal.rs` reads it before fjall does, so that damage in
//! its middle stops the open (file and byte named) instead of fjall
//! truncating the journal there.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_mvcc::backend::ScanIter;
use cairn_mvcc::{Backend, BackendError, Batch, ReadView, Table};
use cairn_raft::{ConfState, Entry, HardState, LogStore, SnapshotMetadata, StorageError};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use protobuf::Message as _;
use raft::{GetEntriesContext, RaftState, Storage};

const FORMAT_FILE: &str = "cairn.format";
/// fjall's defaults (64 MiB per memtable, seven keyspaces) would let a
/// small node hold hundreds of MiB of unflushed writes; smaller memtables
/// keep the resident set small at the cost of more, smaller flushes.
const MEMTABLE_BYTES: u64 = 8 * 1024 * 1024;
const BLOCK_CACHE_BYTES: u64 = 16 * 1024 * 1024;
const FORMAT: &str = "cairn-data 1\n";
/// Bytes of the newest raft entries kept decoded in memory (see
/// `FjallLogStore::recent`). etcd keeps its whole uncompacted log in memory;
/// this keeps enough for committed entries to be applied and appends for
/// followers to be built without reading the store back.
const RECENT_ENTRY_BYTES: u64 = 8 * 1024 * 1024;
/// What an entry costs in `recent` beyond its encoded size.
const RECENT_ENTRY_OVERHEAD: u64 = 96;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "data directory {} looks like an etcd data directory (it has member/); cairn cannot read it: restore an etcd snapshot into a new cairn directory instead", .0.display()
    )]
    EtcdDir(PathBuf),
    #[error(
        "data directory {} is not empty and is not a cairn data directory (no {FORMAT_FILE}); refusing to use it", .0.display()
    )]
    NotCairn(PathBuf),
    #[error("data directory {}: {FORMAT_FILE} says {found:?}, this cairn reads {FORMAT:?}", path.display())]
    Format { path: PathBuf, found: String },
    #[error("data directory {}: storage: {source}", dir.display())]
    Fjall { dir: PathBuf, source: fjall::Error },
    #[error("data directory {}: raft log entry {index} is corrupt ({reason}); refusing to start", dir.display())]
    Corrupt {
        dir: PathBuf,
        index: u64,
        reason: String,
    },
    #[error(
        "data directory {}: journal {} is damaged at byte {offset}: {reason}; fjall would drop everything from there on, acknowledged writes included; refusing to start (restore this member from a snapshot, or remove it from the cluster and add it back)", dir.display(), file.display()
    )]
    Journal {
        dir: PathBuf,
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("data directory {}: an earlier write failed; refusing further writes", .0.display())]
    Poisoned(PathBuf),
}

struct Shared {
    dir: PathBuf,
    db: Database,
    tables: [Keyspace; 4],
    raft_log: Keyspace,
    raft_state: Keyspace,
    agent_meta: Keyspace,
    poisoned: AtomicBool,
}

impl Shared {
    fn fjall(&self, e: fjall::Error) -> StoreError {
        StoreError::Fjall {
            dir: self.dir.clone(),
            source: e,
        }
    }

    fn table(&self, t: Table) -> &Keyspace {
        &self.tables[t as usize]
    }

    /// Commits a fjall batch; any failure poisons the store.
    fn commit(&self, batch: fjall::OwnedWriteBatch) -> Result<(), StoreError> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(StoreError::Poisoned(self.dir.clone()));
        }
        batch.commit().map_err(|e| {
            self.poisoned.store(true, Ordering::SeqCst);
            self.fjall(e)
        })
    }

    /// A write batch; `sync`: durable before `commit` returns.
    ///
    /// `fdatasync`, as etcd's WAL: it makes durable the data and every
    /// piece of metadata needed to read it back (the file's size, its
    /// block allocation) and leaves out only the inode's timestamps.
    fn batch(&self, sync: bool) -> fjall::OwnedWriteBatch {
        let b = self.db.batch();
        if sync {
            b.durability(Some(PersistMode::SyncData))
        } else {
            b
        }
    }
}

/// The open data directory. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    shared: Arc<Shared>,
    log: Arc<std::sync::Mutex<Option<FjallLogStore>>>,
}

impl Db {
    /// Opens (creating if needed) the data directory `dir`.
    pub fn open(dir: &Path) -> Result<Db, StoreError> {
        let io = |source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        if dir.exists() && !dir.is_dir() {
            return Err(io(std::io::Error::other("exists and is not a directory")));
        }
        if dir.join("member").is_dir() {
            return Err(StoreError::EtcdDir(dir.to_path_buf()));
        }
        std::fs::create_dir_all(dir).map_err(io)?;
        let marker = dir.join(FORMAT_FILE);
        match std::fs::read_to_string(&marker) {
            Ok(found) if found == FORMAT => {}
            Ok(found) => {
                return Err(StoreError::Format {
                    path: dir.to_path_buf(),
                    found,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A new directory may already hold what the agent makes
                // before opening its data: the local socket, the generated
                // peer certificate (`fixtures`), the snapshot inbox.
                for entry in std::fs::read_dir(dir).map_err(io)? {
                    let name = entry.map_err(io)?.file_name();
                    let name = name.to_string_lossy();
                    if !name.ends_with(".sock") && name != "fixtures" && name != "snap" {
                        return Err(StoreError::NotCairn(dir.to_path_buf()));
                    }
                }
                write_synced(&marker, FORMAT.as_bytes()).map_err(io)?;
                sync_dir(dir).map_err(io)?;
            }
            Err(e) => return Err(io(e)),
        }
        let fj = |e| StoreError::Fjall {
            dir: dir.to_path_buf(),
            source: e,
        };
        if let Err(damage) = journal::check(&dir.join("db")).map_err(io)? {
            return Err(StoreError::Journal {
                dir: dir.to_path_buf(),
                file: damage.file,
                offset: damage.offset,
                reason: damage.reason,
            });
        }
        let db = Database::builder(dir.join("db"))
            .cache_size(BLOCK_CACHE_BYTES)
            .open()
            .map_err(fj)?;
        let opts = || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES);
        let ks = |name: &str| db.keyspace(name, opts).map_err(fj);
        let tables = [
            ks(Table::Kv.name())?,
            ks(Table::Rev.name())?,
            ks(Table::Lease.name())?,
            ks(Table::Meta.name())?,
        ];
        debug_assert!(Table::ALL.iter().enumerate().all(|(i, t)| *t as usize == i));
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            tables,
            raft_log: ks("raft_log")?,
            raft_state: ks("raft_state")?,
            agent_meta: ks("agent_meta")?,
            db,
            poisoned: AtomicBool::new(false),
        });
        let log = FjallLogStore::open(shared.clone())?;
        Ok(Db {
            shared,
            log: Arc::new(std::sync::Mutex::new(Some(log))),
        })
    }

    pub fn mvcc_backend(&self) -> FjallBackend {
        FjallBackend {
            shared: self.shared.clone(),
        }
    }

    /// The raft log store, recovered and checked at open. It has one owner
    /// (the raft driver): a second call returns a fresh handle over the same
    /// keyspaces, re-read from disk.
    pub fn raft_log(&self) -> FjallLogStore {
        match self.log.lock().expect("log lock").take() {
            Some(l) => l,
            None => {
                FjallLogStore::open(self.shared.clone()).expect("the raft log was readable at open")
            }
        }
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.shared
            .agent_meta
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.shared.fjall(e))
    }

    /// Writes and fsyncs one agent record.
    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let mut b = self.shared.batch(true);
        b.insert(&self.shared.agent_meta, key.as_bytes(), value);
        self.shared.commit(b)
    }

    /// Removes and fsyncs one agent record.
    pub fn delete_meta(&self, key: &str) -> Result<(), StoreError> {
        let mut b = self.shared.batch(true);
        b.remove(&self.shared.agent_meta, key.as_bytes());
        self.shared.commit(b)
    }

    pub fn size_bytes(&self) -> u64 {
        self.shared.db.disk_space().unwrap_or(0)
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

// === MVCC backend ===

#[derive(Clone)]
pub struct FjallBackend {
    shared: Arc<Shared>,
}

pub struct FjallSnapshot {
    snap: fjall::Snapshot,
    shared: Arc<Shared>,
}

fn backend_err(e: impl std::fmt::Display) -> BackendError {
    BackendError(e.to_string())
}

impl Backend for FjallBackend {
    type Snapshot = FjallSnapshot;

    fn snapshot(&self) -> FjallSnapshot {
        FjallSnapshot {
            snap: self.shared.db.snapshot(),
            shared: self.shared.clone(),
        }
    }

    fn commit(&self, batch: Batch, durable: bool) -> Result<(), BackendError> {
        let mut b = self.shared.batch(durable);
        for (t, k, v) in batch.ops {
            let ks = self.shared.table(t);
            match v {
                Some(v) => b.insert(ks, k, v),
                None => b.remove(ks, k),
            }
        }
        self.shared.commit(b).map_err(backend_err)
    }

    /// The MVCC tables only, as etcd's `dbSize` is its bolt file and not
    /// its WAL: their flushed tables plus what their memtables hold (written
    /// to the journal, not flushed yet), so the figure grows with every
    /// write and not in memtable-sized steps.
    fn size_bytes(&self) -> u64 {
        use fjall::AbstractTree as _;
        self.shared
            .tables
            .iter()
            .map(|ks| ks.disk_space() + ks.tree.version_memtable_size_sum())
            .sum()
    }

    fn disk_available_bytes(&self) -> Option<u64> {
        rustix::fs::statvfs(&self.shared.dir)
            .ok()
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
    }

    /// Flushes the MVCC tables' memtables and merges each table's segments
    /// into one run, which drops the versions and tombstones compaction
    /// left behind. Reads and writes go on meanwhile (an LSM tree writes
    /// new files and swaps them in).
    fn defragment(&self) -> Result<(), BackendError> {
        for ks in &self.shared.tables {
            ks.rotate_memtable_and_wait().map_err(backend_err)?;
            ks.major_compact().map_err(backend_err)?;
        }
        Ok(())
    }
}

impl ReadView for FjallSnapshot {
    fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.snap
            .get(self.shared.table(t), key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(backend_err)
    }

    fn scan<'a>(
        &'a self,
        t: Table,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
    ) -> ScanIter<'a> {
        if end.is_some_and(|e| e <= start) {
            return Box::new(std::iter::empty());
        }
        let range: (Bound<Vec<u8>>, Bound<Vec<u8>>) = (
            Bound::Included(start.to_vec()),
            end.map_or(Bound::Unbounded, |e| Bound::Excluded(e.to_vec())),
        );
        let it = self.snap.range(self.shared.table(t), range);
        let map = |g: fjall::Guard| {
            g.into_inner()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(backend_err)
        };
        if reverse {
            Box::new(it.rev().map(map))
        } else {
            Box::new(it.map(map))
        }
    }
}

// === raft log ===

const HARD_STATE: &[u8] = b"hard_state";
const CONF_STATE: &[u8] = b"conf_state";
const COMPACTED: &[u8] = b"compacted";

/// The durable raft log. Terms of every stored entry are cached in memory.
pub struct FjallLogStore {
    shared: Arc<Shared>,
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry removed by compaction.
    compact_index: u64,
    compact_term: u64,
    /// Terms of entries `compact_index + 1 ..`.
    terms: VecDeque<u64>,
    /// The newest entries as they were appended, with their encoded
    /// sizes: a suffix of the log (the last one is the log's last), at most
    /// about `RECENT_ENTRY_BYTES`. Raft reads committed entries back to apply
    /// them, and entries to send to followers, mostly from the tail; from
    /// here that costs no storage read, checksum or decode. Empty after
    /// open: what is read from disk is always checked.
    recent: VecDeque<(Entry, u64)>,
    recent_bytes: u64,
}

fn encode_entry(e: &Entry) -> Vec<u8> {
    let body = e.write_to_bytes().expect("entry encodes");
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn decode_entry(raw: &[u8]) -> Result<Entry, String> {
    if raw.len() < 4 {
        return Err("shorter than its checksum".into());
    }
    let (crc, body) = raw.split_at(4);
    let want = u32::from_be_bytes(crc.try_into().expect("4 bytes"));
    if crc32fast::hash(body) != want {
        return Err("checksum mismatch".into());
    }
    Entry::parse_from_bytes(body).map_err(|e| format!("does not decode: {e}"))
}

/// What raft needs of a stored configuration to load it (it panics
/// otherwise): no member listed twice or both voter and learner, and the
/// joint-consensus fields only with an outgoing configuration.
fn check_conf_state(cs: &ConfState) -> Result<(), String> {
    use std::collections::HashSet;
    let set = |name: &str, ids: &[u64]| {
        let s: HashSet<u64> = ids.iter().copied().collect();
        if s.len() == ids.len() {
            Ok(s)
        } else {
            Err(format!("{name} lists a member twice"))
        }
    };
    let voters = set("voters", cs.get_voters())?;
    let learners = set("learners", cs.get_learners())?;
    let outgoing = set("outgoing voters", cs.get_voters_outgoing())?;
    let next = set("next learners", cs.get_learners_next())?;
    if outgoing.is_empty() && (cs.auto_leave || !next.is_empty()) {
        return Err("joint-consensus fields without an outgoing configuration".into());
    }
    if !learners.is_disjoint(&voters) || !learners.is_disjoint(&outgoing) {
        return Err("a member is both a voter and a learner".into());
    }
    if !next.is_disjoint(&learners)
        || next
            .iter()
            .any(|n| voters.contains(n) || !outgoing.contains(n))
    {
        return Err("a next learner is not an outgoing voter only".into());
    }
    Ok(())
}

fn parse<M: protobuf::Message>(raw: Option<fjall::Slice>) -> Result<Option<M>, String> {
    raw.map(|v| M::parse_from_bytes(&v).map_err(|e| e.to_string()))
        .transpose()
}

impl FjallLogStore {
    fn open(shared: Arc<Shared>) -> Result<FjallLogStore, StoreError> {
        let corrupt = |index, reason: String| StoreError::Corrupt {
            dir: shared.dir.clone(),
            index,
            reason,
        };
        let st = &shared.raft_state;
        let get = |k: &[u8]| st.get(k).map_err(|e| shared.fjall(e));
        let hard_state: HardState = parse(get(HARD_STATE)?)
            .map_err(|e| corrupt(0, format!("hard state: {e}")))?
            .unwrap_or_default();
        let conf_state: ConfState = parse(get(CONF_STATE)?)
            .map_err(|e| corrupt(0, format!("conf state: {e}")))?
            .unwrap_or_default();
        check_conf_state(&conf_state).map_err(|e| corrupt(0, format!("conf state: {e}")))?;
        let (compact_index, compact_term) = match get(COMPACTED)? {
            None => (0, 0),
            Some(v) if v.len() == 16 => (
                u64::from_be_bytes(v[..8].try_into().expect("8")),
                u64::from_be_bytes(v[8..].try_into().expect("8")),
            ),
            Some(_) => return Err(corrupt(0, "compaction record is malformed".into())),
        };
        if compact_index == u64::MAX {
            // No entry can follow it: the record is garbage, not a log.
            return Err(corrupt(0, "compaction record is out of range".into()));
        }
        let mut terms = VecDeque::new();
        let mut torn: Option<u64> = None;
        let start = (compact_index + 1).to_be_bytes();
        for g in shared.raft_log.range(start.as_slice()..) {
            let (k, v) = g.into_inner().map_err(|e| shared.fjall(e))?;
            let index = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| corrupt(0, format!("log key {k:?} is not an index")))?,
            );
            if let Some(bad) = torn {
                // An entry after a bad one: the bad one was not the tail.
                return Err(corrupt(bad, "checksum mismatch".into()));
            }
            let want = compact_index + 1 + terms.len() as u64;
            if index != want {
                return Err(corrupt(
                    want,
                    format!("missing (next stored entry is {index})"),
                ));
            }
            match decode_entry(&v) {
                // An entry stored under another entry's index would be
                // handed to raft as the wrong one.
                Ok(e) if e.index != index => {
                    return Err(corrupt(index, format!("holds entry {}", e.index)));
                }
                Ok(e) => terms.push_back(e.term),
                Err(_) => torn = Some(index),
            }
        }
        if let Some(index) = torn {
            tracing::warn!(
                dir = %shared.dir.display(),
                index,
                "dropping a torn raft log entry at the tail (never acknowledged)"
            );
            let mut b = shared.batch(true);
            b.remove(&shared.raft_log, index.to_be_bytes());
            shared.commit(b)?;
        }
        let mut hard_state = hard_state;
        let last = compact_index + terms.len() as u64;
        if hard_state.commit > last {
            // Only possible when a torn tail was dropped: the entry was never
            // acknowledged, and raft must not believe it committed.
            tracing::warn!(
                commit = hard_state.commit,
                last,
                "lowering the commit index to the log's end"
            );
            hard_state.commit = last;
        }
        if hard_state.commit < compact_index {
            // Compaction only removes applied, hence committed, entries; a
            // hard state behind it (raft would refuse to load it) is stale.
            tracing::warn!(
                commit = hard_state.commit,
                compact_index,
                "raising the commit index to the compacted index"
            );
            hard_state.commit = compact_index;
        }
        Ok(FjallLogStore {
            shared,
            hard_state,
            conf_state,
            compact_index,
            compact_term,
            terms,
            recent: VecDeque::new(),
            recent_bytes: 0,
        })
    }

    /// Index of the first entry in `recent` (`u64::MAX` when it is empty).
    fn recent_first(&self) -> u64 {
        self.recent.front().map_or(u64::MAX, |(e, _)| e.index)
    }

    /// Keeps `entries`, just stored from `first` on, as the new tail of
    /// `recent`, replacing what they replaced in the log.
    fn remember(&mut self, first: u64, entries: &[&Entry], sizes: &[u64]) {
        while self.recent.back().is_some_and(|(e, _)| e.index >= first) {
            let (_, size) = self.recent.pop_back().expect("checked");
            self.recent_bytes -= size + RECENT_ENTRY_OVERHEAD;
        }
        if self
            .recent
            .back()
            .is_some_and(|(e, _)| e.index + 1 != first)
        {
            self.forget_recent();
        }
        for (e, size) in entries.iter().zip(sizes) {
            self.recent.push_back(((*e).clone(), *size));
            self.recent_bytes += size + RECENT_ENTRY_OVERHEAD;
        }
        while self.recent_bytes > RECENT_ENTRY_BYTES {
            self.drop_oldest_recent();
        }
    }

    fn drop_oldest_recent(&mut self) {
        if let Some((_, size)) = self.recent.pop_front() {
            self.recent_bytes -= size + RECENT_ENTRY_OVERHEAD;
        }
    }

    fn forget_recent(&mut self) {
        self.recent.clear();
        self.recent_bytes = 0;
    }

    fn last(&self) -> u64 {
        self.compact_index + self.terms.len() as u64
    }

    fn err(e: impl std::fmt::Display) -> StorageError {
        StorageError(e.to_string())
    }

    fn read_entry(&self, index: u64) -> raft::Result<Entry> {
        let raw = self
            .shared
            .raft_log
            .get(index.to_be_bytes())
            .map_err(|e| raft::Error::Store(raft::StorageError::Other(Box::new(e))))?
            .ok_or(raft::Error::Store(raft::StorageError::Unavailable))?;
        decode_entry(&raw).map_err(|reason| {
            tracing::error!(index, %reason, "raft log entry is corrupt");
            raft::Error::Store(raft::StorageError::Other(
                format!("raft log entry {index} is corrupt: {reason}").into(),
            ))
        })
    }
}

impl Storage for FjallLogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.compact_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let max = max_size.into();
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        let cached = self.recent_first();
        for index in low..high {
            let (e, entry_size) = if index >= cached {
                // `high <= last + 1` and `recent` ends at the last entry.
                let (e, s) = &self.recent[(index - cached) as usize];
                (e.clone(), *s)
            } else {
                let e = self.read_entry(index)?;
                let s = protobuf::Message::compute_size(&e) as u64;
                (e, s)
            };
            size += entry_size;
            if !out.is_empty() && max.is_some_and(|m| size > m) {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.compact_index {
            return Ok(self.compact_term);
        }
        if idx < self.compact_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        self.terms
            .get((idx - self.compact_index - 1) as usize)
            .copied()
            .ok_or(raft::Error::Store(raft::StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.compact_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<raft::eraftpb::Snapshot> {
        // The state machine lives in the same database; a snapshot for a
        // peer is streamed separately. Here only its metadata.
        let mut s = raft::eraftpb::Snapshot::default();
        let md = s.mut_metadata();
        md.index = self.compact_index;
        md.term = self.compact_term;
        md.set_conf_state(self.conf_state.clone());
        Ok(s)
    }
}

impl LogStore for FjallLogStore {
    fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        sync: bool,
    ) -> Result<(), StorageError> {
        let entries: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.index > self.compact_index)
            .collect();
        let mut b = self.shared.batch(sync);
        let mut sizes = Vec::with_capacity(entries.len());
        if let Some(first) = entries.first() {
            let first = first.index;
            if first > self.last() + 1 {
                return Err(StorageError(format!(
                    "append at {first} leaves a gap after {}",
                    self.last()
                )));
            }
            let new_last = first + entries.len() as u64 - 1;
            for e in &entries {
                let raw = encode_entry(e);
                sizes.push(raw.len() as u64 - 4);
                b.insert(&self.shared.raft_log, e.index.to_be_bytes(), raw);
            }
            for stale in new_last + 1..=self.last() {
                b.remove(&self.shared.raft_log, stale.to_be_bytes());
            }
        }
        if let Some(hs) = hard_state {
            b.insert(
                &self.shared.raft_state,
                HARD_STATE,
                hs.write_to_bytes().map_err(Self::err)?,
            );
        }
        self.shared.commit(b).map_err(Self::err)?;
        if let Some(first) = entries.first() {
            self.terms
                .truncate((first.index - self.compact_index - 1) as usize);
            self.terms.extend(entries.iter().map(|e| e.term));
            self.remember(first.index, &entries, &sizes);
        }
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), StorageError> {
        let mut b = self.shared.batch(true);
        b.insert(
            &self.shared.raft_state,
            CONF_STATE,
            cs.write_to_bytes().map_err(Self::err)?,
        );
        self.shared.commit(b).map_err(Self::err)?;
        self.conf_state = cs.clone();
        Ok(())
    }

    fn compact(&mut self, index: u64) -> Result<(), StorageError> {
        if index <= self.compact_index {
            return Ok(());
        }
        if index > self.last() {
            return Err(StorageError(format!(
                "cannot compact to {index}: the log ends at {}",
                self.last()
            )));
        }
        let term = self.term(index).map_err(Self::err)?;
        let mut b = self.shared.batch(false);
        for i in self.compact_index + 1..=index {
            b.remove(&self.shared.raft_log, i.to_be_bytes());
        }
        let mut rec = index.to_be_bytes().to_vec();
        rec.extend_from_slice(&term.to_be_bytes());
        b.insert(&self.shared.raft_state, COMPACTED, rec);
        self.shared.commit(b).map_err(Self::err)?;
        self.terms.drain(..(index - self.compact_index) as usize);
        while self.recent_first() <= index {
            self.drop_oldest_recent();
        }
        self.compact_index = index;
        self.compact_term = term;
        Ok(())
    }

    fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), StorageError> {
        let mut b = self.shared.batch(true);
        for i in self.compact_index + 1..=self.last() {
            b.remove(&self.shared.raft_log, i.to_be_bytes());
        }
        let mut rec = meta.index.to_be_bytes().to_vec();
        rec.extend_from_slice(&meta.term.to_be_bytes());
        b.insert(&self.shared.raft_state, COMPACTED, rec);
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        b.insert(
            &self.shared.raft_state,
            HARD_STATE,
            hs.write_to_bytes().map_err(Self::err)?,
        );
        let cs = meta.get_conf_state();
        b.insert(
            &self.shared.raft_state,
            CONF_STATE,
            cs.write_to_bytes().map_err(Self::err)?,
        );
        self.shared.commit(b).map_err(Self::err)?;
        self.terms.clear();
        self.forget_recent();
        self.compact_index = meta.index;
        self.compact_term = meta.term;
        self.hard_state = hs;
        self.conf_state = cs.clone();
        Ok(())
    }
}

pub mod fuzzing;
pub mod journal;

#[cfg(test)]
mod tests;
