//! The server: listens, and for each connection READs the client's source, WRITEs it back to
//! its sink and says "go ahead" after each, until the client disconnects. `-P` serves every
//! connection in its own task, one after another and at the same time; a connection that
//! fails is reported and closed, the others go on.

use tokio_rdma_cm::{AcceptOptions, Connection, IncomingRequest, Listener};
use tokio_rdma_verbs::Access;

use super::args::{resolve, Config, Role};
use super::conn::{
    next_message, print_line, send_message, until_closed, Side, RECV_DEPTH, RECV_SIZE,
};
use super::error::{Error, Result};
use super::session::{ServerSession, ServerStep};
use super::wire::RdmaInfo;

/// Runs the server `cfg` describes: one connection, or (`-P`) every connection until
/// killed. Returns when the single connection ended or the listener failed.
pub async fn run(cfg: &Config) -> Result<()> {
    let addr = resolve(&cfg.addr, cfg.port)?;
    let listener = Listener::bind(addr).await.map_err(Error::cm("listening"))?;
    if cfg.debug {
        println!("listening on {}", listener.local_addr());
    }
    let persistent = matches!(cfg.role, Role::Server { persistent: true });
    if !persistent {
        let req = listener
            .accept()
            .await
            .map_err(Error::cm("waiting for a connection request"))?;
        // One connection only: later requests are refused, not left hanging.
        drop(listener);
        return accept_and_serve(req, cfg).await.map(drop);
    }
    loop {
        let req = listener
            .accept()
            .await
            .map_err(Error::cm("waiting for a connection request"))?;
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let peer = req.peer_addr();
            if let Err(e) = accept_and_serve(req, &cfg).await {
                eprintln!("rping: client {peer}: {e}");
            }
        });
    }
}

/// Accepts one connection request and serves it; returns the pings served.
pub async fn accept_and_serve(req: IncomingRequest, cfg: &Config) -> Result<u64> {
    if cfg.debug {
        println!(
            "accepting client connection request from {}",
            req.peer_addr()
        );
    }
    // Our receives are posted once the connection is established; a client that SENDs before
    // that is told "receiver not ready" and retries (rping's clients ask for endless RNR
    // retries, and so does ours).
    let opts = AcceptOptions {
        rnr_retry_count: 7,
        ..AcceptOptions::default()
    };
    let mut conn = req.accept(opts).await.map_err(Error::cm("accepting"))?;
    let served = serve(&mut conn, cfg).await;
    // Ours to end either way; after the client's disconnect this merely tidies up.
    let _ = conn.disconnect().await;
    served
}

/// Serves pings on an established connection until the client disconnects between pings
/// (`Ok`, the pings served) or something goes wrong (the first error).
pub async fn serve(conn: &mut Connection, cfg: &Config) -> Result<u64> {
    let side = Side {
        name: "server",
        quiet: cfg.quiet,
        debug: cfg.debug,
    };
    let qp = conn.qp().clone();
    let mut rx = qp
        .recv_stream(RECV_DEPTH, RECV_SIZE)
        .map_err(Error::verbs("posting receives"))?;
    // The READ target and the WRITE source; peers never see its rkey.
    let mut region = conn
        .pd()
        .register(vec![0u8; cfg.size], Access::LOCAL_WRITE)
        .map_err(Error::verbs("registering the buffer"))?;
    let mut session = ServerSession::new(cfg.size);
    loop {
        let Some(msg) = next_message(conn, &mut rx, side).await? else {
            return if session.between_pings() {
                Ok(session.pings())
            } else {
                Err(Error::Disconnected("in the middle of a ping"))
            };
        };
        let step = session.on_message(&msg);
        drop(msg);
        match step? {
            ServerStep::Read { from, len } => {
                if cfg.debug {
                    println!(
                        "Received rkey {:x} addr {:x} len {} from peer",
                        from.rkey, from.addr, from.len
                    );
                }
                let target = region
                    .slice(..len)
                    .map_err(Error::verbs("slicing the buffer"))?;
                let Some((res, target)) = until_closed(conn, side, qp.read(target, from)).await
                else {
                    return Err(Error::Disconnected("during our RDMA READ"));
                };
                region = target.into_region();
                res.map_err(Error::verbs("RDMA READ of the client's source"))?;
                let echo = session.on_read_done(&region);
                if cfg.debug {
                    println!("server received read complete");
                }
                if cfg.verbose {
                    print_line(b"server ping data: ", &region[..echo]);
                }
                send_message(
                    conn,
                    side,
                    RdmaInfo::GO_AHEAD.to_bytes(),
                    "SEND of go-ahead",
                )
                .await?;
                if cfg.debug {
                    println!("server posted go ahead");
                }
            }
            ServerStep::Write { to, len } => {
                if cfg.debug {
                    println!(
                        "rdma write from lkey {:x} laddr {:x} len {len}",
                        region.lkey(),
                        region.addr()
                    );
                }
                let source = region
                    .slice(..len)
                    .map_err(Error::verbs("slicing the buffer"))?;
                let Some((res, source)) = until_closed(conn, side, qp.write(source, to)).await
                else {
                    return Err(Error::Disconnected("during our RDMA WRITE"));
                };
                region = source.into_region();
                res.map_err(Error::verbs("RDMA WRITE to the client's sink"))?;
                session.on_write_done();
                if cfg.debug {
                    println!("server rdma write complete");
                }
                let sent = send_message(
                    conn,
                    side,
                    RdmaInfo::GO_AHEAD.to_bytes(),
                    "SEND of go-ahead",
                )
                .await;
                match sent {
                    // The ping's last message: a client that got it may disconnect before
                    // its acknowledgement reaches us (the driver then flushes the SEND).
                    // That is the normal end, as for rdma-core's rping server, which does
                    // not wait for this completion.
                    Err(Error::Disconnected(_)) if session.between_pings() => {
                        return Ok(session.pings());
                    }
                    other => other?,
                }
                if cfg.debug {
                    println!("server posted go ahead");
                }
            }
        }
    }
}
