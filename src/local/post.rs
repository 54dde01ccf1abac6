//! The post path: from a loaded snapshot to every receiver. This is the whole hot path.
//!
//! A channel's snapshot ([`Snapshot`]) holds one group per message type, and each group holds
//! a persistent trie ([`crate::trie`]) of that type's receivers in the order they were
//! added ([`Receivers`]). A local post of an `M` is:
//!
//! 1. one borrow of the snapshot (by the caller, `Topic::post`; see [`super::published`]);
//! 2. per group, one type check (a `TypeId` in the group's static table): the group of type
//!    `M` is walked, the
//!    others only count their receivers as type mismatches (L05), through their type's
//!    [`GroupOps`];
//! 3. when the group has streams, one write of the message, in one `Arc<M>`, into their ring
//!    ([`super::ring`]), which each stream reads through its own cursor (L04); then per
//!    listener, one indirect call ([`Listener::call`]) with `&M`;
//! 4. one [`Counters::record_post`](crate::stats).
//!
//! No lock, no allocation for listeners. `delivered` is the group's listeners and the streams
//! the ring's write was for, so the loop counts nothing per listener; panics and stream drops
//! are counted when they happen.
//!
//! Why this never blocks (L10): the borrow is lock-free (it loads again only when a
//! registration replaced the snapshot in between, and is wait-free when none does); the walk
//! is bounded by the snapshot; the counters are stores to a thread-owned stripe. To listeners
//! only, a post is lock-free, and wait-free while no registration changes the channel. The
//! write to the streams' ring is lock-free and never waits for another thread
//! ([`super::ring`], § Progress); the first one also allocates the ring's slots.
//!
//! Panics (L07): each listener call runs under `catch_unwind`, which costs nothing unless a
//! panic happens, so one listener's panic is counted and the walk goes on.

use std::any::Any;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::Arc;

use super::stream::{StreamSink, Streams};
use super::thin::{self, ArcOps, ThinArc};
use crate::stats::Tally;
use crate::trie::{Path, Trie};
use crate::wire::codec::{Codec, Payload};

/// A receiver with its registration id, in one allocation: a trie entry is then the
/// receiver's pointer alone (two words), not a pointer and an id (three). Each entry is held
/// by up to two versions of a large channel (the registry's spare), and a lone receiver is
/// held inline in its group, so this is what the memory goals are made of (issue 11).
/// `repr(C)`: the id is first, so a [`Listener`] reads it without knowing the callback's type.
#[repr(C)]
pub(crate) struct Registered<R> {
    /// Set once, by the registry, before the receiver is shared (see [`Receiver::register`]).
    id: u64,
    receiver: R,
}

/// A listener: a callback of `&M` and its registration id, in one `Arc<Registered<F>>`,
/// held as a [`ThinArc`] beside its callback type's [`ListenerTable`]: a call is a load and
/// an indirect call.
pub(crate) struct Listener<M: 'static>(ThinArc<ListenerTable<M>>);

/// The operations of one callback type `F` of a [`Listener`]: see [`Table`].
pub(crate) struct ListenerTable<M: 'static> {
    call: unsafe fn(NonNull<()>, &M),
    arc: ArcOps,
}

impl<M: 'static> thin::Table for ListenerTable<M> {
    fn arc_ops(&self) -> &ArcOps {
        &self.arc
    }
}

/// The [`ListenerTable`] of callback type `F`, in static memory.
struct Table<M, F>(PhantomData<(M, F)>);

impl<M: 'static, F: Fn(&M) + Send + Sync + 'static> Table<M, F> {
    const TABLE: &'static ListenerTable<M> = &ListenerTable {
        call: call_listener::<M, F>,
        arc: ArcOps::of::<Registered<F>>(),
    };
}

