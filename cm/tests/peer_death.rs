//! A peer process killed with SIGKILL in the middle of traffic: the survivor sees
//! Disconnected, its posted receives and its send loop fail with an error instead of hanging,
//! and the next connection on the same port works. Both directions: the client killed (the
//! server survives) and the server killed (the client survives). Needs an RDMA device
//! (`cargo xtask test` runs these in the soft-RoCE VM). Ports 7300-7399.
//!
//! The peer is this test binary run again (`--exact peer_process --ignored`) with
//! `TOKIO_RDMA_CM_PEER=<client|server>:<addr>` naming its role; without it, `peer_process`
//! does nothing.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{addr, bounded, exchange, listen, ok, pair, wait_event};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_rdma_cm::verbs::{Error as VerbsError, QueuePair, RecvStream};
use tokio_rdma_cm::{
    connect, AcceptOptions, ConnectOptions, Connection, ConnectionEvent, Listener,
};

const ROLE_VAR: &str = "TOKIO_RDMA_CM_PEER";
const MSG: usize = 32;

/// Counters of one side's traffic.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    received: AtomicU64,
}

/// Sends `MSG`-byte messages until a send fails; returns that error.
async fn send_loop(qp: QueuePair, counts: Arc<Counts>) -> VerbsError {
    let mut msg = [0u8; MSG];
    loop {
        msg[..8].copy_from_slice(&counts.sent.load(Ordering::Relaxed).to_le_bytes());
        let (res, ()) = qp.send_inline(&msg).await;
        if let Err(e) = res {
            return e;
        }
        counts.sent.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Counts received messages until the stream fails (`Ok(error)`) or ends (`Err`).
async fn recv_loop(mut stream: RecvStream, counts: Arc<Counts>) -> Result<VerbsError, String> {
    loop {
        match stream.next().await {
            Some(Ok(m)) => {
                assert_eq!(m.len(), MSG);
                counts.received.fetch_add(1, Ordering::Relaxed);
            }
            Some(Err(e)) => return Ok(e),
            None => return Err("the receive stream ended without an error".into()),
        }
    }
}

/// Traffic both ways on `conn`: a receive stream and a send loop, each in its own task.
fn traffic(
    conn: &Connection,
    counts: &Arc<Counts>,
) -> (
    tokio::task::JoinHandle<VerbsError>,
    tokio::task::JoinHandle<Result<VerbsError, String>>,
) {
    let stream = conn.recv_stream(16, MSG).expect("recv_stream");
    let recv = tokio::spawn(recv_loop(stream, counts.clone()));
    let send = tokio::spawn(send_loop(conn.qp().clone(), counts.clone()));
    (send, recv)
}

/// The peer role, when this binary runs as a peer process. Prints `PEER LISTENING` once a
/// server listens and `PEER READY` once traffic flows both ways, then keeps the traffic going
/// until it is killed (or 60 s pass).
#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn peer_process() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    let (kind, at) = role.split_once(':').expect("role:addr");
    let at: SocketAddr = at.parse().expect("peer address");
    let conn = match kind {
        "client" => ok("peer connect", connect(at, ConnectOptions::default()).await),
        "server" => {
            let listener = ok("peer bind", Listener::bind(at).await);
            println!("PEER LISTENING");
            let req = ok("peer accept", listener.accept().await);
            ok("peer accept", req.accept(AcceptOptions::default()).await)
        }
        other => panic!("unknown peer role {other}"),
    };
    let counts = Arc::new(Counts::default());
    let (send, recv) = traffic(&conn, &counts);
    bounded("peer: traffic both ways", 20, async {
        while counts.sent.load(Ordering::Relaxed) < 10
            || counts.received.load(Ordering::Relaxed) < 10
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    println!("PEER READY");
    // Killed from here on; the bound only ends an orphan.
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        let _ = tokio::join!(send, recv);
    })
    .await;
    drop(conn);
}

/// The peer process; killed (SIGKILL) and reaped when dropped.
struct Peer {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Peer {
    fn spawn(role: &str, at: SocketAddr) -> Peer {
        let exe = std::env::current_exe().expect("current_exe");
        let mut child = Command::new(exe)
            .args(["--exact", "peer_process", "--ignored", "--nocapture"])
            .env(ROLE_VAR, format!("{role}:{at}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the peer process");
        let out = child.stdout.take().expect("peer stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                eprintln!("peer: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Peer { child, lines }
    }

    /// Waits for the line `want` from the peer.
    async fn expect_line(&mut self, want: &str) {
        bounded(&format!("peer line {want:?}"), 20, async {
            loop {
                match self.lines.recv().await {
                    Some(l) if l.trim() == want => return,
                    Some(_) => {}
                    None => panic!("the peer exited before printing {want:?}"),
                }
            }
        })
        .await
    }

    /// SIGKILL, and reap.
    fn kill(&mut self) {
        self.child.kill().expect("kill the peer");
        let status = self.child.wait().expect("reap the peer");
        eprintln!("peer killed: {status}");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The survivor's side once the peer is connected: traffic until both directions flowed,
/// kill the peer, then Disconnected and every pending operation failing.
async fn survive(mut conn: Connection, peer: &mut Peer, who: &str) {
    let counts = Arc::new(Counts::default());
    let (send, recv) = traffic(&conn, &counts);
    peer.expect_line("PEER READY").await;
    bounded(&format!("{who}: traffic both ways"), 20, async {
        while counts.sent.load(Ordering::Relaxed) < 10
            || counts.received.load(Ordering::Relaxed) < 10
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    peer.kill();
    let seen = wait_event(&mut conn, ConnectionEvent::Disconnected, 20, who).await;
    eprintln!("{who}: events before Disconnected: {seen:?}");
    assert!(
        !conn.is_connected(),
        "{who}: still connected after the peer died"
    );
    let recv_end = bounded(
        &format!("{who}: posted receives after the peer died"),
        20,
        recv,
    )
    .await
    .expect("receive task");
    match recv_end {
        Ok(e) => eprintln!("{who}: receive stream failed with: {e}"),
        Err(why) => panic!("{who}: {why}"),
    }
    let send_err = bounded(&format!("{who}: send loop after the peer died"), 30, send)
        .await
        .expect("send task");
    eprintln!(
        "{who}: send loop failed after {} sends with: {send_err}",
        counts.sent.load(Ordering::Relaxed)
    );
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an RDMA device"]
async fn killed_client_server_survives_and_accepts_the_next() {
    let listener = listen(7301).await;
    let mut peer = Peer::spawn("client", listener.local_addr());
    let req = ok(
        "accept",
        bounded("accept the peer", 20, listener.accept()).await,
    );
    let conn = ok(
        "accept the peer",
        bounded("accept", 20, req.accept(AcceptOptions::default())).await,
    );
    survive(conn, &mut peer, "server").await;
    // The same listener takes the next client: another process, then one in this process.
    let mut next = Peer::spawn("client", listener.local_addr());
    let req = ok(
        "accept",
        bounded("accept the next peer", 20, listener.accept()).await,
    );
    let conn = ok(
        "accept the next peer",
        bounded("accept", 20, req.accept(AcceptOptions::default())).await,
    );
    let counts = Arc::new(Counts::default());
    let (_send, _recv) = traffic(&conn, &counts);
    next.expect_line("PEER READY").await;
    drop(next);
    let (c, s) = pair(&listener).await;
    exchange(&c, &s, b"next client").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an RDMA device"]
async fn killed_server_client_survives_and_reconnects() {
    let at = addr(7302);
    let mut peer = Peer::spawn("server", at);
    peer.expect_line("PEER LISTENING").await;
    let conn = ok(
        "connect to the peer",
        bounded("connect", 20, connect(at, ConnectOptions::default())).await,
    );
    survive(conn, &mut peer, "client").await;
    // The dead server's port is free again: a server in this process takes it.
    let listener = listen(7302).await;
    let (c, s) = pair(&listener).await;
    exchange(&c, &s, b"reconnected").await;
    exchange(&s, &c, b"reconnected, back").await;
}
