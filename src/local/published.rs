//! [`Published`]: a topic's current snapshot, which a post borrows without touching its
//! reference count, and which a registration replaces.
//!
//! This does what `arc_swap::ArcSwapOption::load` did for the post path, with the same
//! reclamation (the last holder frees, at once: S03), and, once a channel has settled, with
//! no locked instruction on the post's side: one thread-local read, a load, a store and a
//! load to borrow, a store and a load to give back.
//! It is a hazard-pointer scheme with an asymmetric fence ([`super::barrier`]): a thread's
//! borrows are a bitmask over a fixed array of slots, found without a search, and a value
//! replaced while a reader holds it is *retired*, then freed by whichever side lets go of it
//! last.
//!
//! # Algorithm
//!
//! The cell holds an `Arc<T>` as a raw pointer (`Arc::into_raw`), or null, and in the
//! pointer's low bit the value's *mode* ([`FENCED`], below). Every thread that borrows owns a
//! [`Record`] of [`SLOTS`] slots, each holding the address of one borrowed value or null;
//! records are never freed, and a thread's record is reused by a later thread once it ends.
//! Below, a reader's *fence* is a `SeqCst` fence for a fenced value and
//! [`barrier::light`] (no instruction) for a light one; a writer's is a `SeqCst` fence when
//! the value it replaced was fenced, and [`barrier::heavy`] (a `membarrier` call) when it was
//! light.
//!
//! - **Borrow** (reader): load the cell's pointer `p` (`Acquire`: `p`'s contents were written
//!   before it was published); store `p` in a free slot of this thread's record; the
//!   reader's fence; load the cell again. If it still holds `p` (and its mode), `p` is
//!   borrowed. If not, a writer replaced `p` in between: store null in the slot, reclaim
//!   (below: the writer may have retired `p` without seeing the slot) and start again.
//! - **Replace** (writer, one at a time per cell: the topic's lock): swap the new pointer in,
//!   fenced; the writer's fence; look at every slot of every record. If none holds the old
//!   pointer `o`, the cell's reference to `o` is the caller's. If one does, the writer marks
//!   each such slot *owed* (a word of the record beside the slot, [`Record::owed`]), takes a
//!   reference of its own for the caller and *retires* the cell's: it stores it in a free
//!   [`Entry`] of the global table of retired values, passes its fence again and reclaims
//!   (below; for a fenced value the reclaim's own `SeqCst` fence is that fence).
//! - **Give back** (reader, when the borrow ends): store null in the slot (`Release`); the
//!   reader's fence, in the mode it borrowed in; load the slot's owed word. If it is set,
//!   clear it and reclaim.
//! - **Reclaim** (a writer that retired, a reader whose slot was owed, or one whose borrow
//!   a replace raced): a `SeqCst` fence; then for each retired value, look at every slot, and if
//!   none holds it, claim its entry with a compare-and-swap and drop the retired reference.
//!
//! Why a value is never freed while borrowed: a reader's fence sits between its slot store
//! and its second load, a writer's between its swap and its reading of the slots. Two
//! `SeqCst` fences pair by themselves: one comes first in their single total order. The
//! kernel's barrier makes every running thread of the process pass a full fence during the
//! call (a thread that is not running passes the scheduler's), so it pairs with any reader,
//! light or fenced. Either way, the reader's store comes before the writer's reading, and
//! the writer sees the slot, or the reader's second load comes after the swap, sees it (or a
//! later pointer) and does not use `p`. A value a slot holds at the writer's look is
//! retired, not freed: only a scan that finds no slot holding it drops the retired
//! reference.
//!
//! Why a retired value is freed at once when its last borrow ends, with nothing else needed:
//! the reader's store of null, fence and load of its owed word pair the same way with the
//! writer's mark, fence and scan, so either the writer's scan sees the slot empty, or the
//! reader sees the mark and reclaims. A slot the writer did not see (a borrow whose second
//! load saw the swap) reclaims anyway. An owed mark left on a slot that was already given
//! back costs that slot's next give-back a needless reclaim, nothing else. Two readers that let go of the same value at once
//! both pass a `SeqCst` fence before they look, so at least one of them sees the other's
//! slot empty. So the value is released within the call of whichever thread lets go last:
//! once every post that held it has returned, it is gone (the tests of S03 and L09 check
//! exactly that). Any number of threads may reclaim at once: each release is claimed by
//! one compare-and-swap of its entry's state, which carries a generation, so a reclaim that
//! read an entry before it was released and filled again fails its claim. Two borrows of
//! the same value (a listener posting to its own channel) are two slots, both looked at.
//!
//! # Modes
//!
//! A `membarrier` call costs a replace about 0.4 µs on an idle machine, and far more where
//! other threads of the process are running (an interrupt to each of their CPUs: about 14 µs
//! a call on this project's 2-CPU VM with one other thread spinning). Paid on every
//! registration change, it doubled the registration churn bench; a `SeqCst` fence costs a
//! post about 5 ns. So each value has a mode, and the cheap side follows the traffic:
//!
//! - a replace publishes its new value *fenced*: its readers pass `SeqCst` fences, and the
//!   replace after it passes a `SeqCst` fence too, with no system call. Registrations in a
//!   row (a burst, a churn) cost what they did before this scheme;
//! - a reader that has borrowed [`FLIP_AFTER`] fenced values (a count per thread) makes the
//!   one it borrows *light* with a compare-and-swap of the cell's mode bit, same pointer;
//!   from then on its posts pass no fence. The replace that ends a light value pays the
//!   kernel's barrier.
//!
//! So a channel that is posted to more than it changes ends up light, and one that changes
//! more than it is posted to stays fenced; the barrier is paid at most once per
//! [`FLIP_AFTER`] fenced posts of a thread. A reader that borrowed a value fenced gives it
//! back fenced, and the writer's fences follow the mode it found, so every pair matches: a
//! value is only ever made light in place (never fenced again), and a writer that retires
//! it passes the fence of the mode it swapped out. Where the kernel has no barrier
//! ([`barrier::prepare`]), every borrow is fenced and no value is made light.
//!
//! The models below check these arguments with both fences as loom's `SeqCst` fence (loom
//! models fences exactly, and has no `membarrier`), with every fenced borrow flipping its
//! value. That a light borrow's fence is no instruction rests on the kernel's guarantee
//! (`barrier`'s docs) and is exercised by the stress test below.
//!
//! # Progress
//!
//! A borrow is lock-free, and wait-free while no writer replaces the value: it loads again
//! only when a registration replaced the snapshot between its two loads, that is, when
//! another thread made progress. Giving back is wait-free: when a writer marked its slot
//! owed, it also reclaims, a bounded look at every entry and slot that waits for no one. A
//! thread's first borrow, and a borrow nested more than [`SLOTS`] deep on one thread (a listener that posts, whose listener
//! posts, ...), take a record from the pool, allocating one if none is free: a lock-free scan
//! and one compare-and-swap, never a wait. A replace visits every slot of every record
//! (`SLOTS` per thread that ever borrowed at once), and makes a `membarrier` call when the
//! value it ends was light (two when a post held it then), and a value it retires takes a
//! free entry, or a new chunk of them: it is on the registration side.

