//! The split layout: the (BN-ReLU'd) input scattered into r column phases of padded
//! rows, so that a tile's rows are read contiguously ([`split`], [`segments`]).

use super::*;

/// The split, padded layout of a chunk of `ns` samples (see the module notes).
#[derive(Clone, Copy, Debug)]
pub(super) struct Split {
    /// Outputs per tile side: 2 for F(2×2, 3×3), 4 for F(4×4, 3×3).
    pub(super) r: usize,
    /// Tile rows and columns per sample.
    pub(super) th: usize,
    pub(super) tw: usize,
    /// Entries per phase of a padded row (its columns `c` with `c mod r` alike): `tw + 1`.
    pub(super) ew: usize,
    /// Floats per sample and channel: `(r·th + 2)` padded rows of `r·ew`.
    pub(super) plane: usize,
}

impl Split {
    pub(super) fn new(s: &ConvShape, r: usize) -> Self {
        let (th, tw) = (s.h.div_ceil(r), s.w.div_ceil(r));
        let ew = tw + 1;
        Split {
            r,
            th,
            tw,
            ew,
            plane: (r * th + 2) * r * ew,
        }
    }
    /// Floats per channel of a chunk of `ns` samples (the last vector of a row may read
    /// [`PB`] floats past the end).
    pub(super) fn chan(&self, ns: usize) -> usize {
        ns * self.plane + PB
    }
}

/// Floats of `col` scratch that [`forward`] needs to take `samples` samples at a time
/// (the split layout of that many, [`Split::chan`] per input channel), in tiles of
/// either size.
pub fn scratch_len(s: &ConvShape, samples: usize) -> usize {
    let chan = |r| Split::new(s, r).chan(samples);
    s.cin * chan(2).max(chan(4))
}

/// The tiles `tx0..tx1` of tile row `ty` of a sample, as one task sees them: padded row
/// `r·ty` starts at `src` (offset into the split layout), and the tiles are entries
/// `k..k + (tx1 − tx0)` of the task's `V` and `M` rows.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    /// Outputs per tile side ([`Split::r`]).
    pub(super) r: usize,
    /// Offset of padded row `r·ty` in a channel of the split layout.
    pub(super) src: usize,
    /// First tile column and one past the last.
    pub(super) tx0: usize,
    pub(super) tx1: usize,
    /// Entry of the first tile in the task's rows.
    pub(super) k: usize,
    /// Distance between the phases of a padded row (`ew`) and between padded rows (`r·ew`).
    pub(super) ew: usize,
    /// Offset of output row `r·ty` of this sample in an output channel row, and the
    /// output rows and columns that exist (`h − r·ty`, capped at r; `w`).
    pub(super) dst: usize,
    pub(super) rows: usize,
    pub(super) w: usize,
}

/// The tile rows of tiles `k0..k1` of a chunk that starts at sample `n0`, each cut to
/// the tiles in that range (tile k is column `k % tw` of row `k / tw`, row r being tile
/// row `r % th` of sample `r / th` of the chunk).
pub(super) fn segments(
    sp: &Split,
    s: &ConvShape,
    n0: usize,
    k0: usize,
    k1: usize,
) -> impl Iterator<Item = Segment> {
    let (sp, (h, w)) = (*sp, (s.h, s.w));
    let mut k = k0;
    std::iter::from_fn(move || {
        if k >= k1 {
            return None;
        }
        let (row, tx0) = (k / sp.tw, k % sp.tw);
        let tx1 = sp.tw.min(tx0 + (k1 - k));
        let (j, ty) = (row / sp.th, row % sp.th);
        let r = sp.r;
        let g = Segment {
            r,
            src: j * sp.plane + r * ty * r * sp.ew,
            tx0,
            tx1,
            k: k - k0,
            ew: sp.ew,
            dst: (n0 + j) * h * w + r * ty * w,
            rows: (h - r * ty).min(r),
            w,
        };
        k += tx1 - tx0;
        Some(g)
    })
}

