//! The network: its parameter table and the forward and backward passes.
//!
//! [`Architecture`] turns a [`DenseNetConfig`] into the list of layers, each holding the
//! offsets of its tensors in the flat parameter and running-statistics buffers (named
//! exactly as PyTorch's state dict). [`Network`] owns those buffers and runs the passes
//! over a [`Workspace`] that the memory plan allocated.
//!
//! Where to look: the dense layer's forward and backward are in [`dense_layer`], the
//! transition's in [`transition`], the stem's in [`stem`], the final BN-ReLU-pool-linear in
//! [`head`]. This file strings them together, forward in order and backward in reverse.

pub mod dense_layer;
pub mod head;
pub mod stem;
pub mod transition;

use crate::config::{DenseNetConfig, Stem};
use crate::memory::{ChannelStats, MemoryMode, MemoryPlan, Workspace};
use crate::ops::conv::ConvShape;
use crate::ops::fused;
use crate::ops::loss::softmax_cross_entropy;
use crate::ops::norm;
use crate::ops::{cnhw_to_nchw, cnhw_to_nchw_in_place, nchw_to_cnhw};
use crate::params::TensorTable;
use crate::rng::Rng;

pub use dense_layer::DenseLayer;
pub use transition::Transition;

/// A batch norm's tensors: `weight` (γ) and `bias` (β) in the parameter buffer, running
/// mean and variance in the statistics buffer (each `c` long, β right after γ).
#[derive(Clone, Debug)]
pub struct BatchNorm {
    /// State-dict prefix, e.g. `features.denseblock1.denselayer1.norm1`.
    pub name: String,
    /// Channels.
    pub c: usize,
    /// Offset of γ in the parameters; β follows at `weight + c`.
    pub weight: usize,
    /// Offset of the running mean in the statistics buffer; the variance follows.
    pub running: usize,
}

