//! Teardown: graceful close with markers, and destroying the QP.

use rdma_sys as ffi;

use super::{QpInner, QueuePair};
use crate::error::Result;
use crate::recv;
use crate::wr::SendOp;

impl QueuePair {
    /// Graceful teardown: moves the QP to ERR and waits until marker work requests queued
    /// behind everything else have completed. Work queues complete in order, so by then every
    /// earlier work request has completed (mostly as flush errors) and the buffers of dropped
    /// operations are released. The receive marker (a zero-length receive, skipped with an
    /// SRQ) is posted *before* the transition: rxe does not flush receives posted to a QP that
    /// is already in ERR. The QP itself is destroyed when this and every other handle to it are
    /// gone (dropping without `close` also moves it to ERR and destroys it; buffers parked for
    /// its unfinished work requests are then released no later than when the CQ is destroyed).
    pub async fn close(self) -> Result<()> {
        let recv = self.target().ok().map(|t| recv::recv(&t, ()));
        self.set_error()?;
        let send = self.post_one(SendOp::Send, ());
        // Any outcome of a marker (flush error, or a late message landing in the zero-length
        // receive) proves the queue ahead of it has drained; a failed post means nothing was
        // queued on that side.
        let _ = send.await;
        if let Some(recv) = recv {
            let _ = recv.await;
        }
        Ok(())
    }
}

impl Drop for QpInner {
    fn drop(&mut self) {
        // Move to ERR first so the NIC stops processing; outstanding WRs get flushed.
        // Buffers of abandoned operations stay parked in the CQ's dispatcher until their
        // flush completion arrives or the CQ is destroyed (after this QP), never earlier.
        let _ = self.to_error();
        // SAFETY: no operation future references the QP pointer any more (they hold Arcs to
        // the QP only while posting); async events are acked as soon as they are read.
        let rc = unsafe { ffi::ibv_destroy_qp(self.as_ptr()) };
        if rc != 0 {
            tracing::warn!(rc, qp = self.qp_num, "ibv_destroy_qp failed");
        }
    }
}
