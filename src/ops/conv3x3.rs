//! Direct 3×3, stride 1, padding 1 convolution (every 3×3 convolution in a dense layer),
//! forward and backward, with AVX2+FMA kernels. Selected by [`super::conv`] when
//! [`applies`] holds; everything else (and CPUs without AVX2) takes the im2col + GEMM path.
//!
//! **Why.** With few output channels (k = 12..48) the im2col + GEMM route is bound by
//! memory traffic, not arithmetic: im2col writes a `Cin·9 × len` matrix (113 MB per BC-100
//! layer at b64), the GEMM packs it again and uses each packed value for only 12 FMAs, and
//! backward-data needs a second such matrix plus col2im. `cargo test --release --lib
//! shape_bench -- --ignored --nocapture` measured 12–28 GFLOP/s for the forward GEMM and
//! 12–14 GFLOP/s for dW (12×9216·9216×432) on this 2-core AMD EPYC (AVX2, no AVX-512).
//!
//! **How.** The input is copied once into a zero-padded layout: per channel, the samples'
//! `(H+2)×(W+2)` planes one after another, with a zero margin before and after. In that
//! layout the 9 taps of a 3×3 window are 9 constant offsets `(ky−1)·(W+2) + (kx−1)` from
//! the output position, across rows and samples alike, so one flat loop over positions
//! computes every output (positions on the padding ring compute junk that is never read):
//!
//! - forward: `out[o][p] = Σ_i Σ_t w[o][i][t] · in[i][p + off_t]` ([`correlate`]);
//! - backward-data is the same loop on the padded `dY` with the weights transposed and
//!   flipped (`off` of tap `8−t` is `−off_t`);
//! - backward-weights: `dw[o][i][t] += Σ_p dy[o][p] · x[i][p + off_t]` ([`weight_grad`]);
//!   `dY` is zero on the padding ring, so junk positions add nothing.
//!
//! The batch is processed in chunks of samples that fit the `col` scratch
//! ([`scratch_per_sample`] floats each). Register blocking: 4 output channels × 16
//! positions (8 AVX accumulators, 6 loads per 8 FMAs; see `correlate_avx2` for why not
//! 24) for [`correlate`], 4 output channels × 3 taps for [`weight_grad`] (7 loads per 12
//! FMAs).

use super::conv::ConvShape;
use super::fused::BnRelu;
use super::norm::affine_relu;
use super::SyncPtr;
use rayon::prelude::*;

/// Output channels per register block.
const OB: usize = 4;
/// Output channels per register block of [`correlate6_avx2`], where they divide by 6.
const OB6: usize = 6;
/// Positions per register block of [`correlate`]: two 8-float vectors.
pub(crate) const PB: usize = 16;
/// Input channels per group in [`correlate`] (see the loop-order note there).
const IB: usize = 16;

/// Whether the direct kernels handle this convolution's forward pass and weight gradient
/// on this CPU (any input channel count: the CIFAR stem has 3).
pub fn applies(s: &ConvShape) -> bool {
    s.k == 3 && s.stride == 1 && s.pad == 1 && s.cout.is_multiple_of(OB) && avx2()
}

/// Whether they handle its input gradient too (its output rows are the input channels).
pub fn applies_data(s: &ConvShape) -> bool {
    applies(s) && s.cin.is_multiple_of(OB)
}

fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::simd::avx2_fma()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The padded layout of a chunk of `ns` samples.
#[derive(Clone, Copy)]
struct Padded {
    /// Padded row width W+2.
    wp: usize,
    /// Positions of the chunk: ns·(H+2)·(W+2).
    body: usize,
    /// Zero floats before and after the body of each channel row.
    margin: usize,
}

