//! `densenet summary`: per stage the output shape, parameters, multiply-accumulates and the
//! connectivity, then totals (the paper's Table 1 with numbers), for DenseNets and
//! pre-activation ResNets alike.

use super::model_args::{ModelAdjust, OptModelArgs};
use crate::checkpoint::read_model_config;
use crate::model::ModelConfig;
use crate::nn::arena::{total_bytes, Region};
use crate::nn::MemoryMode;
use crate::prepare::InputPrep;
use anyhow::Context;
use std::path::PathBuf;

/// Arguments of `densenet summary`.
#[derive(clap::Args, Debug)]
#[command(
    after_long_help = "Examples:\n  densenet summary densenet-bc-100-12 --json\n  densenet summary preresnet-164\n  densenet summary densenet-bc-100-12 --plan --batch-size 64\n  densenet summary --weights runs/<run>/best.safetensors"
)]
pub struct Args {
    /// Model name (see `densenet forward --help` for the forms); also as -m/--model.
    #[arg(value_name = "MODEL", required_unless_present_any = ["model_flag", "weights"])]
    pub model: Option<String>,
    /// Model name, as in the other subcommands.
    #[arg(
        long = "model",
        short = 'm',
        value_name = "MODEL",
        id = "model_flag",
        conflicts_with = "model"
    )]
    pub model_flag: Option<String>,
    #[command(flatten)]
    pub adjust: ModelAdjust,
    /// Weights (a training checkpoint, or a state dict with a model): summarise their
    /// model and show the preprocessing that `predict` and `embed` apply to images.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Print the memory plan instead: every region of the workspace's one allocation
    /// (name, offset, bytes) and the total, which `bench train --json` reports as
    /// `activation_bytes`; then every convolution's route, the algorithm that computes its
    /// forward pass and its two gradients at this batch size and thread count
    /// (`DENSENET_ROUTES` and `DENSENET_KERNELS` change them).
    #[arg(long)]
    pub plan: bool,
    /// With --plan: the batch size the workspace holds, 1 to 65536.
    #[arg(
        long = "batch-size",
        visible_alias = "batch",
        default_value_t = 64,
        value_parser = super::values::batch_size()
    )]
    pub batch: usize,
    /// With --plan: memory mode.
    #[arg(long, default_value = "efficient", value_parser = super::values::memory_mode())]
    pub memory: MemoryMode,
    /// With --plan: the evaluation workspace (no backward pass) instead of training's.
    #[arg(long)]
    pub eval: bool,
    /// Print one JSON object (fields `parameters`, `macs`, `stages`, …; with --weights
    /// `preprocess`; with --plan `total_bytes` and `regions`).
    #[arg(long)]
    pub json: bool,
}

/// `densenet summary --plan --json`.
#[derive(Debug, serde::Serialize)]
pub struct PlanReport {
    /// Model.
    pub model: String,
    /// Batch size the workspace holds.
    pub batch: usize,
    /// Memory mode.
    pub memory: MemoryMode,
    /// Whether the workspace supports backward passes.
    pub training: bool,
    /// Bytes of the one allocation (regions and alignment padding).
    pub total_bytes: usize,
    /// Every region, in address order.
    pub regions: Vec<Region>,
    /// Every convolution's routes (which algorithm computes each product), in the order
    /// of the forward pass.
    pub convolutions: Vec<ConvRow>,
}

/// One convolution of [`PlanReport`].
#[derive(Debug, serde::Serialize)]
pub struct ConvRow {
    /// State-dict prefix of its weight.
    pub name: String,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Input height and width.
    pub size: [usize; 2],
    /// Its routes: `pooled_first`, `forward`, `input_grad`, `weight_grad`.
    #[serde(flatten)]
    pub route: crate::ops::route::ConvRoute,
}

