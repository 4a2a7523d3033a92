//! Safe, async ibverbs for tokio, driven by `tokio-rdma-core`.
//!
//! Every ibverbs object has exactly one owning Rust type holding a `NonNull` and destroying it in
//! `Drop`, plus an `Arc` to its parent, so a context outlives its PDs, CQs and channels, a PD
//! outlives its MRs, QPs, SRQs and AHs, and a CQ outlives the QPs that use it.
//!
//! # Architecture
//!
//! ```text
//!  ibv_post_send/recv ◄── QueuePair::{send, write, read, ...} ──► OpFuture (owns the buffer,
//!        │                 reserve a tagged slot in the CQ's Dispatcher ┘  pins the QP) ▲ woken
//!        ▼                                                                              │
//!   NIC / rxe ──► CQ ──► comp-channel fd ──► driver task: executes core's DriverPolicy ─► Dispatcher
//!                  ▲      (cq_context → CQ)    (poll-arm-poll, spin, batched acks, park)   (core)
//!                  └──── inline poll by an OpFuture / RecvStream (try-lock, never blocks)
//! ```
//!
//! Modules, each importing only the ones before it: `error`, `sys` (fd helpers), `device`,
//! `mr`, `cq` (`config`, `wc`, `reaper`, `registry`, `queue`, `poll`, `channel`, `aside`,
//! `driver`), `ops`,
//! `info`, `ah`, `wr` (work-request validation and encoding, host-tested), `recv` (`pool`,
//! `stream`, behind a small `PostRecv` trait that QPs and SRQs implement), `srq`, `qp`
//! (`builder`, `transition`, `post`, `receive`, `teardown`), `event`.
//!
//! * **Dispatch.** Each [`CompletionQueue`] owns a `tokio_rdma_core::Dispatcher` with one slot
//!   per CQ entry. Posting reserves a slot tagged with the QP number (its `WrId` is the work
//!   request's `wr_id`; never a pointer), posts, and returns an [`OpFuture`] that owns the
//!   buffer. Completions are converted to plain `Completion`s and routed by `wr_id`; what
//!   routing leaves to do (dropping parked buffers, waking tasks) runs only after the poller
//!   released the CQ (`Aftermath`).
//! * **Driver.** A [`CompletionChannel`] spawns one driver task that owns the channel's
//!   `AsyncFd` (it waits with `readable()`, tokio's list of waiters, so no other registration
//!   can strand its wake-up) and executes the steps of core's sans-IO `DriverPolicy`: it drains
//!   `ibv_get_cq_event` to `EAGAIN` (readiness is cleared only then, via `try_io`; the CQ is
//!   found through its `cq_context`, no lookup), acks events in batches, polls the signalled
//!   CQs in batches of up to 64, keeps polling a dry CQ for [`DriverConfig::spin_iterations`]
//!   polls of the channel (bounded by count, never by clock; each CQ counts its own, so a busy
//!   CQ does not keep a quiet one polled, and with `n` CQs active a round is `n` polls, so a
//!   quiet one parks after `n` times fewer rounds: the same polls), then **arms** it and
//!   **polls again**; only a CQ still empty after that is parked. So idle CQs cost nothing,
//!   busy ones are never re-armed per completion, and no completion can slip between the
//!   last poll and the arm. Should the channel fd fail, the driver polls its CQs on a timer
//!   instead: nothing is released early.
//!   While it spins, the driver yields to the runtime every 32 empty rounds by waking itself
//!   (the task goes to the back of the run queue), not with `tokio::task::yield_now`, whose
//!   deferred wake-up costs a non-blocking `epoll_wait` per yield when nothing else runs;
//!   after a round that dispatched completions on a current-thread runtime while a `block_on`
//!   future (a `#[tokio::main]` body) waits for it, it yields with `yield_now`, so that future
//!   runs right after the round; tasks it woke are in the run queue already, so for them it
//!   wakes itself and pays no `epoll_wait` (a multi-thread worker would defer a `yield_now`
//!   wake-up until it has nothing else to run, up to 61 tasks later, so there the driver
//!   always wakes itself). Only futures of this crate polled by `block_on` itself count: a
//!   `main` that waits on a task (a `JoinHandle`, a channel) which awaits the operations is
//!   polled at the runtime's maintenance while the driver spins, every 61 ticks, as it
//!   always was when that task found its completion with its own polls; so is a runtime's
//!   `block_on` run inside `spawn_blocking` (tokio reports a task there). For latency, await
//!   the operations in `main`, or keep the whole loop in a task. When the driver wakes from
//!   parking and the channel has at most 4 parked CQs (a connection's own channel has one),
//!   it polls them first, yields if that woke a task, and reads the events only then: the
//!   event read (`ibv_get_cq_event` and its `EAGAIN` read, about 11 us in the soft-RoCE VM)
//!   is off the path from completion to consumer.
//! * **Event mode: the lone waiter wakes first.** With `spin_iterations: 0`, a future about to
//!   return `Pending` also waits on the channel fd itself (tokio's single reader waker of the
//!   `AsyncFd`), so on an event the reactor wakes its task before the driver task, and its
//!   own inline poll finds the completion: the driver's turn and its wake-up of the task
//!   (about 14 us in the VM, against 2.6 us for raw verbs' whole wake-up path) are not on
//!   the way. If the fd is still readable then (the driver has not read the events yet), the
//!   future asks the driver to wake it when it parks, and registers then. Only on a channel
//!   with one CQ (a connection's own); the driver's own readiness checks register no waker
//!   (`AsyncFd::try_io`). This only gets there first: the future's slot waker stays
//!   registered, so a registration replaced by another future's (the last one wins) costs
//!   only the shortcut.
//! * **Inline polling.** An operation future or receive stream that is not ready polls the CQ
//!   itself, guarded by a per-CQ atomic `draining` flag (skipped, never waited for, when the
//!   driver or another future holds it), and registers its waker only when it is about to
//!   return `Pending`. [`DriverConfig::inline_polls`] sets how many such polls it makes
//!   (default 32, the driver's own polls between yields); the budget adapts per CQ (halved
//!   when a wait needed the driver, doubled back when inline polls found the completion). A
//!   latency-critical task that owns its thread can set thousands and busy-poll inline like a
//!   raw verbs loop. While the driver has several CQs active, a future does not poll: one
//!   whose completion its own polls found goes on in the same task poll, so it took round
//!   trip after round trip (up to tokio's cooperative budget) while the other CQs'
//!   completions waited, and a single poll sufficed when the reply was back before its send
//!   returned. A completion a future finds itself counts as activity for the driver, which
//!   otherwise would see the CQ idle and park it.
//! * **Spinning in the awaiting task.** When the driver's active set holds at most one CQ
//!   (one connection busy on the channel: a ping-pong, an RPC client), a future in a spawned
//!   task (not a `block_on` future, which tokio polls only between rounds of its run queue)
//!   whose
//!   completion is not there after its inline polls does not leave the spinning to the
//!   driver: it wakes its own task and returns `Pending`, so every other ready task runs, and
//!   polls again on its next turn, for at most the driver's spin budget. The completion is
//!   then found by the task that awaits it, without the wake-up hop through the driver task
//!   (measured in the soft-RoCE VM: `send_lat` 0.96x raw busy-polling, was about 2x). With
//!   several CQs active, the driver's rounds serve all waiters and the futures wait for it.
//!   In event mode (`spin_iterations: 0`) nothing spins.
//! * **The driver stands aside for a spinning future (multi-thread runtime).** On a
//!   current-thread runtime the spinning future and the driver take turns on one thread. On a
//!   multi-thread runtime they would run on two workers and both poll the same CQ, so one
//!   busy connection kept two workers polling. So there, after a round that found nothing,
//!   a driver whose only active CQ has had spin turns since its last yield, and on which no
//!   future waits for the driver, stops polling and waits. It waits for a nudge, the channel
//!   fd, or 1 ms on a timerfd of its own (no tokio timer needed). A nudge comes when a future
//!   starts waiting for the driver, a CQ is added or removed, or a fault is injected. The
//!   bound covers what no future waits for: buffers of dropped futures, a teardown's flushes.
//!   [`CqStats::driver_polls`] counts the driver's polls.
//! * **Choosing a runtime.** A current-thread runtime (one per core for several busy
//!   connections) gives the lowest latency and CPU per operation: the awaiting task and the
//!   driver share one thread. The multi-thread runtime (`#[tokio::main]`'s default) moves tasks
//!   between workers, and a worker that parks is woken again when a task yields. Measured in
//!   the soft-RoCE VM (2 vCPUs shared with a peer that waits on its channel): see the README
//!   for the figures. Where CPU matters more than latency, event mode
//!   (`spin_iterations: 0`) polls nothing between completions on either runtime.
//! * **Selective signaling.** [`QueuePair::send_inline_unsignaled`],
//!   [`QueuePair::write_inline_unsignaled`] and [`QueuePair::write_with_imm_inline_unsignaled`]
//!   post an inline SEND or RDMA WRITE without a completion (as perftest does); every
//!   `max_send_wr / 2`-th one is signaled to retire the others. Its `wr_id` can name no slot,
//!   and the error or flush completion such a request can still produce is counted in
//!   [`CqStats::unsignaled_errors`], never dispatched; QPs posting unsignaled claim CQ
//!   headroom for those flushes.
//! * **Raw work requests.** [`QueuePair::post_raw_send`], [`QueuePair::post_raw_inline`],
//!   [`QueuePair::post_raw_inline_op`] and [`QueuePair::post_raw_recv`] post with the
//!   caller's own `wr_id` and no future, naming regions the QP keeps until it is destroyed
//!   ([`QueuePair::keep_region`]); their completions skip the dispatcher and come back as
//!   plain [`Completion`]s from the CQ's [`RawPoller`], which owns the CQ's polling from one
//!   thread (busy-poll, or blocking on the completion channel with [`RawPoller::wait`]) and
//!   still dispatches the CQ's other work. This is the perftest-style loop (and the feed of a
//!   callback dispatcher), for benchmarks and threads that own their CQ.
//! * **Cancel safety.** Dropping an [`OpFuture`] before its completion parks the buffer (and
//!   everything the work request references: an AH, the QP pin) in the dispatcher slot; it is
//!   dropped when the completion or flush error arrives, never earlier.
//! * **Teardown.** In-flight work pins its QP (providers discard the completions of a
//!   destroyed QP). When the last [`QueuePair`] handle goes, the QP's receive gate closes (no
//!   receive is posted into a QP headed for ERR), and a QP with work in flight moves to ERR and
//!   is destroyed once that work is flushed, or after a bound destroyed first and its tagged
//!   slots failed (core's `QpTeardown` machine, ticked on a timer). [`QueuePair::close`] does
//!   the same gracefully and waits: a receive marker before ERR, a send marker after it (UD,
//!   or a full send queue: the QP's slots are watched until none is left). An SRQ fails its
//!   receives when destroyed. A CQ's `Drop` acks the events it read, fails whatever its
//!   dispatcher still holds and destroys it; the channel's driver stops when the channel and
//!   all its CQs are gone.
//! * **Memory.** [`ProtectionDomain::register`] gives a region the program reads and writes
//!   through references; a region peers may write (REMOTE_WRITE / REMOTE_ATOMIC) comes from
//!   [`ProtectionDomain::register_remote`] and is read and written by copy. Receive, READ and
//!   atomic targets without LOCAL_WRITE are refused at the call.
//! * **Receives.** [`QueuePair::recv`] posts one buffer; [`QueuePair::recv_stream`] and
//!   [`SharedReceiveQueue::recv_stream`] post a registered pool (all slots reserved, the
//!   depth checked, before anything is posted) whose completions are routed into an inbox
//!   that the [`RecvStream`] drains; a [`RecvMessage`] reposts its buffer when dropped (a
//!   buffer that cannot be reposted is retried, and reported if nothing else is posted).
//!
//! * **Limits.** The driver task lives on the runtime that created the channel: objects used
//!   after that runtime shut down only progress through inline polling. Soft-RoCE (rxe) raises
//!   no QP async event for remote access errors (the failed completion reports them) and does
//!   not flush receives posted to a QP already in ERR (hence the marker order in `close` and
//!   the receive gate).
//!   The QP-affiliated async event it does raise is `SqDrained`, after
//!   [`QueuePair::drain_send_queue`].
//!
//! # Example
//!
//! ```no_run
//! use tokio_rdma_verbs::{Access, ConnectOptions, Context, QpType, QueuePairBuilder};
//!
//! # async fn demo() -> Result<(), tokio_rdma_verbs::Error> {
//! let ctx = Context::open_default()?;
//! let pd = ctx.alloc_pd()?;
//! let channel = ctx.create_comp_channel()?;
//! let cq = channel.create_cq(256)?;
//! let a = QueuePairBuilder::new(&pd, QpType::Rc, &cq).build()?;
//! let b = QueuePairBuilder::new(&pd, QpType::Rc, &cq).build()?;
//! let opts = ConnectOptions::default();
//! let (ia, ib) = (a.local_info(&opts)?, b.local_info(&opts)?);
//! a.connect(&opts, &ib)?;
//! b.connect(&opts, &ia)?;
//!
//! let rx = pd.register(vec![0u8; 4096], Access::LOCAL_WRITE)?;
//! let tx = pd.register(b"hello".to_vec(), Access::LOCAL_WRITE)?;
//! let recv = b.recv(rx);
//! let (sent, _tx) = a.send(tx).await;
//! sent?;
//! let (got, rx) = recv.await;
//! assert_eq!(&rx[..got?.byte_len as usize], b"hello");
//! # Ok(()) }
//! ```

