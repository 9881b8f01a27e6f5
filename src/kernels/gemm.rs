//! Matrix products: a safe, bounds-checked front to the `gemm` crate's f32 kernels.
//!
//! All matrices are row-major with a leading dimension; a transposed operand is read
//! through swapped strides, never copied. The `gemm` crate packs and blocks for the cache
//! and spreads large products over rayon's threads: on a 2-core Zen 3, 90–135 GFLOP/s for
//! DenseNet's 1×1 shapes on 2 threads, 158–162 for a square 1024 product (`cargo bench
//! --bench shapes` measures the shapes).

pub use gemm_common::Parallelism;

/// One operand: a row-major matrix `rows × cols` stored with leading dimension `ld`,
/// read transposed when `trans` is set (then the stored matrix is `cols × rows`).
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    /// Storage.
    pub data: &'a [f32],
    /// Distance between consecutive stored rows.
    pub ld: usize,
    /// Read the stored matrix transposed.
    pub trans: bool,
}

impl<'a> Mat<'a> {
    /// A plain row-major matrix with leading dimension `ld`.
    pub fn n(data: &'a [f32], ld: usize) -> Self {
        Mat {
            data,
            ld,
            trans: false,
        }
    }
    /// The transpose of a stored row-major matrix with leading dimension `ld`.
    pub fn t(data: &'a [f32], ld: usize) -> Self {
        Mat {
            data,
            ld,
            trans: true,
        }
    }
    /// (row stride, column stride) of the logical matrix.
    fn strides(&self) -> (isize, isize) {
        if self.trans {
            (1, self.ld as isize)
        } else {
            (self.ld as isize, 1)
        }
    }
    /// Panics unless a logical `rows × cols` matrix fits in the storage.
    fn check(&self, rows: usize, cols: usize, what: &str) {
        if rows == 0 || cols == 0 {
            return;
        }
        let (rs, cs) = self.strides();
        let last = (rows - 1) * rs as usize + (cols - 1) * cs as usize;
        assert!(
            last < self.data.len(),
            "gemm: {what} ({rows}×{cols}, ld {}) needs {} floats, has {}",
            self.ld,
            last + 1,
            self.data.len()
        );
    }
}

/// The micro-kernels the `gemm` crate runs on this CPU: `avx512` (with the `gemm-avx512`
/// feature, on by default, where the CPU has AVX-512F), `fma` (AVX2 and FMA), or `scalar`.
/// It mirrors the crate's own choice (`gemm-common`'s `init_gemm_fn`), which it does not expose.
pub fn micro_kernels() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        #[cfg(feature = "gemm-avx512")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("fma") {
            return "fma";
        }
        "scalar"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        "other"
    }
}

/// `C[m×n] = (C if accumulate) + A[m×k] · B[k×n]`; C is row-major with leading dimension `ldc`.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * ldc + n <= c.len(),
        "gemm: C ({m}×{n}, ld {ldc}) does not fit in {} floats",
        c.len()
    );
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(0.0);
            }
        }
        return;
    }
    a.check(m, k, "A");
    b.check(k, n, "B");
    if m * n * k <= SMALL {
        return small(m, n, k, c, ldc, accumulate, a, b);
    }
    // Products under ~1 MFLOP finish before threads would wake up.
    let threads = rayon::current_num_threads();
    let parallel = threads > 1 && m * n * k >= 1 << 18;
    if parallel && k_split_pays(m, n, k) {
        return sgemm_k_split(m, n, k, c, ldc, accumulate, a, b, threads);
    }
    if parallel && row_split_pays(m, n) {
        // SAFETY: `c` holds the m×n block (asserted above) and, borrowed mutably, cannot
        // alias `a` or `b`.
        return unsafe {
            raw_ptr_row_split(m, n, k, c.as_mut_ptr(), ldc, accumulate, a, b, threads)
        };
    }
    if parallel {
        // the rest by columns on the team (in-process A/B against the `gemm` crate's own
        // rayon split, 2 threads, Zen 4: densenet121 training at batch 16 0.952,
        // evaluation at batch 1 0.988–0.992, at batch 16 1.002, BC-100 training 0.990)
        // SAFETY: as above
        return unsafe {
            raw_ptr_col_split((m, n, k), c.as_mut_ptr(), ldc, accumulate, a, b, threads)
        };
    }
    raw(m, n, k, c, ldc, accumulate, a, b, Parallelism::None);
}

