//! The driver standing aside on a multi-thread runtime while a task spins on its CQ (`cq::aside`
//! in the crate). Needs an RDMA device (`cargo xtask test --no-host aside`).

mod common;

use std::time::{Duration, Instant};

use common::{bounded, rig};
use futures::StreamExt;
use tokio_rdma_verbs::{Access, CompletionChannel, CompletionQueue, DriverConfig, QueuePair};

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

/// A future that waits for the driver (it spun out its budget first), with spinning tasks
/// on the same CQ.
struct Waiter {
    task: tokio::task::JoinHandle<(usize, Instant)>,
    sender: QueuePair,
    /// Kept: dropping a QP's last handle moves it to the error state.
    _receiver: QueuePair,
}

async fn waiter_on(r: &common::Rig, cq: &CompletionQueue) -> Waiter {
    let (c, d) = r.rc_pair_on(cq);
    let mut d_rx = d.recv_stream(4, 64).unwrap();
    let task = tokio::spawn(async move {
        let m = d_rx.next().await.expect("waiter stream").expect("receive");
        (m.len(), Instant::now())
    });
    // Long enough for it to spend its spin budget and wait for the driver.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Waiter {
        task,
        sender: c,
        _receiver: d,
    }
}

impl Waiter {
    /// Sends it its message; how long it took to get it.
    async fn serve(self) -> Duration {
        let sent = Instant::now();
        self.sender.send_inline_unsignaled(&[3u8; 8]).unwrap();
        let (len, got) = bounded("the waiter", 20, self.task).await.unwrap();
        assert_eq!(len, 8);
        got - sent
    }
}

/// The driver does not stand aside while a future on the CQ waits for it (a `block_on`
/// body, a stream past its spin budget): that future's completion would wait for the bound
/// whenever the spinning tasks are between messages. The driver keeps its share of the
/// polls, as before the stand-aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an RDMA device"]
async fn aside_the_driver_does_not_stand_aside_while_a_future_waits_for_it() {
    let r = rig(64);
    let (_chan, cq) = channel_cq(&r);
    let waiter = waiter_on(&r, &cq).await;
    let (a, b) = r.rc_pair_on(&cq);
    let before = cq.stats();
    ping_pong(&a, &b, 2000).await;
    let after = cq.stats();
    let (polls, driver) = (
        after.polls - before.polls,
        after.driver_polls - before.driver_polls,
    );
    assert!(
        driver * 50 > polls,
        "the driver made only {driver} of {polls} polls while a future waited for it"
    );
    waiter.serve().await;
}

/// What no future waits for is still handled once the spinning tasks are gone: here the
/// completion of a dropped receive, whose slot (and buffer) waits for it. The driver stands
/// aside for a bounded time only (1 ms; the test allows a second for the VM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an RDMA device"]
async fn aside_a_dropped_future_is_completed_after_the_spinning_tasks_leave() {
    let r = rig(64);
    let (_chan, cq) = channel_cq(&r);
    let (a, b) = r.rc_pair_on(&cq);
    let (c, d) = r.rc_pair_on(&cq);
    drop(d.recv(r.pd.register(vec![0u8; 64], Access::LOCAL_WRITE).unwrap()));
    ping_pong(&a, &b, 500).await;
    // The driver saw spin turns and nothing waits for it: it may stand aside now.
    let before = cq.in_flight();
    let sent = Instant::now();
    c.send_inline_unsignaled(&[3u8; 8]).unwrap();
    while cq.in_flight() >= before {
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "the dropped receive's completion was not handled ({} in flight)",
            cq.in_flight()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}
