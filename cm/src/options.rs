//! What a connection asks for: QP sizes, CM parameters, timeouts, private data.

use std::net::SocketAddr;
use std::time::Duration;

use rdma_sys as ffi;
use tokio_rdma_verbs::DriverConfig;

/// The most private data a connect request carries on InfiniBand/RoCE (IB CM REQ: 92 bytes,
/// of which librdmacm's header takes 36).
pub const MAX_CONNECT_PRIVATE_DATA: usize = 56;
/// The most private data an accept (REP) carries on InfiniBand/RoCE.
pub const MAX_ACCEPT_PRIVATE_DATA: usize = 196;
/// The most private data a reject (REJ) carries on InfiniBand/RoCE.
pub const MAX_REJECT_PRIVATE_DATA: usize = 148;

/// Connection parameters as a connect request or response carries them (`rdma_conn_param`),
/// from the receiving side's point of view: on a request, `responder_resources` is how many
/// RDMA READs/atomics the requester wants to have outstanding against us.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnParams {
    /// Outstanding RDMA READs/atomics this side may issue.
    pub initiator_depth: u8,
    /// Outstanding RDMA READs/atomics this side must accept.
    pub responder_resources: u8,
    /// Transport retries (0-7).
    pub retry_count: u8,
    /// RNR retries (0-7, 7 = infinite).
    pub rnr_retry_count: u8,
    /// Whether the peer's QP does end-to-end flow control.
    pub flow_control: bool,
    /// Whether the peer's QP receives through a shared receive queue.
    pub srq: bool,
    /// The peer's QP number.
    pub qp_num: u32,
}

impl ConnParams {
    pub(crate) fn from_raw(p: &ffi::rdma_conn_param) -> Self {
        Self {
            initiator_depth: p.initiator_depth,
            responder_resources: p.responder_resources,
            retry_count: p.retry_count,
            rnr_retry_count: p.rnr_retry_count,
            flow_control: p.flow_control != 0,
            srq: p.srq != 0,
            qp_num: p.qp_num & 0xff_ffff,
        }
    }
}

/// Sizes of a connection's queue pair and completion queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QpOptions {
    /// Send-queue depth (default 64).
    pub max_send_wr: u32,
    /// Receive-queue depth (default 64).
    pub max_recv_wr: u32,
    /// Inline data bytes (default 64).
    pub max_inline_data: u32,
    /// Entries of the connection's CQ (default: send + receive depth, which every completion
    /// needs).
    pub cq_entries: Option<u32>,
    /// Give the connection a completion channel (and driver task) of its own with this
    /// tuning, e.g. `spin_iterations: 0, inline_polls: 1` for event mode, where nothing
    /// spins. Default `None`: the CQ is on the channel every connection on the device shares
    /// in this runtime, with [`DriverConfig::default`] (one fd and one driver task for all).
    pub driver: Option<DriverConfig>,
    /// How long a peer whose SEND found no receive posted here waits before it retries (the
    /// RNR NAK timer, IB encoding: 1 = 0.01 ms ... 31 = 491.52 ms, 0 = 655.36 ms). Default
    /// 12 (0.64 ms), as perftest and most verbs applications set it. The kernel CM leaves it
    /// at 0 for the QPs it describes: one receive posted a moment late then stalls the peer
    /// for 655 ms.
    pub min_rnr_timer: u8,
}

impl Default for QpOptions {
    fn default() -> Self {
        Self {
            max_send_wr: 64,
            max_recv_wr: 64,
            max_inline_data: 64,
            cq_entries: None,
            driver: None,
            min_rnr_timer: 12,
        }
    }
}

impl QpOptions {
    pub(crate) fn cq_entries(&self) -> u32 {
        self.cq_entries
            .unwrap_or(self.max_send_wr.saturating_add(self.max_recv_wr))
    }
}

/// Options of [`Listener::bind_with`](crate::Listener::bind_with).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenOptions {
    /// Connect requests the kernel queues before they are accepted (`rdma_listen`'s backlog;
    /// default 128). The listener's own queue holds as many; a request beyond both is
    /// rejected.
    pub backlog: u32,
}

impl Default for ListenOptions {
    fn default() -> Self {
        Self { backlog: 128 }
    }
}

