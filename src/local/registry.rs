//! Interning channel names to topics, and forgetting unused ones.
//!
//! # Algorithm
//!
//! The registry maps a channel name to its [`Topic`] in a lock-free hash map (`papaya`), so a
//! post by name is one lock-free lookup followed by the topic's snapshot load: no lock on the
//! post path (L10). A [`Channel`](crate::Channel) handle holds its topic directly and skips the
//! lookup.
//!
//! A topic holds the published [`Snapshot`] (in an `ArcSwapOption`) and, behind a
//! `parking_lot` mutex, the writer's state: per message type a persistent trie of receivers
//! ([`crate::trie`]), an index from registration id to (type, trie slot, owner), and the
//! number of live handles. Every registration change takes that one mutex, edits one trie
//! (copying `O(log n)`), and publishes a new snapshot before returning: a post that starts
//! afterwards sees the change (L09).
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
//! locks. So every operation hands the replaced root and the removed entries back to its caller,
//! who drops them after the mutex is released (`Garbage`).

use std::any::{Any, TypeId};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Weak};

use arc_swap::ArcSwapOption;
use foldhash::HashMap;
use parking_lot::Mutex;

use super::post::{self, Entry, Group, Receiver, Snapshot};
use crate::message::Message;
use crate::stats::{Counters, Tally};
use crate::trie::Trie;

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
    registrations: Mutex<Option<HashMap<u64, Weak<Topic>>>>,
}

impl Owner {
    pub(crate) fn new() -> Self {
        Owner {
            registrations: Mutex::new(Some(HashMap::default())),
        }
    }

    /// Forgets registration `id` (it was removed from its channel by other means).
    fn forget(&self, id: u64) {
        if let Some(registrations) = &mut *self.registrations.lock() {
            registrations.remove(&id);
        }
    }

    /// Whether [`Registry::close_owner`] ran.
    pub(crate) fn is_closed(&self) -> bool {
        self.registrations.lock().is_none()
    }
}

/// What a registration is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Listener,
    Stream,
}

/// The writer's record of one registration.
pub(crate) struct Registered {
    slot: u64,
    kind: Kind,
    message: TypeId,
    /// The session that owns it, if any (S01).
    pub(crate) owner: Option<Weak<Owner>>,
}

/// Values to drop once the registration lock is released: a replaced snapshot and removed
/// receivers (closures and stream sinks of the user's types).
#[must_use = "drop garbage only after the registration lock is released"]
#[derive(Default)]
struct Garbage {
    _snapshot: Option<Arc<Snapshot>>,
    _removed: Vec<Box<dyn Any + Send>>,
}

/// One interned channel.
pub(crate) struct Topic {
    name: Arc<str>,
    /// The published snapshot: all the post path reads.
    subscribers: ArcSwapOption<Snapshot>,
    writer: Mutex<Writer>,
}

#[derive(Default)]
struct Writer {
    /// One per message type with at least one receiver.
    groups: Vec<Box<dyn ErasedGroup>>,
    index: HashMap<u64, Registered>,
    handles: usize,
    forgotten: bool,
}

/// The writer's side of one message type's receivers.
struct GroupWriter<M> {
    trie: Trie<Entry<M>>,
    streams: usize,
}

/// [`GroupWriter`] with its message type erased, so one channel can hold several.
trait ErasedGroup: Send {
    fn message(&self) -> TypeId;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn len(&self) -> usize;
    /// Removes the receiver at `slot`; returns it, boxed, for [`Garbage`].
    fn remove(&mut self, slot: u64, kind: Kind) -> Option<Box<dyn Any + Send>>;
    /// Repacks a sparse trie, reporting `(id, new slot)` for every receiver.
    fn repack_if_sparse(&mut self, moved: &mut dyn FnMut(u64, u64));
    fn publish(&self) -> Option<Group>;
}

impl<M: Message> ErasedGroup for GroupWriter<M> {
    fn message(&self) -> TypeId {
        TypeId::of::<M>()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn len(&self) -> usize {
        self.trie.len()
    }

    fn remove(&mut self, slot: u64, kind: Kind) -> Option<Box<dyn Any + Send>> {
        let entry = self.trie.remove(slot)?;
        if kind == Kind::Stream {
            self.streams -= 1;
        }
        Some(Box::new(entry))
    }

    fn repack_if_sparse(&mut self, moved: &mut dyn FnMut(u64, u64)) {
        if self.trie.should_repack() {
            self.trie.repack(|entry, at| moved(entry.id, at));
        }
    }

    fn publish(&self) -> Option<Group> {
        let root = self.trie.root()?;
        Some(Group {
            root,
            len: self.trie.len(),
            streams: self.streams,
            wire: post::deliver_wire::<M>,
        })
    }
}

impl Writer {
    fn group_mut<M: Message>(&mut self) -> &mut GroupWriter<M> {
        let at = match self
            .groups
            .iter()
            .position(|g| g.message() == TypeId::of::<M>())
        {
            Some(at) => at,
            None => {
                self.groups.push(Box::new(GroupWriter::<M> {
                    trie: Trie::default(),
                    streams: 0,
                }));
                self.groups.len() - 1
            }
        };
        match self.groups[at].as_any_mut().downcast_mut() {
            Some(group) => group,
            None => unreachable!("groups are found by their message type"),
        }
    }

