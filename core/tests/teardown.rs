//! QP teardown with work in flight, on a fake NIC whose destroy discards the QP's unpolled
//! completions (as mlx5 does) and a CQ's `Dispatcher` shared by all its QPs.
//!
//! The naive policy — `QpInner::drop` before this machine: move to ERR and destroy at once —
//! strands every operation still in flight: futures hang, slots stay in use, buffers leak, and
//! a CQ shared by short-lived QPs runs out of slots. With `QpTeardown` every operation
//! resolves, every slot comes back and every buffer is dropped exactly once, never before its
//! completion (or, after the bound, before the QP is destroyed).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use common::nic::FakeNic;
use common::{Model, Tracked};
use tokio_rdma_core::{
    Completion, Dispatcher, Error, Operation, QpTeardown, TeardownAction, WcOpcode, WcStatus,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    /// Move to ERR and destroy as soon as the last handle drops.
    Naive,
    /// `QpTeardown` with this bound (in ticks).
    Teardown(u64),
}

struct Qp {
    teardown: QpTeardown,
    /// Posted, not retired.
    wr_ids: BTreeSet<u64>,
    log: Vec<TeardownAction>,
}

/// An operation future someone still awaits, holding its buffer (as `verbs`' `OpFuture`).
struct Awaited {
    op: Operation<Tracked>,
    /// Dropped when the future resolves (or never, if it hangs).
    _buf: Tracked,
}

struct World {
    nic: FakeNic,
    d: Dispatcher<Tracked>,
    model: Arc<Mutex<Model>>,
    policy: Policy,
    /// QPs whose teardown is not finished (for `Naive`: not destroyed).
    qps: BTreeMap<u32, Qp>,
    awaited: Vec<Awaited>,
    now: u64,
    buffers: usize,
    resolved: Vec<Completion>,
    /// Logs of finished teardowns, by QP.
    finished: BTreeMap<u32, Vec<TeardownAction>>,
}

impl World {
    fn new(capacity: usize, flush_per_tick: usize, policy: Policy) -> Self {
        Self {
            nic: FakeNic::new(flush_per_tick),
            d: Dispatcher::new(capacity),
            model: Arc::default(),
            policy,
            qps: BTreeMap::new(),
            awaited: Vec::new(),
            now: 0,
            buffers: 0,
            resolved: Vec::new(),
            finished: BTreeMap::new(),
        }
    }

    fn open(&mut self, flushes: bool) -> u32 {
        let qpn = self.nic.create_qp(flushes);
        let bound = match self.policy {
            Policy::Teardown(b) => b,
            Policy::Naive => 0,
        };
        let qp = Qp {
            teardown: QpTeardown::new(bound),
            wr_ids: BTreeSet::new(),
            log: Vec::new(),
        };
        self.qps.insert(qpn, qp);
        qpn
    }

    /// Posts a send with a buffer; `abandon`: its future is dropped at once (the buffer parks
    /// in the slot), else it is awaited.
    fn post(&mut self, qpn: u32, abandon: bool) -> Result<(), Error> {
        let op = self.d.reserve()?;
        let id = op.wr_id();
        let buf = Tracked::new(&self.model);
        buf.assign(id);
        self.buffers += 1;
        self.nic.post(qpn, id.into_raw(), WcOpcode::Send);
        let qp = self.qps.get_mut(&qpn).expect("live QP");
        qp.teardown.on_post();
        qp.wr_ids.insert(id.into_raw());
        if abandon {
            op.abandon(buf);
        } else {
            self.awaited.push(Awaited { op, _buf: buf });
        }
        Ok(())
    }

    fn drop_handle(&mut self, qpn: u32) {
        match self.policy {
            Policy::Naive => {
                self.nic.move_to_error(qpn);
                self.nic.destroy(qpn);
                self.qps.remove(&qpn);
            }
            Policy::Teardown(_) => {
                let qp = self.qps.get_mut(&qpn).expect("live QP");
                qp.teardown.on_last_handle_dropped(self.now);
                self.act(qpn);
            }
        }
    }

    /// Executes the QP's teardown actions.
    fn act(&mut self, qpn: u32) {
        loop {
            let Some(qp) = self.qps.get_mut(&qpn) else {
                return;
            };
            let Some(action) = qp.teardown.poll_action() else {
                return;
            };
            qp.log.push(action);
            match action {
                TeardownAction::MoveToError => self.nic.move_to_error(qpn),
                // A zero-length send marker, awaited by the closer.
                TeardownAction::PostMarkers => self.post(qpn, false).expect("slot for the marker"),
                TeardownAction::Destroy => self.nic.destroy(qpn),
                TeardownAction::FailRemaining { outstanding } => {
                    assert!(!self.nic.qps.contains_key(&qpn), "failing before destroy");
                    assert_eq!(outstanding, qp.wr_ids.len());
                    for wr_id in std::mem::take(&mut qp.wr_ids) {
                        self.model.lock().unwrap().completed.insert(wr_id);
                        let flushed = Completion {
                            wr_id,
                            status: WcStatus::WrFlushErr,
                            qp_num: qpn,
                            ..Completion::zeroed()
                        };
                        let _ = self.d.handle_completion(flushed);
                    }
                }
                TeardownAction::Drained => {
                    let qp = self.qps.remove(&qpn).expect("live QP");
                    assert!(qp.wr_ids.is_empty());
                    self.finished.insert(qpn, qp.log);
                    return;
                }
            }
        }
    }

