//! Sans-IO completion dispatch for tokio-rdma (being built).
