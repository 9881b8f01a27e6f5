//! `densenet plot RUN_DIR`: learning curves (loss, train and test error, learning rate) of
//! a run as `curves.png`, from its `metrics.csv` (and `steps.csv`: the rate of every step).

use crate::plot::{learning_curves_with_lr, EpochPoint};
use std::path::{Path, PathBuf};

/// Arguments of `densenet plot`.
#[derive(clap::Args, Debug)]
#[command(
    after_long_help = "Example:\n  densenet plot runs/20261128-014512-digits-densenet-bc-40-12"
)]
pub struct Args {
    /// The run directory (holds metrics.csv).
    #[arg(value_name = "RUN_DIR")]
    pub run_dir: PathBuf,
    /// Print one JSON object: the file written (`curves`) and the run directory.
    #[arg(long)]
    pub json: bool,
}

/// Runs `densenet plot`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let out = run_dir_curves(&a.run_dir)?;
    eprintln!("wrote {}", out.display());
    if a.json {
        super::print_json(&serde_json::json!({ "run_dir": a.run_dir, "curves": out }))?;
    }
    Ok(())
}

/// Draws `RUN_DIR/curves.png` from `RUN_DIR/metrics.csv`, with the learning rate of every
/// step from `RUN_DIR/steps.csv` where the run has one; returns the PNG's path.
pub fn run_dir_curves(dir: &Path) -> anyhow::Result<PathBuf> {
    let rows = crate::train::read_metrics(&dir.join("metrics.csv"))?;
    anyhow::ensure!(
        !rows.is_empty(),
        "{}: no epochs recorded yet",
        dir.join("metrics.csv").display()
    );
    let points: Vec<EpochPoint> = rows
        .iter()
        .map(|m| EpochPoint {
            epoch: m.epoch as f64,
            train_loss: m.train_loss,
            test_loss: Some(m.test_loss),
            train_error: 100.0 * (1.0 - m.train_accuracy),
            test_error: Some(100.0 * (1.0 - m.test_accuracy)),
            lr: m.lr as f64,
        })
        .collect();
    let title = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let steps_csv = dir.join("steps.csv");
    let steps = if steps_csv.exists() {
        crate::train::metrics::read_steps(&steps_csv)?
    } else {
        Vec::new()
    };
    // step b of an epoch of B steps at epoch − 1 + b/B: an epoch's last step is at its
    // point on the other curves
    let mut per_epoch = std::collections::HashMap::new();
    for s in &steps {
        let b = per_epoch.entry(s.epoch).or_insert(0);
        *b = s.batch.max(*b);
    }
    let step_lr: Vec<(f64, f64)> = steps
        .iter()
        .map(|s| {
            let batches = per_epoch.get(&s.epoch).copied().unwrap_or(1).max(1);
            let x = s.epoch.saturating_sub(1) as f64 + s.batch as f64 / batches as f64;
            (x, s.lr as f64)
        })
        .collect();
    let out = dir.join("curves.png");
    learning_curves_with_lr(&out, &title, &points, &step_lr)?;
    Ok(out)
}
