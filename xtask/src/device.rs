//! Running a shell script where an RDMA device is: directly on this machine when it has one
//! (or `TOKIO_RDMA_DEVICE` names one), otherwise inside the soft-RoCE VM.

use crate::vm::{self, RunOutcome, RunSpec};
use anyhow::{Context, Result};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where device work runs.
#[derive(Debug, Clone)]
pub enum Target {
    /// A device on this machine.
    Host(String),
    /// The soft-RoCE VM (`rxe0`).
    Vm,
}

impl Target {
    /// The default target.
    pub fn detect() -> Self {
        match crate::host_rdma_device() {
            Some(dev) => Target::Host(dev),
            None => Target::Vm,
        }
    }

    /// Human-readable description.
    pub fn describe(&self) -> String {
        match self {
            Target::Host(dev) => format!("device {dev} on this machine"),
            Target::Vm => "rxe0 in the soft-RoCE VM".to_string(),
        }
    }

    /// The address the local RDMA interface has (server side of loopback tests).
    pub fn local_ip(&self) -> String {
        match self {
            Target::Host(_) => {
                std::env::var("TOKIO_RDMA_LOCAL_IP").unwrap_or_else(|_| "127.0.0.1".into())
            }
            Target::Vm => "192.0.2.1".to_string(),
        }
    }

    /// Runs `script` (POSIX shell) in the project directory on this target.
    pub fn run(&self, script: &str, timeout: Duration) -> Result<RunOutcome> {
        self.run_with_cpus(
            script,
            timeout,
            RunSpec::single(String::new(), timeout).cpus,
        )
    }

    /// [`run`](Self::run) with `cpus` virtual CPUs in the VM (a device on this machine uses
    /// whatever the machine has).
    pub fn run_with_cpus(&self, script: &str, timeout: Duration, cpus: u32) -> Result<RunOutcome> {
        match self {
            Target::Vm => vm::run(&RunSpec {
                cpus,
                ..RunSpec::single(script.to_string(), timeout)
            }),
            Target::Host(dev) => run_local(script, dev),
        }
    }
}

fn run_local(script: &str, device: &str) -> Result<RunOutcome> {
    let mut child = Command::new("sh")
        .args(["-c", script])
        .current_dir(crate::project_root())
        .env("TOKIO_RDMA_DEVICE", device)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting sh")?;
    let mut output = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap_or_default();
            println!("{line}");
            output.push(line);
        }
    }
    let status = crate::process::code_of(child.wait()?);
    Ok(RunOutcome { status, output })
}
