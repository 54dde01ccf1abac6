//! Counters: plain numbers for users, and how the post path counts without contention.
//!
//! # Algorithm
//!
//! The post path must not serialize posting threads on one cache line, and a locked
//! read-modify-write per counter per post would cost more than the rest of a small post. So
//! every bus keeps one cache-padded *stripe* of counters per live thread: a thread claims a
//! stripe index from a process-wide bitmap the first time it posts, owns it exclusively until
//! it exits, and updates its stripe with a relaxed load and store (no `lock` prefix: only the
//! owner writes). The claim is an `Acquire` CAS and the release at thread exit a `Release`
//! `fetch_or`, so the next owner of a stripe continues from the previous owner's values.
//! Beyond [`THREAD_STRIPES`] live threads, the rest share one extra stripe updated with
//! `fetch_add`. [`Bus::stats`](crate::Bus::stats) sums the stripes: exact once the posts it
//! should see happen-before it (a `join`, a channel message), a moment's approximation while
//! posts run.
//!
//! The gauges (channels, listeners, streams) change only on the registration side and are
//! plain atomics.

use std::sync::atomic::{AtomicU64, Ordering::*};

use crossbeam_utils::CachePadded;

/// Counters since the bus was built, except the gauges marked *(now)*.
///
/// Read with [`Bus::stats`](crate::Bus::stats). Fields are added in minor versions, so the
/// struct is `#[non_exhaustive]`; read the fields you need. It is `Serialize`, as a map of
/// the field names to their numbers, for a `/stats` endpoint or a metrics exporter.
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Successful `post_message` (and [`Channel::post`](crate::Channel::post)) calls, any scope.
    pub posted: u64,
    /// `(message, receiver)` pairs handed over: listener calls plus stream pushes.
    pub delivered: u64,
    /// Messages dropped from full stream buffers (the sum of every stream's `missed()`), L11.
    pub stream_dropped: u64,
    /// `(message, receiver)` pairs skipped because the types differ (L05).
    pub type_mismatches: u64,
    /// Listener calls that panicked (L07).
    pub listener_panics: u64,
    /// *(now)* Interned channels (L13).
    pub channels: u64,
    /// *(now)* Registered listeners.
    pub listeners: u64,
    /// *(now)* Registered streams.
    pub streams: u64,
    /// Global posts accepted into the publish queue.
    pub global_posted: u64,
    /// Pipelined writes sent to Redis (each carries at least one PUBLISH).
    pub global_batches: u64,
    /// Messages received from Redis and handed to the local path.
    pub global_received: u64,
    /// Payloads or messages from Redis refused (G09).
    pub global_decode_errors: u64,
    /// Messages known lost: sequence gaps plus client-side lag (G06).
    pub global_missed: u64,
    /// Messages received twice and dropped (G06).
    pub global_duplicates: u64,
    /// *(now)* Global posts waiting to be sent.
    pub global_buffered: u64,
    /// Frames refused as not authentic: a missing or wrong MAC (with a signing key), or a
    /// sequence number this bus's own origin never sent.
    pub global_rejected: u64,
}

/// What one post did, counted on the stack and recorded once.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) delivered: u64,
    pub(crate) mismatches: u64,
    pub(crate) panics: u64,
    pub(crate) dropped: u64,
}

/// Threads that get a stripe of their own; the rest share one.
pub(crate) const THREAD_STRIPES: usize = 64;

#[derive(Default)]
struct Stripe {
    posted: AtomicU64,
    delivered: AtomicU64,
    mismatches: AtomicU64,
    panics: AtomicU64,
    dropped: AtomicU64,
}

/// A bus's counters.
pub(crate) struct Counters {
    /// `THREAD_STRIPES` owned stripes, then the shared one.
    stripes: Box<[CachePadded<Stripe>]>,
    pub(crate) channels: AtomicU64,
    pub(crate) listeners: AtomicU64,
    pub(crate) streams: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            stripes: (0..=THREAD_STRIPES)
                .map(|_| CachePadded::default())
                .collect(),
            channels: AtomicU64::new(0),
            listeners: AtomicU64::new(0),
            streams: AtomicU64::new(0),
        }
    }
}

impl Counters {
    /// Records one successful post. Wait-free: a thread-local read and five relaxed
    /// load/store pairs on a stripe only this thread writes (or `fetch_add`s on the shared
    /// stripe past [`THREAD_STRIPES`] threads).
    #[inline]
    pub(crate) fn record_post(&self, tally: &Tally) {
        self.record(1, tally);
    }

