//! The owner of one `ibv_cq`: its dispatcher, its draining flag and batch buffer (used by
//! `poll`), inline-polling and spinning decisions of the futures waiting on it, arming and
//! event acknowledgement.

use std::any::Any;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use rdma_sys as ffi;
use tokio_rdma_core::sync::AtomicWaker;
use tokio_rdma_core::{Dispatcher, WcStatus};

use super::config::DriverConfig;
use super::reaper::Reaper;
use super::registry::Registry;
use super::wc::WcBuffer;
use crate::device::ContextInner;
use crate::error::{Error, Result};

/// The `wr_id` of unsignaled requests ([`QueuePair::send_inline_unsignaled`] and the
/// unsignaled WRITEs). Its slot index (`u32::MAX`) is beyond any dispatcher's capacity, so it
/// can never name a slot; a completion carrying it (only an error or flush completes an
/// unsignaled request) is counted in
/// [`CqStats::unsignaled_errors`](super::CqStats::unsignaled_errors) instead of being
/// dispatched.
///
/// [`QueuePair::send_inline_unsignaled`]: crate::QueuePair::send_inline_unsignaled
pub(crate) const UNSIGNALED_WR_ID: u64 = u64::MAX;

/// Marks the `wr_id` of a raw work request (one posted by `QueuePair::post_raw_*`, whose
/// completion bypasses the dispatcher): bit 31, the top bit of the slot index. A dispatcher
/// never has 2^31 slots (`create` caps a CQ at `i32::MAX` entries), so such an id can name no
/// slot. [`UNSIGNALED_WR_ID`] has it set too and is checked first.
pub(crate) const RAW_WR_BIT: u64 = 1 << 31;

