//! Interning channel names to topics, and forgetting unused ones.
//!
//! # Algorithm
//!
//! The registry interns channel names in a lock-free hash map (`papaya`) keyed by the
//! [`Topic`]s themselves, each found by its name, so a post by name is one lock-free lookup
//! followed by the topic's snapshot load: no lock on the post path (L10). A
//! [`Channel`](crate::Channel) handle holds its topic directly and skips the lookup.
//!
//! A topic holds the published [`Snapshot`] (in a [`Published`] cell): per message type a
//! persistent trie of receivers ([`crate::trie`]). Behind a `parking_lot` mutex it holds the
//! writer's own state: the number of live handles and, on a large channel, a spare snapshot.
//! Every registration change takes that one mutex, makes the next snapshot, and publishes it
//! before returning: a post that starts afterwards sees the change (L09). Only the mutex's
//! holder replaces the snapshot, so the one it reads is the latest.
//!
//! A small channel (or one with several message types) derives the next snapshot from the
//! published one, copying `O(log n)` of one trie, and keeps nothing else: its receivers are
//! held once. A one-type channel of at least `SPARE_MIN` (64) receivers keeps a second
//! version, the *spare* (`Writer::spare`): equal to the published one, but seen by no reader.
//! A change is made to the spare in place and the spare is published; the version it replaces
//! gets the same change in place and becomes the spare, if no reader still holds it (after
//! [`Published::swap`] every reader of the old version holds a counted reference, so
//! `Arc::get_mut` tells); if one does, it is dropped and the next change copies a path again.
//! Path copying clones one reference per sibling along the path (up to 32 per level) and the
//! replaced version drops them again, which was most of a change's cost under churn; two
//! versions changed in place touch only the changed receiver's count. The price: the trie's
//! nodes and entries (not the receivers) twice, on large channels only.
//!
//! Registration ids are taken from the bus's counter under the topic's mutex, so within a
//! topic they grow with the trie's slots, and a removal finds its id in the trie by binary
//! search over the branches and a scan of one leaf: no index from id to slot, no memory per
//! registration beyond its trie entry.
//!
//! # Memory
//!
//! A channel with one receiver is four allocations of its own besides the receiver: its
//! topic, its name, its snapshot, and its one group's [`Receivers`] (whose trie holds a lone
//! receiver inline), plus an 8-byte entry and a slot of the name table (see
//! `examples/memory.rs`). A receiver is one allocation that holds its registration id too
//! ([`post::Registered`]), so a trie entry is a pointer of two words; on a channel that keeps
//! a spare, the entries and the nodes (about 17 bytes per receiver) are held twice, the
//! receivers once.
//!
//! # Forgetting (L13)
//!
//! Posting interns nothing: a post to an unknown name is a map miss. A topic exists while it
//! has a listener, a stream or a live handle. The change that removes the last of them marks
//! the topic *forgotten* and removes it from the map, both under the topic's mutex; a
//! registration that found the topic in the map just before locks it, sees the mark, and looks
//! the name up again (finding nothing, it inserts a fresh topic). So a forgotten topic never
//! gains a subscriber, and at most one live topic per name is in the map.
//!
//! # Never drop user values under a lock
//!
//! Closures and streams are dropped when the last snapshot holding them is released, and a
//! closure's `Drop` may do anything, including closing a session, which takes registration
//! locks. So every operation hands the replaced snapshot back to its caller, who drops it after
//! the mutex is released (`Garbage`): it holds the last reference to a removed receiver.

use std::any::Any;
use std::borrow::Borrow;
use std::cell::{Cell, RefCell};
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::published::Published;
use super::thin::ArcOps;

pub(crate) use super::post::Kind;
use super::post::{
    self, Group, GroupOps, GroupStreams, InPlace, Receiver, Receivers, Removed, Snapshot,
};
use crate::message::Message;
use crate::stats::{Counters, Tally};
use crate::trie::{Path, Trie};

/// What the local core tells a transport: which channels have local receivers. The
/// transport boundary's `Transport` trait extends it; the core knows nothing
/// more of transports.
///
/// Both are called under the channel's lock, so for one channel the calls alternate and
/// arrive in the order the changes were made (G04). They must not block: a transport
/// queues the change for a task of its own.
pub(crate) trait Interest: Send + Sync {
    /// `channel` got its first local receiver.
    fn subscribe(&self, channel: &str);
    /// `channel` lost its last local receiver.
    fn unsubscribe(&self, channel: &str);
}

/// What a session registered: its ids and their channels. `None` once closed (S01).
///
/// The bus's snapshots hold the closures and stream sinks; the owner holds nothing of the
/// user's, so a session can never keep a closure alive (S03).
pub(crate) struct Owner {
    registrations: Mutex<Option<Records>>,
}

/// A session's registrations, in a plain vector (most sessions register a handful).
///
/// A registration removed by id (`remove_listener`, a stream's drop) stays recorded until the
/// next pruning: the topics do not record owners, which keeps a registration's cost to its
/// trie entry. Closing the session finds such an id gone and skips it. Pruning drops the
/// records whose id is no longer registered, when the vector reaches twice its size after
/// the previous pruning, so it stays within twice the live registrations, plus 4, and costs
/// `O(log n)` amortized per registration.
struct Records {
    list: Vec<(u64, Weak<Topic>)>,
    prune_at: usize,
}

