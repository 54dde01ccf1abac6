//! Global throughput on a Redis Cluster against one `redis-server`, and what Redis pays for it
//! (issue 9, "Speed and scale").
//!
//! One run starts, side by side, on free loopback ports with no persistence:
//! - `single`: one `redis-server` (`tests/support/redis.rs`), buses on a `redis://` URL;
//! - a cluster of 3 masters and no replicas (`tests/support/cluster.rs`,
//!   `--cluster-replicas 0`: replicas would only add the copy each master sends its
//!   replica, the same for both cluster setups below; Redis's default node timeout, not the
//!   tests' 1 s, which only adds cluster-bus pings), used twice:
//!   - `cluster_sharded`: buses on its `redis-cluster://` URL, so evbus publishes with
//!     `SPUBLISH` and subscribes with `SSUBSCRIBE`, each channel on the master that owns its
//!     slot;
//!   - `cluster_classic`: buses on `redis://` URLs of single masters (bus A on the first, bus B
//!     on the second), so evbus publishes with classic `PUBLISH` and subscribes with
//!     `SUBSCRIBE`, what it would do without sharding. The cluster broadcasts every classic
//!     PUBLISH to every node over its bus, so every master pays for every message. Same
//!     buses, same batching and frames, same messages: only the routing differs.
//! - `one_master_sharded`: a cluster of one master owning every slot, on its
//!   `redis-cluster://` URL: cluster mode and `SPUBLISH` without the split over masters, to
//!   tell what cluster mode costs from what spreading the messages over three nodes costs.
//!
//! In each, bus A posts 100,000 small messages (`Tick`, two `u64`s) with
//! `MessageScope::Global`, round robin over 300 channels (so every shard gets traffic), and an
//! iteration ends when bus B's listeners have received all of them (a missed message fails the
//! bench after a deadline, saying what the buses counted). Everything runs on one tokio runtime
//! with 2 workers: the buses and every Redis process share the machine's cores.
//!
//! Criterion measures each setup (`cluster_throughput/<setup>`), one after another. Then the
//! table: on a shared machine the load changes between criterion's runs, so the setups take
//! turns, one batch each per round, 15 rounds, and every ratio is the median of the per-round
//! ratios to `single`'s batch in the same round. Around every batch the bench reads `INFO cpu
//! stats commandstats` from each node of the setup (on one connection per node, open for the
//! whole run) and sums `used_cpu_sys + used_cpu_user` (Redis's own CPU time, all its threads),
//! the calls of `PUBLISH` and `SPUBLISH`, the socket reads and writes
//! (`total_reads_processed`, `total_writes_processed`) and the bytes read
//! (`total_net_input_bytes`). The table gives the median messages/s, Redis CPU µs per
//! delivered message (summed over the nodes, and per node), messages per PUBLISH command,
//! posts per pipelined write of bus A, Redis's socket reads and writes per 1,000 messages, the
//! cluster ÷ single ratios that issue 9 asks for (throughput at least 0.8, CPU per message no
//! higher), and what the nodes spend idle; a line per setup below it splits the reads from the
//! writes and gives the bytes per read.
//!
//! Run with `cargo bench --bench cluster` (about a minute and a half). Needs `redis-server` and
//! `redis-cli` (the cluster is created with `redis-cli --cluster create`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use evbus::Bus;

#[path = "../tests/support/cluster.rs"]
mod cluster;
#[path = "support/counter.rs"]
mod counter;
#[path = "../tests/support/redis.rs"]
mod redis;

use cluster::{Raw, RedisCluster, Reply};
use counter::{post_global, Counter, Tick};

/// Posts per iteration.
const BATCH: u64 = 100_000;
/// Channels the posts are spread over, round robin.
const CHANNELS: usize = 300;
/// Channel names: every bus here uses this namespace.
const NAMESPACE: &str = "evbus-cbench:";
/// Rounds of the table: each setup sends one batch per round.
const ROUNDS: usize = 15;
/// How long the nodes are watched doing nothing.
const IDLE: Duration = Duration::from_secs(2);
/// Masters of the cluster.
const MASTERS: usize = 3;
/// The cluster's node timeout: Redis's default.
const NODE_TIMEOUT: &[&str] = &["--cluster-node-timeout", "15000"];

