//! cairn-check's tests: one binary, a module per checker.

mod bench;
mod linear;
mod random;
mod rng;
mod watch;
