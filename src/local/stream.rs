//! `MessageStream`: a cursor in its group's ring, the sink that joins and leaves the ring, and
//! the waiting streams' wake-up.
//!
//! # Algorithm
//!
//! A channel's streams of one message type share one [`Ring`] ([`crate::local::ring`]): a post
//! writes its message once, and each stream reads it through its own cursor. The registry
//! *binds* a stream's sink when it adds the stream to its group: the sink joins the ring, which
//! fixes the position the stream reads from; the stream takes the ring and that cursor when it
//! is registered. Removing the stream from its group (a session close, `remove`, the stream's
//! drop, a shutdown) makes the sink leave, which fixes where the stream ends; the stream then
//! yields what it can still read before that position and returns `None` (S02).
//!
//! # Waiting
//!
//! A stream that finds nothing registers its waker, puts itself on its group's stack of
//! waiting streams (an intrusive Treiber stack: one CAS to push, one swap to take it all), and
//! then marks the slot of its next position `WAITING` ([`Ring::wait`]). The write that fills
//! that slot sees the mark in the same word, takes the whole stack, and wakes every stream on
//! it: the push happened before the mark, which the write read, so it is on the stack the write
//! takes. A stream woken for another position reads, finds nothing, and waits again. Leaving
//! the ring wakes the stream directly. A drained stream costs a post nothing: no mark, no
//! stack.
//!
//! # Progress
//!
//! A post's write is lock-free ([`crate::local::ring`], § Progress); taking the stack is one
//! swap, and waking each stream is its `AtomicWaker`'s wake, which never waits (what its
//! executor's `Waker` does is the executor's business: tokio's takes its scheduler's mutex
//! when woken from outside the runtime's workers). A ring's slots are allocated by the first
//! post that has a stream to write for; an idle stream holds none.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::ptr;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures_core::Stream;
use parking_lot::Mutex;

use super::barrier;
use super::ring::{Cursor, Next, Ring, Written};
use crate::error::BusError;
use crate::sync::{fence, yield_now, AtomicBool, AtomicPtr, AtomicU64, AtomicWaker, Ordering::*};

/// In `Shared::ended`: the sink is leaving the ring; the stream takes no more positions.
const LEFT: u64 = 1;
/// In `Shared::ended`, with [`LEFT`]: the leave has taken what the stream had left to read.
const KEPT: u64 = 2;
/// In `Shared::ended`, from `bind` on: this process has no kernel barrier, so the stream's
/// moves pass a `SeqCst` fence (see `Taking`).
const FENCE: u64 = 4;
/// In `Shared::ended`: the stream was dropped, so it moves its cursor no more, and a leave
/// needs no barrier against it (see `Taking`).
const GONE: u64 = 8;
/// In `Shared::next`, in place of a position: the stream is moving its cursor and has not yet
/// seen whether its sink left (see `Taking`). No position is this large.
const BUSY: u64 = u64::MAX;

/// What a group's streams share: the ring, and the streams waiting for a write.
pub(crate) struct Streams<M> {
    pub(crate) ring: Ring<M>,
    /// The top of the stack of waiting streams, each holding a reference (`Arc::into_raw`).
    waiting: AtomicPtr<Shared<M>>,
}