impl Records {
    fn push(&mut self, id: u64, topic: Weak<Topic>) {
        if self.list.is_empty() {
            // A session's first registration takes one slot, not a vector's default four.
            self.list.reserve_exact(1);
        }
        self.list.push((id, topic));
    }

    /// Drops the records of removed registrations, if due. Takes topic locks: called under the
    /// owner's lock, which precedes them (see [`Registry::register`]).
    fn prune_if_due(&mut self) {
        if self.list.len() < self.prune_at {
            return;
        }
        self.list
            .retain(|(id, topic)| topic.upgrade().is_some_and(|topic| topic.contains(*id)));
        self.prune_at = (2 * self.list.len()).max(4);
    }
}

impl Owner {
    pub(crate) fn new() -> Self {
        Owner {
            registrations: Mutex::new(Some(Records {
                list: Vec::new(),
                prune_at: 4,
            })),
        }
    }

    /// Whether [`Registry::close_owner`] ran.
    pub(crate) fn is_closed(&self) -> bool {
        self.registrations.lock().is_none()
    }
}

/// Replaced snapshots and a removed entry, to drop once the registration lock is released: the
/// last reference to a removed receiver (a closure or stream sink of the user's types) may be
/// in them.
#[must_use = "drop garbage only after the registration lock is released"]
#[derive(Default)]
struct Garbage {
    snapshots: [Option<Arc<Snapshot>>; 2],
    entry: Option<Arc<dyn Any + Send + Sync>>,
}

/// A one-type channel with at least this many receivers keeps a spare snapshot (see
/// `Writer::spare`); a smaller one copies its path, which is then at most one leaf.
const SPARE_MIN: usize = 64;

/// One interned channel.
pub(crate) struct Topic {
    name: Box<str>,
    /// The published snapshot: all the post path reads, and, under `writer`, what the next
    /// registration change starts from (the channel keeps no other copy of its receivers).
    subscribers: Published<Snapshot>,
    writer: Mutex<Writer>,
}

/// The writer's own state, under the topic's lock: the number of live handles, or
/// [`Writer::FORGOTTEN`]. Whether the topic has receivers is whether it has a snapshot.
#[derive(Default)]
struct Writer {
    handles: usize,
    /// On a one-type channel of at least [`SPARE_MIN`] receivers: the snapshot the last change
    /// replaced, brought up to date in place and held by nothing else, so no reader sees it.
    /// The next change is made to it in place and it is published; the snapshot it replaces
    /// becomes the spare once the change is made to it too, if no reader still holds it (else
    /// it is dropped, and the change after copies its path). Two versions that no longer share
    /// nodes are changed with no reference count but the receiver's own: a path copy clones a
    /// reference per sibling, up to 32 per level.
    spare: Option<Arc<Snapshot>>,
}

impl Writer {
    /// The topic was forgotten (L13); no handle count reaches it (each handle is an `Arc`
    /// clone, whose count stops at `isize::MAX`).
    const FORGOTTEN: usize = usize::MAX;

    fn is_forgotten(&self) -> bool {
        self.handles == Writer::FORGOTTEN
    }
}

/// The [`GroupOps`] of message type `M`: a table per type, in static memory.
struct Ops<M>(PhantomData<M>);

impl<M: Message> Ops<M> {
    const OPS: &'static GroupOps = &GroupOps {
        arc: ArcOps::of::<Receivers<M>>(),
        wire: post::deliver_wire::<M>,
        counts: counts::<M>,
        remove: remove::<M>,
        contains: contains::<M>,
        leave_all: leave_all::<M>,
        remove_in_place: remove_in_place::<M>,
    };
}

/// The group of `receivers`.
fn group_of<M: Message>(receivers: Receivers<M>) -> Group {
    Group::new(receivers, Ops::<M>::OPS)
}

/// `group`'s receivers, whose type its operations know.
fn receivers_of<M: Message>(group: &Group) -> &Receivers<M> {
    match group.of_type() {
        Some(receivers) => receivers,
        None => unreachable!("a group's operations are those of its type"),
    }
}

fn counts<M: Message>(group: &Group) -> (usize, usize) {
    let receivers = receivers_of::<M>(group);
    (receivers.trie.len(), receivers.streams.count)
}

fn contains<M: Message>(group: &Group, id: u64) -> bool {
    let receivers = receivers_of::<M>(group);
    receivers.trie.get(id).is_some()
}

fn leave_all<M: Message>(group: &Group) {
    receivers_of::<M>(group)
        .trie
        .for_each_leaf(&mut |entries: &[Receiver<M>]| entries.iter().for_each(Receiver::leave));
}

