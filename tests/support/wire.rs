//! Native frames written by hand from the documented layout (`src/wire/frame.rs`), for the
//! tests that play an origin themselves.

/// A Native frame of `String` messages from `origin`, written by hand from the documented
/// layout (`evbus::docs::internal`, `src/wire/frame.rs`): what a bus with a larger
/// `max_message_bytes` publishes when it coalesces posts queued together. Payloads are
/// MessagePack str32.
pub fn string_frame(origin: [u8; 16], first_seq: u64, messages: &[&str]) -> Vec<u8> {
    let mut out = b"EVB\x03".to_vec();
    out.extend_from_slice(&origin);
    out.extend_from_slice(&first_seq.to_le_bytes());
    out.extend_from_slice(&(messages.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // sent_at: unknown
    for message in messages {
        out.extend_from_slice(&6u16.to_le_bytes());
        out.extend_from_slice(b"String");
        let len = message.len() as u32;
        out.extend_from_slice(&(len + 5).to_le_bytes());
        out.push(0xdb);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(message.as_bytes());
    }
    out
}
