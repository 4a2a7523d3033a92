//! Completion channels, completion queues and the completion driver.
//!
//! See the crate docs for the driver's design (poll-arm-poll, adaptive spin, inline polling).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use rdma_sys as ffi;
use tokio::io::unix::AsyncFd;
use tokio::task::AbortHandle;
use tokio_rdma_core::{Completion, DispatchStats, Dispatcher, WcFlags, WcOpcode, WcStatus};

use crate::device::{Context, ContextInner};
use crate::error::{Error, Result};

/// The `wr_id` of unsignaled sends ([`QueuePair::send_inline_unsignaled`]). Its slot index
/// (`u32::MAX`) is beyond any dispatcher's capacity, so it can never name a slot; a completion
/// carrying it (only an error or flush completes an unsignaled request) is counted in
/// [`CqStats::unsignaled_errors`] instead of being dispatched.
///
/// [`QueuePair::send_inline_unsignaled`]: crate::QueuePair::send_inline_unsignaled
pub(crate) const UNSIGNALED_WR_ID: u64 = u64::MAX;

/// Resources parked in a dispatcher slot while the NIC may still touch them.
pub(crate) enum Parked {
    /// Nothing (inline sends, or already handed back).
    None,
    /// An abandoned operation's buffers (boxed only on the cold drop path).
    Boxed(#[allow(dead_code)] Box<dyn Send>),
    /// A receive-pool chunk, routed to its stream's inbox.
    Recv(Arc<crate::recv::RecvPool>, u32),
}

/// Tuning of a completion channel's driver.
#[derive(Clone, Copy, Debug)]
pub struct DriverConfig {
    /// How many consecutive empty polls the driver does after the last completion before it
    /// arms the CQ and parks on the channel fd (it yields to the runtime every 32 polls). `0`
    /// parks at once (lowest CPU, highest latency). Bounded by count, never by clock.
    pub spin_iterations: u32,
    /// How many work completions one `ibv_poll_cq` call fetches (1..=64).
    pub poll_batch: usize,
    /// Acknowledge CQ events in batches of this many (`ibv_ack_cq_events` takes a mutex).
    pub ack_batch: u32,
    /// How many times a future or receive stream whose result is not there yet polls the CQ
    /// itself before it returns `Pending` (at least once). The default, 32, is the driver's
    /// own number of polls between two yields: a completion that lands within that many polls
    /// reaches the awaiting task without the wake-up hop through the driver task, and a task
    /// holds its thread no longer than the driver does. 1 leaves all waiting to the driver. A
    /// latency-critical task that owns its thread (a ping-pong, a storage target's I/O loop)
    /// can set thousands: it then busy-polls inline like a raw verbs loop, for at most that
    /// many polls per `poll` before it yields to the runtime. Bounded by count, never by
    /// clock.
    pub inline_polls: u32,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            spin_iterations: 16384,
            poll_batch: 32,
            ack_batch: 64,
            inline_polls: TIGHT_POLLS,
        }
    }
}

/// Max `poll_batch`.
const MAX_BATCH: usize = 64;

/// A borrowed raw fd: dropping it does not close the fd.
pub(crate) struct Fd(RawFd);
impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

pub(crate) fn set_nonblocking(fd: RawFd, what: &str) -> Result<()> {
    // SAFETY: fcntl on an fd we own (it belongs to a live ibverbs object); no memory involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(Error::Io {
            context: format!("setting O_NONBLOCK on the {what} fd"),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Wraps a borrowed fd (owned by an ibverbs object, closed by it) for tokio.
///
/// # Safety
/// `fd` must be open and stay open (same file description) until the returned `AsyncFd` is
/// dropped: its owner must drop the `AsyncFd` before destroying the ibverbs object.
pub(crate) unsafe fn async_fd(fd: RawFd, what: &str) -> Result<AsyncFd<Fd>> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::Io {
            context: format!("registering the {what} fd needs a tokio runtime"),
            source: io::Error::other("no tokio runtime"),
        });
    }
    // SAFETY: the caller keeps `fd` open for the AsyncFd's lifetime; `Fd` always returns it.
    unsafe { AsyncFd::register_with_interest(Fd(fd), tokio::io::Interest::READABLE) }.map_err(|e| {
        Error::Io {
            context: format!("registering the {what} fd with tokio"),
            source: e.into_parts().1,
        }
    })
}

