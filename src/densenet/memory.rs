//! The memory plan: where every activation lives, decided once per batch size.
//!
//! Pleiss et al. (*Memory-Efficient Implementation of DenseNets*, 2017) observe that a
//! naive DenseNet allocates, at every layer ℓ, a fresh concatenation of all earlier maps and
//! a fresh BN-ReLU output of it: Θ(ℓ) floats per layer, Θ(L²) in all. Their fix, which this
//! plan implements, keeps across the forward pass only what is linear in depth:
//!
//! - **the block buffer**: each dense block's features live in one `[C_out][N·H·W]` buffer;
//!   layer ℓ reads the contiguous prefix of its `m` input channels and appends its k
//!   output channels after it, so concatenation copies nothing;
//! - **per-channel batch statistics** of that buffer (a channel's batch mean and variance
//!   are the same for every layer that normalises it, so they are computed once);
//! - **a gradient buffer** of the same shape per block, where every reader of a channel
//!   accumulates its gradient.
//!
//! The BN-ReLU output `A` of a layer's input and `C` of the bottleneck output `B` are
//! recomputed rather than kept, and never even stored whole: the convolution that reads
//! them forms them a tile at a time (`ops::fused`), and so does the backward pass with `A`'s
//! gradient. `B` lives in a **scratch buffer shared by all layers** and is recomputed
//! during the backward pass from the block buffer and the stored statistics
//! ([`MemoryMode::Efficient`]).
//! [`MemoryMode::Naive`] instead keeps `A`, `B` and `C` of every layer, as a framework that
//! materialises each concatenation would: it is the reference for memory and time.
//!
//! Buffers are sized for the largest batch and reused for smaller ones; nothing is
//! allocated inside a step.

use super::arch::Architecture;
use crate::densenet::config::Stem;
use crate::model::interface::WorkspaceCore;
use crate::nn::arena::{self, carve, Allocation, Buf, Carver, Region};
use crate::nn::{ChannelStats, HeadMemory, MemoryMode};
use crate::ops::conv::plan_col_len;
use crate::ops::route::{Reads, Routes};
use serde::Serialize;

/// im2col scratch budget in floats (16 MiB): big enough that the GEMMs stay efficient
/// (thousands of columns), small enough not to matter next to the block buffers.
const COL_BUDGET: usize = 4 << 20;

/// Share of the rest of an efficient-mode training plan that bottleneck outputs `B` may
/// take to spare their recomputation (see `DenseNetPlan::keep_bottlenecks`).
pub const KEEP_B_SHARE: f64 = 0.25;

/// Floats kept by one dense layer: in naive mode its `A`, `B` and `C`; in efficient mode
/// at most its `B`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct KeptLayer {
    /// BN-ReLU of the layer's input, `m × len`.
    pub a: usize,
    /// Bottleneck output, `bn_size·k × len` (0 without bottleneck).
    pub b: usize,
    /// BN-ReLU of the bottleneck output (0 without bottleneck).
    pub c: usize,
}

/// Sizes (in floats, unless named otherwise) of every activation buffer for one batch size,
/// and the route of every convolution at that size.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DenseNetPlan {
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
    /// ImageNet stem: the 7×7 convolution's output (BN0's input).
    pub stem_z: usize,
    /// ImageNet stem: the max pool's argmax (u32 entries).
    pub stem_argmax: usize,
    /// Each block's feature buffer.
    pub block_feats: Vec<usize>,
    /// Each block's gradient buffer (training only).
    pub block_grads: Vec<usize>,
    /// What each dense layer keeps, per block: naive mode A, B and C; efficient mode
    /// (training) B of the layers `keep_bottlenecks` picks.
    pub kept_layers: Vec<Vec<KeptLayer>>,
    /// Naive mode: each transition's kept BN-ReLU output.
    pub kept_transitions: Vec<usize>,
    /// Shared scratch: a plain layer's BN-ReLU output `A` where the direct 3×3 kernel does
    /// not apply (elsewhere efficient mode never stores A or its gradient: `ops::fused`
    /// forms both a tile at a time); the stem's ReLU output.
    pub scratch_a: usize,
    /// Shared scratch: gradient of `A` for 3×3 layers without bottleneck.
    pub scratch_da: usize,
    /// Shared scratch: bottleneck output `B`.
    pub scratch_b: usize,
    /// Shared scratch: `C` where the direct 3×3 kernel does not apply (it forms C in its
    /// padded copy), then the gradient of `B`.
    pub scratch_c: usize,
    /// Shared scratch: gradient of `C`.
    pub scratch_dc: usize,
    /// Shared scratch: a transition's full-resolution output and its gradient, dropout.
    pub scratch_tmp: usize,
    /// im2col scratch.
    pub col: usize,
    /// Statistics, pooled features, logits and other per-channel vectors (an estimate,
    /// for the budget of [`DenseNetPlan::keep_bottlenecks`]).
    pub small: usize,
    /// Where every buffer lives in the workspace's one allocation (what
    /// [`DenseNetWorkspace::new`] carves; `densenet summary MODEL --plan` prints it).
    pub regions: Vec<Region>,
    /// Which algorithm runs each convolution at this batch size (`ops::route`).
    pub routes: Routes,
}

