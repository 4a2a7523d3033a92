//! Synchronous polling for raw work requests (`QueuePair::post_raw_*`): their completions skip
//! the dispatcher and are handed to the thread that owns the CQ, as plain [`Completion`]s in a
//! slice, the way a raw `ibv_poll_cq` loop (perftest) sees them.
//!
//! A [`RawPoller`] takes the CQ's `draining` flag for as long as it lives, so the channel's
//! driver and inline-polling futures skip the CQ (they never wait for the flag) and only its
//! owner polls it. What it polls that is not raw (operations and receives of the dispatcher
//! path on the same CQ) is still dispatched, so both kinds of work may share the CQ.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdma_sys as ffi;
use tokio_rdma_core::{Aftermath, Completion};

use super::config::MAX_BATCH;
use super::poll::RawSink;
use super::queue::{CqInner, Parked};
use super::CompletionQueue;
use crate::error::{Error, Result};

/// How many times [`CompletionQueue::raw_poller`] retries while another thread is polling.
const TAKE_ATTEMPTS: u32 = 1 << 20;

/// The owner of a CQ's polling, for a thread that polls it itself (busy-poll) or blocks on
/// its completion channel (event mode) without a runtime: raw completions come back as
/// [`Completion`]s (`wr_id` as posted), everything else is dispatched as usual.
///
/// While it exists the channel's driver and the futures on this CQ do not poll it: they find
/// the CQ busy and leave it alone (the driver keeps it active, so a runtime that runs the
/// driver meanwhile spins on it; use a raw poller on a thread whose runtime is idle). Dropping
/// it hands the CQ back. A raw completion polled while no raw poller exists (by the driver or
/// a future) cannot be delivered: it is counted in [`CqStats::raw_unclaimed`](super::CqStats)
/// and lost, so poll a CQ with raw work only through its poller.
pub struct RawPoller {
    cq: Arc<CqInner>,
    /// Dispatcher follow-up of the non-raw completions, run after each poll.
    after: Aftermath<Parked>,
}

impl std::fmt::Debug for RawPoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawPoller").finish_non_exhaustive()
    }
}

impl CompletionQueue {
    /// Takes over polling this CQ from the calling thread (see [`RawPoller`]). Fails with
    /// [`Error::InvalidArgument`] if another raw poller owns it.
    pub fn raw_poller(&self) -> Result<RawPoller> {
        if self.inner.raw_owned.load(Ordering::Acquire) {
            return Err(Error::InvalidArgument(
                "the CQ already has a raw poller".into(),
            ));
        }
        // The driver or a future may hold the flag for one poll: wait it out (bounded).
        for _ in 0..TAKE_ATTEMPTS {
            if self.inner.take_for_raw() {
                return Ok(RawPoller {
                    cq: self.inner.clone(),
                    after: Aftermath::new(),
                });
            }
            if self.inner.raw_owned.load(Ordering::Acquire) {
                break;
            }
            std::hint::spin_loop();
        }
        Err(Error::InvalidArgument(
            "the CQ is owned by another raw poller or never stops being polled".into(),
        ))
    }
}

impl RawPoller {
    /// Polls the CQ once (`ibv_poll_cq` for up to `out.len()`, at most 64, entries): stores the
    /// raw completions in `out` and returns how many; dispatches the others. Never blocks.
    pub fn poll(&mut self, out: &mut [Completion]) -> Result<usize> {
        let batch = out.len().min(MAX_BATCH);
        if batch == 0 {
            return Ok(0);
        }
        let mut sink = RawSink { out, n: 0 };
        let r = self.cq.poll_locked(batch, &mut self.after, Some(&mut sink));
        if !self.after.is_empty() {
            // Wake-ups and parked buffers of dispatcher work. Consumer code that polls this CQ
            // from here finds it busy (we hold the flag) and skips it; this poller keeps the
            // CQ alive through its Arc.
            self.after.finish();
        }
        r.map(|_| sink.n)
    }

    /// Requests a completion event for this CQ's next completion (`ibv_req_notify_cq`).
    /// Poll once more after arming before you [`wait`](Self::wait): a completion that landed
    /// before the arm raises no event.
    pub fn arm(&mut self) -> Result<()> {
        self.cq.arm()
    }

    /// Blocks the calling thread on the CQ's completion channel until an event arrives or
    /// `timeout` passes (then `Ok(0)`), like `ibv_get_cq_event`; returns how many events it
    /// read. Every event read is acknowledged here. An event for another CQ of the channel is
    /// handled on the way: one owned by another raw poller is left to that poller (the thread
    /// that waits should poll all raw pollers of the channel after a wake-up; an armed CQ
    /// raises one event per arm); any other CQ is polled, re-armed and polled again, so its
    /// futures are woken and the driver finds it as it left it, armed.
    ///
    /// The channel is shared with the driver task: when a runtime runs the driver at the
    /// same time, either of the two may read a given event, and each handles it correctly.
    pub fn wait(&mut self, timeout: Duration) -> Result<usize> {
        // SAFETY: the CQ is live (we hold an Arc) and was created on a completion channel,
        // so `channel` points to a live channel kept alive by the CQ; `fd` is a plain field.
        let (channel, fd) = unsafe {
            let ch = (*self.cq.as_ptr()).channel;
            (ch, (*ch).fd)
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `pfd` is one valid pollfd for the duration of the call; the fd stays open
        // while the channel lives (kept alive by the CQ).
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(Error::Io {
                context: "waiting on a completion channel".into(),
                source: e,
            });
        }
        let mut read = 0;
        loop {
            let mut cq: *mut ffi::ibv_cq = std::ptr::null_mut();
            let mut ctx: *mut libc::c_void = std::ptr::null_mut();
            // SAFETY: the channel is live and its fd non-blocking (set when it was created);
            // the out-pointers are valid.
            let rc = unsafe { ffi::ibv_get_cq_event(channel, &mut cq, &mut ctx) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock || read > 0 {
                    return Ok(read);
                }
                return Err(Error::Io {
                    context: "reading a completion event".into(),
                    source: e,
                });
            }
            read += 1;
            // SAFETY: `ctx` is the `cq_context` of a CQ of this crate (every CQ on the channel
            // was made by `CqInner::create`) and the event is not acked yet.
            let owner = unsafe { CqInner::from_event_context(ctx) };
            // SAFETY: acking the event just read for `cq`, which is live: its destroy blocks
            // until the event is acked.
            unsafe { ffi::ibv_ack_cq_events(cq, 1) };
            let Some(other) = owner else { continue };
            other.events.fetch_add(1, Ordering::Relaxed);
            if Arc::ptr_eq(&other, &self.cq) || other.raw_owned.load(Ordering::Acquire) {
                continue;
            }
            // A dispatcher CQ whose event the driver would have read: poll-arm-poll.
            let _ = other.poll_once();
            if other.arm().is_ok() {
                let _ = other.poll_once();
            }
        }
    }
}

impl Drop for RawPoller {
    fn drop(&mut self) {
        self.after.finish();
        self.cq.release_raw();
        // Hand the CQ back armed and polled (this poller may have read its last event without
        // arming again), so the dispatcher path learns of its next completion.
        if self.cq.arm().is_ok() {
            let _ = self.cq.poll_once();
        }
    }
}
