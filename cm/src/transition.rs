//! Moving a connection's QP through INIT, RTR and RTS with the attributes librdmacm
//! computes for its id (`rdma_init_qp_attr`), as librdmacm does for the QPs it creates.

use rdma_sys as ffi;
use tokio_rdma_verbs::{LinkLayer, QueuePair};

use crate::error::{Error, Result};
use crate::id::Id;

fn attr_for(id: &Id, state: ffi::ibv_qp_state::Type) -> Result<(ffi::ibv_qp_attr, i32)> {
    // SAFETY: ibv_qp_attr is plain C data; all-zero is valid.
    let mut attr: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
    attr.qp_state = state;
    let mut mask = 0;
    // SAFETY: the id is live and bound to a device; `attr` and `mask` are valid out-params.
    if unsafe { ffi::rdma_init_qp_attr(id.as_ptr(), &mut attr, &mut mask) } != 0 {
        return Err(Error::last_os(
            "rdma_init_qp_attr",
            format!("state {state}"),
        ));
    }
    Ok((attr, mask))
}

fn apply(qp: &QueuePair, attr: &mut ffi::ibv_qp_attr, mask: i32) -> Result<()> {
    qp.modify_with(attr, ffi::ibv_qp_attr_mask(mask as u32))?;
    Ok(())
}

/// RESET (or INIT) → INIT.
pub(crate) fn to_init(id: &Id, qp: &QueuePair) -> Result<()> {
    let (mut attr, mask) = attr_for(id, ffi::ibv_qp_state::IBV_QPS_INIT)?;
    apply(qp, &mut attr, mask)
}

/// INIT → RTR, accepting `responder_resources` RDMA READs/atomics (`None`: what the kernel
/// negotiated for the id), asking senders to wait `min_rnr_timer` (IB encoding) after an RNR
/// NAK.
pub(crate) fn to_rtr(
    id: &Id,
    qp: &QueuePair,
    responder_resources: Option<u8>,
    min_rnr_timer: u8,
) -> Result<()> {
    // The id's INIT attributes may have changed since the QP was created (the peer's
    // parameters are known now): apply them again first, as librdmacm does.
    to_init(id, qp)?;
    let (mut attr, mut mask) = attr_for(id, ffi::ibv_qp_state::IBV_QPS_RTR)?;
    // librdmacm's workaround for an rdma_ucm kernel bug: on InfiniBand, mask off the RoCE
    // attribute bits 21-24.
    // SAFETY: the id is live; `port_num` is set once it is bound to a device.
    let port = unsafe { (*id.as_ptr()).port_num };
    if qp.pd().context().query_port(port)?.link_layer == LinkLayer::Infiniband {
        mask &= !0x00e0_0000;
    }
    if let Some(n) = responder_resources {
        attr.max_dest_rd_atomic = n;
    }
    // Connected QPs only (RC): UC and UD have no RNR NAKs and refuse the attribute.
    if mask & ffi::ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER.0 as i32 != 0 {
        attr.min_rnr_timer = min_rnr_timer.min(31);
    }
    apply(qp, &mut attr, mask)
}

/// RTR → RTS, issuing up to `initiator_depth` RDMA READs/atomics (`None`: what the kernel
/// negotiated for the id).
pub(crate) fn to_rts(id: &Id, qp: &QueuePair, initiator_depth: Option<u8>) -> Result<()> {
    let (mut attr, mask) = attr_for(id, ffi::ibv_qp_state::IBV_QPS_RTS)?;
    if let Some(n) = initiator_depth {
        attr.max_rd_atomic = n;
    }
    apply(qp, &mut attr, mask)
}
