//! An established connection: its QP, CQ and event stream, and its teardown.

use std::fmt;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_rdma_core::ConnectionEvent;
use tokio_rdma_verbs::{
    CompletionChannel, CompletionQueue, Context, ProtectionDomain, QpType, QueuePair,
    QueuePairBuilder,
};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::options::{ConnParams, QpOptions};
use crate::stream::ConnectionEvents;

/// How long [`Connection::disconnect`] waits for the DISCONNECTED event (the CM's DREQ
/// timeout is shorter on RoCE and InfiniBand).
const DISCONNECT_WAIT: Duration = Duration::from_secs(5);

/// A connection's QP and CQ, created on its id's device (to INIT), and the id, now shared
/// with the QP: the id is destroyed after the QP, in rdma-core's order.
pub(crate) struct Parts {
    pub(crate) qp: QueuePair,
    pub(crate) cq: CompletionQueue,
    pub(crate) device: Arc<Device>,
    pub(crate) id: Arc<Id>,
}

impl Parts {
    pub(crate) fn build(id: Arc<Id>, device: Arc<Device>, opts: &QpOptions) -> Result<Self> {
        let cq = match opts.driver {
            // The CQ keeps its channel (and the channel's driver task) alive.
            Some(config) => CompletionChannel::with_config(&device.context, config)?,
            None => device.channel.clone(),
        }
        .create_cq(opts.cq_entries())?;
        let qp = QueuePairBuilder::new(&device.pd, QpType::Rc, &cq)
            .max_send_wr(opts.max_send_wr)
            .max_recv_wr(opts.max_recv_wr)
            .max_inline_data(opts.max_inline_data)
            .keep_alive(Box::new(id.clone()))
            .build()?;
        crate::transition::to_init(&id, &qp)?;
        id.set_qp(qp.downgrade());
        Ok(Self { qp, cq, device, id })
    }
}

/// An RC connection made through the connection manager: it owns its QP and CQ (on a PD
/// shared by every connection on the device) and its id's events.
///
/// Every verbs operation is available on the QP, through [`Connection::qp`] or `Deref`
/// (`conn.send(..)`, `conn.recv_stream(..)`, `conn.write(..)`, `conn.read(..)`, atomics,
/// inline sends). Register memory on [`Connection::pd`].
///
/// Dropping it disconnects (if still connected), moves the QP to the error state so every
/// pending operation completes with a flush error, acknowledges the queued events, and
/// leaves the QP to verbs' teardown; the id is destroyed after the QP.
pub struct Connection {
    // Field order is drop order: events (acknowledged), the QP handle (teardown begins;
    // its keep-alive holds the id), the CQ, then our own count on the id and the device.
    events: ConnectionEvents,
    qp: QueuePair,
    cq: CompletionQueue,
    id: Arc<Id>,
    device: Arc<Device>,
    private_data: Vec<u8>,
    params: ConnParams,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
}

impl Connection {
    pub(crate) fn new(
        parts: Parts,
        events: ConnectionEvents,
        private_data: Vec<u8>,
        params: ConnParams,
    ) -> Self {
        let local = parts.id.local_addr();
        let peer = parts.id.peer_addr();
        Self {
            events,
            qp: parts.qp,
            cq: parts.cq,
            id: parts.id,
            device: parts.device,
            private_data,
            params,
            local,
            peer,
        }
    }

    /// The queue pair.
    pub fn qp(&self) -> &QueuePair {
        &self.qp
    }

    /// The protection domain (shared by the connections on this device): register memory
    /// here.
    pub fn pd(&self) -> ProtectionDomain {
        self.device.pd.clone()
    }

    /// The device context (librdmacm's own, shared).
    pub fn context(&self) -> Context {
        self.device.context.clone()
    }

    /// The completion queue of the QP's sends and receives.
    pub fn cq(&self) -> &CompletionQueue {
        &self.cq
    }

