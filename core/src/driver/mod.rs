//! The completion driver's policy as a sans-IO state machine: which CQ to poll next, when to
//! yield, when to arm and park, when to acknowledge CQ events.
//!
//! The `verbs` driver task only *executes* the [`DriverStep`]s this machine hands out
//! (`ibv_poll_cq`, `ibv_req_notify_cq`, `ibv_get_cq_event`, `ibv_ack_cq_events`, a cooperative
//! yield, waiting for the channel fd) and reports what it saw. Every rule of
//! `ibv_get_cq_event(3)` lives here, where a scripted fake CQ can check it:
//!
//! * **poll-arm-poll:** a CQ is armed only after it polled empty for the whole spin budget, and
//!   it is polled once more right after arming ([`DriverStep::Arm`]); only if that poll is
//!   empty too is it parked. Each CQ counts the channel's polls since its own last completion:
//!   a busy CQ does not keep an idle one active (and polled, and counted as active by the
//!   futures' polling rules). A completion that lands between the last poll and the arm
//!   raises no event, and the poll after the arm is what finds it.
//! * **spurious events are normal:** an event for a CQ with nothing in it makes the CQ active;
//!   it spins for the budget and parks again.
//! * **acks are batched** ([`DriverPolicyConfig::ack_batch`]; `ibv_ack_cq_events` takes a
//!   mutex), and [`DriverPolicy::on_cq_removed`] returns what is still unacknowledged: ack it
//!   before `ibv_destroy_cq`, which blocks until acks match events.
//! * **count-bounded:** a CQ that went quiet costs `spin_polls` polls of the channel (split
//!   over the CQs active meanwhile) then one arm and poll; no clock is read.
//! * **completions before events on a wake-up:** when the driver wakes from parking
//!   ([`DriverPolicy::on_woken`]) and at most `wake_polls` CQs are parked, those CQs are polled
//!   first, and the events are read only after the tasks they woke had their turn. The event
//!   read (`ibv_get_cq_event` and the `EAGAIN` read after it) is off the path from completion
//!   to consumer. A parked CQ is armed, so a completion in it has raised an event: the drain
//!   that follows makes it active, and the usual poll-arm-poll parks it again.

mod step;

pub use step::{DriverPolicyConfig, DriverStep, EventOutcome};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Between rounds: start one, or park if nothing is active.
    Idle,
    /// `active[pos]` is polled next; whether this round found anything so far.
    Polling { pos: usize, found: bool },
    /// `active[pos]` is armed next if its spin budget ran out; `active[..end]` were active
    /// at the end of the round.
    Arming { pos: usize, end: usize },
    /// Yield before the next round.
    Yield,
    /// Woken from parking: `parked[pos]` is polled next, before the events are read.
    Waking { pos: usize, found: bool },
}

#[derive(Clone, Copy, Debug)]
struct Entry<K> {
    cq: K,
    unacked: u32,
    ack_due: bool,
    active: bool,
}

