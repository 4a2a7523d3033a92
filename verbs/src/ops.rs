//! Operation futures: what posting a work request returns.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio_rdma_core::{Completion, Operation, WcOpcode};

use crate::cq::{CqInner, Parked, Waiting};
use crate::error::{Error, Result};

/// The output of an operation: the result and the buffer, which always comes back (like
/// tokio-uring's `BufResult`).
pub type BufResult<T, L> = (Result<T>, L);

/// What in-flight work keeps alive besides its buffer: the queue pair it was posted on, so
/// the QP is destroyed only after its work completed or was flushed (providers discard a
/// destroyed QP's completions). `None` where the owner fails its work itself when destroyed
/// (an SRQ).
pub(crate) type WorkPin = Option<Arc<dyn Send + Sync>>;

enum State<L: Send + 'static> {
    Posted {
        op: Operation<Parked>,
        buf: Option<L>,
        cq: Arc<CqInner>,
        pin: WorkPin,
        /// What was posted, named by a failed completion.
        posted: WcOpcode,
        /// Inline polls this wait has made (see `CqInner::spin_turn`).
        spun: u32,
        /// Counted among the CQ's futures waiting for the driver (`CqInner::begin_wait`).
        waiting: Waiting,
    },
    Failed(Option<(Error, L)>),
    Done,
}

/// A posted work request. Posting happens eagerly when the operation is created; awaiting
/// yields its completion (a failed work completion becomes [`Error::Completion`]) together
/// with the buffer.
///
/// Dropping it before completion is safe: the buffer is parked in the dispatcher slot and
/// freed only when the completion (or flush error) for the work request arrives.
#[must_use = "the operation is posted; drop it only if you do not need the result"]
pub struct OpFuture<L: Send + 'static> {
    state: State<L>,
}

impl<L: Send + 'static> fmt::Debug for OpFuture<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match &self.state {
            State::Posted { op, .. } => format!("posted {:?}", op.wr_id()),
            State::Failed(_) => "failed".into(),
            State::Done => "done".into(),
        };
        f.debug_struct("OpFuture").field("state", &s).finish()
    }
}

impl<L: Send + 'static> OpFuture<L> {
    /// `pin`: what the work keeps alive until it is done (see [`WorkPin`]); `posted`: the
    /// opcode a successful completion of the work request carries (what a failed one reports
    /// as the operation).
    pub(crate) fn posted(
        op: Operation<Parked>,
        buf: L,
        cq: Arc<CqInner>,
        pin: WorkPin,
        posted: WcOpcode,
    ) -> Self {
        Self {
            state: State::Posted {
                op,
                buf: Some(buf),
                cq,
                pin,
                posted,
                spun: 0,
                waiting: Waiting::No,
            },
        }
    }

    pub(crate) fn failed(e: Error, buf: L) -> Self {
        Self {
            state: State::Failed(Some((e, buf))),
        }
    }
}

/// Turns a completion of a work request posted as `posted` into the future's result.
pub(crate) fn check(c: Completion, posted: WcOpcode) -> Result<Completion> {
    if c.is_success() {
        Ok(c)
    } else {
        Err(Error::Completion {
            status: c.status,
            vendor_err: c.vendor_err,
            opcode: posted,
            qp_num: c.qp_num,
        })
    }
}

// The buffer is never pinned (no structural pinning; it is only moved out by value), so the
// future is Unpin whatever `L` is.
impl<L: Send + 'static> Unpin for OpFuture<L> {}

