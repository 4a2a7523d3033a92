//! A runtime that stalls while a connection is being set up: when the kernel answered within
//! the step's bound, the setup succeeds, whatever the process did meanwhile. Needs an RDMA
//! device (`cargo xtask test` runs these in the soft-RoCE VM). Ports 7800-7899.
//!
//! The stall is made with blocking sleeps on both workers of a multi-thread runtime: what a
//! host that stops the VM for a few seconds, or 256 setups' blocking system calls, do to it.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::{bounded, exchange, listen, ok, pair, run_bounded};
use tokio_rdma_cm::{connect, AcceptOptions, ConnectOptions};

/// Longer than address resolution's default bound (2 s).
const STALL: Duration = Duration::from_secs(4);

/// The CI failure of the 256-connection test: one client failed with "address resolution
/// timed out after 2.5s" although the kernel resolves a local address at once. `connect`
/// raced a timer of its own against the kernel's answer; after a stall both were due, and
/// tokio ran the task its timer woke before the driver task that routes the answer.
#[test]
#[ignore = "needs an RDMA device"]
fn a_runtime_stalled_during_address_resolution_still_connects() {
    run_bounded("stalled address resolution", 60, stalled_resolution);
}

async fn stalled_resolution() {
    let listener = listen(7801).await;
    let to = listener.local_addr();
    // The runtime's event channel and its driver task exist from the first connection on.
    drop(pair(&listener).await);

    // One worker stalls in a task of its own, for longer than the other.
    let (started_tx, started) = mpsc::channel();
    let other = tokio::spawn(async move {
        started_tx.send(()).expect("test waits");
        std::thread::sleep(STALL + Duration::from_secs(1));
    });
    // This thread (block_on's, not a worker) may block: nothing else waits on it yet.
    started.recv().expect("blocking task started");

    // The other worker stalls in the connecting task, right after `connect` asked the kernel
    // to resolve the address: the kernel answers while nothing can run the channel's driver.
    let client = tokio::spawn(async move {
        let mut attempt = std::pin::pin!(connect(to, ConnectOptions::default()));
        assert!(
            futures::poll!(attempt.as_mut()).is_pending(),
            "connect finished at its first poll"
        );
        std::thread::sleep(STALL);
        attempt.await
    });
    // The server answers from a task, so a failed client is reported as such.
    let server = tokio::spawn(async move {
        let req = ok("request", listener.accept().await);
        let conn = req.accept(AcceptOptions::default()).await;
        (listener, conn)
    });
    let client = bounded("connect after a stall", 30, client).await;
    let client = ok("connect after a stall", client.expect("client task"));
    let (_listener, server) = bounded("accept", 30, server).await.expect("server task");
    let server = ok("accept", server);
    other.await.expect("blocking task");
    exchange(&client, &server, b"after a stall").await;
}
