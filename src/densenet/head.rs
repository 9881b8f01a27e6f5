//! The head, forward and backward: final BN-ReLU, global average pooling and the linear
//! classifier (`features.norm_final`/`norm5`, functional ReLU and pool, `classifier`).

use super::arch::Architecture;
use crate::densenet::memory::DenseNetWorkspace;
use crate::ops::linear::{linear_backward, linear_forward};
use crate::ops::norm::{bn_relu_avgpool_forward, bn_relu_backward, OutGrad};
use crate::util::tensor::Tensor;

/// Forward: pooled features `ws.core.head.pooled [C][N]`, then `ws.core.head.logits [N][classes]`.
pub(crate) fn forward(
    arch: &Architecture,
    p: &[f32],
    running: &mut [f32],
    ws: &mut DenseNetWorkspace,
) {
    let cfg = &arch.config;
    let (n, j) = (ws.n, cfg.num_classes);
    let last = arch.blocks.last().expect("at least one block");
    let (c, hw) = (last.c_out, last.size * last.size);
    let blk = ws.blocks.last_mut().expect("at least one block");
    let (scale, shift) = (&mut ws.scratch.scale, &mut ws.scratch.shift);
    let batch = ws.training.then_some(&blk.stats);
    arch.norm_final
        .forward_affine(p, running, batch, n * hw, scale, shift);
    let pooled = &mut ws.core.head.pooled[..c * n];
    bn_relu_avgpool_forward(pooled, &blk.feats, &scale[..c], &shift[..c], n, hw);
    let (w, bias) = p[arch.classifier..arch.classifier + j * c + j].split_at(j * c);
    linear_forward(&mut ws.core.head.logits, pooled, w, bias, n, c, j);
}

/// Backward from `ws.core.head.dlogits` into the last block's gradient buffer (accumulating).
pub(crate) fn backward(arch: &Architecture, p: &[f32], g: &mut [f32], ws: &mut DenseNetWorkspace) {
    let cfg = &arch.config;
    let (n, j) = (ws.n, cfg.num_classes);
    let last = arch.blocks.last().expect("at least one block");
    let (c, hw) = (last.c_out, last.size * last.size);
    let (dl, pooled) = (
        &ws.core.head.dlogits[..n * j],
        &ws.core.head.pooled[..c * n],
    );
    let off = arch.classifier;
    let (dw, db) = g[off..off + j * c + j].split_at_mut(j * c);
    let w = &p[off..off + j * c];
    let dpooled = &mut ws.core.head.dpooled[..c * n];
    linear_backward(dpooled, dw, db, dl, pooled, w, n, c, j);
    let blk = ws.blocks.last_mut().expect("at least one block");
    let (scale, shift) = (&mut ws.scratch.scale, &mut ws.scratch.shift);
    let norm = &arch.norm_final;
    norm.batch_affine(p, &blk.stats, scale, shift);
    let (dg, db) = norm.grads(g);
    bn_relu_backward(
        &mut blk.grads[..c * n * hw],
        dg,
        db,
        OutGrad::Pooled {
            dpool: dpooled,
            n,
            hw,
        },
        &blk.feats[..c * n * hw],
        &blk.stats.mean,
        &blk.stats.rstd,
        &scale[..c],
        &shift[..c],
        norm.gamma(p),
        n * hw,
    );
}

/// Backward from `ws.core.head.dlogits` through the classifier alone (fine-tuning with frozen
/// features): accumulates the classifier's gradients, nothing else.
pub(crate) fn backward_classifier(
    arch: &Architecture,
    p: &[f32],
    g: &mut [f32],
    ws: &mut DenseNetWorkspace,
) {
    let (n, j) = (ws.n, arch.config.num_classes);
    let c = arch.blocks.last().expect("at least one block").c_out;
    let off = arch.classifier;
    let (dw, db) = g[off..off + j * c + j].split_at_mut(j * c);
    let (dl, pooled) = (
        &ws.core.head.dlogits[..n * j],
        &ws.core.head.pooled[..c * n],
    );
    // the pooled features' gradient is computed too (a j·c·n product, next to nothing)
    // and not used
    let dpooled = &mut ws.core.head.dpooled[..c * n];
    linear_backward(dpooled, dw, db, dl, pooled, &p[off..off + j * c], n, c, j);
}

/// The final BN's output before the ReLU, NCHW (evaluation mode), for probes.
pub(crate) fn final_norm_output(
    arch: &Architecture,
    p: &[f32],
    running: &mut [f32],
    ws: &mut DenseNetWorkspace,
) -> Tensor {
    let last = arch.blocks.last().expect("at least one block");
    let (c, n, hw) = (last.c_out, ws.n, last.size * last.size);
    let (scale, shift) = (&mut ws.scratch.scale, &mut ws.scratch.shift);
    let mut snapshot = running.to_vec(); // the probe must not update running statistics
    let batch = ws
        .training
        .then_some(&ws.blocks.last().expect("block").stats);
    arch.norm_final
        .forward_affine(p, &mut snapshot, batch, n * hw, scale, shift);
    let x = &ws.blocks.last().expect("block").feats;
    let mut out = vec![0.0; c * n * hw];
    for ci in 0..c {
        for ni in 0..n {
            for q in 0..hw {
                out[(ni * c + ci) * hw + q] = x[(ci * n + ni) * hw + q] * scale[ci] + shift[ci];
            }
        }
    }
    Tensor::new(vec![n, c, last.size, last.size], out)
}
