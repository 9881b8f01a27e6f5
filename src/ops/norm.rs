//! Batch normalisation, always followed by ReLU in a DenseNet (pre-activation order:
//! BN → ReLU → Conv), so the pair is one op.
//!
//! Activations are `[C][len]`, `len = N·H·W`. Forward is the affine map
//! `y = relu(x·scale + shift)` with per-channel `scale = γ·rstd`, `shift = β − mean·scale`,
//! where (mean, rstd) are the batch statistics in training and the running statistics in
//! evaluation. Backward recomputes `y` with the *same* `scale` and `shift`, so the ReLU mask
//! of a recomputation is bit-identical to the forward pass (memory-efficient mode depends
//! on it).

use crate::kernels::{self, norm::Grad};
use crate::util::par::{per_channel, OnTeam};
use crate::util::profile;
use rayon::prelude::*;
use std::sync::{Arc, RwLock};

/// Sums per-channel batch-norm statistics over the processes of a data-parallel run
/// (synchronised batch norm): with it, N processes holding B/N images each normalise with,
/// and differentiate through, the statistics of the whole batch of B, exactly as one
/// process with B images does.
pub trait StatsSync: Send + Sync {
    /// Sums `v` element-wise over all processes, in place (every process passes the same
    /// length, in the same order of calls).
    fn sum(&self, v: &mut [f64]);
    /// The positions of the whole batch, for this process's `len = n·h·w` of its `n` images.
    fn total_len(&self, len: usize) -> usize;
}

/// The process's synchronised batch norm, if any. A process trains one model at a time,
/// and every batch norm of the model must take part (the calls are matched across
/// processes by their order), so this is one switch for the process rather than an
/// argument threaded through every layer.
static STATS_SYNC: RwLock<Option<Arc<dyn StatsSync>>> = RwLock::new(None);

/// Turns synchronised batch norm on (`Some`) or off for every training-mode batch norm of
/// this process.
pub fn set_stats_sync(sync: Option<Arc<dyn StatsSync>>) {
    *STATS_SYNC.write().unwrap_or_else(|e| e.into_inner()) = sync;
}

