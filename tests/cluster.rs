//! Redis Cluster: sharded pub/sub through a `redis-cluster://` URL, one test per rule of the
//! behaviour contract's C section (C01 to C04), named after it, and the bad URLs that must
//! fail fast. Also a Sentinel failover through a `redis-sentinel://` URL (one master, one
//! replica, three sentinels of the test's own).
//!
//! Every test starts its own six-node cluster (tests/support/cluster.rs: three masters, three
//! replicas, on free loopback ports) and checks the wire with redis-cli and raw RESP
//! connections, never a mock. Everything waits on conditions with generous deadlines.

mod support;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use evbus::{
    revoked_authentication_channel, Bus, BusEvent, Delivery, MessageScope, PostError,
    RevokedAuthentication, WireFormat,
};
use support::bus::{
    blocking, build, delivered, flush, global, next, ready, recorder, shutdown, snapshot,
    stats_until, wait_until, Log, DEADLINE,
};
use support::cluster::{ran, spublish, Raw, RedisCluster, Sentinels};
use support::redis::{free_port, RawSubscriber, RedisServer};
use tokio::time::timeout;

/// A bound on a bad URL's `build()`: it fails fast, it does not hang.
const FAIL_FAST: Duration = Duration::from_secs(15);

async fn cluster_bus(cluster: &RedisCluster) -> Bus {
    build(Bus::builder().redis_url(cluster.url())).await
}

/// One channel per master: `prefix` and a number, so that every shard is used.
fn channel_per_master(cluster: &RedisCluster, prefix: &str) -> Vec<(usize, String)> {
    cluster
        .masters()
        .into_iter()
        .map(|m| (m, cluster.channel_on(m, &format!("{prefix}{m}_"))))
        .collect()
}

/// Adds the ACL user `limited` (password `pw`), allowed only the channels `pattern` (such as
/// `&ok:*`), on every node of `cluster`; returns the cluster's URL with that user.
fn limited_user(cluster: &RedisCluster, pattern: &str) -> String {
    for node in cluster.running() {
        node.acl_user("limited", &[pattern]);
    }
    cluster.url().replacen("://", "://limited:pw@", 1)
}

/// The number after `prefix` in `INFO section` (up to a `,`), summed over `nodes`.
fn info_sum(nodes: &mut [Raw], section: &str, prefix: &str) -> u64 {
    let mut sum = 0;
    for node in nodes {
        let support::cluster::Reply::Bulk(Some(info)) =
            node.request(&[b"INFO", section.as_bytes()])
        else {
            panic!("INFO {section}: no answer");
        };
        for line in String::from_utf8_lossy(&info).lines() {
            if let Some(rest) = line.strip_prefix(prefix) {
                let number = rest.split(',').next().unwrap_or_default().trim();
                sum += number.parse::<u64>().expect("a count");
            }
        }
    }
    sum
}

/// Whether `log` holds, for each origin range, its messages in post order and each once.
fn in_order_once(log: &[u64], origins: &[std::ops::Range<u64>]) -> bool {
    origins.iter().all(|range| {
        let theirs: Vec<u64> = log.iter().copied().filter(|m| range.contains(m)).collect();
        theirs == range.clone().collect::<Vec<_>>()
    }) && log.len() == origins.iter().map(|r| r.end - r.start).sum::<u64>() as usize
}

