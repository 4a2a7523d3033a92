//! The stream of received messages over a [`RecvPool`], and the messages themselves.

use std::fmt;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio_rdma_core::{Completion, Delivery, InboxReceiver, WcOpcode};

use super::pool::RecvPool;
use crate::cq::{CqInner, Parked, Waiting};
use crate::error::Result;
use crate::ops::check;

/// A stream of received messages (`Item = Result<RecvMessage>`).
///
/// A failed receive (e.g. a flush after the QP entered the error state) is yielded as an
/// error and stops reposting; the stream ends once nothing is posted any more (so it ends
/// after [`QueuePair::close`](crate::QueuePair::close), once the flushes are in). A buffer
/// that could not be reposted when its message was dropped (every CQ slot in use) is retried
/// at the next poll; if nothing else is posted and the retry fails too, the stream yields that
/// error and ends instead of waiting forever.
pub struct RecvStream {
    rx: InboxReceiver<Delivery<Parked>>,
    pool: Arc<RecvPool>,
    cq: Arc<CqInner>,
    /// Inline polls the current wait has made (see `CqInner::spin_turn`).
    spun: u32,
    /// Counted among the CQ's futures waiting for the driver (`CqInner::begin_wait`).
    waiting: Waiting,
}

impl fmt::Debug for RecvStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvStream")
            .field("posted", &self.pool.posted.load(Ordering::Relaxed))
            .field("chunk", &self.pool.chunk)
            .finish()
    }
}

impl RecvStream {
    pub(super) fn new(
        rx: InboxReceiver<Delivery<Parked>>,
        pool: Arc<RecvPool>,
        cq: Arc<CqInner>,
    ) -> Self {
        Self {
            rx,
            pool,
            cq,
            spun: 0,
            waiting: Waiting::No,
        }
    }

    /// Receive buffers currently posted (not yet delivered).
    pub fn posted(&self) -> usize {
        self.pool.posted.load(Ordering::Acquire)
    }
}

impl Stream for RecvStream {
    type Item = Result<RecvMessage>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let next = this.poll_item(cx);
        if next.is_ready() {
            // An item is out: no longer waiting for the driver.
            this.cq.end_wait(&mut this.waiting);
        }
        next
    }
}

impl RecvStream {
    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<RecvMessage>>> {
        let this = self;
        // tokio's cooperative budget (see `OpFuture::poll`).
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let pool = &this.pool;
        if pool.closed.load(Ordering::Acquire) {
            // Ends below once the deliveries still posted are in.
        } else if let Err(e) = pool.retry_orphans() {
            if pool.posted.load(Ordering::Acquire) == 0 {
                // Nothing posted that could ever wake us: end with the reason.
                pool.closed.store(true, Ordering::Release);
                return Poll::Ready(Some(Err(e)));
            }
        }
        let spin = this.cq.spin_turn(this.spun);
        let start = spin.unwrap_or_else(|| this.cq.inline_budget());
        let mut budget = start;
        // Inline polls take deliveries without registering the waker; it is registered (and
        // the inbox re-checked) only when about to return `Pending`.
        loop {
            let next = match this.rx.try_recv() {
                Some(d) => {
                    if budget < start {
                        // Found by an inline poll.
                        this.cq.inline_outcome(Some(true));
                    }
                    Some(d)
                }
                None if !pool.is_spent() && this.cq.poll_inline(&mut budget) => continue,
                None => match this.rx.poll_recv(cx) {
                    Poll::Ready(d) => d,
                    Poll::Pending if pool.is_spent() => return Poll::Ready(None),
                    Poll::Pending => {
                        this.spun = this.spun.saturating_add(start - budget);
                        if spin.is_some() {
                            // Spinning: run again after every other ready task.
                            this.cq.note_spin();
                            cx.waker().wake_by_ref();
                        } else {
                            if budget == 0 && start > 0 {
                                this.cq.inline_outcome(Some(false));
                            }
                            this.cq.begin_wait(&mut this.waiting);
                            this.cq.wait_on_channel(cx);
                        }
                        return Poll::Pending;
                    }
                },
            };
            let Some(d) = next else {
                return Poll::Ready(None);
            };
            let Parked::Recv(chunk_pool, index) = d.resources else {
                // A notice from a failed repost: re-check from the top.
                pool.notice_queued.store(false, Ordering::Release);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            };
            pool.posted.fetch_sub(1, Ordering::AcqRel);
            let Ok(chunk_pool) = chunk_pool.downcast::<RecvPool>() else {
                continue;
            };
            coop.made_progress();
            this.spun = 0;
            return Poll::Ready(Some(match check(d.completion, WcOpcode::Recv) {
                Ok(c) => Ok(RecvMessage {
                    pool: chunk_pool,
                    index,
                    completion: c,
                }),
                Err(e) => {
                    pool.closed.store(true, Ordering::Release);
                    Err(e)
                }
            }));
        }
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        self.cq.end_wait(&mut self.waiting);
        self.pool.closed.store(true, Ordering::Release);
        // Deliveries still to come are refused and their chunks (Arc<RecvPool>) dropped by
        // the dispatcher; the pool's memory lives until the last posted chunk completes or is
        // flushed (or its queue is destroyed and the slot failed).
        self.pool.tx.close();
        while self.rx.try_recv().is_some() {}
    }
}

/// One received message: a view of a pool buffer; the buffer is reposted when this drops.
pub struct RecvMessage {
    pool: Arc<RecvPool>,
    index: u32,
    completion: Completion,
}

impl RecvMessage {
    /// The work completion (byte_len, imm_data, qp_num, src_qp, ...).
    pub fn completion(&self) -> &Completion {
        &self.completion
    }
    /// Immediate data, when sent with one.
    pub fn imm(&self) -> Option<u32> {
        self.completion.imm_data
    }
}

impl Deref for RecvMessage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.pool
            .chunk_bytes(self.index, self.completion.byte_len as usize)
    }
}

impl fmt::Debug for RecvMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvMessage")
            .field("len", &self.completion.byte_len)
            .field("imm", &self.completion.imm_data)
            .field("qp_num", &self.completion.qp_num)
            .finish()
    }
}

impl Drop for RecvMessage {
    fn drop(&mut self) {
        if self.pool.closed.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self.pool.repost(self.index) {
            self.pool.repost_failed(self.index, &e);
        }
    }
}
