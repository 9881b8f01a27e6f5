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
    let _t = crate::profile::scope(crate::profile::Op::BnForward);
    let c = mean.len();
    assert_eq!(var.len(), c);
    assert!(x.len() >= c * len);
    let work = |(ci, (m, v)): (usize, (&mut f32, &mut f32))| {
        let (mu, var) = row_stats(&x[ci * len..(ci + 1) * len]);
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

/// Mean and biased variance of one channel: two passes with f64 accumulators, exact
/// enough that the statistics agree with PyTorch to ~1e-7 relative, and immune to the
/// cancellation of E[x²] − E[x]². AVX2 when available (same arithmetic, same order,
/// bit-identical).
fn row_stats(row: &[f32]) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { row_stats_avx2(row) };
    }
    row_stats_body(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_stats_avx2(row: &[f32]) -> (f64, f64) {
    row_stats_body(row)
}

#[inline(always)]
fn row_stats_body(row: &[f32]) -> (f64, f64) {
    let n = row.len().max(1) as f64;
    let mu = sum8(row, |v| v as f64) / n;
    let var = sum8(row, |v| {
        let d = v as f64 - mu;
        d * d
    }) / n;
    (mu, var)
}

/// `Σ f(v)` over a row with eight independent partial sums: they keep the loop
/// vectorisable (f64 adds do not reassociate) and the dependency chains short (the
/// variance pass as one serial sum took 3% of a BC-100 step).
#[inline(always)]
fn sum8(row: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = row.chunks_exact(8);
    let rest = chunks.remainder();
    for ch in chunks {
        for i in 0..8 {
            acc[i] += f(ch[i]);
        }
    }
    acc.iter().sum::<f64>() + rest.iter().map(|&v| f(v)).sum::<f64>()
}

/// `rstd = 1/sqrt(var + eps)`.
pub fn rstd_from_var(rstd: &mut [f32], var: &[f32]) {
    for (r, &v) in rstd.iter_mut().zip(var) {
        *r = 1.0 / (v + BN_EPS).sqrt();
    }
}

/// Per-channel `scale = γ·rstd`, `shift = β − mean·scale`; `scale` holds rstd on entry
/// (so the evaluation path can compute rstd in place, without a temporary).
pub fn scale_shift(
    scale: &mut [f32],
    shift: &mut [f32],
    mean: &[f32],
    gamma: &[f32],
    beta: &[f32],
) {
    for c in 0..scale.len() {
        scale[c] *= gamma[c];
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
    let _t = crate::profile::scope(crate::profile::Op::BnForward);
    let c = scale.len();
    let out = &mut out[..c * len];
    let work = |(ci, o): (usize, &mut [f32])| {
        affine_relu(o, &x[ci * len..(ci + 1) * len], scale[ci], shift[ci]);
    };
    if c * len >= super::PAR_MIN {
        out.par_chunks_mut(len).enumerate().for_each(work);
    } else {
        out.chunks_mut(len).enumerate().for_each(work);
    }
}

/// `o = relu(x·s + t)`; AVX2 when available (bit-identical: no FMA contraction).
#[inline]
pub(crate) fn affine_relu(o: &mut [f32], x: &[f32], s: f32, t: f32) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { affine_relu_avx2(o, x, s, t) };
    }
    affine_relu_body(o, x, s, t)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn affine_relu_avx2(o: &mut [f32], x: &[f32], s: f32, t: f32) {
    affine_relu_body(o, x, s, t)
}

#[inline(always)]
fn affine_relu_body(o: &mut [f32], x: &[f32], s: f32, t: f32) {
    for (o, &v) in o.iter_mut().zip(x) {
        *o = (v * s + t).max(0.0);
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
    bn_relu_backward_impl::<true>(
        dx, dgamma, dbeta, dout, x, mean, rstd, scale, shift, gamma, len,
    )
}

/// [`bn_relu_backward`] for an input with one reader: `dx` is **overwritten** (no zeroing
/// pass before, no read of the old values); `dgamma` and `dbeta` still accumulate.
#[allow(clippy::too_many_arguments)]
pub fn bn_relu_backward_into(
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
    bn_relu_backward_impl::<false>(
        dx, dgamma, dbeta, dout, x, mean, rstd, scale, shift, gamma, len,
    )
}

#[allow(clippy::too_many_arguments)]
fn bn_relu_backward_impl<const ACC: bool>(
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
    let _t = crate::profile::scope(crate::profile::Op::BnBackward);
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
        let (k, mg, mgx) = finish_channel(sg, sgc, r, gamma[ci], len, dg, db);
        match dout {
            OutGrad::Dense(d) => masked_update::<ACC>(
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
                    masked_update::<ACC>(
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
    per_channel(it, c * len, work);
}

/// Runs `work` on every channel of `it`: in parallel from [`super::PAR_MIN`] floats of
/// work on, else as one piece on the calling thread.
fn per_channel<I: IndexedParallelIterator>(
    it: I,
    floats: usize,
    work: impl Fn(I::Item) + Sync + Send,
) {
    if floats >= super::PAR_MIN {
        it.for_each(work);
    } else {
        let c = it.len().max(1);
        it.with_min_len(c).for_each(work);
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
/// cost 30% of a training step: the mask is a coin flip). The gradient row is walked in
/// `[f32; LANES]` chunks zipped with x: an indexed read `row[base + j + l]` kept its
/// bounds checks and the loop scalar (masked_sums was 21% of a BC-100 b64 training step
/// under `perf record`, ~3% after this change). Compiled twice: for AVX2+FMA (selected at
/// run time) and for the baseline target. The arithmetic and its order are the same in
/// both, so results are bit-identical.
#[inline]
fn masked_sums(x: &[f32], d: Grad, s: f32, t: f32, mu: f32) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { masked_sums_avx2::<false>(x, d, s, t, mu, &mut [], 0.0) };
    }
    masked_sums_body::<false>(x, d, s, t, mu, &mut [], 0.0)
}

/// [`masked_sums`] of a gradient row `d` that also adds `k·g` to `dx` in the same sweep
/// (`g = d·[x·s + t > 0]`): the first half of `dx += k·(g − mg − x̂·mgx)` for a caller
/// that has `d` only a tile at a time and finishes with [`centred_update`] once the sums
/// over all positions are known (see `fused::backward`).
#[inline]
#[allow(clippy::too_many_arguments)]
pub(crate) fn masked_sums_axpy(
    dx: &mut [f32],
    x: &[f32],
    d: &[f32],
    s: f32,
    t: f32,
    mu: f32,
    k: f32,
) -> (f64, f64) {
    assert!(dx.len() == x.len() && d.len() == x.len());
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { masked_sums_avx2::<true>(x, Grad::Row(d), s, t, mu, dx, k) };
    }
    masked_sums_body::<true>(x, Grad::Row(d), s, t, mu, dx, k)
}

/// The second half of the BN-ReLU input gradient: `dx += c0 + (x − mu)·c1`.
pub(crate) fn centred_update(dx: &mut [f32], x: &[f32], mu: f32, c0: f32, c1: f32) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { centred_update_avx2(dx, x, mu, c0, c1) };
    }
    centred_update_body(dx, x, mu, c0, c1)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn centred_update_avx2(dx: &mut [f32], x: &[f32], mu: f32, c0: f32, c1: f32) {
    centred_update_body(dx, x, mu, c0, c1)
}

#[inline(always)]
fn centred_update_body(dx: &mut [f32], x: &[f32], mu: f32, c0: f32, c1: f32) {
    for (o, &v) in dx.iter_mut().zip(x) {
        *o += c0 + (v - mu) * c1;
    }
}

/// The per-channel constants of the BN-ReLU input gradient from the sums `sg = Σg` and
/// `sgc = Σg·(x − mean)` over `len` positions; accumulates `dγ = Σg·x̂` and `dβ = Σg`.
/// Returns `(k, mg, mgx)` of `dx = k·(g − mg − x̂·mgx)`.
fn finish_channel(
    sg: f64,
    sgc: f64,
    r: f32,
    gamma: f32,
    len: usize,
    dg: &mut f32,
    db: &mut f32,
) -> (f32, f32, f32) {
    // Σg·x̂ = rstd·Σg·(x−mean)
    let sgx = sgc * r as f64;
    *dg += sgx as f32;
    *db += sg as f32;
    let (mg, mgx) = ((sg / len as f64) as f32, (sgx / len as f64) as f32);
    (gamma * r, mg, mgx)
}

/// Turns the per-channel sums `sums[c] = (Σg, Σg·(x − mean))` of a BN-ReLU backward whose
/// `dx += k·g` half was done by [`masked_sums_axpy`] into `dγ`, `dβ` (accumulated) and
/// the rest of `dx = k·(g − mg − x̂·mgx)`, which is not applied here but added to
/// `pending[c]` as `(c0, c1)` of `dx += c0 + c1·(x − mean)` (see [`apply_pending`]).
pub(crate) fn bn_relu_backward_pending(
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    pending: &mut [(f64, f64)],
    sums: &[(f64, f64)],
    rstd: &[f32],
    gamma: &[f32],
    len: usize,
) {
    for (c, (&(sg, sgc), pend)) in sums.iter().zip(pending.iter_mut()).enumerate() {
        let r = rstd[c];
        let (k, mg, mgx) = finish_channel(sg, sgc, r, gamma[c], len, &mut dgamma[c], &mut dbeta[c]);
        pend.0 -= (k * mg) as f64;
        pend.1 -= (k * r * mgx) as f64;
    }
}

/// Completes the gradient of channels whose readers left their BN-ReLU backward's centred
/// part pending: `dx[c] += c0 + c1·(x[c] − mean[c])` with `(c0, c1) = pending[c]`, which
/// is then cleared (parallel over channels).
///
/// Why this is exact: every reader of a dense block's channel normalises it with the same
/// batch statistics (only γ and β are the reader's own), so each reader's
/// `−k·(mg + x̂·mgx)` is an affine map of the same `x`, and their sum is one affine map,
/// applied once when the channel's last reader is done. The alternative, a second pass
/// over all `m` input channels per layer, was the largest memory stream of the backward.
pub(crate) fn apply_pending(
    dx: &mut [f32],
    x: &[f32],
    mean: &[f32],
    pending: &mut [(f64, f64)],
    len: usize,
) {
    let _t = crate::profile::scope(crate::profile::Op::BnBackward);
    let c = pending.len();
    let work = |(ci, (dxr, pend)): (usize, (&mut [f32], &mut (f64, f64)))| {
        if *pend != (0.0, 0.0) {
            let (c0, c1) = std::mem::take(pend);
            centred_update(
                dxr,
                &x[ci * len..(ci + 1) * len],
                mean[ci],
                c0 as f32,
                c1 as f32,
            );
        }
    };
    let it = dx[..c * len]
        .par_chunks_mut(len)
        .zip(pending.par_iter_mut())
        .enumerate();
    per_channel(it, c * len, work);
}

/// [`masked_sums_body`] in AVX2 intrinsics: LLVM left the 16-lane select-and-accumulate
/// body scalar (spilling the lanes to the stack) even inside a `target_feature` function.
/// Lanes 0–7 and 8–15 are two registers; mul and add stay separate (no FMA) so the ReLU
/// mask and every partial sum are bit-identical to the portable version.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn masked_sums_avx2<const AXPY: bool>(
    x: &[f32],
    d: Grad,
    s: f32,
    t: f32,
    mu: f32,
    dx: &mut [f32],
    k: f32,
) -> (f64, f64) {
    use std::arch::x86_64::*;
    assert!(!AXPY || dx.len() == x.len());
    let (mut sg, mut sgx) = (0f64, 0f64);
    let (vs, vt, vmu, vk, zero) = (
        _mm256_set1_ps(s),
        _mm256_set1_ps(t),
        _mm256_set1_ps(mu),
        _mm256_set1_ps(k),
        _mm256_setzero_ps(),
    );
    for (bi, xb) in x.chunks(BLOCK).enumerate() {
        let full = xb.len() / LANES * LANES;
        let (gb, c) = match d {
            Grad::Row(row) => (Some(&row[bi * BLOCK..][..xb.len()]), 0.0),
            Grad::Const(c) => (None, c),
        };
        let vc = _mm256_set1_ps(c);
        let (mut a0, mut a1, mut b0, mut b1) = (zero, zero, zero, zero);
        let xp = xb.as_ptr();
        let mut j = 0;
        while j < full {
            // SAFETY: j + 16 <= full <= xb.len() (and the gradient row has xb.len() too).
            let (x0, x1) = (_mm256_loadu_ps(xp.add(j)), _mm256_loadu_ps(xp.add(j + 8)));
            let (g0, g1) = match gb {
                Some(g) => (
                    _mm256_loadu_ps(g.as_ptr().add(j)),
                    _mm256_loadu_ps(g.as_ptr().add(j + 8)),
                ),
                None => (vc, vc),
            };
            let m0 = _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_add_ps(_mm256_mul_ps(x0, vs), vt), zero);
            let m1 = _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_add_ps(_mm256_mul_ps(x1, vs), vt), zero);
            let (g0, g1) = (_mm256_and_ps(m0, g0), _mm256_and_ps(m1, g1));
            if AXPY {
                // SAFETY: dx has x's length (asserted), so j + 16 is in bounds here too
                let o = dx.as_mut_ptr().add(bi * BLOCK + j);
                _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), _mm256_mul_ps(vk, g0)));
                let o = o.add(8);
                _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), _mm256_mul_ps(vk, g1)));
            }
            a0 = _mm256_add_ps(a0, g0);
            a1 = _mm256_add_ps(a1, g1);
            b0 = _mm256_add_ps(b0, _mm256_mul_ps(g0, _mm256_sub_ps(x0, vmu)));
            b1 = _mm256_add_ps(b1, _mm256_mul_ps(g1, _mm256_sub_ps(x1, vmu)));
            j += LANES;
        }
        let (mut a, mut b) = ([0f32; LANES], [0f32; LANES]);
        _mm256_storeu_ps(a.as_mut_ptr(), a0);
        _mm256_storeu_ps(a.as_mut_ptr().add(8), a1);
        _mm256_storeu_ps(b.as_mut_ptr(), b0);
        _mm256_storeu_ps(b.as_mut_ptr().add(8), b1);
        for (jj, &v) in xb.iter().enumerate().skip(full) {
            let gv = gb.map_or(c, |g| g[jj]);
            let g = if v * s + t > 0.0 { gv } else { 0.0 };
            if AXPY {
                dx[bi * BLOCK + jj] += k * g;
            }
            a[0] += g;
            b[0] += g * (v - mu);
        }
        sg += a.iter().sum::<f32>() as f64;
        sgx += b.iter().sum::<f32>() as f64;
    }
    (sg, sgx)
}

