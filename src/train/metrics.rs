//! A run's figures: one [`EpochMetrics`] row per epoch (`metrics.csv`), one [`StepRow`]
//! per optimizer step (`steps.csv`), and the [`RunSummary`] of a finished run
//! (`summary.json`).

use super::run_dir::io;
use super::{TrainConfig, TrainError, TrainState};
use crate::model::Model;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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

/// One optimizer step's figures (a row of `steps.csv`).
#[derive(Clone, Debug, PartialEq)]
pub struct StepRow {
    /// Step of the run, 1-based.
    pub step: usize,
    /// Its epoch, 1-based.
    pub epoch: usize,
    /// Its batch within the epoch, 1-based.
    pub batch: usize,
    /// Images of the batch, over all processes.
    pub images: usize,
    /// The learning rate of the step (the base rate; fine-tuned features have their own).
    pub lr: f32,
    /// The batch's mean training loss.
    pub loss: f32,
}

const STEPS_HEADER: &str = "step,epoch,batch,images,lr,loss\n";

/// Appends `rows` to the step log at `path` (started with its header when absent). Rows
/// are appended an epoch at a time, before the epoch's checkpoint; a resumed run first
/// keeps the rows of its checkpoint's epochs ([`keep_steps`]).
pub fn append_steps(path: &Path, rows: &[StepRow]) -> Result<(), TrainError> {
    use std::io::Write;
    let text = steps_csv(rows, !path.exists());
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(io(path))
}

/// `rows` as CSV lines, after the header when asked for.
fn steps_csv(rows: &[StepRow], header: bool) -> String {
    let mut s = String::new();
    if header {
        s.push_str(STEPS_HEADER);
    }
    for r in rows {
        s.push_str(&format!(
            "{},{},{},{},{},{}\n",
            r.step, r.epoch, r.batch, r.images, r.lr, r.loss
        ));
    }
    s
}

/// Reads a step log written by [`append_steps`]; a line that is not a whole row (the
/// last one of an append cut short) is left out.
pub fn read_steps(path: &Path) -> Result<Vec<StepRow>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let row = |line: &str| -> Option<StepRow> {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 6 {
            return None;
        }
        Some(StepRow {
            step: f[0].parse().ok()?,
            epoch: f[1].parse().ok()?,
            batch: f[2].parse().ok()?,
            images: f[3].parse().ok()?,
            lr: f[4].parse().ok()?,
            loss: f[5].parse().ok()?,
        })
    };
    Ok(text.lines().skip(1).filter_map(row).collect())
}

/// Keeps the step log's rows of the first `epochs` epochs (those of a resumed run's
/// checkpoint), rewritten atomically; the steps of an epoch that has no checkpoint are
/// run again.
pub fn keep_steps(path: &Path, epochs: usize) -> Result<(), TrainError> {
    if !path.exists() {
        return Ok(());
    }
    let mut rows = read_steps(path)?;
    rows.retain(|r| r.epoch <= epochs);
    crate::util::atomic::write(path, steps_csv(&rows, true).as_bytes()).map_err(io(path))
}

impl RunSummary {
    /// The summary of a run at `state`, which trained `images` images in `train_seconds`
    /// (this session's, for the rate) with `net`, in `dir`.
    pub fn new(
        config: &TrainConfig,
        net: &dyn Model,
        state: &TrainState,
        images: usize,
        train_seconds: f64,
        dir: &Path,
    ) -> Self {
        let test_accuracy = state.metrics.last().map_or(0.0, |m| m.test_accuracy);
        RunSummary {
            version: 1,
            model: config.model.name().to_string(),
            family: config.model.family().to_string(),
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
                images as f64 / train_seconds
            } else {
                0.0
            },
            run_dir: dir.to_path_buf(),
        }
    }
}
