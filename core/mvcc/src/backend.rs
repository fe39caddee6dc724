//! The storage trait the MVCC store runs on, and an in-memory implementation.

/// The fixed set of keyspaces the MVCC layer uses. A backend maps each to a
/// separate ordered keyspace (fjall keyspace, BTreeMap, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// key-major versions: `encode(user_key) | !revision` -> encoded version
    Kv,
    /// revision-major index for watch replay: `revision | sub` -> user key
    Rev,
    /// leases and their attached keys
    Lease,
    /// current revision, compact revision, applied raft index, ...
    Meta,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::Kv, Table::Rev, Table::Lease, Table::Meta];
    pub fn name(self) -> &'static str {
        match self {
            Table::Kv => "kv",
            Table::Rev => "rev",
            Table::Lease => "lease",
            Table::Meta => "meta",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct BackendError(pub String);

/// An atomic set of writes (`None` value = delete).
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub ops: Vec<(Table, Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub fn put(&mut self, t: Table, k: Vec<u8>, v: Vec<u8>) {
        self.ops.push((t, k, Some(v)));
    }
    pub fn delete(&mut self, t: Table, k: Vec<u8>) {
        self.ops.push((t, k, None));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

pub type KvPair = (Vec<u8>, Vec<u8>);
pub type ScanIter<'a> = Box<dyn Iterator<Item = Result<KvPair, BackendError>> + 'a>;

/// A point-in-time read view.
pub trait ReadView {
    fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError>;
    /// Entries with `start <= key < end` (`end = None`: no upper bound), in key
    /// order, or in reverse key order when `reverse`.
    fn scan<'a>(
        &'a self,
        t: Table,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
    ) -> ScanIter<'a>;
}

pub trait Backend: Send + Sync + 'static {
    type Snapshot: ReadView + Send + Sync + 'static;
    fn snapshot(&self) -> Self::Snapshot;
    /// Applies the batch atomically. `durable`: fsync before returning.
    fn commit(&self, batch: Batch, durable: bool) -> Result<(), BackendError>;
    /// Approximate bytes the MVCC tables take (Status.dbSize, the quota).
    fn size_bytes(&self) -> u64;
    /// Gives the space of removed versions back (Maintenance.Defragment).
    /// Nothing to do for a backend that reclaims space by itself.
    fn defragment(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Bytes left to unprivileged writers on the storage's filesystem;
    /// `None` where that means nothing (memory).
    fn disk_available_bytes(&self) -> Option<u64> {
        None
    }
}

/// In-memory backend for tests and the simulator. Snapshots are copy-on-write.
#[derive(Default)]
pub struct MemBackend {
    inner: std::sync::RwLock<std::sync::Arc<MemTables>>,
}

type MemTables = std::collections::BTreeMap<Table, std::collections::BTreeMap<Vec<u8>, Vec<u8>>>;

pub struct MemSnapshot(std::sync::Arc<MemTables>);

impl Backend for MemBackend {
    type Snapshot = MemSnapshot;
    fn snapshot(&self) -> MemSnapshot {
        MemSnapshot(self.inner.read().expect("lock").clone())
    }
    fn commit(&self, batch: Batch, _durable: bool) -> Result<(), BackendError> {
        let mut g = self.inner.write().expect("lock");
        let tables = std::sync::Arc::make_mut(&mut g);
        for (t, k, v) in batch.ops {
            let tab = tables.entry(t).or_default();
            match v {
                Some(v) => {
                    tab.insert(k, v);
                }
                None => {
                    tab.remove(&k);
                }
            }
        }
        Ok(())
    }
    fn size_bytes(&self) -> u64 {
        let g = self.inner.read().expect("lock");
        g.values()
            .flat_map(|t| t.iter())
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }
}

impl ReadView for MemSnapshot {
    fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.0.get(&t).and_then(|m| m.get(key)).cloned())
    }
    fn scan<'a>(
        &'a self,
        t: Table,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
    ) -> ScanIter<'a> {
        use std::ops::Bound;
        let Some(m) = self.0.get(&t) else {
            return Box::new(std::iter::empty());
        };
        let lo = Bound::Included(start.to_vec());
        let hi = match end {
            Some(e) => Bound::Excluded(e.to_vec()),
            None => Bound::Unbounded,
        };
        if matches!((&lo, &hi), (Bound::Included(s), Bound::Excluded(e)) if s >= e) {
            return Box::new(std::iter::empty());
        }
        let it = m.range((lo, hi)).map(|(k, v)| Ok((k.clone(), v.clone())));
        if reverse {
            Box::new(it.rev())
        } else {
            Box::new(it)
        }
    }
}
