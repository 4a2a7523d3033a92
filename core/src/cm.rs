//! Connection-manager events and the state machines of one connection, as plain data.
//!
//! `cm` (the librdmacm driver) reads an event, copies it out, and asks these machines what it
//! means: the next step of an active open (`rdma_connect`'s side), of a passive open (after
//! `rdma_accept`), and the events an established connection reports. No I/O happens here, so
//! every (state, event) pair is tested on the host.

use std::fmt;

/// The type of a librdmacm event (`enum rdma_cm_event_type`, same numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CmEventKind {
    /// `RDMA_CM_EVENT_ADDR_RESOLVED`.
    AddrResolved,
    /// `RDMA_CM_EVENT_ADDR_ERROR`.
    AddrError,
    /// `RDMA_CM_EVENT_ROUTE_RESOLVED`.
    RouteResolved,
    /// `RDMA_CM_EVENT_ROUTE_ERROR`.
    RouteError,
    /// `RDMA_CM_EVENT_CONNECT_REQUEST` (delivered to the listener).
    ConnectRequest,
    /// `RDMA_CM_EVENT_CONNECT_RESPONSE` (active side, QP not created through librdmacm).
    ConnectResponse,
    /// `RDMA_CM_EVENT_CONNECT_ERROR`.
    ConnectError,
    /// `RDMA_CM_EVENT_UNREACHABLE`: the peer did not answer (the CM gave up).
    Unreachable,
    /// `RDMA_CM_EVENT_REJECTED`: a reject, by the peer's CM or application.
    Rejected,
    /// `RDMA_CM_EVENT_ESTABLISHED`.
    Established,
    /// `RDMA_CM_EVENT_DISCONNECTED`.
    Disconnected,
    /// `RDMA_CM_EVENT_DEVICE_REMOVAL`: the id must be destroyed.
    DeviceRemoval,
    /// `RDMA_CM_EVENT_MULTICAST_JOIN`.
    MulticastJoin,
    /// `RDMA_CM_EVENT_MULTICAST_ERROR`.
    MulticastError,
    /// `RDMA_CM_EVENT_ADDR_CHANGE`: the id's address moved to another device or port.
    AddrChange,
    /// `RDMA_CM_EVENT_TIMEWAIT_EXIT`: the QP may be reused.
    TimewaitExit,
    /// A type this crate does not know (a newer librdmacm).
    Unknown(u32),
}

impl CmEventKind {
    const KNOWN: [CmEventKind; 16] = [
        Self::AddrResolved,
        Self::AddrError,
        Self::RouteResolved,
        Self::RouteError,
        Self::ConnectRequest,
        Self::ConnectResponse,
        Self::ConnectError,
        Self::Unreachable,
        Self::Rejected,
        Self::Established,
        Self::Disconnected,
        Self::DeviceRemoval,
        Self::MulticastJoin,
        Self::MulticastError,
        Self::AddrChange,
        Self::TimewaitExit,
    ];

    /// From librdmacm's number.
    pub fn from_raw(raw: u32) -> Self {
        Self::KNOWN
            .get(raw as usize)
            .copied()
            .unwrap_or(Self::Unknown(raw))
    }

    /// librdmacm's number.
    pub fn raw(self) -> u32 {
        match self {
            Self::Unknown(n) => n,
            known => Self::KNOWN.iter().position(|k| *k == known).unwrap_or(0) as u32,
        }
    }
}

impl fmt::Display for CmEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(n) => write!(f, "unknown CM event {n}"),
            k => write!(f, "{k:?}"),
        }
    }
}

/// The IB CM reject reason an application's `rdma_reject` carries
/// (`IB_CM_REJ_CONSUMER_DEFINED`).
pub const REJECT_CONSUMER_DEFINED: i32 = 28;

/// Where a connection attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectStep {
    /// Resolving the destination address to a device (`rdma_resolve_addr`).
    ResolveAddr,
    /// Resolving the route (`rdma_resolve_route`).
    ResolveRoute,
    /// The CM handshake (`rdma_connect` / `rdma_accept` until established).
    Connect,
    /// Disconnecting (`rdma_disconnect` until DISCONNECTED).
    Disconnect,
}

impl fmt::Display for ConnectStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ResolveAddr => "address resolution",
            Self::ResolveRoute => "route resolution",
            Self::Connect => "connection handshake",
            Self::Disconnect => "disconnect",
        })
    }
}

/// Why a connection attempt failed, as the events tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// No path to the peer, or the peer did not answer (ADDR_ERROR, ROUTE_ERROR,
    /// UNREACHABLE, CONNECT_ERROR); `status` is the event's (a negative errno or a CM code).
    Unreachable {
        /// The step that failed.
        step: ConnectStep,
        /// The event's status.
        status: i32,
    },
    /// The peer's CM refused: nobody listens there, or it had no resources (a REJECTED
    /// event whose reason is not [`REJECT_CONSUMER_DEFINED`]).
    Refused {
        /// The IB CM reject reason (e.g. 8, invalid service id: no listener) or a negative
        /// errno on iWARP.
        reason: i32,
    },
    /// The peer application rejected (`rdma_reject`), possibly with private data.
    Rejected {
        /// The reject reason ([`REJECT_CONSUMER_DEFINED`]).
        reason: i32,
    },
    /// The device went away.
    DeviceRemoved,
    /// An event that has no place at this step (reported with its status).
    Unexpected {
        /// The event.
        kind: CmEventKind,
        /// Its status.
        status: i32,
    },
}

