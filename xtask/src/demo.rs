//! `cargo xtask demo`: the project's main job on the default device.
//!
//! Today: rdma-core's `rping` loopback as a smoke step, then tokio-rdma's `pingpong`
//! (server and client, RC SEND/RECV) next to perftest's `ib_send_lat`, busy-polling and
//! waiting on the completion channel (`-e`), in one run on the same device.

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
echo "== rdma-core rping loopback (smoke)"
rping -s -a {ip} -C 3 >/dev/null & srv=$!
sleep 1
rping -c -a {ip} -C 3 -v
wait $srv
echo "== perftest ib_send_lat, busy polling ({size} B, {iters} iterations)"
ib_send_lat -d {dev} -x 1 -n {iters} -s {size} >/dev/null 2>&1 & srv=$!
sleep 1
ib_send_lat -d {dev} -x 1 -n {iters} -s {size} {ip} | grep -A1 t_typical
wait $srv
echo "== perftest ib_send_lat -e, waiting on the completion channel"
ib_send_lat -d {dev} -x 1 -n {iters} -s {size} -e >/dev/null 2>&1 & srv=$!
sleep 1
ib_send_lat -d {dev} -x 1 -n {iters} -s {size} -e {ip} | grep -A1 t_typical
wait $srv
"#
    );
    if let Some(bin) = pingpong {
        let bin = process::shell_quote(&bin);
        script += &format!(
            r#"echo "== tokio-rdma pingpong ({size} B, {iters} iterations): awaiting tasks"
{bin} --device {dev} --size {size} --iters {iters} & srv=$!
sleep 1
{bin} --device {dev} --size {size} --iters {iters} {ip}
wait $srv
"#
        );
    }
    let outcome = target.run(&script, Duration::from_secs(args.timeout))?;
    if outcome.status != 0 {
        bail!("the demo failed (exit status {})", outcome.status);
    }
    Ok(0)
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
