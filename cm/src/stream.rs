//! An id's event stream: the events of a connection being made or made, copied out and
//! acknowledged as they are taken, and the waits of the handshakes built on them.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_core::Stream;
use tokio_rdma_core::{ConnectAction, ConnectFailure, ConnectionEvent, InboxReceiver, PassiveOpen};

use crate::channel::EventChannel;
use crate::error::{Error, Result};
use crate::event::EventData;
use crate::id::IdEvent;

/// Waits for the next raw event; `Closed` if the queue ended.
pub(crate) async fn next_raw(events: &mut ConnectionEvents) -> Result<EventData> {
    poll_fn(|cx| events.poll_raw(cx))
        .await
        .ok_or_else(|| Error::Closed("the connection's event queue".into()))
}

/// The events of one connection (DISCONNECTED, TIMEWAIT_EXIT, ADDR_CHANGE, DEVICE_REMOVAL,
/// ESTABLISHED for an early-accepted one), as a [`Stream`]. Ends after TIMEWAIT_EXIT or
/// DEVICE_REMOVAL, the last events an id reports.
pub struct ConnectionEvents {
    rx: InboxReceiver<IdEvent>,
    /// Events taken out while waiting for one in particular, yielded first.
    pending: VecDeque<ConnectionEvent>,
    done: bool,
}

impl ConnectionEvents {
    pub(crate) fn new(rx: InboxReceiver<IdEvent>) -> Self {
        Self {
            rx,
            pending: VecDeque::new(),
            done: false,
        }
    }

    /// The next event's content.
    pub(crate) fn poll_raw(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<EventData>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(mut e)) => {
                let data = EventData {
                    private_data: std::mem::take(&mut e.event.private_data),
                    ..e.event.clone()
                };
                Poll::Ready(Some(data))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    pub(crate) fn poll_event(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<ConnectionEvent>> {
        if let Some(e) = self.pending.pop_front() {
            return Poll::Ready(Some(e));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let Some(raw) = std::task::ready!(self.poll_raw(cx)) else {
            self.done = true;
            return Poll::Ready(None);
        };
        let event = ConnectionEvent::from_event(raw.kind, raw.status);
        self.done = event.is_last();
        Poll::Ready(Some(event))
    }

    pub(crate) fn push_front(&mut self, events: impl IntoIterator<Item = ConnectionEvent>) {
        for e in events {
            self.pending.push_back(e);
        }
    }
}

impl Stream for ConnectionEvents {
    type Item = ConnectionEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_event(cx)
    }
}

impl Drop for ConnectionEvents {
    fn drop(&mut self) {
        // Acknowledge what is queued now (the id's destroy waits for it); later events find
        // the inbox closed and are acknowledged by the driver.
        self.rx.close();
        while self.rx.try_recv().is_some() {}
    }
}

impl fmt::Debug for ConnectionEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionEvents")
            .field("pending", &self.pending)
            .field("done", &self.done)
            .finish()
    }
}

/// Waits for ESTABLISHED on an accepted id, at most `timeout` (as `crate::bound` extends it
/// while `channel`, the id's, still holds events nobody has routed).
pub(crate) async fn wait_established(
    channel: &EventChannel,
    events: &mut ConnectionEvents,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<()> {
    let mut open = PassiveOpen::new();
    let wait = async {
        loop {
            let e = next_raw(events).await?;
            match open.handle(e.kind, e.status) {
                ConnectAction::Done => return Ok(()),
                ConnectAction::Fail(f) => return Err(failure(f, addr, e.private_data)),
                _ => {}
            }
        }
    };
    crate::bound::for_answer(channel, timeout, wait)
        .await
        .ok_or(Error::TimedOut {
            step: crate::Step::Connect,
            addr,
            after: timeout,
        })?
}

/// The error of a failed connection attempt.
pub(crate) fn failure(f: ConnectFailure, addr: SocketAddr, private_data: Vec<u8>) -> Error {
    match f {
        ConnectFailure::Unreachable { step, status } => Error::Unreachable { step, addr, status },
        ConnectFailure::Refused { reason } => Error::Refused { addr, reason },
        ConnectFailure::Rejected { reason } => Error::Rejected {
            addr,
            reason,
            private_data,
        },
        ConnectFailure::DeviceRemoved => Error::DeviceRemoved,
        ConnectFailure::Unexpected { kind, status } => Error::Os {
            call: "rdma_get_cm_event",
            errno: status.saturating_abs(),
            context: format!("unexpected {kind} (status {status}) while connecting to {addr}"),
        },
        _ => Error::Closed(format!("connecting to {addr}: {f:?}")),
    }
}
