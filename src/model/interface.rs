//! The [`Model`] trait and its workspace: what every family implements. Below the
//! families in the layering (they import this file, not `crate::model`, whose
//! [`AnyModel`](super::AnyModel) builds them).

use super::config::ModelConfig;
use crate::nn::arena::Buf;
use crate::nn::params::TensorTable;
use crate::nn::{check_input, HeadMemory, MemoryMode, Probe, TrainOptions};
use crate::ops::route::Routes;
use crate::util::rng::Rng;
use crate::util::tensor::Tensor;
use crate::weights::{canonical_name, NamedTensor, WeightsError};
use std::any::Any;
use std::collections::HashMap;

/// The flat buffers of a model, borrowed mutably together.
pub struct Buffers<'a> {
    /// Trainable parameters.
    pub params: &'a mut [f32],
    /// Their gradients.
    pub grads: &'a mut [f32],
    /// BN running statistics.
    pub stats: &'a mut [f32],
}

/// What every family's workspace holds beside its own buffers: what the code that drives
/// a model reads of it through [`ModelWorkspace`].
#[derive(Debug)]
pub struct WorkspaceCore {
    /// Largest batch the workspace holds.
    pub batch: usize,
    /// It holds what a backward pass needs.
    pub training: bool,
    /// Bytes of activation memory its plan allocated.
    pub activation_bytes: usize,
    /// Input gradient (NCHW after a backward pass that asked for it).
    pub input_grad: Buf<f32>,
    /// The classifier's memory: pooled features, logits and their gradients.
    pub head: HeadMemory,
    /// The routes of its convolutions for the batch size and mode of its last pass (the
    /// plan's before any; see `Routes::for_pass`).
    pub routes: Routes,
}

/// What a model's workspace exposes to the code that drives it: its [`WorkspaceCore`].
pub trait ModelWorkspace: Any + Send {
    /// What every workspace holds.
    fn core(&self) -> &WorkspaceCore;
    /// The same, mutably.
    fn core_mut(&mut self) -> &mut WorkspaceCore;
    /// Itself, for [`own_workspace`].
    fn as_any_mut(&mut self) -> &mut dyn Any;

    /// Largest batch the workspace holds.
    fn batch(&self) -> usize {
        self.core().batch
    }
    /// It holds what a backward pass needs.
    fn training(&self) -> bool {
        self.core().training
    }
    /// The classifier's memory: pooled features, logits and their gradients.
    fn head(&self) -> &HeadMemory {
        &self.core().head
    }
    /// The same, mutably.
    fn head_mut(&mut self) -> &mut HeadMemory {
        &mut self.core_mut().head
    }
    /// Input gradient (NCHW) of the last backward pass that asked for it.
    fn input_grad(&self) -> &[f32] {
        &self.core().input_grad
    }
    /// Bytes of activation memory its plan allocated.
    fn activation_bytes(&self) -> usize {
        self.core().activation_bytes
    }
    /// The routes of its convolutions for the batch size and mode of its last pass (the
    /// plan's before any).
    fn routes(&self) -> &Routes {
        &self.core().routes
    }

    /// Logits `[N][classes]` of the last forward pass (first `N·classes` entries).
    fn logits(&self) -> &[f32] {
        &self.head().logits
    }
    /// Pooled features `[C][N]` of the last forward pass, the classifier's input (first
    /// `C·N` entries, channel-major).
    fn pooled(&self) -> &[f32] {
        &self.head().pooled
    }
}

/// What one forward pass runs on, and how.
#[derive(Clone, Copy, Debug)]
pub struct Pass<'a> {
    /// `n` images, NCHW.
    pub input: &'a [f32],
    /// Images.
    pub n: usize,
    /// Training mode: batch statistics, running statistics updated, dropout.
    pub training: bool,
    /// What the dropout masks are drawn from.
    pub dropout_seed: u64,
}

impl<'a> Pass<'a> {
    /// An evaluation-mode pass of `n` images.
    pub fn eval(input: &'a [f32], n: usize) -> Self {
        Pass {
            input,
            n,
            training: false,
            dropout_seed: 0,
        }
    }
}

/// A workspace of any family, as [`Model::workspace`] makes it.
pub type Workspace = Box<dyn ModelWorkspace>;

/// The family's own workspace inside `ws`: a workspace made by another family's model is
/// a programming error.
pub fn own_workspace<W: ModelWorkspace>(ws: &mut Workspace) -> &mut W {
    ws.as_any_mut()
        .downcast_mut::<W>()
        .expect("a workspace made by another model family")
}