impl<M> Streams<M> {
    pub(crate) fn new(capacity: usize) -> Self {
        Streams {
            ring: Ring::new(capacity),
            waiting: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Writes `message` for the group's streams and wakes those waiting for it; with `lend`,
    /// also returns it (for the group's listeners).
    #[inline(always)]
    pub(crate) fn post(&self, message: M, lend: bool) -> (Written, Option<Arc<M>>) {
        let written = self.ring.write(message, lend);
        if written.0.wake {
            self.wake_all();
        }
        written
    }

    /// Puts `shared` on the stack of waiting streams, unless it is on it.
    fn push(&self, shared: &Arc<Shared<M>>) {
        if shared.queued.swap(true, AcqRel) {
            return;
        }
        let node = Arc::into_raw(shared.clone()).cast_mut();
        let mut top = self.waiting.load(Relaxed);
        loop {
            shared.next_waiting.store(top, Relaxed);
            match self
                .waiting
                .compare_exchange_weak(top, node, Release, Relaxed)
            {
                Ok(_) => return,
                Err(now) => top = now,
            }
        }
    }

    /// Takes the stack of waiting streams and wakes each.
    #[cold]
    fn wake_all(&self) {
        let mut node = self.waiting.swap(ptr::null_mut(), Acquire);
        while !node.is_null() {
            // SAFETY: a reference the stack held, from `Arc::into_raw` in `push`; the swap
            // took the whole stack, so it is ours.
            #[allow(unsafe_code)]
            let shared = unsafe { Arc::from_raw(node) };
            node = shared.next_waiting.load(Relaxed);
            // After reading `next`: from here a new wait may push it again.
            shared.queued.store(false, Release);
            shared.waker.wake();
        }
    }
}

impl<M> Drop for Streams<M> {
    fn drop(&mut self) {
        let mut node = self.waiting.swap(ptr::null_mut(), Acquire);
        while !node.is_null() {
            // SAFETY: as in `wake_all`.
            #[allow(unsafe_code)]
            let shared = unsafe { Arc::from_raw(node) };
            node = shared.next_waiting.load(Relaxed);
        }
    }
}

/// What a stream and its sink share.
struct Shared<M> {
    /// The next position the stream reads in its ring, or [`BUSY`] while it moves; stored by
    /// the stream alone (after the registry's `bind`), read by the leave (see `Taking`).
    next: AtomicU64,
    /// [`LEFT`] once the sink leaves, with [`KEPT`] once the leave took the rest,
    /// [`FENCE`] if the fence pair has no kernel side, and [`GONE`] once the stream is
    /// dropped; stored by `bind`, then changed by the leave and the stream's drop.
    ended: AtomicU64,
    /// What the leave took, from where the stream was to where it ended, in order; and how
    /// many of those were dropped. Complete once the stream sees [`KEPT`].
    kept: Mutex<Option<Box<Kept<M>>>>,
    waker: AtomicWaker,
    /// On its group's stack of waiting streams.
    queued: AtomicBool,
    /// The next waiting stream, while on the stack.
    next_waiting: AtomicPtr<Shared<M>>,
    /// The group's streams, once the registry bound the sink: `None` if the ring was at its
    /// most members. (While the stream is on its group's stack of waiting streams, the group
    /// holds it and it holds the group: the stream's drop takes it off.)
    streams: OnceLock<Option<Arc<Streams<M>>>>,
}

/// A stream's cursor, which its sink's leave takes over: each position is taken by exactly
/// one of them, and the stream pays no atomic read-modify-write for it.
///
/// The stream moves from `from` to `to` in three steps: it stores `BUSY`, passes a light
/// fence and loads `ended`; then it stores `to` if the sink has not left (and goes on to
/// take `from`), or `from` if it has (and takes nothing, and stops). The leave stores `LEFT`,
/// passes the heavy fence and loads `next`, waiting while it is `BUSY`. By the fence pair
/// (`local::barrier`) one of the two loads sees the other side's store:
/// - if the stream's load saw no `LEFT`, the leave sees `BUSY` or later, waits for `to`, and
///   starts there: `from` is the stream's;
/// - otherwise the stream stores `from` back and takes nothing; the leave, having waited out
///   `BUSY` or read `from` before it, starts at `from`.
///
/// Once the leave has stored `LEFT`, every later move of the stream sees it, and a read that
/// finds nothing to move to checks `ended` itself (`MessageStream::read`).
///
/// Most leaves need no fence pair: a stream is most often ended by its owner dropping it,
/// and the drop sets `GONE` (a `Release` read-modify-write of `ended`) after the stream's
/// last move. A leave that finds `GONE` in its own read-modify-write of `ended` (`Acquire`)
/// has synchronized with that drop, so it sees the stream's last store to `next` and skips
/// the `membarrier` call: 0.36 µs on an idle process, about 14 µs where another thread of
/// the process is running (an interrupt to its CPU; `evbus::docs::performance`). The fence
/// pair is for a leave that races a stream still read: its session closed, or the bus shut
/// down. Where a CAS on the cursor cost each message one locked instruction (about 5 ns
/// here), the stream now pays two plain stores and a plain load; the leave pays one
/// `membarrier` call.
struct Taking<'a, M> {
    shared: &'a Shared<M>,
    /// A move saw `LEFT`: the cursor is the leave's now.
    stopped: bool,
}

impl<M> Cursor for Taking<'_, M> {
    #[inline(always)]
    fn at(&self) -> Option<u64> {
        // Only the stream stores `next`, and never leaves it `BUSY` between two moves.
        (!self.stopped).then(|| self.shared.next.load(Relaxed))
    }

