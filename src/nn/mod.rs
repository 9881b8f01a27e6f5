//! What both model families share: the parameter table ([`params`]), the workspace
//! allocation and its named regions ([`arena`]), batch-norm and
//! convolution handles ([`layers`]), batch statistics ([`stats`]), the memory mode, the
//! options of a training pass, the probe that exposes activations, and configuration
//! errors.

pub mod arena;
pub mod layers;
pub mod params;
pub mod stats;

pub use layers::{BatchNorm, Conv};
pub use params::{TensorEntry, TensorTable};
pub use stats::ChannelStats;

use arena::{Buf, Carver};

use crate::ops::cnhw_to_nchw;
use crate::util::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Where intermediate results of dense layers live during training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MemoryMode {
    /// Shared scratch storage, recomputed in the backward pass: memory linear in depth.
    #[default]
    Efficient,
    /// Every layer keeps its own BN-ReLU and bottleneck outputs: memory quadratic in depth.
    Naive,
}

/// `efficient` or `naive`, as the command line spells them.
impl std::fmt::Display for MemoryMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MemoryMode::Efficient => "efficient",
            MemoryMode::Naive => "naive",
        })
    }
}

impl std::str::FromStr for MemoryMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "efficient" => Ok(MemoryMode::Efficient),
            "naive" => Ok(MemoryMode::Naive),
            _ => Err(format!(
                "unknown memory mode '{s}' (expected efficient or naive)"
            )),
        }
    }
}

/// Why a configuration is invalid.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// The model name is not a known preset.
    #[error(
        "unknown model '{0}': expected densenet-L-k, densenet-bc-L-k (e.g. densenet-bc-100-12), \
         densenet121, densenet161, densenet169, densenet201, densenet264, or a pre-activation \
         ResNet: preresnet-110, preresnet-164, preresnet-1001 (preresnet-L, preresnet-basic-L, \
         preresnet-bottleneck-L)"
    )]
    UnknownModel(String),
    /// The depth does not fit the CIFAR block formula.
    #[error(
        "depth L={depth} is invalid for {kind}: L-4 must be divisible by {div} \
         ({div} = 3 blocks × {per_layer} conv per layer) and give at least one layer per block"
    )]
    BadDepth {
        /// Requested depth.
        depth: usize,
        /// "a plain DenseNet" or "a DenseNet with bottleneck".
        kind: &'static str,
        /// 3 or 6.
        div: usize,
        /// 1 or 2.
        per_layer: usize,
    },
    /// Any other violated rule.
    #[error("invalid configuration: {0}")]
    Rule(String),
}

impl ConfigError {
    /// `Ok` if the rule holds, else [`ConfigError::Rule`] with `msg`.
    pub fn check(ok: bool, msg: String) -> Result<(), ConfigError> {
        if ok {
            Ok(())
        } else {
            Err(ConfigError::Rule(msg))
        }
    }

    /// `Ok` if `value` is in `1..=max`, else an error naming the field (`field`, as the
    /// configuration's JSON spells it, and `what` it means) and the allowed range.
    pub fn in_range(field: &str, what: &str, value: usize, max: usize) -> Result<(), ConfigError> {
        Self::check(
            (1..=max).contains(&value),
            format!("{field} ({what}) must be in 1..={max}, got {value}"),
        )
    }

    /// The rules every family shares for what a model reads and writes: classes, input
    /// channels and input size, each at least 1 and within [`limits`].
    pub fn check_io(
        num_classes: usize,
        in_channels: usize,
        input_size: usize,
    ) -> Result<(), ConfigError> {
        let (rule, range) = (ConfigError::check, ConfigError::in_range);
        rule(
            num_classes > 0,
            "number of classes must be at least 1".into(),
        )?;
        range(
            "num_classes",
            "classifier outputs",
            num_classes,
            limits::MAX_CLASSES,
        )?;
        rule(in_channels > 0, "input channels must be at least 1".into())?;
        range(
            "in_channels",
            "input channels",
            in_channels,
            limits::MAX_IN_CHANNELS,
        )?;
        range(
            "input_size",
            "input height and width",
            input_size,
            limits::MAX_INPUT_SIZE,
        )
    }

    /// `Ok` if `input_size` is at least `min_size`, what the network's `parts` (its dense
    /// blocks or residual stages, as `what` names them) need to keep a map of at least one
    /// pixel; else an error naming all three.
    pub fn check_input_size(
        input_size: usize,
        min_size: usize,
        parts: usize,
        what: &str,
    ) -> Result<(), ConfigError> {
        Self::check(
            input_size >= min_size,
            format!(
                "input size {input_size} is too small for {parts} {what} \
                 (needs at least {min_size})"
            ),
        )
    }

    /// `Ok` if a model of `params` parameters (`None`: more than `u128` holds) is within
    /// [`limits::MAX_PARAMS`].
    pub fn check_params(params: Option<u128>) -> Result<(), ConfigError> {
        let max = limits::MAX_PARAMS;
        match params {
            Some(n) if n <= max as u128 => Ok(()),
            n => Err(ConfigError::Rule(format!(
                "the model would have {} parameters, more than the limit of {max} (2^30: \
                 {} GiB for the weights alone, as much again for gradients and momentum)",
                n.map_or("over 2^128".to_string(), |n| n.to_string()),
                (max * 4) >> 30
            ))),
        }
    }
}

