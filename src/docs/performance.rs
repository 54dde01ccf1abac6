//! What is wait-free, what is lock-free, what blocks, and what things cost.
//!
//! The words are used as arc-swap's documentation uses them (arc-swap published the snapshots
//! until issue 11's second round; `local::published` does now): *wait-free*, every call finishes
//! in a bounded number of its own steps whatever other threads do; *lock-free*, some thread
//! always makes progress (a call may retry because another succeeded); *blocking*, a call may
//! wait for another thread.
//!
//! # Posting (the hot path)
//!
//! A local post takes no lock of this crate's, and one that reaches no stream never waits for
//! another thread (L10). A post that reaches a stream can wait, in two short windows of the
//! stream's queue described [below](#what-a-stream-push-can-wait-for):
//!
//! | step | progress guarantee |
//! |---|---|
//! | name lookup (`post_message`; skipped by a `Channel` handle, and by a post to the name this thread posted to twice in a row before) | wait-free for a cached name (thread-local reads); otherwise lock-free (papaya's reads, seize's guard) |
//! | snapshot borrow | lock-free: it loads the snapshot again only when a registration replaced it between the borrow's two loads, so another thread made progress; with no registration at that instant, a fixed number of steps. Giving it back is wait-free |
//! | walk and listener calls | bounded by the snapshot; each call is the user's code |
//! | stream push | lock-free except at a block boundary (once per 31 messages) and in the eviction of a full buffer, where it can wait for a preempted thread (below) |
//! | counters | wait-free: a store to a stripe only this thread writes |
//!
//! So a post to listeners only, through a handle, is lock-free, and wait-free while no
//! registration changes its channel at the same instant, apart from the listeners' own code;
//! a post that reaches streams is lock-free apart from
//! the two windows below, and from waking a parked consumer, which calls its executor's
//! `Waker` (tokio's takes its scheduler's mutex when woken from outside the runtime's
//! workers).
//!
//! One exception, once per thread: the first time a thread touches any papaya map, seize (its
//! memory reclaimer) gives the thread an id under a process-wide mutex, and frees it under the
//! same mutex when the thread exits. A post by name from a thread that never used papaya
//! before takes that mutex once; a post through a [`Channel`](crate::Channel) handle never
//! does. Likewise this crate's counter stripes and borrow records (`local::published`) set up
//! per-thread state on a thread's first post, both with lock-free CAS loops (a new record is
//! allocated when none of the pool is free, as is one for a post nested more than eight deep), and the by-name cache registers
//! its thread-local's destructor with the standard library on a thread's first cached post.
//!
//! Cost: nothing is allocated for listeners; a post that reaches streams allocates one `Arc`
//! for the message, shared by all of them (L04), plus a 31-slot block per stream when its
//! current block is full.
//!
//! ## What a stream push can wait for
//!
//! A stream's buffer is crossbeam's `SegQueue`, a list of 31-slot blocks. A push reserves a
//! slot with a CAS on the tail, retried only when another push won, and then writes the
//! message into it; a pop reserves the head slot the same way and then reads it. Two parts of
//! a push are not lock-free in the strict sense; in both, the push spins with exponential
//! backoff and then `thread::yield_now` until another thread has done a few instructions:
//!
//! - Block boundaries. The push that reserves the last slot of a block installs the next block
//!   (allocated before its CAS) with two stores after the CAS. Until they land, every other
//!   push to the same stream waits; if that producer is preempted in between, they wait until
//!   it runs again. Once per 31 messages of a stream.
//! - Eviction, when a push finds the buffer full and pops the oldest message. A pop waits
//!   until its reserved slot has been written, so the evicting push waits for a producer
//!   preempted between its CAS and its write of that slot. A pop that reserves the last slot of
//!   a block also waits until the next block is linked, and one that finds the head at a
//!   block's end waits for the pop that is moving it on (the consumer's, or another
//!   eviction's).
//!
//! A stream's queue itself is allocated by its first push and installed with one
//! compare-and-swap (`once_cell::race::OnceBox`); a push that loses that race frees its own
//! and uses the winner's, so no push waits for another there.
//!
//! The rest of a push is wait-free (`fetch_add`s, a load, at most one `swap`, an `AtomicWaker`
//! wake that never waits). The consumer's pops wait for producers in the same way; the consumer
//! never waits for an evicting producer to finish. `stream.rs` has the algorithm.
//!
//! # Posting globally
//!
//! A global post does not wait for Redis, and waits for another thread only at a block
//! boundary of the publish queue, but it is not wait-free:
//!
//! | step | progress guarantee |
//! |---|---|
//! | encoding (MessagePack or JSON) into a new buffer | the allocator's |
//! | the outage bound and the ticket | wait-free: one `fetch_add` each |
//! | the push onto the publish queue | `SegQueue::push`: lock-free except at a block boundary (once per 31 posts), where it can wait for a preempted poster, as a [stream push](#what-a-stream-push-can-wait-for) can |
//! | waking the publisher | a fence and a load; only a post that finds the publisher asleep wakes its task, and waking a tokio task may take the runtime's scheduler lock |
//!
//! So under load, while the publisher is busy sending the previous batch, a global post is
//! lock-free apart from the allocator and the block boundary; at low load one post per batch
//! wakes the publisher.
//! A post never waits for Redis: while Redis is unreachable posts are held (up to
//! `outage_buffer` posts and `outage_buffer_bytes`), then refused with `Backpressure`.
//!
//! Received messages are delivered on one of the bus's four dispatch threads, chosen by a
//! hash of the channel name, which call listeners as a local post does: a listener that
//! blocks holds up the global messages of the channels of its thread (about a quarter of
//! them), never the reader nor the other threads. Behind it, received messages wait up to
//! `receive_buffer_bytes`; the rest are dropped and counted missed.
//!
//! # Registering
//!
//! `add_listener`, `remove_listener`, `create_stream`, dropping a stream, closing a session and
//! dropping a handle are *blocking*: each takes the channel's mutex (a `parking_lot` mutex,
//! never held while user code runs) and, through a session, the session's. A write copies one
//! root-to-leaf path of the trie: at most 32 entries per level, `log32 n` levels, so 100,000
//! listeners on one channel cost three levels per write instead of a 100,000-entry copy.
//!
//! # Measured
//!
//! The figures (criterion, beside `tokio::sync::broadcast` in the same run) and the machine
//! they were measured on are in the README, section "Performance".
