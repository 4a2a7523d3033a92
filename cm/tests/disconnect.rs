//! Orderly ends of a connection: `disconnect` from either side (both see Disconnected, pending
//! receives flush with an error, later sends fail) and a connection dropped without
//! `disconnect` (its peer is disconnected too). Needs an RDMA device (`cargo xtask test` runs
//! these in the soft-RoCE VM). Ports 7600-7699 (smoke.rs has 7501-7503).

mod common;

use common::{assert_flushed, bounded, exchange, listen, ok, pair, wait_event};
use futures::StreamExt;
use tokio_rdma_cm::verbs::Access;
use tokio_rdma_cm::{Connection, ConnectionEvent};

/// A one-shot receive and a receive stream posted on `conn`, to be flushed.
fn pending_receives(
    conn: &Connection,
) -> (
    tokio_rdma_cm::verbs::OpFuture<tokio_rdma_cm::verbs::MemoryRegion<Vec<u8>>>,
    tokio_rdma_cm::verbs::RecvStream,
) {
    let buf = conn
        .pd()
        .register(vec![0u8; 64], Access::LOCAL_WRITE)
        .unwrap();
    let one = conn.recv(buf);
    let stream = conn.recv_stream(8, 64).expect("recv_stream");
    (one, stream)
}

/// The stream yields a flush error (at least one) and then ends.
async fn assert_stream_flushed(who: &str, mut stream: tokio_rdma_cm::verbs::RecvStream) {
    let first = bounded(
        &format!("{who}: receive stream after disconnect"),
        10,
        stream.next(),
    )
    .await
    .unwrap_or_else(|| panic!("{who}: receive stream ended without an error"));
    match first {
        Ok(m) => panic!("{who}: received {} bytes after disconnect", m.len()),
        Err(e) => assert_flushed(&format!("{who}: receive stream"), Err::<(), _>(e)),
    }
    bounded(&format!("{who}: receive stream end"), 10, async {
        while let Some(item) = stream.next().await {
            assert!(item.is_err(), "{who}: a message after the flush");
        }
    })
    .await;
}

/// Disconnects `active` and checks what both sides see.
async fn disconnect_and_check(mut active: Connection, mut passive: Connection, who: [&str; 2]) {
    exchange(&active, &passive, b"before").await;
    exchange(&passive, &active, b"before, back").await;
    let (a_one, a_stream) = pending_receives(&active);
    let (p_one, p_stream) = pending_receives(&passive);

    ok(
        &format!("{}: disconnect", who[0]),
        bounded("disconnect", 10, active.disconnect()).await,
    );
    assert!(
        !active.is_connected(),
        "{} still connected after disconnect",
        who[0]
    );

    // Pending work on both sides fails promptly.
    let (res, _) = bounded(&format!("{}: one-shot receive", who[0]), 10, a_one).await;
    assert_flushed(&format!("{}: one-shot receive", who[0]), res);
    assert_stream_flushed(who[0], a_stream).await;
    wait_event(&mut active, ConnectionEvent::Disconnected, 10, who[0]).await;
    let seen = wait_event(&mut passive, ConnectionEvent::Disconnected, 10, who[1]).await;
    eprintln!("{}: events before Disconnected: {seen:?}", who[1]);
    assert!(
        !passive.is_connected(),
        "{} still connected after the peer disconnected",
        who[1]
    );
    let (res, _) = bounded(&format!("{}: one-shot receive", who[1]), 10, p_one).await;
    assert_flushed(&format!("{}: one-shot receive", who[1]), res);
    assert_stream_flushed(who[1], p_stream).await;

    // Nothing can be sent any more, from either side, and that fails instead of hanging.
    let (res, ()) = bounded("send after disconnect", 10, active.send_inline(b"late")).await;
    assert!(res.is_err(), "{}: send after disconnect succeeded", who[0]);
    let (res, ()) = bounded(
        "send after peer disconnect",
        10,
        passive.send_inline(b"late"),
    )
    .await;
    assert!(
        res.is_err(),
        "{}: send after the peer's disconnect succeeded",
        who[1]
    );
    // A second disconnect does not hang (its result is not specified).
    let again = bounded("second disconnect", 10, active.disconnect()).await;
    eprintln!("{}: second disconnect: {again:?}", who[0]);
    let passive_too = bounded("disconnect of the passive side", 10, passive.disconnect()).await;
    eprintln!("{}: disconnect after the peer's: {passive_too:?}", who[1]);
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn client_disconnect_both_sides_see_it_and_receives_flush() {
    let listener = listen(7601).await;
    let (client, server) = pair(&listener).await;
    disconnect_and_check(client, server, ["client", "server"]).await;
    let (c, s) = pair(&listener).await;
    exchange(&c, &s, b"next connection").await;
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn server_disconnect_both_sides_see_it_and_receives_flush() {
    let listener = listen(7602).await;
    let (client, server) = pair(&listener).await;
    disconnect_and_check(server, client, ["server", "client"]).await;
    let (c, s) = pair(&listener).await;
    exchange(&s, &c, b"next connection").await;
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn dropping_a_connection_disconnects_its_peer() {
    let listener = listen(7603).await;
    for dropped_side in ["client", "server"] {
        let (client, server) = pair(&listener).await;
        exchange(&client, &server, b"before the drop").await;
        let (dropped, mut survivor, who) = if dropped_side == "client" {
            (client, server, "server")
        } else {
            (server, client, "client")
        };
        let (one, stream) = pending_receives(&survivor);
        drop(dropped);
        let seen = wait_event(&mut survivor, ConnectionEvent::Disconnected, 10, who).await;
        eprintln!("{who}: events before Disconnected: {seen:?}");
        assert!(
            !survivor.is_connected(),
            "{who}: connected after the {dropped_side} dropped"
        );
        let (res, _) = bounded(&format!("{who}: one-shot receive"), 10, one).await;
        assert_flushed(&format!("{who}: one-shot receive"), res);
        assert_stream_flushed(who, stream).await;
    }
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn disconnect_after_the_peer_disconnected_returns_at_once() {
    let listener = listen(7604).await;
    let (mut client, mut server) = pair(&listener).await;
    let answer = async {
        wait_event(&mut server, ConnectionEvent::Disconnected, 10, "server").await;
        assert!(!server.is_connected());
        // The connection is already gone: this only answers the peer (DREP) and returns;
        // nothing is left to wait for.
        let start = std::time::Instant::now();
        let r = bounded("server disconnect", 10, server.disconnect()).await;
        (r, start.elapsed())
    };
    let (c, (s, took)) = bounded("disconnect from both sides", 20, async {
        tokio::join!(client.disconnect(), answer)
    })
    .await;
    ok("client disconnect", c);
    ok("server disconnect after the client's", s);
    assert!(
        took < std::time::Duration::from_secs(1),
        "disconnect after the peer's took {took:?}"
    );
}
