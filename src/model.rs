//! The model families the engine trains, behind one interface.
//!
//! - [`ModelConfig`]: a DenseNet ([`DenseNetConfig`]) or a pre-activation ResNet
//!   ([`PreActResNetConfig`]), parsed from a preset name. It serialises a DenseNet as the
//!   bare `DenseNetConfig` object that checkpoints have always stored under `config`, and a
//!   ResNet as its object plus `"family": "preact_resnet"`, so old checkpoints still load.
//! - [`Model`]: what training, evaluation, checkpoints and the command line need from a
//!   network: workspaces, the passes, the flat buffers and their named tables. Implemented
//!   by the DenseNet [`DenseNet`] and the [`PreActResNet`].
//! - [`AnyModel`]: either one, chosen at run time from a [`ModelConfig`]; it implements
//!   [`Model`] by forwarding, with [`AnyWorkspace`] as its workspace.
//! - [`Frozen`]: a model borrowed for inference, its kernels' packed weights kept from
//!   one pass to the next.

use crate::densenet::{DenseNet, DenseNetConfig, DenseNetWorkspace};
use crate::kernels::prepack::Packs;
use crate::nn::params::TensorTable;
use crate::nn::{ConfigError, MemoryMode, Probe, TrainOptions};
use crate::resnet::{PreActResNet, PreActResNetConfig, ResNetWorkspace};
use crate::util::tensor::Tensor;
use crate::weights::{canonical_name, NamedTensor, WeightsError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

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
    /// `preresnet-164`, …) or a JSON object: a DenseNet in the reference files' format, or a
    /// serialised [`PreActResNetConfig`] with `"family": "preact_resnet"`.
    pub fn from_name(name: &str) -> Result<Self, ConfigError> {
        if let Some(r) = PreActResNetConfig::from_name(name) {
            return r.map(ModelConfig::PreActResNet);
        }
        let t = name.trim();
        if t.starts_with('{') {
            let json_err =
                |e: serde_json::Error| ConfigError::Rule(format!("model config JSON: {e}"));
            let v: serde_json::Value = serde_json::from_str(t).map_err(json_err)?;
            if v.get("family").and_then(|f| f.as_str()) == Some(PREACT_RESNET) {
                let cfg: ModelConfig = serde_json::from_value(v).map_err(json_err)?;
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

    /// The memory plan's region table (name, offset, bytes) of this model's workspace for
    /// batches of up to `batch` images: what a workspace allocates, in one piece.
    pub fn memory_regions(
        &self,
        batch: usize,
        mode: MemoryMode,
        training: bool,
    ) -> Vec<crate::nn::arena::Region> {
        match self {
            ModelConfig::DenseNet(c) => {
                let arch = crate::densenet::Architecture::new(c);
                crate::densenet::DenseNetPlan::new(&arch, batch, mode, training).regions
            }
            ModelConfig::PreActResNet(c) => {
                let arch = crate::resnet::Architecture::new(c);
                crate::resnet::ResNetPlan::new(&arch, batch, mode, training).regions
            }
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

/// The flat buffers of a model, borrowed mutably together.
pub struct Buffers<'a> {
    /// Trainable parameters.
    pub params: &'a mut [f32],
    /// Their gradients.
    pub grads: &'a mut [f32],
    /// BN running statistics.
    pub stats: &'a mut [f32],
}

/// What a model's workspace exposes to the code that drives it.
pub trait ModelWorkspace {
    /// Largest batch the workspace holds.
    fn batch(&self) -> usize;
    /// Logits `[N][classes]` of the last forward pass (first `N·classes` entries).
    fn logits(&self) -> &[f32];
    /// Pooled features `[C][N]` of the last forward pass, the classifier's input (first
    /// `C·N` entries, channel-major).
    fn pooled(&self) -> &[f32];
    /// Input gradient (NCHW) of the last backward pass that asked for it.
    fn input_grad(&self) -> &[f32];
    /// Bytes of activation memory its plan allocated.
    fn activation_bytes(&self) -> usize;
}

/// A network the engine can train: forward and backward passes over a workspace, and its
/// parameters, gradients and running statistics in flat buffers with PyTorch names.
pub trait Model {
    /// Its activation memory.
    type Workspace: ModelWorkspace;

    /// Its configuration.
    fn model_config(&self) -> ModelConfig;
    /// A workspace for batches of up to `batch` images (`training`: with the buffers a
    /// backward pass needs).
    fn workspace(&self, batch: usize, mode: MemoryMode, training: bool) -> Self::Workspace;
    /// Evaluation-mode forward pass of `n` NCHW images; returns the logits `[n][classes]`.
    fn forward_eval(
        &mut self,
        ws: &mut Self::Workspace,
        input: &[f32],
        n: usize,
        probe: Option<Probe>,
    ) -> Vec<f32>;
    /// Training-mode forward pass; returns the mean cross-entropy loss.
    fn forward_train(
        &mut self,
        ws: &mut Self::Workspace,
        input: &[f32],
        labels: &[u32],
        opts: &TrainOptions,
    ) -> f32;
    /// Backward pass of the last training forward pass; accumulates into the gradients.
    fn backward(&mut self, ws: &mut Self::Workspace, opts: &TrainOptions);
    /// Training forward pass of the classifier alone, for fine-tuning with frozen
    /// features: everything before the classifier's linear layer runs in evaluation mode
    /// (running statistics, not updated; no dropout). Returns the mean cross-entropy loss
    /// and leaves what [`backward_classifier`](Self::backward_classifier) needs.
    fn forward_train_frozen(
        &mut self,
        ws: &mut Self::Workspace,
        input: &[f32],
        labels: &[u32],
    ) -> f32;
    /// Backward pass of the last training forward pass (either kind) through the
    /// classifier alone: accumulates the classifier's weight and bias gradients and
    /// touches no other gradient.
    fn backward_classifier(&mut self, ws: &mut Self::Workspace);
    /// The classifier's weight and bias in the parameter buffer (the last tensors).
    fn classifier_range(&self) -> std::ops::Range<usize>;
    /// Names, shapes and offsets of the parameters.
    fn param_table(&self) -> &TensorTable;
    /// Names, shapes and offsets of the running statistics.
    fn stats_table(&self) -> &TensorTable;
    /// The parameters.
    fn params(&self) -> &[f32];
    /// Their gradients.
    fn grads(&self) -> &[f32];
    /// The running statistics.
    fn stats(&self) -> &[f32];
    /// All three buffers, mutably.
    fn buffers_mut(&mut self) -> Buffers<'_>;

    /// The preset name.
    fn name(&self) -> String {
        self.model_config().name().to_string()
    }
    /// Trainable parameters (BN γ and β included, running statistics excluded).
    fn num_params(&self) -> usize {
        self.params().len()
    }
    /// Sets every gradient to zero.
    fn zero_grad(&mut self) {
        crate::util::par::fill(self.buffers_mut().grads, 0.0);
    }
    /// Every parameter and running statistic as `(state-dict name, tensor)`.
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let params = self
            .param_table()
            .entries()
            .iter()
            .map(|e| (e, self.params()));
        let stats = self
            .stats_table()
            .entries()
            .iter()
            .map(|e| (e, self.stats()));
        params
            .chain(stats)
            .map(|(e, buf)| {
                (
                    e.name.clone(),
                    Tensor::new(e.shape.clone(), buf[e.range()].to_vec()),
                )
            })
            .collect()
    }
    /// Loads named tensors: every parameter and running statistic must be present (under
    /// its name after [`canonical_name`]) with the right shape; `num_batches_tracked` and
    /// `optim.*` entries are ignored. On any mismatch nothing is changed and every missing,
    /// unexpected or wrongly shaped tensor is reported.
    fn load_tensors(&mut self, tensors: &[NamedTensor], source: &str) -> Result<(), WeightsError> {
        let name = self.name();
        let plan = match_tensors(
            self.param_table(),
            self.stats_table(),
            tensors,
            source,
            &name,
        )?;
        self.buffers_mut().load(plan);
        Ok(())
    }
}

/// A model held still for inference: the 3×3 kernels' packed weights are made on the
/// first pass and kept for the next ones, as ONNX Runtime packs a model's weights once
/// per session (see [`crate::kernels::prepack`]: a densenet121 pass at batch 1 takes
/// 0.952 of the time it takes packing per call, on a 2-core Zen 4).
///
/// It holds the model's exclusive borrow, so nothing can change the weights the packs
/// were made from while they live; drop it to train or load weights again.
///
/// ```
/// use densenet::model::{AnyModel, Frozen, Model, ModelConfig};
/// use densenet::nn::MemoryMode;
///
/// let mut net = AnyModel::new(&ModelConfig::from_name("densenet-bc-100-12")?, 0);
/// let mut ws = net.workspace(2, MemoryMode::Efficient, false);
/// let images = vec![0.5; 2 * 3 * 32 * 32];
/// let plain = net.forward_eval(&mut ws, &images, 2, None);
/// let mut frozen = Frozen::new(&mut net);
/// for _ in 0..2 {
///     assert_eq!(frozen.forward_eval(&mut ws, &images, 2, None), plain);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Frozen<'a, M: Model> {
    model: &'a mut M,
    packs: Packs,
}

impl<'a, M: Model> Frozen<'a, M> {
    /// Holds `model` still; nothing is packed before the first pass.
    pub fn new(model: &'a mut M) -> Self {
        Frozen {
            model,
            packs: Packs::new(),
        }
    }

    /// [`Model::forward_eval`], with the packs in scope.
    pub fn forward_eval(
        &mut self,
        ws: &mut M::Workspace,
        input: &[f32],
        n: usize,
        probe: Option<Probe>,
    ) -> Vec<f32> {
        let model = &mut *self.model;
        self.packs.scope(|| model.forward_eval(ws, input, n, probe))
    }

    /// The model, to read.
    pub fn model(&self) -> &M {
        self.model
    }

    /// The packed weights kept so far.
    pub fn packs(&self) -> &Packs {
        &self.packs
    }
}

/// Where each of a model's tensors comes from: `(range, is_param, data)`, the range in the
/// parameter buffer (`is_param`) or the statistics buffer.
pub(crate) type LoadPlan<'a> = Vec<(std::ops::Range<usize>, bool, &'a [f32])>;

impl Buffers<'_> {
    /// Copies each tensor of `plan` into its range of the parameters (`is_param`) or the
    /// running statistics.
    pub(crate) fn load(self, plan: LoadPlan) {
        for (range, is_param, data) in plan {
            let dst = if is_param {
                &mut self.params[range]
            } else {
                &mut self.stats[range]
            };
            dst.copy_from_slice(data);
        }
    }
}

/// Matches named tensors against a model's tables for [`Model::load_tensors`]; on any
/// mismatch, every problem in one [`WeightsError::Mismatch`].
fn match_tensors<'a>(
    params: &TensorTable,
    stats: &TensorTable,
    tensors: &'a [NamedTensor],
    source: &str,
    model: &str,
) -> Result<LoadPlan<'a>, WeightsError> {
    let mut by_name: HashMap<String, &NamedTensor> = HashMap::new();
    for t in tensors {
        // integer bookkeeping, and optimizer state stored beside the weights in a
        // training checkpoint (`optim.momentum`)
        if t.name.ends_with("num_batches_tracked") || t.name.starts_with("optim.") {
            continue;
        }
        by_name.insert(canonical_name(&t.name), t);
    }
    let (mut missing, mut wrong) = (Vec::new(), Vec::new());
    let mut plan = Vec::new();
    for (table, is_param) in [(params, true), (stats, false)] {
        for e in table.entries() {
            match by_name.remove(&e.name) {
                None => missing.push(format!("missing: {} {:?}", e.name, e.shape)),
                Some(t) if t.tensor.shape != e.shape => wrong.push(format!(
                    "wrong shape: {} is {:?} in the file, the model expects {:?}",
                    e.name, t.tensor.shape, e.shape
                )),
                Some(t) => plan.push((e.range(), is_param, t.tensor.data.as_slice())),
            }
        }
    }
    let mut unexpected: Vec<_> = by_name.into_iter().collect();
    unexpected.sort_by(|a, b| a.0.cmp(&b.0));
    let unexpected: Vec<String> = unexpected
        .into_iter()
        .map(|(name, t)| format!("unexpected: {name} {:?}", t.tensor.shape))
        .collect();
    if !(missing.is_empty() && wrong.is_empty() && unexpected.is_empty()) {
        // the counts, then the first few of each kind: a model of another size differs in
        // hundreds of tensors, and a screenful of names hides the point
        const SHOWN: usize = 2;
        let mut problems = vec![format!(
            "{} of the wrong shape, {} missing, {} unexpected",
            wrong.len(),
            missing.len(),
            unexpected.len()
        )];
        for (kind, lines) in [
            ("of the wrong shape", wrong),
            ("missing", missing),
            ("unexpected", unexpected),
        ] {
            let more = lines.len().saturating_sub(SHOWN);
            problems.extend(lines.into_iter().take(SHOWN));
            if more > 0 {
                problems.push(format!("… and {more} more {kind}"));
            }
        }
        return Err(WeightsError::Mismatch {
            source_name: source.to_string(),
            model: model.to_string(),
            problems,
        });
    }
    Ok(plan)
}

