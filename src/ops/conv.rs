//! 2-D convolution without bias (every DenseNet convolution has none), on the channel-major
//! layout `x: [Cin][N·H·W]`, `y: [Cout][N·Ho·Wo]`, weights OIHW `[Cout][Cin·K·K]`.
//!
//! A 1×1 stride-1 convolution is one GEMM, `Y = W·X`, read straight from a dense block's
//! prefix. Other kernels go through im2col: `col[(ci,ky,kx)][(n,oy,ox)] = x[ci][n][iy][ix]`
//! (zero outside the image), then `Y = W·col`. im2col of a whole batch can be huge (a 3×3
//! conv over 48 channels at 64×32×32 is 113 MB), so the batch is processed in chunks of
//! samples that fit the `col` scratch the memory plan provides.
//!
//! Which algorithm computes each product is the convolution's route ([`super::route`],
//! chosen once per convolution and batch size by the memory plan); [`conv_forward`] and
//! [`conv_backward`] only dispatch on it. The direct 3×3 kernels
//! ([`crate::kernels::conv3x3`]) took DenseNet-BC-100 k=12 b64 (`densenet bench train
//! --model densenet-bc-100-12 --batch 64 --steps 3`, 2-core AMD EPYC, one session) from
//! 4.9 s a step with im2col + GEMM to 2.7 s. The im2col path stays for the rest and is
//! tested against the direct kernels.

use super::route::{self, ConvRoute, Product, Route};
use crate::kernels::gemm::{sgemm, Mat};
pub use crate::kernels::ConvShape;
use crate::kernels::{broadcast, conv1x1, conv3x3, winograd};
use crate::util::par::OnTeam;
use crate::util::profile;
use rayon::prelude::*;

/// The scratch (in floats) that convolution `s` wants on routes `r`, to process `samples`
/// at a time: the im2col matrix, or the direct kernels' zero-padded copies.
pub fn col_len(s: &ConvShape, r: &ConvRoute, samples: usize) -> usize {
    let samples = samples.clamp(1, s.n.max(1));
    [Some(r.forward), r.input_grad, r.weight_grad]
        .into_iter()
        .flatten()
        .map(|route| match route {
            Route::Pointwise | Route::Gemm | Route::PointwiseBf16 | Route::Conv3x3Bf16 => 0,
            Route::Direct3x3 | Route::Broadcast3x3 | Route::Winograd { .. } => {
                conv3x3::scratch_per_sample(s) * samples
            }
            Route::BroadcastPadded => {
                broadcast::padded_per_sample(s).max(s.col_per_sample()) * samples
            }
            Route::Im2colTiles | Route::Im2col => s.col_per_sample() * samples,
            Route::Im2colBf16 => super::bf16::im2col_per_sample(s) * samples,
        })
        .max()
        .unwrap_or(0)
}

/// The scratch a plan gives the convolutions of `routes`: the most any of them wants
/// with as many samples as fit `budget` floats of im2col matrix (at least one), so that
/// the GEMMs stay efficient (thousands of columns) and the scratch small next to the
/// activations.
pub fn plan_col_len(routes: &route::Routes, budget: usize) -> usize {
    routes
        .convs
        .iter()
        .map(|c| {
            let per = c.shape.col_per_sample().max(1);
            col_len(&c.shape, &c.route, (budget / per).max(1))
        })
        .max()
        .unwrap_or(0)
}

/// The output columns `lo..hi` whose input column `ox·stride + kx − pad` lies inside the
/// image (the others read the zero padding).
#[inline]
fn valid_run(s: &ConvShape, kx: usize, wo: usize) -> (usize, usize) {
    let lo = s.pad.saturating_sub(kx).div_ceil(s.stride).min(wo);
    // ox·stride + kx − pad ≤ w − 1
    let hi = match (s.w + s.pad).checked_sub(kx + 1) {
        Some(last) => (last / s.stride + 1).min(wo).max(lo),
        None => lo,
    };
    (lo, hi)
}

