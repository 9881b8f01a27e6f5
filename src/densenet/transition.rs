//! The transition layer between dense blocks (paper §3, "Pooling layers"), forward and
//! backward: `Z = conv1×1(relu(BN(X)))` to ⌊θ·m⌋ channels [→ dropout], then 2×2 average
//! pooling, written as the prefix of the next block's buffer. Evaluation, and training
//! without dropout, pool first and convolve the pooled BN-ReLU: the same function (the
//! pool and the 1×1 commute) on a quarter of the positions.

use super::arch::Transition;
use crate::densenet::memory::{DenseNetWorkspace, Scratch};
use crate::nn::layers::Conv1x1At;
use crate::ops::conv::{conv_forward, pointwise_backward_in_place};
use crate::ops::dropout;
use crate::ops::fused::{self, BnRelu};
use crate::ops::norm::{bn_relu_backward, bn_relu_forward, OutGrad};
use crate::ops::pool::{avgpool2_backward, avgpool2_forward};

impl Transition {
    /// Forward from block `b` (spatial `size`) into the prefix of block `b + 1`.
    pub(crate) fn forward(
        &self,
        p: &[f32],
        running: &mut [f32],
        ws: &mut DenseNetWorkspace,
        b: usize,
        size: usize,
    ) {
        let (n, training, seed) = (ws.n, ws.training, ws.dropout_seed);
        let len = n * size * size;
        let (m, t) = (self.conv.cin, self.conv.cout);
        let route = ws.core.routes.of(self.conv.weight);
        let (cur, next) = ws.blocks.split_at_mut(b + 1);
        let (blk, nxt) = (&mut cur[b], &mut next[0]);
        let Scratch {
            tmp,
            col,
            scale,
            shift,
            ..
        } = &mut ws.scratch;
        let naive = !blk.kept_transition.is_empty();
        let batch = training.then_some(&blk.stats);
        self.norm
            .forward_affine(p, running, batch, len, scale, shift);
        let x = &blk.feats[..m * len];
        let pooled = n * (size / 2) * (size / 2);
        // pooled first where the route says (see `bn_relu_avgpool2_forward`)
        if route.pooled_first {
            let bn = BnRelu {
                scale: &scale[..m],
                shift: &shift[..m],
            };
            let y = &mut nxt.feats[..t * pooled];
            let w = self.conv.w(p);
            fused::pooled_forward(y, tmp, x, w, bn, t, n, size, route.forward);
            if training {
                nxt.stats.compute(&nxt.feats, 0, t, pooled);
            }
            return;
        }
        let z = &mut tmp[..t * len];
        if naive {
            let a = &mut blk.kept_transition[..m * len];
            bn_relu_forward(a, x, &scale[..m], &shift[..m], len);
            let s = self.conv.shape(n, size);
            conv_forward(z, a, self.conv.w(p), &s, route.forward, col);
        } else {
            let bn = BnRelu {
                scale: &scale[..m],
                shift: &shift[..m],
            };
            fused::forward(z, x, self.conv.w(p), bn, t, len, route.forward);
        }
        if training {
            dropout::apply(z, self.drop_rate, seed, self.site);
        }
        // `pooled`, not len / 4: an odd size drops a row and a column
        avgpool2_forward(&mut nxt.feats[..t * pooled], z, t * n, size, size);
        if training {
            nxt.stats.compute(&nxt.feats, 0, t, pooled);
        }
    }

    /// Backward: from the gradient of block `b + 1`'s prefix to block `b`'s gradient buffer.
    pub(crate) fn backward(
        &self,
        p: &[f32],
        g: &mut [f32],
        ws: &mut DenseNetWorkspace,
        b: usize,
        size: usize,
    ) {
        let (n, seed) = (ws.n, ws.dropout_seed);
        let len = n * size * size;
        let (m, t) = (self.conv.cin, self.conv.cout);
        let route = ws.core.routes.of(self.conv.weight);
        let (cur, next) = ws.blocks.split_at_mut(b + 1);
        let (blk, nxt) = (&mut cur[b], &next[0]);
        let Scratch {
            tmp, scale, shift, ..
        } = &mut ws.scratch;
        let naive = !blk.kept_transition.is_empty();
        let pooled = n * (size / 2) * (size / 2);
        if route.pooled_first {
            let (x, dx) = (&blk.feats[..m * len], &mut blk.grads[..m * len]);
            let (st, pending) = (&blk.stats, &mut blk.pending);
            let (norm, conv) = (&self.norm, &self.conv);
            let dy = &nxt.grads[..t * pooled];
            let at = Conv1x1At::Pooled { buf: tmp, n, size };
            norm.relu_conv1x1_backward(conv, p, g, st, scale, shift, x, dx, pending, dy, at);
            return;
        }
        let dz = &mut tmp[..t * len];
        avgpool2_backward(dz, &nxt.grads[..t * pooled], t * n, size, size);
        dropout::apply(dz, self.drop_rate, seed, self.site);
        if !naive {
            // conv and BN-ReLU in one: A and dA only ever exist a tile at a time
            let (x, dx) = (&blk.feats[..m * len], &mut blk.grads[..m * len]);
            let (st, pending) = (&blk.stats, &mut blk.pending);
            let (norm, conv) = (&self.norm, &self.conv);
            let r = route.weight_grad.expect("a training plan's routes");
            let at = Conv1x1At::Positions(len, r);
            norm.relu_conv1x1_backward(conv, p, g, st, scale, shift, x, dx, pending, dz, at);
            return;
        }
        self.norm.batch_affine(p, &blk.stats, scale, shift);
        let s = self.conv.shape(n, size);
        let a = &mut blk.kept_transition[..m * len];
        pointwise_backward_in_place(a, self.conv.dw(g), dz, self.conv.w(p), &s);
        let (dg, db) = self.norm.grads(g);
        bn_relu_backward(
            &mut blk.grads[..m * len],
            dg,
            db,
            OutGrad::Dense(a),
            &blk.feats[..m * len],
            &blk.stats.mean[..m],
            &blk.stats.rstd[..m],
            &scale[..m],
            &shift[..m],
            self.norm.gamma(p),
            len,
        );
    }
}