/// Implements [`ModelWorkspace`] for workspaces with the same fields: `plan` (with `batch`
/// and `activation_bytes`), `logits` and `input_grad`.
macro_rules! model_workspace {
    ($($ty:ty),*) => {$(
        impl ModelWorkspace for $ty {
            fn batch(&self) -> usize {
                self.plan.batch
            }
            fn logits(&self) -> &[f32] {
                &self.head.logits
            }
            fn pooled(&self) -> &[f32] {
                &self.head.pooled
            }
            fn input_grad(&self) -> &[f32] {
                &self.input_grad
            }
            fn activation_bytes(&self) -> usize {
                self.plan.activation_bytes()
            }
        }
    )*};
}

model_workspace!(DenseNetWorkspace, ResNetWorkspace);

/// Implements [`Model`] for a network type by forwarding to its inherent methods (which
/// keep working without the trait in scope).
macro_rules! forward_model {
    ($ty:ty, $ws:ty, $variant:ident) => {
        impl Model for $ty {
            type Workspace = $ws;
            fn model_config(&self) -> ModelConfig {
                ModelConfig::$variant(self.arch.config.clone())
            }
            fn name(&self) -> String {
                self.arch.config.name.clone()
            }
            fn workspace(&self, batch: usize, mode: MemoryMode, training: bool) -> $ws {
                <$ty>::workspace(self, batch, mode, training)
            }
            fn forward_eval(
                &mut self,
                ws: &mut $ws,
                input: &[f32],
                n: usize,
                probe: Option<Probe>,
            ) -> Vec<f32> {
                <$ty>::forward_eval(self, ws, input, n, probe)
            }
            fn forward_train(
                &mut self,
                ws: &mut $ws,
                input: &[f32],
                labels: &[u32],
                opts: &TrainOptions,
            ) -> f32 {
                <$ty>::forward_train(self, ws, input, labels, opts)
            }
            fn backward(&mut self, ws: &mut $ws, opts: &TrainOptions) {
                <$ty>::backward(self, ws, opts)
            }
            fn forward_train_frozen(&mut self, ws: &mut $ws, input: &[f32], labels: &[u32]) -> f32 {
                <$ty>::forward_train_frozen(self, ws, input, labels)
            }
            fn backward_classifier(&mut self, ws: &mut $ws) {
                <$ty>::backward_classifier(self, ws)
            }
            fn classifier_range(&self) -> std::ops::Range<usize> {
                <$ty>::classifier_range(self)
            }
            fn param_table(&self) -> &TensorTable {
                &self.arch.params
            }
            fn stats_table(&self) -> &TensorTable {
                &self.arch.stats
            }
            fn params(&self) -> &[f32] {
                &self.params
            }
            fn grads(&self) -> &[f32] {
                &self.grads
            }
            fn stats(&self) -> &[f32] {
                &self.stats
            }
            fn buffers_mut(&mut self) -> Buffers<'_> {
                Buffers {
                    params: &mut self.params,
                    grads: &mut self.grads,
                    stats: &mut self.stats,
                }
            }
        }
    };
}

