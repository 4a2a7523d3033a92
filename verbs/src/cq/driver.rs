//! The per-channel driver task: poll-arm-poll with a count-bounded adaptive spin.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};

use super::channel::ChannelInner;
use super::config::TIGHT_POLLS;
use super::queue::CqInner;
use super::reaper::{Reaper, REAP_PERIOD};
use crate::sys::Fd;

/// The fd's readiness as the reactor knows it, without waiting (and without a system call).
/// The no-op waker it leaves registered is replaced when the driver parks on the fd.
fn ready_now(fd: &AsyncFd<Fd>) -> Option<io::Result<AsyncFdReadyGuard<'_, Fd>>> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fd.poll_read_ready(&mut cx) {
        std::task::Poll::Ready(r) => Some(r),
        std::task::Poll::Pending => None,
    }
}

/// Polls every active CQ once; whether anything was found (or someone else was draining).
fn poll_all(active: &[Arc<CqInner>]) -> bool {
    let mut found = false;
    for cq in active {
        match cq.poll_once() {
            Ok(Some(0)) => {}
            Ok(_) => found = true,
            Err(e) => tracing::warn!(error = %e, "poll failed"),
        }
    }
    found
}

/// The per-channel driver task: poll-arm-poll with a count-bounded adaptive spin.
pub(super) async fn drive(chan: Arc<ChannelInner>) {
    let Some(fd) = chan.fd.as_ref() else { return };
    let cfg = chan.config;
    let mut active: Vec<Arc<CqInner>> = Vec::new();
    let mut idle: u32 = 0;
    let mut rounds: u32 = 0;
    loop {
        if active.is_empty() {
            // Park: nothing armed has produced anything yet.
            let mut guard = tokio::select! {
                r = fd.readable() => match r {
                    Ok(g) => g,
                    Err(e) => return fallback(&chan, &format!("waiting on the fd: {e}")).await,
                },
                () = chan.fault.notified() => {
                    return fallback(&chan, "fault injected").await;
                }
                () = reap_wait(&chan.reaper) => {
                    chan.reaper.tick();
                    continue;
                }
            };
            match guard.try_io(|_| chan.drain_events(&mut active)) {
                Ok(Err(e)) if e.kind() != io::ErrorKind::WouldBlock => {
                    return fallback(&chan, &format!("ibv_get_cq_event: {e}")).await;
                }
                // Drained to EAGAIN: try_io cleared readiness.
                _ => {}
            }
            idle = 0;
        } else if let Some(Ok(mut guard)) = ready_now(fd) {
            // Spinning, and the reactor saw the fd readable (an armed CQ got a completion):
            // pick up its events without waiting. Checking the readiness the reactor already
            // has costs no system call, unlike an `ibv_get_cq_event` that finds nothing.
            let _ = guard.try_io(|_| chan.drain_events(&mut active));
        }
        if chan.faulted.load(Ordering::Acquire) {
            return fallback(&chan, "fault injected").await;
        }
        if chan.reaper.is_pending() {
            rounds = rounds.wrapping_add(1);
            if rounds % REAP_ROUNDS == 0 {
                chan.reaper.tick();
            }
        }

        // Poll; while nothing shows up, re-poll in a tight loop for a few rounds before
        // yielding, so the per-yield runtime cost (an epoll_wait and a clock read in tokio's
        // park) is paid once per TIGHT_POLLS empty polls, not per poll.
        let mut found = poll_all(&active);
        let mut polls = 1;
        while !found && polls < TIGHT_POLLS && idle + polls < cfg.spin_iterations {
            std::hint::spin_loop();
            found = poll_all(&active);
            polls += 1;
        }
        if found {
            idle = 0;
            tokio::task::yield_now().await;
            continue;
        }
        idle += polls;
        if idle < cfg.spin_iterations {
            tokio::task::yield_now().await;
            continue;
        }
        // Empty for the whole spin budget: arm, then poll again (a completion that landed
        // between the last poll and the arm would otherwise be lost). Park only CQs that are
        // still empty; the others stay active (a spurious event later is harmless).
        active.retain(|cq| {
            if let Err(e) = cq.arm() {
                tracing::warn!(error = %e, "arming failed");
            }
            !matches!(cq.poll_once(), Ok(Some(0)))
        });
        idle = 0;
        tokio::task::yield_now().await;
    }
}

/// While spinning, pending teardowns are ticked every this many driver rounds (a tick reads
/// the clock: not on every round).
const REAP_ROUNDS: u32 = 256;

/// Resolves after a reap period when teardowns are pending, else when one is scheduled.
async fn reap_wait(reaper: &Reaper) {
    if reaper.is_pending() {
        tokio::time::sleep(REAP_PERIOD).await;
    } else {
        reaper.notify.notified().await;
    }
}

/// How often the fallback polls once the channel's fd has failed.
const FALLBACK_PERIOD: Duration = Duration::from_millis(1);

/// The channel fd failed: no completion event will ever arrive. Releasing the CQs' buffers
/// now would free memory the NIC may still write (their QPs are live), and failing their
/// futures would lose completions that are still coming; so keep delivering them by polling
/// every CQ of the channel on a timer, until the last CQ is gone.
async fn fallback(chan: &ChannelInner, why: &str) {
    tracing::error!(
        why,
        "completion channel failed: its CQs are polled every {FALLBACK_PERIOD:?} from now on"
    );
    chan.faulted.store(true, Ordering::Release);
    let mut tick = tokio::time::interval(FALLBACK_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The task ends when the channel's owner aborts it (its last handle and CQ are gone).
        let cqs = chan.live_cqs();
        while poll_all(&cqs) {}
        if chan.reaper.is_pending() {
            chan.reaper.tick();
        }
    }
}
