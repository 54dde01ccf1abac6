//! What a slow listener and large messages cost: bounded memory on both sides of Redis, and
//! a blocked listener that holds up only its own channels. Each test starts its own
//! `redis-server`; every wait is on a condition with a generous deadline.

mod support;

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};

use evbus::{Bus, MessageScope, PostError};
use support::bus::{build, flush, global, ready, redis_bus, wait_until, DEADLINE};
use support::redis::RedisServer;

/// A gate a listener waits at until the test opens it.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

/// The dispatch thread of a channel, as `evbus` documents it (`src/redis/dispatch.rs`):
/// FNV-1a of the Redis channel's bytes, modulo 4.
fn worker_of(channel: &str) -> u64 {
    let hash = channel
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    hash % 4
}

/// Posts `posts` messages of 1 kB on `channel`, one frame each, while `receiver`'s listener
/// waits at `gate`; once some were dropped at the receive bound, opens the gate and waits
/// until what the listener `got` and what was counted missed add up to what was posted.
async fn flood_past_the_bound(
    poster: &Bus,
    receiver: &Bus,
    channel: &str,
    posts: u64,
    gate: &Gate,
    got: &AtomicU64,
) {
    for _ in 0..posts {
        global(poster, channel, "z".repeat(1000))
            .await
            .expect("acknowledged");
    }
    flush(poster).await;
    wait_until("some frames were dropped at the bound", DEADLINE, || {
        receiver.stats().global_missed > 0
    })
    .await;
    gate.open();
    wait_until("received + missed == posted", DEADLINE, || {
        got.load(SeqCst) + receiver.stats().global_missed == posts
    })
    .await;
}

/// Four 500 KB posts a thread, with Redis down, used to grow to the OOM killer: the publish
/// queue held `outage_buffer` posts of any size. Now it holds at most
/// `outage_buffer_bytes`, and past it posting fails with `Backpressure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g07_held_posts_are_bounded_in_bytes() {
    const BOUND: usize = 4 << 20;
    let mut server = RedisServer::start();
    let bus = build(
        Bus::builder()
            .redis_url(server.url())
            .outage_buffer_bytes(BOUND),
    )
    .await;
    server.stop();
    let payload = "x".repeat(500_000);
    let mut accepted = 0usize;
    let refused = loop {
        match bus
            .messages()
            .post_message("big", payload.clone(), MessageScope::Global)
        {
            Ok(_) => accepted += 1,
            Err(error) => break error,
        }
        assert!(accepted <= 100, "100 posts of 500 KB were held");
    };
    assert_eq!(refused, PostError::Backpressure);
    // Each post is its 500,000 bytes and a few of framing: as many as fit the bound.
    assert_eq!(accepted, BOUND / 500_016, "{:?}", bus.stats());
    assert_eq!(bus.stats().global_buffered, accepted as u64);
}

/// One listener that blocks used to stall every channel's global deliveries (one reader
/// task). Now it holds up only the channels of its own dispatch thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_listener_holds_up_only_its_own_dispatch_thread() {
    let server = RedisServer::start();
    let bus = redis_bus(&server).await;
    let gate = Arc::new(Gate::default());
    let blocked = gate.clone();
    let entered = Arc::new(AtomicU64::new(0));
    let entered_by_listener = entered.clone();
    bus.messages().add_listener("slow", move |_: &u64| {
        entered_by_listener.fetch_add(1, SeqCst);
        blocked.wait();
    });
    // Channels on the other three dispatch threads.
    let fast: Vec<String> = (0..)
        .map(|n| format!("fast-{n}"))
        .filter(|name| worker_of(name) != worker_of("slow"))
        .take(12)
        .collect();
    let received = Arc::new(AtomicU64::new(0));
    for name in &fast {
        let received = received.clone();
        bus.messages().add_listener(name, move |_: &u64| {
            received.fetch_add(1, SeqCst);
        });
    }
    ready(&bus).await;
    global(&bus, "slow", 0u64);
    wait_until("the slow listener is blocked", DEADLINE, || {
        entered.load(SeqCst) == 1
    })
    .await;
    for name in &fast {
        global(&bus, name, 1u64);
    }
    wait_until(
        "every other channel delivered while it blocks",
        DEADLINE,
        || received.load(SeqCst) == fast.len() as u64,
    )
    .await;
    gate.open();
    bus.shutdown().await.expect("shutdown");
}

/// Behind a blocked listener, what Redis delivers waits in memory bounded by
/// `receive_buffer_bytes`; what passes it is dropped and counted missed, so received +
/// missed == posted still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g06_received_messages_are_bounded_in_bytes_and_losses_counted() {
    let server = RedisServer::start();
    let receiver = build(
        Bus::builder()
            .redis_url(server.url())
            .receive_buffer_bytes(16 << 10),
    )
    .await;
    let poster = redis_bus(&server).await;
    let gate = Arc::new(Gate::default());
    let blocked = gate.clone();
    let got = Arc::new(AtomicU64::new(0));
    let counted = got.clone();
    receiver
        .messages()
        .add_listener("flood", move |_: &String| {
            blocked.wait();
            counted.fetch_add(1, SeqCst);
        });
    ready(&receiver).await;
    const POSTS: u64 = 200;
    flood_past_the_bound(&poster, &receiver, "flood", POSTS, &gate, &got).await;
    let stats = receiver.stats();
    assert!(got.load(SeqCst) < POSTS, "{stats:?}");
    assert_eq!(
        stats.global_received + stats.global_missed,
        POSTS,
        "{stats:?}"
    );
}

/// A new origin's frames wait behind a blocked listener of another channel of the same
/// dispatch thread, and some are dropped at the bound before the first is read: the dropped
/// ones are counted, once, and nothing read afterwards is taken for a duplicate or a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g06_losses_at_the_start_of_an_origins_stream_are_counted() {
    let server = RedisServer::start();
    let receiver = build(
        Bus::builder()
            .redis_url(server.url())
            .receive_buffer_bytes(16 << 10),
    )
    .await;
    let blocker = (0..)
        .map(|n| format!("blocker-{n}"))
        .find(|name| worker_of(name) == worker_of("origin"))
        .unwrap();
    let gate = Arc::new(Gate::default());
    let blocked = gate.clone();
    let entered = Arc::new(AtomicU64::new(0));
    let entering = entered.clone();
    receiver.messages().add_listener(&blocker, move |_: &u64| {
        entering.fetch_add(1, SeqCst);
        blocked.wait();
    });
    let got = Arc::new(AtomicU64::new(0));
    let counted = got.clone();
    receiver
        .messages()
        .add_listener("origin", move |_: &String| {
            counted.fetch_add(1, SeqCst);
        });
    ready(&receiver).await;
    let other = redis_bus(&server).await;
    global(&other, &blocker, 0u64).await.expect("acknowledged");
    wait_until("the dispatch thread is blocked", DEADLINE, || {
        entered.load(SeqCst) == 1
    })
    .await;
    // A bus that never posted before: a new origin for the receiver.
    let poster = redis_bus(&server).await;
    const POSTS: u64 = 100;
    flood_past_the_bound(&poster, &receiver, "origin", POSTS, &gate, &got).await;
    let stats = receiver.stats();
    assert_eq!(stats.global_duplicates, 0, "{stats:?}");
    assert_eq!(got.load(SeqCst) + stats.global_missed, POSTS, "{stats:?}");
}