#![allow(unsafe_code)] // The one module that needs it: see the SAFETY comments.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ptr;
use std::sync::Arc;

use super::barrier;
use crate::sync::{fence, model_static, AtomicBool, AtomicPtr, AtomicU64, Ordering::*};

/// Slots per record: borrows a thread can hold at once before it takes another record.
const SLOTS: usize = 8;

/// One thread's borrow slots. `repr(C)`: a borrow that took a whole record knows it by the
/// address of its first slot. Aligned to 128 bytes (two cache lines, as crossbeam pads), so
/// that two threads posting at once never write the same cache line (issue 11's scaling).
#[repr(C, align(128))]
struct Record {
    /// The addresses of the values this thread borrows (or null).
    slots: [AtomicPtr<()>; SLOTS],
    /// Per slot, [`OWED`] when a writer retired a value it saw in the slot: the slot's
    /// give-back reclaims. At a fixed distance from its slot ([`owed`]), and of the same
    /// type, so that the distance is the same in the models.
    owed: [AtomicPtr<()>; SLOTS],
    /// Whether a thread (or a deep borrow) owns this record.
    in_use: AtomicBool,
}

/// A list of leaked values that only grows, newest first: the borrow records, and the
/// chunks of retired entries. A node is fully written before the `Release`
/// compare-and-swap that links it, and never freed, so a reader follows the list with no
/// protection while other threads push.
struct GrowOnly<T: 'static> {
    head: AtomicPtr<Node<T>>,
}

/// `repr(C)`: the value is at the node's address (a record is known by its first slot).
#[repr(C)]
struct Node<T: 'static> {
    value: T,
    /// Set before the node is linked, then never changed.
    next: *const Node<T>,
}

// SAFETY: `next` is written once, before the node is published to other threads (by the
// `Release` compare-and-swap that links it), and only read afterwards.
unsafe impl<T: Sync> Sync for Node<T> {}