pub(crate) struct ChannelInner {
    ch: NonNull<ffi::ibv_comp_channel>,
    fd: Option<AsyncFd<Fd>>,
    /// CQs served by this channel, by `ibv_cq` address. Weak: the CQ's owners decide its life.
    registry: Mutex<HashMap<usize, Weak<CqInner>>>,
    config: DriverConfig,
    _ctx: Arc<ContextInner>,
}

ibverbs_thread_safe!(ChannelInner);

impl Drop for ChannelInner {
    fn drop(&mut self) {
        // Deregister from the reactor before the fd is closed.
        drop(self.fd.take());
        // SAFETY: every CQ using the channel holds an Arc to it, so none is left.
        let rc = unsafe { ffi::ibv_destroy_comp_channel(self.ch.as_ptr()) };
        if rc != 0 {
            tracing::warn!(rc, "ibv_destroy_comp_channel failed");
        }
    }
}

struct ChannelOwner {
    inner: Arc<ChannelInner>,
    driver: AbortHandle,
}

impl Drop for ChannelOwner {
    fn drop(&mut self) {
        // The last user handle and the last CQ are gone: stop the driver; it drops its Arc and
        // with it the channel.
        self.driver.abort();
    }
}

/// A completion channel: one fd (wrapped in tokio's `AsyncFd`) that reports completion events
/// of any number of CQs, plus the driver task that turns them into woken futures. Cheap to
/// clone.
#[derive(Clone)]
pub struct CompletionChannel {
    owner: Arc<ChannelOwner>,
}

impl fmt::Debug for CompletionChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionChannel")
            .field("config", &self.owner.inner.config)
            .finish_non_exhaustive()
    }
}

impl CompletionChannel {
    pub(crate) fn new(ctx: &Context) -> Result<Self> {
        Self::with_config(ctx, DriverConfig::default())
    }

    /// Creates a channel with an explicit driver configuration. Must be called inside a tokio
    /// runtime (the driver task is spawned on it).
    pub fn with_config(ctx: &Context, config: DriverConfig) -> Result<Self> {
        let rt = tokio::runtime::Handle::try_current().map_err(|e| Error::Io {
            context: "creating a completion channel needs a tokio runtime".into(),
            source: io::Error::other(e),
        })?;
        if config.poll_batch == 0 || config.poll_batch > MAX_BATCH {
            return Err(Error::InvalidArgument(format!(
                "poll_batch {} not in 1..={MAX_BATCH}",
                config.poll_batch
            )));
        }
        // SAFETY: the context is open and outlives the channel (Arc held).
        let ch = unsafe { ffi::ibv_create_comp_channel(ctx.as_ptr()) };
        let ch = NonNull::new(ch)
            .ok_or_else(|| Error::last_os("ibv_create_comp_channel", ctx.name()))?;
        // SAFETY: `ch` is a valid channel; `fd` is a plain field.
        let raw = unsafe { (*ch.as_ptr()).fd };
        let mut inner = ChannelInner {
            ch,
            fd: None,
            registry: Mutex::new(HashMap::new()),
            config: DriverConfig {
                ack_batch: config.ack_batch.max(1),
                ..config
            },
            _ctx: ctx.inner.clone(),
        };
        set_nonblocking(raw, "completion channel")?;
        // SAFETY: the fd belongs to the channel, which `ChannelInner::drop` destroys only after
        // dropping this AsyncFd.
        inner.fd = Some(unsafe { async_fd(raw, "completion channel")? });
        let inner = Arc::new(inner);
        let driver = rt.spawn(drive(inner.clone())).abort_handle();
        Ok(Self {
            owner: Arc::new(ChannelOwner { inner, driver }),
        })
    }

