//! Example programs for tokio-rdma; see `src/bin`.