/// Where part `j` of `parts` of `total` rows or columns starts: cut at a multiple of
/// `unit`, the last part ending at `total`.
fn cut(total: usize, j: usize, parts: usize, unit: usize) -> usize {
    if j == parts {
        total
    } else {
        total * j / parts / unit * unit
    }
}

/// [`raw_ptr`] with C's columns split over the team: part j takes columns
/// `j·n/parts .. (j+1)·n/parts` (rounded to 16), each a serial product of the `gemm`
/// crate. A region on the team costs less than the crate's own rayon split (`util::team`).
///
/// # Safety
/// As [`raw_ptr`].
unsafe fn raw_ptr_col_split(
    (m, n, k): (usize, usize, usize),
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    threads: usize,
) {
    b.check(k, n, "B");
    let parts = threads.min(n.div_ceil(16)).max(1);
    let cut = |j| cut(n, j, parts, 16);
    let (_, bcs) = b.strides();
    let cp = crate::util::par::SyncPtr(c);
    crate::util::team::run(parts, |j| {
        let (c0, c1) = (cut(j), cut(j + 1));
        if c1 > c0 {
            let bj = Mat {
                data: &b.data[c0 * bcs as usize..],
                ..b
            };
            // SAFETY: columns c0..c1 of C are this part's only (the caller's contract)
            unsafe {
                raw_ptr(
                    m,
                    c1 - c0,
                    k,
                    cp.get().add(c0),
                    ldc,
                    accumulate,
                    a,
                    bj,
                    Parallelism::None,
                )
            }
        }
    });
}

/// Whether a parallel product should be split by rows ([`raw_ptr_row_split`]) rather
/// than by columns (measured against the `gemm` crate's own threading, which the column
/// split replaced): few columns (positions), and rows enough for a part per thread. At
/// batch 1, densenet121's 1×1 convolutions at 14×14 and 7×7
/// are 128 × 196 and 128 × 49 products over 256–1024 inputs; the crate's threads ran
/// them 1.09× faster than one thread (Zen 4, 2 threads), where two single-threaded
/// halves nearly double it (`bench infer --ab` at batch 1: 0.949 of a pass's time). At
/// 784 columns the crate's own split is as good (1×1 o128 i480: 186 GFLOP/s on 2 threads,
/// 101 on one).
pub(crate) fn row_split_pays(m: usize, n: usize) -> bool {
    n < 512 && m >= 2 * ROW_PART
}

/// Rows per part of [`raw_ptr_row_split`] are multiples of this: a whole number of the
/// `gemm` crate's register blocks on AVX2 and AVX-512.
const ROW_PART: usize = 16;

/// [`raw_ptr`] as one single-threaded product per thread, each over its own rows of A
/// and C (cut at multiples of [`ROW_PART`]), all reading the whole of B.
///
/// Where B's rows have room for `n` rounded up to a multiple of 16 (the fused 1×1's tile:
/// 196 positions in rows of 256), each part computes that many columns into a scratch
/// and adds or copies the first `n` into C. The `gemm` crate sees our row-major product
/// as its transpose, whose left operand is B; it copies that operand into a packed buffer
/// on every call unless its length is a multiple of the vector width (gemm-common 0.19,
/// `do_prepack_lhs`), so each part copied all of B. `bench infer --ab` at batch 1 (Zen 4,
/// 2 threads): 0.984 and 0.984 (100 and 150 pairs) with `avx512`, 0.983 with `avx2`.
///
/// # Safety
/// As [`raw_ptr`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn raw_ptr_row_split(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    threads: usize,
) {
    for_row_parts(m, k, a, c, threads, |j, parts, c| {
        // SAFETY: part j of C's rows is this task's only (the caller's contract covers C).
        unsafe { row_part(j, parts, (m, n, k), c, ldc, accumulate, a, b) }
    });
}

/// Runs `part(j, parts, c)` for every part `j` of [`raw_ptr_row_split`]'s split of A's
/// `m` rows over `threads`, in parallel, after checking A (`m × k`).
fn for_row_parts(
    m: usize,
    k: usize,
    a: Mat,
    c: *mut f32,
    threads: usize,
    part: impl Fn(usize, usize, *mut f32) + Sync,
) {
    use crate::util::par::OnTeam;
    use rayon::prelude::*;
    a.check(m, k, "A");
    let parts = threads.min(m / ROW_PART).max(1);
    let c = crate::util::par::SyncPtr(c);
    (0..parts)
        .into_par_iter()
        .team_for_each(|j| part(j, parts, c.get()));
}

