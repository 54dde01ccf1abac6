//! Multi-threaded stress tests with exact accounting.
//!
//! Each scenario runs small by default (a few seconds in debug on a busy 2-core machine) and has
//! a `_large` variant, `#[ignore]`d, with the same code and bigger constants:
//! `cargo test --release --test stress -- --ignored`. Thread counts are fixed; threads start
//! together at a `Barrier`. Nothing sleeps for a fixed time: waits are for a condition, bounded
//! by a generous deadline so that a bug fails the test instead of hanging it.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use evbus::{Bus, Message, MessageScope, MessageStream};
use futures_core::Stream;

/// A bound on every wait for a condition; generous, the machine is busy.
const DEADLINE: Duration = Duration::from_secs(120);

// ---- helpers --------------------------------------------------------------------------------

/// Runs a future that is ready at its first poll (building a local bus is).
fn ready<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    match pin!(future).poll(&mut Context::from_waker(&waker)) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("future was expected to be ready at once"),
    }
}

fn bus_with_capacity(capacity: usize) -> Bus {
    ready(Bus::builder().stream_capacity(capacity).build()).expect("a local bus builds")
}

/// A real waker: unparks the thread that polls.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls a stream on this thread, parking until woken: the next item, or `None` at its end.
/// A lost wake-up shows as a missed deadline.
struct Blocking {
    waker: Waker,
}

impl Blocking {
    fn new() -> Self {
        Blocking {
            waker: Waker::from(Arc::new(Unpark(thread::current()))),
        }
    }

    fn next<M: Message>(&self, stream: &mut MessageStream<M>) -> Option<Arc<M>> {
        let deadline = Instant::now() + DEADLINE;
        let mut cx = Context::from_waker(&self.waker);
        loop {
            if let Poll::Ready(item) = Pin::new(&mut *stream).poll_next(&mut cx) {
                return item;
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "a stream made no progress for {DEADLINE:?}: lost wake-up?"
            );
            thread::park_timeout(deadline - now);
        }
    }

    /// Drains a stream to its end; returns how many items it yielded.
    fn drain_to_end<M: Message>(&self, stream: &mut MessageStream<M>) -> u64 {
        let mut yielded = 0;
        while self.next(stream).is_some() {
            yielded += 1;
        }
        yielded
    }
}

/// One poll with a waker that does nothing.
fn poll_now<M: Message>(stream: &mut MessageStream<M>) -> Poll<Option<Arc<M>>> {
    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = Waker::from(Arc::new(Noop));
    Pin::new(stream).poll_next(&mut Context::from_waker(&waker))
}

/// Decrements a count of running threads when dropped, also when the thread panics, so that
/// threads waiting for the count to reach 0 do not spin forever after a failed assertion.
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

fn post_local(bus: &Bus, channel: &str, message: impl Message) -> usize {
    bus.messages()
        .post_message(channel, message, MessageScope::Local)
        .expect("a local post succeeds")
        .local_receivers()
}

fn counter() -> Arc<AtomicU64> {
    Arc::new(AtomicU64::new(0))
}

// ---- a. S06: closing sessions while posting ----------------------------------------------------

struct SessionsSize {
    /// Each poster posts at least this many messages, and goes on while churners run.
    min_posts: u64,
    /// Sessions each churner opens and closes.
    rounds: usize,
    listeners_per_session: usize,
    streams_per_session: usize,
}

const S06_CHANNELS: [&str; 3] = ["s06-a", "s06-b", "s06-c"];
const S06_POSTERS: usize = 2;
const S06_CHURNERS: usize = 2;

