//! The soft-RoCE VM image: Debian's stock kernel and a busybox initramfs.
//!
//! The initramfs carries busybox, the modules named in `xtask/vm/modules.txt` with their
//! dependency closure, and `xtask/vm/init.sh` as PID 1. The init mounts the host's `/`
//! read-only over 9p and chroots into it, so host-built binaries and the host's rdma-core run
//! unchanged inside the VM.

use crate::process;
use anyhow::{bail, Context, Result};
use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Boot steps of the VM (PID 1).
pub const INIT_SCRIPT: &str = include_str!("../vm/init.sh");
/// Modules loaded in the VM, in order.
pub const MODULE_LIST: &str = include_str!("../vm/modules.txt");
/// The static busybox of Debian's busybox-static.
const BUSYBOX: &str = "/bin/busybox";

/// A built image, ready to boot.
#[derive(Debug, Clone)]
pub struct Image {
    /// The kernel (`vmlinuz`).
    pub kernel: PathBuf,
    /// The gzip'd cpio initramfs.
    pub initrd: PathBuf,
}

fn vm_dir() -> PathBuf {
    crate::cache_dir().join("vm")
}

/// Module names from [`MODULE_LIST`] (comments and blank lines skipped).
pub fn modules() -> Vec<&'static str> {
    MODULE_LIST
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Returns the image, building whatever is missing or stale.
pub fn ensure() -> Result<Image> {
    let dir = vm_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (version, kernel_root) = ensure_kernel(&dir)?;
    let kernel = kernel_root.join("boot").join(format!("vmlinuz-{version}"));
    let initrd = dir.join("initrd.gz");
    let stamp_path = dir.join("initrd.stamp");
    let stamp = stamp(&version)?;
    let fresh = initrd.is_file()
        && fs::read_to_string(&stamp_path).is_ok_and(|s| s.trim() == stamp.to_string());
    if !fresh {
        build_initramfs(&dir, &kernel_root, &version, &initrd)?;
        fs::write(&stamp_path, stamp.to_string())?;
    }
    Ok(Image { kernel, initrd })
}

/// What the initramfs depends on: rebuilt when any of it changes.
fn stamp(version: &str) -> Result<u64> {
    let mut h = DefaultHasher::new();
    INIT_SCRIPT.hash(&mut h);
    MODULE_LIST.hash(&mut h);
    version.hash(&mut h);
    let busybox = fs::metadata(BUSYBOX)
        .with_context(|| format!("{BUSYBOX} missing: run `cargo xtask setup`"))?;
    busybox.len().hash(&mut h);
    Ok(h.finish())
}