#[inline(always)]
fn masked_sums_body<const AXPY: bool>(
    x: &[f32],
    d: Grad,
    s: f32,
    t: f32,
    mu: f32,
    dx: &mut [f32],
    k: f32,
) -> (f64, f64) {
    assert!(!AXPY || (matches!(d, Grad::Row(_)) && dx.len() == x.len()));
    let (mut sg, mut sgx) = (0f64, 0f64);
    for (bi, xb) in x.chunks(BLOCK).enumerate() {
        let (mut a, mut b) = ([0f32; LANES], [0f32; LANES]);
        let xc = xb.chunks_exact(LANES);
        let xr = xc.remainder();
        let full = xb.len() - xr.len();
        match d {
            Grad::Row(row) => {
                let gb = &row[bi * BLOCK..][..xb.len()];
                for (j, (xv, gv)) in xc.zip(gb.chunks_exact(LANES)).enumerate() {
                    let xv: &[f32; LANES] = xv.try_into().unwrap();
                    let gv: &[f32; LANES] = gv.try_into().unwrap();
                    for l in 0..LANES {
                        let v = xv[l];
                        let g = if v * s + t > 0.0 { gv[l] } else { 0.0 };
                        if AXPY {
                            dx[bi * BLOCK + j * LANES + l] += k * g;
                        }
                        a[l] += g;
                        b[l] += g * (v - mu);
                    }
                }
                for (jj, (&v, &gv)) in xr.iter().zip(&gb[full..]).enumerate() {
                    let g = if v * s + t > 0.0 { gv } else { 0.0 };
                    if AXPY {
                        dx[bi * BLOCK + full + jj] += k * g;
                    }
                    a[0] += g;
                    b[0] += g * (v - mu);
                }
            }
            Grad::Const(c) => {
                for xv in xc {
                    let xv: &[f32; LANES] = xv.try_into().unwrap();
                    for l in 0..LANES {
                        let v = xv[l];
                        let g = if v * s + t > 0.0 { c } else { 0.0 };
                        a[l] += g;
                        b[l] += g * (v - mu);
                    }
                }
                for &v in xr {
                    let g = if v * s + t > 0.0 { c } else { 0.0 };
                    a[0] += g;
                    b[0] += g * (v - mu);
                }
            }
        }
        sg += a.iter().sum::<f32>() as f64;
        sgx += b.iter().sum::<f32>() as f64;
    }
    (sg, sgx)
}