/// Resources parked in a dispatcher slot while the NIC may still touch them.
pub(crate) enum Parked {
    /// Nothing (inline sends, or already handed back).
    None,
    /// An abandoned operation's buffers and pins (boxed only on the cold drop path).
    Boxed(#[allow(dead_code)] Box<dyn Send>),
    /// What an abandoned operation without a buffer keeps alive (its queue pair).
    Pinned(#[allow(dead_code)] Arc<dyn Send + Sync>),
    /// A receive-pool chunk (the pool, type-erased so the CQ does not name the receive
    /// module, and the chunk's index), routed to its stream's inbox.
    Recv(Arc<dyn Any + Send + Sync>, u32),
}

/// Whether a future is counted among those waiting for the driver
/// ([`CqInner::begin_wait`]), and from where it is polled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Waiting {
    /// Not counted.
    #[default]
    No,
    /// Counted; polled by a task.
    InTask,
    /// Counted; polled outside any task (a `block_on` future), so counted for the channel too.
    OutsideTask,
}

/// The driver's registry of a channel's CQs: each CQ is announced with a weak reference.
pub(super) type CqRegistry = Registry<Weak<CqInner>>;

/// A completion channel's fd as a future waiting on it sees it (implemented by the channel).
pub(super) trait ChannelReadiness: Send + Sync {
    /// Whether the fd is readable now; if not, `cx`'s waker is woken when it becomes so
    /// (tokio's single reader waker of the fd's `AsyncFd`: the last caller's is kept). Also
    /// `true` when the fd cannot be waited on.
    fn poll_readable(&self, cx: &mut std::task::Context<'_>) -> bool;
}

/// What a CQ takes from the channel it is created on.
pub(super) struct ChannelParts {
    pub(super) ctx: Arc<ContextInner>,
    pub(super) channel: *mut ffi::ibv_comp_channel,
    pub(super) reaper: Arc<Reaper>,
    pub(super) registry: Arc<CqRegistry>,
    pub(super) config: DriverConfig,
    /// The channel's fd, for futures that wait on it in event mode.
    pub(super) readiness: Arc<dyn ChannelReadiness>,
    /// Keeps the channel (and its driver task) alive as long as the CQ.
    pub(super) keep: Arc<dyn Any + Send + Sync>,
}

pub(crate) struct CqInner {
    cq: NonNull<ffi::ibv_cq>,
    pub(crate) dispatcher: Dispatcher<Parked>,
    /// Held by whoever polls the CQ right now (driver or an inline-polling future): one
    /// poller at a time, and a poller never waits for another.
    pub(super) draining: AtomicBool,
    /// Where polls write their batch; used only by the holder of `draining`.
    pub(super) wc: WcBuffer,
    /// Events read for this CQ and not yet acked (the driver's policy decides when to ack;
    /// `Drop` acks the rest before destroying).
    unacked: AtomicU32,
    /// This CQ's key in its channel driver's policy.
    pub(super) key: usize,
    registry: Arc<CqRegistry>,
    pub(super) events: AtomicU64,
    pub(super) polls: AtomicU64,
    pub(super) unsignaled_errors: AtomicU64,
    /// Raw completions polled by a poller other than a `RawPoller` (lost: counted only).
    pub(super) raw_unclaimed: AtomicU64,
    /// Whether a `RawPoller` owns the CQ (it then holds `draining` for its whole life).
    pub(super) raw_owned: AtomicBool,
    /// CQ entries beyond the dispatcher's slots claimed by QPs sending unsignaled (each
    /// claims its send-queue depth: what its flushes can take at once).
    headroom_claimed: AtomicUsize,
    pub(super) config: DriverConfig,
    /// The inline-polling budget futures get now: adapts between 1 and
    /// `config.inline_polls` (see [`CqInner::inline_outcome`]).
    inline_now: AtomicU32,
    /// Event mode: a future waiting here that could not wait on the channel fd itself (it was
    /// still readable, the driver not yet done with the events); the driver wakes it when it
    /// parks, so it registers then (see [`CqInner::wait_on_channel`]).
    pub(super) channel_waiter: AtomicWaker,
    /// Spin turns futures have taken on this CQ (see [`CqInner::note_spin`]).
    pub(super) spins: AtomicU32,
    /// A future found its completion by polling this CQ itself since the driver last looked
    /// (see [`CqInner::take_found_inline`]).
    found_inline: AtomicBool,
    /// Futures waiting for the driver on this CQ (see [`CqInner::begin_wait`]): the driver
    /// never stands aside while there are any.
    pub(super) waiting: AtomicU32,
    /// The channel's fd (for [`CqInner::wait_on_channel`]; in event mode only).
    readiness: Option<Arc<dyn ChannelReadiness>>,
    /// Completions the driver's polls found (`CqStats::driver_completions`).
    pub(super) driver_completions: AtomicU64,
    /// The driver's polls (`CqStats::driver_polls`); only the driver task writes it.
    pub(super) driver_polls: AtomicU64,
    /// The weak reference stored in the CQ's `cq_context`, released after `ibv_destroy_cq`.
    context_ref: *const CqInner,
    /// The channel driver's pending teardowns.
    pub(crate) reaper: Arc<Reaper>,
    /// Keeps the channel (and its driver task) alive as long as the CQ.
    _channel: Arc<dyn Any + Send + Sync>,
    _ctx: Arc<ContextInner>,
}

ibverbs_thread_safe!(CqInner);

impl CqInner {
    /// Creates the CQ on the channel (`ibv_create_cq` with the channel's own context), stores
    /// a weak reference to itself in `cq_context` (so the driver finds it from an event
    /// without a lookup) and arms it once.
    pub(super) fn create(chan: ChannelParts, cqe: u32) -> Result<Arc<Self>> {
        let ChannelParts {
            ctx,
            channel,
            reaper,
            registry,
            config,
            readiness,
            keep: keep_channel,
        } = chan;
        if cqe == 0 || cqe > i32::MAX as u32 {
            return Err(Error::InvalidArgument(format!("cqe {cqe}")));
        }
        // SAFETY: the channel is live (the CQ keeps it alive through `keep_channel`), and its
        // `context` is the context it was created on, kept open by `ctx`.
        let cq = unsafe {
            ffi::ibv_create_cq(
                (*channel).context,
                cqe as i32,
                std::ptr::null_mut(),
                channel,
                0,
            )
        };
        let cq = NonNull::new(cq)
            .ok_or_else(|| Error::last_os("ibv_create_cq", format!("{cqe} entries")))?;
        let inner = Arc::new_cyclic(|weak: &Weak<CqInner>| CqInner {
            cq,
            dispatcher: Dispatcher::new(cqe as usize),
            draining: AtomicBool::new(false),
            unacked: AtomicU32::new(0),
            key: registry.add(weak.clone()),
            registry,
            events: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            unsignaled_errors: AtomicU64::new(0),
            raw_unclaimed: AtomicU64::new(0),
            raw_owned: AtomicBool::new(false),
            wc: WcBuffer::new(),
            headroom_claimed: AtomicUsize::new(0),
            inline_now: AtomicU32::new(config.inline_polls.max(1)),
            channel_waiter: AtomicWaker::new(),
            spins: AtomicU32::new(0),
            found_inline: AtomicBool::new(false),
            waiting: AtomicU32::new(0),
            readiness: (config.spin_iterations == 0).then_some(readiness),
            driver_completions: AtomicU64::new(0),
            driver_polls: AtomicU64::new(0),
            config,
            context_ref: weak.clone().into_raw(),
            reaper,
            _channel: keep_channel,
            _ctx: ctx,
        });
        // SAFETY: the CQ is live and not armed yet, so no event can read `cq_context` while we
        // write it; it now owns the weak count taken above until `Drop` releases it.
        unsafe { (*cq.as_ptr()).cq_context = inner.context_ref.cast_mut().cast() };
        // Arm once so the first completion produces an event.
        inner.arm()?;
        Ok(inner)
    }

