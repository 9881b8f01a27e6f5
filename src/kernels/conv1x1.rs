//! The direct 1×1 convolution: `out[o][p] = Σ_i w[o][i]·in[i][p]` on tiles of packed
//! input rows through the one-tap register kernel of [`super::correlate`], without the
//! packing a GEMM does, and the weight gradient of one tile: [`grad_tile`] (an outer
//! product over positions, for output counts a multiple of the vector width) or
//! [`dot_tile`] (dot products along them, for any). Used where the
//! active kernels table has direct kernels ([`pointwise_applies`]); the operations fall
//! back to the `gemm` crate elsewhere.

use super::correlate::{
    for_row_runs, for_tiles, part_rows, tile_len, with_packed, Span, Weights, OB, OB6, PB,
};
use super::simd::{simd_entries, F32x};
use super::{active, active_direct};
use crate::util::par::{with_scratch, SyncPtr};

/// Signature of [`dot_tile_avx2`] and [`dot_tile_avx512`] (entries of [`super::Direct`]).
pub type DotTileFn = unsafe fn(*mut f32, usize, &[f32], usize, &[f32], usize, usize, usize, usize);

thread_local! {
    /// Per-thread buffer for a packed tile of 1×1 input rows (see `correlate`).
    static PACK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per-thread output rows of a tile's last, partial vector (see [`pointwise_with`]).
    static TAIL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `out[o][0..len] = Σ_i w[o][i]·inp[i][0..len]`: a 1×1 convolution (or its
/// backward-data with `flip`: `w` then is `[I][O]`) through the one-tap register kernel (`Direct::correlate1`), without the
/// packing a GEMM does. Needs AVX2 and `o_n % 4 == 0` ([`pointwise_applies`]).
///
/// [`crate::ops::conv`] uses it for 1×1 convolutions with at most 48 outputs (measurements
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
/// a stored tensor (a BN-ReLU, see [`crate::ops::fused`]) never has to be written out whole.
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
    let direct = active_direct("pointwise");
    with_packed(w, o_n, i_n, flip, |wv| {
        let tile = tile_len(i_n, direct.block);
        let big = o_n * i_n * len >= 1 << 17;
        let sp = Span {
            ld: len,
            base: 0,
            p0: 0,
            p1: len,
            overrun: false,
        };
        let optr = SyncPtr(out.as_mut_ptr());
        // where rows are split (fewer tiles than threads), each part's task forms the
        // tile's input itself
        // packed weights: parts follow the packing's blocks
        let part = part_rows;
        for_tiles(
            0,
            len,
            tile,
            direct.block,
            o_n,
            big,
            part,
            |a, b, r0, r1| {
                // rows a vector's width apart times an odd number (tile is a multiple of two
                // vectors): aligned for the kernel's loads, and not 2^k apart (which would
                // map a channel group to one L1 set)
                let ild = tile + direct.block / 2;
                with_scratch(&PACK, i_n * ild + 16, |buf| {
                    // rows start on 64-byte lines (ild·4 is a multiple of the vector width and
                    // the start is aligned), so no load of the kernel straddles two lines
                    let skip = buf.as_ptr().align_offset(64).min(15);
                    let buf = &mut buf[skip..][..i_n * ild];
                    fill(buf, ild, a, b);
                    // input (i, q) lies at ib' + i·ild + q, with ib' = buf − a
                    let ibp = buf.as_ptr().wrapping_sub(a);
                    // whole vectors straight into `out`; the last few positions (batch 1
                    // at 14×14 and 7×7: 196 and 49) were scalar code, 16× slower per
                    // FMA, so one overrunning block computes them into `TAIL` instead
                    let l = direct.block / 2;
                    let full = a + (b - a) / l * l;
                    for_row_runs(o_n, r0, r1, |r0, r1| {
                        let w = wv.from_row(r0);
                        // SAFETY: positions a..full of output rows r0..r1 are written by
                        // this task only; `out` holds o_n rows of len; the tile buffer holds
                        // i_n rows of ild ≥ b − a; the table that holds the kernel runs on
                        // this CPU.
                        unsafe {
                            let o = optr.get().add(r0 * len);
                            (direct.correlate1)(o, ibp, ild, w, r1 - r0, i_n, &[0], sp, a, full)
                        }
                        if full == b {
                            return;
                        }
                        let tail = Span {
                            ld: PB,
                            base: 0,
                            p0: 0,
                            p1: b - full,
                            overrun: true,
                        };
                        with_scratch(&TAIL, (r1 - r0) * PB, |t| {
                            // SAFETY: the block reads positions full..full + 2·l of each
                            // tile row, which end within its ild = tile + l floats (the
                            // tile, a multiple of 2·l, is longer than b − a here), and
                            // writes PB ≥ 2·l floats of each of t's r1 − r0 rows.
                            unsafe {
                                let ib = buf.as_ptr().add(full - a);
                                let tp = t.as_mut_ptr();
                                (direct.correlate1)(
                                    tp,
                                    ib,
                                    ild,
                                    w,
                                    r1 - r0,
                                    i_n,
                                    &[0],
                                    tail,
                                    0,
                                    b - full,
                                )
                            }
                            for r in r0..r1 {
                                // SAFETY: positions full..b of row r, this task's
                                let o = unsafe {
                                    std::slice::from_raw_parts_mut(
                                        optr.get().add(r * len + full),
                                        b - full,
                                    )
                                };
                                o.copy_from_slice(&t[(r - r0) * PB..][..b - full]);
                            }
                        })
                    })
                })
            },
        )
    })
}

/// `out[o][q] = Σ_i w[o][i]·inp[i][q]` for q in `0..n`: the 1×1 kernel on one tile already
/// in cache, on the calling thread (`super::fused::backward`'s `dA = Wᵀ·dY`, with `w`
/// from [`with_packed`]); rows of `out` and `inp` are `out_ld`
/// and `inp_ld` apart, each with room for `PB` floats past `n` (the last register block
/// runs over them). Needs [`pointwise_applies`]`(o_n)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pointwise_tile(
    out: &mut [f32],
    out_ld: usize,
    inp: &[f32],
    inp_ld: usize,
    w: Weights<'_>,
    o_n: usize,
    i_n: usize,
    n: usize,
) {
    assert!(pointwise_applies(o_n));
    let direct = active_direct("pointwise_tile");
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
    // SAFETY: the asserts bound every access of the (overrunning) register blocks; the
    // table that holds the kernel runs on this CPU.
    unsafe {
        let (o, i) = (out.as_mut_ptr(), inp.as_ptr());
        (direct.correlate1)(o, i, inp_ld, w, o_n, i_n, &[0], sp, 0, n)
    }
}

