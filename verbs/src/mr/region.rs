//! Memory regions over owned buffers, typed by whether peers may write them.

use std::fmt;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::{Bound, Deref, DerefMut, Range, RangeBounds};
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as ffi;

use super::access::{check_exclusive, check_peer_writable, Access};
use super::buffer::RegisterBuffer;
use super::local::{LocalBuffer, LocalBufferMut};
use super::pd::{PdInner, ProtectionDomain};
use super::remote::RemoteBuffer;
use crate::error::{Error, Result};

mod sealed {
    pub trait Sealed {}
}

/// Who may change a region's bytes besides this program: the type parameter of
/// [`MemoryRegion`]. Sealed; the two kinds are [`Exclusive`] and [`PeerWritable`].
pub trait Sharing: sealed::Sealed + Send + Sync + 'static {
    /// The kind's name, for `Debug`.
    const NAME: &'static str;
}

/// Only this program (and the local NIC, while an operation owns the region) writes the bytes;
/// peers may at most read them. Such a region derefs to `[u8]`.
#[derive(Debug)]
pub enum Exclusive {}

/// Peers may write the bytes at any time (RDMA WRITE, atomics), so this program reads and
/// writes them only by copying (see [`MemoryRegion::read_at`]).
#[derive(Debug)]
pub enum PeerWritable {}

impl sealed::Sealed for Exclusive {}
impl sealed::Sealed for PeerWritable {}
impl Sharing for Exclusive {
    const NAME: &'static str = "Exclusive";
}
impl Sharing for PeerWritable {
    const NAME: &'static str = "PeerWritable";
}

impl ProtectionDomain {
    /// Registers an owned buffer that peers cannot write. The buffer's bytes must not move
    /// while registered, which [`RegisterBuffer`] guarantees for its implementors.
    ///
    /// `access` may hold `LOCAL_WRITE` and `REMOTE_READ`; `REMOTE_WRITE` and `REMOTE_ATOMIC`
    /// are refused with [`Error::InvalidArgument`]: such a region needs
    /// [`register_remote`](Self::register_remote).
    pub fn register<B: RegisterBuffer>(&self, buf: B, access: Access) -> Result<MemoryRegion<B>> {
        check_exclusive(access)?;
        MemoryRegion::new(self, buf, access)
    }

    /// Registers an owned buffer that peers may write (`REMOTE_WRITE`, `REMOTE_ATOMIC`; these
    /// need `LOCAL_WRITE` too) or read. Its bytes are only reachable by copy
    /// ([`MemoryRegion::read_at`], [`MemoryRegion::write_at`]), never as references.
    /// `access` without any remote flag is refused: use [`register`](Self::register).
    pub fn register_remote<B: RegisterBuffer>(
        &self,
        buf: B,
        access: Access,
    ) -> Result<MemoryRegion<B, PeerWritable>> {
        check_peer_writable(access)?;
        MemoryRegion::new(self, buf, access)
    }
}

/// A registered memory region that owns its buffer. Deregistered on drop (before the buffer
/// is freed); [`MemoryRegion::into_inner`] hands the buffer back.
///
/// `S` says whether peers may write it: a `MemoryRegion<B>` (= `MemoryRegion<B, Exclusive>`,
/// from [`ProtectionDomain::register`]) derefs to `[u8]`; a `MemoryRegion<B, PeerWritable>`
/// (from [`ProtectionDomain::register_remote`]) does not.
///
/// Why: a peer's RDMA WRITE or atomic can land at any moment, and a `&[u8]` or `&mut [u8]`
/// over bytes that change under it is a data race, undefined behaviour even if the program
/// never looks at the torn bytes. Peers can only *read* an `Exclusive` region (with
/// `REMOTE_READ`); a read by the device is invisible to this program, so `&mut [u8]` stays
/// sound, but a peer reading while you write may see a mix of old and new bytes: publish the
/// descriptor (or signal the peer) once the bytes are final.
pub struct MemoryRegion<B: RegisterBuffer, S: Sharing = Exclusive> {
    mr: NonNull<ffi::ibv_mr>,
    // `ManuallyDrop` so `into_inner` can move it out after deregistering.
    buf: ManuallyDrop<B>,
    pub(super) ptr: *mut u8,
    pub(super) len: usize,
    lkey: u32,
    rkey: u32,
    access: Access,
    _pd: Arc<PdInner>,
    _sharing: PhantomData<S>,
}

