//! rping's command line (`-s`/`-c`, `-a`, `-I`, `-p`, `-C`, `-S`, `-v`, `-V`, `-q`, `-P`,
//! `-d`) and what it means once checked.

use std::net::{SocketAddr, ToSocketAddrs};

use clap::Parser;

use super::error::{Error, Result};
use super::pattern::{DEFAULT_SIZE, MAX_SIZE, MIN_SIZE};

/// rping's default port.
pub const DEFAULT_PORT: u16 = 7174;

/// The command line, flag for flag as rdma-core's `rping`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "rping",
    about = "RDMA CM connection and RDMA ping-pong test, wire-compatible with rdma-core's rping",
    disable_version_flag = true
)]
pub struct Args {
    /// Server side (to bind to any IPv6 address use -a ::0).
    #[arg(short = 's', overrides_with = "client")]
    pub server: bool,
    /// Client side.
    #[arg(short = 'c', overrides_with = "server")]
    pub client: bool,
    /// Address: the server binds to it (default 0.0.0.0), the client connects to it.
    #[arg(short = 'a', value_name = "ADDR")]
    pub addr: Option<String>,
    /// Source address to bind to (client).
    #[arg(short = 'I', value_name = "ADDR")]
    pub source: Option<String>,
    /// Port.
    #[arg(short = 'p', value_name = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Ping count (0: infinite). The client stops after this many; the server, like rping's,
    /// serves until the client disconnects.
    #[arg(
        short = 'C',
        value_name = "COUNT",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub count: i64,
    /// Ping data size in bytes.
    #[arg(short = 'S', value_name = "SIZE", default_value_t = DEFAULT_SIZE as i64, allow_negative_numbers = true)]
    pub size: i64,
    /// Display ping data to stdout.
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Validate ping data (client).
    #[arg(short = 'V')]
    pub validate: bool,
    /// Quiet: no connection messages ("... DISCONNECT EVENT..."). Note: rdma-core's `-q`
    /// means "self-created QP" instead, which has no visible effect on the wire.
    #[arg(short = 'q')]
    pub quiet: bool,
    /// Persistent server: serve clients one after another and concurrently, one task each.
    #[arg(short = 'P')]
    pub persistent: bool,
    /// Debug prints.
    #[arg(short = 'd', action = clap::ArgAction::Count)]
    pub debug: u8,
}

/// Which side to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Accept connections; `persistent` keeps accepting.
    Server {
        /// `-P`.
        persistent: bool,
    },
    /// Connect and ping.
    Client,
}

/// A checked command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Server or client.
    pub role: Role,
    /// `-a` as given (the server's default is 0.0.0.0).
    pub addr: String,
    /// `-I` as given.
    pub source: Option<String>,
    /// `-p`.
    pub port: u16,
    /// `-C`; `None` is infinite.
    pub count: Option<u64>,
    /// `-S`, within [`MIN_SIZE`]..=[`MAX_SIZE`].
    pub size: usize,
    /// `-v`.
    pub verbose: bool,
    /// `-V`.
    pub validate: bool,
    /// `-q`.
    pub quiet: bool,
    /// `-d`.
    pub debug: bool,
}

impl Args {
    /// Checks the flags the way rping does (same limits; its messages where it has one).
    pub fn config(&self) -> Result<Config> {
        let role = match (self.server, self.client) {
            (true, _) => Role::Server {
                persistent: self.persistent,
            },
            (false, true) => Role::Client,
            (false, false) => {
                return Err(Error::Usage(
                    "choose a side: -s (server) or -c (client)".into(),
                ))
            }
        };
        if !(MIN_SIZE as i64..=MAX_SIZE as i64).contains(&self.size) {
            return Err(Error::Usage(format!(
                "Invalid size {} (valid range is {MIN_SIZE} to {MAX_SIZE})",
                self.size
            )));
        }
        if self.count < 0 {
            return Err(Error::Usage(format!("Invalid count {}", self.count)));
        }
        let addr = match (&self.addr, role) {
            (Some(a), _) => a.clone(),
            (None, Role::Server { .. }) => "0.0.0.0".into(),
            (None, Role::Client) => {
                return Err(Error::Usage(
                    "the client needs the server's address (-a addr)".into(),
                ))
            }
        };
        Ok(Config {
            role,
            addr,
            source: self.source.clone(),
            port: self.port,
            count: (self.count > 0).then_some(self.count as u64),
            size: self.size as usize,
            verbose: self.verbose > 0,
            validate: self.validate,
            quiet: self.quiet,
            debug: self.debug > 0,
        })
    }
}

