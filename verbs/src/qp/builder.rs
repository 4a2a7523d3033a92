//! Creating queue pairs.

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use rdma_sys as ffi;

use super::{QpInner, QpType, QueuePair};
use crate::cq::CompletionQueue;
use crate::device::KeepAlive;
use crate::error::{Error, Result};
use crate::mr::ProtectionDomain;
use crate::srq::SharedReceiveQueue;

/// Builds a queue pair (`ibv_create_qp`); the QP starts in RESET.
pub struct QueuePairBuilder {
    pd: ProtectionDomain,
    qp_type: QpType,
    send_cq: CompletionQueue,
    recv_cq: CompletionQueue,
    srq: Option<SharedReceiveQueue>,
    cap: ffi::ibv_qp_cap,
    keep_alive: Option<KeepAlive>,
}

fn fmt_cap(c: &ffi::ibv_qp_cap) -> String {
    format!(
        "max_send_wr {}, max_recv_wr {}, max_inline_data {}",
        c.max_send_wr, c.max_recv_wr, c.max_inline_data
    )
}

impl fmt::Debug for QueuePairBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuePairBuilder")
            .field("qp_type", &self.qp_type)
            .field("cap", &fmt_cap(&self.cap))
            .field("srq", &self.srq.is_some())
            .finish()
    }
}

impl QueuePairBuilder {
    /// Defaults: 128 send and 128 receive WRs, one SGE each, 64 bytes of inline data, the same
    /// CQ for sends and receives.
    pub fn new(pd: &ProtectionDomain, qp_type: QpType, cq: &CompletionQueue) -> Self {
        Self {
            pd: pd.clone(),
            qp_type,
            send_cq: cq.clone(),
            recv_cq: cq.clone(),
            srq: None,
            cap: ffi::ibv_qp_cap {
                max_send_wr: 128,
                max_recv_wr: 128,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 64,
            },
            keep_alive: None,
        }
    }
    /// A separate receive CQ.
    pub fn recv_cq(mut self, cq: &CompletionQueue) -> Self {
        self.recv_cq = cq.clone();
        self
    }
    /// Send queue depth.
    pub fn max_send_wr(mut self, n: u32) -> Self {
        self.cap.max_send_wr = n;
        self
    }
    /// Receive queue depth (ignored with an SRQ).
    pub fn max_recv_wr(mut self, n: u32) -> Self {
        self.cap.max_recv_wr = n;
        self
    }
    /// Max bytes of inline send data.
    pub fn max_inline_data(mut self, n: u32) -> Self {
        self.cap.max_inline_data = n;
        self
    }
    /// Receive through a shared receive queue; the receive CQ becomes the SRQ's CQ.
    pub fn srq(mut self, srq: &SharedReceiveQueue) -> Self {
        self.recv_cq = CompletionQueue {
            inner: srq.inner.cq.clone(),
        };
        self.srq = Some(srq.clone());
        self
    }

    /// Keeps `owner` alive until the QP is destroyed (it is dropped right after
    /// `ibv_destroy_qp`). A connection manager passes its `rdma_cm_id` here, so the id is
    /// destroyed after the QP connected through it, in rdma-core's order.
    pub fn keep_alive(mut self, owner: KeepAlive) -> Self {
        self.keep_alive = Some(owner);
        self
    }

    /// Creates the QP.
    pub fn build(self) -> Result<QueuePair> {
        let mut cap = self.cap;
        if self.srq.is_some() {
            cap.max_recv_wr = 0;
            cap.max_recv_sge = 0;
        }
        let mut attr = ffi::ibv_qp_init_attr {
            qp_context: std::ptr::null_mut(),
            send_cq: self.send_cq.inner.as_ptr(),
            recv_cq: self.recv_cq.inner.as_ptr(),
            srq: self
                .srq
                .as_ref()
                .map_or(std::ptr::null_mut(), |s| s.inner.as_ptr()),
            cap,
            qp_type: self.qp_type.raw(),
            // Every work request says whether it is signaled (all are, except
            // `send_inline_unsignaled`).
            sq_sig_all: 0,
        };
        // SAFETY: the PD, CQs and SRQ are live (the QP keeps Arcs to them); `attr` is a valid
        // in/out struct.
        let qp = unsafe { ffi::ibv_create_qp(self.pd.as_ptr(), &mut attr) };
        let qp = NonNull::new(qp).ok_or_else(|| {
            Error::last_os(
                "ibv_create_qp",
                format!("{:?} {}", self.qp_type, fmt_cap(&cap)),
            )
        })?;
        // SAFETY: `qp` is valid; `qp_num` is a plain field.
        let qp_num = unsafe { (*qp.as_ptr()).qp_num };
        // The granted depths. ibv_create_qp(3) says it writes them back into `attr.cap`, but
        // not every provider does (rxe leaves the request: asked 100, granted 127), so ask
        // the QP. Should the query fail, what was asked is still a lower bound of the grant.
        let mut cap = query_cap(qp.as_ptr(), qp_num).unwrap_or_else(|e| {
            tracing::warn!(%e, "using the capabilities ibv_create_qp returned");
            attr.cap
        });
        if self.srq.is_some() {
            cap.max_recv_wr = 0;
        }
        Ok(QueuePair::from_inner(QpInner {
            qp,
            qp_num,
            tag: QpInner::next_tag(),
            qp_type: self.qp_type,
            max_inline: cap.max_inline_data,
            max_send_wr: cap.max_send_wr,
            max_recv_wr: cap.max_recv_wr,
            signal_every: (cap.max_send_wr / 2).max(1),
            unsignaled: AtomicU32::new(0),
            send_slots: self.send_cq.inner.dispatcher.clone(),
            send_cq: self.send_cq.inner,
            recv_cq: self.recv_cq.inner,
            srq: self.srq.map(|s| s.inner),
            pd: self.pd.inner,
            life: Default::default(),
            headroom_claimed: AtomicBool::new(false),
            raw_headroom: AtomicBool::new(false),
            kept: Default::default(),
            _keep_alive: self.keep_alive,
        }))
    }
}

