//! `densenet bench`: timings and memory, in the manner of hyperfine: warm-up, repeated
//! runs, median/mean ± σ/min…max, machine-readable with `--json`.
//!
//! - `bench train`: training steps (forward, backward, SGD update) on random data;
//! - `bench infer`: evaluation-mode forward passes;
//! - `bench memory`: peak memory of one training step at several depths, both memory
//!   modes, each measured in a fresh child process (peak RSS is a process-wide high-water
//!   mark), as a table and a PNG plot;
//! - `bench scaling` ([`scaling`]): the same work at each thread count.

mod scaling;

use super::model_args::ModelAdjust;
use crate::densenet::config::DenseNetConfig;
use crate::dist::SyncTimes;
use crate::model::memory::{self, Use};
use crate::model::{AnyModel, Frozen, ModelConfig};
use crate::nn::MemoryMode;
use crate::optim::{Sgd, SgdConfig};
use crate::train::{DataParallel, StepInput};
use crate::util::rng::Rng;
use crate::util::trial::{self, Paired};
use anyhow::Context;
use serde::Serialize;
use std::time::Instant;

/// Arguments of `densenet bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

impl Args {
    /// Whether this benchmark trains (`train`, `memory`, `scaling --work train`).
    pub fn trains(&self) -> bool {
        match &self.what {
            What::Train(_) | What::Memory(_) => true,
            What::Infer(_) => false,
            What::Scaling(s) => s.work == "train",
        }
    }
}

/// What to measure.
#[derive(clap::Subcommand, Debug)]
pub enum What {
    /// Median time of a training step (forward, backward, SGD update).
    #[command(
        after_long_help = "Example:\n  densenet bench train --model densenet-bc-100-12 --batch-size 64 --steps 3"
    )]
    Train(TrainArgs),
    /// Median time of an evaluation-mode forward pass.
    #[command(
        after_long_help = "Example:\n  densenet bench infer --model densenet121 --batch-size 16"
    )]
    Infer(InferArgs),
    /// Peak memory of one training step against depth, both memory modes (table + PNG).
    #[command(after_long_help = "Example:\n  densenet bench memory --out bench-out")]
    Memory(MemoryArgs),
    /// The same work at each thread count, alternating: time, speed-up, efficiency.
    #[command(
        after_long_help = "Example:\n  densenet bench scaling -m densenet121 --batch-size 1 --thread-counts 1,2"
    )]
    Scaling(scaling::ScalingArgs),
}

/// `bench train` arguments.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Model name (either family: densenet-bc-100-12, preresnet-164, …).
    #[arg(long, short = 'm', default_value = "densenet-bc-100-12")]
    pub model: String,
    #[command(flatten)]
    pub adjust: ModelAdjust,
    /// Batch size, 1 to 65536.
    #[arg(
        long = "batch-size",
        visible_alias = "batch",
        default_value_t = 64,
        value_parser = super::values::batch_size()
    )]
    pub batch: usize,
    /// Timed steps (after warm-up).
    #[arg(long, default_value_t = 3, value_parser = super::values::at_least_one())]
    pub steps: usize,
    /// Warm-up steps (not timed).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Memory mode.
    #[arg(long, default_value = "efficient", value_parser = super::values::memory_mode())]
    pub memory: MemoryMode,
    /// Also report where the timed steps spent their time, per kind of operation.
    #[arg(long)]
    pub profile: bool,
    /// In-process A/B: time every step twice, once with `util::trial::on()` false and
    /// once true, the order alternating per pair, and report the median of the pairs'
    /// time ratios (on ÷ off). `--steps` counts pairs; the step figures are the off arm's.
    /// With no code reading the switch, both arms run the same code and the ratio's
    /// spread is this machine's noise floor for paired runs.
    #[arg(long)]
    pub ab: bool,
    /// Under `mpirun -np N`: synchronised batch norm (see `train --sync-bn`).
    #[arg(long)]
    pub sync_bn: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Where a data-parallel step's time went (`bench train` under `mpirun -np N`): medians
/// over the timed steps, in seconds, on rank 0.
#[derive(Debug, Serialize)]
pub struct ParallelReport {
    /// Processes; each computes a share of `batch / processes` images.
    pub processes: usize,
    /// Synchronised batch norm.
    pub sync_bn: bool,
    /// Forward and backward passes, the optimizer step, and the batch-norm sums of
    /// synchronised BN (the step less the exposed all-reduce).
    pub compute_s: f64,
    /// Summing the gradients over the processes (all buckets, as long as they ran).
    pub all_reduce_s: f64,
    /// The part of the all-reduce the step waited for after its backward pass.
    pub exposed_s: f64,
    /// The part of the all-reduce that ran while the backward pass was computing.
    pub hidden_s: f64,
}

