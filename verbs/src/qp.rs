//! Queue pairs (RC, UC, UD): creation, state transitions, connection info and operations.

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use rdma_sys as ffi;

use crate::cq::{CompletionQueue, CqInner, Parked, UNSIGNALED_WR_ID};
use crate::device::{Context, Gid, Mtu};
use crate::error::{Error, Result};
use crate::mr::{Access, LocalBuffer, LocalBufferMut, PdInner, ProtectionDomain, RemoteBuffer};
use crate::ops::OpFuture;
use crate::recv::{RecvStream, RecvTarget, SharedReceiveQueue, SrqInner};
use tokio_rdma_core::Dispatcher;

/// Transport type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpType {
    /// Reliable connected.
    Rc,
    /// Unreliable connected.
    Uc,
    /// Unreliable datagram.
    Ud,
}

impl QpType {
    fn raw(self) -> u32 {
        match self {
            Self::Rc => ffi::ibv_qp_type::IBV_QPT_RC,
            Self::Uc => ffi::ibv_qp_type::IBV_QPT_UC,
            Self::Ud => ffi::ibv_qp_type::IBV_QPT_UD,
        }
    }
}

/// Builds a queue pair (`ibv_create_qp`); the QP starts in RESET.
pub struct QueuePairBuilder {
    pd: ProtectionDomain,
    qp_type: QpType,
    send_cq: CompletionQueue,
    recv_cq: CompletionQueue,
    srq: Option<SharedReceiveQueue>,
    cap: ffi::ibv_qp_cap,
}

fn fmt_cap(c: &ffi::ibv_qp_cap) -> String {
    format!(
        "max_send_wr {}, max_recv_wr {}, max_inline_data {}",
        c.max_send_wr, c.max_recv_wr, c.max_inline_data
    )
}

impl fmt::Debug for QueuePairBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuePairBuilder")
            .field("qp_type", &self.qp_type)
            .field("cap", &fmt_cap(&self.cap))
            .field("srq", &self.srq.is_some())
            .finish()
    }
}

impl QueuePairBuilder {
    /// Defaults: 128 send and 128 receive WRs, one SGE each, 64 bytes of inline data, the same
    /// CQ for sends and receives.
    pub fn new(pd: &ProtectionDomain, qp_type: QpType, cq: &CompletionQueue) -> Self {
        Self {
            pd: pd.clone(),
            qp_type,
            send_cq: cq.clone(),
            recv_cq: cq.clone(),
            srq: None,
            cap: ffi::ibv_qp_cap {
                max_send_wr: 128,
                max_recv_wr: 128,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 64,
            },
        }
    }
    /// A separate receive CQ.
    pub fn recv_cq(mut self, cq: &CompletionQueue) -> Self {
        self.recv_cq = cq.clone();
        self
    }
    /// Send queue depth.
    pub fn max_send_wr(mut self, n: u32) -> Self {
        self.cap.max_send_wr = n;
        self
    }
    /// Receive queue depth (ignored with an SRQ).
    pub fn max_recv_wr(mut self, n: u32) -> Self {
        self.cap.max_recv_wr = n;
        self
    }
    /// Max bytes of inline send data.
    pub fn max_inline_data(mut self, n: u32) -> Self {
        self.cap.max_inline_data = n;
        self
    }
    /// Receive through a shared receive queue; the receive CQ becomes the SRQ's CQ.
    pub fn srq(mut self, srq: &SharedReceiveQueue) -> Self {
        self.recv_cq = CompletionQueue {
            inner: srq.inner.cq.clone(),
        };
        self.srq = Some(srq.clone());
        self
    }

