//! librdmacm connection management for tokio-rdma: listeners, connect requests and
//! connections as futures and streams, in the style of tokio's `TcpListener`/`TcpStream`.
//!
//! # Architecture
//!
//! ```text
//!  rdma_cm (kernel) ──► rdma_event_channel fd (O_NONBLOCK, tokio AsyncFd; one per runtime)
//!     │ driver task: rdma_get_cm_event until EAGAIN; each event (which owns its
//!     │ rdma_ack_cm_event) is copied out (private data, parameters), routed, then dropped
//!     ▼
//!  route by event->id->context (a CONNECT_REQUEST by event->listen_id->context; its new id is
//!  adopted right there and travels with the request)
//!     ├──► Listener's inbox ──► Listener::accept ──► IncomingRequest ──► accept / reject
//!     └──► each id's inbox ───► connect / accept steps (core's ActiveOpen / PassiveOpen)
//!                               └─► Connection::events (Disconnected, TimewaitExit, ...)
//!
//!  Connection = verbs QueuePair (RC, created by verbs on librdmacm's ibv_context, moved to
//!  INIT/RTR/RTS with rdma_init_qp_attr) + its CQ; PD and completion channel shared per device
//! ```
//!
//! **Events are acknowledged by the driver, once copied and routed.** Queues carry copies,
//! never unacknowledged events: `rdma_destroy_id` waits until every event it reported for the
//! id is acknowledged, so an event waiting in a queue would make an id's destroy depend on
//! that queue's consumer (and hang when the same thread destroys the id, or when a queue is
//! abandoned with an event in it).
//!
//! **Per-id inboxes, not a channel per id.** Every id gets its own bounded, lock-free queue
//! (core's inbox), reached from the event itself through the id's `context` pointer. The
//! alternative, one event channel per connection (`rdma_migrate_id`), costs an fd, a reactor
//! registration and a driver per connection, and migrating an id waits for its events to be
//! acknowledged; with inboxes, 256 connections cost one fd and one task, and routing takes no
//! lock. The one lock on the control path guards the per-runtime channel and device
//! registries, taken when an id is created, never per event.
//!
//! **Devices.** An id comes with librdmacm's own `ibv_context`; it is wrapped without opening
//! the device again ([`verbs::Context::from_raw_borrowed`]), kept open by an id bound to the
//! device, and shared (with one PD and one completion channel) by every connection on that
//! device in the runtime.
//!
//! **QPs.** Connections use verbs QPs (not `rdma_create_qp`), so all of verbs' guarantees
//! hold (in-flight work pins its buffers; dropping flushes). The driver moves a connection's
//! QP to the error state as soon as DISCONNECTED or DEVICE_REMOVAL arrives, so pending
//! futures fail with a flush error even if nobody reads the events. Dropping a connection
//! disconnects, flushes the QP, acknowledges its queued events, and destroys the id after
//! the QP (rdma-core's order).
//!
//! # Example
//!
//! ```no_run
//! use tokio_rdma_cm::{connect, AcceptOptions, ConnectOptions, Listener};
//! use tokio_rdma_cm::verbs::Access;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = Listener::bind("192.0.2.1:7471".parse()?).await?;
//! let server = tokio::spawn(async move {
//!     let request = listener.accept().await?;
//!     println!("{} says {:?}", request.peer_addr(), request.private_data());
//!     let opts = AcceptOptions { private_data: b"welcome".to_vec(), ..Default::default() };
//!     let conn = request.accept(opts).await?;
//!     let buf = conn.pd().register(vec![0u8; 64], Access::LOCAL_WRITE)?;
//!     let (done, buf) = conn.recv(buf).await;
//!     let n = done?.byte_len as usize;
//!     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(buf.get_ref()[..n].to_vec())
//! });
//!
//! let opts = ConnectOptions { private_data: b"hello".to_vec(), ..Default::default() };
//! let conn = connect("192.0.2.1:7471".parse()?, opts).await?;
//! assert!(conn.private_data().starts_with(b"welcome"));
//! let msg = conn.pd().register(b"ping".to_vec(), Access::LOCAL_WRITE)?;
//! conn.send(msg).await.0?;
//! # Ok(()) }
//! ```

mod addr;
mod bound;
mod channel;
mod connect;
mod connection;
mod device;
mod driver;
mod error;
mod event;
mod id;
mod listener;
mod options;
mod stream;
mod transition;

pub use tokio_rdma_verbs as verbs;

pub use connect::connect;
pub use connection::Connection;
pub use error::{Error, Result, Step};
pub use listener::{IncomingRequest, Listener};
pub use options::{
    AcceptOptions, ConnParams, ConnectOptions, ListenOptions, QpOptions, MAX_ACCEPT_PRIVATE_DATA,
    MAX_CONNECT_PRIVATE_DATA, MAX_REJECT_PRIVATE_DATA,
};
pub use stream::ConnectionEvents;
pub use tokio_rdma_core::{CmEventKind, ConnectionEvent};

/// The unspecified IPv4 address (for an id whose peer address is unknown).
pub(crate) fn unspecified() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([0, 0, 0, 0], 0))
}

#[cfg(test)]
mod tests {
    fn send<T: Send>(_: &T) {}

    /// The futures can be spawned on a multi-threaded runtime (checked at compile time).
    #[allow(dead_code)]
    fn futures_are_send(l: &super::Listener, r: super::IncomingRequest, c: &mut super::Connection) {
        let addr = super::unspecified();
        send(&super::connect(addr, Default::default()));
        send(&super::Listener::bind(addr));
        send(&l.accept());
        send(&r.accept(Default::default()));
        send(&c.next_event());
        send(&c.disconnect());
    }
}
