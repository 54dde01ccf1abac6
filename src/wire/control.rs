//! Repair's control messages (K02, K04): what a receiver and an origin say to each other
//! about a gap, beside the frames themselves.
//!
//! Every bus that keeps a retransmit window subscribes its own *control channel* (named for
//! its origin id, [`control_channel`]). A receiver that finds a gap sends a [`Request`] to
//! the origin's control channel; the origin sends what it still has to the asker's control
//! channel, each frame as it was published, wrapped in an [`Answer`], and says what it no
//! longer has with a [`Gone`]. An origin that goes quiet on a channel publishes an
//! [`Announce`] on that channel itself, so that a lost last message shows as a gap.
//!
//! All integers are little-endian.
//!
//! ```text
//! offset 0  b"EVC"          magic
//! offset 3  version: u8     1 (2: signed, a MAC of 32 bytes over all before it follows)
//! offset 4  kind: u8        1 request, 2 answer, 3 gone, 4 announce, 5 latest
//! offset 5  the kind's fields:
//!   request:  asker: [u8;16], channel_len: u16, channel, from: u64, to: u64
//!   answer:   channel_len: u16, channel, frame: the rest (a Native frame, with its own MAC)
//!   gone:     origin: [u8;16], channel_len: u16, channel, from: u64, to: u64
//!   announce: origin: [u8;16], last: u64
//!   latest:   origin: [u8;16], channel_len: u16, channel, last: u64
//! ```
//!
//! `channel` is the Redis channel (namespace included), UTF-8, 1 to `u16::MAX` bytes. A range
//! `from..=to` has `1 <= from <= to`.
//!
//! # Decoding is total
//!
//! These bytes come from Redis like every frame: [`decode`] returns `Ok` or a short reason
//! for every byte string, never panics and allocates nothing (the fields borrow from the
//! input). Whether a signed message's MAC verifies is the caller's to check
//! ([`Control::signed`](Control#structfield.signed)), as for frames.
//!
//! [`Request`]: Control::Request
//! [`Answer`]: Control::Answer
//! [`Gone`]: Control::Gone
//! [`Announce`]: Control::Announce
//! [`Latest`]: Control::Latest

use super::layout::{Origin, MAC_LEN};

/// The magic of a control message.
pub const MAGIC: &[u8; 3] = b"EVC";
const VERSION: u8 = 1;
const VERSION_SIGNED: u8 = 2;
const REQUEST: u8 = 1;
const ANSWER: u8 = 2;
const GONE: u8 = 3;
const ANNOUNCE: u8 = 4;
const LATEST: u8 = 5;

/// What a control channel's name has after the namespace, before the origin id in hex.
/// (A bus's own channels must not use it.)
pub const CONTROL_INFIX: &str = "__evbus:repair:";

/// The control channel of the bus whose origin is `origin`, under `namespace`.
pub fn control_channel(namespace: &str, origin: &Origin) -> String {
    let mut channel = format!("{namespace}{CONTROL_INFIX}");
    for byte in origin {
        channel.push_str(&format!("{byte:02x}"));
    }
    channel
}

/// A decoded control message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control<'a> {
    /// `asker` lost `from..=to` of the receiving origin's messages on `channel`; `to` is
    /// `u64::MAX` to ask for the origin's [`Latest`](Control::Latest) sequence number instead
    /// (what a receiver asks after it resubscribed).
    Request {
        /// The asking bus's origin id: its control channel receives the answers.
        asker: Origin,
        /// The Redis channel.
        channel: &'a str,
        /// The first sequence number asked for.
        from: u64,
        /// The last one.
        to: u64,
    },
    /// A frame the origin published on `channel`, sent again to one asker.
    Answer {
        /// The Redis channel the frame was published on.
        channel: &'a str,
        /// The frame, exactly as it was published.
        frame: &'a [u8],
    },
    /// `origin` no longer has `from..=to` on `channel`: the asker counts them missed.
    Gone {
        /// The origin that lost them from its window.
        origin: Origin,
        /// The Redis channel.
        channel: &'a str,
        /// The first sequence number gone.
        from: u64,
        /// The last one.
        to: u64,
    },
    /// `origin`'s last sequence number on `channel` is `last`: the answer to a request up
    /// to `u64::MAX`.
    Latest {
        /// The origin answering.
        origin: Origin,
        /// The Redis channel.
        channel: &'a str,
        /// Its last sequence number there.
        last: u64,
    },
    /// `origin`'s last sequence number on the channel this came on is `last`.
    Announce {
        /// The origin that went quiet.
        origin: Origin,
        /// Its last sequence number on the channel.
        last: u64,
    },
}

