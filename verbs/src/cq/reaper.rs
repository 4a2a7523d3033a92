//! Teardowns waiting on a channel's driver: objects whose last handle is gone but whose work
//! is still in flight (a QP whose flushes have not all come back). The driver ticks them on a
//! timer while any are pending, so a bound can be enforced even when no completion arrives.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// One pending teardown. The CQ layer does not know what it tears down (a QP, an SRQ).
pub(crate) trait PendingTeardown: Send {
    /// Advances it with the driver's clock (milliseconds since the channel started); `true`
    /// when it is finished and can be forgotten.
    fn on_tick(&mut self, now_ms: u64) -> bool;
}

/// How often the driver ticks pending teardowns.
pub(super) const REAP_PERIOD: Duration = Duration::from_millis(10);

/// The teardowns pending on one channel. Cold path: a mutex, touched when a QP with work in
/// flight loses its last handle and every [`REAP_PERIOD`] while one is pending.
pub(crate) struct Reaper {
    pending: AtomicUsize,
    list: Mutex<Vec<Box<dyn PendingTeardown>>>,
    /// Wakes a parked driver when the first teardown arrives.
    pub(super) notify: Notify,
    start: Instant,
}

impl Reaper {
    pub(super) fn new() -> Self {
        Self {
            pending: AtomicUsize::new(0),
            list: Mutex::new(Vec::new()),
            notify: Notify::new(),
            start: Instant::now(),
        }
    }

    /// The driver's clock for teardown bounds.
    pub(crate) fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Hands a teardown to the driver.
    pub(crate) fn schedule(&self, t: Box<dyn PendingTeardown>) {
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        list.push(t);
        self.pending.store(list.len(), Ordering::Release);
        drop(list);
        self.notify.notify_one();
    }

    /// Whether any teardown is pending (one atomic load: checked on every driver round).
    pub(super) fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire) > 0
    }

    /// Ticks every pending teardown, forgetting the finished ones. The list is taken out of
    /// its lock first: a tick may destroy a QP and release buffers, whose drops may schedule
    /// another teardown.
    pub(super) fn tick(&self) {
        let now = self.now_ms();
        let mut work = std::mem::take(&mut *self.list.lock().unwrap_or_else(|e| e.into_inner()));
        work.retain_mut(|t| !t.on_tick(now));
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        list.append(&mut work);
        self.pending.store(list.len(), Ordering::Release);
    }
}