forward_model!(DenseNet, DenseNetWorkspace, DenseNet);
forward_model!(PreActResNet, ResNetWorkspace, PreActResNet);

/// A network of either family, chosen at run time.
pub enum AnyModel {
    /// A DenseNet.
    DenseNet(DenseNet),
    /// A pre-activation ResNet.
    PreActResNet(PreActResNet),
}

/// The workspace of an [`AnyModel`]: the variant must match the model's.
pub enum AnyWorkspace {
    /// A DenseNet's.
    DenseNet(DenseNetWorkspace),
    /// A pre-activation ResNet's.
    PreActResNet(ResNetWorkspace),
}

impl AnyModel {
    /// A freshly initialised network of `config`, after checking it against every rule
    /// of its family ([`ModelConfig::validate`]): what callers with a configuration from
    /// outside use.
    pub fn try_new(config: &ModelConfig, seed: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self::new(config, seed))
    }

    /// A freshly initialised network of `config`, which must be valid (see
    /// [`try_new`](Self::try_new) and each family's `new`).
    pub fn new(config: &ModelConfig, seed: u64) -> Self {
        match config {
            ModelConfig::DenseNet(c) => AnyModel::DenseNet(DenseNet::new(c, seed)),
            ModelConfig::PreActResNet(c) => AnyModel::PreActResNet(PreActResNet::new(c, seed)),
        }
    }

    /// The DenseNet, if it is one.
    pub fn as_densenet(&self) -> Option<&DenseNet> {
        match self {
            AnyModel::DenseNet(n) => Some(n),
            AnyModel::PreActResNet(_) => None,
        }
    }
}