    /// The driver polls the CQ and feeds the dispatcher; each completion retires its work
    /// request on its QP's teardown.
    fn poll_cq(&mut self) {
        for c in self.nic.poll(usize::MAX) {
            self.model.lock().unwrap().completed.insert(c.wr_id);
            let _ = self.d.handle_completion(c);
            if let Some(qp) = self.qps.get_mut(&c.qp_num) {
                if qp.wr_ids.remove(&c.wr_id) {
                    qp.teardown.on_retired();
                }
                self.act(c.qp_num);
            }
        }
    }

    /// Tasks awaiting operations poll them; a finished one drops its buffer.
    fn poll_ops(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut i = 0;
        while i < self.awaited.len() {
            if let Poll::Ready(c) = Pin::new(&mut self.awaited[i].op).poll(&mut cx) {
                self.resolved.push(c);
                drop(self.awaited.swap_remove(i));
            } else {
                i += 1;
            }
        }
    }

    /// One tick: the NIC flushes, the driver polls, teardowns see the time, tasks poll.
    fn step(&mut self) {
        self.now += 1;
        self.nic.tick();
        self.poll_cq();
        let qpns: Vec<u32> = self.qps.keys().copied().collect();
        for qpn in qpns {
            if let Some(qp) = self.qps.get_mut(&qpn) {
                qp.teardown.on_tick(self.now);
                self.act(qpn);
            }
        }
        self.poll_ops();
    }

    fn dropped(&self) -> usize {
        self.model.lock().unwrap().resources_dropped
    }

    fn violations(&self) -> Vec<String> {
        self.model.lock().unwrap().violations.clone()
    }

    /// Everything resolved, every slot free, every buffer dropped once, none too early.
    fn assert_clean(&self) {
        assert_eq!(self.awaited.len(), 0, "operations still pending");
        assert_eq!(self.d.in_flight(), 0, "slots still in flight");
        assert_eq!(self.dropped(), self.buffers, "buffers leaked");
        assert!(self.qps.is_empty(), "teardowns unfinished");
        assert_eq!(self.violations(), Vec::<String>::new());
    }
}

/// Four QPs with work in flight — some completed on the wire but not yet polled — lose their
/// last handle; then the world runs for a while.
fn four_qps_dropped_with_work_in_flight(policy: Policy) -> World {
    let mut w = World::new(64, 2, policy);
    let qpns: Vec<u32> = (0..4).map(|_| w.open(true)).collect();
    for &qpn in &qpns {
        for i in 0..6 {
            w.post(qpn, i % 2 == 0).unwrap();
        }
        assert!(w.nic.complete_oldest(qpn));
    }
    w.poll_cq();
    w.poll_ops();
    for &qpn in &qpns {
        assert!(w.nic.complete_oldest(qpn)); // in the CQ, unpolled, when the handle drops
        w.drop_handle(qpn);
    }
    for _ in 0..100 {
        w.step();
    }
    w
}

#[test]
fn naive_destroy_strands_futures_slots_and_buffers() {
    // The defect, reproduced: the destroy discarded completions and work requests, so nothing
    // ever retires them.
    let w = four_qps_dropped_with_work_in_flight(Policy::Naive);
    assert!(w.nic.discarded > 0);
    // Per QP: six posted, the first completed and polled; the other five never retire.
    assert_eq!(w.awaited.len(), 4 * 3, "awaited futures hang");
    assert_eq!(
        w.d.in_flight(),
        4 * 5,
        "their slots and the abandoned ones stay in use"
    );
    assert_eq!(w.buffers - w.dropped(), 4 * 5, "their buffers leak");
}

#[test]
fn teardown_resolves_everything_and_drops_each_buffer_at_its_completion() {
    let w = four_qps_dropped_with_work_in_flight(Policy::Teardown(1000));
    assert_eq!(w.nic.discarded, 0, "destroyed only once drained");
    assert_eq!(w.nic.destroyed, 4);
    for log in w.finished.values() {
        assert_eq!(
            log,
            &[
                TeardownAction::MoveToError,
                TeardownAction::Destroy,
                TeardownAction::Drained
            ]
        );
    }
    let flushed = w
        .resolved
        .iter()
        .filter(|c| c.status == WcStatus::WrFlushErr)
        .count();
    assert_eq!((w.resolved.len(), flushed), (4 * 3, 4 * 2));
    w.assert_clean();
}

