//! The per-channel driver task. It only *executes* the steps of core's [`DriverPolicy`]
//! (poll-arm-poll, count-bounded spin, batched acks, park) with the real verbs, and ticks the
//! channel's pending teardowns.

use std::cell::Cell;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio_rdma_core::{DriverPolicy, DriverPolicyConfig, DriverStep, EventOutcome};

use super::aside::{stand_aside, AsideTimer, ASIDE_BOUND};
use super::channel::ChannelInner;
use super::queue::CqInner;
use super::queue::CqRegistry;
use crate::sys::Fd;

/// Whether the reactor has seen the fd readable, without waiting, without a system call and
/// without registering a waker (`AsyncFd::try_io` only checks the readiness it has): the fd's
/// single reader waker belongs to a future waiting on it in event mode
/// (`CqInner::wait_on_channel`).
fn readable_now(fd: &AsyncFd<Fd>) -> bool {
    fd.try_io(Interest::READABLE, |_| Ok(())).is_ok()
}

/// The executor's state: the policy and the CQs it holds while they are active.
struct Executor<'a> {
    chan: &'a ChannelInner,
    policy: DriverPolicy<usize>,
    /// The active CQs (by key), held strongly while the policy polls them.
    held: Vec<Arc<CqInner>>,
    /// Every registered CQ, weakly: a parked one is polled through it on a wake-up, before
    /// its event is read (and so before it is held).
    known: Vec<(usize, Weak<CqInner>)>,
    /// Whether a poll since the last yield dispatched completions (and so may have woken
    /// tasks).
    dispatched: bool,
    /// At the last yield: the lone active CQ (by key), its spin turns, and the channel's
    /// nudges (see [`Executor::spinner`]).
    seen: Option<(usize, u32, u32)>,
    /// Where [`Executor::cq`] looks first.
    next_held: Cell<usize>,
    /// The timer the driver stands aside with (made on first use; `Err` if it could not be,
    /// and then the driver never stands aside).
    timer: Option<io::Result<AsideTimer>>,
}

