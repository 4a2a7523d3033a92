//! Benchmarks for tokio-rdma: the criterion micro-benches (`benches/`) and the `rdma-bench`
//! harness, a perftest-like tool comparing async (tokio-rdma), callback and busy-poll
//! dispatch on a real device.
//!
//! This library holds the harness's measurement and reporting half: [`clock`] (cycle stamps,
//! CPU time), [`stats`] (perftest's latency and bandwidth figures), [`report`] (perftest-like
//! blocks, the comparison table, JSON), [`plot`] (latency CDFs) and [`progress`] (bars).
#![forbid(unsafe_code)]

pub mod clock;
pub mod plot;
pub mod progress;
pub mod report;
pub mod stats;