impl DenseNetPlan {
    /// Plans the buffers of `arch` for batches of up to `batch` images.
    pub fn new(arch: &Architecture, batch: usize, mode: MemoryMode, training: bool) -> Self {
        let cfg = &arch.config;
        let n = batch.max(1);
        let s = cfg.input_size;
        let naive = training && mode == MemoryMode::Naive;
        let width = cfg.bn_size * cfg.growth_rate;
        let k = cfg.growth_rate;
        let mut plan = DenseNetPlan {
            batch: n,
            mode,
            training,
            input: cfg.in_channels * n * s * s,
            input_grad: if training {
                cfg.in_channels * n * s * s
            } else {
                0
            },
            stem_z: 0,
            stem_argmax: 0,
            block_feats: vec![],
            block_grads: vec![],
            kept_layers: vec![],
            kept_transitions: vec![],
            scratch_a: 0,
            scratch_da: 0,
            scratch_b: 0,
            scratch_c: 0,
            scratch_dc: 0,
            scratch_tmp: 0,
            col: 0,
            small: 0,
            regions: vec![],
            routes: Routes::new(n, training),
        };
        let mut small = 0;
        if cfg.stem == Stem::ImageNet {
            let z = arch.stem_conv_size(s);
            plan.stem_z = cfg.init_features * n * z * z;
            plan.stem_argmax = cfg.init_features * n * arch.blocks[0].size.pow(2);
            // the ReLU output feeds the max pool (forward) and receives its gradient
            plan.scratch_a = plan.stem_z;
            // BN0's input gradient
            if training {
                plan.scratch_tmp = plan.stem_z;
            }
            small += 3 * cfg.init_features;
        }
        for block in &arch.blocks {
            let len = n * block.size * block.size;
            plan.block_feats.push(block.c_out * len);
            if training {
                plan.block_grads.push(block.c_out * len);
            }
            small += 3 * block.c_out;
            let mut kept = vec![];
            for layer in &block.layers {
                let m = layer.c_in;
                let bottleneck = layer.bottleneck.is_some();
                let (a, bc) = (m * len, if bottleneck { width * len } else { 0 });
                if naive {
                    kept.push(KeptLayer { a, b: bc, c: bc });
                } else {
                    kept.push(KeptLayer::default());
                    // A of a bottleneck is formed a tile at a time (`ops::fused`); a plain
                    // layer's 3×3 may need it written out (its fallback path)
                    if !bottleneck {
                        plan.scratch_a = plan.scratch_a.max(a);
                    }
                    plan.scratch_b = plan.scratch_b.max(bc);
                    plan.scratch_c = plan.scratch_c.max(bc);
                }
                if training {
                    if bottleneck {
                        plan.scratch_dc = plan.scratch_dc.max(bc);
                    } else {
                        plan.scratch_da = plan.scratch_da.max(a);
                    }
                    if cfg.drop_rate > 0.0 {
                        plan.scratch_tmp = plan.scratch_tmp.max(k * len);
                    }
                }
                small += 3 * width;
            }
            plan.kept_layers.push(kept);
            if let Some(t) = &block.transition {
                let a = block.c_out * len;
                // efficient mode: A (and dA) only a tile at a time (`ops::fused`)
                plan.kept_transitions.push(if naive { a } else { 0 });
                plan.scratch_tmp = plan.scratch_tmp.max(t.conv.cout * len);
            }
        }
        let cf = cfg.final_channels();
        small += 2 * cf * n + 2 * n * cfg.num_classes + 2 * cf.max(width);
        plan.routes = Self::routes(arch, n, naive, training, plan.scratch_tmp);
        plan.col = plan_col_len(&plan.routes, COL_BUDGET);
        plan.small = small;
        if training && !naive {
            plan.keep_bottlenecks(arch, n);
        }
        plan.regions = arena::layout(|c| DenseNetWorkspace::carve(arch, &plan, c));
        plan
    }

