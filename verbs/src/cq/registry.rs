//! The keys of a channel's CQs as its driver's policy knows them: CQs are created and dropped
//! on any thread, and the driver learns of it at its next round (cold path: a mutex, and one
//! atomic load per round).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::Waker;

use tokio_rdma_core::sync::AtomicWaker;

/// CQ keys added (each with a `T`, the driver's handle on the CQ) and removed since the driver
/// last looked.
pub(crate) struct Registry<T> {
    next_key: AtomicUsize,
    /// Live CQs of the channel.
    live: AtomicUsize,
    changed: AtomicBool,
    changes: Mutex<Changes<T>>,
    /// How many CQs the driver polls now (its active set), published at each of its yields
    /// and parks: a hint for futures deciding whether to spin on their own CQ.
    active: AtomicUsize,
    /// Bumped by everything that needs the driver polling while it stands aside for a
    /// spinning future (see `cq::aside`): a future that starts waiting for the driver, a CQ
    /// added or removed, an injected fault.
    nudges: AtomicU32,
    /// The driver's waker while it stands aside.
    driver: AtomicWaker,
    /// Futures of the channel waiting for the driver outside any task (a current-thread
    /// runtime's `block_on` future; see `CqInner::begin_wait`).
    outside_tasks: AtomicU32,
}

pub(super) struct Changes<T> {
    /// New CQs, with the handle the driver polls them through while they are parked.
    pub(super) added: Vec<(usize, T)>,
    pub(super) removed: Vec<usize>,
}

impl<T> Default for Changes<T> {
    fn default() -> Self {
        Self {
            added: Vec::new(),
            removed: Vec::new(),
        }
    }
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Self {
            next_key: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            changed: AtomicBool::new(false),
            changes: Mutex::new(Changes::default()),
            active: AtomicUsize::new(0),
            nudges: AtomicU32::new(0),
            driver: AtomicWaker::new(),
            outside_tasks: AtomicU32::new(0),
        }
    }
}

impl<T> Registry<T> {
    /// A key for a new CQ (never reused: a stale step for a dropped CQ names nobody).
    pub(super) fn add(&self, cq: T) -> usize {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        self.live.fetch_add(1, Ordering::Relaxed);
        self.change(|c| c.added.push((key, cq)));
        key
    }

    /// The driver's active set has `n` CQs.
    pub(super) fn set_active(&self, n: usize) {
        if self.active.load(Ordering::Relaxed) != n {
            self.active.store(n, Ordering::Relaxed);
        }
    }

    /// Whether the channel has exactly one CQ (a connection's own channel): only then do
    /// futures in event mode wait on the channel fd themselves (`CqInner::wait_on_channel`).
    pub(super) fn is_lone(&self) -> bool {
        self.live.load(Ordering::Relaxed) == 1
    }

    /// How many CQs the driver polls now (as last published).
    pub(super) fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// A CQ is gone (its own drop acked its events).
    pub(super) fn remove(&self, key: usize) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.change(|c| c.removed.push(key));
    }

    fn change(&self, f: impl FnOnce(&mut Changes<T>)) {
        f(&mut self.changes.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.store(true, Ordering::Release);
        self.nudge_driver();
    }

    /// Wakes the driver if it stands aside (and makes it not stand aside at its next yield).
    pub(crate) fn nudge_driver(&self) {
        self.nudges.fetch_add(1, Ordering::SeqCst);
        self.driver.wake();
    }

    /// A future outside any task starts (`true`) or stops waiting for the driver.
    pub(super) fn note_outside_task(&self, waits: bool) {
        if waits {
            self.outside_tasks.fetch_add(1, Ordering::SeqCst);
        } else {
            self.outside_tasks.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Whether a future outside any task waits for the driver (its wake-ups are for the
    /// `block_on` future of a current-thread runtime).
    pub(super) fn outside_tasks_wait(&self) -> bool {
        self.outside_tasks.load(Ordering::SeqCst) > 0
    }

    /// The nudges so far.
    pub(super) fn nudges(&self) -> u32 {
        self.nudges.load(Ordering::SeqCst)
    }

    /// Registers the driver's waker for the next nudge.
    pub(super) fn register_driver(&self, waker: &Waker) {
        self.driver.register(waker);
    }

    /// Drops the driver's waker: it no longer stands aside.
    pub(super) fn take_driver(&self) {
        drop(self.driver.take());
    }

    /// The changes since the last call, if any (one atomic load when there are none).
    pub(super) fn take(&self) -> Option<Changes<T>> {
        if !self.changed.load(Ordering::Acquire) {
            return None;
        }
        self.changed.store(false, Ordering::Release);
        Some(std::mem::take(
            &mut *self.changes.lock().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}
