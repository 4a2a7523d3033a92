//! Receives: one-shot receive futures, shared receive queues and receive streams over a
//! registered buffer pool.

use std::fmt;
use std::ops::Deref;
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use futures_core::Stream;
use rdma_sys as ffi;
use tokio_rdma_core::{inbox, Completion, Delivery, Dispatcher, InboxReceiver, InboxSender};

use crate::cq::{CompletionQueue, CqInner, Parked};
use crate::error::{Error, Result};
use crate::mr::{Access, AlignedBuf, LocalBufferMut, MemoryRegion, PdInner, ProtectionDomain};
use crate::ops::{check, OpFuture};
use crate::qp::QpInner;

/// Bytes of the global route header the NIC writes in front of every UD receive.
pub const GRH_LEN: usize = 40;

/// Where receives are posted: a QP's own receive queue or an SRQ.
#[derive(Clone)]
pub(crate) enum RecvTarget {
    Qp(Arc<QpInner>),
    Srq(Arc<SrqInner>),
}

#[derive(Clone)]
enum WeakTarget {
    Qp(Weak<QpInner>),
    Srq(Weak<SrqInner>),
}

impl RecvTarget {
    pub(crate) fn cq(&self) -> &Arc<CqInner> {
        match self {
            Self::Qp(q) => &q.recv_cq,
            Self::Srq(s) => &s.cq,
        }
    }

    fn downgrade(&self) -> WeakTarget {
        match self {
            Self::Qp(q) => WeakTarget::Qp(Arc::downgrade(q)),
            Self::Srq(s) => WeakTarget::Srq(Arc::downgrade(s)),
        }
    }

    /// Posts one receive WR with at most one SGE.
    fn post(&self, wr_id: u64, sge: (u64, u32, u32)) -> Result<()> {
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
        let mut bad = std::ptr::null_mut();
        let rc = match self {
            // SAFETY: the QP is live; `wr` and `sge` outlive the call (the provider copies
            // them); the memory the SGE names is owned by the operation until completion.
            Self::Qp(q) => unsafe { ffi::ibv_post_recv(q.as_ptr(), &mut wr, &mut bad) },
            // SAFETY: as above, for the SRQ.
            Self::Srq(s) => unsafe { ffi::ibv_post_srq_recv(s.srq.as_ptr(), &mut wr, &mut bad) },
        };
        if rc != 0 {
            return Err(Error::from_ret("ibv_post_recv", rc, "posting a receive"));
        }
        Ok(())
    }

    /// Posts a receive into `buf` and returns its future.
    pub(crate) fn recv<L: LocalBufferMut>(&self, buf: L) -> OpFuture<L> {
        let cq = self.cq();
        let op = match cq.dispatcher.reserve() {
            Ok(op) => op,
            Err(e) => return OpFuture::failed(e.into(), buf),
        };
        match self.post(op.wr_id().into_raw(), buf.sge()) {
            Ok(()) => OpFuture::posted(op, buf, cq.clone()),
            Err(e) => {
                op.cancel_unposted();
                OpFuture::failed(e, buf)
            }
        }
    }

    /// A stream of `count` receive buffers of `size` bytes each, reposted as messages drop.
    pub(crate) fn stream(
        &self,
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
            dispatcher: self.cq().dispatcher.clone(),
            target: self.downgrade(),
            closed: AtomicBool::new(false),
            posted: AtomicUsize::new(0),
        });
        let stream = RecvStream {
            rx,
            pool: pool.clone(),
            target: self.clone(),
        };
        for i in 0..count {
            pool.post_chunk(i)?;
        }
        Ok(stream)
    }
}

pub(crate) struct SrqInner {
    srq: NonNull<ffi::ibv_srq>,
    pub(crate) cq: Arc<CqInner>,
    pub(crate) pd: Arc<PdInner>,
}

ibverbs_thread_safe!(SrqInner);

impl SrqInner {
    pub(crate) fn as_ptr(&self) -> *mut ffi::ibv_srq {
        self.srq.as_ptr()
    }
}

destroy_on_drop!(
    SrqInner,
    srq,
    ibv_destroy_srq,
    "QPs using the SRQ hold an Arc to it"
);

/// A shared receive queue. All QPs attached to it must use its CQ as their receive CQ (the CQ's
/// dispatcher owns the receive slots). Cheap to clone.
#[derive(Clone)]
pub struct SharedReceiveQueue {
    pub(crate) inner: Arc<SrqInner>,
}