#[test]
fn the_bound_destroys_then_fails_what_never_flushes() {
    let mut w = World::new(16, 2, Policy::Teardown(10));
    let qpn = w.open(false);
    for i in 0..6 {
        w.post(qpn, i % 2 == 1).unwrap();
    }
    assert!(w.nic.complete_oldest(qpn));
    w.drop_handle(qpn);
    for _ in 0..9 {
        w.step();
        assert!(w.nic.qps.contains_key(&qpn), "destroyed before the bound");
    }
    // The completed one retired normally; the rest stay parked, NIC-owned.
    assert_eq!(w.dropped(), 1);
    assert_eq!(w.d.in_flight(), 5);
    w.step();
    assert_eq!(
        w.finished[&qpn],
        [
            TeardownAction::MoveToError,
            TeardownAction::Destroy,
            TeardownAction::FailRemaining { outstanding: 5 },
            TeardownAction::Drained
        ]
    );
    assert!(w
        .resolved
        .iter()
        .skip(1)
        .all(|c| c.status == WcStatus::WrFlushErr));
    w.assert_clean();
}

#[test]
fn the_bound_after_a_partial_flush_fails_the_rest_and_discarded_ones() {
    let mut w = World::new(32, 1, Policy::Teardown(4));
    let qpn = w.open(true);
    for i in 0..12 {
        w.post(qpn, i % 3 == 0).unwrap();
    }
    w.drop_handle(qpn);
    for _ in 0..4 {
        w.step();
    }
    assert_eq!(
        w.finished[&qpn][2],
        TeardownAction::FailRemaining {
            outstanding: 12 - 4
        }
    );
    w.assert_clean();
}

#[test]
fn late_completions_after_the_bound_are_stale_on_a_provider_that_keeps_them() {
    let mut w = World::new(8, 1, Policy::Teardown(3));
    w.nic.discard_on_destroy = false;
    let qpn = w.open(true);
    for _ in 0..6 {
        w.post(qpn, true).unwrap();
    }
    for _ in 0..3 {
        assert!(w.nic.complete_oldest(qpn)); // left in the CQ across the destroy
    }
    w.drop_handle(qpn);
    w.nic.tick(); // one flush lands, unpolled
    w.now = 3;
    w.qps.get_mut(&qpn).unwrap().teardown.on_tick(3);
    w.act(qpn);
    assert_eq!(w.d.in_flight(), 0);
    w.poll_cq();
    // Ignored: their slots were freed, their generations moved on (reuse is safe too).
    assert_eq!(w.d.stats().stale, 4);
    w.assert_clean();
}

#[test]
fn graceful_close_drains_behind_its_marker_then_the_drop_destroys() {
    let mut w = World::new(16, 1, Policy::Teardown(1000));
    let qpn = w.open(true);
    for i in 0..4 {
        w.post(qpn, i % 2 == 0).unwrap();
    }
    let before = w.awaited.len();
    w.qps.get_mut(&qpn).unwrap().teardown.on_close(w.now);
    w.act(qpn);
    assert_eq!(
        w.awaited.len(),
        before + 1,
        "the marker is posted and awaited"
    );
    // The marker is flushed last: once it resolves, everything posted before it has.
    while !w.awaited.is_empty() {
        w.step();
    }
    assert_eq!(
        w.resolved.last().map(|c| c.status),
        Some(WcStatus::WrFlushErr)
    );
    assert_eq!(w.d.in_flight(), 0);
    assert!(w.nic.qps.contains_key(&qpn), "a handle still lives");
    w.drop_handle(qpn);
    assert_eq!(
        w.finished[&qpn],
        [
            TeardownAction::MoveToError,
            TeardownAction::PostMarkers,
            TeardownAction::Destroy,
            TeardownAction::Drained
        ]
    );
    w.assert_clean();
}

/// `qps` short-lived QPs, each dropped with three operations in flight, on one CQ of
/// `capacity` slots; 1 in 10 never flushes. A post that finds the CQ full waits (steps) for
/// a slot, at most `patience` steps. `Err(qp index)` when no slot came back.
fn churn(policy: Policy, qps: usize, capacity: usize, patience: usize) -> Result<World, usize> {
    let mut w = World::new(capacity, 2, policy);
    for i in 0..qps {
        let qpn = w.open(i % 10 != 0);
        for k in 0..3 {
            let mut waited = 0;
            while let Err(e) = w.post(qpn, (i + k) % 2 == 0) {
                assert!(matches!(e, Error::Exhausted { .. }));
                if waited == patience {
                    return Err(i);
                }
                w.step();
                waited += 1;
            }
        }
        if i % 3 == 0 {
            w.nic.complete_oldest(qpn);
        }
        w.drop_handle(qpn);
        w.step();
    }
    for _ in 0..1000 {
        w.step();
    }
    Ok(w)
}

#[test]
fn naive_short_lived_qps_exhaust_a_shared_cq() {
    let stuck = churn(Policy::Naive, 10_000, 16, 1000).err();
    assert!(
        stuck.is_some_and(|i| i < 16),
        "exhausted after {stuck:?} QPs"
    );
}

#[test]
fn ten_thousand_short_lived_qps_never_exhaust_a_small_cq() {
    let w = churn(Policy::Teardown(20), 10_000, 16, 20 + 2).unwrap();
    assert_eq!(w.finished.len(), 10_000);
    assert_eq!(w.nic.destroyed, 10_000);
    assert!(
        w.finished.values().any(|log| log.len() == 4),
        "some hit the bound"
    );
    w.assert_clean();
}
