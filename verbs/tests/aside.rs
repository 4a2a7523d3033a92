//! The driver standing aside on a multi-thread runtime while a task spins on its CQ (`cq::aside`
//! in the crate). Needs an RDMA device (`cargo xtask test --no-host aside`).

mod common;

use common::{bounded, rig};
use futures::StreamExt;
use tokio_rdma_verbs::{CompletionChannel, CompletionQueue, DriverConfig, QueuePair};

/// A ping-pong of `rounds` between two tasks over `(a, b)`, each side awaiting its receive
/// (and so spinning on the CQ between messages).
async fn ping_pong(a: &QueuePair, b: &QueuePair, rounds: usize) {
    let mut a_rx = a.recv_stream(16, 64).unwrap();
    let mut b_rx = b.recv_stream(16, 64).unwrap();
    let echo = {
        let b = b.clone();
        tokio::spawn(async move {
            for _ in 0..rounds {
                drop(
                    b_rx.next()
                        .await
                        .expect("echo stream")
                        .expect("echo receive"),
                );
                b.send_inline_unsignaled(&[2u8; 8]).expect("echo send");
            }
        })
    };
    let ping = {
        let a = a.clone();
        tokio::spawn(async move {
            for _ in 0..rounds {
                a.send_inline_unsignaled(&[1u8; 8]).expect("ping send");
                drop(
                    a_rx.next()
                        .await
                        .expect("ping stream")
                        .expect("ping receive"),
                );
            }
        })
    };
    bounded("the ping-pong", 120, async {
        ping.await.unwrap();
        echo.await.unwrap();
    })
    .await;
}

fn channel_cq(r: &common::Rig) -> (CompletionChannel, CompletionQueue) {
    let chan = CompletionChannel::with_config(&r.ctx, DriverConfig::default()).unwrap();
    let cq = chan.create_cq(2048).unwrap();
    (chan, cq)
}

/// On a multi-thread runtime the awaiting tasks spin on their CQ on the workers, and the
/// driver used to poll the same CQ on a worker of its own all along: a busy connection kept
/// one more worker polling, and where cores are scarce the peer waited for one (in the
/// soft-RoCE VM a 2-byte ping-pong's p99 was about 4 ms, against 0.2 ms on a current-thread
/// runtime). Now the driver stands aside while they spin. Counted in polls, not in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an RDMA device"]
async fn aside_the_driver_stands_aside_while_tasks_spin_on_its_cq() {
    let r = rig(64);
    let (_chan, cq) = channel_cq(&r);
    let (a, b) = r.rc_pair_on(&cq);
    // One run per pair: the receives a dropped stream left posted would take the next run's
    // first messages.
    ping_pong(&a, &b, 2000).await;
    let s = cq.stats();
    let (polls, driver) = (s.polls, s.driver_polls);
    println!("{polls} polls, {driver} of them by the driver");
    assert!(
        driver * 50 < polls,
        "the driver made {driver} of {polls} polls while the tasks spun"
    );
}

/// While the driver stands aside, a future on the same CQ that waits for the driver (it spun
/// out its budget before the spinning tasks came) is still served once they are gone: the
/// driver stands aside for a bounded time, and it needs no tokio timer for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an RDMA device"]
async fn aside_a_waiter_is_served_after_the_spinning_tasks_leave() {
    let r = rig(64);
    let (_chan, cq) = channel_cq(&r);
    let (a, b) = r.rc_pair_on(&cq);
    let (c, d) = r.rc_pair_on(&cq);
    let mut d_rx = d.recv_stream(4, 64).unwrap();
    let waiter = tokio::spawn(async move {
        d_rx.next()
            .await
            .expect("waiter stream")
            .expect("waiter receive")
            .len()
    });
    // Long enough for the waiter to spend its spin budget and wait for the driver.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    ping_pong(&a, &b, 500).await;
    c.send_inline_unsignaled(&[3u8; 8]).unwrap();
    let len = bounded("the waiter", 20, waiter).await.unwrap();
    assert_eq!(len, 8);
}
