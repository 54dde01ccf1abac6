//! The Redis transport: global messages posted on one bus, passed through Redis, delivered
//! by every bus subscribed to the channel (the poster included), as in Serverpod (G03).
//!
//! # Shape
//!
//! - The bus encodes a message on the posting thread (so encoding errors and `TooLarge` are
//!   returned by `post_message`); [`RedisTransport::broadcast`] takes a *ticket* and pushes
//!   it onto a lock-free queue (crossbeam's `SegQueue`), a small message's bytes inline in
//!   the queue's slot (`wire::codec::Encoded`). It never waits for Redis.
//! - One publisher task ([`publisher`]) drains whatever is queued into one pipelined write on
//!   the publisher connection (G05); in [`WireFormat::Native`](crate::WireFormat) it coalesces
//!   the messages of one channel into one PUBLISH frame ([`crate::wire::frame`]). A lone post leaves at
//!   once: the task sleeps only while the queue is empty, and the post that finds it asleep
//!   wakes it. Acknowledged tickets advance a watermark that `Delivery` and
//!   [`flush`](crate::Bus::flush) wait on.
//! - The registry reports each channel's first and last receiver; one task ([`subscriber`])
//!   turns those into SUBSCRIBE and UNSUBSCRIBE in order and counts them confirmed (G04). A
//!   second task reads the subscriber connection, drops duplicates and reports gaps (G06),
//!   refuses what does not decode (G09), and delivers the rest to the local path, decoding
//!   each message once per receiver type (G03).
//! - Repair (K01 to K05): the publisher keeps what it sent in a retransmit window
//!   ([`window`]); a receiver that finds a gap holds the later frames of that origin and
//!   channel ([`holds`], per dispatch thread) and asks the origin through the origin's
//!   control channel; the origin's reader answers from its window to the asker's control
//!   channel ([`crate::wire::control`] is the format). Quiet channels are announced, and a
//!   reconnected receiver asks the origins it knows for their latest sequence numbers.
//! - [`connection`] is the only file of the crate that names fred.
//! - [`state`] is what the post path, the tasks and every `Delivery` share.
//!
//! # Outages (G07, G08)
//!
//! While Redis is unreachable the publisher's write waits in fred for the reconnect, and
//! posts keep queueing, up to `outage_buffer` posts not yet acknowledged; past that a post
//! fails with [`PostError::Backpressure`]. On a Redis Cluster the bound is per master: each
//! master has its own publishing lane ([`lanes`]) and its own budget of `outage_buffer` posts
//! and `outage_buffer_bytes` (a post counts against its slot's master's), so a master that
//! is unreachable, say one that died without a replica, refuses only the posts to its own
//! channels while the other masters' posts flow. After the reconnect the held posts go out in
//! order, the subscriber connection subscribes every tracked channel again, and
//! [`BusEvent::Reconnected`](crate::BusEvent::Reconnected) is emitted. A command that fails because the connection dropped
//! under it is sent again; if it had reached Redis after all, receivers drop the copy by its
//! sequence number (Native format).

mod command;
mod connection;
mod dispatch;
mod holds;
mod lanes;
mod ledger;
mod publisher;
pub(crate) mod sequences;
mod state;
mod subscriber;
mod window;

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{BusError, PostError};
use crate::events::EventHub;
use crate::stats::Stats;
use crate::transport::{BoxFuture, Interest, Receive, Ticket, Transport};
use crate::wire::codec::{Codec, Encoded};
pub(crate) use connection::redact;
use connection::Redis;
use dispatch::Dispatch;
use state::{Change, Outgoing, State};

/// How long [`RedisTransport::close`] waits for Redis to acknowledge what was posted.
const FLUSH_LIMIT: Duration = Duration::from_secs(3);
/// How long each closing step (UNSUBSCRIBE, QUIT) may take.
const CLOSE_STEP_LIMIT: Duration = Duration::from_millis(500);

/// The Redis settings of a bus, from its builder.
pub(crate) struct Settings {
    pub(crate) url: String,
    pub(crate) namespace: String,
    pub(crate) outage_buffer: usize,
    pub(crate) outage_buffer_bytes: usize,
    pub(crate) receive_buffer_bytes: usize,
    /// The retransmit window (messages, bytes); either 0: no repair (K01).
    pub(crate) repair_window: (usize, usize),
    /// How long held messages wait for a gap to be repaired (K03).
    pub(crate) repair_timeout: Duration,
    pub(crate) codec: Arc<Codec>,
}

/// Global messages through one Redis: two connections, a publisher task, a subscription
/// task and a reader task.
pub(crate) struct RedisTransport {
    state: Arc<State>,
    redis: Arc<Redis>,
    /// The subscription changes, until [`Transport::start`] hands them to their task.
    changes: Mutex<Option<mpsc::UnboundedReceiver<Change>>>,
    /// The publisher, the reader, the subscription task and the connection watch.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    runtime: tokio::runtime::Handle,
    closed: AtomicBool,
}

