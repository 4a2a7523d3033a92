//! The channel's driver: one task per runtime reads every CM event and routes it.
//!
//! Each runtime gets one event channel (created on first use, found again by runtime id),
//! whose driver task drains it to EAGAIN whenever the fd is readable and pushes each event
//! into its id's inbox (see `id`). Nothing on this path locks or allocates beyond the copy of
//! an event's private data. The registry lock below is taken only when an id is created.

use std::sync::{Arc, Mutex, Weak};

use rdma_sys as ffi;
use tokio_rdma_core::CmEventKind;

use crate::channel::EventChannel;
use crate::error::{Error, Result};
use crate::event::CmEvent;
use crate::id::{route_of, Id, IdEvent};

/// Events a connection's id can have queued: its whole life is under ten.
pub(crate) const CONNECTION_QUEUE: usize = 32;

/// The event channel of each live runtime.
static CHANNELS: Mutex<Vec<(tokio::runtime::Id, Weak<EventChannel>)>> = Mutex::new(Vec::new());

/// The current runtime's event channel, created (and its driver spawned) on first use.
pub(crate) fn current_channel() -> Result<Arc<EventChannel>> {
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| Error::Closed("tokio-rdma-cm must be used inside a tokio runtime".into()))?;
    let rt = handle.id();
    let mut list = CHANNELS.lock().unwrap_or_else(|p| p.into_inner());
    list.retain(|(_, w)| w.strong_count() > 0);
    if let Some(ch) = list
        .iter()
        .find(|(id, _)| *id == rt)
        .and_then(|(_, w)| w.upgrade())
    {
        return Ok(ch);
    }
    let ch = Arc::new(EventChannel::new()?);
    handle.spawn(drive(Arc::downgrade(&ch)));
    list.push((rt, Arc::downgrade(&ch)));
    Ok(ch)
}

/// Drains the channel whenever it is readable, until no id holds the channel any more.
async fn drive(channel: Weak<EventChannel>) {
    loop {
        let Some(ch) = channel.upgrade() else { return };
        tokio::select! {
            r = ch.drain(|event| route(&ch, event)) => {
                if let Err(e) = r {
                    tracing::error!(%e, "CM event channel failed; retrying in 10 ms");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
            // An id was destroyed: let go of the channel for a moment, so the last one
            // destroys it.
            () = ch.id_dropped.notified() => {}
        }
    }
}

/// Routes one event's content to its id's inbox, then acknowledges the event. A connect
/// request's new id is adopted here, before any later event of it can be read, and travels
/// with the request to the listener.
fn route(channel: &Arc<EventChannel>, event: CmEvent) {
    let data = event.data().clone();
    tracing::trace!(kind = %data.kind, status = data.status, "CM event");
    if data.kind == CmEventKind::ConnectRequest {
        let Some(new) = std::ptr::NonNull::new(event.id()) else {
            return;
        };
        // SAFETY: a CONNECT_REQUEST's id is new and owned by nobody until now.
        let new_id = unsafe { Id::adopt(new, channel, CONNECTION_QUEUE) };
        let request = IdEvent {
            event: data,
            new_id: Some(new_id),
        };
        // SAFETY: we hold the event unacknowledged, so the listener's id (whose destroy waits
        // for it) and its route are alive until it is dropped, below.
        match unsafe { route_of(event.listen_id()) } {
            Some(listener) => listener.send(request),
            // No listener route: rejected and destroyed by IdEvent's drop.
            None => drop(request),
        }
        drop(event);
        return;
    }
    // SAFETY: as above, for the event's own id.
    let Some(route) = (unsafe { route_of(event.id()) }) else {
        // An anchor id's event (DEVICE_REMOVAL, ADDR_CHANGE): acknowledged on drop.
        tracing::debug!(kind = %data.kind, "CM event for a device anchor");
        return;
    };
    if data.kind == CmEventKind::Established {
        route.set_up();
    }
    let qp = matches!(
        data.kind,
        CmEventKind::Disconnected | CmEventKind::DeviceRemoval
    )
    .then(|| route.disconnected())
    .flatten();
    if data.kind == CmEventKind::Disconnected {
        // Answer the peer's DREQ at once (DREP), with the QP already in ERR: its side's
        // `disconnect` waits for that, and would otherwise wait out the DREQ timeout until
        // our application disconnects or drops. After our own DREQ this fails harmlessly.
        // SAFETY: we hold the event unacknowledged, so its id is alive (its destroy waits for
        // the acknowledgement); `rdma_disconnect` may be called from any thread.
        unsafe { ffi::rdma_disconnect(event.id()) };
    }
    route.send(IdEvent {
        event: data,
        new_id: None,
    });
    // Acknowledged after the last use of the route (the id's destroy waits for this).
    drop(event);
    // Only now: if this is the last handle, dropping it may destroy the id, whose destroy
    // waits for the acknowledgement above.
    drop(qp);
}