/// Columns `ox0..ox0 + out.len()` of output row `oy` of im2col row `(·, ky, kx)`, from
/// one input plane (`h×w`): what the tap reads, one run of inputs `stride` apart, and
/// zeros where it reads the padding.
#[allow(clippy::too_many_arguments)]
fn im2col_run(
    out: &mut [f32],
    plane: &[f32],
    s: &ConvShape,
    ky: usize,
    kx: usize,
    oy: usize,
    ox0: usize,
) {
    let iy = (oy * s.stride + ky) as isize - s.pad as isize;
    if iy < 0 || iy >= s.h as isize {
        out.fill(0.0);
        return;
    }
    let src = &plane[iy as usize * s.w..][..s.w];
    let ox1 = ox0 + out.len();
    let (lo, hi) = valid_run(s, kx, s.wo());
    let (v0, v1) = (lo.clamp(ox0, ox1), hi.clamp(ox0, ox1));
    out[..v0 - ox0].fill(0.0);
    out[v1 - ox0..].fill(0.0);
    if v1 == v0 {
        return;
    }
    let first = v0 * s.stride + kx - s.pad;
    let dst = &mut out[v0 - ox0..v1 - ox0];
    if s.stride == 1 {
        dst.copy_from_slice(&src[first..][..v1 - v0]);
    } else {
        // (per-column bounds tests here made the ImageNet stem's 7×7 stride-2 im2col the
        // larger part of the stem)
        let src = src[first..].iter().step_by(s.stride);
        dst.iter_mut().zip(src).for_each(|(o, &v)| *o = v);
    }
}

/// Fills `col[(ci,ky,kx)][(n−n0, oy, ox)]` for samples `n0..n1`.
fn im2col(col: &mut [f32], x: &[f32], s: &ConvShape, n0: usize, n1: usize) {
    let (ho, wo, hw) = (s.ho(), s.wo(), s.h * s.w);
    let cols = (n1 - n0) * ho * wo;
    let len = s.n * hw;
    col[..s.col_rows() * cols]
        .par_chunks_mut(cols)
        .enumerate()
        .team_for_each(|(r, row)| {
            let ci = r / (s.k * s.k);
            let (ky, kx) = ((r / s.k) % s.k, r % s.k);
            for ni in n0..n1 {
                let plane = &x[ci * len + ni * hw..][..hw];
                for oy in 0..ho {
                    let out = &mut row[((ni - n0) * ho + oy) * wo..][..wo];
                    im2col_run(out, plane, s, ky, kx, oy, 0);
                }
            }
        });
}

/// Adds `col` back onto the image positions it was gathered from (adjoint of [`im2col`]).
fn col2im(dx: &mut [f32], col: &[f32], s: &ConvShape, n0: usize, n1: usize) {
    let (ho, wo, hw) = (s.ho(), s.wo(), s.h * s.w);
    let cols = (n1 - n0) * ho * wo;
    let kk = s.k * s.k;
    dx[..s.cin * s.n * hw]
        .par_chunks_mut(s.n * hw)
        .enumerate()
        .team_for_each(|(ci, dxc)| {
            for r in 0..kk {
                let (ky, kx) = (r / s.k, r % s.k);
                let row = &col[(ci * kk + r) * cols..][..cols];
                for ni in n0..n1 {
                    let plane = &mut dxc[ni * hw..][..hw];
                    for oy in 0..ho {
                        let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                        if iy < 0 || iy >= s.h as isize {
                            continue;
                        }
                        let src = &row[((ni - n0) * ho + oy) * wo..][..wo];
                        let dst = &mut plane[iy as usize * s.w..][..s.w];
                        let (lo, hi) = valid_run(s, kx, wo);
                        if hi == lo {
                            continue;
                        }
                        let first = lo * s.stride + kx - s.pad;
                        let d = dst[first..].iter_mut().step_by(s.stride);
                        d.zip(&src[lo..hi]).for_each(|(d, g)| *d += g);
                    }
                }
            }
        });
}

/// The profiling bucket of a convolution.
fn kind(s: &ConvShape, forward: bool) -> profile::Op {
    use profile::Op;
    match (s.k, forward) {
        (1, true) => Op::Conv1x1Forward,
        (1, false) => Op::Conv1x1Backward,
        (3, true) => Op::Conv3x3Forward,
        (3, false) => Op::Conv3x3Backward,
        _ => Op::ConvOther,
    }
}

