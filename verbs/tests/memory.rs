//! Memory regions and what peers may do to them. Needs an RDMA device (`cargo xtask test`
//! runs these in the soft-RoCE VM).

mod common;

use common::rig;
use tokio_rdma_verbs::{Access, Error};

/// A region peers may write cannot be registered as one that derefs to `&[u8]`/`&mut [u8]`:
/// a peer's RDMA WRITE or atomic would race with those references.
#[tokio::test]
#[ignore = "needs an RDMA device"]
async fn memory_register_refuses_peer_writable_access() {
    let r = rig(16);
    for access in [
        Access::LOCAL_WRITE | Access::REMOTE_WRITE,
        Access::LOCAL_WRITE | Access::REMOTE_ATOMIC,
        Access::ALL,
    ] {
        match r.pd.register(vec![0u8; 64], access) {
            Err(Error::InvalidArgument(msg)) => {
                assert!(msg.contains("register_remote"), "{access:?}: {msg}")
            }
            other => panic!("{access:?}: expected InvalidArgument, got {other:?}"),
        }
    }
}