    /// Creates the QP.
    pub fn build(self) -> Result<QueuePair> {
        let mut cap = self.cap;
        if self.srq.is_some() {
            cap.max_recv_wr = 0;
            cap.max_recv_sge = 0;
        }
        let mut attr = ffi::ibv_qp_init_attr {
            qp_context: std::ptr::null_mut(),
            send_cq: self.send_cq.inner.as_ptr(),
            recv_cq: self.recv_cq.inner.as_ptr(),
            srq: self
                .srq
                .as_ref()
                .map_or(std::ptr::null_mut(), |s| s.inner.as_ptr()),
            cap,
            qp_type: self.qp_type.raw(),
            // Every work request says whether it is signaled (all are, except
            // `send_inline_unsignaled`).
            sq_sig_all: 0,
        };
        // SAFETY: the PD, CQs and SRQ are live (the QP keeps Arcs to them); `attr` is a valid
        // in/out struct.
        let qp = unsafe { ffi::ibv_create_qp(self.pd.as_ptr(), &mut attr) };
        let qp = NonNull::new(qp).ok_or_else(|| {
            Error::last_os(
                "ibv_create_qp",
                format!("{:?} {}", self.qp_type, fmt_cap(&cap)),
            )
        })?;
        // SAFETY: `qp` is valid; `qp_num` is a plain field.
        let qp_num = unsafe { (*qp.as_ptr()).qp_num };
        Ok(QueuePair {
            inner: Arc::new(QpInner {
                qp,
                qp_num,
                qp_type: self.qp_type,
                max_inline: attr.cap.max_inline_data,
                max_send_wr: attr.cap.max_send_wr,
                signal_every: (attr.cap.max_send_wr / 2).max(1),
                unsignaled: AtomicU32::new(0),
                send_slots: self.send_cq.inner.dispatcher.clone(),
                send_cq: self.send_cq.inner,
                recv_cq: self.recv_cq.inner,
                srq: self.srq.map(|s| s.inner),
                pd: self.pd.inner,
            }),
        })
    }
}

pub(crate) struct QpInner {
    qp: NonNull<ffi::ibv_qp>,
    qp_num: u32,
    qp_type: QpType,
    max_inline: u32,
    max_send_wr: u32,
    /// Unsignaled sends are retired by a signaled one at least this often (half the send
    /// queue), so they never fill the send queue.
    signal_every: u32,
    /// Unsignaled sends posted since the last signaled one that `send_inline_unsignaled`
    /// forced.
    unsignaled: AtomicU32,
    /// This QP's own handle onto the send CQ's slot table: its home free-list shard, so QPs
    /// sharing a CQ but driven from different threads recycle their own slots.
    send_slots: Dispatcher<Parked>,
    pub(crate) send_cq: Arc<CqInner>,
    pub(crate) recv_cq: Arc<CqInner>,
    srq: Option<Arc<SrqInner>>,
    pd: Arc<PdInner>,
}

ibverbs_thread_safe!(QpInner);

impl QpInner {
    pub(crate) fn as_ptr(&self) -> *mut ffi::ibv_qp {
        self.qp.as_ptr()
    }

    fn modify(&self, attr: &mut ffi::ibv_qp_attr, mask: u32, what: &str) -> Result<()> {
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

    fn to_error(&self) -> Result<()> {
        let mut a = zeroed_attr();
        a.qp_state = ffi::ibv_qp_state::IBV_QPS_ERR;
        self.modify(&mut a, ffi::ibv_qp_attr_mask::IBV_QP_STATE.0, "ERR")
    }
}

impl Drop for QpInner {
    fn drop(&mut self) {
        // Move to ERR first so the NIC stops processing; outstanding WRs get flushed.
        // Buffers of abandoned operations stay parked in the CQ's dispatcher until their
        // flush completion arrives or the CQ is destroyed (after this QP), never earlier.
        let _ = self.to_error();
        // SAFETY: no operation future references the QP pointer any more (they hold Arcs to
        // the QP only while posting); async events are acked as soon as they are read.
        let rc = unsafe { ffi::ibv_destroy_qp(self.as_ptr()) };
        if rc != 0 {
            tracing::warn!(rc, qp = self.qp_num, "ibv_destroy_qp failed");
        }
    }
}

fn zeroed_attr() -> ffi::ibv_qp_attr {
    // SAFETY: ibv_qp_attr is plain C data; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

/// What a peer needs to connect to a QP, exchanged out of band (TCP, files, tests).
/// Encodes to [`QpInfo::WIRE_LEN`] bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpInfo {
    /// QP number.
    pub qpn: u32,
    /// Initial packet sequence number of its send queue (24 bits).
    pub psn: u32,
    /// Port LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// Path MTU it supports.
    pub mtu: Mtu,
    /// Its GID (RoCE / global routing).
    pub gid: Gid,
    /// Q_Key (UD).
    pub qkey: u32,
}

impl QpInfo {
    /// Wire length.
    pub const WIRE_LEN: usize = 36;
    const MAGIC: [u8; 2] = *b"QP";