/// Posters post on three channels (by name and through typed handles) while churners open
/// sessions, register listeners (whose closures capture an `Arc` marker) and streams through
/// them, remove some, and close or drop the sessions, then drain the streams to their end.
///
/// Checks: listeners registered for the whole run got every message of their channel exactly
/// once (L02); every churn stream ends after its session closes (S02) with yielded + missed
/// == pushed (L11); once sessions are closed and posters joined, every marker is back to a
/// strong count of 1 with no further post (S03, S06); `Stats` adds up exactly (posted,
/// delivered == listener calls + stream pushes, stream_dropped == sum of missed), and the
/// gauges are back to their start once everything is closed (S01, L13).
fn s06_close_sessions_while_posting_run(size: SessionsSize) {
    let bus = bus_with_capacity(8);
    let start_channels = bus.stats().channels;

    let posted: [AtomicU64; 3] = Default::default();
    // Registered for the whole run: one bus listener and one listener and one stream of a
    // long-lived session per channel.
    let keeper = bus.session();
    let mut permanent = Vec::new();
    let mut bus_ids = Vec::new();
    let mut keeper_streams = Vec::new();
    for channel in S06_CHANNELS {
        let (on_bus, on_keeper) = (counter(), counter());
        let calls = on_bus.clone();
        bus_ids.push(bus.messages().add_listener(channel, move |_: &u64| {
            calls.fetch_add(1, SeqCst);
        }));
        let calls = on_keeper.clone();
        keeper.messages().add_listener(channel, move |_: &u64| {
            calls.fetch_add(1, SeqCst);
        });
        keeper_streams.push(keeper.messages().create_stream::<u64>(channel));
        permanent.push((on_bus, on_keeper));
    }

    let markers: Vec<Arc<()>> = (0..S06_CHURNERS).map(|_| Arc::new(())).collect();
    let churn_calls = counter();
    let mistyped_calls = counter();
    let churn_pushes = AtomicU64::new(0); // yielded + missed of every churn stream
    let churn_missed = AtomicU64::new(0);
    let churners_running = AtomicUsize::new(S06_CHURNERS);
    let barrier = Barrier::new(S06_POSTERS + S06_CHURNERS);

    thread::scope(|s| {
        for p in 0..S06_POSTERS {
            let (bus, posted, barrier, churners_running) =
                (&bus, &posted, &barrier, &churners_running);
            s.spawn(move || {
                let handles = S06_CHANNELS.map(|name| bus.channel::<u64>(name));
                barrier.wait();
                let mut i = 0u64;
                while i < size.min_posts || churners_running.load(SeqCst) > 0 {
                    let c = (p + i as usize) % S06_CHANNELS.len();
                    if i.is_multiple_of(2) {
                        post_local(bus, S06_CHANNELS[c], i);
                    } else {
                        handles[c]
                            .post(i, MessageScope::Local)
                            .expect("a local post succeeds");
                    }
                    posted[c].fetch_add(1, SeqCst);
                    i += 1;
                }
            });
        }
        for (t, marker) in markers.iter().enumerate() {
            let (bus, barrier, churn_calls, mistyped_calls) =
                (&bus, &barrier, &churn_calls, &mistyped_calls);
            let (churn_pushes, churn_missed, churners_running) =
                (&churn_pushes, &churn_missed, &churners_running);
            s.spawn(move || {
                let _running = Running(churners_running);
                let blocking = Blocking::new();
                barrier.wait();
                for round in 0..size.rounds {
                    let session = bus.session();
                    let mut ids = Vec::new();
                    for k in 0..size.listeners_per_session {
                        let channel = S06_CHANNELS[(t + round + k) % S06_CHANNELS.len()];
                        let (marker, calls) = (marker.clone(), churn_calls.clone());
                        let id = if k % 4 == 3 {
                            // Another type: never called (L05), still captured and released.
                            let mistyped = mistyped_calls.clone();
                            session.messages().add_listener(channel, move |_: &String| {
                                let _keep = &marker;
                                mistyped.fetch_add(1, SeqCst);
                            })
                        } else {
                            session.messages().add_listener(channel, move |_: &u64| {
                                let _keep = &marker;
                                calls.fetch_add(1, SeqCst);
                            })
                        };
                        ids.push((channel, id));
                    }
                    let mut streams: Vec<MessageStream<u64>> = (0..size.streams_per_session)
                        .map(|k| {
                            session
                                .messages()
                                .create_stream(S06_CHANNELS[(t + round + k) % S06_CHANNELS.len()])
                        })
                        .collect();
                    // Consume a little while the session is open.
                    let mut yielded = 0;
                    for stream in &mut streams {
                        for _ in 0..3 {
                            match poll_now(stream) {
                                Poll::Ready(Some(_)) => yielded += 1,
                                Poll::Ready(None) => {
                                    panic!("S02: a stream of an open session ended")
                                }
                                Poll::Pending => break,
                            }
                        }
                    }
                    if round % 3 == 0 {
                        let (channel, id) = ids[round % ids.len()];
                        assert!(
                            session.messages().remove_listener(channel, id),
                            "L08: a live listener's id"
                        );
                        assert!(
                            !session.messages().remove_listener(channel, id),
                            "L08: removed twice"
                        );
                    }
                    if round % 2 == 0 {
                        session.close();
                        assert!(session.is_closed());
                        session.close(); // idempotent (S01)
                    } else {
                        drop(session);
                    }
                    // S02: what was buffered, then the end; L11: nothing lost without a count.
                    for stream in &mut streams {
                        yielded += blocking.drain_to_end(stream);
                        churn_pushes.fetch_add(stream.missed(), SeqCst);
                        churn_missed.fetch_add(stream.missed(), SeqCst);
                    }
                    churn_pushes.fetch_add(yielded, SeqCst);
                }
            });
        }
    });

    // S03, S06: every session is closed and every post is done; nothing is held.
    for (t, marker) in markers.iter().enumerate() {
        assert_eq!(
            Arc::strong_count(marker),
            1,
            "S03: churner {t}'s closures are still held"
        );
    }
    assert_eq!(
        mistyped_calls.load(SeqCst),
        0,
        "L05: a String listener got a u64"
    );
    let posted: Vec<u64> = posted.iter().map(|p| p.load(SeqCst)).collect();
    let total: u64 = posted.iter().sum();
    assert!(total >= size.min_posts * S06_POSTERS as u64);
    // L02: exactly once per post for listeners registered throughout.
    for (c, (on_bus, on_keeper)) in permanent.iter().enumerate() {
        assert_eq!(
            on_bus.load(SeqCst),
            posted[c],
            "L02: bus listener of {}",
            S06_CHANNELS[c]
        );
        assert_eq!(
            on_keeper.load(SeqCst),
            posted[c],
            "L02: session listener of {}",
            S06_CHANNELS[c]
        );
    }
    keeper.close();
    let blocking = Blocking::new();
    let mut keeper_pushes = 0;
    let mut keeper_missed = 0;
    for (c, stream) in keeper_streams.iter_mut().enumerate() {
        let yielded = blocking.drain_to_end(stream);
        assert_eq!(
            yielded + stream.missed(),
            posted[c],
            "L11: keeper stream of {}",
            S06_CHANNELS[c]
        );
        keeper_pushes += yielded + stream.missed();
        keeper_missed += stream.missed();
    }
    for (c, id) in bus_ids.into_iter().enumerate() {
        assert!(bus.messages().remove_listener(S06_CHANNELS[c], id));
    }

    let stats = bus.stats();
    assert_eq!(stats.posted, total, "Stats::posted");
    let permanent_calls = 2 * total;
    assert_eq!(
        stats.delivered,
        permanent_calls + churn_calls.load(SeqCst) + churn_pushes.load(SeqCst) + keeper_pushes,
        "Stats::delivered == listener calls + stream pushes"
    );
    assert_eq!(
        stats.stream_dropped,
        churn_missed.load(SeqCst) + keeper_missed,
        "L11: Stats::stream_dropped"
    );
    assert_eq!(stats.listener_panics, 0);
    assert_eq!(
        (stats.listeners, stats.streams),
        (0, 0),
        "S01: everything closed is unregistered"
    );
    assert_eq!(stats.channels, start_channels, "L13: channels forgotten");
}

