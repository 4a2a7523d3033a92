//! A counting global allocator for allocation-free assertions in tests and benches.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
// Deliberately std, never loom: a global allocator runs outside any model.
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

/// Forwards to [`System`] and counts the allocations (`alloc`, `alloc_zeroed`, `realloc`) made
/// by a thread while it runs inside [`measure`](Self::measure); other threads (a test
/// harness, a logger) are not counted.
///
/// ```no_run
/// use tokio_rdma_core::sync::CountingAllocator;
///
/// #[global_allocator]
/// static ALLOC: CountingAllocator = CountingAllocator::new();
///
/// let (_, allocations) = ALLOC.measure(|| { /* hot path */ });
/// assert_eq!(allocations, 0);
/// ```
#[derive(Debug, Default)]
pub struct CountingAllocator {
    count: AtomicUsize,
}

impl CountingAllocator {
    /// A counter at zero.
    pub const fn new() -> Self {
        Self {
            count: AtomicUsize::new(0),
        }
    }

    /// Runs `f`, returning its result and how many allocations this thread made meanwhile.
    pub fn measure<T>(&self, f: impl FnOnce() -> T) -> (T, usize) {
        let before = self.count.load(Relaxed);
        let was = COUNTING.with(|c| c.replace(true));
        let out = f();
        COUNTING.with(|c| c.set(was));
        (out, self.count.load(Relaxed) - before)
    }

    #[inline]
    fn note(&self) {
        // `try_with`: allocations during thread-local teardown are not counted.
        if COUNTING.try_with(Cell::get).unwrap_or(false) {
            self.count.fetch_add(1, Relaxed);
        }
    }
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; counting touches neither the memory nor the layout.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.note();
        // SAFETY: our caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.note();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.note();
        // SAFETY: `ptr` was allocated by `System` (through us) with `layout`, as our caller
        // guarantees; the rest of the contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through us) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}
