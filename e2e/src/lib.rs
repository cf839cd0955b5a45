//! End-to-end tests of hookbus: the real binaries run as separate processes
//! against a real `redis-server`, a bare git remote and a local subscriber.
//!
//! This crate has no code of its own; the tests live in `tests/` (see
//! `tests/chaos.rs` and docs/testing.md).
