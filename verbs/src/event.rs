//! Device async events (`ibv_get_async_event`) as a stream.

use std::fmt;
use std::io;
use std::sync::atomic::Ordering;
use std::task::{Context as TaskContext, Poll};

use rdma_sys as ffi;
use tokio::io::unix::AsyncFd;
use tokio_rdma_core::{EventSource, EventStream};

use crate::cq::{async_fd, set_nonblocking, Fd};
use crate::device::Context;
use crate::error::{Error, Result};

macro_rules! event_kinds {
    ($($(#[$m:meta])* $name:ident,)*) => {
        /// What happened (`enum ibv_event_type`, in its C order).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[non_exhaustive]
        #[allow(missing_docs)]
        pub enum AsyncEventKind {
            $($(#[$m])* $name,)*
            Unknown(u32),
        }

        impl AsyncEventKind {
            /// From the raw C value.
            pub fn from_raw(v: u32) -> Self {
                const ALL: &[AsyncEventKind] = &[$(AsyncEventKind::$name),*];
                ALL.get(v as usize).copied().unwrap_or(AsyncEventKind::Unknown(v))
            }
        }
    };
}

event_kinds! {
    CqErr,
    QpFatal,
    QpReqErr,
    QpAccessErr,
    /// Communication established (first packet arrived on an RTR QP).
    CommEst,
    SqDrained,
    PathMig,
    PathMigErr,
    DeviceFatal,
    PortActive,
    PortErr,
    LidChange,
    PkeyChange,
    SmChange,
    SrqErr,
    SrqLimitReached,
    QpLastWqeReached,
    ClientReregister,
    GidChange,
    WqFatal,
}

impl AsyncEventKind {
    /// Which kind of object the event is about.
    fn element_kind(self) -> u8 {
        use AsyncEventKind::*;
        match self {
            CqErr => 1,
            QpFatal | QpReqErr | QpAccessErr | CommEst | SqDrained | PathMig | PathMigErr
            | QpLastWqeReached => 2,
            SrqErr | SrqLimitReached => 3,
            PortActive | PortErr | LidChange | PkeyChange | SmChange | ClientReregister
            | GidChange => 4,
            WqFatal => 5,
            DeviceFatal | Unknown(_) => 0,
        }
    }
}

/// The object an async event is affiliated with (copied out before the event is acked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsyncEventElement {
    /// A QP, by number (see [`crate::QueuePair::qp_num`]).
    Qp(u32),
    /// A CQ, by kernel handle (see [`crate::CompletionQueue::handle`]).
    Cq(u32),
    /// An SRQ, by kernel handle.
    Srq(u32),
    /// A port.
    Port(u8),
    /// A work queue, by number.
    Wq(u32),
    /// The whole device.
    Device,
}

/// One device async event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncEvent {
    /// What happened.
    pub kind: AsyncEventKind,
    /// To what.
    pub element: AsyncEventElement,
}

/// Mirror of `struct ibv_async_event` with the event type as a plain integer (rdma-sys's Rust
/// enum would be undefined behaviour for values it does not know).
#[repr(C)]
struct RawAsyncEvent {
    element: ffi::ibv_async_event_element_t,
    event_type: u32,
}

/// The [`EventSource`] behind [`AsyncEvents`].
pub struct AsyncEventSource {
    fd: Option<AsyncFd<Fd>>,
    ctx: Context,
}

impl fmt::Debug for AsyncEventSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncEventSource")
            .field("device", &self.ctx.name())
            .finish()
    }
}

/// Stream of the device's async events (`Item = Result<AsyncEvent>`).
pub type AsyncEvents = EventStream<AsyncEventSource>;

