//! One side of a flow as an `async fn` over tokio-rdma's futures (`async`, `async-mt`): the
//! code a user of the crate would write. Small SENDs and WRITEs with immediate go inline and
//! unsignaled (`send_inline_unsignaled`, `write_with_imm_inline_unsignaled`, as perftest
//! does), receives come from a `RecvStream`, and a send that needs its completion is awaited
//! together with the next receive, never before it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use futures::StreamExt;
use tokio_rdma_verbs::{
    Access, MemoryRegion, OpFuture, PeerWritable, QueuePair, RecvMessage, RecvStream, RemoteBuffer,
};

use super::{clock, Deadline, Plan, Record, Role, Tally, MAX_INLINE, STOP, STOP_IMM};
use crate::protocol::Test;

type Tx = Arc<MemoryRegion<Vec<u8>>>;

/// One side of one flow over futures.
pub struct AsyncFlow {
    /// The flow's index in the session.
    pub index: usize,
    /// Its queue pair.
    pub qp: QueuePair,
    /// Which side.
    pub role: Role,
    /// What to run.
    pub plan: Plan,
    /// The buffer the peer may WRITE into and READ from (kept registered for the run).
    pub target: Arc<MemoryRegion<Vec<u8>, PeerWritable>>,
    /// The peer's buffer.
    pub peer: RemoteBuffer,
    /// The completion handler's shared (or own) state.
    pub tally: Tally,
}

/// Runs `f` until its end, failing after `stall` without progress. The flow is a task of its
/// own and this one watches it: the flow's task polls no timer on its wake-ups (the raw
/// modes' watchdog costs them a counter check per 65536 empty polls, nothing per message).
pub async fn run(f: AsyncFlow) -> Result<Record> {
    let shared = Arc::new(AtomicU64::new(0));
    let stall = f.plan.stall;
    let mut work = tokio::spawn(flow(f, Progress::new(shared.clone())));
    let mut last = u64::MAX;
    loop {
        tokio::select! {
            r = &mut work => return r.map_err(|e| anyhow!("flow task: {e}"))?,
            () = tokio::time::sleep(stall) => {
                let now = shared.load(Ordering::Relaxed);
                if now == last {
                    // Its QP, buffers and receive stream are dropped before the error
                    // reaches the caller, which tears the connection down.
                    work.abort();
                    let _ = (&mut work).await;
                    bail!("no progress from the peer for {stall:?} (after {now} steps)");
                }
                last = now;
            }
        }
    }
}

/// A flow's step count, published for its watchdog with a plain store (no read-modify-write
/// per message).
struct Progress {
    shared: Arc<AtomicU64>,
    steps: u64,
}

impl Progress {
    fn new(shared: Arc<AtomicU64>) -> Self {
        Self { shared, steps: 0 }
    }

    fn step(&mut self) {
        self.steps += 1;
        self.shared.store(self.steps, Ordering::Relaxed);
    }
}

struct Bufs {
    tx: Tx,
    stop: Tx,
    data: Vec<u8>,
    stop_data: Vec<u8>,
}

impl Bufs {
    fn new(qp: &QueuePair, size: usize) -> Result<Self> {
        let pd = qp.pd();
        let data = vec![0u8; size];
        let mut stop_data = vec![0u8; size];
        stop_data[0] = STOP;
        Ok(Self {
            tx: Arc::new(pd.register(data.clone(), Access::LOCAL_WRITE)?),
            stop: Arc::new(pd.register(stop_data.clone(), Access::LOCAL_WRITE)?),
            data,
            stop_data,
        })
    }
}

async fn next(rx: &mut RecvStream) -> Result<RecvMessage> {
    rx.next()
        .await
        .ok_or_else(|| anyhow!("the receive stream ended"))?
        .context("receive")
}

fn is_stop(m: &RecvMessage) -> bool {
    match m.imm() {
        Some(imm) => imm == STOP_IMM,
        None => m.first() == Some(&STOP),
    }
}

async fn finish<L: Send + 'static>(op: Option<OpFuture<L>>) -> Result<()> {
    if let Some(op) = op {
        op.await.0?;
    }
    Ok(())
}