fn main() {
    let single = redis::RedisServer::start();
    // Redis's default node timeout (the tests use 1 s, for fast failovers): a shorter one
    // only adds cluster-bus pings, which are not what this measures (both are in the README).
    let cluster = RedisCluster::start_with(MASTERS, 0, NODE_TIMEOUT);
    let one = one_master_cluster();
    let one_url = format!("redis-cluster://127.0.0.1:{}", one.port());
    let runtime = counter::runtime();
    let _context = runtime.enter();
    let mut criterion = Criterion::default().configure_from_args();

    let channels: Vec<String> = (0..CHANNELS).map(|i| format!("tick{i}")).collect();
    let node = |i: usize| format!("redis://127.0.0.1:{}", cluster.nodes[i].port());
    let cluster_ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port()).collect();
    let setups = runtime.block_on(async {
        vec![
            Setup::new(
                "single",
                &single.url(),
                &single.url(),
                vec![single.port()],
                &channels,
            )
            .await,
            Setup::new(
                "cluster_sharded",
                &cluster.url(),
                &cluster.url(),
                cluster_ports.clone(),
                &channels,
            )
            .await,
            Setup::new(
                "cluster_classic",
                &node(0),
                &node(1),
                cluster_ports,
                &channels,
            )
            .await,
            Setup::new(
                "one_master_sharded",
                &one_url,
                &one_url,
                vec![one.port()],
                &channels,
            )
            .await,
        ]
    });

    let mut seq = 0u64;
    let mut group = criterion.benchmark_group("cluster_throughput");
    // An iteration takes a good fraction of a second: ten per sample set, all the same.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(BATCH));
    for setup in &setups {
        group.bench_function(setup.name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        setup.send_batch(&channels, &mut seq).await;
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();

    // The table: criterion measures the setups one after another, and on a shared machine the
    // load changes between them; here they take turns, one batch each per round, so that every
    // round compares the three under the same load. Redis's counters are read around each
    // batch.
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let round: Vec<Sample> = setups
            .iter()
            .map(|setup| {
                let before = setup.redis_counters();
                let writes_before = setup.a.stats().global_batches;
                let elapsed = runtime.block_on(async {
                    let started = Instant::now();
                    setup.send_batch(&channels, &mut seq).await;
                    started.elapsed()
                });
                let after = setup.redis_counters();
                Sample {
                    elapsed,
                    writes: setup.a.stats().global_batches - writes_before,
                    cpu: after.cpu - before.cpu,
                    publishes: after.publishes - before.publishes,
                    io: after.io - before.io,
                    reads: after.reads - before.reads,
                    read_bytes: after.read_bytes - before.read_bytes,
                }
            })
            .collect();
        rounds.push(round);
    }
    // What the nodes spend doing nothing (cron, and the cluster bus's pings), for scale.
    let idle_before: Vec<RedisCounters> = setups.iter().map(Setup::redis_counters).collect();
    std::thread::sleep(IDLE);
    let idle: Vec<f64> = setups
        .iter()
        .zip(idle_before)
        .map(|(setup, before)| (setup.redis_counters().cpu - before.cpu) / IDLE.as_secs_f64())
        .collect();
    print_table(&setups, &rounds, &idle);
    for setup in &setups {
        let stats = setup.b.stats();
        assert_eq!(
            stats.global_missed, 0,
            "{}: bus B missed messages",
            setup.name
        );
    }

    runtime.block_on(async {
        for setup in setups {
            setup.close().await;
        }
    });
    criterion.final_summary();
    drop(cluster);
    drop(single);
}

/// A cluster of one master that owns every slot: cluster mode and sharded pub/sub without the
/// split over nodes. `redis-cli --cluster create` wants three masters, so the slots are
/// assigned by hand; the node announces 127.0.0.1, which a node that never met another does
/// not know as its own address.
fn one_master_cluster() -> redis::RedisServer {
    let node = redis::RedisServer::start_with(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-announce-ip",
        "127.0.0.1",
    ]);
    node.cli(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]);
    let started = Instant::now();
    while !node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
        assert!(
            started.elapsed() < cluster::SETTLE_DEADLINE,
            "the one-master cluster on port {} did not reach cluster_state:ok",
            node.port()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    node
}

