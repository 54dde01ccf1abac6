//! Design notes: how evbus works inside, and why. Documentation only; no code.
//!
//! - [`guarantees`]: the behaviour contract, one section per rule id (`L02`, `G06`, ...).
//! - [`internal`]: the layers, the data structures, the post path, and the memory orderings.
//! - [`performance`]: what is wait-free and lock-free, in exact words, and what things cost.

pub mod guarantees;
pub mod internal;
pub mod performance;