impl Padded {
    fn new(s: &ConvShape, ns: usize) -> Self {
        let wp = s.w + 2;
        Padded {
            wp,
            body: ns * (s.h + 2) * wp,
            margin: wp + 1 + PB,
        }
    }
    /// Length of one channel row, margins included.
    fn row(&self) -> usize {
        self.body + 2 * self.margin
    }
    /// Offsets of the 9 taps, row-major (ky, kx).
    fn offsets(&self) -> [isize; 9] {
        let mut o = [0isize; 9];
        for (t, v) in o.iter_mut().enumerate() {
            *v = (t / 3) as isize * self.wp as isize + (t % 3) as isize - self.wp as isize - 1;
        }
        o
    }
    /// The rows and positions [`correlate`] computes.
    fn span(&self) -> Span {
        let (p0, p1) = self.interior();
        Span {
            ld: self.row(),
            base: self.margin,
            p0,
            p1,
            overrun: true,
        }
    }
    /// The position range that covers every interior (real output) position.
    fn interior(&self) -> (usize, usize) {
        (self.wp + 1, self.body - self.wp - 1)
    }
}

/// Floats of `col` scratch per sample: padded input, padded output gradient and padded
/// input gradient (backward needs all three; forward uses the first two).
pub fn scratch_per_sample(s: &ConvShape) -> usize {
    let p = Padded::new(s, 1);
    (2 * s.cin + s.cout) * (p.body + 2 * p.margin)
}

/// Samples per chunk for a scratch of `col_len` floats.
fn chunk(s: &ConvShape, col_len: usize) -> usize {
    // margins are per chunk, so a chunk of k samples needs at most k·per_sample
    (col_len / scratch_per_sample(s).max(1)).clamp(1, s.n)
}

/// Copies samples `n0..n1` of `src: [C][N·H·W]` into the padded rows of `buf` (the ring
/// and the margins set to 0), through `bn` if given: then the padded copy
/// holds `relu(src·scale + shift)` and a BN-ReLU output never has to be stored.
#[allow(clippy::too_many_arguments)]
fn pad(
    buf: &mut [f32],
    src: &[f32],
    bn: Option<BnRelu>,
    c: usize,
    s: &ConvShape,
    n0: usize,
    n1: usize,
    p: Padded,
) {
    let (hw, len) = (s.h * s.w, s.n * s.h * s.w);
    let plane = (s.h + 2) * p.wp;
    buf[..c * p.row()]
        .par_chunks_mut(p.row())
        .enumerate()
        .for_each(|(ci, row)| {
            // zeros only where nothing is copied (margins and ring): zeroing whole rows
            // first wrote every value twice
            row[..p.margin].fill(0.0);
            row[p.margin + (n1 - n0) * plane..].fill(0.0);
            let wp = p.wp;
            for ni in n0..n1 {
                let sp = &src[ci * len + ni * hw..][..hw];
                let dp = &mut row[p.margin + (ni - n0) * plane..][..plane];
                // top ring row and the left ring value of the first image row
                dp[..wp + 1].fill(0.0);
                for y in 0..s.h {
                    let (d, v) = (&mut dp[(y + 1) * wp + 1..][..s.w], &sp[y * s.w..][..s.w]);
                    match bn {
                        Some(bn) => affine_relu(d, v, bn.scale[ci], bn.shift[ci]),
                        None => d.copy_from_slice(v),
                    }
                    // right ring value of this row, left ring value of the next
                    dp[(y + 2) * wp - 1..][..2].fill(0.0);
                }
                // the rest of the bottom ring row
                dp[(s.h + 1) * wp + 1..].fill(0.0);
            }
        });
}

/// Copies the interior of padded rows back to samples `n0..n1` of `dst: [C][N·H·W]`
/// (overwriting).
fn unpad(dst: &mut [f32], buf: &[f32], c: usize, s: &ConvShape, n0: usize, n1: usize, p: Padded) {
    let (hw, len) = (s.h * s.w, s.n * s.h * s.w);
    let plane = (s.h + 2) * p.wp;
    dst[..c * len]
        .par_chunks_mut(len)
        .enumerate()
        .for_each(|(ci, drow)| {
            let row = &buf[ci * p.row()..][..p.row()];
            for ni in n0..n1 {
                let sp = &row[p.margin + (ni - n0) * plane..][..plane];
                let dp = &mut drow[ni * hw..][..hw];
                for y in 0..s.h {
                    dp[y * s.w..][..s.w].copy_from_slice(&sp[(y + 1) * p.wp + 1..][..s.w]);
                }
            }
        });
}

