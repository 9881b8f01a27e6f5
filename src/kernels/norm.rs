//! The element-wise bodies of batch norm and ReLU, compiled three times: as plain
//! functions (the `portable` table of [`super::Kernels`]) and inside `#[target_feature]`
//! wrappers for AVX2 ([`avx2`]) and AVX-512 ([`avx512`]). The source and the order of every
//! operation are the same, and Rust never contracts `a*b + c` into an FMA on its own, so
//! all give the same bits (the ReLU mask of a recomputation depends on it); only
//! [`masked_sums`] has a hand-written AVX2 body, because LLVM left its 16-lane select and
//! accumulate scalar.
//!
//! Callers go through [`super::active`]; the functions here are the table's entries.

/// The gradient of a run of positions.
#[derive(Clone, Copy, Debug)]
pub enum Grad<'a> {
    /// One value per position.
    Row(&'a [f32]),
    /// The same value at every position (a global average pool's gradient).
    Const(f32),
}

/// Signature of [`masked_sums`]: `(x, d, s, t, mu) -> (Σg, Σg·(x−mu))`.
pub type MaskedSumsFn = fn(&[f32], Grad, f32, f32, f32) -> (f64, f64);
/// Signature of [`masked_sums_axpy`]: `(dx, x, d, s, t, mu, k) -> (Σg, Σg·(x−mu))`.
pub type MaskedSumsAxpyFn = fn(&mut [f32], &[f32], &[f32], f32, f32, f32, f32) -> (f64, f64);
/// Signature of [`masked_update`]: `(dx, x, d, s, t, mu, r, k, mg, mgx)`.
pub type MaskedUpdateFn = fn(&mut [f32], &[f32], Grad, f32, f32, f32, f32, f32, f32, f32);

/// Lanes of the partial sums: 16 independent f32 accumulators vectorise to one AVX-512 or
/// two AVX2 registers and keep the dependency chains short.
const LANES: usize = 16;
/// Positions summed in f32 before the partial sum moves to f64: keeps f32 rounding to
/// ~1e-6 relative however long the row is.
const BLOCK: usize = 1024;