impl AsyncEventSource {
    pub(crate) fn new(ctx: Context) -> Result<AsyncEvents> {
        if ctx.inner.events_taken.swap(true, Ordering::AcqRel) {
            return Err(Error::Busy("the async event stream of this context"));
        }
        let make = || -> Result<AsyncEventSource> {
            // SAFETY: the context is open; `async_fd` is a plain field.
            let raw = unsafe { (*ctx.as_ptr()).async_fd };
            set_nonblocking(raw, "async event")?;
            Ok(AsyncEventSource {
                // SAFETY: the async fd belongs to the context, which this source keeps open
                // (it holds a `Context`) and drops the AsyncFd first in its Drop.
                fd: Some(unsafe { async_fd(raw, "async event")? }),
                ctx: ctx.clone(),
            })
        };
        match make() {
            Ok(s) => Ok(EventStream::new(s)),
            Err(e) => {
                ctx.inner.events_taken.store(false, Ordering::Release);
                Err(e)
            }
        }
    }

    /// Reads one event (fd is non-blocking), copies it out and acks it.
    fn read_one(&self) -> io::Result<AsyncEvent> {
        // SAFETY: all-zero is a valid value of this plain C struct.
        let mut ev: RawAsyncEvent = unsafe { std::mem::zeroed() };
        // SAFETY: the context is open; RawAsyncEvent has the layout of ibv_async_event (same
        // union, then a 32-bit enum).
        let rc = unsafe {
            ffi::ibv_get_async_event(self.ctx.as_ptr(), (&mut ev as *mut RawAsyncEvent).cast())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let kind = AsyncEventKind::from_raw(ev.event_type);
        // SAFETY: the union member read matches the event type (verbs.h documents which member
        // each type uses); the object is alive because the event is not acked yet.
        let element = unsafe {
            match kind.element_kind() {
                1 => AsyncEventElement::Cq((*ev.element.cq).handle),
                2 => AsyncEventElement::Qp((*ev.element.qp).qp_num),
                3 => AsyncEventElement::Srq((*ev.element.srq).handle),
                4 => AsyncEventElement::Port(ev.element.port_num as u8),
                5 => AsyncEventElement::Wq((*ev.element.wq).wq_num),
                _ => AsyncEventElement::Device,
            }
        };
        // SAFETY: the event was received above and is acked exactly once, after copying.
        unsafe { ffi::ibv_ack_async_event((&mut ev as *mut RawAsyncEvent).cast()) };
        Ok(AsyncEvent { kind, element })
    }
}

impl Drop for AsyncEventSource {
    fn drop(&mut self) {
        drop(self.fd.take());
        self.ctx.inner.events_taken.store(false, Ordering::Release);
    }
}

impl EventSource for AsyncEventSource {
    type Event = AsyncEvent;
    type Error = Error;

    fn poll_event(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<Result<AsyncEvent>>> {
        let Some(fd) = self.fd.as_ref() else {
            return Poll::Ready(None);
        };
        loop {
            let mut guard = match fd.poll_read_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Some(Err(Error::Io {
                        context: "waiting on the async event fd".into(),
                        source: e,
                    })))
                }
                Poll::Pending => return Poll::Pending,
            };
            // Clears readiness only when the read hit EAGAIN.
            match guard.try_io(|_| self.read_one()) {
                Ok(Ok(ev)) => return Poll::Ready(Some(Ok(ev))),
                Ok(Err(e)) => {
                    return Poll::Ready(Some(Err(Error::Verb {
                        verb: "ibv_get_async_event",
                        context: self.ctx.name().to_owned(),
                        source: e,
                    })))
                }
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(AsyncEventKind::from_raw(4), AsyncEventKind::CommEst);
        assert_eq!(AsyncEventKind::from_raw(1), AsyncEventKind::QpFatal);
        assert_eq!(AsyncEventKind::from_raw(9), AsyncEventKind::PortActive);
        assert_eq!(AsyncEventKind::from_raw(99), AsyncEventKind::Unknown(99));
        assert_eq!(AsyncEventKind::from_raw(3).element_kind(), 2);
        assert_eq!(AsyncEventKind::from_raw(8).element_kind(), 0);
        assert_eq!(
            std::mem::size_of::<RawAsyncEvent>(),
            std::mem::size_of::<ffi::ibv_async_event>()
        );
    }
}
