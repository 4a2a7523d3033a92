//! `DriverPolicy` against a scripted fake completion channel: CQs whose completions arrive at
//! chosen poll counts (the clock), that raise an event only when armed (like
//! `ibv_req_notify_cq`: a completion already queued at the arm raises none), spurious events,
//! and completions racing the arm. The executor below does what the `verbs` driver does for
//! each step.

use std::collections::VecDeque;

use proptest::prelude::*;
use tokio_rdma_core::sync::CountingAllocator;
use tokio_rdma_core::{DriverPolicy, DriverPolicyConfig, DriverStep, EventOutcome};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

/// Completions one poll takes at most.
const BATCH: usize = 4;

#[derive(Default, Debug)]
struct FakeCq {
    /// Poll-clock times at which completions land, ascending.
    arrivals: VecDeque<u64>,
    /// Landed, not yet polled.
    queued: usize,
    armed: bool,
    /// Arms (0-based) right before which a completion lands (the race with the arm).
    land_at_arm: Vec<u32>,
    arms: u32,
    /// Events read from the channel for this CQ, and acknowledged.
    got: u32,
    acked: u32,
    polled: usize,
}

#[derive(Default, Debug)]
struct Channel {
    cqs: Vec<FakeCq>,
    /// Events in the channel, not yet read.
    events: VecDeque<usize>,
    /// Poll-clock times of spurious events: (time, cq).
    spurious: VecDeque<(u64, usize)>,
    clock: u64,
    polls: u64,
    yields: u64,
    parks: u64,
    /// The executor skips the poll after an arm (the defect rdma-core warns about).
    skip_poll_after_arm: bool,
}

impl Channel {
    fn new(cqs: usize) -> Self {
        Self {
            cqs: (0..cqs).map(|_| FakeCq::default()).collect(),
            ..Self::default()
        }
    }

    /// A completion lands in `cq`: an armed CQ raises one event and disarms.
    fn land_one(&mut self, cq: usize) {
        let c = &mut self.cqs[cq];
        c.queued += 1;
        if std::mem::take(&mut c.armed) {
            self.events.push_back(cq);
        }
    }

    /// Lands every completion and spurious event due by now.
    fn land(&mut self) {
        for cq in 0..self.cqs.len() {
            while self.cqs[cq]
                .arrivals
                .front()
                .is_some_and(|&t| t <= self.clock)
            {
                self.cqs[cq].arrivals.pop_front();
                self.land_one(cq);
            }
        }
        while self.spurious.front().is_some_and(|&(t, _)| t <= self.clock) {
            let (_, cq) = self.spurious.pop_front().unwrap();
            self.events.push_back(cq);
        }
    }

    fn poll(&mut self, cq: usize) -> usize {
        self.clock += 1;
        self.polls += 1;
        self.land();
        let c = &mut self.cqs[cq];
        let n = c.queued.min(BATCH);
        c.queued -= n;
        c.polled += n;
        n
    }

    fn next_due(&self) -> Option<u64> {
        let arrivals = self.cqs.iter().filter_map(|c| c.arrivals.front().copied());
        arrivals.chain(self.spurious.front().map(|s| s.0)).min()
    }

    fn pending(&self) -> usize {
        self.cqs.iter().map(|c| c.queued + c.arrivals.len()).sum()
    }

    /// Executes steps until everything scripted has landed and been polled and the policy
    /// parks. Panics if it parks while a completion sits in a CQ that will raise no event.
    fn run(&mut self, p: &mut DriverPolicy) {
        loop {
            match p.next_step() {
                DriverStep::DrainEvents => {
                    while let Some(cq) = self.events.pop_front() {
                        self.cqs[cq].got += 1;
                        if p.on_event(cq) == EventOutcome::AckNow {
                            self.cqs[cq].acked += 1;
                        }
                    }
                }
                DriverStep::Poll(cq) => {
                    let n = self.poll(cq);
                    p.on_polled(cq, n);
                }
                DriverStep::Arm(cq) => {
                    let c = &self.cqs[cq];
                    let racing = c.land_at_arm.iter().filter(|&&a| a == c.arms).count();
                    for _ in 0..racing {
                        self.land_one(cq);
                    }
                    let c = &mut self.cqs[cq];
                    c.arms += 1;
                    c.armed = true;
                    let n = if self.skip_poll_after_arm {
                        0
                    } else {
                        self.poll(cq)
                    };
                    p.on_polled_after_arm(cq, n);
                }
                DriverStep::Ack { cq, n } => {
                    let c = &mut self.cqs[cq];
                    c.acked += n;
                    assert!(c.acked <= c.got, "cq {cq}: acked {} of {}", c.acked, c.got);
                }
                DriverStep::Yield => {
                    self.yields += 1;
                    if !self.events.is_empty() {
                        p.on_readable();
                    }
                }
                DriverStep::Park => {
                    self.parks += 1;
                    // Every CQ not being polled must be armed, or its next completion is lost.
                    for (i, c) in self.cqs.iter().enumerate() {
                        let waking = c.armed || self.events.contains(&i);
                        assert!(
                            waking,
                            "parked with cq {i} unarmed: its completions are lost"
                        );
                    }
                    if self.events.is_empty() {
                        let stranded = self.cqs.iter().position(|c| c.queued > 0);
                        assert_eq!(stranded, None, "parked with a completion no event reports");
                        let Some(t) = self.next_due() else { return };
                        self.clock = self.clock.max(t);
                        self.land();
                    }
                    assert!(!self.events.is_empty());
                    p.on_woken();
                }
            }
        }
    }

