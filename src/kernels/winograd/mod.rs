//! The 3×3 forward, and its input gradient (the same convolution of the output gradient
//! with the weights transposed and rotated, [`backward_data`]), as Winograd F(r×r, 3×3)
//! (Lavin and Gray, 2016), r = 2 or 4: each r×r block of outputs ("tile") comes from the
//! (r+2)×(r+2) window of input around it as `Y = Aᵀ·[Σ_i U_i ⊙ V_i]·A`, with `U = G·g·Gᵀ`
//! (the 3×3 kernel g transformed once per call) and `V = Bᵀ·d·B` (the window d
//! transformed once per input channel and tile). The sum over input channels is, for
//! each of the (r+2)² elements ξ of a transform, a 1×1 convolution over the tiles,
//! `M_ξ = U_ξ·V_ξ` (`[Cout][Cin]·[Cin][tiles]`), which the one-tap register kernel
//! (`correlate1`) computes. Per output, input and output channel that is 4 multiply-adds
//! with F(2×2) (16 per 4 outputs) and 2.25 with F(4×4) (36 per 16), where the direct
//! kernel does 9; [`tile`] picks r. Where it picks 4, the weight gradient takes F(4×4)
//! too ([`backward_weights`]: the same `V`, the output gradient transformed by
//! [`grad_rows`], and per ξ an outer product over the tiles).
//!
//! Layout: the BN-ReLU of the input is first copied, zero-padded, with each padded row's
//! columns split by their remainder mod r into r phases ([`split`]); then tile `tx` of a
//! row reads padded columns `r·tx … r·tx + r + 1` as entries `tx` (and `tx + 1`) of the
//! phases, and `LANES` neighbouring tiles are plain vector loads. Tiles are taken [`T`]
//! at a time per task; their `V` ((r+2)² × Cin × T) and `M` ((r+2)² × Cout × T) stay in
//! L2 (densenet121's 128 → 32 at F(4×4): 576 and 144 KiB).
//!
//! Numerics: F(2×2)'s coefficients are 0, ±1 and ½, exact in f32; F(4×4)'s include ⅙
//! and 1/24, which round, and its input transform multiplies by 4 and 5, so its error
//! grows with the inputs' spread. Both order the sums differently from the direct
//! kernel, and results agree to rounding: the tests compare both with im2col + GEMM at
//! the tolerance of the other fast paths; torchvision's densenet121 logits match
//! PyTorch's to 8.1e-6 (7e-6 with F(2×2) alone).

use super::conv1x1::pointwise_tile;
use super::correlate::{pack_into, Weights, PB};
use super::simd::{simd_entries, F32x};
use super::{active, prepack, BnRelu, ConvShape};
use crate::util::par::{per_channel, with_scratch, SyncPtr};
use rayon::prelude::*;
use std::sync::atomic::{AtomicU8, Ordering};

mod weights;
pub use weights::{backward_weights, weights_apply};

/// Tiles per task: a multiple of every table's register block (16 and 32 positions).
const T: usize = 32;

/// Signature of [`input_avx2`] and [`input_avx512`].
pub type InputFn = unsafe fn(*mut f32, usize, *const f32, &Segment);
/// Signature of [`output_avx2`] and [`output_avx512`].
pub type OutputFn = unsafe fn(*mut f32, *const f32, usize, &Segment);

/// Whether [`forward`] takes this convolution on this CPU: a 3×3, stride 1, padding 1
/// convolution, whose output count the one-tap kernel takes (which also needs the table's
/// direct kernels).
pub fn applies(s: &ConvShape) -> bool {
    s.k == 3 && s.stride == 1 && s.pad == 1 && super::conv1x1::pointwise_applies(s.cout)
}

/// A `DENSENET_WINOGRAD` value that is neither on nor off.
#[derive(Debug, thiserror::Error)]
#[error("DENSENET_WINOGRAD={0}: expected on or off (or 1, 0, true, false)")]
pub struct WinogradEnvError(String);

/// Whether a `DENSENET_WINOGRAD` value turns the route on (`None` or empty: on).
pub fn parse_env(value: Option<&str>) -> Result<bool, WinogradEnvError> {
    match value.map(str::trim) {
        None | Some("") | Some("on") | Some("1") | Some("true") => Ok(true),
        Some("off") | Some("0") | Some("false") => Ok(false),
        Some(other) => Err(WinogradEnvError(other.to_string())),
    }
}