    #[inline(always)]
    fn advance(&mut self, from: u64, to: u64) -> bool {
        let Shared { next, ended, .. } = self.shared;
        next.store(BUSY, Relaxed);
        barrier::light();
        let mut flags = ended.load(Relaxed);
        if flags != 0 {
            if flags & FENCE != 0 {
                // No kernel barrier: that load was only a hint; the real fence, and again.
                fence(SeqCst);
                flags = ended.load(Relaxed);
            }
            if flags & LEFT != 0 {
                next.store(from, Release);
                self.stopped = true;
                return false;
            }
        }
        next.store(to, Release);
        true
    }
}

/// What a leave took for its stream: the messages, in order, and how many it found dropped.
type Kept<M> = (VecDeque<Arc<M>>, u64);

impl<M> Shared<M> {
    /// Whether the sink has left (or was never bound): the stream takes no more positions.
    fn left(&self) -> bool {
        self.ended.load(Acquire) & LEFT != 0
    }
}

impl<M> Default for Shared<M> {
    fn default() -> Self {
        Shared {
            next: AtomicU64::new(0),
            ended: AtomicU64::new(LEFT | KEPT),
            kept: Mutex::new(None),
            waker: AtomicWaker::new(),
            queued: AtomicBool::new(false),
            next_waiting: AtomicPtr::new(ptr::null_mut()),
            streams: OnceLock::new(),
        }
    }
}

/// The registry's side of a stream: what its group's trie holds.
pub(crate) struct StreamSink<M> {
    shared: Arc<Shared<M>>,
    /// The bus's `stream_capacity`, for the ring of a group's first stream.
    capacity: usize,
    left: AtomicBool,
}

impl<M> StreamSink<M> {
    /// The streams this sink joined, if the registry bound it and it could join.
    fn streams(&self) -> Option<&Arc<Streams<M>>> {
        self.shared.streams.get()?.as_ref()
    }

    /// Joins `streams` (or, when `None`, new ones of the bus's capacity), once: a sink is
    /// added to a group's current version and to its spare, and joins on the first. Returns
    /// the group's streams. A ring at its most members (about two million streams of one type
    /// on one channel) does not take the stream: it ends at once.
    pub(crate) fn bind(&self, streams: Option<&Arc<Streams<M>>>) -> Arc<Streams<M>> {
        let streams = streams
            .or(self.streams())
            .cloned()
            .unwrap_or_else(|| Arc::new(Streams::new(self.capacity)));
        self.shared.streams.get_or_init(|| {
            let start = streams.ring.join()?;
            self.shared.next.store(start, Release);
            let fence = if barrier::prepare() { 0 } else { FENCE };
            self.shared.ended.store(fence, Release);
            Some(streams.clone())
        });
        streams
    }

