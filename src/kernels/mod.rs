//! The CPU's inner loops, with no knowledge of models: the GEMM front ([`gemm`]), the
//! direct 1×1 and 3×3 convolution kernels ([`conv1x1`], [`conv3x3`], over the register
//! blocks of [`correlate`]), the 3×3 as Winograd F(2×2, 3×3) or F(4×4, 3×3)
//! ([`winograd`]) or with output channels in the vector ([`broadcast`]) where either is
//! faster, and the element-wise bodies of batch norm and ReLU ([`norm`]) and of
//! evaluation's pooling ([`pool`]). In evaluation those two 3×3 routes keep their packed
//! weights from one pass to the next ([`prepack`]).
//!
//! **One table, chosen once.** Every instruction-set-specific function is reached through
//! a [`Kernels`] table: [`active`] picks it when the process first asks (the best one this
//! CPU runs, or the one `DENSENET_KERNELS=portable|avx2` names) and keeps it. The
//! operations above ([`crate::ops`]) never ask the CPU themselves, so a new instruction set
//! is one more table, and the portable and the fast path can run on the same machine and
//! be compared (`tests/kernels.rs`, tract's way: every fast kernel against a plain one).
//!
//! - `portable`: the element-wise bodies compiled for the baseline x86-64 target (SSE2) or
//!   any other architecture; no direct convolution kernels, so every convolution takes
//!   im2col + GEMM.
//! - `avx2`: the same element-wise source compiled inside
//!   `#[target_feature(enable = "avx2,fma")]` functions, plus the direct convolution
//!   kernels in AVX2+FMA. Rust never contracts `a*b + c` into an FMA on its own, so the
//!   element-wise bodies give the same bits in every table; the direct kernels sum in
//!   another order than a GEMM and agree to rounding.
//! - `avx512`: the same again with AVX-512F enabled. The direct kernels are the AVX2
//!   ones' source ([`simd`]: one generic source per kernel over the vector type),
//!   instantiated with 16-lane vectors, so a register block covers 32 positions.
//! - `avx512bf16` and `amx`: the `avx512` table (the same f32 kernels, so the same f32
//!   bits), with the bf16 products of `--precision bf16` ([`bf16`]) on `vdpbf16ps` or on
//!   AMX tiles; in the other tables those products run the portable bf16 reference.
//!
//! The `gemm` crate picks its own micro-kernels at run time (AVX-512 ones too: it is built
//! with its `x86-v4` feature); it is the same in every table.

pub mod bf16;
pub mod broadcast;
pub mod conv1x1;
pub mod conv3x3;
pub mod correlate;
pub mod gemm;
pub mod norm;
pub mod peak;
pub mod pool;
pub mod prepack;
pub(crate) mod simd;
#[cfg(test)]
pub(crate) mod testutil;
pub mod winograd;

use crate::util::par::OnTeam;
use std::sync::atomic::{AtomicPtr, Ordering};

/// The geometry of one convolution applied to a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Square kernel size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
}

impl ConvShape {
    /// Output height.
    pub fn ho(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    /// Output width.
    pub fn wo(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    /// Whether the convolution is a plain GEMM on the input (1×1, stride 1, no padding).
    pub fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
    /// Whether the convolution is a 3×3 of stride 1 and padding 1, whose output is its
    /// input's size (a dense layer's): what the 3×3 kernels and routes take.
    pub fn is_same_3x3(&self) -> bool {
        self.k == 3 && self.stride == 1 && self.pad == 1
    }
    /// Rows of the im2col matrix: `Cin·K·K`.
    pub fn col_rows(&self) -> usize {
        self.cin * self.k * self.k
    }
    /// Floats of im2col scratch for one sample.
    pub fn col_per_sample(&self) -> usize {
        self.col_rows() * self.ho() * self.wo()
    }
    /// Samples per im2col chunk for a scratch of `col_len` floats.
    pub(crate) fn chunk(&self, col_len: usize) -> usize {
        (col_len / self.col_per_sample().max(1)).clamp(1, self.n)
    }
    /// Multiply-accumulates for the whole batch.
    pub fn macs(&self) -> usize {
        self.n * self.cout * self.col_rows() * self.ho() * self.wo()
    }
}

/// A per-channel affine map followed by ReLU: `a[i][p] = relu(x[i][p]·scale[i] + shift[i])`
/// (a batch norm folded into `scale` and `shift`), applied by a kernel while it copies its
/// input, so that the BN-ReLU output is never stored.
#[derive(Clone, Copy, Debug)]
pub struct BnRelu<'a> {
    /// Per-channel factor (γ·rstd in training, γ/√(var+ε) in evaluation).
    pub scale: &'a [f32],
    /// Per-channel offset.
    pub shift: &'a [f32],
}

impl<'a> BnRelu<'a> {
    /// The map of the first `c` channels of full-width `scale` and `shift` buffers.
    pub fn first(scale: &'a [f32], shift: &'a [f32], c: usize) -> Self {
        BnRelu {
            scale: &scale[..c],
            shift: &shift[..c],
        }
    }