    /// Creates a CQ with at least `cqe` entries on this channel. Its dispatcher has `cqe`
    /// slots, so at most `cqe` operations of all QPs using this CQ can be in flight.
    pub fn create_cq(&self, ctx: &Context, cqe: u32) -> Result<CompletionQueue> {
        CompletionQueue::new(ctx, self, cqe)
    }
}

pub(crate) struct CqInner {
    cq: NonNull<ffi::ibv_cq>,
    pub(crate) dispatcher: Dispatcher<Parked>,
    draining: AtomicBool,
    unacked: AtomicU32,
    events: AtomicU64,
    polls: AtomicU64,
    unsignaled_errors: AtomicU64,
    channel: Arc<ChannelOwner>,
    _ctx: Arc<ContextInner>,
}

ibverbs_thread_safe!(CqInner);

impl CqInner {
    pub(crate) fn as_ptr(&self) -> *mut ffi::ibv_cq {
        self.cq.as_ptr()
    }

    /// The channel's poll batch size.
    pub(crate) fn batch(&self) -> usize {
        self.channel.inner.config.poll_batch
    }

    /// Polls the CQ inline, up to the channel's `inline_polls` budget (`budget` counts what
    /// is left of it across calls within one `poll`), until a poll dispatches something.
    /// Whether one did: the caller re-checks its own result then, and calls again with the
    /// rest of the budget if it is still not there.
    pub(crate) fn poll_inline(&self, budget: &mut u32) -> bool {
        let batch = self.batch();
        while *budget > 0 {
            *budget -= 1;
            if let Ok(Some(n)) = self.poll_once(batch) {
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

    /// A fresh inline-polling budget (`DriverConfig::inline_polls`, at least 1).
    pub(crate) fn inline_budget(&self) -> u32 {
        self.channel.inner.config.inline_polls.max(1)
    }

    /// Polls up to one batch and feeds the dispatcher. `None` when another thread is
    /// draining right now (the caller must not conclude the CQ is empty).
    pub(crate) fn poll_once(&self, batch: usize) -> Result<Option<usize>> {
        if self
            .draining
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Ok(None);
        }
        let r = self.poll_locked(batch.min(MAX_BATCH));
        self.draining.store(false, Ordering::Release);
        r.map(Some)
    }

    fn poll_locked(&self, batch: usize) -> Result<usize> {
        let mut wc: [std::mem::MaybeUninit<ffi::ibv_wc>; MAX_BATCH] =
            [const { std::mem::MaybeUninit::uninit() }; MAX_BATCH];
        // SAFETY: the CQ is live; `wc` has room for `batch` <= MAX_BATCH entries; we hold the
        // draining flag so no other thread polls concurrently.
        let n = unsafe { ffi::ibv_poll_cq(self.as_ptr(), batch as i32, wc.as_mut_ptr().cast()) };
        if n < 0 {
            return Err(Error::from_ret("ibv_poll_cq", n, "polling a CQ"));
        }
        let n = n as usize;
        // Only the holder of the draining flag counts, so a load and a store suffice (no
        // read-modify-write on every spin poll).
        self.polls
            .store(self.polls.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        if n == 0 {
            return Ok(0);
        }
        // Converted in place of a zero-initialised array: only the `n` entries polled are
        // written (zeroing all 64 would cost more than the dispatch on a small batch).
        let mut out: [std::mem::MaybeUninit<Completion>; MAX_BATCH] =
            [const { std::mem::MaybeUninit::uninit() }; MAX_BATCH];
        let mut m = 0;
        for w in &wc[..n] {
            // SAFETY: ibv_poll_cq initialised the first `n` entries.
            let w = unsafe { w.assume_init_ref() };
            if w.wr_id == UNSIGNALED_WR_ID {
                self.unsignaled_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(status = w.status, qp = w.qp_num, "unsignaled send failed");
                continue;
            }
            out[m].write(convert_wc(w));
            m += 1;
        }
        // SAFETY: the loop above initialised `out[..m]` (m <= n <= MAX_BATCH), and
        // `MaybeUninit<Completion>` has the layout of `Completion`.
        let out = unsafe { std::slice::from_raw_parts(out.as_ptr().cast::<Completion>(), m) };
        self.dispatcher.handle_completions(out);
        Ok(n)
    }

    /// Requests a notification for the next completion.
    fn arm(&self) -> Result<()> {
        // SAFETY: the CQ is live and has a completion channel.
        let rc = unsafe { ffi::ibv_req_notify_cq(self.as_ptr(), 0) };
        if rc != 0 {
            return Err(Error::from_ret("ibv_req_notify_cq", rc, "arming a CQ"));
        }
        Ok(())
    }

    fn count_event(&self, ack_batch: u32) {
        self.events.fetch_add(1, Ordering::Relaxed);
        let n = self.unacked.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= ack_batch {
            let take = self.unacked.swap(0, Ordering::AcqRel);
            if take > 0 {
                // SAFETY: `take` events of this live CQ were received and not yet acked.
                unsafe { ffi::ibv_ack_cq_events(self.as_ptr(), take) }
            }
        }
    }
}

impl Drop for CqInner {
    fn drop(&mut self) {
        let inner = &self.channel.inner;
        // After this no driver round can find (and count events for) this CQ: events it pulls
        // for it are acked on the spot.
        inner
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(self.cq.as_ptr() as usize));
        let take = self.unacked.swap(0, Ordering::AcqRel);
        if take > 0 {
            // SAFETY: acking the events counted for this live CQ (ack-before-destroy).
            unsafe { ffi::ibv_ack_cq_events(self.as_ptr(), take) }
        }
        // Every QP of this CQ is destroyed (they hold Arcs), so the NIC no longer touches any
        // parked buffer: release them and wake whatever still waits.
        self.dispatcher.fail_all(WcStatus::WrFlushErr);
        // SAFETY: no QP/SRQ uses the CQ any more and all its events are acked.
        let rc = unsafe { ffi::ibv_destroy_cq(self.as_ptr()) };
        if rc != 0 {
            tracing::warn!(rc, "ibv_destroy_cq failed");
        }
    }
}

/// Converts one raw work completion.
pub(crate) fn convert_wc(w: &ffi::ibv_wc) -> Completion {
    let flags = WcFlags::from_bits_retain(w.wc_flags);
    // SAFETY: both union members are plain u32s.
    let raw_imm = unsafe { w.imm_data_invalidated_rkey_union.imm_data };
    Completion {
        wr_id: w.wr_id,
        status: WcStatus::from_raw(w.status),
        opcode: WcOpcode::from_raw(w.opcode),
        vendor_err: w.vendor_err,
        byte_len: w.byte_len,
        imm_data: flags
            .contains(WcFlags::WITH_IMM)
            .then(|| u32::from_be(raw_imm)),
        invalidated_rkey: flags.contains(WcFlags::WITH_INV).then_some(raw_imm),
        qp_num: w.qp_num,
        src_qp: w.src_qp,
        wc_flags: flags,
        pkey_index: w.pkey_index,
        slid: w.slid,
        sl: w.sl,
        dlid_path_bits: w.dlid_path_bits,
    }
}

/// A completion queue bound to a [`CompletionChannel`], with its own dispatcher. Cheap to
/// clone.
#[derive(Clone)]
pub struct CompletionQueue {
    pub(crate) inner: Arc<CqInner>,
}

impl fmt::Debug for CompletionQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionQueue")
            .field("capacity", &self.capacity())
            .field("in_flight", &self.inner.dispatcher.in_flight())
            .finish()
    }
}

