//! Fairness on one thread: a task whose operations keep completing inline must still let the
//! other tasks of its runtime run (tokio's cooperative budget). Needs an RDMA device
//! (`cargo xtask test --no-host fairness`).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bounded, rig};
use futures::StreamExt;
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

/// The longest run of one flow in `log` (the flow of each completed round trip, in order),
/// counted from when every flow has made `skip` round trips (the start, while the driver has
/// not seen the flows' CQs busy yet) to when the first flow has made `last`; and how many
/// round trips that window holds (none when one flow made `last` before the others made
/// `skip`).
fn longest_run(log: &[usize], flows: usize, skip: usize, last: usize) -> (usize, usize) {
    let mut done = vec![0usize; flows];
    let (mut from, mut run, mut longest, mut prev, mut counted) = (None, 0, 0, usize::MAX, 0);
    for (i, &f) in log.iter().enumerate() {
        done[f] += 1;
        if from.is_none() && done.iter().all(|&n| n >= skip) {
            from = Some(i);
        }
        if done[f] >= last {
            break;
        }
        if from.is_some() {
            run = if f == prev { run + 1 } else { 1 };
            longest = longest.max(run);
            counted += 1;
        }
        prev = f;
    }
    (longest, counted)
}

/// Flows sharing a thread and a completion channel take turns. A future polls its CQ inline
/// before it waits for the driver; when its reply came within those polls it went on with the
/// next round trip in the same task poll, and the next, up to tokio's cooperative budget,
/// while the completions of the other flows waited. And futures that took every completion
/// themselves left the driver's polls empty: it parked their CQs, and with none active each
/// future spun on its own CQ. In `rdma-bench --flows 16` some runs had flows taking turns of
/// 128 round trips (a median of 44 us, a p99 of 9 ms, against 600 us and 2 ms when they
/// interleave). Now a completion found inline counts as activity for the driver, and while it
/// has several CQs active a future does not poll itself and leaves the waiting to the
/// driver's rounds. An inline budget far beyond a round trip makes the old behaviour certain
/// here (runs of 256 round trips; 235 with a one-poll rule alone).
#[tokio::test(flavor = "current_thread")]
#[ignore = "needs an RDMA device"]
async fn fairness_flows_sharing_a_thread_take_turns() {
    let config = DriverConfig {
        inline_polls: 1_000_000,
        ..DriverConfig::default()
    };
    let longest = longest_turn(config, Duration::ZERO, false).await;
    assert!(
        longest <= 32,
        "one flow made {longest} round trips in a row while the others waited"
    );
}

/// The same with the default inline budget, and flows whose peer's reply is already in the
/// CQ when their future first polls (here: the task blocks its thread for a moment after each
/// send, as a handler that computes does; in `rdma-bench --flows 16` against a server of
/// async flows, rxe often had the reply back before the server's send returned). One inline
/// poll found it, so a one-poll rule still let a flow chain its round trips: in 4 of 12
/// server runs the client's median was 40 us (one flow alone) and its p99 4-15 ms. Here, with
/// that rule: runs of 19 round trips, and with signaled pings (operation futures) one flow
/// finished before the others had made half of theirs. Without inline polls while several
/// CQs are active: runs of 1.
#[tokio::test(flavor = "current_thread")]
#[ignore = "needs an RDMA device"]
async fn fairness_replies_already_there_do_not_let_a_flow_chain_round_trips() {
    // Receive streams, then operation futures too (each ping a signaled send, awaited).
    for signaled in [false, true] {
        let longest = longest_turn(
            DriverConfig::default(),
            Duration::from_micros(300),
            signaled,
        )
        .await;
        assert!(
            longest <= 8,
            "one flow made {longest} round trips in a row while the others waited \
             (signaled pings: {signaled})"
        );
    }
}

/// Runs three ping-pong flows on this (current-thread) runtime and one completion channel
/// with `config`, their peers echoing from a runtime of their own; each flow blocks its
/// thread for `work` after each send, and awaits the send's completion if `signaled`. The
/// longest run of one flow's round trips, counted after the start (before the driver has
/// seen the CQs busy).
async fn longest_turn(config: DriverConfig, work: Duration, signaled: bool) -> usize {
    const FLOWS: usize = 3;
    const ROUNDS: usize = 1200;
    let r = rig(64);
    let echo_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (_echo_chan, echo_cq) = {
        let _in_echo_runtime = echo_rt.enter();
        let chan = CompletionChannel::with_config(&r.ctx, DriverConfig::default()).unwrap();
        let cq = chan.create_cq(2048).unwrap();
        (chan, cq)
    };
    let chan = CompletionChannel::with_config(&r.ctx, config).unwrap();
    let log = Arc::new(Mutex::new(Vec::with_capacity(FLOWS * ROUNDS)));
    let mut pairs = Vec::new();
    let mut flows = Vec::new();
    for flow in 0..FLOWS {
        let cq = chan.create_cq(2048).unwrap();
        let (a, b) = r.rc_pair_between(&cq, &echo_cq);
        let mut b_rx = b.recv_stream(16, 64).unwrap();
        let echo = b.clone();
        echo_rt.spawn(async move {
            while let Some(m) = b_rx.next().await {
                drop(m.expect("echo receive"));
                echo.send_inline_unsignaled(&[2u8; 8]).expect("echo send");
            }
        });
        let (ping, log) = (a.clone(), log.clone());
        let mut a_rx = a.recv_stream(16, 64).unwrap();
        flows.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let send = signaled.then(|| ping.send_inline(&[1u8; 8]));
                if !signaled {
                    ping.send_inline_unsignaled(&[1u8; 8]).expect("ping send");
                }
                if !work.is_zero() {
                    std::thread::sleep(work);
                }
                if let Some(send) = send {
                    send.await.0.expect("ping send");
                }
                drop(a_rx.next().await.expect("ping stream").expect("ping"));
                log.lock().unwrap().push(flow);
            }
        }));
        pairs.push((a, b, cq));
    }
    bounded("the flows", 120, async {
        for f in flows {
            f.await.unwrap();
        }
    })
    .await;
    let log = log.lock().unwrap().clone();
    let (longest, counted) = longest_run(&log, FLOWS, ROUNDS / 2, ROUNDS);
    println!("longest run of one flow: {longest} round trips (of {counted} counted)");
    assert!(
        counted >= FLOWS * 100,
        "only {counted} round trips between the start and the first flow done: one flow ran \
         ahead of the others"
    );
    drop(pairs);
    echo_rt.shutdown_background();
    longest
}

#[test]
fn longest_run_counts_between_the_start_and_the_first_flow_done() {
    // Flow 0 alone first (skipped), then runs of 3 once every flow has made one.
    let log = [0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 0];
    assert_eq!(longest_run(&log, 2, 1, 99), (3, 8));
    // Counted until a flow has made `last`: flow 0 then runs alone.
    assert_eq!(longest_run(&[0, 1, 0, 0, 0, 0], 2, 1, 3), (1, 2));
    // One flow done before the other made `skip`: nothing counted.
    assert_eq!(longest_run(&[0, 0, 0, 1], 2, 1, 3), (0, 0));
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
