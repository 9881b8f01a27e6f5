//! The full pre-activation residual unit (He et al. 2016, Fig. 1(b) and 4(e)), forward and
//! backward. Shapes are channel-major, `[C][N·H·W]`, as everywhere in the engine.
//!
//! A unit is a chain of k BN-ReLU-Conv layers (k = 2 basic, 3 bottleneck) plus a shortcut:
//!
//! ```text
//! basic       h0 = relu(BN1(x))   u1 = conv3×3/s(h0)
//!             h1 = relu(BN2(u1))  f  = conv3×3(h1)
//! bottleneck  h0 = relu(BN1(x))   u1 = conv1×1(h0)       (w channels)
//!             h1 = relu(BN2(u1))  u2 = conv3×3/s(h1)     (w channels, stride s)
//!             h2 = relu(BN3(u2))  f  = conv1×1(h2)       (4w channels)
//! y = f + x                       identity shortcut (same channels and size)
//! y = f + conv1×1/s(h0)           projection where the shape changes
//! ```
//!
//! The projection reads the *pre-activated* input h0, as in the authors' code
//! (KaimingHe/resnet-1k-layers: "common BN, ReLU" before the split) and fb.resnet.torch's
//! `both_preact`; the stride sits on the 3×3 convolution, as in fb.resnet.torch, bearpaw's
//! pytorch-classification and torchvision (the authors' 1k-layer code puts it on the first
//! 1×1 instead; parameter counts are the same either way).
//!
//! What a training pass keeps between forward and backward is decided by the caller (the
//! memory plan): the unit input x, the BN inputs u1 (and u2), and the batch statistics of
//! x, u1, u2. The BN-ReLU outputs h0..h(k−1) are recomputed in [`ResidualUnit::backward`]
//! from those (cheap elementwise work), unless naive mode kept them.

use crate::nn::params::TensorTable;
use crate::nn::ChannelStats;
use crate::nn::{BatchNorm, Conv};
use crate::ops::conv::{conv_backward, conv_forward, pointwise_backward_in_place};
use crate::ops::norm::{bn_relu_backward, bn_relu_forward, OutGrad};
use crate::ops::route::Routes;

/// One residual unit: its BN-ReLU-Conv layers and its shortcut.
#[derive(Clone, Debug)]
pub struct ResidualUnit {
    /// State-dict prefix, e.g. `layer2.0`.
    pub name: String,
    /// Channels of the unit input x.
    pub c_in: usize,
    /// Channels of the unit output y.
    pub c_out: usize,
    /// Spatial size of x.
    pub size_in: usize,
    /// Spatial size of y.
    pub size_out: usize,
    /// `(bn_j, conv_j)` for j = 1..k: BN-ReLU then the convolution (`bn1 conv1 bn2 …`).
    pub layers: Vec<(BatchNorm, Conv)>,
    /// Spatial size of each layer's input.
    pub sizes: Vec<usize>,
    /// Projection shortcut (`shortcut.0`), present where the shape changes.
    pub shortcut: Option<Conv>,
}

