//! [`Published`]: a topic's current snapshot, which a post borrows without touching its
//! reference count, and which a registration replaces.
//!
//! This does what `arc_swap::ArcSwapOption::load` did for the post path, with the same
//! reclamation (the last holder frees, at once: S03), in about half the instructions: one
//! thread-local read, a load, a store, a fence and a load to borrow, a compare-and-swap to
//! give back.
//! It is a hazard-pointer scheme whose hazards become counted references when a writer
//! replaces what they protect (arc-swap's "debts"), specialised to one use: a thread's
//! borrows are a bitmask over a fixed array of slots, found without a search.
//!
//! # Algorithm
//!
//! The cell holds an `Arc<T>` as a raw pointer (`Arc::into_raw`), or null. Every thread that
//! borrows owns a [`Record`] of [`SLOTS`] slots, each holding the address of one borrowed
//! value or null; records are never freed, and a thread's record is reused by a later thread
//! once it ends.
//!
//! - **Borrow** (reader): load the cell's pointer `p` (`Acquire`: `p`'s contents were written
//!   before it was published); store `p` in a free slot of this thread's record; a `SeqCst`
//!   fence; load the cell again. If it still holds `p`, `p` is borrowed: the slot is a
//!   debt of one reference. If not, a writer replaced `p` in between: give the slot back (as
//!   below) and start again.
//! - **Replace** (writer, one at a time per cell: the topic's lock): swap the new pointer in;
//!   a `SeqCst` fence; then, for every slot of every record that holds the old pointer `o`, pay the
//!   debt: add one reference to `o`, then compare-and-swap the slot from `o` to null; if that
//!   fails, the reader gave the slot back first, and the reference is taken back. The old
//!   `Arc` is returned only after every slot was looked at.
//! - **Give back** (reader, when the borrow ends): compare-and-swap the slot from `p` to null
//!   (`Release`). If it fails, a writer paid the debt: the reader holds a counted reference
//!   and drops it, which frees `p` if it was the last.
//!
//! Why a value is never freed while borrowed: the reader's fence sits between its slot store
//! and its second load, the writer's between its swap and its reading of the slots, and the
//! two fences are `SeqCst`, so one comes first in their single total order. If the reader's
//! does, the writer's scan sees the slot store and pays the debt before it lets go of `o`; if
//! the writer's does, the reader's second load sees the swap (or a later pointer) and does not
//! use `p`. (Fences rather than `SeqCst` accesses: loom models fences exactly and treats
//! `SeqCst` accesses as weaker, so the models below check this argument; on x86-64 the fence
//! is one locked instruction, as the `SeqCst` store was.) The writer adds the reference before
//! it clears the slot, and a reader whose give-back fails has acquired that clearing, so a
//! reader's drop never comes before the reference it drops. Two borrows of the same value
//! (a listener posting to its own channel) are two slots and two debts.
//!
//! # Progress
//!
//! A borrow is lock-free, and wait-free while no writer replaces the value: it loads again
//! only when a registration replaced the snapshot between its two loads, that is, when
//! another thread made progress. Giving back is wait-free. A thread's first borrow, and a
//! borrow nested more than [`SLOTS`] deep on one thread (a listener that posts, whose
//! listener posts, ...), take a record from the pool, allocating one if none is free: a
//! lock-free scan and one compare-and-swap, never a wait. A replace visits every slot of every
//! record (`SLOTS` per thread that ever borrowed at once): it is on the registration side.

#![allow(unsafe_code)] // The one module that needs it: see the SAFETY comments.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ptr;
use std::sync::Arc;

use crate::sync::{fence, AtomicBool, AtomicPtr, Ordering::*};

/// Slots per record: borrows a thread can hold at once before it takes another record.
const SLOTS: usize = 8;

/// One thread's borrow slots. `repr(C)`: a borrow that took a whole record knows it by the
/// address of its first slot. Aligned to 128 bytes (two cache lines, as crossbeam pads), so
/// that two threads posting at once never write the same cache line (issue 11's scaling).
#[repr(C, align(128))]
struct Record {
    /// The addresses of the values this thread borrows (or null).
    slots: [AtomicPtr<()>; SLOTS],
    /// Whether a thread (or a deep borrow) owns this record.
    in_use: AtomicBool,
    /// The next record of the pool; set before the record is shared, then never changed.
    next: *const Record,
}

