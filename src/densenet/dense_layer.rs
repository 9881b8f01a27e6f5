//! The dense layer (paper §3, "Composite function" and "Bottleneck layers"), forward and
//! backward.
//!
//! Layer ℓ of a block reads the m = k0 + k·(ℓ−1) channels before it in the block buffer
//! (the concatenation `[x0, y1, …, y(ℓ−1)]`, oldest first, is simply the buffer's prefix)
//! and appends its k output channels:
//!
//! ```text
//! plain      A = relu(BN1(X))  →  Y = conv3×3(A)                              [→ dropout]
//! bottleneck A = relu(BN1(X))  →  B = conv1×1(A) [→ dropout]  (bn_size·k maps)
//!            C = relu(BN2(B))  →  Y = conv3×3(C)                              [→ dropout]
//! ```
//!
//! In memory-efficient mode nothing of a layer outlives its pass except its k channels
//! and statistics (Pleiss et al.): B lives in scratch shared by all layers, and
//! [`DenseLayer::backward`] recomputes it from the block buffer and the stored batch
//! statistics. A and C are never written out at all: the 1×1 convolution forms A a tile
//! at a time ([`crate::ops::fused`]) and the direct 3×3 kernel forms C (or a plain
//! layer's A) in its zero-padded copy, in forward and again in backward. The backward of
//! the bottleneck's BN1-ReLU-conv1×1 ([`crate::ops::fused::backward`]) forms A's gradient
//! a tile at a time too, and leaves the part of BN1's input gradient that needs sums over
//! all positions pending per channel: every reader of a channel normalises it with the
//! same batch statistics, so those parts add up to one affine map of the channel, applied
//! once by its producer ([`BlockMemory::complete_grads`]) before it reads its gradient.
//! In naive mode each layer keeps its own A, B and C.

use super::arch::DenseLayer;
use crate::densenet::memory::{BlockMemory, DenseNetWorkspace, Scratch};
use crate::nn::layers::Conv1x1At;
use crate::ops::conv::{conv_backward, conv_forward, pointwise_backward_in_place};
use crate::ops::dropout;
use crate::ops::fused::{self, BnRelu};
use crate::ops::norm::{bn_relu_backward, bn_relu_backward_into, bn_relu_forward, OutGrad};

