//! Parity with PyTorch on the reference cases of `tests/reference` (made by PyTorch 2.15,
//! see its README): eval logits and activations, train-mode logits, loss, every gradient,
//! the input gradient and the BN running statistics — with the README's tolerances. The
//! negative controls at the end show that the same checks catch the classic mistakes.

mod common;

use common::*;
use densenet::weights::TensorFile;
use densenet::{DenseNet, DenseNetConfig};
use densenet::{MemoryMode, Model};
use std::collections::HashMap;

fn network(weights: &TensorFile) -> DenseNet {
    let cfg = DenseNetConfig::from_json(&weights.metadata["config"]).unwrap();
    let mut net = DenseNet::new(&cfg, 0);
    net.load_tensors(&weights.tensors, "reference weights")
        .unwrap();
    net
}

/// Eval forward with probes of the reference file `r`'s input; returns logits, pooled
/// features `[N][C]` and activations.
fn eval(net: &mut DenseNet, r: &TensorFile) -> (Vec<f32>, Vec<f32>, HashMap<String, Vec<f32>>) {
    let input = &r.get("input").unwrap().tensor;
    let n = input.shape[0];
    let (logits, ws, acts) = eval_probed(net, input);
    let c = ws.pooled().len() / ws.batch();
    let mut pooled = vec![0.0; n * c];
    for ci in 0..c {
        for i in 0..n {
            pooled[i * c + ci] = ws.pooled()[ci * n + i];
        }
    }
    (logits, pooled, acts)
}

/// `ours` against the tensor `name` of the reference file `r`, within the README's 1e-4
/// (absolute and relative).
fn check_reference(ours: &[f32], r: &TensorFile, name: &str) -> Result<f32, String> {
    check_close(name, ours, &r.get(name).unwrap().tensor.data, 1e-4, 1e-4)
}

fn check_eval_case(case: &str) -> Result<(), String> {
    let w = reference(case, "weights");
    let r = reference(case, "eval");
    let mut net = network(&w);
    let (logits, pooled, acts) = eval(&mut net, &r);
    let worst = check_reference(&logits, &r, "logits")?;
    println!("{case}: eval logits max |diff| {worst:.2e}");
    check_reference(&pooled, &r, "pooled_features")?;
    let mut checked = 0;
    for t in r.tensors.iter().filter(|t| t.name.starts_with("act.")) {
        let ours = acts
            .get(&t.name)
            .ok_or(format!("no probe for {}", t.name))?;
        let d = check_act(&t.name, ours, &t.tensor.data, 1e-4)?;
        println!("  {}: max |diff| {d:.2e}", t.name);
        checked += 1;
    }
    assert_eq!(checked, 7, "every act.* of the reference is checked");
    Ok(())
}

#[test]
fn eval_bc_l40_k12() {
    check_eval_case("cifar_bc_L40_k12").unwrap();
}

#[test]
fn eval_plain_l40_k12() {
    check_eval_case("cifar_densenet_L40_k12").unwrap();
}

/// One train-mode forward and backward in the given memory mode; checks everything.
fn check_train(net: &mut DenseNet, mode: MemoryMode, scale_dlogits: f32) -> Result<(), String> {
    let r = reference("cifar_bc_L40_k12", "train");
    let input = &r.get("input").unwrap().tensor;
    let labels: Vec<u32> = r
        .get("labels")
        .unwrap()
        .tensor
        .data
        .iter()
        .map(|&v| v as u32)
        .collect();
    let n = labels.len();
    let (ws, loss) = train_step(net, &input.data, &labels, mode, 0, scale_dlogits);
    check_close(
        "train logits",
        &ws.logits()[..n * 10],
        &r.get("logits").unwrap().tensor.data,
        1e-4,
        1e-4,
    )?;
    let want = r.get("loss").unwrap().tensor.data[0];
    if (loss - want).abs() > 1e-5 {
        return Err(format!("loss {loss} vs {want}"));
    }
    let (mut all_ours, mut all_ref) = (vec![], vec![]);
    let mut count = 0;
    for e in net.arch.params.entries() {
        let want = &r
            .get(&format!("grad.{}", e.name))
            .ok_or(format!("no grad.{}", e.name))?
            .tensor
            .data;
        let ours = &net.grads[e.range()];
        check_rel_l2(&format!("grad.{}", e.name), ours, want, 5e-2)?;
        all_ours.extend_from_slice(ours);
        all_ref.extend_from_slice(want);
        count += 1;
    }
    assert_eq!(count, 119);
    let global = check_rel_l2("all gradients", &all_ours, &all_ref, 1e-2)?;
    println!("{mode:?}: loss {loss} (ref {want}), global gradient rel L2 {global:.2e}");
    check_rel_l2(
        "input_grad",
        &ws.input_grad()[..input.numel()],
        &r.get("input_grad").unwrap().tensor.data,
        5e-2,
    )?;
    assert_eq!(check_running_stats(net, &r)?, 78);
    Ok(())
}

#[test]
fn train_step_bc_l40_k12_efficient() {
    let mut net = network(&reference("cifar_bc_L40_k12", "weights"));
    check_train(&mut net, MemoryMode::Efficient, 1.0).unwrap();
}

#[test]
fn train_step_bc_l40_k12_naive() {
    let mut net = network(&reference("cifar_bc_L40_k12", "weights"));
    check_train(&mut net, MemoryMode::Naive, 1.0).unwrap();
}

