//! SGD with Nesterov momentum and weight decay, PyTorch's formulation
//! (`torch.optim.SGD(nesterov=True, dampening=0)`), as one loop over the flat buffers.

use serde::{Deserialize, Serialize};

/// Optimizer settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f32,
    /// Momentum μ.
    pub momentum: f32,
    /// L2 weight decay λ (applied to every parameter, as in the paper's recipe).
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
        let SgdConfig {
            lr,
            momentum: mu,
            weight_decay: wd,
            nesterov,
        } = self.config;
        if self.momentum.len() != params.len() {
            self.momentum = vec![0.0; params.len()];
        }
        for ((p, &g), b) in params.iter_mut().zip(grads).zip(self.momentum.iter_mut()) {
            let d = g + wd * *p;
            *b = mu * *b + d;
            let step = if nesterov { d + mu * *b } else { *b };
            *p -= lr * step;
        }
    }
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
}
