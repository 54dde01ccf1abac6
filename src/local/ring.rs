//! `Ring`: one bounded ring of messages per stream group, read by a cursor per stream.
//!
//! A post writes its message once, into one slot, whatever the number of streams; each stream
//! reads it through its own cursor. This is tokio broadcast's shape, without its locks.
//!
//! # Positions and members
//!
//! `tail` packs the next position (40 bits, high) and the number of *members* (low bits): the
//! streams that read every message from here on. A post claims a position and learns how
//! many streams it is for with one `fetch_add`, so the two agree exactly; a stream joins or
//! leaves with a compare-and-swap that changes the count at one position, which is where it
//! starts or ends. A stream reads exactly the positions from its start to its end, so every
//! message is, for every stream it was for, either yielded or counted missed (L11), with no
//! guess about which streams a message was meant for.
//!
//! # Slots
//!
//! A slot's `state` packs the position it holds (its *stamp*, 40 bits, high) and, for a
//! written message, how many members have not taken it yet (`remaining`). The writer makes
//! the message's `Arc` with one reference per member and stores it in `value`; a member takes
//! one reference by decrementing `remaining` with a compare-and-swap, which also checks that
//! the slot still holds its position. So a reader never touches a count of an `Arc` it does
//! not own: whoever replaces the slot's message owns its remaining references and drops them,
//! counting each as a message dropped for a stream (L11).
//!
//! Writing position `p` takes the slot from whatever older position it holds (a CAS to
//! `BUSY` with stamp `p`), drops that message's remaining references, stores the new message,
//! and publishes it (a CAS to `remaining = members`). No writer waits for another:
//!
//! - one that finds the slot already at a later position (it was overtaken while preempted
//!   before its CAS) drops its message: the readers of `p` see the later stamp and count `p`
//!   missed;
//! - one that finds an older writer still `BUSY` in the slot marks it *superseded* (in the
//!   low bits, how many laps ahead) and drops its message; the older writer, when it
//!   publishes, finds the mark, drops its own message too and leaves the slot `EMPTY` at the
//!   latest superseded position, so the readers of every position in between count it missed.
//!
//! When the capacity is not a power of two, the ring is the next power of two, and a write at
//! `p` also evicts position `p - capacity` (takes its remaining references): a stream holds at
//! most `capacity` messages either way, and a dropped message is counted when it drops.
//!
//! # Waiting
//!
//! A reader that finds its position not yet written sets `WAITING` in the slot with a CAS.
//! The writer that publishes the slot, or leaves it `EMPTY`, does so with a CAS on the same
//! word and sees the flag: it returns `wake`, and its caller wakes the waiting streams. There
//! is no other handshake, so no lost wake-up and no fence.
//!
//! # Progress
//!
//! A write is lock-free: every CAS it retries failed because another thread changed the slot,
//! that is, made progress; it never waits for a preempted thread. It makes one `Arc` and
//! `members - 1` count increments on it. A read is lock-free likewise; a reader whose
//! position's writer is preempted mid-write finds it `BUSY` and waits (returns nothing yet),
//! as any consumer waits for its producer.

#![allow(unsafe_code)]

use std::ptr;
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicPtr, AtomicU64, Ordering::*};

/// Bits below a position in `tail` and in a slot's `state`.
const LOW: u32 = 24;
/// A position: 40 bits, wrapping.
pub(crate) const POSITION: u64 = (1 << (64 - LOW)) - 1;
/// `tail`'s low bits: the members.
const MEMBERS: u64 = (1 << LOW) - 1;
/// A state's low bits: remaining references (written), or superseded laps (`BUSY`).
const COUNT: u64 = (1 << 21) - 1;
const BUSY: u64 = 1 << 21;
const EMPTY: u64 = 1 << 22;
const WAITING: u64 = 1 << 23;

/// The most members a ring takes.
pub(crate) const MAX_MEMBERS: u64 = COUNT;

