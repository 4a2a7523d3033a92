//! Slot tags: `fail_tagged` fails the outstanding slots of one tag (one QP whose flush
//! completions never come) and leaves the others alone; the real completions arriving later
//! are stale, never delivered twice.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use tokio_rdma_core::{
    inbox, Aftermath, Completion, Dispatcher, Operation, Routed, WcOpcode, WcStatus, WrId,
};

/// A buffer that counts its drops.
struct Buffer(Arc<AtomicUsize>);

impl Drop for Buffer {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

struct Wakes(AtomicUsize);

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

fn success(id: WrId) -> Completion {
    Completion {
        wr_id: id.into_raw(),
        opcode: WcOpcode::Recv,
        byte_len: 5,
        ..Completion::zeroed()
    }
}

const A: u32 = 0x11;
const B: u32 = 0x22;

#[test]
fn fail_tagged_fails_one_tag_and_leaves_the_other() {
    let d: Dispatcher<Buffer> = Dispatcher::new(16);
    let drops = Arc::new(AtomicUsize::new(0));
    let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    let (tx, mut rx) = inbox(8);
    // Interleaved: per tag a waiting operation, a receive and an abandoned operation.
    let mut waiting: Vec<(u32, Operation<Buffer>)> = Vec::new();
    let mut recvs: Vec<(u32, WrId)> = Vec::new();
    let mut abandoned: Vec<(u32, WrId)> = Vec::new();
    for tag in [A, B, A, B] {
        let mut op = d.reserve_tagged(tag).unwrap();
        assert!(Pin::new(&mut op).poll(&mut cx).is_pending());
        waiting.push((tag, op));
        let buffer = Buffer(drops.clone());
        recvs.push((tag, d.reserve_into_tagged(&tx, buffer, tag).unwrap()));
        let op = d.reserve_tagged(tag).unwrap();
        abandoned.push((tag, op.wr_id()));
        op.abandon(Buffer(drops.clone()));
    }
    // Untagged reservations are tag 0.
    let untagged = d.reserve().unwrap();
    assert_eq!(d.in_flight_tagged(0), 1);
    assert_eq!((d.in_flight_tagged(A), d.in_flight_tagged(B)), (6, 6));

    assert_eq!(d.fail_tagged(A, WcStatus::WrFlushErr), 6);
    // A's waiting operations were woken with the flush status, A's receives delivered their
    // buffers, A's abandoned buffers dropped; nothing of B's moved.
    assert_eq!(wakes.0.load(SeqCst), 2);
    assert_eq!(drops.load(SeqCst), 2);
    for (tag, op) in &mut waiting {
        match (Pin::new(op).poll(&mut cx), *tag) {
            (Poll::Ready(c), A) => assert_eq!(c.status, WcStatus::WrFlushErr),
            (Poll::Pending, B) => {}
            (other, tag) => panic!("tag {tag:#x}: {other:?}"),
        }
    }
    let a_recvs: Vec<u64> = recvs
        .iter()
        .filter(|(t, _)| *t == A)
        .map(|(_, id)| id.into_raw())
        .collect();
    for _ in 0..2 {
        let delivery = rx.try_recv().expect("A's receive delivered");
        assert_eq!(delivery.completion.status, WcStatus::WrFlushErr);
        assert!(a_recvs.contains(&delivery.completion.wr_id));
    }
    assert!(rx.try_recv().is_none(), "B's receives stay posted");
    assert_eq!((d.in_flight_tagged(A), d.in_flight_tagged(B)), (0, 6));
    assert_eq!(d.fail_tagged(A, WcStatus::WrFlushErr), 0, "nothing left");

    // B still completes normally.
    let batch: Vec<_> = waiting
        .iter()
        .filter(|(t, _)| *t == B)
        .map(|(_, op)| op.wr_id())
        .chain(
            recvs
                .iter()
                .chain(&abandoned)
                .filter(|(t, _)| *t == B)
                .map(|(_, id)| *id),
        )
        .map(success)
        .collect();
    assert_eq!(d.handle_completions(&batch), 4);
    for (_, op) in waiting.iter_mut().filter(|(t, _)| *t == B) {
        assert_eq!(op.try_complete().unwrap().status, WcStatus::Success);
    }
    assert_eq!(rx.try_recv().unwrap().completion.byte_len, 5);
    assert_eq!(rx.try_recv().unwrap().completion.byte_len, 5);
    assert_eq!(d.in_flight_tagged(B), 0);
    assert_eq!(d.in_flight(), 1);
    untagged.cancel_unposted();
}

#[test]
fn late_completions_of_failed_slots_are_stale_never_delivered_twice() {
    let d: Dispatcher<Buffer> = Dispatcher::new(8);
    let drops = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = inbox(4);
    let mut op = d.reserve_tagged(A).unwrap();
    let recv = d
        .reserve_into_tagged(&tx, Buffer(drops.clone()), A)
        .unwrap();
    let gone = d.reserve_tagged(A).unwrap();
    let gone_id = gone.wr_id();
    gone.abandon(Buffer(drops.clone()));
    let other = d.reserve_tagged(B).unwrap();
    assert_eq!(d.fail_tagged(A, WcStatus::RetryExcErr), 3);
    // Before the owner took its synthetic completion, the real one is a duplicate.
    let late = [success(op.wr_id()), success(recv), success(gone_id)];
    assert_eq!(d.handle_completion(late[0]), Routed::Duplicate);
    assert_eq!(op.try_complete().unwrap().status, WcStatus::RetryExcErr);
    assert_eq!(
        rx.try_recv().unwrap().completion.status,
        WcStatus::RetryExcErr
    );
    // Once taken (and the slots freed), every late completion is stale.
    assert_eq!(d.handle_completions(&late), 0);
    let s = d.stats();
    assert_eq!((s.duplicate, s.stale), (1, 3));
    assert_eq!((s.completed, s.delivered, s.reclaimed), (1, 1, 1));
    assert!(rx.try_recv().is_none(), "delivered once");
    assert!(op.try_complete().is_none(), "completed once");
    drop(rx);
    assert_eq!(drops.load(SeqCst), 2, "each buffer dropped once");
    // Slots reused afterwards get a new generation: the late ids stay stale.
    let reused = d.reserve_tagged(A).unwrap();
    assert_eq!(d.handle_completions(&late), 0);
    assert_eq!(d.stats().stale, 6);
    assert_eq!(d.in_flight_tagged(A), 1);
    drop((reused, other));
}

#[test]
fn fail_tagged_deferred_runs_no_consumer_code_and_resumes() {
    let n = Aftermath::<Buffer>::CAPACITY + 10;
    let d: Dispatcher<Buffer> = Dispatcher::new(n + 1);
    let drops = Arc::new(AtomicUsize::new(0));
    for _ in 0..n {
        let op = d.reserve_tagged(A).unwrap();
        op.abandon(Buffer(drops.clone()));
    }
    let survivor = d.reserve_tagged(B).unwrap();
    let mut after = Aftermath::new();
    let mut rounds = Vec::new();
    loop {
        let failed = d.fail_tagged_deferred(A, WcStatus::WrFlushErr, &mut after);
        // Nothing dropped inside the call.
        assert_eq!(drops.load(SeqCst), rounds.iter().sum::<usize>());
        after.finish();
        rounds.push(failed);
        if failed == 0 {
            break;
        }
    }
    assert_eq!(rounds, [Aftermath::<Buffer>::CAPACITY, 10, 0]);
    assert_eq!(drops.load(SeqCst), n);
    assert_eq!((d.in_flight_tagged(A), d.in_flight()), (0, 1));
    survivor.cancel_unposted();
}
