//! The shell script each VM runs for the scenarios, and reading back what they reported.

use super::scenario::{Role, RoleReport, Scenario};
use crate::process::shell_quote;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Shell functions `serve`, `connect` and the barrier between the hosts.
const PRELUDE: &str = include_str!("prelude.sh");

/// Where and how long the scenario scripts run.
#[derive(Debug, Clone)]
pub struct Setting {
    /// A directory both hosts write: the barrier files (in the project directory for VMs).
    pub sync: PathBuf,
    /// A directory of each host's own for program output (`/tmp` in a VM).
    pub scratch: PathBuf,
    /// Seconds each program run may take.
    pub limit: u32,
    /// Seconds a server may take to end after its client.
    pub grace: u32,
    /// Seconds each host waits for the other to come up.
    pub boot: u32,
}

/// The script of host index `host` (0 or 1): every scenario, in order, as server or client.
pub fn host_script(scenarios: &[Scenario], host: usize, setting: &Setting) -> String {
    let path = |p: &Path| shell_quote(&p.to_string_lossy());
    let mut s = format!(
        "sync={}\nscratch={}\nme={}\npeer={}\ngrace={}\nboot={}\n",
        path(&setting.sync),
        path(&setting.scratch),
        host + 1,
        2 - host,
        setting.grace,
        setting.boot
    );
    s += PRELUDE;
    for (i, sc) in scenarios.iter().enumerate() {
        let (function, argv) = if sc.server_host == host {
            ("serve", &sc.server)
        } else {
            ("connect", &sc.client)
        };
        let argv: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
        s += &format!(
            "{function} {} {} {}\n",
            key(i),
            setting.limit,
            argv.join(" ")
        );
    }
    s += "exit 0\n";
    s
}

/// The key of the `index`th scenario in the scripts and their output.
pub fn key(index: usize) -> String {
    format!("s{index}")
}

fn parse_role(word: &str) -> Option<Role> {
    match word {
        "server" => Some(Role::Server),
        "client" => Some(Role::Client),
        _ => None,
    }
}

