//! Per-stage description of a network: output shape, parameters, multiply-accumulates and
//! the connectivity of each block (the numbers of the paper's Table 1 and §3), in one
//! form for both families so that they can be read side by side. Each family fills it in
//! (`Family::summary`: `densenet/summary.rs`, `resnet/summary.rs`).

use serde::Serialize;

/// One stage: the stem, a dense block, a transition, a residual stage, or the classifier.
#[derive(Clone, Debug, Serialize)]
pub struct Stage {
    /// `stem`, `denseblock1`, `transition1`, …, `classifier` (ResNets: `layer1`, …).
    pub name: String,
    /// Output shape per image, `[C, H, W]` (`[classes, 1, 1]` for the classifier).
    pub output: [usize; 3],
    /// Trainable parameters of the stage.
    pub parameters: usize,
    /// Multiply-accumulates per image (convolutions and the linear layer).
    pub macs: usize,
    /// Dense blocks: number of layers; residual stages: number of units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
    /// Dense blocks: direct connections L(L+1)/2 (each layer to every later one, the
    /// block input counted as layer 0); residual stages: one shortcut per unit, L.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
}

/// The whole network's summary; `--json` prints this.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Format version of this JSON.
    pub version: u32,
    /// Model name.
    pub model: String,
    /// `densenet` or `preact_resnet`.
    pub family: String,
    /// Input shape per image `[C, H, W]`.
    pub input: [usize; 3],
    /// Classes.
    pub classes: usize,
    /// DenseNets: growth rate k.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth_rate: Option<usize>,
    /// Bottleneck layers (DenseNet-B) or bottleneck residual units.
    pub bottleneck: bool,
    /// DenseNets: compression θ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<f64>,
    /// Depth: convolutions and the linear layer on the longest path.
    pub depth: usize,
    /// Stages in order.
    pub stages: Vec<Stage>,
    /// Trainable parameters in all.
    pub parameters: usize,
    /// Multiply-accumulates per image in all.
    pub macs: usize,
}

impl Stage {
    /// A stage with its output shape, parameters and multiply-accumulates; the layers and
    /// connections of a block are left for a block to set.
    pub fn new(
        name: impl Into<String>,
        output: [usize; 3],
        parameters: usize,
        macs: usize,
    ) -> Self {
        Stage {
            name: name.into(),
            output,
            parameters,
            macs,
            layers: None,
            connections: None,
        }
    }

    /// The classifier: the final BN-ReLU, the global average pool and the linear layer
    /// from `features` channels to `classes` outputs, with `parameters` in all.
    pub fn classifier(classes: usize, features: usize, parameters: usize) -> Self {
        Stage::new(
            "classifier",
            [classes, 1, 1],
            parameters,
            features * classes,
        )
    }
}

impl Summary {
    /// The summary of a network of `depth` made of `stages`, which its totals add up:
    /// without bottlenecks, growth rate or compression (a DenseNet sets them after).
    pub fn new(
        model: &str,
        family: &str,
        input: [usize; 3],
        classes: usize,
        depth: usize,
        stages: Vec<Stage>,
    ) -> Self {
        Summary {
            version: 1,
            model: model.into(),
            family: family.into(),
            input,
            classes,
            growth_rate: None,
            bottleneck: false,
            compression: None,
            depth,
            parameters: stages.iter().map(|s| s.parameters).sum(),
            macs: stages.iter().map(|s| s.macs).sum(),
            stages,
        }
    }
}
