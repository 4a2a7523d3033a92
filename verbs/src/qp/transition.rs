//! State transitions (RESET -> INIT -> RTR -> RTS, SQD, ERR) and connection info.

use rdma_sys as ffi;

use super::{QpInner, QpType, QueuePair};
use crate::error::{Error, Result};
use crate::info::{ah_attr, ConnectOptions, QpInfo};

pub(super) fn zeroed_attr() -> ffi::ibv_qp_attr {
    // SAFETY: ibv_qp_attr is plain C data; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

impl QpInner {
    pub(super) fn modify(&self, attr: &mut ffi::ibv_qp_attr, mask: u32, what: &str) -> Result<()> {
        // SAFETY: the QP is live; `attr` is a valid struct whose fields named by `mask` are set.
        let rc = unsafe { ffi::ibv_modify_qp(self.as_ptr(), attr, mask as i32) };
        if rc != 0 {
            return Err(Error::from_ret(
                "ibv_modify_qp",
                rc,
                format!("qp {:#x} to {what}", self.qp_num),
            ));
        }
        Ok(())
    }

    pub(super) fn to_error(&self) -> Result<()> {
        let mut a = zeroed_attr();
        a.qp_state = ffi::ibv_qp_state::IBV_QPS_ERR;
        self.modify(&mut a, ffi::ibv_qp_attr_mask::IBV_QP_STATE.0, "ERR")
    }
}

impl QueuePair {
    /// What the peer needs to connect to us (QPN, PSN, LID, GID, MTU).
    pub fn local_info(&self, opts: &ConnectOptions) -> Result<QpInfo> {
        let ctx = self.context();
        let port = ctx.query_port(opts.port)?;
        let gid = ctx.query_gid(opts.port, opts.gid_index(&ctx)?)?.gid;
        Ok(QpInfo {
            qpn: self.inner.qp_num,
            psn: opts.psn & 0xff_ffff,
            lid: port.lid,
            mtu: opts.mtu.unwrap_or(port.active_mtu),
            gid,
            qkey: opts.qkey,
        })
    }

    /// RESET → INIT.
    pub fn init(&self, opts: &ConnectOptions) -> Result<()> {
        use ffi::ibv_qp_attr_mask as M;
        let mut a = zeroed_attr();
        a.qp_state = ffi::ibv_qp_state::IBV_QPS_INIT;
        a.pkey_index = 0;
        a.port_num = opts.port;
        let mut mask = M::IBV_QP_STATE | M::IBV_QP_PKEY_INDEX | M::IBV_QP_PORT;
        match self.inner.qp_type {
            QpType::Ud => {
                a.qkey = opts.qkey;
                mask |= M::IBV_QP_QKEY;
            }
            QpType::Rc | QpType::Uc => {
                a.qp_access_flags = opts.access.0;
                mask |= M::IBV_QP_ACCESS_FLAGS;
            }
        }
        self.inner.modify(&mut a, mask.0, "INIT")
    }

    /// INIT → RTR (ready to receive) towards `remote` (ignored for UD).
    pub fn ready_to_receive(&self, opts: &ConnectOptions, remote: &QpInfo) -> Result<()> {
        use ffi::ibv_qp_attr_mask as M;
        let mut a = zeroed_attr();
        a.qp_state = ffi::ibv_qp_state::IBV_QPS_RTR;
        let mut mask = M::IBV_QP_STATE;
        if self.inner.qp_type != QpType::Ud {
            let ctx = self.context();
            let port = ctx.query_port(opts.port)?;
            let mtu = opts.mtu.unwrap_or(port.active_mtu.min(remote.mtu));
            a.path_mtu = mtu as u32;
            a.dest_qp_num = remote.qpn;
            a.rq_psn = remote.psn & 0xff_ffff;
            a.ah_attr = ah_attr(remote, opts.port, opts.gid_index(&ctx)?, opts.hop_limit)?;
            mask |= M::IBV_QP_AV | M::IBV_QP_PATH_MTU | M::IBV_QP_DEST_QPN | M::IBV_QP_RQ_PSN;
            if self.inner.qp_type == QpType::Rc {
                a.max_dest_rd_atomic = opts.max_rd_atomic;
                a.min_rnr_timer = opts.min_rnr_timer;
                mask |= M::IBV_QP_MAX_DEST_RD_ATOMIC | M::IBV_QP_MIN_RNR_TIMER;
            }
        }
        self.inner.modify(&mut a, mask.0, "RTR")
    }

    /// RTR → RTS (ready to send).
    pub fn ready_to_send(&self, opts: &ConnectOptions) -> Result<()> {
        use ffi::ibv_qp_attr_mask as M;
        let mut a = zeroed_attr();
        a.qp_state = ffi::ibv_qp_state::IBV_QPS_RTS;
        a.sq_psn = opts.psn & 0xff_ffff;
        let mut mask = M::IBV_QP_STATE | M::IBV_QP_SQ_PSN;
        if self.inner.qp_type == QpType::Rc {
            a.timeout = opts.timeout;
            a.retry_cnt = opts.retry_cnt;
            a.rnr_retry = opts.rnr_retry;
            a.max_rd_atomic = opts.max_rd_atomic;
            mask |= M::IBV_QP_TIMEOUT
                | M::IBV_QP_RETRY_CNT
                | M::IBV_QP_RNR_RETRY
                | M::IBV_QP_MAX_QP_RD_ATOMIC;
        }
        self.inner.modify(&mut a, mask.0, "RTS")
    }

    /// INIT → RTR → RTS in one go (for UD `remote` is ignored: pass our own info).
    pub fn connect(&self, opts: &ConnectOptions, remote: &QpInfo) -> Result<()> {
        self.init(opts)?;
        self.ready_to_receive(opts, remote)?;
        self.ready_to_send(opts)
    }

    /// RTS → SQD (send queue drain), asking for the drained notification
    /// (`en_sqd_async_notify`).
    ///
    /// The QP stops starting new send work requests (those posted later stay queued); the
    /// ones already in progress still complete. Once the send queue has drained, the device
    /// raises [`AsyncEventKind::SqDrained`](crate::AsyncEventKind::SqDrained) for this QP
    /// ([`AsyncEventElement::Qp`](crate::AsyncEventElement::Qp) with [`Self::qp_num`]) on the
    /// context's [`async_events`](crate::Context::async_events) stream. This returns as soon as
    /// the transition is accepted; it does not wait for the drain. Receives are unaffected.
    ///
    /// Fails with [`Error::Verb`] (`ibv_modify_qp`, errno e.g. `EINVAL`) when the QP is not in
    /// RTS or the provider does not support SQD.
    pub fn drain_send_queue(&self) -> Result<()> {
        use ffi::ibv_qp_attr_mask as M;
        let mut a = zeroed_attr();
        a.qp_state = ffi::ibv_qp_state::IBV_QPS_SQD;
        a.en_sqd_async_notify = 1;
        let mask = M::IBV_QP_STATE | M::IBV_QP_EN_SQD_ASYNC_NOTIFY;
        self.inner.modify(&mut a, mask.0, "SQD")
    }

    /// Applies attributes computed elsewhere, such as by librdmacm's `rdma_init_qp_attr`:
    /// `ibv_modify_qp(qp, attr, mask)`. This is how a connection manager moves a QP it did not
    /// create through `rdma_create_qp` to INIT, RTR and RTS.
    ///
    /// Refused with [`Error::InvalidArgument`]: a move to RESET (the device would drop the
    /// outstanding work requests without completing them, so their futures would never
    /// resolve; drop the QP instead) and a move to ERR (use [`Self::set_error`], which also
    /// closes the receive gate).
    pub fn modify_with(
        &self,
        attr: &mut ffi::ibv_qp_attr,
        mask: ffi::ibv_qp_attr_mask,
    ) -> Result<()> {
        use ffi::ibv_qp_state as S;
        if mask.0 & ffi::ibv_qp_attr_mask::IBV_QP_STATE.0 != 0 {
            let what = match attr.qp_state {
                S::IBV_QPS_RESET => Some("RESET"),
                S::IBV_QPS_ERR => Some("ERR"),
                _ => None,
            };
            if let Some(state) = what {
                return Err(Error::InvalidArgument(format!(
                    "modify_with cannot move qp {:#x} to {state}: drop the QP, or call set_error",
                    self.inner.qp_num
                )));
            }
        }
        let state = attr.qp_state;
        self.inner
            .modify(attr, mask.0, &format!("state {state} (given attributes)"))
    }

    /// Moves the QP to the error state: every outstanding work request completes with a
    /// flush error (their futures resolve with [`Error::Completion`]).
    ///
    /// Receives are refused from now on ([`Error::Closed`]): a receive posted into a QP in
    /// the error state is never flushed by some providers (rxe), so it would never complete.
    pub fn set_error(&self) -> Result<()> {
        self.inner.life.close_recv();
        self.inner.to_error()
    }
}
