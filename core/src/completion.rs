//! Plain-data work completions, mirroring `struct ibv_wc`.

/// Status of a work completion (`enum ibv_wc_status`); values match the C enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WcStatus {
    /// `IBV_WC_SUCCESS` (0).
    Success,
    /// `IBV_WC_LOC_LEN_ERR` (1).
    LocLenErr,
    /// `IBV_WC_LOC_QP_OP_ERR` (2).
    LocQpOpErr,
    /// `IBV_WC_LOC_EEC_OP_ERR` (3).
    LocEecOpErr,
    /// `IBV_WC_LOC_PROT_ERR` (4).
    LocProtErr,
    /// `IBV_WC_WR_FLUSH_ERR` (5): the QP went to the error state; the WR was flushed.
    WrFlushErr,
    /// `IBV_WC_MW_BIND_ERR` (6).
    MwBindErr,
    /// `IBV_WC_BAD_RESP_ERR` (7).
    BadRespErr,
    /// `IBV_WC_LOC_ACCESS_ERR` (8).
    LocAccessErr,
    /// `IBV_WC_REM_INV_REQ_ERR` (9).
    RemInvReqErr,
    /// `IBV_WC_REM_ACCESS_ERR` (10).
    RemAccessErr,
    /// `IBV_WC_REM_OP_ERR` (11).
    RemOpErr,
    /// `IBV_WC_RETRY_EXC_ERR` (12).
    RetryExcErr,
    /// `IBV_WC_RNR_RETRY_EXC_ERR` (13).
    RnrRetryExcErr,
    /// `IBV_WC_LOC_RDD_VIOL_ERR` (14).
    LocRddViolErr,
    /// `IBV_WC_REM_INV_RD_REQ_ERR` (15).
    RemInvRdReqErr,
    /// `IBV_WC_REM_ABORT_ERR` (16).
    RemAbortErr,
    /// `IBV_WC_INV_EECN_ERR` (17).
    InvEecnErr,
    /// `IBV_WC_INV_EEC_STATE_ERR` (18).
    InvEecStateErr,
    /// `IBV_WC_FATAL_ERR` (19).
    FatalErr,
    /// `IBV_WC_RESP_TIMEOUT_ERR` (20).
    RespTimeoutErr,
    /// `IBV_WC_GENERAL_ERR` (21).
    GeneralErr,
    /// `IBV_WC_TM_ERR` (22).
    TmErr,
    /// `IBV_WC_TM_RNDV_INCOMPLETE` (23).
    TmRndvIncomplete,
    /// Any other raw value.
    Unknown(u32),
}

const STATUSES: [WcStatus; 24] = [
    WcStatus::Success,
    WcStatus::LocLenErr,
    WcStatus::LocQpOpErr,
    WcStatus::LocEecOpErr,
    WcStatus::LocProtErr,
    WcStatus::WrFlushErr,
    WcStatus::MwBindErr,
    WcStatus::BadRespErr,
    WcStatus::LocAccessErr,
    WcStatus::RemInvReqErr,
    WcStatus::RemAccessErr,
    WcStatus::RemOpErr,
    WcStatus::RetryExcErr,
    WcStatus::RnrRetryExcErr,
    WcStatus::LocRddViolErr,
    WcStatus::RemInvRdReqErr,
    WcStatus::RemAbortErr,
    WcStatus::InvEecnErr,
    WcStatus::InvEecStateErr,
    WcStatus::FatalErr,
    WcStatus::RespTimeoutErr,
    WcStatus::GeneralErr,
    WcStatus::TmErr,
    WcStatus::TmRndvIncomplete,
];

impl WcStatus {
    /// From the raw `ibv_wc_status` value.
    pub fn from_raw(raw: u32) -> Self {
        STATUSES
            .get(raw as usize)
            .copied()
            .unwrap_or(WcStatus::Unknown(raw))
    }

    /// The raw `ibv_wc_status` value.
    pub fn as_raw(self) -> u32 {
        match self {
            WcStatus::Unknown(raw) => raw,
            known => STATUSES.iter().position(|s| *s == known).unwrap_or(0) as u32,
        }
    }
}

/// Opcode of a work completion (`enum ibv_wc_opcode`); values match the C enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WcOpcode {
    /// `IBV_WC_SEND` (0).
    Send,
    /// `IBV_WC_RDMA_WRITE` (1).
    RdmaWrite,
    /// `IBV_WC_RDMA_READ` (2).
    RdmaRead,
    /// `IBV_WC_COMP_SWAP` (3).
    CompSwap,
    /// `IBV_WC_FETCH_ADD` (4).
    FetchAdd,
    /// `IBV_WC_BIND_MW` (5).
    BindMw,
    /// `IBV_WC_LOCAL_INV` (6).
    LocalInv,
    /// `IBV_WC_TSO` (7).
    Tso,
    /// `IBV_WC_RECV` (128).
    Recv,
    /// `IBV_WC_RECV_RDMA_WITH_IMM` (129).
    RecvRdmaWithImm,
    /// Any other raw value.
    Unknown(u32),
}

