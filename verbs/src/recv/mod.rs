//! Receives: one-shot receive futures and receive streams over a registered buffer pool,
//! posted into any receive queue (a QP's own or a shared one) through [`PostRecv`].

mod pool;
mod stream;

use pool::RecvPool;

pub use stream::{RecvMessage, RecvStream};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rdma_sys as ffi;
use tokio_rdma_core::{inbox, WcOpcode};

use crate::cq::CqInner;
use crate::error::{Error, Result};
use crate::mr::{check_writable, LocalBufferMut, ProtectionDomain};
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
    let op =
        match check_writable(&buf).and_then(|()| Ok(cq.dispatcher.reserve_tagged(target.tag())?)) {
            Ok(op) => op,
            Err(e) => return OpFuture::failed(e, buf),
        };
    match target.post_recv(op.wr_id().into_raw(), buf.sge()) {
        Ok(()) => OpFuture::posted(
            op,
            buf,
            cq.clone(),
            target.clone().work_pin(),
            WcOpcode::Recv,
        ),
        Err(e) => {
            op.cancel_unposted();
            OpFuture::failed(e, buf)
        }
    }
}

/// A stream of `count` receive buffers of `size` bytes each, reposted as messages drop.
///
/// Checks before posting anything: the count fits the queue's granted depth and the CQ has
/// that many free slots (all slots are reserved first, so running out posts nothing).
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
    if count as usize > target.depth() {
        return Err(Error::InvalidArgument(format!(
            "receive stream of {count} buffers exceeds the receive queue's depth of {}",
            target.depth()
        )));
    }
    // One place per chunk, plus one for the repost-failure notice (at most one is queued).
    let (tx, rx) = inbox(count as usize + 1);
    let cq = target.recv_cq();
    let pool = RecvPool::new(target, pd, count, size, tx)?;
    // Reserve every slot before posting any receive: a CQ without enough free slots then
    // fails the call with nothing posted.
    let mut ids = Vec::with_capacity(count as usize);
    for i in 0..count {
        match pool.reserve(i) {
            Ok(id) => ids.push(id),
            Err(e) => {
                for id in ids {
                    pool.cancel(id);
                }
                pool.closed.store(true, Ordering::Release);
                return Err(e);
            }
        }
    }
    let target = target.clone();
    let mut ids = ids.into_iter().enumerate();
    for (i, id) in ids.by_ref() {
        if let Err(e) = pool.post_reserved(&*target, i as u32, id) {
            // A receive queue already holding other receives: what was posted stays posted
            // (a posted receive cannot be taken back) and its deliveries are refused.
            pool.closed.store(true, Ordering::Release);
            for (_, id) in ids {
                pool.cancel(id);
            }
            return Err(e);
        }
    }
    Ok(RecvStream::new(rx, pool, cq.clone()))
}
