//! The consensus node: raft-rs driven by one thread that owns the `RawNode`.
//!
//! Callers [`Node::propose`] opaque command bytes and get back the state
//! machine's output once the entry is committed, fsynced and applied;
//! [`Node::read_index`] gives a linearizable read point. Storage is the
//! [`LogStore`] trait (fjall in `cairn-store`, [`MemLogStore`] in tests).
//!
//! I/O ordering (design invariant 2): entries and hard state are persisted
//! with `sync = true` before any message that depends on them is sent, before
//! entries are considered committed locally, and before any client is
//! answered. Many proposals received together share one sync (group commit).
#![forbid(unsafe_code)]

use std::time::Duration;

mod log;
mod manual;
mod mem;
mod node;
pub mod planted;

pub use manual::{Answer, ManualNode};
pub use mem::MemLogStore;
pub use node::{Node, StartError, boot_nonce, write_bootstrap};

pub use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfState, Entry, HardState, Message, MessageType, Snapshot,
    SnapshotMetadata,
};

/// Carries raft messages to peers. Called on the driver thread: it must not
/// block (queue and drop when full; raft retransmits what is lost).
pub trait Transport: Send + 'static {
    fn send(&mut self, msgs: Vec<Message>);
}

/// The transport of a node with no peers.
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&mut self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            tracing::debug!(count = msgs.len(), "no transport: dropping raft messages");
        }
    }
}

/// The replicated state machine, applied on the driver thread.
pub trait StateMachine: Send + 'static {
    type Output: Send + 'static;
    /// Applies a committed normal entry carrying a proposal's bytes.
    fn apply(&mut self, index: u64, term: u64, data: &[u8]) -> Self::Output;
    /// Applies consecutive committed normal entries (index, term, a
    /// proposal's bytes), in log order: one output per entry, as `apply`
    /// would give. The default applies them one by one; a state machine
    /// can write them to its storage as one batch.
    fn apply_batch(&mut self, entries: &[(u64, u64, &[u8])]) -> Vec<Self::Output> {
        entries
            .iter()
            .map(|&(index, term, data)| self.apply(index, term, data))
            .collect()
    }
    /// Notes an entry with nothing to apply (a leader's no-op).
    fn apply_empty(&mut self, index: u64);
    /// Applies a committed membership change; `cs` is the configuration it
    /// produced. Called only for entries above `applied_index`.
    fn apply_conf_change(&mut self, index: u64, cc: &ConfChange, cs: &ConfState) -> Self::Output;
    /// Replaces the whole state with the one a leader sent (`snap.data` is
    /// what the transport made of the streamed content). Afterwards
    /// `applied_index` is at least the snapshot's index.
    fn restore(&mut self, snap: &Snapshot) -> Result<(), String>;
    /// Index of the last entry applied (restored from storage at start).
    fn applied_index(&self) -> u64;
}

#[derive(Debug, thiserror::Error)]
#[error("log storage: {0}")]
pub struct StorageError(pub String);

/// Durable raft log and hard state. Implementations must verify a checksum of
/// every entry they read back and refuse to go on after a failed sync.
pub trait LogStore: raft::Storage + Send + 'static {
    /// Appends entries (replacing any conflicting suffix) and optionally the
    /// hard state, in one write; `sync` forces an fsync before returning.
    fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        sync: bool,
    ) -> Result<(), StorageError>;
    /// Sets the conf state (single-voter bootstrap; conf changes later).
    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), StorageError>;
    /// Drops entries up to and including `index` (already applied).
    fn compact(&mut self, index: u64) -> Result<(), StorageError>;
    /// Replaces the log by a snapshot's position: every entry is dropped,
    /// the log continues after `meta.index`, the conf state is the
    /// snapshot's and the commit index at least its index. Synced.
    fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), StorageError>;
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    pub heartbeat_interval: Duration,
    /// In heartbeat ticks, as etcd derives it from `--election-timeout`.
    pub election_ticks: usize,
    /// Proposals waiting for commit; beyond it `propose` fails with
    /// `TooManyRequests` (etcd: "etcdserver: too many requests").
    pub max_pending_proposals: usize,
    /// Keep this many applied entries before compacting the log.
    pub snapshot_count: u64,
    /// The initial members of a new cluster, as conf changes (each carrying
    /// its member record in `context`); they become the first log entries
    /// on every member alike, as etcd bootstraps. Empty for a member that
    /// joins an existing cluster: it learns everything from the leader.
    pub bootstrap: Vec<ConfChange>,
    /// Told how long each synced append of entries and hard state took
    /// (the agent's `etcd_disk_wal_fsync_duration_seconds`).
    pub on_sync: Option<SyncObserver>,
}

/// A callback for the duration of each synced append.
#[derive(Clone)]
pub struct SyncObserver(pub std::sync::Arc<dyn Fn(Duration) + Send + Sync>);

impl std::fmt::Debug for SyncObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncObserver")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u64,
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// This member was removed from the cluster; it stops.
    pub removed: bool,
    /// Set when the node stopped on a storage failure: nothing more is
    /// proposed or applied, and the process should exit.
    pub fatal: Option<String>,
}

#[derive(Debug, thiserror::Error, Clone)]
#[non_exhaustive]
pub enum ProposeError {
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: a membership change is already in progress")]
    ConfChangePending,
    #[error("etcdserver: not leader")]
    NotLeader,
}

/// Replication progress seen by the leader: (member, highest index known to
/// be on it), the leader itself included.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub leader: u64,
    pub matched: Vec<(u64, u64)>,
    /// Members the leader heard from within the last election timeout.
    pub active: Vec<u64>,
}
