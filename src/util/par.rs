//! Small helpers for the parallel loops of the kernels and operations.

use rayon::iter::{IndexedParallelIterator, ParallelIterator};

/// Work below this many floats runs on the calling thread: rayon's fork-join costs a few
/// microseconds, more than a small channel loop.
pub const PAR_MIN: usize = 1 << 14;

/// Sets every element of `buf` to `v`, split over the threads from [`PAR_MIN`] elements
/// on: the per-step zeroing of densenet121's block gradients (93 MB at batch 16) and of
/// its parameter gradients (32 MB) took ~7 ms of a training step on one core (`perf`),
/// the other idle.
pub fn fill<T: Copy + Send + Sync>(buf: &mut [T], v: T) {
    use rayon::slice::ParallelSliceMut;
    if buf.len() >= PAR_MIN {
        buf.par_chunks_mut(PAR_MIN).for_each(|c| c.fill(v));
    } else {
        buf.fill(v);
    }
}

/// Runs `work` on every channel (row) of `it`: in parallel from [`PAR_MIN`] floats of
/// work on, else as one piece on the calling thread.
pub fn per_channel<I: IndexedParallelIterator>(
    it: I,
    floats: usize,
    work: impl Fn(I::Item) + Sync + Send,
) {
    if floats >= PAR_MIN {
        it.for_each(work);
    } else {
        let c = it.len().max(1);
        it.with_min_len(c).for_each(work);
    }
}

/// Runs `f` with a per-thread scratch vector of `len` elements, borrowed from `slot` and
/// given back afterwards, so buffers that every step needs again are allocated on first
/// use only (the training step allocates nothing after its first run: `tests/alloc.rs`).
/// The contents are whatever the previous user left. A nested use of the same slot on
/// one thread finds it empty and allocates its own.
pub fn with_scratch<T: Clone + Default, R>(
    slot: &'static std::thread::LocalKey<std::cell::RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let mut v = slot.with(|c| std::mem::take(&mut *c.borrow_mut()));
    if v.len() < len {
        v.resize(len, T::default());
    }
    let r = f(&mut v[..len]);
    slot.with(|c| {
        let mut c = c.borrow_mut();
        if c.capacity() < v.capacity() {
            *c = v;
        }
    });
    r
}

/// A pointer that may cross threads, for tasks that each write their own disjoint part of
/// one buffer (columns of a matrix, positions of every row).
#[derive(Clone, Copy)]
pub struct SyncPtr(pub *mut f32);
// SAFETY: only used for writes to disjoint ranges; each user states which.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    pub fn get(self) -> *mut f32 {
        self.0
    }
}
