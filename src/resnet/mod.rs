//! Pre-activation ResNets (He, Zhang, Ren, Sun, *Identity Mappings in Deep Residual
//! Networks*, ECCV 2016) in the same engine as the DenseNets, so the two families can be
//! trained and compared side by side (the DenseNet paper's Table 2 quotes the pre-activation
//! ResNet-164 and ResNet-1001 as its baselines).
//!
//! The CIFAR network of the paper:
//!
//! ```text
//! conv1     3×3 conv, in → 16 channels (no BN or ReLU: the first unit's BN1-ReLU follows)
//! layer1    n residual units of width 16 (basic: 16 channels out; bottleneck: 64), 32×32
//! layer2    n units of width 32, the first with stride 2, 16×16
//! layer3    n units of width 64, the first with stride 2, 8×8
//! bn        final BN-ReLU, global average pool, fc (linear with bias)
//! ```
//!
//! The first unit of a stage has a 1×1 projection shortcut where the shape changes (stride
//! 2, or 16 → 64 channels at the first bottleneck unit); every other shortcut is the
//! identity. State-dict names: `conv1`, `layer{s}.{i}.bn{j}` / `.conv{j}`,
//! `layer{s}.{i}.shortcut.0`, `bn`, `fc` (the module names of the PyTorch definition in
//! `tests/fixtures/make_preresnet_fixtures.py`, after kuangliu's `PreActBottleneck`).
//!
//! Where to look: the residual unit's forward and backward are in [`block`], the memory plan
//! in [`memory`], the presets in [`config`], the layout of the parameters in [`arch`]. This file
//! strings the units together, forward in order and backward in reverse.

pub mod arch;
pub mod block;
pub mod config;
pub mod memory;
pub mod onnx;
pub mod summary;

use crate::model::config::ModelConfig;
use crate::model::interface::{
    own_workspace, Buffers, Family, Fan, MemoryPlan, ModelWorkspace, Net, Pass, Workspace,
    WorkspaceCore,
};
use crate::nn::arena::Buf;
use crate::nn::params::TensorTable;
use crate::nn::{emit, Probe, TrainOptions};
use crate::nn::{HeadMemory, MemoryMode};
use crate::ops::conv::{conv_backward, conv_forward};
use crate::ops::linear::{linear_backward, linear_forward};
use crate::ops::norm::{bn_relu_avgpool_forward, bn_relu_backward, OutGrad};
use crate::ops::{cnhw_to_nchw_in_place, nchw_to_cnhw};
pub use arch::{Architecture, Stage};
pub use block::ResidualUnit;
pub use config::{BlockKind, PreActResNetConfig};
pub use memory::{ResNetPlan, ResNetWorkspace};
use std::any::Any;

/// A pre-activation ResNet with its parameters, gradients and running statistics.
pub type PreActResNet = Net<Architecture>;

/// `(x, y)`: stream buffer `i` to read and `j` to write.
fn pair(v: &mut [Buf<f32>], i: usize, j: usize) -> (&[f32], &mut [f32]) {
    assert_ne!(i, j, "a unit cannot write its own input");
    if i < j {
        let (a, b) = v.split_at_mut(j);
        (&a[i], &mut b[0])
    } else {
        let (a, b) = v.split_at_mut(i);
        (&b[0], &mut a[j])
    }
}

/// The first `K` buffers of `v` as slices (empty slices where `v` has fewer).
fn views<const K: usize>(v: &mut [Buf<f32>]) -> [&mut [f32]; K] {
    let mut it = v.iter_mut();
    std::array::from_fn(|_| match it.next() {
        Some(b) => &mut b[..],
        None => &mut [],
    })
}

impl PreActResNet {
    /// A network initialised as fb.resnet.torch and torchvision's ResNets do: convolutions
    /// He-normal with std √(2/fan_out) (fan_out = k²·C_out, the authors' "MSRA" init),
    /// BN γ = 1, β = 0, running mean 0 and variance 1, PyTorch's default linear weight
    /// (uniform ±1/√fan_in) and zero bias.
    pub fn new(config: &PreActResNetConfig, seed: u64) -> Self {
        Net::initialised(Architecture::new(config), seed, Fan::Out)
    }

    /// The configuration.
    pub fn config(&self) -> &PreActResNetConfig {
        &self.arch.config
    }
}

impl Family for Architecture {
    fn model_config(&self) -> ModelConfig {
        ModelConfig::PreActResNet(self.config.clone())
    }

    fn io(&self) -> (usize, usize, usize) {
        let c = &self.config;
        (c.num_classes, c.in_channels, c.input_size)
    }

    fn memory_plan(&self, batch: usize, mode: MemoryMode, training: bool) -> MemoryPlan {
        let plan = ResNetPlan::new(self, batch, mode, training);
        MemoryPlan {
            regions: plan.regions,
            routes: plan.routes,
        }
    }

