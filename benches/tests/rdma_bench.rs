//! `rdma-bench` end to end on the device: a server and a client process per case, every
//! mode and test with few iterations, the JSON parsed and checked, `compare`, several flows
//! sharing state, `--duration`, and bad or frozen peers (which must get a clear error, never
//! a hang).
//! Every wait is bounded. Runs in the soft-RoCE VM (`cargo xtask test --quick --no-host
//! rdma_bench`); the server address is TOKIO_RDMA_IP (default 192.0.2.1).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rdma-bench");
const TESTS: [&str; 6] = [
    "send_lat",
    "write_lat",
    "read_lat",
    "send_bw",
    "write_bw",
    "read_bw",
];
const MODES: [&str; 6] = [
    "busy-poll",
    "event",
    "callback",
    "async",
    "async-mt",
    "async-event",
];

/// The cases run one at a time: spinning modes on two vCPUs do not share well.
static SERIAL: Mutex<()> = Mutex::new(());

fn addr(port: u16) -> SocketAddr {
    let ip = std::env::var("TOKIO_RDMA_IP").unwrap_or_else(|_| "192.0.2.1".into());
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("rdma-bench-{}-{name}", std::process::id()))
}

/// A child process killed when dropped (a failed assertion never leaves it running).
struct Proc(Option<Child>);

impl Proc {
    fn spawn(args: &[&str]) -> Self {
        let child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rdma-bench");
        Self(Some(child))
    }

    /// Waits at most `secs` for the exit; kills the process and panics after that.
    fn finish(mut self, what: &str, secs: u64) -> Output {
        let mut child = self.0.take().expect("running");
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if child.try_wait().expect("wait").is_some() {
                return child.wait_with_output().expect("output");
            }
            if Instant::now() > end {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "{what}: still running after {secs}s\nstdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A server on `port` for `sessions` runs, once it is listening (bounded).
fn server(port: u16, sessions: usize) -> Proc {
    server_with(port, sessions, &[])
}

/// As [`server`], with more arguments.
fn server_with(port: u16, sessions: usize, more: &[&str]) -> Proc {
    let bind = addr(port).to_string();
    let sessions = sessions.to_string();
    let mut args = vec!["server", "--bind", &bind, "--sessions", &sessions];
    args.extend_from_slice(more);
    let mut p = Proc::spawn(&args);
    let stderr = p.0.as_mut().and_then(|c| c.stderr.take()).expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("server: {line}");
            let _ = tx.send(line);
        }
    });
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("listening on") => return p,
            Ok(_) => {}
            Err(e) => panic!("server on port {port} not listening: {e}"),
        }
    }
}

fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn json(path: &PathBuf) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("json written");
    let v: Value = serde_json::from_str(&text).expect("valid json");
    match v {
        Value::Array(a) => a,
        other => vec![other],
    }
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// A run's figures are present and plausible.
fn check_run(v: &Value, mode: &str, test: &str, size: usize, flows: usize, iters: usize) {
    assert_eq!(v["mode"], mode, "{v}");
    assert_eq!(v["test"], test, "{v}");
    assert_eq!(num(v, "size") as usize, size, "{v}");
    assert_eq!(num(v, "flows") as usize, flows, "{v}");
    if iters > 0 {
        assert_eq!(num(v, "n_iterations") as usize, iters * flows, "{v}");
    } else {
        assert!(num(v, "n_iterations") > 0.0, "{v}");
    }
    assert!(num(v, "ops_per_sec") > 0.0, "{v}");
    assert!(num(v, "cpu_usec_per_op") > 0.0, "{v}");
    if test.ends_with("_lat") {
        let (min, typ, max) = (num(v, "t_min"), num(v, "t_typical"), num(v, "t_max"));
        assert!(min > 0.0 && min <= typ && typ <= max, "{v}");
        assert!(typ < 100_000.0, "a typical latency of {typ} us: {v}");
        assert!(num(v, "percentile_99") >= typ, "{v}");
        assert!(v.get("BW_average").is_none(), "{v}");
    } else {
        let (avg, peak) = (num(v, "BW_average"), num(v, "BW_peak"));
        assert!(avg > 0.0 && peak >= avg * 0.99, "{v}");
        assert!(num(v, "MsgRate") > 0.0, "{v}");
        assert!(v.get("t_typical").is_none(), "{v}");
    }
}

/// Every test in `mode`, 50 iterations of 64 bytes, against a server in the same mode.
fn every_test(mode: &str, port: u16) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let srv = server(port, TESTS.len());
    let connect = addr(port).to_string();
    for test in TESTS {
        let out = tmp(&format!("{mode}-{test}.json"));
        let client = Proc::spawn(&[
            "client",
            "--connect",
            &connect,
            "--mode",
            mode,
            "--test",
            test,
            "--size",
            "64",
            "--iters",
            "50",
            "--warmup",
            "5",
            "--json",
            out.to_str().unwrap(),
        ]);
        let stdout = ok(&client.finish(&format!("{mode} {test}"), 60), test);
        assert!(stdout.contains(test), "report names the test:\n{stdout}");
        let runs = json(&out);
        assert_eq!(runs.len(), 1);
        check_run(&runs[0], mode, test, 64, 1, 50);
    }
    srv.finish("server", 30);
}