/// Counters of one CQ.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct CqStats {
    /// Completion events received from the channel fd.
    pub events: u64,
    /// `ibv_poll_cq` calls.
    pub polls: u64,
    /// Error (or flush) completions of unsignaled sends
    /// ([`QueuePair::send_inline_unsignaled`](crate::QueuePair::send_inline_unsignaled)):
    /// not dispatched, only counted.
    pub unsignaled_errors: u64,
    /// The dispatcher's counters.
    pub dispatch: DispatchStats,
}

impl CompletionQueue {
    fn new(ctx: &Context, channel: &CompletionChannel, cqe: u32) -> Result<Self> {
        if cqe == 0 || cqe > i32::MAX as u32 {
            return Err(Error::InvalidArgument(format!("cqe {cqe}")));
        }
        let chan = &channel.owner.inner;
        // SAFETY: context and channel are live (Arcs held by the CQ); cq_context is unused.
        let cq = unsafe {
            ffi::ibv_create_cq(
                ctx.as_ptr(),
                cqe as i32,
                std::ptr::null_mut(),
                chan.ch.as_ptr(),
                0,
            )
        };
        let cq = NonNull::new(cq)
            .ok_or_else(|| Error::last_os("ibv_create_cq", format!("{cqe} entries")))?;
        let inner = Arc::new(CqInner {
            cq,
            dispatcher: Dispatcher::new(cqe as usize),
            draining: AtomicBool::new(false),
            unacked: AtomicU32::new(0),
            events: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            unsignaled_errors: AtomicU64::new(0),
            channel: channel.owner.clone(),
            _ctx: ctx.inner.clone(),
        });
        chan.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cq.as_ptr() as usize, Arc::downgrade(&inner));
        // Arm once so the first completion produces an event.
        inner.arm()?;
        Ok(Self { inner })
    }

    /// Slot capacity (= requested CQ entries).
    pub fn capacity(&self) -> usize {
        self.inner.dispatcher.capacity()
    }

    /// Operations in flight on this CQ.
    pub fn in_flight(&self) -> usize {
        self.inner.dispatcher.in_flight()
    }

    /// Counters.
    pub fn stats(&self) -> CqStats {
        CqStats {
            events: self.inner.events.load(Ordering::Relaxed),
            polls: self.inner.polls.load(Ordering::Relaxed),
            unsignaled_errors: self.inner.unsignaled_errors.load(Ordering::Relaxed),
            dispatch: self.inner.dispatcher.stats(),
        }
    }

    /// Polls the CQ once from the calling thread (non-blocking; no-op when another thread is
    /// draining it). Returns how many completions were dispatched.
    pub fn poll_now(&self) -> Result<usize> {
        let batch = self.inner.channel.inner.config.poll_batch;
        Ok(self.inner.poll_once(batch)?.unwrap_or(0))
    }

    /// The kernel handle of this CQ (matches [`crate::AsyncEventElement::Cq`]).
    pub fn handle(&self) -> u32 {
        // SAFETY: the CQ is live; `handle` is a plain field.
        unsafe { (*self.inner.as_ptr()).handle }
    }
}

