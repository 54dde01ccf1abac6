//! The reference model of `tests/support/model.rs`, checked against the real bus over
//! operation sequences that proptest generates (and shrinks).
//!
//! Rules covered: L01, L02, L03 (single thread), L05, L08, L11 (drop-oldest and `missed()`
//! exactly), L12, L13 (`Stats::channels`), S01, S02, S04, S05.

#[path = "support/model.rs"]
mod model;

use model::{run, Op, Ty};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

fn ty() -> impl Strategy<Value = Ty> {
    prop_oneof![Just(Ty::A), Just(Ty::B)]
}

fn ch(channels: u8) -> impl Strategy<Value = u8> {
    0..channels
}

/// Relative weights of the operation kinds.
#[derive(Clone, Copy)]
struct Weights {
    /// How many of the live channels operations use.
    channels: u8,
    /// Length range of a sequence.
    len: (usize, usize),
    add: u32,
    remove: u32,
    post: u32,
    stream: u32,
    drop_stream: u32,
    drain: u32,
    sessions: u32,
    handles: u32,
}

const BALANCED: Weights = Weights {
    channels: 3,
    len: (1, 64),
    add: 6,
    remove: 3,
    post: 10,
    stream: 3,
    drop_stream: 1,
    drain: 3,
    sessions: 1,
    handles: 1,
};
/// Many posts, few drains: streams overflow and drop their oldest messages.
const OVERFLOW: Weights = Weights {
    channels: 3,
    len: (1, 64),
    add: 3,
    remove: 1,
    post: 14,
    stream: 4,
    drop_stream: 1,
    drain: 2,
    sessions: 1,
    handles: 1,
};
/// One channel, grown past one trie leaf (32 slots) ...
const DEEP_GROW: Weights = Weights {
    channels: 1,
    len: (40, 90),
    add: 12,
    remove: 1,
    post: 2,
    stream: 3,
    drop_stream: 1,
    drain: 1,
    sessions: 1,
    handles: 1,
};
/// ... then mostly emptied, so that it is repacked (the add order must survive, L02) ...
const DEEP_SHRINK: Weights = Weights {
    channels: 1,
    len: (60, 140),
    add: 1,
    remove: 14,
    post: 2,
    stream: 1,
    drop_stream: 3,
    drain: 1,
    sessions: 2,
    handles: 1,
};
/// ... then used again.
const DEEP_AGAIN: Weights = Weights {
    channels: 1,
    len: (10, 40),
    add: 6,
    remove: 3,
    post: 6,
    stream: 2,
    drop_stream: 1,
    drain: 2,
    sessions: 1,
    handles: 1,
};

fn deep_ops() -> impl Strategy<Value = Vec<Op>> {
    (ops(DEEP_GROW), ops(DEEP_SHRINK), ops(DEEP_AGAIN)).prop_map(|(mut a, b, c)| {
        a.extend(b);
        a.extend(c);
        a
    })
}

/// Registration churn: channels are interned and forgotten often.
const CHURN: Weights = Weights {
    channels: 3,
    len: (1, 64),
    add: 6,
    remove: 6,
    post: 3,
    stream: 3,
    drop_stream: 3,
    drain: 1,
    sessions: 3,
    handles: 4,
};

fn op(w: Weights) -> impl Strategy<Value = Op> {
    prop_oneof![
        w.add => (any::<u8>(), ty(), ch(w.channels)).prop_map(|(who, ty, ch)| Op::AddListener { who, ty, ch }),
        w.remove => (any::<u8>(), any::<u16>(), proptest::option::weighted(0.3, any::<u8>()))
            .prop_map(|(who, pick, wrong)| Op::RemoveListener { who, pick, wrong }),
        w.post => (any::<u8>(), ty(), ch(w.channels)).prop_map(|(who, ty, ch)| Op::Post { who, ty, ch }),
        w.handles => any::<u16>().prop_map(|pick| Op::PostThroughHandle { pick }),
        w.stream => (any::<u8>(), ty(), ch(w.channels)).prop_map(|(who, ty, ch)| Op::CreateStream { who, ty, ch }),
        w.drop_stream => any::<u16>().prop_map(|pick| Op::DropStream { pick }),
        w.drain => (any::<u16>(), 1..=6u8).prop_map(|(pick, max)| Op::Drain { pick, max }),
        w.sessions => any::<u8>().prop_map(|pick| Op::CloseSession { pick }),
        w.sessions => any::<u8>().prop_map(|pick| Op::DropSession { pick }),
        w.sessions => Just(Op::OpenSession),
        w.handles => (ty(), ch(w.channels)).prop_map(|(ty, ch)| Op::CreateHandle { ty, ch }),
        w.handles => any::<u16>().prop_map(|pick| Op::DropHandle { pick }),
    ]
}