    /// Leaves the ring, once: the stream ends where it left, after what it had to read
    /// (S02). Called by the registry when it removes the stream from its group, on the
    /// registration side: it takes what the stream had not read yet out of the ring, so that
    /// later posts cannot push it out, and waits for the posts still writing it.
    pub(crate) fn leave(&self) {
        if self.left.swap(true, AcqRel) {
            return;
        }
        let Some(streams) = self.streams() else {
            self.shared.ended.store(LEFT | KEPT, Release);
            self.shared.waker.wake();
            return;
        };
        let ring = &streams.ring;
        let mut guard = self.shared.kept.lock();
        let kept = guard.insert(Box::default());
        // Stop the stream (`Taking` has the other half), then end its membership: it had
        // every position from where it stopped to `end`.
        // `fetch_or`s, here and below: `ended` keeps the `FENCE` bit that `bind` set.
        // `Acquire`: with `GONE`, from the stream's drop, its last store to `next` is seen.
        if self.shared.ended.fetch_or(LEFT, Acquire) & GONE == 0 {
            barrier::heavy();
        }
        let mut at = loop {
            let at = self.shared.next.load(Acquire);
            if at != BUSY {
                break at;
            }
            // The stream is between its two stores, which never wait: this wait ends.
            yield_now();
        };
        let end = ring.leave();
        loop {
            match ring.next(&mut at, Some(end), &mut kept.1) {
                Next::Message(message) => kept.0.push_back(message),
                // A post took the position before the leave and is writing it: it never
                // waits, so this wait ends.
                Next::NotYet => yield_now(),
                Next::End => break,
            }
        }
        // Unlocked first: the stream takes the lock once it sees `KEPT`.
        drop(guard);
        self.shared.ended.fetch_or(KEPT, Release);
        self.shared.waker.wake();
    }
}

impl<M> Drop for StreamSink<M> {
    fn drop(&mut self) {
        // Every removal leaves first (the registry's removals, and its shutdown), so this only
        // ends a sink that was never bound (an inert registration), with nothing to wait for;
        // or, in the models, a sink dropped without a registry.
        self.leave();
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
    shared: Arc<Shared<M>>,
    /// The group's streams; `None` for an inert stream (made through a closed session or a
    /// shut-down bus), which has ended. The stream's own reference, taken from `shared` once
    /// registered, which never changes after: reading through `shared`'s `OnceLock` instead
    /// costs every read 4 instructions (`scripts/instr.sh streams16`, measured at `6d03040`:
    /// 980 → 1,044).
    streams: Option<Arc<Streams<M>>>,
    /// Messages this stream found dropped (L11).
    missed: u64,
    /// Unregisters the stream (and whatever else it owns) when dropped; `None` until
    /// registered. Opaque here: the facade decides what a stream owns.
    _registration: Option<Box<dyn Registration>>,
}

impl<M: Send + Sync + 'static> MessageStream<M> {
    /// A new stream and the sink to register for it.
    pub(crate) fn new(capacity: usize) -> (StreamSink<M>, Self) {
        let shared = Arc::new(Shared::default());
        (
            StreamSink {
                shared: shared.clone(),
                capacity,
                left: AtomicBool::new(false),
            },
            MessageStream {
                shared,
                streams: None,
                missed: 0,
                _registration: None,
            },
        )
    }

    /// Ties the stream to its registration, so that dropping it unregisters it, and to the
    /// place its sink took in its group's ring when the registry added it (none for an
    /// inert registration: the stream has ended).
    pub(crate) fn registered(mut self, registration: Option<Box<dyn Registration>>) -> Self {
        self.streams = self.shared.streams.get().cloned().flatten();
        self._registration = registration;
        self
    }

    /// Messages dropped because this stream's buffer was full (L11): those it skipped, and
    /// those it will skip because newer messages have pushed them out.
    pub fn missed(&self) -> u64 {
        let at = self.shared.next.load(Acquire);
        // While a leave is taking the rest, its count is not complete: the sum is as of now.
        let behind = match &self.streams {
            Some(streams) if !self.shared.left() => streams.ring.behind(at, None),
            _ => 0,
        };
        let kept = self.shared.kept.lock().as_ref().map_or(0, |kept| kept.1);
        self.missed + kept + behind
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
        match self.read() {
            Read::Message(message) => Some(message),
            Read::Empty | Read::End => None,
        }
    }

