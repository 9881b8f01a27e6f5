//! The register-blocked core of the direct convolution kernels: `correlate`, one loop
//! over positions that computes `out[o][p] = Σ_i Σ_t w[o][i][t] · in[i][p + off_t]` for a
//! handful of constant tap offsets. With 9 taps and the zero-padded layout of
//! [`super::conv3x3`] it is a 3×3 convolution (and, with flipped weights, its input
//! gradient); with one tap it is a 1×1 convolution ([`super::conv1x1`]).
//!
//! Register blocking: 6 or 4 output channels × 2 vectors of positions ([`correlate_rows`]
//! picks per output count), input channels in groups that stay in L1. The kernel is one
//! generic source over the vector type ([`super::simd`]), instantiated for AVX2+FMA
//! (blocks of 16 positions) and AVX-512 (32); the `portable` table has none, and
//! convolutions then take im2col + GEMM.

use super::simd::{simd_entries, F32x};
use crate::util::par::{per_channel, with_scratch, OnTeam};
use rayon::prelude::*;

/// Signature of [`correlate_avx2`] and [`correlate_avx512`] (entries of [`super::Direct`]).
pub type CorrelateFn =
    unsafe fn(*mut f32, *const f32, usize, Weights<'_>, usize, usize, &[isize], Span, usize, usize);

/// Output channels per register block.
pub(crate) const OB: usize = 4;
/// Output channels per register block where they divide by 6 (see [`rows6`]).
pub(crate) const OB6: usize = 6;
/// Positions of the widest register block of any table (two 16-lane AVX-512 vectors):
/// the room a caller leaves past the last position for a block that runs over
/// ([`Span::overrun`]).
pub(crate) const PB: usize = 32;
/// Input channels per group in [`correlate`] (see the loop-order note there).
pub(crate) const IB: usize = 16;

/// Output rows taken in register blocks of 6 (12 accumulators): all of them where they
/// divide by 6, else the largest multiple of 12, and the rest (4 or 8: the callers' counts
/// divide by 4 then) in blocks of 4. densenet121's 3×3 has 32 outputs: 24 + 8.
pub(crate) fn rows6(o_n: usize) -> usize {
    if o_n.is_multiple_of(OB6) {
        o_n
    } else {
        o_n / (2 * OB6) * (2 * OB6)
    }
}

/// Rows `r0..r1` of part `k` of `parts` near-equal parts of `o_n` output rows, cut only
/// between register blocks (6-row blocks below [`rows6`], 4-row ones above), so that each
/// part is a whole number of the blocks the kernel takes for all `o_n` rows.
pub(crate) fn part_rows(o_n: usize, parts: usize, k: usize) -> (usize, usize) {
    let r6 = rows6(o_n);
    // the block boundary nearest to row `target`
    let cut = |target: usize| {
        let mut best = 0;
        let mut r = 0;
        while r <= o_n {
            if target.abs_diff(r) < target.abs_diff(best) {
                best = r;
            }
            r += if r < r6 { OB6 } else { OB };
        }
        best
    };
    (cut(o_n * k / parts), cut(o_n * (k + 1) / parts))
}

/// Rows `r0..r1` of part `k` of `parts` near-equal parts of `o_n` output rows (a multiple
/// of 4), cut at multiples of 4: every part is then rows one kernel call can block by
/// itself, where the weights are read in place ([`Weights`] not packed). densenet121's 32
/// 3×3 outputs split 16 + 16, where [`part_rows`] splits them 18 + 14.
pub(crate) fn part_rows4(o_n: usize, parts: usize, k: usize) -> (usize, usize) {
    let cut = |target: usize| ((target + 2) / OB * OB).min(o_n);
    (cut(o_n * k / parts), cut(o_n * (k + 1) / parts))
}

/// Calls `work(a, b, r0, r1)` for every tile `a..b` (of at most `tile` positions, a
/// multiple of `block`) of positions `p0..p1` and part `r0..r1` of the `o_n` output rows,
/// in parallel where `big`. Tiles are evened out over the threads ([`balanced_tile`]).
/// The rows are split (`parts`: [`part_rows`] or [`part_rows4`]) only where there are
/// fewer tiles than threads (batch 1 at 14×14 and 7×7: one tile), so that every core has
/// work.
#[allow(clippy::too_many_arguments)]
pub(crate) fn for_tiles<F>(
    p0: usize,
    p1: usize,
    tile: usize,
    block: usize,
    o_n: usize,
    big: bool,
    part: fn(usize, usize, usize) -> (usize, usize),
    work: F,
) where
    F: Fn(usize, usize, usize, usize) + Sync,
{
    let threads = rayon::current_num_threads();
    let tile = if big {
        balanced_tile(p1 - p0, tile, block, threads)
    } else {
        tile
    };
    let tiles = (p1 - p0).div_ceil(tile);
    let parts = if big && tiles < threads {
        threads.div_ceil(tiles.max(1))
    } else {
        1
    };
    let task = |j: usize| {
        let a = p0 + j / parts * tile;
        let (r0, r1) = part(o_n, parts, j % parts);
        work(a, (a + tile).min(p1), r0, r1)
    };
    if tiles * parts > 1 && big {
        (0..tiles * parts).into_par_iter().team_for_each(task);
    } else {
        (0..tiles * parts).for_each(task);
    }
}

/// `tile` (a multiple of `block`), shortened where that evens out the work of `threads`
/// threads taking tile j on thread `j % threads` (what rayon's split of a few tiles, and
/// `fused::backward`'s parts, come to): the longest multiple of `block` up to `tile` whose
/// busiest thread has at most 3% more blocks of positions to compute (a partial block
/// costs a whole one) than the fewest any length gives. The 3% spares the many short
/// tiles (a fill and a pass over the weights each) that a last 1–2% of balance would take:
/// densenet121's 1×1 at 14×14, batch 16 (3136 positions), would go from tiles of 96 to
/// tiles of 32 for 98 blocks in place of 100. Where there are fewer tiles than threads,
/// `tile` (the callers split rows).
///
/// densenet121's 7×7 at batch 16 has 784 positions: in tiles of 256 one of two threads
/// took 512 positions and the other 272; in tiles of 192, 25 and 24 blocks of 16. At batch
/// 1 its 14×14 has 196: tiles of 64 gave one thread 8 blocks and the other 5, tiles of 96
/// give 7 and 6.
pub(crate) fn balanced_tile(len: usize, tile: usize, block: usize, threads: usize) -> usize {
    if len.div_ceil(tile) < threads.max(2) {
        return tile;
    }
    // the fewest: an even share of the blocks, rounded up (tiles of one block reach it,
    // and no length does better)
    let fewest = len.div_ceil(block).div_ceil(threads);
    (1..=tile / block)
        .rev()
        .map(|k| k * block)
        .find(|&t| busiest_blocks(len, t, block, threads) * 100 <= fewest * 103)
        .unwrap_or(tile)
}

/// The blocks of positions of the busiest of `threads` threads when `len` positions are
/// cut into tiles of `t` and tile j goes to thread `j % threads`.
fn busiest_blocks(len: usize, t: usize, block: usize, threads: usize) -> usize {
    let tiles = len.div_ceil(t);
    let per_tile = t / block;
    let last = (len - (tiles - 1) * t).div_ceil(block);
    (0..threads.min(tiles))
        .map(|k| {
            let count = tiles / threads + usize::from(k < tiles % threads);
            let short = if k == (tiles - 1) % threads {
                per_tile - last
            } else {
                0
            };
            count * per_tile - short
        })
        .max()
        .unwrap_or(0)
}

/// Calls `f(r0, r1)` for the runs of rows `r0..r1` (from [`part_rows`]) that a direct
/// kernel can take in one call: the 6-row part and the 4-row part separately, since a
/// call lays out `r1 − r0` rows by [`rows6`] of that count (a 4-row run is 4 or 8 rows,
/// which `rows6` leaves to 4-row blocks).
pub(crate) fn for_row_runs(o_n: usize, r0: usize, r1: usize, mut f: impl FnMut(usize, usize)) {
    let r6 = rows6(o_n);
    if r0 < r6.min(r1) {
        f(r0, r6.min(r1));
    }
    if r6.max(r0) < r1 {
        f(r6.max(r0), r1);
    }
}

/// A direct kernel's weights, read where they lie: weight (o, i, t) of output row o,
/// input row i and tap t is `w[o·row + i·chan + t]`, or `w[o·row + i·chan + T−1−t]`
/// [`Flipped`](WeightLayout::Flipped) (`T` taps). A forward weight `[O][I][T]` is
/// `row = I·T, chan = T`; the same tensor read as its backward-data kernel
/// (`w'[o][i][t] = w[i][o][T−1−t]`, output rows the forward's inputs) is `row = T,
/// chan = O·T`, flipped.
///
/// Or, with one tap, [`with_packed`]'s layout ([`Packed`](WeightLayout::Packed)).
///
/// Why the 3×3 reads its weights in place: they used to be repacked per call as
/// `[O/6][I][T][6]`, so that a tap's 6 broadcasts were adjacent. The broadcasts are L1
/// loads either way (a block's weights for one input group are ≤ 4 KiB in both layouts),
/// but the repacking was a serial pass over every weight on each call: 25 µs per 3×3 of
/// densenet121 (36 864 weights), 1.45 ms of a 45 ms batch-1 inference. The 1×1 keeps the
/// packing (a small part of its calls): read in place, its backward-data weights are one
/// cache line per channel and block, and the 1×1 kernels ran up to 10% slower.
#[derive(Clone, Copy)]
pub struct Weights<'a> {
    /// The tensor (or the part from the first row on; see [`Weights::from_row`]).
    pub w: &'a [f32],
    /// Distance between output rows (packed: between the rows' first weights, `I`).
    pub row: usize,
    /// Distance between input rows (unused when packed).
    pub chan: usize,
    /// How the strides apply.
    pub layout: WeightLayout,
}

