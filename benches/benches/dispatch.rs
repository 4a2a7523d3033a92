//! Per-completion dispatch cost, end to end across threads: tokio-rdma's async dispatch
//! (`Dispatcher` + `Operation`, and the routed inbox path) against the kernel-style
//! `CallbackDispatcher` (callbacks run on the polling thread), with a locked and a lock-free
//! callback.
//!
//! Every variant has the same shape (`dispatch/harness.rs`): consumer threads post work
//! requests in batches of 1/16/64 into a simulated CQ (keeping two batches in flight), one
//! **poller thread**, separate from the consumers, takes completions off it in batches of the
//! same size and dispatches them; the consumer learns that its completions arrived and does
//! the same work per event (`State::record`: count it, add its length). What differs is only
//! how the event reaches the consumer:
//!
//! * `async_op`: the consumer polls each `Operation` once with a real (counting) waker
//!   **before** posting it, so the slot holds its waker and the WAITER flag; the poller's
//!   dispatch stores the completion and wakes; the consumer polls the woken operations again,
//!   takes the completions and records them.
//! * `async_inbox`: receives routed with their buffer into the consumer's inbox; the consumer
//!   drains it with `poll_recv` (a real waker registered whenever it is empty), records each
//!   delivery and re-posts its buffer.
//! * `callback_locked`: the kernel style: the callback, on the poller thread, takes the
//!   consumer's `Mutex` and records the completion into the consumer's state; the consumer's
//!   own code takes the same lock to read its progress.
//! * `callback_lockfree`: the callback publishes into consumer-owned atomics instead (the
//!   best case for callbacks: the style without the lock).
//!
//! `cN` = N consumer threads (1 or 2) sharing one dispatcher and the poller. Each criterion
//! iteration is one batch per consumer; `core/scripts/bench_summary.py` divides the time by
//! `consumers × batch` for ns per completion, from criterion's JSON.
//!
//! Short run (CI): `cargo bench -p tokio-rdma-bench --bench dispatch -- --warm-up-time 1
//! --measurement-time 2`.

// `criterion_group!` expands to an undocumented `pub fn`.
#![allow(missing_docs)]

#[path = "dispatch/harness.rs"]
mod harness;

use std::collections::VecDeque;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use harness::{run, Backoff, Cq, Padded, WakeCounter};
use tokio_rdma_core::{inbox, CallbackDispatcher, Completion, ConsumerId, Dispatcher, WcOpcode};

const BATCHES: [usize; 3] = [1, 16, 64];
const CONSUMERS: [usize; 2] = [1, 2];
/// Batches a consumer keeps in flight: it posts the next while the poller dispatches one.
const DEPTH: usize = 2;

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

/// The same work, published by a lock-free callback: the poller is the writer, the consumer
/// reads `count` (`Release`/`Acquire`: `bytes` is up to date with it).
#[derive(Default, Debug)]
struct AtomicState {
    count: AtomicU64,
    bytes: AtomicU64,
}

impl AtomicState {
    #[inline]
    fn record(&self, c: &Completion) {
        self.bytes.fetch_add(u64::from(c.byte_len), Relaxed);
        self.count.fetch_add(1, Release);
    }
}

/// Async: reserve a batch, poll each operation once (registers the waker, sets WAITER), post;
/// then poll the woken operations to `Ready` and record their completions.
fn async_operations(d: &Dispatcher, cq: &Cq, batch: usize, iters: u64) {
    let (window, target) = (DEPTH * batch, iters * batch as u64);
    let wake = Arc::new(WakeCounter::default());
    let waker = Waker::from(wake.clone());
    let mut cx = Context::from_waker(&waker);
    let mut ops = VecDeque::with_capacity(window);
    let mut cq = cq.writer();
    let mut state = State::default();
    let (mut posted, mut done, mut backoff) = (0, 0, Backoff::default());
    while done < target {
        if posted < target && ops.len() + batch <= window {
            for _ in 0..batch {
                let mut op = d.reserve().expect("slot");
                if Pin::new(&mut op).poll(&mut cx).is_ready() {
                    unreachable!("not posted yet");
                }
                cq.push(op.wr_id().into_raw());
                ops.push_back(op);
            }
            cq.publish();
            posted += batch as u64;
            continue;
        }
        // Operations complete, and wake, in posting order.
        let woken = wake.wakes() - done;
        if woken == 0 {
            backoff.snooze();
            continue;
        }
        backoff.reset();
        for mut op in ops.drain(..woken as usize) {
            match Pin::new(&mut op).poll(&mut cx) {
                Poll::Ready(c) => state.record(&c),
                Poll::Pending => unreachable!("woken before its completion was stored"),
            }
        }
        done += woken;
    }
    black_box(state);
}

