//! `densenet train`: trains a DenseNet or a pre-activation ResNet on a data set with the
//! paper's recipe (or the quick default recipe on the built-in digits), shows progress,
//! writes a run directory, and resumes interrupted runs exactly.

use super::model_args::ModelAdjust;
use crate::model::ModelConfig;
use crate::nn::MemoryMode;
use crate::optim::SgdConfig;
use crate::train::{
    self, EpochMetrics, LargeBatch, LrScaling, Progress, RunOptions, Schedule, TrainConfig,
    TrainError,
};
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use signal_hook::consts::{SIGINT, SIGUSR1};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Arguments of `densenet train`.
#[derive(clap::Args, Debug, Default)]
#[command(
    after_long_help = "Examples:\n  densenet train\n  densenet train --model preresnet-110\n  \
    densenet train --dataset cifar10 --data ~/data/cifar-10-batches-bin \\\n    \
    --model densenet-bc-100-12 --recipe paper"
)]
pub struct Args {
    /// Model (default: densenet-bc-40-12 on digits, densenet-bc-100-12 on CIFAR/SVHN/MNIST,
    /// densenet121 on image folders); pre-activation ResNets: preresnet-110, preresnet-164,
    /// preresnet-1001.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    #[command(flatten)]
    pub adjust: ModelAdjust,
    /// Data set: digits (built in), cifar10, cifar100, cifar100-coarse, svhn, mnist,
    /// fashion-mnist, or folder (root/<class>/<image>, ImageNet's layout).
    #[arg(long, default_value = "digits")]
    pub dataset: String,
    /// Directory with the data set's files as its publisher distributes them.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Recipe: `paper` (the paper's: batch 64, 300 epochs CIFAR / 40 SVHN / 90
    /// ImageNet, lr 0.1 ÷10 at 50% and 75% of the epochs (ImageNet: at a third and two
    /// thirds), dropout 0.2 without augmentation) or `quick`
    /// (the digits default: 30 epochs, cosine schedule, weight decay 5e-4, native 8×8 inputs
    /// shifted by up to one pixel). Default: quick on digits,
    /// paper elsewhere. Every setting below overrides the recipe.
    #[arg(long)]
    pub recipe: Option<String>,
    /// Epochs.
    #[arg(long, value_parser = super::values::at_least_one())]
    pub epochs: Option<usize>,
    /// Images per batch, 1 to 65536.
    #[arg(long, value_parser = super::values::batch_size())]
    pub batch_size: Option<usize>,
    /// Base learning rate (> 0).
    #[arg(long, value_parser = super::values::learning_rate)]
    pub lr: Option<f32>,
    /// Momentum, in [0, 1).
    #[arg(long, value_parser = super::values::momentum)]
    pub momentum: Option<f32>,
    /// Weight decay (≥ 0).
    #[arg(long, value_parser = super::values::weight_decay)]
    pub weight_decay: Option<f32>,
    /// Schedule: step (÷10 at 50% and 75%), step:E1,E2 (÷10 after those epochs), cosine,
    /// constant.
    #[arg(long)]
    pub schedule: Option<Schedule>,
    /// Standard augmentation of the data set (CIFAR: pad-4 crop + flip): a bare
    /// --augment turns it on, --augment false off.
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = false,
        default_missing_value = "true"
    )]
    pub augment: Option<bool>,
    /// Nearest-neighbour upscaling of stored images (digits: 4 gives the 32×32 inputs of
    /// the PyTorch baseline; default 1; at most 64).
    #[arg(long, value_parser = super::values::one_to(crate::train::settings::MAX_UPSCALE as u64))]
    pub upscale: Option<usize>,
    /// Fraction of the training set held out for validation (picks the best checkpoint).
    #[arg(long, default_value_t = 0.0, value_parser = super::values::fraction)]
    pub val_split: f64,
    /// SVHN: also train on extra_32x32.mat (as the paper does).
    #[arg(long)]
    pub svhn_extra: bool,
    /// Under `mpirun -np N` (a build with `--features mpi`): batch norm with the
    /// statistics of the whole batch, summed over the N processes, instead of each
    /// process's share of it (synchronised batch norm: the same as one process).
    #[arg(long)]
    pub sync_bn: bool,
    /// Scale --lr with the batch (Goyal et al. 2017's linear rule): --lr is the rate of the
    /// paper's batch (64 on CIFAR, SVHN, MNIST and digits; 256 on ImageNet folders) and
    /// the run uses --lr × batch/that; config.json states the reference batch.
    #[arg(long, value_name = "RULE", value_enum)]
    pub lr_scaling: Option<LrRule>,
    /// Warm the learning rate up over the first E epochs: it rises linearly, step by
    /// step, from base/N to base (step s of the warmup's N steps runs at (s+1)/N of the
    /// scheduled rate), then the schedule runs as it would without. steps.csv records
    /// the rate of every step.
    #[arg(long, value_name = "E")]
    pub warmup_epochs: Option<usize>,
    /// No weight decay on BN parameters and biases (the large-batch recipe's rule).
    #[arg(long)]
    pub no_bn_decay: bool,
    /// Accumulate gradients: each optimizer step sums the gradients of K passes of
    /// --batch-size/K images (per process under mpirun, where they are summed over the
    /// processes once a step), with the memory of one pass. Batch norm normalises each
    /// pass with that pass's own statistics, as PyTorch does when it accumulates: with BN,
    /// K passes of B/K images are close to a batch of B, not the same.
    #[arg(long, value_name = "K", value_parser = super::values::at_least_one())]
    pub accumulate: Option<usize>,
    /// Fine-tune: start from these weights (a run's checkpoint, a safetensors state dict or
    /// a torchvision .pth of the --model's family and architecture). Every tensor is kept
    /// but the classifier for another class count and the first convolution for another
    /// channel count, which are re-initialised (the run says which).
    #[arg(long, value_name = "FILE")]
    pub init: Option<PathBuf>,
    /// Train only the classifier: the features (everything before it, final BN included)
    /// run in evaluation mode, with their running statistics, and no backward pass.
    #[arg(long, value_name = "PART", value_enum)]
    pub freeze: Option<crate::train::finetune::Freeze>,
    /// Base learning rate of everything but the classifier (≥ 0; scheduled like --lr;
    /// 0 keeps the features' parameters, not their BN statistics).
    #[arg(long, value_name = "F", value_parser = super::values::weight_decay,
          conflicts_with = "freeze")]
    pub lr_features: Option<f32>,
    /// Seed of the initialisation, shuffling, augmentation and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Memory mode.
    #[arg(long, default_value = "efficient", value_parser = super::values::memory_mode())]
    pub memory: MemoryMode,
    /// Run directory (default: a new runs/<time>-<dataset>-<model>). An existing run is
    /// refused: continue it with --resume DIR, or replace it with --force.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Replace the run in --out DIR (its checkpoints, metrics and summary).
    #[arg(long, requires = "out")]
    pub force: bool,
    /// Continue the run in DIR from its last checkpoint, with its own configuration (the
    /// flags that define a run are refused with it; --stop-after and --json apply).
    #[arg(long, value_name = "DIR", conflicts_with_all = RUN_SETTINGS, conflicts_with = "force")]
    pub resume: Option<PathBuf>,
    /// Stop after this many epochs in total (with a checkpoint; --resume continues).
    #[arg(long, value_name = "N", value_parser = super::values::at_least_one())]
    pub stop_after: Option<usize>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The flags that define a run: refused with `--resume`, which continues a run with the
