//! `MessageStream`: a bounded, drop-oldest buffer per stream, and its waker.
//!
//! # Algorithm
//!
//! Producers are posting threads (any number), the consumer is the stream. The buffer is
//! crossbeam's `SegQueue`, an MPMC queue (lock-free but for the waits under
//! [Progress](#progress)) made of 31-slot blocks allocated on demand and freed as they are
//! consumed, so a busy stream holds what it buffers, not its capacity. The queue itself, its
//! head and tail (each padded to 128 bytes: 256 bytes), is allocated by the stream's first
//! push and installed in a `once_cell::race::OnceBox`, so a stream that never received a
//! message holds none of it; once installed, it stays until the stream is dropped. A separate
//! counter `len` bounds the buffer:
//!
//! - push: get the queue (install it, on the first push), `queue.push(m)`, then
//!   `len.fetch_add(1)`; if `len` already held the capacity, the
//!   producer pops the *oldest* message itself, counts it in `missed` (L11) and decrements
//!   `len`. Every pushed message is popped exactly once, by the consumer (yielded) or by a
//!   producer (missed): yielded + missed == pushed. While pushes race, the bound is
//!   approximate: with several producers the buffer can exceed its capacity by at most the
//!   number of pushes in flight, and a message the consumer is just taking still counts until
//!   it is taken, so a push racing with that can evict one message early. Because `len` follows
//!   the queue, it can be below zero for a moment (the consumer took a message whose push has
//!   not counted it yet); a push that finds it so does not evict.
//! - wake: the consumer sets `parked`, then re-checks through `len` with a read-modify-write
//!   (`fetch_add(0)`) and pops once more before it sleeps; a producer reads `parked` after its
//!   `fetch_add` and wakes only a parked consumer (one `swap`), so a stream that is being
//!   drained costs producers no wake-up at all. Every update of `len` is an `AcqRel`
//!   read-modify-write, so `len`'s modification order decides: a push counted before the
//!   re-check happens-before it (its installation of the queue too, if it was the first), and
//!   the pop finds the message (or a producer evicted it); a
//!   push counted after it acquires the consumer's `parked` store, finds the flag set and wakes
//!   the consumer. The consumer never waits for an evicting producer to finish. (`parked`
//!   itself needs no ordering. The argument uses no `SeqCst` total order, which loom does not
//!   model, so the `loom_stream_*` models below check it.)
//! - end: the sink (what the channel's snapshot holds) closes the stream when it is dropped,
//!   that is, when the stream was removed from its channel *and* the last post that could still
//!   push to it is done. So nothing is pushed after the end, and the consumer yields everything
//!   buffered before it returns `None` (S02). The consumer checks `closed` after registering its
//!   waker: a close before the registration is visible (`register` acquires what `wake`
//!   released), one after it wakes the consumer.
//!
//! # Progress
//!
//! Getting the queue is one `Acquire` load once it is installed. Before that, a push allocates
//! a queue and installs it with one compare-and-swap from null; a push whose CAS fails, because
//! another push installed one first, frees its own and uses that one: no push waits for another
//! there, and the consumer, finding none, has nothing to pop. (A `OnceLock` would make racing
//! first pushes wait for the one initializing it.)
//!
//! A push is lock-free except in two windows, both inside `SegQueue`, where it waits for
//! another thread. A `SegQueue` push reserves a slot with a CAS on the tail (retried only when
//! another push won) and then writes the message into it; a pop reserves the head slot the
//! same way and then reads it. The waits spin with `Backoff::snooze` (exponential spinning,
//! then `thread::yield_now`):
//!
//! - At a block boundary: the push that reserved the last of a block's 31 slots installs the
//!   next block (allocated before its CAS) with two stores after it, and until they land every
//!   other push to this stream waits for it. If that producer is preempted in between, the
//!   others wait until it runs again. This is once per 31 messages of a stream and a few
//!   instructions long, but a push is not lock-free in the strict sense there.
//! - In the eviction pop of a push to a full buffer: a pop waits until the slot it reserved
//!   has been written, so an evicting push waits for a producer preempted between its CAS and
//!   its write of the oldest slot. A pop that reserves the last slot of a block also waits
//!   until the next block is linked (a store of the push that installs it), and one that finds
//!   the head at a block's end waits for the pop that is moving it on (the consumer's or
//!   another eviction's).
//!
//! The rest of a push is wait-free: `fetch_add`s, a load, and, for a parked consumer, one
//! `swap` and an `AtomicWaker` wake that never waits. Besides, a push allocates: the queue on a
//! stream's first push, and a block once per 31 messages (the allocator's guarantee), and waking a parked consumer calls its
//! executor's `Waker`, which is the executor's business: tokio's takes its scheduler's mutex
//! when woken from outside the runtime's workers. The consumer's pops wait for producers as
//! above; the consumer never waits for an evicting producer (see wake).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crossbeam_queue::SegQueue;
use futures_core::Stream;
use once_cell::race::OnceBox;

use crate::error::BusError;
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, AtomicWaker, Ordering::*};

