//! Queue pairs (RC, UC, UD): the owner of an `ibv_qp` and its public handle.
//!
//! Submodules, each depending only on this one and the crate's lower modules: `builder`
//! (creation), `transition` (state changes and connection info), `post` (send-queue
//! operations), `receive` (receive entry points), `teardown` (close and destroy).

mod builder;
mod post;
mod raw;
mod receive;
mod teardown;
mod transition;

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, Mutex};

use rdma_sys as ffi;
use tokio_rdma_core::Dispatcher;

use crate::cq::{CqInner, Parked};
use crate::device::{Context, KeepAlive};
use crate::mr::{PdInner, ProtectionDomain};
use crate::ops::WorkPin;
use crate::srq::SrqInner;
pub use builder::QueuePairBuilder;
pub use raw::RawRegion;

/// Transport type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpType {
    /// Reliable connected.
    Rc,
    /// Unreliable connected.
    Uc,
    /// Unreliable datagram.
    Ud,
}

impl QpType {
    pub(crate) fn raw(self) -> u32 {
        match self {
            Self::Rc => ffi::ibv_qp_type::IBV_QPT_RC,
            Self::Uc => ffi::ibv_qp_type::IBV_QPT_UC,
            Self::Ud => ffi::ibv_qp_type::IBV_QPT_UD,
        }
    }
}

pub(crate) struct QpInner {
    qp: NonNull<ffi::ibv_qp>,
    qp_num: u32,
    /// Tags this QP's dispatcher slots: unique within the process (QP numbers are reused
    /// as soon as a QP is destroyed; a tag never is, short of 2^31 QPs).
    tag: u32,
    qp_type: QpType,
    max_inline: u32,
    max_send_wr: u32,
    /// Receive-queue depth as granted (0 with an SRQ).
    max_recv_wr: u32,
    /// Unsignaled sends are retired by a signaled one at least this often (half the send
    /// queue), so they never fill the send queue.
    signal_every: u32,
    /// Unsignaled sends posted since the last signaled one that `send_inline_unsignaled`
    /// forced.
    unsignaled: AtomicU32,
    /// This QP's own handle onto the send CQ's slot table: its home free-list shard, so QPs
    /// sharing a CQ but driven from different threads recycle their own slots.
    send_slots: Dispatcher<Parked>,
    pub(crate) send_cq: Arc<CqInner>,
    pub(crate) recv_cq: Arc<CqInner>,
    srq: Option<Arc<SrqInner>>,
    pd: Arc<PdInner>,
    /// Whether this QP claimed send-CQ headroom for unsignaled sends (given back on destroy).
    headroom_claimed: AtomicBool,
    /// Whether this QP claimed CQ headroom for raw work requests (given back on destroy).
    raw_headroom: AtomicBool,
    /// Regions raw work requests may name (`keep_region`): dropped after `ibv_destroy_qp`,
    /// leaked if it fails.
    kept: Mutex<Vec<Arc<dyn Send + Sync>>>,
    /// Teardown state: the receive gate and whether the QP was destroyed (see `teardown`).
    life: teardown::Life,
    /// What must outlive the QP (e.g. the connection manager id it is connected through):
    /// dropped after `ibv_destroy_qp`, with the rest of the fields.
    _keep_alive: Option<KeepAlive>,
}

ibverbs_thread_safe!(QpInner);

impl QpInner {
    pub(crate) fn as_ptr(&self) -> *mut ffi::ibv_qp {
        self.qp.as_ptr()
    }

    /// The tag of this QP's dispatcher slots, by which the work still in flight when it is
    /// destroyed is failed.
    pub(crate) fn tag(&self) -> u32 {
        self.tag
    }

    /// A fresh slot tag (top bit clear: SRQ tags have it set).
    pub(crate) fn next_tag() -> u32 {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & !(1 << 31)
    }
}

/// A queue pair. Cheap to clone; all operations take `&self` and may run concurrently from
/// several tasks/threads.
///
/// Work in flight pins the QP: when the last handle is dropped, the QP moves to the error
/// state (every outstanding work request is flushed) and is destroyed once its work has
/// completed or been flushed, or after a bound (`teardown`).
#[derive(Clone)]
pub struct QueuePair {
    pub(crate) inner: Arc<QpHandle>,
}

/// What the user's handles share: dropping the last one begins the teardown. Operations and
/// receive pools hold the `QpInner` directly (they pin it), never this.
pub(crate) struct QpHandle(Arc<QpInner>);

impl std::ops::Deref for QpHandle {
    type Target = Arc<QpInner>;
    fn deref(&self) -> &Arc<QpInner> {
        &self.0
    }
}

/// A [`QueuePair`] handle that does not keep it alive ([`QueuePair::downgrade`]).
#[derive(Clone, Debug, Default)]
pub struct WeakQueuePair(std::sync::Weak<QpHandle>);

impl WeakQueuePair {
    /// The QP, if a [`QueuePair`] handle still exists.
    pub fn upgrade(&self) -> Option<QueuePair> {
        self.0.upgrade().map(|inner| QueuePair { inner })
    }
}

impl fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuePair")
            .field("qp_num", &self.inner.qp_num)
            .field("type", &self.inner.qp_type)
            .finish()
    }
}

impl QueuePair {
    pub(crate) fn from_inner(inner: QpInner) -> Self {
        Self {
            inner: Arc::new(QpHandle(Arc::new(inner))),
        }
    }

    /// The QP owner, to pin it from in-flight work.
    pub(crate) fn qp(&self) -> &Arc<QpInner> {
        &self.inner.0
    }

    /// What a work request posted on this QP keeps alive until it completes or is flushed.
    pub(crate) fn pin(&self) -> WorkPin {
        Some(self.qp().clone())
    }

    /// A handle that does not keep the QP alive (for whoever must reach the QP while it
    /// exists, such as a connection manager moving it to the error state on a disconnect,
    /// without owning it).
    pub fn downgrade(&self) -> WeakQueuePair {
        WeakQueuePair(Arc::downgrade(&self.inner))
    }

    /// Send-queue depth, as granted by the device (at least what the builder asked for).
    pub fn max_send_wr(&self) -> u32 {
        self.inner.max_send_wr
    }

    /// Receive-queue depth, as granted by the device (at least what the builder asked for;
    /// 0 for a QP that receives through a shared receive queue).
    pub fn max_recv_wr(&self) -> u32 {
        self.inner.max_recv_wr
    }

    /// The QP number.
    pub fn qp_num(&self) -> u32 {
        self.inner.qp_num
    }

    /// The transport type.
    pub fn qp_type(&self) -> QpType {
        self.inner.qp_type
    }

    /// The protection domain.
    pub fn pd(&self) -> ProtectionDomain {
        ProtectionDomain {
            inner: self.inner.pd.clone(),
        }
    }

    pub(crate) fn context(&self) -> Context {
        self.pd().context()
    }
}
