//! Booting the soft-RoCE VM (qemu, TCG) and running a command inside it.
//!
//! One host: `rxe0` on `dummy0` (192.0.2.1/24, 2001:db8::1/64); rxe loops local traffic back. Two hosts: two
//! VMs joined by a qemu socket network (virtio-net), 192.0.2.1 and 192.0.2.2, `rxe0` on `eth0`.
//! The command runs in the project directory (shared read-write at the same path) in a chroot
//! of the host's root file system (shared read-only). Its exit status comes back through the
//! run directory (and a marker line on the serial console).

use crate::{image, process};
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Separates the per-host commands of `--hosts 2`.
pub const HOST_SEPARATOR: &str = "---";

/// `cargo xtask vm` arguments.
#[derive(clap::Args, Debug)]
pub struct VmArgs {
    /// Virtual CPUs per VM.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Memory per VM in MiB.
    #[arg(long, default_value_t = 2048)]
    pub mem: u32,
    /// Kill the VM(s) after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// 1 (rxe0 on dummy0) or 2 VMs joined by a socket network (192.0.2.1 and 192.0.2.2).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub hosts: u8,
    /// Also print the VM's boot output.
    #[arg(long, short)]
    pub verbose: bool,
    /// The command. With `--hosts 2`, `CMD1 --- CMD2` gives each host its own command; a single
    /// command runs on both (TOKIO_RDMA_HOST_INDEX tells them apart).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

/// What to run in the VM(s).
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Virtual CPUs per VM.
    pub cpus: u32,
    /// MiB per VM.
    pub mem: u32,
    /// Overall limit.
    pub timeout: Duration,
    /// One shell script per host (1 or 2 hosts).
    pub scripts: Vec<String>,
    /// Print boot output too.
    pub verbose: bool,
}

impl RunSpec {
    /// One host running `script`, with default resources.
    pub fn single(script: String, timeout: Duration) -> Self {
        Self {
            cpus: 2,
            mem: 2048,
            timeout,
            scripts: vec![script],
            verbose: false,
        }
    }
}

/// The CPUs this machine offers this process (1 when it cannot tell).
pub fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

/// Joins argv into a shell command line.
pub fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| process::shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `cargo xtask vm`.
pub fn run_cli(args: &VmArgs) -> Result<i32> {
    crate::setup::ensure_packages()?;
    let parts: Vec<&[String]> = args
        .command
        .split(|a| a == HOST_SEPARATOR)
        .filter(|p| !p.is_empty())
        .collect();
    let scripts: Vec<String> = match (args.hosts, parts.len()) {
        (_, 0) => bail!("no command given"),
        (1, 1) => vec![shell_line(parts[0])],
        (1, _) => bail!("`{HOST_SEPARATOR}` separates per-host commands: use it with --hosts 2"),
        (2, 1) => vec![shell_line(parts[0]); 2],
        (2, 2) => parts.iter().map(|p| shell_line(p)).collect(),
        (_, n) => bail!("{n} commands for {} hosts", args.hosts),
    };
    let outcome = run(&RunSpec {
        cpus: args.cpus,
        mem: args.mem,
        timeout: Duration::from_secs(args.timeout),
        scripts,
        verbose: args.verbose,
    })?;
    Ok(outcome.status)
}

/// Environment variables passed from the host into the VM command.
fn passthrough_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "RUST_LOG" | "RUST_BACKTRACE" | "RUST_TEST_THREADS" | "NO_COLOR" | "CI"
            ) || (k.starts_with("TOKIO_RDMA_") && k != "TOKIO_RDMA_CACHE")
        })
        .collect()
}

fn host_ip(index: usize) -> String {
    format!("192.0.2.{}", index + 1)
}

