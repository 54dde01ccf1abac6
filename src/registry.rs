//! Interning channel names to slots, and forgetting unused ones.
//!
//! # Algorithm
//!
//! The registry maps a channel name to its [`Slot`] in a lock-free hash map (`papaya`), so a
//! post by name is one lock-free lookup followed by the slot's snapshot load: no lock on the
//! post path (L10). A [`Channel`](crate::Channel) handle holds its slot directly and skips the
//! lookup.
//!
//! A slot holds the published [`Snapshot`] (in an `ArcSwapOption`) and, behind a
//! `parking_lot` mutex, the writer's state: per message type a persistent trie of receivers
//! ([`crate::subscribers`]), an index from registration id to (type, trie slot, owner), and the
//! number of live handles. Every registration change takes that one mutex, edits one trie
//! (copying `O(log n)`), and publishes a new snapshot before returning: a post that starts
//! afterwards sees the change (L09).
//!
//! # Forgetting (L13)
//!
//! Posting interns nothing: a post to an unknown name is a map miss. A slot exists while it
//! has a listener, a stream or a live handle. The change that removes the last of them marks
//! the slot *forgotten* and removes it from the map, both under the slot's mutex; a
//! registration that found the slot in the map just before locks it, sees the mark, and looks
//! the name up again (finding nothing, it inserts a fresh slot). So a forgotten slot never
//! gains a subscriber, and at most one live slot per name is in the map.
//!
//! # Never drop user values under a lock
//!
//! Closures and streams are dropped when the last snapshot holding them is released, and a
//! closure's `Drop` may do anything, including closing a session, which takes registration
//! locks. So every operation hands the replaced root and the removed entries back to its caller,
//! who drops them after the mutex is released (`Garbage`).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Weak};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

use crate::global::Shared;
use crate::message::Message;
use crate::post::{self, Entry, Group, Receiver, Snapshot};
use crate::session::Owner;
use crate::stats::{Counters, Tally};
use crate::subscribers::Trie;

/// What a registration is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Listener,
    Stream,
}

/// The writer's record of one registration.
pub(crate) struct Record {
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
pub(crate) struct Slot {
    name: Arc<str>,
    /// The published snapshot: all the post path reads.
    subscribers: ArcSwapOption<Snapshot>,
    writer: Mutex<Writer>,
}

#[derive(Default)]
struct Writer {
    /// One per message type with at least one receiver.
    groups: Vec<Box<dyn ErasedGroup>>,
    index: HashMap<u64, Record>,
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
            wire: crate::global::deliver_wire::<M>,
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
        let groups: Box<[Group]> = self.groups.iter().filter_map(|g| g.publish()).collect();
        (!groups.is_empty()).then(|| Arc::new(Snapshot { groups }))
    }
}

impl Slot {
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
    map: papaya::HashMap<Arc<str>, Arc<Slot>, foldhash::fast::RandomState>,
    pub(crate) counters: Counters,
    /// Set by [`Registry::close`] (bus shutdown): registrations are inert afterwards.
    closed: AtomicBool,
    /// On a bus with Redis: told when a channel gets its first receiver or loses its last,
    /// under the channel's lock, so the changes reach Redis in the order they were made (G04).
    global: Option<Arc<Shared>>,
}

impl Registry {
    pub(crate) fn new(global: Option<Arc<Shared>>) -> Self {
        Registry {
            map: papaya::HashMap::with_hasher(foldhash::fast::RandomState::default()),
            counters: Counters::default(),
            closed: AtomicBool::new(false),
            global,
        }
    }

