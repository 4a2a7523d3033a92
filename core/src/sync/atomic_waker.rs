//! A lock-free cell holding at most one [`Waker`].

use std::fmt;
use std::task::Waker;

use super::cell::UnsafeCell;
use super::{AtomicUsize, Ordering::AcqRel, Ordering::Acquire, Ordering::Release};

/// Nobody is touching the waker cell.
const WAITING: usize = 0;
/// A `register` call holds the cell.
const REGISTERING: usize = 0b01;
/// A `wake`/`take` call holds the cell (or wants it, if combined with `REGISTERING`).
const WAKING: usize = 0b10;

/// Synchronises one waiting task with any number of wakers, without locks or allocation.
///
/// The consumer calls [`register`](Self::register) with the waker of the task about to wait,
/// **then re-checks** the condition it waits for; producers make the condition true, **then**
/// call [`wake`](Self::wake). Whichever order the two sides run in, the task is either
/// woken or sees the condition on its re-check: a wake-up is never lost.
///
/// Built on [`crate::sync`]'s atomics so loom can model-check it (the `futures` one is invisible
/// to loom). Registration from several threads at once is not lost memory-wise but only one of
/// the wakers is kept (the others are woken immediately), as in `futures::task::AtomicWaker`.
pub struct AtomicWaker {
    state: AtomicUsize,
    waker: UnsafeCell<Option<Waker>>,
}

// SAFETY: the waker cell is only accessed by the thread that moved `state` from `WAITING` to
// `REGISTERING` (register) or from `WAITING` to `WAKING` (take); both transitions are exclusive
// RMW operations, so at most one thread touches the cell at a time, and `Waker` is `Send`.
unsafe impl Send for AtomicWaker {}
// SAFETY: see the `Send` impl: all access to the cell is serialised by the `state` word.
unsafe impl Sync for AtomicWaker {}

impl AtomicWaker {
    /// An empty cell.
    pub fn new() -> Self {
        Self {
            state: AtomicUsize::new(WAITING),
            waker: UnsafeCell::new(None),
        }
    }

    /// Stores `waker` to be woken by the next [`wake`](Self::wake), replacing any previous one.
    ///
    /// Does not allocate when the stored waker already `will_wake` the new one (the common
    /// case of a task re-polled by the same executor). If a wake races with this call, `waker`
    /// is woken right away.
    pub fn register(&self, waker: &Waker) {
        match self
            .state
            .compare_exchange(WAITING, REGISTERING, Acquire, Acquire)
        {
            Ok(_) => {
                // SAFETY: we moved the state WAITING -> REGISTERING, which grants exclusive
                // access to the cell until we leave REGISTERING (no other thread can win the
                // same transition and `take` only touches the cell after WAITING -> WAKING).
                let old = self.waker.with_mut(|cell| unsafe {
                    match &mut *cell {
                        Some(old) if old.will_wake(waker) => None,
                        slot => slot.replace(waker.clone()),
                    }
                });
                // Release the cell; if a waker arrived meanwhile (WAKING set), the state is
                // REGISTERING | WAKING and the CAS fails.
                if let Err(actual) =
                    self.state
                        .compare_exchange(REGISTERING, WAITING, AcqRel, Acquire)
                {
                    debug_assert_eq!(actual, REGISTERING | WAKING);
                    // SAFETY: the state is still REGISTERING | WAKING: concurrent `take`s saw
                    // REGISTERING and backed off, so we keep exclusive access until the swap.
                    let w = self.waker.with_mut(|cell| unsafe { (*cell).take() });
                    self.state.swap(WAITING, AcqRel);
                    if let Some(w) = w {
                        w.wake();
                    }
                }
                drop(old);
            }
            Err(WAKING) => {
                // A wake is in progress and may have missed our condition: wake now. (The
                // caller re-polls; let the waking thread finish first.)
                super::spin_hint();
                waker.wake_by_ref();
            }
            Err(_) => {
                // A concurrent `register` (misuse: two consumers) or REGISTERING|WAKING:
                // be conservative and wake the caller so it re-polls.
                waker.wake_by_ref();
            }
        }
    }

    /// Wakes the registered waker, if any, and removes it.
    pub fn wake(&self) {
        if let Some(w) = self.take() {
            w.wake();
        }
    }

    /// Removes and returns the registered waker, if any, without waking it.
    pub fn take(&self) -> Option<Waker> {
        match self.state.fetch_or(WAKING, AcqRel) {
            WAITING => {
                // SAFETY: we moved the state WAITING -> WAKING; register() backs off while
                // WAKING is set and other take()s see a non-WAITING state, so the cell is ours
                // until we clear WAKING below.
                let w = self.waker.with_mut(|cell| unsafe { (*cell).take() });
                self.state.fetch_and(!WAKING, Release);
                w
            }
            // Either a register is in progress (it will see WAKING and wake itself) or another
            // take owns the cell.
            _ => None,
        }
    }
}

impl Default for AtomicWaker {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for AtomicWaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AtomicWaker").finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize as StdUsize;
    use std::sync::Arc;
    use std::task::Wake;

    struct Counter(StdUsize);
    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn wake_without_register_is_noop() {
        let w = AtomicWaker::new();
        w.wake();
        assert!(w.take().is_none());
    }

    #[test]
    fn register_then_wake_wakes_once() {
        let c = Arc::new(Counter(StdUsize::new(0)));
        let waker = Waker::from(c.clone());
        let w = AtomicWaker::new();
        w.register(&waker);
        w.register(&waker); // same task: kept once
        w.wake();
        w.wake();
        assert_eq!(c.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn register_replaces_other_waker() {
        let a = Arc::new(Counter(StdUsize::new(0)));
        let b = Arc::new(Counter(StdUsize::new(0)));
        let w = AtomicWaker::new();
        w.register(&Waker::from(a.clone()));
        w.register(&Waker::from(b.clone()));
        w.wake();
        assert_eq!(a.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(b.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
