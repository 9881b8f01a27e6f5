//! `--model` and the options that adjust a preset (classes, input channels, dropout, the
//! B and C choices), shared by every subcommand that builds a network, and `--weights`
//! with its optional `--model`, shared by those that load one.

use crate::checkpoint::{read_model_config, LoadedModel};
use crate::densenet::config::{DenseNetConfig, Stem};
use crate::model::ModelConfig;
use anyhow::Context;
use std::path::PathBuf;

/// Which model to build.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model: densenet-L-k (plain), densenet-bc-L-k (bottleneck, θ=0.5), densenet-b-L-k,
    /// densenet-c-L-k, densenet121/161/169/201/264, preresnet-110/164/1001 (pre-activation
    /// ResNets; also preresnet-basic-L, preresnet-bottleneck-L), or a JSON config object.
    #[arg(long, short = 'm', value_name = "MODEL")]
    pub model: String,
    #[command(flatten)]
    pub adjust: ModelAdjust,
}

/// Options that change a preset.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ModelAdjust {
    /// Number of classes (default: 10 for the CIFAR family and the ResNets, 1000 for
    /// ImageNet models).
    #[arg(long, value_name = "N", value_parser = super::values::one_to(1_000_000))]
    pub classes: Option<usize>,
    /// Input channels: 3 (RGB) or 1 (grey).
    #[arg(long, value_name = "C", value_parser = super::values::in_channels)]
    pub in_channels: Option<usize>,
    /// DenseNets: dropout rate after every convolution but the first (the paper: 0.2
    /// without augmentation).
    #[arg(long, value_name = "P", value_parser = super::values::fraction_f32)]
    pub drop_rate: Option<f32>,
    /// Input height and width, up to 4096 (default: 32 for the CIFAR family, 224 for
    /// ImageNet models).
    #[arg(long, value_name = "PIXELS", value_parser = super::values::one_to(4096))]
    pub input_size: Option<usize>,
    /// DenseNet-B: bottleneck layers (CIFAR family; changes layers per block): bare
    /// --bottleneck turns them on, --bottleneck false off.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub bottleneck: Option<bool>,
    /// DenseNet-C: compression θ of the transitions, in (0, 1].
    #[arg(long, value_name = "THETA", value_parser = super::values::compression)]
    pub compression: Option<f64>,
}

impl ModelAdjust {
    /// Applies the adjustments to a parsed preset of either family.
    pub fn apply(&self, cfg: ModelConfig) -> anyhow::Result<ModelConfig> {
        let mut cfg = match cfg {
            ModelConfig::DenseNet(c) => ModelConfig::DenseNet(self.apply_densenet(c)?),
            ModelConfig::PreActResNet(c) => {
                let densenet_only = [
                    ("--drop-rate", self.drop_rate.is_some()),
                    ("--bottleneck", self.bottleneck.is_some()),
                    ("--compression", self.compression.is_some()),
                ];
                if let Some((flag, _)) = densenet_only.iter().find(|f| f.1) {
                    anyhow::bail!(
                        "{flag} applies to DenseNets; {} is a pre-activation ResNet (its \
                         unit is part of the name: preresnet-basic-L, preresnet-bottleneck-L)",
                        c.name
                    );
                }
                ModelConfig::PreActResNet(c)
            }
        };
        // what every family has: classes, input channels and size
        if let Some(c) = self.in_channels {
            anyhow::ensure!(c == 1 || c == 3, "--in-channels must be 1 or 3, got {c}");
        }
        cfg.set_io(
            self.classes.unwrap_or(cfg.num_classes()),
            self.in_channels.unwrap_or(cfg.in_channels()),
            self.input_size.unwrap_or(cfg.input_size()),
        );
        cfg.validate()?;
        Ok(cfg)
    }

    /// Applies the DenseNet-only adjustments (B, C, dropout) to a DenseNet preset; the
    /// caller validates.
    fn apply_densenet(&self, mut cfg: DenseNetConfig) -> anyhow::Result<DenseNetConfig> {
        if self.bottleneck.is_some() || self.compression.is_some() {
            let b = self.bottleneck.unwrap_or(cfg.bottleneck);
            let theta = self.compression.unwrap_or(cfg.compression);
            if cfg.stem == Stem::Cifar {
                // keep L: the same depth with or without bottleneck (the paper's naming)
                let per = if cfg.bottleneck { 6 } else { 3 };
                let depth = per * cfg.block_config[0] + 4;
                let keep = cfg.clone();
                cfg = DenseNetConfig::cifar(depth, cfg.growth_rate, b, theta)?;
                cfg.in_channels = keep.in_channels;
                cfg.num_classes = keep.num_classes;
                cfg.drop_rate = keep.drop_rate;
            } else {
                cfg.bottleneck = b;
                cfg.compression = theta;
            }
        }
        if let Some(p) = self.drop_rate {
            cfg.drop_rate = p;
        }
        Ok(cfg)
    }
}

