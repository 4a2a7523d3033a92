//! Misuse and failure paths on a device: operations a QP type does not support are refused
//! before posting (never a crash), a dead peer becomes an error in bounded time, failed
//! completions name the posted operation, and queue depths are the granted ones. Needs an RDMA
//! device (`cargo xtask test misuse` runs these in the soft-RoCE VM: every test name here
//! starts with `misuse_` for that filter).

mod common;

use common::{bounded, rig, Rig};
use futures::StreamExt;
use tokio_rdma_verbs::{
    Access, Error, MemoryRegion, OpFuture, QpType, QueuePair, QueuePairBuilder, RemoteBuffer,
    SendOp, SendRequest, SharedReceiveQueue, WcOpcode, WcStatus,
};

/// A UD QP in RTS (its own address as the "remote", as UD needs no peer to reach RTS).
fn ud_qp(r: &Rig) -> QueuePair {
    let q = QueuePairBuilder::new(&r.pd, QpType::Ud, &r.cq)
        .build()
        .expect("ud qp");
    let info = q.local_info(&r.opts).expect("info");
    q.connect(&r.opts, &info).expect("ud to RTS");
    q
}

fn region(r: &Rig, len: usize) -> MemoryRegion<Vec<u8>> {
    r.pd.register(vec![0x5a; len], Access::LOCAL_WRITE | Access::REMOTE_READ)
        .expect("register")
}

/// Some remote word (valid or not, it must never be used on UD).
fn remote(mr: &MemoryRegion<Vec<u8>>) -> RemoteBuffer {
    mr.remote(..8).expect("remote")
}

