//! Small helpers for running external programs with clear errors.

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::process::{Command, Stdio};

/// Runs `cmd`, inheriting stdio; fails with the command line when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

/// `cargo` (the one running xtask, if any) in the project root.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(crate::project_root());
    c
}

/// Builds `bin` of `package` with `cargo build --release` and returns the binary's path.
pub fn build_release(package: &str, bin: &str) -> Result<String> {
    run(cargo().args(["build", "--release", "-p", package, "--bin", bin]))?;
    let target = target_dir(&crate::project_root(), std::env::var_os("CARGO_TARGET_DIR"));
    Ok(target
        .join("release")
        .join(bin)
        .to_string_lossy()
        .into_owned())
}

/// Where cargo puts build output: `CARGO_TARGET_DIR` (relative to the project root) when
/// set, else `target` in the root.
fn target_dir(root: &std::path::Path, env: Option<std::ffi::OsString>) -> std::path::PathBuf {
    match env {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// Converts an exit status into a shell-style code.
pub fn code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Runs `cmd` and returns its standard output; fails (with its stderr) when it exits non-zero.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `program` is on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// A printable command line.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes `arg` for a POSIX shell.
pub fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // `id -u` avoids an unsafe geteuid() call in this crate.
    output(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

/// `apt-get ARGS` as root, or through sudo; a clear error when neither is possible.
pub fn apt_get(args: &[&str]) -> Result<()> {
    let mut cmd = if is_root() {
        Command::new("apt-get")
    } else if have("sudo") {
        let mut c = Command::new("sudo");
        c.args(["-n", "apt-get"]);
        c
    } else {
        bail!(
            "installing packages needs root: run `cargo xtask setup` as root, or install sudo, \
             or run by hand as root: apt-get {}",
            args.join(" ")
        );
    };
    cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
    run(&mut cmd).context(
        "apt-get failed (not root and no password-less sudo? run `sudo cargo xtask setup` once)",
    )
}

#[cfg(test)]
mod tests {
    use super::{shell_quote, target_dir};
    use std::path::Path;

    #[test]
    fn built_binaries_are_found_in_cargo_target_dir() {
        let root = Path::new("/p");
        assert_eq!(target_dir(root, None), Path::new("/p/target"));
        assert_eq!(target_dir(root, Some("".into())), Path::new("/p/target"));
        assert_eq!(
            target_dir(root, Some("/work/t".into())),
            Path::new("/work/t")
        );
        assert_eq!(target_dir(root, Some("t2".into())), Path::new("/p/t2"));
    }

    #[test]
    fn quotes_only_when_needed() {
        assert_eq!(shell_quote("ibv_devices"), "ibv_devices");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
