//! `rping`: rdma-core's RDMA CM ping-pong test (`librdmacm/examples/rping.c`), wire-compatible
//! with it, on tokio-rdma-cm.
//!
//! The client advertises its source buffer (`struct rping_rdma_info`, [`wire`]), the server
//! RDMA-READs it and says "go ahead", the client advertises its sink, the server RDMA-WRITEs
//! the data back and says "go ahead" again; `-C` times, or until someone disconnects. The
//! protocol lives in sans-IO state machines ([`session`]) that judge every message; the data
//! is rping's ([`pattern`]), so `-V` passes against rdma-core's rping in both directions.
//!
//! Modules, each using only those before it: `error`, `wire`, `pattern`, `args`, `session`,
//! then the async shells over tokio-rdma-cm: `conn` (helpers both sides use), [`server`],
//! [`client`].

mod error;

pub mod wire;

pub mod pattern;

pub mod args;

pub mod session;

mod conn;

pub mod server;

pub mod client;

pub use error::{Error, Result};