impl<T: Sync> GrowOnly<T> {
    #[cfg(not(evbus_loom))]
    const fn new() -> Self {
        GrowOnly {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    #[cfg(evbus_loom)]
    fn new() -> Self {
        GrowOnly {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Leaks `value` into a new node and links it.
    fn push(&self, value: T) -> &'static T {
        let node = Box::leak(Box::new(Node {
            value,
            next: ptr::null(),
        }));
        let mut head = self.head.load(Relaxed);
        loop {
            node.next = head;
            match self
                .head
                .compare_exchange_weak(head, node, Release, Relaxed)
            {
                Ok(_) => return &node.value,
                Err(current) => head = current,
            }
        }
    }

    /// Every value ever pushed, newest first.
    fn iter(&self) -> impl Iterator<Item = &'static T> {
        let head = self.head.load(Acquire).cast_const();
        // SAFETY: nodes are leaked (never freed), and a node is fully written before the
        // `Release` compare-and-swap that links it, which the `Acquire` load above (or the
        // node before it in the list) acquired.
        std::iter::successors(unsafe { head.as_ref() }, |node| unsafe {
            node.next.as_ref()
        })
        .map(|node| &node.value)
    }
}

model_static! {
    /// Every record ever made.
    static RECORDS: GrowOnly<Record> = GrowOnly::new();
}

/// A record for this thread (or one deep borrow): a free one of the pool, or a new one.
fn acquire() -> &'static Record {
    for record in RECORDS.iter() {
        if !record.in_use.load(Relaxed)
            && record
                .in_use
                .compare_exchange(false, true, Acquire, Relaxed)
                .is_ok()
        {
            return record;
        }
    }
    RECORDS.push(Record {
        slots: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
        owed: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
        in_use: AtomicBool::new(true),
    })
}

/// This thread's record, as an address: 0 before the first borrow, [`DEAD`] once the thread
/// is ending (its record went back to the pool), and which of its slots are in use: bit `i`
/// for slot `i`, all of them ([`FULL`]) while the thread has no record, so that one test
/// sends a borrow to the slow path. A thread-local without a destructor, so reading it is a
/// plain load.
#[derive(Clone, Copy)]
struct Local {
    record: usize,
    used: u32,
    /// Fenced borrows left before this thread makes the value it borrows light (see the
    /// module docs, Modes).
    countdown: u16,
}

/// Fenced borrows a thread makes before it makes one value light: see the module docs, Modes.
/// One in the models, so that they race every flip with the replaces.
const FLIP_AFTER: u16 = if cfg!(evbus_loom) { 1 } else { 256 };

/// [`Local::record`] of a thread whose record went back to the pool.
const DEAD: usize = 1;

/// [`Local::used`] with every slot in use.
const FULL: u32 = (1 << SLOTS) - 1;

/// What [`Borrowed::index`] holds for a borrow that took a record of the pool for itself.
const POOL: u32 = u32::MAX;

#[cfg(not(evbus_loom))]
thread_local! {
    static LOCAL: Cell<Local> = const {
        Cell::new(Local { record: 0, used: FULL, countdown: FLIP_AFTER })
    };
    /// Gives this thread's record back to the pool when the thread ends.
    static GIVE_BACK: GiveBack = const { GiveBack };
}
#[cfg(evbus_loom)]
loom::thread_local! {
    static LOCAL: Cell<Local> = Cell::new(Local {
        record: 0,
        used: FULL,
        countdown: FLIP_AFTER,
    });
    static GIVE_BACK: GiveBack = GiveBack;
}

/// See [`GIVE_BACK`].
struct GiveBack;

impl Drop for GiveBack {
    fn drop(&mut self) {
        let _ = LOCAL.try_with(|local| {
            let Local { record, used, .. } = local.get();
            debug_assert!(
                used == 0 || used == FULL,
                "a borrow outlived its thread's record"
            );
            local.set(Local {
                record: DEAD,
                used: FULL,
                countdown: FLIP_AFTER,
            });
            if record > DEAD {
                // SAFETY: a record's address, set by `slot` from a leaked record.
                unsafe { &*(record as *const Record) }
                    .in_use
                    .store(false, Release);
            }
        });
    }
}

/// A free slot for one borrow, and its index in this thread's record ([`POOL`] when
/// the borrow took a record of its own).
#[inline]
fn slot() -> (&'static AtomicPtr<()>, u32) {
    let (record, index) = LOCAL
        .try_with(|cell| {
            let local = cell.get();
            let index = local.used.trailing_ones();
            if (index as usize) < SLOTS {
                cell.set(Local {
                    used: local.used | 1 << index,
                    ..local
                });
            }
            (local.record, index)
        })
        .unwrap_or((0, u32::MAX));
    if (index as usize) < SLOTS {
        // SAFETY: with a slot free, `record` is a record's address (set by `slot_slow`, from a
        // leaked record).
        let record = unsafe { &*(record as *const Record) };
        return (&record.slots[index as usize], index);
    }
    slot_slow()
}

/// [`slot`] on a thread's first borrow, or when its record has no free slot, or as it ends.
#[cold]
fn slot_slow() -> (&'static AtomicPtr<()>, u32) {
    let first = matches!(LOCAL.try_with(|cell| cell.get().record == 0), Ok(true));
    if first && GIVE_BACK.try_with(|_| ()).is_ok() {
        let record = acquire();
        LOCAL.with(|cell| {
            cell.set(Local {
                record: record as *const Record as usize,
                used: 0,
                countdown: FLIP_AFTER,
            })
        });
        return slot();
    }
    (&acquire().slots[0], POOL)
}

/// The fence between a reader's store and its load: [`barrier::light`] for a light value,
/// else a `SeqCst` fence (see the module docs, Modes).
#[inline(always)]
fn reader_fence(fenced: bool) {
    if fenced {
        fence(SeqCst);
    } else {
        barrier::light();
    }
}

/// The fence between a writer's store and its reading of the slots: the kernel's barrier
/// when what it replaced was light, else a `SeqCst` fence.
#[inline]
fn writer_fence(fenced: bool) {
    if fenced {
        fence(SeqCst);
    } else {
        barrier::heavy();
    }
}

/// The low bit of the cell's pointer: its readers pass a `SeqCst` fence (see the module
/// docs, Modes). A value `Published` holds is aligned to at least 2 (checked in `new`).
const FENCED: usize = 1;

/// `value` without its mode. An integer cast (the address exposed, then taken back), where
/// `map_addr` costs a post two more instructions: it keeps the provenance by adding the
/// difference back.
#[inline(always)]
fn untag<T>(value: *mut T) -> *mut T {
    (value as usize & !FENCED) as *mut T
}

/// Makes this thread's count of fenced borrows go down, and at zero makes the value of
/// `cell` light if it still is `current` and the kernel has the barrier a light value's
/// replace needs (see the module docs, Modes).
#[inline(never)]
fn count_fenced<T>(cell: &AtomicPtr<T>, current: *mut T) {
    let due = LOCAL.try_with(|local| {
        let mut counted = local.get();
        counted.countdown -= 1;
        let due = counted.countdown == 0;
        if due {
            counted.countdown = FLIP_AFTER;
        }
        local.set(counted);
        due
    });
    if matches!(due, Ok(true)) && barrier::prepare() {
        // `Release`: a reader that acquires the light pointer from here acquires what the
        // writer published with it too (this is a read-modify-write of its release sequence).
        let _ = cell.compare_exchange(current, untag(current), Release, Relaxed);
    }
}

/// One `Arc<T>`, replaced by a writer and borrowed by readers (see the module docs).
pub(crate) struct Published<T> {
    /// From `Arc::into_raw`, with the value's mode in the low bit ([`FENCED`]), or null.
    current: AtomicPtr<T>,
    _owns: PhantomData<Arc<T>>,
}

// SAFETY: a `Published<T>` hands out `&T` to any thread and moves `Arc<T>`s between them:
// exactly `Arc<T>`'s requirements.
unsafe impl<T: Send + Sync> Send for Published<T> {}
// SAFETY: as for `Send`.
unsafe impl<T: Send + Sync> Sync for Published<T> {}

impl<T> Published<T> {
    pub(crate) fn new(value: Option<Arc<T>>) -> Self {
        // Decided before the cell exists, so before any writer of it looks the decision up
        // (in `barrier::heavy`) and any reader borrows it.
        barrier::prepare();
        const { assert!(std::mem::align_of::<T>() > FENCED) };
        Published {
            current: AtomicPtr::new(into_fenced(value)),
            _owns: PhantomData,
        }
    }

