//! Send-queue operations: every SEND, RDMA WRITE/READ and atomic as a future, inline and
//! unsignaled sends, UD sends and batches.

use std::sync::atomic::Ordering;

use rdma_sys as ffi;
use tokio_rdma_core::WcOpcode;

use super::{QpType, QueuePair};
use crate::ah::AddressHandle;
use crate::cq::{Parked, UNSIGNALED_WR_ID};
use crate::error::{Error, Result};
use crate::mr::{check_writable, LocalBuffer, LocalBufferMut, RemoteBuffer};
use crate::ops::OpFuture;
use crate::wr::{build_wr, link_chain, validate, SendOp, SendRequest};

impl QueuePair {
    /// SEND of the whole local buffer.
    pub fn send<L: LocalBuffer>(&self, buf: L) -> OpFuture<L> {
        self.post_one(SendOp::Send, buf)
    }

    /// SEND with immediate data.
    pub fn send_with_imm<L: LocalBuffer>(&self, buf: L, imm: u32) -> OpFuture<L> {
        self.post_one(SendOp::SendWithImm(imm), buf)
    }

    /// RDMA WRITE of the local buffer to `remote` (which must be at least as long).
    pub fn write<L: LocalBuffer>(&self, buf: L, remote: RemoteBuffer) -> OpFuture<L> {
        self.post_one(SendOp::Write(remote), buf)
    }

    /// RDMA WRITE with immediate data.
    pub fn write_with_imm<L: LocalBuffer>(
        &self,
        buf: L,
        remote: RemoteBuffer,
        imm: u32,
    ) -> OpFuture<L> {
        self.post_one(SendOp::WriteWithImm(remote, imm), buf)
    }

    /// RDMA READ of `remote` into the local buffer (the local length is read).
    pub fn read<L: LocalBufferMut>(&self, buf: L, remote: RemoteBuffer) -> OpFuture<L> {
        if let Err(e) = check_writable(&buf) {
            return OpFuture::failed(e, buf);
        }
        self.post_one(SendOp::Read(remote), buf)
    }

    /// Atomic compare-and-swap; the previous remote value is written to `buf` (8 bytes).
    pub fn compare_swap<L: LocalBufferMut>(
        &self,
        buf: L,
        remote: RemoteBuffer,
        compare: u64,
        swap: u64,
    ) -> OpFuture<L> {
        if let Err(e) = check_writable(&buf) {
            return OpFuture::failed(e, buf);
        }
        self.post_one(
            SendOp::CompareSwap {
                remote,
                compare,
                swap,
            },
            buf,
        )
    }

    /// Atomic fetch-and-add; the previous remote value is written to `buf` (8 bytes).
    pub fn fetch_add<L: LocalBufferMut>(
        &self,
        buf: L,
        remote: RemoteBuffer,
        add: u64,
    ) -> OpFuture<L> {
        if let Err(e) = check_writable(&buf) {
            return OpFuture::failed(e, buf);
        }
        self.post_one(SendOp::FetchAdd { remote, add }, buf)
    }

    /// SEND with the data inlined in the work request (copied at post time; no memory region
    /// needed). At most the QP's `max_inline_data` bytes.
    pub fn send_inline(&self, data: &[u8]) -> OpFuture<()> {
        if let Err(e) = self.check_inline(&SendOp::Send, data) {
            return OpFuture::failed(e, ());
        }
        let sge = (data.as_ptr() as u64, data.len() as u32, 0);
        let cq = &self.inner.send_cq;
        let op = match self.inner.send_slots.reserve_tagged(self.inner.tag()) {
            Ok(op) => op,
            Err(e) => return OpFuture::failed(e.into(), ()),
        };
        // SAFETY: with IBV_SEND_INLINE the provider copies the data during ibv_post_send;
        // `data` is borrowed for the whole call.
        let r = unsafe { self.post_raw(&SendOp::Send, op.wr_id().into_raw(), sge, true, None) };
        match r {
            Ok(()) => OpFuture::posted(op, (), cq.clone(), self.pin(), WcOpcode::Send),
            Err(e) => {
                op.cancel_unposted();
                OpFuture::failed(e, ())
            }
        }
    }

