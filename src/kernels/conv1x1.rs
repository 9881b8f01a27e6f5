//! The direct 1×1 convolution: `out[o][p] = Σ_i w[o][i]·in[i][p]` on tiles of packed
//! input rows through the one-tap register kernel of [`super::correlate`], without the
//! packing a GEMM does, and [`dot_tile`], the weight gradient of one tile. Used where the
//! active kernels table has direct kernels ([`pointwise_applies`]); the operations fall
//! back to the `gemm` crate elsewhere.

use super::active;
use super::correlate::{for_row_runs, for_tiles, tile_len, with_packed, Span, OB, OB6, PB};
use super::simd::{simd_entries, F32x};
use crate::util::par::{with_scratch, SyncPtr};

/// Signature of [`dot_tile_avx2`] and [`dot_tile_avx512`] (entries of [`super::Direct`]).
pub type DotTileFn = unsafe fn(*mut f32, usize, &[f32], usize, &[f32], usize, usize, usize, usize);

thread_local! {
    /// Per-thread buffer for a packed tile of 1×1 input rows (see `correlate`).
    static PACK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `out[o][0..len] = Σ_i w[o][i]·inp[i][0..len]`: a 1×1 convolution (or its
/// backward-data with `flip`: `w` then is `[I][O]`) through the one-tap register kernel (`Direct::correlate1`), without the
/// packing a GEMM does. Needs AVX2 and `o_n % 4 == 0` ([`pointwise_applies`]).
///
/// [`crate::ops::conv`] uses it for 1×1 convolutions with at most 48 outputs (measurements
/// there); the `gemm` crate keeps wider ones.
#[allow(clippy::too_many_arguments)]
pub fn pointwise(
    out: &mut [f32],
    inp: &[f32],
    w: &[f32],
    o_n: usize,
    i_n: usize,
    len: usize,
    flip: bool,
) {
    assert!(inp.len() >= i_n * len);
    pointwise_with(out, w, o_n, i_n, len, flip, |buf, ld, a, b| {
        for i in 0..i_n {
            buf[i * ld..][..b - a].copy_from_slice(&inp[i * len + a..][..b - a]);
        }
    });
}

/// [`pointwise`] on an input that is produced tile by tile: `fill(buf, ld, a, b)` must
/// write positions `a..b` of every input row i into `buf[i·ld..][..b − a]`. Each tile's
/// input is formed in a per-thread buffer that stays in L2, so an elementwise function of
/// a stored tensor (a BN-ReLU, see [`crate::ops::fused`]) never has to be written out whole.
///
/// The copy also helps by itself: the rows of a `[C][N·H·W]` tensor are 2^k floats apart
/// at b64 (65536), so a 16-row group read in place maps to one L1 set and thrashes
/// (`gemm_shapes`, o48 i216 len 65536: 21 GFLOP/s straight from the tensor, 37.5 packed).
pub fn pointwise_with<F>(
    out: &mut [f32],
    w: &[f32],
    o_n: usize,
    i_n: usize,
    len: usize,
    flip: bool,
    fill: F,
) where
    F: Fn(&mut [f32], usize, usize, usize) + Sync,
{
    assert!(pointwise_applies(o_n));
    assert!(out.len() >= o_n * len);
    if len == 0 || o_n == 0 {
        return;
    }
    let direct = active()
        .direct
        .expect("pointwise: no direct kernels in this table");
    with_packed(w, o_n, i_n, 1, flip, |wp| {
        let tile = tile_len(i_n, direct.block);
        let big = o_n * i_n * len >= 1 << 17;
        let sp = Span {
            ld: len,
            base: 0,
            p0: 0,
            p1: len,
            overrun: false,
        };
        let optr = SyncPtr(out.as_mut_ptr());
        // where rows are split (fewer tiles than threads), each part's task forms the
        // tile's input itself
        for_tiles(0, len, tile, o_n, big, |a, b, r0, r1| {
            // rows a vector's width apart times an odd number (tile is a multiple of two
            // vectors): aligned for the kernel's loads, and not 2^k apart (which would
            // map a channel group to one L1 set)
            let ild = tile + direct.block / 2;
            with_scratch(&PACK, i_n * ild + 16, |buf| {
                // rows start on 64-byte lines (ild·4 is a multiple of the vector width and
                // the start is aligned), so no load of the kernel straddles two lines
                let skip = buf.as_ptr().align_offset(64).min(15);
                let buf = &mut buf[skip..][..i_n * ild];
                fill(buf, ild, a, b);
                // input (i, q) lies at ib' + i·ild + q, with ib' = buf − a
                let ibp = buf.as_ptr().wrapping_sub(a);
                for_row_runs(o_n, r0, r1, |r0, r1| {
                    let w = &wp[r0 * i_n..r1 * i_n];
                    // SAFETY: positions a..b of output rows r0..r1 are written by this
                    // task only; `out` holds o_n rows of len; the tile buffer holds i_n
                    // rows of ild ≥ b − a; the table that holds the kernel runs on this CPU.
                    unsafe {
                        let o = optr.get().add(r0 * len);
                        (direct.correlate1)(o, ibp, ild, w, r1 - r0, i_n, &[0], sp, a, b)
                    }
                })
            })
        })
    })
}

/// `out[o][q] = Σ_i wp[o][i]·inp[i][q]` for q in `0..n`: the 1×1 kernel on one tile already
/// in cache, on the calling thread (`super::fused::backward`'s `dA = Wᵀ·dY`). `wp` comes
/// from [`with_packed`] (one tap); rows of `out` and `inp` are `out_ld` and `inp_ld`
/// apart, each with room for `PB` floats past `n` (the last register block runs over
/// them). Needs [`pointwise_applies`]`(o_n)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pointwise_tile(
    out: &mut [f32],
    out_ld: usize,
    inp: &[f32],
    inp_ld: usize,
    wp: &[f32],
    o_n: usize,
    i_n: usize,
    n: usize,
) {
    assert!(pointwise_applies(o_n));
    let direct = active()
        .direct
        .expect("pointwise_tile: no direct kernels in this table");
    assert_eq!(wp.len(), o_n * i_n);
    let end = n.next_multiple_of(PB);
    assert!(out_ld >= end && inp_ld >= end);
    assert!(out.len() >= (o_n - 1) * out_ld + end);
    assert!(i_n == 0 || inp.len() >= (i_n - 1) * inp_ld + end);
    let sp = Span {
        ld: out_ld,
        base: 0,
        p0: 0,
        p1: n,
        overrun: true,
    };
    // SAFETY: the asserts bound every access of the (overrunning) register blocks; the
    // table that holds the kernel runs on this CPU.
    unsafe {
        let (o, i) = (out.as_mut_ptr(), inp.as_ptr());
        (direct.correlate1)(o, i, inp_ld, wp, o_n, i_n, &[0], sp, 0, n)
    }
}

/// Whether the direct kernels ([`pointwise`], `correlate`) handle `o_n` output rows with
/// the active kernels table.
pub fn pointwise_applies(o_n: usize) -> bool {
    (o_n.is_multiple_of(OB) || o_n.is_multiple_of(OB6)) && o_n > 0 && active().direct.is_some()
}

/// `dw[o][i] += Σ_{p<n} dy[o][p]·a[i][p]` (`dw` rows `dw_ld` apart, `dy` and `a` rows
/// `dy_ld` and `a_ld` apart), for an even `i_n`: the weight gradient of one tile,
/// where both operands run along the summation. Register blocks of 4 outputs × 2 inputs
/// (8 accumulators over a vector of positions each): per step 4 dY loads (they stay in L1
/// across the input rows), 2 A loads (from L2) and 8 FMAs, then one horizontal reduction
/// per block and tile. This replaces a `gemm` call per tile, which allocated its packing
/// buffers every time.
///
/// # Safety
/// `dw` must hold `(o_n − 1)·dw_ld + i_n` floats; the active table must have direct
/// kernels ([`pointwise_applies`]).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn dot_tile(
    dw: *mut f32,
    dw_ld: usize,
    dy: &[f32],
    dy_ld: usize,
    a: &[f32],
    a_ld: usize,
    o_n: usize,
    i_n: usize,
    n: usize,
) {
    assert!(i_n.is_multiple_of(2));
    assert!(o_n == 0 || dy.len() >= (o_n - 1) * dy_ld + n);
    assert!(i_n == 0 || a.len() >= (i_n - 1) * a_ld + n);
    let direct = active()
        .direct
        .expect("dot_tile: no direct kernels in this table");
    (direct.dot_tile)(dw, dw_ld, dy, dy_ld, a, a_ld, o_n, i_n, n);
}