/// C01: messages of a channel reach every bus subscribed to it, the poster included, in
/// per-channel post order, whichever master owns the channel's slot; duplicates are dropped
/// (G06); revocations travel through the cluster too (R01, R02).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c01_every_global_rule_holds_across_a_cluster() {
    let cluster = blocking(RedisCluster::start);
    let (a, b) = (cluster_bus(&cluster).await, cluster_bus(&cluster).await);
    let channels = blocking(|| channel_per_master(&cluster, "c01_"));
    assert_eq!(channels.len(), 3, "three masters");
    let mut logs: Vec<(String, Log<u64>, Log<u64>)> = Vec::new();
    for (_, channel) in &channels {
        let on_a = recorder::<u64>(a.messages(), channel);
        let on_b = recorder::<u64>(b.messages(), channel);
        logs.push((channel.clone(), on_a, on_b));
    }
    ready(&a).await;
    ready(&b).await;

    // Both buses post, interleaved, to every shard (G03, G05).
    const N: u64 = 200;
    for i in 0..N {
        for (_, channel) in &channels {
            global(&a, channel, i);
            global(&b, channel, 1000 + i);
        }
    }
    flush(&a).await;
    flush(&b).await;
    let origins = [0..N, 1000..1000 + N];
    for (channel, on_a, on_b) in &logs {
        for (bus, log) in [("a", on_a), ("b", on_b)] {
            wait_until(
                &format!("bus {bus} received everything on {channel}, in order, once"),
                DEADLINE,
                || in_order_once(&snapshot(log), &origins),
            )
            .await;
        }
    }
    for bus in [&a, &b] {
        let stats = stats_until(bus, "every message is counted", |s| {
            s.global_received >= 2 * N * 3
        })
        .await;
        assert_eq!((stats.global_missed, stats.global_duplicates), (0, 0));
        assert_eq!(stats.global_received, 2 * N * 3);
    }

    // Duplicates (G06): every frame of a burst, SPUBLISHed again on the owner, is dropped.
    let (owner, channel) = channels[0].clone();
    let port = cluster.nodes[owner].port();
    let mut raw = blocking(|| Raw::ssubscribe(port, &channel));
    let before = snapshot(&logs[0].2).len();
    for i in 0..5u64 {
        global(&a, &channel, 5000 + i);
    }
    flush(&a).await;
    wait_until("b received the burst", DEADLINE, || {
        snapshot(&logs[0].2).len() == before + 5
    })
    .await;
    let frames: Vec<Vec<u8>> = blocking(|| {
        let mut frames = Vec::new();
        let mut count = 0;
        while let Some(frame) = raw.next_smessage(Duration::from_millis(500)) {
            frames.push(frame);
            count += 1;
            assert!(count <= 5, "at most one frame per post");
        }
        frames
    });
    assert!(!frames.is_empty(), "the raw SSUBSCRIBE saw the burst");
    let duplicates = b.stats().global_duplicates;
    for frame in &frames {
        assert!(blocking(|| spublish(port, &channel, frame)) >= 1);
    }
    wait_until("five duplicates counted", DEADLINE, || {
        b.stats().global_duplicates == duplicates + 5
    })
    .await;
    assert_eq!(snapshot(&logs[0].2).len(), before + 5, "nothing twice");

    // R01, R02: a revocation posted on one bus is received on another through the cluster.
    let user_channel = revoked_authentication_channel("c01-user");
    let revoked = recorder::<RevokedAuthentication>(b.messages(), &user_channel);
    ready(&b).await;
    let delivery = a
        .messages()
        .revoke_authentication("c01-user", RevokedAuthentication::AuthId("s1".into()))
        .expect("revocation accepted");
    assert!(delivery.is_global());
    delivered(delivery).await;
    wait_until("b received the revocation", DEADLINE, || {
        snapshot(&revoked) == [RevokedAuthentication::AuthId("s1".into())]
    })
    .await;

    shutdown(&a).await;
    shutdown(&b).await;
}

