//! The driver in event mode (nothing spins): what happens when it wakes from parking. Needs
//! an RDMA device (`cargo xtask test --no-host event_mode`).

mod common;

use std::time::Duration;

use common::{bounded, connect, rig};
use tokio_rdma_verbs::{Access, CompletionChannel, DriverConfig, QpType, QueuePairBuilder};

/// On a wake-up from parking, the driver polls the parked CQ and hands the completion to the
/// awaiting task before it reads the channel's event: the task runs while the event is still
/// unread. The driver used to read the event first (`ibv_get_cq_event` and the `EAGAIN` read
/// after it, about 11 us in the VM) on the way to the task.
#[tokio::test(flavor = "current_thread")]
#[ignore = "needs an RDMA device"]
async fn a_woken_driver_hands_the_completion_over_before_reading_the_event() {
    let r = rig(64);
    let chan = CompletionChannel::with_config(
        &r.ctx,
        DriverConfig {
            spin_iterations: 0,
            inline_polls: 1,
            ..DriverConfig::default()
        },
    )
    .unwrap();
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
    for round in 0..10u8 {
        let rx = b.recv(r.pd.register(vec![0u8; 16], Access::LOCAL_WRITE).unwrap());
        let a = a.clone();
        // Posted once the receive is awaited and the driver has parked; unsignaled, so no
        // future of the sender polls the CQ: only the driver can deliver the receive.
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            a.send_inline_unsignaled(&[round; 8]).unwrap();
        });
        let events = cq.stats().events;
        let (res, buf) = bounded("receive", 30, rx).await;
        assert_eq!(&buf[..res.unwrap().byte_len as usize], &[round; 8]);
        assert_eq!(
            cq.stats().events,
            events,
            "round {round}: the event was read before the receive was handed over"
        );
        sender.await.unwrap();
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
    let chan = CompletionChannel::with_config(
        &r.ctx,
        DriverConfig {
            spin_iterations: 0,
            inline_polls: 1,
            ..DriverConfig::default()
        },
    )
    .unwrap();
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
    let rounds = 10u8;
    let before = cq.stats().driver_completions;
    for round in 0..rounds {
        let rx = b.recv(r.pd.register(vec![0u8; 16], Access::LOCAL_WRITE).unwrap());
        let a = a.clone();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            a.send_inline_unsignaled(&[round; 8]).unwrap();
        });
        let (res, buf) = bounded("receive", 30, rx).await;
        assert_eq!(&buf[..res.unwrap().byte_len as usize], &[round; 8]);
        sender.await.unwrap();
    }
    let by_driver = cq.stats().driver_completions - before;
    assert_eq!(
        by_driver, 0,
        "the driver found {by_driver} of {rounds} completions and handed them over"
    );
}
