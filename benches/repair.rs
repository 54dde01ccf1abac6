//! Repair (issue 10, "Speed"): what the retransmit window costs in the steady state, and how
//! long a subscriber that lost 10,000 messages waits to have them back.
//!
//! One `redis-server` is started for the whole run (a free loopback port, no persistence; see
//! `tests/support/redis.rs`). Everything runs on one tokio runtime with 2 workers, as in
//! `benches/global.rs`: the buses, the proxy and Redis share the machine's cores.
//!
//! # Steady state: repair on against repair off
//!
//! Two pairs of buses, each pair in its own namespace on the same Redis: `repair_on` with the
//! defaults (a window of 100,000 messages / 64 MiB on every bus), `repair_off` with
//! `repair_window(0, 0)` on both buses. Bus A of a pair posts, a listener on bus B receives.
//!
//! - `repair_steady_throughput`: the shape of `global_throughput/evbus/post_global` in
//!   `benches/global.rs`: bus A posts 100,000 small messages (`Tick`, two `u64`s) with
//!   `MessageScope::Global` in a tight loop; an iteration ends when B's listener has all of
//!   them.
//! - `repair_steady_latency`: one post at a time: from just before A's `post_message` to B's
//!   listener being called (the listener takes the timestamp); the next post only after that.
//!
//! Criterion runs `repair_on` and then `repair_off`, so on a shared machine the load can change
//! between them. The `turns` table after the groups takes them in turns instead: per round
//! two batches of each in the order on, off, off, on (off, on, on, off in the next round, so
//! that a load that rises or falls during a round favours neither), and lone posts alternating
//! one on, one off; it prints the median of the per-round ratios on ÷ off (the goal:
//! on within 5% of off), and the lone-post median and p99 over every post. Single batches on
//! this kind of machine vary by a factor of two from one to the next, which is why the table
//! takes many rounds and medians rather than criterion's two runs one after the other. It
//! also gives the CPU time this process (both buses of a pair, not Redis) spent per message
//! in the batches of each setup, from `/proc/self/stat` (Linux; in clock ticks, taken as
//! 100 Hz): less disturbed by the other tenants than wall time, and where a cost of the
//! window would show first.
//!
//! # Repair latency
//!
//! Bus A connects to Redis directly; bus B through a TCP proxy the bench can cut
//! (`benches/support/proxy.rs`), with a listener on one channel. One iteration:
//! 1. the proxy drops B's connections and refuses new ones; the bench waits for B's
//!    `BusEvent::Disconnected`;
//! 2. bus A posts 10,000 messages on B's channel and flushes them to Redis: B loses them all;
//! 3. the proxy lets connections through again. B reconnects, resubscribes and asks the
//!    origins it knows on the channel for their last sequence number (K04); A answers, B finds
//!    the gap and asks A for it, A resends from its window (K02).
//!
//! Criterion measures from B's reconnection to B's listener having received the 10,000th lost
//! message (`iter_custom`). B's reconnection is when the proxy accepted the second of B's two
//! connections (publisher and subscriber; repair needs both) again, seen from the network.
//! Not B's `BusEvent::Reconnected`: in some cuts the bench reads it only after all 10,000
//! repaired messages were delivered (the table says in how many), so it can mark the end as
//! well as the start. Everything else (the cut, the posts, fred's reconnect backoff) is
//! outside the measurement; the table after the group also gives the times from reading
//! `Reconnected` and from opening the proxy.
//!
//! Before criterion starts, one cut is made and B's `stats()` printed as a sanity check:
//! `global_repaired` should grow by 10,000 and `global_missed` not at all. B's listener checks
//! that the `Tick`s arrive exactly once and in order; every cut checks that exactly 10,000
//! arrived. A cut whose messages do not all arrive within 30 s of `Reconnected` fails the
//! bench, saying what B counted and which events it emitted: a bench that silently measures
//! nothing would be worse than none.
//!
//! Run with `cargo bench --bench repair` (about four minutes; `-- --test` runs each once).
//! Needs `redis-server`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/counter.rs"]
mod counter;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "../tests/support/redis.rs"]
mod redis;

