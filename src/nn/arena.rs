//! One allocation per workspace, carved into named regions.
//!
//! A memory plan decides how large every activation buffer is; a workspace then takes one
//! zeroed allocation ([`Arena`]) and hands out each buffer as a [`Buf`], a view of its own
//! region. The regions are listed in a table ([`Region`]: name, offset, bytes) that
//! `densenet summary MODEL --plan` prints, so where every activation lives can be read off
//! rather than inferred from twenty separate vectors.
//!
//! The same carving function runs twice ([`carve`]): once without memory, to lay out the
//! regions, then over the allocation, to hand out the views; the table and the views
//! therefore cannot disagree. Regions start on 64-byte boundaries (a cache line; whole
//! vectors for AVX-512).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// Alignment of every region, in bytes.
pub const REGION_ALIGN: usize = 64;

/// One named region of a workspace's allocation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Region {
    /// What lives there, e.g. `block2.feats` or `scratch.b`.
    pub name: String,
    /// Byte offset from the start of the allocation.
    pub offset: usize,
    /// Bytes it holds (without the padding to the next region).
    pub bytes: usize,
}

/// Element types a region may hold: plain data for which all-zero bytes are a valid value.
///
/// # Safety
/// Implementors must be valid when zero-initialised and have no drop glue.
pub unsafe trait Zeroable: Copy {}
// SAFETY: all-zero bits are 0 for every one of these.
unsafe impl Zeroable for f32 {}
unsafe impl Zeroable for u32 {}
unsafe impl Zeroable for (f64, f64) {}

