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
//! `fetch_or`, so the next owner of a stripe continues from the previous owner's values; the
//! `loom_stripe_*` models check both halves.
//! Beyond [`THREAD_STRIPES`] live threads, the rest share one extra stripe updated with
//! `fetch_add`. [`Bus::stats`](crate::Bus::stats) sums the stripes: exact once the posts it
//! should see happen-before it (a `join`, a channel message), a moment's approximation while
//! posts run.
//!
//! The gauges (channels, listeners, streams) change only on the registration side and are
//! plain atomics.

use std::sync::atomic::{AtomicU64, Ordering::*};

use crossbeam_utils::CachePadded;

use crate::sync;

/// Counters since the bus was built, except the gauges marked *(now)*.
///
/// Read with [`Bus::stats`](crate::Bus::stats). Fields are added in minor versions, so the
/// struct is `#[non_exhaustive]`; read the fields you need. It is `Serialize`, as a map of
/// the field names to their numbers, for a `/stats` endpoint or a metrics exporter.
///
/// A post's counts are added once its listeners have returned: a listener (or a global
/// message's listener on a dispatch thread) sees the message a moment before `stats()` counts
/// it. Wait for the counter, not for the listener, when the number is what matters.
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
    /// Messages recovered from their origin's retransmit window after a gap (K02).
    pub global_repaired: u64,
    /// Repair requests this bus sent (K02, K04): one per gap it found (and again, up to
    /// four times in all, while a gap makes no progress), and after a reconnect one per
    /// origin it knows on each channel, for that origin's latest sequence number.
    pub global_repair_requests: u64,
    /// Repair requests this bus, as an origin, refused: malformed, or past the rate limit of
    /// their asker (K05).
    pub global_repair_refused: u64,
    /// *(now)* Bytes of published frames this bus keeps to resend (K01): never more than the
    /// byte bound of [`repair_window`](crate::BusBuilder::repair_window).
    pub global_repair_window_bytes: u64,
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
    posted: sync::AtomicU64,
    delivered: sync::AtomicU64,
    mismatches: sync::AtomicU64,
    panics: sync::AtomicU64,
    dropped: sync::AtomicU64,
}

/// Adds `n` to a stripe's counter: a relaxed load and store when this thread owns the stripe
/// (only the owner writes it), a `fetch_add` on the shared stripe.
#[inline(always)]
fn add(counter: &sync::AtomicU64, n: u64, owned: bool) {
    match (n, owned) {
        (0, _) => {}
        (n, true) => counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed),
        (n, false) => _ = counter.fetch_add(n, Relaxed),
    }
}

/// A bus's counters.
pub(crate) struct Counters {
    /// `THREAD_STRIPES` owned stripes, then the shared one.
    stripes: Box<[CachePadded<Stripe>; THREAD_STRIPES + 1]>,
    pub(crate) channels: AtomicU64,
    pub(crate) listeners: AtomicU64,
    pub(crate) streams: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            stripes: Box::new(std::array::from_fn(|_| CachePadded::default())),
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

    #[inline(always)]
    fn record(&self, posted: u64, tally: &Tally) {
        let (index, owned) = stripe::index();
        let stripe = &self.stripes[index];
        add(&stripe.posted, posted, owned);
        add(&stripe.delivered, tally.delivered, owned);
        // Mismatches, panics and drops are rare: one test for the three.
        if tally.mismatches | tally.panics | tally.dropped != 0 {
            add(&stripe.mismatches, tally.mismatches, owned);
            add(&stripe.panics, tally.panics, owned);
            add(&stripe.dropped, tally.dropped, owned);
        }
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let sum = |field: fn(&Stripe) -> &sync::AtomicU64| {
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
    use crate::sync::{AtomicU64, Ordering::*};
    use std::cell::Cell;

    crate::sync::model_static! {
        /// Bit `i` set: stripe `i` is free.
        static FREE: AtomicU64 = AtomicU64::new(u64::MAX);
    }
    const _: () = assert!(THREAD_STRIPES == 64, "FREE has one bit per stripe");

    /// Takes the lowest stripe that `free` has; `None` if it has none. The `Acquire` CAS
    /// pairs with the `Release` of [`release_to`]: the new owner continues from the counts of the
    /// stripe's previous owner.
    pub(super) fn claim_from(free: &AtomicU64) -> Option<usize> {
        let mut bits = free.load(Relaxed);
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            match free.compare_exchange_weak(bits, bits & !(1 << i), Acquire, Relaxed) {
                Ok(_) => return Some(i),
                Err(now) => bits = now,
            }
        }
        None
    }

    /// Gives stripe `i` back to `free`, after the owner's last write to it.
    pub(super) fn release_to(free: &AtomicU64, i: usize) {
        free.fetch_or(1 << i, Release);
    }

    struct Claim(Option<usize>);

    impl Claim {
        fn new() -> Claim {
            Claim(claim_from(&FREE))
        }
    }

    impl Drop for Claim {
        fn drop(&mut self) {
            if let Some(i) = self.0 {
                // Stop using the stripe before anyone else may claim it.
                INDEX.set(UNCLAIMED);
                release_to(&FREE, i);
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

/// Models of the stripe claim, run by `RUSTFLAGS="--cfg evbus_loom" cargo test --lib loom_`.
///
/// They run the real `stripe::claim_from`, `stripe::release_to` and `add` on a bitmap with few free
/// stripes (the thread-locals that call them in the bus are per-thread bookkeeping, not part of
/// the protocol). An owner counts with a relaxed load and store, which is exact only while it
/// is the stripe's sole writer and starts from its predecessor's count: two owners at once, or
/// an owner that does not see what the previous one wrote, lose a count, and the sum shows it.
#[cfg(all(test, evbus_loom))]
mod loom_tests {
    use super::*;

    use std::sync::Arc;

    use loom::thread;

    /// Three threads claim from a bitmap with `free` set, count one post each (on the shared
    /// stripe, the last, when none is free) and give the stripe back.
    fn three_threads_count(free: u64) {
        crate::sync::model(move || {
            let bitmap = Arc::new(sync::AtomicU64::new(free));
            let stripes: Arc<[sync::AtomicU64; 3]> = Arc::default();
            let post = {
                let (bitmap, stripes) = (bitmap.clone(), stripes.clone());
                move || {
                    let claimed = stripe::claim_from(&bitmap);
                    let (index, owned) = claimed.map_or((2, false), |i| (i, true));
                    add(&stripes[index], 1, owned);
                    if let Some(i) = claimed {
                        stripe::release_to(&bitmap, i);
                    }
                }
            };
            let threads: Vec<_> = (0..2).map(|_| thread::spawn(post.clone())).collect();
            post();
            for thread in threads {
                thread.join().unwrap();
            }
            let sum: u64 = stripes.iter().map(|s| s.load(Relaxed)).sum();
            assert_eq!(sum, 3, "a count was lost");
            assert_eq!(bitmap.load(Relaxed), free, "a stripe was not given back");
        });
    }

    /// One free stripe: it passes from owner to owner with its count, and the threads that
    /// find it taken use the shared stripe.
    #[test]
    fn loom_stripe_claim_hands_a_stripe_and_its_counts_on() {
        three_threads_count(0b1);
    }

    /// Two free stripes, three threads racing for the lowest: a losing CAS takes the next, and
    /// no stripe has two owners at once.
    #[test]
    fn loom_stripe_claim_gives_a_stripe_to_one_thread_at_a_time() {
        three_threads_count(0b11);
    }
}