/// A network the engine can train: forward and backward passes over a workspace, and its
/// parameters, gradients and running statistics in flat buffers with PyTorch names.
pub trait Model: Send {
    /// Its configuration.
    fn model_config(&self) -> ModelConfig;
    /// Classifier outputs, input channels and input size.
    fn io(&self) -> (usize, usize, usize);
    /// A workspace for batches of up to `batch` images (`training`: with the buffers a
    /// backward pass needs).
    fn workspace(&self, batch: usize, mode: MemoryMode, training: bool) -> Workspace;
    /// The family's forward pass of `pass.n` images (checked) into `ws`, in training mode
    /// (batch statistics, running statistics updated once, dropout) or evaluation mode;
    /// `probe` receives intermediate activations (NCHW) under PyTorch's module names. The
    /// logits are left in the workspace's head.
    fn forward(&mut self, ws: &mut Workspace, pass: Pass<'_>, probe: &mut Option<Probe>);
    /// Backward pass of the last training forward pass: **accumulates** every parameter's
    /// gradient (see [`zero_grad`](Self::zero_grad)) and, if asked, writes the input
    /// gradient.
    fn backward(&mut self, ws: &mut Workspace, opts: &TrainOptions);
    /// Backward pass of the last training forward pass (either kind) through the
    /// classifier alone: accumulates the classifier's weight and bias gradients and
    /// touches no other gradient.
    fn backward_classifier(&mut self, ws: &mut Workspace);
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
    /// Itself, to reach what only one family has (the DenseNet's feature-reuse heat map).
    fn as_any(&self) -> &dyn Any;

    /// Evaluation-mode forward pass (BN with running statistics) of `n` images in NCHW;
    /// returns the logits `[n][classes]`. `probe` receives intermediate activations
    /// (NCHW) under PyTorch's module names.
    fn forward_eval(
        &mut self,
        ws: &mut Workspace,
        input: &[f32],
        n: usize,
        mut probe: Option<Probe>,
    ) -> Vec<f32> {
        let (classes, c, s) = self.io();
        check_input(input, n, ws.batch(), c, s);
        self.forward(ws, Pass::eval(input, n), &mut probe);
        ws.logits()[..n * classes].to_vec()
    }
    /// Training-mode forward pass: batch statistics, running statistics updated once,
    /// dropout active. Returns the mean cross-entropy loss (over
    /// [`TrainOptions::batch_total`] images when given); logits stay in the workspace.
    fn forward_train(
        &mut self,
        ws: &mut Workspace,
        input: &[f32],
        labels: &[u32],
        opts: &TrainOptions,
    ) -> f32 {
        let n = labels.len();
        let (classes, c, s) = self.io();
        check_input(input, n, ws.batch(), c, s);
        assert!(ws.training(), "forward_train needs a training workspace");
        let pass = Pass {
            training: true,
            dropout_seed: opts.dropout_seed,
            ..Pass::eval(input, n)
        };
        self.forward(ws, pass, &mut None);
        ws.head_mut()
            .loss(labels, classes, opts.batch_total.unwrap_or(n))
    }
    /// Training forward pass of the classifier alone, for fine-tuning with frozen
    /// features: everything before the classifier's linear layer runs in evaluation mode
    /// (running statistics, not updated; no dropout). Returns the mean cross-entropy loss
    /// and leaves what [`backward_classifier`](Self::backward_classifier) needs.
    fn forward_train_frozen(&mut self, ws: &mut Workspace, input: &[f32], labels: &[u32]) -> f32 {
        let n = labels.len();
        let (classes, c, s) = self.io();
        check_input(input, n, ws.batch(), c, s);
        assert!(
            ws.training(),
            "forward_train_frozen needs a training workspace"
        );
        self.forward(ws, Pass::eval(input, n), &mut None);
        ws.head_mut().loss(labels, classes, n)
    }
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

/// A model family's architecture: its layers, and where their tensors live in the flat
/// buffers, which it runs the family's passes over. [`Net`] owns the buffers and makes
/// any family a [`Model`]; a new family implements this (see
/// [`crate::densenet::Architecture`], [`crate::resnet::Architecture`]).
pub trait Family: Send + 'static {
    /// The configuration it was built from.
    fn model_config(&self) -> ModelConfig;
    /// Classifier outputs, input channels and input size.
    fn io(&self) -> (usize, usize, usize);
    /// A workspace of this family for batches of up to `batch` images.
    fn workspace(&self, batch: usize, mode: MemoryMode, training: bool) -> Workspace;
    /// [`Model::forward`] over these buffers (it reads the parameters and updates the
    /// running statistics).
    fn forward(&self, b: Buffers, ws: &mut Workspace, pass: Pass, probe: &mut Option<Probe>);
    /// [`Model::backward`] over these buffers.
    fn backward(&self, params: &[f32], grads: &mut [f32], ws: &mut Workspace, opts: &TrainOptions);
    /// [`Model::backward_classifier`] over these buffers.
    fn backward_classifier(&self, params: &[f32], grads: &mut [f32], ws: &mut Workspace);
    /// [`Model::classifier_range`].
    fn classifier_range(&self) -> std::ops::Range<usize>;
    /// Names, shapes and offsets of the parameters.
    fn param_table(&self) -> &TensorTable;
    /// Names, shapes and offsets of the running statistics.
    fn stats_table(&self) -> &TensorTable;
    /// `(channels, size)` of each dense block's or stage's output, in order: the layers
    /// whose maps [`crate::features`] extracts.
    fn stages(&self) -> Vec<(usize, usize)>;
    /// What the family calls them: `block` or `stage`.
    fn stage_word(&self) -> &'static str;
    /// Per-stage shapes, parameters and multiply-accumulates (`densenet summary`).
    fn summary(&self) -> crate::summary::Summary;
    /// Its evaluation pass as ONNX nodes appended to `g`, reading the graph input and
    /// the state dict's tensors by name; returns the output's name (`crate::onnx`).
    fn onnx_graph(&self, g: &mut crate::onnx::graph::Builder) -> String;
    /// The memory plan of a workspace for batches of up to `batch` images, as
    /// `summary --plan` shows it: its regions and its convolutions' routes.
    fn memory_plan(&self, batch: usize, mode: MemoryMode, training: bool) -> MemoryPlan;
}

/// What a family's memory plan decided, without allocating it: where every buffer lives
/// in the workspace's one allocation, and which algorithm runs each convolution.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MemoryPlan {
    /// The one allocation's regions (name, offset, bytes).
    pub regions: Vec<crate::nn::arena::Region>,
    /// Every convolution's routes at the plan's batch size.
    pub routes: Routes,
}

