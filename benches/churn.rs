//! Registration churn on one channel: 100,000 listeners added, then removed.
//!
//! One iteration is the whole 200,000 operations on a fresh bus (building the bus and the id
//! list is not timed). Issue 11's goals, in release: under 100 ms for each `add_then_remove`
//! order, under 150 ms for `sessions/close_in_order`.
//!
//! - `add_then_remove/in_order`: remove in the order added.
//! - `add_then_remove/reverse`: remove newest first.
//! - `add_then_remove/random`: remove in a shuffled order (xorshift, fixed seed).
//! - `sessions/close_in_order`: 100,000 sessions each add one listener, then each is closed.
//! - `sessions/one_at_a_time`: 100,000 times, a session adds one listener and is closed.
//! - `streams/one_at_a_time`: 100,000 times, a session creates a stream on a channel that
//!   already has one (so the ring stays), and is closed: the stream joins and leaves the
//!   ring, and its leave pays the fence pair's heavy side (`src/local/barrier.rs`).
//! - `streams/dropped_one_at_a_time`: the same, but each stream is dropped by its owner (no
//!   session), as a server's connection handler drops its stream: the leave needs no fence
//!   pair then.
//! - `streams/closed_beside_a_busy_thread`, `streams/dropped_beside_a_busy_thread`: 10,000
//!   times each of the two, while another thread of the process spins: the heavy side is a
//!   `membarrier` call, which interrupts the CPUs running the process's other threads.
//! - `post/quiet`, `post/while_churning`: a post through a handle to a channel with one
//!   listener; in the second, another thread meanwhile adds a listener to the same channel and
//!   removes it, over and over (issue 11). Besides criterion's mean, each prints the p50, p99
//!   and maximum of 1,000,000 posts timed one by one (each time includes an `Instant::now`,
//!   about 20 ns on this machine), so the two cases are side by side.
//!
//! Run with `cargo bench --bench churn`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use evbus::{Bus, Channel, ListenerId, MessageScope, Session};

const N: usize = 100_000;
const CHANNEL: &str = "churn";

#[derive(Clone, Copy)]
enum Order {
    Forward,
    Backward,
    Random,
}

#[path = "support/shuffle.rs"]
mod shuffle;
use shuffle::shuffle;

/// Adds `N` listeners to one channel, then removes them in `order`; returns the time taken
/// by the 2N operations only.
fn add_then_remove(order: Order) -> Duration {
    let bus = Bus::local();
    let messages = bus.messages();
    let mut ids: Vec<ListenerId> = Vec::with_capacity(N);
    let mut positions: Vec<usize> = (0..N).collect();
    match order {
        Order::Forward => {}
        Order::Backward => positions.reverse(),
        Order::Random => shuffle(&mut positions, 0x9E37_79B9_7F4A_7C15),
    }

    let start = Instant::now();
    for _ in 0..N {
        ids.push(messages.add_listener(CHANNEL, |x: &u64| {
            black_box(*x);
        }));
    }
    for &at in &positions {
        let removed = messages.remove_listener(CHANNEL, ids[at]);
        debug_assert!(removed);
        black_box(removed);
    }
    let elapsed = start.elapsed();

    assert_eq!(bus.stats().listeners, 0);
    assert_eq!(bus.stats().channels, 0);
    elapsed
}

/// `N` sessions each add one listener to one channel, then every session is closed.
fn sessions_then_close() -> Duration {
    let bus = Bus::local();
    let mut sessions: Vec<Session> = Vec::with_capacity(N);

    let start = Instant::now();
    for _ in 0..N {
        let session = bus.session();
        session.messages().add_listener(CHANNEL, |x: &u64| {
            black_box(*x);
        });
        sessions.push(session);
    }
    for session in &sessions {
        session.close();
    }
    let elapsed = start.elapsed();

    assert_eq!(bus.stats().listeners, 0);
    drop(sessions);
    elapsed
}

/// `N` times: a session adds one listener to the channel and is closed at once.
fn session_add_close_each() -> Duration {
    let bus = Bus::local();
    // Keeps the channel interned, as a server's long-lived channel would be.
    let _channel = bus.channel::<u64>(CHANNEL);

    let start = Instant::now();
    for _ in 0..N {
        let session = bus.session();
        session.messages().add_listener(CHANNEL, |x: &u64| {
            black_box(*x);
        });
        session.close();
    }
    let elapsed = start.elapsed();

    assert_eq!(bus.stats().listeners, 0);
    elapsed
}

fn session_stream_close_each(n: usize) -> Duration {
    let bus = Bus::local();
    let _stays = bus.messages().create_stream::<u64>(CHANNEL);

    let start = Instant::now();
    for _ in 0..n {
        let session = bus.session();
        let stream = session.messages().create_stream::<u64>(CHANNEL);
        session.close();
        drop(stream);
    }
    let elapsed = start.elapsed();

    assert_eq!(bus.stats().streams, 1);
    elapsed
}

