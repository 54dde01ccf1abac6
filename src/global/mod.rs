//! Global messages: posted on one bus, passed through Redis, delivered by every bus
//! subscribed to the channel (the poster included), as in Serverpod (G03).
//!
//! # Shape
//!
//! - [`Global::post`] encodes the message on the posting thread (so encoding errors and
//!   `TooLarge` are returned by `post_message`), takes a *ticket*, and pushes it onto a
//!   lock-free queue (crossbeam's `SegQueue`). It never waits for Redis.
//! - One publisher task ([`publisher`]) drains whatever is queued into one pipelined write on
//!   the publisher connection (G05); in [`WireFormat::Native`](crate::WireFormat) it coalesces
//!   the messages of one channel into one PUBLISH frame ([`envelope`]). A lone post leaves at
//!   once: the task sleeps only while the queue is empty, and the post that finds it asleep
//!   wakes it. Acknowledged tickets advance a watermark that [`Delivery`] and
//!   [`flush`](crate::Bus::flush) wait on.
//! - The registry reports each channel's first and last receiver; one task ([`subscriber`])
//!   turns those into SUBSCRIBE and UNSUBSCRIBE in order and counts them confirmed (G04). A
//!   second task reads the subscriber connection, drops duplicates and reports gaps (G06),
//!   refuses what does not decode (G09), and delivers the rest to the local path, decoding
//!   each message once per receiver type (G03).
//! - [`redis`] is the only file that names fred.
//!
//! # Outages (G07, G08)
//!
//! While Redis is unreachable the publisher's write waits in fred for the reconnect, and
//! posts keep queueing, up to `outage_buffer` posts not yet acknowledged; past that a post
//! fails with [`PostError::Backpressure`]. After the reconnect the held posts go out in
//! order, the subscriber connection subscribes every tracked channel again, and
//! [`BusEvent::Reconnected`] is emitted. A command that fails because the connection dropped
//! under it is sent again; if it had reached Redis after all, receivers drop the copy by its
//! sequence number (Native format).

pub(crate) mod codec;
pub(crate) mod envelope;
mod publisher;
pub(crate) mod redis;
mod subscriber;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crossbeam_queue::SegQueue;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::bus::BusInner;
use crate::delivery::Delivery;
use crate::error::{BusError, PostError};
use crate::events::{BusEvent, EventHub};
use crate::message::Message;
use crate::stats::Stats;
use codec::Codec;
use redis::{Link, LinkState, Redis};

pub(crate) use subscriber::deliver_wire;

/// How long [`Global::close`] waits for Redis to acknowledge what was posted.
const FLUSH_LIMIT: Duration = Duration::from_secs(3);
/// How long each closing step (UNSUBSCRIBE, QUIT) may take.
const CLOSE_STEP_LIMIT: Duration = Duration::from_millis(500);

/// The Redis settings of a bus, from its builder.
pub(crate) struct Settings {
    pub(crate) url: String,
    pub(crate) namespace: String,
    pub(crate) outage_buffer: usize,
    pub(crate) codec: Codec,
}

/// A post waiting for the publisher.
pub(crate) struct Outgoing {
    /// The Redis channel: namespace and name.
    channel: String,
    /// A Native record, or a whole Serverpod payload.
    bytes: Vec<u8>,
    ticket: u64,
}

/// How far the publisher got: every ticket up to `acked` is settled.
#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    acked: u64,
    /// Set when the bus closed before Redis acknowledged everything: the rest never will be.
    abandoned: bool,
}

/// Work for the subscription task, in the order it was asked for.
pub(crate) enum Change {
    /// A channel got its first receiver (`subscribe`) or lost its last, as the registry
    /// reported it.
    Subscription { channel: String, subscribe: bool },
    /// The subscriber connection is back: subscribe every channel with receivers again (G08).
    Restore,
}

/// What the post path, the tasks and the bus share.
pub(crate) struct Shared {
    pub(crate) codec: Codec,
    namespace: String,
    outage_buffer: u64,
    events: Arc<EventHub>,