/// [`raw_ptr_row_split`] where every part first fills its own copy of B (`k` rows of
/// `b_ld ≥ n` floats) with `fill`, in a scratch of its thread: a tile that its own core
/// wrote stays in that core's cache, and the fill needs no parallel region of its own.
///
/// # Safety
/// As [`raw_ptr`], for A, C and a B of `k × n` in rows of `b_ld`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn raw_ptr_row_split_filled(
    (m, n, k): (usize, usize, usize),
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    a: Mat,
    b_ld: usize,
    fill: impl Fn(&mut [f32]) + Sync,
    threads: usize,
) {
    thread_local! {
        /// Per-thread copy of B.
        static B: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    assert!(b_ld >= n);
    for_row_parts(m, k, a, c, threads, |j, parts, c| {
        crate::util::par::with_scratch(&B, k * b_ld, |bb| {
            fill(bb);
            let b = Mat::n(bb, b_ld);
            // SAFETY: part j of C's rows is this task's only (the caller's contract).
            unsafe { row_part(j, parts, (m, n, k), c, ldc, accumulate, a, b) }
        })
    });
}

/// Part `j` of `parts` of [`raw_ptr_row_split`]: rows `cut(j)..cut(j + 1)` of A and C, one
/// single-threaded product (into padded columns where B's rows have room).
///
/// # Safety
/// As [`raw_ptr`]; only this call writes the part's rows of C.
#[allow(clippy::too_many_arguments)]
unsafe fn row_part(
    j: usize,
    parts: usize,
    (m, n, k): (usize, usize, usize),
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
) {
    thread_local! {
        /// Per-thread C of a part's padded columns.
        static PADDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let cut = |j| cut(m, j, parts, ROW_PART);
    let n16 = n.next_multiple_of(16);
    let padded =
        n16 != n && k > 0 && !b.trans && b.ld >= n16 && b.data.len() >= (k - 1) * b.ld + n16;
    let (ars, _) = a.strides();
    let (r0, r1) = (cut(j), cut(j + 1));
    let a = Mat {
        data: &a.data[r0 * ars as usize..],
        ..a
    };
    if padded {
        crate::util::par::with_scratch(&PADDED, (r1 - r0) * n16, |cp| {
            // columns n..n16 of B are whatever its rows hold there: they only reach
            // columns of `cp` that are dropped
            raw(r1 - r0, n16, k, cp, n16, false, a, b, Parallelism::None);
            for (r, row) in cp.chunks_exact(n16).enumerate() {
                // SAFETY: row r0 + r of the caller's C block, this part's only.
                let dst = unsafe { std::slice::from_raw_parts_mut(c.add((r0 + r) * ldc), n) };
                if accumulate {
                    dst.iter_mut().zip(&row[..n]).for_each(|(d, v)| *d += v);
                } else {
                    dst.copy_from_slice(&row[..n]);
                }
            }
        });
        return;
    }
    // SAFETY: rows r0..r1 of the caller's C block are this part's only; `a` holds rows
    // r0..r1 of A (checked by `raw_ptr`).
    unsafe {
        raw_ptr(
            r1 - r0,
            n,
            k,
            c.add(r0 * ldc),
            ldc,
            accumulate,
            a,
            b,
            Parallelism::None,
        )
    }
}

/// Products up to this many multiply-adds (a CIFAR classifier: 64×10×342) take [`small`]:
/// the `gemm` crate allocates its packing buffers on every call, and a training step
/// should allocate nothing after its first run.
const SMALL: usize = 1 << 18;

/// `C (+)= A·B` by plain loops, for products too small for packing to pay.
#[allow(clippy::too_many_arguments)]
fn small(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
) {
    let ((ars, acs), (brs, bcs)) = (a.strides(), b.strides());
    let (ars, acs, brs, bcs) = (ars as usize, acs as usize, brs as usize, bcs as usize);
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f32;
            for p in 0..k {
                acc += a.data[i * ars + p * acs] * b.data[p * brs + j * bcs];
            }
            let cij = &mut c[i * ldc + j];
            *cij = if accumulate { *cij + acc } else { acc };
        }
    }
}

/// Whether a product is a weight gradient's shape: a small `m×n` output summed over a long
/// `k` (dW = dY·Xᵀ: 48×216 summed over 65536 positions). The `gemm` crate splits work
/// over m and n only, so such a product ran on one thread (`cargo bench --bench shapes -- gemm_shapes`: 48×65536·65536×216
/// at 30 GFLOP/s with 1 thread, 34 with 2, under load); splitting k gives each thread
/// its own partial product.
fn k_split_pays(m: usize, n: usize, k: usize) -> bool {
    m * n <= 256 * 256 && k >= 8 * m.max(n)
}

