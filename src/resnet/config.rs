//! What a pre-activation ResNet is, before any memory is allocated (He, Zhang, Ren, Sun,
//! *Identity Mappings in Deep Residual Networks*, ECCV 2016, the CIFAR family of §4 and
//! Table 2/3).
//!
//! A [`PreActResNetConfig`] names the residual unit (basic: two 3×3 convolutions, or
//! bottleneck: 1×1 → 3×3 → 1×1 with expansion 4), the units per stage, the stage widths and
//! the head. Presets: `preresnet-110` (basic, 18 units per stage), `preresnet-164` and
//! `preresnet-1001` (bottleneck, 18 and 111 units per stage), and the general forms
//! `preresnet-L`, `preresnet-basic-L` and `preresnet-bottleneck-L`.

use crate::nn::{limits, ConfigError};
use serde::{Deserialize, Serialize};

/// Which residual unit a network is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// BN-ReLU-Conv3×3 → BN-ReLU-Conv3×3; a stage of width w outputs w channels.
    Basic,
    /// BN-ReLU-Conv1×1(w) → BN-ReLU-Conv3×3(w) → BN-ReLU-Conv1×1(4w); outputs 4w channels.
    Bottleneck,
}

impl BlockKind {
    /// Output channels of a unit of stage width `w` (the expansion: 1 or 4).
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
    /// Convolutions on the residual path of one unit.
    pub fn convs(self) -> usize {
        match self {
            BlockKind::Basic => 2,
            BlockKind::Bottleneck => 3,
        }
    }
}

/// A pre-activation ResNet for CIFAR-sized inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreActResNetConfig {
    /// The preset name this came from (or "custom").
    pub name: String,
    /// Residual unit.
    pub block: BlockKind,
    /// Input channels (3 for RGB, 1 for grey images).
    pub in_channels: usize,
    /// Channels of the stem's 3×3 convolution (16 in the paper).
    pub stem_channels: usize,
    /// Width w of each stage (16, 32, 64 in the paper); a bottleneck stage outputs 4w.
    pub widths: Vec<usize>,
    /// Residual units in each stage (n, n, n: depth = 6n+2 basic, 9n+2 bottleneck).
    pub units: Vec<usize>,
    /// Classifier outputs.
    pub num_classes: usize,
    /// Spatial input size (height = width), 32 for CIFAR.
    pub input_size: usize,
}