/// The layouts a [`Weights`] view reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// In place, taps in order.
    InPlace,
    /// In place, taps in reverse order (a backward-data kernel).
    Flipped,
    /// [`with_packed`]'s layout (one tap): in a block of `R` rows, row r of channel i at
    /// `i·R + r`.
    Packed,
}

impl<'a> Weights<'a> {
    /// A forward weight `[O][I][T]` of `i_n` input rows and `taps` taps.
    pub fn forward(w: &'a [f32], i_n: usize, taps: usize) -> Self {
        Weights {
            w,
            row: i_n * taps,
            chan: taps,
            layout: WeightLayout::InPlace,
        }
    }
    /// A forward weight `[F_out][F_in][T]` read as its backward-data kernel, whose `o_n`
    /// output rows are the forward's `F_in` inputs and whose input rows are its outputs.
    pub fn backward_data(w: &'a [f32], o_n: usize, taps: usize) -> Self {
        Weights {
            w,
            row: taps,
            chan: o_n * taps,
            layout: WeightLayout::Flipped,
        }
    }
    /// Weights in [`with_packed`]'s layout (one tap; see [`pack_into`]) of `i_n` input rows.
    pub(crate) fn packed(w: &'a [f32], i_n: usize) -> Self {
        Weights {
            w,
            row: i_n,
            chan: 0,
            layout: WeightLayout::Packed,
        }
    }
    /// The weights of output rows `r0..`.
    pub fn from_row(self, r0: usize) -> Self {
        Weights {
            w: &self.w[(r0 * self.row).min(self.w.len())..],
            ..self
        }
    }
    /// Whether `o_n` output rows, `i_n` input rows and `taps` taps lie inside `w`.
    fn covers(&self, o_n: usize, i_n: usize, taps: usize) -> bool {
        if self.layout == WeightLayout::Packed {
            return taps == 1 && self.row == i_n && o_n * i_n <= self.w.len();
        }
        o_n == 0 || i_n == 0 || (o_n - 1) * self.row + (i_n - 1) * self.chan + taps <= self.w.len()
    }
}

