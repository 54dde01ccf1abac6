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
//! # Reusing allocations
//!
//! A message without drop glue and of at most 64 bytes (`RECYCLE`: a number, an id, a small
//! plain struct) is kept by its slot, which holds one reference of its own beside the
//! members'. The next writer of the slot, one lap later, takes that reference with the slot,
//! and when no one else holds the `Arc` any more (`Arc::get_mut`, which also rules out a
//! `Weak`), writes the new message into the same allocation. A stream's reader that drops each
//! message before the ring comes round again so costs a post no allocation. Keeping such a
//! message costs only its bytes until its slot's next write, or until the ring goes with its
//! group's last stream: it owns nothing, and its drop does nothing, so nothing observable is
//! late. Any other message is dropped, as an `Arc` is, by its last holder.
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
//! that is, made progress; it never waits for a preempted thread. It makes or reuses one
//! `Arc`, and one count increment on it per member (and one for the slot that keeps it). A read is lock-free likewise; a reader whose
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
const POSITION: u64 = (1 << (64 - LOW)) - 1;
/// `tail`'s low bits: the members.
const MEMBERS: u64 = (1 << LOW) - 1;
/// A state's low bits: remaining references (written; 0 when `EMPTY`), or superseded laps
/// (`BUSY`).
const COUNT: u64 = (1 << 21) - 1;
const BUSY: u64 = 1 << 21;
const EMPTY: u64 = 1 << 22;
const WAITING: u64 = 1 << 23;

/// The most members a ring takes.
const MAX_MEMBERS: u64 = COUNT;

/// `a`, or `end` if `a` is past it.
#[inline(always)]
fn before(a: u64, end: u64) -> u64 {
    if distance(a, end) > 0 {
        end
    } else {
        a
    }
}

/// `a - b` for positions, signed: positions wrap at 40 bits.
#[inline(always)]
fn distance(a: u64, b: u64) -> i64 {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) members: u64,
    pub(crate) dropped: u64,
    pub(crate) wake: bool,
}

/// A member's place in the ring, as [`Ring::next`] moves it.
pub(crate) trait Cursor {
    /// The next position to read; `None` once the member reads no more.
    fn at(&self) -> Option<u64>;
    /// Moves the cursor from `from` to `to`, taking the positions in between: false, taking
    /// none, if another thread has taken the cursor over (a stream's leave).
    fn advance(&mut self, from: u64, to: u64) -> bool;
}

/// A cursor that one thread alone moves.
impl Cursor for u64 {
    #[inline(always)]
    fn at(&self) -> Option<u64> {
        Some(*self)
    }

    #[inline(always)]
    fn advance(&mut self, _: u64, to: u64) -> bool {
        *self = to;
        true
    }
}

/// What [`Ring::next`] found.
#[derive(Debug)]
pub(crate) enum Next<M> {
    Message(Arc<M>),
    /// Not written yet: wait ([`Ring::wait`]).
    NotYet,
    /// The cursor reads no more, or reached the end.
    End,
}

pub(crate) struct Ring<M> {
    tail: CachePadded<AtomicU64>,
    /// `mask + 1` slots, allocated by the first write that has a member.
    slots: AtomicPtr<Slot<M>>,
    mask: u64,
    shift: u32,
    capacity: u64,
    /// `mask + 1` positions, shifted as in a state: one lap of the ring.
    lap: u64,
    /// Whether `capacity` is less than the slots (not a power of two): a write evicts.
    evicts: bool,
}

// SAFETY: the ring hands `Arc<M>`s to other threads and drops them on any thread: `M: Send +
// Sync`, as for `Arc<M>`.
unsafe impl<M: Send + Sync> Send for Ring<M> {}
// SAFETY: as for `Send`; shared, the ring is its atomics.
unsafe impl<M: Send + Sync> Sync for Ring<M> {}