    /// Every convolution's routes for batches of `n` (`ops::route`): efficient mode reads
    /// the BN-ReLU of its inputs on the fly, naive mode the BN-ReLU outputs it keeps;
    /// transitions are asked with their dropout and the `tmp` scratch.
    fn routes(arch: &Architecture, n: usize, naive: bool, training: bool, tmp: usize) -> Routes {
        let reads = if naive { Reads::Stored } else { Reads::BnRelu };
        let s = arch.config.input_size;
        let mut r = Routes::new(n, training);
        let c0 = &arch.conv0;
        r.push(&c0.name, c0.weight, c0.shape(n, s), Reads::Stored);
        for block in &arch.blocks {
            for layer in &block.layers {
                let c1 = &layer.conv1;
                r.push(&c1.name, c1.weight, c1.shape(n, block.size), reads);
                if let Some((_, c2)) = &layer.bottleneck {
                    r.push(&c2.name, c2.weight, c2.shape(n, block.size), reads);
                }
            }
            if let Some(t) = &block.transition {
                let c = &t.conv;
                let sh = c.shape(n, block.size);
                r.push_transition(&c.name, c.weight, sh, t.drop_rate, tmp, naive);
            }
        }
        r
    }

    /// Efficient mode: lets the bottleneck layers whose recomputation costs the most per
    /// byte keep their `B` after all, within [`KEEP_B_SHARE`] of the rest of the plan.
    ///
    /// Recomputing `B = W1·relu(BN1(X))` in the backward pass repeats the whole 1×1
    /// forward (~12% of a BC-100 step); keeping it costs `bn_size·k × len` floats, the
    /// same for every layer of a block. Per byte saved, a recomputation costs `2·m`
    /// FLOPs (m input channels), so the layers with the most input channels go first.
    /// The budget is a fixed share of memory that is itself linear in depth, so the plan
    /// stays linear in depth; Pleiss et al. keep every `B` (only the concatenation and
    /// BN-ReLU outputs are shared and recomputed), which would add ~100% at BC-100.
    fn keep_bottlenecks(&mut self, arch: &Architecture, n: usize) {
        let width = arch.config.bn_size * arch.config.growth_rate;
        let mut budget = (self.estimate_bytes() as f64 * KEEP_B_SHARE / 4.0) as usize;
        let mut layers: Vec<(usize, usize, usize, usize)> = vec![];
        for (b, block) in arch.blocks.iter().enumerate() {
            let len = n * block.size * block.size;
            for (i, layer) in block.layers.iter().enumerate() {
                if layer.bottleneck.is_some() {
                    layers.push((layer.c_in, b, i, width * len));
                }
            }
        }
        // most input channels first; among equals the smaller B, then the later block
        layers.sort_by(|x, y| y.0.cmp(&x.0).then(x.3.cmp(&y.3)).then(y.1.cmp(&x.1)));
        for (_, b, i, floats) in layers {
            if floats <= budget {
                budget -= floats;
                self.kept_layers[b][i].b = floats;
            }
        }
    }

    /// Bytes of activation memory the plan allocates: its one allocation, every region of
    /// [`DenseNetPlan::regions`] and the padding that aligns them.
    pub fn activation_bytes(&self) -> usize {
        arena::total_bytes(&self.regions)
    }

