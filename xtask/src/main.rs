//! `cargo xtask`: project automation for tokio-rdma.
//!
//! - `setup`: installs the Debian packages the project needs and builds the soft-RoCE VM image
//!   (Debian's stock kernel + a busybox initramfs) into `target/xtask/vm`.
//! - `vm [--hosts 2] -- CMD...`: boots the VM (or two joined by a socket network) with a ready
//!   `rxe0` device and runs CMD in the project directory, exiting with its status.
//! - `test`: host tests, loom and AddressSanitizer runs, every device test in the VM, then
//!   client/server scenarios across two VMs.
//! - `demo`: the project's main job on the default device (the VM unless a real one exists).
//! - `bench`: perftest and `rdma-bench` side by side on the default device, in one VM boot.

mod bench;
mod demo;
mod device;
mod image;
mod process;
mod setup;
mod test;
mod twohost;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "tokio-rdma project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install missing system packages and build the VM image (idempotent).
    Setup,
    /// Boot the soft-RoCE VM and run a command in the project directory.
    Vm(vm::VmArgs),
    /// Run every test: host tests first, then device tests on an RDMA device (VM by default).
    Test(test::TestArgs),
    /// Run the demo (ping-pong over rxe0) on the default device.
    Demo(demo::DemoArgs),
    /// perftest and rdma-bench (every dispatch mode) side by side, with ratios; results in
    /// target/bench/.
    Bench(bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let result: Result<i32> = match cli.command {
        Command::Setup => setup::run().map(|()| 0),
        Command::Vm(args) => vm::run_cli(&args),
        Command::Test(args) => test::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            std::process::exit(1);
        }
    }
}

/// The workspace root (the parent of this crate's manifest directory).
pub fn project_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest)
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
}

/// Where xtask keeps downloaded and built artefacts (`TOKIO_RDMA_CACHE` overrides).
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("TOKIO_RDMA_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => project_root().join("target").join("xtask"),
    }
}

/// The RDMA device to use directly instead of the VM, if any: `TOKIO_RDMA_DEVICE`, or the
/// first device in `/sys/class/infiniband` on this machine.
pub fn host_rdma_device() -> Option<String> {
    if let Ok(dev) = std::env::var("TOKIO_RDMA_DEVICE") {
        if !dev.is_empty() {
            return Some(dev);
        }
    }
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/infiniband")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().next()
}
