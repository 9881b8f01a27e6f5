//! `densenet export`: a model with its weights as an ONNX file of its evaluation forward
//! pass (see [`crate::onnx`]), with the input preprocessing in the file's metadata.

use super::model_args::OptModelArgs;
use crate::checkpoint::{self, CheckpointError};
use crate::model::ModelConfig;
use crate::nn::limits::MAX_BATCH;
use crate::onnx::{self, Batch, ExportOptions, Preprocessing};
use crate::prepare::InputPrep;
use crate::util::atomic::{check_output, write_output};
use crate::weights::{read_checkpoint, WeightsError};
use anyhow::Context;
use std::path::{Path, PathBuf};

/// Arguments of `densenet export`.
#[derive(clap::Args, Debug)]
#[command(
    after_long_help = "Example:\n  densenet export --model densenet121 --weights \
    densenet121.pth \\\n    --out densenet121.onnx --batch dynamic"
)]
pub struct Args {
    /// Weights: a training checkpoint (its model and preprocessing are used), or any
    /// safetensors/.pth state dict together with --model.
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    #[command(flatten)]
    pub model: OptModelArgs,
    /// File format (only onnx).
    #[arg(long, value_enum, default_value_t = Format::Onnx)]
    pub format: Format,
    /// Where to write the model (written atomically).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Batch dimension of the input: a number of images, or `dynamic` for any.
    #[arg(long, default_value = "1", value_name = "N|dynamic", value_parser = batch)]
    pub batch: Batch,
    /// ONNX opset, 13 to 21.
    #[arg(long, default_value_t = onnx::DEFAULT_OPSET, value_name = "N")]
    pub opset: i64,
    /// Print one JSON object: the file, its size, nodes and opset.
    #[arg(long)]
    pub json: bool,
}

/// Export formats.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// ONNX (protobuf).
    Onnx,
}

/// `--batch`: `dynamic` or 1 to 65536.
fn batch(s: &str) -> Result<Batch, String> {
    if s.eq_ignore_ascii_case("dynamic") {
        return Ok(Batch::Dynamic);
    }
    match s.parse::<usize>() {
        Ok(n @ 1..=MAX_BATCH) => Ok(Batch::Fixed(n)),
        _ => Err(format!(
            "expected a number of images from 1 to {MAX_BATCH}, or `dynamic`; got '{s}'"
        )),
    }
}

/// The JSON result of `densenet export`.
#[derive(serde::Serialize)]
struct Report {
    version: u32,
    path: String,
    bytes: usize,
    model: String,
    family: String,
    opset: i64,
    ir_version: i64,
    /// A number, or "dynamic".
    batch: serde_json::Value,
    nodes: usize,
    initializers: usize,
    preprocess: Option<Preprocessing>,
}

