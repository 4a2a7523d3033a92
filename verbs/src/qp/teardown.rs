//! Teardown: graceful close with markers, the last handle's drop, and destroying the QP.
//!
//! In-flight work pins its QP (operation futures, abandoned slots and receive pools hold an
//! `Arc<QpInner>`), because providers discard the unpolled completions of a destroyed QP
//! (mlx5's `__mlx5_cq_clean`): destroying it under its work would strand futures, slots and
//! buffers. So:
//!
//! 1. The last [`QueuePair`] handle's drop closes the receive gate (no receive is posted into
//!    a QP headed for ERR: rxe never flushes those), and if nothing is in flight the QP is
//!    destroyed right there. Otherwise it moves the QP to ERR, which flushes every
//!    outstanding work request, and hands a [`QpTeardown`] machine (core) to the send CQ's
//!    driver.
//! 2. When the flushes have retired the work, the last pin drops and `QpInner::drop`
//!    destroys the QP.
//! 3. If they have not come after [`TEARDOWN_BOUND_MS`] (a provider that never flushes), the
//!    driver destroys the QP first (after which the NIC touches none of its buffers) and then
//!    fails its remaining slots explicitly (by tag), releasing their futures and buffers.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rdma_sys as ffi;
use tokio_rdma_core::{QpTeardown, TeardownAction, WcOpcode, WcStatus};

use super::{QpHandle, QpInner, QpType, QueuePair};
use crate::cq::{CqInner, PendingTeardown};
use crate::error::{Error, Result};
use crate::ops::OpFuture;
use crate::wr::SendOp;

/// How long a dropped QP's flushes may take before its remaining work is failed explicitly.
pub(crate) const TEARDOWN_BOUND_MS: u64 = 5_000;

/// The receive gate's "closed" bit; the low bits count posters inside.
const GATE_CLOSED: u32 = 1 << 31;

/// A QP's teardown state shared by its handles, its work and the driver.
#[derive(Default)]
pub(crate) struct Life {
    /// `ibv_destroy_qp` ran (early, by the bound, or in `Drop`).
    destroyed: AtomicBool,
    /// ... and succeeded.
    destroy_ok: AtomicBool,
    /// Receive gate: [`GATE_CLOSED`] once the QP is headed for ERR, low bits = receive posts
    /// in progress (closing waits for them, so none lands after the receive marker).
    recv_gate: AtomicU32,
}

/// Admission through an open receive gate; leaves it on drop.
pub(crate) struct GatePass<'a>(&'a AtomicU32);

impl Drop for GatePass<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

impl Life {
    /// Enters the receive gate, unless it is closed.
    pub(crate) fn enter_recv(&self) -> Option<GatePass<'_>> {
        let prev = self.recv_gate.fetch_add(1, Ordering::Acquire);
        let pass = GatePass(&self.recv_gate);
        (prev & GATE_CLOSED == 0).then_some(pass)
    }

    /// Closes the receive gate and waits for the posts in progress (a few microseconds at
    /// most: a post is one provider call). Whether this call closed it.
    pub(super) fn close_recv(&self) -> bool {
        let prev = self.recv_gate.fetch_or(GATE_CLOSED, Ordering::AcqRel);
        while self.recv_gate.load(Ordering::Acquire) & !GATE_CLOSED != 0 {
            std::hint::spin_loop();
        }
        prev & GATE_CLOSED == 0
    }
}

impl QpInner {
    /// Destroys the QP now (idempotent); whether it is destroyed. Only then may its remaining
    /// slots be failed: if `ibv_destroy_qp` fails the NIC may still use their buffers, which
    /// are then leaked rather than freed.
    fn destroy(&self) -> bool {
        if self.life.destroyed.swap(true, Ordering::AcqRel) {
            return self.life.destroy_ok.load(Ordering::Acquire);
        }
        if self.srq.is_some() {
            // Receives through an SRQ pin nothing: dispatch what this QP already has on the
            // receive CQ before the provider may discard it with the QP.
            while matches!(self.recv_cq.poll_once(), Ok(Some(n)) if n > 0) {}
        }
        // SAFETY: the QP is live (destroyed once, guarded by the flag above). No user handle
        // is left to post on it (the teardown runs after the last one), receive pools are shut
        // out by the closed gate, and in-flight work only references the QP through its pin,
        // never its pointer.
        let rc = unsafe { ffi::ibv_destroy_qp(self.as_ptr()) };
        if rc != 0 {
            tracing::warn!(
                rc,
                qp = self.qp_num,
                "ibv_destroy_qp failed: its work is leaked"
            );
            return false;
        }
        self.life.destroy_ok.store(true, Ordering::Release);
        if self.headroom_claimed.swap(false, Ordering::AcqRel) {
            self.send_cq.release_headroom(self.max_send_wr as usize);
        }
        if self.raw_headroom.swap(false, Ordering::AcqRel) {
            self.release_raw_headroom();
        }
        true
    }

