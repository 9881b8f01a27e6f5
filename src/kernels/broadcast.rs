//! Direct convolution with **output channels in the vector** (ONNX Runtime's way, its
//! NCHWc kernels) on our zero-padded channel-major input: the 3×3 of small planes
//! (densenet121's 14×14 and 7×7, where `ops::route` takes it) and the ImageNet stem's 7×7 stride 2
//! ([`forward_padded`], [`weight_grad_padded`]).
//!
//! **Why.** [`super::correlate`] puts positions in the vector: a 7×7 plane's 49 positions
//! span 61 of its padded layout, 4 blocks of 16 with the ring, and each block runs a
//! pass over all 1152 weights of its output rows. Here a register block is `NV` vectors
//! of output channels (a *group*: 16 on AVX2, 32 on AVX-512) × `P` positions, each input
//! value broadcast once per group: positions are picked one by one, so the padding ring
//! costs nothing and any count of positions fills the blocks but the last.
//!
//! **Layout.** The weights are packed per call ([`pack`]) as `[group][i][tap][G]` (zeros
//! past the last output channel), the input is a zero-padded layout (the 3×3's of
//! [`super::conv3x3`], BN-ReLU applied while padding; the stem's own), and a task writes
//! its outputs position-major (`[p][G]`) into a scratch, then transposed into
//! `y: [O][N·H·W]`. The window of each position starts at its own pointer, its taps one
//! addressing mode away (`ky·wpad + kx`), so any stride costs the same.
//!
//! **The stem.** The 7×7 stride-2 stem (3 → 64) took im2col tiles through the direct 1×1
//! kernel; here (`cargo bench --bench shapes -- stem_routes`, Zen 3, 2 threads) it takes
//! 0.74–0.90 of that time at batch 1 and 16 (the upper end in a quiet hour), which moved whole
//! densenet121 evaluations by 0.991 (batch 1, 100 pairs alternating per pass) and 0.983
//! (batch 16, 10 pairs).
//! Its weight gradient ([`weight_grad_padded`]) turns the block around: output channels ×
//! taps, summed over the positions of a tile; 0.58–0.81 of im2col + GEMM's time.
//!
//! **Register block.** AVX2: 2 vectors × 6 positions, so 12 accumulators, 2 weight
//! vectors and a broadcast take 15 of the 16 registers; per input channel and tap 2 loads
//! and 6 broadcasts feed 12 FMAs. AVX-512: 2 × 12 (24 accumulators of 32). Input channels
//! go in groups whose packed weights stay in L1 (16 KiB), every position block visiting a
//! group in turn.
//!
//! **Not for the 1×1.** The same block with one tap on plain rows (tried on the batch-1
//! densenet121 1×1 shapes, `pointwise_routes`, quiet Zen 3, 2 threads) took 1.05–1.19×
//! the `gemm` crate's time at 14×14, 1.20× at 7×7 and 1.22–1.51× on larger planes:
//! packing 128 × up to 1024 weights per call is most of the gap at 7×7, and weights
//! packed once per model would need to know when the parameters change (they are a
//! public buffer), so the 1×1 keeps the GEMM.

use super::conv1x1::transpose_padded;
use super::simd::{simd_entries, F32x};
use super::{active, active_direct, prepack, ConvShape};
use crate::util::par::{with_scratch, OnTeam, SyncPtr};
use rayon::prelude::*;

/// Signature of [`task_avx2`] and [`task_avx512`] (an entry of [`super::Direct`]).
pub type TaskFn = unsafe fn(*mut f32, *const f32, usize, *const f32, usize, Plane, usize, usize);

/// Where each output position's window lies in the input's layout: samples whose outputs
/// are `ho × wo`, read from zero-padded planes of `plane` floats in rows of `wpad`, the
/// window of output `(oy, ox)` starting at row `stride·oy`, column `stride·ox` of its
/// sample's plane (for the 3×3: `conv3x3::Padded`'s body, stride 1).
#[derive(Clone, Copy, Debug)]
pub struct Plane {
    /// Output height.
    pub ho: usize,
    /// Output width.
    pub wo: usize,
    /// Floats per padded input row.
    pub wpad: usize,
    /// Floats per sample's padded plane.
    pub plane: usize,
    /// The convolution's stride.
    pub stride: usize,
}

