//! The bf16 products and the tile former on AVX512-BF16 (`vdpbf16ps`, `vcvtne2ps2bf16`).

use std::arch::x86_64::*;

/// Output rows per register block: 4 rows × 4 vectors of 16 positions are 16
/// accumulators, with 4 loads of X and 4 broadcasts of W per 16 `vdpbf16ps`.
const RB: usize = 4;
/// Vectors of positions per register block.
const CB: usize = 4;

/// `Y = W·X` over `taps` (offsets of X, in words): row blocks of [`RB`], positions in
/// blocks of `CB` vectors, then single vectors, the last one masked. W's rows are
/// `taps.len()·ip` words, tap-major ([`super::Products::pack_weights`]).
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn product(
    y: *mut f32,
    ldy: usize,
    w2: *const u32,
    x2: *const u32,
    ldx: usize,
    taps: &[isize],
    o_n: usize,
    ip: usize,
    n: usize,
) {
    let (ld, kw) = ((ldy, ldx), taps.len() * ip);
    let mut o = 0;
    while o + RB <= o_n {
        rows::<RB>(y.add(o * ldy), ld, w2.add(o * kw), x2, taps, ip, n);
        o += RB;
    }
    while o < o_n {
        rows::<1>(y.add(o * ldy), ld, w2.add(o * kw), x2, taps, ip, n);
        o += 1;
    }
}

/// `R` output rows over every position.
#[inline(always)]
unsafe fn rows<const R: usize>(
    y: *mut f32,
    ld: (usize, usize),
    w2: *const u32,
    x2: *const u32,
    taps: &[isize],
    ip: usize,
    n: usize,
) {
    let mut p = 0;
    while p + 16 * CB <= n {
        block::<R, CB>(y, ld, w2, x2, taps, ip, p, 0xffff);
        p += 16 * CB;
    }
    while p < n {
        let left = n - p;
        let mask = if left >= 16 {
            0xffff
        } else {
            (1u16 << left) - 1
        };
        block::<R, 1>(y, ld, w2, x2, taps, ip, p, mask);
        p += 16;
    }
}

/// `vpermw`'s indices that interleave two vectors of 16 bf16 into pairs: word `2k` ← the
/// first vector's `k` (word `k`), word `2k + 1` ← the second's (word `16 + k`).
const INTERLEAVE: [i16; 32] = {
    let mut idx = [0i16; 32];
    let mut w = 0;
    while w < 32 {
        idx[w] = (w / 2 + 16 * (w % 2)) as i16;
        w += 1;
    }
    idx
};

/// [`super::Pair::form`]: `n` words from channels `lo` and `hi`, each value
/// `v·scale + shift` (`affine = [scale_lo, shift_lo, scale_hi, shift_hi]`, none: `v`)
/// then, where `relu`, the ReLU; 16 positions at a time: both vectors rounded to bf16 by
/// one `vcvtne2ps2bf16` (lo in words 0–15, hi in 16–31), then interleaved into pairs by
/// one `vpermw`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn pairs(
    dst: *mut u32,
    lo: *const f32,
    hi: *const f32,
    affine: Option<[f32; 4]>,
    relu: bool,
    n: usize,
) {
    let c = affine.unwrap_or([1.0, 0.0, 1.0, 0.0]);
    let (s0, t0) = (_mm512_set1_ps(c[0]), _mm512_set1_ps(c[1]));
    let (s1, t1) = (_mm512_set1_ps(c[2]), _mm512_set1_ps(c[3]));
    let zero = _mm512_setzero_ps();
    let idx = _mm512_loadu_si512(INTERLEAVE.as_ptr() as *const _);
    let mut p = 0;
    while p < n {
        let left = n - p;
        let mask: u16 = if left >= 16 {
            0xffff
        } else {
            (1u16 << left) - 1
        };
        let a = _mm512_maskz_loadu_ps(mask, lo.add(p));
        let b = _mm512_maskz_loadu_ps(mask, hi.add(p));
        let (mut a, mut b) = (a, b);
        if affine.is_some() {
            a = _mm512_add_ps(_mm512_mul_ps(a, s0), t0);
            b = _mm512_add_ps(_mm512_mul_ps(b, s1), t1);
        }
        if relu {
            (a, b) = (_mm512_max_ps(a, zero), _mm512_max_ps(b, zero));
        }
        let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(b, a));
        let v = _mm512_permutexvar_epi16(idx, h);
        _mm512_mask_storeu_epi32(dst.add(p) as *mut i32, mask, v);
        p += 16;
    }
}

/// One register block: rows `0..R` of `y` at positions `p..p + 16·C` (the last vector
/// masked by `mask` where `C` is 1).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block<const R: usize, const C: usize>(
    y: *mut f32,
    (ldy, ldx): (usize, usize),
    w2: *const u32,
    x2: *const u32,
    taps: &[isize],
    ip: usize,
    p: usize,
    mask: u16,
) {
    let kw = taps.len() * ip;
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    for (t, &off) in taps.iter().enumerate() {
        let x2 = x2.offset(off);
        for j in 0..ip {
            let row = x2.add(j * ldx + p) as *const i32;
            let mut xv = [_mm512_setzero_si512(); C];
            for (c, v) in xv.iter_mut().enumerate() {
                *v = _mm512_maskz_loadu_epi32(mask, row.add(16 * c));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let wv: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*w2.add(r * kw + t * ip + j) as i32));
                for (a, &v) in acc.iter_mut().zip(&xv) {
                    *a = _mm512_dpbf16_ps(*a, wv, std::mem::transmute::<__m512i, __m512bh>(v));
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (c, &a) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(y.add(r * ldy + p + 16 * c), mask, a);
        }
    }
}
