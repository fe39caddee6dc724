//! cairn-check tests.
