//! Benchmarks for tokio-rdma: the criterion micro-benches (`benches/`) and the `rdma-bench`
//! harness, a perftest-like tool comparing async (tokio-rdma), callback and busy-poll
//! dispatch on a real device.
//!
//! This library holds the harness's measurement and reporting half: [`clock`] (cycle stamps,
//! CPU time), [`stats`] (perftest's latency and bandwidth figures), [`report`] (perftest-like
//! blocks, the comparison table, JSON), [`plot`] (latency CDFs) and [`progress`] (bars); and
//! its runner: [`protocol`] (what the two sides tell each other), [`modes`] (what each side of
//! a flow does in each dispatch mode), [`session`] (connecting and running a run's flows) and
//! [`cli`] (the command line of `src/bin/rdma-bench.rs`).
#![forbid(unsafe_code)]

// Modules in dependency order: each imports only modules listed before it.
pub mod cli;
pub mod clock;
pub mod error;
pub mod idle;
pub mod modes;
pub mod plot;
pub mod progress;
pub mod protocol;
pub mod report;
pub mod session;
pub mod stats;
