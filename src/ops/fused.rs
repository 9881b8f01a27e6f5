//! A BN-ReLU read by a 1×1 convolution, without materialising the BN-ReLU output.
//!
//! Every 1×1 convolution of a DenseNet-BC (a bottleneck's `conv1`, a transition's `conv`)
//! reads `A = relu(X·scale + shift)` (per input channel; batch norm folded into `scale`
//! and `shift`) of a block's prefix X. Written out, A is as large as X: at BC-100 b64 a
//! layer writes and rereads 30 MB of it, once in forward and again when the backward pass
//! recomputes it. Here A is formed a tile of positions at a time in a per-thread buffer
//! that stays in L2 and is consumed there:
//!
//! - [`forward`]: `Y = W·A`;
//! - [`backward`]: `dW += dY·Aᵀ`, then `dA = Wᵀ·dY` in the same buffer and the BN-ReLU
//!   backward from it, so neither A nor dA is ever written out.
//!
//! The tile values come from the same `affine_relu` as [`super::norm::bn_relu_forward`],
//! so they are bit-identical to a materialised A, and the backward's ReLU mask
//! (recomputed from X) agrees with them.

use super::conv::{
    backward_routed, conv3x3_routed, conv_backward, conv_forward, conv_scope, ConvShape,
};
use super::norm::{self, bn_relu_forward};
use super::pool::bn_relu_avgpool2_forward;
use super::route::{self, ConvRoute, Product, Route};
use crate::kernels;
use crate::kernels::bf16;
use crate::kernels::conv1x1::{self, dot_tile, grad_tile};
use crate::kernels::correlate::{balanced_tile, with_packed, Weights, PB};
use crate::kernels::gemm::Parallelism;
use crate::kernels::gemm::{raw_ptr, raw_ptr_row_split, row_split_pays, Mat};
pub use crate::kernels::BnRelu;
use crate::util::par::{with_scratch, OnTeam, SyncPtr};
use crate::util::profile;
use rayon::prelude::*;