/// [`ListenerTable::call`] of `F`.
///
/// # Safety
///
/// `value` is a listener's pointer for `F`, which the caller's listener still holds.
#[allow(unsafe_code)]
unsafe fn call_listener<M, F: Fn(&M)>(value: NonNull<()>, message: &M) {
    // SAFETY: the caller's contract.
    let registered = unsafe { &*(value.as_ptr() as *const Registered<F>) };
    (registered.receiver)(message)
}

impl<M: 'static> Listener<M> {
    fn new<F: Fn(&M) + Send + Sync + 'static>(callback: F) -> Self {
        let registered = Arc::new(Registered {
            id: 0,
            receiver: callback,
        });
        Listener(ThinArc::new(registered, Table::<M, F>::TABLE))
    }

    /// The registration id.
    #[allow(unsafe_code)]
    fn id(&self) -> u64 {
        // SAFETY: the pointer is to a live `Registered<F>`, whose first field is the id
        // (`repr(C)`), whatever `F` is.
        unsafe { *(self.0.pointer().as_ptr() as *const u64) }
    }

    /// Sets the registration id; `None` if the listener is shared already.
    #[allow(unsafe_code)]
    fn set_id(&mut self, id: u64) -> Option<()> {
        let registered = self.0.unique()?;
        // SAFETY: a `Registered<F>`, whose first field is the id (`repr(C)`), that no one
        // else holds.
        unsafe { *(registered.as_ptr() as *mut u64) = id };
        Some(())
    }

    /// Calls the callback.
    #[inline(always)]
    #[allow(unsafe_code)]
    pub(crate) fn call(&self, message: &M) {
        // SAFETY: the pointer and the table are of one `F` (`Listener::new`), held by `self`.
        unsafe { (self.0.table().call)(self.0.pointer(), message) }
    }

    /// The same allocation, type-erased: a removed listener, to drop after the lock.
    pub(crate) fn into_any(self) -> Arc<dyn Any + Send + Sync> {
        self.0.into_any()
    }
}

impl<M: 'static> Clone for Listener<M> {
    fn clone(&self) -> Self {
        Listener(self.0.clone())
    }
}

/// A receiver of messages of type `M`, with its registration id: one entry of a group's trie,
/// keyed ([`Keyed`](crate::trie::Keyed)) by the id.
pub(crate) enum Receiver<M: 'static> {
    Listener(Listener<M>),
    Stream(Arc<Registered<StreamSink<M>>>),
}

impl<M: 'static> Receiver<M> {
    /// A listener calling `callback`, not yet registered.
    pub(crate) fn listener<F: Fn(&M) + Send + Sync + 'static>(callback: F) -> Self {
        Receiver::Listener(Listener::new(callback))
    }

    /// A stream's receiver feeding `sink`, not yet registered.
    pub(crate) fn stream(sink: StreamSink<M>) -> Self {
        Receiver::Stream(Arc::new(Registered {
            id: 0,
            receiver: sink,
        }))
    }
}

impl<M: 'static> Receiver<M> {
    /// What this receiver is.
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Receiver::Listener(_) => Kind::Listener,
            Receiver::Stream(_) => Kind::Stream,
        }
    }

    /// The receiver's registration id.
    pub(crate) fn id(&self) -> u64 {
        match self {
            Receiver::Listener(listener) => listener.id(),
            Receiver::Stream(sink) => sink.id,
        }
    }

    /// The receiver, registered as `id`. Called by the registry once, before the receiver is
    /// shared: until then its `Arc` is the only one.
    pub(crate) fn register(mut self, id: u64) -> Self {
        let unique = match &mut self {
            Receiver::Listener(listener) => listener.set_id(id),
            Receiver::Stream(sink) => Arc::get_mut(sink).map(|s| s.id = id),
        };
        match unique {
            Some(()) => self,
            None => unreachable!("a receiver is registered before it is shared"),
        }
    }
}