/// Whether the direct kernels ([`pointwise`], `correlate`) handle `o_n` output rows with
/// the active kernels table.
pub fn pointwise_applies(o_n: usize) -> bool {
    (o_n.is_multiple_of(OB) || o_n.is_multiple_of(OB6)) && o_n > 0 && active().direct.is_some()
}

/// `dw[o][i] += Σ_{p<n} dy[o][p]·a[i][p]` (`dw` rows `dw_ld` apart, `dy` and `a` rows
/// `dy_ld` and `a_ld` apart), for an even `i_n`: the weight gradient of one tile,
/// where both operands run along the summation. Register blocks of 4 outputs × 2 inputs
/// (8 accumulators over a vector of positions each): per step 4 dY loads (they stay in L1
/// across the input rows), 2 A loads (from L2) and 8 FMAs, then one horizontal reduction
/// per block and tile. This replaces a `gemm` call per tile, which allocated its packing
/// buffers every time.
///
/// # Safety
/// `dw` must hold `(o_n − 1)·dw_ld + i_n` floats; the active table must have direct
/// kernels ([`pointwise_applies`]).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn dot_tile(
    dw: *mut f32,
    dw_ld: usize,
    dy: &[f32],
    dy_ld: usize,
    a: &[f32],
    a_ld: usize,
    o_n: usize,
    i_n: usize,
    n: usize,
) {
    assert!(i_n.is_multiple_of(2));
    assert!(o_n == 0 || dy.len() >= (o_n - 1) * dy_ld + n);
    assert!(i_n == 0 || a.len() >= (i_n - 1) * a_ld + n);
    let direct = active_direct("dot_tile");
    (direct.dot_tile)(dw, dw_ld, dy, dy_ld, a, a_ld, o_n, i_n, n);
}

