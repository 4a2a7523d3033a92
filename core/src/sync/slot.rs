//! The per-work-request slot state machine of the dispatcher.
//!
//! One `AtomicU64` holds `generation << 32 | flags | tag`. The three payload cells (completion,
//! parked resources, route) are owned by whoever the current state says owns them; every
//! transition that hands a cell to another party is a Release/Acquire pair on the state word:
//!
//! ```text
//!       try_post (store)                 complete (CAS)            complete (CAS)
//!   FREE(g) ─────────► POSTED(g) ──────────────────► COMPLETING(g) ──────────► COMPLETED(g)
//!     ▲                 │  │ +WAITER (owner registered a waker)     │ +DROPPED      │ owner
//!     │                 │  └ +DROPPED (owner gone, resources parked)│               │ takes
//!     │                 │          │ complete                       ▼               ▼
//!     │  try_route      │          └──────────► CLAIMED(g) ──► FREE(g+1) ◄──────────┘
//!     ├─────(store)────►ROUTED(g) ── complete / cancel_route ─► CLAIMED(g) ─► FREE(g+1)
//! ```
//!
//! | state                  | completion cell | resources cell | route cell |
//! |------------------------|-----------------|----------------|------------|
//! | FREE                   | the free-list popper | same      | same       |
//! | CLAIMED                | winner of the transition into CLAIMED | same | same |
//! | POSTED                 | nobody          | owner          | nobody     |
//! | POSTED \| DROPPED      | nobody          | slot (next completer) | nobody |
//! | COMPLETING             | completer       | owner (slot if DROPPED) | nobody |
//! | COMPLETED              | owner           | owner          | nobody     |
//! | ROUTED                 | nobody          | slot (next completer / canceller) | same |
//!
//! Every transition into FREE is followed by pushing the slot's index onto the table's free
//! list, and FREE -> POSTED / ROUTED is only done by whoever popped it off again; the
//! [`SlotTable`](super::SlotTable) keeps that pairing, which is why leaving FREE is a store.
//!
//! The waker ([`AtomicWaker`], safe to touch from any thread) follows one rule: nobody
//! *removes* it without waking it after the slot may have left its generation. Owners take
//! their waker out before publishing DROPPED, claimants while holding CLAIMED, the owner in
//! `consume` before publishing FREE. Only the completer's wake-up after publishing COMPLETED can
//! come late (after the owner consumed, the slot was freed and re-reserved); it then wakes the
//! next owner's task once, spuriously, which re-polls and re-registers: no wake-up is lost.
//!
//! The owner of a posted slot is proven by an [`OwnerTicket`], which only [`Slot::try_post`]
//! creates, cannot be cloned, and is bound to one slot and one generation.

use std::task::Waker;

use super::cell::UnsafeCell;
use super::{
    AtomicU64, AtomicWaker, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed,
    Ordering::Release,
};
use crate::completion::Completion;
use crate::wr_id::WrId;

const TAG_MASK: u64 = 0b111;
const FREE: u64 = 0;
const POSTED: u64 = 1;
const COMPLETING: u64 = 2;
const COMPLETED: u64 = 3;
const ROUTED: u64 = 4;
const CLAIMED: u64 = 5;
/// The owner registered a waker: the completer must wake it.
const WAITER: u64 = 1 << 3;
/// The owner is gone: the completer reclaims the slot (and the parked resources).
const DROPPED: u64 = 1 << 4;

#[inline(always)]
const fn pack(generation: u32, bits: u64) -> u64 {
    ((generation as u64) << 32) | bits
}

#[inline(always)]
const fn generation_of(word: u64) -> u32 {
    (word >> 32) as u32
}

/// What a slot looked like at one instant (for cold-path scans).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SlotSnapshot {
    /// Free at this generation.
    Free(u32),
    /// Posted (owned by a live or dropped `Operation`) at this generation.
    Posted(u32),
    /// Routed into an inbox at this generation.
    Routed(u32),
    /// In transition or completed and not yet consumed.
    Busy,
}

/// Proof of ownership of a posted slot: bound to one slot and one generation, not `Clone`.
#[derive(Debug)]
pub(crate) struct OwnerTicket {
    slot: usize,
    /// Index and generation, packed as one word (as the work request carries them).
    id: WrId,
}