    /// Removes every CQ; returns whether acks balance events for each.
    fn remove_all(&mut self, p: &mut DriverPolicy) {
        for (i, c) in self.cqs.iter_mut().enumerate() {
            c.acked += p.on_cq_removed(i);
            assert_eq!(
                c.acked, c.got,
                "cq {i}: acks must balance events before destroy"
            );
        }
    }
}

fn setup(cqs: usize, cfg: DriverPolicyConfig) -> (Channel, DriverPolicy) {
    let mut ch = Channel::new(cqs);
    let mut p = DriverPolicy::new(cfg);
    for (i, c) in ch.cqs.iter_mut().enumerate() {
        p.add_cq(i);
        c.armed = true; // armed once at creation
    }
    (ch, p)
}

fn cfg(spin_polls: u32, tight_polls: u32, ack_batch: u32) -> DriverPolicyConfig {
    DriverPolicyConfig {
        spin_polls,
        tight_polls,
        ack_batch,
        wake_polls: 4,
    }
}

#[test]
fn a_completion_landing_between_the_last_poll_and_the_arm_is_found() {
    let (mut ch, mut p) = setup(1, cfg(10, 4, 8));
    ch.cqs[0].arrivals.push_back(5);
    // More than one poll's batch lands right before the first arm: the poll after the arm
    // finds them, and the CQ stays active until it is empty.
    ch.cqs[0].land_at_arm = vec![0; BATCH + 2];
    ch.run(&mut p);
    assert_eq!(ch.cqs[0].polled, BATCH + 3);
    ch.remove_all(&mut p);
}

#[test]
#[should_panic(expected = "parked with a completion no event reports")]
fn without_the_poll_after_arm_that_completion_is_lost() {
    // The 'before' demonstration: an executor that parks right after arming.
    let (mut ch, mut p) = setup(1, cfg(10, 4, 8));
    ch.skip_poll_after_arm = true;
    ch.cqs[0].arrivals.push_back(5);
    ch.cqs[0].land_at_arm = vec![0];
    ch.run(&mut p);
}

#[test]
fn idling_costs_the_spin_budget_then_parks() {
    for (spin, tight) in [(0, 32), (1, 1), (100, 7), (16384, 32)] {
        let (mut ch, mut p) = setup(3, cfg(spin, tight, 64));
        ch.spurious.push_back((0, 1));
        ch.run(&mut p);
        // One spurious event: the wake-up polls the 3 parked CQs, then `max(spin, 1)` empty
        // polls, one arm and its poll, then park.
        let rounds = u64::from(spin.max(1));
        assert_eq!(ch.polls, 3 + rounds + 1, "spin {spin}");
        assert_eq!(
            ch.yields,
            (rounds - 1) / u64::from(tight),
            "spin {spin} tight {tight}"
        );
        assert_eq!(ch.parks, 2);
        ch.remove_all(&mut p);
    }
}

#[test]
fn spurious_events_are_harmless_and_acked() {
    let (mut ch, mut p) = setup(2, cfg(20, 4, 3));
    for t in 0..50 {
        ch.spurious.push_back((t * 7, (t % 2) as usize));
    }
    ch.cqs[1].arrivals.extend([3, 90, 91, 92, 400]);
    ch.run(&mut p);
    assert_eq!(ch.cqs[1].polled, 5);
    assert_eq!(ch.pending(), 0);
    ch.remove_all(&mut p);
}

