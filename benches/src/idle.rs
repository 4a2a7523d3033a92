//! `rdma-bench idle`: what an idle connection costs. A connected pair in one process (a
//! listener and a client on the same device), each end with a receive stream posted and
//! awaited, the connection manager's and the completion channel's drivers running, and then
//! nothing happens for the given time; the process's CPU time over that time is the cost.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use tokio_rdma_cm::{connect, AcceptOptions, ConnectOptions, Listener};

use crate::clock::cpu_time;
use crate::session::SETUP_TIMEOUT;

/// What an idle run measured.
#[derive(Clone, Copy, Debug)]
pub struct Idle {
    /// How long the pair idled.
    pub wall: Duration,
    /// The process's CPU time (user + system) meanwhile.
    pub cpu: Duration,
}

impl Idle {
    /// CPU time over wall time, in percent of one core.
    pub fn percent_of_a_core(&self) -> f64 {
        if self.wall.is_zero() {
            return 0.0;
        }
        100.0 * self.cpu.as_secs_f64() / self.wall.as_secs_f64()
    }
}

/// Connects a pair through `bind` (an address of an RDMA device), posts a receive stream on
/// each end and measures the process's CPU time while they wait `idle` for messages that
/// never come.
pub fn run(bind: SocketAddr, idle: Duration) -> Result<Idle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = Listener::bind(bind)
            .await
            .with_context(|| format!("listening on {bind}"))?;
        let to = listener.local_addr();
        let server = async {
            let req = listener.accept().await?;
            anyhow::Ok(req.accept(AcceptOptions::default()).await?)
        };
        let pair = async {
            tokio::try_join!(
                async { Ok(connect(to, ConnectOptions::default()).await?) },
                server
            )
        };
        let (client, server) = tokio::time::timeout(SETUP_TIMEOUT, pair)
            .await
            .context("connecting the pair timed out")??;
        let mut rc = client.recv_stream(16, 64)?;
        let mut rs = server.recv_stream(16, 64)?;
        let (cpu0, wall0) = (cpu_time(), Instant::now());
        tokio::select! {
            () = tokio::time::sleep(idle) => {}
            m = rc.next() => anyhow::bail!("the idle client received {m:?}"),
            m = rs.next() => anyhow::bail!("the idle server received {m:?}"),
        }
        let measured = Idle {
            wall: wall0.elapsed(),
            cpu: cpu_time().saturating_sub(cpu0),
        };
        drop((rc, rs, client, server));
        Ok(measured)
    })
}