impl Executor<'_> {
    /// The held CQ `key`. A round polls the active CQs in the order they became active,
    /// which is `held`'s order too, so the one after the last found (or the first, at a
    /// round's start) is tried before a search: a round costs O(active), not O(active²).
    fn cq(&self, key: usize) -> Option<&Arc<CqInner>> {
        let next = self.next_held.get();
        let i = [next, 0]
            .into_iter()
            .find(|&i| self.held.get(i).is_some_and(|c| c.key == key))
            .or_else(|| self.held.iter().position(|c| c.key == key))?;
        self.next_held.set(i + 1);
        self.held.get(i)
    }

    /// The channel's nudges, when a future has taken spin turns on the lone active CQ since
    /// the last yield, no future waits for the driver there, and nothing has nudged the driver
    /// since then (so the driver may stand aside: `cq::aside`).
    fn spinner(&mut self) -> Option<u32> {
        // Nudges first: a future that starts waiting after this read nudges, and ends the
        // stand-aside.
        let nudges = self.chan.registry.nudges();
        let lone = match (self.held.as_slice(), self.policy.active().len()) {
            ([cq], 1) if cq.waiting.load(Ordering::SeqCst) == 0 => {
                Some((cq.key, cq.spins.load(Ordering::Relaxed), nudges))
            }
            _ => None,
        };
        let before = std::mem::replace(&mut self.seen, lone);
        match (before, lone) {
            (Some((key, spins, n)), Some((k, s, _))) if key == k && spins != s && n == nudges => {
                Some(nudges)
            }
            _ => None,
        }
    }

    /// The yield after a round. On a multi-thread runtime, a future spinning on the lone
    /// active CQ runs on another worker: after an empty round the driver stands aside rather
    /// than poll the same CQ there too.
    async fn end_round(&mut self, current_thread: bool, fd: &AsyncFd<Fd>) {
        let dispatched = std::mem::take(&mut self.dispatched);
        // Only a future outside any task (counted while it waits; in event mode none is
        // counted, so always) needs the deferred yield: tasks the round woke are in the run
        // queue already.
        let block_on_woken = dispatched
            && (self.chan.config.spin_iterations == 0 || self.chan.registry.outside_tasks_wait());
        let waited = if current_thread {
            false
        } else if dispatched {
            // Start again: spin turns are counted from an empty round.
            self.seen = None;
            false
        } else {
            self.stand_aside(fd).await
        };
        if !waited {
            yield_after_round(block_on_woken, current_thread).await;
        }
    }

    /// Stands aside while a future spins on the lone active CQ (`cq::aside`); whether it
    /// waited.
    async fn stand_aside(&mut self, fd: &AsyncFd<Fd>) -> bool {
        let Some(nudges) = self.spinner() else {
            return false;
        };
        let timer = self.timer.get_or_insert_with(|| {
            AsideTimer::new().inspect_err(|e| {
                tracing::debug!(error = %e, "no timerfd: the driver does not stand aside");
            })
        });
        match timer {
            Ok(timer) => stand_aside(&self.chan.registry, nudges, fd, timer, ASIDE_BOUND).await,
            Err(_) => false,
        }
    }

    fn sync_registry(&mut self) {
        sync_registry(
            &self.chan.registry,
            &mut self.policy,
            &mut self.held,
            &mut self.known,
        );
    }

    /// Reads every pending event if the reactor has seen the fd readable (readiness is cleared
    /// only on EAGAIN, by `try_io`, which registers no waker).
    fn drain(&mut self, fd: &AsyncFd<Fd>) -> io::Result<()> {
        let chan = self.chan;
        let r = fd.try_io(Interest::READABLE, |_| {
            chan.drain_events(|cq| {
                let mut outcome = self.policy.on_event(cq.key);
                if outcome == EventOutcome::AckNow {
                    // A CQ created since the last sync: register it and count again.
                    self.sync_registry();
                    outcome = self.policy.on_event(cq.key);
                }
                if outcome == EventOutcome::AckNow {
                    cq.ack(1);
                } else if !self.held.iter().any(|h| Arc::ptr_eq(h, &cq)) {
                    self.held.push(cq);
                }
            })
        });
        match r {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        }
    }

    /// About to park with the fd's readiness cleared: futures that found it still readable
    /// (before the events were read) wait on the fd themselves now (`CqInner::wait_on_channel`).
    /// Only on a one-CQ channel, the only one where futures do that.
    fn wake_channel_waiters(&self) {
        if self.chan.registry.is_lone() {
            for (_, cq) in &self.known {
                if let Some(cq) = cq.upgrade() {
                    cq.channel_waiter.wake();
                }
            }
        }
    }

    /// Polls CQ `key`. Completions its futures found themselves since the last poll count
    /// as activity, so a CQ whose futures take everything is not concluded idle.
    fn poll(&mut self, key: usize) {
        let poll = |cq: &CqInner| (cq.driver_poll(), cq.take_found_inline());
        let polled = match self.cq(key) {
            Some(cq) => Some(poll(cq)),
            // A parked CQ, polled on a wake-up before its event is read.
            None => self
                .known
                .iter()
                .find(|(k, _)| *k == key)
                .and_then(|(_, cq)| cq.upgrade())
                .map(|cq| poll(&cq)),
        };
        let (n, busy) = polled.map_or((0, false), |(r, busy)| (self.found(r), busy));
        if busy {
            self.policy.on_activity(key);
        }
        self.policy.on_polled(key, n);
    }

    /// What a driver poll tells the policy: the completions it found, noted as dispatched;
    /// 1 when another thread was polling the CQ (it must not be concluded empty); 0 when the
    /// poll failed.
    fn found(&mut self, polled: crate::error::Result<Option<usize>>) -> usize {
        match polled {
            Ok(Some(n)) => {
                self.dispatched |= n > 0;
                n
            }
            Ok(None) => 1,
            Err(e) => {
                tracing::warn!(error = %e, "poll failed");
                0
            }
        }
    }

    fn arm(&mut self, key: usize) {
        let Some(cq) = self.cq(key) else {
            self.policy.on_polled_after_arm(key, 0);
            return;
        };
        let n = match cq.arm() {
            // Arming failed: keep it active, armed again after the next spin budget.
            Err(e) => {
                tracing::warn!(error = %e, "arming failed");
                1
            }
            Ok(()) => {
                let r = cq.driver_poll();
                self.found(r)
            }
        };
        self.policy.on_polled_after_arm(key, n);
        if n == 0 {
            // Parked: its next completion raises an event, which hands it back.
            self.held.retain(|c| c.key != key);
        }
    }
}