async fn flow(f: AsyncFlow, mut progress: Progress) -> Result<Record> {
    let size = f.plan.size.max(1);
    let depth = Plan::depth(size);
    let bufs = Bufs::new(&f.qp, size)?;
    let mut rx = match (f.role, f.plan.test) {
        (Role::Server, _) | (Role::Client, Test::SendLat | Test::WriteLat) => {
            Some(f.qp.recv_stream(depth as u32, size)?)
        }
        _ => None,
    };
    let mut record = Record {
        post: Vec::with_capacity(f.plan.stamp_capacity()),
        done: Vec::new(),
        ops: 0,
    };
    match f.role {
        Role::Server => {
            serve(
                &f,
                &bufs,
                rx.as_mut().expect("server receives"),
                &mut progress,
            )
            .await?
        }
        Role::Client if f.plan.test.is_latency() => {
            latency(&f, &bufs, rx.as_mut(), &mut record, &mut progress).await?
        }
        Role::Client => {
            record.done.reserve(f.plan.stamp_capacity());
            bandwidth(&f, &bufs, depth, &mut record, &mut progress).await?
        }
    }
    drop(f.target);
    Ok(record)
}

/// The server: echo (ping-pong tests) or receive, until the stop message.
async fn serve(
    f: &AsyncFlow,
    b: &Bufs,
    rx: &mut RecvStream,
    progress: &mut Progress,
) -> Result<()> {
    let size = f.plan.size.max(1);
    let inline = size <= MAX_INLINE;
    let mut pending: Option<OpFuture<Tx>> = None;
    loop {
        let m = match pending.take() {
            None => next(rx).await?,
            Some(p) => tokio::try_join!(next(rx), finish(Some(p)))?.0,
        };
        progress.step();
        let stop = is_stop(&m);
        let imm = m.imm();
        drop(m);
        match f.plan.test {
            Test::SendLat if stop => {
                f.qp.send(b.stop.clone()).await.0?;
                return Ok(());
            }
            Test::SendLat if inline => f.qp.send_inline_unsignaled(&b.data)?,
            Test::SendLat => pending = Some(f.qp.send(b.tx.clone())),
            Test::WriteLat => {
                let remote = f.peer.slice(0, size as u32)?;
                let imm = imm.unwrap_or(0);
                if inline && !stop {
                    f.qp.write_with_imm_inline_unsignaled(&b.data, remote, imm)?;
                    continue;
                }
                let w = f.qp.write_with_imm(b.tx.clone(), remote, imm);
                if stop {
                    w.await.0?;
                    return Ok(());
                }
                pending = Some(w);
            }
            _ if stop => return Ok(()),
            _ => {}
        }
    }
}

/// A latency client: one request at a time, stamped before each post.
async fn latency(
    f: &AsyncFlow,
    b: &Bufs,
    mut rx: Option<&mut RecvStream>,
    record: &mut Record,
    progress: &mut Progress,
) -> Result<()> {
    let size = f.plan.size.max(1);
    let inline = size <= MAX_INLINE;
    let remote = f.peer.slice(0, size as u32)?;
    let mut read_buf = Some(f.qp.pd().register(vec![0u8; size], Access::LOCAL_WRITE)?);
    let mut deadline = Deadline::new(f.plan.duration);
    let mut tally = f.tally.clone();
    let warm = f.plan.warmup;
    let mut started = 0u64;
    loop {
        let over = started >= warm && deadline.stop_before(started - warm, f.plan.iters);
        if started >= warm {
            let now = clock().stamp();
            if let Some(&last) = record.post.last() {
                record.ops += 1;
                tally.record(f.index, now.saturating_sub(last));
            }
            record.post.push(now);
        }
        progress.step();
        if over {
            return stop(f, b, rx).await;
        }
        started += 1;
        match f.plan.test {
            Test::SendLat => {
                let rx = rx.as_deref_mut().expect("send_lat receives");
                if inline {
                    f.qp.send_inline_unsignaled(&b.data)?;
                    drop(next(rx).await?);
                } else {
                    let (m, sent) = tokio::join!(next(rx), f.qp.send(b.tx.clone()));
                    sent.0?;
                    drop(m?);
                }
            }
            Test::WriteLat => {
                let rx = rx.as_deref_mut().expect("write_lat receives");
                let imm = (started - 1) as u32 & 0x7fff_ffff;
                if inline {
                    f.qp.write_with_imm_inline_unsignaled(&b.data, remote, imm)?;
                    drop(next(rx).await?);
                } else {
                    let w = f.qp.write_with_imm(b.tx.clone(), remote, imm);
                    let (m, w) = tokio::join!(next(rx), w);
                    w.0?;
                    drop(m?);
                }
            }
            Test::ReadLat => {
                let buf = read_buf.take().expect("read buffer is back");
                let (r, buf) = f.qp.read(buf, remote).await;
                read_buf = Some(buf);
                r?;
            }
            t => bail!("{t} is not a latency test"),
        }
    }
}

