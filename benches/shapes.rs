//! Timing of the kernel shapes a DenseNet training step runs (GEMM, the direct 1×1 and
//! 3×3 kernels, the fused BN-ReLU + 1×1), at 1 and 2 threads:
//!
//! ```text
//! cargo bench --bench shapes              # every benchmark (minutes)
//! cargo bench --bench shapes -- conv3x3   # those whose name contains `conv3x3`
//! cargo bench --bench shapes -- efficiency             # GFLOP/s and fraction of peak
//! cargo bench --bench shapes -- winograd               # Winograd 3×3 (both tiles) against direct
//! cargo bench --bench shapes -- pointwise_routes       # batch-1 1×1: gemm against direct
//! N=16 cargo bench --bench shapes -- conv3x3_routes    # 3×3 forward: every route
//! N=16 cargo bench --bench shapes -- stem_routes       # the 7×7 stem: both routes, fwd and dW
//! JSON=1 cargo bench --bench shapes -- efficiency      # the same as JSON lines
//! ```
//!
//! Not a correctness test; it exists so kernel choices can be re-measured. It prints the
//! CPU and the active kernels table first, since every number depends on both (to stderr
//! with `JSON=1`, so that stdout holds only the JSON lines).

use densenet::kernels::conv1x1::{pointwise, pointwise_applies};
use densenet::kernels::gemm::{raw, sgemm, Mat};
use densenet::kernels::peak::{cpu_model, peak};
use densenet::kernels::{self, broadcast, conv3x3, BnRelu, ConvShape};
use densenet::ops::route::{self, ConvRoute, Reads, Route};
use densenet::ops::{conv, fused, norm};
use std::time::Instant;

/// The benchmarks, by name, in the order they run.
const BENCHES: &[(&str, fn())] = &[
    ("gemm_shapes", gemm_shapes),
    ("dw_thread_use", dw_thread_use),
    ("conv3x3_shapes", conv3x3_shapes),
    ("fused_shapes", fused_shapes),
    ("pointwise_hot_vs_cold", pointwise_hot_vs_cold),
    ("efficiency", efficiency),
    ("winograd", winograd),
    ("pointwise_routes", pointwise_routes),
    ("conv3x3_routes", conv3x3_routes),
    ("stem_routes", stem_routes),
];

fn main() {
    // `cargo bench` passes `--bench`; any other word filters by name
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let chosen: Vec<_> = BENCHES
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    if chosen.is_empty() {
        let names: Vec<_> = BENCHES.iter().map(|(n, _)| *n).collect();
        eprintln!(
            "no benchmark matches {filters:?}; there are: {}",
            names.join(", ")
        );
        std::process::exit(2);
    }
    note(&format!("cpu: {}", cpu_model()));
    note(&format!("kernels: {}", kernels::active().name));
    for (name, run) in chosen {
        note(&format!("\n== {name}"));
        run();
    }
}

/// Whether `JSON=1`: `efficiency` prints JSON lines instead of text.
fn json() -> bool {
    std::env::var("JSON").is_ok_and(|v| v == "1")
}

/// Prints a line that is not a result: to stdout, or with `JSON=1` to stderr, leaving
/// stdout to `efficiency`'s JSON lines.
fn note(line: &str) {
    if json() {
        eprintln!("{line}")
    } else {
        println!("{line}")
    }
}

/// Seconds of the fastest of `reps` calls of `f`, after `warmup` untimed ones.
fn best_secs(warmup: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

/// A rayon pool of `threads` threads.
fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// GFLOP/s of the best of 6 `sgemm` calls of one shape on `threads` threads.
fn rate(m: usize, n: usize, k: usize, ta: bool, tb: bool, threads: usize) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0f32; m * n];
    let am = if ta { Mat::t(&a, m) } else { Mat::n(&a, k) };
    let bm = if tb { Mat::t(&b, k) } else { Mat::n(&b, n) };
    let best =
        pool(threads).install(|| best_secs(0, 6, || sgemm(m, n, k, &mut c, n, true, am, bm)));
    2.0 * (m * n * k) as f64 / best / 1e9
}

