//! Raw work requests and the synchronous `RawPoller` (busy-poll and event mode without a
//! runtime in the loop). Needs an RDMA device (`cargo xtask test` runs these in the VM).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bounded, connect, rig};
use tokio_rdma_verbs::{
    Access, Completion, QpType, QueuePair, QueuePairBuilder, RawPoller, SendOp, WcOpcode, WcStatus,
};

fn small_pair(r: &common::Rig, cq: &tokio_rdma_verbs::CompletionQueue) -> (QueuePair, QueuePair) {
    let build = || {
        QueuePairBuilder::new(&r.pd, QpType::Rc, cq)
            .max_send_wr(16)
            .max_recv_wr(16)
            .build()
            .expect("qp")
    };
    let (a, b) = (build(), build());
    connect(&r.opts, &a, &b);
    (a, b)
}

/// Spins on the poller until `want` raw completions arrived (bounded).
fn spin_for(p: &mut RawPoller, want: usize) -> Vec<Completion> {
    let mut got = Vec::new();
    let mut out = [Completion::zeroed(); 16];
    let start = Instant::now();
    while got.len() < want {
        let n = p.poll(&mut out).expect("poll");
        got.extend_from_slice(&out[..n]);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "raw completions timed out"
        );
    }
    got
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn raw_send_recv_write_read_busy_poll() {
    let r = rig(64);
    let cq = r.cq(128);
    let (a, b) = small_pair(&r, &cq);
    let access = Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ;
    let rx = Arc::new(r.pd.register_remote(vec![0u8; 256], access).unwrap());
    let mut src = r.pd.register_remote(vec![0u8; 256], access).unwrap();
    src.write_at(0, &[7u8; 256]).unwrap();
    let src = Arc::new(src);
    let rx_raw = b.keep_region_mut(rx.clone()).unwrap();
    let src_raw = a.keep_region(src.clone());
    let mut p = cq.raw_poller().unwrap();
    assert!(cq.raw_poller().is_err(), "one raw poller per CQ");

    b.post_raw_recv(11, &rx_raw, 0..64).unwrap();
    a.post_raw_inline(12, b"hello", true).unwrap();
    let mut got = spin_for(&mut p, 2);
    got.sort_by_key(|c| c.wr_id);
    assert_eq!(got[0].wr_id, 11);
    assert_eq!(got[0].opcode, WcOpcode::Recv);
    assert_eq!(got[0].byte_len, 5);
    assert_eq!(got[1].wr_id, 12);
    assert_eq!(got[1].opcode, WcOpcode::Send);
    let mut five = [0u8; 5];
    rx.read_at(0, &mut five).unwrap();
    assert_eq!(&five, b"hello");

    // RDMA WRITE from a read-only kept region, then READ back into a writable one.
    let remote = rx.remote(64..128).unwrap();
    a.post_raw_send(13, SendOp::Write(remote), &src_raw, 0..64, true)
        .unwrap();
    assert_eq!(spin_for(&mut p, 1)[0].wr_id, 13);
    let mut back = [0u8; 64];
    rx.read_at(64, &mut back).unwrap();
    assert_eq!(back, [7u8; 64]);
    let dst = Arc::new(r.pd.register_remote(vec![0u8; 64], access).unwrap());
    let dst_raw = a.keep_region_mut(dst.clone()).unwrap();
    a.post_raw_send(14, SendOp::Read(remote), &dst_raw, 0..64, true)
        .unwrap();
    let c = spin_for(&mut p, 1)[0];
    assert_eq!(
        (c.wr_id, c.opcode, c.status),
        (14, WcOpcode::RdmaRead, WcStatus::Success)
    );
    assert_eq!(dst.to_vec(), vec![7u8; 64]);

    // An unsignaled request produces nothing; the signaled one after it does.
    a.post_raw_send(15, SendOp::Write(remote), &src_raw, 0..8, false)
        .unwrap();
    a.post_raw_send(16, SendOp::Write(remote), &src_raw, 0..8, true)
        .unwrap();
    assert_eq!(spin_for(&mut p, 1)[0].wr_id, 16);

    // An inline WRITE with immediate: the data lands, the peer's receive reports the
    // immediate; a READ cannot be inline.
    b.post_raw_recv(17, &rx_raw, 0..0).unwrap();
    let at = rx.remote(200..204).unwrap();
    a.post_raw_inline_op(18, SendOp::WriteWithImm(at, 99), b"imm!", true)
        .unwrap();
    let mut got = spin_for(&mut p, 2);
    got.sort_by_key(|c| c.wr_id);
    assert_eq!(
        (got[0].wr_id, got[0].opcode, got[0].imm_data),
        (17, WcOpcode::RecvRdmaWithImm, Some(99))
    );
    assert_eq!((got[1].wr_id, got[1].opcode), (18, WcOpcode::RdmaWrite));
    let mut four = [0u8; 4];
    rx.read_at(200, &mut four).unwrap();
    assert_eq!(&four, b"imm!");
    assert!(matches!(
        a.post_raw_inline_op(19, SendOp::Read(remote), b"no", true),
        Err(tokio_rdma_verbs::Error::InvalidArgument(_))
    ));
    assert_eq!(cq.stats().raw_unclaimed, 0);
}

