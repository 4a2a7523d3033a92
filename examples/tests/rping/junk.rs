//! A junk peer against our persistent server: each bad message ends its own connection, with
//! a clear error on the server's stderr, and the server keeps serving others.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_rdma_cm::{connect, ConnectOptions, Connection, ConnectionEvent};
use tokio_rdma_examples::rping::wire::RdmaInfo;
use tokio_rdma_verbs::Access;

use super::common::OURS;
use super::common::{expected_pings, ip, spawn, wait_listening, Proc, THEIRS};

/// What the junk client does once connected.
#[derive(Clone, Copy, Debug)]
enum Junk {
    /// A message of this many bytes of 0xee instead of 16.
    Bytes(usize),
    /// Advertises a real source of 64 bytes but claims this size.
    SourceSize(u32),
    /// Advertises a real source under a wrong rkey.
    WrongRkey,
    /// A proper source, then (after the go-ahead) a sink of this size.
    SinkSize(u32),
}

async fn bounded<F: std::future::Future>(what: &str, secs: u64, f: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: timed out after {secs}s"),
    }
}

async fn send(conn: &Connection, msg: &[u8]) {
    let (res, ()) = bounded("junk send", 20, conn.qp().send_inline(msg)).await;
    res.expect("junk send");
}

/// Connects to our server on `port`, misbehaves as `junk` says and waits (bounded) for the
/// server to disconnect.
async fn misbehave(port: u16, junk: Junk) {
    let addr = format!("{}:{port}", ip()).parse().expect("address");
    let opts = ConnectOptions {
        initiator_depth: 1,
        responder_resources: 1,
        rnr_retry_count: 7,
        ..ConnectOptions::default()
    };
    let mut conn = bounded("junk connect", 30, connect(addr, opts))
        .await
        .expect("junk connect");
    let pd = conn.pd();
    let mut rx = conn.qp().recv_stream(2, 64).expect("junk receives");
    let mut source = pd
        .register(vec![b'j'; 64], Access::LOCAL_WRITE | Access::REMOTE_READ)
        .expect("junk source");
    source[63] = 0;
    let real = RdmaInfo::new(source.addr(), source.rkey(), 64);
    match junk {
        Junk::Bytes(n) => send(&conn, &vec![0xee; n]).await,
        Junk::SourceSize(size) => {
            send(
                &conn,
                &RdmaInfo::new(source.addr(), source.rkey(), size).to_bytes(),
            )
            .await
        }
        Junk::WrongRkey => {
            let wrong = source.rkey().wrapping_add(0x5a5a);
            send(&conn, &RdmaInfo::new(source.addr(), wrong, 64).to_bytes()).await
        }
        Junk::SinkSize(size) => {
            send(&conn, &real.to_bytes()).await;
            let go = bounded("go-ahead", 20, rx.next()).await;
            assert_eq!(go.expect("a go-ahead").expect("a go-ahead").len(), 16);
            send(
                &conn,
                &RdmaInfo::new(source.addr(), source.rkey(), size).to_bytes(),
            )
            .await;
        }
    }
    // The server ends the connection.
    loop {
        match bounded("the server's disconnect", 30, conn.next_event()).await {
            Some(ConnectionEvent::Disconnected) | None => break,
            Some(_) => {}
        }
    }
    let _ = bounded("junk disconnect", 20, conn.disconnect()).await;
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn rping_junk_ends_only_its_own_connection() {
    let port = 18150;
    let p = port.to_string();
    let ip = ip();
    let mut srv: Proc = spawn(OURS, &["-s", "-P", "-a", &ip, "-p", &p, "-S", "64"]);
    wait_listening(port, &mut srv);
    let cases = [
        (Junk::Bytes(5), "received bogus data, size 5 "),
        (Junk::Bytes(0), "received bogus data, size 0 "),
        (Junk::Bytes(40), "received bogus data, size 40 "),
        (
            Junk::SourceSize(1000),
            "advertised a 1000-byte source, larger than our 64-byte buffer",
        ),
        (Junk::SourceSize(0), "advertised an empty source buffer"),
        (Junk::WrongRkey, "RDMA READ of the client's source failed"),
        (
            Junk::SinkSize(10),
            "advertised a 10-byte sink, too small for 64 bytes of ping data",
        ),
    ];
    for (junk, message) in cases {
        misbehave(port, junk).await;
        srv.wait_stderr(message, Duration::from_secs(20));
        assert!(
            srv.running(),
            "{junk:?} stopped the server: {}",
            srv.stderr()
        );
    }
    // A proper client is served meanwhile and afterwards.
    let ok = spawn(THEIRS, &["-c", "-V", "-v", "-a", &ip, "-p", &p, "-C", "5"]);
    let ok = tokio::task::spawn_blocking(move || ok.finish_ok(Duration::from_secs(60)))
        .await
        .expect("client thread");
    assert_eq!(ok.lines_with("ping data: "), expected_pings(64, 5));
    assert!(srv.running(), "the server exited: {}", srv.stderr());
    // Every failure was reported as an error of its connection, never a panic.
    assert!(!srv.stderr().contains("panicked"), "{}", srv.stderr());
}