/// C02: a channel is SSUBSCRIBEd on the master that owns its slot and only there, posts use
/// SPUBLISH, no classic SUBSCRIBE or PUBLISH is ever sent, and the last receiver going sends
/// SUNSUBSCRIBE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c02_channels_are_ssubscribed_on_their_owner_only_and_posts_use_spublish() {
    let cluster = blocking(RedisCluster::start);
    let bus = cluster_bus(&cluster).await;
    let channels = blocking(|| channel_per_master(&cluster, "c02_"));
    let mut ids = Vec::new();
    for (_, channel) in &channels {
        ids.push(bus.messages().add_listener(channel, |_: &u64| {}));
    }
    ready(&bus).await;
    blocking(|| {
        for (owner, channel) in &channels {
            for master in cluster.masters() {
                let expected = u64::from(master == *owner);
                assert_eq!(
                    cluster.shardnumsub(master, channel),
                    expected,
                    "PUBSUB SHARDNUMSUB {channel} on node {master} (owner {owner})"
                );
            }
            assert_eq!(
                cluster.numsub_everywhere(channel),
                0,
                "no classic SUBSCRIBE"
            );
        }
        for node in cluster.running() {
            assert!(
                !ran(node.port(), "subscribe"),
                "SUBSCRIBE on {}",
                node.port()
            );
        }
    });

    // Posts: a raw SSUBSCRIBE on the owner receives them, a classic SUBSCRIBE (the test's
    // own, so SUBSCRIBE was checked above) does not.
    let (owner, channel) = channels[0].clone();
    let port = cluster.nodes[owner].port();
    let mut sharded = blocking(|| Raw::ssubscribe(port, &channel));
    let mut classic = blocking(|| RawSubscriber::connect(&cluster.nodes[owner], &[&channel]));
    delivered(global(&bus, &channel, 7u64)).await;
    assert!(
        blocking(|| sharded.next_smessage(DEADLINE)).is_some(),
        "the post arrived as an smessage on the owner"
    );
    assert!(
        blocking(|| classic.next_message(Duration::from_millis(500))).is_none(),
        "nothing was PUBLISHed"
    );
    blocking(|| {
        for node in cluster.running() {
            let port = node.port();
            assert!(!ran(port, "publish"), "PUBLISH on {port}");
        }
        assert!(ran(port, "spublish"), "SPUBLISH on the owner");
    });

    // Idle, the bus reads the slot table (C03) on connections it has open: it makes no new
    // connection however long it runs (fred's own way of reading it made one each time, four
    // a second). Watched through one connection per node, for eight readings; one reading
    // that a loaded machine delays past half a second is taken fred's way, which connects.
    blocking(|| {
        let mut nodes: Vec<Raw> = cluster.running().map(|n| Raw::connect(n.port())).collect();
        let connections = info_sum(&mut nodes, "stats", "total_connections_received:");
        let readings = info_sum(&mut nodes, "commandstats", "cmdstat_cluster|slots:calls=");
        let deadline = Instant::now() + DEADLINE;
        while info_sum(&mut nodes, "commandstats", "cmdstat_cluster|slots:calls=") < readings + 8 {
            assert!(
                Instant::now() < deadline,
                "the bus stopped reading the slot table"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let made = info_sum(&mut nodes, "stats", "total_connections_received:") - connections;
        assert!(made <= 1, "{made} connections made while the bus was idle");
    });

    // The last receiver going sends SUNSUBSCRIBE.
    drop(sharded);
    for ((_, channel), id) in channels.iter().zip(ids) {
        assert!(bus.messages().remove_listener(channel, id));
    }
    ready(&bus).await;
    for (owner, channel) in &channels {
        wait_until(
            &format!("the owner of {channel} has no sharded subscriber left"),
            DEADLINE,
            || blocking(|| cluster.shardnumsub(*owner, channel)) == 0,
        )
        .await;
    }
    shutdown(&bus).await;
}

/// A cluster URL pointing at a Redis that is not in cluster mode: `build()` fails at once,
/// naming the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_url_a_cluster_url_at_a_node_not_in_cluster_mode_fails_fast() {
    let server = blocking(RedisServer::start);
    let url = format!("redis-cluster://127.0.0.1:{}", server.port());
    let started = Instant::now();
    let built = timeout(FAIL_FAST, Bus::builder().redis_url(&url).build())
        .await
        .expect("build() hung on a node not in cluster mode");
    let error = match built {
        Ok(_) => panic!("build() must fail on {url}"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains(&url), "{error:?} names {url}");
    assert!(error.contains("not in cluster mode"), "{error:?} says why");
    assert!(started.elapsed() < FAIL_FAST);
}

/// A cluster URL pointing at nothing: `build()` fails at once, naming the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_url_a_cluster_url_at_nothing_fails_fast() {
    let url = format!(
        "redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}",
        free_port(),
        free_port()
    );
    let built = timeout(FAIL_FAST, Bus::builder().redis_url(&url).build())
        .await
        .expect("build() hung on a cluster URL at nothing");
    let error = match built {
        Ok(_) => panic!("build() must fail on {url}"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains(&url), "{error:?} names {url}");
}

/// Posts `0, 1, 2, ..` on `channel` from `bus`, one every 2 ms, until `stop` is set; returns
/// how many were accepted (a refused post is not sent, and not counted).
fn keep_posting(
    bus: &Bus,
    channel: &str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<Delivery>)> {
    let (bus, channel) = (bus.clone(), channel.to_string());
    tokio::spawn(async move {
        let mut next = 0u64;
        let mut deliveries = Vec::new();
        while !stop.load(SeqCst) {
            match bus
                .messages()
                .post_message(&channel, next, MessageScope::Global)
            {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    next += 1;
                }
                Err(PostError::Backpressure) => {}
                Err(error) => panic!("post refused: {error}"),
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (next, deliveries)
    })
}

/// Waits until `bus` has accounted for all `sent` messages of one origin on a channel: each
/// delivered once, in order, or reported missed (G06); returns what was delivered.
async fn accounted(bus: &Bus, log: &Log<u64>, sent: u64) -> Vec<u64> {
    wait_until(
        "every message is delivered once, in order, or reported missed",
        DEADLINE,
        || snapshot(log).len() as u64 + bus.stats().global_missed >= sent,
    )
    .await;
    let got = snapshot(log);
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in post order, nothing twice: {got:?}"
    );
    assert!(got.iter().all(|&m| m < sent));
    let stats = bus.stats();
    assert_eq!(
        got.len() as u64 + stats.global_missed,
        sent,
        "delivered + missed == sent"
    );
    eprintln!(
        "accounted: sent {sent}, missed {}, repaired {}, repair requests {}",
        stats.global_missed, stats.global_repaired, stats.global_repair_requests
    );
    got
}

/// After a fault: waits until 50 more of `poster`'s messages reached `b` (`what`), stops it,
/// waits for its posts to settle, checks `b`'s accounting ([`accounted`]) and shuts both
/// buses down.
async fn flows_again_then_accounted(
    a: &Bus,
    b: &Bus,
    log: &Log<u64>,
    poster: tokio::task::JoinHandle<(u64, Vec<Delivery>)>,
    stop: &AtomicBool,
    what: &str,
) {
    let seen = snapshot(log).len();
    wait_until(what, DEADLINE, || snapshot(log).len() >= seen + 50).await;
    stop.store(true, SeqCst);
    let (sent, deliveries) = poster.await.unwrap();
    for delivery in deliveries {
        delivered(delivery).await;
    }
    flush(a).await;
    accounted(b, log, sent).await;
    // K02 on a cluster: what the fault lost was repaired from the origin's window (control
    // channels are sharded like the rest), so nothing is missed.
    assert_eq!(b.stats().global_missed, 0, "{:?}", b.stats());
    shutdown(a).await;
    shutdown(b).await;
}

/// C03: a channel's slot moves to another master while posts flow: the bus subscribes it on
/// the new owner by itself, says so (`BusEvent::Resubscribed`), posts follow the slot
/// (`MOVED`), and every message is delivered once or reported missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c03_a_moved_slot_is_followed_and_nothing_is_lost_silently() {
    let cluster = blocking(RedisCluster::start);
    let (a, b) = (cluster_bus(&cluster).await, cluster_bus(&cluster).await);
    let channel = blocking(|| cluster.channel_on(cluster.masters()[0], "c03_"));
    let (from, slot) = blocking(|| (cluster.owner(&channel), cluster.slot(&channel)));
    let to = blocking(|| cluster.masters().into_iter().find(|&m| m != from).unwrap());
    let log = recorder::<u64>(b.messages(), &channel);
    let mut events = b.events();
    ready(&b).await;

    let stop = Arc::new(AtomicBool::new(false));
    let poster = keep_posting(&a, &channel, stop.clone());
    wait_until("posts flow", DEADLINE, || snapshot(&log).len() >= 50).await;
    blocking(|| cluster.move_slot(slot, to));
    let to_address = format!("127.0.0.1:{}", cluster.nodes[to].port());
    let event = timeout(DEADLINE, async {
        loop {
            match next(&mut events).await {
                Some(BusEvent::Resubscribed { channel: c, to }) if c == channel => return to,
                Some(_) => {}
                None => panic!("events ended"),
            }
        }
    })
    .await
    .expect("no BusEvent::Resubscribed after the slot moved");
    assert_eq!(event, to_address, "subscribed again on the new owner");
    assert_eq!(blocking(|| cluster.shardnumsub(to, &channel)), 1);
    flows_again_then_accounted(
        &a,
        &b,
        &log,
        poster,
        &stop,
        "posts flow through the new owner",
    )
    .await;
}

