//! The Native frame: evbus's own wire format of global messages.
//!
//! One Redis payload carries one frame: a header, then `count` records back to back. All
//! integers are little-endian.
//!
//! ```text
//! offset 0   b"EVB"          magic
//! offset 3   version: u8     3 (4: signed, a MAC follows the records)
//! offset 4   origin: [u8;16] the posting bus's random id
//! offset 20  first_seq: u64  sequence number of the first record
//! offset 28  count: u32      number of records, at least 1
//! offset 32  sent_at: u64    when the origin wrote the frame: microseconds since the Unix
//!                            epoch by its clock (0: unknown)
//! offset 40  count records, each:
//!              class_len: u16, class: class_len bytes of UTF-8 (1 to u16::MAX)
//!              payload_len: u32, payload: payload_len bytes
//! [version 4: a MAC of 32 bytes over everything before it]
//! ```
//!
//! `sent_at` is only ever read for the end-to-end latency a receiver reports (a metric); no
//! decision depends on it, so a wrong clock skews a histogram and nothing else.
//!
//! Record `i` has sequence number `first_seq + i`; a frame whose last sequence number would
//! pass `u64::MAX` is refused. A record is a self-contained byte string ([`write_record`]),
//! so the publisher encodes each message once, when it is posted, and builds a frame by
//! writing a header ([`write_header`]) and appending records. The payload is opaque here:
//! MessagePack written by the codec. The format is canonical: every frame that decodes is
//! the exact concatenation that [`write_header`] and [`write_record`] produce from its
//! decoded parts, with no padding, no optional fields and no trailing bytes.
//!
//! # Decoding is total and allocation-bounded
//!
//! The bytes come from Redis, where anyone with access may publish anything.
//! [`decode_frame`] returns `Ok` or a [`DecodeError`] for every byte string and never
//! panics: every read goes through a bounds-checked cursor, and every length and the
//! sequence range are checked before use. A decoded frame borrows its class names and
//! payloads from the input, and the one allocation, the records' `Vec`, holds at most
//! `(bytes.len() - HEADER_LEN) / RECORD_OVERHEAD` entries, since each record takes at least
//! [`RECORD_OVERHEAD`] bytes: a count read from the wire never sizes an allocation
//! unchecked.

use super::error::DecodeError;
pub use super::layout::{Origin, HEADER_LEN, MAX_CLASS_LEN, RECORD_OVERHEAD};
pub use super::layout::{MAC_LEN, VERSION_SIGNED};
use super::layout::{MAGIC, VERSION};

/// Appends one record to `out`: the class name, then the payload that `payload` appends.
///
/// The caller guarantees `1 <= class.len() <= MAX_CLASS_LEN`, and that the payload is far
/// below `u32::MAX` bytes (the bus bounds every message by `max_message_bytes`). A class
/// name outside `1..=u16::MAX` bytes, or a payload past `u32::MAX` bytes, cannot be
/// represented: debug builds assert; release builds write the record with an empty class
/// name (and, for a payload too long, an empty payload), which [`decode_frame`] refuses, so
/// the mistake surfaces as a decode error on the receiving side instead of a message
/// delivered under a truncated name or with a wrong length. Either way, nothing panics.
///
/// # Errors
///
/// The error of `payload`, in which case `out` is truncated back to its length on entry.
pub fn write_record<E>(
    out: &mut Vec<u8>,
    class: &str,
    payload: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    let start = out.len();
    let class_len = u16::try_from(class.len()).ok().filter(|&len| len > 0);
    debug_assert!(
        class_len.is_some(),
        "class name of {} bytes: it must have 1 to u16::MAX",
        class.len()
    );
    let class = if class_len.is_some() { class } else { "" };
    out.extend_from_slice(&class_len.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(class.as_bytes());
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Err(error) = payload(out) {
        out.truncate(start);
        return Err(error);
    }
    // `None` also if `payload` shrank `out`, which no well-behaved payload writer does.
    let payload_len = (out.len().checked_sub(len_at + 4)).and_then(|len| u32::try_from(len).ok());
    match (payload_len, out.get_mut(len_at..len_at + 4)) {
        (Some(len), Some(slot)) => slot.copy_from_slice(&len.to_le_bytes()),
        _ => {
            debug_assert!(false, "payload length does not fit a u32");
            // An empty class name and an empty payload: a record every decoder refuses.
            out.truncate(start);
            out.extend_from_slice(&[0; RECORD_OVERHEAD]);
        }
    }
    Ok(())
}

/// Appends a frame header.
///
/// The caller appends `count` records ([`write_record`]) after it; `count` must be at least
/// 1, and `first_seq + count - 1` must not pass `u64::MAX`, or the frame is refused when
/// decoded.
#[cfg_attr(not(any(test, fuzzing)), allow(dead_code))] // the publisher writes either version
pub fn write_header(out: &mut Vec<u8>, origin: &Origin, first_seq: u64, count: u32, sent_at: u64) {
    write_header_of(out, origin, first_seq, count, sent_at, false);
}

/// [`write_header`] of a version-4 frame, when `signed`: its writer appends a MAC of
/// [`MAC_LEN`] bytes after the records.
pub fn write_header_of(
    out: &mut Vec<u8>,
    origin: &Origin,
    first_seq: u64,
    count: u32,
    sent_at: u64,
    signed: bool,
) {
    out.reserve(HEADER_LEN);
    out.extend_from_slice(MAGIC);
    out.push(if signed { VERSION_SIGNED } else { VERSION });
    out.extend_from_slice(origin);
    out.extend_from_slice(&first_seq.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&sent_at.to_le_bytes());
}

/// The time now as a frame's `sent_at`: microseconds since the Unix epoch, 0 if the clock
/// reads before it.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        })
}