impl DenseLayer {
    /// Forward: reads channels `0..m` of block `b`'s buffer, writes `m..m+k`. In training
    /// it also records the batch statistics of B and of the new channels.
    pub(crate) fn forward(
        &self,
        p: &[f32],
        running: &mut [f32],
        ws: &mut DenseNetWorkspace,
        b: usize,
        i: usize,
        size: usize,
    ) {
        let (n, training, seed) = (ws.n, ws.training, ws.dropout_seed);
        let len = n * size * size;
        let (m, k) = (self.c_in, self.growth());
        let drop = if training { self.drop_rate } else { 0.0 };
        let r1 = ws.core.routes.of(self.conv1.weight);
        let r2 = self
            .bottleneck
            .as_ref()
            .map(|(_, c)| ws.core.routes.of(c.weight));
        let BlockMemory {
            feats,
            stats,
            layers,
            ..
        } = &mut ws.blocks[b];
        let Scratch {
            a,
            b: sb,
            c: sc,
            col,
            scale,
            shift,
            ..
        } = &mut ws.scratch;
        let lm = &mut layers[i];
        let [ka, kb, kc] = &mut lm.kept;
        let naive = !ka.is_empty();
        let (x, rest) = feats.split_at_mut(m * len);
        let y = &mut rest[..k * len];

        let batch = training.then_some(&*stats);
        self.norm1
            .forward_affine(p, running, batch, len, scale, shift);
        match &self.bottleneck {
            Some((norm2, conv2)) => {
                let w = conv2.cin;
                // B in the layer's own buffer where the plan keeps it, else in scratch
                let bb = if kb.is_empty() {
                    &mut sb[..w * len]
                } else {
                    &mut kb[..w * len]
                };
                let cb = if naive {
                    &mut kc[..w * len]
                } else {
                    &mut sc[..w * len]
                };
                if naive {
                    let a = &mut ka[..m * len];
                    bn_relu_forward(a, x, &scale[..m], &shift[..m], len);
                    let s1 = self.conv1.shape(n, size);
                    conv_forward(bb, a, self.conv1.w(p), &s1, r1.forward, col);
                } else {
                    // B = W1·relu(BN1(X)) with A formed tile by tile, never stored
                    let bn1 = BnRelu::first(scale, shift, m);
                    fused::forward(bb, x, self.conv1.w(p), bn1, w, len, r1.forward);
                }
                dropout::apply(bb, drop, seed, self.site(1));
                if training {
                    lm.bn2.compute(bb, 0, w, len);
                }
                let batch = training.then_some(&lm.bn2);
                norm2.forward_affine(p, running, batch, len, scale, shift);
                let s2 = conv2.shape(n, size);
                let r2 = r2.expect("a bottleneck's 3×3 is planned");
                if naive {
                    bn_relu_forward(cb, bb, &scale[..w], &shift[..w], len);
                    conv_forward(y, cb, conv2.w(p), &s2, r2.forward, col);
                } else {
                    // C = relu(BN2(B)) only inside the 3×3's padded copy
                    let bn2 = BnRelu::first(scale, shift, w);
                    fused::conv3x3_forward(y, bb, bn2, conv2.w(p), &s2, r2.forward, col, cb);
                }
            }
            None => {
                let s1 = self.conv1.shape(n, size);
                if naive {
                    let a = &mut ka[..m * len];
                    bn_relu_forward(a, x, &scale[..m], &shift[..m], len);
                    conv_forward(y, a, self.conv1.w(p), &s1, r1.forward, col)
                } else {
                    let bn1 = BnRelu::first(scale, shift, m);
                    let a = &mut a[..m * len];
                    fused::conv3x3_forward(y, x, bn1, self.conv1.w(p), &s1, r1.forward, col, a);
                }
            }
        }
        dropout::apply(y, drop, seed, self.site(2));
        if training {
            stats.compute(feats, m, m + k, len);
        }
    }