impl WcOpcode {
    /// From the raw `ibv_wc_opcode` value.
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            0 => Self::Send,
            1 => Self::RdmaWrite,
            2 => Self::RdmaRead,
            3 => Self::CompSwap,
            4 => Self::FetchAdd,
            5 => Self::BindMw,
            6 => Self::LocalInv,
            7 => Self::Tso,
            128 => Self::Recv,
            129 => Self::RecvRdmaWithImm,
            other => Self::Unknown(other),
        }
    }

    /// The raw `ibv_wc_opcode` value.
    pub fn as_raw(self) -> u32 {
        match self {
            Self::Send => 0,
            Self::RdmaWrite => 1,
            Self::RdmaRead => 2,
            Self::CompSwap => 3,
            Self::FetchAdd => 4,
            Self::BindMw => 5,
            Self::LocalInv => 6,
            Self::Tso => 7,
            Self::Recv => 128,
            Self::RecvRdmaWithImm => 129,
            Self::Unknown(raw) => raw,
        }
    }

    /// Whether this completes a receive work request (`IBV_WC_RECV` bit, 128, is set).
    pub fn is_receive(self) -> bool {
        self.as_raw() & 128 != 0
    }
}

/// `ibv_wc_flags` bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WcFlags(u32);

impl WcFlags {
    /// `IBV_WC_GRH`: a GRH is present (UD).
    pub const GRH: Self = Self(1);
    /// `IBV_WC_WITH_IMM`: `imm_data` is valid.
    pub const WITH_IMM: Self = Self(2);
    /// `IBV_WC_IP_CSUM_OK`.
    pub const IP_CSUM_OK: Self = Self(4);
    /// `IBV_WC_WITH_INV`: `invalidated_rkey` is valid.
    pub const WITH_INV: Self = Self(8);
    /// `IBV_WC_TM_SYNC_REQ`.
    pub const TM_SYNC_REQ: Self = Self(16);
    /// `IBV_WC_TM_MATCH`.
    pub const TM_MATCH: Self = Self(32);
    /// `IBV_WC_TM_DATA_VALID`.
    pub const TM_DATA_VALID: Self = Self(64);

    /// Wraps raw bits, keeping unknown ones.
    pub const fn from_bits_retain(bits: u32) -> Self {
        Self(bits)
    }

    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// No bits.
    pub const fn empty() -> Self {
        Self(0)
    }
}

impl std::ops::BitOr for WcFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// One work completion, copied out of `struct ibv_wc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The work request id (a [`WrId`](crate::WrId) for requests posted through a dispatcher).
    pub wr_id: u64,
    /// Completion status.
    pub status: WcStatus,
    /// Opcode (only meaningful when `status` is `Success`).
    pub opcode: WcOpcode,
    /// Vendor-specific error syndrome.
    pub vendor_err: u32,
    /// Bytes transferred (receives, RDMA READ, atomics).
    pub byte_len: u32,
    /// Immediate data, host byte order; `Some` only when `wc_flags` has `WITH_IMM`.
    pub imm_data: Option<u32>,
    /// Invalidated rkey; `Some` only when `wc_flags` has `WITH_INV`.
    pub invalidated_rkey: Option<u32>,
    /// Local QP number.
    pub qp_num: u32,
    /// Remote QP number (UD).
    pub src_qp: u32,
    /// Completion flags.
    pub wc_flags: WcFlags,
    /// P_Key index (GSI QPs).
    pub pkey_index: u16,
    /// Source LID (UD).
    pub slid: u16,
    /// Service level (UD).
    pub sl: u8,
    /// Destination LID path bits (UD).
    pub dlid_path_bits: u8,
}

impl Completion {
    /// Whether `status` is `Success`.
    pub fn is_success(&self) -> bool {
        self.status == WcStatus::Success
    }

    /// All-zero completion (`wr_id` 0, `Success`, `Send`, no flags).
    pub const fn zeroed() -> Self {
        Self {
            wr_id: 0,
            status: WcStatus::Success,
            opcode: WcOpcode::Send,
            vendor_err: 0,
            byte_len: 0,
            imm_data: None,
            invalidated_rkey: None,
            qp_num: 0,
            src_qp: 0,
            wc_flags: WcFlags(0),
            pkey_index: 0,
            slid: 0,
            sl: 0,
            dlid_path_bits: 0,
        }
    }
}

impl Default for Completion {
    fn default() -> Self {
        Self::zeroed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips() {
        for raw in 0..40 {
            assert_eq!(WcStatus::from_raw(raw).as_raw(), raw);
        }
        assert_eq!(WcStatus::from_raw(5), WcStatus::WrFlushErr);
        assert_eq!(WcStatus::from_raw(23), WcStatus::TmRndvIncomplete);
        assert_eq!(WcStatus::from_raw(24), WcStatus::Unknown(24));
    }

    #[test]
    fn opcode_round_trips() {
        for raw in (0..10).chain(126..132) {
            assert_eq!(WcOpcode::from_raw(raw).as_raw(), raw);
        }
        assert!(WcOpcode::Recv.is_receive());
        assert!(WcOpcode::RecvRdmaWithImm.is_receive());
        assert!(!WcOpcode::RdmaWrite.is_receive());
    }

    #[test]
    fn flags() {
        let f = WcFlags::WITH_IMM | WcFlags::GRH;
        assert!(f.contains(WcFlags::WITH_IMM));
        assert!(!f.contains(WcFlags::WITH_INV));
        assert_eq!(WcFlags::from_bits_retain(0x80).bits(), 0x80);
    }
}
