//! The per-tile transforms of F(2×2, 3×3) and F(4×4, 3×3): Bᵀ·d·B on input rows, Aᵀ·m·A on
//! output rows, A·dY·Aᵀ for the weight gradient, and G·g·Gᵀ for the kernels.

use super::*;

/// `V = Bᵀ·d·B` for the tiles of segment `g` of one input channel: the channel's split
/// layout at `src`, the `(r + 2)²` rows `ξ` of `V` at `v + ξ·vs` (entries `g.k..`).
///
/// # Safety
/// The split layout must hold `LANES` floats past every tile row read (its [`PB`] slack);
/// `v`'s rows must hold `LANES` entries past the segment's last (junk lanes land there or
/// on entries written later). The CPU must run `V`.
#[inline(always)]
pub(super) unsafe fn input_rows<V: F32x>(v: *mut f32, vs: usize, src: *const f32, g: &Segment) {
    if g.r == 4 {
        input_rows4::<V>(v, vs, src, g)
    } else {
        input_rows2::<V>(v, vs, src, g)
    }
}

/// [`input_rows`] of F(2×2, 3×3):
/// `Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]`, applied to the
/// columns of each of the 4 window rows (even, odd, even + 1, odd + 1), then to the rows.
#[inline(always)]
pub(super) unsafe fn input_rows2<V: F32x>(v: *mut f32, vs: usize, src: *const f32, g: &Segment) {
    let l = V::LANES;
    let mut j = 0;
    while g.tx0 + j < g.tx1 {
        // t[c][r]: window row r with Bᵀ applied along its columns, stored by column
        let mut t = [[V::zero(); 4]; 4];
        for r in 0..4 {
            let e = src.add(g.src + r * 2 * g.ew + g.tx0 + j);
            let o = e.add(g.ew);
            let (d0, d1, d2, d3) = (V::load(e), V::load(o), V::load(e.add(1)), V::load(o.add(1)));
            let row = [d0.sub(d2), d1.add(d2), d2.sub(d1), d1.sub(d3)];
            for (t, x) in t.iter_mut().zip(row) {
                t[r] = x;
            }
        }
        for (c, t) in t.iter().enumerate() {
            let col = [
                t[0].sub(t[2]),
                t[1].add(t[2]),
                t[2].sub(t[1]),
                t[1].sub(t[3]),
            ];
            for (r, x) in col.into_iter().enumerate() {
                x.store(v.add((4 * r + c) * vs + g.k + j));
            }
        }
        j += l;
    }
}

/// `Bᵀ·d` of F(4×4, 3×3) for one row or column of 6:
/// `Bᵀ = [[4, 0, −5, 0, 1, 0], [0, −4, −4, 1, 1, 0], [0, 4, −4, −1, 1, 0],
/// [0, −2, −1, 2, 1, 0], [0, 2, −1, −2, 1, 0], [0, 4, 0, −5, 0, 1]]`, in 12 operations.
#[inline(always)]
pub(super) unsafe fn bt6<V: F32x>(d: [V; 6]) -> [V; 6] {
    let (four, mfour, mfive) = (V::splat(&4.0), V::splat(&-4.0), V::splat(&-5.0));
    let a = d[2].mul_add(mfour, d[4]); // d4 − 4·d2
    let b = d[1].mul_add(mfour, d[3]); // d3 − 4·d1
    let c = d[4].sub(d[2]);
    let e = d[3].sub(d[1]);
    let e = e.add(e);
    [
        d[0].mul_add(four, d[2].mul_add(mfive, d[4])),
        a.add(b),
        a.sub(b),
        c.add(e),
        c.sub(e),
        d[1].mul_add(four, d[3].mul_add(mfive, d[5])),
    ]
}

/// [`input_rows`] of F(4×4, 3×3): [`bt6`] along the columns of each of the 6 window rows
/// (padded column `4·tx + c` is entry `tx + c / 4` of phase `c mod 4`), then along the rows.
#[inline(always)]
pub(super) unsafe fn input_rows4<V: F32x>(v: *mut f32, vs: usize, src: *const f32, g: &Segment) {
    let l = V::LANES;
    let mut j = 0;
    while g.tx0 + j < g.tx1 {
        // t[c][r]: window row r with Bᵀ applied along its columns, stored by column
        let mut t = [[V::zero(); 6]; 6];
        for r in 0..6 {
            let p = src.add(g.src + r * 4 * g.ew + g.tx0 + j);
            let d = std::array::from_fn(|c| V::load(p.add((c % 4) * g.ew + c / 4)));
            for (t, x) in t.iter_mut().zip(bt6(d)) {
                t[r] = x;
            }
        }
        for (c, t) in t.iter().enumerate() {
            for (r, x) in bt6(*t).into_iter().enumerate() {
                x.store(v.add((6 * r + c) * vs + g.k + j));
            }
        }
        j += l;
    }
}

simd_entries!(input_rows => input_avx2, input_avx512 (
    v: *mut f32,
    vs: usize,
    src: *const f32,
    g: &Segment,
));

