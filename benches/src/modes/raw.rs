//! One side of a flow as a state machine over raw verbs: [`RawFlow::start`] posts the first
//! work, [`RawFlow::on_completion`] takes each completion of the flow's QP and posts what
//! follows. Whoever polls (a spinning thread, a thread blocked on the channel, a callback
//! dispatcher) only routes completions to it.
//!
//! Completions are recognised by opcode: RC completes each queue in order, so the receive
//! that completes is always the oldest posted one (its ring slot is a counter), and sends
//! complete in the order posted.
//!
//! The flow's region (registered by the session, kept by the QP for raw work):
//! `[receive ring: depth slots][tx][stop][READ targets: depth slots]`, `size` bytes each; the
//! first slot is what the peer may WRITE into and READ from (never posted as a receive
//! target in the tests where that happens: `write_lat` receives are zero-length).

use std::sync::{Arc, OnceLock, Weak};

use anyhow::{bail, Context as _, Result};
use tokio_rdma_core::{CallbackDispatcher, Completion, ConsumerId, WcOpcode};
use tokio_rdma_verbs::{MemoryRegion, PeerWritable, QueuePair, RawRegion, RemoteBuffer, SendOp};

use super::{clock, Deadline, Plan, Record, Role, Tally, MAX_INLINE, SIGNAL_EVERY, STOP, STOP_IMM};
use crate::protocol::Test;

/// The bytes of a flow's raw region for messages of `size`.
pub fn region_len(size: usize) -> usize {
    (2 * Plan::depth(size) + 2) * size.max(1)
}

/// Where a flow's work-request ids come from.
#[derive(Clone, Debug)]
pub enum Ids {
    /// A fixed id (the flow's index): the poller routes by it.
    Flow(u64),
    /// A slot of the callback dispatcher per request, routed to the consumer's callback.
    Callback {
        /// The dispatcher (set once every consumer is registered).
        dispatcher: Arc<OnceLock<Weak<CallbackDispatcher>>>,
        /// This flow's consumer.
        consumer: ConsumerId,
    },
}

/// The id of an unsignaled request in callback mode: it only completes on error, and then
/// names no slot (beyond any dispatcher's capacity, bit 31 clear), so the dispatcher counts
/// it as unknown instead of running a callback.
const UNSIGNALED_ID: u64 = 0x7fff_fffe;

impl Ids {
    /// The id of a request that completes only when it fails (no slot to reserve).
    fn unsignaled(&self) -> u64 {
        match self {
            Ids::Flow(i) => *i,
            Ids::Callback { .. } => UNSIGNALED_ID,
        }
    }

    fn next_for(&self, signaled: bool) -> Result<u64> {
        if signaled {
            self.next()
        } else {
            Ok(self.unsignaled())
        }
    }

    fn next(&self) -> Result<u64> {
        match self {
            Ids::Flow(i) => Ok(*i),
            Ids::Callback {
                dispatcher,
                consumer,
            } => {
                let d = dispatcher
                    .get()
                    .and_then(Weak::upgrade)
                    .context("the callback dispatcher is gone")?;
                Ok(d.post(*consumer)?.into_raw())
            }
        }
    }
}

/// One side of one flow over raw verbs.
pub struct RawFlow {
    /// The flow's index in the session.
    pub index: usize,
    qp: QueuePair,
    role: Role,
    plan: Plan,
    depth: usize,
    region: Arc<MemoryRegion<Vec<u8>, PeerWritable>>,
    raw: RawRegion,
    peer: RemoteBuffer,
    ids: Ids,
    data: Vec<u8>,
    stop_data: Vec<u8>,
    /// Receives completed (the next one lands in slot `recvs % depth`).
    recvs: u64,
    /// Sends posted (every `SIGNAL_EVERY`-th is signaled).
    sends: u64,
    /// Iterations started (warm-up included).
    started: u64,
    /// Bandwidth: iterations completed.
    completed: u64,
    in_flight: usize,
    posts_over: bool,
    stop_posted: bool,
    done: bool,
    deadline: Deadline,
    /// What the client measured.
    pub record: Record,
    tally: Tally,
}

