//! Printing and writing results: perftest-like blocks for one run, a comparison table across
//! modes, and the JSON file.
//!
//! The blocks use perftest's column headers and number formats (`RESULT_FMT_LAT` /
//! `REPORT_FMT_LAT` and `RESULT_FMT` / `REPORT_FMT` in perftest's
//! `src/perftest_parameters.h`), with this harness's own columns appended after perftest's.

use std::fmt::{self, Write as _};
use std::path::Path;

use anyhow::Context as _;

use crate::stats::RunResult;

/// perftest's `RESULT_LINE`.
const RESULT_LINE: &str =
    "---------------------------------------------------------------------------------------";

/// The latency block for one run: a line naming the run, perftest's header and row, then
/// this harness's p50 and CPU time per operation.
pub fn format_latency(r: &RunResult) -> String {
    let mut out = run_title(r);
    let Some(l) = &r.latency else {
        let _ = writeln!(
            out,
            " (too few iterations for a latency report: {})",
            r.iters
        );
        return out;
    };
    let _ = writeln!(
        out,
        " #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    \
         t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec]    p50[usec]   \
         CPU[usec/op]"
    );
    let _ = writeln!(
        out,
        " {:<7} {:<10}          {:<7.2}        {:<7.2}      {:<7.2}  \t       {:<7.2}     \
         \t{:<7.2}\t\t{:<7.2} \t\t{:<7.2}   \t{:<7.2}     {:<7.3}",
        r.size,
        r.iters,
        l.t_min,
        l.t_max,
        l.t_typical,
        l.t_avg,
        l.t_stdev,
        l.percentile_99,
        l.percentile_99_9,
        l.p50,
        r.cpu_usec_per_op
    );
    out.push_str(RESULT_LINE);
    out.push('\n');
    out
}

/// The bandwidth block for one run: a line naming the run, perftest's header and row, then
/// this harness's CPU time per operation.
pub fn format_bandwidth(r: &RunResult) -> String {
    let mut out = run_title(r);
    let Some(b) = &r.bandwidth else {
        let _ = writeln!(
            out,
            " (no bandwidth report: the run took no time or had no messages)"
        );
        return out;
    };
    let _ = writeln!(
        out,
        " #bytes     #iterations    BW peak[MiB/sec]    BW average[MiB/sec]   MsgRate[Mpps]   \
         CPU[usec/op]"
    );
    let _ = writeln!(
        out,
        " {:<7}    {:<10}       {:<7.2}            {:<7.2}\t\t     {:<7.6}        {:<7.3}",
        r.size, r.iters, b.bw_peak, b.bw_average, b.msg_rate, r.cpu_usec_per_op
    );
    out.push_str(RESULT_LINE);
    out.push('\n');
    out
}

fn run_title(r: &RunResult) -> String {
    format!(
        "{RESULT_LINE}\n {} mode: {}, flows: {}\n{RESULT_LINE}\n",
        r.test, r.mode, r.flows
    )
}

/// Prints [`format_latency`] to stdout.
pub fn print_latency(r: &RunResult) {
    print!("{}", format_latency(r));
}

/// Prints [`format_bandwidth`] to stdout.
pub fn print_bandwidth(r: &RunResult) {
    print!("{}", format_bandwidth(r));
}

/// A column of the comparison table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Figure {
    /// Median latency (perftest `t_typical`), usec.
    TTypical,
    /// Mean latency, usec.
    TAvg,
    /// 99th percentile latency, usec.
    P99,
    /// 99.9th percentile latency, usec.
    P99_9,
    /// Average bandwidth, MiB/s.
    BwAverage,
    /// Message rate, Mpps.
    MsgRate,
    /// CPU time per operation, usec.
    CpuPerOp,
    /// Operations per second.
    OpsPerSec,
}

impl Figure {
    /// Every figure, in table order.
    pub const ALL: [Figure; 8] = [
        Figure::TTypical,
        Figure::TAvg,
        Figure::P99,
        Figure::P99_9,
        Figure::BwAverage,
        Figure::MsgRate,
        Figure::CpuPerOp,
        Figure::OpsPerSec,
    ];

    /// Column header.
    pub fn label(self) -> &'static str {
        match self {
            Figure::TTypical => "t_typical[usec]",
            Figure::TAvg => "t_avg[usec]",
            Figure::P99 => "99%[usec]",
            Figure::P99_9 => "99.9%[usec]",
            Figure::BwAverage => "BW avg[MiB/s]",
            Figure::MsgRate => "MsgRate[Mpps]",
            Figure::CpuPerOp => "CPU[usec/op]",
            Figure::OpsPerSec => "ops/s",
        }
    }

    /// This figure of a run, if the run has it.
    pub fn of(self, r: &RunResult) -> Option<f64> {
        let l = r.latency.as_ref();
        let b = r.bandwidth.as_ref();
        match self {
            Figure::TTypical => l.map(|l| l.t_typical),
            Figure::TAvg => l.map(|l| l.t_avg),
            Figure::P99 => l.map(|l| l.percentile_99),
            Figure::P99_9 => l.map(|l| l.percentile_99_9),
            Figure::BwAverage => b.map(|b| b.bw_average),
            Figure::MsgRate => b.map(|b| b.msg_rate),
            Figure::CpuPerOp => Some(r.cpu_usec_per_op),
            Figure::OpsPerSec => Some(r.ops_per_sec),
        }
    }

    fn format(self, value: f64) -> String {
        match self {
            Figure::MsgRate => format!("{value:.4}"),
            Figure::CpuPerOp => format!("{value:.3}"),
            Figure::OpsPerSec => format!("{value:.0}"),
            _ => format!("{value:.2}"),
        }
    }
}

