//! The figures both tools report, read from their outputs: perftest's latency row (stdout)
//! and `rdma-bench`'s JSON (`--json`, perftest's `--out_json` key names).

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// One run's latency figures: one-way microseconds as both tools report them (perftest's
/// rules: RTT/2 for ping-pongs, the 2 largest samples dropped), plus what only `rdma-bench`
/// measures.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Median (perftest's `t_typical`).
    pub t_typical: f64,
    /// Mean.
    pub t_avg: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// Process CPU time (user + system) per operation, microseconds (`rdma-bench` only).
    pub cpu_usec_per_op: Option<f64>,
    /// Operations per second of wall time, all flows together (`rdma-bench` only).
    pub ops_per_sec: Option<f64>,
}

/// A perftest run found in the output: the key of the `@@ KEY` marker before it, its
/// iterations and figures.
#[derive(Debug, Clone, PartialEq)]
pub struct PerftestRun {
    /// The marker's key (`perftest-busy`, `perftest-event`).
    pub key: String,
    /// Iterations (perftest's `#iterations` column).
    pub iters: u64,
    /// Its figures.
    pub figures: Figures,
}

/// Reads one data row of perftest's latency table for messages of `size` bytes:
/// `#bytes #iterations t_min t_max t_typical t_avg t_stdev 99% 99.9%` (perftest 4.5; tabs
/// and spaces between the columns). Anything else (headers, other sizes) is `None`.
pub fn parse_perftest_row(line: &str, size: u32) -> Option<(u64, Figures)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.len() < 9 || words[0].parse::<u32>().ok()? != size {
        return None;
    }
    let iters = words[1].parse::<u64>().ok()?;
    let num = |i: usize| words[i].parse::<f64>().ok().filter(|v| v.is_finite());
    Some((
        iters,
        Figures {
            t_typical: num(4)?,
            t_avg: num(5)?,
            p99: num(7)?,
            p99_9: num(8)?,
            cpu_usec_per_op: None,
            ops_per_sec: None,
        },
    ))
}

/// Every perftest run in `output`: the first row of `size` bytes after each `@@ KEY` marker
/// line (a marker whose client failed has no row and yields nothing).
pub fn perftest_runs(output: &[String], size: u32) -> Vec<PerftestRun> {
    let mut runs = Vec::new();
    let mut current: Option<String> = None;
    for line in output {
        if let Some(key) = line.trim().strip_prefix("@@ ") {
            // Only perftest's markers: other steps (rdma-bench's) print rows of their own.
            let key = key.trim();
            current = key.starts_with("perftest").then(|| key.to_string());
            continue;
        }
        if current.is_none() {
            continue;
        }
        if let Some((iters, figures)) = parse_perftest_row(line, size) {
            if let Some(key) = current.take() {
                runs.push(PerftestRun {
                    key,
                    iters,
                    figures,
                });
            }
        }
    }
    runs
}

/// Of each key's runs, the one with the median `t_typical` (the lower middle of an even
/// count), keys in the order they first appear. perftest runs in rounds spread around the
/// `send_lat` compare, whose modes are pooled over rounds: one perftest run alone is at the
/// mercy of the machine's drift (in one boot, its busy run gave 14.9 us while both tools'
/// other busy figures were 30-35 us).
pub fn medians(runs: &[PerftestRun]) -> Vec<PerftestRun> {
    let mut keys: Vec<&str> = Vec::new();
    for r in runs {
        if !keys.contains(&r.key.as_str()) {
            keys.push(&r.key);
        }
    }
    keys.iter()
        .filter_map(|k| {
            let mut of_key: Vec<&PerftestRun> = runs.iter().filter(|r| r.key == *k).collect();
            of_key.sort_by(|a, b| a.figures.t_typical.total_cmp(&b.figures.t_typical));
            of_key.get((of_key.len() - 1) / 2).map(|r| (*r).clone())
        })
        .collect()
}

/// perftest's runs as JSON, with perftest's `--out_json` key names and the same keys as
/// `rdma-bench`'s runs for what they share (`tool`, `mode`, `test`, `size`).
pub fn perftest_json(runs: &[PerftestRun], size: u32) -> Value {
    Value::Array(
        runs.iter()
            .map(|r| {
                json!({
                    "tool": "perftest ib_send_lat",
                    "mode": r.key.strip_prefix("perftest-").unwrap_or(&r.key),
                    "test": "send_lat",
                    "size": size,
                    "n_iterations": r.iters,
                    "t_typical": r.figures.t_typical,
                    "t_avg": r.figures.t_avg,
                    "percentile_99": r.figures.p99,
                    "percentile_99.9": r.figures.p99_9,
                })
            })
            .collect(),
    )
}

