//! Deterministic simulation of a cairn cluster.
//!
//! Several nodes run in one thread: each is the real consensus driver
//! (`cairn_raft::ManualNode`, the same code as the agent's raft thread)
//! applying entries to the real MVCC store (`cairn_mvcc::Mvcc`) over a
//! simulated disk ([`disk`]), talking over a simulated network, on a
//! simulated clock. Everything random comes from one seed: a failing seed
//! prints itself and replays exactly (`cargo run -p cairn-sim --release --
//! --seed N`).
//!
//! Faults: partitions (a node cut off both ways, or one way), message loss,
//! delay and reordering, crash and restart (losing what was not fsynced),
//! fsync failure, leader transfer, and membership changes (a member removed
//! and a new one added as a learner, then promoted).
//!
//! After every simulated millisecond the invariants in [`invariants`] are
//! checked; at the end the clients' history goes through the
//! linearizability checker (`cairn-check`).

pub mod disk;
pub mod history;
pub mod invariants;
pub mod machine;
pub mod sim;
pub mod watchers;
pub mod workload;

pub use sim::{Config, Failure, Report, run};