impl BatchNorm {
    pub(crate) fn new(
        name: &str,
        c: usize,
        params: &mut TensorTable,
        stats: &mut TensorTable,
    ) -> Self {
        let weight = params.push(format!("{name}.weight"), &[c]);
        params.push(format!("{name}.bias"), &[c]);
        let running = stats.push(format!("{name}.running_mean"), &[c]);
        stats.push(format!("{name}.running_var"), &[c]);
        BatchNorm {
            name: name.to_string(),
            c,
            weight,
            running,
        }
    }
    /// γ.
    pub fn gamma<'a>(&self, p: &'a [f32]) -> &'a [f32] {
        &p[self.weight..self.weight + self.c]
    }
    /// β.
    pub fn beta<'a>(&self, p: &'a [f32]) -> &'a [f32] {
        &p[self.weight + self.c..self.weight + 2 * self.c]
    }
    /// (dγ, dβ) in the gradient buffer.
    pub fn grads<'a>(&self, g: &'a mut [f32]) -> (&'a mut [f32], &'a mut [f32]) {
        g[self.weight..self.weight + 2 * self.c].split_at_mut(self.c)
    }
    /// Backward of this BN (batch statistics `stats` of `x`'s channels) → ReLU → the 1×1
    /// `conv`, fused ([`crate::ops::fused::backward`]): from the conv's output gradient
    /// `dy`, accumulates the conv's and this BN's parameter gradients into `g` and the
    /// gradient of `x` into `dx`, except for the per-channel part left in `pending` (see
    /// [`crate::memory::BlockMemory::pending`]). `scale` and `shift` are scratch.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn relu_conv1x1_backward(
        &self,
        conv: &Conv,
        p: &[f32],
        g: &mut [f32],
        stats: &ChannelStats,
        scale: &mut [f32],
        shift: &mut [f32],
        x: &[f32],
        dx: &mut [f32],
        pending: &mut [(f64, f64)],
        dy: &[f32],
        len: usize,
    ) {
        let m = self.c;
        self.batch_affine(p, stats, scale, shift);
        let (dgamma, dbeta, dw) = self.grads_with(conv, g);
        let grads = fused::Grads {
            dx,
            dw,
            dgamma,
            dbeta,
            pending: &mut pending[..m],
        };
        let batch = fused::BatchStats {
            mean: &stats.mean[..m],
            rstd: &stats.rstd[..m],
            gamma: self.gamma(p),
        };
        let bn = fused::BnRelu::first(scale, shift, m);
        fused::backward(grads, dy, x, conv.w(p), bn, batch, conv.cout, len);
    }
    /// (dγ, dβ) of this BN and the weight gradient of `conv` together (their ranges of the
    /// gradient buffer are disjoint), for a fused BN-ReLU-conv backward.
    fn grads_with<'a>(
        &self,
        conv: &Conv,
        g: &'a mut [f32],
    ) -> (&'a mut [f32], &'a mut [f32], &'a mut [f32]) {
        let (bn, cv) = (
            self.weight..self.weight + 2 * self.c,
            conv.weight..conv.weight + conv.numel(),
        );
        assert!(
            bn.end <= cv.start || cv.end <= bn.start,
            "overlapping parameters"
        );
        let (dbn, dw) = if bn.end <= cv.start {
            let (lo, hi) = g.split_at_mut(cv.start);
            (&mut lo[bn], &mut hi[..cv.len()])
        } else {
            let (lo, hi) = g.split_at_mut(bn.start);
            (&mut hi[..bn.len()], &mut lo[cv])
        };
        let (dg, db) = dbn.split_at_mut(self.c);
        (dg, db, dw)
    }
    /// Forward-pass affine map of this BN, into `scale[..c]`, `shift[..c]`. In training
    /// (`batch` given: the statistics of the channels it normalises, a prefix of `batch`)
    /// it also applies PyTorch's running-statistics update, once per forward pass; in
    /// evaluation it uses the running statistics.
    pub fn forward_affine(
        &self,
        p: &[f32],
        running: &mut [f32],
        batch: Option<&ChannelStats>,
        len: usize,
        scale: &mut [f32],
        shift: &mut [f32],
    ) {
        let c = self.c;
        match batch {
            Some(st) => {
                let (rm, rv) = self.running(running);
                norm::update_running(rm, rv, &st.mean[..c], &st.var[..c], len);
                self.batch_affine(p, st, scale, shift);
            }
            None => {
                let (rm, rv) = self.running(running);
                norm::rstd_from_var(&mut scale[..c], rv);
                norm::scale_shift(
                    &mut scale[..c],
                    &mut shift[..c],
                    rm,
                    self.gamma(p),
                    self.beta(p),
                );
            }
        }
    }

    /// The training-mode affine map from batch statistics, without touching the running
    /// statistics (used when the backward pass recomputes a BN-ReLU output).
    pub fn batch_affine(&self, p: &[f32], st: &ChannelStats, scale: &mut [f32], shift: &mut [f32]) {
        let c = self.c;
        scale[..c].copy_from_slice(&st.rstd[..c]);
        norm::scale_shift(
            &mut scale[..c],
            &mut shift[..c],
            &st.mean[..c],
            self.gamma(p),
            self.beta(p),
        );
    }

    /// (running mean, running variance).
    pub fn running<'a>(&self, s: &'a mut [f32]) -> (&'a mut [f32], &'a mut [f32]) {
        s[self.running..self.running + 2 * self.c].split_at_mut(self.c)
    }
}

/// A convolution's weight (OIHW, no bias) and geometry.
#[derive(Clone, Debug)]
pub struct Conv {
    /// State-dict prefix, e.g. `features.denseblock1.denselayer1.conv1`.
    pub name: String,
    /// Offset of the weight in the parameters.
    pub weight: usize,
    /// Output channels.
    pub cout: usize,
    /// Input channels.
    pub cin: usize,
    /// Kernel size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Padding.
    pub pad: usize,
}