/// What to do after an event, while connecting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectAction {
    /// Call `rdma_resolve_route`.
    ResolveRoute,
    /// Create the QP (to INIT) and call `rdma_connect`.
    Connect,
    /// The peer accepted: move the QP to RTR and RTS, then `rdma_establish`.
    Establish,
    /// The connection is established.
    Done,
    /// The attempt failed.
    Fail(ConnectFailure),
    /// Nothing to do (an event that does not change this step, e.g. ADDR_CHANGE).
    Ignore,
}

/// The active side's open: address, route, handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveOpen {
    step: Option<ConnectStep>,
}

impl Default for ActiveOpen {
    fn default() -> Self {
        Self::new()
    }
}

impl ActiveOpen {
    /// Starts at address resolution.
    pub fn new() -> Self {
        Self {
            step: Some(ConnectStep::ResolveAddr),
        }
    }

    /// The step in progress, `None` once finished (done or failed).
    pub fn step(&self) -> Option<ConnectStep> {
        self.step
    }

    /// Feeds one event of this id.
    pub fn handle(&mut self, kind: CmEventKind, status: i32) -> ConnectAction {
        use CmEventKind as K;
        use ConnectStep as S;
        let Some(step) = self.step else {
            return ConnectAction::Ignore;
        };
        let action = match (step, kind) {
            (_, K::AddrChange | K::TimewaitExit) => return ConnectAction::Ignore,
            (_, K::DeviceRemoval) => ConnectAction::Fail(ConnectFailure::DeviceRemoved),
            (S::ResolveAddr, K::AddrResolved) if status == 0 => {
                self.step = Some(S::ResolveRoute);
                return ConnectAction::ResolveRoute;
            }
            (S::ResolveRoute, K::RouteResolved) if status == 0 => {
                self.step = Some(S::Connect);
                return ConnectAction::Connect;
            }
            (S::Connect, K::ConnectResponse) if status == 0 => ConnectAction::Establish,
            (S::Connect, K::Established) => ConnectAction::Done,
            (S::ResolveAddr, K::AddrError | K::AddrResolved)
            | (S::ResolveRoute, K::RouteError | K::RouteResolved)
            | (S::Connect, K::Unreachable | K::ConnectError | K::ConnectResponse) => {
                ConnectAction::Fail(ConnectFailure::Unreachable { step, status })
            }
            (S::Connect, K::Rejected) => ConnectAction::Fail(reject(status)),
            (_, kind) => ConnectAction::Fail(ConnectFailure::Unexpected { kind, status }),
        };
        // Establish keeps the step (its outcome is the next call to `established`).
        if action != ConnectAction::Establish {
            self.step = None;
        }
        action
    }

    /// After [`ConnectAction::Establish`]: `rdma_establish` succeeded.
    pub fn established(&mut self) -> ConnectAction {
        match self.step.take() {
            Some(ConnectStep::Connect) => ConnectAction::Done,
            other => {
                self.step = other;
                ConnectAction::Ignore
            }
        }
    }
}

fn reject(status: i32) -> ConnectFailure {
    if status == REJECT_CONSUMER_DEFINED {
        ConnectFailure::Rejected { reason: status }
    } else {
        ConnectFailure::Refused { reason: status }
    }
}

/// The passive side's open, after `rdma_accept`: waits for ESTABLISHED.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassiveOpen {
    finished: bool,
}

impl PassiveOpen {
    /// Waiting for ESTABLISHED.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether it finished (done or failed).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Feeds one event of the accepted id.
    pub fn handle(&mut self, kind: CmEventKind, status: i32) -> ConnectAction {
        use CmEventKind as K;
        if self.finished {
            return ConnectAction::Ignore;
        }
        let action = match kind {
            K::AddrChange | K::TimewaitExit => return ConnectAction::Ignore,
            K::Established => ConnectAction::Done,
            K::DeviceRemoval => ConnectAction::Fail(ConnectFailure::DeviceRemoved),
            K::Unreachable | K::ConnectError | K::Disconnected => {
                ConnectAction::Fail(ConnectFailure::Unreachable {
                    step: ConnectStep::Connect,
                    status,
                })
            }
            K::Rejected => ConnectAction::Fail(reject(status)),
            kind => ConnectAction::Fail(ConnectFailure::Unexpected { kind, status }),
        };
        self.finished = true;
        action
    }
}

/// What an established connection reports to its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// ESTABLISHED (passive side, when the connection was handed out before it).
    Established,
    /// The peer disconnected, or `rdma_disconnect` completed: the QP is in the error state.
    Disconnected,
    /// The connection left timewait: the id's last event.
    TimewaitExit,
    /// The local address moved (bonding failover, address removed).
    AddrChange,
    /// The device was removed: the QP is in the error state; drop the connection.
    DeviceRemoval,
    /// Any other event (reported with its status rather than swallowed).
    Other {
        /// The event.
        event: CmEventKind,
        /// Its status.
        status: i32,
    },
}

impl ConnectionEvent {
    /// Classifies an event of an established connection's id.
    pub fn from_event(kind: CmEventKind, status: i32) -> Self {
        match kind {
            CmEventKind::Established => Self::Established,
            CmEventKind::Disconnected => Self::Disconnected,
            CmEventKind::TimewaitExit => Self::TimewaitExit,
            CmEventKind::AddrChange => Self::AddrChange,
            CmEventKind::DeviceRemoval => Self::DeviceRemoval,
            event => Self::Other { event, status },
        }
    }

    /// Whether the QP must be moved to the error state (so every pending operation flushes):
    /// the connection is gone.
    pub fn ends_connection(&self) -> bool {
        matches!(self, Self::Disconnected | Self::DeviceRemoval)
    }

    /// Whether no event can follow for this id.
    pub fn is_last(&self) -> bool {
        matches!(self, Self::TimewaitExit | Self::DeviceRemoval)
    }
}
