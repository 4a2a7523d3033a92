//! `cargo xtask setup`: system packages and the VM image.

use crate::process::{self, have};
use anyhow::{bail, Context, Result};
use std::process::Command;

/// Debian packages the project needs: the VM (qemu, busybox, kmod, cpio), rdma-core's user
/// space and tools (also used inside the VM, which runs the host's root file system), the C
/// headers rdma-sys binds, and the libclang 14 that rdma-sys' bindgen 0.59 works with.
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "cpio",
    "gzip",
    "iproute2",
    "rdma-core",
    "ibverbs-providers",
    "ibverbs-utils",
    "rdmacm-utils",
    "perftest",
    "libibverbs-dev",
    "librdmacm-dev",
    "libclang-14-dev",
    "pkg-config",
];

/// Installs what is missing and builds (or reuses) the VM image.
pub fn run() -> Result<()> {
    install_packages()?;
    crate::image::ensure()?;
    Ok(())
}

/// What `test`, `demo` and `vm` do first, so they work on a fresh machine: install the
/// missing packages (the build itself needs libibverbs-dev, librdmacm-dev and libclang for
/// rdma-sys). Off Debian/Ubuntu there is no package manager to drive: say so and go on.
pub fn ensure_packages() -> Result<()> {
    if !have("dpkg-query") {
        eprintln!(
            "xtask: not a Debian/Ubuntu machine: make sure the equivalents of {PACKAGES:?} are installed"
        );
        return Ok(());
    }
    install_packages()
}

/// Packages from [`PACKAGES`] that dpkg does not report as installed.
pub fn missing_packages() -> Result<Vec<&'static str>> {
    if !have("dpkg-query") {
        bail!("dpkg-query not found: `cargo xtask setup` supports Debian and Ubuntu only; install the equivalents of {PACKAGES:?} by hand");
    }
    let mut missing = Vec::new();
    for pkg in PACKAGES {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", pkg])
            .output()
            .context("running dpkg-query")?;
        let status = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !status.contains("install ok installed") {
            missing.push(*pkg);
        }
    }
    Ok(missing)
}

fn install_packages() -> Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    process::apt_get(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(missing.iter().copied());
    process::apt_get(&args)?;
    let still = missing_packages()?;
    if !still.is_empty() {
        bail!("packages still missing after apt-get install: {still:?}");
    }
    Ok(())
}