impl OwnerTicket {
    /// The work-request id (slot index and generation) this ticket owns.
    #[inline]
    pub(crate) fn wr_id(&self) -> WrId {
        self.id
    }

    /// The index of the slot this ticket owns.
    #[inline]
    pub(crate) fn index(&self) -> u32 {
        self.id.index()
    }

    #[inline]
    fn generation(&self) -> u32 {
        self.id.generation()
    }
}

/// Result of feeding a completion to a slot.
#[derive(Debug)]
pub(crate) enum CompleteOutcome<R, S> {
    /// Stored for the live owner (woken if it was waiting).
    Stored,
    /// The owner had dropped its operation: the slot is now free (the table puts it back
    /// on the free list) and these parked resources may be dropped.
    Reclaimed(Option<R>),
    /// A routed slot: the slot is now free (the table puts it back on its free list);
    /// deliver the completion with the resources into the route.
    Routed(S, R),
    /// Generation mismatch.
    Stale,
    /// The slot is free at this generation: the id was never issued.
    Unknown,
    /// The slot already has a completion (or is being reclaimed) at this generation.
    Duplicate,
}

/// Result of an owner giving up its slot.
#[derive(Debug)]
pub(crate) enum Released<R> {
    /// The slot stays in use until its completion arrives (the completer frees it).
    Parked,
    /// The slot is free now (the table puts it back on its free list); these resources
    /// may be dropped (the completion has arrived, or the work request was never posted).
    Freed(Option<R>),
}

/// One work-request slot. See the module documentation for the state machine.
///
/// Aligned to a cache-line pair (it is 128 bytes with a 72-byte completion anyway), so slots
/// used by different threads never share a line or an adjacent-line-prefetch pair.
#[repr(align(128))]
pub(crate) struct Slot<R, S> {
    state: AtomicU64,
    /// The reservation's home and tag, `tag << 32 | home`: the free-list shard of the handle
    /// that reserved the slot (freed slots go back there) and the caller's tag (e.g. the QP
    /// number, for [`Dispatcher::fail_tagged`](crate::Dispatcher::fail_tagged)). Written by
    /// the free-list popper before it publishes POSTED / ROUTED (Release), read by whoever
    /// frees or scans the slot after observing that state (Acquire), so `Relaxed` suffices.
    reservation: AtomicU64,
    waker: AtomicWaker,
    completion: UnsafeCell<Completion>,
    resources: UnsafeCell<Option<R>>,
    route: UnsafeCell<Option<S>>,
}

// SAFETY: every cell is accessed only by the party the state word assigns it to (module docs);
// handing a cell to another thread goes through a Release/Acquire pair on `state`. The cells
// hold `R` and `S` values moved between threads, hence the `Send` bounds.
unsafe impl<R: Send, S: Send> Sync for Slot<R, S> {}
// SAFETY: as above; the slot owns `R`/`S` values, which may move to another thread.
unsafe impl<R: Send, S: Send> Send for Slot<R, S> {}