/// `a`, or `end` if `a` is past it.
#[inline(always)]
pub(crate) fn before(a: u64, end: u64) -> u64 {
    if distance(a, end) > 0 {
        end
    } else {
        a
    }
}

/// `a - b` for positions, signed: positions wrap at 40 bits.
#[inline(always)]
pub(crate) fn distance(a: u64, b: u64) -> i64 {
    ((a.wrapping_sub(b) << LOW) as i64) >> LOW
}

#[inline(always)]
fn stamp(state: u64) -> u64 {
    state >> LOW
}

struct Slot<M> {
    state: AtomicU64,
    /// From `Arc::into_raw`; holds `remaining` references while the state is written.
    value: AtomicPtr<M>,
}

/// What a write did: how many streams it was for, how many messages it dropped for streams
/// (L11), and whether a stream waits to be woken.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) members: u64,
    pub(crate) dropped: u64,
    pub(crate) wake: bool,
}

/// What a member finds at a position ([`Ring::peek`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Peek {
    /// A message to [`claim`](Ring::claim), in a slot last seen in `state`.
    Ready { state: u64 },
    /// Not written yet.
    NotYet,
    /// Dropped, and so is everything before `to`: the next position to read.
    Dropped { to: u64 },
}

pub(crate) struct Ring<M> {
    tail: CachePadded<AtomicU64>,
    /// `mask + 1` slots, allocated by the first write that has a member.
    slots: AtomicPtr<Slot<M>>,
    mask: u64,
    shift: u32,
    capacity: u64,
}

// SAFETY: the ring hands `Arc<M>`s to other threads and drops them on any thread: `M: Send +
// Sync`, as for `Arc<M>`.
unsafe impl<M: Send + Sync> Send for Ring<M> {}
// SAFETY: as for `Send`; shared, the ring is its atomics.
unsafe impl<M: Send + Sync> Sync for Ring<M> {}

impl<M> Ring<M> {
    /// A ring whose streams each hold at most `capacity` messages (`capacity >= 1`).
    pub(crate) fn new(capacity: usize) -> Self {
        let size = capacity.max(1).next_power_of_two() as u64;
        Ring {
            tail: CachePadded::new(AtomicU64::new(0)),
            slots: AtomicPtr::new(ptr::null_mut()),
            mask: size - 1,
            shift: size.trailing_zeros(),
            capacity: capacity.max(1) as u64,
        }
    }

    /// Adds a member: the position from which it reads every message. `None` at
    /// [`MAX_MEMBERS`].
    pub(crate) fn join(&self) -> Option<u64> {
        let mut tail = self.tail.load(Relaxed);
        loop {
            if tail & MEMBERS >= MAX_MEMBERS {
                return None;
            }
            match self
                .tail
                .compare_exchange_weak(tail, tail + 1, AcqRel, Relaxed)
            {
                Ok(_) => return Some(tail >> LOW),
                Err(now) => tail = now,
            }
        }
    }

    /// Removes a member: the position where it ends (its cursor reads up to it).
    pub(crate) fn leave(&self) -> u64 {
        self.tail.fetch_sub(1, AcqRel) >> LOW
    }

    /// The slots, allocating them if no write has yet.
    fn slots(&self) -> &[Slot<M>] {
        let mut slots = self.slots.load(Acquire);
        if slots.is_null() {
            let size = self.mask + 1;
            let fresh: Box<[Slot<M>]> = (0..size)
                .map(|i| Slot {
                    // Stamped one lap before the first: nothing written yet.
                    state: AtomicU64::new((i.wrapping_sub(size) & POSITION) << LOW | EMPTY),
                    value: AtomicPtr::new(ptr::null_mut()),
                })
                .collect();
            let fresh = Box::into_raw(fresh).cast::<Slot<M>>();
            slots = match self
                .slots
                .compare_exchange(ptr::null_mut(), fresh, AcqRel, Acquire)
            {
                Ok(_) => fresh,
                Err(installed) => {
                    // SAFETY: ours, never shared.
                    drop(unsafe { self.boxed(fresh) });
                    installed
                }
            };
        }
        // SAFETY: installed slots live as long as the ring, `mask + 1` of them.
        unsafe { std::slice::from_raw_parts(slots, self.mask as usize + 1) }
    }

