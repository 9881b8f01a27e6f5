//! SGD with Nesterov momentum and weight decay, PyTorch's formulation
//! (`torch.optim.SGD(nesterov=True, dampening=0)`), as one loop over the flat buffers.

use crate::nn::params::TensorTable;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Optimizer settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f32,
    /// Momentum μ.
    pub momentum: f32,
    /// L2 weight decay λ (applied to every parameter, as in the paper's recipe, unless
    /// parameter groups say otherwise: [`Sgd::step_groups`]).
    pub weight_decay: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
}

impl Default for SgdConfig {
    /// The paper's settings: lr 0.1, Nesterov momentum 0.9, weight decay 1e-4.
    fn default() -> Self {
        SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
            nesterov: true,
        }
    }
}

/// Optimizer state: one momentum buffer laid out like the parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sgd {
    /// Settings (the learning rate is changed by the schedule).
    pub config: SgdConfig,
    /// Momentum buffer, empty until the first step (PyTorch initialises it to the first
    /// gradient, which equals zero-initialising it with dampening 0).
    pub momentum: Vec<f32>,
}

impl Sgd {
    /// A fresh optimizer.
    pub fn new(config: SgdConfig) -> Self {
        Sgd {
            config,
            momentum: Vec::new(),
        }
    }

    /// One step: `g ← ∇ + λ·p; b ← μ·b + g; p ← p − lr·(g + μ·b)` (Nesterov) or
    /// `p ← p − lr·b` (classical).
    pub fn step(&mut self, params: &mut [f32], grads: &[f32]) {
        let lr = self.config.lr;
        self.step_ranges(params, grads, &[(0..params.len(), lr)]);
    }

    /// [`step`](Self::step) with a learning rate per range of the buffer, in place of
    /// `config.lr` (fine-tuning: the classifier at one rate, the pretrained features at
    /// another). A range at rate 0 is skipped whole: its parameters and its momentum stay
    /// as they are (weight decay does not touch a frozen part either). Parameters outside
    /// every range do not change.
    pub fn step_ranges(
        &mut self,
        params: &mut [f32],
        grads: &[f32],
        rates: &[(Range<usize>, f32)],
    ) {
        let wd = self.config.weight_decay;
        for (range, lr) in rates {
            self.update(params, grads, range.clone(), *lr, wd);
        }
    }

    /// [`step_ranges`](Self::step_ranges) with a weight decay per group too, in place of
    /// `config.weight_decay` (PyTorch's parameter groups).
    pub fn step_groups(&mut self, params: &mut [f32], grads: &[f32], groups: &[ParamGroup]) {
        for g in groups {
            self.update(params, grads, g.range.clone(), g.lr, g.weight_decay);
        }
    }

    /// The step of the elements `r` at rate `lr` (none at 0) with weight decay `wd`.
    fn update(&mut self, params: &mut [f32], grads: &[f32], r: Range<usize>, lr: f32, wd: f32) {
        let SgdConfig {
            momentum: mu,
            nesterov,
            ..
        } = self.config;
        if self.momentum.len() != params.len() {
            self.momentum = vec![0.0; params.len()];
        }
        if lr == 0.0 {
            return;
        }
        let (p, g, b) = (
            &mut params[r.clone()],
            &grads[r.clone()],
            &mut self.momentum[r],
        );
        let update = |p: &mut [f32], g: &[f32], b: &mut [f32]| {
            for ((p, &g), b) in p.iter_mut().zip(g).zip(b.iter_mut()) {
                let d = g + wd * *p;
                *b = mu * *b + d;
                let step = if nesterov { d + mu * *b } else { *b };
                *p -= lr * step;
            }
        };
        // elementwise, so split over the threads at no cost to determinism: run serially,
        // densenet121's 8M parameters took 5 ms of a training step with the other core
        // idle. A BN layer's few numbers are not worth a task.
        const CHUNK: usize = 1 << 16;
        if p.len() <= CHUNK {
            update(p, g, b);
            return;
        }
        let chunks = p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK));
        chunks
            .zip(b.par_chunks_mut(CHUNK))
            .for_each(|((p, g), b)| update(p, g, b));
    }
}

/// A part of the parameter buffer with its own learning rate and weight decay.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamGroup {
    /// The elements of the flat buffer.
    pub range: Range<usize>,
    /// Learning rate (0: the group does not change at all).
    pub lr: f32,
    /// L2 weight decay λ.
    pub weight_decay: f32,
}

/// The groups of a step: each range of `rates` at its rate with `weight_decay`, except
/// where it overlaps `no_decay` (sorted, disjoint ranges), which is split off with no
/// decay.
pub fn param_groups(
    rates: &[(Range<usize>, f32)],
    weight_decay: f32,
    no_decay: &[Range<usize>],
) -> Vec<ParamGroup> {
    let mut groups = Vec::with_capacity(rates.len() + 2 * no_decay.len());
    let mut push = |range: Range<usize>, lr: f32, weight_decay: f32| {
        if !range.is_empty() {
            groups.push(ParamGroup {
                range,
                lr,
                weight_decay,
            });
        }
    };
    for (range, lr) in rates {
        let mut at = range.start;
        for nd in no_decay
            .iter()
            .filter(|r| r.end > range.start && r.start < range.end)
        {
            let (start, end) = (nd.start.max(range.start), nd.end.min(range.end));
            push(at..start, *lr, weight_decay);
            push(start..end, *lr, 0.0);
            at = end;
        }
        push(at..range.end, *lr, weight_decay);
    }
    groups
}

