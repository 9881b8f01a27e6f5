//! Model configuration: what a DenseNet is, before any memory is allocated.
//!
//! A [`DenseNetConfig`] describes one network of the paper's family (Huang et al., CVPR
//! 2017, Table 1 and §4): the stem, the number of layers of each dense block, the growth
//! rate k, the bottleneck (DenseNet-B), the compression θ (DenseNet-C) and the head.
//! Named presets (`densenet-bc-100-12`, `densenet121`, ...) parse into it; invalid
//! configurations are rejected with a message that names the rule that failed.

use crate::nn::limits;
pub use crate::nn::ConfigError;
use serde::{Deserialize, Serialize};

/// Which stem (and input size) a network uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stem {
    /// CIFAR/SVHN: one 3×3 convolution, stride 1 (no BN before the first block); 32×32 input.
    Cifar,
    /// ImageNet: 7×7 convolution stride 2, BN, ReLU, 3×3 max pool stride 2; 224×224 input.
    ImageNet,
}

/// A DenseNet: everything needed to build its parameter table and its forward pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DenseNetConfig {
    /// The preset name this came from (or "custom").
    pub name: String,
    /// Stem and input size family.
    pub stem: Stem,
    /// Input channels (3 for RGB, 1 for grey images).
    pub in_channels: usize,
    /// Channels produced by the stem convolution (16 plain CIFAR, 2k for BC, 64/96 ImageNet).
    pub init_features: usize,
    /// Growth rate k: channels each dense layer adds.
    pub growth_rate: usize,
    /// Layers in each dense block.
    pub block_config: Vec<usize>,
    /// DenseNet-B: each layer is BN-ReLU-Conv1×1(bn_size·k) → BN-ReLU-Conv3×3(k).
    pub bottleneck: bool,
    /// Bottleneck width factor (4 in the paper: the 1×1 conv produces 4k maps).
    pub bn_size: usize,
    /// Compression θ of the transitions (DenseNet-C when < 1): m maps become ⌊θ·m⌋.
    pub compression: f64,
    /// Dropout after every convolution except the stem (0 disables it).
    pub drop_rate: f32,
    /// Classifier outputs.
    pub num_classes: usize,
    /// Spatial input size (height = width) the family is specified for.
    pub input_size: usize,
}

