//! Shared setup for the device tests: one device context, one PD, one completion channel and
//! connected loopback QP pairs.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use tokio_rdma_verbs::{
    CompletionChannel, CompletionQueue, ConnectOptions, Context, DriverConfig, ProtectionDomain,
    QpType, QueuePair, QueuePairBuilder,
};

pub struct Rig {
    pub ctx: Context,
    pub pd: ProtectionDomain,
    pub chan: CompletionChannel,
    pub cq: CompletionQueue,
    pub opts: ConnectOptions,
}

/// Opens the default device (TOKIO_RDMA_DEVICE or the first one) with a CQ of `cqe` entries.
pub fn rig(cqe: u32) -> Rig {
    let ctx = Context::open_default().expect("open RDMA device");
    let pd = ctx.alloc_pd().expect("alloc pd");
    let chan = ctx.create_comp_channel().expect("completion channel");
    let cq = chan.create_cq(cqe).expect("cq");
    Rig {
        ctx,
        pd,
        chan,
        cq,
        opts: ConnectOptions::default(),
    }
}

impl Rig {
    pub fn cq(&self, cqe: u32) -> CompletionQueue {
        self.chan.create_cq(cqe).expect("cq")
    }

    /// Two RC QPs on `cq` connected to each other.
    pub fn rc_pair_on(&self, cq: &CompletionQueue) -> (QueuePair, QueuePair) {
        self.rc_pair_between(cq, cq)
    }

    /// Two RC QPs connected to each other, the first on `a_cq`, the second on `b_cq`.
    pub fn rc_pair_between(
        &self,
        a_cq: &CompletionQueue,
        b_cq: &CompletionQueue,
    ) -> (QueuePair, QueuePair) {
        let a = QueuePairBuilder::new(&self.pd, QpType::Rc, a_cq)
            .max_send_wr(256)
            .max_recv_wr(256)
            .build()
            .expect("qp a");
        let b = QueuePairBuilder::new(&self.pd, QpType::Rc, b_cq)
            .max_send_wr(256)
            .max_recv_wr(256)
            .build()
            .expect("qp b");
        connect(&self.opts, &a, &b);
        (a, b)
    }

    pub fn rc_pair(&self) -> (QueuePair, QueuePair) {
        self.rc_pair_on(&self.cq)
    }
}

/// A channel in event mode: nothing spins, futures poll once before they wait.
pub fn event_mode_channel(ctx: &Context) -> CompletionChannel {
    CompletionChannel::with_config(
        ctx,
        DriverConfig {
            spin_iterations: 0,
            inline_polls: 1,
            ..DriverConfig::default()
        },
    )
    .expect("event-mode channel")
}

pub fn connect(opts: &ConnectOptions, a: &QueuePair, b: &QueuePair) {
    let ia = a.local_info(opts).expect("info a");
    let ib = b.local_info(opts).expect("info b");
    a.connect(opts, &ib).expect("connect a");
    b.connect(opts, &ia).expect("connect b");
}

/// Fails the test instead of hanging.
pub async fn bounded<F: Future>(what: &str, secs: u64, f: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: timed out after {secs}s"),
    }
}

/// Resident set size in bytes (from /proc/self/statm).
pub fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm rss");
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