    /// Posts an inline SEND **without a completion** (selective signaling, as perftest's
    /// latency tests do): returns once the provider has copied `data`, with no future to await
    /// and no completion to poll, which saves the NIC a CQE and the CQ a dispatch.
    ///
    /// RC send queues complete in order, so an unsignaled send is known to be done when a
    /// later signaled operation on this QP completes. To keep the send queue from filling with
    /// unretired requests, every `max_send_wr / 2`-th unsignaled send is posted signaled
    /// (its completion is consumed internally).
    ///
    /// Errors: a failure to post is returned here (e.g. `ENOMEM` when the send queue is full,
    /// nothing was sent). A transport error on the send itself arrives later: the QP enters
    /// the error state, later operations on it and its posted receives complete with errors,
    /// and the failed unsignaled request's own completion is counted in
    /// [`CqStats::unsignaled_errors`](crate::CqStats::unsignaled_errors) of the send CQ.
    ///
    /// # CQ headroom
    ///
    /// An unsignaled send takes no completion slot, yet it still takes a CQ entry when it
    /// fails or is flushed, and when the QP enters the error state all its outstanding
    /// unsignaled sends (up to [`max_send_wr`](Self::max_send_wr)) flush at once. The CQ's
    /// completion slots ([`CompletionQueue::capacity`](crate::CompletionQueue::capacity)) are
    /// already spoken for by signaled operations and receives, so those flushes must fit in
    /// the entries the device granted beyond them, or the CQ overruns (it then reports a CQ
    /// error and stops completing anything). Hence this call is refused with
    /// [`Error::InvalidArgument`] (nothing posted) unless the send CQ has at least
    /// `max_send_wr` entries of such headroom: `ibv_cq.cqe - capacity() >= max_send_wr()`. A
    /// device grants at least the entries asked for, often more (rxe and mlx5 round up to
    /// 2^k − 1: `create_cq(256)` gives 511 entries, 255 of headroom), so a small send queue on
    /// a CQ of that size qualifies. Several QPs sending unsignaled through one CQ share that
    /// headroom: each claims its `max_send_wr` of it on its first unsignaled send (and gives
    /// it back when destroyed), and a QP that finds too little left is refused.
    pub fn send_inline_unsignaled(&self, data: &[u8]) -> Result<()> {
        self.post_inline_unsignaled(&SendOp::Send, data)
    }

    /// Posts an inline RDMA WRITE of `data` to `remote` **without a completion**, as
    /// [`send_inline_unsignaled`](Self::send_inline_unsignaled) posts a SEND (perftest's
    /// `ib_write_lat` posts its writes so): the same selective signaling, errors and CQ
    /// headroom rule. RC and UC only; `remote` must be at least `data.len()` long.
    pub fn write_inline_unsignaled(&self, data: &[u8], remote: RemoteBuffer) -> Result<()> {
        self.post_inline_unsignaled(&SendOp::Write(remote), data)
    }

    /// Posts an inline RDMA WRITE with immediate data **without a completion** here (the
    /// peer's receive still completes, with `imm`): see
    /// [`write_inline_unsignaled`](Self::write_inline_unsignaled).
    pub fn write_with_imm_inline_unsignaled(
        &self,
        data: &[u8],
        remote: RemoteBuffer,
        imm: u32,
    ) -> Result<()> {
        self.post_inline_unsignaled(&SendOp::WriteWithImm(remote, imm), data)
    }

    /// The unsignaled inline post behind the `*_inline_unsignaled` methods.
    fn post_inline_unsignaled(&self, op: &SendOp, data: &[u8]) -> Result<()> {
        self.check_inline(op, data)?;
        self.inner.check_unsignaled_headroom()?;
        let sge = (data.as_ptr() as u64, data.len() as u32, 0);
        let n = self.inner.unsignaled.fetch_add(1, Ordering::Relaxed) + 1;
        if n < self.inner.signal_every {
            // SAFETY: inline: the provider copies `data` during the call.
            let r = unsafe { self.post_raw(op, UNSIGNALED_WR_ID, sge, true, None) };
            if r.is_err() {
                self.inner.unsignaled.fetch_sub(1, Ordering::Relaxed);
            }
            return r;
        }
        // This one retires the ones before it: signaled, its completion consumed by the
        // dispatcher (an abandoned slot holding nothing). Should reserving or posting fail,
        // the count stays up and the next call tries again.
        let op_slot = self.inner.send_slots.reserve_tagged(self.inner.tag())?;
        // SAFETY: inline, as above.
        let r = unsafe { self.post_raw(op, op_slot.wr_id().into_raw(), sge, true, None) };
        match r {
            Ok(()) => {
                self.inner.unsignaled.store(0, Ordering::Relaxed);
                op_slot.abandon(Parked::Pinned(self.qp().clone()));
                Ok(())
            }
            Err(e) => {
                op_slot.cancel_unposted();
                Err(e)
            }
        }
    }

