//! `densenet predict`: the top classes of images, with probabilities and class names.

use super::model_args::WeightsArgs;
use crate::model::memory::{self, Use};
use crate::model::Frozen;
use crate::nn::MemoryMode;
use crate::prepare::InputPrep;
use anyhow::Context;
use std::path::PathBuf;

/// Arguments of `densenet predict`.
#[derive(clap::Args, Debug)]
#[command(
    after_long_help = "Example:\n  densenet predict --weights runs/<run>/best.safetensors digit.png\n\n\
    Images are decoded, converted to the model's channels, resized to its input size (image \
    folders and torchvision weights: the shorter side resized, then the centre cropped) and \
    normalised as in training (pixel/255, then the data set's mean and std); `densenet \
    summary --weights FILE` shows how. The digits set is white ink on black: invert a scan \
    of dark ink on paper first."
)]
pub struct Args {
    /// Image files (PNG or JPEG).
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub source: WeightsArgs,
    /// How many classes to show (at least 1).
    #[arg(long, default_value_t = 5, value_parser = super::values::at_least_one())]
    pub top: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Prediction {
    image: PathBuf,
    top: Vec<(String, f64)>,
}

/// Runs `densenet predict`.
pub fn run(a: Args) -> anyhow::Result<()> {
    if let Some(dir) = a.images.iter().find(|p| p.is_dir()) {
        anyhow::bail!(
            "{}: a directory; predict takes image files (a folder's images: {}/*.png)",
            dir.display(),
            dir.display()
        );
    }
    let mut m = a.source.load()?;
    let prep = InputPrep::new(
        &m.net.model_config(),
        m.preprocess.as_ref(),
        &a.source.weights,
    )?;
    let names = m.preprocess.map(|p| p.classes).unwrap_or_default();
    memory::check(&m.net.model_config(), &[Use::eval(1)], 0, "")
        .with_context(|| a.source.weights.display().to_string())?;
    let mut ws = m.net.workspace(1, MemoryMode::Efficient, false);
    let mut out = Vec::new();
    let mut net = Frozen::new(&mut *m.net);
    for path in &a.images {
        let x = prep.load(path)?;
        let logits = net.forward_eval(&mut ws, &x, 1, None);
        let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let exp: Vec<f64> = logits.iter().map(|&v| ((v - max) as f64).exp()).collect();
        let sum: f64 = exp.iter().sum();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&i, &j| exp[j].total_cmp(&exp[i]));
        let top = order
            .iter()
            .take(a.top.max(1))
            .map(|&i| {
                (
                    names
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| format!("class {i}")),
                    exp[i] / sum,
                )
            })
            .collect();
        out.push(Prediction {
            image: path.clone(),
            top,
        });
    }
    if a.json {
        return super::print_json(&out);
    }
    for p in &out {
        outln!("{}:", p.image.display());
        for (name, prob) in &p.top {
            outln!("  {:>6.2}%  {name}", 100.0 * prob);
        }
    }
    Ok(())
}
