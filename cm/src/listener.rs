//! The passive side: a listening id, its connect requests, accepting and rejecting.

use std::fmt;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;

use rdma_sys as ffi;
use tokio::sync::Mutex;
use tokio_rdma_core::{CmEventKind, InboxReceiver};

use crate::addr::RawAddr;
use crate::channel::EventChannel;
use crate::connection::{Connection, Parts};
use crate::device::Device;
use crate::driver::current_channel;
use crate::error::{Error, Result};
use crate::id::{Id, IdEvent};
use crate::options::{
    check_private_data, conn_param, AcceptOptions, ConnParams, ListenOptions,
    MAX_ACCEPT_PRIVATE_DATA, MAX_REJECT_PRIVATE_DATA,
};
use crate::stream::{wait_established, ConnectionEvents};

/// A listening id: [`Listener::accept`] yields its connect requests, in the style of
/// `tokio::net::TcpListener`.
pub struct Listener {
    // The queue is drained (requests rejected, events acknowledged) before the id is
    // destroyed: field order.
    requests: Mutex<InboxReceiver<IdEvent>>,
    /// The listening id, destroyed on drop.
    _id: Id,
    channel: Arc<EventChannel>,
    local: SocketAddr,
}

impl Listener {
    /// Binds to `addr` (port 0 picks a free one) and listens, with a backlog of 128.
    pub async fn bind(addr: SocketAddr) -> Result<Self> {
        Self::bind_with(addr, ListenOptions::default()).await
    }

    /// Binds to `addr` and listens with `opts`.
    pub async fn bind_with(addr: SocketAddr, opts: ListenOptions) -> Result<Self> {
        let channel = current_channel()?;
        let backlog = opts.backlog.clamp(1, 1 << 16);
        let (id, rx) = Id::create(&channel, backlog as usize)?;
        let mut sa = RawAddr::new(addr);
        // SAFETY: the id is live; `sa` is a valid sockaddr for the call.
        if unsafe { ffi::rdma_bind_addr(id.as_ptr(), sa.as_ptr()) } != 0 {
            return Err(Error::last_os("rdma_bind_addr", format!("binding {addr}")));
        }
        // SAFETY: the id is live and bound.
        if unsafe { ffi::rdma_listen(id.as_ptr(), backlog as i32) } != 0 {
            return Err(Error::last_os("rdma_listen", format!("on {addr}")));
        }
        let local = id.local_addr().unwrap_or(addr);
        Ok(Self {
            requests: Mutex::new(rx),
            _id: id,
            channel,
            local,
        })
    }

    /// The address listened on (with the port chosen when 0 was given).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next connect request. Other events of the listening id are logged and skipped;
    /// DEVICE_REMOVAL ends the listener with [`Error::DeviceRemoved`].
    pub async fn accept(&self) -> Result<IncomingRequest> {
        let mut rx = self.requests.lock().await;
        loop {
            let Some(mut e) = poll_fn(|cx| rx.poll_recv(cx)).await else {
                return Err(Error::Closed("the listener's event queue".into()));
            };
            match e.event.kind {
                CmEventKind::ConnectRequest => {
                    let Some((id, events)) = e.new_id.take() else {
                        continue;
                    };
                    let request = IncomingRequest {
                        local: id.local_addr().unwrap_or(self.local),
                        peer: id.peer_addr().unwrap_or_else(crate::unspecified),
                        private_data: std::mem::take(&mut e.event.private_data),
                        params: e.event.params,
                        id: Some(id),
                        events: Some(events),
                        channel: self.channel.clone(),
                    };
                    // The request event is acknowledged now (its data is copied out), so the
                    // listener's destroy never waits on a request the user holds.
                    drop(e);
                    return Ok(request);
                }
                CmEventKind::DeviceRemoval => return Err(Error::DeviceRemoved),
                kind => tracing::debug!(%kind, status = e.event.status, "listener event skipped"),
            }
        }
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("local", &self.local)
            .finish()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Queued requests are rejected and acknowledged before the id's destroy, which waits
        // for their acknowledgement.
        let rx = self.requests.get_mut();
        rx.close();
        while rx.try_recv().is_some() {}
    }
}

