//! Processes for the rping device tests: spawned with their output collected, waited for
//! with a bound, killed when dropped.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_rdma_examples::rping::pattern::{c_str, PingPattern};

/// Our binary.
pub const OURS: &str = env!("CARGO_BIN_EXE_rping");
/// rdma-core's, from PATH.
pub const THEIRS: &str = "rping";

/// The RDMA interface's address.
pub fn ip() -> String {
    std::env::var("TOKIO_RDMA_LOCAL_IP")
        .expect("TOKIO_RDMA_LOCAL_IP must name the RDMA interface's address")
}

/// The `-v` lines a client prints for `count` pings of `size` bytes.
pub fn expected_pings(size: usize, count: u64) -> Vec<String> {
    let mut p = PingPattern::new();
    let mut buf = vec![0; size];
    (0..count)
        .map(|_| {
            p.fill(&mut buf);
            format!("ping data: {}", String::from_utf8_lossy(c_str(&buf)))
        })
        .collect()
}

/// A child process whose stdout and stderr are collected as they come.
pub struct Proc {
    what: String,
    child: Child,
    status: Option<ExitStatus>,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    })
}

/// Starts `bin args...`.
pub fn spawn(bin: &str, args: &[&str]) -> Proc {
    let what = format!("{bin} {}", args.join(" "));
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let (out, err) = (Arc::default(), Arc::default());
    let readers = vec![
        collect(child.stdout.take().expect("piped"), Arc::clone(&out)),
        collect(child.stderr.take().expect("piped"), Arc::clone(&err)),
    ];
    Proc {
        what,
        child,
        status: None,
        out,
        err,
        readers,
    }
}

impl Proc {
    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.poll().is_none()
    }

    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
            if self.status.is_some() {
                // The pipes close with the process: the readers end.
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
            }
        }
        self.status
    }

    /// Waits at most `limit` for it to exit; kills it and fails the test after that.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.poll() {
                return s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let _ = self.poll();
                panic!(
                    "{} did not finish within {limit:?}\n{}",
                    self.what,
                    self.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) and fails the test unless it exited with 0.
    pub fn wait_ok(&mut self, limit: Duration) {
        let s = self.wait(limit);
        assert!(s.success(), "{} failed: {s}\n{}", self.what, self.dump());
    }

    /// [`wait_ok`](Self::wait_ok), by value.
    pub fn finish_ok(mut self, limit: Duration) -> Self {
        self.wait_ok(limit);
        self
    }

    /// [`wait`](Self::wait), by value.
    pub fn finish(mut self, limit: Duration) -> Self {
        self.wait(limit);
        self
    }

    /// Exited with 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    /// Its stdout lines starting with `prefix`.
    pub fn lines_with(&self, prefix: &str) -> Vec<String> {
        self.stdout()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    /// Waits (bounded) until its stderr contains `text`.
    pub fn wait_stderr(&mut self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.stderr().contains(text) {
            assert!(
                Instant::now() < deadline,
                "{}: no {text:?} on stderr within {limit:?}\n{}",
                self.what,
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn dump(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout(), self.stderr())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.poll().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until an RDMA CM id listens on `port` (from `rdma resource show cm_id`), failing if
/// `server` exits first or nothing listens within 30 s. A client started earlier would be
/// refused at once.
pub fn wait_listening(port: u16, server: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let suffix = format!(":{port}");
    loop {
        let out = Command::new("rdma")
            .args(["resource", "show", "cm_id"])
            .output()
            .expect("running `rdma resource show cm_id`");
        let listing = String::from_utf8_lossy(&out.stdout);
        if listing
            .lines()
            .any(|l| l.contains("LISTEN") && l.split_whitespace().any(|w| w.ends_with(&suffix)))
        {
            return;
        }
        assert!(
            server.running(),
            "{} exited before listening\n{}",
            server.what,
            server.dump()
        );
        assert!(
            Instant::now() < deadline,
            "nothing listens on port {port} after 30 s; `rdma resource show cm_id`: {listing} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