    /// Under `slot`'s lock: tells Redis's side that `slot` now has receivers or has none.
    fn receivers_changed(&self, slot: &Slot, some: bool) {
        if let Some(global) = &self.global {
            global.subscription_changed(&slot.name, some);
        }
    }

    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Acquire)
    }

    /// Posts by name: one lock-free map lookup, then [`Slot::post`]. Interns nothing (L13).
    #[inline]
    pub(crate) fn post<M: Send + Sync + 'static>(&self, name: &str, message: M) -> usize {
        let map = self.map.pin();
        match map.get(name) {
            Some(slot) => slot.post(message, &self.counters),
            None => {
                self.counters.record_post(&Tally::default());
                0
            }
        }
    }

    /// The live slot of `name`, if any.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Slot>> {
        self.map.pin().get(name).cloned()
    }

    /// Runs `f` on the live slot of `name` (interning it if needed) with its writer locked.
    /// What `f` returns is dropped by the caller, after the lock (see `Garbage`).
    fn with_slot<R>(&self, name: &str, f: impl FnOnce(&Arc<Slot>, &mut Writer) -> R) -> R {
        loop {
            let slot = match self.get(name) {
                Some(slot) => slot,
                None => {
                    let name: Arc<str> = name.into();
                    let fresh = Arc::new(Slot {
                        name: name.clone(),
                        subscribers: ArcSwapOption::empty(),
                        writer: Mutex::default(),
                    });
                    let map = self.map.pin();
                    let slot = map.get_or_insert(name, fresh.clone()).clone();
                    if Arc::ptr_eq(&slot, &fresh) {
                        self.counters.channels.fetch_add(1, Relaxed);
                    }
                    slot
                }
            };
            let mut writer = slot.writer.lock();
            if !writer.forgotten {
                return f(&slot, &mut writer);
            }
        }
    }

    /// Registers `receiver` on `name` under `id`. Gives it back when the bus is closed; the
    /// caller drops it outside any lock.
    pub(crate) fn subscribe<M: Message>(
        &self,
        name: &str,
        id: u64,
        receiver: Receiver<M>,
        owner: Option<Weak<Owner>>,
    ) -> Result<Arc<Slot>, Receiver<M>> {
        let registered = self.with_slot(name, move |slot, writer| {
            // Checked under the slot's lock: `close` sets the flag before it sweeps the slots,
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
            let record = Record {
                slot: at,
                kind,
                message,
                owner,
            };
            writer.index.insert(id, record);
            if writer.index.len() == 1 {
                self.receivers_changed(slot, true);
            }
            self.gauge(kind).fetch_add(1, Relaxed);
            let garbage = Garbage {
                _snapshot: slot.publish(writer),
                _removed: Vec::new(),
            };
            Ok((garbage, slot.clone()))
        });
        // The garbage is dropped here, after `with_slot` released the lock.
        registered.map(|(_garbage, slot)| slot)
    }

    /// Removes registration `id` (of kind `kind`) from `slot`, and from its owning session's
    /// record; false when unknown.
    pub(crate) fn remove(&self, slot: &Slot, id: u64, kind: Kind) -> bool {
        let Some(record) = self.unsubscribe(slot, id, Some(kind)) else {
            return false;
        };
        if let Some(owner) = record.owner.and_then(|owner| owner.upgrade()) {
            owner.forget(id);
        }
        true
    }

    /// Removes registration `id` from `slot` (only if it is of kind `only`, when given);
    /// returns its record, `None` when unknown.
    pub(crate) fn unsubscribe(&self, slot: &Slot, id: u64, only: Option<Kind>) -> Option<Record> {
        let mut writer = slot.writer.lock();
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
            self.receivers_changed(slot, false);
        }
        // Keep the index within a constant factor of its size (amortized O(1)).
        if index.capacity() > 4 * index.len() + 64 {
            index.shrink_to_fit();
        }
        self.gauge(record.kind).fetch_sub(1, Relaxed);
        let garbage = Garbage {
            _snapshot: slot.publish(&writer),
            _removed: removed.into_iter().collect(),
        };
        self.forget_if_unused(slot, &mut writer);
        drop(writer);
        drop(garbage);
        Some(record)
    }

    /// A live handle on `name`: the slot stays interned while it lives.
    pub(crate) fn hold(&self, name: &str) -> Arc<Slot> {
        self.with_slot(name, |slot, writer| {
            writer.handles += 1;
            slot.clone()
        })
    }

    /// Another live handle on an already held slot.
    pub(crate) fn hold_again(&self, slot: &Slot) {
        slot.writer.lock().handles += 1;
    }

    /// Releases a handle taken with [`Registry::hold`] or [`Registry::hold_again`].
    pub(crate) fn release(&self, slot: &Slot) {
        let mut writer = slot.writer.lock();
        writer.handles -= 1;
        self.forget_if_unused(slot, &mut writer);
    }

    /// Shuts the registry: registrations become inert and every receiver is removed (streams
    /// end once posts already running are done with them). Idempotent.
    pub(crate) fn close(&self) {
        self.closed.store(true, SeqCst);
        let slots: Vec<Arc<Slot>> = self
            .map
            .pin()
            .iter()
            .map(|(_, slot)| slot.clone())
            .collect();
        for slot in slots {
            let mut writer = slot.writer.lock();
            let groups: Box<dyn Any + Send> = Box::new(std::mem::take(&mut writer.groups));
            if !writer.index.is_empty() {
                self.receivers_changed(&slot, false);
            }
            for record in std::mem::take(&mut writer.index).into_values() {
                self.gauge(record.kind).fetch_sub(1, Relaxed);
            }
            let garbage = Garbage {
                _snapshot: slot.publish(&writer),
                _removed: vec![groups],
            };
            self.forget_if_unused(&slot, &mut writer);
            drop(writer);
            drop(garbage);
        }
    }

    /// Under `slot`'s lock: forgets the slot when nothing holds it any more (L13).
    fn forget_if_unused(&self, slot: &Slot, writer: &mut Writer) {
        if writer.index.is_empty() && writer.handles == 0 && !writer.forgotten {
            writer.forgotten = true;
            let map = self.map.pin();
            if let Ok(Some(_)) = map.remove_if(&*slot.name, |_, live| std::ptr::eq(&**live, slot)) {
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
