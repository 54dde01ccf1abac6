//! The post path: from a loaded snapshot to every receiver. This is the whole hot path.
//!
//! A local post is: one `ArcSwapOption::load` of the channel's subscriber snapshot (done by
//! the caller, [`crate::registry::Slot::post`]), a walk over that immutable trie, one
//! indirect call per subscriber, and one [`Counters::record_post`]. No lock, no allocation for
//! listeners; a stream delivery allocates the message's `Arc` once per post, on the first
//! stream it reaches (L04), and pushes a clone of it.
//!
//! Why this is wait-free (L10): `ArcSwap::load` is wait-free except for a bounded fallback
//! that arc-swap documents as lock-free and taken at most once per `usize::MAX / 4` loads; the
//! walk is bounded by the snapshot; the stripe counters are thread-owned stores; a stream push
//! is a lock-free segmented-queue push (crossbeam's `SegQueue`, a CAS loop that can only retry
//! when another push succeeded). Nothing waits for another thread.
//!
//! Panics (L07): each listener call runs under `catch_unwind`, so one listener's panic is
//! counted and the walk goes on.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::stats::Tally;
use crate::subscribers::Node;

/// The message of one post, owned until the first stream needs an `Arc` of it.
pub(crate) struct Payload<M> {
    owned: Option<M>,
    shared: Option<Arc<M>>,
}

impl<M> Payload<M> {
    pub(crate) fn new(message: M) -> Self {
        Payload {
            owned: Some(message),
            shared: None,
        }
    }

    /// The message, for a listener.
    fn get(&self) -> &M {
        match (&self.owned, &self.shared) {
            (Some(message), _) => message,
            (None, Some(shared)) => shared,
            (None, None) => unreachable!("a payload always holds its message"),
        }
    }

    /// An `Arc` of the message, for a stream: every stream of one post shares one allocation.
    fn share(&mut self) -> Arc<M> {
        if let Some(message) = self.owned.take() {
            self.shared = Some(Arc::new(message));
        }
        match &self.shared {
            Some(shared) => shared.clone(),
            None => unreachable!("a payload always holds its message"),
        }
    }
}

/// What delivering to one subscriber did.
pub(crate) enum Outcome {
    Delivered,
    /// Delivered, and the receiver's buffer dropped its oldest message to make room.
    DeliveredDropping,
    Panicked,
    Mismatch,
}

/// A receiver of one message type, behind a trait object so one channel can hold listeners
/// and streams of any types.
pub(crate) trait Sink: Send + Sync {
    /// `payload` is a `Payload<M>` for the posted `M`; a receiver of another type returns
    /// [`Outcome::Mismatch`] without touching it.
    fn deliver(&self, payload: &mut dyn Any) -> Outcome;
}

/// One entry of a channel's snapshot.
#[derive(Clone)]
pub(crate) struct Subscriber {
    /// Registration id (a [`ListenerId`](crate::ListenerId) for listeners).
    pub(crate) id: u64,
    pub(crate) sink: Arc<dyn Sink>,
}

/// A listener: a callback of one message type.
pub(crate) struct Listener<M, F> {
    callback: F,
    _message: std::marker::PhantomData<fn(&M)>,
}

impl<M, F> Listener<M, F> {
    pub(crate) fn new(callback: F) -> Self {
        Listener {
            callback,
            _message: std::marker::PhantomData,
        }
    }
}

impl<M: 'static, F: Fn(&M) + Send + Sync> Sink for Listener<M, F> {
    #[inline]
    fn deliver(&self, payload: &mut dyn Any) -> Outcome {
        let Some(payload) = payload.downcast_ref::<Payload<M>>() else {
            return Outcome::Mismatch;
        };
        // AssertUnwindSafe: a panicking listener can leave only its own captured state
        // inconsistent; the bus's state is not touched here.
        match catch_unwind(AssertUnwindSafe(|| (self.callback)(payload.get()))) {
            Ok(()) => Outcome::Delivered,
            Err(_) => Outcome::Panicked,
        }
    }
}

/// Delivers `payload` to every subscriber of `snapshot`, in order; returns the tally.
#[inline]
pub(crate) fn deliver<M: 'static>(snapshot: &Node<Subscriber>, payload: &mut Payload<M>) -> Tally {
    let mut tally = Tally::default();
    snapshot.for_each(
        &mut |subscriber: &Subscriber| match subscriber.sink.deliver(payload) {
            Outcome::Delivered => tally.delivered += 1,
            Outcome::DeliveredDropping => {
                tally.delivered += 1;
                tally.dropped += 1;
            }
            Outcome::Panicked => {
                tally.delivered += 1;
                tally.panics += 1;
            }
            Outcome::Mismatch => tally.mismatches += 1,
        },
    );
    tally
}

/// For the stream sink: the shared `Arc` of `payload` when it carries an `M`.
pub(crate) fn share<M: 'static>(payload: &mut dyn Any) -> Option<Arc<M>> {
    payload.downcast_mut::<Payload<M>>().map(Payload::share)
}