fn remove<M: Message>(group: &Group, id: u64, only: Option<Kind>) -> Option<Removed> {
    let receivers = receivers_of::<M>(group);
    let (rest, entry) = receivers
        .trie
        .removed(id, |entry| only.is_none_or(|kind| kind == entry.kind()))?;
    // `entry` is a clone: the receiver itself is released with the replaced snapshot, which
    // the caller drops after the lock.
    let kind = entry.kind();
    entry.leave();
    let mut streams = receivers.streams.clone();
    streams.release(kind);
    Some((rest.map(|trie| group_of(Receivers { trie, streams })), kind))
}

impl<M: Message> GroupStreams<M> {
    /// Counts `entry` in: a stream joins the group's ring, or a new one as the group's first
    /// stream.
    fn admit(&mut self, entry: &Receiver<M>) {
        if let Some(ring) = entry.bind(self.ring.as_ref()) {
            self.count += 1;
            self.ring = Some(ring);
        }
    }

    /// Counts a removed receiver of `kind` out (it left the ring already): the ring goes with
    /// the group's last stream.
    fn release(&mut self, kind: Kind) {
        if kind == Kind::Stream {
            self.count -= 1;
            if self.count == 0 {
                self.ring = None;
            }
        }
    }
}

/// `group`'s receivers, if no other snapshot shares them.
fn receivers_mut<M: Message>(group: &mut Group) -> Option<&mut Receivers<M>> {
    group.of_type_mut()
}

fn remove_in_place<M: Message>(
    group: &mut Group,
    id: u64,
    only: Option<Kind>,
    path: &mut Option<Path>,
) -> InPlace {
    let Some(receivers) = receivers_mut::<M>(group).filter(|r| r.trie.len() > 1) else {
        return InPlace::Unchanged;
    };
    let accept = |entry: &Receiver<M>| only.is_none_or(|kind| kind == entry.kind());
    match receivers.trie.remove(id, accept, path) {
        Some((entry, _)) => {
            let kind = entry.kind();
            entry.leave();
            receivers.streams.release(kind);
            let entry: Arc<dyn Any + Send + Sync> = match entry {
                Receiver::Listener(listener) => listener.into_any(),
                Receiver::Stream(sink) => sink,
            };
            InPlace::Removed(kind, entry)
        }
        None => InPlace::Unchanged,
    }
}

/// Adds `entry` in place to `snapshot`, if nothing else holds it and it is a one-type snapshot
/// of `M`; gives the entry back otherwise.
fn push_in_place<M: Message>(
    snapshot: &mut Arc<Snapshot>,
    entry: Receiver<M>,
) -> Result<(), Receiver<M>> {
    let receivers = Arc::get_mut(snapshot)
        .and_then(Snapshot::single_mut)
        .and_then(receivers_mut::<M>);
    match receivers {
        Some(receivers) => {
            receivers.streams.admit(&entry);
            receivers.trie.push(entry);
            Ok(())
        }
        None => Err(entry),
    }
}

/// Removes registration `id` in place from `snapshot`, if nothing else holds it and it is a
/// one-type snapshot; the removed entry's kind, and the entry. `path`: see
/// [`GroupOps::remove_in_place`].
fn remove_from_spare(
    snapshot: &mut Arc<Snapshot>,
    id: u64,
    only: Option<Kind>,
    path: &mut Option<Path>,
) -> Option<(Kind, Arc<dyn Any + Send + Sync>)> {
    let group = Arc::get_mut(snapshot)?.single_mut()?;
    match (group.ops().remove_in_place)(group, id, only, path) {
        InPlace::Removed(kind, entry) => Some((kind, entry)),
        InPlace::Unchanged => None,
    }
}

/// Whether a channel whose snapshot is `snapshot` keeps a spare.
fn spare_pays(snapshot: Option<&Snapshot>) -> bool {
    snapshot.is_some_and(|snapshot| {
        let mut groups = snapshot.groups();
        match (groups.next(), groups.next()) {
            (Some(group), None) => (group.ops().counts)(group).0 >= SPARE_MIN,
            _ => false,
        }
    })
}

/// `snapshot` with `entry` added to the group of its type (a new group, last, if it has none).
fn with_entry<M: Message>(snapshot: Option<&Snapshot>, entry: Receiver<M>) -> Snapshot {
    let entry = Cell::new(Some(entry));
    let groups = snapshot.into_iter().flat_map(Snapshot::groups);
    let updated = groups.map(|old| match old.of_type::<M>() {
        Some(receivers) => {
            let Some(entry) = entry.take() else {
                unreachable!("a channel has one group per message type")
            };
            let mut streams = receivers.streams.clone();
            streams.admit(&entry);
            group_of(Receivers {
                trie: receivers.trie.pushed(entry),
                streams,
            })
        }
        None => old.clone(),
    });
    let added = std::iter::from_fn(|| {
        entry.take().map(|entry| {
            let mut streams = GroupStreams::default();
            streams.admit(&entry);
            group_of(Receivers {
                trie: Trie::new(entry),
                streams,
            })
        })
    });
    match Snapshot::new(updated.chain(added)) {
        Some(snapshot) => snapshot,
        None => unreachable!("a snapshot with an entry added has a group"),
    }
}