/// settings stored in its directory.
const RUN_SETTINGS: [&str; 31] = [
    "out",
    "model",
    "classes",
    "in_channels",
    "drop_rate",
    "input_size",
    "bottleneck",
    "compression",
    "dataset",
    "data",
    "recipe",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "schedule",
    "augment",
    "upscale",
    "val_split",
    "svhn_extra",
    "seed",
    "memory",
    "sync_bn",
    "init",
    "freeze",
    "lr_features",
    "lr_scaling",
    "warmup_epochs",
    "no_bn_decay",
    "accumulate",
];

/// How `--lr` follows the batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LrRule {
    /// --lr as given, whatever the batch.
    None,
    /// --lr × batch / the paper's batch.
    Linear,
}

/// `p` as an absolute path (from the current directory; it need not exist).
fn absolute(p: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("{}: cannot make it absolute", p.display()))
}

/// Resolves recipe, defaults and overrides into a training configuration.
pub fn resolve(a: &Args) -> anyhow::Result<TrainConfig> {
    let ds = a.dataset.to_ascii_lowercase();
    let is = |p: &str| ds.starts_with(p);
    let recipe = a.recipe.clone().unwrap_or_else(|| {
        if is("digits") {
            "quick".into()
        } else {
            "paper".into()
        }
    });
    anyhow::ensure!(
        recipe == "paper" || recipe == "quick",
        "--recipe {recipe}: expected paper or quick"
    );
    let folder = is("folder") || is("imagenet");
    let default_model = if is("digits") {
        "densenet-bc-40-12"
    } else if folder {
        "densenet121"
    } else {
        "densenet-bc-100-12"
    };
    let model_name = a.model.clone().unwrap_or_else(|| default_model.into());
    let mut model =
        ModelConfig::from_name(&model_name).with_context(|| format!("--model {model_name}"))?;
    // paper: augmentation where the paper uses it (C10+, C100+, ImageNet), not on SVHN
    let paper_augment = is("cifar") || folder;
    let (epochs, augment, upscale) = if recipe == "paper" {
        let epochs = if is("svhn") {
            40
        } else if folder {
            90
        } else {
            300
        };
        (epochs, paper_augment, 1)
    } else {
        (QUICK_EPOCHS, is("digits"), 1)
    };
    let epochs = a.epochs.unwrap_or(epochs);
    // the recipe's schedule for the epochs actually run: milestones are fractions of the
    // run (÷10 at 50% and 75%; ImageNet at epochs 30 and 60 of 90, a third and two thirds)
    let schedule = if recipe != "paper" {
        Schedule::Cosine
    } else if folder {
        Schedule::Step {
            milestones: vec![epochs / 3, epochs * 2 / 3],
            gamma: 0.1,
        }
    } else {
        Schedule::paper(epochs)
    };
    // a short run keeps the milestones that fall inside it, after its first epoch (with
    // --epochs 1 the rate stays constant instead of being divided by 100 from the start)
    let schedule = match schedule {
        Schedule::Step {
            mut milestones,
            gamma,
        } => {
            milestones.retain(|&m| m >= 1 && m < epochs);
            milestones.dedup();
            Schedule::Step { milestones, gamma }
        }
        other => other,
    };
    let augment = a.augment.unwrap_or(augment);
    let mut schedule = a.schedule.clone().unwrap_or(schedule);
    if let (
        Some(Schedule::Step {
            milestones: given, ..
        }),
        Schedule::Step { milestones, .. },
    ) = (&a.schedule, &mut schedule)
    {
        // a bare `--schedule step`: ÷10 at 50% and 75% of the run, as the paper
        if given.is_empty() {
            *milestones = vec![epochs / 2, epochs * 3 / 4];
            milestones.retain(|&m| m >= 1 && m < epochs);
            milestones.dedup();
        }
    }
    // the paper's dropout rule, unless the model options say otherwise (DenseNets only:
    // He et al. train their ResNets without dropout)
    if let Some(m) = model.as_densenet_mut() {
        if recipe == "paper" && a.adjust.drop_rate.is_none() && !augment {
            m.drop_rate = 0.2;
        }
    }
    let model = a.adjust.apply(model)?;
    let optimizer = SgdConfig {
        lr: a.lr.unwrap_or(0.1),
        momentum: a.momentum.unwrap_or(0.9),
        weight_decay: a.weight_decay.unwrap_or(if recipe == "quick" {
            QUICK_WEIGHT_DECAY
        } else {
            1e-4
        }),
        nesterov: true,
    };
    anyhow::ensure!(epochs > 0, "--epochs must be at least 1");
    anyhow::ensure!(
        (0.0..1.0).contains(&a.val_split),
        "--val-split must be in [0, 1)"
    );
    Ok(TrainConfig {
        model,
        dataset: ds,
        // absolute, so that `eval --weights RUN` finds the data from any directory
        data_dir: a.data.as_deref().map(absolute).transpose()?,
        epochs,
        batch_size: a.batch_size.unwrap_or(64).max(1),
        optimizer,
        schedule,
        augment,
        upscale: a.upscale.unwrap_or(upscale),
        val_split: a.val_split,
        seed: a.seed,
        memory: a.memory,
        svhn_extra: a.svhn_extra,
        sync_bn: a.sync_bn,
        finetune: crate::train::finetune::FinetuneConfig {
            init: a.init.clone(),
            freeze: a.freeze,
            lr_features: a.lr_features,
        },
        large_batch: LargeBatch {
            // the paper's batch: 256 on ImageNet, 64 on the small images
            lr_scaling: (a.lr_scaling == Some(LrRule::Linear)).then_some(LrScaling::Linear {
                reference_batch: if folder { 256 } else { 64 },
            }),
            warmup_epochs: a.warmup_epochs.unwrap_or(0),
            no_bn_decay: a.no_bn_decay,
            accumulate: a.accumulate.unwrap_or(1),
        },
    })
}