/// One-tap weights `[O][I]` (with `flip`, a forward `[I][O]` read as its backward-data
/// kernel) repacked as `[O/B][I][B]` with `B` = 6 for the first [`rows6`] rows and 4 for
/// the rest, so a channel's B broadcasts are adjacent. The packing lives in a per-thread
/// buffer for the duration of `f`.
pub(crate) fn with_packed<R>(
    w: &[f32],
    o_n: usize,
    i_n: usize,
    flip: bool,
    f: impl FnOnce(Weights<'_>) -> R,
) -> R {
    assert_eq!(w.len(), o_n * i_n);
    thread_local! {
        static WPACK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    with_scratch(&WPACK, o_n * i_n, |out| {
        pack_into(out, o_n, i_n, |o, i| {
            if flip {
                w[i * o_n + o]
            } else {
                w[o * i_n + i]
            }
        });
        f(Weights::packed(out, i_n))
    })
}

/// Writes the one-tap weights `get(o, i)` (`o_n` output rows, `i_n` input rows) into `out`
/// in [`with_packed`]'s layout: one register block of rows at a time, over the threads
/// from [`crate::util::par::PAR_MIN`] floats on. (On the calling thread alone, the
/// packing before each 1×1 took ~18 ms of a densenet121 training step at batch 16, under
/// `perf` with call graphs, while the other core waited.)
pub(crate) fn pack_into(
    out: &mut [f32],
    o_n: usize,
    i_n: usize,
    get: impl Fn(usize, usize) -> f32 + Sync,
) {
    assert!(out.len() >= o_n * i_n);
    let r6 = rows6(o_n);
    let (six, four) = out[..o_n * i_n].split_at_mut(r6 * i_n);
    // block `b` of `ob` rows from row `o0`: row o0 + r of channel i at `i·ob + r`
    let block = |ob: usize, o0: usize, dst: &mut [f32]| {
        for (i, d) in dst.chunks_exact_mut(ob).enumerate() {
            for (r, d) in d.iter_mut().enumerate() {
                *d = get(o0 + r, i);
            }
        }
    };
    if i_n == 0 {
        return;
    }
    per_channel(
        six.par_chunks_mut(OB6 * i_n).enumerate(),
        r6 * i_n,
        |(b, d)| block(OB6, b * OB6, d),
    );
    let n4 = four.len();
    per_channel(four.par_chunks_mut(OB * i_n).enumerate(), n4, |(b, d)| {
        block(OB, r6 + b * OB, d)
    });
}

/// Positions per parallel tile of [`correlate`] and [`pointwise_with`]: a tile's input
/// (`i_n` rows, plus the taps' halo) should stay in L2 (512 KiB per core here) while all
/// output blocks sweep it. A multiple of `block`, the positions of the active table's
/// register block ([`super::Direct::block`]), so that no block crosses from one tile into
/// the next. (Rounding the AVX2 tiles up to AVX-512's 32 instead made the 1×1 at
/// densenet121's 7×7, 768 inputs, 20% slower on one thread: 96-position tiles and the
/// weights no longer shared L2.)
pub(crate) fn tile_len(i_n: usize, block: usize) -> usize {
    (((64 << 10) / (i_n.max(1) * 16)).clamp(1, 64) * 16).next_multiple_of(block)
}

/// Rows and positions a correlate call ([`correlate_rows`], `conv3x3`'s driver) works on: row r of a buffer starts at
/// `r·ld + base`; positions `p0..p1` are computed.
#[derive(Clone, Copy)]
pub struct Span {
    /// Distance between rows.
    pub ld: usize,
    /// Offset of position 0 in each row.
    pub base: usize,
    /// First position computed.
    pub p0: usize,
    /// One past the last position computed.
    pub p1: usize,
    /// Whether the rows have at least `PB` readable and writable floats past `p1` (the
    /// padded layout's margin): then the last block may run over instead of a scalar tail.
    pub overrun: bool,
}

/// The direct kernel over `o_n` output rows: the first [`rows6`] in register blocks of
/// 6, the rest in blocks of 4, positions `a..b` of the span. Output row r is
/// `out + r·sp.ld + sp.base`; input row i is `ib + i·ild`, and position q of it reads
/// `ib + i·ild + q + off_t`.
///
/// # Safety
/// Every row read and written must lie in its buffer for positions `a..b` (and up to
/// [`PB`] past `b` with `sp.overrun`), plus the taps' offsets; the CPU must run `V`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn correlate_rows<V: F32x, const TAPS: usize>(
    out: *mut f32,
    ib: *const f32,
    ild: usize,
    w: Weights<'_>,
    o_n: usize,
    i_n: usize,
    offs: &[isize],
    sp: Span,
    a: usize,
    b: usize,
) {
    let offs: &[isize; TAPS] = offs.try_into().expect("tap count");
    assert!(w.covers(o_n, i_n, TAPS), "correlate: weights too short");
    // with one tap, flipped is the same order
    match w.layout {
        WeightLayout::Packed => {
            correlate_blocks::<V, TAPS, false, true>(out, ib, ild, w, o_n, i_n, offs, sp, a, b)
        }
        WeightLayout::Flipped if TAPS > 1 => {
            correlate_blocks::<V, TAPS, true, false>(out, ib, ild, w, o_n, i_n, offs, sp, a, b)
        }
        _ => correlate_blocks::<V, TAPS, false, false>(out, ib, ild, w, o_n, i_n, offs, sp, a, b),
    }
}

/// [`correlate_rows`] with the tap order and the layout fixed at compile time, so that a
/// tap's weight is a constant displacement from its input row's, and packed strides are
/// constants.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn correlate_blocks<V: F32x, const TAPS: usize, const FLIP: bool, const PACKED: bool>(
    out: *mut f32,
    ib: *const f32,
    ild: usize,
    w: Weights<'_>,
    o_n: usize,
    i_n: usize,
    offs: &[isize; TAPS],
    sp: Span,
    a: usize,
    b: usize,
) {
    let r6 = rows6(o_n);
    if r6 > 0 {
        correlate_part::<V, TAPS, OB6, FLIP, PACKED>(out, ib, ild, w, r6, i_n, offs, sp, a, b);
    }
    if r6 < o_n {
        let rest = out.add(r6 * sp.ld);
        let w = w.from_row(r6);
        let o_n = o_n - r6;
        correlate_part::<V, TAPS, OB, FLIP, PACKED>(rest, ib, ild, w, o_n, i_n, offs, sp, a, b);
    }
}

