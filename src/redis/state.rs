//! What the post path, the transport's tasks and every `Delivery` share: the publish
//! queue, the watermark of settled posts, the subscription changes in order, and the
//! transport's counters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::*};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_queue::SegQueue;
use crossbeam_utils::CachePadded;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::connection::{self, Link, LinkState};
use super::ledger::{Sequencer, Settler};
use super::sequences::Sequences;
use super::window::Window;
use crate::error::{BusError, PostError, Reason};
use crate::events::{BusEvent, EventHub};
use crate::transport::{BoxFuture, Settlement};
use crate::wire::codec::{Codec, Encoded};
use crate::wire::control;
use crate::wire::frame::Origin;

/// A post waiting for the publisher.
pub(crate) struct Outgoing {
    /// The Redis channel: namespace and name ([`State::redis_channel_shared`]).
    pub(crate) channel: Arc<str>,
    /// A Native record, or a whole Serverpod payload.
    pub(crate) bytes: Encoded,
    pub(crate) ticket: u64,
    /// The outage budget it counts against ([`State::budget_of`]).
    pub(crate) budget: u8,
}

/// Outage budgets of a cluster bus at most; masters beyond share them.
pub(super) const MAX_BUDGETS: usize = 64;
/// Slots of a Redis Cluster.
const SLOTS: usize = 16_384;

/// Posts queued or in flight against one outage budget, and their bytes (G07): one for a
/// bus on one Redis, one per master on a cluster.
///
/// What is taken and what is given back are counted apart, each on a cache line of its own:
/// posting threads add to `taken` and only read `released`, which the publisher adds to once
/// per settled batch. Counted together on one line, every post's read-modify-write found the
/// line on the publisher's core (about a tenth of a global post's cost on the poster).
#[derive(Default)]
pub(super) struct Budget {
    /// Posts and bytes accepted, and the refusal count of [`State::backpressure`].
    pub(super) taken: CachePadded<Tally>,
    /// Posts and bytes settled (or refused after being counted).
    pub(super) released: CachePadded<Tally>,
}

/// Posts and their bytes.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) posts: AtomicU64,
    pub(super) bytes: AtomicU64,
    /// Posts refused with `Backpressure` since the last one accepted; only for the `tracing`
    /// events of [`State::backpressure`] (in `taken`; unused in `released`).
    refusing: AtomicU64,
}

impl Budget {
    /// Posts and bytes taken and not given back.
    pub(super) fn waiting(&self) -> (u64, u64) {
        // `taken` first: a release counted after this read is of a post taken before it.
        let (posts, bytes) = (
            self.taken.posts.load(SeqCst),
            self.taken.bytes.load(Acquire),
        );
        (
            posts.saturating_sub(self.released.posts.load(Acquire)),
            bytes.saturating_sub(self.released.bytes.load(Acquire)),
        )
    }
}

/// How far the publisher got: every ticket up to `acked` is settled.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Progress {
    pub(super) acked: u64,
    /// Settlements so far: moves whenever tickets are settled, also ahead of `acked` (on a
    /// cluster a Delivery waits for its own ticket, not for those of other masters).
    pub(super) settlements: u64,
    /// Set when the bus closed before Redis acknowledged everything: the rest never will be.
    pub(super) abandoned: bool,
}

/// A Delivery's error when the bus shut down before the message was written to Redis.
pub(super) const NOT_SENT: &str =
    "not sent: the bus shut down before the message was written to Redis; nobody received it";
/// A Delivery's error when the bus shut down while Redis had not answered the write.
pub(super) const UNKNOWN: &str = "outcome unknown: the bus shut down while Redis had not \
     answered the PUBLISH that carried the message; it may have been delivered (posting it \
     again may deliver it twice)";