impl Topic {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Delivers `message` to the current snapshot and counts the post; returns the number of
    /// receivers reached. The post path, see [`super::post`].
    #[inline]
    pub(crate) fn post<M: Send + Sync + 'static>(&self, message: M, counters: &Counters) -> usize {
        self.post_if_received(message, counters)
            .unwrap_or_else(|_| {
                counters.record_post(&Tally::default());
                0
            })
    }

    /// [`Topic::post`] when the topic has receivers; gives `message` back, counting nothing,
    /// when it has none (it may have been forgotten: see [`Registry::post`]).
    #[inline]
    fn post_if_received<M: Send + Sync + 'static>(
        &self,
        message: M,
        counters: &Counters,
    ) -> Result<usize, M> {
        // `borrow` takes the snapshot for the post without counting it (its address in a
        // thread-owned slot); a writer that replaces it meanwhile retires it, and whichever
        // side lets go last frees the old version, with the closures only it still held (S03).
        let snapshot = self.subscribers.borrow();
        let Some(snapshot) = snapshot.get() else {
            return Err(message);
        };
        let tally = post::deliver(snapshot, message);
        counters.record_post(&tally);
        Ok(tally.delivered as usize)
    }

    /// The current snapshot, for a message received from Redis.
    pub(crate) fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.subscribers.load_full()
    }

    /// Under the topic's lock: publishes `snapshot`; returns the replaced one (garbage, unless
    /// it becomes the spare).
    fn publish(&self, _writer: &Writer, snapshot: Option<Arc<Snapshot>>) -> Option<Arc<Snapshot>> {
        self.subscribers.swap(snapshot)
    }

    /// Whether registration `id` is in effect here. Reads the published snapshot, which only
    /// the lock holder replaces; a change may follow at once, lock or no lock.
    fn contains(&self, id: u64) -> bool {
        let snapshot = self.subscribers.borrow();
        snapshot.get().is_some_and(|snapshot| {
            snapshot
                .groups()
                .any(|group| (group.ops().contains)(group, id))
        })
    }
}

/// A key of the interning table: the topic itself, looked up by its name. The table's entry is
/// then one pointer, where a name and a topic were two, and the name is stored once, in the
/// topic.
struct Interned(Arc<Topic>);

impl Borrow<str> for Interned {
    fn borrow(&self) -> &str {
        &self.0.name
    }
}

/// Hashes as the name does (`Borrow`'s contract: a lookup hashes a `&str`).
impl Hash for Interned {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.name.hash(state);
    }
}

impl PartialEq for Interned {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for Interned {}

thread_local! {
    /// The topic this thread last looked up by name twice in a row (its registry is in
    /// `LAST_KEY`): [`Registry::post`] then skips the interning table. Borrowed for the post,
    /// so a listener that posts by name meanwhile may use it but not replace it. Holds the
    /// topic, not its receivers: a topic is emptied when it is forgotten and when its
    /// registry is dropped.
    static LAST_BY_NAME: RefCell<Option<Arc<Topic>>> = const { RefCell::new(None) };
    /// The address of the topic this thread's last by-name lookup found; an address only,
    /// compared and never followed.
    static LAST_LOOKUP: Cell<usize> = const { Cell::new(0) };
    /// The [`Registry::id`] of `LAST_BY_NAME`'s topic and its name's length, set with it, in
    /// a thread-local without a destructor: a post checks them first, with plain loads. Id 0
    /// while there is none (ids start at 1); the id of a dropped registry is never reused.
    static LAST_KEY: Cell<(u64, usize)> = const { Cell::new((0, 0)) };
}

impl Drop for Registry {
    /// Empties every topic, so that a topic a thread still caches for by-name posts
    /// ([`LAST_BY_NAME`]) holds none of the receivers (and their captures).
    fn drop(&mut self) {
        for (topic, _) in self.map.pin().iter() {
            let topic = &topic.0;
            let spare = topic.writer.lock().spare.take();
            drop(topic.subscribers.swap(None));
            drop(spare);
        }
    }
}

/// Source of [`Registry::id`]s.
static REGISTRIES: AtomicU64 = AtomicU64::new(0);

/// The interning table and the gauges that go with it.
pub(crate) struct Registry {
    /// This registry among all of the process's, for the by-name cache (`LAST_KEY`).
    id: u64,
    map: papaya::HashMap<Interned, (), foldhash::fast::RandomState>,
    pub(crate) counters: Counters,
    /// Set by [`Registry::close`] (bus shutdown): registrations are inert afterwards.
    closed: AtomicBool,
    /// On a bus with a transport: told when a channel gets its first receiver or loses its
    /// last, under the channel's lock, so the changes reach it in the order they were made
    /// (G04).
    interest: Option<Arc<dyn Interest>>,
}

impl Registry {
    pub(crate) fn new(interest: Option<Arc<dyn Interest>>) -> Self {
        Registry {
            id: REGISTRIES.fetch_add(1, Relaxed) + 1,
            map: papaya::HashMap::with_hasher(foldhash::fast::RandomState::default()),
            counters: Counters::default(),
            closed: AtomicBool::new(false),
            interest,
        }
    }