/// One run of `rdma-bench`, read from its JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRun {
    /// Dispatch mode (`busy-poll`, `event`, `callback`, `async`, `async-mt`).
    pub mode: String,
    /// Test (`send_lat`, `write_lat`, ...).
    pub test: String,
    /// Message size in bytes.
    pub size: u64,
    /// Connections.
    pub flows: u64,
    /// Measured iterations.
    pub iters: u64,
    /// Its figures.
    pub figures: Figures,
    /// Each round's `t_typical`, in the order run (`rounds_t_typical`; empty for a run of
    /// one round).
    pub rounds_t_typical: Vec<f64>,
}

/// Reads the file `rdma-bench --json` writes: an array of runs (one object is accepted too).
/// A latency test's run has every latency key; a run without them (a bandwidth test) is an
/// error, as this harness compares latencies.
pub fn read_bench_json(text: &str) -> Result<Vec<BenchRun>> {
    let value: Value = serde_json::from_str(text).context("not JSON")?;
    let items = match value {
        Value::Array(items) => items,
        obj @ Value::Object(_) => vec![obj],
        other => bail!("expected an array of runs, found {other}"),
    };
    items.iter().map(bench_run).collect()
}

fn bench_run(v: &Value) -> Result<BenchRun> {
    let text = |k: &str| {
        v[k].as_str()
            .map(str::to_string)
            .with_context(|| format!("run without a `{k}` string: {v}"))
    };
    let int = |k: &str| {
        v[k].as_u64()
            .with_context(|| format!("run without a `{k}` count: {v}"))
    };
    let num = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("run without a `{k}` figure: {v}"))
    };
    Ok(BenchRun {
        mode: text("mode")?,
        test: text("test")?,
        size: int("size")?,
        flows: int("flows")?,
        iters: int("n_iterations")?,
        figures: Figures {
            t_typical: num("t_typical")?,
            t_avg: num("t_avg")?,
            p99: num("percentile_99")?,
            p99_9: num("percentile_99.9")?,
            cpu_usec_per_op: v["cpu_usec_per_op"].as_f64(),
            ops_per_sec: v["ops_per_sec"].as_f64(),
        },
        rounds_t_typical: match &v["rounds_t_typical"] {
            Value::Null => Vec::new(),
            Value::Array(items) => items
                .iter()
                .map(|t| t.as_f64().filter(|t| t.is_finite() && *t > 0.0))
                .collect::<Option<_>>()
                .with_context(|| format!("a round's t_typical is not a positive figure: {v}"))?,
            other => bail!("`rounds_t_typical` is not an array: {other}"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn perftest_rounds_come_down_to_the_median_run_of_each_key() {
        let run = |key: &str, t: f64| PerftestRun {
            key: key.into(),
            iters: 1000,
            figures: Figures {
                t_typical: t,
                t_avg: t + 1.0,
                p99: 0.0,
                p99_9: 0.0,
                cpu_usec_per_op: None,
                ops_per_sec: None,
            },
        };
        let runs = [
            run("perftest-busy", 30.0),
            run("perftest-event", 140.0),
            run("perftest-busy", 14.9),
            run("perftest-event", 110.0),
            run("perftest-busy", 33.0),
            run("perftest-event", 120.0),
            run("perftest-event", 150.0),
        ];
        let m = medians(&runs);
        assert_eq!(m.len(), 2);
        // The whole run is kept (its mean goes with its median), not a mix of runs.
        assert_eq!(
            (m[0].key.as_str(), m[0].figures.t_typical),
            ("perftest-busy", 30.0)
        );
        assert_eq!(m[0].figures.t_avg, 31.0);
        // Four runs: the lower middle.
        assert_eq!(
            (m[1].key.as_str(), m[1].figures.t_typical),
            ("perftest-event", 120.0)
        );
        assert!(medians(&[]).is_empty());
    }

    #[test]
    fn reads_perftest_rows_of_the_size_only() {
        // ib_send_lat 4.5's header and row (tabs inside, as printed).
        let header = " #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] ";
        let row = " 2       1000          11.37          190.75       11.99    \t       13.38    \t6.93   \t\t38.52   \t\t190.75  ";
        assert_eq!(parse_perftest_row(header, 2), None);
        let (iters, f) = parse_perftest_row(row, 2).unwrap();
        assert_eq!(iters, 1000);
        assert_eq!(
            (f.t_typical, f.t_avg, f.p99, f.p99_9),
            (11.99, 13.38, 38.52, 190.75)
        );
        assert_eq!((f.cpu_usec_per_op, f.ops_per_sec), (None, None));
        assert_eq!(parse_perftest_row(row, 4), None);
        // Too short (the demo's older two-figure lines) or not numbers.
        assert_eq!(parse_perftest_row(" 2 1000 1.0 2.0 1.5 1.6", 2), None);
        assert_eq!(parse_perftest_row(" 2 1000 1 2 x 1 1 1 1", 2), None);
        assert_eq!(parse_perftest_row(" 2 1000 1 2 inf 1 1 1 1", 2), None);
    }

    #[test]
    fn perftest_rows_belong_to_the_marker_before_them() {
        let out = lines(&[
            " 2 1000 9 9 9 9 9 9 9",
            "@@ perftest-busy",
            " #bytes #iterations ...",
            " 2       500   1.0   9.0   2.0   2.5   0.1   5.0   9.0",
            " 2       500   1.0   9.0   7.0   7.5   0.1   8.0   9.0",
            "@@ perftest-event",
            "Couldn't connect to 192.0.2.1:18515",
            "@@ perftest-event",
            " 2       500   3.0   9.0   4.0   4.5   0.1   6.0   9.0",
            // rdma-bench's steps print rows of the same shape: not perftest's.
            "@@ rdma-bench contention",
            " 2       500   3.0   9.0   4.0   4.5   0.1   6.0   9.0",
        ]);
        let runs = perftest_runs(&out, 2);
        assert_eq!(runs.len(), 2);
        assert_eq!(
            (runs[0].key.as_str(), runs[0].iters),
            ("perftest-busy", 500)
        );
        assert_eq!(runs[0].figures.t_typical, 2.0);
        assert_eq!(runs[1].key, "perftest-event");
        assert_eq!(runs[1].figures.p99, 6.0);
        let j = perftest_json(&runs, 2);
        assert_eq!(j[1]["mode"], "event");
        assert_eq!(j[0]["percentile_99.9"], 9.0);
        assert_eq!(j[0]["n_iterations"], 500);
    }

    #[test]
    fn reads_rdma_bench_json() {
        // As rdma-bench writes it (RunResult: flattened latency, bandwidth absent).
        let text = r#"[
          {"mode": "busy-poll", "test": "send_lat", "size": 2, "flows": 1, "n_iterations": 500,
           "t_min": 27.8, "t_max": 452.8, "t_typical": 42.0, "t_avg": 45.7, "t_stdev": 20.2,
           "t_stdev_exact": 20.4, "percentile_99": 190.5, "percentile_99.9": 452.8,
           "p50": 42.0, "cpu_usec_per_op": 122.8, "ops_per_sec": 7371.2},
          {"mode": "async", "test": "send_lat", "size": 2, "flows": 16, "n_iterations": 8000,
           "t_typical": 24.1, "t_avg": 28.4, "percentile_99": 105.0, "percentile_99.9": 132.8,
           "cpu_usec_per_op": 95.2, "ops_per_sec": 9959.0, "rounds_t_typical": [23.5, 25.0]}
        ]"#;
        let runs = read_bench_json(text).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].mode, "busy-poll");
        assert_eq!((runs[0].size, runs[0].flows, runs[0].iters), (2, 1, 500));
        assert_eq!(runs[0].figures.p99_9, 452.8);
        assert_eq!(runs[1].figures.ops_per_sec, Some(9959.0));
        assert_eq!(runs[1].flows, 16);
        assert_eq!(runs[0].rounds_t_typical, Vec::<f64>::new());
        assert_eq!(runs[1].rounds_t_typical, [23.5, 25.0]);
        // One object alone is one run.
        let one = read_bench_json(
            r#"{"mode": "event", "test": "write_lat", "size": 8, "flows": 1, "n_iterations": 9,
               "t_typical": 1.0, "t_avg": 1.0, "percentile_99": 1.0, "percentile_99.9": 1.0}"#,
        )
        .unwrap();
        assert_eq!(one[0].figures.cpu_usec_per_op, None);
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn bandwidth_runs_and_garbage_are_errors() {
        let bw = r#"[{"mode": "async", "test": "send_bw", "size": 2, "flows": 1,
            "n_iterations": 5, "BW_peak": 1.0, "BW_average": 1.0, "MsgRate": 0.5,
            "cpu_usec_per_op": 1.0, "ops_per_sec": 1.0}]"#;
        let err = read_bench_json(bw).unwrap_err().to_string();
        assert!(err.contains("t_typical"), "{err}");
        assert!(read_bench_json("not json").is_err());
        assert!(read_bench_json("42").is_err());
        let lat = r#"{"mode": "event", "test": "send_lat", "size": 8, "flows": 1,
            "n_iterations": 9, "t_typical": 1.0, "t_avg": 1.0, "percentile_99": 1.0,
            "percentile_99.9": 1.0, "rounds_t_typical": ROUNDS}"#;
        for bad in ["[1.0, -2.0]", "[1.0, \"x\"]", "3.0"] {
            let err = read_bench_json(&lat.replace("ROUNDS", bad)).unwrap_err();
            assert!(format!("{err:#}").contains("round"), "{bad}: {err:#}");
        }
    }
}
