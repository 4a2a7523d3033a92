//! loom models of the lock-free protocols. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p tokio-rdma-core --release --test loom`.
#![cfg(loom)]

use loom::future::block_on;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use loom::sync::Arc;
use loom::thread;
use std::future::{poll_fn, Future};
use std::task::Poll;

use tokio_rdma_core::sync::AtomicWaker;
use tokio_rdma_core::{inbox, Aftermath, Completion, Dispatcher, Routed};

fn completion(op_id: tokio_rdma_core::WrId) -> Completion {
    Completion {
        wr_id: op_id.into_raw(),
        byte_len: 42,
        ..Completion::zeroed()
    }
}

/// A resource that must not be dropped before the NIC's completion was handed over.
struct Guard {
    nic_done: Arc<AtomicBool>,
    drops: Arc<AtomicUsize>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        assert!(
            self.nic_done.load(SeqCst),
            "resource dropped before its completion"
        );
        self.drops.fetch_add(1, SeqCst);
    }
}

/// The owner abandons its operation (with a resource) while the completion arrives; if
/// `waiting`, the owner had polled once (registered a waker) before.
fn abandon_race(waiting: bool) {
    loom::model(move || {
        let d: Dispatcher<Guard> = Dispatcher::new(1);
        let nic_done = Arc::new(AtomicBool::new(false));
        let drops = Arc::new(AtomicUsize::new(0));
        let mut op = d.reserve().unwrap();
        if waiting {
            let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
            assert!(std::pin::Pin::new(&mut op).poll(&mut cx).is_pending());
        }
        let c = completion(op.wr_id());
        let (d2, done2) = (d.clone(), nic_done.clone());
        let cq = thread::spawn(move || {
            done2.store(true, SeqCst);
            let r = d2.handle_completion(c);
            assert!(matches!(r, Routed::Woken | Routed::Reclaimed), "{r:?}");
        });
        op.abandon(Guard {
            nic_done,
            drops: drops.clone(),
        });
        cq.join().unwrap();
        assert_eq!(drops.load(SeqCst), 1);
        assert_eq!(d.in_flight(), 0);
    });
}

#[test]
fn completion_vs_abandon() {
    abandon_race(false);
}

#[test]
fn waiting_operation_abandoned_vs_completion() {
    abandon_race(true);
}

/// Reserves an operation and spawns the CQ thread that completes it.
fn posted_with_cq_thread(
    d: &Dispatcher,
) -> (tokio_rdma_core::Operation, thread::JoinHandle<Routed>) {
    let op = d.reserve().unwrap();
    let c = completion(op.wr_id());
    let d2 = d.clone();
    (op, thread::spawn(move || d2.handle_completion(c)))
}

#[test]
fn completion_vs_plain_drop() {
    loom::model(|| {
        let d: Dispatcher = Dispatcher::new(1);
        let (op, cq) = posted_with_cq_thread(&d);
        drop(op);
        let r = cq.join().unwrap();
        assert!(matches!(r, Routed::Woken | Routed::Reclaimed), "{r:?}");
        assert_eq!(d.in_flight(), 0);
        // The slot is reusable at the next generation.
        let again = d.reserve().unwrap();
        assert_eq!(again.wr_id().generation(), 1);
        again.cancel_unposted();
    });
}

/// A waker that records whether it was woken (from any thread).
struct Flag(AtomicBool);

impl std::task::Wake for Flag {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.store(true, SeqCst);
    }
}

/// Routes one completion in place, or deferred and then finished (as a driver does after
/// releasing its CQ flag).
fn complete_one<R: Send + 'static>(d: &Dispatcher<R>, c: Completion, deferred: bool) -> usize {
    if deferred {
        let mut after = Aftermath::new();
        let n = d.handle_completions_deferred(&[c], &mut after);
        after.finish();
        n
    } else {
        d.handle_completions(&[c])
    }
}

