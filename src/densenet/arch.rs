//! The DenseNet's architecture: every layer of a [`DenseNetConfig`] with the offsets of its
//! tensors in the flat parameter and running-statistics buffers, named exactly as
//! torchvision's state dict and in its order. What the layers compute is in
//! [`super::dense_layer`], [`super::transition`], [`super::stem`] and [`super::head`].

use super::config::{DenseNetConfig, Stem};
use crate::nn::params::TensorTable;
use crate::nn::{BatchNorm, Conv};

/// One dense layer: BN-ReLU-Conv, or with bottleneck BN-ReLU-Conv1×1-BN-ReLU-Conv3×3.
#[derive(Clone, Debug)]
pub struct DenseLayer {
    /// Index of the layer in the whole network (for dropout masks).
    pub id: usize,
    /// Input channels m.
    pub c_in: usize,
    /// BN of the concatenated input (`norm1`).
    pub norm1: BatchNorm,
    /// First convolution: 1×1 to bn_size·k with bottleneck, else 3×3 to k (`conv1`).
    pub conv1: Conv,
    /// With bottleneck: `norm2` and the 3×3 `conv2`.
    pub bottleneck: Option<(BatchNorm, Conv)>,
    /// Dropout after each convolution.
    pub drop_rate: f32,
}

impl DenseLayer {
    /// Offset of this layer's first tensor in the parameter buffer: its tensors come
    /// after every earlier layer's and before every later layer's.
    pub fn first_param(&self) -> usize {
        let b = self.bottleneck.as_ref();
        let ends = [self.norm1.weight, self.conv1.weight];
        let rest = b.map(|(n, c)| n.weight.min(c.weight)).unwrap_or(usize::MAX);
        ends.into_iter().fold(rest, usize::min)
    }

    pub(crate) fn new(
        name: &str,
        id: usize,
        c_in: usize,
        cfg: &DenseNetConfig,
        p: &mut TensorTable,
        s: &mut TensorTable,
    ) -> Self {
        let k = cfg.growth_rate;
        let norm1 = BatchNorm::new(&format!("{name}.norm1"), c_in, p, s);
        let (conv1, bottleneck) = if cfg.bottleneck {
            let width = cfg.bn_size * k;
            let conv1 = Conv::new(&format!("{name}.conv1"), width, c_in, 1, 1, 0, p);
            let norm2 = BatchNorm::new(&format!("{name}.norm2"), width, p, s);
            let conv2 = Conv::new(&format!("{name}.conv2"), k, width, 3, 1, 1, p);
            (conv1, Some((norm2, conv2)))
        } else {
            (
                Conv::new(&format!("{name}.conv1"), k, c_in, 3, 1, 1, p),
                None,
            )
        };
        DenseLayer {
            id,
            c_in,
            norm1,
            conv1,
            bottleneck,
            drop_rate: cfg.drop_rate,
        }
    }

    /// Channels this layer appends (k).
    pub fn growth(&self) -> usize {
        self.bottleneck
            .as_ref()
            .map(|(_, c)| c.cout)
            .unwrap_or(self.conv1.cout)
    }

    /// Dropout site of this layer's convolution `which` (1 or 2).
    pub(crate) fn site(&self, which: u64) -> u64 {
        ((self.id as u64) << 2) | which
    }
}

/// BN-ReLU-Conv1×1-AvgPool2×2.
#[derive(Clone, Debug)]
pub struct Transition {
    /// Dropout site.
    pub site: u64,
    /// `norm`.
    pub norm: BatchNorm,
    /// `conv`: m → ⌊θ·m⌋.
    pub conv: Conv,
    /// Dropout after the convolution.
    pub drop_rate: f32,
}

impl Transition {
    pub(crate) fn new(
        name: &str,
        site: u64,
        c_in: usize,
        cfg: &DenseNetConfig,
        p: &mut TensorTable,
        s: &mut TensorTable,
    ) -> Self {
        let norm = BatchNorm::new(&format!("{name}.norm"), c_in, p, s);
        let cout = cfg.transition_channels(c_in);
        let conv = Conv::new(&format!("{name}.conv"), cout, c_in, 1, 1, 0, p);
        Transition {
            site,
            norm,
            conv,
            drop_rate: cfg.drop_rate,
        }
    }
}

