//! Completion channels, completion queues and the completion driver.
//!
//! Modules, each depending only on those above it: `config` (driver tuning), `wc`
//! (converting work completions, the batch buffer), `queue` (the `ibv_cq` owner: arming,
//! acks), `poll` (a batch polled and routed), `channel` (the `ibv_comp_channel` owner: fd,
//! event draining), `aside` (the driver standing aside while a future spins, on a
//! multi-thread runtime), `driver` (the task). This file holds the public handles. See the
//! crate docs for the driver's design (poll-arm-poll, adaptive spin, inline polling).

mod aside;
mod channel;
mod config;
mod driver;
mod poll;
mod queue;
mod raw;
mod reaper;
mod registry;
mod wc;

use std::fmt;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::task::AbortHandle;
use tokio_rdma_core::DispatchStats;

use crate::device::Context;
use crate::error::{Error, Result};
use channel::ChannelInner;
pub use config::DriverConfig;
use config::MAX_BATCH;
pub(crate) use queue::{CqInner, Parked, Waiting, RAW_WR_BIT, UNSIGNALED_WR_ID};
pub use raw::RawPoller;
pub(crate) use reaper::PendingTeardown;

struct ChannelOwner {
    inner: Arc<ChannelInner>,
    driver: AbortHandle,
}

impl Drop for ChannelOwner {
    fn drop(&mut self) {
        // The last user handle and the last CQ are gone: stop the driver; it drops its Arc and
        // with it the channel.
        self.driver.abort();
    }
}

/// A completion channel: one fd (wrapped in tokio's `AsyncFd`) that reports completion events
/// of any number of CQs, plus the driver task that turns them into woken futures. Cheap to
/// clone.
#[derive(Clone)]
pub struct CompletionChannel {
    owner: Arc<ChannelOwner>,
}

impl fmt::Debug for CompletionChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionChannel")
            .field("config", &self.owner.inner.config)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Creates a completion channel (one channel may serve several CQs). Needs a tokio runtime:
    /// the channel's driver task is spawned on it.
    pub fn create_comp_channel(&self) -> Result<CompletionChannel> {
        CompletionChannel::with_config(self, DriverConfig::default())
    }
}

impl CompletionChannel {
    /// Creates a channel with an explicit driver configuration. Must be called inside a tokio
    /// runtime (the driver task is spawned on it).
    pub fn with_config(ctx: &Context, config: DriverConfig) -> Result<Self> {
        let rt = tokio::runtime::Handle::try_current().map_err(|e| Error::Io {
            context: "creating a completion channel needs a tokio runtime".into(),
            source: io::Error::other(e),
        })?;
        if config.poll_batch == 0 || config.poll_batch > MAX_BATCH {
            return Err(Error::InvalidArgument(format!(
                "poll_batch {} not in 1..={MAX_BATCH}",
                config.poll_batch
            )));
        }
        let config = DriverConfig {
            ack_batch: config.ack_batch.max(1),
            ..config
        };
        let inner = Arc::new(ChannelInner::new(ctx, config, rt.clone())?);
        let driver = rt.spawn(driver::drive(inner.clone())).abort_handle();
        Ok(Self {
            owner: Arc::new(ChannelOwner { inner, driver }),
        })
    }

    /// Creates a CQ with at least `cqe` entries on this channel (and the channel's device).
    /// Its dispatcher has `cqe` slots, so at most `cqe` operations of all QPs using this CQ
    /// can be in flight.
    pub fn create_cq(&self, cqe: u32) -> Result<CompletionQueue> {
        let chan = &self.owner.inner;
        let inner = CqInner::create(chan.parts(self.owner.clone()), cqe)?;
        chan.add_cq(&inner);
        Ok(CompletionQueue { inner })
    }

    /// Test hook: behave as if the channel's fd had failed, from the driver's next wake-up on
    /// (it falls back to polling every CQ of the channel on a timer; nothing is released
    /// early).
    #[doc(hidden)]
    pub fn inject_fault(&self) {
        self.owner.inner.faulted.store(true, Ordering::Release);
        self.owner.inner.registry.nudge_driver();
    }
}

/// A completion queue bound to a [`CompletionChannel`], with its own dispatcher. Cheap to
/// clone.
#[derive(Clone)]
pub struct CompletionQueue {
    pub(crate) inner: Arc<CqInner>,
}

impl fmt::Debug for CompletionQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionQueue")
            .field("capacity", &self.capacity())
            .field("in_flight", &self.inner.dispatcher.in_flight())
            .finish()
    }
}

/// Counters of one CQ.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct CqStats {
    /// Completion events received from the channel fd.
    pub events: u64,
    /// `ibv_poll_cq` calls.
    pub polls: u64,
    /// Completions the driver task's polls found. The others were found by the futures'
    /// own inline polls; each of these reached its task through a wake-up by the driver.
    pub driver_completions: u64,
    /// `ibv_poll_cq` calls by the driver task (the others, up to `polls`, were the futures'
    /// inline polls).
    pub driver_polls: u64,
    /// Error (or flush) completions of unsignaled requests
    /// ([`QueuePair::send_inline_unsignaled`](crate::QueuePair::send_inline_unsignaled)):
    /// not dispatched, only counted.
    pub unsignaled_errors: u64,
    /// Completions of raw work requests (`QueuePair::post_raw_*`) polled while no
    /// [`RawPoller`] owned the CQ: they could not be delivered.
    pub raw_unclaimed: u64,
    /// The dispatcher's counters.
    pub dispatch: DispatchStats,
}

impl CompletionQueue {
    /// Slot capacity (= requested CQ entries).
    pub fn capacity(&self) -> usize {
        self.inner.dispatcher.capacity()
    }

    /// Operations in flight on this CQ.
    pub fn in_flight(&self) -> usize {
        self.inner.dispatcher.in_flight()
    }

    /// Counters.
    pub fn stats(&self) -> CqStats {
        CqStats {
            events: self.inner.events.load(Ordering::Relaxed),
            polls: self.inner.polls.load(Ordering::Relaxed),
            driver_completions: self.inner.driver_completions.load(Ordering::Relaxed),
            driver_polls: self.inner.driver_polls.load(Ordering::Relaxed),
            unsignaled_errors: self.inner.unsignaled_errors.load(Ordering::Relaxed),
            raw_unclaimed: self.inner.raw_unclaimed.load(Ordering::Relaxed),
            dispatch: self.inner.dispatcher.stats(),
        }
    }

    /// Polls the CQ once from the calling thread (non-blocking; no-op when another thread is
    /// draining it). Returns how many completions were dispatched.
    pub fn poll_now(&self) -> Result<usize> {
        Ok(self.inner.poll_once()?.unwrap_or(0))
    }

    /// The kernel handle of this CQ (matches [`crate::AsyncEventElement::Cq`]).
    pub fn handle(&self) -> u32 {
        // SAFETY: the CQ is live; `handle` is a plain field.
        unsafe { (*self.inner.as_ptr()).handle }
    }
}