/// `Y = Aᵀ·M·A` for the tiles of segment `g` of one output channel: the `(r + 2)²` rows
/// of `M` at `m + ξ·ms` (entries `g.k..`), the r×r outputs of each tile written to the
/// channel's output row `y` (positions from `g.dst`, rows `g.w` apart), where they exist.
///
/// # Safety
/// `m`'s rows must hold `LANES` entries past the segment's last; `y` must hold the
/// segment's outputs. The CPU must run `V`.
#[inline(always)]
pub(super) unsafe fn output_rows<V: F32x>(y: *mut f32, m: *const f32, ms: usize, g: &Segment) {
    if g.r == 4 {
        output_rows4::<V>(y, m, ms, g)
    } else {
        output_rows2::<V>(y, m, ms, g)
    }
}

/// [`output_rows`] of F(2×2, 3×3): `Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]`.
#[inline(always)]
pub(super) unsafe fn output_rows2<V: F32x>(y: *mut f32, m: *const f32, ms: usize, g: &Segment) {
    let l = V::LANES;
    // [output row][column parity][tile]: room for the widest vector (AVX-512's 16 lanes)
    let mut lanes = [[[0f32; 16]; 2]; 2];
    let mut j = 0;
    while g.tx0 + j < g.tx1 {
        let mut s = [[V::zero(); 2]; 4];
        for (r, s) in s.iter_mut().enumerate() {
            let p = m.add(4 * r * ms + g.k + j);
            let (m0, m1) = (V::load(p), V::load(p.add(ms)));
            let (m2, m3) = (V::load(p.add(2 * ms)), V::load(p.add(3 * ms)));
            *s = [m0.add(m1).add(m2), m1.sub(m2).sub(m3)];
        }
        for b in 0..2 {
            s[0][b]
                .add(s[1][b])
                .add(s[2][b])
                .store(lanes[0][b].as_mut_ptr());
            s[1][b]
                .sub(s[2][b])
                .sub(s[3][b])
                .store(lanes[1][b].as_mut_ptr());
        }
        let n = l.min(g.tx1 - g.tx0 - j);
        for (a, lanes) in lanes.iter().enumerate().take(g.rows) {
            let row = y.add(g.dst + a * g.w);
            for (q, (&even, &odd)) in lanes[0].iter().zip(&lanes[1]).take(n).enumerate() {
                let ox = 2 * (g.tx0 + j + q);
                *row.add(ox) = even;
                if ox + 1 < g.w {
                    *row.add(ox + 1) = odd;
                }
            }
        }
        j += l;
    }
}

/// `Aᵀ·m` of F(4×4, 3×3) for one row or column of 6:
/// `Aᵀ = [[1, 1, 1, 1, 1, 0], [0, 1, −1, 2, −2, 0], [0, 1, 1, 4, 4, 0], [0, 1, −1, 8, −8, 1]]`.
#[inline(always)]
pub(super) unsafe fn at6<V: F32x>(m: [V; 6]) -> [V; 4] {
    let (p, q) = (m[1].add(m[2]), m[1].sub(m[2]));
    let (r, s) = (m[3].add(m[4]), m[3].sub(m[4]));
    [
        m[0].add(p).add(r),
        s.mul_add(V::splat(&2.0), q),
        r.mul_add(V::splat(&4.0), p),
        s.mul_add(V::splat(&8.0), q).add(m[5]),
    ]
}

/// [`output_rows`] of F(4×4, 3×3): [`at6`] along the columns of each of M's 6 rows, then
/// along the rows.
#[inline(always)]
pub(super) unsafe fn output_rows4<V: F32x>(y: *mut f32, m: *const f32, ms: usize, g: &Segment) {
    let l = V::LANES;
    // [output row][output column][tile]: room for the widest vector (AVX-512's 16 lanes)
    let mut lanes = [[[0f32; 16]; 4]; 4];
    let mut j = 0;
    while g.tx0 + j < g.tx1 {
        // s[b][r]: row r of M with Aᵀ applied along its columns, stored by column
        let mut s = [[V::zero(); 6]; 4];
        for r in 0..6 {
            let p = m.add(6 * r * ms + g.k + j);
            let row = std::array::from_fn(|c| V::load(p.add(c * ms)));
            for (s, x) in s.iter_mut().zip(at6(row)) {
                s[r] = x;
            }
        }
        for (b, s) in s.iter().enumerate() {
            for (a, x) in at6(*s).into_iter().enumerate() {
                x.store(lanes[a][b].as_mut_ptr());
            }
        }
        let n = l.min(g.tx1 - g.tx0 - j);
        for (a, lanes) in lanes.iter().enumerate().take(g.rows) {
            let row = y.add(g.dst + a * g.w);
            for q in 0..n {
                let ox = 4 * (g.tx0 + j + q);
                for (b, lane) in lanes.iter().enumerate().take(g.w.saturating_sub(ox)) {
                    *row.add(ox + b) = lane[q];
                }
            }
        }
        j += l;
    }
}

simd_entries!(output_rows => output_avx2, output_avx512 (
    y: *mut f32,
    m: *const f32,
    ms: usize,
    g: &Segment,
));