/// [`correlate_rows`] on `o_n` rows (a multiple of `R`) in register blocks of `R` rows.
///
/// Loop order: position block (2 vectors), then a group of input channels, then output
/// blocks. The group's input lines (IB channels × 3 rows × 2–3 lines ≈ 9 KiB with 9 taps)
/// stay in L1 while every output block reuses them; partial sums go through `out` between
/// groups (exact in f32, so the order of additions per output is still i ascending, t
/// ascending). With the output-block loop outermost instead, 128 input channels × 3 rows
/// were 384 concurrent streams per block and densenet121 b16 inference spent 44% of its
/// time here (`perf record`).
///
/// Blocks of 6 rows × 2 vectors keep 12 accumulators: with 8 (4 rows), each accumulator
/// takes an FMA every tap and 8 chains exactly cover 2 FMA pipes × 4 cycles of latency,
/// so any load hiccup stalls; 12 leave slack (2 loads + 6 broadcasts per 12 FMAs; 15 of
/// AVX2's 16 registers). For 1×1, one thread, best of 8 interleaved runs, AVX2: o48·i216
/// over 65536 positions 52–55 GFLOP/s against 47–52 with 4 rows; o48·i96 46–48 against
/// 40–42.
///
/// The positions that do not fill 2 vectors are done a vector at a time, then in scalar
/// code (same summation order), unless the span may run over.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn correlate_part<
    V: F32x,
    const TAPS: usize,
    const R: usize,
    const FLIP: bool,
    const PACKED: bool,
