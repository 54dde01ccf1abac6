//! Untrusted bytes into the Native frame decoder: it must return, never panic, keep its one
//! allocation within what the input can hold, and, the format being canonical, any frame it
//! accepts must be exactly what `write_header` and `write_record` produce from its parts.
//!
//! Each input is decoded as it is, and also behind a valid header whose count is its first
//! byte: most inputs fail at the header, and the second reading sends every one of them
//! through the record parser.

#![no_main]

use std::convert::Infallible;

use evbus::fuzzing::{decode_frame, write_header, write_record, HEADER_LEN, RECORD_OVERHEAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some((&count, records)) = data.split_first() {
        let mut framed = Vec::with_capacity(HEADER_LEN + records.len());
        write_header(&mut framed, &[7; 16], u64::MAX - 255, u32::from(count), 9);
        framed.extend_from_slice(records);
        check(&framed);
    }
});

fn check(data: &[u8]) {
    let Ok(frame) = decode_frame(data) else {
        return;
    };
    // Each record takes at least RECORD_OVERHEAD bytes after the header.
    let bound = (data.len() - HEADER_LEN) / RECORD_OVERHEAD;
    assert!(
        frame.records.len() <= bound,
        "{} records from {} bytes",
        frame.records.len(),
        data.len()
    );
    assert!(
        frame.records.capacity() <= bound,
        "capacity {} from {} bytes",
        frame.records.capacity(),
        data.len()
    );

    let count = u32::try_from(frame.records.len()).expect("at most u32::MAX records");
    let mut out = Vec::with_capacity(data.len());
    write_header(&mut out, &frame.origin, frame.first_seq, count, frame.sent_at);
    for record in &frame.records {
        write_record(&mut out, record.class, |out| {
            out.extend_from_slice(record.payload);
            Ok::<(), Infallible>(())
        })
        .unwrap_or_else(|never| match never {});
    }
    assert_eq!(out, data, "a decoded frame re-encodes to other bytes");
}