impl<M> Ring<M> {
    /// Whether a slot keeps its last message's allocation to reuse it (§ Reusing
    /// allocations): for messages without drop glue, of at most 64 bytes, so that a kept
    /// message costs only its bytes.
    const RECYCLE: bool = !std::mem::needs_drop::<M>() && std::mem::size_of::<M>() <= 64;

    /// A ring whose streams each hold at most `capacity` messages (`capacity >= 1`).
    pub(crate) fn new(capacity: usize) -> Self {
        let size = capacity.max(1).next_power_of_two() as u64;
        Ring {
            tail: CachePadded::new(AtomicU64::new(0)),
            slots: AtomicPtr::new(ptr::null_mut()),
            mask: size - 1,
            shift: size.trailing_zeros(),
            capacity: capacity.max(1) as u64,
            lap: size << LOW,
            evicts: (capacity.max(1) as u64) < size,
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
    #[inline(always)]
    fn slots(&self) -> &[Slot<M>] {
        match self.written_slots() {
            Some(slots) => slots,
            None => self.allocate(),
        }
    }

    #[cold]
    fn allocate(&self) -> &[Slot<M>] {
        let size = self.mask + 1;
        let fresh: Box<[Slot<M>]> = (0..size)
            .map(|i| Slot {
                // Stamped one lap before the first: nothing written yet.
                state: AtomicU64::new((i.wrapping_sub(size) & POSITION) << LOW | EMPTY),
                value: AtomicPtr::new(ptr::null_mut()),
            })
            .collect();
        let fresh = Box::into_raw(fresh).cast::<Slot<M>>();
        if let Err(installed) = self
            .slots
            .compare_exchange(ptr::null_mut(), fresh, AcqRel, Acquire)
        {
            // SAFETY: ours, never shared.
            drop(unsafe { self.boxed(fresh) });
            // SAFETY: installed slots live as long as the ring, `mask + 1` of them.
            return unsafe { std::slice::from_raw_parts(installed, self.mask as usize + 1) };
        }
        // SAFETY: as above; installed now.
        unsafe { std::slice::from_raw_parts(fresh, self.mask as usize + 1) }
    }

    /// The slots if a write allocated them.
    #[inline(always)]
    fn written_slots(&self) -> Option<&[Slot<M>]> {
        let slots = self.slots.load(Acquire);
        // SAFETY: as in `slots`.
        (!slots.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(slots, self.mask as usize + 1) })
    }

    /// The slot of position `at`.
    #[inline(always)]
    fn slot<'a>(&self, slots: &'a [Slot<M>], at: u64) -> &'a Slot<M> {
        // SAFETY: `slots` has `mask + 1` slots.
        unsafe { slots.get_unchecked((at & self.mask) as usize) }
    }

    /// # Safety
    ///
    /// `slots` is an allocation of this ring's slots that no one else uses.
    unsafe fn boxed(&self, slots: *mut Slot<M>) -> Box<[Slot<M>]> {
        let slice = ptr::slice_from_raw_parts_mut(slots, self.mask as usize + 1);
        // SAFETY: the caller's contract; made by `Box::into_raw` of a boxed slice this long.
        unsafe { Box::from_raw(slice) }
    }

    /// Writes `message` at the next position, for the members there (L03); with `lend`, also
    /// returns it (for the group's listeners), whether or not a member took it.
    #[inline(always)]
    pub(crate) fn write(&self, message: M, lend: bool) -> (Written, Option<Arc<M>>) {
        // The position and its members, in one read-modify-write: wait-free.
        let tail = self.tail.fetch_add(1 << LOW, AcqRel);
        let (position, members) = (tail >> LOW, tail & MEMBERS);
        let mut written = Written {
            members,
            dropped: 0,
            wake: false,
        };
        let taken = if members == 0 {
            None
        } else {
            let slots = self.slots();
            if self.evicts {
                let evicted = position.wrapping_sub(self.capacity) & POSITION;
                written.dropped += self.evict(self.slot(slots, evicted), evicted);
            }
            let slot = self.slot(slots, position);
            let state = slot.state.load(Acquire);
            // The common case, in one comparison: the slot holds the position one lap before,
            // not mid-write.
            let fast =
                if state & !(WAITING | EMPTY | COUNT) == (tail & !MEMBERS).wrapping_sub(self.lap) {
                    replace(slot, state, position << LOW | BUSY | (state & WAITING)).ok()
                } else {
                    None
                };
            fast.or_else(|| self.take(slot, position))
                .map(|(dropped, old)| {
                    written.dropped += dropped;
                    (slot, old)
                })
        };
        let Some((slot, old)) = taken else {
            // No member, or the message is lost for its members.
            written.dropped += members;
            return (written, lend.then(|| Arc::new(message)));
        };
        // The slot is ours until we publish it: one reference to the message, then one more
        // per member, one for the slot when it keeps the allocation, one to lend.
        let value = Self::make(old, message);
        let references = members + Self::RECYCLE as u64 + lend as u64;
        for _ in 1..references {
            // SAFETY: `value` holds a reference, not yet shared.
            unsafe { Arc::increment_strong_count(value) };
        }
        slot.value.store(value.cast_mut(), Release);
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
                        unsafe { release(value, members) };
                        written.dropped += members;
                    }
                    break;
                }
                Err(now) => state = now,
            }
        }
        // SAFETY: the reference made to lend, ours.
        (written, lend.then(|| unsafe { Arc::from_raw(value) }))
    }

    /// Takes `slot` for writing `position`, from whatever state it is in: the references to
    /// its message no member took and the message, as [`replace`] gives them; `None` when
    /// the message is lost for its members.
    #[inline(never)]
    fn take(&self, slot: &Slot<M>, position: u64) -> Option<(u64, *const M)> {
        let mut state = slot.state.load(Acquire);
        loop {
            let ahead = distance(stamp(state), position);
            if ahead > 0 {
                // Overtaken: a later position holds the slot; ours is lost for its members.
                return None;
            }
            if state & BUSY != 0 {
                // An older writer is mid-write: mark it superseded by `laps`; both are lost.
                let laps = (-ahead) as u64 >> self.shift;
                let marked = (state & !COUNT) | (state & COUNT).max(laps).min(COUNT);
                match slot
                    .state
                    .compare_exchange_weak(state, marked, AcqRel, Acquire)
                {
                    Ok(_) => return None,
                    Err(now) => state = now,
                }
                continue;
            }
            match replace(slot, state, position << LOW | BUSY | (state & WAITING)) {
                Ok(taken) => return Some(taken),
                Err(now) => state = now,
            }
        }
    }

    /// The message's `Arc`: the allocation of the slot's last message `old` when the slot
    /// keeps it (`RECYCLE`) and no one else holds it any more, else a new one. Holds one
    /// reference.
    #[inline(always)]
    fn make(old: *const M, message: M) -> *const M {
        if Self::RECYCLE && !old.is_null() {
            // SAFETY: a slot that recycles holds a reference of its own to its last message,
            // which replacing the slot gave to its writer.
            let mut old = unsafe { Arc::from_raw(old) };
            if let Some(unique) = Arc::get_mut(&mut old) {
                // No drop glue (`RECYCLE`): the old message needs nothing done.
                *unique = message;
                return Arc::into_raw(old);
            }
        }
        Arc::into_raw(Arc::new(message))
    }

    /// Takes position `at`'s remaining references from `slot`, if it still holds it written:
    /// how many it took.
    fn evict(&self, slot: &Slot<M>, at: u64) -> u64 {
        let mut state = slot.state.load(Acquire);
        loop {
            if stamp(state) != at || state & BUSY != 0 || state & COUNT == 0 {
                return 0;
            }
            match replace(slot, state, at << LOW | EMPTY | (state & WAITING)) {
                Ok((dropped, _)) => return dropped,
                Err(now) => state = now,
            }
        }
    }

    /// A member's next message, read through `cursor` (up to `end` once it has left); the
    /// messages it finds dropped on the way are added to `missed`. The one walk of the ring:
    /// a stream's reads, its leave taking what it had not read, and the tests all take it.
    #[inline(always)]
    pub(crate) fn next(
        &self,
        cursor: &mut impl Cursor,
        end: Option<u64>,
        missed: &mut u64,
    ) -> Next<M> {
        loop {
            let Some(at) = cursor.at() else {
                return Next::End;
            };
            if end == Some(at) {
                return Next::End;
            }
            let Some(slots) = self.written_slots() else {
                return Next::NotYet;
            };
            let slot = self.slot(slots, at);
            let state = slot.state.load(Acquire);
            // The common case, in one comparison: written at `at`, not `BUSY` or `EMPTY`.
            if state & !(WAITING | COUNT) == at << LOW {
                if cursor.advance(at, (at + 1) & POSITION) {
                    match claim(slot, at, state) {
                        Some(message) => return Next::Message(message),
                        None => *missed += 1,
                    }
                }
                continue;
            }
            let ahead = distance(stamp(state), at);
            if ahead < 0 || (ahead == 0 && state & BUSY != 0) {
                return Next::NotYet;
            }
            // Dropped: overwritten, evicted or lost. Everything older than the newest
            // `capacity` positions is dropped too.
            {
                let newest = self.tail.load(Acquire) >> LOW;
                let oldest = newest.wrapping_sub(self.capacity) & POSITION;
                let to = if ahead > 0 && distance(oldest, at) > 0 {
                    oldest
                } else {
                    (at + 1) & POSITION
                };
                let to = end.map_or(to, |end| before(to, end));
                if cursor.advance(at, to) {
                    *missed += distance(to, at) as u64;
                }
            }
        }
    }

    /// Asks to be woken when position `at` is written: false when it already is, or was
    /// dropped (read again instead of sleeping).
    pub(crate) fn wait(&self, at: u64) -> bool {
        let slot = self.slot(self.slots(), at);
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
            let remaining = if state & BUSY == 0 { state & COUNT } else { 0 };
            let value = slot.value.load(Relaxed);
            let own = (Self::RECYCLE && !value.is_null()) as u64;
            // SAFETY: the slot's remaining references, and its own when it recycles.
            unsafe { release(value, remaining + own) };
        }
    }
}

