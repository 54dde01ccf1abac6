//! `rediss-cluster://`: buses talk to a Redis Cluster over TLS (the `tls` feature). Run by CI as
//! `cargo test --features tls --test cluster_tls`; without the feature this file is empty.
//!
//! The test starts a six-node cluster (three masters, three replicas) whose nodes listen with
//! TLS, talk to each other and to their replicas over TLS, and name their TLS ports to TLS
//! clients (`RedisCluster::start_tls` in tests/support/cluster.rs, which makes its own
//! certificate authority with `openssl`). It points rustls at that authority through
//! `SSL_CERT_FILE` (this test binary holds only this test, so setting it is safe), and checks
//! the wire with redis-cli on the nodes' plain ports.
#![cfg(feature = "tls")]

mod support;

use evbus::{Bus, BusEvent};
use support::bus::{
    blocking, build, flush, global, next, ready, recorder, shutdown, snapshot, wait_until, Log,
    DEADLINE,
};
use support::cluster::{ran, RedisCluster};
use tokio::time::timeout;

/// Messages each bus posts on each channel.
const N: u64 = 100;

/// C01 to C03 over TLS: two buses exchange global messages through sharded pub/sub, on one
/// channel per master, each `SSUBSCRIBE`d on its owner only and posted with `SPUBLISH`; every
/// message arrives once and in post order; every connection of the buses is on a TLS port;
/// and a slot that moves is followed over TLS too (the slot table read again, the new
/// owner's TLS port named).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c01_to_c03_buses_exchange_global_messages_over_tls_on_every_master() {
    let cluster = blocking(RedisCluster::start_tls);
    std::env::set_var("SSL_CERT_FILE", cluster.ca_file());
    let url = cluster.url();
    assert!(url.starts_with("rediss-cluster://"), "{url}");
    let a = build(Bus::builder().redis_url(&url)).await;
    let b = build(Bus::builder().redis_url(&url)).await;
    let channels: Vec<(usize, String)> = blocking(|| {
        cluster
            .masters()
            .into_iter()
            .map(|m| (m, cluster.channel_on(m, &format!("tls_{m}_"))))
            .collect()
    });
    assert_eq!(channels.len(), 3, "three masters");
    let logs: Vec<(Log<u64>, Log<u64>)> = channels
        .iter()
        .map(|(_, channel)| {
            (
                recorder::<u64>(a.messages(), channel),
                recorder::<u64>(b.messages(), channel),
            )
        })
        .collect();
    let mut events = b.events();
    ready(&a).await;
    ready(&b).await;
    blocking(|| {
        for (owner, channel) in &channels {
            assert_eq!(
                cluster.shardnumsub(*owner, channel),
                2,
                "{channel}: both buses SSUBSCRIBEd on its owner"
            );
            for other in cluster.masters().into_iter().filter(|m| m != owner) {
                assert_eq!(
                    cluster.shardnumsub(other, channel),
                    0,
                    "{channel} elsewhere"
                );
            }
            assert_eq!(
                cluster.numsub_everywhere(channel),
                0,
                "no classic SUBSCRIBE"
            );
        }
    });

    for i in 0..N {
        for (_, channel) in &channels {
            global(&a, channel, i);
            global(&b, channel, 1000 + i);
        }
    }
    flush(&a).await;
    flush(&b).await;
    let expected = |log: &Log<u64>| {
        let got = snapshot(log);
        let from = |start: u64| -> Vec<u64> {
            got.iter()
                .copied()
                .filter(|m| (start..start + N).contains(m))
                .collect()
        };
        got.len() as u64 == 2 * N
            && from(0) == (0..N).collect::<Vec<_>>()
            && from(1000) == (1000..1000 + N).collect::<Vec<_>>()
    };
    for ((_, channel), (on_a, on_b)) in channels.iter().zip(&logs) {
        wait_until(
            &format!("both buses received every message on {channel} once, in post order"),
            DEADLINE,
            || expected(on_a) && expected(on_b),
        )
        .await;
    }
    for bus in [&a, &b] {
        let stats = bus.stats();
        assert_eq!(
            (stats.global_missed, stats.global_decode_errors),
            (0, 0),
            "nothing missed or refused"
        );
    }

    // The buses' connections (publisher and subscriber, one each per master) are all on
    // the TLS ports; on a plain port there is only the redis-cli that asks.
    blocking(|| {
        for (owner, _) in &channels {
            let (plain, tls) = (cluster.nodes[*owner].port(), cluster.tls_port(*owner));
            let on = |port: u16| format!(" laddr=127.0.0.1:{port} ");
            let pubsub = cluster.nodes[*owner].cli(&["CLIENT", "LIST", "TYPE", "pubsub"]);
            assert_eq!(pubsub.matches(&on(tls)).count(), 2, "{pubsub}");
            assert_eq!(pubsub.matches(&on(plain)).count(), 0, "{pubsub}");
            let normal = cluster.nodes[*owner].cli(&["CLIENT", "LIST", "TYPE", "normal"]);
            assert!(normal.matches(&on(tls)).count() >= 2, "{normal}");
            assert_eq!(normal.matches(&on(plain)).count(), 1, "{normal}");
            assert!(
                ran(plain, "spublish") && !ran(plain, "publish"),
                "SPUBLISH only"
            );
        }
    });

    // C03: the first channel's slot moves to the next master; b subscribes it there again,
    // over TLS, and says so naming that master's TLS port.
    let ((from, channel), (on_a, on_b)) = (&channels[0], &logs[0]);
    let to = channels[1].0;
    blocking(|| cluster.move_slot(cluster.slot(channel), to));
    let to_address = format!("127.0.0.1:{}", cluster.tls_port(to));
    let moved_to = timeout(DEADLINE, async {
        loop {
            match next(&mut events).await {
                Some(BusEvent::Resubscribed { channel: c, to }) if c == *channel => return to,
                Some(_) => {}
                None => panic!("events ended"),
            }
        }
    })
    .await
    .expect("no BusEvent::Resubscribed after the slot moved");
    assert_eq!(moved_to, to_address, "subscribed again on the new owner");
    wait_until("a subscribed on the new owner too", DEADLINE, || {
        blocking(|| cluster.shardnumsub(to, channel)) == 2
    })
    .await;
    assert_eq!(blocking(|| cluster.shardnumsub(*from, channel)), 0);
    for i in N..2 * N {
        global(&a, channel, i);
    }
    flush(&a).await;
    wait_until("posts arrive through the new owner", DEADLINE, || {
        let from_a = |log: &Log<u64>| snapshot(log).into_iter().filter(|m| *m < 1000).count();
        from_a(on_a) as u64 == 2 * N && from_a(on_b) as u64 == 2 * N
    })
    .await;
    shutdown(&a).await;
    shutdown(&b).await;
}
