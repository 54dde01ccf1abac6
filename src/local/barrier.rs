//! An asymmetric fence pair: a [`light`] fence, which costs a frequent path nothing on Linux,
//! and a [`heavy`] one for the rare path it must synchronise with.
//!
//! Used where one side runs on every message and the other almost never: a stream's read and
//! its sink's leave (`local/stream.rs`). Each side stores, fences and loads (Dekker's pattern):
//!
//! ```text
//! frequent:  store A;  light();  load B
//! rare:      store B;  heavy();  load A
//! ```
//!
//! and then at least one of the two loads sees the other side's store.
//!
//! - **On Linux**, `heavy` is `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`: the kernel makes
//!   every thread of the process that is running execute a full fence, and a thread that is
//!   not running passes through the scheduler's, before the call returns. So `light` only has
//!   to keep the compiler from moving the load above the store: a compiler fence, no
//!   instruction. The rare side pays the call: about 120 ns here with no other thread of the
//!   process running (`churn/streams/one_at_a_time`), plus an interrupt to each CPU that is
//!   running one.
//! - **Elsewhere**, or if the kernel refuses the command, `heavy` is a `SeqCst` fence, and
//!   the frequent side must pass a `SeqCst` fence of its own instead of `light` (one locked
//!   instruction on x86-64): two such fences pair by themselves.
//!
//! Which one applies is decided once, by [`prepare`], before the first frequent side that
//! relies on it exists; it never changes afterwards. `light` does not look it up: the
//! frequent side learns it from `prepare` and keeps it with its own data, where it reads it
//! anyway (a stream: in the word it loads after the fence, which its sink's `bind` writes).
//! The same technique as Linux's RCU and folly's `asymmetricLightBarrier`; seize, which
//! papaya uses, has it too, privately.
//!
//! In the loom models `light` and `heavy` are both loom's `SeqCst` fence: loom checks the
//! protocol built on the pair as the fallback runs it (store, fence, load on both sides),
//! which is what the kernel's barrier provides too. Built with `--cfg evbus_fence_only`,
//! the process never registers, so the tests run the fallback (`.ci/run` does, for the
//! streams' tests).

#![allow(unsafe_code)] // The system calls: see the SAFETY comments.

#[cfg(not(evbus_loom))]
use std::sync::atomic::{compiler_fence, AtomicBool, Ordering::*};

use crate::sync::{fence, Ordering::SeqCst};

/// Whether [`heavy`] is the kernel's barrier, so that [`light`] may be a compiler fence.
#[cfg(not(evbus_loom))]
static KERNEL: AtomicBool = AtomicBool::new(false);

/// Decides, once for the process, which pair applies, and returns whether the frequent side
/// may use [`light`] (else it must use a `SeqCst` fence). Call it before the first frequent
/// side that relies on the pair exists: whatever reaches that side afterwards (the thread
/// that runs it, the rare side) comes after this call, so it sees the decision.
pub(crate) fn prepare() -> bool {
    #[cfg(not(evbus_loom))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| KERNEL.store(kernel::register(), Relaxed));
        KERNEL.load(Relaxed)
    }
    #[cfg(evbus_loom)]
    true
}

/// The frequent side's fence, between its store and its load, where [`prepare`] returned
/// true.
#[inline(always)]
pub(crate) fn light() {
    #[cfg(not(evbus_loom))]
    compiler_fence(SeqCst);
    #[cfg(evbus_loom)]
    fence(SeqCst);
}

/// The rare side's fence, between its store and its load.
pub(crate) fn heavy() {
    #[cfg(not(evbus_loom))]
    if KERNEL.load(Relaxed) {
        kernel::barrier();
        return;
    }
    fence(SeqCst);
}

#[cfg(all(target_os = "linux", not(evbus_loom)))]
mod kernel {
    // From <linux/membarrier.h>; the libc crate does not name them.
    const QUERY: libc::c_int = 0;
    const PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
    const REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

    fn membarrier(command: libc::c_int) -> libc::c_long {
        // SAFETY: membarrier takes two integers and a CPU id, touches no memory of ours, and
        // returns an error for a command the kernel does not know.
        unsafe { libc::syscall(libc::SYS_membarrier, command, 0 as libc::c_uint, 0) }
    }

    /// Registers the process for private expedited barriers: false when the kernel has no
    /// membarrier (before 4.14), or it is filtered out (seccomp), or refuses.
    pub(super) fn register() -> bool {
        if cfg!(evbus_fence_only) {
            return false;
        }
        let supported = membarrier(QUERY);
        supported >= 0
            && supported & libc::c_long::from(PRIVATE_EXPEDITED) != 0
            && membarrier(REGISTER_PRIVATE_EXPEDITED) == 0
    }

    pub(super) fn barrier() {
        // After a successful registration this cannot fail (the kernel's documented errors
        // are an unknown command and an unregistered process); were it to, every thread
        // would not have fenced, and going on would lose messages silently.
        assert_eq!(
            membarrier(PRIVATE_EXPEDITED),
            0,
            "membarrier failed after registering"
        );
    }
}

#[cfg(all(not(target_os = "linux"), not(evbus_loom)))]
mod kernel {
    pub(super) fn register() -> bool {
        false
    }

    pub(super) fn barrier() {
        unreachable!("never registered")
    }
}
