//! Batch normalisation, always followed by ReLU in a DenseNet (pre-activation order:
//! BN → ReLU → Conv), so the pair is one op.
//!
//! Activations are `[C][len]`, `len = N·H·W`. Forward is the affine map
//! `y = relu(x·scale + shift)` with per-channel `scale = γ·rstd`, `shift = β − mean·scale`,
//! where (mean, rstd) are the batch statistics in training and the running statistics in
//! evaluation. Backward recomputes `y` with the *same* `scale` and `shift`, so the ReLU mask
//! of a recomputation is bit-identical to the forward pass (memory-efficient mode depends
//! on it).

use rayon::prelude::*;

/// BatchNorm epsilon (PyTorch's default, and the reference files').
pub const BN_EPS: f32 = 1e-5;
/// Running-statistics momentum (PyTorch's default).
pub const BN_MOMENTUM: f32 = 0.1;

/// Per-channel batch mean and biased variance (divide by `len`) of `x: [C][len]`.
pub fn channel_stats(mean: &mut [f32], var: &mut [f32], x: &[f32], len: usize) {
    let c = mean.len();
    assert_eq!(var.len(), c);
    assert!(x.len() >= c * len);
    let work = |(ci, (m, v)): (usize, (&mut f32, &mut f32))| {
        let row = &x[ci * len..(ci + 1) * len];
        // Two passes with f64 accumulators: exact enough that the statistics agree with
        // PyTorch to ~1e-7 relative, and immune to the cancellation of E[x²] − E[x]².
        let mu = sum_f64(row) / len as f64;
        let var = row
            .iter()
            .map(|&v| {
                let d = v as f64 - mu;
                d * d
            })
            .sum::<f64>()
            / len as f64;
        *m = mu as f32;
        *v = var as f32;
    };
    if c * len >= super::PAR_MIN {
        mean.par_iter_mut()
            .zip(var.par_iter_mut())
            .enumerate()
            .for_each(work);
    } else {
        mean.iter_mut()
            .zip(var.iter_mut())
            .enumerate()
            .for_each(work);
    }
}

fn sum_f64(row: &[f32]) -> f64 {
    // Eight independent partial sums keep the loop vectorisable and short dependency chains.
    let mut acc = [0f64; 8];
    let chunks = row.chunks_exact(8);
    let rest = chunks.remainder();
    for ch in chunks {
        for i in 0..8 {
            acc[i] += ch[i] as f64;
        }
    }
    acc.iter().sum::<f64>() + rest.iter().map(|&v| v as f64).sum::<f64>()
}

/// `rstd = 1/sqrt(var + eps)`.
pub fn rstd_from_var(rstd: &mut [f32], var: &[f32]) {
    for (r, &v) in rstd.iter_mut().zip(var) {
        *r = 1.0 / (v + BN_EPS).sqrt();
    }
}

/// Per-channel `scale = γ·rstd`, `shift = β − mean·scale`.
pub fn scale_shift(
    scale: &mut [f32],
    shift: &mut [f32],
    mean: &[f32],
    rstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
) {
    for c in 0..scale.len() {
        scale[c] = gamma[c] * rstd[c];
        shift[c] = beta[c] - mean[c] * scale[c];
    }
}

/// PyTorch's running-statistics update: `rm ← (1−m)·rm + m·mean`,
/// `rv ← (1−m)·rv + m·var·len/(len−1)` (the *unbiased* variance).
pub fn update_running(rm: &mut [f32], rv: &mut [f32], mean: &[f32], var: &[f32], len: usize) {
    let unbias = if len > 1 {
        len as f32 / (len - 1) as f32
    } else {
        1.0
    };
    for c in 0..rm.len() {
        rm[c] = (1.0 - BN_MOMENTUM) * rm[c] + BN_MOMENTUM * mean[c];
        rv[c] = (1.0 - BN_MOMENTUM) * rv[c] + BN_MOMENTUM * var[c] * unbias;
    }
}

/// `out[c] = relu(x[c]·scale[c] + shift[c])` for `x, out: [C][len]`.
pub fn bn_relu_forward(out: &mut [f32], x: &[f32], scale: &[f32], shift: &[f32], len: usize) {
    let c = scale.len();
    let out = &mut out[..c * len];
    let work = |(ci, o): (usize, &mut [f32])| {
        let (s, t) = (scale[ci], shift[ci]);
        for (o, &v) in o.iter_mut().zip(&x[ci * len..(ci + 1) * len]) {
            *o = (v * s + t).max(0.0);
        }
    };
    if c * len >= super::PAR_MIN {
        out.par_chunks_mut(len).enumerate().for_each(work);
    } else {
        out.chunks_mut(len).enumerate().for_each(work);
    }
}

/// Where the gradient of the BN-ReLU output comes from.
#[derive(Clone, Copy)]
pub enum OutGrad<'a> {
    /// A full `[C][len]` tensor.
    Dense(&'a [f32]),
    /// The gradient of a global average pool: `dpool[c·n + i]` spread evenly over the
    /// `hw` positions of sample i, i.e. `dout[c][i·hw + p] = dpool[c·n + i] / hw`.
    Pooled {
        /// `[C][N]` gradient of the pooled features.
        dpool: &'a [f32],
        /// Batch size.
        n: usize,
        /// Positions per sample (H·W).
        hw: usize,
    },
}