/// Applies CQs created and dropped since the last look.
fn sync_registry(
    registry: &CqRegistry,
    policy: &mut DriverPolicy<usize>,
    held: &mut Vec<Arc<CqInner>>,
    known: &mut Vec<(usize, Weak<CqInner>)>,
) {
    if let Some(changes) = registry.take() {
        for (key, cq) in changes.added {
            policy.add_cq(key);
            known.push((key, cq));
        }
        for key in changes.removed {
            // Its drop acked what it had read; the policy's count is the same events.
            let _ = policy.on_cq_removed(key);
            held.retain(|c| c.key != key);
            known.retain(|(k, _)| *k != key);
        }
    }
}

/// The driver's yield between rounds. After a round that may have woken the `block_on`
/// future of a current-thread runtime (a `#[tokio::main]` body awaiting an operation: the
/// round dispatched completions while such a future waited), tokio's `yield_now`: its wake-up
/// is deferred until the runtime has run every ready task and polled its I/O driver, which is
/// also when the `block_on` future is polled again, so it runs right after the round; the
/// price is a non-blocking `epoll_wait` per such round. Otherwise [`yield_to_tasks`], which
/// costs no system call: after a round that woke only tasks (they are in the run queue
/// already), after an empty round (spinning), and on a multi-thread runtime, whose workers defer a
/// `yield_now` wake-up until they have nothing else to run or to steal (or until their next
/// maintenance, 61 tasks later): next to tasks that are always ready, the driver would poll
/// again only that late, while the completions it could hand over wait. A multi-thread
/// runtime runs no `block_on` future on its workers, so nothing is gained by deferring there.
async fn yield_after_round(block_on_woken: bool, current_thread: bool) {
    if block_on_woken && current_thread {
        tokio::task::yield_now().await;
    } else {
        yield_to_tasks().await;
    }
}

/// Whether the calling task runs on a current-thread runtime (where the driver's yield after a
/// dispatching round is `yield_now`; see [`yield_after_round`]).
fn on_current_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
}

/// Gives every other ready task of the runtime a turn: the task wakes itself and returns
/// `Pending` once, which tokio's schedulers (both flavors) treat as a yield, putting it at the
/// back of the run queue. Unlike `tokio::task::yield_now`, the wake-up is not deferred until
/// the runtime has polled its I/O driver: with nothing else ready (a spinning driver and a
/// task awaiting a completion), each `yield_now` costs a non-blocking `epoll_wait`, and the
/// spin only polls the CQs between them. The runtime still polls its I/O and timer drivers
/// (and a current-thread runtime its `block_on` future) every `event_interval` ticks (61 by
/// default), so neither is starved; but a `block_on` future is polled only that often while
/// the driver spins, which is why the yield after a round that may have woken one (see
/// [`yield_after_round`]) is `yield_now`.
async fn yield_to_tasks() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if std::mem::replace(&mut yielded, true) {
            std::task::Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
}

