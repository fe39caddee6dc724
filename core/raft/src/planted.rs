//! Bugs planted on purpose, to show that the simulator catches them
//! (issue: "keep these as tests of the rig, so the rig itself stays
//! honest"). Compiled only with the `planted-bugs` feature, which nothing
//! but the simulator's rig tests turns on; without it every check below is
//! a constant `false` and the compiler removes it.
//!
//! A bug is switched on per thread, so the simulator (one thread per run)
//! can run a buggy node next to tests that are not.

/// The bugs the rig must catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// Entries and hard state are appended without fsync, yet votes and
    /// append acknowledgements go out as if they were durable.
    AckBeforeFsync,
    /// After a restart raft is told an applied index a few entries behind
    /// the state machine's, and the state machine applies them again.
    ApplyTwice,
    /// A node that believes it leads answers a linearizable read from its
    /// own commit index, without ReadIndex confirming it still leads.
    LocalRead,
}

#[cfg(feature = "planted-bugs")]
mod imp {
    use super::Bug;
    use std::cell::Cell;

    thread_local! {
        static ON: Cell<Option<Bug>> = const { Cell::new(None) };
    }

    /// Plants `bug` (or none) on this thread.
    pub fn plant(bug: Option<Bug>) {
        ON.with(|b| b.set(bug));
    }

    pub fn on(bug: Bug) -> bool {
        ON.with(|b| b.get()) == Some(bug)
    }
}

#[cfg(feature = "planted-bugs")]
pub use imp::{on, plant};

#[cfg(not(feature = "planted-bugs"))]
#[inline(always)]
pub fn on(_bug: Bug) -> bool {
    false
}

/// The applied index raft starts from: the state machine's, or with
/// [`Bug::ApplyTwice`] a few entries less (never below the log's start).
pub(crate) fn applied_at_start<S: raft::Storage>(applied: u64, store: &S) -> u64 {
    if !on(Bug::ApplyTwice) {
        return applied;
    }
    let first = store.first_index().unwrap_or(1);
    applied.saturating_sub(3).max(first.saturating_sub(1))
}