>(
    out: *mut f32,
    ib: *const f32,
    ild: usize,
    w: Weights<'_>,
    o_n: usize,
    i_n: usize,
    offs: &[isize; TAPS],
    sp: Span,
    a: usize,
    b: usize,
) {
    debug_assert!(o_n.is_multiple_of(R) && w.covers(o_n, i_n, TAPS));
    // tap t of a channel's weights lies at displacement `tap(t)` from its first
    let tap = |t: usize| if FLIP { TAPS - 1 - t } else { t };
    debug_assert_eq!(w.layout == WeightLayout::Packed, PACKED);
    // strides inside a register block (constants when packed)
    let wl = if PACKED {
        WLayout { row: 1, chan: R }
    } else {
        WLayout {
            row: w.row,
            chan: w.chan,
        }
    };
    let l = V::LANES;
    // With one tap a group of IB channels is only 16 FMAs per accumulator round trip
    // through `out`; 1×1 inputs are packed (contiguous, L1-friendly), so take more.
    let group = if TAPS == 1 { 8 * IB } else { IB };
    // whole 2-vector blocks to `full2`, then single vectors to `full1`, then scalar; when
    // the rows have room past `b` (`overrun`), blocks run past it, a last vector's worth
    // or less in a single-vector block (Winograd's last task of 4 tiles took a whole
    // 2-vector block: `bench infer --ab` at batch 1, Zen 4, 0.977–0.988 of a pass)
    let full2 = if sp.overrun {
        b
    } else {
        a + (b - a) / (2 * l) * (2 * l)
    };
    let full1 = full2 + b.saturating_sub(full2) / l * l;
    let mut q = a;
    while q < full1 {
        let two = q + 2 * l <= full2 || (sp.overrun && q + l < b);
        for i0 in (0..i_n).step_by(group) {
            let i1 = (i0 + group).min(i_n);
            for ob in 0..o_n / R {
                let wb = w.w.as_ptr().add(ob * R * w.row);
                let op = out.add(ob * R * sp.ld + sp.base + q);
                let ip = ib.wrapping_add(q);
                if two {
                    block::<V, TAPS, R, 2, FLIP>(op, sp.ld, ip, ild, wb, wl, i0, i1, offs);
                } else {
                    block::<V, TAPS, R, 1, FLIP>(op, sp.ld, ip, ild, wb, wl, i0, i1, offs);
                }
            }
        }
        q += if two { 2 * l } else { l };
    }
    // scalar tail, same summation order per position (i outer, t inner, fused)
    for o in 0..o_n {
        let wb = w.w.as_ptr().add(o / R * R * w.row + o % R * wl.row);
        for q in full1..b.max(full1) {
            let mut acc = 0f32;
            for i in 0..i_n {
                let ip = ib.wrapping_add(i * ild + q);
                for (t, &off) in offs.iter().enumerate() {
                    acc = (*wb.add(i * wl.chan + tap(t))).mul_add(*ip.offset(off), acc);
                }
            }
            *out.add(o * sp.ld + sp.base + q) = acc;
        }
    }
}