/// The profile scope of a convolution of shape `s` in direction `forward`, doing its
/// products `passes` times (a backward with the input gradient: 2).
pub(crate) fn conv_scope(s: &ConvShape, forward: bool, passes: usize) -> profile::Scope {
    let key = profile::ConvKey {
        k: s.k,
        cin: s.cin,
        cout: s.cout,
        positions: s.n * s.ho() * s.wo(),
    };
    let products = s.k * s.k * s.cin * s.cout * key.positions * passes;
    profile::scope_conv(kind(s, forward), key, products)
}

/// `y[Cout][N·Ho·Wo] = conv(x, w)` by `route` (its forward route); `col` is scratch of
/// at least [`col_len`] for one sample (may be empty for a 1×1).
pub fn conv_forward(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    s: &ConvShape,
    route: Route,
    col: &mut [f32],
) {
    let _t = conv_scope(s, true, 1);
    route::ran(s, Product::Forward, route);
    let (how, kr) = (s.ho() * s.wo(), s.col_rows());
    let ldy = s.n * how;
    match route {
        Route::Pointwise => conv1x1::pointwise(y, x, w, s.cout, s.cin, ldy, false),
        Route::Gemm => sgemm(
            s.cout,
            ldy,
            s.cin,
            y,
            ldy,
            false,
            Mat::n(w, kr),
            Mat::n(x, ldy),
        ),
        Route::Direct3x3 | Route::Broadcast3x3 | Route::Winograd { .. } | Route::Conv3x3Bf16 => {
            conv3x3_routed(y, x, None, w, s, route, col);
        }
        Route::BroadcastPadded => {
            route::expect(broadcast::forward_padded(y, x, w, s, col), route, s)
        }
        Route::Im2colTiles => {
            conv1x1::pointwise_with(y, w, s.cout, kr, ldy, false, |buf, ld, a, b| {
                im2col_tile(buf, ld, x, s, a, b)
            })
        }
        Route::Im2col => im2col_forward(y, x, w, s, col),
        Route::Im2colBf16 => super::bf16::im2col(y, x, w, s, col),
        Route::PointwiseBf16 => {
            assert!(s.is_pointwise(), "{route} takes a 1×1, not {s:?}");
            super::bf16::product(y, w, s.cout, s.cin, ldy, |a2, ld, a, b| {
                crate::kernels::bf16::stored_pairs(a2, ld, x, s.cin, ldy, a, b)
            })
        }
    }
}

/// Positions `a..b` (of `N·Ho·Wo`) of every im2col row `(ci, ky, kx)` into
/// `buf[row·ld..][..b − a]`: [`im2col`] for one tile, which the direct 1×1 kernel then
/// multiplies by the weights while the tile is in L2. For the ImageNet stem (7×7, stride
/// 2, 147 rows) this replaced a 147 × N·112·112 matrix and the `gemm` crate's packing of
/// it: batch 1 took 0.65 ms to write that matrix and 2.3–2.9 ms in the GEMM.
fn im2col_tile(buf: &mut [f32], ld: usize, x: &[f32], s: &ConvShape, a: usize, b: usize) {
    let (ho, wo, hw) = (s.ho(), s.wo(), s.h * s.w);
    let len = s.n * hw;
    for (r, row) in buf.chunks_mut(ld).take(s.col_rows()).enumerate() {
        let ci = r / (s.k * s.k);
        let (ky, kx) = ((r / s.k) % s.k, r % s.k);
        // runs of positions within one output row
        let mut p = a;
        while p < b {
            let (ni, rem) = (p / (ho * wo), p % (ho * wo));
            let (oy, ox0) = (rem / wo, rem % wo);
            let ox1 = (ox0 + (b - p)).min(wo);
            let plane = &x[ci * len + ni * hw..][..hw];
            im2col_run(&mut row[p - a..][..ox1 - ox0], plane, s, ky, kx, oy, ox0);
            p += ox1 - ox0;
        }
    }
}

/// [`conv_forward`] through im2col + GEMM (any kernel, stride and padding).
pub(crate) fn im2col_forward(y: &mut [f32], x: &[f32], w: &[f32], s: &ConvShape, col: &mut [f32]) {
    let (how, kr) = (s.ho() * s.wo(), s.col_rows());
    let ldy = s.n * how;
    let chunk = s.chunk(col.len());
    let mut n0 = 0;
    while n0 < s.n {
        let n1 = (n0 + chunk).min(s.n);
        let cols = (n1 - n0) * how;
        im2col(col, x, s, n0, n1);
        sgemm(
            s.cout,
            cols,
            kr,
            &mut y[n0 * how..],
            ldy,
            false,
            Mat::n(w, kr),
            Mat::n(col, cols),
        );
        n0 = n1;
    }
}