/// A decoded control message, and the part its MAC covers when it has one.
#[derive(Clone, Copy, Debug)]
pub struct Decoded<'a> {
    /// The message.
    pub control: Control<'a>,
    /// For a signed message: the bytes the MAC covers, and the MAC.
    pub signed: Option<(&'a [u8], &'a [u8; MAC_LEN])>,
}

impl Control<'_> {
    /// The bytes of this message, signed with `seal` when `signed` (`seal` appends the MAC).
    pub fn encode(&self, signed: bool, seal: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(MAGIC);
        out.push(if signed { VERSION_SIGNED } else { VERSION });
        match *self {
            Control::Request {
                asker,
                channel,
                from,
                to,
            } => put_range(&mut out, REQUEST, &asker, channel, (from, to)),
            Control::Answer { channel, frame } => {
                out.push(ANSWER);
                put_channel(&mut out, channel);
                out.extend_from_slice(frame);
            }
            Control::Gone {
                origin,
                channel,
                from,
                to,
            } => put_range(&mut out, GONE, &origin, channel, (from, to)),
            Control::Latest {
                origin,
                channel,
                last,
            } => {
                out.push(LATEST);
                out.extend_from_slice(&origin);
                put_channel(&mut out, channel);
                out.extend_from_slice(&last.to_le_bytes());
            }
            Control::Announce { origin, last } => {
                out.push(ANNOUNCE);
                out.extend_from_slice(&origin);
                out.extend_from_slice(&last.to_le_bytes());
            }
        }
        if signed {
            seal(&mut out);
        }
        out
    }
}