    /// The CQ an event names, from its `cq_context`; `None` when the CQ is being dropped.
    ///
    /// # Safety
    /// `cq_context` must come from `ibv_get_cq_event` on a CQ this module created, and that
    /// event must not be acked yet: `ibv_destroy_cq` blocks until every event read for the CQ
    /// is acked, and the weak reference in `cq_context` is released only after it returned,
    /// so the weak reference is live for the whole call.
    pub(super) unsafe fn from_event_context(cq_context: *mut libc::c_void) -> Option<Arc<Self>> {
        // SAFETY: see above: the pointer is a live `Weak::into_raw` of a `CqInner`, which we
        // only borrow (ManuallyDrop: the CQ keeps its weak count).
        let weak = std::mem::ManuallyDrop::new(unsafe {
            Weak::from_raw(cq_context.cast_const().cast::<CqInner>())
        });
        weak.upgrade()
    }

    pub(crate) fn as_ptr(&self) -> *mut ffi::ibv_cq {
        self.cq.as_ptr()
    }

    /// Polls the CQ inline, up to the channel's `inline_polls` budget (`budget` counts what
    /// is left of it across calls within one `poll`), until a poll dispatches something.
    /// Whether one did: the caller re-checks its own result then, and calls again with the
    /// rest of the budget if it is still not there.
    pub(crate) fn poll_inline(&self, budget: &mut u32) -> bool {
        while *budget > 0 {
            *budget -= 1;
            if let Ok(Some(n)) = self.poll_once() {
                if n > 0 {
                    return true;
                }
            }
            if *budget > 0 {
                std::hint::spin_loop();
            }
        }
        false
    }

    /// A fresh inline-polling budget: none while the driver has several CQs active, otherwise
    /// at least 1 and at most `DriverConfig::inline_polls`, as adapted by
    /// [`Self::inline_outcome`]. A future whose completion is found by its own polls goes on
    /// in the same task poll: with other CQs busy, its task would take round trip after round
    /// trip (up to tokio's cooperative budget) while their completions wait, and one poll is
    /// enough for that when the peer's reply is back before the task's send returns. The
    /// driver's rounds serve every CQ in turn.
    pub(crate) fn inline_budget(&self) -> u32 {
        if self.registry.active() > 1 {
            0
        } else {
            self.inline_now.load(Ordering::Relaxed)
        }
    }

    /// Whether a future whose result is not there after its inline polls keeps spinning on
    /// this CQ itself (waking its own task, so the runtime runs every other ready task before
    /// it polls again) instead of waiting for the driver: while `spun`, the polls this wait
    /// has made, is within the driver's spin budget (`DriverConfig::spin_iterations`; so
    /// never in event mode) and the driver has at most one CQ active (this one: with more,
    /// the driver's rounds serve every waiter better than each task polling its own). The
    /// completion is then found by the task that awaits it, without the wake-up hop through
    /// the driver task. The turn's polls are the full `inline_polls`, not the adapted
    /// budget. Only in a spawned task: a current-thread runtime polls its `block_on` future
    /// (a `#[tokio::main]` body) only when its run queue is empty, with a non-blocking
    /// `epoll_wait` first, or every `event_interval` ticks while the driver spins; there the
    /// future waits for the driver, which lets it run right after the round that woke it.
    pub(crate) fn spin_turn(&self, spun: u32) -> Option<u32> {
        (spun < self.config.spin_iterations
            && self.registry.active() <= 1
            && tokio::task::try_id().is_some())
        .then(|| self.config.inline_polls.max(1))
    }

    /// A future is about to return `Pending` for another spin turn on this CQ: while futures
    /// keep doing so, a driver on a multi-thread runtime may stand aside (`cq::aside`).
    pub(crate) fn note_spin(&self) {
        self.spins.fetch_add(1, Ordering::Relaxed);
    }

