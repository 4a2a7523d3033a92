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