    /// Fails every slot still tagged with this QP on its CQs (after `destroy`).
    fn fail_remaining(&self) -> usize {
        fail_tagged(&self.send_cq, &self.recv_cq, self.tag())
    }
}

/// Fails the slots tagged `tag` on a QP's send and receive CQs, with a flush error; how many.
/// Only once the QP is destroyed: the NIC then touches none of their buffers.
fn fail_tagged(send_cq: &Arc<CqInner>, recv_cq: &Arc<CqInner>, tag: u32) -> usize {
    let mut n = send_cq.dispatcher.fail_tagged(tag, WcStatus::WrFlushErr);
    if !Arc::ptr_eq(send_cq, recv_cq) {
        n += recv_cq.dispatcher.fail_tagged(tag, WcStatus::WrFlushErr);
    }
    n
}

impl Drop for QpInner {
    fn drop(&mut self) {
        // The last pin is gone: every work request completed or was flushed.
        if !self.destroy() {
            // The NIC may still use the regions raw requests name: leak them.
            let kept = std::mem::take(self.kept.get_mut().unwrap_or_else(|p| p.into_inner()));
            std::mem::forget(kept);
            return;
        }
        // Nothing should be left; a provider that keeps a slot (a receive it never flushed)
        // gets it failed now that the NIC can no longer touch its buffer.
        let left = self.fail_remaining();
        if left > 0 {
            tracing::debug!(qp = self.qp_num, left, "failed work left by a destroyed QP");
        }
    }
}

impl Drop for QpHandle {
    fn drop(&mut self) {
        let qp = &self.0;
        qp.life.close_recv();
        if Arc::strong_count(qp) == 1 || qp.life.destroyed.load(Ordering::Acquire) {
            // Nothing in flight pins it: `QpInner::drop` destroys it right after this.
            return;
        }
        let reaper = qp.send_cq.reaper.clone();
        let mut machine = QpTeardown::new(TEARDOWN_BOUND_MS);
        machine.on_outstanding(Arc::strong_count(qp) - 1);
        machine.on_last_handle_dropped(reaper.now_ms());
        let mut reap = QpReap {
            qp: Arc::downgrade(qp),
            send_cq: qp.send_cq.clone(),
            recv_cq: qp.recv_cq.clone(),
            tag: qp.tag(),
            machine,
            destroyed: false,
        };
        if !reap.run(Some(qp)) {
            reaper.schedule(Box::new(reap));
        }
    }
}

/// A dropped QP waiting for its flushes, ticked by the send CQ's driver.
struct QpReap {
    qp: Weak<QpInner>,
    /// Kept to fail the remaining slots once the `QpInner` is gone or destroyed.
    send_cq: Arc<CqInner>,
    recv_cq: Arc<CqInner>,
    tag: u32,
    machine: QpTeardown,
    /// Whether the `Destroy` action succeeded (failing the remaining slots needs it).
    destroyed: bool,
}

impl QpReap {
    /// Executes the machine's actions; whether the teardown is finished.
    fn run(&mut self, qp: Option<&Arc<QpInner>>) -> bool {
        while let Some(action) = self.machine.poll_action() {
            match action {
                TeardownAction::MoveToError => {
                    if let Some(qp) = qp {
                        if let Err(e) = qp.to_error() {
                            tracing::warn!(error = %e, "moving a dropped QP to ERR failed");
                        }
                    }
                }
                // Markers belong to `close`; the drop path waits on the pins instead.
                TeardownAction::PostMarkers => {}
                TeardownAction::Destroy => {
                    if let Some(qp) = qp {
                        self.destroyed = qp.destroy();
                    }
                }
                // The QP could not be destroyed: the NIC may still use the buffers.
                TeardownAction::FailRemaining { .. } if !self.destroyed => {}
                TeardownAction::FailRemaining { .. } => {
                    let n = fail_tagged(&self.send_cq, &self.recv_cq, self.tag);
                    tracing::warn!(
                        qp = self.tag,
                        failed = n,
                        "a dropped QP's flushes did not arrive in time: its work was failed"
                    );
                }
                TeardownAction::Drained => return true,
            }
        }
        false
    }
}

