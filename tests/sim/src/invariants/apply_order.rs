//! Every member applies the same entries in the same order, each once
//! (Raft's State Machine Safety, §5.4.3: "if a server has applied a log
//! entry at a given index to its state machine, no other server will ever
//! apply a different log entry for the same index"; etcd applies each
//! entry exactly once, re-applying nothing after a restart, etcd #13766).
//!
//! Checked per application: the index is above what the store had applied
//! (nothing applied twice, nothing out of order), and the entry at an index
//! is the same on every node.

use std::collections::BTreeMap;

use crate::machine::Applied;

#[derive(Default)]
pub struct ApplyOrder {
    by_index: BTreeMap<u64, (u64, u64)>,
    pub applied: u64,
}

impl ApplyOrder {
    pub fn applied(&mut self, a: &Applied) -> Result<(), String> {
        self.applied += 1;
        if a.index <= a.applied_before {
            return Err(format!(
                "apply order: node {} applied entry {} again (its store had applied up to {})",
                a.node, a.index, a.applied_before
            ));
        }
        match self.by_index.get(&a.index) {
            Some(&(entry, node)) if entry != a.entry => Err(format!(
                "apply order: node {} applied other content at index {} than node {node}",
                a.node, a.index
            )),
            Some(_) => Ok(()),
            None => {
                self.by_index.insert(a.index, (a.entry, a.node));
                Ok(())
            }
        }
    }
}
