//! Helpers shared by the integration tests: temporary folders, the runs and the command
//! lines they train with (`digits_run`, `TINY_RUN`), running the binary and reading its
//! JSON, where the reference files are, `check_*` functions with the tolerances of
//! `reference/README.md` that return an error (so negative controls can assert that a
//! wrong result is caught), and the passes those checks run (`eval_probed`, `train_step`).
#![allow(dead_code)]

pub mod files;

use densenet::model::{Model, ModelConfig, Workspace};
use densenet::nn::TrainOptions;
use densenet::optim::SgdConfig;
use densenet::train::{Schedule, TrainConfig};
use densenet::util::tensor::Tensor;
use densenet::weights::{read_safetensors, TensorFile};
use densenet::MemoryMode;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `name` in this test process's own temporary folder `densenet-{prefix}-{pid}`.
pub fn tmp_in(prefix: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("densenet-{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// `f()` on a rayon pool of its own of `threads` threads (the thread count the library's
/// parallel regions split over).
pub fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
        .install(f)
}

/// A fresh, empty directory `path` (whatever was there is removed).
pub fn fresh(path: PathBuf) -> PathBuf {
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).unwrap();
    path
}

/// Writes at `path` the weights of a small DenseNet (BC-16-4, seed 0) for 1-channel
/// images of `size`×`size`, its model in the metadata (as a checkpoint has it).
pub fn small_weights(path: &Path, size: usize) {
    let mut cfg = densenet::DenseNetConfig::from_name("densenet-bc-16-4").unwrap();
    (cfg.in_channels, cfg.input_size) = (1, size);
    let cfg = densenet::ModelConfig::from(cfg);
    let net = densenet::AnyModel::new(&cfg, 0);
    let meta = std::collections::HashMap::from([(
        "config".to_string(),
        serde_json::to_string(&cfg).unwrap(),
    )]);
    densenet::weights::write_safetensors(path, &net.state_dict(), &[], meta).unwrap();
}

/// A training run of `model` on the built-in digits: `epochs` epochs at batch 100, SGD
/// with its defaults on the cosine schedule, no augmentation and no validation split,
/// seed 7, efficient memory, neither fine-tuning nor the large-batch recipe.
pub fn digits_run(model: ModelConfig, epochs: usize) -> TrainConfig {
    TrainConfig {
        model,
        dataset: "digits".into(),
        data_dir: None,
        epochs,
        batch_size: 100,
        optimizer: SgdConfig::default(),
        schedule: Schedule::Cosine,
        augment: false,
        upscale: 1,
        val_split: 0.0,
        seed: 7,
        memory: MemoryMode::Efficient,
        svhn_extra: false,
        sync_bn: false,
        finetune: Default::default(),
        large_batch: Default::default(),
    }
}

/// Writes a fake finished run (only what `compare` reads).
pub fn fake_run(dir: &Path, model: &str, parameters: u64, error: f64) {
    std::fs::create_dir_all(dir).unwrap();
    let s = serde_json::json!({"model": model, "family": "densenet", "dataset": "digits",
        "parameters": parameters, "test_error_percent": error, "epochs": 1});
    std::fs::write(dir.join("summary.json"), s.to_string()).unwrap();
}

/// Writes `line` to the test process's stderr handle itself: the harness captures the
/// `eprintln!` of a passing test, and a SKIPPED line must reach CI's log.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Runs the `densenet` binary with `args`.
pub fn densenet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_densenet"))
        .args(args)
        .output()
        .expect("run densenet")
}

/// Runs the `densenet` binary with `args` in directory `cwd` (for relative paths).
pub fn densenet_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_densenet"))
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("run densenet")
}

/// `densenet train` of one epoch of the smallest DenseNet-BC (L = 16, k = 4), on the
/// built-in digits unless more arguments say otherwise.
pub const TINY_RUN: [&str; 5] = ["train", "--model", "densenet-bc-16-4", "--epochs", "1"];

/// A command's standard error, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The standard output of a command that succeeded, as the one JSON value it printed.
pub fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).expect("one JSON object")
}

/// The reference files committed with the repository.
pub fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference")
}

/// `../shared/reference`, when this checkout has it (it holds the large densenet121 case).
pub fn shared_reference_dir() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference");
    d.is_dir().then_some(d)
}

