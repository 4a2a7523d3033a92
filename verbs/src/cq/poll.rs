//! Polling a CQ: one `ibv_poll_cq` batch under the CQ's draining flag, its completions routed
//! into the dispatcher's slots (raw ones to a `RawPoller`), and what routing left to do (drops
//! and wake-ups) run once the flag is released.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::atomic::Ordering;

use rdma_sys as ffi;
use tokio_rdma_core::{Aftermath, Completion};

use super::config::MAX_BATCH;
use super::queue::{CqInner, Parked, RAW_WR_BIT, UNSIGNALED_WR_ID};
use super::wc::convert_wc;
use crate::error::{Error, Result};

/// Where a [`RawPoller`](super::RawPoller)'s poll puts the raw completions it finds.
pub(crate) struct RawSink<'a> {
    pub(crate) out: &'a mut [Completion],
    pub(crate) n: usize,
}

thread_local! {
    /// Per thread: what a poll's routing left to do, run once the CQ's flag is released.
    static AFTERMATH: RefCell<Aftermath<Parked>> = RefCell::new(Aftermath::new());
}

impl CqInner {
    /// Polls up to one batch and feeds the dispatcher. `None` when another thread is
    /// draining right now (the caller must not conclude the CQ is empty).
    pub(crate) fn poll_once(&self) -> Result<Option<usize>> {
        if self
            .draining
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Ok(None);
        }
        let batch = self.config.poll_batch.min(MAX_BATCH);
        // SAFETY: we hold the draining flag, and the last use of `polled` is in `run`, before
        // the flag is released.
        let polled = match unsafe { self.poll_wc(batch) } {
            // Empty (a spinning driver's usual poll): nothing to route, nothing left to do.
            Ok([]) => {
                self.draining.store(false, Ordering::Release);
                return Ok(Some(0));
            }
            Ok(polled) => polled,
            Err(e) => {
                self.draining.store(false, Ordering::Release);
                return Err(e);
            }
        };
        let n = polled.len();
        // Consumer code (dropping parked buffers, waking tasks) runs only after the flag is
        // released: a drop may even release the last reference to a QP or to this CQ. The
        // thread's own `Aftermath` collects it (a few kilobytes: not made per poll); a poll
        // that consumer code starts while it is being finished uses a fresh one.
        let run = |after: &mut Aftermath<Parked>| {
            self.route(polled, after, None);
            self.draining.store(false, Ordering::Release);
            if !after.is_empty() {
                after.finish();
            }
        };
        let done = AFTERMATH
            .try_with(|cell| cell.try_borrow_mut().ok().map(|mut after| run(&mut after)))
            .ok()
            .flatten();
        // Re-entered from consumer code, or the thread is exiting: a fresh one.
        if done.is_none() {
            run(&mut Aftermath::new());
        }
        Ok(Some(n))
    }

    /// The driver's poll: [`Self::poll_once`], counting it and the completions it found.
    pub(super) fn driver_poll(&self) -> Result<Option<usize>> {
        let r = self.poll_once();
        if let Ok(Some(n)) = r {
            // Only the driver task writes it: a load and a store suffice.
            self.driver_polls.store(
                self.driver_polls.load(Ordering::Relaxed) + 1,
                Ordering::Relaxed,
            );
            if n > 0 {
                self.driver_completions
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        r
    }

    /// Polls one batch while holding the draining flag; what routing left to do (drops and
    /// wake-ups) goes into `after`, raw completions into `raw` (with their marker bit
    /// cleared; `batch` must not exceed its free room) or, without one, are counted as
    /// unclaimed.
    pub(super) fn poll_locked(
        &self,
        batch: usize,
        after: &mut Aftermath<Parked>,
        raw: Option<&mut RawSink<'_>>,
    ) -> Result<usize> {
        // SAFETY: the caller holds the draining flag for the whole call, and `polled` does not
        // outlive it.
        let polled = unsafe { self.poll_wc(batch) }?;
        if !polled.is_empty() {
            self.route(polled, after, raw);
        }
        Ok(polled.len())
    }

    /// One `ibv_poll_cq` of up to `batch` entries into the CQ's batch buffer, counted: the
    /// entries it wrote.
    ///
    /// # Safety
    ///
    /// The caller holds the draining flag, and releases it only after its last use of the
    /// returned slice (the next holder's poll writes the same buffer).
    unsafe fn poll_wc(&self, batch: usize) -> Result<&[ffi::ibv_wc]> {
        let batch = batch.min(MAX_BATCH);
        let buf = self.wc.as_mut_ptr();
        // SAFETY: the CQ is live; the buffer has room for MAX_BATCH >= `batch` entries; the
        // caller holds the draining flag, so no other thread polls the CQ or uses the buffer.
        let n = unsafe { ffi::ibv_poll_cq(self.as_ptr(), batch as i32, buf) };
        if n < 0 {
            return Err(Error::from_ret("ibv_poll_cq", n, "polling a CQ"));
        }
        // Only the holder of the draining flag counts, so a load and a store suffice (no
        // read-modify-write on every spin poll).
        self.polls
            .store(self.polls.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        debug_assert!(n as usize <= batch, "ibv_poll_cq returned more than asked");
        let n = (n as usize).min(batch);
        // SAFETY: the buffer's entries are always initialised (zeroed at creation, then only
        // written by `ibv_poll_cq`); n <= MAX_BATCH; the caller keeps the draining flag while it
        // uses the slice, so nothing writes the buffer meanwhile.
        Ok(unsafe { std::slice::from_raw_parts(buf, n) })
    }

    /// Routes polled work completions: dispatched into slots (what is left to do goes into
    /// `after`), raw ones into `raw`, unsignaled errors counted.
    fn route(
        &self,
        wc: &[ffi::ibv_wc],
        after: &mut Aftermath<Parked>,
        mut raw: Option<&mut RawSink<'_>>,
    ) {
        // Converted in place of a zero-initialised array: only as many entries as were polled
        // are written (zeroing all 64 would cost more than the dispatch on a small batch).
        let mut out: [MaybeUninit<Completion>; MAX_BATCH] =
            [const { MaybeUninit::uninit() }; MAX_BATCH];
        let mut m = 0;
        for w in wc {
            if w.wr_id == UNSIGNALED_WR_ID {
                self.unsignaled_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    status = w.status,
                    qp = w.qp_num,
                    "unsignaled request failed"
                );
                continue;
            }
            if w.wr_id & RAW_WR_BIT != 0 {
                let mut c = convert_wc(w);
                c.wr_id &= !RAW_WR_BIT;
                match raw.as_deref_mut() {
                    Some(sink) if sink.n < sink.out.len() => {
                        sink.out[sink.n] = c;
                        sink.n += 1;
                    }
                    _ => {
                        self.raw_unclaimed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(
                            wr_id = c.wr_id,
                            "raw completion polled without a RawPoller"
                        );
                    }
                }
                continue;
            }
            out[m].write(convert_wc(w));
            m += 1;
        }
        // SAFETY: the loop above initialised `out[..m]` (each polled entry wrote at most one,
        // and indexing `out` is bounds-checked), and `MaybeUninit<Completion>` has the layout
        // of `Completion`.
        let out = unsafe { std::slice::from_raw_parts(out.as_ptr().cast::<Completion>(), m) };
        self.dispatcher.handle_completions_deferred(out, after);
    }
}

// A poll batch's consumer code always fits one `Aftermath`.
const _: () = assert!(MAX_BATCH <= Aftermath::<Parked>::CAPACITY);
