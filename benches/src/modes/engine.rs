//! Drives [`RawFlow`]s on the calling thread, without a runtime: each flow's CQ is owned by a
//! `RawPoller`, and completions reach the flows
//!
//! * `busy-poll`: by spinning on every CQ (`ibv_poll_cq` in a loop, as perftest does);
//! * `event`: by polling, arming every CQ, polling again, then blocking on the completion
//!   channel (perftest `-e`; the connections of a run share the device's channel);
//! * `callback`: through core's `CallbackDispatcher`: each request reserves a slot naming its
//!   flow's consumer, and the polling thread hands every batch to the dispatcher, which runs
//!   the consumer's callback; the callback takes the consumer's lock (the kernel's style) and
//!   posts the flow's next requests from there.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use tokio_rdma_core::{CallbackDispatcher, Completion};
use tokio_rdma_verbs::{CompletionQueue, RawPoller};

use super::raw::{Ids, RawFlow};
use super::Plan;
use crate::protocol::Mode;

/// Completions taken per `ibv_poll_cq` (the driver's default batch).
const BATCH: usize = 32;
/// Empty polls between two looks at the clock for a stall (busy-poll).
const STALL_CHECK_POLLS: u32 = 1 << 16;
/// Longest block on the channel before the stall check (event mode).
const WAIT_SLICE: Duration = Duration::from_millis(500);

/// Fails the run when no flow made progress for `stall`.
struct Watchdog {
    stall: Duration,
    last: u64,
    since: Instant,
}

impl Watchdog {
    fn new(stall: Duration) -> Self {
        Self {
            stall,
            last: 0,
            since: Instant::now(),
        }
    }

    fn check(&mut self, progress: u64) -> Result<()> {
        if progress != self.last {
            self.last = progress;
            self.since = Instant::now();
        } else if self.since.elapsed() > self.stall {
            bail!("no progress from the peer for {:?}", self.stall);
        }
        Ok(())
    }
}

/// Runs `flows` (each with its connection's CQ) to the end in `mode` (`busy-poll`, `event`
/// or `callback`) and gives them back with what they measured.
pub fn run(
    mode: Mode,
    flows: Vec<(RawFlow, CompletionQueue)>,
    stall: Duration,
) -> Result<Vec<RawFlow>> {
    let (mut flows, cqs): (Vec<_>, Vec<_>) = flows.into_iter().unzip();
    let mut pollers = cqs
        .iter()
        .map(CompletionQueue::raw_poller)
        .collect::<Result<Vec<_>, _>>()?;
    match mode {
        Mode::BusyPoll | Mode::Event => {
            poll_loop(mode == Mode::Event, &mut flows, &mut pollers, stall)?;
            Ok(flows)
        }
        Mode::Callback => callback_loop(flows, &mut pollers, stall),
        m => Err(anyhow!("{m} is not a raw-verbs mode")),
    }
}

fn poll_loop(
    event: bool,
    flows: &mut [RawFlow],
    pollers: &mut [RawPoller],
    stall: Duration,
) -> Result<()> {
    for f in flows.iter_mut() {
        f.start()?;
    }
    let mut out = [Completion::zeroed(); BATCH];
    let mut dog = Watchdog::new(stall);
    let mut idle = 0u32;
    let mut left = flows.iter().filter(|f| !f.is_done()).count();
    let route = |flows: &mut [RawFlow], batch: &[Completion], left: &mut usize| {
        for c in batch {
            let Some(f) = flows.get_mut(c.wr_id as usize) else {
                bail!("completion for unknown flow {}", c.wr_id);
            };
            if f.is_done() {
                continue;
            }
            f.on_completion(c)?;
            if f.is_done() {
                *left -= 1;
            }
        }
        Ok(())
    };
    while left > 0 {
        let mut got = 0;
        for p in pollers.iter_mut() {
            let n = p.poll(&mut out)?;
            route(flows, &out[..n], &mut left)?;
            got += n;
        }
        if got > 0 {
            idle = 0;
            continue;
        }
        if event {
            for p in pollers.iter_mut() {
                p.arm()?;
            }
            for p in pollers.iter_mut() {
                let n = p.poll(&mut out)?;
                route(flows, &out[..n], &mut left)?;
                got += n;
            }
            if got == 0 {
                pollers[0].wait(WAIT_SLICE)?;
                dog.check(flows.iter().map(RawFlow::progress).sum())?;
            }
        } else {
            idle += 1;
            if idle.is_multiple_of(STALL_CHECK_POLLS) {
                dog.check(flows.iter().map(RawFlow::progress).sum())?;
            }
            std::hint::spin_loop();
        }
    }
    Ok(())
}

fn callback_loop(
    flows: Vec<RawFlow>,
    pollers: &mut [RawPoller],
    stall: Duration,
) -> Result<Vec<RawFlow>> {
    let n_flows = flows.len();
    let capacity = n_flows * (2 * Plan::depth(1) + 8);
    let mut dispatcher = CallbackDispatcher::new(capacity);
    let slot = Arc::new(OnceLock::new());
    let failure: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
    let finished = Arc::new(AtomicUsize::new(0));
    let cells: Vec<Arc<Mutex<RawFlow>>> =
        flows.into_iter().map(|f| Arc::new(Mutex::new(f))).collect();
    for cell in &cells {
        let (me, failure, finished) = (cell.clone(), failure.clone(), finished.clone());
        // The consumer's callback, run on the polling thread under the consumer's lock.
        let consumer = dispatcher.register(move |c: &Completion| {
            let mut f = me.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_done() {
                return;
            }
            match f.on_completion(c) {
                Ok(()) if f.is_done() => {
                    finished.fetch_add(1, Ordering::Release);
                }
                Ok(()) => {}
                Err(e) => {
                    failure
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                }
            }
        });
        cell.lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_ids(Ids::Callback {
                dispatcher: slot.clone(),
                consumer,
            });
    }
    let dispatcher = Arc::new(dispatcher);
    slot.set(Arc::downgrade(&dispatcher))
        .map_err(|_| anyhow!("dispatcher set twice"))?;
    for cell in &cells {
        let mut f = cell.lock().unwrap_or_else(|p| p.into_inner());
        f.start()?;
        if f.is_done() {
            finished.fetch_add(1, Ordering::Release);
        }
    }
    let mut out = [Completion::zeroed(); BATCH];
    let mut dog = Watchdog::new(stall);
    let mut idle = 0u32;
    while finished.load(Ordering::Acquire) < n_flows {
        let mut got = 0;
        for p in pollers.iter_mut() {
            let n = p.poll(&mut out)?;
            dispatcher.handle_completions(&out[..n]);
            got += n;
        }
        if let Some(e) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(e);
        }
        if got > 0 {
            idle = 0;
            continue;
        }
        idle += 1;
        if idle.is_multiple_of(STALL_CHECK_POLLS) {
            dog.check(dispatcher.stats().total())?;
        }
        std::hint::spin_loop();
    }
    // The callbacks hold the other references to the cells.
    drop(dispatcher);
    cells
        .into_iter()
        .map(|c| {
            Arc::try_unwrap(c)
                .map_err(|_| anyhow!("a flow is still referenced"))
                .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        })
        .collect()
}
