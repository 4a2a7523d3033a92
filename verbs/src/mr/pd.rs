//! Protection domains.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as ffi;

use crate::device::{Context, ContextInner};
use crate::error::{Error, Result};

pub(crate) struct PdInner {
    pub(crate) pd: NonNull<ffi::ibv_pd>,
    pub(crate) ctx: Arc<ContextInner>,
}

ibverbs_thread_safe!(PdInner);

destroy_on_drop!(
    PdInner,
    pd,
    ibv_dealloc_pd,
    "MRs, QPs, SRQs and AHs hold an Arc to the PD"
);

/// A protection domain. Cheap to clone.
#[derive(Clone)]
pub struct ProtectionDomain {
    pub(crate) inner: Arc<PdInner>,
}

impl fmt::Debug for ProtectionDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtectionDomain").finish_non_exhaustive()
    }
}

impl ProtectionDomain {
    fn new(ctx: &Context) -> Result<Self> {
        // SAFETY: the context is open (we hold an Arc to it for the PD's lifetime).
        let pd = unsafe { ffi::ibv_alloc_pd(ctx.as_ptr()) };
        let pd = NonNull::new(pd).ok_or_else(|| Error::last_os("ibv_alloc_pd", ctx.name()))?;
        Ok(Self {
            inner: Arc::new(PdInner {
                pd,
                ctx: ctx.inner.clone(),
            }),
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut ffi::ibv_pd {
        self.inner.pd.as_ptr()
    }

    /// The context this PD belongs to.
    pub fn context(&self) -> Context {
        Context {
            inner: self.inner.ctx.clone(),
        }
    }
}

impl Context {
    /// Allocates a protection domain.
    pub fn alloc_pd(&self) -> Result<ProtectionDomain> {
        ProtectionDomain::new(self)
    }
}