    /// Borrows the current value (see the module docs, Borrow).
    #[inline]
    pub(crate) fn borrow(&self) -> Borrowed<'_, T> {
        let current = self.current.load(Acquire);
        if current.is_null() {
            return Borrowed::none();
        }
        let (slot, index) = slot();
        let light = current.addr() & FENCED == 0;
        if light {
            // A light value, the fast path: the store, the light fence, the load, against a
            // replace's swap, `membarrier` and reading of the slots (see the module docs).
            slot.store(current.cast(), Relaxed);
            barrier::light();
            if self.current.load(Acquire) == current {
                return Borrowed {
                    value: current,
                    slot,
                    index,
                    fenced: false,
                    _cell: PhantomData,
                };
            }
        }
        self.borrow_slow(current, slot, index, light)
    }

    /// [`Published::borrow`] of a fenced value, or, when `raced`, of a light one whose
    /// borrow a replace raced: `slot` holds `current`, which may have been retired, and is
    /// given back first.
    #[inline(never)]
    fn borrow_slow(
        &self,
        mut current: *mut T,
        slot: &'static AtomicPtr<()>,
        index: u32,
        raced: bool,
    ) -> Borrowed<'_, T> {
        if raced {
            give_back_raced(slot);
            current = self.current.load(Acquire);
            if current.is_null() {
                free(slot, index);
                return Borrowed::none();
            }
        }
        loop {
            let fenced = current.addr() & FENCED != 0;
            // As in `borrow`, in the value's mode.
            slot.store(untag(current).cast(), Relaxed);
            reader_fence(fenced);
            let confirmed = self.current.load(Acquire);
            if confirmed == current {
                if fenced {
                    count_fenced(&self.current, current);
                }
                return Borrowed {
                    value: untag(current),
                    slot,
                    index,
                    fenced,
                    _cell: PhantomData,
                };
            }
            give_back_raced(slot);
            current = confirmed;
            if current.is_null() {
                free(slot, index);
                return Borrowed::none();
            }
        }
    }

    /// The current value, counted.
    pub(crate) fn load_full(&self) -> Option<Arc<T>> {
        let borrowed = self.borrow();
        let value = borrowed.get()?;
        // SAFETY: `value` came from `Arc::into_raw` and is alive while borrowed.
        unsafe {
            Arc::increment_strong_count(value);
            Some(Arc::from_raw(value))
        }
    }

    /// Whether the cell holds a value now.
    pub(crate) fn is_some(&self) -> bool {
        !self.current.load(Acquire).is_null()
    }

    /// Publishes `value` and returns the one it replaces, counted: the caller's to drop or
    /// keep; a value a reader still borrows has a reference more until that reader lets go
    /// (it was retired). Callers must not replace one cell from two threads at once (the
    /// topic's lock).
    pub(crate) fn swap(&self, value: Option<Arc<T>>) -> Option<Arc<T>> {
        let old = self.current.swap(into_fenced(value), AcqRel);
        if old.is_null() {
            return None;
        }
        let fenced = old.addr() & FENCED != 0;
        writer_fence(fenced);
        // SAFETY: the cell's reference, from `Arc::into_raw`, now taken out of the cell.
        let old = unsafe { Arc::from_raw(untag(old)) };
        if held(Arc::as_ptr(&old).cast(), true) {
            retire(old.clone(), fenced);
        }
        Some(old)
    }
}

