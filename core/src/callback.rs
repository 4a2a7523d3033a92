//! The callback-dispatch baseline (kernel `ib_core` style), for benchmarks and for the seed
//! deadlock test.

use std::fmt;

use crate::completion::Completion;
use crate::error::Error;
use crate::route::Routed;
use crate::stats::{Counters, DispatchStats, Tally};
use crate::sync::{
    AtomicU64, FreeList, Ordering::AcqRel, Ordering::Acquire, Ordering::Release, DEFAULT_SHARDS,
    MAX_SLOTS,
};
use crate::wr_id::WrId;

/// Identifies a callback registered with [`CallbackDispatcher::register`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConsumerId(u32);

type Callback = Box<dyn Fn(&Completion) + Send + Sync>;

struct Consumer {
    callback: Callback,
    /// Its free-list shard and counter stripe (each consumer recycles its own slots, like a
    /// `Dispatcher` handle).
    home: usize,
}

/// Dispatch by callbacks, the way the kernel's `ib_core` does it (`ib_cqe.done`): a registry
/// of callbacks, each completion's `wr_id` names the slot and thereby the consumer, and the
/// consumer's callback runs **on the polling thread**. Callbacks typically take the consumer's
/// lock (the same lock the consumer's own code takes) to record the completion.
///
/// It validates ids exactly like [`Dispatcher`](crate::Dispatcher) (slot table, generations,
/// the same lock-free free list), so a benchmark comparing the two measures the dispatch style,
/// not a different amount of bookkeeping. It is the baseline `tokio-rdma` replaces: running
/// consumer code (and its locks) inside the event loop is what made the seed deadlock possible
/// (see the crate docs).
///
/// The dispatch bench (`benches/benches/dispatch.rs`) runs it, on a poller thread separate from
/// the consumers, with two kinds of callback: the kernel's usual one, which takes the
/// consumer's `Mutex` to record the completion into the consumer's state (`callback_locked`),
/// and a lock-free one, which publishes into consumer-owned atomics that the consumer reads
/// (`callback_lockfree`). The second is the best case for callbacks: the style's cost without
/// the lock. It only fits work that a few atomic operations can do; anything larger (a state
/// machine, a re-post under the consumer's lock) brings the lock back.
pub struct CallbackDispatcher {
    /// `generation << 32 | (consumer + 1)`, low half 0 = free.
    slots: Box<[AtomicU64]>,
    free: FreeList,
    callbacks: Vec<Consumer>,
    counters: Counters,
}

impl CallbackDispatcher {
    /// A dispatcher with `capacity` slots and no callbacks.
    ///
    /// # Panics
    /// If `capacity` exceeds `u32::MAX - 1`.
    pub fn new(capacity: usize) -> Self {
        assert!(capacity <= MAX_SLOTS, "capacity above {MAX_SLOTS}");
        let free = FreeList::new(capacity, DEFAULT_SHARDS);
        Self {
            slots: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            counters: Counters::new(free.shards()),
            free,
            callbacks: Vec::new(),
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Registers a consumer's callback (cold path: allocates).
    ///
    /// # Panics
    /// After `u32::MAX - 1` registrations.
    pub fn register<F>(&mut self, callback: F) -> ConsumerId
    where
        F: Fn(&Completion) + Send + Sync + 'static,
    {
        let id = u32::try_from(self.callbacks.len())
            .ok()
            .filter(|id| *id < u32::MAX)
            .expect("too many consumers");
        let home = self.free.home_of(id as usize);
        self.callbacks.push(Consumer {
            callback: Box::new(callback),
            home,
        });
        ConsumerId(id)
    }

    /// Reserves a slot whose completion will be handed to `consumer`'s callback.
    ///
    /// # Errors
    /// [`Error::Exhausted`] when every slot is in use.
    ///
    /// # Panics
    /// If `consumer` was not registered with this dispatcher.
    pub fn post(&self, consumer: ConsumerId) -> Result<WrId, Error> {
        let home = self
            .callbacks
            .get(consumer.0 as usize)
            .expect("unknown consumer")
            .home;
        let index = self.free.pop(home).ok_or(Error::Exhausted {
            capacity: self.capacity(),
        })?;
        let slot = &self.slots[index as usize];
        let generation = (slot.load(Acquire) >> 32) as u32;
        slot.store(
            ((generation as u64) << 32) | (consumer.0 as u64 + 1),
            Release,
        );
        Ok(WrId::new(index, generation))
    }

    /// Routes one completion; `stripe` becomes the consumer's counter stripe.
    #[inline]
    fn route(&self, c: &Completion, stripe: &mut usize) -> Routed {
        let id = WrId::from_raw(c.wr_id);
        let Some(slot) = self.slots.get(id.index() as usize) else {
            return Routed::Unknown;
        };
        let word = slot.load(Acquire);
        if (word >> 32) as u32 != id.generation() {
            return Routed::Stale;
        }
        let consumer = word as u32;
        if consumer == 0 {
            return Routed::Unknown;
        }
        let freed = (id.generation().wrapping_add(1) as u64) << 32;
        if slot.compare_exchange(word, freed, AcqRel, Acquire).is_err() {
            return Routed::Duplicate;
        }
        // Free first, like `ib_cqe.done` handlers that re-post from the callback.
        let consumer = &self.callbacks[consumer as usize - 1];
        *stripe = consumer.home;
        self.free.push(consumer.home, id.index());
        (consumer.callback)(c);
        Routed::Woken
    }

    /// Runs the callback for one completion on the calling thread.
    pub fn handle_completion(&self, c: Completion) -> Routed {
        let (mut tally, mut stripe) = (Tally::default(), 0);
        let r = self.route(&c, &mut stripe);
        tally.count(r);
        self.counters.add(stripe, &tally);
        r
    }

    /// Runs the callbacks for a batch; returns how many callbacks ran.
    pub fn handle_completions(&self, batch: &[Completion]) -> usize {
        let (mut tally, mut stripe) = (Tally::default(), 0);
        for c in batch {
            tally.count(self.route(c, &mut stripe));
        }
        self.counters.add(stripe, &tally);
        tally.routed_live()
    }

    /// A snapshot of the counters (`completed` = callbacks run).
    pub fn stats(&self) -> DispatchStats {
        self.counters.snapshot()
    }
}

impl fmt::Debug for CallbackDispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackDispatcher")
            .field("capacity", &self.capacity())
            .field("consumers", &self.callbacks.len())
            .finish_non_exhaustive()
    }
}