/// `--model` for commands whose weights usually carry their model (a training
/// checkpoint): optional, with the same adjustments as everywhere.
#[derive(clap::Args, Debug, Clone)]
pub struct OptModelArgs {
    /// Model, for weights that are not a densenet training checkpoint (either family:
    /// densenet-bc-100-12, preresnet-164, …; see `densenet forward --help`).
    #[arg(long, short = 'm', value_name = "MODEL")]
    pub model: Option<String>,
    #[command(flatten)]
    pub adjust: ModelAdjust,
}

impl OptModelArgs {
    /// The configuration given on the command line, if any; adjustments without `--model`
    /// are refused (a checkpoint's stored model is used as it was trained).
    pub fn resolve(&self) -> anyhow::Result<Option<ModelConfig>> {
        match &self.model {
            Some(m) => ModelArgs {
                model: m.clone(),
                adjust: self.adjust.clone(),
            }
            .resolve()
            .map(Some),
            None => {
                anyhow::ensure!(
                    !self.adjust.any(),
                    "--classes, --in-channels, --input-size, --drop-rate, --bottleneck and \
                     --compression adjust a --model; a checkpoint's own model is used as stored"
                );
                Ok(None)
            }
        }
    }
}

/// `--weights` with `--model` for a state dict: the network `predict`, `embed` and
/// `heatmap` run.
#[derive(clap::Args, Debug, Clone)]
pub struct WeightsArgs {
    /// Weights: a training checkpoint, or a state dict with --model.
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    #[command(flatten)]
    pub model: OptModelArgs,
}

impl WeightsArgs {
    /// The network these weights hold, with its model and preprocessing.
    pub fn load(&self) -> anyhow::Result<LoadedModel> {
        Ok(read_model_config(&self.weights, self.model.resolve()?)?)
    }
}

impl ModelAdjust {
    /// Whether any adjustment is given.
    pub fn any(&self) -> bool {
        self.classes.is_some()
            || self.in_channels.is_some()
            || self.drop_rate.is_some()
            || self.input_size.is_some()
            || self.bottleneck.is_some()
            || self.compression.is_some()
    }
}

impl ModelArgs {
    /// The configuration these arguments describe.
    pub fn resolve(&self) -> anyhow::Result<ModelConfig> {
        let cfg = ModelConfig::from_name(&self.model)
            .with_context(|| format!("--model {}", self.model))?;
        self.adjust.apply(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjustments() {
        let a = ModelArgs {
            model: "densenet-bc-100-12".into(),
            adjust: ModelAdjust {
                classes: Some(100),
                bottleneck: Some(false),
                ..Default::default()
            },
        };
        let c = a.resolve().unwrap();
        let c = c.as_densenet().unwrap();
        // DenseNet-C L=100: 32 layers per block
        assert_eq!(
            (c.block_config[0], c.num_classes, c.compression),
            (32, 100, 0.5)
        );
        let bad = ModelArgs {
            model: "densenet-40-12".into(),
            adjust: ModelAdjust {
                compression: Some(1.5),
                ..Default::default()
            },
        };
        assert!(bad
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("compression"));
    }

    #[test]
    fn resnet_adjustments() {
        let a = ModelArgs {
            model: "preresnet-110".into(),
            adjust: ModelAdjust {
                classes: Some(100),
                in_channels: Some(1),
                ..Default::default()
            },
        };
        let c = a.resolve().unwrap();
        assert_eq!(
            (c.num_classes(), c.in_channels(), c.family()),
            (100, 1, "preact_resnet")
        );
        let bad = ModelArgs {
            model: "preresnet-164".into(),
            adjust: ModelAdjust {
                compression: Some(0.5),
                ..Default::default()
            },
        };
        let e = bad.resolve().unwrap_err().to_string();
        assert!(e.contains("--compression applies to DenseNets"), "{e}");
    }
}
