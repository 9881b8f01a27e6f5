//! The memory-efficient mode (shared storage + recomputation) against the naive mode that
//! keeps every intermediate: identical results, and activation memory linear in depth
//! (quadratic for naive), computed from the memory plan.

mod common;

use common::{quadratic_share, train_step};
use densenet::densenet::Architecture;
use densenet::util::rng::Rng;
use densenet::{densenet::DenseNetPlan, MemoryMode};
use densenet::{DenseNet, DenseNetConfig};

/// One training step in `mode`; returns (loss, logits, grads, running stats, input grad).
fn step(
    cfg: &DenseNetConfig,
    mode: MemoryMode,
    n: usize,
) -> (f32, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut net = DenseNet::new(cfg, 3);
    // non-trivial BN parameters so that every path matters
    let mut rng = Rng::new(9);
    for e in net.arch.params.entries().to_vec() {
        if e.shape.len() == 1 {
            net.params[e.range()]
                .iter_mut()
                .for_each(|v| *v += 0.2 * rng.normal() as f32);
        }
    }
    let s = cfg.input_size;
    let x: Vec<f32> = (0..n * cfg.in_channels * s * s)
        .map(|_| rng.normal() as f32)
        .collect();
    let y: Vec<u32> = (0..n).map(|i| (i % cfg.num_classes) as u32).collect();
    let (ws, loss) = train_step(&mut net, &x, &y, mode, 42, 1.0);
    let logits = ws.logits()[..n * cfg.num_classes].to_vec();
    let ig = ws.input_grad()[..x.len()].to_vec();
    (loss, logits, net.grads.clone(), net.stats.clone(), ig)
}

fn assert_same(name: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        worst <= 1e-6 * scale,
        "{name}: max |diff| {worst} (scale {scale})"
    );
}

/// Bottleneck layers in the efficient plan for a batch of `n`: (keeping B, recomputing B).
fn kept_b(cfg: &DenseNetConfig, n: usize) -> (usize, usize) {
    let plan = DenseNetPlan::new(&Architecture::new(cfg), n, MemoryMode::Efficient, true);
    let arch = Architecture::new(cfg);
    let layers = arch.blocks.iter().flat_map(|b| &b.layers);
    let mut counts = (0, 0);
    for (l, k) in layers.zip(plan.kept_layers.iter().flatten()) {
        if l.bottleneck.is_some() {
            if k.b > 0 {
                counts.0 += 1
            } else {
                counts.1 += 1
            }
        }
    }
    counts
}

/// [`compare`] on a model whose efficient plan has bottleneck layers on both backward
/// paths (B kept, B recomputed).
fn compare_both_paths(cfg: &DenseNetConfig, n: usize) {
    let (kept, recomputed) = kept_b(cfg, n);
    assert!(
        kept > 0 && recomputed > 0,
        "kept {kept}, recomputed {recomputed}"
    );
    compare(cfg, n);
}

fn compare(cfg: &DenseNetConfig, n: usize) {
    let e = step(cfg, MemoryMode::Efficient, n);
    let v = step(cfg, MemoryMode::Naive, n);
    assert!(
        (e.0 - v.0).abs() <= 1e-6 * v.0.abs(),
        "loss {} vs {}",
        e.0,
        v.0
    );
    assert_same("logits", &e.1, &v.1);
    assert_same("grads", &e.2, &v.2);
    assert_same("running stats", &e.3, &v.3);
    assert_same("input grad", &e.4, &v.4);
}

#[test]
fn modes_agree_on_bc_40_12() {
    compare_both_paths(&DenseNetConfig::from_name("densenet-bc-40-12").unwrap(), 4);
}

/// A deeper model, with dropout: the recomputed masks must equal the forward ones.
#[test]
fn modes_agree_on_deeper_model_with_dropout() {
    let mut cfg = DenseNetConfig::from_name("densenet-bc-100-12").unwrap();
    cfg.drop_rate = 0.2;
    compare_both_paths(&cfg, 2);
}

/// Plain (no bottleneck) layers take the other backward path (separate dA scratch).
#[test]
fn modes_agree_on_plain_densenet() {
    let mut cfg = DenseNetConfig::from_name("densenet-40-12").unwrap();
    cfg.drop_rate = 0.2;
    cfg.in_channels = 1;
    compare(&cfg, 2);
}

/// The ImageNet stem (7×7 stride 2, BN, max pool) in both modes, on a small input.
#[test]
fn modes_agree_on_imagenet_stem() {
    let mut cfg = DenseNetConfig::from_json(
        r#"{"family":"imagenet_densenet","growth_rate":8,"block_config":[2,2],"num_classes":5}"#,
    )
    .unwrap();
    cfg.input_size = 32;
    compare(&cfg, 2);
}

/// The depths through which `common::quadratic_share` fits the activation memory.
const DEPTHS: [usize; 3] = [100, 190, 250];

fn bytes(depth: usize, mode: MemoryMode) -> f64 {
    let cfg = DenseNetConfig::cifar(depth, 12, true, 0.5).unwrap();
    DenseNetPlan::new(&Architecture::new(&cfg), 64, mode, true).activation_bytes() as f64
}

/// Efficient mode keeps B only within its budget, most input channels first.
#[test]
fn efficient_mode_keeps_b_within_budget() {
    let cfg = DenseNetConfig::from_name("densenet-bc-100-12").unwrap();
    let arch = Architecture::new(&cfg);
    let plan = DenseNetPlan::new(&arch, 64, MemoryMode::Efficient, true);
    let kept: usize = plan.kept_layers.iter().flatten().map(|k| k.b).sum();
    let rest = plan.activation_bytes() - 4 * kept;
    assert!(kept > 0, "no B kept");
    assert!(4.0 * kept as f64 <= densenet::densenet::memory::KEEP_B_SHARE * rest as f64);
    // within a block, every kept layer has more input channels than every recomputed one
    for (block, kept) in arch.blocks.iter().zip(&plan.kept_layers) {
        let m = |keep: bool| {
            block
                .layers
                .iter()
                .zip(kept)
                .filter(move |(_, k)| (k.b > 0) == keep)
                .map(|(l, _)| l.c_in)
        };
        if let (Some(lo), Some(hi)) = (m(true).min(), m(false).max()) {
            assert!(lo > hi, "kept m {lo} <= recomputed m {hi}");
        }
    }
}

#[test]
fn efficient_memory_is_linear_in_depth() {
    let q = quadratic_share(DEPTHS, |l| bytes(l, MemoryMode::Efficient));
    // ⌊θ·m⌋ in the transitions makes it piecewise, not perfectly, linear
    assert!(q.abs() < 0.01, "quadratic share {q}");
    assert!(bytes(250, MemoryMode::Efficient) * 5.0 < bytes(250, MemoryMode::Naive));
}

#[test]
fn naive_memory_is_quadratic_in_depth() {
    let q = quadratic_share(DEPTHS, |l| bytes(l, MemoryMode::Naive));
    assert!(q > 0.5, "quadratic share {q}");
}
