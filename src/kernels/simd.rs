//! The vector types the direct kernels are written over, so that each kernel is one
//! source compiled once per instruction set: [`Avx2`] (8 lanes, 16 registers) and
//! [`Avx512`] (16 lanes, 32 registers). The AVX-512 instance of a kernel is the same code
//! as the AVX2 one, which every x86-64 machine of this project runs and tests; only the
//! methods below differ, and each is one or two instructions.
//!
//! **How it compiles.** Every method is `#[inline(always)]` and `unsafe`: it may only be
//! reached from a `#[target_feature]` function of its instruction set (an entry of its
//! [`super::Kernels`] table). The generic kernel is inlined into that entry, and the
//! intrinsics inside the methods are inlined there in turn, where the features are on.
//!
//! Why not the `pulp` crate (which `gemm` uses): its dispatch hands a token to a closure,
//! and our kernels are entries of a function table chosen once at start-up; a trait of
//! seven methods is all the kernels need.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// A vector of `LANES` f32 lanes of one instruction set.
///
/// # Safety
/// Every method needs the CPU features of its implementation: call them only from code
/// compiled with those features enabled, on a CPU that has them.
pub(crate) trait F32x: Copy {
    /// f32 lanes per vector.
    const LANES: usize;
    /// All lanes zero.
    unsafe fn zero() -> Self;
    /// Every lane `*p` (a broadcast load).
    unsafe fn splat(p: *const f32) -> Self;
    /// `LANES` floats from `p` (unaligned).
    unsafe fn load(p: *const f32) -> Self;
    /// `LANES` floats to `p` (unaligned).
    unsafe fn store(self, p: *mut f32);
    /// `self·b + c`, fused (one rounding).
    unsafe fn mul_add(self, b: Self, c: Self) -> Self;
    /// `self + b`.
    unsafe fn add(self, b: Self) -> Self;
    /// `self − b`.
    unsafe fn sub(self, b: Self) -> Self;
    /// The sum of the lanes.
    unsafe fn sum(self) -> f32;
    /// The lane sums of eight vectors at once (`out[j]` = sum of `v[j]`), cheaper than
    /// eight [`F32x::sum`]s: the 1×1 weight gradient's register block ends in eight.
    unsafe fn sums8(v: [Self; 8]) -> [f32; 8];
}

/// AVX2 with FMA: one `__m256`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Avx2(__m256);

#[cfg(target_arch = "x86_64")]
impl F32x for Avx2 {
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Avx2(_mm256_setzero_ps())
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> Self {
        Avx2(_mm256_broadcast_ss(&*p))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Avx2(_mm256_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm256_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        Avx2(_mm256_fmadd_ps(self.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        Avx2(_mm256_add_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        Avx2(_mm256_sub_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn sum(self) -> f32 {
        let q = _mm_add_ps(
            _mm256_castps256_ps128(self.0),
            _mm256_extractf128_ps::<1>(self.0),
        );
        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps::<1>(q, q)))
    }
    #[inline(always)]
    unsafe fn sums8(v: [Self; 8]) -> [f32; 8] {
        let mut s = [0f32; 8];
        _mm_storeu_ps(s.as_mut_ptr(), sums4(v[0].0, v[1].0, v[2].0, v[3].0));
        _mm_storeu_ps(s.as_mut_ptr().add(4), sums4(v[4].0, v[5].0, v[6].0, v[7].0));
        s
    }
}

/// The lane sums of four AVX vectors: two rounds of in-lane hadd leave
/// `[s0 s1 s2 s3 | s0' s1' s2' s3']` (the low and high 128-bit halves' sums), and adding
/// the halves finishes them. (A function, not a closure: closures outside a
/// `#[target_feature]` function do not inherit its features.)
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn sums4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
    let h = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h))
}

/// AVX-512 (F only: Skylake-SP, Ice Lake, Sapphire Rapids, Zen 4): one `__m512`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Avx512(__m512);

#[cfg(target_arch = "x86_64")]
impl Avx512 {
    /// The sum of the two 256-bit halves (AVX512F has no `extractf32x8`; the f64 form
    /// moves the same bits).
    #[inline(always)]
    unsafe fn halves(self) -> Avx2 {
        let hi = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(self.0));
        Avx2(_mm256_add_ps(
            _mm512_castps512_ps256(self.0),
            _mm256_castpd_ps(hi),
        ))
    }
}

#[cfg(target_arch = "x86_64")]
impl F32x for Avx512 {
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Avx512(_mm512_setzero_ps())
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> Self {
        // folds into the FMA as an embedded broadcast ({1to16})
        Avx512(_mm512_set1_ps(*p))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Avx512(_mm512_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm512_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        Avx512(_mm512_fmadd_ps(self.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        Avx512(_mm512_add_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        Avx512(_mm512_sub_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn sum(self) -> f32 {
        self.halves().sum()
    }
    #[inline(always)]
    unsafe fn sums8(v: [Self; 8]) -> [f32; 8] {
        let mut h = [Avx2::zero(); 8];
        for (h, v) in h.iter_mut().zip(v) {
            *h = v.halves();
        }
        Avx2::sums8(h)
    }
}

/// Defines a generic kernel's two table entries, `$avx2` and `$avx512`: `$generic`
/// instantiated with [`Avx2`] and [`Avx512`] inside `#[target_feature]` functions of the
/// given parameters (and const generic, if any), so that it inlines there and its
/// intrinsics compile for that instruction set. Constants that differ between the two
/// (a register block's size in vectors and positions) go in brackets after the name,
/// AVX2's then AVX-512's: `kernel [2, 6; 2, 12] => …` instantiates `kernel::<Avx2, 2, 6>`
/// and `kernel::<Avx512, 2, 12>`, before the const generic if there is one.
macro_rules! simd_entries {
    ($generic:ident $(<const $c:ident: usize>)? $([$($a2:tt),+ ; $($a5:tt),+])?
        => $avx2:ident, $avx512:ident ($($arg:ident: $ty:ty),* $(,)?)) => {
        #[doc = concat!("[`", stringify!($generic), "`] in AVX2+FMA (an entry of the `avx2` table).")]
        ///
        /// # Safety
        #[doc = concat!("As [`", stringify!($generic), "`]; the CPU must have AVX2 and FMA.")]
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        pub(crate) unsafe fn $avx2 $(<const $c: usize>)? ($($arg: $ty),*) {
            $generic::<$crate::kernels::simd::Avx2 $($(, $a2)+)? $(, $c)?>($($arg),*)
        }

        #[doc = concat!("[`", stringify!($generic), "`] in AVX-512F (an entry of the `avx512` table).")]
        ///
        /// # Safety
        #[doc = concat!("As [`", stringify!($generic), "`]; the CPU must have AVX-512F, AVX2 and FMA.")]
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        pub(crate) unsafe fn $avx512 $(<const $c: usize>)? ($($arg: $ty),*) {
            $generic::<$crate::kernels::simd::Avx512 $($(, $a5)+)? $(, $c)?>($($arg),*)
        }
    };
}
pub(crate) use simd_entries;