/// One row of `bench train --profile` and `bench infer --profile`.
#[derive(Debug, Serialize)]
pub struct ProfileRow {
    /// Kind of operation (`other` is the rest of the step or pass).
    pub op: String,
    /// Seconds per step (per pass in `bench infer`).
    pub step_s: f64,
    /// Share of the step or pass, percent.
    pub percent: f64,
    /// Calls per step or pass.
    pub calls: f64,
}

/// One convolution shape of `--profile`: where the time of a kind of convolution went.
#[derive(Debug, Serialize)]
pub struct ShapeRow {
    /// Kind of operation (`conv 3x3 forward`, …).
    pub op: String,
    /// Kernel size.
    pub k: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Output positions (samples × height × width).
    pub positions: usize,
    /// Seconds per step (per pass in `bench infer`).
    pub step_s: f64,
    /// Calls per step or pass.
    pub calls: f64,
    /// Rate of its multiply-adds (2 FLOPs each; a backward counts both gradients).
    pub gflops: f64,
}

/// `bench infer` arguments.
#[derive(clap::Args, Debug)]
pub struct InferArgs {
    /// Model name (either family).
    #[arg(long, short = 'm', default_value = "densenet121")]
    pub model: String,
    #[command(flatten)]
    pub adjust: ModelAdjust,
    /// Batch size, 1 to 65536.
    #[arg(
        long = "batch-size",
        visible_alias = "batch",
        default_value_t = 16,
        value_parser = super::values::batch_size()
    )]
    pub batch: usize,
    /// Timed passes (after warm-up).
    #[arg(long, default_value_t = 5, value_parser = super::values::at_least_one())]
    pub steps: usize,
    /// Warm-up passes.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Also report where the timed passes spent their time, per kind of operation.
    #[arg(long)]
    pub profile: bool,
    /// In-process A/B: time every pass twice, once with `util::trial::on()` false and
    /// once true, the order alternating per pair, and report the median of the pairs'
    /// time ratios (on ÷ off). `--steps` counts pairs; the pass figures are the off arm's.
    /// With no code reading the switch, both arms run the same code and the ratio's
    /// spread is this machine's noise floor for paired runs.
    #[arg(long)]
    pub ab: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `bench memory` arguments.
#[derive(clap::Args, Debug)]
pub struct MemoryArgs {
    /// Depths L of DenseNet-BC to measure (L−4 divisible by 6: 502 stands in for 500).
    #[arg(long, value_delimiter = ',', default_value = "100,250,502")]
    pub depths: Vec<usize>,
    /// Growth rate k.
    #[arg(long, default_value_t = 12, value_parser = super::values::at_least_one())]
    pub growth_rate: usize,
    /// Batch size, 1 to 65536.
    #[arg(
        long = "batch-size",
        visible_alias = "batch",
        default_value_t = 64,
        value_parser = super::values::batch_size()
    )]
    pub batch: usize,
    /// Directory for memory.png and memory.json.
    #[arg(long, default_value = "bench-out")]
    pub out: std::path::PathBuf,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Timing statistics over repeated runs, in seconds.
#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    /// Median.
    pub median_s: f64,
    /// Mean.
    pub mean_s: f64,
    /// Standard deviation (absent with one run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stddev_s: Option<f64>,
    /// Fastest run.
    pub min_s: f64,
    /// Slowest run.
    pub max_s: f64,
    /// Every run.
    pub times_s: Vec<f64>,
}

