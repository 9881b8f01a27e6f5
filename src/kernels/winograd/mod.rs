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
//! kernel does 9; the route (`ops::route`) picks r. Where it picks 4, the weight gradient takes F(4×4)
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
use crate::util::par::{per_channel, with_scratch, OnTeam, SyncPtr};
use rayon::prelude::*;

mod layout;
mod transforms;
use layout::*;
pub use layout::{scratch_len, Segment};
use transforms::*;
pub(crate) use transforms::{
    grad_avx2, grad_avx512, input_avx2, input_avx512, output_avx2, output_avx512,
};

/// Tiles per task: a multiple of every table's register block (16 and 32 positions).
const T: usize = 32;

/// [`T`], for the route's rule (`ops::route`: two tasks per thread).
pub const TILES_PER_TASK: usize = T;

/// Signature of [`input_avx2`] and [`input_avx512`].
pub type InputFn = unsafe fn(*mut f32, usize, *const f32, &Segment);
/// Signature of [`output_avx2`] and [`output_avx512`].
pub type OutputFn = unsafe fn(*mut f32, *const f32, usize, &Segment);

/// Whether [`forward`] takes this convolution on this CPU: a 3×3, stride 1, padding 1
/// convolution, whose output count the one-tap kernel takes (which also needs the table's
/// direct kernels).
pub fn applies(s: &ConvShape) -> bool {
    s.is_same_3x3() && super::conv1x1::pointwise_applies(s.cout)
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

/// Forward: `y[Cout][N·H·W] = conv3×3(x)` (of `relu(x·scale + shift)` with `bn`) in tiles
/// of `r`×`r` outputs (2 or 4), through `col` (at least [`scratch_len`] of one sample;
/// samples are taken as many at a time as fit). Returns `false`, having done nothing,
/// where [`applies`] does not hold or `col` is too small for one sample.
pub fn forward(
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

/// The input gradient of the 3×3 convolution `s` (forward weights `w: [Cout][Cin][9]`):
/// `dx[Cin][N·H·W]` (overwritten) from `dy[Cout][N·H·W]`, a convolution of `dy` with the
/// weights transposed and flipped, in tiles of `r`×`r`. As [`forward`] (of the shape with
/// `cin` and `cout` swapped, [`data_shape`]) for the scratch and the result.
pub fn backward_data(
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

/// Whether [`backward_weights`] takes `s`'s weight gradient on this CPU: the one-tap
/// kernel's transforms and `grad_tile`'s output count.
pub fn weights_fit(s: &ConvShape) -> bool {
    applies(s) && super::conv1x1::grad_tile_applies(s.cout)
}

/// The weight gradient of the 3×3 convolution `s` as F(4×4, 3×3): `dw[Cout][Cin][9] +=`
/// the gradient from `dy[Cout][N·H·W]` and the input `x` (through `bn` if given).
///
/// The forward's `Y = Aᵀ·[U ⊙ V]·A` with `U = G·g·Gᵀ` is linear in `U`, so per tile
/// `∂L/∂U = M' ⊙ V` with `M' = A·dY·Aᵀ` ([`grad_rows`]), and summed over tiles and
/// samples, `dU_ξ[o][i] = Σ_t M'_ξ[o][t]·V_ξ[i][t]`: per ξ an outer product over tiles,
/// which the 1×1 weight gradient's kernel (`grad_tile`) sums into each thread's own
/// `[ξ][I][O]`; then `dW = Gᵀ·dU·G` once per call. 36 multiply-adds per 16 outputs,
/// input and output channel, where the direct kernel does 144.
///
/// Returns `false`, having done nothing, where [`weights_fit`] does not hold or `col` is
/// too small for one sample (as [`forward`]).
pub fn backward_weights(
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    bn: Option<BnRelu>,
    s: &ConvShape,
    col: &mut [f32],
) -> bool {
    weights_fit(s) && weights_f4(dw, dy, x, bn, s, col)
}

/// [`backward_weights`] wherever the kernels take the shape, whatever [`tile`] says.
fn weights_f4(
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    bn: Option<BnRelu>,
    s: &ConvShape,
    col: &mut [f32],
) -> bool {
    const R: usize = 4;
    const XIS: usize = (R + 2) * (R + 2);
    let sp = Split::new(s, R);
    let ns = col.len().saturating_sub(s.cin * PB) / (s.cin * sp.plane);
    if !weights_fit(s) || ns == 0 {
        return false;
    }
    let direct = active().direct.expect("applies");
    let (ci, co) = (s.cin, s.cout);
    let len = s.n * s.h * s.w;
    assert_eq!(dw.len(), co * ci * 9);
    assert!(x.len() >= ci * len && dy.len() >= co * len);
    thread_local! {
        static VM: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        static PARTIALS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let (vs, ms) = (ci * T + PB, co * T + PB);
    let acc_len = XIS * ci * co;
    let parts = rayon::current_num_threads().max(1);
    with_scratch(&PARTIALS, parts * acc_len, |partials| {
        partials.fill(0.0);
        let mut n0 = 0;
        while n0 < s.n {
            let n1 = (n0 + ns).min(s.n);
            let chan = sp.chan(n1 - n0);
            split(col, x, bn, s, sp, n0, n1);
            let src = &col[..ci * chan];
            let tiles = (n1 - n0) * sp.th * sp.tw;
            let tasks = tiles.div_ceil(T);
            // part p takes tasks p, p + parts, …, summing into its own [ξ][I][O]
            let work = |(part, acc): (usize, &mut [f32])| {
                let panel = co * T;
                with_scratch(&VM, XIS * (vs + ms) + panel, |vm| {
                    let (v, rest) = vm.split_at_mut(XIS * vs);
                    let (m, panel) = rest.split_at_mut(XIS * ms);
                    for task in (part..tasks).step_by(parts) {
                        let (k0, k1) = (task * T, ((task + 1) * T).min(tiles));
                        let segs = || segments(&sp, s, n0, k0, k1);
                        // SAFETY: V as in `convolve`; M' rows have PB slack per ξ, and
                        // the segments' positions lie in dy's rows (asserted above).
                        unsafe {
                            let (v, src) = (v.as_mut_ptr(), src.as_ptr());
                            each_channel(direct.wino_input, v, vs, src, chan, ci, segs);
                            let (m, dy) = (m.as_mut_ptr(), dy.as_ptr());
                            each_channel(direct.wino_grad, m, ms, dy, len, co, segs);
                        }
                        let n = k1 - k0;
                        for xi in 0..XIS {
                            let mx = &m[xi * ms..][..co * T];
                            super::conv1x1::transpose_panels(panel, mx, T, co, n);
                            // SAFETY: acc's ξ block is this part's own ci×co matrix; V's ξ
                            // rows hold ci rows of T ≥ n; panel holds M'ᵀ's panels;
                            // grad_tile_applies(co) (weights_fit).
                            unsafe {
                                super::conv1x1::grad_tile(
                                    acc.as_mut_ptr().add(xi * ci * co),
                                    v.as_ptr().add(xi * vs),
                                    T,
                                    panel.as_ptr(),
                                    co,
                                    ci,
                                    n,
                                )
                            }
                        }
                    }
                })
            };
            partials
                .par_chunks_mut(acc_len)
                .enumerate()
                .team_for_each(work);
            n0 = n1;
        }
        // dW[o][i] += Gᵀ·dU·G, dU summed over the parts in order; OC outputs a task, so
        // that each (ξ, i) row of a partial is read OC floats at a time (one output a
        // task read one float of each 64-byte line, and every line once per output: 0.8%
        // of a densenet121 training step)
        const OC: usize = 8;
        let (partials, g) = (&*partials, &G6);
        dw.par_chunks_mut(OC * ci * 9)
            .enumerate()
            .team_for_each(|(k, dwk)| {
                let (o0, oc) = (k * OC, dwk.len() / (ci * 9));
                for i in 0..ci {
                    let mut u = [[0f64; XIS]; OC];
                    for part in partials.chunks_exact(acc_len) {
                        for xi in 0..XIS {
                            let row = &part[(xi * ci + i) * co + o0..][..oc];
                            for (u, &v) in u.iter_mut().zip(row) {
                                u[xi] += v as f64;
                            }
                        }
                    }
                    for (u, dwo) in u.iter().zip(dwk.chunks_exact_mut(ci * 9)) {
                        // dU·G (6×3), then Gᵀ·(dU·G)
                        let mut ug = [[0f64; 3]; 6];
                        for (r, ug) in ug.iter_mut().enumerate() {
                            for (c, g) in g.iter().enumerate() {
                                for (ug, g) in ug.iter_mut().zip(g) {
                                    *ug += u[6 * r + c] * g;
                                }
                            }
                        }
                        let d = &mut dwo[i * 9..][..9];
                        for (ky, d) in d.chunks_exact_mut(3).enumerate() {
                            for (kx, d) in d.iter_mut().enumerate() {
                                let t: f64 = (0..6).map(|r| g[r][ky] * ug[r][kx]).sum();
                                *d += t as f32;
                            }
                        }
                    }
                }
            });
    });
    true
}

/// F(4×4, 3×3)'s `G` (6×3), for the weight gradient's `Gᵀ·dU·G` (the forward's [`g6`]).
const G6: [[f64; 3]; 6] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

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
        .team_for_each(|(o, row)| {
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
        .team_for_each(|(xi, p)| {
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
            let parts = crate::util::team::threads().min(tiles.div_ceil(T)).max(1);
            let task = |k0: usize, k1: usize| {
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
            };
            // member m takes tiles m·tiles/P .. (m+1)·tiles/P, in tasks of at most T: a
            // short last task costs a whole register block, so dealing whole tasks
            // (densenet121 at batch 1: 7 of 32 tiles for 196) left one of 2 threads 4
            // tasks and the other 3
            crate::util::team::run(parts, |m| {
                let (a, b) = (m * tiles / parts, (m + 1) * tiles / parts);
                for k0 in (a..b).step_by(T) {
                    task(k0, (k0 + T).min(b));
                }
            });
            n0 = n1;
        }
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels;
    use crate::kernels::testutil::{close, data, say, shape3x3 as shape};
    use crate::ops::conv::{im2col_backward, im2col_forward};

    /// Says SKIPPED (the `kind` kernel missing) and returns true where the active table
    /// has no direct kernels.
    fn skipped(kind: &str) -> bool {
        let name = kernels::active().name;
        let none = kernels::active().direct.is_none();
        if none {
            say(&format!(
                "SKIPPED: the {name} kernels have no {kind} kernel"
            ));
        }
        none
    }

    /// `relu(x·scale + shift)` per channel row of `len` with `bn`, else `x`.
    fn bn_relu(x: &[f32], bn: Option<BnRelu>, len: usize) -> Vec<f32> {
        match bn {
            None => x.to_vec(),
            Some(b) => x
                .chunks(len)
                .enumerate()
                .flat_map(|(c, row)| {
                    row.iter()
                        .map(move |v| (v * b.scale[c] + b.shift[c]).max(0.0))
                })
                .collect(),
        }
    }

    /// The F(4×4, 3×3) weight gradient against im2col's (itself tested against a naive
    /// convolution in `conv`), added onto a gradient already there: odd and even sizes,
    /// 1-row and 1-column images, tile rows that cross tasks, output counts of one and
    /// more vectors, with and without a BN-ReLU, one sample per chunk and all in one.
    #[test]
    fn weight_gradient_matches_im2col() {
        if skipped("outer-product") {
            return;
        }
        let shapes = [
            shape(2, 8, 16, 5, 7),
            shape(1, 12, 32, 9, 6),
            shape(3, 16, 16, 1, 11),
            shape(2, 4, 32, 13, 1),
            shape(2, 20, 48, 14, 13),
            shape(1, 32, 32, 28, 28),
        ];
        for s in shapes {
            let len = s.n * s.h * s.w;
            let x = data(s.cin * len, 1);
            let dy = data(s.cout * len, 3);
            let w = data(s.cout * s.col_rows(), 2);
            let (scale, shift) = (data(s.cin, 4), data(s.cin, 5));
            let start = data(w.len(), 6);
            let mut big = vec![0.0; (s.cin * 9) * len];
            for with_bn in [false, true] {
                let bn = with_bn.then_some(BnRelu {
                    scale: &scale,
                    shift: &shift,
                });
                let input = bn_relu(&x, bn, len);
                let mut want = start.clone();
                im2col_backward(None, Some(&mut want), &dy, &input, &w, &s, &mut big);
                for samples in [1, s.n] {
                    let mut col = vec![f32::NAN; s.cin * Split::new(&s, 4).chan(samples)];
                    let mut dw = start.clone();
                    assert!(weights_f4(&mut dw, &dy, &x, bn, &s, &mut col), "{s:?}");
                    close(
                        &dw,
                        &want,
                        &format!("{s:?} dW bn {with_bn} samples {samples}"),
                    );
                }
            }
        }
    }

    /// Against im2col + GEMM (itself tested against a naive convolution in `conv`): odd
    /// and even sizes, 1-row and 1-column images, rows long enough for the vector split
    /// and a remainder, tile rows that cross tasks (7×7 has 4
    /// tiles a row, 9×9 has 5), blocks of 6 and of 4 outputs, with and without a BN-ReLU,
    /// one sample per chunk and the whole batch in one.
    #[test]
    fn winograd_matches_im2col() {
        if skipped("one-tap") {
            return;
        }
        let shapes = [
            shape(2, 4, 4, 5, 7),
            shape(3, 8, 12, 9, 6),
            shape(1, 4, 8, 1, 11),
            shape(2, 12, 4, 13, 1),
            shape(3, 16, 32, 7, 7),
            shape(2, 20, 16, 14, 14),
            shape(1, 3, 24, 9, 9),
            shape(1, 32, 36, 28, 28),
            // rows split 4 (F(4×4)) or 8 (F(2×2)) columns at a time, with 3 or 1 left
            shape(2, 4, 8, 3, 35),
        ];
        for s in shapes {
            assert!(applies(&s), "{s:?}");
            let x = data(s.cin * s.n * s.h * s.w, 1);
            let w = data(s.cout * s.col_rows(), 2);
            let scale = data(s.cin, 4);
            let shift = data(s.cin, 5);
            let mut big = vec![0.0; (s.cin * 9) * s.n * s.h * s.w];
            for with_bn in [false, true] {
                let bn = with_bn.then_some(BnRelu {
                    scale: &scale,
                    shift: &shift,
                });
                let input = bn_relu(&x, bn, s.n * s.h * s.w);
                let mut want = vec![0.0; s.cout * s.n * s.h * s.w];
                im2col_forward(&mut want, &input, &w, &s, &mut big);
                for (samples, r) in [1, s.n].into_iter().flat_map(|n| [(n, 2), (n, 4)]) {
                    let mut col = vec![f32::NAN; s.cin * Split::new(&s, r).chan(samples)];
                    let mut y = vec![f32::NAN; want.len()];
                    assert!(forward(&mut y, &x, bn, &w, &s, r, &mut col));
                    let what = format!("{s:?} F({r}×{r}) bn {with_bn} samples {samples}");
                    close(&y, &want, &what);
                }
            }
            // the input gradient, against im2col's backward (its dw discarded); the one-tap
            // kernel does not take 3 outputs
            let ds = data_shape(&s);
            if !applies(&ds) {
                assert_eq!(s.cin, 3);
                continue;
            }
            let dy = data(s.cout * s.n * s.h * s.w, 3);
            let mut want = vec![0.0; x.len()];
            let mut dw = vec![0.0; w.len()];
            im2col_backward(Some(&mut want), Some(&mut dw), &dy, &x, &w, &s, &mut big);
            for (samples, r) in [1, s.n].into_iter().flat_map(|n| [(n, 2), (n, 4)]) {
                let mut col = vec![f32::NAN; ds.cin * Split::new(&ds, r).chan(samples)];
                let mut dx = vec![f32::NAN; x.len()];
                assert!(backward_data(&mut dx, &dy, &w, &s, r, &mut col));
                close(
                    &dx,
                    &want,
                    &format!("{s:?} F({r}×{r}) dx samples {samples}"),
                );
            }
        }
        // too little scratch for one sample: nothing done (and in backward_weights)
        let s4 = shape(1, 4, 16, 6, 6);
        let mut col = vec![0.0; s4.cin * Split::new(&s4, 4).chan(1) - 1];
        let mut dw = vec![1.0; 16 * 4 * 9];
        let (dy, x) = (data(16 * 36, 3), data(4 * 36, 1));
        assert!(!weights_f4(&mut dw, &dy, &x, None, &s4, &mut col));
        assert!(dw.iter().all(|&v| v == 1.0));
        let s = shape(1, 4, 4, 6, 6);
        let mut col = vec![0.0; s.cin * Split::new(&s, 2).chan(1) - 1];
        let mut y = vec![1.0; 4 * 36];
        let (x, w) = (data(4 * 36, 1), data(144, 2));
        assert!(!forward(&mut y, &x, None, &w, &s, 2, &mut col));
        assert!(y.iter().all(|&v| v == 1.0));
    }
}
