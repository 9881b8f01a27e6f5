//! The pre-activation ResNet's memory plan: where every activation lives, decided once per
//! batch size, and nothing allocated inside a step.
//!
//! A residual network has no concatenations, so a naive implementation is already linear
//! in depth; the question is the constant. A training pass keeps, per unit (all
//! `[C][N·H·W]`):
//!
//! - **the residual stream**: the unit's input x (it is the previous unit's output, so the
//!   network keeps `units + 1` stream buffers); x feeds BN1 and the identity shortcut;
//! - **the BN inputs u1 (and u2)**: the outputs of the convolutions inside the unit.
//!   Keeping them saves re-running the unit's convolutions in the backward pass;
//! - the per-channel batch statistics of x, u1, u2 (small).
//!
//! The BN-ReLU outputs h0, h1, h2 live in **scratch shared by all units** and are
//! recomputed during the backward pass from x, u and the statistics
//! ([`MemoryMode::Efficient`]). [`MemoryMode::Naive`] keeps every unit's h, as PyTorch's
//! autograd does (each BN's input and each ReLU's output): for a bottleneck unit (x: 4w
//! channels, u1 and u2: w) 12w channels per position instead of 6w. Measured with
//! `densenet --threads 1 bench train --model preresnet-164 --batch 64 --steps 2
//! [--memory naive]` (2-core AMD EPYC, one session): 879 MiB and 3.09 s a step efficient,
//! 1616 MiB and 2.94 s naive; preresnet-1001 (`--steps 1 --warmup 0`): 4785 MiB, 38.8 s
//! against 9428 MiB, 39.9 s. The recomputation costs about 5% of a step.
//!
//! Gradients of the stream are never kept: the backward pass walks the units in reverse
//! with two buffers, the gradient of the current unit's output and of its input.
//!
//! Evaluation needs none of this: two stream buffers used in turn and shared scratch.

use super::arch::Architecture;
use crate::model::interface::WorkspaceCore;
use crate::nn::arena::{self, carve, Allocation, Buf, Carver, Region};
use crate::nn::{ChannelStats, HeadMemory, MemoryMode};
use crate::ops::conv::plan_col_len;
use crate::ops::route::{Reads, Routes};
use serde::Serialize;

/// im2col scratch budget in floats (16 MiB), as for the DenseNet plan.
const COL_BUDGET: usize = 4 << 20;

/// Sizes (in floats) of every activation buffer of a pre-activation ResNet for one batch
/// size.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResNetPlan {
    /// Largest batch the buffers hold.
    pub batch: usize,
    /// Memory mode.
    pub mode: MemoryMode,
    /// Whether the plan supports backward passes.
    pub training: bool,
    /// The input, channel-major.
    pub input: usize,
    /// The input gradient (training only).
    pub input_grad: usize,
    /// Residual stream buffers: training, every unit's input and the last unit's output;
    /// evaluation, two buffers used in turn.
    pub stream: Vec<usize>,
    /// Training: each unit's kept BN inputs u1 (and u2).
    pub kept_u: Vec<Vec<usize>>,
    /// Naive training: each unit's kept BN-ReLU outputs h0, h1 (and h2).
    pub kept_h: Vec<Vec<usize>>,
    /// Shared scratch h0, h1, h2 (efficient training and evaluation).
    pub scratch_h: Vec<usize>,
    /// Evaluation: shared u1, u2.
    pub scratch_u: Vec<usize>,
    /// Training: each of the two stream gradient buffers.
    pub stream_grad: usize,
    /// Training: gradient of a 3×3 layer's h.
    pub scratch_dh: usize,
    /// Training: gradient of u1 / u2.
    pub scratch_du: usize,
    /// Projection output (forward) and its gradient share (backward).
    pub scratch_proj: usize,
    /// im2col scratch.
    pub col: usize,
    /// Statistics, pooled features, logits and other per-channel vectors (an estimate).
    pub small: usize,
    /// Where every buffer lives in the workspace's one allocation (what
    /// [`ResNetWorkspace::new`] carves; `densenet summary MODEL --plan` prints it).
    pub regions: Vec<Region>,
    /// Which algorithm runs each convolution at this batch size (`ops::route`).
    pub routes: Routes,
}