/// Refuses flags that the run would ignore: the model's classes, input channels and input
/// size come from the data set, so a different `--classes`, `--in-channels` or
/// `--input-size` is an error (pointing to `--upscale` where that gives the size), and so
/// is a `step:` milestone the run never reaches.
fn check_flags(a: &Args, cfg: &TrainConfig) -> anyhow::Result<()> {
    use crate::data::DatasetKind;
    let kind: DatasetKind = cfg.dataset.parse()?;
    let name = if kind == DatasetKind::ImageFolder {
        "folder"
    } else {
        kind.name()
    };
    // channels and side of the stored images; a folder's are cropped to 224×224
    let (channels, side) = match kind {
        DatasetKind::Digits => (1, 8),
        DatasetKind::Mnist | DatasetKind::FashionMnist => (1, 28),
        DatasetKind::Cifar10 | DatasetKind::Cifar100(_) | DatasetKind::Svhn => (3, 32),
        DatasetKind::ImageFolder => (3, 224),
    };
    if let Some(c) = a.adjust.in_channels {
        anyhow::ensure!(
            c == channels,
            "--in-channels {c}: the {name} images have {channels} channel{}, and the model takes \
             the data set's channels; omit --in-channels",
            if channels == 1 { "" } else { "s" }
        );
    }
    if let Some(s) = a.adjust.input_size {
        if kind == DatasetKind::ImageFolder {
            anyhow::ensure!(
                s == side,
                "--input-size {s}: images of a folder data set are cropped to {side}×{side}, \
                 the model's input size; omit --input-size"
            );
        } else {
            let have = side * cfg.upscale;
            let hint = if s % side == 0 {
                format!("use --upscale {} for {s}×{s} inputs", s / side)
            } else {
                format!("sizes that --upscale gives are multiples of {side}")
            };
            anyhow::ensure!(
                s == have,
                "--input-size {s}: the model's input size comes from the data set: {name} \
                 images are {side}×{side}, upscaled ×{} to {have}×{have}; {hint}, or omit \
                 --input-size",
                cfg.upscale
            );
        }
    }
    // fine-tuning flags on a fresh network would train on random features, unannounced
    if a.init.is_none() {
        let flag = match (a.freeze.is_some(), a.lr_features.is_some()) {
            (true, _) => Some("--freeze"),
            (_, true) => Some("--lr-features"),
            _ => None,
        };
        if let Some(flag) = flag {
            anyhow::bail!(
                "{flag} fine-tunes pretrained features, but no --init FILE gives them: the \
                 features would be the random initialisation; give --init"
            );
        }
    }
    if let Some(n) = a.adjust.classes {
        match kind.num_classes() {
            Some(k) => anyhow::ensure!(
                n == k,
                "--classes {n}: {name} has {k} classes, and the model takes the data set's \
                 classes; omit --classes"
            ),
            None => anyhow::bail!(
                "--classes {n}: a folder data set has one class per subdirectory, and the \
                 model takes them; omit --classes"
            ),
        }
    }
    if let (Some(Schedule::Step { milestones, .. }), Schedule::Step { .. }) =
        (&a.schedule, &cfg.schedule)
    {
        if let Some(m) = milestones.iter().find(|&&m| m >= cfg.epochs) {
            anyhow::bail!(
                "--schedule: milestone {m} is never reached in {} (milestones are \
                 epochs 1 to {} after which the rate falls ÷10)",
                super::count(cfg.epochs, "epoch"),
                cfg.epochs.saturating_sub(1)
            );
        }
    }
    Ok(())
}

