//! Training and evaluation: the paper's recipe on a data set, with checkpoints that resume
//! exactly, per-epoch metrics and a run directory. One loop for both model families: it
//! drives an [`AnyModel`] through the [`Model`] trait.
//!
//! Reproducibility rests on one rule: every random choice is a pure function of the run's
//! seed and the position in the run. The epoch's order comes from (seed, epoch), each
//! batch's augmentation from (seed, epoch, batch) (see [`crate::data::pipeline`]), and each
//! step's dropout masks from (seed, epoch, batch) too. So a run resumed from the checkpoint
//! of epoch e continues exactly as the uninterrupted run would have, with no generator
//! state to save.
//!
//! A run directory holds `config.json` (the resolved configuration), `metrics.csv` (one
//! row per epoch), `last.safetensors` and `best.safetensors` (checkpoints, see
//! [`checkpoint`]) and, at the end, `summary.json`.

pub mod checkpoint;
pub mod finetune;
mod parallel;
pub mod schedule;
pub mod settings;

use crate::data::augment::{Geometry, Transform};
use crate::data::pipeline::{holdout_fraction, Batch, Loader, LoaderConfig};
use crate::data::{self, DataError, DatasetKind, Source, Split};
use crate::dist::Collective;
use crate::model::{AnyModel, Frozen, Model, ModelConfig, ModelWorkspace};
use crate::nn::MemoryMode;
use crate::nn::TrainOptions;
use crate::optim::{Sgd, SgdConfig};
use crate::util::rng::mix_seed;
use crate::weights::WeightsError;
use checkpoint::Preprocess;
use parallel::Parallel;
pub use schedule::Schedule;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Why training stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Reading or preparing data failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Reading or writing weights failed.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The initial weights (`--init`) do not fit the model.
    #[error(transparent)]
    Init(#[from] finetune::InitError),
    /// A file of the run directory could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The loss stopped being a finite number.
    #[error(
        "the loss became {loss} at epoch {epoch}, batch {batch} (learning rate {lr}); \
         training stopped. {checkpoint}\nhint: lower --lr, or check the input data"
    )]
    Diverged {
        /// Epoch (1-based).
        epoch: usize,
        /// Batch within the epoch (0-based).
        batch: usize,
        /// The loss value.
        loss: f32,
        /// Learning rate at the time.
        lr: f32,
        /// Where the last good checkpoint is.
        checkpoint: String,
    },
    /// An inconsistent configuration.
    #[error("{0}")]
    Config(String),
    /// A fresh run was asked for in a directory that holds a run; nothing was changed
    /// there.
    #[error("{}: holds a run already", dir.display())]
    RunExists {
        /// The directory.
        dir: PathBuf,
    },
    /// A fresh run was asked for in a place that is not an empty directory nor a run
    /// directory; nothing was changed there.
    #[error("{}: {what}; a run needs a new or an empty directory", dir.display())]
    NotARunDir {
        /// The path.
        dir: PathBuf,
        /// What is in the way.
        what: String,
    },
    /// [`RunOptions::interrupt`] was raised: training stopped after a finished step and
    /// wrote nothing for the unfinished epoch. The run's last checkpoint (if `epochs_done`
    /// is above 0) is where a resumed run continues; a fresh run interrupted during its
    /// first epoch left nothing behind.
    #[error("interrupted after {epochs_done} of {epochs} epochs ({})", dir.display())]
    Interrupted {
        /// The run directory.
        dir: PathBuf,
        /// Epochs completed (and checkpointed).
        epochs_done: usize,
        /// Epochs the run asks for.
        epochs: usize,
    },
}

