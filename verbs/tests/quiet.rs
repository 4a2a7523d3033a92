//! A connection that went quiet next to a busy one on the same completion channel. Needs an
//! RDMA device (`cargo xtask test --no-host quiet`).

mod common;

use std::time::{Duration, Instant};

use common::{bounded, rig};
use futures::StreamExt;
use tokio_rdma_verbs::{
    Access, CompletionChannel, CompletionQueue, DriverConfig, MemoryRegion, PeerWritable,
    QueuePair, RecvStream,
};

/// Round trips between two looks at the quiet CQ's driver polls.
const LOOK_EVERY: u64 = 50;
/// Round trips the busy pair makes at most before the quiet CQ must have been parked.
const PARK_WITHIN: u64 = 20_000;
/// Round trips measured after the quiet CQ was parked.
const MEASURED: u64 = 1000;

/// What the busy flow saw.
#[derive(Debug)]
struct Outcome {
    /// Round trips after the quiet CQ's write before its driver polls, having grown,
    /// stopped growing (`None`: they never did).
    parked_after: Option<u64>,
    /// The quiet CQ's driver polls after its write (printed).
    #[allow(dead_code)]
    quiet_polls: u64,
    /// Completions of the busy CQ the driver found during the measured round trips.
    driver_found: u64,
    /// Their mean time (printed, not checked: timing is for the benches).
    #[allow(dead_code)]
    round_trip: Duration,
}

async fn round_trip(a: &QueuePair, rx: &mut RecvStream) {
    a.send_inline_unsignaled(&[1u8; 8]).expect("ping send");
    drop(rx.next().await.expect("ping stream").expect("ping receive"));
}

/// A CQ with one pair on it, to complete one write while the busy pair runs.
struct Quiet {
    cq: CompletionQueue,
    writer: QueuePair,
    _target_qp: QueuePair,
    target: MemoryRegion<Vec<u8>, PeerWritable>,
    buf: Option<MemoryRegion<Vec<u8>>>,
}

impl Quiet {
    fn new(r: &common::Rig, chan: &CompletionChannel) -> Self {
        let cq = chan.create_cq(64).unwrap();
        let (writer, target_qp) = r.rc_pair_on(&cq);
        Self {
            cq,
            writer,
            _target_qp: target_qp,
            target: r.pd.register_remote(vec![0u8; 64], Access::ALL).unwrap(),
            buf: Some(r.pd.register(vec![7u8; 64], Access::LOCAL_WRITE).unwrap()),
        }
    }

    /// One signaled write: the CQ is parked (armed) until then, so its completion raises an
    /// event, which makes the CQ active for the driver.
    async fn complete_one(&mut self) {
        let buf = self.buf.take().expect("one write");
        let (res, buf) = self
            .writer
            .write(buf, self.target.remote(..).unwrap())
            .await;
        res.expect("quiet write");
        self.buf = Some(buf);
    }
}

/// Ping-pongs over `(a, b)` (both on `busy`); after [`LOOK_EVERY`] round trips, completes
/// one write on `quiet`, then goes on until the driver, having polled `quiet` since, stops
/// polling it (at most [`PARK_WITHIN`] round trips), then makes [`MEASURED`] more.
async fn busy_next_to_quiet(
    a: &QueuePair,
    b: &QueuePair,
    busy: &CompletionQueue,
    mut quiet: Quiet,
) -> Outcome {
    let mut a_rx = a.recv_stream(16, 64).unwrap();
    let mut b_rx = b.recv_stream(16, 64).unwrap();
    let echo = {
        let b = b.clone();
        tokio::spawn(async move {
            while let Some(m) = b_rx.next().await {
                drop(m.expect("echo receive"));
                b.send_inline_unsignaled(&[2u8; 8]).expect("echo send");
            }
        })
    };
    let ping = {
        let (a, busy) = (a.clone(), busy.clone());
        tokio::spawn(async move {
            for _ in 0..LOOK_EVERY {
                round_trip(&a, &mut a_rx).await;
            }
            quiet.complete_one().await;
            let start = quiet.cq.stats().driver_polls;
            let mut last = start;
            let mut parked_after = None;
            let mut n = 0;
            while n < PARK_WITHIN {
                for _ in 0..LOOK_EVERY {
                    round_trip(&a, &mut a_rx).await;
                }
                n += LOOK_EVERY;
                let polls = quiet.cq.stats().driver_polls;
                if polls == last && polls > start {
                    parked_after = Some(n);
                    break;
                }
                last = polls;
            }
            let before = busy.stats().driver_completions;
            let t = Instant::now();
            for _ in 0..MEASURED {
                round_trip(&a, &mut a_rx).await;
            }
            Outcome {
                parked_after,
                quiet_polls: quiet.cq.stats().driver_polls - start,
                driver_found: busy.stats().driver_completions - before,
                round_trip: t.elapsed() / MEASURED as u32,
            }
        })
    };
    let outcome = bounded("the ping-pong", 300, ping).await.unwrap();
    echo.abort();
    outcome
}

/// A busy CQ kept a quiet one on the same channel active for as long as it was busy: the
/// driver's spin budget was one for the channel, and every completion of the busy CQ
/// restarted it. So the quiet CQ was polled every round for good, and, counted as a second
/// busy CQ, it took the busy flow's inline polls and spin turns away: every completion of
/// the busy flow went through the driver task's wake-up. Now each CQ has its own budget.
async fn a_quiet_cq_is_parked_next_to_a_busy_one() {
    let r = rig(64);
    let chan = CompletionChannel::with_config(&r.ctx, DriverConfig::default()).unwrap();
    let busy = chan.create_cq(2048).unwrap();
    let quiet = Quiet::new(&r, &chan);
    let (a, b) = r.rc_pair_on(&busy);
    let o = busy_next_to_quiet(&a, &b, &busy, quiet).await;
    println!("{o:?}");
    assert!(
        o.parked_after.is_some(),
        "the quiet CQ was still polled after {PARK_WITHIN} round trips of the busy one: {o:?}"
    );
    // Two receive completions per round trip; the futures find most of them themselves.
    assert!(
        o.driver_found < MEASURED,
        "the driver found {} of the busy CQ's {} completions: {o:?}",
        o.driver_found,
        2 * MEASURED
    );
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "needs an RDMA device"]
async fn quiet_cq_is_parked_next_to_a_busy_one_on_a_current_thread_runtime() {
    a_quiet_cq_is_parked_next_to_a_busy_one().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an RDMA device"]
async fn quiet_cq_is_parked_next_to_a_busy_one_on_a_multi_thread_runtime() {
    a_quiet_cq_is_parked_next_to_a_busy_one().await;
}
