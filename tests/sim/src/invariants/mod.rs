//! The invariants checked on every simulated step, one per file. Each
//! returns a description of the violation; the simulator stops the run on
//! the first one and prints the seed.

pub mod answers;
pub mod apply_order;
pub mod committed;
pub mod election;
pub mod revisions;
pub mod state_hash;

pub use apply_order::ApplyOrder;
pub use committed::Committed;
pub use election::ElectionSafety;
pub use revisions::Revisions;
pub use state_hash::StateHash;
