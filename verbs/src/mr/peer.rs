//! The bytes of a region peers may write: reached by copy, through atomic loads and stores.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

use super::buffer::RegisterBuffer;
use super::region::{MemoryRegion, PeerWritable};
use crate::error::{Error, Result};

/// Accessors of a region peers may write.
///
/// A peer's RDMA WRITE or atomic may land at any time, so the bytes are never handed out as
/// references. This program reads and writes them only with relaxed atomic loads and stores,
/// the way one treats memory shared with another process: a device write racing with them
/// is not a data race in this program, and the copy merely sees some mix of old and new bytes
/// (a peer's write is not atomic as a whole; an 8-byte aligned remote atomic is). Ordering
/// comes from the protocol: once a completion tells you the peer is done (e.g. the receive
/// of its message sent after its last WRITE, on the same RC QP), a copy sees all its bytes.
impl<B: RegisterBuffer> MemoryRegion<B, PeerWritable> {
    fn range_at(&self, offset: usize, len: usize) -> Result<Range<usize>> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(offset..end),
            _ => Err(Error::InvalidArgument(format!(
                "{len} bytes at offset {offset} outside a region of {} bytes",
                self.len
            ))),
        }
    }

    /// Copies `dst.len()` bytes starting at `offset` out of the region.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        let r = self.range_at(offset, dst.len())?;
        // SAFETY: the range lies inside the owned, registered buffer (checked above), which is
        // valid for reads and writes while the region lives. This program accesses these
        // bytes only atomically while they are registered: `&self` methods load, stores need
        // `&mut self`, and `as_slice` callers promise no concurrent write.
        unsafe { load_bytes(self.ptr.add(r.start), dst) };
        Ok(())
    }

    /// The whole region copied out.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.len];
        self.read_at(0, &mut v)
            .expect("the whole region is in range");
        v
    }

    /// Copies `src` into the region at `offset`. A peer writing the same bytes at the same
    /// time leaves some mix of both.
    pub fn write_at(&mut self, offset: usize, src: &[u8]) -> Result<()> {
        let r = self.range_at(offset, src.len())?;
        // SAFETY: as in `read_at`; `&mut self` excludes every other access by this program,
        // so no load of a different size races with these stores.
        unsafe { store_bytes(self.ptr.add(r.start), src) };
        Ok(())
    }

    /// The 8-byte word at `offset` (host byte order, as remote atomics leave it), loaded
    /// atomically: the way to read the target of a peer's compare-and-swap or fetch-and-add.
    /// `addr() + offset` must be 8-byte aligned.
    pub fn read_u64_at(&self, offset: usize) -> Result<u64> {
        let r = self.range_at(offset, 8)?;
        // SAFETY: in range (checked above); the alignment is checked below before the
        // pointer is used as a u64.
        let p = unsafe { self.ptr.add(r.start) }.cast::<u64>();
        if !p.is_aligned() {
            return Err(Error::InvalidArgument(format!(
                "offset {offset}: address {:#x} is not 8-byte aligned",
                p as usize
            )));
        }
        // SAFETY: `p` is aligned, in range and valid for the region's life; this program
        // accesses the bytes only atomically while they are registered (see `read_at`), and
        // mixed-size atomic loads may race with each other.
        Ok(unsafe { AtomicU64::from_ptr(p) }.load(Relaxed))
    }

    /// The bytes as a slice.
    ///
    /// # Safety
    /// While the returned slice lives, no peer may write the region: your protocol must
    /// guarantee that no RDMA WRITE or atomic targeting it is in flight or will be issued
    /// (e.g. the peer announced its last write and waits to be told before writing again),
    /// and that the writes before that point are visible (their completion or a later
    /// message on the same RC QP has been received).
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the caller guarantees no peer writes while the slice lives; this program
        // only reads through `&self` (atomic loads racing with these plain reads are fine).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The bytes as a mutable slice.
    ///
    /// # Safety
    /// As [`as_slice`](Self::as_slice): no peer may write the region while the slice lives.
    /// (Peers reading it meanwhile may see partly updated bytes, which is their concern.)
    pub unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the caller guarantees no peer writes; `&mut self` excludes this program's
        // other accesses.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// Copies `dst.len()` bytes from `src` with relaxed atomic loads: 8 bytes at a time where
/// aligned, else one byte.
///
/// # Safety
/// `src` must be valid for reads and writes of `dst.len()` bytes, and this program must not
/// write them non-atomically, or atomically with another access size, while this runs.
unsafe fn load_bytes(src: *mut u8, dst: &mut [u8]) {
    let mut i = 0;
    while i < dst.len() {
        // SAFETY: `i < dst.len()`, so in range.
        let p = unsafe { src.add(i) };
        if dst.len() - i >= 8 && p.cast::<u64>().is_aligned() {
            // SAFETY: aligned, 8 bytes in range; concurrent accesses are atomic (contract).
            let w = unsafe { AtomicU64::from_ptr(p.cast()) }.load(Relaxed);
            dst[i..i + 8].copy_from_slice(&w.to_ne_bytes());
            i += 8;
        } else {
            // SAFETY: in range; a byte is always aligned; concurrent accesses are atomic.
            dst[i] = unsafe { AtomicU8::from_ptr(p) }.load(Relaxed);
            i += 1;
        }
    }
}

/// Copies `src` to `dst` with relaxed atomic stores (same chunking as [`load_bytes`]).
///
/// # Safety
/// `dst` must be valid for reads and writes of `src.len()` bytes, and nothing else in this
/// program may access them while this runs.
unsafe fn store_bytes(dst: *mut u8, src: &[u8]) {
    let mut i = 0;
    while i < src.len() {
        // SAFETY: `i < src.len()`, so in range.
        let p = unsafe { dst.add(i) };
        if src.len() - i >= 8 && p.cast::<u64>().is_aligned() {
            let w = u64::from_ne_bytes(src[i..i + 8].try_into().expect("8 bytes"));
            // SAFETY: aligned, 8 bytes in range, no other access by this program (contract).
            unsafe { AtomicU64::from_ptr(p.cast()) }.store(w, Relaxed);
            i += 8;
        } else {
            // SAFETY: in range, byte-aligned, no other access by this program (contract).
            unsafe { AtomicU8::from_ptr(p) }.store(src[i], Relaxed);
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mr::buffer::AlignedBuf;

    #[test]
    fn atomic_copies_cover_every_alignment_and_length() {
        let mut mem = AlignedBuf::new(64, 8).unwrap();
        let pattern: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        for start in 0..9 {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 40] {
                mem.fill(0);
                let src = &pattern[..len];
                // SAFETY: start + len <= 49 < 64 bytes of `mem`, which nothing else touches.
                unsafe { store_bytes(mem.as_mut_ptr().add(start), src) };
                assert_eq!(&mem[start..start + len], src, "store {start}+{len}");
                assert!(mem[..start]
                    .iter()
                    .chain(&mem[start + len..])
                    .all(|&b| b == 0));
                let mut out = vec![0xff; len];
                // SAFETY: as above.
                unsafe { load_bytes(mem.as_mut_ptr().add(start), &mut out) };
                assert_eq!(out, src, "load {start}+{len}");
            }
        }
    }
}