/// `sgemm` on the products of a DenseNet-BC k=12 b64 training step (and densenet121's
/// widest 1×1), against the direct 1×1 kernel on the same shapes; 1 and 2 threads.
fn gemm_shapes() {
    // (what, m, n, k, A transposed, B transposed)
    let shapes = [
        ("1x1 fwd 48x216.216x65536", 48, 65536, 216, false, false),
        ("1x1 dW 48x65536.65536x216", 48, 216, 65536, false, true),
        ("1x1 dX 216x48.48x65536", 216, 65536, 48, true, false),
        ("3x3 fwd 12x432.432x9216", 12, 9216, 432, false, false),
        ("3x3 dW 12x9216.9216x432", 12, 432, 9216, false, true),
        ("3x3 dX 432x12.12x9216", 432, 9216, 12, true, false),
        ("3x3 fwd^T 9216x432.432x12", 9216, 12, 432, false, true),
    ];
    for (what, m, n, k, ta, tb) in shapes {
        let r1 = rate(m, n, k, ta, tb, 1);
        let r2 = rate(m, n, k, ta, tb, 2);
        println!("{what:32} 1t {r1:6.1} GFLOP/s   2t {r2:6.1} GFLOP/s");
    }
    // the direct 1×1 kernel (conv1x1::pointwise) on the same shapes as the GEMMs above
    for (what, o, i, len, flip) in [
        ("direct 1x1 fwd o48 i216", 48, 216, 65536, false),
        ("direct 1x1 dX o216 i48", 216, 48, 65536, true),
        ("direct 1x1 fwd o128 i512 (121)", 128, 512, 12544, false),
    ] {
        if !pointwise_applies(o) {
            println!("{what:32} (no direct kernel in this table)");
            continue;
        }
        let x = vec![0.5f32; i * len];
        let w = vec![0.25f32; o * i];
        let mut y = vec![0f32; o * len];
        let mut r = |threads| {
            let best = pool(threads)
                .install(|| best_secs(0, 6, || pointwise(&mut y, &x, &w, o, i, len, flip)));
            2.0 * (o * i * len) as f64 / best / 1e9
        };
        let (r1, r2) = (r(1), r(2));
        println!("{what:32} 1t {r1:6.1} GFLOP/s   2t {r2:6.1} GFLOP/s");
    }
    let r1 = rate(128, 12544, 512, false, false, 1);
    let r2 = rate(128, 12544, 512, false, false, 2);
    println!(
        "{:32} 1t {r1:6.1} GFLOP/s   2t {r2:6.1} GFLOP/s",
        "gemm 1x1 o128 i512 (121)"
    );
}

/// Process CPU seconds (utime + stime from /proc/self/stat, 10 ms ticks).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// Thread use of a weight-gradient product: the `gemm` crate's own parallelism against
/// [`sgemm`]'s k-split, as CPU seconds per wall second (2.0 = both cores busy).
fn dw_thread_use() {
    let (m, n, k) = (48, 216, 65536);
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; n * k];
    let mut c = vec![0f32; m * n];
    let pool = pool(2);
    for split in [false, true] {
        let (c0, t0) = (cpu_seconds(), Instant::now());
        pool.install(|| {
            for _ in 0..20 {
                if split {
                    sgemm(m, n, k, &mut c, n, true, Mat::n(&a, k), Mat::t(&b, k));
                } else {
                    raw(
                        m,
                        n,
                        k,
                        &mut c,
                        n,
                        true,
                        Mat::n(&a, k),
                        Mat::t(&b, k),
                        densenet::kernels::gemm::Parallelism::Rayon(2),
                    );
                }
            }
        });
        let wall = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - c0;
        let rate = 20.0 * 2.0 * (m * n * k) as f64 / wall / 1e9;
        println!(
            "k-split {split}: {rate:.1} GFLOP/s, {:.2} CPU s per wall s",
            cpu / wall
        );
    }
}

/// A 3×3 convolution, stride 1, padding 1, of `cin` → `cout` channels on `n` samples of
/// `h`×`h`.
fn conv3x3_shape(n: usize, cin: usize, cout: usize, h: usize) -> ConvShape {
    ConvShape {
        n,
        cin,
        cout,
        h,
        w: h,
        k: 3,
        stride: 1,
        pad: 1,
    }
}

/// The buffers of one direct 3×3 convolution (`kernels::conv3x3::forward_direct` /
/// `backward_direct`, or the routed `forward` / `backward`,
/// the input gradient included), with its scratch for `chunk` samples, optionally reading
/// a BN-ReLU of its input as a dense layer's `conv2` does.
struct Conv3x3Case {
    s: ConvShape,
    x: Vec<f32>,
    w: Vec<f32>,
    y: Vec<f32>,
    dx: Vec<f32>,
    dw: Vec<f32>,
    col: Vec<f32>,
    /// BN-ReLU scale and shift per input channel, where `bn`.
    scale_shift: Option<(Vec<f32>, Vec<f32>)>,
}

impl Conv3x3Case {
    fn new(s: ConvShape, chunk: usize, bn: bool) -> Self {
        let x = vec![0.5f32; s.cin * s.n * s.h * s.w];
        Conv3x3Case {
            dx: vec![0f32; x.len()],
            x,
            w: vec![0.25f32; s.cout * s.col_rows()],
            y: vec![0f32; s.cout * s.n * s.h * s.w],
            dw: vec![0f32; s.cout * s.col_rows()],
            col: vec![0f32; conv3x3::scratch_per_sample(&s) * chunk.clamp(1, s.n)],
            scale_shift: bn.then(|| (vec![1.5f32; s.cin], vec![-0.25f32; s.cin])),
            s,
        }
    }

    /// FLOPs of one forward (multiply-adds ×2); a backward does twice as many.
    fn flops(&self) -> f64 {
        2.0 * self.s.macs() as f64
    }