    /// The slots if a write allocated them.
    fn written_slots(&self) -> Option<&[Slot<M>]> {
        let slots = self.slots.load(Acquire);
        // SAFETY: as in `slots`.
        (!slots.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(slots, self.mask as usize + 1) })
    }

    /// # Safety
    ///
    /// `slots` is an allocation of this ring's slots that no one else uses.
    unsafe fn boxed(&self, slots: *mut Slot<M>) -> Box<[Slot<M>]> {
        let slice = ptr::slice_from_raw_parts_mut(slots, self.mask as usize + 1);
        // SAFETY: the caller's contract; made by `Box::into_raw` of a boxed slice this long.
        unsafe { Box::from_raw(slice) }
    }

    /// Writes `message` at the next position, for the members there (L03). Takes one
    /// reference; makes one per member.
    pub(crate) fn write(&self, message: Arc<M>) -> Written {
        // The position and its members, in one read-modify-write: wait-free.
        let tail = self.tail.fetch_add(1 << LOW, AcqRel);
        let (position, members) = (tail >> LOW, tail & MEMBERS);
        if members == 0 {
            return Written::default();
        }
        let slots = self.slots();
        let mut written = Written {
            members,
            dropped: 0,
            wake: false,
        };
        if self.capacity <= self.mask {
            let evicted = position.wrapping_sub(self.capacity) & POSITION;
            written.dropped += self.evict(&slots[(evicted & self.mask) as usize], evicted);
        }
        let slot = &slots[(position & self.mask) as usize];
        let mut state = slot.state.load(Acquire);
        loop {
            let ahead = distance(stamp(state), position);
            if ahead > 0 {
                // Overtaken: a later position holds the slot; ours is lost for its members.
                written.dropped += members;
                return written;
            }
            if state & BUSY != 0 {
                // An older writer is mid-write: mark it superseded by `laps`; both are lost.
                let laps = (-ahead) as u64 >> self.shift;
                let marked = (state & !COUNT) | (state & COUNT).max(laps).min(COUNT);
                match slot
                    .state
                    .compare_exchange_weak(state, marked, AcqRel, Acquire)
                {
                    Ok(_) => {
                        written.dropped += members;
                        return written;
                    }
                    Err(now) => state = now,
                }
                continue;
            }
            match replace(slot, state, position << LOW | BUSY | (state & WAITING)) {
                Ok(dropped) => {
                    written.dropped += dropped;
                    break;
                }
                Err(now) => state = now,
            }
        }
        let message = Arc::into_raw(message);
        for _ in 1..members {
            // SAFETY: `message` holds a reference, not yet shared.
            unsafe { Arc::increment_strong_count(message) };
        }
        slot.value.store(message.cast_mut(), Release);
        let mut state = position << LOW | BUSY;
        loop {
            let superseded = state & COUNT;
            let done = if superseded == 0 {
                position << LOW | members
            } else {
                (position.wrapping_add(superseded << self.shift) & POSITION) << LOW | EMPTY
            };
            match slot
                .state
                .compare_exchange_weak(state, done, AcqRel, Acquire)
            {
                Ok(_) => {
                    written.wake = state & WAITING != 0;
                    if superseded != 0 {
                        // SAFETY: the slot never published them: ours.
                        unsafe { release(message, members) };
                        written.dropped += members;
                    }
                    return written;
                }
                Err(now) => state = now,
            }
        }
    }

    /// Takes position `at`'s remaining references from `slot`, if it still holds it written:
    /// how many it took.
    fn evict(&self, slot: &Slot<M>, at: u64) -> u64 {
        let mut state = slot.state.load(Acquire);
        loop {
            if stamp(state) != at || state & (BUSY | EMPTY) != 0 || state & COUNT == 0 {
                return 0;
            }
            match replace(slot, state, at << LOW | EMPTY | (state & WAITING)) {
                Ok(dropped) => return dropped,
                Err(now) => state = now,
            }
        }
    }

    /// What a member finds at position `at`.
    pub(crate) fn peek(&self, at: u64) -> Peek {
        let Some(slots) = self.written_slots() else {
            return Peek::NotYet;
        };
        let state = slots[(at & self.mask) as usize].state.load(Acquire);
        let ahead = distance(stamp(state), at);
        if ahead > 0 {
            // Overwritten, evicted or lost; so is everything older than the newest
            // `capacity` positions.
            let newest = self.tail.load(Acquire) >> LOW;
            let oldest = newest.wrapping_sub(self.capacity) & POSITION;
            let to = if distance(oldest, at) > 0 {
                oldest
            } else {
                (at + 1) & POSITION
            };
            return Peek::Dropped { to };
        }
        if ahead < 0 || state & BUSY != 0 {
            return Peek::NotYet;
        }
        if state & EMPTY != 0 {
            return Peek::Dropped {
                to: (at + 1) & POSITION,
            };
        }
        Peek::Ready { state }
    }

    /// Takes a member's reference to the message at `at`; `None` when it was dropped
    /// meanwhile. The caller is a member of `at` that has not taken it, and no one else
    /// takes it for that member.
    /// `state` is what [`peek`](Ring::peek) saw: the CAS expects it first.
    pub(crate) fn claim(&self, at: u64, mut state: u64) -> Option<Arc<M>> {
        let slot = &self.written_slots()?[(at & self.mask) as usize];
        loop {
            if stamp(state) != at || state & (BUSY | EMPTY) != 0 || state & COUNT == 0 {
                return None;
            }
            let value = slot.value.load(Acquire);
            match slot
                .state
                .compare_exchange_weak(state, state - 1, AcqRel, Acquire)
            {
                // SAFETY: the CAS took one of the references the slot held for this
                // position's members, to `value`, the slot's value for it (the CAS checked the
                // state that the value's store happened before).
                Ok(_) => return Some(unsafe { Arc::from_raw(value) }),
                Err(now) => state = now,
            }
        }
    }

    /// Asks to be woken when position `at` is written: false when it already is, or was
    /// dropped (peek again instead of sleeping).
    pub(crate) fn wait(&self, at: u64) -> bool {
        let slots = self.slots();
        let slot = &slots[(at & self.mask) as usize];
        let mut state = slot.state.load(Acquire);
        loop {
            let ahead = distance(stamp(state), at);
            if ahead > 0 || (ahead == 0 && state & BUSY == 0) {
                return false;
            }
            if state & WAITING != 0 {
                return true;
            }
            match slot
                .state
                .compare_exchange_weak(state, state | WAITING, AcqRel, Acquire)
            {
                Ok(_) => return true,
                Err(now) => state = now,
            }
        }
    }

    /// Messages a member at `at` will find dropped, beyond those behind it: those older than
    /// the newest `capacity` before `end` (the tail when `None`).
    pub(crate) fn behind(&self, at: u64, end: Option<u64>) -> u64 {
        let newest = end.unwrap_or(self.tail.load(Acquire) >> LOW);
        (distance(newest, at).max(0) as u64).saturating_sub(self.capacity)
    }
}

