//! Lock-free free list of slot indices, sharded so that threads reserving and freeing through
//! their own dispatcher handles do not contend on one head.
//!
//! Each shard is a Treiber stack with a tagged head (32-bit ABA tag + index + 1); all shards
//! link through one pre-allocated `next` array, so push and pop never allocate. A handle pops
//! from its home shard and steals from the others only when its own is empty; it pushes freed
//! indices onto its home shard, so in steady state a thread recycles its own slots without
//! touching a cache line another thread writes.

use crate::sync::Ordering::Release;
use crate::sync::{AtomicU32, AtomicU64, CachePadded, Ordering::Acquire, Ordering::Relaxed};

/// Maximum number of slots (index + 1 must fit in 32 bits with 0 meaning "empty").
pub(crate) const MAX_SLOTS: usize = u32::MAX as usize - 1;

/// Default number of shards (capped by the capacity): enough for the cores a CQ's consumers
/// usually run on; a pop that finds its shard empty scans the others, so more shards only
/// cost when the table is nearly exhausted.
pub(crate) const DEFAULT_SHARDS: usize = 8;

pub(crate) struct FreeList {
    /// Per shard: `tag << 32 | (top index + 1)`, 0 in the low half = empty. The tag changes on
    /// every successful push/pop, so a CAS based on a stale head fails even when the same
    /// index is back on top (ABA); it wraps after 2^32 operations between one thread's load
    /// and CAS.
    heads: Box<[CachePadded<AtomicU64>]>,
    /// `next[i]` = index + 1 of the entry below `i` (0 = bottom). One cache line each: the
    /// thread freeing slot `i` writes `next[i]`, and neighbouring slots are freed by other
    /// threads.
    next: Box<[Link]>,
}

#[repr(align(64))]
struct Link(AtomicU32);

impl FreeList {
    /// A list holding `0..len`, split into `shards` contiguous runs (at least one shard, at
    /// most `len`), lowest index on top of each.
    pub(crate) fn new(len: usize, shards: usize) -> Self {
        assert!(len <= MAX_SLOTS, "at most {MAX_SLOTS} slots");
        let shards = shards.clamp(1, len.max(1));
        let start = |s: usize| s * len / shards;
        let mut next: Vec<Link> = Vec::with_capacity(len);
        let mut heads = Vec::with_capacity(shards);
        for s in 0..shards {
            let (lo, hi) = (start(s), start(s + 1));
            next.extend(
                (lo..hi).map(|i| Link(AtomicU32::new(if i + 1 < hi { i as u32 + 2 } else { 0 }))),
            );
            heads.push(CachePadded(AtomicU64::new(if hi > lo {
                lo as u64 + 1
            } else {
                0
            })));
        }
        Self {
            heads: heads.into(),
            next: next.into(),
        }
    }

    /// Number of shards.
    #[inline]
    pub(crate) fn shards(&self) -> usize {
        self.heads.len()
    }

    /// The shard a handle numbered `n` calls home (cold path: divides).
    pub(crate) fn home_of(&self, n: usize) -> usize {
        n % self.heads.len()
    }

    /// Pops an index, from shard `home` (< [`shards`](Self::shards), see
    /// [`home_of`](Self::home_of)) if it has one, else from the next non-empty shard. `None`
    /// if every shard was empty when looked at.
    #[inline]
    pub(crate) fn pop(&self, home: usize) -> Option<u32> {
        if let Some(i) = self.pop_shard(home) {
            return Some(i);
        }
        self.steal(home)
    }

    #[cold]
    fn steal(&self, home: usize) -> Option<u32> {
        let n = self.heads.len();
        (home + 1..n).chain(0..home).find_map(|s| self.pop_shard(s))
    }

    #[inline]
    pub(super) fn pop_shard(&self, shard: usize) -> Option<u32> {
        let head_cell = &self.heads[shard];
        let mut head = head_cell.load(Acquire);
        loop {
            let top = head as u32;
            if top == 0 {
                return None;
            }
            let index = top - 1;
            let below = self.next[index as usize].0.load(Relaxed);
            let tag = (head >> 32).wrapping_add(1);
            match head_cell.compare_exchange(head, (tag << 32) | below as u64, Acquire, Acquire) {
                Ok(_) => return Some(index),
                Err(actual) => head = actual,
            }
        }
    }

    /// Pushes a freed index onto shard `home` (< [`shards`](Self::shards)).
    #[inline]
    pub(crate) fn push(&self, home: usize, index: u32) {
        let head_cell = &self.heads[home];
        let mut head = head_cell.load(Relaxed);
        loop {
            self.next[index as usize].0.store(head as u32, Relaxed);
            let tag = (head >> 32).wrapping_add(1);
            match head_cell.compare_exchange(
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
        let f = FreeList::new(4, 1);
        let mut got: Vec<_> = std::iter::from_fn(|| f.pop(0)).collect();
        got.sort();
        assert_eq!(got, [0, 1, 2, 3]);
        f.push(0, 2);
        f.push(0, 0);
        assert_eq!(f.pop(0), Some(0));
        assert_eq!(f.pop(0), Some(2));
        assert_eq!(f.pop(0), None);
        assert_eq!(FreeList::new(0, 8).pop(0), None);
        assert_eq!(FreeList::new(0, 8).shards(), 1);
    }

    #[test]
    fn shards_split_the_indices_and_steal_when_empty() {
        let f = FreeList::new(10, 4);
        assert_eq!(f.shards(), 4);
        assert_eq!(f.home_of(5), 1);
        // Shard 1 holds 2..5 (10 * 1 / 4 = 2 up to 10 * 2 / 4 = 5), lowest on top.
        assert_eq!(f.pop(1), Some(2));
        assert_eq!(f.pop(1), Some(3));
        assert_eq!(f.pop(1), Some(4));
        // Empty home: steal from the next shards, wrapping around.
        assert_eq!(f.pop(1), Some(5));
        let mut rest: Vec<_> = std::iter::from_fn(|| f.pop(1)).collect();
        rest.sort();
        assert_eq!(rest, [0, 1, 6, 7, 8, 9]);
        // Freed indices go to the freer's home shard.
        f.push(3, 0);
        f.push(3, 9);
        assert_eq!(f.pop(0), Some(9));
        assert_eq!(f.pop(3), Some(0));
        assert_eq!(f.pop(2), None);
        // More shards than slots: capped.
        assert_eq!(FreeList::new(3, 8).shards(), 3);
    }

    #[test]
    fn concurrent_pop_push_never_duplicates() {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let f = std::sync::Arc::new(FreeList::new(8, 2));
        let owned: std::sync::Arc<Vec<AtomicBool>> =
            std::sync::Arc::new((0..8).map(|_| AtomicBool::new(false)).collect());
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let (f, owned) = (f.clone(), owned.clone());
                std::thread::spawn(move || {
                    for n in 0..50_000 {
                        // Pop from one's own shard, free into either: indices migrate and
                        // both threads steal.
                        if let Some(i) = f.pop(t) {
                            assert!(
                                !owned[i as usize].swap(true, SeqCst),
                                "index handed out twice"
                            );
                            owned[i as usize].store(false, SeqCst);
                            f.push((t + n) % 2, i);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut got: Vec<_> = std::iter::from_fn(|| f.pop(0)).collect();
        got.sort();
        assert_eq!(got, (0..8).collect::<Vec<_>>());
    }
}