/// Runs `$body` with `$m` bound to the inner network.
macro_rules! dispatch {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            AnyModel::DenseNet($m) => $body,
            AnyModel::PreActResNet($m) => $body,
        }
    };
}

/// Runs `$body` with the inner network and its workspace; a workspace of the other
/// family is a programming error.
macro_rules! dispatch_ws {
    ($self:expr, $ws:expr, $m:ident, $w:ident => $body:expr) => {
        match ($self, $ws) {
            (AnyModel::DenseNet($m), AnyWorkspace::DenseNet($w)) => $body,
            (AnyModel::PreActResNet($m), AnyWorkspace::PreActResNet($w)) => $body,
            _ => panic!("a workspace of another model family"),
        }
    };
}

impl ModelWorkspace for AnyWorkspace {
    fn batch(&self) -> usize {
        match self {
            AnyWorkspace::DenseNet(w) => w.batch(),
            AnyWorkspace::PreActResNet(w) => w.batch(),
        }
    }
    fn logits(&self) -> &[f32] {
        match self {
            AnyWorkspace::DenseNet(w) => w.logits(),
            AnyWorkspace::PreActResNet(w) => w.logits(),
        }
    }
    fn pooled(&self) -> &[f32] {
        match self {
            AnyWorkspace::DenseNet(w) => w.pooled(),
            AnyWorkspace::PreActResNet(w) => w.pooled(),
        }
    }
    fn input_grad(&self) -> &[f32] {
        match self {
            AnyWorkspace::DenseNet(w) => ModelWorkspace::input_grad(w),
            AnyWorkspace::PreActResNet(w) => ModelWorkspace::input_grad(w),
        }
    }
    fn activation_bytes(&self) -> usize {
        match self {
            AnyWorkspace::DenseNet(w) => w.activation_bytes(),
            AnyWorkspace::PreActResNet(w) => w.activation_bytes(),
        }
    }
}

