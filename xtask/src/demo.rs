//! `cargo xtask demo`: the project's main job on the default device.
//!
//! rdma-core's `rping` loopback as a smoke step, then tokio-rdma's `rping` example against
//! rdma-core's both ways (our server with its client, its server with our client, `-V`), then a 2-byte RC ping-pong, several rounds,
//! each round running side by side on the same device: perftest's `ib_send_lat` busy-polling
//! and waiting on the completion channel (`-e`), and tokio-rdma's `pingpong` (an awaiting
//! task) in five settings: the default (the loop in a task of its own, whose awaiting future
//! spins on the CQ itself while it is the only busy one), awaited in `main` (tokio's
//! `block_on` future, woken by the spinning completion driver; `--in-main`), woken by the
//! driver only (`--inline-polls 1`), inline busy-poll (`--inline-polls 1000000`), and event
//! mode (the driver parks at once and nothing spins, like `-e`). The summary gives each one's median
//! one-way latency (the median over rounds of each run's median) and its ratio to
//! busy-polling (the median over rounds of the ratio within each round), and to `-e` for
//! event mode. Last, a short `rdma-bench compare` of the same ping-pong (`send_lat`) in every
//! dispatch mode (busy-poll, event, callback, async, async-mt, async-event): its table, with ratios to
//! busy-poll within the run, and the path of its latency CDF plot (`target/bench/`).

use crate::bench::median;
use crate::device::Target;
use crate::process;
use anyhow::{bail, Result};
use std::time::Duration;

/// `cargo xtask demo` arguments.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Ping-pong iterations per run.
    #[arg(long, default_value_t = 2000)]
    pub iters: u32,
    /// Message size in bytes.
    #[arg(long, default_value_t = 2)]
    pub size: u32,
    /// Rounds: every variant runs once per round, interleaved, so drifting machine load
    /// hits all of them alike.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Time limit in seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
}

/// One measured variant: its key in the demo's output, how the summary names it, and what it
/// runs (server and client alike; the client gets the server's address appended).
struct Variant {
    key: &'static str,
    name: &'static str,
    pingpong: bool,
    args: &'static str,
}

const BUSY: Variant = Variant {
    key: "perftest-busy",
    name: "perftest ib_send_lat (busy polling)",
    pingpong: false,
    args: "",
};
const EVENT: Variant = Variant {
    key: "perftest-event",
    name: "perftest ib_send_lat -e (completion channel)",
    pingpong: false,
    args: "-e",
};
const AWAIT_EVENT: Variant = Variant {
    key: "tokio-rdma-event",
    name: "tokio-rdma: awaiting, event mode",
    pingpong: true,
    args: "--spin 0 --inline-polls 1",
};
/// In the order they run and are reported.
const VARIANTS: [Variant; 7] = [
    BUSY,
    EVENT,
    Variant {
        key: "tokio-rdma",
        name: "tokio-rdma pingpong: awaiting task",
        pingpong: true,
        args: "",
    },
    Variant {
        key: "tokio-rdma-main",
        name: "tokio-rdma: awaiting in main (block_on)",
        pingpong: true,
        args: "--in-main",
    },
    Variant {
        key: "tokio-rdma-driver",
        name: "tokio-rdma: awaiting, woken by the driver",
        pingpong: true,
        args: "--inline-polls 1",
    },
    Variant {
        key: "tokio-rdma-inline",
        name: "tokio-rdma: awaiting, inline busy-poll",
        pingpong: true,
        args: "--inline-polls 1000000",
    },
    AWAIT_EVENT,
];