/// C04: a master is killed while posts flow; its replica is promoted; subscriptions and
/// pending posts move to it, and every message is delivered once or reported missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c04_a_master_failover_moves_subscriptions_and_posts_to_the_promoted_replica() {
    let mut cluster = blocking(RedisCluster::start);
    let (a, b) = (cluster_bus(&cluster).await, cluster_bus(&cluster).await);
    let victim = blocking(|| cluster.masters()[0]);
    let channel = blocking(|| cluster.channel_on(victim, "c04_"));
    let log = recorder::<u64>(b.messages(), &channel);
    // A channel of another master, to see how long it waits while the victim fails over.
    let living = blocking(|| cluster.channel_on(cluster.masters()[1], "c04_living_"));
    let arrivals: Log<Instant> = Arc::default();
    let arrived = arrivals.clone();
    b.messages().add_listener(&living, move |_: &u64| {
        arrived.lock().unwrap().push(Instant::now());
    });
    ready(&b).await;

    let stop = Arc::new(AtomicBool::new(false));
    let poster = keep_posting(&a, &channel, stop.clone());
    let living_poster = keep_posting(&a, &living, stop.clone());
    wait_until("posts flow", DEADLINE, || snapshot(&log).len() >= 50).await;
    let killed = Instant::now();
    blocking(|| cluster.kill(victim));
    let promoted_after = killed.elapsed();
    let promoted = blocking(|| cluster.owner(&channel));
    assert_ne!(promoted, victim);
    let seen = snapshot(&log).len();
    wait_until("posts flow through the promoted replica", DEADLINE, || {
        snapshot(&log).len() >= seen + 50
    })
    .await;
    assert_eq!(blocking(|| cluster.shardnumsub(promoted, &channel)), 1);
    stop.store(true, SeqCst);
    let (sent, deliveries) = poster.await.unwrap();
    let (living_sent, living_deliveries) = living_poster.await.unwrap();
    for delivery in deliveries.into_iter().chain(living_deliveries) {
        delivered(delivery).await;
    }
    flush(&a).await;
    accounted(&b, &log, sent).await;
    wait_until("the living shard's posts all arrived", DEADLINE, || {
        snapshot(&arrivals).len() as u64 >= living_sent
    })
    .await;
    let longest = snapshot(&arrivals)
        .windows(2)
        .filter(|w| w[1] > killed)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    eprintln!(
        "failover: the replica took over after {promoted_after:?}; meanwhile the longest wait \
         between two messages of another master's channel (one posted every 2 ms) was {longest:?}"
    );
    shutdown(&a).await;
    shutdown(&b).await;
}