impl std::fmt::Debug for RawFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawFlow")
            .field("index", &self.index)
            .field("role", &self.role)
            .field("started", &self.started)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl RawFlow {
    /// A flow on `qp` whose region is `region` (of [`region_len`] bytes, registered with
    /// local write access) and whose peer exposes `peer`.
    pub fn new(
        index: usize,
        qp: QueuePair,
        role: Role,
        plan: Plan,
        mut region: MemoryRegion<Vec<u8>, PeerWritable>,
        peer: RemoteBuffer,
        tally: Tally,
    ) -> Result<Self> {
        let size = plan.size.max(1);
        let depth = Plan::depth(size);
        if region.len() < region_len(size) {
            bail!(
                "flow region of {} bytes, {} needed",
                region.len(),
                region_len(size)
            );
        }
        region.write_at((depth + 1) * size, &[STOP])?;
        let region = Arc::new(region);
        let raw = qp.keep_region_mut(region.clone())?;
        let mut stop_data = vec![0u8; size];
        stop_data[0] = STOP;
        let record = Record {
            post: Vec::with_capacity(plan.stamp_capacity()),
            done: Vec::with_capacity(if plan.test.is_latency() {
                0
            } else {
                plan.stamp_capacity()
            }),
            ops: 0,
        };
        Ok(Self {
            index,
            qp,
            role,
            depth,
            deadline: Deadline::new(None),
            plan,
            region,
            raw,
            peer,
            ids: Ids::Flow(index as u64),
            data: vec![0u8; size],
            stop_data,
            recvs: 0,
            sends: 0,
            started: 0,
            completed: 0,
            in_flight: 0,
            posts_over: false,
            stop_posted: false,
            done: false,
            record,
            tally,
        })
    }

    /// Sets where request ids come from (default: the flow's index).
    pub fn set_ids(&mut self, ids: Ids) {
        self.ids = ids;
    }

    /// The flow's queue pair.
    pub fn qp(&self) -> &QueuePair {
        &self.qp
    }

    /// Whether this side is finished.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Iterations started so far (progress, for stall detection).
    pub fn progress(&self) -> u64 {
        self.started + self.recvs + self.completed
    }

    fn size(&self) -> usize {
        self.plan.size.max(1)
    }

    fn slot(&self, k: usize) -> std::ops::Range<usize> {
        let s = self.size();
        k * s..(k + 1) * s
    }

    fn receives_data(&self) -> bool {
        self.role == Role::Server || matches!(self.plan.test, Test::SendLat | Test::WriteLat)
    }

    fn post_recv(&mut self, slot: usize) -> Result<()> {
        let range = if self.plan.test == Test::WriteLat {
            0..0
        } else {
            self.slot(slot)
        };
        let id = self.ids.next()?;
        self.qp.post_raw_recv(id, &self.raw, range)?;
        Ok(())
    }

    /// Posts the first work: the receive ring, and the client's first request(s).
    pub fn start(&mut self) -> Result<()> {
        self.deadline = Deadline::new(self.plan.duration);
        if self.receives_data() {
            for k in 0..self.depth {
                self.post_recv(k)?;
            }
        }
        if self.role == Role::Client {
            if self.plan.test.is_latency() {
                self.issue()?;
            } else {
                self.fill()?;
            }
        }
        Ok(())
    }

    /// A SEND of the data or stop message (inline when small); signaled every
    /// `SIGNAL_EVERY`-th and when `stop`.
    fn send(&mut self, stop: bool) -> Result<()> {
        let signaled = stop || self.sends % SIGNAL_EVERY == SIGNAL_EVERY - 1;
        self.sends += 1;
        let id = self.ids.next_for(signaled)?;
        if self.size() <= MAX_INLINE {
            let data = if stop { &self.stop_data } else { &self.data };
            self.qp.post_raw_inline(id, data, signaled)?;
        } else {
            // The stop slot holds the marker (written in `new`).
            let slot = self.slot(self.depth + usize::from(stop));
            self.qp
                .post_raw_send(id, SendOp::Send, &self.raw, slot, signaled)?;
        }
        Ok(())
    }

    fn write_imm(&mut self, imm: u32) -> Result<()> {
        let stop = imm == STOP_IMM;
        let signaled = stop || self.sends % SIGNAL_EVERY == SIGNAL_EVERY - 1;
        self.sends += 1;
        let id = self.ids.next_for(signaled)?;
        let remote = self.peer.slice(0, self.size() as u32)?;
        let op = SendOp::WriteWithImm(remote, imm);
        if self.size() <= MAX_INLINE {
            self.qp.post_raw_inline_op(id, op, &self.data, signaled)?;
        } else {
            let tx = self.slot(self.depth);
            self.qp.post_raw_send(id, op, &self.raw, tx, signaled)?;
        }
        Ok(())
    }

    /// The client's next request, timed; one at a time (latency tests).
    fn issue(&mut self) -> Result<()> {
        let warm = self.plan.warmup;
        let measured = self.started.saturating_sub(warm);
        let over = self.started >= warm && self.deadline.stop_before(measured, self.plan.iters);
        if self.started >= warm {
            let now = clock().stamp();
            if let Some(&last) = self.record.post.last() {
                self.record.ops += 1;
                self.tally.record(self.index, now.saturating_sub(last));
            }
            self.record.post.push(now);
        }
        if over {
            self.stop_posted = true;
            return match self.plan.test {
                Test::SendLat => self.send(true),
                Test::WriteLat => self.write_imm(STOP_IMM),
                _ => self.send(true),
            };
        }
        self.started += 1;
        match self.plan.test {
            Test::SendLat => self.send(false),
            Test::WriteLat => self.write_imm((self.started - 1) as u32 & 0x7fff_ffff),
            Test::ReadLat => {
                let id = self.ids.next()?;
                let remote = self.peer.slice(0, self.size() as u32)?;
                let target = self.slot(self.depth + 2);
                self.qp
                    .post_raw_send(id, SendOp::Read(remote), &self.raw, target, true)?;
                Ok(())
            }
            t => bail!("{t} is not a latency test"),
        }
    }

    /// Keeps `depth` requests in flight (bandwidth tests).
    fn fill(&mut self) -> Result<()> {
        while !self.posts_over && self.in_flight < self.depth {
            let warm = self.plan.warmup;
            if self.started >= warm
                && self
                    .deadline
                    .stop_before(self.started - warm, self.plan.iters)
            {
                self.posts_over = true;
                break;
            }
            if self.started >= warm {
                self.record.post.push(clock().stamp());
            }
            let id = self.ids.next()?;
            let slot = (self.started % self.depth as u64) as usize;
            let remote = self.peer.slice(0, self.size() as u32)?;
            match self.plan.test {
                Test::SendBw => {
                    let tx = self.slot(self.depth);
                    self.qp
                        .post_raw_send(id, SendOp::Send, &self.raw, tx, true)?;
                }
                Test::WriteBw => {
                    let tx = self.slot(self.depth);
                    self.qp
                        .post_raw_send(id, SendOp::Write(remote), &self.raw, tx, true)?;
                }
                Test::ReadBw => {
                    let target = self.slot(self.depth + 2 + slot);
                    self.qp
                        .post_raw_send(id, SendOp::Read(remote), &self.raw, target, true)?;
                }
                t => bail!("{t} is not a bandwidth test"),
            }
            self.started += 1;
            self.in_flight += 1;
        }
        if self.posts_over && self.in_flight == 0 && !self.stop_posted {
            self.stop_posted = true;
            self.send(true)?;
        }
        Ok(())
    }

    /// Takes one completion of this flow's QP and posts what follows.
    pub fn on_completion(&mut self, c: &Completion) -> Result<()> {
        if !c.is_success() {
            bail!(
                "flow {}: {:?} completion failed: {:?} (vendor error {:#x})",
                self.index,
                c.opcode,
                c.status,
                c.vendor_err
            );
        }
        match c.opcode {
            WcOpcode::Recv | WcOpcode::RecvRdmaWithImm => self.on_recv(c),
            _ => self.on_send_done(),
        }
    }

    fn on_recv(&mut self, c: &Completion) -> Result<()> {
        let slot = (self.recvs % self.depth as u64) as usize;
        self.recvs += 1;
        let stop = match c.opcode {
            WcOpcode::RecvRdmaWithImm => c.imm_data == Some(STOP_IMM),
            _ => {
                let mut first = [0u8; 1];
                self.region.read_at(self.slot(slot).start, &mut first)?;
                first[0] == STOP
            }
        };
        match self.role {
            Role::Client => {
                if self.stop_posted {
                    // The echo of our stop: the server is through.
                    self.done = true;
                    return Ok(());
                }
                self.post_recv(slot)?;
                self.issue()
            }
            Role::Server => {
                if !stop {
                    self.post_recv(slot)?;
                }
                match self.plan.test {
                    Test::SendLat => self.send(stop)?,
                    Test::WriteLat => self.write_imm(c.imm_data.unwrap_or(0))?,
                    _ if stop => self.done = true,
                    _ => {}
                }
                if stop {
                    self.stop_posted = true;
                }
                Ok(())
            }
        }
    }

    fn on_send_done(&mut self) -> Result<()> {
        if self.role == Role::Server {
            // Only the echo of the stop message is signaled among the server's last sends.
            if self.stop_posted {
                self.done = true;
            }
            return Ok(());
        }
        match self.plan.test {
            Test::SendLat | Test::WriteLat => Ok(()),
            Test::ReadLat if self.stop_posted => {
                self.done = true;
                Ok(())
            }
            Test::ReadLat => self.issue(),
            _ if self.stop_posted => {
                self.done = true;
                Ok(())
            }
            _ => {
                self.in_flight -= 1;
                let k = self.completed;
                self.completed += 1;
                if k >= self.plan.warmup {
                    let now = clock().stamp();
                    let posted = self.record.post[(k - self.plan.warmup) as usize];
                    self.record.done.push(now);
                    self.record.ops += 1;
                    self.tally.record(self.index, now.saturating_sub(posted));
                }
                self.fill()
            }
        }
    }
}