#[test]
fn s06_close_sessions_while_posting() {
    s06_close_sessions_while_posting_run(SessionsSize {
        min_posts: 20_000,
        rounds: 400,
        listeners_per_session: 6,
        streams_per_session: 2,
    });
}

#[test]
#[ignore = "large; run with --release -- --ignored"]
fn s06_close_sessions_while_posting_large() {
    s06_close_sessions_while_posting_run(SessionsSize {
        min_posts: 2_000_000,
        rounds: 100_000,
        listeners_per_session: 12,
        streams_per_session: 4,
    });
}

// ---- b. L10: posting while registering and removing ----------------------------------------------

const L10_POSTERS: usize = 2;
const L10_REGISTRARS: usize = 2;
const L10_PERMANENT: usize = 3;

/// Posters post on one channel while registrars add and remove listeners there (one at a
/// time, in batches removed in reverse order, and through sessions that are closed).
///
/// Checks: the permanent listeners got exactly the posted count (L02); every post reached at
/// least them; every add's id is removable exactly once (L08); `Stats::posted` == posts,
/// `delivered` == every listener call (counted in the closures), `type_mismatches` == posts
/// for the one permanent listener of another type (L05); the gauges are back to 0 after.
fn l10_post_while_registering_and_removing_run(posts_per_poster: u64) {
    const CHANNEL: &str = "l10-hot";
    let bus = Bus::local();
    let permanent: Vec<Arc<AtomicU64>> = (0..L10_PERMANENT).map(|_| counter()).collect();
    let mut permanent_ids = Vec::new();
    for calls in &permanent {
        let calls = calls.clone();
        permanent_ids.push(bus.messages().add_listener(CHANNEL, move |_: &u64| {
            calls.fetch_add(1, SeqCst);
        }));
    }
    permanent_ids.push(
        bus.messages()
            .add_listener(CHANNEL, |_: &String| panic!("L05: called with a u64")),
    );

    let transient_calls = counter();
    let posters_running = AtomicUsize::new(L10_POSTERS);
    let barrier = Barrier::new(L10_POSTERS + L10_REGISTRARS);
    let registrar_rounds = AtomicU64::new(0);

    thread::scope(|s| {
        for p in 0..L10_POSTERS {
            let (bus, barrier, posters_running) = (&bus, &barrier, &posters_running);
            s.spawn(move || {
                let _running = Running(posters_running);
                barrier.wait();
                for i in 0..posts_per_poster {
                    let receivers = post_local(bus, CHANNEL, i * L10_POSTERS as u64 + p as u64);
                    assert!(
                        receivers >= L10_PERMANENT,
                        "L02: a post missed a permanent listener"
                    );
                }
            });
        }
        for _ in 0..L10_REGISTRARS {
            let (bus, barrier, posters_running) = (&bus, &barrier, &posters_running);
            let (transient_calls, registrar_rounds) = (&transient_calls, &registrar_rounds);
            s.spawn(move || {
                let add = |messages: &evbus::Messages| {
                    let calls = transient_calls.clone();
                    messages.add_listener(CHANNEL, move |_: &u64| {
                        calls.fetch_add(1, SeqCst);
                    })
                };
                barrier.wait();
                let mut round = 0u64;
                while posters_running.load(SeqCst) > 0 {
                    match round % 3 {
                        0 => {
                            let id = add(bus.messages());
                            assert!(
                                bus.messages().remove_listener(CHANNEL, id),
                                "L08: a live id"
                            );
                            assert!(
                                !bus.messages().remove_listener(CHANNEL, id),
                                "L08: removed twice"
                            );
                        }
                        1 => {
                            let ids: Vec<_> = (0..5).map(|_| add(bus.messages())).collect();
                            for id in ids.into_iter().rev() {
                                assert!(
                                    bus.messages().remove_listener(CHANNEL, id),
                                    "L08: a live id"
                                );
                            }
                        }
                        _ => {
                            let session = bus.session();
                            let ids: Vec<_> = (0..3).map(|_| add(session.messages())).collect();
                            // Removal through another `Messages` of the same bus works too.
                            assert!(
                                bus.messages().remove_listener(CHANNEL, ids[1]),
                                "L08: a live id"
                            );
                            session.close();
                            assert!(
                                !bus.messages().remove_listener(CHANNEL, ids[0]),
                                "S01: closed with its session"
                            );
                        }
                    }
                    round += 1;
                }
                registrar_rounds.fetch_add(round, SeqCst);
            });
        }
    });

    let total = posts_per_poster * L10_POSTERS as u64;
    for (k, calls) in permanent.iter().enumerate() {
        assert_eq!(calls.load(SeqCst), total, "L02: permanent listener {k}");
    }
    assert!(
        registrar_rounds.load(SeqCst) > 0,
        "the registrars ran while posts were made"
    );
    let stats = bus.stats();
    assert_eq!(stats.posted, total, "Stats::posted");
    assert_eq!(
        stats.delivered,
        L10_PERMANENT as u64 * total + transient_calls.load(SeqCst),
        "Stats::delivered == listener calls"
    );
    assert_eq!(stats.type_mismatches, total, "L05: Stats::type_mismatches");
    assert_eq!(stats.listener_panics, 0);
    assert_eq!(
        stats.listeners,
        L10_PERMANENT as u64 + 1,
        "only the permanent listeners are left"
    );
    for id in permanent_ids {
        assert!(bus.messages().remove_listener(CHANNEL, id));
    }
    let stats = bus.stats();
    assert_eq!((stats.listeners, stats.streams, stats.channels), (0, 0, 0));
}

