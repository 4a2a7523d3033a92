//! Receives: one-shot receive futures and receive streams over a registered buffer pool,
//! posted into any receive queue (a QP's own or a shared one) through [`PostRecv`].

use std::fmt;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use futures_core::Stream;
use rdma_sys as ffi;
use tokio_rdma_core::{
    inbox, Completion, Delivery, Dispatcher, InboxReceiver, InboxSender, WcOpcode,
};

use crate::cq::{CqInner, Parked};
use crate::error::{Error, Result};
use crate::mr::{Access, AlignedBuf, LocalBufferMut, MemoryRegion, ProtectionDomain};
use crate::ops::{check, OpFuture};

/// Bytes of the global route header the NIC writes in front of every UD receive.
pub const GRH_LEN: usize = 40;

/// Where receives are posted: a QP's own receive queue or an SRQ (implemented by both, so
/// this module names neither).
pub(crate) trait PostRecv: Send + Sync + 'static {
    /// Posts one receive work request with at most one scatter entry `(addr, len, lkey)`.
    fn post_recv(&self, wr_id: u64, sge: (u64, u32, u32)) -> Result<()>;
    /// The CQ its receives complete on.
    fn recv_cq(&self) -> &Arc<CqInner>;
}

/// A receive queue to post into.
pub(crate) type RecvTarget = Arc<dyn PostRecv>;

/// Builds the receive work request for one scatter entry and hands it to `post`.
pub(crate) fn with_recv_wr(
    wr_id: u64,
    sge: (u64, u32, u32),
    post: impl FnOnce(&mut ffi::ibv_recv_wr) -> i32,
) -> Result<()> {
    let mut sge = ffi::ibv_sge {
        addr: sge.0,
        length: sge.1,
        lkey: sge.2,
    };
    let mut wr = ffi::ibv_recv_wr {
        wr_id,
        next: std::ptr::null_mut(),
        sg_list: &mut sge,
        num_sge: i32::from(sge.length > 0),
    };
    let rc = post(&mut wr);
    if rc != 0 {
        return Err(Error::from_ret("ibv_post_recv", rc, "posting a receive"));
    }
    Ok(())
}

/// Posts a receive into `buf` and returns its future.
pub(crate) fn recv<L: LocalBufferMut>(target: &RecvTarget, buf: L) -> OpFuture<L> {
    let cq = target.recv_cq();
    let op = match cq.dispatcher.reserve() {
        Ok(op) => op,
        Err(e) => return OpFuture::failed(e.into(), buf),
    };
    match target.post_recv(op.wr_id().into_raw(), buf.sge()) {
        Ok(()) => OpFuture::posted(op, buf, cq.clone(), WcOpcode::Recv),
        Err(e) => {
            op.cancel_unposted();
            OpFuture::failed(e, buf)
        }
    }
}

/// A stream of `count` receive buffers of `size` bytes each, reposted as messages drop.
pub(crate) fn stream(
    target: &RecvTarget,
    pd: &ProtectionDomain,
    count: u32,
    size: usize,
) -> Result<RecvStream> {
    if count == 0 || size == 0 || size > u32::MAX as usize {
        return Err(Error::InvalidArgument(format!(
            "receive stream of {count} x {size} bytes"
        )));
    }
    let total = size
        .checked_mul(count as usize)
        .ok_or_else(|| Error::InvalidArgument("receive pool too large".into()))?;
    let mr = pd.register(AlignedBuf::page_aligned(total)?, Access::LOCAL_WRITE)?;
    let (tx, rx) = inbox(count as usize);
    let pool = Arc::new(RecvPool {
        mr,
        chunk: size,
        tx,
        dispatcher: target.recv_cq().dispatcher.clone(),
        target: Arc::downgrade(target),
        closed: AtomicBool::new(false),
        posted: AtomicUsize::new(0),
    });
    let stream = RecvStream {
        rx,
        pool: pool.clone(),
        cq: target.recv_cq().clone(),
    };
    for i in 0..count {
        pool.post_chunk(i)?;
    }
    Ok(stream)
}

