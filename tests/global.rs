//! One test per global rule of the behaviour contract (`evbus::docs::guarantees`, G03 to G12 and
//! R01 to R03 over Redis), named after it. The rules about a bus without Redis (G01, G02, and
//! the local side of R01 to R03) are in `tests/rules.rs`.
//!
//! Every test starts its own `redis-server` (tests/support/redis.rs) on a free loopback port,
//! so it can kill and restart it; without redis-server installed every test fails, naming the
//! package to install. Everything waits on conditions with generous deadlines, never on fixed
//! sleeps: the machine is a busy 2-core one.

mod support;

use std::future::{Future, IntoFuture};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use evbus::{
    revoked_authentication_channel, Bus, BusEvent, BusEvents, Delivery, MessageScope, PostError,
    RevokedAuthentication, WireFormat,
};
use futures_core::Stream;
use serde::{Deserialize, Serialize};
use support::bus::{
    blocking, build, delivered, eventually, flush, global, next, ready, recorder, redis_bus,
    shutdown, snapshot, stats_until, wait_until, Log, DEADLINE,
};
use support::redis::{numsub, RawSubscriber, RedisServer};
use support::wire::string_frame;
use tokio::time::timeout;

/// How long a RawSubscriber waits for one more payload once the expected ones have come.
const QUIET: Duration = Duration::from_millis(500);
/// `shutdown()` must return within this, even with Redis down (G12).
const SHUTDOWN_BOUND: Duration = Duration::from_secs(15);

/// Serverpod's test model (reference/serverpod-wire-format.md).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct SimpleData {
    num: i64,
}

// ---- helpers --------------------------------------------------------------------------------

/// Polls a Delivery's future once: what it holds right now. Unconstrained, so tokio's
/// cooperative budget (which makes a resource return Pending after a task polled 128 of them
/// without yielding) does not turn a settled Delivery into Pending.
fn poll_once(delivery: Delivery) -> Poll<Result<(), PostError>> {
    let future = pin!(tokio::task::unconstrained(delivery.into_future()));
    future.poll(&mut Context::from_waker(Waker::noop()))
}

/// The next item of `stream`; panics if it ends or nothing comes within the deadline.
async fn next_within<S: Stream + Unpin>(stream: &mut S, what: &str) -> S::Item {
    match timeout(DEADLINE, next(stream)).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("{what}: the stream ended"),
        Err(_) => panic!("{what}: nothing within {DEADLINE:?}"),
    }
}

/// Whether `stream` ends (after yielding whatever it still holds) within the deadline.
async fn ends<S: Stream + Unpin>(stream: &mut S) -> bool {
    timeout(DEADLINE, async { while next(stream).await.is_some() {} })
        .await
        .is_ok()
}

/// Reads `events` until one matches; panics with what it saw otherwise.
async fn wait_event(
    events: &mut BusEvents,
    what: &str,
    matches: impl Fn(&BusEvent) -> bool,
) -> BusEvent {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, next(events)).await {
            Ok(Some(event)) if matches(&event) => return event,
            Ok(Some(event)) => seen.push(event),
            Ok(None) => panic!("waiting for {what}: the events ended; saw {seen:?}"),
            Err(_) => panic!("waiting for {what}: not within {DEADLINE:?}; saw {seen:?}"),
        }
    }
}

fn is_disconnected(event: &BusEvent) -> bool {
    matches!(event, BusEvent::Disconnected)
}

fn is_reconnected(event: &BusEvent) -> bool {
    matches!(event, BusEvent::Reconnected)
}

/// Every payload `subscriber` receives until none came for [`QUIET`].
/// Repair's announcements (`EVC`, K04), which an origin publishes on a channel once it is
/// quiet, are left out: these are the messages.
fn raw_payloads(subscriber: &mut RawSubscriber) -> Vec<(String, Vec<u8>)> {
    blocking(|| {
        std::iter::from_fn(|| subscriber.next_message(QUIET))
            .filter(|(_, payload)| !payload.starts_with(b"EVC"))
            .collect()
    })
}