/// Takes a member's reference to the message at `at` in `slot`, seen written in `state`;
/// `None` when it was dropped meanwhile. The caller is a member of `at` that has not taken
/// it, and no one else takes it for that member, so the slot holds a reference for it; the
/// count is checked all the same, as a decrement past 0 would corrupt the state.
#[inline(always)]
fn claim<M>(slot: &Slot<M>, at: u64, mut state: u64) -> Option<Arc<M>> {
    loop {
        if state & COUNT == 0 {
            return None;
        }
        let value = slot.value.load(Acquire);
        match slot
            .state
            .compare_exchange_weak(state, state - 1, AcqRel, Acquire)
        {
            // SAFETY: the CAS took one of the references the slot held for this position's
            // members, to `value`, the slot's value for it (the CAS checked the state that the
            // value's store happened before).
            Ok(_) => return Some(unsafe { Arc::from_raw(value) }),
            // Still written at `at` (another member took its reference, or a reader set
            // `WAITING`), or dropped.
            Err(now) if now & !(WAITING | COUNT) == at << LOW => state = now,
            Err(_) => return None,
        }
    }
}

/// Replaces `slot`'s `state` (not `BUSY`) with `next`, and drops the references to the slot's
/// message that no member took: how many, and the slot's value (to which a slot that
/// recycles holds one more reference); or the state found instead of `state`.
fn replace<M>(slot: &Slot<M>, state: u64, next: u64) -> Result<(u64, *const M), u64> {
    // Read before the CAS, which checks that it is the value of the state it replaces.
    let value = slot.value.load(Acquire);
    slot.state
        .compare_exchange_weak(state, next, AcqRel, Acquire)
        .map(|_| {
            // An `EMPTY` state's count is 0.
            let remaining = state & COUNT;
            // SAFETY: the CAS took the slot's remaining references to `value`.
            unsafe { release(value, remaining) };
            (remaining, value.cast_const())
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

/// A member's reads, for the tests.
#[cfg(test)]
mod reader {
    use super::*;

    pub(super) struct Reader {
        pub(super) at: u64,
        pub(super) missed: u64,
    }

    impl Reader {
        pub(super) fn join<M>(ring: &Ring<M>) -> Reader {
            Reader {
                at: ring.join().expect("room for a member"),
                missed: 0,
            }
        }

        pub(super) fn next<M>(&mut self, ring: &Ring<M>, end: Option<u64>) -> Next<M> {
            ring.next(&mut self.at, end, &mut self.missed)
        }

        // The unit tests' helper; the loom models read one message at a time.
        #[cfg_attr(evbus_loom, allow(dead_code))]
        pub(super) fn drain<M: Copy>(&mut self, ring: &Ring<M>, end: Option<u64>) -> Vec<M> {
            let mut out = Vec::new();
            while let Next::Message(m) = self.next(ring, end) {
                out.push(*m);
            }
            out
        }
    }
}

#[cfg(all(test, not(evbus_loom)))]
mod tests {
    use super::reader::Reader;
    use super::*;

    #[test]
    fn a_stream_reads_what_was_written_after_it_joined() {
        let ring = Ring::new(4);
        assert_eq!(ring.write(0, false).0.members, 0);
        let mut a = Reader::join(&ring);
        assert_eq!(ring.write(1, false).0.members, 1);
        let mut b = Reader::join(&ring);
        assert_eq!(ring.write(2, false).0.members, 2);
        assert_eq!(a.drain(&ring, None), [1, 2]);
        assert_eq!(b.drain(&ring, None), [2]);
        let end = ring.leave();
        ring.write(3, false);
        assert!(matches!(b.next(&ring, Some(end)), Next::End));
        assert_eq!(a.drain(&ring, None), [3]);
    }

    #[test]
    fn a_full_stream_drops_its_oldest_and_counts_it() {
        for capacity in [3, 4] {
            let ring = Ring::new(capacity);
            let mut reader = Reader::join(&ring);
            let dropped: u64 = (0..10).map(|m| ring.write(m, false).0.dropped).sum();
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
            ring.write(marker.clone(), false);
        }
        let _ = readers[0].next(&ring, None);
        drop(ring);
        assert_eq!(Arc::strong_count(&marker), 1);
    }

    #[test]
    fn a_slot_reuses_its_message_once_no_stream_holds_it() {
        const { assert!(Ring::<u64>::RECYCLE && !Ring::<String>::RECYCLE) };
        let ring = Ring::new(2);
        let mut reader = Reader::join(&ring);
        let (written, lent) = ring.write(0u64, true);
        assert_eq!((written.members, lent.as_deref()), (1, Some(&0)));
        drop(lent);
        let first = reader.next(&ring, None);
        let Next::Message(first) = first else {
            panic!("{first:?}")
        };
        let at = Arc::as_ptr(&first);
        drop(first);
        ring.write(1, false);
        ring.write(2, false);
        // Position 2 is position 0's slot, whose message no one held: the same allocation.
        assert_eq!(reader.drain(&ring, None), [1, 2]);
        ring.write(3, false);
        ring.write(4, false);
        let Next::Message(held) = reader.next(&ring, None) else {
            panic!("3 was written")
        };
        let weak = {
            let Next::Message(four) = reader.next(&ring, None) else {
                panic!("4 was written")
            };
            assert_eq!(
                Arc::as_ptr(&four),
                at,
                "position 4 reuses slot 0's allocation"
            );
            Arc::downgrade(&four)
        };
        ring.write(5, false);
        ring.write(6, false);
        // A held message, and one a `Weak` points to, are never written over: the slot lets
        // go of them and makes a new allocation.
        assert_eq!(*held, 3);
        assert!(weak.upgrade().is_none());
        assert_eq!(reader.drain(&ring, None), [5, 6]);
        let kept: Vec<Arc<u64>> = (7..10)
            .filter_map(|m| {
                ring.write(m, false);
                match reader.next(&ring, None) {
                    Next::Message(m) => Some(m),
                    _ => None,
                }
            })
            .collect();
        assert_eq!(reader.missed, 0);
        drop(ring);
        assert!(
            kept.iter().all(|m| Arc::strong_count(m) == 1),
            "the ring released all"
        );
    }
}

/// Models of the ring, run by `RUSTFLAGS="--cfg evbus_loom" cargo test --lib loom_`.
#[cfg(all(test, evbus_loom))]
mod loom_tests {
    use super::reader::Reader;
    use super::*;

    use loom::thread;

    type Alive = Arc<loom::sync::atomic::AtomicUsize>;

    /// A message of the models: its writer's number and its own.
    trait Message: Send + Sync + 'static {
        fn new(id: u32, alive: &Alive) -> Self;
        fn id(&self) -> u32;
    }

    /// Counts the messages alive, so a model sees a leak or a double free.
    struct Counted(u32, Alive);

    impl Message for Counted {
        fn new(id: u32, alive: &Alive) -> Self {
            alive.fetch_add(1, SeqCst);
            Counted(id, alive.clone())
        }

        fn id(&self) -> u32 {
            self.0
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.fetch_sub(1, SeqCst);
        }
    }

    /// A plain message, whose allocation the ring's slots reuse (`RECYCLE`).
    impl Message for u32 {
        fn new(id: u32, _: &Alive) -> Self {
            id
        }

        fn id(&self) -> u32 {
            *self
        }
    }

    /// Two writers race into a ring of `capacity` slots while a member reads: every position
    /// is yielded or missed exactly once, what the writers count dropped is what the reader
    /// missed, in order per writer, and nothing leaks.
    fn race<M: Message>(capacity: usize, posts: u32) {
        crate::sync::model(move || {
            let alive = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
            let ring = Arc::new(Ring::<M>::new(capacity));
            let mut reader = Reader::join(&ring);
            let writers: Vec<_> = (0..2)
                .map(|w| {
                    let (ring, alive) = (ring.clone(), alive.clone());
                    thread::spawn(move || {
                        let mut dropped = 0;
                        for i in 0..posts {
                            let message = M::new(w * 100 + i, &alive);
                            dropped += ring.write(message, false).0.dropped;
                        }
                        dropped
                    })
                })
                .collect();
            let mut yielded = Vec::new();
            if let Next::Message(m) = reader.next(&ring, None) {
                yielded.push(m.id());
            }
            let dropped: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
            let end = ring.leave();
            loop {
                match reader.next(&ring, Some(end)) {
                    Next::Message(m) => yielded.push(m.id()),
                    Next::End => break,
                    Next::NotYet => panic!("every writer is done"),
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
        race::<Counted>(1, 2);
    }

    #[test]
    fn loom_ring_capacity_not_a_power_of_two() {
        race::<Counted>(3, 2);
    }

    /// The race over one slot with messages whose allocations the slot reuses.
    #[test]
    fn loom_ring_one_slot_recycling() {
        race::<u32>(1, 2);
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
                thread::spawn(move || ring.write(7, false).0.wake)
            };
            let got = match reader.next(&ring, None) {
                Next::Message(m) => Some(*m),
                _ if !ring.wait(reader.at) => match reader.next(&ring, None) {
                    Next::Message(m) => Some(*m),
                    step => panic!("wait said the message was there: {step:?}"),
                },
                _ => None,
            };
            let woke = writer.join().unwrap();
            match got {
                Some(m) => assert_eq!(m, 7),
                None => {
                    assert!(woke, "a waiting reader was not woken");
                    assert!(matches!(reader.next(&ring, None), Next::Message(_)));
                }
            }
        });
    }
}
