//! Protection domains, memory regions over owned buffers, and remote-buffer descriptors.
//!
//! # Who may touch a region's bytes
//!
//! A registered region's bytes can be changed by three parties: this program, the local NIC
//! (receives, RDMA READ data, atomic results: `LOCAL_WRITE`) and peers (`REMOTE_WRITE`,
//! `REMOTE_ATOMIC`). Peers may also read them (`REMOTE_READ`).
//!
//! * The local NIC writes only while an operation owns the region by value (`OpFuture` holds
//!   it until the completion or flush), so no reference into the bytes exists meanwhile.
//! * Device *reads* (a local send, a peer's RDMA READ) are accesses outside this program: it
//!   observes nothing of them, so they cannot make a Rust access undefined. A peer reading
//!   while this program writes may see torn bytes; that is a protocol matter.
//! * Peer *writes* can land at any moment the region is registered, independent of anything
//!   this program does. A `&[u8]` or `&mut [u8]` over those bytes would be a data race.
//!
//! So the region type carries who may write it ([`Sharing`]):
//!
//! * [`MemoryRegion<B>`] (= `MemoryRegion<B, Exclusive>`, from
//!   [`ProtectionDomain::register`]) allows `LOCAL_WRITE` and `REMOTE_READ` only, and derefs
//!   to `[u8]`. `register` refuses `REMOTE_WRITE` / `REMOTE_ATOMIC` with an error naming the
//!   alternative.
//! * `MemoryRegion<B, PeerWritable>` (from [`ProtectionDomain::register_remote`]) never hands
//!   out references (no `Deref`, no `get_ref`). Its bytes are copied in and out with relaxed
//!   atomic loads and stores (`read_at`, `write_at`, `read_u64_at`); `unsafe` `as_slice` /
//!   `as_mut_slice` are for callers whose protocol keeps peers out, with that contract
//!   written down. Atomics rather than `read_volatile`: std documents volatile accesses to
//!   memory inside an allocation as *non-atomic* with respect to concurrency, while atomic
//!   accesses are the model for memory another party writes concurrently (shared memory);
//!   `write_at` takes `&mut self`, so no Rust store races with a Rust load of another size.
//!
//! A typestate rather than a separate type, so both kinds share registration, keys,
//! [`Slice`]s, `into_inner` and the [`LocalBuffer`] / [`LocalBufferMut`] impls (a
//! peer-writable region is a fine send source or READ target: while an operation owns it,
//! this program does not touch the bytes). `into_inner` is sound for both: once
//! `ibv_dereg_mr` returns, no device access to the memory remains (if it fails, the buffer
//! is leaked, never freed or returned).
//!
//! Regions store their [`Access`] flags. [`MemoryRegion::remote`] refuses a region without
//! remote access (its descriptor could only produce remote access errors), and
//! [`LocalBuffer::local_write`] reports `LOCAL_WRITE`, which `check_writable` turns into an
//! error at the call for the paths that write into a [`LocalBufferMut`].

mod access;
mod buffer;
mod local;
mod pd;
mod peer;
mod region;
mod remote;

pub use access::Access;
pub use buffer::{AlignedBuf, RegisterBuffer};
#[allow(unused_imports)] // used by the posting paths in qp and recv
pub(crate) use local::check_writable;
pub use local::{LocalBuffer, LocalBufferMut};
pub(crate) use pd::PdInner;
pub use pd::ProtectionDomain;
pub use region::{Exclusive, MemoryRegion, PeerWritable, Sharing, Slice};
pub use remote::RemoteBuffer;