impl<M: Send + Sync + 'static> Receiver<M> {
    /// A stream's receiver joins the group's ring `ring` (new ones if `None`), once, and
    /// returns it; `None` for a listener.
    pub(crate) fn bind(&self, ring: Option<&Arc<Streams<M>>>) -> Option<Arc<Streams<M>>> {
        match self {
            Receiver::Listener(_) => None,
            Receiver::Stream(sink) => Some(sink.receiver.bind(ring)),
        }
    }

    /// A stream's receiver leaves its ring, once: the stream ends there (S02).
    pub(crate) fn leave(&self) {
        if let Receiver::Stream(sink) = self {
            sink.receiver.leave();
        }
    }
}

/// What a registration is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Listener,
    Stream,
}

impl<M: 'static> Clone for Receiver<M> {
    fn clone(&self) -> Self {
        match self {
            Receiver::Listener(listener) => Receiver::Listener(listener.clone()),
            Receiver::Stream(sink) => Receiver::Stream(sink.clone()),
        }
    }
}

impl<M: 'static> crate::trie::Keyed for Receiver<M> {
    fn key(&self) -> u64 {
        self.id()
    }
}

/// What a post of one channel sees: per message type, the receivers of that type.
///
/// The first group is inline: most channels carry one message type, and their snapshot is
/// then one allocation, plus one for the group's receivers (a registration change publishes
/// one snapshot per change). Further groups are a list: a channel with several message types
/// is rare, and the link costs a single-type channel one pointer.
///
/// The snapshot is also the writer's state: the registry derives each new version from the
/// published one, under the channel's lock, so a channel keeps no second copy of its
/// receivers.
pub(crate) struct Snapshot {
    first: Group,
    rest: Option<Box<Snapshot>>,
}

impl Snapshot {
    /// A snapshot of `groups`; `None` when there are none.
    pub(crate) fn new<I: Iterator<Item = Group>>(mut groups: I) -> Option<Snapshot> {
        let first = groups.next()?;
        Some(Snapshot {
            first,
            rest: Snapshot::new(groups).map(Box::new),
        })
    }

    /// The group of a one-type channel; `None` when the channel carries several types.
    pub(crate) fn single_mut(&mut self) -> Option<&mut Group> {
        self.rest.is_none().then_some(&mut self.first)
    }

    /// Every group, in registration order of their types.
    #[inline]
    pub(crate) fn groups(&self) -> impl Iterator<Item = &Group> {
        std::iter::successors(Some(self), |snapshot| snapshot.rest.as_deref())
            .map(|snapshot| &snapshot.first)
    }
}

/// The receivers of one message type `M`, as published: what a [`Group`] points to.
pub(crate) struct Receivers<M: 'static> {
    /// In the order they were added; never empty.
    pub(crate) trie: Trie<Receiver<M>>,
    /// Its streams.
    pub(crate) streams: GroupStreams<M>,
}

/// A group's streams: how many, and their ring, which they share with every version of the
/// group while there is one. They change together, by `admit` and `release` (in the registry).
pub(crate) struct GroupStreams<M: 'static> {
    pub(crate) count: usize,
    pub(crate) ring: Option<Arc<Streams<M>>>,
}

// By hand: a derive would ask `M: Clone` and `M: Default`.
impl<M> Clone for GroupStreams<M> {
    fn clone(&self) -> Self {
        GroupStreams {
            count: self.count,
            ring: self.ring.clone(),
        }
    }
}

impl<M> Default for GroupStreams<M> {
    fn default() -> Self {
        GroupStreams {
            count: 0,
            ring: None,
        }
    }
}

/// The receivers of one message type, type-erased: an `Arc<Receivers<M>>` held as a
/// [`ThinArc`] beside its type's [`GroupOps`], which hold its `TypeId` (the post's type check
/// reads the table, which the post reads anyway) and what cloning and dropping it take. Two
/// words, where an `Arc<dyn Any>` and the table were three.
#[derive(Clone)]
pub(crate) struct Group(ThinArc<GroupOps>);

