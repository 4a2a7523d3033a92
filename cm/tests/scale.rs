//! Many connections: 1000 connect/disconnect cycles with the process's open fds and RSS flat,
//! and 256 simultaneous connections (each carrying a message both ways) without a thread per
//! connection. Needs an RDMA device (`cargo xtask test` runs these in the soft-RoCE VM).
//! Ports 7400-7499.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{addr, bounded, exchange, ok, open_fds, pair, rss_kib, threads, wait_event};
use tokio_rdma_cm::{
    connect, AcceptOptions, ConnectOptions, Connection, ConnectionEvent, ListenOptions, Listener,
};

/// Waits (up to 10 s) for `cond` over the current fd count, for teardown that finishes in the
/// background; returns the last count.
async fn fds_settle(cond: impl Fn(usize) -> bool) -> usize {
    let start = Instant::now();
    loop {
        let n = open_fds();
        if cond(n) || start.elapsed() > Duration::from_secs(10) {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How far the 256 simultaneous setups got, for the message of a test that stalls: requests
/// the listener took, setups done on each side, and the errors seen.
#[derive(Default)]
struct Tally {
    requests: AtomicUsize,
    accepted: AtomicUsize,
    connected: AtomicUsize,
    errors: Mutex<Vec<String>>,
    /// Notified at the first error: the listener would wait for the failed client's request
    /// until the test's bound.
    failed: tokio::sync::Notify,
}

impl Tally {
    fn record<T>(&self, done: &AtomicUsize, what: String, r: &tokio_rdma_cm::Result<T>) {
        match r {
            Ok(_) => {
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!("{what}: {e}"));
                self.failed.notify_one();
            }
        }
    }

    fn report(&self) -> String {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        format!(
            "{} requests taken, {} accepted, {} connected, {} errors: {:?}",
            self.requests.load(Ordering::Relaxed),
            self.accepted.load(Ordering::Relaxed),
            self.connected.load(Ordering::Relaxed),
            errors.len(),
            &errors[..errors.len().min(8)]
        )
    }
}

/// One cycle: connect, end it and drop both ends. Even cycles end with `disconnect` on the
/// client while the server drops its end once it saw Disconnected (dropping sends the DREP
/// the client's `disconnect` waits for; see disconnect.rs for the other ways); odd cycles
/// drop both ends without disconnecting.
async fn cycle(listener: &Listener, i: usize) {
    let (mut client, mut server) = pair(listener).await;
    if i.is_multiple_of(2) {
        let answer = async move {
            wait_event(&mut server, ConnectionEvent::Disconnected, 10, "server").await;
            drop(server);
        };
        let (c, ()) = bounded("disconnect", 20, async {
            tokio::join!(client.disconnect(), answer)
        })
        .await;
        ok(&format!("cycle {i}: client disconnect"), c);
    } else {
        drop(server);
    }
    drop(client);
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn thousand_connect_disconnect_cycles_keep_fds_and_rss_flat() {
    let listener = ok(
        "bind",
        bounded("bind", 10, Listener::bind(addr(7401))).await,
    );
    const WARMUP: usize = 50;
    const CYCLES: usize = 1000;
    let start = Instant::now();
    for i in 0..WARMUP {
        cycle(&listener, i).await;
    }
    // Let teardown of the warm-up finish before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds0 = open_fds();
    let rss0 = rss_kib();
    eprintln!(
        "after {WARMUP} cycles ({:?}): {fds0} fds, RSS {rss0} KiB",
        start.elapsed()
    );
    for i in WARMUP..CYCLES {
        cycle(&listener, i).await;
        if i % 100 == 99 {
            eprintln!(
                "after {} cycles ({:?}): {} fds, RSS {} KiB",
                i + 1,
                start.elapsed(),
                open_fds(),
                rss_kib()
            );
        }
    }
    let fds = fds_settle(|n| n <= fds0 + 2).await;
    let rss = rss_kib();
    eprintln!(
        "after {CYCLES} cycles ({:?}): {fds} fds, RSS {rss} KiB",
        start.elapsed()
    );
    assert!(
        fds <= fds0 + 2,
        "open fds grew from {fds0} to {fds} over {} cycles",
        CYCLES - WARMUP
    );
    // A QP, CQ or cm id left behind per cycle costs more than 4 KiB of touched memory: 950 of them show.
    assert!(
        rss <= rss0 + 4 * 1024,
        "RSS grew from {rss0} KiB to {rss} KiB over {} cycles",
        CYCLES - WARMUP
    );
    // Still works.
    let (c, s) = pair(&listener).await;
    exchange(&c, &s, b"after 1000 cycles").await;
}

#[test]
#[ignore = "needs an RDMA device"]
fn two_hundred_fifty_six_simultaneous_connections() {
    // A runtime of its own, so a blocked worker fails the test instead of hanging the binary.
    common::run_bounded("256 connections", 300, simultaneous_connections);
}

async fn simultaneous_connections() {
    const N: usize = 256;
    let listener = ok(
        "bind",
        bounded(
            "bind",
            10,
            Listener::bind_with(addr(7402), ListenOptions { backlog: 512 }),
        )
        .await,
    );
    // What lives as long as the runtime (its event channel and driver task, the device)
    // exists from the first connection on: measure after one.
    drop(pair(&listener).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fds0 = open_fds();
    let threads0 = threads();
    let to = listener.local_addr();

    // Each connection is a task of its own, as an application would run it, so the runtime's
    // workers share the setup. Requests are taken one by one and each answered in its task
    // (an accept waits for its connection to be established, which needs the client side to
    // progress too). In the emulated VM a connection's setup costs tens of milliseconds of
    // system calls on each side, so the last of 256 simultaneous attempts may wait longer
    // than the 15 s default for the ones before it: the handshakes are bounded by the test's
    // own bound instead.
    let copts = ConnectOptions {
        timeout: Duration::from_secs(100),
        connect_timeout: Duration::from_secs(100),
        ..ConnectOptions::default()
    };
    let aopts = AcceptOptions {
        timeout: Duration::from_secs(100),
        ..AcceptOptions::default()
    };
    let start = Instant::now();
    let tally = Arc::new(Tally::default());
    let dial: Vec<_> = (0..N)
        .map(|i| {
            let copts = copts.clone();
            let tally = tally.clone();
            tokio::spawn(async move {
                let c = connect(to, copts).await;
                tally.record(&tally.connected, format!("connect {i}"), &c);
                (c, start.elapsed())
            })
        })
        .collect();
    let take = async {
        let mut answers = Vec::with_capacity(N);
        for i in 0..N {
            let req = ok(&format!("accept {i}"), listener.accept().await);
            tally.requests.fetch_add(1, Ordering::Relaxed);
            let (aopts, tally) = (aopts.clone(), tally.clone());
            answers.push(tokio::spawn(async move {
                let s = req.accept(aopts).await;
                tally.record(&tally.accepted, format!("accept {i}"), &s);
                s
            }));
        }
        futures::future::join_all(answers).await
    };
    let both = async { tokio::join!(take, futures::future::join_all(dial)) };
    let (servers, clients) = tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(120), both) => match r {
            Ok(v) => v,
            Err(_) => panic!("256 connections: not set up in 120 s: {}", tally.report()),
        },
        () = tally.failed.notified() => {
            // A moment for more errors, then all of them.
            tokio::time::sleep(Duration::from_secs(2)).await;
            panic!("256 connections: a setup failed: {}", tally.report())
        }
    };
    let mut times: Vec<Duration> = Vec::with_capacity(N);
    let clients: Vec<Connection> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let (c, t) = c.expect("connect task");
            times.push(t);
            ok(&format!("connect {i}"), c)
        })
        .collect();
    times.sort();
    eprintln!(
        "{N} connections established in {:?} (client side: first {:?}, median {:?}, last {:?})",
        start.elapsed(),
        times[0],
        times[N / 2],
        times[N - 1]
    );
    let mut servers: HashMap<Option<SocketAddr>, Connection> = servers
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let s = ok(&format!("accept {i}"), s.expect("accept task"));
            (s.peer_addr(), s)
        })
        .collect();
    assert_eq!(servers.len(), N, "distinct client addresses");
    let grown = threads().saturating_sub(threads0);
    eprintln!(
        "{N} connections: {} threads more, {} fds more",
        grown,
        open_fds() - fds0
    );
    assert!(grown < 16, "{grown} more threads for {N} connections");

    // A message each way on each connection.
    let pairs: Vec<(Connection, Connection)> = clients
        .into_iter()
        .map(|c| {
            let s = servers
                .remove(&c.local_addr())
                .unwrap_or_else(|| panic!("no server side for {:?}", c.local_addr()));
            (c, s)
        })
        .collect();
    bounded("a message each way on each connection", 120, async {
        futures::future::join_all(pairs.iter().enumerate().map(|(i, (c, s))| async move {
            exchange(c, s, format!("to server {i}").as_bytes()).await;
            exchange(s, c, format!("to client {i}").as_bytes()).await;
        }))
        .await
    })
    .await;
    assert!(pairs
        .iter()
        .all(|(c, s)| c.is_connected() && s.is_connected()));

    drop(pairs);
    let fds = fds_settle(|n| n <= fds0 + 2).await;
    eprintln!("after dropping them: {fds} fds (before: {fds0})");
    assert!(
        fds <= fds0 + 2,
        "{fds} fds open after dropping everything (before: {fds0})"
    );
}
