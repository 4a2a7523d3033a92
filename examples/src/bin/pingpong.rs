//! RC ping-pong over tokio-rdma-verbs, like rdma-core's `ibv_rc_pingpong`.
//!
//! Server: `pingpong [OPTIONS]`; client: `pingpong [OPTIONS] SERVER`. The QP information is
//! exchanged over TCP (port 18515 by default), then the client sends `size` bytes, the server
//! echoes them, `iters` times. Both print the time per iteration; the client also prints the
//! one-way latency (half round trip) distribution in perftest's `ib_send_lat` format.
//!
//! Like `ib_send_lat`, messages up to `--inline-size` bytes are sent inline (copied into the
//! work request, no memory region) and unsignaled (no completion; every `max_send_wr / 2`-th
//! one is signaled to retire the others). Larger messages are sent from a registered buffer,
//! and each send's completion is awaited together with the next receive, not before it: the
//! round trip never waits for the send's acknowledgement.
//!
//! The loop runs in a task of its own (`tokio::spawn`), where an awaiting future spins on the
//! CQ itself while it is the only busy one; `--in-main` awaits it in `main` instead (tokio's
//! `block_on` future, which the completion driver wakes). `--inline-polls N` lets the awaiting
//! future poll the CQ itself up to N times before it yields (see
//! `DriverConfig::inline_polls`): the lowest-latency setting for a task that owns its thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rdma_verbs::{
    Access, CompletionChannel, ConnectOptions, Context, DriverConfig, MemoryRegion, OpFuture,
    QpInfo, QpType, QueuePair, QueuePairBuilder, RecvStream,
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
    /// Send messages up to this size inline, like perftest's `-I` (0 = never).
    #[arg(short = 'I', long, default_value_t = 236)]
    inline_size: u32,
    /// Inline CQ polls by an awaiting future before it yields (DriverConfig::inline_polls).
    #[arg(long, default_value_t = DriverConfig::default().inline_polls)]
    inline_polls: u32,
    /// Completion-driver spin iterations before parking on the channel fd (0 = event mode).
    #[arg(long, default_value_t = DriverConfig::default().spin_iterations)]
    spin: u32,
    /// Print the CQ's counters at the end (channel events, polls, completions).
    #[arg(long)]
    stats: bool,
    /// Await the ping-pong in `main` (tokio's `block_on` future) instead of a task of its
    /// own.
    #[arg(long)]
    in_main: bool,
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
            inline_polls: args.inline_polls,
            ..DriverConfig::default()
        },
    )?;
    let cq = chan.create_cq(args.rx_depth + 64)?;
    let qp = QueuePairBuilder::new(&pd, QpType::Rc, &cq)
        .max_recv_wr(args.rx_depth)
        .max_send_wr(64)
        .max_inline_data(args.inline_size)
        .build()?;
    let inline = args.size <= args.inline_size as usize;
    let opts = ConnectOptions {
        port: args.ib_port,
        gid_index: args.gid_idx,
        psn: std::process::id() & 0xff_ffff,
        ..ConnectOptions::default()
    };
    qp.init(&opts)?;
    // Receives may be posted in INIT: they are in place before the peer can send.
    let rx = qp.recv_stream(args.rx_depth, args.size)?;
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

    let msg = pd.register(vec![0u8; args.size], Access::LOCAL_WRITE)?;
    let limit = Duration::from_secs(args.timeout);
    let start = Instant::now();
    // A dead or silent peer is caught by a watchdog that checks progress once per `limit`
    // (one timer in all, not one per message).
    let progress = Arc::new(AtomicU32::new(0));
    let run = PingPong {
        qp: qp.clone(),
        rx,
        msg,
        client: args.server.is_some(),
        inline,
        size: args.size,
        iters: args.iters,
        progress: progress.clone(),
    }
    .run();
    // The loop runs in a task of its own, as a server's per-connection work would: awaiting
    // futures there spin on their CQ themselves while it is the only busy one. `--in-main`
    // awaits it in `main` instead (tokio's `block_on` future, which the runtime polls only
    // between rounds of its run queue: the completion driver wakes it).
    let work: Pin<Box<dyn Future<Output = Result<Histogram<u64>>>>> = if args.in_main {
        Box::pin(run)
    } else {
        let task = tokio::spawn(run);
        Box::pin(async move { task.await.context("the ping-pong task")? })
    };
    let watchdog = async {
        let mut last = u32::MAX;
        loop {
            tokio::time::sleep(limit).await;
            let now = progress.load(Ordering::Relaxed);
            if now == last {
                return now;
            }
            last = now;
        }
    };
    let latency = tokio::select! {
        r = work => r?,
        stuck = watchdog => bail!("no progress from the peer for {limit:?} (after {stuck} iterations)"),
    };
    let client = args.server.is_some();
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
    if client {
        print_latency(&latency, args.size, args.iters);
    }
    if args.stats {
        let st = cq.stats();
        eprintln!(
            "cq: {} channel events, {} polls ({:.1} per iteration), {} completions",
            st.events,
            st.polls,
            st.polls as f64 / f64::from(args.iters),
            st.dispatch.total()
        );
    }
    // Let the peer finish before our QP disappears.
    tcp.write_all(&[2]).await.ok();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut [0u8; 1])).await;
    Ok(())
}

