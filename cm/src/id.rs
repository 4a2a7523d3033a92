//! `rdma_cm_id` ownership and per-id event routing.
//!
//! Every id's `context` points at its own [`Route`]: an inbox (core's lock-free bounded
//! MPSC queue) that the channel's driver pushes the id's events into. The driver finds the
//! route from the event alone (`event->id->context`, or `event->listen_id->context` for a
//! connect request), so routing takes no lock and looks nothing up.

use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use rdma_sys as ffi;
use tokio_rdma_core::{inbox, InboxReceiver, InboxSender};
use tokio_rdma_verbs::{QueuePair, WeakQueuePair};

use crate::addr::{self, RawAddr};
use crate::channel::EventChannel;
use crate::error::{Error, Result};
use crate::event::EventData;

/// What an id's inbox carries: an event's content (the event itself is acknowledged by the
/// driver), and for a connect request the new id it created (owned from the moment the driver
/// saw it, so its later events are routed to it).
pub(crate) struct IdEvent {
    pub(crate) event: EventData,
    pub(crate) new_id: Option<(Id, InboxReceiver<IdEvent>)>,
}

impl Drop for IdEvent {
    fn drop(&mut self) {
        // A connect request nobody took (listener gone, queue full): reject it; the new id is
        // then destroyed.
        if let Some((id, _)) = &self.new_id {
            id.reject(&[]);
        }
    }
}

/// Where an id's events go, and what the driver must know to react at once.
pub(crate) struct Route {
    tx: InboxSender<IdEvent>,
    /// The connection's QP, once created: moved to the error state by the driver on
    /// DISCONNECTED and DEVICE_REMOVAL, so pending work flushes even if nobody reads events.
    qp: OnceLock<WeakQueuePair>,
    /// `NEVER_UP`, then `UP` once established, then `DOWN` for good (DISCONNECTED or
    /// DEVICE_REMOVAL arrived, or `rdma_disconnect` was called): a late "established" never
    /// revives a connection that went down meanwhile.
    state: AtomicU8,
}

const NEVER_UP: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

impl Route {
    pub(crate) fn send(&self, event: IdEvent) {
        if let Err(e) = self.tx.try_send(event) {
            let e = e.into_inner();
            tracing::warn!(
                kind = %e.event.kind,
                "CM event dropped: its id's queue is full or closed"
            );
        }
    }

    /// The driver's reaction to a disconnect: the QP (if any) moves to ERR. The handle it
    /// took is returned, to be dropped only after the event has left the driver: if it is
    /// the last one, dropping it may destroy the id, whose `rdma_destroy_id` waits for that
    /// event's acknowledgement (the hang of destroying an id while holding its DISCONNECTED
    /// event on the same thread).
    #[must_use = "drop the QP handle only after the event is routed"]
    pub(crate) fn disconnected(&self) -> Option<QueuePair> {
        self.set_down();
        let qp = self.qp.get().and_then(WeakQueuePair::upgrade)?;
        if let Err(e) = qp.set_error() {
            tracing::debug!(%e, "moving a disconnected QP to ERR");
        }
        Some(qp)
    }