/// Buffers of one unit's forward pass. Missing entries (u2 of a basic unit) are empty.
pub(crate) struct Forward<'a> {
    /// Unit input x, `c_in × N·size_in²`.
    pub x: &'a [f32],
    /// Unit output y (**overwritten**).
    pub y: &'a mut [f32],
    /// Convolution outputs feeding the next BN: u1, u2.
    pub u: [&'a mut [f32]; 2],
    /// BN-ReLU outputs h0, h1, h2.
    pub h: [&'a mut [f32]; 3],
    /// Batch statistics of x, u1, u2 (training); `None` in evaluation mode.
    pub stats: Option<&'a mut [ChannelStats]>,
    /// Projection output.
    pub proj: &'a mut [f32],
    /// im2col scratch.
    pub col: &'a mut [f32],
    /// Every convolution's routes (`ops::route`).
    pub routes: &'a Routes,
    /// BN scale scratch.
    pub scale: &'a mut [f32],
    /// BN shift scratch.
    pub shift: &'a mut [f32],
}

/// Buffers of one unit's backward pass.
pub(crate) struct Backward<'a> {
    /// Unit input x (kept from the forward pass).
    pub x: &'a [f32],
    /// Complete gradient of y.
    pub dy: &'a [f32],
    /// Gradient of x (**overwritten**).
    pub dx: &'a mut [f32],
    /// u1, u2 (kept from the forward pass).
    pub u: [&'a [f32]; 2],
    /// h0, h1, h2: recomputed here when `recompute`, else as the forward pass left them.
    /// Consumed: 1×1 layers turn their h into its gradient in place.
    pub h: [&'a mut [f32]; 3],
    /// Whether to recompute h from x, u and the statistics.
    pub recompute: bool,
    /// Batch statistics of x, u1, u2 from the forward pass.
    pub stats: &'a [ChannelStats],
    /// Gradient of a 3×3 layer's h.
    pub dh: &'a mut [f32],
    /// Gradient of u1 / u2.
    pub du: &'a mut [f32],
    /// The projection's contribution to the gradient of h0.
    pub dproj: &'a mut [f32],
    /// im2col scratch.
    pub col: &'a mut [f32],
    /// Every convolution's routes (`ops::route`).
    pub routes: &'a Routes,
    /// BN scale scratch.
    pub scale: &'a mut [f32],
    /// BN shift scratch.
    pub shift: &'a mut [f32],
}

impl ResidualUnit {
    /// Offset of this unit's first tensor in the parameter buffer: its tensors come after
    /// every earlier unit's and before every later unit's.
    pub fn first_param(&self) -> usize {
        let convs = self.layers.iter().map(|(bn, c)| bn.weight.min(c.weight));
        convs
            .chain(self.shortcut.iter().map(|c| c.weight))
            .min()
            .unwrap_or(usize::MAX)
    }

    /// Lays out one unit's tensors: `c_in` channels of `size_in`², stage width `width`,
    /// first convolution stride `stride`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: &str,
        bottleneck: bool,
        c_in: usize,
        width: usize,
        size_in: usize,
        stride: usize,
        p: &mut TensorTable,
        s: &mut TensorTable,
    ) -> Self {
        // (cin, cout, kernel, stride) of each layer; the stride sits on the 3×3
        let specs: Vec<(usize, usize, usize, usize)> = if bottleneck {
            vec![
                (c_in, width, 1, 1),
                (width, width, 3, stride),
                (width, 4 * width, 1, 1),
            ]
        } else {
            vec![(c_in, width, 3, stride), (width, width, 3, 1)]
        };
        let mut layers = Vec::new();
        let mut sizes = Vec::new();
        let mut size = size_in;
        for (j, &(cin, cout, k, st)) in specs.iter().enumerate() {
            let bn = BatchNorm::new(&format!("{name}.bn{}", j + 1), cin, p, s);
            let conv = Conv::new(&format!("{name}.conv{}", j + 1), cout, cin, k, st, k / 2, p);
            sizes.push(size);
            size = conv.shape(1, size).ho();
            layers.push((bn, conv));
        }
        let c_out = specs.last().map(|s| s.1).unwrap_or(c_in);
        let shortcut = (stride != 1 || c_in != c_out)
            .then(|| Conv::new(&format!("{name}.shortcut.0"), c_out, c_in, 1, stride, 0, p));
        ResidualUnit {
            name: name.to_string(),
            c_in,
            c_out,
            size_in,
            size_out: size,
            layers,
            sizes,
            shortcut,
        }
    }

    /// Floats of each layer's input for a batch of `n`: `[x, u1, (u2)]` sizes.
    pub fn layer_inputs(&self, n: usize) -> Vec<usize> {
        self.layers
            .iter()
            .zip(&self.sizes)
            .map(|((_, conv), &s)| conv.cin * n * s * s)
            .collect()
    }

    /// Forward: `y = f(x) + shortcut`. In training (`stats` given) it records the batch
    /// statistics of every BN input and updates the running statistics once.
    pub(crate) fn forward(&self, p: &[f32], running: &mut [f32], n: usize, b: Forward) {
        let Forward {
            x,
            y,
            mut u,
            h,
            mut stats,
            proj,
            col,
            routes,
            scale,
            shift,
        } = b;
        let k = self.layers.len();
        for (j, ((bn, conv), &size)) in self.layers.iter().zip(&self.sizes).enumerate() {
            let len = n * size * size;
            let c = conv.cin;
            let shape = conv.shape(n, size);
            let out_len = conv.cout * n * shape.ho() * shape.wo();
            let (prev, next) = u.split_at_mut(j);
            let input: &[f32] = if j == 0 { x } else { &*prev[j - 1] };
            let input = &input[..c * len];
            // hj = relu(BNj(input)), with batch statistics in training
            let batch = match stats.as_deref_mut() {
                Some(st) => {
                    st[j].compute(input, 0, c, len);
                    Some(&st[j])
                }
                None => None,
            };
            bn.forward_affine(p, running, batch, len, scale, shift);
            let hj = &mut h[j][..c * len];
            bn_relu_forward(hj, input, &scale[..c], &shift[..c], len);
            let out: &mut [f32] = if j + 1 == k { &mut *y } else { &mut *next[0] };
            let route = routes.of(conv.weight).forward;
            conv_forward(&mut out[..out_len], hj, conv.w(p), &shape, route, col);
        }
        let len_out = n * self.size_out * self.size_out;
        let y = &mut y[..self.c_out * len_out];
        match &self.shortcut {
            Some(sc) => {
                let len_in = n * self.size_in * self.size_in;
                let proj = &mut proj[..self.c_out * len_out];
                conv_forward(
                    proj,
                    &h[0][..self.c_in * len_in],
                    sc.w(p),
                    &sc.shape(n, self.size_in),
                    routes.of(sc.weight).forward,
                    col,
                );
                y.iter_mut().zip(&*proj).for_each(|(y, v)| *y += v);
            }
            None => y.iter_mut().zip(x).for_each(|(y, v)| *y += v),
        }
    }

    /// Backward from the complete gradient of y: **accumulates** the parameter gradients
    /// into `g` and **overwrites** `dx`.
    ///
    /// `y = f(x) + s(x)`, so `dx = d/dx f + d/dx s`: the identity shortcut hands dy straight
    /// to dx (the unimpeded path that makes 1000-layer networks trainable, the paper's
    /// Eq. 5), the projection adds `Wpᵀ·dy` (strided back) to the gradient of h0. Along
    /// the chain, layer j receives the gradient of its output (dy for the last, du(j+1)
    /// otherwise) and produces, through conv then BN-ReLU, the gradient of its input.
    pub(crate) fn backward(&self, p: &[f32], g: &mut [f32], n: usize, b: Backward) {
        let Backward {
            x,
            dy,
            dx,
            u,
            h,
            recompute,
            stats,
            dh,
            du,
            dproj,
            col,
            routes,
            scale,
            shift,
        } = b;
        let k = self.layers.len();
        let (len_in, len_out) = (
            n * self.size_in * self.size_in,
            n * self.size_out * self.size_out,
        );
        let input = |j: usize| -> &[f32] {
            if j == 0 {
                x
            } else {
                u[j - 1]
            }
        };
        if recompute {
            for (j, ((bn, conv), &size)) in self.layers.iter().zip(&self.sizes).enumerate() {
                let (c, len) = (conv.cin, n * size * size);
                bn.batch_affine(p, &stats[j], scale, shift);
                bn_relu_forward(
                    &mut h[j][..c * len],
                    &input(j)[..c * len],
                    &scale[..c],
                    &shift[..c],
                    len,
                );
            }
        }
        let dy = &dy[..self.c_out * len_out];
        let dx = &mut dx[..self.c_in * len_in];
        // Shortcut first, while h0 is intact: identity dx = dy; projection dWp += dy·h0ᵀ
        // (strided), dproj = Wpᵀ·dy scattered back to h0's positions.
        match &self.shortcut {
            Some(sc) => {
                conv_backward(
                    Some(&mut dproj[..self.c_in * len_in]),
                    sc.dw(g),
                    dy,
                    &h[0][..self.c_in * len_in],
                    sc.w(p),
                    &sc.shape(n, self.size_in),
                    &routes.of(sc.weight),
                    col,
                );
                dx.fill(0.0);
            }
            None => dx.copy_from_slice(dy),
        }
        for (j, ((bn, conv), &size)) in self.layers.iter().zip(&self.sizes).enumerate().rev() {
            let (c, len) = (conv.cin, n * size * size);
            let shape = conv.shape(n, size);
            let out_len = conv.cout * n * shape.ho() * shape.wo();
            let dout: &[f32] = if j + 1 == k { dy } else { &du[..out_len] };
            // conv: dWj += dout·col(hj)ᵀ; dhj = col2im(Wjᵀ·dout). A 1×1 stride-1 layer's
            // hj is dead once dWj is formed, so it takes dhj in place.
            let dhj: &mut [f32] = if shape.is_pointwise() {
                let hj = &mut h[j][..c * len];
                pointwise_backward_in_place(hj, conv.dw(g), dout, conv.w(p), &shape);
                hj
            } else {
                let d = &mut dh[..c * len];
                conv_backward(
                    Some(&mut *d),
                    conv.dw(g),
                    dout,
                    &h[j][..c * len],
                    conv.w(p),
                    &shape,
                    &routes.of(conv.weight),
                    col,
                );
                d
            };
            if j == 0 && self.shortcut.is_some() {
                dhj.iter_mut()
                    .zip(&dproj[..c * len])
                    .for_each(|(d, v)| *d += v);
            }
            // BN-ReLU with batch statistics: accumulates into its target, which is dx
            // (already holding the shortcut's share) for the first layer, else a zeroed du.
            bn.batch_affine(p, &stats[j], scale, shift);
            let target: &mut [f32] = if j == 0 {
                &mut *dx
            } else {
                let t = &mut du[..c * len];
                t.fill(0.0);
                t
            };
            let (dgamma, dbeta) = bn.grads(g);
            bn_relu_backward(
                target,
                dgamma,
                dbeta,
                OutGrad::Dense(dhj),
                &input(j)[..c * len],
                &stats[j].mean[..c],
                &stats[j].rstd[..c],
                &scale[..c],
                &shift[..c],
                bn.gamma(p),
                len,
            );
        }
    }
}
