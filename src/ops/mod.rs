//! The engine's operations: explicit forward and backward passes for the few operations a
//! DenseNet needs. Each op is a pair of free functions, forward then backward, with
//! arguments in the order outputs, inputs, weights, sizes (llm.c's convention).
//!
//! **Layout.** Activations are stored channel-major, `[C][N·H·W]` ("CNHW"): channel c of
//! the whole batch is one contiguous row of `len = N·H·W` floats. Then the first m channels
//! of a dense block are one contiguous prefix (concatenation costs nothing: a layer writes
//! its k channels after the prefix), a 1×1 convolution is one GEMM `W[Cout×Cin]·X[Cin×len]`,
//! and batch norm works on contiguous rows. Inputs and outputs are converted from and to
//! PyTorch's NCHW at the edges ([`nchw_to_cnhw`], [`cnhw_to_nchw`]).
//!
//! Backward functions *accumulate* into parameter gradients (`dw += ...`) so a single
//! zeroing per step clears everything; where they write an activation gradient, the doc
//! says whether they overwrite or accumulate.

pub mod conv;
pub mod conv3x3;
pub mod dropout;
pub mod fused;
pub mod gemm;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod pool;
#[cfg(test)]
mod shape_bench;
pub(crate) mod simd;

/// Converts `[N][C][HW]` to `[C][N][HW]`.
pub fn nchw_to_cnhw(out: &mut [f32], x: &[f32], n: usize, c: usize, hw: usize) {
    assert_eq!(x.len(), n * c * hw);
    assert_eq!(out.len(), n * c * hw);
    for ni in 0..n {
        for ci in 0..c {
            let src = &x[(ni * c + ci) * hw..][..hw];
            out[(ci * n + ni) * hw..][..hw].copy_from_slice(src);
        }
    }
}

/// Converts `[C][N][HW]` to `[N][C][HW]`.
pub fn cnhw_to_nchw(out: &mut [f32], x: &[f32], n: usize, c: usize, hw: usize) {
    assert_eq!(x.len(), n * c * hw);
    assert_eq!(out.len(), n * c * hw);
    for ci in 0..c {
        for ni in 0..n {
            let src = &x[(ci * n + ni) * hw..][..hw];
            out[(ni * c + ci) * hw..][..hw].copy_from_slice(src);
        }
    }
}

/// Converts the first `n·c·hw` floats of `x` from `[C][N][HW]` to `[N][C][HW]` in place
/// (through a temporary: used once per backward pass, for the input gradient).
pub fn cnhw_to_nchw_in_place(x: &mut [f32], n: usize, c: usize, hw: usize) {
    let x = &mut x[..n * c * hw];
    let mut out = vec![0.0; x.len()];
    cnhw_to_nchw(&mut out, x, n, c, hw);
    x.copy_from_slice(&out);
}

/// Work below this many floats runs on the calling thread: rayon's fork-join costs a few
/// microseconds, more than a small channel loop.
pub(crate) const PAR_MIN: usize = 1 << 14;

/// Runs `f` with a per-thread scratch vector of `len` elements, borrowed from `slot` and
/// given back afterwards, so buffers that every step needs again are allocated on first
/// use only (the training step allocates nothing after its first run: `tests/alloc.rs`).
/// The contents are whatever the previous user left. A nested use of the same slot on
/// one thread finds it empty and allocates its own.
pub(crate) fn with_scratch<T: Clone + Default, R>(
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
pub(crate) struct SyncPtr(pub(crate) *mut f32);
// SAFETY: only used for writes to disjoint ranges; each user states which.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
