//! The register-blocked core of the direct convolution kernels: `correlate`, one loop
//! over positions that computes `out[o][p] = Σ_i Σ_t w[o][i][t] · in[i][p + off_t]` for a
//! handful of constant tap offsets. With 9 taps and the zero-padded layout of
//! [`super::conv3x3`] it is a 3×3 convolution (and, with flipped weights, its input
//! gradient); with one tap it is a 1×1 convolution ([`super::conv1x1`]).
//!
//! Register blocking: 6 or 4 output channels × 16 positions ([`correlate_rows`] picks
//! per output count), input channels in groups that stay in L1. Only an AVX2+FMA version
//! exists; the `portable` table has none, and convolutions then take im2col + GEMM.

use crate::util::par::with_scratch;

/// Signature of [`correlate_rows`] (one entry of [`super::Direct`]).
pub type CorrelateFn =
    unsafe fn(*mut f32, *const f32, usize, &[f32], usize, usize, &[isize], Span, usize, usize);

/// Output channels per register block.
pub(crate) const OB: usize = 4;
/// Output channels per register block of [`correlate6_avx2`], where they divide by 6.
pub(crate) const OB6: usize = 6;
/// Positions per register block of [`correlate`]: two 8-float vectors.
pub(crate) const PB: usize = 16;
/// Input channels per group in [`correlate`] (see the loop-order note there).
pub(crate) const IB: usize = 16;

/// Output rows taken in register blocks of 6 ([`correlate6_avx2`], 12 accumulators): all
/// of them where they divide by 6, else the largest multiple of 12, and the rest (4 or 8:
/// the callers' counts divide by 4 then) in blocks of 4 ([`correlate_avx2`]). densenet121's
/// 3×3 has 32 outputs: 24 + 8.
pub(crate) fn rows6(o_n: usize) -> usize {
    if o_n.is_multiple_of(OB6) {
        o_n
    } else {
        o_n / (2 * OB6) * (2 * OB6)
    }
}

/// The direct kernel over `o_n` output rows: the first [`rows6`] in blocks of 6, the rest
/// in blocks of 4 (`wp` packed by [`with_packed`] to match). Same contract as the kernels.
///
/// # Safety
/// As [`correlate_avx2`].
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn correlate_rows<const TAPS: usize>(
    out: *mut f32,
    ib: *const f32,
    ild: usize,
    wp: &[f32],
    o_n: usize,
    i_n: usize,
    offs: &[isize],
    sp: Span,
    a: usize,
    b: usize,
) {
    let r6 = rows6(o_n);
    let split = r6 * i_n * TAPS;
    if r6 > 0 {
        correlate6_avx2::<TAPS>(out, ib, ild, &wp[..split], r6, i_n, offs, sp, a, b);
    }
    if r6 < o_n {
        let rest = out.add(r6 * sp.ld);
        correlate_avx2::<TAPS>(rest, ib, ild, &wp[split..], o_n - r6, i_n, offs, sp, a, b);
    }
}

