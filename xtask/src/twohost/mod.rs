//! The two-host stage of `cargo xtask test`: two VMs (192.0.2.1 and 192.0.2.2, `rxe0` on
//! `eth0`) boot once and run a list of client/server scenarios across them, one after another.
//!
//! The scenarios are rping exchanges: rdma-core's `rping` against itself first (the baseline
//! that proves the plumbing), then this project's `rping` example as server, as client, and on
//! both sides. A scenario whose program is missing is skipped with the reason; one whose program
//! fails to build fails.

mod scenario;
mod script;

use crate::process::{self, cargo};
use anyhow::{Context, Result};
use scenario::{Role, Rping, RpingCase, Scenario};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Seconds each program run of a scenario may take (an rping exchange takes a few).
const LIMIT: u32 = 30;
/// Seconds a server may take to end after its client (rping's takes one).
const GRACE: u32 = 10;
/// Seconds each VM waits for the other to boot (they take a few).
const BOOT: u32 = 120;
/// The first scenario's port; each scenario has its own, so a late client can never reach the
/// previous scenario's server.
const FIRST_PORT: u16 = 7400;

/// How the stage's scenarios ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Passed scenarios.
    pub passed: u64,
    /// Failed scenarios.
    pub failed: u64,
    /// Skipped scenarios (a program is missing).
    pub skipped: u64,
}

/// Names of the scenarios `filter` selects (all without one).
pub fn selected(filter: Option<&str>) -> Vec<String> {
    cases(filter).iter().map(RpingCase::name).collect()
}

fn cases(filter: Option<&str>) -> Vec<RpingCase> {
    RpingCase::all()
        .into_iter()
        .filter(|c| filter.is_none_or(|f| c.name().contains(f)))
        .collect()
}

/// Why a program cannot run.
#[derive(Debug, Clone)]
enum Unready {
    /// Not there (yet): its scenarios are skipped.
    Missing(String),
    /// Failed to build: its scenarios fail.
    Broken(String),
}

/// Runs the scenarios `filter` selects.
pub fn run(filter: Option<&str>) -> Result<Counts> {
    let cases = cases(filter);
    let mut counts = Counts::default();
    if cases.is_empty() {
        return Ok(counts);
    }
    let qemu = process::have("qemu-system-x86_64");
    let rdma_core: Result<String, Unready> = if !qemu {
        Err(Unready::Missing(
            "qemu-system-x86_64 not found (cargo xtask setup)".into(),
        ))
    } else if process::have("rping") {
        Ok("rping".into())
    } else {
        Err(Unready::Missing(
            "rdma-core's rping not found (cargo xtask setup installs rdmacm-utils)".into(),
        ))
    };
    let ours = if !qemu {
        rdma_core.clone()
    } else if cases
        .iter()
        .any(|c| c.server == Rping::Ours || c.client == Rping::Ours)
    {
        our_rping()?
    } else {
        Err(Unready::Missing("not needed".into()))
    };
    let program = |r: Rping| match r {
        Rping::RdmaCore => rdma_core.clone(),
        Rping::Ours => ours.clone(),
    };

    let mut runnable: Vec<Scenario> = Vec::new();
    for case in &cases {
        let port = FIRST_PORT + runnable.len() as u16;
        match case.scenario(port, program) {
            Ok(s) => runnable.push(s),
            Err(Unready::Missing(why)) => {
                println!("test {} ... skipped: {why}", case.name());
                counts.skipped += 1;
            }
            Err(Unready::Broken(why)) => {
                println!("test {} ... FAILED: {why}", case.name());
                counts.failed += 1;
            }
        }
    }
    if runnable.is_empty() {
        return Ok(counts);
    }

    let began = Instant::now();
    eprintln!(
        "xtask: two-host stage: {} scenarios across two VMs",
        runnable.len()
    );
    let output = match run_in_vms(&runnable) {
        Ok(output) => output,
        Err(err) => {
            // Scenarios that reported before the failure still count.
            eprintln!("xtask: two-host stage: {err:#}");
            err.downcast::<crate::vm::Unfinished>()
                .map(|u| u.output)
                .unwrap_or_default()
        }
    };
    let reports = script::parse_reports(&output);
    for (i, s) in runnable.iter().enumerate() {
        let server = reports.get(&(script::key(i), Role::Server));
        let client = reports.get(&(script::key(i), Role::Client));
        let secs = server.into_iter().chain(client).map(|r| r.secs).max();
        let tries = client.map_or(0, |c| c.tries);
        match s.judge(server, client) {
            Ok(()) => {
                println!(
                    "test {} ... ok ({} s, client runs: {tries})",
                    s.name,
                    secs.unwrap_or(0)
                );
                counts.passed += 1;
            }
            Err(why) => {
                println!("test {} ... FAILED: {why}", s.name);
                counts.failed += 1;
            }
        }
    }
    eprintln!(
        "xtask: two-host stage: {} passed, {} failed, {} skipped in {:.0} s (both VMs' boot included)",
        counts.passed,
        counts.failed,
        counts.skipped,
        began.elapsed().as_secs_f64()
    );
    Ok(counts)
}