/// The per-channel completion-driver policy over CQ keys `K` (an index, an address: anything
/// `Copy + Eq` the executor can map to its CQ).
///
/// Feed it what the executor observed (`on_*`), ask [`next_step`](Self::next_step) what to do. Inputs
/// that answer a step ([`on_polled`](Self::on_polled), [`on_polled_after_arm`](
/// Self::on_polled_after_arm)) must answer the last step handed out; a report that does not
/// is ignored. Allocation-free after the CQs are registered: the active and parked sets and
/// the table are `Vec`s that only grow when a CQ is added.
///
/// # Example: an executor loop
///
/// The `verbs` driver task runs this loop with real CQs; here two in-memory counters stand in
/// for them.
///
/// ```
/// use tokio_rdma_core::{DriverPolicy, DriverPolicyConfig, DriverStep, EventOutcome};
///
/// let cfg = DriverPolicyConfig { spin_polls: 8, ..DriverPolicyConfig::default() };
/// let mut policy = DriverPolicy::new(cfg);
/// let mut cqs = [0usize; 2]; // completions waiting in each "CQ"
/// let mut armed = [true, true]; // each CQ is armed once when it is created
/// policy.add_cq(0);
/// policy.add_cq(1);
///
/// // A completion lands on armed CQ 1: the channel fd becomes readable.
/// cqs[1] = 1;
/// let mut events: Vec<usize> = vec![1];
/// armed[1] = false;
/// policy.on_readable();
///
/// let mut parks = 0;
/// while parks < 1 {
///     match policy.next_step() {
///         DriverStep::DrainEvents => {
///             for cq in events.drain(..) {
///                 if policy.on_event(cq) == EventOutcome::AckNow { /* ibv_ack_cq_events(cq, 1) */ }
///             }
///         }
///         DriverStep::Poll(cq) => {
///             let n = std::mem::take(&mut cqs[cq]); // ibv_poll_cq + Dispatcher::handle_completions
///             policy.on_polled(cq, n);
///         }
///         DriverStep::Arm(cq) => {
///             armed[cq] = true; // ibv_req_notify_cq
///             let n = std::mem::take(&mut cqs[cq]);
///             policy.on_polled_after_arm(cq, n);
///         }
///         DriverStep::Ack { .. } => { /* ibv_ack_cq_events(cq, n) */ }
///         DriverStep::Yield => { /* yield_now().await; if fd readable: policy.on_readable() */ }
///         DriverStep::Park => parks += 1, // fd.readable().await; policy.on_woken()
///     }
/// }
/// assert_eq!(cqs, [0, 0]);
/// assert!(armed[1]);
/// // Removing a CQ: ack what is left, then destroy it.
/// assert_eq!(policy.on_cq_removed(1), 1);
/// ```
#[derive(Clone, Debug)]
pub struct DriverPolicy<K = usize> {
    config: DriverPolicyConfig,
    entries: Vec<Entry<K>>,
    active: Vec<K>,
    /// `idle[i]`: polls of the channel since `active[i]`'s last completion or arm, counted at
    /// its empty polls (each adds the number of CQs active then).
    idle: Vec<u32>,
    /// Some active CQ's `idle` reached `spin_polls` in this round: arm at its end.
    ripe: bool,
    /// CQs parked by the poll after their arm (armed, not active), in parking order.
    parked: Vec<K>,
    phase: Phase,
    /// Consecutive empty rounds since the last yield.
    tight: u32,
    readable: bool,
    /// Entries with `ack_due` set.
    acks_due: usize,
}

impl<K: Copy + Eq> DriverPolicy<K> {
    /// A policy with no CQs. `tight_polls` and `ack_batch` are raised to at least 1.
    pub fn new(config: DriverPolicyConfig) -> Self {
        Self::with_capacity(config, 0)
    }

    /// A policy with room for `cqs` CQs before its tables grow.
    pub fn with_capacity(config: DriverPolicyConfig, cqs: usize) -> Self {
        Self {
            config: DriverPolicyConfig {
                tight_polls: config.tight_polls.max(1),
                ack_batch: config.ack_batch.max(1),
                ..config
            },
            entries: Vec::with_capacity(cqs),
            active: Vec::with_capacity(cqs),
            idle: Vec::with_capacity(cqs),
            ripe: false,
            parked: Vec::with_capacity(cqs),
            phase: Phase::Idle,
            tight: 0,
            readable: false,
            acks_due: 0,
        }
    }

    /// The configuration in effect.
    pub fn config(&self) -> DriverPolicyConfig {
        self.config
    }

    /// Registers a CQ the executor has just created **and armed** (a new CQ is empty, so it
    /// needs no poll after the arm). It starts parked. Returns `false` if already registered.
    pub fn add_cq(&mut self, cq: K) -> bool {
        if self.entry(cq).is_some() {
            return false;
        }
        self.entries.push(Entry {
            cq,
            unacked: 0,
            ack_due: false,
            active: false,
        });
        self.parked.push(cq);
        // Room for every CQ to be active, or parked: activating and parking never allocate.
        let room = self.entries.len() - self.active.len();
        self.active.reserve(room);
        self.idle.reserve(room);
        self.parked.reserve(self.entries.len() - self.parked.len());
        true
    }

    /// Forgets a CQ and returns how many of its events are still unacknowledged: the executor
    /// acks that many (if non-zero) before it destroys the CQ. Events read for it afterwards
    /// get [`EventOutcome::AckNow`]. `0` for an unknown CQ.
    pub fn on_cq_removed(&mut self, cq: K) -> u32 {
        let Some(i) = self.entries.iter().position(|e| e.cq == cq) else {
            return 0;
        };
        let e = self.entries.swap_remove(i);
        if e.ack_due {
            self.acks_due -= 1;
        }
        if let Some(i) = self.active.iter().position(|&a| a == cq) {
            self.active.remove(i);
            self.idle.remove(i);
            match &mut self.phase {
                Phase::Polling { pos, .. } if i < *pos => *pos -= 1,
                Phase::Arming { pos, end } => {
                    if i < *end {
                        *end -= 1;
                    }
                    if i < *pos {
                        *pos -= 1;
                    }
                }
                _ => {}
            }
        }
        self.unpark(cq);
        e.unacked
    }

