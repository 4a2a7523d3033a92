//! Synchronisation primitives, switchable between `std` and [loom].
//!
//! This is the **only** module of the crate that contains `unsafe` code. Every primitive here
//! wraps an `UnsafeCell` behind a safe API whose soundness is enforced by an atomic state
//! machine, so the dispatcher and the inbox can be written in safe code on top of it:
//!
//! - [`AtomicWaker`]: a lock-free single-waker registration cell (the classic
//!   `REGISTERING`/`WAKING` protocol).
//! - `Ring` (crate-private): a bounded, pre-allocated ring buffer (Vyukov's bounded queue,
//!   multi-producer; dequeues by the one `Consumer` token holder), used by the inbox.
//! - [`CountingAllocator`]: a forwarding global allocator that counts allocations, for tests
//!   and benches asserting that hot paths allocate nothing.
//! - `Slot` (crate-private): the per-work-request state machine of the dispatcher, whose
//!   completion/resource/route cells are only touched by the party that won the transition
//!   into the state owning them.
//! - `SlotTable` (crate-private): the slots with their sharded lock-free free list (`FreeList`,
//!   Treiber stacks over a pre-allocated link array); it pairs every transition into FREE with
//!   a push and every pop with the transition out of FREE, which makes the popper a free
//!   slot's only writer.
//!
//! The atomics, `Arc` and `UnsafeCell` come from `std` normally and from `loom` when the crate
//! is built with `--cfg loom`, following tokio's `loom/mod.rs` pattern, so the very same code
//! is model-checked.
//!
//! [loom]: https://docs.rs/loom

mod atomic_waker;
mod cell;
mod counting_alloc;
mod free_list;
mod ring;
mod slot;
mod table;

pub use atomic_waker::AtomicWaker;
pub use counting_alloc::CountingAllocator;
pub(crate) use free_list::{FreeList, DEFAULT_SHARDS, MAX_SLOTS};
pub(crate) use ring::{Consumer, Ring};
pub(crate) use slot::{CompleteOutcome, OwnerTicket, Released, SlotSnapshot};
pub(crate) use table::SlotTable;

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    Arc,
};
#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    Arc,
};

/// Back-off hint inside a retry loop that waits for another thread's progress (a stale read):
/// a CPU spin hint normally, a yield under loom so the model checker schedules the other thread.
#[inline(always)]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// Pads and aligns a value to a cache line pair, so hot atomics written by different threads do
/// not false-share.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}