/// torchvision's densenet121 with the weights of `../shared/reference` and its eval
/// reference (input, logits, activations); `None`, having said SKIPPED for `test`, where
/// the checkout does not have them.
pub fn torchvision_densenet121(test: &str) -> Option<(densenet::DenseNet, TensorFile)> {
    let Some(dir) = shared_reference_dir() else {
        say(&format!(
            "SKIPPED {test}: ../shared/reference is not present"
        ));
        return None;
    };
    let read = |name: &str| read_safetensors(&dir.join(name)).unwrap_or_else(|e| panic!("{e}"));
    let w = read("torchvision_densenet121.weights.safetensors");
    let config = densenet::DenseNetConfig::from_name("densenet121").unwrap();
    let mut net = densenet::DenseNet::new(&config, 0);
    net.load_tensors(&w.tensors, "densenet121 weights").unwrap();
    Some((net, read("torchvision_densenet121.eval.safetensors")))
}

/// Reads a committed reference file by case and kind (`weights`, `eval`, `train`).
pub fn reference(case: &str, kind: &str) -> TensorFile {
    let p = reference_dir().join(format!("{case}.{kind}.safetensors"));
    read_safetensors(&p).unwrap_or_else(|e| panic!("{e}"))
}

/// Elementwise `|a−b| ≤ atol + rtol·|b|` (logits, pooled features, running statistics).
pub fn check_close(name: &str, a: &[f32], b: &[f32], atol: f32, rtol: f32) -> Result<f32, String> {
    if a.len() != b.len() {
        return Err(format!("{name}: {} elements vs {}", a.len(), b.len()));
    }
    let mut worst = 0f32;
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs();
        worst = worst.max(d);
        // written so that a NaN fails too
        if d.is_nan() || d > atol + rtol * y.abs() {
            return Err(format!(
                "{name}: element {i}: {x} vs reference {y} (|diff| {d})"
            ));
        }
    }
    Ok(worst)
}

/// `max|a−b| ≤ tol·max(1, max|b|)` (intermediate activations).
pub fn check_act(name: &str, a: &[f32], b: &[f32], tol: f32) -> Result<f32, String> {
    if a.len() != b.len() {
        return Err(format!("{name}: {} elements vs {}", a.len(), b.len()));
    }
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    if worst <= tol * scale {
        Ok(worst)
    } else {
        Err(format!("{name}: max |diff| {worst} > {tol}·{scale}"))
    }
}

/// Relative L2 error `‖a−b‖/‖b‖` (gradients).
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "relative L2 of two lengths");
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

/// `‖a−b‖ ≤ tol·‖b‖`.
pub fn check_rel_l2(name: &str, a: &[f32], b: &[f32], tol: f64) -> Result<f64, String> {
    if a.len() != b.len() {
        return Err(format!("{name}: {} elements vs {}", a.len(), b.len()));
    }
    let r = rel_l2(a, b);
    if r <= tol {
        Ok(r)
    } else {
        Err(format!("{name}: relative L2 error {r:.3e} > {tol:.0e}"))
    }
}

/// Fits `f(L) = a·L² + b·L + c` through the three depths `ls` and returns the share of the
/// quadratic term in f at the last of them: 0 for memory linear in depth.
pub fn quadratic_share(ls: [usize; 3], f: impl Fn(usize) -> f64) -> f64 {
    let [x1, x2, x3] = ls.map(|l| l as f64);
    let [f1, f2, f3] = ls.map(f);
    let a = ((f3 - f2) / (x3 - x2) - (f2 - f1) / (x2 - x1)) / (x3 - x1);
    a * x3 * x3 / f3
}

/// An evaluation-mode forward of `input` (NCHW; the batch is its first dimension) over a
/// fresh efficient workspace: the logits, the workspace (pooled features) and every
/// probed activation, named `act.{module}` as the reference files name them.
pub fn eval_probed(
    net: &mut dyn Model,
    input: &Tensor,
) -> (Vec<f32>, Workspace, HashMap<String, Vec<f32>>) {
    let n = input.shape[0];
    let mut ws = net.workspace(n, MemoryMode::Efficient, false);
    let mut acts = HashMap::new();
    let mut probe = |name: &str, t: Tensor| {
        acts.insert(format!("act.{name}"), t.data);
    };
    let logits = net.forward_eval(&mut ws, &input.data, n, Some(&mut probe));
    (logits, ws, acts)
}

