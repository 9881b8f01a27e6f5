//! `densenet plot RUN_DIR`: learning curves (loss, train and test error, learning rate) of
//! a run as `curves.png`, from its `metrics.csv`.

use crate::plot::{learning_curves, EpochPoint};
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

/// Draws `RUN_DIR/curves.png` from `RUN_DIR/metrics.csv`; returns the PNG's path.
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
    let out = dir.join("curves.png");
    learning_curves(&out, &title, &points)?;
    Ok(out)
}