/// Copies samples `n0..n1` of `x: [C][N·H·W]` (through `bn` if given) into the split
/// layout `sp` in `buf`: per channel and sample, `r·th + 2` padded rows (row 0 and those
/// past the image are zero), each as its `r` phases one after the other (F(2×2): its even
/// padded columns, then its odd ones).
pub(super) fn split(
    buf: &mut [f32],
    x: &[f32],
    bn: Option<BnRelu>,
    s: &ConvShape,
    sp: Split,
    n0: usize,
    n1: usize,
) {
    let (h, w) = (s.h, s.w);
    let chan = sp.chan(n1 - n0);
    let len = s.n * h * w;
    let it = buf[..s.cin * chan].par_chunks_mut(chan).enumerate();
    // floats per padded row (its r phases)
    let pw = sp.r * sp.ew;
    per_channel(it, s.cin * chan, |(c, dst): (usize, &mut [f32])| {
        // BN-ReLU as `v·scale + shift` then the ReLU, as `norm::affine_relu`; none: v
        let affine = bn.map(|b| (b.scale[c], b.shift[c]));
        let (planes, slack) = dst.split_at_mut((n1 - n0) * sp.plane);
        for (j, plane) in planes.chunks_exact_mut(sp.plane).enumerate() {
            let img = &x[c * len + (n0 + j) * h * w..][..h * w];
            // padded row 0 and those past the image are zero; the others are written
            // whole, their zeros included
            plane[..pw].fill(0.0);
            plane[(h + 1) * pw..].fill(0.0);
            for (iy, row) in img.chunks_exact(w).enumerate() {
                // padded row iy + 1; padded column c' is image column c' − 1
                split_row(&mut plane[(iy + 1) * pw..][..pw], sp, row, affine);
            }
        }
        slack.fill(0.0);
    });
}

