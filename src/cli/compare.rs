//! `densenet compare`: test error against parameters for finished runs (the paper's
//! Fig. 4), as a table and a PNG, so runs on the same data can be put side by side,
//! DenseNets and pre-activation ResNets alike.

use anyhow::Context;
use std::path::PathBuf;

/// Arguments of `densenet compare`.
#[derive(clap::Args, Debug)]
#[command(after_long_help = "Example:\n  densenet compare runs/* --out compare.png")]
pub struct Args {
    /// Finished run directories (each holds a summary.json).
    #[arg(required = true, value_name = "RUN_DIR")]
    pub runs: Vec<PathBuf>,
    /// Where to write the plot.
    #[arg(long, default_value = "compare.png")]
    pub out: PathBuf,
    /// Print one JSON array.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Row {
    run: PathBuf,
    model: String,
    /// `densenet` or `preact_resnet` (runs made before the ResNet existed are DenseNets).
    family: String,
    dataset: String,
    parameters: u64,
    test_error_percent: f64,
    epochs: u64,
}

/// Runs `densenet compare`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for dir in &a.runs {
        let path = dir.join("summary.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: not a finished run (no summary.json)", dir.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| path.display().to_string())?;
        let field = |k: &str| {
            v.get(k)
                .with_context(|| format!("{}: no field '{k}'", path.display()))
        };
        rows.push(Row {
            run: dir.clone(),
            model: field("model")?.as_str().unwrap_or_default().to_string(),
            family: v
                .get("family")
                .and_then(|f| f.as_str())
                .unwrap_or("densenet")
                .to_string(),
            dataset: field("dataset")?.as_str().unwrap_or_default().to_string(),
            parameters: field("parameters")?.as_u64().unwrap_or(0),
            test_error_percent: field("test_error_percent")?.as_f64().unwrap_or(f64::NAN),
            epochs: field("epochs")?.as_u64().unwrap_or(0),
        });
    }
    rows.sort_by_key(|r| r.parameters);
    let series = rows
        .iter()
        .map(|r| crate::plot::Series {
            label: format!("{} ({})", r.model, r.dataset),
            points: vec![(r.parameters as f64 / 1e6, r.test_error_percent)],
        })
        .collect();
    let panel = crate::plot::Panel {
        title: "test error against parameters".into(),
        x_label: "parameters (millions)".into(),
        y_label: "test error (%)".into(),
        series,
        log_y: false,
    };
    crate::plot::plot_panels(&a.out, &[panel], 1, 900, 560)?;
    if a.json {
        return super::print_json(&rows);
    }
    println!(
        "{:<28} {:<14} {:<10} {:>12} {:>8} {:>12}",
        "model", "family", "dataset", "parameters", "epochs", "test error"
    );
    for r in &rows {
        println!(
            "{:<28} {:<14} {:<10} {:>12} {:>8} {:>11.2}%",
            r.model,
            r.family,
            r.dataset,
            super::summary::group(r.parameters as usize),
            r.epochs,
            r.test_error_percent
        );
    }
    println!("wrote {}", a.out.display());
    Ok(())
}