/// Where the subscriptions stand, for `subscriptions_ready` (G04, G08).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Subscriptions {
    /// Subscription changes applied, in the order they were issued.
    pub(super) confirmed: u64,
    /// The subscriber connection is down, or back but not yet subscribed to every wanted
    /// channel again: a post now may not reach this bus.
    pub(super) restoring: bool,
    /// The transport closed: nothing is confirmed any more.
    pub(super) closed: bool,
}

impl Subscriptions {
    /// Whether every change up to `issued` is in effect on a connected subscriber.
    pub(super) fn ready(&self, issued: u64) -> bool {
        self.confirmed >= issued && !self.restoring && !self.closed
    }
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
pub(crate) struct State {
    pub(super) codec: Arc<Codec>,
    pub(super) namespace: String,
    /// Tells this state from every other one in the process (a per-thread cache's key).
    id: u64,
    pub(super) outage_buffer: u64,
    pub(super) events: Arc<EventHub>,

    pub(super) queue: SegQueue<Outgoing>,
    /// Posts queued or in flight, per outage budget, each bounded by `outage_buffer` and
    /// `outage_buffer_bytes` (G07): on a cluster one per master (its publishing lane), so
    /// that a master that is unreachable fills only its own; on one Redis, one. Summed:
    /// `Stats::global_buffered`.
    pub(super) budgets: Box<[Budget]>,
    /// On a cluster, each slot's budget, as the publisher last routed it; empty on one Redis.
    pub(super) slot_budgets: Box<[AtomicU8]>,
    pub(super) outage_buffer_bytes: u64,
    /// The next ticket; tickets start at 1. Written by posting threads only, on a line of
    /// its own; `Stats::global_posted` is this less one.
    pub(super) tickets: CachePadded<AtomicU64>,
    /// Set by the publisher before it sleeps; a post that finds it set wakes it.
    pub(super) publisher_parked: CachePadded<AtomicBool>,
    pub(super) publisher_waker: atomic_waker::AtomicWaker,
    pub(super) progress: watch::Sender<Progress>,
    /// Which tickets are settled (the watermark `progress` publishes, and those ahead of it).
    pub(super) settler: Mutex<Settler>,
    /// The tickets of the batch the publisher is writing, until Redis answered for all.
    ///
    /// Per command: its first ticket, and all of them (shared with the command), so that
    /// writing and settling a frame of many posts costs one entry, not one per post.
    pub(super) sending: Mutex<foldhash::HashMap<u64, Arc<[u64]>>>,
    /// Tickets Redis refused, with its answer (rare: ACL errors and the like), until their
    /// `Delivery` has read it or is dropped: bounded by the Deliveries the user holds.
    pub(super) refused: Mutex<foldhash::HashMap<u64, Reason>>,
    /// `refused.len()`, so that dropping a `Delivery` takes no lock while nothing is refused.
    pub(super) refused_len: AtomicUsize,

    pub(super) changes: mpsc::UnboundedSender<Change>,
    pub(super) changes_issued: AtomicU64,
    /// What `subscriptions_ready` waits on.
    pub(super) subscriptions: watch::Sender<Subscriptions>,
    /// Wanted Redis channels that Redis refused to subscribe, with its answer.
    pub(super) refused_subscriptions: Mutex<BTreeMap<String, Reason>>,
    /// Per Redis channel subscribed, per origin: the last sequence seen, and when (G06).
    pub(super) sequences: Mutex<Sequences>,
    /// This bus's origin and the sequence numbers it sent, per channel.
    pub(super) sequencer: Mutex<Sequencer>,
    /// Frames refused for a missing or wrong MAC, or for claiming this bus's origin
    /// falsely: `Stats::global_rejected`.
    pub(super) rejected: AtomicU64,
    /// Bytes received and waiting for a dispatch thread, and their bound.
    pub(super) inbox_bytes: AtomicU64,
    pub(super) receive_buffer_bytes: u64,
    /// Bits per [`Link`]: (not connected, subscriptions not restored).
    pub(super) links: Mutex<(u8, u8)>,

