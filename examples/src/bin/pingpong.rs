//! RC ping-pong over tokio-rdma-verbs, like rdma-core's `ibv_rc_pingpong`.
//!
//! Server: `pingpong [OPTIONS]`; client: `pingpong [OPTIONS] SERVER`. The QP information is
//! exchanged over TCP (port 18515 by default), then the client sends `size` bytes, the server
//! echoes them, `iters` times. Both print the time per iteration.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rdma_verbs::{
    Access, CompletionChannel, ConnectOptions, Context, DriverConfig, QpInfo, QpType,
    QueuePairBuilder, RecvStream,
};

#[derive(Parser, Debug)]
#[command(about = "RC ping-pong over tokio-rdma (like ibv_rc_pingpong)")]
struct Args {
    /// Server to connect to (omit to run the server).
    server: Option<String>,
    /// TCP port for the QP-information exchange.
    #[arg(short = 'p', long, default_value_t = 18515)]
    port: u16,
    /// RDMA device (default: TOKIO_RDMA_DEVICE or the first device).
    #[arg(short = 'd', long)]
    ib_dev: Option<String>,
    /// Device port.
    #[arg(short = 'i', long, default_value_t = 1)]
    ib_port: u8,
    /// GID index (default: a RoCE v2 IPv4-mapped GID when there is one).
    #[arg(short = 'g', long)]
    gid_idx: Option<u32>,
    /// Message size in bytes.
    #[arg(short = 's', long, default_value_t = 4096)]
    size: usize,
    /// Number of ping-pong iterations.
    #[arg(short = 'n', long, default_value_t = 1000)]
    iters: u32,
    /// Receive buffers kept posted.
    #[arg(short = 'r', long, default_value_t = 64)]
    rx_depth: u32,
    /// Completion-driver spin iterations before parking on the channel fd (0 = event mode).
    #[arg(long, default_value_t = DriverConfig::default().spin_iterations)]
    spin: u32,
    /// Give up when the peer is silent this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.size == 0 || args.iters == 0 || args.rx_depth == 0 {
        bail!("size, iters and rx-depth must be positive");
    }
    let ctx = match &args.ib_dev {
        Some(name) => Context::open(Some(name)),
        None => Context::open_default(),
    }
    .context("opening the RDMA device")?;
    let pd = ctx.alloc_pd()?;
    let chan = CompletionChannel::with_config(
        &ctx,
        DriverConfig {
            spin_iterations: args.spin,
            ..DriverConfig::default()
        },
    )?;
    let cq = chan.create_cq(&ctx, args.rx_depth + 64)?;
    let qp = QueuePairBuilder::new(&pd, QpType::Rc, &cq)
        .max_recv_wr(args.rx_depth)
        .max_send_wr(64)
        .build()?;
    let opts = ConnectOptions {
        port: args.ib_port,
        gid_index: args.gid_idx,
        psn: std::process::id() & 0xff_ffff,
        ..ConnectOptions::default()
    };
    qp.init(&opts)?;
    // Receives may be posted in INIT: they are in place before the peer can send.
    let mut rx = qp.recv_stream(args.rx_depth, args.size)?;
    let local = qp.local_info(&opts)?;
    println!(
        "  local address:  LID {:#06x}, QPN {:#08x}, PSN {:#08x}, GID {}",
        local.lid, local.qpn, local.psn, local.gid
    );

    let mut tcp = exchange_stream(&args).await?;
    tcp.write_all(&local.to_bytes()).await?;
    let mut buf = [0u8; QpInfo::WIRE_LEN];
    tcp.read_exact(&mut buf)
        .await
        .context("reading the peer's QP information")?;
    let remote = QpInfo::from_bytes(&buf)?;
    println!(
        "  remote address: LID {:#06x}, QPN {:#08x}, PSN {:#08x}, GID {}",
        remote.lid, remote.qpn, remote.psn, remote.gid
    );
    qp.ready_to_receive(&opts, &remote)?;
    qp.ready_to_send(&opts)?;
    // Both sides are RTS before the first message: a one-byte handshake.
    tcp.write_all(&[1]).await?;
    tcp.read_exact(&mut [0u8; 1])
        .await
        .context("peer went away before the ping-pong")?;

    let mut msg = Some(pd.register(vec![0u8; args.size], Access::LOCAL_WRITE)?);
    let client = args.server.is_some();
    let limit = Duration::from_secs(args.timeout);
    let start = Instant::now();
    // The first (up to) 4 bytes carry the iteration number, checked by the receiver.
    let stamp = args.size.min(4);
    // A dead or silent peer is caught by a watchdog that checks progress once per `limit`
    // (one timer in all, not one per message: clock reads are syscalls in the VM).
    let progress = std::cell::Cell::new(0u32);
    let pingpong = async {
        for i in 0..args.iters {
            if !client {
                expect(&mut rx, args.size, i).await?;
            }
            let mut m = msg.take().expect("message buffer is back");
            m[..stamp].copy_from_slice(&i.to_be_bytes()[..stamp]);
            msg = Some(send(&qp, m).await?);
            if client {
                expect(&mut rx, args.size, i).await?;
            }
            progress.set(i + 1);
        }
        anyhow::Ok(())
    };
    let watchdog = async {
        let mut last = u32::MAX;
        loop {
            tokio::time::sleep(limit).await;
            let now = progress.get();
            if now == last {
                return now;
            }
            last = now;
        }
    };
    tokio::select! {
        r = pingpong => r?,
        stuck = watchdog => bail!("no progress from the peer for {limit:?} (after {stuck} iterations)"),
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = args.size as u64 * u64::from(args.iters) * 2;
    println!(
        "{bytes} bytes in {secs:.2} seconds = {:.2} Mbit/sec",
        bytes as f64 * 8.0 / secs / 1e6
    );
    println!(
        "{} iters in {secs:.2} seconds = {:.2} usec/iter",
        args.iters,
        secs * 1e6 / f64::from(args.iters)
    );
    // Let the peer finish before our QP disappears.
    tcp.write_all(&[2]).await.ok();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut [0u8; 1])).await;
    Ok(())
}

async fn exchange_stream(args: &Args) -> Result<TcpStream> {
    match &args.server {
        Some(host) => {
            let addr = format!("{host}:{}", args.port);
            // The server may still be starting: retry for a few seconds.
            let mut last = None;
            for _ in 0..50 {
                match TcpStream::connect(&addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(last.expect("at least one attempt"))
                .with_context(|| format!("connecting to {addr}"))
        }
        None => {
            let l = TcpListener::bind(("0.0.0.0", args.port))
                .await
                .with_context(|| format!("listening on port {}", args.port))?;
            println!("waiting for a client on port {}", args.port);
            let (s, peer) = l.accept().await?;
            println!("client {peer}");
            Ok(s)
        }
    }
}

async fn send(
    qp: &tokio_rdma_verbs::QueuePair,
    msg: tokio_rdma_verbs::MemoryRegion<Vec<u8>>,
) -> Result<tokio_rdma_verbs::MemoryRegion<Vec<u8>>> {
    let (res, msg) = qp.send(msg).await;
    res.context("send failed")?;
    Ok(msg)
}

async fn expect(rx: &mut RecvStream, size: usize, i: u32) -> Result<()> {
    let m = rx
        .next()
        .await
        .context("receive stream ended")?
        .context("receive failed")?;
    if m.len() != size {
        bail!("message {i}: {} bytes, expected {size}", m.len());
    }
    let stamp = size.min(4);
    if m[..stamp] != i.to_be_bytes()[..stamp] {
        bail!("message {i}: out of sequence");
    }
    Ok(())
}