/// Sentinel: with a `redis-sentinel://` URL the bus follows a Sentinel failover (one master,
/// one replica, three sentinels; the master killed): delivery resumes on the promoted
/// replica by itself, and every message is delivered once or reported missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_a_failover_is_followed_and_losses_reported() {
    let mut sentinels = blocking(Sentinels::start);
    let url = sentinels.url();
    let a = build(Bus::builder().redis_url(&url)).await;
    let b = build(Bus::builder().redis_url(&url)).await;
    let channel = "sentinel_failover";
    let log = recorder::<u64>(b.messages(), channel);
    ready(&b).await;

    let stop = Arc::new(AtomicBool::new(false));
    let poster = keep_posting(&a, channel, stop.clone());
    wait_until("posts flow", DEADLINE, || snapshot(&log).len() >= 50).await;
    blocking(|| sentinels.kill_master());
    flows_again_then_accounted(
        &a,
        &b,
        &log,
        poster,
        &stop,
        "posts flow through the promoted replica",
    )
    .await;
}

/// C03 with a node added: a new master joins the cluster and a subscribed channel's slot is
/// rebalanced onto it; the bus connects to it, subscribes the channel there by itself, and
/// posts follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c03_a_slot_rebalanced_onto_an_added_node_is_followed() {
    let mut cluster = blocking(RedisCluster::start);
    let (a, b) = (cluster_bus(&cluster).await, cluster_bus(&cluster).await);
    let channel = blocking(|| cluster.channel_on(cluster.masters()[1], "c03_added_"));
    let slot = blocking(|| cluster.slot(&channel));
    let log = recorder::<u64>(b.messages(), &channel);
    let mut events = b.events();
    ready(&b).await;
    delivered(global(&a, &channel, 0u64)).await;
    wait_until("the first post arrived", DEADLINE, || snapshot(&log) == [0]).await;

    let added = blocking(|| cluster.add_node());
    blocking(|| cluster.move_slot(slot, added));
    let to = format!("127.0.0.1:{}", cluster.nodes[added].port());
    let before = timeout(DEADLINE, async {
        let mut before = Vec::new();
        loop {
            match next(&mut events).await {
                Some(BusEvent::Resubscribed { channel: c, to: t }) if c == channel && t == to => {
                    return before;
                }
                Some(event) => before.push(event),
                None => panic!("events ended"),
            }
        }
    })
    .await
    .expect("no BusEvent::Resubscribed naming the added node");
    // A node that joins is not a reconnect: nothing this bus had was lost.
    assert!(
        !before
            .iter()
            .any(|e| matches!(e, BusEvent::Disconnected | BusEvent::Reconnected)),
        "{before:?}"
    );
    assert_eq!(blocking(|| cluster.shardnumsub(added, &channel)), 1);
    for i in 1..=20u64 {
        global(&a, &channel, i);
    }
    flush(&a).await;
    wait_until("posts arrive through the added node", DEADLINE, || {
        snapshot(&log) == (0..=20).collect::<Vec<u64>>()
    })
    .await;
    assert!(blocking(|| ran(cluster.nodes[added].port(), "spublish")));
    shutdown(&a).await;
    shutdown(&b).await;
}

