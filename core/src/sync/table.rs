//! The slot table: the dispatcher's fixed array of [`Slot`]s together with its sharded free
//! list.
//!
//! The table keeps one pairing the slots' soundness relies on: an index is pushed onto the
//! free list only right after its slot moved to FREE, and a FREE slot is only posted or routed
//! by whoever popped its index off the list. That makes the popper the FREE slot's only writer,
//! so leaving FREE is a plain store (see [`Slot::try_post`]). The free list is private to the
//! table, and every transition into FREE goes through a method here that pushes the index.
//!
//! Reserving takes the caller's `home` shard (< [`shards`](SlotTable::shards)) and pops from
//! it first; the slot remembers it, and whoever frees the slot (its owner, or the poller for an
//! abandoned or routed slot) pushes it back there, so a handle's slots stay in its shard.

use std::task::Waker;

use super::free_list::FreeList;
use super::slot::{CompleteOutcome, OwnerTicket, Released, Slot, SlotSnapshot};
use crate::completion::Completion;

/// The free list handed out a busy slot: unreachable by the pairing in the module docs. Never
/// trusted blindly: the caller reports exhaustion. The index is *not* pushed back: whoever holds
/// the slot pushes it when it frees it, and a second entry would hand the slot out twice.
#[cold]
fn not_free() {
    debug_assert!(false, "free list handed out a busy slot");
}

pub(crate) struct SlotTable<R, S> {
    slots: Box<[Slot<R, S>]>,
    free: FreeList,
}

impl<R, S> SlotTable<R, S> {
    /// `capacity` free slots over `shards` free-list shards (clamped to 1..=capacity).
    pub(crate) fn new(capacity: usize, shards: usize) -> Self {
        Self {
            slots: (0..capacity).map(|_| Slot::new()).collect(),
            free: FreeList::new(capacity, shards),
        }
    }

    /// Number of slots.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Number of free-list shards.
    pub(crate) fn shards(&self) -> usize {
        self.free.shards()
    }

    /// The home shard of the `n`-th handle (cold path).
    pub(crate) fn home_of(&self, n: usize) -> usize {
        self.free.home_of(n)
    }