use counter::{post_global, Counter, Tick, DELIVERY_DEADLINE};
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use evbus::{Bus, BusEvent, BusEvents, Stats};
use proxy::Proxy;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// Posts per iteration of `repair_steady_throughput`, as in `benches/global.rs`.
const BATCH: u64 = 100_000;
/// Messages bus B loses per cut of `repair_latency`.
const LOST: u64 = 10_000;
/// How long after B's reconnect the lost messages may take before the bench fails. Repair of
/// 10,000 small messages takes far less; this is for a machine that is very busy.
const REPAIR_DEADLINE: Duration = Duration::from_secs(30);
/// How long B may take to report its disconnection and its reconnection.
const EVENT_DEADLINE: Duration = Duration::from_secs(30);
/// Rounds of the `turns` table, and lone posts per setup in each.
const ROUNDS: usize = 20;
const LONE_POSTS: usize = 200;

const THROUGHPUT: &str = "throughput";
const LATENCY: &str = "latency";
const LOSSY: &str = "lossy";

fn main() {
    let server = redis::RedisServer::start();
    let runtime = counter::runtime();
    let _context = runtime.enter();
    let mut criterion = Criterion::default().configure_from_args();
    let test_mode = std::env::args().any(|arg| arg == "--test");

    let pairs = runtime.block_on(async {
        [
            Pair::new(&server.url(), "repair_on", true).await,
            Pair::new(&server.url(), "repair_off", false).await,
        ]
    });
    steady_throughput(&mut criterion, &runtime, &pairs);
    steady_latency(&mut criterion, &runtime, &pairs);
    turns(&runtime, &pairs, if test_mode { 1 } else { ROUNDS });
    for pair in &pairs {
        pair.check_steady();
    }
    runtime.block_on(async {
        for pair in pairs {
            pair.close().await;
        }
    });

    let cut = runtime.block_on(Cut::new(&server));
    repair_latency(&mut criterion, &runtime, &cut);
    runtime.block_on(cut.close());

    criterion.final_summary();
    drop(server);
}

// ---- Steady state ---------------------------------------------------------------------------

/// Bus A posting to a listener on bus B, both with repair on or both with it off.
struct Pair {
    name: &'static str,
    a: Bus,
    b: Bus,
    received: Arc<Counter>,
    delivered: tokio::sync::Mutex<mpsc::UnboundedReceiver<Instant>>,
    seq: AtomicU64,
}

impl Pair {
    async fn new(url: &str, name: &'static str, repair: bool) -> Pair {
        let namespace = format!("evbus-rbench-{name}:");
        let bus = || async {
            let builder = Bus::builder()
                .redis_url(url)
                .namespace(&namespace)
                .outage_buffer(1_000_000);
            let builder = if repair {
                builder
            } else {
                builder.repair_window(0, 0)
            };
            builder.build().await.expect("bus on the bench's Redis")
        };
        let a = bus().await;
        let b = bus().await;
        let (received, rx) = counter::listen(&b, THROUGHPUT, LATENCY).await;
        Pair {
            name,
            a,
            b,
            received,
            delivered: tokio::sync::Mutex::new(rx),
            seq: AtomicU64::new(0),
        }
    }

    fn tick(&self) -> Tick {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        Tick { seq, value: !seq }
    }

    fn stats(&self) -> String {
        format!(
            "{}: bus A: {:?}; bus B: {:?}",
            self.name,
            self.a.stats(),
            self.b.stats()
        )
    }

    /// Posts `BATCH` messages and waits until B's listener has them all.
    async fn batch(&self) -> Duration {
        let started = Instant::now();
        let target = self.received.expect(BATCH);
        for _ in 0..BATCH {
            post_global(&self.a, THROUGHPUT, self.tick()).await;
        }
        self.received.reached(target, || self.stats()).await;
        started.elapsed()
    }

    /// Posts one message and returns when B's listener got it.
    async fn lone_post(&self) -> Duration {
        let mut delivered = self.delivered.lock().await;
        let tick = self.tick();
        let posted = Instant::now();
        post_global(&self.a, LATENCY, tick).await;
        let at = tokio::time::timeout(DELIVERY_DEADLINE, delivered.recv())
            .await
            .unwrap_or_else(|_| panic!("post {} not delivered; {}", tick.seq, self.stats()))
            .expect("bus B's latency listener is registered");
        at - posted
    }