    pub(super) batches: AtomicU64,
    pub(super) received: AtomicU64,
    pub(super) decode_errors: AtomicU64,
    pub(super) missed: AtomicU64,
    pub(super) duplicates: AtomicU64,
    /// The retransmit window of what this bus published; `None` when repair is off (K01).
    pub(super) window: Option<Mutex<Window>>,
    /// How long held messages wait for their gap to be repaired (K03).
    pub(super) repair_timeout: Duration,
    /// Repair's control messages for the publisher to send: (Redis channel, payload).
    pub(super) control: SegQueue<(String, Vec<u8>)>,
    /// Redis refused to subscribe the control channel (an ACL): repair is off.
    pub(super) control_refused: AtomicBool,
    /// What every control channel's name starts with ([`control::control_channel`]).
    pub(super) control_prefix: String,
    /// Bytes the retransmit window holds: `Stats::global_repair_window_bytes`.
    pub(super) window_bytes: AtomicU64,
    pub(super) repaired: AtomicU64,
    pub(super) repair_requests: AtomicU64,
    pub(super) repair_refused: AtomicU64,
}

impl State {
    /// The state of a new transport, and the receiving end of its subscription changes.
    pub(super) fn new(
        codec: Arc<Codec>,
        namespace: String,
        outage_buffer: usize,
        outage_buffer_bytes: usize,
        receive_buffer_bytes: usize,
        events: Arc<EventHub>,
        clustered: bool,
    ) -> (State, mpsc::UnboundedReceiver<Change>) {
        let (changes, changes_rx) = mpsc::unbounded_channel();
        let namespace_for_control = namespace.clone();
        static STATES: AtomicU64 = AtomicU64::new(0);
        let state = State {
            codec,
            namespace,
            id: STATES.fetch_add(1, Relaxed),
            outage_buffer: outage_buffer as u64,
            events,
            queue: SegQueue::new(),
            budgets: (0..if clustered { MAX_BUDGETS } else { 1 })
                .map(|_| Budget::default())
                .collect(),
            slot_budgets: (0..if clustered { SLOTS } else { 0 })
                .map(|_| AtomicU8::new(0))
                .collect(),
            outage_buffer_bytes: outage_buffer_bytes as u64,
            tickets: CachePadded::new(AtomicU64::new(1)),
            publisher_parked: CachePadded::new(AtomicBool::new(false)),
            publisher_waker: atomic_waker::AtomicWaker::new(),
            progress: watch::Sender::new(Progress::default()),
            settler: Mutex::new(Settler::default()),
            sending: Mutex::default(),
            refused: Mutex::default(),
            refused_len: AtomicUsize::new(0),
            changes,
            changes_issued: AtomicU64::new(0),
            subscriptions: watch::Sender::new(Subscriptions::default()),
            refused_subscriptions: Mutex::new(BTreeMap::new()),
            sequences: Mutex::new(Sequences::default()),
            sequencer: Mutex::new(Sequencer::new()),
            rejected: AtomicU64::new(0),
            inbox_bytes: AtomicU64::new(0),
            receive_buffer_bytes: receive_buffer_bytes as u64,
            links: Mutex::new((0, 0)),
            batches: AtomicU64::new(0),
            received: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            window: None,
            repair_timeout: Duration::ZERO,
            control: SegQueue::new(),
            control_refused: AtomicBool::new(false),
            control_prefix: format!("{namespace_for_control}{}", control::CONTROL_INFIX),
            window_bytes: AtomicU64::new(0),
            repaired: AtomicU64::new(0),
            repair_requests: AtomicU64::new(0),
            repair_refused: AtomicU64::new(0),
        };
        (state, changes_rx)
    }

