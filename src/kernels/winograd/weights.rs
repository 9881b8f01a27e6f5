//! The 3×3 weight gradient as F(4×4, 3×3) ([`backward_weights`]): an outer product over
//! tiles per transform element, then `Gᵀ·dU·G`.

use super::*;

/// Whether [`backward_weights`] takes the weight gradient of `s` on this CPU: where the
/// forward takes F(4×4, 3×3) ([`tile`]) and the one-tap and outer-product kernels take
/// its channel counts.
pub fn weights_apply(s: &ConvShape) -> bool {
    tile(s) == 4 && weights_f4_fit(s)
}

/// Whether the kernels take `s`'s weight gradient as F(4×4), whatever [`tile`] says: the
/// one-tap kernel's transforms and `grad_tile`'s output count.
fn weights_f4_fit(s: &ConvShape) -> bool {
    applies(s) && crate::kernels::conv1x1::grad_tile_applies(s.cout)
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
/// Returns `false`, having done nothing, where [`weights_apply`] does not hold or `col` is
/// too small for one sample (as [`forward`]).
pub fn backward_weights(
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    bn: Option<BnRelu>,
    s: &ConvShape,
    col: &mut [f32],
) -> bool {
    weights_apply(s) && weights_f4(dw, dy, x, bn, s, col)
}

/// [`backward_weights`] wherever the kernels take the shape, whatever [`tile`] says.
pub(super) fn weights_f4(
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
    if !weights_f4_fit(s) || ns == 0 {
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
                            crate::kernels::conv1x1::transpose_panels(panel, mx, T, co, n);
                            // SAFETY: acc's ξ block is this part's own ci×co matrix; V's ξ
                            // rows hold ci rows of T ≥ n; panel holds M'ᵀ's panels;
                            // grad_tile_applies(co) (weights_apply).
                            unsafe {
                                crate::kernels::conv1x1::grad_tile(
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
            partials.par_chunks_mut(acc_len).enumerate().for_each(work);
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
            .for_each(|(k, dwk)| {
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