/// One side's ping-pong over a connected QP.
struct PingPong {
    qp: QueuePair,
    rx: RecvStream,
    msg: Message,
    client: bool,
    inline: bool,
    size: usize,
    iters: u32,
    /// Iterations done, for the watchdog.
    progress: Arc<AtomicU32>,
}

impl PingPong {
    /// Runs the iterations; returns the client's one-way latencies (half of each round trip,
    /// in nanoseconds; empty on the server).
    async fn run(self) -> Result<Histogram<u64>> {
        let Self {
            qp,
            mut rx,
            msg,
            client,
            inline,
            size,
            iters,
            progress,
        } = self;
        let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)?;
        let mut msg = Some(msg);
        // The first (up to) 4 bytes carry the iteration number, checked by the receiver.
        let stamp = size.min(4);
        // The previous send from the buffer, still completing (the server's echo of
        // message i - 1).
        let mut pending: Option<OpFuture<Message>> = None;
        for i in 0..iters {
            let t0 = Instant::now();
            if !client {
                // Our last echo's completion and the next message, in either order.
                let (sent, ()) =
                    tokio::try_join!(finish(pending.take()), expect(&mut rx, size, i))?;
                msg = msg.or(sent);
            }
            let mut m = msg.take().expect("message buffer is back");
            m[..stamp].copy_from_slice(&i.to_be_bytes()[..stamp]);
            let send = if inline {
                // Copied during the call: the buffer stays ours.
                let posted = qp.send_inline_unsignaled(&m);
                msg = Some(m);
                posted.context("send failed")?;
                None
            } else {
                Some(qp.send(m))
            };
            if client {
                let (sent, ()) = tokio::try_join!(finish(send), expect(&mut rx, size, i))?;
                msg = msg.or(sent);
                latency.saturating_record(t0.elapsed().as_nanos() as u64 / 2);
            } else {
                pending = send;
            }
            progress.store(i + 1, Ordering::Relaxed);
        }
        finish(pending).await?;
        Ok(latency)
    }
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

type Message = MemoryRegion<Vec<u8>>;

/// Awaits a buffer send's completion, if there is one, and gives the buffer back.
async fn finish(send: Option<OpFuture<Message>>) -> Result<Option<Message>> {
    let Some(op) = send else { return Ok(None) };
    let (res, m) = op.await;
    res.context("send failed")?;
    Ok(Some(m))
}

/// Prints the one-way latency like perftest's `ib_send_lat` (usec).
fn print_latency(h: &Histogram<u64>, size: usize, iters: u32) {
    let us = |ns: u64| ns as f64 / 1000.0;
    println!(
        " #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    \
         t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec]"
    );
    println!(
        " {size:<6} {iters:<11} {:>11.2} {:>14.2} {:>16.2} {:>14.2} {:>16.2} {:>22.2} {:>24.2}",
        us(h.min()),
        us(h.max()),
        us(h.value_at_quantile(0.5)),
        h.mean() / 1000.0,
        h.stdev() / 1000.0,
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
    );
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
