//! Global messages through Redis, against fred used directly, on the same Redis.
//!
//! One `redis-server` is started for the whole run (a free loopback port, no persistence; see
//! `tests/support/redis.rs`). Everything runs on one tokio runtime with 2 workers, so the two
//! buses, the fred clients and Redis share the machine's cores, as servers on one host would.
//!
//! - `global_throughput`: bus A posts small messages (`Tick`, two `u64`s) with
//!   `MessageScope::Global` in a tight loop; one iteration ends when a listener on bus B
//!   (another bus on the same Redis) has received all of them.
//!   - `evbus/post_global`: 100,000 posts per iteration.
//!   - `fred_await_each_publish`: Serverpod's way, one PUBLISH awaited at a time, of the same
//!     `Tick`s encoded the same way (MessagePack), counted by a fred `SubscriberClient`. It does
//!     one network round trip per message, so an iteration is 10,000 messages, not 100,000
//!     (100,000 would take several seconds per iteration); the throughput is per element, so
//!     the two rates compare directly.
//!
//!   The second competitor is Redis itself: `benches/redis_benchmark.sh` prints the PUBLISH
//!   rate of `redis-benchmark -P 64` with one subscriber connected.
//! - `global_latency`: one post at a time at low load: the time from just before bus A's
//!   `post_message` to bus B's listener being called (the listener takes the timestamp), the
//!   next post only after that. Beside it, `fred_publish_round_trip`: the time of one awaited
//!   `client.publish(channel, payload)`. The group also prints the median and p99 over every
//!   single post (criterion's own estimates are of per-sample means).
//!
//! Run with `cargo bench --bench global` (`-- --quick` for a short run). Needs `redis-server`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/counter.rs"]
mod counter;

use counter::{post_global, Counter, Tick, DELIVERY_DEADLINE};
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use evbus::Bus;
use fred::bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use tokio::runtime::Runtime;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

#[path = "../tests/support/redis.rs"]
mod redis;

/// evbus posts per iteration of `global_throughput`.
const EVBUS_BATCH: u64 = 100_000;
/// fred PUBLISHes per iteration of `global_throughput` (one round trip each: see the top).
const FRED_BATCH: u64 = 10_000;
/// Channel names: every bus and client here uses this namespace.
const NAMESPACE: &str = "evbus-bench:";

fn main() {
    let server = redis::RedisServer::start();
    let runtime = counter::runtime();
    let _context = runtime.enter();
    let mut criterion = Criterion::default().configure_from_args();

    let setup = runtime.block_on(Setup::new(&server.url()));
    global_throughput(&mut criterion, &runtime, &setup);
    global_latency(&mut criterion, &runtime, &setup);
    runtime.block_on(setup.close());

    criterion.final_summary();
    drop(server);
}

/// Both contestants, connected to the same Redis.
struct Setup {
    /// The posting bus ("server A").
    a: Bus,
    /// The receiving bus ("server B").
    b: Bus,
    evbus_received: Arc<Counter>,
    evbus_latency: tokio::sync::Mutex<mpsc::UnboundedReceiver<Instant>>,
    fred: Client,
    subscriber: SubscriberClient,
    fred_received: Arc<Counter>,
}

const THROUGHPUT: &str = "throughput";
const LATENCY: &str = "latency";

fn fred_channel(name: &str) -> String {
    format!("{NAMESPACE}fred_{name}")
}