    /// `"QP", version 1, mtu, qpn, psn, lid, 2 reserved, gid, qkey` (big-endian).
    pub fn to_bytes(&self) -> [u8; Self::WIRE_LEN] {
        let mut b = [0u8; Self::WIRE_LEN];
        b[..2].copy_from_slice(&Self::MAGIC);
        b[2] = 1;
        b[3] = self.mtu as u8;
        b[4..8].copy_from_slice(&self.qpn.to_be_bytes());
        b[8..12].copy_from_slice(&self.psn.to_be_bytes());
        b[12..14].copy_from_slice(&self.lid.to_be_bytes());
        b[14..16].copy_from_slice(&[0, 0]);
        b[16..32].copy_from_slice(&self.gid.0);
        b[32..36].copy_from_slice(&self.qkey.to_be_bytes());
        b
    }

    /// Decodes [`QpInfo::to_bytes`]; rejects wrong length, magic, version or values.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let bad = |detail: String| Error::Malformed {
            what: "QpInfo",
            detail,
        };
        if b.len() != Self::WIRE_LEN {
            return Err(bad(format!("{} bytes, want {}", b.len(), Self::WIRE_LEN)));
        }
        if b[..2] != Self::MAGIC || b[2] != 1 {
            return Err(bad("bad magic or version".into()));
        }
        let mtu = match b[3] {
            1 => Mtu::Mtu256,
            2 => Mtu::Mtu512,
            3 => Mtu::Mtu1024,
            4 => Mtu::Mtu2048,
            5 => Mtu::Mtu4096,
            o => return Err(bad(format!("mtu code {o}"))),
        };
        let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let psn = u32_at(8);
        if psn > 0xff_ffff {
            return Err(bad(format!("psn {psn:#x} exceeds 24 bits")));
        }
        Ok(Self {
            qpn: u32_at(4),
            psn,
            lid: u16::from_be_bytes([b[12], b[13]]),
            mtu,
            gid: Gid(b[16..32].try_into().expect("16 bytes")),
            qkey: u32_at(32),
        })
    }
}

/// The Q_Key UD QPs use unless told otherwise.
pub const DEFAULT_QKEY: u32 = 0x1111_1111;

/// Options for the INIT → RTR → RTS transitions. `Default` gives sensible values for RoCE.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Port number (1-based).
    pub port: u8,
    /// Source GID index; `None` picks [`Context::default_gid_index`].
    pub gid_index: Option<u32>,
    /// Path MTU; `None` = the smaller of the port's active MTU and the peer's.
    pub mtu: Option<Mtu>,
    /// Our send queue's initial PSN.
    pub psn: u32,
    /// Access flags for incoming RDMA (RC/UC).
    pub access: Access,
    /// Local ACK timeout exponent (4.096 µs × 2^timeout).
    pub timeout: u8,
    /// Transport retries.
    pub retry_cnt: u8,
    /// RNR retries (7 = infinite).
    pub rnr_retry: u8,
    /// Minimal RNR NAK timer code.
    pub min_rnr_timer: u8,
    /// Outstanding RDMA READs/atomics we issue and accept.
    pub max_rd_atomic: u8,
    /// Q_Key (UD).
    pub qkey: u32,
    /// Hop limit of the GRH.
    pub hop_limit: u8,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            port: 1,
            gid_index: None,
            mtu: None,
            psn: 0x1234,
            access: Access::LOCAL_WRITE
                | Access::REMOTE_WRITE
                | Access::REMOTE_READ
                | Access::REMOTE_ATOMIC,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
            min_rnr_timer: 12,
            max_rd_atomic: 4,
            qkey: DEFAULT_QKEY,
            hop_limit: 64,
        }
    }
}

