//! A scripted fake CQ driving a [`Dispatcher`], with invariant checks, shared by the scripted
//! tests (`fake_cq.rs`) and the property tests (`proptest.rs`).
#![allow(dead_code)]

pub mod nic;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use tokio_rdma_core::{
    inbox, Completion, Delivery, Dispatcher, InboxReceiver, InboxSender, Operation, Routed,
    WcOpcode, WcStatus, WrId,
};

/// What the test knows about the NIC: which work requests it is done with.
#[derive(Default, Debug)]
pub struct Model {
    /// wr_ids whose (first) completion has been handed to the dispatcher.
    pub completed: HashSet<u64>,
    /// wr_ids that never reached the NIC.
    pub unposted: HashSet<u64>,
    pub violations: Vec<String>,
    pub resources_dropped: usize,
}

/// A resource (stand-in for a buffer / MR guard) that checks, when dropped, that the NIC is
/// done with it.
pub struct Tracked {
    id: Arc<AtomicU64>,
    model: Arc<Mutex<Model>>,
}

const UNASSIGNED: u64 = u64::MAX;

impl Tracked {
    pub fn new(model: &Arc<Mutex<Model>>) -> Self {
        Self {
            id: Arc::new(AtomicU64::new(UNASSIGNED)),
            model: model.clone(),
        }
    }
    pub fn assign(&self, id: WrId) {
        self.id.store(id.into_raw(), SeqCst);
    }
    pub fn id(&self) -> u64 {
        self.id.load(SeqCst)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let id = self.id();
        let mut m = self.model.lock().unwrap();
        m.resources_dropped += 1;
        if id != UNASSIGNED && !m.completed.contains(&id) && !m.unposted.contains(&id) {
            m.violations
                .push(format!("resource of {id:#x} dropped before its completion"));
        }
    }
}

pub struct Flag(pub AtomicBool);
impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, SeqCst);
    }
}

pub struct LiveOp {
    pub op: Operation<Tracked>,
    pub id: WrId,
    pub woken: Arc<Flag>,
    pub waiting: bool,
}

/// One step of a script.
#[derive(Clone, Debug)]
pub enum Step {
    /// Reserve an operation and post it to the NIC.
    Post,
    /// Reserve a routed (receive) slot with a resource and post it.
    PostRouted,
    /// Reserve, then fail the post: `cancel_unposted` (even) / `cancel_routed` (odd).
    PostFails(u8),
    /// The NIC completes its i-th outstanding WR (out of order) successfully.
    NicComplete(usize),
    /// The QP goes to error: every outstanding WR is flushed (`WrFlushErr`) in order.
    NicFlushAll,
    /// The CQ repeats the i-th completion ever produced (duplicate, stale once reused).
    Duplicate(usize),
    /// A garbage wr_id (never issued: index out of range or absurd generation).
    Garbage(u64),
    /// Reorder the CQ queue (rotate by k).
    Reorder(usize),
    /// Poll up to n completions from the CQ and hand them to the dispatcher.
    PollCq(usize),
    /// Poll the i-th live operation once.
    PollOp(usize),
    /// Drop the i-th live operation.
    DropOp(usize),
    /// Abandon the i-th live operation with a resource.
    AbandonOp(usize),
    /// Take one delivery out of the inbox.
    Recv,
    /// The CQ is destroyed: `fail_all(WrFlushErr)`.
    FailAll,
}

pub struct Harness {
    pub d: Dispatcher<Tracked>,
    pub model: Arc<Mutex<Model>>,
    /// Posted, not yet completed by the NIC: (wr_id, opcode).
    pub nic: Vec<(u64, WcOpcode)>,
    /// Completed by the NIC (or repeated / garbage), not yet polled.
    pub cq: VecDeque<Completion>,
    /// wr_ids whose first completion has been fed.
    pub fed_ids: HashSet<u64>,
    pub history: Vec<Completion>,
    /// The first completion the NIC produced per wr_id (what the owner must see).
    pub first: HashMap<u64, Completion>,
    pub ops: Vec<LiveOp>,
    pub tx: InboxSender<Delivery<Tracked>>,
    pub rx: InboxReceiver<Delivery<Tracked>>,
    /// Completions fed to the dispatcher (including `fail_all`'s synthetic ones).
    pub fed: u64,
    pub outcomes: HashMap<Routed, u64>,
    /// Completed operations (wr_id -> completion received by the owner).
    pub finished: HashMap<u64, Completion>,
    pub received: Vec<Completion>,
    /// Routed slots posted and not yet taken out of the inbox (the back-pressure rule keeps
    /// this at most the inbox capacity).
    pub routed_outstanding: usize,
}