/// Async, routed: receives delivered with their buffers into the consumer's inbox, drained
/// with `poll_recv` until `Pending` (the waker registered), recorded and re-posted.
fn async_inbox(d: &Dispatcher<u64>, cq: &Cq, batch: usize, iters: u64) {
    let (window, target) = (DEPTH * batch, iters * batch as u64);
    let wake = Arc::new(WakeCounter::default());
    let waker = Waker::from(wake.clone());
    let mut cx = Context::from_waker(&waker);
    let (tx, mut rx) = inbox(window);
    let mut cq = cq.writer();
    let mut state = State::default();
    let mut posted = 0;
    for buf in 0..(window as u64).min(target) {
        cq.push(d.reserve_into(&tx, buf).expect("slot").into_raw());
        posted += 1;
    }
    cq.publish();
    let (mut done, mut unpublished, mut backoff) = (0, 0, Backoff::default());
    while done < target {
        let seen = wake.wakes();
        match rx.poll_recv(&mut cx) {
            Poll::Ready(Some(delivery)) => {
                state.record(&delivery.completion);
                done += 1;
                if posted < target {
                    let id = d.reserve_into(&tx, delivery.resources).expect("slot");
                    cq.push(id.into_raw());
                    posted += 1;
                    unpublished += 1;
                    if unpublished == batch {
                        cq.publish();
                        unpublished = 0;
                    }
                }
            }
            Poll::Ready(None) => unreachable!("the sender is alive"),
            Poll::Pending => {
                if unpublished > 0 {
                    cq.publish();
                    unpublished = 0;
                }
                backoff.reset();
                while wake.wakes() == seen {
                    backoff.snooze();
                }
            }
        }
    }
    black_box(state);
}

/// Callback: post a batch; the poller's callbacks record the completions; the consumer reads
/// its progress with `completed` (its own code touching its state) to post more.
fn callbacks(
    cb: &CallbackDispatcher,
    consumer: ConsumerId,
    cq: &Cq,
    batch: usize,
    iters: u64,
    completed: impl Fn() -> u64,
) {
    let (window, target) = (DEPTH as u64 * batch as u64, iters * batch as u64);
    let mut cq = cq.writer();
    let base = completed();
    let (mut posted, mut done, mut backoff) = (0, 0, Backoff::default());
    while done < target {
        if posted < target && posted - done + batch as u64 <= window {
            for _ in 0..batch {
                cq.push(cb.post(consumer).expect("slot").into_raw());
            }
            cq.publish();
            posted += batch as u64;
            continue;
        }
        let now = completed() - base;
        if now == done {
            backoff.snooze();
            continue;
        }
        backoff.reset();
        done = now;
    }
}

fn cqs(consumers: usize, batch: usize) -> Vec<Cq> {
    (0..consumers).map(|_| Cq::new(DEPTH * batch)).collect()
}

fn dispatch(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch");
    for consumers in CONSUMERS {
        for batch in BATCHES {
            let id = |name: &str| BenchmarkId::new(format!("{name}/c{consumers}"), batch);
            group.throughput(Throughput::Elements((consumers * batch) as u64));
            let capacity = consumers * DEPTH * batch;

            // Each consumer and the poller use their own handle onto the shared table.
            let d: Dispatcher = Dispatcher::new(capacity);
            let handles: Vec<_> = (0..consumers).map(|_| d.clone()).collect();
            let poller = d.clone();
            group.bench_function(id("async_op"), |b| {
                b.iter_custom(|iters| {
                    let dispatch = |wcs: &[Completion]| {
                        black_box(poller.handle_completions(black_box(wcs)));
                    };
                    let t = run(
                        &cqs(consumers, batch),
                        batch,
                        WcOpcode::Send,
                        &dispatch,
                        &|i, cq| async_operations(&handles[i], cq, batch, iters),
                    );
                    assert_eq!(d.in_flight(), 0);
                    t
                })
            });

            let d: Dispatcher<u64> = Dispatcher::new(capacity);
            let handles: Vec<_> = (0..consumers).map(|_| d.clone()).collect();
            let poller = d.clone();
            group.bench_function(id("async_inbox"), |b| {
                b.iter_custom(|iters| {
                    let dispatch = |wcs: &[Completion]| {
                        black_box(poller.handle_completions(black_box(wcs)));
                    };
                    let t = run(
                        &cqs(consumers, batch),
                        batch,
                        WcOpcode::Recv,
                        &dispatch,
                        &|i, cq| async_inbox(&handles[i], cq, batch, iters),
                    );
                    assert_eq!(d.in_flight(), 0);
                    t
                })
            });

            let mut cb = CallbackDispatcher::new(capacity);
            let locked: Vec<_> = (0..consumers)
                .map(|_| {
                    let state = Arc::new(Padded(Mutex::new(State::default())));
                    let s = state.clone();
                    let id = cb.register(move |c: &Completion| s.0.lock().unwrap().record(c));
                    (id, state)
                })
                .collect();
            let lockfree: Vec<_> = (0..consumers)
                .map(|_| {
                    let state = Arc::new(Padded(AtomicState::default()));
                    let s = state.clone();
                    let id = cb.register(move |c: &Completion| s.0.record(c));
                    (id, state)
                })
                .collect();
            let dispatch = |wcs: &[Completion]| {
                black_box(cb.handle_completions(black_box(wcs)));
            };
            group.bench_function(id("callback_locked"), |b| {
                b.iter_custom(|iters| {
                    run(
                        &cqs(consumers, batch),
                        batch,
                        WcOpcode::Send,
                        &dispatch,
                        &|i, cq| {
                            let (consumer, state) = &locked[i];
                            callbacks(&cb, *consumer, cq, batch, iters, || {
                                state.0.lock().unwrap().count
                            })
                        },
                    )
                })
            });
            group.bench_function(id("callback_lockfree"), |b| {
                b.iter_custom(|iters| {
                    run(
                        &cqs(consumers, batch),
                        batch,
                        WcOpcode::Send,
                        &dispatch,
                        &|i, cq| {
                            let (consumer, state) = &lockfree[i];
                            callbacks(&cb, *consumer, cq, batch, iters, || {
                                state.0.count.load(Acquire)
                            })
                        },
                    )
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
