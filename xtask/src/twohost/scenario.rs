//! The two-host scenarios: which programs talk, with which arguments, and what counts as a pass.

/// Host index (0: 192.0.2.1, 1: 192.0.2.2) to its address on the socket network.
pub fn host_ip(host: usize) -> String {
    format!("192.0.2.{}", host + 1)
}

/// An rping implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rping {
    /// rdma-core's `rping` (rdmacm-utils), the reference.
    RdmaCore,
    /// This project's `rping` example (wire-compatible with rdma-core's).
    Ours,
}

impl Rping {
    /// The name scenarios use for it.
    pub fn label(self) -> &'static str {
        match self {
            Rping::RdmaCore => "rdmacore",
            Rping::Ours => "ours",
        }
    }
}

/// One rping exchange: a server, a client on the other host, `count` pings of `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpingCase {
    /// The server's implementation.
    pub server: Rping,
    /// The client's implementation.
    pub client: Rping,
    /// Host index of the server.
    pub server_host: usize,
    /// Pings (`-C`).
    pub count: u32,
    /// Buffer size in bytes (`-S`).
    pub size: u32,
}

/// Ping count and size of each implementation pairing: the default size, a page, and rping's
/// largest buffer (64 KiB - 1).
const SHAPES: [(u32, u32); 3] = [(3, 64), (20, 4096), (4, 65535)];

impl RpingCase {
    /// The scenario's name, e.g. `twohost::rping::ours_serves_rdmacore::3x64`.
    pub fn name(&self) -> String {
        let host = if self.server_host == 0 {
            String::new()
        } else {
            format!("_on_host{}", self.server_host + 1)
        };
        format!(
            "twohost::rping::{}_serves_{}{host}::{}x{}",
            self.server.label(),
            self.client.label(),
            self.count,
            self.size
        )
    }

    /// Every rping case, the rdma-core baseline first (it proves the plumbing).
    pub fn all() -> Vec<RpingCase> {
        let mut cases = Vec::new();
        let pairs = [
            (Rping::RdmaCore, Rping::RdmaCore),
            (Rping::Ours, Rping::RdmaCore),
            (Rping::RdmaCore, Rping::Ours),
            (Rping::Ours, Rping::Ours),
        ];
        for (server, client) in pairs {
            for (count, size) in SHAPES {
                cases.push(RpingCase {
                    server,
                    client,
                    server_host: 0,
                    count,
                    size,
                });
            }
        }
        // The baseline once the other way round: both directions of the network work.
        cases.insert(
            SHAPES.len(),
            RpingCase {
                server: Rping::RdmaCore,
                client: Rping::RdmaCore,
                server_host: 1,
                count: SHAPES[0].0,
                size: SHAPES[0].1,
            },
        );
        cases
    }

    /// The scenario, given each implementation's program (`Err`: why it cannot run).
    pub fn scenario<E>(
        &self,
        port: u16,
        program: impl Fn(Rping) -> Result<String, E>,
    ) -> Result<Scenario, E> {
        let ip = host_ip(self.server_host);
        let common = |role: &str| -> Vec<String> {
            let mut v: Vec<String> = vec![role.into(), "-a".into(), ip.clone()];
            v.extend(["-p".into(), port.to_string()]);
            v.extend(["-C".into(), self.count.to_string()]);
            v.extend(["-S".into(), self.size.to_string()]);
            v.extend(["-v".into(), "-V".into()]);
            v
        };
        let mut server = vec![program(self.server)?];
        server.extend(common("-s"));
        let mut client = vec![program(self.client)?];
        client.extend(common("-c"));
        // Both rpings print one `ping data` line per ping with -v (`server ping data` on the
        // server): the count proves the exchange ran to the end.
        Ok(Scenario {
            name: self.name(),
            server_host: self.server_host,
            server,
            client,
            server_pings: Some(self.count),
            client_pings: Some(self.count),
        })
    }
}

/// A client/server exchange across the two VMs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// As reported (`test NAME ... ok`).
    pub name: String,
    /// Host index of the server; the client runs on the other host.
    pub server_host: usize,
    /// The server's argv.
    pub server: Vec<String>,
    /// The client's argv; retried while the server does not listen yet.
    pub client: Vec<String>,
    /// `ping data` lines the server must print, if checked.
    pub server_pings: Option<u32>,
    /// `ping data` lines the client must print, if checked.
    pub client_pings: Option<u32>,
}

