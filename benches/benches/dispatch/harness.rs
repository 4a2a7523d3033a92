//! The machinery shared by every variant of the dispatch bench: the simulated CQ, the poller
//! thread that drains it, the waiting strategy, the counting waker and the thread set-up.
//! Everything here is the same for the async and the callback styles, so their difference is
//! the dispatch style alone.

use std::hint::spin_loop;
use std::sync::atomic::Ordering::Release;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed};
use std::sync::{Arc, Barrier};
use std::task::Wake;
use std::time::{Duration, Instant};

use tokio_rdma_core::{Completion, WcOpcode};

/// One consumer's share of the simulated CQ: the `wr_id`s it posted, in posting order, which
/// is the order the NIC completes one QP's work requests in. The consumer writes (`push` then
/// `publish`), the poller reads. Nothing but `tail` is shared state that changes, and the
/// NIC's own work (executing the request) costs nothing here.
///
/// Never overruns: a consumer has at most `len` work requests in flight (posted and not yet
/// consumed), and the poller reads an entry before dispatching it, so every entry the
/// consumer overwrites has been read.
pub struct Cq {
    entries: Box<[AtomicU64]>,
    tail: Padded<AtomicUsize>,
}

impl Cq {
    /// A CQ share for a consumer with at most `window` work requests in flight.
    pub fn new(window: usize) -> Self {
        Self {
            entries: (0..window).map(|_| AtomicU64::new(0)).collect(),
            tail: Padded(AtomicUsize::new(0)),
        }
    }

    /// The consumer's (only) writer.
    pub fn writer(&self) -> CqWriter<'_> {
        CqWriter {
            cq: self,
            tail: self.tail.0.load(Relaxed),
        }
    }
}

/// The consumer's side of its [`Cq`]: posting a work request.
pub struct CqWriter<'a> {
    cq: &'a Cq,
    tail: usize,
}

impl CqWriter<'_> {
    /// Posts one work request (visible to the poller at the next [`publish`](Self::publish)).
    #[inline]
    pub fn push(&mut self, wr_id: u64) {
        let entries = &self.cq.entries;
        entries[self.tail % entries.len()].store(wr_id, Relaxed);
        self.tail += 1;
    }

    /// Makes the pushed work requests visible to the poller (one doorbell per batch).
    #[inline]
    pub fn publish(&mut self) {
        self.cq.tail.0.store(self.tail, Release);
    }
}

/// Cache-line padding, so two consumers' state never shares a line.
#[repr(align(128))]
#[derive(Default, Debug)]
pub struct Padded<T>(pub T);

/// Waiting for the other side: exponential spinning, then yielding the core (3 threads on 2
/// cores must not spin each other out). Every waiter in the bench uses it.
#[derive(Default)]
pub struct Backoff(u32);

impl Backoff {
    /// One round of waiting.
    #[inline]
    pub fn snooze(&mut self) {
        if self.0 < 6 {
            for _ in 0..1u32 << self.0 {
                spin_loop();
            }
            self.0 += 1;
        } else {
            std::thread::yield_now();
        }
    }

    /// Progress was made: spin briefly again next time.
    #[inline]
    pub fn reset(&mut self) {
        self.0 = 0;
    }
}

/// A real waker: cloned into the slot at registration, taken and woken by the poller. A
/// busy-polling executor's wake: it counts, and the consumer polls as many operations as were
/// woken.
#[derive(Default)]
pub struct WakeCounter(Padded<AtomicU64>);

impl WakeCounter {
    /// Wakes so far (`Acquire`: what the waker published before waking is visible).
    #[inline]
    pub fn wakes(&self) -> u64 {
        self.0 .0.load(Acquire)
    }
}

impl Wake for WakeCounter {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0 .0.fetch_add(1, Release);
    }
}

/// The completion the NIC would write for `wr_id`.
#[inline]
pub fn completion(wr_id: u64, opcode: WcOpcode) -> Completion {
    Completion {
        wr_id,
        opcode,
        byte_len: 64,
        ..Completion::zeroed()
    }
}

/// The polling thread: takes up to `batch` completions at a time from the CQ (round robin over
/// the consumers' shares, as one CQ shared by several QPs) and hands each batch to `dispatch`,
/// until `stop` is set and the CQ is empty.
fn poll_cq(
    cqs: &[Cq],
    batch: usize,
    opcode: WcOpcode,
    stop: &AtomicBool,
    dispatch: &(dyn Fn(&[Completion]) + Sync),
) {
    let mut heads = vec![0usize; cqs.len()];
    let mut wcs = Vec::with_capacity(batch);
    let mut backoff = Backoff::default();
    let mut first = 0;
    loop {
        wcs.clear();
        for k in 0..cqs.len() {
            let i = (first + k) % cqs.len();
            let (cq, head) = (&cqs[i], &mut heads[i]);
            let tail = cq.tail.0.load(Acquire);
            while *head < tail && wcs.len() < batch {
                let wr_id = cq.entries[*head % cq.entries.len()].load(Relaxed);
                wcs.push(completion(wr_id, opcode));
                *head += 1;
            }
        }
        first += 1;
        if wcs.is_empty() {
            if stop.load(Acquire) {
                return;
            }
            backoff.snooze();
        } else {
            dispatch(&wcs);
            backoff.reset();
        }
    }
}

/// Runs one measurement: a poller thread on `cqs` (see [`poll_cq`]) and one thread per CQ
/// share running `consumer(i, &cqs[i])`. Returns the wall time from the first consumer's start
/// to the last one's end, as the consumers clock it themselves: a thread that is slow to be
/// scheduled after the barrier or the join (the machine is shared) is not timed.
pub fn run(
    cqs: &[Cq],
    batch: usize,
    opcode: WcOpcode,
    dispatch: &(dyn Fn(&[Completion]) + Sync),
    consumer: &(dyn Fn(usize, &Cq) + Sync),
) -> Duration {
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(cqs.len() + 2);
    std::thread::scope(|s| {
        let (stop, barrier) = (&stop, &barrier);
        s.spawn(move || {
            barrier.wait();
            poll_cq(cqs, batch, opcode, stop, dispatch);
        });
        let consumers: Vec<_> = cqs
            .iter()
            .enumerate()
            .map(|(i, cq)| {
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    consumer(i, cq);
                    (start, Instant::now())
                })
            })
            .collect();
        barrier.wait();
        let times: Vec<_> = consumers
            .into_iter()
            .map(|c| c.join().expect("consumer thread"))
            .collect();
        stop.store(true, Release);
        let start = times.iter().map(|t| t.0).min().expect("a consumer");
        let end = times.iter().map(|t| t.1).max().expect("a consumer");
        end - start
    })
}
