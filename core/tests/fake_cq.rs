//! Scripted fake-CQ scenarios: reordering, duplicates, flush errors, stale ids, dropped
//! futures, wr_id reuse, routed receives, `fail_all`.

mod common;

use common::{run, Harness, Step::*};
use tokio_rdma_core::{Completion, Dispatcher, Error, Routed, WcStatus, WrId};

#[test]
fn in_order_completions() {
    run(
        4,
        &[
            Post,
            Post,
            PollOp(0),
            NicComplete(0),
            NicComplete(0),
            PollCq(2),
            PollOp(0),
            PollOp(0),
        ],
    );
}

#[test]
fn reordered_completions_reach_their_own_owner() {
    run(
        8,
        &[
            Post,
            Post,
            Post,
            PollOp(0),
            PollOp(1),
            PollOp(2),
            NicComplete(2),
            NicComplete(0),
            NicComplete(0),
            Reorder(1),
            PollCq(3),
            PollOp(2),
            PollOp(1),
            PollOp(0),
        ],
    );
}

#[test]
fn duplicates_are_reported_not_delivered() {
    let mut h = Harness::new(2);
    for s in [Post, NicComplete(0), Duplicate(0), PollCq(2)] {
        h.step(&s);
    }
    assert_eq!(h.d.stats().duplicate, 1);
    // Once consumed, the slot's generation moved on: the repeat is stale.
    h.step(&PollOp(0));
    h.step(&Duplicate(0));
    h.step(&PollCq(1));
    assert_eq!(h.d.stats().stale, 1);
    h.finish();
}

#[test]
fn flush_errors_complete_everything() {
    let mut h = Harness::new(4);
    for s in [
        Post,
        Post,
        PostRouted,
        PollOp(0),
        NicFlushAll,
        PollCq(8),
        PollOp(0),
        PollOp(0),
        Recv,
    ] {
        h.step(&s);
    }
    assert!(h
        .finished
        .values()
        .all(|c| c.status == WcStatus::WrFlushErr));
    assert_eq!(h.received.len(), 1);
    assert_eq!(h.received[0].status, WcStatus::WrFlushErr);
    h.finish();
}

#[test]
fn stale_and_unknown_ids_are_counted() {
    let d: Dispatcher = Dispatcher::new(2);
    let op = d.reserve().unwrap();
    let id = op.wr_id();
    let c = |wr_id| Completion {
        wr_id,
        ..Completion::zeroed()
    };
    assert_eq!(
        d.handle_completion(c(WrId::new(5, 0).into_raw())),
        Routed::Unknown
    );
    assert_eq!(
        d.handle_completion(c(WrId::new(1, 0).into_raw())),
        Routed::Unknown,
        "never posted"
    );
    assert_eq!(
        d.handle_completion(c(WrId::new(id.index(), 9).into_raw())),
        Routed::Stale
    );
    assert_eq!(d.handle_completion(c(u64::MAX)), Routed::Unknown);
    assert_eq!(d.handle_completion(c(id.into_raw())), Routed::Woken);
    assert_eq!(d.handle_completion(c(id.into_raw())), Routed::Duplicate);
    let s = d.stats();
    assert_eq!((s.unknown, s.stale, s.completed, s.duplicate), (3, 1, 1, 1));
    assert_eq!(futures::executor::block_on(op).wr_id, id.into_raw());
}

#[test]
fn dropped_future_keeps_resources_until_completion() {
    // Tracked resources record a violation if dropped before their completion was fed.
    run(
        2,
        &[
            Post,
            AbandonOp(0),
            Post,
            DropOp(0),
            PollCq(4),
            NicComplete(1),
            PollCq(1),
            NicComplete(0),
            PollCq(1),
        ],
    );
    let mut h = Harness::new(1);
    h.step(&Post);
    h.step(&AbandonOp(0));
    assert_eq!(h.model.lock().unwrap().resources_dropped, 0);
    assert!(
        matches!(h.d.reserve(), Err(Error::Exhausted { capacity: 1 })),
        "abandoned slot stays busy"
    );
    h.step(&NicComplete(0));
    h.step(&PollCq(1));
    assert_eq!(h.model.lock().unwrap().resources_dropped, 1);
    assert_eq!(h.outcomes.get(&Routed::Reclaimed), Some(&1));
    h.finish();
}