/// The next payload `subscriber` receives; panics if none comes within the deadline.
fn raw_payload(subscriber: &mut RawSubscriber) -> (String, Vec<u8>) {
    blocking(|| subscriber.next_message(DEADLINE)).expect("no payload on the raw subscriber")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic noise (xorshift), for payloads that must not decode.
fn noise(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

// ---- G. Global delivery through Redis --------------------------------------------------------

/// Counts decodes, to prove each bus decodes a message once per listener type (G03).
#[derive(Debug)]
struct DecodeCounted(u64);
static DECODED: AtomicUsize = AtomicUsize::new(0);
impl Serialize for DecodeCounted {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}
impl<'de> Deserialize<'de> for DecodeCounted {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        DECODED.fetch_add(1, SeqCst);
        u64::deserialize(d).map(DecodeCounted)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g03_global_post_reaches_every_subscribed_bus_only_through_redis() {
    let server = RedisServer::start();
    let (a, b, c) = (
        redis_bus(&server).await,
        redis_bus(&server).await,
        redis_bus(&server).await,
    );
    assert!(a.has_redis());
    // The posting bus a: three listeners (recording their thread) and a stream; b: two
    // listeners and a stream; c: nothing on the channel.
    let calls = Arc::new(AtomicUsize::new(0));
    let threads = Arc::new(Mutex::new(Vec::new()));
    for bus in [&a, &a, &a, &b, &b] {
        let (calls, threads) = (calls.clone(), threads.clone());
        bus.messages()
            .add_listener("g03", move |m: &DecodeCounted| {
                assert_eq!(m.0, 7);
                threads.lock().unwrap().push(thread::current().id());
                calls.fetch_add(1, SeqCst);
            });
    }
    let mut a_stream = a.messages().create_stream::<DecodeCounted>("g03");
    let mut b_stream = b.messages().create_stream::<DecodeCounted>("g03");
    ready(&a).await;
    ready(&b).await;
    let mut raw = blocking(|| RawSubscriber::connect(&server, &["g03"]));

    // Posted from a thread of its own, which then ends: a listener that ran synchronously
    // would have run there.
    let poster = {
        let a = a.clone();
        thread::spawn(move || {
            let delivery = global(&a, "g03", DecodeCounted(7));
            (delivery, thread::current().id())
        })
    };
    let (delivery, poster_thread) = poster.join().unwrap();
    delivered(delivery).await;

    wait_until("five listeners ran", DEADLINE, || calls.load(SeqCst) == 5).await;
    assert_eq!(next_within(&mut a_stream, "a's stream").await.0, 7);
    assert_eq!(next_within(&mut b_stream, "b's stream").await.0, 7);
    assert!(
        !threads.lock().unwrap().contains(&poster_thread),
        "no listener ran on the posting thread"
    );
    // It went through Redis: one PUBLISH, and each subscribed bus, the poster included,
    // received it from there.
    let payloads = raw_payloads(&mut raw);
    assert_eq!(payloads.len(), 1, "one payload on Redis");
    assert_eq!(payloads[0].0, "g03");
    assert_eq!(a.stats().global_received, 1, "{:?}", a.stats());
    assert_eq!(b.stats().global_received, 1, "{:?}", b.stats());
    assert_eq!(c.stats().global_received, 0, "c is not subscribed");
    assert_eq!(a.stats().global_posted, 1);
    // a and b each decoded once, for four receivers of one type each.
    assert_eq!(
        DECODED.load(SeqCst),
        2,
        "one decode per bus and listener type"
    );
    // Auto is Global on a bus with Redis (G02): again nothing synchronous, and it comes back.
    let auto = a
        .messages()
        .post_message("g03", DecodeCounted(7), MessageScope::Auto)
        .unwrap();
    assert_eq!((auto.local_receivers(), auto.is_global()), (0, true));
    delivered(auto).await;
    wait_until("the Auto post came back", DEADLINE, || {
        calls.load(SeqCst) == 10
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g04_subscribe_on_first_receiver_unsubscribe_on_last_and_ready_means_received() {
    let server = RedisServer::start();
    let (a, b) = (redis_bus(&server).await, redis_bus(&server).await);
    assert_eq!(numsub(&server, "g04"), 0);

    // First receiver of a channel: SUBSCRIBE, confirmed when subscriptions_ready returns.
    let id = a.messages().add_listener("g04", |_: &u64| {});
    ready(&a).await;
    assert_eq!(numsub(&server, "g04"), 1);
    // More receivers on the same bus: still one subscription.
    let stream = a.messages().create_stream::<u64>("g04");
    let session = a.session();
    session.messages().add_listener("g04", |_: &u64| {});
    ready(&a).await;
    assert_eq!(numsub(&server, "g04"), 1);
    b.messages().add_listener("g04", |_: &u64| {});
    ready(&b).await;
    assert_eq!(numsub(&server, "g04"), 2);

    // Serverpod issue 5248: a post made right after subscriptions_ready, from any bus, is
    // received. Fresh channels each round, so each waits on its own SUBSCRIBE. First a raw
    // PUBLISH at once (Redis says how many subscribers it reached: b must be one of them; b
    // refuses the bytes as undecodable), then a post through evbus.
    for round in 0..20u64 {
        let channel = format!("g04_race_{round}");
        let got = recorder::<u64>(b.messages(), &channel);
        ready(&b).await;
        assert_eq!(
            server.publish_raw(&channel, b"probe"),
            1,
            "round {round}: a PUBLISH right after subscriptions_ready() returned reached no \
             subscriber: Redis had not applied b's SUBSCRIBE of {channel} yet"
        );
        let poster = if round % 2 == 0 { &a } else { &b };
        delivered(global(poster, &channel, round)).await;
        let received = timeout(DEADLINE, async {
            while snapshot(&got) != [round] {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            received.is_ok(),
            "round {round}: the post made after subscriptions_ready was not received; \
             Redis has {} subscriber(s) of {channel}; b: {:?}; a: {:?}",
            numsub(&server, &channel),
            b.stats(),
            a.stats()
        );
    }

    // UNSUBSCRIBE only when the last receiver of the bus goes.
    assert!(a.messages().remove_listener("g04", id));
    drop(stream);
    ready(&a).await;
    assert_eq!(numsub(&server, "g04"), 2, "a's session still listens");
    session.close();
    wait_until("a unsubscribed", DEADLINE, || numsub(&server, "g04") == 1).await;
    // And subscribes again with a new first receiver.
    let again = recorder::<u64>(a.messages(), "g04");
    ready(&a).await;
    assert_eq!(numsub(&server, "g04"), 2);
    delivered(global(&b, "g04", 99u64)).await;
    wait_until("a receives again", DEADLINE, || snapshot(&again) == [99]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g05_posts_are_batched_under_load_and_a_lone_post_leaves_at_once() {
    const POSTS: u64 = 10_000;
    let server = RedisServer::start();
    let (a, b) = (redis_bus(&server).await, redis_bus(&server).await);
    let got = recorder::<u64>(b.messages(), "g05");
    ready(&b).await;
    let before = a.stats();

    for i in 0..POSTS {
        global(&a, "g05", i);
    }
    flush(&a).await;
    let after = a.stats();
    let batches = after.global_batches - before.global_batches;
    assert_eq!(after.global_posted - before.global_posted, POSTS);
    assert!(batches >= 1, "{after:?}");
    assert!(
        batches < POSTS / 10,
        "{POSTS} posts in a tight loop took {batches} pipelined writes"
    );
    wait_until("b received every post", DEADLINE, || {
        got.lock().unwrap().len() as u64 == POSTS
    })
    .await;
    assert_eq!(snapshot(&got), (0..POSTS).collect::<Vec<_>>(), "in order");
    let received = b.stats();
    assert_eq!(
        (received.global_missed, received.global_duplicates),
        (0, 0),
        "{received:?}"
    );

    // A lone post after idle leaves at once, in one write of its own (no timer to wait for).
    let idle = a.stats().global_batches;
    let started = Instant::now();
    delivered(global(&a, "g05", POSTS)).await;
    wait_until("the lone post arrived", DEADLINE, || {
        snapshot(&got).last() == Some(&POSTS)
    })
    .await;
    println!("a lone post arrived after {:?}", started.elapsed());
    assert_eq!(a.stats().global_batches, idle + 1);

    // Native frames carry several messages of a channel: a burst needs fewer PUBLISHes than
    // messages, and none of them exceeds max_message_bytes.
    let small = build(
        Bus::builder()
            .redis_url(server.url())
            .max_message_bytes(4096),
    )
    .await;
    let strings = recorder::<String>(b.messages(), "g05_burst");
    ready(&b).await;
    let mut raw = blocking(|| RawSubscriber::connect(&server, &["g05_burst"]));
    let text = "x".repeat(100);
    for i in 0..1000 {
        global(&small, "g05_burst", format!("{i:04}{text}"));
    }
    flush(&small).await;
    wait_until("b received the burst", DEADLINE, || {
        strings.lock().unwrap().len() == 1000
    })
    .await;
    let expected: Vec<String> = (0..1000).map(|i| format!("{i:04}{text}")).collect();
    assert_eq!(snapshot(&strings), expected);
    let payloads = raw_payloads(&mut raw);
    assert!(
        payloads.len() < 1000,
        "1000 messages took {} PUBLISHes",
        payloads.len()
    );
    let largest = payloads.iter().map(|(_, p)| p.len()).max().unwrap();
    assert!(largest <= 4096, "a payload of {largest} bytes > 4096");
    assert!(
        payloads.len() >= 1000 * 100 / 4096,
        "frames are split at max_message_bytes"
    );
}

/// A small post travels inline in the publish queue and a larger one in a buffer of its own
/// (`wire::codec::Encoded`); a burst of both, from two threads, shares frames and arrives
/// whole, each thread's in its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g05_small_and_large_posts_are_batched_together_whole_and_in_order() {
    const POSTS: usize = 2_000;
    let server = RedisServer::start();
    let (a, b) = (redis_bus(&server).await, redis_bus(&server).await);
    let got = recorder::<String>(b.messages(), "g05-sizes");
    ready(&b).await;
    // Every length from empty to well past the inline bound, tagged with its thread.
    let text = |thread: usize, i: usize| format!("{thread}:{i}:{}", "s".repeat(i % 150));
    let posters: Vec<_> = (0..2)
        .map(|thread| {
            let a = a.clone();
            std::thread::spawn(move || {
                for i in 0..POSTS {
                    global(&a, "g05-sizes", text(thread, i));
                }
            })
        })
        .collect();
    for poster in posters {
        poster.join().unwrap();
    }
    flush(&a).await;
    wait_until("b received every post", DEADLINE, || {
        got.lock().unwrap().len() == 2 * POSTS
    })
    .await;
    let got = snapshot(&got);
    for thread in 0..2 {
        let mine: Vec<&String> = got
            .iter()
            .filter(|t| t.starts_with(&format!("{thread}:")))
            .collect();
        let expected: Vec<String> = (0..POSTS).map(|i| text(thread, i)).collect();
        assert!(mine.iter().copied().eq(expected.iter()), "thread {thread}");
    }
    assert!(
        a.stats().global_batches < (2 * POSTS) as u64,
        "{:?}",
        a.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g06_native_frames_carry_origin_and_sequence_duplicates_dropped_gaps_reported() {
    let server = RedisServer::start();
    let (a, b) = (redis_bus(&server).await, redis_bus(&server).await);
    let mut b_events = b.events();

    // Duplicates: every frame of a burst, published again, counts one duplicate per message
    // in it and delivers nothing twice.
    let got = recorder::<u64>(b.messages(), "g06_dup");
    ready(&b).await;
    let mut raw = blocking(|| RawSubscriber::connect(&server, &["g06_dup"]));
    for i in 0..5u64 {
        global(&a, "g06_dup", i);
    }
    flush(&a).await;
    wait_until("b received the burst", DEADLINE, || {
        snapshot(&got).len() == 5
    })
    .await;
    let frames = raw_payloads(&mut raw);
    assert!(
        !frames.is_empty() && frames.len() <= 5,
        "{} frames",
        frames.len()
    );
    for (_, frame) in &frames {
        assert!(server.publish_raw("g06_dup", frame) >= 1);
    }
    wait_until("five duplicates counted", DEADLINE, || {
        b.stats().global_duplicates == 5
    })
    .await;
    // Once more: the same frames again are duplicates again.
    for (_, frame) in &frames {
        server.publish_raw("g06_dup", frame);
    }
    wait_until("ten duplicates counted", DEADLINE, || {
        b.stats().global_duplicates == 10
    })
    .await;
    assert_eq!(snapshot(&got), [0, 1, 2, 3, 4], "nothing delivered twice");
    assert_eq!(b.stats().global_missed, 0);

    // Gaps: three one-message frames of a's on a channel b does not listen to, replayed on one
    // it does, without the second. Sequences are per (origin, channel) as a stamped them.
    let mut src = blocking(|| RawSubscriber::connect(&server, &["g06_src"]));
    let mut frames = Vec::new();
    for i in 10..13u64 {
        delivered(global(&a, "g06_src", i)).await;
        flush(&a).await;
        frames.push(raw_payload(&mut src).1);
    }
    let dst = recorder::<u64>(b.messages(), "g06_dst");
    ready(&b).await;
    server.publish_raw("g06_dst", &frames[0]);
    wait_until("the first frame arrived", DEADLINE, || {
        snapshot(&dst) == [10]
    })
    .await;
    assert_eq!(b.stats().global_missed, 0, "a first message is no gap");
    server.publish_raw("g06_dst", &frames[2]);
    wait_until("the third frame arrived", DEADLINE, || {
        snapshot(&dst) == [10, 12]
    })
    .await;
    wait_until("the gap is counted", DEADLINE, || {
        b.stats().global_missed == 1
    })
    .await;
    let event = wait_event(&mut b_events, "MessagesMissed", |e| {
        matches!(e, BusEvent::MessagesMissed { .. })
    })
    .await;
    let BusEvent::MessagesMissed { origin, count } = event else {
        unreachable!()
    };
    assert_eq!(count, 1);
    assert_eq!(origin.len(), 32, "origin {origin:?}: 128 bits as hex");
    assert!(
        origin
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "origin {origin:?}: lowercase hex"
    );
    let origin_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&origin[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert!(
        contains(&frames[0], &origin_bytes),
        "the frame {} carries origin {origin}",
        hex(&frames[0])
    );
    // Accounting: delivered + reported missed == sent.
    assert_eq!(snapshot(&dst).len() as u64 + b.stats().global_missed, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g07_posts_are_held_during_an_outage_sent_in_order_after_and_bounded() {
    const HELD: u64 = 100;
    let mut server = RedisServer::start();
    let a = build(
        Bus::builder()
            .redis_url(server.url())
            .outage_buffer(HELD as usize),
    )
    .await;
    let b = redis_bus(&server).await;
    let (mut a_events, mut b_events) = (a.events(), b.events());
    let got = recorder::<u64>(b.messages(), "g07");
    ready(&b).await;
    delivered(global(&a, "g07", 1_000u64)).await;
    wait_until("the first post arrived", DEADLINE, || {
        snapshot(&got) == [1_000]
    })
    .await;

    blocking(|| server.stop());
    wait_event(&mut a_events, "a's Disconnected", is_disconnected).await;
    // Exactly outage_buffer posts are held; the next one is refused.
    let deliveries: Vec<Delivery> = (0..HELD).map(|i| global(&a, "g07", i)).collect();
    assert_eq!(
        a.messages()
            .post_message("g07", HELD, MessageScope::Global)
            .unwrap_err(),
        PostError::Backpressure
    );
    wait_until("the held posts are counted", DEADLINE, || {
        a.stats().global_buffered == HELD
    })
    .await;
    assert_eq!(a.stats().global_posted, HELD + 1, "{:?}", a.stats());
    assert!(
        timeout(Duration::from_millis(300), a.flush())
            .await
            .is_err(),
        "flush waits while Redis is down"
    );

    blocking(|| server.restart());
    wait_event(&mut a_events, "a's Reconnected", is_reconnected).await;
    flush(&a).await;
    for delivery in deliveries {
        assert_eq!(
            poll_once(delivery),
            Poll::Ready(Ok(())),
            "acknowledged by flush"
        );
    }
    assert_eq!(a.stats().global_buffered, 0);

    // b: each held message is received, in order, or reported missed. Held posts may have
    // reached Redis before b subscribed again; the gap shows with the next message.
    wait_event(&mut b_events, "b's Reconnected", is_reconnected).await;
    ready(&b).await;
    delivered(global(&a, "g07", 2_000u64)).await;
    wait_until("the post after the outage arrived", DEADLINE, || {
        snapshot(&got).last() == Some(&2_000)
    })
    .await;
    let got = snapshot(&got);
    let held = &got[1..got.len() - 1];
    assert!(
        held.windows(2).all(|w| w[0] < w[1]) && held.iter().all(|&i| i < HELD),
        "held messages in order: {held:?}"
    );
    let stats = b.stats();
    assert_eq!(
        held.len() as u64 + stats.global_missed,
        HELD,
        "received {} + missed {} == held; {stats:?}",
        held.len(),
        stats.global_missed
    );
    assert_eq!(stats.global_duplicates, 0);
    let mut reported = 0;
    while reported < stats.global_missed {
        if let BusEvent::MessagesMissed { count, .. } =
            wait_event(&mut b_events, "MessagesMissed", |e| {
                matches!(e, BusEvent::MessagesMissed { .. })
            })
            .await
        {
            reported += count;
        }
    }
    assert_eq!(reported, stats.global_missed, "every miss is reported");

    // A Delivery that can never be sent resolves to an error.
    blocking(|| server.stop());
    wait_event(&mut a_events, "a's second Disconnected", is_disconnected).await;
    let stranded: Vec<Delivery> = (0..3u64).map(|i| global(&a, "g07", 3_000 + i)).collect();
    let shutdown = timeout(SHUTDOWN_BOUND, a.shutdown())
        .await
        .expect("shutdown is bounded with Redis down");
    assert!(shutdown.is_err(), "shutdown could not flush 3 posts");
    for delivery in stranded {
        let result = timeout(DEADLINE, delivery.into_future())
            .await
            .expect("a stranded Delivery resolves");
        assert!(
            result.is_err(),
            "a Delivery never sent resolves to an error"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g08_after_a_reconnect_every_channel_is_resubscribed_and_reconnected_emitted() {
    let mut server = RedisServer::start();
    let (a, b) = (redis_bus(&server).await, redis_bus(&server).await);
    let mut b_events = b.events();
    let one = recorder::<u64>(b.messages(), "g08_one");
    let session = b.session();
    let two = recorder::<u64>(session.messages(), "g08_two");
    let mut three = b.messages().create_stream::<u64>("g08_three");
    ready(&b).await;
    let channels = ["g08_one", "g08_two", "g08_three", "g08_late"];
    for channel in &channels[..3] {
        assert_eq!(numsub(&server, channel), 1, "{channel}");
    }

    blocking(|| server.stop());
    wait_event(&mut b_events, "Disconnected", is_disconnected).await;
    // A channel that got its first listener during the outage is subscribed too.
    let late = recorder::<u64>(b.messages(), "g08_late");
    blocking(|| server.restart());
    wait_event(&mut b_events, "Reconnected", is_reconnected).await;
    wait_until(
        "every channel is subscribed again, without a user call",
        DEADLINE,
        || channels.iter().all(|c| numsub(&server, c) == 1),
    )
    .await;

    // New posts arrive (a's posts are held until a has reconnected too).
    for (i, channel) in channels.iter().enumerate() {
        delivered(global(&a, channel, i as u64)).await;
    }
    wait_until("every channel received", DEADLINE, || {
        snapshot(&one) == [0] && snapshot(&two) == [1] && snapshot(&late) == [3]
    })
    .await;
    assert_eq!(*next_within(&mut three, "the stream").await.as_ref(), 2);
    assert_eq!(b.stats().global_decode_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g09_undecodable_unknown_and_oversized_payloads_are_counted_reported_and_skipped() {
    const MAX: usize = 1024;
    let server = RedisServer::start();
    let namespaced = |format: WireFormat| {
        Bus::builder()
            .redis_url(server.url())
            .namespace("g09:")
            .wire_format(format)
    };
    let a = build(namespaced(WireFormat::Native)).await;
    let b = build(namespaced(WireFormat::Native).max_message_bytes(MAX)).await;
    let mut b_events = b.events();
    let numbers = recorder::<u64>(b.messages(), "in");
    let strings = recorder::<String>(b.messages(), "in");
    ready(&b).await;

    // A real frame, to cut.
    let mut raw = blocking(|| RawSubscriber::connect(&server, &["g09:in", "g09:cap"]));
    delivered(global(&a, "in", 7u64)).await;
    wait_until("the first post arrived", DEADLINE, || {
        snapshot(&numbers) == [7]
    })
    .await;
    let (channel, frame) = raw_payload(&mut raw);
    assert_eq!(channel, "g09:in");
    // A frame naming a class no receiver on b takes, from another bus (a new origin).
    #[derive(Serialize, Deserialize)]
    struct Stranger {
        x: u64,
    }
    let c = build(namespaced(WireFormat::Native)).await;
    delivered(global(&c, "cap", Stranger { x: 1 })).await;
    let (_, stranger) = raw_payload(&mut raw);
    // A frame of a type b takes, but larger than b's max_message_bytes.
    let d = build(namespaced(WireFormat::Native)).await;
    delivered(global(&d, "cap", "y".repeat(2 * MAX))).await;
    let (_, oversized) = raw_payload(&mut raw);
    assert!(oversized.len() > MAX);

    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", noise(200, 0x9e37_79b9_7f4a_7c15)),
        ("empty", Vec::new()),
        ("truncated by one byte", frame[..frame.len() - 1].to_vec()),
        ("truncated to 5 bytes", frame[..5].to_vec()),
        ("unknown class", stranger),
        ("oversized", oversized),
    ];
    for (what, payload) in &bad {
        assert_eq!(
            server.publish_raw("g09:in", payload),
            2,
            "{what}: b and the raw subscriber"
        );
    }
    wait_until("every bad payload counted", DEADLINE, || {
        b.stats().global_decode_errors == bad.len() as u64
    })
    .await;
    for (what, _) in &bad {
        let event = wait_event(&mut b_events, "DecodeFailed", |e| {
            matches!(e, BusEvent::DecodeFailed { .. })
        })
        .await;
        let BusEvent::DecodeFailed { channel, reason } = event else {
            unreachable!()
        };
        assert_eq!(
            channel, "in",
            "the evbus channel name, without the namespace"
        );
        assert!(!reason.is_empty());
        println!("{what}: {reason}");
    }
    // The subscription still works.
    delivered(global(&a, "in", 8u64)).await;
    wait_until("a normal post still arrives", DEADLINE, || {
        snapshot(&numbers) == [7, 8]
    })
    .await;
    assert!(snapshot(&strings).is_empty(), "nothing bad was delivered");
    let stats = stats_until(&b, "both are counted", |s| s.global_received >= 2).await;
    assert_eq!(stats.global_decode_errors, bad.len() as u64, "{stats:?}");
    assert_eq!(stats.global_received, 2, "{stats:?}");

    // The same for Serverpod's JSON.
    let s = build(namespaced(WireFormat::Serverpod).max_message_bytes(MAX)).await;
    let mut s_events = s.events();
    let models = recorder::<SimpleData>(s.messages(), "sp");
    ready(&s).await;
    let padded = format!(
        r#"{{"className":"SimpleData","data":{{"num":1,"pad":"{}"}}}}"#,
        "z".repeat(MAX)
    );
    let bad: [&[u8]; 6] = [
        b"{not json",
        b"[1,2]",
        br#"{"className":"Nope","data":{}}"#,
        br#"{"className":"SimpleData","data":{"num":"x"}}"#,
        br#"{"className":"SimpleData"}"#,
        padded.as_bytes(),
    ];
    for payload in bad {
        assert_eq!(server.publish_raw("g09:sp", payload), 1);
    }
    wait_until("every bad JSON payload counted", DEADLINE, || {
        s.stats().global_decode_errors == bad.len() as u64
    })
    .await;
    for _ in bad {
        let event = wait_event(&mut s_events, "DecodeFailed", |e| {
            matches!(e, BusEvent::DecodeFailed { .. })
        })
        .await;
        assert!(matches!(event, BusEvent::DecodeFailed { channel, .. } if channel == "sp"));
    }
    server.publish_raw(
        "g09:sp",
        br#"{"className":"SimpleData","data":{"__className__":"SimpleData","num":42}}"#,
    );
    wait_until("a good payload still arrives", DEADLINE, || {
        snapshot(&models) == [SimpleData { num: 42 }]
    })
    .await;
    assert_eq!(s.stats().global_decode_errors, bad.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g10_namespaces_keep_applications_apart() {
    let server = RedisServer::start();
    let in_namespace = |prefix: &str| Bus::builder().redis_url(server.url()).namespace(prefix);
    let app1 = build(in_namespace("app1:")).await;
    let app2 = build(in_namespace("app2:")).await;
    let plain = redis_bus(&server).await;
    let buses = [&app1, &app2, &plain];
    let logs: Vec<Log<u64>> = buses
        .iter()
        .map(|bus| recorder::<u64>(bus.messages(), "chan"))
        .collect();
    for bus in buses {
        ready(bus).await;
    }
    for channel in ["app1:chan", "app2:chan", "chan"] {
        assert_eq!(numsub(&server, channel), 1, "{channel}");
    }
    let mut raw = blocking(|| RawSubscriber::connect(&server, &["app1:chan", "app2:chan", "chan"]));
    // One after the other: once a bus has its own message, it has whatever Redis sent it before.
    for (i, bus) in buses.iter().enumerate() {
        delivered(global(bus, "chan", i as u64)).await;
    }
    wait_until("each bus received its own post", DEADLINE, || {
        logs.iter()
            .enumerate()
            .all(|(i, log)| snapshot(log).last() == Some(&(i as u64)))
    })
    .await;
    for (i, log) in logs.iter().enumerate() {
        assert_eq!(
            snapshot(log),
            [i as u64],
            "bus {i} saw only its application's post"
        );
    }
    let channels: Vec<String> = raw_payloads(&mut raw).into_iter().map(|(c, _)| c).collect();
    assert_eq!(channels, ["app1:chan", "app2:chan", "chan"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g11_serverpod_format_reads_and_writes_serverpods_exact_payloads() {
    const V3: &str = r#"{"className":"SimpleData","data":{"__className__":"SimpleData","num":42}}"#;
    let server = RedisServer::start();
    let serverpod = || {
        Bus::builder()
            .redis_url(server.url())
            .wire_format(WireFormat::Serverpod)
    };
    let s = build(serverpod()).await;
    let got = recorder::<SimpleData>(s.messages(), "test_channel");
    let mut stream = s.messages().create_stream::<SimpleData>("test_channel");
    ready(&s).await;

    // Reads: 3.x, 2.x (no __className__), and the same JSON with other key order and spaces.
    let payloads = [
        V3,
        r#"{"className":"SimpleData","data":{"num":43}}"#,
        r#"{ "data": { "num": 44, "__className__": "SimpleData" }, "className": "SimpleData" }"#,
    ];
    for payload in payloads {
        assert_eq!(server.publish_raw("test_channel", payload.as_bytes()), 1);
    }
    let expected: Vec<SimpleData> = (42..45).map(|num| SimpleData { num }).collect();
    wait_until("Serverpod's payloads arrive typed", DEADLINE, || {
        snapshot(&got) == expected
    })
    .await;
    for model in &expected {
        assert_eq!(next_within(&mut stream, "the stream").await.as_ref(), model);
    }
    assert_eq!(s.stats().global_decode_errors, 0);

    // Writes: byte for byte Serverpod 3.x, one message per PUBLISH, even in a burst.
    let mut raw = blocking(|| RawSubscriber::connect(&server, &["test_channel"]));
    delivered(global(&s, "test_channel", SimpleData { num: 42 })).await;
    assert_eq!(
        raw_payload(&mut raw),
        ("test_channel".into(), V3.as_bytes().to_vec())
    );
    for num in 0..50 {
        global(&s, "test_channel", SimpleData { num });
    }
    flush(&s).await;
    let burst: Vec<String> = raw_payloads(&mut raw)
        .into_iter()
        .map(|(_, p)| String::from_utf8(p).unwrap())
        .collect();
    let expected: Vec<String> = (0..50)
        .map(|num| {
            format!(r#"{{"className":"SimpleData","data":{{"__className__":"SimpleData","num":{num}}}}}"#)
        })
        .collect();
    assert_eq!(burst, expected);
    wait_until("its own posts come back", DEADLINE, || {
        snapshot(&got).len() == 3 + 1 + 50
    })
    .await;

    // A configured class name, for a module's model, both ways.
    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    struct Greeting {
        text: String,
    }
    let m = build(serverpod().class_name::<Greeting>("my_module.Greeting")).await;
    let greetings = recorder::<Greeting>(m.messages(), "greetings");
    ready(&m).await;
    let mut raw = blocking(|| RawSubscriber::connect(&server, &["greetings"]));
    let hello = Greeting { text: "hi".into() };
    delivered(global(&m, "greetings", hello.clone())).await;
    assert_eq!(
        String::from_utf8(raw_payload(&mut raw).1).unwrap(),
        r#"{"className":"my_module.Greeting","data":{"__className__":"my_module.Greeting","text":"hi"}}"#
    );
    server.publish_raw(
        "greetings",
        br#"{"className":"my_module.Greeting","data":{"text":"yo"}}"#,
    );
    wait_until("both greetings arrive", DEADLINE, || {
        snapshot(&greetings) == [hello.clone(), Greeting { text: "yo".into() }]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g12_flush_and_shutdown_are_bounded_and_final() {
    let mut server = RedisServer::start();

    // flush: everything posted before it is acknowledged when it returns.
    let f = build(
        Bus::builder()
            .redis_url(server.url())
            .wire_format(WireFormat::Serverpod),
    )
    .await;
    let mut raw = blocking(|| RawSubscriber::connect(&server, &["g12_flush"]));
    let deliveries: Vec<Delivery> = (0..200)
        .map(|num| global(&f, "g12_flush", SimpleData { num }))
        .collect();
    flush(&f).await;
    assert_eq!(f.stats().global_buffered, 0);
    for delivery in deliveries {
        assert_eq!(
            poll_once(delivery),
            Poll::Ready(Ok(())),
            "acknowledged before flush returned"
        );
    }
    let seen: Vec<Vec<u8>> = raw_payloads(&mut raw).into_iter().map(|(_, p)| p).collect();
    let expected: Vec<Vec<u8>> = (0..200)
        .map(|num| {
            format!(r#"{{"className":"SimpleData","data":{{"__className__":"SimpleData","num":{num}}}}}"#)
                .into_bytes()
        })
        .collect();
    assert_eq!(seen, expected);

    // shutdown with Redis up: flushes, unsubscribes, ends streams and events; posts fail after.
    let (b, c) = (redis_bus(&server).await, redis_bus(&server).await);
    let mut events = b.events();
    let out = recorder::<u64>(c.messages(), "g12_out");
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    b.messages().add_listener("g12_s", move |_: &u64| {
        counter.fetch_add(1, SeqCst);
    });
    let mut stream = b.messages().create_stream::<u64>("g12_s");
    let session = b.session();
    let mut session_stream = session.messages().create_stream::<u64>("g12_t");
    ready(&b).await;
    ready(&c).await;
    assert_eq!((numsub(&server, "g12_s"), numsub(&server, "g12_t")), (1, 1));
    delivered(global(&b, "g12_s", 5u64)).await;
    wait_until("b's listener ran", DEADLINE, || calls.load(SeqCst) == 1).await;
    let pending: Vec<Delivery> = (0..50u64).map(|i| global(&b, "g12_out", i)).collect();
    let started = Instant::now();
    timeout(SHUTDOWN_BOUND, b.shutdown())
        .await
        .expect("shutdown is bounded")
        .expect("shutdown with Redis up succeeds");
    println!("shutdown took {:?}", started.elapsed());
    for delivery in pending {
        assert_eq!(poll_once(delivery), Poll::Ready(Ok(())), "shutdown flushed");
    }
    wait_until("c received all 50", DEADLINE, || {
        snapshot(&out) == (0..50).collect::<Vec<_>>()
    })
    .await;
    wait_until("b unsubscribed", DEADLINE, || {
        numsub(&server, "g12_s") + numsub(&server, "g12_t") == 0
    })
    .await;
    assert_eq!(
        *next_within(&mut stream, "the buffered message")
            .await
            .as_ref(),
        5
    );
    assert!(ends(&mut stream).await, "the bus-level stream ended");
    assert!(
        ends(&mut session_stream).await,
        "the session's stream ended"
    );
    assert!(ends(&mut events).await, "the events ended");
    for scope in [
        MessageScope::Global,
        MessageScope::Auto,
        MessageScope::Local,
    ] {
        assert_eq!(
            b.messages().post_message("g12_s", 1u64, scope).unwrap_err(),
            PostError::ShutDown
        );
        assert_eq!(
            session
                .messages()
                .post_message("g12_s", 1u64, scope)
                .unwrap_err(),
            PostError::ShutDown
        );
    }
    assert_eq!(
        b.messages()
            .revoke_authentication("1", RevokedAuthentication::User)
            .unwrap_err(),
        PostError::ShutDown
    );
    assert!(
        timeout(SHUTDOWN_BOUND, b.shutdown()).await.is_ok(),
        "a second shutdown returns"
    );

    // shutdown with Redis down: bounded, and an error naming what it could not flush.
    let d = redis_bus(&server).await;
    let mut d_events = d.events();
    blocking(|| server.stop());
    wait_event(&mut d_events, "Disconnected", is_disconnected).await;
    let stranded: Vec<Delivery> = (0..10u64).map(|i| global(&d, "g12_down", i)).collect();
    let started = Instant::now();
    let error = timeout(SHUTDOWN_BOUND, d.shutdown())
        .await
        .expect("shutdown is bounded with Redis down")
        .expect_err("shutdown could not flush 10 posts");
    assert!(started.elapsed() < SHUTDOWN_BOUND);
    println!("shutdown with Redis down: {error}");
    assert!(
        error.to_string().contains("10"),
        "the error names the 10 posts it could not flush: {error}"
    );
    for delivery in stranded {
        let result = timeout(DEADLINE, delivery.into_future())
            .await
            .expect("a stranded Delivery resolves");
        assert!(result.is_err(), "never sent: an error");
    }
    assert_eq!(
        d.messages()
            .post_message("g12_down", 1u64, MessageScope::Global)
            .unwrap_err(),
        PostError::ShutDown
    );
}

/// Set in the child process that [`g12_a_bus_dropped_without_shutdown_closes_in_the_background`]
/// runs a scenario in: the scenario's name.
const CHILD_SCENARIO: &str = "EVBUS_GLOBAL_TEST_SCENARIO";
const CHILD_REDIS_URL: &str = "EVBUS_GLOBAL_TEST_REDIS_URL";

/// The end of a program that never called `shutdown`, in this (child) process.
fn dropped_bus_scenario(scenario: &str, url: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bus = runtime.block_on(async {
        let bus = build(Bus::builder().redis_url(url)).await;
        let session = bus.session();
        let mut stream = session.messages().create_stream::<u64>("g12_dropped");
        ready(&bus).await;
        // A task owns a session (so the bus) when the runtime goes away.
        tokio::spawn(async move {
            let _session = session;
            while next(&mut stream).await.is_some() {}
        });
        global(&bus, "g12_dropped", 1u64);
        bus
    });
    match scenario {
        "task holds the last handle" => {
            drop(bus);
            drop(runtime);
        }
        "bus outlives the runtime" => {
            drop(runtime);
            drop(bus);
        }
        other => panic!("unknown scenario {other:?}"),
    }
    println!("scenario {scenario:?} ended cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g12_a_bus_dropped_without_shutdown_closes_in_the_background() {
    if let (Ok(scenario), Ok(url)) = (
        std::env::var(CHILD_SCENARIO),
        std::env::var(CHILD_REDIS_URL),
    ) {
        // In the child process: no runtime of the test's may run the scenario.
        return blocking(|| {
            thread::spawn(move || dropped_bus_scenario(&scenario, &url))
                .join()
                .unwrap()
        });
    }
    let server = RedisServer::start();

    // With the runtime alive, a bus whose last handle is dropped still sends what was posted,
    // then unsubscribes.
    let bus = build(
        Bus::builder()
            .redis_url(server.url())
            .wire_format(WireFormat::Serverpod),
    )
    .await;
    let mut raw = blocking(|| RawSubscriber::connect(&server, &["g12_posted"]));
    bus.messages().add_listener("g12_listened", |_: &u64| {});
    ready(&bus).await;
    assert_eq!(numsub(&server, "g12_listened"), 1);
    for num in 0..10 {
        global(&bus, "g12_posted", SimpleData { num });
    }
    drop(bus);
    let seen = blocking(|| (0..10).map_while(|_| raw.next_message(DEADLINE)).count());
    assert_eq!(seen, 10, "what was posted went out after the drop");
    wait_until("the dropped bus unsubscribed", DEADLINE, || {
        numsub(&server, "g12_listened") == 0
    })
    .await;

    // At the end of a program, the runtime may go first, or with the task that holds the bus.
    // Run in a child process: a crash there (a stack overflow aborts) must not take this
    // test binary down.
    for scenario in ["task holds the last handle", "bus outlives the runtime"] {
        let output = blocking(|| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "g12_a_bus_dropped_without_shutdown_closes_in_the_background",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_SCENARIO, scenario)
                .env(CHILD_REDIS_URL, server.url())
                .output()
                .unwrap()
        });
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stdout.contains("ended cleanly"),
            "scenario {scenario:?}: the child process failed ({}):\n{stdout}\n{stderr}",
            output.status
        );
    }
}

// ---- R. Authentication revocation through Redis ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r01_revocation_goes_through_redis_on_a_bus_with_redis() {
    let server = RedisServer::start();
    let (a, b) = (redis_bus(&server).await, redis_bus(&server).await);
    let channel = revoked_authentication_channel("42");
    assert_eq!(channel, "_serverpod_revoked_authentication_42");
    let on_a = recorder::<RevokedAuthentication>(a.messages(), &channel);
    let session = b.session();
    let on_b = recorder::<RevokedAuthentication>(session.messages(), &channel);
    let other_user =
        recorder::<RevokedAuthentication>(b.messages(), &revoked_authentication_channel("43"));
    ready(&a).await;
    ready(&b).await;
    let mut raw = blocking(|| RawSubscriber::connect(&server, &[&channel]));

    let delivery = a
        .messages()
        .revoke_authentication("42", RevokedAuthentication::AuthId("a1".into()))
        .unwrap();
    assert_eq!(
        (delivery.local_receivers(), delivery.is_global()),
        (0, true),
        "scope Auto on a bus with Redis: global"
    );
    delivered(delivery).await;
    let expected = [RevokedAuthentication::AuthId("a1".into())];
    wait_until("both servers received the revocation", DEADLINE, || {
        snapshot(&on_a) == expected && snapshot(&on_b) == expected
    })
    .await;
    assert_eq!(raw_payload(&mut raw).0, channel, "it went through Redis");
    assert!(snapshot(&other_user).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r02_revocations_use_serverpods_classes_in_both_wire_formats() {
    use RevokedAuthentication::{AuthId, Scope, User};
    const REFERENCE: [&str; 3] = [
        r#"{"className":"serverpod.RevokedAuthenticationUser","data":{"__className__":"serverpod.RevokedAuthenticationUser"}}"#,
        r#"{"className":"serverpod.RevokedAuthenticationAuthId","data":{"__className__":"serverpod.RevokedAuthenticationAuthId","authId":"a1b2"}}"#,
        r#"{"className":"serverpod.RevokedAuthenticationScope","data":{"__className__":"serverpod.RevokedAuthenticationScope","scopes":["admin"]}}"#,
    ];
    let all = || [User, AuthId("a1b2".into()), Scope(vec!["admin".into()])];
    let server = RedisServer::start();
    let channel = revoked_authentication_channel("42");

    // Serverpod's JSON: exactly the reference lines, both ways.
    let s = build(
        Bus::builder()
            .redis_url(server.url())
            .wire_format(WireFormat::Serverpod),
    )
    .await;
    let listened = recorder::<RevokedAuthentication>(s.messages(), &channel);
    let mut stream = s
        .messages()
        .create_stream::<RevokedAuthentication>(&channel);
    ready(&s).await;
    let mut raw = blocking(|| RawSubscriber::connect(&server, &[&channel]));
    for revocation in all() {
        delivered(
            s.messages()
                .revoke_authentication("42", revocation)
                .unwrap(),
        )
        .await;
    }
    for line in REFERENCE {
        let (on, payload) = raw_payload(&mut raw);
        assert_eq!(
            (on.as_str(), String::from_utf8(payload).unwrap().as_str()),
            (channel.as_str(), line)
        );
    }
    for line in REFERENCE {
        server.publish_raw(&channel, line.as_bytes());
    }
    // 2.x wrote no __className__.
    server.publish_raw(
        &channel,
        br#"{"className":"serverpod.RevokedAuthenticationAuthId","data":{"authId":"old"}}"#,
    );
    let mut expected: Vec<RevokedAuthentication> = all().into_iter().chain(all()).collect();
    expected.push(AuthId("old".into()));
    wait_until("the listener received all seven", DEADLINE, || {
        snapshot(&listened) == expected
    })
    .await;
    for revocation in &expected {
        assert_eq!(
            next_within(&mut stream, "the stream").await.as_ref(),
            revocation
        );
    }
    assert_eq!(s.stats().global_decode_errors, 0);

    // Native, between two evbus buses: the same three classes inside the frames.
    let (n1, n2) = (redis_bus(&server).await, redis_bus(&server).await);
    let native = revoked_authentication_channel("7");
    let listened = recorder::<RevokedAuthentication>(n2.messages(), &native);
    let session = n2.session();
    let mut stream = session
        .messages()
        .create_stream::<RevokedAuthentication>(&native);
    ready(&n2).await;
    let mut raw = blocking(|| RawSubscriber::connect(&server, &[&native]));
    for revocation in all() {
        delivered(
            n1.messages()
                .revoke_authentication("7", revocation)
                .unwrap(),
        )
        .await;
    }
    wait_until("the native listener received all three", DEADLINE, || {
        snapshot(&listened) == all()
    })
    .await;
    for revocation in all() {
        assert_eq!(
            *next_within(&mut stream, "the native stream").await,
            revocation
        );
    }
    let frames: Vec<u8> = raw_payloads(&mut raw)
        .into_iter()
        .flat_map(|(_, p)| p)
        .collect();
    for class in [
        "serverpod.RevokedAuthenticationUser",
        "serverpod.RevokedAuthenticationAuthId",
        "serverpod.RevokedAuthenticationScope",
    ] {
        assert!(
            contains(&frames, class.as_bytes()),
            "a native frame names {class}"
        );
    }
}

/// A "connection" of a user: a session whose task closes it when a revocation affects it.
struct Connection {
    seen: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

fn connect(
    bus: &Bus,
    user: &str,
    auth_id: Option<&'static str>,
    scopes: &'static [&'static str],
) -> Connection {
    let session = bus.session();
    let mut revocations = session
        .messages()
        .create_stream::<RevokedAuthentication>(&revoked_authentication_channel(user));
    let (seen, closed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (seen_by_task, closed_by_task) = (seen.clone(), closed.clone());
    let task = tokio::spawn(async move {
        let (seen, closed) = (seen_by_task, closed_by_task);
        while let Some(revoked) = next(&mut revocations).await {
            seen.fetch_add(1, SeqCst);
            if revoked.affects(auth_id, scopes) {
                closed.store(true, SeqCst);
                session.close();
            }
        }
    });
    Connection { seen, closed, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r03_a_revocation_through_redis_closes_exactly_the_affected_connections() {
    use RevokedAuthentication::{AuthId, Scope, User};
    let server = RedisServer::start();
    let (app, admin) = (redis_bus(&server).await, redis_bus(&server).await);
    // User 42's connections on one server; the revocations come from another.
    let chat_a1 = connect(&app, "42", Some("a1"), &["chat"]);
    let admin_a2 = connect(&app, "42", Some("a2"), &["admin"]);
    let chat_a3 = connect(&app, "42", Some("a3"), &["chat"]);
    let anonymous = connect(&app, "42", None, &["admin"]);
    let other_user = connect(&app, "43", Some("a1"), &["admin"]);
    ready(&app).await;
    let state = |c: &Connection| (c.seen.load(SeqCst), c.closed.load(SeqCst));

    delivered(
        admin
            .messages()
            .revoke_authentication("42", AuthId("a1".into()))
            .unwrap(),
    )
    .await;
    wait_until("every connection of 42 saw the first", DEADLINE, || {
        [&chat_a1, &admin_a2, &chat_a3, &anonymous]
            .iter()
            .all(|c| state(c).0 == 1)
    })
    .await;
    assert_eq!(
        [&chat_a1, &admin_a2, &chat_a3, &anonymous].map(state),
        [(1, true), (1, false), (1, false), (1, false)]
    );

    delivered(
        admin
            .messages()
            .revoke_authentication("42", Scope(vec!["admin".into()]))
            .unwrap(),
    )
    .await;
    wait_until("the open connections saw the second", DEADLINE, || {
        [&admin_a2, &chat_a3, &anonymous]
            .iter()
            .all(|c| state(c).0 == 2)
    })
    .await;
    assert_eq!(
        [&admin_a2, &chat_a3, &anonymous].map(state),
        [(2, true), (2, false), (2, false)]
    );

    delivered(admin.messages().revoke_authentication("42", User).unwrap()).await;
    wait_until("the open connections saw the third", DEADLINE, || {
        [&chat_a3, &anonymous].iter().all(|c| state(c).0 == 3)
    })
    .await;
    assert_eq!([&chat_a3, &anonymous].map(state), [(3, true), (3, false)]);
    assert_eq!(state(&other_user), (0, false), "another user's revocations");
    assert_eq!(state(&chat_a1).0, 1, "a closed connection hears no more");

    // Shutting the server down ends the streams of the connections still open: every
    // connection task ends.
    timeout(SHUTDOWN_BOUND, app.shutdown())
        .await
        .expect("shutdown is bounded")
        .expect("shutdown with Redis up succeeds");
    for connection in [chat_a1, admin_a2, chat_a3, anonymous, other_user] {
        timeout(DEADLINE, connection.task)
            .await
            .expect("the connection's stream ended")
            .expect("the connection task did not panic");
    }
}

// ---- errors that say why, and what caused it --------------------------------------------

/// A Redis that refuses the PUBLISH (here an ACL user without it) fails the post's Delivery
/// with Redis's answer, and the client's error is the error's `source()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publish_fails_its_delivery_with_the_cause() {
    let server = RedisServer::start();
    server.cli(&[
        "ACL", "SETUSER", "nopub", "on", ">pw", "~*", "&*", "+@all", "-publish",
    ]);
    let url = format!("redis://nopub:pw@127.0.0.1:{}", server.port());
    let bus = build(Bus::builder().redis_url(url)).await;
    let delivery = global(&bus, "refused", 1u64);
    let error = timeout(DEADLINE, delivery.into_future())
        .await
        .expect("a refused post's Delivery resolves")
        .expect_err("Redis refused the PUBLISH");
    assert!(
        matches!(&error, PostError::Redis(reason) if reason.contains("NOPERM")),
        "{error:?}"
    );
    assert!(std::error::Error::source(&error).is_some(), "{error:?}");
}

/// A bus that cannot connect says so without the URL's password, in `Display` and `Debug`
/// alike, and keeps the client's error as the `source()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_errors_hide_the_password_and_keep_the_cause() {
    let port = support::redis::free_port();
    let builder = Bus::builder().redis_url(format!("redis://admin:TopSecret-Pw@127.0.0.1:{port}"));
    assert!(!format!("{builder:?}").contains("TopSecret"), "{builder:?}");
    let error = timeout(DEADLINE, builder.build())
        .await
        .expect("build gives up on an unreachable Redis")
        .expect_err("nothing listens on the port");
    let shown = format!("{error} {error:?}");
    assert!(shown.contains("cannot connect"), "{shown}");
    assert!(!shown.contains("TopSecret"), "{shown}");
    assert!(std::error::Error::source(&error).is_some(), "{shown}");
}

// ---- a frame's messages are judged one by one --------------------------------------------

/// Issue: a message that fits was lost when it shared a frame with one that does not. A
/// receiver with `max_message_bytes(1024)` gets a frame holding a 10 kB message and then a
/// 4-byte one (as a bus with the default limit publishes them when both are queued before
/// its publisher drains): the small one is delivered, the big one refused and counted, and
/// nothing is missed. Then a frame mixing several sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_within_the_limit_is_delivered_beside_one_over_it() {
    const MAX: usize = 1024;
    let server = RedisServer::start();
    let small = build(
        Bus::builder()
            .redis_url(server.url())
            .max_message_bytes(MAX),
    )
    .await;
    let lines = recorder::<String>(small.messages(), "mixed");
    ready(&small).await;
    let big = "b".repeat(10_000);
    let origin = *b"a-bigger-limit!!";
    assert_eq!(
        server.publish_raw("mixed", &string_frame(origin, 1, &[&big, "tiny"])),
        1
    );
    wait_until("the small message arrived", DEADLINE, || {
        snapshot(&lines) == ["tiny"]
    })
    .await;
    let stats = stats_until(&small, "it is counted", |s| s.global_received >= 1).await;
    assert_eq!(
        (
            stats.global_received,
            stats.global_decode_errors,
            stats.global_missed
        ),
        (1, 1, 0),
        "{stats:?}"
    );

    // Several sizes in one frame, in order: only the ones over the limit are refused.
    let limit_payload = MAX - (40 + 6 + "String".len() + 5); // header, record, class, str32
    let fits = "f".repeat(limit_payload);
    let over = "o".repeat(limit_payload + 1);
    let messages = ["one", over.as_str(), fits.as_str(), &big, "five"];
    server.publish_raw("mixed", &string_frame(origin, 3, &messages));
    wait_until("the fitting messages arrived", DEADLINE, || {
        snapshot(&lines).len() == 4
    })
    .await;
    assert_eq!(snapshot(&lines), ["tiny", "one", fits.as_str(), "five"]);
    let stats = stats_until(&small, "they are counted", |s| s.global_received >= 4).await;
    assert_eq!(
        (
            stats.global_received,
            stats.global_decode_errors,
            stats.global_missed
        ),
        (4, 3, 0),
        "{stats:?}"
    );
}

/// A frame whose header reads but whose body does not still accounts for its messages: they
/// are counted missed (and reported), once, and the next frame of that origin shows no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_frame_counts_its_messages_missed() {
    let server = RedisServer::start();
    let bus = redis_bus(&server).await;
    let mut events = bus.events();
    let lines = recorder::<String>(bus.messages(), "cut");
    ready(&bus).await;
    let origin = *b"an-origin-of-16b";
    server.publish_raw("cut", &string_frame(origin, 1, &["first"]));
    // Three messages, cut in the middle of the second: nothing of it can be trusted.
    let frame = string_frame(origin, 2, &["two", "three", "four"]);
    server.publish_raw("cut", &frame[..frame.len() - 12]);
    server.publish_raw("cut", &string_frame(origin, 5, &["five"]));
    wait_until("the readable frames arrived", DEADLINE, || {
        snapshot(&lines) == ["first", "five"]
    })
    .await;
    let stats = stats_until(&bus, "they are counted", |s| s.global_received >= 2).await;
    assert_eq!(
        (
            stats.global_received,
            stats.global_decode_errors,
            stats.global_missed
        ),
        (2, 1, 3),
        "{stats:?}"
    );
    let missed = wait_event(&mut events, "MessagesMissed", |e| {
        matches!(e, BusEvent::MessagesMissed { .. })
    })
    .await;
    assert!(
        matches!(&missed, BusEvent::MessagesMissed { count: 3, .. }),
        "{missed:?}"
    );
}

// ---- what a forged frame can do -----------------------------------------------------------

/// One PUBLISH of a frame with a real bus's origin and a sequence near `u64::MAX` used to make
/// every bus, the origin included, drop that origin's later posts as duplicates, and wrapped
/// `global_missed`. Now the origin itself rejects it (it never sent that number), the other
/// bus refuses it as implausible, and both go on receiving the origin's posts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_sequence_number_does_not_mute_an_origin() {
    let server = RedisServer::start();
    let a = redis_bus(&server).await;
    let b = redis_bus(&server).await;
    let on_a = recorder::<String>(a.messages(), "forged");
    let on_b = recorder::<String>(b.messages(), "forged");
    ready(&a).await;
    ready(&b).await;
    let mut raw = blocking(|| RawSubscriber::connect(&server, &["forged"]));
    delivered(global(&a, "forged", "one".to_string())).await;
    let (_, frame) = raw_payload(&mut raw);
    let origin: [u8; 16] = frame[4..20].try_into().unwrap();
    server.publish_raw("forged", &string_frame(origin, u64::MAX - 1, &["forged"]));
    // The same with a frame whose payload does not decode: it must not move anything either.
    let mut bad = string_frame(origin, u64::MAX - 3, &["x"]);
    let last = bad.len() - 1;
    bad[last - 1] = 0xc1; // never used in MessagePack
    server.publish_raw("forged", &bad);
    for n in ["two", "three"] {
        delivered(global(&a, "forged", n.to_string())).await;
    }
    wait_until("both buses got every real post", DEADLINE, || {
        snapshot(&on_a) == ["one", "two", "three"] && snapshot(&on_b) == ["one", "two", "three"]
    })
    .await;
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(
        (sa.global_missed, sb.global_missed),
        (0, 0),
        "{sa:?} {sb:?}"
    );
    assert_eq!(
        sa.global_rejected, 2,
        "the origin rejects frames it never sent: {sa:?}"
    );
    assert_eq!(
        sb.global_decode_errors, 2,
        "implausible on the other bus: {sb:?}"
    );
}

// ---- signed frames --------------------------------------------------------------------------

/// With a signing key every frame carries a MAC: buses sharing the key read each other; a
/// frame without a MAC, with a MAC of another key, or altered after signing is rejected and
/// counted before anything of it is read; `accept_signing_key` lets a new key roll out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_frames_are_verified_and_the_rest_rejected() {
    let server = RedisServer::start();
    // Repair off: its announcements are signed like frames, and counted here too when they
    // come from a bus of another key (tests/repair.rs checks repair under a key).
    let plain = || Bus::builder().redis_url(server.url()).repair_window(0, 0);
    let with_key = |key: &[u8]| plain().signing_key(key);
    let a = build(with_key(b"first key, 32 bytes or more, ok.")).await;
    let b = build(with_key(b"first key, 32 bytes or more, ok.")).await;
    let unsigned = build(plain()).await;
    let rotated = build(
        with_key(b"second key, 32 bytes or more, ok")
            .accept_signing_key(b"first key, 32 bytes or more, ok."),
    )
    .await;
    let on_b = recorder::<String>(b.messages(), "signed");
    let on_rotated = recorder::<String>(rotated.messages(), "signed");
    let on_unsigned = recorder::<String>(unsigned.messages(), "signed");
    for bus in [&b, &rotated, &unsigned] {
        ready(bus).await;
    }
    let mut raw = blocking(|| RawSubscriber::connect(&server, &["signed"]));

    delivered(global(&a, "signed", "from a".to_string())).await;
    let (_, frame) = raw_payload(&mut raw);
    assert_eq!(frame[3], 4, "a signed frame is version 4");
    wait_until(
        "a's post reached b, the rotated bus and the unsigned one",
        DEADLINE,
        || {
            snapshot(&on_b) == ["from a"]
                && snapshot(&on_rotated) == ["from a"]
                && snapshot(&on_unsigned) == ["from a"]
        },
    )
    .await;

    // Refused by b: no MAC (the unsigned bus), another key (the rotated bus signs with the
    // second key, which b does not accept), and a's frame altered after signing.
    delivered(global(&unsigned, "signed", "no mac".to_string())).await;
    delivered(global(&rotated, "signed", "second key".to_string())).await;
    let mut altered = frame.clone();
    let at = altered.len() - 40; // in the payload, before the MAC
    altered[at] ^= 1;
    server.publish_raw("signed", &altered);
    let rejected = eventually(DEADLINE, || b.stats().global_rejected == 3).await;
    assert!(rejected, "b rejects three frames: {:?}", b.stats());
    // The rotated bus took its own post; the unsigned bus reads everything unchecked.
    wait_until("the others got what they accept", DEADLINE, || {
        snapshot(&on_rotated) == ["from a", "second key"] && snapshot(&on_unsigned).len() >= 3
    })
    .await;
    assert_eq!(snapshot(&on_b), ["from a"], "nothing unauthentic reached b");
    let two = eventually(DEADLINE, || rotated.stats().global_rejected == 2).await;
    assert!(
        two,
        "the rotated bus rejects the unsigned post and the altered frame: {:?}",
        rotated.stats()
    );
    assert_eq!(b.stats().global_missed, 0);

    // Serverpod's JSON has nowhere to put a MAC.
    let error = Bus::builder()
        .redis_url(server.url())
        .wire_format(WireFormat::Serverpod)
        .signing_key(b"k")
        .build()
        .await
        .expect_err("a signing key needs the Native format");
    assert!(error.to_string().contains("Serverpod"), "{error}");
}

/// `subscriptions_ready` returned at once while the subscriber was still reconnecting, and
/// the posts that followed were lost. Now it waits until every wanted channel is subscribed
/// again: here the receiver's ACL user is switched off while its connections are killed, so
/// it cannot reconnect until it is switched on again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g04_subscriptions_ready_waits_for_a_reconnecting_subscriber() {
    let server = RedisServer::start();
    server.cli(&[
        "ACL", "SETUSER", "receiver", "on", ">pw", "~*", "&*", "+@all",
    ]);
    let url = format!("redis://receiver:pw@127.0.0.1:{}", server.port());
    let receiver = build(Bus::builder().redis_url(url)).await;
    let poster = redis_bus(&server).await;
    let mut events = receiver.events();
    let lines = recorder::<u64>(receiver.messages(), "after");
    ready(&receiver).await;

    server.cli(&["ACL", "SETUSER", "receiver", "off"]);
    // Only the subscriber connection (the one in pub/sub mode), so that the Disconnected
    // below is its own.
    server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    wait_event(&mut events, "Disconnected", |e| {
        *e == BusEvent::Disconnected
    })
    .await;
    // It cannot be ready while it cannot reconnect (a bound, not a measurement: no correct
    // bus returns within it).
    let early = timeout(Duration::from_secs(1), receiver.subscriptions_ready()).await;
    assert!(
        early.is_err(),
        "ready while the subscriber is down: {early:?}"
    );

    server.cli(&["ACL", "SETUSER", "receiver", "on"]);
    ready(&receiver).await;
    for n in 0..100u64 {
        global(&poster, "after", n);
    }
    flush(&poster).await;
    wait_until("every post after ready arrived", DEADLINE, || {
        snapshot(&lines).len() == 100
    })
    .await;
    assert_eq!(snapshot(&lines), (0..100).collect::<Vec<_>>());
}

/// A channel the ACL forbids used to wedge subscriptions: `subscriptions_ready()` hung (the
/// SUBSCRIBE retried forever) or returned `Ok` with the channel unsubscribed, and later
/// allowed channels could go unreceived, with no event saying why. Now the refusal is
/// reported, the other channels are subscribed, and `subscriptions_ready()` returns at once
/// with an error naming the channel, until its receivers are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g04_a_channel_the_acl_forbids_is_reported_and_holds_up_nothing() {
    let server = RedisServer::start();
    let url = server.acl_user("limited", &["&ok:*"]);
    let bus = build(Bus::builder().redis_url(url)).await;
    let poster = redis_bus(&server).await;
    let mut events = bus.events();
    let before = recorder::<u64>(bus.messages(), "ok:before");
    let session = bus.session();
    session
        .messages()
        .add_listener("bad:x", |_: &u64| panic!("nothing can arrive on bad:x"));
    let after = recorder::<u64>(bus.messages(), "ok:after");
    let error = timeout(DEADLINE, bus.subscriptions_ready())
        .await
        .expect("subscriptions_ready returns promptly")
        .expect_err("bad:x was refused");
    assert!(
        matches!(&error, evbus::BusError::SubscribeRefused { channel, reason }
            if channel == "bad:x" && reason.contains("NOPERM")),
        "{error:?}"
    );
    let refused = wait_event(&mut events, "SubscribeRefused", |e| {
        matches!(e, BusEvent::SubscribeRefused { .. })
    })
    .await;
    assert!(
        matches!(&refused, BusEvent::SubscribeRefused { channel, .. } if channel == "bad:x"),
        "{refused:?}"
    );
    // The allowed channels, before and after the refused one, are subscribed.
    assert_eq!(numsub(&server, "ok:before"), 1);
    assert_eq!(numsub(&server, "ok:after"), 1);
    delivered(global(&poster, "ok:before", 1u64)).await;
    delivered(global(&poster, "ok:after", 2u64)).await;
    wait_until("both allowed channels received", DEADLINE, || {
        snapshot(&before) == [1] && snapshot(&after) == [2]
    })
    .await;
    // Once the refused channel has no receivers, the bus is ready again.
    drop(session);
    ready(&bus).await;
}

// ---- Deliveries around shutdown tell the truth ----------------------------------------------

/// Resolves every Delivery within the deadline; returns the errors' texts.
async fn outcomes(deliveries: Vec<Delivery>) -> Vec<Result<(), String>> {
    let mut outcomes = Vec::new();
    for delivery in deliveries {
        let outcome = timeout(DEADLINE, delivery.into_future())
            .await
            .expect("every Delivery resolves, also around a shutdown");
        outcomes.push(outcome.map_err(|error| error.to_string()));
    }
    outcomes
}

/// The count a shutdown error names: "N global posts were not acknowledged ...".
fn failed_count(error: &evbus::BusError) -> usize {
    let text = error.to_string();
    let digits: String = text
        .trim_start_matches("Redis: ")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no count in {text:?}"))
}

/// Posts racing `shutdown()` used to get a Delivery that never resolved while `shutdown()`
/// returned `Ok`. Now every Delivery resolves, and as many fail as `shutdown()` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g12_posts_racing_shutdown_all_resolve_and_are_counted() {
    let server = RedisServer::start();
    for round in 0..10 {
        let bus = redis_bus(&server).await;
        let poster = bus.clone();
        let posting = thread::spawn(move || {
            let payload = "p".repeat(50_000);
            let mut deliveries = Vec::new();
            loop {
                match poster
                    .messages()
                    .post_message("race", payload.clone(), MessageScope::Global)
                {
                    Ok(delivery) => deliveries.push(delivery),
                    Err(PostError::ShutDown) => return deliveries,
                    Err(PostError::Backpressure) => thread::yield_now(),
                    Err(error) => panic!("round {round}: {error}"),
                }
            }
        });
        wait_until("some posts are out", DEADLINE, || {
            bus.stats().global_posted >= 20
        })
        .await;
        let shutdown = timeout(SHUTDOWN_BOUND, bus.shutdown())
            .await
            .expect("shutdown is bounded");
        let deliveries = blocking(|| posting.join().unwrap());
        let outcomes = outcomes(deliveries).await;
        let failed = outcomes.iter().filter(|o| o.is_err()).count();
        match &shutdown {
            Ok(()) => assert_eq!(failed, 0, "round {round}: shutdown said Ok"),
            Err(error) => assert_eq!(failed, failed_count(error), "round {round}: {error}"),
        }
    }
}

/// With Redis gone before `shutdown()`, every held post's Delivery fails saying it was not
/// sent or that its outcome is unknown (never "not acknowledged" for a post Redis took), and
/// `shutdown()` counts exactly those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g12_a_shutdown_with_redis_gone_counts_and_names_every_failure() {
    let mut server = RedisServer::start();
    let bus = redis_bus(&server).await;
    delivered(global(&bus, "gone", 0u64)).await;
    server.stop();
    let deliveries: Vec<Delivery> = (1..=2000u64).map(|n| global(&bus, "gone", n)).collect();
    let error = timeout(SHUTDOWN_BOUND, bus.shutdown())
        .await
        .expect("shutdown is bounded")
        .expect_err("nothing was acknowledged");
    let outcomes = outcomes(deliveries).await;
    for outcome in &outcomes {
        let text = outcome.as_ref().expect_err("Redis is gone");
        assert!(
            text.contains("not sent") || text.contains("outcome unknown"),
            "{text}"
        );
    }
    assert_eq!(failed_count(&error), outcomes.len(), "{error}");
}

/// The least ACL the README's Security section names is enough for a bus: it builds,
/// subscribes, posts and receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_acl_the_readme_names_is_enough() {
    let server = RedisServer::start();
    server.cli(&[
        "ACL",
        "SETUSER",
        "app",
        "on",
        ">secret",
        "resetchannels",
        "&app1:*",
        "-@all",
        "+subscribe",
        "+unsubscribe",
        "+publish",
        "+ping",
        "+pubsub|numsub",
        "+client|setname",
        "+hello",
        "+auth",
    ]);
    let url = format!("redis://app:secret@127.0.0.1:{}", server.port());
    let bus = build(Bus::builder().redis_url(url).namespace("app1:")).await;
    let lines = recorder::<String>(bus.messages(), "chat");
    ready(&bus).await;
    delivered(global(&bus, "chat", "hi".to_string())).await;
    wait_until("its own post came back", DEADLINE, || {
        snapshot(&lines) == ["hi"]
    })
    .await;
    shutdown(&bus).await;
}