/// Prints the memory plan of `cfg`.
fn plan(a: &Args, cfg: &ModelConfig) -> anyhow::Result<()> {
    let batch = a.batch;
    let plan = cfg.checked_plan(batch, a.memory, !a.eval)?;
    let convolutions = plan
        .routes
        .convs
        .iter()
        .map(|c| ConvRow {
            name: c.name.clone(),
            cin: c.shape.cin,
            cout: c.shape.cout,
            kernel: c.shape.k,
            stride: c.shape.stride,
            size: [c.shape.h, c.shape.w],
            route: c.route,
        })
        .collect();
    let report = PlanReport {
        model: cfg.name().to_string(),
        batch,
        memory: a.memory,
        training: !a.eval,
        total_bytes: total_bytes(&plan.regions),
        regions: plan.regions,
        convolutions,
    };
    if a.json {
        return super::print_json(&report);
    }
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let mib = |b: usize| super::mib(b as u64);
    writeln!(
        out,
        "{}: {} workspace, batch {}, {} memory: {} regions in one allocation",
        report.model,
        if report.training {
            "training"
        } else {
            "evaluation"
        },
        batch,
        match a.memory {
            MemoryMode::Efficient => "efficient",
            MemoryMode::Naive => "naive",
        },
        report.regions.len()
    )?;
    writeln!(
        out,
        "{:<28} {:>14} {:>14} {:>10}",
        "region", "offset", "bytes", "MiB"
    )?;
    for r in &report.regions {
        writeln!(
            out,
            "{:<28} {:>14} {:>14} {:>10.3}",
            r.name,
            group(r.offset),
            group(r.bytes),
            mib(r.bytes)
        )?;
    }
    writeln!(
        out,
        "{:<28} {:>14} {:>14} {:>10.3}",
        "total (with padding)",
        "",
        group(report.total_bytes),
        mib(report.total_bytes)
    )?;
    writeln!(
        out,
        "\n{:<46} {:>18} {:<18} {:<14} {:<14}",
        "convolution", "shape", "forward", "input grad", "weight grad"
    )?;
    for c in &report.convolutions {
        let shape = format!(
            "{}→{} {}×{}/{} {}²",
            c.cin, c.cout, c.kernel, c.kernel, c.stride, c.size[0]
        );
        let r = &c.route;
        let fwd = if r.pooled_first {
            format!("pooled, {}", r.forward)
        } else {
            r.forward.to_string()
        };
        let opt = |x: Option<crate::ops::route::Route>| x.map_or("-".into(), |r| r.to_string());
        writeln!(
            out,
            "{:<46} {:>18} {:<18} {:<14} {:<14}",
            c.name,
            shape,
            fwd,
            opt(r.input_grad),
            opt(r.weight_grad)
        )?;
    }
    Ok(())
}

/// Runs `densenet summary`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let name = a.model.as_deref().or(a.model_flag.as_deref());
    let given = match name {
        Some(name) => {
            let cfg = ModelConfig::from_name(name).with_context(|| format!("model {name}"))?;
            Some(a.adjust.apply(cfg)?)
        }
        // --weights alone: refuses adjustments, as every command reading weights does
        None => OptModelArgs {
            model: None,
            adjust: a.adjust.clone(),
        }
        .resolve()?,
    };
    let (cfg, prep) = match (&a.weights, given) {
        (Some(w), given) => {
            let m = read_model_config(w, given)?;
            let cfg = m.net.model_config();
            let prep = InputPrep::new(&cfg, m.preprocess.as_ref(), w)?;
            (cfg, Some(prep))
        }
        (None, Some(cfg)) => (cfg, None),
        (None, None) => unreachable!("clap requires a model or --weights"),
    };
    if a.plan {
        return plan(&a, &cfg);
    }
    let s = cfg.architecture().summary();
    if a.json {
        #[derive(serde::Serialize)]
        struct WithPreprocess<'a> {
            #[serde(flatten)]
            summary: &'a crate::summary::Summary,
            #[serde(skip_serializing_if = "Option::is_none")]
            preprocess: Option<&'a InputPrep>,
        }
        return super::print_json(&WithPreprocess {
            summary: &s,
            preprocess: prep.as_ref(),
        });
    }
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let kind = match (s.growth_rate, s.compression) {
        (Some(k), Some(theta)) => format!("k={k} bottleneck={} θ={theta}", s.bottleneck),
        _ => format!(
            "pre-activation ResNet, {} units",
            if s.bottleneck { "bottleneck" } else { "basic" }
        ),
    };
    writeln!(
        out,
        "{}: {kind} depth={} input {}×{}×{}, {} classes",
        s.model, s.depth, s.input[0], s.input[1], s.input[2], s.classes
    )?;
    let layers = if s.growth_rate.is_some() {
        "layers"
    } else {
        "units"
    };
    writeln!(
        out,
        "{:<14} {:>16} {:>12} {:>14} {:>7} {:>12}",
        "stage", "output (C×H×W)", "parameters", "MACs", layers, "connections"
    )?;
    for st in &s.stages {
        let shape = format!("{}×{}×{}", st.output[0], st.output[1], st.output[2]);
        let opt = |v: Option<usize>| v.map(|v| v.to_string()).unwrap_or_default();
        writeln!(
            out,
            "{:<14} {:>16} {:>12} {:>14} {:>7} {:>12}",
            st.name,
            shape,
            group(st.parameters),
            group(st.macs),
            opt(st.layers),
            opt(st.connections)
        )?;
    }
    writeln!(
        out,
        "{:<14} {:>16} {:>12} {:>14}   ({:.3} GMACs per image)",
        "total",
        "",
        group(s.parameters),
        group(s.macs),
        s.macs as f64 / 1e9
    )?;
    if let Some(p) = &prep {
        writeln!(out, "preprocessing: {}", p.describe())?;
    }
    Ok(())
}

/// `1234567` → `1,234,567`.
pub(crate) fn group(v: usize) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn parses() {
        let cli = crate::cli::Cli::try_parse_from(["densenet", "summary", "densenet121", "--json"])
            .unwrap();
        match cli.command {
            crate::cli::Command::Summary(a) => {
                assert!(a.json && a.model.as_deref() == Some("densenet121"))
            }
            _ => panic!(),
        }
        assert_eq!(group(7978856), "7,978,856");
    }
}
