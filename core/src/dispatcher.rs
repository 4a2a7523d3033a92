//! The completion dispatcher: a fixed table of work-request slots per CQ.

mod operation;

use std::fmt;

pub use operation::Operation;

use crate::aftermath::{Aftermath, Effects, InPlace};
use crate::completion::{Completion, WcStatus};
use crate::error::Error;
use crate::inbox::InboxSender;
use crate::route::{Delivery, Route, Routed};
use crate::stats::{Counters, DispatchStats, Tally};
use crate::sync::{
    Arc, AtomicUsize, CompleteOutcome, Ordering::Relaxed, SlotSnapshot, SlotTable, DEFAULT_SHARDS,
    MAX_SLOTS,
};
use crate::wr_id::WrId;

struct Shared<R: Send + 'static> {
    table: SlotTable<R, Route<R>>,
    counters: Counters,
    /// Numbers handles, to spread them over the free-list shards.
    handles_made: AtomicUsize,
}

/// Routes completions of one CQ to the operations and inboxes waiting for them.
///
/// Holds `capacity` pre-allocated slots (the queue depth: every work request that can be
/// outstanding at once on the QPs sharing the CQ needs one). `R` is the type of resources
/// (buffers, memory-region guards) a slot keeps alive while the NIC may still access them.
///
/// `Send + Sync`, and cloning gives another handle onto the same table. Nothing allocates
/// after [`new`](Self::new) except [`clone`](Clone::clone) (cold path, see there):
/// reserving, completing and polling are a handful of atomic operations, never a lock.
///
/// Dropping the last handle (and the last [`Operation`]) drops whatever resources abandoned
/// or routed slots still hold: keep a handle alive until the QPs using it are flushed or
/// destroyed (the `verbs` driver does), or call [`fail_all`](Self::fail_all) after that.
pub struct Dispatcher<R: Send + 'static = ()> {
    handle: Arc<Handle<R>>,
}

/// One per `Dispatcher` clone: operations reserved through a handle keep *it* alive, so
/// threads using their own clones never contend on a shared reference count, and each handle
/// has a home shard of the free list (and counter stripe): slots reserved through it are
/// freed back there, whoever frees them, so a thread recycles its own slots.
#[repr(align(128))]
struct Handle<R: Send + 'static> {
    shared: Arc<Shared<R>>,
    home: usize,
}

impl<R: Send + 'static> Handle<R> {
    fn new(shared: Arc<Shared<R>>) -> Arc<Self> {
        let n = shared.handles_made.fetch_add(1, Relaxed);
        let home = shared.table.home_of(n);
        Arc::new(Self { shared, home })
    }
}

impl<R: Send + 'static> Clone for Dispatcher<R> {
    /// A new handle onto the same slot table, with the next free-list shard as its home (see
    /// [`with_shards`](Dispatcher::with_shards)). Allocates one small block (cold path): give
    /// each thread or task its own clone, so reserving and freeing through it touch neither a
    /// reference count nor a free list shared with other threads.
    fn clone(&self) -> Self {
        Self {
            handle: Handle::new(self.handle.shared.clone()),
        }
    }
}

impl<R: Send + 'static> fmt::Debug for Dispatcher<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("capacity", &self.capacity())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<R: Send + 'static> Dispatcher<R> {
    /// A dispatcher with `capacity` slots, all free, and up to 8 free-list shards (see
    /// [`with_shards`](Self::with_shards)).
    ///
    /// # Panics
    /// If `capacity` exceeds `u32::MAX - 1` (slot indices are 32-bit).
    pub fn new(capacity: usize) -> Self {
        Self::with_shards(capacity, DEFAULT_SHARDS)
    }