impl DenseNetConfig {
    /// The CIFAR/SVHN family: depth L, growth rate k, bottleneck B, compression θ.
    ///
    /// Layers per block are (L−4)/3 without and (L−4)/6 with bottleneck; the stem has 16
    /// channels, or 2k for the bottleneck-compressed DenseNet-BC (as in the authors' code).
    pub fn cifar(
        depth: usize,
        growth_rate: usize,
        bottleneck: bool,
        compression: f64,
    ) -> Result<Self, ConfigError> {
        let (div, per_layer, kind) = if bottleneck {
            (6, 2, "a DenseNet with bottleneck")
        } else {
            (3, 1, "a plain DenseNet")
        };
        if depth < 4 + div || !(depth - 4).is_multiple_of(div) {
            return Err(ConfigError::BadDepth {
                depth,
                kind,
                div,
                per_layer,
            });
        }
        let n = (depth - 4) / div;
        let bc = bottleneck && compression < 1.0;
        let prefix = match (bottleneck, compression < 1.0) {
            (true, true) => "densenet-bc",
            (true, false) => "densenet-b",
            (false, true) => "densenet-c",
            (false, false) => "densenet",
        };
        let cfg = DenseNetConfig {
            name: format!("{prefix}-{depth}-{growth_rate}"),
            stem: Stem::Cifar,
            in_channels: 3,
            init_features: if bc {
                growth_rate.saturating_mul(2)
            } else {
                16
            },
            growth_rate,
            block_config: vec![n; 3],
            bottleneck,
            bn_size: 4,
            compression,
            drop_rate: 0.0,
            num_classes: 10,
            input_size: 32,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The ImageNet family (DenseNet-BC with the 7×7 stem), torchvision's definition.
    pub fn imagenet(
        name: &str,
        growth_rate: usize,
        block_config: &[usize],
        init_features: usize,
    ) -> Result<Self, ConfigError> {
        let cfg = DenseNetConfig {
            name: name.to_string(),
            stem: Stem::ImageNet,
            in_channels: 3,
            init_features,
            growth_rate,
            block_config: block_config.to_vec(),
            bottleneck: true,
            bn_size: 4,
            compression: 0.5,
            drop_rate: 0.0,
            num_classes: 1000,
            input_size: 224,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a preset name: `densenet-L-k`, `densenet-bc-L-k` (also `-b-`, `-c-`),
    /// `densenet121/161/169/201/264`, or a JSON object in the reference files' config format.
    pub fn from_name(name: &str) -> Result<Self, ConfigError> {
        let name = name.trim();
        if name.starts_with('{') {
            return Self::from_json(name);
        }
        let lower = name.to_ascii_lowercase();
        let imagenet: Option<(usize, &[usize], usize)> = match lower.as_str() {
            "densenet121" | "densenet-121" => Some((32, &[6, 12, 24, 16], 64)),
            "densenet169" | "densenet-169" => Some((32, &[6, 12, 32, 32], 64)),
            "densenet201" | "densenet-201" => Some((32, &[6, 12, 48, 32], 64)),
            "densenet264" | "densenet-264" => Some((32, &[6, 12, 64, 48], 64)),
            "densenet161" | "densenet-161" => Some((48, &[6, 12, 36, 24], 96)),
            _ => None,
        };
        if let Some((k, blocks, init)) = imagenet {
            return Self::imagenet(&lower.replace('-', ""), k, blocks, init);
        }
        let parts: Vec<&str> = lower.split('-').collect();
        let (bottleneck, compression, nums) = match parts.as_slice() {
            ["densenet", l, k] => (false, 1.0, (*l, *k)),
            ["densenet", "bc", l, k] => (true, 0.5, (*l, *k)),
            ["densenet", "b", l, k] => (true, 1.0, (*l, *k)),
            ["densenet", "c", l, k] => (false, 0.5, (*l, *k)),
            _ => return Err(ConfigError::UnknownModel(name.to_string())),
        };
        let depth: usize = nums
            .0
            .parse()
            .map_err(|_| ConfigError::UnknownModel(name.to_string()))?;
        let k: usize = nums
            .1
            .parse()
            .map_err(|_| ConfigError::UnknownModel(name.to_string()))?;
        Self::cifar(depth, k, bottleneck, compression)
    }

    /// Parses the JSON config stored in the reference files' metadata, e.g.
    /// `{"family":"cifar_densenet","depth":40,"growth_rate":12,"bottleneck":true,...}`,
    /// or an ImageNet-family object with `"family":"imagenet_densenet"` and `block_config`.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        #[derive(Deserialize)]
        struct Raw {
            family: String,
            depth: Option<usize>,
            growth_rate: usize,
            bottleneck: Option<bool>,
            compression: Option<f64>,
            bn_size: Option<usize>,
            drop_rate: Option<f32>,
            num_classes: Option<usize>,
            in_channels: Option<usize>,
            init_features: Option<usize>,
            block_config: Option<Vec<usize>>,
        }
        let raw: Raw = serde_json::from_str(text)
            .map_err(|e| ConfigError::Rule(format!("model config JSON: {e}")))?;
        let mut cfg = match raw.family.as_str() {
            "cifar_densenet" => {
                let depth = raw
                    .depth
                    .ok_or_else(|| ConfigError::Rule("cifar_densenet needs 'depth'".into()))?;
                Self::cifar(
                    depth,
                    raw.growth_rate,
                    raw.bottleneck.unwrap_or(true),
                    raw.compression.unwrap_or(0.5),
                )?
            }
            "imagenet_densenet" | "torchvision_densenet" => {
                let blocks = raw.block_config.clone().ok_or_else(|| {
                    ConfigError::Rule("imagenet_densenet needs 'block_config'".into())
                })?;
                Self::imagenet(
                    "custom",
                    raw.growth_rate,
                    &blocks,
                    raw.growth_rate.saturating_mul(2),
                )?
            }
            other => {
                return Err(ConfigError::Rule(format!(
                    "unknown family '{other}' (expected cifar_densenet or imagenet_densenet)"
                )))
            }
        };
        if let Some(c) = raw.init_features {
            cfg.init_features = c;
        }
        if let Some(v) = raw.bn_size {
            cfg.bn_size = v;
        }
        if let Some(v) = raw.drop_rate {
            cfg.drop_rate = v;
        }
        if let Some(v) = raw.num_classes {
            cfg.num_classes = v;
        }
        if let Some(v) = raw.in_channels {
            cfg.in_channels = v;
        }
        if cfg.stem == Stem::ImageNet {
            if let Some(b) = raw.block_config {
                cfg.block_config = b;
            }
            if let Some(v) = raw.compression {
                cfg.compression = v;
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every rule; the error names the one that failed. Every configuration goes
    /// through here before anything is allocated for it, whatever its source: the bounds
    /// of [`limits`] come first, so that the arithmetic of the later rules cannot overflow.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rule = ConfigError::check;
        let range = ConfigError::in_range;
        range(
            "growth_rate",
            "growth rate k",
            self.growth_rate,
            limits::MAX_WIDTH,
        )?;
        rule(
            self.compression > 0.0 && self.compression <= 1.0,
            format!(
                "compression θ must be in (0, 1], got {:?}",
                self.compression
            ),
        )?;
        rule(
            !self.block_config.is_empty() && self.block_config.iter().all(|&n| n > 0),
            format!(
                "every dense block needs at least one layer, got {:?}",
                self.block_config
            ),
        )?;
        rule(
            self.block_config.len() <= limits::MAX_STAGES,
            format!(
                "block_config (layers per dense block) may list at most {} blocks, got {}",
                limits::MAX_STAGES,
                self.block_config.len()
            ),
        )?;
        for &n in &self.block_config {
            range(
                "block_config",
                "layers per dense block",
                n,
                limits::MAX_LAYERS_PER_STAGE,
            )?;
        }
        ConfigError::check_io(self.num_classes, self.in_channels, self.input_size)?;
        rule(
            self.init_features > 0,
            "stem must produce at least one channel".into(),
        )?;
        range(
            "init_features",
            "channels of the stem",
            self.init_features,
            limits::MAX_WIDTH,
        )?;
        rule(
            (0.0..1.0).contains(&self.drop_rate),
            format!("dropout rate must be in [0, 1), got {:?}", self.drop_rate),
        )?;
        rule(
            !self.bottleneck || self.bn_size > 0,
            "bottleneck width factor bn_size must be at least 1".into(),
        )?;
        if self.bottleneck {
            range(
                "bn_size",
                "bottleneck width factor",
                self.bn_size,
                limits::MAX_BN_SIZE,
            )?;
        }
        // Every transition must leave at least one channel and the input must survive the
        // downsampling: 32 → 16 → 8 for CIFAR, 224 → 56 → ... → 7 for ImageNet. (Within
        // the bounds above, channels stay below 2^36.)
        let mut c = self.init_features;
        for (b, &n) in self.block_config.iter().enumerate() {
            c += n * self.growth_rate;
            if b + 1 < self.block_config.len() {
                c = self.transition_channels(c);
                rule(
                    c > 0,
                    format!("transition {} would produce 0 channels", b + 1),
                )?;
            }
        }
        let min_size = match self.stem {
            Stem::Cifar => 1 << (self.block_config.len() - 1),
            Stem::ImageNet => 4 << (self.block_config.len() - 1),
        };
        let blocks = self.block_config.len();
        ConfigError::check_input_size(self.input_size, min_size, blocks, "blocks")?;
        ConfigError::check_params(self.num_params_checked())
    }

    /// Trainable parameters of this configuration (the length of the network's parameter
    /// buffer), computed without building anything; `None` if the count overflows. Call
    /// after the per-field bounds of [`validate`](Self::validate) hold (it loops over the
    /// layers).
    pub fn num_params_checked(&self) -> Option<u128> {
        let u = |v: usize| v as u128;
        let k = u(self.growth_rate);
        let kernel = match self.stem {
            Stem::Cifar => 9,
            Stem::ImageNet => 49,
        };
        let mut total = u(self.init_features)
            .checked_mul(u(self.in_channels))?
            .checked_mul(kernel)?;
        if self.stem == Stem::ImageNet {
            total = total.checked_add(2 * u(self.init_features))?;
        }
        let mut c = u(self.init_features);
        for (b, &n) in self.block_config.iter().enumerate() {
            for i in 0..u(n) {
                let c_in = c.checked_add(i.checked_mul(k)?)?;
                let layer = if self.bottleneck {
                    let width = u(self.bn_size).checked_mul(k)?;
                    // norm1, conv1 (1×1), norm2, conv2 (3×3)
                    (2 * c_in)
                        .checked_add(width.checked_mul(c_in)?)?
                        .checked_add(2 * width)?
                        .checked_add(k.checked_mul(width)?.checked_mul(9)?)?
                } else {
                    (2 * c_in).checked_add(k.checked_mul(c_in)?.checked_mul(9)?)?
                };
                total = total.checked_add(layer)?;
            }
            let c_out = c.checked_add(u(n).checked_mul(k)?)?;
            c = if b + 1 < self.block_config.len() {
                let next = u(self.transition_channels(usize::try_from(c_out).ok()?));
                // norm, conv (1×1)
                total = total
                    .checked_add(2 * c_out)?
                    .checked_add(next.checked_mul(c_out)?)?;
                next
            } else {
                c_out
            };
        }
        // final norm, classifier weight and bias
        let classes = u(self.num_classes);
        total
            .checked_add(2 * c)?
            .checked_add(classes.checked_mul(c)?)?
            .checked_add(classes)
    }

    /// Output channels of a transition fed with `m` channels: ⌊θ·m⌋.
    pub fn transition_channels(&self, m: usize) -> usize {
        // θ·m in f64 is exact for the θ used in practice (0.5); floor as the paper states.
        (self.compression * m as f64 + 1e-9).floor() as usize
    }

    /// Channels entering each block and leaving it: `(c_in, c_out)` per block.
    pub fn block_channels(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut c = self.init_features;
        for (b, &n) in self.block_config.iter().enumerate() {
            let c_out = c + n * self.growth_rate;
            out.push((c, c_out));
            c = if b + 1 < self.block_config.len() {
                self.transition_channels(c_out)
            } else {
                c_out
            };
        }
        out
    }

    /// Channels seen by the classifier.
    pub fn final_channels(&self) -> usize {
        self.block_channels().last().map(|b| b.1).unwrap_or(0)
    }

    /// The state-dict name of the final BN: torchvision's `norm5` for ImageNet models,
    /// `norm_final` for the CIFAR family (as in the PyTorch-made reference files).
    pub fn final_norm_name(&self) -> &'static str {
        match self.stem {
            Stem::Cifar => "features.norm_final",
            Stem::ImageNet => "features.norm5",
        }
    }

    /// Spatial size of each block's feature maps for an `input_size`² input.
    pub fn block_sizes(&self, input: usize) -> Vec<usize> {
        let mut s = match self.stem {
            Stem::Cifar => input,
            // conv 7×7 s2 p3, then max pool 3×3 s2 p1
            Stem::ImageNet => ((input + 6 - 7) / 2 + 1 + 2 - 3) / 2 + 1,
        };
        let mut out = Vec::new();
        for _ in 0..self.block_config.len() {
            out.push(s);
            s /= 2;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse() {
        let c = DenseNetConfig::from_name("densenet-bc-100-12").unwrap();
        assert_eq!(c.block_config, vec![16, 16, 16]);
        assert_eq!(c.init_features, 24);
        assert!(c.bottleneck);
        let c = DenseNetConfig::from_name("densenet-40-12").unwrap();
        assert_eq!(c.block_config, vec![12, 12, 12]);
        assert_eq!(c.init_features, 16);
        assert_eq!(c.compression, 1.0);
        let c = DenseNetConfig::from_name("densenet161").unwrap();
        assert_eq!((c.growth_rate, c.init_features), (48, 96));
        assert_eq!(c.block_sizes(224), vec![56, 28, 14, 7]);
    }

    #[test]
    fn invalid_configs_name_the_rule() {
        let e = DenseNetConfig::from_name("densenet-bc-101-12").unwrap_err();
        assert!(e.to_string().contains("divisible by 6"), "{e}");
        let e = DenseNetConfig::from_name("densenet-41-12").unwrap_err();
        assert!(e.to_string().contains("divisible by 3"), "{e}");
        let e = DenseNetConfig::from_name("densenet-40-0").unwrap_err();
        assert!(e.to_string().contains("growth rate"), "{e}");
        let e = DenseNetConfig::cifar(40, 12, true, 1.5).unwrap_err();
        assert!(e.to_string().contains("compression"), "{e}");
        let e = DenseNetConfig::cifar(40, 12, true, 0.0).unwrap_err();
        assert!(e.to_string().contains("compression"), "{e}");
        let e = DenseNetConfig::from_name("resnet50").unwrap_err();
        assert!(matches!(e, ConfigError::UnknownModel(_)));
    }

    #[test]
    fn reference_json_config() {
        let c = DenseNetConfig::from_json(
            r#"{"family":"cifar_densenet","depth":40,"growth_rate":12,"bottleneck":false,
            "compression":1.0,"bn_size":4,"drop_rate":0.0,"num_classes":10,"in_channels":3,
            "init_features":16,"bn_eps":1e-05,"bn_momentum":0.1}"#,
        )
        .unwrap();
        assert_eq!(c, DenseNetConfig::from_name("densenet-40-12").unwrap());
    }
}
