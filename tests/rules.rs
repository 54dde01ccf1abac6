//! One test per rule of the behaviour contract (shared/semantics.md), named after it.
//! Concurrency-heavy variants live in `tests/stress.rs`; the random-sequence comparison with a
//! reference model in `tests/model.rs`.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use evbus::{Bus, BusError, MessageScope, MessageStream, PostError, Stats};
use futures_core::Stream;
use serde::{Deserialize, Serialize};

/// Generous: the machine is a busy 2-core one. Only ever a bound on a wait for a condition.
const DEADLINE: Duration = Duration::from_secs(30);

fn poll_now<M: evbus::Message>(stream: &mut MessageStream<M>) -> Poll<Option<Arc<M>>> {
    Pin::new(stream).poll_next(&mut Context::from_waker(Waker::noop()))
}

/// Everything the stream holds right now, and whether it has ended.
fn drain<M: evbus::Message + Clone>(stream: &mut MessageStream<M>) -> (Vec<M>, bool) {
    let mut out = Vec::new();
    loop {
        match poll_now(stream) {
            Poll::Ready(Some(message)) => out.push((*message).clone()),
            Poll::Ready(None) => return (out, true),
            Poll::Pending => return (out, false),
        }
    }
}

fn local(bus: &Bus, channel: &str, message: impl evbus::Message) -> usize {
    bus.messages()
        .post_message(channel, message, MessageScope::Local)
        .unwrap()
        .local_receivers()
}

/// Adds a listener of `M` on `channel` that only counts its calls; returns the count.
fn counting_listener<M: evbus::Message>(
    messages: &evbus::Messages,
    channel: &str,
) -> Arc<AtomicUsize> {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    messages.add_listener(channel, move |_: &M| {
        counter.fetch_add(1, SeqCst);
    });
    calls
}

/// A closure's captured marker: its strong count tells whether the bus still holds the closure.
fn marker() -> Arc<()> {
    Arc::new(())
}

/// A gate that parks a thread inside the bus (in a listener, in a closure's drop) until the
/// test opens it: `Gate::entered` says someone is parked, `Gate::open` lets them go.
struct Gate {
    entered: mpsc::Receiver<()>,
    resume: mpsc::Sender<()>,
}

/// The parked side of a [`Gate`], to move into a closure.
struct Parking {
    entered: mpsc::Sender<()>,
    resume: Mutex<mpsc::Receiver<()>>,
}

fn gate() -> (Gate, Parking) {
    let (entered_tx, entered) = mpsc::channel();
    let (resume, resume_rx) = mpsc::channel();
    (
        Gate { entered, resume },
        Parking {
            entered: entered_tx,
            resume: Mutex::new(resume_rx),
        },
    )
}

impl Gate {
    fn entered(&self) {
        self.entered.recv_timeout(DEADLINE).unwrap();
    }
    fn open(&self) {
        self.resume.send(()).unwrap();
    }
}

impl Parking {
    fn park(&self) {
        self.entered.send(()).unwrap();
        self.resume.lock().unwrap().recv_timeout(DEADLINE).unwrap();
    }
}

// ---- L. Local delivery ----------------------------------------------------------------------

#[test]
fn l01_post_without_listeners_reaches_nobody() {
    let bus = Bus::local();
    let delivery = bus
        .messages()
        .post_message("nobody", 1u64, MessageScope::Local)
        .unwrap();
    assert_eq!(delivery.local_receivers(), 0);
    assert!(!delivery.is_global());
    let stats = bus.stats();
    assert_eq!((stats.posted, stats.delivered), (1, 0));
}

#[test]
fn l02_listeners_called_once_on_posting_thread_in_add_order() {
    let bus = Bus::local();
    let log = Arc::new(Mutex::new(Vec::new()));
    for n in 0..5 {
        let log = log.clone();
        bus.messages().add_listener("c", move |m: &u64| {
            log.lock().unwrap().push((n, *m, thread::current().id()))
        });
    }
    let poster = thread::spawn({
        let bus = bus.clone();
        let log = log.clone();
        move || {
            let receivers = local(&bus, "c", 42u64);
            // Before post_message returned, every listener ran exactly once.
            (
                receivers,
                log.lock().unwrap().clone(),
                thread::current().id(),
            )
        }
    });
    let (receivers, calls, poster_id) = poster.join().unwrap();
    assert_eq!(receivers, 5);
    assert_eq!(
        calls,
        (0..5).map(|n| (n, 42, poster_id)).collect::<Vec<_>>()
    );
}

