//! The side-by-side table of `cargo xtask bench` and the demo: perftest's rows next to
//! `rdma-bench`'s modes, each figure with its ratio to the busy-polling run of the same tool
//! in the same VM boot; then the issue's targets, each with its measured ratio.

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

/// One of the issue's targets with what this run measured.
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

/// The issue's targets (issue 10) measured on this run: `one_flow` is the 1-flow send_lat
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

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(t: f64, p99: f64, cpu: Option<f64>, ops: Option<f64>) -> Figures {
        Figures {
            t_typical: t,
            t_avg: t + 1.0,
            p99,
            p99_9: p99 * 2.0,
            cpu_usec_per_op: cpu,
            ops_per_sec: ops,
        }
    }

    fn perftest(key: &str, t: f64) -> PerftestRun {
        PerftestRun {
            key: key.into(),
            iters: 100,
            figures: figures(t, t * 3.0, None, None),
        }
    }

    fn run(mode: &str, flows: u64, t: f64, p99: f64, ops: f64) -> BenchRun {
        BenchRun {
            mode: mode.into(),
            test: "send_lat".into(),
            size: 2,
            flows,
            iters: 100,
            figures: figures(t, p99, Some(t * 2.0), Some(ops)),
            rounds_t_typical: Vec::new(),
        }
    }

    #[test]
    fn rows_carry_ratios_to_their_own_tools_busy_run() {
        let pt = [
            perftest(PERFTEST_BUSY, 10.0),
            perftest(PERFTEST_EVENT, 50.0),
        ];
        let runs = [
            run(BUSY_POLL, 1, 20.0, 40.0, 1000.0),
            run("event", 1, 100.0, 200.0, 250.0),
            run("async", 1, 22.0, 80.0, 900.0),
        ];
        let t = side_by_side("send_lat", &pt, &runs);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "== send_lat");
        // Cells are separated by two spaces or more.
        let cells = |i: usize| -> Vec<String> {
            lines[i]
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        };
        assert_eq!(
            cells(1)[..4],
            ["tool", "mode", "t_typical[usec]", "x perftest"]
        );
        // perftest -e: 5x perftest's busy polling; no CPU or rate figures.
        assert_eq!(
            cells(3),
            [
                "perftest",
                "event",
                "50.00 (5.00x)",
                "-",
                "51.00 (4.64x)",
                "150.00 (5.00x)",
                "300.00 (5.00x)",
                "-",
                "-"
            ]
        );
        // rdma-bench event: 5x its busy-poll, 2x perftest -e; async 1.1x and 2.2x busy.
        assert_eq!(
            cells(5)[..4],
            ["rdma-bench", "event", "100.00 (5.00x)", "2.00x"]
        );
        assert_eq!(
            cells(6)[..4],
            ["rdma-bench", "async", "22.00 (1.10x)", "2.20x"]
        );
        assert_eq!(cells(6)[7..], ["44.000 (1.10x)", "900 (0.90x)"]);
        // The columns line up: every row as wide as the header.
        assert!(lines[2..].iter().all(|l| l.len() == lines[1].len()), "{t}");
    }

    #[test]
    fn scaling_rows_carry_ratios_to_one_thread() {
        let runs = [
            (1, run("async-mt", 16, 500.0, 900.0, 1000.0)),
            (2, run("async-mt", 16, 300.0, 700.0, 1800.0)),
        ];
        let cb = run("callback", 16, 400.0, 1200.0, 1500.0);
        let t = scaling(&runs, Some(&cb));
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("== async-mt throughput"), "{t}");
        assert!(lines[2].contains("async-mt, 1 thread ") && lines[2].contains("1000 (1.00x)"));
        assert!(lines[3].contains("async-mt, 2 threads") && lines[3].contains("1800 (1.80x)"));
        assert!(
            lines[4].contains("callback") && lines[4].contains("1500 (1.50x)"),
            "{t}"
        );
        assert!(lines[3].contains("700.00"), "{t}");
    }

    #[test]
    fn without_perftest_or_baseline_there_is_no_ratio_column() {
        let runs = [run("async", 16, 22.0, 80.0, 900.0)];
        let t = side_by_side("contention", &[], &runs);
        assert!(!t.contains("x perftest"), "{t}");
        assert!(t.contains("22.00 (-)"), "{t}");
    }

    #[test]
    fn checks_compare_the_issues_ratios() {
        let pt = [
            perftest(PERFTEST_BUSY, 10.0),
            perftest(PERFTEST_EVENT, 50.0),
        ];
        let one = [
            run(BUSY_POLL, 1, 20.0, 40.0, 1000.0),
            run("event", 1, 40.0, 200.0, 250.0),
            run(ASYNC_EVENT, 1, 45.0, 200.0, 250.0),
            run("callback", 1, 21.0, 40.0, 1000.0),
            run("async", 1, 23.0, 80.0, 900.0),
        ];
        let shared = [
            run("callback", 16, 20.0, 100.0, 1000.0),
            run("async", 16, 20.0, 40.0, 1200.0),
            run("async-mt", 16, 20.0, 60.0, 800.0),
        ];
        let c = checks(&pt, &one, &shared);
        let got: Vec<(f64, Option<bool>)> = c
            .iter()
            .map(|c| ((c.ratio.unwrap() * 1000.0).round() / 1000.0, c.met()))
            .collect();
        assert_eq!(
            got,
            [
                (1.15, Some(false)),
                (0.9, Some(true)),
                (1.095, Some(false)),
                (0.4, Some(true)),
                (0.6, Some(false)),
                (1.2, Some(true)),
                (0.8, Some(false)),
            ]
        );
        assert!(c[0]
            .to_string()
            .contains("1.15x  (target <= 1.10x)  NOT met"));
        assert!(c[5].to_string().contains("(target > 1.00x)  met"));
        assert!(
            !c[0].to_string().contains("by round"),
            "one round: no per-round ratios"
        );
        // With rounds, the ratio within each round too: async 22, 26, 21 against 20, 20, 21.
        let mut one = one;
        one[0].rounds_t_typical = vec![20.0, 20.0, 21.0];
        one[4].rounds_t_typical = vec![22.0, 26.0, 21.0];
        let c = checks(&pt, &one, &shared);
        assert_eq!(c[0].rounds, [1.1, 1.3, 1.0]);
        assert!(c[0]
            .to_string()
            .ends_with("[by round: median 1.10x, 1.00-1.30x, 2 of 3 within]"));
        assert!(c[2].rounds.is_empty(), "callback ran no rounds");
        // Missing runs: not measured.
        let none = checks(&[], &[], &[]);
        assert!(none.iter().all(|c| c.met().is_none()));
        assert!(none[0].to_string().ends_with("not measured"));
    }
}
