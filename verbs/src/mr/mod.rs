//! Protection domains, memory regions over owned buffers, and remote-buffer descriptors.

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Bound, Deref, DerefMut, Range, RangeBounds};
use std::ptr::NonNull;
use std::sync::Arc;

use bytes::BytesMut;
use rdma_sys as ffi;

use crate::device::{Context, ContextInner};
use crate::error::{Error, Result};

pub(crate) struct PdInner {
    pub(crate) pd: NonNull<ffi::ibv_pd>,
    pub(crate) ctx: Arc<ContextInner>,
}

ibverbs_thread_safe!(PdInner);

destroy_on_drop!(
    PdInner,
    pd,
    ibv_dealloc_pd,
    "MRs, QPs, SRQs and AHs hold an Arc to the PD"
);

/// A protection domain. Cheap to clone.
#[derive(Clone)]
pub struct ProtectionDomain {
    pub(crate) inner: Arc<PdInner>,
}

impl fmt::Debug for ProtectionDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtectionDomain").finish_non_exhaustive()
    }
}

impl ProtectionDomain {
    pub(crate) fn new(ctx: &Context) -> Result<Self> {
        // SAFETY: the context is open (we hold an Arc to it for the PD's lifetime).
        let pd = unsafe { ffi::ibv_alloc_pd(ctx.as_ptr()) };
        let pd = NonNull::new(pd).ok_or_else(|| Error::last_os("ibv_alloc_pd", ctx.name()))?;
        Ok(Self {
            inner: Arc::new(PdInner {
                pd,
                ctx: ctx.inner.clone(),
            }),
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut ffi::ibv_pd {
        self.inner.pd.as_ptr()
    }

    /// The context this PD belongs to.
    pub fn context(&self) -> Context {
        Context {
            inner: self.inner.ctx.clone(),
        }
    }

    /// Registers an owned buffer. The buffer's bytes must not move while registered, which
    /// [`RegisterBuffer`] guarantees for its implementors.
    pub fn register<B: RegisterBuffer>(&self, buf: B, access: Access) -> Result<MemoryRegion<B>> {
        MemoryRegion::new(self, buf, access)
    }
}

/// Memory-region access flags (`IBV_ACCESS_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Access(pub u32);

impl Access {
    /// The NIC may write (receives, RDMA READ targets, atomic results).
    pub const LOCAL_WRITE: Self = Self(1);
    /// Peers may RDMA WRITE.
    pub const REMOTE_WRITE: Self = Self(2);
    /// Peers may RDMA READ.
    pub const REMOTE_READ: Self = Self(4);
    /// Peers may do atomics.
    pub const REMOTE_ATOMIC: Self = Self(8);
    /// Everything above.
    pub const ALL: Self = Self(1 | 2 | 4 | 8);
    /// Bit-or.
    pub const fn union(self, o: Self) -> Self {
        Self(self.0 | o.0)
    }
    /// Whether all of `o`'s bits are set.
    pub const fn contains(self, o: Self) -> bool {
        self.0 & o.0 == o.0
    }
}

impl std::ops::BitOr for Access {
    type Output = Self;
    fn bitor(self, o: Self) -> Self {
        self.union(o)
    }
}

/// An owned buffer whose bytes stay at a fixed address while the value is moved (heap
/// storage), so the NIC may keep DMA addresses of it.
///
/// # Safety
/// `as_mut_ptr` must return the same pointer, valid for `len` bytes of reads and writes, for
/// as long as the value is not dropped or mutated through other methods, even across moves of
/// the value.
pub unsafe trait RegisterBuffer: Send + 'static {
    /// Start of the bytes.
    fn as_mut_ptr(&mut self) -> *mut u8;
    /// Number of bytes.
    fn len(&self) -> usize;
    /// Whether the buffer is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// SAFETY: a Vec's heap storage does not move when the Vec is moved; we never resize it.
unsafe impl RegisterBuffer for Vec<u8> {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_slice().as_mut_ptr()
    }
    fn len(&self) -> usize {
        Vec::len(self)
    }
}

// SAFETY: a boxed slice's storage does not move when the box is moved.
unsafe impl RegisterBuffer for Box<[u8]> {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        <[u8]>::as_mut_ptr(self)
    }
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

// SAFETY: BytesMut's storage is on the heap and does not move when the handle moves; the MR
// keeps it exclusively (no split/reserve while registered).
unsafe impl RegisterBuffer for BytesMut {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        <[u8]>::as_mut_ptr(self)
    }
    fn len(&self) -> usize {
        BytesMut::len(self)
    }
}

/// A zeroed heap allocation with a chosen alignment (e.g. page-aligned, or 8 bytes for
/// atomics).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: AlignedBuf uniquely owns its allocation, like Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads through &self.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes aligned to `align` (a power of two).
    pub fn new(len: usize, align: usize) -> Result<Self> {
        let layout = Layout::from_size_align(len.max(1), align)
            .map_err(|e| Error::InvalidArgument(format!("aligned buffer {len}/{align}: {e}")))?;
        // SAFETY: the layout has non-zero size.
        let p = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(p).ok_or_else(|| Error::InvalidArgument("out of memory".into()))?;
        Ok(Self { ptr, layout })
    }

