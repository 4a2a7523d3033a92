//! A future awaited by the `block_on` of a current-thread runtime (a `#[tokio::main]` body),
//! not by a task. Needs an RDMA device (`cargo xtask test --no-host block_on`).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{bounded, rig};
use futures::StreamExt;
use tokio_rdma_verbs::{CompletionChannel, DriverConfig};

/// Messages received by the `block_on` future.
const MESSAGES: usize = 40;

/// The driver's yield after a round that woke a future: when that future is the `block_on`
/// future (counted as waiting outside any task), the yield lets it run right after the
/// round. The driver yields so only then; it used to after every round that woke anything
/// (a non-blocking `epoll_wait` each time), and when it did not, the `block_on` future ran
/// only at the runtime's next maintenance, 61 driver turns (up to 32 polls each) later.
/// Counted in the driver's polls from the send to the future's wake-up, not in time.
#[test]
#[ignore = "needs an RDMA device"]
fn block_on_a_future_outside_any_task_runs_right_after_the_round_that_woke_it() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let gaps = rt.block_on(async {
        let r = rig(64);
        let chan = CompletionChannel::with_config(&r.ctx, DriverConfig::default()).unwrap();
        let cq = chan.create_cq(2048).unwrap();
        let (a, b) = r.rc_pair_on(&cq);
        let mut rx = b.recv_stream(16, 64).unwrap();
        // The driver's polls when the last message was sent.
        let sent_at = Arc::new(AtomicU64::new(0));
        let sender = {
            let (cq, sent_at) = (cq.clone(), sent_at.clone());
            tokio::spawn(async move {
                for i in 0..MESSAGES {
                    // Between messages the driver spins: the receive's future waits for it.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    sent_at.store(cq.stats().driver_polls, Ordering::SeqCst);
                    a.send_inline_unsignaled(&[i as u8; 8]).expect("send");
                }
                a
            })
        };
        let mut gaps = Vec::with_capacity(MESSAGES);
        for _ in 0..MESSAGES {
            let m = bounded("a message", 20, rx.next()).await;
            drop(m.expect("stream").expect("receive"));
            gaps.push(cq.stats().driver_polls - sent_at.load(Ordering::SeqCst));
        }
        let _a = sender.await.unwrap();
        gaps
    });
    let mut sorted = gaps.clone();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2];
    println!("driver polls from send to wake-up: median {median}, each: {gaps:?}");
    assert!(
        median <= 600,
        "the block_on future ran a median {median} driver polls after its message was sent: \
         {gaps:?}"
    );
}