    queue: SegQueue<Outgoing>,
    /// Posts queued or in flight: the outage bound, and `Stats::global_buffered`.
    waiting: AtomicU64,
    /// The next ticket; tickets start at 1.
    tickets: AtomicU64,
    /// Set by the publisher before it sleeps; a post that finds it set wakes it.
    publisher_parked: AtomicBool,
    publisher_waker: atomic_waker::AtomicWaker,
    progress: watch::Sender<Progress>,
    /// Tickets Redis refused, with its answer (rare: ACL errors and the like).
    refused: Mutex<HashMap<u64, String>>,

    changes: mpsc::UnboundedSender<Change>,
    changes_issued: AtomicU64,
    changes_confirmed: watch::Sender<u64>,
    /// Per Redis channel subscribed, per origin: the last sequence seen, and when (G06).
    sequences: Mutex<subscriber::Sequences>,
    /// Bits per [`Link`]: (not connected, subscriptions not restored).
    links: Mutex<(u8, u8)>,

    posted: AtomicU64,
    batches: AtomicU64,
    received: AtomicU64,
    decode_errors: AtomicU64,
    missed: AtomicU64,
    duplicates: AtomicU64,
}

impl Shared {
    /// The Redis channel of `name`.
    fn redis_channel(&self, name: &str) -> String {
        let mut channel = String::with_capacity(self.namespace.len() + name.len());
        channel.push_str(&self.namespace);
        channel.push_str(name);
        channel
    }

    /// Called by the registry, under the channel's lock, when `name` gets its first receiver
    /// (`true`) or loses its last (`false`). Never blocks.
    ///
    /// `subscriptions_ready` counts: `changes_issued` is raised before the send and
    /// `changes_confirmed` counts the changes applied, in the channel's FIFO order. A caller's
    /// own changes were sent before it read `changes_issued = n`, so they are among the first
    /// `n` in the queue, and `changes_confirmed >= n` means they are applied.
    pub(crate) fn subscription_changed(&self, name: &str, subscribe: bool) {
        self.changes_issued.fetch_add(1, AcqRel);
        let change = Change::Subscription {
            channel: self.redis_channel(name),
            subscribe,
        };
        // The receiver lives as long as the bus's tasks; after close nothing listens.
        let _ = self.changes.send(change);
    }

    fn emit(&self, event: BusEvent) {
        self.events.emit(event);
    }

    /// A change of one connection (from [`Redis::watch`]): emits `Disconnected` when the
    /// first link drops, `Connected` when every link is connected again, `Reconnected` when
    /// every link has also restored its subscriptions (G08).
    pub(crate) fn link_changed(&self, link: Link, state: LinkState) {
        let bit = match link {
            Link::Publisher => 1,
            Link::Subscriber => 2,
        };
        let mut events = Vec::new();
        {
            let mut links = self.links.lock();
            let (down, unrestored) = &mut *links;
            let mut drop_link = |down: &mut u8, unrestored: &mut u8| {
                if *down == 0 && *unrestored == 0 {
                    events.push(BusEvent::Disconnected);
                }
                *down |= bit;
                *unrestored |= bit;
            };
            match state {
                LinkState::Down => drop_link(down, unrestored),
                LinkState::Connected => {
                    if *down & bit == 0 {
                        // A reconnect that no error announced: a disconnection all the same.
                        drop_link(down, unrestored);
                    }
                    *down &= !bit;
                    if *down == 0 {
                        events.push(BusEvent::Connected);
                    }
                    match link {
                        // The publisher has nothing to restore.
                        Link::Publisher => *unrestored &= !bit,
                        // In order with the subscription changes (see `apply_changes`),
                        // which reports `Restored` when done.
                        Link::Subscriber => _ = self.changes.send(Change::Restore),
                    }
                    if *unrestored == 0 && *down == 0 {
                        events.push(BusEvent::Reconnected);
                    }
                }
                LinkState::Restored => {
                    let before = *unrestored;
                    *unrestored &= !bit;
                    if before != 0 && *unrestored == 0 && *down == 0 {
                        events.push(BusEvent::Reconnected);
                    }
                }
            }
        }
        for event in events {
            self.emit(event);
        }
    }

    /// Waits until Redis acknowledged every post made before the call.
    async fn flush(&self) -> Result<(), BusError> {
        let last = self.tickets.load(Acquire) - 1;
        if self.reached(last).await {
            Ok(())
        } else {
            Err(BusError::ShutDown)
        }
    }

