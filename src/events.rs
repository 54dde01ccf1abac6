//! Bus events: connection changes and what went wrong with global messages, as a stream.
//!
//! Each [`Bus::events`](crate::Bus::events) call makes a new [`BusEvents`] that sees the
//! events emitted after its creation. Its buffer is bounded ([`EVENT_BUFFER`] events, the
//! oldest dropped) so a forgotten `BusEvents` never grows without bound; a reader that fell
//! behind is told how many it lost, as tokio's broadcast receivers are: the next item is
//! [`BusEvent::Lagged`], and [`BusEvents::missed`] counts them all. Events are rare, so this
//! side uses a mutex; it is never on the post path. A local bus emits none; every
//! `BusEvents` ends when the bus shuts down.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use futures_core::Stream;
use parking_lot::Mutex;

/// How many undelivered events one [`BusEvents`] keeps before dropping the oldest.
pub const EVENT_BUFFER: usize = 1024;

/// Something that happened to the bus's Redis connection or to global messages.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusEvent {
    /// The Redis connections are up again after a [`Disconnected`](BusEvent::Disconnected);
    /// [`Reconnected`](BusEvent::Reconnected) follows once subscriptions are restored.
    /// (`build` returns connected, so a new bus does not emit it.)
    Connected,
    /// A Redis connection was lost; the bus reconnects by itself.
    Disconnected,
    /// The bus reconnected and restored its subscriptions: after a reconnect every channel
    /// with local receivers is subscribed again, without any call from the user (G08).
    Reconnected,
    /// Messages from `origin` were lost between Redis and this bus: a gap in its sequence
    /// numbers (G06). Also counted in [`Stats::global_missed`](crate::Stats).
    MessagesMissed {
        /// The origin bus id, as 32 lowercase hex digits.
        origin: String,
        /// How many messages were lost.
        count: u64,
    },
    /// A payload received on `channel` was refused and skipped: it did not decode, named an
    /// unknown class, or exceeded `max_message_bytes` (G09). Also counted in
    /// [`Stats::global_decode_errors`](crate::Stats). The subscription keeps working.
    DecodeFailed {
        /// The channel it came on (without the namespace).
        channel: String,
        /// Why it was refused.
        reason: String,
    },
    /// A frame received on `channel` was refused as not authentic: its MAC is missing or
    /// wrong (with [`BusBuilder::signing_key`](crate::BusBuilder)), or it claims this bus's
    /// own origin with a sequence number this bus never sent. Also counted in
    /// [`Stats::global_rejected`](crate::Stats). Nothing of it was delivered.
    Rejected {
        /// The channel it came on (without the namespace).
        channel: String,
        /// Why it was refused.
        reason: String,
    },
    /// Redis refused to subscribe `channel` (an ACL that does not allow it). The other
    /// channels are not held up; [`Bus::subscriptions_ready`](crate::Bus::subscriptions_ready)
    /// returns [`BusError::SubscribeRefused`](crate::BusError) naming it while it has
    /// receivers.
    SubscribeRefused {
        /// The channel (without the namespace).
        channel: String,
        /// Redis's answer.
        reason: String,
    },
    /// This [`BusEvents`] fell behind: its buffer was full and it dropped its `count` oldest
    /// events. Each `BusEvents` has its own; the next item after it is the oldest event kept.
    Lagged {
        /// How many events were dropped since the last `Lagged`.
        count: u64,
    },
    /// On a Redis Cluster, the slot of `channel` moved to the master `to` (a resharding, or
    /// a replica promoted after its master failed), and the bus subscribed it there again by
    /// itself (C03, C04). Messages posted between the move and the new subscription are
    /// reported as [`MessagesMissed`](BusEvent::MessagesMissed) when the next message of
    /// their origin shows the gap.
    Resubscribed {
        /// The channel (without the namespace).
        channel: String,
        /// The master that owns its slot now, as `host:port`.
        to: String,
    },
}

