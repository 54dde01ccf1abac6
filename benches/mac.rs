//! What a signing key costs per message: the keyed BLAKE3 MAC evbus computes over each
//! Native frame when it publishes it and again when it receives it
//! (`BusBuilder::signing_key`). A frame carries every message of one channel that was queued
//! together, so the cost per message falls as the publisher coalesces: frames of 1, 64 and
//! 1,024 messages of 48 bytes each (a small struct in MessagePack plus its record header).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

/// Bytes of one message in a frame: a record header, a class name and a small payload.
const MESSAGE: usize = 48;

fn mac(c: &mut Criterion) {
    let key = blake3::derive_key(
        "evbus 2026-11 native frame MAC",
        b"a bench key of 32 bytes or more.",
    );
    let mut group = c.benchmark_group("frame_mac");
    for messages in [1usize, 64, 1024] {
        let frame = vec![0x5au8; 40 + messages * MESSAGE];
        group.throughput(Throughput::Elements(messages as u64));
        group.bench_with_input(BenchmarkId::new("sign", messages), &frame, |b, frame| {
            b.iter(|| blake3::keyed_hash(&key, black_box(frame)))
        });
        let expected = blake3::keyed_hash(&key, &frame);
        group.bench_with_input(BenchmarkId::new("verify", messages), &frame, |b, frame| {
            b.iter(|| blake3::keyed_hash(&key, black_box(frame)) == expected)
        });
    }
    group.finish();
}

criterion_group!(benches, mac);
criterion_main!(benches);
