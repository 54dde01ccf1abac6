//! Untrusted bytes into repair's control-message decoder (K05): it must return, never panic,
//! and, the format being canonical, any message it accepts must encode back to exactly the
//! same bytes (with the same MAC bytes when it is signed). The reader's shortcut to the
//! channel of an answer, gone or latest message must agree with the full decoding.
//!
//! Each input is decoded as it is, and also behind a valid magic, version and kind taken
//! from its first byte, so that most inputs reach the field parsers.

#![no_main]

use evbus::fuzzing::control::{channel_of, decode, Control};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some((&first, rest)) = data.split_first() {
        let mut message = b"EVC".to_vec();
        message.push(1 + (first & 1));
        message.push(1 + (first >> 1) % 5);
        message.extend_from_slice(rest);
        check(&message);
    }
});

fn check(data: &[u8]) {
    let Ok(decoded) = decode(data) else {
        return;
    };
    let again = match decoded.signed {
        Some((_, mac)) => decoded.control.encode(true, |out| out.extend_from_slice(mac)),
        None => decoded.control.encode(false, |_| unreachable!("unsigned")),
    };
    assert_eq!(again, data, "not canonical: {:?}", decoded.control);
    let channel = match decoded.control {
        Control::Answer { channel, .. }
        | Control::Gone { channel, .. }
        | Control::Latest { channel, .. } => Some(channel.as_bytes()),
        Control::Request { .. } | Control::Announce { .. } => None,
    };
    assert_eq!(channel_of(data), channel);
}
