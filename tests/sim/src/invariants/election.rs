//! Election Safety: at most one leader can be elected in a given term
//! (Raft paper, Ongaro & Ousterhout 2014, §5.2 and Figure 3).

use std::collections::BTreeMap;

#[derive(Default)]
pub struct ElectionSafety {
    leaders: BTreeMap<u64, u64>,
}

impl ElectionSafety {
    /// `node` leads in `term` right now.
    pub fn leader(&mut self, term: u64, node: u64) -> Result<(), String> {
        match self.leaders.insert(term, node) {
            Some(other) if other != node => Err(format!(
                "election safety: nodes {other} and {node} both led term {term}"
            )),
            _ => Ok(()),
        }
    }

    /// Terms that had a leader.
    pub fn terms(&self) -> usize {
        self.leaders.len()
    }
}
