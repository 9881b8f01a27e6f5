//! The stem, forward and backward: what comes before the first dense block.
//!
//! CIFAR/SVHN: one 3×3 convolution (no BN or ReLU: the first dense layer's BN-ReLU
//! follows), written straight into the first block's buffer. ImageNet: 7×7 stride-2
//! convolution, BN, ReLU, 3×3 stride-2 max pool (torchvision's `conv0 norm0 relu0 pool0`).

use super::arch::Architecture;
use crate::densenet::config::Stem;
use crate::densenet::memory::{DenseNetWorkspace, Scratch};
use crate::ops::conv::{conv_backward, conv_forward};
use crate::ops::norm::{bn_relu_backward_into, bn_relu_forward, OutGrad};
use crate::ops::pool::{maxpool3s2_backward, maxpool3s2_forward};

/// Forward from `ws.input` into the prefix of block 1.
pub(crate) fn forward(
    arch: &Architecture,
    p: &[f32],
    running: &mut [f32],
    ws: &mut DenseNetWorkspace,
) {
    let cfg = &arch.config;
    let (n, s, c0) = (ws.n, cfg.input_size, cfg.init_features);
    let conv = &arch.conv0;
    let shape = conv.shape(n, s);
    let route = ws.core.routes.of(conv.weight);
    let size1 = arch.blocks[0].size;
    let len1 = n * size1 * size1;
    let Scratch {
        a,
        col,
        scale,
        shift,
        ..
    } = &mut ws.scratch;
    let input = &ws.input[..cfg.in_channels * n * s * s];
    let blk = &mut ws.blocks[0];
    match cfg.stem {
        Stem::Cifar => {
            conv_forward(
                &mut blk.feats[..c0 * len1],
                input,
                conv.w(p),
                &shape,
                route.forward,
                col,
            );
        }
        Stem::ImageNet => {
            let norm0 = arch.norm0.as_ref().expect("ImageNet stem has norm0");
            let zs = shape.ho();
            let len0 = n * zs * zs;
            let z = &mut ws.stem_z[..c0 * len0];
            conv_forward(z, input, conv.w(p), &shape, route.forward, col);
            if ws.training {
                ws.stem_stats.compute(z, 0, c0, len0);
            }
            let batch = ws.training.then_some(&ws.stem_stats);
            norm0.forward_affine(p, running, batch, len0, scale, shift);
            let r = &mut a[..c0 * len0];
            bn_relu_forward(r, z, &scale[..c0], &shift[..c0], len0);
            maxpool3s2_forward(
                &mut blk.feats[..c0 * len1],
                ws.training.then_some(&mut ws.stem_argmax[..c0 * len1]),
                r,
                c0 * n,
                zs,
                zs,
            );
        }
    }
    if ws.training {
        blk.stats.compute(&blk.feats, 0, c0, len1);
    }
}

/// Backward from the gradient of block 1's prefix; writes the input gradient
/// (channel-major) into `ws.core.input_grad` when `input_grad` is set.
pub(crate) fn backward(
    arch: &Architecture,
    p: &[f32],
    g: &mut [f32],
    ws: &mut DenseNetWorkspace,
    input_grad: bool,
) {
    let cfg = &arch.config;
    let (n, s, c0) = (ws.n, cfg.input_size, cfg.init_features);
    let conv = &arch.conv0;
    let shape = conv.shape(n, s);
    let route = ws.core.routes.of(conv.weight);
    let size1 = arch.blocks[0].size;
    let len1 = n * size1 * size1;
    let Scratch {
        a,
        tmp,
        col,
        scale,
        shift,
        ..
    } = &mut ws.scratch;
    let input = &ws.input[..cfg.in_channels * n * s * s];
    let dx = input_grad.then(|| &mut ws.core.input_grad[..cfg.in_channels * n * s * s]);
    let dy1 = &ws.blocks[0].grads[..c0 * len1];
    match cfg.stem {
        Stem::Cifar => conv_backward(dx, conv.dw(g), dy1, input, conv.w(p), &shape, &route, col),
        Stem::ImageNet => {
            let norm0 = arch.norm0.as_ref().expect("ImageNet stem has norm0");
            let zs = shape.ho();
            let len0 = n * zs * zs;
            let dr = &mut a[..c0 * len0];
            maxpool3s2_backward(dr, dy1, &ws.stem_argmax[..c0 * len1], c0 * n, zs, zs);
            // z has one reader: its gradient is written, not added to a zeroed buffer (a
            // 51 MB serial memset at batch 16)
            let dz = &mut tmp[..c0 * len0];
            norm0.batch_affine(p, &ws.stem_stats, scale, shift);
            let (dg, db) = norm0.grads(g);
            bn_relu_backward_into(
                dz,
                dg,
                db,
                OutGrad::Dense(dr),
                &ws.stem_z[..c0 * len0],
                &ws.stem_stats.mean,
                &ws.stem_stats.rstd,
                &scale[..c0],
                &shift[..c0],
                norm0.gamma(p),
                len0,
            );
            conv_backward(dx, conv.dw(g), dz, input, conv.w(p), &shape, &route, col);
        }
    }
}
