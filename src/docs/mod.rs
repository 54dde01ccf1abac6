//! Design notes: how evbus works inside, and why. Documentation only; no code.
//!
//! - [`internal`]: the data structures, the post path, and the memory orderings.
//! - [`performance`]: what is wait-free and lock-free, in exact words, and what things cost.

pub mod guarantees;
pub mod internal;
pub mod performance;