// SAFETY: the MR handle may be used/deregistered from any thread (libibverbs is
// thread-safe); the buffer is Send.
unsafe impl<B: RegisterBuffer, S: Sharing> Send for MemoryRegion<B, S> {}
// SAFETY: &MemoryRegion gives shared access to the keys and, for `Exclusive`, read access to
// the bytes (`&B`, `&[u8]`); for `PeerWritable`, `&self` methods only load the bytes
// atomically.
unsafe impl<B: RegisterBuffer + Sync, S: Sharing> Sync for MemoryRegion<B, S> {}

impl<B: RegisterBuffer, S: Sharing> MemoryRegion<B, S> {
    fn new(pd: &ProtectionDomain, mut buf: B, access: Access) -> Result<Self> {
        let ptr = buf.as_mut_ptr();
        let len = buf.len();
        // SAFETY: `ptr` is valid for `len` bytes for as long as `buf` lives (RegisterBuffer
        // contract), and `buf` lives inside the MR until after deregistration.
        let mr = unsafe { ffi::ibv_reg_mr(pd.as_ptr(), ptr.cast(), len, access.0 as i32) };
        let mr = NonNull::new(mr).ok_or_else(|| {
            Error::last_os("ibv_reg_mr", format!("{len} bytes, access {access:?}"))
        })?;
        // SAFETY: `mr` is a valid, freshly registered MR.
        let (lkey, rkey) = unsafe { ((*mr.as_ptr()).lkey, (*mr.as_ptr()).rkey) };
        Ok(Self {
            mr,
            buf: ManuallyDrop::new(buf),
            ptr,
            len,
            lkey,
            rkey,
            access,
            _pd: pd.inner.clone(),
            _sharing: PhantomData,
        })
    }

    /// Local key.
    pub fn lkey(&self) -> u32 {
        self.lkey
    }
    /// Remote key.
    pub fn rkey(&self) -> u32 {
        self.rkey
    }
    /// Virtual address of the first byte.
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the region has zero length.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The access flags it was registered with.
    pub fn access(&self) -> Access {
        self.access
    }

    /// A descriptor of `range` of this region to hand to a peer for RDMA READ (and, for a
    /// [`PeerWritable`] region, RDMA WRITE and atomics as its flags allow). A region
    /// registered without any remote access has no use for one: that is an error.
    pub fn remote(&self, range: impl RangeBounds<usize>) -> Result<RemoteBuffer> {
        if !self.access.intersects(Access::REMOTE) {
            return Err(Error::InvalidArgument(format!(
                "a region registered with {:?} grants peers no access: a RemoteBuffer for it \
                 would only produce remote access errors (register with REMOTE_READ, or \
                 register_remote)",
                self.access
            )));
        }
        let r = resolve_range(range, self.len)?;
        Ok(RemoteBuffer {
            addr: self.addr() + r.start as u64,
            rkey: self.rkey,
            len: (r.end - r.start) as u32,
        })
    }

    /// A sub-range of this region as an owned local buffer for an operation.
    pub fn slice(self, range: impl RangeBounds<usize>) -> Result<Slice<B, S>> {
        let range = resolve_range(range, self.len)?;
        Ok(Slice { mr: self, range })
    }

    /// Deregisters the region and returns the buffer. Once `ibv_dereg_mr` has returned, the
    /// device (and so every peer) no longer accesses the memory, so handing the buffer out is
    /// sound even for a [`PeerWritable`] region.
    ///
    /// # Panics
    /// If `ibv_dereg_mr` fails: the device may still access the memory, so the buffer is
    /// leaked rather than returned.
    pub fn into_inner(self) -> B {
        let mut this = ManuallyDrop::new(self);
        assert!(
            this.dereg(),
            "ibv_dereg_mr failed: the buffer is leaked, not handed back"
        );
        // SAFETY: `this` is never used or dropped again; the buffer is moved out exactly once
        // and the PD Arc is dropped in place.
        unsafe {
            std::ptr::drop_in_place(&mut this._pd);
            ManuallyDrop::take(&mut this.buf)
        }
    }

    /// Deregisters; `false` when the verb failed (the device may still access the memory).
    fn dereg(&mut self) -> bool {
        // SAFETY: the MR is valid and deregistered exactly once (Drop and into_inner are
        // mutually exclusive). No posted work request references it any more: operations own
        // the region until their completion arrives.
        let rc = unsafe { ffi::ibv_dereg_mr(self.mr.as_ptr()) };
        if rc != 0 {
            tracing::error!(rc, "ibv_dereg_mr failed; leaking the buffer");
        }
        rc == 0
    }
}