/// Strides of [`Weights`], without the slice (the register block takes a raw pointer).
#[derive(Clone, Copy)]
struct WLayout {
    row: usize,
    chan: usize,
}

/// One register block: `R` output rows × `NV` vectors of positions starting at `op`
/// (rows `ld` apart), over input channels `i0..i1` (row i at `ip + i·ild`, weights of row
/// r, channel i at `wb + r·wl.row + i·wl.chan`). The first group (`i0 == 0`) starts from
/// zero, later ones from the partial sums in `out`. The accumulators are an array that
/// LLVM keeps in registers (checked in the AVX2 objdump: no stack traffic in the tap loop).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block<V: F32x, const TAPS: usize, const R: usize, const NV: usize, const FLIP: bool>(
    op: *mut f32,
    ld: usize,
    ip: *const f32,
    ild: usize,
    wb: *const f32,
    wl: WLayout,
    i0: usize,
    i1: usize,
    offs: &[isize; TAPS],
) {
    let l = V::LANES;
    let mut c = [[V::zero(); NV]; R];
    if i0 > 0 {
        for (r, c) in c.iter_mut().enumerate() {
            for (v, c) in c.iter_mut().enumerate() {
                *c = V::load(op.add(r * ld + v * l));
            }
        }
    }
    // With one tap, two channels per trip: the body is only 12 FMAs, and the loop's own
    // counting (5 integer ops) crowded the FMAs' issue slots (LLVM did not unroll the
    // generic loop as it had the hand-written one). Nine taps are body enough.
    let mut i = i0;
    while TAPS == 1 && i + 2 <= i1 {
        for j in [i, i + 1] {
            let wi = wb.add(j * wl.chan);
            channel::<V, TAPS, R, NV, FLIP>(&mut c, ip.wrapping_add(j * ild), wi, wl.row, offs);
        }
        i += 2;
    }
    while i < i1 {
        let wi = wb.add(i * wl.chan);
        channel::<V, TAPS, R, NV, FLIP>(&mut c, ip.wrapping_add(i * ild), wi, wl.row, offs);
        i += 1;
    }
    for (r, c) in c.iter().enumerate() {
        for (v, c) in c.iter().enumerate() {
            c.store(op.add(r * ld + v * l));
        }
    }
}

