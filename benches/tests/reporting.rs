//! The JSON file's keys, the comparison table's ratios, the perftest-like blocks and the CDF
//! plot.

use std::path::PathBuf;

use tokio_rdma_bench::clock::CycleClock;
use tokio_rdma_bench::plot::latency_cdf_svg;
use tokio_rdma_bench::report::{
    format_bandwidth, format_latency, write_json, CompareTable, Figure,
};
use tokio_rdma_bench::stats::{Bandwidth, Latency, RunResult};

/// A latency run of `mode` whose samples are `deltas` usec (mock clock, not halved).
fn lat_run(mode: &str, size: usize, deltas_usec: &[u64]) -> RunResult {
    let (clock, _) = CycleClock::mock();
    let mut stamps = vec![0u64];
    for d in deltas_usec {
        stamps.push(stamps.last().unwrap() + d * 1000);
    }
    RunResult {
        mode: mode.into(),
        test: "send_lat".into(),
        size,
        flows: 1,
        threads: None,
        iters: stamps.len(),
        latency: Latency::from_stamps(&stamps, &clock, false),
        bandwidth: None,
        cpu_usec_per_op: 2.0,
        ops_per_sec: 100_000.0,
        samples_usec: Latency::samples_usec(&stamps, &clock, false),
        rounds_t_typical: Vec::new(),
    }
}

fn bw_run(mode: &str) -> RunResult {
    let (clock, _) = CycleClock::mock();
    RunResult {
        mode: mode.into(),
        test: "write_bw".into(),
        size: 65536,
        flows: 1,
        threads: None,
        iters: 2,
        latency: None,
        bandwidth: Bandwidth::from_run(65536, &[0, 1000], &[4000, 5000], &clock),
        cpu_usec_per_op: 1.5,
        ops_per_sec: 400_000.0,
        samples_usec: Vec::new(),
        rounds_t_typical: Vec::new(),
    }
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("rdma-bench-test-{}-{name}", std::process::id()))
}

fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[test]
fn json_uses_perftests_out_json_keys_flat() {
    let lat = serde_json::to_value(lat_run("async", 2, &[1, 2, 3, 4, 5, 6])).unwrap();
    let mut expected = vec![
        "mode",
        "test",
        "size",
        "flows",
        "n_iterations",
        "t_min",
        "t_max",
        "t_typical",
        "t_avg",
        "t_stdev",
        "t_stdev_exact",
        "percentile_99",
        "percentile_99.9",
        "p50",
        "cpu_usec_per_op",
        "ops_per_sec",
    ];
    expected.sort();
    assert_eq!(keys(&lat), expected);
    assert_eq!(lat["n_iterations"], 7);
    assert_eq!(lat["t_typical"], 2.5);
    assert_eq!(lat["mode"], "async");

    let bw = serde_json::to_value(bw_run("busy-poll")).unwrap();
    let mut expected = vec![
        "mode",
        "test",
        "size",
        "flows",
        "n_iterations",
        "BW_peak",
        "BW_average",
        "MsgRate",
        "cpu_usec_per_op",
        "ops_per_sec",
    ];
    expected.sort();
    assert_eq!(keys(&bw), expected);
}

#[test]
fn write_json_writes_an_array_that_reads_back() {
    let path = temp_path("results.json");
    let results = [lat_run("busy-poll", 2, &[1, 2, 3, 4]), bw_run("async")];
    write_json(&path, &results).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let array = v.as_array().unwrap();
    assert_eq!(array.len(), 2);
    assert_eq!(array[0]["mode"], "busy-poll");
    assert!(array[0].get("percentile_99.9").is_some());
    assert!(array[1].get("BW_average").is_some());
    assert!(write_json(std::path::Path::new("/nonexistent/dir/x.json"), &results).is_err());
}