    /// A future returns `Pending` to wait for the driver (not for a spin turn). The first time
    /// (`waiting` is the future's state), it is counted until [`Self::end_wait`], and the
    /// driver is woken if it stands aside. A future polled outside any task (the `block_on`
    /// future of a current-thread runtime) is counted for the channel too: while one waits,
    /// the driver's yield after a round that woke futures lets that future run right after
    /// the round (`cq::driver`). Where it is polled is looked at on every `Pending` (a
    /// thread-local read), so a future moved between a task and `block_on` is counted where
    /// it is now. Not counted in event mode, where the driver never stands aside and always
    /// yields so.
    pub(crate) fn begin_wait(&self, waiting: &mut Waiting) {
        if self.config.spin_iterations == 0 {
            return;
        }
        let now = if tokio::task::try_id().is_some() {
            Waiting::InTask
        } else {
            Waiting::OutsideTask
        };
        match std::mem::replace(waiting, now) {
            Waiting::No => {
                if now == Waiting::OutsideTask {
                    self.registry.note_outside_task(true);
                }
                self.waiting.fetch_add(1, Ordering::SeqCst);
                self.registry.nudge_driver();
            }
            before if before == now => {}
            Waiting::InTask => self.registry.note_outside_task(true),
            Waiting::OutsideTask => self.registry.note_outside_task(false),
        }
    }

    /// The future with state `waiting` completed or was dropped: no longer counted.
    pub(crate) fn end_wait(&self, waiting: &mut Waiting) {
        match std::mem::take(waiting) {
            Waiting::No => return,
            Waiting::InTask => {}
            Waiting::OutsideTask => self.registry.note_outside_task(false),
        }
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }

    /// Event mode (`spin_iterations: 0`; a no-op otherwise): a future about to return
    /// `Pending` also waits on the channel fd itself, so the reactor wakes its task directly
    /// when an event arrives, and its inline poll finds the completion without the hop
    /// through the driver task (whose turn and wake-up of the task cost about 14 us in the
    /// VM, against 2.6 us for raw verbs' whole wake-up path). Its slot's waker stays
    /// registered as always: this only gets there first. The fd is polled for readiness
    /// (tokio's single reader waker of an `AsyncFd`, which the driver does not wait on:
    /// it waits with `readable()`); while it is still readable (the driver has not read the
    /// events yet), the future asks the driver to wake it when it parks, and registers then.
    /// With several futures, the last one's waker is kept; the others wait for the driver.
    /// Only on a channel with one CQ (a connection's own channel): with more, a future
    /// waiting on an idle CQ would be woken by every event of the others.
    pub(crate) fn wait_on_channel(&self, cx: &mut std::task::Context<'_>) {
        let Some(readiness) = self.readiness.as_ref() else {
            return;
        };
        if !self.registry.is_lone() || !readiness.poll_readable(cx) {
            return;
        }
        self.channel_waiter.register(cx.waker());
        // The driver may have read the events and parked (waking nobody) between the check
        // and the registration: check again; registered with the fd now, take ours back.
        if !readiness.poll_readable(cx) {
            drop(self.channel_waiter.take());
        }
    }

    /// What a future's inline polls came to: `Some(true)` when they found its completion
    /// (the budget doubles back, up to `inline_polls`, and the driver is told the CQ is busy:
    /// [`Self::take_found_inline`]), `Some(false)` when it spent the whole
    /// budget and is about to wait (the budget halves, down to 1 poll), `None` when no inline
    /// poll decided it. So futures whose completions come later than the polls last (many
    /// flows on one thread, long round trips) stop burning polls the driver's spin makes
    /// anyway, and a CQ whose completions arrive within the polls keeps its full budget.
    /// Relaxed and racy on purpose: it is a hint.
    pub(crate) fn inline_outcome(&self, found: Option<bool>) {
        if found == Some(true)
            && self.config.spin_iterations > 0
            && !self.found_inline.load(Ordering::Relaxed)
        {
            self.found_inline.store(true, Ordering::Relaxed);
        }
        let now = self.inline_now.load(Ordering::Relaxed);
        let next = match found {
            Some(true) => now.saturating_mul(2).min(self.config.inline_polls.max(1)),
            Some(false) => (now / 2).max(1),
            None => return,
        };
        if next != now {
            self.inline_now.store(next, Ordering::Relaxed);
        }
    }

