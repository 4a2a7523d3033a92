//! Per-completion dispatch cost: tokio-rdma's async dispatch (`Dispatcher` + `Operation`
//! polled to `Ready`, and the routed inbox path) against the kernel-style `CallbackDispatcher`
//! (callbacks run on the polling thread, each taking its consumer's lock).
//!
//! Same inputs for both: batches of 1/16/64 completions, as `ibv_poll_cq` would return them;
//! same bookkeeping (slot table with generations, lock-free free list); same consumer work per
//! event (`State::record`). The async consumer owns its state (it is a task); the callback
//! consumer's state is shared with the callback, so it sits behind the consumer's `Mutex`,
//! which the consumer's own code also takes once per batch to read its results.
//!
//! "threads" = 1 or N threads running the workload concurrently against one shared dispatcher
//! (N QPs sharing one CQ's slot table); each thread is one consumer. Each criterion iteration
//! is one batch per thread; divide the time by `threads × batch` for ns per completion
//! (`core/scripts/bench_summary.py` does that from criterion's JSON).

// `criterion_group!` expands to an undocumented `pub fn`.
#![allow(missing_docs)]

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures::task::noop_waker_ref;
use tokio_rdma_core::{inbox, CallbackDispatcher, Completion, ConsumerId, Dispatcher, WcOpcode};

const BATCHES: [usize; 3] = [1, 16, 64];

/// The consumer's work per completion.
#[derive(Default, Debug)]
struct State {
    count: u64,
    bytes: u64,
}

impl State {
    #[inline]
    fn record(&mut self, c: &Completion) {
        self.count += 1;
        self.bytes += u64::from(c.byte_len);
    }
}

fn completion(wr_id: u64, opcode: WcOpcode) -> Completion {
    Completion {
        wr_id,
        opcode,
        byte_len: 64,
        ..Completion::zeroed()
    }
}

/// Runs `work(thread, iters)` on `threads` threads at once; returns the wall time.
fn run_threads(threads: usize, iters: u64, work: &(dyn Fn(usize, u64) + Sync)) -> Duration {
    if threads == 1 {
        let start = Instant::now();
        work(0, iters);
        return start.elapsed();
    }
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    work(t, iters);
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for h in handles {
            h.join().unwrap();
        }
        start.elapsed()
    })
}

/// Async: reserve a batch of operations, dispatch the batch, poll each operation to `Ready`.
fn async_operations(d: &Dispatcher, batch: usize, iters: u64) {
    let mut ops = Vec::with_capacity(batch);
    let mut wcs = Vec::with_capacity(batch);
    let mut state = State::default();
    let mut cx = Context::from_waker(noop_waker_ref());
    for _ in 0..iters {
        wcs.clear();
        for _ in 0..batch {
            let op = d.reserve().expect("slot");
            wcs.push(completion(op.wr_id().into_raw(), WcOpcode::Send));
            ops.push(op);
        }
        black_box(d.handle_completions(black_box(&wcs)));
        for mut op in ops.drain(..) {
            match Pin::new(&mut op).poll(&mut cx) {
                Poll::Ready(c) => state.record(&c),
                Poll::Pending => unreachable!("completed"),
            }
        }
    }
    black_box(state);
}

/// Async, routed: receives delivered with their buffers into the consumer's inbox, drained and
/// re-posted.
fn async_inbox(d: &Dispatcher<u64>, batch: usize, iters: u64) {
    let (tx, mut rx) = inbox(batch);
    let mut posted: Vec<_> = (0..batch as u64)
        .map(|buf| d.reserve_into(&tx, buf).expect("slot"))
        .collect();
    let mut wcs = Vec::with_capacity(batch);
    let mut state = State::default();
    for _ in 0..iters {
        wcs.clear();
        wcs.extend(
            posted
                .drain(..)
                .map(|id| completion(id.into_raw(), WcOpcode::Recv)),
        );
        black_box(d.handle_completions(black_box(&wcs)));
        while let Some(delivery) = rx.try_recv() {
            state.record(&delivery.completion);
            posted.push(d.reserve_into(&tx, delivery.resources).expect("slot"));
        }
    }
    for id in posted {
        d.cancel_routed(id);
    }
    black_box(state);
}

/// Callback: post a batch, dispatch it (callbacks lock the consumer's state), then the
/// consumer's own code takes its lock to read the results.
fn callbacks(
    cb: &CallbackDispatcher,
    consumer: ConsumerId,
    shared: &Mutex<State>,
    batch: usize,
    iters: u64,
) {
    let mut wcs = Vec::with_capacity(batch);
    for _ in 0..iters {
        wcs.clear();
        for _ in 0..batch {
            let id = cb.post(consumer).expect("slot");
            wcs.push(completion(id.into_raw(), WcOpcode::Send));
        }
        black_box(cb.handle_completions(black_box(&wcs)));
        black_box(shared.lock().unwrap().count);
    }
}

fn dispatch(c: &mut Criterion) {
    let n = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let mut group = c.benchmark_group("dispatch");
    for threads in [1, n] {
        for batch in BATCHES {
            let id = |name: &str| BenchmarkId::new(format!("{name}/t{threads}"), batch);
            group.throughput(Throughput::Elements((threads * batch) as u64));

            // Each thread (consumer) uses its own handle onto the shared table, as tasks do.
            let d: Dispatcher = Dispatcher::new(threads * batch);
            let handles: Vec<_> = (0..threads).map(|_| d.clone()).collect();
            group.bench_function(id("async_op"), |b| {
                b.iter_custom(|iters| {
                    run_threads(threads, iters, &|t, it| {
                        async_operations(&handles[t], batch, it)
                    })
                })
            });

            let d: Dispatcher<u64> = Dispatcher::new(threads * batch);
            let handles: Vec<_> = (0..threads).map(|_| d.clone()).collect();
            group.bench_function(id("async_inbox"), |b| {
                b.iter_custom(|iters| {
                    run_threads(threads, iters, &|t, it| async_inbox(&handles[t], batch, it))
                })
            });

            let mut cb = CallbackDispatcher::new(threads * batch);
            let consumers: Vec<_> = (0..threads)
                .map(|_| {
                    let state = Arc::new(Mutex::new(State::default()));
                    let s = state.clone();
                    let id = cb.register(move |c: &Completion| s.lock().unwrap().record(c));
                    (id, state)
                })
                .collect();
            group.bench_function(id("callback"), |b| {
                b.iter_custom(|iters| {
                    run_threads(threads, iters, &|t, it| {
                        let (consumer, state) = &consumers[t];
                        callbacks(&cb, *consumer, state, batch, it)
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
