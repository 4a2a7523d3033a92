//! Teardowns waiting for their work: objects whose last handle is gone but whose work is still
//! in flight (a QP whose flushes have not all come back). A task of the channel's runtime
//! ticks them on a timer while any are pending (and only then: it is spawned by the first and
//! ends with the last), so a bound is enforced even when no completion arrives, and the
//! completion driver's hot loop never looks at them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

/// One pending teardown. The CQ layer does not know what it tears down (a QP, an SRQ).
pub(crate) trait PendingTeardown: Send {
    /// Advances it with the driver's clock (milliseconds since the channel started); `true`
    /// when it is finished and can be forgotten.
    fn on_tick(&mut self, now_ms: u64) -> bool;
}

/// How often pending teardowns are ticked.
const REAP_PERIOD: Duration = Duration::from_millis(10);

/// The teardowns pending on one channel. Cold path: a mutex, touched when a QP with work in
/// flight loses its last handle and every [`REAP_PERIOD`] while one is pending.
pub(crate) struct Reaper {
    list: Mutex<Vec<Box<dyn PendingTeardown>>>,
    /// Whether the ticking task runs.
    running: AtomicBool,
    runtime: Handle,
    start: Instant,
}

impl Reaper {
    pub(super) fn new(runtime: Handle) -> Self {
        Self {
            list: Mutex::new(Vec::new()),
            running: AtomicBool::new(false),
            runtime,
            start: Instant::now(),
        }
    }

    /// The driver's clock for teardown bounds.
    pub(crate) fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Hands a teardown over; starts the ticking task if it is not running.
    pub(crate) fn schedule(self: &Arc<Self>, t: Box<dyn PendingTeardown>) {
        self.list.lock().unwrap_or_else(|e| e.into_inner()).push(t);
        if !self.running.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            self.runtime.spawn(async move { me.run().await });
        }
    }

    /// Ticks until nothing is pending.
    async fn run(&self) {
        let mut period = tokio::time::interval(REAP_PERIOD);
        period.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            period.tick().await;
            if self.tick() == 0 {
                self.running.store(false, Ordering::Release);
                // A teardown scheduled between the tick and the store saw `running` set and
                // spawned nothing: take it over, unless another task already did.
                let empty = self
                    .list
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty();
                if empty || self.running.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        }
    }

    /// Ticks every pending teardown, forgetting the finished ones; how many are left. The list
    /// is taken out of its lock first: a tick may destroy a QP and release buffers, whose
    /// drops may schedule another teardown.
    fn tick(&self) -> usize {
        let now = self.now_ms();
        let mut work = std::mem::take(&mut *self.list.lock().unwrap_or_else(|e| e.into_inner()));
        work.retain_mut(|t| !t.on_tick(now));
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        list.append(&mut work);
        list.len()
    }
}