impl ResNetPlan {
    /// Plans the buffers of `arch` for batches of up to `batch` images.
    pub fn new(arch: &Architecture, batch: usize, mode: MemoryMode, training: bool) -> Self {
        let cfg = &arch.config;
        let n = batch.max(1);
        let s = cfg.input_size;
        let naive = training && mode == MemoryMode::Naive;
        let input = cfg.in_channels * n * s * s;
        let mut plan = ResNetPlan {
            batch: n,
            mode,
            training,
            input,
            input_grad: if training { input } else { 0 },
            stream: vec![],
            kept_u: vec![],
            kept_h: vec![],
            scratch_h: vec![0; 3],
            scratch_u: vec![0; 2],
            stream_grad: 0,
            scratch_dh: 0,
            scratch_du: 0,
            scratch_proj: 0,
            col: 0,
            small: 0,
            regions: vec![],
            routes: Routes::new(n, training),
        };
        // every convolution reads its stored BN-ReLU output h
        let c1 = &arch.conv1;
        plan.routes
            .push(&c1.name, c1.weight, c1.shape(n, s), Reads::Stored);
        let stem_out = cfg.stem_channels * n * s * s;
        let mut streams = vec![stem_out];
        let mut small = 0;
        for unit in arch.units() {
            let inputs = unit.layer_inputs(n);
            streams.push(unit.c_out * n * unit.size_out * unit.size_out);
            // h_j is as large as layer j's input
            if naive {
                plan.kept_h.push(inputs.clone());
            } else {
                for (m, &v) in plan.scratch_h.iter_mut().zip(&inputs) {
                    *m = (*m).max(v);
                }
            }
            if training {
                plan.kept_u.push(inputs[1..].to_vec());
            } else {
                for (m, &v) in plan.scratch_u.iter_mut().zip(&inputs[1..]) {
                    *m = (*m).max(v);
                }
            }
            for (j, ((bn, conv), &size)) in unit.layers.iter().zip(&unit.sizes).enumerate() {
                let sh = conv.shape(n, size);
                plan.routes.push(&conv.name, conv.weight, sh, Reads::Stored);
                small += 3 * bn.c;
                if training {
                    if !sh.is_pointwise() {
                        plan.scratch_dh = plan.scratch_dh.max(inputs[j]);
                    }
                    if j > 0 {
                        plan.scratch_du = plan.scratch_du.max(inputs[j]);
                    }
                }
            }
            if let Some(sc) = &unit.shortcut {
                let sh = sc.shape(n, unit.size_in);
                plan.routes.push(&sc.name, sc.weight, sh, Reads::Stored);
                let out = unit.c_out * n * unit.size_out * unit.size_out;
                let back = if training { inputs[0] } else { 0 };
                plan.scratch_proj = plan.scratch_proj.max(out).max(back);
            }
        }
        let widest_stream = streams.iter().copied().max().unwrap_or(0);
        if training {
            plan.stream = streams;
            plan.stream_grad = widest_stream;
        } else {
            plan.stream = vec![widest_stream; 2];
        }
        let cf = cfg.final_channels();
        let widest = arch.widest_channels();
        small += 3 * cf + 2 * cf * n + 2 * n * cfg.num_classes + 2 * widest;
        plan.small = small;
        plan.col = plan_col_len(&plan.routes, COL_BUDGET);
        plan.regions = arena::layout(|c| ResNetWorkspace::carve(arch, &plan, c));
        plan
    }

    /// Bytes of activation memory the plan allocates: its one allocation, every region of
    /// [`ResNetPlan::regions`] and the padding that aligns them.
    pub fn activation_bytes(&self) -> usize {
        arena::total_bytes(&self.regions)
    }

    /// The sizes above added up, before the regions are laid out.
    pub fn estimate_bytes(&self) -> usize {
        let sum = |v: &[usize]| v.iter().sum::<usize>();
        let nested = |v: &[Vec<usize>]| v.iter().map(|u| sum(u)).sum::<usize>();
        let floats = self.input
            + self.input_grad
            + sum(&self.stream)
            + nested(&self.kept_u)
            + nested(&self.kept_h)
            + sum(&self.scratch_h)
            + sum(&self.scratch_u)
            + 2 * self.stream_grad
            + self.scratch_dh
            + self.scratch_du
            + self.scratch_proj
            + self.col
            + self.small;
        4 * floats
    }
}

/// One unit's memory across a training pass.
#[derive(Debug, Default)]
pub struct UnitMemory {
    /// Batch statistics of x, u1, u2.
    pub stats: Vec<ChannelStats>,
    /// Training: u1, u2.
    pub u: Vec<Buf<f32>>,
    /// Naive training: h0, h1, h2 (empty otherwise).
    pub h: Vec<Buf<f32>>,
}

/// Shared scratch of a [`ResNetWorkspace`].
#[derive(Debug, Default)]
pub struct ResNetScratch {
    /// h0, h1, h2 (unless kept per unit).
    pub h: Vec<Buf<f32>>,
    /// Evaluation: u1, u2.
    pub u: Vec<Buf<f32>>,
    /// Gradients of the stream at the current unit's output and input, used in turn.
    pub grad: [Buf<f32>; 2],
    /// Gradient of a 3×3 layer's h.
    pub dh: Buf<f32>,
    /// Gradient of u1 / u2.
    pub du: Buf<f32>,
    /// Projection output / gradient share.
    pub proj: Buf<f32>,
    /// im2col.
    pub col: Buf<f32>,
    /// Per-channel BN scale.
    pub scale: Buf<f32>,
    /// Per-channel BN shift.
    pub shift: Buf<f32>,
}

