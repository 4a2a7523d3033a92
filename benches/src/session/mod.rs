//! Sessions: connecting a run's flows through the connection manager, the hello exchange,
//! running the flows in their mode, and turning what the client measured into a
//! [`RunResult`](crate::stats::RunResult).
//!
//! A session is one run (one test, size and mode) over `flows` connections. The client
//! connects every flow with the run's [`Params`] as private data; the server accepts the
//! flows of one session, refuses anything else with a reason, and mirrors the run in the
//! same mode. Both sides then SEND each other a [`Hello`] with their buffer.
//!
//! Runtimes: `async-mt` runs on tokio's multi-thread runtime, every other mode on a
//! current-thread one. The raw-verbs modes use theirs only to connect and to disconnect: the
//! flows run on the calling thread while it is idle, so nothing but the flows polls their CQs
//! (each owned by a `RawPoller`) or reads the completion channel.

pub mod client;
pub mod server;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use tokio_rdma_cm::verbs::{Access, CompletionQueue, MemoryRegion, PeerWritable, RemoteBuffer};
use tokio_rdma_cm::{Connection, QpOptions};

use crate::modes::future::{self, AsyncFlow};
use crate::modes::raw::region_len;
use crate::modes::raw::RawFlow;
use crate::modes::{engine, Plan, Record, Role, SharedState, Tally, MAX_INLINE};
use crate::protocol::{Hello, Mode, Params, HELLO_LEN};

/// Every wait on the peer during setup is bounded by this.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// The queue pair and CQ of every flow: deep enough for the tests' depths, with CQ room for
/// raw work (send + receive depth beyond the dispatcher's slots) and unsignaled sends; the
/// mode's completion driver.
pub fn qp_options(mode: Mode) -> QpOptions {
    QpOptions {
        driver: mode.driver(),
        max_send_wr: 128,
        max_recv_wr: 128,
        max_inline_data: MAX_INLINE as u32,
        cq_entries: Some(512),
        ..QpOptions::default()
    }
}

/// A flow's memory: the raw modes' region layout, or the buffer the peer targets.
pub fn register_region(
    conn: &Connection,
    mode: Mode,
    size: usize,
) -> Result<MemoryRegion<Vec<u8>, PeerWritable>> {
    let len = if mode.is_raw() {
        region_len(size)
    } else {
        size.max(1)
    };
    let access = Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ;
    Ok(conn.pd().register_remote(vec![0u8; len], access)?)
}

/// The first exchange on a connection: each side SENDs its buffer; returns the peer's.
pub async fn hello(conn: &Connection, ours: RemoteBuffer) -> Result<RemoteBuffer> {
    let pd = conn.pd();
    let rx = pd.register(vec![0u8; HELLO_LEN], Access::LOCAL_WRITE)?;
    // Posted before ours goes out; the peer's send waits for it (infinite RNR retries).
    let recv = conn.recv(rx);
    let tx = pd.register(
        Hello { buffer: ours }.encode().to_vec(),
        Access::LOCAL_WRITE,
    )?;
    let exchange = async {
        conn.send(tx).await.0.context("sending the hello")?;
        let (r, rx) = recv.await;
        let n = r.context("receiving the peer's hello")?.byte_len as usize;
        anyhow::Ok(Hello::decode(&rx[..n.min(rx.len())])?.buffer)
    };
    tokio::time::timeout(SETUP_TIMEOUT, exchange)
        .await
        .context("the peer sent no hello")?
}

/// A flow's exposed buffer: the first `size` bytes of its region.
pub fn exposed(region: &MemoryRegion<Vec<u8>, PeerWritable>, size: usize) -> Result<RemoteBuffer> {
    Ok(region.remote(0..size.max(1))?)
}

/// The runtime a mode runs on: `async-mt` on a multi-thread runtime of `threads` workers
/// (`None`: one per CPU), every other mode on a current-thread one.
pub fn runtime(mode: Mode, threads: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut b = if mode == Mode::AsyncMt {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads.unwrap_or_else(default_threads).max(1));
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    Ok(b.enable_all().build()?)
}

/// tokio's default number of workers: one per CPU.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The server's plan for a session: it mirrors the test; counts come from the stop message.
pub fn server_plan(p: &Params, stall: Duration) -> Plan {
    Plan {
        test: p.test,
        size: p.size as usize,
        warmup: 0,
        iters: 0,
        duration: None,
        stall,
    }
}

/// A connected flow after the hello: its connection, its registered region and the peer's.
pub type Prepared = (
    Connection,
    MemoryRegion<Vec<u8>, PeerWritable>,
    RemoteBuffer,
);

/// Raw-verbs flows over `conns` (each with its CQ, for the engine), in `role`; the
/// connections go to `keep`, which must outlive the run.
pub fn raw_flows(
    conns: Vec<Prepared>,
    role: Role,
    plan: Plan,
    tally: impl Fn() -> Tally,
    keep: &mut Vec<Connection>,
) -> Result<Vec<(RawFlow, CompletionQueue)>> {
    let mut flows = Vec::with_capacity(conns.len());
    for (i, (conn, region, peer)) in conns.into_iter().enumerate() {
        let f = RawFlow::new(i, conn.qp().clone(), role, plan, region, peer, tally())?;
        flows.push((f, conn.cq().clone()));
        keep.push(conn);
    }
    Ok(flows)
}

/// The handlers of a session's `flows`: one structure shared by all (`shared_state`) or a
/// counter each, with `work` rounds of computation per operation.
pub fn tallies(flows: u16, shared_state: bool, work: u32) -> impl Fn() -> Tally {
    let shared = Arc::new(Mutex::new(SharedState::new(usize::from(flows))));
    move || {
        if shared_state {
            Tally::shared(shared.clone(), work)
        } else {
            Tally::own(work)
        }
    }
}

/// Runs a session's flows over `conns` to their end in `mode`, as `role`: raw-verbs flows on
/// the calling thread (the engine), async ones as tasks of `rt`. Returns each flow's record,
/// in flow order; the connections go to `keep`, which the caller drops inside `rt`.
pub fn run_flows(
    rt: &tokio::runtime::Runtime,
    mode: Mode,
    conns: Vec<Prepared>,
    role: Role,
    plan: Plan,
    tally: impl Fn() -> Tally,
    keep: &mut Vec<Connection>,
) -> Result<Vec<Record>> {
    if mode.is_raw() {
        let flows = raw_flows(conns, role, plan, tally, keep)?;
        return engine::run(mode, flows, plan.stall)
            .map(|flows| flows.into_iter().map(|f| f.record).collect());
    }
    let flows: Vec<AsyncFlow> = conns
        .into_iter()
        .enumerate()
        .map(|(index, (conn, region, peer))| {
            let qp = conn.qp().clone();
            keep.push(conn);
            AsyncFlow {
                index,
                qp,
                role,
                plan,
                target: Arc::new(region),
                peer,
                tally: tally(),
            }
        })
        .collect();
    rt.block_on(async {
        let tasks: Vec<_> = flows
            .into_iter()
            .map(|f| tokio::spawn(future::run(f)))
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await.map_err(|e| anyhow!("flow task: {e}"))??);
        }
        Ok(out)
    })
}
