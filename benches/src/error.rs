//! The harness's one error type: what a peer can get wrong on the wire.

/// A malformed or unsupported message from the peer (connect or accept private data).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Too short to hold the message.
    #[error("{what}: {got} bytes, at least {need} expected")]
    Short {
        /// Which message.
        what: &'static str,
        /// Bytes received.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Not an rdma-bench message (wrong magic).
    #[error("{what}: not from rdma-bench (magic {magic:02x?})")]
    Magic {
        /// Which message.
        what: &'static str,
        /// The first four bytes received.
        magic: [u8; 4],
    },
    /// A field holds a value this version does not know.
    #[error("{what}: unsupported {field} {value}")]
    Field {
        /// Which message.
        what: &'static str,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
}