    /// Backward: takes the (complete) gradient of its k output channels from the block's
    /// gradient buffer, accumulates into the gradient of channels `0..m` and into its
    /// parameters' gradients. Recomputes A, B and C first in memory-efficient mode.
    pub(crate) fn backward(
        &self,
        p: &[f32],
        g: &mut [f32],
        ws: &mut DenseNetWorkspace,
        b: usize,
        i: usize,
        size: usize,
    ) {
        let (n, seed) = (ws.n, ws.dropout_seed);
        let len = n * size * size;
        let (m, k) = (self.c_in, self.growth());
        let drop = self.drop_rate;
        // every reader of this layer's output channels is done: complete their gradient
        ws.blocks[b].complete_grads(m..m + k, len);
        let r1 = ws.core.routes.of(self.conv1.weight);
        let r2 = self
            .bottleneck
            .as_ref()
            .map(|(_, c)| ws.core.routes.of(c.weight));
        let BlockMemory {
            feats,
            grads,
            stats,
            layers,
            pending,
            ..
        } = &mut ws.blocks[b];
        let Scratch {
            a,
            da,
            b: sb,
            c: sc,
            dc,
            tmp,
            col,
            scale,
            shift,
        } = &mut ws.scratch;
        let lm = &mut layers[i];
        let [ka, kb, kc] = &mut lm.kept;
        let naive = !ka.is_empty();
        let x = &feats[..m * len];
        let (dx, drest) = grads.split_at_mut(m * len);
        let dy_out = &drest[..k * len];

        // Gradient through the output dropout: the mask is recomputed from its seed.
        let dy: &[f32] = if drop > 0.0 {
            let t = &mut tmp[..k * len];
            t.copy_from_slice(dy_out);
            dropout::apply(t, drop, seed, self.site(2));
            t
        } else {
            dy_out
        };
        let da: &[f32] = match &self.bottleneck {
            Some((norm2, conv2)) => {
                let w = conv2.cin;
                let kept_b = !kb.is_empty();
                let bb = if kept_b {
                    &mut kb[..w * len]
                } else {
                    &mut sb[..w * len]
                };
                let cb = if naive {
                    &mut kc[..w * len]
                } else {
                    &mut sc[..w * len]
                };
                let s2 = conv2.shape(n, size);
                let r2 = r2.expect("a bottleneck's 3×3 is planned");
                let dcb = &mut dc[..w * len];
                if naive {
                    // conv2: dW2 += dY·col(C)ᵀ, dC = col2im(W2ᵀ·dY)
                    norm2.batch_affine(p, &lm.bn2, scale, shift);
                    let (dw2, w2) = (conv2.dw(g), conv2.w(p));
                    conv_backward(Some(&mut *dcb), dw2, dy, cb, w2, &s2, &r2, col);
                } else {
                    // recompute B unless kept (A formed tile by tile, as in forward); C
                    // again only inside the 3×3's padded copy
                    if !kept_b {
                        self.norm1.batch_affine(p, stats, scale, shift);
                        let bn1 = BnRelu::first(scale, shift, m);
                        fused::forward(bb, x, self.conv1.w(p), bn1, w, len, r1.forward);
                        dropout::apply(bb, drop, seed, self.site(1));
                    }
                    norm2.batch_affine(p, &lm.bn2, scale, shift);
                    let bn2 = BnRelu::first(scale, shift, w);
                    let (dw2, w2) = (conv2.dw(g), conv2.w(p));
                    let dcb = Some(&mut *dcb);
                    fused::conv3x3_backward(dcb, dw2, dy, bb, bn2, w2, &s2, &r2, col, cb);
                }
                // BN2-ReLU: dB, written where C was (C is dead now)
                let db = cb;
                let (dg2, dbeta2) = norm2.grads(g);
                let st2 = &lm.bn2;
                bn_relu_backward_into(
                    db,
                    dg2,
                    dbeta2,
                    OutGrad::Dense(dcb),
                    bb,
                    &st2.mean,
                    &st2.rstd,
                    &scale[..w],
                    &shift[..w],
                    norm2.gamma(p),
                    len,
                );
                dropout::apply(db, drop, seed, self.site(1));
                if !naive {
                    // conv1 and BN1-ReLU in one: A and dA only ever exist a tile at a time
                    let (n1, c1) = (&self.norm1, &self.conv1);
                    let route = r1.weight_grad.expect("a training plan's routes");
                    let at = Conv1x1At::Positions(len, route);
                    n1.relu_conv1x1_backward(c1, p, g, stats, scale, shift, x, dx, pending, db, at);
                    return;
                }
                // conv1 (1×1): dW1 += dB·Aᵀ, then A's storage becomes dA = W1ᵀ·dB
                let s1 = self.conv1.shape(n, size);
                let a = &mut ka[..m * len];
                pointwise_backward_in_place(a, self.conv1.dw(g), db, self.conv1.w(p), &s1);
                a
            }
            None => {
                let da = &mut da[..m * len];
                let s1 = self.conv1.shape(n, size);
                let (dw1, w1) = (self.conv1.dw(g), self.conv1.w(p));
                if naive {
                    conv_backward(Some(&mut *da), dw1, dy, &ka[..m * len], w1, &s1, &r1, col);
                } else {
                    // scratch for the fallback, where the direct kernel does not apply
                    let a = &mut a[..m * len];
                    // A = relu(BN1(X)) again only inside the 3×3's padded copy
                    self.norm1.batch_affine(p, stats, scale, shift);
                    let bn1 = BnRelu::first(scale, shift, m);
                    let da = Some(&mut *da);
                    fused::conv3x3_backward(da, dw1, dy, x, bn1, w1, &s1, &r1, col, a);
                }
                da
            }
        };
        // BN1-ReLU: accumulate into the gradient of every input channel.
        self.norm1.batch_affine(p, stats, scale, shift);
        let (dg1, db1) = self.norm1.grads(g);
        bn_relu_backward(
            dx,
            dg1,
            db1,
            OutGrad::Dense(da),
            x,
            &stats.mean[..m],
            &stats.rstd[..m],
            &scale[..m],
            &shift[..m],
            self.norm1.gamma(p),
            len,
        );
    }
}