#[test]
fn a_busy_cq_keeps_being_polled_without_arming() {
    let (mut ch, mut p) = setup(1, cfg(50, 8, 64));
    ch.cqs[0].arrivals.extend((0..1000).map(|i| i * 3));
    ch.run(&mut p);
    assert_eq!(ch.cqs[0].polled, 1000);
    // Busy: the CQ was armed once at the very end only.
    assert_eq!(ch.cqs[0].arms, 1);
    ch.remove_all(&mut p);
}

#[test]
fn steady_state_allocates_nothing() {
    // No capacity given: adding the CQs sizes the tables.
    let mut p = DriverPolicy::new(cfg(64, 8, 16));
    for cq in 0..4 {
        p.add_cq(cq);
    }
    let mut queued = [0usize; 4];
    let mut steps = 0u64;
    let ((), allocations) = ALLOC.measure(|| {
        for i in 0..200_000u64 {
            if i % 97 == 0 {
                queued[(i % 4) as usize] += 3;
                p.on_readable();
            }
            match p.next_step() {
                DriverStep::DrainEvents => {
                    for (cq, &n) in queued.iter().enumerate() {
                        if n > 0 {
                            let _ = p.on_event(cq);
                        }
                    }
                }
                DriverStep::Poll(cq) => p.on_polled(cq, std::mem::take(&mut queued[cq])),
                DriverStep::Arm(cq) => p.on_polled_after_arm(cq, std::mem::take(&mut queued[cq])),
                _ => {}
            }
            steps += 1;
        }
    });
    assert_eq!(steps, 200_000);
    assert_eq!(allocations, 0);
}

/// CQs added while others are active: parking them all later, and waking them all, allocates
/// nothing (the tables are sized when a CQ is added, whatever the others' state then).
#[test]
fn cqs_added_while_others_are_active_park_and_wake_without_allocating() {
    let mut p = DriverPolicy::new(cfg(2, 8, 16));
    let wake_all = |p: &mut DriverPolicy, n: usize| {
        p.on_readable();
        assert_eq!(p.next_step(), DriverStep::DrainEvents);
        for cq in 0..n {
            let _ = p.on_event(cq);
        }
    };
    let run_to_park = |p: &mut DriverPolicy| loop {
        match p.next_step() {
            DriverStep::Poll(cq) => p.on_polled(cq, 0),
            DriverStep::Arm(cq) => p.on_polled_after_arm(cq, 0),
            DriverStep::Park => break,
            _ => {}
        }
    };
    for cq in 0..4 {
        p.add_cq(cq);
    }
    wake_all(&mut p, 4);
    for cq in 4..8 {
        p.add_cq(cq);
    }
    let ((), allocations) = ALLOC.measure(|| {
        run_to_park(&mut p);
        wake_all(&mut p, 8);
        run_to_park(&mut p);
    });
    assert!(p.active().is_empty());
    assert_eq!(allocations, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the arrivals, spurious events, races with the arm and tuning: every
    /// completion is polled, the driver never parks with a completion no event will report,
    /// and acks balance events when the CQs are removed.
    #[test]
    fn no_completion_is_ever_lost(
        spin in 0u32..40,
        tight in 1u32..10,
        ack_batch in 1u32..6,
        arrivals in prop::collection::vec(prop::collection::vec(0u64..3000, 0..40), 1..4),
        spurious in prop::collection::vec((0u64..3000, 0usize..4), 0..20),
        races in prop::collection::vec((0usize..4, 0u32..20), 0..30),
        wake_polls in 0u32..4,
    ) {
        let config = DriverPolicyConfig { wake_polls, ..cfg(spin, tight, ack_batch) };
        let (mut ch, mut p) = setup(arrivals.len(), config);
        let mut total = 0;
        for (c, mut a) in ch.cqs.iter_mut().zip(arrivals) {
            a.sort_unstable();
            total += a.len();
            c.arrivals = a.into();
        }
        let n = ch.cqs.len();
        let mut spurious: Vec<_> = spurious.into_iter().map(|(t, cq)| (t, cq % n)).collect();
        spurious.sort_unstable();
        ch.spurious = spurious.into();
        for (cq, arm) in races {
            ch.cqs[cq % n].land_at_arm.push(arm);
        }
        let raced = |c: &FakeCq| c.land_at_arm.iter().filter(|&&a| a < c.arms).count();
        ch.run(&mut p);
        let polled: usize = ch.cqs.iter().map(|c| c.polled).sum();
        let raced: usize = ch.cqs.iter().map(raced).sum();
        prop_assert_eq!(polled, total + raced);
        prop_assert_eq!(ch.pending(), 0);
        ch.remove_all(&mut p);
    }
}