    /// Page-aligned (4096) zeroed bytes.
    pub fn page_aligned(len: usize) -> Result<Self> {
        Self::new(len, 4096)
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the allocation holds `layout.size()` initialised (zeroed) bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in Deref, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with exactly this layout, freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.layout.size())
            .field("align", &self.layout.align())
            .finish()
    }
}

// SAFETY: the allocation is fixed for the value's life.
unsafe impl RegisterBuffer for AlignedBuf {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.layout.size()
    }
}

/// A registered memory region that owns its buffer. Deregistered on drop (before the buffer
/// is freed); [`MemoryRegion::into_inner`] hands the buffer back.
pub struct MemoryRegion<B: RegisterBuffer> {
    mr: NonNull<ffi::ibv_mr>,
    // `ManuallyDrop` so `into_inner` can move it out after deregistering.
    buf: std::mem::ManuallyDrop<B>,
    ptr: *mut u8,
    len: usize,
    lkey: u32,
    rkey: u32,
    _pd: Arc<PdInner>,
}

// SAFETY: the MR handle may be used/deregistered from any thread (libibverbs is
// thread-safe); the buffer is Send.
unsafe impl<B: RegisterBuffer> Send for MemoryRegion<B> {}
// SAFETY: &MemoryRegion only gives shared (read) access to the bytes and keys.
unsafe impl<B: RegisterBuffer + Sync> Sync for MemoryRegion<B> {}

impl<B: RegisterBuffer> MemoryRegion<B> {
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
            buf: std::mem::ManuallyDrop::new(buf),
            ptr,
            len,
            lkey,
            rkey,
            _pd: pd.inner.clone(),
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

    /// A descriptor of `range` of this region to hand to a peer for RDMA READ/WRITE/atomics.
    pub fn remote(&self, range: impl RangeBounds<usize>) -> Result<RemoteBuffer> {
        let r = resolve_range(range, self.len)?;
        Ok(RemoteBuffer {
            addr: self.addr() + r.start as u64,
            rkey: self.rkey,
            len: (r.end - r.start) as u32,
        })
    }

    /// A sub-range of this region as an owned local buffer for an operation.
    pub fn slice(self, range: impl RangeBounds<usize>) -> Result<Slice<B>> {
        let range = resolve_range(range, self.len)?;
        Ok(Slice { mr: self, range })
    }

    /// The underlying buffer.
    pub fn get_ref(&self) -> &B {
        &self.buf
    }

    /// Deregisters the region and returns the buffer.
    pub fn into_inner(self) -> B {
        let mut this = std::mem::ManuallyDrop::new(self);
        this.dereg();
        // SAFETY: `this` is never used or dropped again; the buffer is moved out exactly once
        // and the PD Arc is dropped in place.
        unsafe {
            std::ptr::drop_in_place(&mut this._pd);
            std::mem::ManuallyDrop::take(&mut this.buf)
        }
    }

    fn dereg(&mut self) {
        // SAFETY: the MR is valid and deregistered exactly once (Drop and into_inner are
        // mutually exclusive). No posted work request references it any more: operations own
        // the region until their completion arrives.
        let rc = unsafe { ffi::ibv_dereg_mr(self.mr.as_ptr()) };
        if rc != 0 {
            tracing::warn!(rc, "ibv_dereg_mr failed");
        }
    }
}

impl<B: RegisterBuffer> Drop for MemoryRegion<B> {
    fn drop(&mut self) {
        self.dereg();
        // SAFETY: dropped exactly once, after deregistration.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.buf) }
    }
}