impl fmt::Display for BusEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusEvent::Connected => f.write_str("connected to Redis again"),
            BusEvent::Disconnected => f.write_str("lost a Redis connection; reconnecting"),
            BusEvent::Reconnected => f.write_str("reconnected to Redis; subscriptions restored"),
            BusEvent::MessagesMissed { origin, count } => {
                write!(f, "{count} global messages from {origin} were lost")
            }
            BusEvent::DecodeFailed { channel, reason } => {
                write!(f, "a message on {channel:?} was refused: {reason}")
            }
            BusEvent::Rejected { channel, reason } => {
                write!(
                    f,
                    "a frame on {channel:?} was rejected as not authentic: {reason}"
                )
            }
            BusEvent::SubscribeRefused { channel, reason } => {
                write!(f, "Redis refused to subscribe {channel:?}: {reason}")
            }
            BusEvent::Lagged { count } => {
                write!(f, "this event reader fell behind and lost {count} events")
            }
            BusEvent::Resubscribed { channel, to } => {
                write!(f, "the slot of {channel:?} moved; subscribed again on {to}")
            }
        }
    }
}

impl BusEvent {
    /// Emits the event as a `tracing` event of target `evbus`, with its fields structured
    /// (`channel`, `origin`, `count`, `reason`) and at the level an operator expects: a loss,
    /// a refused payload or a dropped connection is `warn`, a subscription Redis refuses
    /// (which stays refused until the ACL changes) `error`, a recovery `info`.
    fn trace(&self) {
        use tracing::{error, info, warn};
        match self {
            BusEvent::Connected => info!(target: "evbus", "{self}"),
            BusEvent::Disconnected => warn!(target: "evbus", "{self}"),
            BusEvent::Reconnected => info!(target: "evbus", "{self}"),
            BusEvent::MessagesMissed { origin, count } => {
                warn!(target: "evbus", origin = %origin, count, "{self}");
            }
            BusEvent::DecodeFailed { channel, reason } => {
                warn!(target: "evbus", channel = %channel, reason = %reason, "{self}");
            }
            BusEvent::Rejected { channel, reason } => {
                warn!(target: "evbus", channel = %channel, reason = %reason, "{self}");
            }
            BusEvent::SubscribeRefused { channel, reason } => {
                error!(target: "evbus", channel = %channel, reason = %reason, "{self}");
            }
            BusEvent::Resubscribed { channel, to } => {
                info!(target: "evbus", channel = %channel, to = %to, "{self}");
            }
            // A reader's own lag: the reader logs it if it wants; the bus lost nothing.
            BusEvent::Lagged { .. } => {}
        }
    }
}

struct Queue {
    buffer: Mutex<Buffer>,
    waker: AtomicWaker,
}

#[derive(Default)]
struct Buffer {
    events: VecDeque<BusEvent>,
    /// Dropped since the last `Lagged` was yielded.
    lagged: u64,
    /// Dropped in all.
    missed: u64,
    closed: bool,
}

/// The bus's side: where events are emitted.
pub(crate) struct EventHub {
    /// `None` once closed.
    queues: Mutex<Option<Vec<Weak<Queue>>>>,
}

impl EventHub {
    pub(crate) fn new() -> Self {
        EventHub {
            queues: Mutex::new(Some(Vec::new())),
        }
    }

    pub(crate) fn subscribe(&self) -> BusEvents {
        let queue = Arc::new(Queue {
            buffer: Mutex::new(Buffer::default()),
            waker: AtomicWaker::new(),
        });
        match &mut *self.queues.lock() {
            Some(queues) => {
                queues.retain(|q| q.strong_count() > 0);
                queues.push(Arc::downgrade(&queue));
            }
            None => queue.buffer.lock().closed = true,
        }
        BusEvents { queue }
    }

    /// Hands `event` to every live `BusEvents`, and to `tracing` ([`BusEvent::trace`]).
    pub(crate) fn emit(&self, event: BusEvent) {
        event.trace();
        let queues = self.queues.lock();
        for queue in queues.iter().flatten().filter_map(Weak::upgrade) {
            let mut buffer = queue.buffer.lock();
            if buffer.events.len() == EVENT_BUFFER {
                buffer.events.pop_front();
                buffer.lagged += 1;
                buffer.missed += 1;
            }
            buffer.events.push_back(event.clone());
            drop(buffer);
            queue.waker.wake();
        }
    }

