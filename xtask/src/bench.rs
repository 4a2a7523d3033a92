//! `cargo xtask bench`: perftest and `rdma-bench` side by side, in one VM boot.
//!
//! On the default device (the soft-RoCE VM with up to 4 vCPUs, unless the machine has a
//! real device): perftest's `ib_send_lat` busy-polling and with `-e` (completion channel), in
//! as many rounds as the compares, half before the `send_lat` compare and half after it
//! (its rows are each kind's median run); `rdma-bench compare` (every dispatch mode, release
//! build, in rounds) for `send_lat`,
//! `write_lat`, the contention case (16 flows updating one shared state) and the same with
//! handlers that compute; the computing flows on 1..=N worker threads of `async-mt`; and an
//! idle connected pair. The script is in `script`. It prints one table per case, perftest's
//! rows next to `rdma-bench`'s modes, every figure with its ratio to the busy-polling run of
//! its own tool in the same boot, then the issue's targets with the measured ratios (for the
//! 1-flow ones, which run three times the rounds, also the ratio within each round: its
//! median, range, and how many rounds meet the target).
//! Everything lands in `target/bench/`: each compare's JSON and latency CDF (SVG), perftest's
//! figures as JSON, and the printed tables (`summary.txt`).

mod results;
mod script;
mod table;

pub use results::{read_bench_json, BenchRun};
pub use script::script_functions;
use script::{bench_steps, CASES, IDLE_SECONDS};
pub use table::{median, side_by_side};

use crate::device::Target;
use crate::process;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `cargo xtask bench` arguments.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Measured iterations per round of a compare (per flow in the 16-flow case), and of
    /// each scaling run [default: 1000; 200 with --quick].
    #[arg(long)]
    pub iters: Option<u64>,
    /// Rounds of each compare: the modes take turns this many times and each is reported
    /// over all its rounds, so the machine's noise falls on every mode alike; the 1-flow
    /// compares run three times as many, and their targets show the ratio within each round
    /// too [default: 5; 1 with --quick].
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Unmeasured iterations before each `rdma-bench` run [default: a tenth of --iters].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Small iteration counts (CI: checks that everything runs, not what it measures).
    #[arg(long)]
    pub quick: bool,
    /// Message size in bytes.
    #[arg(long, default_value_t = 2)]
    pub size: u32,
    /// Virtual CPUs of the VM [default: 4, or fewer when this machine has fewer].
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Time limit in seconds.
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
}

impl BenchArgs {
    fn iters(&self) -> u64 {
        self.iters.unwrap_or(if self.quick { 200 } else { 1000 })
    }

    fn rounds(&self) -> u32 {
        self.rounds.unwrap_or(if self.quick { 1 } else { 5 }).max(1)
    }

    fn warmup(&self) -> u64 {
        self.warmup.unwrap_or(self.iters() / 10)
    }

    fn cpus(&self) -> u32 {
        self.cpus.unwrap_or_else(|| crate::vm::host_cpus().min(4))
    }
}

/// The directory of the bench's files: `target/bench` in the project directory (writable
/// in the VM, unlike a `CARGO_TARGET_DIR` outside it).
pub fn out_dir() -> PathBuf {
    crate::project_root().join("target").join("bench")
}

/// The RDMA device name perftest gets (`-d`).
pub fn device_name(target: &Target) -> String {
    match target {
        Target::Host(dev) => dev.clone(),
        Target::Vm => "rxe0".to_string(),
    }
}

/// Reads `NAME.json` of a compare from `out`; a missing or unreadable file is reported and
/// gives no runs.
pub fn read_case(out: &Path, name: &str) -> Option<Vec<BenchRun>> {
    let path = out.join(format!("{name}.json"));
    let read = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))
        .and_then(|text| read_bench_json(&text).with_context(|| path.display().to_string()));
    match read {
        Ok(runs) => Some(runs),
        Err(e) => {
            eprintln!("xtask: no results for {name}: {e:#}");
            None
        }
    }
}

/// The idle measurement's CPU share in percent of a core, from `idle.json` in `out`.
fn read_idle(out: &Path) -> Option<f64> {
    let path = out.join("idle.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| eprintln!("xtask: no idle figures in {}: {e}", path.display()))
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| eprintln!("xtask: {}: {e}", path.display()))
        .ok()?;
    v["cpu_percent_of_a_core"].as_f64()
}

