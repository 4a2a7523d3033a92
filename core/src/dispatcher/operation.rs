//! [`Operation`]: one posted work request, awaited by its owner.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::{Handle, Route, Shared};
use crate::completion::Completion;
use crate::sync::{Arc, OwnerTicket, Released, SlotTable};
use crate::wr_id::WrId;

/// One posted work request: a future resolving to its [`Completion`].
///
/// `Unpin`. The completion is handed out once: polling again after `Ready` panics (as most
/// futures do), and [`try_complete`](Self::try_complete) then returns `None`. Dropping it before
/// the completion arrived does not free the slot: the slot becomes *abandoned* and is freed by
/// the completion (or flush error) when it comes. Use [`abandon`](Self::abandon) to keep
/// buffers alive until then, [`cancel_unposted`](Self::cancel_unposted) if the work request
/// never reached the NIC.
pub struct Operation<R: Send + 'static = ()> {
    handle: Arc<Handle<R>>,
    /// Our slot and its generation (kept for `wr_id` after completion).
    id: WrId,
    /// `Some` while we own the slot; `None` once the completion was taken.
    ticket: Option<OwnerTicket>,
}

impl<R: Send + 'static> fmt::Debug for Operation<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Operation")
            .field("wr_id", &self.wr_id())
            .field("done", &self.ticket.is_none())
            .finish_non_exhaustive()
    }
}

impl<R: Send + 'static> Operation<R> {
    /// The operation owning the slot `ticket` proves, reserved through `handle`.
    pub(super) fn new(handle: Arc<Handle<R>>, ticket: OwnerTicket) -> Self {
        Self {
            handle,
            id: ticket.wr_id(),
            ticket: Some(ticket),
        }
    }

    /// The id to put into the work request's `wr_id`.
    pub fn wr_id(&self) -> WrId {
        self.id
    }

    #[inline]
    fn shared(&self) -> &Shared<R> {
        &self.handle.shared
    }

    #[inline]
    fn table(&self) -> &SlotTable<R, Route<R>> {
        &self.shared().table
    }

    /// Non-blocking check: the completion, if it has arrived (the slot is then freed and
    /// the operation is finished: later calls return `None`).
    #[inline]
    pub fn try_complete(&mut self) -> Option<Completion> {
        let ticket = self.ticket.take()?;
        match self.table().try_take(ticket) {
            Ok(c) => Some(c),
            Err(ticket) => {
                self.ticket = Some(ticket);
                None
            }
        }
    }

    fn release_slot(&mut self, resources: Option<R>, posted: bool) {
        if let Some(ticket) = self.ticket.take() {
            let released = if posted {
                self.table().release(ticket, resources)
            } else {
                self.table().cancel(ticket)
            };
            if let Released::Freed(r) = released {
                drop(r);
            }
        }
    }

    /// The work request never reached the NIC (post failed): free the slot now.
    pub fn cancel_unposted(mut self) {
        self.release_slot(None, false);
    }

    /// Drops the operation while the NIC may still use `resources`: they are parked in the
    /// slot and dropped when this slot's completion (or flush error) arrives, never before.
    /// If the completion already arrived, they are dropped right away.
    pub fn abandon(mut self, resources: R) {
        self.release_slot(Some(resources), true);
    }
}

impl<R: Send + 'static> Future for Operation<R> {
    type Output = Completion;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Completion> {
        let this = &mut *self;
        let Some(ticket) = this.ticket.take() else {
            panic!("`Operation` polled after it returned `Ready`");
        };
        // Register, then re-check (inside `register`).
        let ticket = match this.table().try_take(ticket) {
            Ok(c) => return Poll::Ready(c),
            Err(ticket) => ticket,
        };
        match this.table().register(ticket, cx.waker()) {
            Ok(c) => Poll::Ready(c),
            Err(ticket) => {
                this.ticket = Some(ticket);
                Poll::Pending
            }
        }
    }
}

impl<R: Send + 'static> Drop for Operation<R> {
    fn drop(&mut self) {
        // Without `abandon`: the slot is abandoned with no resources (or freed if the
        // completion already arrived).
        self.release_slot(None, true);
    }
}