    /// The sizes above added up, before the regions are laid out (the per-channel
    /// vectors estimated).
    fn estimate_bytes(&self) -> usize {
        let kept: usize = self
            .kept_layers
            .iter()
            .flatten()
            .map(|k| k.a + k.b + k.c)
            .sum::<usize>()
            + self.kept_transitions.iter().sum::<usize>();
        let floats = self.input
            + self.input_grad
            + self.stem_z
            + self.block_feats.iter().sum::<usize>()
            + self.block_grads.iter().sum::<usize>()
            + kept
            + self.scratch_a
            + self.scratch_da
            + self.scratch_b
            + self.scratch_c
            + self.scratch_dc
            + self.scratch_tmp
            + self.col
            + self.small;
        4 * (floats + self.stem_argmax)
    }
}

/// One dense block's memory.
#[derive(Debug, Default)]
pub struct BlockMemory {
    /// `[C_out][N·H·W]` features; the block input occupies the first channels.
    pub feats: Buf<f32>,
    /// Gradient of `feats`.
    pub grads: Buf<f32>,
    /// Batch statistics of each channel of `feats`.
    pub stats: ChannelStats,
    /// Per-layer memory.
    pub layers: Vec<LayerMemory>,
    /// Naive mode: the transition's BN-ReLU output.
    pub kept_transition: Buf<f32>,
    /// Per channel, the part of its gradient its readers left pending (see
    /// [`crate::ops::fused::backward`]): `(c0, c1)` of `grads += c0 + c1·(feats − mean)`.
    pub pending: Buf<(f64, f64)>,
}

impl BlockMemory {
    /// Completes the gradient of channels `c` (every reader of them is done): applies and
    /// clears what their readers left pending.
    pub fn complete_grads(&mut self, c: std::ops::Range<usize>, len: usize) {
        crate::ops::norm::apply_pending(
            &mut self.grads[c.start * len..c.end * len],
            &self.feats[c.start * len..c.end * len],
            &self.stats.mean[c.clone()],
            &mut self.pending[c],
            len,
        );
    }
}

/// One dense layer's memory across the pass.
#[derive(Debug, Default)]
pub struct LayerMemory {
    /// Batch statistics of the bottleneck output (BN2's input).
    pub bn2: ChannelStats,
    /// `A`, `B`, `C` of this layer in naive mode; in efficient mode only `B`, and only for
    /// the layers [`DenseNetPlan::kept_layers`] names (the others are empty).
    pub kept: [Buf<f32>; 3],
}

/// Shared scratch buffers (see [`DenseNetPlan`]).
#[derive(Debug, Default)]
pub struct Scratch {
    /// `A` of a plain layer (fallback 3×3 path only), stem ReLU output / its gradient.
    pub a: Buf<f32>,
    /// `dA` of 3×3 layers.
    pub da: Buf<f32>,
    /// `B`.
    pub b: Buf<f32>,
    /// `C`, then `dB`.
    pub c: Buf<f32>,
    /// `dC`.
    pub dc: Buf<f32>,
    /// Transition output / gradient, dropout-masked gradients, stem BN0 gradient.
    pub tmp: Buf<f32>,
    /// im2col.
    pub col: Buf<f32>,
    /// Per-channel BN scale.
    pub scale: Buf<f32>,
    /// Per-channel BN shift.
    pub shift: Buf<f32>,
}

/// Every activation buffer of a network, allocated once from a [`DenseNetPlan`].
#[derive(Debug)]
pub struct DenseNetWorkspace {
    /// The plan it was allocated from.
    pub plan: DenseNetPlan,
    /// Images in the current batch (≤ `plan.batch`).
    pub n: usize,
    /// Whether the last forward pass ran in training mode.
    pub training: bool,
    /// Dropout seed of the current step.
    pub dropout_seed: u64,
    /// The input, channel-major.
    pub input: Buf<f32>,
    /// ImageNet stem convolution output.
    pub stem_z: Buf<f32>,
    /// ImageNet stem BN0 batch statistics.
    pub stem_stats: ChannelStats,
    /// ImageNet stem max-pool argmax.
    pub stem_argmax: Buf<u32>,
    /// Dense blocks.
    pub blocks: Vec<BlockMemory>,
    /// Shared scratch.
    pub scratch: Scratch,
    /// What every family's workspace holds: its batch and mode, the input gradient, the
    /// classifier's memory, the routes of the pass in use.
    pub core: WorkspaceCore,
    /// The one allocation behind every buffer above and its region table (declared last:
    /// dropped after them).
    pub alloc: Allocation,
}

