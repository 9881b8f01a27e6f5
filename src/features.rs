//! Feature extraction: per image, the globally pooled features or the output of one
//! dense block, for retrieval, clustering or a linear probe on another task.
//!
//! - [`Layer::Pool`]: the final BN-ReLU, globally average-pooled: the classifier's input
//!   (timm's `pre_logits`), `[C]` per image. Both families.
//! - [`Layer::Block`]`(b)`: dense block b's output after its last concatenation, before
//!   the transition (torchvision's `features.denseblock{b}`), `[C, H, W]` per image.
//!   DenseNets only.
//! - [`Layer::Stage`]`(s)`: stage s's output of a pre-activation ResNet (torchvision's
//!   `layer{s}`: the last unit's sum, before the final BN), `[C, H, W]` per image.
//!   ResNets only: a ResNet has no dense block, and a DenseNet's stages are its blocks.
//!
//! Blocks and stages are read through the forward pass's probe, which copies every
//! block's output (the same work a `forward --probe` does); pooled features come from the
//! workspace without a copy of the maps.

use crate::model::{Model, ModelConfig, Workspace};
use crate::util::tensor::Tensor;
use std::fmt;
use std::str::FromStr;

/// Which activations to extract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// Globally pooled features after the final BN-ReLU (the classifier's input).
    Pool,
    /// Dense block `b` (from 1) of a DenseNet.
    Block(usize),
    /// Stage `s` (from 1) of a pre-activation ResNet.
    Stage(usize),
}

/// A layer name that is not `pool`, `blockN` or `stageN`, or one the model lacks.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    /// Not a layer name at all.
    #[error(
        "unknown layer '{0}': expected pool, blockN (DenseNets) or stageN (pre-activation ResNets)"
    )]
    Unknown(String),
    /// A layer the model does not have.
    #[error("{model} has no layer {layer}: it has {available}")]
    Missing {
        /// The model's name.
        model: String,
        /// The layer asked for.
        layer: Layer,
        /// The layers it has, e.g. `pool, block1 … block3`.
        available: String,
    },
}

impl FromStr for Layer {
    type Err = FeatureError;
    fn from_str(s: &str) -> Result<Self, FeatureError> {
        let unknown = || FeatureError::Unknown(s.to_string());
        if s == "pool" {
            return Ok(Layer::Pool);
        }
        let number = |rest: &str| match rest.parse::<usize>() {
            Ok(i) if i >= 1 && !rest.starts_with('+') => Ok(i),
            _ => Err(unknown()),
        };
        if let Some(rest) = s.strip_prefix("block") {
            return Ok(Layer::Block(number(rest)?));
        }
        if let Some(rest) = s.strip_prefix("stage") {
            return Ok(Layer::Stage(number(rest)?));
        }
        Err(unknown())
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layer::Pool => write!(f, "pool"),
            Layer::Block(b) => write!(f, "block{b}"),
            Layer::Stage(s) => write!(f, "stage{s}"),
        }
    }
}

/// The per-image shape of `layer`'s features in model `cfg`: `[C]` for [`Layer::Pool`],
/// `[C, H, W]` for a block or stage; an error if the model has no such layer.
pub fn feature_shape(cfg: &ModelConfig, layer: Layer) -> Result<Vec<usize>, FeatureError> {
    let arch = cfg.architecture();
    let stages = arch.stages();
    let own = |word: &str| arch.stage_word() == word;
    let i = match layer {
        Layer::Pool => {
            let (c, _) = *stages.last().expect("at least one block or stage");
            return Ok(vec![c]);
        }
        Layer::Block(i) if own("block") => i,
        Layer::Stage(i) if own("stage") => i,
        _ => 0, // the other family's word: never a valid index
    };
    match stages.get(i.wrapping_sub(1)) {
        Some(&(c, s)) if i >= 1 => Ok(vec![c, s, s]),
        _ => Err(FeatureError::Missing {
            model: cfg.name().to_string(),
            layer,
            available: layer_names(cfg),
        }),
    }
}

/// The layers model `cfg` offers, for messages and help: `pool, block1 … block3`.
pub fn layer_names(cfg: &ModelConfig) -> String {
    let arch = cfg.architecture();
    let (word, n) = (arch.stage_word(), arch.stages().len());
    match n {
        1 => format!("pool, {word}1"),
        2 => format!("pool, {word}1, {word}2"),
        _ => format!("pool, {word}1 … {word}{n}"),
    }
}

/// Runs `n` NCHW images through `net` in evaluation mode and returns `layer`'s features,
/// image after image: `[n][D]` with D the product of [`feature_shape`] (a block's maps
/// flattened as C, H, W).
pub fn extract(
    net: &mut dyn Model,
    ws: &mut Workspace,
    input: &[f32],
    n: usize,
    layer: Layer,
) -> Result<Vec<f32>, FeatureError> {
    let cfg = net.model_config();
    let shape = feature_shape(&cfg, layer)?;
    let probe_name = match layer {
        Layer::Pool => {
            net.forward_eval(ws, input, n, None);
            // the workspace keeps them channel-major, [C][N]
            let c = shape[0];
            let pooled = &ws.pooled()[..c * n];
            let mut out = vec![0f32; n * c];
            for (ci, row) in pooled.chunks_exact(n).enumerate() {
                for (ni, &v) in row.iter().enumerate() {
                    out[ni * c + ci] = v;
                }
            }
            return Ok(out);
        }
        Layer::Block(b) => format!("features.denseblock{b}"),
        Layer::Stage(s) => format!("layer{s}"),
    };
    let mut found: Option<Tensor> = None;
    let mut probe = |name: &str, t: Tensor| {
        if name == probe_name {
            found = Some(t);
        }
    };
    net.forward_eval(ws, input, n, Some(&mut probe));
    let t = found.expect("the forward pass emits every block and stage");
    debug_assert_eq!(t.shape[1..], shape[..]);
    Ok(t.data)
}