impl<T> Drop for Published<T> {
    fn drop(&mut self) {
        // No borrow is left (a borrow borrows the cell), so no slot holds its value: the
        // cell's reference is dropped as it is, with no barrier.
        let old = untag(self.current.swap(ptr::null_mut(), Acquire));
        if !old.is_null() {
            // SAFETY: the cell's reference, from `Arc::into_raw`.
            drop(unsafe { Arc::from_raw(old) });
        }
    }
}

/// `value` as the cell holds it: from `Arc::into_raw`, fenced (a new value is: see the
/// module docs, Modes), or null.
fn into_fenced<T>(value: Option<Arc<T>>) -> *mut T {
    value.map_or(ptr::null_mut(), |value| {
        Arc::into_raw(value)
            .cast_mut()
            .map_addr(|address| address | FENCED)
    })
}

/// What [`Record::owed`] holds for a slot whose give-back must reclaim: any non-null
/// address.
const OWED: *mut () = ptr::dangling_mut();

/// The [`Record::owed`] word of `slot`.
#[inline(always)]
fn owed(slot: &AtomicPtr<()>) -> &AtomicPtr<()> {
    // SAFETY: every slot a borrow gives back is in a record's `slots` (`NO_SLOT` is never
    // given back), and its `owed` word is `SLOTS` words further on (`repr(C)`, same type).
    unsafe { &*(slot as *const AtomicPtr<()>).add(SLOTS) }
}

/// Gives back a borrow's slot (see the module docs, Give back).
#[inline]
fn give_back(slot: &AtomicPtr<()>, fenced: bool) {
    // `Release`: what the reader did with the value comes before a reclaim that sees the
    // slot empty, and frees it.
    slot.store(ptr::null_mut(), Release);
    reader_fence(fenced);
    let owed = owed(slot);
    if !owed.load(Relaxed).is_null() {
        owed.store(ptr::null_mut(), Relaxed);
        reclaim();
    }
}

/// Gives back the slot of a borrow that a replace raced (its second load saw another value):
/// the writer may have retired the value without seeing the slot, so this reclaims anyway.
#[cold]
fn give_back_raced(slot: &AtomicPtr<()>) {
    slot.store(ptr::null_mut(), Release);
    // `reclaim` passes a `SeqCst` fence first.
    reclaim();
}

/// Whether a slot of any record holds `value`; with `mark`, sets [`Record::owed`] of each
/// such slot. Called after a writer's fence, or a reclaim's: see the module docs.
fn held(value: *const (), mark: bool) -> bool {
    let mut held = false;
    for record in RECORDS.iter() {
        for (slot, owed) in record.slots.iter().zip(&record.owed) {
            if slot.load(Acquire).cast_const() == value {
                held = true;
                if !mark {
                    return true;
                }
                owed.store(OWED, Relaxed);
            }
        }
    }
    held
}

/// Entries per [`Chunk`] of the retired values.
const CHUNK: usize = if cfg!(evbus_loom) { 2 } else { 32 };

/// An entry's state: the low two bits, [`EMPTY`], [`FILLING`] or [`RETIRED`]; above them, a
/// generation that each release advances, so that a reclaim that read an entry before it was
/// released and filled again cannot release the new value.
const STATE: u64 = 0b11;
const EMPTY: u64 = 0;
const FILLING: u64 = 1;
const RETIRED: u64 = 2;

/// A replaced value that a reader still held: the cell's reference to it, released by the
/// first reclaim that finds no slot holding it.
struct Entry {
    state: AtomicU64,
    /// From `Arc::into_raw`, while [`RETIRED`].
    value: AtomicPtr<()>,
    /// Drops `value`'s reference: a [`release`] of the value's type, as a pointer.
    release: AtomicPtr<()>,
}

/// Entries for retired values, in chunks that are never freed: a list that only grows, to
/// the most values retired at once, so a reclaim reads them while writers fill and release
/// entries.
type Chunk = [Entry; CHUNK];

model_static! {
    /// Every chunk ever made.
    static CHUNKS: GrowOnly<Chunk> = GrowOnly::new();
}

/// Every entry of every chunk.
fn entries() -> impl Iterator<Item = &'static Entry> {
    CHUNKS.iter().flatten()
}

/// [`Entry::release`] of an `Arc<T>`.
///
/// # Safety
///
/// `value` is a counted reference from `Arc::<T>::into_raw`, which the caller gives up.
unsafe fn release<T>(value: *const ()) {
    // SAFETY: the caller's contract.
    unsafe { Arc::decrement_strong_count(value.cast::<T>()) }
}