#[test]
fn l03_streams_have_the_message_before_post_returns_in_post_order() {
    let bus = Bus::local();
    let mut stream = bus.messages().create_stream::<u64>("c");
    for i in 0..100u64 {
        assert_eq!(local(&bus, "c", i), 1);
        // Queued already: no other thread or timer involved.
        assert!(matches!(poll_now(&mut stream), Poll::Ready(Some(m)) if *m == i));
    }
    for i in 0..100u64 {
        local(&bus, "c", i);
    }
    assert_eq!(drain(&mut stream), ((0..100).collect::<Vec<_>>(), false));
}

/// Counts serializations, to prove the local path serializes nothing.
#[derive(Deserialize, Clone, Debug)]
struct Counted(u64);
static SERIALIZED: AtomicUsize = AtomicUsize::new(0);
impl Serialize for Counted {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SERIALIZED.fetch_add(1, SeqCst);
        s.serialize_u64(self.0)
    }
}

#[test]
fn l04_every_receiver_gets_the_same_value_unserialized() {
    let bus = Bus::local();
    let seen = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..3 {
        let seen = seen.clone();
        bus.messages().add_listener("c", move |m: &Counted| {
            seen.lock().unwrap().push(m as *const Counted as usize)
        });
    }
    let mut a = bus.messages().create_stream::<Counted>("c");
    let mut b = bus.messages().create_stream::<Counted>("c");
    assert_eq!(local(&bus, "c", Counted(9)), 5);
    let seen = seen.lock().unwrap();
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "listeners saw different values: {seen:?}"
    );
    let (Poll::Ready(Some(a)), Poll::Ready(Some(b))) = (poll_now(&mut a), poll_now(&mut b)) else {
        panic!("both streams have the message")
    };
    assert!(Arc::ptr_eq(&a, &b), "streams get clones of one Arc");
    assert_eq!(a.0, 9);
    assert_eq!(SERIALIZED.load(SeqCst), 0);
}

#[test]
fn l05_receivers_of_another_type_are_skipped_and_counted() {
    let bus = Bus::local();
    let calls = counting_listener::<u64>(bus.messages(), "c");
    let mut strings = bus.messages().create_stream::<String>("c");
    assert_eq!(local(&bus, "c", "text".to_string()), 1);
    assert_eq!(local(&bus, "c", 5u64), 1);
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(drain(&mut strings).0, vec!["text".to_string()]);
    let stats = bus.stats();
    assert_eq!((stats.type_mismatches, stats.delivered), (2, 2));
}

#[test]
fn l06_listeners_may_change_the_channel_and_post_during_a_post() {
    let bus = Bus::local();
    let log = Arc::new(Mutex::new(Vec::new()));
    let session = Arc::new(Mutex::new(Some(bus.session())));

    // 1: removes itself, adds a listener, posts on another channel, closes a session.
    let own_id = Arc::new(Mutex::new(None));
    let first = {
        let (bus, log, own_id, session) =
            (bus.clone(), log.clone(), own_id.clone(), session.clone());
        bus.clone().messages().add_listener("c", move |m: &u64| {
            log.lock().unwrap().push(format!("first {m}"));
            let id = own_id.lock().unwrap().take();
            if let Some(id) = id {
                assert!(bus.messages().remove_listener("c", id));
            }
            let log2 = log.clone();
            bus.messages().add_listener("c", move |m: &u64| {
                log2.lock().unwrap().push(format!("added {m}"))
            });
            bus.messages()
                .post_message("other", *m, MessageScope::Local)
                .unwrap();
            drop(session.lock().unwrap().take());
        })
    };
    *own_id.lock().unwrap() = Some(first);
    // 2: owned by the session that listener 1 closes; still part of this post's snapshot.
    {
        let log = log.clone();
        let guard = session.lock().unwrap();
        guard
            .as_ref()
            .unwrap()
            .messages()
            .add_listener("c", move |m: &u64| {
                log.lock().unwrap().push(format!("session {m}"))
            });
    }
    // 3: a plain listener after them.
    {
        let log = log.clone();
        bus.messages().add_listener("c", move |m: &u64| {
            log.lock().unwrap().push(format!("last {m}"))
        });
    }
    {
        let log = log.clone();
        bus.messages().add_listener("other", move |m: &u64| {
            log.lock().unwrap().push(format!("other {m}"))
        });
    }

    assert_eq!(
        local(&bus, "c", 1u64),
        3,
        "the post saw the channel as it was when it began"
    );
    assert_eq!(
        *log.lock().unwrap(),
        ["first 1", "other 1", "session 1", "last 1"]
    );
    log.lock().unwrap().clear();
    assert_eq!(local(&bus, "c", 2u64), 2);
    assert_eq!(*log.lock().unwrap(), ["last 2", "added 2"]);
}