#[test]
fn l10_post_while_registering_and_removing() {
    l10_post_while_registering_and_removing_run(50_000);
}

#[test]
#[ignore = "large; run with --release -- --ignored"]
fn l10_post_while_registering_and_removing_large() {
    l10_post_while_registering_and_removing_run(20_000_000);
}

// ---- c. L11: stream accounting under concurrent posts --------------------------------------------

const L11_POSTERS: u32 = 4;

/// How a stream is consumed.
#[derive(Clone, Copy, Debug)]
enum Consumer {
    /// A tokio task that takes every item as soon as it can.
    Fast,
    /// A tokio task that yields to the runtime after every item.
    Slow,
    /// A std thread polling with a waker that unparks it.
    Thread,
    /// Nobody, until the posters are done and the session is closed.
    Late,
}

const CONSUMERS: [Consumer; 4] = [
    Consumer::Fast,
    Consumer::Slow,
    Consumer::Thread,
    Consumer::Late,
];

/// What one stream yielded, checked as it goes.
#[derive(Debug, Default)]
struct Yielded {
    count: u64,
    /// Last sequence number seen from each posting thread.
    last: [Option<u64>; L11_POSTERS as usize],
}

impl Yielded {
    /// L03: per posting thread, messages come in post order (and none twice).
    fn take(&mut self, (thread, seq): (u32, u64)) {
        let last = &mut self.last[thread as usize];
        if let Some(last) = *last {
            assert!(
                seq > last,
                "L03: thread {thread}'s message {seq} came after its {last}"
            );
        }
        *last = Some(seq);
        self.count += 1;
    }
}