impl ConnectOptions {
    fn gid_index(&self, ctx: &Context) -> Result<u32> {
        match self.gid_index {
            Some(i) => Ok(i),
            None => ctx.default_gid_index(self.port),
        }
    }
}

/// Builds the `ibv_ah_attr` for reaching `remote` from `port`/`sgid_index`.
fn ah_attr(remote: &QpInfo, port: u8, sgid_index: u32, hop_limit: u8) -> Result<ffi::ibv_ah_attr> {
    let sgid_index = u8::try_from(sgid_index)
        .map_err(|_| Error::InvalidArgument(format!("gid index {sgid_index}")))?;
    let global = !remote.gid.is_zero();
    Ok(ffi::ibv_ah_attr {
        grh: ffi::ibv_global_route {
            dgid: remote.gid.to_ffi(),
            flow_label: 0,
            sgid_index,
            hop_limit,
            traffic_class: 0,
        },
        dlid: remote.lid,
        sl: 0,
        src_path_bits: 0,
        static_rate: 0,
        is_global: u8::from(global),
        port_num: port,
    })
}

pub(crate) struct AhInner {
    ah: NonNull<ffi::ibv_ah>,
    _pd: Arc<PdInner>,
}

ibverbs_thread_safe!(AhInner);

destroy_on_drop!(
    AhInner,
    ah,
    ibv_destroy_ah,
    "UD sends own a clone of their AH until completion"
);

/// An address handle: how to reach a remote UD QP's port.
#[derive(Clone)]
pub struct AddressHandle {
    inner: Arc<AhInner>,
    remote_qpn: u32,
    remote_qkey: u32,
}

impl fmt::Debug for AddressHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddressHandle")
            .field("remote_qpn", &self.remote_qpn)
            .finish_non_exhaustive()
    }
}

impl AddressHandle {
    /// Creates an AH towards `remote` (its GID/LID) with a global route header.
    pub fn new(pd: &ProtectionDomain, remote: &QpInfo, opts: &ConnectOptions) -> Result<Self> {
        let sgid = opts.gid_index(&pd.context())?;
        let mut attr = ah_attr(remote, opts.port, sgid, opts.hop_limit)?;
        // SAFETY: the PD is live; `attr` is a valid struct.
        let ah = unsafe { ffi::ibv_create_ah(pd.as_ptr(), &mut attr) };
        let ah = NonNull::new(ah)
            .ok_or_else(|| Error::last_os("ibv_create_ah", format!("to {}", remote.gid)))?;
        Ok(Self {
            inner: Arc::new(AhInner {
                ah,
                _pd: pd.inner.clone(),
            }),
            remote_qpn: remote.qpn,
            remote_qkey: remote.qkey,
        })
    }
}

/// The operation of one send-queue work request.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum SendOp {
    /// SEND.
    Send,
    /// SEND with immediate data (host order).
    SendWithImm(u32),
    /// RDMA WRITE to the remote buffer.
    Write(RemoteBuffer),
    /// RDMA WRITE with immediate data (consumes a receive at the peer).
    WriteWithImm(RemoteBuffer, u32),
    /// RDMA READ from the remote buffer.
    Read(RemoteBuffer),
    /// 64-bit compare-and-swap at the remote address; the old value lands in the local buffer.
    CompareSwap {
        /// Remote 8-byte aligned word.
        remote: RemoteBuffer,
        /// Expected value.
        compare: u64,
        /// New value.
        swap: u64,
    },
    /// 64-bit fetch-and-add at the remote address; the old value lands in the local buffer.
    FetchAdd {
        /// Remote 8-byte aligned word.
        remote: RemoteBuffer,
        /// Addend.
        add: u64,
    },
}

