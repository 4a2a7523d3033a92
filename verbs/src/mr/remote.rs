//! Descriptors of a peer's memory.

use crate::error::{Error, Result};

/// A peer's memory: what RDMA READ/WRITE and atomics target. Serializable to 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RemoteBuffer {
    /// Virtual address on the peer.
    pub addr: u64,
    /// The peer region's rkey.
    pub rkey: u32,
    /// Length in bytes.
    pub len: u32,
}

impl RemoteBuffer {
    /// Wire size of [`RemoteBuffer::to_bytes`].
    pub const WIRE_LEN: usize = 16;

    /// Big-endian `{addr, rkey, len}` (the SRP direct-descriptor layout).
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0; 16];
        b[..8].copy_from_slice(&self.addr.to_be_bytes());
        b[8..12].copy_from_slice(&self.rkey.to_be_bytes());
        b[12..].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// Inverse of [`RemoteBuffer::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let b: &[u8; 16] = b.try_into().map_err(|_| Error::Malformed {
            what: "RemoteBuffer",
            detail: format!("{} bytes, want 16", b.len()),
        })?;
        Ok(Self {
            addr: u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
            rkey: u32::from_be_bytes(b[8..12].try_into().expect("4 bytes")),
            len: u32::from_be_bytes(b[12..].try_into().expect("4 bytes")),
        })
    }

    /// The sub-range `[offset, offset + len)`, checked.
    pub fn slice(&self, offset: u32, len: u32) -> Result<Self> {
        if !matches!(offset.checked_add(len), Some(end) if end <= self.len) {
            return Err(Error::InvalidArgument(format!(
                "remote range {offset}+{len} outside {} bytes",
                self.len
            )));
        }
        Ok(Self {
            addr: self.addr + u64::from(offset),
            rkey: self.rkey,
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_buffer_roundtrip() {
        let r = RemoteBuffer {
            addr: 0x1122_3344_5566_7788,
            rkey: 0xdead_beef,
            len: 4096,
        };
        assert_eq!(RemoteBuffer::from_bytes(&r.to_bytes()).unwrap(), r);
        assert!(RemoteBuffer::from_bytes(&[0; 15]).is_err());
        assert_eq!(r.slice(4088, 8).unwrap().addr, r.addr + 4088);
        assert!(r.slice(4090, 8).is_err());
        assert!(r.slice(u32::MAX, 2).is_err());
    }
}
