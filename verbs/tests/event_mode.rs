//! The driver in event mode (nothing spins): how a completion reaches a lone waiting task
//! after the driver parked. Needs an RDMA device (`cargo xtask test --no-host event_mode`).

mod common;

use std::time::Duration;

use common::{bounded, connect, event_mode_channel, rig, Rig};
use tokio_rdma_verbs::{
    Access, CompletionChannel, CompletionQueue, DriverConfig, QpType, QueuePair, QueuePairBuilder,
};

/// A channel with one CQ and two connected RC QPs on it.
fn pair_on(
    r: &Rig,
    chan: CompletionChannel,
) -> (CompletionChannel, CompletionQueue, QueuePair, QueuePair) {
    let cq = chan.create_cq(1024).unwrap();
    let qp = || {
        QueuePairBuilder::new(&r.pd, QpType::Rc, &cq)
            .max_send_wr(64)
            .max_recv_wr(64)
            .max_inline_data(64)
            .build()
            .unwrap()
    };
    let (a, b) = (qp(), qp());
    connect(&r.opts, &a, &b);
    (chan, cq, a, b)
}

/// One message from `a` to `b`, sent 20 ms after the receive is awaited (the driver has
/// parked by then) and unsignaled (no future of the sender polls the CQ). `at_resume` runs
/// right when the receive's future is ready.
async fn deliver(r: &Rig, a: &QueuePair, b: &QueuePair, round: u8, at_resume: impl FnOnce()) {
    let rx = b.recv(r.pd.register(vec![0u8; 16], Access::LOCAL_WRITE).unwrap());
    let a = a.clone();
    let sender = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        a.send_inline_unsignaled(&[round; 8]).unwrap();
    });
    let (res, buf) = bounded("receive", 30, rx).await;
    at_resume();
    assert_eq!(&buf[..res.unwrap().byte_len as usize], &[round; 8]);
    sender.await.unwrap();
}

/// A driver woken from parking hands the completion to the waiting task before it reads the
/// channel's event: it reads it after the task's turn. It used to read it first on its way to
/// the task (`ibv_get_cq_event` and the `EAGAIN` read after it, about 11 us in the VM). A
/// spin budget of 1 round (not event mode, so no lone-waiter shortcut): the driver parks
/// after one empty round and is the one that delivers.
#[tokio::test(flavor = "current_thread")]
#[ignore = "needs an RDMA device"]
async fn a_woken_driver_hands_the_completion_over_before_reading_the_event() {
    let r = rig(64);
    let config = DriverConfig {
        spin_iterations: 1,
        inline_polls: 1,
        ..DriverConfig::default()
    };
    let (_chan, cq, a, b) = pair_on(&r, CompletionChannel::with_config(&r.ctx, config).unwrap());
    for round in 0..10u8 {
        let (events, by_driver) = (cq.stats().events, cq.stats().driver_completions);
        deliver(&r, &a, &b, round, || {
            let now = cq.stats();
            assert_eq!(
                now.events, events,
                "round {round}: the event was read before the receive was handed over"
            );
            assert_eq!(
                now.driver_completions,
                by_driver + 1,
                "round {round}: not the driver"
            );
        })
        .await;
        // The event is read after the task's turn.
        bounded("event read", 30, async {
            while cq.stats().events == events {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }
}

/// A lone future waiting in event mode also waits on the channel fd itself, so the reactor
/// wakes its task directly and the task's own inline poll finds the completion: the driver
/// task (its turn and its wake-up of the task, about 14 us in the VM) is not on the way. The
/// driver used to find every such completion and wake the task.
#[tokio::test(flavor = "current_thread")]
#[ignore = "needs an RDMA device"]
async fn a_lone_waiter_in_event_mode_finds_its_completion_itself() {
    let r = rig(64);
    let (_chan, cq, a, b) = pair_on(&r, event_mode_channel(&r.ctx));
    let rounds = 10u8;
    let before = cq.stats().driver_completions;
    for round in 0..rounds {
        deliver(&r, &a, &b, round, || {}).await;
    }
    let by_driver = cq.stats().driver_completions - before;
    assert_eq!(
        by_driver, 0,
        "the driver found {by_driver} of {rounds} completions and handed them over"
    );
}
