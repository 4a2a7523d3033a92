//! Raw work requests: posted with the caller's own `wr_id` and no future, their completions
//! polled by the CQ's [`RawPoller`](crate::RawPoller), the way a raw verbs loop (perftest, a
//! kernel-style callback dispatcher) works.
//!
//! Soundness without an owner per request: the memory a raw request names belongs to a region
//! the QP itself keeps ([`QueuePair::keep_region`]) until it is destroyed, so it outlives every
//! request posted on the QP (after `ibv_destroy_qp` the NIC touches none of it; should the
//! destroy fail, the regions are leaked, never freed). The NIC writes only into regions peers
//! may write anyway ([`PeerWritable`], read by copy), so no reference into bytes the NIC
//! writes can exist. Raw requests take CQ entries the dispatcher's slots do not account for:
//! the QP claims its queue depths of CQ headroom on its first raw post.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rdma_sys as ffi;

use super::{QpInner, QueuePair};
use crate::cq::RAW_WR_BIT;
use crate::error::{Error, Result};
use crate::mr::{Access, MemoryRegion, PeerWritable, RegisterBuffer, Sharing};
use crate::wr::{build_wr, validate, SendOp};

/// A region kept by one QP for raw work requests ([`QueuePair::keep_region`]): its address,
/// length and key, and whether the NIC may write it. Only valid on the QP that keeps it.
#[derive(Clone, Copy, Debug)]
pub struct RawRegion {
    tag: u32,
    addr: u64,
    len: usize,
    lkey: u32,
    nic_writable: bool,
}

impl RawRegion {
    /// The region's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl QpInner {
    /// Claims the CQ entries raw work may take (its send and receive depths) on the first
    /// raw post; one load once claimed.
    fn check_raw_headroom(&self) -> Result<()> {
        if self.raw_headroom.load(Ordering::Acquire) {
            return Ok(());
        }
        let (s, r) = (self.max_send_wr as usize, self.max_recv_wr as usize);
        let same = Arc::ptr_eq(&self.send_cq, &self.recv_cq);
        let ok = if same {
            self.send_cq.claim_headroom(s + r)
        } else if self.send_cq.claim_headroom(s) {
            self.recv_cq.claim_headroom(r) || {
                self.send_cq.release_headroom(s);
                false
            }
        } else {
            false
        };
        if !ok {
            return Err(Error::InvalidArgument(format!(
                "raw work on qp {:#x} needs {} CQ entries beyond the CQ's completion slots \
                 (its send and receive depths): use a larger CQ",
                self.qp_num,
                s + r
            )));
        }
        if self.raw_headroom.swap(true, Ordering::AcqRel) {
            self.release_raw_headroom();
        }
        Ok(())
    }

    /// Gives back what `check_raw_headroom` claimed.
    pub(super) fn release_raw_headroom(&self) {
        let (s, r) = (self.max_send_wr as usize, self.max_recv_wr as usize);
        if Arc::ptr_eq(&self.send_cq, &self.recv_cq) {
            self.send_cq.release_headroom(s + r);
        } else {
            self.send_cq.release_headroom(s);
            self.recv_cq.release_headroom(r);
        }
    }
}

/// The wire `wr_id` of raw request `id`.
fn raw_id(id: u64) -> Result<u64> {
    if id & RAW_WR_BIT != 0 {
        return Err(Error::InvalidArgument(format!(
            "raw wr_id {id:#x} has bit 31 set (reserved to mark raw requests)"
        )));
    }
    Ok(id | RAW_WR_BIT)
}

impl QueuePair {
    /// Keeps `region` alive with the QP, for raw sends and RDMA WRITE sources: the NIC only
    /// reads it. Cold path (takes a lock).
    pub fn keep_region<B, S>(&self, region: Arc<MemoryRegion<B, S>>) -> RawRegion
    where
        B: RegisterBuffer + Sync,
        S: Sharing,
    {
        self.keep(region, false)
    }

    /// Keeps a peer-writable `region` alive with the QP, for raw requests the NIC writes into
    /// as well (receives, RDMA READ targets): this program reads it only by copy
    /// ([`MemoryRegion::read_at`]). It needs [`Access::LOCAL_WRITE`].
    pub fn keep_region_mut<B>(
        &self,
        region: Arc<MemoryRegion<B, PeerWritable>>,
    ) -> Result<RawRegion>
    where
        B: RegisterBuffer + Sync,
    {
        if !region.access().contains(Access::LOCAL_WRITE) {
            return Err(Error::InvalidArgument(
                "a region the NIC writes into needs LOCAL_WRITE access".into(),
            ));
        }
        Ok(self.keep(region, true))
    }

    fn keep<B, S>(&self, region: Arc<MemoryRegion<B, S>>, nic_writable: bool) -> RawRegion
    where
        B: RegisterBuffer + Sync,
        S: Sharing,
    {
        let r = RawRegion {
            tag: self.inner.tag(),
            addr: region.addr(),
            len: region.len(),
            lkey: region.lkey(),
            nic_writable,
        };
        let mut kept = self.inner.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.push(region);
        r
    }

