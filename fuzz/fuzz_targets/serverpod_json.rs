//! Untrusted bytes into the Serverpod envelope decoder: it must return, never panic, and a
//! message it accepts must survive `encode_serverpod`: the envelope written from its class
//! and data decodes back to the same class, with data that is valid JSON. Byte equality is
//! not required (the input may have other whitespace, other keys, or no `__className__`),
//! but encoding must be a fixed point after one application.

#![no_main]

use evbus::fuzzing::{decode_serverpod, encode_serverpod};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = decode_serverpod(data) else {
        return;
    };
    let mut out = Vec::new();
    encode_serverpod(&mut out, &message.class, message.data.as_bytes());
    // `decode_serverpod` parses `data` as one complete JSON value (a serde_json raw value),
    // so its `Ok` is the check that the written data is valid JSON.
    let again = match decode_serverpod(&out) {
        Ok(again) => again,
        Err(error) => panic!(
            "the re-encoded envelope does not decode: {error}\n{}",
            out.escape_ascii()
        ),
    };
    assert_eq!(again.class, message.class);
    if message.data.starts_with('{') {
        // An object gets `__className__` as its first member, unless it had it there.
        let members = again
            .data
            .strip_prefix('{')
            .expect("an object stays an object");
        assert!(
            members.trim_start().starts_with("\"__className__\""),
            "{}",
            again.data
        );
    } else {
        assert_eq!(again.data, message.data);
    }

    let mut twice = Vec::new();
    encode_serverpod(&mut twice, &again.class, again.data.as_bytes());
    assert_eq!(twice, out, "encoding is not a fixed point");
});
