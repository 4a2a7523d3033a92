//! Connections abandoned or limited midway: a request whose requester gave up, a listener
//! dropped with requests queued, and the READ/atomic depths a server grants. Needs an RDMA
//! device (`cargo xtask test --no-host abandoned`).

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use tokio::time::timeout;
use tokio_rdma_cm::{connect, AcceptOptions, ConnectOptions, Error, Listener};

const T: Duration = Duration::from_secs(20);

fn addr(port: u16) -> SocketAddr {
    let ip = std::env::var("TOKIO_RDMA_IP").unwrap_or_else(|_| "192.0.2.1".into());
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Runs `f` on a plain thread and fails if it does not return within 5 s (a hung
/// `rdma_destroy_id` would otherwise hang the runtime, and its shutdown).
fn returns_promptly(what: &str, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("{what} did not return: rdma_destroy_id hung"));
}

/// The client gives up (its connect times out) before the server answers: the kernel
/// rejects the request's id, which gets a REJECTED event of its own. Dropping the request
/// then must not wait on that event (it hung when queues held unacknowledged events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an RDMA device"]
async fn abandoned_request_is_dropped_without_hanging() {
    let at = addr(7511);
    let listener = Listener::bind(at).await.expect("bind");
    let client = tokio::spawn(async move {
        let opts = ConnectOptions {
            connect_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        connect(at, opts).await
    });
    let req = timeout(T, listener.accept())
        .await
        .expect("accept")
        .expect("request");
    let r = timeout(T, client)
        .await
        .expect("client hung")
        .expect("client task");
    assert!(matches!(r, Err(Error::TimedOut { .. })), "{r:?}");
    // Let the requester's REJ reach the request's id.
    tokio::time::sleep(Duration::from_millis(500)).await;
    returns_promptly("dropping the request", move || drop(req));
}

/// The same, with the request never taken out of the listener's queue: dropping the
/// listener rejects and destroys it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an RDMA device"]
async fn abandoned_listener_with_queued_requests_is_dropped_without_hanging() {
    let at = addr(7512);
    let listener = Listener::bind(at).await.expect("bind");
    let opts = ConnectOptions {
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let r = timeout(T, connect(at, opts)).await.expect("client hung");
    assert!(matches!(r, Err(Error::TimedOut { .. })), "{r:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    returns_promptly("dropping the listener", move || drop(listener));
}

/// A server granting one outstanding READ: the client's QP must not issue more (it used
/// its own offer, 16, which a real NIC's responder NAKs).
#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn abandoned_offer_client_uses_the_depth_the_server_granted() {
    let at = addr(7513);
    let listener = Listener::bind(at).await.expect("bind");
    let server = tokio::spawn(async move {
        let req = timeout(T, listener.accept())
            .await
            .expect("accept")
            .expect("request");
        let opts = AcceptOptions {
            responder_resources: Some(1),
            initiator_depth: Some(1),
            ..Default::default()
        };
        let conn = timeout(T, req.accept(opts))
            .await
            .expect("accept hung")
            .expect("accept");
        let depths = conn.qp().query_rd_atomic().expect("query");
        (conn, depths)
    });
    let conn = timeout(T, connect(at, ConnectOptions::default()))
        .await
        .expect("connect hung")
        .expect("connect");
    let (_server_conn, (s_init, s_resp)) = server.await.expect("server");
    let (c_init, c_resp) = conn.qp().query_rd_atomic().expect("query");
    println!("client rd_atomic {c_init}/{c_resp}, server {s_init}/{s_resp}");
    assert_eq!(s_resp, 1, "server accepts 1 outstanding READ");
    assert!(
        c_init <= s_resp,
        "client issues {c_init} READs against {s_resp} slots"
    );
    assert!(
        s_init <= c_resp,
        "server issues {s_init} READs against {c_resp} slots"
    );
}
