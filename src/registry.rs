//! Interning channel names to slots, and forgetting unused ones.
//!
//! # Algorithm
//!
//! The registry maps a channel name to its [`Slot`] in a lock-free hash map (`papaya`), so a
//! post by name is one lock-free lookup followed by the slot's snapshot load: no lock on the
//! post path (L10). A [`Channel`](crate::Channel) handle holds its slot directly and skips the
//! lookup.
//!
//! A slot holds the published subscriber snapshot (an `ArcSwapOption` of the trie root of
//! [`crate::subscribers`]) and, behind a `parking_lot` mutex, the writer's state: the trie, an
//! index from registration id to trie slot and owner, and the number of live handles. Every
//! registration change takes that one mutex, edits the trie (copying `O(log n)`), and publishes
//! the new root before returning: a post that starts afterwards sees the change (L09).
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
//! who drops them after the mutex is released ([`Garbage`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::{Arc, Weak};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

use crate::post::{self, Payload, Subscriber};
use crate::session::Owner;
use crate::stats::{Counters, Tally};
use crate::subscribers::{Node, Trie};

/// What a registration is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Listener,
    Stream,
}

/// The writer's record of one registration.
pub(crate) struct Entry {
    slot: u64,
    kind: Kind,
    /// The session that owns it, if any (S01).
    pub(crate) owner: Option<Weak<Owner>>,
}

/// Values to drop once the registration lock is released: a replaced snapshot root and
/// removed subscribers (closures and stream sinks of the user's types).
#[must_use = "drop garbage only after the registration lock is released"]
#[derive(Default)]
pub(crate) struct Garbage {
    _root: Option<Arc<Node<Subscriber>>>,
    _removed: Vec<Subscriber>,
}

/// One interned channel.
pub(crate) struct Slot {
    name: Arc<str>,
    /// The published snapshot: all the post path reads.
    subscribers: ArcSwapOption<Node<Subscriber>>,
    writer: Mutex<Writer>,
}

#[derive(Default)]
struct Writer {
    trie: Trie<Subscriber>,
    index: HashMap<u64, Entry>,
    handles: usize,
    forgotten: bool,
}

impl Slot {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Delivers `message` to the current snapshot and counts the post; returns the number of
    /// receivers reached. The post path, see [`crate::post`].
    #[inline]
    pub(crate) fn post<M: 'static>(&self, message: M, counters: &Counters) -> usize {
        // `load` borrows the snapshot for the post (arc-swap's debt slots); a writer that
        // replaces it meanwhile pays that debt, and whichever side drops last frees the old
        // version, with the closures only it still held (S03).
        let snapshot = self.subscribers.load();
        let tally = match &*snapshot {
            Some(root) => post::deliver(root, &mut Payload::new(message)),
            None => Tally::default(),
        };
        counters.record_post(&tally);
        tally.delivered as usize
    }

    /// Publishes the writer's current trie; returns the replaced root (garbage).
    fn publish(&self, writer: &Writer) -> Option<Arc<Node<Subscriber>>> {
        self.subscribers.swap(writer.trie.root())
    }
}

/// The interning table and the gauges that go with it.
pub(crate) struct Registry {
    map: papaya::HashMap<Arc<str>, Arc<Slot>>,
    pub(crate) counters: Counters,
    /// Set by [`Registry::close`] (bus shutdown): registrations are inert afterwards.
    closed: AtomicBool,
}

impl Registry {
    pub(crate) fn new() -> Self {
        Registry {
            map: papaya::HashMap::new(),
            counters: Counters::default(),
            closed: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Acquire)
    }

    /// Posts by name: one lock-free map lookup, then [`Slot::post`]. Interns nothing (L13).
    #[inline]
    pub(crate) fn post<M: 'static>(&self, name: &str, message: M) -> usize {
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
    /// What `f` returns is dropped by the caller, after the lock (see [`Garbage`]).
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

