//! The pre-activation ResNet's architecture: its stages and units with the offsets of
//! their tensors in the flat parameter and running-statistics buffers, named as the
//! PyTorch definition's state dict.

use super::block::ResidualUnit;
use super::config::{BlockKind, PreActResNetConfig};
use crate::nn::params::TensorTable;
use crate::nn::{BatchNorm, Conv};

/// One stage: units at one spatial size.
#[derive(Clone, Debug)]
pub struct Stage {
    /// Output channels (the stage width × the unit's expansion).
    pub channels: usize,
    /// Output spatial size for the family's input size.
    pub size: usize,
    /// Its units.
    pub units: Vec<ResidualUnit>,
}

/// The whole network as a list of units pointing into the flat buffers.
#[derive(Clone, Debug)]
pub struct Architecture {
    /// What it was built from.
    pub config: PreActResNetConfig,
    /// Stem convolution (`conv1`).
    pub conv1: Conv,
    /// Stages (`layer1` …).
    pub stages: Vec<Stage>,
    /// Final batch norm (`bn`).
    pub norm: BatchNorm,
    /// Offset of `fc.weight` `[classes, C]`; `fc.bias` follows.
    pub fc: usize,
    /// Trainable parameters, in state-dict order.
    pub params: TensorTable,
    /// BN running statistics, in state-dict order.
    pub stats: TensorTable,
}

impl Architecture {
    /// Lays out every tensor of `config`.
    pub fn new(config: &PreActResNetConfig) -> Self {
        let mut p = TensorTable::default();
        let mut s = TensorTable::default();
        let c0 = config.stem_channels;
        let conv1 = Conv::new("conv1", c0, config.in_channels, 3, 1, 1, &mut p);
        let bottleneck = config.block == BlockKind::Bottleneck;
        let sizes = config.stage_sizes(config.input_size);
        let (mut c, mut size) = (c0, config.input_size);
        let mut stages = Vec::new();
        for (si, (&n, &width)) in config.units.iter().zip(&config.widths).enumerate() {
            let mut units = Vec::new();
            for i in 0..n {
                let stride = if si > 0 && i == 0 { 2 } else { 1 };
                let name = format!("layer{}.{i}", si + 1);
                let unit =
                    ResidualUnit::new(&name, bottleneck, c, width, size, stride, &mut p, &mut s);
                (c, size) = (unit.c_out, unit.size_out);
                units.push(unit);
            }
            debug_assert_eq!(size, sizes[si]);
            stages.push(Stage {
                channels: c,
                size,
                units,
            });
        }
        let norm = BatchNorm::new("bn", c, &mut p, &mut s);
        let fc = p.push("fc.weight", &[config.num_classes, c]);
        p.push("fc.bias", &[config.num_classes]);
        Architecture {
            config: config.clone(),
            conv1,
            stages,
            norm,
            fc,
            params: p,
            stats: s,
        }
    }

    /// Every unit, in order.
    pub fn units(&self) -> impl Iterator<Item = &ResidualUnit> {
        self.stages.iter().flat_map(|s| s.units.iter())
    }

    /// Number of trainable parameters (BN γ, β included; running statistics excluded).
    pub fn num_params(&self) -> usize {
        self.params.total()
    }

    /// The most channels any BN or stream buffer has (sizes the per-channel scratch).
    pub fn widest_channels(&self) -> usize {
        self.units()
            .map(|u| u.c_in.max(u.c_out))
            .max()
            .unwrap_or(0)
            .max(self.config.final_channels())
    }
}