/// The learning rate and what shapes it: `0.8 (0.1 × 512/64), warmup 5 epochs, no BN
/// decay, 4 passes of 128 a step`.
fn lr_text(cfg: &TrainConfig) -> String {
    let lb = &cfg.large_batch;
    let mut s = cfg.base_lr().to_string();
    if let Some(LrScaling::Linear { reference_batch }) = lb.lr_scaling {
        s += &format!(
            " ({} × {}/{reference_batch})",
            cfg.optimizer.lr, cfg.batch_size
        );
    }
    if lb.warmup_epochs > 0 {
        s += &format!(", warmup {}", super::count(lb.warmup_epochs, "epoch"));
    }
    if lb.no_bn_decay {
        s += ", no BN decay";
    }
    if lb.accumulate > 1 {
        s += &format!(
            ", {} passes of {} a step",
            lb.accumulate,
            cfg.batch_size / lb.accumulate
        );
    }
    s
}

/// Epochs of the quick recipe: DenseNet-BC-40-12 on native 8×8 digits shifted by up to
/// one pixel takes about 1.3 s an epoch here, and its test accuracy has settled by then.
pub const QUICK_EPOCHS: usize = 30;
/// Weight decay of the quick recipe. 1,500 training images overfit within ten epochs;
/// final test accuracy over seeds 0 and 1 (`densenet train --seed S [--weight-decay W]`):
/// 97.98% / 97.98% with the paper's 1e-4, 98.65% / 97.98% with 5e-4.
pub const QUICK_WEIGHT_DECAY: f32 = 5e-4;

