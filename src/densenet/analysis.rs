//! What the network learned: the feature-reuse heat map of the paper's Fig. 5.
//!
//! For every dense block, cell (s, ℓ) is the average absolute weight that the convolution
//! of target layer ℓ assigns to the channels produced by source layer s: the L1 norm of
//! that slice of the weight tensor divided by its number of elements. Sources are
//! s = 0 (the block's input: the stem's or the previous transition's output) and
//! s = 1..n (the block's layers); targets are ℓ = 1..n (the layers, through their *first*
//! convolution, the one that sees the concatenated input: the 1×1 bottleneck convolution in
//! DenseNet-B) and ℓ = n+1 (the transition after the block, or the classifier after the
//! last block). A layer only sees earlier layers, so cells with s ≥ ℓ are empty (NaN).

use crate::densenet::DenseNet;
use serde::Serialize;

/// One block's matrix: `values[s·(n+1) + (ℓ−1)]` for sources s = 0..=n, targets ℓ = 1..=n+1.
#[derive(Clone, Debug, Serialize)]
pub struct ReuseMatrix {
    /// Block number, from 1.
    pub block: usize,
    /// Layers in the block (n); the matrix is (n+1)×(n+1).
    pub layers: usize,
    /// Row-major cells; NaN where the target does not read the source.
    pub values: Vec<f64>,
}

impl ReuseMatrix {
    /// Cell (source s, target ℓ).
    pub fn get(&self, s: usize, target: usize) -> f64 {
        self.values[s * (self.layers + 1) + target - 1]
    }
}

/// Mean |w| of the weights reading input channels `c0..c1` of a weight tensor laid out as
/// `[out][cin][taps]`.
fn mean_abs(w: &[f32], cout: usize, cin: usize, taps: usize, c0: usize, c1: usize) -> f64 {
    let mut sum = 0f64;
    for o in 0..cout {
        let row = &w[(o * cin + c0) * taps..(o * cin + c1) * taps];
        sum += row.iter().map(|v| v.abs() as f64).sum::<f64>();
    }
    sum / (cout * (c1 - c0) * taps) as f64
}

/// The feature-reuse matrices of every dense block of `net`.
pub fn feature_reuse(net: &DenseNet) -> Vec<ReuseMatrix> {
    let arch = &net.arch;
    let p = &net.params;
    let last = arch.blocks.len() - 1;
    arch.blocks
        .iter()
        .enumerate()
        .map(|(b, block)| {
            let n = block.layers.len();
            let k = net.config().growth_rate;
            // channels of source s
            let span = |s: usize| {
                if s == 0 {
                    (0, block.c_in)
                } else {
                    (block.c_in + (s - 1) * k, block.c_in + s * k)
                }
            };
            let mut values = vec![f64::NAN; (n + 1) * (n + 1)];
            for (i, layer) in block.layers.iter().enumerate() {
                let conv = &layer.conv1;
                for s in 0..=i {
                    let (c0, c1) = span(s);
                    values[s * (n + 1) + i] =
                        mean_abs(conv.w(p), conv.cout, conv.cin, conv.k * conv.k, c0, c1);
                }
            }
            // the reader after the block: transition, or the classifier after the last block
            let (w, cout, cin, taps) = match &block.transition {
                Some(t) => (t.conv.w(p), t.conv.cout, t.conv.cin, 1),
                None => {
                    let classes = net.config().num_classes;
                    debug_assert_eq!(b, last);
                    (
                        &p[arch.classifier..arch.classifier + classes * block.c_out],
                        classes,
                        block.c_out,
                        1,
                    )
                }
            };
            for s in 0..=n {
                let (c0, c1) = span(s);
                values[s * (n + 1) + n] = mean_abs(w, cout, cin, taps, c0, c1);
            }
            ReuseMatrix {
                block: b + 1,
                layers: n,
                values,
            }
        })
        .collect()
}

/// The matrices as CSV rows `block,source,target,value` (defined cells only).
pub fn to_csv(matrices: &[ReuseMatrix]) -> String {
    let mut s = String::from("block,source,target,value\n");
    for m in matrices {
        for src in 0..=m.layers {
            for t in 1..=m.layers + 1 {
                let v = m.get(src, t);
                if !v.is_nan() {
                    s.push_str(&format!("{},{src},{t},{v:e}\n", m.block));
                }
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::densenet::config::DenseNetConfig;

    /// Known weights in a few layers give exactly the expected cells.
    #[test]
    fn cells_match_an_independent_computation() {
        // plain DenseNet-16-2: 4 layers per block, k = 2, stem 16 channels, 3×3 conv1
        let cfg = DenseNetConfig::cifar(16, 2, false, 1.0).unwrap();
        let mut net = DenseNet::new(&cfg, 0);
        net.params.fill(0.0);
        let b1 = &net.arch.blocks[0];
        assert_eq!((b1.c_in, b1.layers.len()), (16, 4));
        // layer 3 of block 1 reads 16 + 2·2 = 20 channels: weight -2 on channel 17 (source 1),
        // 0.5 on channels 0..16 (source 0) of output 0 only
        let conv = b1.layers[2].conv1.clone();
        let w = &mut net.params[conv.weight..conv.weight + conv.numel()];
        for ci in 0..conv.cin {
            for tap in 0..9 {
                let v = if ci == 17 {
                    -2.0
                } else if ci < 16 {
                    0.5
                } else {
                    0.0
                };
                w[ci * 9 + tap] = v; // output channel 0
            }
        }
        // the transition after block 1 reads 24 channels, 24 → 24 (θ = 1): weight 3 on
        // the channels of layer 4 (22, 23) for every output
        let t = b1.transition.clone().unwrap().conv;
        let tw = &mut net.params[t.weight..t.weight + t.numel()];
        for o in 0..t.cout {
            tw[o * t.cin + 22] = 3.0;
            tw[o * t.cin + 23] = 3.0;
        }
        let m = feature_reuse(&net);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[0].values.len(),
            5 * 5,
            "(layers + 1) sources × (layers + 1) targets"
        );
        // source 0 → target 3: 16 channels × 9 taps of output 0 at 0.5, over 2 outputs
        assert_eq!(m[0].get(0, 3), 0.5 * 16.0 * 9.0 / (2.0 * 16.0 * 9.0));
        // source 1 (channels 16, 17) → target 3: one channel of output 0 at |-2|
        assert_eq!(m[0].get(1, 3), 2.0 * 9.0 / (2.0 * 2.0 * 9.0));
        assert_eq!(m[0].get(2, 3), 0.0);
        assert!(m[0].get(3, 3).is_nan(), "a layer does not read itself");
        // transition column (target 5): source 4 has weight 3 everywhere
        assert_eq!(m[0].get(4, 5), 3.0);
        assert_eq!(m[0].get(0, 5), 0.0);
        // last block: the classifier column
        let cls = net.arch.classifier;
        let c = net.arch.blocks[2].c_out;
        net.params[cls..cls + 10 * c].fill(1.0);
        let m = feature_reuse(&net);
        assert_eq!(m[2].get(0, 5), 1.0);
        let csv = to_csv(&m);
        assert!(csv.starts_with("block,source,target,value\n"));
        // defined cells: targets 1..=4 read sources 0..t-1, the last column all 5
        assert_eq!(csv.lines().count() - 1, 3 * (1 + 2 + 3 + 4 + 5));
    }
}
