//! State Machine Safety / Leader Completeness: once an entry is committed
//! at an index, no node ever commits a different entry there (Raft paper
//! §5.4.3, Figure 3; etcd's guarantee that an acknowledged write is never
//! lost, broken in etcd #14370).
//!
//! Every node's log is read up to its commit index after every step; an
//! entry (term, content) seen committed at an index is remembered for the
//! whole run, across crashes, snapshots and compaction.

use std::collections::BTreeMap;

use cairn_raft::Entry;

use crate::machine::hash64;

#[derive(Default)]
pub struct Committed {
    entries: BTreeMap<u64, (u64, u64, u64)>,
    /// Per node: the highest index already compared.
    checked: BTreeMap<u64, u64>,
}

impl Committed {
    /// Index up to which `node`'s log was compared.
    pub fn checked(&self, node: u64) -> u64 {
        self.checked.get(&node).copied().unwrap_or(0)
    }

    /// `node` restarted or took a snapshot: its log is compared again from
    /// `from`.
    pub fn reset(&mut self, node: u64, from: u64) {
        self.checked.insert(node, from);
    }

    /// `e` is committed on `node`.
    pub fn entry(&mut self, node: u64, e: &Entry) -> Result<(), String> {
        let seen = (e.term, hash64(&e.data), node);
        match self.entries.get(&e.index) {
            Some(&(term, data, by)) if (term, data) != (seen.0, seen.1) => {
                return Err(format!(
                    "committed entry changed: index {} was committed as term {term} \
                     (seen on node {by}), node {node} has committed term {} with other content",
                    e.index, e.term
                ));
            }
            Some(_) => {}
            None => {
                self.entries.insert(e.index, seen);
            }
        }
        let c = self.checked.entry(node).or_default();
        *c = (*c).max(e.index);
        Ok(())
    }

    /// The highest index known committed.
    pub fn highest(&self) -> u64 {
        self.entries.keys().next_back().copied().unwrap_or(0)
    }
}