fn stats_sync() -> Option<Arc<dyn StatsSync>> {
    STATS_SYNC.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// BatchNorm epsilon (PyTorch's default, and the reference files').
pub const BN_EPS: f32 = 1e-5;
/// Running-statistics momentum (PyTorch's default).
pub const BN_MOMENTUM: f32 = 0.1;

/// Per-channel batch mean and biased variance (divide by `len`) of `x: [C][len]`.
pub fn channel_stats(mean: &mut [f32], var: &mut [f32], x: &[f32], len: usize) {
    let _t = profile::scope(profile::Op::BnForward);
    let c = mean.len();
    assert_eq!(var.len(), c);
    assert!(x.len() >= c * len);
    let row_stats = kernels::active().row_stats;
    if let Some(sync) = stats_sync() {
        return synced_stats(mean, var, x, len, &*sync);
    }
    let work = |(ci, (m, v)): (usize, (&mut f32, &mut f32))| {
        let (mu, var) = row_stats(&x[ci * len..(ci + 1) * len]);
        *m = mu as f32;
        *v = var as f32;
    };
    let it = mean.par_iter_mut().zip(var.par_iter_mut()).enumerate();
    per_channel(it, c * len, work);
}

/// [`channel_stats`] of the whole batch of a synchronised batch norm: each process sums
/// its `Σx` and `Σx²` per channel (from its rows' mean and variance, in f64), one
/// all-reduce adds them up, and mean and biased variance follow from the whole batch's
/// count.
fn synced_stats(mean: &mut [f32], var: &mut [f32], x: &[f32], len: usize, sync: &dyn StatsSync) {
    let c = mean.len();
    let row_stats = kernels::active().row_stats;
    let mut sums = vec![0f64; 2 * c];
    let (s1, s2) = sums.split_at_mut(c);
    let work = |(ci, (a, b)): (usize, (&mut f64, &mut f64))| {
        let (mu, v) = row_stats(&x[ci * len..(ci + 1) * len]);
        *a = len as f64 * mu;
        *b = len as f64 * (v + mu * mu);
    };
    let it = s1.par_iter_mut().zip(s2.par_iter_mut()).enumerate();
    per_channel(it, c * len, work);
    sync.sum(&mut sums);
    let total = sync.total_len(len) as f64;
    for ci in 0..c {
        let mu = sums[ci] / total;
        mean[ci] = mu as f32;
        var[ci] = (sums[c + ci] / total - mu * mu).max(0.0) as f32;
    }
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
    // synchronised: the statistics are the whole batch's, and so is the count
    let len = stats_sync().map_or(len, |s| s.total_len(len));
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
    let _t = profile::scope(profile::Op::BnForward);
    let c = scale.len();
    let out = &mut out[..c * len];
    let affine_relu = kernels::active().affine_relu;
    let work = |(ci, o): (usize, &mut [f32])| {
        affine_relu(o, &x[ci * len..(ci + 1) * len], scale[ci], shift[ci]);
    };
    per_channel(out.par_chunks_mut(len).enumerate(), c * len, work);
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
    let _t = profile::scope(profile::Op::BnBackward);
    let c = scale.len();
    let dx = &mut dx[..c * len];
    let k = kernels::active();
    let (masked_sums, masked_update) = (
        k.masked_sums,
        if ACC {
            k.masked_update
        } else {
            k.masked_assign
        },
    );
    // Σg and Σg·(x − mean) over the channel's positions. The gradient arrives as runs of
    // positions: either a dense row, or one constant per sample (global average pooling
    // spreads dpool/hw over the plane).
    let sums_of = |ci: usize| -> (f64, f64) {
        let xr = &x[ci * len..(ci + 1) * len];
        let (s, t, mu) = (scale[ci], shift[ci], mean[ci]);
        match dout {
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
        }
    };
    // dx = k·(g − mg − x̂·mgx) for one channel
    let update = |ci: usize, dxr: &mut [f32], (k, mg, mgx): (f32, f32, f32)| {
        let xr = &x[ci * len..(ci + 1) * len];
        let (s, t, mu, r) = (scale[ci], shift[ci], mean[ci], rstd[ci]);
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
    let Some(sync) = stats_sync() else {
        // one pass per channel while its rows are in cache
        let work = |(ci, (dxr, (dg, db))): (usize, (&mut [f32], (&mut f32, &mut f32)))| {
            let sums = sums_of(ci);
            update(
                ci,
                dxr,
                finish_channel(sums, sums, rstd[ci], gamma[ci], len, dg, db),
            );
        };
        return per_channel(it, c * len, work);
    };
    // synchronised: the update needs the whole batch's sums, so two passes around the
    // all-reduce
    let mut local = vec![(0f64, 0f64); c];
    per_channel(local.par_iter_mut().enumerate(), c * len, |(ci, sums)| {
        *sums = sums_of(ci)
    });
    let global = sum_pairs(&*sync, &local);
    let total = sync.total_len(len);
    let work = |(ci, (dxr, (dg, db))): (usize, (&mut [f32], (&mut f32, &mut f32)))| {
        let consts = finish_channel(local[ci], global[ci], rstd[ci], gamma[ci], total, dg, db);
        update(ci, dxr, consts);
    };
    per_channel(it, c * len, work);
}

/// Per-channel pairs of sums, summed over the processes of a synchronised batch norm.
fn sum_pairs(sync: &dyn StatsSync, local: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut flat: Vec<f64> = local.iter().flat_map(|&(a, b)| [a, b]).collect();
    sync.sum(&mut flat);
    flat.chunks_exact(2).map(|p| (p[0], p[1])).collect()
}

/// The per-channel constants of the BN-ReLU input gradient from the sums `sg = Σg` and
/// `sgc = Σg·(x − mean)`: this process's (`local`), and the whole batch's `len` positions
/// (`whole`, the same unless batch norm is synchronised). Accumulates this process's
/// `dγ = Σg·x̂` and `dβ = Σg` (a data-parallel run sums the parameter gradients later,
/// as it does every other one). Returns `(k, mg, mgx)` of `dx = k·(g − mg − x̂·mgx)`.
fn finish_channel(
    local: (f64, f64),
    whole: (f64, f64),
    r: f32,
    gamma: f32,
    len: usize,
    dg: &mut f32,
    db: &mut f32,
) -> (f32, f32, f32) {
    // Σg·x̂ = rstd·Σg·(x−mean)
    *dg += (local.1 * r as f64) as f32;
    *db += local.0 as f32;
    let (sg, sgx) = (whole.0, whole.1 * r as f64);
    let (mg, mgx) = ((sg / len as f64) as f32, (sgx / len as f64) as f32);
    (gamma * r, mg, mgx)
}

/// Turns the per-channel sums `sums[c] = (Σg, Σg·(x − mean))` of a BN-ReLU backward whose
/// `dx += k·g` half was done by [`kernels::norm::masked_sums_axpy`] into `dγ`, `dβ` (accumulated) and
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
    let synced = stats_sync().map(|sync| (sum_pairs(&*sync, sums), sync.total_len(len)));
    let (whole, len) = match &synced {
        Some((whole, total)) => (&whole[..], *total),
        None => (sums, len),
    };
    for (c, ((&local, &whole), pend)) in sums.iter().zip(whole).zip(pending.iter_mut()).enumerate()
    {
        let r = rstd[c];
        let (k, mg, mgx) = finish_channel(
            local,
            whole,
            r,
            gamma[c],
            len,
            &mut dgamma[c],
            &mut dbeta[c],
        );
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
pub fn apply_pending(
    dx: &mut [f32],
    x: &[f32],
    mean: &[f32],
    pending: &mut [(f64, f64)],
    len: usize,
) {
    let _t = profile::scope(profile::Op::BnBackward);
    let c = pending.len();
    let centred_update = kernels::active().centred_update;
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
    let _t = profile::scope(profile::Op::BnForward);
    let c = scale.len();
    pooled[..c * n]
        .par_chunks_mut(n)
        .enumerate()
        .team_for_each(|(ci, out)| {
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
