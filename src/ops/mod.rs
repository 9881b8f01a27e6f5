//! The engine's operations: explicit forward and backward passes on shapes for the few
//! operations a DenseNet needs (convolution, BN-ReLU, the fused BN-ReLU-convolution,
//! pooling, linear, loss, dropout). Each op is a pair of free functions, forward then
//! backward, with arguments in the order outputs, inputs, weights, sizes (llm.c's
//! convention). They choose an algorithm for a shape and leave the inner loops to
//! [`crate::kernels`].
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

pub mod bf16;
pub mod conv;
pub mod dropout;
pub mod fused;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod pool;
pub mod route;

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
