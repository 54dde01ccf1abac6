//! The local core: what a bus is without any transport.
//!
//! - [`registry`]: channel names interned to topics, each with its published snapshot of
//!   receivers; registration, removal, session ownership, and forgetting unused channels. It
//!   tells the transport, through the [`registry::Interest`] trait, which channels have
//!   receivers, and knows nothing else of it.
//! - [`barrier`]: an asymmetric fence pair, free on the frequent side (Linux's `membarrier`).
//! - [`post`]: the post path, from a loaded snapshot to every receiver, and the same for a
//!   message received through the transport, decoded once per receiver type.
//! - [`published`]: a topic's current snapshot, which a post borrows without counting it.
//! - [`ring`]: the ring a channel's streams of one type share: one write per post, a cursor
//!   per stream.
//! - [`stream`]: a stream's cursor, joining and leaving the ring, and waiting for a write.
//! - [`thin`]: an `Arc` as a thin pointer beside a static table of its type, for groups and
//!   listeners.
//!
//! It depends only on the leaves (errors, message, stats, the trie) and on [`crate::wire`]'s
//! codec, never on a transport.

mod barrier;
pub(crate) mod post;
pub(crate) mod published;
pub(crate) mod registry;
pub(crate) mod ring;
pub(crate) mod stream;
pub(crate) mod thin;
