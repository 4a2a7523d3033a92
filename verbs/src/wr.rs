//! Work requests: what a send-queue operation is ([`SendOp`]), its validation and its
//! encoding as an `ibv_send_wr`. Pure functions: host-tested without a device.

use rdma_sys as ffi;

use crate::ah::AddressHandle;
use crate::cq::UNSIGNALED_WR_ID;
use crate::error::{Error, Result};
use crate::mr::RemoteBuffer;

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

pub(crate) fn validate(op: &SendOp, len: u32) -> Result<()> {
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

pub(crate) fn build_wr(
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
        wr.wr.ud = ah.ud();
    }
    wr
}

#[cfg(test)]
mod tests {
    use super::*;

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