/// The operations of one message type's [`Group`] that do not know the type: one table per
/// type, made by the registry (`registry::Ops`).
pub(crate) struct GroupOps {
    /// `ArcOps::of::<Receivers<M>>()`: what holding the receivers takes, and their `TypeId`,
    /// the post path's type check ([`Group::of_type`]).
    pub(crate) arc: ArcOps,
    /// Delivers a message received through the transport: decodes it as `M` once, then walks
    /// the group ([`deliver_wire`]).
    pub(crate) wire: Wire,
    /// The group's receivers, and how many of them are streams.
    pub(crate) counts: fn(&Group) -> (usize, usize),
    /// The group without receiver `id` (only if it is of kind `only`, when given; `None` when
    /// that leaves it empty) and the removed receiver's kind; `None` when it has no such
    /// receiver.
    pub(crate) remove: fn(&Group, u64, Option<Kind>) -> Option<Removed>,
    /// Whether the group has receiver `id`.
    pub(crate) contains: fn(&Group, u64) -> bool,
    /// Makes every stream of the group leave its ring (a shutdown: see
    /// [`StreamSink::leave`]).
    pub(crate) leave_all: fn(&Group),
    /// [`GroupOps::remove`] in place, on a group no reader can see (the registry's spare); the
    /// group must keep a receiver. The path is where the receiver is, if known (a guess, see
    /// [`Trie::remove`]), and is set to where it was: the spare and the published version
    /// have the same shape, so the second removal does not search.
    pub(crate) remove_in_place: fn(&mut Group, u64, Option<Kind>, &mut Option<Path>) -> InPlace,
}

/// What [`GroupOps::remove_in_place`] did.
pub(crate) enum InPlace {
    /// Removed the receiver, of this kind; the entry is to be dropped after the lock. An
    /// `Arc` of the receiver's own allocation, type-erased: nothing is allocated to carry it.
    Removed(Kind, Arc<dyn Any + Send + Sync>),
    /// Nothing: no such receiver (or not of the kind asked for), or the group's receivers are
    /// shared, or the removal would leave it empty.
    Unchanged,
}

/// What [`GroupOps::remove`] leaves: the group without the receiver (`None` when it was the
/// last), and the removed receiver's kind.
pub(crate) type Removed = (Option<Group>, Kind);

impl thin::Table for GroupOps {
    fn arc_ops(&self) -> &ArcOps {
        &self.arc
    }
}

impl Group {
    /// The group of `receivers`, whose type's table is `ops`.
    ///
    /// # Panics
    ///
    /// If `ops` is not `M`'s table (a bug: the type check relies on it).
    pub(crate) fn new<M: Send + Sync + 'static>(
        receivers: Receivers<M>,
        ops: &'static GroupOps,
    ) -> Group {
        Group(ThinArc::new(Arc::new(receivers), ops))
    }

    /// The type's table.
    #[inline(always)]
    pub(crate) fn ops(&self) -> &'static GroupOps {
        self.0.table()
    }

    /// The receivers, if they are of type `M` (L05): a load and a compare.
    #[inline(always)]
    pub(crate) fn of_type<M: 'static>(&self) -> Option<&Receivers<M>> {
        self.0.get()
    }

    /// [`Group::of_type`], mutable, if no other group shares the receivers.
    pub(crate) fn of_type_mut<M: 'static>(&mut self) -> Option<&mut Receivers<M>> {
        self.0.get_mut()
    }

    /// How many receivers the group has.
    fn len(&self) -> usize {
        (self.ops().counts)(self).0
    }
}

/// See [`GroupOps::wire`]: `None` when the group's type does not take the class.
pub(crate) type Wire =
    fn(&Group, &Codec, &str, Payload<'_>, &mut Tally) -> Option<Result<(), String>>;

/// Delivers `message` to `snapshot`; returns what happened.
#[inline]
pub(crate) fn deliver<M: Send + Sync + 'static>(snapshot: &Snapshot, message: M) -> Tally {
    let mut tally = Tally::default();
    if snapshot.rest.is_some() {
        deliver_to_several(snapshot, message, &mut tally);
    } else {
        // Most channels carry one message type: one type check, no loop.
        let group = &snapshot.first;
        match group.of_type::<M>() {
            Some(receivers) => deliver_to(receivers, message, &mut tally),
            None => tally.mismatches += group.len() as u64,
        }
    }
    tally
}