impl Conv {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: &str,
        cout: usize,
        cin: usize,
        k: usize,
        stride: usize,
        pad: usize,
        params: &mut TensorTable,
    ) -> Self {
        let weight = params.push(format!("{name}.weight"), &[cout, cin, k, k]);
        Conv {
            name: name.to_string(),
            weight,
            cout,
            cin,
            k,
            stride,
            pad,
        }
    }
    /// Number of weights.
    pub fn numel(&self) -> usize {
        self.cout * self.cin * self.k * self.k
    }
    /// The weight tensor.
    pub fn w<'a>(&self, p: &'a [f32]) -> &'a [f32] {
        &p[self.weight..self.weight + self.numel()]
    }
    /// Its gradient.
    pub fn dw<'a>(&self, g: &'a mut [f32]) -> &'a mut [f32] {
        &mut g[self.weight..self.weight + self.numel()]
    }
    /// Geometry for a batch of `n` inputs of `size×size`.
    pub fn shape(&self, n: usize, size: usize) -> ConvShape {
        ConvShape {
            n,
            cin: self.cin,
            cout: self.cout,
            h: size,
            w: size,
            k: self.k,
            stride: self.stride,
            pad: self.pad,
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

/// Options of one training-mode pass.
#[derive(Clone, Copy, Debug)]
pub struct TrainOptions {
    /// Seed for this step's dropout masks (ignored when the drop rate is 0).
    pub dropout_seed: u64,
    /// Also compute the gradient with respect to the input.
    pub input_grad: bool,
}

/// A DenseNet with its parameters, gradients and running statistics.
pub struct Network {
    /// Layers and tensor layout.
    pub arch: Architecture,
    /// All trainable parameters (see [`Architecture::params`] for names).
    pub params: Vec<f32>,
    /// Their gradients, same layout.
    pub grads: Vec<f32>,
    /// BN running statistics (see [`Architecture::stats`]).
    pub stats: Vec<f32>,
}

/// What a forward pass may be asked to expose, for checking a port layer by layer.
pub type Probe<'a> = &'a mut dyn FnMut(&str, crate::tensor::Tensor);

impl Network {
    /// A network with He-initialised convolutions (normal, std √(2/fan_in), as torchvision),
    /// BN γ = 1, β = 0, running mean 0 and variance 1, PyTorch's default linear weight
    /// (uniform ±1/√fan_in) and zero classifier bias.
    pub fn new(config: &DenseNetConfig, seed: u64) -> Self {
        let arch = Architecture::new(config);
        let mut params = vec![0.0; arch.params.total()];
        let mut stats = vec![0.0; arch.stats.total()];
        let mut rng = Rng::new(seed);
        for e in arch.params.entries() {
            let v = &mut params[e.range()];
            if e.name.ends_with("classifier.weight") {
                let bound = 1.0 / (e.shape[1] as f64).sqrt();
                v.iter_mut()
                    .for_each(|x| *x = (rng.uniform(-bound, bound)) as f32);
            } else if e.shape.len() == 4 {
                let fan_in = (e.shape[1] * e.shape[2] * e.shape[3]) as f64;
                let std = (2.0 / fan_in).sqrt();
                v.iter_mut().for_each(|x| *x = (rng.normal() * std) as f32);
            } else if e.name.ends_with(".weight") {
                v.fill(1.0); // BN γ
            }
        }
        for e in arch.stats.entries() {
            if e.name.ends_with("running_var") {
                stats[e.range()].fill(1.0);
            }
        }
        let grads = vec![0.0; params.len()];
        Network {
            arch,
            params,
            grads,
            stats,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DenseNetConfig {
        &self.arch.config
    }

    /// A workspace for batches of up to `batch` images.
    pub fn workspace(&self, batch: usize, mode: MemoryMode, training: bool) -> Workspace {
        Workspace::new(
            &self.arch,
            MemoryPlan::new(&self.arch, batch, mode, training),
        )
    }

    fn check_input(&self, ws: &Workspace, input: &[f32], n: usize) {
        let cfg = &self.arch.config;
        check_input(input, n, ws.plan.batch, cfg.in_channels, cfg.input_size);
    }

    /// Evaluation-mode forward pass (BN with running statistics) of `n` images in NCHW;
    /// returns the logits `[n][classes]`. `probe` receives intermediate activations
    /// (NCHW) under PyTorch's module names.
    pub fn forward_eval(
        &mut self,
        ws: &mut Workspace,
        input: &[f32],
        n: usize,
        mut probe: Option<Probe>,
    ) -> Vec<f32> {
        self.check_input(ws, input, n);
        self.forward(ws, input, n, false, 0, &mut probe);
        ws.logits[..n * self.arch.config.num_classes].to_vec()
    }

    /// Training-mode forward pass: batch statistics, running statistics updated once,
    /// dropout active. Returns the mean cross-entropy loss; logits stay in `ws.logits`.
    pub fn forward_train(
        &mut self,
        ws: &mut Workspace,
        input: &[f32],
        labels: &[u32],
        opts: &TrainOptions,
    ) -> f32 {
        let n = labels.len();
        self.check_input(ws, input, n);
        assert!(ws.plan.training, "forward_train needs a training workspace");
        let classes = self.arch.config.num_classes;
        self.forward(ws, input, n, true, opts.dropout_seed, &mut None);
        let (logits, dlogits) = (&ws.logits[..n * classes], &mut ws.dlogits[..n * classes]);
        softmax_cross_entropy(dlogits, logits, labels, classes)
    }

    fn forward(
        &mut self,
        ws: &mut Workspace,
        input: &[f32],
        n: usize,
        training: bool,
        seed: u64,
        probe: &mut Option<Probe>,
    ) {
        let cfg = &self.arch.config;
        let s = cfg.input_size;
        ws.n = n;
        ws.training = training;
        ws.dropout_seed = seed;
        nchw_to_cnhw(
            &mut ws.input[..n * cfg.in_channels * s * s],
            input,
            n,
            cfg.in_channels,
            s * s,
        );
        let p = &self.params;
        let st = &mut self.stats;
        stem::forward(&self.arch, p, st, ws);
        let stem_name = match cfg.stem {
            Stem::Cifar => "features.conv0",
            Stem::ImageNet => "features.pool0",
        };
        emit(
            probe,
            stem_name,
            &ws.blocks[0].feats,
            self.arch.blocks[0].c_in,
            n,
            self.arch.blocks[0].size,
        );
        for b in 0..self.arch.blocks.len() {
            let block = &self.arch.blocks[b];
            for (i, layer) in block.layers.iter().enumerate() {
                layer.forward(p, st, ws, b, i, block.size);
            }
            emit(
                probe,
                format_args!("features.denseblock{}", b + 1),
                &ws.blocks[b].feats,
                block.c_out,
                n,
                block.size,
            );
            if let Some(t) = &block.transition {
                t.forward(p, st, ws, b, block.size);
                emit(
                    probe,
                    format_args!("features.transition{}", b + 1),
                    &ws.blocks[b + 1].feats,
                    t.conv.cout,
                    n,
                    block.size / 2,
                );
            }
        }
        if let Some(probe) = probe.as_mut() {
            let t = head::final_norm_output(&self.arch, p, st, ws);
            probe(cfg.final_norm_name(), t);
        }
        head::forward(&self.arch, p, st, ws);
    }

    /// Backward pass of the last [`Network::forward_train`]: **accumulates** every
    /// parameter's gradient into `self.grads` (call [`Network::zero_grad`] first) and, if
    /// asked, writes the input gradient (NCHW) into `ws.input_grad`.
    pub fn backward(&mut self, ws: &mut Workspace, opts: &TrainOptions) {
        assert!(
            ws.training,
            "backward needs a training-mode forward pass first"
        );
        let n = ws.n;
        for b in ws.blocks.iter_mut() {
            b.grads.fill(0.0);
            b.pending.fill((0.0, 0.0));
        }
        let p = &self.params;
        let g = &mut self.grads;
        head::backward(&self.arch, p, g, ws);
        for b in (0..self.arch.blocks.len()).rev() {
            let block = &self.arch.blocks[b];
            if let Some(t) = &block.transition {
                t.backward(p, g, ws, b, block.size);
            }
            for (i, layer) in block.layers.iter().enumerate().rev() {
                layer.backward(p, g, ws, b, i, block.size);
            }
            // the block's input channels have had all their readers
            let len = n * block.size * block.size;
            ws.blocks[b].complete_grads(0..block.c_in, len);
        }
        stem::backward(&self.arch, p, g, ws, opts.input_grad);
        if opts.input_grad {
            let cfg = &self.arch.config;
            let hw = cfg.input_size * cfg.input_size;
            cnhw_to_nchw_in_place(&mut ws.input_grad, n, cfg.in_channels, hw);
        }
    }

    /// Sets every gradient to zero.
    pub fn zero_grad(&mut self) {
        self.grads.fill(0.0);
    }
}

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
        probe(
            &name.to_string(),
            crate::tensor::Tensor::new(vec![n, c, size, size], out),
        );
    }
}
