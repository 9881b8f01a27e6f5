//! The DenseNet (Huang et al., CVPR 2017): everything about it in one folder.
//!
//! - [`config`]: what a DenseNet is (presets of the paper and torchvision, validation);
//! - [`arch`]: the layers of a configuration and where their tensors live in the flat
//!   buffers ([`Architecture`]);
//! - [`memory`]: the memory plan, where every activation lives ([`DenseNetPlan`],
//!   [`DenseNetWorkspace`]);
//! - [`stem`], [`dense_layer`], [`transition`], [`head`]: forward and backward of each
//!   part; the dense layer's are in [`dense_layer`];
//! - [`summary`]: per-stage shapes, parameters and multiply-accumulates (Table 1);
//! - [`analysis`]: feature reuse (the paper's Fig. 5).
//!
//! [`DenseNet`] owns the parameter, gradient and statistics buffers and strings the parts
//! together, forward in order and backward in reverse, over a workspace that the memory
//! plan allocated.

pub mod analysis;
pub mod arch;
pub mod config;
pub mod dense_layer;
pub mod head;
pub mod memory;
pub mod onnx;
pub mod stem;
pub mod summary;
pub mod transition;

pub use arch::{Architecture, DenseBlock, DenseLayer, Transition};
pub use config::{DenseNetConfig, Stem};
pub use memory::{DenseNetPlan, DenseNetWorkspace};

use crate::model::config::ModelConfig;
use crate::model::interface::{
    own_workspace, Buffers, Family, Fan, MemoryPlan, ModelWorkspace, Net, Pass, Workspace,
    WorkspaceCore,
};
use crate::nn::params::TensorTable;
use crate::nn::{emit, MemoryMode, Probe, TrainOptions};
use crate::ops::{cnhw_to_nchw_in_place, nchw_to_cnhw};
use std::any::Any;

/// A DenseNet with its parameters, gradients and running statistics.
pub type DenseNet = Net<Architecture>;

impl DenseNet {
    /// A network with He-initialised convolutions (normal, std √(2/fan_in), as torchvision),
    /// BN γ = 1, β = 0, running mean 0 and variance 1, PyTorch's default linear weight
    /// (uniform ±1/√fan_in) and zero classifier bias.
    pub fn new(config: &DenseNetConfig, seed: u64) -> Self {
        Net::initialised(Architecture::new(config), seed, Fan::In)
    }

    /// The configuration.
    pub fn config(&self) -> &DenseNetConfig {
        &self.arch.config
    }
}

impl Family for Architecture {
    fn model_config(&self) -> ModelConfig {
        ModelConfig::DenseNet(self.config.clone())
    }

    fn io(&self) -> (usize, usize, usize) {
        let c = &self.config;
        (c.num_classes, c.in_channels, c.input_size)
    }

    fn memory_plan(&self, batch: usize, mode: MemoryMode, training: bool) -> MemoryPlan {
        let plan = DenseNetPlan::new(self, batch, mode, training);
        MemoryPlan {
            regions: plan.regions,
            routes: plan.routes,
        }
    }

    fn workspace(&self, batch: usize, mode: MemoryMode, training: bool) -> Workspace {
        let plan = DenseNetPlan::new(self, batch, mode, training);
        Box::new(DenseNetWorkspace::new(self, plan))
    }

    fn forward(&self, b: Buffers, ws: &mut Workspace, pass: Pass, probe: &mut Option<Probe>) {
        let (params, stats) = (&*b.params, b.stats);
        let Pass {
            input,
            n,
            training,
            dropout_seed: seed,
        } = pass;
        let ws: &mut DenseNetWorkspace = own_workspace(ws);
        let cfg = &self.config;
        let s = cfg.input_size;
        ws.n = n;
        ws.training = training;
        ws.dropout_seed = seed;
        ws.core.routes.for_pass(n, training);
        nchw_to_cnhw(
            &mut ws.input[..n * cfg.in_channels * s * s],
            input,
            n,
            cfg.in_channels,
            s * s,
        );
        let p = params;
        let st = stats;
        stem::forward(self, p, st, ws);
        let stem_name = match cfg.stem {
            Stem::Cifar => "features.conv0",
            Stem::ImageNet => "features.pool0",
        };
        emit(
            probe,
            stem_name,
            &ws.blocks[0].feats,
            self.blocks[0].c_in,
            n,
            self.blocks[0].size,
        );
        for b in 0..self.blocks.len() {
            let block = &self.blocks[b];
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
            let t = head::final_norm_output(self, p, st, ws);
            probe(cfg.final_norm_name(), t);
        }
        head::forward(self, p, st, ws);
    }

    fn backward(&self, params: &[f32], grads: &mut [f32], ws: &mut Workspace, opts: &TrainOptions) {
        let ws: &mut DenseNetWorkspace = own_workspace(ws);
        assert!(
            ws.training,
            "backward needs a training-mode forward pass first"
        );
        let n = ws.n;
        for b in ws.blocks.iter_mut() {
            crate::util::par::fill(&mut b.grads, 0.0);
            crate::util::par::fill(&mut b.pending, (0.0, 0.0));
        }
        let p = params;
        let g = grads;
        head::backward(self, p, g, ws);
        opts.grads_final(self.norm_final.weight, g);
        for b in (0..self.blocks.len()).rev() {
            let block = &self.blocks[b];
            if let Some(t) = &block.transition {
                t.backward(p, g, ws, b, block.size);
                opts.grads_final(t.norm.weight.min(t.conv.weight), g);
            }
            for (i, layer) in block.layers.iter().enumerate().rev() {
                layer.backward(p, g, ws, b, i, block.size);
                opts.grads_final(layer.first_param(), g);
            }
            // the block's input channels have had all their readers
            let len = n * block.size * block.size;
            ws.blocks[b].complete_grads(0..block.c_in, len);
        }
        stem::backward(self, p, g, ws, opts.input_grad);
        opts.grads_final(0, g);
        if opts.input_grad {
            let cfg = &self.config;
            let hw = cfg.input_size * cfg.input_size;
            cnhw_to_nchw_in_place(&mut ws.core.input_grad, n, cfg.in_channels, hw);
        }
    }

    /// Accumulates `classifier.{weight,bias}` gradients, nothing else.
    fn backward_classifier(&self, params: &[f32], grads: &mut [f32], ws: &mut Workspace) {
        head::backward_classifier(self, params, grads, own_workspace(ws));
    }

    /// `classifier.weight` and `classifier.bias` in the parameter buffer.
    fn classifier_range(&self) -> std::ops::Range<usize> {
        let c = &self.config;
        let features = self.blocks.last().expect("at least one block").c_out;
        self.classifier..self.classifier + c.num_classes * (features + 1)
    }

    fn param_table(&self) -> &TensorTable {
        &self.params
    }

    fn stats_table(&self) -> &TensorTable {
        &self.stats
    }

    fn stages(&self) -> Vec<(usize, usize)> {
        self.blocks.iter().map(|b| (b.c_out, b.size)).collect()
    }

    fn stage_word(&self) -> &'static str {
        "block"
    }

    fn summary(&self) -> crate::summary::Summary {
        summary::summarize(self)
    }

    fn onnx_graph(&self, g: &mut crate::onnx::graph::Builder) -> String {
        onnx::graph(g, self)
    }
}

impl ModelWorkspace for DenseNetWorkspace {
    fn core(&self) -> &WorkspaceCore {
        &self.core
    }
    fn core_mut(&mut self) -> &mut WorkspaceCore {
        &mut self.core
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