    /// Nothing lost, nothing repaired: on one healthy Redis there is no gap to repair.
    fn check_steady(&self) {
        let b = self.b.stats();
        println!(
            "{}: bus B received {}, missed {}, duplicates {}, repaired {}, repair requests {}; \
             bus A's window holds {} bytes",
            self.name,
            b.global_received,
            b.global_missed,
            b.global_duplicates,
            b.global_repaired,
            b.global_repair_requests,
            self.a.stats().global_repair_window_bytes,
        );
        assert_eq!(b.global_missed, 0, "{}", self.stats());
    }

    async fn close(self) {
        self.a.shutdown().await.expect("bus A shuts down");
        self.b.shutdown().await.expect("bus B shuts down");
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

fn steady_throughput(c: &mut Criterion, runtime: &Runtime, pairs: &[Pair]) {
    let mut group = configure(c, "repair_steady_throughput");
    // An iteration takes a large fraction of a second: ten of them per sample set, all the same.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(BATCH));
    for pair in pairs {
        group.bench_function(pair.name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += pair.batch().await;
                    }
                    total
                })
            })
        });
    }
    group.finish();
}

fn steady_latency(c: &mut Criterion, runtime: &Runtime, pairs: &[Pair]) {
    let mut group = configure(c, "repair_steady_latency");
    for pair in pairs {
        group.bench_function(pair.name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += pair.lone_post().await;
                    }
                    total
                })
            })
        });
    }
    group.finish();
}

/// The two setups in turns, round by round, and the ratios on ÷ off (see the top).
fn turns(runtime: &Runtime, pairs: &[Pair; 2], rounds: usize) {
    let lone_posts = if rounds < ROUNDS { 20 } else { LONE_POSTS };
    let mut rates: [Vec<f64>; 2] = Default::default();
    let mut posts: [Vec<Duration>; 2] = Default::default();
    let mut rate_ratios = Vec::new();
    let mut p50_ratios = Vec::new();
    let mut cpu = [Duration::ZERO; 2];
    let mut cpu_ratios = Vec::new();
    runtime.block_on(async {
        for round in 0..rounds {
            let (first, second) = if round % 2 == 0 { (0, 1) } else { (1, 0) };
            let mut took = [Duration::ZERO; 2];
            let mut round_cpu = [Duration::ZERO; 2];
            for i in [first, second, second, first] {
                let cpu_before = process_cpu();
                took[i] += pairs[i].batch().await;
                round_cpu[i] += process_cpu().saturating_sub(cpu_before);
            }
            for i in 0..2 {
                cpu[i] += round_cpu[i];
            }
            cpu_ratios.push(round_cpu[0].as_secs_f64() / round_cpu[1].as_secs_f64());
            let rate = took.map(|t| 2.0 * BATCH as f64 / t.as_secs_f64());
            for i in 0..2 {
                rates[i].push(rate[i]);
            }
            rate_ratios.push(rate[0] / rate[1]);
            let mut round_posts: [Vec<Duration>; 2] = Default::default();
            for _ in 0..lone_posts {
                for i in [first, second] {
                    round_posts[i].push(pairs[i].lone_post().await);
                }
            }
            let p50 = round_posts.each_mut().map(|p| percentile(p, 0.5));
            p50_ratios.push(p50[0].as_secs_f64() / p50[1].as_secs_f64());
            for i in 0..2 {
                posts[i].extend_from_slice(&round_posts[i]);
            }
        }
    });
    let rate = rates.each_mut().map(|r| median(r));
    let p50 = posts.each_mut().map(|p| percentile(p, 0.5));
    let p99 = posts.each_mut().map(|p| percentile(p, 0.99));
    println!(
        "turns ({rounds} rounds; per round two batches of {BATCH} posts and {lone_posts} lone \
         posts of each setup, in turns):\n  \
         throughput: repair_on median {:.0} msg/s, repair_off median {:.0} msg/s; \
         median of per-round ratios on/off {:.3} (rounds: {})\n  \
         CPU of this process per message: repair_on {:.3} µs, repair_off {:.3} µs; \
         ratio on/off of the totals {:.3}, median of per-round ratios {:.3} (rounds: {})\n  \
         lone post: repair_on p50 {:?} p99 {:?}, repair_off p50 {:?} p99 {:?} \
         ({} posts each); median of per-round p50 ratios on/off {:.3} (rounds: {})",
        rate[0],
        rate[1],
        median(&mut rate_ratios.clone()),
        list(&rate_ratios),
        per_message(cpu[0], rounds),
        per_message(cpu[1], rounds),
        cpu[0].as_secs_f64() / cpu[1].as_secs_f64(),
        median(&mut cpu_ratios.clone()),
        list(&cpu_ratios),
        p50[0],
        p99[0],
        p50[1],
        p99[1],
        posts[0].len(),
        median(&mut p50_ratios.clone()),
        list(&p50_ratios),
    );
}

