//! The side-by-side table of `cargo xtask bench` and the demo: perftest's rows next to
//! `rdma-bench`'s modes, each figure with its ratio to the busy-polling run of the same tool
//! in the same VM boot; then the targets, each with its measured ratio.

use super::results::{BenchRun, Figures, PerftestRun};
use std::fmt::Write as _;

/// perftest's busy-polling run's key (the baseline of perftest's rows).
pub const PERFTEST_BUSY: &str = "perftest-busy";
/// perftest's `-e` run's key (the reference of `rdma-bench`'s event mode).
pub const PERFTEST_EVENT: &str = "perftest-event";
/// `rdma-bench`'s baseline mode.
pub const BUSY_POLL: &str = "busy-poll";
/// tokio-rdma's event mode (the driver parks at once, futures poll once: nothing spins).
pub const ASYNC_EVENT: &str = "async-event";

/// `value / base` when both are usable (finite, base non-zero).
fn ratio(value: f64, base: f64) -> Option<f64> {
    (value.is_finite() && base.is_finite() && base != 0.0).then(|| value / base)
}

fn cell(value: Option<f64>, base: Option<f64>, decimals: usize) -> String {
    match value {
        None => "-".into(),
        Some(v) => match base.and_then(|b| ratio(v, b)) {
            Some(r) => format!("{v:.decimals$} ({r:.2}x)"),
            None => format!("{v:.decimals$} (-)"),
        },
    }
}

/// One row's cells after the names: each figure with its ratio to `base`'s.
fn figure_cells(f: &Figures, base: Option<&Figures>) -> Vec<String> {
    vec![
        cell(Some(f.t_typical), base.map(|b| b.t_typical), 2),
        cell(Some(f.t_avg), base.map(|b| b.t_avg), 2),
        cell(Some(f.p99), base.map(|b| b.p99), 2),
        cell(Some(f.p99_9), base.map(|b| b.p99_9), 2),
        cell(f.cpu_usec_per_op, base.and_then(|b| b.cpu_usec_per_op), 3),
        cell(f.ops_per_sec, base.and_then(|b| b.ops_per_sec), 0),
    ]
}

/// The perftest run `rdma-bench`'s `mode` is measured against: `-e` for the event modes
/// (raw `event` and tokio-rdma's `async-event`: nothing spins in either), busy-polling for
/// every other mode.
fn perftest_reference<'a>(perftest: &'a [PerftestRun], mode: &str) -> Option<&'a PerftestRun> {
    let key = if mode == "event" || mode == ASYNC_EVENT {
        PERFTEST_EVENT
    } else {
        PERFTEST_BUSY
    };
    perftest.iter().find(|p| p.key == key)
}