    /// Snapshots of every slot (cold-path scans), with their indices.
    pub(crate) fn snapshots(&self) -> impl Iterator<Item = (u32, SlotSnapshot)> + '_ {
        (0u32..).zip(self.slots.iter().map(Slot::snapshot))
    }

    /// Snapshots of every slot with their indices and tags (cold-path scans). The tag is
    /// read after the state: for a reserved snapshot it is that reservation's tag, or a later
    /// one's (then the snapshot's generation is already stale).
    pub(crate) fn tagged_snapshots(&self) -> impl Iterator<Item = (u32, SlotSnapshot, u32)> + '_ {
        (0u32..).zip(self.slots.iter()).map(|(index, slot)| {
            let snapshot = slot.snapshot();
            (index, snapshot, slot.tag())
        })
    }

    /// Pops a free slot and posts it, tagged `tag`. `None` when every slot is in use.
    #[inline]
    pub(crate) fn reserve(&self, home: usize, tag: u32) -> Option<OwnerTicket> {
        let index = self.free.pop(home)?;
        let slot = &self.slots[index as usize];
        slot.set_reservation(home, tag);
        match slot.try_post(index) {
            Some(ticket) => Some(ticket),
            None => {
                not_free();
                None
            }
        }
    }

    /// Pops a free slot and routes it, tagged `tag`; `(index, generation)`. Gives the values
    /// back when every slot is in use.
    #[inline]
    pub(crate) fn reserve_routed(
        &self,
        home: usize,
        route: S,
        resources: R,
        tag: u32,
    ) -> Result<(u32, u32), (S, R)> {
        let Some(index) = self.free.pop(home) else {
            return Err((route, resources));
        };
        let slot = &self.slots[index as usize];
        slot.set_reservation(home, tag);
        match slot.try_route(route, resources) {
            Ok(generation) => Ok((index, generation)),
            Err(values) => {
                not_free();
                Err(values)
            }
        }
    }

    /// Feeds a completion to slot `index` at `generation`; frees the slot when the outcome
    /// says so (`Reclaimed`, `Routed`). Out-of-range indices are `Unknown`.
    #[inline]
    pub(crate) fn complete(
        &self,
        index: u32,
        generation: u32,
        c: &Completion,
    ) -> CompleteOutcome<R, S> {
        let Some(slot) = self.slots.get(index as usize) else {
            return CompleteOutcome::Unknown;
        };
        let outcome = slot.complete(generation, c);
        self.freed_by_completion(slot, index, &outcome);
        outcome
    }

    /// [`complete`](Self::complete) that returns the owner's waker instead of waking it (see
    /// [`Slot::complete_deferred`]): the caller must wake it later.
    #[inline]
    pub(crate) fn complete_deferred(
        &self,
        index: u32,
        generation: u32,
        c: &Completion,
    ) -> (CompleteOutcome<R, S>, Option<Waker>) {
        let Some(slot) = self.slots.get(index as usize) else {
            return (CompleteOutcome::Unknown, None);
        };
        let (outcome, waker) = slot.complete_deferred(generation, c);
        self.freed_by_completion(slot, index, &outcome);
        (outcome, waker)
    }

    #[inline(always)]
    fn freed_by_completion(&self, slot: &Slot<R, S>, index: u32, outcome: &CompleteOutcome<R, S>) {
        if matches!(
            outcome,
            CompleteOutcome::Reclaimed(_) | CompleteOutcome::Routed(..)
        ) {
            self.free.push(slot.home(), index);
        }
    }

    /// Takes back the route and resources of a routed slot that was never posted (frees it).
    /// `None` if slot `index` is not routed at `generation`.
    pub(crate) fn cancel_route(&self, index: u32, generation: u32) -> Option<(S, R)> {
        let slot = self.slots.get(index as usize)?;
        let (route, resources) = slot.cancel_route(generation)?;
        self.free.push(slot.home(), index);
        route.zip(resources)
    }

    #[inline]
    fn slot(&self, t: &OwnerTicket) -> &Slot<R, S> {
        &self.slots[t.index() as usize]
    }

    #[inline]
    fn freed<T>(&self, index: u32, r: Result<T, OwnerTicket>) -> Result<T, OwnerTicket> {
        if r.is_ok() {
            self.free.push(self.slots[index as usize].home(), index);
        }
        r
    }

    /// The owner's completion if it has arrived (the slot is freed), else the ticket back.
    #[inline]
    pub(crate) fn try_take(&self, t: OwnerTicket) -> Result<Completion, OwnerTicket> {
        let index = t.index();
        let r = self.slot(&t).try_take(t);
        self.freed(index, r)
    }

    /// Registers the owner's waker, then re-checks (see [`Slot::register`]).
    #[inline]
    pub(crate) fn register(
        &self,
        t: OwnerTicket,
        waker: &Waker,
    ) -> Result<Completion, OwnerTicket> {
        let index = t.index();
        let r = self.slot(&t).register(t, waker);
        self.freed(index, r)
    }

    /// The owner gives up a posted slot, parking `resources` until the completion arrives.
    pub(crate) fn release(&self, t: OwnerTicket, resources: Option<R>) -> Released<R> {
        let index = t.index();
        self.released(index, self.slot(&t).release(t, resources))
    }

    /// The owner's work request never reached the NIC: frees the slot at once.
    pub(crate) fn cancel(&self, t: OwnerTicket) -> Released<R> {
        let index = t.index();
        self.released(index, self.slot(&t).cancel(t))
    }

    fn released(&self, index: u32, r: Released<R>) -> Released<R> {
        if let Released::Freed(_) = r {
            self.free.push(self.slots[index as usize].home(), index);
        }
        r
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sync::CompleteOutcome;

    /// Slots go back to the shard of the handle that reserved them, whoever frees them.
    #[test]
    fn frees_return_to_the_reserving_shard() {
        // Slot 0 starts in shard 0, slot 1 in shard 1.
        let t: SlotTable<u8, u8> = SlotTable::new(2, 2);
        let a = t.reserve(1, 0).expect("own shard");
        let r = t.reserve_routed(1, 7, 8, 0).expect("stolen from shard 0");
        assert_eq!((a.index(), r.0), (1, 0));
        // The poller (any handle) completes both; the owner takes its completion.
        assert!(matches!(
            t.complete(r.0, r.1, &Completion::zeroed()),
            CompleteOutcome::Routed(7, 8)
        ));
        let (index, generation) = (a.index(), a.wr_id().generation());
        assert!(matches!(
            t.complete(index, generation, &Completion::zeroed()),
            CompleteOutcome::Stored
        ));
        assert!(t.try_take(a).is_ok());
        // Both are in shard 1 now, none in shard 0.
        assert_eq!(t.free.pop_shard(0), None);
        let mut back = [t.free.pop_shard(1), t.free.pop_shard(1)];
        back.sort();
        assert_eq!(back, [Some(0), Some(1)]);
    }
}