/// Four posting threads tag their messages `(thread, seq)` and post into one channel with
/// four streams of one session, consumed fast, slowly, from a parked thread, and not at all
/// until the end. After the posters are done the session is closed and every stream is
/// drained to its end (S02).
///
/// Checks for every stream: yielded + missed() == posted (L11), per-thread order of what was
/// yielded (L03); every post reached all four streams before returning (L03); a stream read
/// only at the end yields exactly the newest `capacity` messages' worth; `Stats::delivered`
/// and `stream_dropped` add up.
fn l11_stream_accounting_run(capacity: usize, posts_per_poster: u64) {
    const CHANNEL: &str = "l11";
    let bus = bus_with_capacity(capacity);
    let session = bus.session();
    let streams: Vec<MessageStream<(u32, u64)>> = CONSUMERS
        .iter()
        .map(|_| session.messages().create_stream(CHANNEL))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("a tokio runtime");

    let barrier = Barrier::new(L11_POSTERS as usize + 1);
    let results: Vec<(Consumer, Yielded, u64)> = thread::scope(|s| {
        let mut tasks = Vec::new();
        let mut threads = Vec::new();
        let mut late = None;
        for (consumer, mut stream) in CONSUMERS.into_iter().zip(streams) {
            match consumer {
                Consumer::Fast | Consumer::Slow => tasks.push(runtime.spawn(async move {
                    let mut yielded = Yielded::default();
                    while let Some(message) =
                        poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await
                    {
                        yielded.take(*message);
                        if matches!(consumer, Consumer::Slow) {
                            tokio::task::yield_now().await;
                        }
                    }
                    (consumer, yielded, stream.missed())
                })),
                Consumer::Thread => threads.push(s.spawn(move || {
                    let blocking = Blocking::new();
                    let mut yielded = Yielded::default();
                    while let Some(message) = blocking.next(&mut stream) {
                        yielded.take(*message);
                    }
                    (consumer, yielded, stream.missed())
                })),
                Consumer::Late => late = Some(stream),
            }
        }
        let posters: Vec<_> = (0..L11_POSTERS)
            .map(|t| {
                let (bus, barrier) = (&bus, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    for seq in 0..posts_per_poster {
                        // L03: queued in every stream before the post returns.
                        assert_eq!(post_local(bus, CHANNEL, (t, seq)), CONSUMERS.len());
                    }
                })
            })
            .collect();
        barrier.wait();
        let posters: Vec<_> = posters.into_iter().map(|poster| poster.join()).collect();
        // S02: closing the session ends every stream after what it buffered. (Closed before
        // a poster's failure is reported, so that the consumer thread ends and the scope can.)
        session.close();
        for poster in posters {
            poster.expect("a poster panicked");
        }
        let mut results = Vec::new();
        let joined = runtime.block_on(async {
            tokio::time::timeout(DEADLINE, async {
                let mut out = Vec::new();
                for task in tasks {
                    out.push(task.await.expect("a consumer task panicked"));
                }
                out
            })
            .await
        });
        results.extend(joined.expect("S02: a stream did not end after its session closed"));
        for thread in threads {
            results.push(thread.join().expect("a consumer thread panicked"));
        }
        let mut late = late.expect("a late stream");
        let blocking = Blocking::new();
        let mut yielded = Yielded::default();
        while let Some(message) = blocking.next(&mut late) {
            yielded.take(*message);
        }
        let total = posts_per_poster * L11_POSTERS as u64;
        assert_eq!(
            yielded.count,
            total.min(capacity as u64),
            "L11: a full buffer holds `capacity` messages"
        );
        results.push((Consumer::Late, yielded, late.missed()));
        results
    });

    let total = posts_per_poster * L11_POSTERS as u64;
    let mut missed = 0;
    assert_eq!(results.len(), CONSUMERS.len());
    for (consumer, yielded, stream_missed) in &results {
        assert_eq!(
            yielded.count + stream_missed,
            total,
            "L11: {consumer:?} consumer, capacity {capacity}: yielded {} + missed {stream_missed}",
            yielded.count
        );
        missed += stream_missed;
    }
    let stats = bus.stats();
    assert_eq!(stats.posted, total);
    assert_eq!(
        stats.delivered,
        total * CONSUMERS.len() as u64,
        "Stats::delivered == stream pushes"
    );
    assert_eq!(
        stats.stream_dropped, missed,
        "L11: Stats::stream_dropped == sum of missed()"
    );
    assert_eq!((stats.listeners, stats.streams, stats.channels), (0, 0, 0));
}

