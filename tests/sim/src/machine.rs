//! The state machine of a simulated node: cairn's MVCC store (the same
//! `Mvcc::apply` the agent calls) over the simulated disk, applying entries
//! as the agent's `Applier` does (`agent/src/server.rs`), and telling the
//! simulator what it applied so the invariants can be checked.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use cairn_mvcc::Mvcc;
use cairn_proto::cairnpb::Command;
use cairn_raft::{ConfChange, ConfChangeType, ConfState, Snapshot, StateMachine};
use prost::Message as _;

use crate::disk::SimBackend;

/// One application of a log entry, as the invariants see it.
#[derive(Debug, Clone)]
pub struct Applied {
    pub node: u64,
    pub index: u64,
    pub term: u64,
    /// What the entry carried (hash of its data; 0 for none).
    pub entry: u64,
    /// The store's applied index just before.
    pub applied_before: u64,
    /// Store revision after, and the hash of the events it produced
    /// (revision, key, value, kind of each).
    pub revision: i64,
    pub events: u64,
    /// HashKV of the key space at this point, taken every [`HASH_EVERY`]
    /// entries.
    pub state_hash: Option<u32>,
}

/// Entries between two key-space hashes.
pub const HASH_EVERY: u64 = 8;

pub type Observer = Arc<Mutex<Vec<Applied>>>;

pub struct Machine {
    pub node: u64,
    pub mvcc: Mvcc<SimBackend>,
    observer: Observer,
}

/// What a proposal's waiter gets.
pub type Output = Result<cairn_mvcc::Response, String>;

pub fn hash64(data: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

impl Machine {
    pub fn new(node: u64, mvcc: Mvcc<SimBackend>, observer: Observer) -> Machine {
        Machine {
            node,
            mvcc,
            observer,
        }
    }

    fn note(
        &self,
        index: u64,
        term: u64,
        entry: u64,
        before: u64,
        a: Option<&cairn_mvcc::Applied>,
    ) {
        let (revision, events) = match a {
            Some(a) => {
                let mut h = std::hash::DefaultHasher::new();
                for e in &a.events {
                    e.r#type.hash(&mut h);
                    if let Some(kv) = &e.kv {
                        kv.key.hash(&mut h);
                        kv.value.hash(&mut h);
                        kv.mod_revision.hash(&mut h);
                        kv.create_revision.hash(&mut h);
                        kv.version.hash(&mut h);
                        kv.lease.hash(&mut h);
                    }
                }
                (a.revision, if a.events.is_empty() { 0 } else { h.finish() })
            }
            None => (self.mvcc.current_revision(), 0),
        };
        let state_hash = index
            .is_multiple_of(HASH_EVERY)
            .then(|| self.mvcc.hash_kv(0).map(|(h, _, _)| h).unwrap_or(0));
        self.observer.lock().expect("observer").push(Applied {
            node: self.node,
            index,
            term,
            entry,
            applied_before: before,
            revision,
            events,
            state_hash,
        });
    }

    fn fatal(&self, what: String) -> ! {
        // As the agent: a storage failure while applying stops the node
        // (here: the run, since the simulated disk only fails on sync).
        panic!("node {}: {what}", self.node)
    }
}

impl StateMachine for Machine {
    type Output = Output;

    fn apply(&mut self, index: u64, term: u64, data: &[u8]) -> Output {
        let before = self.mvcc.applied_index();
        let cmd = match Command::decode(data) {
            Ok(c) => c,
            Err(e) => self.fatal(format!("entry {index} is not a command: {e}")),
        };
        let applied = match self.mvcc.apply(index, &cmd) {
            Ok(a) => a,
            Err(e) => self.fatal(format!("applying entry {index}: {e}")),
        };
        self.note(index, term, hash64(data), before, Some(&applied));
        applied.result.map_err(|e| e.to_string())
    }

    /// As the agent: consecutive key commands are one store write. A run
    /// ends at every entry whose state hash is taken, so that the hash is
    /// of the store right after that entry.
    fn apply_batch(&mut self, entries: &[(u64, u64, &[u8])]) -> Vec<Output> {
        let mut out = Vec::with_capacity(entries.len());
        let mut rest = entries;
        while let Some(&(index, term, data)) = rest.first() {
            let cmds: Vec<Command> = rest
                .iter()
                .map_while(|&(i, _, d)| Command::decode(d).ok().map(|c| (i, c)))
                .take_while(|(_, c)| Mvcc::<SimBackend>::batchable(c))
                .scan(false, |ended, (i, c)| {
                    (!*ended).then(|| {
                        *ended = i.is_multiple_of(HASH_EVERY);
                        c
                    })
                })
                .collect();
            if cmds.is_empty() {
                out.push(self.apply(index, term, data));
                rest = &rest[1..];
                continue;
            }
            let n = cmds.len();
            let before = self.mvcc.applied_index();
            let refs: Vec<(u64, &Command)> =
                rest[..n].iter().map(|e| e.0).zip(cmds.iter()).collect();
            let applied = match self.mvcc.apply_many(&refs) {
                Ok(a) => a,
                Err(e) => self.fatal(format!("applying entries from {index}: {e}")),
            };
            for (k, (&(i, t, d), a)) in rest[..n].iter().zip(applied).enumerate() {
                let before = if k == 0 { before } else { i - 1 };
                self.note(i, t, hash64(d), before, Some(&a));
                out.push(a.result.map_err(|e| e.to_string()));
            }
            rest = &rest[n..];
        }
        out
    }

    fn apply_empty(&mut self, index: u64) {
        let before = self.mvcc.applied_index();
        if let Err(e) = self.mvcc.mark_applied(index) {
            self.fatal(format!("marking {index} applied: {e}"));
        }
        self.note(index, 0, 0, before, None);
    }

    fn apply_conf_change(&mut self, index: u64, cc: &ConfChange, _cs: &ConfState) -> Output {
        let before = self.mvcc.applied_index();
        let ty = cc.get_change_type();
        let cmd = cairn_mvcc::conf_change_command(
            cc.node_id,
            ty == ConfChangeType::RemoveNode,
            ty == ConfChangeType::AddLearnerNode,
            &cc.context,
        )
        .unwrap_or_else(|e| {
            self.fatal(format!("entry {index}: conf change without a member: {e}"))
        });
        let applied = match self.mvcc.apply(index, &cmd) {
            Ok(a) => a,
            Err(e) => self.fatal(format!("applying entry {index}: {e}")),
        };
        self.note(index, 0, cc.node_id, before, Some(&applied));
        applied.result.map_err(|e| e.to_string())
    }

    fn restore(&mut self, snap: &Snapshot) -> Result<(), String> {
        let data = Arc::new(snap.data.to_vec());
        restore(&self.mvcc, data)
    }

    fn applied_index(&self) -> u64 {
        self.mvcc.applied_index()
    }
}

/// Replaces the store by a snapshot's content, keeping the content on disk
/// until done so that a crash in the middle redoes it (as the agent keeps
/// the streamed file).
pub fn restore(mvcc: &Mvcc<SimBackend>, data: Arc<Vec<u8>>) -> Result<(), String> {
    mvcc.backend().restore_begin(data.clone())?;
    mvcc.restore(&data[..]).map_err(|e| e.to_string())?;
    mvcc.backend().restore_end()
}
