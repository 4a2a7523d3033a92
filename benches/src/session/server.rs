//! The server: accept one session's flows, mirror the run, repeat.
//!
//! A connect request whose private data is not a valid [`Params`] is rejected with the reason
//! in text (the client prints it); so is a request for another session while one is being
//! gathered. The server keeps serving after a failed session. It runs on one current-thread
//! runtime, so it mirrors `async-mt` with the same futures on one thread.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use tokio_rdma_cm::{AcceptOptions, Connection, IncomingRequest, Listener};

use super::{
    exposed, hello, qp_options, register_region, run_flows, server_plan, tallies, SETUP_TIMEOUT,
};
use crate::modes::Role;
use crate::protocol::{accept_data, Mode, Params, Test};

/// How long the server's flows may see nothing: the ping-pong and SEND tests hear from the
/// client all the time; in the others (the client WRITEs or READs) only its stop message
/// arrives, at the end of a run as long as the client makes it.
fn stall(test: Test) -> Duration {
    match test {
        Test::SendLat | Test::WriteLat | Test::SendBw => Duration::from_secs(30),
        _ => Duration::from_secs(600),
    }
}

/// Rejects `req` with `reason` (logged too).
fn refuse(req: IncomingRequest, reason: &str) {
    eprintln!("rdma-bench server: refused {}: {reason}", req.peer_addr());
    let mut text = format!("rdma-bench: {reason}").into_bytes();
    text.truncate(tokio_rdma_cm::MAX_REJECT_PRIVATE_DATA);
    if let Err(e) = req.reject(&text) {
        eprintln!("rdma-bench server: rejecting failed: {e}");
    }
}

/// The next valid request that opens a session (`multi_thread`: the server runs on a
/// multi-thread runtime, where raw-verbs sessions cannot run).
async fn first_request(
    listener: &Listener,
    multi_thread: bool,
) -> Result<(IncomingRequest, Params)> {
    loop {
        let req = listener.accept().await?;
        match Params::decode(req.private_data()) {
            Ok(p) if p.size == 0 => refuse(req, "message size 0"),
            Ok(p) if multi_thread && p.mode.is_raw() => refuse(
                req,
                "this server runs a multi-thread runtime (--threads): raw-verbs modes need one \
                 started without it",
            ),
            Ok(p) => return Ok((req, p)),
            Err(e) => refuse(req, &e.to_string()),
        }
    }
}

async fn accept(req: IncomingRequest, mode: Mode) -> Result<Connection> {
    let opts = AcceptOptions {
        private_data: accept_data().to_vec(),
        qp: qp_options(mode),
        ..Default::default()
    };
    Ok(req.accept(opts).await?)
}

/// Gathers the `flows` connections of the session `first` opens, in flow order.
async fn gather(listener: &Listener, first: IncomingRequest, p: Params) -> Result<Vec<Connection>> {
    let mut conns: Vec<Option<Connection>> = (0..p.flows).map(|_| None).collect();
    conns[usize::from(p.flow)] = Some(accept(first, p.mode).await?);
    let mut missing = usize::from(p.flows) - 1;
    while missing > 0 {
        let req = tokio::time::timeout(SETUP_TIMEOUT, listener.accept())
            .await
            .map_err(|_| anyhow!("session {:#x}: {missing} flows never came", p.session))??;
        match Params::decode(req.private_data()) {
            Ok(q) if q.session == p.session && q.flows == p.flows => {
                let slot = &mut conns[usize::from(q.flow)];
                if slot.is_some() {
                    refuse(req, "flow connected twice");
                } else {
                    *slot = Some(accept(req, p.mode).await?);
                    missing -= 1;
                }
            }
            Ok(_) => refuse(req, "busy with another session"),
            Err(e) => refuse(req, &e.to_string()),
        }
    }
    Ok(conns.into_iter().flatten().collect())
}

/// How a server serves its sessions.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServeOptions {
    /// Exit after this many sessions (serve forever without).
    pub sessions: Option<usize>,
    /// Run on a multi-thread runtime of this many workers (`async` and `async-mt` sessions
    /// only) instead of one thread.
    pub threads: Option<usize>,
    /// Serve every session in this mode instead of the client's (the wire protocol is the
    /// same in every mode): to see one side's share of a round trip.
    pub mode: Option<Mode>,
}

/// Serves sessions at `bind` as `opts` says.
pub fn run(bind: SocketAddr, opts: ServeOptions) -> Result<()> {
    let ServeOptions {
        sessions,
        threads,
        mode,
    } = opts;
    if threads.is_some() && mode.is_some_and(Mode::is_raw) {
        anyhow::bail!("raw-verbs modes need a server without --threads");
    }
    let rt = match threads {
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .enable_all()
            .build()?,
    };
    let listener = rt
        .block_on(Listener::bind(bind))
        .with_context(|| format!("listening on {bind}"))?;
    eprintln!("rdma-bench server: listening on {}", listener.local_addr());
    let mut served = 0;
    while sessions.is_none_or(|n| served < n) {
        let (req, p) = rt.block_on(first_request(
            &listener,
            threads.is_some() && mode.is_none(),
        ))?;
        let p = Params {
            mode: mode.unwrap_or(p.mode),
            ..p
        };
        match serve(&rt, &listener, req, p) {
            Ok(()) => eprintln!(
                "rdma-bench server: session {:#x} done ({} {} {} B, {} flows)",
                p.session, p.mode, p.test, p.size, p.flows
            ),
            Err(e) => eprintln!("rdma-bench server: session {:#x} failed: {e:#}", p.session),
        }
        served += 1;
    }
    Ok(())
}

fn serve(
    rt: &tokio::runtime::Runtime,
    listener: &Listener,
    req: IncomingRequest,
    p: Params,
) -> Result<()> {
    let size = p.size as usize;
    let conns = rt.block_on(async {
        let conns = gather(listener, req, p).await?;
        let mut out = Vec::with_capacity(conns.len());
        for conn in conns {
            let region = register_region(&conn, p.mode, size)?;
            let peer = hello(&conn, exposed(&region, size)?).await?;
            out.push((conn, region, peer));
        }
        anyhow::Ok(out)
    })?;
    let tally = tallies(p.flows, p.shared_state, 0);
    let plan = server_plan(&p, stall(p.test));
    let mut keep = Vec::with_capacity(conns.len());
    let r = run_flows(rt, p.mode, conns, Role::Server, plan, tally, &mut keep).map(drop);
    // Let the client see our last messages before the QPs go, then disconnect.
    rt.block_on(async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(keep);
    });
    r
}