/// Everything that defines a training run (written to `config.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The network (a DenseNet or a pre-activation ResNet).
    pub model: ModelConfig,
    /// Data set name (`digits`, `cifar10`, `cifar100`, `svhn`, `mnist`, …).
    pub dataset: String,
    /// Where its files are (none for the built-in digits).
    pub data_dir: Option<PathBuf>,
    /// Epochs.
    pub epochs: usize,
    /// Images per training batch.
    pub batch_size: usize,
    /// Optimizer; `lr` is the base learning rate.
    pub optimizer: SgdConfig,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Training-set augmentation (the data set's standard one).
    pub augment: bool,
    /// Nearest-neighbour upscaling of stored images (digits: 8×8 → 8·u).
    pub upscale: usize,
    /// Fraction of the training set held out for validation (0 = none).
    pub val_split: f64,
    /// Seed of everything random.
    pub seed: u64,
    /// Memory mode.
    pub memory: MemoryMode,
    /// SVHN: also train on `extra_32x32.mat` (the paper does).
    pub svhn_extra: bool,
    /// Data-parallel runs: batch norm with the statistics of the whole batch rather than
    /// each process's share (synchronised batch norm; the same as one process).
    #[serde(default)]
    pub sync_bn: bool,
    /// Fine-tuning: initial weights, frozen part, the features' learning rate.
    #[serde(default)]
    pub finetune: finetune::FinetuneConfig,
}

/// One epoch's figures (a row of `metrics.csv`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch, 1-based.
    pub epoch: usize,
    /// Learning rate used.
    pub lr: f32,
    /// Mean training loss (over the epoch's images, in training mode).
    pub train_loss: f64,
    /// Training accuracy (fraction, in training mode).
    pub train_accuracy: f64,
    /// Validation accuracy, when a split is held out.
    pub val_accuracy: Option<f64>,
    /// Test loss (evaluation mode).
    pub test_loss: f64,
    /// Test accuracy (fraction).
    pub test_accuracy: f64,
    /// Wall-clock seconds of the epoch (training and evaluation).
    pub seconds: f64,
}

/// Where a run is (stored in checkpoints).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epochs_done: usize,
    /// Every completed epoch's metrics.
    pub metrics: Vec<EpochMetrics>,
    /// Best test accuracy so far (the best checkpoint's).
    pub best_accuracy: f64,
    /// Its epoch (1-based; 0 = none yet).
    pub best_epoch: usize,
    /// Wall-clock seconds spent so far, across resumptions.
    pub seconds: f64,
}

/// The result of a run (`summary.json`).
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    /// Format version.
    pub version: u32,
    /// Model name.
    pub model: String,
    /// Model family: `densenet` or `preact_resnet`.
    pub family: String,
    /// Data set.
    pub dataset: String,
    /// Trainable parameters.
    pub parameters: usize,
    /// Epochs completed.
    pub epochs: usize,
    /// Final test accuracy (fraction).
    pub test_accuracy: f64,
    /// Final test error in percent.
    pub test_error_percent: f64,
    /// Best test accuracy over the epochs (fraction).
    pub best_test_accuracy: f64,
    /// Its epoch.
    pub best_epoch: usize,
    /// Wall-clock seconds of training (all epochs, across resumptions).
    pub seconds: f64,
    /// Training images per second.
    pub images_per_s: f64,
    /// The run directory.
    pub run_dir: PathBuf,
}

/// Evaluation of a model on a data set.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    /// Images.
    pub images: usize,
    /// Mean cross-entropy loss.
    pub loss: f64,
    /// Top-1 accuracy (fraction).
    pub top1_accuracy: f64,
    /// Top-5 accuracy (fraction; 1 with five classes or fewer).
    pub top5_accuracy: f64,
    /// Per class: accuracy (fraction) and number of images.
    pub per_class: Vec<(f64, usize)>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

/// Receives progress; the command line draws a progress bar with it.
pub trait Progress {
    /// An epoch of `batches` batches starts.
    fn epoch_start(&mut self, epoch: usize, epochs: usize, batches: usize) {
        let _ = (epoch, epochs, batches);
    }
    /// A batch finished: running mean loss and accuracy of the epoch so far.
    fn batch(&mut self, done: usize, loss: f64, accuracy: f64, images_per_s: f64) {
        let _ = (done, loss, accuracy, images_per_s);
    }
    /// An epoch finished.
    fn epoch_end(&mut self, m: &EpochMetrics) {
        let _ = m;
    }
    /// A line of information.
    fn message(&mut self, text: &str) {
        let _ = text;
    }
}

/// A [`Progress`] that ignores everything.
pub struct Quiet;
impl Progress for Quiet {}