    /// The BN-ReLU of a case's input, where it has one (of the field alone, so that the
    /// other buffers stay free to borrow mutably).
    fn bn(scale_shift: &Option<(Vec<f32>, Vec<f32>)>) -> Option<BnRelu<'_>> {
        scale_shift
            .as_ref()
            .map(|(scale, shift)| BnRelu { scale, shift })
    }

    /// The routes `ops::route` takes for this case.
    fn routes(&self) -> ConvRoute {
        let reads = if self.scale_shift.is_some() {
            Reads::BnRelu
        } else {
            Reads::Stored
        };
        route::choose(&self.s, reads, true)
    }

    /// The direct kernel's forward, or with `routed` the route `ops::route` takes
    /// (Winograd or broadcast where they pay).
    fn forward(&mut self, routed: bool) {
        let bn = Self::bn(&self.scale_shift);
        let r = if routed {
            self.routes().forward
        } else {
            Route::Direct3x3
        };
        let (y, x, w, s) = (&mut self.y, &self.x, &self.w, &self.s);
        assert!(conv::conv3x3_routed(y, x, bn, w, s, r, &mut self.col));
    }

    /// Input and weight gradients, from `y` as the output gradient: the direct kernels, or
    /// with `routed` the routes `ops::route` takes.
    fn backward(&mut self, routed: bool) {
        let bn = Self::bn(&self.scale_shift);
        let r = if routed {
            self.routes()
        } else {
            ConvRoute {
                pooled_first: false,
                forward: Route::Direct3x3,
                input_grad: Some(Route::Direct3x3),
                weight_grad: Some(Route::Direct3x3),
            }
        };
        let (dx, dw, col) = (Some(&mut self.dx[..]), &mut self.dw, &mut self.col);
        let (y, x, w, s) = (&self.y, &self.x, &self.w, &self.s);
        conv::backward_routed(dx, dw, y, x, bn, w, s, &r, col);
    }
}

/// The direct 3×3 kernel (`kernels::conv3x3::forward_direct` / `backward_direct`) on densenet121's and BC-100's
/// dense-layer shapes, 1 and 2 threads.
fn conv3x3_shapes() {
    for (what, s, chunk) in [
        (
            "121 fwd n16 i128 o32 28x28",
            conv3x3_shape(16, 128, 32, 28),
            16,
        ),
        (
            "121 fwd n16 i128 o32 14x14",
            conv3x3_shape(16, 128, 32, 14),
            16,
        ),
        (
            "BC100 fwd n64 i48 o12 32x32",
            conv3x3_shape(64, 48, 12, 32),
            8,
        ),
    ] {
        if !conv3x3::applies(&s) {
            println!("{what:32} (no direct kernel in this table)");
            continue;
        }
        let mut case = Conv3x3Case::new(s, chunk, false);
        let mut r = |threads, bwd: bool| {
            let best = pool(threads).install(|| {
                best_secs(0, 5, || {
                    if bwd {
                        case.backward(false)
                    } else {
                        case.forward(false)
                    }
                })
            });
            let passes = if bwd { 2.0 } else { 1.0 };
            passes * case.flops() / best / 1e9
        };
        let (f1, f2, b1, b2) = (r(1, false), r(2, false), r(1, true), r(2, true));
        println!("{what:32} fwd 1t {f1:6.1} 2t {f2:6.1}  bwd 1t {b1:6.1} 2t {b2:6.1} GFLOP/s");
    }
}

/// The buffers of one fused BN-ReLU + 1×1 convolution (`ops::fused::forward` /
/// `backward`) of `i` → `o` channels over `len` positions, with batch statistics for its
/// backward.
struct FusedCase {
    o: usize,
    i: usize,
    len: usize,
    x: Vec<f32>,
    w: Vec<f32>,
    dy: Vec<f32>,
    scale: Vec<f32>,
    shift: Vec<f32>,
    y: Vec<f32>,
    dw: Vec<f32>,
    dx: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    gamma: Vec<f32>,
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
    pending: Vec<(f64, f64)>,
}

impl FusedCase {
    fn new(o: usize, i: usize, len: usize) -> Self {
        FusedCase {
            o,
            i,
            len,
            x: vec![0.5f32; i * len],
            w: vec![0.25f32; o * i],
            dy: vec![0.125f32; o * len],
            scale: vec![1.5f32; i],
            shift: vec![-0.25f32; i],
            y: vec![0f32; o * len],
            dw: vec![0f32; o * i],
            dx: vec![0f32; i * len],
            mean: vec![0.1f32; i],
            rstd: vec![1.2f32; i],
            gamma: vec![0.9f32; i],
            dgamma: vec![0f32; i],
            dbeta: vec![0f32; i],
            pending: vec![(0f64, 0f64); i],
        }
    }

    /// FLOPs of the product of one forward (multiply-adds ×2; the BN-ReLU is not
    /// counted); a backward's two products (dW, dA) do twice as many.
    fn flops(&self) -> f64 {
        2.0 * (self.o * self.i * self.len) as f64
    }

    /// The 1×1's shape.
    fn shape(&self) -> ConvShape {
        ConvShape {
            n: 1,
            cin: self.i,
            cout: self.o,
            h: 1,
            w: self.len,
            k: 1,
            stride: 1,
            pad: 0,
        }
    }

