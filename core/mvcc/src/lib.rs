//! etcd's data model over an ordered key-value [`Backend`].
//!
//! Pure: no I/O of its own, no clock, no threads. Storage comes in through the
//! [`Backend`] trait (fjall in `cairn-store`, [`MemBackend`] in tests); time
//! comes in as milliseconds passed by the caller (see [`lease::Lessor`]).
//!
//! Writes are applied by exactly one caller, in raft log order, through
//! [`Mvcc::apply`]; each apply is one atomic backend batch that also records
//! the raft index it came from, so a crash never splits an entry's effects from
//! the applied index (etcd #13766). Reads take a backend snapshot and are
//! consistent at one revision whatever the writer does meanwhile.
#![forbid(unsafe_code)]

pub mod alarm;
pub mod auth;
pub mod backend;
pub mod error;
pub mod keys;
pub mod lease;
pub mod snapshot;
pub mod store;
pub mod validate;
pub mod watch;

pub use backend::{Backend, BackendError, Batch, MemBackend, MemSnapshot, ReadView, Table};
pub use error::MvccError;
pub use store::{Applied, LeaseInfo, Mvcc, Response, RestoreError, conf_change_command};
