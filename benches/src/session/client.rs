//! The client side of a session: connect the flows, run them in the mode, report.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use tokio_rdma_cm::verbs::DriverConfig;
use tokio_rdma_cm::{connect, ConnectOptions, Connection};

use super::{
    default_threads, exposed, hello, qp_options, register_region, run_flows, runtime, tallies,
    SETUP_TIMEOUT,
};
use crate::clock::cpu_time;
use crate::modes::{Plan, Record, Role};
use crate::protocol::{check_accept, Mode, Params, Test};
use crate::stats::{cpu_usec_per_op, ops_per_sec, Bandwidth, Latency, RunResult};

/// One run as the client asks for it.
#[derive(Clone, Copy, Debug)]
pub struct RunSpec {
    /// The test.
    pub test: Test,
    /// The mode (mirrored by the server).
    pub mode: Mode,
    /// Message size in bytes (at least 1).
    pub size: usize,
    /// Unmeasured iterations per flow first.
    pub warmup: u64,
    /// Measured iterations per flow.
    pub iters: u64,
    /// Measure for this long instead.
    pub duration: Option<Duration>,
    /// Connections.
    pub flows: u16,
    /// One structure updated by every flow's handler.
    pub shared_state: bool,
    /// Worker threads of `async-mt` (`None`: one per CPU).
    pub threads: Option<usize>,
    /// The client's completion-driver tuning in the async modes (`None`: the mode's).
    pub tuning: Option<DriverConfig>,
    /// Rounds of computation the client's handler does per operation, outside the lock.
    pub handler_work: u32,
    /// A run without progress for this long fails.
    pub stall: Duration,
}

impl RunSpec {
    fn plan(&self) -> Plan {
        Plan {
            test: self.test,
            size: self.size,
            warmup: self.warmup,
            iters: self.iters,
            duration: self.duration,
            stall: self.stall,
        }
    }

    fn check(&self) -> Result<()> {
        if self.size == 0 || self.size > 1 << 30 {
            bail!("size {} not in 1..=1 GiB", self.size);
        }
        if self.flows == 0 || self.flows > 1024 {
            bail!("flows {} not in 1..=1024", self.flows);
        }
        if self.duration.is_none() && self.test.is_latency() && self.iters < 4 {
            bail!("a latency test needs at least 4 iterations (perftest drops the 2 largest)");
        }
        if self.duration.is_none() && self.iters == 0 {
            bail!("iters must be positive");
        }
        Ok(())
    }
}

/// A session id that differs between runs.
fn session_id() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.subsec_nanos() ^ (t.as_secs() as u32).rotate_left(16)) ^ std::process::id()
}