/// Output rows taken in register blocks of 6 ([`correlate6_avx2`], 12 accumulators): all
/// of them where they divide by 6, else the largest multiple of 12, and the rest (4 or 8:
/// the callers' counts divide by 4 then) in blocks of 4 ([`correlate_avx2`]). densenet121's
/// 3×3 has 32 outputs: 24 + 8.
fn rows6(o_n: usize) -> usize {
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
unsafe fn correlate_rows<const TAPS: usize>(
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
    super::with_scratch(&WPACK, o_n * i_n * taps, |out| {
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

thread_local! {
    /// Per-thread buffer for a packed tile of 1×1 input rows (see `correlate`).
    static PACK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Positions per parallel tile of [`correlate`] and [`pointwise_with`]: a tile's input
/// (`i_n` rows, plus the taps' halo) should stay in L2 (512 KiB per core here) while all
/// output blocks sweep it.
fn tile_len(i_n: usize) -> usize {
    ((64 << 10) / (i_n.max(1) * PB)).clamp(1, 64) * PB
}

/// Rows and positions a [`correlate`] call works on: row r of a buffer starts at
/// `r·ld + base`; positions `p0..p1` are computed.
#[derive(Clone, Copy)]
struct Span {
    ld: usize,
    base: usize,
    p0: usize,
    p1: usize,
    /// Whether the rows have at least `PB` readable and writable floats past `p1` (the
    /// padded layout's margin): then the last block may run over instead of a scalar tail.
    overrun: bool,
}

/// `out[o][p] = Σ_i Σ_t w[o][i][t] · inp[i][p + off_t]` for `p` in the span (`o_n` output
/// rows, `i_n` input rows, both laid out as `sp` says); `wp` is [`pack_weights`]' layout.
/// Parallel over tiles of positions.
#[allow(clippy::too_many_arguments)]
fn correlate(
    out: &mut [f32],
    inp: &[f32],
    wp: &[f32],
    o_n: usize,
    i_n: usize,
    offs: &[isize],
    sp: Span,
) {
    assert!(pointwise_applies(o_n));
    assert_eq!(wp.len(), o_n * i_n * offs.len());
    let (lo, hi) = (
        offs.iter().copied().min().unwrap_or(0),
        offs.iter().copied().max().unwrap_or(0),
    );
    let over = if sp.overrun { PB } else { 0 };
    // every read and write lies inside the slices
    assert!(sp.base as isize + sp.p0 as isize + lo >= 0);
    assert!(inp.len() as isize >= ((i_n - 1) * sp.ld + sp.base + sp.p1 + over) as isize + hi);
    assert!(out.len() >= (o_n - 1) * sp.ld + sp.base + sp.p1 + over);
    if sp.p1 <= sp.p0 {
        return;
    }
    let tile = tile_len(i_n);
    let tiles = (sp.p1 - sp.p0).div_ceil(tile);
    let optr = SyncPtr(out.as_mut_ptr());
    let work = |t: usize| {
        let a = sp.p0 + t * tile;
        let b = (a + tile).min(sp.p1);
        // SAFETY: positions a..b of each output row are written by this task only (the
        // overrun, if any, lies past p1 in the last tile); the asserts above bound every
        // access; avx2() was checked.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            let ib = inp.as_ptr().add(sp.base);
            match offs.len() {
                9 => correlate_rows::<9>(optr.get(), ib, sp.ld, wp, o_n, i_n, offs, sp, a, b),
                n => unreachable!("correlate: {n} taps"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (optr, a, b, offs, i_n, o_n, wp, inp);
            unreachable!("conv3x3 needs x86-64")
        }
    };
    if tiles > 1 && o_n * i_n * offs.len() * (sp.p1 - sp.p0) >= 1 << 17 {
        (0..tiles).into_par_iter().for_each(work);
    } else {
        (0..tiles).for_each(work);
    }
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
                // `cargo test --release --lib conv3x3_shapes -- --ignored --nocapture`,
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

/// `out[o][0..len] = Σ_i w[o][i]·inp[i][0..len]`: a 1×1 convolution (or its
/// backward-data with `flip`: `w` then is `[I][O]`) through `correlate_avx2`, without the
/// packing a GEMM does. Needs AVX2 and `o_n % 4 == 0` ([`pointwise_applies`]).
///
/// [`super::conv`] uses it for 1×1 convolutions with at most 48 outputs (measurements
/// there); the `gemm` crate keeps wider ones.
#[allow(clippy::too_many_arguments)]
pub fn pointwise(
    out: &mut [f32],
    inp: &[f32],
    w: &[f32],
    o_n: usize,
    i_n: usize,
    len: usize,
    flip: bool,
) {
    assert!(inp.len() >= i_n * len);
    pointwise_with(out, w, o_n, i_n, len, flip, |buf, ld, a, b| {
        for i in 0..i_n {
            buf[i * ld..][..b - a].copy_from_slice(&inp[i * len + a..][..b - a]);
        }
    });
}

/// [`pointwise`] on an input that is produced tile by tile: `fill(buf, ld, a, b)` must
/// write positions `a..b` of every input row i into `buf[i·ld..][..b − a]`. Each tile's
/// input is formed in a per-thread buffer that stays in L2, so an elementwise function of
/// a stored tensor (a BN-ReLU, see [`super::fused`]) never has to be written out whole.
///
/// The copy also helps by itself: the rows of a `[C][N·H·W]` tensor are 2^k floats apart
/// at b64 (65536), so a 16-row group read in place maps to one L1 set and thrashes
/// (`gemm_shapes`, o48 i216 len 65536: 21 GFLOP/s straight from the tensor, 37.5 packed).
pub fn pointwise_with<F>(
    out: &mut [f32],
    w: &[f32],
    o_n: usize,
    i_n: usize,
    len: usize,
    flip: bool,
    fill: F,
) where
    F: Fn(&mut [f32], usize, usize, usize) + Sync,
{
    assert!(pointwise_applies(o_n));
    assert!(out.len() >= o_n * len);
    if len == 0 || o_n == 0 {
        return;
    }
    with_packed(w, o_n, i_n, 1, flip, |wp| {
        let tile = tile_len(i_n);
        let tiles = len.div_ceil(tile);
        let sp = Span {
            ld: len,
            base: 0,
            p0: 0,
            p1: len,
            overrun: false,
        };
        let optr = SyncPtr(out.as_mut_ptr());
        let work = |t: usize| {
            let a = t * tile;
            let b = (a + tile).min(len);
            let ild = tile + 8;
            super::with_scratch(&PACK, i_n * ild + 16, |buf| {
                // rows start on 64-byte lines (ild·4 is a multiple of 32 and the start is
                // aligned), so no 32-byte load of the kernel straddles two cache lines
                let skip = buf.as_ptr().align_offset(64).min(15);
                let buf = &mut buf[skip..][..i_n * ild];
                fill(buf, ild, a, b);
                // input (i, q) lies at ib' + i·ild + q, with ib' = buf − a
                let ibp = buf.as_ptr().wrapping_sub(a);
                // SAFETY: positions a..b of each output row are written by this task only;
                // `out` holds o_n rows of len; the tile buffer holds i_n rows of ild ≥ b − a;
                // avx2() was checked.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    correlate_rows::<1>(optr.get(), ibp, ild, wp, o_n, i_n, &[0], sp, a, b)
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    let _ = (optr, ibp, &wp, sp);
                    unreachable!("conv3x3 needs x86-64")
                }
            })
        };
        if tiles > 1 && o_n * i_n * len >= 1 << 17 {
            (0..tiles).into_par_iter().for_each(work);
        } else {
            (0..tiles).for_each(work);
        }
    })
}

/// `out[o][q] = Σ_i wp[o][i]·inp[i][q]` for q in `0..n`: the 1×1 kernel on one tile already
/// in cache, on the calling thread (`super::fused::backward`'s `dA = Wᵀ·dY`). `wp` comes
/// from [`with_packed`] (one tap); rows of `out` and `inp` are `out_ld` and `inp_ld`
/// apart, each with room for `PB` floats past `n` (the last register block runs over
/// them). Needs [`pointwise_applies`]`(o_n)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pointwise_tile(
    out: &mut [f32],
    out_ld: usize,
    inp: &[f32],
    inp_ld: usize,
    wp: &[f32],
    o_n: usize,
    i_n: usize,
    n: usize,
) {
    assert!(pointwise_applies(o_n));
    assert_eq!(wp.len(), o_n * i_n);
    let end = n.next_multiple_of(PB);
    assert!(out_ld >= end && inp_ld >= end);
    assert!(out.len() >= (o_n - 1) * out_ld + end);
    assert!(i_n == 0 || inp.len() >= (i_n - 1) * inp_ld + end);
    let sp = Span {
        ld: out_ld,
        base: 0,
        p0: 0,
        p1: n,
        overrun: true,
    };
    // SAFETY: the asserts bound every access of the (overrunning) register blocks; avx2
    // was checked by pointwise_applies.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        let (o, i) = (out.as_mut_ptr(), inp.as_ptr());
        correlate_rows::<1>(o, i, inp_ld, wp, o_n, i_n, &[0], sp, 0, n)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (out, inp, sp);
        unreachable!("pointwise_tile needs x86-64")
    }
}

/// Whether the direct kernels ([`pointwise`], `correlate`) handle `o_n` output rows on
/// this CPU.
pub fn pointwise_applies(o_n: usize) -> bool {
    (o_n.is_multiple_of(OB) || o_n.is_multiple_of(OB6)) && o_n > 0 && avx2()
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

/// `dw[o][i][t] += Σ_p dy[o][p] · x[i][p + off_t]` over the chunk's positions (`dy` is
/// zero off the interior). Parallel over input channels, each task owning its `dw`
/// entries, so the result does not depend on the thread count.
fn weight_grad(dw: &mut [f32], dy: &[f32], x: &[f32], o_n: usize, i_n: usize, p: Padded) {
    let row = p.row();
    assert!(dy.len() >= o_n * row && x.len() >= i_n * row);
    assert_eq!(dw.len(), o_n * i_n * 9);
    let offs = p.offsets();
    thread_local! {
        static COLS: std::cell::RefCell<Vec<[f32; 9]>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    super::with_scratch(&COLS, i_n * o_n, |cols| {
        weight_grad_into(dw, cols, dy, x, o_n, i_n, p, &offs)
    });
}

/// [`weight_grad`] with its per-input-channel results in `cols` (`i_n × o_n`, every entry
/// written before it is read).
#[allow(clippy::too_many_arguments)]
fn weight_grad_into(
    dw: &mut [f32],
    cols: &mut [[f32; 9]],
    dy: &[f32],
    x: &[f32],
    o_n: usize,
    i_n: usize,
    p: Padded,
    offs: &[isize; 9],
) {
    let row = p.row();
    cols.par_chunks_mut(o_n).enumerate().for_each(|(i, col)| {
        // SAFETY: avx2() was checked by `applies`; reads stay in the rows (see
        // `weight_grad_avx2`).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            weight_grad_avx2(col, dy, &x[i * row..][..row], o_n, p, offs)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (col, i, offs, dy, x, row);
            unreachable!("conv3x3 needs x86-64")
        }
    });
    for (i, col) in cols.chunks(o_n).enumerate() {
        for (o, taps) in col.iter().enumerate() {
            for (t, v) in taps.iter().enumerate() {
                dw[(o * i_n + i) * 9 + t] += v;
            }
        }
    }
}

/// One input channel's slice of [`weight_grad`]: `out[o][t] = Σ_p dy[o][p]·x[p + off_t]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weight_grad_avx2(
    out: &mut [[f32; 9]],
    dy: &[f32],
    x: &[f32],
    o_n: usize,
    p: Padded,
    offs: &[isize; 9],
) {
    use std::arch::x86_64::*;
    let row = p.row();
    let (p0, p1) = p.interior();
    // whole vectors from p0; the last may run past p1 into the ring/margin, where dy = 0
    let nvec = (p1 - p0).div_ceil(8);
    let xb = x.as_ptr().add(p.margin + p0);
    for ob in 0..o_n / OB {
        let db = dy.as_ptr().add(ob * OB * row + p.margin + p0);
        for ky in 0..3 {
            let off = offs[ky * 3];
            let mut acc = [[_mm256_setzero_ps(); 3]; OB];
            for j in 0..nvec {
                let xp = xb.offset(off).add(8 * j);
                let xv = [
                    _mm256_loadu_ps(xp),
                    _mm256_loadu_ps(xp.add(1)),
                    _mm256_loadu_ps(xp.add(2)),
                ];
                for (oo, acc) in acc.iter_mut().enumerate() {
                    let d = _mm256_loadu_ps(db.add(oo * row + 8 * j));
                    for kx in 0..3 {
                        acc[kx] = _mm256_fmadd_ps(d, xv[kx], acc[kx]);
                    }
                }
            }
            for (oo, acc) in acc.iter().enumerate() {
                for (kx, &v) in acc.iter().enumerate() {
                    let mut l = [0f32; 8];
                    _mm256_storeu_ps(l.as_mut_ptr(), v);
                    out[ob * OB + oo][ky * 3 + kx] = l.iter().sum();
                }
            }
        }
    }
}

/// Forward: `y[Cout][N·H·W] = conv3×3(x)`, chunked over samples through `col`; with `bn`,
/// of `relu(x·scale + shift)` instead (see [`pad`]).
pub fn forward(
    y: &mut [f32],
    x: &[f32],
    bn: Option<BnRelu>,
    w: &[f32],
    s: &ConvShape,
    col: &mut [f32],
) {
    debug_assert!(applies(s));
    with_packed(w, s.cout, s.cin, 9, false, |wp| {
        let ns = chunk(s, col.len());
        let mut n0 = 0;
        while n0 < s.n {
            let n1 = (n0 + ns).min(s.n);
            let p = Padded::new(s, n1 - n0);
            assert!(
                col.len() >= (s.cin + s.cout) * p.row(),
                "conv3x3: col scratch too small"
            );
            let (xin, rest) = col.split_at_mut(s.cin * p.row());
            let yout = &mut rest[..s.cout * p.row()];
            pad(xin, x, bn, s.cin, s, n0, n1, p);
            correlate(yout, xin, wp, s.cout, s.cin, &p.offsets(), p.span());
            unpad(y, yout, s.cout, s, n0, n1, p);
            n0 = n1;
        }
    })
}

/// Backward: `dw += dy ⋆ x` (of `relu(x·scale + shift)` with `bn`); `dx`, if given, is
/// **overwritten** with the input gradient.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    bn: Option<BnRelu>,
    w: &[f32],
    s: &ConvShape,
    col: &mut [f32],
) {
    debug_assert!(applies(s) && (dx.is_none() || applies_data(s)));
    // the flipped weights of backward-data (packed for nothing without dx)
    let wf = if dx.is_some() { w } else { &[] };
    let (o_w, i_w) = if dx.is_some() {
        (s.cin, s.cout)
    } else {
        (0, 0)
    };
    with_packed(wf, o_w, i_w, 9, true, |wflip| {
        let wflip = dx.is_some().then_some(wflip);
        let ns = chunk(s, col.len());
        let mut dx = dx;
        let mut n0 = 0;
        while n0 < s.n {
            let n1 = (n0 + ns).min(s.n);
            let p = Padded::new(s, n1 - n0);
            assert!(
                col.len() >= (2 * s.cin + s.cout) * p.row(),
                "conv3x3: col scratch too small"
            );
            let (xin, rest) = col.split_at_mut(s.cin * p.row());
            let (dyp, rest) = rest.split_at_mut(s.cout * p.row());
            pad(xin, x, bn, s.cin, s, n0, n1, p);
            pad(dyp, dy, None, s.cout, s, n0, n1, p);
            weight_grad(dw, dyp, xin, s.cout, s.cin, p);
            if let (Some(dx), Some(wf)) = (dx.as_deref_mut(), &wflip) {
                let dxp = &mut rest[..s.cin * p.row()];
                correlate(dxp, dyp, wf, s.cin, s.cout, &p.offsets(), p.span());
                unpad(dx, dxp, s.cin, s, n0, n1, p);
            }
            n0 = n1;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::{col_len, im2col_backward, im2col_forward};

    fn data(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 2654435761 + seed * 97) % 1000) as f32 / 500.0) - 1.0)
            .collect()
    }

    fn shape(n: usize, cin: usize, cout: usize, h: usize, w: usize) -> ConvShape {
        ConvShape {
            n,
            cin,
            cout,
            h,
            w,
            k: 3,
            stride: 1,
            pad: 1,
        }
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() < 1e-4 * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    #[test]
    fn pointwise_matches_naive() {
        if !avx2() {
            return;
        }
        // len 53: three blocks of 16 and a scalar tail of 5; i_n 300 and 200: several
        // tiles (the packed path), channel groups, a partial last tile with a tail
        for (o_n, i_n, len, flip) in [
            (4, 3, 53, false),
            (8, 20, 53, true),
            (12, 5, 7, false),
            (8, 300, 500, false),
            (12, 200, 1001, true),
            (6, 7, 53, true),
            (48, 216, 300, false),
            (18, 130, 77, true),
            // 12 + 8 rows, and 120 + 8 (densenet121's bottleneck width)
            (20, 9, 53, false),
            (128, 40, 70, true),
        ] {
            let x = data(i_n * len, 4);
            let w = data(o_n * i_n, 5);
            let mut y = vec![f32::NAN; o_n * len];
            pointwise(&mut y, &x, &w, o_n, i_n, len, flip);
            let mut want = vec![0.0; o_n * len];
            for o in 0..o_n {
                for i in 0..i_n {
                    let wv = if flip { w[i * o_n + o] } else { w[o * i_n + i] };
                    for p in 0..len {
                        want[o * len + p] += wv * x[i * len + p];
                    }
                }
            }
            close(&y, &want, "pointwise");
        }
    }

    /// The direct kernels against the im2col + GEMM path (itself tested against a naive
    /// convolution in `conv`), on odd sizes, 1-row and 1-column images, and scratch sizes
    /// that force one sample per chunk as well as the whole batch in one.
    #[test]
    fn direct_matches_im2col() {
        if !avx2() {
            return;
        }
        let shapes = [
            shape(2, 4, 4, 5, 7),
            shape(3, 8, 12, 9, 6),
            shape(1, 4, 8, 1, 11),
            shape(2, 12, 4, 13, 1),
            shape(2, 48, 12, 8, 8),
            shape(1, 4, 4, 2, 2),
            // the CIFAR stem's 3 input channels: forward and weight gradient only
            shape(2, 3, 24, 6, 5),
            // blocks of 6 and of 4 in one call: 16 = 12 + 4 outputs, 20 = 12 + 8 inputs
            shape(2, 20, 16, 5, 6),
            shape(1, 32, 32, 4, 4),
        ];
        for s in shapes {
            assert!(applies(&s));
            let data_grad = applies_data(&s);
            assert_eq!(data_grad, s.cin != 3);
            let x = data(s.cin * s.n * s.h * s.w, 1);
            let w = data(s.cout * s.col_rows(), 2);
            let dy = data(s.cout * s.n * s.h * s.w, 3);
            let mut big = vec![0.0; (s.cin * 9) * s.n * s.h * s.w];
            for samples in [1, s.n] {
                let mut col = vec![f32::NAN; col_len(&s, samples)];
                let mut y = vec![f32::NAN; dy.len()];
                forward(&mut y, &x, None, &w, &s, &mut col);
                let mut want = vec![0.0; dy.len()];
                im2col_forward(&mut want, &x, &w, &s, &mut big);
                close(&y, &want, &format!("{s:?} y"));

                let (mut dx, mut dw) = (vec![f32::NAN; x.len()], vec![0.5; w.len()]);
                let dxo = data_grad.then_some(&mut dx[..]);
                backward(dxo, &mut dw, &dy, &x, None, &w, &s, &mut col);
                let (mut wdx, mut wdw) = (vec![0.0; x.len()], vec![0.5; w.len()]);
                im2col_backward(Some(&mut wdx), &mut wdw, &dy, &x, &w, &s, &mut big);
                if data_grad {
                    close(&dx, &wdx, &format!("{s:?} dx"));
                }
                close(&dw, &wdw, &format!("{s:?} dw"));
            }
        }
    }
}