/// Backward of `out = relu(γ·(x−mean)·rstd + β)` with **batch** statistics.
///
/// With `g = dout·[out > 0]` and `x̂ = (x−mean)·rstd`, summing over the `len` positions:
/// `dβ = Σg`, `dγ = Σg·x̂`, and because mean and rstd depend on x,
/// `dx = γ·rstd·(g − dβ/len − x̂·dγ/len)`.
/// `dx` is **accumulated** (a dense block's channel has several readers); `dgamma` and
/// `dbeta` are accumulated too.
#[allow(clippy::too_many_arguments)]
pub fn bn_relu_backward(
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    dout: OutGrad,
    x: &[f32],
    mean: &[f32],
    rstd: &[f32],
    scale: &[f32],
    shift: &[f32],
    gamma: &[f32],
    len: usize,
) {
    let c = scale.len();
    let dx = &mut dx[..c * len];
    let work = |(ci, (dxr, (dg, db))): (usize, (&mut [f32], (&mut f32, &mut f32)))| {
        let xr = &x[ci * len..(ci + 1) * len];
        let (s, t, mu, r) = (scale[ci], shift[ci], mean[ci], rstd[ci]);
        // The gradient arrives as runs of `seg` positions: either a dense row, or one
        // constant per sample (global average pooling spreads dpool/hw over the plane).
        let (sg, sgc) = match dout {
            OutGrad::Dense(d) => masked_sums(xr, Grad::Row(&d[ci * len..(ci + 1) * len]), s, t, mu),
            OutGrad::Pooled { dpool, n, hw } => {
                let (mut a, mut b) = (0f64, 0f64);
                for i in 0..n {
                    let gv = dpool[ci * n + i] / hw as f32;
                    let (p, q) = masked_sums(&xr[i * hw..(i + 1) * hw], Grad::Const(gv), s, t, mu);
                    a += p;
                    b += q;
                }
                (a, b)
            }
        };
        // Σg·x̂ = rstd·Σg·(x−mean)
        let sgx = sgc * r as f64;
        *dg += sgx as f32;
        *db += sg as f32;
        let k = gamma[ci] * r;
        let (mg, mgx) = ((sg / len as f64) as f32, (sgx / len as f64) as f32);
        match dout {
            OutGrad::Dense(d) => masked_update(
                dxr,
                xr,
                Grad::Row(&d[ci * len..(ci + 1) * len]),
                s,
                t,
                mu,
                r,
                k,
                mg,
                mgx,
            ),
            OutGrad::Pooled { dpool, n, hw } => {
                for i in 0..n {
                    let gv = dpool[ci * n + i] / hw as f32;
                    let seg = i * hw..(i + 1) * hw;
                    masked_update(
                        &mut dxr[seg.clone()],
                        &xr[seg],
                        Grad::Const(gv),
                        s,
                        t,
                        mu,
                        r,
                        k,
                        mg,
                        mgx,
                    );
                }
            }
        }
    };
    let it = dx
        .par_chunks_mut(len)
        .zip(dgamma[..c].par_iter_mut().zip(dbeta[..c].par_iter_mut()))
        .enumerate();
    if c * len >= super::PAR_MIN {
        it.for_each(work);
    } else {
        it.with_min_len(c.max(1)).for_each(work);
    }
}

/// The gradient of a run of positions.
#[derive(Clone, Copy)]
enum Grad<'a> {
    Row(&'a [f32]),
    Const(f32),
}

/// Lanes of the partial sums: 16 independent f32 accumulators vectorise to one AVX-512 or
/// two AVX2 registers and keep the dependency chains short.
const LANES: usize = 16;
/// Positions summed in f32 before the partial sum moves to f64: keeps f32 rounding to
/// ~1e-6 relative however long the row is.
const BLOCK: usize = 1024;

/// `(Σg, Σg·(x−mean))` over a run, `g = dout·[x·s + t > 0]`. Branch-free: the ReLU mask
/// is a select, so the loop vectorises and never mispredicts (a `if y > 0` branch here
/// cost 30% of a training step: the mask is a coin flip).
#[inline]
fn masked_sums(x: &[f32], d: Grad, s: f32, t: f32, mu: f32) -> (f64, f64) {
    match d {
        Grad::Row(row) => masked_sums_with(x, s, t, mu, |i| row[i]),
        Grad::Const(c) => masked_sums_with(x, s, t, mu, |_| c),
    }
}