fn write_run_dir(dir: &Path, index: usize, hosts: usize, script: &str) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let root = crate::project_root();
    fs::write(dir.join("project_dir"), root.to_string_lossy().as_bytes())?;
    let mut sh = String::from(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
         export HOME=/root TERM=dumb TOKIO_RDMA_VM=1\n",
    );
    sh += &format!(
        "export TOKIO_RDMA_HOST_INDEX={} TOKIO_RDMA_LOCAL_IP={}\n",
        index + 1,
        host_ip(index)
    );
    if hosts == 2 {
        sh += &format!("export TOKIO_RDMA_PEER_IP={}\n", host_ip(1 - index));
    }
    for (k, v) in passthrough_env() {
        sh += &format!("export {k}={}\n", process::shell_quote(&v));
    }
    sh += &format!(
        "cd {} || exit 126\n",
        process::shell_quote(&root.to_string_lossy())
    );
    sh += script;
    sh += "\n";
    fs::write(dir.join("cmd.sh"), sh)?;
    Ok(())
}

fn free_local_port() -> Result<u16> {
    let sock = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(sock.local_addr()?.port())
}

fn qemu_command(
    spec: &RunSpec,
    img: &image::Image,
    run_dir: &Path,
    index: usize,
    net_port: Option<u16>,
) -> Command {
    let root = crate::project_root();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max"])
        .args(["-smp", &spec.cpus.to_string(), "-m", &spec.mem.to_string()])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .args(["-no-reboot"])
        .arg("-kernel")
        .arg(&img.kernel)
        .arg("-initrd")
        .arg(&img.initrd)
        .arg("-virtfs")
        .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=project,security_model=none,multidevs=remap",
            root.display()
        ))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=xtaskrun,security_model=none",
            run_dir.display()
        ));
    let mut append = String::from("console=ttyS0 panic=-1 quiet clocksource=tsc tsc=reliable");
    match net_port {
        None => {
            cmd.args(["-nic", "none"]);
        }
        Some(port) => {
            let role = if index == 0 { "listen" } else { "connect" };
            cmd.arg("-netdev")
                .arg(format!("socket,id=n0,{role}=127.0.0.1:{port}"))
                .arg("-device")
                .arg(format!(
                    "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:{:02x}",
                    index + 1
                ));
            append += &format!(" tokio_rdma_ip={} tokio_rdma_netdev=eth0", host_ip(index));
        }
    }
    cmd.arg("-append").arg(append);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Console output of one VM, passed on line by line.
enum Console {
    Line(usize, String),
    Closed,
}

struct Vm {
    child: Child,
    run_dir: PathBuf,
    began: bool,
    exit_marker: Option<i32>,
    boot_log: Vec<String>,
}

/// How a VM run ended.
#[derive(Debug, Default)]
pub struct RunOutcome {
    /// The command's exit status (the first non-zero one with two hosts).
    pub status: i32,
    /// Everything the command(s) printed, in arrival order.
    pub output: Vec<String>,
}

/// The error under a run that did not finish: what the command(s) printed until then.
#[derive(Debug)]
pub struct Unfinished {
    /// The command's output so far.
    pub output: Vec<String>,
}

impl std::fmt::Display for Unfinished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the run ended after {} lines of output",
            self.output.len()
        )
    }
}

impl std::error::Error for Unfinished {}

fn spawn_reader<R: Read + Send + 'static>(index: usize, stream: R, tx: mpsc::Sender<Console>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .replace('\r', "");
                    if tx.send(Console::Line(index, line)).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Console::Closed);
    });
}

