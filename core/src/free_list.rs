//! Lock-free free list of slot indices: a Treiber stack over a pre-allocated `next` array with
//! a tagged head (32-bit ABA tag + index + 1), so push and pop never allocate.

use crate::sync::Ordering::Release;
use crate::sync::{AtomicU32, AtomicU64, CachePadded, Ordering::Acquire, Ordering::Relaxed};

/// Maximum number of slots (index + 1 must fit in 32 bits with 0 meaning "empty").
pub(crate) const MAX_SLOTS: usize = u32::MAX as usize - 1;

pub(crate) struct FreeList {
    /// `tag << 32 | (top index + 1)`, 0 in the low half = empty. The tag changes on every
    /// successful push/pop, so a CAS based on a stale head fails even when the same index is
    /// back on top (ABA); it wraps after 2^32 operations between one thread's load and CAS.
    head: CachePadded<AtomicU64>,
    /// `next[i]` = index + 1 of the entry below `i` (0 = bottom). One cache line each: the
    /// thread freeing slot `i` writes `next[i]`, and neighbouring slots are freed by other
    /// threads.
    next: Box<[Link]>,
}

#[repr(align(64))]
struct Link(AtomicU32);

impl FreeList {
    /// A list holding `0..len`, lowest index on top.
    pub(crate) fn new(len: usize) -> Self {
        assert!(len <= MAX_SLOTS, "at most {MAX_SLOTS} slots");
        let next = (0..len)
            .map(|i| Link(AtomicU32::new(if i + 1 < len { i as u32 + 2 } else { 0 })))
            .collect();
        Self {
            head: CachePadded(AtomicU64::new(if len > 0 { 1 } else { 0 })),
            next,
        }
    }

    #[inline]
    pub(crate) fn pop(&self) -> Option<u32> {
        let mut head = self.head.load(Acquire);
        loop {
            let top = head as u32;
            if top == 0 {
                return None;
            }
            let index = top - 1;
            let below = self.next[index as usize].0.load(Relaxed);
            let tag = (head >> 32).wrapping_add(1);
            match self
                .head
                .compare_exchange(head, (tag << 32) | below as u64, Acquire, Acquire)
            {
                Ok(_) => return Some(index),
                Err(actual) => head = actual,
            }
        }
    }

    #[inline]
    pub(crate) fn push(&self, index: u32) {
        let mut head = self.head.load(Relaxed);
        loop {
            self.next[index as usize].0.store(head as u32, Relaxed);
            let tag = (head >> 32).wrapping_add(1);
            match self.head.compare_exchange(
                head,
                (tag << 32) | (index as u64 + 1),
                Release,
                Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => head = actual,
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn pops_every_index_once() {
        let f = FreeList::new(4);
        let mut got: Vec<_> = std::iter::from_fn(|| f.pop()).collect();
        got.sort();
        assert_eq!(got, [0, 1, 2, 3]);
        f.push(2);
        f.push(0);
        assert_eq!(f.pop(), Some(0));
        assert_eq!(f.pop(), Some(2));
        assert_eq!(f.pop(), None);
        assert_eq!(FreeList::new(0).pop(), None);
    }

    #[test]
    fn concurrent_pop_push_never_duplicates() {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let f = std::sync::Arc::new(FreeList::new(8));
        let owned: std::sync::Arc<Vec<AtomicBool>> =
            std::sync::Arc::new((0..8).map(|_| AtomicBool::new(false)).collect());
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (f, owned) = (f.clone(), owned.clone());
                std::thread::spawn(move || {
                    for _ in 0..50_000 {
                        if let Some(i) = f.pop() {
                            assert!(
                                !owned[i as usize].swap(true, SeqCst),
                                "index handed out twice"
                            );
                            owned[i as usize].store(false, SeqCst);
                            f.push(i);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut got: Vec<_> = std::iter::from_fn(|| f.pop()).collect();
        got.sort();
        assert_eq!(got, (0..8).collect::<Vec<_>>());
    }
}