    /// A dispatcher with `capacity` slots, all free, split over `shards` free lists (at least
    /// 1, at most `capacity`). Each handle ([`clone`](Clone::clone)) takes the next shard in
    /// turn as its home: it reserves from it, steals from the others only when it is empty, and
    /// frees its slots back into it, so threads with their own handles do not contend on one
    /// free list. One shard per thread (or core) that reserves is right; more cost nothing
    /// until the table is nearly exhausted.
    ///
    /// # Panics
    /// If `capacity` exceeds `u32::MAX - 1` (slot indices are 32-bit).
    pub fn with_shards(capacity: usize, shards: usize) -> Self {
        assert!(capacity <= MAX_SLOTS, "capacity above {MAX_SLOTS}");
        let table = SlotTable::new(capacity, shards);
        Self {
            handle: Handle::new(Arc::new(Shared {
                counters: Counters::new(table.shards()),
                table,
                handles_made: AtomicUsize::new(0),
            })),
        }
    }

    #[inline]
    fn shared(&self) -> &Shared<R> {
        &self.handle.shared
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.shared().table.len()
    }

    /// Slots currently in use (posted, routed, abandoned or completed but not yet consumed).
    /// A snapshot computed by scanning the table (cold path).
    pub fn in_flight(&self) -> usize {
        self.shared()
            .table
            .snapshots()
            .filter(|(_, s)| !matches!(s, SlotSnapshot::Free(_)))
            .count()
    }

    /// [`in_flight`](Self::in_flight), counting only the slots reserved with `tag` (see
    /// [`reserve_tagged`](Self::reserve_tagged)). Cold path: scans the table.
    pub fn in_flight_tagged(&self, tag: u32) -> usize {
        self.shared()
            .table
            .tagged_snapshots()
            .filter(|(_, s, t)| *t == tag && !matches!(s, SlotSnapshot::Free(_)))
            .count()
    }

    #[inline]
    fn exhausted(&self) -> Error {
        Error::Exhausted {
            capacity: self.capacity(),
        }
    }

    /// Reserves a slot for a work request about to be posted (Free -> Posted), with tag 0
    /// (see [`reserve_tagged`](Self::reserve_tagged)).
    ///
    /// Put [`Operation::wr_id`] into the work request, post it, then await the operation. If
    /// posting fails, call [`Operation::cancel_unposted`]; if the operation must be dropped
    /// while the NIC may still use its buffers, hand them to [`Operation::abandon`].
    ///
    /// # Errors
    /// [`Error::Exhausted`] when every slot is in use.
    #[inline]
    pub fn reserve(&self) -> Result<Operation<R>, Error> {
        self.reserve_tagged(0)
    }

    /// [`reserve`](Self::reserve), tagging the slot with `tag` (e.g. the number of the QP the
    /// work request is posted to), so that [`fail_tagged`](Self::fail_tagged) can fail the
    /// slots of one QP whose flush completions never come.
    ///
    /// # Errors
    /// [`Error::Exhausted`] when every slot is in use.
    #[inline]
    pub fn reserve_tagged(&self, tag: u32) -> Result<Operation<R>, Error> {
        let ticket = self
            .shared()
            .table
            .reserve(self.handle.home, tag)
            .ok_or_else(|| self.exhausted())?;
        Ok(Operation::new(self.handle.clone(), ticket))
    }

    /// Reserves a routed slot (Free -> Posted, routed): its completion is delivered together
    /// with `resources` into `sender` as a [`Delivery`]. Used for receives.
    ///
    /// **Back-pressure:** the inbox must have room for every slot routed to it (capacity ≥
    /// number of receive slots posted into it), so delivery never finds it full: a receive
    /// slot is only re-posted after its delivery was taken out of the inbox. If delivery fails
    /// anyway (inbox full or closed), the completion is counted as `undeliverable` and
    /// `reclaimed` in [`stats`](Self::stats) and the resources are dropped (the NIC is done
    /// with them by then).
    ///
    /// # Errors
    /// [`Error::Exhausted`] when every slot is in use (the resources are dropped);
    /// [`Error::InboxClosed`] when the inbox is already closed.
    /// The slot gets tag 0 (see [`reserve_into_tagged`](Self::reserve_into_tagged)).
    #[inline]
    pub fn reserve_into(
        &self,
        sender: &InboxSender<Delivery<R>>,
        resources: R,
    ) -> Result<WrId, Error> {
        self.reserve_into_tagged(sender, resources, 0)
    }

