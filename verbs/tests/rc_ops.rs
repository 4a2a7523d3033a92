//! RC loopback pair in one process: every operation kind, UD, SRQ. Needs an RDMA device
//! (`cargo xtask test` runs these in the soft-RoCE VM).

mod common;

use std::sync::Arc;

use common::{bounded, pattern, rig};
use futures::StreamExt;
use tokio_rdma_verbs::{
    Access, AddressHandle, AlignedBuf, Error, QpType, QueuePairBuilder, RemoteBuffer,
    SharedReceiveQueue, WcOpcode, GRH_LEN,
};

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn rc_send_recv_sizes() {
    let r = rig(256);
    let (a, b) = r.rc_pair();
    const MIB: usize = 1 << 20;
    let mut src = r.pd.register(pattern(MIB, 7), Access::LOCAL_WRITE).unwrap();
    let mut dst = r.pd.register(vec![0u8; MIB], Access::LOCAL_WRITE).unwrap();
    for size in [0usize, 1, 4096, MIB] {
        dst.fill(0xee);
        let recv = b.recv(dst);
        let (res, s) = bounded("send", 30, a.send(src.slice(..size).unwrap())).await;
        let c = res.unwrap_or_else(|e| panic!("send of {size} bytes: {e}"));
        assert_eq!(c.opcode, WcOpcode::Send);
        src = s.into_region();
        let (res, d) = bounded("recv", 30, recv).await;
        let c = res.unwrap();
        assert_eq!(c.byte_len as usize, size);
        assert_eq!(c.opcode, WcOpcode::Recv);
        assert_eq!(c.qp_num, b.qp_num());
        assert_eq!(&d[..size], &src[..size], "payload of {size} bytes");
        if size < MIB {
            assert_eq!(d[size], 0xee, "no byte beyond {size} written");
        }
        dst = d;
    }
    src.copy_from_slice(&pattern(MIB, 9));
    // send_with_imm carries the immediate to the receiver.
    let recv = b.recv(dst);
    let (res, _src) = bounded(
        "send_imm",
        30,
        a.send_with_imm(src.slice(..10).unwrap(), 0xfeed_beef),
    )
    .await;
    res.unwrap();
    let (res, d) = bounded("recv imm", 30, recv).await;
    let c = res.unwrap();
    assert_eq!(c.imm_data, Some(0xfeed_beef));
    assert_eq!(&d[..10], &pattern(10, 9)[..]);
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn rc_write_read_atomics_inline() {
    let r = rig(256);
    let (a, b) = r.rc_pair();
    let remote_mr = r.pd.register_remote(vec![0u8; 8192], Access::ALL).unwrap();
    let remote = remote_mr.remote(..).unwrap();

    // RDMA WRITE.
    let src =
        r.pd.register(pattern(4096, 3), Access::LOCAL_WRITE)
            .unwrap();
    let (res, src) = bounded("write", 30, a.write(src, remote)).await;
    assert_eq!(res.unwrap().opcode, WcOpcode::RdmaWrite);
    assert_eq!(&remote_mr.to_vec()[..4096], &src[..]);

    // RDMA WRITE with immediate: consumes a receive at b, which reports the immediate.
    let rx = r.pd.register(vec![0u8; 64], Access::LOCAL_WRITE).unwrap();
    let recv = b.recv(rx);
    let (res, _src) = bounded(
        "write_imm",
        30,
        a.write_with_imm(
            src.slice(..100).unwrap(),
            remote.slice(4096, 100).unwrap(),
            42,
        ),
    )
    .await;
    res.unwrap();
    let (res, _rx) = bounded("recv of write_imm", 30, recv).await;
    let c = res.unwrap();
    assert_eq!(c.opcode, WcOpcode::RecvRdmaWithImm);
    assert_eq!(c.imm_data, Some(42));
    assert_eq!(&remote_mr.to_vec()[4096..4196], &pattern(100, 3)[..]);

    // RDMA READ back what we wrote.
    let dst = r.pd.register(vec![0u8; 4096], Access::LOCAL_WRITE).unwrap();
    let (res, dst) = bounded("read", 30, a.read(dst, remote.slice(0, 4096).unwrap())).await;
    assert_eq!(res.unwrap().opcode, WcOpcode::RdmaRead);
    assert_eq!(&dst[..], &pattern(4096, 3)[..]);

    // Atomics on an 8-byte aligned word.
    let word_mr =
        r.pd.register_remote(AlignedBuf::new(8, 8).unwrap(), Access::ALL)
            .unwrap();
    let word = word_mr.remote(..).unwrap();
    let old =
        r.pd.register(AlignedBuf::new(8, 8).unwrap(), Access::LOCAL_WRITE)
            .unwrap();
    let (res, old) = bounded("fetch_add", 30, a.fetch_add(old, word, 5)).await;
    assert_eq!(res.unwrap().opcode, WcOpcode::FetchAdd);
    assert_eq!(u64::from_ne_bytes(old[..8].try_into().unwrap()), 0);
    let (res, old) = bounded("fetch_add 2", 30, a.fetch_add(old, word, 10)).await;
    res.unwrap();
    assert_eq!(u64::from_ne_bytes(old[..8].try_into().unwrap()), 5);
    // Failing compare: value stays 15.
    let (res, old) = bounded("cas miss", 30, a.compare_swap(old, word, 1, 99)).await;
    assert_eq!(res.unwrap().opcode, WcOpcode::CompSwap);
    assert_eq!(u64::from_ne_bytes(old[..8].try_into().unwrap()), 15);
    let (res, old) = bounded("cas hit", 30, a.compare_swap(old, word, 15, 99)).await;
    res.unwrap();
    assert_eq!(u64::from_ne_bytes(old[..8].try_into().unwrap()), 15);
    assert_eq!(word_mr.read_u64_at(0).unwrap(), 99);
    // A misaligned atomic is refused before posting.
    let (res, _old) = a.compare_swap(old, remote.slice(4, 8).unwrap(), 0, 1).await;
    assert!(matches!(res, Err(Error::InvalidArgument(_))), "{res:?}");

    // Inline send: no MR on the sending side.
    let rx = r.pd.register(vec![0u8; 64], Access::LOCAL_WRITE).unwrap();
    let recv = b.recv(rx);
    let (res, ()) = bounded("inline", 30, a.send_inline(b"inline hello")).await;
    res.unwrap();
    let (res, rx) = bounded("recv inline", 30, recv).await;
    assert_eq!(res.unwrap().byte_len, 12);
    assert_eq!(&rx[..12], b"inline hello");
    let (res, ()) = a.send_inline(&[0u8; 4096]).await;
    assert!(
        matches!(res, Err(Error::InvalidArgument(_))),
        "oversized inline: {res:?}"
    );

    // Batched posting: 8 writes with one doorbell, landing at distinct offsets.
    let srcs: Vec<_> = (0..8u8)
        .map(|i| r.pd.register(vec![i + 1; 16], Access::LOCAL_WRITE).unwrap())
        .collect();
    let reqs = srcs
        .into_iter()
        .enumerate()
        .map(|(i, s)| tokio_rdma_verbs::SendRequest {
            op: tokio_rdma_verbs::SendOp::Write(remote.slice(i as u32 * 16, 16).unwrap()),
            local: s,
        })
        .collect();
    for f in a.post_batch(reqs) {
        let (res, _) = bounded("batch", 30, f).await;
        res.unwrap();
    }
    let landed = remote_mr.to_vec();
    for i in 0..8usize {
        assert!(landed[i * 16..i * 16 + 16]
            .iter()
            .all(|&x| x == i as u8 + 1));
    }
    drop((a, b));
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn ud_send_recv_with_grh() {
    let r = rig(128);
    let a = QueuePairBuilder::new(&r.pd, QpType::Ud, &r.cq)
        .build()
        .unwrap();
    let b = QueuePairBuilder::new(&r.pd, QpType::Ud, &r.cq)
        .build()
        .unwrap();
    let ia = a.local_info(&r.opts).unwrap();
    let ib = b.local_info(&r.opts).unwrap();
    a.connect(&r.opts, &ia).unwrap();
    b.connect(&r.opts, &ib).unwrap();
    let mut stream = b.recv_stream(8, 1024 + GRH_LEN).unwrap();
    let ah = AddressHandle::new(&r.pd, &ib, &r.opts).unwrap();
    for i in 0..4u32 {
        let msg =
            r.pd.register(pattern(100 + i as usize, i as u8), Access::LOCAL_WRITE)
                .unwrap();
        let (res, _) = bounded("ud send", 30, a.send_to(&ah, msg, Some(i))).await;
        res.unwrap();
        let m = bounded("ud recv", 30, stream.next())
            .await
            .unwrap()
            .unwrap();
        let c = *m.completion();
        assert!(c.wc_flags.contains(tokio_rdma_verbs::WcFlags::GRH));
        assert_eq!(c.src_qp, a.qp_num());
        assert_eq!(c.imm_data, Some(i));
        assert_eq!(m.len(), GRH_LEN + 100 + i as usize);
        assert_eq!(&m[GRH_LEN..], &pattern(100 + i as usize, i as u8)[..]);
    }
    // RC-only operations are refused on UD before posting... and UD sends need send_to.
    let msg = r.pd.register(vec![1u8; 8], Access::LOCAL_WRITE).unwrap();
    let (res, _) = {
        let rc = QueuePairBuilder::new(&r.pd, QpType::Rc, &r.cq)
            .build()
            .unwrap();
        rc.send_to(&ah, msg, None).await
    };
    assert!(matches!(res, Err(Error::InvalidArgument(_))));
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn srq_shared_by_several_qps() {
    let r = rig(256);
    let srq = SharedReceiveQueue::new(&r.pd, &r.cq, 64).unwrap();
    let mut stream = srq.recv_stream(16, 256).unwrap();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..3 {
        let a = QueuePairBuilder::new(&r.pd, QpType::Rc, &r.cq)
            .build()
            .unwrap();
        let b = QueuePairBuilder::new(&r.pd, QpType::Rc, &r.cq)
            .srq(&srq)
            .build()
            .unwrap();
        common::connect(&r.opts, &a, &b);
        // Receives go through the SRQ, not the QP.
        let probe = r.pd.register(vec![0u8; 8], Access::LOCAL_WRITE).unwrap();
        let (res, _) = b.recv(probe).await;
        assert!(matches!(res, Err(Error::InvalidArgument(_))));
        senders.push(a);
        receivers.push(b);
    }
    let mut seen = std::collections::HashMap::new();
    for round in 0..10u8 {
        for (i, a) in senders.iter().enumerate() {
            let msg =
                r.pd.register(vec![round * 3 + i as u8; 32], Access::LOCAL_WRITE)
                    .unwrap();
            let (res, _) = bounded("srq send", 30, a.send(msg)).await;
            res.unwrap();
        }
        for _ in 0..senders.len() {
            let m = bounded("srq recv", 30, stream.next())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(m.len(), 32);
            let qpn = m.completion().qp_num;
            let idx = receivers
                .iter()
                .position(|b| b.qp_num() == qpn)
                .expect("known qp");
            assert!(m.iter().all(|&x| x == round * 3 + idx as u8));
            *seen.entry(qpn).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), 3);
    assert!(seen.values().all(|&n| n == 10));
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn shared_source_buffer_via_arc() {
    let r = rig(256);
    let (a, b) = r.rc_pair();
    let src = Arc::new(r.pd.register(pattern(512, 1), Access::LOCAL_WRITE).unwrap());
    let mut stream = b.recv_stream(8, 512).unwrap();
    let sends: Vec<_> = (0..4).map(|_| a.send(src.clone())).collect();
    for s in sends {
        let (res, _) = bounded("send", 30, s).await;
        res.unwrap();
    }
    for _ in 0..4 {
        let m = bounded("recv", 30, stream.next()).await.unwrap().unwrap();
        assert_eq!(&m[..], &src[..]);
    }
    let _unused: Option<RemoteBuffer> = None;
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn device_port_gid_table_memory_kinds_and_uc() {
    let r = rig(64);
    let names: Vec<_> = tokio_rdma_verbs::devices().unwrap();
    assert!(names.iter().any(|d| d.name == r.ctx.name()), "{names:?}");
    let dev = r.ctx.query_device().unwrap();
    assert!(
        dev.phys_port_cnt >= 1 && dev.max_qp > 0 && dev.max_cqe > 0,
        "{dev:?}"
    );
    let port = r.ctx.query_port(1).unwrap();
    assert_eq!(port.state, tokio_rdma_verbs::PortState::Active, "{port:?}");
    let table = r.ctx.gid_table(1).unwrap();
    assert!(!table.is_empty());
    let idx = r.ctx.default_gid_index(1).unwrap();
    let chosen = table
        .iter()
        .find(|e| e.index == idx)
        .expect("default is in the table");
    eprintln!("gid table: {table:?}; default {idx}");
    if port.link_layer == tokio_rdma_verbs::LinkLayer::Ethernet {
        assert_eq!(chosen.gid_type, tokio_rdma_verbs::GidType::RoceV2);
        assert!(chosen.netdev.is_some());
        if let Ok(ip) = std::env::var("TOKIO_RDMA_LOCAL_IP") {
            assert_eq!(chosen.gid.to_ipv4().map(|a| a.to_string()), Some(ip));
        }
    }
    // Opening by name finds the same device.
    let again = tokio_rdma_verbs::Context::open(Some(r.ctx.name())).unwrap();
    assert_eq!(again.name(), r.ctx.name());

    // BytesMut and Box<[u8]> regions; into_inner hands the buffer back.
    let mut bm = bytes::BytesMut::new();
    bm.resize(128, 0);
    let bm_mr = r.pd.register(bm, Access::LOCAL_WRITE).unwrap();
    assert_eq!(bm_mr.len(), 128);
    let boxed =
        r.pd.register(vec![9u8; 32].into_boxed_slice(), Access::LOCAL_WRITE)
            .unwrap();

    // UC pair: SEND from a boxed slice into a BytesMut.
    let a = QueuePairBuilder::new(&r.pd, QpType::Uc, &r.cq)
        .build()
        .unwrap();
    let b = QueuePairBuilder::new(&r.pd, QpType::Uc, &r.cq)
        .build()
        .unwrap();
    common::connect(&r.opts, &a, &b);
    let recv = b.recv(bm_mr);
    let (res, boxed) = bounded("uc send", 30, a.send(boxed)).await;
    res.unwrap();
    let (res, bm_mr) = bounded("uc recv", 30, recv).await;
    assert_eq!(res.unwrap().byte_len, 32);
    let bm = bm_mr.into_inner();
    assert_eq!(&bm[..32], &[9u8; 32]);
    assert_eq!(bm.len(), 128);
    assert_eq!(&*boxed.into_inner(), &[9u8; 32]);
}

/// Selective signaling: 1000 unsignaled inline sends through an 8-deep send queue arrive in
/// order; they fit only because every `max_send_wr / 2`-th one is signaled and retires the
/// others, and only those produce completions.
#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn unsignaled_inline_sends_arrive_in_order_and_retire_themselves() {
    const N: u32 = 1000;
    let r = rig(256);
    let (a, b) = shallow_pair(&r);
    let mut rx = b.recv_stream(64, 64).unwrap();
    let before = r.cq.stats();
    for i in 0..N {
        a.send_inline_unsignaled(&i.to_be_bytes())
            .unwrap_or_else(|e| panic!("unsignaled send {i}: {e}"));
        let m = bounded("recv", 30, rx.next()).await.unwrap().unwrap();
        assert_eq!(&m[..], &i.to_be_bytes(), "message {i}");
    }
    // The last forced signal may still be in flight: wait for it.
    let every = u64::from(a.max_send_wr() / 2);
    let forced = u64::from(N) / every;
    forced_signals_complete(&r, before.dispatch.reclaimed + forced).await;
    let st = r.cq.stats();
    assert_eq!(st.dispatch.reclaimed - before.dispatch.reclaimed, forced);
    assert_eq!(
        st.dispatch.delivered - before.dispatch.delivered,
        u64::from(N)
    );
    assert_eq!(
        st.dispatch.unknown, 0,
        "no unsignaled id reached the dispatcher"
    );
    assert_eq!(st.unsignaled_errors, 0);
    assert_eq!(r.cq.in_flight(), 64, "only the posted receives");

    let (res, ()) = a.send_inline(b"signaled still works").await;
    res.unwrap();
    let m = bounded("recv", 30, rx.next()).await.unwrap().unwrap();
    assert_eq!(&m[..], b"signaled still works");
    assert!(matches!(
        a.send_inline_unsignaled(&[0u8; 4096]),
        Err(Error::InvalidArgument(_))
    ));
}

/// An unsignaled send that cannot be delivered is not lost silently: posting it on a QP in
/// the error state either fails at once or flushes it, and the flush is counted.
#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn unsignaled_send_on_a_failed_qp_is_reported() {
    let r = rig(256);
    let (a, _b) = r.rc_pair();
    a.set_error().unwrap();
    match a.send_inline_unsignaled(b"lost?") {
        Err(e) => eprintln!("post refused: {e}"),
        Ok(()) => {
            bounded("flush counted", 30, async {
                while r.cq.stats().unsignaled_errors == 0 {
                    tokio::task::yield_now().await;
                    r.cq.poll_now().unwrap();
                }
            })
            .await;
            assert_eq!(r.cq.stats().unsignaled_errors, 1);
        }
    }
    assert_eq!(r.cq.stats().dispatch.unknown, 0);
}

/// A pair whose sender has a send queue of 8 (every 4th unsignaled request is signaled) and
/// whose receiver takes 64 receives, on the rig's CQ.
fn shallow_pair(r: &common::Rig) -> (tokio_rdma_verbs::QueuePair, tokio_rdma_verbs::QueuePair) {
    let a = QueuePairBuilder::new(&r.pd, QpType::Rc, &r.cq)
        .max_send_wr(8)
        .build()
        .unwrap();
    let b = QueuePairBuilder::new(&r.pd, QpType::Rc, &r.cq)
        .max_recv_wr(64)
        .build()
        .unwrap();
    common::connect(&r.opts, &a, &b);
    (a, b)
}

/// Waits until the rig's CQ has reclaimed `reclaimed` completions in all (the signaled
/// requests among unsignaled ones, consumed internally).
async fn forced_signals_complete(r: &common::Rig, reclaimed: u64) {
    bounded("forced signals complete", 30, async {
        while r.cq.stats().dispatch.reclaimed < reclaimed {
            tokio::task::yield_now().await;
            r.cq.poll_now().unwrap();
        }
    })
    .await;
}

/// Unsignaled inline RDMA WRITEs (perftest's `ib_write_lat` posts them so): each lands where
/// it was aimed, a WRITE with immediate still completes the peer's receive with its
/// immediate, and the writes retire themselves through every `max_send_wr / 2`-th one,
/// signaled and consumed internally, like unsignaled SENDs.
#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn unsignaled_inline_writes_land_and_retire_themselves() {
    const N: u32 = 400;
    let r = rig(256);
    let (a, b) = shallow_pair(&r);
    let target = r.pd.register_remote(vec![0u8; 512], Access::ALL).unwrap();
    let remote = target.remote(..).unwrap();
    let mut rx = b.recv_stream(64, 8).unwrap();
    let before = r.cq.stats();
    for i in 0..N {
        // A plain write to one place, then a write with immediate to another: RC delivers
        // in order, so once the immediate is in, both are.
        let at = (i % 32) * 16;
        a.write_inline_unsignaled(&i.to_le_bytes(), remote.slice(at, 4).unwrap())
            .unwrap_or_else(|e| panic!("unsignaled write {i}: {e}"));
        a.write_with_imm_inline_unsignaled(
            &(!i).to_le_bytes(),
            remote.slice(at + 8, 4).unwrap(),
            i,
        )
        .unwrap_or_else(|e| panic!("unsignaled write with immediate {i}: {e}"));
        let m = bounded("the immediate", 30, rx.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.imm(), Some(i), "write {i}");
        drop(m);
        let mem = target.to_vec();
        let at = at as usize;
        assert_eq!(&mem[at..at + 4], &i.to_le_bytes(), "write {i}");
        assert_eq!(&mem[at + 8..at + 12], &(!i).to_le_bytes(), "write {i}");
    }
    let every = u64::from(a.max_send_wr() / 2);
    let forced = u64::from(2 * N) / every;
    forced_signals_complete(&r, before.dispatch.reclaimed + forced).await;
    let st = r.cq.stats();
    assert_eq!(st.dispatch.reclaimed - before.dispatch.reclaimed, forced);
    assert_eq!(
        st.dispatch.unknown, 0,
        "no unsignaled id reached the dispatcher"
    );
    assert_eq!(st.unsignaled_errors, 0);

    // Misuse is refused before anything is posted.
    let short = remote.slice(0, 2).unwrap();
    assert!(matches!(
        a.write_inline_unsignaled(&[1u8; 4], short),
        Err(Error::InvalidArgument(_))
    ));
    let big = r.pd.register_remote(vec![0u8; 4096], Access::ALL).unwrap();
    match a.write_with_imm_inline_unsignaled(&[0u8; 4096], big.remote(..).unwrap(), 1) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("max_inline_data"), "{m}"),
        other => panic!("4096 bytes inline: {other:?}"),
    }
}