#[test]
fn l07_a_panicking_listener_does_not_stop_others() {
    let bus = Bus::local();
    let calls = Arc::new(AtomicUsize::new(0));
    for n in 0..3 {
        let calls = calls.clone();
        bus.messages().add_listener("c", move |m: &u64| {
            if n == 1 {
                panic!("listener {n} fails on {m} (expected by the test)");
            }
            calls.fetch_add(1, SeqCst);
        });
    }
    let delivery = bus.messages().post_message("c", 1u64, MessageScope::Local);
    assert_eq!(delivery.unwrap().local_receivers(), 3);
    assert_eq!(calls.load(SeqCst), 2);
    assert_eq!(bus.stats().listener_panics, 1);
    // Still usable.
    assert_eq!(local(&bus, "c", 2u64), 3);
    assert_eq!(calls.load(SeqCst), 4);
    assert_eq!(bus.stats().listener_panics, 2);
}

#[test]
fn l08_every_add_returns_a_new_id_and_unknown_ids_are_refused() {
    let bus = Bus::local();
    let listener = |_: &u64| {};
    let a = bus.messages().add_listener("c", listener);
    let b = bus.messages().add_listener("c", listener);
    assert_ne!(a, b, "same closure, two registrations");
    assert_eq!(local(&bus, "c", 1u64), 2);
    assert!(!bus.messages().remove_listener("other", a), "wrong channel");
    assert!(
        !bus.messages().remove_listener("never-used", a),
        "unknown channel"
    );
    assert!(bus.messages().remove_listener("c", a));
    assert!(!bus.messages().remove_listener("c", a), "already removed");
    let session = bus.session();
    assert!(
        session.messages().remove_listener("c", b),
        "ids are bus-wide"
    );
    assert_eq!(local(&bus, "c", 1u64), 0);
}

#[test]
fn l09_removed_listener_is_not_called_by_later_posts_but_may_finish_a_running_one() {
    let bus = Bus::local();
    let (gate, parking) = gate();
    // Listener 1 parks the running post; listener 2 is removed meanwhile.
    bus.messages().add_listener("c", move |m: &u64| {
        if *m == 1 {
            parking.park();
        }
    });
    let captured = marker();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let second = {
        let (captured, calls) = (captured.clone(), calls.clone());
        bus.messages().add_listener("c", move |m: &u64| {
            let _keep = &captured;
            calls.lock().unwrap().push(*m);
        })
    };
    let running = thread::spawn({
        let bus = bus.clone();
        move || local(&bus, "c", 1u64)
    });
    gate.entered();
    assert!(bus.messages().remove_listener("c", second));
    // A post that starts after the removal does not call it...
    assert_eq!(local(&bus, "c", 2u64), 1);
    // ...while the post already running still holds it, alive.
    assert_eq!(Arc::strong_count(&captured), 2);
    gate.open();
    assert_eq!(running.join().unwrap(), 2);
    assert_eq!(*calls.lock().unwrap(), [1]);
    // The running post finished: the closure is gone, with no later post needed.
    assert_eq!(Arc::strong_count(&captured), 1);
}

#[test]
fn l10_posts_never_wait_for_running_posts_or_registrations() {
    let bus = Bus::local();
    // A post parked inside a listener on "c".
    let (post_gate, parking) = gate();
    bus.messages().add_listener("c", move |m: &u64| {
        if *m == 0 {
            parking.park();
        }
    });
    // A session close parked in the drop of one of its closures (on "d").
    struct SlowDrop(Parking);
    impl Drop for SlowDrop {
        fn drop(&mut self) {
            self.0.park();
        }
    }
    let (drop_gate, parking) = gate();
    let session = bus.session();
    let slow = SlowDrop(parking);
    session.messages().add_listener("d", move |_: &u64| {
        let _keep = &slow;
    });

    let parked_post = thread::spawn({
        let bus = bus.clone();
        move || local(&bus, "c", 0u64)
    });
    post_gate.entered();
    let parked_close = thread::spawn(move || session.close());
    drop_gate.entered();

    // Both are parked. Everything else proceeds, on this thread, without waiting for them.
    for i in 1..100u64 {
        assert_eq!(local(&bus, "c", i), 1);
        assert_eq!(local(&bus, "d", i), 0);
    }
    let id = bus.messages().add_listener("d", |_: &u64| {});
    assert_eq!(local(&bus, "d", 1u64), 1);
    assert!(bus.messages().remove_listener("d", id));
    let other = bus.session();
    other.messages().add_listener("c", |_: &u64| {});
    other.close();

    post_gate.open();
    drop_gate.open();
    assert_eq!(parked_post.join().unwrap(), 1);
    parked_close.join().unwrap();
}

