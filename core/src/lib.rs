//! Sans-IO, lock-free, allocation-free completion dispatch and event streams for tokio-rdma.
//!
//! `tokio-rdma-core` turns RDMA work completions and connection-manager / device events into
//! futures and streams. It is a deterministic state machine: the `verbs`/`cm` drivers feed it
//! plain data ([`Completion`]s copied out of `ibv_poll_cq`, events read from file
//! descriptors) and tasks await the results. It performs no I/O, spawns no threads, reads no
//! clock and does not depend on tokio, which is what makes it model-checkable with loom and
//! benchmarkable without hardware.
//!
//! # Architecture
//!
//! ```text
//!  verbs::CompletionDriver (AsyncFd on the CQ channel)
//!     │ ibv_poll_cq batch → &[Completion]
//!     ▼
//!  Dispatcher::handle_completions ── wr_id = WrId(slot index | generation << 32)
//!     │
//!     ├── slot Posted/Waiting ──► store Completion, wake AtomicWaker ──► Operation (Future)
//!     ├── slot Abandoned ───────► drop parked resources, free slot (future already gone)
//!     ├── slot Routed ──────────► Delivery{completion, resources} ──► inbox ──► InboxReceiver
//!     └── stale / unknown / duplicate ──► counted in DispatchStats, ignored      (Stream)
//!
//!  cm / async-event fds ──► impl EventSource ──► EventStream (Stream, fused)
//!  cm event (kind, status) ──► ActiveOpen / PassiveOpen ──► ConnectAction (next librdmacm call)
//!                          └─► ConnectionEvent (what an established connection reports)
//!
//!  SlotTable: Box<[Slot]> fixed at Dispatcher::new + free list sharded per handle
//!             (Treiber stacks, tagged heads; a handle pops from its home shard, frees into
//!             it, and steals only when it is empty: threads recycle their own slots)
//!  Slot: AtomicU64 (generation | state | flags) + AtomicWaker + payload cells, 128 B aligned
//! ```
//!
//! Every hot-path step — [`Dispatcher::reserve`], [`Dispatcher::handle_completion`], polling an
//! [`Operation`], [`InboxSender::try_send`] / [`InboxReceiver::poll_recv`] — is a few atomic
//! operations: no lock, no allocation. The only `unsafe` code lives in [`sync`], behind safe
//! APIs gated by atomic state machines.
//!
//! # Example
//!
//! ```
//! use std::task::Poll;
//! use tokio_rdma_core::{Completion, Dispatcher, inbox, WcOpcode, WcStatus};
//!
//! // One dispatcher per CQ; capacity = queue depth. R = what a slot keeps alive (buffers).
//! let dispatcher: Dispatcher<Vec<u8>> = Dispatcher::new(64);
//!
//! // A send: reserve a slot, put its wr_id in the work request, post, await.
//! let op = dispatcher.reserve().unwrap();
//! let wr_id = op.wr_id().into_raw();
//! // ... ibv_post_send(qp, &wr { wr_id, .. }) ...
//!
//! // Receives: route the slot's completion, with its buffer, into an inbox (a Stream).
//! let (tx, mut rx) = inbox(64);
//! let recv_id = dispatcher.reserve_into(&tx, vec![0u8; 4096]).unwrap();
//!
//! // The driver polls the CQ and hands the batch over:
//! let batch = [
//!     Completion { wr_id, opcode: WcOpcode::Send, ..Completion::zeroed() },
//!     Completion { wr_id: recv_id.into_raw(), opcode: WcOpcode::Recv, byte_len: 12,
//!                  ..Completion::zeroed() },
//! ];
//! assert_eq!(dispatcher.handle_completions(&batch), 2);
//!
//! let sent = futures::executor::block_on(op);
//! assert_eq!(sent.status, WcStatus::Success);
//! let received = rx.try_recv().unwrap();
//! assert_eq!(received.completion.byte_len, 12);
//! assert_eq!(received.resources.len(), 4096);
//! assert_eq!(dispatcher.in_flight(), 0);
//! ```
//!
//! # Why awaiting: the seed deadlock
//!
//! In 2009 the Linux kernel's `ib_cm` and `ib_mad` modules deadlocked through three actors,
//! all running consumer code from inside event-delivery callbacks:
//!
//! 1. a thread holding a **connection lock** posts a MAD (a CM message), and posting takes the
//!    MAD **agent lock**;
//! 2. a thread holding the **agent lock** cancels the agent's timer and waits synchronously for
//!    the timer callback to finish (`del_timer_sync` / `cancel_delayed_work_sync`);
//! 3. the **timer callback** is delivering an event ("communication established") whose
//!    handler — a callback run in the timer's context — takes the **connection lock**.
//!
//! 1 waits for 2's agent lock, 2 waits for 3 to finish, 3 waits for 1's connection lock: a
//! cycle. The root cause is that event delivery *runs the consumer's code* (and so takes the
//! consumer's locks) inside the deliverer's context, where the deliverer may itself be waited
//! for under another lock. [`CallbackDispatcher`] is that style; `tests/seed_deadlock.rs`
//! reproduces the cycle with real mutexes and a watchdog.
//!
//! With tokio-rdma the deliverer never runs consumer code: [`Dispatcher::handle_completion`]
//! and [`InboxSender::try_send`] only store the event in a pre-allocated slot/ring and wake a
//! task — no consumer lock is taken, so "waiting for the deliverer to finish" (actor 2) can
//! never wait on a consumer lock. The consumer task picks the event up later, holding no lock
//! while it awaits (an `.await` point is where locks must not be held), so the third edge of
//! the cycle does not exist. The same workload written this way completes (also in
//! `tests/seed_deadlock.rs`).
//!
//! What is left of consumer code at delivery time — dropping the resources of an abandoned
//! operation or of a failed delivery, waking a task — can be moved out of the deliverer's
//! critical section too: [`Dispatcher::handle_completions_deferred`] collects it in an
//! [`Aftermath`], which the driver [`finish`](Aftermath::finish)es after releasing its per-CQ
//! polling flag.
//!
//! # Back-pressure
//!
//! * Operations: the slot table is the queue depth; [`Dispatcher::reserve`] fails with
//!   [`Error::Exhausted`] instead of queuing.
//! * Routed receives: an inbox must be at least as large as the number of receive slots
//!   routed to it (re-post a receive only after taking its delivery out), so the dispatcher
//!   never finds it full; if it does, the completion is counted as `undeliverable` in
//!   [`DispatchStats`] and its resources dropped.
//! * [`InboxSender::try_send`] reports [`TrySendError::Full`]; it never blocks or grows.

mod aftermath;
mod callback;
mod cm;
mod completion;
mod dispatcher;
mod driver;
mod error;
mod event;
mod inbox;
mod route;
mod stats;
pub mod sync;
mod teardown;
mod wr_id;

pub use aftermath::Aftermath;
pub use callback::{CallbackDispatcher, ConsumerId};
pub use cm::{
    ActiveOpen, CmEventKind, ConnectAction, ConnectFailure, ConnectStep, ConnectionEvent,
    PassiveOpen, REJECT_CONSUMER_DEFINED,
};
pub use completion::{Completion, WcFlags, WcOpcode, WcStatus};
pub use dispatcher::{Dispatcher, Operation};
pub use driver::{DriverPolicy, DriverPolicyConfig, DriverStep, EventOutcome};
pub use error::Error;
pub use event::{EventSource, EventStream, NextEvent};
pub use inbox::{inbox, InboxReceiver, InboxSender, TrySendError};
pub use route::{Delivery, Routed};
pub use stats::DispatchStats;
pub use teardown::{QpTeardown, TeardownAction, TeardownState};
pub use wr_id::WrId;
