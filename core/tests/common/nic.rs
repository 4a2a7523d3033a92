//! A fake NIC: QPs sharing one CQ, behaving like a hardware provider where teardown cares.
//! Moving a QP to ERR flushes its outstanding work requests (`flush_per_tick` per tick, in
//! order, or never for a QP created with `flushes: false`); destroying a QP forgets its work
//! requests and — like mlx5's `__mlx5_cq_clean` — discards its unpolled completions from the
//! CQ (unless `discard_on_destroy` is off, as on a provider that leaves them).

use std::collections::{BTreeMap, VecDeque};

use tokio_rdma_core::{Completion, WcOpcode, WcStatus};

/// A QP's state as the NIC sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpState {
    Rts,
    Err,
}

#[derive(Debug)]
pub struct FakeQp {
    pub state: QpState,
    /// Posted work requests the NIC has not completed: (wr_id, opcode).
    pub posted: VecDeque<(u64, WcOpcode)>,
    /// Whether ERR flushes this QP's work requests (a `false` QP models flushes that never
    /// come: a wedged device, a lost event).
    pub flushes: bool,
}

#[derive(Debug)]
pub struct FakeNic {
    /// Live (not destroyed) QPs by number.
    pub qps: BTreeMap<u32, FakeQp>,
    /// The CQ: completions produced, not yet polled.
    pub cq: VecDeque<Completion>,
    /// Flush completions each QP in ERR produces per tick.
    pub flush_per_tick: usize,
    pub discard_on_destroy: bool,
    /// Completions discarded by destroys.
    pub discarded: usize,
    pub destroyed: usize,
    next_qpn: u32,
}

impl FakeNic {
    pub fn new(flush_per_tick: usize) -> Self {
        Self {
            qps: BTreeMap::new(),
            cq: VecDeque::new(),
            flush_per_tick,
            discard_on_destroy: true,
            discarded: 0,
            destroyed: 0,
            next_qpn: 1,
        }
    }

    pub fn create_qp(&mut self, flushes: bool) -> u32 {
        let qpn = self.next_qpn;
        self.next_qpn += 1;
        let qp = FakeQp {
            state: QpState::Rts,
            posted: VecDeque::new(),
            flushes,
        };
        self.qps.insert(qpn, qp);
        qpn
    }

    fn qp(&mut self, qpn: u32) -> &mut FakeQp {
        match self.qps.get_mut(&qpn) {
            Some(qp) => qp,
            None => panic!("QP {qpn} used after it was destroyed"),
        }
    }

    /// Posts a work request (a QP in ERR accepts it and flushes it like the others).
    pub fn post(&mut self, qpn: u32, wr_id: u64, opcode: WcOpcode) {
        self.qp(qpn).posted.push_back((wr_id, opcode));
    }

    fn produce(&mut self, qpn: u32, (wr_id, opcode): (u64, WcOpcode), status: WcStatus) {
        self.cq.push_back(Completion {
            wr_id,
            status,
            opcode,
            qp_num: qpn,
            ..Completion::zeroed()
        });
    }

    /// The wire completes the oldest work request of a QP in RTS. Whether there was one.
    pub fn complete_oldest(&mut self, qpn: u32) -> bool {
        let qp = self.qp(qpn);
        if qp.state != QpState::Rts {
            return false;
        }
        let Some(wr) = qp.posted.pop_front() else {
            return false;
        };
        self.produce(qpn, wr, WcStatus::Success);
        true
    }

    pub fn move_to_error(&mut self, qpn: u32) {
        self.qp(qpn).state = QpState::Err;
    }

    /// Destroys a QP: its work requests never complete, and its unpolled completions vanish
    /// from the CQ if `discard_on_destroy`.
    pub fn destroy(&mut self, qpn: u32) {
        assert!(self.qps.remove(&qpn).is_some(), "QP {qpn} destroyed twice");
        self.destroyed += 1;
        if self.discard_on_destroy {
            let before = self.cq.len();
            self.cq.retain(|c| c.qp_num != qpn);
            self.discarded += before - self.cq.len();
        }
    }

    /// Time passes: QPs in ERR flush some of their work requests.
    pub fn tick(&mut self) {
        let erroring: Vec<u32> = self
            .qps
            .iter()
            .filter(|(_, qp)| qp.state == QpState::Err && qp.flushes)
            .map(|(&n, _)| n)
            .collect();
        for qpn in erroring {
            for _ in 0..self.flush_per_tick {
                let Some(wr) = self.qp(qpn).posted.pop_front() else {
                    break;
                };
                self.produce(qpn, wr, WcStatus::WrFlushErr);
            }
        }
    }

    /// `ibv_poll_cq`: up to `n` completions, oldest first.
    pub fn poll(&mut self, n: usize) -> Vec<Completion> {
        let n = n.min(self.cq.len());
        self.cq.drain(..n).collect()
    }
}
