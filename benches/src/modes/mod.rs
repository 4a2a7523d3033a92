//! The dispatch modes: what the two sides of a flow do for each test, and how completions
//! reach that code.
//!
//! * [`raw`]: a flow as an event-driven state machine over raw verbs (`post_raw_*`), fed one
//!   completion at a time; [`engine`] drives such machines in `busy-poll` (spin on the
//!   CQs), `event` (block on the completion channel) and `callback` (core's
//!   `CallbackDispatcher`, one polling thread, each callback taking its consumer's lock).
//! * [`future`]: a flow as an `async fn` over tokio-rdma's futures and receive streams
//!   (`async`, `async-mt`).
//!
//! Both speak the same wire protocol, so any mode of the client works against any mode of
//! the server. Every test ends with the client's *stop* message, a SEND whose first byte is
//! [`STOP`] (a WRITE with immediate [`STOP_IMM`] in `write_lat`), so the server needs no
//! iteration count and `--duration` works like `--iters`.

pub mod engine;
pub mod future;
pub mod raw;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::clock::CycleClock;
use crate::protocol::Test;

/// First byte of the stop message.
pub const STOP: u8 = 0xff;
/// Immediate data of the stop WRITE in `write_lat`.
pub const STOP_IMM: u32 = u32::MAX;
/// Receives kept posted and requests kept in flight by a bandwidth test, at most.
pub const MAX_DEPTH: usize = 64;
/// Memory a flow's receive ring may take: deep rings for small messages, shallow for large.
const RING_BYTES: usize = 32 << 20;
/// A signaled send every this many (the others are retired by it; RC completes in order).
pub const SIGNAL_EVERY: u64 = 16;
/// Messages up to this size are sent inline (perftest's default for the latency tests).
pub const MAX_INLINE: usize = 236;
/// Iterations between two looks at the clock in `--duration` runs (a clock read is a system
/// call in the VM: never per iteration).
pub const CLOCK_EVERY: u64 = 64;

/// Which side of the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Measures: posts the test's requests and sends the stop message.
    Client,
    /// Mirrors: echoes (ping-pongs) or receives, until the stop message.
    Server,
}

/// How long a client runs.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// The test.
    pub test: Test,
    /// Message size in bytes (at least 1).
    pub size: usize,
    /// Unmeasured iterations first.
    pub warmup: u64,
    /// Measured iterations (ignored with `duration`).
    pub iters: u64,
    /// Run for this long (measured part) instead of `iters`.
    pub duration: Option<Duration>,
    /// A silent peer fails the run after this long without progress.
    pub stall: Duration,
}

impl Plan {
    /// Receive-ring depth (= requests in flight of a bandwidth test) for `size`.
    pub fn depth(size: usize) -> usize {
        (RING_BYTES / size.max(1)).clamp(2, MAX_DEPTH)
    }

    /// Capacity to reserve for the stamps of one flow.
    pub fn stamp_capacity(&self) -> usize {
        match self.duration {
            Some(_) => 1 << 20,
            None => self.iters as usize + 1,
        }
    }
}

/// What a client flow measured: cycle stamps, perftest style.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// Latency tests: a stamp before each measured post plus one at the last completion.
    /// Bandwidth tests: a stamp before each measured post.
    pub post: Vec<u64>,
    /// Bandwidth tests: a stamp at each measured completion.
    pub done: Vec<u64>,
    /// Measured operations.
    pub ops: u64,
}

/// The structure every flow's completion handler updates: a counter per flow and a
/// histogram of operation times in cycles. With `--shared-state` one instance behind one lock
/// is shared by all flows (the contention case); without, each flow has its own.
#[derive(Debug)]
pub struct SharedState {
    /// Operations per flow.
    pub counters: Vec<u64>,
    /// Operation times, cycles.
    pub hist: Histogram<u64>,
}

impl SharedState {
    /// State for `flows` flows.
    pub fn new(flows: usize) -> Self {
        Self {
            counters: vec![0; flows],
            hist: Histogram::new(3).expect("3 significant figures is valid"),
        }
    }

    /// Records one operation of `flow` that took `cycles`.
    pub fn record(&mut self, flow: usize, cycles: u64) {
        if let Some(c) = self.counters.get_mut(flow) {
            *c += 1;
        }
        self.hist.saturating_record(cycles.max(1));
    }
}