impl ChannelInner {
    /// Pulls every pending CQ event (until EAGAIN), counting it on its CQ and adding the CQ to
    /// `active`. Always ends in `Err`: `WouldBlock` when drained, else a real error.
    fn drain_events(&self, active: &mut Vec<Arc<CqInner>>) -> io::Result<()> {
        // Strong references taken under the lock are released only after it (dropping the last
        // one runs CqInner::drop, which takes the lock).
        let mut extra: Vec<Arc<CqInner>> = Vec::new();
        let result = self.drain_events_locked(active, &mut extra);
        drop(extra);
        result
    }

    fn drain_events_locked(
        &self,
        active: &mut Vec<Arc<CqInner>>,
        extra: &mut Vec<Arc<CqInner>>,
    ) -> io::Result<()> {
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let mut cq: *mut ffi::ibv_cq = std::ptr::null_mut();
            let mut ctx: *mut libc::c_void = std::ptr::null_mut();
            // SAFETY: the channel is live and its fd is non-blocking; out-pointers are valid.
            let rc = unsafe { ffi::ibv_get_cq_event(self.ch.as_ptr(), &mut cq, &mut ctx) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            match reg.get(&(cq as usize)).and_then(Weak::upgrade) {
                Some(c) => {
                    c.count_event(self.config.ack_batch);
                    if active.iter().any(|a| Arc::ptr_eq(a, &c)) {
                        extra.push(c);
                    } else {
                        active.push(c);
                    }
                }
                None => {
                    // The CQ is being dropped: its Drop waits for the registry lock we hold
                    // before destroying, so the pointer is still valid. Ack right away.
                    // SAFETY: `cq` is live (see above) and this event was just received.
                    unsafe { ffi::ibv_ack_cq_events(cq, 1) }
                }
            }
        }
    }
}