/// The stolen-waker race: owner A, which had polled once (registered a waker), drops its
/// operation while the CQ thread completes A's slot. Once the slot is free, owner B reserves
/// it, polls once (registers its own waker) and B's completion is delivered: B must be woken.
/// A's `release` must never take B's waker out of the recycled slot without waking it (nor
/// may a deferred completion of A's slot take it without waking it in `finish`).
fn stolen_waker(deferred: bool) {
    loom::model(move || {
        let d: Dispatcher = Dispatcher::new(1);
        let mut op_a = d.reserve().unwrap();
        let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
        assert!(std::pin::Pin::new(&mut op_a).poll(&mut cx).is_pending());
        let c_a = completion(op_a.wr_id());
        let owner_a = thread::spawn(move || drop(op_a));
        let d2 = d.clone();
        let cq = thread::spawn(move || complete_one(&d2, c_a, deferred));
        // Owner B: the single slot comes back once A's drop and A's completion both ran.
        let mut op_b = loop {
            match d.reserve() {
                Ok(op) => break op,
                Err(_) => thread::yield_now(),
            }
        };
        assert_eq!(op_b.wr_id().generation(), 1);
        let flag = std::sync::Arc::new(Flag(AtomicBool::new(false)));
        let waker = std::task::Waker::from(flag.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(std::pin::Pin::new(&mut op_b).poll(&mut cx).is_pending());
        assert_eq!(complete_one(&d, completion(op_b.wr_id()), deferred), 1);
        // A's completer may have woken B (a late `wake` after A's slot was recycled still
        // wakes): join first, so that wake-up is visible here.
        owner_a.join().unwrap();
        assert!(cq.join().unwrap() <= 1);
        assert!(flag.0.load(SeqCst), "the new owner's waker was lost");
        assert_eq!(op_b.try_complete().map(|c| c.byte_len), Some(42));
        assert_eq!(d.in_flight(), 0);
    });
}

#[test]
fn dropped_owner_never_steals_the_next_owners_waker() {
    stolen_waker(false);
}

#[test]
fn dropped_owner_never_steals_the_next_owners_waker_deferred() {
    stolen_waker(true);
}

/// A deferred completion races with the owner registering its waker: the owner is woken by
/// `finish` or sees the completion on its re-check (a lost wake-up deadlocks `block_on`).
#[test]
fn waker_registration_vs_deferred_completion() {
    loom::model(|| {
        let d: Dispatcher = Dispatcher::new(1);
        let op = d.reserve().unwrap();
        let c = completion(op.wr_id());
        let d2 = d.clone();
        let cq = thread::spawn(move || complete_one(&d2, c, true));
        assert_eq!(block_on(op).byte_len, 42);
        assert_eq!(cq.join().unwrap(), 1);
        assert_eq!(d.in_flight(), 0);
    });
}

#[test]
fn waker_registration_vs_completion() {
    loom::model(|| {
        let d: Dispatcher = Dispatcher::new(1);
        let (op, cq) = posted_with_cq_thread(&d);
        // block_on parks until woken: a lost wake-up is reported by loom as a deadlock.
        let got = block_on(op);
        assert_eq!(got.byte_len, 42);
        assert_eq!(cq.join().unwrap(), Routed::Woken);
        assert_eq!(d.in_flight(), 0);
    });
}

/// `fail_tagged(A)` scans while a slot last reserved under tag A (now free) is reserved again
/// under tag B: the scan must never fail B's reservation (it reads the tag after seeing the
/// slot posted, and the tag is written before the slot is published).
fn fail_tagged_vs_reservation(scanner_yields: bool) {
    const A: u32 = 1;
    const B: u32 = 2;
    loom::model(move || {
        let d: Dispatcher = Dispatcher::new(1);
        let mut op_a = d.reserve_tagged(A).unwrap();
        assert_eq!(d.handle_completion(completion(op_a.wr_id())), Routed::Woken);
        assert!(op_a.try_complete().is_some());
        let d2 = d.clone();
        let reuse = thread::spawn(move || d2.reserve_tagged(B).expect("slot free"));
        if scanner_yields {
            // Let the reservation run first (loom's exploration rarely puts it before the
            // scan's first load otherwise).
            thread::yield_now();
        }
        assert_eq!(d.fail_tagged(A, tokio_rdma_core::WcStatus::WrFlushErr), 0);
        let mut op_b = reuse.join().unwrap();
        assert!(op_b.try_complete().is_none(), "B's reservation was failed");
        assert_eq!(d.in_flight_tagged(B), 1);
        op_b.cancel_unposted();
    });
}

#[test]
fn fail_tagged_vs_reservation_under_another_tag() {
    fail_tagged_vs_reservation(false);
}

#[test]
fn fail_tagged_after_reservation_under_another_tag() {
    fail_tagged_vs_reservation(true);
}

#[test]
fn atomic_waker_register_vs_wake() {
    loom::model(|| {
        let w = Arc::new(AtomicWaker::new());
        let flag = Arc::new(AtomicBool::new(false));
        let (w2, f2) = (w.clone(), flag.clone());
        let t = thread::spawn(move || {
            f2.store(true, SeqCst);
            w2.wake();
        });
        block_on(poll_fn(|cx| {
            w.register(cx.waker());
            if flag.load(SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }));
        t.join().unwrap();
    });
}

#[test]
fn concurrent_slot_allocation_and_free() {
    loom::model(|| {
        let d: Dispatcher = Dispatcher::new(2);
        let worker = |d: Dispatcher| {
            let mut op = d.reserve().expect("two slots for two threads");
            let id = op.wr_id();
            assert_eq!(d.handle_completion(completion(id)), Routed::Woken);
            assert_eq!(op.try_complete().map(|c| c.wr_id), Some(id.into_raw()));
            id
        };
        let d2 = d.clone();
        let t = thread::spawn(move || worker(d2));
        let a = worker(d.clone());
        let b = t.join().unwrap();
        assert_ne!(a, b, "the same slot generation handed out twice");
        assert_eq!(d.in_flight(), 0);
        let x = d.reserve().unwrap();
        let y = d.reserve().unwrap();
        assert_ne!(x.wr_id().index(), y.wr_id().index());
        assert!(d.reserve().is_err());
        x.cancel_unposted();
        y.cancel_unposted();
    });
}

#[test]
fn steal_from_another_shard_vs_its_owner_freeing() {
    loom::model(|| {
        // Two slots, two shards: `d` (home 0) owns slot 0, `d2` (home 1) slot 1.
        let d: Dispatcher = Dispatcher::with_shards(2, 2);
        let d2 = d.clone();
        let t = thread::spawn(move || {
            // `d` may have stolen our slot already.
            let mut op = d2.reserve().ok()?;
            let _ = d2.handle_completion(completion(op.wr_id()));
            Some(op.try_complete().expect("completed").wr_id)
        });
        let mine = d.reserve().unwrap();
        // Steals slot 1 if `t` has not taken it or has freed it by now; never a slot in use.
        let stolen = d.reserve().ok();
        let theirs = t.join().unwrap().map(tokio_rdma_core::WrId::from_raw);
        match (&stolen, theirs) {
            (Some(op), Some(theirs)) => {
                // Stolen after `t` freed it: the next generation of the same slot.
                assert_eq!(op.wr_id().index(), theirs.index());
                assert_eq!(op.wr_id().generation(), theirs.generation() + 1);
            }
            (Some(op), None) => assert_eq!(op.wr_id().generation(), 0),
            (None, Some(theirs)) => assert_ne!(mine.wr_id().index(), theirs.index()),
            (None, None) => panic!("a slot was lost"),
        }
        mine.cancel_unposted();
        if let Some(op) = stolen {
            op.cancel_unposted();
        }
        assert_eq!(d.in_flight(), 0);
        assert_eq!(d.reserve().map(|op| op.cancel_unposted()), Ok(()));
    });
}

#[test]
fn routed_completion_vs_cancel() {
    loom::model(|| {
        let d: Dispatcher<u32> = Dispatcher::new(1);
        let (tx, mut rx) = inbox(2);
        let id = d.reserve_into(&tx, 7).unwrap();
        let d2 = d.clone();
        let cq = thread::spawn(move || d2.handle_completion(completion(id)));
        let cancelled = d.cancel_routed(id);
        let routed = cq.join().unwrap();
        match (cancelled, routed) {
            // The completion may observe the cancel in progress (Duplicate) or done (Stale).
            (Some(7), Routed::Stale | Routed::Duplicate) => assert!(rx.try_recv().is_none()),
            (None, Routed::Delivered) => assert_eq!(rx.try_recv().unwrap().resources, 7),
            other => panic!("resource lost or duplicated: {other:?}"),
        }
        assert_eq!(d.in_flight(), 0);
    });
}

#[test]
fn inbox_producers_vs_consumer() {
    loom::model(|| {
        let (tx, mut rx) = inbox::<u32>(2);
        let tx2 = tx.clone();
        let p1 = thread::spawn(move || tx.try_send(1).unwrap());
        let p2 = thread::spawn(move || tx2.try_send(2).unwrap());
        let mut got = Vec::new();
        // Both senders are dropped after sending: the stream ends after both values.
        block_on(poll_fn(|cx| loop {
            match rx.poll_recv(cx) {
                Poll::Ready(Some(v)) => got.push(v),
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }));
        p1.join().unwrap();
        p2.join().unwrap();
        got.sort();
        assert_eq!(got, [1, 2]);
    });
}