/// [`dot_tile`] over the vector type `V`: register blocks of 4 outputs × 2 inputs (8
/// accumulators), whole vectors along the positions, then a scalar tail.
///
/// # Safety
/// As [`dot_tile`], and the CPU must run `V`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_tile_rows<V: F32x>(
    dw: *mut f32,
    dw_ld: usize,
    dy: &[f32],
    dy_ld: usize,
    a: &[f32],
    a_ld: usize,
    o_n: usize,
    i_n: usize,
    n: usize,
) {
    let l = V::LANES;
    let nv = n / l * l;
    let o4 = o_n / 4 * 4;
    for o0 in (0..o4).step_by(4) {
        let d = dy.as_ptr().add(o0 * dy_ld);
        for i0 in (0..i_n).step_by(2) {
            let a0 = a.as_ptr().add(i0 * a_ld);
            let a1 = a0.add(a_ld);
            // c[2r + j]: output o0 + r, input i0 + j
            let mut c = [V::zero(); 8];
            let mut p = 0;
            while p < nv {
                let (x0, x1) = (V::load(a0.add(p)), V::load(a1.add(p)));
                for (r, c) in c.chunks_exact_mut(2).enumerate() {
                    let dv = V::load(d.add(r * dy_ld + p));
                    c[0] = dv.mul_add(x0, c[0]);
                    c[1] = dv.mul_add(x1, c[1]);
                }
                p += l;
            }
            let s = V::sums8(c);
            for (r, s) in s.chunks_exact(2).enumerate() {
                let (mut s0, mut s1) = (s[0], s[1]);
                for q in nv..n {
                    let dv = *d.add(r * dy_ld + q);
                    s0 += dv * *a0.add(q);
                    s1 += dv * *a1.add(q);
                }
                let out = dw.add((o0 + r) * dw_ld + i0);
                *out += s0;
                *out.add(1) += s1;
            }
        }
    }
    // the last o_n mod 4 rows (a transition's 150 outputs), one at a time
    for o in o4..o_n {
        let d = dy.as_ptr().add(o * dy_ld);
        for i0 in (0..i_n).step_by(2) {
            let a0 = a.as_ptr().add(i0 * a_ld);
            let a1 = a0.add(a_ld);
            let (mut c0, mut c1) = (V::zero(), V::zero());
            let mut p = 0;
            while p < nv {
                let dv = V::load(d.add(p));
                c0 = dv.mul_add(V::load(a0.add(p)), c0);
                c1 = dv.mul_add(V::load(a1.add(p)), c1);
                p += l;
            }
            let (mut s0, mut s1) = (c0.sum(), c1.sum());
            for q in nv..n {
                s0 += *d.add(q) * *a0.add(q);
                s1 += *d.add(q) * *a1.add(q);
            }
            let out = dw.add(o * dw_ld + i0);
            *out += s0;
            *out.add(1) += s1;
        }
    }
}

simd_entries!(dot_tile_rows => dot_tile_avx2, dot_tile_avx512 (
    dw: *mut f32,
    dw_ld: usize,
    dy: &[f32],
    dy_ld: usize,
    a: &[f32],
    a_ld: usize,
    o_n: usize,
    i_n: usize,
    n: usize,
));

