//! Buses on a test's `redis-server` (see [`super::redis`]): building them, posting globally,
//! and waiting on them.
//!
//! Every wait is bounded, by [`DEADLINE`] unless the caller says otherwise, and fails the test
//! naming what it waited for; nothing sleeps a fixed time. A blocking call (a raw socket, a
//! server killed or restarted) goes through [`blocking`], so that it does not stall the
//! runtime worker that runs the buses' tasks.

use std::future::{poll_fn, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evbus::{Bus, BusBuilder, Delivery, Message, MessageScope, Messages, Stats};
use futures_core::Stream;
use tokio::time::timeout;

use super::redis::RedisServer;

/// Generous: the machine is a busy 2-core one. Only ever a bound on a wait for a condition.
pub const DEADLINE: Duration = Duration::from_secs(30);

// ---- building -------------------------------------------------------------------------------

/// Builds a bus that connects to Redis.
///
/// # Panics
/// If it fails, or does not connect within [`DEADLINE`].
pub async fn build(builder: BusBuilder) -> Bus {
    timeout(DEADLINE, builder.build())
        .await
        .expect("building a bus with Redis timed out")
        .unwrap_or_else(|error| panic!("building a bus with Redis failed: {error}"))
}

/// A bus with the default settings on `server`.
pub async fn redis_bus(server: &RedisServer) -> Bus {
    build(Bus::builder().redis_url(server.url())).await
}

/// Waits until Redis confirmed every subscription `bus` has asked for.
pub async fn ready(bus: &Bus) {
    timeout(DEADLINE, bus.subscriptions_ready())
        .await
        .expect("subscriptions_ready timed out")
        .expect("subscriptions_ready failed");
}

/// Waits until Redis acknowledged everything `bus` posted.
pub async fn flush(bus: &Bus) {
    timeout(DEADLINE, bus.flush())
        .await
        .expect("flush timed out")
        .expect("flush failed");
}

/// Shuts `bus` down, with Redis up: it must succeed.
pub async fn shutdown(bus: &Bus) {
    timeout(DEADLINE, bus.shutdown())
        .await
        .expect("shutdown timed out")
        .expect("shutdown with Redis up failed");
}

// ---- posting --------------------------------------------------------------------------------

/// A global post that must be accepted.
pub fn global<M: Message>(bus: &Bus, channel: &str, message: M) -> Delivery {
    let delivery = bus
        .messages()
        .post_message(channel, message, MessageScope::Global)
        .unwrap_or_else(|error| panic!("global post on {channel} refused: {error}"));
    assert_eq!(
        (delivery.local_receivers(), delivery.is_global()),
        (0, true),
        "a global post reaches nobody synchronously"
    );
    delivery
}

/// Awaits a Delivery that must resolve Ok.
pub async fn delivered(delivery: Delivery) {
    timeout(DEADLINE, delivery.into_future())
        .await
        .expect("the Delivery did not resolve in time")
        .expect("the Delivery resolved to an error");
}

// ---- waiting --------------------------------------------------------------------------------

/// Runs blocking I/O (redis-cli, a raw socket, killing a server) without stalling the
/// runtime's worker: the bus's tasks keep running meanwhile.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

/// The next item of `stream` (a `MessageStream`, `BusEvents`), or `None` once it ended.
pub async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

/// Polls `condition` every 5 ms until it holds or `deadline` passes; whether it held. For
/// waits whose failure wants a detailed message ([`wait_until`] panics with a fixed one).
pub async fn eventually(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if condition() {
            return true;
        }
        if started.elapsed() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `condition` every 5 ms until it is true.
///
/// # Panics
/// With `what` once `deadline` has passed and the condition is still false.
pub async fn wait_until(what: &str, deadline: Duration, condition: impl FnMut() -> bool) {
    assert!(
        eventually(deadline, condition).await,
        "timed out after {deadline:?} waiting until {what}"
    );
}

/// Waits until `done` holds for the bus's [`Stats`] (or [`DEADLINE`] passes, then panics
/// with `what`), and returns them. A dispatch thread adds to the counters after it has called
/// the listeners of a frame, so a listener's record runs a moment ahead of them.
pub async fn stats_until(bus: &Bus, what: &str, done: impl Fn(&Stats) -> bool) -> Stats {
    let ok = eventually(DEADLINE, || done(&bus.stats())).await;
    let stats = bus.stats();
    assert!(
        ok,
        "timed out after {DEADLINE:?} waiting until {what}: {stats:?}"
    );
    stats
}

/// What a [`recorder`] listener got, in order.
pub type Log<M> = Arc<Mutex<Vec<M>>>;

/// Adds a listener of `M` on `channel` that records every message; returns the record.
pub fn recorder<M: Message + Clone>(messages: &Messages, channel: &str) -> Log<M> {
    let log: Log<M> = Arc::default();
    let sink = log.clone();
    messages.add_listener(channel, move |m: &M| sink.lock().unwrap().push(m.clone()));
    log
}

/// What `log` holds now.
pub fn snapshot<M: Clone>(log: &Log<M>) -> Vec<M> {
    log.lock().unwrap().clone()
}
