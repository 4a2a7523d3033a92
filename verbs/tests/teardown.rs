//! Teardown and receive-pool lifetimes: QPs dropped with work in flight, short-lived QPs on a
//! long-lived CQ, receive streams after `close`, failed `recv_stream`, receive buffers that
//! cannot be reposted, a failed completion channel. Needs an RDMA device (`cargo xtask test`
//! runs these in the soft-RoCE VM).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bounded, event_mode_channel, pattern, rig};
use futures::StreamExt;
use tokio_rdma_verbs::{
    Access, CompletionQueue, Error, QpType, QueuePair, QueuePairBuilder, RegisterBuffer,
};

/// A buffer that records its drop (with its id), to check each is dropped exactly once.
struct Counted {
    data: Vec<u8>,
    id: usize,
    log: Arc<Mutex<Vec<usize>>>,
}

// SAFETY: the Vec's heap storage is stable across moves and never resized.
unsafe impl RegisterBuffer for Counted {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.data.as_mut_ptr()
    }
    fn len(&self) -> usize {
        self.data.len()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.log.lock().unwrap().push(self.id);
    }
}

fn counted(len: usize, id: usize, log: &Arc<Mutex<Vec<usize>>>) -> Counted {
    Counted {
        data: vec![0; len],
        id,
        log: log.clone(),
    }
}

/// A connected RC pair whose receiver `b` completes on a CQ of only 4 slots (so a few
/// one-shot receives can take every slot a receive pool needs to repost).
fn receiver_on_small_cq(r: &common::Rig) -> (CompletionQueue, QueuePair, QueuePair) {
    let cq = r.cq(4);
    let a = QueuePairBuilder::new(&r.pd, QpType::Rc, &r.cq)
        .build()
        .unwrap();
    let b = QueuePairBuilder::new(&r.pd, QpType::Rc, &cq)
        .build()
        .unwrap();
    common::connect(&r.opts, &a, &b);
    (cq, a, b)
}