/// C01 with G07 and G08: while the whole cluster is down, posts are held up to
/// `outage_buffer` and refused with Backpressure past it; after the cluster is back every
/// channel is subscribed again without a call, `Reconnected` is emitted, and every message
/// is delivered once, in order, or reported missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c01_a_cluster_outage_holds_posts_and_restores_subscriptions() {
    let mut cluster = blocking(RedisCluster::start);
    let a = build(Bus::builder().redis_url(cluster.url()).outage_buffer(50)).await;
    let b = cluster_bus(&cluster).await;
    let channel = blocking(|| cluster.channel_on(cluster.masters()[2], "c01_outage_"));
    let log = recorder::<u64>(b.messages(), &channel);
    let mut events = b.events();
    ready(&b).await;
    for i in 0..5u64 {
        global(&a, &channel, i);
    }
    flush(&a).await;
    wait_until("the first posts arrived", DEADLINE, || {
        snapshot(&log).len() == 5
    })
    .await;

    blocking(|| cluster.stop_all());
    let mut sent = 5u64;
    let mut refused = false;
    for _ in 0..200 {
        match a
            .messages()
            .post_message(&channel, sent, MessageScope::Global)
        {
            Ok(_) => sent += 1,
            Err(PostError::Backpressure) => {
                refused = true;
                break;
            }
            Err(error) => panic!("post during the outage: {error}"),
        }
    }
    assert!(
        refused,
        "Backpressure once outage_buffer posts are held (G07)"
    );
    assert!(sent - 5 <= 50, "{} held, bound 50", sent - 5);

    blocking(|| cluster.restart_all());
    timeout(DEADLINE, async {
        loop {
            match next(&mut events).await {
                Some(BusEvent::Reconnected) => return,
                Some(_) => {}
                None => panic!("events ended"),
            }
        }
    })
    .await
    .expect("no BusEvent::Reconnected after the cluster came back (G08)");
    ready(&b).await;
    flush(&a).await;
    // One more, so that a gap at the end shows too.
    delivered(global(&a, &channel, sent)).await;
    sent += 1;
    accounted(&b, &log, sent).await;
    shutdown(&a).await;
    shutdown(&b).await;
}

/// C01 with G10 and G11: namespaces keep applications apart on a cluster (the slot is the
/// namespaced name's), and the Serverpod format travels as one SPUBLISH per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c01_namespaces_and_the_serverpod_format_hold_on_a_cluster() {
    let cluster = blocking(RedisCluster::start);
    let app = |namespace: &str, format: WireFormat| {
        Bus::builder()
            .redis_url(cluster.url())
            .namespace(namespace)
            .wire_format(format)
    };
    let a1 = build(app("app1:", WireFormat::Serverpod)).await;
    let b1 = build(app("app1:", WireFormat::Serverpod)).await;
    let b2 = build(app("app2:", WireFormat::Serverpod)).await;
    let channels: Vec<String> = (0..6).map(|i| format!("c01_ns_{i}")).collect();
    let mut logs = Vec::new();
    for channel in &channels {
        logs.push((
            recorder::<u64>(b1.messages(), channel),
            recorder::<u64>(b2.messages(), channel),
        ));
    }
    ready(&b1).await;
    ready(&b2).await;
    blocking(|| {
        for channel in &channels {
            let owner = cluster.owner(&format!("app1:{channel}"));
            assert_eq!(cluster.shardnumsub(owner, &format!("app1:{channel}")), 1);
        }
    });
    for (i, channel) in channels.iter().enumerate() {
        for n in 0..10u64 {
            global(&a1, channel, 100 * i as u64 + n);
        }
    }
    flush(&a1).await;
    for (i, (same, other)) in logs.iter().enumerate() {
        let expected: Vec<u64> = (0..10).map(|n| 100 * i as u64 + n).collect();
        wait_until("app1 received its messages in order", DEADLINE, || {
            snapshot(same) == expected
        })
        .await;
        assert!(snapshot(other).is_empty(), "app2 saw app1's messages");
    }
    assert_eq!(b1.stats().global_decode_errors, 0);
    for bus in [&a1, &b1, &b2] {
        shutdown(bus).await;
    }
}

