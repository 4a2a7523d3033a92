//! librdmacm connection management for tokio-rdma (being built).
