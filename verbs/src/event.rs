//! Device async events (`ibv_get_async_event`) as a stream.

use std::fmt;
use std::io;
use std::sync::atomic::Ordering;
use std::task::{Context as TaskContext, Poll};

use rdma_sys as ffi;
use tokio::io::unix::AsyncFd;
use tokio_rdma_core::{EventSource, EventStream};

use crate::device::Context;
use crate::error::{Error, Result};
use crate::sys::{async_fd, set_nonblocking, Fd};

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

impl Context {
    /// The device's async events (QP errors, port changes, ...) as a stream. Only one stream
    /// may exist per context at a time; needs a tokio runtime.
    pub fn async_events(&self) -> Result<AsyncEvents> {
        AsyncEventSource::new(self.clone())
    }
}

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
        // SAFETY: the event was just filled in by ibv_get_async_event and is not acked yet, so
        // the object it names is alive.
        let event = unsafe { ev.decode() };
        // SAFETY: the event was received above and is acked exactly once, after copying.
        unsafe { ffi::ibv_ack_async_event((&mut ev as *mut RawAsyncEvent).cast()) };
        Ok(event)
    }
}

impl RawAsyncEvent {
    /// Copies the event type and the affiliated object's identifier out.
    ///
    /// # Safety
    /// The union member that matches the event type (a pointer for CQ, QP, SRQ and WQ events)
    /// must point to a live object.
    unsafe fn decode(&self) -> AsyncEvent {
        let kind = AsyncEventKind::from_raw(self.event_type);
        // SAFETY: the union member read matches the event type (verbs.h documents which member
        // each type uses); the caller guarantees the object it points to is alive.
        let element = unsafe {
            match kind.element_kind() {
                1 => AsyncEventElement::Cq((*self.element.cq).handle),
                2 => AsyncEventElement::Qp((*self.element.qp).qp_num),
                3 => AsyncEventElement::Srq((*self.element.srq).handle),
                4 => AsyncEventElement::Port(self.element.port_num as u8),
                5 => AsyncEventElement::Wq((*self.element.wq).wq_num),
                _ => AsyncEventElement::Device,
            }
        };
        AsyncEvent { kind, element }
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

    #[test]
    fn qp_error_events_are_affiliated_with_the_qp() {
        use ffi::ibv_event_type as T;
        // SAFETY: ibv_qp is plain C data (pointers, integers); all-zero is valid, and only
        // `qp_num` is read.
        let mut qp: ffi::ibv_qp = unsafe { std::mem::zeroed() };
        qp.qp_num = 0x1234;
        for (raw, kind) in [
            (T::IBV_EVENT_QP_FATAL, AsyncEventKind::QpFatal),
            (T::IBV_EVENT_QP_REQ_ERR, AsyncEventKind::QpReqErr),
            (T::IBV_EVENT_QP_ACCESS_ERR, AsyncEventKind::QpAccessErr),
            (T::IBV_EVENT_SQ_DRAINED, AsyncEventKind::SqDrained),
            (
                T::IBV_EVENT_QP_LAST_WQE_REACHED,
                AsyncEventKind::QpLastWqeReached,
            ),
        ] {
            let ev = RawAsyncEvent {
                element: ffi::ibv_async_event_element_t { qp: &mut qp },
                event_type: raw as u32,
            };
            // SAFETY: the QP member points to `qp`, alive for the call.
            let got = unsafe { ev.decode() };
            assert_eq!(
                got,
                AsyncEvent {
                    kind,
                    element: AsyncEventElement::Qp(0x1234)
                },
                "raw event {raw:?}"
            );
        }
        let port = RawAsyncEvent {
            element: ffi::ibv_async_event_element_t { port_num: 1 },
            event_type: T::IBV_EVENT_PORT_ERR as u32,
        };
        // SAFETY: port events read the integer member only.
        let got = unsafe { port.decode() };
        assert_eq!(got.element, AsyncEventElement::Port(1));
    }
}