    /// `fused::forward` by the route of training (`training`: the direct kernel at every
    /// width) or of evaluation.
    fn forward(&mut self, training: bool) {
        let route = route::choose(&self.shape(), Reads::BnRelu, training).forward;
        let bn = BnRelu {
            scale: &self.scale,
            shift: &self.shift,
        };
        fused::forward(&mut self.y, &self.x, &self.w, bn, self.o, self.len, route);
    }

    /// `fused::backward` (dW, dA and the BN-ReLU backward) and its pending part of dX.
    fn backward(&mut self) {
        let bn = BnRelu {
            scale: &self.scale,
            shift: &self.shift,
        };
        let r = route::choose(&self.shape(), Reads::BnRelu, true).weight_grad;
        let r = r.expect("training routes");
        let g = fused::Grads {
            dx: &mut self.dx,
            dw: &mut self.dw,
            dgamma: &mut self.dgamma,
            dbeta: &mut self.dbeta,
            pending: &mut self.pending,
        };
        let st = fused::BatchStats {
            mean: &self.mean,
            rstd: &self.rstd,
            gamma: &self.gamma,
        };
        fused::backward(g, &self.dy, &self.x, &self.w, bn, st, self.o, self.len, r);
        norm::apply_pending(
            &mut self.dx,
            &self.x,
            &self.mean,
            &mut self.pending,
            self.len,
        );
    }
}

/// The fused BN-ReLU + 1×1 forward and backward (`fused::forward`, `fused::backward`:
/// weight and input gradients and the BN-ReLU backward) against BN-ReLU written out and
/// the plain products, one thread.
fn fused_shapes() {
    let pool = pool(1);
    for (what, o, i, len) in [
        ("BC100 bottleneck o48 i216", 48, 216, 65536),
        ("BC100 transition o108 i216", 108, 216, 65536),
        ("121 bottleneck o128 i512", 128, 512, 12544),
    ] {
        let mut c = FusedCase::new(o, i, len);
        // the unfused path's BN-ReLU output and its gradient
        let mut a = vec![0f32; i * len];
        let mut da = vec![0f32; i * len];
        let mut best = [f64::MAX; 4];
        pool.install(|| {
            for _ in 0..4 {
                for (v, b) in best.iter_mut().enumerate() {
                    let t = Instant::now();
                    match v {
                        0 => c.forward(false),
                        1 => {
                            norm::bn_relu_forward(&mut a, &c.x, &c.scale, &c.shift, len);
                            let s = ConvShape {
                                n: 1,
                                cin: i,
                                cout: o,
                                h: 1,
                                w: len,
                                k: 1,
                                stride: 1,
                                pad: 0,
                            };
                            let r = route::choose(&s, Reads::Stored, false).forward;
                            conv::conv_forward(&mut c.y, &a, &c.w, &s, r, &mut []);
                        }
                        2 => c.backward(),
                        _ => {
                            norm::bn_relu_forward(&mut a, &c.x, &c.scale, &c.shift, len);
                            sgemm(
                                o,
                                i,
                                len,
                                &mut c.dw,
                                i,
                                true,
                                Mat::n(&c.dy, len),
                                Mat::t(&a, len),
                            );
                            sgemm(
                                i,
                                len,
                                o,
                                &mut da,
                                len,
                                false,
                                Mat::t(&c.w, i),
                                Mat::n(&c.dy, len),
                            );
                            norm::bn_relu_backward(
                                &mut c.dx,
                                &mut c.dgamma,
                                &mut c.dbeta,
                                norm::OutGrad::Dense(&da),
                                &c.x,
                                &c.mean,
                                &c.rstd,
                                &c.scale,
                                &c.shift,
                                &c.gamma,
                                len,
                            );
                        }
                    }
                    *b = b.min(t.elapsed().as_secs_f64());
                }
            }
        });
        let g = |t: f64, passes: f64| passes * c.flops() / t / 1e9;
        println!(
            "{what:28} fwd fused {:6.1} unfused {:6.1}   bwd fused {:6.1} unfused {:6.1} GFLOP/s",
            g(best[0], 1.0),
            g(best[1], 1.0),
            g(best[2], 2.0),
            g(best[3], 2.0)
        );
    }
}

/// The direct 1×1 kernel with its input in DRAM (len 65536) and in cache (short lengths
/// repeated), one thread. Quiet machine: 58 against 77 GFLOP/s; the tiles' short runs per
/// input channel (1.2 KB) defeat the hardware prefetchers. Software prefetching of the
/// next tile (T0 and T1 hints) did not measurably close the gap on this noisy VM.
fn pointwise_hot_vs_cold() {
    if !pointwise_applies(48) {
        println!("no direct 1x1 kernel in this table");
        return;
    }
    let pool = pool(1);
    for (o, i, len) in [(48, 216, 65536), (48, 216, 2304)] {
        let x = vec![0.5f32; i * len];
        let w = vec![0.25f32; o * i];
        let mut y = vec![0f32; o * len];
        let reps = (65536 / len).max(1);
        let best = pool.install(|| {
            best_secs(0, 6, || {
                for _ in 0..reps {
                    pointwise(&mut y, &x, &w, o, i, len, false);
                }
            })
        }) / reps as f64;
        let rate = 2.0 * (o * i * len) as f64 / best / 1e9;
        println!("pointwise o{o} i{i} len{len}: {rate:6.1} GFLOP/s");
    }
}