/// The training and test sources of a run and how their images become inputs.
pub struct DataSetup {
    /// Training source.
    pub train: Arc<Source>,
    /// Test source.
    pub test: Arc<Source>,
    /// Training-set indices used for training.
    pub train_indices: Vec<usize>,
    /// Held-out validation indices.
    pub val_indices: Vec<usize>,
    /// Training transform (with augmentation if enabled).
    pub train_transform: Transform,
    /// Evaluation transform.
    pub eval_transform: Transform,
    /// `(channels, height, width)` of a network input.
    pub input: (usize, usize, usize),
}

impl DataSetup {
    /// Loads the data of `config` (`kind` parsed from `config.dataset`).
    pub fn load(config: &TrainConfig) -> Result<Self, TrainError> {
        let kind: DatasetKind = config
            .dataset
            .parse()
            .map_err(|e: DataError| TrainError::Config(e.to_string()))?;
        let dir = config.data_dir.as_deref();
        let mut train = data::load(kind, dir, Split::Train)?;
        if config.svhn_extra {
            let extra = data::load(kind, dir, Split::Extra)?;
            if let (Source::Memory(t), Source::Memory(e)) = (&mut train, extra) {
                t.append(e)?;
            }
        }
        let mut test = data::load(kind, dir, Split::Test)?;
        // an image folder's val/ may list its classes differently: match them by name
        test.align_classes(train.classes())?;
        let mut train_transform = Transform::preset(kind, true, &train)?;
        let mut eval_transform = Transform::preset(kind, false, &train)?;
        if !config.augment {
            train_transform.geometry = eval_transform.geometry.clone();
            train_transform.hflip = false;
        }
        // the configuration's factor is the resolved one (the recipe's or the user's)
        let up = config.upscale.max(1);
        train_transform.upscale = up;
        eval_transform.upscale = up;
        if kind == DatasetKind::Digits && config.augment {
            // digits: shifts of up to one original pixel; no flips (a mirrored 2 is no digit)
            train_transform.geometry = Geometry::PadCrop {
                pad: up,
                size: 8 * up,
            };
            train_transform.hflip = false;
        }
        let input = match &train {
            Source::Memory(d) => eval_transform.output_shape(d.channels, d.height, d.width)?,
            Source::Folder(_) => (3, 224, 224),
        };
        let (train_indices, val_indices) = if config.val_split > 0.0 {
            holdout_fraction(train.len(), config.val_split, config.seed)?
        } else {
            ((0..train.len()).collect(), vec![])
        };
        Ok(DataSetup {
            train: Arc::new(train),
            test: Arc::new(test),
            train_indices,
            val_indices,
            train_transform,
            eval_transform,
            input,
        })
    }

    /// What `predict` needs to prepare an image like the evaluation transform does.
    pub fn preprocess(&self) -> Preprocess {
        Preprocess {
            max_value: self.train.max_value(),
            mean: self.eval_transform.normalize.mean.clone(),
            std: self.eval_transform.normalize.std.clone(),
            upscale: self.eval_transform.upscale,
            classes: self.train.classes().to_vec(),
            center_crop: match self.eval_transform.geometry {
                Geometry::ResizeCenterCrop { resize, crop } => {
                    Some(checkpoint::CenterCrop { resize, crop })
                }
                _ => None,
            },
        }
    }

    /// Checks that `model` fits this data and returns it with classes, channels and input
    /// size taken from the data.
    pub fn fit_model(&self, mut model: ModelConfig) -> Result<ModelConfig, TrainError> {
        let (c, h, w) = self.input;
        if h != w {
            return Err(TrainError::Config(format!(
                "inputs are {h}×{w}; only square inputs are supported"
            )));
        }
        model.set_io(self.train.num_classes(), c, h);
        model.validate().map_err(|e| {
            TrainError::Config(format!("model {} on {h}×{w} inputs: {e}", model.name()))
        })?;
        Ok(model)
    }
}

