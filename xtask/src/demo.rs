//! `cargo xtask demo`: the project's main job on the default device.
//!
//! rdma-core's `rping` loopback as a smoke step, then tokio-rdma's `pingpong` (server and
//! client, RC SEND/RECV, awaiting tasks) next to perftest's `ib_send_lat`, busy-polling and
//! waiting on the completion channel (`-e`), in one run on the same device, with the ratios.

use crate::device::Target;
use crate::process;
use anyhow::{bail, Result};
use std::time::Duration;

/// `cargo xtask demo` arguments.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Ping-pong iterations.
    #[arg(long, default_value_t = 1000)]
    pub iters: u32,
    /// Message size in bytes.
    #[arg(long, default_value_t = 2)]
    pub size: u32,
    /// Time limit in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

/// `cargo xtask demo`.
pub fn run(args: &DemoArgs) -> Result<i32> {
    let target = Target::detect();
    let pingpong = build_pingpong()?;
    let ip = target.local_ip();
    let dev = match &target {
        Target::Host(dev) => dev.clone(),
        Target::Vm => "rxe0".to_string(),
    };
    eprintln!("xtask: demo on {}", target.describe());
    let (iters, size) = (args.iters, args.size);
    let mut script = format!(
        r#"set -e
# A client started before its server listens fails at once: retry it for a while.
retry() {{ for i in 1 2 3 4 5 6 7 8 9 10; do sleep 1; "$@" && return 0; done; return 1; }}
echo "== rdma-core rping loopback (smoke)"
rping -s -a {ip} -C 3 >/dev/null & srv=$!
retry rping -c -a {ip} -C 3 -v
wait $srv
echo "== perftest ib_send_lat, busy polling ({size} B, {iters} iterations)"
ib_send_lat -d {dev} -x 1 -n {iters} -s {size} >/dev/null 2>&1 & srv=$!
retry ib_send_lat -d {dev} -x 1 -n {iters} -s {size} {ip} > /tmp/lat.txt
grep -A1 t_typical /tmp/lat.txt
wait $srv
echo "== perftest ib_send_lat -e, waiting on the completion channel"
ib_send_lat -d {dev} -x 1 -n {iters} -s {size} -e >/dev/null 2>&1 & srv=$!
retry ib_send_lat -d {dev} -x 1 -n {iters} -s {size} -e {ip} > /tmp/lat.txt
grep -A1 t_typical /tmp/lat.txt
wait $srv
"#
    );
    if let Some(bin) = pingpong {
        let bin = process::shell_quote(&bin);
        script += &format!(
            r#"echo "== tokio-rdma pingpong ({size} B, {iters} iterations): awaiting tasks"
{bin} -d {dev} -s {size} -n {iters} >/dev/null & srv=$!
{bin} -d {dev} -s {size} -n {iters} {ip}
wait $srv
"#
        );
    }
    let outcome = target.run(&script, Duration::from_secs(args.timeout))?;
    if outcome.status != 0 {
        bail!("the demo failed (exit status {})", outcome.status);
    }
    print_summary(&outcome.output, size);
    Ok(0)
}

/// Average half round trips (µs) found in the demo's output, in order: perftest busy-poll,
/// perftest `-e`, tokio-rdma pingpong.
fn half_round_trips(output: &[String], size: u32) -> Vec<(&'static str, f64)> {
    let mut found = Vec::new();
    let mut perftest = [
        "perftest ib_send_lat (busy polling)",
        "perftest ib_send_lat -e (completion channel)",
    ]
    .into_iter();
    let size = size.to_string();
    for line in output {
        let words: Vec<&str> = line.split_whitespace().collect();
        // perftest row: #bytes #iterations t_min t_max t_typical t_avg ... (already RTT/2)
        if words.len() >= 6 && words[0] == size && words[1].parse::<u64>().is_ok() {
            if let (Some(name), Ok(avg)) = (perftest.next(), words[5].parse::<f64>()) {
                found.push((name, avg));
            }
        }
        // pingpong: "N iters in S seconds = U usec/iter" (a full round trip per iteration)
        if let Some(pos) = words.iter().position(|w| *w == "usec/iter") {
            if let Some(Ok(us)) = pos.checked_sub(1).map(|i| words[i].parse::<f64>()) {
                found.push(("tokio-rdma pingpong (awaiting task)", us / 2.0));
            }
        }
    }
    found
}

fn print_summary(output: &[String], size: u32) {
    let rows = half_round_trips(output, size);
    let Some(&(_, base)) = rows.first() else {
        return;
    };
    println!();
    println!("== {size}-byte RC ping-pong, one run on one device: average half round trip");
    for (name, us) in &rows {
        println!(
            "  {name:<46} {us:>9.2} us   {:>6.2}x busy polling",
            us / base
        );
    }
}

/// Builds the `pingpong` example (release) and returns its path, once it exists.
fn build_pingpong() -> Result<Option<String>> {
    let root = crate::project_root();
    if !root.join("examples/src/bin/pingpong.rs").is_file() {
        return Ok(None);
    }
    process::run(
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "-p",
                "tokio-rdma-examples",
                "--bin",
                "pingpong",
            ]),
    )?;
    Ok(Some(
        root.join("target/release/pingpong")
            .to_string_lossy()
            .into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::half_round_trips;

    #[test]
    fn reads_perftest_rows_and_pingpong_lines() {
        let out: Vec<String> = [
            " 2       1000          11.37          190.75       11.99    \t       13.38 ",
            " 2       1000          60.72          1348.18      122.65   \t       140.51 ",
            "1000 iters in 0.03 seconds = 30.00 usec/iter",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let rows = half_round_trips(&out, 2);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].1, 13.38);
        assert_eq!(rows[1].1, 140.51);
        assert_eq!(rows[2].1, 15.0);
    }
}