/// The client's stop message, and the server's answer where there is one.
async fn stop(f: &AsyncFlow, b: &Bufs, rx: Option<&mut RecvStream>) -> Result<()> {
    let size = f.plan.size.max(1);
    match f.plan.test {
        Test::SendLat => {
            let rx = rx.expect("send_lat receives");
            let sent = if size <= MAX_INLINE {
                f.qp.send_inline(&b.stop_data).await.0
            } else {
                f.qp.send(b.stop.clone()).await.0
            };
            sent?;
            next(rx).await.map(drop)
        }
        Test::WriteLat => {
            let rx = rx.expect("write_lat receives");
            let remote = f.peer.slice(0, size as u32)?;
            f.qp.write_with_imm(b.tx.clone(), remote, STOP_IMM)
                .await
                .0?;
            next(rx).await.map(drop)
        }
        _ => {
            f.qp.send(b.stop.clone())
                .await
                .0
                .map(drop)
                .map_err(Into::into)
        }
    }
}

/// A bandwidth client: `depth` requests in flight, stamped at post and at completion.
async fn bandwidth(
    f: &AsyncFlow,
    b: &Bufs,
    depth: usize,
    record: &mut Record,
    progress: &mut Progress,
) -> Result<()> {
    let size = f.plan.size.max(1);
    let remote = f.peer.slice(0, size as u32)?;
    let mut pool: Vec<MemoryRegion<Vec<u8>>> = Vec::with_capacity(depth);
    if f.plan.test == Test::ReadBw {
        for _ in 0..depth {
            pool.push(f.qp.pd().register(vec![0u8; size], Access::LOCAL_WRITE)?);
        }
    }
    let mut sends: VecDeque<OpFuture<Tx>> = VecDeque::with_capacity(depth);
    let mut reads: VecDeque<OpFuture<MemoryRegion<Vec<u8>>>> = VecDeque::with_capacity(depth);
    let mut deadline = Deadline::new(f.plan.duration);
    let mut tally = f.tally.clone();
    let warm = f.plan.warmup;
    let (mut started, mut completed, mut over) = (0u64, 0u64, false);
    loop {
        while !over && sends.len() + reads.len() < depth {
            if started >= warm && deadline.stop_before(started - warm, f.plan.iters) {
                over = true;
                break;
            }
            if started >= warm {
                record.post.push(clock().stamp());
            }
            match f.plan.test {
                Test::SendBw => sends.push_back(f.qp.send(b.tx.clone())),
                Test::WriteBw => sends.push_back(f.qp.write(b.tx.clone(), remote)),
                Test::ReadBw => {
                    let buf = pool.pop().expect("a read buffer per request in flight");
                    reads.push_back(f.qp.read(buf, remote));
                }
                t => bail!("{t} is not a bandwidth test"),
            }
            started += 1;
        }
        if let Some(op) = sends.pop_front() {
            op.await.0?;
        } else if let Some(op) = reads.pop_front() {
            let (r, buf) = op.await;
            pool.push(buf);
            r?;
        } else {
            break;
        }
        progress.step();
        let k = completed;
        completed += 1;
        if k >= warm {
            let now = clock().stamp();
            let posted = record.post[(k - warm) as usize];
            record.done.push(now);
            record.ops += 1;
            tally.record(f.index, now.saturating_sub(posted));
        }
    }
    stop(f, b, None).await
}

/// How long a run may go without progress before it fails, by default.
pub const DEFAULT_STALL: Duration = Duration::from_secs(20);
