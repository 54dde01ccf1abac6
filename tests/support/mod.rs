//! What the test files that run buses against real Redis servers share (`tests/global.rs`,
//! `tests/faults.rs`, `tests/tls.rs`): [`redis`] starts and queries the servers, [`bus`] builds
//! buses on them, posts, and waits.
//!
//! `model.rs` beside them is not part of this module: `tests/model.rs` and the fuzz target
//! include it by path.

// Each file under tests/ is a crate of its own and uses only part of this module; what one of
// them leaves unused is used by another, not dead.
#![allow(dead_code)]

pub mod bus;
pub mod cluster;
pub mod redis;
pub mod wire;
