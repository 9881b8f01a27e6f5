//! The bf16 1×1 product (`kernels::bf16`) against the f32 kernels the engine runs today,
//! one thread, on densenet121's 1×1 shapes at batch 1 and 16:
//!
//! ```text
//! cargo bench --bench bf16
//! ```
//!
//! Prints per shape the f32 direct kernel's and the `gemm` crate's time, each bf16
//! kernel's with and without the conversion of X into the pair layout, and the ratio of
//! the bf16 time (conversion included) to the faster f32 one. Not a correctness test
//! (`kernels::bf16`'s tests are); the CPU comes first, since every figure depends on it.

use densenet::kernels::bf16;
use densenet::kernels::conv1x1::pointwise;
use densenet::kernels::gemm::{sgemm, Mat};
use std::time::Instant;

/// Median seconds of `reps` calls of `f`, over 7 rounds.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..7)
        .map(|_| {
            let s = Instant::now();
            for _ in 0..reps {
                f();
            }
            s.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[3]
}

fn main() {
    let cpu = densenet::kernels::peak::cpu_model();
    use bf16::Products;
    let kernels: Vec<Products> = [Products::Avx512Bf16, Products::Amx]
        .into_iter()
        .filter(|p| p.runs())
        .collect();
    println!("{cpu}; bf16 kernels: {kernels:?}");
    if kernels.is_empty() {
        println!("SKIPPED: the bf16 kernel would be the portable reference");
        return;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    println!("kernel          O    I     len   f32 direct     f32 gemm   bf16+form  bf16 alone  bf16÷f32  GFLOP/s bf16");
    pool.install(|| {
        for (i_n, len) in [
            (64, 3136),
            (256, 3136),
            (128, 784),
            (512, 784),
            (256, 196),
            (1024, 196),
            (512, 49),
            (1024, 49),
            (256, 16 * 784),
            (512, 16 * 196),
        ] {
            let o_n = 128;
            let w: Vec<f32> = (0..o_n * i_n).map(|k| (k % 13) as f32 * 0.01 - 0.06).collect();
            let x: Vec<f32> = (0..i_n * len).map(|k| (k % 17) as f32 * 0.1 - 0.8).collect();
            let mut y = vec![0f32; o_n * len];
            let flops = 2.0 * (o_n * i_n * len) as f64;
            let reps = (2e8 / flops).ceil() as usize;
            let direct = time(reps, || pointwise(&mut y, &x, &w, o_n, i_n, len, false));
            let gemm = time(reps, || {
                sgemm(o_n, len, i_n, &mut y, len, false, Mat::n(&w, i_n), Mat::n(&x, len))
            });
            for &p in &kernels {
                let mut wp = vec![0u32; p.weight_len(o_n, i_n, 1)];
                p.pack_weights(&mut wp, &w, o_n, i_n, 1);
                let ld = p.tile_ld(len);
                let mut x2 = vec![0u32; p.tile_rows(i_n) * ld];
                // SAFETY: y holds o_n rows of len; x2 and wp are packed for these shapes
                let run = |y: &mut [f32], x2: &[u32]| unsafe {
                    p.product(y.as_mut_ptr(), len, &wp, (x2, 0, ld), &[0], (0, o_n), i_n, len)
                };
                let formed = time(reps, || {
                    bf16::stored_pairs(&mut x2, ld, &x, i_n, len, 0, len);
                    p.pad_tile(&mut x2, ld, i_n, len);
                    run(&mut y, &x2);
                });
                let alone = time(reps, || run(&mut y, &x2));
                println!(
                    "{:<12} {o_n:>4} {i_n:>4} {len:>7} {:>9.1} us {:>9.1} us {:>9.1} us {:>9.1} us {:>8.2}× {:>8.0}",
                    format!("{p:?}"),
                    direct * 1e6,
                    gemm * 1e6,
                    formed * 1e6,
                    alone * 1e6,
                    formed / direct.min(gemm),
                    flops / alone / 1e9
                );
            }
        }
        // the 3×3's product over the window's 9 taps on zero-padded planes (densenet121's
        // 128 → 32; `bench infer --profile` times the whole 3×3, forming included)
        println!("kernel       3×3 128→32   positions  product  GFLOP/s");
        for (side, batch) in [(56usize, 1usize), (28, 1), (14, 1), (7, 1), (56, 4), (14, 16), (7, 16)] {
            let (o_n, i_n) = (32, 128);
            let wp_ = side + 2;
            let plane = wp_ * wp_;
            let ld = (2 * (wp_ + 1) + batch * plane + 16).div_ceil(16) * 16;
            let taps: [isize; 9] =
                std::array::from_fn(|t| ((t / 3) as isize - 1) * wp_ as isize + (t % 3) as isize - 1);
            let span = batch * plane - 2 * (wp_ + 1);
            let flops = 2.0 * (o_n * i_n * 9 * batch * side * side) as f64;
            let w: Vec<f32> = (0..o_n * i_n * 9).map(|k| (k % 13) as f32 * 0.01 - 0.06).collect();
            let reps = (2e8 / flops).ceil() as usize;
            for &p in &kernels {
                let mut wp = vec![0u32; p.weight_len(o_n, i_n, 9)];
                p.pack_weights(&mut wp, &w, o_n, i_n, 9);
                let planes = vec![0x3f80_3f80u32; p.tile_rows(i_n) * ld];
                let mut out = vec![0f32; o_n * span];
                let alone = time(reps, || unsafe {
                    // SAFETY: out holds o_n rows of span; the planes hold every tap's reads
                    p.product(out.as_mut_ptr(), span, &wp, (&planes, 2 * (wp_ + 1), ld), &taps, (0, o_n), i_n, span)
                });
                println!(
                    "{:<12} {batch:>2}×{side:>2}² {span:>11} {:>9.1} us {:>7.0}",
                    format!("{p:?}"),
                    alone * 1e6,
                    flops / alone / 1e9,
                );
            }
        }
    });
}