#[test]
fn l11_a_full_stream_drops_its_oldest_and_counts_it() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bus = rt
        .block_on(Bus::builder().stream_capacity(3).build())
        .unwrap();
    let mut stream = bus.messages().create_stream::<u64>("c");
    for i in 0..10u64 {
        assert_eq!(
            local(&bus, "c", i),
            1,
            "the poster is not refused or slowed"
        );
    }
    assert_eq!(stream.missed(), 7);
    assert_eq!(bus.stats().stream_dropped, 7);
    let (yielded, ended) = drain(&mut stream);
    assert_eq!((yielded, ended), (vec![7, 8, 9], false));
    assert_eq!(3 + stream.missed(), 10, "yielded + missed == sent");
}

#[test]
fn l12_dropping_a_stream_unregisters_it_and_frees_its_buffer() {
    let bus = Bus::local();
    let payload = marker();
    let stream = bus.messages().create_stream::<ArcMarker>("c");
    local(&bus, "c", ArcMarker(payload.clone()));
    assert_eq!(Arc::strong_count(&payload), 2, "buffered in the stream");
    assert_eq!((bus.stats().streams, bus.stats().channels), (1, 1));
    drop(stream);
    assert_eq!(
        Arc::strong_count(&payload),
        1,
        "nothing of the stream stays reachable"
    );
    assert_eq!((bus.stats().streams, bus.stats().channels), (0, 0));
    assert_eq!(local(&bus, "c", ArcMarker(payload.clone())), 0);
}

/// A message holding an `Arc`, to see whether anything still holds a delivered message.
#[derive(Clone, Debug)]
struct ArcMarker(#[allow(dead_code)] /* held, for its strong count */ Arc<()>);
impl Serialize for ArcMarker {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}
impl<'de> Deserialize<'de> for ArcMarker {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|()| ArcMarker(marker()))
    }
}

#[test]
fn l13_a_million_short_lived_channels_leave_nothing_behind() {
    let bus = Bus::local();
    let start = bus.stats().channels;
    let mut name = String::new();
    for i in 0..1_000_000u32 {
        use std::fmt::Write;
        name.clear();
        write!(name, "_serverpod_revoked_authentication_{i}").unwrap();
        match i % 4 {
            0 => {
                let id = bus.messages().add_listener(&name, |_: &u64| {});
                assert!(bus.messages().remove_listener(&name, id));
            }
            1 => drop(bus.messages().create_stream::<u64>(&name)),
            2 => drop(bus.channel::<u64>(&name)),
            _ => {
                let session = bus.session();
                session.messages().add_listener(&name, |_: &u64| {});
            }
        }
        assert_eq!(
            bus.stats().channels,
            start,
            "channel {i} is forgotten at once"
        );
    }
    // Posting alone interns nothing.
    assert_eq!(local(&bus, "never-registered", 1u64), 0);
    assert_eq!(bus.stats().channels, start);
    // A live handle keeps the channel; the last one going forgets it.
    let handle = bus.channel::<u64>("held");
    let copy = handle.clone();
    drop(handle);
    assert_eq!(bus.stats().channels, start + 1);
    bus.messages().add_listener("held", |_: &u64| {});
    assert_eq!(
        copy.post(1, MessageScope::Local).unwrap().local_receivers(),
        1
    );
    drop(copy);
    assert_eq!(
        bus.stats().channels,
        start + 1,
        "the listener still holds it"
    );
}