/// [`deliver`] to a snapshot of several groups (several message types on one channel).
#[cold]
fn deliver_to_several<M: Send + Sync + 'static>(
    snapshot: &Snapshot,
    message: M,
    tally: &mut Tally,
) {
    let mut matching = None;
    for group in snapshot.groups() {
        match group.of_type::<M>() {
            Some(receivers) => matching = Some(receivers),
            None => tally.mismatches += group.len() as u64,
        }
    }
    if let Some(receivers) = matching {
        deliver_to(receivers, message, tally);
    }
}

/// Delivers `message` to `receivers`: writes it once for the streams, then calls the
/// listeners. The streams first: a listener that closes a session closes it after this post
/// (L06).
#[inline(always)]
fn deliver_to<M: 'static>(receivers: &Receivers<M>, message: M, tally: &mut Tally) {
    match &receivers.streams.ring {
        None => {
            tally.delivered += receivers.trie.len() as u64;
            walk(&receivers.trie, &message, tally);
        }
        Some(streams) if receivers.trie.len() == receivers.streams.count => {
            deliver_with_streams::<M, false>(receivers, streams, message, tally)
        }
        Some(streams) => deliver_with_streams::<M, true>(receivers, streams, message, tally),
    }
}

/// [`deliver_to`] a group that has streams, and listeners if `LISTENERS`: out of line, so
/// that a post to listeners only carries none of it.
#[inline(never)]
fn deliver_with_streams<M: 'static, const LISTENERS: bool>(
    receivers: &Receivers<M>,
    streams: &Streams<M>,
    message: M,
    tally: &mut Tally,
) {
    tally.delivered += (receivers.trie.len() - receivers.streams.count) as u64;
    let (written, lent) = streams.post(message, LISTENERS);
    if let Some(message) = lent {
        walk(&receivers.trie, &message, tally);
    }
    tally.delivered += written.members;
    tally.dropped += written.dropped;
}

/// Calls every listener of one group.
#[inline(always)]
fn walk<M: 'static>(trie: &Trie<Receiver<M>>, message: &M, tally: &mut Tally) {
    match trie.as_leaf() {
        // Up to 32 receivers: the loop inline, no call per leaf.
        Some(receivers) => call(receivers, message, tally),
        None => {
            trie.for_each_leaf(&mut |receivers: &[Receiver<M>]| call(receivers, message, tally))
        }
    }
}

/// Calls the listeners of `receivers`, one leaf of a group; its streams read the ring.
#[inline(always)]
fn call<M: 'static>(receivers: &[Receiver<M>], message: &M, tally: &mut Tally) {
    for receiver in receivers {
        if let Receiver::Listener(listener) = receiver {
            // AssertUnwindSafe: a panicking listener can leave only its own captured state
            // inconsistent; nothing of the bus is borrowed mutably here.
            if catch_unwind(AssertUnwindSafe(|| listener.call(message))).is_err() {
                tally.panics += 1;
            }
        }
    }
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
        match (group.ops().wire)(group, codec, class, payload, tally) {
            None => mismatches += group.len() as u64,
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
    let receivers = group.of_type::<M>()?;
    let message = match codec.decode::<M>(class, payload)? {
        Ok(message) => message,
        Err(reason) => return Some(Err(reason)),
    };
    deliver_to(receivers, message, tally);
    Some(Ok(()))
}

/// At most the first 64 characters of `text`.
fn short(text: &str) -> &str {
    text.char_indices()
        .nth(64)
        .map_or(text, |(at, _)| &text[..at])
}