impl Scenario {
    /// Whether it passed, from what each side reported (`None`: it reported nothing).
    pub fn judge(
        &self,
        server: Option<&RoleReport>,
        client: Option<&RoleReport>,
    ) -> Result<(), String> {
        let sides = [
            ("server", server, self.server_pings),
            ("client", client, self.client_pings),
        ];
        let mut problems = Vec::new();
        for (role, report, pings) in sides {
            let Some(report) = report else {
                problems.push(format!(
                    "no result from the {role} (the VM stopped or hung)"
                ));
                continue;
            };
            match report.status {
                0 => {}
                124 => problems.push(format!("the {role} timed out")),
                s => problems.push(format!("the {role} exited with status {s}")),
            }
            if let Some(want) = pings {
                let got = report
                    .lines
                    .iter()
                    .filter(|l| l.contains("ping data"))
                    .count();
                if got != want as usize {
                    problems.push(format!("the {role} printed {got} of {want} pings"));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// Which side of a scenario a report is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// The listening side.
    Server,
    /// The connecting side.
    Client,
}

/// What one side of a scenario reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleReport {
    /// The program's exit status (124: timed out; 125: not started, the peer was gone).
    pub status: i32,
    /// Runs (a client is run again while the server does not listen yet).
    pub tries: u32,
    /// Seconds from start to report.
    pub secs: u64,
    /// Its output (of its last run).
    pub lines: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(status: i32, lines: &[&str]) -> RoleReport {
        RoleReport {
            status,
            tries: 1,
            secs: 1,
            lines: lines.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn programs(r: Rping) -> Result<String, String> {
        match r {
            Rping::RdmaCore => Ok("rping".into()),
            Rping::Ours => Err("no rping example".into()),
        }
    }

    #[test]
    fn baseline_comes_first_and_names_are_unique() {
        let all = RpingCase::all();
        assert!(all[..=SHAPES.len()]
            .iter()
            .all(|c| c.server == Rping::RdmaCore && c.client == Rping::RdmaCore));
        assert_eq!(all.len(), 4 * SHAPES.len() + 1);
        let mut names: Vec<String> = all.iter().map(RpingCase::name).collect();
        assert_eq!(names[0], "twohost::rping::rdmacore_serves_rdmacore::3x64");
        assert_eq!(
            names[SHAPES.len()],
            "twohost::rping::rdmacore_serves_rdmacore_on_host2::3x64"
        );
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
    }

    #[test]
    fn scenario_argv_is_rpings() {
        let case = RpingCase {
            server: Rping::RdmaCore,
            client: Rping::RdmaCore,
            server_host: 1,
            count: 3,
            size: 64,
        };
        let s = case.scenario(7401, programs).unwrap();
        assert_eq!(
            s.server.join(" "),
            "rping -s -a 192.0.2.2 -p 7401 -C 3 -S 64 -v -V"
        );
        assert_eq!(
            s.client.join(" "),
            "rping -c -a 192.0.2.2 -p 7401 -C 3 -S 64 -v -V"
        );
        assert_eq!((s.server_pings, s.client_pings), (Some(3), Some(3)));
        let ours = RpingCase {
            client: Rping::Ours,
            ..case
        };
        assert_eq!(
            ours.scenario(7401, programs),
            Err("no rping example".into())
        );
    }

    #[test]
    fn judges_status_pings_and_missing_sides() {
        let case = RpingCase {
            server: Rping::RdmaCore,
            client: Rping::RdmaCore,
            server_host: 0,
            count: 2,
            size: 64,
        };
        let s = case.scenario(7400, programs).unwrap();
        let server = report(
            0,
            &["server ping data: rdma-ping-0: A", "server ping data: x"],
        );
        let client = report(
            0,
            &["ping data: rdma-ping-0: A", "ping data: rdma-ping-1: B"],
        );
        assert_eq!(s.judge(Some(&server), Some(&client)), Ok(()));

        let short = report(0, &["ping data: rdma-ping-0: A"]);
        assert_eq!(
            s.judge(Some(&server), Some(&short)),
            Err("the client printed 1 of 2 pings".into())
        );
        let timed_out = report(124, &[]);
        assert_eq!(
            s.judge(None, Some(&timed_out)),
            Err("no result from the server (the VM stopped or hung); \
                 the client timed out; the client printed 0 of 2 pings"
                .into())
        );
        let failed = report(255, &["ping data: a", "ping data: b"]);
        assert_eq!(
            s.judge(Some(&server), Some(&failed)),
            Err("the client exited with status 255".into())
        );
    }
}
