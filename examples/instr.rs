//! One scenario of the local post path, run `N` times, for counting instructions.
//!
//! Run: `cargo run --release --example instr -- SCENARIO N`, or `scripts/instr.sh`, which runs
//! every scenario under callgrind with `N = 0` and `N = 100000` and prints
//! `(count(N) - count(0)) / N`: instructions per operation. Unlike wall time, the count is the
//! same on every run, so a change of a few instructions on the post path is visible.
//!
//! Everything a scenario needs (the bus, its listeners, streams, handles, the tokio channel)
//! is set up before the loop, and one operation is done there to check the wiring and to pay
//! any first-use cost; so `N = 0` counts setup and teardown only. The loop allocates only what
//! the scenario itself does (its ring's slots on the first post; a stream delivery's `Arc` of
//! a `u64` is made on the ring's first lap, then reused by its slot).
//!
//! Scenarios, all on `Bus::local()`, `u64` payloads, `MessageScope::Local`:
//!
//! - `handle`: a post through `bus.channel::<u64>("c")` to one no-op listener.
//! - `name`: `bus.messages().post_message("c", i, Local)` to one no-op listener.
//! - `name_unknown`: the same to a name nobody registered (run by name).
//! - `name_alternating`: the same to two channels in turn, one listener each, so that no name
//!   comes twice in a row and the per-thread cache never serves (run by name).
//! - `listeners16`: a post through the handle to 16 no-op listeners.
//! - `stream`: a post through the handle to one stream, then the message taken from the stream
//!   with `try_recv`. Drained after each post: the stream holds one message at a time, and
//!   exactly one receive per post (no extra empty receive).
//! - `streams16`: the same with 16 streams, each drained after each post.
//! - `tokio_broadcast16`: `tokio::sync::broadcast` `send`, then `try_recv` on 16 receivers.
//! - `tokio_stream`: `tokio::sync::broadcast` `send`, then `try_recv` on its one receiver.
//!
//! Registration churn on one channel (`benches/churn.rs`'s scenarios), one operation being one
//! listener added and later removed, so `N = 100000` is the bench's iteration; run them by name
//! (`scripts/instr.sh churn_forward churn_reverse churn_random churn_sessions`):
//!
//! - `churn_forward`, `churn_reverse`, `churn_random`: `N` listeners added, then removed in the
//!   order added, newest first, or shuffled (the bench's xorshift seed).
//! - `churn_sessions`: `N` sessions add one listener each, then each is closed.

use std::hint::black_box;
use std::process::ExitCode;

use evbus::{Bus, MessageScope};
use tokio::sync::broadcast;

/// A scenario: runs its setup, then `N` operations.
type Scenario = fn(u64);

const SCENARIOS: [(&str, Scenario); 13] = [
    ("handle", handle),
    ("name", name),
    ("name_unknown", name_unknown),
    ("name_alternating", name_alternating),
    ("listeners16", listeners16),
    ("stream", stream),
    ("streams16", streams16),
    ("tokio_broadcast16", tokio_broadcast16),
    ("tokio_stream", tokio_stream),
    ("churn_forward", churn_forward),
    ("churn_reverse", churn_reverse),
    ("churn_random", churn_random),
    ("churn_sessions", churn_sessions),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = match args.as_slice() {
        [scenario, n] => SCENARIOS
            .iter()
            .find(|(name, _)| name == scenario)
            .zip(n.parse::<u64>().ok()),
        _ => None,
    };
    let Some(((_, scenario), n)) = run else {
        let names: Vec<&str> = SCENARIOS.iter().map(|(name, _)| *name).collect();
        eprintln!("usage: instr SCENARIO N\nscenarios: {}", names.join(" "));
        return ExitCode::from(2);
    };
    scenario(n);
    ExitCode::SUCCESS
}

/// A bus with `listeners` no-op listeners of `u64` on channel "c".
fn bus_with_listeners(listeners: usize) -> Bus {
    let bus = Bus::local();
    for _ in 0..listeners {
        bus.messages().add_listener("c", |x: &u64| {
            black_box(*x);
        });
    }
    bus
}

fn by_handle(listeners: usize, n: u64) {
    let bus = bus_with_listeners(listeners);
    let channel = bus.channel::<u64>("c");
    let first = channel.post(0, MessageScope::Local).unwrap();
    assert_eq!(first.local_receivers(), listeners);
    for i in 0..n {
        black_box(channel.post(black_box(i), MessageScope::Local).unwrap());
    }
}

