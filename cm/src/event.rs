//! One librdmacm event: copied out, and acknowledged when dropped.

use std::fmt;
use std::ptr::NonNull;

use rdma_sys as ffi;
use tokio_rdma_core::CmEventKind;

use crate::options::ConnParams;

/// What an event says, copied out of it: plain data, valid after the acknowledgement.
#[derive(Clone, Debug)]
pub(crate) struct EventData {
    pub(crate) kind: CmEventKind,
    pub(crate) status: i32,
    pub(crate) private_data: Vec<u8>,
    pub(crate) params: ConnParams,
}

/// An event taken from the channel with `rdma_get_cm_event`, acknowledged when dropped.
///
/// Its content is copied out at once ([`CmEvent::data`]: the private data lives in the event,
/// which `rdma_ack_cm_event` frees), and the driver drops it as soon as it has routed the
/// copy. Queues never hold unacknowledged events: `rdma_destroy_id` waits until every event it
/// reported for the id is acknowledged, so an event left in a queue would make the destroy of
/// its id depend on that queue's consumer (and hang if the same thread destroys the id, or if
/// the queue is abandoned).
pub(crate) struct CmEvent {
    raw: NonNull<ffi::rdma_cm_event>,
    data: EventData,
}

// SAFETY: the event is owned (librdmacm never touches it until `rdma_ack_cm_event`, which
// any thread may call), and only copied-out fields are read after construction.
unsafe impl Send for CmEvent {}

impl CmEvent {
    /// Takes ownership of an event `rdma_get_cm_event` returned.
    ///
    /// # Safety
    /// `raw` must be a valid event from `rdma_get_cm_event`, not yet acknowledged, and owned
    /// by the caller (this acknowledges it on drop).
    pub(crate) unsafe fn from_raw(raw: NonNull<ffi::rdma_cm_event>) -> Self {
        // SAFETY: valid event (the caller's contract).
        let e = unsafe { raw.as_ref() };
        let kind = CmEventKind::from_raw(e.event);
        // The union's `conn` member is the one librdmacm fills for connection events on
        // RC/UC ids (ours); its private data pointer and length are valid until the ack.
        // SAFETY: `param` is a union of plain C structs; reading `conn` is reading bytes.
        let conn = unsafe { e.param.conn };
        let private_data = if conn.private_data.is_null() || conn.private_data_len == 0 {
            Vec::new()
        } else {
            // SAFETY: librdmacm guarantees `private_data_len` readable bytes until the ack.
            unsafe {
                std::slice::from_raw_parts(
                    conn.private_data.cast::<u8>(),
                    usize::from(conn.private_data_len),
                )
            }
            .to_vec()
        };
        Self {
            raw,
            data: EventData {
                kind,
                status: e.status,
                private_data,
                params: ConnParams::from_raw(&conn),
            },
        }
    }

    /// The copied-out content.
    pub(crate) fn data(&self) -> &EventData {
        &self.data
    }

    /// The id the event is for (for CONNECT_REQUEST: the new id).
    pub(crate) fn id(&self) -> *mut ffi::rdma_cm_id {
        // SAFETY: the event is valid until the ack (in Drop).
        unsafe { self.raw.as_ref().id }
    }

    /// The listening id (CONNECT_REQUEST only).
    pub(crate) fn listen_id(&self) -> *mut ffi::rdma_cm_id {
        // SAFETY: as above.
        unsafe { self.raw.as_ref().listen_id }
    }
}

impl Drop for CmEvent {
    fn drop(&mut self) {
        // SAFETY: the event is ours and acknowledged exactly once; nothing reads it after.
        let rc = unsafe { ffi::rdma_ack_cm_event(self.raw.as_ptr()) };
        if rc != 0 {
            tracing::warn!(kind = %self.data.kind, "rdma_ack_cm_event failed");
        }
    }
}

impl fmt::Debug for CmEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CmEvent").field("data", &self.data).finish()
    }
}