impl RedisTransport {
    /// Connects to Redis; the tasks start in [`Transport::start`], once the bus exists.
    ///
    /// # Errors
    ///
    /// [`BusError::Redis`] when the URL is invalid, Redis cannot be reached now, or there is
    /// no tokio runtime to run the tasks on.
    pub(crate) async fn connect(
        settings: Settings,
        events: Arc<EventHub>,
    ) -> Result<RedisTransport, BusError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            BusError::Redis("a bus with Redis must be built inside a tokio runtime".into())
        })?;
        let redis = Redis::connect(&settings.url)
            .await
            .map_err(BusError::Redis)?;
        let (state, changes) = State::new(
            settings.codec,
            settings.namespace,
            settings.outage_buffer,
            settings.outage_buffer_bytes,
            settings.receive_buffer_bytes,
            events,
            redis.is_cluster(),
        );
        let state = state.with_repair(settings.repair_window, settings.repair_timeout);
        Ok(RedisTransport {
            state: Arc::new(state),
            redis: Arc::new(redis),
            changes: Mutex::new(Some(changes)),
            tasks: Mutex::new(Vec::new()),
            runtime,
            closed: AtomicBool::new(false),
        })
    }

    /// What closing needs, the first time it is asked for.
    fn take_for_closing(&self) -> Option<Closing> {
        if self.closed.swap(true, SeqCst) {
            return None;
        }
        Some(Closing {
            state: self.state.clone(),
            redis: self.redis.clone(),
            tasks: std::mem::take(&mut *self.tasks.lock()),
        })
    }
}

impl Interest for RedisTransport {
    fn subscribe(&self, channel: &str) {
        self.state.subscription_changed(channel, true);
    }

    fn unsubscribe(&self, channel: &str) {
        self.state.subscription_changed(channel, false);
    }
}

impl Transport for RedisTransport {
    /// Starts the tasks: publisher, subscription changes, reader, connection watch.
    fn start(&self, local: Weak<dyn Receive>) {
        let Some(changes) = self.changes.lock().take() else {
            return;
        };
        let state = &self.state;
        if state.repairing() {
            // The bus's own control channel: requests for what it published, and answers
            // to its own (K02).
            let origin = state.sequencer.lock().origin;
            state.redis_subscription_changed(state.control_channel(&origin), true);
        }
        let mut tasks = self.tasks.lock();
        tasks.push(
            self.runtime
                .spawn(publisher::run(state.clone(), self.redis.clone())),
        );
        let dispatch = Dispatch::start(subscriber::Reader::new(state.clone(), local));
        tasks.push(self.runtime.spawn(dispatch.run(self.redis.inbox())));
        tasks.push(self.runtime.spawn(subscriber::apply_changes(
            state.clone(),
            self.redis.clone(),
            changes,
        )));
        let watcher = state.clone();
        let _guard = self.runtime.enter();
        tasks.extend(
            self.redis
                .watch(move |link, state| watcher.link_changed(link, state)),
        );
    }

    /// Queues one encoded message for the publisher (G03, G05).
    ///
    /// # Errors
    ///
    /// `Backpressure` when `outage_buffer` posts are already waiting (G07).
    fn broadcast(&self, channel: &str, message: Cow<'_, [u8]>) -> Result<Ticket, PostError> {
        let state = &self.state;
        let channel = state.redis_channel_shared(channel);
        // On a cluster, the budget of the channel's master: one that is unreachable fills
        // only its own.
        let budget = state.budget_of(&channel);
        let counted = &state.budgets[usize::from(budget)];
        // Taken first, then compared with what was given back: a refused post gives back
        // what it took, so both counts only grow.
        let bytes = message.len() as u64;
        let taken = counted.taken.posts.fetch_add(1, SeqCst);
        if taken.saturating_sub(counted.released.posts.load(Acquire)) >= state.outage_buffer {
            state.release([(budget, 1, 0)]);
            state.backpressure(counted, &channel, true);
            return Err(PostError::Backpressure);
        }
        // The byte bound; one post is always taken, so that a bound below the largest
        // message does not refuse everything.
        let before = counted.taken.bytes.fetch_add(bytes, AcqRel);
        let before = before.saturating_sub(counted.released.bytes.load(Acquire));
        if before > 0 && before + bytes > state.outage_buffer_bytes {
            state.release([(budget, 1, bytes)]);
            state.backpressure(counted, &channel, true);
            return Err(PostError::Backpressure);
        }
        // Pairs with `Closing::run`, which sets `closed` and then counts what waits: either
        // it counts this post among those shutdown reports, or this post sees `closed`.
        if self.closed.load(SeqCst) {
            state.release([(budget, 1, bytes)]);
            return Err(PostError::ShutDown);
        }
        let number = state.tickets.fetch_add(1, AcqRel);
        state.backpressure(counted, &channel, false);
        state.queue.push(Outgoing {
            channel,
            // Copied here, once, into the queue's slot (inline when small).
            bytes: match message {
                Cow::Borrowed(bytes) => Encoded::from_slice(bytes),
                Cow::Owned(bytes) => Encoded::from_vec(bytes),
            },
            ticket: number,
            budget,
        });
        publisher::wake(state);
        Ok(Ticket {
            number,
            settlement: state.clone(),
        })
    }