/// One work request for [`QueuePair::post_batch`].
#[derive(Debug)]
pub struct SendRequest<L> {
    /// What to do.
    pub op: SendOp,
    /// Local data (source, or target for READ/atomics).
    pub local: L,
}

/// A queue pair. Cheap to clone; all operations take `&self` and may run concurrently from
/// several tasks/threads.
#[derive(Clone)]
pub struct QueuePair {
    pub(crate) inner: Arc<QpInner>,
}

impl fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuePair")
            .field("qp_num", &self.inner.qp_num)
            .field("type", &self.inner.qp_type)
            .finish()
    }
}

impl QueuePair {
    /// Send-queue depth, as granted by the device (at least what the builder asked for).
    pub fn max_send_wr(&self) -> u32 {
        self.inner.max_send_wr
    }

    /// The QP number.
    pub fn qp_num(&self) -> u32 {
        self.inner.qp_num
    }

    /// The transport type.
    pub fn qp_type(&self) -> QpType {
        self.inner.qp_type
    }

    /// The protection domain.
    pub fn pd(&self) -> ProtectionDomain {
        ProtectionDomain {
            inner: self.inner.pd.clone(),
        }
    }

    fn context(&self) -> Context {
        self.pd().context()
    }

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

    /// Moves the QP to the error state: every outstanding work request completes with a
    /// flush error (their futures resolve with [`Error::Completion`]).
    pub fn set_error(&self) -> Result<()> {
        self.inner.to_error()
    }

    /// Graceful teardown: moves the QP to ERR and waits until marker work requests queued
    /// behind everything else have completed. Work queues complete in order, so by then every
    /// earlier work request has completed (mostly as flush errors) and the buffers of dropped
    /// operations are released. The receive marker (a zero-length receive, skipped with an
    /// SRQ) is posted *before* the transition: rxe does not flush receives posted to a QP that
    /// is already in ERR. The QP itself is destroyed when this and every other handle to it are
    /// gone (dropping without `close` also moves it to ERR and destroys it; buffers parked for
    /// its unfinished work requests are then released no later than when the CQ is destroyed).
    pub async fn close(self) -> Result<()> {
        let recv = self.target().ok().map(|t| t.recv(()));
        self.set_error()?;
        let send = self.post_one(SendOp::Send, ());
        // Any outcome of a marker (flush error, or a late message landing in the zero-length
        // receive) proves the queue ahead of it has drained; a failed post means nothing was
        // queued on that side.
        let _ = send.await;
        if let Some(recv) = recv {
            let _ = recv.await;
        }
        Ok(())
    }

    fn target(&self) -> Result<RecvTarget> {
        if self.inner.srq.is_some() {
            return Err(Error::InvalidArgument(
                "this QP receives through an SRQ: post receives there".into(),
            ));
        }
        Ok(RecvTarget::Qp(self.inner.clone()))
    }

    /// Posts a receive into `buf`; resolves when a message landed (`byte_len` in the
    /// completion).
    pub fn recv<L: LocalBufferMut>(&self, buf: L) -> OpFuture<L> {
        match self.target() {
            Ok(t) => t.recv(buf),
            Err(e) => OpFuture::failed(e, buf),
        }
    }