/// The forward of a 3×3 on one of the 3×3 kernels' routes, of `relu(x·scale + shift)`
/// where `bn` is given (they form it in their padded copies). Returns false, doing
/// nothing, on another route.
#[allow(clippy::too_many_arguments)]
pub fn conv3x3_routed(
    y: &mut [f32],
    x: &[f32],
    bn: Option<crate::kernels::BnRelu>,
    w: &[f32],
    s: &ConvShape,
    route: Route,
    col: &mut [f32],
) -> bool {
    match route {
        Route::Direct3x3 => conv3x3::forward_direct(y, x, bn, w, s, col),
        Route::Broadcast3x3 => conv3x3::forward_broadcast(y, x, bn, w, s, col),
        Route::Winograd { tile } => {
            route::expect(winograd::forward(y, x, bn, w, s, tile, col), route, s)
        }
        Route::Conv3x3Bf16 => super::bf16::conv3x3(y, x, bn, w, s),
        _ => return false,
    }
    true
}

/// Backward of [`conv_forward`] by routes `r` (its gradient routes): `dw += dy ⋆ x`; if
/// `dx` is given it is **overwritten** with the input gradient.
#[allow(clippy::too_many_arguments)]
pub fn conv_backward(
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    s: &ConvShape,
    r: &ConvRoute,
    col: &mut [f32],
) {
    let _t = conv_scope(s, false, 1 + dx.is_some() as usize);
    backward_routed(dx, dw, dy, x, None, w, s, r, col);
}

/// [`conv_backward`] by routes `r`, without its profile scope; with `bn`, of
/// `relu(x·scale + shift)`, which only the 3×3 kernels' routes (`direct3x3`, Winograd)
/// form in their padded copies: the fused 3×3 of `ops::fused` passes `bn` only there.
#[allow(clippy::too_many_arguments)]
pub fn backward_routed(
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    bn: Option<crate::kernels::BnRelu>,
    w: &[f32],
    s: &ConvShape,
    r: &ConvRoute,
    col: &mut [f32],
) {
    let weights = r.weight_grad.expect("a training plan's routes");
    let data = dx
        .as_ref()
        .map(|_| r.input_grad.expect("a training plan's routes"));
    debug_assert!(
        bn.is_none()
            || (weights.forms_bn_relu_backward() && data.is_none_or(Route::forms_bn_relu_backward)),
        "{r:?} cannot form a BN-ReLU input"
    );
    if let Some(d) = data {
        route::ran(s, Product::InputGrad, d);
    }
    route::ran(s, Product::WeightGrad, weights);
    let mut dx = dx;
    // the input gradient first where it has a route of its own
    match data {
        Some(Route::Winograd { tile }) => {
            let dx = dx.take().expect("asked");
            route::expect(
                winograd::backward_data(dx, dy, w, s, tile, col),
                Route::Winograd { tile },
                s,
            );
        }
        Some(Route::Im2col) if weights != Route::Im2col => {
            // (a stem whose input gradient is asked for: its weight gradient by its own route)
            im2col_backward(dx.take(), None, dy, x, w, s, col);
        }
        _ => {}
    }
    match weights {
        Route::Pointwise | Route::Gemm => {
            pointwise_dw(dw, dy, x, s);
            if let Some(dx) = dx {
                pointwise_dx(dx, dy, w, s);
            }
        }
        // (with the input gradient, where it is the direct kernels' too: one pass)
        Route::Direct3x3 => conv3x3::backward_direct(dx, dw, dy, x, bn, w, s, col),
        Route::Winograd { .. } => {
            debug_assert!(dx.is_none());
            let taken = winograd::backward_weights(dw, dy, x, bn, s, col);
            route::expect(taken, weights, s)
        }
        Route::BroadcastPadded => {
            let taken = broadcast::weight_grad_padded(dw, dy, x, s, col);
            route::expect(taken, weights, s)
        }
        Route::Broadcast3x3 | Route::Im2colTiles | Route::Im2col => {
            im2col_backward(dx, Some(dw), dy, x, w, s, col)
        }
        Route::PointwiseBf16 | Route::Conv3x3Bf16 | Route::Im2colBf16 => {
            panic!("{weights}: training has no bf16 route")
        }
    }
}