/// `G·(a, b, c)` of F(2×2, 3×3), `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]`, in
/// the first 4 entries.
pub(super) fn g4(a: f32, b: f32, c: f32) -> [f32; 6] {
    [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c, 0.0, 0.0]
}

/// `G·(a, b, c)` of F(4×4, 3×3), `G = [[¼, 0, 0], [−⅙, −⅙, −⅙], [−⅙, ⅙, −⅙],
/// [1/24, 1/12, ⅙], [1/24, −1/12, ⅙], [0, 0, 1]]`.
pub(super) fn g6(a: f32, b: f32, c: f32) -> [f32; 6] {
    let (s, d) = (a + c, a / 4.0 + c);
    [
        a / 4.0,
        -(s + b) / 6.0,
        -(s - b) / 6.0,
        (d + b / 2.0) / 6.0,
        (d - b / 2.0) / 6.0,
        c,
    ]
}

/// `Aᵀ`'s transpose applied to one row or column of 4 of an output-gradient tile:
/// `m[c] = Σ_a Aᵀ[a][c]·y[a]` (F(4×4, 3×3); [`at6`] has `Aᵀ`).
#[inline(always)]
pub(super) unsafe fn a6<V: F32x>(y: [V; 4]) -> [V; 6] {
    let (p, q) = (y[0].add(y[2]), y[1].add(y[3]));
    let (p4, q2) = (y[2].mul_add(V::splat(&4.0), y[0]), y[1].add(y[1]));
    let q4 = y[3].mul_add(V::splat(&8.0), q2);
    [y[0], p.add(q), p.sub(q), p4.add(q4), p4.sub(q4), y[3]]
}

/// `M' = A·dY·Aᵀ` (6×6) of the F(4×4, 3×3) tiles of segment `g` of one output-gradient
/// channel: that channel's `dy` row (positions from `g.dst`, rows `g.w` apart; zero past
/// the image), the 36 rows `ξ` of `M'` at `m + ξ·ms` (entries `g.k..`). The weight
/// gradient's counterpart of [`output_rows`] (whose transpose it is).
///
/// # Safety
/// `dy` must hold the segment's positions; `m`'s rows must hold `LANES` entries past the
/// segment's last. The CPU must run `V`.
#[inline(always)]
pub(super) unsafe fn grad_rows<V: F32x>(m: *mut f32, ms: usize, dy: *const f32, g: &Segment) {
    let l = V::LANES;
    // [tile row][tile column][tile]: room for the widest vector (AVX-512's 16 lanes)
    let mut lanes = [[[0f32; 16]; 4]; 4];
    let mut j = 0;
    while g.tx0 + j < g.tx1 {
        let n = l.min(g.tx1 - g.tx0 - j);
        for (a, lanes) in lanes.iter_mut().enumerate() {
            let row = dy.add(g.dst + a * g.w);
            for q in 0..l {
                let ox = 4 * (g.tx0 + j + q);
                for (b, lane) in lanes.iter_mut().enumerate() {
                    lane[q] = if a < g.rows && q < n && ox + b < g.w {
                        *row.add(ox + b)
                    } else {
                        0.0
                    };
                }
            }
        }
        // s[c][a]: tile row a with A applied along its columns, stored by column (the two
        // passes of `input_rows4`, written out again: a shared helper that took the 1-D
        // transform as a closure ran it without the table's target features, and a
        // densenet121 evaluation took 2.1× as long)
        let mut s = [[V::zero(); 4]; 6];
        for (a, lanes) in lanes.iter().enumerate() {
            let row = std::array::from_fn(|b| V::load(lanes[b].as_ptr()));
            for (s, x) in s.iter_mut().zip(a6(row)) {
                s[a] = x;
            }
        }
        for (c, s) in s.iter().enumerate() {
            for (r, x) in a6(*s).into_iter().enumerate() {
                x.store(m.add((6 * r + c) * ms + g.k + j));
            }
        }
        j += l;
    }
}

simd_entries!(grad_rows => grad_avx2, grad_avx512 (
    m: *mut f32,
    ms: usize,
    dy: *const f32,
    g: &Segment,
));

/// `U_ξ[o][i]` (`ξ = (r + 2)·row + col`, in the first `(r + 2)²` entries) of
/// `g = w[o][i]` (3×3, row-major): `G·g·Gᵀ`.
pub(super) fn transform_kernel(g: &[f32; 9], r: usize) -> [f32; 36] {
    let col = if r == 4 { g6 } else { g4 };
    let a = r + 2;
    // G·g: a rows of 3
    let mut gg = [[0f32; 3]; 6];
    for kx in 0..3 {
        let v = col(g[kx], g[3 + kx], g[6 + kx]);
        for (row, v) in gg.iter_mut().zip(v) {
            row[kx] = v;
        }
    }
    let mut u = [0f32; 36];
    for (row, gg) in gg.iter().enumerate().take(a) {
        u[a * row..a * row + a].copy_from_slice(&col(gg[0], gg[1], gg[2])[..a]);
    }
    u
}
