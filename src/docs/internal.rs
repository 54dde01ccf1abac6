//! How evbus works inside: the data structures, the post path, and the memory orderings.
//!
//! # Files
//!
//! | file | what it holds |
//! |---|---|
//! | `post.rs` | **the hot path**: walking a snapshot, calling listeners, pushing to streams |
//! | `registry.rs` | interning names to slots, registration, forgetting unused channels |
//! | `subscribers.rs` | the persistent trie that makes a snapshot write `O(log n)` |
//! | `stream.rs` | `MessageStream`: the drop-oldest buffer and its waker |
//! | `session.rs` | `Session`, `Messages`, and what a session owns |
//! | `stats.rs` | `Stats`, and thread-owned counter stripes |
//! | `channel.rs` | the typed, pre-interned `Channel<M>` handle |
//! | `bus.rs`, `delivery.rs`, `events.rs`, `error.rs` | the rest of the public surface |
//! | `global/mod.rs` | the Redis half: the global post, tickets, flush, shutdown, link events |
//! | `global/publisher.rs` | the batching publisher: one task, one pipelined write per batch |
//! | `global/subscriber.rs` | subscription changes in order; the reader: duplicates, gaps, refusals |
//! | `global/envelope.rs` | the wire formats: the Native frame and Serverpod's JSON, total decoders |
//! | `global/codec.rs` | class names, MessagePack and JSON payloads, the revocation classes |
//! | `global/redis.rs` | the only file that names fred: connections, reconnects, pipelines |
//!
//! # A channel
//!
//! ```text
//! registry: papaya::HashMap<Arc<str>, Arc<Slot>>          lock-free reads
//!                                   │
//!  Slot ── subscribers: ArcSwapOption<Snapshot>  ◄── the post path reads only this
//!       │        Snapshot = per message type: { root of a persistent trie, len, streams }
//!       └─ writer: Mutex<Writer>                 ◄── registration side only
//!             groups: per message type, the writer's trie (same roots as published)
//!             index: id -> (type, trie slot, kind, owning session)
//!             handles, forgotten
//! ```
//!
//! A trie entry is `{ id, Receiver<M> }`, where a receiver is a listener's
//! `Arc<dyn Fn(&M)>` or a stream's sink (the producer half of its buffer). Grouping by type
//! means a post checks the type once per group, not once per receiver, and then calls the
//! group's closures with no further dispatch than the closure call itself. Only snapshots
//! hold receivers: the index holds ids and slot numbers, a session holds ids and `Weak`
//! slots.
//!
//! # Writes
//!
//! Every registration change locks the slot's writer, edits the trie (path copying,
//! `O(32 log32 n)` clones), and publishes the new root with `ArcSwapOption::swap` before
//! unlocking. Writes to one channel are serialized by its mutex; writes to different channels
//! never contend. Nothing of the user's runs under a writer lock: the replaced root and any
//! removed subscriber are returned as `Garbage` and dropped after the unlock, because the last
//! drop of a closure runs the user's `Drop`, which may close a session (and so take writer
//! locks) or block.
//!
//! # The post path and its orderings
//!
//! 1. `Registry::post` pins the map (seize's epoch guard) and looks the name up: lock-free.
//!    A [`Channel`](crate::Channel) handle skips this step.
//! 2. `Slot::post` calls `subscribers.load()`. arc-swap's load records a *debt* in a
//!    thread-local slot and re-checks the pointer (`SeqCst`); the writer's `swap` is `SeqCst`
//!    and pays every outstanding debt on the old pointer (it takes a reference on the reader's
//!    behalf). So:
//!    - **L09**: `remove_listener` returns after its `swap`. A post that starts after that
//!      (in happens-before order) loads the new root, which lacks the listener.
//!    - **L06**: the post walks the root it loaded; nothing a listener does during the walk
//!      (adding, removing, closing sessions) changes that immutable tree.
//!    - **S03**: the old root, and with it the only reference to a removed closure, is freed
//!      by whichever finishes last: the writer's `Garbage` drop or the last running post's
//!      guard drop. No timer, no later post, no epoch to advance.
//! 3. `post::deliver` finds the group of the message's type (the others count as mismatches,
//!    L05), walks its trie leaf by leaf, and calls every receiver in an inlined loop;
//!    listeners run under `catch_unwind` (L07), which costs nothing unless one panics.
//! 4. `Counters::record_post` adds the tally to this thread's stripe (`stats.rs`).
//!
//! # Forgetting channels (L13)
//!
//! Posting interns nothing. The writer operation that leaves a slot without subscribers and
//! handles sets `forgotten` and removes the slot from the map, both under the slot's lock.
//! A registration looks the name up, then locks the slot; if it finds `forgotten` it retries
//! the lookup, and the map no longer has the slot (it was removed before the lock was
//! released), so it inserts a fresh slot with `get_or_insert`. Two racing inserts agree on one
//! slot. Removal uses `remove_if(ptr_eq)` so that it can only remove its own slot.
//!
//! # Streams
//!
//! See [`crate::MessageStream`] and `stream.rs`: crossbeam's `SegQueue` plus a `len` counter
//! for the bound, a `parked` flag so producers wake only a sleeping consumer, and the end of
//! the stream tied to the drop of its sink. Because the sink is dropped only when the last
//! snapshot holding it is gone, no post can push after the stream ended: the consumer sees
//! every message pushed before the end (S02), and `yielded + missed == pushed` holds exactly.
//!
//! # Sessions
//!
//! An `Owner` records `id -> Weak<Slot>` for what a session registered. Registration through a
//! session takes the session's lock and then the slot's, so close (which takes the record under
//! the session's lock) either sees the registration or makes it inert. Removal by id
//! (`remove_listener`, a stream's drop) takes the slot's lock, releases it, then tells the
//! owner. No code path holds two slot locks, and only registration nests a slot lock inside a
//! session lock, so there is no lock-order cycle.
//!
//! # Shutdown
//!
//! `Registry::close` sets `closed` (`SeqCst`) and then sweeps every slot under its lock;
//! `subscribe` checks `closed` under the slot's lock, so a registration racing with shutdown
//! is either swept or refused.