    /// Drops `cq` from the parked set (it became active or was removed), keeping a wake-up's
    /// position.
    fn unpark(&mut self, cq: K) {
        if let Some(i) = self.parked.iter().position(|&p| p == cq) {
            self.parked.remove(i);
            if let Phase::Waking { pos, .. } = &mut self.phase {
                if i < *pos {
                    *pos -= 1;
                }
            }
        }
    }

    /// The channel fd is readable (seen after [`DriverStep::Park`], or by a non-blocking check
    /// after a [`DriverStep::Yield`]): the next step drains the events.
    pub fn on_readable(&mut self) {
        self.readable = true;
    }

    /// The channel fd became readable while the driver was parked ([`DriverStep::Park`]):
    /// like [`on_readable`](Self::on_readable), but when at most
    /// [`wake_polls`](DriverPolicyConfig::wake_polls) CQs are parked, the next steps poll
    /// them first ([`DriverStep::Poll`]), then yield if that found completions, and only then
    /// drain the events.
    pub fn on_woken(&mut self) {
        self.readable = true;
        let few = self.parked.len() <= self.config.wake_polls as usize;
        if self.phase == Phase::Idle && self.active.is_empty() && !self.parked.is_empty() && few {
            self.phase = Phase::Waking {
                pos: 0,
                found: false,
            };
        }
    }

    /// One CQ event read from the channel (during [`DriverStep::DrainEvents`]): counts it for
    /// acknowledgement and makes the CQ active (polled from the next round on). The event may
    /// be spurious: that is harmless.
    pub fn on_event(&mut self, cq: K) -> EventOutcome {
        let batch = self.config.ack_batch;
        let Some(e) = self.entry(cq) else {
            return EventOutcome::AckNow;
        };
        e.unacked = e.unacked.saturating_add(1);
        let due = e.unacked >= batch && !e.ack_due;
        e.ack_due |= due;
        let activate = !e.active;
        e.active = true;
        self.acks_due += usize::from(due);
        if activate {
            self.active.push(cq);
            self.idle.push(0);
            self.unpark(cq);
        }
        EventOutcome::Counted
    }

    /// The result of a [`DriverStep::Poll`]: `n` completions polled. A poll that could not run
    /// because another thread was polling that CQ must be reported with `n > 0`: the CQ must
    /// not be concluded empty.
    pub fn on_polled(&mut self, cq: K, n: usize) {
        if let Phase::Waking { pos, found } = self.phase {
            if self.parked.get(pos) == Some(&cq) {
                self.phase = Phase::Waking {
                    pos: pos + 1,
                    found: found || n > 0,
                };
            }
        }
        if let Phase::Polling { pos, found } = self.phase {
            if self.active.get(pos) == Some(&cq) {
                // Counted in the channel's polls: each of the active CQs was polled once
                // since this CQ's last look.
                let polls = u32::try_from(self.active.len()).unwrap_or(u32::MAX);
                let idle = &mut self.idle[pos];
                *idle = if n > 0 { 0 } else { idle.saturating_add(polls) };
                self.ripe |= *idle >= self.config.spin_polls.max(1);
                self.phase = Phase::Polling {
                    pos: pos + 1,
                    found: found || n > 0,
                };
            }
        }
    }

    /// Completions were taken from `cq` by someone else since the driver's last look (a
    /// future's own inline polls): the CQ is busy, so its spin budget starts over. Unlike a
    /// completion the driver found, this causes no yield (the driver woke no task). Report it
    /// before the [`on_polled`](Self::on_polled) of the same look. Ignored for a CQ that is
    /// not active.
    pub fn on_activity(&mut self, cq: K) {
        // Reported during the CQ's own look, where its position is known: no search.
        let i = match self.phase {
            Phase::Polling { pos, .. } if self.active.get(pos) == Some(&cq) => Some(pos),
            _ => self.active.iter().position(|&a| a == cq),
        };
        if let Some(i) = i {
            self.idle[i] = 0;
        }
    }