impl DenseNetWorkspace {
    /// Allocates every buffer of `plan` for `arch`, in one allocation.
    pub fn new(arch: &Architecture, plan: DenseNetPlan) -> Self {
        let (alloc, mut ws) = carve(|c| Self::carve(arch, &plan, c));
        debug_assert_eq!(alloc.regions, plan.regions);
        (ws.alloc, ws.plan) = (alloc, plan);
        ws
    }

    /// Takes every buffer of `plan` from `c`, in the order of the region table.
    fn carve(arch: &Architecture, plan: &DenseNetPlan, c: &mut Carver) -> Self {
        let cfg = &arch.config;
        let n = plan.batch;
        let width = cfg.bn_size * cfg.growth_rate;
        let input = c.take("input", plan.input);
        let input_grad = c.take("input_grad", plan.input_grad);
        let stem_z = c.take("stem.z", plan.stem_z);
        let stem_argmax = c.take("stem.argmax", plan.stem_argmax);
        let stem_stats = if cfg.stem == Stem::ImageNet {
            ChannelStats::carve(c, "stem.stats", cfg.init_features)
        } else {
            ChannelStats::default()
        };
        let blocks = arch
            .blocks
            .iter()
            .enumerate()
            .map(|(b, block)| {
                let name = format!("block{}", b + 1);
                BlockMemory {
                    feats: c.take(format_args!("{name}.feats"), plan.block_feats[b]),
                    grads: c.take(
                        format_args!("{name}.grads"),
                        plan.block_grads.get(b).copied().unwrap_or(0),
                    ),
                    stats: ChannelStats::carve(c, &format!("{name}.stats"), block.c_out),
                    pending: c.take(
                        format_args!("{name}.pending"),
                        if plan.training { block.c_out } else { 0 },
                    ),
                    layers: block
                        .layers
                        .iter()
                        .enumerate()
                        .map(|(i, layer)| {
                            let k = plan.kept_layers[b].get(i).copied().unwrap_or_default();
                            let name = format!("{name}.layer{}", i + 1);
                            let bn2 = if layer.bottleneck.is_some() {
                                ChannelStats::carve(c, &format!("{name}.bn2"), width)
                            } else {
                                ChannelStats::default()
                            };
                            LayerMemory {
                                bn2,
                                kept: [
                                    c.take(format_args!("{name}.a"), k.a),
                                    c.take(format_args!("{name}.b"), k.b),
                                    c.take(format_args!("{name}.c"), k.c),
                                ],
                            }
                        })
                        .collect(),
                    kept_transition: c.take(
                        format_args!("transition{}.a", b + 1),
                        plan.kept_transitions.get(b).copied().unwrap_or(0),
                    ),
                }
            })
            .collect();
        let cf = cfg.final_channels();
        let widest = arch
            .blocks
            .iter()
            .map(|b| b.c_out)
            .max()
            .unwrap_or(0)
            .max(width);
        let scratch = Scratch {
            a: c.take("scratch.a", plan.scratch_a),
            da: c.take("scratch.da", plan.scratch_da),
            b: c.take("scratch.b", plan.scratch_b),
            c: c.take("scratch.c", plan.scratch_c),
            dc: c.take("scratch.dc", plan.scratch_dc),
            tmp: c.take("scratch.tmp", plan.scratch_tmp),
            col: c.take("scratch.col", plan.col),
            scale: c.take("scratch.scale", widest),
            shift: c.take("scratch.shift", widest),
        };
        DenseNetWorkspace {
            n,
            training: false,
            dropout_seed: 0,
            input,
            stem_z,
            stem_stats,
            stem_argmax,
            blocks,
            scratch,
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