/// [`parse_env`] of the environment's `DENSENET_WINOGRAD`.
pub fn from_env() -> Result<bool, WinogradEnvError> {
    parse_env(std::env::var("DENSENET_WINOGRAD").ok().as_deref())
}

/// 0: not yet decided; 1: off; 2: on.
static ENABLED: AtomicU8 = AtomicU8::new(0);

/// Turns the route on or off for the whole process (the command line does, from
/// `DENSENET_WINOGRAD`, before any work).
pub fn set_enabled(on: bool) {
    ENABLED.store(if on { 2 } else { 1 }, Ordering::Release);
}

/// Whether the route may be taken: `DENSENET_WINOGRAD=off` sends every 3×3 through the
/// direct kernel (another summation order: to compare results or times with it). Read
/// once; an unusable value leaves it on with a warning.
pub fn enabled() -> bool {
    match ENABLED.load(Ordering::Acquire) {
        0 => {
            let on = from_env().unwrap_or_else(|e| {
                eprintln!("warning: {e}; Winograd stays on");
                true
            });
            let _ = ENABLED.compare_exchange(
                0,
                if on { 2 } else { 1 },
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            ENABLED.load(Ordering::Acquire) == 2
        }
        v => v == 2,
    }
}

/// Whether [`forward`] is the faster route for this convolution (where it [`applies`]).
/// Measured in-process against the direct kernel (`cargo bench --bench shapes --
/// winograd`, Zen 3, 2 threads, several runs on a busy machine): densenet121's 128 → 32
/// forward took 0.66–0.95 of the direct time at batch 16 (every block) and 0.64–0.83 at
/// batch 1 on 56×56 and 28×28 (28×28 1.05–1.12 in the busiest hour); at batch 1 on 14×14
/// (49 tiles: two tasks) 1.14–1.56, on 7×7 1.9–3. With 12 outputs (BC-100) it was about
/// even (0.87–1.26), and the CIFAR stem (3 inputs) 1.3–2.8: the transforms are then as
/// much work as the products. So: at least 64 inputs, 32 outputs and two tasks of [`T`]
/// tiles per thread, and the route [`enabled`].
pub fn preferred(s: &ConvShape) -> bool {
    let tiles = s.n * s.h.div_ceil(2) * s.w.div_ceil(2);
    s.cin >= 64 && s.cout >= 32 && tiles >= 2 * T * rayon::current_num_threads() && enabled()
}

/// Outputs per tile side for this convolution: 4 (F(4×4, 3×3)) where its tiles of 4×4
/// still make two tasks of [`T`] per thread and cover at most 9/8 of the image, else 2.
///
/// F(4×4) does 36 multiply-adds per 16 outputs, input and output channel, where F(2×2)
/// does 64 (16 per 4 outputs); its transforms cost more per tile but about the same per
/// output. Measured with `bench … --ab` (Zen 4, 2 threads, F(4×4) against F(2×2) where
/// this rule takes it): densenet121 training step at batch 16 0.966 (`avx512`) and 0.938
/// (`avx2`), evaluation 0.916 at batch 16 and 0.964 at batch 1. By shape (`bench train
/// --profile`, batch 16): the 3×3 at 56×56 and 28×28 13–19% faster forward and backward;
/// at 14×14, whose 4×4 tiles cover 16×16 (1.31 of the image), even or slower, hence the
/// 9/8 bound.
pub fn tile(s: &ConvShape) -> usize {
    let (th, tw) = (s.h.div_ceil(4), s.w.div_ceil(4));
    let enough = s.n * th * tw >= 2 * T * rayon::current_num_threads();
    let covered = 16 * th * tw;
    if enough && 8 * covered <= 9 * s.h * s.w {
        4
    } else {
        2
    }
}

/// A transform `f` ([`InputFn`]: `V` or `M'`) of every channel `c < channels` over the
/// segments `segs` of one task: channel c read from `src + c·src_ld`, its rows written at
/// `dst + c·T`, `ld` apart per ξ.
///
/// # Safety
/// As `f` for each channel and segment.
unsafe fn each_channel<I: Iterator<Item = Segment>>(
    f: InputFn,
    dst: *mut f32,
    ld: usize,
    src: *const f32,
    src_ld: usize,
    channels: usize,
    segs: impl Fn() -> I,
) {
    for c in 0..channels {
        for g in segs() {
            f(dst.add(c * T), ld, src.add(c * src_ld), &g);
        }
    }
}

/// The split, padded layout of a chunk of `ns` samples (see the module notes).
#[derive(Clone, Copy, Debug)]
struct Split {
    /// Outputs per tile side: 2 for F(2×2, 3×3), 4 for F(4×4, 3×3).
    r: usize,
    /// Tile rows and columns per sample.
    th: usize,
    tw: usize,
    /// Entries per phase of a padded row (its columns `c` with `c mod r` alike): `tw + 1`.
    ew: usize,
    /// Floats per sample and channel: `(r·th + 2)` padded rows of `r·ew`.
    plane: usize,
}

impl Split {
    fn new(s: &ConvShape, r: usize) -> Self {
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
    fn chan(&self, ns: usize) -> usize {
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
    r: usize,
    /// Offset of padded row `r·ty` in a channel of the split layout.
    src: usize,
    /// First tile column and one past the last.
    tx0: usize,
    tx1: usize,
    /// Entry of the first tile in the task's rows.
    k: usize,
    /// Distance between the phases of a padded row (`ew`) and between padded rows (`r·ew`).
    ew: usize,
    /// Offset of output row `r·ty` of this sample in an output channel row, and the
    /// output rows and columns that exist (`h − r·ty`, capped at r; `w`).
    dst: usize,
    rows: usize,
    w: usize,
}

/// The tile rows of tiles `k0..k1` of a chunk that starts at sample `n0`, each cut to
/// the tiles in that range (tile k is column `k % tw` of row `k / tw`, row r being tile
/// row `r % th` of sample `r / th` of the chunk).
fn segments(
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
fn split(
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
fn split_row(padded: &mut [f32], sp: Split, row: &[f32], affine: Option<(f32, f32)>) {
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
fn sse_affine(
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

/// `V = Bᵀ·d·B` for the tiles of segment `g` of one input channel: the channel's split
/// layout at `src`, the `(r + 2)²` rows `ξ` of `V` at `v + ξ·vs` (entries `g.k..`).
///
/// # Safety
/// The split layout must hold `LANES` floats past every tile row read (its [`PB`] slack);
/// `v`'s rows must hold `LANES` entries past the segment's last (junk lanes land there or
/// on entries written later). The CPU must run `V`.
#[inline(always)]
unsafe fn input_rows<V: F32x>(v: *mut f32, vs: usize, src: *const f32, g: &Segment) {
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
unsafe fn input_rows2<V: F32x>(v: *mut f32, vs: usize, src: *const f32, g: &Segment) {
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
unsafe fn bt6<V: F32x>(d: [V; 6]) -> [V; 6] {
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
unsafe fn input_rows4<V: F32x>(v: *mut f32, vs: usize, src: *const f32, g: &Segment) {
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
unsafe fn output_rows<V: F32x>(y: *mut f32, m: *const f32, ms: usize, g: &Segment) {
    if g.r == 4 {
        output_rows4::<V>(y, m, ms, g)
    } else {
        output_rows2::<V>(y, m, ms, g)
    }
}

/// [`output_rows`] of F(2×2, 3×3): `Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]`.
#[inline(always)]
unsafe fn output_rows2<V: F32x>(y: *mut f32, m: *const f32, ms: usize, g: &Segment) {
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
unsafe fn at6<V: F32x>(m: [V; 6]) -> [V; 4] {
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
unsafe fn output_rows4<V: F32x>(y: *mut f32, m: *const f32, ms: usize, g: &Segment) {
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
fn g4(a: f32, b: f32, c: f32) -> [f32; 6] {
    [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c, 0.0, 0.0]
}

/// `G·(a, b, c)` of F(4×4, 3×3), `G = [[¼, 0, 0], [−⅙, −⅙, −⅙], [−⅙, ⅙, −⅙],
/// [1/24, 1/12, ⅙], [1/24, −1/12, ⅙], [0, 0, 1]]`.
fn g6(a: f32, b: f32, c: f32) -> [f32; 6] {
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
unsafe fn a6<V: F32x>(y: [V; 4]) -> [V; 6] {
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
unsafe fn grad_rows<V: F32x>(m: *mut f32, ms: usize, dy: *const f32, g: &Segment) {
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
fn transform_kernel(g: &[f32; 9], r: usize) -> [f32; 36] {
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

/// Forward: `y[Cout][N·H·W] = conv3×3(x)` (of `relu(x·scale + shift)` with `bn`), through
/// `col` (at least [`scratch_len`] of one sample; samples are taken as many at a time as
/// fit). Returns `false`, having done nothing, where [`applies`] does
/// not hold or `col` is too small for one sample.
pub fn forward(
    y: &mut [f32],
    x: &[f32],
    bn: Option<BnRelu>,
    w: &[f32],
    s: &ConvShape,
    col: &mut [f32],
) -> bool {
    convolve(y, x, bn, w, false, s, tile(s), col)
}

/// The input gradient of the 3×3 convolution `s` (forward weights `w: [Cout][Cin][9]`):
/// `dx[Cin][N·H·W]` (overwritten) from `dy[Cout][N·H·W]`, a convolution of `dy` with the
/// weights transposed and flipped. As [`forward`] (of the shape with `cin` and `cout`
/// swapped) for the scratch and the result.
pub fn backward_data(
    dx: &mut [f32],
    dy: &[f32],
    w: &[f32],
    s: &ConvShape,
    col: &mut [f32],
) -> bool {
    let ds = data_shape(s);
    convolve(dx, dy, None, w, true, &ds, tile(&ds), col)
}

/// [`forward`] in tiles of `r`×`r` outputs (2 or 4) whatever [`tile`] says: to compare the
/// two on a CPU (`cargo bench --bench shapes -- winograd`).
pub fn forward_in_tiles(
    y: &mut [f32],
    x: &[f32],
    bn: Option<BnRelu>,
    w: &[f32],
    s: &ConvShape,
    r: usize,
    col: &mut [f32],
) -> bool {
    assert!(r == 2 || r == 4, "F({r}×{r}, 3×3): tiles of 2 or 4");
    convolve(y, x, bn, w, false, s, r, col)
}

/// [`backward_data`] in tiles of `r`×`r` outputs (2 or 4), as [`forward_in_tiles`].
pub fn backward_data_in_tiles(
    dx: &mut [f32],
    dy: &[f32],
    w: &[f32],
    s: &ConvShape,
    r: usize,
    col: &mut [f32],
) -> bool {
    assert!(r == 2 || r == 4, "F({r}×{r}, 3×3): tiles of 2 or 4");
    convolve(dx, dy, None, w, true, &data_shape(s), r, col)
}

/// The convolution that computes `s`'s input gradient: inputs and outputs swapped.
pub fn data_shape(s: &ConvShape) -> ConvShape {
    ConvShape {
        cin: s.cout,
        cout: s.cin,
        ..*s
    }
}

/// U of `w` ([`convolve`]'s weights) as `raw: [o][i][ξ]`, then packed per ξ into
/// `packed` for the one-tap kernel (`(r + 2)²` × `co·ci` floats).
fn transform(
    packed: &mut [f32],
    raw: &mut [f32],
    w: &[f32],
    flip: bool,
    co: usize,
    ci: usize,
    r: usize,
) {
    let xis = (r + 2) * (r + 2);
    raw.par_chunks_mut(xis * ci)
        .enumerate()
        .for_each(|(o, row)| {
            for (i, u) in row.chunks_exact_mut(xis).enumerate() {
                let g: [f32; 9] = if flip {
                    std::array::from_fn(|t| w[(i * co + o) * 9 + 8 - t])
                } else {
                    std::array::from_fn(|t| w[(o * ci + i) * 9 + t])
                };
                u.copy_from_slice(&transform_kernel(&g, r)[..xis]);
            }
        });
    let raw = &*raw;
    packed
        .par_chunks_mut(co * ci)
        .enumerate()
        .for_each(|(xi, p)| {
            pack_into(p, co, ci, |o, i| raw[(o * ci + i) * xis + xi]);
        });
}

/// [`forward`], or with `flip` the convolution whose kernel (o, i) is `w[i][o]` rotated
/// by 180° (`w` then `[Cin][Cout][9]` of `s`), in tiles of r×r outputs (2 or 4).
#[allow(clippy::too_many_arguments)]
fn convolve(
    y: &mut [f32],
    x: &[f32],
    bn: Option<BnRelu>,
    w: &[f32],
    flip: bool,
    s: &ConvShape,
    r: usize,
    col: &mut [f32],
) -> bool {
    let sp = Split::new(s, r);
    // elements ξ of a transformed tile
    let xis = (r + 2) * (r + 2);
    // the most samples whose scratch_len fits in col
    let ns = col.len().saturating_sub(s.cin * PB) / (s.cin * sp.plane);
    if !applies(s) || ns == 0 {
        return false;
    }
    let direct = active().direct.expect("applies");
    let (ci, co) = (s.cin, s.cout);
    let len = s.n * s.h * s.w;
    assert_eq!(w.len(), co * ci * 9);
    assert!(x.len() >= ci * len && y.len() >= co * len);
    thread_local! {
        static U: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        static VM: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    // in evaluation, U packed once for the frozen model's passes (the backward's
    // flipped weights change every step)
    let frozen = (!flip)
        .then(|| {
            let layout = prepack::Layout::Winograd { tile: r };
            prepack::packed(layout, w, xis * co * ci, |packed| {
                with_scratch(&U, xis * co * ci, |raw| {
                    transform(packed, raw, w, flip, co, ci, r)
                })
            })
        })
        .flatten();
    let own = if frozen.is_some() {
        0
    } else {
        2 * xis * co * ci
    };
    with_scratch(&U, own, |ubuf| {
        let packed: &[f32] = match &frozen {
            Some(packed) => packed,
            None => {
                let (raw, packed) = ubuf.split_at_mut(xis * co * ci);
                transform(packed, raw, w, flip, co, ci, r);
                packed
            }
        };
        let (vs, ms) = (ci * T + PB, co * T + PB);
        let yp = SyncPtr(y.as_mut_ptr());
        let mut n0 = 0;
        while n0 < s.n {
            let n1 = (n0 + ns).min(s.n);
            let chan = sp.chan(n1 - n0);
            split(col, x, bn, s, sp, n0, n1);
            let src = &col[..ci * chan];
            let tiles = (n1 - n0) * sp.th * sp.tw;
            (0..tiles.div_ceil(T)).into_par_iter().for_each(|task| {
                let (k0, k1) = (task * T, ((task + 1) * T).min(tiles));
                let segs = || segments(&sp, s, n0, k0, k1);
                with_scratch(&VM, xis * (vs + ms), |vm| {
                    let (v, m) = vm.split_at_mut(xis * vs);
                    // SAFETY: the split layout holds PB floats past each channel;
                    // V's rows (T entries, PB slack per ξ) take a whole vector past
                    // k1 - k0; the table's entry runs on this CPU.
                    unsafe {
                        let (v, src) = (v.as_mut_ptr(), src.as_ptr());
                        each_channel(direct.wino_input, v, vs, src, chan, ci, segs)
                    }
                    let n = k1 - k0;
                    for xi in 0..xis {
                        let wq = Weights::packed(&packed[xi * co * ci..][..co * ci], ci);
                        let (mo, vi) = (&mut m[xi * ms..][..ms], &v[xi * vs..][..vs]);
                        pointwise_tile(mo, T, vi, T, wq, co, ci, n);
                    }
                    for o in 0..co {
                        for g in segs() {
                            // SAFETY: M's rows have PB slack per ξ; the segment's outputs lie
                            // in output row o (asserted above), and only this task writes
                            // its tiles' outputs.
                            unsafe {
                                (direct.wino_output)(
                                    yp.get().add(o * len),
                                    m.as_ptr().add(o * T),
                                    ms,
                                    &g,
                                )
                            }
                        }
                    }
                });
            });
            n0 = n1;
        }
    });
    true
}

#[cfg(test)]
mod tests;
