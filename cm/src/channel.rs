//! The event channel: `rdma_event_channel`, its fd non-blocking in tokio's reactor.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

use rdma_sys as ffi;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::event::CmEvent;

/// The channel's fd, registered with tokio (never closed by this: `rdma_destroy_event_channel`
/// closes it, after the registration is dropped).
struct ChannelFd(RawFd);

impl AsRawFd for ChannelFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// An `rdma_event_channel` and its registration. Every id created on it holds an
/// `Arc<EventChannel>`, so the channel is destroyed after its last id, as librdmacm requires.
pub(crate) struct EventChannel {
    raw: NonNull<ffi::rdma_event_channel>,
    /// `Some` until Drop, which deregisters before the fd is closed (a closed fd number can be
    /// reused at once; deregistering it late could remove someone else's registration).
    fd: Option<AsyncFd<ChannelFd>>,
    /// Woken when an id on this channel is destroyed, so an idle driver lets go of the channel.
    pub(crate) id_dropped: Arc<Notify>,
    /// Set while a drain takes events and routes them (see [`Self::has_unrouted_events`]).
    routing: AtomicBool,
}

// SAFETY: librdmacm's channel calls are thread-safe (`rdma_get_cm_event` is one `write` on
// the channel fd and takes librdmacm's own locks); `raw` is only used through them.
unsafe impl Send for EventChannel {}
// SAFETY: as above.
unsafe impl Sync for EventChannel {}

impl EventChannel {
    /// Creates a channel with a non-blocking fd registered with the current runtime.
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: no arguments; the result is owned by us until Drop.
        let raw = unsafe { ffi::rdma_create_event_channel() };
        let raw = NonNull::new(raw)
            .ok_or_else(|| Error::last_os("rdma_create_event_channel", "is rdma_ucm loaded?"))?;
        // SAFETY: the channel is valid; `fd` is a plain field.
        let fd = unsafe { (*raw.as_ptr()).fd };
        let destroy = |e: Error| {
            // SAFETY: created above, no ids on it yet, destroyed once on this error path.
            unsafe { ffi::rdma_destroy_event_channel(raw.as_ptr()) };
            e
        };
        set_nonblocking(fd).map_err(|e| destroy(io_error("fcntl(O_NONBLOCK)", e)))?;
        // SAFETY: the fd belongs to the channel, which outlives the registration (Drop
        // deregisters before destroying the channel); `ChannelFd` always returns it.
        let fd = unsafe {
            AsyncFd::register_with_interest(ChannelFd(fd), tokio::io::Interest::READABLE)
        }
        .map_err(|e| destroy(io_error("AsyncFd::register", e.into_parts().1)))?;
        Ok(Self {
            raw,
            fd: Some(fd),
            id_dropped: Arc::new(Notify::new()),
            routing: AtomicBool::new(false),
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut ffi::rdma_event_channel {
        self.raw.as_ptr()
    }

    /// Waits until the fd is readable, then takes every event until EAGAIN, handing each to
    /// `route` (which must not block: it runs between two `rdma_get_cm_event` calls). The
    /// readiness tokio cached is cleared only on EAGAIN. How many events were taken.
    pub(crate) async fn drain(&self, mut route: impl FnMut(CmEvent)) -> Result<usize> {
        let fd = self.fd.as_ref().expect("registered until Drop");
        let mut guard = fd
            .readable()
            .await
            .map_err(|e| io_error("AsyncFd::readable", e))?;
        // From the first event taken until the last one is routed, whichever way this ends.
        let _routing = Routing::start(&self.routing);
        let mut n = 0;
        loop {
            let mut event: *mut ffi::rdma_cm_event = std::ptr::null_mut();
            // SAFETY: the channel is live; `event` is a valid out-pointer. The fd is
            // non-blocking, so this returns -1/EAGAIN instead of blocking.
            let rc = unsafe { ffi::rdma_get_cm_event(self.raw.as_ptr(), &mut event) };
            if rc != 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                    return Ok(n);
                }
                return Err(io_error("rdma_get_cm_event", err));
            }
            let Some(event) = NonNull::new(event) else {
                return Err(Error::Closed("rdma_get_cm_event returned no event".into()));
            };
            n += 1;
            // SAFETY: a fresh, unacknowledged event, now owned by the CmEvent.
            route(unsafe { CmEvent::from_raw(event) });
        }
    }

    /// Whether events may be on their way to their ids: the kernel holds some that nobody has
    /// read (the fd is readable), or a drain is taking and routing some right now. One
    /// non-blocking `poll`: for the rare moment a bound on an answer passed (`crate::bound`),
    /// not for a hot path. A failed `poll` says no.
    ///
    /// The fd first, then the flag: an event gone from the fd by then was taken by a drain,
    /// which set the flag before taking it; if the flag is clear again, that drain has routed
    /// it (the caller then looks at its inbox once more).
    pub(crate) fn has_unrouted_events(&self) -> bool {
        let Some(fd) = self.fd.as_ref() else {
            return false;
        };
        let mut p = libc::pollfd {
            fd: fd.get_ref().0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for a registered, open fd (closed only in Drop, after the
        // registration), a zero timeout: the call only reads the fd's state.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        if n > 0 && p.revents & libc::POLLIN != 0 {
            return true;
        }
        // Pairs with the fence in `Routing::start`: the flag is read after the fd's state.
        fence(Ordering::SeqCst);
        self.routing.load(Ordering::Acquire)
    }
}

/// Marks a drain in progress until dropped.
struct Routing<'a>(&'a AtomicBool);

impl<'a> Routing<'a> {
    fn start(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::Release);
        // Set before the first event is taken from the fd (`has_unrouted_events`).
        fence(Ordering::SeqCst);
        Self(flag)
    }
}

impl Drop for Routing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        // Deregister first, while the fd is still open.
        drop(self.fd.take());
        // SAFETY: every id on the channel holds an Arc to it, so none is left; destroyed once.
        unsafe { ffi::rdma_destroy_event_channel(self.raw.as_ptr()) };
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own; F_GETFL/F_SETFL take and return plain ints.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn io_error(call: &'static str, e: io::Error) -> Error {
    Error::Os {
        call,
        errno: e.raw_os_error().unwrap_or(0),
        context: e.to_string(),
    }
}