impl<B: RegisterBuffer> Deref for MemoryRegion<B> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr/len describe the owned buffer's initialised bytes; no operation is in
        // flight on it (operations take the region by value).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl<B: RegisterBuffer> DerefMut for MemoryRegion<B> {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in Deref, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<B: RegisterBuffer> fmt::Debug for MemoryRegion<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len)
            .field("lkey", &format_args!("{:#x}", self.lkey))
            .field("rkey", &format_args!("{:#x}", self.rkey))
            .finish()
    }
}

fn resolve_range(range: impl RangeBounds<usize>, len: usize) -> Result<Range<usize>> {
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
pub struct Slice<B: RegisterBuffer> {
    mr: MemoryRegion<B>,
    range: Range<usize>,
}

impl<B: RegisterBuffer> Slice<B> {
    /// Gives the whole region back.
    pub fn into_region(self) -> MemoryRegion<B> {
        self.mr
    }
    /// The byte range.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }
}

/// Where a work request's local data lives: an `(addr, len, lkey)` scatter/gather entry that
/// stays valid while the value is alive and not accessed otherwise.
///
/// # Safety
/// `sge` must describe memory registered under `lkey` that stays valid (not freed, not moved)
/// for as long as the value lives, even when the value is moved.
pub unsafe trait LocalBuffer: Send + 'static {
    /// `(addr, length, lkey)`.
    fn sge(&self) -> (u64, u32, u32);
}

/// A [`LocalBuffer`] the NIC may also write into (receives, RDMA READ, atomics).
///
/// # Safety
/// As [`LocalBuffer`], and the memory must be exclusively owned by the value (no shared
/// readers while an operation is in flight) and registered with local write access.
pub unsafe trait LocalBufferMut: LocalBuffer {}

// SAFETY: the region owns its buffer; its bytes are fixed (RegisterBuffer contract) and
// registered under lkey.
unsafe impl<B: RegisterBuffer> LocalBuffer for MemoryRegion<B> {
    fn sge(&self) -> (u64, u32, u32) {
        (self.addr(), self.len as u32, self.lkey)
    }
}
// SAFETY: the region is owned exclusively by the operation while in flight.
unsafe impl<B: RegisterBuffer> LocalBufferMut for MemoryRegion<B> {}

// SAFETY: as for MemoryRegion; the range was checked against the region's length.
unsafe impl<B: RegisterBuffer> LocalBuffer for Slice<B> {
    fn sge(&self) -> (u64, u32, u32) {
        (
            self.mr.addr() + self.range.start as u64,
            (self.range.end - self.range.start) as u32,
            self.mr.lkey,
        )
    }
}
// SAFETY: the slice owns its region exclusively.
unsafe impl<B: RegisterBuffer> LocalBufferMut for Slice<B> {}

// SAFETY: the Arc keeps the region (and its bytes) alive; shared owners only read, and the NIC
// only reads through a plain `LocalBuffer` (send / RDMA WRITE sources).
unsafe impl<B: RegisterBuffer + Sync> LocalBuffer for Arc<MemoryRegion<B>> {
    fn sge(&self) -> (u64, u32, u32) {
        (**self).sge()
    }
}

// SAFETY: the empty buffer names no memory (length 0: posted without a scatter entry).
unsafe impl LocalBuffer for () {
    fn sge(&self) -> (u64, u32, u32) {
        (0, 0, 0)
    }
}
// SAFETY: nothing can be written into zero bytes.
unsafe impl LocalBufferMut for () {}

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

    #[test]
    fn ranges() {
        assert_eq!(resolve_range(.., 10).unwrap(), 0..10);
        assert_eq!(resolve_range(2..=3, 10).unwrap(), 2..4);
        assert!(resolve_range(5..11, 10).is_err());
        #[allow(clippy::reversed_empty_ranges)]
        let r = resolve_range(6..5, 10);
        assert!(r.is_err());
    }

    #[test]
    fn aligned_buf() {
        let mut b = AlignedBuf::new(100, 64).unwrap();
        assert_eq!(b.as_ptr() as usize % 64, 0);
        assert_eq!(b.len(), 100);
        assert!(b.iter().all(|&x| x == 0));
        b[99] = 7;
        assert_eq!(b[99], 7);
        assert!(AlignedBuf::new(8, 3).is_err());
    }
}