/// Retires the cell's reference to `value`, which a slot held at the writer's look, then
/// reclaims (see the module docs, Replace). `fenced`: the mode the writer found the value in.
#[cold]
fn retire<T>(value: Arc<T>, fenced: bool) {
    let value: *mut () = Arc::into_raw(value).cast_mut().cast();
    let release = release::<T> as unsafe fn(*const ()) as *mut ();
    let filled = entries().any(|entry| {
        let state = entry.state.load(Relaxed);
        if state & STATE != EMPTY
            || entry
                .state
                .compare_exchange(state, state | FILLING, Acquire, Relaxed)
                .is_err()
        {
            return false;
        }
        entry.value.store(value, Relaxed);
        entry.release.store(release, Relaxed);
        entry.state.store(state | RETIRED, Release);
        true
    });
    if !filled {
        CHUNKS.push(std::array::from_fn(|i| Entry {
            state: AtomicU64::new(if i == 0 { RETIRED } else { EMPTY }),
            value: AtomicPtr::new(if i == 0 { value } else { ptr::null_mut() }),
            release: AtomicPtr::new(release),
        }));
    }
    // Against a reader's store of null, fence and load of its `owed` word (set by `held`
    // before this): a reader of the value borrowed it in the mode the writer found it in.
    // For a fenced value that is the `SeqCst` fence `reclaim` passes first.
    if !fenced {
        barrier::heavy();
    }
    reclaim();
}

/// Releases every retired value that no slot holds (see the module docs, Reclaim). Any
/// thread may run it at any time; each release is claimed by one compare-and-swap.
#[cold]
#[inline(never)]
fn reclaim() {
    // Against another reader's give-back of the same value: of two readers that let go at
    // once, at least one sees the other's slot empty.
    fence(SeqCst);
    for entry in entries() {
        let state = entry.state.load(Acquire);
        if state & STATE != RETIRED {
            continue;
        }
        let value = entry.value.load(Relaxed);
        let release = entry.release.load(Relaxed);
        let next = (state & !STATE) + STATE + 1;
        if held(value, false)
            || entry
                .state
                .compare_exchange(state, next, Relaxed, Relaxed)
                .is_err()
        {
            continue;
        }
        // SAFETY: `release` was stored with `value` by `retire`, as a `release::<T>` of the
        // value's type (the state's generation shows the entry was not filled again since),
        // and the compare-and-swap above gave this thread the entry's reference.
        unsafe {
            let release: unsafe fn(*const ()) = std::mem::transmute(release);
            release(value);
        }
    }
}

/// Frees the slot a borrow took.
#[inline]
fn free(slot: &'static AtomicPtr<()>, index: u32) {
    if index == POOL {
        // SAFETY: the slot is the first field of its record (`repr(C)`).
        let record = unsafe { &*(slot as *const AtomicPtr<()> as *const Record) };
        record.in_use.store(false, Release);
        return;
    }
    let _ = LOCAL.try_with(|cell| {
        let local = cell.get();
        cell.set(Local {
            used: local.used & !(1 << index),
            ..local
        })
    });
}

model_static! {
    /// The slot of an empty borrow, never used.
    static NO_SLOT: AtomicPtr<()> = AtomicPtr::new(ptr::null_mut());
}

/// A borrow of a [`Published`] value: the value stays alive until this is dropped.
pub(crate) struct Borrowed<'a, T> {
    /// Null when the cell was empty.
    value: *const T,
    /// The slot that holds `value` (unused when `value` is null).
    slot: &'static AtomicPtr<()>,
    /// The slot's index in this thread's record, or [`POOL`].
    index: u32,
    /// Whether the value was borrowed fenced (see the module docs, Modes): it is given back
    /// fenced too.
    fenced: bool,
    /// Borrows the cell, and is not `Send`: the slot is its thread's.
    _cell: PhantomData<(&'a Published<T>, *const ())>,
}

impl<T> Borrowed<'_, T> {
    /// The borrow of an empty cell.
    #[inline]
    fn none() -> Self {
        Borrowed {
            value: ptr::null(),
            slot: &NO_SLOT,
            index: POOL,
            fenced: true,
            _cell: PhantomData,
        }
    }

    /// The borrowed value; `None` when the cell was empty.
    #[inline]
    pub(crate) fn get(&self) -> Option<&T> {
        // SAFETY: a non-null `value` is alive while its slot holds it (see the module docs),
        // that is, until this borrow is dropped.
        unsafe { self.value.as_ref() }
    }
}

impl<T> Drop for Borrowed<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if !self.value.is_null() {
            // A value borrowed fenced is given back fenced.
            give_back(self.slot, self.fenced);
            free(self.slot, self.index);
        }
    }
}

#[cfg(all(test, not(evbus_loom)))]
mod tests {
    use super::*;

    use std::sync::atomic::AtomicUsize;

    /// A value that counts its drops, and that a reader can check is not dropped.
    struct Probe {
        /// `ALIVE` until dropped.
        state: AtomicUsize,
        drops: Arc<AtomicUsize>,
    }

    const ALIVE: usize = 0x5eed;

