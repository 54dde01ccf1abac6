//! The Native frame's fixed numbers, shared by the frame's codec and its errors.

/// A bus's origin id: random, 128 bits.
pub type Origin = [u8; 16];

/// Bytes of a Native frame header: magic "EVB", version, origin, first sequence, count, send
/// time.
pub const HEADER_LEN: usize = 40;
/// Bytes a record adds to its class name and payload: a u16 and a u32 length.
pub const RECORD_OVERHEAD: usize = 6;
/// Longest class name, in bytes, that evbus writes.
///
/// Callers validate class names against it (and refuse empty ones) before calling
/// `frame::write_record`. The format itself allows up to `u16::MAX` bytes, and `frame::decode_frame`
/// accepts what the format allows.
pub const MAX_CLASS_LEN: usize = 1024;

/// The frame magic.
pub const MAGIC: &[u8; 3] = b"EVB";
/// The version of a frame without a MAC. (Versions 1 and 2, before the header carried the
/// send time, are no longer read: a receiver refuses them as an unsupported version, counted
/// and reported, never silently.)
pub const VERSION: u8 = 3;
/// The version of a frame that ends with a MAC ([`MAC_LEN`] bytes over all before it).
pub const VERSION_SIGNED: u8 = 4;
/// Bytes of a signed frame's MAC.
pub const MAC_LEN: usize = 32;