    /// The result of the poll right after a [`DriverStep::Arm`]: empty parks the CQ (its next
    /// completion raises an event); non-empty keeps it active (the event the arm will raise is
    /// then spurious, which is harmless). If arming failed, report `n > 0`: the CQ stays
    /// active and is armed again after the next spin budget.
    pub fn on_polled_after_arm(&mut self, cq: K, n: usize) {
        let Phase::Arming { pos, end } = self.phase else {
            return;
        };
        if pos >= end || self.active.get(pos) != Some(&cq) {
            return;
        }
        if n > 0 {
            self.idle[pos] = 0;
            self.phase = Phase::Arming { pos: pos + 1, end };
            return;
        }
        self.active.remove(pos);
        self.idle.remove(pos);
        self.phase = Phase::Arming { pos, end: end - 1 };
        if let Some(e) = self.entry(cq) {
            e.active = false;
            self.parked.push(cq);
        }
    }

    /// What to do next. Pending acks come first, then draining a readable fd, then the
    /// poll/yield/arm cycle over the active CQs (a round ends with the arms of the CQs whose
    /// spin budget ran out in it); [`DriverStep::Park`] when none is active.
    pub fn next_step(&mut self) -> DriverStep<K> {
        if self.acks_due > 0 {
            if let Some(e) = self.entries.iter_mut().find(|e| e.ack_due) {
                e.ack_due = false;
                self.acks_due -= 1;
                let n = std::mem::take(&mut e.unacked);
                return DriverStep::Ack { cq: e.cq, n };
            }
        }
        if let Phase::Waking { pos, found } = self.phase {
            if let Some(&cq) = self.parked.get(pos) {
                return DriverStep::Poll(cq);
            }
            // The tasks those completions woke run before the events are read.
            self.phase = Phase::Idle;
            if found {
                return DriverStep::Yield;
            }
        }
        if std::mem::take(&mut self.readable) {
            return DriverStep::DrainEvents;
        }
        loop {
            match self.phase {
                Phase::Yield => {
                    self.phase = Phase::Idle;
                    return DriverStep::Yield;
                }
                Phase::Waking { .. } => self.phase = Phase::Idle,
                Phase::Idle | Phase::Polling { .. } | Phase::Arming { .. }
                    if self.active.is_empty() =>
                {
                    self.phase = Phase::Idle;
                    self.ripe = false;
                    self.tight = 0;
                    return DriverStep::Park;
                }
                Phase::Idle => {
                    self.phase = Phase::Polling {
                        pos: 0,
                        found: false,
                    };
                }
                Phase::Polling { pos, found } => {
                    if let Some(&cq) = self.active.get(pos) {
                        return DriverStep::Poll(cq);
                    }
                    self.end_round(found);
                }
                Phase::Arming { pos, end } => {
                    if pos < end {
                        if self.idle[pos] >= self.config.spin_polls.max(1) {
                            return DriverStep::Arm(self.active[pos]);
                        }
                        // Still within its budget: stays active, unarmed.
                        self.phase = Phase::Arming { pos: pos + 1, end };
                        continue;
                    }
                    self.tight = 0;
                    self.phase = Phase::Yield;
                }
            }
        }
    }

    /// The CQs polled each round, in order.
    pub fn active(&self) -> &[K] {
        &self.active
    }

    /// Events of `cq` counted and not yet handed out in an ack (`None` if not registered).
    pub fn unacked(&self, cq: K) -> Option<u32> {
        self.entries.iter().find(|e| e.cq == cq).map(|e| e.unacked)
    }

    fn entry(&mut self, cq: K) -> Option<&mut Entry<K>> {
        self.entries.iter_mut().find(|e| e.cq == cq)
    }

    fn end_round(&mut self, found: bool) {
        let budget = self.config.spin_polls.max(1);
        // `on_activity` may have reset the CQ that was ripe.
        if std::mem::take(&mut self.ripe) && self.idle.iter().any(|&i| i >= budget) {
            // Ends with a yield too, so completions found in this round are not held up.
            self.phase = Phase::Arming {
                pos: 0,
                end: self.active.len(),
            };
            return;
        }
        if found {
            self.tight = 0;
            self.phase = Phase::Yield;
            return;
        }
        self.tight += 1;
        self.phase = if self.tight >= self.config.tight_polls {
            self.tight = 0;
            Phase::Yield
        } else {
            Phase::Polling {
                pos: 0,
                found: false,
            }
        };
    }
}

#[cfg(test)]
mod tests;
