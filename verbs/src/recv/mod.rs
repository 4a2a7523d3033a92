//! Receives: one-shot receive futures and receive streams over a registered buffer pool,
//! posted into any receive queue (a QP's own or a shared one) through [`PostRecv`].

mod pool;
mod stream;

pub(crate) use pool::stream;
pub use stream::{RecvMessage, RecvStream};

use std::sync::Arc;

use rdma_sys as ffi;

use crate::cq::CqInner;
use crate::error::{Error, Result};
use crate::mr::{check_writable, LocalBufferMut};
use crate::ops::{OpFuture, WorkPin};

/// Bytes of the global route header the NIC writes in front of every UD receive.
pub const GRH_LEN: usize = 40;

/// Where receives are posted: a QP's own receive queue or an SRQ (implemented by both, so
/// this module names neither).
pub(crate) trait PostRecv: Send + Sync + 'static {
    /// Posts one receive work request with at most one scatter entry `(addr, len, lkey)`.
    fn post_recv(&self, wr_id: u64, sge: (u64, u32, u32)) -> Result<()>;
    /// The CQ its receives complete on.
    fn recv_cq(&self) -> &Arc<CqInner>;
    /// The tag of its dispatcher slots (what is failed when it is destroyed early).
    fn tag(&self) -> u32;
    /// Its receive queue depth as granted by the device.
    fn depth(&self) -> usize;
    /// What a posted receive keeps alive: a QP (destroyed only after its receives are
    /// flushed), or nothing for an SRQ (which fails its receives itself when destroyed).
    fn work_pin(self: Arc<Self>) -> WorkPin;
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
    let op = match check_writable(&buf).and_then(|()| Ok(cq.dispatcher.reserve_tagged(target.tag())?)) {
        Ok(op) => op,
        Err(e) => return OpFuture::failed(e.into(), buf),
    };
    match target.post_recv(op.wr_id().into_raw(), buf.sge()) {
        Ok(()) => OpFuture::posted(op, buf, cq.clone(), target.clone().work_pin()),
        Err(e) => {
            op.cancel_unposted();
            OpFuture::failed(e, buf)
        }
    }
}

