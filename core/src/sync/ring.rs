//! Bounded, pre-allocated multi-producer ring buffer (Dmitry Vyukov's bounded MPMC queue).

use std::mem::MaybeUninit;

use super::cell::UnsafeCell;
use super::{
    spin_hint, AtomicUsize, CachePadded, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};

struct Cell<T> {
    /// Lap-stamped sequence number: `pos` when the cell is empty and writable for position
    /// `pos`, `pos + 1` when it holds the value written for `pos`.
    seq: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

/// A bounded lock-free queue. Every operation is one CAS on the producer or consumer index plus
/// one store of the cell's sequence number; nothing allocates after [`Ring::new`].
///
/// Capacity is rounded up to a power of two, and is at least 2.
pub(crate) struct Ring<T> {
    buf: Box<[Cell<T>]>,
    mask: usize,
    /// Next position to dequeue.
    head: CachePadded<AtomicUsize>,
    /// Next position to enqueue.
    tail: CachePadded<AtomicUsize>,
}

// SAFETY: values are moved in by one producer and out by one consumer; ownership of each cell's
// value is handed over through its `seq` (Release store / Acquire load), so `T: Send` suffices.
unsafe impl<T: Send> Send for Ring<T> {}
// SAFETY: a cell's value is only written by the producer that won the CAS on `tail` for that
// position while `seq == pos`, and only read by the consumer that won the CAS on `head` while
// `seq == pos + 1`; those windows never overlap, so `&Ring` can be shared when `T: Send`.
unsafe impl<T: Send> Sync for Ring<T> {}

impl<T> Ring<T> {
    /// A ring holding at least `capacity` values (rounded up to a power of two, minimum 2).
    pub(crate) fn new(capacity: usize) -> Self {
        let cap = capacity.max(2).next_power_of_two();
        let buf = (0..cap)
            .map(|i| Cell {
                seq: AtomicUsize::new(i),
                value: UnsafeCell::new(MaybeUninit::uninit()),
            })
            .collect();
        Self {
            buf,
            mask: cap - 1,
            head: CachePadded(AtomicUsize::new(0)),
            tail: CachePadded(AtomicUsize::new(0)),
        }
    }

    /// The real capacity.
    pub(crate) fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Appends `value`, or gives it back when the ring is full.
    pub(crate) fn push(&self, value: T) -> Result<(), T> {
        let mut pos = self.tail.load(Relaxed);
        loop {
            let cell = &self.buf[pos & self.mask];
            let seq = cell.seq.load(Acquire);
            let diff = seq.wrapping_sub(pos) as isize;
            if diff == 0 {
                match self
                    .tail
                    .compare_exchange(pos, pos.wrapping_add(1), Relaxed, Relaxed)
                {
                    Ok(_) => {
                        // SAFETY: we won position `pos` while its cell had `seq == pos`: the
                        // cell is empty and no other producer can win the same position, and
                        // the consumer only reads once it sees `seq == pos + 1` (below).
                        cell.value.with_mut(|p| unsafe { (*p).write(value) });
                        cell.seq.store(pos.wrapping_add(1), Release);
                        return Ok(());
                    }
                    Err(actual) => pos = actual,
                }
            } else if diff < 0 {
                // The cell still holds the value from one lap ago: full.
                return Err(value);
            } else {
                spin_hint();
                pos = self.tail.load(Relaxed);
            }
        }
    }

    /// Removes the oldest value, if one is ready.
    pub(crate) fn pop(&self) -> Option<T> {
        let mut pos = self.head.load(Relaxed);
        loop {
            let cell = &self.buf[pos & self.mask];
            let seq = cell.seq.load(Acquire);
            let diff = seq.wrapping_sub(pos.wrapping_add(1)) as isize;
            if diff == 0 {
                match self
                    .head
                    .compare_exchange(pos, pos.wrapping_add(1), Relaxed, Relaxed)
                {
                    Ok(_) => {
                        // SAFETY: `seq == pos + 1` (Acquire) means the producer of `pos`
                        // finished writing the value; winning the CAS on `head` makes us its
                        // only reader, and producers do not touch the cell until we publish
                        // `seq = pos + capacity` below.
                        let v = cell.value.with(|p| unsafe { (*p).assume_init_read() });
                        cell.seq.store(pos.wrapping_add(self.mask + 1), Release);
                        return Some(v);
                    }
                    Err(actual) => pos = actual,
                }
            } else if diff < 0 {
                // Empty (or the producer of `pos` has not finished writing yet).
                return None;
            } else {
                spin_hint();
                pos = self.head.load(Relaxed);
            }
        }
    }

    /// Number of values queued (a snapshot; exact when no operation is in progress).
    pub(crate) fn len(&self) -> usize {
        let head = self.head.load(Acquire);
        let tail = self.tail.load(Acquire);
        tail.wrapping_sub(head).min(self.capacity())
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        while self.pop().is_some() {}
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fifo_and_full() {
        let r = Ring::new(3);
        assert_eq!(r.capacity(), 4);
        for i in 0..4 {
            r.push(i).unwrap();
        }
        assert_eq!(r.push(9), Err(9));
        assert_eq!(r.len(), 4);
        for lap in 0..10 {
            assert_eq!(r.pop(), Some(lap));
            r.push(lap + 4).unwrap();
        }
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn drop_releases_queued_values() {
        let v = std::sync::Arc::new(());
        let r = Ring::new(4);
        r.push(v.clone()).unwrap();
        r.push(v.clone()).unwrap();
        assert_eq!(std::sync::Arc::strong_count(&v), 3);
        drop(r);
        assert_eq!(std::sync::Arc::strong_count(&v), 1);
    }

    #[test]
    fn concurrent_producers_deliver_everything() {
        let r = std::sync::Arc::new(Ring::new(64));
        let producers: Vec<_> = (0..2)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        let mut v = t * 1_000_000 + i;
                        while let Err(back) = r.push(v) {
                            v = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut last = [None::<u64>; 2];
        let mut got = 0;
        while got < 20_000 {
            if let Some(v) = r.pop() {
                let t = (v / 1_000_000) as usize;
                let i = v % 1_000_000;
                assert!(last[t] < Some(i), "per-producer FIFO");
                last[t] = Some(i);
                got += 1;
            } else {
                std::thread::yield_now();
            }
        }
        for p in producers {
            p.join().unwrap();
        }
        assert_eq!(r.pop(), None);
    }
}
