//! [`WireFormat`]: which of the two wire formats a bus reads and writes.

/// How global messages are encoded on Redis.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WireFormat {
    /// evbus's binary frame: origin bus id, sequence numbers, class names and MessagePack
    /// payloads; the messages of one channel queued together share one PUBLISH. Receivers
    /// drop duplicates and report gaps (G06).
    #[default]
    Native,
    /// Exactly Serverpod's JSON, `{"className": "...", "data": {...}}`, one message per
    /// PUBLISH, so a Rust server can share a Redis with Serverpod servers (G11). It carries
    /// no sequence numbers, so duplicates and gaps cannot be seen; only messages this bus
    /// read too slowly are counted as missed.
    Serverpod,
}
