//! rping's only message: `struct rping_rdma_info { __be64 buf; __be32 rkey; __be32 size; }`,
//! 16 bytes, sent as one SEND in both directions.
//!
//! The client sends it to advertise a buffer (its source, then its sink); the server sends it
//! back as the "go ahead" after each RDMA operation. rping's server never fills its send
//! buffer, so its go-ahead is 16 zero bytes, and its client looks only at the length.

use tokio_rdma_verbs::RemoteBuffer;
use zerocopy::byteorder::big_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::error::{Error, Result};

/// Size of every rping message.
pub const INFO_LEN: usize = std::mem::size_of::<RdmaInfo>();

/// `struct rping_rdma_info`, big-endian on the wire.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct RdmaInfo {
    /// Address of the advertised buffer in the sender's address space.
    pub buf: U64,
    /// Its rkey.
    pub rkey: U32,
    /// Its length in bytes.
    pub size: U32,
}

impl RdmaInfo {
    /// The server's "go ahead": rping sends its never-filled send buffer, all zeros.
    pub const GO_AHEAD: RdmaInfo = RdmaInfo {
        buf: U64::ZERO,
        rkey: U32::ZERO,
        size: U32::ZERO,
    };

    /// Advertises `size` bytes at `addr` under `rkey`.
    pub fn new(addr: u64, rkey: u32, size: u32) -> Self {
        Self {
            buf: addr.into(),
            rkey: rkey.into(),
            size: size.into(),
        }
    }

    /// Parses one received message; anything but exactly [`INFO_LEN`] bytes is bogus (as in
    /// rping, which checks the completion's `byte_len`).
    pub fn parse(msg: &[u8]) -> Result<Self> {
        Self::read_from_bytes(msg).map_err(|_| Error::BogusMessage { len: msg.len() })
    }

    /// The wire bytes.
    pub fn to_bytes(self) -> [u8; INFO_LEN] {
        zerocopy::transmute!(self)
    }

    /// The advertised buffer as a verbs RDMA target.
    pub fn remote(&self) -> RemoteBuffer {
        RemoteBuffer {
            addr: self.buf.get(),
            rkey: self.rkey.get(),
            len: self.size.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_is_rpings() {
        assert_eq!(INFO_LEN, 16);
        let b = RdmaInfo::new(0x0102_0304_0506_0708, 0x1122_3344, 64).to_bytes();
        assert_eq!(
            b,
            [1, 2, 3, 4, 5, 6, 7, 8, 0x11, 0x22, 0x33, 0x44, 0, 0, 0, 64]
        );
        assert_eq!(RdmaInfo::GO_AHEAD.to_bytes(), [0; 16]);
        let r = RdmaInfo::parse(&b).unwrap().remote();
        assert_eq!(
            (r.addr, r.rkey, r.len),
            (0x0102_0304_0506_0708, 0x1122_3344, 64)
        );
    }

    #[test]
    fn short_and_long_messages_are_bogus() {
        for len in [0, 1, 15, 17, 64] {
            match RdmaInfo::parse(&vec![0xaa; len]) {
                Err(Error::BogusMessage { len: l }) => assert_eq!(l, len),
                other => panic!("{len} bytes: {other:?}"),
            }
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_accepts_exactly_16_bytes(msg in proptest::collection::vec(any::<u8>(), 0..64)) {
            match RdmaInfo::parse(&msg) {
                Ok(info) => {
                    prop_assert_eq!(msg.len(), INFO_LEN);
                    prop_assert_eq!(&info.to_bytes()[..], &msg[..]);
                }
                Err(Error::BogusMessage { len }) => {
                    prop_assert_ne!(msg.len(), INFO_LEN);
                    prop_assert_eq!(len, msg.len());
                }
                Err(e) => prop_assert!(false, "unexpected {}", e),
            }
        }

        #[test]
        fn roundtrip(addr: u64, rkey: u32, size: u32) {
            let info = RdmaInfo::new(addr, rkey, size);
            prop_assert_eq!(RdmaInfo::parse(&info.to_bytes()).unwrap(), info);
            let r = info.remote();
            prop_assert_eq!((r.addr, r.rkey, r.len), (addr, rkey, size));
        }
    }
}