/// A decoded Native frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The posting bus.
    pub origin: Origin,
    /// Sequence number of the first record; record `i` has `first_seq + i`.
    pub first_seq: u64,
    /// When the origin wrote the frame, in microseconds since the Unix epoch by its clock
    /// (0: unknown). Informational only: see the module docs.
    pub sent_at: u64,
    /// The messages, in order.
    pub records: Vec<Record<'a>>,
    /// A version-2 frame's MAC, and the bytes it covers (all before it).
    pub mac: Option<(&'a [u8], &'a [u8; MAC_LEN])>,
}

/// One message of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Wire class name.
    pub class: &'a str,
    /// MessagePack payload.
    pub payload: &'a [u8],
}

/// Decodes a Native frame. Total.
///
/// Class names and payloads borrow from `bytes`; the records' `Vec` is the only
/// allocation, and is bounded by the length of `bytes` (see the module docs). An `Ok` does
/// not mean the payloads decode, nor that the class names are known.
///
/// # Errors
///
/// A [`DecodeError`] naming the first thing wrong: a short or foreign header, a version
/// other than 3 and 4, no records, a sequence range past `u64::MAX`, a truncated record, a class
/// name that is empty or not UTF-8, or bytes after the last record.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let all = bytes;
    let mut cursor = Cursor { bytes, pos: 0 };
    let Some(header) = read_header(&mut cursor) else {
        return Err(DecodeError::TooShort { len: bytes.len() });
    };
    if header.magic != *MAGIC {
        return Err(DecodeError::BadMagic {
            found: header.magic,
        });
    }
    let mac = match header.version {
        VERSION => None,
        VERSION_SIGNED => {
            let Some(at) = bytes
                .len()
                .checked_sub(MAC_LEN)
                .filter(|&at| at >= HEADER_LEN)
            else {
                return Err(DecodeError::TooShort { len: bytes.len() });
            };
            let (signed, mac) = all.split_at(at);
            let mac: &[u8; MAC_LEN] = mac
                .try_into()
                .map_err(|_| DecodeError::TooShort { len: bytes.len() })?;
            // The records end where the MAC begins.
            cursor.bytes = signed;
            Some((signed, mac))
        }
        version => return Err(DecodeError::UnsupportedVersion { version }),
    };
    let Header {
        origin,
        first_seq,
        count,
        sent_at,
        ..
    } = header;
    if count == 0 {
        return Err(DecodeError::ZeroCount);
    }
    if first_seq.checked_add(u64::from(count - 1)).is_none() {
        return Err(DecodeError::SequenceOverflow { first_seq, count });
    }

    let mut records = Vec::with_capacity(record_capacity(count, bytes.len()));
    // The class of the record before: a frame's records are mostly of one class, and a
    // comparison of a few bytes is cheaper than checking them as UTF-8 again.
    let mut previous: Option<&str> = None;
    for record in 0..count {
        let class_len = cursor
            .array::<2>()
            .ok_or_else(|| cursor.truncated(record, "class length", 2))?;
        let class_len = usize::from(u16::from_le_bytes(*class_len));
        let class = cursor
            .slice(class_len)
            .ok_or_else(|| cursor.truncated(record, "class name", class_len))?;
        let class = match previous.filter(|previous| previous.as_bytes() == class) {
            Some(same) => Ok(same),
            None => std::str::from_utf8(class),
        };
        let class = match class {
            Ok("") => return Err(DecodeError::EmptyClass { record }),
            Ok(class) => {
                previous = Some(class);
                class
            }
            Err(error) => {
                return Err(DecodeError::ClassNotUtf8 {
                    record,
                    valid_up_to: error.valid_up_to(),
                })
            }
        };
        let payload_len = cursor
            .array::<4>()
            .ok_or_else(|| cursor.truncated(record, "payload length", 4))?;
        // A length that does not fit a usize cannot fit in `bytes` either.
        let payload_len = usize::try_from(u32::from_le_bytes(*payload_len)).unwrap_or(usize::MAX);
        let payload = cursor
            .slice(payload_len)
            .ok_or_else(|| cursor.truncated(record, "payload", payload_len))?;
        records.push(Record { class, payload });
    }
    let extra = cursor.remaining().len();
    if extra != 0 {
        return Err(DecodeError::TrailingBytes { count, extra });
    }
    Ok(Frame {
        origin,
        first_seq,
        sent_at,
        records,
        mac,
    })
}