/// The fd's readiness as the reactor knows it, without waiting (and without a system call).
/// The no-op waker it leaves registered is replaced when the driver parks on the fd.
fn ready_now(fd: &AsyncFd<Fd>) -> Option<io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, Fd>>> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fd.poll_read_ready(&mut cx) {
        std::task::Poll::Ready(r) => Some(r),
        std::task::Poll::Pending => None,
    }
}

/// Empty polls in a row between two cooperative yields while spinning.
const TIGHT_POLLS: u32 = 32;

/// Polls every active CQ once; whether anything was found (or someone else was draining).
fn poll_all(active: &[Arc<CqInner>], batch: usize) -> bool {
    let mut found = false;
    for cq in active {
        match cq.poll_once(batch) {
            Ok(Some(0)) => {}
            Ok(_) => found = true,
            Err(e) => tracing::warn!(error = %e, "poll failed"),
        }
    }
    found
}

/// The per-channel driver task: poll-arm-poll with a count-bounded adaptive spin.
async fn drive(chan: Arc<ChannelInner>) {
    let Some(fd) = chan.fd.as_ref() else { return };
    let cfg = chan.config;
    let mut active: Vec<Arc<CqInner>> = Vec::new();
    let mut idle: u32 = 0;
    loop {
        if active.is_empty() {
            // Park: nothing armed has produced anything yet.
            let mut guard = match fd.readable().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(error = %e, "completion channel fd failed; driver stops");
                    fail_registered(&chan);
                    return;
                }
            };
            match guard.try_io(|_| chan.drain_events(&mut active)) {
                Ok(Err(e)) if e.kind() != io::ErrorKind::WouldBlock => {
                    tracing::error!(error = %e, "ibv_get_cq_event failed; driver stops");
                    fail_registered(&chan);
                    return;
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

        // Poll; while nothing shows up, re-poll in a tight loop for a few rounds before
        // yielding, so the per-yield runtime cost (an epoll_wait and a clock read in tokio's
        // park) is paid once per TIGHT_POLLS empty polls, not per poll.
        let mut found = poll_all(&active, cfg.poll_batch);
        let mut polls = 1;
        while !found && polls < TIGHT_POLLS && idle + polls < cfg.spin_iterations {
            std::hint::spin_loop();
            found = poll_all(&active, cfg.poll_batch);
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
            !matches!(cq.poll_once(cfg.poll_batch), Ok(Some(0)))
        });
        idle = 0;
        tokio::task::yield_now().await;
    }
}

/// The fd died: fail every registered CQ's outstanding operations instead of hanging them.
fn fail_registered(chan: &ChannelInner) {
    let cqs: Vec<_> = chan
        .registry
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter_map(Weak::upgrade)
        .collect();
    for cq in cqs {
        cq.dispatcher.fail_all(WcStatus::FatalErr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wc_conversion() {
        // SAFETY: all-zero is a valid ibv_wc.
        let mut w: ffi::ibv_wc = unsafe { std::mem::zeroed() };
        w.wr_id = 42;
        w.status = 10;
        w.opcode = 129; // IBV_WC_RECV_RDMA_WITH_IMM
        w.byte_len = 7;
        w.wc_flags = 2 | 1; // WITH_IMM | GRH
        w.imm_data_invalidated_rkey_union.imm_data = 0x1234_5678u32.to_be();
        w.qp_num = 9;
        let c = convert_wc(&w);
        assert_eq!(c.wr_id, 42);
        assert_eq!(c.status, WcStatus::RemAccessErr);
        assert_eq!(c.opcode, WcOpcode::RecvRdmaWithImm);
        assert_eq!(c.imm_data, Some(0x1234_5678));
        assert_eq!(c.invalidated_rkey, None);
        assert!(c.wc_flags.contains(WcFlags::GRH));
        w.wc_flags = 0;
        assert_eq!(convert_wc(&w).imm_data, None);
    }
}