/// `dst[p][r] = src[r][p]` for `r < rows`, `p < n` (`src` rows `ld` apart, `dst` rows
/// `rows` apart). In 8×8 blocks (eight 8-float loads, eight 8-float stores); written
/// element by element the copy took a third of `grad_tile`'s own time (1.5 ns per float
/// on Zen 3).
pub(crate) fn transpose(dst: &mut [f32], src: &[f32], ld: usize, rows: usize, n: usize) {
    transpose_with::<false>(dst, rows, src, ld, rows, n)
}

/// dY's tile (`o_n` rows of `n`, `ld` apart) into the panels [`grad_tile`] reads: for
/// each group of [`grad_panel_width`] outputs from `o0` (the last may be narrower), the
/// group transposed, an `[n][width]` panel at `dst[o0·n..]`. One panel is a register
/// block's whole stream of dYᵀ, contiguous: read from the plain `[n][O]` transpose
/// instead (a 64-byte line 512 bytes from the last, per position, at 128 outputs),
/// `grad_tile` ran 0.85–0.94 as fast at densenet121's tiles and 0.7 at 1024 positions
/// (Zen 3, 1 thread, alternating).
pub(crate) fn transpose_panels(dst: &mut [f32], src: &[f32], ld: usize, o_n: usize, n: usize) {
    assert!(dst.len() >= o_n * n);
    let width = grad_panel_width().max(1);
    for o0 in (0..o_n).step_by(width) {
        let wb = width.min(o_n - o0);
        transpose(&mut dst[o0 * n..][..wb * n], &src[o0 * ld..], ld, wb, n);
    }
}

/// Outputs per panel of [`transpose_panels`]: the register block of [`grad_tile`]
/// (2 vectors), 0 without direct kernels.
pub(crate) fn grad_panel_width() -> usize {
    active().direct.map_or(0, |d| d.block)
}

/// [`transpose`] into `dst` rows `ld_dst ≥ rows` apart, the columns `rows..ld_dst` of each
/// set to 0: weights or a `dY` tile turned into whole groups of output channels for
/// [`super::broadcast`] (its packing, and its weight gradient's `dYᵀ`).
pub(crate) fn transpose_padded(
    dst: &mut [f32],
    ld_dst: usize,
    src: &[f32],
    ld: usize,
    rows: usize,
    n: usize,
) {
    transpose_with::<false>(dst, ld_dst, src, ld, rows, n);
    if ld_dst > rows {
        for row in dst.chunks_exact_mut(ld_dst).take(n) {
            row[rows..].fill(0.0);
        }
    }
}

/// `dst[p][r] += src[r][p]`, as [`transpose`]: a `[I][O]` sum of [`grad_tile`] into the
/// `[O][I]` weight gradient. (Element by element, the writes 4 KiB apart at 1024 inputs
/// took a tenth of densenet121's 7×7 1×1 backward.)
pub(crate) fn add_transposed(dst: &mut [f32], src: &[f32], ld: usize, rows: usize, n: usize) {
    transpose_with::<true>(dst, rows, src, ld, rows, n)
}

/// [`transpose`] (`ADD` false) or [`add_transposed`] (true), `dst` rows `ld_dst` apart.
fn transpose_with<const ADD: bool>(
    dst: &mut [f32],
    ld_dst: usize,
    src: &[f32],
    ld: usize,
    rows: usize,
    n: usize,
) {
    assert!(ld_dst >= rows && (n == 0 || dst.len() >= (n - 1) * ld_dst + rows));
    assert!(rows == 0 || n == 0 || src.len() >= (rows - 1) * ld + n);
    let put = |d: &mut f32, v: f32| if ADD { *d += v } else { *d = v };
    let (r8, p8) = (rows / 8 * 8, n / 8 * 8);
    let one = |dst: &mut [f32], r: usize, p: usize| put(&mut dst[p * ld_dst + r], src[r * ld + p]);
    for r0 in (0..r8).step_by(8) {
        for p0 in (0..p8).step_by(8) {
            let mut b = [[0f32; 8]; 8];
            for (r, b) in b.iter_mut().enumerate() {
                b.copy_from_slice(&src[(r0 + r) * ld + p0..][..8]);
            }
            for p in 0..8 {
                let d = &mut dst[(p0 + p) * ld_dst + r0..][..8];
                for (r, d) in d.iter_mut().enumerate() {
                    put(d, b[r][p]);
                }
            }
        }
        for r in r0..r0 + 8 {
            (p8..n).for_each(|p| one(dst, r, p));
        }
    }
    for r in r8..rows {
        (0..n).for_each(|p| one(dst, r, p));
    }
}

