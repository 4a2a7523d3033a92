//! What a work request's local scatter/gather entry may name.

use crate::error::{Error, Result};

/// Where a work request's local data lives: an `(addr, len, lkey)` scatter/gather entry that
/// stays valid while the value is alive and not accessed otherwise.
///
/// # Safety
/// `sge` must describe memory registered under `lkey` that stays valid (not freed, not moved)
/// for as long as the value lives, even when the value is moved.
pub unsafe trait LocalBuffer: Send + 'static {
    /// `(addr, length, lkey)`.
    fn sge(&self) -> (u64, u32, u32);

    /// Whether the memory is registered with [`Access::LOCAL_WRITE`](crate::Access), i.e.
    /// whether the local NIC may write it (receives, RDMA READ data, atomic results).
    /// Operations that write into a [`LocalBufferMut`] refuse one that answers `false` when
    /// they are called, instead of failing later with a protection-error completion.
    ///
    /// The default is `false`: an implementation that may be written into says so.
    fn local_write(&self) -> bool {
        false
    }
}

/// A [`LocalBuffer`] the NIC may also write into (receives, RDMA READ, atomics).
///
/// # Safety
/// As [`LocalBuffer`], and the memory must be exclusively owned by the value: nothing in this
/// program reads or writes it while an operation holds the value. When
/// [`LocalBuffer::local_write`] answers `true`, the memory must be registered with local
/// write access.
pub unsafe trait LocalBufferMut: LocalBuffer {}

// SAFETY: the empty buffer names no memory (length 0: posted without a scatter entry).
unsafe impl LocalBuffer for () {
    fn sge(&self) -> (u64, u32, u32) {
        (0, 0, 0)
    }
    fn local_write(&self) -> bool {
        // Zero bytes can always be "written".
        true
    }
}
// SAFETY: nothing can be written into zero bytes.
unsafe impl LocalBufferMut for () {}

/// Refuses a buffer the NIC may not write into: the receive, RDMA READ and atomic paths call
/// this before posting, so the mistake is an error at the call, not a protection-error
/// completion (which would also move the QP to the error state).
pub(crate) fn check_writable<L: LocalBufferMut>(buf: &L) -> Result<()> {
    if buf.local_write() {
        return Ok(());
    }
    let (addr, len, lkey) = buf.sge();
    Err(Error::InvalidArgument(format!(
        "the local buffer ({len} bytes at {addr:#x}, lkey {lkey:#x}) is registered without \
         LOCAL_WRITE, so the NIC cannot write a receive, RDMA READ data or an atomic result \
         into it: register it with Access::LOCAL_WRITE"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Foreign memory that does not say it is writable.
    struct Foreign;
    // SAFETY: names no memory (length 0); used only to call `check_writable`, never posted.
    unsafe impl LocalBuffer for Foreign {
        fn sge(&self) -> (u64, u32, u32) {
            (0x1000, 0, 7)
        }
    }
    // SAFETY: as above.
    unsafe impl LocalBufferMut for Foreign {}

    #[test]
    fn writability_is_checked() {
        check_writable(&()).unwrap();
        let e = check_writable(&Foreign).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)));
        let msg = e.to_string();
        assert!(
            msg.contains("without LOCAL_WRITE") && msg.contains("lkey 0x7"),
            "{msg}"
        );
    }
}