    /// The next message, if any: from the ring while the stream is a member, then from what
    /// its leave kept.
    #[inline]
    fn read(&mut self) -> Read<M> {
        let Some(streams) = &self.streams else {
            return Read::End;
        };
        let mut cursor = Taking {
            shared: &self.shared,
            stopped: false,
        };
        match streams.ring.next(&mut cursor, None, &mut self.missed) {
            Next::Message(message) => Read::Message(message),
            // The sink may have left while the stream had nothing to move to.
            Next::NotYet if self.shared.left() => self.read_kept(),
            Next::NotYet => Read::Empty,
            Next::End => self.read_kept(),
        }
    }

    /// The next message its leave kept for the stream.
    #[cold]
    fn read_kept(&self) -> Read<M> {
        if self.shared.ended.load(Acquire) & KEPT == 0 {
            // The leave is taking what the stream had left: it wakes the stream.
            return Read::Empty;
        }
        let message = self
            .shared
            .kept
            .lock()
            .as_mut()
            .and_then(|kept| kept.0.pop_front());
        match message {
            Some(message) => Read::Message(message),
            None => Read::End,
        }
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

impl<M> Drop for MessageStream<M> {
    fn drop(&mut self) {
        // Moves no more: the leave needs no fence pair (see `Taking`). `Release`: after the
        // last move's store to `next`.
        self.shared.ended.fetch_or(GONE, Release);
        // Unregisters first (the sink leaves), then off the stack of waiting streams: taking
        // the stack wakes the others on it for nothing, which costs them a look.
        drop(self._registration.take());
        if let Some(streams) = &self.streams {
            if self.shared.queued.load(Acquire) {
                streams.wake_all();
            }
        }
    }
}

/// What [`MessageStream::read`] found.
enum Read<M> {
    Message(Arc<M>),
    /// Nothing now.
    Empty,
    /// The stream has ended.
    End,
}

impl<M: Send + Sync + 'static> Stream for MessageStream<M> {
    type Item = Arc<M>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Arc<M>>> {
        let this = self.get_mut();
        loop {
            match this.read() {
                Read::Message(message) => return Poll::Ready(Some(message)),
                Read::End => return Poll::Ready(None),
                Read::Empty => {}
            }
            let Some(streams) = &this.streams else {
                return Poll::Ready(None);
            };
            let at = this.shared.next.load(Relaxed);
            this.shared.waker.register(cx.waker());
            if this.shared.left() {
                // Leaving: it wakes the stream once it has kept the rest. Registered first, so
                // a leave done before the registration is visible here.
                if this.shared.ended.load(Acquire) & KEPT != 0 {
                    continue;
                }
                return Poll::Pending;
            }
            // On the stack, then the mark on the slot: a write that fills it after the mark
            // finds this stream on the stack (see the module docs).
            streams.push(&this.shared);
            if !streams.ring.wait(at) || this.shared.left() {
                continue;
            }
            return Poll::Pending;
        }
    }
}

impl<M> std::fmt::Debug for MessageStream<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageStream")
            .field("missed", &self.missed)
            .field("ended", &self.shared.left())
            .finish()
    }
}

/// Models of the wake-up and the leave, run by `RUSTFLAGS="--cfg evbus_loom" cargo test --lib
/// loom_`. They run the real `poll_next`, `Streams::post` and `StreamSink::leave`.
#[cfg(all(test, evbus_loom))]
mod loom_tests {
    use super::*;

    use loom::future::block_on;
    use loom::thread;

    /// A stream bound to new streams of `capacity`, and its sink.
    fn bound(capacity: usize) -> (StreamSink<u32>, MessageStream<u32>, Arc<Streams<u32>>) {
        let (sink, stream) = MessageStream::new(capacity);
        let streams = sink.bind(None);
        (sink, stream.registered(None), streams)
    }

