//! The bodies of cairn's fuzz targets, as ordinary functions: `fuzz/`
//! (cargo-fuzz, nightly) calls them on libFuzzer's inputs, and
//! `tests/replay.rs` (stable, part of `cargo test --workspace`) calls them
//! on every file of `fuzz/corpus/<target>/` and on seeded mutations of
//! those files. Each returns normally for every input: a panic is the bug.
#![forbid(unsafe_code)]

#[cfg(feature = "config")]
mod config;
mod log_recovery;
mod request;

#[cfg(feature = "config")]
pub use config::config;
pub use log_recovery::log_recovery;
pub use request::{MESSAGES, request};

/// A fuzz target: its name (the directory of its corpus, the cargo-fuzz
/// binary) and its body.
pub type Target = (&'static str, fn(&[u8]));

pub const TARGETS: &[Target] = &[
    ("request", request),
    ("log_recovery", log_recovery),
    #[cfg(feature = "config")]
    ("config", config),
];