/// Where a flow's handler records: the shared structure, or its own counter.
#[derive(Clone, Debug)]
pub enum TallyState {
    /// One structure for all flows, behind a lock.
    Shared(Arc<Mutex<SharedState>>),
    /// Per-flow counter only (no lock, no sharing).
    Own(u64),
}

/// A flow's completion handler: `work` rounds of computation per operation (`--handler-work`,
/// outside any lock: what a consumer does with a message), then the record.
#[derive(Clone, Debug)]
pub struct Tally {
    /// Where it records.
    pub state: TallyState,
    /// Rounds of computation per operation.
    pub work: u32,
}

impl Tally {
    /// A handler recording into `shared`.
    pub fn shared(shared: Arc<Mutex<SharedState>>, work: u32) -> Self {
        Self {
            state: TallyState::Shared(shared),
            work,
        }
    }

    /// A handler with a counter of its own.
    pub fn own(work: u32) -> Self {
        Self {
            state: TallyState::Own(0),
            work,
        }
    }

    /// The handler's work for one completed operation.
    pub fn record(&mut self, flow: usize, cycles: u64) {
        if self.work > 0 {
            handler_work(self.work, cycles);
        }
        match &mut self.state {
            TallyState::Shared(s) => s
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(flow, cycles),
            TallyState::Own(n) => *n += 1,
        }
    }
}

/// `rounds` of xorshift over `seed`: CPU work the compiler cannot drop (the result goes
/// through `black_box`). A small function of its own, not inlined into its caller: under the
/// VM's emulation a loop whose code crosses a 4 KiB page runs several times slower (a build
/// where it was inlined put it across a page, and the handler took 8 ms instead of 1.1 ms
/// with the same instructions), and a 120-byte function at the 16-byte alignment of
/// functions rarely crosses one. It can still: `objdump` tells where it landed.
#[inline(never)]
fn handler_work(rounds: u32, seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x)
}

/// Whether a `--duration` run is over (looks at the clock only every [`CLOCK_EVERY`]
/// iterations).
#[derive(Debug)]
pub struct Deadline {
    end: Option<std::time::Instant>,
    over: bool,
}

impl Deadline {
    /// For a run of `duration` from now, or none.
    pub fn new(duration: Option<Duration>) -> Self {
        Self {
            end: duration.map(|d| std::time::Instant::now() + d),
            over: false,
        }
    }

    /// Whether measured iteration `i` (0-based) should not be started, with `iters` the
    /// limit when there is no duration.
    pub fn stop_before(&mut self, i: u64, iters: u64) -> bool {
        match self.end {
            None => i >= iters,
            Some(end) => {
                if !self.over && i.is_multiple_of(CLOCK_EVERY) {
                    self.over = std::time::Instant::now() >= end;
                }
                self.over
            }
        }
    }
}

/// A cycle clock for the flows of one process (calibrated once).
pub fn clock() -> &'static CycleClock {
    static CLOCK: std::sync::OnceLock<CycleClock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(CycleClock::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_shrinks_with_size() {
        assert_eq!(Plan::depth(2), MAX_DEPTH);
        assert_eq!(Plan::depth(1 << 20), 32);
        assert_eq!(Plan::depth(1 << 23), 4);
        assert_eq!(Plan::depth(1 << 30), 2);
    }

    #[test]
    fn deadline_without_duration_counts() {
        let mut d = Deadline::new(None);
        assert!(!d.stop_before(9, 10));
        assert!(d.stop_before(10, 10));
        let mut d = Deadline::new(Some(Duration::ZERO));
        assert!(d.stop_before(0, 0), "checked at iteration 0");
    }

    #[test]
    fn handler_work_depends_on_its_rounds() {
        assert_eq!(handler_work(0, 6), 7);
        assert_ne!(handler_work(10, 6), handler_work(11, 6));
    }

    #[test]
    fn shared_state_counts_per_flow() {
        let mut t = Tally::shared(Arc::new(Mutex::new(SharedState::new(2))), 100);
        t.record(1, 10);
        t.record(1, 0);
        let TallyState::Shared(s) = t.state else {
            unreachable!()
        };
        let s = s.lock().unwrap();
        assert_eq!(s.counters, vec![0, 2]);
        assert_eq!(s.hist.len(), 2);
    }
}
