//! Example programs for tokio-rdma; see `src/bin`. The parts of an example worth testing
//! without a device (wire formats, argument parsing, protocol state) live in this library.

pub mod rping;