    /// Writes positions `a..b` of rows `0..i_n` of `A` into `buf[i·ld..][..b − a]`.
    pub fn fill(&self, buf: &mut [f32], ld: usize, x: &[f32], len: usize, a: usize, b: usize) {
        let i_n = self.scale.len();
        for (i, row) in buf.chunks_mut(ld).take(i_n).enumerate() {
            // the row two channels on: rows are `len` floats apart and a tile reads only
            // `b − a` of each, too short for the hardware prefetcher to find the stream
            // before it ends
            if i + 2 < i_n {
                prefetch(x[(i + 2) * len + a..].as_ptr(), b - a);
            }
            self.fill_row(row, x, len, i, a, b);
        }
    }

    /// [`BnRelu::fill`] with the rows shared among the threads of the pool: for a tile
    /// that is the only one (batch 1 at 14×14 and 7×7), whose GEMM is parallel itself.
    pub fn fill_par(&self, buf: &mut [f32], ld: usize, x: &[f32], len: usize, a: usize, b: usize) {
        use rayon::prelude::*;
        let i_n = self.scale.len();
        buf[..i_n * ld]
            .par_chunks_mut(ld)
            .with_min_len(i_n.div_ceil(2 * rayon::current_num_threads()).max(1))
            .enumerate()
            .team_for_each(|(i, row)| self.fill_row(row, x, len, i, a, b));
    }

    /// Positions `a..b` of row `i` of `A` into `row[..b − a]`.
    fn fill_row(&self, row: &mut [f32], x: &[f32], len: usize, i: usize, a: usize, b: usize) {
        let (out, x) = (&mut row[..b - a], &x[i * len + a..][..b - a]);
        (active().affine_relu)(out, x, self.scale[i], self.shift[i]);
    }
}

/// Asks for the cache lines of `n` floats from `p` (at most 32 lines): the start of a
/// row that a strided sweep reads next, before the hardware prefetcher has seen it.
///
/// The BN-ReLU fill of a 1×1's tile and the fused backward's BN sweep read 0.25–4 KiB of
/// each of hundreds of channel rows, `len` floats apart; alone they ran at 3.5–7.5 GB/s,
/// bound by the latency of each row's first lines. With the rows two channels on asked
/// for (Zen 3, 2 threads, densenet121, with and without in one process, alternating per
/// pass, medians of the pairs' ratios): evaluation batch 16 0.946 (15 pairs, every one
/// below 1), batch 1 0.981; a training step at batch 16 0.968 and 0.931 (20 pairs each);
/// BC-100 at batch 64 0.953. Three or one channels on measured the same as two; dY's rows
/// in the backward (read once, and just written by the 3×3 backward) gained nothing.
#[inline(always)]
pub(crate) fn prefetch(p: *const f32, n: usize) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, n);
    #[cfg(target_arch = "x86_64")]
    {
        let lines = (n * 4).div_ceil(64).min(32);
        for k in 0..lines {
            // SAFETY: a prefetch is a hint; it does not fault on any address
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    p.wrapping_add(k * 16).cast(),
                )
            };
        }
    }
}

