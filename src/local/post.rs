//! The post path: from a loaded snapshot to every receiver. This is the whole hot path.
//!
//! A channel's snapshot ([`Snapshot`]) holds one group per message type, and each group is a
//! persistent trie ([`crate::trie`]) of that type's receivers in the order they were
//! added. A local post of an `M` is:
//!
//! 1. one `ArcSwapOption::load` of the snapshot (by the caller, `Topic::post`);
//! 2. per group, one `downcast_ref` (the type check): the group of type `M` is walked, the
//!    others only count their receivers as type mismatches (L05);
//! 3. per receiver, one indirect call: a listener's closure gets `&M`; a stream gets a clone
//!    of one `Arc<M>`, made only when the group has streams (L04);
//! 4. one [`Counters::record_post`](crate::stats).
//!
//! No lock, no allocation for listeners. `delivered` is the walked group's length, so the
//! loop counts nothing per listener; panics and stream drops are counted when they happen.
//!
//! Why this never blocks (L10): `ArcSwap::load` is wait-free except for a bounded fallback
//! that arc-swap documents as lock-free and takes at most once per `usize::MAX / 4` loads; the
//! walk is bounded by the snapshot; the counters are stores to a thread-owned stripe. To
//! listeners only, a post is wait-free. A stream push is lock-free except in two short windows
//! inside crossbeam's `SegQueue` where it spins until another producer, if preempted there,
//! runs again: once per 31 messages of a stream, and in the eviction of a full buffer (exactly:
//! [`crate::local::stream`], § Progress).
//!
//! Panics (L07): each listener call runs under `catch_unwind`, which costs nothing unless a
//! panic happens, so one listener's panic is counted and the walk goes on.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::stream::StreamSink;
use crate::stats::Tally;
use crate::trie::Node;
use crate::wire::codec::{Codec, Payload};

/// A listener's callback.
pub(crate) type Callback<M> = Arc<dyn Fn(&M) + Send + Sync>;

/// A receiver of messages of type `M`.
pub(crate) enum Receiver<M> {
    Listener(Callback<M>),
    Stream(Arc<StreamSink<M>>),
}

impl<M> Clone for Receiver<M> {
    fn clone(&self) -> Self {
        match self {
            Receiver::Listener(callback) => Receiver::Listener(callback.clone()),
            Receiver::Stream(sink) => Receiver::Stream(sink.clone()),
        }
    }
}

/// One entry of a group's trie: a receiver and its registration id.
pub(crate) struct Entry<M> {
    pub(crate) id: u64,
    pub(crate) receiver: Receiver<M>,
}

impl<M> Clone for Entry<M> {
    fn clone(&self) -> Self {
        Entry {
            id: self.id,
            receiver: self.receiver.clone(),
        }
    }
}

/// What a post of one channel sees: per message type, the receivers of that type.
///
/// The first group is inline: most channels carry one message type, and their snapshot is
/// then a single allocation (a registration change publishes one per change).
pub(crate) struct Snapshot {
    first: Group,
    rest: Box<[Group]>,
}

impl Snapshot {
    /// A snapshot of `groups`; `None` when there are none.
    pub(crate) fn new(groups: impl Iterator<Item = Group>) -> Option<Snapshot> {
        let mut groups = groups;
        let first = groups.next()?;
        Some(Snapshot {
            first,
            rest: groups.collect(),
        })
    }

    /// Every group, in registration order of their types.
    #[inline]
    fn groups(&self) -> impl Iterator<Item = &Group> {
        std::iter::once(&self.first).chain(self.rest.iter())
    }
}

/// The receivers of one message type, as published.
pub(crate) struct Group {
    /// An `Arc<Node<Entry<M>>>` for the group's `M`.
    pub(crate) root: Arc<dyn Any + Send + Sync>,
    pub(crate) len: usize,
    pub(crate) streams: usize,
    /// Delivers a message received through the transport: decodes it as `M` once, then walks
    /// the group ([`deliver_wire`]).
    pub(crate) wire: Wire,
}