/// [`dot_tile`] over the vector type `V`: register blocks of 4 outputs × 2 inputs (8
/// accumulators), whole vectors along the positions, then a scalar tail.
///
/// # Safety
/// As [`dot_tile`], and the CPU must run `V`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_tile_rows<V: F32x>(
    dw: *mut f32,
    dw_ld: usize,
    dy: &[f32],
    dy_ld: usize,
    a: &[f32],
    a_ld: usize,
    o_n: usize,
    i_n: usize,
    n: usize,
) {
    let l = V::LANES;
    let nv = n / l * l;
    let o4 = o_n / 4 * 4;
    for o0 in (0..o4).step_by(4) {
        let d = dy.as_ptr().add(o0 * dy_ld);
        for i0 in (0..i_n).step_by(2) {
            let a0 = a.as_ptr().add(i0 * a_ld);
            let a1 = a0.add(a_ld);
            // c[2r + j]: output o0 + r, input i0 + j
            let mut c = [V::zero(); 8];
            let mut p = 0;
            while p < nv {
                let (x0, x1) = (V::load(a0.add(p)), V::load(a1.add(p)));
                for (r, c) in c.chunks_exact_mut(2).enumerate() {
                    let dv = V::load(d.add(r * dy_ld + p));
                    c[0] = dv.mul_add(x0, c[0]);
                    c[1] = dv.mul_add(x1, c[1]);
                }
                p += l;
            }
            let s = V::sums8(c);
            for (r, s) in s.chunks_exact(2).enumerate() {
                let (mut s0, mut s1) = (s[0], s[1]);
                for q in nv..n {
                    let dv = *d.add(r * dy_ld + q);
                    s0 += dv * *a0.add(q);
                    s1 += dv * *a1.add(q);
                }
                let out = dw.add((o0 + r) * dw_ld + i0);
                *out += s0;
                *out.add(1) += s1;
            }
        }
    }
    // the last o_n mod 4 rows (a transition's 150 outputs), one at a time
    for o in o4..o_n {
        let d = dy.as_ptr().add(o * dy_ld);
        for i0 in (0..i_n).step_by(2) {
            let a0 = a.as_ptr().add(i0 * a_ld);
            let a1 = a0.add(a_ld);
            let (mut c0, mut c1) = (V::zero(), V::zero());
            let mut p = 0;
            while p < nv {
                let dv = V::load(d.add(p));
                c0 = dv.mul_add(V::load(a0.add(p)), c0);
                c1 = dv.mul_add(V::load(a1.add(p)), c1);
                p += l;
            }
            let (mut s0, mut s1) = (c0.sum(), c1.sum());
            for q in nv..n {
                s0 += *d.add(q) * *a0.add(q);
                s1 += *d.add(q) * *a1.add(q);
            }
            let out = dw.add(o * dw_ld + i0);
            *out += s0;
            *out.add(1) += s1;
        }
    }
}

