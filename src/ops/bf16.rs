//! The bf16 routes' one shape of work (`--precision bf16`, [`super::route::Precision`]):
//! `Y = W·A` where A is formed a tile of positions at a time, already as bf16 channel
//! pairs, in a per-thread buffer, and multiplied by W's pairs on the bf16 kernel
//! ([`crate::kernels::bf16`]). The fused BN-ReLU → 1×1 forms A from a stored input
//! ([`super::fused::forward`]); a stored input's 1×1 from its rows
//! ([`super::conv::conv_forward`]). The 3×3 ([`conv3x3`]) forms the whole zero-padded
//! input as pairs and multiplies it over the window's 9 taps.

use crate::kernels::correlate::balanced_tile;
use crate::kernels::{bf16, prepack, BnRelu, ConvShape};
use crate::util::par::{with_scratch, OnTeam, SyncPtr};
use crate::util::team;
use rayon::prelude::*;

/// Positions per tile: `ceil(i_n/2)` rows of A's pair words (4 bytes each) within
/// 512 KiB, between 256 and 4096 positions.
fn tile_len(i_n: usize) -> usize {
    ((128 << 10) / bf16::pairs(i_n).max(1)).clamp(256, 4096) / 16 * 16
}

/// `y[o][p] = Σ_i w[o][i]·a[i][p]` (`w: [O][I]`, `y: [O][len]` overwritten) in bf16 with
/// f32 sums, where `fill(a2, ld, a, b)` writes positions `a..b` of A as
/// `ceil(I/2)` rows of `ld ≥ b − a` pair words ([`bf16::pack_pairs`]' layout).
///
/// W's pairs are packed once per frozen model (else per call). Tiles of positions run on
/// the team; with fewer tiles than threads (batch 1 at 14×14 and 7×7) every part forms
/// the tile and takes its share of the output rows, as the f32 GEMM path's row split.
pub fn product(
    y: &mut [f32],
    w: &[f32],
    o_n: usize,
    i_n: usize,
    len: usize,
    fill: impl Fn(&mut [u32], usize, usize, usize) + Sync,
) {
    assert!(y.len() >= o_n * len && w.len() >= o_n * i_n);
    let products = bf16::Products::active();
    let yp = SyncPtr(y.as_mut_ptr());
    with_weights(products, w, (o_n, i_n, 1), |wp| {
        product_packed(yp, wp, products, (o_n, i_n, len), fill)
    })
}

/// `f` of W (`[O][I][taps]`) packed for `products`: packed once per frozen model
/// ([`prepack`]), else for this call.
fn with_weights<R>(
    products: bf16::Products,
    w: &[f32],
    (o_n, i_n, taps): (usize, usize, usize),
    f: impl FnOnce(&[u32]) -> R,
) -> R {
    let words = || {
        let mut v = vec![0u32; products.weight_len(o_n, i_n, taps)];
        products.pack_weights(&mut v, w, o_n, i_n, taps);
        v
    };
    let layout = prepack::Layout::Bf16(products);
    let frozen = prepack::packed(layout, w, products.weight_len(o_n, i_n, taps), |v| {
        for (d, s) in v.iter_mut().zip(words()) {
            *d = f32::from_bits(s);
        }
    });
    match &frozen {
        // SAFETY: u32 and f32 have one size and alignment; the packing holds the words'
        // bits
        Some(p) => f(unsafe { std::slice::from_raw_parts(p.as_ptr() as *const u32, p.len()) }),
        None => f(&words()),
    }
}