/// Evaluates `net` in evaluation mode on `indices` of `source` (all when `None`).
pub fn evaluate<M: Model>(
    net: &mut M,
    ws: &mut M::Workspace,
    source: &Arc<Source>,
    indices: Option<Vec<usize>>,
    transform: &Transform,
) -> Result<Evaluation, TrainError> {
    let classes = net.model_config().num_classes();
    let loader = Loader::new(
        source.clone(),
        indices,
        transform.clone(),
        LoaderConfig::eval(ws.batch()),
    )?;
    let mut confusion = vec![vec![0u64; classes]; classes];
    let (mut loss_sum, mut top5, mut images) = (0f64, 0usize, 0usize);
    // the weights stay put for the whole evaluation: pack them once
    let mut net = Frozen::new(net);
    for batch in loader.epoch(0) {
        let batch: Batch = batch?;
        let n = batch.len();
        let logits = net.forward_eval(ws, &batch.images, n, None);
        for (i, &y) in batch.labels.iter().enumerate() {
            let row = &logits[i * classes..(i + 1) * classes];
            let pred = argmax(row);
            confusion[y as usize][pred] += 1;
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let lse = max as f64
                + row
                    .iter()
                    .map(|&v| ((v - max) as f64).exp())
                    .sum::<f64>()
                    .ln();
            loss_sum += lse - row[y as usize] as f64;
            let better = row.iter().filter(|&&v| v > row[y as usize]).count();
            if better < 5 {
                top5 += 1;
            }
        }
        images += n;
    }
    Ok(Evaluation::from_counts(images, loss_sum, top5, confusion))
}