/// The ranges of a parameter table's 1-D tensors (BN weights and biases, and biases),
/// adjacent ones merged: those that `--no-bn-decay` leaves without weight decay.
pub fn one_d_ranges(table: &TensorTable) -> Vec<Range<usize>> {
    let mut ranges: Vec<Range<usize>> = Vec::new();
    for e in table.entries().iter().filter(|e| e.shape.len() == 1) {
        match ranges.last_mut() {
            Some(last) if last.end == e.offset => last.end = e.range().end,
            _ => ranges.push(e.range()),
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two steps by hand against the formula PyTorch documents.
    #[test]
    fn nesterov_matches_pytorch_formula() {
        let mut opt = Sgd::new(SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.01,
            nesterov: true,
        });
        let mut p = vec![1.0f32];
        opt.step(&mut p, &[0.5]);
        // g = 0.5 + 0.01 = 0.51; b = 0.51; p = 1 - 0.1 (0.51 + 0.459) = 0.9031
        assert!((p[0] - 0.9031).abs() < 1e-6);
        opt.step(&mut p, &[0.5]);
        let g = 0.5 + 0.01 * 0.9031f32;
        let b = 0.9 * 0.51 + g;
        assert!((p[0] - (0.9031 - 0.1 * (g + 0.9 * b))).abs() < 1e-6);
    }

    /// Per-range rates: each range moves as a whole-buffer step at its rate would, and a
    /// range at rate 0 keeps its parameters and momentum, weight decay notwithstanding.
    #[test]
    fn ranges_step_at_their_own_rates_and_rate_zero_freezes() {
        let config = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.01,
            nesterov: true,
        };
        let (p0, g) = (vec![1.0f32, -2.0, 0.5, 3.0], vec![0.5f32, 0.25, -1.0, 2.0]);
        let mut split = Sgd::new(config);
        let mut p = p0.clone();
        for _ in 0..2 {
            split.step_ranges(&mut p, &g, &[(0..2, 0.0), (2..3, 0.1), (3..4, 0.01)]);
        }
        assert_eq!(&p[..2], &p0[..2]);
        assert_eq!(&split.momentum[..2], &[0.0, 0.0]);
        for (i, lr) in [(2, 0.1f32), (3, 0.01)] {
            let mut whole = Sgd::new(SgdConfig { lr, ..config });
            let mut q = vec![p0[i]];
            for _ in 0..2 {
                whole.step(&mut q, &g[i..i + 1]);
            }
            assert_eq!(p[i], q[0], "element {i}");
        }
    }

    /// Groups split a rate's range around the no-decay ranges, and a group without decay
    /// moves as a step with weight decay 0 would.
    #[test]
    fn no_decay_ranges_are_split_off_and_not_decayed() {
        let g = param_groups(&[(0..4, 0.0), (4..10, 0.1)], 0.5, &[2..3, 5..7, 9..12]);
        let want = [
            (0..2, 0.0, 0.5),
            (2..3, 0.0, 0.0),
            (3..4, 0.0, 0.5),
            (4..5, 0.1, 0.5),
            (5..7, 0.1, 0.0),
            (7..9, 0.1, 0.5),
            (9..10, 0.1, 0.0),
        ];
        let got: Vec<_> = g
            .iter()
            .map(|g| (g.range.clone(), g.lr, g.weight_decay))
            .collect();
        assert_eq!(got, want);
        let config = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.5,
            nesterov: true,
        };
        let (p0, grad) = (vec![1.0f32, 2.0], vec![0.25f32, 0.25]);
        let mut grouped = Sgd::new(config);
        let mut p = p0.clone();
        let element_1 = std::slice::from_ref(&(1..2));
        let groups = param_groups(&[(0..2, 0.1)], 0.5, element_1);
        grouped.step_groups(&mut p, &grad, &groups);
        let plain = |wd| {
            let mut q = p0.clone();
            Sgd::new(SgdConfig {
                weight_decay: wd,
                ..config
            })
            .step(&mut q, &grad);
            q
        };
        assert_eq!(p[0], plain(0.5)[0]);
        assert_eq!(p[1], plain(0.0)[1]);
        assert_ne!(p[1], plain(0.5)[1]);
    }

    /// The 1-D tensors of a table, adjacent ones merged.
    #[test]
    fn one_d_ranges_are_the_bn_parameters_and_biases() {
        let mut t = TensorTable::default();
        t.push("conv0.weight", &[4, 3, 3, 3]);
        t.push("norm0.weight", &[4]);
        t.push("norm0.bias", &[4]);
        t.push("conv1.weight", &[2, 4, 1, 1]);
        t.push("classifier.weight", &[5, 2]);
        t.push("classifier.bias", &[5]);
        assert_eq!(one_d_ranges(&t), [108..116, 134..139]);
    }
}