/// torchvision densenet121 (42 MB of reference data, kept outside the repository).
#[test]
fn eval_torchvision_densenet121() {
    let Some((mut net, r)) = torchvision_densenet121("eval_torchvision_densenet121") else {
        return;
    };
    let (logits, pooled, acts) = eval(&mut net, &r);
    let worst = check_reference(&logits, &r, "logits").unwrap();
    println!("densenet121 logits max |diff| {worst:.2e}");
    check_reference(&pooled, &r, "pooled_features").unwrap();
    for t in r.tensors.iter().filter(|t| t.name.starts_with("act.")) {
        check_act(&t.name, &acts[&t.name], &t.tensor.data, 1e-4).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Negative controls: each simulates a classic implementation mistake and shows the checks
// above reject it.

/// BN ε = 1e-3 instead of 1e-5: in eval mode that is exactly running_var + (1e-3 − 1e-5).
#[test]
fn control_wrong_bn_epsilon_is_caught() {
    let w = reference("cifar_bc_L40_k12", "weights");
    let r = reference("cifar_bc_L40_k12", "eval");
    let mut net = network(&w);
    for e in net.arch.stats.entries().to_vec() {
        if e.name.ends_with("running_var") {
            net.stats[e.range()]
                .iter_mut()
                .for_each(|v| *v += 1e-3 - 1e-5);
        }
    }
    let (logits, _, _) = eval(&mut net, &r);
    let res = check_reference(&logits, &r, "logits");
    assert!(res.is_err(), "a wrong BN epsilon must be detected");
}

/// Newest-first concatenation `[y(ℓ−1), …, y1, x0]`: equivalent to feeding every reader of
/// a block the channels in that order, i.e. permuting the input channels of each norm1,
/// conv1, transition and final norm.
#[test]
fn control_newest_first_concatenation_is_caught() {
    let w = reference("cifar_bc_L40_k12", "weights");
    let r = reference("cifar_bc_L40_k12", "eval");
    let mut net = network(&w);
    let k = net.config().growth_rate;
    let blocks = net.arch.blocks.clone();
    for block in &blocks {
        let readers = block
            .layers
            .iter()
            .map(|l| (l.c_in, &l.norm1, &l.conv1))
            .chain(
                block
                    .transition
                    .iter()
                    .map(|t| (t.conv.cin, &t.norm, &t.conv)),
            );
        for (m, norm, conv) in readers {
            // newest-first position j holds oldest-first channel perm[j]
            let mut perm = Vec::new();
            let groups = (m - block.c_in) / k;
            for gi in (0..groups).rev() {
                perm.extend((0..k).map(|c| block.c_in + gi * k + c));
            }
            perm.extend(0..block.c_in);
            let permute = |buf: &mut [f32], stride: usize, rows: usize| {
                let old = buf.to_vec();
                for r in 0..rows {
                    for (j, &src) in perm.iter().enumerate() {
                        buf[(r * m + j) * stride..][..stride]
                            .copy_from_slice(&old[(r * m + src) * stride..][..stride]);
                    }
                }
            };
            permute(&mut net.params[norm.weight..norm.weight + 2 * m], 1, 2);
            permute(&mut net.stats[norm.running..norm.running + 2 * m], 1, 2);
            let kk = conv.k * conv.k;
            permute(
                &mut net.params[conv.weight..conv.weight + conv.numel()],
                kk,
                conv.cout,
            );
        }
    }
    let (logits, _, _) = eval(&mut net, &r);
    let res = check_reference(&logits, &r, "logits");
    assert!(res.is_err(), "newest-first concatenation must be detected");
}

/// The ImageNet family, whose stem (7×7 stride 2, BN-ReLU, 3×3 max pool) no reference case
/// above covers: every tensor's largest gradient entry and the input gradient's against
/// finite differences of the loss (`common::check_finite_differences`), with the BN
/// parameters moved off their initial 1 and 0. Input 20 leaves block 1 at 5×5, so its
/// transition pools an odd size (the floor drops a row and a column); with dropout the
/// transition takes the route that convolves before pooling, on every kernels table.
#[test]
fn imagenet_densenet_gradients_match_finite_differences() {
    for drop_rate in [0.0, 0.2] {
        let mut cfg = DenseNetConfig::from_json(
            r#"{"family":"imagenet_densenet","growth_rate":4,"block_config":[2,1],
                "init_features":8,"bn_size":2,"num_classes":3}"#,
        )
        .unwrap();
        cfg.input_size = 20;
        cfg.drop_rate = drop_rate;
        let mut net = DenseNet::new(&cfg, 5);
        let mut rng = densenet::util::rng::Rng::new(11);
        for e in net.param_table().entries().to_vec() {
            if e.shape.len() == 1 && !e.name.starts_with("classifier.") {
                net.buffers_mut().params[e.range()]
                    .iter_mut()
                    .for_each(|v| *v += 0.2 * rng.normal() as f32);
            }
        }
        let n = 3;
        let x: Vec<f32> = (0..n * 3 * 20 * 20).map(|_| rng.normal() as f32).collect();
        let y: Vec<u32> = (0..n as u32).collect();
        let name = format!("imagenet densenet, dropout {drop_rate}");
        let worst = check_finite_differences(&name, &mut net, &x, &y);
        println!("{name}: worst relative difference {worst:.1e}");
    }
}

/// A sum-reduced loss (gradients N times too large) fails the gradient checks.
#[test]
fn control_sum_reduced_loss_is_caught() {
    let mut net = network(&reference("cifar_bc_L40_k12", "weights"));
    let res = check_train(&mut net, MemoryMode::Efficient, 4.0);
    assert!(
        res.is_err() && res.as_ref().unwrap_err().contains("grad"),
        "{res:?}"
    );
}
