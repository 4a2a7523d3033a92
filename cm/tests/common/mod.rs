//! Shared setup for the connection-manager device tests: the VM's address, bounded awaits,
//! connected pairs over a listener, one-message exchanges and process gauges (fds, RSS,
//! threads).
//!
//! The soft-RoCE VM has rxe0 on dummy0 with 192.0.2.1/24; only that address is local, and
//! rxe loops local traffic back, so both ends run in this process (or in a child process on
//! the same address). Each test uses its own port (see the port ranges in each file).
#![allow(dead_code)]

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use tokio_rdma_cm::verbs::{Access, Error as VerbsError, WcStatus};
use tokio_rdma_cm::{
    connect, AcceptOptions, ConnectOptions, Connection, ConnectionEvent, Listener, Result,
};

/// The VM's only local address (dummy0).
pub const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// `192.0.2.1:port`.
pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((LOCAL, port))
}

/// Fails the test instead of hanging.
pub async fn bounded<F: Future>(what: &str, secs: u64, f: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: timed out after {secs}s"),
    }
}

/// Binds a listener on `192.0.2.1:port`.
pub async fn listen(port: u16) -> Listener {
    bounded("Listener::bind", 10, Listener::bind(addr(port)))
        .await
        .unwrap_or_else(|e| panic!("bind 192.0.2.1:{port}: {e}"))
}

/// Connects to `listener` and accepts the request concurrently: `(client, server)`.
pub async fn pair_with(
    listener: &Listener,
    copts: ConnectOptions,
    aopts: AcceptOptions,
) -> (Connection, Connection) {
    let to = listener.local_addr();
    let accept = async {
        let req = listener.accept().await?;
        req.accept(aopts).await
    };
    let (client, server) = bounded("connect + accept", 20, async {
        tokio::join!(connect(to, copts), accept)
    })
    .await;
    let client = client.unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    let server = server.unwrap_or_else(|e| panic!("accept on {to}: {e}"));
    (client, server)
}

/// [`pair_with`] default options.
pub async fn pair(listener: &Listener) -> (Connection, Connection) {
    pair_with(
        listener,
        ConnectOptions::default(),
        AcceptOptions::default(),
    )
    .await
}

/// Sends `msg` from `from` to `to` (a one-shot receive posted at `to` first) and checks it
/// arrived intact.
pub async fn exchange(from: &Connection, to: &Connection, msg: &[u8]) {
    let buf = to
        .pd()
        .register(vec![0u8; 256], Access::LOCAL_WRITE)
        .expect("register receive buffer");
    let recv = to.recv(buf);
    let (res, ()) = bounded("send_inline", 10, from.send_inline(msg)).await;
    res.unwrap_or_else(|e| panic!("send of {} bytes: {e}", msg.len()));
    let (res, buf) = bounded("recv", 10, recv).await;
    let c = res.unwrap_or_else(|e| panic!("recv: {e}"));
    assert_eq!(c.byte_len as usize, msg.len(), "received length");
    assert_eq!(&buf[..msg.len()], msg, "received payload");
}

/// Reads events until `want` arrives (within `secs`); returns the events seen before it.
/// Fails if the event stream ends first.
pub async fn wait_event(
    conn: &mut Connection,
    want: ConnectionEvent,
    secs: u64,
    who: &str,
) -> Vec<ConnectionEvent> {
    let mut seen = Vec::new();
    let what = format!("{who}: waiting for {want:?}");
    bounded(&what, secs, async {
        loop {
            match conn.next_event().await {
                Some(e) if e == want => return,
                Some(e) => seen.push(e),
                None => panic!("{who}: event stream ended before {want:?} (saw {seen:?})"),
            }
        }
    })
    .await;
    seen
}

/// A receive that ended because its queue was flushed (or closed): anything but success.
pub fn assert_flushed<T>(what: &str, res: std::result::Result<T, VerbsError>) {
    match res {
        Ok(_) => panic!("{what}: completed successfully, expected a flush error"),
        Err(e) => {
            if let Some(status) = e.completion_status() {
                assert_eq!(status, WcStatus::WrFlushErr, "{what}: {e}");
            }
        }
    }
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// A `Name:  value` field of /proc/self/status, as a number (kB fields without the unit).
fn status_field(name: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("/proc/self/status has no {name}"))
}

/// Resident set size in KiB (/proc/self/statm's resident pages, as /proc/self/status's
/// VmRSS reports them).
pub fn rss_kib() -> u64 {
    status_field("VmRSS")
}

/// Threads of this process.
pub fn threads() -> u64 {
    status_field("Threads")
}

/// An IPv6 address of dummy0 from /proc/net/if_inet6: a link-local one (with dummy0's
/// interface index as its scope id) or a global one.
pub fn dummy0_ipv6(link_local: bool) -> Option<SocketAddrV6> {
    let table = std::fs::read_to_string("/proc/net/if_inet6").ok()?;
    for line in table.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[5] != "dummy0" || f[0].len() != 32 {
            continue;
        }
        let mut octets = [0u8; 16];
        for (i, o) in octets.iter_mut().enumerate() {
            *o = u8::from_str_radix(&f[0][2 * i..2 * i + 2], 16).ok()?;
        }
        let ifindex = u32::from_str_radix(f[1], 16).ok()?;
        // Scope 0x20 is link, 0x00 global.
        let scope = u8::from_str_radix(f[3], 16).ok()?;
        let ip = std::net::Ipv6Addr::from(octets);
        match (link_local, scope) {
            (true, 0x20) => return Some(SocketAddrV6::new(ip, 0, 0, ifindex)),
            (false, 0x00) => return Some(SocketAddrV6::new(ip, 0, 0, 0)),
            _ => {}
        }
    }
    None
}

/// Unwraps a cm result with the test's words.
pub fn ok<T>(what: &str, r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e} ({e:?})"))
}
