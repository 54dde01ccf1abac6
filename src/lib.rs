//! # evbus
//!
//! A lock-free, in-process event bus whose posts never wait: Serverpod's server events
//! (`session.messages`) for Rust servers.
//!
//! ```
//! use evbus::{Bus, MessageScope};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug)]
//! struct UserUpdate {
//!     user_id: u64,
//!     name: String,
//! }
//!
//! let bus = Bus::local();
//!
//! // A session is a unit of work: a request, a connection.
//! let session = bus.session();
//! session.messages().add_listener("user_updates", |update: &UserUpdate| {
//!     println!("user {} is now {}", update.user_id, update.name);
//! });
//!
//! // Posting calls every listener of the channel, on this thread, before it returns.
//! let delivery = bus.messages().post_message(
//!     "user_updates",
//!     UserUpdate { user_id: 7, name: "Ada".into() },
//!     MessageScope::Auto, // Global with Redis, Local without
//! )?;
//! assert_eq!(delivery.local_receivers(), 1);
//!
//! // Closing (or dropping) the session removes everything it registered.
//! session.close();
//! let delivery = bus.messages().post_message(
//!     "user_updates",
//!     UserUpdate { user_id: 7, name: "Grace".into() },
//!     MessageScope::Local,
//! )?;
//! assert_eq!(delivery.local_receivers(), 0);
//! # Ok::<(), evbus::PostError>(())
//! ```
//!
//! ## The model
//!
//! - A **channel** is a name. Listeners ([`Messages::add_listener`]) are callbacks run on the
//!   posting thread; streams ([`Messages::create_stream`]) are async [`MessageStream`]s with a
//!   bounded buffer each. A message of type `M` reaches only receivers of type `M`.
//! - A [`Session`] owns what was registered through it; closing or dropping it removes its
//!   listeners and ends its streams. Registrations through [`Bus::messages`] live until removed
//!   or until the bus shuts down.
//! - A post is one atomic load of the channel's subscriber snapshot plus the calls: no lock,
//!   no waiting for other threads, no allocation for listeners. [`Bus::channel`] gives a typed
//!   handle that also skips the name lookup.
//!
//! - A bus built with [`BusBuilder::redis_url`] also passes *global* messages between
//!   servers through Redis ([`MessageScope::Global`], or `Auto`): every bus subscribed to the
//!   channel, the poster included, delivers them when they come back from Redis. Posts are
//!   batched into pipelined writes; receivers drop duplicates and report gaps
//!   ([`BusEvent::MessagesMissed`]); posts made while Redis is down are held up to a bound.
//!   [`WireFormat::Serverpod`] reads and writes Serverpod's own payloads.
//!
//! The reasoning behind the hot path (what is wait-free, which orderings and why, what a slow
//! stream gets) is in [`docs`].

// `unsafe` only where a module or an item allows it and says why: `local::published` (a
// snapshot borrowed without counting it) and `local::ring` (the streams' ring, whose slots
// hold `Arc`s as pointers), both checked by their loom models, as is the stack of waiting
// streams in `local::stream`; `local::thin` (an `Arc` as a thin pointer beside its type's
// table) and the listener calls in `local::post`.
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![warn(missing_debug_implementations)]
#![doc(test(attr(deny(warnings))))]

// Layers, each using only those above it in this list (see `docs::internal`):
// leaves and wire formats; the local core; the transport boundary; the Redis transport;
// the facade.
mod error;
mod events;
mod message;
mod revocation;
mod stats;
mod sync;
mod trie;
mod wire;

mod export;

mod local;

mod transport;

mod redis;

mod bus;
mod channel;
mod delivery;
mod inner;
mod session;

pub mod docs;

pub use bus::{Bus, BusBuilder};
pub use channel::Channel;
pub use delivery::{Delivery, DeliveryFuture};
pub use error::{BusError, PostError, Reason};
pub use events::{BusEvent, BusEvents, EVENT_BUFFER};
pub use local::stream::MessageStream;
pub use message::{Message, MessageScope};
pub use revocation::{revoked_authentication_channel, RevokedAuthentication};
pub use session::{ListenerId, Messages, Session};
pub use stats::Stats;
pub use wire::WireFormat;

/// Decoders of untrusted bytes and the sequence tracker, for the fuzz targets in `fuzz/`
/// only.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::wire::error::DecodeError;
    pub use crate::wire::frame::*;
    pub use crate::wire::serverpod::*;

    /// Repair's control messages, for the `control_message` target.
    pub mod control {
        pub use crate::wire::control::*;
    }

    /// Duplicate and gap tracking, for the `sequences` target.
    pub mod sequences {
        pub use crate::redis::sequences::{Sequences, Verdict, WINDOW};
    }
}