thread_local! {
    /// Per-thread tile of A for the GEMM paths.
    static TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Positions per tile of the GEMM paths: `i_n` rows of A should stay within L2 (512 KiB
/// per core here), but tiles narrower than a few hundred positions leave the GEMM
/// repacking W for little work.
fn tile_len(i_n: usize) -> usize {
    ((64 << 10) / i_n.max(1)).clamp(256, 4096) / 16 * 16
}

/// Positions per tile of [`backward`]: half of [`tile_len`]'s, down to 128. Its `i_n`
/// rows are written (A), read (dW), overwritten (dA) and read again (the BN sums), beside
/// dY's rows and panels, so a smaller tile that stays in L2 pays there. densenet121's
/// tiles go from 256 to 128 positions at 160 inputs and more. `bench train --ab` (Zen 3,
/// 2 threads, densenet121 at batch 16, this against `tile_len`): 0.940 twice (10 and 16
/// pairs, quartiles 0.920–0.971 for the 16); BC-100 at batch 64 1.007; half again
/// (16 KiB, down to 64) against this 1.002.
fn backward_tile_len(i_n: usize) -> usize {
    ((32 << 10) / i_n.max(1)).clamp(128, 4096) / 16 * 16
}

/// A 1×1 convolution of `i_n` → `o_n` channels over `len` positions.
fn shape_1x1(o_n: usize, i_n: usize, len: usize) -> ConvShape {
    ConvShape {
        n: 1,
        cin: i_n,
        cout: o_n,
        h: 1,
        w: len,
        k: 1,
        stride: 1,
        pad: 0,
    }
}

/// [`conv_scope`] of a 1×1 convolution of `i_n` → `o_n` channels over `len` positions.
fn scope_1x1(forward: bool, o_n: usize, i_n: usize, len: usize, passes: usize) -> profile::Scope {
    conv_scope(&shape_1x1(o_n, i_n, len), forward, passes)
}

/// `y[o][p] = Σ_i w[o][i]·relu(x[i][p]·scale[i] + shift[i])` for `x: [I][len]`,
/// `w: [O][I]`, `y: [O][len]` (overwritten).
///
/// By `route`: [`Route::Pointwise`], the direct kernel; [`Route::Gemm`], the `gemm` crate
/// on each tile, which is up to ~20% faster for wide outputs (`fused_shapes`, o108 and
/// o128) but allocates its packing buffers on every call.
pub fn forward(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    bn: BnRelu,
    o_n: usize,
    len: usize,
    route: Route,
) {
    let i_n = bn.scale.len();
    let _t = scope_1x1(true, o_n, i_n, len, 1);
    route::ran(&shape_1x1(o_n, i_n, len), Product::Forward, route);
    assert!(bn.shift.len() == i_n && x.len() >= i_n * len && w.len() == o_n * i_n);
    assert!(y.len() >= o_n * len);
    if route == Route::Pointwise {
        conv1x1::pointwise_with(y, w, o_n, i_n, len, false, |buf, ld, a, b| {
            bn.fill(buf, ld, x, len, a, b)
        });
        return;
    }
    if route == Route::PointwiseBf16 {
        // the BN-ReLU formed directly as bf16 channel pairs, a tile at a time
        return super::bf16::product(y, w, o_n, i_n, len, |x2, ld, a, b| {
            bf16::bn_relu_pairs(x2, ld, x, len, bn.scale, bn.shift, a, b)
        });
    }
    let threads = rayon::current_num_threads();
    let tile = balanced_tile(len, tile_len(i_n), 16, threads);
    let tiles = len.div_ceil(tile);
    let yp = SyncPtr(y.as_mut_ptr());
    // Fewer tiles than threads (batch 1 at 14×14 and 7×7: one tile): the GEMM itself
    // spreads each tile over the threads, by rows of W where it has few positions
    // (`gemm::row_split_pays`).
    let spread = tiles < threads && o_n * i_n * len >= 1 << 18;
    let one_split = spread && row_split_pays(o_n, len.min(tile));
    let inner = if spread {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    if tiles == 1 && one_split {
        // every part fills its own copy of the tile: the tile stays in the cache of the
        // core that reads it, and no parallel region runs for the fill alone (`bench
        // infer --ab` at batch 1, Zen 4: 0.984–0.995 of a pass with `avx512`, 0.985 with
        // `avx2`)
        // SAFETY: y holds o_n rows of len (asserted above); each part writes its own rows
        unsafe {
            crate::kernels::gemm::raw_ptr_row_split_filled(
                (o_n, len, i_n),
                y.as_mut_ptr(),
                len,
                false,
                Mat::n(w, i_n),
                tile,
                |buf| bn.fill(buf, tile, x, len, 0, len),
                threads,
            )
        };
        return;
    }
    let work = |t: usize| {
        let (a, b) = (t * tile, ((t + 1) * tile).min(len));
        with_scratch(&TILE, i_n * tile, |buf| {
            if tiles == 1 && spread {
                // one tile: the fill would be the only serial part
                bn.fill_par(buf, tile, x, len, a, b);
            } else {
                bn.fill(buf, tile, x, len, a, b);
            }
            // SAFETY: columns a..b of y's o_n rows (ld len) lie inside y (asserted above)
            // and only this task writes them.
            unsafe {
                let (yp, a_mat, b_mat) = (yp.get().add(a), Mat::n(w, i_n), Mat::n(buf, tile));
                if one_split {
                    raw_ptr_row_split(o_n, b - a, i_n, yp, len, false, a_mat, b_mat, threads)
                } else {
                    raw_ptr(o_n, b - a, i_n, yp, len, false, a_mat, b_mat, inner)
                }
            }
        })
    };
    if tiles > 1 && o_n * i_n * len >= 1 << 18 {
        (0..tiles).into_par_iter().team_for_each(work);
    } else {
        (0..tiles).for_each(work);
    }
}

/// Batch statistics and γ of the batch norm a [`backward`] differentiates through.
#[derive(Clone, Copy, Debug)]
pub struct BatchStats<'a> {
    /// Per-channel batch mean.
    pub mean: &'a [f32],
    /// Per-channel `1/√(var + ε)` of the batch.
    pub rstd: &'a [f32],
    /// Per-channel γ.
    pub gamma: &'a [f32],
}

/// The gradients a [`backward`] accumulates into.
pub struct Grads<'a> {
    /// `[I][len]`: the gradient of X, accumulated, **except** for the centred part of the
    /// BN-ReLU backward, which goes to `pending`.
    pub dx: &'a mut [f32],
    /// `[O][I]`: the convolution's weight gradient.
    pub dw: &'a mut [f32],
    /// `[I]`: the batch norm's γ gradient.
    pub dgamma: &'a mut [f32],
    /// `[I]`: the batch norm's β gradient.
    pub dbeta: &'a mut [f32],
    /// `[I]`: per channel, `(c0, c1)` of the `dx += c0 + c1·(x − mean)` still owed to
    /// `dx` (accumulated; applied by `norm::apply_pending`).
    pub pending: &'a mut [(f64, f64)],
}

/// Backward of `Y = W·relu(BN(X))` (BN with batch statistics, folded into `bn`) from
/// `dy: [O][len]`, without ever writing A or dA out: tile by tile of positions, in one
/// per-thread buffer that stays in L2,
///
/// 1. `A = relu(X·scale + shift)`, then `dW += dY·Aᵀ`;
/// 2. `dA = Wᵀ·dY` over the same buffer (A is dead), then in one sweep per channel the
///    BN-ReLU sums `Σg`, `Σg·(x − mean)` (`g = dA·[A > 0]`) and `dx += γ·rstd·g`.
///
/// The rest of the BN-ReLU input gradient, `−γ·rstd·(mg + x̂·mgx)`, needs the sums over
/// all positions: it is an affine map of x per channel, left in `pending` for the
/// channel's owner to apply once (`norm::apply_pending`). Unfused, dA (as large as X)
/// was written by one GEMM and read twice by the batch norm's two passes, the second of
/// which also read X and read and wrote dX.
///
/// Positions are split into one set of tiles per thread; each set sums `dW` and the
/// BN sums into its own partials (the first `dW` straight into `dw`), added in a fixed
/// order, so the result depends on the thread count only (as `gemm::sgemm`'s k-split).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    g: Grads,
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    bn: BnRelu,
    stats: BatchStats,
    o_n: usize,
    len: usize,
    route: Route,
) {
    let i_n = bn.scale.len();
    let s1 = shape_1x1(o_n, i_n, len);
    route::ran(&s1, Product::WeightGrad, route);
    route::ran(&s1, Product::InputGrad, route);
    assert!(bn.shift.len() == i_n && x.len() >= i_n * len && dy.len() >= o_n * len);
    assert!(stats.mean.len() >= i_n && stats.rstd.len() >= i_n && stats.gamma.len() >= i_n);
    assert!(g.dx.len() >= i_n * len && g.dgamma.len() >= i_n && g.dbeta.len() >= i_n);
    assert!(g.pending.len() >= i_n);
    assert_eq!(g.dw.len(), o_n * i_n);
    assert_eq!(w.len(), o_n * i_n);
    if len == 0 || i_n == 0 {
        return;
    }
    // [`Route::Pointwise`], the direct kernels: dW by `grad_tile` (or `dot_tile` where it
    // does not take the output count), dA by the 1×1 kernel over rows with slack for its
    // last register block; [`Route::Gemm`], the `gemm` crate on each tile.
    let direct = route == Route::Pointwise;
    // dW as an outer product over positions (`grad_tile`): each part sums its dWᵀ
    // (`[I][O]`) into its own partial, added transposed into `dw` at the end
    let outer = direct && conv1x1::grad_tile_applies(o_n);
    let threads = if o_n * i_n * len >= 1 << 18 {
        rayon::current_num_threads()
    } else {
        1
    };
    let tile = balanced_tile(len, backward_tile_len(i_n), 16, threads);
    let ld = if direct { tile + PB } else { tile };
    let tiles = len.div_ceil(tile);
    let parts = threads.min(tiles).max(1);
    let dxp = SyncPtr(g.dx.as_mut_ptr());
    thread_local! {
        static DY: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        static PARTIALS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        static SUMS: std::cell::RefCell<Vec<(f64, f64)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let masked_sums_axpy = kernels::active().masked_sums_axpy;
    // One slice of tiles: dW summed into `acc` (o_n×i_n), the BN sums into `sums`.
    let slice = |part: usize, acc: *mut f32, sums: &mut [(f64, f64)], wt: Weights<'_>| {
        with_scratch(&TILE, i_n * ld, |buf| {
            // dY's tile rows (direct), then the same tile transposed (`outer`)
            let (rows, cols) = (
                if direct { o_n * ld } else { 0 },
                if outer { o_n * tile } else { 0 },
            );
            with_scratch(&DY, rows + cols, |dys| {
                let (dyt, dytt) = dys.split_at_mut(rows);
                // tile t in part t % parts, as `balanced_tile` evens them out
                for t in (part..tiles).step_by(parts) {
                    let (a, b) = (t * tile, ((t + 1) * tile).min(len));
                    let n = b - a;
                    bn.fill(buf, ld, x, len, a, b);
                    if direct {
                        // dY's tile rows side by side: rows of the block buffer are 2^k
                        // floats apart, and read in place they share one L1 set
                        for o in 0..o_n {
                            dyt[o * ld..][..n].copy_from_slice(&dy[o * len + a..][..n]);
                        }
                        if outer {
                            conv1x1::transpose_panels(dytt, dyt, ld, o_n, n);
                            // SAFETY: `acc` is this task's own i_n×o_n matrix (dWᵀ); buf
                            // holds i_n rows of ld ≥ n, dytt dY's panels; grad_tile_applies.
                            unsafe { grad_tile(acc, buf.as_ptr(), ld, dytt.as_ptr(), o_n, i_n, n) };
                        } else {
                            // SAFETY: `acc` is this task's own o_n×i_n matrix; the table has
                            // direct kernels (pointwise_applies); rows hold n floats.
                            unsafe { dot_tile(acc, i_n, dyt, ld, buf, ld, o_n, i_n, n) };
                        }
                        // dA over A (dead now)
                        conv1x1::pointwise_tile(buf, ld, dyt, ld, wt, i_n, o_n, n);
                    } else {
                        // SAFETY: `acc` is this task's own o_n×i_n matrix; `buf` holds i_n
                        // rows of ld ≥ n floats and is this thread's own.
                        unsafe {
                            raw_ptr(
                                o_n,
                                i_n,
                                n,
                                acc,
                                i_n,
                                true,
                                Mat::n(&dy[a..], len),
                                Mat::t(buf, ld),
                                Parallelism::None,
                            );
                            raw_ptr(
                                i_n,
                                n,
                                o_n,
                                buf.as_mut_ptr(),
                                ld,
                                false,
                                Mat::t(w, i_n),
                                Mat::n(&dy[a..], len),
                                Parallelism::None,
                            );
                        }
                    }
                    for (i, sum) in sums.iter_mut().enumerate() {
                        // x's and dx's rows two channels on (see `BnRelu::fill`)
                        if i + 2 < i_n {
                            kernels::prefetch(x[(i + 2) * len + a..].as_ptr(), n);
                            kernels::prefetch(dxp.get().wrapping_add((i + 2) * len + a), n);
                        }
                        // SAFETY: positions a..b of dx's rows (asserted to hold i_n rows of
                        // len) belong to this tile, and each tile to one task.
                        let dx = unsafe {
                            std::slice::from_raw_parts_mut(dxp.get().add(i * len + a), n)
                        };
                        let (sg, sgc) = masked_sums_axpy(
                            dx,
                            &x[i * len + a..][..n],
                            &buf[i * ld..][..n],
                            bn.scale[i],
                            bn.shift[i],
                            stats.mean[i],
                            stats.gamma[i] * stats.rstd[i],
                        );
                        sum.0 += sg;
                        sum.1 += sgc;
                    }
                }
            })
        })
    };
    let (wt_o, wt_i) = if direct { (i_n, o_n) } else { (0, 0) };
    let wsrc = if direct { w } else { &[] };
    with_scratch(&SUMS, parts * i_n, |sums| {
        sums.fill((0.0, 0.0));
        {
            let _t = scope_1x1(false, o_n, i_n, len, 2);
            // with `outer`, every part sums dWᵀ into its own partial; else part 0 sums
            // straight into dw and part p > 0 into partial p − 1
            let own = if outer { parts } else { parts - 1 };
            with_scratch(&PARTIALS, own * o_n * i_n, |partials| {
                partials.fill(0.0);
                let (dwp, pp) = (SyncPtr(g.dw.as_mut_ptr()), SyncPtr(partials.as_mut_ptr()));
                // dA = Wᵀ·dY: W packed as its backward-data kernel (i_n output rows)
                with_packed(wsrc, wt_o, wt_i, true, |wt| {
                    let work = |(p, sums): (usize, &mut [(f64, f64)])| {
                        let acc = match (outer, p) {
                            (true, p) => pp.get().wrapping_add(p * o_n * i_n),
                            (false, 0) => dwp.get(),
                            (false, p) => pp.get().wrapping_add((p - 1) * o_n * i_n),
                        };
                        slice(p, acc, sums, wt)
                    };
                    sums.par_chunks_mut(i_n).enumerate().team_for_each(work);
                });
                // the partials added in order, 16 rows of dw at a time over the threads (on
                // one, with the other idle, this took ~6 ms of a densenet121 step)
                let rows = 16;
                let add = |(k, dw): (usize, &mut [f32])| {
                    let (o0, m) = (k * rows, dw.len() / i_n);
                    for part in partials.chunks_exact(o_n * i_n) {
                        if outer {
                            // part is [I][O]: dw[o][i] += part[i][o]
                            conv1x1::add_transposed(dw, &part[o0..], o_n, i_n, m);
                        } else {
                            let part = &part[o0 * i_n..][..dw.len()];
                            dw.iter_mut().zip(part).for_each(|(d, p)| *d += p);
                        }
                    }
                };
                let it = g.dw.par_chunks_mut(rows * i_n).enumerate();
                crate::util::par::per_channel(it, own * o_n * i_n, add);
            });
        }
        let (total, rest) = sums.split_at_mut(i_n);
        for part in rest.chunks_exact(i_n) {
            for (t, p) in total.iter_mut().zip(part) {
                t.0 += p.0;
                t.1 += p.1;
            }
        }
        norm::bn_relu_backward_pending(
            g.dgamma,
            g.dbeta,
            &mut g.pending[..i_n],
            total,
            stats.rstd,
            stats.gamma,
            len,
        );
    });
}

