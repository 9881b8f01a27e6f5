//! `densenet predict`: the top classes of images, with probabilities and class names.

use super::model_args::OptModelArgs;
use crate::data::augment::Normalize;
use crate::data::folder::decode_file;
use crate::model::{Model, ModelConfig};
use crate::nn::MemoryMode;
use crate::train::checkpoint::read_model_config;
use std::path::PathBuf;

/// Arguments of `densenet predict`.
#[derive(clap::Args, Debug)]
#[command(
    after_long_help = "Example:\n  densenet predict --weights runs/<run>/best.safetensors digit.png\n\n\
    Images are decoded, converted to the model's channels, resized to its input size and \
    normalised as in training (pixel/255, then the data set's mean and std). The digits \
    set is white ink on black: invert a scan of dark ink on paper first."
)]
pub struct Args {
    /// Image files (PNG or JPEG).
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Weights: a training checkpoint, or a state dict with --model.
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    #[command(flatten)]
    pub model: OptModelArgs,
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
    let mut m = read_model_config(&a.weights, a.model.resolve()?)?;
    let cfg = m.net.model_config();
    let (c, s) = (cfg.in_channels(), cfg.input_size());
    let imagenet = matches!(&cfg, ModelConfig::DenseNet(d) if d.stem == crate::densenet::config::Stem::ImageNet);
    let (norm, names) = match &m.preprocess {
        Some(p) => (Normalize::new(&p.mean, &p.std), p.classes.clone()),
        None if imagenet => (Normalize::imagenet(), vec![]),
        None => (Normalize::none(), vec![]),
    };
    // images are decoded to RGB and made grey for one-channel models: nothing else fits
    anyhow::ensure!(
        c == 1 || c == 3,
        "model {} expects {c}×{s}×{s} inputs; predict makes images grey (1 channel) or RGB \
         (3 channels); give --model for the network these weights belong to",
        cfg.name()
    );
    if let Some(p) = &m.preprocess {
        anyhow::ensure!(
            [1, c].contains(&p.mean.len()) && p.mean.len() == p.std.len(),
            "{}: its preprocessing has {} means and {} stds for a {c}-channel model",
            a.weights.display(),
            p.mean.len(),
            p.std.len()
        );
    }
    let mut ws = m.net.workspace(1, MemoryMode::Efficient, false);
    let mut out = Vec::new();
    for path in &a.images {
        let rgb = decode_file(path)?;
        let img = if c == 1 {
            // luminance as the mean of the three channels
            let plane = rgb.height * rgb.width;
            let grey = (0..plane)
                .map(|i| {
                    ((rgb.data[i] as u32
                        + rgb.data[plane + i] as u32
                        + rgb.data[2 * plane + i] as u32)
                        / 3) as u8
                })
                .collect();
            crate::data::augment::Image::new(1, rgb.height, rgb.width, grey)?
        } else {
            rgb
        };
        let img = img.resize(s, s)?;
        let mut x = vec![0f32; c * s * s];
        norm.write(&img, 255.0, &mut x)?;
        let logits = m.net.forward_eval(&mut ws, &x, 1, None);
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