/// See [`Group::wire`]: `None` when the group's type does not take the class.
pub(crate) type Wire =
    fn(&Group, &Codec, &str, Payload<'_>, &mut Tally) -> Option<Result<(), String>>;

/// Delivers `message` to `snapshot`; returns what happened.
#[inline]
pub(crate) fn deliver<M: Send + Sync + 'static>(snapshot: &Snapshot, message: M) -> Tally {
    let mut tally = Tally::default();
    let mut matching = None;
    snapshot
        .groups()
        .for_each(|group| match group.root.downcast_ref::<Node<Entry<M>>>() {
            Some(root) => matching = Some((group, root)),
            None => tally.mismatches += group.len as u64,
        });
    if let Some((group, root)) = matching {
        deliver_to(group, root, message, &mut tally);
    }
    tally
}

/// Delivers `message` to `group`, whose root is `root`.
#[inline]
fn deliver_to<M>(group: &Group, root: &Node<Entry<M>>, message: M, tally: &mut Tally) {
    tally.delivered += group.len as u64;
    if group.streams == 0 {
        walk(root, &message, None, tally);
    } else {
        let shared = Arc::new(message);
        walk(root, &shared, Some(&shared), tally);
    }
}

/// Calls every receiver of one group. `shared` is `Some` when the group has streams.
#[inline]
fn walk<M>(root: &Node<Entry<M>>, message: &M, shared: Option<&Arc<M>>, tally: &mut Tally) {
    root.for_each_leaf(&mut |entries: &[Entry<M>]| {
        for entry in entries {
            match &entry.receiver {
                Receiver::Listener(callback) => {
                    // AssertUnwindSafe: a panicking listener can leave only its own captured
                    // state inconsistent; nothing of the bus is borrowed mutably here.
                    if catch_unwind(AssertUnwindSafe(|| callback(message))).is_err() {
                        tally.panics += 1;
                    }
                }
                Receiver::Stream(sink) => {
                    if let Some(shared) = shared {
                        if sink.push(shared.clone()) {
                            tally.dropped += 1;
                        }
                    }
                }
            }
        }
    });
}

/// Delivers one message received through the transport to `snapshot`: decodes it once per
/// receiver type that takes `class`, and hands it to that type's receivers (G03).
///
/// Each type decodes on its own: one that refuses the message (its payload does not decode
/// as that type, or the type is in conflict for the class, see [`crate::wire::codec`]) does
/// not keep it from the other types that take it. Receivers of types that do not take the
/// class count as type mismatches (L05), unless the class is unknown.
///
/// # Errors
///
/// Why the message was refused (G09), for `BusEvent::DecodeFailed`, once per message: the
/// first receiver type's refusal, even when other types got the message (their receivers
/// are in `tally`; the caller counts the message as a decode error, not as received); or
/// that no receiver type of this bus takes its class, quoting at most 64 characters of the
/// class: it comes from the wire.
pub(crate) fn receive(
    snapshot: Option<&Snapshot>,
    codec: &Codec,
    class: &str,
    payload: Payload<'_>,
    tally: &mut Tally,
) -> Result<(), String> {
    let mut taken = false;
    let mut refused = None;
    let mut mismatches = 0;
    for group in snapshot.into_iter().flat_map(Snapshot::groups) {
        match (group.wire)(group, codec, class, payload, tally) {
            None => mismatches += group.len as u64,
            Some(Ok(())) => taken = true,
            Some(Err(reason)) => {
                refused.get_or_insert(reason);
            }
        }
    }
    if !taken && refused.is_none() && !codec.knows(class) {
        return Err(format!("unknown class {:?}", short(class)));
    }
    tally.mismatches += mismatches;
    refused.map_or(Ok(()), Err)
}

/// Decodes one received message as the group's type `M` and delivers it to the group: the
/// group's `wire` entry, made by the registry for each receiver type. `None` when `M` does
/// not take `class`.
pub(crate) fn deliver_wire<M: crate::Message>(
    group: &Group,
    codec: &Codec,
    class: &str,
    payload: Payload<'_>,
    tally: &mut Tally,
) -> Option<Result<(), String>> {
    let root = group.root.downcast_ref::<Node<Entry<M>>>()?;
    let message = match codec.decode::<M>(class, payload)? {
        Ok(message) => message,
        Err(reason) => return Some(Err(reason)),
    };
    deliver_to(group, root, message, tally);
    Some(Ok(()))
}

/// At most the first 64 characters of `text`.
fn short(text: &str) -> &str {
    text.char_indices()
        .nth(64)
        .map_or(text, |(at, _)| &text[..at])
}