/// Publishes an empty active set when the driver task ends (its runtime shut down, or it
/// fell back to timed polls). While more than one CQ is active, futures leave the waiting to
/// the driver's rounds (`CqInner::inline_budget`); a count left from a busy moment would
/// have them wait for rounds that never come, instead of polling their CQs themselves.
struct ActiveOnExit<'a>(&'a CqRegistry);

impl Drop for ActiveOnExit<'_> {
    fn drop(&mut self) {
        self.0.set_active(0);
    }
}

/// The per-channel driver task.
pub(super) async fn drive(chan: Arc<ChannelInner>) {
    let Some(fd) = chan.fd.as_ref() else { return };
    let _active_on_exit = ActiveOnExit(&chan.registry);
    let cfg = chan.config;
    let mut ex = Executor {
        chan: &chan,
        policy: DriverPolicy::new(DriverPolicyConfig {
            spin_polls: cfg.spin_iterations,
            tight_polls: super::config::TIGHT_POLLS,
            ack_batch: cfg.ack_batch,
            wake_polls: super::config::WAKE_POLLS,
        }),
        held: Vec::new(),
        known: Vec::new(),
        dispatched: false,
        seen: None,
        next_held: Cell::new(0),
        timer: None,
    };
    // The task runs on the runtime that spawned it, for good.
    let current_thread = on_current_thread_runtime();
    loop {
        match ex.policy.next_step() {
            DriverStep::Poll(key) => ex.poll(key),
            DriverStep::Arm(key) => ex.arm(key),
            DriverStep::Ack { cq, n } => {
                if let Some(cq) = ex.cq(cq) {
                    cq.ack(n);
                }
            }
            DriverStep::DrainEvents => {
                if let Err(e) = ex.drain(fd) {
                    return fallback(&chan, &format!("ibv_get_cq_event: {e}")).await;
                }
                chan.registry.set_active(ex.policy.active().len());
            }
            DriverStep::Yield => {
                chan.registry.set_active(ex.policy.active().len());
                ex.end_round(current_thread, fd).await;
                ex.sync_registry();
                if chan.faulted.load(Ordering::Acquire) {
                    return fallback(&chan, "fault injected").await;
                }
                // Picking up events costs no system call when the reactor already saw the fd
                // readable (an armed CQ got a completion), unlike an `ibv_get_cq_event` that
                // finds nothing.
                if readable_now(fd) {
                    ex.policy.on_readable();
                }
            }
            DriverStep::Park => {
                chan.registry.set_active(0);
                ex.wake_channel_waiters();
                if let Err(e) = fd.readable().await {
                    return fallback(&chan, &format!("waiting on the fd: {e}")).await;
                }
                if chan.faulted.load(Ordering::Acquire) {
                    return fallback(&chan, "fault injected").await;
                }
                // CQs created while parked are registered (parked) first, so a wake-up
                // polls them too.
                ex.sync_registry();
                ex.policy.on_woken();
            }
        }
    }
}

/// How often the fallback polls once the channel's fd has failed.
const FALLBACK_PERIOD: Duration = Duration::from_millis(1);

/// The channel fd failed: no completion event will ever arrive. Releasing the CQs' buffers
/// now would free memory the NIC may still write (their QPs are live), and failing their
/// futures would lose completions that are still coming; so keep delivering them by polling
/// every CQ of the channel on a timer, until the channel's owner stops the task.
async fn fallback(chan: &ChannelInner, why: &str) {
    tracing::error!(
        why,
        "completion channel failed: its CQs are polled every {FALLBACK_PERIOD:?} from now on"
    );
    chan.faulted.store(true, Ordering::Release);
    // Futures poll their CQs themselves again (see `ActiveOnExit`).
    chan.registry.set_active(0);
    let mut tick = tokio::time::interval(FALLBACK_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let cqs = chan.live_cqs();
        while cqs
            .iter()
            .any(|cq| matches!(cq.poll_once(), Ok(Some(n)) if n > 0))
        {}
    }
}

#[cfg(test)]
mod tests;
