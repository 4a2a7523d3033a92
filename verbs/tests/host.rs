//! Host tests (no RDMA device needed): bad input gives clear errors, never a panic.

use tokio_rdma_verbs::{Context, Error, QpInfo, RemoteBuffer};

#[test]
fn opening_a_missing_device_is_a_clear_error() {
    match Context::open(Some("no-such-rdma-device")) {
        Err(Error::NoDevice(what)) => assert!(what.contains("no-such-rdma-device"), "{what}"),
        // Without the ibverbs kernel support the device list itself may fail.
        Err(e @ Error::Verb { .. }) => assert!(e.to_string().contains("ibv_get_device_list")),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(ctx) => panic!("opened {ctx:?}"),
    }
}

#[test]
fn garbage_exchange_blobs_are_rejected() {
    for len in [0usize, 1, 16, 35, 37, 64] {
        let blob = vec![0xa5u8; len];
        assert!(matches!(
            QpInfo::from_bytes(&blob),
            Err(Error::Malformed { .. })
        ));
    }
    assert!(matches!(
        RemoteBuffer::from_bytes(&[1, 2, 3]),
        Err(Error::Malformed { .. })
    ));
}
