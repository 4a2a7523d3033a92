//! Devices shared by connections: one verbs context (librdmacm's own), PD and completion
//! channel per device and runtime.

use std::ptr::NonNull;
use std::sync::{Arc, Mutex, Weak};

use rdma_sys as ffi;
use tokio_rdma_verbs::{CompletionChannel, Context, ProtectionDomain};

use crate::channel::EventChannel;
use crate::error::{Error, Result};
use crate::id::Id;

/// What the connections on one device share.
pub(crate) struct Device {
    pub(crate) context: Context,
    pub(crate) pd: ProtectionDomain,
    pub(crate) channel: CompletionChannel,
    /// Most RDMA READs/atomics a QP may accept (`max_qp_rd_atom`).
    pub(crate) max_responder: u8,
    /// Most RDMA READs/atomics a QP may issue (`max_qp_init_rd_atom`).
    pub(crate) max_initiator: u8,
    /// iWARP, where a graceful close drains the send queue (SQD) instead of flushing (ERR).
    pub(crate) iwarp: bool,
    raw: usize,
    events: Weak<EventChannel>,
}

/// Devices in use, per event channel (so per runtime).
static DEVICES: Mutex<Vec<Weak<Device>>> = Mutex::new(Vec::new());

impl Device {
    /// The device `id` is bound to, wrapped once per channel: librdmacm's `ibv_context` is
    /// used as is (never opened again), kept open by an anchor id bound to the same address.
    pub(crate) fn for_id(id: &Arc<Id>, events: &Arc<EventChannel>) -> Result<Arc<Self>> {
        let raw = id
            .verbs()
            .ok_or_else(|| Error::InvalidArgument("the id is not bound to a device yet".into()))?;
        let mut list = DEVICES.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|d| d.strong_count() > 0);
        let found = list.iter().filter_map(Weak::upgrade).find(|d| {
            d.raw == raw.as_ptr() as usize && std::ptr::eq(d.events.as_ptr(), Arc::as_ptr(events))
        });
        if let Some(d) = found {
            return Ok(d);
        }
        // SAFETY: librdmacm's context is live (the id is bound to it); `device` is set for
        // every context and `transport_type` is a plain field.
        let iwarp = unsafe {
            (*(*raw.as_ptr()).device).transport_type == ffi::ibv_transport_type::IBV_TRANSPORT_IWARP
        };
        let context = wrap(id, events, raw)?;
        let attr = context.query_device()?;
        let pd = context.alloc_pd()?;
        let channel = context.create_comp_channel()?;
        let device = Arc::new(Self {
            context,
            pd,
            channel,
            max_responder: attr.max_qp_rd_atom.clamp(0, 255) as u8,
            max_initiator: attr.max_qp_init_rd_atom.clamp(0, 255) as u8,
            iwarp,
            raw: raw.as_ptr() as usize,
            events: Arc::downgrade(events),
        });
        list.push(Arc::downgrade(&device));
        Ok(device)
    }
}

/// Wraps librdmacm's context of `id`'s device. What keeps it open: an anchor id bound to the
/// same local address (so it holds librdmacm's reference on that device for as long as
/// anything built on the context lives), or, if no anchor can be bound, `id` itself.
fn wrap(
    id: &Arc<Id>,
    events: &Arc<EventChannel>,
    raw: NonNull<ffi::ibv_context>,
) -> Result<Context> {
    let anchor = id
        .local_addr()
        .ok_or_else(|| Error::InvalidArgument("the id has no local address".into()))
        .and_then(|addr| Id::anchor(events, addr));
    let owner: tokio_rdma_verbs::KeepAlive = match anchor {
        Ok(a) if a.verbs() == Some(raw) => Box::new(a),
        other => {
            if let Err(e) = other {
                tracing::debug!(%e, "no device anchor; the first id keeps the device open");
            }
            Box::new(id.clone())
        }
    };
    // SAFETY: `raw` is librdmacm's context of the device `owner` is bound to; librdmacm
    // keeps a device's context open while an id holds a reference on it (`ucma_put_device`
    // closes it only when the device is gone and no id is left), and `owner` lives until
    // the wrapped context and everything built on it are dropped. Nothing in this crate reads
    // the context's async-event fd.
    Ok(unsafe { Context::from_raw_borrowed(raw, owner) })
}