/// A transition pooled first: `y = W·P` with `P = avgpool2(relu(x·scale + shift))`
/// (`x: [I][N·h·w]`, `y: [O][N·(h/2)·(w/2)]`) written into `p` (`I·N·(h/2)·(w/2)`
/// floats). The pool and the 1×1 commute (see `pool::bn_relu_avgpool2_forward`), so the
/// convolution runs on a quarter of the positions; only where no dropout sits between
/// them. The 1×1 by `route`, as [`conv_forward`]'s.
#[allow(clippy::too_many_arguments)]
pub fn pooled_forward(
    y: &mut [f32],
    p: &mut [f32],
    x: &[f32],
    w: &[f32],
    bn: BnRelu,
    o_n: usize,
    n: usize,
    size: usize,
    route: Route,
) {
    let i_n = bn.scale.len();
    let pooled = n * (size / 2) * (size / 2);
    let p = &mut p[..i_n * pooled];
    bn_relu_avgpool2_forward(p, x, bn.scale, bn.shift, n, size, size);
    conv_forward(y, p, w, &shape_1x1(o_n, i_n, pooled), route, &mut []);
}

/// Backward of [`pooled_forward`] from `dy: [O][N·(h/2)·(w/2)]`: `dW += dY·Pᵀ` and
/// `dP = Wᵀ·dY` on the pooled positions (`buf` holds P, recomputed, then dP: `2·I·N·(h/2)·
/// (w/2)` floats), then the BN-ReLU backward from `dP` spread over each 2×2 window
/// (`¼·dP`, zero on a row or column the floor dropped), into `g` as
/// [`backward`] leaves it (`dx` accumulated but for the centred part, left in `pending`).
#[allow(clippy::too_many_arguments)]
pub fn pooled_backward(
    g: Grads,
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    bn: BnRelu,
    stats: BatchStats,
    buf: &mut [f32],
    o_n: usize,
    n: usize,
    size: usize,
) {
    let i_n = bn.scale.len();
    let (ho, len) = (size / 2, n * size * size);
    let pooled = n * ho * ho;
    let s1 = shape_1x1(o_n, i_n, pooled);
    route::ran(&s1, Product::WeightGrad, Route::Pointwise);
    route::ran(&s1, Product::InputGrad, Route::Pointwise);
    assert!(buf.len() >= 2 * i_n * pooled);
    assert!(dy.len() >= o_n * pooled && x.len() >= i_n * len && g.dx.len() >= i_n * len);
    assert!(g.dw.len() == o_n * i_n && g.pending.len() >= i_n);
    let (pb, dpb) = buf.split_at_mut(i_n * pooled);
    bn_relu_avgpool2_forward(pb, x, bn.scale, bn.shift, n, size, size);
    {
        let _t = scope_1x1(false, o_n, i_n, pooled, 2);
        let tile = tile_len(i_n).min(pooled);
        let threads = rayon::current_num_threads();
        // dW over tiles of positions whose P rows stay in L2: as outer products where the
        // outputs are whole vectors (densenet121's transitions, 0.85–0.94 of this whole
        // function's time with the dot products, in-process alternation, Zen 3), else
        // dot products with each tile's output rows split over the threads (every task
        // owns its rows of dW: no partial sums)
        if conv1x1::grad_tile_applies(o_n) {
            pooled_weight_grad(g.dw, dy, pb, o_n, i_n, pooled, tile, threads);
        } else {
            let dwp = SyncPtr(g.dw.as_mut_ptr());
            let p = &*pb;
            for a in (0..pooled).step_by(tile) {
                let nn = tile.min(pooled - a);
                (0..threads).into_par_iter().team_for_each(|k| {
                    let (o0, o1) = (o_n * k / threads, o_n * (k + 1) / threads);
                    if o0 == o1 {
                        return;
                    }
                    // SAFETY: rows o0..o1 of dw are this task's; dy's and P's rows hold
                    // positions a..a + nn; the table has direct kernels (pooled_applies).
                    unsafe {
                        conv1x1::dot_tile(
                            dwp.get().add(o0 * i_n),
                            i_n,
                            &dy[o0 * pooled + a..],
                            pooled,
                            &p[a..],
                            pooled,
                            o1 - o0,
                            i_n,
                            nn,
                        )
                    }
                });
            }
        }
        conv1x1::pointwise(dpb, dy, w, i_n, o_n, pooled, true);
    }
    let masked_sums_axpy = kernels::active().masked_sums_axpy;
    thread_local! {
        static ROW: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        static SUMS: std::cell::RefCell<Vec<(f64, f64)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let dxp = SyncPtr(g.dx.as_mut_ptr());
    let dp = &*dpb;
    with_scratch(&SUMS, i_n, |sums| {
        sums.par_iter_mut().enumerate().team_for_each(|(c, sum)| {
            *sum = (0.0, 0.0);
            let k = stats.gamma[c] * stats.rstd[c];
            with_scratch(&ROW, size, |row| {
                row.fill(0.0);
                for smp in 0..n {
                    for oy in 0..ho {
                        let d = &dp[c * pooled + (smp * ho + oy) * ho..][..ho];
                        for (ox, &v) in d.iter().enumerate() {
                            row[2 * ox] = 0.25 * v;
                            row[2 * ox + 1] = 0.25 * v;
                        }
                        for r in 2 * oy..2 * oy + 2 {
                            let at = c * len + (smp * size + r) * size;
                            // SAFETY: channel c's rows of dx are this task's only
                            let dx =
                                unsafe { std::slice::from_raw_parts_mut(dxp.get().add(at), size) };
                            let (sg, sgc) = masked_sums_axpy(
                                dx,
                                &x[at..][..size],
                                row,
                                bn.scale[c],
                                bn.shift[c],
                                stats.mean[c],
                                k,
                            );
                            sum.0 += sg;
                            sum.1 += sgc;
                        }
                    }
                }
            })
        });
        norm::bn_relu_backward_pending(
            g.dgamma,
            g.dbeta,
            &mut g.pending[..i_n],
            sums,
            stats.rstd,
            stats.gamma,
            len,
        );
    });
}

/// `dw[o][i] += Σ_p dy[o][p]·pb[i][p]` over `pooled` positions (rows `pooled` apart) by
/// [`conv1x1::grad_tile`]: per tile of positions, dY's panels once, then each thread the
/// outer products of its own input rows into its rows of one `[I][O]` sum, added
/// transposed into `dw` at the end (every entry summed in the same order whatever the
/// thread count). Needs `grad_tile_applies(o_n)`.
#[allow(clippy::too_many_arguments)]
fn pooled_weight_grad(
    dw: &mut [f32],
    dy: &[f32],
    pb: &[f32],
    o_n: usize,
    i_n: usize,
    pooled: usize,
    tile: usize,
    threads: usize,
) {
    thread_local! {
        static DWT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        static PANELS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    assert!(dy.len() >= o_n * pooled && pb.len() >= i_n * pooled && dw.len() == o_n * i_n);
    with_scratch(&DWT, i_n * o_n, |dwt| {
        dwt.fill(0.0);
        with_scratch(&PANELS, o_n * tile, |panels| {
            let dwtp = SyncPtr(dwt.as_mut_ptr());
            for a in (0..pooled).step_by(tile) {
                let nn = tile.min(pooled - a);
                let pan = &mut panels[..o_n * nn];
                conv1x1::transpose_panels(pan, &dy[a..], pooled, o_n, nn);
                let pan = &*pan;
                (0..threads).into_par_iter().team_for_each(|k| {
                    let (i0, i1) = (i_n * k / threads, i_n * (k + 1) / threads);
                    if i0 == i1 {
                        return;
                    }
                    // SAFETY: rows i0..i1 of dWᵀ (o_n floats each) are this task's; P's
                    // rows hold positions a..a + nn; the panels hold o_n × nn;
                    // grad_tile_applies(o_n).
                    unsafe {
                        conv1x1::grad_tile(
                            dwtp.get().add(i0 * o_n),
                            pb[i0 * pooled + a..].as_ptr(),
                            pooled,
                            pan.as_ptr(),
                            o_n,
                            i1 - i0,
                            nn,
                        )
                    }
                });
            }
        });
        conv1x1::add_transposed(dw, dwt, o_n, i_n, o_n);
    });
}

/// The fallback of the fused 3×3: `relu(x·scale + shift)` written into `tmp`.
fn written_out<'t>(tmp: &'t mut [f32], x: &[f32], bn: BnRelu, s: &ConvShape) -> &'t [f32] {
    let len = s.n * s.h * s.w;
    let a = &mut tmp[..s.cin * len];
    bn_relu_forward(a, x, bn.scale, bn.shift, len);
    a
}

