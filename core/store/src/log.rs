//! `cairn_raft::LogStore` over the fjall keyspaces `raft_log` and `raft_state`.
//!
//! `raft_log`: big-endian u64 index -> crc32 (4 bytes, big-endian) of the
//! protobuf-encoded `Entry`, then those bytes. `raft_state`: `hard_state`
//! and `conf_state` (same crc framing) and `compacted` (the compaction point:
//! index and term, big-endian u64 each; the log starts right after it).
use std::path::Path;
use std::sync::{Arc, MutexGuard};

use cairn_raft::{LogStore, StorageError};
use fjall::{Database, Keyspace, PersistMode};
use protobuf::Message;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};

use crate::{Inner, StoreError};

const HARD_STATE: &[u8] = b"hard_state";
const CONF_STATE: &[u8] = b"conf_state";
const COMPACTED: &[u8] = b"compacted";

/// In-memory view of the log's bounds and the raft state (the source of
/// truth is on disk; this mirrors it after every successful write).
pub(crate) struct LogState {
    /// Last compacted index (the log's first index is this + 1).
    compact_index: u64,
    compact_term: u64,
    /// Last index in the log (= `compact_index` when the log is empty).
    last: u64,
    last_term: u64,
    hard_state: HardState,
    conf_state: ConfState,
    /// Set after a failed write: nothing more is written.
    pub(crate) poisoned: Option<String>,
}

fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes.len() + 4);
    v.extend_from_slice(&crc32fast::hash(bytes).to_be_bytes());
    v.extend_from_slice(bytes);
    v
}

fn unframe(raw: &[u8]) -> Result<&[u8], String> {
    if raw.len() < 4 {
        return Err(format!("value too short ({} bytes)", raw.len()));
    }
    let (crc, body) = raw.split_at(4);
    let want = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let got = crc32fast::hash(body);
    if want != got {
        return Err(format!(
            "checksum mismatch: stored {want:08x}, computed {got:08x}"
        ));
    }
    Ok(body)
}

fn decode<M: Message>(raw: &[u8]) -> Result<M, String> {
    let body = unframe(raw)?;
    M::parse_from_bytes(body).map_err(|e| format!("undecodable protobuf: {e}"))
}

fn encode<M: Message>(m: &M) -> Result<Vec<u8>, String> {
    m.write_to_bytes()
        .map(|b| frame(&b))
        .map_err(|e| format!("encode: {e}"))
}

fn decode_entry(index: u64, raw: &[u8]) -> Result<Entry, String> {
    let e: Entry = decode(raw)?;
    if e.index != index {
        return Err(format!("stored under index {index} but holds {}", e.index));
    }
    Ok(e)
}