    /// Waits until ticket `ticket` is settled: Ok when Redis acknowledged it.
    async fn settled(&self, ticket: u64) -> Result<(), PostError> {
        if !self.reached(ticket).await {
            return Err(PostError::Redis(
                "the bus shut down before Redis acknowledged the message".into(),
            ));
        }
        match self.refused.lock().get(&ticket) {
            Some(reason) => Err(PostError::Redis(reason.clone())),
            None => Ok(()),
        }
    }

    /// Waits until every ticket up to `ticket` is settled (true), or the bus gave up on
    /// them at shutdown (false).
    async fn reached(&self, ticket: u64) -> bool {
        let mut progress = self.progress.subscribe();
        let settled = progress
            .wait_for(|p| p.acked >= ticket || p.abandoned)
            .await;
        settled.is_ok_and(|p| p.acked >= ticket)
    }
}

/// The Redis half of a bus.
pub(crate) struct Global {
    shared: Arc<Shared>,
    redis: Arc<Redis>,
    /// The publisher, the reader, the subscription task and the connection watch.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    runtime: tokio::runtime::Handle,
    closed: AtomicBool,
}

impl Global {
    /// Connects to Redis and makes the shared state; the tasks start in [`Global::start`],
    /// once the bus exists.
    pub(crate) async fn connect(
        settings: Settings,
        events: Arc<EventHub>,
    ) -> Result<(Global, mpsc::UnboundedReceiver<Change>), BusError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            BusError::Redis("a bus with Redis must be built inside a tokio runtime".into())
        })?;
        let redis = Redis::connect(&settings.url)
            .await
            .map_err(BusError::Redis)?;
        let (changes, changes_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            codec: settings.codec,
            namespace: settings.namespace,
            outage_buffer: settings.outage_buffer as u64,
            events,
            queue: SegQueue::new(),
            waiting: AtomicU64::new(0),
            tickets: AtomicU64::new(1),
            publisher_parked: AtomicBool::new(false),
            publisher_waker: atomic_waker::AtomicWaker::new(),
            progress: watch::Sender::new(Progress::default()),
            refused: Mutex::new(HashMap::new()),
            changes,
            changes_issued: AtomicU64::new(0),
            changes_confirmed: watch::Sender::new(0),
            sequences: Mutex::new(HashMap::new()),
            links: Mutex::new((0, 0)),
            posted: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            received: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        });
        let global = Global {
            shared,
            redis: Arc::new(redis),
            tasks: Mutex::new(Vec::new()),
            runtime,
            closed: AtomicBool::new(false),
        };
        Ok((global, changes_rx))
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Starts the tasks: publisher, subscription changes, reader, connection watch.
    pub(crate) fn start(&self, bus: Weak<BusInner>, changes: mpsc::UnboundedReceiver<Change>) {
        let shared = &self.shared;
        let mut tasks = self.tasks.lock();
        tasks.push(
            self.runtime
                .spawn(publisher::run(shared.clone(), self.redis.clone())),
        );
        let reader = subscriber::Reader::new(shared.clone(), bus);
        tasks.push(self.runtime.spawn(reader.run(self.redis.messages())));
        tasks.push(self.runtime.spawn(subscriber::apply_changes(
            shared.clone(),
            self.redis.clone(),
            changes,
        )));
        let watcher = shared.clone();
        let _guard = self.runtime.enter();
        tasks.extend(
            self.redis
                .watch(move |link, state| watcher.link_changed(link, state)),
        );
    }

    /// A global post (G03): encodes `message` and queues it for the publisher.
    ///
    /// # Errors
    ///
    /// `Encode` or `TooLarge` from the codec; `Backpressure` when `outage_buffer` posts are
    /// already waiting (G07).
    pub(crate) fn post<M: Message>(&self, name: &str, message: &M) -> Result<Delivery, PostError> {
        let shared = &self.shared;
        let bytes = shared.codec.encode(message)?;
        if shared.waiting.fetch_add(1, AcqRel) >= shared.outage_buffer {
            shared.waiting.fetch_sub(1, AcqRel);
            return Err(PostError::Backpressure);
        }
        let ticket = shared.tickets.fetch_add(1, AcqRel);
        shared.queue.push(Outgoing {
            channel: shared.redis_channel(name),
            bytes,
            ticket,
        });
        shared.posted.fetch_add(1, Relaxed);
        publisher::wake(shared);
        Ok(Delivery::global(ticket, shared.clone()))
    }

    /// `Bus::flush` (G12): waits until Redis acknowledged every post made before the call.
    pub(crate) async fn flush(&self) -> Result<(), BusError> {
        self.shared.flush().await
    }

    /// `Bus::subscriptions_ready` (G04): waits until Redis confirmed every subscription
    /// change issued before the call.
    pub(crate) async fn subscriptions_ready(&self) -> Result<(), BusError> {
        let issued = self.shared.changes_issued.load(Acquire);
        let mut confirmed = self.shared.changes_confirmed.subscribe();
        let ready = confirmed.wait_for(|&c| c >= issued).await.is_ok();
        if ready {
            Ok(())
        } else {
            Err(BusError::ShutDown)
        }
    }

    /// Adds the global counters to `stats`.
    pub(crate) fn fill(&self, stats: &mut Stats) {
        let s = &self.shared;
        stats.global_posted = s.posted.load(Relaxed);
        stats.global_batches = s.batches.load(Relaxed);
        stats.global_received = s.received.load(Relaxed);
        stats.global_decode_errors = s.decode_errors.load(Relaxed);
        stats.global_missed = s.missed.load(Relaxed);
        stats.global_duplicates = s.duplicates.load(Relaxed);
        stats.global_buffered = s.waiting.load(Relaxed);
    }

    /// Closes the Redis half (G12): lets the publisher send what is queued (for up to
    /// [`FLUSH_LIMIT`]), unsubscribes, closes the connections and stops the tasks. Posts are
    /// already refused by then. Idempotent; bounded in time even when Redis is unreachable.
    ///
    /// # Errors
    ///
    /// [`BusError::Redis`] naming how many posts Redis never acknowledged; their
    /// Deliveries resolve to an error.
    pub(crate) async fn close(&self) -> Result<(), BusError> {
        match self.take_for_closing() {
            Some(closing) => closing.run().await,
            None => Ok(()),
        }
    }

    /// What closing needs, the first time it is asked for.
    fn take_for_closing(&self) -> Option<Closing> {
        if self.closed.swap(true, AcqRel) {
            return None;
        }
        Some(Closing {
            shared: self.shared.clone(),
            redis: self.redis.clone(),
            tasks: std::mem::take(&mut *self.tasks.lock()),
        })
    }
}