/// Connects flow `flow` of the session.
async fn connect_flow(
    addr: SocketAddr,
    params: Params,
    tuning: Option<DriverConfig>,
) -> Result<Connection> {
    let mut qp = qp_options(params.mode);
    if tuning.is_some() && !params.mode.is_raw() {
        qp.driver = tuning;
    }
    let opts = ConnectOptions {
        private_data: params.encode().to_vec(),
        qp,
        ..Default::default()
    };
    let conn = match connect(addr, opts).await {
        Ok(c) => c,
        Err(tokio_rdma_cm::Error::Rejected { private_data, .. }) => {
            let reason = String::from_utf8_lossy(&private_data);
            bail!(
                "the server at {addr} refused flow {}: {}",
                params.flow,
                reason.trim_end_matches('\0')
            )
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {addr}")),
    };
    check_accept(conn.private_data()).with_context(|| format!("{addr} is no rdma-bench server"))?;
    Ok(conn)
}

/// What one session measured, before the figures: every flow's stamps, and the process's
/// CPU and wall time around the flows.
#[derive(Debug)]
pub struct Measured {
    /// One record per flow.
    pub records: Vec<Record>,
    /// CPU time (user + system) of the run.
    pub cpu: Duration,
    /// Wall time of the run.
    pub wall: Duration,
}

/// Runs one session against the server at `addr` and returns its figures.
pub fn run(addr: SocketAddr, spec: &RunSpec) -> Result<RunResult> {
    let m = measure(addr, spec)?;
    Ok(assemble(spec, &m.records, m.cpu, m.wall))
}

/// The figures of several sessions of the same run (`compare --rounds`: the modes take turns,
/// so each mode's rounds are spread over the same stretch of a noisy machine): latency over
/// every sample of every round; the rate over the sum of the rounds' measured windows;
/// bandwidth as the mean of the rounds'; CPU per operation over all of them. With more than
/// one round, each round's `t_typical` too.
pub fn assemble_rounds(spec: &RunSpec, rounds: &[Measured]) -> RunResult {
    let clock = crate::modes::clock();
    let all: Vec<Record> = rounds.iter().flat_map(|m| m.records.clone()).collect();
    let cpu = rounds.iter().map(|m| m.cpu).sum();
    let wall = rounds.iter().map(|m| m.wall).sum();
    let mut r = assemble(spec, &all, cpu, wall);
    let windows: Option<Duration> = rounds
        .iter()
        .map(|m| measured_window(&m.records, clock))
        .sum();
    r.ops_per_sec = ops_per_sec(r.iters, windows.unwrap_or(wall));
    if rounds.len() > 1 && r.latency.is_some() {
        r.rounds_t_typical = rounds
            .iter()
            .filter_map(|m| assemble(spec, &m.records, m.cpu, m.wall).latency)
            .map(|l| l.t_typical)
            .collect();
    }
    if r.bandwidth.is_some() {
        let per_round: Vec<Bandwidth> = rounds
            .iter()
            .filter_map(|m| assemble(spec, &m.records, m.cpu, m.wall).bandwidth)
            .collect();
        let n = per_round.len().max(1) as f64;
        r.bandwidth = Some(Bandwidth {
            bw_peak: per_round.iter().map(|b| b.bw_peak).sum::<f64>() / n,
            bw_average: per_round.iter().map(|b| b.bw_average).sum::<f64>() / n,
            msg_rate: per_round.iter().map(|b| b.msg_rate).sum::<f64>() / n,
        });
    }
    r
}

/// Runs one session against the server at `addr` and returns what it measured.
pub fn measure(addr: SocketAddr, spec: &RunSpec) -> Result<Measured> {
    spec.check()?;
    let rt = runtime(spec.mode, spec.threads)?;
    let session = session_id();
    let flows = spec.flows;
    let setup = async {
        let mut conns = Vec::with_capacity(usize::from(flows));
        for flow in 0..flows {
            let params = Params {
                test: spec.test,
                mode: spec.mode,
                shared_state: spec.shared_state,
                size: spec.size as u32,
                flows,
                flow,
                session,
            };
            conns.push(connect_flow(addr, params, spec.tuning).await?);
        }
        // The server answers the hellos once every flow is connected.
        let mut flows = Vec::with_capacity(conns.len());
        for conn in conns {
            let region = register_region(&conn, spec.mode, spec.size)?;
            let peer = hello(&conn, exposed(&region, spec.size)?).await?;
            flows.push((conn, region, peer));
        }
        anyhow::Ok(flows)
    };
    let conns = rt.block_on(async {
        tokio::time::timeout(SETUP_TIMEOUT * u32::from(flows.min(8)), setup)
            .await
            .map_err(|_| anyhow!("connecting {flows} flows to {addr} timed out"))?
    })?;
    let tally = tallies(flows, spec.shared_state, spec.handler_work);
    let plan = spec.plan();
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    let mut keep = Vec::with_capacity(conns.len());
    let records = run_flows(&rt, spec.mode, conns, Role::Client, plan, tally, &mut keep);
    let (cpu, wall) = (cpu_time().saturating_sub(cpu0), wall0.elapsed());
    // Disconnect inside the runtime the connections belong to.
    rt.block_on(async move { drop(keep) });
    Ok(Measured {
        records: records?,
        cpu,
        wall,
    })
}

/// How long the measured part took: from the first measured post of any flow to the last
/// stamp of any flow (latency tests stamp the last completion; bandwidth tests stamp every
/// completion). Setup, warm-up and the stop message are outside it, so the rate is the
/// steady state's, as perftest's `MsgRate` is. `None` without stamps.
fn measured_window(records: &[Record], clock: &crate::clock::CycleClock) -> Option<Duration> {
    let first = records.iter().filter_map(|r| r.post.first()).min()?;
    let last = records
        .iter()
        .filter_map(|r| r.done.last().max(r.post.last()))
        .max()?;
    let usec = clock.to_usec(last.saturating_sub(*first));
    (usec > 0.0).then(|| Duration::from_secs_f64(usec / 1e6))
}

/// The run's figures from every flow's stamps: latency over all flows' samples (each flow's
/// consecutive stamps give its samples; the merged stamp series has exactly those deltas),
/// bandwidth summed over flows.
pub fn assemble(spec: &RunSpec, records: &[Record], cpu: Duration, wall: Duration) -> RunResult {
    let clock = crate::modes::clock();
    let ops: u64 = records.iter().map(|r| r.ops).sum();
    let (latency, bandwidth, samples_usec) = if spec.test.is_latency() {
        let mut stamps = vec![0u64];
        let mut at = 0u64;
        for r in records {
            for w in r.post.windows(2) {
                at += w[1].saturating_sub(w[0]);
                stamps.push(at);
            }
        }
        let halved = spec.test.rtt_halved();
        (
            Latency::from_stamps(&stamps, clock, halved),
            None,
            Latency::samples_usec(&stamps, clock, halved),
        )
    } else {
        let per_flow: Vec<Bandwidth> = records
            .iter()
            .filter_map(|r| Bandwidth::from_run(spec.size, &r.post, &r.done, clock))
            .collect();
        let bw = (!per_flow.is_empty()).then(|| Bandwidth {
            bw_peak: per_flow.iter().map(|b| b.bw_peak).sum(),
            bw_average: per_flow.iter().map(|b| b.bw_average).sum(),
            msg_rate: per_flow.iter().map(|b| b.msg_rate).sum(),
        });
        (None, bw, Vec::new())
    };
    RunResult {
        mode: spec.mode.name().into(),
        test: spec.test.name().into(),
        size: spec.size,
        flows: usize::from(spec.flows),
        threads: (spec.mode == Mode::AsyncMt).then(|| spec.threads.unwrap_or_else(default_threads)),
        iters: ops as usize,
        latency,
        bandwidth,
        cpu_usec_per_op: cpu_usec_per_op(cpu, ops as usize),
        ops_per_sec: ops_per_sec(
            ops as usize,
            measured_window(records, clock).unwrap_or(wall),
        ),
        samples_usec,
        rounds_t_typical: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::CycleClock;

    #[test]
    fn the_rate_window_spans_the_measured_stamps_of_every_flow() {
        let (clock, _mock) = CycleClock::mock(); // 1 cycle = 1 ns
        let lat = |post: Vec<u64>| Record {
            post,
            done: Vec::new(),
            ops: 0,
        };
        // Two flows: measured from 1_000 ns to 9_000 ns.
        let w = measured_window(&[lat(vec![3_000, 9_000]), lat(vec![1_000, 4_000])], &clock);
        assert_eq!(w, Some(Duration::from_nanos(8_000)));
        // Bandwidth: the last completion ends it.
        let bw = Record {
            post: vec![2_000, 2_500],
            done: vec![5_000, 12_000],
            ops: 2,
        };
        let w = measured_window(&[bw], &clock);
        assert_eq!(w, Some(Duration::from_nanos(10_000)));
        // No stamps, or no time: the caller falls back to the wall clock.
        assert_eq!(measured_window(&[lat(vec![])], &clock), None);
        assert_eq!(measured_window(&[lat(vec![7, 7])], &clock), None);
    }
}
