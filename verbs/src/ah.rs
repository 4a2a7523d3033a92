//! Address handles: how a UD queue pair reaches a remote port.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as ffi;

use crate::error::{Error, Result};
use crate::info::{ah_attr, ConnectOptions, QpInfo};
use crate::mr::{PdInner, ProtectionDomain};

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

impl AddressHandle {
    /// The UD part of a send work request towards this handle's QP.
    pub(crate) fn ud(&self) -> ffi::ud_t {
        ffi::ud_t {
            ah: self.inner.ah.as_ptr(),
            remote_qpn: self.remote_qpn,
            remote_qkey: self.remote_qkey,
        }
    }
}