simd_entries!(dot_tile_rows => dot_tile_avx2, dot_tile_avx512 (
    dw: *mut f32,
    dw_ld: usize,
    dy: &[f32],
    dy_ld: usize,
    a: &[f32],
    a_ld: usize,
    o_n: usize,
    i_n: usize,
    n: usize,
));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{close, data};

    #[test]
    fn pointwise_matches_naive() {
        if !pointwise_applies(4) {
            eprintln!("SKIPPED: the {} kernels have no direct 1×1", active().name);
            return;
        }
        // len 53: three blocks of 16 and a scalar tail of 5; i_n 300 and 200: several
        // tiles (the packed path), channel groups, a partial last tile with a tail
        for (o_n, i_n, len, flip) in [
            (4, 3, 53, false),
            (8, 20, 53, true),
            (12, 5, 7, false),
            (8, 300, 500, false),
            (12, 200, 1001, true),
            (6, 7, 53, true),
            (48, 216, 300, false),
            (18, 130, 77, true),
            // tails of one vector then scalar: 61 = 48 + 8 + 5 (AVX2), 29 = 16 + 8 + 5,
            // and 2·16 + 8 + 9 for AVX-512's 32-position blocks
            (8, 20, 61, false),
            (12, 5, 29, true),
            (6, 33, 49, false),
            // 12 + 8 rows, and 120 + 8 (densenet121's bottleneck width)
            (20, 9, 53, false),
            (128, 40, 70, true),
        ] {
            let x = data(i_n * len, 4);
            let w = data(o_n * i_n, 5);
            let mut y = vec![f32::NAN; o_n * len];
            pointwise(&mut y, &x, &w, o_n, i_n, len, flip);
            let mut want = vec![0.0; o_n * len];
            for o in 0..o_n {
                for i in 0..i_n {
                    let wv = if flip { w[i * o_n + o] } else { w[o * i_n + i] };
                    for p in 0..len {
                        want[o * len + p] += wv * x[i * len + p];
                    }
                }
            }
            close(&y, &want, "pointwise");
        }
    }
}