/// One image row into its padded row's phases (`sp.r` of them, `sp.ew` entries each),
/// every entry written (those left of or past the image zero): image column `x` is padded
/// column `x + 1`, entry `(x + 1) / r` of phase `(x + 1) mod r`. On x86-64, four groups of
/// `r` columns at a time are mapped and transposed in SSE registers (baseline: no target
/// feature needed) into four entries of each phase. Written one float at a time into a
/// plane zeroed first, a split of densenet121's 128 bottleneck channels at batch 16 took
/// 2.67 ms at 56×56 (F(4×4)) and 0.72 ms at 28×28 (F(2×2)); this way 1.65 and 0.55 ms
/// (Zen 4, 2 threads, medians of 10 alternating runs; 14×14 even).
pub(super) fn split_row(padded: &mut [f32], sp: Split, row: &[f32], affine: Option<(f32, f32)>) {
    let (r, ew, w) = (sp.r, sp.ew, row.len());
    let f = |v: f32| match affine {
        Some((s, t)) => (v * s + t).max(0.0),
        None => v,
    };
    // whole groups of r columns, then the rest (fewer than r)
    let groups = w / r;
    assert!(padded.len() == r * ew && groups < ew);
    let rest = &row[groups * r..];
    let (head, tail) = padded.split_at_mut(ew);
    if r == 4 {
        let (p0, p1) = (head, tail);
        let (p1, p2) = p1.split_at_mut(ew);
        let (p2, p3) = p2.split_at_mut(ew);
        // columns 4k … 4k + 3 are padded 4k + 1 … 4k + 4: phases 1, 2, 3 at k, phase 0 at
        // k + 1
        let mut k = 0;
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::*;
            let g = sse_affine(affine);
            while k + 4 <= groups {
                // SAFETY: columns 4k … 4k + 15 lie in `row` (k + 4 ≤ w / 4), entries
                // k … k + 3 of p1..p3 and k + 1 … k + 4 of p0 in the phases (k + 4 ≤
                // groups < ew); SSE is part of x86-64.
                unsafe {
                    let q = row.as_ptr().add(4 * k);
                    let (a, b) = (g(_mm_loadu_ps(q)), g(_mm_loadu_ps(q.add(4))));
                    let (c, d) = (g(_mm_loadu_ps(q.add(8))), g(_mm_loadu_ps(q.add(12))));
                    // the 4×4 transpose: lane j of phase vector f is column 4(k + j) + f
                    let (ab0, ab1) = (_mm_unpacklo_ps(a, b), _mm_unpackhi_ps(a, b));
                    let (cd0, cd1) = (_mm_unpacklo_ps(c, d), _mm_unpackhi_ps(c, d));
                    _mm_storeu_ps(p1.as_mut_ptr().add(k), _mm_movelh_ps(ab0, cd0));
                    _mm_storeu_ps(p2.as_mut_ptr().add(k), _mm_movehl_ps(cd0, ab0));
                    _mm_storeu_ps(p3.as_mut_ptr().add(k), _mm_movelh_ps(ab1, cd1));
                    _mm_storeu_ps(p0.as_mut_ptr().add(k + 1), _mm_movehl_ps(cd1, ab1));
                }
                k += 4;
            }
        }
        for (k, q) in row.chunks_exact(4).enumerate().skip(k) {
            p1[k] = f(q[0]);
            p2[k] = f(q[1]);
            p3[k] = f(q[2]);
            p0[k + 1] = f(q[3]);
        }
        p0[0] = 0.0;
        p0[groups + 1..].fill(0.0);
        for (phase, p) in [p1, p2, p3].into_iter().enumerate() {
            let end = match rest.get(phase) {
                Some(&v) => {
                    p[groups] = f(v);
                    groups + 1
                }
                None => groups,
            };
            p[end..].fill(0.0);
        }
        return;
    }
    // F(2×2): columns 2k, 2k + 1 are padded 2k + 1 (odd, entry k) and 2k + 2 (even, k + 1)
    let (even, odd) = (head, tail);
    let mut k = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        let g = sse_affine(affine);
        while k + 4 <= groups {
            // SAFETY: columns 2k … 2k + 7 lie in `row` (k + 4 ≤ w / 2), entries k … k + 3
            // of odd and k + 1 … k + 4 of even in the phases (k + 4 ≤ groups < ew); SSE is
            // part of x86-64.
            unsafe {
                let q = row.as_ptr().add(2 * k);
                let (a, b) = (g(_mm_loadu_ps(q)), g(_mm_loadu_ps(q.add(4))));
                let o = _mm_shuffle_ps::<0b10_00_10_00>(a, b);
                let e = _mm_shuffle_ps::<0b11_01_11_01>(a, b);
                _mm_storeu_ps(odd.as_mut_ptr().add(k), o);
                _mm_storeu_ps(even.as_mut_ptr().add(k + 1), e);
            }
            k += 4;
        }
    }
    for (k, q) in row.chunks_exact(2).enumerate().skip(k) {
        odd[k] = f(q[0]);
        even[k + 1] = f(q[1]);
    }
    even[0] = 0.0;
    even[groups + 1..].fill(0.0);
    let end = match rest.first() {
        Some(&v) => {
            odd[groups] = f(v);
            groups + 1
        }
        None => groups,
    };
    odd[end..].fill(0.0);
}

/// [`split_row`]'s map of four floats: `max(v·scale + shift, 0)` (a multiply, then an
/// add: the same rounding as the scalar map and `norm::affine_relu`), or `v`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn sse_affine(
    affine: Option<(f32, f32)>,
) -> impl Fn(std::arch::x86_64::__m128) -> std::arch::x86_64::__m128 {
    use std::arch::x86_64::*;
    // SAFETY: SSE is part of x86-64
    let (s, t) = unsafe {
        match affine {
            Some((s, t)) => (_mm_set1_ps(s), _mm_set1_ps(t)),
            None => (_mm_setzero_ps(), _mm_setzero_ps()),
        }
    };
    let on = affine.is_some();
    // SAFETY: SSE is part of x86-64
    move |v| unsafe {
        if on {
            _mm_max_ps(_mm_add_ps(_mm_mul_ps(v, s), t), _mm_setzero_ps())
        } else {
            v
        }
    }
}
