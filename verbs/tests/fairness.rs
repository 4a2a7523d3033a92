//! Fairness on one thread: a task whose operations keep completing inline must still let the
//! other tasks of its runtime run (tokio's cooperative budget). Needs an RDMA device
//! (`cargo xtask test --no-host fairness`).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{bounded, rig};
use tokio_rdma_verbs::{Access, CompletionChannel, DriverConfig};

/// With an inline-poll budget so large that every operation completes before its future
/// would return `Pending`, a loop of 1000 RDMA writes never yielded, and a second task on the
/// same current-thread runtime did not run once until the loop ended.
#[tokio::test(flavor = "current_thread")]
#[ignore = "needs an RDMA device"]
async fn fairness_a_task_completing_inline_yields_to_others() {
    let r = rig(64);
    let chan = CompletionChannel::with_config(
        &r.ctx,
        DriverConfig {
            inline_polls: 10_000_000,
            ..DriverConfig::default()
        },
    )
    .unwrap();
    let cq = chan.create_cq(64).unwrap();
    let (a, _b) = r.rc_pair_on(&cq);
    let target = r.pd.register_remote(vec![0u8; 64], Access::ALL).unwrap();
    let remote = target.remote(..).unwrap();
    let other_ran = Arc::new(AtomicUsize::new(0));
    let counter = other_ran.clone();
    let other = tokio::spawn(async move {
        loop {
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
        }
    });
    let mut buf = r.pd.register(vec![7u8; 64], Access::LOCAL_WRITE).unwrap();
    bounded("1000 writes", 60, async {
        for _ in 0..1000 {
            let (res, b) = a.write(buf, remote).await;
            res.expect("write");
            buf = b;
        }
    })
    .await;
    let ran = other_ran.load(Ordering::Relaxed);
    other.abort();
    println!("the other task ran {ran} times during 1000 writes");
    assert!(
        ran >= 3,
        "the other task ran {ran} times during 1000 writes"
    );
}

/// On a multi-thread runtime, a driver that dispatched completions yields to the tasks it
/// woke and then polls again after at most a turn or two of the other ready tasks. It used to
/// yield with `tokio::task::yield_now`, whose wake-up a multi-thread worker defers until it
/// has nothing else to run or to steal: next to a task that is always ready, the driver
/// polled again only at the worker's next maintenance (up to 61 tasks later), and with
/// computing consumers (`rdma-bench --mode async-mt`) completions waited for tens of
/// milliseconds. Counted in turns of a busy task, not in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "needs an RDMA device"]
async fn fairness_a_driver_that_dispatched_polls_again_soon_on_a_multi_thread_runtime() {
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    let r = rig(64);
    let chan = CompletionChannel::with_config(&r.ctx, DriverConfig::default()).unwrap();
    let cq = chan.create_cq(2048).unwrap();
    let (a, b) = r.rc_pair_on(&cq);
    let messages = 20u64;
    // Posted, then dropped: the buffers wait in their slots, so no future polls the CQ and
    // every poll counted is the driver's.
    for _ in 0..messages {
        drop(b.recv(r.pd.register(vec![0u8; 16], Access::LOCAL_WRITE).unwrap()));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (cq2, stop2) = (cq.clone(), stop.clone());
    // Always ready: wakes itself every turn. Records, for each round of the driver that
    // dispatched, how many of its turns passed before the driver polled again.
    let busy = tokio::spawn(async move {
        let (mut gaps, mut waiting) = (Vec::new(), None::<(u64, usize)>);
        let mut seen = cq2.stats().driver_completions;
        while !stop2.load(Ordering::Relaxed) {
            let s = cq2.stats();
            match waiting {
                Some((polls, turns)) if s.polls == polls => waiting = Some((polls, turns + 1)),
                Some((_, turns)) => {
                    gaps.push(turns);
                    waiting = None;
                }
                None => {}
            }
            if s.driver_completions != seen {
                seen = s.driver_completions;
                waiting = Some((s.polls, 0));
            }
            Turn(false).await;
        }
        gaps
    });
    // This thread is not the worker: it sends one message at a time, each once the driver
    // has found the one before.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for i in 0..messages {
        a.send_inline_unsignaled(&[i as u8; 8]).unwrap();
        while cq.stats().driver_completions < i + 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "message {i} was not delivered"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    let gaps = bounded("busy task", 30, busy).await.unwrap();
    assert!(
        gaps.len() >= messages as usize / 2,
        "too few rounds seen: {gaps:?}"
    );
    let worst = gaps.iter().copied().max().unwrap_or(0);
    assert!(
        worst <= 8,
        "after dispatching, the driver polled again only after {worst} turns of a ready task \
         (each round: {gaps:?})"
    );
}

/// One turn at the back of the run queue: wakes its task and returns `Pending` once (a
/// multi-thread worker does not defer that wake-up, unlike `tokio::task::yield_now`'s).
struct Turn(bool);

impl std::future::Future for Turn {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}