/// Signature of [`grad_tile_avx2`] and [`grad_tile_avx512`] (entries of [`super::Direct`]).
pub type GradTileFn = unsafe fn(*mut f32, *const f32, usize, *const f32, usize, usize, usize);

/// `dwt[i][o] += Σ_{p<n} a[i][p]·dY[o][p]` (`dwt` is `[I][O]`, rows `o_n` apart; `a`
/// rows `a_ld` apart; `dyt` is dY's tile transposed in panels by [`transpose_panels`]), for
/// `o_n` a multiple of the table's vector width: the weight gradient of one tile as an
/// outer product over positions, the layout a GEMM micro-kernel uses. A register block
/// is 6 inputs × 2 vectors of outputs (12 accumulators that live across the whole tile):
/// per position 2 dYᵀ loads, 6 broadcasts of A and 12 FMAs, and no horizontal sums; A is
/// read once. [`dot_tile`] (dot products along the positions) needs 6 loads per 8 FMAs
/// plus a reduction per block and tile, and rereads the whole A tile (1 MiB at 1024
/// inputs: from L3) once per 4 outputs. One tile just written, Zen 3, 1 thread:
/// o128 n256 i160/i640/i1024 68/49/44 GFLOP/s with `dot_tile`, 91/65/59 with this.
///
/// # Safety
/// `dwt` must hold `i_n·o_n` floats, `a` `(i_n − 1)·a_ld + n` and `dyt` `n·o_n` in the
/// layout of [`transpose_panels`] with the same table; the active
/// table must have direct kernels and `o_n % (block / 2) == 0` ([`grad_tile_applies`]).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn grad_tile(
    dwt: *mut f32,
    a: *const f32,
    a_ld: usize,
    dyt: *const f32,
    o_n: usize,
    i_n: usize,
    n: usize,
) {
    assert!(grad_tile_applies(o_n));
    let direct = active_direct("grad_tile");
    (direct.grad_tile)(dwt, a, a_ld, dyt, o_n, i_n, n);
}

/// Whether [`grad_tile`] takes `o_n` outputs with the active table (a multiple of its
/// vector width).
pub(crate) fn grad_tile_applies(o_n: usize) -> bool {
    active()
        .direct
        .is_some_and(|d| o_n > 0 && o_n.is_multiple_of(d.block / 2))
}

/// [`grad_tile`] over `V`: input rows 6 at a time (then one block each of 4, 2 and 1 for
/// the rest), and for each, every output column block. Inputs outside: the block's 6 A
/// rows (6 KiB at 256 positions) stay in L1 while dYᵀ's panels (128 KiB at 128 outputs)
/// stream from L2, and A, just written by the BN-ReLU fill and partly evicted to L3, is read
/// once. (Outputs outside reread A once per output block: o128 i640 n256, Zen 3, 57 against
/// 65 GFLOP/s.)
///
/// # Safety
/// As [`grad_tile`], and the CPU must run `V`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn grad_tile_rows<V: F32x>(
    dwt: *mut f32,
    a: *const f32,
    a_ld: usize,
    dyt: *const f32,
    o_n: usize,
    i_n: usize,
    n: usize,
) {
    let mut i = 0;
    while i < i_n {
        let (d, x) = (dwt.add(i * o_n), a.add(i * a_ld));
        i += match i_n - i {
            6.. => grad_outputs::<V, 6>(d, x, a_ld, dyt, o_n, n),
            4 | 5 => grad_outputs::<V, 4>(d, x, a_ld, dyt, o_n, n),
            2 | 3 => grad_outputs::<V, 2>(d, x, a_ld, dyt, o_n, n),
            _ => grad_outputs::<V, 1>(d, x, a_ld, dyt, o_n, n),
        };
    }
}