#[inline(always)]
fn masked_sums_with(x: &[f32], s: f32, t: f32, mu: f32, at: impl Fn(usize) -> f32) -> (f64, f64) {
    let (mut sg, mut sgx) = (0f64, 0f64);
    let mut base = 0;
    for xb in x.chunks(BLOCK) {
        let (mut a, mut b) = ([0f32; LANES], [0f32; LANES]);
        let full = xb.len() / LANES * LANES;
        for j in (0..full).step_by(LANES) {
            for l in 0..LANES {
                let v = xb[j + l];
                let g = if v * s + t > 0.0 {
                    at(base + j + l)
                } else {
                    0.0
                };
                a[l] += g;
                b[l] += g * (v - mu);
            }
        }
        for (j, &v) in xb.iter().enumerate().skip(full) {
            let g = if v * s + t > 0.0 { at(base + j) } else { 0.0 };
            a[0] += g;
            b[0] += g * (v - mu);
        }
        sg += a.iter().sum::<f32>() as f64;
        sgx += b.iter().sum::<f32>() as f64;
        base += xb.len();
    }
    (sg, sgx)
}

/// `dx += k·(g − mg − (x−mean)·rstd·mgx)` over a run, branch-free.
#[allow(clippy::too_many_arguments)]
#[inline]
fn masked_update(
    dx: &mut [f32],
    x: &[f32],
    d: Grad,
    s: f32,
    t: f32,
    mu: f32,
    r: f32,
    k: f32,
    mg: f32,
    mgx: f32,
) {
    match d {
        Grad::Row(row) => {
            for ((o, &v), &gv) in dx.iter_mut().zip(x).zip(row) {
                let g = if v * s + t > 0.0 { gv } else { 0.0 };
                *o += k * (g - mg - (v - mu) * r * mgx);
            }
        }
        Grad::Const(gv) => {
            for (o, &v) in dx.iter_mut().zip(x) {
                let g = if v * s + t > 0.0 { gv } else { 0.0 };
                *o += k * (g - mg - (v - mu) * r * mgx);
            }
        }
    }
}

/// Final BN-ReLU fused with global average pooling: `pooled[c·n + i]` is the mean over the
/// `hw` positions of sample i of `relu(x·scale + shift)`; `x` is `[C][n·hw]`.
pub fn bn_relu_avgpool_forward(
    pooled: &mut [f32],
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    n: usize,
    hw: usize,
) {
    let c = scale.len();
    pooled[..c * n]
        .par_chunks_mut(n)
        .enumerate()
        .for_each(|(ci, out)| {
            let (s, t) = (scale[ci], shift[ci]);
            for (i, o) in out.iter_mut().enumerate() {
                let plane = &x[(ci * n + i) * hw..][..hw];
                let sum: f32 = plane.iter().map(|&v| (v * s + t).max(0.0)).sum();
                *o = sum / hw as f32;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loss = Σ w·relu(bn(x)) for fixed random w; finite differences in f64 through the
    /// forward path must match the analytic gradient.
    #[test]
    fn backward_matches_finite_differences() {
        let (c, len) = (3, 10);
        let x: Vec<f32> = (0..c * len)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 4.0)
            .collect();
        let w: Vec<f32> = (0..c * len)
            .map(|i| ((i * 11 % 7) as f32 - 3.0) / 2.0)
            .collect();
        let gamma = [1.2f32, 0.7, 1.0];
        let beta = [0.1f32, -0.2, 0.3];
        let loss = |x: &[f64]| -> f64 {
            let mut l = 0.0;
            for ci in 0..c {
                let r = &x[ci * len..(ci + 1) * len];
                let mu = r.iter().sum::<f64>() / len as f64;
                let var = r.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / len as f64;
                let rs = 1.0 / (var + BN_EPS as f64).sqrt();
                for (i, v) in r.iter().enumerate() {
                    let y = ((v - mu) * rs * gamma[ci] as f64 + beta[ci] as f64).max(0.0);
                    l += y * w[ci * len + i] as f64;
                }
            }
            l
        };
        let (mut mean, mut var, mut rstd) = (vec![0.0; c], vec![0.0; c], vec![0.0; c]);
        channel_stats(&mut mean, &mut var, &x, len);
        rstd_from_var(&mut rstd, &var);
        let (mut scale, mut shift) = (vec![0.0; c], vec![0.0; c]);
        scale_shift(&mut scale, &mut shift, &mean, &rstd, &gamma, &beta);
        let mut dx = vec![0.0; c * len];
        let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
        bn_relu_backward(
            &mut dx,
            &mut dg,
            &mut db,
            OutGrad::Dense(&w),
            &x,
            &mean,
            &rstd,
            &scale,
            &shift,
            &gamma,
            len,
        );
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        for i in 0..c * len {
            let h = 1e-6;
            let (mut p, mut m) = (x64.clone(), x64.clone());
            p[i] += h;
            m[i] -= h;
            let fd = (loss(&p) - loss(&m)) / (2.0 * h);
            assert!(
                (fd - dx[i] as f64).abs() < 1e-3,
                "dx[{i}] {} vs fd {fd}",
                dx[i]
            );
        }
        // dβ = Σ over active positions of w
        for ci in 0..c {
            let mut want = 0.0;
            for i in 0..len {
                let v = x[ci * len + i];
                if v * scale[ci] + shift[ci] > 0.0 {
                    want += w[ci * len + i];
                }
            }
            assert!((db[ci] - want).abs() < 1e-5);
        }
    }
}