/// `dx += k·(g − mg − (x−mean)·rstd·mgx)` over a run (`dx =` without `ACC`),
/// branch-free; AVX2 when available (same arithmetic, bit-identical results).
#[allow(clippy::too_many_arguments)]
#[inline]
fn masked_update<const ACC: bool>(
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
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { masked_update_avx2::<ACC>(dx, x, d, s, t, mu, r, k, mg, mgx) };
    }
    masked_update_body::<ACC>(dx, x, d, s, t, mu, r, k, mg, mgx)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn masked_update_avx2<const ACC: bool>(
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
    masked_update_body::<ACC>(dx, x, d, s, t, mu, r, k, mg, mgx)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn masked_update_body<const ACC: bool>(
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
                let d = k * (g - mg - (v - mu) * r * mgx);
                *o = if ACC { *o + d } else { d };
            }
        }
        Grad::Const(gv) => {
            for (o, &v) in dx.iter_mut().zip(x) {
                let g = if v * s + t > 0.0 { gv } else { 0.0 };
                let d = k * (g - mg - (v - mu) * r * mgx);
                *o = if ACC { *o + d } else { d };
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
    let _t = crate::profile::scope(crate::profile::Op::BnForward);
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
    /// The AVX2 kernel must reproduce the portable one bit for bit (the ReLU mask of a
    /// recomputation depends on it), on lengths that leave remainders in both the lane
    /// loop and the f32 block.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn masked_sums_avx2_is_bit_identical() {
        if !crate::ops::simd::avx2_fma() {
            return;
        }
        for len in [0, 1, 15, 17, 1000, 1024, 2049, 5000] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
                .collect();
            let g: Vec<f32> = (0..len)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 3.0)
                .collect();
            for d in [Grad::Row(&g), Grad::Const(0.37)] {
                let want = masked_sums_body::<false>(&x, d, 0.8, -0.1, 0.05, &mut [], 0.0);
                // SAFETY: checked avx2_fma above.
                let got =
                    unsafe { masked_sums_avx2::<false>(&x, d, 0.8, -0.1, 0.05, &mut [], 0.0) };
                assert_eq!(want.0.to_bits(), got.0.to_bits(), "len {len}");
                assert_eq!(want.1.to_bits(), got.1.to_bits(), "len {len}");
            }
            // the variant that also adds k·g to dx: same sums, same dx
            let (mut dx0, mut dx1) = (x.clone(), x.clone());
            let want = masked_sums_body::<true>(&x, Grad::Row(&g), 0.8, -0.1, 0.05, &mut dx0, 1.3);
            // SAFETY: checked avx2_fma above.
            let got = unsafe {
                masked_sums_avx2::<true>(&x, Grad::Row(&g), 0.8, -0.1, 0.05, &mut dx1, 1.3)
            };
            assert_eq!(want.0.to_bits(), got.0.to_bits(), "len {len}");
            assert_eq!(want.1.to_bits(), got.1.to_bits(), "len {len}");
            assert!(dx0
                .iter()
                .zip(&dx1)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
            let moved = dx0.iter().zip(&x).filter(|(a, b)| a != b).count();
            assert!(len < 2 || moved > 0, "len {len}: dx untouched");
        }
    }

    /// Channel statistics: the AVX2 build bit-identical to the portable one, both equal
    /// to a plain two-pass f64 reference, on lengths with remainders.
    #[test]
    fn row_stats_match_reference() {
        for len in [1, 7, 8, 9, 1000, 4099] {
            let row: Vec<f32> = (0..len)
                .map(|i| 3.0 + ((i * 37 % 101) as f32 - 50.0) / 17.0)
                .collect();
            let mu = row.iter().map(|&v| v as f64).sum::<f64>() / len as f64;
            let var = row.iter().map(|&v| (v as f64 - mu).powi(2)).sum::<f64>() / len as f64;
            let got = row_stats_body(&row);
            assert!((got.0 - mu).abs() <= 1e-12 * mu.abs() && (got.1 - var).abs() <= 1e-12 * var);
            #[cfg(target_arch = "x86_64")]
            if crate::ops::simd::avx2_fma() {
                // SAFETY: checked avx2_fma.
                let fast = unsafe { row_stats_avx2(&row) };
                assert_eq!(
                    (fast.0.to_bits(), fast.1.to_bits()),
                    (got.0.to_bits(), got.1.to_bits())
                );
            }
        }
    }

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
        scale.copy_from_slice(&rstd);
        scale_shift(&mut scale, &mut shift, &mean, &gamma, &beta);
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