#[test]
fn l11_stream_accounting_under_concurrent_posts() {
    for capacity in [1, 16, 100_000] {
        l11_stream_accounting_run(capacity, 10_000);
    }
}

#[test]
#[ignore = "large; run with --release -- --ignored"]
fn l11_stream_accounting_under_concurrent_posts_large() {
    for capacity in [1, 16, 1024, 1 << 20] {
        l11_stream_accounting_run(capacity, 2_000_000);
    }
}

// ---- d. L09: a removed listener's closure is released after in-flight posts ---------------------

const L09_POSTERS: usize = 3;

/// Paces the posters against the remover: at least `MIN` and about `MAX` posts between two
/// removals, so a round takes about as long on a busy machine as on an idle one. Waits block
/// on a condition variable: on an oversubscribed machine a `yield_now` loop costs a time
/// slice per turn.
struct Pace {
    lock: Mutex<()>,
    changed: Condvar,
    /// Posts since the last removal.
    since: AtomicU64,
    remover_running: AtomicBool,
}

impl Pace {
    const MIN: u64 = 2;
    const MAX: u64 = 48;

    fn new() -> Self {
        Pace {
            lock: Mutex::new(()),
            changed: Condvar::new(),
            since: AtomicU64::new(0),
            remover_running: AtomicBool::new(true),
        }
    }

    fn wait_while(&self, what: &str, condition: impl Fn() -> bool) {
        let guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let (guard, timeout) = self
            .changed
            .wait_timeout_while(guard, DEADLINE, |_| condition())
            .unwrap_or_else(PoisonError::into_inner);
        drop(guard);
        assert!(
            !timeout.timed_out(),
            "{what} made no progress for {DEADLINE:?}"
        );
    }

    fn notify(&self, change: impl FnOnce()) {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        change();
        self.changed.notify_all();
    }

    /// For a poster: waits while the posts' budget is spent; false once the remover is done.
    fn may_post(&self) -> bool {
        self.wait_while("the remover", || {
            self.remover_running.load(SeqCst) && self.since.load(SeqCst) >= Self::MAX
        });
        self.remover_running.load(SeqCst)
    }

    fn posted(&self) {
        if self.since.fetch_add(1, SeqCst) + 1 == Self::MIN {
            self.notify(|| {});
        }
    }

    /// For the remover: waits for a few posts since the last removal.
    fn before_removal(&self) {
        self.wait_while("the posters", || self.since.load(SeqCst) < Self::MIN);
    }