/// Options of [`IncomingRequest::accept`](crate::IncomingRequest::accept).
#[derive(Clone, Debug)]
pub struct AcceptOptions {
    /// Private data sent with the accept (at most [`MAX_ACCEPT_PRIVATE_DATA`] bytes).
    pub private_data: Vec<u8>,
    /// The QP and CQ.
    pub qp: QpOptions,
    /// RDMA READs/atomics the peer may have outstanding against us (default: what it asked,
    /// capped by the device).
    pub responder_resources: Option<u8>,
    /// RDMA READs/atomics we may have outstanding (default: what the peer offered, capped by
    /// the device).
    pub initiator_depth: Option<u8>,
    /// RNR retries we ask of the peer (default 7, infinite).
    pub rnr_retry_count: u8,
    /// Whether `accept` waits for ESTABLISHED (default). Without it, the connection is handed
    /// out right after `rdma_accept`, and ESTABLISHED arrives as
    /// [`ConnectionEvent::Established`](crate::ConnectionEvent::Established); work posted
    /// before it may be retried by the transport.
    pub wait_established: bool,
    /// Bound of the wait for ESTABLISHED (default 10 s). A timer of ours: when it passes
    /// while the event channel still holds events nobody has routed (the process stalled, and
    /// the answer may be among them), the wait goes on until they are routed, for at most this
    /// long again.
    pub timeout: Duration,
}

impl Default for AcceptOptions {
    fn default() -> Self {
        Self {
            private_data: Vec::new(),
            qp: QpOptions::default(),
            responder_resources: None,
            initiator_depth: None,
            rnr_retry_count: 7,
            wait_established: true,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Options of [`connect`](crate::connect).
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Private data sent with the request (at most [`MAX_CONNECT_PRIVATE_DATA`] bytes).
    pub private_data: Vec<u8>,
    /// The QP and CQ.
    pub qp: QpOptions,
    /// Source address to bind to (default: chosen by the route).
    pub src_addr: Option<SocketAddr>,
    /// Bound of address resolution (default 2 s), given to the kernel (librdmacm's
    /// `timeout_ms`): the kernel's answer, not a timer of ours, ends the step, so a stall of
    /// this process cannot fail a resolution the kernel finished. [`Self::timeout`] bounds it
    /// too (should an answer be late or lost).
    pub resolve_addr_timeout: Duration,
    /// Bound of route resolution (default 2 s), given to the kernel as above. On RoCE and
    /// iWARP the route is known at once and the bound is unused; on InfiniBand the path query
    /// can take longer when the kernel asks ibacm first.
    pub resolve_route_timeout: Duration,
    /// Bound of the handshake, from `rdma_connect` to established (default 10 s). A timer of
    /// ours, extended like [`AcceptOptions::timeout`] while the channel holds events nobody
    /// has routed.
    pub connect_timeout: Duration,
    /// Bound of the whole attempt (default 15 s), extended in the same way.
    pub timeout: Duration,
    /// RDMA READs/atomics we may have outstanding (default 16, capped by the device).
    pub initiator_depth: u8,
    /// RDMA READs/atomics the peer may have outstanding against us (default 16, capped by
    /// the device).
    pub responder_resources: u8,
    /// Transport retries (default 6; 7 is the most).
    pub retry_count: u8,
    /// RNR retries (default 7, infinite: a receiver that is slow to post is waited for).
    pub rnr_retry_count: u8,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            private_data: Vec::new(),
            qp: QpOptions::default(),
            src_addr: None,
            resolve_addr_timeout: Duration::from_secs(2),
            resolve_route_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(15),
            initiator_depth: 16,
            responder_resources: 16,
            retry_count: 6,
            rnr_retry_count: 7,
        }
    }
}

/// Builds an `rdma_conn_param` pointing into `private_data` (valid while it lives).
pub(crate) fn conn_param(
    private_data: &[u8],
    initiator_depth: u8,
    responder_resources: u8,
    retry_count: u8,
    rnr_retry_count: u8,
    qp_num: u32,
) -> ffi::rdma_conn_param {
    ffi::rdma_conn_param {
        private_data: if private_data.is_empty() {
            std::ptr::null()
        } else {
            private_data.as_ptr().cast()
        },
        private_data_len: private_data.len() as u8,
        responder_resources,
        initiator_depth,
        flow_control: 1,
        retry_count: retry_count.min(7),
        rnr_retry_count: rnr_retry_count.min(7),
        srq: 0,
        qp_num,
    }
}

/// Refuses private data longer than `max` (librdmacm would fail with a bare EINVAL).
pub(crate) fn check_private_data(data: &[u8], max: usize, what: &str) -> crate::Result<()> {
    if data.len() > max {
        return Err(crate::Error::InvalidArgument(format!(
            "{what} private data is {} bytes; InfiniBand/RoCE carries at most {max}",
            data.len()
        )));
    }
    Ok(())
}
