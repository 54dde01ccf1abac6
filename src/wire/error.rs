//! [`DecodeError`]: why bytes received from Redis were refused, in either wire format.
//!
//! A `DecodeError` carries no more of the input than a short prefix, because its text is
//! shown to users in `BusEvent::DecodeFailed`.

use std::fmt;

use super::layout::{HEADER_LEN, VERSION, VERSION_SIGNED};

/// At most this many bytes of the input are quoted in an error.
pub(crate) const QUOTE_LEN: usize = 32;

/// At most `max` bytes of `text`, cut at a character boundary (with "..." when cut), and
/// with control characters escaped so that the quote stays on one line.
pub(crate) fn quote(text: &str, max: usize) -> String {
    let mut quoted = String::new();
    for (at, c) in text.char_indices() {
        if at + c.len_utf8() > max {
            quoted.push_str("...");
            break;
        }
        if c.is_control() {
            quoted.extend(c.escape_default());
        } else {
            quoted.push(c);
        }
    }
    quoted
}

/// Why received bytes were refused.
///
/// Its `Display` text is short and meant for users (`BusEvent::DecodeFailed`); it quotes at
/// most a short prefix of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than a frame header.
    TooShort {
        /// Bytes received.
        len: usize,
    },
    /// The first three bytes are not `EVB`.
    BadMagic {
        /// The first three bytes.
        found: [u8; 3],
    },
    /// A frame version this build does not read.
    UnsupportedVersion {
        /// The version byte.
        version: u8,
    },
    /// A frame header with a record count of zero.
    ZeroCount,
    /// A frame whose last sequence number, `first_seq + count - 1`, passes `u64::MAX`.
    SequenceOverflow {
        /// The header's first sequence number.
        first_seq: u64,
        /// The header's record count.
        count: u32,
    },
    /// A record that ends past the end of the frame.
    Truncated {
        /// Index of the record in the frame, from 0.
        record: u32,
        /// Offset in the frame of the field that is cut.
        offset: usize,
        /// The field that is cut: "class length", "class name", "payload length" or
        /// "payload".
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the frame.
        available: usize,
    },
    /// A record with an empty class name.
    EmptyClass {
        /// Index of the record in the frame, from 0.
        record: u32,
    },
    /// A record whose class name is not UTF-8.
    ClassNotUtf8 {
        /// Index of the record in the frame, from 0.
        record: u32,
        /// Length of the valid UTF-8 prefix of the class name.
        valid_up_to: usize,
    },
    /// Bytes after the last record the header counts.
    TrailingBytes {
        /// The header's record count.
        count: u32,
        /// Bytes after the last record.
        extra: usize,
    },
    /// A Serverpod message that is not UTF-8.
    NotUtf8 {
        /// Length of the valid UTF-8 prefix.
        valid_up_to: usize,
    },
    /// A Serverpod message that is not a JSON object.
    NotAnObject {
        /// A short prefix of the message.
        found: String,
    },
    /// A Serverpod message that is not valid JSON, or has a member twice.
    Json(String),
    /// A Serverpod message without `className`.
    MissingClassName,
    /// A Serverpod message whose `className` is not a string.
    ClassNameNotString {
        /// A short prefix of the `className` value, as JSON.
        found: String,
    },
    /// A Serverpod message whose `className` is empty.
    EmptyClassName,
    /// A Serverpod message without `data`.
    MissingData,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooShort { len } => {
                write!(f, "frame too short: {len} bytes, header needs {HEADER_LEN}")
            }
            DecodeError::BadMagic { found } => write!(
                f,
                "not an evbus frame: starts with \"{}\", expected \"EVB\"",
                found.escape_ascii()
            ),
            DecodeError::UnsupportedVersion { version } => write!(
                f,
                "unsupported frame version {version}, this build reads versions {VERSION} and {VERSION_SIGNED}"
            ),
            DecodeError::ZeroCount => f.write_str("frame has a record count of 0"),
            DecodeError::SequenceOverflow { first_seq, count } => write!(
                f,
                "frame sequence overflows: first_seq {first_seq} with {count} records passes u64::MAX"
            ),
            DecodeError::Truncated {
                record,
                offset,
                field,
                needed,
                available,
            } => write!(
                f,
                "record {record} truncated at byte {offset}: its {field} needs {needed} bytes, {available} left"
            ),
            DecodeError::EmptyClass { record } => write!(f, "record {record} has an empty class name"),
            DecodeError::ClassNotUtf8 {
                record,
                valid_up_to,
            } => write!(
                f,
                "record {record} has a class name that is not UTF-8 (invalid after {valid_up_to} bytes)"
            ),
            DecodeError::TrailingBytes { count, extra } => {
                write!(f, "{extra} trailing bytes after the frame's {count} records")
            }
            DecodeError::NotUtf8 { valid_up_to } => write!(
                f,
                "Serverpod message is not UTF-8 (invalid after {valid_up_to} bytes)"
            ),
            DecodeError::NotAnObject { found } => {
                write!(f, "Serverpod message is not a JSON object: {found}")
            }
            DecodeError::Json(message) => write!(f, "Serverpod message is not valid JSON: {message}"),
            DecodeError::MissingClassName => f.write_str("Serverpod message has no \"className\""),
            DecodeError::ClassNameNotString { found } => {
                write!(f, "Serverpod message's \"className\" is not a string: {found}")
            }
            DecodeError::EmptyClassName => f.write_str("Serverpod message's \"className\" is empty"),
            DecodeError::MissingData => f.write_str("Serverpod message has no \"data\""),
        }
    }
}

impl std::error::Error for DecodeError {}