/// The table: a heading line `== title`, then one row per perftest run and per `rdma-bench`
/// run. Every figure carries its ratio to the busy-polling run of its own tool (perftest's
/// busy run, `rdma-bench`'s busy-poll of the same test, size and flows); with perftest rows
/// present a column `x perftest` gives each `rdma-bench` run's `t_typical` over perftest's
/// (over `-e` for event mode, over busy polling for the others).
pub fn side_by_side(title: &str, perftest: &[PerftestRun], runs: &[BenchRun]) -> String {
    let with_perftest = !perftest.is_empty();
    let mut header = vec!["tool", "mode", "t_typical[usec]"];
    if with_perftest {
        header.push("x perftest");
    }
    header.extend([
        "t_avg[usec]",
        "99%[usec]",
        "99.9%[usec]",
        "CPU[usec/op]",
        "ops/s",
    ]);
    let mut grid: Vec<Vec<String>> = vec![header.into_iter().map(String::from).collect()];
    let perftest_base = perftest.iter().find(|p| p.key == PERFTEST_BUSY);
    for p in perftest {
        let mut row = vec![
            "perftest".to_string(),
            p.key
                .strip_prefix("perftest-")
                .unwrap_or(&p.key)
                .to_string(),
        ];
        let mut cells = figure_cells(&p.figures, perftest_base.map(|b| &b.figures));
        if with_perftest {
            cells.insert(1, "-".into());
        }
        row.extend(cells);
        grid.push(row);
    }
    for r in runs {
        let base = runs.iter().find(|b| {
            b.mode == BUSY_POLL && b.test == r.test && b.size == r.size && b.flows == r.flows
        });
        let mut row = vec!["rdma-bench".to_string(), r.mode.clone()];
        let mut cells = figure_cells(&r.figures, base.map(|b| &b.figures));
        if with_perftest {
            let vs = perftest_reference(perftest, &r.mode)
                .and_then(|p| ratio(r.figures.t_typical, p.figures.t_typical))
                .map_or("-".into(), |x| format!("{x:.2}x"));
            cells.insert(1, vs);
        }
        row.extend(cells);
        grid.push(row);
    }
    let widths: Vec<usize> = (0..grid[0].len())
        .map(|c| grid.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = format!("== {title}\n");
    for row in &grid {
        let mut line = String::new();
        for (c, (text, width)) in row.iter().zip(&widths).enumerate() {
            // Names left-aligned, figures right-aligned.
            if c < 2 {
                let _ = write!(line, " {text:<width$} ");
            } else {
                let _ = write!(line, " {text:>width$} ");
            }
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

/// The scaling series: `async-mt` with 16 flows sharing state (handlers that compute) on
/// 1..=N worker threads, each row's throughput with its ratio to one thread's, and callback
/// mode's (one polling thread by design) from the same case's compare for reference.
pub fn scaling(runs: &[(u32, BenchRun)], callback: Option<&BenchRun>) -> String {
    let one = runs.iter().find(|(k, _)| *k == 1).map(|(_, r)| &r.figures);
    let mut grid = vec![["run", "ops/s", "t_typical[usec]", "99%[usec]"].map(String::from)];
    for (k, r) in runs {
        let f = &r.figures;
        grid.push([
            format!("async-mt, {k} thread{}", if *k == 1 { "" } else { "s" }),
            cell(f.ops_per_sec, one.and_then(|o| o.ops_per_sec), 0),
            format!("{:.2}", f.t_typical),
            format!("{:.2}", f.p99),
        ]);
    }
    if let Some(c) = callback {
        let f = &c.figures;
        grid.push([
            "callback (1 polling thread)".into(),
            cell(f.ops_per_sec, one.and_then(|o| o.ops_per_sec), 0),
            format!("{:.2}", f.t_typical),
            format!("{:.2}", f.p99),
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|c| grid.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::from(
        "== async-mt throughput by worker threads (16 flows, shared state, handler work; ratios \
         to 1 thread)\n",
    );
    for row in &grid {
        let mut line = format!(" {:<w$} ", row[0], w = widths[0]);
        for c in 1..4 {
            let _ = write!(line, " {:>w$} ", row[c], w = widths[c]);
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

/// One of the targets with what this run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// What is compared.
    pub what: String,
    /// The measured ratio; `None` when a run it needs is missing.
    pub ratio: Option<f64>,
    /// The target.
    pub limit: f64,
    /// Whether the ratio must stay at or under the limit (else above it).
    pub at_most: bool,
    /// The same ratio within each round (runs side by side, in the same stretch of the
    /// machine's load), where the compare has rounds; empty otherwise.
    pub rounds: Vec<f64>,
}

impl Check {
    /// Whether the run meets the target (`None` without a measurement).
    pub fn met(&self) -> Option<bool> {
        self.ratio.map(|r| {
            if self.at_most {
                r <= self.limit
            } else {
                r > self.limit
            }
        })
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let measured = self.ratio.map_or("-".into(), |r| format!("{r:.2}x"));
        let op = if self.at_most { "<=" } else { ">" };
        let verdict = match self.met() {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        write!(
            f,
            "  {:<58} {measured:>7}  (target {op} {:.2}x)  {verdict}",
            self.what, self.limit
        )?;
        if !self.rounds.is_empty() {
            let n = self.rounds.len();
            let median = median(self.rounds.clone());
            let (low, high) = self
                .rounds
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &r| {
                    (l.min(r), h.max(r))
                });
            let within = self
                .rounds
                .iter()
                .filter(|&&r| {
                    if self.at_most {
                        r <= self.limit
                    } else {
                        r > self.limit
                    }
                })
                .count();
            write!(
                f,
                "  [by round: median {median:.2}x, {low:.2}-{high:.2}x, {within} of {n} within]"
            )?;
        }
        Ok(())
    }
}

/// The median of `v` (the mean of the two middle values for an even count; NaN when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `a / b` within each round, when both ran the same rounds.
fn round_ratios(a: Option<&BenchRun>, b: Option<&BenchRun>) -> Vec<f64> {
    match (a, b) {
        (Some(a), Some(b)) if a.rounds_t_typical.len() == b.rounds_t_typical.len() => a
            .rounds_t_typical
            .iter()
            .zip(&b.rounds_t_typical)
            .filter_map(|(&x, &y)| ratio(x, y))
            .collect(),
        _ => Vec::new(),
    }
}

fn run_of<'a>(runs: &'a [BenchRun], mode: &str) -> Option<&'a BenchRun> {
    runs.iter().find(|r| r.mode == mode)
}

fn mode<'a>(runs: &'a [BenchRun], mode: &str) -> Option<&'a Figures> {
    run_of(runs, mode).map(|r| &r.figures)
}

/// The targets (issue 10) measured on this run: `one_flow` is the 1-flow send_lat
/// compare, `shared` the 16-flow compare with shared state.
pub fn checks(perftest: &[PerftestRun], one_flow: &[BenchRun], shared: &[BenchRun]) -> Vec<Check> {
    let typical = |a: Option<&Figures>, b: Option<&Figures>| ratio(a?.t_typical, b?.t_typical);
    let perftest_e = perftest
        .iter()
        .find(|p| p.key == PERFTEST_EVENT)
        .map(|p| &p.figures);
    let one = |m| mode(one_flow, m);
    let rounds = |a, b| round_ratios(run_of(one_flow, a), run_of(one_flow, b));
    let mut out = vec![
        Check {
            what: "send_lat async t_typical / busy-poll".into(),
            ratio: typical(one("async"), one(BUSY_POLL)),
            limit: 1.10,
            at_most: true,
            rounds: rounds("async", BUSY_POLL),
        },
        Check {
            what: "send_lat async-event t_typical / perftest -e".into(),
            ratio: typical(one(ASYNC_EVENT), perftest_e),
            limit: 1.0,
            at_most: true,
            rounds: Vec::new(),
        },
        Check {
            what: "send_lat async t_typical / callback (1 flow)".into(),
            ratio: typical(one("async"), one("callback")),
            limit: 1.05,
            at_most: true,
            rounds: rounds("async", "callback"),
        },
    ];
    out.extend(shared_checks(shared, "16 flows, shared state"));
    out
}

/// The targets of a run of many flows sharing state (`label` names it): async and async-mt
/// p99 at most half of callback's, and more operations per second.
pub fn shared_checks(shared: &[BenchRun], label: &str) -> Vec<Check> {
    let p99 = |a: Option<&Figures>, b: Option<&Figures>| ratio(a?.p99, b?.p99);
    let ops = |a: Option<&Figures>, b: Option<&Figures>| ratio(a?.ops_per_sec?, b?.ops_per_sec?);
    let sh = |m| mode(shared, m);
    let mut out = Vec::new();
    for m in ["async", "async-mt"] {
        out.push(Check {
            what: format!("{label}: {m} 99% / callback 99%"),
            ratio: p99(sh(m), sh("callback")),
            limit: 0.5,
            at_most: true,
            rounds: Vec::new(),
        });
    }
    for m in ["async", "async-mt"] {
        out.push(Check {
            what: format!("{label}: {m} ops/s / callback ops/s"),
            ratio: ops(sh(m), sh("callback")),
            limit: 1.0,
            at_most: false,
            rounds: Vec::new(),
        });
    }
    out
}

/// What this machine gives with no dispatch layer at all: the raw busy-polling loop's 99% and
/// throughput against callback's in the `shared` compare. A dispatch layer does more work per
/// completion than that loop and meets the same noise, so this is about the best a 16-flow
/// run here can show (a line of the summary, not a target).
pub fn floor(shared: &[BenchRun], label: &str) -> String {
    let busy = mode(shared, "busy-poll");
    let callback = mode(shared, "callback");
    let show = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.2}x"));
    let p99 = show(busy.zip(callback).and_then(|(b, c)| ratio(b.p99, c.p99)));
    let ops = show(
        busy.zip(callback)
            .and_then(|(b, c)| ratio(b.ops_per_sec?, c.ops_per_sec?)),
    );
    format!(
        "  {label}: busy-poll (raw verbs, no dispatch layer) 99% / callback 99% {p99}, \
         ops/s / callback ops/s {ops}: what this machine gives with no dispatch at all\n"
    )
}

#[cfg(test)]
mod tests;