impl<M> Drop for Ring<M> {
    fn drop(&mut self) {
        let slots = self.slots.load(Acquire);
        if slots.is_null() {
            return;
        }
        // SAFETY: installed by `slots`, and no one else holds the ring.
        let slots = unsafe { self.boxed(slots) };
        for slot in slots.iter() {
            let state = slot.state.load(Relaxed);
            if state & (BUSY | EMPTY) == 0 {
                // SAFETY: the slot's remaining references.
                unsafe { release(slot.value.load(Relaxed), state & COUNT) };
            }
        }
    }
}

/// Replaces `slot`'s `state` (not `BUSY`) with `next`, and drops the references to the slot's
/// message that no member took: how many, or the state found instead of `state`.
fn replace<M>(slot: &Slot<M>, state: u64, next: u64) -> Result<u64, u64> {
    // Read before the CAS, which checks that it is the value of the state it replaces.
    let value = slot.value.load(Acquire);
    slot.state
        .compare_exchange_weak(state, next, AcqRel, Acquire)
        .map(|_| {
            let remaining = if state & EMPTY != 0 { 0 } else { state & COUNT };
            // SAFETY: the CAS took the slot's remaining references to `value`.
            unsafe { release(value, remaining) };
            remaining
        })
}

/// Drops `count` references to `value`.
///
/// # Safety
///
/// The caller owns `count` references to `value`, from `Arc::into_raw`.
unsafe fn release<M>(value: *const M, count: u64) {
    for _ in 0..count {
        // SAFETY: the caller's contract.
        drop(unsafe { Arc::from_raw(value) });
    }
}

