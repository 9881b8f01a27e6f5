//! Pooling on the channel-major layout: planes of `h×w` for every (channel, sample), so a
//! `[C][N·H·W]` tensor is simply `C·N` planes in a row.

use crate::util::par::{with_scratch, OnTeam};
use rayon::prelude::*;

/// Output size of a pooling window: `⌊(size + 2·pad − k)/stride⌋ + 1` (PyTorch's floor mode).
pub fn pooled_size(size: usize, k: usize, stride: usize, pad: usize) -> usize {
    (size + 2 * pad - k) / stride + 1
}

/// 2×2 average pooling, stride 2 (transitions): `planes` planes of `h×w` → `h/2 × w/2`.
pub fn avgpool2_forward(y: &mut [f32], x: &[f32], planes: usize, h: usize, w: usize) {
    let _t = crate::util::profile::scope(crate::util::profile::Op::Pool);
    let (ho, wo) = (h / 2, w / 2);
    if planes * ho * wo == 0 {
        return;
    }
    y[..planes * ho * wo]
        .par_chunks_mut(ho * wo)
        .enumerate()
        .team_for_each(|(p, out)| {
            let plane = &x[p * h * w..][..h * w];
            for oy in 0..ho {
                let (r0, r1) = (&plane[2 * oy * w..][..w], &plane[(2 * oy + 1) * w..][..w]);
                for ox in 0..wo {
                    out[oy * wo + ox] =
                        0.25 * (r0[2 * ox] + r0[2 * ox + 1] + r1[2 * ox] + r1[2 * ox + 1]);
                }
            }
        });
}

/// `relu(x·scale + shift)` (per channel of `x: [C][N·h·w]`, `n` samples) pooled as
/// [`avgpool2_forward`] pools: a transition's BN-ReLU, pooled before its 1×1 convolution
/// instead of after. The two commute (both are linear, and a 1×1 mixes no positions; the
/// floor's dropped row and column drop the same outputs either way), and pooled first the
/// convolution runs on a quarter of the positions: a tenth of densenet121's multiply-adds
/// are its transitions' 1×1s. Evaluation, and training where no dropout sits between the
/// convolution and the pool (`fused::pooled_forward`).
pub fn bn_relu_avgpool2_forward(
    y: &mut [f32],
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    n: usize,
    h: usize,
    w: usize,
) {
    let _t = crate::util::profile::scope(crate::util::profile::Op::Pool);
    assert_eq!(scale.len(), shift.len());
    let (ho, wo, planes) = (h / 2, w / 2, scale.len() * n);
    assert!(x.len() >= planes * h * w && y.len() >= planes * ho * wo);
    if planes * ho * wo == 0 {
        return;
    }
    // one plane (channel c, sample) per task
    let body = crate::kernels::active().bn_relu_avg_pool2;
    y[..planes * ho * wo]
        .par_chunks_mut(ho * wo)
        .enumerate()
        .team_for_each(|(p, out)| {
            let c = p / n;
            body(out, &x[p * h * w..][..h * w], h, w, scale[c], shift[c])
        });
}

/// Backward of [`avgpool2_forward`]: `dx` is **overwritten** (each input position belongs
/// to at most one window; rows/columns dropped by the floor get zero).
pub fn avgpool2_backward(dx: &mut [f32], dy: &[f32], planes: usize, h: usize, w: usize) {
    let _t = crate::util::profile::scope(crate::util::profile::Op::Pool);
    let (ho, wo) = (h / 2, w / 2);
    dx[..planes * h * w]
        .par_chunks_mut(h * w)
        .enumerate()
        .team_for_each(|(p, plane)| {
            plane.fill(0.0);
            let g = &dy[p * ho * wo..][..ho * wo];
            for oy in 0..ho {
                for ox in 0..wo {
                    let v = 0.25 * g[oy * wo + ox];
                    for (dy_, dx_) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        plane[(2 * oy + dy_) * w + 2 * ox + dx_] = v;
                    }
                }
            }
        });
}