/// [`product`] with W packed (`wp`), `y` its output.
fn product_packed(
    y: SyncPtr,
    wp: &[u32],
    products: bf16::Products,
    (o_n, i_n, len): (usize, usize, usize),
    fill: impl Fn(&mut [u32], usize, usize, usize) + Sync,
) {
    thread_local! {
        static PAIRS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let threads = team::threads();
    let tile = balanced_tile(len, tile_len(i_n), 16, threads);
    let tiles = len.div_ceil(tile);
    let big = o_n * i_n * len >= 1 << 18;
    // output rows split in parts of whole row blocks (a register block, an AMX tile)
    // where tiles are few
    let unit = products.row_block();
    let blocks = o_n.div_ceil(unit);
    let row_parts = if tiles < threads && big {
        (threads / tiles).clamp(1, blocks)
    } else {
        1
    };
    let rows = products.tile_rows(i_n);
    let work = |task: usize| {
        let (t, part) = (task / row_parts, task % row_parts);
        let (a, b) = (t * tile, ((t + 1) * tile).min(len));
        let (r0, r1) = (
            (part * blocks / row_parts * unit).min(o_n),
            ((part + 1) * blocks / row_parts * unit).min(o_n),
        );
        let (n, ld) = (b - a, products.tile_ld(b - a));
        with_scratch(&PAIRS, rows * ld, |a2| {
            fill(a2, ld, a, b);
            products.pad_tile(a2, ld, i_n, n);
            // SAFETY: rows r0..r1, columns a..b of y (o_n rows of len: the caller's) are
            // this task's only; a2 is a padded tile of n positions
            unsafe {
                let x2 = (&*a2, 0, ld);
                products.product(y.get().add(a), len, wp, x2, &[0], (r0, r1), i_n, n)
            }
        })
    };
    let tasks = tiles * row_parts;
    if tasks > 1 && big {
        (0..tasks).into_par_iter().team_for_each(work);
    } else {
        (0..tasks).for_each(work);
    }
}

/// The zero-padded pair planes of [`conv3x3`] for `ns` samples: each pair row holds a
/// margin, the samples' padded planes (`(H+2)·(W+2)` words each, a zero ring around the
/// image) one after the other, and a margin, so that every tap of every computed position
/// reads inside the row.
#[derive(Clone, Copy, Debug)]
struct PairPlanes {
    /// Padded row width `W + 2`.
    wp: usize,
    /// Words of one sample's padded plane.
    plane: usize,
    /// Words before the first plane: one padded row and one word, the window's reach back.
    margin: usize,
    /// Words of a pair row: margin, planes, the window's reach on, an AMX tile's overrun.
    ld: usize,
}

impl PairPlanes {
    fn new(s: &ConvShape, ns: usize) -> Self {
        let wp = s.w + 2;
        let plane = (s.h + 2) * wp;
        let margin = wp + 1;
        PairPlanes {
            wp,
            plane,
            margin,
            ld: (2 * margin + ns * plane + 16).div_ceil(16) * 16,
        }
    }

    /// The window's 9 taps as offsets from a position, row-major `(ky, kx)`.
    fn taps(&self) -> [isize; 9] {
        std::array::from_fn(|t| ((t / 3) as isize - 1) * self.wp as isize + (t % 3) as isize - 1)
    }
}

/// Floats of scratch (`col`) [`conv3x3`] wants per sample: its pair planes (words of the
/// size of a float), margins counted once per sample.
pub fn conv3x3_per_sample(s: &ConvShape) -> usize {
    let products = bf16::Products::active();
    products.tile_rows(s.cin) * PairPlanes::new(s, 1).ld
}

/// A 3×3 stride-1 padding-1 convolution in bf16 with f32 sums: `y[O][N·H·W]` overwritten,
/// of `relu(x·scale + shift)` where `bn` is given (else of `x` as stored), `w` PyTorch's
/// `[O][I][3][3]`, `col` scratch of [`conv3x3_per_sample`] floats per sample of a chunk.
///
/// The input is formed once per chunk of samples as zero-padded pair planes
/// ([`PairPlanes`]), and the output computed on the padded grid ([`planes_conv3x3`]).
pub fn conv3x3(
    y: &mut [f32],
    x: &[f32],
    bn: Option<BnRelu>,
    w: &[f32],
    s: &ConvShape,
    col: &mut [f32],
) {
    assert!(
        s.k == 3 && s.stride == 1 && s.pad == 1,
        "conv3x3 bf16: {s:?}"
    );
    let (o_n, i_n, len) = (s.cout, s.cin, s.n * s.h * s.w);
    assert!(x.len() >= i_n * len && y.len() >= o_n * len && w.len() == o_n * i_n * 9);
    let products = bf16::Products::active();
    let bn = bn.map(|b| (b.scale, b.shift));
    with_weights(products, w, (o_n, i_n, 9), |wp| {
        for_chunks(s, col, |planes, pp, (n0, n1)| {
            form_planes(planes, x, bn, s, (n0, n1), pp);
            planes_conv3x3(y, planes, pp, wp, s, n0, n1);
        })
    })
}

/// `f(planes, layout, (n0, n1))` for the chunks of samples that `col` holds as pair
/// planes of `s`'s input ([`conv3x3_per_sample`]).
fn for_chunks(
    s: &ConvShape,
    col: &mut [f32],
    mut f: impl FnMut(&mut [u32], PairPlanes, (usize, usize)),
) {
    let rows = bf16::Products::active().tile_rows(s.cin);
    let ns = (col.len() / conv3x3_per_sample(s).max(1)).clamp(1, s.n);
    let mut n0 = 0;
    while n0 < s.n {
        let n1 = (n0 + ns).min(s.n);
        let pp = PairPlanes::new(s, n1 - n0);
        assert!(
            col.len() >= rows * pp.ld,
            "conv3x3 bf16: col scratch too small"
        );
        // SAFETY: u32 and f32 have one size and alignment; col is only used as words
        // until the borrow ends
        let planes =
            unsafe { std::slice::from_raw_parts_mut(col.as_mut_ptr() as *mut u32, rows * pp.ld) };
        f(planes, pp, (n0, n1));
        n0 = n1;
    }
}

/// The runs of image positions among chunk positions `a..b` (`N·H·W` order from the
/// chunk's first sample): `f(q, p, n)` for each run of `n` positions from `p`, whose
/// word in a pair row of the planes is `q`.
fn for_image_runs(
    s: &ConvShape,
    pp: PairPlanes,
    a: usize,
    b: usize,
    mut f: impl FnMut(usize, usize, usize),
) {
    let hw = s.h * s.w;
    let mut p = a;
    while p < b {
        let (ni, r) = (p / hw, p % hw);
        let (yy, xx) = (r / s.w, r % s.w);
        let n = (s.w - xx).min(b - p);
        f(pp.margin + ni * pp.plane + (yy + 1) * pp.wp + 1 + xx, p, n);
        p += n;
    }
}

/// The zeros of one pair row of the planes of `ns` samples: margins and rings.
fn ring_row(row: &mut [u32], s: &ConvShape, ns: usize, pp: PairPlanes) {
    row[..pp.margin].fill(0);
    row[pp.margin + ns * pp.plane..].fill(0);
    for ni in 0..ns {
        let dp = &mut row[pp.margin + ni * pp.plane..][..pp.plane];
        // top ring row and the left ring word of the first image row
        dp[..pp.wp + 1].fill(0);
        for yy in 0..s.h {
            // right ring word of this row, left ring word of the next
            dp[(yy + 2) * pp.wp - 1..][..2].fill(0);
        }
        dp[(s.h + 1) * pp.wp + 1..].fill(0);
    }
}

/// Pair rows of `planes` (`pp.ld` words each) for samples `n0..n1` of `x: [I][N·H·W]`:
/// zero margins and rings, the BN-ReLU (where `bn`) of each image row rounded into pairs,
/// zero rows past the pairs.
fn form_planes(
    planes: &mut [u32],
    x: &[f32],
    bn: Option<(&[f32], &[f32])>,
    s: &ConvShape,
    (n0, n1): (usize, usize),
    pp: PairPlanes,
) {
    let (i_n, hw) = (s.cin, s.h * s.w);
    let len = s.n * hw;
    let ip = bf16::pairs(i_n);
    let rows = bf16::Products::active().tile_rows(i_n);
    let it = planes[..rows * pp.ld].par_chunks_mut(pp.ld).enumerate();
    crate::util::par::per_channel(it, rows * pp.ld, |(j, row)| {
        if j >= ip {
            row.fill(0);
            return;
        }
        ring_row(row, s, n1 - n0, pp);
        let pair = bf16::Pair::of(j, i_n, bn);
        let at = |c: usize, p: usize, n: usize| &x[c * len + n0 * hw + p..][..n];
        for_image_runs(s, pp, 0, (n1 - n0) * hw, |q, p, n| {
            let hi = pair.has_odd().then(|| at(2 * j + 1, p, n));
            pair.form(&mut row[q..][..n], at(2 * j, p, n), hi);
        });
    });
}

/// The 3×3 of samples `n0..n1` from their pair planes (formed): `y[O][N·H·W]`'s positions
/// of those samples overwritten, `wp` the 3×3's weights packed with 9 taps.
///
/// The output is computed on the padded grid: position `q` of the planes is
/// `Σ_t W_t·X[q + tap_t]`, one product over the 9 taps ([`bf16::Products::product`]).
/// The ring's positions are computed too and dropped (7% at 56×56, 29% at 14×14, 65% at
/// 7×7 of the positions computed, against a kernel that would stop at each row's end).
/// Runs of positions run on the team, each through its own output buffer.
fn planes_conv3x3(
    y: &mut [f32],
    planes: &[u32],
    pp: PairPlanes,
    wp: &[u32],
    s: &ConvShape,
    n0: usize,
    n1: usize,
) {
    thread_local! {
        static OUT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let products = bf16::Products::active();
    let (o_n, i_n, hw) = (s.cout, s.cin, s.h * s.w);
    let len = s.n * hw;
    // positions from the first image row's start to the last one's end (the ring
    // between planes included)
    let (q0, q1) = (
        pp.margin + pp.wp + 1,
        pp.margin + (n1 - n0) * pp.plane - pp.wp - 1,
    );
    let span = q1 - q0;
    let chunk = balanced_tile(span, 1024, 16, team::threads());
    let tasks = span.div_ceil(chunk);
    let yp = SyncPtr(y.as_mut_ptr());
    let taps = pp.taps();
    let work = |task: usize| {
        let (a, b) = (q0 + task * chunk, (q0 + (task + 1) * chunk).min(q1));
        with_scratch(&OUT, o_n * (b - a), |out| {
            // SAFETY: out holds o_n rows of b − a floats
            unsafe {
                products.product(
                    out.as_mut_ptr(),
                    b - a,
                    wp,
                    (planes, a, pp.ld),
                    &taps,
                    (0, o_n),
                    i_n,
                    b - a,
                )
            };
            // SAFETY: the image positions of a..b are this task's only
            unsafe {
                unpad(
                    yp.get(),
                    out,
                    (o_n, len, hw),
                    s,
                    (n0, a - pp.margin, b - a),
                    pp,
                )
            };
        })
    };
    if tasks > 1 && o_n * i_n * 9 * span >= 1 << 18 {
        (0..tasks).into_par_iter().team_for_each(work);
    } else {
        (0..tasks).for_each(work);
    }
}
/// The image positions among the `n` padded-grid positions from `q` (relative to the
/// planes of the chunk that starts at sample `n0`) of `out: [o_n][n]`, into
/// `y: [o_n][len]` (planes of `hw`).
///
/// # Safety
/// `y` holds `o_n` rows of `len` floats, whose positions that `q..q + n` maps to nobody
/// else writes meanwhile.
unsafe fn unpad(
    y: *mut f32,
    out: &[f32],
    (o_n, len, hw): (usize, usize, usize),
    s: &ConvShape,
    (n0, q, n): (usize, usize, usize),
    pp: PairPlanes,
) {
    // runs of one image row: the padded row r of a plane holds image row r − 1 at
    // columns 1..=W
    let mut at = q;
    while at < q + n {
        let (ni, r) = (at / pp.plane, at % pp.plane);
        let (row, c) = (r / pp.wp, r % pp.wp);
        let row_end = at - c + pp.wp;
        if (1..=s.h).contains(&row) {
            let (c0, c1) = (c.max(1), (q + n).min(row_end - 1) - (at - c));
            if c0 < c1 {
                let dst = (n0 + ni) * hw + (row - 1) * s.w + (c0 - 1);
                let src = at - c + c0 - q;
                for o in 0..o_n {
                    // SAFETY: the caller's contract; c0..c1 lies within the image row
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            out.as_ptr().add(o * n + src),
                            y.add(o * len + dst),
                            c1 - c0,
                        )
                    };
                }
            }
        }
        at = row_end;
    }
}
