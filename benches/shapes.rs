//! Timing of the kernel shapes a DenseNet training step runs (GEMM, the direct 1×1 and
//! 3×3 kernels, the fused BN-ReLU + 1×1), at 1 and 2 threads:
//!
//! ```text
//! cargo bench --bench shapes              # every benchmark (minutes)
//! cargo bench --bench shapes -- conv3x3   # those whose name contains `conv3x3`
//! ```
//!
//! Not a correctness test; it exists so kernel choices can be re-measured. It prints the
//! CPU and the active kernels table first, since every number depends on both.

use densenet::kernels::conv1x1::{pointwise, pointwise_applies};
use densenet::kernels::gemm::{raw, sgemm, Mat};
use densenet::kernels::{self, conv3x3, BnRelu, ConvShape};
use densenet::ops::{conv, fused, norm};
use std::time::Instant;

/// The benchmarks, by name, in the order they run.
const BENCHES: &[(&str, fn())] = &[
    ("gemm_shapes", gemm_shapes),
    ("dw_thread_use", dw_thread_use),
    ("conv3x3_shapes", conv3x3_shapes),
    ("fused_shapes", fused_shapes),
    ("pointwise_hot_vs_cold", pointwise_hot_vs_cold),
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
    println!("cpu: {}", cpu_model());
    println!("kernels: {}", kernels::active().name);
    for (name, run) in chosen {
        println!("\n== {name}");
        run();
    }
}

/// The `model name` line of /proc/cpuinfo.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
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
    pool(threads).install(|| {
        let mut best = f64::MAX;
        for _ in 0..6 {
            let t = Instant::now();
            sgemm(m, n, k, &mut c, n, true, am, bm);
            best = best.min(t.elapsed().as_secs_f64());
        }
        2.0 * (m * n * k) as f64 / best / 1e9
    })
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
            pool(threads).install(|| {
                let mut best = f64::MAX;
                for _ in 0..6 {
                    let t = Instant::now();
                    pointwise(&mut y, &x, &w, o, i, len, flip);
                    best = best.min(t.elapsed().as_secs_f64());
                }
                2.0 * (o * i * len) as f64 / best / 1e9
            })
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
                        gemm::Parallelism::Rayon(2),
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

/// The direct 3×3 kernel (`kernels::conv3x3::forward` / `backward`) on densenet121's and BC-100's
/// dense-layer shapes, 1 and 2 threads.
fn conv3x3_shapes() {
    let mk = |n, cin, cout, h| ConvShape {
        n,
        cin,
        cout,
        h,
        w: h,
        k: 3,
        stride: 1,
        pad: 1,
    };
    for (what, s, chunk) in [
        ("121 fwd n16 i128 o32 28x28", mk(16, 128, 32, 28), 16),
        ("121 fwd n16 i128 o32 14x14", mk(16, 128, 32, 14), 16),
        ("BC100 fwd n64 i48 o12 32x32", mk(64, 48, 12, 32), 8),
    ] {
        if !conv3x3::applies(&s) {
            println!("{what:32} (no direct kernel in this table)");
            continue;
        }
        let x = vec![0.5f32; s.cin * s.n * s.h * s.w];
        let w = vec![0.25f32; s.cout * s.col_rows()];
        let mut y = vec![0f32; s.cout * s.n * s.h * s.w];
        let mut col = vec![0f32; conv::col_len(&s, chunk)];
        let mut r = |threads, bwd: bool| {
            let pool = pool(threads);
            let mut dx = vec![0f32; x.len()];
            let mut dw = vec![0f32; w.len()];
            pool.install(|| {
                let mut best = f64::MAX;
                for _ in 0..5 {
                    let t = Instant::now();
                    if bwd {
                        conv3x3::backward(Some(&mut dx), &mut dw, &y, &x, None, &w, &s, &mut col);
                    } else {
                        conv3x3::forward(&mut y, &x, None, &w, &s, &mut col);
                    }
                    best = best.min(t.elapsed().as_secs_f64());
                }
                let passes = if bwd { 2.0 } else { 1.0 };
                passes * 2.0 * s.macs() as f64 / best / 1e9
            })
        };
        let (f1, f2, b1, b2) = (r(1, false), r(2, false), r(1, true), r(2, true));
        println!("{what:32} fwd 1t {f1:6.1} 2t {f2:6.1}  bwd 1t {b1:6.1} 2t {b2:6.1} GFLOP/s");
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
        let x = vec![0.5f32; i * len];
        let w = vec![0.25f32; o * i];
        let dy = vec![0.125f32; o * len];
        let (scale, shift) = (vec![1.5f32; i], vec![-0.25f32; i]);
        let bn = BnRelu {
            scale: &scale,
            shift: &shift,
        };
        let mut y = vec![0f32; o * len];
        let mut a = vec![0f32; i * len];
        let mut dw = vec![0f32; o * i];
        let (mut dx, mut da) = (vec![0f32; i * len], vec![0f32; i * len]);
        let (mean, rstd, gamma) = (vec![0.1f32; i], vec![1.2f32; i], vec![0.9f32; i]);
        let (mut dg, mut db) = (vec![0f32; i], vec![0f32; i]);
        let mut pending = vec![(0f64, 0f64); i];
        let mut best = [f64::MAX; 4];
        pool.install(|| {
            for _ in 0..4 {
                for (v, b) in best.iter_mut().enumerate() {
                    let t = Instant::now();
                    match v {
                        0 => fused::forward(&mut y, &x, &w, bn, o, len, false),
                        1 => {
                            norm::bn_relu_forward(&mut a, &x, &scale, &shift, len);
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
                            conv::conv_forward(&mut y, &a, &w, &s, &mut []);
                        }
                        2 => {
                            let g = fused::Grads {
                                dx: &mut dx,
                                dw: &mut dw,
                                dgamma: &mut dg,
                                dbeta: &mut db,
                                pending: &mut pending,
                            };
                            let st = fused::BatchStats {
                                mean: &mean,
                                rstd: &rstd,
                                gamma: &gamma,
                            };
                            fused::backward(g, &dy, &x, &w, bn, st, o, len);
                            norm::apply_pending(&mut dx, &x, &mean, &mut pending, len);
                        }
                        _ => {
                            norm::bn_relu_forward(&mut a, &x, &scale, &shift, len);
                            sgemm(
                                o,
                                i,
                                len,
                                &mut dw,
                                i,
                                true,
                                Mat::n(&dy, len),
                                Mat::t(&a, len),
                            );
                            sgemm(
                                i,
                                len,
                                o,
                                &mut da,
                                len,
                                false,
                                Mat::t(&w, i),
                                Mat::n(&dy, len),
                            );
                            norm::bn_relu_backward(
                                &mut dx,
                                &mut dg,
                                &mut db,
                                norm::OutGrad::Dense(&da),
                                &x,
                                &mean,
                                &rstd,
                                &scale,
                                &shift,
                                &gamma,
                                len,
                            );
                        }
                    }
                    *b = b.min(t.elapsed().as_secs_f64());
                }
            }
        });
        let g = |t: f64, passes: f64| passes * 2.0 * (o * i * len) as f64 / t / 1e9;
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
        let mut best = f64::MAX;
        pool.install(|| {
            for _ in 0..6 {
                let t = Instant::now();
                for _ in 0..reps {
                    pointwise(&mut y, &x, &w, o, i, len, false);
                }
                best = best.min(t.elapsed().as_secs_f64() / reps as f64);
            }
        });
        let rate = 2.0 * (o * i * len) as f64 / best / 1e9;
        println!("pointwise o{o} i{i} len{len}: {rate:6.1} GFLOP/s");
    }
}