/// Resolves a host name or address literal (`getaddrinfo`, as rping's `-a`/`-I`).
pub fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    let bad = |why: String| Error::Usage(format!("cannot resolve {host}: {why}"));
    (host, port)
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("no address".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config> {
        let args = Args::try_parse_from(std::iter::once("rping").chain(args.iter().copied()))
            .map_err(|e| Error::Usage(e.to_string()))?;
        args.config()
    }

    #[test]
    fn defaults_are_rpings() {
        let c = parse(&["-s"]).unwrap();
        assert_eq!(c.role, Role::Server { persistent: false });
        assert_eq!(
            (c.addr.as_str(), c.port, c.count, c.size),
            ("0.0.0.0", 7174, None, 64)
        );
        assert!(!c.verbose && !c.validate && !c.quiet && !c.debug);
    }

    #[test]
    fn client_flags_combine_like_getopt() {
        let c = parse(&[
            "-cvVd",
            "-a",
            "192.0.2.1",
            "-C",
            "5",
            "-S",
            "100",
            "-p",
            "9999",
        ])
        .unwrap();
        assert_eq!(c.role, Role::Client);
        assert_eq!((c.addr.as_str(), c.port), ("192.0.2.1", 9999));
        assert_eq!((c.count, c.size), (Some(5), 100));
        assert!(c.verbose && c.validate && c.debug && !c.quiet);
        let c = parse(&["-sPq", "-a", "::0", "-C0"]).unwrap();
        assert_eq!(c.role, Role::Server { persistent: true });
        assert_eq!((c.addr.as_str(), c.count), ("::0", None));
        assert!(c.quiet);
    }

    #[test]
    fn the_last_side_wins() {
        assert_eq!(parse(&["-s", "-c", "-a", "h"]).unwrap().role, Role::Client);
        assert_eq!(
            parse(&["-c", "-s"]).unwrap().role,
            Role::Server { persistent: false }
        );
    }

    #[test]
    fn size_limits_are_rpings() {
        assert_eq!(parse(&["-s", "-S", "23"]).unwrap().size, 23);
        assert_eq!(parse(&["-s", "-S", "65535"]).unwrap().size, 65535);
        for bad in ["22", "0", "-5", "65536"] {
            match parse(&["-s", "-S", bad]) {
                Err(Error::Usage(m)) => assert!(m.starts_with("Invalid size"), "{m}"),
                other => panic!("-S {bad}: {other:?}"),
            }
        }
        assert!(parse(&["-s", "-S", "lots"]).is_err());
    }

    #[test]
    fn bad_counts_and_missing_choices_are_refused() {
        match parse(&["-s", "-C", "-1"]) {
            Err(Error::Usage(m)) => assert_eq!(m, "Invalid count -1"),
            other => panic!("{other:?}"),
        }
        assert!(parse(&[]).is_err());
        assert!(parse(&["-c"]).is_err());
        assert!(parse(&["-s", "-p", "70000"]).is_err());
        // No -V version flag: -V is validate.
        assert!(parse(&["-s", "-V"]).unwrap().validate);
    }

    #[test]
    fn resolves_literals() {
        assert_eq!(
            resolve("192.0.2.1", 7174).unwrap(),
            "192.0.2.1:7174".parse().unwrap()
        );
        assert_eq!(resolve("::0", 1).unwrap(), "[::]:1".parse().unwrap());
        assert!(resolve("no such host.invalid", 1).is_err());
    }
}
