//! A run's figures: one [`EpochMetrics`] row per epoch (`metrics.csv`) and the
//! [`RunSummary`] of a finished run (`summary.json`).

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