/// Declares owners of libibverbs objects `Send + Sync`.
macro_rules! ibverbs_thread_safe {
    ($($t:ty),* $(,)?) => {$(
        // SAFETY: libibverbs is thread-safe: verbs on an object and its children may be called
        // concurrently from any thread (providers lock internally; where ordering matters, e.g.
        // ibv_poll_cq, the owner serialises itself). The owner frees the object only in its
        // Drop, after every child holding an Arc to it is gone; other state is atomics/Mutex.
        unsafe impl Send for $t {}
        // SAFETY: as for Send: shared access only issues thread-safe verbs.
        unsafe impl Sync for $t {}
    )*};
}

/// `impl Drop` for an owner whose drop is one destroy verb on one `NonNull` field.
macro_rules! destroy_on_drop {
    ($t:ty, $field:ident, $verb:ident, $why:literal) => {
        impl Drop for $t {
            fn drop(&mut self) {
                // SAFETY: the object is live and destroyed exactly once, here; every child
                // object holds an Arc to this owner, so none is left.
                let rc = unsafe { rdma_sys::$verb(self.$field.as_ptr()) };
                if rc != 0 {
                    tracing::warn!(rc, why = $why, concat!(stringify!($verb), " failed"));
                }
            }
        }
    };
}

// Modules in dependency order: each imports only modules listed before it.
mod ah;
mod cq;
mod device;
mod error;
mod event;
mod info;
mod mr;
mod ops;
mod qp;
mod recv;
mod srq;
mod sys;
mod wr;

pub use ah::AddressHandle;
pub use cq::{CompletionChannel, CompletionQueue, CqStats, DriverConfig, RawPoller};
pub use device::{
    choose_gid_index, devices, Context, DeviceAttr, DeviceInfo, Gid, GidEntry, GidType, KeepAlive,
    LinkLayer, Mtu, PortAttr, PortState,
};
pub use error::{Error, Result};
pub use event::{AsyncEvent, AsyncEventElement, AsyncEventKind, AsyncEventSource, AsyncEvents};
pub use info::{ConnectOptions, QpInfo, DEFAULT_QKEY};
pub use mr::{
    Access, AlignedBuf, Exclusive, LocalBuffer, LocalBufferMut, MemoryRegion, PeerWritable,
    ProtectionDomain, RegisterBuffer, RemoteBuffer, Sharing, Slice,
};
pub use ops::{BufResult, OpFuture};
pub use qp::{QpType, QueuePair, QueuePairBuilder, RawRegion, WeakQueuePair};
pub use recv::{RecvMessage, RecvStream, GRH_LEN};
pub use srq::SharedReceiveQueue;
pub use tokio_rdma_core::{Completion, WcFlags, WcOpcode, WcStatus};
pub use wr::{SendOp, SendRequest};
