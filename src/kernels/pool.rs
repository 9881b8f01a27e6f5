//! The pooling bodies of an evaluation pass, one plane at a time, compiled three times as
//! [`super::norm`]'s are: plain (the `portable` table) and inside `#[target_feature]`
//! wrappers for AVX2 ([`avx2`]) and AVX-512 ([`avx512`]). Same source, same order of
//! operations, so every table gives the same bits.
//!
//! Both read their input at stride 2. Written over `chunks_exact(2)` (no indexing), LLVM
//! vectorises them with interleaved loads; compiled for the baseline target, with a row
//! of scratch per plane allocated and the column maxima taken one output at a time, the
//! stem's max pool and the transitions' pools were 0.8 ms of a 30 ms densenet121 pass at
//! batch 1 (Zen 4, 2 threads).

/// Output size of the 3×3, stride 2, padding 1 max pool over `size`: `⌈size/2⌉`.
pub fn max_pool3s2_size(size: usize) -> usize {
    size.div_ceil(2)
}

/// Floats of scratch [`max_pool3s2`] needs for planes `w` wide.
pub fn max_pool3s2_scratch(w: usize) -> usize {
    2 * w
}

/// `max(a, b)` that returns NaN if either is NaN, as PyTorch's max pooling does.
#[inline(always)]
pub fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || a > b {
        a
    } else {
        b
    }
}

/// `out: [ho][wo]` = the 3×3, stride 2, padding 1 max pool of one `h × w` plane (a NaN
/// in a window wins): per output row, the maximum over the window's input rows first
/// (whole rows), split into even and odd columns, then output `ox` is the maximum of
/// columns `2ox − 1`, `2ox` and `2ox + 1`: `odd[ox − 1]`, `even[ox]`, `odd[ox]`.
/// `scratch` holds [`max_pool3s2_scratch`]`(w)` floats.
#[inline(always)]
pub fn max_pool3s2(out: &mut [f32], plane: &[f32], h: usize, w: usize, scratch: &mut [f32]) {
    let (ho, wo) = (max_pool3s2_size(h), max_pool3s2_size(w));
    assert!(plane.len() >= h * w && out.len() >= ho * wo && scratch.len() >= 2 * w);
    if h == 0 || w == 0 {
        return;
    }
    let (v, rest) = scratch.split_at_mut(w);
    let (even, odd) = rest.split_at_mut(wo);
    let odd = &mut odd[..w / 2];
    for (oy, o) in out[..ho * wo].chunks_exact_mut(wo).enumerate() {
        let (r0, r1) = ((2 * oy).saturating_sub(1), (2 * oy + 2).min(h));
        v.copy_from_slice(&plane[r0 * w..][..w]);
        for r in r0 + 1..r1 {
            for (a, &b) in v.iter_mut().zip(&plane[r * w..][..w]) {
                *a = nan_max(*a, b);
            }
        }
        for ((e, d), pair) in even.iter_mut().zip(odd.iter_mut()).zip(v.chunks_exact(2)) {
            (*e, *d) = (pair[0], pair[1]);
        }
        if w % 2 == 1 {
            even[wo - 1] = v[w - 1];
        }
        // output 0: columns 0 and 1 (the padding column −1 never wins)
        o[0] = match odd.first() {
            Some(&d) => nan_max(even[0], d),
            None => even[0],
        };
        // outputs 1 … w/2 − 1 have all three columns
        let right = odd.get(1..).unwrap_or_default();
        for (((o, &l), &e), &r) in o[1..].iter_mut().zip(odd.iter()).zip(&even[1..]).zip(right) {
            *o = nan_max(nan_max(l, e), r);
        }
        // with w odd, the last output's window ends at the last column
        if w % 2 == 1 && wo > 1 {
            o[wo - 1] = nan_max(odd[wo - 2], even[wo - 1]);
        }
    }
}

/// `out: [h/2][w/2]` = the 2×2, stride 2 average pool of `relu(x·s + t)` over one `h × w`
/// plane `x` (a transition's BN-ReLU, pooled before its convolution; the floor drops an
/// odd last row and column). Each output sums its four inputs in row-major order, as
/// the BN-ReLU followed by the pool did.
#[inline(always)]
pub fn bn_relu_avg_pool2(out: &mut [f32], x: &[f32], h: usize, w: usize, s: f32, t: f32) {
    let (ho, wo) = (h / 2, w / 2);
    assert!(x.len() >= h * w && out.len() >= ho * wo);
    if ho * wo == 0 {
        return;
    }
    let f = |v: f32| (v * s + t).max(0.0);
    for (oy, o) in out[..ho * wo].chunks_exact_mut(wo).enumerate() {
        let (r0, r1) = (&x[2 * oy * w..][..2 * wo], &x[(2 * oy + 1) * w..][..2 * wo]);
        for ((o, a), b) in o.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
            *o = 0.25 * (f(a[0]) + f(a[1]) + f(b[0]) + f(b[1]));
        }
    }
}