/// One measured batch of [`BATCH`] posts.
struct Sample {
    elapsed: Duration,
    /// Bus A's pipelined writes to Redis (on a cluster, each is one write per master).
    writes: u64,
    /// Redis CPU seconds, summed over the setup's nodes.
    cpu: f64,
    /// `PUBLISH` and `SPUBLISH` calls, summed over the setup's nodes.
    publishes: u64,
    /// Socket reads and writes, summed over the setup's nodes.
    io: u64,
    /// What was read, summed over the setup's nodes: reads and bytes.
    reads: u64,
    read_bytes: u64,
}

/// What the nodes of a setup have counted so far.
struct RedisCounters {
    cpu: f64,
    publishes: u64,
    /// `total_reads_processed + total_writes_processed`: socket reads and writes, each one
    /// turn of work for a node's event loop.
    io: u64,
    /// `total_reads_processed` and `total_net_input_bytes`.
    reads: u64,
    read_bytes: u64,
}

/// Two buses on one Redis deployment, and the nodes to read `INFO` from.
struct Setup {
    name: &'static str,
    /// The posting bus ("server A").
    a: Bus,
    /// The receiving bus ("server B"), a listener on every channel.
    b: Bus,
    received: Arc<Counter>,
    ports: Vec<u16>,
    /// One connection per node for `INFO`, open for the whole run: a connection per reading
    /// would charge each node a connect and a close per batch.
    info: std::sync::Mutex<Vec<Raw>>,
}

impl Setup {
    async fn new(
        name: &'static str,
        url_a: &str,
        url_b: &str,
        ports: Vec<u16>,
        channels: &[String],
    ) -> Setup {
        let bus = |url: String| async move {
            Bus::builder()
                .redis_url(&url)
                .namespace(NAMESPACE)
                .outage_buffer(1_000_000)
                .build()
                .await
                .unwrap_or_else(|e| panic!("{name}: a bus on {url}: {e}"))
        };
        let a = bus(url_a.to_string()).await;
        let b = bus(url_b.to_string()).await;
        let received = Arc::new(Counter::default());
        for channel in channels {
            let counter = received.clone();
            b.messages().add_listener(channel, move |tick: &Tick| {
                std::hint::black_box(tick);
                counter.add(1);
            });
        }
        b.subscriptions_ready()
            .await
            .unwrap_or_else(|e| panic!("{name}: bus B subscribed: {e}"));
        Setup {
            name,
            a,
            b,
            received,
            info: std::sync::Mutex::new(ports.iter().map(|&port| Raw::connect(port)).collect()),
            ports,
        }
    }

    /// Bus A posts [`BATCH`] messages round robin over `channels`; returns when bus B has
    /// received them all.
    async fn send_batch(&self, channels: &[String], seq: &mut u64) {
        let target = self.received.expect(BATCH);
        for i in 0..BATCH {
            *seq += 1;
            let channel = &channels[i as usize % channels.len()];
            let tick = Tick {
                seq: *seq,
                value: !*seq,
            };
            post_global(&self.a, channel, tick).await;
        }
        self.received.reached(target, || self.stats()).await;
    }

