//! Steady-state dispatch allocates nothing: a counting global allocator (process-wide, hence
//! its own test binary) observes 10^6 completions through every hot path, each both through
//! `handle_completions` and through `handle_completions_deferred` + `Aftermath::finish`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use tokio_rdma_core::sync::CountingAllocator;
use tokio_rdma_core::{inbox, Aftermath, Completion, Dispatcher, Operation, WcOpcode};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator::new();

struct CountWake(AtomicUsize);
impl Wake for CountWake {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Relaxed);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Relaxed);
    }
}

const BATCH: usize = 64;
const TOTAL: usize = 1_000_000;

struct Bench {
    d: Dispatcher<Box<[u8]>>,
    ops: Vec<Operation<Box<[u8]>>>,
    batch: Vec<Completion>,
    waker: Waker,
    wakes: Arc<CountWake>,
    /// Route through `handle_completions_deferred` (and finish `after`) instead.
    deferred: bool,
    after: Aftermath<Box<[u8]>>,
}

/// Routes `batch` in place, or deferred and then finished.
fn dispatch(
    d: &Dispatcher<Box<[u8]>>,
    batch: &[Completion],
    deferred: bool,
    after: &mut Aftermath<Box<[u8]>>,
) -> usize {
    if deferred {
        let n = d.handle_completions_deferred(batch, after);
        after.finish();
        n
    } else {
        d.handle_completions(batch)
    }
}

impl Bench {
    /// Reserve → complete → poll to Ready; every other round the operations wait first
    /// (register a waker, get woken).
    fn futures_round(&mut self, wait_first: bool) -> usize {
        let mut cx = Context::from_waker(&self.waker);
        self.ops.clear();
        self.batch.clear();
        for i in 0..BATCH {
            let mut op = self.d.reserve().expect("slot");
            if wait_first {
                assert!(Pin::new(&mut op).poll(&mut cx).is_pending());
            }
            self.batch.push(Completion {
                wr_id: op.wr_id().into_raw(),
                byte_len: i as u32,
                ..Completion::zeroed()
            });
            self.ops.push(op);
        }
        let n = dispatch(&self.d, &self.batch, self.deferred, &mut self.after);
        assert_eq!(n, BATCH);
        for (i, op) in self.ops.iter_mut().enumerate() {
            match Pin::new(op).poll(&mut cx) {
                Poll::Ready(c) => assert_eq!(c.byte_len, i as u32),
                Poll::Pending => panic!("completed operation pending"),
            }
        }
        self.ops.clear();
        n
    }

    /// Operations dropped before their completion: slots abandoned, then reclaimed.
    fn abandon_round(&mut self) -> usize {
        self.batch.clear();
        for _ in 0..BATCH {
            let op = self.d.reserve().expect("slot");
            self.batch.push(Completion {
                wr_id: op.wr_id().into_raw(),
                ..Completion::zeroed()
            });
            drop(op);
        }
        let _ = dispatch(&self.d, &self.batch, self.deferred, &mut self.after);
        BATCH
    }
}

#[test]
fn steady_state_dispatch_allocates_nothing() {
    let wakes = Arc::new(CountWake(AtomicUsize::new(0)));
    let mut b = Bench {
        d: Dispatcher::new(256),
        ops: Vec::with_capacity(BATCH),
        batch: Vec::with_capacity(BATCH),
        waker: Waker::from(wakes.clone()),
        wakes: wakes.clone(),
        deferred: false,
        after: Aftermath::new(),
    };
    // Receive path: buffers allocated once, routed, delivered, re-posted.
    let (tx, mut rx) = inbox(BATCH);
    let mut recv_ids = Vec::with_capacity(BATCH);
    for _ in 0..BATCH {
        recv_ids.push(
            b.d.reserve_into(&tx, vec![0u8; 256].into_boxed_slice())
                .unwrap(),
        );
    }
    let mut recv_batch = Vec::with_capacity(BATCH);
    let mut recv_after = Aftermath::new();
    let mut recv_round = |d: &Dispatcher<Box<[u8]>>, deferred: bool| {
        recv_batch.clear();
        recv_batch.extend(recv_ids.iter().map(|id| Completion {
            wr_id: id.into_raw(),
            opcode: WcOpcode::Recv,
            byte_len: 8,
            ..Completion::zeroed()
        }));
        assert_eq!(dispatch(d, &recv_batch, deferred, &mut recv_after), BATCH);
        recv_ids.clear();
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        while let Poll::Ready(Some(delivery)) = rx.poll_recv(&mut cx) {
            assert_eq!(delivery.completion.byte_len, 8);
            recv_ids.push(d.reserve_into(&tx, delivery.resources).unwrap());
            if recv_ids.len() == BATCH {
                break;
            }
        }
        assert_eq!(recv_ids.len(), BATCH);
        BATCH
    };

    // Warm-up (lazy statics, first-touch of every path).
    for deferred in [false, true] {
        b.deferred = deferred;
        b.futures_round(false);
        b.futures_round(true);
        b.abandon_round();
        recv_round(&b.d, deferred);
    }

    let (done, allocations) = GLOBAL.measure(|| {
        let mut done = 0;
        let mut round = 0u32;
        while done < TOTAL {
            // Rounds 0-3 in place, 4-7 deferred.
            b.deferred = round % 8 >= 4;
            done += match round % 4 {
                0 => b.futures_round(false),
                1 => b.futures_round(true),
                2 => b.abandon_round(),
                _ => recv_round(&b.d, b.deferred),
            };
            round += 1;
        }
        done
    });

    let stats = b.d.stats();
    assert!(done >= TOTAL);
    assert!(
        b.wakes.0.load(Relaxed) >= TOTAL / 4 - BATCH,
        "waiting rounds were woken"
    );
    assert!(stats.completed as usize >= TOTAL / 2);
    assert!(stats.reclaimed as usize >= TOTAL / 4 - BATCH);
    assert!(stats.delivered as usize >= TOTAL / 4 - BATCH);
    assert_eq!(b.d.in_flight(), BATCH, "only the re-posted receives remain");
    // Self-check: the counter works.
    let (_, one) = GLOBAL.measure(|| drop(std::hint::black_box(vec![1u8; 16])));
    assert_eq!(one, 1, "allocator not counting");
    assert_eq!(
        allocations, 0,
        "steady-state dispatch allocated {allocations} times"
    );
}