#[test]
#[ignore = "needs an RDMA device"]
fn rdma_bench_busy_poll_every_test() {
    every_test("busy-poll", 18601);
}

#[test]
#[ignore = "needs an RDMA device"]
fn rdma_bench_event_every_test() {
    every_test("event", 18602);
}

#[test]
#[ignore = "needs an RDMA device"]
fn rdma_bench_callback_every_test() {
    every_test("callback", 18603);
}

#[test]
#[ignore = "needs an RDMA device"]
fn rdma_bench_async_every_test() {
    every_test("async", 18604);
}

#[test]
#[ignore = "needs an RDMA device"]
fn rdma_bench_async_mt_every_test() {
    every_test("async-mt", 18605);
}

#[test]
#[ignore = "needs an RDMA device"]
fn rdma_bench_async_event_every_test() {
    every_test("async-event", 18612);
}

/// `async-mt` on 1 and 2 worker threads against a multi-thread server: the JSON says how many
/// workers ran; a raw-verbs client is refused by such a server with the reason.
#[test]
#[ignore = "needs an RDMA device"]
fn rdma_bench_threads() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let srv = server_with(18613, 2, &["--threads", "2"]);
    let connect = addr(18613).to_string();
    // Refused before it counts as one of the server's sessions.
    let client = Proc::spawn(&["client", "--connect", &connect, "--mode", "busy-poll"]);
    let out = client.finish("refused client", 60);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("multi-thread runtime"), "{err}");
    for threads in ["1", "2"] {
        let out = tmp(&format!("threads-{threads}.json"));
        let client = Proc::spawn(&[
            "client",
            "--connect",
            &connect,
            "--mode",
            "async-mt",
            "--threads",
            threads,
            "--flows",
            "4",
            "--shared-state",
            "--iters",
            "100",
            "--json",
            out.to_str().unwrap(),
        ]);
        ok(&client.finish(&format!("{threads} threads"), 60), threads);
        let runs = json(&out);
        check_run(&runs[0], "async-mt", "send_lat", 2, 4, 100);
        assert_eq!(
            runs[0]["threads"].as_u64(),
            threads.parse().ok(),
            "{}",
            runs[0]
        );
    }
    srv.finish("server", 30);
}

/// `compare` runs every mode against one server, in two rounds, and prints one row per mode,
/// with ratios; the JSON has each round's median too.
#[test]
#[ignore = "needs an RDMA device"]
fn rdma_bench_compare_one_row_per_mode() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // Two rounds of 100 iterations each.
    let srv = server(18606, 2 * MODES.len());
    let out = tmp("compare.json");
    let svg = tmp("compare.svg");
    let connect = addr(18606).to_string();
    let client = Proc::spawn(&[
        "compare",
        "--connect",
        &connect,
        "--iters",
        "100",
        "--rounds",
        "2",
        "--json",
        out.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let stdout = ok(&client.finish("compare", 120), "compare");
    println!("{stdout}");
    let runs = json(&out);
    assert_eq!(runs.len(), MODES.len());
    for (run, mode) in runs.iter().zip(MODES) {
        check_run(run, mode, "send_lat", 2, 1, 200);
        // Each round's median, for ratios within a round.
        let rounds = run["rounds_t_typical"]
            .as_array()
            .expect("rounds_t_typical");
        assert_eq!(rounds.len(), 2, "{run}");
        assert!(rounds.iter().all(|t| t.as_f64() > Some(0.0)), "{run}");
    }
    for mode in MODES {
        let rows = stdout
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(mode));
        assert_eq!(rows.count(), 1, "one row for {mode}:\n{stdout}");
    }
    let plot = std::fs::read_to_string(&svg).expect("svg written");
    assert!(plot.contains("<svg"), "an SVG");
    srv.finish("server", 30);
}

/// Several flows updating one shared structure, in the modes that compare on it.
#[test]
#[ignore = "needs an RDMA device"]
fn rdma_bench_flows_shared_state() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let modes = ["busy-poll", "callback", "async", "async-mt"];
    let srv = server(18607, modes.len());
    let out = tmp("flows.json");
    let connect = addr(18607).to_string();
    let client = Proc::spawn(&[
        "compare",
        "--connect",
        &connect,
        "--iters",
        "100",
        "--flows",
        "4",
        "--shared-state",
        "--modes",
        &modes.join(","),
        "--json",
        out.to_str().unwrap(),
    ]);
    ok(&client.finish("flows", 120), "flows");
    let runs = json(&out);
    assert_eq!(runs.len(), modes.len());
    for (run, mode) in runs.iter().zip(modes) {
        check_run(run, mode, "send_lat", 2, 4, 100);
    }
    srv.finish("server", 30);
}