    fn snapshot(&self) -> Option<Arc<Snapshot>> {
        // Exact capacity: every group has receivers (empty ones are removed), so the
        // conversion to a boxed slice does not reallocate.
        let mut groups = Vec::with_capacity(self.groups.len());
        groups.extend(self.groups.iter().filter_map(|g| g.publish()));
        let groups = groups.into_boxed_slice();
        (!groups.is_empty()).then(|| Arc::new(Snapshot { groups }))
    }
}

impl Topic {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Delivers `message` to the current snapshot and counts the post; returns the number of
    /// receivers reached. The post path, see [`crate::post`].
    #[inline]
    pub(crate) fn post<M: Send + Sync + 'static>(&self, message: M, counters: &Counters) -> usize {
        // `load` borrows the snapshot for the post (arc-swap's debt slots); a writer that
        // replaces it meanwhile pays that debt, and whichever side drops last frees the old
        // version, with the closures only it still held (S03).
        let snapshot = self.subscribers.load();
        let tally = match &*snapshot {
            Some(snapshot) => post::deliver(snapshot, message),
            None => Tally::default(),
        };
        counters.record_post(&tally);
        tally.delivered as usize
    }

    /// The current snapshot, for a message received from Redis.
    pub(crate) fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.subscribers.load_full()
    }

    /// Publishes the writer's current state; returns the replaced snapshot (garbage).
    fn publish(&self, writer: &Writer) -> Option<Arc<Snapshot>> {
        self.subscribers.swap(writer.snapshot())
    }
}