// ---- Repair latency -------------------------------------------------------------------------

/// Bus A on Redis, bus B behind a proxy that cuts it off.
struct Cut {
    proxy: Proxy,
    a: Bus,
    b: Bus,
    /// B's events since the start, read one cut at a time.
    events: tokio::sync::Mutex<BusEvents>,
    received: Arc<Counter>,
    order: Arc<InOrder>,
    seq: AtomicU64,
    /// What each cut took.
    timings: std::sync::Mutex<Vec<Timing>>,
}

/// One cut's times, all ending when B's listener had the last lost message.
#[derive(Clone, Copy)]
struct Timing {
    /// From opening the proxy (fred's reconnect backoff is most of it).
    from_open: Duration,
    /// From the proxy accepting the last of B's connections again: what criterion measures.
    from_connected: Duration,
    /// From the bench reading B's `Reconnected` event; zero when every lost message was
    /// already delivered by then.
    from_reconnected: Duration,
}

/// What B's listener saw of the `Tick`s: their sequence numbers must follow one another.
#[derive(Default)]
struct InOrder {
    last: AtomicU64,
    out_of_order: AtomicU64,
}

impl Cut {
    async fn new(server: &redis::RedisServer) -> Cut {
        let proxy = Proxy::start(redis::free_port(), server.port()).await;
        let bus = |url: String| async move {
            Bus::builder()
                .redis_url(&url)
                .namespace("evbus-rbench-cut:")
                .outage_buffer(1_000_000)
                .build()
                .await
                .expect("bus on the bench's Redis")
        };
        let a = bus(server.url()).await;
        let b = bus(proxy.url()).await;
        let events = b.events();
        let received = Arc::new(Counter::default());
        let order = Arc::new(InOrder::default());
        let (counter, seen) = (received.clone(), order.clone());
        b.messages().add_listener(LOSSY, move |tick: &Tick| {
            if seen.last.swap(tick.seq, Ordering::AcqRel) + 1 != tick.seq {
                seen.out_of_order.fetch_add(1, Ordering::Relaxed);
            }
            counter.add(1);
        });
        b.subscriptions_ready().await.expect("bus B subscribed");
        let cut = Cut {
            proxy,
            a,
            b,
            events: tokio::sync::Mutex::new(events),
            received,
            order,
            seq: AtomicU64::new(0),
            timings: Default::default(),
        };
        // B learns of origin A: what it asks after a reconnect is the origins it knows (K04).
        let target = cut.received.expect(1);
        cut.post().await;
        cut.received.reached(target, || cut.stats()).await;
        cut
    }

