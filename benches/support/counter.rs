//! What the global benches share: a delivery counter a bench waits on, a global post that
//! waits out backpressure, their small message, and their runtime.
//! Included with `#[path = "support/counter.rs"] mod counter;`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use evbus::{Bus, Message, MessageScope, PostError};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// A small message: two fields.
#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
pub struct Tick {
    pub seq: u64,
    pub value: u64,
}

/// On `b`: a listener on `throughput` that counts the `Tick`s it gets, and one on `latency`
/// that sends the time each arrives; then waits until Redis confirmed both subscriptions.
#[allow(dead_code)] // benches/cluster.rs listens on many channels its own way
pub async fn listen(
    b: &Bus,
    throughput: &str,
    latency: &str,
) -> (
    std::sync::Arc<Counter>,
    tokio::sync::mpsc::UnboundedReceiver<std::time::Instant>,
) {
    let received = std::sync::Arc::new(Counter::default());
    let counter = received.clone();
    b.messages().add_listener(throughput, move |tick: &Tick| {
        std::hint::black_box(tick);
        counter.add(1);
    });
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    b.messages().add_listener(latency, move |_: &Tick| {
        let _ = tx.send(std::time::Instant::now());
    });
    b.subscriptions_ready().await.expect("bus B subscribed");
    (received, rx)
}

/// The benches' runtime: two workers, as on the machine the figures come from.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// How long a batch may take to arrive before the bench gives up, naming what it saw.
pub const DELIVERY_DEADLINE: Duration = Duration::from_secs(120);

/// Counts deliveries and wakes the waiter when the count reaches the target.
#[derive(Default)]
pub struct Counter {
    pub count: AtomicU64,
    target: AtomicU64,
    /// What the receiver reported lost (only the benches that count it set it).
    pub lost: AtomicU64,
    reached: Notify,
}

impl Counter {
    pub fn add(&self, n: u64) {
        let count = self.count.fetch_add(n, Ordering::AcqRel) + n;
        let target = self.target.load(Ordering::Acquire);
        if count >= target && count - n < target {
            self.reached.notify_one();
        }
    }

    /// Sets the target `more` deliveries past the current count; returns it.
    pub fn expect(&self, more: u64) -> u64 {
        let target = self.count.load(Ordering::Acquire) + more;
        self.target.store(target, Ordering::Release);
        target
    }

    /// Waits until `target` deliveries were counted; panics with `context()` after
    /// [`DELIVERY_DEADLINE`].
    pub async fn reached(&self, target: u64, context: impl Fn() -> String) {
        let deadline = tokio::time::Instant::now() + DELIVERY_DEADLINE;
        loop {
            let notified = self.reached.notified();
            let count = self.count.load(Ordering::Acquire);
            if count >= target {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "{count} of {target} deliveries after {DELIVERY_DEADLINE:?} ({} lost); {}",
                    self.lost.load(Ordering::Relaxed),
                    context()
                );
            }
        }
    }
}

/// Posts with `MessageScope::Global`, yielding while the publish queue is full (it should not
/// be: the outage buffer holds a million).
pub async fn post_global<M: Message + Clone>(bus: &Bus, channel: &str, message: M) {
    loop {
        match bus
            .messages()
            .post_message(channel, message.clone(), MessageScope::Global)
        {
            Ok(_delivery) => return,
            Err(PostError::Backpressure) => tokio::task::yield_now().await,
            Err(error) => panic!("global post failed: {error}"),
        }
    }
}