#[test]
fn abandon_after_completion_drops_resources_at_once() {
    let mut h = Harness::new(1);
    for s in [Post, NicComplete(0), PollCq(1), AbandonOp(0)] {
        h.step(&s);
    }
    assert_eq!(h.d.in_flight(), 0);
    assert_eq!(h.model.lock().unwrap().resources_dropped, 1);
    h.finish();
}

#[test]
fn wr_id_reuse_bumps_generation() {
    let d: Dispatcher = Dispatcher::new(1);
    let mut seen = Vec::new();
    for _ in 0..5 {
        let op = d.reserve().unwrap();
        let id = op.wr_id();
        seen.push(id);
        let r = d.handle_completion(Completion {
            wr_id: id.into_raw(),
            ..Completion::zeroed()
        });
        assert_eq!(r, Routed::Woken);
        futures::executor::block_on(op);
    }
    assert!(seen.iter().all(|id| id.index() == 0));
    assert_eq!(
        seen.iter().map(|id| id.generation()).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    // A late completion for an earlier use never reaches the current owner.
    let op = d.reserve().unwrap();
    let late = Completion {
        wr_id: seen[3].into_raw(),
        ..Completion::zeroed()
    };
    assert_eq!(d.handle_completion(late), Routed::Stale);
    let mut op = op;
    assert_eq!(op.try_complete(), None);
    op.cancel_unposted();
}

#[test]
fn reuse_with_dropped_futures_and_stale_repeats() {
    run(
        2,
        &[
            Post,
            Post,
            NicComplete(0),
            PollCq(1),
            DropOp(0),
            Post,
            NicComplete(1),
            Duplicate(0),
            Reorder(1),
            PollCq(3),
            DropOp(0),
            DropOp(0),
            Duplicate(1),
            Garbage(3),
            Garbage(8),
            PollCq(9),
        ],
    );
}

#[test]
fn routed_receives_and_cancel() {
    let mut h = Harness::new(4);
    for s in [
        PostRouted,
        PostRouted,
        PostFails(1),
        PostFails(0),
        NicComplete(1),
        PollCq(1),
        Recv,
        Recv,
    ] {
        h.step(&s);
    }
    assert_eq!(h.received.len(), 1);
    assert_eq!(h.d.in_flight(), 1);
    h.finish();
}

#[test]
fn fail_all_wakes_everyone() {
    let mut h = Harness::new(8);
    for s in [
        Post,
        Post,
        PostRouted,
        Post,
        AbandonOp(2),
        PollOp(0),
        PollOp(1),
        NicComplete(0),
        FailAll,
        PollOp(0),
        PollOp(0),
        Recv,
    ] {
        h.step(&s);
    }
    assert_eq!(h.d.in_flight(), 0);
    assert!(h
        .finished
        .values()
        .all(|c| c.status == WcStatus::WrFlushErr));
    h.finish();
}

#[test]
fn inbox_full_is_counted_as_undeliverable() {
    let d: Dispatcher<u32> = Dispatcher::new(4);
    let (tx, mut rx) = tokio_rdma_core::inbox(2); // too small for 3 routed slots
    let ids: Vec<_> = (0..3).map(|i| d.reserve_into(&tx, i).unwrap()).collect();
    let batch: Vec<_> = ids
        .iter()
        .map(|id| Completion {
            wr_id: id.into_raw(),
            ..Completion::zeroed()
        })
        .collect();
    assert_eq!(d.handle_completions(&batch), 2);
    let s = d.stats();
    assert_eq!((s.delivered, s.undeliverable, s.reclaimed), (2, 1, 1));
    assert_eq!(rx.try_recv().unwrap().resources, 0);
    assert_eq!(rx.try_recv().unwrap().resources, 1);
    assert!(rx.try_recv().is_none());
    assert_eq!(d.in_flight(), 0);
    drop(rx);
    assert_eq!(d.reserve_into(&tx, 9), Err(Error::InboxClosed));
}

#[test]
fn cancel_routed_rejects_wrong_ids() {
    let d: Dispatcher<String> = Dispatcher::new(2);
    let (tx, _rx) = tokio_rdma_core::inbox(2);
    let id = d.reserve_into(&tx, "buf".to_string()).unwrap();
    assert_eq!(
        d.cancel_routed(WrId::new(id.index(), id.generation() + 1)),
        None
    );
    assert_eq!(d.cancel_routed(WrId::new(99, 0)), None);
    let op = d.reserve().unwrap();
    assert_eq!(d.cancel_routed(op.wr_id()), None, "not a routed slot");
    assert_eq!(d.cancel_routed(id).as_deref(), Some("buf"));
    assert_eq!(d.cancel_routed(id), None);
    op.cancel_unposted();
    assert_eq!(d.in_flight(), 0);
}

#[test]
fn exhaustion_and_release() {
    let d: Dispatcher = Dispatcher::new(3);
    let ops: Vec<_> = (0..3).map(|_| d.reserve().unwrap()).collect();
    assert_eq!(d.in_flight(), 3);
    assert_eq!(d.reserve().unwrap_err(), Error::Exhausted { capacity: 3 });
    let mut ids: Vec<_> = ops.iter().map(|o| o.wr_id().index()).collect();
    ids.sort();
    assert_eq!(ids, [0, 1, 2]);
    drop(ops); // abandoned: slots stay busy until their completions arrive
    assert_eq!(d.in_flight(), 3);
    d.fail_all(WcStatus::WrFlushErr);
    assert_eq!(d.in_flight(), 0);
    assert_eq!(d.stats().reclaimed, 3);
    let empty: Dispatcher = Dispatcher::new(0);
    assert!(empty.reserve().is_err());
}

#[test]
fn shards_recycle_per_handle_and_steal_when_empty() {
    // 8 slots over 4 shards; four handles take shards 0..3 in turn.
    let d: Dispatcher = Dispatcher::with_shards(8, 4);
    let handles: Vec<Dispatcher> = (0..3).map(|_| d.clone()).collect();
    let h1 = &handles[0];
    // Shard 1 holds slots 2 and 3; then h1 steals from shards 2, 3, 0.
    let ops: Vec<_> = (0..8).map(|_| h1.reserve().unwrap()).collect();
    let indices: Vec<_> = ops.iter().map(|o| o.wr_id().index()).collect();
    assert_eq!(&indices[..2], [2, 3]);
    let mut sorted = indices.clone();
    sorted.sort();
    assert_eq!(sorted, (0..8).collect::<Vec<_>>(), "every slot, once");
    for h in handles.iter().chain([&d]) {
        assert_eq!(h.reserve().unwrap_err(), Error::Exhausted { capacity: 8 });
    }
    // Completed through another handle, polled by their owners: freed to h1's shard.
    let batch: Vec<_> = ops
        .iter()
        .map(|o| Completion {
            wr_id: o.wr_id().into_raw(),
            ..Completion::zeroed()
        })
        .collect();
    assert_eq!(handles[2].handle_completions(&batch), 8);
    for mut op in ops {
        assert!(op.try_complete().is_some());
    }
    // Every slot now sits in h1's shard: the other handles steal them all.
    let a: Vec<_> = (0..5).map(|_| d.reserve().unwrap()).collect();
    let b: Vec<_> = (0..3).map(|_| handles[1].reserve().unwrap()).collect();
    assert!(h1.reserve().is_err());
    // Counters are striped per handle and summed by every handle's `stats`.
    assert_eq!(d.stats().completed, 8);
    assert_eq!(h1.stats(), d.stats());
    drop((a, b));
    d.fail_all(WcStatus::WrFlushErr);
    assert_eq!(d.in_flight(), 0);
    assert_eq!(handles[1].stats().reclaimed, 8);
}

#[test]
fn waiting_operation_is_woken_across_threads() {
    let d: Dispatcher = Dispatcher::new(16);
    for _ in 0..200 {
        let ops: Vec<_> = (0..8).map(|_| d.reserve().unwrap()).collect();
        let batch: Vec<_> = ops
            .iter()
            .map(|o| Completion {
                wr_id: o.wr_id().into_raw(),
                byte_len: 3,
                ..Completion::zeroed()
            })
            .collect();
        let d2 = d.clone();
        let t = std::thread::spawn(move || {
            for c in batch.iter().rev() {
                let _ = d2.handle_completion(*c);
            }
        });
        for op in ops {
            assert_eq!(futures::executor::block_on(op).byte_len, 3);
        }
        t.join().unwrap();
    }
    assert_eq!(d.in_flight(), 0);
    assert_eq!(d.stats().completed, 1600);
}

#[test]
fn completion_is_handed_out_once() {
    let d: Dispatcher = Dispatcher::new(1);
    let mut op = d.reserve().unwrap();
    let id = op.wr_id();
    assert_eq!(op.try_complete(), None);
    let _ = d.handle_completion(Completion {
        wr_id: id.into_raw(),
        ..Completion::zeroed()
    });
    assert_eq!(op.try_complete().map(|c| c.wr_id), Some(id.into_raw()));
    assert_eq!(op.try_complete(), None);
    assert_eq!(op.wr_id(), id, "wr_id stays stable");
    assert_eq!(d.in_flight(), 0);
    drop(op); // finished: dropping does not touch the (already reused-able) slot
    let again = d.reserve().unwrap();
    assert_eq!(again.wr_id(), WrId::new(0, 1));
    again.cancel_unposted();
}

#[test]
#[should_panic(expected = "polled after it returned `Ready`")]
fn polling_after_ready_panics() {
    use std::future::Future;
    let d: Dispatcher = Dispatcher::new(1);
    let mut op = d.reserve().unwrap();
    let _ = d.handle_completion(Completion {
        wr_id: op.wr_id().into_raw(),
        ..Completion::zeroed()
    });
    let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
    assert!(std::pin::Pin::new(&mut op).poll(&mut cx).is_ready());
    let _ = std::pin::Pin::new(&mut op).poll(&mut cx);
}

#[test]
fn abandon_races_completion_across_threads() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;

    /// Panics if dropped before the NIC finished with it.
    struct Buf(Arc<AtomicBool>, Arc<AtomicUsize>);
    impl Drop for Buf {
        fn drop(&mut self) {
            assert!(self.0.load(SeqCst), "buffer dropped before its completion");
            self.1.fetch_add(1, SeqCst);
        }
    }

    const ROUNDS: usize = 20_000;
    let d: Dispatcher<Buf> = Dispatcher::new(8);
    let drops = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = std::sync::mpsc::sync_channel::<(WrId, Arc<AtomicBool>)>(8);
    let cq = {
        let d = d.clone();
        std::thread::spawn(move || {
            for (id, nic_done) in rx {
                nic_done.store(true, SeqCst);
                let r = d.handle_completion(Completion {
                    wr_id: id.into_raw(),
                    ..Completion::zeroed()
                });
                assert!(matches!(r, Routed::Woken | Routed::Reclaimed), "{r:?}");
            }
        })
    };
    for i in 0..ROUNDS {
        let op = loop {
            match d.reserve() {
                Ok(op) => break op,
                Err(_) => std::thread::yield_now(),
            }
        };
        let nic_done = Arc::new(AtomicBool::new(false));
        tx.send((op.wr_id(), nic_done.clone())).unwrap();
        match i % 3 {
            0 => op.abandon(Buf(nic_done, drops.clone())),
            1 => drop(op),
            _ => {
                futures::executor::block_on(op);
                drop(Buf(nic_done, drops.clone()));
            }
        }
    }
    drop(tx);
    cq.join().unwrap();
    assert_eq!(d.in_flight(), 0);
    let with_buffer = (0..ROUNDS).filter(|i| i % 3 != 1).count();
    assert_eq!(drops.load(SeqCst), with_buffer);
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    type Buf = Vec<u8>;
    check::<Dispatcher<Buf>>();
    check::<tokio_rdma_core::Operation<Buf>>();
    check::<tokio_rdma_core::InboxSender<tokio_rdma_core::Delivery<Buf>>>();
    check::<tokio_rdma_core::InboxReceiver<tokio_rdma_core::Delivery<Buf>>>();
    check::<tokio_rdma_core::CallbackDispatcher>();
    check::<tokio_rdma_core::sync::AtomicWaker>();
    fn unpin<T: Unpin>() {}
    unpin::<tokio_rdma_core::Operation<Buf>>();
}
