//! Revisions: the store's revision only grows as entries apply, and a
//! revision always stands for the same change on every member and after
//! any restart — never reused for another write (etcd's KV guarantee that
//! revisions are monotonically increasing and unique; broken in etcd
//! #13766, which reused revisions after a crash).
//!
//! Checked per application: (index → revision after it, events it made) is
//! the same wherever and whenever the index is applied, and the revision
//! after an entry is never below the one after an earlier entry.

use std::collections::BTreeMap;

use crate::machine::Applied;

#[derive(Default)]
pub struct Revisions {
    by_index: BTreeMap<u64, (i64, u64, u64)>,
    /// Revision → the index whose events first carried it.
    by_revision: BTreeMap<i64, u64>,
}

impl Revisions {
    pub fn applied(&mut self, a: &Applied) -> Result<(), String> {
        if let Some(&(rev, events, node)) = self.by_index.get(&a.index) {
            if (rev, events) != (a.revision, a.events) {
                return Err(format!(
                    "revisions: entry {} made revision {} on node {} but revision {rev} \
                     (other events: {}) on node {node}",
                    a.index,
                    a.revision,
                    a.node,
                    events != a.events
                ));
            }
        } else {
            self.by_index
                .insert(a.index, (a.revision, a.events, a.node));
        }
        // Monotonic in the log: the nearest earlier and later indexes.
        if let Some((i, &(rev, _, _))) = self.by_index.range(..a.index).next_back()
            && rev > a.revision
        {
            return Err(format!(
                "revisions: entry {} left revision {} but the earlier entry {i} left {rev}",
                a.index, a.revision
            ));
        }
        if let Some((i, &(rev, _, _))) = self.by_index.range(a.index + 1..).next()
            && rev < a.revision
        {
            return Err(format!(
                "revisions: entry {} left revision {} but the later entry {i} left {rev}",
                a.index, a.revision
            ));
        }
        if a.events != 0 {
            match self.by_revision.get(&a.revision) {
                Some(&index) if index != a.index => {
                    return Err(format!(
                        "revisions: revision {} reused: made by entry {index} and by entry {} \
                         on node {}",
                        a.revision, a.index, a.node
                    ));
                }
                Some(_) => {}
                None => {
                    self.by_revision.insert(a.revision, a.index);
                }
            }
        }
        Ok(())
    }

    pub fn highest(&self) -> i64 {
        self.by_revision.keys().next_back().copied().unwrap_or(0)
    }
}
