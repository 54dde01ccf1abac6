//! The wire formats of global messages, and how a typed message becomes their bytes.
//!
//! Nothing here knows of a bus, a registry or a transport: these are pure functions of bytes
//! and types, shared by every transport.
//!
//! - [`frame`]: the Native frame (origin id, sequence numbers, records of class and payload);
//! - [`control`]: repair's requests, answers and announcements (K02, K04);
//! - [`serverpod`]: Serverpod's JSON envelope;
//! - [`error`]: `DecodeError`, why received bytes were refused, in either format;
//! - [`mac`]: the MAC of a signed frame (keyed BLAKE3);
//! - [`codec`]: class names and typed payloads (MessagePack or JSON) of one bus;
//! - [`format`](mod@format): [`WireFormat`], which of the two a bus uses.

pub(crate) mod codec;
pub(crate) mod control;
pub(crate) mod error;
pub(crate) mod format;
pub(crate) mod frame;
mod layout;
pub(crate) mod mac;
pub(crate) mod serverpod;

pub use format::WireFormat;