    /// Turns repair on (K01): a retransmit window of `messages` and `bytes`, and held
    /// messages waiting up to `timeout` for a gap. Either bound at 0 leaves it off.
    pub(super) fn with_repair(
        mut self,
        (messages, bytes): (usize, usize),
        timeout: Duration,
    ) -> Self {
        if messages > 0 && bytes > 0 {
            self.window = Some(Mutex::new(Window::new(messages, bytes)));
        }
        self.repair_timeout = timeout;
        self
    }

    /// Whether this bus repairs gaps and answers repair requests: it keeps a window, and
    /// Redis let it subscribe its control channel.
    pub(super) fn repairing(&self) -> bool {
        self.window.is_some() && !self.control_refused.load(Relaxed)
    }

    /// Whether Redis channel `channel` is a control channel (this bus's own: it subscribes
    /// no other), when repair is on.
    pub(super) fn is_control(&self, channel: &str) -> bool {
        self.repairing() && channel.starts_with(self.control_prefix.as_str())
    }

    /// The control channel of the bus whose origin is `origin`.
    pub(super) fn control_channel(&self, origin: &Origin) -> String {
        control::control_channel(&self.namespace, origin)
    }

    /// The Redis channel of `name`.
    pub(super) fn redis_channel(&self, name: &str) -> String {
        let mut channel = String::with_capacity(self.namespace.len() + name.len());
        channel.push_str(&self.namespace);
        channel.push_str(name);
        channel
    }

