//! The MVCC store: etcd's revisions, versions and operations.
use cairn_proto::cairnpb::Command;
use cairn_proto::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, LeaseGrantResponse, LeaseRevokeResponse, PutResponse,
    RangeRequest, RangeResponse, TxnResponse,
};
use cairn_proto::mvccpb::Event;

use crate::{Backend, BackendError, MvccError};

/// What applying one command produced.
#[derive(Debug)]
pub struct Applied {
    /// The response, or the deterministic etcd error the command failed with
    /// (lease not found, compacted, ...). Headers carry only `revision`.
    pub result: Result<Response, MvccError>,
    /// The store revision after this command.
    pub revision: i64,
    /// Events of this command in order, each with `prev_kv` filled when a
    /// previous version existed. Empty when nothing changed.
    pub events: Vec<Event>,
    /// Leases granted by this command: (id, ttl seconds).
    pub leases_granted: Vec<(i64, i64)>,
    /// Leases revoked by this command.
    pub leases_revoked: Vec<i64>,
    /// Set when this command logically compacted the store to this revision.
    pub compacted: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: i64,
    /// granted TTL in seconds
    pub ttl: i64,
}

pub struct Mvcc<B: Backend> {
    backend: B,
}

impl<B: Backend> Mvcc<B> {
    /// Opens the store, loading current/compact revision and applied index.
    pub fn open(backend: B) -> Result<Self, MvccError> {
        let _ = &backend;
        todo!()
    }
    pub fn backend(&self) -> &B {
        &self.backend
    }
    /// Latest revision (1 on an empty store, as etcd).
    pub fn current_revision(&self) -> i64 {
        todo!()
    }
    pub fn compact_revision(&self) -> i64 {
        todo!()
    }
    /// Raft index of the last applied command (0 when none).
    pub fn applied_index(&self) -> u64 {
        todo!()
    }
    /// Range with every etcd option. `header.revision` is set; other header
    /// fields are the caller's.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        let _ = req;
        todo!()
    }
    /// Applies one committed command. Called by one thread in log order.
    /// `Err` only for storage failures (fatal).
    pub fn apply(&self, index: u64, cmd: &Command) -> Result<Applied, BackendError> {
        let _ = (index, cmd);
        todo!()
    }
    /// Records `index` as applied for a raft entry that carries no command.
    pub fn mark_applied(&self, index: u64) -> Result<(), BackendError> {
        let _ = index;
        todo!()
    }
    /// Events with revision in `[from, to]`, in revision order, at most
    /// `limit` revisions' worth (whole revisions only). `prev_kv` filled when
    /// `with_prev_kv`. `Compacted` when `from <= compact_revision` and
    /// `from` is not greater than the compaction point.
    pub fn events(
        &self,
        from: i64,
        to: i64,
        limit: usize,
        with_prev_kv: bool,
    ) -> Result<Vec<Event>, MvccError> {
        let _ = (from, to, limit, with_prev_kv);
        todo!()
    }
    /// Removes versions made unreachable by the last logical compaction, at
    /// most `budget` entries per call. Returns true when nothing is left.
    pub fn compact_physical(&self, budget: usize) -> Result<bool, BackendError> {
        let _ = budget;
        todo!()
    }
    pub fn lease(&self, id: i64) -> Result<Option<LeaseInfo>, BackendError> {
        let _ = id;
        todo!()
    }
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, BackendError> {
        let _ = id;
        todo!()
    }
    pub fn leases(&self) -> Result<Vec<LeaseInfo>, BackendError> {
        todo!()
    }
    /// etcd's HashKV: (hash, compact_revision, hash_revision). `rev = 0`
    /// hashes at the current revision.
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64), MvccError> {
        let _ = rev;
        todo!()
    }
    /// Hash of every table (Maintenance.Hash).
    pub fn hash_all(&self) -> Result<u32, BackendError> {
        todo!()
    }
}
