//! `densenet summary`: per stage the output shape, parameters, multiply-accumulates and the
//! connectivity, then totals (the paper's Table 1 with numbers), for DenseNets and
//! pre-activation ResNets alike.

use super::model_args::ModelAdjust;
use crate::model::ModelConfig;
use crate::summary::summarize_model;
use anyhow::Context;

/// Arguments of `densenet summary`.
#[derive(clap::Args, Debug)]
#[command(
    after_long_help = "Examples:\n  densenet summary densenet-bc-100-12 --json\n  densenet summary preresnet-164"
)]
pub struct Args {
    /// Model name (see `densenet forward --help` for the forms).
    #[arg(value_name = "MODEL")]
    pub model: String,
    #[command(flatten)]
    pub adjust: ModelAdjust,
    /// Print one JSON object (fields `parameters`, `macs`, `stages`, …).
    #[arg(long)]
    pub json: bool,
}

/// Runs `densenet summary`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let cfg = ModelConfig::from_name(&a.model).with_context(|| format!("model {}", a.model))?;
    let cfg = a.adjust.apply(cfg)?;
    let s = summarize_model(&cfg);
    if a.json {
        return super::print_json(&s);
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
            crate::cli::Command::Summary(a) => assert!(a.json && a.model == "densenet121"),
            _ => panic!(),
        }
        assert_eq!(group(7978856), "7,978,856");
    }
}