    impl Probe {
        fn new(drops: &Arc<AtomicUsize>) -> Arc<Probe> {
            Arc::new(Probe {
                state: AtomicUsize::new(ALIVE),
                drops: drops.clone(),
            })
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.state.store(0, SeqCst);
            self.drops.fetch_add(1, SeqCst);
        }
    }

    /// S03's mechanism: a replaced value lives exactly as long as its last borrow, and is freed
    /// by the drop of that borrow, with nothing else needed.
    #[test]
    fn a_replaced_value_is_freed_when_its_last_borrow_ends() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = Published::new(Some(Probe::new(&drops)));
        let outer = cell.borrow();
        let inner = cell.borrow();
        drop(cell.swap(Some(Probe::new(&drops))));
        assert_eq!(drops.load(SeqCst), 0, "freed while borrowed");
        drop(inner);
        assert_eq!(drops.load(SeqCst), 0, "freed while borrowed once more");
        assert_eq!(outer.get().unwrap().state.load(SeqCst), ALIVE);
        drop(outer);
        assert_eq!(drops.load(SeqCst), 1, "not freed by its last borrow");
        drop(cell);
        assert_eq!(drops.load(SeqCst), 2);
    }

    /// A replaced value is fenced; a thread that borrowed `FLIP_AFTER` fenced values makes
    /// the one it borrows light; the next replace makes the new value fenced again.
    #[test]
    fn a_value_posted_to_becomes_light_and_a_replace_fences_again() {
        let cell = Published::new(None);
        drop(cell.swap(Some(Arc::new(1u64))));
        let fenced = |cell: &Published<u64>| cell.current.load(SeqCst).addr() & FENCED != 0;
        assert!(fenced(&cell), "a new value is fenced");
        if !barrier::prepare() {
            // No kernel barrier: every borrow is fenced, and stays so.
            (0..2 * FLIP_AFTER).for_each(|_| drop(cell.borrow()));
            assert!(fenced(&cell));
            return;
        }
        // This thread's count may be anywhere from an earlier test: one round makes it flip.
        for _ in 0..FLIP_AFTER {
            assert_eq!(cell.borrow().get(), Some(&1));
        }
        assert!(!fenced(&cell), "borrowed {FLIP_AFTER} times, still fenced");
        let borrowed = cell.borrow();
        assert_eq!(borrowed.get(), Some(&1));
        assert_eq!(
            borrowed.fenced as usize, 0,
            "a light value is borrowed light"
        );
        let old = cell.swap(Some(Arc::new(2u64))).unwrap();
        assert_eq!(
            Arc::strong_count(&old),
            2,
            "a held value is retired, with its own reference"
        );
        assert!(fenced(&cell));
        drop(borrowed);
        assert_eq!(Arc::strong_count(&old), 1, "its last borrow released it");
    }

    /// Borrows nested deeper than a record's slots take records of the pool, and give them
    /// back; each is still protected from a replace.
    #[test]
    fn borrows_nest_past_a_records_slots() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = Published::new(Some(Probe::new(&drops)));
        let borrows: Vec<_> = (0..3 * SLOTS).map(|_| cell.borrow()).collect();
        drop(cell.swap(None));
        assert!(cell.borrow().get().is_none());
        assert_eq!(drops.load(SeqCst), 0);
        for borrow in &borrows {
            assert_eq!(borrow.get().unwrap().state.load(SeqCst), ALIVE);
        }
        drop(borrows);
        assert_eq!(drops.load(SeqCst), 1);
        let in_use = RECORDS.iter().filter(|r| r.in_use.load(SeqCst)).count();
        let held = std::thread::available_parallelism().map_or(64, |n| n.get() * 8);
        assert!(in_use <= held, "{in_use} records still in use");
    }

    /// Threads that end give their record back: a thousand threads in turn reuse a few.
    #[test]
    fn ended_threads_give_their_records_back() {
        let cell = Arc::new(Published::new(Some(Arc::new(7u64))));
        for _ in 0..1000 {
            let cell = cell.clone();
            std::thread::spawn(move || assert_eq!(cell.borrow().get(), Some(&7)))
                .join()
                .unwrap();
        }
        // Other tests run beside this one and take records too, but not a thousand.
        assert!(
            RECORDS.iter().count() < 200,
            "{} records",
            RECORDS.iter().count()
        );
    }

    /// Readers on several threads borrow while a writer replaces the value as fast as it can:
    /// no reader ever sees a dropped value, and every value is dropped once, by the last side
    /// to let go of it.
    #[test]
    fn readers_never_see_a_freed_value() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = Arc::new(Published::new(Some(Probe::new(&drops))));
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (cell, stop) = (cell.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut seen = 0u64;
                    // Until the writer is done, and then until this reader saw a value (the
                    // last one stays): a reader the scheduler starts late still reads.
                    while !stop.load(Relaxed) || seen == 0 {
                        let outer = cell.borrow();
                        let inner = cell.borrow();
                        for value in [outer.get(), inner.get()].into_iter().flatten() {
                            assert_eq!(value.state.load(SeqCst), ALIVE, "a freed value");
                            seen += 1;
                        }
                        if seen.is_multiple_of(3) {
                            drop(cell.load_full());
                        }
                    }
                    seen
                })
            })
            .collect();
        const SWAPS: usize = 20_000;
        // Every 500th replace waits for the readers to make the value light, so that light
        // borrows and the kernel's barrier race too (where the kernel has one).
        let light = barrier::prepare();
        let mut light_replaces = 0;
        for i in 0..SWAPS {
            if light && i.is_multiple_of(500) && cell.is_some() {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                while cell.current.load(Relaxed).addr() & FENCED != 0 {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no reader made it light"
                    );
                    std::thread::yield_now();
                }
                light_replaces += 1;
            }
            let next = (!i.is_multiple_of(7)).then(|| Probe::new(&drops));
            drop(cell.swap(next));
        }
        drop(cell.swap(Some(Probe::new(&drops))));
        stop.store(true, Relaxed);
        for reader in readers {
            assert!(reader.join().unwrap() > 0);
        }
        assert!(
            !light || light_replaces >= 30,
            "{light_replaces} light replaces"
        );
        drop(cell);
        let made = 2 + (0..SWAPS).filter(|i| !i.is_multiple_of(7)).count();
        assert_eq!(drops.load(SeqCst), made);
    }
}