    /// Registers `subscriber` on `name`. Gives it back when the bus is closed; the caller
    /// drops it outside any lock.
    pub(crate) fn subscribe(
        &self,
        name: &str,
        subscriber: Subscriber,
        kind: Kind,
        owner: Option<Weak<Owner>>,
    ) -> Result<Arc<Slot>, Subscriber> {
        let mut subscriber = Some(subscriber);
        let result = self.with_slot(name, |slot, writer| {
            // Checked under the slot's lock: `close` sets the flag before it sweeps the slots,
            // so a registration either sees the flag or is swept.
            if self.is_closed() {
                return (Garbage::default(), None);
            }
            let Some(subscriber) = subscriber.take() else {
                return (Garbage::default(), None);
            };
            let id = subscriber.id;
            let at = writer.trie.push(subscriber);
            writer.index.insert(
                id,
                Entry {
                    slot: at,
                    kind,
                    owner,
                },
            );
            self.gauge(kind).fetch_add(1, Relaxed);
            (
                Garbage {
                    _root: slot.publish(writer),
                    _removed: Vec::new(),
                },
                Some(slot.clone()),
            )
        });
        match (result, subscriber) {
            ((_garbage, Some(slot)), _) => Ok(slot),
            ((_garbage, None), Some(refused)) => Err(refused),
            ((_, None), None) => unreachable!("a subscriber is either registered or refused"),
        }
    }

    /// Removes registration `id` from `slot` (only if it is of kind `only`, when given);
    /// returns its entry, `None` when unknown.
    pub(crate) fn unsubscribe(&self, slot: &Slot, id: u64, only: Option<Kind>) -> Option<Entry> {
        let mut writer = slot.writer.lock();
        let entry = writer.index.get(&id)?;
        if only.is_some_and(|kind| kind != entry.kind) {
            return None;
        }
        let entry = writer.index.remove(&id)?;
        let removed = writer.trie.remove(entry.slot);
        if writer.trie.should_repack() {
            let Writer { trie, index, .. } = &mut *writer;
            trie.repack(|subscriber, at| {
                if let Some(entry) = index.get_mut(&subscriber.id) {
                    entry.slot = at;
                }
            });
        }
        self.gauge(entry.kind).fetch_sub(1, Relaxed);
        let garbage = Garbage {
            _root: slot.publish(&writer),
            _removed: removed.into_iter().collect(),
        };
        self.forget_if_unused(slot, &mut writer);
        drop(writer);
        drop(garbage);
        Some(entry)
    }

    /// Removes registration `id` of kind `kind` from channel `name`, and from its owning
    /// session's record; false when unknown.
    pub(crate) fn remove(&self, name: &str, id: u64, kind: Kind) -> bool {
        let Some(slot) = self.get(name) else {
            return false;
        };
        let Some(entry) = self.unsubscribe(&slot, id, Some(kind)) else {
            return false;
        };
        if let Some(owner) = entry.owner.and_then(|owner| owner.upgrade()) {
            owner.forget(id);
        }
        true
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

    /// Shuts the registry: registrations become inert and every subscriber is removed (streams
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
            let removed = writer.trie.take_all();
            for entry in std::mem::take(&mut writer.index).into_values() {
                self.gauge(entry.kind).fetch_sub(1, Relaxed);
            }
            let garbage = Garbage {
                _root: slot.publish(&writer),
                _removed: removed,
            };
            self.forget_if_unused(&slot, &mut writer);
            drop(writer);
            drop(garbage);
        }
    }

    /// Under `slot`'s lock: forgets the slot when nothing holds it any more (L13).
    fn forget_if_unused(&self, slot: &Slot, writer: &mut Writer) {
        if writer.trie.len() == 0 && writer.handles == 0 && !writer.forgotten {
            writer.forgotten = true;
            let map = self.map.pin();
            if let Ok(Some(_)) = map.remove_if(&*slot.name, |_, live| std::ptr::eq(&**live, slot)) {
                self.counters.channels.fetch_sub(1, Relaxed);
            }
        }
    }

    fn gauge(&self, kind: Kind) -> &std::sync::atomic::AtomicU64 {
        match kind {
            Kind::Listener => &self.counters.listeners,
            Kind::Stream => &self.counters.streams,
        }
    }
}