    /// `INFO cpu stats commandstats` of every node, summed.
    fn redis_counters(&self) -> RedisCounters {
        let mut total = RedisCounters {
            cpu: 0.0,
            publishes: 0,
            io: 0,
            reads: 0,
            read_bytes: 0,
        };
        let mut connections = self.info.lock().expect("INFO connections");
        for (connection, port) in connections.iter_mut().zip(&self.ports) {
            let info = match connection.request(&[b"INFO", b"cpu", b"stats", b"commandstats"]) {
                Reply::Bulk(Some(info)) => String::from_utf8_lossy(&info).into_owned(),
                other => panic!("INFO on {port}: {other:?}"),
            };
            for line in info.lines() {
                if let Some(seconds) = line
                    .strip_prefix("used_cpu_sys:")
                    .or_else(|| line.strip_prefix("used_cpu_user:"))
                {
                    total.cpu += seconds.trim().parse::<f64>().expect("CPU seconds");
                }
                if let Some(count) = line
                    .strip_prefix("total_reads_processed:")
                    .or_else(|| line.strip_prefix("total_writes_processed:"))
                {
                    total.io += count.trim().parse::<u64>().expect("a count");
                }
                if let Some(count) = line.strip_prefix("total_reads_processed:") {
                    total.reads += count.trim().parse::<u64>().expect("a count");
                }
                if let Some(count) = line.strip_prefix("total_net_input_bytes:") {
                    total.read_bytes += count.trim().parse::<u64>().expect("a count");
                }
                let command = line
                    .strip_prefix("cmdstat_publish:")
                    .or_else(|| line.strip_prefix("cmdstat_spublish:"));
                if let Some(calls) = command.and_then(|c| c.strip_prefix("calls=")) {
                    let calls = calls.split(',').next().unwrap_or_default();
                    total.publishes += calls.parse::<u64>().expect("calls");
                }
            }
        }
        total
    }

    /// What the two buses counted, for failure messages.
    fn stats(&self) -> String {
        format!(
            "{}: bus A: {:?}; bus B: {:?}",
            self.name,
            self.a.stats(),
            self.b.stats()
        )
    }

    async fn close(self) {
        let name = self.name;
        self.a
            .shutdown()
            .await
            .unwrap_or_else(|e| panic!("{name}: bus A shuts down: {e}"));
        self.b
            .shutdown()
            .await
            .unwrap_or_else(|e| panic!("{name}: bus B shuts down: {e}"));
    }
}

/// The summary: medians over the rounds; each ratio is the median of the per-round ratios to
/// `single`'s batch in the same round.
fn print_table(setups: &[Setup], rounds: &[Vec<Sample>], idle: &[f64]) {
    let rate = |s: &Sample| BATCH as f64 / s.elapsed.as_secs_f64();
    let cpu_us = |s: &Sample| s.cpu * 1e6 / BATCH as f64;
    println!();
    println!(
        "cluster_throughput, {} rounds taking turns, each {BATCH} posts over {CHANNELS} \
         channels per setup; medians. Redis CPU = used_cpu_sys + used_cpu_user (INFO cpu), \
         summed over the setup's nodes.",
        rounds.len()
    );
    println!(
        "| setup | nodes | msg/s | ÷ single | Redis CPU µs/msg | per node | ÷ single \
         | msgs per PUBLISH | posts per write | Redis reads+writes per 1k msgs | idle Redis CPU ms/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, setup) in setups.iter().enumerate() {
        let nodes = setup.ports.len();
        let ours = || rounds.iter().map(move |round| &round[i]);
        let cpu = median(ours().map(cpu_us));
        println!(
            "| {} | {nodes} | {:.0} | {:.2} | {cpu:.3} | {:.3} | {:.2} | {:.1} | {:.0} | {:.1} | {:.1} |",
            setup.name,
            median(ours().map(rate)),
            median(rounds.iter().map(|r| rate(&r[i]) / rate(&r[0]))),
            cpu / nodes as f64,
            median(rounds.iter().map(|r| cpu_us(&r[i]) / cpu_us(&r[0]))),
            median(ours().map(|s| BATCH as f64 / s.publishes.max(1) as f64)),
            median(ours().map(|s| BATCH as f64 / s.writes.max(1) as f64)),
            median(ours().map(|s| s.io as f64 * 1e3 / BATCH as f64)),
            idle[i] * 1e3,
        );
    }
    for (i, setup) in setups.iter().enumerate() {
        let ours = || rounds.iter().map(move |round| &round[i]);
        println!(
            "{}: reads per 1k msgs {:.1}, bytes per read {:.0}, writes per 1k msgs {:.1}",
            setup.name,
            median(ours().map(|s| s.reads as f64 * 1e3 / BATCH as f64)),
            median(ours().map(|s| s.read_bytes as f64 / s.reads.max(1) as f64)),
            median(ours().map(|s| (s.io - s.reads) as f64 * 1e3 / BATCH as f64)),
        );
    }
    println!(
        "issue 9 asks of cluster_sharded: msg/s ÷ single >= 0.8, Redis CPU per message ÷ single <= 1"
    );
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}
