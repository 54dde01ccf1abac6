//! Scaling: posting threads, and a million channels.
//!
//! - `threads`: posts per second of one thread to its own channel (one listener), of two
//!   threads at once each to its own channel, and of two threads to the same channel. One
//!   iteration is one post on every thread; criterion's throughput (posts/s) gives the ratios
//!   of issue 11 (goals: two own channels >= 1.8x one thread, the same channel >= 1.6x). On a
//!   2-core machine shared with anything else, two threads cannot both run all the time, so
//!   read the ratio from a quiet run.
//! - `zipf_1m`: 1,000,000 channels with one listener each; posts spread over them with a Zipf
//!   distribution (s = 1.0: the most popular channel gets about 7% of the posts, half the
//!   posts go to about the 1,000 most popular channels), by name and by handle. Before the
//!   group runs it prints the bus's heap bytes (counted by this bench's allocator) for the
//!   million channels and listeners.
//!
//! Run with `cargo bench --bench scale`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use evbus::{Bus, Channel, MessageScope};

/// Counts live heap bytes, for the memory of a million channels.
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// The system allocator, plus one relaxed add per allocation and free. Nothing here is unsafe
// beyond forwarding: `GlobalAlloc` is an unsafe trait, and these are its required methods.
#[allow(unsafe_code)]
// SAFETY: every method forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Relaxed);
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Relaxed);
        // SAFETY: `ptr` came from `alloc` above with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CHANNELS: usize = 1_000_000;

/// A listener's work: nothing but keeping the message.
fn listener(x: &u64) {
    black_box(*x);
}

/// `threads` threads each posting `iters` messages to `channel(thread)`, started together;
/// the time from the start to the last one done.
fn posting(threads: usize, iters: u64, channel: impl Fn(usize) -> Channel<u64> + Sync) -> Duration {
    let start = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (start, channel) = (&start, channel(t));
                s.spawn(move || {
                    start.wait();
                    for i in 0..iters {
                        black_box(channel.post(i, MessageScope::Local).unwrap());
                    }
                    Instant::now()
                })
            })
            .collect();
        let begun = Instant::now();
        start.wait();
        let done = workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .max()
            .unwrap();
        done - begun
    })
}

fn threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("threads");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let bus = Bus::local();
    for name in ["a", "b"] {
        bus.messages().add_listener(name, listener);
    }
    let own = |t: usize| bus.channel::<u64>(["a", "b"][t]);
    let same = |_: usize| bus.channel::<u64>("a");

    group.throughput(Throughput::Elements(1));
    group.bench_function("one_thread", |b| {
        b.iter_custom(|iters| posting(1, iters, own))
    });
    group.throughput(Throughput::Elements(2));
    group.bench_function("two_threads_own_channels", |b| {
        b.iter_custom(|iters| posting(2, iters, own))
    });
    group.bench_function("two_threads_same_channel", |b| {
        b.iter_custom(|iters| posting(2, iters, same))
    });
    group.finish();
}

/// `n` channel indices drawn from a Zipf distribution over `CHANNELS` (s = 1.0), by inverse
/// transform on the cumulative weights, with a fixed xorshift seed: the same sequence on
/// every run.
fn zipf_sequence(n: usize) -> Vec<u32> {
    let mut cumulative = Vec::with_capacity(CHANNELS);
    let mut total = 0.0;
    for rank in 1..=CHANNELS {
        total += 1.0 / rank as f64;
        cumulative.push(total);
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 11) as f64 / (1u64 << 53) as f64 * total;
            cumulative.partition_point(|&c| c < u).min(CHANNELS - 1) as u32
        })
        .collect()
}

fn zipf_1m(c: &mut Criterion) {
    let before = LIVE.load(Relaxed);
    let bus = Bus::local();
    let names: Vec<String> = (0..CHANNELS).map(|i| format!("user:{i}")).collect();
    let names_bytes = LIVE.load(Relaxed) - before;
    for name in &names {
        bus.messages().add_listener(name, listener);
    }
    let bus_bytes = LIVE.load(Relaxed) - before - names_bytes;
    let handles: Vec<Channel<u64>> = names.iter().map(|n| bus.channel::<u64>(n)).collect();
    eprintln!(
        "zipf_1m: {CHANNELS} channels with one listener each take {} MB of heap in the bus, \
         {} bytes per channel (besides the names the bench keeps, {} MB)",
        bus_bytes / 1_000_000,
        bus_bytes / CHANNELS as i64,
        names_bytes / 1_000_000
    );
    let sequence = zipf_sequence(1 << 20);

    let mut group = c.benchmark_group("zipf_1m");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("evbus", "by_name"), |b| {
        let mut at = 0usize;
        b.iter(|| {
            let name = &names[sequence[at & (sequence.len() - 1)] as usize];
            at += 1;
            black_box(
                bus.messages()
                    .post_message(name, at as u64, MessageScope::Local),
            )
        })
    });
    group.bench_function(BenchmarkId::new("evbus", "by_handle"), |b| {
        let mut at = 0usize;
        b.iter(|| {
            let channel = &handles[sequence[at & (sequence.len() - 1)] as usize];
            at += 1;
            black_box(channel.post(at as u64, MessageScope::Local))
        })
    });
    group.finish();
}

criterion_group!(benches, threads, zipf_1m);
criterion_main!(benches);