/// One input channel's taps into a register block's accumulators: input row at `ip`,
/// the weight of row r and tap t at `wi + r·row + t` (`T−1−t` with `FLIP`). (A function,
/// not a closure: a closure here was not always inlined, and outside a
/// `#[target_feature]` function its intrinsics were calls.)
#[inline(always)]
unsafe fn channel<V: F32x, const TAPS: usize, const R: usize, const NV: usize, const FLIP: bool>(
    c: &mut [[V; NV]; R],
    ip: *const f32,
    wi: *const f32,
    row: usize,
    offs: &[isize; TAPS],
) {
    let l = V::LANES;
    for (t, &off) in offs.iter().enumerate() {
        let x = ip.offset(off);
        let w = wi.add(if FLIP { TAPS - 1 - t } else { t });
        let mut xv = [V::zero(); NV];
        for (v, xv) in xv.iter_mut().enumerate() {
            *xv = V::load(x.add(v * l));
        }
        for (r, c) in c.iter_mut().enumerate() {
            let wv = V::splat(w.add(r * row));
            for (c, &xv) in c.iter_mut().zip(&xv) {
                *c = wv.mul_add(xv, *c);
            }
        }
        // Keeps the next tap's loads below this one's FMAs: with weights read in place
        // LLVM hoisted the broadcasts of all 9 taps, ran out of the 16 ymm registers
        // and spilled accumulators (3×3 forward 50% slower); an empty asm block is a
        // memory clobber that loads cannot be moved across. One tap has no next tap.
        #[cfg(target_arch = "x86_64")]
        if TAPS > 1 {
            std::arch::asm!("", options(nostack, preserves_flags));
        }
    }
}

simd_entries!(correlate_rows<const TAPS: usize> => correlate_avx2, correlate_avx512 (
    out: *mut f32,
    ib: *const f32,
    ild: usize,
    w: Weights<'_>,
    o_n: usize,
    i_n: usize,
    offs: &[isize],
    sp: Span,
    a: usize,
    b: usize,
));

#[cfg(test)]
mod tests {
    use super::*;

