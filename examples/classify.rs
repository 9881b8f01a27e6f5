//! Classify one image with torchvision's densenet121 weights, and take its pooled features:
//! the library's public API, end to end, in the fewest lines.
//!
//! ```sh
//! curl -LO https://download.pytorch.org/models/densenet121-a639ec97.pth
//! cargo run --release --example classify -- densenet121-a639ec97.pth cat.jpg
//! ```
//!
//! It prints the top-5 ImageNet class indices with their probabilities, then the length
//! and the first values of the pooled features (the classifier's input: 1024 per image for
//! densenet121). Weights are a `.pth` or a `.safetensors` state dict with torchvision's
//! names. `--model NAME` (after the two paths) picks another architecture, for example
//! the small CIFAR model of the tests:
//!
//! ```sh
//! cargo run --release --example classify -- \
//!     tests/reference/cifar_bc_L40_k12.weights.safetensors digit.png --model densenet-bc-40-12
//! ```
//!
//! The image is prepared as `densenet predict` prepares a state dict's input: for an
//! ImageNet model the shorter side resized to 256, the centre 224×224 crop and ImageNet's
//! mean and std; for a CIFAR model a resize to 32×32 and pixel/255.

use anyhow::Context;
use densenet::features::{extract, Layer};
use densenet::prepare::InputPrep;
use densenet::{AnyModel, MemoryMode, ModelConfig};
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    // WEIGHTS IMAGE [--model NAME]
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (paths, model) = match args.as_slice() {
        [w, i] => ([w, i], "densenet121"),
        [w, i, flag, m] if flag == "--model" => ([w, i], m.as_str()),
        _ => anyhow::bail!("usage: classify WEIGHTS IMAGE [--model NAME]"),
    };
    let (weights, image) = (PathBuf::from(paths[0]), PathBuf::from(paths[1]));

    // the network: an architecture from its name, then the weights' tensors by name
    let cfg = ModelConfig::from_name(model)?;
    let mut net = AnyModel::try_new(&cfg, 0)?;
    let file = densenet::weights::read_checkpoint(&weights)?;
    net.load_tensors(&file.tensors, &weights.display().to_string())?;

    // the image as one [C, S, S] input, prepared as the weights expect
    let prep = InputPrep::new(&cfg, None, &weights)?;
    let x = prep.load(&image)?;

    // evaluation forward pass of a batch of one, then softmax over the logits
    let mut ws = net.workspace(1, MemoryMode::Efficient, false);
    let logits = net.forward_eval(&mut ws, &x, 1, None);
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    let mut order: Vec<usize> = (0..exp.len()).collect();
    order.sort_by(|&a, &b| exp[b].total_cmp(&exp[a]));
    println!("{} on {}:", cfg.name(), image.display());
    for &c in order.iter().take(5) {
        println!("  class {c:>4}  {:6.2}%", 100.0 * exp[c] / sum);
    }

    // pooled features: after the final BN-ReLU, globally averaged (the classifier's input)
    let features = extract(&mut *net, &mut ws, &x, 1, Layer::Pool).context("features")?;
    println!(
        "pooled features: {} values, first {:?}",
        features.len(),
        &features[..features.len().min(5)]
    );
    Ok(())
}
