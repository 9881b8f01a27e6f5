//! `densenet compare`: test error against parameters for finished runs (the paper's
//! Fig. 4), as a table and a PNG or SVG figure, so runs on the same data can be put side
//! by side, DenseNets and pre-activation ResNets alike.

use anyhow::Context;
use std::path::PathBuf;

/// Arguments of `densenet compare`.
#[derive(clap::Args, Debug)]
#[command(after_long_help = "Example:\n  densenet compare runs/* --out compare.png")]
pub struct Args {
    /// Run directories; unfinished ones (no summary.json) are skipped with a warning.
    #[arg(required = true, value_name = "RUN_DIR")]
    pub runs: Vec<PathBuf>,
    /// Where to write the plot: PNG or SVG, as the extension says.
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
    let inputs: Vec<PathBuf> = a
        .runs
        .iter()
        .flat_map(|dir| {
            let files = crate::train::RUN_FILES.iter().map(|f| dir.join(f));
            std::iter::once(dir.clone()).chain(files)
        })
        .collect();
    let inputs: Vec<_> = inputs
        .iter()
        .map(|p| ("a compared run's file", p.as_path()))
        .collect();
    crate::util::atomic::check_output(&a.out, &inputs)
        .with_context(|| format!("--out {}", a.out.display()))?;
    crate::plot::Format::of(&a.out)?;
    let mut rows = Vec::new();
    for dir in &a.runs {
        let path = dir.join("summary.json");
        // `compare runs/*` meets runs still going, interrupted or failed: not an error
        if !path.is_file() {
            let what = if dir.is_dir() {
                "not a finished run (no summary.json)"
            } else {
                "not a run directory"
            };
            eprintln!("warning: skipping {}: {what}", dir.display());
            continue;
        }
        let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
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
    anyhow::ensure!(
        !rows.is_empty(),
        "none of the {} run directories given holds a finished run (a summary.json)",
        a.runs.len()
    );
    rows.sort_by_key(|r| r.parameters);
    // runs of one model on one data set (other seeds, epochs, settings) are told apart
    // by their directories' names
    let name = |r: &Row| {
        r.run.file_name().map_or_else(
            || r.run.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    };
    let same = |r: &Row| {
        rows.iter()
            .filter(|o| (&o.model, &o.dataset) == (&r.model, &r.dataset))
            .count()
            > 1
    };
    let series = rows
        .iter()
        .map(|r| crate::plot::Series {
            label: if same(r) {
                format!("{} ({}, {})", r.model, r.dataset, name(r))
            } else {
                format!("{} ({})", r.model, r.dataset)
            },
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
    let w = rows
        .iter()
        .map(|r| name(r).chars().count())
        .max()
        .unwrap_or(0)
        .max(3);
    outln!(
        "{:<w$} {:<28} {:<14} {:<10} {:>12} {:>8} {:>12}",
        "run",
        "model",
        "family",
        "dataset",
        "parameters",
        "epochs",
        "test error"
    );
    for r in &rows {
        outln!(
            "{:<w$} {:<28} {:<14} {:<10} {:>12} {:>8} {:>11.2}%",
            name(r),
            r.model,
            r.family,
            r.dataset,
            super::summary::group(r.parameters as usize),
            r.epochs,
            r.test_error_percent
        );
    }
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