impl Drop for Global {
    /// A bus dropped without `shutdown`: close in the background, so that what was posted
    /// still goes out (within the same bounds as `shutdown`). If the runtime is gone or
    /// shutting down, the tasks end with it.
    fn drop(&mut self) {
        if let Some(closing) = self.take_for_closing() {
            drop(self.runtime.spawn(closing.run()));
        }
    }
}

/// The Redis half's parts, taken out of a [`Global`] to be closed.
struct Closing {
    shared: Arc<Shared>,
    redis: Arc<Redis>,
    /// Stopped after the flush (the publisher does the flushing).
    tasks: Vec<JoinHandle<()>>,
}

impl Closing {
    async fn run(self) -> Result<(), BusError> {
        let shared = &self.shared;
        let flushed = tokio::time::timeout(FLUSH_LIMIT, shared.flush()).await;
        let result = match flushed {
            Ok(Ok(())) => Ok(()),
            _ => {
                let lost = shared.waiting.load(Acquire);
                shared.progress.send_modify(|p| p.abandoned = true);
                Err(BusError::Redis(format!(
                    "{lost} global posts were not acknowledged by Redis within {FLUSH_LIMIT:?} \
                     of shutdown; their Deliveries fail"
                )))
            }
        };
        self.abort();
        self.redis.close(CLOSE_STEP_LIMIT).await;
        result
    }

    fn abort(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for Closing {
    /// Closing cancelled (its runtime shut down): the tasks stop all the same.
    fn drop(&mut self) {
        self.abort();
    }
}

/// The future of a global [`Delivery`].
pub(crate) type Settled = Pin<Box<dyn Future<Output = Result<(), PostError>> + Send>>;

/// Waits until Redis acknowledged ticket `ticket`.
pub(crate) fn settled(ticket: u64, shared: Arc<Shared>) -> Settled {
    Box::pin(async move { shared.settled(ticket).await })
}
