//! A bounded, pre-allocated, lock-free MPSC queue with one consumer task.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use crate::sync::{Arc, AtomicBool, AtomicWaker, Consumer, Ordering, Ring};

struct Chan<T> {
    ring: Ring<T>,
    rx_waker: AtomicWaker,
    closed: AtomicBool,
}

impl<T> Chan<T> {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.rx_waker.wake();
    }
}

/// Creates an inbox holding at least `capacity` values.
///
/// The ring is allocated here, once; the capacity is rounded up to a power of two (minimum 2),
/// see [`InboxSender::capacity`]. Sending and receiving never allocate and never lock.
///
/// **Back-pressure** is the sender's business: [`InboxSender::try_send`] never blocks and
/// returns [`TrySendError::Full`] when the ring is full. The dispatcher's routed slots avoid
/// that by construction: size the inbox for every receive slot routed to it, and re-post a
/// receive only after its delivery was taken out of the inbox (so in-flight receives + queued
/// deliveries ≤ capacity).
pub fn inbox<T: Send>(capacity: usize) -> (InboxSender<T>, InboxReceiver<T>) {
    let (ring, consumer) = Ring::new(capacity);
    let chan = Arc::new(Chan {
        ring,
        rx_waker: AtomicWaker::new(),
        closed: AtomicBool::new(false),
    });
    (
        InboxSender {
            guard: Arc::new(SenderGuard { chan: chan.clone() }),
        },
        InboxReceiver { chan, consumer },
    )
}

/// Error of [`InboxSender::try_send`]; gives the value back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The inbox is full.
    Full(T),
    /// The inbox is closed (receiver dropped or [`InboxSender::close`] called).
    Closed(T),
}

impl<T> TrySendError<T> {
    /// The value that could not be sent.
    pub fn into_inner(self) -> T {
        match self {
            Self::Full(v) | Self::Closed(v) => v,
        }
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full(_) => "Full(..)",
            Self::Closed(_) => "Closed(..)",
        })
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full(_) => "inbox full",
            Self::Closed(_) => "inbox closed",
        })
    }
}

impl<T> std::error::Error for TrySendError<T> {}

/// The sending half of an [`inbox`]. Cheap to clone; the inbox closes when the last sender is
/// dropped or any sender calls [`close`](Self::close).
pub struct InboxSender<T> {
    /// Shared by all senders: cloning or dropping a sender is one reference-count operation,
    /// and the guard closes the inbox when the last sender is gone.
    guard: Arc<SenderGuard<T>>,
}

struct SenderGuard<T> {
    chan: Arc<Chan<T>>,
}

impl<T> Drop for SenderGuard<T> {
    fn drop(&mut self) {
        self.chan.close();
    }
}

impl<T> InboxSender<T> {
    #[inline(always)]
    fn chan(&self) -> &Chan<T> {
        &self.guard.chan
    }

    /// Queues `v` and wakes the receiver. Never blocks, never allocates.
    ///
    /// # Errors
    /// [`TrySendError::Full`] when the ring is full, [`TrySendError::Closed`] once closed.
    #[inline]
    pub fn try_send(&self, v: T) -> Result<(), TrySendError<T>> {
        self.try_send_deferred(v)?;
        self.wake_receiver();
        Ok(())
    }

    /// `try_send` without waking the receiver: the caller must call
    /// [`wake_receiver`](Self::wake_receiver) afterwards (used to wake once per batch).
    #[inline]
    pub(crate) fn try_send_deferred(&self, v: T) -> Result<(), TrySendError<T>> {
        if self.chan().closed.load(Ordering::Acquire) {
            return Err(TrySendError::Closed(v));
        }
        self.chan().ring.push(v).map_err(TrySendError::Full)
    }

    /// Wakes the receiver (after [`try_send_deferred`](Self::try_send_deferred)).
    #[inline]
    pub(crate) fn wake_receiver(&self) {
        self.chan().rx_waker.wake();
    }

    /// Whether both senders feed the same inbox.
    #[inline]
    pub(crate) fn same_inbox(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.guard, &other.guard)
    }

    /// Closes the inbox for every sender: further sends fail with `Closed`; the receiver
    /// drains what is queued, then ends. (A send racing with `close` may be lost: its value
    /// is then dropped with the inbox.)
    pub fn close(&self) {
        self.chan().close();
    }

    /// Whether the inbox is closed.
    pub fn is_closed(&self) -> bool {
        self.chan().closed.load(Ordering::Acquire)
    }

    /// The real capacity (the requested one rounded up to a power of two, at least 2).
    pub fn capacity(&self) -> usize {
        self.chan().ring.capacity()
    }
}

impl<T> Clone for InboxSender<T> {
    #[inline]
    fn clone(&self) -> Self {
        Self {
            guard: self.guard.clone(),
        }
    }
}

impl<T> fmt::Debug for InboxSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxSender")
            .field("capacity", &self.capacity())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The receiving half of an [`inbox`]: a [`Stream`] ending once the inbox is closed and
/// drained. Dropping it closes the inbox (queued values are dropped).
pub struct InboxReceiver<T> {
    chan: Arc<Chan<T>>,
    /// The ring's only dequeue right.
    consumer: Consumer,
}

impl<T> InboxReceiver<T> {
    /// Takes the next value, if one is ready.
    #[inline]
    pub fn try_recv(&mut self) -> Option<T> {
        self.chan.ring.pop(&mut self.consumer)
    }

    /// Polls for the next value: `Ready(None)` once closed and drained.
    #[inline]
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(v) = self.chan.ring.pop(&mut self.consumer) {
            return Poll::Ready(Some(v));
        }
        // Register, then re-check.
        self.chan.rx_waker.register(cx.waker());
        if let Some(v) = self.chan.ring.pop(&mut self.consumer) {
            return Poll::Ready(Some(v));
        }
        if self.chan.closed.load(Ordering::Acquire) {
            // Values sent before the close are visible now.
            return Poll::Ready(self.chan.ring.pop(&mut self.consumer));
        }
        Poll::Pending
    }

    /// Number of queued values (snapshot).
    pub fn len(&self) -> usize {
        self.chan.ring.len()
    }

    /// Whether nothing is queued (snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the inbox is closed (it may still hold values).
    pub fn is_closed(&self) -> bool {
        self.chan.closed.load(Ordering::Acquire)
    }

    /// Closes the inbox: senders get `Closed`; queued values can still be received.
    pub fn close(&mut self) {
        self.chan.close();
    }
}

impl<T> Stream for InboxReceiver<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.get_mut().poll_recv(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.len(), None)
    }
}

impl<T> Drop for InboxReceiver<T> {
    fn drop(&mut self) {
        self.chan.closed.store(true, Ordering::Release);
    }
}

impl<T> fmt::Debug for InboxReceiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxReceiver")
            .field("len", &self.len())
            .field("closed", &self.is_closed())
            .finish()
    }
}