fn ops(w: Weights) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(w), w.len.0..w.len.1)
}

/// Runs `ops` through the shared harness, as a proptest case.
fn check(ops: &[Op]) -> Result<(), TestCaseError> {
    run(ops).map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A balanced mix of every operation.
    #[test]
    fn model_bus_matches_reference(ops in ops(BALANCED)) {
        check(&ops)?;
    }

    /// L11: mostly posts and few drains, so small streams overflow; `missed()`,
    /// `Stats::stream_dropped` and what is yielded match the model exactly.
    #[test]
    fn l11_model_streams_drop_oldest_and_count_missed(ops in ops(OVERFLOW)) {
        check(&ops)?;
    }

    /// L13: registration churn (listeners, streams, handles, sessions): `Stats::channels`
    /// counts the names with a listener, a stream or a live handle, after every operation.
    #[test]
    fn l13_model_channels_forgotten_with_last_registration(ops in ops(CHURN)) {
        check(&ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// L02: long sequences on one channel, so that its snapshot grows past one trie leaf and is
    /// repacked after removals; listeners are still called in add order, exactly once.
    #[test]
    fn l02_model_order_kept_across_trie_growth_and_repack(ops in deep_ops()) {
        check(&ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 50_000, ..ProptestConfig::default() })]

    /// The balanced mix, many more cases: `cargo test --release --test model -- --ignored`.
    #[test]
    #[ignore = "large; run with --release -- --ignored"]
    fn model_bus_matches_reference_large(ops in ops(BALANCED)) {
        check(&ops)?;
    }
}

// ---- fixed sequences, as readable regression cases --------------------------------------------

/// L02: listeners are called in add order, exactly once, also after removals in the middle
/// and listeners of the other type in between (L05).
#[test]
fn l02_model_listeners_called_in_add_order_exactly_once() {
    let mut ops = Vec::new();
    for i in 0..8u8 {
        ops.push(Op::AddListener {
            who: 0,
            ty: if i % 3 == 2 { Ty::B } else { Ty::A },
            ch: 0,
        });
    }
    ops.push(Op::RemoveListener {
        who: 0,
        pick: 1,
        wrong: None,
    });
    ops.push(Op::RemoveListener {
        who: 0,
        pick: 1,
        wrong: None,
    }); // again: false
    ops.push(Op::RemoveListener {
        who: 0,
        pick: 4,
        wrong: Some(0),
    }); // wrong channel: false
    ops.push(Op::Post {
        who: 0,
        ty: Ty::A,
        ch: 0,
    });
    ops.push(Op::AddListener {
        who: 0,
        ty: Ty::A,
        ch: 0,
    });
    ops.push(Op::Post {
        who: 0,
        ty: Ty::A,
        ch: 0,
    });
    ops.push(Op::Post {
        who: 0,
        ty: Ty::B,
        ch: 0,
    });
    run(&ops).unwrap();
}

/// L11 and S02: a stream of capacity 4 keeps the newest 4 of 10 posts, counts 6 missed, and,
/// once its session closes, yields the 4 and then ends.
#[test]
fn l11_model_stream_keeps_newest_and_ends_after_close() {
    let mut ops = vec![
        Op::OpenSession,
        Op::CreateStream {
            who: 1,
            ty: Ty::A,
            ch: 1,
        },
    ];
    ops.extend((0..10).map(|_| Op::Post {
        who: 0,
        ty: Ty::A,
        ch: 1,
    }));
    ops.push(Op::CloseSession { pick: 0 });
    ops.push(Op::Drain { pick: 0, max: 6 });
    run(&ops).unwrap();
}

/// S04 and L13: registrations through a closed session are inert and intern nothing; posting
/// through it still works.
#[test]
fn s04_model_closed_session_registrations_are_inert() {
    let ops = vec![
        Op::OpenSession,
        Op::CloseSession { pick: 0 },
        Op::AddListener {
            who: 1,
            ty: Ty::A,
            ch: 2,
        },
        Op::CreateStream {
            who: 1,
            ty: Ty::A,
            ch: 2,
        },
        Op::Post {
            who: 1,
            ty: Ty::A,
            ch: 2,
        },
        Op::Drain { pick: 0, max: 2 },
        Op::RemoveListener {
            who: 1,
            pick: 0,
            wrong: None,
        },
    ];
    run(&ops).unwrap();
}
