//! Event sources (fd-backed: CQ channel, device async events, CM channel) as streams.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::{FusedStream, Stream};

/// A source of events that `verbs`/`cm` drivers implement on top of their file descriptors.
pub trait EventSource {
    /// The event type.
    type Event;
    /// The error type.
    type Error;

    /// Poll for the next event. Implementations do the readiness dance themselves (tokio
    /// `AsyncFd`: `poll_read_ready`, then `try_io` so readiness is cleared only on `EAGAIN`).
    /// `Ready(None)` = the source is closed / exhausted.
    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Self::Event, Self::Error>>>;

    /// Whether `error` ends the source: [`EventStream`] yields it, then ends. Defaults to
    /// `false` (errors are yielded and polling continues).
    fn is_fatal(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }
}

/// A [`Stream`] over an [`EventSource`]; fused: once the source returned `Ready(None)` or a
/// fatal error, it keeps returning `Ready(None)` without polling the source again.
pub struct EventStream<S: EventSource> {
    source: S,
    done: bool,
}

impl<S: EventSource> EventStream<S> {
    /// Wraps `source`.
    pub fn new(source: S) -> Self {
        Self {
            source,
            done: false,
        }
    }

    /// The source.
    pub fn get_ref(&self) -> &S {
        &self.source
    }

    /// The source, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.source
    }

    /// Unwraps the source.
    pub fn into_inner(self) -> S {
        self.source
    }

    /// Polls for the next event (the `Stream` method without `Pin`).
    pub fn poll_next_event(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<S::Event, S::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let item = std::task::ready!(self.source.poll_event(cx));
        match &item {
            None => self.done = true,
            Some(Err(e)) if self.source.is_fatal(e) => self.done = true,
            Some(_) => {}
        }
        Poll::Ready(item)
    }

    /// A future resolving to the next event (`None` once the stream ended).
    pub fn next_event(&mut self) -> NextEvent<'_, S> {
        NextEvent { stream: self }
    }
}

impl<S: EventSource + fmt::Debug> fmt::Debug for EventStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("source", &self.source)
            .field("done", &self.done)
            .finish()
    }
}

impl<S: EventSource + Unpin> Stream for EventStream<S> {
    type Item = Result<S::Event, S::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_next_event(cx)
    }
}

impl<S: EventSource + Unpin> FusedStream for EventStream<S> {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

/// Future returned by [`EventStream::next_event`].
#[must_use = "futures do nothing unless polled"]
pub struct NextEvent<'a, S: EventSource> {
    stream: &'a mut EventStream<S>,
}

impl<S: EventSource> Future for NextEvent<'_, S> {
    type Output = Option<Result<S::Event, S::Error>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.stream.poll_next_event(cx)
    }
}

impl<S: EventSource> fmt::Debug for NextEvent<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NextEvent").finish_non_exhaustive()
    }
}