/// Waits until `cond` holds, polling every 10 ms, for at most `secs`.
async fn until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    bounded(what, secs, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn qp_dropped_with_work_in_flight_resolves_everything() {
    let r = rig(512);
    let (a, b) = r.rc_pair();
    let log = Arc::new(Mutex::new(Vec::new()));
    let remote_mr =
        r.pd.register_remote(pattern(65536, 3), Access::ALL)
            .unwrap();
    let remote = remote_mr.remote(..).unwrap();
    let mut kept = Vec::new();
    let mut id = 0;
    for _ in 0..16 {
        // Receives nobody sends to, reads, and sends that b has no receive for (RNR).
        let rx =
            r.pd.register(counted(4096, id, &log), Access::LOCAL_WRITE)
                .unwrap();
        kept.push(tokio::spawn(a.recv(rx)));
        let rd =
            r.pd.register(counted(65536, id + 1, &log), Access::LOCAL_WRITE);
        drop(a.read(rd.unwrap(), remote));
        let tx =
            r.pd.register(counted(64, id + 2, &log), Access::LOCAL_WRITE)
                .unwrap();
        kept.push(tokio::spawn(a.send(tx)));
        id += 3;
    }
    // The last handle goes while all of that is in flight.
    drop(a);
    for f in kept {
        let (res, buf) = bounded("in-flight future after drop", 30, f).await.unwrap();
        assert!(
            res.is_err() || buf.len() == 64,
            "a flushed or finished operation"
        );
    }
    until("every buffer dropped", 30, || {
        log.lock().unwrap().len() == id
    })
    .await;
    let mut ids = log.lock().unwrap().clone();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (0..id).collect::<Vec<_>>(),
        "each buffer dropped exactly once"
    );
    until("slots released", 30, || r.cq.in_flight() == 0).await;
    drop(b);
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn ten_thousand_short_lived_qps_on_one_cq() {
    let r = rig(64);
    for i in 0..10_000u32 {
        let qp = QueuePairBuilder::new(&r.pd, QpType::Rc, &r.cq)
            .max_send_wr(4)
            .max_recv_wr(4)
            .build()
            .unwrap_or_else(|e| panic!("qp {i}: {e}"));
        qp.init(&r.opts).unwrap();
        let rx = r.pd.register(vec![0u8; 64], Access::LOCAL_WRITE).unwrap();
        // Posted and abandoned: the QP is dropped with this receive in flight.
        drop(qp.recv(rx));
        drop(qp);
        if i % 64 == 63 {
            until("slots of dropped QPs released", 30, || {
                r.cq.in_flight() < 32
            })
            .await;
        }
    }
    until("all slots released", 30, || r.cq.in_flight() == 0).await;
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn recv_stream_ends_after_close() {
    let r = rig(256);
    let (a, b) = r.rc_pair();
    let mut rx = b.recv_stream(16, 64).unwrap();
    let tx =
        r.pd.register(b"hello".to_vec(), Access::LOCAL_WRITE)
            .unwrap();
    let (res, _tx) = bounded("send", 30, a.send(tx)).await;
    res.unwrap();
    let msg = bounded("recv", 30, rx.next()).await.unwrap().unwrap();
    assert_eq!(&msg[..], b"hello");
    bounded("close", 30, b.close()).await.unwrap();
    // Dropped after close: not reposted into the QP in ERR.
    drop(msg);
    let rest = bounded("stream end", 30, async {
        let mut n = 0;
        while let Some(item) = rx.next().await {
            assert!(item.is_err(), "only flushes after close");
            n += 1;
        }
        n
    })
    .await;
    assert!(rest <= 15, "at most the buffers that were posted flush");
    assert_eq!(rx.posted(), 0);
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn failed_recv_stream_posts_nothing() {
    let r = rig(256);
    let a = QueuePairBuilder::new(&r.pd, QpType::Rc, &r.cq)
        .max_recv_wr(16)
        .build()
        .unwrap();
    let b = QueuePairBuilder::new(&r.pd, QpType::Rc, &r.cq)
        .max_recv_wr(16)
        .build()
        .unwrap();
    common::connect(&r.opts, &a, &b);
    let depth = b.max_recv_wr();
    let err = b.recv_stream(depth + 1, 64).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    // A CQ without enough free slots: nothing is posted either.
    let small = r.cq(4);
    let c = QueuePairBuilder::new(&r.pd, QpType::Rc, &small)
        .max_recv_wr(16)
        .build()
        .unwrap();
    assert!(c.recv_stream(8, 64).is_err());
    assert_eq!(small.in_flight(), 0);
    // The next message reaches a receive posted now (no stale pool buffer swallows it).
    assert_eq!(r.cq.in_flight(), 0);
    let got = b.recv(r.pd.register(vec![0u8; 64], Access::LOCAL_WRITE).unwrap());
    let tx =
        r.pd.register(b"after".to_vec(), Access::LOCAL_WRITE)
            .unwrap();
    let (res, _) = bounded("send", 30, a.send(tx)).await;
    res.unwrap();
    let (res, buf) = bounded("recv", 30, got).await;
    assert_eq!(&buf[..res.unwrap().byte_len as usize], b"after");
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn unrepostable_buffer_ends_the_stream_with_an_error() {
    let r = rig(256);
    let (cq, a, b) = receiver_on_small_cq(&r);
    let mut rx = b.recv_stream(1, 64).unwrap();
    let tx = r.pd.register(b"x".to_vec(), Access::LOCAL_WRITE).unwrap();
    let (res, _) = bounded("send", 30, a.send(tx)).await;
    res.unwrap();
    let msg = bounded("recv", 30, rx.next()).await.unwrap().unwrap();
    // Every slot of b's CQ taken by receives that will not complete.
    let hogs: Vec<_> = (0..4)
        .map(|_| b.recv(r.pd.register(vec![0u8; 8], Access::LOCAL_WRITE).unwrap()))
        .collect();
    assert_eq!(cq.in_flight(), 4);
    drop(msg); // cannot be reposted: no free slot
    let item = bounded("stream after a failed repost", 30, rx.next()).await;
    assert!(
        matches!(item, Some(Err(Error::Core(_)))),
        "the stream reports why it has no buffer"
    );
    assert!(bounded("stream end", 30, rx.next()).await.is_none());
    drop(hogs);
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn failed_channel_keeps_delivering_without_freeing_buffers() {
    let r = rig(64);
    let chan = event_mode_channel(&r.ctx);
    let cq = chan.create_cq(64).unwrap();
    let (a, b) = r.rc_pair_on(&cq);
    let log = Arc::new(Mutex::new(Vec::new()));
    let remote_mr =
        r.pd.register_remote(pattern(65536, 5), Access::ALL)
            .unwrap();
    let remote = remote_mr.remote(..).unwrap();
    chan.inject_fault();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Work posted after the failure still completes (the driver polls on a timer) ...
    let rx = b.recv(r.pd.register(vec![0u8; 16], Access::LOCAL_WRITE).unwrap());
    let tx =
        r.pd.register(b"still".to_vec(), Access::LOCAL_WRITE)
            .unwrap();
    let (res, _) = bounded("send after fault", 30, a.send(tx)).await;
    res.unwrap();
    let (res, buf) = bounded("recv after fault", 30, rx).await;
    assert_eq!(&buf[..res.unwrap().byte_len as usize], b"still");
    // ... and a buffer of a dropped operation is released only once the NIC is done with it.
    let mr =
        r.pd.register(counted(65536, 1, &log), Access::LOCAL_WRITE)
            .unwrap();
    drop(a.read(mr, remote));
    until("read buffer released", 30, || {
        log.lock().unwrap().len() == 1
    })
    .await;
    until("slots released", 30, || cq.in_flight() == 0).await;
}

#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn failed_reposts_never_crowd_out_deliveries() {
    let r = rig(256);
    let (cq, a, b) = receiver_on_small_cq(&r);
    let send = |text: &'static [u8]| {
        let tx = r.pd.register(text.to_vec(), Access::LOCAL_WRITE).unwrap();
        a.send(tx)
    };
    let mut rx = b.recv_stream(2, 64).unwrap();
    for m in [b"one" as &[u8], b"two"] {
        bounded("send", 30, send(m)).await.0.unwrap();
    }
    let first = bounded("recv", 30, rx.next()).await.unwrap().unwrap();
    let second = bounded("recv", 30, rx.next()).await.unwrap().unwrap();
    // Every slot of b's CQ taken by one-shot receives: both reposts fail.
    let hogs: Vec<_> = (0..4)
        .map(|_| b.recv(r.pd.register(vec![0u8; 8], Access::LOCAL_WRITE).unwrap()))
        .collect();
    drop(first);
    drop(second);
    // Four messages complete the one-shot receives and free their slots.
    for _ in 0..4 {
        bounded("send", 30, send(b"hog")).await.0.unwrap();
    }
    for h in hogs {
        bounded("hog", 30, h).await.0.unwrap();
    }
    // One poll: the stream reposts both buffers and takes one notice. The two next messages
    // are delivered before it polls again, next to whatever notice is still queued.
    assert!(
        futures::poll!(rx.next()).is_pending(),
        "nothing to deliver yet"
    );
    assert_eq!(rx.posted(), 2, "both orphaned buffers reposted");
    for m in [b"three" as &[u8], b"four"] {
        bounded("send", 30, send(m)).await.0.unwrap();
    }
    until("both deliveries routed", 30, || cq.in_flight() == 0).await;
    for want in [b"three" as &[u8], b"four"] {
        let got = bounded("recv after reposts", 30, rx.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], want);
    }
}