    fn workspace(&self, batch: usize, mode: MemoryMode, training: bool) -> Workspace {
        let plan = ResNetPlan::new(self, batch, mode, training);
        Box::new(ResNetWorkspace::new(self, plan))
    }

    /// The stem's and every stage's output go to `probe` as `conv1`, `layer1`, `layer2`,
    /// `layer3`. The dropout seed is unused: He et al. train ResNets without dropout.
    fn forward(&self, b: Buffers, ws: &mut Workspace, pass: Pass, probe: &mut Option<Probe>) {
        let (params, stats) = (&*b.params, b.stats);
        let Pass {
            input, n, training, ..
        } = pass;
        let ws: &mut ResNetWorkspace = own_workspace(ws);
        let arch = self;
        let cfg = &arch.config;
        let (s, cin) = (cfg.input_size, cfg.in_channels);
        ws.n = n;
        ws.training = training;
        ws.core.routes.for_pass(n, training);
        let keep_all = ws.plan.training;
        let idx = |t: usize| if keep_all { t } else { t % 2 };
        let ResNetWorkspace {
            input: x_in,
            stream,
            units,
            scratch: sc,
            final_stats,
            core:
                WorkspaceCore {
                    head: HeadMemory { pooled, logits, .. },
                    routes,
                    ..
                },
            ..
        } = ws;
        let routes = &*routes;
        nchw_to_cnhw(&mut x_in[..n * cin * s * s], input, n, cin, s * s);
        let p = params;
        let running = stats;

        // stem: conv1 straight into the first stream buffer
        let c0 = cfg.stem_channels;
        let out0 = &mut stream[idx(0)][..c0 * n * s * s];
        conv_forward(
            out0,
            &x_in[..cin * n * s * s],
            arch.conv1.w(p),
            &arch.conv1.shape(n, s),
            routes.of(arch.conv1.weight).forward,
            &mut sc.col,
        );
        emit(probe, "conv1", out0, c0, n, s);

        let mut t = 0;
        for (si, stage) in arch.stages.iter().enumerate() {
            for unit in &stage.units {
                let (x, y) = pair(stream, idx(t), idx(t + 1));
                let um = &mut units[t];
                let u = if um.u.is_empty() {
                    views(&mut sc.u)
                } else {
                    views(&mut um.u)
                };
                let h = if um.h.is_empty() {
                    views(&mut sc.h)
                } else {
                    views(&mut um.h)
                };
                let fwd = block::Forward {
                    x,
                    y,
                    u,
                    h,
                    stats: training.then_some(&mut um.stats[..]),
                    proj: &mut sc.proj,
                    col: &mut sc.col,
                    routes,
                    scale: &mut sc.scale,
                    shift: &mut sc.shift,
                };
                unit.forward(p, running, n, fwd);
                t += 1;
            }
            let out = &stream[idx(t)];
            emit(
                probe,
                format_args!("layer{}", si + 1),
                out,
                stage.channels,
                n,
                stage.size,
            );
        }

        // head: final BN-ReLU fused with global average pooling, then fc
        let last = arch.stages.last().expect("at least one stage");
        let (c, hw) = (last.channels, last.size * last.size);
        let x = &stream[idx(t)][..c * n * hw];
        if training {
            final_stats.compute(x, 0, c, n * hw);
        }
        let batch = training.then_some(&*final_stats);
        arch.norm
            .forward_affine(p, running, batch, n * hw, &mut sc.scale, &mut sc.shift);
        let pooled = &mut pooled[..c * n];
        bn_relu_avgpool_forward(pooled, x, &sc.scale[..c], &sc.shift[..c], n, hw);
        let j = cfg.num_classes;
        let (w, b) = p[arch.fc..arch.fc + j * c + j].split_at(j * c);
        linear_forward(logits, pooled, w, b, n, c, j);
    }

