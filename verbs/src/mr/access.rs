//! Memory-region access flags and the rules each kind of region enforces on them.

use std::fmt;

use crate::error::{Error, Result};

/// Memory-region access flags (`IBV_ACCESS_*`). Bits other than the named ones are passed to
/// `ibv_reg_mr` unchanged.
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Access(pub u32);

impl Access {
    /// The local NIC may write (receives, RDMA READ targets, atomic results).
    pub const LOCAL_WRITE: Self = Self(1);
    /// Peers may RDMA WRITE.
    pub const REMOTE_WRITE: Self = Self(2);
    /// Peers may RDMA READ.
    pub const REMOTE_READ: Self = Self(4);
    /// Peers may do atomics.
    pub const REMOTE_ATOMIC: Self = Self(8);
    /// Everything above.
    pub const ALL: Self = Self(1 | 2 | 4 | 8);
    /// What lets a peer change the bytes: `REMOTE_WRITE | REMOTE_ATOMIC`.
    pub const PEER_WRITES: Self = Self(2 | 8);
    /// Any remote access: `REMOTE_READ | REMOTE_WRITE | REMOTE_ATOMIC`.
    pub const REMOTE: Self = Self(2 | 4 | 8);

    /// Bit-or.
    pub const fn union(self, o: Self) -> Self {
        Self(self.0 | o.0)
    }
    /// Whether all of `o`'s bits are set.
    pub const fn contains(self, o: Self) -> bool {
        self.0 & o.0 == o.0
    }
    /// Whether any of `o`'s bits is set.
    pub const fn intersects(self, o: Self) -> bool {
        self.0 & o.0 != 0
    }
}

impl std::ops::BitOr for Access {
    type Output = Self;
    fn bitor(self, o: Self) -> Self {
        self.union(o)
    }
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(Access, &str); 4] = [
            (Access::LOCAL_WRITE, "LOCAL_WRITE"),
            (Access::REMOTE_WRITE, "REMOTE_WRITE"),
            (Access::REMOTE_READ, "REMOTE_READ"),
            (Access::REMOTE_ATOMIC, "REMOTE_ATOMIC"),
        ];
        let mut rest = self.0;
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                f.write_str(if first { "" } else { " | " })?;
                f.write_str(name)?;
                rest &= !flag.0;
                first = false;
            }
        }
        if rest != 0 || first {
            f.write_str(if first { "" } else { " | " })?;
            write!(f, "{rest:#x}")?;
        }
        Ok(())
    }
}

/// The flags [`ProtectionDomain::register`](crate::ProtectionDomain::register) accepts: none
/// that lets a peer change the bytes, since the region hands out `&[u8]` / `&mut [u8]`.
pub(super) fn check_exclusive(access: Access) -> Result<()> {
    if access.intersects(Access::PEER_WRITES) {
        return Err(Error::InvalidArgument(format!(
            "access {access:?} lets peers write the region (REMOTE_WRITE / REMOTE_ATOMIC), which \
             would race with the &[u8] / &mut [u8] a MemoryRegion hands out: use \
             ProtectionDomain::register_remote, whose bytes are copied in and out"
        )));
    }
    Ok(())
}

/// The flags [`ProtectionDomain::register_remote`](crate::ProtectionDomain::register_remote)
/// accepts: some remote access, and `LOCAL_WRITE` wherever verbs requires it.
pub(super) fn check_peer_writable(access: Access) -> Result<()> {
    if !access.intersects(Access::REMOTE) {
        return Err(Error::InvalidArgument(format!(
            "access {access:?} grants peers nothing: use ProtectionDomain::register"
        )));
    }
    if access.intersects(Access::PEER_WRITES) && !access.contains(Access::LOCAL_WRITE) {
        return Err(Error::InvalidArgument(format!(
            "access {access:?}: REMOTE_WRITE and REMOTE_ATOMIC need LOCAL_WRITE too (verbs rule)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_debug() {
        let a = Access::LOCAL_WRITE | Access::REMOTE_READ;
        assert!(a.contains(Access::LOCAL_WRITE) && !a.contains(Access::REMOTE_WRITE));
        assert!(a.intersects(Access::REMOTE) && !a.intersects(Access::PEER_WRITES));
        assert_eq!(format!("{a:?}"), "LOCAL_WRITE | REMOTE_READ");
        assert_eq!(
            format!("{:?}", Access::ALL),
            "LOCAL_WRITE | REMOTE_WRITE | REMOTE_READ | REMOTE_ATOMIC"
        );
        assert_eq!(format!("{:?}", Access::default()), "0x0");
        assert_eq!(format!("{:?}", Access(1 | 0x40)), "LOCAL_WRITE | 0x40");
    }

    #[test]
    fn register_takes_no_peer_writes() {
        for ok in [
            Access::default(),
            Access::LOCAL_WRITE,
            Access::REMOTE_READ,
            Access::LOCAL_WRITE | Access::REMOTE_READ,
        ] {
            check_exclusive(ok).unwrap();
        }
        for bad in [
            Access::ALL,
            Access::LOCAL_WRITE | Access::REMOTE_WRITE,
            Access::LOCAL_WRITE | Access::REMOTE_ATOMIC,
        ] {
            let e = check_exclusive(bad).unwrap_err().to_string();
            assert!(e.contains("register_remote"), "{e}");
        }
    }

    #[test]
    fn register_remote_needs_remote_access_and_local_write() {
        for ok in [
            Access::ALL,
            Access::REMOTE_READ,
            Access::LOCAL_WRITE | Access::REMOTE_WRITE,
            Access::LOCAL_WRITE | Access::REMOTE_ATOMIC,
        ] {
            check_peer_writable(ok).unwrap();
        }
        let e = check_peer_writable(Access::LOCAL_WRITE).unwrap_err();
        assert!(e.to_string().contains("ProtectionDomain::register"), "{e}");
        let e = check_peer_writable(Access::REMOTE_WRITE).unwrap_err();
        assert!(e.to_string().contains("need LOCAL_WRITE"), "{e}");
    }
}