/// A post by name skips the lookup for the name a thread posted to last (a per-thread cache):
/// once the channel is forgotten and registered afresh, the next post reaches the new listener,
/// and a channel of the same name on another bus is another channel.
#[test]
fn l13_a_name_posted_to_again_after_it_was_forgotten_reaches_its_new_listeners() {
    let bus = Bus::local();
    let other = Bus::local();
    let first = Arc::new(AtomicUsize::new(0));
    let counter = first.clone();
    let id = bus.messages().add_listener("user_1", move |_: &u64| {
        counter.fetch_add(1, SeqCst);
    });
    for _ in 0..3 {
        assert_eq!(local(&bus, "user_1", 1u64), 1);
    }
    assert!(bus.messages().remove_listener("user_1", id));
    assert_eq!(local(&bus, "user_1", 1u64), 0, "forgotten: nobody listens");
    let second = Arc::new(AtomicUsize::new(0));
    let counter = second.clone();
    bus.messages().add_listener("user_1", move |_: &u64| {
        counter.fetch_add(1, SeqCst);
    });
    assert_eq!(local(&bus, "user_1", 2u64), 1);
    assert_eq!(local(&bus, "user_1", 2u64), 1);
    assert_eq!((first.load(SeqCst), second.load(SeqCst)), (3, 2));
    // The same name on another bus.
    assert_eq!(local(&other, "user_1", 3u64), 0);
    let elsewhere = Arc::new(AtomicUsize::new(0));
    let counter = elsewhere.clone();
    other.messages().add_listener("user_1", move |_: &u64| {
        counter.fetch_add(1, SeqCst);
    });
    for _ in 0..2 {
        assert_eq!(local(&other, "user_1", 3u64), 1);
        assert_eq!(local(&bus, "user_1", 3u64), 1);
    }
    assert_eq!(
        (second.load(SeqCst), elsewhere.load(SeqCst)),
        (4, 2),
        "each bus's posts reached its own listener"
    );
    // A listener that posts by name itself, to its own channel's neighbour and back.
    let nested = bus.clone();
    bus.messages().add_listener("relay", move |n: &u64| {
        assert_eq!(local(&nested, "user_1", *n), 1);
    });
    for _ in 0..3 {
        assert_eq!(local(&bus, "relay", 5u64), 1);
    }
    assert_eq!(second.load(SeqCst), 7);
}

/// The by-name cache holds a channel, never its receivers: a dropped bus frees what its
/// listeners captured although this thread's last posts by name went to them.
#[test]
fn l13_a_dropped_bus_frees_its_listeners_though_a_thread_posted_to_them_by_name() {
    let captured = Arc::new(());
    let bus = Bus::local();
    let held = captured.clone();
    bus.messages().add_listener("user_1", move |_: &u64| {
        let _ = &held;
    });
    for _ in 0..3 {
        assert_eq!(local(&bus, "user_1", 1u64), 1);
    }
    assert_eq!(Arc::strong_count(&captured), 2);
    drop(bus);
    assert_eq!(Arc::strong_count(&captured), 1, "the listener was freed");
}

// ---- S. Sessions ----------------------------------------------------------------------------

#[test]
fn s01_closing_a_session_removes_what_it_registered_idempotently() {
    let bus = Bus::local();
    let session = bus.session();
    session.messages().add_listener("a", |_: &u64| {});
    session.messages().add_listener("b", |_: &String| {});
    let _stream = session.messages().create_stream::<u64>("a");
    bus.messages().add_listener("a", |_: &u64| {});
    assert_eq!((bus.stats().listeners, bus.stats().streams), (3, 1));
    assert!(!session.is_closed());
    session.close();
    assert!(session.is_closed());
    assert_eq!((bus.stats().listeners, bus.stats().streams), (1, 0));
    session.close();
    assert_eq!(bus.stats().listeners, 1);
    assert_eq!(
        local(&bus, "a", 1u64),
        1,
        "only the bus-level listener is left"
    );
    let dropped = bus.session();
    dropped.messages().add_listener("a", |_: &u64| {});
    drop(dropped);
    assert_eq!(bus.stats().listeners, 1, "dropping is closing");
}

#[test]
fn s02_a_closed_sessions_streams_yield_their_buffer_then_end() {
    let bus = Bus::local();
    let session = bus.session();
    let mut stream = session.messages().create_stream::<u64>("c");
    for i in 0..5u64 {
        local(&bus, "c", i);
    }
    session.close();
    local(&bus, "c", 99u64);
    assert_eq!(drain(&mut stream), ((0..5).collect(), true));
    assert!(
        matches!(poll_now(&mut stream), Poll::Ready(None)),
        "stays ended"
    );
}

#[test]
fn s02_a_waiting_stream_is_woken_by_the_close() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bus = Bus::local();
    let session = bus.session();
    let stream = session.messages().create_stream::<u64>("c");
    let consumer = rt.spawn(async move {
        let mut stream = stream;
        let mut got = Vec::new();
        while let Some(m) = std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
            got.push(*m);
        }
        got
    });
    for i in 0..1000u64 {
        local(&bus, "c", i);
    }
    session.close();
    let got = rt
        .block_on(async { tokio::time::timeout(DEADLINE, consumer).await })
        .unwrap()
        .unwrap();
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
}