/// A member's reads, as a stream makes them, for the tests.
#[cfg(test)]
mod reader {
    use super::*;

    pub(super) struct Reader {
        pub(super) at: u64,
        pub(super) missed: u64,
    }

    #[derive(Debug)]
    pub(super) enum Step<M> {
        Message(Arc<M>),
        NotYet,
        End,
    }

    impl Reader {
        pub(super) fn join<M>(ring: &Ring<M>) -> Reader {
            Reader {
                at: ring.join().expect("room for a member"),
                missed: 0,
            }
        }

        pub(super) fn next<M>(&mut self, ring: &Ring<M>, end: Option<u64>) -> Step<M> {
            loop {
                if end == Some(self.at) {
                    return Step::End;
                }
                match ring.peek(self.at) {
                    Peek::NotYet => return Step::NotYet,
                    Peek::Dropped { to } => {
                        let to = end.map_or(to, |end| before(to, end));
                        self.missed += distance(to, self.at) as u64;
                        self.at = to;
                    }
                    Peek::Ready { state } => {
                        let at = self.at;
                        self.at = (at + 1) & POSITION;
                        match ring.claim(at, state) {
                            Some(message) => return Step::Message(message),
                            None => self.missed += 1,
                        }
                    }
                }
            }
        }

        pub(super) fn drain<M: Copy>(&mut self, ring: &Ring<M>, end: Option<u64>) -> Vec<M> {
            let mut out = Vec::new();
            while let Step::Message(m) = self.next(ring, end) {
                out.push(*m);
            }
            out
        }
    }
}

#[cfg(all(test, not(evbus_loom)))]
mod tests {
    use super::reader::{Reader, Step};
    use super::*;

    #[test]
    fn a_stream_reads_what_was_written_after_it_joined() {
        let ring = Ring::new(4);
        assert_eq!(ring.write(Arc::new(0)).members, 0);
        let mut a = Reader::join(&ring);
        assert_eq!(ring.write(Arc::new(1)).members, 1);
        let mut b = Reader::join(&ring);
        assert_eq!(ring.write(Arc::new(2)).members, 2);
        assert_eq!(a.drain(&ring, None), [1, 2]);
        assert_eq!(b.drain(&ring, None), [2]);
        let end = ring.leave();
        ring.write(Arc::new(3));
        assert!(matches!(b.next(&ring, Some(end)), Step::End));
        assert_eq!(a.drain(&ring, None), [3]);
    }

    #[test]
    fn a_full_stream_drops_its_oldest_and_counts_it() {
        for capacity in [3, 4] {
            let ring = Ring::new(capacity);
            let mut reader = Reader::join(&ring);
            let dropped: u64 = (0..10).map(|m| ring.write(Arc::new(m)).dropped).sum();
            assert_eq!(dropped, 10 - capacity as u64, "capacity {capacity}");
            assert_eq!(ring.behind(reader.at, None), 10 - capacity as u64);
            let yielded = reader.drain(&ring, None);
            assert_eq!(yielded, (10 - capacity as u32..10).collect::<Vec<_>>());
            assert_eq!(reader.missed, 10 - capacity as u64);
        }
    }

