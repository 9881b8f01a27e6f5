//! `densenet forward`: runs a model on an input tensor from a safetensors file and writes
//! what PyTorch would produce, named as in the PyTorch-made reference files
//! (`tests/reference/`): eval-mode `logits`, or with `--train` the train-mode `logits`,
//! the mean cross-entropy `loss`, `grad.<param>` for every parameter, `input_grad`, and
//! `post.<buffer>` for every BN running statistic after the step's forward pass. This is
//! how a port of weights is checked.

use super::ModelArgs;
use crate::model::memory::{self, Use};
use crate::model::AnyModel;
use crate::nn::MemoryMode;
use crate::nn::TrainOptions;
use crate::util::tensor::Tensor;
use crate::weights::{read_checkpoint, read_safetensors, write_safetensors};
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::path::PathBuf;

/// Arguments of `densenet forward`.
#[derive(clap::Args, Debug)]
#[command(
    override_usage = "densenet forward [OPTIONS] --model <MODEL> --weights <FILE>\n       \
                      --input <FILE> --out <FILE>",
    after_long_help = "Example:\n  densenet forward --model densenet-bc-40-12 \
    --weights w.safetensors \\\n    --input x.safetensors --out y.safetensors --train"
)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Weights: safetensors or a PyTorch .pth state dict (torchvision key names).
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    /// Safetensors file with `input` (f32, NCHW) and, for --train, `labels` (integers).
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Where to write the results (safetensors).
    #[arg(long = "out", visible_alias = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Training mode: batch statistics, loss, gradients and updated running statistics.
    #[arg(long)]
    pub train: bool,
    /// Memory mode of the training pass.
    #[arg(
        long,
        default_value = "efficient",
        value_name = "MODE",
        value_parser = super::values::memory_mode()
    )]
    pub memory: MemoryMode,
    /// Print one JSON object: the file written and its tensors' names and shapes.
    #[arg(long)]
    pub json: bool,
}

/// Runs `densenet forward`.
pub fn run(a: Args) -> anyhow::Result<()> {
    crate::util::atomic::check_output(
        &a.output,
        &[
            ("the --weights file", &a.weights),
            ("the --input file", &a.input),
        ],
    )
    .with_context(|| format!("--out {}", a.output.display()))?;
    let cfg = a.model.resolve()?;
    let mut net = AnyModel::try_new(&cfg, 0)?;
    let weights = read_checkpoint(&a.weights)?;
    net.load_tensors(&weights.tensors, &a.weights.display().to_string())?;
    let file = read_safetensors(&a.input)?;
    let input = &file
        .get("input")
        .with_context(|| format!("{}: no tensor named 'input'", a.input.display()))?
        .tensor;
    let s = cfg.input_size();
    let want = [cfg.in_channels(), s, s];
    if input.shape.len() != 4 || input.shape[1..] != want || input.shape[0] == 0 {
        bail!(
            "{}: 'input' has shape {:?}; model {} expects [N, {}, {}, {}] (NCHW)",
            a.input.display(),
            input.shape,
            cfg.name(),
            want[0],
            want[1],
            want[2]
        );
    }
    let n = input.shape[0];
    let uses = if a.train {
        Use::train(n, a.memory)
    } else {
        Use::eval(n)
    };
    memory::check(&cfg, &[uses], 0, "").with_context(|| a.input.display().to_string())?;
    let classes = cfg.num_classes();
    let mut out: Vec<(String, Tensor)> = Vec::new();
    if !a.train {
        let mut ws = net.workspace(n, MemoryMode::Efficient, false);
        let logits = net.forward_eval(&mut ws, &input.data, n, None);
        out.push(("logits".into(), Tensor::new(vec![n, classes], logits)));
    } else {
        let labels = file.get("labels").with_context(|| {
            format!(
                "{}: --train needs a tensor named 'labels'",
                a.input.display()
            )
        })?;
        if labels.tensor.shape != [n] {
            bail!(
                "{}: 'labels' has shape {:?}, expected [{n}]",
                a.input.display(),
                labels.tensor.shape
            );
        }
        let mut y = Vec::with_capacity(n);
        for (i, &v) in labels.tensor.data.iter().enumerate() {
            if v < 0.0 || v.fract() != 0.0 || v as usize >= classes {
                bail!(
                    "{}: labels[{i}] = {v} is not a class index in 0..{classes}",
                    a.input.display()
                );
            }
            y.push(v as u32);
        }
        let mut ws = net.workspace(n, a.memory, true);
        let opts = TrainOptions {
            dropout_seed: 0,
            input_grad: true,
            ..Default::default()
        };
        let loss = net.forward_train(&mut ws, &input.data, &y, &opts);
        net.zero_grad();
        net.backward(&mut ws, &opts);
        out.push((
            "logits".into(),
            Tensor::new(vec![n, classes], ws.logits()[..n * classes].to_vec()),
        ));
        out.push(("loss".into(), Tensor::new(vec![1], vec![loss])));
        out.push((
            "input_grad".into(),
            Tensor::new(
                input.shape.clone(),
                ws.input_grad()[..input.numel()].to_vec(),
            ),
        ));
        for e in net.param_table().entries() {
            let g = net.grads()[e.range()].to_vec();
            out.push((format!("grad.{}", e.name), Tensor::new(e.shape.clone(), g)));
        }
        for e in net.stats_table().entries() {
            let v = net.stats()[e.range()].to_vec();
            out.push((format!("post.{}", e.name), Tensor::new(e.shape.clone(), v)));
        }
    }
    let mut meta = HashMap::new();
    meta.insert("config".into(), serde_json::to_string(&cfg)?);
    write_safetensors(&a.output, &out, &[], meta)?;
    eprintln!(
        "wrote {} to {}",
        super::count(out.len(), "tensor"),
        a.output.display()
    );
    if a.json {
        let tensors: Vec<_> = out
            .iter()
            .map(|(name, t)| serde_json::json!({ "name": name, "shape": t.shape }))
            .collect();
        super::print_json(&serde_json::json!({
            "model": cfg.name(),
            "train": a.train,
            "out": a.output,
            "tensors": tensors,
        }))?;
    }
    Ok(())
}
