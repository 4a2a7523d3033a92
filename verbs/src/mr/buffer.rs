//! Owned buffers that may be registered: their bytes stay put while the value moves.

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use bytes::BytesMut;

use crate::error::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::*;

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