    /// Established: up, unless it already went down.
    pub(crate) fn set_up(&self) {
        let _ = self
            .state
            .compare_exchange(NEVER_UP, UP, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Down for good.
    pub(crate) fn set_down(&self) {
        self.state.store(DOWN, Ordering::Release);
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }
}

/// Owns an `rdma_cm_id`. Dropping it destroys the id (`rdma_destroy_id`, which waits until
/// every event it reported is acknowledged: events are never held by the thread that drops
/// their id), then releases its route.
pub(crate) struct Id {
    raw: NonNull<ffi::rdma_cm_id>,
    route: Option<Arc<Route>>,
    /// Released in Drop after the id is destroyed, before the driver is told (so the driver
    /// never ends up holding the channel's last count), and never if the destroy failed.
    channel: ManuallyDrop<Arc<EventChannel>>,
}

// SAFETY: librdmacm's id calls may come from any thread (each is a command written to the
// channel's device fd, serialised by the kernel); the only id state we read (addresses,
// `verbs`, `port_num`) is written by librdmacm while processing this id's events before we
// see them. Destruction happens once, in Drop, when nobody else can use the id.
unsafe impl Send for Id {}
// SAFETY: as above.
unsafe impl Sync for Id {}

impl Id {
    /// A new RC id in the TCP port space, routed to a fresh inbox of `capacity`.
    pub(crate) fn create(
        channel: &Arc<EventChannel>,
        capacity: usize,
    ) -> Result<(Self, InboxReceiver<IdEvent>)> {
        let (route, rx) = new_route(capacity);
        let ctx = Arc::into_raw(route.clone()).cast_mut().cast();
        let mut raw = std::ptr::null_mut();
        // SAFETY: the channel is live; `raw` is a valid out-pointer; `ctx` stays valid until
        // the id is destroyed (Drop reclaims it after `rdma_destroy_id`).
        let rc = unsafe {
            ffi::rdma_create_id(
                channel.as_ptr(),
                &mut raw,
                ctx,
                ffi::rdma_port_space::RDMA_PS_TCP,
            )
        };
        let Some(raw) = NonNull::new(raw).filter(|_| rc == 0) else {
            let e = Error::last_os("rdma_create_id", "RDMA_PS_TCP");
            // SAFETY: the id was not created, so nothing else holds `ctx`.
            drop(unsafe { Arc::from_raw(ctx.cast_const().cast::<Route>()) });
            return Err(e);
        };
        Ok((
            Self {
                raw,
                route: Some(route),
                channel: ManuallyDrop::new(channel.clone()),
            },
            rx,
        ))
    }

    /// An id bound to `addr` (port 0) that routes nowhere: it keeps librdmacm's reference on
    /// the device (and so its `ibv_context`) for as long as it lives. Its rare events
    /// (DEVICE_REMOVAL, ADDR_CHANGE) are acknowledged and dropped by the driver.
    pub(crate) fn anchor(channel: &Arc<EventChannel>, addr: SocketAddr) -> Result<Self> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: as in `create`, with a null context.
        let rc = unsafe {
            ffi::rdma_create_id(
                channel.as_ptr(),
                &mut raw,
                std::ptr::null_mut(),
                ffi::rdma_port_space::RDMA_PS_TCP,
            )
        };
        let Some(raw) = NonNull::new(raw).filter(|_| rc == 0) else {
            return Err(Error::last_os("rdma_create_id", "device anchor"));
        };
        let id = Self {
            raw,
            route: None,
            channel: ManuallyDrop::new(channel.clone()),
        };
        let mut sa = RawAddr::new(addr::with_port(addr, 0));
        // SAFETY: the id is live; `sa` is a valid sockaddr for the call.
        if unsafe { ffi::rdma_bind_addr(id.as_ptr(), sa.as_ptr()) } != 0 {
            return Err(Error::last_os(
                "rdma_bind_addr",
                format!("device anchor on {addr}"),
            ));
        }
        Ok(id)
    }

    /// Takes ownership of the new id of a connect request, inside the driver, before any
    /// later event of it can be read: points its context at a fresh route.
    ///
    /// # Safety
    /// `raw` must be the `event->id` of a CONNECT_REQUEST taken from `channel`, not owned by
    /// anything else.
    pub(crate) unsafe fn adopt(
        raw: NonNull<ffi::rdma_cm_id>,
        channel: &Arc<EventChannel>,
        capacity: usize,
    ) -> (Self, InboxReceiver<IdEvent>) {
        let (route, rx) = new_route(capacity);
        // SAFETY: the id is live and ours; its context (inherited from the listener) is only
        // read by the driver, which is this thread, for events taken after this.
        unsafe { (*raw.as_ptr()).context = Arc::into_raw(route.clone()).cast_mut().cast() };
        (
            Self {
                raw,
                route: Some(route),
                channel: ManuallyDrop::new(channel.clone()),
            },
            rx,
        )
    }

    pub(crate) fn as_ptr(&self) -> *mut ffi::rdma_cm_id {
        self.raw.as_ptr()
    }

    /// The channel the id reports on.
    pub(crate) fn channel(&self) -> &Arc<EventChannel> {
        &self.channel
    }

    pub(crate) fn route(&self) -> &Route {
        self.route.as_ref().expect("only anchors have no route")
    }

    /// Records the QP the driver moves to ERR on a disconnect.
    pub(crate) fn set_qp(&self, qp: WeakQueuePair) {
        let _ = self.route().qp.set(qp);
    }

    /// The device context librdmacm bound the id to (after address resolution, or on a
    /// connect request's id).
    pub(crate) fn verbs(&self) -> Option<NonNull<ffi::ibv_context>> {
        // SAFETY: the id is live; `verbs` is set by librdmacm before the events we wait for.
        NonNull::new(unsafe { (*self.as_ptr()).verbs })
    }

    /// The local address (`None` if unbound).
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        // SAFETY: the id is live; the storage holds a sockaddr of its family.
        unsafe {
            let a = &(*self.as_ptr()).route.addr.src_addr_union.src_storage;
            addr::read(std::ptr::from_ref(a).cast())
        }
    }