/// The interning table and the gauges that go with it.
pub(crate) struct Registry {
    map: papaya::HashMap<Arc<str>, Arc<Topic>, foldhash::fast::RandomState>,
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
    #[inline]
    pub(crate) fn post<M: Send + Sync + 'static>(&self, name: &str, message: M) -> usize {
        let map = self.map.pin();
        match map.get(name) {
            Some(topic) => topic.post(message, &self.counters),
            None => {
                self.counters.record_post(&Tally::default());
                0
            }
        }
    }

    /// The live topic of `name`, if any.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.map.pin().get(name).cloned()
    }

    /// Runs `f` on the live topic of `name` (interning it if needed) with its writer locked.
    /// What `f` returns is dropped by the caller, after the lock (see `Garbage`).
    fn with_topic<R>(&self, name: &str, f: impl FnOnce(&Arc<Topic>, &mut Writer) -> R) -> R {
        loop {
            let topic = match self.get(name) {
                Some(topic) => topic,
                None => {
                    let name: Arc<str> = name.into();
                    let fresh = Arc::new(Topic {
                        name: name.clone(),
                        subscribers: ArcSwapOption::empty(),
                        writer: Mutex::default(),
                    });
                    let map = self.map.pin();
                    let topic = map.get_or_insert(name, fresh.clone()).clone();
                    if Arc::ptr_eq(&topic, &fresh) {
                        self.counters.channels.fetch_add(1, Relaxed);
                    }
                    topic
                }
            };
            let mut writer = topic.writer.lock();
            if !writer.forgotten {
                return f(&topic, &mut writer);
            }
        }
    }

    /// Registers `receiver` on `name` under `id`, owned by `owner` when given (S01). Gives
    /// the receiver back when the registration is inert: its owner is closed (S04), or the
    /// registry is (after shutdown); the caller drops it outside any lock.
    ///
    /// Lock order: the owner's lock, then the channel's, so that a registration is either
    /// recorded before [`Registry::close_owner`] takes the record, or refused. Everything else
    /// takes one lock at a time: `close_owner` takes the owner's, releases it, then each
    /// channel's; removals take the channel's, release it, then the owner's.
    pub(crate) fn register<M: Message>(
        &self,
        name: &str,
        id: u64,
        receiver: Receiver<M>,
        owner: Option<&Arc<Owner>>,
    ) -> Result<Arc<Topic>, Receiver<M>> {
        let Some(owner) = owner else {
            return self.subscribe(name, id, receiver, None);
        };
        let mut registrations = owner.registrations.lock();
        let Some(registrations) = &mut *registrations else {
            return Err(receiver);
        };
        let topic = self.subscribe(name, id, receiver, Some(Arc::downgrade(owner)))?;
        registrations.insert(id, Arc::downgrade(&topic));
        Ok(topic)
    }

    /// Closes `owner`: removes every registration made through it from its channel (S01).
    /// Idempotent; later registrations through it are inert (S04).
    pub(crate) fn close_owner(&self, owner: &Owner) {
        let registrations = owner.registrations.lock().take();
        for (id, topic) in registrations.into_iter().flatten() {
            if let Some(topic) = topic.upgrade() {
                self.unsubscribe(&topic, id, None);
            }
        }
    }

    /// Registers `receiver` on `name` under `id`. Gives it back when the registry is closed.
    fn subscribe<M: Message>(
        &self,
        name: &str,
        id: u64,
        receiver: Receiver<M>,
        owner: Option<Weak<Owner>>,
    ) -> Result<Arc<Topic>, Receiver<M>> {
        let registered = self.with_topic(name, move |topic, writer| {
            // Checked under the topic's lock: `close` sets the flag before it sweeps the topics,
            // so a registration either sees the flag or is swept.
            if self.is_closed() {
                return Err(receiver);
            }
            let kind = match receiver {
                Receiver::Listener(_) => Kind::Listener,
                Receiver::Stream(_) => Kind::Stream,
            };
            let group = writer.group_mut::<M>();
            group.streams += usize::from(kind == Kind::Stream);
            let at = group.trie.push(Entry { id, receiver });
            let message = TypeId::of::<M>();
            let record = Registered {
                slot: at,
                kind,
                message,
                owner,
            };
            writer.index.insert(id, record);
            if writer.index.len() == 1 {
                self.receivers_changed(topic, true);
            }
            self.gauge(kind).fetch_add(1, Relaxed);
            let garbage = Garbage {
                _snapshot: topic.publish(writer),
                _removed: Vec::new(),
            };
            Ok((garbage, topic.clone()))
        });
        // The garbage is dropped here, after `with_topic` released the lock.
        registered.map(|(_garbage, topic)| topic)
    }

    /// Removes registration `id` (of kind `kind`) from `topic`, and from its owning session's
    /// record; false when unknown.
    pub(crate) fn remove(&self, topic: &Topic, id: u64, kind: Kind) -> bool {
        let Some(record) = self.unsubscribe(topic, id, Some(kind)) else {
            return false;
        };
        if let Some(owner) = record.owner.and_then(|owner| owner.upgrade()) {
            owner.forget(id);
        }
        true
    }

    /// Removes registration `id` from `topic` (only if it is of kind `only`, when given);
    /// returns its record, `None` when unknown.
    fn unsubscribe(&self, topic: &Topic, id: u64, only: Option<Kind>) -> Option<Registered> {
        let mut writer = topic.writer.lock();
        let record = writer.index.get(&id)?;
        if only.is_some_and(|kind| kind != record.kind) {
            return None;
        }
        let record = writer.index.remove(&id)?;
        let Writer { groups, index, .. } = &mut *writer;
        let at = groups.iter().position(|g| g.message() == record.message)?;
        let removed = groups[at].remove(record.slot, record.kind);
        groups[at].repack_if_sparse(&mut |id, slot| {
            if let Some(record) = index.get_mut(&id) {
                record.slot = slot;
            }
        });
        if groups[at].len() == 0 {
            groups.swap_remove(at);
        }
        if index.is_empty() {
            self.receivers_changed(topic, false);
        }
        // Keep the index within a constant factor of its size (amortized O(1)).
        if index.capacity() > 4 * index.len() + 64 {
            index.shrink_to_fit();
        }
        self.gauge(record.kind).fetch_sub(1, Relaxed);
        let garbage = Garbage {
            _snapshot: topic.publish(&writer),
            _removed: removed.into_iter().collect(),
        };
        self.forget_if_unused(topic, &mut writer);
        drop(writer);
        drop(garbage);
        Some(record)
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
            .map(|(_, topic)| topic.clone())
            .collect();
        for topic in topics {
            let mut writer = topic.writer.lock();
            let groups: Box<dyn Any + Send> = Box::new(std::mem::take(&mut writer.groups));
            if !writer.index.is_empty() {
                self.receivers_changed(&topic, false);
            }
            for record in std::mem::take(&mut writer.index).into_values() {
                self.gauge(record.kind).fetch_sub(1, Relaxed);
            }
            let garbage = Garbage {
                _snapshot: topic.publish(&writer),
                _removed: vec![groups],
            };
            self.forget_if_unused(&topic, &mut writer);
            drop(writer);
            drop(garbage);
        }
    }

    /// Under `topic`'s lock: forgets the topic when nothing holds it any more (L13).
    fn forget_if_unused(&self, topic: &Topic, writer: &mut Writer) {
        if writer.index.is_empty() && writer.handles == 0 && !writer.forgotten {
            writer.forgotten = true;
            let map = self.map.pin();
            if let Ok(Some(_)) = map.remove_if(&*topic.name, |_, live| std::ptr::eq(&**live, topic))
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