/// The register-blocked direct convolution kernels of one instruction set (see
/// [`correlate`]). Each may only be called as its own documentation says; the table that
/// holds them is only handed out on a CPU that runs them.
#[derive(Clone, Copy)]
pub struct Direct {
    /// Positions of one register block of the correlate kernel (two vectors: 16 for AVX2,
    /// 32 for AVX-512); parallel tiles are multiples of it.
    pub block: usize,
    /// The correlate kernel ([`correlate`]) with the 9 taps of a 3×3 window.
    pub correlate9: correlate::CorrelateFn,
    /// The correlate kernel with one tap (a 1×1 convolution).
    pub correlate1: correlate::CorrelateFn,
    /// One input channel's 3×3 weight gradient ([`conv3x3`]).
    pub weight_grad3x3: conv3x3::WeightGradFn,
    /// The 1×1 weight gradient of one tile ([`conv1x1::dot_tile`]).
    pub dot_tile: conv1x1::DotTileFn,
    /// The 1×1 weight gradient of one tile as an outer product ([`conv1x1::grad_tile`]).
    pub grad_tile: conv1x1::GradTileFn,
    /// A loop of nothing but FMAs, for the measured peak ([`peak::measured_gflops`]).
    pub fma_chains: peak::FmaChainsFn,
    /// Winograd input transform of one channel's tile row ([`winograd`]).
    pub wino_input: winograd::InputFn,
    /// Winograd output transform of one channel's tile row ([`winograd`]).
    pub wino_output: winograd::OutputFn,
    /// Winograd F(4×4, 3×3) transform of one output-gradient channel's tile row, for the
    /// weight gradient ([`winograd::backward_weights`]).
    pub wino_grad: winograd::InputFn,
    /// The 3×3 forward with output channels in the vector, one task ([`broadcast`]).
    pub broadcast3: broadcast::TaskFn,
    /// The same for a 7×7 window (the ImageNet stem).
    pub broadcast7: broadcast::TaskFn,
    /// The weight gradient of those, one tile of positions ([`broadcast::weight_grad_padded`]).
    pub broadcast_dw: broadcast::DwFn,
    /// Output channels per group of `broadcast3` and `broadcast7`.
    pub broadcast_group: usize,
    /// Positions per register block of `broadcast3` and `broadcast7` (a task's scratch
    /// rounds up to it).
    pub broadcast_block: usize,
}

/// The function table of one instruction set. The element-wise entries are safe to call
/// with any slices (they stop at the shorter one, as the portable loops do).
#[derive(Clone, Copy)]
pub struct Kernels {
    /// `portable`, `avx2`, `avx512`, `avx512bf16` or `amx`: what `DENSENET_KERNELS` takes
    /// and `bench --json` reports.
    pub name: &'static str,
    /// The instruction set of its f32 kernels: `portable`, `avx2` or `avx512` (the three
    /// AVX-512 tables share one set; [`peak`] counts its lanes).
    pub isa: &'static str,
    /// Mean and biased variance of one channel ([`norm::row_stats`]).
    pub row_stats: fn(&[f32]) -> (f64, f64),
    /// `o = relu(x·s + t)`.
    pub affine_relu: fn(&mut [f32], &[f32], f32, f32),
    /// `(Σg, Σg·(x−mean))` of a BN-ReLU backward ([`norm::masked_sums`]).
    pub masked_sums: norm::MaskedSumsFn,
    /// [`norm::masked_sums_axpy`].
    pub masked_sums_axpy: norm::MaskedSumsAxpyFn,
    /// `dx += c0 + (x − mu)·c1`.
    pub centred_update: fn(&mut [f32], &[f32], f32, f32, f32),
    /// The BN-ReLU input gradient of a run, accumulated ([`norm::masked_update`]).
    pub masked_update: norm::MaskedUpdateFn,
    /// The same, overwriting `dx`.
    pub masked_assign: norm::MaskedUpdateFn,
    /// The evaluation max pool of one plane ([`pool::max_pool3s2`]).
    pub max_pool3s2: pool::MaxPoolFn,
    /// A transition's BN-ReLU and average pool of one plane ([`pool::bn_relu_avg_pool2`]).
    pub bn_relu_avg_pool2: pool::AvgPoolFn,
    /// The direct convolution kernels, where this instruction set has them; without,
    /// every convolution takes im2col + GEMM.
    pub direct: Option<Direct>,
    /// What runs the bf16 products of `--precision bf16` ([`bf16::Products`]).
    pub bf16: bf16::Products,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kernels({})", self.name)
    }
}

/// Plain Rust for any CPU.
static PORTABLE: Kernels = Kernels {
    name: "portable",
    isa: "portable",
    row_stats: norm::row_stats,
    affine_relu: norm::affine_relu,
    masked_sums: norm::masked_sums,
    masked_sums_axpy: norm::masked_sums_axpy,
    centred_update: norm::centred_update,
    masked_update: norm::masked_update::<true>,
    masked_assign: norm::masked_update::<false>,
    max_pool3s2: pool::max_pool3s2,
    bn_relu_avg_pool2: pool::bn_relu_avg_pool2,
    direct: None,
    bf16: bf16::Products::Reference,
};

