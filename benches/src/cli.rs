//! The command line (perftest-like): `rdma-bench server`, `rdma-bench client`,
//! `rdma-bench compare`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::modes::future::DEFAULT_STALL;
use crate::protocol::{Mode, Test};
use crate::session::client::RunSpec;
use tokio_rdma_verbs::DriverConfig;

/// perftest's default port.
pub const DEFAULT_PORT: u16 = 18515;

/// Compares async (tokio-rdma), callback and busy-poll dispatch over RDMA, perftest style.
#[derive(Parser, Debug)]
#[command(name = "rdma-bench", version)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve runs (mirrors each client's test and mode).
    Server(ServerArgs),
    /// Run one mode against a server.
    Client(ClientArgs),
    /// Run every mode back to back against one server; one table with ratios to busy-poll.
    Compare(CompareArgs),
    /// Measure what an idle connection costs: a connected pair in this process, receives
    /// posted and awaited, nothing sent; prints the CPU time as a share of one core.
    Idle(IdleArgs),
}

/// `rdma-bench idle`.
#[derive(Args, Debug)]
pub struct IdleArgs {
    /// An address of the RDMA device to listen on and connect to (port 0: any free one).
    #[arg(long)]
    pub bind: SocketAddr,
    /// How long the pair idles, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Write the figures as JSON (`wall_sec`, `cpu_sec`, `cpu_percent_of_a_core`).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `rdma-bench server`.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))]
    pub bind: SocketAddr,
    /// Exit after serving this many sessions (runs; one per size and mode).
    #[arg(long)]
    pub sessions: Option<usize>,
    /// Serve on a multi-thread runtime of this many workers (for `async-mt` clients that
    /// scale over threads) instead of one thread; raw-verbs sessions (`busy-poll`, `event`,
    /// `callback`) are then refused, as they need a runtime that stays idle.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// Serve every session in this mode instead of mirroring the client's (the protocol is
    /// the same in every mode): to see one side's share of a round trip.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
}

/// What a client runs (shared by `client` and `compare`).
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The server.
    #[arg(long)]
    pub connect: SocketAddr,
    /// The test.
    #[arg(long, value_enum, default_value_t = Test::SendLat)]
    pub test: Test,
    /// Message size in bytes.
    #[arg(long, short = 's', default_value_t = 2)]
    pub size: usize,
    /// Every power of two from 2 bytes to 8 MiB (perftest's -a).
    #[arg(short = 'a', long = "all")]
    pub all: bool,
    /// Measured iterations per flow.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub iters: u64,
    /// Measure for this many seconds instead of --iters.
    #[arg(long, short = 'D')]
    pub duration: Option<f64>,
    /// Unmeasured iterations per flow first.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// Connections, each its own task (async) or consumer (callback).
    #[arg(long, default_value_t = 1)]
    pub flows: u16,
    /// Every flow's completion handler updates one shared structure (per-flow counters and a
    /// histogram) behind one lock.
    #[arg(long)]
    pub shared_state: bool,
    /// Worker threads of the multi-thread runtime in `async-mt` (default: one per CPU);
    /// other modes run on one thread whatever this says.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// Work of the client's completion handler per operation: rounds of computation
    /// (xorshift) done outside the shared state's lock, on the thread that runs the handler
    /// (callback: the polling thread; async: the flow's task). What a consumer does with a
    /// message; 0 (default): the handler only records.
    #[arg(long, default_value_t = 0)]
    pub handler_work: u32,
    /// Tuning of the client's completion driver in the async modes (`DriverConfig::
    /// spin_iterations`; the server keeps its mode's): polls of the channel a quiet CQ gets
    /// before it parks.
    #[arg(long)]
    pub spin: Option<u32>,
    /// Tuning of the client's futures in the async modes (`DriverConfig::inline_polls`):
    /// how often an awaiting future polls the CQ itself before it waits (not at all while
    /// the driver of its channel has several CQs active, as with several flows).
    #[arg(long)]
    pub inline_polls: Option<u32>,
    /// Write every run's figures as JSON (perftest's --out_json keys).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw the latency CDFs as SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Fail a run after this many seconds without progress.
    #[arg(long, default_value_t = DEFAULT_STALL.as_secs())]
    pub stall: u64,
}

/// `rdma-bench client`.
#[derive(Args, Debug)]
pub struct ClientArgs {
    /// How completions reach the waiting code.
    #[arg(long, value_enum, default_value_t = Mode::Async)]
    pub mode: Mode,
    /// The run.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `rdma-bench compare`.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The modes to run, in order (default: all; the ratios are to busy-poll).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub modes: Vec<Mode>,
    /// Run the modes this many times, taking turns (each round starts one mode later), and
    /// report each mode over all its rounds: on a shared or emulated machine the noise then
    /// falls on every mode alike. `--iters` is per round.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// The run.
    #[command(flatten)]
    pub run: RunArgs,
}

impl RunArgs {
    /// The sizes to run: `--size`, or every power of two with `-a`.
    pub fn sizes(&self) -> Vec<usize> {
        if self.all {
            (1..=23).map(|k| 1usize << k).collect()
        } else {
            vec![self.size]
        }
    }

    /// The run of `mode` at `size`.
    pub fn spec(&self, mode: Mode, size: usize) -> RunSpec {
        RunSpec {
            test: self.test,
            mode,
            size,
            warmup: self.warmup,
            iters: self.iters,
            duration: self
                .duration
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64),
            flows: self.flows,
            shared_state: self.shared_state,
            threads: self.threads.map(usize::from),
            handler_work: self.handler_work,
            tuning: (self.spin.is_some() || self.inline_polls.is_some()).then(|| {
                let base = mode.driver().unwrap_or_default();
                DriverConfig {
                    spin_iterations: self.spin.unwrap_or(base.spin_iterations),
                    inline_polls: self.inline_polls.unwrap_or(base.inline_polls),
                    ..base
                }
            }),
            stall: Duration::from_secs(self.stall.max(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_perftest_like_arguments() {
        let cli = Cli::try_parse_from([
            "rdma-bench",
            "compare",
            "--connect",
            "192.0.2.1:18515",
            "--test",
            "write_lat",
            "-a",
            "--flows",
            "16",
            "--shared-state",
            "--modes",
            "busy-poll,async-mt",
        ])
        .unwrap();
        let Command::Compare(c) = cli.command else {
            panic!("compare")
        };
        assert_eq!(c.modes, vec![Mode::BusyPoll, Mode::AsyncMt]);
        assert_eq!(c.run.test, Test::WriteLat);
        assert_eq!(c.run.sizes().len(), 23);
        assert_eq!(c.run.iters, 1000);
        let s = c.run.spec(Mode::Event, 64);
        assert_eq!((s.flows, s.shared_state, s.size), (16, true, 64));
        assert!(Cli::try_parse_from(["rdma-bench", "client", "--connect", "x"]).is_err());
        assert!(Cli::try_parse_from([
            "rdma-bench",
            "client",
            "--connect",
            "1.2.3.4:1",
            "--mode",
            "poll"
        ])
        .is_err());
    }
}
