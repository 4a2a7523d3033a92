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

/// A bounded lock-free multi-producer, single-consumer queue. A push is one CAS on the
/// producer index plus one store of the cell's sequence number; a pop (by the one
/// [`Consumer`]) is plain loads and stores; nothing allocates after [`Ring::new`].
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
// position while `seq == pos`, and only read by the single dequeuer (holder of the unique
// `Consumer`, or `&mut Ring`) while `seq == pos + 1`; those windows never overlap, so `&Ring`
// can be shared when `T: Send`.
unsafe impl<T: Send> Sync for Ring<T> {}

impl<T> Ring<T> {
    /// A ring holding at least `capacity` values (rounded up to a power of two, minimum 2),
    /// and its one [`Consumer`].
    pub(crate) fn new(capacity: usize) -> (Self, Consumer) {
        let cap = capacity.max(2).next_power_of_two();
        let buf = (0..cap)
            .map(|i| Cell {
                seq: AtomicUsize::new(i),
                value: UnsafeCell::new(MaybeUninit::uninit()),
            })
            .collect();
        let ring = Self {
            buf,
            mask: cap - 1,
            head: CachePadded(AtomicUsize::new(0)),
            tail: CachePadded(AtomicUsize::new(0)),
        };
        let consumer = Consumer { ring: ring.id() };
        (ring, consumer)
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

    /// Removes the oldest value, if one is ready. Only the holder of the ring's unique
    /// [`Consumer`] can call this, so dequeues never race (no CAS needed).
    ///
    /// # Panics
    /// If `consumer` belongs to another ring.
    #[inline]
    pub(crate) fn pop(&self, consumer: &mut Consumer) -> Option<T> {
        assert_eq!(consumer.ring, self.id(), "Consumer of another ring");
        self.pop_exclusive()
    }

    /// Dequeue. Callers must be the only dequeuer: they hold the ring's `Consumer` mutably
    /// (`pop`) or the ring itself mutably (`drop`).
    #[inline]
    fn pop_exclusive(&self) -> Option<T> {
        let pos = self.head.load(Relaxed);
        let cell = &self.buf[pos & self.mask];
        if cell.seq.load(Acquire) != pos.wrapping_add(1) {
            // Empty (or the producer of `pos` has not finished writing yet).
            return None;
        }
        // SAFETY: `seq == pos + 1` (Acquire) means the producer of `pos` finished writing the
        // value; we are the only dequeuer (see above), so nobody else reads it, and producers
        // do not touch the cell until we publish `seq = pos + capacity` below.
        let v = cell.value.with(|p| unsafe { (*p).assume_init_read() });
        self.head.store(pos.wrapping_add(1), Relaxed);
        cell.seq.store(pos.wrapping_add(self.mask + 1), Release);
        Some(v)
    }

    fn id(&self) -> usize {
        self.buf.as_ptr() as usize
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
        // `&mut self`: we are the only dequeuer.
        while self.pop_exclusive().is_some() {}
    }
}

/// The right to dequeue from one [`Ring`]: exactly one exists per ring (made by
/// [`Ring::new`]), not `Clone`, so holding it mutably proves no other dequeue runs.
#[derive(Debug)]
pub(crate) struct Consumer {
    ring: usize,
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fifo_and_full() {
        let (r, mut c) = Ring::new(3);
        assert_eq!(r.capacity(), 4);
        for i in 0..4 {
            r.push(i).unwrap();
        }
        assert_eq!(r.push(9), Err(9));
        assert_eq!(r.len(), 4);
        for lap in 0..10 {
            assert_eq!(r.pop(&mut c), Some(lap));
            r.push(lap + 4).unwrap();
        }
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn drop_releases_queued_values() {
        let v = std::sync::Arc::new(());
        let (r, _c) = Ring::new(4);
        r.push(v.clone()).unwrap();
        r.push(v.clone()).unwrap();
        assert_eq!(std::sync::Arc::strong_count(&v), 3);
        drop(r);
        assert_eq!(std::sync::Arc::strong_count(&v), 1);
    }

    #[test]
    fn concurrent_producers_deliver_everything() {
        let (r, mut c) = Ring::new(64);
        let r = std::sync::Arc::new(r);
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
            if let Some(v) = r.pop(&mut c) {
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
        assert_eq!(r.pop(&mut c), None);
    }

    #[test]
    #[should_panic(expected = "Consumer of another ring")]
    fn consumer_is_bound_to_its_ring() {
        let (a, _ca) = Ring::<u8>::new(2);
        let (_b, mut cb) = Ring::<u8>::new(2);
        let _ = a.pop(&mut cb);
    }
}