    /// [`State::redis_channel`], shared: a thread that posts to the channel it posted to
    /// last gets the same `Arc` again (a count increment), not a new string. A string made
    /// on the posting thread and freed on the publisher's costs an allocation on one core and
    /// a free on another, which glibc's allocator answers slowly: per global post this was
    /// one of the two largest costs on the posting side.
    pub(super) fn redis_channel_shared(&self, name: &str) -> Arc<str> {
        /// A state's id, a channel name, and its Redis channel.
        type Named = (u64, Box<str>, Arc<str>);
        thread_local! {
            /// The last channel this thread posted to.
            static LAST: std::cell::RefCell<Option<Named>> = const { std::cell::RefCell::new(None) };
        }
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            if let Some((id, cached, channel)) = &*last {
                if *id == self.id && **cached == *name {
                    return channel.clone();
                }
            }
            let channel: Arc<str> = self.redis_channel(name).into();
            *last = Some((self.id, name.into(), channel.clone()));
            channel
        })
    }

    /// Called by the registry, under the channel's lock, when `name` gets its first receiver
    /// (`true`) or loses its last (`false`). Never blocks.
    ///
    /// `subscriptions_ready` counts: `changes_issued` is raised before the send and
    /// `subscriptions.confirmed` counts the changes applied, in the channel's FIFO order. A
    /// caller's own changes were sent before it read `changes_issued = n`, so they are among
    /// the first `n` in the queue, and `confirmed >= n` means they are applied.
    pub(super) fn subscription_changed(&self, name: &str, subscribe: bool) {
        self.redis_subscription_changed(self.redis_channel(name), subscribe);
    }

    /// [`subscription_changed`](Self::subscription_changed) of a Redis channel: the bus's
    /// own control channel (K02).
    pub(super) fn redis_subscription_changed(&self, channel: String, subscribe: bool) {
        self.changes_issued.fetch_add(1, AcqRel);
        let change = Change::Subscription { channel, subscribe };
        // The receiver lives as long as the bus's tasks; after close nothing listens.
        let _ = self.changes.send(change);
    }

    /// The outage budget a post to Redis channel `channel` counts against: on a cluster,
    /// its slot's master's (a CRC16 of the name and one load), else the only one.
    #[inline]
    pub(super) fn budget_of(&self, channel: &str) -> u8 {
        if self.slot_budgets.is_empty() {
            return 0;
        }
        let slot = usize::from(connection::slot(channel));
        self.slot_budgets[slot % SLOTS].load(Relaxed)
    }

    /// Posts queued or in flight, and their bytes, over every budget.
    pub(super) fn waiting(&self) -> (u64, u64) {
        self.budgets.iter().fold((0, 0), |(posts, bytes), budget| {
            let (p, b) = budget.waiting();
            (posts + p, bytes + b)
        })
    }

    /// Gives back what settled posts took of their budgets: (budget, posts, bytes).
    pub(super) fn release(&self, charges: impl IntoIterator<Item = (u8, u64, u64)>) {
        for (budget, posts, bytes) in charges {
            let released = &self.budgets[usize::from(budget)].released;
            released.posts.fetch_add(posts, AcqRel);
            released.bytes.fetch_add(bytes, AcqRel);
        }
    }

    /// A post refused with `Backpressure` (`refused`) or accepted. Logs the first refusal
    /// (`warn`) and the first post accepted after refusals (`info`, with how many were
    /// refused), not each post: a full buffer refuses thousands a second. An accepted post
    /// pays one relaxed load while nothing was refused.
    /// On a cluster, per master: the events name the channel.
    pub(super) fn backpressure(&self, budget: &Budget, channel: &str, refused: bool) {
        let refusing = &budget.taken.refusing;
        if refused {
            if refusing.fetch_add(1, Relaxed) == 0 {
                let (waiting, waiting_bytes) = budget.waiting();
                tracing::warn!(
                    target: "evbus",
                    channel = self.local_name(channel),
                    waiting,
                    waiting_bytes,
                    "the outage buffer is full: global posts fail with Backpressure"
                );
            }
        } else if refusing.load(Relaxed) != 0 {
            let refused = refusing.swap(0, Relaxed);
            if refused != 0 {
                tracing::info!(
                    target: "evbus",
                    channel = self.local_name(channel),
                    refused,
                    "the outage buffer takes global posts again"
                );
            }
        }
    }

    pub(super) fn emit(&self, event: BusEvent) {
        self.events.emit(event);
    }

    /// A change of one connection (from [`Redis::watch`](connection::Redis::watch)): emits `Disconnected` when the
    /// first link drops, `Connected` when every link is connected again, `Reconnected` when
    /// every link has also restored its subscriptions (G08).
    pub(super) fn link_changed(&self, link: Link, state: LinkState) {
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
        let restoring = self.links.lock().1 & 2 != 0;
        self.subscriptions.send_if_modified(|s| {
            let changed = s.restoring != restoring;
            s.restoring = restoring;
            changed
        });
        for event in events {
            self.emit(event);
        }
    }

    /// Waits until Redis acknowledged every post made before the call.
    pub(super) async fn flush(&self) -> Result<(), BusError> {
        let last = self.tickets.load(Acquire) - 1;
        if self.reached(last).await {
            Ok(())
        } else {
            Err(BusError::ShutDown)
        }
    }

    /// Waits until ticket `ticket` is settled: Ok when Redis acknowledged it.
    ///
    /// After a shutdown that left it unsettled, the error says which it is: never written
    /// to Redis (so never delivered), or written without an answer (Redis may have delivered
    /// it: sending it again may deliver it twice).
    pub(super) async fn outcome(&self, ticket: u64) -> Result<(), PostError> {
        let mut progress = self.progress.subscribe();
        // Its own ticket, not every one before it: on a cluster an earlier post may wait
        // for a master that is down while this one's master answered.
        let settled = progress
            .wait_for(|p| {
                p.acked >= ticket || p.abandoned || self.settler.lock().is_settled(ticket)
            })
            .await
            .is_ok_and(|p| p.acked >= ticket);
        if !settled && !self.settler.lock().is_settled(ticket) {
            let in_flight = self
                .sending
                .lock()
                .values()
                .any(|tickets| tickets.contains(&ticket));
            let text = if in_flight { UNKNOWN } else { NOT_SENT };
            return Err(PostError::Redis(text.into()));
        }
        match self.take_refusal(ticket) {
            Some(reason) => Err(PostError::Redis(reason)),
            None => Ok(()),
        }
    }

    /// Waits until every ticket up to `ticket` is settled (true), or the bus gave up on
    /// them at shutdown (false).
    pub(super) async fn reached(&self, ticket: u64) -> bool {
        let mut progress = self.progress.subscribe();
        let settled = progress
            .wait_for(|p| p.acked >= ticket || p.abandoned)
            .await;
        settled.is_ok_and(|p| p.acked >= ticket)
    }

    /// The channel name of Redis channel `channel`: without the namespace.
    pub(super) fn local_name<'a>(&self, channel: &'a str) -> &'a str {
        channel
            .strip_prefix(self.namespace.as_str())
            .unwrap_or(channel)
    }

    /// Records that Redis refused to subscribe `channel`, and says so.
    pub(super) fn subscribe_refused(&self, channel: &str, reason: Reason) {
        let text = reason.to_string();
        if self.is_control(channel) {
            // Not a channel of the user's: repair alone is off (gaps are reported missed at
            // once, as without repair; others' requests to this bus go unanswered).
            self.control_refused.store(true, Relaxed);
            tracing::warn!(
                target: "evbus",
                channel,
                reason = %text,
                "Redis refused the bus's repair control channel: repair is off for this bus"
            );
            return;
        }
        self.refused_subscriptions
            .lock()
            .insert(channel.to_string(), reason);
        self.emit(BusEvent::SubscribeRefused {
            channel: self.local_name(channel).to_string(),
            reason: text,
        });
    }

    /// The first wanted channel Redis refused to subscribe, as `subscriptions_ready`'s error.
    pub(super) fn refused_subscription(&self) -> Option<BusError> {
        let refused = self.refused_subscriptions.lock();
        let (channel, reason) = refused.iter().next()?;
        Some(BusError::SubscribeRefused {
            channel: self.local_name(channel).to_string(),
            reason: reason.clone(),
        })
    }

    /// Records that Redis refused `tickets` with `reason`.
    pub(super) fn refuse(&self, tickets: impl IntoIterator<Item = (u64, Reason)>) {
        let mut refused = self.refused.lock();
        refused.extend(tickets);
        self.refused_len.store(refused.len(), Release);
    }

    /// Takes the refusal of `ticket`, if Redis refused it.
    fn take_refusal(&self, ticket: u64) -> Option<Reason> {
        if self.refused_len.load(Acquire) == 0 {
            return None;
        }
        let mut refused = self.refused.lock();
        let reason = refused.remove(&ticket);
        self.refused_len.store(refused.len(), Release);
        reason
    }
}