/// The header of a frame whose body may not decode: `(origin, first_seq, count)`, when the
/// magic, the version, the count and the sequence range are valid. What a receiver needs to
/// account for the messages of a frame it cannot read. Total.
pub fn decode_header(bytes: &[u8]) -> Option<(Origin, u64, u32)> {
    let header = read_header(&mut Cursor { bytes, pos: 0 })?;
    let valid = header.magic == *MAGIC
        && matches!(header.version, VERSION | VERSION_SIGNED)
        && header.count > 0
        && header
            .first_seq
            .checked_add(u64::from(header.count - 1))
            .is_some();
    valid.then_some((header.origin, header.first_seq, header.count))
}

/// Capacity of the records `Vec` of a frame of `len` bytes that claims `count` records:
/// no more than the bytes after the header can hold, whatever `count` says.
fn record_capacity(count: u32, len: usize) -> usize {
    let fit = len.saturating_sub(HEADER_LEN) / RECORD_OVERHEAD;
    usize::try_from(count).map_or(fit, |count| count.min(fit))
}

/// The fields of a frame header.
struct Header {
    magic: [u8; 3],
    version: u8,
    origin: Origin,
    first_seq: u64,
    count: u32,
    sent_at: u64,
}

/// Reads the [`HEADER_LEN`] bytes of a header; `None` if there are fewer.
fn read_header(cursor: &mut Cursor<'_>) -> Option<Header> {
    Some(Header {
        magic: *cursor.array()?,
        version: cursor.array::<1>()?[0],
        origin: *cursor.array()?,
        first_seq: u64::from_le_bytes(*cursor.array()?),
        count: u32::from_le_bytes(*cursor.array()?),
        sent_at: u64::from_le_bytes(*cursor.array()?),
    })
}