    /// A stream of received messages over `count` pool buffers of `size` bytes each.
    pub fn recv_stream(&self, count: u32, size: usize) -> Result<RecvStream> {
        self.target()?.stream(&self.pd(), count, size)
    }

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
        self.post_one(SendOp::FetchAdd { remote, add }, buf)
    }

    /// SEND with the data inlined in the work request (copied at post time; no memory region
    /// needed). At most the QP's `max_inline_data` bytes.
    pub fn send_inline(&self, data: &[u8]) -> OpFuture<()> {
        if data.len() > self.inner.max_inline as usize {
            return OpFuture::failed(
                Error::InvalidArgument(format!(
                    "{} bytes exceed max_inline_data {}",
                    data.len(),
                    self.inner.max_inline
                )),
                (),
            );
        }
        let sge = (data.as_ptr() as u64, data.len() as u32, 0);
        let cq = &self.inner.send_cq;
        let op = match self.inner.send_slots.reserve() {
            Ok(op) => op,
            Err(e) => return OpFuture::failed(e.into(), ()),
        };
        // SAFETY: with IBV_SEND_INLINE the provider copies the data during ibv_post_send;
        // `data` is borrowed for the whole call.
        let r = unsafe { self.post_raw(&SendOp::Send, op.wr_id().into_raw(), sge, true, None) };
        match r {
            Ok(()) => OpFuture::posted(op, (), cq.clone()),
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
    pub fn send_inline_unsignaled(&self, data: &[u8]) -> Result<()> {
        if data.len() > self.inner.max_inline as usize {
            return Err(Error::InvalidArgument(format!(
                "{} bytes exceed max_inline_data {}",
                data.len(),
                self.inner.max_inline
            )));
        }
        let sge = (data.as_ptr() as u64, data.len() as u32, 0);
        let n = self.inner.unsignaled.fetch_add(1, Ordering::Relaxed) + 1;
        if n < self.inner.signal_every {
            // SAFETY: inline: the provider copies `data` during the call.
            let r = unsafe { self.post_raw(&SendOp::Send, UNSIGNALED_WR_ID, sge, true, None) };
            if r.is_err() {
                self.inner.unsignaled.fetch_sub(1, Ordering::Relaxed);
            }
            return r;
        }
        // This one retires the ones before it: signaled, its completion consumed by the
        // dispatcher (an abandoned slot holding nothing). Should reserving or posting fail,
        // the count stays up and the next call tries again.
        let op = self.inner.send_slots.reserve()?;
        // SAFETY: inline, as above.
        let r = unsafe { self.post_raw(&SendOp::Send, op.wr_id().into_raw(), sge, true, None) };
        match r {
            Ok(()) => {
                self.inner.unsignaled.store(0, Ordering::Relaxed);
                op.abandon(Parked::None);
                Ok(())
            }
            Err(e) => {
                op.cancel_unposted();
                Err(e)
            }
        }
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
        let cq = &self.inner.send_cq;
        let o = match self.inner.send_slots.reserve() {
            Ok(o) => o,
            Err(e) => return OpFuture::failed(e.into(), res),
        };
        // SAFETY: the buffer and the AH are owned by the returned future until completion.
        let r = unsafe { self.post_raw(&op, o.wr_id().into_raw(), sge, false, Some(&res.1)) };
        match r {
            Ok(()) => OpFuture::posted(o, res, cq.clone()),
            Err(e) => {
                o.cancel_unposted();
                OpFuture::failed(e, res)
            }
        }
    }

    fn post_one<L: LocalBuffer>(&self, op: SendOp, buf: L) -> OpFuture<L> {
        if let Err(e) = validate(&op, buf.sge().1) {
            return OpFuture::failed(e, buf);
        }
        let cq = &self.inner.send_cq;
        let o = match self.inner.send_slots.reserve() {
            Ok(o) => o,
            Err(e) => return OpFuture::failed(e.into(), buf),
        };
        // SAFETY: `buf` is moved into the returned future, which keeps it (or parks it in the
        // slot when dropped) until the completion arrives.
        let r = unsafe { self.post_raw(&op, o.wr_id().into_raw(), buf.sge(), false, None) };
        match r {
            Ok(()) => OpFuture::posted(o, buf, cq.clone()),
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
        let mut wr = build_wr(op, wr_id, &mut sge, inline, ah);
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
            let checked = validate(&r.op, sge.1)
                .and_then(|()| self.inner.send_slots.reserve().map_err(Error::from));
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
        let mut wrs: Vec<ffi::ibv_send_wr> = Vec::with_capacity(ops.len());
        for (i, kind) in kinds.iter().enumerate() {
            let sge: *mut ffi::ibv_sge = &mut sges[i];
            // SAFETY: `sges` is not resized after this point, so the pointer stays valid.
            wrs.push(build_wr(
                kind,
                ops[i].wr_id().into_raw(),
                unsafe { &mut *sge },
                false,
                None,
            ));
        }
        for i in 1..wrs.len() {
            let next: *mut ffi::ibv_send_wr = &mut wrs[i];
            wrs[i - 1].next = next;
        }
        let mut posted = wrs.len();
        let mut err = None;
        if !wrs.is_empty() {
            let mut bad: *mut ffi::ibv_send_wr = std::ptr::null_mut();
            // SAFETY: the chain and its SGEs are valid for the call; every buffer is moved into
            // its future, which keeps it until completion.
            let rc = unsafe { ffi::ibv_post_send(self.inner.as_ptr(), wrs.as_mut_ptr(), &mut bad) };
            if rc != 0 {
                let base = wrs.as_ptr() as usize;
                let size = std::mem::size_of::<ffi::ibv_send_wr>();
                posted = if bad.is_null() {
                    0
                } else {
                    ((bad as usize).saturating_sub(base) / size).min(wrs.len())
                };
                err = Some((rc, self.inner.qp_num));
            }
        }
        let mut head = Vec::with_capacity(n);
        for (i, (o, b)) in ops.into_iter().zip(bufs).enumerate() {
            if i < posted {
                head.push(OpFuture::posted(o, b, cq.clone()));
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

fn validate(op: &SendOp, len: u32) -> Result<()> {
    match op {
        SendOp::Write(r) | SendOp::WriteWithImm(r, _) | SendOp::Read(r) if len > r.len => {
            Err(Error::InvalidArgument(format!(
                "local length {len} exceeds remote buffer of {}",
                r.len
            )))
        }
        SendOp::CompareSwap { remote, .. } | SendOp::FetchAdd { remote, .. }
            if len != 8 || remote.len < 8 || remote.addr % 8 != 0 =>
        {
            Err(Error::InvalidArgument(
                "atomics need an 8-byte local buffer and an 8-byte aligned remote word".into(),
            ))
        }
        _ => Ok(()),
    }
}

fn build_wr(
    op: &SendOp,
    wr_id: u64,
    sge: &mut ffi::ibv_sge,
    inline: bool,
    ah: Option<&AddressHandle>,
) -> ffi::ibv_send_wr {
    use ffi::ibv_wr_opcode as W;
    // SAFETY: ibv_send_wr is plain C data (pointers, integers, unions of them); all-zero is a
    // valid value.
    let mut wr: ffi::ibv_send_wr = unsafe { std::mem::zeroed() };
    wr.wr_id = wr_id;
    wr.num_sge = i32::from(sge.length > 0);
    wr.sg_list = sge;
    // Every request asks for a completion except the unsignaled ones, which carry the id that
    // names no slot (`sq_sig_all` is 0).
    let mut flags = if wr_id == UNSIGNALED_WR_ID {
        0
    } else {
        ffi::ibv_send_flags::IBV_SEND_SIGNALED.0
    };
    if inline {
        flags |= ffi::ibv_send_flags::IBV_SEND_INLINE.0;
    }
    wr.send_flags = flags;
    let rdma = |r: &RemoteBuffer| ffi::rdma_t {
        remote_addr: r.addr,
        rkey: r.rkey,
    };
    match *op {
        SendOp::Send => wr.opcode = W::IBV_WR_SEND,
        SendOp::SendWithImm(imm) => {
            wr.opcode = W::IBV_WR_SEND_WITH_IMM;
            wr.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
        }
        SendOp::Write(r) => {
            wr.opcode = W::IBV_WR_RDMA_WRITE;
            wr.wr.rdma = rdma(&r);
        }
        SendOp::WriteWithImm(r, imm) => {
            wr.opcode = W::IBV_WR_RDMA_WRITE_WITH_IMM;
            wr.wr.rdma = rdma(&r);
            wr.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
        }
        SendOp::Read(r) => {
            wr.opcode = W::IBV_WR_RDMA_READ;
            wr.wr.rdma = rdma(&r);
        }
        SendOp::CompareSwap {
            remote,
            compare,
            swap,
        } => {
            wr.opcode = W::IBV_WR_ATOMIC_CMP_AND_SWP;
            wr.wr.atomic = ffi::atomic_t {
                remote_addr: remote.addr,
                compare_add: compare,
                swap,
                rkey: remote.rkey,
            };
        }
        SendOp::FetchAdd { remote, add } => {
            wr.opcode = W::IBV_WR_ATOMIC_FETCH_AND_ADD;
            wr.wr.atomic = ffi::atomic_t {
                remote_addr: remote.addr,
                compare_add: add,
                swap: 0,
                rkey: remote.rkey,
            };
        }
    }
    if let Some(ah) = ah {
        wr.wr.ud = ffi::ud_t {
            ah: ah.inner.ah.as_ptr(),
            remote_qpn: ah.remote_qpn,
            remote_qkey: ah.remote_qkey,
        };
    }
    wr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qp_info_roundtrip() {
        let i = QpInfo {
            qpn: 0x11,
            psn: 0xabcdef,
            lid: 7,
            mtu: Mtu::Mtu1024,
            gid: Gid::parse("::ffff:192.0.2.1").unwrap(),
            qkey: DEFAULT_QKEY,
        };
        let b = i.to_bytes();
        assert_eq!(b.len(), QpInfo::WIRE_LEN);
        assert_eq!(QpInfo::from_bytes(&b).unwrap(), i);
        assert!(QpInfo::from_bytes(&b[..35]).is_err());
        let mut bad = b;
        bad[0] = b'X';
        assert!(QpInfo::from_bytes(&bad).is_err());
        let mut bad = b;
        bad[3] = 9;
        assert!(QpInfo::from_bytes(&bad).is_err());
        let mut bad = b;
        bad[8] = 1; // psn > 24 bits
        assert!(QpInfo::from_bytes(&bad).is_err());
    }

    #[test]
    fn validation() {
        let r = RemoteBuffer {
            addr: 0x1000,
            rkey: 1,
            len: 16,
        };
        assert!(validate(&SendOp::Write(r), 16).is_ok());
        assert!(validate(&SendOp::Write(r), 17).is_err());
        assert!(validate(&SendOp::FetchAdd { remote: r, add: 1 }, 8).is_ok());
        assert!(validate(&SendOp::FetchAdd { remote: r, add: 1 }, 4).is_err());
        let odd = RemoteBuffer { addr: 0x1004, ..r };
        assert!(validate(
            &SendOp::FetchAdd {
                remote: odd,
                add: 1
            },
            8
        )
        .is_err());
    }

    #[test]
    fn wr_encoding() {
        let mut sge = ffi::ibv_sge {
            addr: 1,
            length: 0,
            lkey: 2,
        };
        let wr = build_wr(&SendOp::SendWithImm(0x01020304), 9, &mut sge, true, None);
        assert_eq!(wr.wr_id, 9);
        assert_eq!(wr.num_sge, 0);
        assert_eq!(wr.opcode, ffi::ibv_wr_opcode::IBV_WR_SEND_WITH_IMM);
        // SAFETY: imm_data was the member written; both members are plain u32s.
        let imm = unsafe { wr.imm_data_invalidated_rkey_union.imm_data };
        assert_eq!(imm, 0x01020304u32.to_be());
        assert_ne!(wr.send_flags & ffi::ibv_send_flags::IBV_SEND_INLINE.0, 0);
        let signaled = ffi::ibv_send_flags::IBV_SEND_SIGNALED.0;
        assert_ne!(wr.send_flags & signaled, 0);
        let wr = build_wr(&SendOp::Send, UNSIGNALED_WR_ID, &mut sge, true, None);
        assert_eq!(
            wr.send_flags & signaled,
            0,
            "the unsignaled id asks for no completion"
        );
    }
}