#[test]
fn s03_a_closed_session_releases_captures_once_running_posts_finish() {
    let bus = Bus::local();
    let captured = marker();
    let (gate, parking) = gate();
    bus.messages().add_listener("c", move |_: &u64| {
        parking.park();
    });
    let session = bus.session();
    for channel in ["c", "elsewhere"] {
        let captured = captured.clone();
        session.messages().add_listener(channel, move |_: &u64| {
            let _keep = &captured;
        });
    }
    let stream = session.messages().create_stream::<ArcMarker>("elsewhere");
    local(&bus, "elsewhere", ArcMarker(captured.clone()));
    assert_eq!(Arc::strong_count(&captured), 4);

    let running = thread::spawn({
        let bus = bus.clone();
        move || local(&bus, "c", 1u64)
    });
    gate.entered();
    session.close();
    drop(session);
    drop(stream);
    // Only the closure on "c" is left, held by the post still running.
    assert_eq!(Arc::strong_count(&captured), 2);
    gate.open();
    running.join().unwrap();
    assert_eq!(
        Arc::strong_count(&captured),
        1,
        "released with no later post or timer"
    );
    assert_eq!(bus.stats().listeners, 1);
}

#[test]
fn s04_registrations_through_a_closed_session_are_inert() {
    let bus = Bus::local();
    let session = bus.session();
    session.close();
    let captured = marker();
    let c = captured.clone();
    session.messages().add_listener("c", move |_: &u64| {
        let _keep = &c;
        panic!("an inert listener is never called");
    });
    assert_eq!(Arc::strong_count(&captured), 1, "dropped at once");
    let mut stream = session.messages().create_stream::<u64>("c");
    assert!(
        matches!(poll_now(&mut stream), Poll::Ready(None)),
        "ends at once"
    );
    assert_eq!(
        (
            bus.stats().listeners,
            bus.stats().streams,
            bus.stats().channels
        ),
        (0, 0, 0)
    );
    // Posting through a closed session still works.
    bus.messages().add_listener("c", |_: &u64| {});
    assert_eq!(
        session
            .messages()
            .post_message("c", 1u64, MessageScope::Local)
            .unwrap()
            .local_receivers(),
        1
    );
}

#[test]
fn s05_bus_level_registrations_live_until_removed_or_shutdown() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bus = Bus::local();
    let captured = marker();
    let c = captured.clone();
    bus.messages().add_listener("c", move |_: &u64| {
        let _keep = &c;
    });
    let mut stream = bus.messages().create_stream::<u64>("c");
    for _ in 0..3 {
        bus.session().messages().add_listener("c", |_: &u64| {});
    }
    assert_eq!(
        local(&bus, "c", 1u64),
        2,
        "sessions came and went; bus-level registrations stayed"
    );
    rt.block_on(bus.shutdown()).unwrap();
    assert_eq!(
        Arc::strong_count(&captured),
        1,
        "shutdown removed the listener"
    );
    assert_eq!(
        drain(&mut stream),
        (vec![1], true),
        "and ended the stream after its buffer"
    );
    assert_eq!(
        bus.messages()
            .post_message("c", 1u64, MessageScope::Local)
            .unwrap_err(),
        PostError::ShutDown
    );
}

#[test]
fn s06_closing_sessions_while_another_thread_posts_is_safe() {
    let bus = Bus::local();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let posts = Arc::new(AtomicUsize::new(0));
    let posted = thread::spawn({
        let (bus, stop, posts) = (bus.clone(), stop.clone(), posts.clone());
        move || {
            let mut n = 0u64;
            while !stop.load(SeqCst) {
                local(&bus, "c", n);
                n += 1;
                posts.fetch_add(1, SeqCst);
            }
            n
        }
    });
    // On a busy machine the poster may not run before 2,000 closes are done: close sessions
    // until it has posted meanwhile too (a generous deadline, not a sleep).
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = posts.load(SeqCst);
    let captured = marker();
    let mut closed = 0;
    while closed < 2000 || posts.load(SeqCst) == before {
        assert!(
            Instant::now() < deadline,
            "the posting thread made no post in 60 s of closing sessions"
        );
        closed += 1;
        let session = bus.session();
        let c = captured.clone();
        session.messages().add_listener("c", move |_: &u64| {
            let _keep = &c;
        });
        let _stream = session.messages().create_stream::<u64>("c");
        session.close();
    }
    stop.store(true, SeqCst);
    assert!(posted.join().unwrap() > before as u64);
    assert_eq!(Arc::strong_count(&captured), 1);
    let Stats {
        listeners,
        streams,
        channels,
        ..
    } = bus.stats();
    assert_eq!((listeners, streams, channels), (0, 0, 0));
}

// ---- G. Global delivery, on a bus without Redis -------------------------------------------------

