//! A first end-to-end check of the connection manager on the device: handshake with private
//! data both ways, a message each way, disconnect seen by both sides, a refused connect.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::timeout;
use tokio_rdma_cm::verbs::Access;
use tokio_rdma_cm::{connect, AcceptOptions, ConnectOptions, ConnectionEvent, Error, Listener};

const T: Duration = Duration::from_secs(20);

fn addr(port: u16) -> SocketAddr {
    let ip = std::env::var("TOKIO_RDMA_IP").unwrap_or_else(|_| "192.0.2.1".into());
    SocketAddr::new(ip.parse().unwrap(), port)
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn smoke_handshake_message_and_disconnect() {
    handshake_message_and_disconnect(addr(7501)).await;
}

/// The VM gives dummy0 2001:db8::1 as well (xtask/vm/init.sh).
#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn smoke_ipv6_handshake_message_and_disconnect() {
    let ip = std::env::var("TOKIO_RDMA_IP6").unwrap_or_else(|_| "2001:db8::1".into());
    handshake_message_and_disconnect(SocketAddr::new(ip.parse().unwrap(), 7503)).await;
}

async fn handshake_message_and_disconnect(at: SocketAddr) {
    let listener = Listener::bind(at).await.expect("bind");
    let server = tokio::spawn(async move {
        let req = timeout(T, listener.accept())
            .await
            .expect("accept timed out")
            .expect("accept");
        assert!(
            req.private_data().starts_with(b"hello"),
            "{:?}",
            req.private_data()
        );
        let opts = AcceptOptions {
            private_data: b"welcome".to_vec(),
            ..Default::default()
        };
        let mut conn = timeout(T, req.accept(opts))
            .await
            .expect("accept wait")
            .expect("accepted");
        let buf = conn
            .pd()
            .register(vec![0u8; 64], Access::LOCAL_WRITE)
            .unwrap();
        let (r, buf) = timeout(T, conn.recv(buf)).await.expect("recv timed out");
        let n = r.expect("recv").byte_len as usize;
        assert_eq!(&buf.get_ref()[..n], b"ping");
        let pong = conn
            .pd()
            .register(b"pong".to_vec(), Access::LOCAL_WRITE)
            .unwrap();
        timeout(T, conn.send(pong))
            .await
            .expect("send timed out")
            .0
            .expect("send");
        let ev = timeout(T, conn.next_event())
            .await
            .expect("no disconnect event");
        assert_eq!(ev, Some(ConnectionEvent::Disconnected));
        assert!(!conn.is_connected());
    });
    let opts = ConnectOptions {
        private_data: b"hello".to_vec(),
        ..Default::default()
    };
    let mut conn = timeout(T, connect(at, opts))
        .await
        .expect("connect timed out")
        .expect("connect");
    assert!(
        conn.private_data().starts_with(b"welcome"),
        "{:?}",
        conn.private_data()
    );
    let buf = conn
        .pd()
        .register(vec![0u8; 64], Access::LOCAL_WRITE)
        .unwrap();
    let recv = conn.recv(buf);
    let ping = conn
        .pd()
        .register(b"ping".to_vec(), Access::LOCAL_WRITE)
        .unwrap();
    timeout(T, conn.send(ping))
        .await
        .expect("send timed out")
        .0
        .expect("send");
    let (r, buf) = timeout(T, recv).await.expect("recv timed out");
    let n = r.expect("recv").byte_len as usize;
    assert_eq!(&buf.get_ref()[..n], b"pong");
    timeout(T, conn.disconnect())
        .await
        .expect("disconnect timed out")
        .expect("disconnect");
    timeout(T, server)
        .await
        .expect("server timed out")
        .expect("server");
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn smoke_connect_to_a_closed_port_is_refused() {
    let r = timeout(T, connect(addr(7502), ConnectOptions::default()))
        .await
        .expect("hang");
    match r {
        Err(Error::Refused { reason, .. }) => println!("refused, reason {reason}"),
        other => panic!("expected Refused, got {other:?}"),
    }
}
