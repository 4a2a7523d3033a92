//! The runtime around connections: a multi-thread runtime keeps serving new connections after
//! many were dropped at once (each pair back to back, so DISCONNECTED events reach the cm
//! driver while their connections are being torn down), and its shutdown finishes instead of
//! hanging. Several rounds, since the two race. Needs an RDMA device (`cargo xtask test` runs these in the
//! soft-RoCE VM). Ports 7700-7799.

mod common;

use common::{addr, bounded, exchange, ok, run_bounded};
use futures::StreamExt;
use tokio_rdma_cm::{connect, AcceptOptions, ConnectOptions, ListenOptions, Listener};

/// `n` connections made concurrently on `port`, a message on each, then each pair dropped
/// (client, then its server) in one go, then a new connection still works.
async fn connections_dropped_pairwise(port: u16, n: usize) {
    let start = std::time::Instant::now();
    let listener = ok(
        "bind",
        bounded(
            "bind",
            10,
            Listener::bind_with(addr(port), ListenOptions { backlog: 512 }),
        )
        .await,
    );
    let take = async {
        let mut reqs = Vec::new();
        for _ in 0..n {
            reqs.push(ok("accept", listener.accept().await));
        }
        futures::stream::iter(reqs.into_iter().map(|r| r.accept(AcceptOptions::default())))
            .buffer_unordered(n)
            .collect::<Vec<_>>()
            .await
    };
    let dial =
        futures::future::join_all((0..n).map(|_| connect(addr(port), ConnectOptions::default())));
    let (servers, clients) = bounded("connections", 60, async { tokio::join!(take, dial) }).await;
    let mut servers: Vec<_> = servers.into_iter().map(|s| ok("accept", s)).collect();
    let clients: Vec<_> = clients.into_iter().map(|c| ok("connect", c)).collect();
    eprintln!("{n} connections: set up in {:?}", start.elapsed());
    let mut pairs = Vec::new();
    for c in clients {
        let i = servers
            .iter()
            .position(|s| s.peer_addr() == c.local_addr())
            .expect("server side");
        let s = servers.swap_remove(i);
        exchange(&c, &s, b"before the drop").await;
        pairs.push((c, s));
    }
    // All at once, each client right before its server: the DISCONNECTED events of the
    // server ends arrive at the driver while those ends are being dropped.
    eprintln!(
        "{n} connections: a message on each at {:?}",
        start.elapsed()
    );
    drop(pairs);
    eprintln!("{n} connections: dropped at {:?}", start.elapsed());
    // The runtime's CM events still flow: a new connection is made and carries a message.
    let (c, s) = common::pair(&listener).await;
    exchange(&s, &c, b"after the drops").await;
    eprintln!("{n} connections: a new one worked at {:?}", start.elapsed());
}

#[test]
#[ignore = "needs an RDMA device"]
fn runtime_shuts_down_after_connections_dropped_pairwise() {
    for (round, n) in [1, 64, 256, 256, 256, 256].into_iter().enumerate() {
        let port = 7701 + round as u16;
        let start = std::time::Instant::now();
        run_bounded(&format!("round {round}: {n} connections"), 120, move || {
            connections_dropped_pairwise(port, n)
        });
        eprintln!(
            "round {round}: {n} connections, runtime shut down at {:?}",
            start.elapsed()
        );
    }
}