/// Runs `densenet export`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let out_err = || format!("--out {}", a.out.display());
    check_output(&a.out, &[("the --weights file", &a.weights)]).with_context(out_err)?;
    // the opset first: a typo there should not wait for the weights to load
    anyhow::ensure!(
        onnx::OPSETS.contains(&a.opset),
        "{}",
        onnx::ExportError::Opset(a.opset)
    );
    let requested = a.model.resolve()?;
    let m = match checkpoint::read_model_config(&a.weights, requested.clone()) {
        Ok(m) => m,
        Err(e) => return Err(family_mismatch(&a.weights, requested.as_ref(), e)),
    };
    let cfg = m.net.model_config();
    // what `predict` does to an image file, from the same settings
    let preprocessing = match InputPrep::new(&cfg, m.preprocess.as_ref(), &a.weights) {
        Ok(p) => Preprocessing::of(&p),
        // a stored preprocessing that `predict` refuses is refused here too
        Err(e) if m.preprocess.is_some() => return Err(e.into()),
        Err(_) => None,
    };
    if preprocessing.is_none() {
        eprintln!(
            "note: {} records no preprocessing; the ONNX metadata has none",
            a.weights.display()
        );
    }
    let opts = ExportOptions {
        opset: a.opset,
        batch: a.batch,
        class_names: m
            .preprocess
            .as_ref()
            .map(|p| p.classes.clone())
            .unwrap_or_default(),
        preprocessing,
    };
    let e = onnx::export(&*m.net, &opts)?;
    write_output(&a.out, &e.bytes, &[("the --weights file", &a.weights)]).with_context(out_err)?;
    let n = match a.batch {
        Batch::Fixed(n) => n.to_string(),
        Batch::Dynamic => onnx::BATCH_SYMBOL.to_string(),
    };
    let s = cfg.input_size();
    if a.json {
        eprintln!("wrote {}", a.out.display());
        return super::print_json(&Report {
            version: 1,
            path: a.out.display().to_string(),
            bytes: e.bytes.len(),
            model: cfg.name().to_string(),
            family: cfg.family().to_string(),
            opset: a.opset,
            ir_version: e.ir_version,
            batch: match a.batch {
                Batch::Fixed(n) => n.into(),
                Batch::Dynamic => "dynamic".into(),
            },
            nodes: e.nodes,
            initializers: e.initializers,
            preprocess: opts.preprocessing,
        });
    }
    outln!(
        "wrote {}: {} as ONNX opset {} (IR {}), {}, {} ({:.1} MB)",
        a.out.display(),
        cfg.name(),
        a.opset,
        e.ir_version,
        super::count(e.nodes, "node"),
        super::count(e.initializers, "initializer"),
        e.bytes.len() as f64 / 1e6
    );
    outln!(
        "input '{}' [{n}, {}, {s}, {s}] (NCHW), output '{}' [{n}, {}]",
        onnx::INPUT,
        cfg.in_channels(),
        onnx::OUTPUT,
        cfg.num_classes()
    );
    Ok(())
}

/// The error of loading `weights` into the `--model`: when the file holds the other
/// family's weights, one line that says so instead of the list of mismatched tensors.
fn family_mismatch(
    weights: &Path,
    model: Option<&ModelConfig>,
    err: CheckpointError,
) -> anyhow::Error {
    let mismatch = matches!(err, CheckpointError::Weights(WeightsError::Mismatch { .. }));
    let Some(cfg) = model.filter(|_| mismatch) else {
        return err.into();
    };
    let file_family = read_checkpoint(weights).ok().and_then(|f| {
        let names: Vec<&str> = f.tensors.iter().map(|t| t.name.as_str()).collect();
        weights_family(&names)
    });
    match file_family {
        Some(family) if family != cfg.family() => anyhow::anyhow!(
            "{} holds {} weights, but --model {} is a {}; give the --model they belong to",
            weights.display(),
            describe(family),
            cfg.name(),
            describe(cfg.family())
        ),
        _ => err.into(),
    }
}

/// The model family of a state dict from its tensor names: DenseNets name everything
/// `features.*` and `classifier.*`, the pre-activation ResNets `conv1`, `layer{s}.*`,
/// `bn`, `fc`.
fn weights_family(names: &[&str]) -> Option<&'static str> {
    let has = |prefix: &str| names.iter().any(|n| n.starts_with(prefix));
    if has("features.") && has("classifier.") {
        Some(DENSENET)
    } else if has("layer1.") && has("fc.") {
        Some(crate::model::PREACT_RESNET)
    } else {
        None
    }
}

/// The family tag of a DenseNet ([`ModelConfig::family`]).
const DENSENET: &str = "densenet";

/// A family tag in words.
fn describe(family: &str) -> &'static str {
    if family == crate::model::PREACT_RESNET {
        "pre-activation ResNet"
    } else {
        "DenseNet"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_values() {
        assert_eq!(batch("dynamic"), Ok(Batch::Dynamic));
        assert_eq!(batch("8"), Ok(Batch::Fixed(8)));
        assert!(batch("0").is_err());
        assert!(batch("-1").is_err());
        assert!(batch("many").unwrap_err().contains("dynamic"));
    }

    #[test]
    fn family_from_names() {
        let d = ["features.conv0.weight", "classifier.weight"];
        let r = ["conv1.weight", "layer1.0.bn1.weight", "fc.weight"];
        assert_eq!(weights_family(&d), Some(DENSENET));
        assert_eq!(weights_family(&r), Some(crate::model::PREACT_RESNET));
        assert_eq!(weights_family(&["input"]), None);
    }
}