impl Harness {
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = inbox(capacity);
        Self {
            d: Dispatcher::new(capacity),
            model: Arc::default(),
            nic: Vec::new(),
            cq: VecDeque::new(),
            fed_ids: HashSet::new(),
            history: Vec::new(),
            first: HashMap::new(),
            ops: Vec::new(),
            tx,
            rx,
            fed: 0,
            outcomes: HashMap::new(),
            finished: HashMap::new(),
            received: Vec::new(),
            routed_outstanding: 0,
        }
    }

    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.model.lock().unwrap()
    }

    pub fn violation(&self, v: String) {
        self.model().violations.push(v);
    }

    fn nic_done(&mut self, i: usize, status: WcStatus) {
        let (wr_id, opcode) = self.nic.remove(i);
        let c = Completion {
            wr_id,
            status,
            opcode,
            byte_len: wr_id as u32 & 0xffff,
            qp_num: 7,
            ..Completion::zeroed()
        };
        self.first.insert(wr_id, c);
        self.history.push(c);
        self.cq.push_back(c);
    }

    fn feed(&mut self, c: Completion) {
        // The first completion fed for a wr_id the NIC produced is the genuine one; repeats
        // (even reordered before the original) and garbage are not.
        let genuine = self.first.contains_key(&c.wr_id) && self.fed_ids.insert(c.wr_id);
        if genuine {
            self.model().completed.insert(c.wr_id);
        }
        let routed = self.d.handle_completion(c);
        self.fed += 1;
        *self.outcomes.entry(routed).or_default() += 1;
        match routed {
            Routed::Woken => {
                if !genuine {
                    self.violation(format!(
                        "non-genuine completion {:#x} woke an owner",
                        c.wr_id
                    ));
                }
                if let Some(op) = self.ops.iter().find(|o| o.id.into_raw() == c.wr_id) {
                    if op.waiting && !op.woken.0.load(SeqCst) {
                        self.violation(format!("waiting op {:#x} not woken", c.wr_id));
                    }
                }
            }
            Routed::Delivered | Routed::Reclaimed if !genuine => {
                self.violation(format!("non-genuine {:#x} was {routed:?}", c.wr_id));
            }
            Routed::Stale | Routed::Unknown | Routed::Duplicate if genuine => {
                self.violation(format!("genuine {:#x} was {routed:?}", c.wr_id));
            }
            _ => {}
        }
    }

    pub fn step(&mut self, s: &Step) {
        let pick = |len: usize, i: usize| (len > 0).then(|| i % len);
        match *s {
            Step::Post => {
                if let Ok(op) = self.d.reserve() {
                    let id = op.wr_id();
                    self.nic.push((id.into_raw(), WcOpcode::Send));
                    self.ops.push(LiveOp {
                        op,
                        id,
                        woken: Arc::new(Flag(AtomicBool::new(false))),
                        waiting: false,
                    });
                }
            }
            Step::PostRouted => {
                // Back-pressure rule: re-post a receive only after its delivery was taken out.
                if self.routed_outstanding >= self.tx.capacity() {
                    return;
                }
                let r = Tracked::new(&self.model);
                let ticket = r.id.clone();
                if let Ok(id) = self.d.reserve_into(&self.tx, r) {
                    ticket.store(id.into_raw(), SeqCst);
                    self.routed_outstanding += 1;
                    self.nic.push((id.into_raw(), WcOpcode::Recv));
                }
            }
            Step::PostFails(k) => {
                if k % 2 == 0 {
                    if let Ok(op) = self.d.reserve() {
                        op.cancel_unposted();
                    }
                } else {
                    let r = Tracked::new(&self.model);
                    let ticket = r.id.clone();
                    if let Ok(id) = self.d.reserve_into(&self.tx, r) {
                        ticket.store(id.into_raw(), SeqCst);
                        self.model().unposted.insert(id.into_raw());
                        match self.d.cancel_routed(id) {
                            Some(r) if r.id() == id.into_raw() => drop(r),
                            _ => self.violation(format!("cancel_routed({id:?}) failed")),
                        }
                    }
                }
            }
            Step::NicComplete(i) => {
                if let Some(i) = pick(self.nic.len(), i) {
                    self.nic_done(i, WcStatus::Success);
                }
            }
            Step::NicFlushAll => {
                while !self.nic.is_empty() {
                    self.nic_done(0, WcStatus::WrFlushErr);
                }
            }
            Step::Duplicate(i) => {
                if let Some(i) = pick(self.history.len(), i) {
                    self.cq.push_back(self.history[i]);
                }
            }
            Step::Garbage(raw) => {
                let cap = self.d.capacity() as u32;
                let id = if raw % 2 == 0 {
                    WrId::new(cap.saturating_add(raw as u32 % 1000), raw as u32)
                } else {
                    WrId::new(raw as u32 % cap.max(1), 0x8000_0000 | (raw >> 32) as u32)
                };
                self.cq.push_back(Completion {
                    wr_id: id.into_raw(),
                    ..Completion::zeroed()
                });
            }
            Step::Reorder(k) => {
                if !self.cq.is_empty() {
                    let k = k % self.cq.len();
                    self.cq.rotate_left(k);
                }
            }
            Step::PollCq(n) => {
                for _ in 0..n {
                    let Some(c) = self.cq.pop_front() else { break };
                    self.feed(c);
                }
            }
            Step::PollOp(i) => {
                if let Some(i) = pick(self.ops.len(), i) {
                    self.poll_op(i);
                }
            }
            Step::DropOp(i) => {
                if let Some(i) = pick(self.ops.len(), i) {
                    drop(self.ops.swap_remove(i));
                }
            }
            Step::AbandonOp(i) => {
                if let Some(i) = pick(self.ops.len(), i) {
                    let live = self.ops.swap_remove(i);
                    let r = Tracked::new(&self.model);
                    r.assign(live.id);
                    live.op.abandon(r);
                }
            }
            Step::Recv => {
                if let Some(d) = self.rx.try_recv() {
                    self.check_delivery(d);
                }
            }
            Step::FailAll => {
                let in_cq: HashSet<u64> = self
                    .cq
                    .drain(..)
                    .map(|c| c.wr_id)
                    .filter(|id| self.first.contains_key(id) && !self.fed_ids.contains(id))
                    .collect();
                let outstanding: Vec<u64> =
                    self.nic.drain(..).map(|(id, _)| id).chain(in_cq).collect();
                self.cq.clear();
                for id in &outstanding {
                    let c = Completion {
                        wr_id: *id,
                        status: WcStatus::WrFlushErr,
                        ..Completion::zeroed()
                    };
                    self.first.insert(*id, c);
                    self.fed_ids.insert(*id);
                    self.model().completed.insert(*id);
                }
                let before = self.d.stats().total();
                self.d.fail_all(WcStatus::WrFlushErr);
                let synthetic = self.d.stats().total() - before;
                if synthetic != outstanding.len() as u64 {
                    self.violation(format!(
                        "fail_all completed {synthetic} slots, {} outstanding",
                        outstanding.len()
                    ));
                }
                self.fed += synthetic;
            }
        }
    }

    fn check_delivery(&mut self, d: Delivery<Tracked>) {
        let id = d.completion.wr_id;
        if d.resources.id() != id {
            self.violation(format!(
                "delivery {id:#x} carries resource {:#x}",
                d.resources.id()
            ));
        }
        if self.first.get(&id) != Some(&d.completion) {
            self.violation(format!(
                "delivery {id:#x} is not the NIC's first completion"
            ));
        }
        self.received.push(d.completion);
        self.routed_outstanding -= 1;
    }

    /// Polls live op `i`; on Ready checks the completion and removes the op.
    pub fn poll_op(&mut self, i: usize) -> bool {
        let live = &mut self.ops[i];
        let waker = Waker::from(live.woken.clone());
        live.woken.0.store(false, SeqCst);
        match Pin::new(&mut live.op).poll(&mut Context::from_waker(&waker)) {
            Poll::Pending => {
                live.waiting = true;
                false
            }
            Poll::Ready(c) => {
                let live = self.ops.swap_remove(i);
                if live.op.wr_id() != live.id {
                    self.violation(format!("wr_id changed after completion: {:?}", live.id));
                }
                if self.first.get(&live.id.into_raw()) != Some(&c) {
                    self.violation(format!(
                        "op {:?} got {c:?}, not the NIC's completion",
                        live.id
                    ));
                }
                self.finished.insert(live.id.into_raw(), c);
                true
            }
        }
    }

    /// Completes everything, delivers everything, then checks the end-state invariants.
    pub fn finish(mut self) {
        self.step(&Step::NicFlushAll);
        let n = self.cq.len();
        self.step(&Step::PollCq(n));
        while !self.ops.is_empty() {
            if !self.poll_op(0) {
                let id = self.ops[0].id;
                self.violation(format!(
                    "op {id:?} still pending after everything completed"
                ));
                self.ops.swap_remove(0);
            }
        }
        while let Some(d) = self.rx.try_recv() {
            self.check_delivery(d);
        }
        let stats = self.d.stats();
        let get = |r| self.outcomes.get(&r).copied().unwrap_or(0);
        assert_eq!(self.d.in_flight(), 0, "every slot must be free at the end");
        assert_eq!(
            stats.total(),
            self.fed,
            "every completion counted once: {stats:?}"
        );
        assert_eq!(stats.stale, get(Routed::Stale));
        assert_eq!(stats.unknown, get(Routed::Unknown));
        assert_eq!(stats.duplicate, get(Routed::Duplicate));
        assert_eq!(stats.undeliverable, 0, "inbox sized for every routed slot");
        assert!(stats.completed >= get(Routed::Woken));
        // Every slot is reusable: reserve them all.
        let all: Vec<_> = (0..self.d.capacity())
            .map(|_| self.d.reserve().unwrap())
            .collect();
        assert!(self.d.reserve().is_err());
        for op in all {
            op.cancel_unposted();
        }
        assert_eq!(self.d.in_flight(), 0);
        let m = self.model.lock().unwrap();
        assert!(m.violations.is_empty(), "violations: {:#?}", m.violations);
    }

    pub fn violations(&self) -> Vec<String> {
        self.model().violations.clone()
    }
}

/// Runs a script and checks the invariants.
pub fn run(capacity: usize, script: &[Step]) {
    let mut h = Harness::new(capacity);
    for s in script {
        h.step(s);
        let v = h.violations();
        assert!(v.is_empty(), "after {s:?}: {v:#?}");
    }
    h.finish();
}