/// Dispatcher work on a CQ a raw poller owns still completes: the poller dispatches it.
#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn raw_poller_dispatches_futures_on_its_cq() {
    let r = rig(64);
    let cq = r.cq(128);
    let (a, b) = small_pair(&r, &cq);
    let rx = r.pd.register(vec![0u8; 64], Access::LOCAL_WRITE).unwrap();
    let tx =
        r.pd.register(b"future".to_vec(), Access::LOCAL_WRITE)
            .unwrap();
    let recv = b.recv(rx);
    let send = a.send(tx);
    let mut p = cq.raw_poller().unwrap();
    let mut out = [Completion::zeroed(); 8];
    let start = Instant::now();
    while cq.stats().dispatch.total() < 2 {
        assert_eq!(p.poll(&mut out).unwrap(), 0, "no raw completion expected");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "dispatch timed out"
        );
    }
    drop(p);
    let (res, _) = bounded("send", 5, send).await;
    res.unwrap();
    let (res, buf) = bounded("recv", 5, recv).await;
    assert_eq!(res.unwrap().byte_len, 6);
    assert_eq!(&buf[..6], b"future");
}

/// Event mode: arm, poll, block on the channel; the wait wakes on the completion and times
/// out (returns 0) when nothing comes.
#[test]
#[ignore = "needs an RDMA device"]
fn raw_poller_waits_on_the_channel() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Created inside the runtime (the channel's driver task is spawned on it), then used
    // from this thread with the runtime idle.
    let (r, cq, a, b) = rt.block_on(async {
        let r = rig(64);
        let cq = r.cq(128);
        let (a, b) = small_pair(&r, &cq);
        (r, cq, a, b)
    });
    let rx = Arc::new(
        r.pd.register_remote(vec![0u8; 64], Access::LOCAL_WRITE | Access::REMOTE_WRITE)
            .unwrap(),
    );
    let rx_raw = b.keep_region_mut(rx.clone()).unwrap();
    let mut p = cq.raw_poller().unwrap();
    let mut out = [Completion::zeroed(); 8];
    p.arm().unwrap();
    assert_eq!(p.poll(&mut out).unwrap(), 0);
    let t = Instant::now();
    assert_eq!(
        p.wait(Duration::from_millis(200)).unwrap(),
        0,
        "nothing to wake for"
    );
    assert!(t.elapsed() >= Duration::from_millis(150));

    b.post_raw_recv(1, &rx_raw, 0..64).unwrap();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        a.post_raw_inline(2, b"evt", true).unwrap();
        a
    });
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < 2 {
        let n = p.poll(&mut out).unwrap();
        got.extend_from_slice(&out[..n]);
        if n > 0 {
            continue;
        }
        p.arm().unwrap();
        let n = p.poll(&mut out).unwrap();
        got.extend_from_slice(&out[..n]);
        if n == 0 {
            p.wait(Duration::from_secs(1)).unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "event wait timed out"
        );
    }
    assert!(cq.stats().events >= 1, "woken by a channel event");
    let _a = sender.join().unwrap();
    drop(p);
    drop(rt);
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn raw_misuse_is_refused() {
    let r = rig(64);
    let cq = r.cq(128);
    let (a, b) = small_pair(&r, &cq);
    let rw = Access::LOCAL_WRITE | Access::REMOTE_WRITE;
    let region = Arc::new(r.pd.register_remote(vec![0u8; 64], rw).unwrap());
    let on_b = b.keep_region_mut(region.clone()).unwrap();
    assert!(
        a.post_raw_recv(1, &on_b, 0..8).is_err(),
        "kept by another QP"
    );
    let ro = a.keep_region(region.clone());
    assert!(
        a.post_raw_recv(1, &ro, 0..8).is_err(),
        "NIC write into a read-only region"
    );
    let rw_a = a.keep_region_mut(region).unwrap();
    assert!(
        a.post_raw_recv(1, &rw_a, 0..65).is_err(),
        "range beyond the region"
    );
    assert!(
        a.post_raw_recv(1 << 31, &rw_a, 0..8).is_err(),
        "bit 31 is reserved"
    );
    let local_only = Arc::new(
        r.pd.register_remote(vec![0u8; 8], Access::REMOTE_READ)
            .unwrap(),
    );
    assert!(a.keep_region_mut(local_only).is_err(), "needs LOCAL_WRITE");
    // Too little CQ headroom: a QP deeper than the CQ's spare entries.
    let small_cq = r.cq(16);
    let deep = QueuePairBuilder::new(&r.pd, QpType::Rc, &small_cq)
        .max_send_wr(64)
        .max_recv_wr(64)
        .build()
        .unwrap();
    assert!(deep.post_raw_inline(1, b"x", true).is_err(), "no headroom");
}