/// `--duration` instead of `--iters`, for a latency and a bandwidth test.
#[test]
#[ignore = "needs an RDMA device"]
fn rdma_bench_duration() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let srv = server(18608, 2);
    let connect = addr(18608).to_string();
    for (test, mode) in [("send_lat", "async"), ("write_bw", "busy-poll")] {
        let out = tmp(&format!("duration-{test}.json"));
        let t = Instant::now();
        let client = Proc::spawn(&[
            "client",
            "--connect",
            &connect,
            "--mode",
            mode,
            "--test",
            test,
            "--duration",
            "0.5",
            "--json",
            out.to_str().unwrap(),
        ]);
        ok(&client.finish(test, 60), test);
        assert!(t.elapsed() >= Duration::from_millis(500));
        check_run(&json(&out)[0], mode, test, 2, 1, 0);
    }
    srv.finish("server", 30);
}

/// Garbage connect private data is refused with the reason, and the server serves on; a
/// client whose "server" answers garbage fails with a clear error.
#[test]
#[ignore = "needs an RDMA device"]
fn rdma_bench_bad_peers_get_clear_errors() {
    use tokio_rdma_cm::{connect, AcceptOptions, ConnectOptions, Error, Listener};

    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let srv = server(18609, 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bound = Duration::from_secs(20);
    for garbage in [&b"hello"[..], &[0x55u8; 56][..]] {
        let opts = ConnectOptions {
            private_data: garbage.to_vec(),
            ..Default::default()
        };
        let r =
            rt.block_on(async { tokio::time::timeout(bound, connect(addr(18609), opts)).await });
        match r.expect("refused in time") {
            Err(Error::Rejected { private_data, .. }) => {
                let text = String::from_utf8_lossy(&private_data);
                assert!(text.contains("rdma-bench: connect request"), "{text}");
            }
            other => panic!("garbage must be rejected, got {other:?}"),
        }
    }
    // The server is still there for a proper client.
    let connect_to = addr(18609).to_string();
    let client = Proc::spawn(&["client", "--connect", &connect_to, "--iters", "20"]);
    ok(&client.finish("client after garbage", 60), "client");
    srv.finish("server", 30);

    // A "server" that accepts with garbage: the client says so and exits.
    let fake = rt.block_on(Listener::bind(addr(18610))).expect("bind");
    let client = Proc::spawn(&[
        "client",
        "--connect",
        &addr(18610).to_string(),
        "--iters",
        "20",
    ]);
    rt.block_on(async {
        let req = tokio::time::timeout(bound, fake.accept())
            .await
            .expect("request in time")
            .expect("request");
        let opts = AcceptOptions {
            private_data: b"not a bench".to_vec(),
            ..Default::default()
        };
        let _conn = req.accept(opts).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let out = client.finish("client against a fake server", 30);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no rdma-bench server"), "{err}");
}

/// A peer that stops answering mid-run (its process frozen: its RC QPs still acknowledge
/// at the transport level, so nothing fails, nothing arrives) fails the run after `--stall`
/// with the reason, in a raw mode and an async mode, never a hang.
#[test]
#[ignore = "needs an RDMA device"]
fn rdma_bench_a_frozen_peer_fails_the_run_after_the_stall() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    for (mode, port) in [("callback", 18614u16), ("async", 18615)] {
        let srv = server(port, 1);
        let pid = srv.0.as_ref().expect("running").id().to_string();
        let connect_to = addr(port).to_string();
        let client = Proc::spawn(&[
            "client",
            "--connect",
            &connect_to,
            "--mode",
            mode,
            "--duration",
            "120",
            "--stall",
            "2",
        ]);
        // Connected and running by then (the setup takes well under a second in the VM).
        std::thread::sleep(Duration::from_secs(5));
        let stop = Command::new("kill").args(["-STOP", &pid]).status();
        assert!(stop.expect("kill -STOP").success());
        let out = client.finish(&format!("{mode} client of a frozen server"), 30);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{mode}: {err}");
        assert!(
            err.contains("no progress from the peer for 2s"),
            "{mode}: {err}"
        );
        drop(srv);
    }
}

/// Messages above the inline limit (sent from registered memory) in a raw and an async mode.
#[test]
#[ignore = "needs an RDMA device"]
fn rdma_bench_large_messages() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cases = [
        ("busy-poll", "send_lat"),
        ("callback", "write_lat"),
        ("async", "send_lat"),
        ("async", "write_lat"),
        ("event", "read_bw"),
        ("async-mt", "send_bw"),
    ];
    let srv = server(18611, cases.len());
    let connect = addr(18611).to_string();
    for (mode, test) in cases {
        let out = tmp(&format!("large-{mode}-{test}.json"));
        let client = Proc::spawn(&[
            "client",
            "--connect",
            &connect,
            "--mode",
            mode,
            "--test",
            test,
            "--size",
            "65536",
            "--iters",
            "30",
            "--json",
            out.to_str().unwrap(),
        ]);
        ok(&client.finish(&format!("{mode} {test}"), 60), test);
        check_run(&json(&out)[0], mode, test, 65536, 1, 30);
    }
    srv.finish("server", 30);
}