    fn backward(&self, params: &[f32], grads: &mut [f32], ws: &mut Workspace, opts: &TrainOptions) {
        let ws: &mut ResNetWorkspace = own_workspace(ws);
        assert!(
            ws.training && ws.plan.training,
            "backward needs a training-mode forward pass first"
        );
        let arch = self;
        let cfg = &arch.config;
        let n = ws.n;
        let p = params;
        let g = grads;
        let ResNetWorkspace {
            input,
            stream,
            units,
            scratch: sc,
            final_stats,
            core:
                WorkspaceCore {
                    input_grad,
                    routes,
                    head:
                        HeadMemory {
                            pooled,
                            dpooled,
                            dlogits,
                            ..
                        },
                    ..
                },
            ..
        } = ws;

        // head: fc, then the final BN-ReLU through the average pool into the gradient of
        // the last stream buffer
        let last = arch.stages.last().expect("at least one stage");
        let (c, hw) = (last.channels, last.size * last.size);
        let j = cfg.num_classes;
        {
            let (dw, db) = g[arch.fc..arch.fc + j * c + j].split_at_mut(j * c);
            let w = &p[arch.fc..arch.fc + j * c];
            linear_backward(dpooled, dw, db, dlogits, pooled, w, n, c, j);
        }
        let num_units = units.len();
        let mut cur = 0;
        {
            let dout = &mut sc.grad[cur][..c * n * hw];
            dout.fill(0.0);
            arch.norm
                .batch_affine(p, final_stats, &mut sc.scale, &mut sc.shift);
            let (dgamma, dbeta) = arch.norm.grads(g);
            bn_relu_backward(
                dout,
                dgamma,
                dbeta,
                OutGrad::Pooled {
                    dpool: &dpooled[..c * n],
                    n,
                    hw,
                },
                &stream[num_units][..c * n * hw],
                &final_stats.mean,
                &final_stats.rstd,
                &sc.scale[..c],
                &sc.shift[..c],
                arch.norm.gamma(p),
                n * hw,
            );
        }

        opts.grads_final(arch.norm.weight.min(arch.fc), g);

        // units in reverse; the stream gradient alternates between two buffers
        let units_rev = arch.stages.iter().rev().flat_map(|s| s.units.iter().rev());
        for (t, unit) in (0..num_units).rev().zip(units_rev) {
            let [g0, g1] = &mut sc.grad;
            let (dy, dx) = if cur == 0 { (&*g0, g1) } else { (&*g1, g0) };
            let um = &mut units[t];
            let recompute = um.h.is_empty();
            let h = if recompute {
                views(&mut sc.h)
            } else {
                views(&mut um.h)
            };
            let kept = |i: usize| um.u.get(i).map(|v| &v[..]).unwrap_or(&[]);
            let bwd = block::Backward {
                x: &stream[t],
                dy,
                dx,
                u: [kept(0), kept(1)],
                h,
                recompute,
                stats: &um.stats,
                dh: &mut sc.dh,
                du: &mut sc.du,
                dproj: &mut sc.proj,
                col: &mut sc.col,
                routes,
                scale: &mut sc.scale,
                shift: &mut sc.shift,
            };
            unit.backward(p, g, n, bwd);
            opts.grads_final(unit.first_param(), g);
            cur = 1 - cur;
        }

        // stem
        let (s, cin, c0) = (cfg.input_size, cfg.in_channels, cfg.stem_channels);
        let len = n * cin * s * s;
        let dx = opts.input_grad.then(|| &mut input_grad[..len]);
        conv_backward(
            dx,
            arch.conv1.dw(g),
            &sc.grad[cur][..c0 * n * s * s],
            &input[..len],
            arch.conv1.w(p),
            &arch.conv1.shape(n, s),
            &routes.of(arch.conv1.weight),
            &mut sc.col,
        );
        opts.grads_final(0, g);
        if opts.input_grad {
            cnhw_to_nchw_in_place(input_grad, n, cin, s * s);
        }
    }

    /// Accumulates `fc.{weight,bias}` gradients, nothing else.
    fn backward_classifier(&self, params: &[f32], grads: &mut [f32], ws: &mut Workspace) {
        let ws: &mut ResNetWorkspace = own_workspace(ws);
        let arch = self;
        let (n, j) = (ws.n, arch.config.num_classes);
        let c = arch.stages.last().expect("at least one stage").channels;
        let (dw, db) = grads[arch.fc..arch.fc + j * c + j].split_at_mut(j * c);
        let HeadMemory {
            pooled,
            dpooled,
            dlogits,
            ..
        } = &mut ws.core.head;
        let w = &params[arch.fc..arch.fc + j * c];
        // the pooled features' gradient is computed too (next to nothing) and not used
        linear_backward(dpooled, dw, db, dlogits, pooled, w, n, c, j);
    }

    /// `fc.weight` and `fc.bias` in the parameter buffer.
    fn classifier_range(&self) -> std::ops::Range<usize> {
        let arch = self;
        let c = arch.stages.last().expect("at least one stage").channels;
        arch.fc..arch.fc + arch.config.num_classes * (c + 1)
    }

    fn param_table(&self) -> &TensorTable {
        &self.params
    }

    fn stats_table(&self) -> &TensorTable {
        &self.stats
    }

    fn stages(&self) -> Vec<(usize, usize)> {
        self.stages.iter().map(|s| (s.channels, s.size)).collect()
    }

    fn stage_word(&self) -> &'static str {
        "stage"
    }

    fn summary(&self) -> crate::summary::Summary {
        summary::summarize(self)
    }

    fn onnx_graph(&self, g: &mut crate::onnx::graph::Builder) -> String {
        onnx::graph(g, self)
    }
}

impl ModelWorkspace for ResNetWorkspace {
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
