//! Receive entry points of a queue pair (its own receive queue; none with an SRQ).

use rdma_sys as ffi;

use super::{QpInner, QueuePair};
use crate::cq::CqInner;
use crate::error::{Error, Result};
use crate::mr::LocalBufferMut;
use crate::ops::{OpFuture, WorkPin};
use crate::recv::{self, with_recv_wr, PostRecv, RecvStream, RecvTarget};
use std::sync::Arc;

impl QpInner {
    /// Posts a receive without looking at the receive gate (the close marker).
    pub(super) fn post_recv_ungated(&self, wr_id: u64, sge: (u64, u32, u32)) -> Result<()> {
        with_recv_wr(wr_id, sge, |wr| {
            let mut bad = std::ptr::null_mut();
            // SAFETY: the QP is live (not destroyed: destroying needs the last handle gone and
            // the receive gate closed, and every receive post but the close marker passes the
            // gate); `wr` and its SGE outlive the call (the provider copies them); the memory
            // the SGE names is owned by the operation until completion.
            unsafe { ffi::ibv_post_recv(self.as_ptr(), wr, &mut bad) }
        })
    }
}

impl PostRecv for QpInner {
    fn post_recv(&self, wr_id: u64, sge: (u64, u32, u32)) -> Result<()> {
        // No receive lands in a QP headed for ERR (close or last handle dropped): rxe never
        // flushes receives posted in ERR, so they would hang their futures and streams.
        let _pass = self
            .life
            .enter_recv()
            .ok_or(Error::Closed("queue pair (closing: no more receives)"))?;
        self.post_recv_ungated(wr_id, sge)
    }

    fn recv_cq(&self) -> &Arc<CqInner> {
        &self.recv_cq
    }

    fn tag(&self) -> u32 {
        QpInner::tag(self)
    }

    fn depth(&self) -> usize {
        self.max_recv_wr as usize
    }

    fn work_pin(self: Arc<Self>) -> WorkPin {
        Some(self)
    }
}

impl QueuePair {
    pub(super) fn target(&self) -> Result<RecvTarget> {
        if self.inner.srq.is_some() {
            return Err(Error::InvalidArgument(
                "this QP receives through an SRQ: post receives there".into(),
            ));
        }
        Ok(self.qp().clone())
    }

    /// Posts a receive into `buf`; resolves when a message landed (`byte_len` in the
    /// completion).
    pub fn recv<L: LocalBufferMut>(&self, buf: L) -> OpFuture<L> {
        match self.target() {
            Ok(t) => recv::recv(&t, buf),
            Err(e) => OpFuture::failed(e, buf),
        }
    }

    /// A stream of received messages over `count` pool buffers of `size` bytes each.
    pub fn recv_stream(&self, count: u32, size: usize) -> Result<RecvStream> {
        recv::stream(&self.target()?, &self.pd(), count, size)
    }
}
