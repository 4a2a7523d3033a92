//! `cargo xtask test`: every test of the project.
//!
//! 1. Host tests: `cargo test --workspace`. Device tests are `#[ignore = "needs an RDMA
//!    device"]` (in this project `#[ignore]` is reserved for them), so here they show as ignored.
//!    Then the criterion micro-benches in criterion's test mode (`cargo test --bench`: each
//!    benchmark runs once, unmeasured), each counted as a test.
//! 2. loom models of core (`--cfg loom`, release) and core's tests under AddressSanitizer.
//! 3. Device tests: every test binary with ignored tests runs them (`--ignored`) on the device:
//!    inside the soft-RoCE VM unless the machine has a real one.
//! 4. The two-host stage: client/server scenarios across two VMs (see [`crate::twohost`]).
//!
//! It ends with one line `tests: N passed, N failed, N skipped` over all of it.

use crate::device::Target;
use crate::process::{self, cargo, shell_quote};
use crate::twohost;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `cargo xtask test` arguments.
#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// Skip the host tests (loom and ASAN included).
    #[arg(long)]
    pub no_host: bool,
    /// Skip loom and AddressSanitizer runs.
    #[arg(long)]
    pub quick: bool,
    /// Skip the device tests.
    #[arg(long)]
    pub no_device: bool,
    /// Skip the two-host stage (client/server scenarios across two VMs).
    #[arg(long)]
    pub no_two_hosts: bool,
    /// Time limit of the VM run, in seconds.
    #[arg(long, default_value_t = 2400)]
    pub timeout: u64,
    /// Only device tests and two-host scenarios whose name contains this.
    pub filter: Option<String>,
}

/// Totals parsed from libtest's `test result:` lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Passed tests.
    pub passed: u64,
    /// Failed tests.
    pub failed: u64,
    /// Ignored tests.
    pub ignored: u64,
}

impl Tally {
    /// Adds the counts of one `test result: ...` line, if `line` is one.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match label {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }

    /// Counts the output of a criterion bench in test mode (`Testing ID`, then `Success`
    /// once it ran) that exited with `code`: each success passed; a benchmark that started
    /// without succeeding, or a non-zero exit with none pending (a build failure), failed.
    pub fn criterion(lines: &[String], code: i32) -> Tally {
        let mut t = Tally::default();
        let mut pending = 0;
        for line in lines {
            if line.starts_with("Testing ") {
                pending += 1;
            } else if line.trim() == "Success" && pending > 0 {
                pending -= 1;
                t.passed += 1;
            }
        }
        t.failed = pending;
        if code != 0 && t.failed == 0 {
            t.failed = 1;
        }
        t
    }

    fn add(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }
}

/// Runs `cmd`, echoing its stdout and tallying libtest results.
fn run_tallied(cmd: &mut Command) -> Result<(i32, Tally)> {
    let (code, lines) = run_echoed(cmd)?;
    let mut tally = Tally::default();
    for line in &lines {
        tally.add_line(line);
    }
    Ok((code, tally))
}

/// Runs `cmd`, echoing its stdout; returns its exit status and stdout lines.
fn run_echoed(cmd: &mut Command) -> Result<(i32, Vec<String>)> {
    eprintln!("xtask: $ {}", process::describe(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", process::describe(cmd)))?;
    let mut lines = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.unwrap_or_default();
            println!("{line}");
            lines.push(line);
        }
    }
    Ok((process::code_of(child.wait()?), lines))
}

fn has_nightly() -> bool {
    process::output(Command::new("rustup").args(["toolchain", "list"]))
        .map(|s| s.lines().any(|l| l.starts_with("nightly")))
        .unwrap_or(false)
}