/// A progress bar on stderr (hidden when stderr is not a terminal) plus one line per epoch.
struct Bar {
    bar: Option<ProgressBar>,
    /// No epoch lines (`--json`, or a process other than rank 0).
    quiet: bool,
    /// Notes (the run directory, what `--init` loaded, …): rank 0 only, so that a
    /// data-parallel run says each once.
    notes: bool,
}

impl Drop for Bar {
    /// An epoch that ends early (an error, Ctrl-C) leaves no bar behind mid-line.
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, batches: usize) {
        // one bar for the run: rank 0's
        if !self.notes {
            return;
        }
        let bar = ProgressBar::new(batches as u64);
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{epoch}/{epochs}"));
        self.bar = Some(bar);
    }
    fn batch(&mut self, done: usize, loss: f64, accuracy: f64, images_per_s: f64) {
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
            b.set_message(format!(
                "loss {loss:.4} acc {:.2}% {images_per_s:.0} img/s",
                100.0 * accuracy
            ));
        }
    }
    fn epoch_end(&mut self, m: &EpochMetrics) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if !self.quiet {
            let val = m
                .val_accuracy
                .map(|v| format!(" val {:.2}%", 100.0 * v))
                .unwrap_or_default();
            eprintln!(
                "epoch {:>3}: lr {:.4} loss {:.4} train {:.2}%{val} test {:.2}% (loss {:.4}) {:.1} s",
                m.epoch,
                m.lr,
                m.train_loss,
                100.0 * m.train_accuracy,
                100.0 * m.test_accuracy,
                m.test_loss,
                m.seconds
            );
        }
    }
    fn message(&mut self, text: &str) {
        if self.notes {
            eprintln!("{text}");
        }
    }
}

/// `runs/<UTC yyyymmdd-hhmmss>-<dataset>-<model>`.
fn default_run_dir(cfg: &TrainConfig) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // civil-from-days (H. Hinnant's algorithm): days since 1970-01-01 → y-m-d
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    PathBuf::from("runs").join(format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{}-{}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        cfg.dataset,
        cfg.model.name()
    ))
}

/// Exit status of a run stopped by Ctrl-C (128 + SIGINT, what a shell reports).
pub const INTERRUPTED: i32 = 130;

/// An interrupted run: what was kept, and how to continue (the binary prints it, unless
/// empty, and exits with [`INTERRUPTED`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Interrupted(pub String);

/// A training error with the command line's advice: how to continue an existing or
/// interrupted run.
fn explain(e: train::TrainError) -> anyhow::Error {
    match e {
        // what a run killed before its first checkpoint left (before config.json came
        // with the first checkpoint): nothing to continue
        TrainError::RunExists { ref dir } if !dir.join("last.safetensors").exists() => {
            anyhow::anyhow!(
                "{e}, stopped before its first checkpoint (nothing to resume)\nhint: replace \
                 it with `--out {0} --force`, or choose another --out",
                dir.display()
            )
        }
        TrainError::RunExists { ref dir } => {
            anyhow::anyhow!(
                "{e}\nhint: continue it with `densenet train --resume {0}`, replace it with \
                 `--out {0} --force`, or choose another --out",
                dir.display()
            )
        }
        TrainError::Interrupted {
            dir,
            epochs_done: 0,
            ..
        } if !dir.join("last.safetensors").exists() => {
            Interrupted("interrupted during the first epoch; nothing was kept".into()).into()
        }
        TrainError::Interrupted {
            dir,
            epochs_done,
            epochs,
        } => Interrupted(format!(
            "interrupted after epoch {epochs_done} of {epochs} (the checkpoint of that \
             epoch is kept, an unfinished one is not). Continue with:\n  densenet train \
             --resume {}",
            dir.display()
        ))
        .into(),
        e => e.into(),
    }
}