/// Signature of [`max_pool3s2`]: `(out, plane, h, w, scratch)`.
pub type MaxPoolFn = fn(&mut [f32], &[f32], usize, usize, &mut [f32]);
/// Signature of [`bn_relu_avg_pool2`]: `(out, x, h, w, s, t)`.
pub type AvgPoolFn = fn(&mut [f32], &[f32], usize, usize, f32, f32);

macro_rules! table_entries {
    ($features:literal) => {
        // SAFETY (both wrappers): these functions are only reachable through their table,
        // which `kernels` hands out only on a CPU with these features.

        pub(crate) fn max_pool3s2(
            out: &mut [f32],
            plane: &[f32],
            h: usize,
            w: usize,
            scratch: &mut [f32],
        ) {
            #[target_feature(enable = $features)]
            unsafe fn f(out: &mut [f32], plane: &[f32], h: usize, w: usize, scratch: &mut [f32]) {
                super::max_pool3s2(out, plane, h, w, scratch)
            }
            unsafe { f(out, plane, h, w, scratch) }
        }

        pub(crate) fn bn_relu_avg_pool2(
            out: &mut [f32],
            x: &[f32],
            h: usize,
            w: usize,
            s: f32,
            t: f32,
        ) {
            #[target_feature(enable = $features)]
            unsafe fn f(out: &mut [f32], x: &[f32], h: usize, w: usize, s: f32, t: f32) {
                super::bn_relu_avg_pool2(out, x, h, w, s, t)
            }
            unsafe { f(out, x, h, w, s, t) }
        }
    };
}

/// The entries of the `avx512` table.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    table_entries!("avx512f,avx2,fma");
}

/// The entries of the `avx2` table.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    table_entries!("avx2,fma");
}

#[cfg(test)]
mod tests {
    use super::*;

    // each test runs every table this CPU runs: the same source, so the same bits

    /// The window scan PyTorch does, one output at a time.
    fn naive_max(plane: &[f32], h: usize, w: usize) -> Vec<f32> {
        let (ho, wo) = (max_pool3s2_size(h), max_pool3s2_size(w));
        let mut out = vec![f32::NEG_INFINITY; ho * wo];
        for oy in 0..ho {
            for ox in 0..wo {
                for y in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h) {
                    for x in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w) {
                        let o = &mut out[oy * wo + ox];
                        *o = nan_max(*o, plane[y * w + x]);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn max_pool_matches_the_window_scan() {
        for (h, w) in [
            (1, 1),
            (1, 2),
            (2, 1),
            (3, 3),
            (4, 5),
            (7, 6),
            (8, 8),
            (9, 13),
        ] {
            let mut plane: Vec<f32> = (0..h * w)
                .map(|i| ((i * 37 + 11) % 23) as f32 - 11.0)
                .collect();
            if h * w > 4 {
                plane[h * w / 2] = f32::NAN;
            }
            let want = naive_max(&plane, h, w);
            for k in crate::kernels::available() {
                let mut out = vec![0.0; max_pool3s2_size(h) * max_pool3s2_size(w)];
                let mut scratch = vec![0.0; max_pool3s2_scratch(w)];
                (k.max_pool3s2)(&mut out, &plane, h, w, &mut scratch);
                for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        a == b || (a.is_nan() && b.is_nan()),
                        "{} {h}×{w} output {i}: {a} against {b}",
                        k.name
                    );
                }
            }
        }
    }

    #[test]
    fn avg_pool_is_bn_relu_then_the_mean_of_four() {
        let (h, w, s, t) = (5, 7, 0.7f32, -0.3f32);
        let x: Vec<f32> = (0..h * w).map(|i| (i as f32 * 0.37).sin()).collect();
        let a = |y: usize, c: usize| (x[y * w + c] * s + t).max(0.0);
        for k in crate::kernels::available() {
            let mut out = vec![0.0; (h / 2) * (w / 2)];
            (k.bn_relu_avg_pool2)(&mut out, &x, h, w, s, t);
            for oy in 0..h / 2 {
                for ox in 0..w / 2 {
                    let (y, c) = (2 * oy, 2 * ox);
                    let want = 0.25 * (a(y, c) + a(y, c + 1) + a(y + 1, c) + a(y + 1, c + 1));
                    assert_eq!(out[oy * (w / 2) + ox], want, "{} ({oy}, {ox})", k.name);
                }
            }
        }
    }
}
