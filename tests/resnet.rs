//! The pre-activation ResNet against PyTorch (fixtures made by
//! `tests/fixtures/make_preresnet_fixtures.py` in float64): eval logits and every stage's
//! output, train-mode logits, loss, every gradient, the input gradient and the BN running
//! statistics, in both memory modes. Then negative controls (the same checks catch a
//! perturbed weight and a sum-reduced loss), a finite-difference check that needs no
//! fixture, the memory plan's growth in depth, and training on the digits.

mod common;

use common::*;
use densenet::model::{Model, ModelConfig};
use densenet::resnet::{Architecture, ResNetPlan};
use densenet::train::{self, Quiet, RunOptions, TrainConfig};
use densenet::util::rng::Rng;
use densenet::weights::{read_safetensors, TensorFile};
use densenet::MemoryMode;
use densenet::{PreActResNet, PreActResNetConfig};
use std::path::{Path, PathBuf};

const CASES: [&str; 2] = ["preresnet_basic_w8", "preresnet_bottleneck_w8"];

fn fixture(case: &str, kind: &str) -> TensorFile {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{case}.{kind}.safetensors"));
    read_safetensors(&p).unwrap_or_else(|e| panic!("{e}"))
}

fn data<'a>(f: &'a TensorFile, name: &str) -> &'a [f32] {
    &f.get(name)
        .unwrap_or_else(|| panic!("no {name} in the fixture"))
        .tensor
        .data
}

fn network(case: &str) -> PreActResNet {
    let w = fixture(case, "weights");
    let cfg = match ModelConfig::from_name(&w.metadata["config"]).unwrap() {
        ModelConfig::PreActResNet(c) => c,
        other => panic!("{case} is not a ResNet: {other:?}"),
    };
    let mut net = PreActResNet::new(&cfg, 0);
    net.load_tensors(&w.tensors, case).unwrap();
    net
}

fn check_eval(net: &mut PreActResNet, case: &str) -> Result<(), String> {
    let r = fixture(case, "eval");
    let input = &r.get("input").unwrap().tensor;
    let (logits, _, acts) = eval_probed(net, input);
    let worst = check_close("logits", &logits, data(&r, "logits"), 1e-4, 1e-4)?;
    println!("{case}: eval logits max |diff| {worst:.2e}");
    for name in ["act.conv1", "act.layer1", "act.layer2", "act.layer3"] {
        let ours = acts.get(name).ok_or(format!("no probe for {name}"))?;
        let d = check_act(name, ours, data(&r, name), 1e-4)?;
        println!("  {name}: max |diff| {d:.2e}");
    }
    Ok(())
}

/// One train-mode forward and backward; checks logits, loss, every gradient, the input
/// gradient and every running statistic. `scale_dlogits` ≠ 1 simulates a wrongly reduced
/// loss.
fn check_train(
    net: &mut PreActResNet,
    case: &str,
    mode: MemoryMode,
    scale_dlogits: f32,
) -> Result<(), String> {
    let r = fixture(case, "train");
    let input = &r.get("input").unwrap().tensor;
    let labels: Vec<u32> = data(&r, "labels").iter().map(|&v| v as u32).collect();
    let n = labels.len();
    let classes = net.config().num_classes;
    let (ws, loss) = train_step(net, &input.data, &labels, mode, 0, scale_dlogits);
    check_close(
        "train logits",
        &ws.logits()[..n * classes],
        data(&r, "logits"),
        1e-4,
        1e-4,
    )?;
    let want = data(&r, "loss")[0];
    if (loss - want).abs() > 1e-5 * want.abs().max(1.0) {
        return Err(format!("loss {loss} vs {want}"));
    }
    let (mut all_ours, mut all_ref, mut worst) = (vec![], vec![], 0f64);
    for e in net.arch.params.entries() {
        let want = data(&r, &format!("grad.{}", e.name));
        let ours = &net.grads[e.range()];
        worst = worst.max(check_rel_l2(&format!("grad.{}", e.name), ours, want, 1e-3)?);
        all_ours.extend_from_slice(ours);
        all_ref.extend_from_slice(want);
    }
    let global = check_rel_l2("all gradients", &all_ours, &all_ref, 1e-4)?;
    println!(
        "{case} {mode:?}: loss {loss} (ref {want}); gradient rel L2: worst tensor {worst:.1e}, \
         all {global:.1e}"
    );
    check_rel_l2(
        "input_grad",
        &ws.input_grad()[..input.numel()],
        data(&r, "input_grad"),
        1e-3,
    )?;
    check_running_stats(net, &r)?;
    let grads = r
        .tensors
        .iter()
        .filter(|t| t.name.starts_with("grad."))
        .count();
    let posts = r
        .tensors
        .iter()
        .filter(|t| t.name.starts_with("post."))
        .count();
    assert_eq!(
        (grads, posts),
        (
            net.arch.params.entries().len(),
            net.arch.stats.entries().len()
        ),
        "every gradient and statistic of the fixture is checked"
    );
    Ok(())
}