/// [`conv_backward`] through im2col + GEMM + col2im (any kernel, stride and padding):
/// the route every table shares, which benchmarks compare the others against.
pub fn im2col_backward(
    dx: Option<&mut [f32]>,
    dw: Option<&mut [f32]>,
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    s: &ConvShape,
    col: &mut [f32],
) {
    let (how, kr, hw) = (s.ho() * s.wo(), s.col_rows(), s.h * s.w);
    let ldy = s.n * how;
    let chunk = s.chunk(col.len());
    let (mut dx, mut dw) = (dx, dw);
    if let Some(dx) = dx.as_deref_mut() {
        dx[..s.cin * s.n * hw].fill(0.0);
    }
    let mut n0 = 0;
    while n0 < s.n {
        let n1 = (n0 + chunk).min(s.n);
        let cols = (n1 - n0) * how;
        let dyc = &dy[n0 * how..];
        if let Some(dw) = dw.as_deref_mut() {
            im2col(col, x, s, n0, n1);
            sgemm(
                s.cout,
                kr,
                cols,
                dw,
                kr,
                true,
                Mat::n(dyc, ldy),
                Mat::t(col, cols),
            );
        }
        if let Some(dx) = dx.as_deref_mut() {
            sgemm(
                kr,
                cols,
                s.cout,
                col,
                cols,
                false,
                Mat::t(w, kr),
                Mat::n(dyc, ldy),
            );
            col2im(dx, col, s, n0, n1);
        }
        n0 = n1;
    }
}

/// 1×1 weight gradient: `dW[Cout×Cin] += dY[Cout×len] · Xᵀ`.
fn pointwise_dw(dw: &mut [f32], dy: &[f32], x: &[f32], s: &ConvShape) {
    let len = s.n * s.h * s.w;
    sgemm(
        s.cout,
        s.cin,
        len,
        dw,
        s.cin,
        true,
        Mat::n(dy, len),
        Mat::t(x, len),
    );
}

/// 1×1 input gradient: `dX[Cin×len] = Wᵀ · dY` (overwritten).
fn pointwise_dx(dx: &mut [f32], dy: &[f32], w: &[f32], s: &ConvShape) {
    let len = s.n * s.h * s.w;
    // The direct kernel loses here: 216×48·48×65536, one thread, interleaved runs on a
    // shared machine: direct 42–46 GFLOP/s, gemm 55–66.
    sgemm(
        s.cin,
        len,
        s.cout,
        dx,
        len,
        false,
        Mat::t(w, s.cin),
        Mat::n(dy, len),
    );
}

