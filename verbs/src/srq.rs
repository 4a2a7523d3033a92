//! Shared receive queues.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as ffi;
use tokio_rdma_core::WcStatus;

use crate::cq::{CompletionQueue, CqInner};
use crate::error::{Error, Result};
use crate::mr::{LocalBufferMut, PdInner, ProtectionDomain};
use crate::ops::{OpFuture, WorkPin};
use crate::recv::{self, with_recv_wr, PostRecv, RecvStream, RecvTarget};

pub(crate) struct SrqInner {
    srq: NonNull<ffi::ibv_srq>,
    /// Receive depth as granted by the device.
    max_wr: u32,
    pub(crate) cq: Arc<CqInner>,
    pub(crate) pd: Arc<PdInner>,
}

/// Tags of SRQ slots have the top bit set (QP numbers, the QPs' tags, have 24 bits).
const SRQ_TAG: u32 = 1 << 31;

ibverbs_thread_safe!(SrqInner);

impl SrqInner {
    pub(crate) fn as_ptr(&self) -> *mut ffi::ibv_srq {
        self.srq.as_ptr()
    }
}

impl PostRecv for SrqInner {
    fn post_recv(&self, wr_id: u64, sge: (u64, u32, u32)) -> Result<()> {
        with_recv_wr(wr_id, sge, |wr| {
            let mut bad = std::ptr::null_mut();
            // SAFETY: the SRQ is live; `wr` and its SGE outlive the call (the provider copies
            // them); the memory the SGE names is owned by the operation until completion.
            unsafe { ffi::ibv_post_srq_recv(self.srq.as_ptr(), wr, &mut bad) }
        })
    }

    fn recv_cq(&self) -> &Arc<CqInner> {
        &self.cq
    }

    fn tag(&self) -> u32 {
        // SAFETY: the SRQ is live; `handle` is a plain field.
        SRQ_TAG | (unsafe { (*self.srq.as_ptr()).handle } & !SRQ_TAG)
    }

    fn depth(&self) -> usize {
        self.max_wr as usize
    }

    fn work_pin(self: Arc<Self>) -> WorkPin {
        // A receive on an SRQ waits for a message, which may never come: pinning the SRQ
        // would keep it (and, through parked receive pools, itself) alive forever. Instead it
        // fails its receives itself when destroyed.
        None
    }
}

impl Drop for SrqInner {
    fn drop(&mut self) {
        let tag = self.tag();
        // SAFETY: the SRQ is live and destroyed exactly once, here; every QP attached to it
        // holds an Arc to it, so none is left.
        let rc = unsafe { ffi::ibv_destroy_srq(self.srq.as_ptr()) };
        if rc != 0 {
            tracing::warn!(rc, "ibv_destroy_srq failed");
            return;
        }
        // Destroyed: the NIC writes none of its receive buffers any more. Fail the receives
        // still posted (their futures resolve, their pools' chunks are released).
        self.cq.dispatcher.fail_tagged(tag, WcStatus::WrFlushErr);
    }
}

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
                max_wr: attr.attr.max_wr,
                cq: cq.inner.clone(),
                pd: pd.inner.clone(),
            }),
        })
    }

    fn target(&self) -> RecvTarget {
        self.inner.clone()
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
        recv::recv(&self.target(), buf)
    }

    /// A stream of messages received by any QP attached to this SRQ (`count` buffers of
    /// `size` bytes; `completion().qp_num` tells which QP).
    pub fn recv_stream(&self, count: u32, size: usize) -> Result<RecvStream> {
        let pd = ProtectionDomain {
            inner: self.inner.pd.clone(),
        };
        recv::stream(&self.target(), &pd, count, size)
    }
}
