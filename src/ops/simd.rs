//! Run-time CPU feature selection for the element-wise kernels.
//!
//! The crate is built for the baseline x86-64 target (SSE2), so an auto-vectorised loop is
//! 4 floats wide. Hot element-wise loops are compiled a second time inside a
//! `#[target_feature(enable = "avx2,fma")]` function and chosen here at run time. Rust
//! never contracts `a*b + c` into an FMA on its own, so both versions compute the same
//! bits; the parity tests cannot tell which one ran.

/// Whether this CPU has AVX2 and FMA (cached by `std` after the first call).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}
