//! The command line: one module per subcommand, each starting with what it does. Results
//! go to stdout (a table, or one JSON object with `--json`); progress and logs to stderr.

/// `println!` for results: writes to a locked stdout and returns the error with `?`, so a
/// reader that stops early (`densenet predict … | head -1`) ends the command quietly (see
/// `main.rs`) instead of panicking with "failed printing to stdout".
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?;
    }};
}

mod bench;
mod compare;
mod embed;
mod eval;
mod export;
mod forward;
mod heatmap;
mod model_args;
mod plot;
mod predict;
mod summary;
mod train;
mod values;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

pub use model_args::ModelArgs;
pub use train::{Interrupted, INTERRUPTED};

/// DenseNets (Huang et al., CVPR 2017) on the CPU: summarise, run, train and analyse every
/// DenseNet of the paper, with parity to PyTorch and the memory-efficient design, and the
/// pre-activation ResNets it compares against (preresnet-110/164/1001).
#[derive(Parser, Debug)]
#[command(name = "densenet", version, about, long_about = None)]
pub struct Cli {
    /// Worker threads, 1 to 1024 (default: all cores).
    #[arg(long, global = true, value_parser = values::one_to(1024))]
    pub threads: Option<usize>,
    /// Arithmetic of the products: f32 (default; parity with PyTorch) or bf16 (bfloat16
    /// operands, f32 sums, as PyTorch's CPU autocast). bf16 covers evaluation's
    /// convolutions (forward, predict, eval, embed, bench infer): every one on AMX, the
    /// 1×1s on AVX512-BF16; the rest stays f32, and training refuses it. Without either
    /// it runs a slow portable reference.
    #[arg(long, global = true, default_value = "f32", value_parser = crate::ops::route::Precision::parse)]
    pub precision: crate::ops::route::Precision,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Per-stage shapes, parameters and multiply-accumulates of a model.
    Summary(summary::Args),
    /// Run a model on tensors from a safetensors file (eval logits, or a training step's
    /// logits, loss, gradients and running statistics with --train).
    Forward(forward::Args),
    /// Benchmarks: training step time, inference time, memory against depth.
    Bench(bench::Args),
    /// Train a DenseNet or a pre-activation ResNet (with no arguments: DenseNet-BC on the
    /// built-in digits set).
    Train(Box<train::Args>),
    /// Draw a run's learning curves (curves.png) from its metrics.csv.
    Plot(plot::Args),
    /// Top-1/top-5 error, per-class accuracy and confusion matrix on a test set.
    Eval(eval::Args),
    /// Top classes of images, with probabilities.
    Predict(predict::Args),
    /// Per-image features (pooled, or a dense block's maps) of images, to a file.
    Embed(embed::Args),
    /// The feature-reuse heat map of a trained DenseNet (the paper's Fig. 5).
    Heatmap(heatmap::Args),
    /// Test error against parameters for finished runs (table and PNG or SVG).
    Compare(compare::Args),
    /// Write a model with its weights as an ONNX file (evaluation graph).
    Export(export::Args),
}

/// Help is wrapped at this many columns, whatever the terminal (a help text that fits 79
/// columns reads the same in a terminal, a pager and a mail).
pub const HELP_WIDTH: usize = 79;

/// The command line's definition, with every (sub)command's help wrapped at [`HELP_WIDTH`].
pub fn command() -> clap::Command {
    fn wrap(cmd: clap::Command) -> clap::Command {
        cmd.term_width(HELP_WIDTH).mut_subcommands(wrap)
    }
    wrap(Cli::command())
}

/// Parses the command line and runs the subcommand.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    // The kernels table is chosen once, before any work: an unusable DENSENET_KERNELS (or
    // DENSENET_ROUTES) is an error here rather than a warning inside the library.
    let kernels = crate::kernels::from_env()?;
    crate::kernels::force(kernels);
    crate::ops::route::set_policy(crate::ops::route::Policy::from_env()?);
    set_precision(&cli)?;
    let t = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // The main thread is worker 0: each parallel operation it starts then begins on its
    // own deque, instead of being handed to a pool thread and waited for (a queue push
    // that allocates every few dozen operations, and a wake-up, ~800 times a BC-100 step).
    rayon::ThreadPoolBuilder::new()
        .num_threads(t.max(1))
        .use_current_thread()
        .build_global()
        .map_err(|e| anyhow::anyhow!("cannot start {t} threads: {e}"))?;
    match cli.command {
        Command::Summary(a) => summary::run(a),
        Command::Forward(a) => forward::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Train(a) => train::run(*a),
        Command::Plot(a) => plot::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Embed(a) => embed::run(a),
        Command::Heatmap(a) => heatmap::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Export(a) => export::run(a),
    }
}

/// Sets `--precision` for the process, before any plan is made: refused where the
/// command trains (no bf16 training routes yet), with a warning where the bf16 kernels
/// would be the portable reference.
fn set_precision(cli: &Cli) -> anyhow::Result<()> {
    use crate::ops::route::Precision;
    if cli.precision == Precision::Bf16 {
        let trains = matches!(cli.command, Command::Train(_))
            || matches!(&cli.command, Command::Bench(b) if b.trains())
            || matches!(&cli.command, Command::Forward(f) if f.train);
        anyhow::ensure!(
            !trains,
            "--precision bf16: training in bf16 is not built yet (evaluation only)"
        );
        if !crate::kernels::bf16::Products::active().is_vector() {
            eprintln!(
                "warning: no AVX512-BF16 (this CPU, or DENSENET_KERNELS): --precision bf16 \
                 runs the portable bf16 reference, which is slow"
            );
        }
    }
    crate::ops::route::set_precision(cli.precision);
    Ok(())
}

/// An error and its causes on one line, `: `-separated, each cause once: a cause whose
/// text the message already holds (an error that prints its source and also returns it
/// from `source()`, as `{path}: {source}` variants do) is not repeated.
pub fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let s = cause.to_string();
        if text.contains(&s) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&s);
    }
    text
}

/// Bytes in MiB, for the text reports.
pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// `1 epoch`, `2 epochs`: a count with its noun in the right number (nouns with a plain
/// plural `s`).
pub(crate) fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Prints a serde value as pretty JSON with a trailing newline.
pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}