/// One convolution of `efficiency`: which network, and the fused BN-ReLU + 1×1 or the
/// direct 3×3 on one shape (`n` samples of `h`×`h`).
struct EffCase {
    /// `121` (densenet121, batch 16, 224×224) or `BC100` (DenseNet-BC-100-12, batch 64,
    /// 32×32).
    model: &'static str,
    /// `1x1` (a dense layer's bottleneck), `3x3`, `trans 1x1` (a transition), and two
    /// forward-only kernels: `3x3 bcast` (`broadcast`, output channels in the vector)
    /// and `stem` (the 7×7 stride 2 through `broadcast::forward_padded`).
    kind: &'static str,
    n: usize,
    cin: usize,
    cout: usize,
    h: usize,
}

/// The main convolution shapes of a densenet121 (batch 16, 224×224) and a
/// DenseNet-BC-100-12 (batch 64, 32×32) training step. densenet121's bottlenecks read
/// 64 + 32·l channels at layer l of block 1 (56×56, 6 layers), 128 + 32·l in block 2
/// (28×28, 12), 256 + 32·l in block 3 (14×14, 24) and 512 + 32·l in block 4 (7×7, 16):
/// the middle layer of each stands for its block.
fn efficiency_cases() -> Vec<EffCase> {
    let c = |model, kind, n, cin, cout, h| EffCase {
        model,
        kind,
        n,
        cin,
        cout,
        h,
    };
    let mut cases = vec![];
    for (cin, h) in [
        (64 + 32 * 3, 56),
        (128 + 32 * 6, 28),
        (256 + 32 * 12, 14),
        (512 + 32 * 8, 7),
    ] {
        cases.push(c("121", "1x1", 16, cin, 128, h));
    }
    for h in [56, 28, 14, 7] {
        cases.push(c("121", "3x3", 16, 128, 32, h));
    }
    for h in [14, 7] {
        cases.push(c("121", "3x3 bcast", 16, 128, 32, h));
    }
    cases.push(c("121", "trans 1x1", 16, 256, 128, 56));
    cases.push(c("121", "stem", 16, 3, 64, 224));
    // BC-100-12: bottleneck at the end of block 1 (24 + 16·12 inputs), 4k → k 3×3
    cases.push(c("BC100", "1x1", 64, 216, 48, 32));
    cases.push(c("BC100", "3x3", 64, 48, 12, 32));
    cases
}

/// Floats that `efficiency` time at full repetitions: a case larger (inputs + outputs per
/// pass) is timed fewer times, to keep the benchmark near a minute on 2 cores.
const EFF_BIG: usize = 8 << 20;

