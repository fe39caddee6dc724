//! `cairn_mvcc::Backend` over the fjall keyspaces `kv`, `rev`, `lease`, `meta`.
use std::ops::Bound;
use std::sync::Arc;

use cairn_mvcc::backend::ScanIter;
use cairn_mvcc::{Backend, BackendError, Batch, ReadView, Table};
use fjall::{Keyspace, PersistMode, Readable};

use crate::Inner;

fn table_index(t: Table) -> usize {
    match t {
        Table::Kv => 0,
        Table::Rev => 1,
        Table::Lease => 2,
        Table::Meta => 3,
    }
}

#[derive(Clone)]
pub struct FjallBackend {
    inner: Arc<Inner>,
}

impl FjallBackend {
    pub(crate) fn new(inner: Arc<Inner>) -> FjallBackend {
        FjallBackend { inner }
    }

    fn keyspace(&self, t: Table) -> &Keyspace {
        &self.inner.tables[table_index(t)]
    }

    fn err(&self, what: &str, e: fjall::Error) -> BackendError {
        BackendError(format!("{what} in {}: {e}", self.inner.path.display()))
    }
}

/// A point-in-time view of the MVCC tables; later commits are not visible.
pub struct FjallSnapshot {
    snap: fjall::Snapshot,
    inner: Arc<Inner>,
}

impl Backend for FjallBackend {
    type Snapshot = FjallSnapshot;

    fn snapshot(&self) -> FjallSnapshot {
        FjallSnapshot {
            snap: self.inner.db.snapshot(),
            inner: self.inner.clone(),
        }
    }

    fn commit(&self, batch: Batch, durable: bool) -> Result<(), BackendError> {
        if batch.is_empty() && !durable {
            return Ok(());
        }
        let mode = if durable {
            PersistMode::SyncAll
        } else {
            PersistMode::Buffer
        };
        if batch.is_empty() {
            return self
                .inner
                .db
                .persist(mode)
                .map_err(|e| self.err("persist", e));
        }
        let mut b = self.inner.db.batch().durability(Some(mode));
        for (t, k, v) in batch.ops {
            let ks = self.keyspace(t);
            match v {
                Some(v) => b.insert(ks, k, v),
                None => b.remove(ks, k),
            }
        }
        b.commit().map_err(|e| self.err("commit", e))
    }

    fn size_bytes(&self) -> u64 {
        self.inner.db.disk_space().unwrap_or(0)
    }
}

impl ReadView for FjallSnapshot {
    fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.snap
            .get(&self.inner.tables[table_index(t)], key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| {
                BackendError(format!(
                    "read {} in {}: {e}",
                    t.name(),
                    self.inner.path.display()
                ))
            })
    }

    fn scan<'a>(
        &'a self,
        t: Table,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
    ) -> ScanIter<'a> {
        if let Some(e) = end
            && start >= e
        {
            return Box::new(std::iter::empty());
        }
        let lo = Bound::Included(start.to_vec());
        let hi = match end {
            Some(e) => Bound::Excluded(e.to_vec()),
            None => Bound::Unbounded,
        };
        let iter = self
            .snap
            .range::<Vec<u8>, _>(&self.inner.tables[table_index(t)], (lo, hi));
        let path = self.inner.path.clone();
        let map = move |g: fjall::Guard| {
            g.into_inner()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(|e| BackendError(format!("scan {} in {}: {e}", t.name(), path.display())))
        };
        if reverse {
            Box::new(iter.rev().map(map))
        } else {
            Box::new(iter.map(map))
        }
    }
}
