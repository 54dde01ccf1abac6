//! Streams across threads, against `tokio::sync::broadcast` and `async-broadcast`.
//!
//! - `cross_thread`: one posting thread (the bench's own), [`STREAMS`] streams of `u64` on one
//!   channel, each drained by its own task on a 2-worker multi-thread tokio runtime; [`POSTS`]
//!   posts, then the end of the channel (evbus: the session closes; the others: the sender is
//!   dropped), and the clock stops when every task has seen the end. All three hold
//!   [`CAPACITY`] messages per receiver and drop the oldest when full (tokio: `Lagged`;
//!   async-broadcast: `set_overflow(true)`, `Overflowed`); the poster never waits.
//!
//! What is reported is wall time per message *received*: an iteration's time is scaled by
//! `POSTS * STREAMS / received`, so a dropped message costs time and counts nothing, and a
//! channel cannot look fast by dropping. The throughput shown is per message received.
//!
//! Run with `cargo bench --bench streams`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use evbus::{Bus, MessageScope};
use tokio::runtime::Runtime;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// Streams (receivers) on the channel, each read by its own task.
const STREAMS: usize = 16;
/// Posts per iteration.
const POSTS: u64 = 200_000;
/// Messages each stream (receiver) holds before the oldest is dropped.
const CAPACITY: usize = 1024;
/// Messages every receiver would get if none were dropped.
const OFFERED: u64 = POSTS * STREAMS as u64;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("a tokio runtime")
}

/// Waits for the drain tasks; returns the messages they received in all.
fn received(runtime: &Runtime, tasks: Vec<JoinHandle<u64>>) -> u64 {
    runtime.block_on(async {
        let mut received = 0;
        for task in tasks {
            received += task.await.expect("a drain task");
        }
        received
    })
}

/// `elapsed`, scaled to what it would be per `OFFERED` messages received.
fn per_received(elapsed: Duration, received: u64) -> Duration {
    assert!(received > 0, "nothing was received");
    elapsed.mul_f64(OFFERED as f64 / received as f64)
}

/// `iterations` runs of one contestant: `setup` spawns the drain tasks and returns them with
/// the posting, which posts `POSTS` messages and then closes the channel (a tokio or
/// async-broadcast sender dropped at its end, evbus's session closed). Only the posting and
/// the drain are timed, scaled per `OFFERED` messages received.
fn per_message<P: FnOnce()>(
    runtime: &Runtime,
    iterations: u64,
    mut setup: impl FnMut() -> (Vec<JoinHandle<u64>>, P),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iterations {
        let (tasks, post) = setup();
        settle();
        let start = Instant::now();
        post();
        let got = received(runtime, tasks);
        total += per_received(start.elapsed(), got);
    }
    total
}

/// Lets the drain tasks start and park on their empty receivers before the clock starts.
fn settle() {
    std::thread::sleep(Duration::from_millis(5));
}

fn cross_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("cross_thread");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(OFFERED));
    let runtime = runtime();
    let _guard = runtime.enter();

    group.bench_function(BenchmarkId::new("evbus/handle", STREAMS), |b| {
        b.iter_custom(|iterations| {
            per_message(&runtime, iterations, || {
                let bus = Bus::builder().stream_capacity(CAPACITY);
                let bus = runtime.block_on(bus.build()).expect("a local bus");
                let session = bus.session();
                let channel = bus.channel::<u64>("s");
                let tasks = (0..STREAMS)
                    .map(|_| {
                        let mut stream = session.messages().create_stream::<u64>("s");
                        runtime.spawn(async move {
                            let mut got = 0u64;
                            while let Some(message) = stream.recv().await {
                                black_box(*message);
                                got += 1;
                            }
                            assert_eq!(got + stream.missed(), POSTS, "yielded + missed");
                            got
                        })
                    })
                    .collect();
                let post = move || {
                    for v in 0..POSTS {
                        channel.post(black_box(v), MessageScope::Local).unwrap();
                    }
                    session.close();
                    drop(bus);
                };
                (tasks, post)
            })
        })
    });

    group.bench_function(BenchmarkId::new("tokio_broadcast", STREAMS), |b| {
        b.iter_custom(|iterations| {
            per_message(&runtime, iterations, || {
                let (tx, _) = broadcast::channel::<u64>(CAPACITY);
                let tasks = (0..STREAMS)
                    .map(|_| {
                        let mut rx = tx.subscribe();
                        runtime.spawn(async move {
                            let mut got = 0u64;
                            loop {
                                match rx.recv().await {
                                    Ok(message) => {
                                        black_box(message);
                                        got += 1;
                                    }
                                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                                    Err(broadcast::error::RecvError::Closed) => break,
                                }
                            }
                            got
                        })
                    })
                    .collect();
                let post = move || {
                    for v in 0..POSTS {
                        tx.send(black_box(v)).unwrap();
                    }
                };
                (tasks, post)
            })
        })
    });

    group.bench_function(BenchmarkId::new("async_broadcast", STREAMS), |b| {
        b.iter_custom(|iterations| {
            per_message(&runtime, iterations, || {
                let (mut tx, rx) = async_broadcast::broadcast::<u64>(CAPACITY);
                tx.set_overflow(true);
                let tasks = (0..STREAMS)
                    .map(|_| {
                        let mut rx = rx.clone();
                        runtime.spawn(async move {
                            let mut got = 0u64;
                            loop {
                                match rx.recv().await {
                                    Ok(message) => {
                                        black_box(message);
                                        got += 1;
                                    }
                                    Err(async_broadcast::RecvError::Overflowed(_)) => {}
                                    Err(async_broadcast::RecvError::Closed) => break,
                                }
                            }
                            got
                        })
                    })
                    .collect();
                // The first receiver only made the clones: it would hold every message.
                drop(rx);
                let post = move || {
                    for v in 0..POSTS {
                        tx.try_broadcast(black_box(v)).unwrap();
                    }
                };
                (tasks, post)
            })
        })
    });
    group.finish();
}

criterion_group!(benches, cross_thread);
criterion_main!(benches);
