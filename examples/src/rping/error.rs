//! The one error type of this crate: what ends an rping connection or run.

use tokio_rdma_verbs as verbs;

/// Why an rping connection (or the whole run) ended badly.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line is unusable (the message says why, as rping's would).
    #[error("{0}")]
    Usage(String),
    /// The peer sent a message that is not one `struct rping_rdma_info`.
    #[error(
        "received bogus data, size {len} (an rping message, struct rping_rdma_info, is 16 bytes)"
    )]
    BogusMessage {
        /// Bytes received.
        len: usize,
    },
    /// The client advertised a source buffer of 0 bytes.
    #[error("the client advertised an empty source buffer")]
    EmptySource,
    /// The client advertised a source larger than the buffer we read it into.
    #[error(
        "the client advertised a {advertised}-byte source, larger than our {capacity}-byte \
         buffer (-S)"
    )]
    SourceTooLarge {
        /// Size the client advertised.
        advertised: u32,
        /// Our buffer's size.
        capacity: usize,
    },
    /// The client advertised a sink too small for the ping data we echo.
    #[error(
        "the client advertised a {advertised}-byte sink, too small for {needed} bytes of ping data"
    )]
    SinkTooSmall {
        /// Size the client advertised.
        advertised: u32,
        /// Bytes we have to write.
        needed: usize,
    },
    /// `-V`: the echoed data differs from what we sent.
    #[error("data mismatch in ping {ping} at byte {offset}")]
    DataMismatch {
        /// The ping's number (from 0).
        ping: u64,
        /// First differing byte.
        offset: usize,
    },
    /// A message arrived when the protocol expects none (our side has nothing outstanding).
    #[error("unexpected message from the peer: {0}")]
    OutOfOrder(&'static str),
    /// The peer disconnected in the middle of a ping.
    #[error("the peer disconnected {0}")]
    Disconnected(&'static str),
    /// A connection-manager step failed (address resolution, connect, accept, listen).
    #[error("{what}: {source}")]
    Cm {
        /// The step.
        what: &'static str,
        /// Its error.
        #[source]
        source: tokio_rdma_cm::Error,
    },
    /// A verbs operation failed (a wrong rkey or address shows up here as a failed RDMA
    /// READ or WRITE).
    #[error("{what} failed: {source}")]
    Verbs {
        /// The operation.
        what: &'static str,
        /// Its error.
        #[source]
        source: verbs::Error,
    },
}

impl Error {
    /// Wraps a verbs error with the operation it came from.
    pub fn verbs(what: &'static str) -> impl FnOnce(verbs::Error) -> Error {
        move |source| Error::Verbs { what, source }
    }
}

impl Error {
    /// Wraps a connection-manager error with the step it came from.
    pub fn cm(what: &'static str) -> impl FnOnce(tokio_rdma_cm::Error) -> Error {
        move |source| Error::Cm { what, source }
    }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