/// A view of one region: derefs to `[T]` like the `Vec` it replaces. Not `Clone`: each
/// region has exactly one view, so the borrow rules on the views are the borrow rules on
/// the memory.
pub struct Buf<T> {
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: a Buf is the only handle to its region (see `carve`); sending or sharing it is
// sending or sharing a `&mut [T]` / `&[T]`.
unsafe impl<T: Send> Send for Buf<T> {}
unsafe impl<T: Sync> Sync for Buf<T> {}

impl<T> Default for Buf<T> {
    fn default() -> Self {
        Buf {
            ptr: NonNull::dangling(),
            len: 0,
        }
    }
}

impl<T> std::ops::Deref for Buf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` is dangling only with `len` 0; otherwise it points at `len`
        // initialised (zeroed at allocation) elements of a live arena that no other view
        // overlaps.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> std::ops::DerefMut for Buf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> std::fmt::Debug for Buf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buf[{}]", self.len)
    }
}

/// The one zeroed allocation behind a workspace's [`Buf`]s. It must outlive them: a
/// workspace holds both, and drops nothing but the arena itself.
pub struct Arena {
    ptr: NonNull<u8>,
    bytes: usize,
    /// Whether `ptr` is a mapping of its own (see [`huge`]), not the allocator's.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    mapped: bool,
}

// SAFETY: the arena is only memory; the views carry the access rules.
unsafe impl Send for Arena {}
unsafe impl Sync for Arena {}

impl Default for Arena {
    fn default() -> Self {
        Arena::zeroed(0)
    }
}

impl Arena {
    fn zeroed(bytes: usize) -> Self {
        if bytes == 0 {
            return Arena {
                ptr: NonNull::dangling(),
                bytes: 0,
                mapped: false,
            };
        }
        #[cfg(target_os = "linux")]
        if let Some(ptr) = huge::map(bytes) {
            return Arena {
                ptr,
                bytes,
                mapped: true,
            };
        }
        let layout = Layout::from_size_align(bytes, REGION_ALIGN).expect("arena layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout)
        };
        Arena {
            ptr,
            bytes,
            mapped: false,
        }
    }

    /// Bytes allocated (regions and the padding between them).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        #[cfg(target_os = "linux")]
        if self.mapped {
            huge::unmap(self.ptr, self.bytes);
            return;
        }
        // SAFETY: allocated in `zeroed` with this size and alignment.
        unsafe {
            dealloc(
                self.ptr.as_ptr(),
                Layout::from_size_align_unchecked(self.bytes, REGION_ALIGN),
            )
        }
    }
}

/// Arenas of [`huge::MIN_BYTES`] or more on Linux: an anonymous mapping of their own,
/// advised to use transparent huge pages (2 MiB).
///
/// Why: a dense block's buffer is `[C][N·H·W]`, so a kernel that walks a tile of
/// positions touches one 4 KiB page per channel row (196 KiB apart at densenet121's
/// 56×56, batch 16): hundreds of pages per tile, more than the TLB holds, and the
/// hardware prefetchers stop at every 4 KiB boundary. With 2 MiB pages the whole
/// workspace (550 MiB) fits the second-level TLB. And `alloc_zeroed` with the regions'
/// 64-byte alignment writes every byte once (it is `posix_memalign` + `memset`), while a
/// fresh mapping is zero and only pages that a pass touches become resident.
#[cfg(target_os = "linux")]
mod huge {
    use std::ptr::NonNull;

    /// Below this an arena comes from the global allocator.
    pub const MIN_BYTES: usize = 4 << 20;

    /// A zeroed mapping of `bytes`, advised for huge pages (the advice may be refused:
    /// `transparent_hugepage` set to `never`); `None` for small sizes or a failed `mmap`.
    pub fn map(bytes: usize) -> Option<NonNull<u8>> {
        if bytes < MIN_BYTES {
            return None;
        }
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: the range is the mapping just made. The advice is only a hint: on
        // failure the pages stay 4 KiB.
        unsafe { libc::madvise(ptr, bytes, libc::MADV_HUGEPAGE) };
        NonNull::new(ptr as *mut u8)
    }

    /// Unmaps what [`map`] returned for the same `bytes`.
    pub fn unmap(ptr: NonNull<u8>, bytes: usize) {
        // SAFETY: `map` made this mapping of `bytes`, and the arena that owned it is
        // being dropped with its views.
        unsafe { libc::munmap(ptr.as_ptr() as *mut libc::c_void, bytes) };
    }
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Arena({} bytes)", self.bytes)
    }
}

/// Hands out consecutive regions: with no memory behind it (laying out), or over an
/// arena (the views).
pub struct Carver {
    base: Option<NonNull<u8>>,
    pos: usize,
    regions: Vec<Region>,
}

impl Carver {
    /// The next region, `len` elements of `T`, named `name` in the table. Empty regions
    /// take no space and are left out of the table.
    pub fn take<T: Zeroable>(&mut self, name: impl std::fmt::Display, len: usize) -> Buf<T> {
        if len == 0 {
            return Buf::default();
        }
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .expect("region size overflows");
        debug_assert!(std::mem::align_of::<T>() <= REGION_ALIGN);
        let offset = self.pos;
        self.pos = (offset + bytes)
            .checked_next_multiple_of(REGION_ALIGN)
            .expect("arena size overflows");
        self.regions.push(Region {
            name: name.to_string(),
            offset,
            bytes,
        });
        match self.base {
            // SAFETY: the layout pass gave the arena `pos` bytes for exactly this sequence
            // of regions (checked in `carve`), so `offset + bytes` lies inside it, and no
            // other view covers these bytes.
            Some(base) => Buf {
                ptr: unsafe { NonNull::new_unchecked(base.as_ptr().add(offset) as *mut T) },
                len,
            },
            None => Buf::default(),
        }
    }
}

/// A workspace's one allocation and its region table.
#[derive(Debug, Default)]
pub struct Allocation {
    /// Where each buffer lives.
    pub regions: Vec<Region>,
    /// The memory (dropped after the views that its owner declares before it).
    arena: Arena,
}

impl Allocation {
    /// Bytes allocated (regions and the padding between them).
    pub fn bytes(&self) -> usize {
        self.arena.bytes()
    }
}

/// Lays out the regions that `f` takes, allocates them in one zeroed arena and runs `f`
/// again over it. Returns the allocation and what the second run of `f` returned (its
/// views). `f` must take the same regions both times.
pub fn carve<W>(f: impl FnMut(&mut Carver) -> W) -> (Allocation, W) {
    let (arena, regions, w) = carve_arena(f);
    (Allocation { regions, arena }, w)
}

fn carve_arena<W>(mut f: impl FnMut(&mut Carver) -> W) -> (Arena, Vec<Region>, W) {
    let regions = layout(&mut f);
    let bytes = regions
        .last()
        .map_or(0, |r| (r.offset + r.bytes).next_multiple_of(REGION_ALIGN));
    let arena = Arena::zeroed(bytes);
    let mut live = Carver {
        base: Some(arena.ptr),
        pos: 0,
        regions: Vec::with_capacity(regions.len()),
    };
    let w = f(&mut live);
    assert!(
        live.regions == regions && live.pos == bytes,
        "the carving function took other regions the second time"
    );
    (arena, live.regions, w)
}

/// The region table of `f` without allocating anything.
pub fn layout<W>(f: impl FnOnce(&mut Carver) -> W) -> Vec<Region> {
    let mut dry = Carver {
        base: None,
        pos: 0,
        regions: vec![],
    };
    drop(f(&mut dry));
    dry.regions
}

/// Bytes an arena for `regions` takes: the end of the last one, padded.
pub fn total_bytes(regions: &[Region]) -> usize {
    regions
        .last()
        .map_or(0, |r| (r.offset + r.bytes).next_multiple_of(REGION_ALIGN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_disjoint_aligned_and_zeroed() {
        let (arena, regions, (mut a, b, c)) = carve_arena(|c| {
            (
                c.take::<f32>("a", 3),
                c.take::<u32>("b", 17),
                c.take::<(f64, f64)>("c", 5),
            )
        });
        assert_eq!(
            regions.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        for w in regions.windows(2) {
            assert!(w[0].offset + w[0].bytes <= w[1].offset);
        }
        assert!(regions.iter().all(|r| r.offset % REGION_ALIGN == 0));
        assert_eq!(arena.bytes(), total_bytes(&regions));
        assert_eq!(arena.bytes(), 64 + 128 + 128);
        assert!(b.iter().all(|&v| v == 0) && c.iter().all(|&v| v == (0.0, 0.0)));
        a.fill(1.5);
        assert_eq!(&a[..], &[1.5; 3]);
        assert!(b.iter().all(|&v| v == 0), "writing a reached b");
        // an empty region takes no space and no line in the table
        assert_eq!(layout(|c| c.take::<f32>("empty", 0)), vec![]);
    }

    /// An arena large enough for its own mapping: zeroed, every region writable to its
    /// last element, and (on Linux) a mapping of its own, which drop unmaps.
    #[test]
    fn large_arena_is_mapped_zeroed_and_writable() {
        let n = (5 << 20) / 4;
        let (arena, _, (mut a, mut b)) =
            carve_arena(|c| (c.take::<f32>("a", n), c.take::<f32>("b", 7)));
        assert!(arena.bytes() >= 4 * n);
        #[cfg(target_os = "linux")]
        assert!(
            arena.mapped,
            "{} bytes came from the allocator",
            arena.bytes()
        );
        assert!(a.iter().all(|&v| v == 0.0) && b.iter().all(|&v| v == 0.0));
        a[n - 1] = 2.0;
        b.fill(3.0);
        assert_eq!((a[0], a[n - 1], b[6]), (0.0, 2.0, 3.0));
    }
}