/// Boots the VM(s), runs the scripts, streams their output; returns the exit status (the first
/// non-zero one with two hosts).
pub fn run(spec: &RunSpec) -> Result<RunOutcome> {
    if spec.scripts.is_empty() || spec.scripts.len() > 2 {
        bail!("1 or 2 hosts are supported");
    }
    if !process::have("qemu-system-x86_64") {
        bail!("qemu-system-x86_64 not found: run `cargo xtask setup`");
    }
    let img = image::ensure()?;
    let hosts = spec.scripts.len();
    let net_port = if hosts == 2 {
        Some(free_local_port()?)
    } else {
        None
    };
    let (tx, rx) = mpsc::channel();
    let mut vms: Vec<Vm> = Vec::new();
    for (index, script) in spec.scripts.iter().enumerate() {
        let run_dir =
            crate::cache_dir()
                .join("runs")
                .join(format!("{}-{}", std::process::id(), index + 1));
        write_run_dir(&run_dir, index, hosts, script)?;
        let mut child = qemu_command(spec, &img, &run_dir, index, net_port)
            .spawn()
            .context("starting qemu-system-x86_64")?;
        spawn_reader(
            index,
            child.stdout.take().context("qemu stdout")?,
            tx.clone(),
        );
        // qemu's own diagnostics go to the boot log of that host.
        spawn_reader(
            index,
            child.stderr.take().context("qemu stderr")?,
            tx.clone(),
        );
        vms.push(Vm {
            child,
            run_dir,
            began: false,
            exit_marker: None,
            boot_log: Vec::new(),
        });
        if index == 0 && hosts == 2 {
            // Let the listening side open its socket before the other connects.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    drop(tx);

    let deadline = Instant::now() + spec.timeout;
    let mut closed_streams = 0;
    let mut timed_out = false;
    let mut output = Vec::new();
    while closed_streams < 2 * hosts {
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_millis(500))) {
            Ok(Console::Line(i, line)) => {
                if let Some(line) = handle_line(&mut vms[i], i, hosts, spec.verbose, line) {
                    output.push(line);
                }
            }
            Ok(Console::Closed) => closed_streams += 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    for vm in &mut vms {
        if timed_out {
            let _ = vm.child.kill();
        }
        let _ = vm.child.wait();
    }
    if timed_out {
        for (i, vm) in vms.iter().enumerate() {
            if !vm.began {
                dump_boot_log(i, &vm.boot_log);
            }
        }
        return Err(anyhow::Error::new(Unfinished { output }).context(format!(
            "the VM did not finish within {} s and was killed (a hung command or boot)",
            spec.timeout.as_secs()
        )));
    }

    let mut result = 0;
    for (i, vm) in vms.iter().enumerate() {
        let status = fs::read_to_string(vm.run_dir.join("status"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .or(vm.exit_marker);
        let _ = fs::remove_dir_all(&vm.run_dir);
        match status {
            Some(code) => {
                if result == 0 {
                    result = code;
                }
            }
            None => {
                dump_boot_log(i, &vm.boot_log);
                return Err(anyhow::Error::new(Unfinished { output }).context(format!(
                    "VM {} stopped without reporting the command's status",
                    i + 1
                )));
            }
        }
    }
    Ok(RunOutcome {
        status: result,
        output,
    })
}

/// Shows one console line; returns it when it is the command's output.
fn handle_line(
    vm: &mut Vm,
    index: usize,
    hosts: usize,
    verbose: bool,
    line: String,
) -> Option<String> {
    let prefix = if hosts > 1 {
        format!("[host{}] ", index + 1)
    } else {
        String::new()
    };
    if let Some(code) = line.trim().strip_prefix("XTASK_EXIT=") {
        vm.exit_marker = code.trim().parse().ok();
        return None;
    }
    if line.trim() == "XTASK_BEGIN" {
        vm.began = true;
        return None;
    }
    if line.contains("XTASK_BOOT_ERROR") {
        eprintln!("{prefix}{line}");
    }
    if vm.began && vm.exit_marker.is_none() {
        println!("{prefix}{line}");
        return Some(line);
    }
    if verbose {
        eprintln!("{prefix}(boot) {line}");
    } else {
        vm.boot_log.push(line);
    }
    None
}

fn dump_boot_log(index: usize, log: &[String]) {
    eprintln!("---- VM {} boot output ----", index + 1);
    for line in log {
        eprintln!("{line}");
    }
    eprintln!("---- end of boot output ----");
}

#[cfg(test)]
mod tests {
    use super::Unfinished;

    #[test]
    fn unfinished_output_survives_the_context() {
        let err = anyhow::Error::new(Unfinished {
            output: vec!["@@ s0 client exit 0 tries 1 secs 1".into()],
        })
        .context("the VM did not finish");
        assert_eq!(err.to_string(), "the VM did not finish");
        let output = err.downcast::<Unfinished>().map(|u| u.output);
        assert_eq!(output.unwrap(), ["@@ s0 client exit 0 tries 1 secs 1"]);
    }
}