// SAFETY: `next` is written once, before the record is published to other threads (by the
// `Release` compare-and-swap that pushes it), and only read afterwards; the rest is atomics.
unsafe impl Sync for Record {}

#[cfg(not(evbus_loom))]
/// Every record ever made, newest first (a list that only grows).
static RECORDS: AtomicPtr<Record> = AtomicPtr::new(ptr::null_mut());
#[cfg(evbus_loom)]
loom::lazy_static! {
    static ref RECORDS: AtomicPtr<Record> = AtomicPtr::new(ptr::null_mut());
}

/// Every record ever made.
fn records() -> impl Iterator<Item = &'static Record> {
    let head = RECORDS.load(Acquire).cast_const();
    // SAFETY: records are leaked (never freed), and a record is fully written before the
    // `Release` compare-and-swap that links it, which the `Acquire` load above (or the
    // record before it in the list) acquired.
    std::iter::successors(unsafe { head.as_ref() }, |record| unsafe {
        record.next.as_ref()
    })
}

/// A record for this thread (or one deep borrow): a free one of the pool, or a new one.
fn acquire() -> &'static Record {
    for record in records() {
        if !record.in_use.load(Relaxed)
            && record
                .in_use
                .compare_exchange(false, true, Acquire, Relaxed)
                .is_ok()
        {
            return record;
        }
    }
    let record = Box::leak(Box::new(Record {
        slots: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
        in_use: AtomicBool::new(true),
        next: ptr::null(),
    }));
    let mut head = RECORDS.load(Relaxed);
    loop {
        record.next = head;
        match RECORDS.compare_exchange_weak(head, record, Release, Relaxed) {
            Ok(_) => return record,
            Err(current) => head = current,
        }
    }
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
}

/// [`Local::record`] of a thread whose record went back to the pool.
const DEAD: usize = 1;

/// [`Local::used`] with every slot in use.
const FULL: u32 = (1 << SLOTS) - 1;

/// What [`Borrowed::index`] holds for a borrow that took a record of the pool for itself.
const POOL: u32 = u32::MAX;

#[cfg(not(evbus_loom))]
thread_local! {
    static LOCAL: Cell<Local> = const { Cell::new(Local { record: 0, used: FULL }) };
    /// Gives this thread's record back to the pool when the thread ends.
    static GIVE_BACK: GiveBack = const { GiveBack };
}
#[cfg(evbus_loom)]
loom::thread_local! {
    static LOCAL: Cell<Local> = Cell::new(Local { record: 0, used: FULL });
    static GIVE_BACK: GiveBack = GiveBack;
}

/// See [`GIVE_BACK`].
struct GiveBack;

impl Drop for GiveBack {
    fn drop(&mut self) {
        let _ = LOCAL.try_with(|local| {
            let Local { record, used } = local.get();
            debug_assert!(
                used == 0 || used == FULL,
                "a borrow outlived its thread's record"
            );
            local.set(Local {
                record: DEAD,
                used: FULL,
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
            })
        });
        return slot();
    }
    (&acquire().slots[0], POOL)
}