/// One dense block and the transition that follows it (none after the last block).
#[derive(Clone, Debug)]
pub struct DenseBlock {
    /// Channels entering the block (k0).
    pub c_in: usize,
    /// Channels leaving it: k0 + n·k.
    pub c_out: usize,
    /// Spatial size (height = width) of its feature maps for the family's input size.
    pub size: usize,
    /// Its layers; layer ℓ reads channels `0..c_in + ℓ·k` and appends k.
    pub layers: Vec<DenseLayer>,
    /// BN-ReLU-Conv1×1-AvgPool to the next block.
    pub transition: Option<Transition>,
}

/// The whole network as a list of layers pointing into the flat buffers.
#[derive(Clone, Debug)]
pub struct Architecture {
    /// What it was built from.
    pub config: DenseNetConfig,
    /// Stem convolution (`features.conv0`).
    pub conv0: Conv,
    /// Stem batch norm (`features.norm0`, ImageNet stem only).
    pub norm0: Option<BatchNorm>,
    /// Dense blocks.
    pub blocks: Vec<DenseBlock>,
    /// Final batch norm (`features.norm_final` or `features.norm5`).
    pub norm_final: BatchNorm,
    /// Offset of `classifier.weight` `[classes, C]`; `classifier.bias` follows.
    pub classifier: usize,
    /// Trainable parameters, in state-dict order.
    pub params: TensorTable,
    /// BN running statistics, in state-dict order.
    pub stats: TensorTable,
}

impl Architecture {
    /// Lays out every tensor of `config` (torchvision's names and order).
    pub fn new(config: &DenseNetConfig) -> Self {
        let mut p = TensorTable::default();
        let mut s = TensorTable::default();
        let c0 = config.init_features;
        let (conv0, norm0) = match config.stem {
            Stem::Cifar => (
                Conv::new("features.conv0", c0, config.in_channels, 3, 1, 1, &mut p),
                None,
            ),
            Stem::ImageNet => {
                let conv = Conv::new("features.conv0", c0, config.in_channels, 7, 2, 3, &mut p);
                (
                    conv,
                    Some(BatchNorm::new("features.norm0", c0, &mut p, &mut s)),
                )
            }
        };
        let sizes = config.block_sizes(config.input_size);
        let k = config.growth_rate;
        let mut blocks = Vec::new();
        let mut id = 0;
        for (b, &(c_in, c_out)) in config.block_channels().iter().enumerate() {
            let mut layers = Vec::new();
            for i in 0..config.block_config[b] {
                let name = format!("features.denseblock{}.denselayer{}", b + 1, i + 1);
                layers.push(DenseLayer::new(
                    &name,
                    id,
                    c_in + i * k,
                    config,
                    &mut p,
                    &mut s,
                ));
                id += 1;
            }
            let transition = (b + 1 < config.block_config.len()).then(|| {
                let name = format!("features.transition{}", b + 1);
                Transition::new(
                    &name,
                    (1u64 << 40) | b as u64,
                    c_out,
                    config,
                    &mut p,
                    &mut s,
                )
            });
            blocks.push(DenseBlock {
                c_in,
                c_out,
                size: sizes[b],
                layers,
                transition,
            });
        }
        let cf = config.final_channels();
        let norm_final = BatchNorm::new(config.final_norm_name(), cf, &mut p, &mut s);
        let classifier = p.push("classifier.weight", &[config.num_classes, cf]);
        p.push("classifier.bias", &[config.num_classes]);
        Architecture {
            config: config.clone(),
            conv0,
            norm0,
            blocks,
            norm_final,
            classifier,
            params: p,
            stats: s,
        }
    }

    /// Number of trainable parameters (BN γ, β included; running statistics excluded).
    pub fn num_params(&self) -> usize {
        self.params.total()
    }

    /// Spatial size of the stem convolution's output.
    pub fn stem_conv_size(&self, input: usize) -> usize {
        self.conv0.shape(1, input).ho()
    }
}
