//! Device smoke tests proving the test harness: an RDMA device is there, rdma-core's own tools
//! run over it, and rdma-sys can open it. They need a device, so they are `#[ignore]`d on a
//! plain host; `cargo xtask test` runs them in the soft-RoCE VM (or on a real device).
//!
//! The device is `TOKIO_RDMA_DEVICE` or the first one listed; the address of its interface is
//! `TOKIO_RDMA_LOCAL_IP` (set by the VM harness).

use std::ffi::CStr;
use std::process::{Child, Command, Output, Stdio};
use std::ptr;
use std::time::{Duration, Instant};

fn device_name() -> String {
    if let Ok(dev) = std::env::var("TOKIO_RDMA_DEVICE") {
        return dev;
    }
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/infiniband")
        .expect("no /sys/class/infiniband: no RDMA device on this machine")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .into_iter()
        .next()
        .expect("no RDMA device in /sys/class/infiniband")
}

fn local_ip() -> String {
    std::env::var("TOKIO_RDMA_LOCAL_IP")
        .expect("TOKIO_RDMA_LOCAL_IP must name the RDMA interface's address")
}

/// Waits for `child` at most `limit`, killing it after that.
fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "process did not finish within {limit:?}; stdout: {} stderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a loopback server/client pair of an rdma-core or perftest tool; returns the client's
/// output. The client is retried while the server may still be starting (it fails at once when
/// nothing listens yet), so a slow, emulated machine does not make the test flaky.
fn loopback(server: &mut Command, client: &mut Command) -> String {
    let mut server = server
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start server");
    let mut attempts = 0;
    let c = loop {
        attempts += 1;
        std::thread::sleep(Duration::from_millis(500));
        let child = client
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start client");
        let out = wait_bounded(child, Duration::from_secs(60));
        let server_gone = server.try_wait().expect("try_wait").is_some();
        if out.status.success() || attempts == 20 || server_gone {
            break out;
        }
    };
    let s = wait_bounded(server, Duration::from_secs(20));
    let c_out = String::from_utf8_lossy(&c.stdout).into_owned();
    assert!(
        c.status.success(),
        "client failed after {attempts} attempts: {c_out} {}",
        String::from_utf8_lossy(&c.stderr)
    );
    assert!(
        s.status.success(),
        "server failed: {} {}",
        String::from_utf8_lossy(&s.stdout),
        String::from_utf8_lossy(&s.stderr)
    );
    c_out
}

#[test]
#[ignore = "needs an RDMA device"]
fn device_is_listed_by_ibv_devices() {
    let dev = device_name();
    let out = Command::new("ibv_devices")
        .output()
        .expect("run ibv_devices");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().next() == Some(dev.as_str())),
        "{dev} not in ibv_devices output:\n{text}"
    );
}

#[test]
#[ignore = "needs an RDMA device"]
fn rping_loopback() {
    let ip = local_ip();
    let out = loopback(
        Command::new("rping").args(["-s", "-a", &ip, "-C", "3"]),
        Command::new("rping").args(["-c", "-a", &ip, "-C", "3", "-v"]),
    );
    let pings = out.lines().filter(|l| l.contains("ping data")).count();
    assert_eq!(pings, 3, "expected 3 pings:\n{out}");
}

#[test]
#[ignore = "needs an RDMA device"]
fn perftest_send_latency_loopback() {
    let dev = device_name();
    let ip = local_ip();
    let args = ["-d", &dev, "-x", "1", "-n", "200", "-s", "2"];
    let out = loopback(
        Command::new("ib_send_lat").args(args),
        Command::new("ib_send_lat").args(args).arg(&ip),
    );
    // The result row: "#bytes #iterations t_min t_max t_typical ..."
    let row = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.len() >= 5 && w[0] == "2" && w[1] == "200")
        .unwrap_or_else(|| panic!("no result row in:\n{out}"));
    let typical: f64 = row[4].parse().expect("t_typical is a number");
    assert!(typical > 0.0, "t_typical {typical}");
}

#[test]
#[ignore = "needs an RDMA device"]
fn rdma_sys_opens_device_queries_port_and_gid_allocates_pd_and_cq() {
    use rdma_sys::*;
    let want = device_name();
    let mut num = 0;
    // SAFETY: ibv_get_device_list writes the count into `num` and returns a NULL-terminated
    // array (or NULL on error) that we free with ibv_free_device_list below.
    let list = unsafe { ibv_get_device_list(&mut num) };
    assert!(!list.is_null(), "ibv_get_device_list failed");
    let mut ctx = ptr::null_mut();
    for i in 0..num as usize {
        // SAFETY: i < num, the array holds `num` valid device pointers.
        let dev = unsafe { *list.add(i) };
        // SAFETY: dev is a valid device from the list; the name is a NUL-terminated string.
        let name = unsafe { CStr::from_ptr(ibv_get_device_name(dev)) };
        if name.to_string_lossy() == want {
            // SAFETY: dev is valid while the list is alive; the context stays valid after
            // the list is freed.
            ctx = unsafe { ibv_open_device(dev) };
        }
    }
    // SAFETY: list came from ibv_get_device_list and is freed once.
    unsafe { ibv_free_device_list(list) };
    assert!(!ctx.is_null(), "could not open {want}");

    // SAFETY: ibv_port_attr is plain data; all-zero is a valid value to be overwritten.
    let mut port: ibv_port_attr = unsafe { std::mem::zeroed() };
    // SAFETY: ctx is an open context; port points to writable storage of the right type.
    let rc = unsafe { ___ibv_query_port(ctx, 1, &mut port) };
    assert_eq!(rc, 0, "ibv_query_port failed");
    assert_eq!(
        port.state,
        ibv_port_state::IBV_PORT_ACTIVE,
        "port 1 is not active"
    );

    // SAFETY: ibv_gid is plain data (a 16-byte union).
    let mut gid: ibv_gid = unsafe { std::mem::zeroed() };
    // SAFETY: ctx is open, port 1 exists, gid points to writable storage.
    let rc = unsafe { ibv_query_gid(ctx, 1, 0, &mut gid) };
    assert_eq!(rc, 0, "ibv_query_gid(port 1, index 0) failed");
    // SAFETY: every bit pattern is a valid [u8; 16].
    let raw = unsafe { gid.raw };
    assert_ne!(raw, [0u8; 16], "GID 0 is empty");

    // SAFETY: ctx is an open context.
    let pd = unsafe { ibv_alloc_pd(ctx) };
    assert!(!pd.is_null(), "ibv_alloc_pd failed");
    // SAFETY: ctx is open; no completion channel, no user context.
    let cq = unsafe { ibv_create_cq(ctx, 16, ptr::null_mut(), ptr::null_mut(), 0) };
    assert!(!cq.is_null(), "ibv_create_cq failed");

    // SAFETY: each object is destroyed once, children before the context.
    unsafe {
        assert_eq!(ibv_destroy_cq(cq), 0);
        assert_eq!(ibv_dealloc_pd(pd), 0);
        assert_eq!(ibv_close_device(ctx), 0);
    }
}