/// Models of the borrow and replace protocol, run by
/// `RUSTFLAGS="--cfg evbus_loom" cargo test --lib loom_`. The reference count is std's `Arc`,
/// which loom does not see; the models check that no reader finds its value dropped (the
/// value's `Drop` clears a loom atomic the reader loads), that every value is dropped exactly
/// once, and loom checks the orderings of the slots and the cell.
#[cfg(all(test, evbus_loom))]
mod loom_tests {
    use super::*;

    use loom::sync::atomic::AtomicUsize;
    use loom::thread;

    struct Probe {
        alive: AtomicBool,
        drops: Arc<AtomicUsize>,
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.alive.store(false, SeqCst);
            self.drops.fetch_add(1, SeqCst);
        }
    }

    fn probe(drops: &Arc<AtomicUsize>) -> Arc<Probe> {
        Arc::new(Probe {
            alive: AtomicBool::new(true),
            drops: drops.clone(),
        })
    }

    /// A reader thread borrows `cell` `depth` times (nested) and checks that what it borrowed
    /// is alive, while this thread runs `replace`; returns once the reader is done.
    fn race(depth: usize, replace: impl Fn(&Published<Probe>, &Arc<AtomicUsize>)) -> Outcome {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = Arc::new(Published::new(Some(probe(&drops))));
        let reader = {
            let cell = cell.clone();
            thread::spawn(move || {
                let borrows: Vec<_> = (0..depth).map(|_| cell.borrow()).collect();
                for value in borrows.iter().filter_map(Borrowed::get) {
                    assert!(value.alive.load(SeqCst), "a borrowed value was dropped");
                }
            })
        };
        replace(&cell, &drops);
        reader.join().unwrap();
        (cell, drops)
    }

    /// The cell and its drop count, after a [`race`].
    type Outcome = (Arc<Published<Probe>>, Arc<AtomicUsize>);

    /// A reader borrows (twice, nested) while a writer replaces the value: what the reader
    /// borrowed stays alive until it lets go, and each value is dropped once.
    #[test]
    fn loom_published_keeps_a_borrowed_value_alive() {
        crate::sync::model(|| {
            let (cell, drops) = race(2, |cell, drops| drop(cell.swap(Some(probe(drops)))));
            assert_eq!(drops.load(SeqCst), 1);
            drop(cell);
            assert_eq!(drops.load(SeqCst), 2);
        });
    }

    /// Two readers let go of the value while a writer replaces it: whichever of the three
    /// is last, the replaced value is released by the time all three are done (S03: no
    /// later post needed), once, and never while borrowed. The readers' scans race each
    /// other's requests (the module docs, Reclaim).
    #[test]
    fn loom_published_releases_a_value_its_last_reader_lets_go() {
        crate::sync::model(|| {
            let drops = Arc::new(AtomicUsize::new(0));
            let cell = Arc::new(Published::new(Some(probe(&drops))));
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    let cell = cell.clone();
                    thread::spawn(move || {
                        let borrowed = cell.borrow();
                        if let Some(value) = borrowed.get() {
                            assert!(value.alive.load(SeqCst), "a borrowed value was dropped");
                        }
                    })
                })
                .collect();
            drop(cell.swap(None));
            for reader in readers {
                reader.join().unwrap();
            }
            assert_eq!(
                drops.load(SeqCst),
                1,
                "a replaced value outlived its last borrow"
            );
        });
    }

    /// Two replaces race with a borrow that may see the first, the second or the third value
    /// (the cell's first load and its confirming load can differ, and the borrow retries).
    #[test]
    fn loom_published_borrow_retries_past_a_replace() {
        crate::sync::model(|| {
            let (_cell, drops) = race(1, |cell, drops| {
                drop(cell.swap(Some(probe(drops))));
                drop(cell.swap(None));
            });
            assert_eq!(drops.load(SeqCst), 2);
        });
    }
}