    #[test]
    fn every_reference_is_released() {
        let marker = Arc::new(());
        let ring = Ring::new(3);
        let mut readers: Vec<_> = (0..3).map(|_| Reader::join(&ring)).collect();
        for _ in 0..7 {
            ring.write(Arc::new(marker.clone()));
        }
        let _ = readers[0].next(&ring, None);
        drop(ring);
        assert_eq!(Arc::strong_count(&marker), 1);
    }
}

/// Models of the ring, run by `RUSTFLAGS="--cfg evbus_loom" cargo test --lib loom_`.
#[cfg(all(test, evbus_loom))]
mod loom_tests {
    use super::reader::{Reader, Step};
    use super::*;

    use loom::thread;

    /// Counts the messages alive, so a model sees a leak or a double free.
    struct Counted(u32, Arc<loom::sync::atomic::AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.fetch_sub(1, SeqCst);
        }
    }

    /// Two writers race into a ring of `capacity` slots while a member reads: every position
    /// is yielded or missed exactly once, what the writers count dropped is what the reader
    /// missed, in order per writer, and nothing leaks.
    fn race(capacity: usize, posts: u32) {
        crate::sync::model(move || {
            let alive = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
            let ring = Arc::new(Ring::new(capacity));
            let mut reader = Reader::join(&ring);
            let writers: Vec<_> = (0..2)
                .map(|w| {
                    let (ring, alive) = (ring.clone(), alive.clone());
                    thread::spawn(move || {
                        let mut dropped = 0;
                        for i in 0..posts {
                            alive.fetch_add(1, SeqCst);
                            let message = Arc::new(Counted(w * 100 + i, alive.clone()));
                            dropped += ring.write(message).dropped;
                        }
                        dropped
                    })
                })
                .collect();
            let mut yielded = Vec::new();
            if let Step::Message(m) = reader.next(&ring, None) {
                yielded.push(m.0);
            }
            let dropped: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
            let end = ring.leave();
            loop {
                match reader.next(&ring, Some(end)) {
                    Step::Message(m) => yielded.push(m.0),
                    Step::End => break,
                    Step::NotYet => panic!("every writer is done"),
                }
            }
            assert_eq!(yielded.len() as u64 + reader.missed, 2 * posts as u64);
            assert_eq!(reader.missed, dropped, "{yielded:?}");
            for w in 0..2 {
                let mine: Vec<_> = yielded.iter().filter(|&&m| m / 100 == w).collect();
                assert!(mine.windows(2).all(|p| p[0] < p[1]), "{yielded:?}");
            }
            drop(ring);
            assert_eq!(alive.load(SeqCst), 0, "a message leaked");
        });
    }

    #[test]
    fn loom_ring_one_slot() {
        race(1, 2);
    }

    #[test]
    fn loom_ring_capacity_not_a_power_of_two() {
        race(3, 2);
    }

    /// A member reads and, finding nothing, asks to be woken while a writer writes: when it
    /// sleeps (`wait` is true), the write reports `wake`; when it does not, the message is
    /// there to read. No lost wake-up, without a fence.
    #[test]
    fn loom_ring_wakes_a_waiting_reader() {
        crate::sync::model(|| {
            let ring = Arc::new(Ring::<u32>::new(2));
            let mut reader = Reader::join(&ring);
            let writer = {
                let ring = ring.clone();
                thread::spawn(move || ring.write(Arc::new(7)).wake)
            };
            let got = match reader.next(&ring, None) {
                Step::Message(m) => Some(*m),
                _ if !ring.wait(reader.at) => match reader.next(&ring, None) {
                    Step::Message(m) => Some(*m),
                    step => panic!("wait said the message was there: {step:?}"),
                },
                _ => None,
            };
            let woke = writer.join().unwrap();
            match got {
                Some(m) => assert_eq!(m, 7),
                None => {
                    assert!(woke, "a waiting reader was not woken");
                    assert!(matches!(reader.next(&ring, None), Step::Message(_)));
                }
            }
        });
    }
}
