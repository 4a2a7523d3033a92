//! Dispatch counters, shared by [`Dispatcher`](crate::Dispatcher) and
//! [`CallbackDispatcher`](crate::CallbackDispatcher).

use crate::route::Routed;
use crate::sync::{AtomicU64, CachePadded, Ordering::Relaxed};

/// A snapshot of a dispatcher's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DispatchStats {
    /// Completions stored for (and waking) a live [`Operation`](crate::Operation), or handed to
    /// a callback.
    pub completed: u64,
    /// Completions delivered with their resources into an inbox (routed slots).
    pub delivered: u64,
    /// Completions that freed an abandoned slot (its parked resources were dropped then), or
    /// whose routed delivery failed because the inbox was full or closed (see
    /// `undeliverable`).
    pub reclaimed: u64,
    /// Completions whose generation did not match the slot's (late duplicates, garbage).
    pub stale: u64,
    /// Completions whose slot index is out of range, or whose slot was never posted.
    pub unknown: u64,
    /// Second completions for a slot that already has one pending.
    pub duplicate: u64,
    /// Routed completions that could not be put into their inbox (full or closed); also
    /// counted in `reclaimed`. Non-zero means an inbox was sized below the number of receive
    /// slots routed to it.
    pub undeliverable: u64,
}

impl DispatchStats {
    /// Total completions handled (every outcome).
    pub fn total(&self) -> u64 {
        self.completed
            + self.delivered
            + self.reclaimed
            + self.stale
            + self.unknown
            + self.duplicate
    }
}

/// Counters, bumped once per batch from a local tally to keep the hot path cheap, and
/// striped like the free list (one cache line per shard) so threads do not contend on them.
pub(crate) struct Counters {
    stripes: Box<[CachePadded<[AtomicU64; 7]>]>,
}

/// Per-call tally, flushed into [`Counters`] once.
#[derive(Default, Clone, Copy)]
pub(crate) struct Tally([u64; 7]);

impl Tally {
    #[inline]
    pub(crate) fn count(&mut self, r: Routed) {
        self.0[r as usize] += 1;
    }

    #[inline]
    pub(crate) fn undeliverable(&mut self) {
        self.0[6] += 1;
    }

    /// How many reached a live owner (`Woken` + `Delivered`).
    pub(crate) fn routed_live(&self) -> usize {
        (self.0[Routed::Woken as usize] + self.0[Routed::Delivered as usize]) as usize
    }
}

impl Counters {
    /// `stripes` counter sets (at least one).
    pub(crate) fn new(stripes: usize) -> Self {
        Self {
            stripes: (0..stripes.max(1))
                .map(|_| CachePadded(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    /// Adds a tally to stripe `stripe` (< the stripe count).
    #[inline]
    pub(crate) fn add(&self, stripe: usize, t: &Tally) {
        for (c, n) in self.stripes[stripe].iter().zip(t.0) {
            if n != 0 {
                c.fetch_add(n, Relaxed);
            }
        }
    }

    pub(crate) fn snapshot(&self) -> DispatchStats {
        let v: [u64; 7] = std::array::from_fn(|i| {
            self.stripes
                .iter()
                .map(|s| s[i].load(Relaxed))
                .fold(0, u64::wrapping_add)
        });
        DispatchStats {
            completed: v[Routed::Woken as usize],
            delivered: v[Routed::Delivered as usize],
            reclaimed: v[Routed::Reclaimed as usize],
            stale: v[Routed::Stale as usize],
            unknown: v[Routed::Unknown as usize],
            duplicate: v[Routed::Duplicate as usize],
            undeliverable: v[6],
        }
    }
}
