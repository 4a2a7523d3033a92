//! A registered pool of receive buffers posted into one receive queue, reposted as messages
//! are dropped.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio_rdma_core::{Completion, Delivery, Dispatcher, InboxSender, WrId};

use super::{PostRecv, RecvTarget};
use crate::cq::Parked;
use crate::error::{Error, Result};
use crate::mr::{Access, AlignedBuf, MemoryRegion, ProtectionDomain};
use crate::ops::WorkPin;

pub(crate) struct RecvPool {
    mr: MemoryRegion<AlignedBuf>,
    pub(super) chunk: usize,
    pub(super) tx: InboxSender<Delivery<Parked>>,
    dispatcher: Dispatcher<Parked>,
    target: Weak<dyn PostRecv>,
    tag: u32,
    /// Keeps a QP alive while the pool may have receives posted in it (see `WorkPin`).
    _pin: WorkPin,
    /// No more reposts: the stream is gone, a receive failed, or the queue is closing.
    pub(super) closed: AtomicBool,
    /// Chunks posted and not yet delivered to the stream.
    pub(super) posted: AtomicUsize,
    /// Chunks whose repost failed (e.g. every CQ slot was in use): the stream retries them.
    orphans: Mutex<Vec<u32>>,
    pub(super) has_orphans: AtomicBool,
    /// A repost-failure notice is queued in the inbox (at most one: the inbox has room for
    /// one beyond its chunks).
    pub(super) notice_queued: AtomicBool,
}

impl RecvPool {
    /// A pool of `count` chunks of `size` bytes in one region registered on `pd`, routed
    /// into `tx`, posting into `target`.
    pub(super) fn new(
        target: &RecvTarget,
        pd: &ProtectionDomain,
        count: u32,
        size: usize,
        tx: InboxSender<Delivery<Parked>>,
    ) -> Result<Arc<Self>> {
        let total = size
            .checked_mul(count as usize)
            .ok_or_else(|| Error::InvalidArgument("receive pool too large".into()))?;
        let mr = pd.register(AlignedBuf::page_aligned(total)?, Access::LOCAL_WRITE)?;
        Ok(Arc::new(RecvPool {
            mr,
            chunk: size,
            tx,
            dispatcher: target.recv_cq().dispatcher.clone(),
            target: Arc::downgrade(target),
            tag: target.tag(),
            _pin: target.clone().work_pin(),
            closed: AtomicBool::new(false),
            posted: AtomicUsize::new(0),
            orphans: Mutex::new(Vec::new()),
            has_orphans: AtomicBool::new(false),
            notice_queued: AtomicBool::new(false),
        }))
    }

    /// Frees a reserved, unposted slot.
    pub(super) fn cancel(&self, id: WrId) {
        drop(self.dispatcher.cancel_routed(id));
    }

    /// Reserves the routed slot for chunk `index`.
    pub(super) fn reserve(self: &Arc<Self>, index: u32) -> Result<WrId> {
        Ok(self.dispatcher.reserve_into_tagged(
            &self.tx,
            Parked::Recv(self.clone(), index),
            self.tag,
        )?)
    }

    /// Posts chunk `index` into its reserved slot `id` (freed again on failure).
    pub(super) fn post_reserved(&self, target: &dyn PostRecv, index: u32, id: WrId) -> Result<()> {
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

    /// Reposts chunk `index`.
    pub(super) fn repost(self: &Arc<Self>, index: u32) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("receive stream"));
        }
        let target = self
            .target
            .upgrade()
            .ok_or(Error::Closed("receive queue"))?;
        let id = self.reserve(index)?;
        self.post_reserved(&*target, index, id)
    }

    /// A dropped message's chunk could not be reposted. A closing queue ends the pool; any
    /// other failure (no free CQ slot) leaves the chunk for the stream to retry. Either way
    /// the stream is woken: it may have nothing else posted that would wake it.
    pub(super) fn repost_failed(&self, index: u32, e: &Error) {
        if matches!(e, Error::Closed(_)) {
            self.closed.store(true, Ordering::Release);
        } else {
            tracing::debug!(error = %e, index, "receive buffer not reposted; the stream retries");
            self.orphans
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(index);
            self.has_orphans.store(true, Ordering::Release);
        }
        // A notice that carries no chunk: the stream skips it and re-checks its state. One
        // queued is enough, and more could take the places deliveries need.
        if !self.notice_queued.swap(true, Ordering::AcqRel) {
            let notice = Delivery {
                completion: Completion::zeroed(),
                resources: Parked::None,
            };
            if self.tx.try_send(notice).is_err() {
                self.notice_queued.store(false, Ordering::Release);
            }
        }
    }

    /// Retries the orphaned chunks; the last error if some are still not posted.
    pub(super) fn retry_orphans(self: &Arc<Self>) -> Result<()> {
        // A load first: this runs on every poll of the stream.
        if !self.has_orphans.load(Ordering::Acquire)
            || !self.has_orphans.swap(false, Ordering::AcqRel)
        {
            return Ok(());
        }
        let orphans = std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|p| p.into_inner()));
        let mut last = Ok(());
        let mut left = Vec::new();
        for index in orphans {
            if let Err(e) = self.repost(index) {
                left.push(index);
                last = Err(e);
            }
        }
        if !left.is_empty() {
            self.orphans
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(left);
            self.has_orphans.store(true, Ordering::Release);
        }
        last
    }

    /// Closed with nothing posted: no delivery can come any more.
    pub(super) fn is_spent(&self) -> bool {
        self.closed.load(Ordering::Acquire) && self.posted.load(Ordering::Acquire) == 0
    }

    pub(super) fn chunk_bytes(&self, index: u32, len: usize) -> &[u8] {
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
