//! `MessageStream`: a bounded, drop-oldest buffer per stream, and its waker.
//!
//! # Algorithm
//!
//! Producers are posting threads (any number), the consumer is the stream. The buffer is
//! crossbeam's `SegQueue`, a lock-free MPMC queue made of 31-slot blocks allocated on demand and
//! freed as they are consumed, so an idle stream holds no buffer at all and a busy one holds
//! what it buffers, not its capacity. A separate counter `len` bounds it:
//!
//! - push: `queue.push(m)`, then `len.fetch_add(1)`; if that made `len` exceed the capacity,
//!   the producer pops the *oldest* message itself, counts it in `missed` (L11) and
//!   decrements `len`. Every pushed message is popped exactly once, by the consumer (yielded)
//!   or by a producer (missed): yielded + missed == pushed. With several producers racing,
//!   the buffer can exceed its capacity by at most the number of posts in flight.
//! - wake: the consumer sets `parked` before it sleeps; a producer reads `parked` after its
//!   `fetch_add` and wakes only a parked consumer (one `swap`), so a stream that is being
//!   drained costs producers no wake-up at all. Both `parked` accesses and `len` use `SeqCst`:
//!   either the producer sees `parked`, or the consumer's re-check of `len` sees the push.
//! - end: the sink (what the channel's snapshot holds) closes the stream when it is dropped,
//!   that is, when the stream was removed from its channel *and* the last post that could still
//!   push to it is done. So nothing is pushed after the end, and the consumer yields everything
//!   buffered before it returns `None` (S02).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crossbeam_queue::SegQueue;
use futures_core::Stream;

use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, AtomicWaker, Ordering::*};

/// What the stream and its sink share.
struct Buffer<M> {
    queue: SegQueue<Arc<M>>,
    len: AtomicUsize,
    capacity: usize,
    missed: AtomicU64,
    parked: AtomicBool,
    closed: AtomicBool,
    waker: AtomicWaker,
}

impl<M> Buffer<M> {
    fn wake_if_parked(&self) {
        if self.parked.load(SeqCst) && self.parked.swap(false, SeqCst) {
            self.waker.wake();
        }
    }
}

/// The producer side, held by the channel's snapshots.
pub(crate) struct StreamSink<M>(Arc<Buffer<M>>);

impl<M> StreamSink<M> {
    /// Queues `message`; returns true when the buffer was full and dropped its oldest (L11).
    #[inline]
    pub(crate) fn push(&self, message: Arc<M>) -> bool {
        let shared = &*self.0;
        shared.queue.push(message);
        let mut dropped = false;
        if shared.len.fetch_add(1, SeqCst) >= shared.capacity {
            if let Some(oldest) = shared.queue.pop() {
                shared.len.fetch_sub(1, SeqCst);
                shared.missed.fetch_add(1, Relaxed);
                dropped = true;
                drop(oldest);
            }
        }
        shared.wake_if_parked();
        dropped
    }
}

impl<M> Drop for StreamSink<M> {
    fn drop(&mut self) {
        // This is the last reference to the sink: every push through it, on any thread,
        // happens-before this drop (`Arc`'s release/acquire on its count), and this `SeqCst`
        // store happens-before the consumer's load that sees it.
        self.0.closed.store(true, SeqCst);
        self.0.parked.store(false, SeqCst);
        self.0.waker.wake();
    }
}