#[test]
fn g01_global_post_without_redis_fails_at_once() {
    let bus = Bus::local();
    let called = counting_listener::<u64>(bus.messages(), "c");
    let error = bus
        .messages()
        .post_message("c", 1u64, MessageScope::Global)
        .unwrap_err();
    assert_eq!(error, PostError::RedisNotEnabled);
    assert_eq!(
        error.to_string(),
        "Redis needs to be enabled to post global messages"
    );
    assert_eq!(
        bus.channel::<u64>("c")
            .post(1, MessageScope::Global)
            .unwrap_err(),
        PostError::RedisNotEnabled
    );
    assert_eq!(called.load(SeqCst), 0);
    assert_eq!(bus.stats().posted, 0, "a failed post is not counted");
}

#[test]
fn g02_auto_is_local_on_a_bus_without_redis() {
    let bus = Bus::local();
    assert!(!bus.has_redis());
    let called = counting_listener::<u64>(bus.messages(), "c");
    let delivery = bus
        .messages()
        .post_message("c", 1u64, MessageScope::Auto)
        .unwrap();
    assert_eq!(
        (delivery.local_receivers(), delivery.is_global()),
        (1, false)
    );
    assert_eq!(called.load(SeqCst), 1, "delivered synchronously, as Local");
    assert_eq!(MessageScope::default(), MessageScope::Auto);
}

// ---- R. Authentication revocation, on a bus without Redis ------------------------------------

#[test]
fn r01_revoke_posts_on_the_users_channel_with_auto_scope() {
    use evbus::{revoked_authentication_channel, RevokedAuthentication};
    assert_eq!(
        revoked_authentication_channel("42"),
        "_serverpod_revoked_authentication_42"
    );
    let bus = Bus::local();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    bus.messages().add_listener(
        "_serverpod_revoked_authentication_42",
        move |r: &RevokedAuthentication| g.lock().unwrap().push(r.clone()),
    );
    let delivery = bus
        .session()
        .messages()
        .revoke_authentication("42", RevokedAuthentication::AuthId("a1".into()))
        .unwrap();
    // Auto on a bus without Redis: delivered locally, before the call returned.
    assert_eq!(
        (delivery.local_receivers(), delivery.is_global()),
        (1, false)
    );
    assert_eq!(
        *got.lock().unwrap(),
        [RevokedAuthentication::AuthId("a1".into())]
    );
    let other = bus
        .messages()
        .revoke_authentication("43", RevokedAuthentication::User)
        .unwrap();
    assert_eq!(other.local_receivers(), 0, "another user's channel");
}

#[test]
fn r02_revocations_arrive_typed_to_streams_and_listeners() {
    use evbus::{revoked_authentication_channel, RevokedAuthentication};
    let bus = Bus::local();
    let channel = revoked_authentication_channel("7");
    let mut stream = bus
        .messages()
        .create_stream::<RevokedAuthentication>(&channel);
    let calls = counting_listener::<RevokedAuthentication>(bus.messages(), &channel);
    let all = [
        RevokedAuthentication::User,
        RevokedAuthentication::AuthId("a1".into()),
        RevokedAuthentication::Scope(vec!["admin".into(), "chat".into()]),
    ];
    for revocation in all.clone() {
        assert_eq!(
            bus.messages()
                .revoke_authentication("7", revocation)
                .unwrap()
                .local_receivers(),
            2
        );
    }
    assert_eq!(drain(&mut stream), (all.to_vec(), false));
    assert_eq!(calls.load(SeqCst), 3);
}

#[test]
fn r03_affects_follows_serverpods_rule() {
    use evbus::RevokedAuthentication::{AuthId, Scope, User};
    assert!(User.affects(Some("a1"), &[]));
    assert!(User.affects(Some("a1"), &["admin"]));
    assert!(AuthId("a1".into()).affects(Some("a1"), &["admin"]));
    assert!(!AuthId("a1".into()).affects(Some("a2"), &["admin"]));
    assert!(Scope(vec!["admin".into()]).affects(Some("a1"), &["user", "admin"]));
    assert!(!Scope(vec!["admin".into()]).affects(Some("a1"), &["user"]));
    assert!(!Scope(vec![]).affects(Some("a1"), &["user"]));
    assert!(
        !Scope(vec!["admin".into()]).affects(Some("a1"), &[]),
        "an endpoint requiring nothing"
    );
    for revocation in [User, AuthId("a1".into()), Scope(vec!["admin".into()])] {
        assert!(
            !revocation.affects(None, &["admin"]),
            "unauthenticated: never affected"
        );
    }
}

// ---- The rest of the local API ----------------------------------------------------------------