/// Every activation buffer of a pre-activation ResNet, allocated once from a
/// [`ResNetPlan`].
#[derive(Debug)]
pub struct ResNetWorkspace {
    /// The plan it was allocated from.
    pub plan: ResNetPlan,
    /// Images in the current batch (≤ `plan.batch`).
    pub n: usize,
    /// Whether the last forward pass ran in training mode.
    pub training: bool,
    /// The input, channel-major.
    pub input: Buf<f32>,
    /// Residual stream buffers (see [`ResNetPlan::stream`]).
    pub stream: Vec<Buf<f32>>,
    /// Per unit.
    pub units: Vec<UnitMemory>,
    /// Shared scratch.
    pub scratch: ResNetScratch,
    /// Batch statistics of the final BN's input.
    pub final_stats: ChannelStats,
    /// What every family's workspace holds: its batch and mode, the input gradient, the
    /// classifier's memory, the routes of the pass in use.
    pub core: WorkspaceCore,
    /// The one allocation behind every buffer above and its region table (declared last:
    /// dropped after them).
    pub alloc: Allocation,
}

impl ResNetWorkspace {
    /// Allocates every buffer of `plan` for `arch`, in one allocation.
    pub fn new(arch: &Architecture, plan: ResNetPlan) -> Self {
        let (alloc, mut ws) = carve(|c| Self::carve(arch, &plan, c));
        debug_assert_eq!(alloc.regions, plan.regions);
        (ws.alloc, ws.plan) = (alloc, plan);
        ws
    }

    /// Takes every buffer of `plan` from `c`, in the order of the region table.
    fn carve(arch: &Architecture, plan: &ResNetPlan, c: &mut Carver) -> Self {
        let cfg = &arch.config;
        let n = plan.batch;
        let input = c.take("input", plan.input);
        let input_grad = c.take("input_grad", plan.input_grad);
        let stream = (plan.stream.iter().enumerate())
            .map(|(i, &m)| c.take(format_args!("stream{i}"), m))
            .collect();
        let units = arch
            .units()
            .enumerate()
            .map(|(t, unit)| {
                let name = format!("unit{}", t + 1);
                let list = |c: &mut Carver, what: &str, v: Option<&Vec<usize>>| -> Vec<Buf<f32>> {
                    (v.into_iter().flatten().enumerate())
                        .map(|(j, &m)| c.take(format_args!("{name}.{what}{}", j + 1), m))
                        .collect()
                };
                UnitMemory {
                    stats: (unit.layers.iter().enumerate())
                        .map(|(j, (bn, _))| {
                            ChannelStats::carve(c, &format!("{name}.bn{}", j + 1), bn.c)
                        })
                        .collect(),
                    u: list(c, "u", plan.kept_u.get(t)),
                    h: list(c, "h", plan.kept_h.get(t)),
                }
            })
            .collect();
        let cf = cfg.final_channels();
        let widest = arch.widest_channels();
        let scratch = ResNetScratch {
            h: (plan.scratch_h.iter().enumerate())
                .map(|(j, &m)| c.take(format_args!("scratch.h{j}"), m))
                .collect(),
            u: (plan.scratch_u.iter().enumerate())
                .map(|(j, &m)| c.take(format_args!("scratch.u{}", j + 1), m))
                .collect(),
            grad: [
                c.take("scratch.grad0", plan.stream_grad),
                c.take("scratch.grad1", plan.stream_grad),
            ],
            dh: c.take("scratch.dh", plan.scratch_dh),
            du: c.take("scratch.du", plan.scratch_du),
            proj: c.take("scratch.proj", plan.scratch_proj),
            col: c.take("scratch.col", plan.col),
            scale: c.take("scratch.scale", widest),
            shift: c.take("scratch.shift", widest),
        };
        ResNetWorkspace {
            n,
            training: false,
            input,
            stream,
            units,
            scratch,
            final_stats: ChannelStats::carve(c, "final.stats", cf),
            core: WorkspaceCore {
                batch: plan.batch,
                training: plan.training,
                activation_bytes: plan.activation_bytes(),
                input_grad,
                head: HeadMemory::carve(c, cf, cfg.num_classes, n, plan.training),
                routes: plan.routes.clone(),
            },
            alloc: Allocation::default(),
            plan: plan.clone(),
        }
    }

    /// Bytes of activation memory held: the one allocation, as the plan's table says.
    pub fn activation_bytes(&self) -> usize {
        self.alloc.bytes()
    }
}