    async fn post(&self) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        post_global(&self.a, LOSSY, Tick { seq, value: !seq }).await;
    }

    fn stats(&self) -> String {
        format!(
            "bus A: {:?}; bus B: {:?}; B's listener got {} (out of order: {})",
            self.a.stats(),
            self.b.stats(),
            self.received.count.load(Ordering::Acquire),
            self.order.out_of_order.load(Ordering::Relaxed)
        )
    }

    /// One cut (see the top); returns the time from the proxy accepting B's connections again
    /// to the last lost message delivered.
    async fn once(&self) -> Duration {
        let mut events = self.events.lock().await;
        let mut seen = Vec::new();
        while let Some(event) = events.try_recv() {
            seen.push(event);
        }
        let posted = self.seq.load(Ordering::Relaxed);
        let count = self.received.count.load(Ordering::Acquire);
        assert_eq!(
            count,
            posted,
            "before a cut, B's listener should have every message A posted, once; {}",
            self.stats()
        );

        self.proxy.block().await;
        self.wait_for(&mut events, &mut seen, "Disconnected", |e| {
            *e == BusEvent::Disconnected
        })
        .await;
        let target = self.received.expect(LOST);
        for _ in 0..LOST {
            self.post().await;
        }
        tokio::time::timeout(EVENT_DEADLINE, self.a.flush())
            .await
            .unwrap_or_else(|_| panic!("bus A's posts not flushed; {}", self.stats()))
            .expect("bus A flushes");

        let opened = Instant::now();
        self.proxy.unblock().await;
        self.wait_for(&mut events, &mut seen, "Reconnected", |e| {
            *e == BusEvent::Reconnected
        })
        .await;
        let reconnected = Instant::now();
        let arrived = tokio::time::timeout(
            REPAIR_DEADLINE,
            self.received.reached(target, || self.stats()),
        )
        .await;
        let done = Instant::now();
        if arrived.is_err() {
            while let Some(event) = events.try_recv() {
                seen.push(event);
            }
            panic!(
                "repair did not deliver what bus B lost: {} of the {LOST} messages arrived \
                 within {REPAIR_DEADLINE:?} of B's reconnect (is repair, issue 10, on this \
                 branch?); {}; B's events during the cut: {seen:?}",
                self.received
                    .count
                    .load(Ordering::Acquire)
                    .saturating_sub(target - LOST),
                self.stats()
            );
        }
        // B has two connections (publisher and subscriber); repair needs both.
        let accepted = self.proxy.accepted();
        assert!(
            accepted.len() >= 2,
            "the proxy accepted {} connections of bus B after the cut, not 2; {}",
            accepted.len(),
            self.stats()
        );
        let connected = accepted[1];
        let timing = Timing {
            from_open: done - opened,
            from_connected: done - connected,
            from_reconnected: done.saturating_duration_since(reconnected),
        };
        self.timings.lock().unwrap().push(timing);
        timing.from_connected
    }

    /// Reads B's events until one matches; panics after `EVENT_DEADLINE`.
    async fn wait_for(
        &self,
        events: &mut BusEvents,
        seen: &mut Vec<BusEvent>,
        name: &str,
        matches: impl Fn(&BusEvent) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => {
                    let found = matches(&event);
                    seen.push(event);
                    if found {
                        return;
                    }
                }
                Ok(None) => panic!("bus B's events ended while waiting for {name}"),
                Err(_) => panic!(
                    "bus B did not report {name} within {EVENT_DEADLINE:?}; its events: \
                     {seen:?}; {}",
                    self.stats()
                ),
            }
        }
    }

    async fn close(self) {
        self.a.shutdown().await.expect("bus A shuts down");
        self.b.shutdown().await.expect("bus B shuts down");
        self.proxy.block().await;
    }
}

