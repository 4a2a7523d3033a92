//! Work requests: what a send-queue operation is ([`SendOp`]), its validation and its
//! encoding as an `ibv_send_wr`. Pure functions: host-tested without a device.

use rdma_sys as ffi;
use tokio_rdma_core::WcOpcode;

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

impl SendOp {
    /// The opcode a successful completion of this operation carries.
    pub(crate) fn wc_opcode(&self) -> WcOpcode {
        match self {
            Self::Send | Self::SendWithImm(_) => WcOpcode::Send,
            Self::Write(_) | Self::WriteWithImm(..) => WcOpcode::RdmaWrite,
            Self::Read(_) => WcOpcode::RdmaRead,
            Self::CompareSwap { .. } => WcOpcode::CompSwap,
            Self::FetchAdd { .. } => WcOpcode::FetchAdd,
        }
    }

    /// The operation's name as the verbs documentation spells it (`"RDMA READ"`, ...).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Send => "SEND",
            Self::SendWithImm(_) => "SEND with immediate",
            Self::Write(_) => "RDMA WRITE",
            Self::WriteWithImm(..) => "RDMA WRITE with immediate",
            Self::Read(_) => "RDMA READ",
            Self::CompareSwap { .. } => "atomic compare-and-swap",
            Self::FetchAdd { .. } => "atomic fetch-and-add",
        }
    }
}

/// One work request for [`QueuePair::post_batch`](crate::QueuePair::post_batch).
#[derive(Debug)]
pub struct SendRequest<L> {
    /// What to do.
    pub op: SendOp,
    /// Local data (source, or target for READ/atomics).
    pub local: L,
}

/// Checks a work request before anything is reserved or posted: whether the QP's transport
/// supports the operation, and whether the local and remote lengths fit it.
///
/// `qp_type` is the raw `ibv_qp_type` of the QP (`QpType::raw`). What each transport supports
/// (InfiniBand spec, table "Service types and operations"): RC everything; UC SEND and RDMA
/// WRITE (with or without immediate), no RDMA READ, no atomics; UD only SEND (with or without
/// immediate), and only to an address handle (`send_to`): a UD work request without one has a
/// null `wr.ud.ah`, which providers dereference (rxe and mlx5 crash the process).
/// `ud_addressed` says whether the request carries an AH.
pub(crate) fn validate(op: &SendOp, len: u32, qp_type: u32, ud_addressed: bool) -> Result<()> {
    use ffi::ibv_qp_type::{IBV_QPT_RC, IBV_QPT_UC, IBV_QPT_UD};
    let name = op.name();
    match qp_type {
        IBV_QPT_RC => {}
        IBV_QPT_UC => {
            if matches!(
                op,
                SendOp::Read(_) | SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. }
            ) {
                return Err(Error::InvalidArgument(format!(
                    "{name} needs an RC QP: UC supports only SEND and RDMA WRITE"
                )));
            }
        }
        IBV_QPT_UD => {
            if !matches!(op, SendOp::Send | SendOp::SendWithImm(_)) {
                return Err(Error::InvalidArgument(format!(
                    "{name} is not supported on a UD QP (only SEND, through send_to)"
                )));
            }
            if !ud_addressed {
                return Err(Error::InvalidArgument(format!(
                    "{name} on a UD QP needs a destination: use send_to with an AddressHandle"
                )));
            }
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "{name} on a QP of unsupported type {other}"
            )))
        }
    }
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

