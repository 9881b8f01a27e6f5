//! Direct 3×3, stride 1, padding 1 convolution (every 3×3 convolution in a dense layer),
//! forward and backward, on the register kernels of [`super::correlate`], where [`applies`]
//! holds and the route (`ops::route`) takes it; everything else (and the `portable`
//! kernels table) takes the im2col + GEMM path.
//!
//! **Why.** With few output channels (k = 12..48) the im2col + GEMM route is bound by
//! memory traffic, not arithmetic: im2col writes a `Cin·9 × len` matrix (113 MB per BC-100
//! layer at b64), the GEMM packs it again and uses each packed value for only 12 FMAs, and
//! backward-data needs a second such matrix plus col2im. `cargo bench --bench
//! shapes` measured 12–28 GFLOP/s for the forward GEMM and
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
//! Where it is faster (densenet121's 128 → 32 layers with enough 2×2 tiles), the route
//! takes [`super::winograd`] instead, which does 16 multiply-adds per 2×2 outputs where
//! this loop does 36 (36 per 4×4 where it does 144, with F(4×4)), or on small planes
//! [`forward_broadcast`]; [`forward_direct`] and [`backward_direct`] are this file's
//! kernels.
//!
//! The batch is processed in chunks of samples that fit the `col` scratch
//! ([`scratch_per_sample`] floats each). Register blocking: 6 or 4 output channels × 2
//! vectors of positions for [`correlate`] (see `correlate::correlate_part`), 4 output
//! channels × 3 taps for [`weight_grad`] (7 loads per 12 FMAs). Each kernel is one source
//! over the vector type of [`super::simd`], compiled for AVX2 and for AVX-512.

use super::correlate::{for_tiles, part_rows4, tile_len, Span, Weights, OB, PB};
use super::simd::{simd_entries, F32x};
use super::{active, active_direct, broadcast, BnRelu, ConvShape};
use crate::util::par::{per_channel, with_scratch, OnTeam, SyncPtr};
use rayon::prelude::*;

/// Signature of [`weight_grad_avx2`] and [`weight_grad_avx512`] (entries of
/// [`super::Direct`]).
pub type WeightGradFn = unsafe fn(&mut [[f32; 9]], &[f32], &[f32], usize, Padded, &[isize; 9]);

/// Whether the direct kernels handle this convolution's forward pass and weight gradient
/// on this CPU (any input channel count: the CIFAR stem has 3).
pub fn applies(s: &ConvShape) -> bool {
    s.is_same_3x3() && s.cout.is_multiple_of(OB) && active().direct.is_some()
}

/// Whether they handle its input gradient too (its output rows are the input channels).
pub fn applies_data(s: &ConvShape) -> bool {
    applies(s) && s.cin.is_multiple_of(OB)
}

/// The padded layout of a chunk of `ns` samples: each channel row holds a margin, the
/// samples' zero-padded planes (`(H+2)·(W+2)` values, a zero ring around the image) one
/// after the other, and a margin, so that every tap of every position computed (a whole
/// register block, or an AMX tile, past the last one) reads inside the row. The bf16 3×3
/// (`ops::bf16`) lays its pair planes out the same way.
#[derive(Clone, Copy, Debug)]
pub struct Padded {
    /// Padded row width W+2.
    pub(crate) wp: usize,
    /// Values of one sample's padded plane: (H+2)·(W+2).
    pub(crate) plane: usize,
    /// Positions of the chunk: ns·(H+2)·(W+2).
    pub(crate) body: usize,
    /// Zero values before and after the body of each channel row.
    pub(crate) margin: usize,
}

impl Padded {
    /// The layout of `ns` samples of `s`'s input.
    pub(crate) fn new(s: &ConvShape, ns: usize) -> Self {
        let wp = s.w + 2;
        let plane = (s.h + 2) * wp;
        Padded {
            wp,
            plane,
            body: ns * plane,
            margin: wp + 1 + PB,
        }
    }

