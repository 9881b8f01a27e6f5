//! The bf16 routes' one shape of work (`--precision bf16`, [`super::route::Precision`]):
//! `Y = W·A` where A is formed a tile of positions at a time, already as bf16 channel
//! pairs, in a per-thread buffer, and multiplied by W's pairs on the bf16 kernel
//! ([`crate::kernels::bf16`]). The fused BN-ReLU → 1×1 forms A from a stored input
//! ([`super::fused::forward`]); the im2col 3×3 from the rows of im2col
//! ([`super::conv::conv_forward`]).

use crate::kernels::correlate::balanced_tile;
use crate::kernels::{bf16, prepack};
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
    thread_local! {
        static PAIRS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    assert!(y.len() >= o_n * len && w.len() >= o_n * i_n);
    let products = bf16::Products::active();
    let words = || {
        let mut v = vec![0u32; products.weight_len(o_n, i_n)];
        products.pack_weights(&mut v, w, o_n, i_n);
        v
    };
    let layout = prepack::Layout::Bf16(products);
    let frozen = prepack::packed(layout, w, products.weight_len(o_n, i_n), |v| {
        for (d, s) in v.iter_mut().zip(words()) {
            *d = f32::from_bits(s);
        }
    });
    let own: Vec<u32>;
    let wp: &[u32] = match &frozen {
        // SAFETY: u32 and f32 have one size and alignment; the packing holds the words'
        // bits
        Some(p) => unsafe { std::slice::from_raw_parts(p.as_ptr() as *const u32, p.len()) },
        None => {
            own = words();
            &own
        }
    };
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
    let yp = SyncPtr(y.as_mut_ptr());
    let work = |task: usize| {
        let (t, part) = (task / row_parts, task % row_parts);
        let (a, b) = (t * tile, ((t + 1) * tile).min(len));
        let (r0, r1) = (
            (part * blocks / row_parts * unit).min(o_n),
            ((part + 1) * blocks / row_parts * unit).min(o_n),
        );
        let ld = products.tile_ld(b - a);
        with_scratch(&PAIRS, rows * ld, |a2| {
            fill(a2, ld, a, b);
            products.pad_tile(a2, ld, i_n, b - a);
            // SAFETY: rows r0..r1, columns a..b of y (o_n rows of len, asserted above)
            // are this task's only; a2 is a padded tile of b − a positions
            unsafe { products.product(yp.get().add(a), len, wp, a2, ld, (r0, r1), i_n, b - a) }
        })
    };
    let tasks = tiles * row_parts;
    if tasks > 1 && big {
        (0..tasks).into_par_iter().team_for_each(work);
    } else {
        (0..tasks).for_each(work);
    }
}
