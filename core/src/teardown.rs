//! Queue-pair teardown as a sans-IO state machine: a QP with work in flight is destroyed only
//! after that work has completed or been flushed, or — after a bound — destroyed first and
//! its remaining work failed explicitly.
//!
//! Why: hardware providers discard the unpolled completions of a destroyed QP (mlx5's
//! `__mlx5_cq_clean` removes them from the CQ). Destroying a QP at once when its last handle
//! drops therefore strands every operation still in flight: its future never resolves, its
//! slot is never freed and its buffers leak, and a long-lived CQ shared by short-lived QPs
//! runs out of slots. In-flight work pins its QP (as tokio-uring's ops pin their file): the
//! last handle's drop moves the QP to the error state, which makes the NIC flush every
//! outstanding work request, and [`TeardownAction::Destroy`] comes once those flushes are in.
//!
//! The machine counts outstanding work requests; it does not know how the caller finds or
//! fails them (per-QP dispatcher, tagged slots, a list of `wr_id`s):
//! [`TeardownAction::FailRemaining`] only says that it must happen now.

/// Where a [`QpTeardown`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TeardownState {
    /// In use; work requests are counted.
    Live,
    /// Teardown has begun; [`TeardownAction::MoveToError`] is next.
    Erroring,
    /// In the error state, waiting for the outstanding work requests to complete or be
    /// flushed (and, before destroying, for the last handle to go).
    Draining {
        /// Work requests posted and not yet retired.
        outstanding: usize,
    },
    /// [`TeardownAction::Drained`] was handed out: nothing is left to do.
    Drained,
}

/// What the caller does next (see [`QpTeardown::poll_action`]), in the order handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TeardownAction {
    /// Move the QP to the error state (`ibv_modify_qp` to `IBV_QPS_ERR`): the NIC stops
    /// processing and flushes every outstanding work request. Failure is not reported back:
    /// the bound covers flushes that never come.
    MoveToError,
    /// Graceful close ([`QpTeardown::on_close`]): post the markers now (a zero-length send,
    /// and a receive unless an SRQ is used), reporting each with [`QpTeardown::on_post`].
    /// Their flushed completions arrive after everything posted before them, so awaiting them
    /// awaits the drain.
    PostMarkers,
    /// Destroy the QP (`ibv_destroy_qp`). The provider may discard its unpolled completions;
    /// after this the NIC touches none of its buffers any more.
    Destroy,
    /// The bound expired before the flushes came, and the QP is now destroyed: fail the
    /// `outstanding` work requests still in flight explicitly (wake their futures with a flush
    /// error, release their slots and buffers). Safe only now, after [`Self::Destroy`].
    FailRemaining {
        /// How many work requests are failed.
        outstanding: usize,
    },
    /// The last event: the QP is gone and its work retired. The caller frees what it kept for
    /// the teardown. Its CQs (and a CM id) may be destroyed after this, once their CQ events
    /// are acknowledged too.
    Drained,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Live,
    Erroring,
    Draining,
    /// `Destroy` handed out; `FailRemaining(n)` follows if `n > 0`.
    Destroyed {
        fail: usize,
    },
    Finishing,
    Drained,
}

/// The teardown of one queue pair.
///
/// Inputs: [`on_post`](Self::on_post) / [`on_retired`](Self::on_retired) for every work
/// request that will produce a completion (signaled, or flushed), [`on_close`](Self::on_close)
/// and [`on_last_handle_dropped`](Self::on_last_handle_dropped) to begin, and
/// [`on_tick`](Self::on_tick) with the caller's clock (any monotonic `u64`: a poll count, a
/// tick, nanoseconds; the bound is in the same unit). Output: [`poll_action`](Self::poll_action)
/// until it returns `None`, after every input; it hands out [`TeardownAction::Drained`] last.
///
/// ```
/// use tokio_rdma_core::{QpTeardown, TeardownAction::*, TeardownState};
///
/// let mut qp = QpTeardown::new(100);
/// qp.on_post();
/// qp.on_post();
/// qp.on_retired(); // one completed
/// qp.on_last_handle_dropped(7);
/// assert_eq!(qp.poll_action(), Some(MoveToError));
/// assert_eq!(qp.poll_action(), None); // one work request still in flight
/// assert_eq!(qp.state(), TeardownState::Draining { outstanding: 1 });
/// qp.on_retired(); // its flush completion was polled
/// assert_eq!(qp.poll_action(), Some(Destroy));
/// assert_eq!(qp.poll_action(), Some(Drained));
/// assert_eq!(qp.poll_action(), None);
/// ```
#[derive(Clone, Debug)]
pub struct QpTeardown {
    phase: Phase,
    outstanding: usize,
    handles_gone: bool,
    post_markers: bool,
    bound: u64,
    deadline: Option<u64>,
    now: u64,
}

