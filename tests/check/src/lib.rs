//! Checkers that the deterministic simulator and the cluster tests feed.
//!
//! - [`linear`]: linearizability of client histories of put, get, delete,
//!   compare-and-swap and lease ops, including ops whose outcome is unknown
//!   (Wing–Gong–Lowe search, per-key partitions, a separate check of the
//!   global revision). The main types are re-exported here.
//! - [`watch`]: watch streams against the committed write history (ordered,
//!   no duplicates, no gaps, correct `prev_kv`, nothing before the start
//!   revision).
//!
//! Both are pure functions of what they are given: no I/O, no clock, no
//! threads, std only, so they build in seconds and can run on every step.
#![forbid(unsafe_code)]

pub mod linear;
pub mod watch;

pub use linear::{
    ClientId, Compare, Config, Entry, History, LeaseId, Op, OpId, Outcome, Report, Ret, Revision,
    Time, Violation, ViolationKind, check, check_with,
};