/// One `Arc<T>`, replaced by a writer and borrowed by readers (see the module docs).
pub(crate) struct Published<T> {
    /// From `Arc::into_raw`, or null.
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
        Published {
            current: AtomicPtr::new(into_raw(value)),
            _owns: PhantomData,
        }
    }

    /// Borrows the current value (see the module docs, Borrow).
    #[inline]
    pub(crate) fn borrow(&self) -> Borrowed<'_, T> {
        let mut value = self.current.load(Acquire);
        if value.is_null() {
            return Borrowed::none();
        }
        let (slot, index) = slot();
        loop {
            // The store, then the fence, then the load: against a replace's swap, fence and
            // reading of the slot (see the module docs).
            slot.store(value.cast(), Relaxed);
            fence(SeqCst);
            let confirmed = self.current.load(Acquire);
            if confirmed == value {
                return Borrowed {
                    value,
                    slot,
                    index,
                    _cell: PhantomData,
                };
            }
            give_back(slot, value);
            value = confirmed;
            if value.is_null() {
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

    /// Publishes `value` and returns the one it replaces, with every borrow of it counted in
    /// its reference count. Callers must not replace one cell from two threads at once (the
    /// topic's lock).
    pub(crate) fn swap(&self, value: Option<Arc<T>>) -> Option<Arc<T>> {
        let old = self.current.swap(into_raw(value), AcqRel);
        if old.is_null() {
            return None;
        }
        fence(SeqCst);
        for record in records() {
            for slot in &record.slots {
                if slot.load(Acquire) == old.cast() {
                    // Add the reference first: a reader whose give-back fails drops it.
                    // SAFETY: `old` is alive: this function still owns the cell's reference.
                    unsafe {
                        Arc::increment_strong_count(old);
                    }
                    if slot
                        .compare_exchange(old.cast(), ptr::null_mut(), SeqCst, Relaxed)
                        .is_err()
                    {
                        // SAFETY: the reference added above; the cell's keeps `old` alive.
                        unsafe {
                            Arc::decrement_strong_count(old);
                        }
                    }
                }
            }
        }
        // SAFETY: the cell's reference, from `Arc::into_raw`, now taken out of the cell.
        Some(unsafe { Arc::from_raw(old) })
    }
}

impl<T> Drop for Published<T> {
    fn drop(&mut self) {
        // No borrow is left (a borrow borrows the cell), so no slot holds its value.
        drop(self.swap(None));
    }
}

fn into_raw<T>(value: Option<Arc<T>>) -> *mut T {
    value.map_or(ptr::null_mut(), |value| Arc::into_raw(value).cast_mut())
}

/// Gives back a slot holding `value` (see the module docs, Give back).
#[inline]
fn give_back<T>(slot: &AtomicPtr<()>, value: *const T) {
    if slot
        .compare_exchange(value.cast_mut().cast(), ptr::null_mut(), Release, Acquire)
        .is_err()
    {
        // SAFETY: a writer paid the debt (the failure acquired its clearing of the slot, which
        // came after it added the reference): this is that reference.
        unsafe { Arc::decrement_strong_count(value) };
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

/// The slot of an empty borrow, never used.
#[cfg(not(evbus_loom))]
static NO_SLOT: AtomicPtr<()> = AtomicPtr::new(ptr::null_mut());
#[cfg(evbus_loom)]
loom::lazy_static! {
    static ref NO_SLOT: AtomicPtr<()> = AtomicPtr::new(ptr::null_mut());
}

/// A borrow of a [`Published`] value: the value stays alive until this is dropped.
pub(crate) struct Borrowed<'a, T> {
    /// Null when the cell was empty.
    value: *const T,
    /// The slot that holds `value` (unused when `value` is null).
    slot: &'static AtomicPtr<()>,
    /// The slot's index in this thread's record, or [`POOL`].
    index: u32,
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
            _cell: PhantomData,
        }
    }

    /// The borrowed value; `None` when the cell was empty.
    #[inline]
    pub(crate) fn get(&self) -> Option<&T> {
        // SAFETY: a non-null `value` is alive while its slot's debt stands or was paid (see
        // the module docs), that is, until this borrow is dropped.
        unsafe { self.value.as_ref() }
    }
}

impl<T> Drop for Borrowed<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if !self.value.is_null() {
            give_back(self.slot, self.value);
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
        let in_use = records().filter(|r| r.in_use.load(SeqCst)).count();
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
        assert!(records().count() < 200, "{} records", records().count());
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
        for i in 0..SWAPS {
            let next = (!i.is_multiple_of(7)).then(|| Probe::new(&drops));
            drop(cell.swap(next));
        }
        drop(cell.swap(Some(Probe::new(&drops))));
        stop.store(true, Relaxed);
        for reader in readers {
            assert!(reader.join().unwrap() > 0);
        }
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