/// Every output column block of [`grad_tile_rows`] for `R` input rows (`dwt` and `a` point
/// at the first row): 2 vectors at a time, then one (`o_n` is a multiple of `V::LANES`),
/// each from its panel of `dyt`. Returns `R`.
#[inline(always)]
unsafe fn grad_outputs<V: F32x, const R: usize>(
    dwt: *mut f32,
    a: *const f32,
    a_ld: usize,
    dyt: *const f32,
    o_n: usize,
    n: usize,
) -> usize {
    let l = V::LANES;
    let mut o0 = 0;
    while o0 + 2 * l <= o_n {
        // the next block's accumulators (this row group's next columns, or the next
        // group's first) asked for while this block's positions run: R rows 4·o_n bytes
        // apart are R streams too short for the hardware prefetcher (o128 n128, 1 thread,
        // dWᵀ 4–64 MiB rotating, alternating per run: 0–4% faster, 2% typical)
        let next = if o0 + 2 * l < o_n {
            dwt.add(o0 + 2 * l)
        } else {
            dwt.wrapping_add(R * o_n)
        };
        for r in 0..R {
            super::prefetch(next.wrapping_add(r * o_n), 2 * l + 15);
        }
        grad_block::<V, R, 2>(dwt.add(o0), a, a_ld, dyt.add(o0 * n), o_n, n);
        o0 += 2 * l;
    }
    if o0 < o_n {
        grad_block::<V, R, 1>(dwt.add(o0), a, a_ld, dyt.add(o0 * n), o_n, n);
    }
    R
}

/// One register block of [`grad_tile_rows`]: `R` input rows × `NV` vectors of outputs,
/// accumulated over all `n` positions, starting from and returned to `dwt`; `dyt` is the
/// block's panel (`[n][NV·LANES]`).
#[inline(always)]
unsafe fn grad_block<V: F32x, const R: usize, const NV: usize>(
    dwt: *mut f32,
    a: *const f32,
    a_ld: usize,
    dyt: *const f32,
    o_n: usize,
    n: usize,
) {
    let l = V::LANES;
    let mut c = [[V::zero(); NV]; R];
    for (r, c) in c.iter_mut().enumerate() {
        for (v, c) in c.iter_mut().enumerate() {
            *c = V::load(dwt.add(r * o_n + v * l));
        }
    }
    for p in 0..n {
        let mut d = [V::zero(); NV];
        for (v, d) in d.iter_mut().enumerate() {
            *d = V::load(dyt.add((p * NV + v) * l));
        }
        for (r, c) in c.iter_mut().enumerate() {
            let s = V::splat(a.add(r * a_ld + p));
            for (c, &d) in c.iter_mut().zip(&d) {
                *c = s.mul_add(d, *c);
            }
        }
    }
    for (r, c) in c.iter().enumerate() {
        for (v, c) in c.iter().enumerate() {
            c.store(dwt.add(r * o_n + v * l));
        }
    }
}