impl Stats {
    fn new(mut times: Vec<f64>) -> Self {
        let n = times.len() as f64;
        let mean = times.iter().sum::<f64>() / n;
        let stddev = (times.len() > 1)
            .then(|| (times.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
        let orig = times.clone();
        times.sort_by(|a, b| a.total_cmp(b));
        let median = trial::quantile(&times, 0.5);
        Stats {
            median_s: median,
            mean_s: mean,
            stddev_s: stddev,
            min_s: times[0],
            max_s: *times.last().unwrap_or(&0.0),
            times_s: orig,
        }
    }
    fn describe(&self) -> String {
        format!(
            "median {:.3} s, mean {:.3} s ± {:.3} s, range {:.3} … {:.3} s",
            self.median_s,
            self.mean_s,
            self.stddev_s.unwrap_or(0.0),
            self.min_s,
            self.max_s
        )
    }
}

/// What a benchmark's figures were measured with (flattened into its JSON report).
#[derive(Debug, Serialize)]
pub struct Machine {
    /// Worker threads.
    pub threads: usize,
    /// The kernels table in use (`portable`, `avx2`, `avx512`; see `DENSENET_KERNELS`).
    pub kernels: &'static str,
    /// The `gemm` crate's micro-kernels (`avx512`, `fma`, `scalar`): it picks them from
    /// cpuid, apart from `DENSENET_KERNELS`; only a build without `gemm-avx512` drops AVX-512.
    pub gemm: &'static str,
    /// The route policy (`auto`, `no-winograd`, `direct`; see `DENSENET_ROUTES`).
    pub routes: &'static str,
    /// The arithmetic (`f32`, `bf16`; see `--precision`).
    pub precision: &'static str,
    /// The CPU's model name.
    pub cpu: String,
}

impl Machine {
    /// This process's: the thread pool, the kernels table and route policy chosen at
    /// start-up, the `gemm` crate's micro-kernels, the CPU.
    pub fn now() -> Self {
        Machine {
            threads: rayon::current_num_threads(),
            kernels: crate::kernels::active().name,
            gemm: crate::kernels::gemm::micro_kernels(),
            routes: crate::ops::route::policy().name(),
            precision: crate::ops::route::precision().name(),
            cpu: cpu_model(),
        }
    }
}

/// Result of `bench train`.
#[derive(Debug, Serialize)]
pub struct TrainReport {
    /// Format version.
    pub version: u32,
    /// Model.
    pub model: String,
    /// Batch size.
    pub batch: usize,
    /// Memory mode.
    pub memory: MemoryMode,
    /// Threads, kernels, routes and CPU the figures were measured with.
    #[serde(flatten)]
    pub machine: Machine,
    /// Median step time.
    pub median_step_s: f64,
    /// Images per second at the median step time.
    pub images_per_s: f64,
    /// Activation bytes the memory plan allocated.
    pub activation_bytes: usize,
    /// Peak resident memory of the process (from the OS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    /// Step time statistics.
    pub step: Stats,
    /// With `--profile`: time per kind of operation, per step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Vec<ProfileRow>>,
    /// With `--profile`: time per convolution shape, per step, longest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_shapes: Option<Vec<ShapeRow>>,
    /// Under `mpirun -np N` with N > 1: compute and communication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel: Option<ParallelReport>,
    /// With `--ab`: the two arms and their paired ratio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ab: Option<Paired>,
}

/// Result of `bench infer`.
#[derive(Debug, Serialize)]
pub struct InferReport {
    /// Format version.
    pub version: u32,
    /// Model.
    pub model: String,
    /// Batch size.
    pub batch: usize,
    /// Threads, kernels, routes and CPU the figures were measured with.
    #[serde(flatten)]
    pub machine: Machine,
    /// Median time per batch.
    pub median_s: f64,
    /// Images per second at the median.
    pub images_per_s: f64,
    /// Activation bytes the memory plan allocated.
    pub activation_bytes: usize,
    /// Bytes of the weights the kernels packed on the first pass and kept for the next
    /// ones (`model::Frozen`; 0 with the portable kernels, which pack nothing).
    pub packed_weight_bytes: usize,
    /// Peak resident memory of the process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    /// Timing statistics.
    pub pass: Stats,
    /// With `--profile`: time per kind of operation, per pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Vec<ProfileRow>>,
    /// With `--profile`: time per convolution shape, per pass, longest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_shapes: Option<Vec<ShapeRow>>,
    /// With `--ab`: the two arms and their paired ratio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ab: Option<Paired>,
}

pub use crate::kernels::peak::cpu_model;

/// The process's peak resident set size (Linux: `VmHWM` in /proc/self/status).
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn random_input(n: usize, cfg: &ModelConfig, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let s = cfg.input_size();
    let x = (0..n * cfg.in_channels() * s * s)
        .map(|_| rng.normal() as f32)
        .collect();
    let y = (0..n)
        .map(|_| rng.below(cfg.num_classes() as u64) as u32)
        .collect();
    (x, y)
}

fn resolve(model: &str, adjust: &ModelAdjust) -> anyhow::Result<ModelConfig> {
    let cfg = ModelConfig::from_name(model).with_context(|| format!("model {model}"))?;
    adjust.apply(cfg)
}

/// Runs `densenet bench`.
pub fn run(a: Args) -> anyhow::Result<()> {
    match a.what {
        What::Train(t) => bench_train(t),
        What::Infer(i) => bench_infer(i),
        What::Memory(m) => bench_memory(m),
        What::Scaling(s) => scaling::run(s),
    }
}

fn bench_train(a: TrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.batch > 0 && a.steps > 0,
        "--batch-size and --steps must be at least 1"
    );
    let cfg = resolve(&a.model, &a.adjust)?;
    // under mpirun: each process takes its share of the batch, as `train` does
    // the step `train` runs, on this process's share of the batch
    let mut dp = DataParallel::new(crate::dist::connect()?, a.sync_bn);
    dp.check_batch(a.batch, 1)?;
    let (rank, ranks) = (dp.rank(), dp.size());
    let share = a.batch / ranks;
    memory::check(&cfg, &[Use::train(share, a.memory)], 0, "")?;
    let mut net = AnyModel::try_new(&cfg, 0)?;
    let mut ws = net.workspace(share, a.memory, true);
    let mut opt = Sgd::new(SgdConfig::default());
    let (x, y) = random_input(share, &cfg, 1 + rank as u64);
    anyhow::ensure!(
        !(a.ab && ranks > 1),
        "--ab runs in one process: leave out mpirun"
    );
    let groups = crate::optim::param_groups(
        &[(0..net.num_params(), opt.config.lr)],
        opt.config.weight_decay,
        &[],
    );
    let mut sync_times = Vec::new();
    let mut times = Vec::new();
    let mut on_times = Vec::new();
    let timed = a.steps * if a.ab { 2 } else { 1 };
    for step in 0..a.warmup + timed {
        let on = a.ab && step >= a.warmup && trial::arm(step - a.warmup);
        trial::set(on);
        if a.profile && step == a.warmup {
            crate::util::profile::reset();
            crate::util::profile::enable(true);
        }
        let t = Instant::now();
        let input = StepInput {
            images: &x,
            labels: &y,
            whole: a.batch,
            seed: &[step as u64],
            frozen: false,
            groups: &groups,
            passes: 1,
            stop: false,
        };
        let outcome = dp.step(&mut *net, &mut ws, &mut opt, &input);
        let dt = t.elapsed().as_secs_f64();
        if let (Some(s), true) = (outcome.sync, step >= a.warmup) {
            sync_times.push(s);
        }
        if !a.json {
            eprintln!(
                "step {step}: {dt:.3} s, loss {:.4}{}",
                outcome.loss,
                if step < a.warmup { " (warm-up)" } else { "" }
            );
        }
        if step >= a.warmup {
            if on { &mut on_times } else { &mut times }.push(dt);
        }
    }
    let (profile, profile_shapes, ab) = finish_timing(a.profile, a.ab, &times, &on_times);
    drop(dp);
    let median =
        |f: &dyn Fn(&SyncTimes) -> f64| Stats::new(sync_times.iter().map(f).collect()).median_s;
    let parallel = (ranks > 1).then(|| ParallelReport {
        processes: ranks,
        sync_bn: a.sync_bn,
        compute_s: Stats::new(
            times
                .iter()
                .zip(&sync_times)
                .map(|(t, s)| t - s.exposed)
                .collect(),
        )
        .median_s,
        all_reduce_s: median(&|s| s.all_reduce),
        exposed_s: median(&|s| s.exposed),
        hidden_s: median(&|s| s.hidden()),
    });
    let step = Stats::new(times);
    if rank > 0 {
        return Ok(());
    }
    let r = TrainReport {
        version: 1,
        model: cfg.name().to_string(),
        batch: a.batch,
        memory: a.memory,
        machine: Machine::now(),
        median_step_s: step.median_s,
        images_per_s: a.batch as f64 / step.median_s,
        activation_bytes: ws.activation_bytes(),
        peak_rss_bytes: peak_rss_bytes(),
        step,
        profile,
        profile_shapes,
        parallel,
        ab,
    };
    if a.json {
        return super::print_json(&r);
    }
    outln!(
        "{} train, batch {}, {} memory, {}: {}\n  {:.1} images/s, activations {:.1} MiB, peak RSS {}",
        r.model,
        r.batch,
        r.memory,
        super::count(r.machine.threads, "thread"),
        r.step.describe(),
        r.images_per_s,
        super::mib(r.activation_bytes as u64),
        r.peak_rss_bytes.map(|b| format!("{:.1} MiB", super::mib(b))).unwrap_or("n/a".into())
    );
    if let Some(p) = &r.parallel {
        outln!(
            "  {} processes of {} images{}: compute {:.3} s, all-reduce {:.3} s ({:.3} s \
             hidden behind the backward pass, {:.3} s exposed)",
            p.processes,
            r.batch / p.processes,
            if p.sync_bn { ", synchronised BN" } else { "" },
            p.compute_s,
            p.all_reduce_s,
            p.hidden_s,
            p.exposed_s
        );
    }
    if let Some(p) = &r.ab {
        print_ab(p, "step")?;
    }
    if let (Some(rows), Some(shapes)) = (&r.profile, &r.profile_shapes) {
        print_profile(rows, shapes, "s/step")?;
    }
    Ok(())
}

/// After the timed runs of `bench train` or `bench infer` (`off` and `on`: the times of
/// each arm, `on` empty without `ab`): the switch and the profiler off, and the profile
/// (per run, over both arms' runs) and the pairs if asked for.
#[allow(clippy::type_complexity)]
fn finish_timing(
    profile: bool,
    ab: bool,
    off: &[f64],
    on: &[f64],
) -> (
    Option<Vec<ProfileRow>>,
    Option<Vec<ShapeRow>>,
    Option<Paired>,
) {
    trial::set(false);
    crate::util::profile::enable(false);
    let all = [off, on].concat();
    let rows = profile.then(|| profile_rows(&all));
    let shapes = profile.then(|| shape_rows(all.len()));
    (rows, shapes, if ab { Paired::new(off, on) } else { None })
}

/// The `--ab` line: both arms' medians and the pairs' ratio with its quartiles.
fn print_ab(p: &Paired, what: &str) -> anyhow::Result<()> {
    outln!(
        "  A/B (util::trial): on ÷ off {:.3} (quartiles {:.3}–{:.3}, {} pairs); median {what} off {:.4} s, \
         on {:.4} s",
        p.ratio,
        p.ratio_q1,
        p.ratio_q3,
        p.pairs,
        p.off_median_s,
        p.on_median_s
    );
    Ok(())
}

/// The profile's rows per timed pass, from the collected scopes and the passes' times:
/// the kinds that ran, and `other`, what no scope covered.
fn profile_rows(times: &[f64]) -> Vec<ProfileRow> {
    let total: f64 = times.iter().sum();
    let per = 1.0 / times.len() as f64;
    let mut rows: Vec<ProfileRow> = crate::util::profile::snapshot()
        .into_iter()
        .filter(|&(_, _, calls)| calls > 0)
        .map(|(op, secs, calls)| ProfileRow {
            op: op.name().to_string(),
            step_s: secs * per,
            percent: 100.0 * secs / total,
            calls: calls as f64 * per,
        })
        .collect();
    let counted: f64 = rows.iter().map(|r| r.step_s).sum();
    rows.push(ProfileRow {
        op: "other".into(),
        step_s: total * per - counted,
        percent: 100.0 * (1.0 - counted / (total * per)),
        calls: 0.0,
    });
    rows
}

/// The per-shape rows of the convolutions, per timed step or pass (`steps` of them).
fn shape_rows(steps: usize) -> Vec<ShapeRow> {
    let per = 1.0 / steps.max(1) as f64;
    crate::util::profile::shapes()
        .into_iter()
        .map(|(op, key, secs, calls, products)| ShapeRow {
            op: op.name().to_string(),
            k: key.k,
            cin: key.cin,
            cout: key.cout,
            positions: key.positions,
            step_s: secs * per,
            calls: calls as f64 * per,
            gflops: 2.0 * products as f64 / secs.max(1e-12) / 1e9,
        })
        .collect()
}

fn print_profile(rows: &[ProfileRow], shapes: &[ShapeRow], unit: &str) -> anyhow::Result<()> {
    outln!(
        "{:<26} {:>10} {:>7} {:>9}",
        "operation",
        unit,
        "share",
        "calls"
    );
    for row in rows {
        outln!(
            "{:<26} {:>10.4} {:>6.1}% {:>9.0}",
            row.op,
            row.step_s,
            row.percent,
            row.calls
        );
    }
    // the convolution shapes that took longest (densenet121 has 70 distinct ones; the
    // rows come longest first)
    const SHOWN: usize = 16;
    outln!(
        "\n{:<26} {:>24} {:>10} {:>9} {:>8}",
        "convolution",
        "k, in → out, positions",
        format!("m{unit}"),
        "calls",
        "GFLOP/s"
    );
    for s in shapes.iter().take(SHOWN) {
        let shape = format!("{0}×{0}, {1} → {2}, {3}", s.k, s.cin, s.cout, s.positions);
        outln!(
            "{:<26} {:>24} {:>10.3} {:>9.0} {:>8.1}",
            s.op,
            shape,
            s.step_s * 1e3,
            s.calls,
            s.gflops
        );
    }
    if shapes.len() > SHOWN {
        outln!(
            "({} more shapes, {:.1}% of the time; --json lists every one)",
            shapes.len() - SHOWN,
            100.0 * shapes[SHOWN..].iter().map(|s| s.step_s).sum::<f64>()
                / rows.iter().map(|r| r.step_s).sum::<f64>()
        );
    }
    Ok(())
}

fn bench_infer(a: InferArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.batch > 0 && a.steps > 0,
        "--batch-size and --steps must be at least 1"
    );
    let cfg = resolve(&a.model, &a.adjust)?;
    memory::check(&cfg, &[Use::eval(a.batch)], 0, "")?;
    let mut net = AnyModel::try_new(&cfg, 0)?;
    let mut ws = net.workspace(a.batch, MemoryMode::Efficient, false);
    let (x, _) = random_input(a.batch, &cfg, 1);
    let (mut times, mut on_times) = (Vec::new(), Vec::new());
    let timed = a.steps * if a.ab { 2 } else { 1 };
    // as a deployment runs it: weights packed on the first pass, kept for the rest
    let mut net = Frozen::new(&mut *net);
    for i in 0..a.warmup + timed {
        if a.profile && i == a.warmup {
            crate::util::profile::reset();
            crate::util::profile::enable(true);
        }
        let on = a.ab && i >= a.warmup && trial::arm(i - a.warmup);
        trial::set(on);
        let t = Instant::now();
        let logits = net.forward_eval(&mut ws, &x, a.batch, None);
        std::hint::black_box(logits);
        if i >= a.warmup {
            if on { &mut on_times } else { &mut times }.push(t.elapsed().as_secs_f64());
        }
    }
    let (profile, profile_shapes, ab) = finish_timing(a.profile, a.ab, &times, &on_times);
    let pass = Stats::new(times);
    let r = InferReport {
        version: 1,
        model: cfg.name().to_string(),
        batch: a.batch,
        machine: Machine::now(),
        median_s: pass.median_s,
        images_per_s: a.batch as f64 / pass.median_s,
        activation_bytes: ws.activation_bytes(),
        packed_weight_bytes: net.packs().bytes(),
        peak_rss_bytes: peak_rss_bytes(),
        pass,
        profile,
        profile_shapes,
        ab,
    };
    if a.json {
        return super::print_json(&r);
    }
    outln!(
        "{} eval, batch {}, {}: {}\n  {:.1} images/s; activations {:.1} MiB, weights packed \
         once {:.1} MiB",
        r.model,
        r.batch,
        super::count(r.machine.threads, "thread"),
        r.pass.describe(),
        r.images_per_s,
        super::mib(r.activation_bytes as u64),
        super::mib(r.packed_weight_bytes as u64)
    );
    if let Some(p) = &r.ab {
        print_ab(p, "pass")?;
    }
    if let (Some(rows), Some(shapes)) = (&r.profile, &r.profile_shapes) {
        print_profile(rows, shapes, "s/pass")?;
    }
    Ok(())
}