impl PreActResNetConfig {
    /// The CIFAR family of the paper: stem of 16 channels, three stages of widths
    /// 16/32/64 with `n` units each, stride 2 at the first unit of stages 2 and 3.
    pub fn cifar(block: BlockKind, depth: usize) -> Result<Self, ConfigError> {
        let per = 3 * block.convs();
        if depth < 2 + per || !(depth - 2).is_multiple_of(per) {
            return Err(ConfigError::Rule(format!(
                "depth {depth} is invalid for a pre-activation ResNet with {} units: depth-2 \
                 must be a positive multiple of {per} (3 stages × {} convolutions per unit), \
                 e.g. {}",
                kind_name(block),
                block.convs(),
                match block {
                    BlockKind::Basic => "20, 56, 110",
                    BlockKind::Bottleneck => "164, 1001",
                }
            )));
        }
        let n = (depth - 2) / per;
        let cfg = PreActResNetConfig {
            // the short name where it means this unit (see `from_name`)
            name: if block == default_block(depth) {
                format!("preresnet-{depth}")
            } else {
                format!("preresnet-{}-{depth}", kind_name(block))
            },
            block,
            in_channels: 3,
            stem_channels: 16,
            widths: vec![16, 32, 64],
            units: vec![n; 3],
            num_classes: 10,
            input_size: 32,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses `preresnet-L` (the paper's choice of unit: bottleneck from L = 164 on, basic
    /// below), `preresnet-basic-L` or `preresnet-bottleneck-L`. `None` when `name` is not
    /// of this family at all.
    pub fn from_name(name: &str) -> Option<Result<Self, ConfigError>> {
        let lower = name.trim().to_ascii_lowercase();
        let rest = lower.strip_prefix("preresnet-")?;
        let unknown = || ConfigError::UnknownModel(name.to_string());
        let (kind, depth) = match rest.split_once('-') {
            Some(("basic", d)) => (Some(BlockKind::Basic), d),
            Some(("bottleneck", d)) => (Some(BlockKind::Bottleneck), d),
            Some(_) => return Some(Err(unknown())),
            None => (None, rest),
        };
        let Ok(depth) = depth.parse::<usize>() else {
            return Some(Err(unknown()));
        };
        Some(Self::cifar(kind.unwrap_or(default_block(depth)), depth))
    }

    /// Checks every rule; the error names the one that failed. Every configuration goes
    /// through here before anything is allocated for it, whatever its source; the bounds
    /// of [`limits`] come first, so that the later arithmetic cannot overflow.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rule = ConfigError::check;
        let range = ConfigError::in_range;
        rule(
            !self.units.is_empty() && self.units.len() == self.widths.len(),
            format!(
                "a pre-activation ResNet needs one width per stage: units {:?}, widths {:?}",
                self.units, self.widths
            ),
        )?;
        rule(
            self.units.len() <= limits::MAX_STAGES,
            format!(
                "units (residual units per stage) may list at most {} stages, got {}",
                limits::MAX_STAGES,
                self.units.len()
            ),
        )?;
        rule(
            self.units.iter().all(|&n| n > 0),
            format!("every stage needs at least one unit, got {:?}", self.units),
        )?;
        for &n in &self.units {
            range(
                "units",
                "residual units per stage",
                n,
                limits::MAX_LAYERS_PER_STAGE,
            )?;
        }
        rule(
            self.widths.iter().all(|&w| w > 0) && self.stem_channels > 0,
            "stage widths and the stem width must be at least 1".into(),
        )?;
        for &w in &self.widths {
            range("widths", "stage width", w, limits::MAX_WIDTH)?;
        }
        range(
            "stem_channels",
            "channels of the stem",
            self.stem_channels,
            limits::MAX_WIDTH,
        )?;
        ConfigError::check_io(self.num_classes, self.in_channels, self.input_size)?;
        let min_size = 1 << (self.units.len() - 1);
        let stages = self.units.len();
        ConfigError::check_input_size(self.input_size, min_size, stages, "stages")?;
        ConfigError::check_params(self.num_params_checked())
    }

    /// Trainable parameters of this configuration (the length of the network's parameter
    /// buffer), computed without building anything; `None` if the count overflows. Call
    /// after the per-field bounds of [`validate`](Self::validate) hold (it loops over the
    /// units).
    pub fn num_params_checked(&self) -> Option<u128> {
        let u = |v: usize| v as u128;
        let mut c = u(self.stem_channels);
        let mut total = c.checked_mul(u(self.in_channels))?.checked_mul(9)?;
        for (si, (&n, &w)) in self.units.iter().zip(&self.widths).enumerate() {
            let w = u(w);
            for i in 0..n {
                let stride_changes = si > 0 && i == 0;
                // (c_in, c_out, kernel) of each BN-ReLU-conv, as `ResidualUnit::new`
                let specs = match self.block {
                    BlockKind::Bottleneck => vec![(c, w, 1), (w, w, 3), (w, 4 * w, 1)],
                    BlockKind::Basic => vec![(c, w, 3), (w, w, 3)],
                };
                for &(cin, cout, k) in &specs {
                    total = total
                        .checked_add(2 * cin)?
                        .checked_add(cout.checked_mul(cin)?.checked_mul(k * k)?)?;
                }
                let c_out = specs.last().map_or(c, |s| s.1);
                if stride_changes || c != c_out {
                    total = total.checked_add(c_out.checked_mul(c)?)?;
                }
                c = c_out;
            }
        }
        let classes = u(self.num_classes);
        total
            .checked_add(2 * c)?
            .checked_add(classes.checked_mul(c)?)?
            .checked_add(classes)
    }

    /// Depth as the paper counts it: convolutions on the longest path plus the classifier
    /// (stem + units × convolutions per unit + 1).
    pub fn depth(&self) -> usize {
        2 + self.units.iter().sum::<usize>() * self.block.convs()
    }

    /// Output channels of stage `s`.
    pub fn stage_channels(&self, s: usize) -> usize {
        self.widths[s] * self.block.expansion()
    }

    /// Channels seen by the classifier.
    pub fn final_channels(&self) -> usize {
        self.stage_channels(self.widths.len() - 1)
    }

    /// Spatial size of each stage's output for an `input`² image: the first stage keeps
    /// it, every later one halves it with a stride-2 convolution (⌈s/2⌉, padding 1).
    pub fn stage_sizes(&self, input: usize) -> Vec<usize> {
        let mut s = input;
        (0..self.units.len())
            .map(|i| {
                if i > 0 {
                    s = s.div_ceil(2);
                }
                s
            })
            .collect()
    }
}

/// The unit `preresnet-L` means: He et al. use basic units up to 110 layers (110 = 6·18+2)
/// and bottleneck units for 164 and 1001 (9·18+2, 9·111+2).
fn default_block(depth: usize) -> BlockKind {
    if depth >= 164 {
        BlockKind::Bottleneck
    } else {
        BlockKind::Basic
    }
}

fn kind_name(k: BlockKind) -> &'static str {
    match k {
        BlockKind::Basic => "basic",
        BlockKind::Bottleneck => "bottleneck",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse() {
        let c = PreActResNetConfig::from_name("preresnet-110")
            .unwrap()
            .unwrap();
        assert_eq!((c.block, c.units.clone()), (BlockKind::Basic, vec![18; 3]));
        assert_eq!(c.depth(), 110);
        let c = PreActResNetConfig::from_name("preresnet-164")
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.block, c.units[0], c.final_channels()),
            (BlockKind::Bottleneck, 18, 256)
        );
        let c = PreActResNetConfig::from_name("PreResNet-1001")
            .unwrap()
            .unwrap();
        assert_eq!((c.units[0], c.depth()), (111, 1001));
        let c = PreActResNetConfig::from_name("preresnet-bottleneck-20")
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.units[0], c.name.as_str()),
            (2, "preresnet-bottleneck-20")
        );
        // names round-trip: the short form where it is the default unit
        let c = PreActResNetConfig::from_name("preresnet-basic-20")
            .unwrap()
            .unwrap();
        assert_eq!((c.units[0], c.name.as_str()), (3, "preresnet-20"));
        let c = PreActResNetConfig::from_name("preresnet-basic-164")
            .unwrap()
            .unwrap();
        assert_eq!((c.units[0], c.name.as_str()), (27, "preresnet-basic-164"));
        assert_eq!(c.stage_sizes(32), vec![32, 16, 8]);
        assert_eq!(c.stage_sizes(7), vec![7, 4, 2]);
        assert!(PreActResNetConfig::from_name("densenet-40-12").is_none());
    }

    #[test]
    fn invalid_depths_name_the_rule() {
        let e = PreActResNetConfig::from_name("preresnet-100")
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("multiple of 6"), "{e}");
        let e = PreActResNetConfig::from_name("preresnet-165")
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("multiple of 9"), "{e}");
        let e = PreActResNetConfig::from_name("preresnet-wide-20")
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, ConfigError::UnknownModel(_)));
        let e = PreActResNetConfig::from_name("preresnet-x")
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, ConfigError::UnknownModel(_)));
    }
}