    /// An inline `op` of `data` is possible on this QP: an operation of its type (no SEND on
    /// UD, which needs `send_to`), a remote buffer long enough, and within `max_inline_data`.
    fn check_inline(&self, op: &SendOp, data: &[u8]) -> Result<()> {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        validate(op, len, self.inner.qp_type.raw(), false)?;
        if data.len() > self.inner.max_inline as usize {
            return Err(Error::InvalidArgument(format!(
                "{} bytes exceed max_inline_data {}",
                data.len(),
                self.inner.max_inline
            )));
        }
        Ok(())
    }

    /// UD: SEND (optionally with immediate data) to the QP behind `ah`. The AH comes back
    /// with the buffer once the send completed.
    pub fn send_to<L: LocalBuffer>(
        &self,
        ah: &AddressHandle,
        buf: L,
        imm: Option<u32>,
    ) -> OpFuture<(L, AddressHandle)> {
        let op = imm.map_or(SendOp::Send, SendOp::SendWithImm);
        let sge = buf.sge();
        let ah = ah.clone();
        let res = (buf, ah);
        if self.inner.qp_type != QpType::Ud {
            return OpFuture::failed(Error::InvalidArgument("send_to needs a UD QP".into()), res);
        }
        if let Err(e) = validate(&op, sge.1, self.inner.qp_type.raw(), true) {
            return OpFuture::failed(e, res);
        }
        let cq = &self.inner.send_cq;
        let o = match self.inner.send_slots.reserve_tagged(self.inner.tag()) {
            Ok(o) => o,
            Err(e) => return OpFuture::failed(e.into(), res),
        };
        // SAFETY: the buffer and the AH are owned by the returned future until completion.
        let r = unsafe { self.post_raw(&op, o.wr_id().into_raw(), sge, false, Some(&res.1)) };
        match r {
            Ok(()) => OpFuture::posted(o, res, cq.clone(), self.pin(), op.wc_opcode()),
            Err(e) => {
                o.cancel_unposted();
                OpFuture::failed(e, res)
            }
        }
    }

    pub(super) fn post_one<L: LocalBuffer>(&self, op: SendOp, buf: L) -> OpFuture<L> {
        if let Err(e) = validate(&op, buf.sge().1, self.inner.qp_type.raw(), false) {
            return OpFuture::failed(e, buf);
        }
        let cq = &self.inner.send_cq;
        let o = match self.inner.send_slots.reserve_tagged(self.inner.tag()) {
            Ok(o) => o,
            Err(e) => return OpFuture::failed(e.into(), buf),
        };
        // SAFETY: `buf` is moved into the returned future, which keeps it (or parks it in the
        // slot when dropped) until the completion arrives.
        let r = unsafe { self.post_raw(&op, o.wr_id().into_raw(), buf.sge(), false, None) };
        match r {
            Ok(()) => OpFuture::posted(o, buf, cq.clone(), self.pin(), op.wc_opcode()),
            Err(e) => {
                o.cancel_unposted();
                OpFuture::failed(e, buf)
            }
        }
    }

    /// Posts one send WR (signaled unless `wr_id` is [`UNSIGNALED_WR_ID`]).
    ///
    /// # Safety
    /// The memory `sge` names must stay valid until the work request completes (or, with
    /// `inline`, for the duration of the call).
    unsafe fn post_raw(
        &self,
        op: &SendOp,
        wr_id: u64,
        sge: (u64, u32, u32),
        inline: bool,
        ah: Option<&AddressHandle>,
    ) -> Result<()> {
        let mut sge = ffi::ibv_sge {
            addr: sge.0,
            length: sge.1,
            lkey: sge.2,
        };
        let mut wr = build_wr(op, wr_id, &mut sge, sge.length, inline, ah);
        let mut bad = std::ptr::null_mut();
        // SAFETY: the QP is live; `wr`/`sge` are valid for the call (the provider copies
        // them); the caller guarantees the data's lifetime.
        let rc = unsafe { ffi::ibv_post_send(self.inner.as_ptr(), &mut wr, &mut bad) };
        if rc != 0 {
            return Err(Error::from_ret(
                "ibv_post_send",
                rc,
                format!("{op:?} on qp {:#x}", self.inner.qp_num),
            ));
        }
        Ok(())
    }

