//! What registrations cost in heap memory, measured with a counting global allocator.
//!
//! Run with `cargo run --release --example memory`; prints a Markdown table. Each row creates
//! `N` registrations on a fresh bus, divides the change in live heap bytes (and live
//! allocations) by `N`, then drops them and checks that the heap returns to where it was.
//! Vectors holding the handles are allocated before measuring, so the table counts what the
//! bus allocates; the handles' own inline sizes are printed below it.
//!
//! The library forbids `unsafe`; this example needs it for one thing, a `GlobalAlloc` that
//! forwards to the system allocator and counts.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::mem::size_of;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use evbus::{Bus, Channel, ListenerId, MessageScope, MessageStream, Session};

/// The system allocator, counting live bytes and live allocations.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_BLOCKS: AtomicIsize = AtomicIsize::new(0);

/// Live allocations by size (the last bucket holds every larger one), for the breakdown that
/// `EVBUS_MEMORY_SIZES=1` prints: where a row's bytes go.
const SIZES: usize = 1025;
static LIVE_BY_SIZE: [AtomicIsize; SIZES] = [const { AtomicIsize::new(0) }; SIZES];

fn by_size(size: usize) -> &'static AtomicIsize {
    &LIVE_BY_SIZE[size.min(SIZES - 1)]
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees are this allocator's; the counters do not touch the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Relaxed);
        LIVE_BLOCKS.fetch_add(1, Relaxed);
        by_size(layout.size()).fetch_add(1, Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` needs.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Relaxed);
        by_size(layout.size()).fetch_sub(1, Relaxed);
        // SAFETY: `ptr` was allocated by `alloc` above, that is by `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        by_size(layout.size()).fetch_sub(1, Relaxed);
        by_size(new_size).fetch_add(1, Relaxed);
        // SAFETY: as for `dealloc`; `new_size` is the caller's, checked by its contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const N: usize = 10_000;

/// Live heap bytes and live allocations now.
#[derive(Clone, Copy)]
struct Live {
    bytes: isize,
    blocks: isize,
}

/// Live allocations by size now; on the stack, so taking it allocates nothing.
fn live_by_size() -> [isize; SIZES] {
    std::array::from_fn(|size| LIVE_BY_SIZE[size].load(Relaxed))
}

fn live() -> Live {
    Live {
        bytes: LIVE_BYTES.load(Relaxed),
        blocks: LIVE_BLOCKS.load(Relaxed),
    }
}

/// One row of the table.
struct Row {
    what: &'static str,
    bytes: f64,
    blocks: f64,
    /// Live bytes left after the teardown (and 256 more channel handles made and dropped),
    /// bus still alive.
    retained: isize,
    /// Live bytes left after dropping the bus too.
    leaked: isize,
    /// Per allocation size (bytes; the largest bucket means at least that), the change in
    /// live allocations, divided by N: nonzero ones only.
    sizes: Vec<(usize, f64)>,
}

/// On a fresh, warmed-up bus: `setup` pushes `N` items (whatever keeps its registrations
/// alive) into a vector allocated before the baseline, so only the bus's allocations are
/// counted; `teardown` then undoes them. Returns the per-item cost and what is left.
fn measure<T>(
    what: &'static str,
    setup: impl Fn(&Bus, &mut Vec<T>),
    teardown: impl Fn(&Bus, Vec<T>),
) -> Row {
    let start = live();
    let bus = Bus::local();
    warm_up(&bus);
    let mut held = Vec::with_capacity(N);
    let sizes_before = live_by_size();
    let before = live();
    setup(&bus, &mut held);
    let after = live();
    let sizes_after = live_by_size();
    assert_eq!(held.len(), N);
    assert_eq!(
        held.capacity(),
        N,
        "the holder must not grow while measuring"
    );
    teardown(&bus, held);
    // A forgotten channel is unlinked from the name table at once but freed by the table's
    // deferred reclamation, after some more table operations: do some.
    for _ in 0..256 {
        drop(bus.channel::<u64>("settle"));
    }
    // `held` was freed by the teardown: add its bytes back to compare with `before`.
    let retained = live().bytes - before.bytes + (N * size_of::<T>()) as isize;
    drop(bus);
    let leaked = live().bytes - start.bytes;
    Row {
        what,
        bytes: (after.bytes - before.bytes) as f64 / N as f64,
        blocks: (after.blocks - before.blocks) as f64 / N as f64,
        retained,
        leaked,
        sizes: (0..SIZES)
            .map(|size| {
                (
                    size,
                    (sizes_after[size] - sizes_before[size]) as f64 / N as f64,
                )
            })
            .filter(|(_, each)| each.abs() >= 0.005)
            .collect(),
    }
}

/// A first registration, handle and post of each kind, so that lazily built state (the
/// thread's counter stripe, the name table's first allocation) is not charged to a row.
fn warm_up(bus: &Bus) {
    let warm = bus.channel::<u64>("warm-up");
    let id = bus.messages().add_listener("warm-up", |x: &u64| {
        black_box(*x);
    });
    let stream = bus.messages().create_stream::<u64>("warm-up");
    warm.post(1, MessageScope::Local).unwrap();
    bus.messages().remove_listener("warm-up", id);
    drop(stream);
    drop(bus.session());
}

fn names(prefix: &str) -> Vec<String> {
    (0..N).map(|i| format!("{prefix}-{i:05}")).collect()
}

fn noop(x: &u64) {
    black_box(*x);
}

fn main() {
    // Thread-local state the bus builds on first use stays for the thread's life: build it
    // before taking the starting point.
    warm_up(&Bus::local());
    let mut rows = Vec::with_capacity(8);
    // The names are built before measuring, so the table counts only the registrations.
    let handle_names = names("handle");
    let listener_names = names("listened");
    let process_start = live();

    rows.push(measure(
        "idle stream (10,000 on one channel)",
        |bus, streams| {
            for _ in 0..N {
                streams.push(bus.messages().create_stream::<u64>("streams"));
            }
            assert_eq!(bus.stats().streams, N as u64);
        },
        |_, streams| drop(streams),
    ));

    rows.push(measure(
        "stream holding 1 message (idle stream + 1 post)",
        |bus, streams| {
            for _ in 0..N {
                streams.push(bus.messages().create_stream::<u64>("streams"));
            }
            let delivery = bus
                .messages()
                .post_message("streams", 7u64, MessageScope::Local);
            assert_eq!(delivery.unwrap().local_receivers(), N);
        },
        |_, streams| drop(streams),
    ));

    rows.push(measure(
        "listener (10,000 on one channel)",
        |bus, ids| {
            for _ in 0..N {
                ids.push(bus.messages().add_listener("listeners", noop));
            }
            assert_eq!(bus.stats().listeners, N as u64);
        },
        |bus, ids| {
            for id in ids {
                assert!(bus.messages().remove_listener("listeners", id));
            }
        },
    ));

    rows.push(measure(
        "channel held by a `Channel<u64>` handle, no receiver",
        |bus, handles| {
            for name in &handle_names {
                handles.push(bus.channel::<u64>(name));
            }
            assert_eq!(bus.stats().channels, N as u64);
        },
        |_, handles| drop(handles),
    ));

    rows.push(measure(
        "channel with one listener (no handle)",
        |bus, ids| {
            for name in &listener_names {
                ids.push(bus.messages().add_listener(name.as_str(), noop));
            }
            assert_eq!(bus.stats().channels, N as u64);
        },
        |bus, ids| {
            for (name, id) in listener_names.iter().zip(ids) {
                assert!(bus.messages().remove_listener(name, id));
            }
        },
    ));

    rows.push(measure(
        "session with one listener (10,000 on one channel)",
        |bus, sessions| {
            for _ in 0..N {
                let session = bus.session();
                session.messages().add_listener("sessions", noop);
                sessions.push(session);
            }
            assert_eq!(bus.stats().listeners, N as u64);
        },
        |_, sessions| drop(sessions),
    ));

    rows.push(measure(
        "empty session",
        |bus, sessions| {
            for _ in 0..N {
                sessions.push(bus.session());
            }
        },
        |_, sessions| drop(sessions),
    ));

    let empty_bus = {
        let before = live();
        let bus = Bus::local();
        let cost = live().bytes - before.bytes;
        drop(bus);
        cost
    };
    // Before printing: stdout's buffer is allocated on first use. The rows' size breakdowns
    // are the example's own.
    let breakdowns: usize = rows
        .iter()
        .map(|row| row.sizes.capacity() * size_of::<(usize, f64)>())
        .sum();
    let leaked = live().bytes - process_start.bytes - breakdowns as isize;

    println!("Heap per registration, N = {N} (live bytes and live allocations, divided by N):");
    println!();
    println!(
        "| what | bytes each | allocations each | left after removal, bus alive ¹ | left after dropping the bus |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for row in &rows {
        println!(
            "| {} | {:.1} | {:.2} | {} B | {} B |",
            row.what, row.bytes, row.blocks, row.retained, row.leaked
        );
    }
    println!();
    println!(
        "¹ Removed channels are freed by the name table's (papaya's) deferred reclamation: a few \
         KB here is a batch still waiting. The rest, in the 10,000-channel rows, is the table \
         itself, which does not shrink."
    );
    println!(
        "Not counted above, the caller's own storage: `MessageStream<u64>` {} B, `Channel<u64>` \
         {} B, `Session` {} B, `ListenerId` {} B, `Bus` {} B.",
        size_of::<MessageStream<u64>>(),
        size_of::<Channel<u64>>(),
        size_of::<Session>(),
        size_of::<ListenerId>(),
        size_of::<Bus>(),
    );
    println!("An empty `Bus::local()` allocates {empty_bus} B.");

    if std::env::var_os("EVBUS_MEMORY_SIZES").is_some() {
        println!();
        println!(
            "Where the bytes go: allocation size x live allocations each (EVBUS_MEMORY_SIZES)."
        );
        for row in &rows {
            let sizes: Vec<String> = row
                .sizes
                .iter()
                .map(|(size, each)| {
                    let size = if *size == SIZES - 1 {
                        format!(">={size}")
                    } else {
                        size.to_string()
                    };
                    format!("{size} B x {each:.2}")
                })
                .collect();
            println!("- {}: {}", row.what, sizes.join(", "));
        }
    }

    println!();
    println!(
        "After dropping everything: live heap is {leaked:+} B from the start ({}).",
        if leaked.unsigned_abs() <= 1024 {
            "returned to the start"
        } else {
            "NOT returned to the start"
        }
    );
}
