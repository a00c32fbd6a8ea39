//! Heap buffers with a chosen alignment, for tensor data and expert slots.
//!
//! Tensor offsets in GGUF are multiples of the file's alignment (32 by default), so a tensor read
//! into a buffer aligned to at least that keeps its f32 and f16 elements naturally aligned.
//! O_DIRECT reads need 4096-byte alignment, which the slot pool will request.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Buffers of at least this size are mapped from the kernel rather than taken from the heap.
const MMAP_THRESHOLD: usize = 1 << 20;
/// The page size that anonymous mappings are aligned to (4096 on every Linux target MER builds
/// for; larger pages only make the alignment stronger).
const PAGE_SIZE: usize = 4096;
/// The transparent huge page size on x86-64 and on aarch64 with 4 KiB pages.
const HUGE_PAGE_SIZE: usize = 2 << 20;

/// An owned, zero-initialised byte buffer whose start is aligned to `align` bytes.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>, so moving it to or sharing
// it between threads is as safe as for Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[u8].
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes aligned to `align` (a power of two). Returns `None` when the
    /// allocation fails or the layout is invalid.
    pub fn new(len: usize, align: usize) -> Option<Self> {
        // A zero-sized allocation is undefined for the global allocator, so allocate one block.
        let layout = Layout::from_size_align(len.max(align), align).ok()?;
        if layout.size() >= MMAP_THRESHOLD && align <= PAGE_SIZE {
            return Self::mapped(len, layout);
        }
        // SAFETY: the layout has a non-zero size (at least `align`, which is >= 1).
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        Some(AlignedBuf { ptr, len, layout })
    }

    /// Maps anonymous memory: page-aligned and zero-filled by the kernel on first touch, so an
    /// unused slot costs no RAM. (`alloc_zeroed` with an alignment above 16 writes every byte.)
    ///
    /// A mapping of at least one huge page starts on a huge-page boundary and requests
    /// transparent huge pages: weights are read in long streams, and 4 KiB pages would cost a
    /// TLB miss every 4 KiB. The kernel ignores the request where huge pages are off.
    fn mapped(len: usize, layout: Layout) -> Option<Self> {
        let size = layout.size();
        let huge = size >= HUGE_PAGE_SIZE;
        let reserve = if huge { size + HUGE_PAGE_SIZE } else { size };
        // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
        // result is checked against MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        if !huge {
            return Some(AlignedBuf { ptr: NonNull::new(base.cast())?, len, layout });
        }

        // Keep `size` bytes from the first huge-page boundary and unmap the rest.
        let start = (base as usize).next_multiple_of(HUGE_PAGE_SIZE);
        let head = start - base as usize;
        let tail = reserve - head - size.next_multiple_of(PAGE_SIZE);
        // SAFETY: both ranges lie inside the mapping made above, are page-aligned (`base`,
        // `start` and `size` rounded up are multiples of PAGE_SIZE) and are not used afterwards.
        // madvise only advises, and a failure leaves ordinary pages.
        unsafe {
            if head > 0 {
                libc::munmap(base, head);
            }
            if tail > 0 {
                libc::munmap((start + size.next_multiple_of(PAGE_SIZE)) as *mut libc::c_void, tail);
            }
            libc::madvise(start as *mut libc::c_void, size, libc::MADV_HUGEPAGE);
        }
        Some(AlignedBuf { ptr: NonNull::new(start as *mut u8)?, len, layout })
    }

    /// Returns the buffer's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to an allocation of at least `len` initialised (zeroed) bytes that
        // lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.layout.size() >= MMAP_THRESHOLD && self.layout.align() <= PAGE_SIZE {
            // SAFETY: `ptr` was returned by `mmap` for exactly `layout.size()` bytes.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.layout.size()) };
        } else {
            // SAFETY: `ptr` was returned by `alloc_zeroed` with exactly this layout.
            unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
        }
    }
}
