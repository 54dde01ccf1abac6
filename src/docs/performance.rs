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
//! A local post takes no lock of this crate's and never waits for another thread (L10),
//! whether it reaches listeners, streams or both:
//!
//! | step | progress guarantee |
//! |---|---|
//! | name lookup (`post_message`; skipped by a `Channel` handle, and by a post to the name this thread posted to twice in a row before) | wait-free for a cached name (thread-local reads); otherwise lock-free (papaya's reads, seize's guard) |
//! | snapshot borrow | lock-free: it loads the snapshot again only when a registration replaced it between the borrow's two loads, so another thread made progress; with no registration at that instant, a fixed number of steps. Giving it back is wait-free; when a registration replaced the snapshot during the post, it also looks for retired snapshots to free, a bounded loop that waits for no one. No locked instruction once the channel has settled (below) |
//! | walk and listener calls | bounded by the snapshot; each call is the user's code |
//! | the write to the streams' ring | lock-free: one `fetch_add` for the position (wait-free), then compare-and-swaps on one slot that fail only when another thread changed it ([below](#what-a-stream-write-does)) |
//! | counters | wait-free: a store to a stripe only this thread writes |
//!
//! So a post to listeners only, through a handle, is lock-free, and wait-free while no
//! registration changes its channel at the same instant, apart from the listeners' own code;
//! a post that reaches streams is lock-free, apart from waking streams that wait, which calls
//! their executor's `Waker` (tokio's takes its scheduler's mutex when woken from outside the
//! runtime's workers).
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
//! Cost: nothing is allocated for listeners; a post that reaches streams makes one `Arc` for
//! the message, shared by all of them (L04), and takes one more reference to it per stream.
//! For a small plain message (no drop glue, at most 64 bytes: a number, an id) the `Arc` is
//! usually not allocated but reused: the message's slot keeps the allocation of the message
//! it held one lap before, and writes the new one into it once the streams have dropped their
//! clones. The first post that reaches a channel's streams of one type allocates their ring:
//! `stream_capacity` (rounded up to a power of two) slots of 16 bytes.
//!
//! ## What a stream write does
//!
//! A channel's streams of one type share one ring (`local/ring.rs`): a post writes its message
//! once, each stream reads it through its own cursor. The post claims a position with one
//! `fetch_add` on the ring's tail, which also tells it how many streams the position is for,
//! then takes the position's slot with a compare-and-swap, drops the slot's previous message
//! (counting, for each stream that had not read it, one dropped message: L11), stores the
//! new one and publishes it with a second compare-and-swap. A CAS fails only when another
//! thread changed the slot, and none waits for another:
//!
//! - a write that finds its slot already taken by a later position (it was preempted that
//!   long) drops its own message, which its streams count missed;
//! - a write that finds an older write still in the slot marks that write superseded and drops
//!   its own message; the older write, when it publishes, drops its message too and leaves the
//!   slot empty at the later position. Both are counted.
//!
//! A stream that finds nothing marks the slot it waits for; the write that fills the slot
//! sees the mark in the same word it publishes with, and wakes the waiting streams. A stream
//! waits for its producer: one preempted in the middle of a write holds back the streams
//! reading that position until it runs again (a later position's write may complete first; it
//! is read after). `ring.rs` and `stream.rs` have the algorithm and its loom models.
//!
//! A stream's read takes its position without a locked instruction: two plain stores to its
//! cursor and a plain load of its end, which its sink's leave (a session close, a removal)
//! synchronises with through an asymmetric fence pair (`local/barrier.rs`). Only claiming the
//! message from its slot is a compare-and-swap. The leave pays for it: on Linux a
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` call, about 120 ns on the Intel VM and
//! 0.4 µs on the AMD one with no other thread of the process running (100,000 streams
//! created and closed: 686 → 808 ns each), plus an interrupt to each CPU that is running one
//! at that moment (about 14 µs a call on the AMD VM with one other thread busy); elsewhere,
//! or where the kernel refuses it, a `SeqCst` fence on both sides (one locked instruction
//! per read).
//!
//! Only a leave that can race a read pays it. A stream dropped by its owner (a connection
//! handler ending, or a stream that owns its session) marks itself gone first, and its
//! leave then synchronizes with that mark instead (`GONE` in `local/stream.rs`, with a loom
//! model). `cargo bench --bench churn`, AMD VM, binaries alternated, per stream: dropped by
//! its owner 0.77 – 0.80 → 0.37 – 0.39 µs; the same beside a thread of the process that
//! spins, 8.7 – 11.7 → 0.45 – 0.52 µs. A stream ended by its session's close from elsewhere
//! still pays the call: 8.6 – 11.3 µs beside the spinning thread.
//!
//! ## What a snapshot borrow costs
//!
//! A post borrows its channel's snapshot by storing its address in a slot of its thread and
//! loading the channel's pointer again; the registration that replaces the snapshot looks
//! at every slot and retires a snapshot a post still holds, which that post frees when it
//! ends (`local/published.rs`). The store and the load need a fence between them, or a
//! fence on the registration's side that makes every running thread fence: Linux's
//! `membarrier`. Which side pays depends on the channel:
//!
//! - a snapshot a registration just published is *fenced*: each post passes a `SeqCst` fence
//!   (one locked instruction, about 5 ns here), and the next registration passes one too;
//! - after 256 fenced posts, a thread makes the snapshot it posts to *light*: posts then pass
//!   no fence, and the registration that replaces a light snapshot calls `membarrier`:
//!   about 0.4 µs with no other thread of the process running, and an interrupt to every CPU
//!   running one of its threads (on this project's 2-CPU VM, about 14 µs a call with one
//!   other thread busy).
//!
//! So a channel posted to more than it changes posts without fences, and a channel whose
//! registrations come in a burst or churn pays a fence per post and no system call; at most
//! one `membarrier` per 256 fenced posts of a thread.
//!
//! # Posting globally
//!
//! A global post does not wait for Redis, and waits for another thread only at a block
//! boundary of the publish queue, but it is not wait-free:
//!
//! | step | progress guarantee |
//! |---|---|
//! | encoding: MessagePack into the thread's scratch buffer, copied into the queue's slot (inline up to 64 bytes); JSON, or a larger record, into a buffer of its own | a small Native message allocates nothing once the thread's scratch buffer has grown to it; otherwise the allocator's |
//! | the outage bound and the ticket | wait-free: one `fetch_add` each |
//! | the push onto the publish queue | crossbeam's `SegQueue::push`: lock-free except at a block boundary (once per 31 posts): the push that reserves a block's last slot installs the next block with two stores after its CAS, and until they land every other push waits for it, also when it is preempted in between |
//! | waking the publisher | a fence and a load; only a post that finds the publisher asleep wakes its task, and waking a tokio task may take the runtime's scheduler lock |
//!
//! So under load, while the publisher is busy sending the previous batch, a global post is
//! lock-free apart from the allocator (for large messages) and the block boundary; at low
//! load one post per batch wakes the publisher.
//!
//! A small post allocates nothing because a buffer allocated on the posting thread and
//! freed on the publisher's is expensive with glibc's allocator: it goes back to the
//! poster's arena under a lock and is merged on the next allocation there. That was about a
//! fifth of the CPU of the `global_throughput` bench, and taking it out raised its rate by
//! about 45% (see the README's Performance section).
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
//! never held while user code runs) and, through a session, the session's. Removing a stream
//! (closing its session, dropping it) also waits for the posts still writing the positions it
//! had not read, and for the stream itself if it is between the two stores of a read; neither
//! ever waits, so these waits end. Replacing a channel's snapshot that posts made light
//! calls `membarrier` ([above](#what-a-snapshot-borrow-costs)). A write copies one
//! root-to-leaf path of the trie: at most 32 entries per level, `log32 n` levels, so 100,000
//! listeners on one channel cost three levels per write instead of a 100,000-entry copy.
//!
//! # Measured
//!
//! The figures (criterion, beside `tokio::sync::broadcast` in the same run) and the machine
//! they were measured on are in the README, section "Performance".