#[test]
fn compare_divides_each_figure_by_the_baselines_of_the_same_test_and_size() {
    // Medians (m odd, 3 kept of 5): busy-poll 2, async 3, callback 4; size 64: busy-poll 10.
    let mut results = vec![
        lat_run("busy-poll", 2, &[1, 2, 3, 100, 100]),
        lat_run("async", 2, &[2, 3, 4, 100, 100]),
        lat_run("callback", 2, &[3, 4, 5, 100, 100]),
        lat_run("busy-poll", 64, &[9, 10, 11, 100, 100]),
        lat_run("async", 64, &[10, 11, 12, 100, 100]),
        lat_run("event", 4096, &[1, 1, 1, 100, 100]),
    ];
    results[1].cpu_usec_per_op = 1.0; // busy-poll spins: 2.0
    let table = CompareTable::new(&results, "busy-poll");
    assert_eq!(
        table.figures,
        [
            Figure::TTypical,
            Figure::TAvg,
            Figure::P99,
            Figure::P99_9,
            Figure::CpuPerOp,
            Figure::OpsPerSec
        ]
    );
    let typical = |row: usize| table.rows[row].cells[0].unwrap();
    assert_eq!(typical(0).ratio, Some(1.0));
    assert_eq!(typical(1).value, 3.0);
    assert_eq!(typical(1).ratio, Some(1.5));
    assert_eq!(typical(2).ratio, Some(2.0));
    assert_eq!(typical(4).ratio, Some(11.0 / 10.0));
    assert_eq!(typical(5).ratio, None, "no busy-poll run of 4096 bytes");
    assert_eq!(table.rows[1].cells[4].unwrap().ratio, Some(0.5));

    let text = table.to_string();
    assert_eq!(text.lines().count(), 2 + results.len(), "{text}");
    assert!(text.contains("ratios to busy-poll"));
    assert!(text.contains("t_typical[usec]"));
    assert!(text.contains("3.00 (1.50x)"), "{text}");
    assert!(text.contains("(-)"), "{text}");
    assert!(
        !text.contains("MsgRate"),
        "no bandwidth run, no bandwidth column: {text}"
    );
}

#[test]
fn compare_mixes_latency_and_bandwidth_runs_and_skips_a_zero_baseline() {
    let mut base = bw_run("busy-poll");
    base.ops_per_sec = 0.0;
    let results = [base, bw_run("async"), lat_run("async", 2, &[1, 2, 3])];
    let table = CompareTable::new(&results, "busy-poll");
    assert_eq!(table.figures.len(), Figure::ALL.len());
    let ops = table
        .figures
        .iter()
        .position(|f| *f == Figure::OpsPerSec)
        .unwrap();
    let msg = table
        .figures
        .iter()
        .position(|f| *f == Figure::MsgRate)
        .unwrap();
    let typical = table
        .figures
        .iter()
        .position(|f| *f == Figure::TTypical)
        .unwrap();
    assert_eq!(
        table.rows[1].cells[ops].unwrap().ratio,
        None,
        "baseline 0 has no ratio"
    );
    assert_eq!(table.rows[1].cells[msg].unwrap().ratio, Some(1.0));
    assert_eq!(table.rows[0].cells[typical], None);
    assert!(table
        .to_string()
        .lines()
        .nth(1)
        .unwrap()
        .contains("BW avg[MiB/s]"));
}

#[test]
fn blocks_use_perftests_headers() {
    let text = format_latency(&lat_run("async", 2, &[1, 2, 3, 4, 5, 6]));
    assert!(text.contains("t_typical[usec]") && text.contains("99.9% percentile[usec]"));
    assert!(text.contains("send_lat mode: async, flows: 1"));
    assert!(
        text.lines()
            .any(|l| l.starts_with(" 2       7 ") && l.contains("2.50")),
        "{text}"
    );
    let none = format_latency(&lat_run("async", 2, &[1]));
    assert!(none.contains("too few iterations"), "{none}");
    let text = format_bandwidth(&bw_run("async"));
    assert!(text.contains("BW peak[MiB/sec]") && text.contains("MsgRate[Mpps]"));
}

#[test]
fn cdf_svg_has_one_curve_per_run_with_samples() {
    let path = temp_path("cdf.svg");
    let deltas: Vec<u64> = (1..500).map(|i| 1 + i % 37).collect();
    let results = [
        lat_run("busy-poll", 2, &deltas),
        lat_run("async", 2, &deltas[7..]),
        bw_run("callback"), // no samples: no curve
    ];
    latency_cdf_svg(&path, &results).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.contains("Latency CDF"));
    assert!(svg.contains("busy-poll send_lat 2B") && svg.contains("async send_lat 2B"));
    assert!(!svg.contains("callback"));
    // Curves and legend marks are the only 2-wide lines (axes and ticks are 1 wide).
    let wide = svg
        .split("<polyline")
        .filter(|p| p.contains("stroke-width=\"2\""))
        .count();
    assert_eq!(wide, 4, "two curves, two legend marks");
}

#[test]
fn cdf_svg_without_samples_is_an_error() {
    let path = temp_path("empty.svg");
    assert!(latency_cdf_svg(&path, &[bw_run("async")]).is_err());
    assert!(!path.exists());
}
