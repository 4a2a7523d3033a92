//! The bench tables' and target checks' tests.

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

#[test]
fn the_floor_is_the_raw_loop_against_callback() {
    let shared = [
        run("busy-poll", 16, 300.0, 660.0, 22000.0),
        run("callback", 16, 320.0, 700.0, 20000.0),
    ];
    let line = floor(&shared, "16 flows");
    assert!(line.contains("99% / callback 99% 0.94x"), "{line}");
    assert!(line.contains("ops/s / callback ops/s 1.10x"), "{line}");
    assert!(floor(&shared[1..], "16 flows").contains("99% -"));
}