impl Setup {
    async fn new(url: &str) -> Setup {
        let bus = || async {
            Bus::builder()
                .redis_url(url)
                .namespace(NAMESPACE)
                .outage_buffer(1_000_000)
                .build()
                .await
                .expect("evbus bus on the bench's Redis")
        };
        let a = bus().await;
        let b = bus().await;
        let (evbus_received, rx) = counter::listen(&b, THROUGHPUT, LATENCY).await;

        let mut builder = Builder::from_config(Config::from_url(url).expect("Redis URL"));
        builder
            .with_performance_config(|config| config.broadcast_channel_capacity = 1 << 16)
            .set_policy(ReconnectPolicy::new_constant(0, 100));
        let fred = builder.build().expect("fred client");
        fred.init().await.expect("fred client connects");
        let subscriber = builder
            .build_subscriber_client()
            .expect("fred subscriber client");
        subscriber.init().await.expect("fred subscriber connects");
        let fred_received = Arc::new(Counter::default());
        let mut messages = subscriber.message_rx();
        let counter = fred_received.clone();
        let throughput = fred_channel(THROUGHPUT);
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(message) => {
                        if &*message.channel == throughput.as_str() {
                            let bytes = message.value.as_bytes().expect("a bulk string");
                            let tick: Tick = rmp_serde::from_slice(bytes).expect("a Tick");
                            std::hint::black_box(tick);
                            counter.add(1);
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        counter.lost.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
        subscriber
            .subscribe(vec![fred_channel(THROUGHPUT), fred_channel(LATENCY)])
            .await
            .expect("fred SUBSCRIBE");

        Setup {
            a,
            b,
            evbus_received,
            evbus_latency: tokio::sync::Mutex::new(rx),
            fred,
            subscriber,
            fred_received,
        }
    }

    /// What the two buses counted, for failure messages and the summary.
    fn stats(&self) -> String {
        format!("bus A: {:?}; bus B: {:?}", self.a.stats(), self.b.stats())
    }

    async fn close(self) {
        self.a.shutdown().await.expect("bus A shuts down");
        self.b.shutdown().await.expect("bus B shuts down");
        let _ = self.subscriber.quit().await;
        let _ = self.fred.quit().await;
    }
}

fn configure<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group
}

fn global_throughput(c: &mut Criterion, runtime: &Runtime, setup: &Setup) {
    let mut group = configure(c, "global_throughput");
    // An iteration takes a large fraction of a second: ten of them per sample set, all the same.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(10));

    let before = setup.a.stats();
    let mut seq = 0u64;
    group.throughput(Throughput::Elements(EVBUS_BATCH));
    group.bench_function("evbus/post_global", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let target = setup.evbus_received.expect(EVBUS_BATCH);
                    for _ in 0..EVBUS_BATCH {
                        seq += 1;
                        post_global(&setup.a, THROUGHPUT, Tick { seq, value: !seq }).await;
                    }
                    setup.evbus_received.reached(target, || setup.stats()).await;
                }
                started.elapsed()
            })
        })
    });
    let after = setup.a.stats();
    let batches = after.global_batches - before.global_batches;
    let posted = after.global_posted - before.global_posted;
    println!(
        "evbus/post_global: {posted} global posts in {batches} pipelined writes \
         ({:.1} posts per write); bus B: {} received, {} missed, {} duplicates",
        posted as f64 / batches.max(1) as f64,
        setup.b.stats().global_received,
        setup.b.stats().global_missed,
        setup.b.stats().global_duplicates,
    );

    let channel = fred_channel(THROUGHPUT);
    group.throughput(Throughput::Elements(FRED_BATCH));
    group.bench_function("fred_await_each_publish", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let target = setup.fred_received.expect(FRED_BATCH);
                    for _ in 0..FRED_BATCH {
                        seq += 1;
                        let payload = rmp_serde::to_vec(&Tick { seq, value: !seq }).unwrap();
                        let _: i64 = setup
                            .fred
                            .publish(channel.as_str(), Bytes::from(payload))
                            .await
                            .expect("PUBLISH");
                    }
                    setup
                        .fred_received
                        .reached(target, || "fred subscriber".into())
                        .await;
                }
                started.elapsed()
            })
        })
    });
    group.finish();
}

fn global_latency(c: &mut Criterion, runtime: &Runtime, setup: &Setup) {
    let mut group = configure(c, "global_latency");
    let mut seq = 0u64;

    let mut evbus = Vec::new();
    group.bench_function("evbus/post_to_listener", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut delivered = setup.evbus_latency.lock().await;
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    seq += 1;
                    let posted = Instant::now();
                    post_global(&setup.a, LATENCY, Tick { seq, value: !seq }).await;
                    let at = tokio::time::timeout(DELIVERY_DEADLINE, delivered.recv())
                        .await
                        .unwrap_or_else(|_| panic!("post {seq} not delivered; {}", setup.stats()))
                        .expect("bus B's latency listener is registered");
                    let latency = at - posted;
                    evbus.push(latency);
                    total += latency;
                }
                total
            })
        })
    });

    let channel = fred_channel(LATENCY);
    let mut fred = Vec::new();
    group.bench_function("fred_publish_round_trip", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    seq += 1;
                    let started = Instant::now();
                    let payload = rmp_serde::to_vec(&Tick { seq, value: !seq }).unwrap();
                    let receivers: i64 = setup
                        .fred
                        .publish(channel.as_str(), Bytes::from(payload))
                        .await
                        .expect("PUBLISH");
                    let latency = started.elapsed();
                    assert_eq!(receivers, 1, "the fred subscriber listens on {channel}");
                    fred.push(latency);
                    total += latency;
                }
                total
            })
        })
    });
    group.finish();

    let (evbus_p50, evbus_p99) = percentiles(&mut evbus);
    let (fred_p50, fred_p99) = percentiles(&mut fred);
    println!(
        "global_latency over every single post (warm-up included): \
         evbus post-to-listener p50 {evbus_p50:?}, p99 {evbus_p99:?} ({} posts); \
         fred PUBLISH round trip p50 {fred_p50:?}, p99 {fred_p99:?} ({} PUBLISHes); \
         p50 ratio evbus / fred = {:.2} (target <= 1.2)",
        evbus.len(),
        fred.len(),
        evbus_p50.as_secs_f64() / fred_p50.as_secs_f64().max(f64::MIN_POSITIVE),
    );
    assert_eq!(setup.b.stats().global_missed, 0, "bus B missed messages");
}

/// The median and the 99th percentile.
fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    if samples.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}