/// 3×3 max pooling, stride 2, padding 1 (ImageNet stem). With `argmax` (training) it
/// records the winning input position of each output (index within its plane) for the
/// backward pass; without it (evaluation) it takes a faster separable route.
pub fn maxpool3s2_forward(
    y: &mut [f32],
    argmax: Option<&mut [u32]>,
    x: &[f32],
    planes: usize,
    h: usize,
    w: usize,
) {
    let _t = crate::util::profile::scope(crate::util::profile::Op::Pool);
    let (ho, wo) = (pooled_size(h, 3, 2, 1), pooled_size(w, 3, 2, 1));
    let Some(argmax) = argmax else {
        // rows of the window first, then columns split by parity: `kernels::pool`. Same
        // result as the scan below: max is exact, and NaN wins in both.
        let body = crate::kernels::active().max_pool3s2;
        y[..planes * ho * wo]
            .par_chunks_mut(ho * wo)
            .enumerate()
            .team_for_each(|(p, out)| {
                with_scratch(
                    &COLUMNS,
                    crate::kernels::pool::max_pool3s2_scratch(w),
                    |s| body(out, &x[p * h * w..][..h * w], h, w, s),
                )
            });
        return;
    };
    y[..planes * ho * wo]
        .par_chunks_mut(ho * wo)
        .zip(argmax[..planes * ho * wo].par_chunks_mut(ho * wo))
        .enumerate()
        .team_for_each(|(p, (out, arg))| {
            let plane = &x[p * h * w..][..h * w];
            with_scratch(&COLUMNS, 2 * w.div_ceil(2), |cols| {
                let (even, odd) = cols.split_at_mut(w.div_ceil(2));
                for oy in 0..ho {
                    let (out, arg) = (&mut out[oy * wo..][..wo], &mut arg[oy * wo..][..wo]);
                    argmax_row(
                        out,
                        arg,
                        plane,
                        w,
                        (2 * oy).saturating_sub(1),
                        (2 * oy + 2).min(h),
                        even,
                        odd,
                    );
                }
            })
        });
}