/// 100,000 times (`n` for the busy variants): a stream is created on a channel that keeps
/// another, and dropped by its owner.
fn stream_drop_each(n: usize) -> Duration {
    let bus = Bus::local();
    let _stays = bus.messages().create_stream::<u64>(CHANNEL);

    let start = Instant::now();
    for _ in 0..n {
        drop(bus.messages().create_stream::<u64>(CHANNEL));
    }
    let elapsed = start.elapsed();

    assert_eq!(bus.stats().streams, 1);
    elapsed
}

/// Streams of the busy variants: fewer, since each `membarrier` then costs microseconds.
const BUSY_N: usize = 10_000;

/// `run` while another thread of this process spins, as a server's other workers would run.
fn beside_a_busy_thread(run: impl FnOnce() -> Duration) -> Duration {
    let stop = Arc::new(AtomicBool::new(false));
    let spinner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                std::hint::spin_loop();
            }
        })
    };
    let elapsed = run();
    stop.store(true, Relaxed);
    spinner.join().unwrap();
    elapsed
}

/// Posts timed one by one for the percentiles.
const TIMED_POSTS: usize = 1_000_000;

/// A thread that adds a listener to `CHANNEL` and removes it, over and over, until dropped.
struct Churner {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Churner {
    fn start(bus: &Bus) -> Churner {
        let stop = Arc::new(AtomicBool::new(false));
        let bus = bus.clone();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let messages = bus.messages();
            let mut changes = 0;
            while !flag.load(Relaxed) {
                let id = messages.add_listener(CHANNEL, |x: &u64| {
                    black_box(*x);
                });
                messages.remove_listener(CHANNEL, id);
                changes += 2;
            }
            changes
        });
        Churner {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Churner {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the churning thread panicked");
        }
    }
}

/// A bus whose `CHANNEL` has one listener, and a handle to post through.
fn one_listener() -> (Bus, Channel<u64>) {
    let bus = Bus::local();
    bus.messages().add_listener(CHANNEL, |x: &u64| {
        black_box(*x);
    });
    let channel = bus.channel::<u64>(CHANNEL);
    (bus, channel)
}

/// Prints p50, p99 and the maximum of `TIMED_POSTS` posts, each timed alone.
fn post_percentiles(label: &str, churning: bool) {
    let (bus, channel) = one_listener();
    let churner = churning.then(|| Churner::start(&bus));
    let mut times: Vec<u64> = Vec::with_capacity(TIMED_POSTS);
    for i in 0..TIMED_POSTS as u64 {
        let start = Instant::now();
        black_box(channel.post(black_box(i), MessageScope::Local).unwrap());
        times.push(start.elapsed().as_nanos() as u64);
    }
    drop(churner);
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "churn/{label}: post latency over {TIMED_POSTS} posts: p50 {} ns, p99 {} ns, max {} ns",
        at(0.5),
        at(0.99),
        times[times.len() - 1]
    );
}

fn post_latency(c: &mut Criterion) {
    post_percentiles("post/quiet", false);
    post_percentiles("post/while_churning", true);
    let mut group = c.benchmark_group("churn");
    for (name, churning) in [("post/quiet", false), ("post/while_churning", true)] {
        let (bus, channel) = one_listener();
        let churner = churning.then(|| Churner::start(&bus));
        group.bench_function(name, |b| {
            b.iter(|| channel.post(black_box(1), MessageScope::Local).unwrap())
        });
        drop(churner);
    }
    group.finish();
}

fn churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("churn");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(2 * N as u64));

    for (name, order) in [
        ("add_then_remove/in_order", Order::Forward),
        ("add_then_remove/reverse", Order::Backward),
        ("add_then_remove/random", Order::Random),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| add_then_remove(order)).sum())
        });
    }
    group.bench_function("sessions/close_in_order", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| sessions_then_close()).sum())
    });
    group.bench_function("sessions/one_at_a_time", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| session_add_close_each()).sum())
    });
    group.bench_function("streams/one_at_a_time", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| session_stream_close_each(N)).sum())
    });
    group.bench_function("streams/dropped_one_at_a_time", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| stream_drop_each(N)).sum())
    });
    group.throughput(Throughput::Elements(BUSY_N as u64));
    group.bench_function("streams/closed_beside_a_busy_thread", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| beside_a_busy_thread(|| session_stream_close_each(BUSY_N)))
                .sum()
        })
    });
    group.bench_function("streams/dropped_beside_a_busy_thread", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| beside_a_busy_thread(|| stream_drop_each(BUSY_N)))
                .sum()
        })
    });
    group.finish();
}

criterion_group!(benches, churn, post_latency);
criterion_main!(benches);
