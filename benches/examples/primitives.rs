//! What the pieces of a dispatch path cost on this machine: a function call, an atomic
//! read-modify-write, a clock read, a task that yields, a wake-up of another task. Run it
//! natively and in the soft-RoCE VM to see why a path with more calls and task switches (the
//! async one) falls behind a tight loop by more under emulation than on hardware:
//!
//! ```text
//! cargo run --release -p tokio-rdma-bench --example primitives
//! cargo xtask vm -- target/release/examples/primitives
//! ```

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

fn report(what: &str, n: u64, start: Instant) {
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("{what:44} {ns:9.1} ns");
}

fn each(what: &str, n: u64, mut f: impl FnMut()) {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    report(what, n, start);
}

#[inline(never)]
fn callee(x: u64) -> u64 {
    x.wrapping_mul(3) ^ 7
}

/// Pending once, after waking its own task: a yield to the runtime's other ready tasks (what
/// the completion driver does after a round).
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if std::mem::replace(&mut self.0, true) {
            Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

fn main() {
    let n = 2_000_000;
    let a = AtomicU64::new(0);
    each("loop iteration (nothing)", n, || black_box(()));
    each("function call and return", n, || {
        black_box(callee(black_box(3)));
    });
    each("atomic fetch_add", n, || {
        black_box(a.fetch_add(1, Ordering::Relaxed));
    });
    each("atomic compare_exchange", n, || {
        let v = a.load(Ordering::Relaxed);
        let _ = black_box(a.compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Acquire));
    });
    let shared = Arc::new(1u8);
    each("Arc clone and drop", n, || {
        drop(black_box(Arc::clone(&shared)))
    });
    each("allocation and free (16 bytes)", n, || {
        drop(black_box(Box::new([0u8; 16])))
    });
    each("Instant::now", n / 10, || {
        black_box(Instant::now());
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let k = 200_000;
    let start = Instant::now();
    rt.block_on(async {
        let task = tokio::spawn(async move {
            for _ in 0..k {
                YieldOnce(false).await;
            }
        });
        task.await.expect("yielding task");
    });
    report("task yield (wake itself, run again)", k, start);
    let start = Instant::now();
    rt.block_on(async {
        let (ping, pong) = (
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(tokio::sync::Notify::new()),
        );
        let (p, q) = (ping.clone(), pong.clone());
        let task = tokio::spawn(async move {
            for _ in 0..k {
                p.notified().await;
                q.notify_one();
            }
        });
        for _ in 0..k {
            ping.notify_one();
            pong.notified().await;
        }
        task.await.expect("answering task");
    });
    report("wake another task and be woken back (2 hops)", k, start);
}
