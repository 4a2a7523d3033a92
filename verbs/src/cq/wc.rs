//! Converting `ibv_wc` into core's plain [`Completion`].

use std::cell::UnsafeCell;

use rdma_sys as ffi;
use tokio_rdma_core::{Completion, WcFlags, WcOpcode, WcStatus};

use super::config::MAX_BATCH;

/// A CQ's room for one `ibv_poll_cq` batch, zeroed once when the CQ is created and reused by
/// every poll. A provider need not write every field of an entry (of a failed completion only
/// `wr_id`, `status`, `qp_num` and `vendor_err` are defined), and [`convert_wc`] reads them
/// all: in a fresh uninitialised array the others could be uninitialised memory; here they
/// are at worst stale values of an earlier entry.
pub(crate) struct WcBuffer(UnsafeCell<[ffi::ibv_wc; MAX_BATCH]>);

// SAFETY: the buffer is only reached through `as_mut_ptr`, and its one user (the CQ) touches
// it only while holding its draining flag, which one thread at a time can hold.
unsafe impl Sync for WcBuffer {}

impl WcBuffer {
    pub(crate) fn new() -> Self {
        // SAFETY: `ibv_wc` is integers and a union of two `u32`s: all zeroes is a valid value.
        Self(UnsafeCell::new(unsafe { std::mem::zeroed() }))
    }

    /// The first of its [`MAX_BATCH`] entries, always initialised. Reading or writing through
    /// it needs exclusive access (the CQ's draining flag).
    pub(crate) fn as_mut_ptr(&self) -> *mut ffi::ibv_wc {
        self.0.get().cast()
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
