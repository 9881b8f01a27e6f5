//! Inputs and comparisons shared by the kernel and operation unit tests.

/// Writes `line` to the test process's stderr handle itself: the harness captures the
/// `eprintln!` of a passing test, and a SKIPPED line must reach CI's log.
pub(crate) fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// `n` deterministic values in [−1, 1) (a multiplicative hash of the index and `seed`).
pub(crate) fn data(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 2654435761 + seed * 97) % 1000) as f32 / 500.0) - 1.0)
        .collect()
}

/// Elementwise `|a − b| < 1e-4·(1 + |b|)`, naming the first element that differs.
pub(crate) fn close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() < 1e-4 * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

/// A 3×3 convolution, stride 1, padding 1, of `cin` → `cout` channels on `n` samples of
/// `h`×`w`.
pub(crate) fn shape3x3(n: usize, cin: usize, cout: usize, h: usize, w: usize) -> super::ConvShape {
    super::ConvShape {
        n,
        cin,
        cout,
        h,
        w,
        k: 3,
        stride: 1,
        pad: 1,
    }
}

/// Runs `f` on a pool of `threads` threads (the tests that split work by thread count).
pub(crate) fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a test's thread pool")
        .install(f)
}
