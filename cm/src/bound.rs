//! Bounds on waits for answers that arrive through the event channel, which a stall of this
//! process cannot break.
//!
//! A timer of ours and the event it bounds reach the waiting task by different paths: the
//! timer wakes the task itself, the event only once the channel's driver task has read it and
//! routed it to the id's inbox. After a stall of the process or of its runtime (a paused VM,
//! workers blocked in system calls) longer than the bound, both are due at once, and tokio
//! may well run the waiting task first (its LIFO slot takes the task the timer woke, pushing
//! the driver task back). Failing then would fail a step whose answer is in the channel. So
//! when the bound passes while the channel still holds events nobody has routed, the wait
//! goes on in short grace periods until the driver has caught up: for at most the bound once
//! more, so a channel that is never empty (other ids' events) cannot hold a wait for good.
//!
//! This covers answers the kernel had queued for this process when the bound passed. A stall
//! of the whole machine (a paused VM) also holds the kernel's CM work, whose answer can then
//! come after our bound.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use crate::channel::EventChannel;

/// How long the wait goes on each time the bound passes with events not yet routed.
pub(crate) const GRACE: Duration = Duration::from_millis(10);

/// Runs `fut` for at most `bound` (see the module docs): `None` if it did not finish in time.
/// `unrouted` tells whether the channel holds events on their way to their ids
/// (`EventChannel::has_unrouted_events`).
pub(crate) async fn within<F: Future>(
    bound: Duration,
    unrouted: impl Fn() -> bool,
    fut: F,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    // A bound too far to represent is none (as `tokio::time::timeout` takes it).
    let Some(mut until) = Instant::now().checked_add(bound) else {
        return Some(fut.await);
    };
    let mut last: Option<Instant> = None;
    loop {
        if let Ok(v) = tokio::time::timeout_at(until, fut.as_mut()).await {
            return Some(v);
        }
        let now = Instant::now();
        let last = *last.get_or_insert(now.checked_add(bound).unwrap_or(now));
        if now < last && unrouted() {
            until = (now + GRACE).min(last);
            continue;
        }
        // Routed between the future's last poll and the check above: it is in the inbox.
        return std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
            Poll::Ready(v) => Poll::Ready(Some(v)),
            Poll::Pending => Poll::Ready(None),
        })
        .await;
    }
}

/// [`within`] for an answer that reaches its id through `channel`.
pub(crate) async fn for_answer<F: Future>(
    channel: &EventChannel,
    bound: Duration,
    fut: F,
) -> Option<F::Output> {
    within(bound, || channel.has_unrouted_events(), fut).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_finishes_in_time_is_not_extended() {
        let asked = AtomicU32::new(0);
        let unrouted = || {
            asked.fetch_add(1, Ordering::Relaxed);
            true
        };
        let start = Instant::now();
        let r = within(Duration::from_secs(1), unrouted, async { 7 }).await;
        assert_eq!(r, Some(7));
        assert_eq!(asked.load(Ordering::Relaxed), 0);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bound_too_far_to_represent_is_none() {
        let answer = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            1
        };
        assert_eq!(within(Duration::MAX, || false, answer).await, Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_unrouted_ends_the_wait_at_its_bound() {
        let start = Instant::now();
        let r = within(
            Duration::from_secs(1),
            || false,
            std::future::pending::<()>(),
        )
        .await;
        assert_eq!(r, None);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn unrouted_events_extend_the_wait_until_they_are_routed() {
        let routed = AtomicBool::new(false);
        let answer = async {
            tokio::time::sleep(Duration::from_millis(1030)).await;
            routed.store(true, Ordering::Relaxed);
            "answer"
        };
        let start = Instant::now();
        let r = within(
            Duration::from_secs(1),
            || !routed.load(Ordering::Relaxed),
            answer,
        )
        .await;
        assert_eq!(r, Some("answer"));
        assert_eq!(start.elapsed(), Duration::from_millis(1030));
    }

    #[tokio::test(start_paused = true)]
    async fn a_channel_never_empty_extends_the_wait_by_its_bound_at_most() {
        let start = Instant::now();
        let r = within(
            Duration::from_secs(1),
            || true,
            std::future::pending::<()>(),
        )
        .await;
        assert_eq!(r, None);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_routed_just_after_the_bound_is_taken() {
        // The driver routes the answer between the future's poll at the bound and the check:
        // nothing is unrouted any more, and the answer waits in the inbox.
        let routed = std::cell::Cell::new(false);
        let unrouted = || {
            routed.set(true);
            false
        };
        let answer = std::future::poll_fn(|_| {
            if routed.get() {
                Poll::Ready("answer")
            } else {
                Poll::Pending
            }
        });
        let start = Instant::now();
        let r = within(Duration::from_secs(1), unrouted, answer).await;
        assert_eq!(r, Some("answer"));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
}