/// GFLOP/s of each kernel on the main shapes of densenet121 and DenseNet-BC-100-12, forward
/// and backward (input + weight gradients), at 1 and 2 threads, as a fraction of this
/// machine's FP32 peak ([`densenet::kernels::peak`]): the nominal one (from the flags and
/// the clock the OS reports) and the rate a loop of FMAs measured on the same threads
/// (`measured_peak_fraction`; a boosting core runs above the nominal clock, an AVX-512
/// licence below it). The 1×1 rows time the fused
/// BN-ReLU + 1×1 that training runs (`fused::forward` with `no_alloc`, `fused::backward`
/// with its pending dX) and the 3×3 rows the direct kernel with its BN-ReLU input, as a
/// dense layer's `conv2`; only the products' FLOPs count (2 per multiply-add, twice that
/// for a backward). Best of 5 after one warm-up (3 for big shapes). With `JSON=1`, one
/// JSON object per kernel, shape and thread count instead of text.
fn efficiency() {
    let table = kernels::active().name;
    let isa = kernels::active().isa;
    let json = json();
    let cpu = cpu_model();
    // one pool, one nominal peak and one measured peak per thread count
    let pools: Vec<_> = [1, 2]
        .map(|t| {
            let pool = pool(t);
            let measured = pool.install(|| densenet::kernels::peak::measured_gflops(0.3));
            (peak(t, isa), pool, measured)
        })
        .into();
    for (p, _, measured) in &pools {
        note(&format!(
            "peak {}t: {:.1} GFLOP/s = {} threads x {} FMA units x {} lanes x 2 x {:.3} GHz ({}); \
             an FMA loop measured {}",
            p.threads,
            p.gflops(),
            p.threads,
            p.fma_units,
            p.lanes,
            p.ghz,
            p.ghz_source,
            measured.map_or("n/a".into(), |g| format!("{g:.1} GFLOP/s"))
        ));
    }
    for case in efficiency_cases() {
        let EffCase {
            model,
            kind,
            n,
            cin,
            cout,
            h,
        } = case;
        let shape = format!("i{cin} o{cout} {h}x{h} n{n}");
        let len = n * h * h;
        let reps = if (cin + cout) * len > EFF_BIG { 3 } else { 5 };
        // (seconds forward, seconds backward) per pool of `run(backward)`
        let time = |run: &mut (dyn FnMut(bool) + Send)| -> Vec<(f64, f64)> {
            let mut one = |pool: &rayon::ThreadPool| {
                pool.install(|| {
                    let f = best_secs(1, reps, || run(false));
                    (f, best_secs(1, reps, || run(true)))
                })
            };
            pools.iter().map(|(_, pool, _)| one(pool)).collect()
        };
        // and the FLOPs of one forward
        let (times, flops) = if kind == "3x3" {
            let s = conv3x3_shape(n, cin, cout, h);
            if !conv3x3::applies_data(&s) {
                note(&format!(
                    "{model} {kind} {shape}: no direct kernel in this table"
                ));
                continue;
            }
            // scratch as a training plan sizes it: 4 Mi floats of im2col columns; the direct
            // kernels (the efficiency of a kernel; `winograd` compares the routes)
            let chunk = ((4 << 20) / s.col_per_sample()).max(1);
            let mut c = Conv3x3Case::new(s, chunk, true);
            let times = time(&mut |bwd| {
                if bwd {
                    c.backward(false)
                } else {
                    c.forward(false)
                }
            });
            (times, c.flops())
        } else if kind == "3x3 bcast" || kind == "stem" {
            let s = if kind == "stem" {
                ConvShape {
                    k: 7,
                    stride: 2,
                    pad: 3,
                    ..conv3x3_shape(n, cin, cout, h)
                }
            } else {
                conv3x3_shape(n, cin, cout, h)
            };
            if kernels::active().direct.is_none() {
                note(&format!("{model} {kind} {shape}: no kernel in this table"));
                continue;
            }
            // the stem's scratch as a plan sizes it: one sample's im2col (11 padded samples)
            let stem = kind == "stem";
            let mut c = Conv3x3Case::new(s, if stem { 1 } else { n }, !stem);
            let times = time(&mut |bwd| {
                if bwd {
                    return;
                }
                if !stem {
                    let bn = Conv3x3Case::bn(&c.scale_shift);
                    conv3x3::forward_broadcast(&mut c.y, &c.x, bn, &c.w, &c.s, &mut c.col);
                } else {
                    let ok = broadcast::forward_padded(&mut c.y, &c.x, &c.w, &c.s, &mut c.col);
                    assert!(ok, "stem: col holds a padded sample");
                }
            });
            (times, c.flops())
        } else {
            let mut c = FusedCase::new(cout, cin, len);
            let times = time(&mut |bwd| if bwd { c.backward() } else { c.forward(true) });
            (times, c.flops())
        };
        let forward_only = kind == "3x3 bcast" || kind == "stem";
        for (dir, passes) in [("fwd", 1.0), ("bwd", 2.0)] {
            if forward_only && dir == "bwd" {
                continue;
            }
            let mut text = format!("{model:5} {kind:9} {dir} {shape:22}");
            for ((p, _, measured), &(f, b)) in pools.iter().zip(&times) {
                let (t, secs) = (p.threads, if dir == "fwd" { f } else { b });
                let gflops = passes * flops / secs / 1e9;
                let frac = gflops / p.gflops();
                let mfrac = measured.map(|m| gflops / m);
                if json {
                    let row = serde_json::json!({
                        "kernel": format!("{kind} {dir}"),
                        "shape": format!("{model} {shape}"),
                        "threads": t,
                        "gflops": (gflops * 100.0).round() / 100.0,
                        "peak_fraction": (frac * 1000.0).round() / 1000.0,
                        "measured_peak_fraction": mfrac.map(|f| (f * 1000.0).round() / 1000.0),
                        "cpu": cpu,
                        "kernels": table,
                    });
                    println!("{row}");
                } else {
                    let m = mfrac.map_or("  n/a".into(), |f| format!("{:3.0}%", f * 100.0));
                    text += &format!("  {t}t {gflops:6.1} ({:3.0}% / {m})", frac * 100.0);
                }
            }
            if !json {
                println!("{text}");
            }
        }
    }
}