impl Settlement for State {
    fn settled(self: Arc<Self>, number: u64) -> BoxFuture<'static, Result<(), PostError>> {
        Box::pin(async move { self.outcome(number).await })
    }

    fn forget(&self, number: u64) {
        self.take_refusal(number);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Ticket;
    use crate::wire::WireFormat;
    use std::collections::HashMap;

    #[test]
    fn refusals_are_kept_only_while_their_deliveries_live() {
        let codec = Arc::new(Codec::new(WireFormat::Native, 1 << 20, HashMap::new()));
        let (state, _changes) = State::new(
            codec,
            String::new(),
            10,
            1 << 20,
            1 << 20,
            Arc::new(EventHub::new()),
            false,
        );
        let state = Arc::new(state);
        // A Redis that refuses every PUBLISH (an ACL without +publish, OOM): 1,000 posts.
        let tickets: Vec<Ticket> = (1..=1000)
            .map(|number| Ticket {
                number,
                settlement: state.clone(),
            })
            .collect();
        state.refuse((1..=1000).map(|t| (t, Reason::new("NOPERM this user has no permissions"))));
        assert_eq!(state.refused.lock().len(), 1000);
        // Their Deliveries dropped unread: nothing is kept.
        drop(tickets);
        assert_eq!(state.refused.lock().len(), 0);
        assert_eq!(state.refused_len.load(Relaxed), 0);
    }
}