/// A connect request: accept it or reject it. Dropped unanswered, it is rejected.
pub struct IncomingRequest {
    id: Option<Id>,
    events: Option<InboxReceiver<IdEvent>>,
    channel: Arc<EventChannel>,
    local: SocketAddr,
    peer: SocketAddr,
    private_data: Vec<u8>,
    params: ConnParams,
}

impl IncomingRequest {
    /// The requester's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The local address the request arrived on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The requester's private data (the CM may pad it with zeros, to 56 bytes on
    /// InfiniBand/RoCE).
    pub fn private_data(&self) -> &[u8] {
        &self.private_data
    }

    /// The connection parameters the requester asks for, from our side's point of view.
    pub fn params(&self) -> ConnParams {
        self.params
    }

    /// Accepts: creates the connection's CQ and QP on the request's device, moves the QP to
    /// RTS and sends the accept; then (by default) waits for ESTABLISHED.
    pub async fn accept(mut self, opts: AcceptOptions) -> Result<Connection> {
        check_private_data(&opts.private_data, MAX_ACCEPT_PRIVATE_DATA, "accept")?;
        let peer = self.peer;
        // From here the id is either accepted or dropped (rejected on error below).
        let id = self.id.take().expect("answered once");
        let events = self.events.take().expect("answered once");
        let mut events = ConnectionEvents::new(events);
        let id = Arc::new(id);
        let prepared = (|| {
            let device = Device::for_id(&id, &self.channel)?;
            let responder = opts
                .responder_resources
                .unwrap_or(self.params.responder_resources)
                .min(device.max_responder);
            // Never more than the requester can answer (its responder resources, which the
            // request carries as our initiator depth).
            let initiator = opts
                .initiator_depth
                .unwrap_or(self.params.initiator_depth)
                .min(self.params.initiator_depth)
                .min(device.max_initiator);
            let parts = Parts::build(id.clone(), device, &opts.qp)?;
            crate::transition::to_rtr(&id, &parts.qp, Some(responder), opts.qp.min_rnr_timer)?;
            crate::transition::to_rts(&id, &parts.qp, Some(initiator))?;
            Ok::<_, Error>((parts, responder, initiator))
        })();
        let (parts, responder, initiator) = match prepared {
            Ok(p) => p,
            Err(e) => {
                id.reject(&[]);
                return Err(e);
            }
        };
        let accepted = {
            let mut param = conn_param(
                &opts.private_data,
                initiator,
                responder,
                7,
                opts.rnr_retry_count,
                parts.qp.qp_num(),
            );
            // SAFETY: the id is live; `param` points into `opts.private_data`, alive for the
            // call.
            unsafe { ffi::rdma_accept(id.as_ptr(), &mut param) == 0 }
        };
        if !accepted {
            let e = Error::last_os("rdma_accept", format!("from {peer}"));
            id.reject(&[]);
            return Err(e);
        }
        if opts.wait_established {
            wait_established(&self.channel, &mut events, peer, opts.timeout).await?;
        }
        Ok(Connection::new(
            parts,
            events,
            std::mem::take(&mut self.private_data),
            self.params,
        ))
    }

    /// Rejects, with `private_data` (at most 148 bytes) for the requester.
    pub fn reject(mut self, private_data: &[u8]) -> Result<()> {
        check_private_data(private_data, MAX_REJECT_PRIVATE_DATA, "reject")?;
        let id = self.id.take().expect("answered once");
        if !id.reject(private_data) {
            return Err(Error::last_os("rdma_reject", format!("from {}", self.peer)));
        }
        Ok(())
    }
}

impl Drop for IncomingRequest {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            id.reject(&[]);
        }
    }
}

impl fmt::Debug for IncomingRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingRequest")
            .field("peer", &self.peer)
            .field("local", &self.local)
            .field("private_data_len", &self.private_data.len())
            .field("params", &self.params)
            .finish()
    }
}