thread_local! {
    /// A plane row split into its even and odd columns ([`argmax_row`]).
    static COLUMNS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One output row of the 3×3, stride 2, padding 1 max pool with its argmax, over input
/// rows `r0..r1` of `plane` (width `w`). PyTorch's scan, per output: window positions in
/// row-major order from the first, strict `>` (the first maximum wins), a NaN always wins.
///
/// Vectorised across outputs: output ox reads columns 2ox−1, 2ox and 2ox+1, i.e.
/// `odd[ox−1]`, `even[ox]` and `odd[ox]` of the row split by column parity, so each tap
/// is one select over contiguous lanes. (The scan one output at a time was a chain of
/// dependent compare-and-selects: 52 ms of a densenet121 training step at batch 16.)
#[allow(clippy::too_many_arguments)]
fn argmax_row(
    out: &mut [f32],
    arg: &mut [u32],
    plane: &[f32],
    w: usize,
    r0: usize,
    r1: usize,
    even: &mut [f32],
    odd: &mut [f32],
) {
    let wo = out.len();
    out.fill(f32::NEG_INFINITY);
    // each window's first position: row r0, column max(2ox − 1, 0)
    for (ox, a) in arg.iter_mut().enumerate() {
        *a = (r0 * w + (2 * ox).saturating_sub(1)) as u32;
    }
    for r in r0..r1 {
        let row = &plane[r * w..][..w];
        for (j, e) in even.iter_mut().enumerate() {
            *e = row[2 * j];
        }
        for (j, o) in odd.iter_mut().enumerate().take(w / 2) {
            *o = row[2 * j + 1];
        }
        let base = (r * w) as u32;
        // (values, first output, first column of that output's tap, outputs)
        let taps = [
            // column 2ox − 1: outputs 1.. (output 0's window starts at column 0)
            (&odd[..], 1, 1u32, wo.min(w / 2 + 1).saturating_sub(1)),
            // column 2ox
            (&even[..], 0, 0, wo.min(w.div_ceil(2))),
            // column 2ox + 1, where it lies inside the row
            (&odd[..], 0, 1, wo.min(w / 2)),
        ];
        for (vals, first, col0, n) in taps {
            let src = &vals[..n];
            let (o, a) = (&mut out[first..first + n], &mut arg[first..first + n]);
            let at0 = base + col0;
            for (j, ((best, at), &v)) in o.iter_mut().zip(a.iter_mut()).zip(src).enumerate() {
                // selects as bit masks and unconditional stores: written as `if`, LLVM
                // made each lane a branch and a conditional store
                let take = 0u32.wrapping_sub(((v > *best) | v.is_nan()) as u32);
                *best = f32::from_bits((v.to_bits() & take) | (best.to_bits() & !take));
                *at = ((at0 + 2 * j as u32) & take) | (*at & !take);
            }
        }
    }
}

/// Backward of [`maxpool3s2_forward`]: `dx` is **overwritten**.
pub fn maxpool3s2_backward(
    dx: &mut [f32],
    dy: &[f32],
    argmax: &[u32],
    planes: usize,
    h: usize,
    w: usize,
) {
    let _t = crate::util::profile::scope(crate::util::profile::Op::Pool);
    let (ho, wo) = (pooled_size(h, 3, 2, 1), pooled_size(w, 3, 2, 1));
    dx[..planes * h * w]
        .par_chunks_mut(h * w)
        .enumerate()
        .team_for_each(|(p, plane)| {
            plane.fill(0.0);
            let (g, a) = (
                &dy[p * ho * wo..][..ho * wo],
                &argmax[p * ho * wo..][..ho * wo],
            );
            for (gv, &ai) in g.iter().zip(a) {
                plane[ai as usize] += gv;
            }
        });
}

#[cfg(test)]
mod tests {

    #[test]
    fn pooled_bn_relu_is_bn_relu_then_pool() {
        // odd sizes (the floor drops a row and a column), two samples, three channels
        for (h, w) in [(4, 4), (5, 7), (1, 3), (2, 2)] {
            let (c, n) = (3, 2);
            let x: Vec<f32> = (0..c * n * h * w)
                .map(|v| ((v * 37 % 23) as f32 - 11.0) * 0.1)
                .collect();
            let (scale, shift) = ([0.5f32, -1.25, 2.0], [0.1f32, 0.3, -0.7]);
            let len = n * h * w;
            let mut a = vec![0.0; c * len];
            for ch in 0..c {
                for p in 0..len {
                    a[ch * len + p] = (x[ch * len + p] * scale[ch] + shift[ch]).max(0.0);
                }
            }
            let out = c * n * (h / 2) * (w / 2);
            let mut want = vec![f32::NAN; out];
            avgpool2_forward(&mut want, &a, c * n, h, w);
            let mut got = vec![f32::NAN; out];
            bn_relu_avgpool2_forward(&mut got, &x, &scale, &shift, n, h, w);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                    "{h}×{w}: {g} vs {w}"
                );
            }
        }
    }

    use super::*;

    #[test]
    fn avgpool_forward_backward() {
        let x: Vec<f32> = (0..2 * 5 * 4).map(|i| i as f32).collect(); // 2 planes 5×4
        let mut y = vec![0.0; 2 * 2 * 2];
        avgpool2_forward(&mut y, &x, 2, 5, 4);
        assert_eq!(y[0], (0.0 + 1.0 + 4.0 + 5.0) / 4.0);
        // plane 1 starts at 20; output (1, 1) averages rows 2-3, columns 2-3
        assert_eq!(y[7], (30.0 + 31.0 + 34.0 + 35.0) / 4.0);
        let mut dx = vec![9.0; x.len()];
        avgpool2_backward(&mut dx, &[4.0; 8], 2, 5, 4);
        assert_eq!(dx[0], 1.0);
        assert_eq!(dx[16], 0.0, "the row dropped by the floor gets no gradient");
    }

    #[test]
    fn maxpool_picks_window_maximum() {
        assert_eq!(pooled_size(5, 3, 2, 1), 3);
        for (h, w) in [(5, 5), (6, 7), (1, 4), (8, 3), (4, 1), (9, 16), (7, 17)] {
            check_maxpool(h, w, false);
            check_maxpool(h, w, true);
        }
    }

    /// Both routes against PyTorch's scan written out: the maxima (ties everywhere: 11
    /// distinct values), the index of the *first* maximum in row-major window order, and
    /// with `nan`, NaNs that win their windows.
    fn check_maxpool(h: usize, w: usize, nan: bool) {
        let x: Vec<f32> = (0..h * w)
            .map(|i| match i % 13 {
                5 if nan => f32::NAN,
                _ => ((i * 7) % 11) as f32,
            })
            .collect();
        let (ho, wo) = (pooled_size(h, 3, 2, 1), pooled_size(w, 3, 2, 1));
        let mut y = vec![0.0; ho * wo];
        let mut arg = vec![0; ho * wo];
        maxpool3s2_forward(&mut y, Some(&mut arg), &x, 1, h, w);
        let mut fast = vec![0.0; ho * wo];
        maxpool3s2_forward(&mut fast, None, &x, 1, h, w);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&fast),
            bits(&y),
            "the separable route gives the same maxima"
        );
        for oy in 0..ho {
            for ox in 0..wo {
                let (r0, c0) = ((2 * oy).saturating_sub(1), (2 * ox).saturating_sub(1));
                let (mut best, mut at) = (f32::NEG_INFINITY, r0 * w + c0);
                for iy in r0..(2 * oy + 2).min(h) {
                    for ix in c0..(2 * ox + 2).min(w) {
                        let v = x[iy * w + ix];
                        if v > best || v.is_nan() {
                            (best, at) = (v, iy * w + ix);
                        }
                    }
                }
                let o = oy * wo + ox;
                assert_eq!(
                    y[o].to_bits(),
                    best.to_bits(),
                    "{h}×{w} output ({oy}, {ox})"
                );
                assert_eq!(arg[o] as usize, at, "{h}×{w} output ({oy}, {ox})");
            }
        }
        let mut dx = vec![0.0; h * w];
        maxpool3s2_backward(&mut dx, &vec![1.0; ho * wo], &arg, 1, h, w);
        assert_eq!(dx.iter().sum::<f32>(), (ho * wo) as f32);
    }
}