impl Model for AnyModel {
    type Workspace = AnyWorkspace;
    fn model_config(&self) -> ModelConfig {
        dispatch!(self, m => m.model_config())
    }
    fn name(&self) -> String {
        dispatch!(self, m => Model::name(m))
    }
    fn workspace(&self, batch: usize, mode: MemoryMode, training: bool) -> AnyWorkspace {
        match self {
            AnyModel::DenseNet(m) => AnyWorkspace::DenseNet(m.workspace(batch, mode, training)),
            AnyModel::PreActResNet(m) => {
                AnyWorkspace::PreActResNet(m.workspace(batch, mode, training))
            }
        }
    }
    fn forward_eval(
        &mut self,
        ws: &mut AnyWorkspace,
        input: &[f32],
        n: usize,
        probe: Option<Probe>,
    ) -> Vec<f32> {
        dispatch_ws!(self, ws, m, w => m.forward_eval(w, input, n, probe))
    }
    fn forward_train(
        &mut self,
        ws: &mut AnyWorkspace,
        input: &[f32],
        labels: &[u32],
        opts: &TrainOptions,
    ) -> f32 {
        dispatch_ws!(self, ws, m, w => m.forward_train(w, input, labels, opts))
    }
    fn backward(&mut self, ws: &mut AnyWorkspace, opts: &TrainOptions) {
        dispatch_ws!(self, ws, m, w => m.backward(w, opts))
    }
    fn forward_train_frozen(
        &mut self,
        ws: &mut AnyWorkspace,
        input: &[f32],
        labels: &[u32],
    ) -> f32 {
        dispatch_ws!(self, ws, m, w => m.forward_train_frozen(w, input, labels))
    }
    fn backward_classifier(&mut self, ws: &mut AnyWorkspace) {
        dispatch_ws!(self, ws, m, w => m.backward_classifier(w))
    }
    fn classifier_range(&self) -> std::ops::Range<usize> {
        dispatch!(self, m => m.classifier_range())
    }
    fn param_table(&self) -> &TensorTable {
        dispatch!(self, m => &m.arch.params)
    }
    fn stats_table(&self) -> &TensorTable {
        dispatch!(self, m => &m.arch.stats)
    }
    fn params(&self) -> &[f32] {
        dispatch!(self, m => &m.params)
    }
    fn grads(&self) -> &[f32] {
        dispatch!(self, m => &m.grads)
    }
    fn stats(&self) -> &[f32] {
        dispatch!(self, m => &m.stats)
    }
    fn buffers_mut(&mut self) -> Buffers<'_> {
        dispatch!(self, m => Buffers {
            params: &mut m.params,
            grads: &mut m.grads,
            stats: &mut m.stats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frozen model's passes are bit for bit the plain ones (the kernels pack the same
    /// weights the same way, once instead of per call), at batch 2 and 1 and on the
    /// second pass, which reuses the packs; and a model frozen again after its weights
    /// changed packs the new ones (packs kept across freezes by address would not).
    /// densenet121 on 64×64 images: its 3×3s at 16×16 and 8×8 and its stem take the
    /// broadcast and Winograd routes, which pack.
    #[test]
    fn frozen_passes_are_the_plain_ones_and_follow_new_weights() {
        let mut cfg = ModelConfig::from_name("densenet121").unwrap();
        cfg.set_io(10, 3, 64);
        let mut net = AnyModel::new(&cfg, 1);
        let n = 2;
        let mut ws = net.workspace(n, MemoryMode::Efficient, false);
        let x: Vec<f32> = (0..n * 3 * 64 * 64)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let one = &x[..3 * 64 * 64];
        let mut passes = |net: &mut AnyModel| {
            let plain = (
                net.forward_eval(&mut ws, &x, n, None),
                net.forward_eval(&mut ws, one, 1, None),
            );
            let mut frozen = Frozen::new(net);
            for pass in 0..2 {
                let got = (
                    frozen.forward_eval(&mut ws, &x, n, None),
                    frozen.forward_eval(&mut ws, one, 1, None),
                );
                assert!(
                    got == plain,
                    "frozen pass {pass} differs from the plain one"
                );
            }
            if crate::kernels::active().direct.is_some() {
                assert!(!frozen.packs().is_empty(), "nothing was packed");
            } else {
                crate::kernels::testutil::say("SKIPPED: the portable kernels pack nothing to keep");
            }
            plain
        };
        let before = passes(&mut net);
        net.buffers_mut().params.iter_mut().for_each(|v| *v *= 0.75);
        let after = passes(&mut net);
        assert!(after.0 != before.0, "the new weights changed nothing");
    }

    #[test]
    fn densenet_configs_serialise_bare_and_old_ones_load() {
        let d = DenseNetConfig::from_name("densenet-bc-40-12").unwrap();
        let m = ModelConfig::from(d.clone());
        // exactly what checkpoints stored before the ResNet existed
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            serde_json::to_string(&d).unwrap()
        );
        let back: ModelConfig = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn resnet_configs_round_trip_with_their_family() {
        let m = ModelConfig::from_name("preresnet-164").unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(r#""family":"preact_resnet""#), "{json}");
        let back: ModelConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert_eq!(ModelConfig::from_name(&json).unwrap(), m);
        let e = serde_json::from_str::<ModelConfig>(r#"{"family":"vgg"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown model family 'vgg'"), "{e}");
    }

    /// The parameter count the validator checks is the one the network gets.
    #[test]
    fn parameter_counts_without_building_match_the_architecture() {
        for name in [
            "densenet-40-12",
            "densenet-bc-100-12",
            "densenet-c-40-12",
            "densenet-b-40-12",
            "densenet121",
            "densenet161",
            "preresnet-110",
            "preresnet-164",
            "preresnet-bottleneck-20",
        ] {
            let cfg = ModelConfig::from_name(name).unwrap();
            let built = match &cfg {
                ModelConfig::DenseNet(c) => crate::densenet::Architecture::new(c).params.total(),
                ModelConfig::PreActResNet(c) => crate::resnet::Architecture::new(c).params.total(),
            };
            let counted = match &cfg {
                ModelConfig::DenseNet(c) => c.num_params_checked(),
                ModelConfig::PreActResNet(c) => c.num_params_checked(),
            };
            assert_eq!(counted, Some(built as u128), "{name}");
        }
    }

    /// Stored settings of either family, read as a checkpoint's or a run's configuration
    /// is, fail on their bound with a message naming the field and the limit, before
    /// anything is allocated (these would ask for terabytes, or overflow).
    #[test]
    fn stored_configurations_are_bounded_before_anything_is_built() {
        let dense =
            serde_json::to_value(ModelConfig::from_name("densenet-bc-40-12").unwrap()).unwrap();
        let resnet =
            serde_json::to_value(ModelConfig::from_name("preresnet-110").unwrap()).unwrap();
        let huge = serde_json::json!(1_000_000_000_000u64);
        let cases = [
            (
                &dense,
                "growth_rate",
                huge.clone(),
                "growth_rate (growth rate k) must be in 1..=65536",
            ),
            (
                &dense,
                "block_config",
                serde_json::json!([6, 1_000_000_000_000u64, 6]),
                "block_config (layers per dense block) must be in 1..=10000",
            ),
            (
                &dense,
                "block_config",
                serde_json::json!(vec![1; 70]),
                "at most 8 blocks, got 70",
            ),
            (
                &dense,
                "num_classes",
                huge.clone(),
                "num_classes (classifier outputs) must be in 1..=1000000",
            ),
            (
                &dense,
                "input_size",
                huge.clone(),
                "input_size (input height and width) must be in 1..=4096",
            ),
            (
                &dense,
                "bn_size",
                huge.clone(),
                "bn_size (bottleneck width factor) must be in 1..=64",
            ),
            (
                &dense,
                "init_features",
                huge.clone(),
                "init_features (channels of the stem) must be in 1..=65536",
            ),
            (
                &dense,
                "in_channels",
                huge.clone(),
                "in_channels (input channels) must be in 1..=1024",
            ),
            (
                &dense,
                "compression",
                serde_json::json!(1e308),
                "compression θ must be in (0, 1], got 1e308",
            ),
            (
                &dense,
                "growth_rate",
                serde_json::json!(20_000),
                "parameters, more than the limit of 1073741824",
            ),
            (
                &resnet,
                "units",
                serde_json::json!([18, 1_000_000_000u64, 18]),
                "units (residual units per stage) must be in 1..=10000",
            ),
            (
                &resnet,
                "widths",
                serde_json::json!([16, 1_000_000_000u64, 64]),
                "widths (stage width) must be in 1..=65536",
            ),
            (
                &resnet,
                "num_classes",
                huge.clone(),
                "num_classes (classifier outputs) must be in 1..=1000000",
            ),
            (
                &resnet,
                "input_size",
                huge.clone(),
                "input_size (input height and width) must be in 1..=4096",
            ),
            (
                &resnet,
                "stem_channels",
                huge.clone(),
                "stem_channels (channels of the stem) must be in 1..=65536",
            ),
            (
                &resnet,
                "widths",
                serde_json::json!([16, 32, 40_000]),
                "parameters, more than the limit",
            ),
        ];
        for (base, field, value, want) in cases {
            let mut v = base.clone();
            v[field] = value;
            let e = serde_json::from_value::<ModelConfig>(v.clone())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{field}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
            // the same rules when the JSON comes as --model
            if base == &resnet {
                let e = ModelConfig::from_name(&v.to_string())
                    .unwrap_err()
                    .to_string();
                assert!(e.contains(want), "--model {field}: {e}");
            }
        }
        // the reference files' JSON format and preset names meet the same bounds
        let e = ModelConfig::from_name(
            r#"{"family":"imagenet_densenet","growth_rate":1000000000000,"block_config":[1,1]}"#,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("growth_rate (growth rate k) must be in 1..=65536"),
            "{e}"
        );
        let e = ModelConfig::from_name(
            r#"{"family":"cifar_densenet","depth":40,"growth_rate":12,"num_classes":10000000}"#,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("must be in 1..=1000000, got 10000000"),
            "{e}"
        );
        let e = ModelConfig::from_name("densenet-bc-1000000000000-12").unwrap_err();
        assert!(e.to_string().contains("layers per dense block"), "{e}");
        let e = ModelConfig::from_name("preresnet-2000000000000").unwrap_err();
        assert!(e.to_string().contains("residual units per stage"), "{e}");
        let e = AnyModel::try_new(
            &ModelConfig::DenseNet(DenseNetConfig {
                input_size: 1 << 40,
                ..DenseNetConfig::from_name("densenet-bc-40-12").unwrap()
            }),
            0,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("input_size"), "{e}");
    }

    #[test]
    fn names_of_both_families_parse() {
        assert_eq!(
            ModelConfig::from_name("preresnet-110").unwrap().family(),
            PREACT_RESNET
        );
        assert_eq!(
            ModelConfig::from_name("densenet121").unwrap().family(),
            "densenet"
        );
        let e = ModelConfig::from_name("resnet50").unwrap_err();
        assert!(e.to_string().contains("preresnet-164"), "{e}");
    }
}