    /// The parts of a row split cover every row once, and each run is rows that one
    /// kernel call blocks as it would within all `o_n` rows.
    #[test]
    fn row_parts_follow_the_register_blocks() {
        for o_n in (4..=130).filter(|n| n % 4 == 0 || n % 6 == 0) {
            let r6 = rows6(o_n);
            for parts in 1..=5 {
                let mut next = 0;
                for k in 0..parts {
                    let (r0, r1) = part_rows(o_n, parts, k);
                    assert_eq!(r0, next, "o_n {o_n} parts {parts}: gap before part {k}");
                    assert!(r0 <= r1);
                    next = r1;
                    for_row_runs(o_n, r0, r1, |a, b| {
                        let len = b - a;
                        if a < r6 {
                            assert!(b <= r6 && len % OB6 == 0 && rows6(len) == len);
                        } else {
                            assert!(len % OB == 0 && rows6(len) == 0, "o_n {o_n}: {a}..{b}");
                        }
                    });
                }
                assert_eq!(next, o_n, "o_n {o_n} parts {parts}: rows left over");
            }
        }
    }

    /// Cuts at multiples of 4 cover every row once, and two parts of 32 rows are even.
    #[test]
    fn row_parts_of_four_cover_the_rows() {
        for o_n in (4..=132).step_by(4) {
            for parts in 1..=5 {
                let mut next = 0;
                for k in 0..parts {
                    let (r0, r1) = part_rows4(o_n, parts, k);
                    assert_eq!(r0, next, "o_n {o_n} parts {parts}: gap before part {k}");
                    assert!(r0 <= r1 && r1.is_multiple_of(OB), "o_n {o_n}: {r0}..{r1}");
                    // no part more than a block of 4 above an even share
                    assert!(r1 - r0 <= o_n.div_ceil(parts) + OB, "o_n {o_n}: {r0}..{r1}");
                    next = r1;
                }
                assert_eq!(next, o_n, "o_n {o_n} parts {parts}: rows left over");
            }
        }
        assert_eq!(part_rows4(32, 2, 0), (0, 16));
        assert_eq!(part_rows(32, 2, 0), (0, 18));
    }

    /// Balanced tiles stay multiples of the block and no longer than asked, and no thread
    /// takes more than its share plus a block per tile: the busiest of `threads` threads
    /// taking whole tiles in turn.
    #[test]
    fn balanced_tiles_even_out_the_threads() {
        for block in [16usize, 32] {
            for threads in 1..=4 {
                for tile in [block, 4 * block, 96, 256, 4096] {
                    let tile = tile.next_multiple_of(block);
                    for len in [1, 15, 49, 100, 196, 784, 785, 3136, 12544, 50176, 65536] {
                        let t = balanced_tile(len, tile, block, threads);
                        assert!(
                            t.is_multiple_of(block) && t >= block && t <= tile,
                            "{len} {tile} {t}"
                        );
                        if len.div_ceil(tile) < threads.max(2) {
                            assert_eq!(t, tile);
                            continue;
                        }
                        // the busiest thread's blocks, counted tile by tile as the threads
                        // take them (tile j on thread j % threads)
                        let at = |t: usize| {
                            let mut load = vec![0; threads];
                            for (j, a) in (0..len).step_by(t).enumerate() {
                                load[j % threads] += (len.min(a + t) - a).div_ceil(block);
                            }
                            load.into_iter().max().unwrap()
                        };
                        let busiest = at(t);
                        // no worse than the longest tile, and within 3% of an even share
                        // of the blocks (rounded up), which tiles of one block would reach
                        let even = len.div_ceil(block).div_ceil(threads);
                        assert!(busiest <= at(tile), "len {len} tile {tile}: {t}");
                        assert!(
                            busiest * 100 <= even * 103,
                            "len {len} tile {tile} threads {threads}: {t}, {busiest} blocks"
                        );
                        // and no longer tile is as even
                        let longer = (t + block..=tile).step_by(block);
                        assert!(
                            longer.clone().all(|u| at(u) * 100 > even * 103),
                            "{len} {tile}: {t}"
                        );
                    }
                }
            }
        }
    }
}
