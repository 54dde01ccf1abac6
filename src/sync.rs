//! The atomics of the hand-written protocols, and loom's in their models.
//!
//! Five protocols are written by hand: the streams' ring (`local/ring.rs`), a stream's wait and
//! leave (`local/stream.rs`), a snapshot's borrow and replace (`local/published.rs`), the
//! publisher's sleep (`redis/publisher.rs`) and the claim of a counter stripe (`stats.rs`). They
//! take their atomics from here. In a normal build these are std's types (and atomic-waker's
//! `AtomicWaker`), re-exported: the code and its cost are exactly what they would be without
//! this module. Compiled with `--cfg evbus_loom`, they are loom's, and the `loom_*` tests
//! model-check every interleaving of the protocols:
//!
//! ```text
//! RUSTFLAGS="--cfg evbus_loom" cargo test --release --lib loom_
//! ```
//!
//! The cfg is our own, not `loom`: `--cfg loom` would also switch tokio and crossbeam into their
//! loom modes, which this crate's build does not support. loom is a dev-dependency, so under
//! `evbus_loom` only the library's unit tests build, and only the models are meant to run:
//! loom's atomics work only inside a model.
//!
//! The publisher's flag is a field of the transport's `State`, a std `AtomicBool` in every
//! build; its protocol is written once over the [`Flag`] trait, which std's `AtomicBool`
//! implements and, in the models, loom's.
//!
//! A model that passes has not shown anything until a broken protocol made it fail. loom can
//! explore a single interleaving and pass: a model of a single-producer queue (tried on
//! 2026-12-01, see `benches/HISTORY.md`) whose producer began each push with a `Relaxed`
//! load of its own count, a location nobody else wrote, ran once, and passed with the
//! count's `Release` store weakened to `Relaxed`; with the count kept in the producer
//! instead, loom ran 16 interleavings. Weaken an ordering or drop a fence and watch the model
//! fail before relying on it. On that day the twelve models here ran between 46 and 43,840
//! interleavings each.

#[cfg(not(evbus_loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, Ordering};

#[cfg(not(evbus_loom))]
pub(crate) use atomic_waker::AtomicWaker;

#[cfg(not(evbus_loom))]
pub(crate) use std::thread::yield_now;

#[cfg(evbus_loom)]
pub(crate) use loom::thread::yield_now;

#[cfg(evbus_loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU64, Ordering};

#[cfg(evbus_loom)]
pub(crate) use self::model::AtomicWaker;

/// A boolean atomic and the fence of the same atomics: std's, or loom's in a model.
pub(crate) trait Flag: Sync {
    fn load(&self, order: Ordering) -> bool;
    fn swap(&self, value: bool, order: Ordering) -> bool;
    /// A fence that orders this flag's accesses: std's `fence`, or loom's.
    fn fence(order: Ordering);
}

/// A static of the protocols: a plain `static` in a normal build; in the models loom's
/// `lazy_static!`, which loom needs for a static that holds its atomics (each run of a model
/// gets it new).
macro_rules! model_static {
    ($(#[$attr:meta])* static $name:ident: $ty:ty = $init:expr;) => {
        #[cfg(not(evbus_loom))]
        $(#[$attr])*
        static $name: $ty = $init;
        #[cfg(evbus_loom)]
        loom::lazy_static! {
            $(#[$attr])*
            static ref $name: $ty = $init;
        }
    };
}
pub(crate) use model_static;

macro_rules! flag {
    ($($atomic:ident)::+) => {
        impl Flag for $($atomic)::+::AtomicBool {
            #[inline(always)]
            fn load(&self, order: Ordering) -> bool {
                $($atomic)::+::AtomicBool::load(self, order)
            }
            #[inline(always)]
            fn swap(&self, value: bool, order: Ordering) -> bool {
                $($atomic)::+::AtomicBool::swap(self, value, order)
            }
            #[inline(always)]
            fn fence(order: Ordering) {
                $($atomic)::+::fence(order)
            }
        }
    };
}

flag!(std::sync::atomic);
#[cfg(evbus_loom)]
flag!(loom::sync::atomic);

#[cfg(evbus_loom)]
mod model {
    use std::task::Waker;

    /// loom's `AtomicWaker` under atomic-waker's method names.
    #[derive(Debug, Default)]
    pub(crate) struct AtomicWaker(loom::future::AtomicWaker);

    impl AtomicWaker {
        pub(crate) fn new() -> Self {
            AtomicWaker(loom::future::AtomicWaker::new())
        }

        pub(crate) fn register(&self, waker: &Waker) {
            self.0.register_by_ref(waker);
        }

        pub(crate) fn wake(&self) {
            self.0.wake();
        }
    }
}

/// Runs `f` under loom, exploring every interleaving with up to three preemptions (or
/// `LOOM_MAX_PREEMPTIONS`): enough for the bugs these protocols could have, small enough for
/// CI.
#[cfg(all(test, evbus_loom))]
pub(crate) fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound.get_or_insert(3);
    builder.check(f);
}