fn handle(n: u64) {
    by_handle(1, n);
}

fn listeners16(n: u64) {
    by_handle(16, n);
}

/// A post by name to a name nobody registered: the table's miss.
fn name_unknown(n: u64) {
    let bus = bus_with_listeners(1);
    by_name(&bus, n, |_| "nobody");
}

/// Posts by name to two channels in turn, each with one listener: never the same name twice
/// in a row, so every post looks its name up.
fn name_alternating(n: u64) {
    let bus = bus_with_listeners(1);
    bus.messages().add_listener("d", |x: &u64| {
        black_box(x);
    });
    by_name(&bus, n, |i| if i % 2 == 0 { "c" } else { "d" });
}

fn name(n: u64) {
    let bus = bus_with_listeners(1);
    let first = bus.messages().post_message("c", 0u64, MessageScope::Local);
    assert_eq!(first.unwrap().local_receivers(), 1);
    by_name(&bus, n, |_| "c");
}

/// `n` posts by name on `bus`, the `i`th to `name(i)`.
fn by_name(bus: &Bus, n: u64, name: impl Fn(u64) -> &'static str) {
    let messages = bus.messages();
    for i in 0..n {
        black_box(
            messages
                .post_message(black_box(name(i)), black_box(i), MessageScope::Local)
                .unwrap(),
        );
    }
}

fn stream(n: u64) {
    streams(1, n);
}

fn streams16(n: u64) {
    streams(16, n);
}

/// Posts through a handle to `count` streams, each drained after every post.
fn streams(count: usize, n: u64) {
    let bus = Bus::local();
    let channel = bus.channel::<u64>("c");
    let mut streams: Vec<_> = (0..count)
        .map(|_| bus.messages().create_stream::<u64>("c"))
        .collect();
    let first = channel.post(0, MessageScope::Local).unwrap();
    assert_eq!(first.local_receivers(), count);
    for stream in &mut streams {
        assert_eq!(stream.try_recv().as_deref(), Some(&0));
    }
    for i in 0..n {
        black_box(channel.post(black_box(i), MessageScope::Local).unwrap());
        for stream in &mut streams {
            black_box(stream.try_recv().unwrap());
        }
    }
    for stream in &streams {
        assert_eq!(stream.missed(), 0);
    }
}

fn tokio_broadcast(receivers: usize, n: u64) {
    let (tx, first) = broadcast::channel::<u64>(16);
    let mut receivers: Vec<_> = std::iter::once(first)
        .chain((1..receivers).map(|_| tx.subscribe()))
        .collect();
    tx.send(0).unwrap();
    for rx in &mut receivers {
        assert_eq!(rx.try_recv(), Ok(0));
    }
    for i in 0..n {
        tx.send(black_box(i)).unwrap();
        for rx in &mut receivers {
            black_box(rx.try_recv().unwrap());
        }
    }
}

fn tokio_broadcast16(n: u64) {
    tokio_broadcast(16, n);
}

fn tokio_stream(n: u64) {
    tokio_broadcast(1, n);
}

#[path = "../benches/support/shuffle.rs"]
mod shuffle;
use shuffle::shuffle;

/// `n` listeners added to one channel, then removed in the order of `positions(n)`.
fn churn(n: u64, positions: fn(usize) -> Vec<usize>) {
    let bus = Bus::local();
    let messages = bus.messages();
    let n = n as usize;
    let order = positions(n);
    let ids: Vec<_> = (0..n)
        .map(|_| {
            messages.add_listener("c", |x: &u64| {
                black_box(*x);
            })
        })
        .collect();
    for &at in &order {
        assert!(messages.remove_listener("c", ids[at]));
    }
    assert_eq!(bus.stats().listeners, 0);
}

fn churn_forward(n: u64) {
    churn(n, |n| (0..n).collect());
}

fn churn_reverse(n: u64) {
    churn(n, |n| (0..n).rev().collect());
}

fn churn_random(n: u64) {
    churn(n, |n| {
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(&mut order, 0x9E37_79B9_7F4A_7C15);
        order
    });
}

fn churn_sessions(n: u64) {
    let bus = Bus::local();
    let sessions: Vec<_> = (0..n)
        .map(|_| {
            let session = bus.session();
            session.messages().add_listener("c", |x: &u64| {
                black_box(*x);
            });
            session
        })
        .collect();
    for session in &sessions {
        session.close();
    }
    assert_eq!(bus.stats().listeners, 0);
}