    /// The local address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The private data the peer sent: with its accept (active side) or its connect request
    /// (passive side). The CM may pad it with zeros.
    pub fn private_data(&self) -> &[u8] {
        &self.private_data
    }

    /// The connection parameters the peer sent (its request, or its response).
    pub fn params(&self) -> ConnParams {
        self.params
    }

    /// Whether the connection is up: false once DISCONNECTED or DEVICE_REMOVAL arrived or
    /// [`Self::disconnect`] was called.
    pub fn is_connected(&self) -> bool {
        self.id.route().is_connected()
    }

    /// The next event (`None` after the id's last one).
    pub async fn next_event(&mut self) -> Option<ConnectionEvent> {
        poll_fn(|cx| self.events.poll_event(cx)).await
    }

    /// The event stream.
    pub fn events(&mut self) -> &mut ConnectionEvents {
        &mut self.events
    }

    /// For a connection accepted without waiting ([`AcceptOptions::wait_established`]
    /// false): waits until it is established, at most `timeout`.
    ///
    /// [`AcceptOptions::wait_established`]: crate::AcceptOptions::wait_established
    pub async fn established(&mut self, timeout: Duration) -> Result<()> {
        let addr = self.peer.unwrap_or_else(crate::unspecified);
        crate::stream::wait_established(self.id.channel(), &mut self.events, addr, timeout).await?;
        self.id.route().set_up();
        Ok(())
    }

    /// Disconnects: moves the QP to the error state (pending operations complete with flush
    /// errors), sends the DREQ (`rdma_disconnect`) and, if the connection was up, waits at most
    /// 5 s for the DISCONNECTED event, which stays in the event stream. After the peer
    /// disconnected first, it answers (DREP) and returns at once.
    pub async fn disconnect(&mut self) -> Result<()> {
        let was_connected = self.id.route().is_connected();
        let sent = self.shutdown();
        if !(sent && was_connected) {
            // Already down (the peer disconnected first: DISCONNECTED has arrived, and our
            // DREP answered it) or never up: nothing to wait for.
            return Ok(());
        }
        let mut seen = Vec::new();
        let wait = async {
            while let Some(e) = self.next_event().await {
                let end = matches!(
                    e,
                    ConnectionEvent::Disconnected | ConnectionEvent::DeviceRemoval
                );
                seen.push(e);
                if end {
                    return true;
                }
            }
            false
        };
        let outcome = tokio::time::timeout(DISCONNECT_WAIT, wait).await;
        self.events.push_front(seen);
        match outcome {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::TimedOut {
                step: crate::Step::Disconnect,
                addr: self.peer.unwrap_or_else(crate::unspecified),
                after: DISCONNECT_WAIT,
            }),
        }
    }
}

impl Connection {
    /// librdmacm's order for its own QPs (`ucma_shutdown`, then the DREQ): on InfiniBand and
    /// RoCE the QP goes to ERR before the DREQ, so nothing posted later reaches the wire; on
    /// iWARP the send queue drains (SQD) first, for a graceful close, and the QP goes to ERR
    /// after. Whether the DREQ (or DREP) was sent.
    fn shutdown(&self) -> bool {
        let flush = |qp: &QueuePair| {
            if let Err(e) = qp.set_error() {
                tracing::debug!(%e, "moving a disconnecting QP to ERR");
            }
        };
        if self.device.iwarp {
            if let Err(e) = self.qp.drain_send_queue() {
                tracing::debug!(%e, "draining a disconnecting iWARP QP");
            }
        } else {
            flush(&self.qp);
        }
        let sent = self.id.disconnect();
        if self.device.iwarp {
            flush(&self.qp);
        }
        sent
    }
}

impl std::ops::Deref for Connection {
    type Target = QueuePair;
    fn deref(&self) -> &QueuePair {
        &self.qp
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Also after the peer's DREQ: our DREP answers it (it fails harmlessly otherwise).
        self.shutdown();
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("qp", &self.qp)
            .field("local", &self.local)
            .field("peer", &self.peer)
            .field("connected", &self.is_connected())
            .finish()
    }
}