/// One figure of one run in the comparison table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cell {
    /// The run's figure.
    pub value: f64,
    /// `value / baseline's value`, when the run has a baseline with a usable (finite,
    /// non-zero) value of the same figure.
    pub ratio: Option<f64>,
}

/// One run's row of the comparison table.
#[derive(Clone, Debug, PartialEq)]
pub struct CompareRow {
    /// The run's mode.
    pub mode: String,
    /// The run's test.
    pub test: String,
    /// The run's message size.
    pub size: usize,
    /// The run's number of flows.
    pub flows: usize,
    /// One cell per column of [`CompareTable::figures`]; `None` where the run lacks it.
    pub cells: Vec<Option<Cell>>,
}

/// Every run against the baseline mode: a row per run, each figure with its ratio to the
/// same figure of the baseline mode's run of the same test, size and flows (so one table can
/// hold several sizes). Ratios are plain quotients for every figure: above 1 means slower for
/// latencies and CPU time, faster for rates.
#[derive(Clone, Debug, PartialEq)]
pub struct CompareTable {
    /// The baseline mode.
    pub baseline: String,
    /// The columns: the figures at least one run has.
    pub figures: Vec<Figure>,
    /// The rows, in the order of the results.
    pub rows: Vec<CompareRow>,
}

impl CompareTable {
    /// Builds the table for `results` against the runs whose mode is `baseline`.
    pub fn new(results: &[RunResult], baseline: &str) -> Self {
        let figures: Vec<Figure> = Figure::ALL
            .into_iter()
            .filter(|f| results.iter().any(|r| f.of(r).is_some()))
            .collect();
        let rows = results
            .iter()
            .map(|r| {
                let base = results.iter().find(|b| {
                    b.mode == baseline && b.test == r.test && b.size == r.size && b.flows == r.flows
                });
                let cells = figures
                    .iter()
                    .map(|f| {
                        let value = f.of(r)?;
                        let ratio = base
                            .and_then(|b| f.of(b))
                            .filter(|b| b.is_finite() && *b != 0.0)
                            .map(|b| value / b);
                        Some(Cell { value, ratio })
                    })
                    .collect();
                CompareRow {
                    mode: r.mode.clone(),
                    test: r.test.clone(),
                    size: r.size,
                    flows: r.flows,
                    cells,
                }
            })
            .collect();
        Self {
            baseline: baseline.to_owned(),
            figures,
            rows,
        }
    }
}

impl fmt::Display for CompareTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut table: Vec<Vec<String>> = vec![["mode", "test", "#bytes", "flows"]
            .into_iter()
            .map(str::to_owned)
            .chain(self.figures.iter().map(|fig| fig.label().to_owned()))
            .collect()];
        for row in &self.rows {
            let mut line = vec![
                row.mode.clone(),
                row.test.clone(),
                row.size.to_string(),
                row.flows.to_string(),
            ];
            for (fig, cell) in self.figures.iter().zip(&row.cells) {
                line.push(match cell {
                    None => "-".to_owned(),
                    Some(Cell { value, ratio }) => match ratio {
                        Some(ratio) => format!("{} ({ratio:.2}x)", fig.format(*value)),
                        None => format!("{} (-)", fig.format(*value)),
                    },
                });
            }
            table.push(line);
        }
        let widths: Vec<usize> = (0..table[0].len())
            .map(|c| table.iter().map(|l| l[c].len()).max().unwrap_or(0))
            .collect();
        writeln!(f, "ratios to {} (same test, size and flows)", self.baseline)?;
        for line in &table {
            let mut text = String::new();
            for (c, (cell, width)) in line.iter().zip(&widths).enumerate() {
                // Names left-aligned, numbers right-aligned.
                if c < 2 {
                    let _ = write!(text, " {cell:<width$} ");
                } else {
                    let _ = write!(text, " {cell:>width$} ");
                }
            }
            writeln!(f, "{}", text.trim_end())?;
        }
        Ok(())
    }
}

/// Prints one table to stdout, a row per run (mode), each figure with its ratio to the
/// `baseline` mode's (see [`CompareTable`]).
pub fn print_compare(results: &[RunResult], baseline: &str) {
    print!("{}", CompareTable::new(results, baseline));
}

/// Writes `results` to `path` as a JSON array of [`RunResult`] objects (perftest's
/// `--out_json` key names for the perftest figures).
pub fn write_json(path: &Path, results: &[RunResult]) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(results).context("serializing the results")?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