/// `y = conv3×3(relu(x·scale + shift))` (stride 1, padding 1; `y` overwritten) by
/// `route`. The 3×3 kernels apply the BN-ReLU while they make their zero-padded copy of
/// the input; on other routes the BN-ReLU output is written to `tmp` first.
#[allow(clippy::too_many_arguments)]
pub fn conv3x3_forward(
    y: &mut [f32],
    x: &[f32],
    bn: BnRelu,
    w: &[f32],
    s: &ConvShape,
    route: Route,
    col: &mut [f32],
    tmp: &mut [f32],
) {
    assert!(s.is_same_3x3() && bn.scale.len() == s.cin);
    let done = {
        let _t = conv_scope(s, true, 1);
        conv3x3_routed(y, x, Some(bn), w, s, route, col)
    };
    if done {
        route::ran(s, Product::Forward, route);
    } else {
        conv_forward(y, written_out(tmp, x, bn, s), w, s, route, col);
    }
}

/// Backward of [`conv3x3_forward`] by routes `r`: `dw += dy ⋆ relu(x·scale + shift)`;
/// `dx`, if given, is **overwritten** with the gradient of the BN-ReLU output (not of x).
#[allow(clippy::too_many_arguments)]
pub fn conv3x3_backward(
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    bn: BnRelu,
    w: &[f32],
    s: &ConvShape,
    r: &ConvRoute,
    col: &mut [f32],
    tmp: &mut [f32],
) {
    assert!(s.is_same_3x3() && bn.scale.len() == s.cin);
    // the 3×3 kernels' routes form the BN-ReLU in their padded copies
    let forms = |route: Option<Route>| route.is_none_or(Route::forms_bn_relu_backward);
    let data = dx.as_ref().and(r.input_grad);
    if forms(data) && forms(r.weight_grad) {
        let _t = conv_scope(s, false, 1 + dx.is_some() as usize);
        backward_routed(dx, dw, dy, x, Some(bn), w, s, r, col);
    } else {
        conv_backward(dx, dw, dy, written_out(tmp, x, bn, s), w, s, r, col);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{data, on_threads};

    /// The fused 3×3 against BN-ReLU written out and the plain convolution, on a shape
    /// the direct kernel takes and one it does not (odd channel count).
    #[test]
    fn fused_conv3x3_matches_materialised() {
        let mk = |cin, cout| ConvShape {
            n: 2,
            cin,
            cout,
            h: 5,
            w: 6,
            k: 3,
            stride: 1,
            pad: 1,
        };
        for s in [mk(8, 4), mk(3, 5)] {
            let len = s.n * s.h * s.w;
            let x = data(s.cin * len, 1);
            let w = data(s.cout * s.cin * 9, 2);
            let dy = data(s.cout * len, 3);
            let (scale, shift) = (data(s.cin, 4), data(s.cin, 5));
            let bn = BnRelu {
                scale: &scale,
                shift: &shift,
            };
            let mut a = vec![0.0; x.len()];
            bn_relu_forward(&mut a, &x, &scale, &shift, len);
            let r = route::choose(&s, route::Reads::BnRelu, true);
            let mut col = vec![0.0; crate::ops::conv::col_len(&s, &r, 1)];
            let mut tmp = vec![f32::NAN; x.len()];
            let (mut y, mut want) = (vec![f32::NAN; dy.len()], vec![0.0; dy.len()]);
            conv3x3_forward(&mut y, &x, bn, &w, &s, r.forward, &mut col, &mut tmp);
            conv_forward(&mut want, &a, &w, &s, r.forward, &mut col);
            assert_eq!(y, want, "{s:?} forward");
            let (mut dx, mut dw) = (vec![f32::NAN; x.len()], vec![0.5; w.len()]);
            let (mut wdx, mut wdw) = (vec![0.0; x.len()], vec![0.5; w.len()]);
            conv3x3_backward(
                Some(&mut dx),
                &mut dw,
                &dy,
                &x,
                bn,
                &w,
                &s,
                &r,
                &mut col,
                &mut tmp,
            );
            conv_backward(Some(&mut wdx), &mut wdw, &dy, &a, &w, &s, &r, &mut col);
            assert_eq!((dx, dw), (wdx, wdw), "{s:?} backward");
        }
    }

    /// A transition pooled first against convolving then pooling: the forward output,
    /// and every gradient (`dx`, `dW`, dγ, dβ, pending) of the backward. Output counts
    /// that are whole vectors (the outer-product weight gradient) and 12 (dot products);
    /// 512 inputs make tiles of 256 of the 800 pooled positions, the last one partial.
    #[test]
    fn pooled_matches_conv_then_pool() {
        for (o_n, i_n, n, size) in [
            (48, 96, 4, 8),
            (12, 24, 2, 6),
            (16, 32, 1, 32),
            (16, 512, 2, 40),
        ] {
            let (len, pooled) = (n * size * size, n * (size / 2) * (size / 2));
            let full = ConvShape {
                n,
                h: size,
                w: size,
                ..shape_1x1(o_n, i_n, 1)
            };
            if !route::transition(&full, 0.0, 2 * i_n * pooled, false, true).pooled_first {
                return;
            }
            let r = route::choose(&shape_1x1(o_n, i_n, len), route::Reads::BnRelu, true);
            let x = data(i_n * len, 1);
            let w = data(o_n * i_n, 2);
            let dyp = data(o_n * pooled, 3);
            let (scale, shift) = (data(i_n, 4), data(i_n, 5));
            let (mean, gamma) = (data(i_n, 6), data(i_n, 7));
            let rstd: Vec<f32> = data(i_n, 8).iter().map(|v| 0.5 + v.abs()).collect();
            let bn = BnRelu {
                scale: &scale,
                shift: &shift,
            };
            let st = BatchStats {
                mean: &mean,
                rstd: &rstd,
                gamma: &gamma,
            };
            let mut buf = vec![0.0; 2 * i_n * pooled];
            // forward
            let mut y = vec![f32::NAN; o_n * pooled];
            pooled_forward(&mut y, &mut buf, &x, &w, bn, o_n, n, size, Route::Pointwise);
            let mut z = vec![0.0; o_n * len];
            forward(&mut z, &x, &w, bn, o_n, len, r.forward);
            let mut y2 = vec![0.0; o_n * pooled];
            crate::ops::pool::avgpool2_forward(&mut y2, &z, o_n * n, size, size);
            for (a, b) in y.iter().zip(&y2) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "forward {a} vs {b}"
                );
            }
            // backward, both ways
            let run = |pooled_first: bool| {
                let mut dw = vec![0.5f32; o_n * i_n];
                let mut dx = data(i_n * len, 9);
                let (mut dgamma, mut dbeta) = (vec![0.25f32; i_n], vec![-0.25f32; i_n]);
                let mut pending = vec![(0.5f64, -0.5f64); i_n];
                let g = Grads {
                    dx: &mut dx,
                    dw: &mut dw,
                    dgamma: &mut dgamma,
                    dbeta: &mut dbeta,
                    pending: &mut pending,
                };
                if pooled_first {
                    let mut buf = vec![0.0; 2 * i_n * pooled];
                    pooled_backward(g, &dyp, &x, &w, bn, st, &mut buf, o_n, n, size);
                } else {
                    let mut dz = vec![0.0; o_n * len];
                    crate::ops::pool::avgpool2_backward(&mut dz, &dyp, o_n * n, size, size);
                    backward(g, &dz, &x, &w, bn, st, o_n, len, r.weight_grad.unwrap());
                }
                norm::apply_pending(&mut dx, &x, &mean, &mut pending, len);
                (dx, dw, dgamma, dbeta)
            };
            let (a, b) = (run(true), run(false));
            for (what, got, want) in [
                ("dx", &a.0, &b.0),
                ("dw", &a.1, &b.1),
                ("dgamma", &a.2, &b.2),
                ("dbeta", &a.3, &b.3),
            ] {
                for (j, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{what}[{j}] {o_n} {i_n} {n} {size}: {g} vs {w}"
                    );
                }
            }
        }
    }

    /// A materialised in f64, then the products, against both fused functions, on the
    /// direct (≤ 48 outputs) and GEMM paths, with several tiles and a partial last one.
    #[test]
    fn fused_matches_materialised() {
        // lengths past one tile (tile_len) give several tiles and, on two threads, two parts
        for (o_n, i_n, len) in [
            (12, 20, 700),
            (48, 36, 5000),
            (64, 24, 4100),
            (8, 3, 10),
            (6, 12, 300),
            // grad_tile's outputs (whole vectors; 40 = 2 + 1 on AVX2) with input rows in
            // blocks of 6 and of 4: 20 = 18 + 2, 28 = 24 + 4
            (16, 20, 700),
            (40, 28, 900),
            // more than 48 outputs in one tile: on two threads the forward's GEMM takes
            // W's rows in two products (`gemm::row_split_pays`)
            (64, 300, 200),
        ] {
            let x = data(i_n * len, 1);
            let w = data(o_n * i_n, 2);
            let dy = data(o_n * len, 3);
            let scale = data(i_n, 4);
            let shift = data(i_n, 5);
            let a: Vec<f64> = (0..i_n * len)
                .map(|j| (x[j] * scale[j / len] + shift[j / len]).max(0.0) as f64)
                .collect();
            let (mean, gamma) = (data(i_n, 6), data(i_n, 7));
            let rstd: Vec<f32> = data(i_n, 8).iter().map(|v| 0.5 + v.abs()).collect();
            let bn = BnRelu {
                scale: &scale,
                shift: &shift,
            };
            for threads in [1, 2] {
                let mut y = vec![f32::NAN; o_n * len];
                let mut dw = vec![0.5f32; o_n * i_n];
                let mut dx = data(i_n * len, 9);
                let dx0 = dx.clone();
                let (mut dgamma, mut dbeta) = (vec![0.25f32; i_n], vec![-0.25f32; i_n]);
                let mut pending = vec![(0.5f64, -0.5f64); i_n];
                on_threads(threads, || {
                    // both routes for more than 48 outputs: gemm (evaluation), and the
                    // direct kernel (training)
                    let s1 = shape_1x1(o_n, i_n, len);
                    let train = route::choose(&s1, route::Reads::BnRelu, true);
                    let eval = route::choose(&s1, route::Reads::BnRelu, false);
                    let mut y2 = vec![f32::NAN; o_n * len];
                    forward(&mut y2, &x, &w, bn, o_n, len, train.forward);
                    forward(&mut y, &x, &w, bn, o_n, len, eval.forward);
                    for (a, b) in y.iter().zip(&y2) {
                        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "no_alloc route");
                    }
                    let g = Grads {
                        dx: &mut dx,
                        dw: &mut dw,
                        dgamma: &mut dgamma,
                        dbeta: &mut dbeta,
                        pending: &mut pending,
                    };
                    let st = BatchStats {
                        mean: &mean,
                        rstd: &rstd,
                        gamma: &gamma,
                    };
                    backward(g, &dy, &x, &w, bn, st, o_n, len, train.weight_grad.unwrap());
                    // the pending (0.5, −0.5) of an earlier reader is applied too
                    norm::apply_pending(&mut dx, &x, &mean, &mut pending, len);
                });
                assert!(pending.iter().all(|&p| p == (0.0, 0.0)), "pending cleared");
                // the BN-ReLU backward in f64: g = dA·[A > 0], dA = Wᵀ·dY
                for i in 0..i_n {
                    let (mu, r) = (mean[i] as f64, rstd[i] as f64);
                    let gr: Vec<f64> = (0..len)
                        .map(|p| {
                            let da: f64 = (0..o_n)
                                .map(|o| w[o * i_n + i] as f64 * dy[o * len + p] as f64)
                                .sum();
                            if a[i * len + p] > 0.0 {
                                da
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    let xr = &x[i * len..(i + 1) * len];
                    let sg: f64 = gr.iter().sum();
                    let sgx: f64 = gr
                        .iter()
                        .zip(xr)
                        .map(|(g, &v)| g * (v as f64 - mu) * r)
                        .sum();
                    let close = |got: f32, want: f64, what: &str| {
                        assert!(
                            (got as f64 - want).abs() < 1e-3 * (1.0 + want.abs()),
                            "{what} {o_n} {i_n} {len} channel {i}: {got} vs {want}"
                        )
                    };
                    close(dbeta[i], -0.25 + sg, "dbeta");
                    close(dgamma[i], 0.25 + sgx, "dgamma");
                    let k = gamma[i] as f64 * r;
                    let (mg, mgx) = (sg / len as f64, sgx / len as f64);
                    for p in (0..len).step_by(5) {
                        let xh = (xr[p] as f64 - mu) * r;
                        let earlier = 0.5 - 0.5 * (xr[p] as f64 - mu);
                        let want = dx0[i * len + p] as f64 + earlier + k * (gr[p] - mg - xh * mgx);
                        close(dx[i * len + p], want, "dx");
                    }
                }
                for o in 0..o_n {
                    for p in (0..len).step_by(7) {
                        let want: f64 = (0..i_n)
                            .map(|i| w[o * i_n + i] as f64 * a[i * len + p])
                            .sum();
                        let got = y[o * len + p] as f64;
                        assert!(
                            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "y {o_n} {i_n} {len}"
                        );
                    }
                    for i in 0..i_n {
                        let want: f64 = 0.5
                            + (0..len)
                                .map(|p| dy[o * len + p] as f64 * a[i * len + p])
                                .sum::<f64>();
                        let got = dw[o * i_n + i] as f64;
                        assert!(
                            (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                            "dw {o_n} {i_n} {len}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