/// An async stream of the messages posted on one channel: `Stream<Item = Arc<M>>`.
///
/// Made by [`Messages::create_stream`](crate::Messages::create_stream). Every stream of a
/// channel has a local post's message queued before `post_message` returns, and yields messages
/// in post order per posting thread (L03). Its buffer holds the bus's `stream_capacity`
/// messages; when it is full, the oldest is dropped and counted in [`missed`](Self::missed)
/// and in [`Stats::stream_dropped`](crate::Stats::stream_dropped), and the poster is not slowed:
/// every message is either yielded or counted, delivered + missed == sent (L11). Dropping the
/// stream unregisters it: nothing of it stays reachable from the bus (L12).
///
/// The stream ends (`None`) when its session closes or the bus shuts down, after it yielded
/// what it had buffered (S02). It works with any executor; waking costs a producer nothing
/// unless this stream is waiting.
///
/// Read it with [`recv`](Self::recv) (or [`try_recv`](Self::try_recv) without waiting), or
/// as a `futures::Stream` with any stream combinator.
///
/// ```
/// # use evbus::{Bus, MessageScope};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let bus = Bus::local();
/// let session = bus.session();
/// let mut stream = session.messages().create_stream::<String>("news");
/// bus.messages().post_message("news", "hello".to_string(), MessageScope::Local)?;
/// session.close();
/// assert_eq!(stream.recv().await.as_deref().map(String::as_str), Some("hello"));
/// assert!(stream.recv().await.is_none()); // the session closed: the stream ended
/// # Ok::<(), evbus::PostError>(())
/// # }).unwrap();
/// ```
#[must_use = "a stream receives nothing unless it is read; dropping it unregisters it"]
pub struct MessageStream<M> {
    shared: Arc<Buffer<M>>,
    /// Unregisters the stream (and whatever else it owns) when dropped; `None` for an inert
    /// stream. Opaque here: the facade decides what a stream owns.
    _registration: Option<Box<dyn Send + Sync>>,
}

impl<M: Send + Sync + 'static> MessageStream<M> {
    /// A new stream and the sink to register for it.
    pub(crate) fn new(capacity: usize) -> (Arc<StreamSink<M>>, Self) {
        let shared = Arc::new(Buffer {
            queue: SegQueue::new(),
            len: AtomicUsize::new(0),
            capacity,
            missed: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        (
            Arc::new(StreamSink(shared.clone())),
            MessageStream {
                shared,
                _registration: None,
            },
        )
    }

    /// Ties the stream to its registration, so that dropping it unregisters it.
    pub(crate) fn registered(mut self, registration: Option<Box<dyn Send + Sync>>) -> Self {
        self._registration = registration;
        self
    }

    /// Messages dropped because this stream's buffer was full (L11).
    pub fn missed(&self) -> u64 {
        self.shared.missed.load(Relaxed)
    }

    /// The next message; `None` once the stream has ended (its session closed, or the bus
    /// shut down) and everything it buffered was yielded (S02).
    ///
    /// Cancel-safe: a message is taken only when this returns it, so dropping the future
    /// (in a `select!` or a timeout) loses nothing.
    pub async fn recv(&mut self) -> Option<Arc<M>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The next message if one is buffered now; `None` when none is (whether or not the
    /// stream has ended). Never waits.
    pub fn try_recv(&mut self) -> Option<Arc<M>> {
        self.pop()
    }

    fn pop(&self) -> Option<Arc<M>> {
        let message = self.shared.queue.pop()?;
        self.shared.len.fetch_sub(1, SeqCst);
        Some(message)
    }
}

impl<M: Send + Sync + 'static> Stream for MessageStream<M> {
    type Item = Arc<M>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Arc<M>>> {
        let this = self.get_mut();
        if let Some(message) = this.pop() {
            return Poll::Ready(Some(message));
        }
        if this.shared.closed.load(SeqCst) {
            // Closed means no producer is left, and every push happened before the close.
            return Poll::Ready(this.pop());
        }
        this.shared.waker.register(cx.waker());
        this.shared.parked.store(true, SeqCst);
        // Re-check after parking: a push that did not see `parked` is visible in `len`.
        if this.shared.len.load(SeqCst) > 0 || this.shared.closed.load(SeqCst) {
            this.shared.parked.store(false, SeqCst);
            if let Some(message) = this.pop() {
                return Poll::Ready(Some(message));
            }
            if this.shared.closed.load(SeqCst) {
                return Poll::Ready(this.pop());
            }
            // `len` counts a message a producer is just evicting: try again shortly.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl<M> std::fmt::Debug for MessageStream<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageStream")
            .field("buffered", &self.shared.len.load(Relaxed))
            .field("missed", &self.shared.missed.load(Relaxed))
            .field("closed", &self.shared.closed.load(Relaxed))
            .finish()
    }
}