/// `cargo xtask demo`.
pub fn run(args: &DemoArgs) -> Result<i32> {
    crate::setup::ensure_packages()?;
    let target = Target::detect();
    let pingpong = build_example("pingpong")?;
    let rping = build_example("rping")?;
    let bench = process::build_release("tokio-rdma-bench", "rdma-bench")?;
    let out = crate::bench::out_dir();
    let ip = target.local_ip();
    let dev = crate::bench::device_name(&target);
    eprintln!("xtask: demo on {}", target.describe());
    let (iters, size) = (args.iters, args.size);
    let rping_steps = rping
        .map(|bin| rping_steps(&process::shell_quote(&bin), &ip))
        .unwrap_or_default();
    // `retry` and `compare` come from the bench's script; `compare` runs with `|| true`
    // (so without `set -e` inside) and records a failure in `failed`.
    let mut script = String::from("set -e\n")
        + &crate::bench::script_functions(&bench, &ip, &out)
        + &format!(
            r#"echo "== rdma-core rping loopback (smoke)"
rping -s -a {ip} -C 3 >/dev/null & srv=$!
retry rping -c -a {ip} -C 3 -v
wait $srv
{rping_steps}# pair KEY COMMAND...: COMMAND as server, then as client of {ip}; prints "@@ KEY" and the
# client's latency table.
pair() {{
  key=$1; shift
  "$@" >/dev/null & srv=$!
  echo "@@ $key"
  retry "$@" {ip} | grep -A1 t_typical
  wait $srv
}}
"#
        );
    let perftest = format!("ib_send_lat -d {dev} -x 1 -n {iters} -s {size}");
    let pingpong = pingpong.map(|bin| {
        let bin = process::shell_quote(&bin);
        format!("{bin} -d {dev} -s {size} -n {iters}")
    });
    for round in 1..=args.rounds {
        script += &format!(
            "echo \"== round {round} of {}: {size}-byte RC ping-pong, {iters} iterations\"\n",
            args.rounds
        );
        for v in &VARIANTS {
            let command = if v.pingpong {
                pingpong.as_ref()
            } else {
                Some(&perftest)
            };
            if let Some(command) = command {
                script += &format!("pair {} {command} {}\n", v.key, v.args);
            }
        }
    }
    script += &format!(
        "echo \"== rdma-bench compare: {size}-byte send_lat, {iters} iterations, every dispatch mode\"\n\
         compare {COMPARE} 18524 1 mirror --test send_lat --size {size} --iters {iters} --warmup {} || true\n\
         exit $failed\n",
        iters / 10
    );
    let outcome = target.run(&script, Duration::from_secs(args.timeout))?;
    print_summary(&outcome.output, size);
    if let Some(runs) = crate::bench::read_case(&out, COMPARE) {
        println!();
        print!(
            "{}",
            crate::bench::side_by_side(
                &format!(
                    "rdma-bench compare: {size}-byte send_lat, {iters} iterations; \
                     ratios to busy-poll within the run"
                ),
                &[],
                &runs
            )
        );
        println!(
            "  latency CDFs: {}",
            out.join(format!("{COMPARE}.svg")).display()
        );
    }
    if outcome.status != 0 {
        bail!("the demo failed (exit status {})", outcome.status);
    }
    Ok(0)
}

/// The name of the demo's `rdma-bench compare` files in `target/bench/`.
const COMPARE: &str = "demo-send_lat";

/// Per variant key, the `(t_typical, t_avg)` one-way latencies (µs) of each run, in order:
/// the row after an `@@ KEY` marker (perftest's format, which `pingpong` prints too:
/// `#bytes #iterations t_min t_max t_typical t_avg ...`).
fn runs(output: &[String], size: u32) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut found: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut current: Option<String> = None;
    let size = size.to_string();
    for line in output {
        if let Some(key) = line.trim().strip_prefix("@@ ") {
            current = Some(key.trim().to_string());
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() < 6 || words[0] != size || words[1].parse::<u64>().is_err() {
            continue;
        }
        let (Some(key), Ok(typical), Ok(avg)) = (
            current.take(),
            words[4].parse::<f64>(),
            words[5].parse::<f64>(),
        ) else {
            continue;
        };
        match found.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push((typical, avg)),
            None => found.push((key, vec![(typical, avg)])),
        }
    }
    found
}

/// The median over rounds of `variant / base`, each pair from the same round (runs side by
/// side see the same machine load; ratios across rounds would mix load swings in).
fn paired_ratio(variant: &[(f64, f64)], base: &[(f64, f64)]) -> f64 {
    median(variant.iter().zip(base).map(|(v, b)| v.0 / b.0).collect())
}

