//! The bf16 routes' one shape of work (`--precision bf16`, [`super::route::Precision`]):
//! `Y = W·A` where A is formed a tile of positions at a time, already as bf16 channel
//! pairs, in a per-thread buffer, and multiplied by W's pairs on the bf16 kernel
//! ([`crate::kernels::bf16`]). The fused BN-ReLU → 1×1 forms A from a stored input
//! ([`super::fused::forward`]); a stored input's 1×1 from its rows
//! ([`super::conv::conv_forward`]); the 3×3 ([`conv3x3`]) a window of zero-padded pair
//! planes per task, multiplied over the 9 taps; any other convolution ([`im2col`], the
//! stem) its im2col rows, gathered from a bf16 copy of the input.

use crate::kernels::conv3x3::Padded;
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
        product_rows(yp, wp, products, (o_n, i_n, len, len), fill)
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
    let len = products.weight_len(o_n, i_n, taps);
    packed_as(
        products,
        w,
        len,
        |v| products.pack_weights(v, w, o_n, i_n, taps),
        f,
    )
}

/// `f` of `len` words that `pack` makes from `w` for `products`: made once per frozen
/// model ([`prepack`], keyed by `w` and `products`), else for this call.
fn packed_as<R>(
    products: bf16::Products,
    w: &[f32],
    len: usize,
    pack: impl Fn(&mut [u32]),
    f: impl FnOnce(&[u32]) -> R,
) -> R {
    let words = || {
        let mut v = vec![0u32; len];
        pack(&mut v);
        v
    };
    let layout = prepack::Layout::Bf16(products);
    let frozen = prepack::packed(layout, w, len, |v| {
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

/// [`product`] with W packed (`wp`): `len` positions into `y`'s rows of `ldy` floats.
fn product_rows(
    y: SyncPtr,
    wp: &[u32],
    products: bf16::Products,
    (o_n, i_n, len, ldy): (usize, usize, usize, usize),
    fill: impl Fn(&mut [u32], usize, usize, usize) + Sync,
) {
    thread_local! {
        static PAIRS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let threads = team::threads();
    // a tile per thread where each gets two AMX tiles' width of positions, rather than
    // every thread forming the whole tile for its share of the rows (densenet121 at batch
    // 1, Xeon with AMX, 2 threads, 5 alternating runs: 8.41–8.48 ms against 8.36–9.03)
    let most = if len < 64 * threads {
        tile_len(i_n)
    } else {
        tile_len(i_n).min(len.div_ceil(threads).next_multiple_of(32))
    };
    let tile = balanced_tile(len, most, 16, threads);
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
                products.product(y.get().add(a), ldy, wp, x2, &[0], (r0, r1), i_n, n)
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

/// A 3×3 stride-1 padding-1 convolution in bf16 with f32 sums: `y[O][N·H·W]` overwritten,
/// of `relu(x·scale + shift)` where `bn` is given (else of `x` as stored), `w` PyTorch's
/// `[O][I][3][3]`.
///
/// The output is computed on the padded grid of all samples ([`Padded`], the f32 direct
/// 3×3's layout): position `q` is `Σ_t W_t·X[q + tap_t]`, one product over the 9 taps
/// ([`bf16::Products::product`]). The ring's positions are computed too and dropped (7%
/// at 56×56, 29% at 14×14, 65% at 7×7 of the positions computed, against a kernel that
/// would stop at each row's end).
///
/// Runs of positions run on the team. Each task forms the window of pair planes its
/// product reads (its positions and the taps' reach, the BN-ReLU applied and rounded,
/// zeros on the ring) in a buffer of its own, multiplies, and copies its image positions
/// out: one parallel region a 3×3 and no scratch from the plan. Against planes formed
/// once for all tasks, split by channel pairs (densenet121, Xeon with AMX, 2 threads,
/// alternating): batch 1 8.7–9.1 against 8.4–9.0 ms, batch 16 0.130–0.134 against
/// 0.132–0.136 s, the same; the windows' overlap (the taps' reach, a padded row and a
/// column each side) is formed twice.
pub fn conv3x3(y: &mut [f32], x: &[f32], bn: Option<BnRelu>, w: &[f32], s: &ConvShape) {
    thread_local! {
        static PLANES: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
        static OUT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    assert!(s.is_same_3x3(), "conv3x3 bf16: {s:?}");
    let (o_n, i_n, hw) = (s.cout, s.cin, s.h * s.w);
    let len = s.n * hw;
    assert!(x.len() >= i_n * len && y.len() >= o_n * len && w.len() == o_n * i_n * 9);
    let products = bf16::Products::active();
    let bn = bn.map(|b| (b.scale, b.shift));
    let pp = Padded::new(s, s.n);
    let rows = products.tile_rows(i_n);
    // body positions from the first image row's start to the last one's end (the ring
    // between planes included); a tap reaches a padded row and a column either way
    let (q0, q1) = pp.interior();
    let (span, reach) = (q1 - q0, pp.wp + 1);
    let threads = team::threads();
    // at least a task per thread (two AMX tiles of positions each at the least): with
    // tasks of up to 1024 positions the 28×28 and 14×14 3×3s of batch 1 ran on one thread
    // (densenet121, Xeon with AMX, 2 threads: 9.25–9.54 → 8.0–9.0 ms a pass)
    let most = span.div_ceil(threads).next_multiple_of(32).clamp(32, 1024);
    let chunk = balanced_tile(span, most, 16, threads);
    let tasks = span.div_ceil(chunk);
    let taps = pp.offsets();
    let yp = SyncPtr(y.as_mut_ptr());
    with_weights(products, w, (o_n, i_n, 9), |wp| {
        let work = |task: usize| {
            let (a, b) = (q0 + task * chunk, (q0 + (task + 1) * chunk).min(q1));
            // the window: body positions lo..lo + ld, the taps' reach and an AMX tile's
            // overrun past the last position
            let (lo, n) = (a - reach, b - a);
            let ld = (n + 2 * reach + 16).next_multiple_of(16);
            with_scratch(&PLANES, rows * ld, |planes| {
                form_window(planes, ld, x, bn, s, pp, lo);
                with_scratch(&OUT, o_n * n, |out| {
                    // SAFETY: out holds o_n rows of n floats; every tap of a..b reads
                    // inside the window (the product checks it)
                    unsafe {
                        let x2 = (&*planes, reach, ld);
                        products.product(out.as_mut_ptr(), n, wp, x2, &taps, (0, o_n), i_n, n)
                    };
                    // SAFETY: the image positions of a..b are this task's only
                    unsafe { unpad(yp.get(), out, (o_n, len, hw), s, (a, n), pp) };
                })
            })
        };
        if tasks > 1 && o_n * i_n * 9 * span >= 1 << 18 {
            (0..tasks).into_par_iter().team_for_each(work);
        } else {
            (0..tasks).for_each(work);
        }
    })
}

/// The pair planes of body positions `lo..lo + ld` of `s`'s input laid out as `pp` (all
/// samples), one pair of channels a row of `planes` (`ld` words): the BN-ReLU (where `bn`)
/// of the image positions rounded into pairs, zeros on the ring, past the body and in the
/// rows past the pairs of `x: [I][N·H·W]`'s channels.
fn form_window(
    planes: &mut [u32],
    ld: usize,
    x: &[f32],
    bn: Option<(&[f32], &[f32])>,
    s: &ConvShape,
    pp: Padded,
    lo: usize,
) {
    let (i_n, hw) = (s.cin, s.h * s.w);
    let len = s.n * hw;
    let ip = bf16::pairs(i_n);
    for (j, row) in planes.chunks_exact_mut(ld).enumerate() {
        if j >= ip {
            row.fill(0);
            continue;
        }
        let pair = bf16::Pair::of(j, i_n, bn);
        // padded row by padded row: its image columns formed, the rest zero
        let mut q = lo;
        while q < lo + ld {
            let (ni, r) = (q / pp.plane, q % pp.plane);
            let (pr, c) = (r / pp.wp, r % pp.wp);
            let end = (q - c + pp.wp).min(lo + ld);
            let dst = &mut row[q - lo..end - lo];
            if ni >= s.n || pr == 0 || pr > s.h {
                dst.fill(0);
            } else {
                // columns c..c + dst.len() of padded row pr; image columns 1..=W
                let (c0, c1) = (c.max(1), (c + dst.len()).min(s.w + 1));
                if c0 >= c1 {
                    dst.fill(0);
                } else {
                    dst[..c0 - c].fill(0);
                    dst[c1 - c..].fill(0);
                    let at =
                        |ch: usize| &x[ch * len + ni * hw + (pr - 1) * s.w + c0 - 1..][..c1 - c0];
                    let hi = pair.has_odd().then(|| at(2 * j + 1));
                    pair.form(&mut dst[c0 - c..c1 - c], at(2 * j), hi);
                }
            }
            q = end;
        }
    }
}

/// The image positions among the `n` padded-grid positions from `q` (of the body of
/// `pp`, all samples) of `out: [o_n][n]`, into `y: [o_n][len]` (planes of `hw`).
///
/// # Safety
/// `y` holds `o_n` rows of `len` floats, whose positions that `q..q + n` maps to nobody
/// else writes meanwhile.
unsafe fn unpad(
    y: *mut f32,
    out: &[f32],
    (o_n, len, hw): (usize, usize, usize),
    s: &ConvShape,
    (q, n): (usize, usize),
    pp: Padded,
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
                let dst = ni * hw + (row - 1) * s.w + (c0 - 1);
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

/// The bf16 copy of an input that [`im2col`] gathers from: each channel's planes of `ns`
/// samples with `pad` zero rows above and below and `pad` zero columns left and at least
/// `pad + 1` right (a pair reads one value past a window's last column), as bf16 values.
#[derive(Clone, Copy, Debug)]
struct Bf16Copy {
    /// Values per padded row.
    wp: usize,
    /// Values per padded plane.
    plane: usize,
    /// Values per channel: `ns` planes.
    channel: usize,
}

impl Bf16Copy {
    fn new(s: &ConvShape, ns: usize) -> Self {
        let wp = (s.w + 2 * s.pad + 1).div_ceil(2) * 2;
        let plane = (s.h + 2 * s.pad) * wp;
        Bf16Copy {
            wp,
            plane,
            channel: ns * plane,
        }
    }

    /// Floats (of 2 bf16 each) of the copy of `s.cin` channels.
    fn floats(&self, cin: usize) -> usize {
        (cin * self.channel).div_ceil(2)
    }
}

/// Pairs per row of the window: `ceil(k/2)`, the last one's odd tap zero where `k` is odd.
fn window_pairs(k: usize) -> usize {
    k.div_ceil(2)
}

/// Floats of scratch (`col`) [`im2col`] wants per sample: its bf16 copy.
pub fn im2col_per_sample(s: &ConvShape) -> usize {
    Bf16Copy::new(s, 1).floats(s.cin) + 1
}

/// Any convolution (the ImageNet stem's 7×7 stride 2) in bf16 with f32 sums, as an
/// im2col product whose tile is gathered from a bf16 copy of the input: `y[O][N·Ho·Wo]`
/// overwritten, `w` PyTorch's `[O][I][k][k]`, `col` scratch of [`im2col_per_sample`]
/// floats per sample of a chunk.
///
/// **The pairs.** Each row of the window is taken in pairs of taps `(kx, kx + 1)` (an odd
/// `k` gets a zero tap), so that a pair word at output column `ox` is the two input values
/// from column `ox·stride + kx − pad` on: one unaligned 32-bit read of the bf16 copy. The
/// tile is gathered, never computed in f32: where im2col wrote 147 f32 rows per position
/// and rounded them, this reads 84 words (the 7×7's 3 × 7 × 4 pairs, 14% more products).
pub fn im2col(y: &mut [f32], x: &[f32], w: &[f32], s: &ConvShape, col: &mut [f32]) {
    let (o_n, k) = (s.cout, s.k);
    let (hw, ohw) = (s.h * s.w, s.ho() * s.wo());
    let kp = window_pairs(k);
    // the im2col rows' pairs: (ci, ky, kx pair)
    let kw = s.cin * k * kp * 2;
    assert!(
        x.len() >= s.cin * s.n * hw && y.len() >= o_n * s.n * ohw && w.len() == o_n * s.cin * k * k
    );
    let products = bf16::Products::active();
    // W with a zero tap after each window row of odd k, then packed as a 1×1 of kw inputs
    let pack = |v: &mut [u32]| {
        let wide: Vec<f32> = (0..o_n * kw)
            .map(|q| {
                let (o, r) = (q / kw, q % kw);
                let (ci, ky, kx) = (r / (k * 2 * kp), r / (2 * kp) % k, r % (2 * kp));
                if kx < k {
                    w[((o * s.cin + ci) * k + ky) * k + kx]
                } else {
                    0.0
                }
            })
            .collect();
        products.pack_weights(v, &wide, o_n, kw, 1)
    };
    let ns = (col.len() / im2col_per_sample(s)).clamp(1, s.n);
    packed_as(products, w, products.weight_len(o_n, kw, 1), pack, |wp| {
        let mut n0 = 0;
        while n0 < s.n {
            let n1 = (n0 + ns).min(s.n);
            let c = Bf16Copy::new(s, n1 - n0);
            assert!(
                col.len() >= c.floats(s.cin),
                "im2col bf16: col scratch too small"
            );
            // SAFETY: u16 needs less alignment than f32 and twice the values fit
            let copy: &mut [u16] = unsafe {
                std::slice::from_raw_parts_mut(col.as_mut_ptr() as *mut u16, s.cin * c.channel)
            };
            copy_bf16(copy, x, s, (n0, n1), c);
            let copy: &[u16] = copy;
            let yp = SyncPtr(y[n0 * ohw..].as_mut_ptr());
            let fill =
                |a2: &mut [u32], ld: usize, a: usize, b: usize| gather(a2, ld, copy, s, c, a, b);
            // y's rows are N·Ho·Wo long: the product's len must be that, its positions this
            // chunk's
            product_rows(
                yp,
                wp,
                products,
                (o_n, kw, (n1 - n0) * ohw, s.n * ohw),
                fill,
            );
            n0 = n1;
        }
    })
}

/// Samples `n0..n1` of `x: [I][N·H·W]` as bf16 into `copy` (laid out as `c` says), zeros
/// in the padding.
fn copy_bf16(copy: &mut [u16], x: &[f32], s: &ConvShape, (n0, n1): (usize, usize), c: Bf16Copy) {
    let hw = s.h * s.w;
    let len = s.n * hw;
    let it = copy[..s.cin * c.channel]
        .par_chunks_mut(c.plane)
        .enumerate();
    crate::util::par::per_channel(it, s.cin * c.channel, |(q, plane)| {
        let (ci, ni) = (q / (n1 - n0), n0 + q % (n1 - n0));
        plane.fill(0);
        for yy in 0..s.h {
            let src = &x[ci * len + ni * hw + yy * s.w..][..s.w];
            let dst = &mut plane[(yy + s.pad) * c.wp + s.pad..][..s.w];
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = bf16::to_bf16(v);
            }
        }
    });
}

/// Positions `a..b` (of the chunk's `n·Ho·Wo`) of the im2col pair rows `(ci, ky, kx pair)`
/// into `a2` (rows `ld` words apart), from the bf16 copy.
#[allow(clippy::too_many_arguments)]
fn gather(a2: &mut [u32], ld: usize, copy: &[u16], s: &ConvShape, c: Bf16Copy, a: usize, b: usize) {
    let (k, kp) = (s.k, window_pairs(s.k));
    let (ho, wo) = (s.ho(), s.wo());
    for ci in 0..s.cin {
        for ky in 0..k {
            for j in 0..kp {
                let row = &mut a2[((ci * k + ky) * kp + j) * ld..][..b - a];
                let mut p = a;
                while p < b {
                    let (ni, r) = (p / (ho * wo), p % (ho * wo));
                    let (oy, ox0) = (r / wo, r % wo);
                    let n = (wo - ox0).min(b - p);
                    // window row ky of output row oy: padded row oy·stride + ky
                    let base = ci * c.channel + ni * c.plane + (oy * s.stride + ky) * c.wp + 2 * j;
                    let dst = &mut row[p - a..][..n];
                    let first = base + ox0 * s.stride;
                    let src = &copy[first..][..(n - 1) * s.stride + 2];
                    if s.stride == 2 {
                        // the pair words of consecutive columns are consecutive 32-bit words
                        // of the copy (little-endian: the first value in the low half)
                        for (d, v) in dst.iter_mut().zip(src.chunks_exact(2)) {
                            *d = v[0] as u32 | (v[1] as u32) << 16;
                        }
                    } else {
                        for (q, d) in dst.iter_mut().enumerate() {
                            let at = q * s.stride;
                            *d = src[at] as u32 | (src[at + 1] as u32) << 16;
                        }
                    }
                    p += n;
                }
            }
        }
    }
}