impl<R, S> Slot<R, S> {
    /// A free slot at generation 0.
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicU64::new(pack(0, FREE)),
            reservation: AtomicU64::new(0),
            waker: AtomicWaker::new(),
            completion: UnsafeCell::new(Completion::zeroed()),
            resources: UnsafeCell::new(None),
            route: UnsafeCell::new(None),
        }
    }

    /// Records the reserving handle's shard and the reservation's tag (by the free-list
    /// popper, before posting).
    #[inline]
    pub(super) fn set_reservation(&self, home: usize, tag: u32) {
        self.reservation
            .store(u64::from(tag) << 32 | home as u64, Relaxed);
    }

    /// The shard to free this slot into.
    #[inline]
    pub(super) fn home(&self) -> usize {
        self.reservation.load(Relaxed) as u32 as usize
    }

    /// The tag of the current reservation. Read after an Acquire load of the state that saw
    /// the slot reserved at generation `g`, it is `g`'s tag or a later reservation's (the slot
    /// was freed and reserved again meanwhile, and `g` is stale).
    #[inline]
    pub(super) fn tag(&self) -> u32 {
        (self.reservation.load(Relaxed) >> 32) as u32
    }

    fn addr(&self) -> usize {
        self as *const Self as usize
    }

    /// Current state (Acquire), for cold-path scans.
    pub(crate) fn snapshot(&self) -> SlotSnapshot {
        let w = self.state.load(Acquire);
        let g = generation_of(w);
        match w & TAG_MASK {
            FREE => SlotSnapshot::Free(g),
            POSTED => SlotSnapshot::Posted(g),
            ROUTED => SlotSnapshot::Routed(g),
            _ => SlotSnapshot::Busy,
        }
    }

    /// FREE -> POSTED for the slot numbered `index`. `None` if the slot is not free.
    ///
    /// Only the [`SlotTable`](super::SlotTable), right after popping this slot's index off its
    /// free list, calls it: that pop makes it the slot's only writer (completers never write a
    /// FREE slot, every other transition needs an [`OwnerTicket`] or a ROUTED state, and the
    /// table pushes an index only after moving its slot to FREE), so a plain store suffices.
    /// The store is `Release` to carry the happens-before edge from the previous owner (its
    /// FREE store, the free-list push, our pop) on to the next completer's `Acquire` CAS.
    pub(super) fn try_post(&self, index: u32) -> Option<OwnerTicket> {
        let cur = self.state.load(Acquire);
        if cur & !(u64::MAX << 32) != FREE {
            return None;
        }
        let g = generation_of(cur);
        self.state.store(pack(g, POSTED), Release);
        Some(OwnerTicket {
            slot: self.addr(),
            id: WrId::new(index, g),
        })
    }

    /// FREE -> ROUTED with `route` and `resources` parked; returns the generation. Gives the
    /// values back if the slot is not free.
    ///
    /// Only the [`SlotTable`](super::SlotTable), right after popping this slot's index off its
    /// free list, calls it (see [`try_post`](Self::try_post)): it owns every cell of the FREE
    /// slot until it publishes ROUTED.
    pub(super) fn try_route(&self, route: S, resources: R) -> Result<u32, (S, R)> {
        let cur = self.state.load(Acquire);
        if cur & !(u64::MAX << 32) != FREE {
            return Err((route, resources));
        }
        let g = generation_of(cur);
        // SAFETY: a FREE slot whose index the table just popped off its free list has no other
        // party touching its state or cells (see `try_post`) until we publish ROUTED.
        self.resources.with_mut(|p| unsafe { *p = Some(resources) });
        // SAFETY: as above.
        self.route.with_mut(|p| unsafe { *p = Some(route) });
        self.state.store(pack(g, ROUTED), Release);
        Ok(g)
    }

    /// Takes resources and route out of a CLAIMED slot and frees it (generation + 1).
    ///
    /// Only called by the party that moved the slot into CLAIMED at generation `g`.
    fn take_and_free(&self, g: u32) -> (Option<R>, Option<S>) {
        // SAFETY: callers hold the slot in CLAIMED (they won the transition into it), which
        // owns every cell.
        let r = self.resources.with_mut(|p| unsafe { (*p).take() });
        // SAFETY: as above.
        let s = self.route.with_mut(|p| unsafe { (*p).take() });
        self.state.store(pack(g.wrapping_add(1), FREE), Release);
        (r, s)
    }

    /// ROUTED -> FREE, giving the parked route and resources back (the work request was never
    /// posted). `Some` exactly when the slot was freed (both are always parked while ROUTED).
    pub(super) fn cancel_route(&self, generation: u32) -> Option<(Option<S>, Option<R>)> {
        self.state
            .compare_exchange(
                pack(generation, ROUTED),
                pack(generation, CLAIMED),
                Acquire,
                Acquire,
            )
            .ok()?;
        let (r, s) = self.take_and_free(generation);
        Some((s, r))
    }

    /// Feeds the completion for `generation` to this slot, waking the owner's task in place.
    /// Never panics.
    pub(super) fn complete(&self, generation: u32, c: &Completion) -> CompleteOutcome<R, S> {
        self.complete_with(generation, c, false).0
    }

    /// [`complete`](Self::complete) without touching the owner's task: the waker the
    /// completion would have woken is taken out and returned instead, for the caller to wake
    /// later (after leaving a context where no consumer code may run). Never panics.
    ///
    /// A waker taken after COMPLETED was published may already belong to the slot's next
    /// owner (the owner consumed, the slot was freed and reserved again): waking it later is
    /// then a spurious wake-up of that task, which re-polls and re-registers, so it must be
    /// woken, never just dropped. (From a claimed slot it is a dropped owner's waker, if any.)
    pub(super) fn complete_deferred(
        &self,
        generation: u32,
        c: &Completion,
    ) -> (CompleteOutcome<R, S>, Option<Waker>) {
        self.complete_with(generation, c, true)
    }

    #[inline(always)]
    fn complete_with(
        &self,
        generation: u32,
        c: &Completion,
        defer: bool,
    ) -> (CompleteOutcome<R, S>, Option<Waker>) {
        let mut cur = self.state.load(Acquire);
        loop {
            if generation_of(cur) != generation {
                return (CompleteOutcome::Stale, None);
            }
            let (next, outcome_after_claim) = match cur & TAG_MASK {
                POSTED if cur & DROPPED != 0 => (pack(generation, CLAIMED), true),
                POSTED => ((cur & !TAG_MASK) | COMPLETING, false),
                ROUTED => (pack(generation, CLAIMED), true),
                FREE => return (CompleteOutcome::Unknown, None),
                _ => return (CompleteOutcome::Duplicate, None),
            };
            match self.state.compare_exchange(cur, next, AcqRel, Acquire) {
                Ok(_) if outcome_after_claim => {
                    let routed = cur & TAG_MASK == ROUTED;
                    let waker = self.take_claimed_waker(cur, defer);
                    let outcome = match (routed, self.take_and_free(generation)) {
                        (true, (Some(r), Some(s))) => CompleteOutcome::Routed(s, r),
                        (_, (r, _)) => CompleteOutcome::Reclaimed(r),
                    };
                    return (outcome, waker);
                }
                Ok(_) => return self.finish_completion(generation, next, c, defer),
                Err(actual) => cur = actual,
            }
        }
    }

    /// A dropped owner's waker (normally already taken by the owner), taken while the slot is
    /// CLAIMED: dropped now, or returned if `defer`.
    #[inline(always)]
    fn take_claimed_waker(&self, cur: u64, defer: bool) -> Option<Waker> {
        let waker = if cur & WAITER != 0 {
            self.waker.take()
        } else {
            None
        };
        // Not deferred: dropped here.
        waker.filter(|_| defer)
    }

    /// COMPLETING -> COMPLETED (or -> FREE if the owner dropped meanwhile).
    fn finish_completion(
        &self,
        g: u32,
        mut cur: u64,
        c: &Completion,
        defer: bool,
    ) -> (CompleteOutcome<R, S>, Option<Waker>) {
        // SAFETY: we moved POSTED -> COMPLETING, which gives the completer the completion cell
        // until COMPLETED is published; the owner reads it only after seeing COMPLETED.
        self.completion.with_mut(|p| unsafe { *p = *c });
        loop {
            let next = if cur & DROPPED != 0 {
                pack(g, CLAIMED)
            } else {
                (cur & !TAG_MASK) | COMPLETED
            };
            match self.state.compare_exchange(cur, next, AcqRel, Acquire) {
                Ok(_) if cur & DROPPED != 0 => {
                    let waker = self.take_claimed_waker(cur, defer);
                    let (r, _) = self.take_and_free(g);
                    return (CompleteOutcome::Reclaimed(r), waker);
                }
                Ok(_) if cur & WAITER == 0 => return (CompleteOutcome::Stored, None),
                Ok(_) if defer => return (CompleteOutcome::Stored, self.waker.take()),
                Ok(_) => {
                    self.waker.wake();
                    return (CompleteOutcome::Stored, None);
                }
                // Only the WAITER / DROPPED flags can change under us.
                Err(actual) => cur = actual,
            }
        }
    }

    fn check(&self, t: &OwnerTicket) {
        assert_eq!(t.slot, self.addr(), "OwnerTicket used on a foreign slot");
    }

    /// COMPLETED -> FREE (generation + 1), returning the completion; gives the ticket back if
    /// the completion has not arrived yet.
    pub(super) fn try_take(&self, t: OwnerTicket) -> Result<Completion, OwnerTicket> {
        self.check(&t);
        let cur = self.state.load(Acquire);
        if cur & TAG_MASK != COMPLETED {
            return Err(t);
        }
        Ok(self.consume(t, cur))
    }

    /// Owner side of COMPLETED -> FREE.
    fn consume(&self, t: OwnerTicket, cur: u64) -> Completion {
        debug_assert_eq!(cur & TAG_MASK, COMPLETED);
        // SAFETY: COMPLETED (seen with Acquire) hands the completion cell to the owner, proven
        // by the ticket; completers treat COMPLETED as a duplicate and never write it.
        let c = self.completion.with(|p| unsafe { *p });
        if cur & WAITER != 0 {
            // A waker registered after the completer's wake-up check is still stored.
            drop(self.waker.take());
        }
        self.state
            .store(pack(t.generation().wrapping_add(1), FREE), Release);
        c
    }

    /// Registers `waker` for the owner, then re-checks: returns the completion (slot freed)
    /// if it had already arrived, or the ticket back if the caller must wait.
    pub(super) fn register(
        &self,
        t: OwnerTicket,
        waker: &Waker,
    ) -> Result<Completion, OwnerTicket> {
        self.check(&t);
        self.waker.register(waker);
        // Publish WAITER with an RMW on the state word, so it is totally ordered with the
        // completer's COMPLETING -> COMPLETED CAS: either the completer sees WAITER and wakes,
        // or we see COMPLETED here.
        let prev = self.state.fetch_or(WAITER, AcqRel);
        if prev & TAG_MASK == COMPLETED {
            Ok(self.consume(t, prev | WAITER))
        } else {
            Err(t)
        }
    }

    /// The owner gives up the slot, parking `resources` in it until the completion arrives.
    ///
    /// The owner's waker is taken out *before* DROPPED is published: once it is, the completer
    /// may claim and free the slot, and the next owner may reserve it and register its own
    /// waker, which a later `take` here would steal (its completion would then wake nobody).
    /// A completer waking concurrently is serialised with this `take` by the [`AtomicWaker`]
    /// (one of the two gets the waker; a spurious wake-up of a dropped task is harmless).
    pub(super) fn release(&self, t: OwnerTicket, resources: Option<R>) -> Released<R> {
        self.check(&t);
        // Only the owner sets WAITER (in `register`), so its own load sees whether it did.
        if self.state.load(Relaxed) & WAITER != 0 {
            drop(self.waker.take());
        }
        if resources.is_some() {
            // SAFETY: the resources cell belongs to the owner (ticket) until DROPPED is
            // published below.
            self.resources.with_mut(|p| unsafe { *p = resources });
        }
        let prev = self.state.fetch_or(DROPPED, AcqRel);
        match prev & TAG_MASK {
            COMPLETED => {
                // SAFETY: COMPLETED: the owner still owns the resources cell (completers treat
                // COMPLETED as duplicate); take back what we just parked.
                let r = self.resources.with_mut(|p| unsafe { (*p).take() });
                let _ = self.consume(t, prev);
                Released::Freed(r)
            }
            // From here on the slot is the completer's: touch nothing (not even the waker).
            _ => Released::Parked,
        }
    }

    /// The owner's work request never reached the NIC: POSTED -> FREE at once.
    pub(super) fn cancel(&self, t: OwnerTicket) -> Released<R> {
        self.check(&t);
        let g = t.generation();
        let mut cur = self.state.load(Acquire);
        while cur & TAG_MASK == POSTED {
            match self
                .state
                .compare_exchange(cur, pack(g, CLAIMED), AcqRel, Acquire)
            {
                Ok(_) => {
                    drop(self.waker.take());
                    let (r, _) = self.take_and_free(g);
                    return Released::Freed(r);
                }
                Err(actual) => cur = actual,
            }
        }
        // A completion arrived after all: treat like a drop.
        self.release(t, None)
    }
}