    /// Under `topic`'s lock: tells the transport that `topic` now has receivers or has none.
    fn receivers_changed(&self, topic: &Topic, some: bool) {
        match &self.interest {
            Some(interest) if some => interest.subscribe(&topic.name),
            Some(interest) => interest.unsubscribe(&topic.name),
            None => {}
        }
    }

    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Acquire)
    }

    /// Posts by name: one lock-free map lookup, then [`Topic::post`]. Interns nothing (L13).
    ///
    /// A thread that posts to the same name again skips the table: [`LAST_BY_NAME`] holds the
    /// topic it looked up twice in a row last, which is used while it is of this registry and
    /// this name and has receivers. A topic without receivers may have been forgotten and the
    /// name interned afresh, so then the name is looked up: a forgotten topic never gets
    /// receivers again (L13), and it lost its last one before it was forgotten, before any
    /// registration on a fresh topic of the name, so a post that follows such a registration
    /// finds none on the old topic. Only a second lookup in a row fills the cache, so a thread
    /// posting to a new name each time pays no reference count for it.
    #[inline]
    pub(crate) fn post<M: Send + Sync + 'static>(&self, name: &str, message: M) -> usize {
        // Plain thread-local loads keep a post to another registry or to a name of another
        // length off the cache's slower access (a destructor's registration, a borrow).
        if LAST_KEY.get() != (self.id, name.len()) {
            return self.post_looked_up(name, message, 0);
        }
        let mut message = Some(message);
        let mut empty = 0;
        let hit = LAST_BY_NAME.try_with(|last| {
            // Shared: a listener's own post by name may use it too, but not replace it.
            let last = last.try_borrow().ok()?;
            let topic = last.as_ref()?;
            if *topic.name != *name {
                return None;
            }
            match topic.post_if_received(message.take()?, &self.counters) {
                Ok(delivered) => Some(delivered),
                Err(back) => {
                    message = Some(back);
                    empty = Arc::as_ptr(topic) as usize;
                    None
                }
            }
        });
        match (hit, message) {
            (Ok(Some(delivered)), _) => delivered,
            (_, Some(message)) => self.post_looked_up(name, message, empty),
            (_, None) => unreachable!("taken only by a post that returned"),
        }
    }

    /// [`Registry::post`] through the interning table. `empty` is the address of the cached
    /// topic when it was just found without receivers (else 0).
    #[inline(never)]
    fn post_looked_up<M: Send + Sync + 'static>(
        &self,
        name: &str,
        message: M,
        empty: usize,
    ) -> usize {
        let map = self.map.pin();
        let Some((topic, _)) = map.get_key_value(name) else {
            self.counters.record_post(&Tally::default());
            return 0;
        };
        let topic = &topic.0;
        let address = Arc::as_ptr(topic) as usize;
        if address == empty {
            // Still the name's topic, so it was live when it had no receivers: the post
            // reached nobody then (a forgotten topic never comes back to the table).
            self.counters.record_post(&Tally::default());
            return 0;
        }
        if LAST_LOOKUP.try_with(|last| last.replace(address)) == Ok(address) {
            let _ = LAST_BY_NAME.try_with(|last| {
                if let Ok(mut last) = last.try_borrow_mut() {
                    *last = Some(topic.clone());
                    LAST_KEY.set((self.id, name.len()));
                }
            });
        }
        topic.post(message, &self.counters)
    }

    /// The live topic of `name`, if any.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.map
            .pin()
            .get_key_value(name)
            .map(|(topic, _)| topic.0.clone())
    }

    /// Runs `f` on the live topic of `name` (interning it if needed) with its writer locked.
    /// What `f` returns is dropped by the caller, after the lock (see `Garbage`).
    fn with_topic<R>(&self, name: &str, f: impl FnOnce(&Arc<Topic>, &mut Writer) -> R) -> R {
        loop {
            let topic = match self.get(name) {
                Some(topic) => topic,
                None => {
                    let fresh = Arc::new(Topic {
                        name: name.into(),
                        subscribers: Published::new(None),
                        writer: Mutex::default(),
                    });
                    if self
                        .map
                        .pin()
                        .try_insert(Interned(fresh.clone()), ())
                        .is_err()
                    {
                        // Another registration interned the name first: use its topic.
                        continue;
                    }
                    self.counters.channels.fetch_add(1, Relaxed);
                    fresh
                }
            };
            let mut writer = topic.writer.lock();
            if !writer.is_forgotten() {
                return f(&topic, &mut writer);
            }
        }
    }

    /// Registers `receiver` on `name` under a new id from `ids`, owned by `owner` when given
    /// (S01); returns the id and the topic. Gives the receiver back (with an id all the same)
    /// when the registration is inert: its owner is closed (S04), or the registry is (after
    /// shutdown); the caller drops it outside any lock.
    ///
    /// The id is taken under the topic's lock, so a topic's ids grow with its trie's slots
    /// (see the module docs).
    ///
    /// Lock order: the owner's lock, then the channel's, so that a registration is either
    /// recorded before [`Registry::close_owner`] takes the record, or refused. Everything else
    /// takes one lock at a time: `close_owner` takes the owner's, releases it, then each
    /// channel's; removals take the channel's only.
    pub(crate) fn register<M: Message>(
        &self,
        name: &str,
        ids: &AtomicU64,
        receiver: Receiver<M>,
        owner: Option<&Owner>,
    ) -> (u64, Result<Arc<Topic>, Receiver<M>>) {
        let Some(owner) = owner else {
            return self.subscribe(name, ids, receiver);
        };
        let mut registrations = owner.registrations.lock();
        let Some(records) = &mut *registrations else {
            return (ids.fetch_add(1, Relaxed), Err(receiver));
        };
        records.prune_if_due();
        let (id, topic) = self.subscribe(name, ids, receiver);
        if let Ok(topic) = &topic {
            records.push(id, Arc::downgrade(topic));
        }
        (id, topic)
    }

    /// Closes `owner`: removes every registration made through it from its channel (S01).
    /// Idempotent; later registrations through it are inert (S04).
    pub(crate) fn close_owner(&self, owner: &Owner) {
        let records = owner.registrations.lock().take();
        for (id, topic) in records.into_iter().flat_map(|records| records.list) {
            if let Some(topic) = topic.upgrade() {
                self.unsubscribe(&topic, id, None);
            }
        }
    }

    /// Registers `receiver` on `name` under a new id from `ids`. Gives it back when the
    /// registry is closed.
    fn subscribe<M: Message>(
        &self,
        name: &str,
        ids: &AtomicU64,
        receiver: Receiver<M>,
    ) -> (u64, Result<Arc<Topic>, Receiver<M>>) {
        let (id, registered) = self.with_topic(name, move |topic, writer| {
            let id = ids.fetch_add(1, Relaxed);
            // Checked under the topic's lock: `close` sets the flag before it sweeps the topics,
            // so a registration either sees the flag or is swept.
            if self.is_closed() {
                return (id, Err(receiver));
            }
            let kind = receiver.kind();
            let entry = receiver.register(id);
            let mut garbage = Garbage::default();
            let spare = match writer.spare.take() {
                Some(mut spare) => match push_in_place(&mut spare, entry.clone()) {
                    Ok(()) => Some(spare),
                    Err(_) => {
                        garbage.snapshots[1] = Some(spare);
                        None
                    }
                },
                None => None,
            };
            let next = match spare {
                Some(spare) => spare,
                None => {
                    let current = topic.subscribers.load_full();
                    if current.is_none() {
                        self.receivers_changed(topic, true);
                    }
                    Arc::new(with_entry(current.as_deref(), entry.clone()))
                }
            };
            self.gauge(kind).fetch_add(1, Relaxed);
            let keep = spare_pays(Some(&next));
            let old = topic.publish(writer, Some(next));
            match old {
                Some(mut old) if keep => match push_in_place(&mut old, entry) {
                    Ok(()) => writer.spare = Some(old),
                    Err(_) => garbage.snapshots[0] = Some(old),
                },
                old => garbage.snapshots[0] = old,
            }
            (id, Ok((garbage, topic.clone())))
        });
        // The garbage is dropped here, after `with_topic` released the lock.
        (id, registered.map(|(_garbage, topic)| topic))
    }

    /// Removes registration `id` (of kind `kind`) from `topic`; false when unknown. Its owning
    /// session, if any, keeps the id until it prunes its records or closes (see `Records`).
    pub(crate) fn remove(&self, topic: &Topic, id: u64, kind: Kind) -> bool {
        self.unsubscribe(topic, id, Some(kind)).is_some()
    }

    /// Removes registration `id` from `topic` (only if it is of kind `only`, when given);
    /// returns its kind, `None` when unknown.
    fn unsubscribe(&self, topic: &Topic, id: u64, only: Option<Kind>) -> Option<Kind> {
        let mut writer = topic.writer.lock();
        let mut garbage = Garbage::default();
        let kind = self.unsubscribe_locked(topic, &mut writer, id, only, &mut garbage);
        drop(writer);
        drop(garbage);
        kind
    }

    /// [`Registry::unsubscribe`] under the topic's lock; what it replaces goes to `garbage`.
    fn unsubscribe_locked(
        &self,
        topic: &Topic,
        writer: &mut Writer,
        id: u64,
        only: Option<Kind>,
        garbage: &mut Garbage,
    ) -> Option<Kind> {
        let mut spare = writer.spare.take();
        // Where the entry was in the spare: the old version has the same shape.
        let mut path = None;
        let (next, kind, current) = match spare
            .as_mut()
            .and_then(|s| remove_from_spare(s, id, only, &mut path))
        {
            // The published snapshot still holds the entry, so this is not its last reference.
            Some((kind, _entry)) => (spare, kind, None),
            None => {
                let current = topic.subscribers.load_full()?;
                let Some((at, (rest, kind))) = current
                    .groups()
                    .enumerate()
                    .find_map(|(at, group)| Some((at, (group.ops().remove)(group, id, only)?)))
                else {
                    writer.spare = spare;
                    return None;
                };
                garbage.snapshots[1] = spare;
                let mut rest = Some(rest);
                let groups = current.groups().enumerate();
                let snapshot =
                    Snapshot::new(groups.filter_map(|(other, group)| match other == at {
                        true => rest.take().flatten(),
                        false => Some(group.clone()),
                    }));
                (snapshot.map(Arc::new), kind, Some(current))
            }
        };
        let emptied = next.is_none();
        if emptied {
            self.receivers_changed(topic, false);
        }
        self.gauge(kind).fetch_sub(1, Relaxed);
        let keep = spare_pays(next.as_deref());
        let old = topic.publish(writer, next);
        drop(current);
        match old {
            Some(mut old) if keep => match remove_from_spare(&mut old, id, only, &mut path) {
                Some((_, entry)) => {
                    garbage.entry = Some(entry);
                    writer.spare = Some(old);
                }
                None => garbage.snapshots[0] = Some(old),
            },
            old => garbage.snapshots[0] = old,
        }
        // A topic that still has receivers is not forgotten: no need to load its snapshot.
        if emptied {
            self.forget_if_unused(topic, writer);
        }
        Some(kind)
    }

    /// A live handle on `name`: the topic stays interned while it lives.
    pub(crate) fn hold(&self, name: &str) -> Arc<Topic> {
        self.with_topic(name, |topic, writer| {
            writer.handles += 1;
            topic.clone()
        })
    }

    /// Another live handle on an already held topic.
    pub(crate) fn hold_again(&self, topic: &Topic) {
        topic.writer.lock().handles += 1;
    }

    /// Releases a handle taken with [`Registry::hold`] or [`Registry::hold_again`].
    pub(crate) fn release(&self, topic: &Topic) {
        let mut writer = topic.writer.lock();
        writer.handles -= 1;
        self.forget_if_unused(topic, &mut writer);
    }

    /// Shuts the registry: registrations become inert and every receiver is removed (streams
    /// end once posts already running are done with them). Idempotent.
    pub(crate) fn close(&self) {
        self.closed.store(true, SeqCst);
        let topics: Vec<Arc<Topic>> = self
            .map
            .pin()
            .iter()
            .map(|(topic, _)| topic.0.clone())
            .collect();
        for topic in topics {
            let mut writer = topic.writer.lock();
            let spare = writer.spare.take();
            let garbage = topic.publish(&writer, None);
            if let Some(snapshot) = &garbage {
                self.receivers_changed(&topic, false);
                for group in snapshot.groups() {
                    (group.ops().leave_all)(group);
                    let (len, streams) = (group.ops().counts)(group);
                    self.counters.streams.fetch_sub(streams as u64, Relaxed);
                    self.counters
                        .listeners
                        .fetch_sub((len - streams) as u64, Relaxed);
                }
            }
            self.forget_if_unused(&topic, &mut writer);
            drop(writer);
            drop(garbage);
            drop(spare);
        }
    }

    /// Under `topic`'s lock: forgets the topic when nothing holds it any more (L13).
    fn forget_if_unused(&self, topic: &Topic, writer: &mut Writer) {
        if writer.handles == 0 && !topic.subscribers.is_some() {
            writer.handles = Writer::FORGOTTEN;
            let map = self.map.pin();
            if let Ok(Some(_)) =
                map.remove_if(&*topic.name, |live, _| std::ptr::eq(&*live.0, topic))
            {
                self.counters.channels.fetch_sub(1, Relaxed);
            }
        }
    }

    fn gauge(&self, kind: Kind) -> &AtomicU64 {
        match kind {
            Kind::Listener => &self.counters.listeners,
            Kind::Stream => &self.counters.streams,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> Receiver<u64> {
        Receiver::listener(|_: &u64| {})
    }

    /// A trie entry is two words (`post::Registered`): the memory goals of issue 11 count on
    /// it.
    #[test]
    fn entries_are_two_words() {
        assert_eq!(std::mem::size_of::<Receiver<u64>>(), 16);
        assert_eq!(std::mem::size_of::<Receiver<String>>(), 16);
    }

    /// Removal finds ids in the trie: in any order, across repacks, and only
    /// for the right kind.
    #[test]
    fn remove_finds_ids_in_any_order() {
        let registry = Registry::new(None);
        let ids = AtomicU64::new(1);
        let mut registered: Vec<(u64, Arc<Topic>)> = (0..2000)
            .map(|_| {
                let (id, topic) = registry.register("c", &ids, listener(), None);
                (id, topic.ok().unwrap())
            })
            .collect();
        // A fixed shuffle (xorshift), so that removals hit every part of the trie.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for i in (1..registered.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            registered.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        for (at, (id, topic)) in registered.iter().enumerate() {
            assert!(!registry.remove(topic, *id, Kind::Stream));
            assert!(registry.remove(topic, *id, Kind::Listener));
            assert!(!registry.remove(topic, *id, Kind::Listener));
            let left = registered.len() - at - 1;
            assert_eq!(registry.counters.listeners.load(Relaxed), left as u64);
        }
        assert!(registry.get("c").is_none());
    }

    /// `count` listeners on channel "c" of `registry`, each holding a token: the token's count
    /// says whether anything still holds the listener.
    fn tokened_listeners(registry: &Registry, count: usize) -> Vec<(u64, Arc<Topic>, Arc<()>)> {
        let ids = AtomicU64::new(1);
        (0..count)
            .map(|_| {
                let token = Arc::new(());
                let held = token.clone();
                let receiver = Receiver::listener(move |_: &u64| {
                    let _ = &held;
                });
                let (id, topic) = registry.register("c", &ids, receiver, None);
                (id, topic.ok().unwrap(), token)
            })
            .collect()
    }

    /// A large channel changes its spare in place: a snapshot a reader holds never changes,
    /// a removed closure is released when its removal returns, and closing the registry
    /// releases the spare's references too.
    #[test]
    fn spare_snapshots_are_never_seen_and_hold_nothing_removed() {
        let registry = Registry::new(None);
        let registered = tokened_listeners(&registry, 4 * SPARE_MIN);
        let topic = registered[0].1.clone();
        assert!(topic.writer.lock().spare.is_some());
        let total = registered.len();
        // Removals while a reader holds a snapshot.
        let held = topic.snapshot().unwrap();
        for (at, (id, topic, token)) in registered.iter().enumerate().skip(SPARE_MIN) {
            assert!(registry.remove(topic, *id, Kind::Listener));
            assert!(!registry.remove(topic, *id, Kind::Listener));
            let left = total - at + SPARE_MIN - 1;
            assert_eq!(post::deliver(&held, 1u64).delivered as usize, total);
            let now = topic.snapshot().unwrap();
            assert_eq!(post::deliver(&now, 1u64).delivered as usize, left);
            assert!(Arc::strong_count(token) > 1, "the held snapshot has it");
        }
        drop(held);
        for (_, _, token) in &registered[SPARE_MIN..] {
            assert_eq!(Arc::strong_count(token), 1);
        }
        registry.close();
        for (_, _, token) in &registered {
            assert_eq!(Arc::strong_count(token), 1);
        }
        assert!(registry.get("c").is_none());
    }

    /// Without a reader, a removed closure is released before its removal returns.
    #[test]
    fn spare_releases_a_removed_closure_at_once() {
        let registry = Registry::new(None);
        let registered = tokened_listeners(&registry, 3 * SPARE_MIN);
        for (id, topic, token) in registered.iter().rev() {
            assert!(Arc::strong_count(token) > 1);
            assert!(registry.remove(topic, *id, Kind::Listener));
            assert_eq!(Arc::strong_count(token), 1);
        }
        assert!(registry.get("c").is_none());
    }

    /// A channel with receivers of three message types: each post reaches its type's
    /// receivers and counts the others as mismatches (L05), whatever group a removal empties
    /// (the first, one in the middle of the list, the last).
    #[test]
    fn several_message_types_share_a_channel() {
        let registry = Registry::new(None);
        let ids = AtomicU64::new(1);
        let register = |receiver| {
            let (id, topic) = registry.register::<u64>("c", &ids, receiver, None);
            (id, topic.ok().unwrap())
        };
        let (a, topic) = register(listener());
        let (b, _) =
            registry.register::<String>("c", &ids, Receiver::listener(|_: &String| {}), None);
        let (c, _) = registry.register::<u8>("c", &ids, Receiver::listener(|_: &u8| {}), None);
        let (d, _) = register(listener());
        let post = |message: u64| post::deliver(&topic.snapshot().unwrap(), message);
        let tally = post(7);
        assert_eq!((tally.delivered, tally.mismatches), (2, 2));
        let tally = post::deliver(&topic.snapshot().unwrap(), 7u8);
        assert_eq!((tally.delivered, tally.mismatches), (1, 3));
        assert!(registry.remove(&topic, b, Kind::Listener));
        let tally = post(7);
        assert_eq!((tally.delivered, tally.mismatches), (2, 1));
        assert!(registry.remove(&topic, a, Kind::Listener));
        assert!(registry.remove(&topic, d, Kind::Listener));
        let tally = post(7);
        assert_eq!((tally.delivered, tally.mismatches), (0, 1));
        assert!(topic.contains(c) && !topic.contains(a));
        assert!(registry.remove(&topic, c, Kind::Listener));
        assert!(topic.snapshot().is_none());
        assert!(registry.get("c").is_none());
    }

    /// A session whose registrations are removed by id keeps at most about twice its live
    /// records, and closing it afterwards removes exactly what is left.
    #[test]
    fn session_records_stay_bounded() {
        let registry = Registry::new(None);
        let ids = AtomicU64::new(1);
        let owner = Owner::new();
        let (kept, _) = registry.register("kept", &ids, listener(), Some(&owner));
        for _ in 0..1000 {
            let (id, topic) = registry.register("c", &ids, listener(), Some(&owner));
            assert!(registry.remove(&topic.ok().unwrap(), id, Kind::Listener));
            let records = owner.registrations.lock();
            assert!(records.as_ref().unwrap().list.len() <= 6);
        }
        assert_eq!(registry.counters.listeners.load(Relaxed), 1);
        registry.close_owner(&owner);
        assert!(owner.is_closed());
        assert_eq!(registry.counters.listeners.load(Relaxed), 0);
        assert!(registry.get("kept").is_none());
        let (after, inert) = registry.register("c", &ids, listener(), Some(&owner));
        assert!(inert.is_err() && after > kept);
    }
}