fn print_summary(output: &[String], size: u32) {
    let runs = runs(output, size);
    let get = |key: &str| {
        runs.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    };
    let Some(busy) = get(BUSY.key) else {
        return;
    };
    let event = get(EVENT.key);
    println!();
    println!(
        "== {size}-byte RC ping-pong, one-way latency: median over rounds of each run's median \
         (average in brackets); ratio = median over rounds of the ratio within the round"
    );
    for v in &VARIANTS {
        let Some(r) = get(v.key) else {
            continue;
        };
        let typical = median(r.iter().map(|x| x.0).collect());
        let avg = median(r.iter().map(|x| x.1).collect());
        let mut line = format!(
            "  {:<46} {typical:>8.2} us ({avg:>7.2})  {:>5.2}x busy polling",
            v.name,
            paired_ratio(r, busy)
        );
        if v.key == AWAIT_EVENT.key {
            if let Some(e) = event {
                line += &format!(", {:.2}x perftest -e", paired_ratio(r, e));
            }
        }
        println!("{line}   [{} runs]", r.len());
    }
}

/// The shell steps running tokio-rdma's `rping` (`bin`) against rdma-core's both ways, with
/// validation; each server is started first and the client retried until it listens.
fn rping_steps(bin: &str, ip: &str) -> String {
    format!(
        r#"echo "== tokio-rdma rping server, rdma-core rping client"
{bin} -s -a {ip} -C 3 >/dev/null & srv=$!
retry rping -c -a {ip} -C 3 -v -V
wait $srv
echo "== rdma-core rping server, tokio-rdma rping client"
rping -s -a {ip} -C 3 >/dev/null & srv=$!
retry {bin} -c -a {ip} -C 3 -v -V
wait $srv
"#
    )
}

/// Builds an example binary (release) and returns its path, once its source exists.
fn build_example(name: &str) -> Result<Option<String>> {
    let root = crate::project_root();
    if !root.join(format!("examples/src/bin/{name}.rs")).is_file() {
        return Ok(None);
    }
    process::build_release("tokio-rdma-examples", name).map(Some)
}

#[cfg(test)]
mod tests {
    use super::{median, paired_ratio, rping_steps, runs};

    #[test]
    fn rping_runs_both_ways_with_validation() {
        let s = rping_steps("/bin/ours", "192.0.2.1");
        assert!(s.contains("/bin/ours -s -a 192.0.2.1 -C 3 >/dev/null & srv=$!\nretry rping -c -a 192.0.2.1 -C 3 -v -V\n"));
        assert!(s.contains("rping -s -a 192.0.2.1 -C 3 >/dev/null & srv=$!\nretry /bin/ours -c -a 192.0.2.1 -C 3 -v -V\n"));
        assert_eq!(s.matches("wait $srv").count(), 2);
    }

    #[test]
    fn reads_marked_rows_of_both_programs() {
        let out: Vec<String> = [
            "== round 1 of 2",
            "@@ perftest-busy",
            " #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]",
            " 2       1000          11.37          190.75       11.99    \t       13.38 ",
            "@@ tokio-rdma",
            " 2      1000               14.62        6123.52            15.20          18.49 ",
            "@@ perftest-busy",
            " 2       1000          11.00          100.00       12.50    \t       13.00 ",
            "@@ tokio-rdma-event",
            "client failed",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let r = runs(&out, 2);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0, "perftest-busy");
        assert_eq!(r[0].1, [(11.99, 13.38), (12.5, 13.0)]);
        assert_eq!(r[1].1, [(15.2, 18.49)]);
        // A row with another size is not ours.
        assert!(runs(&out, 4).is_empty());
    }

    #[test]
    fn ratios_pair_runs_of_the_same_round() {
        // Round 2 ran under load for both: its ratio is 1, like round 1's.
        let base = [(10.0, 0.0), (20.0, 0.0), (10.0, 0.0)];
        let variant = [(10.0, 0.0), (20.0, 0.0), (15.0, 0.0)];
        assert_eq!(paired_ratio(&variant, &base), 1.0);
        assert_eq!(paired_ratio(&variant[..2], &base), 1.0);
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