simd_entries!(grad_tile_rows => grad_tile_avx2, grad_tile_avx512 (
    dwt: *mut f32,
    a: *const f32,
    a_ld: usize,
    dyt: *const f32,
    o_n: usize,
    i_n: usize,
    n: usize,
));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{close, data, say};

    #[test]
    fn pointwise_matches_naive() {
        if !pointwise_applies(4) {
            say(&format!(
                "SKIPPED: the {} kernels have no direct 1×1",
                active().name
            ));
            return;
        }
        // len 53: three blocks of 16 and a tail of 5 (one overrunning block into TAIL);
        // i_n 300 and 200: several tiles (the packed path), channel groups, a partial last
        // tile with a tail; (128, 40, 70): rows split over two threads, each with the tail
        for (o_n, i_n, len, flip) in [
            (4, 3, 53, false),
            (8, 20, 53, true),
            (12, 5, 7, false),
            (8, 300, 500, false),
            (12, 200, 1001, true),
            (6, 7, 53, true),
            (48, 216, 300, false),
            (18, 130, 77, true),
            // tails of one vector then a partial one: 61 = 48 + 8 + 5 (AVX2), 29 = 16 + 8 + 5,
            // and 2·16 + 8 + 9 for AVX-512's 32-position blocks
            (8, 20, 61, false),
            (12, 5, 29, true),
            (6, 33, 49, false),
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

    #[test]
    fn transposes_match_naive() {
        // whole 8×8 blocks, and tails in either dimension or both
        for (rows, n) in [(8, 8), (16, 24), (13, 21), (5, 3), (1, 9), (24, 7)] {
            let ld = n + 5;
            let src = data(rows * ld, 1);
            let init = data(rows * n, 2);
            let (mut set, mut add) = (init.clone(), init.clone());
            transpose(&mut set, &src, ld, rows, n);
            add_transposed(&mut add, &src, ld, rows, n);
            for r in 0..rows {
                for p in 0..n {
                    let (i, v) = (p * rows + r, src[r * ld + p]);
                    assert_eq!(set[i], v, "transpose {rows}×{n} ({r}, {p})");
                    assert_eq!(add[i], init[i] + v, "add_transposed {rows}×{n} ({r}, {p})");
                }
            }
            // into rows 3 wider, the extra columns zeroed
            let wide = rows + 3;
            let mut pad = vec![f32::NAN; n * wide];
            transpose_padded(&mut pad, wide, &src, ld, rows, n);
            for p in 0..n {
                for r in 0..wide {
                    let want = if r < rows { src[r * ld + p] } else { 0.0 };
                    assert_eq!(
                        pad[p * wide + r],
                        want,
                        "transpose_padded {rows}×{n} ({r}, {p})"
                    );
                }
            }
        }
    }

    #[test]
    fn grad_tile_matches_naive() {
        // every table with direct kernels, at output counts in its own lanes (8 or 16)
        let Some(direct) = active().direct else {
            say(&format!(
                "SKIPPED: the {} kernels have no direct 1×1",
                active().name
            ));
            return;
        };
        let lanes = direct.block / 2;
        assert!(grad_tile_applies(lanes));
        // outputs: 2 vectors and 1 (8 or 16 lanes), several blocks; inputs: every tail of
        // the 6-row blocks (4, 2, 1 and their sums); positions: 0, 1 and odd counts
        for (o_v, i_n, n) in [
            (1, 1, 1),
            (2, 6, 5),
            (3, 13, 37),
            (5, 11, 64),
            (16, 40, 33),
            (4, 7, 0),
        ] {
            let o_n = o_v * lanes;
            let a_ld = n + 3;
            let a = data(i_n * a_ld, 4);
            // dY rows 2 floats longer than the tile, then its panels
            let dy = data(o_n * (n + 2), 5);
            let mut dyt = vec![f32::NAN; n * o_n];
            transpose_panels(&mut dyt, &dy, n + 2, o_n, n);
            let init = data(i_n * o_n, 6);
            let mut got = init.clone();
            // SAFETY: the buffers hold what `grad_tile` reads and writes (sizes above);
            // grad_tile_applies(o_n).
            unsafe {
                grad_tile(
                    got.as_mut_ptr(),
                    a.as_ptr(),
                    a_ld,
                    dyt.as_ptr(),
                    o_n,
                    i_n,
                    n,
                )
            };
            let mut want = init;
            for i in 0..i_n {
                for o in 0..o_n {
                    for p in 0..n {
                        want[i * o_n + o] += a[i * a_ld + p] * dy[o * (n + 2) + p];
                    }
                }
            }
            close(&got, &want, "grad_tile");
        }
    }
}