impl Plane {
    /// The input index of the top-left tap of output position `p`'s window (positions
    /// sample-major, then row, then column).
    #[inline(always)]
    fn window(self, p: usize) -> usize {
        let hw = self.ho * self.wo;
        let (n, r) = (p / hw, p % hw);
        let (oy, ox) = (r / self.wo, r % self.wo);
        n * self.plane + self.stride * (oy * self.wpad + ox)
    }
}

/// `y[o][y0 + p] = Σ_i Σ_ky Σ_kx w[o][i][ky][kx] · inp[base + i·ld + plane.window(p) + ky·wpad + kx]`
/// for the output positions `p` in `0..m` of `plane` and every output `o < o_n` (`y`'s
/// rows are `y_ld` floats apart): a `k × k` convolution (3 or 7) with weights
/// `w: [O][I][k][k]` on a zero-padded input. Tasks are groups of output channels × runs of whole register
/// blocks, at least as many as threads and none over 1024 positions; each packs its
/// group's weights ([`pack`]), runs the kernel into a scratch `[p][G]`, and transposes
/// that into `y`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn convolve(
    y: &mut [f32],
    y_ld: usize,
    y0: usize,
    inp: &[f32],
    base: usize,
    ld: usize,
    w: &[f32],
    (o_n, i_n, k): (usize, usize, usize),
    plane: Plane,
    m: usize,
) {
    let direct = active_direct("broadcast");
    let kernel = match k {
        3 => direct.broadcast3,
        7 => direct.broadcast7,
        _ => panic!("broadcast: no {k}×{k} kernel"),
    };
    let (g, pb, taps) = (direct.broadcast_group, direct.broadcast_block, k * k);
    assert_eq!(w.len(), o_n * i_n * taps);
    if m == 0 || o_n == 0 {
        return;
    }
    // every tap of every position (and of the repeats that fill the last block) in `inp`
    let last = plane.window(m - 1) + (k - 1) * (plane.wpad + 1);
    assert!(i_n > 0 && inp.len() > (i_n - 1) * ld + base + last);
    assert!(y_ld >= y0 + m && y.len() >= (o_n - 1) * y_ld + y0 + m);
    thread_local! {
        static PACKED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        static OUT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let groups = o_n.div_ceil(g);
    let blocks = m.div_ceil(pb);
    let threads = rayon::current_num_threads();
    let runs = threads.div_ceil(groups).max(m.div_ceil(1024)).min(blocks);
    let yp = SyncPtr(y.as_mut_ptr());
    // a group's packed weights: `[i][tap][G]`
    let per_group = i_n * taps * g;
    // in evaluation, every group's, packed once for the frozen model's passes
    let frozen = prepack::packed(
        prepack::Layout::Broadcast { group: g },
        w,
        groups * per_group,
        |all| {
            all.par_chunks_mut(per_group)
                .enumerate()
                .team_for_each(|(grp, wp)| pack(wp, w, o_n, i_n, taps, g, grp))
        },
    );
    (0..groups * runs).into_par_iter().team_for_each(|task| {
        let (grp, run) = (task / runs, task % runs);
        let p0 = (blocks * run / runs * pb).min(m);
        let p1 = (blocks * (run + 1) / runs * pb).min(m);
        if p1 <= p0 {
            return;
        }
        // otherwise each task packs its group's weights (18 K floats for 16 outputs of a
        // 128-input 3×3: a few µs, in parallel, where one packing for all cost a 7×7 call
        // a third of its time)
        let own = if frozen.is_some() { 0 } else { per_group };
        with_scratch(&PACKED, own, |scratch| {
            let wp: &[f32] = match &frozen {
                Some(all) => &all[grp * per_group..][..per_group],
                None => {
                    pack(scratch, w, o_n, i_n, taps, g, grp);
                    scratch
                }
            };
            with_scratch(&OUT, (p1 - p0).div_ceil(pb) * pb * g, |out| {
                // SAFETY: the asserts above bound every tap of positions p0..p1 (and the
                // repeats of p1 − 1) inside `inp`; `wp` holds the group's packed weights,
                // `out` the run's blocks; the table's kernel runs on this CPU.
                unsafe {
                    kernel(
                        out.as_mut_ptr(),
                        inp.as_ptr().add(base),
                        ld,
                        wp.as_ptr(),
                        i_n,
                        plane,
                        p0,
                        p1,
                    )
                };
                // position-major to channel rows
                for j in 0..g.min(o_n - grp * g) {
                    // SAFETY: row grp·g + j < o_n of y, columns y0 + p0..p1 of it (inside
                    // y, asserted): this task's alone.
                    let row = unsafe {
                        std::slice::from_raw_parts_mut(
                            yp.get().add((grp * g + j) * y_ld + y0 + p0),
                            p1 - p0,
                        )
                    };
                    for (q, v) in row.iter_mut().enumerate() {
                        *v = out[q * g + j];
                    }
                }
            });
        });
    });
}

/// The scratch of one sample of [`forward_padded`] and [`weight_grad_padded`]: its
/// zero-padded planes.
pub fn padded_per_sample(s: &ConvShape) -> usize {
    s.cin * (s.h + 2 * s.pad) * (s.w + 2 * s.pad)
}

/// Where [`forward_padded`] and [`weight_grad_padded`] apply (k 3 or 7, padding k/2, a
/// table with the kernels, and a `col` of `col_len` floats that holds a padded sample):
/// the windows of `s` in its padded planes, and the samples per chunk.
fn padded_geometry(s: &ConvShape, col_len: usize) -> Option<(Plane, usize)> {
    let wpad = s.w + 2 * s.pad;
    let plane = (s.h + 2 * s.pad) * wpad;
    let ns = (col_len / (s.cin * plane).max(1)).min(s.n);
    let fits = ns > 0 && matches!(s.k, 3 | 7) && s.pad == s.k / 2;
    (fits && active().direct.is_some()).then_some((
        Plane {
            ho: s.ho(),
            wo: s.wo(),
            wpad,
            plane,
            stride: s.stride,
        },
        ns,
    ))
}

/// `y[Cout][N·Ho·Wo]` = the `k × k` convolution `s` (k 3 or 7, padding k/2, any
/// stride; no bias) of `x: [Cin][N·H·W]` through [`convolve`]: as many samples at a time
/// as `col` holds are copied into zero-padded planes there. The ImageNet stem's route
/// (7×7, stride 2). Returns false, doing nothing, where `col` holds no sample or the
/// table has no kernels.
pub fn forward_padded(y: &mut [f32], x: &[f32], w: &[f32], s: &ConvShape, col: &mut [f32]) -> bool {
    let Some((geometry, ns)) = padded_geometry(s, col.len()) else {
        return false;
    };
    let plane = geometry.plane;
    let (hw, how) = (s.h * s.w, s.ho() * s.wo());
    let len = s.n * hw;
    assert!(x.len() >= s.cin * len && y.len() >= s.cout * s.n * how);
    let mut n0 = 0;
    while n0 < s.n {
        let n1 = (n0 + ns).min(s.n);
        let ld = (n1 - n0) * plane;
        let buf = &mut col[..s.cin * ld];
        pad_planes(buf, x, s, n0, n1);
        let shape = (s.cout, s.cin, s.k);
        let m = (n1 - n0) * how;
        convolve(y, s.n * how, n0 * how, buf, 0, ld, w, shape, geometry, m);
        n0 = n1;
    }
    true
}

/// Copies samples `n0..n1` of `x: [Cin][N·H·W]` into zero-padded planes of
/// `(H+2·pad) × (W+2·pad)`, one row of `buf` per channel (in parallel over channels).
fn pad_planes(buf: &mut [f32], x: &[f32], s: &ConvShape, n0: usize, n1: usize) {
    let wp = s.w + 2 * s.pad;
    let plane = (s.h + 2 * s.pad) * wp;
    let (hw, len) = (s.h * s.w, s.n * s.h * s.w);
    let ld = (n1 - n0) * plane;
    buf[..s.cin * ld]
        .par_chunks_mut(ld)
        .enumerate()
        .team_for_each(|(ci, row)| {
            for (ni, dst) in (n0..n1).zip(row.chunks_exact_mut(plane)) {
                let src = &x[ci * len + ni * hw..][..hw];
                dst[..s.pad * wp].fill(0.0);
                for (r, d) in dst[s.pad * wp..][..s.h * wp]
                    .chunks_exact_mut(wp)
                    .enumerate()
                {
                    d[..s.pad].fill(0.0);
                    d[s.pad..s.pad + s.w].copy_from_slice(&src[r * s.w..][..s.w]);
                    d[s.pad + s.w..].fill(0.0);
                }
                dst[(s.pad + s.h) * wp..].fill(0.0);
            }
        });
}

/// Positions per tile of [`weight_grad_padded`]: its `dYᵀ` tile (`[p][O]`, 64 outputs)
/// stays in L1 and L2 while every group and block of taps sweeps it.
const DW_TILE: usize = 256;

/// `dw += dy ⋆ x` for the convolution `s` of [`forward_padded`] (its weight gradient; no
/// input gradient): `dw[o][t] += Σ_p dy[o][p] · x[window(p) + off_t]` on the padded copy
/// in `col`, with output channels in the vector. A register block is a group of output
/// channels × a block of taps, over a tile of positions: per position 2 vector loads of
/// `dYᵀ` and a broadcast per tap feed 2 FMAs per tap. Tiles are dealt to one partial per
/// thread, added in a fixed order, so the result depends on the thread count only.
/// Returns false, doing nothing, where [`forward_padded`] would.
pub fn weight_grad_padded(
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    s: &ConvShape,
    col: &mut [f32],
) -> bool {
    let (Some((geometry, ns)), Some(direct)) = (padded_geometry(s, col.len()), active().direct)
    else {
        return false;
    };
    let (plane, wp) = (geometry.plane, geometry.wpad);
    let (g, tb) = (direct.broadcast_group, direct.broadcast_block);
    let taps = s.cin * s.k * s.k;
    let taps_pad = taps.next_multiple_of(tb);
    let groups = s.cout.div_ceil(g);
    let (how, ldy) = (s.ho() * s.wo(), s.n * s.ho() * s.wo());
    assert_eq!(dw.len(), s.cout * taps);
    assert!(dy.len() >= s.cout * ldy && x.len() >= s.cin * s.n * s.h * s.w);
    let threads = rayon::current_num_threads();
    let part = groups * taps_pad * g;
    thread_local! {
        static PARTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        static OFFS: std::cell::RefCell<Vec<isize>> = const { std::cell::RefCell::new(Vec::new()) };
        static TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        static WIN: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let o_pad = groups * g;
    with_scratch(&PARTS, threads * part, |parts| {
        parts.fill(0.0);
        let mut n0 = 0;
        while n0 < s.n {
            let n1 = (n0 + ns).min(s.n);
            let ld = (n1 - n0) * plane;
            let buf = &mut col[..s.cin * ld];
            pad_planes(buf, x, s, n0, n1);
            let buf = &*buf;
            let m = (n1 - n0) * how;
            // every tap of every window in `buf` (as `convolve` asserts for the forward)
            let last = geometry.window(m - 1) + (s.k - 1) * (wp + 1);
            assert!(buf.len() > (s.cin - 1) * ld + last);
            let tiles = m.div_ceil(DW_TILE);
            let used = threads.min(tiles);
            with_scratch(&OFFS, taps_pad, |offs| {
                // tap t = (c, ky, kx) at c·ld + ky·wpad + kx from a window's start; the
                // taps that pad the last block read the window's start, never added
                for (t, off) in offs.iter_mut().enumerate() {
                    let (c, r) = (t / (s.k * s.k), t % (s.k * s.k));
                    *off = if t < taps {
                        (c * ld + (r / s.k) * wp + r % s.k) as isize
                    } else {
                        0
                    };
                }
                let offs = &*offs;
                parts[..used * part]
                    .par_chunks_mut(part)
                    .enumerate()
                    .team_for_each(|(k, acc)| {
                        with_scratch(&TILE, DW_TILE * o_pad, |dyt| {
                            with_scratch(&WIN, DW_TILE, |win| {
                                for t in (k..tiles).step_by(used) {
                                    let (p0, p1) = (t * DW_TILE, ((t + 1) * DW_TILE).min(m));
                                    let rows = &dy[n0 * how + p0..];
                                    transpose_padded(dyt, o_pad, rows, ldy, s.cout, p1 - p0);
                                    for (w, p) in win.iter_mut().zip(p0..p1) {
                                        *w = geometry.window(p);
                                    }
                                    // SAFETY: every window plus every tap offset lies in
                                    // `buf` (the chunk's windows, taps inside the padded
                                    // planes); `acc` holds groups·taps_pad·g floats, `dyt`
                                    // p1 − p0 rows of o_pad; the kernel runs on this CPU.
                                    unsafe {
                                        (direct.broadcast_dw)(
                                            acc.as_mut_ptr(),
                                            dyt.as_ptr(),
                                            o_pad,
                                            groups,
                                            buf.as_ptr(),
                                            &win[..p1 - p0],
                                            offs,
                                        )
                                    };
                                }
                            });
                        });
                    });
            });
            n0 = n1;
        }
        // dw[o][t] += Σ_parts acc[grp][t][j], o = grp·g + j, parts in order
        for acc in parts.chunks_exact(part) {
            for o in 0..s.cout {
                let (grp, j) = (o / g, o % g);
                for (t, d) in dw[o * taps..][..taps].iter_mut().enumerate() {
                    *d += acc[(grp * taps_pad + t) * g + j];
                }
            }
        }
    });
    true
}

/// Packs group `grp` of `w: [O][I·taps]` for groups of `g` output channels:
/// `wp[c][j] = w[grp·g + j][c]`, zero where `grp·g + j ≥ O`. `wp` holds `I·taps·g` floats.
fn pack(wp: &mut [f32], w: &[f32], o_n: usize, i_n: usize, taps: usize, g: usize, grp: usize) {
    let k = i_n * taps;
    assert_eq!(w.len(), o_n * k);
    assert!(grp * g < o_n && wp.len() >= k * g);
    let real = g.min(o_n - grp * g);
    // the group's rows turned into `[c][g]`, zero past the last output channel
    transpose_padded(wp, g, &w[grp * g * k..][..real * k], k, real, k);
}

/// One task: output positions `p0..p1` (of `plane`) of one group, for `i_n` input rows
/// `ld` floats apart from `inp` (the padded layout's base), with the group's packed
/// weights `wp: [i][K·K][G]` (taps row-major, as OIHW has them). Writes `out[(p − p0)·G + j]` for
/// the positions rounded up to whole blocks (the last block's extra rows are scratch).
///
/// # Safety
/// `inp` and `wp` readable as described, for every position's taps; `out` writable for
/// `(p1 − p0).div_ceil(P)·P·G` floats; the CPU runs `V`; `p1 > p0`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn task<V: F32x, const NV: usize, const P: usize, const K: usize>(
    out: *mut f32,
    inp: *const f32,
    ld: usize,
    wp: *const f32,
    i_n: usize,
    plane: Plane,
    p0: usize,
    p1: usize,
) {
    let g = NV * V::LANES;
    // input channels whose packed weights fill 16 KiB of L1
    let ib = ((16 << 10) / (4 * K * K * g)).max(1);
    let wpad = plane.wpad;
    let blocks = (p1 - p0).div_ceil(P);
    let mut i0 = 0;
    while i0 < i_n {
        let i1 = (i0 + ib).min(i_n);
        for b in 0..blocks {
            // the block's positions; past p1, the last one again (its rows are scratch)
            let mut pos = [0usize; P];
            for (k, q) in pos.iter_mut().enumerate() {
                *q = plane.window((p0 + b * P + k).min(p1 - 1));
            }
            let o = out.add(b * P * g);
            let mut acc = [[V::zero(); NV]; P];
            if i0 > 0 {
                for (k, a) in acc.iter_mut().enumerate() {
                    for (v, a) in a.iter_mut().enumerate() {
                        *a = V::load(o.add(k * g + v * V::LANES));
                    }
                }
            }
            // each position's window, top-left tap, in input row i0: taps then lie at
            // `ky·wpad + kx` from it, one addressing mode with a constant displacement
            let mut xs = [inp; P];
            for (xk, &q) in xs.iter_mut().zip(&pos) {
                *xk = inp.add(i0 * ld + q);
            }
            let mut w = wp.add(i0 * K * K * g);
            for _ in i0..i1 {
                for ky in 0..K {
                    let row = ky * wpad;
                    for kx in 0..K {
                        let mut wv = [V::zero(); NV];
                        for (v, wv) in wv.iter_mut().enumerate() {
                            *wv = V::load(w.add(v * V::LANES));
                        }
                        w = w.add(g);
                        for (a, xk) in acc.iter_mut().zip(&xs) {
                            let s = V::splat(xk.add(row + kx));
                            for (a, wv) in a.iter_mut().zip(&wv) {
                                *a = wv.mul_add(s, *a);
                            }
                        }
                    }
                }
                for xk in xs.iter_mut() {
                    *xk = xk.add(ld);
                }
            }
            for (k, a) in acc.iter().enumerate() {
                for (v, a) in a.iter().enumerate() {
                    a.store(o.add(k * g + v * V::LANES));
                }
            }
        }
        i0 = i1;
    }
}

/// Signature of [`dw_avx2`] and [`dw_avx512`] (an entry of [`super::Direct`]).
pub type DwFn = unsafe fn(*mut f32, *const f32, usize, usize, *const f32, &[usize], &[isize]);

/// The weight-gradient tile of [`weight_grad_padded`]: for every group `grp` of output
/// channels and every block of `TB` taps, `acc[grp][t][j] += Σ_q dyt[q·ldt + grp·G + j] ·
/// x[win[q] + offs[t]]` over the tile's positions `q`.
///
/// # Safety
/// `acc` holds `groups·offs.len()·G` floats (`offs.len()` a multiple of `TB`), `dyt`
/// `win.len()` rows of `ldt ≥ groups·G`; every `x[win[q] + offs[t]]` is readable; the CPU
/// runs `V`.
#[inline(always)]
unsafe fn dw_tile<V: F32x, const NV: usize, const TB: usize>(
    acc: *mut f32,
    dyt: *const f32,
    ldt: usize,
    groups: usize,
    x: *const f32,
    win: &[usize],
    offs: &[isize],
) {
    let g = NV * V::LANES;
    let blocks = offs.len() / TB;
    for grp in 0..groups {
        for b in 0..blocks {
            let o = acc.add(((grp * blocks + b) * TB) * g);
            let off: &[isize] = &offs[b * TB..][..TB];
            let mut a = [[V::zero(); NV]; TB];
            for (t, a) in a.iter_mut().enumerate() {
                for (v, a) in a.iter_mut().enumerate() {
                    *a = V::load(o.add(t * g + v * V::LANES));
                }
            }
            let mut d = dyt.add(grp * g);
            for &wn in win {
                let mut dv = [V::zero(); NV];
                for (v, dv) in dv.iter_mut().enumerate() {
                    *dv = V::load(d.add(v * V::LANES));
                }
                d = d.add(ldt);
                let xp = x.add(wn);
                for (a, &ot) in a.iter_mut().zip(off) {
                    let sv = V::splat(xp.offset(ot));
                    for (a, dv) in a.iter_mut().zip(&dv) {
                        *a = dv.mul_add(sv, *a);
                    }
                }
            }
            for (t, a) in a.iter().enumerate() {
                for (v, a) in a.iter().enumerate() {
                    a.store(o.add(t * g + v * V::LANES));
                }
            }
        }
    }
}

// AVX2: 2 vectors (16 output channels) × 6 taps; AVX-512: 2 vectors (32) × 12 taps
simd_entries!(dw_tile [2, 6; 2, 12] => dw_avx2, dw_avx512 (
    acc: *mut f32,
    dyt: *const f32,
    ldt: usize,
    groups: usize,
    x: *const f32,
    win: &[usize],
    offs: &[isize],
));

/// Output channels per group of the AVX2 instance.
pub const GROUP_AVX2: usize = 2 * 8;
/// Output channels per group of the AVX-512 instance.
pub const GROUP_AVX512: usize = 2 * 16;

// AVX2: 2 vectors (16 output channels) × 6 positions; AVX-512: 2 vectors (32) × 12
// positions; a `K × K` window
simd_entries!(task<const K: usize> [2, 6; 2, 12] => task_avx2, task_avx512 (
    out: *mut f32,
    inp: *const f32,
    ld: usize,
    wp: *const f32,
    i_n: usize,
    plane: Plane,
    p0: usize,
    p1: usize,
));