/// Upper bounds every model configuration is held to, from any source (preset name,
/// flags, JSON, a checkpoint's metadata), so that what a configuration asks to allocate
/// stays within what a machine can have. Far above every network of the papers
/// (densenet264: 33M parameters, 4 blocks of at most 64 layers; preresnet-1001: 10M).
pub mod limits {
    /// Trainable parameters (4 GiB of f32).
    pub const MAX_PARAMS: usize = 1 << 30;
    /// Input height and width, pixels.
    pub const MAX_INPUT_SIZE: usize = 4096;
    /// Classifier outputs.
    pub const MAX_CLASSES: usize = 1_000_000;
    /// Input channels.
    pub const MAX_IN_CHANNELS: usize = 1024;
    /// Any width: growth rate, stem features, stage widths.
    pub const MAX_WIDTH: usize = 65_536;
    /// DenseNet bottleneck factor bn_size.
    pub const MAX_BN_SIZE: usize = 64;
    /// Dense blocks, or residual stages.
    pub const MAX_STAGES: usize = 8;
    /// Layers of one dense block, or units of one stage.
    pub const MAX_LAYERS_PER_STAGE: usize = 10_000;
    /// Images per batch, in training and inference alike (the `--batch-size` bound).
    pub const MAX_BATCH: usize = 65_536;
}

/// Called by a backward pass with `(offset, &grads[offset..])` each time the parameter
/// gradients from `offset` to the end of the flat buffer are final. Layers are stored in
/// forward order and run backward in reverse, so the final part grows from the end; a
/// data-parallel run starts summing it over processes while the backward pass goes on.
pub type GradsReady<'a> = &'a dyn Fn(usize, &[f32]);

/// Options of one training-mode pass.
#[derive(Clone, Copy, Default)]
pub struct TrainOptions<'a> {
    /// Seed for this step's dropout masks (ignored when the drop rate is 0).
    pub dropout_seed: u64,
    /// Also compute the gradient with respect to the input.
    pub input_grad: bool,
    /// The loss is the mean over this many images, of which this pass holds a share: a
    /// data-parallel step's whole batch, so that each process's gradient is its part of
    /// the one-process gradient and the parts simply add up. `None`: this pass's images.
    pub batch_total: Option<usize>,
    /// Told as parameter gradients become final, see [`GradsReady`].
    pub grads_ready: Option<GradsReady<'a>>,
}

impl std::fmt::Debug for TrainOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainOptions")
            .field("dropout_seed", &self.dropout_seed)
            .field("input_grad", &self.input_grad)
            .field("batch_total", &self.batch_total)
            .field("grads_ready", &self.grads_ready.is_some())
            .finish()
    }
}

impl TrainOptions<'_> {
    /// Tells [`TrainOptions::grads_ready`], if any, that `grads[offset..]` is final.
    pub fn grads_final(&self, offset: usize, grads: &[f32]) {
        if let Some(f) = self.grads_ready {
            f(offset, &grads[offset..]);
        }
    }
}

/// What a forward pass may be asked to expose, for checking a port layer by layer.
pub type Probe<'a> = &'a mut dyn FnMut(&str, Tensor);

/// Panics unless `input` is `[n, in_channels, size, size]` with `1 ≤ n ≤ batch` (the
/// workspace's capacity): a caller's bug, not user input.
pub(crate) fn check_input(input: &[f32], n: usize, batch: usize, in_channels: usize, size: usize) {
    assert!(
        n >= 1 && n <= batch,
        "batch {n} exceeds the workspace's {batch}"
    );
    assert_eq!(
        input.len(),
        n * in_channels * size * size,
        "input must be [N, C, H, W] = [{n}, {in_channels}, {size}, {size}]"
    );
}

/// Hands a channel-major activation to the probe as an NCHW tensor.
pub(crate) fn emit(
    probe: &mut Option<Probe>,
    name: impl std::fmt::Display,
    x: &[f32],
    c: usize,
    n: usize,
    size: usize,
) {
    if let Some(probe) = probe.as_mut() {
        let hw = size * size;
        let mut out = vec![0.0; c * n * hw];
        cnhw_to_nchw(&mut out, &x[..c * n * hw], n, c, hw);
        probe(&name.to_string(), Tensor::new(vec![n, c, size, size], out));
    }
}

/// The classifier head's buffers, the same in both families: pooled features `[C][N]`,
/// logits `[N][classes]` and (training only) their gradients.
#[derive(Debug, Default)]
pub struct HeadMemory {
    /// Pooled features `[C][N]`.
    pub pooled: Buf<f32>,
    /// Their gradient (training).
    pub dpooled: Buf<f32>,
    /// Logits `[N][classes]`.
    pub logits: Buf<f32>,
    /// Gradient of the mean loss with respect to the logits (training).
    pub dlogits: Buf<f32>,
}

impl HeadMemory {
    /// Softmax cross-entropy of the logits of `labels.len()` images against `labels`:
    /// returns their mean loss and writes `dlogits`, the gradient of the mean over
    /// `mean_over` images (see [`TrainOptions::batch_total`]).
    pub fn loss(&mut self, labels: &[u32], classes: usize, mean_over: usize) -> f32 {
        let n = labels.len();
        crate::ops::loss::softmax_cross_entropy(
            &mut self.dlogits[..n * classes],
            &self.logits[..n * classes],
            labels,
            classes,
            mean_over,
        )
    }

    /// Takes the head's regions (`head.*`) for `n` images, `features` pooled channels and
    /// `classes` outputs; the gradients only for a training workspace.
    pub fn carve(
        c: &mut Carver,
        features: usize,
        classes: usize,
        n: usize,
        training: bool,
    ) -> Self {
        let train = |len: usize| if training { len } else { 0 };
        HeadMemory {
            pooled: c.take("head.pooled", features * n),
            dpooled: c.take("head.dpooled", train(features * n)),
            logits: c.take("head.logits", n * classes),
            dlogits: c.take("head.dlogits", train(n * classes)),
        }
    }
}