/// `C (+)= A·B` as `threads` single-threaded products over slices of k, summed in a fixed
/// order (first slice straight into C, the others through partial buffers), so the result
/// depends on the thread count only.
#[allow(clippy::too_many_arguments)]
fn sgemm_k_split(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    threads: usize,
) {
    let parts = threads.min(k / 64).max(1);
    let step = k.div_ceil(parts);
    let (_, acs) = a.strides();
    let (brs, _) = b.strides();
    // the slice of A's columns and B's rows p0..p1
    let sub = |p0: usize| {
        let a_off = p0 * acs as usize;
        let b_off = p0 * brs as usize;
        (
            Mat {
                data: &a.data[a_off..],
                ..a
            },
            Mat {
                data: &b.data[b_off..],
                ..b
            },
        )
    };
    let mut partials = vec![0f32; (parts - 1) * m * n];
    rayon::scope(|sc| {
        let mut rest: &mut [f32] = &mut partials;
        for part in 1..parts {
            let (mine, tail) = rest.split_at_mut(m * n);
            rest = tail;
            let p0 = part * step;
            let kk = step.min(k - p0);
            let (sa, sb) = sub(p0);
            sc.spawn(move |_| raw(m, n, kk, mine, n, false, sa, sb, Parallelism::None));
        }
        let (sa, sb) = sub(0);
        raw(m, n, step, c, ldc, accumulate, sa, sb, Parallelism::None);
    });
    for part in partials.chunks_exact(m * n) {
        for i in 0..m {
            let row = &mut c[i * ldc..i * ldc + n];
            row.iter_mut()
                .zip(&part[i * n..(i + 1) * n])
                .for_each(|(c, p)| *c += p);
        }
    }
}

/// `C (+)= A·B` straight through the `gemm` crate with the given parallelism: what
/// [`sgemm`] ends in, without its small-product loops or its k-split. Public for the
/// shape benchmark (`dw_thread_use` sets the crate's own threading against the k-split).
#[allow(clippy::too_many_arguments)]
pub fn raw(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    par: Parallelism,
) {
    assert!(m == 0 || n == 0 || (m - 1) * ldc + n <= c.len());
    a.check(m, k, "A");
    b.check(k, n, "B");
    // SAFETY: `c` holds the m×n block and `a`, `b` their blocks (checked above); `c`,
    // borrowed mutably, cannot alias `a` or `b`.
    unsafe { raw_ptr(m, n, k, c.as_mut_ptr(), ldc, accumulate, a, b, par) }
}

