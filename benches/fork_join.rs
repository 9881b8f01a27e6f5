//! What the engine's persistent team (`util::team`, the OpenMP model of ONNX Runtime and
//! oneDNN) saves over rayon's fork-join per parallel region: `cargo bench --bench
//! fork_join` prints the cost of one 2-thread region both ways, for halves of 0 to 50 µs
//! of work.

use std::time::Instant;

fn main() {
    fork_join();
}

/// The cost of one parallel region on 2 threads, rayon's fork-join (a 2-item `par_iter`
/// on the pool the engine uses, the caller as worker 0) against `util::team::run` (members
/// that wait spinning), for halves of 0 to 50 µs of arithmetic: each region's wall time
/// minus one half's time alone, medians of 9 rounds of 2,000 regions. `bench infer
/// --profile` and a count of regions per pass say how much of a batch-1 pass that is.
fn fork_join() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    // about `us` microseconds of dependent arithmetic
    fn spin_work(iters: u64) -> f32 {
        let mut x = 1.0f32;
        for i in 0..iters {
            x = x * 0.999_99 + (i & 7) as f32 * 1e-6;
        }
        x
    }
    let sink = Arc::new(AtomicU64::new(0));
    // calibrate: iterations per microsecond
    let t = Instant::now();
    let probe = spin_work(2_000_000);
    let per_us = (2_000_000.0 / (t.elapsed().as_secs_f64() * 1e6)).max(1.0);
    sink.fetch_add(probe.to_bits() as u64 & 1, Ordering::Relaxed);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .use_current_thread()
        .build()
        .unwrap();
    let regions = 2_000;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for us in [0.0f64, 2.0, 10.0, 50.0] {
        let iters = (us * per_us) as u64;
        let alone = median(
            (0..9)
                .map(|_| {
                    let t = Instant::now();
                    for _ in 0..regions {
                        sink.fetch_add(spin_work(iters).to_bits() as u64 & 1, Ordering::Relaxed);
                    }
                    t.elapsed().as_secs_f64() / regions as f64
                })
                .collect(),
        );
        let (mut rayon_t, mut team_t) = (vec![], vec![]);
        for _ in 0..9 {
            let s = sink.clone();
            let t = Instant::now();
            pool.install(|| {
                for _ in 0..regions {
                    use rayon::prelude::*;
                    (0..2usize).into_par_iter().for_each(|_| {
                        s.fetch_add(spin_work(iters).to_bits() as u64 & 1, Ordering::Relaxed);
                    });
                }
            });
            rayon_t.push(t.elapsed().as_secs_f64() / regions as f64);
            let s = sink.clone();
            let t = Instant::now();
            pool.install(|| {
                for _ in 0..regions {
                    densenet::util::team::run(2, |_| {
                        s.fetch_add(spin_work(iters).to_bits() as u64 & 1, Ordering::Relaxed);
                    });
                }
            });
            team_t.push(t.elapsed().as_secs_f64() / regions as f64);
        }
        let (r, m) = (median(rayon_t), median(team_t));
        println!(
            "halves of {us:>4.0} us: alone {:7.2} us; region rayon {:7.2} us (+{:.2}), team {:7.2} us (+{:.2})",
            alone * 1e6,
            r * 1e6,
            (r - alone) * 1e6,
            m * 1e6,
            (m - alone) * 1e6
        );
    }
    println!("(sink {})", sink.load(Ordering::Relaxed) % 2);
}