impl PendingTeardown for QpReap {
    fn on_tick(&mut self, now_ms: u64) -> bool {
        let qp = self.qp.upgrade();
        // The references left are the work still in flight (minus the one just taken).
        let outstanding = qp.as_ref().map_or(0, |q| Arc::strong_count(q) - 1);
        self.machine.on_outstanding(outstanding);
        self.machine.on_tick(now_ms);
        let done = self.run(qp.as_ref());
        // Dropping our reference may be the last pin: `QpInner::drop` then destroys the QP
        // (a no-op if the bound already did).
        drop(qp);
        done
    }
}

impl QueuePair {
    /// Graceful teardown: moves the QP to ERR and waits until every work request posted
    /// before has completed (mostly as flush errors), so the buffers of dropped operations
    /// are released when this returns. Receives posted through any handle after this starts
    /// are refused ([`Error::Closed`]).
    ///
    /// RC and UC: marker work requests queued behind everything else are awaited (queues
    /// complete in order). The receive marker (a zero-length receive, skipped with an SRQ) is
    /// posted *before* the transition: rxe does not flush receives posted to a QP already in
    /// ERR. UD, or a send marker that cannot be posted (a full send queue): the QP's slots on
    /// the send CQ are watched until none is left, for at most the teardown bound.
    ///
    /// The QP itself is destroyed when this and every other handle to it are gone.
    pub async fn close(self) -> Result<()> {
        let qp = self.qp().clone();
        let recv = if qp.srq.is_none() && qp.life.close_recv() {
            Some(self.recv_marker())
        } else {
            None
        };
        self.set_error()?;
        let send = match qp.qp_type {
            QpType::Ud => None,
            QpType::Rc | QpType::Uc => Some(self.post_one(SendOp::Send, ())),
        };
        // Any outcome of a marker (flush error, or a late message landing in the zero-length
        // receive) proves the queue ahead of it has drained.
        let marked = match send {
            Some(send) => {
                let (r, ()) = send.await;
                !matches!(r, Err(Error::Verb { .. } | Error::Core(_)))
            }
            None => false,
        };
        if !marked {
            wait_untagged(&qp.send_cq, qp.tag()).await;
        }
        if let Some(recv) = recv {
            // The marker may sit in a QP that went to ERR by itself just before (a transport
            // error): some providers never flush that, so the wait is bounded too.
            let bound = Duration::from_millis(TEARDOWN_BOUND_MS);
            if tokio::time::timeout(bound, recv).await.is_err() {
                tracing::warn!(qp = qp.qp_num, "close: the receive marker was not flushed");
            }
        }
        Ok(())
    }

    /// Posts the zero-length receive marker past the (already closed) receive gate.
    fn recv_marker(&self) -> OpFuture<()> {
        let qp = self.qp();
        let cq = &qp.recv_cq;
        let op = match cq.dispatcher.reserve_tagged(qp.tag()) {
            Ok(op) => op,
            Err(e) => return OpFuture::failed(e.into(), ()),
        };
        match qp.post_recv_ungated(op.wr_id().into_raw(), (0, 0, 0)) {
            Ok(()) => OpFuture::posted(op, (), cq.clone(), Some(qp.clone()), WcOpcode::Recv),
            Err(e) => {
                op.cancel_unposted();
                OpFuture::failed(e, ())
            }
        }
    }
}

/// Waits (on a timer: a cold path) until no slot of the CQ carries `tag`, for at most the
/// teardown bound.
async fn wait_untagged(cq: &CqInner, tag: u32) {
    let step = Duration::from_millis(1);
    for _ in 0..TEARDOWN_BOUND_MS {
        if cq.dispatcher.in_flight_tagged(tag) == 0 {
            return;
        }
        tokio::time::sleep(step).await;
    }
    tracing::warn!(
        qp = tag,
        "close: the send queue did not drain within the bound"
    );
}