#[test]
fn eval_matches_pytorch() {
    for case in CASES {
        check_eval(&mut network(case), case).unwrap();
    }
}

#[test]
fn train_step_matches_pytorch_efficient() {
    for case in CASES {
        check_train(&mut network(case), case, MemoryMode::Efficient, 1.0).unwrap();
    }
}

#[test]
fn train_step_matches_pytorch_naive() {
    for case in CASES {
        check_train(&mut network(case), case, MemoryMode::Naive, 1.0).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Negative controls: the checks above reject a slightly wrong network.

/// BN ε = 1e-3 instead of 1e-5: in eval mode that is exactly running_var + (1e-3 − 1e-5).
#[test]
fn control_wrong_bn_epsilon_is_caught() {
    let case = "preresnet_bottleneck_w8";
    let mut net = network(case);
    for e in net.arch.stats.entries().to_vec() {
        if e.name.ends_with("running_var") {
            net.stats[e.range()]
                .iter_mut()
                .for_each(|v| *v += 1e-3 - 1e-5);
        }
    }
    let res = check_eval(&mut net, case);
    assert!(res.is_err(), "a wrong BN epsilon must be detected");
}

/// One weight of the stem convolution off by 1%: the eval check fails.
#[test]
fn control_perturbed_weight_is_caught() {
    let case = "preresnet_basic_w8";
    let mut net = network(case);
    let e = net.arch.params.get("conv1.weight").unwrap().clone();
    net.params[e.offset + 5] *= 1.01;
    let res = check_eval(&mut net, case);
    assert!(res.is_err(), "a 1% change of one weight must be detected");
}

/// A sum-reduced loss (gradients N times too large) fails the gradient checks.
#[test]
fn control_sum_reduced_loss_is_caught() {
    let case = "preresnet_basic_w8";
    let res = check_train(&mut network(case), case, MemoryMode::Efficient, 4.0);
    assert!(
        res.is_err() && res.as_ref().unwrap_err().contains("grad"),
        "{res:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Without PyTorch: finite differences, memory modes, memory growth.

fn small(name: &str, size: usize) -> PreActResNetConfig {
    let mut c = match ModelConfig::from_name(name).unwrap() {
        ModelConfig::PreActResNet(c) => c,
        _ => unreachable!(),
    };
    c.input_size = size;
    c.widths = vec![4, 8, 8];
    c.stem_channels = 4;
    c.num_classes = 5;
    c
}

/// A network with non-trivial BN parameters, and a batch for it.
fn setup(cfg: &PreActResNetConfig, n: usize) -> (PreActResNet, Vec<f32>, Vec<u32>) {
    let mut net = PreActResNet::new(cfg, 3);
    let mut rng = Rng::new(11);
    for e in net.arch.params.entries().to_vec() {
        if e.shape.len() == 1 && !e.name.starts_with("fc.") {
            net.params[e.range()]
                .iter_mut()
                .for_each(|v| *v += 0.2 * rng.normal() as f32);
        }
    }
    let s = cfg.input_size;
    let x = (0..n * cfg.in_channels * s * s)
        .map(|_| rng.normal() as f32)
        .collect();
    let y = (0..n).map(|i| (i % cfg.num_classes) as u32).collect();
    (net, x, y)
}

/// Every parameter tensor's largest gradient entry, and the input gradient's, match
/// central finite differences of the training loss (no fixture needed; see
/// `common::check_finite_differences`).
#[test]
fn gradients_match_finite_differences() {
    for name in ["preresnet-basic-14", "preresnet-bottleneck-20"] {
        let cfg = small(name, 6);
        let (mut net, x, y) = setup(&cfg, 3);
        let worst = check_finite_differences(name, &mut net, &x, &y);
        println!("{name}: worst relative difference {worst:.1e}");
    }
}

/// Efficient mode (BN-ReLU outputs recomputed) and naive mode (kept) agree.
#[test]
fn memory_modes_agree() {
    for name in ["preresnet-basic-14", "preresnet-bottleneck-20"] {
        let cfg = small(name, 8);
        let run = |mode| {
            let (mut net, x, y) = setup(&cfg, 3);
            let (ws, loss) = train_step(&mut net, &x, &y, mode, 0, 1.0);
            (
                loss,
                net.grads.clone(),
                net.stats.clone(),
                ws.input_grad().to_vec(),
            )
        };
        let (e, v) = (run(MemoryMode::Efficient), run(MemoryMode::Naive));
        assert_eq!(e.0, v.0, "{name}: loss");
        assert_eq!(e.1, v.1, "{name}: gradients (same ops on the same values)");
        assert_eq!(e.2, v.2, "{name}: running statistics");
        assert_eq!(e.3, v.3, "{name}: input gradient");
    }
}

fn bytes(depth: usize, mode: MemoryMode) -> f64 {
    let cfg = PreActResNetConfig::cifar(densenet::resnet::BlockKind::Bottleneck, depth).unwrap();
    ResNetPlan::new(&Architecture::new(&cfg), 64, mode, true).activation_bytes() as f64
}

#[test]
fn training_memory_is_linear_in_depth() {
    for mode in [MemoryMode::Efficient, MemoryMode::Naive] {
        // 9n+2 with n = 18, 49, 111
        let q = quadratic_share([164, 443, 1001], |l| bytes(l, mode));
        assert!(q.abs() < 1e-3, "{mode:?}: quadratic share {q}");
    }
    for depth in [164, 1001] {
        println!(
            "preresnet-{depth}, batch 64: {:.0} MiB efficient, {:.0} MiB naive",
            bytes(depth, MemoryMode::Efficient) / (1 << 20) as f64,
            bytes(depth, MemoryMode::Naive) / (1 << 20) as f64
        );
    }
    // per unit, efficient keeps x, u1, u2 (4w + w + w channels) where naive adds h0..h2
    let ratio = bytes(1001, MemoryMode::Naive) / bytes(1001, MemoryMode::Efficient);
    assert!(ratio > 1.9, "naive/efficient {ratio}");
    // evaluation keeps no per-unit state at all
    let cfg = PreActResNetConfig::cifar(densenet::resnet::BlockKind::Bottleneck, 1001).unwrap();
    let eval = ResNetPlan::new(&Architecture::new(&cfg), 64, MemoryMode::Efficient, false);
    assert!((eval.activation_bytes() as f64) < bytes(1001, MemoryMode::Efficient) / 20.0);
}

// ---------------------------------------------------------------------------------------
// Training.

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("densenet-resnet-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A pre-activation ResNet-8 (one basic unit per stage) trains on the built-in digits
/// (8×8) and gets well above chance (10%) in three epochs (93.6%, 2.8 s here); the run
/// directory's summary.json names the family and the parameter count (what
/// `densenet compare` reads).
#[test]
fn preresnet_trains_on_digits() {
    let cfg = TrainConfig {
        batch_size: 64,
        seed: 1,
        ..digits_run(ModelConfig::from_name("preresnet-8").unwrap(), 3)
    };
    let dir = tmp("digits");
    let opts = RunOptions::new(&dir);
    let s = train::train(&cfg, &opts, &mut Quiet).unwrap();
    println!(
        "{} on digits: {:.2}% after {} epochs, {:.1} s",
        s.model,
        100.0 * s.test_accuracy,
        s.epochs,
        s.seconds
    );
    assert!(s.test_accuracy > 0.8, "test accuracy {}", s.test_accuracy);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["family"], "preact_resnet");
    assert_eq!(summary["model"], "preresnet-8");
    // fitted to the data: 1 input channel, 10 classes
    let fitted = {
        let mut m = cfg.model.clone();
        m.set_io(10, 1, 8);
        m.architecture().summary()
    };
    assert_eq!(
        summary["parameters"].as_u64(),
        Some(fitted.parameters as u64)
    );
    // the checkpoint loads back into a ResNet through its own metadata
    let f = read_safetensors(&dir.join("best.safetensors")).unwrap();
    let back: ModelConfig = serde_json::from_str(&f.metadata["config"]).unwrap();
    assert_eq!(back.family(), "preact_resnet");
    let mut net = densenet::AnyModel::new(&back, 0);
    net.load_tensors(&f.tensors, "best").unwrap();
}