    /// Records what a message received from Redis did: as a post, but not counted as posted.
    pub(crate) fn record_received(&self, tally: &Tally) {
        self.record(0, tally);
    }

    #[inline]
    fn record(&self, posted: u64, tally: &Tally) {
        let (index, owned) = stripe::index();
        let stripe = &self.stripes[index];
        let add = |counter: &AtomicU64, n: u64| match (n, owned) {
            (0, _) => {}
            (n, true) => counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed),
            (n, false) => _ = counter.fetch_add(n, Relaxed),
        };
        add(&stripe.posted, posted);
        add(&stripe.delivered, tally.delivered);
        add(&stripe.mismatches, tally.mismatches);
        add(&stripe.panics, tally.panics);
        add(&stripe.dropped, tally.dropped);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let sum = |field: fn(&Stripe) -> &AtomicU64| {
            self.stripes
                .iter()
                .map(|s| field(s).load(Relaxed))
                .fold(0u64, u64::wrapping_add)
        };
        Stats {
            posted: sum(|s| &s.posted),
            delivered: sum(|s| &s.delivered),
            stream_dropped: sum(|s| &s.dropped),
            type_mismatches: sum(|s| &s.mismatches),
            listener_panics: sum(|s| &s.panics),
            channels: self.channels.load(Relaxed),
            listeners: self.listeners.load(Relaxed),
            streams: self.streams.load(Relaxed),
            ..Stats::default()
        }
    }
}

/// The process-wide assignment of stripe indices to threads.
mod stripe {
    use super::THREAD_STRIPES;
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, Ordering::*};

    /// Bit `i` set: stripe `i` is free.
    static FREE: AtomicU64 = AtomicU64::new(u64::MAX);
    const _: () = assert!(THREAD_STRIPES == 64, "FREE has one bit per stripe");

    struct Claim(Option<usize>);

    impl Claim {
        fn new() -> Claim {
            let mut free = FREE.load(Relaxed);
            while free != 0 {
                let i = free.trailing_zeros() as usize;
                match FREE.compare_exchange_weak(free, free & !(1 << i), Acquire, Relaxed) {
                    Ok(_) => return Claim(Some(i)),
                    Err(now) => free = now,
                }
            }
            Claim(None)
        }
    }

    impl Drop for Claim {
        fn drop(&mut self) {
            if let Some(i) = self.0 {
                // Stop using the stripe before anyone else may claim it.
                INDEX.set(UNCLAIMED);
                FREE.fetch_or(1 << i, Release);
            }
        }
    }

    const UNCLAIMED: usize = usize::MAX;

    thread_local! {
        /// This thread's stripe, once claimed: const-initialized and without a destructor,
        /// so reading it is one thread-local load, and it is readable even while the thread's
        /// other thread-locals are being destroyed.
        static INDEX: Cell<usize> = const { Cell::new(UNCLAIMED) };
        /// Owns the claim; its destructor gives the stripe back when the thread exits.
        static CLAIM: Claim = Claim::new();
    }

    /// This thread's stripe and whether it owns it.
    #[inline]
    pub(super) fn index() -> (usize, bool) {
        let index = INDEX.get();
        if index < THREAD_STRIPES {
            (index, true)
        } else {
            claim()
        }
    }

    /// First post of a thread: claim a stripe. A thread that finds none free, or whose claim
    /// is already destroyed (a post from another thread-local's destructor), uses the shared
    /// stripe.
    #[cold]
    fn claim() -> (usize, bool) {
        match CLAIM.try_with(|claim| claim.0) {
            Ok(Some(index)) => {
                INDEX.set(index);
                (index, true)
            }
            _ => (THREAD_STRIPES, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_are_exact() {
        let counters = Counters::default();
        let tally = Tally {
            delivered: 2,
            mismatches: 1,
            panics: 0,
            dropped: 3,
        };
        // More threads than stripes, several rounds, so stripes are reused and shared.
        std::thread::scope(|s| {
            for _ in 0..100 {
                s.spawn(|| (0..1000).for_each(|_| counters.record_post(&tally)));
            }
        });
        let stats = counters.snapshot();
        assert_eq!(stats.posted, 100_000);
        assert_eq!(stats.delivered, 200_000);
        assert_eq!(stats.type_mismatches, 100_000);
        assert_eq!(stats.stream_dropped, 300_000);
        assert_eq!(stats.listener_panics, 0);
    }
}
