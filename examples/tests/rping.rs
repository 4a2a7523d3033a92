//! Device tests of the `rping` example against rdma-core's `rping` (from PATH) and itself:
//! both directions with `-V`, several sizes and counts, the persistent server with clients in
//! turn and at once, and a junk peer whose connection alone ends.
//!
//! They need an RDMA device, so they are ignored on a plain host; `cargo xtask test` runs them
//! in the soft-RoCE VM. The interface's address is `TOKIO_RDMA_LOCAL_IP`. Each test uses its
//! own ports; every wait is bounded and every process is killed when its test ends.

#[path = "rping/common.rs"]
mod common;

use std::time::Duration;

use common::{expected_pings, ip, spawn, wait_listening, Proc, OURS, THEIRS};

/// One client/server pair; returns (server, client) after both exited successfully.
fn pair(server: &str, client: &str, port: u16, size: usize, count: u64) -> (Proc, Proc) {
    let ip = ip();
    let (p, s, c) = (port.to_string(), size.to_string(), count.to_string());
    let mut srv = spawn(
        server,
        &["-s", "-V", "-v", "-a", &ip, "-p", &p, "-S", &s, "-C", &c],
    );
    wait_listening(port, &mut srv);
    let mut cli = spawn(
        client,
        &["-c", "-V", "-v", "-a", &ip, "-p", &p, "-S", &s, "-C", &c],
    );
    let limit = Duration::from_secs(60);
    cli.wait_ok(limit);
    srv.wait_ok(limit);
    (srv, cli)
}

/// Runs `client` against `server` at every size and count, checking both sides' output
/// line by line against rping's pattern.
fn both_ways(server: &str, client: &str, base_port: u16) {
    let cases = [(64, 10), (23, 3), (100, 1), (4096, 5), (65535, 2)];
    for (i, &(size, count)) in cases.iter().enumerate() {
        let (srv, cli) = pair(server, client, base_port + i as u16, size, count);
        let want = expected_pings(size, count);
        assert_eq!(
            cli.lines_with("ping data: "),
            want,
            "client -S {size} -C {count}"
        );
        let served: Vec<String> = want.iter().map(|l| format!("server {l}")).collect();
        assert_eq!(
            srv.lines_with("server ping data: "),
            served,
            "server -S {size}"
        );
    }
}

#[test]
#[ignore = "needs an RDMA device"]
fn rping_our_client_against_rdma_core_server() {
    both_ways(THEIRS, OURS, 18100);
}

#[test]
#[ignore = "needs an RDMA device"]
fn rping_rdma_core_client_against_our_server() {
    both_ways(OURS, THEIRS, 18110);
}

#[test]
#[ignore = "needs an RDMA device"]
fn rping_ours_against_ours() {
    both_ways(OURS, OURS, 18120);
}

#[test]
#[ignore = "needs an RDMA device"]
fn rping_persistent_server_serves_clients_in_turn_and_at_once() {
    let ip = ip();
    let port = 18130;
    let p = port.to_string();
    let mut srv = spawn(OURS, &["-s", "-P", "-V", "-a", &ip, "-p", &p]);
    wait_listening(port, &mut srv);
    let client = |bin: &str, count: u64| {
        let c = count.to_string();
        spawn(bin, &["-c", "-V", "-v", "-a", &ip, "-p", &p, "-C", &c])
    };
    // One after another.
    for (i, bin) in [OURS, THEIRS, OURS].into_iter().enumerate() {
        let count = 3 + i as u64;
        let c = client(bin, count);
        let c = c.finish_ok(Duration::from_secs(60));
        assert_eq!(c.lines_with("ping data: "), expected_pings(64, count));
    }
    // At once: six clients, ours and rdma-core's, with enough pings to overlap.
    let clients: Vec<Proc> = (0..6)
        .map(|i| client(if i % 2 == 0 { OURS } else { THEIRS }, 30))
        .collect();
    for c in clients {
        let c = c.finish_ok(Duration::from_secs(120));
        assert_eq!(c.lines_with("ping data: ").len(), 30);
    }
    assert!(
        srv.running(),
        "the persistent server exited: {}",
        srv.stderr()
    );
    // Still serving afterwards.
    client(THEIRS, 2).finish_ok(Duration::from_secs(60));
    assert!(
        !srv.stderr().contains("rping: client"),
        "no connection may fail: {}",
        srv.stderr()
    );
}

#[test]
#[ignore = "needs an RDMA device"]
fn rping_our_server_refuses_a_source_larger_than_its_buffer() {
    let ip = ip();
    let port = 18140;
    let p = port.to_string();
    let mut srv = spawn(OURS, &["-s", "-a", &ip, "-p", &p, "-S", "64"]);
    wait_listening(port, &mut srv);
    let cli = spawn(THEIRS, &["-c", "-a", &ip, "-p", &p, "-S", "128", "-C", "1"]);
    let srv = srv.finish(Duration::from_secs(60));
    assert!(!srv.success(), "the server must fail: {}", srv.stderr());
    assert!(
        srv.stderr()
            .contains("advertised a 128-byte source, larger than our 64-byte buffer"),
        "{}",
        srv.stderr()
    );
    // rdma-core's client just sees the connection end.
    let _ = cli.finish(Duration::from_secs(60));
}

#[path = "rping/junk.rs"]
mod junk;
