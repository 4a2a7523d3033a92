//! What a peer needs to connect to a queue pair ([`QpInfo`]), the options of the state
//! transitions ([`ConnectOptions`]) and the address vector built from them.

use rdma_sys as ffi;

use crate::device::{Context, Gid, Mtu};
use crate::error::{Error, Result};
use crate::mr::Access;

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
///
/// # How long a failure takes to surface (RC)
///
/// * **Dead or unreachable peer.** Each request waits for an ACK for the *local ACK timeout*,
///   4.096 µs × 2^[`timeout`](Self::timeout) per attempt, and is sent at most
///   [`retry_cnt`](Self::retry_cnt) + 1 times; then it completes with
///   [`WcStatus::RetryExcErr`](crate::WcStatus::RetryExcErr) and the QP enters the error
///   state (its other work requests are flushed). The defaults (timeout 14 = 67.1 ms,
///   retry_cnt 6) turn a dead peer into an error after 7 × 67.1 ms ≈ 0.47 s nominal; the
///   spec lets an HCA's timer run up to 4× long, so allow up to about 2 s. `retry_cnt` 7 is
///   **not** used by default: soft-RoCE (rxe) treats 7 as "retry forever", so a send to a
///   destroyed peer QP never completed.
/// * **Alive peer with no receive posted.** The peer answers with RNR NAKs; the request is
///   retried after the peer's RNR timer (its [`min_rnr_timer`](Self::min_rnr_timer)) up to
///   [`rnr_retry`](Self::rnr_retry) times, then fails with
///   [`WcStatus::RnrRetryExcErr`](crate::WcStatus::RnrRetryExcErr). The default is 7, which
///   means **infinite**: a send to a peer that is alive but never posts a receive waits
///   forever. It is kept because receiver-not-ready is flow control, not failure: with a
///   finite count a receiver that is merely slow to repost (a busy task, a paused process)
///   would kill the connection (the QP goes to the error state for good). A dead peer sends
///   no RNR NAKs, so it is still caught by `retry_cnt`. Put a timeout around the future (e.g.
///   `tokio::time::timeout`) where a stuck receiver must become an error, or set a finite
///   `rnr_retry` (each retry waits the peer's RNR timer, e.g. 12 = 0.64 ms ... 0 = 655 ms).
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
    /// Local ACK timeout exponent (RC): each transmission waits 4.096 µs × 2^timeout for its
    /// ACK (0 = wait forever; 14 = 67.1 ms, the default; 31 max). See the type docs for the
    /// total time to an error.
    pub timeout: u8,
    /// Transport retries (RC, 0..=7): a request is sent at most `retry_cnt + 1` times before
    /// it fails with `RetryExcErr`. Default 6; avoid 7, which rxe treats as infinite.
    pub retry_cnt: u8,
    /// RNR retries (RC, 0..=7; 7 = infinite, the default): how often a request the peer
    /// answered "receiver not ready" is retried before it fails with `RnrRetryExcErr`. With 7
    /// a send to a live peer that never posts a receive waits forever (see the type docs).
    pub rnr_retry: u8,
    /// Minimal RNR NAK timer code we advertise: how long a sender waits before retrying after
    /// our RNR NAK (12 = 0.64 ms).
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
            // Not 7: rxe retries forever with 7, so a dead peer would hang every operation.
            retry_cnt: 6,
            // Infinite: RNR is flow control (see the type docs).
            rnr_retry: 7,
            min_rnr_timer: 12,
            max_rd_atomic: 4,
            qkey: DEFAULT_QKEY,
            hop_limit: 64,
        }
    }
}

impl ConnectOptions {
    pub(crate) fn gid_index(&self, ctx: &Context) -> Result<u32> {
        match self.gid_index {
            Some(i) => Ok(i),
            None => ctx.default_gid_index(self.port),
        }
    }
}

/// Builds the `ibv_ah_attr` for reaching `remote` from `port`/`sgid_index`.
pub(crate) fn ah_attr(
    remote: &QpInfo,
    port: u8,
    sgid_index: u32,
    hop_limit: u8,
) -> Result<ffi::ibv_ah_attr> {
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

    /// The documented bound: a dead peer fails within (retry_cnt + 1) × 4.096 µs × 2^timeout
    /// ≈ 0.47 s with the defaults, and retry_cnt is never rxe's "forever" value 7.
    #[test]
    fn default_dead_peer_bound() {
        let o = ConnectOptions::default();
        assert!(o.retry_cnt < 7, "rxe retries forever with 7");
        let per_attempt_ns = 4096u64 << o.timeout;
        let total_ms = (u64::from(o.retry_cnt) + 1) * per_attempt_ns / 1_000_000;
        assert_eq!(total_ms, 469, "the figure in the docs");
        assert_eq!(o.rnr_retry, 7, "infinite RNR retries, documented");
    }
}