/// What the stream and its sink share.
struct Buffer<M> {
    /// Allocated by the first push (see the module docs): a `SegQueue` is 256 bytes of
    /// cache-padded head and tail, which an idle stream does not need.
    queue: OnceBox<SegQueue<Arc<M>>>,
    len: AtomicUsize,
    capacity: usize,
    missed: AtomicU64,
    parked: AtomicBool,
    closed: AtomicBool,
    waker: AtomicWaker,
}

impl<M> Buffer<M> {
    fn wake_if_parked(&self) {
        if self.parked.load(Relaxed) && self.parked.swap(false, Relaxed) {
            self.waker.wake();
        }
    }
}

/// Whether a push that found `counted` messages in `len` must evict the oldest.
///
/// A push counts its message after queueing it, and a pop after taking one, so the consumer
/// can take a message before its push counted it: `len` is then below zero for a moment,
/// wrapped to a huge value. That is not a full buffer.
#[inline]
fn is_full(counted: usize, capacity: usize) -> bool {
    counted >= capacity && counted <= isize::MAX as usize
}

/// The producer side, held by the channel's snapshots.
pub(crate) struct StreamSink<M>(Arc<Buffer<M>>);

impl<M> StreamSink<M> {
    /// Queues `message`; returns true when the buffer was full and dropped its oldest (L11).
    #[inline]
    pub(crate) fn push(&self, message: Arc<M>) -> bool {
        let shared = &*self.0;
        let queue = shared.queue.get_or_init(|| Box::new(SegQueue::new()));
        queue.push(message);
        let mut dropped = false;
        if is_full(shared.len.fetch_add(1, AcqRel), shared.capacity) {
            if let Some(oldest) = queue.pop() {
                shared.len.fetch_sub(1, AcqRel);
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
        // happens-before this drop (`Arc`'s release/acquire on its count), and so before the
        // consumer's `Acquire` load that sees this store.
        self.0.closed.store(true, Release);
        self.0.parked.store(false, Relaxed);
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
    /// Unregisters the stream (and whatever else it owns) when dropped; `None` until
    /// registered. Opaque here: the facade decides what a stream owns.
    _registration: Option<Box<dyn Registration>>,
}

impl<M: Send + Sync + 'static> MessageStream<M> {
    /// A new stream and the sink to register for it.
    pub(crate) fn new(capacity: usize) -> (StreamSink<M>, Self) {
        let shared = Arc::new(Buffer {
            queue: OnceBox::new(),
            len: AtomicUsize::new(0),
            capacity,
            missed: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        (
            StreamSink(shared.clone()),
            MessageStream {
                shared,
                _registration: None,
            },
        )
    }

    /// Ties the stream to its registration, so that dropping it unregisters it.
    pub(crate) fn registered(mut self, registration: Option<Box<dyn Registration>>) -> Self {
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
        let message = self.shared.queue.get()?.pop()?;
        self.shared.len.fetch_sub(1, AcqRel);
        Some(message)
    }

    /// Returns once this stream receives global messages: every subscription change its bus
    /// had issued when the wait begins, this stream's own SUBSCRIBE included, is confirmed by
    /// Redis (G04), so a global post made afterwards, from any bus, reaches it. A readiness
    /// wait for one stream, where [`Bus::subscriptions_ready`](crate::Bus::subscriptions_ready)
    /// waits for the whole bus; it counts the changes the same way, so it also waits for the
    /// ones other registrations issued before it.
    ///
    /// On a bus without Redis it returns at once: a local post reaches the stream as soon as
    /// it exists. It also returns at once (with `Ok`) for a stream that was made inert by a
    /// closed session: that stream has ended.
    ///
    /// # Waiting
    ///
    /// While Redis is unreachable this waits, with no bound of its own (the bus resubscribes
    /// after the reconnect). It is cancel-safe: bound it with a timeout, and answer a request
    /// that it times out for with 503 (see [`BusError::http_status`]):
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use evbus::Bus;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let bus = Bus::local();
    /// let stream = bus.session().into_stream::<String>("chat");
    /// match tokio::time::timeout(Duration::from_secs(5), stream.subscribed()).await {
    ///     Ok(Ok(())) => { /* serve the stream */ }
    ///     Ok(Err(error)) => assert_eq!(error.http_status(), 503), // the bus shut down
    ///     Err(_elapsed) => { /* Redis unreachable for 5 s: answer 503 */ }
    /// }
    /// # });
    /// ```
    ///
    /// # Errors
    ///
    /// [`BusError::ShutDown`] when the bus was shut down before the wait, or shuts down
    /// during it (then once the shutdown is done, within its bound, also with Redis
    /// unreachable).
    pub async fn subscribed(&self) -> Result<(), BusError> {
        match &self._registration {
            Some(registration) => registration.subscribed().await,
            None => Ok(()),
        }
    }
}

/// What a registered stream owns besides its buffer, opaque to the core: dropping it
/// unregisters the stream (and drops whatever else the facade gave the stream to hold, such
/// as the session of [`Session::into_stream`](crate::Session::into_stream)). The facade
/// implements it; the core only holds it and asks it when the registration is in effect.
pub(crate) trait Registration: Send + Sync {
    /// Resolves once the stream's channel subscription, and every change issued before it
    /// by the same bus, is in effect ([`MessageStream::subscribed`]).
    fn subscribed(&self) -> Pin<Box<dyn Future<Output = Result<(), BusError>> + Send + '_>>;
}

impl<M: Send + Sync + 'static> Stream for MessageStream<M> {
    type Item = Arc<M>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Arc<M>>> {
        let this = self.get_mut();
        if let Some(message) = this.pop() {
            return Poll::Ready(Some(message));
        }
        if this.shared.closed.load(Acquire) {
            // Closed means no producer is left, and every push happened before the close.
            return Poll::Ready(this.pop());
        }
        this.shared.waker.register(cx.waker());
        this.shared.parked.store(true, Relaxed);
        // Re-check after parking, through `len`: a push counted before this read-modify-write
        // is visible to the pop below; one counted after it sees `parked` and wakes us.
        this.shared.len.fetch_add(0, AcqRel);
        if let Some(message) = this.pop() {
            this.shared.parked.store(false, Relaxed);
            return Poll::Ready(Some(message));
        }
        // A close after the registration wakes us; one before it is visible here.
        if this.shared.closed.load(Acquire) {
            this.shared.parked.store(false, Relaxed);
            return Poll::Ready(this.pop());
        }
        Poll::Pending
    }
}

impl<M> std::fmt::Debug for MessageStream<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageStream")
            .field("buffered", &(self.shared.len.load(Relaxed) as isize).max(0))
            .field("missed", &self.shared.missed.load(Relaxed))
            .field("closed", &self.shared.closed.load(Relaxed))
            .finish()
    }
}

/// Models of the handshake, run by `RUSTFLAGS="--cfg evbus_loom" cargo test --lib loom_`.
///
/// They run the real `push`, `poll_next` and sink drop. loom cannot see inside `SegQueue`, nor
/// the `OnceBox` that holds it: to it installing the queue, a queue push or a pop is one step,
/// in one global order. So these check the handshake's own
/// atomics (`len`, `parked`, `closed` and the waker), not the queue's orderings.
#[cfg(all(test, evbus_loom))]
mod loom_tests {
    use super::*;