impl Evaluation {
    /// The figures from their sums: images, the sum of their losses, how many had the
    /// label among the top five, and the confusion matrix.
    pub fn from_counts(
        images: usize,
        loss_sum: f64,
        top5: usize,
        confusion: Vec<Vec<u64>>,
    ) -> Self {
        let classes = confusion.len();
        let correct: u64 = (0..classes).map(|c| confusion[c][c]).sum();
        let per_class = (0..classes)
            .map(|c| {
                let total: u64 = confusion[c].iter().sum();
                (
                    if total > 0 {
                        confusion[c][c] as f64 / total as f64
                    } else {
                        0.0
                    },
                    total as usize,
                )
            })
            .collect();
        let n = images.max(1) as f64;
        Evaluation {
            images,
            loss: loss_sum / n,
            top1_accuracy: correct as f64 / n,
            top5_accuracy: top5 as f64 / n,
            per_class,
            confusion,
        }
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Distinguishes the dropout seeds from the data pipeline's seeds of the same batch.
const DROPOUT_TAG: u64 = 0xd20f;

/// Options of one call to [`train`].
pub struct RunOptions<'a> {
    /// The run directory. A fresh run creates it; an existing directory is used only if
    /// it is empty (or, with `replace`, holds a run).
    pub dir: &'a Path,
    /// Continue from `dir/last.safetensors`.
    pub resume: bool,
    /// Stop (with a checkpoint) after this many epochs in total, even if the configuration
    /// asks for more; a later `resume` continues. `None`: run to the end.
    pub stop_after: Option<usize>,
    /// A fresh run in a directory that holds a run replaces that run's files (the files
    /// [`RUN_FILES`] names; anything else there is kept) instead of being refused.
    pub replace: bool,
    /// When `dir` exists, a fresh run takes the first free `dir-2`, `dir-3`, … instead
    /// (for generated names: two runs started in the same second get two directories).
    pub unique: bool,
    /// Raised (e.g. by a Ctrl-C handler) to stop after the current step; see
    /// [`TrainError::Interrupted`].
    pub interrupt: Option<&'a AtomicBool>,
    /// The processes of a data-parallel run (`None`, or one process: this one alone).
    /// Each takes its share of every batch; rank 0 writes the run directory.
    pub comm: Option<Arc<dyn Collective>>,
}

impl<'a> RunOptions<'a> {
    /// A fresh run in `dir`, to the end, not replacing anything, uninterruptible.
    pub fn new(dir: &'a Path) -> Self {
        RunOptions {
            dir,
            resume: false,
            stop_after: None,
            replace: false,
            unique: false,
            interrupt: None,
            comm: None,
        }
    }
}

/// The files a run directory is made of (and their temporary files while being written).
pub const RUN_FILES: [&str; 6] = [
    "config.json",
    "metrics.csv",
    "last.safetensors",
    "best.safetensors",
    "summary.json",
    "curves.png",
];

/// Whether `dir` holds a run (any of [`RUN_FILES`], or one being written).
pub fn is_run_dir(dir: &Path) -> bool {
    RUN_FILES
        .iter()
        .any(|f| dir.join(f).exists() || dir.join(format!(".{f}.tmp")).exists())
}

/// Removes the files of a run from `dir` (not the directory, nor other files in it).
fn remove_run_files(dir: &Path) -> Result<(), TrainError> {
    for f in RUN_FILES {
        for name in [f.to_string(), format!(".{f}.tmp")] {
            let path = dir.join(name);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(TrainError::Io { path, source: e })
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// What [`claim_run_dir`] created, to be removed if the run fails before its first
/// checkpoint.
struct Claimed {
    dir: PathBuf,
    /// The directory was created by this run (else it was empty, or a replaced run).
    created: bool,
    /// Its parent (`runs/`) was created by this run too.
    parent: Option<PathBuf>,
}

/// Creates (or claims) the directory of a fresh run as `opts` says.
fn claim_run_dir(opts: &RunOptions) -> Result<Claimed, TrainError> {
    let base = opts.dir;
    let mut new_parent = None;
    if let Some(parent) = base.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            new_parent = Some(parent.to_path_buf());
        }
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let claimed = |dir: PathBuf, created: bool| Claimed {
        dir,
        created,
        parent: new_parent.clone().filter(|_| created),
    };
    // `create_dir`, not `create_dir_all`: of two processes asking for the same name,
    // exactly one creates it
    let max = if opts.unique { 1000 } else { 1 };
    for k in 1..=max {
        let dir = if k == 1 {
            base.to_path_buf()
        } else {
            let mut name = base.as_os_str().to_owned();
            name.push(format!("-{k}"));
            PathBuf::from(name)
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(claimed(dir, true)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if opts.unique {
                    continue;
                }
            }
            Err(e) => {
                return Err(TrainError::Io {
                    path: dir,
                    source: e,
                })
            }
        }
        // an existing directory named by the user
        let meta = std::fs::metadata(&dir).map_err(io(&dir))?;
        if !meta.is_dir() {
            return Err(TrainError::NotARunDir {
                dir,
                what: "exists and is not a directory".into(),
            });
        }
        let empty = std::fs::read_dir(&dir).map_err(io(&dir))?.next().is_none();
        if empty {
            return Ok(claimed(dir, false));
        }
        if !is_run_dir(&dir) {
            return Err(TrainError::NotARunDir {
                dir,
                what: "not empty and not a run directory".into(),
            });
        }
        if !opts.replace {
            return Err(TrainError::RunExists { dir });
        }
        remove_run_files(&dir)?;
        return Ok(claimed(dir, false));
    }
    Err(TrainError::NotARunDir {
        dir: base.to_path_buf(),
        what: format!("{max} directories of this name exist already"),
    })
}

/// Undoes [`claim_run_dir`] for a run that failed before its first checkpoint.
fn release_run_dir(c: &Claimed) {
    if c.created {
        let _ = std::fs::remove_dir_all(&c.dir);
    } else {
        let _ = remove_run_files(&c.dir);
    }
    if let Some(parent) = &c.parent {
        // only if empty: another run may have started there meanwhile
        let _ = std::fs::remove_dir(parent);
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Trains (or resumes training) as `config` says, writing the run directory.
///
/// A fresh run loads its data and checks its model before it creates anything, and a
/// fresh run that fails (or is interrupted) before its first epoch's checkpoint removes
/// what it created: a run directory exists only for a run with at least one epoch.
pub fn train(
    config: &TrainConfig,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<RunSummary, TrainError> {
    config.check()?;
    let par = opts.comm.clone().filter(|c| c.size() > 1).map(|comm| {
        let size = comm.size();
        (Parallel::new(comm, config.sync_bn), size)
    });
    if let Some((_, size)) = &par {
        if !config.batch_size.is_multiple_of(*size) {
            return Err(TrainError::Config(format!(
                "--batch-size {} cannot be shared by {size} processes: each takes an equal                  share of every batch, so the batch size must be a multiple of {size}",
                config.batch_size
            )));
        }
    }
    let mut par = par.map(|(p, _)| p);
    let data = DataSetup::load(config)?;
    let model = data.fit_model(config.model.clone())?;
    if opts.resume {
        return train_in(config, opts.dir, opts, data, model, progress, par.as_mut());
    }
    let (claimed, dir) = match &par {
        Some(p) => p.agree_on_dir(|| claim_run_dir(opts).map(|c| (c.dir.clone(), c)))?,
        None => {
            let c = claim_run_dir(opts)?;
            let dir = c.dir.clone();
            (Some(c), dir)
        }
    };
    progress.message(&format!("run directory {}", dir.display()));
    let result = train_in(config, &dir, opts, data, model, progress, par.as_mut());
    if let Some(claimed) = claimed.filter(|_| result.is_err()) {
        if !dir.join("last.safetensors").exists() {
            release_run_dir(&claimed);
        }
    }
    result
}

fn train_in(
    config: &TrainConfig,
    dir: &Path,
    opts: &RunOptions,
    data: DataSetup,
    model: ModelConfig,
    progress: &mut dyn Progress,
    mut par: Option<&mut Parallel>,
) -> Result<RunSummary, TrainError> {
    // rank 0 of a data-parallel run writes the run directory; the others only read it
    let writes = par.as_ref().is_none_or(|p| p.writes());
    let mut config = config.clone();
    config.model = model.clone();
    let mut net = AnyModel::new(&model, config.seed);
    let mut opt = Sgd::new(config.optimizer);
    let last = dir.join("last.safetensors");
    let mut state = TrainState::default();
    // the initial weights of a fresh run; a resumed run has its own checkpoint
    if let (Some(init), false) = (&config.finetune.init, opts.resume) {
        let report = finetune::load_init(init, &mut net)?;
        progress.message(&report.to_string());
        if let Some(note) = report.frozen_note(&config.finetune) {
            progress.message(&note);
        }
    }
    if opts.resume {
        let loaded = checkpoint::load(&last, &mut net, &mut opt)?;
        if loaded.config != config {
            return Err(TrainError::Config(format!(
                "{}: the checkpoint was made with another configuration; resume with the \
                 run's own settings (see {}/config.json)",
                last.display(),
                dir.display()
            )));
        }
        state = loaded.state;
        progress.message(&format!(
            "resuming {} after epoch {} of {}",
            dir.display(),
            state.epochs_done,
            config.epochs
        ));
    }
    if data.val_indices.is_empty() && !opts.resume {
        progress.message(
            "note: without --val-split, best.safetensors is the epoch with the best test accuracy",
        );
    }
    if writes {
        let config_json = serde_json::to_vec_pretty(&config).unwrap_or_default();
        crate::util::atomic::write(&dir.join("config.json"), &config_json).map_err(io(dir))?;
    }
    let pre = data.preprocess();

    let share = par.as_ref().map_or((0, 1), |p| p.share());
    let loader_cfg = LoaderConfig {
        batch_size: config.batch_size,
        seed: config.seed,
        share,
        ..LoaderConfig::default()
    };
    let loader = Loader::new(
        data.train.clone(),
        Some(data.train_indices.clone()),
        data.train_transform.clone(),
        loader_cfg,
    )?;
    let mut ws = net.workspace(config.batch_size / share.1, config.memory, true);
    if let Some(p) = &par {
        p.check_same_weights(&net, "at the start")?;
    }
    let mut eval_ws = net.workspace(config.batch_size.max(100), MemoryMode::Efficient, false);
    let classes = model.num_classes();
    let end = opts.stop_after.unwrap_or(config.epochs).min(config.epochs);
    let mut images_trained = 0usize;
    let mut train_seconds = 0f64;
    let interrupted = || opts.interrupt.is_some_and(|f| f.load(Ordering::SeqCst));
    let stop = |state: &TrainState| TrainError::Interrupted {
        dir: dir.to_path_buf(),
        epochs_done: state.epochs_done,
        epochs: config.epochs,
    };
    for epoch in state.epochs_done..end {
        if interrupted() {
            return Err(stop(&state));
        }
        let t0 = Instant::now();
        let lr = config
            .schedule
            .lr(config.optimizer.lr, epoch, config.epochs);
        opt.config.lr = lr;
        let rates = finetune::rates(
            &config.finetune,
            net.classifier_range(),
            net.num_params(),
            lr,
            |f| config.schedule.lr(f, epoch, config.epochs),
        );
        let frozen = config.finetune.frozen();
        let batches = loader.batches_per_epoch();
        progress.epoch_start(epoch + 1, config.epochs, batches);
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        for (b, batch) in loader.epoch(epoch as u64).enumerate() {
            let batch = batch?;
            let n = batch.len();
            // the whole batch this process has a share of
            let whole = (loader.len() - b * config.batch_size).min(config.batch_size);
            let mut seed = vec![config.seed, epoch as u64, b as u64, DROPOUT_TAG];
            if let Some(p) = &par {
                // each process draws its own dropout masks
                seed.push(p.rank() as u64);
                p.set_share(n, whole);
            }
            let step = TrainOptions {
                dropout_seed: mix_seed(&seed),
                batch_total: Some(whole),
                ..Default::default()
            };
            let mut loss = finetune::forward(&mut net, &mut ws, &batch, &step, frozen);
            let right = (0..n)
                .filter(|&i| {
                    argmax(&ws.logits()[i * classes..(i + 1) * classes]) == batch.labels[i] as usize
                })
                .count();
            // every process's figures, and whether any was asked to stop, so that all
            // take the same decisions
            let (mut right, mut n) = (right, n);
            let mut stop_now = interrupted();
            if let Some(p) = &par {
                let mut figures = [
                    loss as f64 * n as f64,
                    right as f64,
                    n as f64,
                    stop_now as u8 as f64,
                ];
                p.sum_figures(&mut figures);
                (loss, right, n) = (
                    (figures[0] / figures[2]) as f32,
                    figures[1] as usize,
                    figures[2] as usize,
                );
                stop_now = figures[3] > 0.0;
            }
            if !loss.is_finite() {
                let checkpoint = if state.epochs_done > 0 {
                    format!(
                        "The last good checkpoint, after epoch {}, is {}",
                        state.epochs_done,
                        last.display()
                    )
                } else {
                    "No checkpoint was written yet.".to_string()
                };
                return Err(TrainError::Diverged {
                    epoch: epoch + 1,
                    batch: b,
                    loss,
                    lr,
                    checkpoint,
                });
            }
            correct += right;
            match par.as_deref_mut() {
                Some(p) => {
                    p.backward(&mut net, &mut ws, step, frozen, batch.len(), whole);
                    p.average_running_stats(&mut net);
                }
                None => finetune::backward(&mut net, &mut ws, &step, frozen),
            }
            let bufs = net.buffers_mut();
            opt.step_ranges(bufs.params, bufs.grads, &rates);
            loss_sum += loss as f64 * n as f64;
            seen += n;
            let elapsed = t0.elapsed().as_secs_f64();
            progress.batch(
                b + 1,
                loss_sum / seen as f64,
                correct as f64 / seen as f64,
                seen as f64 / elapsed,
            );
            // the step is done; the unfinished epoch is dropped whole (no metrics row, no
            // checkpoint): a resumed run repeats it exactly
            if stop_now {
                return Err(stop(&state));
            }
        }
        let train_time = t0.elapsed().as_secs_f64();
        images_trained += seen;
        train_seconds += train_time;
        let val_accuracy = if data.val_indices.is_empty() {
            None
        } else {
            let v = match &par {
                Some(p) => p.evaluate(
                    &mut net,
                    &mut eval_ws,
                    &data.train,
                    Some(data.val_indices.clone()),
                    &data.eval_transform,
                ),
                None => evaluate(
                    &mut net,
                    &mut eval_ws,
                    &data.train,
                    Some(data.val_indices.clone()),
                    &data.eval_transform,
                ),
            }?;
            Some(v.top1_accuracy)
        };
        let test = match &par {
            Some(p) => p.evaluate(
                &mut net,
                &mut eval_ws,
                &data.test,
                None,
                &data.eval_transform,
            ),
            None => evaluate(
                &mut net,
                &mut eval_ws,
                &data.test,
                None,
                &data.eval_transform,
            ),
        }?;
        if let Some(p) = &par {
            p.check_same_weights(&net, &format!("after epoch {}", epoch + 1))?;
        }
        if !test.loss.is_finite() {
            // the weights are no longer usable: keep the last good checkpoint, exit with error
            return Err(TrainError::Config(format!(
                "the test loss became {} after epoch {} (learning rate {lr:?}); training \
                 stopped, no checkpoint of this epoch was written\nhint: lower --lr",
                test.loss,
                epoch + 1
            )));
        }
        let m = EpochMetrics {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            val_accuracy,
            test_loss: test.loss,
            test_accuracy: test.top1_accuracy,
            seconds: t0.elapsed().as_secs_f64(),
        };
        state.epochs_done = epoch + 1;
        state.seconds += m.seconds;
        state.metrics.push(m.clone());
        // the best model is chosen on validation accuracy when there is a held-out split
        let score = m.val_accuracy.unwrap_or(m.test_accuracy);
        let is_best = state.best_epoch == 0 || score > state.best_accuracy;
        if is_best {
            state.best_accuracy = score;
            state.best_epoch = epoch + 1;
        }
        if writes {
            write_metrics(&dir.join("metrics.csv"), &state.metrics)?;
            checkpoint::save(&last, &net, &opt, &config, &state, &pre)?;
        }
        if is_best && writes {
            checkpoint::save(
                &dir.join("best.safetensors"),
                &net,
                &opt,
                &config,
                &state,
                &pre,
            )?;
        }
        progress.epoch_end(&m);
    }
    let last_m = state.metrics.last().cloned();
    let test_accuracy = last_m.as_ref().map(|m| m.test_accuracy).unwrap_or(0.0);
    let summary = RunSummary {
        version: 1,
        model: model.name().to_string(),
        family: model.family().to_string(),
        dataset: config.dataset.clone(),
        parameters: net.num_params(),
        epochs: state.epochs_done,
        test_accuracy,
        test_error_percent: 100.0 * (1.0 - test_accuracy),
        best_test_accuracy: state
            .metrics
            .iter()
            .map(|m| m.test_accuracy)
            .fold(0.0, f64::max),
        best_epoch: state.best_epoch,
        seconds: state.seconds,
        images_per_s: if train_seconds > 0.0 {
            images_trained as f64 / train_seconds
        } else {
            0.0
        },
        run_dir: dir.to_path_buf(),
    };
    if state.epochs_done == config.epochs && writes {
        let json = serde_json::to_vec_pretty(&summary).unwrap_or_default();
        crate::util::atomic::write(&dir.join("summary.json"), &json).map_err(io(dir))?;
    }
    Ok(summary)
}

/// Writes the metrics table as CSV, atomically.
pub fn write_metrics(path: &Path, rows: &[EpochMetrics]) -> Result<(), TrainError> {
    let mut s = String::from(
        "epoch,lr,train_loss,train_accuracy,val_accuracy,test_loss,test_accuracy,seconds\n",
    );
    for m in rows {
        s.push_str(&format!(
            "{},{},{:.6},{:.6},{},{:.6},{:.6},{:.3}\n",
            m.epoch,
            m.lr,
            m.train_loss,
            m.train_accuracy,
            m.val_accuracy
                .map(|v| format!("{v:.6}"))
                .unwrap_or_default(),
            m.test_loss,
            m.test_accuracy,
            m.seconds
        ));
    }
    crate::util::atomic::write(path, s.as_bytes()).map_err(io(path))
}

/// Reads a metrics CSV written by [`write_metrics`].
pub fn read_metrics(path: &Path) -> Result<Vec<EpochMetrics>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let bad = || {
            TrainError::Config(format!(
                "{}: line {}: expected 8 numeric fields",
                path.display(),
                i + 1
            ))
        };
        if f.len() != 8 {
            return Err(bad());
        }
        let num = |s: &str| s.parse::<f64>().map_err(|_| bad());
        rows.push(EpochMetrics {
            epoch: f[0].parse().map_err(|_| bad())?,
            lr: num(f[1])? as f32,
            train_loss: num(f[2])?,
            train_accuracy: num(f[3])?,
            val_accuracy: if f[4].is_empty() {
                None
            } else {
                Some(num(f[4])?)
            },
            test_loss: num(f[5])?,
            test_accuracy: num(f[6])?,
            seconds: num(f[7])?,
        });
    }
    Ok(rows)
}