/// A bounds-checked reader: each read either returns the bytes and moves past them, or
/// returns `None` and moves nowhere.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> &'a [u8] {
        self.bytes.get(self.pos..).unwrap_or_default()
    }

    fn slice(&mut self, len: usize) -> Option<&'a [u8]> {
        let taken = self.remaining().get(..len)?;
        self.pos += len;
        Some(taken)
    }

    fn array<const N: usize>(&mut self) -> Option<&'a [u8; N]> {
        let (taken, _) = self.remaining().split_first_chunk::<N>()?;
        self.pos += N;
        Some(taken)
    }

    /// The error for a `field` of `record` that needs `needed` bytes from here.
    fn truncated(&self, record: u32, field: &'static str, needed: usize) -> DecodeError {
        DecodeError::Truncated {
            record,
            offset: self.pos,
            field,
            needed,
            available: self.remaining().len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::{Duration, Instant};

    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;
    use crate::wire::error::quote;
    use crate::wire::serverpod::decode_serverpod;

    const ORIGIN: Origin = *b"0123456789abcdef";
    const SENT_AT: u64 = 0x1122_3344_5566_7788;

    /// The frame of `records`, written as the publisher writes one.
    fn frame(first_seq: u64, records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let count = u32::try_from(records.len()).unwrap();
        write_header(&mut out, &ORIGIN, first_seq, count, SENT_AT);
        for (class, payload) in records {
            let mut record = Vec::new();
            write_record(&mut record, class, |out| {
                out.extend_from_slice(payload);
                Ok::<(), Infallible>(())
            })
            .unwrap();
            out.extend_from_slice(&record);
        }
        out
    }

    /// Re-encodes a decoded frame.
    fn encode(frame: &Frame<'_>) -> Vec<u8> {
        let owned: Vec<(&str, &[u8])> =
            frame.records.iter().map(|r| (r.class, r.payload)).collect();
        let mut out = Vec::new();
        write_header_of(
            &mut out,
            &frame.origin,
            frame.first_seq,
            u32::try_from(owned.len()).unwrap(),
            frame.sent_at,
            frame.mac.is_some(),
        );
        for (class, payload) in owned {
            write_record(&mut out, class, |out| {
                out.extend_from_slice(payload);
                Ok::<(), Infallible>(())
            })
            .unwrap();
        }
        if let Some((_, mac)) = frame.mac {
            out.extend_from_slice(mac);
        }
        out
    }

    /// A header claiming `count` records, followed by `body`.
    fn raw_frame(first_seq: u64, count: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_header(&mut out, &ORIGIN, first_seq, count, SENT_AT);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn header_and_record_layout_is_the_documented_one() {
        let bytes = frame(0x0102_0304_0506_0708, &[("Ab", b"xyz")]);
        let mut expected = b"EVB\x03".to_vec();
        expected.extend_from_slice(&ORIGIN);
        expected.extend_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1]);
        expected.extend_from_slice(&[1, 0, 0, 0]);
        expected.extend_from_slice(&[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        assert_eq!(expected.len(), HEADER_LEN);
        expected.extend_from_slice(&[2, 0, b'A', b'b', 3, 0, 0, 0, b'x', b'y', b'z']);
        assert_eq!(bytes, expected);
        assert_eq!(bytes.len(), HEADER_LEN + RECORD_OVERHEAD + 2 + 3);
    }

    #[test]
    fn frame_with_one_record_round_trips() {
        let bytes = frame(7, &[("SimpleData", b"\x81\xa3num\x2a")]);
        let decoded = decode_frame(&bytes).unwrap();
        assert_eq!(
            decoded,
            Frame {
                origin: ORIGIN,
                first_seq: 7,
                sent_at: SENT_AT,
                records: vec![Record {
                    class: "SimpleData",
                    payload: b"\x81\xa3num\x2a",
                }],
                mac: None,
            }
        );
        assert_eq!(encode(&decoded), bytes);
    }

    #[test]
    fn frame_with_many_records_round_trips_with_unicode_classes_and_empty_payloads() {
        let long_class = "C".repeat(MAX_CLASS_LEN);
        let records: Vec<(&str, &[u8])> = vec![
            ("a", b""),
            ("Übersicht", b"\x00\x01"),
            ("事件.消息", b""),
            ("🦀", &[0xff; 300]),
            (&long_class, b"p"),
        ];
        let bytes = frame(u64::MAX - 4, &records);
        let decoded = decode_frame(&bytes).unwrap();
        assert_eq!(decoded.first_seq, u64::MAX - 4);
        let back: Vec<(&str, &[u8])> = decoded
            .records
            .iter()
            .map(|r| (r.class, r.payload))
            .collect();
        assert_eq!(back, records);
        assert_eq!(decoded.records.capacity(), records.len());
        assert_eq!(encode(&decoded), bytes);
    }

    #[test]
    fn write_record_undoes_a_failed_payload() {
        let mut out = b"before".to_vec();
        let result = write_record(&mut out, "Class", |out| {
            out.extend_from_slice(b"half a payload");
            Err("refused")
        });
        assert_eq!(result, Err("refused"));
        assert_eq!(out, b"before");
    }

    #[test]
    fn decode_refuses_a_frame_shorter_than_a_header() {
        let bytes = frame(1, &[("A", b"")]);
        for len in 0..HEADER_LEN {
            assert_eq!(
                decode_frame(&bytes[..len]),
                Err(DecodeError::TooShort { len })
            );
        }
        assert_eq!(
            DecodeError::TooShort { len: 10 }.to_string(),
            "frame too short: 10 bytes, header needs 40"
        );
    }

    #[test]
    fn decode_refuses_bad_magic() {
        let mut bytes = frame(1, &[("A", b"")]);
        bytes[..3].copy_from_slice(b"{\"c");
        let error = decode_frame(&bytes).unwrap_err();
        assert_eq!(error, DecodeError::BadMagic { found: *b"{\"c" });
        assert_eq!(
            error.to_string(),
            r#"not an evbus frame: starts with "{\"c", expected "EVB""#
        );
    }

    #[test]
    fn decode_refuses_unsupported_version() {
        let mut bytes = frame(1, &[("A", b"")]);
        // 1 and 2: the versions before the header carried the send time.
        for version in [0, 1, 2, 5, 255] {
            bytes[3] = version;
            let error = decode_frame(&bytes).unwrap_err();
            assert_eq!(error, DecodeError::UnsupportedVersion { version });
            assert_eq!(
                error.to_string(),
                format!("unsupported frame version {version}, this build reads versions 3 and 4")
            );
            assert_eq!(decode_header(&bytes), None);
        }
    }

    #[test]
    fn decode_refuses_zero_count() {
        let error = decode_frame(&raw_frame(1, 0, b"")).unwrap_err();
        assert_eq!(error, DecodeError::ZeroCount);
        assert_eq!(error.to_string(), "frame has a record count of 0");
    }

    #[test]
    fn decode_refuses_a_sequence_past_u64_max() {
        let record = [1, 0, b'A', 0, 0, 0, 0];
        let two = [record, record].concat();
        assert!(decode_frame(&raw_frame(u64::MAX - 1, 2, &two)).is_ok());
        assert!(decode_frame(&raw_frame(u64::MAX, 1, &record)).is_ok());
        let error = decode_frame(&raw_frame(u64::MAX, 2, &two)).unwrap_err();
        assert_eq!(
            error,
            DecodeError::SequenceOverflow {
                first_seq: u64::MAX,
                count: 2
            }
        );
        assert_eq!(
            error.to_string(),
            "frame sequence overflows: first_seq 18446744073709551615 with 2 records passes u64::MAX"
        );
    }

    #[test]
    fn decode_refuses_a_truncated_record_and_says_where() {
        let bytes = frame(1, &[("A", b"x"), ("Bc", b"yz")]);
        // Record 1 starts after record 0 (6 + 1 + 1 bytes).
        let second = HEADER_LEN + 8;
        let cases = [
            (second + 1, "class length", second, 2, 1),
            (second + 3, "class name", second + 2, 2, 1),
            (second + 7, "payload length", second + 4, 4, 3),
            (second + 9, "payload", second + 8, 2, 1),
        ];
        for (len, field, offset, needed, available) in cases {
            let error = decode_frame(&bytes[..len]).unwrap_err();
            assert_eq!(
                error,
                DecodeError::Truncated {
                    record: 1,
                    offset,
                    field,
                    needed,
                    available
                },
                "cut at {len}"
            );
        }
        assert_eq!(
            decode_frame(&bytes[..second + 9]).unwrap_err().to_string(),
            "record 1 truncated at byte 56: its payload needs 2 bytes, 1 left"
        );
    }

    #[test]
    fn decode_refuses_an_empty_class() {
        let error = decode_frame(&raw_frame(1, 1, &[0, 0, 1, 0, 0, 0, b'x'])).unwrap_err();
        assert_eq!(error, DecodeError::EmptyClass { record: 0 });
        assert_eq!(error.to_string(), "record 0 has an empty class name");
    }

    #[test]
    fn decode_refuses_a_class_that_is_not_utf8() {
        let error =
            decode_frame(&raw_frame(1, 1, &[3, 0, b'a', 0xc3, 0x28, 0, 0, 0, 0])).unwrap_err();
        assert_eq!(
            error,
            DecodeError::ClassNotUtf8 {
                record: 0,
                valid_up_to: 1
            }
        );
        assert_eq!(
            error.to_string(),
            "record 0 has a class name that is not UTF-8 (invalid after 1 bytes)"
        );
    }

    #[test]
    fn decode_refuses_trailing_bytes() {
        let mut bytes = frame(1, &[("A", b"x")]);
        bytes.extend_from_slice(b"\0\0");
        let error = decode_frame(&bytes).unwrap_err();
        assert_eq!(error, DecodeError::TrailingBytes { count: 1, extra: 2 });
        assert_eq!(
            error.to_string(),
            "2 trailing bytes after the frame's 1 records"
        );
    }

    #[test]
    fn a_huge_count_is_refused_without_a_huge_allocation() {
        // 48 bytes claiming u32::MAX records: one record fits, and it is cut short.
        let bytes = raw_frame(0, u32::MAX, &[1, 0, b'A', 0, 0, 0, 0, 0]);
        assert_eq!(bytes.len(), HEADER_LEN + 8);
        assert_eq!(record_capacity(u32::MAX, bytes.len()), 1);
        let started = Instant::now();
        let error = decode_frame(&bytes).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(
            error,
            DecodeError::Truncated {
                record: 1,
                offset: 47,
                field: "class length",
                needed: 2,
                available: 1
            }
        );
    }

    #[test]
    fn record_capacity_is_bounded_by_the_frame_length() {
        assert_eq!(record_capacity(3, HEADER_LEN + 100), 3);
        assert_eq!(
            record_capacity(u32::MAX, HEADER_LEN + 100),
            100 / RECORD_OVERHEAD
        );
        assert_eq!(record_capacity(u32::MAX, HEADER_LEN), 0);
        assert_eq!(record_capacity(u32::MAX, 0), 0);
    }

    #[test]
    fn error_texts_quote_at_most_a_short_prefix() {
        let long = format!(r#"["{}"]"#, "x".repeat(10_000));
        let errors = [
            decode_serverpod(long.as_bytes()).unwrap_err(),
            decode_serverpod(format!(r#"{{"className":{long},"data":{{}}}}"#).as_bytes())
                .unwrap_err(),
            decode_serverpod(format!(r#"{{"className":"A","data":{long}"#).as_bytes()).unwrap_err(),
        ];
        for error in errors {
            let text = error.to_string();
            assert!(text.len() < 200, "{text}");
        }
        // Cut at a character boundary.
        assert_eq!(quote(&"é".repeat(40), 33), format!("{}...", "é".repeat(16)));
        assert_eq!(quote("a\nb\u{1b}", 32), "a\\nb\\u{1b}");
        assert_eq!(quote("abc", 3), "abc");
    }

    // ---- properties ---------------------------------------------------------------------

    fn class() -> impl Strategy<Value = String> {
        vec(any::<char>(), 1..12).prop_map(String::from_iter)
    }

    fn records() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
        vec((class(), vec(any::<u8>(), 0..24)), 1..8)
    }

    fn valid_frame() -> impl Strategy<Value = (u64, Vec<u8>)> {
        (any::<u64>(), records()).prop_map(|(first_seq, records)| {
            let first_seq = first_seq.min(u64::MAX - records.len() as u64);
            let borrowed: Vec<(&str, &[u8])> = records
                .iter()
                .map(|(c, p)| (c.as_str(), p.as_slice()))
                .collect();
            (first_seq, frame(first_seq, &borrowed))
        })
    }

    /// What a decode that succeeded must satisfy: bounded, and canonical.
    fn check_decoded(bytes: &[u8]) -> Result<(), TestCaseError> {
        if let Ok(frame) = decode_frame(bytes) {
            prop_assert!(frame.records.capacity() <= bytes.len() / RECORD_OVERHEAD);
            prop_assert_eq!(encode(&frame), bytes);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn valid_frames_round_trip_exactly((first_seq, bytes) in valid_frame()) {
            let decoded = decode_frame(&bytes).unwrap();
            prop_assert_eq!(decoded.first_seq, first_seq);
            prop_assert_eq!(decoded.records.capacity(), decoded.records.len());
            prop_assert_eq!(encode(&decoded), bytes);
        }

        #[test]
        fn truncated_frames_are_refused((_, bytes) in valid_frame(), cut in any::<prop::sample::Index>()) {
            let len = cut.index(bytes.len());
            prop_assert!(decode_frame(&bytes[..len]).is_err());
        }

        #[test]
        fn mutated_frames_never_panic_and_reencode_exactly(
            (_, mut bytes) in valid_frame(),
            edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            extra in vec(any::<u8>(), 0..8),
        ) {
            for (at, value) in edits {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            check_decoded(&bytes)?;
            bytes.extend_from_slice(&extra);
            check_decoded(&bytes)?;
        }

        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in vec(any::<u8>(), 0..96)) {
            check_decoded(&bytes)?;
            let _ = decode_serverpod(&bytes);
            // And behind a valid header, so that records get parsed.
            let mut framed = raw_frame(0, u32::from(bytes.first().copied().unwrap_or(1)), b"");
            framed.append(&mut bytes);
            check_decoded(&framed)?;
        }
    }
}