/// G04 on a cluster, where a batch of channels is `SSUBSCRIBE`d many at once: a channel the
/// ACL forbids, in the middle of 200 allowed ones spread over every master, is reported
/// (`subscriptions_ready` names it, `BusEvent::SubscribeRefused`), and holds up none of the
/// others: each is subscribed once, on its owner, and receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c01_a_channel_the_acl_forbids_among_many_is_reported_and_holds_up_nothing() {
    const ALLOWED: usize = 200;
    let cluster = blocking(RedisCluster::start);
    let url = blocking(|| limited_user(&cluster, "&ok:*"));
    let bus = build(Bus::builder().redis_url(url)).await;
    let poster = cluster_bus(&cluster).await;
    let mut events = bus.events();
    let channels: Vec<String> = (0..ALLOWED).map(|i| format!("ok:{i}")).collect();
    let (first, rest) = channels.split_at(ALLOWED / 2);
    let mut logs: Vec<Log<u64>> = first
        .iter()
        .map(|c| recorder::<u64>(bus.messages(), c))
        .collect();
    let session = bus.session();
    session
        .messages()
        .add_listener("bad:x", |_: &u64| panic!("nothing can arrive on bad:x"));
    logs.extend(rest.iter().map(|c| recorder::<u64>(bus.messages(), c)));
    let error = timeout(DEADLINE, bus.subscriptions_ready())
        .await
        .expect("subscriptions_ready returns promptly")
        .expect_err("bad:x was refused");
    assert!(
        matches!(&error, evbus::BusError::SubscribeRefused { channel, reason }
            if channel == "bad:x" && reason.contains("NOPERM")),
        "{error:?}"
    );
    timeout(DEADLINE, async {
        loop {
            match next(&mut events).await {
                Some(BusEvent::SubscribeRefused { channel, .. }) => {
                    return assert_eq!(channel, "bad:x")
                }
                Some(_) => {}
                None => panic!("events ended"),
            }
        }
    })
    .await
    .expect("no BusEvent::SubscribeRefused");
    blocking(|| {
        let mut subscribed: Vec<String> = cluster
            .masters()
            .into_iter()
            .flat_map(|m| {
                let out = cluster.nodes[m].cli(&["PUBSUB", "SHARDCHANNELS", "ok:*"]);
                out.lines()
                    .map(|l| l.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .filter(|l| !l.is_empty())
            .collect();
        subscribed.sort();
        let mut expected = channels.clone();
        expected.sort();
        assert_eq!(
            subscribed, expected,
            "every allowed channel, once, on its owner"
        );
    });
    for (i, channel) in channels.iter().enumerate() {
        global(&poster, channel, i as u64);
    }
    flush(&poster).await;
    wait_until("every allowed channel received", DEADLINE, || {
        logs.iter()
            .enumerate()
            .all(|(i, log)| snapshot(log) == [i as u64])
    })
    .await;
    // Once the refused channel has no receivers, the bus is ready again.
    drop(session);
    ready(&bus).await;
    shutdown(&poster).await;
}

/// A measurement, not a rule: how long a bus takes to subscribe 10,000 channels on a
/// three-master cluster, at first and again after Redis closed its subscriber connections
/// (the restore after a reconnect, G08). Run by hand, in release:
/// `cargo test --release --test cluster -- --ignored --nocapture resubscribing`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn resubscribing_ten_thousand_channels_after_a_reconnect() {
    resubscribe_ten_thousand(false).await;
}

/// The same with one more channel that the bus's ACL user may not subscribe: it is found
/// and reported without holding up the 10,000 (G04).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn resubscribing_ten_thousand_channels_and_one_refused_after_a_reconnect() {
    resubscribe_ten_thousand(true).await;
}