/// AVX2 and FMA (x86-64 from Haswell and Zen on); only handed out where the CPU has both.
#[cfg(target_arch = "x86_64")]
static AVX2: Kernels = Kernels {
    name: "avx2",
    isa: "avx2",
    row_stats: norm::avx2::row_stats,
    affine_relu: norm::avx2::affine_relu,
    masked_sums: norm::avx2::masked_sums,
    masked_sums_axpy: norm::avx2::masked_sums_axpy,
    centred_update: norm::avx2::centred_update,
    masked_update: norm::avx2::masked_update::<true>,
    masked_assign: norm::avx2::masked_update::<false>,
    max_pool3s2: pool::avx2::max_pool3s2,
    bn_relu_avg_pool2: pool::avx2::bn_relu_avg_pool2,
    direct: Some(Direct {
        block: 16,
        correlate9: correlate::correlate_avx2::<9>,
        correlate1: correlate::correlate_avx2::<1>,
        weight_grad3x3: conv3x3::weight_grad_avx2,
        dot_tile: conv1x1::dot_tile_avx2,
        grad_tile: conv1x1::grad_tile_avx2,
        fma_chains: peak::fma_chains_avx2,
        wino_input: winograd::input_avx2,
        wino_output: winograd::output_avx2,
        wino_grad: winograd::grad_avx2,
        broadcast3: broadcast::task_avx2::<3>,
        broadcast7: broadcast::task_avx2::<7>,
        broadcast_dw: broadcast::dw_avx2,
        broadcast_group: broadcast::GROUP_AVX2,
        broadcast_block: 6,
    }),
    bf16: bf16::Products::Reference,
};

/// AVX-512F (with AVX2 and FMA: Skylake-SP and later Xeons, Zen 4); only handed out where
/// the CPU has all three. Its bf16 products are the reference's.
#[cfg(target_arch = "x86_64")]
static AVX512: Kernels = AVX512_F32;

/// The `avx512` table with the bf16 products on `vdpbf16ps` (Zen 4, Cooper Lake and
/// later Xeons); its f32 kernels are `avx512`'s, so f32 results are the same bits.
#[cfg(target_arch = "x86_64")]
static AVX512BF16: Kernels = Kernels {
    name: "avx512bf16",
    bf16: bf16::Products::Avx512Bf16,
    ..AVX512_F32
};

/// The `avx512` table with the bf16 products on AMX tiles (Sapphire Rapids and later
/// Xeons), its bf16 tile former on AVX512-BF16.
#[cfg(target_arch = "x86_64")]
static AMX: Kernels = Kernels {
    name: "amx",
    bf16: bf16::Products::Amx,
    ..AVX512_F32
};

/// The AVX-512 f32 kernels, shared by the three AVX-512 tables.
#[cfg(target_arch = "x86_64")]
const AVX512_F32: Kernels = Kernels {
    name: "avx512",
    isa: "avx512",
    row_stats: norm::avx512::row_stats,
    affine_relu: norm::avx512::affine_relu,
    // the AVX2 body: see `norm::table_entries`
    masked_sums: norm::avx2::masked_sums,
    masked_sums_axpy: norm::avx2::masked_sums_axpy,
    centred_update: norm::avx512::centred_update,
    masked_update: norm::avx512::masked_update::<true>,
    masked_assign: norm::avx512::masked_update::<false>,
    max_pool3s2: pool::avx512::max_pool3s2,
    bn_relu_avg_pool2: pool::avx512::bn_relu_avg_pool2,
    direct: Some(Direct {
        block: 32,
        correlate9: correlate::correlate_avx512::<9>,
        correlate1: correlate::correlate_avx512::<1>,
        weight_grad3x3: conv3x3::weight_grad_avx512,
        dot_tile: conv1x1::dot_tile_avx512,
        grad_tile: conv1x1::grad_tile_avx512,
        fma_chains: peak::fma_chains_avx512,
        wino_input: winograd::input_avx512,
        wino_output: winograd::output_avx512,
        wino_grad: winograd::grad_avx512,
        broadcast3: broadcast::task_avx512::<3>,
        broadcast7: broadcast::task_avx512::<7>,
        broadcast_dw: broadcast::dw_avx512,
        broadcast_group: broadcast::GROUP_AVX512,
        broadcast_block: 12,
    }),
    bf16: bf16::Products::Reference,
};

/// The portable table.
pub fn portable() -> &'static Kernels {
    &PORTABLE
}

/// The AVX2+FMA table, if this CPU runs it.
pub fn avx2() -> Option<&'static Kernels> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return Some(&AVX2);
    }
    None
}

/// The AVX-512 table, if this CPU runs it (AVX-512F, AVX2 and FMA).
pub fn avx512() -> Option<&'static Kernels> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && avx2().is_some() {
        return Some(&AVX512);
    }
    None
}