    /// A writer posts while the stream waits for a message: it gets it. A lost wake-up would
    /// leave the consumer asleep for good, which loom reports as a deadlock.
    #[test]
    fn loom_stream_wakes_its_waiting_consumer() {
        crate::sync::model(|| {
            let (sink, mut stream, streams) = bound(2);
            let writer = thread::spawn(move || {
                streams.post(1, false);
                streams.post(2, false);
            });
            assert_eq!(block_on(stream.recv()).as_deref(), Some(&1));
            writer.join().unwrap();
            assert_eq!(stream.try_recv().as_deref(), Some(&2));
            drop(sink);
        });
    }

    /// A session closes (the sink leaves) while a writer posts: the leave waits for the
    /// write it must keep, and the stream then yields what it kept, counts what it missed,
    /// and ends (S02, L11). What was posted after the leave does not reach it.
    #[test]
    fn loom_stream_leave_keeps_a_write_in_flight() {
        crate::sync::model(|| {
            let (sink, mut stream, streams) = bound(1);
            let writer = thread::spawn(move || {
                streams.post(1, false).0.members + streams.post(2, false).0.members
            });
            sink.leave();
            let sent = writer.join().unwrap();
            let mut yielded = Vec::new();
            while let Some(message) = stream.try_recv() {
                yielded.push(*message);
            }
            assert!(block_on(stream.recv()).is_none(), "the stream ended");
            assert_eq!(yielded.len() as u64 + stream.missed(), sent, "{yielded:?}");
            assert!(yielded.windows(2).all(|w| w[0] < w[1]), "{yielded:?}");
        });
    }

    /// A session closes while the stream reads: each message is yielded once, either by the
    /// stream from the ring or from what the leave kept, in order, and the stream wakes for
    /// its end (S02). Without the read's light fence (`barrier::light`), or with a leave that
    /// does not wait out `BUSY`, loom finds a message yielded twice or lost.
    #[test]
    fn loom_stream_leave_races_its_reader() {
        crate::sync::model(|| {
            let (sink, mut stream, streams) = bound(4);
            for m in 1..=2 {
                streams.post(m, false);
            }
            let closer = thread::spawn(move || sink.leave());
            let mut yielded = Vec::new();
            while let Some(message) = block_on(stream.recv()) {
                yielded.push(*message);
            }
            closer.join().unwrap();
            assert_eq!(yielded, [1, 2]);
            assert_eq!(stream.missed(), 0);
        });
    }

    /// The stream's owner reads and drops it while its session closes (the sink leaves on
    /// another thread) and a writer posts: a leave that finds the stream `GONE` skips the
    /// fence pair, and still starts where the stream stopped, so every message is yielded
    /// or kept or missed once. With the leave's read of `ended` `Relaxed` instead of
    /// `Acquire`, loom finds the leave taking a position the stream took (a message counted
    /// twice).
    #[test]
    fn loom_stream_dropped_by_its_owner_leaves_without_the_barrier() {
        crate::sync::model(|| {
            let (sink, mut stream, streams) = bound(4);
            streams.post(1, false);
            let writer = thread::spawn(move || streams.post(2, false).0.members);
            let closer = thread::spawn(move || sink.leave());
            let mut yielded = Vec::new();
            if let Some(message) = stream.try_recv() {
                yielded.push(*message);
            }
            // The stream's own count: `missed()` would add the leave's, counted below.
            let (shared, missed) = (stream.shared.clone(), stream.missed);
            drop(stream);
            let sent = 1 + writer.join().unwrap();
            closer.join().unwrap();
            let kept = shared
                .kept
                .lock()
                .take()
                .expect("the leave kept what was left");
            let (kept, dropped) = *kept;
            let all: Vec<u32> = yielded
                .iter()
                .copied()
                .chain(kept.iter().map(|m| **m))
                .collect();
            assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
            assert_eq!(all.len() as u64 + missed + dropped, sent, "{all:?}");
        });
    }
}