#[test]
fn shutdown_makes_posts_fail_ends_streams_and_events_and_new_registrations_inert() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bus = Bus::local();
    let handle = bus.channel::<u64>("c");
    let mut events = bus.events();
    let session = bus.session();
    let mut stream = session.messages().create_stream::<u64>("c");
    rt.block_on(async {
        bus.flush().await.unwrap();
        bus.subscriptions_ready().await.unwrap();
        bus.shutdown().await.unwrap();
        bus.shutdown().await.unwrap();
    });
    assert!(matches!(poll_now(&mut stream), Poll::Ready(None)));
    let next_event = Pin::new(&mut events).poll_next(&mut Context::from_waker(Waker::noop()));
    assert!(matches!(next_event, Poll::Ready(None)));
    assert_eq!(
        handle.post(1, MessageScope::Local).unwrap_err(),
        PostError::ShutDown
    );
    assert_eq!(
        session
            .messages()
            .post_message("c", 1u64, MessageScope::Auto)
            .unwrap_err(),
        PostError::ShutDown
    );
    let captured = marker();
    let c = captured.clone();
    bus.messages().add_listener("c", move |_: &u64| {
        let _keep = &c;
    });
    assert_eq!(Arc::strong_count(&captured), 1, "inert after shutdown");
    let mut late = bus.messages().create_stream::<u64>("c");
    assert!(matches!(poll_now(&mut late), Poll::Ready(None)));
    assert_eq!((bus.stats().listeners, bus.stats().streams), (0, 0));
}

#[test]
fn builder_refuses_settings_out_of_range_with_clear_errors() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let error = rt
        .block_on(Bus::builder().stream_capacity(0).build())
        .unwrap_err();
    assert!(error.to_string().contains("stream_capacity"), "{error}");
    let error = rt
        .block_on(Bus::builder().max_message_bytes(10).build())
        .unwrap_err();
    assert!(error.to_string().contains("max_message_bytes"), "{error}");
    let error = rt
        .block_on(Bus::builder().class_name::<u64>("").build())
        .unwrap_err();
    assert!(error.to_string().contains("empty class name"), "{error}");
    let error = rt
        .block_on(
            Bus::builder()
                .class_name::<u64>("N")
                .class_name::<u32>("N")
                .build(),
        )
        .unwrap_err();
    assert!(error.to_string().contains("given to both"), "{error}");
    let error = rt
        .block_on(Bus::builder().outage_buffer(0).build())
        .unwrap_err();
    assert!(error.to_string().contains("outage_buffer"), "{error}");
    let error = rt
        .block_on(Bus::builder().redis_url("not a url").build())
        .unwrap_err();
    assert!(
        matches!(&error, BusError::Redis(text) if text.contains("invalid Redis URL")),
        "{error}"
    );
    if cfg!(not(feature = "tls")) {
        let error = rt
            .block_on(Bus::builder().redis_url("rediss://127.0.0.1:1").build())
            .unwrap_err();
        assert!(error.to_string().contains("`tls` feature"), "{error}");
    }
    // Nothing listens on a port just freed: building fails at once, saying so.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = rt
        .block_on(
            Bus::builder()
                .redis_url(format!("redis://127.0.0.1:{port}"))
                .build(),
        )
        .unwrap_err();
    assert!(
        matches!(&error, BusError::Redis(text) if text.contains("cannot connect")),
        "{error}"
    );
    let bus = rt
        .block_on(
            Bus::builder()
                .class_name::<u64>("Number")
                .namespace("app1:")
                .build(),
        )
        .unwrap();
    assert!(!bus.has_redis());
}

#[test]
fn dropping_every_handle_releases_all_registrations() {
    let captured = marker();
    let mut stream = {
        let bus = Bus::local();
        let c = captured.clone();
        bus.messages().add_listener("c", move |_: &u64| {
            let _keep = &c;
        });
        let stream = bus.messages().create_stream::<u64>("c");
        local(&bus, "c", 3u64);
        stream
    };
    assert_eq!(Arc::strong_count(&captured), 1);
    assert_eq!(
        drain(&mut stream),
        (vec![3], true),
        "the bus is gone: the stream ends"
    );
}

#[test]
fn public_types_are_send_and_sync_where_promised() {
    fn send_sync<T: Send + Sync>() {}
    fn send_unpin<T: Send + Unpin>() {}
    send_sync::<Bus>();
    send_sync::<evbus::Session>();
    send_sync::<evbus::Messages>();
    send_sync::<evbus::Channel<u64>>();
    send_unpin::<MessageStream<String>>();
    send_unpin::<evbus::BusEvents>();
    fn send<T: Send>() {}
    send::<evbus::Delivery>();
    send::<evbus::DeliveryFuture>();
}

#[test]
fn delivery_can_be_awaited() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bus = Bus::local();
    let delivery = bus
        .messages()
        .post_message("c", 1u64, MessageScope::Local)
        .unwrap();
    assert_eq!(rt.block_on(async { delivery.await }), Ok(()));
}
