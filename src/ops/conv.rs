//! 2-D convolution without bias (every DenseNet convolution has none), on the channel-major
//! layout `x: [Cin][N·H·W]`, `y: [Cout][N·Ho·Wo]`, weights OIHW `[Cout][Cin·K·K]`.
//!
//! A 1×1 stride-1 convolution is one GEMM, `Y = W·X`, read straight from a dense block's
//! prefix. Other kernels go through im2col: `col[(ci,ky,kx)][(n,oy,ox)] = x[ci][n][iy][ix]`
//! (zero outside the image), then `Y = W·col`. im2col of a whole batch can be huge (a 3×3
//! conv over 48 channels at 64×32×32 is 113 MB), so the batch is processed in chunks of
//! samples that fit the `col` scratch the memory plan provides.
//!
//! 3×3 stride-1 padding-1 convolutions (every 3×3 in a dense layer) with channel counts
//! divisible by 4 take the direct kernels of [`crate::kernels::conv3x3`] instead when the
//! active kernels table has them ([`col_len`] then sizes the scratch for their padded copies). On
//! DenseNet-BC-100 k=12 b64 (`densenet bench train --model densenet-bc-100-12 --batch 64
//! --steps 3`, 2-core AMD EPYC, one session) the step went from 4.9 s with im2col + GEMM
//! to 2.7 s. The im2col path stays for the rest and is tested against the direct kernels.

use crate::kernels::gemm::{sgemm, Mat};
pub use crate::kernels::ConvShape;
use crate::kernels::{broadcast, conv1x1, conv3x3, DIRECT_1X1_MAX_OUTPUTS};
use crate::util::profile;
use rayon::prelude::*;

/// The im2col scratch (in floats) that a convolution wants to process `samples` at a time.
pub fn col_len(s: &ConvShape, samples: usize) -> usize {
    if s.is_pointwise() {
        0
    } else if conv3x3::applies(s) {
        conv3x3::scratch_per_sample(s) * samples.clamp(1, s.n)
    } else {
        s.col_per_sample() * samples.clamp(1, s.n)
    }
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
        .for_each(|(r, row)| {
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
        .for_each(|(ci, dxc)| {
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

/// `y[Cout][N·Ho·Wo] = conv(x, w)`; `col` is scratch (may be empty for 1×1 stride 1).
pub fn conv_forward(y: &mut [f32], x: &[f32], w: &[f32], s: &ConvShape, col: &mut [f32]) {
    let _t = conv_scope(s, true, 1);
    let (how, kr) = (s.ho() * s.wo(), s.col_rows());
    let ldy = s.n * how;
    if s.is_pointwise() {
        if s.cout <= DIRECT_1X1_MAX_OUTPUTS && conv1x1::pointwise_applies(s.cout) {
            // a dense layer's bottleneck: the direct kernel beats the `gemm` crate here
            conv1x1::pointwise(y, x, w, s.cout, s.cin, ldy, false);
            return;
        }
        sgemm(
            s.cout,
            ldy,
            s.cin,
            y,
            ldy,
            false,
            Mat::n(w, kr),
            Mat::n(x, ldy),
        );
        return;
    }
    if conv3x3::applies(s) {
        conv3x3::forward(y, x, None, w, s, col);
        return;
    }
    // the ImageNet stem (7×7, stride 2): output channels in the vector, on a padded copy
    // (`cargo bench --bench shapes -- stem_routes`: 0.74–0.90 of the route below)
    if s.k == 7 && broadcast::forward_padded(y, x, w, s, col) {
        return;
    }
    if conv1x1::pointwise_applies(s.cout) {
        // other kernels and strides (and the stem where `col` holds no padded sample):
        // the direct 1×1 kernel over im2col rows formed a tile at a time
        conv1x1::pointwise_with(y, w, s.cout, kr, ldy, false, |buf, ld, a, b| {
            im2col_tile(buf, ld, x, s, a, b)
        });
        return;
    }
    im2col_forward(y, x, w, s, col);
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

/// Backward of [`conv_forward`]: `dw += dy·colᵀ`; if `dx` is given it is **overwritten**
/// with `col2im(wᵀ·dy)`.
pub fn conv_backward(
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    s: &ConvShape,
    col: &mut [f32],
) {
    let _t = conv_scope(s, false, 1 + dx.is_some() as usize);
    if s.is_pointwise() {
        pointwise_dw(dw, dy, x, s);
        if let Some(dx) = dx {
            pointwise_dx(dx, dy, w, s);
        }
        return;
    }
    if conv3x3::applies(s) && (dx.is_none() || conv3x3::applies_data(s)) {
        conv3x3::backward(dx, dw, dy, x, None, w, s, col);
        return;
    }
    // the ImageNet stem's weight gradient (its input needs none): output channels in the
    // vector, on a padded copy (`stem_routes`: 0.58–0.81 of im2col + GEMM)
    if s.k == 7 && dx.is_none() && broadcast::weight_grad_padded(dw, dy, x, s, col) {
        return;
    }
    im2col_backward(dx, dw, dy, x, w, s, col);
}

/// [`conv_backward`] through im2col + GEMM + col2im (any kernel, stride and padding):
/// the route every table shares, which benchmarks compare the others against.
pub fn im2col_backward(
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    s: &ConvShape,
    col: &mut [f32],
) {
    let (how, kr, hw) = (s.ho() * s.wo(), s.col_rows(), s.h * s.w);
    let ldy = s.n * how;
    let chunk = s.chunk(col.len());
    let mut dx = dx;
    if let Some(dx) = dx.as_deref_mut() {
        dx[..s.cin * s.n * hw].fill(0.0);
    }
    let mut n0 = 0;
    while n0 < s.n {
        let n1 = (n0 + chunk).min(s.n);
        let cols = (n1 - n0) * how;
        let dyc = &dy[n0 * how..];
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

    #[test]
    fn forward_matches_direct_convolution() {
        for s in shapes() {
            let x = data(s.cin * s.n * s.h * s.w, 1);
            let w = data(s.cout * s.col_rows(), 2);
            let mut y = vec![0.0; s.cout * s.n * s.ho() * s.wo()];
            // a scratch for one sample forces the chunked path
            let mut col = vec![0.0; col_len(&s, 1)];
            conv_forward(&mut y, &x, &w, &s, &mut col);
            for (a, b) in y.iter().zip(reference(&x, &w, &s)) {
                assert!((*a as f64 - b).abs() < 1e-4, "{s:?}: {a} vs {b}");
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
            let mut col = vec![0.0; col_len(&s, 1)];
            let mut dx = vec![7.0; x.len()];
            let mut dw = vec![0.0; w.len()];
            conv_backward(Some(&mut dx), &mut dw, &dy, &x, &w, &s, &mut col);
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
                assert!((fd - dx[i] as f64).abs() < 1e-3, "{s:?} dx[{i}]");
            }
            for i in (0..w.len()).step_by(5) {
                let mut wp = w.clone();
                wp[i] += 1.0;
                let fd = f(&x, &wp) - f(&x, &w);
                assert!((fd - dw[i] as f64).abs() < 1e-3, "{s:?} dw[{i}]");
            }
        }
    }
}
