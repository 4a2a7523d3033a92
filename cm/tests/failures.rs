//! Connection attempts that cannot succeed: nobody listens (refused), no route, an unused
//! address on the local subnet (unreachable or timed out). Each fails with its own error
//! within a bound. Needs an RDMA device (`cargo xtask test` runs these in the soft-RoCE VM).
//! Ports 7200-7299.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{addr, bounded, exchange, listen, pair};
use tokio_rdma_cm::{connect, ConnectOptions, Error, Step};

/// Options with short, explicit bounds for every step.
fn short_timeouts() -> ConnectOptions {
    ConnectOptions {
        resolve_addr_timeout: Duration::from_secs(2),
        resolve_route_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(10),
        ..ConnectOptions::default()
    }
}

/// Connects to `to` with [`short_timeouts`] and expects Unreachable or TimedOut, within
/// `limit` (a hang fails after twice that).
async fn expect_unreachable(to: SocketAddr, limit: Duration) -> Step {
    let start = Instant::now();
    let res = bounded(
        &format!("connect to {to}"),
        2 * limit.as_secs(),
        connect(to, short_timeouts()),
    )
    .await;
    let took = start.elapsed();
    match res {
        Err(Error::Unreachable { step, addr, status }) => {
            eprintln!("{to}: unreachable at step {step:?} (status {status}) after {took:?}");
            assert_eq!(addr, to);
            assert!(took <= limit, "{to}: took {took:?}, bound {limit:?}");
            step
        }
        Err(Error::TimedOut { step, addr, after }) => {
            eprintln!("{to}: timed out at step {step:?} after {after:?} (took {took:?})");
            assert_eq!(addr, to);
            assert!(after <= limit, "reported after {after:?}");
            assert!(took <= limit, "{to}: took {took:?}, bound {limit:?}");
            step
        }
        Err(e) => panic!("{to}: expected Unreachable or TimedOut, got {e} ({e:?})"),
        Ok(_) => panic!("{to}: connect succeeded"),
    }
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn nobody_listening_is_refused() {
    let to = addr(7201);
    let start = Instant::now();
    let res = bounded(
        "connect to a closed port",
        20,
        connect(to, short_timeouts()),
    )
    .await;
    let took = start.elapsed();
    match res {
        Err(Error::Refused { addr, reason }) => {
            eprintln!("refused with reason {reason} after {took:?}");
            assert_eq!(addr, to);
        }
        Err(e) => panic!("expected Error::Refused, got {e} ({e:?})"),
        Ok(_) => panic!("connect to a port nobody listens on succeeded"),
    }
    assert!(took < Duration::from_secs(10), "refusal took {took:?}");
    // Refusal is immediate each time, and leaves the process able to connect.
    for _ in 0..3 {
        let res = bounded("connect again", 20, connect(to, short_timeouts())).await;
        assert!(matches!(res, Err(Error::Refused { .. })), "{:?}", res.err());
    }
    let listener = listen(7202).await;
    let (c, s) = pair(&listener).await;
    exchange(&c, &s, b"after refusals").await;
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn no_route_is_unreachable_or_timed_out() {
    // TEST-NET-2: no route in the VM (only 192.0.2.0/24 on dummy0).
    let to: SocketAddr = "198.51.100.1:7203".parse().unwrap();
    let step = expect_unreachable(to, Duration::from_secs(15)).await;
    // Nothing routes there: address resolution is what fails.
    assert_eq!(step, Step::ResolveAddr);
    let listener = listen(7204).await;
    let (c, s) = pair(&listener).await;
    exchange(&c, &s, b"after no route").await;
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn unused_address_on_the_subnet_is_unreachable_or_timed_out() {
    // On the local subnet, but nobody has it: address resolution may succeed (dummy0 does no
    // ARP), then nobody answers the connection request.
    let to: SocketAddr = "192.0.2.77:7205".parse().unwrap();
    expect_unreachable(to, Duration::from_secs(15)).await;
    let listener = listen(7206).await;
    let (c, s) = pair(&listener).await;
    exchange(&c, &s, b"after an unused address").await;
}