    /// Posts several send-queue work requests with one doorbell (one `ibv_post_send`).
    /// Returns one future per request, in order. If the post fails part-way, the requests
    /// from the failing one on resolve with the error; the earlier ones were posted.
    pub fn post_batch<L: LocalBuffer>(&self, reqs: Vec<SendRequest<L>>) -> Vec<OpFuture<L>> {
        let cq = &self.inner.send_cq;
        let n = reqs.len();
        let mut ops = Vec::with_capacity(n);
        let mut bufs = Vec::with_capacity(n);
        let mut sges = Vec::with_capacity(n);
        let mut out: Vec<OpFuture<L>> = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        for r in reqs {
            let sge = r.local.sge();
            let checked = validate(&r.op, sge.1, self.inner.qp_type.raw(), false).and_then(|()| {
                self.inner
                    .send_slots
                    .reserve_tagged(self.inner.tag())
                    .map_err(Error::from)
            });
            match checked {
                Ok(o) if out.is_empty() => {
                    ops.push(o);
                    sges.push(ffi::ibv_sge {
                        addr: sge.0,
                        length: sge.1,
                        lkey: sge.2,
                    });
                    kinds.push(r.op);
                    bufs.push(r.local);
                }
                // After the first failure the rest is not posted (keeps order semantics).
                Ok(o) => {
                    o.cancel_unposted();
                    out.push(OpFuture::failed(
                        Error::InvalidArgument("an earlier request of the batch failed".into()),
                        r.local,
                    ));
                }
                Err(e) => out.push(OpFuture::failed(e, r.local)),
            }
        }
        // Encode first, link after both Vecs are final (`link_chain`).
        let mut wrs: Vec<ffi::ibv_send_wr> = kinds
            .iter()
            .zip(&ops)
            .zip(&sges)
            .map(|((kind, o), sge)| {
                build_wr(
                    kind,
                    o.wr_id().into_raw(),
                    std::ptr::null_mut(),
                    sge.length,
                    false,
                    None,
                )
            })
            .collect();
        let n_wrs = wrs.len();
        // From here on `wrs` and `sges` are touched only through the chain until the post
        // returned (see `link_chain`).
        let head_wr = link_chain(&mut wrs, &mut sges);
        let mut posted = n_wrs;
        let mut err = None;
        if n_wrs > 0 {
            let mut bad: *mut ffi::ibv_send_wr = std::ptr::null_mut();
            // SAFETY: the QP is live; `head_wr` heads a chain of `n_wrs` requests and their
            // SGEs, all in `wrs`/`sges`, which are neither moved, resized nor reborrowed until
            // the call returned (`link_chain`'s contract); every buffer an SGE names is moved
            // into its future below, which keeps it until the completion.
            let rc = unsafe { ffi::ibv_post_send(self.inner.as_ptr(), head_wr, &mut bad) };
            if rc != 0 {
                let base = head_wr as usize;
                let size = std::mem::size_of::<ffi::ibv_send_wr>();
                posted = if bad.is_null() {
                    0
                } else {
                    ((bad as usize).saturating_sub(base) / size).min(n_wrs)
                };
                err = Some((rc, self.inner.qp_num));
            }
        }
        let mut head = Vec::with_capacity(n);
        for (i, ((o, b), kind)) in ops.into_iter().zip(bufs).zip(&kinds).enumerate() {
            if i < posted {
                head.push(OpFuture::posted(
                    o,
                    b,
                    cq.clone(),
                    self.pin(),
                    kind.wc_opcode(),
                ));
            } else {
                o.cancel_unposted();
                let (rc, qpn) = err.expect("error recorded when not all were posted");
                head.push(OpFuture::failed(
                    Error::from_ret("ibv_post_send", rc, format!("batch on qp {qpn:#x}")),
                    b,
                ));
            }
        }
        head.extend(out);
        head
    }
}