    /// Zeros where a channel row `row` of `ns` samples holds no image value: the margins
    /// and the rings. (Only there: zeroing whole rows first wrote every value twice.)
    pub(crate) fn zero_ring<T: Copy + Default>(&self, row: &mut [T], h: usize, ns: usize) {
        let zero = T::default();
        row[..self.margin].fill(zero);
        row[self.margin + ns * self.plane..self.row()].fill(zero);
        for ni in 0..ns {
            let dp = &mut row[self.margin + ni * self.plane..][..self.plane];
            // top ring row and the left ring value of the first image row
            dp[..self.wp + 1].fill(zero);
            for y in 0..h {
                // right ring value of this row, left ring value of the next
                dp[(y + 2) * self.wp - 1..][..2].fill(zero);
            }
            // the rest of the bottom ring row
            dp[(h + 1) * self.wp + 1..].fill(zero);
        }
    }
    /// Length of one channel row, margins included.
    pub(crate) fn row(&self) -> usize {
        self.body + 2 * self.margin
    }
    /// Offsets of the 9 taps, row-major (ky, kx).
    pub(crate) fn offsets(&self) -> [isize; 9] {
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
    /// The position range (of the body) that covers every interior (real output) position.
    pub(crate) fn interior(&self) -> (usize, usize) {
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
    let affine_relu = active().affine_relu;
    // on the calling thread below PAR_MIN floats: a fork-join cost more than the copy
    // (batch 1 at 7×7: 14.5 µs to pad 128 rows of 81 floats)
    let rows = buf[..c * p.row()].par_chunks_mut(p.row()).enumerate();
    per_channel(rows, c * p.row(), |(ci, row)| {
        p.zero_ring(row, s.h, n1 - n0);
        for ni in n0..n1 {
            let sp = &src[ci * len + ni * hw..][..hw];
            let dp = &mut row[p.margin + (ni - n0) * p.plane..][..p.plane];
            for y in 0..s.h {
                let (d, v) = (&mut dp[(y + 1) * p.wp + 1..][..s.w], &sp[y * s.w..][..s.w]);
                match bn {
                    Some(bn) => affine_relu(d, v, bn.scale[ci], bn.shift[ci]),
                    None => d.copy_from_slice(v),
                }
            }
        }
    });
}

/// Copies the interior of padded rows back to samples `n0..n1` of `dst: [C][N·H·W]`
/// (overwriting).
fn unpad(dst: &mut [f32], buf: &[f32], c: usize, s: &ConvShape, n0: usize, n1: usize, p: Padded) {
    let (hw, len) = (s.h * s.w, s.n * s.h * s.w);
    let plane = (s.h + 2) * p.wp;
    let rows = dst[..c * len].par_chunks_mut(len).enumerate();
    per_channel(rows, c * (n1 - n0) * hw, |(ci, drow)| {
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

/// `out[o][p] = Σ_i Σ_t w[o][i][t] · inp[i][p + off_t]` for `p` in the span (`o_n` output
/// rows, `i_n` input rows, both laid out as `sp` says). Parallel over tiles of positions.
#[allow(clippy::too_many_arguments)]
fn correlate(
    out: &mut [f32],
    inp: &[f32],
    w: Weights<'_>,
    o_n: usize,
    i_n: usize,
    offs: &[isize],
    sp: Span,
) {
    let direct = active_direct("conv3x3");
    assert!(o_n.is_multiple_of(OB) && o_n > 0);
    assert_eq!(offs.len(), 9);
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
    let tile = tile_len(i_n, direct.block);
    let big = o_n * i_n * offs.len() * (sp.p1 - sp.p0) >= 1 << 17;
    let optr = SyncPtr(out.as_mut_ptr());
    // weights read in place: any part of 4·j rows is one call
    let part = part_rows4;
    for_tiles(
        sp.p0,
        sp.p1,
        tile,
        direct.block,
        o_n,
        big,
        part,
        |a, b, r0, r1| {
            if r0 == r1 {
                return;
            }
            let w = w.from_row(r0);
            // SAFETY: positions a..b of output rows r0..r1 are written by this task only (the
            // overrun, if any, lies past p1 in the last tile); the asserts above bound every
            // access; the table that holds the kernel runs on this CPU.
            unsafe {
                let ib = inp.as_ptr().add(sp.base);
                let o = optr.get().add(r0 * sp.ld);
                (direct.correlate9)(o, ib, sp.ld, w, r1 - r0, i_n, offs, sp, a, b)
            }
        },
    );
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
    with_scratch(&COLS, i_n * o_n, |cols| {
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
    let direct = active_direct("conv3x3");
    cols.par_chunks_mut(o_n)
        .enumerate()
        .team_for_each(|(i, col)| {
            // SAFETY: the table that holds the kernel runs on this CPU; reads stay in the rows
            // (see `weight_grad_avx2`).
            unsafe { (direct.weight_grad3x3)(col, dy, &x[i * row..][..row], o_n, p, offs) }
        });
    for (i, col) in cols.chunks(o_n).enumerate() {
        for (o, taps) in col.iter().enumerate() {
            for (t, v) in taps.iter().enumerate() {
                dw[(o * i_n + i) * 9 + t] += v;
            }
        }
    }
}

/// One input channel's slice of [`weight_grad`]: `out[o][t] = Σ_p dy[o][p]·x[p + off_t]`,
/// generic over the vector type. Whole vectors from the interior's first position; the
/// last may run past its end into the ring and the margin, where `dy` = 0 (the margin is
/// [`PB`] ≥ 2 vectors + 2 floats wide, so every read stays in the row).
///
/// # Safety
/// `dy` holds `o_n` padded rows and `x` one; the CPU must run `V`.
#[inline(always)]
unsafe fn weight_grad_rows<V: F32x>(
    out: &mut [[f32; 9]],
    dy: &[f32],
    x: &[f32],
    o_n: usize,
    p: Padded,
    offs: &[isize; 9],
) {
    let l = V::LANES;
    let row = p.row();
    let (p0, p1) = p.interior();
    let nvec = (p1 - p0).div_ceil(l);
    assert!(p.margin >= l + 2 && dy.len() >= o_n * row && x.len() >= row);
    let xb = x.as_ptr().add(p.margin + p0);
    for ob in 0..o_n / OB {
        let db = dy.as_ptr().add(ob * OB * row + p.margin + p0);
        for ky in 0..3 {
            let off = offs[ky * 3];
            let mut acc = [[V::zero(); 3]; OB];
            for j in 0..nvec {
                let xp = xb.offset(off).add(l * j);
                let xv = [V::load(xp), V::load(xp.add(1)), V::load(xp.add(2))];
                for (oo, acc) in acc.iter_mut().enumerate() {
                    let d = V::load(db.add(oo * row + l * j));
                    for (acc, &xv) in acc.iter_mut().zip(&xv) {
                        *acc = d.mul_add(xv, *acc);
                    }
                }
            }
            for (oo, acc) in acc.iter().enumerate() {
                for (kx, &v) in acc.iter().enumerate() {
                    out[ob * OB + oo][ky * 3 + kx] = v.sum();
                }
            }
        }
    }
}

simd_entries!(weight_grad_rows => weight_grad_avx2, weight_grad_avx512 (
    out: &mut [[f32; 9]],
    dy: &[f32],
    x: &[f32],
    o_n: usize,
    p: Padded,
    offs: &[isize; 9],
));

/// Forward: `y[Cout][N·H·W] = conv3×3(x)`, chunked over samples through `col`; with `bn`,
/// of `relu(x·scale + shift)` instead (see [`pad`]).
pub fn forward_direct(
    y: &mut [f32],
    x: &[f32],
    bn: Option<BnRelu>,
    w: &[f32],
    s: &ConvShape,
    col: &mut [f32],
) {
    debug_assert!(applies(s));
    assert_eq!(w.len(), s.cout * s.cin * 9);
    let wf = Weights::forward(w, s.cin, 9);
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
        correlate(yout, xin, wf, s.cout, s.cin, &p.offsets(), p.span());
        unpad(y, yout, s.cout, s, n0, n1, p);
        n0 = n1;
    }
}

/// [`forward_direct`] through [`broadcast`]: output channels in the vector, positions picked one
/// by one (no work on the padding ring). Tasks are groups of output channels × runs of
/// positions, at least as many as threads.
pub fn forward_broadcast(
    y: &mut [f32],
    x: &[f32],
    bn: Option<BnRelu>,
    w: &[f32],
    s: &ConvShape,
    col: &mut [f32],
) {
    debug_assert!(applies(s));
    assert_eq!(w.len(), s.cout * s.cin * 9);
    let (hw, len) = (s.h * s.w, s.n * s.h * s.w);
    let ns = chunk(s, col.len());
    let mut n0 = 0;
    while n0 < s.n {
        let n1 = (n0 + ns).min(s.n);
        let p = Padded::new(s, n1 - n0);
        assert!(
            col.len() >= s.cin * p.row(),
            "conv3x3: col scratch too small"
        );
        let xin = &mut col[..s.cin * p.row()];
        pad(xin, x, bn, s.cin, s, n0, n1, p);
        // windows from the body's start: output (y, x)'s top-left tap is padded (y, x)
        let plane = broadcast::Plane {
            ho: s.h,
            wo: s.w,
            wpad: p.wp,
            plane: (s.h + 2) * p.wp,
            stride: 1,
        };
        let shape = (s.cout, s.cin, 3);
        let m = (n1 - n0) * hw;
        broadcast::convolve(y, len, n0 * hw, xin, p.margin, p.row(), w, shape, plane, m);
        n0 = n1;
    }
}

/// Backward: `dw += dy ⋆ x` (of `relu(x·scale + shift)` with `bn`); `dx`, if given, is
/// **overwritten** with the input gradient.
#[allow(clippy::too_many_arguments)]
pub fn backward_direct(
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
    assert_eq!(w.len(), s.cout * s.cin * 9);
    // backward-data: the forward weights `[Cout][Cin][9]` read transposed and flipped
    let wflip = Weights::backward_data(w, s.cin, 9);
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
        if let Some(dx) = dx.as_deref_mut() {
            let dxp = &mut rest[..s.cin * p.row()];
            correlate(dxp, dyp, wflip, s.cin, s.cout, &p.offsets(), p.span());
            unpad(dx, dxp, s.cin, s, n0, n1, p);
        }
        n0 = n1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels;
    use crate::kernels::testutil::{close, data, on_threads, shape3x3 as shape};
    use crate::ops::conv::{im2col_backward, im2col_forward};

    /// The direct kernels against the im2col + GEMM path (itself tested against a naive
    /// convolution in `conv`), on odd sizes, 1-row and 1-column images, and scratch sizes
    /// that force one sample per chunk as well as the whole batch in one.
    #[test]
    fn direct_matches_im2col() {
        if no_direct_kernels() {
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
        check_against_im2col(&shapes);
    }

    /// Batch 1 at densenet121's 14×14 and 7×7: one tile of positions, so the output rows
    /// are split between the threads (`part_rows4`), on 2 and 3 threads (uneven parts),
    /// forward and backward-data (its 128 output rows too).
    #[test]
    fn row_parts_match_im2col() {
        if no_direct_kernels() {
            return;
        }
        for threads in [2, 3] {
            on_threads(threads, || {
                check_against_im2col(&[shape(1, 128, 32, 14, 14), shape(1, 64, 36, 7, 7)])
            });
        }
    }

    /// The broadcast route ([`forward_broadcast`]) against im2col + GEMM: output counts
    /// below, at and above a group (12, 16, 32, 48), odd planes, 1-row and 1-column
    /// images, samples across chunks and runs, BN-ReLU on the input, 1 to 3 threads (so
    /// runs end inside a register block and groups split between threads).
    #[test]
    fn broadcast_matches_im2col() {
        if no_direct_kernels() {
            return;
        }
        let shapes = [
            shape(1, 128, 32, 7, 7),
            shape(1, 16, 32, 14, 14),
            shape(3, 8, 12, 5, 7),
            shape(2, 12, 48, 1, 11),
            shape(2, 20, 16, 9, 1),
            shape(1, 4, 4, 2, 2),
            shape(2, 3, 24, 6, 5),
        ];
        for threads in [1, 2, 3] {
            on_threads(threads, || {
                for &s in &shapes {
                    let x = data(s.cin * s.n * s.h * s.w, 1);
                    let w = data(s.cout * s.col_rows(), 2);
                    let (scale, shift) = (data(s.cin, 3), data(s.cin, 4));
                    let bn = BnRelu {
                        scale: &scale,
                        shift: &shift,
                    };
                    let a: Vec<f32> = x
                        .chunks(s.n * s.h * s.w)
                        .enumerate()
                        .flat_map(|(i, r)| {
                            let (sc, sh) = (scale[i], shift[i]);
                            r.iter().map(move |v| (v * sc + sh).max(0.0))
                        })
                        .collect();
                    let mut want = vec![0.0; s.cout * s.n * s.h * s.w];
                    let mut big = vec![0.0; (s.cin * 9) * s.n * s.h * s.w];
                    im2col_forward(&mut want, &a, &w, &s, &mut big);
                    for samples in [1, s.n] {
                        let mut col = vec![f32::NAN; scratch_per_sample(&s) * samples];
                        let mut y = vec![f32::NAN; want.len()];
                        forward_broadcast(&mut y, &x, Some(bn), &w, &s, &mut col);
                        close(&y, &want, &format!("{s:?} {threads} threads y"));
                    }
                }
            });
        }
    }

    /// [`broadcast::forward_padded`] and [`broadcast::weight_grad_padded`] on 7×7
    /// stride-2 convolutions (the ImageNet stem's) and a stride-2 3×3 against im2col +
    /// GEMM: odd sizes, several samples with `col`
    /// for one of them or for all, output counts below and above a group, 1 to 3 threads.
    #[test]
    fn padded_route_matches_im2col() {
        if no_direct_kernels() {
            return;
        }
        let conv = |n, cin, cout, h, w, k| ConvShape {
            n,
            cin,
            cout,
            h,
            w,
            k,
            stride: 2,
            pad: k / 2,
        };
        let shapes = [
            conv(2, 3, 64, 17, 15, 7),
            conv(1, 3, 12, 9, 9, 7),
            conv(3, 2, 20, 8, 11, 7),
            conv(2, 5, 16, 9, 6, 3),
            // 380 positions a sample: the weight gradient's tiles of 256 span samples
            conv(2, 3, 16, 40, 38, 7),
        ];
        for threads in [1, 2, 3] {
            on_threads(threads, || {
                for &s in &shapes {
                    let x = data(s.cin * s.n * s.h * s.w, 1);
                    let w = data(s.cout * s.col_rows(), 2);
                    let out = s.cout * s.n * s.ho() * s.wo();
                    let mut want = vec![0.0; out];
                    let mut big = vec![0.0; s.col_per_sample() * s.n];
                    im2col_forward(&mut want, &x, &w, &s, &mut big);
                    let plane = (s.h + 2 * s.pad) * (s.w + 2 * s.pad);
                    for samples in [1, s.n] {
                        let mut col = vec![f32::NAN; s.cin * plane * samples];
                        let mut y = vec![f32::NAN; out];
                        assert!(broadcast::forward_padded(&mut y, &x, &w, &s, &mut col));
                        close(&y, &want, &format!("{s:?} {threads} threads y"));
                    }
                    // the weight gradient, accumulated onto 0.5
                    let dy = data(out, 3);
                    let mut want_dw = vec![0.5; w.len()];
                    im2col_backward(None, Some(&mut want_dw), &dy, &x, &w, &s, &mut big);
                    for samples in [1, s.n] {
                        let mut col = vec![f32::NAN; s.cin * plane * samples];
                        let mut dw = vec![0.5; w.len()];
                        assert!(broadcast::weight_grad_padded(
                            &mut dw, &dy, &x, &s, &mut col
                        ));
                        close(&dw, &want_dw, &format!("{s:?} {threads} threads dw"));
                    }
                    // no room for one sample: nothing done, the caller takes another route
                    let mut y = vec![f32::NAN; out];
                    let mut col = vec![0.0; s.cin * plane - 1];
                    assert!(!broadcast::forward_padded(&mut y, &x, &w, &s, &mut col));
                    assert!(y.iter().all(|v| v.is_nan()));
                    let mut dw = vec![f32::NAN; w.len()];
                    assert!(!broadcast::weight_grad_padded(
                        &mut dw, &dy, &x, &s, &mut col
                    ));
                    assert!(dw.iter().all(|v| v.is_nan()));
                }
            });
        }
    }

    /// Says SKIPPED where the active table has no direct 3×3 (`portable`).
    fn no_direct_kernels() -> bool {
        let none = kernels::active().direct.is_none();
        if none {
            crate::kernels::testutil::say(&format!(
                "SKIPPED: the {} kernels have no direct 3×3",
                kernels::active().name
            ));
        }
        none
    }

    fn check_against_im2col(shapes: &[ConvShape]) {
        for &s in shapes {
            assert!(applies(&s));
            let data_grad = applies_data(&s);
            assert_eq!(data_grad, s.cin != 3);
            let x = data(s.cin * s.n * s.h * s.w, 1);
            let w = data(s.cout * s.col_rows(), 2);
            let dy = data(s.cout * s.n * s.h * s.w, 3);
            let mut big = vec![0.0; (s.cin * 9) * s.n * s.h * s.w];
            for samples in [1, s.n] {
                let mut col = vec![f32::NAN; scratch_per_sample(&s) * samples];
                let mut y = vec![f32::NAN; dy.len()];
                forward_direct(&mut y, &x, None, &w, &s, &mut col);
                let mut want = vec![0.0; dy.len()];
                im2col_forward(&mut want, &x, &w, &s, &mut big);
                close(&y, &want, &format!("{s:?} y"));

                let (mut dx, mut dw) = (vec![f32::NAN; x.len()], vec![0.5; w.len()]);
                let dxo = data_grad.then_some(&mut dx[..]);
                backward_direct(dxo, &mut dw, &dy, &x, None, &w, &s, &mut col);
                let (mut wdx, mut wdw) = (vec![0.0; x.len()], vec![0.5; w.len()]);
                im2col_backward(Some(&mut wdx), Some(&mut wdw), &dy, &x, &w, &s, &mut big);
                if data_grad {
                    close(&dx, &wdx, &format!("{s:?} dx"));
                }
                close(&dw, &wdw, &format!("{s:?} dw"));
            }
        }
    }
}
