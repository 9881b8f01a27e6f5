//! `densenet eval`: top-1/top-5 error, per-class accuracy and the confusion matrix of a
//! model on a data set's test split.

use super::model_args::OptModelArgs;
use crate::checkpoint;
use crate::data::{self, DatasetKind, Split};
use crate::evaluate::{evaluate, EvalSet, Evaluation};
use crate::model::memory::{self, Use};
use crate::nn::MemoryMode;
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;

/// Arguments of `densenet eval`.
#[derive(clap::Args, Debug)]
#[command(after_long_help = "Example:\n  densenet eval --weights runs/<run>/best.safetensors")]
pub struct Args {
    /// Weights: a training checkpoint (its model, data set and preprocessing are used), or
    /// any safetensors/.pth state dict together with --model and --dataset.
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    #[command(flatten)]
    pub model: OptModelArgs,
    /// Data set (default: the checkpoint's): digits, cifar10, cifar100,
    /// cifar100-coarse, svhn, mnist, fashion-mnist or folder.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Directory of the data set's files (default: the checkpoint's).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Images per batch, 1 to 65536.
    #[arg(long, default_value_t = 100, value_parser = super::values::batch_size())]
    pub batch_size: usize,
    /// Print one JSON object (with the per-class accuracies and the confusion matrix).
    #[arg(long)]
    pub json: bool,
}

/// The JSON result of `densenet eval`.
#[derive(serde::Serialize)]
struct Report<'a> {
    version: u32,
    model: String,
    dataset: String,
    top1_error_percent: f64,
    top5_error_percent: f64,
    classes: Vec<String>,
    #[serde(flatten)]
    eval: &'a Evaluation,
}

/// Runs `densenet eval`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let mut m = checkpoint::read_model_config(&a.weights, a.model.resolve()?)?;
    let dataset = a
        .dataset
        .clone()
        .or(m.dataset.clone())
        .context("give --dataset (the weights do not name one)")?;
    let kind: DatasetKind = dataset.parse()?;
    let dir = a.data.clone().or(m.data_dir.clone());
    let mut test = data::load(kind, dir.as_deref(), Split::Test)?;
    // the training split only where the evaluation needs it (statistics, class names)
    let mut transform = data::eval_transform(kind, dir.as_deref(), &test)?;
    if kind == DatasetKind::ImageFolder {
        let classes = match m.preprocess.as_ref().filter(|p| !p.classes.is_empty()) {
            Some(p) => p.classes.clone(),
            None => data::load(kind, dir.as_deref(), Split::Train)?
                .classes()
                .to_vec(),
        };
        test.align_classes(&classes)?;
    }
    let test = Arc::new(test);
    // the run's upscaling belongs to the run's data set
    let own_data = m.dataset.as_deref().map(|d| d.parse::<DatasetKind>().ok()) == Some(Some(kind));
    if let (Some(u), true) = (m.upscale, own_data) {
        transform.upscale = u.max(1);
    }
    let cfg = m.net.model_config();
    // the data must fit the network before any work: channels, size, classes
    let (c, h, w) = match test.as_dataset() {
        Some(d) => transform.output_shape(d.channels, d.height, d.width)?,
        None => transform.output_shape(test.channels(), 1, 1)?,
    };
    let (mc, ms) = (cfg.in_channels(), cfg.input_size());
    let hint = match &m.dataset {
        Some(d) if !own_data => {
            format!("evaluate on the data set it was trained on (--dataset {d})")
        }
        _ => "give --model for the network these weights belong to, or --dataset for a data \
              set of that shape"
            .to_string(),
    };
    anyhow::ensure!(
        (c, h, w) == (mc, ms, ms),
        "model {} expects {mc}×{ms}×{ms} inputs (channels×height×width); data set {dataset} \
         gives {c}×{h}×{w}; {hint}",
        cfg.name()
    );
    anyhow::ensure!(
        cfg.num_classes() == test.num_classes(),
        "model {} has {} classes, data set {dataset} has {}; {hint}",
        cfg.name(),
        cfg.num_classes(),
        test.num_classes()
    );
    memory::check(&cfg, &[Use::eval(a.batch_size)], 0, "")
        .with_context(|| a.weights.display().to_string())?;
    let mut ws = m.net.workspace(a.batch_size, MemoryMode::Efficient, false);
    let set = EvalSet {
        source: &test,
        indices: None,
        transform: &transform,
    };
    let e = evaluate(&mut *m.net, &mut ws, set)?;
    let classes = test.classes().to_vec();
    if a.json {
        return super::print_json(&Report {
            version: 1,
            model: cfg.name().to_string(),
            dataset,
            top1_error_percent: 100.0 * (1.0 - e.top1_accuracy),
            top5_error_percent: 100.0 * (1.0 - e.top5_accuracy),
            classes,
            eval: &e,
        });
    }
    // with five classes or fewer every label is among the top five
    let top5 = match classes.len() > 5 {
        true => format!(", top-5 error {:.2}%", 100.0 * (1.0 - e.top5_accuracy)),
        false => String::new(),
    };
    outln!(
        "{} on {dataset} ({} images): top-1 error {:.2}%{top5}, loss {:.4}",
        cfg.name(),
        e.images,
        100.0 * (1.0 - e.top1_accuracy),
        e.loss
    );
    if classes.len() <= 20 {
        outln!("per class accuracy:");
        for (c, (acc, n)) in e.per_class.iter().enumerate() {
            outln!("  {:>12} {:6.2}% of {n}", classes[c], 100.0 * acc);
        }
        outln!("confusion matrix (rows: true class, columns: predicted):");
        for row in &e.confusion {
            outln!(
                "  {}",
                row.iter().map(|v| format!("{v:>4}")).collect::<String>()
            );
        }
    }
    Ok(())
}