/// One measured point of `bench memory`.
#[derive(Debug, Serialize)]
pub struct MemoryPoint {
    /// Depth L.
    pub depth: usize,
    /// Memory mode.
    pub memory: MemoryMode,
    /// Activation bytes of the plan.
    pub activation_bytes: usize,
    /// Peak resident memory of the child process; absent if it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    /// Step time; absent if it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_s: Option<f64>,
    /// Why the child failed, if it did (e.g. out of memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn bench_memory(a: MemoryArgs) -> anyhow::Result<()> {
    use crate::densenet::memory::DenseNetPlan;
    use crate::densenet::Architecture;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let exe = std::env::current_exe().context("locating the densenet executable")?;
    // check every depth before spending minutes on the first ones
    let configs = a
        .depths
        .iter()
        .map(|&d| {
            DenseNetConfig::cifar(d, a.growth_rate, true, 0.5)
                .with_context(|| format!("--depths {d}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut points = Vec::new();
    for (&depth, cfg) in a.depths.iter().zip(configs) {
        for mode in [MemoryMode::Naive, MemoryMode::Efficient] {
            let plan = DenseNetPlan::new(&Architecture::new(&cfg), a.batch, mode, true);
            if !a.json {
                eprintln!("measuring {} batch {} {mode} …", cfg.name, a.batch);
            }
            let mut p = MemoryPoint {
                depth,
                memory: mode,
                activation_bytes: plan.activation_bytes(),
                peak_rss_bytes: None,
                step_s: None,
                error: None,
            };
            // never start a step that cannot fit: the OOM killer could take anything down
            if let Some(room) = crate::util::memory::headroom() {
                if plan.activation_bytes() as f64 > 0.8 * room.bytes as f64 {
                    p.error = Some(format!(
                        "not run: its activations alone need {:.1} GiB, {:.1} GiB is what {}",
                        p.activation_bytes as f64 / (1u64 << 30) as f64,
                        room.bytes as f64 / (1u64 << 30) as f64,
                        room.bound
                    ));
                    points.push(p);
                    continue;
                }
            }
            // a fresh process per point: peak RSS is a high-water mark of the whole process
            let out = std::process::Command::new(&exe)
                .args([
                    "bench",
                    "train",
                    "--model",
                    &cfg.name,
                    "--batch-size",
                    &a.batch.to_string(),
                ])
                .args(["--steps", "1", "--warmup", "0", "--json", "--memory"])
                .arg(mode.to_string())
                .output()
                .context("running a measurement")?;
            match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                Ok(v) if out.status.success() => {
                    p.peak_rss_bytes = v["peak_rss_bytes"].as_u64();
                    p.step_s = v["median_step_s"].as_f64();
                }
                _ => {
                    let err = String::from_utf8_lossy(&out.stderr);
                    p.error = Some(format!(
                        "exit {}: {}",
                        out.status,
                        err.trim().lines().last().unwrap_or("")
                    ));
                }
            }
            points.push(p);
        }
    }
    let json_path = a.out.join("memory.json");
    crate::util::atomic::write(&json_path, &serde_json::to_vec_pretty(&points)?)
        .with_context(|| json_path.display().to_string())?;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let series = |mode: MemoryMode, label: &str| crate::plot::Series {
        label: label.into(),
        points: points
            .iter()
            .filter(|p| p.memory == mode)
            .filter_map(|p| p.peak_rss_bytes.map(|b| (p.depth as f64, gib(b))))
            .collect(),
    };
    let panel = crate::plot::Panel {
        title: format!(
            "DenseNet-BC k={} training step, batch {}: peak memory",
            a.growth_rate, a.batch
        ),
        x_label: "depth L".into(),
        y_label: "peak resident memory (GiB)".into(),
        series: vec![
            series(MemoryMode::Naive, "naive (every intermediate kept)"),
            series(
                MemoryMode::Efficient,
                "efficient (shared storage, recomputation)",
            ),
        ],
        log_y: false,
    };
    let png = a.out.join("memory.png");
    crate::plot::plot_panels(&png, &[panel], 1, 900, 560)?;
    if a.json {
        return super::print_json(&points);
    }
    outln!(
        "{:>6} {:>10} {:>16} {:>16} {:>10}",
        "depth",
        "mode",
        "activations",
        "peak RSS",
        "step"
    );
    for p in &points {
        let rss = p
            .peak_rss_bytes
            .map(|b| format!("{:.2} GiB", gib(b)))
            .unwrap_or_else(|| "failed".into());
        let step = p.step_s.map(|s| format!("{s:.1} s")).unwrap_or_default();
        outln!(
            "{:>6} {:>10} {:>12.2} GiB {:>16} {:>10}",
            p.depth,
            p.memory.to_string(),
            gib(p.activation_bytes as u64),
            rss,
            step
        );
        if let Some(e) = &p.error {
            outln!("       {e}");
        }
    }
    eprintln!("wrote {} and {}", png.display(), json_path.display());
    Ok(())
}