    /// `Bus::flush` (G12): waits until Redis acknowledged every post made before the call.
    fn flush(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(self.state.flush())
    }

    /// `Bus::subscriptions_ready` (G04): waits until Redis confirmed every subscription
    /// change issued before the call.
    fn subscriptions_ready(&self) -> BoxFuture<'_, Result<(), BusError>> {
        let issued = self.state.changes_issued.load(Acquire);
        let mut subscriptions = self.state.subscriptions.subscribe();
        Box::pin(async move {
            // Also while the subscriber reconnects: ready means subscribed again (G08).
            let ready = match subscriptions
                .wait_for(|s| s.ready(issued) || s.closed)
                .await
            {
                Ok(s) => s.ready(issued),
                Err(_) => false,
            };
            if !ready {
                return Err(BusError::ShutDown);
            }
            // A channel Redis refused is not subscribed: say which.
            match self.state.refused_subscription() {
                Some(refused) => Err(refused),
                None => Ok(()),
            }
        })
    }

    /// Closes the transport (G12): lets the publisher send what is queued (for up to
    /// [`FLUSH_LIMIT`]), unsubscribes, closes the connections and stops the tasks. Posts are
    /// already refused by then. Idempotent; bounded in time even when Redis is unreachable.
    ///
    /// # Errors
    ///
    /// [`BusError::Redis`] naming how many posts Redis never acknowledged; their
    /// Deliveries resolve to an error.
    fn close(&self) -> BoxFuture<'_, Result<(), BusError>> {
        let closing = self.take_for_closing();
        Box::pin(async move {
            match closing {
                Some(closing) => closing.run().await,
                None => Ok(()),
            }
        })
    }

    fn fill(&self, stats: &mut Stats) {
        let s = &self.state;
        stats.global_posted = s.tickets.load(Relaxed) - 1;
        stats.global_batches = s.batches.load(Relaxed);
        stats.global_received = s.received.load(Relaxed);
        stats.global_decode_errors = s.decode_errors.load(Relaxed);
        stats.global_missed = s.missed.load(Relaxed);
        stats.global_duplicates = s.duplicates.load(Relaxed);
        stats.global_buffered = s.waiting().0;
        stats.global_rejected = s.rejected.load(Relaxed);
        stats.global_repaired = s.repaired.load(Relaxed);
        stats.global_repair_requests = s.repair_requests.load(Relaxed);
        stats.global_repair_refused = s.repair_refused.load(Relaxed);
        stats.global_repair_window_bytes = s.window_bytes.load(Relaxed);
    }
}

impl Drop for RedisTransport {
    /// A bus dropped without `shutdown`: close in the background, so that what was posted
    /// still goes out (within the same bounds as `shutdown`). If the runtime is gone or
    /// shutting down, the tasks end with it.
    fn drop(&mut self) {
        if let Some(closing) = self.take_for_closing() {
            drop(self.runtime.spawn(closing.run()));
        }
    }
}

/// The transport's parts, taken out of it to be closed.
struct Closing {
    state: Arc<State>,
    redis: Arc<Redis>,
    /// Stopped after the flush (the publisher does the flushing).
    tasks: Vec<JoinHandle<()>>,
}

impl Closing {
    async fn run(self) -> Result<(), BusError> {
        let state = &self.state;
        // Nothing is subscribed any more: whoever waits for it learns so now.
        state.subscriptions.send_modify(|s| s.closed = true);
        let flushed = tokio::time::timeout(FLUSH_LIMIT, state.flush()).await;
        // Stop the publisher before counting, so that what it had not sent stays unsent, and
        // settle every Delivery left: those still waiting resolve to an error saying whether
        // their message was written (`State::outcome`).
        self.abort();
        state.progress.send_modify(|p| p.abandoned = true);
        let unsettled = state.waiting().0;
        let unknown: u64 = state
            .sending
            .lock()
            .values()
            .map(|tickets| tickets.len() as u64)
            .sum();
        let not_sent = unsettled.saturating_sub(unknown);
        if unsettled == 0 {
            tracing::info!(target: "evbus", "shutting down: every global post was acknowledged");
        } else {
            tracing::warn!(
                target: "evbus",
                not_sent,
                unknown,
                "shutting down with global posts Redis never acknowledged"
            );
        }
        let result = match flushed {
            Ok(Ok(())) if unsettled == 0 => Ok(()),
            _ => Err(BusError::Redis(
                format!(
                    "{} global posts were not acknowledged by Redis within {FLUSH_LIMIT:?} of \
                     shutdown: {not_sent} were not sent, and Redis had not answered for \
                     {unknown} (they may have been delivered); their Deliveries fail and say \
                     which",
                    not_sent + unknown
                )
                .into(),
            )),
        };
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
