//! [`ModelConfig`]: which network to build. It serialises a DenseNet as the bare
//! `DenseNetConfig` object that checkpoints have always stored under `config`, and a
//! ResNet as its object plus `"family": "preact_resnet"`, so old checkpoints still load.

use crate::densenet::config::DenseNetConfig;
use crate::nn::ConfigError;
use crate::resnet::config::PreActResNetConfig;
use serde::{Deserialize, Serialize};

/// The `family` tag of a pre-activation ResNet's serialised configuration.
pub const PREACT_RESNET: &str = "preact_resnet";

/// Which network to build.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    /// A DenseNet of any variant.
    DenseNet(DenseNetConfig),
    /// A pre-activation ResNet.
    PreActResNet(PreActResNetConfig),
}

impl From<DenseNetConfig> for ModelConfig {
    fn from(c: DenseNetConfig) -> Self {
        ModelConfig::DenseNet(c)
    }
}

impl From<PreActResNetConfig> for ModelConfig {
    fn from(c: PreActResNetConfig) -> Self {
        ModelConfig::PreActResNet(c)
    }
}

impl ModelConfig {
    /// Parses a preset name of either family (`densenet-bc-100-12`, `densenet121`,
    /// `preresnet-164`, …) or a JSON object: a configuration as the tool writes it (a
    /// run's config.json `model`, a checkpoint's `config`: a bare [`DenseNetConfig`], or a
    /// [`PreActResNetConfig`] with `"family": "preact_resnet"`), or a DenseNet in the
    /// reference files' format (`"family": "cifar_densenet"` or `"imagenet_densenet"`).
    pub fn from_name(name: &str) -> Result<Self, ConfigError> {
        if let Some(r) = PreActResNetConfig::from_name(name) {
            return r.map(ModelConfig::PreActResNet);
        }
        let t = name.trim();
        if t.starts_with('{') {
            let json_err =
                |e: serde_json::Error| ConfigError::Rule(format!("model config JSON: {e}"));
            let v: serde_json::Value = serde_json::from_str(t).map_err(json_err)?;
            let family = v.get("family").and_then(|f| f.as_str());
            // the tool's own schema, what it writes: a run's config.json `model`, a
            // checkpoint's `config` (validated as it is read)
            if family.is_none() || family == Some(PREACT_RESNET) {
                let cfg = match family {
                    None => serde_json::from_value(v).map(ModelConfig::DenseNet),
                    Some(_) => serde_json::from_value(v).map(ModelConfig::PreActResNet),
                }
                .map_err(json_err)?;
                cfg.validate()?;
                return Ok(cfg);
            }
        }
        // names, and DenseNet JSON in the reference files' format
        DenseNetConfig::from_name(name).map(ModelConfig::DenseNet)
    }

    /// The preset name.
    pub fn name(&self) -> &str {
        match self {
            ModelConfig::DenseNet(c) => &c.name,
            ModelConfig::PreActResNet(c) => &c.name,
        }
    }

    /// `densenet` or `preact_resnet`.
    pub fn family(&self) -> &'static str {
        match self {
            ModelConfig::DenseNet(_) => "densenet",
            ModelConfig::PreActResNet(_) => PREACT_RESNET,
        }
    }

    /// The family as a message names it: `DenseNet` or `ResNet`.
    pub fn family_title(&self) -> &'static str {
        match self {
            ModelConfig::DenseNet(_) => "DenseNet",
            ModelConfig::PreActResNet(_) => "ResNet",
        }
    }

    /// Classifier outputs.
    pub fn num_classes(&self) -> usize {
        match self {
            ModelConfig::DenseNet(c) => c.num_classes,
            ModelConfig::PreActResNet(c) => c.num_classes,
        }
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        match self {
            ModelConfig::DenseNet(c) => c.in_channels,
            ModelConfig::PreActResNet(c) => c.in_channels,
        }
    }

    /// Input height and width.
    pub fn input_size(&self) -> usize {
        match self {
            ModelConfig::DenseNet(c) => c.input_size,
            ModelConfig::PreActResNet(c) => c.input_size,
        }
    }

    /// Sets the classes, input channels and input size (fitting a model to a data set);
    /// does not validate.
    pub fn set_io(&mut self, classes: usize, in_channels: usize, input_size: usize) {
        match self {
            ModelConfig::DenseNet(c) => {
                (c.num_classes, c.in_channels, c.input_size) = (classes, in_channels, input_size)
            }
            ModelConfig::PreActResNet(c) => {
                (c.num_classes, c.in_channels, c.input_size) = (classes, in_channels, input_size)
            }
        }
    }

    /// Checks every rule of the family.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            ModelConfig::DenseNet(c) => c.validate(),
            ModelConfig::PreActResNet(c) => c.validate(),
        }
    }

    /// The DenseNet configuration, if it is one.
    pub fn as_densenet(&self) -> Option<&DenseNetConfig> {
        match self {
            ModelConfig::DenseNet(c) => Some(c),
            ModelConfig::PreActResNet(_) => None,
        }
    }

    /// The DenseNet configuration, mutably, if it is one.
    pub fn as_densenet_mut(&mut self) -> Option<&mut DenseNetConfig> {
        match self {
            ModelConfig::DenseNet(c) => Some(c),
            ModelConfig::PreActResNet(_) => None,
        }
    }
}

impl Serialize for ModelConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Tagged<'a> {
            family: &'static str,
            #[serde(flatten)]
            config: &'a PreActResNetConfig,
        }
        match self {
            // bare, exactly as checkpoints stored it before there was a second family
            ModelConfig::DenseNet(c) => c.serialize(s),
            ModelConfig::PreActResNet(c) => Tagged {
                family: PREACT_RESNET,
                config: c,
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ModelConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_json::Value::deserialize(d)?;
        let family = v.get("family").and_then(|f| f.as_str()).map(str::to_owned);
        // a configuration read from a file (a checkpoint's metadata, a run's config.json)
        // meets the same rules as one from a name or from flags, before anything is built
        let cfg: ModelConfig = match family.as_deref() {
            Some(PREACT_RESNET) => serde_json::from_value(v)
                .map(ModelConfig::PreActResNet)
                .map_err(D::Error::custom),
            // no tag: a DenseNetConfig, as every checkpoint before the ResNet wrote it
            None => serde_json::from_value(v)
                .map(ModelConfig::DenseNet)
                .map_err(D::Error::custom),
            Some(other) => Err(D::Error::custom(format!(
                "unknown model family '{other}' (expected {PREACT_RESNET}, or no family for \
                 a DenseNet)"
            ))),
        }?;
        cfg.validate().map_err(D::Error::custom)?;
        Ok(cfg)
    }
}