/// The capabilities `qp` has now, as `ibv_query_qp` reports them.
fn query_cap(qp: *mut ffi::ibv_qp, qp_num: u32) -> Result<ffi::ibv_qp_cap> {
    // SAFETY: both are plain C data; all-zero is valid.
    let mut attr: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut init: ffi::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the caller passes a live QP; `attr` and `init` are valid out-parameters.
    let rc = unsafe {
        ffi::ibv_query_qp(
            qp,
            &mut attr,
            ffi::ibv_qp_attr_mask::IBV_QP_CAP.0 as i32,
            &mut init,
        )
    };
    if rc != 0 {
        return Err(Error::from_ret(
            "ibv_query_qp",
            rc,
            format!("capabilities of qp {qp_num:#x}"),
        ));
    }
    Ok(attr.cap)
}

impl QpInner {
    /// Whether the send CQ can absorb the error and flush completions of this QP's unsignaled
    /// sends (see [`QueuePair::send_inline_unsignaled`], "CQ headroom"): on its first
    /// unsignaled send the QP claims its send-queue depth of the entries the device granted
    /// beyond the CQ's completion slots, shared by every QP on that CQ (given back when the
    /// QP is destroyed). One load once claimed.
    pub(super) fn check_unsignaled_headroom(&self) -> Result<()> {
        if self.headroom_claimed.load(Ordering::Acquire) {
            return Ok(());
        }
        let n = self.max_send_wr as usize;
        if !self.send_cq.claim_headroom(n) {
            return Err(Error::InvalidArgument(format!(
                "unsignaled sends on qp {:#x} need {n} CQ entries of headroom for their flush \
                 completions (its max_send_wr), but its send CQ has {} entries beyond its \
                 completion slots not claimed by other QPs sending unsignaled: use a larger CQ \
                 or a smaller send queue",
                self.qp_num,
                self.send_cq.headroom()
            )));
        }
        if self.headroom_claimed.swap(true, Ordering::AcqRel) {
            // Another thread claimed for this QP at the same time: one claim is enough.
            self.send_cq.release_headroom(n);
        }
        Ok(())
    }
}

impl QueuePair {
    /// The attributes `mask` names as `ibv_query_qp` reports them now (`what`: for the error).
    fn query_attr(&self, mask: ffi::ibv_qp_attr_mask, what: &str) -> Result<ffi::ibv_qp_attr> {
        // SAFETY: both are plain C data; all-zero is valid.
        let mut attr: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut init: ffi::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the QP is live; `attr` and `init` are valid out-parameters.
        let rc =
            unsafe { ffi::ibv_query_qp(self.inner.as_ptr(), &mut attr, mask.0 as i32, &mut init) };
        if rc != 0 {
            return Err(Error::from_ret(
                "ibv_query_qp",
                rc,
                format!("{what} of qp {:#x}", self.inner.qp_num),
            ));
        }
        Ok(attr)
    }

    /// Test hook: the QP's RDMA READ/atomic depths as `ibv_query_qp` reports them now:
    /// (`max_rd_atomic`, outstanding as initiator; `max_dest_rd_atomic`, as responder).
    #[doc(hidden)]
    pub fn query_rd_atomic(&self) -> Result<(u8, u8)> {
        let mask = ffi::ibv_qp_attr_mask::IBV_QP_MAX_QP_RD_ATOMIC
            | ffi::ibv_qp_attr_mask::IBV_QP_MAX_DEST_RD_ATOMIC;
        let attr = self.query_attr(mask, "rd_atomic")?;
        Ok((attr.max_rd_atomic, attr.max_dest_rd_atomic))
    }

    /// Test hook: the QP's RNR NAK timer (`min_rnr_timer`, IB encoding) as `ibv_query_qp`
    /// reports it now.
    #[doc(hidden)]
    pub fn query_min_rnr_timer(&self) -> Result<u8> {
        let attr = self.query_attr(ffi::ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER, "min_rnr_timer")?;
        Ok(attr.min_rnr_timer)
    }

    /// Test hook: the send and receive queue depths as `ibv_query_qp` reports them now (what
    /// [`QueuePair::max_send_wr`] and [`QueuePair::max_recv_wr`] must match).
    #[doc(hidden)]
    pub fn query_depths(&self) -> Result<(u32, u32)> {
        let cap = query_cap(self.inner.as_ptr(), self.inner.qp_num)?;
        Ok((cap.max_send_wr, cap.max_recv_wr))
    }
}