    fn after_removal(&self) {
        self.notify(|| self.since.store(0, SeqCst));
    }
}

/// Tells the posters that the remover is done, also when it panicked.
struct RemoverDone<'a>(&'a Pace);

impl Drop for RemoverDone<'_> {
    fn drop(&mut self) {
        self.0
            .notify(|| self.0.remover_running.store(false, SeqCst));
    }
}

/// Three posters post on one channel while a remover removes its listeners one by one; the
/// posters stop as soon as the remover is done. Each closure captures its own `Arc` marker.
///
/// Checks: a post that started after `remove_listener(k)` returned never calls listener `k`
/// (L09: the poster notes how many removals had returned before each post began, and the
/// listener checks it on the posting thread); after the posters join, with no later post,
/// every marker is back to a strong count of 1 (L09, S03); every removal returned true once.
fn l09_removed_listener_closure_released_run(rounds: usize, listeners: usize) {
    const CHANNEL: &str = "l09";
    thread_local! {
        /// Removals that had returned when this thread's current post began.
        static REMOVED_BEFORE_POST: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }
    let bus = Bus::local();
    // A listener that stays, so that the channel is never forgotten mid-round.
    let anchor = bus.messages().add_listener(CHANNEL, |_: &u64| {});
    for round in 0..rounds {
        let removed = AtomicUsize::new(0);
        let violations = counter();
        let calls = counter();
        let markers: Vec<Arc<()>> = (0..listeners).map(|_| Arc::new(())).collect();
        let ids: Vec<_> = markers
            .iter()
            .enumerate()
            .map(|(k, marker)| {
                let (marker, violations, calls) =
                    (marker.clone(), violations.clone(), calls.clone());
                bus.messages().add_listener(CHANNEL, move |_: &u64| {
                    let _keep = &marker;
                    calls.fetch_add(1, SeqCst);
                    if k < REMOVED_BEFORE_POST.with(|r| r.get()) {
                        violations.fetch_add(1, SeqCst);
                    }
                })
            })
            .collect();
        let pace = Pace::new();
        let barrier = Barrier::new(L09_POSTERS + 1);
        thread::scope(|s| {
            for _ in 0..L09_POSTERS {
                let (bus, barrier, removed, pace) = (&bus, &barrier, &removed, &pace);
                s.spawn(move || {
                    barrier.wait();
                    let mut i = 0u64;
                    while pace.may_post() {
                        REMOVED_BEFORE_POST.with(|r| r.set(removed.load(SeqCst)));
                        post_local(bus, CHANNEL, i);
                        pace.posted();
                        i += 1;
                    }
                });
            }
            let (bus, barrier, removed, pace, ids) = (&bus, &barrier, &removed, &pace, &ids);
            s.spawn(move || {
                let _done = RemoverDone(pace);
                barrier.wait();
                for (k, id) in ids.iter().enumerate() {
                    pace.before_removal();
                    assert!(
                        bus.messages().remove_listener(CHANNEL, *id),
                        "L08: listener {k} was live"
                    );
                    removed.store(k + 1, SeqCst);
                    pace.after_removal();
                }
            });
        });
        assert_eq!(
            violations.load(SeqCst),
            0,
            "L09: round {round}: a post begun after a removal called the removed listener"
        );
        assert!(
            calls.load(SeqCst) > 0,
            "round {round}: the listeners were called at all"
        );
        for (k, marker) in markers.iter().enumerate() {
            assert_eq!(
                Arc::strong_count(marker),
                1,
                "L09/S03: round {round}: listener {k}'s closure is still held"
            );
        }
        for (k, id) in ids.iter().enumerate() {
            assert!(
                !bus.messages().remove_listener(CHANNEL, *id),
                "L08: listener {k} removed twice"
            );
        }
        assert_eq!(bus.stats().listeners, 1);
    }
    assert!(bus.messages().remove_listener(CHANNEL, anchor));
    let stats = bus.stats();
    assert_eq!((stats.listeners, stats.streams, stats.channels), (0, 0, 0));
}

#[test]
fn l09_removed_listener_closure_released_after_inflight_posts() {
    l09_removed_listener_closure_released_run(40, 100);
}

#[test]
#[ignore = "large; run with --release -- --ignored"]
fn l09_removed_listener_closure_released_after_inflight_posts_large() {
    l09_removed_listener_closure_released_run(500, 500);
}
