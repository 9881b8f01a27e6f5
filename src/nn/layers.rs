//! Handles to a layer's tensors in the flat parameter and statistics buffers: a batch norm
//! ([`BatchNorm`], with its affine maps and its fused backward through ReLU and a 1×1
//! convolution) and a convolution ([`Conv`]). Both families build their layers from these.

use super::params::TensorTable;
use super::stats::ChannelStats;
use crate::ops::conv::ConvShape;
use crate::ops::fused;
use crate::ops::norm;

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

/// Where the 1×1 of a [`BatchNorm::relu_conv1x1_backward`] ran.
pub(crate) enum Conv1x1At<'a> {
    /// On all `len` positions of its input, by a route (`ops::route`).
    Positions(usize, crate::ops::route::Route),
    /// On its input's BN-ReLU pooled 2×2 first (a transition, `n` samples of `size`²):
    /// `buf` is scratch for the pooled input and its gradient.
    Pooled {
        /// Scratch of `2·I·n·(size/2)²` floats.
        buf: &'a mut [f32],
        /// Samples.
        n: usize,
        /// Input height and width.
        size: usize,
    },
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
    /// `conv`, fused ([`crate::ops::fused::backward`], or with the output pooled first
    /// [`crate::ops::fused::pooled_backward`], as `at` says): from the conv's output
    /// gradient `dy`, accumulates the conv's and this BN's parameter gradients into `g` and
    /// the gradient of `x` into `dx`, except for the per-channel part left in `pending`
    /// (see the DenseNet's `BlockMemory::pending`). `scale` and `shift` are scratch.
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
        at: Conv1x1At<'_>,
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
        let (w, o_n) = (conv.w(p), conv.cout);
        match at {
            Conv1x1At::Positions(len, r) => {
                fused::backward(grads, dy, x, w, bn, batch, o_n, len, r)
            }
            Conv1x1At::Pooled { buf, n, size } => {
                fused::pooled_backward(grads, dy, x, w, bn, batch, buf, o_n, n, size)
            }
        }
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