/// Whether `bytes` claims to be a control message (it starts with the magic).
pub fn is_control(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// The Redis channel an answer, gone or latest message is about, read without decoding the rest:
/// what the reader needs to hand it to that channel's dispatch thread. Total.
pub fn channel_of(bytes: &[u8]) -> Option<&[u8]> {
    let mut cursor = Cursor { bytes, pos: 4 };
    match cursor.byte()? {
        ANSWER => {}
        GONE | LATEST => {
            cursor.array::<16>()?;
        }
        _ => return None,
    }
    let len = usize::from(u16::from_le_bytes(*cursor.array()?));
    cursor.slice(len)
}

/// Decodes a control message.
///
/// # Errors
///
/// A short reason naming the first thing wrong: the magic, the version, the kind, a field
/// cut short, a channel name that is empty or not UTF-8, an empty or reversed range, or bytes
/// left over.
pub fn decode(bytes: &[u8]) -> Result<Decoded<'_>, &'static str> {
    if !bytes.starts_with(MAGIC) {
        return Err("not a control message (no EVC magic)");
    }
    let (body, signed) = match bytes.get(3) {
        Some(&VERSION) => (bytes, None),
        Some(&VERSION_SIGNED) => {
            let at = bytes
                .len()
                .checked_sub(MAC_LEN)
                .filter(|&at| at >= 5)
                .ok_or("control message too short for its MAC")?;
            let (body, mac) = bytes.split_at(at);
            let mac: &[u8; MAC_LEN] = mac.try_into().map_err(|_| "bad MAC length")?;
            (body, Some((body, mac)))
        }
        Some(_) => return Err("unsupported control message version"),
        None => return Err("control message too short"),
    };
    let mut cursor = Cursor {
        bytes: body,
        pos: 4,
    };
    const CUT: &str = "control message cut short";
    let kind = cursor.byte().ok_or(CUT)?;
    let control = match kind {
        REQUEST | GONE => {
            let origin = *cursor.array::<16>().ok_or(CUT)?;
            let channel = cursor.channel()?;
            let from = u64::from_le_bytes(*cursor.array().ok_or(CUT)?);
            let to = u64::from_le_bytes(*cursor.array().ok_or(CUT)?);
            if from == 0 || to < from {
                return Err("control message with an empty range");
            }
            if kind == REQUEST {
                Control::Request {
                    asker: origin,
                    channel,
                    from,
                    to,
                }
            } else {
                Control::Gone {
                    origin,
                    channel,
                    from,
                    to,
                }
            }
        }
        ANSWER => {
            let channel = cursor.channel()?;
            let frame = cursor.rest();
            if frame.is_empty() {
                return Err("repair answer without a frame");
            }
            Control::Answer { channel, frame }
        }
        LATEST => {
            let origin = *cursor.array::<16>().ok_or(CUT)?;
            let channel = cursor.channel()?;
            let last = u64::from_le_bytes(*cursor.array().ok_or(CUT)?);
            Control::Latest {
                origin,
                channel,
                last,
            }
        }
        ANNOUNCE => {
            let origin = *cursor.array::<16>().ok_or(CUT)?;
            let last = u64::from_le_bytes(*cursor.array().ok_or(CUT)?);
            Control::Announce { origin, last }
        }
        _ => return Err("unknown control message kind"),
    };
    if !cursor.rest().is_empty() {
        return Err("trailing bytes after a control message");
    }
    Ok(Decoded { control, signed })
}

/// A request's or a gone's fields: kind, origin, channel and range.
fn put_range(out: &mut Vec<u8>, kind: u8, origin: &Origin, channel: &str, (from, to): (u64, u64)) {
    out.push(kind);
    out.extend_from_slice(origin);
    put_channel(out, channel);
    out.extend_from_slice(&from.to_le_bytes());
    out.extend_from_slice(&to.to_le_bytes());
}

fn put_channel(out: &mut Vec<u8>, channel: &str) {
    // Channels are Redis channel names the bus subscribes or posts to; one past u16::MAX
    // bytes is written empty, which `decode` refuses.
    let len = u16::try_from(channel.len()).unwrap_or(0);
    out.extend_from_slice(&len.to_le_bytes());
    if len > 0 {
        out.extend_from_slice(channel.as_bytes());
    }
}

/// A bounds-checked reader.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn slice(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(len)?;
        let slice = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(slice)
    }

    fn array<const N: usize>(&mut self) -> Option<&'a [u8; N]> {
        self.slice(N)?.try_into().ok()
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        self.pos = self.bytes.len();
        rest
    }

    fn channel(&mut self) -> Result<&'a str, &'static str> {
        let len = self.array::<2>().ok_or("control message cut short")?;
        let len = usize::from(u16::from_le_bytes(*len));
        let channel = self.slice(len).ok_or("control message cut short")?;
        match std::str::from_utf8(channel) {
            Ok("") => Err("control message with an empty channel"),
            Ok(channel) => Ok(channel),
            Err(_) => Err("control message with a channel that is not UTF-8"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const O: Origin = *b"origin-a-16bytes";

    fn every_kind() -> Vec<Control<'static>> {
        vec![
            Control::Request {
                asker: O,
                channel: "ns:chat",
                from: 3,
                to: u64::MAX,
            },
            Control::Answer {
                channel: "ns:chat",
                frame: b"EVB-frame-bytes",
            },
            Control::Gone {
                origin: O,
                channel: "c",
                from: 1,
                to: 1,
            },
            Control::Announce { origin: O, last: 9 },
            Control::Latest {
                origin: O,
                channel: "ns:chat",
                last: 0,
            },
        ]
    }

    #[test]
    fn every_kind_round_trips_signed_or_not() {
        for control in every_kind() {
            let plain = control.encode(false, |_| unreachable!());
            let decoded = decode(&plain).unwrap();
            assert_eq!(decoded.control, control);
            assert!(decoded.signed.is_none());
            let signed = control.encode(true, |out| out.extend_from_slice(&[7; MAC_LEN]));
            let decoded = decode(&signed).unwrap();
            assert_eq!(decoded.control, control);
            let (covered, mac) = decoded.signed.unwrap();
            assert_eq!(covered, &signed[..signed.len() - MAC_LEN]);
            assert_eq!(mac, &[7; MAC_LEN]);
        }
    }

    #[test]
    fn every_prefix_and_every_bad_range_is_refused_without_panic() {
        for control in every_kind() {
            let bytes = control.encode(false, |_| {});
            // An answer's frame is the rest: every cut through it still decodes (to a
            // shorter frame, which the frame decoder then judges).
            let floor = match control {
                Control::Answer { channel, .. } => 5 + 2 + channel.len() + 1,
                _ => bytes.len(),
            };
            for cut in 0..floor {
                assert!(decode(&bytes[..cut]).is_err(), "{control:?} cut at {cut}");
            }
        }
        let reversed = Control::Request {
            asker: O,
            channel: "c",
            from: 5,
            to: 4,
        };
        assert!(decode(&reversed.encode(false, |_| {})).is_err());
        let zero = Control::Gone {
            origin: O,
            channel: "c",
            from: 0,
            to: 4,
        };
        assert!(decode(&zero.encode(false, |_| {})).is_err());
    }

    #[test]
    fn the_channel_of_an_answer_or_gone_reads_without_decoding() {
        let kinds = every_kind();
        assert_eq!(
            channel_of(&kinds[1].encode(false, |_| {})),
            Some(&b"ns:chat"[..])
        );
        assert_eq!(channel_of(&kinds[2].encode(false, |_| {})), Some(&b"c"[..]));
        assert_eq!(
            channel_of(&kinds[4].encode(false, |_| {})),
            Some(&b"ns:chat"[..])
        );
        assert_eq!(channel_of(&kinds[0].encode(false, |_| {})), None);
        assert_eq!(channel_of(b"EVC"), None);
    }
}
