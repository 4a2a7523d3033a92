//! Benchmarks for tokio-rdma (being built).