impl<B: RegisterBuffer, S: Sharing> Drop for MemoryRegion<B, S> {
    fn drop(&mut self) {
        if self.dereg() {
            // SAFETY: dropped exactly once, after deregistration: the device no longer
            // accesses the bytes.
            unsafe { ManuallyDrop::drop(&mut self.buf) }
        }
    }
}

impl<B: RegisterBuffer> MemoryRegion<B> {
    /// The underlying buffer.
    pub fn get_ref(&self) -> &B {
        &self.buf
    }
}

impl<B: RegisterBuffer> Deref for MemoryRegion<B> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr/len describe the owned buffer's initialised bytes. Nothing else writes
        // them while this borrow lives: peers cannot (no REMOTE_WRITE / REMOTE_ATOMIC, checked
        // at registration) and the local NIC writes only while an operation owns the region.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl<B: RegisterBuffer> DerefMut for MemoryRegion<B> {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in Deref, and `&mut self` makes the access unique within this program.
        // A peer's RDMA READ (REMOTE_READ) may read concurrently; that is a device access
        // outside this program, which sees no other effect of it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<B: RegisterBuffer, S: Sharing> fmt::Debug for MemoryRegion<B, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("sharing", &format_args!("{}", S::NAME))
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len)
            .field("access", &self.access)
            .field("lkey", &format_args!("{:#x}", self.lkey))
            .field("rkey", &format_args!("{:#x}", self.rkey))
            .finish()
    }
}

pub(super) fn resolve_range(range: impl RangeBounds<usize>, len: usize) -> Result<Range<usize>> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => len,
    };
    if start > end || end > len || end - start > u32::MAX as usize {
        return Err(Error::InvalidArgument(format!(
            "range {start}..{end} outside a region of {len} bytes"
        )));
    }
    Ok(start..end)
}

/// A sub-range of an owned memory region.
#[derive(Debug)]
pub struct Slice<B: RegisterBuffer, S: Sharing = Exclusive> {
    mr: MemoryRegion<B, S>,
    range: Range<usize>,
}

impl<B: RegisterBuffer, S: Sharing> Slice<B, S> {
    /// Gives the whole region back.
    pub fn into_region(self) -> MemoryRegion<B, S> {
        self.mr
    }
    /// The byte range.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }
}

// SAFETY: the region owns its buffer; its bytes are fixed (RegisterBuffer contract) and
// registered under lkey.
unsafe impl<B: RegisterBuffer, S: Sharing> LocalBuffer for MemoryRegion<B, S> {
    fn sge(&self) -> (u64, u32, u32) {
        (self.addr(), self.len as u32, self.lkey)
    }
    fn local_write(&self) -> bool {
        self.access.contains(Access::LOCAL_WRITE)
    }
}
// SAFETY: an operation owns the region by value while in flight, so nothing in this program
// touches the bytes meanwhile (a peer's writes to a PeerWritable region are device accesses
// outside it); `local_write` reports the registered flag.
unsafe impl<B: RegisterBuffer, S: Sharing> LocalBufferMut for MemoryRegion<B, S> {}

// SAFETY: as for MemoryRegion; the range was checked against the region's length.
unsafe impl<B: RegisterBuffer, S: Sharing> LocalBuffer for Slice<B, S> {
    fn sge(&self) -> (u64, u32, u32) {
        (
            self.mr.addr() + self.range.start as u64,
            (self.range.end - self.range.start) as u32,
            self.mr.lkey,
        )
    }
    fn local_write(&self) -> bool {
        self.mr.local_write()
    }
}
// SAFETY: the slice owns its region exclusively.
unsafe impl<B: RegisterBuffer, S: Sharing> LocalBufferMut for Slice<B, S> {}

// SAFETY: the Arc keeps the region (and its bytes) alive; shared owners only read (`&[u8]`,
// or atomic loads for PeerWritable), and the NIC only reads through a plain `LocalBuffer`
// (send / RDMA WRITE sources).
unsafe impl<B: RegisterBuffer + Sync, S: Sharing> LocalBuffer for Arc<MemoryRegion<B, S>> {
    fn sge(&self) -> (u64, u32, u32) {
        (**self).sge()
    }
    fn local_write(&self) -> bool {
        (**self).local_write()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(resolve_range(.., 10).unwrap(), 0..10);
        assert_eq!(resolve_range(2..=3, 10).unwrap(), 2..4);
        assert!(resolve_range(5..11, 10).is_err());
        #[allow(clippy::reversed_empty_ranges)]
        let r = resolve_range(6..5, 10);
        assert!(r.is_err());
    }
}