/// Mean and biased variance of one channel: two passes with f64 accumulators, exact
/// enough that the statistics agree with PyTorch to ~1e-7 relative, and immune to the
/// cancellation of `E[x²] − E[x]²`.
#[inline(always)]
pub fn row_stats(row: &[f32]) -> (f64, f64) {
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

/// `o = relu(x·s + t)`.
#[inline(always)]
pub fn affine_relu(o: &mut [f32], x: &[f32], s: f32, t: f32) {
    for (o, &v) in o.iter_mut().zip(x) {
        *o = (v * s + t).max(0.0);
    }
}

/// `(Σg, Σg·(x−mean))` over a run, `g = dout·[x·s + t > 0]`. Branch-free: the ReLU mask
/// is a select, so the loop vectorises and never mispredicts (a `if y > 0` branch here
/// cost 30% of a training step: the mask is a coin flip). The gradient row is walked in
/// `[f32; LANES]` chunks zipped with x: an indexed read `row[base + j + l]` kept its
/// bounds checks and the loop scalar (masked_sums was 21% of a BC-100 b64 training step
/// under `perf record`, ~3% after this change).
#[inline(always)]
pub fn masked_sums(x: &[f32], d: Grad, s: f32, t: f32, mu: f32) -> (f64, f64) {
    masked_sums_body::<false>(x, d, s, t, mu, &mut [], 0.0)
}

/// [`masked_sums`] of a gradient row `d` that also adds `k·g` to `dx` in the same sweep
/// (`g = d·[x·s + t > 0]`): the first half of `dx += k·(g − mg − x̂·mgx)` for a caller
/// that has `d` only a tile at a time and finishes with [`centred_update`] once the sums
/// over all positions are known (see `ops::fused::backward`).
#[inline(always)]
pub fn masked_sums_axpy(
    dx: &mut [f32],
    x: &[f32],
    d: &[f32],
    s: f32,
    t: f32,
    mu: f32,
    k: f32,
) -> (f64, f64) {
    assert!(dx.len() == x.len() && d.len() == x.len());
    masked_sums_body::<true>(x, Grad::Row(d), s, t, mu, dx, k)
}

/// The second half of the BN-ReLU input gradient: `dx += c0 + (x − mu)·c1`.
#[inline(always)]
pub fn centred_update(dx: &mut [f32], x: &[f32], mu: f32, c0: f32, c1: f32) {
    for (o, &v) in dx.iter_mut().zip(x) {
        *o += c0 + (v - mu) * c1;
    }
}

#[inline(always)]
pub(crate) fn masked_sums_body<const AXPY: bool>(
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
/// branch-free.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn masked_update<const ACC: bool>(
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

/// The bodies above inside `#[target_feature]` functions: the entries of one table, for
/// the instruction set `$features`. [`masked_sums`] is not among them: it has a
/// hand-written AVX2 body ([`avx2::masked_sums`]), which the `avx512` table takes too (its
/// two 8-lane halves of each 16-lane partial sum are the same bits as the portable code;
/// an AVX-512 version would do the same arithmetic in one register, and the BN-ReLU
/// backward is 2–3% of a training step).
#[cfg(target_arch = "x86_64")]
macro_rules! table_entries {
    ($features:literal) => {
        use super::*;

        // SAFETY (every wrapper below): these functions are only reachable through their
        // table, which `kernels` hands out only on a CPU with these features.

        pub(crate) fn row_stats(row: &[f32]) -> (f64, f64) {
            #[target_feature(enable = $features)]
            unsafe fn f(row: &[f32]) -> (f64, f64) {
                super::row_stats(row)
            }
            unsafe { f(row) }
        }

        pub(crate) fn affine_relu(o: &mut [f32], x: &[f32], s: f32, t: f32) {
            #[target_feature(enable = $features)]
            unsafe fn f(o: &mut [f32], x: &[f32], s: f32, t: f32) {
                super::affine_relu(o, x, s, t)
            }
            unsafe { f(o, x, s, t) }
        }

        pub(crate) fn centred_update(dx: &mut [f32], x: &[f32], mu: f32, c0: f32, c1: f32) {
            #[target_feature(enable = $features)]
            unsafe fn f(dx: &mut [f32], x: &[f32], mu: f32, c0: f32, c1: f32) {
                super::centred_update(dx, x, mu, c0, c1)
            }
            unsafe { f(dx, x, mu, c0, c1) }
        }

        #[allow(clippy::too_many_arguments)]
        pub(crate) fn masked_update<const ACC: bool>(
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
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn f<const ACC: bool>(
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
                super::masked_update::<ACC>(dx, x, d, s, t, mu, r, k, mg, mgx)
            }
            unsafe { f::<ACC>(dx, x, d, s, t, mu, r, k, mg, mgx) }
        }
    };
}

/// The entries of the `avx512` table (AVX-512F: the auto-vectorised bodies in 16 lanes).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    table_entries!("avx512f,avx2,fma");
}

/// The entries of the `avx2` table, and the `masked_sums` entries of both tables.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    table_entries!("avx2,fma");

    // SAFETY (both wrappers): reachable only through the `avx2` and `avx512` tables,
    // handed out only on a CPU with AVX2 and FMA.

    pub(crate) fn masked_sums(x: &[f32], d: Grad, s: f32, t: f32, mu: f32) -> (f64, f64) {
        unsafe { masked_sums_avx2::<false>(x, d, s, t, mu, &mut [], 0.0) }
    }

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
        unsafe { masked_sums_avx2::<true>(x, Grad::Row(d), s, t, mu, dx, k) }
    }

    /// [`masked_sums_body`] in AVX2 intrinsics: LLVM left the 16-lane select-and-accumulate
    /// body scalar (spilling the lanes to the stack) even inside a `target_feature` function.
    /// Lanes 0–7 and 8–15 are two registers; mul and add stay separate (no FMA) so the ReLU
    /// mask and every partial sum are bit-identical to the portable version.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn masked_sums_avx2<const AXPY: bool>(
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
                let m0 =
                    _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_add_ps(_mm256_mul_ps(x0, vs), vt), zero);
                let m1 =
                    _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_add_ps(_mm256_mul_ps(x1, vs), vt), zero);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 and AVX-512 tables must reproduce the portable one bit for bit (the ReLU mask of a
    /// recomputation depends on it), on lengths that leave remainders in both the lane
    /// loop and the f32 block.
    #[test]
    fn masked_sums_are_bit_identical() {
        let slow = crate::kernels::portable();
        for name in ["avx2", "avx512"] {
            match crate::kernels::by_name(name) {
                Some(fast) => masked_sums_match(slow, fast),
                None => crate::kernels::testutil::say(&format!(
                    "SKIPPED: the {name} kernels (this CPU lacks them)"
                )),
            }
        }
    }

    fn masked_sums_match(slow: &crate::kernels::Kernels, fast: &crate::kernels::Kernels) {
        for len in [0, 1, 15, 17, 1000, 1024, 2049, 5000] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
                .collect();
            let g: Vec<f32> = (0..len)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 3.0)
                .collect();
            for d in [Grad::Row(&g), Grad::Const(0.37)] {
                let want = (slow.masked_sums)(&x, d, 0.8, -0.1, 0.05);
                let got = (fast.masked_sums)(&x, d, 0.8, -0.1, 0.05);
                assert_eq!(want.0.to_bits(), got.0.to_bits(), "len {len}");
                assert_eq!(want.1.to_bits(), got.1.to_bits(), "len {len}");
            }
            // the variant that also adds k·g to dx: same sums, same dx
            let (mut dx0, mut dx1) = (x.clone(), x.clone());
            let want = (slow.masked_sums_axpy)(&mut dx0, &x, &g, 0.8, -0.1, 0.05, 1.3);
            let got = (fast.masked_sums_axpy)(&mut dx1, &x, &g, 0.8, -0.1, 0.05, 1.3);
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

    /// Channel statistics: every table bit-identical to the portable one, and that equal
    /// to a plain two-pass f64 reference, on lengths with remainders.
    #[test]
    fn row_stats_match_reference() {
        for len in [1, 7, 8, 9, 1000, 4099] {
            let row: Vec<f32> = (0..len)
                .map(|i| 3.0 + ((i * 37 % 101) as f32 - 50.0) / 17.0)
                .collect();
            let mu = row.iter().map(|&v| v as f64).sum::<f64>() / len as f64;
            let var = row.iter().map(|&v| (v as f64 - mu).powi(2)).sum::<f64>() / len as f64;
            let got = row_stats(&row);
            assert!((got.0 - mu).abs() <= 1e-12 * mu.abs() && (got.1 - var).abs() <= 1e-12 * var);
            for k in crate::kernels::available() {
                let fast = (k.row_stats)(&row);
                assert_eq!(
                    (fast.0.to_bits(), fast.1.to_bits()),
                    (got.0.to_bits(), got.1.to_bits()),
                    "{}",
                    k.name
                );
            }
        }
    }
}