fn repair_latency(c: &mut Criterion, runtime: &Runtime, cut: &Cut) {
    // The sanity check, once: B's counters across one cut. B counts a frame received after
    // its listeners ran, so the counters are read once the priming post is well behind.
    runtime.block_on(tokio::time::sleep(Duration::from_millis(300)));
    let before = cut.b.stats();
    let took = runtime.block_on(cut.once());
    // Past the repair timeout, so that a late duplicate or a late miss would be counted too.
    runtime.block_on(tokio::time::sleep(Duration::from_secs(1)));
    let after = cut.b.stats();
    println!(
        "repair_latency sanity check, one cut of {LOST} messages: {took:?} from B's \
         connections being accepted again to the last of them; bus B's stats, grown by: {}; bus B now: {after:?}",
        delta(&before, &after)
    );
    let count = cut.received.count.load(Ordering::Acquire);
    let posted = cut.seq.load(Ordering::Relaxed);
    assert_eq!(count, posted, "{}", cut.stats());
    let repaired = after.global_repaired - before.global_repaired;
    let missed = after.global_missed - before.global_missed;
    if repaired != LOST || missed != 0 {
        println!(
            "WARNING: all {LOST} arrived, but B counted {repaired} repaired (expected {LOST}) \
             and {missed} missed (expected 0)"
        );
    }

    let mut group = configure(c, "repair_latency");
    // Criterion sizes an `iter_custom` run by the wall time of its warm-up, and a cut takes
    // some 0.2 s of wall time (the cut, the posts, fred's reconnect backoff) around the few
    // milliseconds measured: about 40 cuts.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(LOST));
    group.bench_function(format!("reconnect_to_last_of_{LOST}"), |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += cut.once().await;
                }
                total
            })
        })
    });
    group.finish();

    let timings = cut.timings.lock().unwrap().clone();
    let mut from_connected: Vec<Duration> = timings.iter().map(|t| t.from_connected).collect();
    let mut from_reconnected: Vec<Duration> = timings.iter().map(|t| t.from_reconnected).collect();
    let mut from_open: Vec<Duration> = timings.iter().map(|t| t.from_open).collect();
    // Done by the time the bench read `Reconnected` (it reads it within microseconds).
    let before_reconnected = timings
        .iter()
        .filter(|t| t.from_reconnected < Duration::from_micros(50))
        .count();
    let out_of_order = cut.order.out_of_order.load(Ordering::Relaxed);
    println!(
        "repair_latency over every cut ({} cuts of {LOST} lost messages, warm-up included), \
         to the last lost message delivered:\n  \
         from the proxy accepting B's connections again: median {:?} (min {:?}, max {:?})\n  \
         from the bench reading B's Reconnected: median {:?} (min {:?}, max {:?}); \
         {before_reconnected} cuts were done before it\n  \
         from opening the proxy (fred's backoff included): median {:?}\n  \
         out of order: {out_of_order}; bus B: {:?}",
        timings.len(),
        percentile(&mut from_connected, 0.5),
        percentile(&mut from_connected, 0.0),
        percentile(&mut from_connected, 1.0),
        percentile(&mut from_reconnected, 0.5),
        percentile(&mut from_reconnected, 0.0),
        percentile(&mut from_reconnected, 1.0),
        percentile(&mut from_open, 0.5),
        cut.b.stats(),
    );
    assert_eq!(out_of_order, 0, "B's listener got Ticks out of order");
}

// ---- Helpers --------------------------------------------------------------------------------

/// CPU time of this process so far (user + system, every thread), from `/proc/self/stat`;
/// zero where there is none (not Linux).
fn process_cpu() -> Duration {
    /// Linux's USER_HZ, which `/proc` counts in (100 on every common platform).
    const TICKS_PER_SECOND: u64 = 100;
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // After the command name in parentheses: state (field 3), ..., utime (14), stime (15).
    let fields: Vec<&str> = stat[stat.rfind(')').map_or(0, |at| at + 1)..]
        .split_whitespace()
        .collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND)
}

/// Microseconds per message of `cpu` spent on `rounds` rounds of two batches.
fn per_message(cpu: Duration, rounds: usize) -> f64 {
    cpu.as_secs_f64() * 1e6 / (2 * BATCH * rounds as u64) as f64
}

/// The counters of `Stats` that repair concerns, `after - before`.
fn delta(before: &Stats, after: &Stats) -> String {
    format!(
        "global_received +{}, global_repaired +{}, global_repair_requests +{}, \
         global_missed +{}, global_duplicates +{}",
        after.global_received - before.global_received,
        after.global_repaired - before.global_repaired,
        after.global_repair_requests - before.global_repair_requests,
        after.global_missed - before.global_missed,
        after.global_duplicates - before.global_duplicates,
    )
}

/// The `q` quantile (nearest rank) of `samples`.
fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_unstable_by(f64::total_cmp);
    values[values.len() / 2]
}

fn list(values: &[f64]) -> String {
    let values: Vec<String> = values.iter().map(|v| format!("{v:.3}")).collect();
    values.join(" ")
}