/// Awaits an operation that must be refused before posting: `InvalidArgument` mentioning
/// `needle`, the buffer given back, nothing left in flight on the CQ.
async fn refused<L: Send + 'static>(r: &Rig, what: &str, needle: &str, fut: OpFuture<L>) -> L {
    let (res, buf) = bounded(what, 10, fut).await;
    match res {
        Err(Error::InvalidArgument(m)) => {
            assert!(m.contains(needle), "{what}: message {m:?} lacks {needle:?}")
        }
        other => panic!("{what} on UD: want InvalidArgument, got {other:?}"),
    }
    assert_eq!(r.cq.in_flight(), 0, "{what}: nothing posted");
    buf
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn misuse_ud_send_is_refused() {
    let r = rig(64);
    let q = ud_qp(&r);
    let buf = refused(&r, "send", "send_to", q.send(region(&r, 16))).await;
    assert_eq!(&buf[..], &[0x5a; 16], "buffer given back intact");
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn misuse_ud_send_with_imm_is_refused() {
    let r = rig(64);
    let q = ud_qp(&r);
    let buf = refused(
        &r,
        "send_with_imm",
        "send_to",
        q.send_with_imm(region(&r, 16), 7),
    )
    .await;
    assert_eq!(buf.len(), 16);
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn misuse_ud_send_inline_is_refused() {
    let r = rig(64);
    let q = ud_qp(&r);
    refused(&r, "send_inline", "send_to", q.send_inline(b"inline")).await;
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn misuse_ud_send_inline_unsignaled_is_refused() {
    let r = rig(64);
    let q = ud_qp(&r);
    match q.send_inline_unsignaled(b"unsignaled") {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("send_to"), "{m}"),
        other => panic!("send_inline_unsignaled on UD: {other:?}"),
    }
    assert_eq!(r.cq.in_flight(), 0);
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn misuse_ud_write_is_refused() {
    let r = rig(64);
    let q = ud_qp(&r);
    let target = region(&r, 64);
    let fut = q.write(region(&r, 8), remote(&target));
    let buf = refused(&r, "write", "UD", fut).await;
    assert_eq!(buf.len(), 8);
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn misuse_ud_write_with_imm_is_refused() {
    let r = rig(64);
    let q = ud_qp(&r);
    let target = region(&r, 64);
    let fut = q.write_with_imm(region(&r, 8), remote(&target), 1);
    refused(&r, "write_with_imm", "UD", fut).await;
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn misuse_ud_unsignaled_writes_are_refused() {
    let r = rig(64);
    let q = ud_qp(&r);
    let target = region(&r, 64);
    for res in [
        q.write_inline_unsignaled(b"unsignaled", remote(&target)),
        q.write_with_imm_inline_unsignaled(b"unsignaled", remote(&target), 1),
    ] {
        match res {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("UD"), "{m}"),
            other => panic!("an unsignaled write on UD: {other:?}"),
        }
    }
    assert_eq!(r.cq.in_flight(), 0);
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn misuse_ud_read_is_refused() {
    let r = rig(64);
    let q = ud_qp(&r);
    let target = region(&r, 64);
    let fut = q.read(region(&r, 8), remote(&target));
    refused(&r, "read", "UD", fut).await;
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn misuse_ud_compare_swap_is_refused() {
    let r = rig(64);
    let q = ud_qp(&r);
    let target = region(&r, 64);
    let fut = q.compare_swap(region(&r, 8), remote(&target), 0, 1);
    refused(&r, "compare_swap", "UD", fut).await;
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn misuse_ud_fetch_add_is_refused() {
    let r = rig(64);
    let q = ud_qp(&r);
    let target = region(&r, 64);
    let fut = q.fetch_add(region(&r, 8), remote(&target), 1);
    refused(&r, "fetch_add", "UD", fut).await;
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn misuse_ud_post_batch_is_refused() {
    let r = rig(64);
    let q = ud_qp(&r);
    let target = region(&r, 64);
    let futs = q.post_batch(vec![
        SendRequest {
            op: SendOp::Send,
            local: region(&r, 8),
        },
        SendRequest {
            op: SendOp::Write(remote(&target)),
            local: region(&r, 8),
        },
    ]);
    assert_eq!(futs.len(), 2);
    for f in futs {
        let (res, buf) = bounded("batch", 10, f).await;
        assert!(
            matches!(res, Err(Error::InvalidArgument(_))),
            "batch on UD: {res:?}"
        );
        assert_eq!(buf.len(), 8);
    }
    assert_eq!(r.cq.in_flight(), 0);
}

/// With the default options a send to a peer whose QP is gone fails with `RetryExcErr` in
/// bounded time (retry_cnt 7 means "retry forever" to rxe: the send hung; with 6 it fails after
/// about 1 s on rxe0 in the VM).
#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn misuse_send_to_a_destroyed_peer_fails_in_bounded_time() {
    let r = rig(64);
    let (a, b) = r.rc_pair();
    drop(b);
    let fut = a.send(region(&r, 64));
    let (res, buf) = tokio::time::timeout(std::time::Duration::from_secs(10), fut)
        .await
        .expect("a send to a dead peer must fail within 10 s with the default options");
    assert_eq!(buf.len(), 64);
    let e = res.expect_err("the peer is gone");
    assert_eq!(e.completion_status(), Some(WcStatus::RetryExcErr), "{e}");
}

/// A failed RDMA READ names READ (the completion's own opcode field is undefined on error).
#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn misuse_failed_read_names_read() {
    let r = rig(64);
    let (a, _b) = r.rc_pair();
    let target = region(&r, 64);
    let mut bad = target.remote(..).unwrap();
    bad.rkey ^= 0x5a5a;
    let (res, _buf) = bounded("bad read", 30, a.read(region(&r, 8), bad)).await;
    let e = res.expect_err("wrong rkey");
    let text = e.to_string();
    assert!(text.contains("RDMA READ"), "{text}");
    match e {
        Error::Completion { opcode, .. } => assert_eq!(opcode, WcOpcode::RdmaRead),
        other => panic!("want a completion error: {other:?}"),
    }
}

/// The depths a QP reports are the ones the device granted (rxe rounds up), as
/// `ibv_query_qp` sees them.
#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn misuse_granted_queue_depths_are_reported() {
    let r = rig(1024);
    for (send, recv) in [(1, 1), (100, 30), (128, 128), (200, 7)] {
        let q = QueuePairBuilder::new(&r.pd, QpType::Rc, &r.cq)
            .max_send_wr(send)
            .max_recv_wr(recv)
            .build()
            .expect("qp");
        assert!(q.max_send_wr() >= send, "{} < {send}", q.max_send_wr());
        assert!(q.max_recv_wr() >= recv, "{} < {recv}", q.max_recv_wr());
        let queried = q.query_depths().expect("ibv_query_qp");
        assert_eq!(
            (q.max_send_wr(), q.max_recv_wr()),
            queried,
            "asked {send}/{recv}"
        );
    }
    let srq = SharedReceiveQueue::new(&r.pd, &r.cq, 16).expect("srq");
    let q = QueuePairBuilder::new(&r.pd, QpType::Rc, &r.cq)
        .max_send_wr(100)
        .srq(&srq)
        .build()
        .expect("qp on srq");
    assert_eq!(q.max_recv_wr(), 0, "receives go to the SRQ");
    assert_eq!(q.max_send_wr(), q.query_depths().expect("query").0);
}

/// Unsignaled sends need CQ headroom for their flush completions: a send queue deeper than
/// the entries the CQ has beyond its completion slots is refused before posting (else a QP
/// error could flush more completions than the CQ holds).
#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn misuse_unsignaled_sends_without_cq_headroom_are_refused() {
    let r = rig(64);
    // 64 slots; the device grants at least 64 entries (rxe: 127), so at most 63 of
    // headroom, while this send queue holds at least 200 requests.
    let cq = r.cq(64);
    let a = QueuePairBuilder::new(&r.pd, QpType::Rc, &cq)
        .max_send_wr(200)
        .build()
        .expect("qp a");
    let b = QueuePairBuilder::new(&r.pd, QpType::Rc, &cq)
        .build()
        .expect("qp b");
    common::connect(&r.opts, &a, &b);
    match a.send_inline_unsignaled(b"no room for my flush") {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("headroom"), "{m}"),
        other => panic!("want InvalidArgument, got {other:?}"),
    }
    assert_eq!(cq.in_flight(), 0, "nothing posted");
    // A shallow send queue on a CQ with room (256 slots; rxe grants 511) is accepted.
    let big = r.cq(256);
    let c = QueuePairBuilder::new(&r.pd, QpType::Rc, &big)
        .max_send_wr(8)
        .build()
        .expect("qp c");
    let d = QueuePairBuilder::new(&r.pd, QpType::Rc, &big)
        .build()
        .expect("qp d");
    common::connect(&r.opts, &c, &d);
    let rx = r.pd.register(vec![0u8; 64], Access::LOCAL_WRITE).unwrap();
    let recv = d.recv(rx);
    c.send_inline_unsignaled(b"fits")
        .expect("headroom suffices");
    let (res, rx) = bounded("recv", 30, recv).await;
    assert_eq!(res.expect("received").byte_len, 4);
    assert_eq!(&rx[..4], b"fits");
}

/// QPs sending unsignaled through one CQ share its headroom: each claims its send-queue
/// depth on its first unsignaled send, the one that finds too little left is refused, and a
/// destroyed QP gives its claim back.
#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn misuse_unsignaled_senders_share_the_cq_headroom() {
    let r = rig(64);
    let cq = r.cq(256);
    let pair = || {
        let x = QueuePairBuilder::new(&r.pd, QpType::Rc, &cq)
            .max_send_wr(48)
            .build()
            .expect("qp x");
        let y = QueuePairBuilder::new(&r.pd, QpType::Rc, &r.cq)
            .build()
            .expect("qp y");
        common::connect(&r.opts, &x, &y);
        // A receive for the one send each makes (no RNR wait).
        drop(y.recv(r.pd.register(vec![0u8; 8], Access::LOCAL_WRITE).unwrap()));
        (x, y)
    };
    let mut accepted = Vec::new();
    let refused = loop {
        let (x, y) = pair();
        match x.send_inline_unsignaled(b"hi") {
            Ok(()) => accepted.push((x, y)),
            Err(Error::InvalidArgument(m)) => {
                assert!(m.contains("headroom"), "{m}");
                break (x, y);
            }
            Err(e) => panic!("unexpected: {e}"),
        }
        assert!(accepted.len() < 64, "the headroom is finite");
    };
    assert!(
        !accepted.is_empty(),
        "a 256-slot CQ has room for one 48-deep send queue"
    );
    // Destroying one claimant frees its share for the refused one.
    drop(accepted.remove(0));
    bounded("claim after a destroy", 30, async {
        while refused.0.send_inline_unsignaled(b"hi").is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// `modify_with` (how a connection manager applies `rdma_init_qp_attr`'s attributes) refuses
/// RESET (work would vanish without completions) and ERR (that is `set_error`), and applies a
/// legal transition.
#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn misuse_modify_with_refuses_reset_and_err() {
    use rdma_sys::{ibv_qp_attr_mask as M, ibv_qp_state as S};
    let r = rig(64);
    let (a, _b) = r.rc_pair();
    // SAFETY: plain C data; all-zero is valid.
    let mut attr: rdma_sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
    for state in [S::IBV_QPS_RESET, S::IBV_QPS_ERR] {
        attr.qp_state = state;
        match a.modify_with(&mut attr, M::IBV_QP_STATE) {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("modify_with"), "{m}"),
            other => panic!("state {state}: expected InvalidArgument, got {other:?}"),
        }
    }
    // RTS → SQD is a legal move and goes through.
    attr.qp_state = S::IBV_QPS_SQD;
    a.modify_with(&mut attr, M::IBV_QP_STATE)
        .expect("RTS to SQD");
}

/// Objects used after the runtime that drove their channel shut down progress through their
/// futures' own polls (the crate's documented limit). The driver publishes how many CQs it
/// polls, and while that is more than one a future leaves the waiting to the driver: a count
/// left from a busy moment when the driver went away stopped such futures for good. Here two
/// CQs are busy with a ping-pong when their runtime goes; the same pair then ping-pongs from a
/// task on a second runtime.
#[test]
#[ignore = "needs an RDMA device"]
fn misuse_objects_outliving_their_runtime_still_complete() {
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (r, cqs, (a, b), mut a_rx, mut b_rx) = {
        let _in_first = first.enter();
        let r = rig(64);
        let cqs = (r.cq(2048), r.cq(2048));
        let pair = r.rc_pair_between(&cqs.0, &cqs.1);
        let a_rx = pair.0.recv_stream(16, 64).unwrap();
        let b_rx = pair.1.recv_stream(16, 64).unwrap();
        (r, cqs, pair, a_rx, b_rx)
    };
    // Both CQs busy, every message received: nothing is in flight when the runtime goes.
    first.block_on(bounded("ping-pong on the first runtime", 20, async {
        for _ in 0..200 {
            a.send_inline_unsignaled(&[1u8; 8]).unwrap();
            drop(b_rx.next().await.unwrap().unwrap());
            b.send_inline_unsignaled(&[2u8; 8]).unwrap();
            drop(a_rx.next().await.unwrap().unwrap());
        }
    }));
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async move {
        let flow = tokio::spawn(async move {
            for _ in 0..50 {
                a.send_inline_unsignaled(&[3u8; 8]).unwrap();
                drop(b_rx.next().await.unwrap().unwrap());
                b.send_inline_unsignaled(&[4u8; 8]).unwrap();
                drop(a_rx.next().await.unwrap().unwrap());
            }
            (a, b, a_rx, b_rx)
        });
        let (a, b, a_rx, b_rx) = bounded("ping-pong after the runtime went", 20, flow)
            .await
            .unwrap();
        drop((a_rx, b_rx, a, b, cqs, r));
    });
}