    /// The peer address (`None` if unknown).
    pub(crate) fn peer_addr(&self) -> Option<SocketAddr> {
        // SAFETY: as above.
        unsafe {
            let a = &(*self.as_ptr()).route.addr.dst_addr_union.dst_storage;
            addr::read(std::ptr::from_ref(a).cast())
        }
    }

    /// `rdma_reject` (failures are logged: the id is about to be destroyed anyway).
    pub(crate) fn reject(&self, private_data: &[u8]) -> bool {
        let (p, n) = if private_data.is_empty() {
            (std::ptr::null(), 0)
        } else {
            (private_data.as_ptr().cast(), private_data.len() as u8)
        };
        // SAFETY: the id is live; `p` points to `n` bytes valid for the call.
        let rc = unsafe { ffi::rdma_reject(self.as_ptr(), p, n) };
        if rc != 0 {
            tracing::debug!(err = %std::io::Error::last_os_error(), "rdma_reject failed");
        }
        rc == 0
    }

    /// `rdma_disconnect`; whether it was sent (it fails once the connection is gone).
    pub(crate) fn disconnect(&self) -> bool {
        if let Some(r) = &self.route {
            r.set_down();
        }
        // SAFETY: the id is live.
        unsafe { ffi::rdma_disconnect(self.as_ptr()) == 0 }
    }
}

fn new_route(capacity: usize) -> (Arc<Route>, InboxReceiver<IdEvent>) {
    let (tx, rx) = inbox(capacity);
    (
        Arc::new(Route {
            tx,
            qp: OnceLock::new(),
            state: AtomicU8::new(NEVER_UP),
        }),
        rx,
    )
}

/// The route of the id an event names, if it has one.
///
/// # Safety
/// `id` must be an id of an event the caller holds unacknowledged: its owner cannot finish
/// `rdma_destroy_id` (which waits for that acknowledgement) and release the route meanwhile.
pub(crate) unsafe fn route_of<'a>(id: *mut ffi::rdma_cm_id) -> Option<&'a Route> {
    if id.is_null() {
        return None;
    }
    // SAFETY: the caller's contract keeps the id and its route alive.
    let ctx = unsafe { (*id).context };
    // SAFETY: a non-null context of our ids is always a `Route` from `Arc::into_raw`.
    (!ctx.is_null()).then(|| unsafe { &*ctx.cast_const().cast::<Route>() })
}

impl Drop for Id {
    fn drop(&mut self) {
        // SAFETY: the id is ours and destroyed once; no QP was created through librdmacm on
        // it (ours are plain verbs QPs), so there is none to destroy first.
        let rc = unsafe { ffi::rdma_destroy_id(self.as_ptr()) };
        if rc != 0 {
            // The id may still report events that name its route, and it still lives on the
            // channel: leak the route's count and the channel's.
            tracing::warn!(err = %std::io::Error::last_os_error(), "rdma_destroy_id failed");
            return;
        }
        if let Some(route) = self.route.take() {
            // SAFETY: the context holds one strong count from `Arc::into_raw`; the id is
            // destroyed, so no event can name it any more.
            drop(unsafe { Arc::from_raw(Arc::as_ptr(&route)) });
        }
        let notify = self.channel.id_dropped.clone();
        // SAFETY: taken once, here; the field is not used after.
        drop(unsafe { ManuallyDrop::take(&mut self.channel) });
        notify.notify_one();
    }
}