/// The reports in the VMs' output, by scenario key and role. A side whose `exit` line is
/// missing has no report.
pub fn parse_reports(output: &[String]) -> BTreeMap<(String, Role), RoleReport> {
    let mut pending: BTreeMap<(String, Role), Vec<String>> = BTreeMap::new();
    let mut done = BTreeMap::new();
    for line in output {
        let Some(rest) = line.strip_prefix("@@ ") else {
            continue;
        };
        let mut words = rest.splitn(3, ' ');
        let (Some(key), Some(role), Some(tail)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let Some(role) = parse_role(role) else {
            continue;
        };
        let id = (key.to_string(), role);
        if let Some(text) = tail.strip_prefix("| ") {
            pending.entry(id).or_default().push(text.to_string());
        } else if let Some(report) = parse_exit(tail) {
            let lines = pending.remove(&id).unwrap_or_default();
            done.insert(id, RoleReport { lines, ..report });
        }
    }
    done
}

/// `exit STATUS tries N secs N`.
fn parse_exit(tail: &str) -> Option<RoleReport> {
    let words: Vec<&str> = tail.split_whitespace().collect();
    match words[..] {
        ["exit", status, "tries", tries, "secs", secs] => Some(RoleReport {
            status: status.parse().ok()?,
            tries: tries.parse().ok()?,
            secs: secs.parse().ok()?,
            lines: Vec::new(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(server_host: usize) -> Scenario {
        Scenario {
            name: "twohost::x".into(),
            server_host,
            server: vec!["rping".into(), "-s".into()],
            client: vec!["/p a/rping".into(), "-c".into()],
            server_pings: None,
            client_pings: None,
        }
    }

    #[test]
    fn each_host_runs_its_side_of_every_scenario() {
        let list = [scenario(0), scenario(1)];
        let setting = Setting {
            sync: "/p/sync dir".into(),
            scratch: "/tmp".into(),
            limit: 30,
            grace: 10,
            boot: 180,
        };
        let one = host_script(&list, 0, &setting);
        let two = host_script(&list, 1, &setting);
        assert!(
            one.starts_with("sync='/p/sync dir'\nscratch=/tmp\nme=1\npeer=2\ngrace=10\nboot=180\n")
        );
        assert!(
            two.starts_with("sync='/p/sync dir'\nscratch=/tmp\nme=2\npeer=1\ngrace=10\nboot=180\n")
        );
        assert!(one.contains("\nserve s0 30 rping -s\nconnect s1 30 '/p a/rping' -c\nexit 0\n"));
        assert!(two.contains("\nconnect s0 30 '/p a/rping' -c\nserve s1 30 rping -s\nexit 0\n"));
    }

    #[test]
    fn reads_reports_of_both_hosts_interleaved() {
        let out: Vec<String> = [
            "@@ s0 server | server ping data: rdma-ping-0: ABC",
            "@@ s0 client | ping data: rdma-ping-0: ABC",
            "some other line",
            "@@ s0 client | with | bars and @@ signs",
            "@@ s0 client exit 0 tries 3 secs 2",
            "@@ s0 server | wait for RDMA_READ_ADV state 10",
            "@@ s0 server exit 0 tries 1 secs 4",
            "@@ sync: host 2 set no s1.client within 75 s: taking it as gone",
            "@@ s1 server | cut off before its exit line",
            "@@ s1 client exit 124 tries 1 secs 30",
            "@@ s2 client exit zero tries 1 secs 30",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let r = parse_reports(&out);
        assert_eq!(r.len(), 3);
        let client = &r[&("s0".to_string(), Role::Client)];
        assert_eq!(
            (client.status, client.tries, client.secs),
            (0, 3, 2),
            "{client:?}"
        );
        assert_eq!(
            client.lines,
            ["ping data: rdma-ping-0: ABC", "with | bars and @@ signs"]
        );
        let server = &r[&("s0".to_string(), Role::Server)];
        assert_eq!(server.lines.len(), 2);
        assert_eq!(r[&("s1".to_string(), Role::Client)].status, 124);
        assert!(!r.contains_key(&("s1".to_string(), Role::Server)));
        assert!(!r.contains_key(&("s2".to_string(), Role::Client)));
    }

    /// Runs the scripts of `hosts` (host indexes) side by side on this machine, as the VMs
    /// would, with fake programs; returns the reports.
    fn run_here(
        name: &str,
        list: &[Scenario],
        hosts: &[usize],
        sync: &Path,
    ) -> BTreeMap<(String, Role), RoleReport> {
        // Each host has a scratch directory of its own, as each VM has its /tmp.
        let scratch = |h: usize| sync.with_extension(format!("scratch{h}"));
        let children: Vec<_> = hosts
            .iter()
            .map(|&h| {
                std::fs::create_dir_all(scratch(h)).unwrap();
                let setting = Setting {
                    sync: sync.to_path_buf(),
                    scratch: scratch(h),
                    limit: 3,
                    grace: 1,
                    boot: 1,
                };
                std::process::Command::new("sh")
                    .args(["-c", &host_script(list, h, &setting)])
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut output = Vec::new();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{name}: {out:?}");
            output.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(String::from),
            );
        }
        for h in hosts {
            let _ = std::fs::remove_dir_all(scratch(*h));
        }
        let _ = std::fs::remove_dir_all(sync);
        parse_reports(&output)
    }

    fn dirs(name: &str) -> PathBuf {
        let base = std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        base
    }

    fn sh(server_host: usize, server: &str, client: &str) -> Scenario {
        let argv = |cmd: &str| vec!["sh".to_string(), "-c".to_string(), cmd.to_string()];
        Scenario {
            name: "local".into(),
            server_host,
            server: argv(server),
            client: argv(client),
            server_pings: None,
            client_pings: None,
        }
    }

    #[test]
    fn scenarios_run_in_turn_bounded_and_reported() {
        let sync = dirs("twohost-turns");
        let ready = sync.join("listening");
        let ready = ready.to_string_lossy();
        let list = [
            // The client fails until the server "listens"; it is run again meanwhile.
            sh(
                0,
                &format!("sleep 1; touch {ready}; sleep 1; echo 'server ping data'"),
                &format!("test -e {ready} || exit 1; echo 'ping data'; echo oops >&2"),
            ),
            // A server that outlives its client is killed after the grace time.
            sh(1, "sleep 60", "echo 'ping data'"),
            // A hanging client is killed at the limit.
            sh(0, "exit 0", "sleep 60"),
        ];
        let r = run_here("turns", &list, &[0, 1], &sync);
        let get = |k: &str, role| r.get(&(k.to_string(), role)).cloned().unwrap();

        let (server, client) = (get("s0", Role::Server), get("s0", Role::Client));
        assert_eq!((server.status, client.status), (0, 0), "{r:?}");
        assert!(client.tries >= 2, "{client:?}");
        assert_eq!(server.lines, ["server ping data"]);
        assert_eq!(client.lines, ["ping data", "oops"]);

        let (server, client) = (get("s1", Role::Server), get("s1", Role::Client));
        assert_eq!(client.status, 0);
        assert_ne!(server.status, 0);
        assert_eq!(
            server.lines,
            ["xtask: still running 1 s after the client ended: killed"]
        );

        let (server, client) = (get("s2", Role::Server), get("s2", Role::Client));
        assert_eq!((server.status, client.status, client.tries), (0, 124, 1));
    }

    #[test]
    fn a_host_that_never_comes_up_ends_every_scenario_at_once() {
        let sync = dirs("twohost-alone");
        let list = [sh(0, "sleep 60", "true"), sh(1, "true", "true")];
        let began = std::time::Instant::now();
        let r = run_here("alone", &list, &[0], &sync);
        assert!(began.elapsed().as_secs() < 10, "{:?}", began.elapsed());
        assert_eq!(r.len(), 2, "{r:?}");
        for report in r.values() {
            assert_eq!(report.status, 125);
            assert_eq!(report.lines, ["host 2 is gone: not started"]);
        }
    }
}
