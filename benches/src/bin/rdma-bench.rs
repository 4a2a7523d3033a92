//! `rdma-bench`: perftest-like comparison of tokio-rdma's async dispatch with callback and
//! busy-poll dispatch over a real RDMA device (see the crate docs and `--help`).

use anyhow::{Context as _, Result};
use clap::Parser;
use tokio_rdma_bench::cli::{Cli, Command, RunArgs};
use tokio_rdma_bench::protocol::Mode;
use tokio_rdma_bench::session::{client, server};
use tokio_rdma_bench::stats::RunResult;
use tokio_rdma_bench::{idle, plot, progress, report};

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Server(a) => server::run(
            a.bind,
            server::ServeOptions {
                sessions: a.sessions,
                threads: a.threads.map(usize::from),
                mode: a.mode,
            },
        ),
        Command::Client(a) => {
            let sizes = a.run.sizes();
            let bar = progress::bar(sizes.len() as u64, "runs");
            let mut results = Vec::new();
            for size in sizes {
                bar.set_message(format!("{} {size} B", a.mode));
                let r = client::run(a.run.connect, &a.run.spec(a.mode, size))
                    .with_context(|| format!("{} {} B", a.mode, size))?;
                bar.suspend(|| print_one(&r));
                bar.inc(1);
                results.push(r);
            }
            bar.finish_and_clear();
            outputs(&a.run, &results)
        }
        Command::Idle(a) => {
            let seconds = if a.seconds.is_finite() && a.seconds > 0.0 {
                a.seconds
            } else {
                anyhow::bail!("--seconds must be positive")
            };
            let r = idle::run(a.bind, std::time::Duration::from_secs_f64(seconds))?;
            println!(
                "idle connected pair for {:.2} s: {:.3} s of CPU, {:.2}% of a core",
                r.wall.as_secs_f64(),
                r.cpu.as_secs_f64(),
                r.percent_of_a_core()
            );
            if let Some(path) = &a.json {
                let j = serde_json::json!({
                    "wall_sec": r.wall.as_secs_f64(),
                    "cpu_sec": r.cpu.as_secs_f64(),
                    "cpu_percent_of_a_core": r.percent_of_a_core(),
                });
                std::fs::write(path, format!("{j:#}\n"))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::Compare(a) => {
            let modes = if a.modes.is_empty() {
                Mode::ALL.to_vec()
            } else {
                a.modes.clone()
            };
            let sizes = a.run.sizes();
            let rounds = a.rounds as usize;
            // One step per run, between runs: nothing is drawn while one measures.
            let bar = progress::bar((sizes.len() * modes.len() * rounds) as u64, "runs");
            let mut all = Vec::new();
            for size in sizes {
                let mut measured: Vec<Vec<client::Measured>> =
                    modes.iter().map(|_| Vec::new()).collect();
                for round in 0..rounds {
                    for k in 0..modes.len() {
                        let i = (k + round) % modes.len();
                        let mode = modes[i];
                        bar.set_message(format!("{mode} {size} B"));
                        let m = client::measure(a.run.connect, &a.run.spec(mode, size))
                            .with_context(|| format!("{mode} {size} B, round {}", round + 1))?;
                        bar.inc(1);
                        measured[i].push(m);
                    }
                }
                let results: Vec<_> = modes
                    .iter()
                    .zip(&measured)
                    .map(|(&mode, m)| client::assemble_rounds(&a.run.spec(mode, size), m))
                    .collect();
                bar.suspend(|| report::print_compare(&results, Mode::BusyPoll.name()));
                all.extend(results);
            }
            bar.finish_and_clear();
            outputs(&a.run, &all)
        }
    }
}

fn print_one(r: &RunResult) {
    if r.latency.is_some() || r.bandwidth.is_none() {
        report::print_latency(r);
    } else {
        report::print_bandwidth(r);
    }
}

fn outputs(run: &RunArgs, results: &[RunResult]) -> Result<()> {
    if let Some(path) = &run.json {
        report::write_json(path, results)?;
    }
    if let Some(path) = &run.plot {
        plot::latency_cdf_svg(path, results)?;
    }
    Ok(())
}