    /// Ends every `BusEvents` after what it buffered.
    pub(crate) fn close(&self) {
        let queues = self.queues.lock().take();
        for queue in queues.into_iter().flatten().filter_map(|q| q.upgrade()) {
            queue.buffer.lock().closed = true;
            queue.waker.wake();
        }
    }
}

/// A stream of [`BusEvent`]s, from [`Bus::events`](crate::Bus::events). Ends when the bus
/// shuts down.
///
/// It keeps up to [`EVENT_BUFFER`] events that were not read yet; past that it drops the
/// oldest, and the next item read is [`BusEvent::Lagged`] with how many (never silent).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let bus = evbus::Bus::local();
/// let mut events = bus.events();
/// assert_eq!(events.try_recv(), None); // nothing happened yet
/// bus.shutdown().await?;
/// assert_eq!(events.recv().await, None); // the bus shut down: the stream ended
/// # Ok::<(), evbus::BusError>(())
/// # }).unwrap();
/// ```
#[must_use = "a BusEvents receives nothing unless it is read"]
pub struct BusEvents {
    queue: Arc<Queue>,
}

impl BusEvents {
    /// The next event; `None` once the bus has shut down and every buffered event was read.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Option<BusEvent> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The next event if one is buffered now; `None` when none is. Never waits.
    pub fn try_recv(&mut self) -> Option<BusEvent> {
        self.queue.buffer.lock().next()
    }

    /// Events this reader lost because it fell behind (its buffer was full), in all.
    pub fn missed(&self) -> u64 {
        self.queue.buffer.lock().missed
    }
}

impl Buffer {
    /// `Lagged` first if events were dropped, then the oldest event kept.
    fn next(&mut self) -> Option<BusEvent> {
        if self.lagged > 0 {
            let count = std::mem::take(&mut self.lagged);
            return Some(BusEvent::Lagged { count });
        }
        self.events.pop_front()
    }
}

impl Stream for BusEvents {
    type Item = BusEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BusEvent>> {
        let queue = &self.queue;
        queue.waker.register(cx.waker());
        let mut buffer = queue.buffer.lock();
        match buffer.next() {
            Some(event) => Poll::Ready(Some(event)),
            None if buffer.closed => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

impl std::fmt::Debug for BusEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusEvents").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(events: &mut BusEvents) -> Poll<Option<BusEvent>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(events).poll_next(&mut cx)
    }

    #[test]
    fn events_are_bounded_per_subscriber_and_end_on_close() {
        let hub = EventHub::new();
        let mut early = hub.subscribe();
        hub.emit(BusEvent::Connected);
        let mut late = hub.subscribe();
        for _ in 0..EVENT_BUFFER + 5 {
            hub.emit(BusEvent::Disconnected);
        }
        // `early` lost its oldest (Connected) and five more, and says so first; then it
        // holds exactly EVENT_BUFFER.
        assert_eq!(
            next(&mut early),
            Poll::Ready(Some(BusEvent::Lagged { count: 6 }))
        );
        assert_eq!(early.missed(), 6);
        let mut seen = 0;
        while let Poll::Ready(Some(event)) = next(&mut early) {
            assert_eq!(event, BusEvent::Disconnected);
            seen += 1;
        }
        assert_eq!(seen, EVENT_BUFFER);
        assert_eq!(
            next(&mut late),
            Poll::Ready(Some(BusEvent::Lagged { count: 5 }))
        );
        assert_eq!(next(&mut late), Poll::Ready(Some(BusEvent::Disconnected)));
        assert_eq!(late.missed(), 5);
        hub.close();
        assert!(matches!(next(&mut early), Poll::Ready(None)));
        assert!(matches!(next(&mut hub.subscribe()), Poll::Ready(None)));
    }
}