/// `cargo xtask bench`.
pub fn run(args: &BenchArgs) -> Result<i32> {
    crate::setup::ensure_packages()?;
    let bench = process::build_release("tokio-rdma-bench", "rdma-bench")?;
    let target = Target::detect();
    let out = out_dir();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let cpus = args.cpus();
    eprintln!(
        "xtask: bench on {} ({cpus} vCPUs in the VM)",
        target.describe()
    );
    let script = script_functions(&bench, &target.local_ip(), &out)
        + &bench_steps(&device_name(&target), args, cpus);
    let outcome = target.run_with_cpus(&script, Duration::from_secs(args.timeout), cpus)?;

    let perftest_all = results::perftest_runs(&outcome.output, args.size);
    let perftest = results::medians(&perftest_all);
    let mut summary = format!(
        "cargo xtask bench: {} bytes, {} iterations x {} rounds per mode{}, warm-up {}, {} \
         ({cpus} vCPUs in the VM); ratios to the busy-polling run of the same tool in this \
         boot; perftest's rows: the median of its {} runs each\n\n",
        args.size,
        args.iters(),
        args.rounds(),
        if args.quick { " (--quick)" } else { "" },
        args.warmup(),
        target.describe(),
        args.rounds()
    );
    let mut cases: Vec<Vec<BenchRun>> = Vec::new();
    let mut complete = true;
    for c in &CASES {
        let runs = read_case(&out, c.name);
        complete &= runs.is_some();
        let runs = runs.unwrap_or_default();
        // perftest runs ib_send_lat: its rows go next to the 1-flow send_lat compare only.
        let reference: &[results::PerftestRun] = if c.name == "send_lat" { &perftest } else { &[] };
        summary += &side_by_side(
            &format!("{} bytes {}", args.size, c.title),
            reference,
            &runs,
        );
        summary += &format!(
            "   JSON: {}  latency CDF: {}\n\n",
            out.join(format!("{}.json", c.name)).display(),
            out.join(format!("{}.svg", c.name)).display()
        );
        cases.push(runs);
    }
    let scaling: Vec<(u32, BenchRun)> = (1..=cpus)
        .filter_map(|k| {
            let runs = read_case(&out, &format!("scaling-{k}"))?;
            runs.into_iter().next().map(|r| (k, r))
        })
        .collect();
    complete &= scaling.len() == cpus as usize;
    let callback = cases[3].iter().find(|r| r.mode == "callback");
    summary += &table::scaling(&scaling, callback);
    let idle = read_idle(&out);
    complete &= idle.is_some();
    if let Some(pct) = idle {
        summary += &format!(
            "\n== idle: a connected pair waiting {IDLE_SECONDS} s used {pct:.2}% of a core\n"
        );
    }
    summary += "\n== targets (issue 10), ratios within this run\n";
    for check in table::checks(&perftest, &cases[0], &cases[2]) {
        summary += &format!("{check}\n");
    }
    summary += &table::floor(&cases[2], "16 flows, shared state");
    summary += "  the same, with handlers that compute (a case beyond the issue's):\n";
    for check in table::shared_checks(&cases[3], "16 flows, handler work") {
        summary += &format!("{check}\n");
    }
    let idle_check = table::Check {
        what: "idle connection: CPU share of a core (percent / 100)".into(),
        ratio: idle.map(|pct| pct / 100.0),
        limit: 0.01,
        at_most: true,
        rounds: Vec::new(),
    };
    summary += &format!("{idle_check}\n");
    println!();
    print!("{summary}");
    let perftest_path = out.join("perftest.json");
    std::fs::write(
        &perftest_path,
        serde_json::to_string_pretty(&results::perftest_json(&perftest_all, args.size))? + "\n",
    )
    .with_context(|| format!("writing {}", perftest_path.display()))?;
    let summary_path = out.join("summary.txt");
    std::fs::write(&summary_path, &summary)
        .with_context(|| format!("writing {}", summary_path.display()))?;
    println!(
        "perftest's figures: {}; these tables: {}",
        perftest_path.display(),
        summary_path.display()
    );
    let perftest_expected = 2 * args.rounds() as usize;
    if outcome.status != 0 || !complete || perftest_all.len() < perftest_expected {
        eprintln!(
            "xtask: the bench failed (exit status {}, {} of {perftest_expected} perftest runs \
             read)",
            outcome.status,
            perftest_all.len()
        );
        return Ok(1);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_broken_result_file_gives_no_runs() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read_case(&dir, "none"), None);
        std::fs::write(dir.join("bad.json"), "[{\"mode\": 1}]").unwrap();
        assert_eq!(read_case(&dir, "bad"), None);
        std::fs::write(
            dir.join("ok.json"),
            r#"[{"mode": "async", "test": "send_lat", "size": 2, "flows": 1,
                "n_iterations": 5, "t_typical": 1.0, "t_avg": 1.0, "percentile_99": 1.0,
                "percentile_99.9": 1.0}]"#,
        )
        .unwrap();
        assert_eq!(read_case(&dir, "ok").map(|r| r.len()), Some(1));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