async fn resubscribe_ten_thousand(with_refused: bool) {
    const N: usize = 10_000;
    const LIMIT: Duration = Duration::from_secs(600);
    let cluster = blocking(RedisCluster::start);
    let url = blocking(|| limited_user(&cluster, "&resub_*"));
    let bus = build(Bus::builder().redis_url(url)).await;
    let masters = blocking(|| cluster.masters());
    let subscribed = || -> usize {
        masters
            .iter()
            .map(|&m| {
                let out = cluster.nodes[m].cli(&["PUBSUB", "SHARDCHANNELS", "resub_*"]);
                out.lines().filter(|l| !l.trim().is_empty()).count()
            })
            .sum()
    };
    for i in 0..N {
        bus.messages()
            .add_listener(&format!("resub_{i}"), |_: &u64| {});
        if with_refused && i == N / 2 {
            bus.messages().add_listener("bad:x", |_: &u64| {});
        }
    }
    let ready = |result: Result<(), evbus::BusError>| match result {
        Err(evbus::BusError::SubscribeRefused { channel, .. }) if with_refused => {
            assert_eq!(channel, "bad:x");
        }
        other => other.expect("the subscription failed"),
    };
    let mut events = bus.events();
    let started = Instant::now();
    ready(
        timeout(LIMIT, bus.subscriptions_ready())
            .await
            .expect("the first subscription timed out"),
    );
    let first = started.elapsed();
    assert_eq!(blocking(subscribed), N, "every channel subscribed once");

    let killed = Instant::now();
    blocking(|| {
        for &m in &masters {
            cluster.nodes[m].cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        }
    });
    timeout(LIMIT, async {
        loop {
            match next(&mut events).await {
                Some(BusEvent::Reconnected) => return,
                Some(_) => {}
                None => panic!("events ended"),
            }
        }
    })
    .await
    .expect("no BusEvent::Reconnected after the subscriber connections were closed");
    let again = killed.elapsed();
    assert_eq!(blocking(subscribed), N, "every channel subscribed again");
    println!(
        "{N} channels{} on {} masters: first subscription {first:?}, \
         restore after a reconnect {again:?}",
        if with_refused { " and one refused" } else { "" },
        masters.len()
    );
    shutdown(&bus).await;
}

/// C04 without a replica (`--cluster-require-full-coverage no`): a master with no replica
/// dies. Posts to the other masters' channels keep being delivered, in order, none missed;
/// posts to the dead master's channel are held up to `outage_buffer`, then fail with
/// `Backpressure`; shutdown names the held ones. Nothing is lost silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c04_a_lost_shard_without_replica_backpressures_its_own_channels_only() {
    const HELD: u64 = 50;
    let mut cluster =
        blocking(|| RedisCluster::start_with(3, 0, &["--cluster-require-full-coverage", "no"]));
    let a = build(
        Bus::builder()
            .redis_url(cluster.url())
            .outage_buffer(HELD as usize),
    )
    .await;
    let b = cluster_bus(&cluster).await;
    let channels = blocking(|| channel_per_master(&cluster, "c04_lost_"));
    let logs: Vec<Log<u64>> = channels
        .iter()
        .map(|(_, channel)| recorder::<u64>(b.messages(), channel))
        .collect();
    ready(&b).await;
    let (dead, dead_channel) = channels[0].clone();
    blocking(|| cluster.nodes[dead].stop());
    let killed = Instant::now();
    let mut sent = vec![0u64; channels.len()];
    let mut refused = 0u64;
    // Round after round on every channel, past the point where the dead shard's budget is
    // full.
    for round in 0..400u64 {
        for (i, (_, channel)) in channels.iter().enumerate() {
            match a
                .messages()
                .post_message(channel, sent[i], MessageScope::Global)
            {
                Ok(_) => sent[i] += 1,
                Err(PostError::Backpressure) if *channel == dead_channel => refused += 1,
                Err(error) => panic!("post {round} on {channel}: {error}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(refused > 0, "the dead shard's posts get Backpressure");
    assert_eq!(sent[0], HELD, "the dead shard held its outage_buffer");
    for (i, (_, channel)) in channels.iter().enumerate().skip(1) {
        assert_eq!(sent[i], 400, "{channel}: a living shard refused nothing");
        wait_until(
            &format!("the living shard's {channel} got every post"),
            DEADLINE,
            || snapshot(&logs[i]).len() as u64 >= sent[i],
        )
        .await;
        assert_eq!(
            snapshot(&logs[i]),
            (0..sent[i]).collect::<Vec<_>>(),
            "{channel}: in order, once"
        );
    }
    assert_eq!(
        b.stats().global_missed,
        0,
        "nothing missed on the living shards"
    );
    eprintln!(
        "one of three masters dead: the living shards delivered {:?} posts within {:?}; \
         the dead one held {} and refused {refused}",
        &sent[1..],
        killed.elapsed(),
        sent[0]
    );
    // The held posts are not lost silently either: shutdown names them.
    let error = timeout(DEADLINE, a.shutdown())
        .await
        .expect("shutdown is bounded")
        .expect_err("the dead shard's posts were never acknowledged");
    assert!(
        error.to_string().contains(&format!("{HELD} global posts")),
        "{error}"
    );
    shutdown(&b).await;
}