    /// Whether a future found its completion by polling this CQ itself since the last call
    /// (never in event mode). The driver counts that as activity: futures that take every
    /// completion themselves leave its polls empty, and it used to conclude the CQ idle, park
    /// it, and with every CQ parked let each future spin on its own CQ (`spin_turn`), one task
    /// holding the thread for round trip after round trip while the other CQs' completions
    /// waited.
    pub(super) fn take_found_inline(&self) -> bool {
        self.found_inline.load(Ordering::Relaxed)
            && self.found_inline.swap(false, Ordering::Relaxed)
    }

    /// Requests a notification for the next completion.
    pub(crate) fn arm(&self) -> Result<()> {
        // SAFETY: the CQ is live and has a completion channel.
        let rc = unsafe { ffi::ibv_req_notify_cq(self.as_ptr(), 0) };
        if rc != 0 {
            return Err(Error::from_ret("ibv_req_notify_cq", rc, "arming a CQ"));
        }
        Ok(())
    }

    /// CQ entries the device granted beyond the dispatcher's slots.
    pub(crate) fn headroom(&self) -> usize {
        // SAFETY: the CQ is live; `cqe` is a plain field that only ibv_create_cq and
        // ibv_resize_cq write, and this crate never resizes a CQ.
        let granted = unsafe { (*self.as_ptr()).cqe };
        usize::try_from(granted)
            .unwrap_or(0)
            .saturating_sub(self.dispatcher.capacity())
    }

    /// Claims `n` entries of headroom; `false` (nothing claimed) if they are not free.
    pub(crate) fn claim_headroom(&self, n: usize) -> bool {
        let room = self.headroom();
        self.headroom_claimed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c + n <= room).then_some(c + n)
            })
            .is_ok()
    }

    /// Gives back what [`claim_headroom`](Self::claim_headroom) took.
    pub(crate) fn release_headroom(&self, n: usize) {
        self.headroom_claimed.fetch_sub(n, Ordering::AcqRel);
    }

    /// Tries to take the draining flag for good (a `RawPoller`); whether it was free.
    pub(super) fn take_for_raw(&self) -> bool {
        let ok = self
            .draining
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok();
        if ok {
            self.raw_owned.store(true, Ordering::Release);
        }
        ok
    }

    /// Gives back what [`take_for_raw`](Self::take_for_raw) took.
    pub(super) fn release_raw(&self) {
        self.raw_owned.store(false, Ordering::Release);
        self.draining.store(false, Ordering::Release);
    }

    /// Counts one event read for this CQ (not acked yet).
    pub(super) fn note_event(&self) {
        self.events.fetch_add(1, Ordering::Relaxed);
        self.unacked.fetch_add(1, Ordering::Relaxed);
    }

    /// Acks `n` of the events read for this CQ (when the driver's policy says so).
    pub(super) fn ack(&self, n: u32) {
        // Only the driver counts and acks (holding a strong reference); `Drop` runs after.
        let n = n.min(self.unacked.load(Ordering::Relaxed));
        self.unacked.fetch_sub(n, Ordering::Relaxed);
        if n > 0 {
            // SAFETY: at least `n` events of this live CQ were read and not yet acked (the
            // counter only counts read events, and only its driver acks them).
            unsafe { ffi::ibv_ack_cq_events(self.as_ptr(), n) }
        }
    }
}

impl Drop for CqInner {
    fn drop(&mut self) {
        // No strong reference is left, so no driver round counts events for this CQ any more
        // (an event read from now on finds `from_event_context` None and is acked on the spot).
        let take = self.unacked.swap(0, Ordering::AcqRel);
        if take > 0 {
            // SAFETY: acking the events counted for this live CQ (ack-before-destroy).
            unsafe { ffi::ibv_ack_cq_events(self.as_ptr(), take) }
        }
        self.registry.remove(self.key);
        // Every QP and SRQ of this CQ is destroyed (they hold Arcs), so the NIC no longer
        // touches any parked buffer: release them and wake whatever still waits.
        self.dispatcher.fail_all(WcStatus::WrFlushErr);
        // SAFETY: no QP/SRQ uses the CQ any more and all its events are acked (destroy blocks
        // until an event the driver holds right now is acked).
        let rc = unsafe { ffi::ibv_destroy_cq(self.as_ptr()) };
        if rc != 0 {
            // The CQ lives on: leave its weak reference to it (a small leak, never a dangling
            // `cq_context`).
            tracing::warn!(rc, "ibv_destroy_cq failed");
            return;
        }
        // SAFETY: `context_ref` came from `Weak::into_raw` in `create` and is released exactly
        // once, here, after no event can name the CQ any more.
        drop(unsafe { Weak::from_raw(self.context_ref) });
    }
}