    use loom::future::block_on;
    use loom::thread;

    /// A producer pushes two messages and keeps the stream open; the consumer waits for a
    /// message. There is always one to yield, so a lost wake-up would leave the consumer
    /// asleep for good, which loom reports as a deadlock. With a buffer of one, the second push
    /// evicts the oldest counted message; with two, nothing is evicted and the wake-up rests on
    /// the first push alone. Every push is yielded or missed, in order (L11).
    #[test]
    fn loom_stream_wakes_its_parked_consumer() {
        for capacity in [1, 2] {
            crate::sync::model(move || {
                let (sink, mut stream) = MessageStream::<u32>::new(capacity);
                let producer = thread::spawn(move || {
                    let dropped = [sink.push(Arc::new(1)), sink.push(Arc::new(2))];
                    (sink, dropped.iter().filter(|&&d| d).count() as u64)
                });
                let mut yielded = vec![*block_on(stream.recv()).expect("the stream is open")];
                let (_sink, dropped) = producer.join().unwrap();
                yielded.extend(std::iter::from_fn(|| stream.try_recv()).map(|m| *m));
                assert_eq!(yielded.len() as u64 + stream.missed(), 2);
                assert_eq!(stream.missed(), dropped);
                assert!(yielded.windows(2).all(|w| w[0] < w[1]), "{yielded:?}");
            });
        }
    }

    /// Reads `stream` to its end; returns what it yielded.
    fn drain(stream: &mut MessageStream<u32>) -> Vec<u32> {
        let mut yielded = Vec::new();
        while let Some(message) = block_on(stream.recv()) {
            yielded.push(*message);
        }
        yielded
    }

    /// A producer pushes and ends the stream (drops its sink) while the consumer reads to the
    /// end: the consumer wakes for the end, and yields the message before it (S02).
    #[test]
    fn loom_stream_ends_after_its_last_message() {
        crate::sync::model(|| {
            let (sink, mut stream) = MessageStream::<u32>::new(1);
            let producer = thread::spawn(move || {
                sink.push(Arc::new(1));
            });
            assert_eq!(drain(&mut stream), [1]);
            producer.join().unwrap();
        });
    }

    /// Two producers push one message each into a buffer of two: the buffer never holds more
    /// than two, so nothing may be dropped, and the consumer gets both.
    #[test]
    fn loom_stream_drops_nothing_below_its_capacity() {
        crate::sync::model(|| {
            let (sink, mut stream) = MessageStream::<u32>::new(2);
            let sink = Arc::new(sink);
            let producers: Vec<_> = (1..=2)
                .map(|message| {
                    let sink = sink.clone();
                    thread::spawn(move || sink.push(Arc::new(message)))
                })
                .collect();
            drop(sink);
            let yielded = drain(&mut stream);
            for producer in producers {
                assert!(
                    !producer.join().unwrap(),
                    "a push below capacity dropped a message"
                );
            }
            assert_eq!(stream.missed(), 0);
            assert_eq!(yielded.len(), 2);
        });
    }
}
