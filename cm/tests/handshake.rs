//! Connection establishment: private data both ways, rejection with private data, a request
//! dropped unanswered, the requested parameters as the passive side sees them, traffic over
//! the connection (send/recv, RDMA write/read) and IPv6. Needs an RDMA device (`cargo xtask
//! test` runs these in the soft-RoCE VM). Ports 7100-7199. Also the RNR NAK timer.

mod common;

use std::net::SocketAddr;

use common::{addr, bounded, exchange, listen, ok, pair, pair_with};
use tokio_rdma_cm::verbs::{Access, RemoteBuffer, WcOpcode};
use tokio_rdma_cm::{connect, AcceptOptions, ConnectOptions, Error, Listener, QpOptions};

/// Bytes `0, 7, 14, ...` offset by `seed`: recognizable private data.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// `got` is what was sent, possibly followed by the zero padding of the CM message's
/// private-data field (the wire carries the whole field, not a length).
fn assert_private_data(what: &str, got: &[u8], sent: &[u8]) {
    assert!(
        got.len() >= sent.len() && &got[..sent.len()] == sent,
        "{what}: got {got:?}, sent {sent:?}"
    );
    assert!(
        got[sent.len()..].iter().all(|&b| b == 0),
        "{what}: non-zero bytes after what was sent: {got:?}"
    );
    eprintln!(
        "{what}: {} bytes sent, {} bytes seen",
        sent.len(),
        got.len()
    );
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn private_data_both_ways() {
    let listener = listen(7101).await;
    assert_eq!(listener.local_addr(), addr(7101));
    // 56 bytes: the most a REQ of the TCP port space carries after the CM's own header.
    let req_data = pattern(56, 1);
    let rep_data = pattern(100, 2);
    let to = listener.local_addr();
    let copts = ConnectOptions {
        private_data: req_data.clone(),
        ..ConnectOptions::default()
    };
    let server = async {
        let req = ok("accept", listener.accept().await);
        assert_private_data(
            "REQ private data at the listener",
            req.private_data(),
            &req_data,
        );
        assert_eq!(req.local_addr(), to);
        assert_eq!(req.peer_addr().ip(), to.ip());
        let peer = req.peer_addr();
        let conn = ok(
            "IncomingRequest::accept",
            req.accept(AcceptOptions {
                private_data: rep_data.clone(),
                ..AcceptOptions::default()
            })
            .await,
        );
        (conn, peer)
    };
    let (client, (server, req_peer)) = bounded("connect + accept", 20, async {
        tokio::join!(connect(to, copts), server)
    })
    .await;
    let client = ok("connect", client);
    assert_private_data(
        "REP private data at the client",
        client.private_data(),
        &rep_data,
    );
    assert_private_data(
        "REQ private data on the server's connection",
        server.private_data(),
        &req_data,
    );
    assert!(client.is_connected() && server.is_connected());
    // Each side names the other.
    assert_eq!(client.peer_addr(), Some(to));
    assert_eq!(server.local_addr(), Some(to));
    assert_eq!(server.peer_addr(), client.local_addr());
    assert_eq!(Some(req_peer), client.local_addr());
    exchange(&client, &server, b"after private data").await;
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn reject_carries_private_data_and_reason() {
    let listener = listen(7102).await;
    let to = listener.local_addr();
    let rej_data = pattern(64, 3);
    let server = async {
        let req = ok("accept", listener.accept().await);
        assert_private_data("REQ private data", req.private_data(), b"let me in");
        ok("reject", req.reject(&rej_data));
    };
    let copts = ConnectOptions {
        private_data: b"let me in".to_vec(),
        ..ConnectOptions::default()
    };
    let (res, ()) = bounded("connect to a rejecting server", 20, async {
        tokio::join!(connect(to, copts), server)
    })
    .await;
    match res {
        Err(Error::Rejected {
            addr,
            reason,
            private_data,
        }) => {
            assert_eq!(addr, to);
            // IB CM REJ reason 28: consumer defined (the application said no).
            assert_eq!(reason, 28, "reject reason");
            assert_private_data("REJ private data at the client", &private_data, &rej_data);
        }
        Err(e) => panic!("expected Error::Rejected, got {e} ({e:?})"),
        Ok(_) => panic!("connect succeeded against a rejecting server"),
    }
    // The listener is still usable afterwards.
    let (c, s) = pair(&listener).await;
    exchange(&c, &s, b"second try").await;
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn request_dropped_unanswered_is_rejected() {
    let listener = listen(7103).await;
    let to = listener.local_addr();
    let server = async {
        let req = ok("accept", listener.accept().await);
        drop(req);
    };
    let (res, ()) = bounded("connect to a request that is dropped", 20, async {
        tokio::join!(connect(to, ConnectOptions::default()), server)
    })
    .await;
    match res {
        Err(Error::Rejected { addr, reason, .. }) => {
            assert_eq!(addr, to);
            eprintln!("dropped request: rejected with reason {reason}");
        }
        Err(e) => panic!("expected Error::Rejected, got {e} ({e:?})"),
        Ok(_) => panic!("connect succeeded although the request was dropped"),
    }
    let (c, s) = pair(&listener).await;
    exchange(&s, &c, b"listener still accepts").await;
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn requested_params_are_visible_on_the_request() {
    let listener = listen(7104).await;
    let to = listener.local_addr();
    let copts = ConnectOptions {
        initiator_depth: 3,
        responder_resources: 5,
        retry_count: 6,
        rnr_retry_count: 4,
        ..ConnectOptions::default()
    };
    let server = async {
        let req = ok("accept", listener.accept().await);
        let params = req.params();
        let conn = ok(
            "IncomingRequest::accept",
            req.accept(AcceptOptions::default()).await,
        );
        (params, conn)
    };
    let (client, (params, server)) = bounded("connect + accept", 20, async {
        tokio::join!(connect(to, copts), server)
    })
    .await;
    let client = ok("connect", client);
    eprintln!("request params: {params:?}");
    // The passive side sees the depths from its own point of view (as rdma_cm reports them):
    // the reads the client may issue are the reads this side must answer, and vice versa.
    assert_eq!(params.responder_resources, 3, "client's initiator depth");
    assert_eq!(params.initiator_depth, 5, "client's responder resources");
    assert_eq!(params.retry_count, 6);
    assert_eq!(params.rnr_retry_count, 4);
    assert!(!params.srq);
    assert_eq!(params.qp_num, client.qp_num(), "the client's QP number");
    assert_eq!(server.params().qp_num, client.qp_num());
    assert_eq!(client.params().qp_num, server.qp_num());
    exchange(&client, &server, b"params").await;
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn send_recv_write_read_over_a_connection() {
    let listener = listen(7105).await;
    let (client, server) = pair(&listener).await;

    // Send/recv both ways, inline and from a registered buffer.
    exchange(&client, &server, b"hello server").await;
    exchange(&server, &client, b"hello client").await;
    let big = pattern(4096, 9);
    let rx = server
        .pd()
        .register(vec![0u8; 8192], Access::LOCAL_WRITE)
        .unwrap();
    let recv = server.recv(rx);
    let tx = client
        .pd()
        .register(big.clone(), Access::LOCAL_WRITE)
        .unwrap();
    let (res, _tx) = bounded("send 4 KiB", 10, client.send(tx)).await;
    assert_eq!(res.expect("send").opcode, WcOpcode::Send);
    let (res, rx) = bounded("recv 4 KiB", 10, recv).await;
    assert_eq!(res.expect("recv").byte_len, 4096);
    assert_eq!(&rx[..4096], &big[..]);

    // The server exposes a buffer; its address travels in a message.
    let exposed = server
        .pd()
        .register_remote(vec![0u8; 8192], Access::ALL)
        .unwrap();
    let remote = exposed.remote(..).unwrap();
    let rx = client
        .pd()
        .register(vec![0u8; 64], Access::LOCAL_WRITE)
        .unwrap();
    let recv = client.recv(rx);
    let (res, ()) = bounded("send rkey", 10, server.send_inline(&remote.to_bytes())).await;
    res.expect("send rkey");
    let (res, rx) = bounded("recv rkey", 10, recv).await;
    res.expect("recv rkey");
    let remote = RemoteBuffer::from_bytes(&rx[..16]).unwrap();

    // RDMA WRITE, then READ it back, with the connection's default depths.
    let src = client
        .pd()
        .register(pattern(8192, 4), Access::LOCAL_WRITE)
        .unwrap();
    let (res, src) = bounded("rdma write", 10, client.write(src, remote)).await;
    assert_eq!(res.expect("write").opcode, WcOpcode::RdmaWrite);
    assert_eq!(exposed.to_vec(), &src[..]);
    let dst = client
        .pd()
        .register(vec![0u8; 8192], Access::LOCAL_WRITE)
        .unwrap();
    let (res, dst) = bounded("rdma read", 10, client.read(dst, remote)).await;
    assert_eq!(res.expect("read").opcode, WcOpcode::RdmaRead);
    assert_eq!(&dst[..], &pattern(8192, 4)[..]);
    // And the other direction: the server reads a buffer the client exposes.
    let client_mem = client
        .pd()
        .register_remote(pattern(512, 5), Access::ALL)
        .unwrap();
    let dst = server
        .pd()
        .register(vec![0u8; 512], Access::LOCAL_WRITE)
        .unwrap();
    let (res, dst) = bounded(
        "rdma read by the server",
        10,
        server.read(dst, client_mem.remote(..).unwrap()),
    )
    .await;
    res.expect("server read");
    assert_eq!(&dst[..], &pattern(512, 5)[..]);
    // The connection's parts are the ones it reports.
    assert_eq!(client.qp().qp_num(), client.qp_num());
    assert_eq!(client.context().name(), server.context().name());
}

/// Handshake, private data and a message each way on `at`.
async fn over_ipv6(at: SocketAddr) {
    eprintln!("IPv6 address under test: {at}");
    let listener = ok(
        "bind IPv6",
        bounded("bind IPv6", 10, Listener::bind(at)).await,
    );
    assert!(listener.local_addr().is_ipv6());
    assert_eq!(listener.local_addr().port(), at.port());
    let copts = ConnectOptions {
        private_data: b"v6".to_vec(),
        ..ConnectOptions::default()
    };
    let (client, server) = pair_with(&listener, copts, AcceptOptions::default()).await;
    let client_peer = client.peer_addr().expect("client peer_addr");
    let server_peer = server.peer_addr().expect("server peer_addr");
    eprintln!("client {client_peer} <-> server {server_peer}");
    assert!(client_peer.is_ipv6(), "{client_peer}");
    assert!(server_peer.is_ipv6(), "{server_peer}");
    assert_eq!(client_peer.ip(), at.ip());
    assert_eq!(client_peer.port(), at.port());
    // The same address and port; the passive side's view of a link-local peer carries no
    // scope id (the kernel's passive id does not fill one in), so only those are compared.
    let client_local = client.local_addr().expect("client local_addr");
    assert_eq!(server_peer.ip(), client_local.ip());
    assert_eq!(server_peer.port(), client_local.port());
    assert_eq!(&server.private_data()[..2], b"v6");
    exchange(&client, &server, b"over IPv6").await;
    exchange(&server, &client, b"back over IPv6").await;
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn ipv6_connect_accept() {
    // The VM gives dummy0 2001:db8::1/64 (xtask's VM init).
    let Some(mut v6) = common::dummy0_ipv6(false) else {
        panic!("dummy0 has no global IPv6 address (see /proc/net/if_inet6): cannot test IPv6");
    };
    v6.set_port(7106);
    over_ipv6(SocketAddr::V6(v6)).await;
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn ipv6_link_local_with_scope_id() {
    // fe80::/64 from dummy0's MAC: rxe's default GID; the scope id names dummy0.
    let Some(mut v6) = common::dummy0_ipv6(true) else {
        panic!("dummy0 has no link-local IPv6 address (see /proc/net/if_inet6)");
    };
    v6.set_port(7107);
    over_ipv6(SocketAddr::V6(v6)).await;
}

/// The RNR NAK timer both sides ask of their senders: 0.64 ms by default (the kernel CM's
/// own value, 0, means 655 ms), or what `QpOptions::min_rnr_timer` says.
#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn rnr_timer_is_the_options_not_the_kernel_cms_655_ms() {
    let listener = listen(7108).await;
    let (client, server) = pair(&listener).await;
    assert_eq!(client.qp().query_min_rnr_timer().expect("query"), 12);
    assert_eq!(server.qp().query_min_rnr_timer().expect("query"), 12);
    drop((client, server));
    let qp = |t| QpOptions {
        min_rnr_timer: t,
        ..QpOptions::default()
    };
    let (client, server) = pair_with(
        &listener,
        ConnectOptions {
            qp: qp(3),
            ..ConnectOptions::default()
        },
        AcceptOptions {
            qp: qp(5),
            ..AcceptOptions::default()
        },
    )
    .await;
    assert_eq!(client.qp().query_min_rnr_timer().expect("query"), 3);
    assert_eq!(server.qp().query_min_rnr_timer().expect("query"), 5);
}

/// A SEND that finds no receive posted is retried after the RNR timer: with the default it
/// completes soon after the receive is posted 50 ms late (with the kernel CM's 0 it took
/// 655 ms more; the bound leaves room for a slow emulated machine).
#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn a_send_that_met_no_receive_is_retried_within_milliseconds() {
    let listener = listen(7109).await;
    let (client, server) = pair(&listener).await;
    let pd = client.pd();
    let msg = pd
        .register(b"late".to_vec(), Access::LOCAL_WRITE)
        .expect("register");
    let start = std::time::Instant::now();
    let send = client.send(msg);
    let recv = async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let rx = server
            .pd()
            .register(vec![0u8; 16], Access::LOCAL_WRITE)
            .expect("register");
        server.recv(rx).await
    };
    let ((s, _), (r, rx)) = bounded("send + late receive", 10, async {
        tokio::join!(send, recv)
    })
    .await;
    s.expect("send");
    let n = r.expect("receive").byte_len as usize;
    assert_eq!(&rx[..n], b"late");
    let took = start.elapsed();
    eprintln!("send completed after {took:?}");
    assert!(
        took < std::time::Duration::from_millis(450),
        "the retried send took {took:?}: the 655 ms RNR timer?"
    );
}
