//! The owner of one `ibv_comp_channel`: its non-blocking fd in tokio's reactor, the CQs it
//! serves (a cold-path list, for the fatal-error fallback) and event draining.

use std::any::Any;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};

use rdma_sys as ffi;
use tokio::io::unix::AsyncFd;
use tokio::runtime::Handle;

use super::config::DriverConfig;
use super::queue::{ChannelParts, ChannelReadiness, CqInner, CqRegistry};
use super::reaper::Reaper;
use crate::device::{Context, ContextInner};
use crate::error::{Error, Result};
use crate::sys::{async_fd, set_nonblocking, Fd};

pub(crate) struct ChannelInner {
    pub(super) ch: NonNull<ffi::ibv_comp_channel>,
    pub(super) fd: Option<AsyncFd<Fd>>,
    /// Every CQ created on this channel (dead ones pruned when a CQ is added). Only the
    /// cold paths read it: per event the driver finds the CQ through its `cq_context`.
    cqs: Mutex<Vec<Weak<CqInner>>>,
    pub(super) config: DriverConfig,
    /// Set when the fd failed (or a failure was injected, noticed at the driver's next
    /// wake-up): the driver polls on a timer.
    pub(super) faulted: AtomicBool,
    /// Teardowns waiting for flushes (QPs dropped with work in flight).
    pub(super) reaper: Arc<Reaper>,
    /// CQs added and removed, for the driver's policy.
    pub(super) registry: Arc<CqRegistry>,
    pub(super) ctx: Arc<ContextInner>,
}

ibverbs_thread_safe!(ChannelInner);

impl Drop for ChannelInner {
    fn drop(&mut self) {
        // Deregister from the reactor before the fd is closed.
        drop(self.fd.take());
        // SAFETY: every CQ using the channel holds an Arc to it, so none is left.
        let rc = unsafe { ffi::ibv_destroy_comp_channel(self.ch.as_ptr()) };
        if rc != 0 {
            tracing::warn!(rc, "ibv_destroy_comp_channel failed");
        }
    }
}

impl ChannelInner {
    /// Creates the channel, makes its fd non-blocking and registers it with tokio.
    pub(super) fn new(ctx: &Context, config: DriverConfig, runtime: Handle) -> Result<Self> {
        // SAFETY: the context is open and outlives the channel (Arc held).
        let ch = unsafe { ffi::ibv_create_comp_channel(ctx.as_ptr()) };
        let ch = NonNull::new(ch)
            .ok_or_else(|| Error::last_os("ibv_create_comp_channel", ctx.name()))?;
        // SAFETY: `ch` is a valid channel; `fd` is a plain field.
        let raw = unsafe { (*ch.as_ptr()).fd };
        let mut inner = ChannelInner {
            ch,
            fd: None,
            cqs: Mutex::new(Vec::new()),
            config,
            faulted: AtomicBool::new(false),
            reaper: Arc::new(Reaper::new(runtime)),
            registry: Arc::default(),
            ctx: ctx.inner.clone(),
        };
        set_nonblocking(raw, "completion channel")?;
        // SAFETY: the fd belongs to the channel, which `ChannelInner::drop` destroys only after
        // dropping this AsyncFd.
        inner.fd = Some(unsafe { async_fd(raw, "completion channel")? });
        Ok(inner)
    }

    /// What a CQ created on this channel takes from it; `keep` keeps the channel (and its
    /// driver task) alive as long as the CQ.
    pub(super) fn parts(self: &Arc<Self>, keep: Arc<dyn Any + Send + Sync>) -> ChannelParts {
        ChannelParts {
            ctx: self.ctx.clone(),
            channel: self.ch.as_ptr(),
            reaper: self.reaper.clone(),
            registry: self.registry.clone(),
            config: self.config,
            readiness: self.clone(),
            keep,
        }
    }

    /// Remembers a new CQ (cold path).
    pub(super) fn add_cq(&self, cq: &Arc<CqInner>) {
        let mut cqs = self.cqs.lock().unwrap_or_else(|e| e.into_inner());
        cqs.retain(|w| w.strong_count() > 0);
        cqs.push(Arc::downgrade(cq));
    }

    /// The live CQs of this channel (cold path).
    pub(super) fn live_cqs(&self) -> Vec<Arc<CqInner>> {
        let cqs = self.cqs.lock().unwrap_or_else(|e| e.into_inner());
        cqs.iter().filter_map(Weak::upgrade).collect()
    }

    /// Pulls every pending CQ event (until EAGAIN), counting each on its CQ and handing the
    /// CQ to `on_event`. Always ends in `Err`: `WouldBlock` when drained, else a real error.
    pub(super) fn drain_events(&self, mut on_event: impl FnMut(Arc<CqInner>)) -> io::Result<()> {
        loop {
            let mut cq: *mut ffi::ibv_cq = std::ptr::null_mut();
            let mut ctx: *mut libc::c_void = std::ptr::null_mut();
            // SAFETY: the channel is live and its fd is non-blocking; out-pointers are valid.
            let rc = unsafe { ffi::ibv_get_cq_event(self.ch.as_ptr(), &mut cq, &mut ctx) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `ctx` is the `cq_context` of a CQ created by `CqInner::create` on this
            // channel, and the event is not acked yet.
            match unsafe { CqInner::from_event_context(ctx) } {
                Some(c) => {
                    c.note_event();
                    on_event(c);
                }
                None => {
                    // The CQ is being dropped: `ibv_destroy_cq` blocks until this event is
                    // acked, so `cq` is still valid. Ack right away.
                    // SAFETY: `cq` is live (see above) and this event was just received.
                    unsafe { ffi::ibv_ack_cq_events(cq, 1) }
                }
            }
        }
    }
}

impl ChannelReadiness for ChannelInner {
    fn poll_readable(&self, cx: &mut std::task::Context<'_>) -> bool {
        self.fd
            .as_ref()
            .is_none_or(|fd| fd.poll_read_ready(cx).is_ready())
    }
}