/// Weights `[O][I][T]` repacked as `[O/B][I][T][B]` with `B` = 6 for the first
/// [`rows6`] rows and 4 for the rest, so the B broadcasts of a tap are adjacent. With `flip`, the source is a forward weight
/// `[I][O][T]` read as the backward-data kernel: `w'[o][i][t] = w[i][o][T−1−t]`. The
/// packing lives in a per-thread buffer for the duration of `f`.
pub(crate) fn with_packed<R>(
    w: &[f32],
    o_n: usize,
    i_n: usize,
    taps: usize,
    flip: bool,
    f: impl FnOnce(&[f32]) -> R,
) -> R {
    assert_eq!(w.len(), o_n * i_n * taps);
    thread_local! {
        static WPACK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let r6 = rows6(o_n);
    with_scratch(&WPACK, o_n * i_n * taps, |out| {
        for o in 0..o_n {
            // (block width, row within the part, start of the part)
            let (ob, r, base) = if o < r6 {
                (OB6, o, 0)
            } else {
                (OB, o - r6, r6 * i_n * taps)
            };
            for i in 0..i_n {
                for t in 0..taps {
                    let v = if flip {
                        w[(i * o_n + o) * taps + taps - 1 - t]
                    } else {
                        w[(o * i_n + i) * taps + t]
                    };
                    out[base + (((r / ob) * i_n + i) * taps + t) * ob + r % ob] = v;
                }
            }
        }
        f(out)
    })
}

/// Positions per parallel tile of [`correlate`] and [`pointwise_with`]: a tile's input
/// (`i_n` rows, plus the taps' halo) should stay in L2 (512 KiB per core here) while all
/// output blocks sweep it.
pub(crate) fn tile_len(i_n: usize) -> usize {
    ((64 << 10) / (i_n.max(1) * PB)).clamp(1, 64) * PB
}

/// Rows and positions a correlate call ([`correlate_rows`], `conv3x3`'s driver) works on: row r of a buffer starts at
/// `r·ld + base`; positions `p0..p1` are computed.
#[derive(Clone, Copy)]
pub struct Span {
    /// Distance between rows.
    pub ld: usize,
    /// Offset of position 0 in each row.
    pub base: usize,
    /// First position computed.
    pub p0: usize,
    /// One past the last position computed.
    pub p1: usize,
    /// Whether the rows have at least `PB` readable and writable floats past `p1` (the
    /// padded layout's margin): then the last block may run over instead of a scalar tail.
    pub overrun: bool,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn correlate_avx2<const TAPS: usize>(
    out: *mut f32,
    ib: *const f32,
    ild: usize,
    wp: &[f32],
    o_n: usize,
    i_n: usize,
    offs: &[isize],
    sp: Span,
    a: usize,
    b: usize,
) {
    use std::arch::x86_64::*;
    let taps = TAPS;
    let offs: &[isize; TAPS] = offs.try_into().expect("tap count");
    // With one tap a group of IB channels is only 16 FMAs per accumulator round trip
    // through `out`; 1×1 inputs are packed (contiguous, L1-friendly), so take more.
    let group = if TAPS == 1 { 8 * IB } else { IB };
    // whole blocks; without overrun room the last partial block is done in scalar code
    let full = if sp.overrun { b } else { a + (b - a) / PB * PB };
    // Loop order: position block, then a group of IB input channels, then output blocks.
    // The group's input lines (IB channels × 3 rows × 2–3 lines ≈ 9 KiB) stay in L1 while
    // every output block reuses them; partial sums go through `out` between groups (exact
    // in f32, so the order of additions per output is still i ascending, t ascending).
    // With the output-block loop outermost instead, 128 input channels × 3 rows were 384
    // concurrent streams per block and densenet121 b16 inference spent 44% of its time
    // here (`perf record`).
    let mut q = a;
    while q < full {
        for i0 in (0..i_n).step_by(group) {
            let i1 = (i0 + group).min(i_n);
            for ob in 0..o_n / OB {
                let wb = wp.as_ptr().add(ob * i_n * taps * OB);
                let op = out.add(ob * OB * sp.ld + sp.base + q);
                let ld = sp.ld;
                // 4 output channels × 16 positions = 8 accumulators in named locals. With
                // 4 × 24 (12 accumulators + 3 inputs + 1 weight = all 16 ymm registers)
                // LLVM kept one accumulator on the stack, a load-FMA-store chain through
                // store forwarding on every tap (objdump of `correlate_avx2::<9>`).
                // `cargo bench --bench shapes -- conv3x3_shapes`,
                // one thread, 121 shape 16×128→32 at 28×28: 24 GFLOP/s before, 55 after (BC-100
                // 64×48→12 at 32×32: 31 → 53; machine shared with other builds).
                let (mut c00, mut c01, mut c10, mut c11);
                let (mut c20, mut c21, mut c30, mut c31);
                if i0 > 0 {
                    c00 = _mm256_loadu_ps(op);
                    c01 = _mm256_loadu_ps(op.add(8));
                    c10 = _mm256_loadu_ps(op.add(ld));
                    c11 = _mm256_loadu_ps(op.add(ld + 8));
                    c20 = _mm256_loadu_ps(op.add(2 * ld));
                    c21 = _mm256_loadu_ps(op.add(2 * ld + 8));
                    c30 = _mm256_loadu_ps(op.add(3 * ld));
                    c31 = _mm256_loadu_ps(op.add(3 * ld + 8));
                } else {
                    c00 = _mm256_setzero_ps();
                    (c01, c10, c11, c20, c21, c30, c31) = (c00, c00, c00, c00, c00, c00, c00);
                }
                for i in i0..i1 {
                    let ip = ib.wrapping_add(i * ild + q);
                    let wi = wb.add(i * taps * OB);
                    for (t, &off) in offs.iter().enumerate() {
                        let x = ip.offset(off);
                        let w = wi.add(t * OB);
                        let x0 = _mm256_loadu_ps(x);
                        let x1 = _mm256_loadu_ps(x.add(8));
                        let wv = _mm256_broadcast_ss(&*w);
                        c00 = _mm256_fmadd_ps(wv, x0, c00);
                        c01 = _mm256_fmadd_ps(wv, x1, c01);
                        let wv = _mm256_broadcast_ss(&*w.add(1));
                        c10 = _mm256_fmadd_ps(wv, x0, c10);
                        c11 = _mm256_fmadd_ps(wv, x1, c11);
                        let wv = _mm256_broadcast_ss(&*w.add(2));
                        c20 = _mm256_fmadd_ps(wv, x0, c20);
                        c21 = _mm256_fmadd_ps(wv, x1, c21);
                        let wv = _mm256_broadcast_ss(&*w.add(3));
                        c30 = _mm256_fmadd_ps(wv, x0, c30);
                        c31 = _mm256_fmadd_ps(wv, x1, c31);
                    }
                }
                _mm256_storeu_ps(op, c00);
                _mm256_storeu_ps(op.add(8), c01);
                _mm256_storeu_ps(op.add(ld), c10);
                _mm256_storeu_ps(op.add(ld + 8), c11);
                _mm256_storeu_ps(op.add(2 * ld), c20);
                _mm256_storeu_ps(op.add(2 * ld + 8), c21);
                _mm256_storeu_ps(op.add(3 * ld), c30);
                _mm256_storeu_ps(op.add(3 * ld + 8), c31);
            }
        }
        q += PB;
    }
    for ob in 0..o_n / OB {
        let wb = wp.as_ptr().add(ob * i_n * taps * OB);
        // scalar tail, same summation order per position (i outer, t inner)
        for q in full..b.max(full) {
            for oo in 0..OB {
                let mut acc = 0f32;
                for i in 0..i_n {
                    let ip = ib.wrapping_add(i * ild + q);
                    for (t, &off) in offs.iter().enumerate() {
                        acc = (*wb.add((i * taps + t) * OB + oo)).mul_add(*ip.offset(off), acc);
                    }
                }
                *out.add((ob * OB + oo) * sp.ld + sp.base + q) = acc;
            }
        }
    }
}

/// `correlate_avx2` with 6 output channels × 16 positions per register block: 12
/// accumulators instead of 8. With 8, each accumulator takes an FMA every tap and 8
/// chains exactly cover 2 FMA pipes × 4 cycles of latency, so any load hiccup stalls; 12
/// leave slack (2 x loads + 6 broadcasts per 12 FMAs; 15 of the 16 ymm registers). For
/// 1×1, one thread, best of 8 interleaved runs, machine shared with a build: o48·i216
/// over 65536 positions 52–55 GFLOP/s against 47–52 with 4 × 16; o48·i96 46–48 against
/// 40–42. Same contract, loop order and summation order as `correlate_avx2`; `wp` is
/// [`pack_weights`]' layout with blocks of 6.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn correlate6_avx2<const TAPS: usize>(
    out: *mut f32,
    ib: *const f32,
    ild: usize,
    wp: &[f32],
    o_n: usize,
    i_n: usize,
    offs: &[isize],
    sp: Span,
    a: usize,
    b: usize,
) {
    use std::arch::x86_64::*;
    let offs: &[isize; TAPS] = offs.try_into().expect("tap count");
    debug_assert!(o_n.is_multiple_of(OB6) && wp.len() == o_n * i_n * TAPS);
    let group = if TAPS == 1 { 8 * IB } else { IB };
    let full = if sp.overrun { b } else { a + (b - a) / PB * PB };
    let ld = sp.ld;
    let mut q = a;
    while q < full {
        for i0 in (0..i_n).step_by(group) {
            let i1 = (i0 + group).min(i_n);
            for ob in 0..o_n / OB6 {
                let wb = wp.as_ptr().add(ob * i_n * TAPS * OB6);
                let op = out.add(ob * OB6 * ld + sp.base + q);
                let mut c = [[_mm256_setzero_ps(); 2]; OB6];
                if i0 > 0 {
                    for (r, c) in c.iter_mut().enumerate() {
                        c[0] = _mm256_loadu_ps(op.add(r * ld));
                        c[1] = _mm256_loadu_ps(op.add(r * ld + 8));
                    }
                }
                for i in i0..i1 {
                    let ip = ib.wrapping_add(i * ild + q);
                    let wi = wb.add(i * TAPS * OB6);
                    for (t, &off) in offs.iter().enumerate() {
                        let x = ip.offset(off);
                        let w = wi.add(t * OB6);
                        let x0 = _mm256_loadu_ps(x);
                        let x1 = _mm256_loadu_ps(x.add(8));
                        for (r, c) in c.iter_mut().enumerate() {
                            let wv = _mm256_broadcast_ss(&*w.add(r));
                            c[0] = _mm256_fmadd_ps(wv, x0, c[0]);
                            c[1] = _mm256_fmadd_ps(wv, x1, c[1]);
                        }
                    }
                }
                for (r, c) in c.iter().enumerate() {
                    _mm256_storeu_ps(op.add(r * ld), c[0]);
                    _mm256_storeu_ps(op.add(r * ld + 8), c[1]);
                }
            }
        }
        q += PB;
    }
    // scalar tail, same summation order per position (i outer, t inner, fused)
    for o in 0..o_n {
        let wb = wp.as_ptr().add((o / OB6) * i_n * TAPS * OB6 + o % OB6);
        for q in full..b.max(full) {
            let mut acc = 0f32;
            for i in 0..i_n {
                let ip = ib.wrapping_add(i * ild + q);
                for (t, &off) in offs.iter().enumerate() {
                    acc = (*wb.add((i * TAPS + t) * OB6)).mul_add(*ip.offset(off), acc);
                }
            }
            *out.add(o * ld + sp.base + q) = acc;
        }
    }
}
