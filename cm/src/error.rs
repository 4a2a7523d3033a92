//! The crate's error type.

use std::net::SocketAddr;
use std::time::Duration;

pub use tokio_rdma_core::ConnectStep as Step;

/// Errors of tokio-rdma-cm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A librdmacm call failed.
    #[error("{call} failed: {} (errno {errno}) ({context})", std::io::Error::from_raw_os_error(*errno))]
    Os {
        /// The librdmacm function.
        call: &'static str,
        /// The errno it set.
        errno: i32,
        /// What it was doing.
        context: String,
    },
    /// A verbs call failed (creating the CQ or QP of a connection, moving it between states).
    #[error(transparent)]
    Verbs(#[from] tokio_rdma_verbs::Error),
    /// There is no path to the peer, or it did not answer (ADDR_ERROR, ROUTE_ERROR,
    /// UNREACHABLE, CONNECT_ERROR, or a resolution call refused at once).
    #[error("{addr} is unreachable ({step} failed, status {status})")]
    Unreachable {
        /// The step that failed.
        step: Step,
        /// The peer.
        addr: SocketAddr,
        /// The event status or errno (negative errno for librdmacm's own errors).
        status: i32,
    },
    /// The peer's connection manager refused: nobody listens on that port (IB CM reject
    /// reason 8, invalid service id) or it had no resources.
    #[error("connection to {addr} refused (reject reason {reason}: {})", reject_reason(*reason))]
    Refused {
        /// The peer.
        addr: SocketAddr,
        /// The IB CM reject reason (or a negative errno on iWARP).
        reason: i32,
    },
    /// The peer rejected the connection with reason 28 (consumer defined): its application
    /// (`rdma_reject`, with this private data), or its kernel on the application's behalf (a
    /// request its CM could not hand over, with no private data).
    #[error("connection to {addr} rejected by the peer ({} bytes of private data)", private_data.len())]
    Rejected {
        /// The peer.
        addr: SocketAddr,
        /// The reject reason (28, consumer defined).
        reason: i32,
        /// The peer's private data (padded by the CM on InfiniBand/RoCE).
        private_data: Vec<u8>,
    },
    /// A step, or the whole attempt, took longer than its timeout.
    #[error("{step} with {addr} timed out after {after:?}")]
    TimedOut {
        /// The step in progress.
        step: Step,
        /// The peer.
        addr: SocketAddr,
        /// The timeout that expired: the configured bound, not the time waited (which can be
        /// longer after a stall, or while the event channel was busy; see the options).
        after: Duration,
    },
    /// The connection is disconnected.
    #[error("the connection is disconnected")]
    Disconnected,
    /// The RDMA device was removed.
    #[error("the RDMA device was removed")]
    DeviceRemoved,
    /// An argument was refused before calling librdmacm.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The event channel, listener or connection is closed (its runtime shut down or it was
    /// dropped).
    #[error("closed: {0}")]
    Closed(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An `Os` error from the current errno.
    pub(crate) fn last_os(call: &'static str, context: impl Into<String>) -> Self {
        Self::Os {
            call,
            errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            context: context.into(),
        }
    }

    /// The errno, for `Os` errors.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Os { errno, .. } => Some(*errno),
            Self::Verbs(tokio_rdma_verbs::Error::Verb { source, .. }) => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The IB CM reject reasons a connection attempt meets in practice (IBTA table 112).
fn reject_reason(reason: i32) -> &'static str {
    match reason {
        1 => "no QP",
        3 => "no resources",
        4 => "timeout",
        5 => "unsupported request",
        8 => "invalid service id: nobody listens",
        10 => "stale connection",
        28 => "consumer defined",
        r if r == -libc::ECONNREFUSED => "connection refused",
        _ => "see the IB CM reject reasons",
    }
}