/// `cargo xtask test`.
pub fn run(args: &TestArgs) -> Result<i32> {
    crate::setup::ensure_packages()?;
    let mut total = Tally::default();
    let mut failures: Vec<String> = Vec::new();
    let mut skipped_suites: Vec<String> = Vec::new();

    if !args.no_host {
        let (code, t) = run_tallied(cargo().args(["test", "--workspace"]))?;
        total.add(t);
        if code != 0 {
            failures.push("host tests".into());
        }
        // Criterion's test mode: every benchmark once, unmeasured (a debug build, like the
        // host tests', so it costs the bench binary's build and a second of running).
        let (code, lines) =
            run_echoed(cargo().args(["test", "-p", "tokio-rdma-bench", "--bench", "dispatch"]))?;
        total.add(Tally::criterion(&lines, code));
        if code != 0 {
            failures.push("criterion benches (test mode)".into());
        }
        if !args.quick {
            let (code, t) = run_tallied(
                cargo()
                    .args([
                        "test",
                        "-p",
                        "tokio-rdma-core",
                        "--release",
                        "--test",
                        "loom",
                    ])
                    .env("RUSTFLAGS", "--cfg loom")
                    .env("LOOM_MAX_PREEMPTIONS", "3")
                    // The models need optimised code, not the release profile's whole-program
                    // LTO (minutes of linking for nothing they measure).
                    .env("CARGO_PROFILE_RELEASE_LTO", "false")
                    .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16")
                    .env(
                        "CARGO_TARGET_DIR",
                        crate::project_root().join("target/loom"),
                    ),
            )?;
            total.add(t);
            if code != 0 {
                failures.push("loom models".into());
            }
            if has_nightly() {
                // core's own script holds the sanitizer flags.
                let (code, t) = run_tallied(
                    Command::new("bash")
                        .arg(crate::project_root().join("core/scripts/asan.sh"))
                        .current_dir(crate::project_root()),
                )?;
                total.add(t);
                if code != 0 {
                    failures.push("AddressSanitizer run of core".into());
                }
            } else {
                skipped_suites.push("AddressSanitizer run (no nightly toolchain)".into());
            }
        }
    }

    let mut device_tests = 0;
    if !args.no_device {
        let (code, t, n) = device_tests_run(args)?;
        device_tests = t.passed + t.failed;
        if code != 0 && device_tests < n as u64 {
            eprintln!("xtask: only {device_tests} of {n} device tests reported a result");
        }
        // Device tests were counted as ignored by the host run.
        total.ignored = total.ignored.saturating_sub(t.passed + t.failed);
        total.passed += t.passed;
        total.failed += t.failed;
        if code != 0 {
            failures.push("device tests".into());
        }
    } else {
        skipped_suites.push("device tests (--no-device)".into());
    }

    if args.no_device || args.no_two_hosts {
        // Counted as skipped, like device tests under --no-device.
        let n = twohost::selected(args.filter.as_deref()).len();
        total.ignored += n as u64;
        let why = if args.no_two_hosts {
            "--no-two-hosts"
        } else {
            "--no-device"
        };
        skipped_suites.push(format!("two-host stage: {n} scenarios ({why})"));
    } else {
        let c = twohost::run(args.filter.as_deref())?;
        total.passed += c.passed;
        total.failed += c.failed;
        total.ignored += c.skipped;
        if c.failed > 0 {
            failures.push(format!("{} two-host scenarios", c.failed));
        }
    }

    eprintln!();
    for s in &skipped_suites {
        eprintln!("xtask: SKIPPED: {s}");
    }
    for f in &failures {
        eprintln!("xtask: FAILED: {f}");
    }
    eprintln!("xtask: {device_tests} device tests ran on the device");
    println!(
        "tests: {} passed, {} failed, {} skipped",
        total.passed, total.failed, total.ignored
    );
    Ok(if failures.is_empty() { 0 } else { 1 })
}

/// A test binary with device tests.
struct DeviceSuite {
    exe: PathBuf,
    package_dir: PathBuf,
    tests: Vec<String>,
}

/// Builds the test binaries and finds those with device (ignored) tests.
fn device_suites(filter: Option<&str>) -> Result<Vec<DeviceSuite>> {
    let out = cargo()
        .args(["test", "--workspace", "--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("building test binaries")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut suites = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((exe, manifest)) = parse_test_artifact(line) else {
            continue;
        };
        let listing = process::output(
            Command::new(&exe)
                .args(["--list", "--ignored", "--format", "terse"])
                .current_dir(manifest.parent().unwrap_or(Path::new("."))),
        )?;
        let tests: Vec<String> = listing
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .filter(|name| filter.is_none_or(|f| name.contains(f)))
            .map(str::to_string)
            .collect();
        if !tests.is_empty() {
            suites.push(DeviceSuite {
                exe,
                package_dir: manifest.parent().unwrap_or(Path::new(".")).to_path_buf(),
                tests,
            });
        }
    }
    Ok(suites)
}