/// A network of family `A` with its parameters, gradients and running statistics, each
/// in one flat buffer laid out by `A`'s tables: every family's [`Model`].
pub struct Net<A> {
    /// Layers and tensor layout.
    pub arch: A,
    /// All trainable parameters (see [`Family::param_table`] for names).
    pub params: Vec<f32>,
    /// Their gradients, same layout.
    pub grads: Vec<f32>,
    /// BN running statistics (see [`Family::stats_table`]).
    pub stats: Vec<f32>,
}

/// Which fan a family's He initialisation of its convolutions divides by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fan {
    /// Input channels × kernel area (torchvision's DenseNet).
    In,
    /// Output channels × kernel area (fb.resnet.torch and torchvision's ResNets).
    Out,
}

impl<A: Family> Net<A> {
    /// `arch` with fresh weights drawn from `seed`: convolutions He-normal (std √(2/fan)),
    /// BN γ = 1 and β = 0, running mean 0 and variance 1, the classifier's weight
    /// PyTorch's default for a linear layer (uniform ±1/√fan_in) and its bias 0.
    pub fn initialised(arch: A, seed: u64, fan: Fan) -> Self {
        let mut params = vec![0.0; arch.param_table().total()];
        let mut stats = vec![0.0; arch.stats_table().total()];
        let mut rng = Rng::new(seed);
        let classifier = arch.classifier_range().start;
        for e in arch.param_table().entries() {
            let v = &mut params[e.range()];
            if e.range().start == classifier {
                let bound = 1.0 / (e.shape[1] as f64).sqrt();
                v.iter_mut()
                    .for_each(|x| *x = rng.uniform(-bound, bound) as f32);
            } else if e.shape.len() == 4 {
                let fan = match fan {
                    Fan::In => e.shape[1],
                    Fan::Out => e.shape[0],
                } * e.shape[2]
                    * e.shape[3];
                let std = (2.0 / fan as f64).sqrt();
                v.iter_mut().for_each(|x| *x = (rng.normal() * std) as f32);
            } else if e.name.ends_with(".weight") {
                v.fill(1.0); // BN γ
            }
        }
        for e in arch.stats_table().entries() {
            if e.name.ends_with("running_var") {
                stats[e.range()].fill(1.0);
            }
        }
        let grads = vec![0.0; params.len()];
        Net {
            arch,
            params,
            grads,
            stats,
        }
    }
}

impl<A: Family> Model for Net<A> {
    fn model_config(&self) -> ModelConfig {
        self.arch.model_config()
    }
    fn io(&self) -> (usize, usize, usize) {
        self.arch.io()
    }
    fn workspace(&self, batch: usize, mode: MemoryMode, training: bool) -> Workspace {
        self.arch.workspace(batch, mode, training)
    }
    fn forward(&mut self, ws: &mut Workspace, pass: Pass<'_>, probe: &mut Option<Probe>) {
        let b = Buffers {
            params: &mut self.params,
            grads: &mut self.grads,
            stats: &mut self.stats,
        };
        self.arch.forward(b, ws, pass, probe);
    }
    fn backward(&mut self, ws: &mut Workspace, opts: &TrainOptions) {
        self.arch.backward(&self.params, &mut self.grads, ws, opts);
    }
    fn backward_classifier(&mut self, ws: &mut Workspace) {
        self.arch
            .backward_classifier(&self.params, &mut self.grads, ws);
    }
    fn classifier_range(&self) -> std::ops::Range<usize> {
        self.arch.classifier_range()
    }
    fn param_table(&self) -> &TensorTable {
        self.arch.param_table()
    }
    fn stats_table(&self) -> &TensorTable {
        self.arch.stats_table()
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
    fn as_any(&self) -> &dyn Any {
        self
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