/// The 3×3 routes side by side on densenet121's dense-layer shape (128 → 32) and
/// BC-100's (48 → 12), 2 threads: the direct kernel (`forward_direct`,
/// `backward_direct`) against Winograd F(2×2, 3×3) and F(4×4, 3×3) for the forward and
/// the input gradient (`kernels::winograd`; the weight gradient stays direct),
/// alternating, 9 rounds. Prints each route's best time, the median per-round time ratio
/// to direct, and the tile the route takes (`ops::route`, whose Winograd thresholds come
/// from these).
fn winograd() {
    use densenet::kernels::winograd as wino;
    let p = pool(2);
    for (n, ci, co, h) in [
        (1usize, 128usize, 32usize, 56usize),
        (1, 128, 32, 28),
        (1, 128, 32, 14),
        (1, 128, 32, 7),
        (16, 128, 32, 56),
        (16, 128, 32, 28),
        (16, 128, 32, 14),
        (16, 128, 32, 7),
        (64, 48, 12, 32),
        (64, 3, 24, 32),
    ] {
        let s = conv3x3_shape(n, ci, co, h);
        if !wino::applies(&s) {
            println!("{ci}->{co} {h}x{h} n{n}: (Winograd does not apply with these kernels)");
            continue;
        }
        let chunk = n.min(4);
        let mut case = Conv3x3Case::new(s, chunk, true);
        let mut wcol = vec![0f32; wino::scratch_len(&s, chunk)];
        let ds = wino::data_shape(&s);
        let mut dcol = vec![0f32; wino::scratch_len(&ds, n)];
        let reps = if n == 1 { 20 } else { 2 };
        let time = |f: &mut (dyn FnMut() + Send)| p.install(|| best_secs(1, reps, f));
        let mut rows = vec![];
        for bwd in [false, true] {
            if bwd && !wino::applies(&ds) {
                continue;
            }
            // direct, F(2×2), F(4×4), alternating; best times and median ratios to direct
            let (mut best, mut ratios) = ([f64::MAX; 3], [vec![], vec![]]);
            for _ in 0..9 {
                let direct = time(&mut || {
                    if bwd {
                        case.backward(false)
                    } else {
                        case.forward(false)
                    }
                });
                let mut wg = |r: usize| {
                    time(&mut || {
                        if bwd {
                            let (dx, y, w) = (&mut case.dx, &case.y, &case.w);
                            assert!(wino::backward_data(dx, y, w, &s, r, &mut dcol));
                            // the weight gradient as the direct arm has it: of the BN-ReLU
                            let bn = Conv3x3Case::bn(&case.scale_shift);
                            let dw = &mut case.dw;
                            let (y, x, w, col) = (&case.y, &case.x, &case.w, &mut case.col);
                            conv3x3::backward_direct(None, dw, y, x, bn, w, &s, col);
                        } else {
                            let bn = Conv3x3Case::bn(&case.scale_shift);
                            let (y, x, w) = (&mut case.y, &case.x, &case.w);
                            assert!(wino::forward(y, x, bn, w, &s, r, &mut wcol));
                        }
                    })
                };
                let (f2, f4) = (wg(2), wg(4));
                best = [best[0].min(direct), best[1].min(f2), best[2].min(f4)];
                ratios[0].push(f2 / direct);
                ratios[1].push(f4 / direct);
            }
            let median = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let [r2, r4] = ratios.each_mut().map(median);
            let r = case.routes();
            let picked = match if bwd { r.input_grad } else { Some(r.forward) } {
                Some(Route::Winograd { tile }) => tile.to_string(),
                other => format!("{other:?}"),
            };
            rows.push(format!(
                "{} direct {:8.1} us, F(2x2) {:8.1} us ({r2:.2}), F(4x4) {:8.1} us ({r4:.2}), route {picked}",
                if bwd { "bwd" } else { "fwd" },
                best[0] * 1e6,
                best[1] * 1e6,
                best[2] * 1e6,
            ));
        }
        println!(
            "{ci:>3}->{co:<2} {h:>2}x{h:<2} n{n:<2}  {}",
            rows.join("   ")
        );
    }
}

/// The batch-1 densenet121 1×1 shapes (and its transitions) of an evaluation, through
/// both routes of `fused::forward`: the `gemm` crate (what evaluation takes above
/// `DIRECT_1X1_MAX_OUTPUTS` outputs) and the direct kernel (what training takes), on 2
/// threads (`T=1` for one), alternating, medians of 15 rounds of 5 calls.
fn pointwise_routes() {
    let threads = std::env::var("T").map_or(2, |v| v.parse().unwrap_or(2));
    let pool = pool(threads);
    note(&format!("{threads} threads"));
    for (o, i, len) in [
        (128, 96, 3136),
        (128, 224, 3136),
        (128, 256, 3136),
        (128, 480, 784),
        (256, 512, 784),
        (128, 640, 196),
        (128, 992, 196),
        (512, 1024, 196),
        (128, 768, 49),
        (128, 992, 49),
    ] {
        let mut c = FusedCase::new(o, i, len);
        let mut ts = [vec![], vec![]];
        pool.install(|| {
            for _ in 0..3 {
                c.forward(false);
                c.forward(true);
            }
            for _ in 0..15 {
                for (direct, t) in ts.iter_mut().enumerate() {
                    let s = Instant::now();
                    for _ in 0..5 {
                        c.forward(direct == 1);
                    }
                    t.push(s.elapsed().as_secs_f64() / 5.0);
                }
            }
        });
        let [g, d] = ts.map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        });
        println!(
            "1x1 o{o} i{i} len{len}: gemm {:.1}, direct {:.1} GFLOP/s; direct/gemm time {:.2}",
            c.flops() / g / 1e9,
            c.flops() / d / 1e9,
            d / g
        );
    }
}