/// The kernel package that `linux-image-amd64` depends on, e.g. `linux-image-6.1.0-56-amd64`.
fn kernel_package() -> Result<String> {
    let find = || -> Result<Option<String>> {
        let out =
            process::output(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
        Ok(out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends:"))
            .map(str::trim)
            .find(|p| p.starts_with("linux-image-") && !p.contains('<'))
            .map(str::to_string))
    };
    if let Some(p) = find().unwrap_or(None) {
        return Ok(p);
    }
    // Package lists may not have been fetched yet on a fresh machine.
    crate::process::apt_get(&["update", "-qq"])?;
    find()?.context("apt-cache knows no linux-image-amd64 dependency (is this Debian?)")
}

/// Downloads and unpacks the kernel once; returns its version and unpack root.
fn ensure_kernel(dir: &Path) -> Result<(String, PathBuf)> {
    let kdir = dir.join("kernel");
    let root = kdir.join("root");
    let version_file = kdir.join("version");
    if let Ok(version) = fs::read_to_string(&version_file) {
        let version = version.trim().to_string();
        if root
            .join("boot")
            .join(format!("vmlinuz-{version}"))
            .is_file()
            && root
                .join("lib/modules")
                .join(&version)
                .join("modules.dep")
                .is_file()
        {
            return Ok((version, root));
        }
    }
    let package = kernel_package()?;
    let version = package
        .strip_prefix("linux-image-")
        .context("unexpected kernel package name")?
        .to_string();
    eprintln!("xtask: fetching the VM kernel ({package})");
    if kdir.exists() {
        fs::remove_dir_all(&kdir)?;
    }
    fs::create_dir_all(&kdir)?;
    let mut download = Command::new("apt-get");
    if crate::process::is_root() {
        // As root apt drops to _apt, which cannot write into our cache directory.
        download.args(["-o", "APT::Sandbox::User=root"]);
    }
    process::run(
        download
            .args(["download", "-qq", &package])
            .current_dir(&kdir),
    )
    .context("apt-get download of the kernel package")?;
    let deb = fs::read_dir(&kdir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    process::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
    fs::remove_file(&deb)?;
    // The .deb ships no modules.dep.
    process::run(Command::new("depmod").arg("-b").arg(&root).arg(&version))?;
    fs::write(&version_file, &version)?;
    Ok((version, root))
}

/// The `.ko` files (dependency closure, load order) of `modules`.
fn module_closure(kernel_root: &Path, version: &str, modules: &[&str]) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = Vec::new();
    for m in modules {
        let out = process::output(Command::new("modprobe").arg("-d").arg(kernel_root).args([
            "-S",
            version,
            "--show-depends",
            m,
        ]))
        .with_context(|| format!("module {m} is not in kernel {version}"))?;
        for line in out.lines() {
            if let Some(path) = line.trim().strip_prefix("insmod ") {
                let path = PathBuf::from(path.split_whitespace().next().unwrap_or(path));
                if !files.contains(&path) {
                    files.push(path);
                }
            }
        }
    }
    Ok(files)
}

fn build_initramfs(dir: &Path, kernel_root: &Path, version: &str, out: &Path) -> Result<()> {
    eprintln!("xtask: building the VM initramfs");
    let tree = dir.join("initramfs");
    if tree.exists() {
        fs::remove_dir_all(&tree)?;
    }
    for sub in ["bin", "sbin", "etc", "proc", "sys", "dev", "newroot", "tmp"] {
        fs::create_dir_all(tree.join(sub))?;
    }
    fs::copy(BUSYBOX, tree.join("bin/busybox"))
        .with_context(|| format!("copying {BUSYBOX} (install busybox-static)"))?;
    std::os::unix::fs::symlink("busybox", tree.join("bin/sh"))?;
    // The kernel runs /sbin/modprobe for request_module().
    std::os::unix::fs::symlink("../bin/busybox", tree.join("sbin/modprobe"))?;
    write_executable(&tree.join("init"), INIT_SCRIPT)?;
    fs::write(tree.join("etc/xtask-modules"), modules().join("\n") + "\n")?;

    let mods = modules();
    let files = module_closure(kernel_root, version, &mods)?;
    if files.is_empty() {
        bail!("no module files found for {mods:?}");
    }
    for file in &files {
        let rel = file
            .strip_prefix(kernel_root)
            .with_context(|| format!("{} outside the kernel tree", file.display()))?;
        let dest = tree.join(rel);
        fs::create_dir_all(dest.parent().context("module path")?)?;
        fs::copy(file, &dest).with_context(|| format!("copying {}", file.display()))?;
    }
    let src_mods = kernel_root.join("lib/modules").join(version);
    let dst_mods = tree.join("lib/modules").join(version);
    for meta in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        if src_mods.join(meta).is_file() {
            fs::copy(src_mods.join(meta), dst_mods.join(meta))?;
        }
    }
    process::run(Command::new("depmod").arg("-b").arg(&tree).arg(version))?;

    let tmp = out.with_extension("gz.tmp");
    let script = format!(
        "set -e; cd {}; find . | cpio -o -H newc --quiet | gzip -1 > {}",
        process::shell_quote(&tree.to_string_lossy()),
        process::shell_quote(&tmp.to_string_lossy())
    );
    process::run(Command::new("sh").args(["-c", &script])).context("packing the initramfs")?;
    fs::rename(&tmp, out)?;
    Ok(())
}

fn write_executable(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, contents)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_list_has_what_rxe_needs() {
        let m = modules();
        for needed in ["crc32_generic", "rdma_rxe", "rdma_ucm", "dummy", "9p"] {
            assert!(m.contains(&needed), "{needed} missing from vm/modules.txt");
        }
        let pos = |n: &str| m.iter().position(|x| *x == n).unwrap();
        assert!(
            pos("crc32_generic") < pos("rdma_rxe"),
            "crc32 must load before rxe"
        );
    }

    #[test]
    fn init_reports_exit_status() {
        assert!(INIT_SCRIPT.contains("XTASK_EXIT="));
        assert!(INIT_SCRIPT.contains("XTASK_BEGIN"));
    }
}