    /// The scatter entry for `range` of `region`, checked against this QP and the region.
    fn raw_sge(
        &self,
        region: &RawRegion,
        range: Range<usize>,
        write: bool,
    ) -> Result<(u64, u32, u32)> {
        if region.tag != self.inner.tag() {
            return Err(Error::InvalidArgument(
                "the region is kept by another queue pair".into(),
            ));
        }
        if range.start > range.end || range.end > region.len {
            return Err(Error::InvalidArgument(format!(
                "range {range:?} outside a region of {} bytes",
                region.len
            )));
        }
        if write && !region.nic_writable {
            return Err(Error::InvalidArgument(
                "the NIC would write into a region kept read-only (use keep_region_mut)".into(),
            ));
        }
        let len = u32::try_from(range.len())
            .map_err(|_| Error::InvalidArgument("scatter entry above 4 GiB".into()))?;
        Ok((region.addr + range.start as u64, len, region.lkey))
    }

    /// Posts a raw send-queue request (SEND, RDMA WRITE/READ, atomics) from or into `range`
    /// of a region this QP keeps. Its completion, when `signaled` (or when it fails), goes to
    /// the send CQ's [`RawPoller`](crate::RawPoller) with `wr_id == id`. `id` must have bit
    /// 31 clear. An unsignaled request is retired by a later signaled one (RC completes in
    /// order); keep fewer than [`max_send_wr`](Self::max_send_wr) of them outstanding.
    pub fn post_raw_send(
        &self,
        id: u64,
        op: SendOp,
        region: &RawRegion,
        range: Range<usize>,
        signaled: bool,
    ) -> Result<()> {
        let writes = matches!(
            op,
            SendOp::Read(_) | SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. }
        );
        let sge = self.raw_sge(region, range, writes)?;
        validate(&op, sge.1, self.inner.qp_type.raw(), false)?;
        self.inner.check_raw_headroom()?;
        let wr_id = raw_id(id)?;
        let mut sge = ffi::ibv_sge {
            addr: sge.0,
            length: sge.1,
            lkey: sge.2,
        };
        let mut wr = build_wr(&op, wr_id, &mut sge, sge.length, false, None);
        if !signaled {
            wr.send_flags &= !ffi::ibv_send_flags::IBV_SEND_SIGNALED.0;
        }
        self.post_send_wr(&mut wr, &op)
    }

    /// Posts a raw inline SEND of `data` (copied during the call; at most the QP's
    /// `max_inline_data` bytes). Completion as for [`post_raw_send`](Self::post_raw_send).
    pub fn post_raw_inline(&self, id: u64, data: &[u8], signaled: bool) -> Result<()> {
        self.post_raw_inline_op(id, SendOp::Send, data, signaled)
    }

    /// Posts a raw inline request that carries data (SEND, RDMA WRITE, either with
    /// immediate) of `data`, copied during the call, at most the QP's `max_inline_data`
    /// bytes. Completion as for [`post_raw_send`](Self::post_raw_send).
    pub fn post_raw_inline_op(
        &self,
        id: u64,
        op: SendOp,
        data: &[u8],
        signaled: bool,
    ) -> Result<()> {
        if !matches!(
            op,
            SendOp::Send | SendOp::SendWithImm(_) | SendOp::Write(_) | SendOp::WriteWithImm(..)
        ) {
            return Err(Error::InvalidArgument(format!(
                "{} cannot be inline: only SENDs and RDMA WRITEs carry data",
                op.name()
            )));
        }
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        validate(&op, len, self.inner.qp_type.raw(), false)?;
        if len > self.inner.max_inline {
            return Err(Error::InvalidArgument(format!(
                "{len} bytes exceed max_inline_data {}",
                self.inner.max_inline
            )));
        }
        self.inner.check_raw_headroom()?;
        let wr_id = raw_id(id)?;
        let mut sge = ffi::ibv_sge {
            addr: data.as_ptr() as u64,
            length: len,
            lkey: 0,
        };
        let mut wr = build_wr(&op, wr_id, &mut sge, len, true, None);
        if !signaled {
            wr.send_flags &= !ffi::ibv_send_flags::IBV_SEND_SIGNALED.0;
        }
        self.post_send_wr(&mut wr, &op)
    }

    /// Posts a raw receive into `range` of a region this QP keeps writable
    /// ([`keep_region_mut`](Self::keep_region_mut)). Its completion goes to the receive CQ's
    /// [`RawPoller`](crate::RawPoller) with `wr_id == id` (bit 31 clear).
    pub fn post_raw_recv(&self, id: u64, region: &RawRegion, range: Range<usize>) -> Result<()> {
        let sge = self.raw_sge(region, range, true)?;
        self.target()?;
        self.inner.check_raw_headroom()?;
        let wr_id = raw_id(id)?;
        let _pass = self
            .inner
            .life
            .enter_recv()
            .ok_or(Error::Closed("queue pair (closing: no more receives)"))?;
        self.inner.post_recv_ungated(wr_id, sge)
    }

    fn post_send_wr(&self, wr: &mut ffi::ibv_send_wr, op: &SendOp) -> Result<()> {
        let mut bad = std::ptr::null_mut();
        // SAFETY: the QP is live (we hold a handle); `wr` and its SGE are valid for the call
        // (the provider copies them; inline data is copied during it); the memory the SGE
        // names belongs to a region this QP keeps until after `ibv_destroy_qp` (checked by
        // tag in `raw_sge`), or is inline.
        let rc = unsafe { ffi::ibv_post_send(self.inner.as_ptr(), wr, &mut bad) };
        if rc != 0 {
            return Err(Error::from_ret(
                "ibv_post_send",
                rc,
                format!("raw {op:?} on qp {:#x}", self.inner.qp_num),
            ));
        }
        Ok(())
    }
}