pub(crate) struct RecvPool {
    mr: MemoryRegion<AlignedBuf>,
    chunk: usize,
    tx: InboxSender<Delivery<Parked>>,
    dispatcher: Dispatcher<Parked>,
    target: Weak<dyn PostRecv>,
    closed: AtomicBool,
    posted: AtomicUsize,
}

impl RecvPool {
    fn post_chunk(self: &Arc<Self>, index: u32) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("receive stream"));
        }
        let target = self.target.upgrade().ok_or(Error::Closed("queue pair"))?;
        let id = self
            .dispatcher
            .reserve_into(&self.tx, Parked::Recv(self.clone(), index))?;
        self.posted.fetch_add(1, Ordering::AcqRel);
        let sge = (
            self.mr.addr() + (index as usize * self.chunk) as u64,
            self.chunk as u32,
            self.mr.lkey(),
        );
        if let Err(e) = target.post_recv(id.into_raw(), sge) {
            self.posted.fetch_sub(1, Ordering::AcqRel);
            drop(self.dispatcher.cancel_routed(id));
            return Err(e);
        }
        Ok(())
    }

    fn chunk_bytes(&self, index: u32, len: usize) -> &[u8] {
        let len = len.min(self.chunk);
        // SAFETY: chunk `index` is not posted (its completion was delivered and the message that
        // owns it has not been dropped), so the NIC does not write it; it lies inside the
        // region; other chunks may be written concurrently but are disjoint.
        unsafe {
            std::slice::from_raw_parts(
                (self.mr.addr() as *const u8).add(index as usize * self.chunk),
                len,
            )
        }
    }
}

/// A stream of received messages (`Item = Result<RecvMessage>`). A failed receive (e.g. a
/// flush after the QP entered the error state) is yielded as an error and stops reposting;
/// the stream ends once nothing is posted any more.
pub struct RecvStream {
    rx: InboxReceiver<Delivery<Parked>>,
    pool: Arc<RecvPool>,
    cq: Arc<CqInner>,
}

impl fmt::Debug for RecvStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvStream")
            .field("posted", &self.pool.posted.load(Ordering::Relaxed))
            .field("chunk", &self.pool.chunk)
            .finish()
    }
}

impl Stream for RecvStream {
    type Item = Result<RecvMessage>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let cq = &this.cq;
        let mut budget = cq.inline_budget();
        loop {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(d)) => {
                    this.pool.posted.fetch_sub(1, Ordering::AcqRel);
                    let Parked::Recv(pool, index) = d.resources else {
                        continue;
                    };
                    let Ok(pool) = pool.downcast::<RecvPool>() else {
                        continue;
                    };
                    return Poll::Ready(Some(match check(d.completion, WcOpcode::Recv) {
                        Ok(c) => Ok(RecvMessage {
                            pool,
                            index,
                            completion: c,
                        }),
                        Err(e) => {
                            this.pool.closed.store(true, Ordering::Release);
                            Err(e)
                        }
                    }));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    if this.pool.closed.load(Ordering::Acquire)
                        && this.pool.posted.load(Ordering::Acquire) == 0
                    {
                        return Poll::Ready(None);
                    }
                    // Inline polls within the channel's budget; the waker is registered.
                    if !cq.poll_inline(&mut budget) {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        self.pool.closed.store(true, Ordering::Release);
        // Deliveries still to come are refused and their chunks (Arc<RecvPool>) dropped by
        // the dispatcher; the pool's memory lives until the last posted chunk completes or is
        // flushed (or the CQ is destroyed after its QPs).
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
        if let Err(e) = self.pool.post_chunk(self.index) {
            tracing::debug!(error = %e, "receive buffer not reposted");
        }
    }
}