/// Backward of a 1×1 stride-1 convolution whose input buffer may be overwritten:
/// `dw += dy·xᵀ`, then `buf` (which held x) **becomes** `dx = wᵀ·dy`. The input is dead
/// once `dw` is formed, so its storage takes the gradient and no second buffer is needed.
pub fn pointwise_backward_in_place(
    buf: &mut [f32],
    dw: &mut [f32],
    dy: &[f32],
    w: &[f32],
    s: &ConvShape,
) {
    let _t = conv_scope(s, false, 2);
    assert!(s.is_pointwise());
    route::ran(s, Product::WeightGrad, Route::Gemm);
    route::ran(s, Product::InputGrad, Route::Gemm);
    pointwise_dw(dw, dy, buf, s);
    pointwise_dx(buf, dy, w, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct convolution in f64 on NCHW-like indexing of the channel-major layout.
    fn reference(x: &[f32], w: &[f32], s: &ConvShape) -> Vec<f64> {
        let (ho, wo) = (s.ho(), s.wo());
        let mut y = vec![0f64; s.cout * s.n * ho * wo];
        for co in 0..s.cout {
            for ni in 0..s.n {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = 0f64;
                        for ci in 0..s.cin {
                            for ky in 0..s.k {
                                for kx in 0..s.k {
                                    let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                                    let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[(ci * s.n + ni) * s.h * s.w
                                        + iy as usize * s.w
                                        + ix as usize];
                                    let wv = w[((co * s.cin + ci) * s.k + ky) * s.k + kx];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y[((co * s.n + ni) * ho + oy) * wo + ox] = acc;
                    }
                }
            }
        }
        y
    }

    fn data(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 2654435761 + seed * 97) % 1000) as f32 / 500.0) - 1.0)
            .collect()
    }

    fn shapes() -> Vec<ConvShape> {
        let mk = |n, cin, cout, h, w, k, stride, pad| ConvShape {
            n,
            cin,
            cout,
            h,
            w,
            k,
            stride,
            pad,
        };
        vec![
            mk(2, 3, 4, 5, 5, 3, 1, 1), // DenseNet 3×3
            mk(3, 4, 5, 6, 6, 1, 1, 0), // 1×1 bottleneck
            // the ImageNet stem; with 4·j outputs (and AVX2) the direct kernel on im2col
            // tiles, else im2col + GEMM
            mk(2, 3, 4, 11, 9, 7, 2, 3),
            mk(1, 2, 8, 10, 8, 7, 2, 3), // even sizes, as 224×224
            mk(1, 2, 3, 10, 8, 7, 2, 3),
            mk(1, 1, 4, 3, 1, 7, 2, 3), // taps with no column inside the image
            mk(1, 1, 2, 3, 1, 7, 2, 3),
            mk(2, 3, 4, 5, 6, 3, 2, 1),
            mk(1, 2, 2, 4, 4, 3, 2, 1),
            mk(2, 4, 8, 5, 6, 3, 1, 1), // direct 3×3 kernels (conv3x3) where AVX2 exists
        ]
    }

    /// The routes [`route::choose`] takes for `s`, and im2col + GEMM, which takes any.
    fn routes(s: &ConvShape) -> [ConvRoute; 2] {
        let chosen = route::choose(s, route::Reads::Stored, true);
        let im2col = ConvRoute {
            pooled_first: false,
            forward: Route::Im2col,
            input_grad: Some(Route::Im2col),
            weight_grad: Some(Route::Im2col),
        };
        [chosen, im2col]
    }

    #[test]
    fn forward_matches_direct_convolution() {
        for s in shapes() {
            let x = data(s.cin * s.n * s.h * s.w, 1);
            let w = data(s.cout * s.col_rows(), 2);
            for r in routes(&s) {
                let mut y = vec![0.0; s.cout * s.n * s.ho() * s.wo()];
                // a scratch for one sample forces the chunked path
                let mut col = vec![0.0; col_len(&s, &r, 1)];
                let ((), ran) =
                    route::trace(|| conv_forward(&mut y, &x, &w, &s, r.forward, &mut col));
                assert_eq!(ran.len(), 1);
                assert_eq!(ran[0].route, r.forward);
                for (a, b) in y.iter().zip(reference(&x, &w, &s)) {
                    assert!((*a as f64 - b).abs() < 1e-4, "{s:?} {r:?}: {a} vs {b}");
                }
            }
        }
    }

    /// <dy, conv(x)> is bilinear: its gradient in x and w must match finite differences.
    #[test]
    fn backward_matches_finite_differences() {
        for s in shapes() {
            let x = data(s.cin * s.n * s.h * s.w, 3);
            let w = data(s.cout * s.col_rows(), 4);
            let dy = data(s.cout * s.n * s.ho() * s.wo(), 5);
            for r in routes(&s) {
                let mut col = vec![0.0; col_len(&s, &r, 1)];
                let mut dx = vec![7.0; x.len()];
                let mut dw = vec![0.0; w.len()];
                conv_backward(Some(&mut dx), &mut dw, &dy, &x, &w, &s, &r, &mut col);
                let f = |x: &[f32], w: &[f32]| -> f64 {
                    reference(x, w, &s)
                        .iter()
                        .zip(&dy)
                        .map(|(a, &b)| a * b as f64)
                        .sum()
                };
                // the objective is linear in each argument: a unit step is an exact difference
                for i in (0..x.len()).step_by(7) {
                    let mut xp = x.clone();
                    xp[i] += 1.0;
                    let fd = f(&xp, &w) - f(&x, &w);
                    assert!((fd - dx[i] as f64).abs() < 1e-3, "{s:?} {r:?} dx[{i}]");
                }
                for i in (0..w.len()).step_by(5) {
                    let mut wp = w.clone();
                    wp[i] += 1.0;
                    let fd = f(&x, &wp) - f(&x, &w);
                    assert!((fd - dw[i] as f64).abs() < 1e-3, "{s:?} {r:?} dw[{i}]");
                }
            }
        }
    }
}