/// Encodes one work request with a single SGE at `sg_list` (not read here; used only when
/// `length` > 0, else the request carries no SGE). The caller keeps `*sg_list` valid until
/// the request is posted; `next` is null.
pub(crate) fn build_wr(
    op: &SendOp,
    wr_id: u64,
    sg_list: *mut ffi::ibv_sge,
    length: u32,
    inline: bool,
    ah: Option<&AddressHandle>,
) -> ffi::ibv_send_wr {
    use ffi::ibv_wr_opcode as W;
    // SAFETY: ibv_send_wr is plain C data (pointers, integers, unions of them); all-zero is a
    // valid value.
    let mut wr: ffi::ibv_send_wr = unsafe { std::mem::zeroed() };
    wr.wr_id = wr_id;
    wr.num_sge = i32::from(length > 0);
    wr.sg_list = sg_list;
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

/// Links `wrs` into one chain for a single `ibv_post_send`, `wrs[i]` using `sges[i]` as its
/// SGE list, and returns the head (null when empty).
///
/// Every pointer is derived from the two base pointers (`as_mut_ptr`) taken once here, after
/// the caller has finished building both slices, never from per-element references, so no
/// later reborrow of an element invalidates an earlier link. The chain stays valid as long
/// as the caller neither moves, resizes nor otherwise accesses `wrs` and `sges` (only
/// through the returned pointer) until the post returned.
pub(crate) fn link_chain(
    wrs: &mut [ffi::ibv_send_wr],
    sges: &mut [ffi::ibv_sge],
) -> *mut ffi::ibv_send_wr {
    assert_eq!(wrs.len(), sges.len(), "one SGE per work request");
    let n = wrs.len();
    if n == 0 {
        return std::ptr::null_mut();
    }
    let wr_base = wrs.as_mut_ptr();
    let sge_base = sges.as_mut_ptr();
    for i in 0..n {
        // SAFETY: `i < n == wrs.len() == sges.len()`: `wr_base.add(i)`, `sge_base.add(i)`
        // and (for `i + 1 < n`) `wr_base.add(i + 1)` are in bounds of the two exclusively
        // borrowed slices, and all accesses in this loop go through the base pointers.
        unsafe {
            let wr = wr_base.add(i);
            (*wr).sg_list = sge_base.add(i);
            (*wr).next = if i + 1 < n {
                wr_base.add(i + 1)
            } else {
                std::ptr::null_mut()
            };
        }
    }
    wr_base
}

#[cfg(test)]
mod tests {
    use super::*;

    use ffi::ibv_qp_type::{IBV_QPT_RC, IBV_QPT_UC, IBV_QPT_UD};

    const R: RemoteBuffer = RemoteBuffer {
        addr: 0x1000,
        rkey: 1,
        len: 16,
    };

    #[test]
    fn validation() {
        let rc = |op: &SendOp, len| validate(op, len, IBV_QPT_RC, false);
        assert!(rc(&SendOp::Write(R), 16).is_ok());
        assert!(rc(&SendOp::Write(R), 17).is_err());
        assert!(rc(&SendOp::FetchAdd { remote: R, add: 1 }, 8).is_ok());
        assert!(rc(&SendOp::FetchAdd { remote: R, add: 1 }, 4).is_err());
        let odd = RemoteBuffer { addr: 0x1004, ..R };
        assert!(rc(
            &SendOp::FetchAdd {
                remote: odd,
                add: 1
            },
            8
        )
        .is_err());
    }

    /// Which operations each transport accepts: RC all, UC SEND and WRITE, UD only an
    /// addressed SEND.
    #[test]
    fn validation_per_qp_type() {
        let all = [
            SendOp::Send,
            SendOp::SendWithImm(1),
            SendOp::Write(R),
            SendOp::WriteWithImm(R, 1),
            SendOp::Read(R),
            SendOp::CompareSwap {
                remote: R,
                compare: 0,
                swap: 1,
            },
            SendOp::FetchAdd { remote: R, add: 1 },
        ];
        let msg = |r: Result<()>| match r {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("want InvalidArgument, got {other:?}"),
        };
        for op in &all {
            assert!(validate(op, 8, IBV_QPT_RC, false).is_ok(), "RC {op:?}");
            let uc_ok = matches!(
                op,
                SendOp::Send | SendOp::SendWithImm(_) | SendOp::Write(_) | SendOp::WriteWithImm(..)
            );
            let uc = validate(op, 8, IBV_QPT_UC, false);
            assert_eq!(uc.is_ok(), uc_ok, "UC {op:?}");
            if !uc_ok {
                let m = msg(uc);
                assert!(m.contains(op.name()) && m.contains("RC"), "{m}");
            }
            let send = matches!(op, SendOp::Send | SendOp::SendWithImm(_));
            assert_eq!(validate(op, 8, IBV_QPT_UD, true).is_ok(), send, "UD {op:?}");
            // Without an address handle nothing is valid on UD (a null `wr.ud.ah` crashes
            // the provider), and the error says what to use instead.
            let m = msg(validate(op, 8, IBV_QPT_UD, false));
            assert!(m.contains("UD"), "{m}");
            if send {
                assert!(m.contains("send_to"), "{m}");
            }
        }
        assert!(validate(
            &SendOp::Send,
            8,
            ffi::ibv_qp_type::IBV_QPT_RAW_PACKET,
            false
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
        let wr = build_wr(
            &SendOp::SendWithImm(0x01020304),
            9,
            &mut sge,
            sge.length,
            true,
            None,
        );
        assert_eq!(wr.wr_id, 9);
        assert_eq!(wr.num_sge, 0);
        assert_eq!(wr.opcode, ffi::ibv_wr_opcode::IBV_WR_SEND_WITH_IMM);
        // SAFETY: imm_data was the member written; both members are plain u32s.
        let imm = unsafe { wr.imm_data_invalidated_rkey_union.imm_data };
        assert_eq!(imm, 0x01020304u32.to_be());
        assert_ne!(wr.send_flags & ffi::ibv_send_flags::IBV_SEND_INLINE.0, 0);
        let signaled = ffi::ibv_send_flags::IBV_SEND_SIGNALED.0;
        assert_ne!(wr.send_flags & signaled, 0);
        let wr = build_wr(
            &SendOp::Send,
            UNSIGNALED_WR_ID,
            &mut sge,
            sge.length,
            true,
            None,
        );
        assert_eq!(
            wr.send_flags & signaled,
            0,
            "the unsignaled id asks for no completion"
        );
    }

    /// The chain visits every request once, in order, each with its own SGE, and ends.
    #[test]
    fn chain_links_in_order() {
        let n = 5u32;
        let mut sges: Vec<ffi::ibv_sge> = (0..n)
            .map(|i| ffi::ibv_sge {
                addr: u64::from(i) * 0x100,
                length: i + 1,
                lkey: i,
            })
            .collect();
        let mut wrs: Vec<ffi::ibv_send_wr> = sges
            .iter()
            .enumerate()
            .map(|(i, s)| {
                build_wr(
                    &SendOp::Send,
                    i as u64,
                    std::ptr::null_mut(),
                    s.length,
                    false,
                    None,
                )
            })
            .collect();
        let mut p = link_chain(&mut wrs, &mut sges);
        let mut seen = 0u32;
        while !p.is_null() {
            // SAFETY: `p` walks the chain `link_chain` built over `wrs`/`sges`, which are
            // untouched (and alive) meanwhile.
            let (wr_id, sge) = unsafe { ((*p).wr_id, *(*p).sg_list) };
            assert_eq!(wr_id, u64::from(seen));
            assert_eq!(
                (sge.addr, sge.length, sge.lkey),
                (u64::from(seen) * 0x100, seen + 1, seen)
            );
            // SAFETY: as above.
            p = unsafe { (*p).next };
            seen += 1;
        }
        assert_eq!(seen, n);
        assert!(link_chain(&mut [], &mut []).is_null());
    }
}