impl QpTeardown {
    /// A live QP with nothing outstanding. `bound`: how long (in the unit of the `now` values
    /// given to the inputs) after teardown began flushes are awaited before the QP is
    /// destroyed and the rest failed.
    pub fn new(bound: u64) -> Self {
        Self {
            phase: Phase::Live,
            outstanding: 0,
            handles_gone: false,
            post_markers: false,
            bound,
            deadline: None,
            now: 0,
        }
    }

    /// Where the teardown is.
    pub fn state(&self) -> TeardownState {
        match self.phase {
            Phase::Live => TeardownState::Live,
            Phase::Erroring => TeardownState::Erroring,
            Phase::Draining | Phase::Destroyed { .. } | Phase::Finishing => {
                TeardownState::Draining {
                    outstanding: self.outstanding,
                }
            }
            Phase::Drained => TeardownState::Drained,
        }
    }

    /// Work requests posted and not yet retired.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// When the bound expires (`None` before teardown begins): call
    /// [`on_tick`](Self::on_tick) with a `now` at or past it if the QP has not drained by then.
    pub fn deadline(&self) -> Option<u64> {
        self.deadline
    }

    /// Whether [`TeardownAction::Destroy`] was handed out (the QP must not be used any more).
    pub fn is_destroyed(&self) -> bool {
        matches!(
            self.phase,
            Phase::Destroyed { .. } | Phase::Finishing | Phase::Drained
        )
    }

    /// A work request was posted (markers included). Ignored once the QP is destroyed.
    pub fn on_post(&mut self) {
        if !self.is_destroyed() {
            self.outstanding += 1;
        }
    }

    /// A work request retired: its completion or flush error was polled. Ignored once the QP
    /// is destroyed (after [`TeardownAction::FailRemaining`] the caller's synthetic failures
    /// need no report) and when nothing is outstanding.
    pub fn on_retired(&mut self) {
        if !self.is_destroyed() {
            self.outstanding = self.outstanding.saturating_sub(1);
        }
    }

    /// The caller counts outstanding work itself (e.g. the references its in-flight work
    /// holds) and reports the current count. Ignored once the QP is destroyed.
    pub fn on_outstanding(&mut self, outstanding: usize) {
        if !self.is_destroyed() {
            self.outstanding = outstanding;
        }
    }

    /// Graceful close: the QP goes to the error state and markers are posted (see
    /// [`TeardownAction::PostMarkers`]); it is destroyed once drained and its last handle is
    /// gone. Ignored unless the QP is live.
    pub fn on_close(&mut self, now: u64) {
        if self.phase == Phase::Live {
            self.post_markers = true;
            self.begin(now);
        }
    }

    /// The last handle is gone: teardown begins if it has not, and the QP may be destroyed
    /// once drained (or once the bound expires).
    pub fn on_last_handle_dropped(&mut self, now: u64) {
        self.handles_gone = true;
        if self.phase == Phase::Live {
            self.begin(now);
        } else {
            self.on_tick(now);
        }
    }

    /// The caller's clock moved on (monotonic; an older `now` is ignored).
    pub fn on_tick(&mut self, now: u64) {
        self.now = self.now.max(now);
    }

    fn begin(&mut self, now: u64) {
        self.on_tick(now);
        self.deadline = Some(self.now.saturating_add(self.bound));
        self.phase = Phase::Erroring;
    }

    fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| self.now >= d)
    }

    /// The next action, or `None` until an input changes something.
    pub fn poll_action(&mut self) -> Option<TeardownAction> {
        match self.phase {
            Phase::Live | Phase::Drained => None,
            Phase::Erroring => {
                self.phase = Phase::Draining;
                Some(TeardownAction::MoveToError)
            }
            Phase::Draining if std::mem::take(&mut self.post_markers) => {
                Some(TeardownAction::PostMarkers)
            }
            Phase::Draining if self.handles_gone && (self.outstanding == 0 || self.expired()) => {
                self.phase = Phase::Destroyed {
                    fail: self.outstanding,
                };
                Some(TeardownAction::Destroy)
            }
            Phase::Draining => None,
            Phase::Destroyed { fail: 0 } | Phase::Finishing => {
                self.phase = Phase::Drained;
                Some(TeardownAction::Drained)
            }
            Phase::Destroyed { fail } => {
                self.phase = Phase::Finishing;
                self.outstanding = 0;
                Some(TeardownAction::FailRemaining { outstanding: fail })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TeardownAction::*;
    use super::*;

    fn actions(t: &mut QpTeardown) -> Vec<TeardownAction> {
        std::iter::from_fn(|| t.poll_action()).collect()
    }

    #[test]
    fn live_does_nothing() {
        let mut t = QpTeardown::new(5);
        t.on_post();
        t.on_tick(1000);
        assert_eq!(actions(&mut t), []);
        assert_eq!(t.state(), TeardownState::Live);
        assert_eq!(t.deadline(), None);
    }

    #[test]
    fn idle_qp_is_destroyed_at_once() {
        let mut t = QpTeardown::new(5);
        t.on_last_handle_dropped(3);
        assert_eq!(t.state(), TeardownState::Erroring);
        assert_eq!(actions(&mut t), [MoveToError, Destroy, Drained]);
        assert_eq!(t.state(), TeardownState::Drained);
    }

    #[test]
    fn destroy_waits_for_the_flushes() {
        let mut t = QpTeardown::new(50);
        (0..3).for_each(|_| t.on_post());
        t.on_last_handle_dropped(10);
        assert_eq!(actions(&mut t), [MoveToError]);
        t.on_retired();
        t.on_tick(59);
        assert_eq!(actions(&mut t), []);
        assert_eq!(t.state(), TeardownState::Draining { outstanding: 2 });
        t.on_retired();
        t.on_retired();
        assert_eq!(actions(&mut t), [Destroy, Drained]);
    }

    #[test]
    fn the_bound_destroys_first_then_fails_the_rest() {
        let mut t = QpTeardown::new(50);
        (0..3).for_each(|_| t.on_post());
        t.on_last_handle_dropped(10);
        assert_eq!(t.deadline(), Some(60));
        assert_eq!(actions(&mut t), [MoveToError]);
        t.on_retired();
        t.on_tick(60);
        assert_eq!(
            actions(&mut t),
            [Destroy, FailRemaining { outstanding: 2 }, Drained]
        );
        // Late reports (the caller's synthetic failures) change nothing.
        t.on_retired();
        t.on_post();
        assert_eq!(t.outstanding(), 0);
        assert_eq!(actions(&mut t), []);
    }

    #[test]
    fn close_posts_markers_and_destroys_only_after_the_last_handle() {
        let mut t = QpTeardown::new(50);
        t.on_post();
        t.on_close(0);
        assert_eq!(actions(&mut t), [MoveToError, PostMarkers]);
        t.on_post(); // send marker
        t.on_post(); // receive marker
        (0..3).for_each(|_| t.on_retired());
        t.on_tick(500); // drained; the bound does not matter while a handle lives
        assert_eq!(actions(&mut t), []);
        assert!(!t.is_destroyed());
        t.on_last_handle_dropped(501);
        assert_eq!(actions(&mut t), [Destroy, Drained]);
    }

    #[test]
    fn close_then_drop_with_work_left_after_the_bound_fails_it() {
        let mut t = QpTeardown::new(10);
        t.on_post();
        t.on_close(0);
        assert_eq!(actions(&mut t), [MoveToError, PostMarkers]);
        t.on_post();
        t.on_tick(20);
        assert_eq!(actions(&mut t), []);
        t.on_last_handle_dropped(21);
        assert_eq!(
            actions(&mut t),
            [Destroy, FailRemaining { outstanding: 2 }, Drained]
        );
        t.on_close(30);
        assert_eq!(actions(&mut t), []);
    }
}