fn key_index(key: &[u8]) -> Option<u64> {
    let b: [u8; 8] = key.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// Reads the raft state and checks every stored entry. A last entry that
/// fails its checksum (torn write) is removed with a warning; any other bad
/// entry or a gap is refused.
pub(crate) fn load(
    path: &Path,
    db: &Database,
    raft_log: &Keyspace,
    raft_state: &Keyspace,
) -> Result<LogState, StoreError> {
    let corrupt = |what: String| StoreError::CorruptLog {
        path: path.to_path_buf(),
        what,
    };
    let fj = |source: fjall::Error| StoreError::Fjall {
        path: path.to_path_buf(),
        source,
    };
    let mut hard_state = match raft_state.get(HARD_STATE).map_err(fj)? {
        Some(v) => decode::<HardState>(&v).map_err(|e| corrupt(format!("hard state: {e}")))?,
        None => HardState::default(),
    };
    let conf_state = match raft_state.get(CONF_STATE).map_err(fj)? {
        Some(v) => decode::<ConfState>(&v).map_err(|e| corrupt(format!("conf state: {e}")))?,
        None => ConfState::default(),
    };
    let (compact_index, compact_term) = match raft_state.get(COMPACTED).map_err(fj)? {
        Some(v) if v.len() == 16 => (
            key_index(&v[..8]).unwrap_or_default(),
            key_index(&v[8..]).unwrap_or_default(),
        ),
        Some(v) => {
            return Err(corrupt(format!(
                "compaction record has {} bytes, expected 16",
                v.len()
            )));
        }
        None => (0, 0),
    };

    let mut stored: Vec<(u64, Result<u64, String>)> = Vec::new();
    for g in raft_log.iter() {
        let (k, v) = g.into_inner().map_err(fj)?;
        let index =
            key_index(&k).ok_or_else(|| corrupt(format!("malformed key of {} bytes", k.len())))?;
        stored.push((index, decode_entry(index, &v).map(|e| e.term)));
    }

    let mut b = db.batch().durability(Some(PersistMode::SyncAll));
    let mut dirty = false;
    let mut last = compact_index;
    let mut last_term = compact_term;
    let n = stored.len();
    for (pos, (index, res)) in stored.into_iter().enumerate() {
        if index <= compact_index {
            // left over below the compaction point: not part of the log
            b.remove(raft_log, index.to_be_bytes());
            dirty = true;
            continue;
        }
        if index != last + 1 {
            return Err(corrupt(format!(
                "entry {} is missing (next stored entry is {index})",
                last + 1
            )));
        }
        match res {
            Ok(term) => {
                last = index;
                last_term = term;
            }
            Err(reason) if pos + 1 == n => {
                tracing::warn!(
                    path = %path.display(),
                    index,
                    %reason,
                    "raft log: last entry is torn, truncating it"
                );
                b.remove(raft_log, index.to_be_bytes());
                dirty = true;
            }
            Err(reason) => {
                return Err(StoreError::CorruptLogEntry {
                    path: path.to_path_buf(),
                    index,
                    reason,
                });
            }
        }
    }
    if dirty {
        b.commit().map_err(fj)?;
    }
    if hard_state.commit > last {
        tracing::warn!(
            path = %path.display(),
            commit = hard_state.commit,
            last,
            "raft log: commit index is past the last entry, lowering it"
        );
        hard_state.commit = last;
    }
    Ok(LogState {
        compact_index,
        compact_term,
        last,
        last_term,
        hard_state,
        conf_state,
        poisoned: None,
    })
}

/// The durable raft log. Handles from the same [`crate::Db`] share state.
#[derive(Clone)]
pub struct FjallLogStore {
    inner: Arc<Inner>,
}

fn other(msg: String) -> raft::Error {
    raft::Error::Store(raft::StorageError::Other(msg.into()))
}

impl FjallLogStore {
    pub(crate) fn new(inner: Arc<Inner>) -> FjallLogStore {
        FjallLogStore { inner }
    }

    fn state(&self) -> MutexGuard<'_, LogState> {
        self.inner.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_entry(&self, index: u64) -> Result<Entry, String> {
        let raw = self
            .inner
            .raft_log
            .get(index.to_be_bytes())
            .map_err(|e| format!("read entry {index}: {e}"))?
            .ok_or_else(|| format!("entry {index} is missing"))?;
        decode_entry(index, &raw).map_err(|e| format!("entry {index} is corrupt: {e}"))
    }

    fn term_locked(&self, st: &LogState, idx: u64) -> raft::Result<u64> {
        if idx == st.compact_index {
            return Ok(st.compact_term);
        }
        if idx < st.compact_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > st.last {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        if idx == st.last {
            return Ok(st.last_term);
        }
        self.read_entry(idx).map(|e| e.term).map_err(other)
    }

    fn check_poison(st: &LogState) -> Result<(), StorageError> {
        match &st.poisoned {
            Some(why) => Err(StorageError(format!(
                "log store is unusable after an earlier write failure: {why}"
            ))),
            None => Ok(()),
        }
    }

    fn commit(&self, st: &mut LogState, b: fjall::OwnedWriteBatch) -> Result<(), StorageError> {
        b.commit().map_err(|e| {
            let msg = format!("write to {}: {e}", self.inner.path.display());
            st.poisoned = Some(msg.clone());
            StorageError(msg)
        })
    }
}

impl Storage for FjallLogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let st = self.state();
        Ok(RaftState::new(st.hard_state.clone(), st.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        let st = self.state();
        if low <= st.compact_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > st.last + 1 {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        if low >= high {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut size = 0u64;
        let mut expected = low;
        for g in self
            .inner
            .raft_log
            .range(low.to_be_bytes()..high.to_be_bytes())
        {
            let (k, v) = g
                .into_inner()
                .map_err(|e| other(format!("read raft log: {e}")))?;
            let index = key_index(&k).ok_or_else(|| other("malformed raft log key".into()))?;
            if index != expected {
                return Err(other(format!("raft log entry {expected} is missing")));
            }
            let e = decode_entry(index, &v)
                .map_err(|r| other(format!("raft log entry {index} is corrupt: {r}")))?;
            size += u64::from(e.compute_size());
            if !out.is_empty() && max_size.is_some_and(|m| m != raft::NO_LIMIT && size > m) {
                return Ok(out);
            }
            out.push(e);
            expected += 1;
        }
        if expected != high {
            return Err(other(format!("raft log entry {expected} is missing")));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let st = self.state();
        self.term_locked(&st, idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.state().compact_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.state().last)
    }

    /// The state machine lives in the same database, so the snapshot only
    /// carries the compaction point and the configuration.
    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let st = self.state();
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = st.compact_index;
        meta.term = st.compact_term;
        meta.set_conf_state(st.conf_state.clone());
        Ok(snap)
    }
}

impl LogStore for FjallLogStore {
    fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        sync: bool,
    ) -> Result<(), StorageError> {
        let mut st = self.state();
        Self::check_poison(&st)?;
        if entries.is_empty() && hard_state.is_none() {
            if sync {
                let r = self.inner.db.persist(PersistMode::SyncAll);
                if let Err(e) = r {
                    let msg = format!("sync {}: {e}", self.inner.path.display());
                    st.poisoned = Some(msg.clone());
                    return Err(StorageError(msg));
                }
            }
            return Ok(());
        }
        let mode = if sync {
            PersistMode::SyncAll
        } else {
            PersistMode::Buffer
        };
        let mut b = self.inner.db.batch().durability(Some(mode));
        let mut new_last = None;
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            if first.index <= st.compact_index {
                return Err(StorageError(format!(
                    "append at index {} would overwrite the compacted log (compacted through {})",
                    first.index, st.compact_index
                )));
            }
            if first.index > st.last + 1 {
                return Err(StorageError(format!(
                    "append at index {} leaves a gap after the last index {}",
                    first.index, st.last
                )));
            }
            for (i, e) in entries.iter().enumerate() {
                if e.index != first.index + i as u64 {
                    return Err(StorageError(format!(
                        "appended entries are not contiguous at index {}",
                        e.index
                    )));
                }
                let bytes = encode(e).map_err(StorageError)?;
                b.insert(&self.inner.raft_log, e.index.to_be_bytes(), bytes);
            }
            // the old suffix past the new entries conflicts: remove it
            for i in last.index + 1..=st.last {
                b.remove(&self.inner.raft_log, i.to_be_bytes());
            }
            new_last = Some((last.index, last.term));
        }
        if let Some(hs) = hard_state {
            let bytes = encode(hs).map_err(StorageError)?;
            b.insert(&self.inner.raft_state, HARD_STATE, bytes);
        }
        self.commit(&mut st, b)?;
        if let Some((idx, term)) = new_last {
            st.last = idx;
            st.last_term = term;
        }
        if let Some(hs) = hard_state {
            st.hard_state = hs.clone();
        }
        Ok(())
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), StorageError> {
        let mut st = self.state();
        Self::check_poison(&st)?;
        let mut b = self.inner.db.batch().durability(Some(PersistMode::SyncAll));
        b.insert(
            &self.inner.raft_state,
            CONF_STATE,
            encode(cs).map_err(StorageError)?,
        );
        self.commit(&mut st, b)?;
        st.conf_state = cs.clone();
        Ok(())
    }

    fn compact(&mut self, index: u64) -> Result<(), StorageError> {
        let mut st = self.state();
        Self::check_poison(&st)?;
        if index <= st.compact_index {
            return Ok(());
        }
        if index > st.last {
            return Err(StorageError(format!(
                "cannot compact through {index}: the last index is {}",
                st.last
            )));
        }
        let term = self
            .term_locked(&st, index)
            .map_err(|e| StorageError(format!("compact through {index}: {e}")))?;
        let mut b = self.inner.db.batch().durability(Some(PersistMode::Buffer));
        for i in st.compact_index + 1..=index {
            b.remove(&self.inner.raft_log, i.to_be_bytes());
        }
        let mut rec = Vec::with_capacity(16);
        rec.extend_from_slice(&index.to_be_bytes());
        rec.extend_from_slice(&term.to_be_bytes());
        b.insert(&self.inner.raft_state, COMPACTED, rec);
        self.commit(&mut st, b)?;
        st.compact_index = index;
        st.compact_term = term;
        Ok(())
    }
}
