//! The effects of routing completions that may run consumer code (dropping resources, waking
//! tasks): run in place, or collected in an [`Aftermath`] so the caller can run them after
//! leaving its critical section.

use std::fmt;
use std::task::Waker;

use crate::completion::Completion;
use crate::route::Route;
use crate::sync::{CompleteOutcome, SlotTable};
use crate::wr_id::WrId;

/// What routing a batch left to do, collected by
/// [`Dispatcher::handle_completions_deferred`](crate::Dispatcher::handle_completions_deferred)
/// and run by [`finish`](Self::finish) (or on drop).
///
/// Routing a completion can run code that is not the dispatcher's: dropping the resources of
/// an abandoned operation or of a failed delivery runs their `Drop` (a buffer pool's
/// check-in, a memory-region deregistration, ... even destroying the CQ being polled), waking
/// a task runs its executor's wake-up code, and dropping an inbox's last sender drops the
/// deliveries still queued in it. A driver that polls a CQ under a per-CQ flag or lock must
/// not run any of that while it holds it (the seed deadlock, see the crate docs). So:
///
/// ```text
/// take the CQ's polling flag; poll a batch (at most Aftermath::CAPACITY completions)
/// dispatcher.handle_completions_deferred(&batch, &mut aftermath)
/// release the flag
/// aftermath.finish()        // drops resources, wakes operations and inbox receivers
/// ```
///
/// Holds up to [`CAPACITY`](Self::CAPACITY) wakers, inboxes and resources each, in fixed
/// arrays: collecting and finishing never allocate. Every routed completion adds at most one
/// of each, so a batch of up to `CAPACITY` completions after a `finish` always fits. Past that,
/// the effect that does not fit is run in place (as
/// [`handle_completions`](crate::Dispatcher::handle_completions) does): nothing is lost, but
/// the guarantee is gone, so keep batches at most `CAPACITY` long and finish after each.
///
/// In [`finish`](Self::finish), operations are woken first (in completion order), then the
/// receivers of the inboxes that got deliveries (each once per run of consecutive deliveries),
/// then the collected resources are dropped.
pub struct Aftermath<R: Send + 'static> {
    wakers: Fixed<Waker>,
    inboxes: Fixed<Route<R>>,
    resources: Fixed<R>,
}

impl<R: Send + 'static> Aftermath<R> {
    /// How many wakers, inboxes and resources (each) it holds: the longest batch whose effects
    /// are all deferred.
    pub const CAPACITY: usize = CAPACITY;

    /// An empty one. Allocates nothing: its arrays are inline (`CAPACITY` times an
    /// `Option<R>`, a `Waker` and a sender), so keep one per driver and reuse it.
    pub fn new() -> Self {
        Self {
            wakers: Fixed::new(),
            inboxes: Fixed::new(),
            resources: Fixed::new(),
        }
    }

    /// How many more completions are sure to have all their effects deferred (each adds at
    /// most one waker, inbox and resource).
    pub fn room(&self) -> usize {
        CAPACITY
            - self
                .wakers
                .items
                .len()
                .max(self.inboxes.items.len())
                .max(self.resources.items.len())
    }

    /// Whether nothing is left to do.
    pub fn is_empty(&self) -> bool {
        self.wakers.items.len() == 0
            && self.inboxes.items.len() == 0
            && self.resources.items.len() == 0
    }

    /// Runs the collected effects: wakes the operations, then the inboxes' receivers (and drops
    /// the senders taken out of the slots), then drops the resources. Leaves it empty, ready
    /// for the next batch.
    pub fn finish(&mut self) {
        self.wakers.take_each(Waker::wake);
        self.inboxes.take_each(|inbox| inbox.wake_receiver());
        self.resources.take_each(drop);
    }

    /// Defers waking `waker` (wakes it now if full).
    #[inline]
    pub(crate) fn wake_later(&mut self, waker: Waker) {
        if let Err(waker) = self.wakers.push(waker) {
            waker.wake();
        }
    }

    /// Defers waking the receiver of `inbox` and dropping this sender (does both now if full).
    /// Consecutive deliveries into one inbox keep one sender: the one kept holds the inbox
    /// open, so dropping the others runs nothing but a reference-count decrement.
    #[inline]
    pub(crate) fn wake_inbox_later(&mut self, inbox: Route<R>) {
        if self
            .inboxes
            .last()
            .is_some_and(|last| last.same_inbox(&inbox))
        {
            return;
        }
        if let Err(inbox) = self.inboxes.push(inbox) {
            inbox.wake_receiver();
        }
    }

    /// Defers dropping `resources` (drops them now if full).
    #[inline]
    pub(crate) fn drop_later(&mut self, resources: R) {
        if let Err(resources) = self.resources.push(resources) {
            drop(resources);
        }
    }
}