/// Runs `densenet train`.
pub fn run(a: Args) -> anyhow::Result<()> {
    // the processes of a data-parallel run (`mpirun -np N densenet train …`): rank 0
    // draws the progress and prints the results
    let comm = crate::dist::connect()?;
    let rank = comm.as_ref().map_or(0, |c| c.rank());
    let (cfg, dir, resume, unique) = match &a.resume {
        Some(dir) => {
            let path = dir.join("config.json");
            // a run writes both with its first checkpoint
            for file in [&path, &dir.join("last.safetensors")] {
                anyhow::ensure!(
                    file.exists(),
                    "{}: not found, so no run to resume (a run writes it with its first \
                     checkpoint); start one there with --out {}",
                    file.display(),
                    dir.display()
                );
            }
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!("{}: cannot read the run's configuration", path.display())
            })?;
            let cfg: TrainConfig =
                serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
            (cfg, dir.clone(), true, false)
        }
        None => {
            let cfg = resolve(&a)?;
            check_flags(&a, &cfg)?;
            match a.out.clone() {
                Some(dir) => (cfg, dir, false, false),
                None => {
                    let dir = default_run_dir(&cfg);
                    (cfg, dir, false, true)
                }
            }
        }
    };
    if !resume && rank == 0 {
        eprintln!(
            "training {} on {} for {} (batch {}, lr {}, {})",
            cfg.model.name(),
            cfg.dataset,
            super::count(cfg.epochs, "epoch"),
            cfg.batch_size,
            lr_text(&cfg),
            cfg.schedule,
        );
    }
    let mut bar = Bar {
        bar: None,
        quiet: a.json || rank > 0,
        notes: rank == 0,
    };
    // Ctrl-C raises the flag and training stops after the current step; a second Ctrl-C
    // (the flag already raised) ends the process at once, as the default action would
    let interrupt = Arc::new(AtomicBool::new(false));
    // Under mpirun, Ctrl-C reaches mpirun alone (the ranks run in process groups of their
    // own), which kills the job at once; mpirun forwards SIGUSR1 to every rank, and that
    // stops them all after the same step, as Ctrl-C stops one process (README, MPI).
    signal_hook::flag::register_conditional_shutdown(SIGINT, INTERRUPTED, interrupt.clone())
        .and_then(|_| signal_hook::flag::register(SIGINT, interrupt.clone()))
        .and_then(|_| signal_hook::flag::register(SIGUSR1, interrupt.clone()))
        .context("cannot install the Ctrl-C handler")?;
    let opts = RunOptions {
        dir: &dir,
        resume,
        stop_after: a.stop_after,
        replace: a.force,
        unique,
        interrupt: Some(&interrupt),
        comm: comm.clone(),
    };
    let summary = match train::train(&cfg, &opts, &mut bar) {
        Ok(s) => s,
        Err(e) => {
            drop(bar);
            // every process stops at the same step when one is interrupted; rank 0 says
            // how to continue
            let all_stop = matches!(e, TrainError::Interrupted { .. });
            let e = explain(e);
            if let Some(c) = comm.as_ref().filter(|c| c.size() > 1 && all_stop) {
                // rank 0 says it before any process exits: mpirun ends the whole job when
                // the first rank exits with a non-zero status, and a rank that got here
                // first cut rank 0 short (tests/mpi.rs, SIGUSR1, seen once in CI)
                if let Some(i) = e.downcast_ref::<Interrupted>().filter(|_| rank == 0) {
                    eprintln!("{i}");
                }
                // a barrier: every rank has reached here, so rank 0 has printed
                c.sum_f64(&mut [0.0]);
                return Err(Interrupted(String::new()).into());
            }
            if let Some(c) = comm.as_ref().filter(|c| c.size() > 1 && !all_stop) {
                // the other processes may be waiting for this one in a collective: end
                // them all, saying which process failed and why
                eprintln!(
                    "error: rank {} of {}: {}",
                    c.rank(),
                    c.size(),
                    super::error_text(&e)
                );
                c.abort(2);
            }
            return Err(e);
        }
    };
    if rank > 0 {
        return Ok(());
    }
    let dir = summary.run_dir.clone();
    if summary.epochs == cfg.epochs {
        if let Err(e) = super::plot::run_dir_curves(&dir) {
            eprintln!(
                "warning: learning curves not drawn: {}",
                super::error_text(&e)
            );
        }
    }
    if a.json {
        return super::print_json(&summary);
    }
    outln!(
        "{} ({} parameters) on {}: test accuracy {:.2}% (error {:.2}%) after {}, best \
         {:.2}% at epoch {}; {:.1} s, {:.0} images/s; run directory {}",
        summary.model,
        super::summary::group(summary.parameters),
        summary.dataset,
        100.0 * summary.test_accuracy,
        summary.test_error_percent,
        super::count(summary.epochs, "epoch"),
        100.0 * summary.best_test_accuracy,
        summary.best_epoch,
        summary.seconds,
        summary.images_per_s,
        summary.run_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The data directory is stored absolute: a run's `eval --weights` from another
    /// directory reads the same files.
    #[test]
    fn the_data_directory_is_stored_absolute() {
        let a = Args {
            dataset: "cifar10".into(),
            data: Some(PathBuf::from("some/relative/dir")),
            ..Args::default()
        };
        let dir = resolve(&a).unwrap().data_dir.unwrap();
        assert!(dir.is_absolute(), "{}", dir.display());
        assert!(dir.ends_with("some/relative/dir"), "{}", dir.display());
    }

    /// `--freeze` and `--lr-features` without `--init` are refused before anything runs.
    #[test]
    fn fine_tuning_flags_need_init() {
        use crate::train::finetune::Freeze;
        let check = |a: &Args| check_flags(a, &resolve(a).unwrap());
        let digits = || Args {
            dataset: "digits".into(),
            ..Args::default()
        };
        let frozen = Args {
            freeze: Some(Freeze::Features),
            ..digits()
        };
        let e = check(&frozen).unwrap_err().to_string();
        assert!(
            e.starts_with("--freeze fine-tunes") && e.contains("--init"),
            "{e}"
        );
        let features = Args {
            lr_features: Some(0.01),
            ..digits()
        };
        let e = check(&features).unwrap_err().to_string();
        assert!(e.starts_with("--lr-features"), "{e}");
        let with_init = Args {
            init: Some(PathBuf::from("w.safetensors")),
            ..frozen
        };
        assert!(check(&with_init).is_ok());
        assert!(check(&digits()).is_ok());
    }

    /// `--resume DIR --force` is refused: a resumed run replaces nothing.
    #[test]
    fn resume_refuses_force() {
        let parse = |args: &[&str]| crate::cli::Cli::try_parse_from(args);
        let Err(e) = parse(&["densenet", "train", "--resume", "runs/x", "--force"]) else {
            panic!("--resume with --force was accepted")
        };
        assert!(e.to_string().contains("--force"), "{e}");
        assert!(parse(&["densenet", "train", "--resume", "runs/x"]).is_ok());
    }

    fn milestones(dataset: &str, epochs: Option<usize>) -> Vec<usize> {
        let a = Args {
            dataset: dataset.into(),
            recipe: Some("paper".into()),
            epochs,
            ..Args::default()
        };
        match resolve(&a).unwrap().schedule {
            Schedule::Step { milestones, .. } => milestones,
            other => panic!("{dataset}: {other:?}"),
        }
    }

    /// The paper recipe's milestones follow --epochs (they stayed at 150/225 before).
    #[test]
    fn paper_milestones_scale_with_epochs() {
        assert_eq!(milestones("cifar10", None), [150, 225]);
        assert_eq!(milestones("svhn", None), [20, 30]);
        assert_eq!(milestones("folder", None), [30, 60]);
        assert_eq!(milestones("cifar10", Some(4)), [2, 3]);
        assert_eq!(milestones("svhn", Some(8)), [4, 6]);
        assert_eq!(milestones("digits", Some(4)), [2, 3]);
        assert_eq!(milestones("folder", Some(9)), [3, 6]);
        // short runs: no milestone at epoch 0, none twice, none past the run
        assert_eq!(milestones("cifar10", Some(1)), Vec::<usize>::new());
        assert_eq!(milestones("cifar10", Some(2)), [1]);
        assert_eq!(milestones("cifar10", Some(3)), [1, 2]);
        assert_eq!(milestones("folder", Some(2)), [1]);
    }
}