    /// [`reserve_into`](Self::reserve_into), tagging the slot with `tag` (see
    /// [`reserve_tagged`](Self::reserve_tagged)).
    ///
    /// # Errors
    /// As [`reserve_into`](Self::reserve_into).
    #[inline]
    pub fn reserve_into_tagged(
        &self,
        sender: &InboxSender<Delivery<R>>,
        resources: R,
        tag: u32,
    ) -> Result<WrId, Error> {
        if sender.is_closed() {
            return Err(Error::InboxClosed);
        }
        match self
            .shared()
            .table
            .reserve_routed(self.handle.home, sender.clone(), resources, tag)
        {
            Ok((index, generation)) => Ok(WrId::new(index, generation)),
            Err(_) => Err(self.exhausted()),
        }
    }

    /// A routed slot whose post failed: takes the resources back and frees the slot.
    /// `None` if `id` is not a routed slot waiting for its completion.
    pub fn cancel_routed(&self, id: WrId) -> Option<R> {
        let (_route, resources) = self
            .shared()
            .table
            .cancel_route(id.index(), id.generation())?;
        Some(resources)
    }

    /// Routes one completion. Taken by reference all the way down: it is copied once, from
    /// the caller's batch into its slot (or into the delivery).
    #[inline]
    fn route(&self, c: &Completion, tally: &mut Tally, effects: &mut impl Effects<R>) -> Routed {
        let id = WrId::from_raw(c.wr_id);
        let routed = match effects.complete(&self.shared().table, id, c) {
            CompleteOutcome::Stored => Routed::Woken,
            CompleteOutcome::Reclaimed(resources) => {
                if let Some(resources) = resources {
                    effects.drop_resources(resources);
                }
                Routed::Reclaimed
            }
            CompleteOutcome::Routed(sender, resources) => {
                let delivery = Delivery {
                    completion: *c,
                    resources,
                };
                let routed = match sender.try_send_deferred(delivery) {
                    Ok(()) => Routed::Delivered,
                    Err(failed) => {
                        tally.undeliverable();
                        effects.drop_resources(failed.into_inner().resources);
                        Routed::Reclaimed
                    }
                };
                effects.inbox(sender);
                routed
            }
            CompleteOutcome::Stale => Routed::Stale,
            CompleteOutcome::Unknown => Routed::Unknown,
            CompleteOutcome::Duplicate => Routed::Duplicate,
        };
        tally.count(routed);
        routed
    }

    /// Routes one completion by its `wr_id`. Never panics, whatever the input: ids that are
    /// out of range, stale, never posted or duplicated are counted and ignored.
    pub fn handle_completion(&self, c: Completion) -> Routed {
        let mut tally = Tally::default();
        let r = self.route(&c, &mut tally, &mut InPlace(None));
        self.shared().counters.add(self.handle.home, &tally);
        r
    }

    /// Routes a batch (e.g. one `ibv_poll_cq` result); returns how many reached a live owner
    /// ([`Routed::Woken`] or [`Routed::Delivered`]). Counters are updated once per batch.
    ///
    /// Wakes tasks and drops reclaimed resources in place, that is, runs consumer code (see
    /// [`Aftermath`]); a caller inside a critical section uses
    /// [`handle_completions_deferred`](Self::handle_completions_deferred).
    #[inline]
    pub fn handle_completions(&self, batch: &[Completion]) -> usize {
        let mut tally = Tally::default();
        // Consecutive deliveries into the same inbox wake its receiver once.
        let mut effects = InPlace(None);
        for c in batch {
            let _ = self.route(c, &mut tally, &mut effects);
        }
        drop(effects);
        self.shared().counters.add(self.handle.home, &tally);
        tally.routed_live()
    }

