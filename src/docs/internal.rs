//! How evbus works inside: the data structures, the post path, and the memory orderings.
//!
//! # Files
//!
//! Layers, each using only those above it in this table:
//!
//! | file | what it holds |
//! |---|---|
//! | `error.rs`, `message.rs`, `stats.rs`, `events.rs`, `revocation.rs` | leaves: the public values, counters and events (each event also a `tracing` event) |
//! | `trie.rs` | the persistent trie that makes a snapshot write `O(log n)` |
//! | `wire/frame.rs`, `wire/layout.rs` | the Native frame: layout, writer, total decoder |
//! | `wire/serverpod.rs` | Serverpod's JSON envelope: writer, total decoder |
//! | `wire/error.rs` | why received bytes were refused, in either format |
//! | `wire/mac.rs` | the MAC of a signed frame (keyed BLAKE3) |
//! | `wire/control.rs` | repair's requests, answers, gones, announcements: layout, writer, total decoder |
//! | `wire/codec.rs`, `wire/format.rs` | class names, MessagePack and JSON payloads, the revocation classes |
//! | `export.rs` | the `metrics` feature: `Stats` and the global path's histograms to a `metrics` recorder (empty without it) |
//! | `sync.rs` | the atomics the hand-written protocols use, std's or, under `--cfg evbus_loom`, loom's |
//! | `local/post.rs` | **the hot path**: walking a snapshot, calling listeners, pushing to streams; and the same for a received message |
//! | `local/registry.rs` | interning names to topics, registration, session ownership, forgetting unused channels; the `Interest` trait |
//! | `local/stream.rs` | `MessageStream`: the drop-oldest buffer and its waker |
//! | `transport.rs` | the boundary: `Transport` (broadcast, flush, ready, close), `Receive` (the way back in), `Ticket` |
//! | `redis/mod.rs` | the Redis transport: broadcast, tickets, flush, shutdown |
//! | `redis/state.rs` | what the post path, the tasks and every `Delivery` share; link events |
//! | `redis/publisher.rs` | the batching publisher: one task, one pipelined write per batch |
//! | `redis/command.rs` | a PUBLISH and the posts it carries; settling what Redis answered (shared by the publisher and the lanes) |
//! | `redis/lanes.rs` | on a cluster, one publishing lane per master: its own connection and outage budget, `MOVED` and failovers followed |
//! | `redis/ledger.rs` | the origin's sent sequence numbers, and which tickets are settled |
//! | `redis/subscriber.rs` | subscription changes in order, refused ones found; received frames checked and delivered |
//! | `redis/dispatch.rs` | the reader that never waits, the receive byte bound, dispatch threads by channel |
//! | `redis/sequences.rs` | duplicates, gaps and implausible frames, per channel and origin |
//! | `redis/window.rs` | the retransmit window of what this bus published, and its answers to repair requests, rate-limited per asker |
//! | `redis/holds.rs` | a receiver's open gaps: what was asked for, until when, and the frames that wait for it |
//! | `redis/connection.rs` | the only file that names fred: connections, reconnects, pipelines; on a cluster, `SSUBSCRIBE`/`SPUBLISH` and which master each channel is subscribed on |
//! | `inner.rs` | what every handle of a bus shares: the core, the transport, the codec |
//! | `bus.rs`, `session.rs`, `channel.rs`, `delivery.rs` | the facade: the public handles |
//!
//! # A channel
//!
//! ```text
//! registry: papaya::HashMap<Interned, ()>          lock-free reads; the key is the topic,
//!                                   │               found by its name (Borrow<str>)
//! Topic ── subscribers: Published<Snapshot>     ◄── the post path reads only this
//!       │        Snapshot = per message type a Group { Arc<Receivers<M>> as a thin
//!       │                   pointer, &'static GroupOps (its TypeId, clone, drop, ...) }
//!       │                   (the first type inline, the others a list)
//!       │        Receivers<M> = { persistent trie (root inline), streams: their count
//!       │                         and their ring }
//!       └─ writer: Mutex<Writer>                 ◄── registration side only
//!             handles (or FORGOTTEN); each change derives the next snapshot from the
//!             published one, so the receivers are held once; spare: on a one-type
//!             channel of 64+ receivers, a second snapshot no reader sees, changed in
//!             place and then published
//! ```
//!
//! A trie entry is a `Receiver<M>`: a listener (an `Arc` of its closure and registration id,
//! as a thin pointer beside its closure type's static table) or a stream's sink with its id
//! (the producer half of its buffer). Grouping by type
//! means a post checks the type once per group, not once per receiver, and then calls the
//! group's closures with no further dispatch than the closure call itself. Only snapshots
//! hold receivers: a session holds ids and `Weak` topics. Registration ids are taken from the
//! bus's counter under the topic's lock, so within a topic they grow with the trie's slots,
//! and a removal finds its id by binary search over the trie's branches and a scan of one
//! leaf; there is no index from id to slot.
//!
//! # Writes
//!
//! Every registration change locks the topic's writer, edits the trie (path copying,
//! `O(32 log32 n)` clones), and publishes the new root with `Published::swap` before
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
//! 2. `Topic::post` calls `subscribers.borrow()` (`local::published`): it stores the
//!    pointer in a slot of its thread's record and re-checks it after a fence (a `SeqCst`
//!    fence, or none once the snapshot is light); the writer's `swap` is followed by the
//!    matching fence (a `SeqCst` fence, or `membarrier` for a light snapshot) and a look at
//!    every slot: an old pointer a slot still holds is retired, and released by whichever
//!    side lets go of it last. So:
//!    - **L09**: `remove_listener` returns after its `swap`. A post that starts after that
//!      (in happens-before order) loads the new root, which lacks the listener.
//!    - **L06**: the post walks the root it loaded; nothing a listener does during the walk
//!      (adding, removing, closing sessions) changes that immutable tree.
//!    - **S03**: the old root, and with it the only reference to a removed closure, is freed
//!      by whichever finishes last: the writer's `Garbage` drop or the last running post's
//!      give-back (within its call). No timer, no later post, no epoch to advance.
//! 3. `post::deliver` finds the group of the message's type (the others count as mismatches,
//!    L05), walks its trie leaf by leaf, and calls every receiver in an inlined loop;
//!    listeners run under `catch_unwind` (L07), which costs nothing unless one panics.
//! 4. `Counters::record_post` adds the tally to this thread's stripe (`stats.rs`).
//!
//! # Forgetting channels (L13)
//!
//! Posting interns nothing. The writer operation that leaves a topic without subscribers and
//! handles sets `forgotten` and removes the topic from the map, both under the topic's lock.
//! A registration looks the name up, then locks the topic; if it finds `forgotten` it retries
//! the lookup, and the map no longer has the topic (it was removed before the lock was
//! released), so it inserts a fresh topic with `get_or_insert`. Two racing inserts agree on one
//! topic. Removal uses `remove_if(ptr_eq)` so that it can only remove its own topic.
//!
//! A post by name first tries this thread's cache (`LAST_BY_NAME`): the topic it looked up
//! twice in a row last, with its registry's id. It is used while the registry and the name
//! match and its snapshot has receivers. A topic without receivers may be forgotten, with the
//! name interned afresh, so then the name is looked up again: a forgotten topic never gets
//! receivers again, and it lost its last one before it left the map, so a post that follows a
//! registration on the fresh topic loads `None` from the old one. The cache holds an
//! `Arc<Topic>` but never a receiver: a forgotten topic has no snapshot and no spare, and a
//! registry's `Drop` empties every topic. The second lookup in a row, not the first, fills it,
//! so a thread that posts to a new name each time pays no reference count for the cache.
//!
//! # Streams
//!
//! See [`crate::MessageStream`], `ring.rs` and `stream.rs`. A group's streams share one ring
//! (`GroupStreams::ring`, kept by every version of the group while it has streams); a stream's
//! entry in the trie is its sink, which the registry *binds* when it adds it (the sink joins
//! the ring: its start) and makes *leave* when it removes it (its end), so a stream reads
//! exactly the positions from its start to its end, and `yielded + missed == sent` holds
//! exactly. The leave also takes, out of the ring, what the stream had not read yet (waiting
//! for the posts still writing it, on the registration side), so later posts to the channel's
//! other streams cannot push it out: the stream yields it after it left, then ends (S02). The
//! walk skips the sinks: the post writes the ring once, before it calls the listeners.
//!
//! # Sessions
//!
//! An `Owner` records `id -> Weak<Topic>` for what a session registered. Registration through a
//! session takes the session's lock and then the slot's, so close (which takes the record under
//! the session's lock) either sees the registration or makes it inert. Removal by id
//! (`remove_listener`, a stream's drop) takes the slot's lock only: topics do not record
//! owners, so the session keeps the removed id until it prunes its record (when the record
//! has doubled since the last pruning, under the session's lock and then each slot's, the
//! registration order) or closes, where the id is found gone and skipped. No code path holds two slot locks, and only registration nests a slot lock inside a
//! session lock, so there is no lock-order cycle.
//!
//! # Shutdown
//!
//! `Registry::close` sets `closed` (`SeqCst`) and then sweeps every slot under its lock;
//! `subscribe` checks `closed` under the slot's lock, so a registration racing with shutdown
//! is either swept or refused.
