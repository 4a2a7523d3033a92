//! The crate's error type.

/// Errors of `tokio-rdma-core`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Every work-request slot of the dispatcher is in use (the queue is full).
    #[error("all {capacity} work-request slots are in use")]
    Exhausted {
        /// The dispatcher's capacity.
        capacity: usize,
    },
    /// The inbox a routed slot should deliver into is closed.
    #[error("the inbox is closed")]
    InboxClosed,
}