/// `(executable, manifest_path)` of a test-profile compiler artifact message.
fn parse_test_artifact(line: &str) -> Option<(PathBuf, PathBuf)> {
    let msg: serde_json::Value = serde_json::from_str(line).ok()?;
    if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
        return None;
    }
    Some((
        msg["executable"].as_str()?.into(),
        msg["manifest_path"].as_str()?.into(),
    ))
}

fn device_tests_run(args: &TestArgs) -> Result<(i32, Tally, usize)> {
    let suites = device_suites(args.filter.as_deref())?;
    let count: usize = suites.iter().map(|s| s.tests.len()).sum();
    if suites.is_empty() {
        eprintln!("xtask: no device tests found");
        return Ok((0, Tally::default(), 0));
    }
    let target = Target::detect();
    eprintln!(
        "xtask: running {count} device tests from {} binaries on {}",
        suites.len(),
        target.describe()
    );
    let mut script = String::from("failed=0\n");
    for s in &suites {
        let name = s.exe.file_name().unwrap_or_default().to_string_lossy();
        script += &format!(
            "echo \"== device tests: {name}\"\n(cd {} && {} --ignored --test-threads=1{}) || failed=1\n",
            shell_quote(&s.package_dir.to_string_lossy()),
            shell_quote(&s.exe.to_string_lossy()),
            args.filter
                .as_deref()
                .map(|f| format!(" {}", shell_quote(f)))
                .unwrap_or_default()
        );
    }
    script += "exit $failed\n";
    let outcome = target.run(&script, Duration::from_secs(args.timeout))?;
    let mut tally = Tally::default();
    for line in &outcome.output {
        tally.add_line(line);
    }
    Ok((outcome.status, tally, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_reads_libtest_summaries() {
        let mut t = Tally::default();
        t.add_line("test result: ok. 12 passed; 0 failed; 3 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        t.add_line(
            "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("running 3 tests");
        assert_eq!(
            t,
            Tally {
                passed: 13,
                failed: 2,
                ignored: 3
            }
        );
    }

    #[test]
    fn criterion_test_mode_counts_each_benchmark() {
        let lines = |s: &[&str]| s.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        let ok = lines(&[
            "Testing dispatch/async_op/c1/1",
            "Success",
            "",
            "Testing dispatch/async_op/c1/16",
            "Success",
        ]);
        assert_eq!(
            Tally::criterion(&ok, 0),
            Tally {
                passed: 2,
                failed: 0,
                ignored: 0
            }
        );
        // A benchmark panicked: the one started without success failed.
        let panicked = lines(&["Testing a", "Success", "Testing b"]);
        assert_eq!(Tally::criterion(&panicked, 101).failed, 1);
        assert_eq!(Tally::criterion(&panicked, 101).passed, 1);
        // Nothing ran (the build failed): one failure.
        assert_eq!(Tally::criterion(&[], 101).failed, 1);
        assert_eq!(Tally::criterion(&[], 0), Tally::default());
    }

    #[test]
    fn finds_test_artifacts_only() {
        let test = r#"{"reason":"compiler-artifact","package_id":"x","manifest_path":"/p/verbs/Cargo.toml","target":{"name":"t"},"profile":{"test":true},"executable":"/p/target/debug/deps/t-1"}"#;
        let lib = r#"{"reason":"compiler-artifact","manifest_path":"/p/verbs/Cargo.toml","profile":{"test":false},"executable":null}"#;
        assert_eq!(
            parse_test_artifact(test),
            Some((
                "/p/target/debug/deps/t-1".into(),
                "/p/verbs/Cargo.toml".into()
            ))
        );
        assert_eq!(parse_test_artifact(lib), None);
    }
}