    /// [`handle_completions`](Self::handle_completions) that runs no consumer code: the
    /// operations' wakers, the inboxes whose receivers are to be woken and the resources to
    /// drop (of abandoned operations and of failed deliveries) go into `after`, for
    /// [`Aftermath::finish`] once the caller left its critical section (e.g. released the
    /// CQ's polling flag). Returns how many reached a live owner; the completions are
    /// observable (by [`Operation::try_complete`], [`InboxReceiver::try_recv`]) at once, only
    /// the wake-ups wait.
    ///
    /// Allocation-free. Keep `batch` at most [`Aftermath::CAPACITY`] long and finish `after`
    /// between batches: effects that do not fit are run in place (see [`Aftermath`]).
    ///
    /// [`InboxReceiver::try_recv`]: crate::InboxReceiver::try_recv
    #[inline]
    pub fn handle_completions_deferred(
        &self,
        batch: &[Completion],
        after: &mut Aftermath<R>,
    ) -> usize {
        let mut tally = Tally::default();
        for c in batch {
            let _ = self.route(c, &mut tally, after);
        }
        self.shared().counters.add(self.handle.home, &tally);
        tally.routed_live()
    }

    /// Fails every outstanding slot with a synthetic completion of `status` (e.g. when the CQ
    /// is destroyed or the device is gone): waiting operations are woken, routed slots deliver
    /// their resources, abandoned slots are reclaimed. The synthetic completion has the slot's
    /// `wr_id`, the given status and otherwise [`Completion::zeroed`] fields (like a flushed
    /// work completion, its opcode is meaningless).
    pub fn fail_all(&self, status: WcStatus) {
        let _ = self.fail_where(|_| true, status, &mut InPlace(None), usize::MAX);
    }

    /// [`fail_all`](Self::fail_all) for the slots reserved with `tag` only (see
    /// [`reserve_tagged`](Self::reserve_tagged)): e.g. the work requests of a QP that was
    /// destroyed, or whose flush completions never came. Other tags are untouched; a real
    /// completion of a failed slot arriving later is counted `stale` (or `duplicate` while the
    /// owner has not taken the synthetic one yet), never delivered twice. Returns how many
    /// slots it failed. Cold path: scans the table, and runs consumer code in place like
    /// [`handle_completions`](Self::handle_completions).
    pub fn fail_tagged(&self, tag: u32, status: WcStatus) -> usize {
        self.fail_where(|t| t == tag, status, &mut InPlace(None), usize::MAX)
    }

    /// [`fail_tagged`](Self::fail_tagged) that runs no consumer code (see
    /// [`handle_completions_deferred`](Self::handle_completions_deferred)). It fails at most
    /// [`after.room()`](Aftermath::room) slots (so finish `after` first) and returns how many
    /// it failed; it stops early only when `after` is full, so call it again after
    /// [`Aftermath::finish`] until it returns 0:
    ///
    /// ```
    /// # use tokio_rdma_core::{Aftermath, Dispatcher, WcStatus};
    /// # let dispatcher: Dispatcher<Vec<u8>> = Dispatcher::new(4);
    /// # let qp_num = 7;
    /// let mut after = Aftermath::new();
    /// while dispatcher.fail_tagged_deferred(qp_num, WcStatus::WrFlushErr, &mut after) > 0 {
    ///     after.finish(); // outside the critical section
    /// }
    /// after.finish();
    /// ```
    pub fn fail_tagged_deferred(
        &self,
        tag: u32,
        status: WcStatus,
        after: &mut Aftermath<R>,
    ) -> usize {
        let room = after.room();
        self.fail_where(|t| t == tag, status, after, room)
    }

    /// Fails up to `limit` outstanding slots whose tag passes `select`; how many it failed.
    fn fail_where(
        &self,
        select: impl Fn(u32) -> bool,
        status: WcStatus,
        effects: &mut impl Effects<R>,
        limit: usize,
    ) -> usize {
        let mut tally = Tally::default();
        let mut failed = 0;
        for (index, snapshot, tag) in self.shared().table.tagged_snapshots() {
            if failed == limit {
                break;
            }
            let generation = match snapshot {
                SlotSnapshot::Posted(g) | SlotSnapshot::Routed(g) if select(tag) => g,
                _ => continue,
            };
            let c = Completion {
                wr_id: WrId::new(index, generation).into_raw(),
                status,
                ..Completion::zeroed()
            };
            if matches!(
                self.route(&c, &mut tally, effects),
                Routed::Woken | Routed::Delivered | Routed::Reclaimed
            ) {
                failed += 1;
            }
        }
        self.shared().counters.add(self.handle.home, &tally);
        failed
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> DispatchStats {
        self.shared().counters.snapshot()
    }
}