/// [`raw`] into a C given by pointer, for tasks that each write their own columns of one
/// matrix (see [`super::fused`]).
///
/// # Safety
/// `c` must be valid for writes of the `m×n` block with leading dimension `ldc`, and no
/// other thread may access that block during the call; it must not alias `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn raw_ptr(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    par: Parallelism,
) {
    a.check(m, k, "A");
    b.check(k, n, "B");
    let (ars, acs) = a.strides();
    let (brs, bcs) = b.strides();
    // `gemm::gemm` with the f32 kernel called directly: the microkernel prefers a
    // column-major destination, so a row-major product is computed transposed (Cᵀ = Bᵀ·Aᵀ:
    // the operands swap and every stride pair swaps), as that front function does.
    let (dst_cs, dst_rs) = (1isize, ldc as isize);
    let swap = dst_cs.abs() < dst_rs.abs();
    let (m, n, dst_cs, dst_rs, l, l_cs, l_rs, r, r_cs, r_rs) = if swap {
        (n, m, dst_rs, dst_cs, b.data, brs, bcs, a.data, ars, acs)
    } else {
        (m, n, dst_cs, dst_rs, a.data, acs, ars, b.data, bcs, brs)
    };
    // SAFETY: the checks above make sure every element the strides reach lies inside the
    // slices; the caller vouches for `c`.
    unsafe {
        gemm_f32::gemm::f32::get_gemm_fn()(
            m,
            n,
            k,
            c,
            dst_cs,
            dst_rs,
            accumulate,
            l.as_ptr(),
            l_cs,
            l_rs,
            r.as_ptr(),
            r_cs,
            r_rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AVX-512 exactly where the build has `gemm-avx512` and the CPU has AVX-512F: a build
    /// without the feature (`ISA=avx2 bench/compare.sh`) must not report it.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn micro_kernels_follow_the_feature_and_the_cpu() {
        let cpu = std::arch::is_x86_feature_detected!("avx512f");
        let name = micro_kernels();
        assert_eq!(
            name == "avx512",
            cfg!(feature = "gemm-avx512") && cpu,
            "{name}"
        );
        if name != "avx512" {
            assert_eq!(name == "fma", std::arch::is_x86_feature_detected!("fma"));
        }
    }

    fn naive(m: usize, n: usize, k: usize, a: &[f32], ta: bool, b: &[f32], tb: bool) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    s += av as f64 * bv as f64;
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    /// A weight-gradient shape (long k) takes the k-split path with several threads.
    #[test]
    fn k_split_matches_naive() {
        let (m, n, k) = (12, 20, 3001);
        assert!(k_split_pays(m, n, k) && m * n * k >= 1 << 18);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let want = naive(m, n, k, &a, false, &b, true);
        for threads in [1, 2, 3] {
            // C with a leading dimension wider than n: the partial sums must respect it
            let mut c = vec![1.0; m * (n + 3)];
            let (at, bt) = (Mat::n(&a, k), Mat::t(&b, k));
            crate::kernels::testutil::on_threads(threads, || {
                sgemm(m, n, k, &mut c, n + 3, true, at, bt)
            });
            for i in 0..m {
                for j in 0..n {
                    let (x, y) = (c[i * (n + 3) + j], want[i * n + j] + 1.0);
                    assert!(
                        (x - y).abs() < 1e-2 * (1.0 + y.abs()),
                        "{threads}: {x} vs {y}"
                    );
                }
            }
        }
    }

    /// Few columns (batch 1's 1×1 at 7×7) with 1–3 threads: one product per part of A's
    /// rows (m = 72: 32 + 40 rows on 2 threads, 16 + 32 + 24 on 3), C with a leading
    /// dimension wider than n, A read transposed; B in rows of n, and in wider rows that
    /// take the padded columns.
    #[test]
    fn row_split_matches_naive() {
        let (m, n, k) = (72, 49, 300);
        assert!(row_split_pays(m, n) && !k_split_pays(m, n, k) && m * n * k >= 1 << 18);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let want = naive(m, n, k, &a, true, &b, false);
        // the same B in rows of 70 with NaN past column n: room for 64 columns, so each
        // part computes 64 into a scratch (the NaNs must not reach C)
        let ldb = 70;
        let mut wide = vec![f32::NAN; k * ldb];
        for (row, src) in wide.chunks_exact_mut(ldb).zip(b.chunks_exact(n)) {
            row[..n].copy_from_slice(src);
        }
        for (threads, wide_b) in [(1, false), (2, false), (3, false), (2, true), (3, true)] {
            let mut c = vec![1.0; m * (n + 5)];
            let at = Mat::t(&a, m);
            let bn = if wide_b {
                Mat::n(&wide, ldb)
            } else {
                Mat::n(&b, n)
            };
            crate::kernels::testutil::on_threads(threads, || {
                sgemm(m, n, k, &mut c, n + 5, true, at, bn)
            });
            for i in 0..m {
                for j in 0..n + 5 {
                    let x = c[i * (n + 5) + j];
                    // columns past n untouched
                    let y = if j < n { want[i * n + j] + 1.0 } else { 1.0 };
                    assert!(
                        (x - y).abs() < 1e-2 * (1.0 + y.abs()),
                        "{threads} threads, B in rows of {}, C[{i}][{j}]: {x} vs {y}",
                        bn.ld
                    );
                }
            }
        }
    }

    /// Both routes: plain loops below `SMALL` multiply-adds, the `gemm` crate above.
    #[test]
    fn all_transpose_combinations_match_naive() {
        for (m, n, k) in [(37, 53, 29), (70, 90, 61)] {
            assert_eq!(m * n * k <= SMALL, m == 37);
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0)
                .collect();
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let am = if ta { Mat::t(&a, m) } else { Mat::n(&a, k) };
                let bm = if tb { Mat::t(&b, k) } else { Mat::n(&b, n) };
                for accumulate in [true, false] {
                    let mut c = vec![1.0; m * n];
                    sgemm(m, n, k, &mut c, n, accumulate, am, bm);
                    let want = naive(m, n, k, &a, ta, &b, tb);
                    let c0 = if accumulate { 1.0 } else { 0.0 };
                    for (x, y) in c.iter().zip(&want) {
                        assert!(
                            (x - (y + c0)).abs() < 1e-3,
                            "{m} {ta} {tb} {accumulate}: {x} vs {}",
                            y + c0
                        );
                    }
                }
            }
        }
    }
}
