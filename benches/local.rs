//! Local posting, against `tokio::sync::broadcast` on the same thread.
//!
//! - `fanout`: one channel with 1, 16 and 256 inline listeners, a `u64` payload. One iteration
//!   is one post (every listener called once); the throughput is per delivery.
//!   `tokio_broadcast` is one `send` then one `try_recv` on each of N receivers.
//! - `empty_channel`: a post that reaches nobody, beside a bare `ArcSwapOption` load (the one
//!   atomic operation such a post is built on).
//! - `stream`: 64 posts to one stream, then draining it (`evbus/handle` with `poll_next`,
//!   `evbus/try_recv` with `try_recv`, as tokio's receiver is drained); beside tokio broadcast
//!   with one receiver.
//!
//! Run with `cargo bench --bench local`.

use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use evbus::{Bus, MessageScope};
use futures_core::Stream;
use tokio::sync::broadcast;

const LISTENERS: [usize; 3] = [1, 16, 256];
/// Posts per iteration of the `stream` group.
const BATCH: u64 = 64;

fn configure<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    group
}

fn fanout(c: &mut Criterion) {
    let mut group = configure(c, "fanout");
    for n in LISTENERS {
        group.throughput(Throughput::Elements(n as u64));

        let bus = Bus::local();
        for _ in 0..n {
            bus.messages().add_listener("c", |x: &u64| {
                black_box(*x);
            });
        }
        let channel = bus.channel::<u64>("c");
        let reached = channel
            .post(0, MessageScope::Local)
            .unwrap()
            .local_receivers();
        assert_eq!(reached, n, "every listener is reached");

        group.bench_function(BenchmarkId::new("evbus/handle", n), |b| {
            let mut v = 0u64;
            b.iter(|| {
                v = v.wrapping_add(1);
                channel.post(black_box(v), MessageScope::Local).unwrap()
            })
        });

        group.bench_function(BenchmarkId::new("evbus/by_name", n), |b| {
            let messages = bus.messages();
            let mut v = 0u64;
            b.iter(|| {
                v = v.wrapping_add(1);
                messages
                    .post_message(black_box("c"), black_box(v), MessageScope::Local)
                    .unwrap()
            })
        });

        let (tx, first) = broadcast::channel::<u64>(16);
        let mut receivers: Vec<_> = std::iter::once(first)
            .chain((1..n).map(|_| tx.subscribe()))
            .collect();
        group.bench_function(BenchmarkId::new("tokio_broadcast", n), |b| {
            let mut v = 0u64;
            b.iter(|| {
                v = v.wrapping_add(1);
                tx.send(black_box(v)).unwrap();
                for rx in &mut receivers {
                    black_box(rx.try_recv().unwrap());
                }
            })
        });
    }
    group.finish();
}

fn empty_channel(c: &mut Criterion) {
    let mut group = configure(c, "empty_channel");
    group.throughput(Throughput::Elements(1));

    let bus = Bus::local();
    // The handle keeps "empty" interned, so the post by name finds its slot too.
    let channel = bus.channel::<u64>("empty");
    assert_eq!(
        channel
            .post(0, MessageScope::Local)
            .unwrap()
            .local_receivers(),
        0
    );

    group.bench_function("evbus/handle", |b| {
        b.iter(|| channel.post(black_box(1), MessageScope::Local).unwrap())
    });
    group.bench_function("evbus/by_name", |b| {
        let messages = bus.messages();
        b.iter(|| {
            messages
                .post_message(black_box("empty"), black_box(1u64), MessageScope::Local)
                .unwrap()
        })
    });
    group.bench_function("evbus/by_name_unknown", |b| {
        let messages = bus.messages();
        b.iter(|| {
            messages
                .post_message(black_box("nobody"), black_box(1u64), MessageScope::Local)
                .unwrap()
        })
    });

    let empty = ArcSwapOption::<u64>::empty();
    group.bench_function("arc_swap_load/none", |b| {
        b.iter(|| black_box(&empty).load().is_some())
    });
    let full = ArcSwapOption::from_pointee(7u64);
    group.bench_function("arc_swap_load/some", |b| {
        b.iter(|| black_box(&full).load().as_deref().copied())
    });
    group.finish();
}

struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

fn stream(c: &mut Criterion) {
    let mut group = configure(c, "stream");
    group.throughput(Throughput::Elements(BATCH));
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);

    let bus = Bus::local();
    let channel = bus.channel::<u64>("s");
    let mut stream = bus.messages().create_stream::<u64>("s");
    group.bench_function(BenchmarkId::new("evbus/handle", BATCH), |b| {
        b.iter(|| {
            for v in 0..BATCH {
                channel.post(black_box(v), MessageScope::Local).unwrap();
            }
            let mut got = 0;
            while let Poll::Ready(Some(message)) = Pin::new(&mut stream).poll_next(&mut cx) {
                black_box(*message);
                got += 1;
            }
            assert_eq!(got, BATCH);
        })
    });
    // Drained as tokio's receiver is below, with `try_recv`: `poll_next` above also registers
    // its waker when it finds the stream empty, once per 64 messages, which `try_recv` on
    // either side does not.
    group.bench_function(BenchmarkId::new("evbus/try_recv", BATCH), |b| {
        b.iter(|| {
            for v in 0..BATCH {
                channel.post(black_box(v), MessageScope::Local).unwrap();
            }
            let mut got = 0;
            while let Some(message) = stream.try_recv() {
                black_box(*message);
                got += 1;
            }
            assert_eq!(got, BATCH);
        })
    });
    assert_eq!(stream.missed(), 0);

    let (tx, mut rx) = broadcast::channel::<u64>(BATCH as usize);
    group.bench_function(BenchmarkId::new("tokio_broadcast", BATCH), |b| {
        b.iter(|| {
            for v in 0..BATCH {
                tx.send(black_box(v)).unwrap();
            }
            let mut got = 0;
            while let Ok(message) = rx.try_recv() {
                black_box(message);
                got += 1;
            }
            assert_eq!(got, BATCH);
        })
    });
    group.finish();
}

/// Streams with a heap payload: 16 streams of `String`s on one channel. evbus shares one
/// `Arc<String>` among the streams of a post (L04); tokio's receivers each clone the `String`.
fn stream_fanout_string(c: &mut Criterion) {
    const STREAMS: usize = 16;
    let mut group = configure(c, "stream_fanout_string");
    group.throughput(Throughput::Elements(BATCH * STREAMS as u64));
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    let text = "x".repeat(64);

    let bus = Bus::local();
    let channel = bus.channel::<String>("s");
    let mut streams: Vec<_> = (0..STREAMS)
        .map(|_| bus.messages().create_stream::<String>("s"))
        .collect();
    group.bench_function(BenchmarkId::new("evbus/handle", STREAMS), |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                channel.post(text.clone(), MessageScope::Local).unwrap();
            }
            for stream in &mut streams {
                let mut got = 0;
                while let Poll::Ready(Some(message)) = Pin::new(&mut *stream).poll_next(&mut cx) {
                    black_box(message.len());
                    got += 1;
                }
                assert_eq!(got, BATCH);
            }
        })
    });

    let (tx, _) = broadcast::channel::<String>(BATCH as usize);
    let mut receivers: Vec<_> = (0..STREAMS).map(|_| tx.subscribe()).collect();
    group.bench_function(BenchmarkId::new("tokio_broadcast", STREAMS), |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                tx.send(text.clone()).unwrap();
            }
            for rx in &mut receivers {
                let mut got = 0;
                while let Ok(message) = rx.try_recv() {
                    black_box(message.len());
                    got += 1;
                }
                assert_eq!(got, BATCH);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, fanout, empty_channel, stream, stream_fanout_string);
criterion_main!(benches);