/// Checks every running statistic of `net` against `post.{name}` of the reference file
/// `r` (within 1e-5); returns how many tensors it checked.
pub fn check_running_stats(net: &dyn Model, r: &TensorFile) -> Result<usize, String> {
    let entries = net.stats_table().entries();
    for e in entries {
        let want = &r
            .get(&format!("post.{}", e.name))
            .ok_or(format!("no post.{}", e.name))?
            .tensor
            .data;
        check_close(
            &format!("post.{}", e.name),
            &net.stats()[e.range()],
            want,
            1e-5,
            1e-5,
        )?;
    }
    Ok(entries.len())
}

/// A training step's options with the input gradient asked for, the dropout masks drawn
/// from `dropout_seed`.
pub fn with_input_grad(dropout_seed: u64) -> TrainOptions<'static> {
    TrainOptions {
        dropout_seed,
        input_grad: true,
        ..Default::default()
    }
}

/// One training step's passes of `net` on the batch `x`, `y`, over a fresh workspace of
/// `mode`: a train-mode forward ([`with_input_grad`]`(dropout_seed)`), the logits'
/// gradients multiplied by `scale_dlogits` (1: as the loss left them; else a simulated
/// wrongly reduced loss), and a backward into zeroed gradients. Returns the workspace
/// (logits, input gradient) and the loss; the gradients are `net`'s.
pub fn train_step(
    net: &mut dyn Model,
    x: &[f32],
    y: &[u32],
    mode: MemoryMode,
    dropout_seed: u64,
    scale_dlogits: f32,
) -> (Workspace, f32) {
    let mut ws = net.workspace(y.len(), mode, true);
    let opts = with_input_grad(dropout_seed);
    let loss = net.forward_train(&mut ws, x, y, &opts);
    ws.head_mut()
        .dlogits
        .iter_mut()
        .for_each(|d| *d *= scale_dlogits);
    net.zero_grad();
    net.backward(&mut ws, &opts);
    (ws, loss)
}

/// Checks every parameter tensor's largest gradient entry, and the input gradient's,
/// against central finite differences of the training loss of `net` on the batch `x`, `y`
/// (efficient memory, no dropout); panics naming the first that differs, else returns the
/// worst relative difference. A coarse check beside the PyTorch parity: the loss is
/// computed in f32 and only piecewise smooth (ReLU; on tiny maps a step of 1e-3 can cross
/// kinks and err by 5%, while a step of 1e-4 meets f32 rounding), so one coordinate at a
/// time, the largest (where rounding matters least), at three step sizes of which one must
/// agree within a tolerance that still catches any missing or doubled term.
pub fn check_finite_differences(name: &str, net: &mut dyn Model, x: &[f32], y: &[u32]) -> f64 {
    let (mut ws, _) = train_step(net, x, y, MemoryMode::Efficient, 0, 1.0);
    let opts = with_input_grad(0);
    let (grads, dx) = (net.grads().to_vec(), ws.input_grad()[..x.len()].to_vec());
    let largest = |g: &[f32]| {
        (0..g.len())
            .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
            .unwrap_or(0)
    };
    // (tensor, index into the parameters, or None for the input)
    let mut probes: Vec<(String, Option<usize>, usize)> = net
        .param_table()
        .entries()
        .iter()
        .map(|e| (e.name.clone(), Some(e.offset), largest(&grads[e.range()])))
        .collect();
    probes.push(("input".into(), None, largest(&dx)));
    let mut worst = 0f64;
    for (tensor, offset, i) in probes {
        let mut loss_at = |t: f32| -> f64 {
            let mut xs = x.to_vec();
            match offset {
                Some(o) => net.buffers_mut().params[o + i] += t,
                None => xs[i] += t,
            }
            let l = net.forward_train(&mut ws, &xs, y, &opts) as f64;
            if let Some(o) = offset {
                net.buffers_mut().params[o + i] -= t;
            }
            l
        };
        let analytic = match offset {
            Some(o) => grads[o + i],
            None => dx[i],
        } as f64;
        let (err, fd) = [1e-3f32, 3e-4, 1e-4]
            .iter()
            .map(|&eps| {
                let fd = (loss_at(eps) - loss_at(-eps)) / (2.0 * eps as f64);
                ((fd - analytic).abs() / (analytic.abs() + 1e-2), fd)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap_or((f64::INFINITY, 0.0));
        worst = worst.max(err);
        assert!(
            err < 2e-2,
            "{name} {tensor}[{i}]: finite difference {fd} vs analytic {analytic}"
        );
    }
    worst
}
