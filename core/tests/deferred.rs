//! `Dispatcher::handle_completions_deferred` runs no consumer code: resources are dropped and
//! tasks woken in `Aftermath::finish`, after the call. Each scenario also runs through
//! `handle_completions`, where the same effects happen inside the call (what the probes must
//! detect).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use tokio_rdma_core::{inbox, Aftermath, Completion, Dispatcher, Routed, WrId};

thread_local! {
    /// Set while the test is inside a `handle_completions*` call (the driver's critical
    /// section).
    static ROUTING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` as the driver would while holding its per-CQ polling flag.
fn routing<T>(f: impl FnOnce() -> T) -> T {
    ROUTING.with(|r| r.set(true));
    let v = f();
    ROUTING.with(|r| r.set(false));
    v
}

/// What ran, and whether it ran inside a `handle_completions*` call.
type Events = Vec<(String, bool)>;

/// The log of what ran.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<(String, bool)>>>);

impl Log {
    fn record(&self, what: String) {
        let inside = ROUTING.with(Cell::get);
        self.0.lock().unwrap().push((what, inside));
    }
    fn take(&self) -> Events {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A resource whose `Drop` is consumer code.
struct Probe(&'static str, Log);

impl Drop for Probe {
    fn drop(&mut self) {
        self.1.record(format!("drop {}", self.0));
    }
}

/// A task whose wake-up is consumer code.
struct Task(&'static str, Log);

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.1.record(format!("wake {}", self.0));
    }
}

fn waker(name: &'static str, log: &Log) -> Waker {
    Waker::from(Arc::new(Task(name, log.clone())))
}

fn completion(id: WrId) -> Completion {
    Completion {
        wr_id: id.into_raw(),
        ..Completion::zeroed()
    }
}

/// Routes `batch` either way; returns what ran during the call and what ran after it.
fn route(
    d: &Dispatcher<Probe>,
    batch: &[Completion],
    deferred: bool,
    log: &Log,
) -> (Events, Events) {
    let mut after = Aftermath::new();
    routing(|| {
        if deferred {
            d.handle_completions_deferred(batch, &mut after)
        } else {
            d.handle_completions(batch)
        }
    });
    let during = log.take();
    after.finish();
    assert!(after.is_empty());
    (during, log.take())
}

/// Every kind of parked resource: an abandoned operation's, a failed delivery's (inbox
/// closed), and the deliveries still queued in an inbox whose last sender sits in a slot.
fn parked_resources_scenario(deferred: bool) -> (Events, Events) {
    let log = Log::default();
    let d: Dispatcher<Probe> = Dispatcher::new(8);
    let op = d.reserve().unwrap();
    let abandoned = op.wr_id();
    op.abandon(Probe("abandoned", log.clone()));
    // Two receives into an inbox; only the slots keep senders.
    let (tx, rx) = inbox(4);
    let queued = d.reserve_into(&tx, Probe("queued", log.clone())).unwrap();
    let refused = d.reserve_into(&tx, Probe("refused", log.clone())).unwrap();
    drop(tx);
    // The first receive is delivered and stays queued; then the consumer goes away.
    assert_eq!(d.handle_completion(completion(queued)), Routed::Delivered);
    drop(rx);
    assert!(log.take().is_empty());
    let out = route(
        &d,
        &[completion(abandoned), completion(refused)],
        deferred,
        &log,
    );
    assert_eq!(d.in_flight(), 0);
    let s = d.stats();
    assert_eq!((s.reclaimed, s.undeliverable), (2, 1));
    out
}

#[test]
fn parked_resources_are_dropped_in_finish_not_while_routing() {
    let expected = ["drop abandoned", "drop refused", "drop queued"].map(String::from);
    let (during, after) = parked_resources_scenario(true);
    assert_eq!(during, [], "consumer code ran inside the deferred call");
    let mut dropped: Vec<_> = after.iter().map(|(w, _)| w.clone()).collect();
    dropped.sort();
    let mut want = expected.to_vec();
    want.sort();
    assert_eq!(dropped, want);
    assert!(after.iter().all(|(_, inside)| !inside));

    // The in-place path runs the same drops inside the call (what the probes detect).
    let (during, after) = parked_resources_scenario(false);
    assert_eq!(during.len(), 3, "{during:?}");
    assert!(during.iter().all(|(_, inside)| *inside));
    assert_eq!(after, []);
}

/// Four waiting operations completed out of order plus a delivery: nothing is woken during
/// the deferred call; `finish` wakes the operations in completion order, then the receiver.
fn wake_scenario(deferred: bool) -> (Events, Events) {
    let log = Log::default();
    let d: Dispatcher<Probe> = Dispatcher::new(8);
    let names = ["op0", "op1", "op2", "op3"];
    let mut ops: Vec<_> = names
        .iter()
        .map(|name| {
            let mut op = d.reserve().unwrap();
            let w = waker(name, &log);
            assert!(Pin::new(&mut op)
                .poll(&mut Context::from_waker(&w))
                .is_pending());
            op
        })
        .collect();
    let (tx, mut rx) = inbox(4);
    let recv = d.reserve_into(&tx, Probe("buffer", log.clone())).unwrap();
    let rx_waker = waker("receiver", &log);
    assert!(rx
        .poll_recv(&mut Context::from_waker(&rx_waker))
        .is_pending());
    let batch: Vec<_> = [2, 0, 3, 1]
        .iter()
        .map(|&i| completion(ops[i].wr_id()))
        .chain([completion(recv)])
        .collect();
    let out = route(&d, &batch, deferred, &log);
    for op in &mut ops {
        assert!(op.try_complete().is_some());
    }
    // Its buffer's drop is logged after `out` was taken: not part of the wake log.
    assert!(rx.try_recv().is_some(), "delivered");
    out
}

#[test]
fn wakes_run_in_finish_in_completion_order() {
    let order = [
        "wake op2",
        "wake op0",
        "wake op3",
        "wake op1",
        "wake receiver",
    ];
    let (during, after) = wake_scenario(true);
    assert_eq!(during, [], "a task was woken inside the deferred call");
    assert_eq!(after, order.map(|w| (w.to_string(), false)));

    // The in-place path wakes inside the call.
    let (during, after) = wake_scenario(false);
    assert_eq!(during, order.map(|w| (w.to_string(), true)));
    assert_eq!(after, []);
}

/// The completion is observable at once; only the wake-up waits for `finish`.
#[test]
fn completions_are_observable_before_finish() {
    let log = Log::default();
    let d: Dispatcher<Probe> = Dispatcher::new(2);
    let mut op = d.reserve().unwrap();
    let w = waker("op", &log);
    assert!(Pin::new(&mut op)
        .poll(&mut Context::from_waker(&w))
        .is_pending());
    let mut after = Aftermath::new();
    let live = d.handle_completions_deferred(&[completion(op.wr_id())], &mut after);
    assert_eq!(live, 1);
    assert!(!after.is_empty());
    assert!(matches!(
        Pin::new(&mut op).poll(&mut Context::from_waker(&w)),
        Poll::Ready(_)
    ));
    assert!(log.take().is_empty());
    // Dropping the aftermath finishes it.
    drop(after);
    assert_eq!(log.take(), [("wake op".to_string(), false)]);
}

/// A batch longer than the capacity loses nothing: what does not fit runs in place.
#[test]
fn overflow_beyond_capacity_runs_in_place() {
    const EXTRA: usize = 3;
    let n = Aftermath::<Probe>::CAPACITY + EXTRA;
    let log = Log::default();
    let d: Dispatcher<Probe> = Dispatcher::new(n);
    let batch: Vec<_> = (0..n)
        .map(|_| {
            let op = d.reserve().unwrap();
            let c = completion(op.wr_id());
            op.abandon(Probe("abandoned", log.clone()));
            c
        })
        .collect();
    let (during, after) = route(&d, &batch, true, &log);
    assert_eq!(during.len(), EXTRA);
    assert_eq!(after.len(), Aftermath::<Probe>::CAPACITY);
    assert_eq!(d.in_flight(), 0);
    assert_eq!(d.stats().reclaimed, n as u64);
}

#[test]
fn aftermath_is_send() {
    fn send<T: Send>(_: &T) {}
    send(&Aftermath::<Vec<u8>>::default());
}
