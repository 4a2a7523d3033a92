//! The client: connects, then per ping advertises its source, waits for the go-ahead,
//! advertises its sink, waits for the go-ahead and (`-V`) compares the two.

use tokio_rdma_cm::{connect, ConnectOptions, Connection};
use tokio_rdma_verbs::Access;

use super::args::{resolve, Config};
use super::conn::{next_message, print_line, send_message, Side, RECV_DEPTH, RECV_SIZE};
use super::error::{Error, Result};
use super::session::{ClientSession, ClientStep};

/// Connects as `cfg` says and pings; returns the pings done.
pub async fn run(cfg: &Config) -> Result<u64> {
    let addr = resolve(&cfg.addr, cfg.port)?;
    let src_addr = match &cfg.source {
        Some(s) => Some(resolve(s, 0)?),
        None => None,
    };
    // rping's connection parameters: one READ in flight each way, retries without end on
    // RNR (the server may not have reposted its receive yet).
    let opts = ConnectOptions {
        src_addr,
        initiator_depth: 1,
        responder_resources: 1,
        retry_count: 7,
        rnr_retry_count: 7,
        ..ConnectOptions::default()
    };
    let mut conn = connect(addr, opts).await.map_err(Error::cm("connecting"))?;
    if cfg.debug {
        println!("rdma_connect successful");
    }
    let pinged = ping(&mut conn, cfg).await;
    let _ = conn.disconnect().await;
    pinged
}

/// Pings on an established connection until the count is done. Without a count the run
/// ends when the server disconnects (as rping's, successfully); with one, a disconnect
/// before the count is done is an error.
pub async fn ping(conn: &mut Connection, cfg: &Config) -> Result<u64> {
    let side = Side {
        name: "client",
        quiet: cfg.quiet,
        debug: cfg.debug,
    };
    let qp = conn.qp().clone();
    let pd = conn.pd();
    let mut rx = qp
        .recv_stream(RECV_DEPTH, RECV_SIZE)
        .map_err(Error::verbs("posting receives"))?;
    // The server READs the source and WRITEs the sink.
    let mut source = pd
        .register(
            vec![0u8; cfg.size],
            Access::LOCAL_WRITE | Access::REMOTE_READ,
        )
        .map_err(Error::verbs("registering the source"))?;
    let mut sink = pd
        .register_remote(
            vec![0u8; cfg.size],
            Access::LOCAL_WRITE | Access::REMOTE_WRITE,
        )
        .map_err(Error::verbs("registering the sink"))?;
    let zeros = vec![0u8; cfg.size];
    let mut session = ClientSession::new(cfg.size, cfg.count, cfg.validate);
    let source_ad = session.advert(source.addr(), source.rkey());
    let sink_ad = session.advert(sink.addr(), sink.rkey());
    while session.start_ping(&mut source).is_some() {
        // A server that writes nothing must not pass -V with the previous ping's echo.
        sink.write_at(0, &zeros)
            .map_err(Error::verbs("clearing the sink"))?;
        let mut advert = source_ad;
        loop {
            if cfg.debug {
                let info = super::wire::RdmaInfo::parse(&advert)?.remote();
                println!(
                    "RDMA addr {:x} rkey {:x} len {}",
                    info.addr, info.rkey, info.len
                );
            }
            send_message(conn, side, advert, "SEND of an advertisement").await?;
            let Some(msg) = next_message(conn, &mut rx, side).await? else {
                return match cfg.count {
                    None => Ok(session.pings()),
                    Some(_) => Err(Error::Disconnected("in the middle of a ping")),
                };
            };
            let step = session.on_go_ahead(&msg);
            drop(msg);
            match step? {
                ClientStep::AdvertiseSink => advert = sink_ad,
                ClientStep::Check => break,
            }
        }
        // The go-ahead came after the WRITE completed, on the same RC QP: it is all here.
        let echoed = sink.to_vec();
        session.check(&source, &echoed)?;
        if cfg.verbose {
            print_line(b"ping data: ", &echoed);
        }
    }
    Ok(session.pings())
}