/// The three routes of the 3×3 forward on densenet121's dense-layer shape (128 → 32, with
/// its BN-ReLU input) at every plane size: the direct kernel (positions in the vector),
/// [`densenet::kernels::broadcast`] (output channels in the vector) and what
/// `conv3x3::forward` picks (Winograd, broadcast or direct), alternating, medians of 9
/// rounds. `N=16` for batch 16 (default 1), `T=1` for one thread; the thresholds of
/// `broadcast::preferred` come from these.
fn conv3x3_routes() {
    let var = |name: &str, default: usize| {
        std::env::var(name).map_or(default, |v| v.parse().unwrap_or(default))
    };
    let (threads, n) = (var("T", 2), var("N", 1));
    let pool = pool(threads);
    note(&format!("{threads} threads, batch {n}"));
    for h in [56, 28, 14, 7] {
        let mut c = Conv3x3Case::new(conv3x3_shape(n, 128, 32, h), n, true);
        // about 20 M positions·calls per round
        let reps = (20_000_000 / (h * h * n)).clamp(2, 200);
        let routed = c.routes().forward;
        let routes = [Route::Direct3x3, Route::Broadcast3x3, routed];
        let mut ts = [vec![], vec![], vec![]];
        pool.install(|| {
            for _ in 0..9 {
                for (&r, t) in routes.iter().zip(ts.iter_mut()) {
                    let start = Instant::now();
                    for _ in 0..reps {
                        let bn = Conv3x3Case::bn(&c.scale_shift);
                        let (y, x, w, s) = (&mut c.y, &c.x, &c.w, &c.s);
                        assert!(conv::conv3x3_routed(y, x, bn, w, s, r, &mut c.col));
                    }
                    t.push(start.elapsed().as_secs_f64() / reps as f64);
                }
            }
        });
        let [d, b, r] = ts.map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        });
        let g = |t: f64| c.flops() / t / 1e9;
        println!(
            "3x3 {h}x{h}: direct {:7.1} us {:5.1} GFLOP/s, broadcast {:7.1} us {:5.1}, \
             routed {:7.1} us {:5.1}; broadcast/direct {:.2}, broadcast/routed {:.2}",
            d * 1e6,
            g(d),
            b * 1e6,
            g(b),
            r * 1e6,
            g(r),
            b / d,
            b / r
        );
    }
}

/// The ImageNet stem (7×7, stride 2, 3 → 64 at 224×224), both routes of each direction,
/// alternating, medians of 9. Forward, through `conv::conv_forward`: with no `col` it
/// forms im2col tiles for the direct 1×1 kernel; with one it pads the input there and
/// takes `broadcast::forward_padded` (output channels in the vector). Weight gradient:
/// `conv::im2col_backward` (im2col + GEMM) against `broadcast::weight_grad_padded`.
/// `N=16` for batch 16.
fn stem_routes() {
    let n: usize = std::env::var("N").map_or(1, |v| v.parse().unwrap_or(1));
    let pool = pool(2);
    let s = ConvShape {
        n,
        cin: 3,
        cout: 64,
        h: 224,
        w: 224,
        k: 7,
        stride: 2,
        pad: 3,
    };
    let x: Vec<f32> = (0..3 * n * 224 * 224)
        .map(|i| (i % 7) as f32 * 0.1)
        .collect();
    let w = vec![0.01f32; 64 * 147];
    let mut y = vec![0f32; 64 * n * 112 * 112];
    let padded = route::choose(&s, Reads::Stored, true);
    let mut col = vec![0f32; conv::col_len(&s, &padded, 1)];
    let dy: Vec<f32> = (0..64 * n * 112 * 112)
        .map(|i| (i % 5) as f32 * 0.01)
        .collect();
    let mut dw = vec![0f32; 64 * 147];
    let mut big = vec![0f32; s.col_per_sample()];
    // forward: tiles, padded; weight gradient: im2col, padded
    let mut ts = [vec![], vec![], vec![], vec![]];
    pool.install(|| {
        for _ in 0..9 {
            for (route, t) in ts.iter_mut().enumerate() {
                let start = Instant::now();
                match route {
                    0 => conv::conv_forward(&mut y, &x, &w, &s, Route::Im2colTiles, &mut []),
                    1 => conv::conv_forward(&mut y, &x, &w, &s, Route::BroadcastPadded, &mut col),
                    2 => conv::im2col_backward(None, Some(&mut dw), &dy, &x, &w, &s, &mut big),
                    _ => {
                        let ok = broadcast::weight_grad_padded(&mut dw, &dy, &x, &s, &mut col);
                        assert!(ok, "stem: col holds a padded sample");
                    }
                }
                t.push(start.elapsed().as_secs_f64());
            }
        }
    });
    let [tiles, padded, im2col, dw_padded] = ts.map(|mut t| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    });
    let g = |t: f64| 2.0 * s.macs() as f64 / t / 1e9;
    println!(
        "stem batch {n} forward: im2col tiles {:.2} ms ({:.1} GFLOP/s), padded broadcast \
         {:.2} ms ({:.1}); broadcast/tiles {:.2}",
        tiles * 1e3,
        g(tiles),
        padded * 1e3,
        g(padded),
        padded / tiles
    );
    println!(
        "stem batch {n} weight gradient: im2col + GEMM {:.2} ms ({:.1} GFLOP/s), padded \
         broadcast {:.2} ms ({:.1}); broadcast/im2col {:.2}",
        im2col * 1e3,
        g(im2col),
        dw_padded * 1e3,
        g(dw_padded),
        dw_padded / im2col
    );
}