/// Boots the two VMs with one script each; returns what they printed.
fn run_in_vms(scenarios: &[Scenario]) -> Result<Vec<String>> {
    // The barrier files must lie in the project directory: the one tree both VMs write.
    let sync = crate::project_root()
        .join("target/xtask/runs")
        .join(format!("twohost-{}", std::process::id()));
    if sync.exists() {
        std::fs::remove_dir_all(&sync)?;
    }
    std::fs::create_dir_all(&sync).with_context(|| format!("creating {}", sync.display()))?;
    let setting = script::Setting {
        sync: sync.clone(),
        scratch: "/tmp".into(),
        limit: LIMIT,
        grace: GRACE,
        boot: BOOT,
    };
    let scripts = (0..2)
        .map(|host| script::host_script(scenarios, host, &setting))
        .collect();
    // Boot and the start barrier, then per scenario: the client's runs (up to 2 limits), the
    // server's grace and the barriers.
    let budget = u64::from(BOOT) + 120 + scenarios.len() as u64 * u64::from(3 * LIMIT + GRACE + 40);
    let outcome = crate::vm::run(&crate::vm::RunSpec {
        cpus: 1,
        mem: 1024,
        timeout: Duration::from_secs(budget),
        scripts,
        verbose: false,
    });
    let _ = std::fs::remove_dir_all(&sync);
    Ok(outcome?.output)
}

/// The `rping` example, built for this machine (the dev profile, like the test binaries).
fn our_rping() -> Result<Result<String, Unready>> {
    let meta = process::output(cargo().args(["metadata", "--no-deps", "--format-version", "1"]))?;
    let Some(package) = bin_package(&meta, "rping") else {
        return Ok(Err(Unready::Missing(
            "no `rping` binary in the workspace yet (examples/src/bin/rping.rs)".into(),
        )));
    };
    let out = cargo()
        .args([
            "build",
            "-p",
            &package,
            "--bin",
            "rping",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("building the rping example")?;
    if !out.status.success() {
        return Ok(Err(Unready::Broken(format!(
            "building {package}'s rping failed"
        ))));
    }
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| bin_artifact(l, "rping"));
    Ok(exe
        .map(|p| p.to_string_lossy().into_owned())
        .ok_or_else(|| Unready::Broken("cargo named no rping executable".into())))
}

/// The workspace package (from `cargo metadata` JSON) that has a binary target `bin`.
fn bin_package(metadata: &str, bin: &str) -> Option<String> {
    let meta: serde_json::Value = serde_json::from_str(metadata).ok()?;
    meta["packages"].as_array()?.iter().find_map(|p| {
        let has = p["targets"].as_array()?.iter().any(|t| {
            t["name"] == bin
                && t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bin"))
        });
        has.then(|| p["name"].as_str().map(str::to_string))?
    })
}

/// The executable of binary `bin` in a `cargo build --message-format=json` line.
fn bin_artifact(line: &str, bin: &str) -> Option<PathBuf> {
    let msg: serde_json::Value = serde_json::from_str(line).ok()?;
    if msg["reason"] != "compiler-artifact" || msg["target"]["name"] != bin {
        return None;
    }
    msg["executable"].as_str().map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_package_with_the_binary() {
        let meta = r#"{"packages":[
            {"name":"tokio-rdma-verbs","targets":[{"name":"rping","kind":["test"]}]},
            {"name":"tokio-rdma-examples","targets":[
                {"name":"pingpong","kind":["bin"]},{"name":"rping","kind":["bin"]}]}]}"#;
        assert_eq!(
            bin_package(meta, "rping").as_deref(),
            Some("tokio-rdma-examples")
        );
        assert_eq!(bin_package(meta, "rdma-ping"), None);
        assert_eq!(bin_package("not json", "rping"), None);
    }

    #[test]
    fn finds_the_binary_artifact() {
        let bin = r#"{"reason":"compiler-artifact","target":{"name":"rping","kind":["bin"]},"executable":"/t/debug/rping"}"#;
        let lib = r#"{"reason":"compiler-artifact","target":{"name":"tokio_rdma_cm","kind":["lib"]},"executable":null}"#;
        let other = r#"{"reason":"build-finished","success":true}"#;
        assert_eq!(bin_artifact(bin, "rping"), Some("/t/debug/rping".into()));
        assert_eq!(bin_artifact(lib, "rping"), None);
        assert_eq!(bin_artifact(other, "rping"), None);
    }

    #[test]
    fn filter_selects_by_name() {
        assert_eq!(selected(None).len(), RpingCase::all().len());
        let ours = selected(Some("ours_serves_ours"));
        assert_eq!(ours.len(), 3);
        assert!(selected(Some("no such scenario")).is_empty());
    }
}
