//! Training: the paper's recipe on a data set, with checkpoints that resume exactly,
//! per-epoch metrics and a run directory. One loop for both model families and for any
//! number of processes: it drives an [`AnyModel`](crate::model::AnyModel) through the
//! [`Model`](crate::model::Model) trait, one [`DataParallel::step`] at a time.
//!
//! Reproducibility rests on one rule: every random choice is a pure function of the run's
//! seed and the position in the run. The epoch's order comes from (seed, epoch), each
//! batch's augmentation from (seed, epoch, batch) (see [`crate::data::pipeline`]), and each
//! step's dropout masks from (seed, epoch, batch) too. So a run resumed from the checkpoint
//! of epoch e continues exactly as the uninterrupted run would have, with no generator
//! state to save.
//!
//! The rooms:
//! - [`run`]: [`train`], the loop over epochs and batches;
//! - [`step`]: one training step, and what the processes of a run do together;
//! - [`setup`]: a run's data sets and transforms ([`DataSetup`]);
//! - [`run_dir`]: the run directory (`config.json`, `metrics.csv`, `steps.csv`,
//!   `last.safetensors`, `best.safetensors`, `summary.json`), created so that nothing is
//!   overwritten;
//! - [`metrics`]: per-epoch and per-step figures and the run's summary;
//! - [`checkpoint`]: writing checkpoints and reading them back to resume (the read side
//!   for using a model is [`crate::checkpoint`]);
//! - [`finetune`], [`schedule`], [`settings`]: starting from pretrained weights, the
//!   learning-rate schedules, the recipes' settings.

pub mod checkpoint;
pub mod finetune;
pub mod metrics;
pub mod run;
pub mod run_dir;
pub mod schedule;
pub mod settings;
pub mod setup;
pub mod step;

use crate::checkpoint::CheckpointError;
use crate::data::DataError;
use crate::model::ModelConfig;
use crate::nn::MemoryMode;
use crate::optim::SgdConfig;
use crate::weights::WeightsError;
pub use metrics::{read_metrics, read_steps, write_metrics, EpochMetrics, RunSummary, StepRow};
pub use run::train;
pub use run_dir::{is_run_dir, RunOptions, RUN_FILES};
pub use schedule::warmup_factor;
pub use schedule::Schedule;
use serde::{Deserialize, Serialize};
pub use setup::DataSetup;
use std::path::PathBuf;
pub use step::{DataParallel, NonFinite, StepInput, StepOutcome};

/// Why training stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Reading or preparing data failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Reading or writing weights failed.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// A checkpoint's metadata is wrong.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
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
    /// A number of the run stopped being finite (Keras' `TerminateOnNaN`): the loss or a
    /// gradient of a step, which then changed nothing, or at the end of an epoch a
    /// parameter or running statistic, before anything of the epoch was written.
    #[error(
        "{what} became {value}, not a finite number, at epoch {epoch}{} (learning rate \
         {lr}); training stopped. {checkpoint}\nhint: lower --lr, or check the input data",
        batch.map_or(", at its end".to_string(), |b| format!(", batch {b}"))
    )]
    Diverged {
        /// What: `the loss`, `the gradient of 'features.conv0.weight'`, ….
        what: String,
        /// Its value (NaN, inf or -inf).
        value: f32,
        /// Epoch (1-based).
        epoch: usize,
        /// Batch within the epoch (1-based, as in `steps.csv`); `None` at the epoch's end.
        batch: Option<usize>,
        /// Learning rate at the time.
        lr: f32,
        /// Where the last good checkpoint is.
        checkpoint: String,
    },
    /// An inconsistent configuration.
    #[error("{0}")]
    Config(String),
    /// The model's weights and workspaces need more memory than the process may take;
    /// found before anything was allocated or created.
    #[error(transparent)]
    Memory(#[from] crate::model::memory::MemoryError),
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
    /// The large-batch recipe and gradient accumulation (absent in runs made before them,
    /// which read as none of it).
    #[serde(default)]
    pub large_batch: LargeBatch,
}

/// The large-batch recipe of Goyal et al. (2017, "Accurate, Large Minibatch SGD"), and
/// gradient accumulation (a large batch from several small passes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LargeBatch {
    /// How the base rate (`optimizer.lr`, given for the reference batch) follows the
    /// batch size; `None`: it is used as given.
    pub lr_scaling: Option<LrScaling>,
    /// Epochs over which the rate rises linearly, step by step, from base/N to base: step
    /// s of the warmup's N steps runs at (s + 1)/N of the scheduled rate
    /// ([`schedule::warmup_factor`]); after them the schedule runs as it would without
    /// (0: none).
    pub warmup_epochs: usize,
    /// No weight decay on BN parameters and biases (the 1-D tensors of the parameter
    /// table).
    pub no_bn_decay: bool,
    /// Passes per optimizer step: each process's share of a batch is split into this many
    /// passes, whose gradients are summed before one update (1: no accumulation).
    pub accumulate: usize,
}

impl Default for LargeBatch {
    /// None of it: the rate as given, no warmup, weight decay everywhere, one pass a step.
    fn default() -> Self {
        LargeBatch {
            lr_scaling: None,
            warmup_epochs: 0,
            no_bn_decay: false,
            accumulate: 1,
        }
    }
}

/// How the base learning rate follows the batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "rule")]
pub enum LrScaling {
    /// Goyal et al.'s linear scaling rule: the rate is multiplied by
    /// batch / `reference_batch`.
    Linear {
        /// The batch the given rate is meant for (the paper's: 64 on CIFAR and SVHN, 256
        /// on ImageNet).
        reference_batch: usize,
    },
}

impl TrainConfig {
    /// What the learning rates given (`optimizer.lr`, `finetune.lr_features`) are
    /// multiplied by: batch / reference batch under linear scaling, else 1.
    pub fn lr_factor(&self) -> f32 {
        match self.large_batch.lr_scaling {
            Some(LrScaling::Linear { reference_batch }) => {
                self.batch_size as f32 / reference_batch.max(1) as f32
            }
            None => 1.0,
        }
    }

    /// The base learning rate the run uses: `optimizer.lr` × [`lr_factor`](Self::lr_factor).
    pub fn base_lr(&self) -> f32 {
        self.optimizer.lr * self.lr_factor()
    }
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