impl<R: Send + 'static> Default for Aftermath<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R: Send + 'static> Drop for Aftermath<R> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<R: Send + 'static> fmt::Debug for Aftermath<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aftermath")
            .field("wakers", &self.wakers.items.len())
            .field("inboxes", &self.inboxes.items.len())
            .field("resources", &self.resources.items.len())
            .finish()
    }
}

/// Where the effects of routing a completion go that may run consumer code: run in place
/// ([`InPlace`]) or collected in an [`Aftermath`] for later.
pub(crate) trait Effects<R: Send + 'static> {
    /// Feeds `c` to its slot; the owner's task is woken (now or later).
    fn complete(
        &mut self,
        table: &SlotTable<R, Route<R>>,
        id: WrId,
        c: &Completion,
    ) -> CompleteOutcome<R, Route<R>>;
    /// Resources of a reclaimed slot or of a failed delivery, to drop.
    fn drop_resources(&mut self, resources: R);
    /// The sender of an inbox that got a delivery (its receiver is to wake), or whose
    /// delivery failed; to drop.
    fn inbox(&mut self, sender: Route<R>);
}

/// Effects run at once, except that the receiver of the inbox delivered into last is woken
/// only when another inbox gets a delivery or this is dropped (once per run of deliveries).
pub(crate) struct InPlace<R: Send + 'static>(pub(crate) Option<Route<R>>);

impl<R: Send + 'static> Effects<R> for InPlace<R> {
    #[inline(always)]
    fn complete(
        &mut self,
        table: &SlotTable<R, Route<R>>,
        id: WrId,
        c: &Completion,
    ) -> CompleteOutcome<R, Route<R>> {
        table.complete(id.index(), id.generation(), c)
    }

    #[inline(always)]
    fn drop_resources(&mut self, resources: R) {
        drop(resources);
    }

    #[inline]
    fn inbox(&mut self, sender: Route<R>) {
        match &self.0 {
            Some(pending) if pending.same_inbox(&sender) => {}
            _ => {
                if let Some(previous) = self.0.replace(sender) {
                    previous.wake_receiver();
                }
            }
        }
    }
}

impl<R: Send + 'static> Drop for InPlace<R> {
    fn drop(&mut self) {
        if let Some(pending) = self.0.take() {
            pending.wake_receiver();
        }
    }
}

impl<R: Send + 'static> Effects<R> for Aftermath<R> {
    #[inline(always)]
    fn complete(
        &mut self,
        table: &SlotTable<R, Route<R>>,
        id: WrId,
        c: &Completion,
    ) -> CompleteOutcome<R, Route<R>> {
        let (outcome, waker) = table.complete_deferred(id.index(), id.generation(), c);
        if let Some(waker) = waker {
            self.wake_later(waker);
        }
        outcome
    }

    #[inline(always)]
    fn drop_resources(&mut self, resources: R) {
        self.drop_later(resources);
    }

    #[inline(always)]
    fn inbox(&mut self, sender: Route<R>) {
        self.wake_inbox_later(sender);
    }
}

/// [`Aftermath::CAPACITY`]: the verbs driver's largest poll batch.
const CAPACITY: usize = 64;

/// Up to [`CAPACITY`] values in a fixed array, first in first out. Backed by `ArrayVec`:
/// creating one writes nothing but its length (an `Aftermath` is made per polled batch).
struct Fixed<T> {
    items: arrayvec::ArrayVec<T, CAPACITY>,
}

impl<T> Fixed<T> {
    fn new() -> Self {
        Self {
            items: arrayvec::ArrayVec::new(),
        }
    }

    /// Appends `v`, or gives it back when full.
    #[inline]
    fn push(&mut self, v: T) -> Result<(), T> {
        self.items.try_push(v).map_err(|e| e.element())
    }

    #[inline]
    fn last(&self) -> Option<&T> {
        self.items.last()
    }

    /// Hands every value to `f`, in push order, and empties the array. If `f` panics, the
    /// values not handed over yet are dropped with the drain (never run twice, never leaked).
    fn take_each(&mut self, f: impl FnMut(T)) {
        self.items.drain(..).for_each(f);
    }
}