/// The AVX-512 table with AVX512-BF16 products, if this CPU runs it.
pub fn avx512bf16() -> Option<&'static Kernels> {
    #[cfg(target_arch = "x86_64")]
    if bf16::avx512bf16() && avx512().is_some() {
        return Some(&AVX512BF16);
    }
    None
}

/// The AVX-512 table with AMX bf16 products, if this CPU runs it and Linux granted the
/// tile state ([`bf16::amx::available`]).
pub fn amx() -> Option<&'static Kernels> {
    #[cfg(target_arch = "x86_64")]
    if avx512bf16().is_some() && bf16::amx::available() {
        return Some(&AMX);
    }
    None
}

/// Every table this CPU runs, fastest first.
pub fn available() -> Vec<&'static Kernels> {
    amx()
        .into_iter()
        .chain(avx512bf16())
        .chain(avx512())
        .chain(avx2())
        .chain([portable()])
        .collect()
}

/// Names every table knows, whether or not this CPU runs it.
pub const NAMES: &[&str] = &["portable", "avx2", "avx512", "avx512bf16", "amx"];

/// The table named `name`, if this CPU runs it (`None` for an unknown name too).
pub fn by_name(name: &str) -> Option<&'static Kernels> {
    match name {
        "portable" => Some(portable()),
        "avx2" => avx2(),
        "avx512" => avx512(),
        "avx512bf16" => avx512bf16(),
        "amx" => amx(),
        _ => None,
    }
}

/// A `DENSENET_KERNELS` value that cannot be honoured.
#[derive(Debug, thiserror::Error)]
pub enum KernelsError {
    /// Not a table name.
    #[error("DENSENET_KERNELS={0}: unknown kernels (expected auto, portable, avx2, avx512, avx512bf16 or amx)")]
    Unknown(String),
    /// A table this CPU cannot run.
    #[error("DENSENET_KERNELS={0}: this CPU lacks the instructions (it runs: {1})")]
    Unsupported(String, String),
}

/// The table a `DENSENET_KERNELS` value names (`None`, empty or `auto`: the fastest this
/// CPU runs).
pub fn named(value: Option<&str>) -> Result<&'static Kernels, KernelsError> {
    let best = || available()[0];
    match value.map(str::trim) {
        None | Some("") | Some("auto") => Ok(best()),
        Some(name) if NAMES.contains(&name) => by_name(name).ok_or_else(|| {
            let runs: Vec<_> = available().iter().map(|k| k.name).collect();
            KernelsError::Unsupported(name.into(), runs.join(", "))
        }),
        Some(other) => Err(KernelsError::Unknown(other.to_string())),
    }
}

/// The table `DENSENET_KERNELS` asks for (see [`named`]).
pub fn from_env() -> Result<&'static Kernels, KernelsError> {
    named(std::env::var("DENSENET_KERNELS").ok().as_deref())
}

static ACTIVE: AtomicPtr<Kernels> = AtomicPtr::new(std::ptr::null_mut());

/// The table in use: chosen on the first call from `DENSENET_KERNELS` and the CPU, then
/// kept. An unusable `DENSENET_KERNELS` falls back to the fastest table with a warning
/// (the command line refuses it before any work: [`from_env`]).
pub fn active() -> &'static Kernels {
    let p = ACTIVE.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: only pointers to the static tables are ever stored.
        return unsafe { &*p };
    }
    let k = from_env().unwrap_or_else(|e| {
        let best = available()[0];
        eprintln!("warning: {e}; using {}", best.name);
        best
    });
    let _ = ACTIVE.compare_exchange(
        std::ptr::null_mut(),
        k as *const Kernels as *mut Kernels,
        Ordering::AcqRel,
        Ordering::Acquire,
    );
    // SAFETY: as above; whichever thread won stored a static table.
    unsafe { &*ACTIVE.load(Ordering::Acquire) }
}

/// The active table's direct kernels, for a `caller` that only runs where they exist
/// (behind its `…_applies` check): panics naming the caller otherwise.
pub(crate) fn active_direct(caller: &str) -> Direct {
    active()
        .direct
        .unwrap_or_else(|| panic!("{caller}: no direct kernels in this table"))
}

/// Makes `k` the table in use from now on. For tests and benchmarks that compare tables
/// in one process (one test at a time: the choice is process-wide); `k` comes from
/// [`portable`], [`avx2`], [`avx512`] or [`available`], so this CPU runs it.
#[doc(hidden)]
pub fn force(k: &'static Kernels) {
    ACTIVE.store(k as *const Kernels as *mut Kernels, Ordering::Release);
}