impl fmt::Debug for SharedReceiveQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedReceiveQueue").finish_non_exhaustive()
    }
}

impl SharedReceiveQueue {
    /// Creates an SRQ of `max_wr` receives whose completions land on `cq`.
    pub fn new(pd: &ProtectionDomain, cq: &CompletionQueue, max_wr: u32) -> Result<Self> {
        let mut attr = ffi::ibv_srq_init_attr {
            srq_context: std::ptr::null_mut(),
            attr: ffi::ibv_srq_attr {
                max_wr,
                max_sge: 1,
                srq_limit: 0,
            },
        };
        // SAFETY: the PD is live; `attr` is a valid in/out struct.
        let srq = unsafe { ffi::ibv_create_srq(pd.as_ptr(), &mut attr) };
        let srq = NonNull::new(srq)
            .ok_or_else(|| Error::last_os("ibv_create_srq", format!("max_wr {max_wr}")))?;
        Ok(Self {
            inner: Arc::new(SrqInner {
                srq,
                cq: cq.inner.clone(),
                pd: pd.inner.clone(),
            }),
        })
    }

    fn target(&self) -> RecvTarget {
        RecvTarget::Srq(self.inner.clone())
    }

    /// Arms the SRQ limit: when fewer than `limit` receives remain posted, the device raises
    /// [`crate::AsyncEventKind::SrqLimitReached`] (once; arm again afterwards).
    pub fn arm_limit(&self, limit: u32) -> Result<()> {
        let mut attr = ffi::ibv_srq_attr {
            max_wr: 0,
            max_sge: 0,
            srq_limit: limit,
        };
        // SAFETY: the SRQ is live; only `srq_limit` is read (mask IBV_SRQ_LIMIT).
        let rc = unsafe {
            ffi::ibv_modify_srq(
                self.inner.as_ptr(),
                &mut attr,
                ffi::ibv_srq_attr_mask::IBV_SRQ_LIMIT.0 as i32,
            )
        };
        if rc != 0 {
            return Err(Error::from_ret(
                "ibv_modify_srq",
                rc,
                format!("srq_limit {limit}"),
            ));
        }
        Ok(())
    }

    /// The kernel handle (matches [`crate::AsyncEventElement::Srq`]).
    pub fn handle(&self) -> u32 {
        // SAFETY: the SRQ is live; `handle` is a plain field.
        unsafe { (*self.inner.as_ptr()).handle }
    }

    /// Posts one receive into `buf`.
    pub fn recv<L: LocalBufferMut>(&self, buf: L) -> OpFuture<L> {
        self.target().recv(buf)
    }

    /// A stream of messages received by any QP attached to this SRQ (`count` buffers of
    /// `size` bytes; `completion().qp_num` tells which QP).
    pub fn recv_stream(&self, count: u32, size: usize) -> Result<RecvStream> {
        let pd = ProtectionDomain {
            inner: self.inner.pd.clone(),
        };
        self.target().stream(&pd, count, size)
    }
}

pub(crate) struct RecvPool {
    mr: MemoryRegion<AlignedBuf>,
    chunk: usize,
    tx: InboxSender<Delivery<Parked>>,
    dispatcher: Dispatcher<Parked>,
    target: WeakTarget,
    closed: AtomicBool,
    posted: AtomicUsize,
}

impl RecvPool {
    fn post_chunk(self: &Arc<Self>, index: u32) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("receive stream"));
        }
        let target = match &self.target {
            WeakTarget::Qp(w) => w.upgrade().map(RecvTarget::Qp),
            WeakTarget::Srq(w) => w.upgrade().map(RecvTarget::Srq),
        }
        .ok_or(Error::Closed("queue pair"))?;
        let id = self
            .dispatcher
            .reserve_into(&self.tx, Parked::Recv(self.clone(), index))?;
        self.posted.fetch_add(1, Ordering::AcqRel);
        let sge = (
            self.mr.addr() + (index as usize * self.chunk) as u64,
            self.chunk as u32,
            self.mr.lkey(),
        );
        if let Err(e) = target.post(id.into_raw(), sge) {
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
    target: RecvTarget,
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
        let cq = this.target.cq();
        let mut budget = cq.inline_budget();
        loop {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(d)) => {
                    this.pool.posted.fetch_sub(1, Ordering::AcqRel);
                    let Parked::Recv(pool, index) = d.resources else {
                        continue;
                    };
                    return Poll::Ready(Some(match check(d.completion) {
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
