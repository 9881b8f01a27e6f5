//! `densenet heatmap`: the paper's Fig. 5 for a trained DenseNet.

use super::model_args::WeightsArgs;
use crate::densenet::analysis::{feature_reuse, to_csv};
use crate::plot::{heatmaps, HeatMatrix};
use anyhow::Context;
use std::path::PathBuf;

/// Arguments of `densenet heatmap`.
#[derive(clap::Args, Debug)]
#[command(
    after_long_help = "Cell (s, l) of block b is the average absolute weight that \
    target layer l assigns to the maps of source layer s (s = 0: the block's input). For \
    bottleneck models the target is each layer's first (1×1) convolution, the one that sees \
    the concatenated input. Target n+1 is the transition after the block, or the classifier \
    after the last block (outlined).\n\nExample:\n  densenet heatmap --weights runs/<run>/best.safetensors --out heatmap"
)]
pub struct Args {
    #[command(flatten)]
    pub source: WeightsArgs,
    /// Output directory for heatmap.png, heatmap.svg and heatmap.csv.
    #[arg(long, default_value = "heatmap")]
    pub out: PathBuf,
    /// Print one JSON object: the files written and each dense block's layer count.
    #[arg(long)]
    pub json: bool,
}

/// Runs `densenet heatmap`.
pub fn run(a: Args) -> anyhow::Result<()> {
    // --out is a directory: a file name there would become a directory of that name
    let file_like = a
        .out
        .extension()
        .is_some_and(|e| ["png", "svg", "csv"].contains(&e.to_string_lossy().as_ref()));
    anyhow::ensure!(
        if a.out.exists() {
            a.out.is_dir()
        } else {
            !file_like
        },
        "--out {}: names the directory for heatmap.png, heatmap.svg and heatmap.csv, not a \
         file; give a directory",
        a.out.display()
    );
    for name in ["heatmap.png", "heatmap.svg", "heatmap.csv"] {
        let out = a.out.join(name);
        crate::util::atomic::check_output(&out, &[("the --weights file", &a.source.weights)])
            .with_context(|| format!("--out {}: {name}", a.out.display()))?;
    }
    let m = a.source.load()?;
    let Some(net) = m.net.downcast_ref::<crate::densenet::DenseNet>() else {
        anyhow::bail!(
            "{}: the feature-reuse heat map reads the weights a dense layer gives each earlier \
             layer; {} is a pre-activation ResNet, whose units read only their input",
            a.source.weights.display(),
            crate::model::Model::name(&*m.net)
        );
    };
    let mats = feature_reuse(net);
    std::fs::create_dir_all(&a.out).with_context(|| a.out.display().to_string())?;
    let csv = a.out.join("heatmap.csv");
    crate::util::atomic::write(&csv, to_csv(&mats).as_bytes())
        .with_context(|| csv.display().to_string())?;
    let panels: Vec<HeatMatrix> = mats
        .iter()
        .map(|mm| HeatMatrix {
            title: format!("{}: dense block {}", net.config().name, mm.block),
            rows: mm.layers + 1,
            cols: mm.layers + 1,
            values: mm.values.clone(),
        })
        .collect();
    let (png, svg) = (a.out.join("heatmap.png"), a.out.join("heatmap.svg"));
    heatmaps(&png, Some(&svg), &panels)?;
    eprintln!(
        "wrote {}, {} and {}",
        png.display(),
        svg.display(),
        csv.display()
    );
    if a.json {
        let blocks: Vec<_> = mats
            .iter()
            .map(|mm| serde_json::json!({ "block": mm.block, "layers": mm.layers }))
            .collect();
        super::print_json(&serde_json::json!({
            "model": net.config().name,
            "png": png,
            "svg": svg,
            "csv": csv,
            "blocks": blocks,
        }))?;
    }
    Ok(())
}