impl<L: Send + 'static> Future for OpFuture<L> {
    type Output = BufResult<Completion, L>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // `State` holds nothing self-referential; `OpFuture` is Unpin.
        let this = self.get_mut();
        match &mut this.state {
            State::Posted {
                op,
                cq,
                posted,
                spun,
                waiting,
                ..
            } => {
                // tokio's cooperative budget, as tokio's own resources do: a task whose
                // operations keep completing (found by the inline polls, never `Pending`)
                // yields after its budget, so it cannot starve the others on its thread.
                let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
                let posted = *posted;
                // Inline polls for latency, within the channel's budget (never blocks: a poll
                // is skipped when the driver or another future is draining), checking without
                // registering; the waker is registered (and the slot re-checked) only when
                // about to return `Pending`, so a completion found inline costs no
                // registration and no self-wake.
                let mut ready = op.try_complete().map_or(Poll::Pending, Poll::Ready);
                if ready.is_pending() {
                    let spin = cq.spin_turn(*spun);
                    let start = spin.unwrap_or_else(|| cq.inline_budget());
                    let mut budget = start;
                    while ready.is_pending() && cq.poll_inline(&mut budget) {
                        ready = op.try_complete().map_or(Poll::Pending, Poll::Ready);
                    }
                    if ready.is_ready() {
                        cq.inline_outcome(Some(true));
                    } else {
                        // Registers the waker (the driver may find the completion first).
                        ready = Pin::new(&mut *op).poll(cx);
                        if ready.is_pending() {
                            *spun = spun.saturating_add(start - budget);
                            if spin.is_some() {
                                // Spinning: run again after every other ready task.
                                cq.note_spin();
                                cx.waker().wake_by_ref();
                            } else {
                                if start > 0 {
                                    cq.inline_outcome(Some(false));
                                }
                                cq.begin_wait(waiting);
                                cq.wait_on_channel(cx);
                            }
                        }
                    }
                }
                match ready {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(c) => {
                        coop.made_progress();
                        let State::Posted {
                            buf,
                            cq,
                            mut waiting,
                            ..
                        } = std::mem::replace(&mut this.state, State::Done)
                        else {
                            unreachable!("state checked above")
                        };
                        cq.end_wait(&mut waiting);
                        let buf = buf.expect("buffer present until completion");
                        Poll::Ready((check(c, posted), buf))
                    }
                }
            }
            State::Failed(f) => match f.take() {
                Some((e, buf)) => {
                    this.state = State::Done;
                    Poll::Ready((Err(e), buf))
                }
                None => Poll::Pending,
            },
            State::Done => panic!("OpFuture polled after completion"),
        }
    }
}

impl<L: Send + 'static> Drop for OpFuture<L> {
    fn drop(&mut self) {
        if let State::Posted { .. } = self.state {
            let State::Posted {
                mut op,
                buf,
                pin,
                cq,
                mut waiting,
                ..
            } = std::mem::replace(&mut self.state, State::Done)
            else {
                return;
            };
            cq.end_wait(&mut waiting);
            if op.try_complete().is_some() {
                // Completed: the NIC is done with the buffer; drop it normally.
                return;
            }
            // The buffer and the pin stay in the slot until the completion or flush arrives.
            let buf = buf.filter(|_| std::mem::size_of::<L>() > 0 || std::mem::needs_drop::<L>());
            let parked = match (buf, pin) {
                (None, None) => Parked::None,
                (None, Some(pin)) => Parked::Pinned(pin),
                (buf, pin) => Parked::Boxed(Box::new((buf, pin))),
            };
            op.abandon(parked);
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_rdma_core::WcStatus;

    use super::*;

    /// The error names what was posted, not the undefined opcode of the failed completion.
    #[test]
    fn failed_completion_reports_the_posted_opcode() {
        let c = Completion {
            status: WcStatus::RemAccessErr,
            opcode: WcOpcode::Send,
            ..Completion::zeroed()
        };
        let e = check(c, WcOpcode::RdmaRead).unwrap_err();
        assert!(matches!(
            e,
            Error::Completion {
                opcode: WcOpcode::RdmaRead,
                ..
            }
        ));
        assert!(e.to_string().starts_with("RDMA READ failed"), "{e}");
        let ok = Completion::zeroed();
        assert_eq!(check(ok, WcOpcode::RdmaRead).unwrap(), ok);
    }
}
