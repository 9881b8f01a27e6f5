//! Training runs on the built-in digits set with a tiny model: resuming is exact, an
//! interrupted checkpoint write leaves the previous checkpoint usable, a diverging loss
//! stops with the last good checkpoint intact, and the run directory has what it promises.

mod common;
use common::{digits_run, rel_l2};
use densenet::nn::TrainOptions;
use densenet::optim::{param_groups, ParamGroup, Sgd, SgdConfig};
use densenet::train::finetune::{FinetuneConfig, Freeze};
use densenet::train::{
    self, checkpoint, Quiet, RunOptions, RunSummary, Schedule, TrainConfig, TrainError,
};
use densenet::train::{DataParallel, LargeBatch, LrScaling, StepInput};
use densenet::MemoryMode;
use densenet::{AnyModel, ModelConfig};
use densenet::{DenseNet, DenseNetConfig};
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("densenet-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// DenseNet-BC L=16 k=4 (2 layers per block) on 8×8 digits: a few seconds an epoch… less.
fn tiny(epochs: usize) -> TrainConfig {
    digits_run(
        DenseNetConfig::cifar(16, 4, true, 0.5).unwrap().into(),
        epochs,
    )
}

/// Trains `cfg` in `dir` quietly: a fresh run, or the run there resumed; stopped after
/// `stop_after` epochs if given.
fn run(
    cfg: &TrainConfig,
    dir: &std::path::Path,
    stop_after: Option<usize>,
    resume: bool,
) -> RunSummary {
    let mut opts = RunOptions::new(dir);
    (opts.stop_after, opts.resume) = (stop_after, resume);
    train::train(cfg, &opts, &mut Quiet).unwrap()
}

fn weights(dir: &std::path::Path) -> Vec<f32> {
    let f = densenet::weights::read_safetensors(&dir.join("last.safetensors")).unwrap();
    f.tensors
        .iter()
        .flat_map(|t| t.tensor.data.clone())
        .collect()
}

#[test]
fn resume_continues_exactly() {
    let mut cfg = tiny(2);
    cfg.model.as_densenet_mut().unwrap().drop_rate = 0.1; // dropout masks must resume exactly too
    let straight = tmp("straight");
    let s = run(&cfg, &straight, None, false);
    assert_eq!(s.epochs, 2);

    let split = tmp("split");
    let first = run(&cfg, &split, Some(1), false);
    assert_eq!(first.epochs, 1);
    assert!(
        !split.join("summary.json").exists(),
        "an unfinished run has no summary"
    );
    // a checkpoint write interrupted before its rename leaves a partial temporary file
    std::fs::write(split.join(".last.safetensors.tmp"), b"half a checkpoi").unwrap();
    let second = run(&cfg, &split, None, true);
    assert_eq!(second.epochs, 2);
    assert_eq!(
        weights(&straight),
        weights(&split),
        "1 epoch + resume 1 epoch = 2 epochs"
    );

    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(split.join("summary.json")).unwrap()).unwrap();
    for key in ["test_accuracy", "epochs", "seconds", "model", "dataset"] {
        assert!(summary.get(key).is_some(), "summary.json lacks {key}");
    }
    let acc = summary["test_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    let metrics = train::read_metrics(&split.join("metrics.csv")).unwrap();
    assert_eq!(metrics.len(), 2);
    assert!(split.join("config.json").exists() && split.join("best.safetensors").exists());
}

#[test]
fn interrupted_checkpoint_write_keeps_the_previous_checkpoint() {
    let cfg = tiny(1);
    let dir = tmp("interrupted");
    train::train(&cfg, &RunOptions::new(&dir), &mut Quiet).unwrap();
    let before = std::fs::read(dir.join("last.safetensors")).unwrap();
    // what a crash between writing the temporary file and the rename leaves behind
    std::fs::write(
        dir.join(".last.safetensors.tmp"),
        &before[..before.len() / 3],
    )
    .unwrap();
    let mut net = DenseNet::new(
        &densenet::DenseNetConfig {
            in_channels: 1,
            input_size: 8,
            ..cfg.model.as_densenet().unwrap().clone()
        },
        0,
    );
    let mut opt = densenet::optim::Sgd::new(cfg.optimizer);
    let loaded = checkpoint::load(&dir.join("last.safetensors"), &mut net, &mut opt).unwrap();
    assert_eq!(loaded.state.epochs_done, 1);
    assert_eq!(opt.momentum.len(), net.params.len());
    // and an atomic write replaces the file whole
    densenet::util::atomic::write(&dir.join("last.safetensors"), b"new").unwrap();
    assert_eq!(std::fs::read(dir.join("last.safetensors")).unwrap(), b"new");
}

#[test]
fn diverging_loss_stops_with_the_last_good_checkpoint() {
    let mut cfg = tiny(3);
    let dir = tmp("diverge");
    run(&cfg, &dir, Some(1), false);
    let good = std::fs::read(dir.join("last.safetensors")).unwrap();
    // an absurd learning rate from epoch 2 on: continue the run with it
    cfg.optimizer.lr = 1e30;
    cfg.schedule = Schedule::Constant;
    let dir2 = tmp("diverge2");
    std::fs::create_dir_all(&dir2).unwrap();
    let err = train::train(&cfg, &RunOptions::new(&dir2), &mut Quiet).unwrap_err();
    match &err {
        TrainError::Diverged { epoch, .. } => assert_eq!(*epoch, 1),
        other => panic!("expected divergence, got {other}"),
    }
    assert!(err.to_string().contains("training stopped"), "{err}");
    assert_eq!(std::fs::read(dir.join("last.safetensors")).unwrap(), good);
}

/// Issue 12, item 1: a fresh run never replaces a run unless asked to, and generated names
/// get a suffix instead of sharing a directory.
#[test]
fn fresh_run_refuses_an_existing_run() {
    let cfg = tiny(1);
    let dir = tmp("exists");
    train::train(&cfg, &RunOptions::new(&dir), &mut Quiet).unwrap();
    let before = std::fs::read(dir.join("last.safetensors")).unwrap();
    let err = train::train(&cfg, &RunOptions::new(&dir), &mut Quiet).unwrap_err();
    assert!(matches!(err, TrainError::RunExists { .. }), "{err}");
    assert_eq!(std::fs::read(dir.join("last.safetensors")).unwrap(), before);
    assert!(dir.join("summary.json").exists());

    // unique: the next free name
    let unique = RunOptions {
        unique: true,
        ..RunOptions::new(&dir)
    };
    let s = train::train(&cfg, &unique, &mut Quiet).unwrap();
    let mut second = dir.as_os_str().to_owned();
    second.push("-2");
    assert_eq!(s.run_dir, PathBuf::from(&second));
    assert!(PathBuf::from(&second).join("summary.json").exists());
    assert_eq!(std::fs::read(dir.join("last.safetensors")).unwrap(), before);

    // replace: the run's files go, other files stay
    std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
    let replace = RunOptions {
        replace: true,
        stop_after: Some(0),
        ..RunOptions::new(&dir)
    };
    let err = train::train(&cfg, &replace, &mut Quiet);
    assert!(err.is_ok(), "{:?}", err.err());
    assert!(!dir.join("last.safetensors").exists() && !dir.join("summary.json").exists());
    assert_eq!(std::fs::read(dir.join("notes.txt")).unwrap(), b"mine");

    // a directory with other files is not a run: refused even with replace
    let other = tmp("other-files");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("data.bin"), b"x").unwrap();
    let err = train::train(
        &cfg,
        &RunOptions {
            replace: true,
            ..RunOptions::new(&other)
        },
        &mut Quiet,
    )
    .unwrap_err();
    assert!(matches!(err, TrainError::NotARunDir { .. }), "{err}");
    std::fs::remove_dir_all(PathBuf::from(&second)).ok();
}

/// Issue 12, item 3: a run that fails before its first epoch leaves nothing behind; an
/// empty directory it was given stays (empty).
#[test]
fn failed_run_leaves_nothing_behind() {
    let dir = tmp("failed");
    let mut cfg = tiny(1);
    cfg.dataset = "foo".into();
    assert!(train::train(&cfg, &RunOptions::new(&dir), &mut Quiet).is_err());
    assert!(!dir.exists(), "unknown data set");
    let mut cfg = tiny(1);
    cfg.dataset = "cifar10".into();
    cfg.data_dir = Some("/nonexistent/cifar".into());
    assert!(train::train(&cfg, &RunOptions::new(&dir), &mut Quiet).is_err());
    assert!(!dir.exists(), "missing data");
    let mut cfg = tiny(1);
    cfg.optimizer.lr = f32::NAN;
    assert!(train::train(&cfg, &RunOptions::new(&dir), &mut Quiet).is_err());
    assert!(!dir.exists(), "a rate that is not a number");
    // a finite rate so large that the first epoch diverges (or ends with a NaN test loss)
    cfg.optimizer.lr = 1e30;
    let err = train::train(&cfg, &RunOptions::new(&dir), &mut Quiet).unwrap_err();
    assert!(
        err.to_string().contains("NaN") || matches!(err, TrainError::Diverged { .. }),
        "{err}"
    );
    assert!(!dir.exists(), "diverged in the first epoch");
    std::fs::create_dir_all(&dir).unwrap();
    assert!(train::train(&cfg, &RunOptions::new(&dir), &mut Quiet).is_err());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "left as found");
}

/// Raises the interrupt flag at a chosen point, as a Ctrl-C handler would.
struct InterruptAt<'a> {
    flag: &'a std::sync::atomic::AtomicBool,
    /// (epoch, batches done) at which to raise it.
    at: (usize, usize),
    epoch: usize,
}

impl densenet::train::Progress for InterruptAt<'_> {
    fn epoch_start(&mut self, epoch: usize, _: usize, _: usize) {
        self.epoch = epoch;
    }
    fn batch(&mut self, done: usize, _: f64, _: f64, _: f64) {
        if (self.epoch, done) == self.at {
            self.flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Ctrl-C: the run stops after the step, drops the unfinished epoch whole (no metrics
/// row, no checkpoint, no summary), and resumes to the same weights as a straight run.
#[test]
fn interrupt_drops_the_unfinished_epoch() {
    use std::sync::atomic::AtomicBool;
    let cfg = tiny(2);
    let dir = tmp("interrupt");
    let flag = AtomicBool::new(false);
    let opts = RunOptions {
        interrupt: Some(&flag),
        ..RunOptions::new(&dir)
    };
    let mut progress = InterruptAt {
        flag: &flag,
        at: (2, 3),
        epoch: 0,
    };
    let err = train::train(&cfg, &opts, &mut progress).unwrap_err();
    match &err {
        TrainError::Interrupted {
            epochs_done,
            epochs,
            ..
        } => assert_eq!((*epochs_done, *epochs), (1, 2)),
        other => panic!("expected an interruption, got {other}"),
    }
    assert_eq!(
        train::read_metrics(&dir.join("metrics.csv")).unwrap().len(),
        1
    );
    assert!(!dir.join("summary.json").exists());
    let resumed = run(&cfg, &dir, None, true);
    assert_eq!(resumed.epochs, 2);
    let straight = tmp("interrupt-straight");
    run(&cfg, &straight, None, false);
    assert_eq!(weights(&dir), weights(&straight));

    // during the first epoch of a fresh run: nothing is kept
    let first = tmp("interrupt-first");
    flag.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut progress = InterruptAt {
        flag: &flag,
        at: (1, 1),
        epoch: 0,
    };
    let opts = RunOptions {
        interrupt: Some(&flag),
        ..RunOptions::new(&first)
    };
    let err = train::train(&cfg, &opts, &mut progress).unwrap_err();
    assert!(
        matches!(err, TrainError::Interrupted { epochs_done: 0, .. }),
        "{err}"
    );
    assert!(!first.exists());
}

// ---- large batches: gradient accumulation, warmup, linear scaling, no BN decay ----

/// The tiny DenseNet-BC on 8×8 one-channel inputs, as the digits runs fit it.
fn tiny_model() -> ModelConfig {
    let mut c = DenseNetConfig::cifar(16, 4, true, 0.5).unwrap();
    (c.in_channels, c.input_size, c.num_classes) = (1, 8, 10);
    c.into()
}

/// `n` random 8×8 images and labels.
fn random_batch(n: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = densenet::util::rng::Rng::new(seed);
    let x = (0..n * 64).map(|_| rng.normal() as f32).collect();
    let y = (0..n)
        .map(|i| ((i as u64 * 7 + seed) % 10) as u32)
        .collect();
    (x, y)
}

fn groups(net: &AnyModel) -> Vec<ParamGroup> {
    param_groups(&[(0..net.num_params(), 0.1)], 1e-4, &[])
}

/// Three steps of [`DataParallel::step`] on one process, `passes` passes each, on
/// `batches`; the parameters after them.
fn steps(batches: &[(Vec<f32>, Vec<u32>)], passes: usize) -> Vec<f32> {
    let mut net = AnyModel::new(&tiny_model(), 5);
    let n = batches[0].1.len();
    let mut ws = net.workspace(n / passes, MemoryMode::Efficient, true);
    let mut opt = Sgd::new(SgdConfig::default());
    let mut dp = DataParallel::new(None, false);
    let groups = groups(&net);
    for (i, (x, y)) in batches.iter().enumerate() {
        let out = dp.step(
            &mut *net,
            &mut ws,
            &mut opt,
            &StepInput {
                images: x,
                labels: y,
                whole: n,
                seed: &[i as u64],
                frozen: false,
                groups: &groups,
                passes,
                stop: false,
            },
        );
        assert!(out.updated && out.images == n);
    }
    net.params().to_vec()
}

/// Batch norm made batch-independent: each batch of 64 is 4 copies of 16 images, so that
/// every pass of 16 has the whole batch's statistics. Then 4 passes of 16 are one pass of
/// 64, to rounding; with 64 different images they are not (the test can fail).
#[test]
fn accumulating_four_passes_equals_one_pass_when_bn_sees_the_same_statistics() {
    let repeated: Vec<(Vec<f32>, Vec<u32>)> = (0..3)
        .map(|s| {
            let (x, y) = random_batch(16, s);
            (x.repeat(4), y.repeat(4))
        })
        .collect();
    let e = rel_l2(&steps(&repeated, 4), &steps(&repeated, 1));
    assert!(e <= 1e-5, "relative L2 error after 3 steps {e:.2e}");
    let distinct: Vec<_> = (0..3).map(|s| random_batch(64, 10 + s)).collect();
    let e = rel_l2(&steps(&distinct, 4), &steps(&distinct, 1));
    assert!(
        e > 1e-4,
        "batch norm's statistics of 16 are not those of 64: {e:.2e}"
    );
}

/// With batch norm, a step of 4 passes is 4 passes of 16 computed by hand: each pass's
/// gradient (its loss the mean over the 64 images) on its own, summed, one update.
#[test]
fn accumulating_four_passes_is_the_sum_of_four_gradients_by_hand() {
    let batches: Vec<_> = (0..3).map(|s| random_batch(64, 20 + s)).collect();
    let accumulated = steps(&batches, 4);
    let mut net = AnyModel::new(&tiny_model(), 5);
    let mut ws = net.workspace(16, MemoryMode::Efficient, true);
    let mut opt = Sgd::new(SgdConfig::default());
    let groups = groups(&net);
    let opts = TrainOptions {
        batch_total: Some(64),
        ..Default::default()
    };
    for (x, y) in &batches {
        let mut sum = vec![0f32; net.num_params()];
        for k in 0..4 {
            net.zero_grad();
            net.forward_train(
                &mut ws,
                &x[k * 16 * 64..(k + 1) * 16 * 64],
                &y[k * 16..(k + 1) * 16],
                &opts,
            );
            net.backward(&mut ws, &opts);
            sum.iter_mut().zip(net.grads()).for_each(|(s, g)| *s += g);
        }
        let bufs = net.buffers_mut();
        opt.step_groups(bufs.params, &sum, &groups);
    }
    let e = rel_l2(&accumulated, net.params());
    assert!(e <= 1e-5, "relative L2 error after 3 steps {e:.2e}");
}

/// 192 of the digits' training images at batch 64 (3 steps an epoch), no augmentation.
fn small_run(epochs: usize) -> TrainConfig {
    TrainConfig {
        batch_size: 64,
        val_split: 0.872,
        ..tiny(epochs)
    }
}

/// Evaluation-mode batch norm (frozen features, only the classifier trains) has no batch
/// dependence: 4 passes of 16 are a batch of 64 to rounding, through a whole run.
#[test]
fn with_evaluation_mode_bn_accumulating_four_passes_is_one_batch() {
    let pre = tmp("acc-pretrained");
    run(&small_run(1), &pre, None, false);
    let finetune = |k: usize, name: &str| {
        let mut cfg = small_run(1);
        cfg.finetune = FinetuneConfig {
            init: Some(pre.join("last.safetensors")),
            freeze: Some(Freeze::Features),
            lr_features: None,
        };
        cfg.large_batch.accumulate = k;
        let dir = tmp(name);
        run(&cfg, &dir, None, false);
        dir
    };
    let (one, four) = (finetune(1, "acc-1"), finetune(4, "acc-4"));
    let (a, b) = (weights(&four), weights(&one));
    let e = rel_l2(&a, &b);
    assert!(e <= 1e-5, "relative L2 error after 3 steps {e:.2e}");
    // the classifier did train
    assert_ne!(weights(&pre), b);
    for d in [pre, one, four] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Every step's learning rate in `steps.csv` is the formula's: linear scaling (batch 32
/// of the reference 64: ×½), a warmup over the first epoch rising from base/N to base in
/// its N = 6 steps, then the step schedule (÷10 from epoch 3).
#[test]
fn the_learning_rate_of_every_step_follows_warmup_and_linear_scaling() {
    let mut cfg = small_run(3);
    cfg.batch_size = 32;
    cfg.schedule = Schedule::Step {
        milestones: vec![2],
        gamma: 0.1,
    };
    cfg.large_batch.lr_scaling = Some(LrScaling::Linear {
        reference_batch: 64,
    });
    cfg.large_batch.warmup_epochs = 1;
    let dir = tmp("warmup");
    run(&cfg, &dir, None, false);
    let rows = train::read_steps(&dir.join("steps.csv")).unwrap();
    assert_eq!(rows.len(), 18, "3 epochs of 6 steps");
    let base = 0.1 * 32.0 / 64.0;
    for (s, r) in rows.iter().enumerate() {
        let warm = ((s + 1) as f64 / 6.0).min(1.0);
        let epoch = s / 6;
        let want = base * warm * if epoch >= 2 { 0.1 } else { 1.0 };
        assert_eq!((r.step, r.epoch, r.batch), (s + 1, epoch + 1, s % 6 + 1));
        let e = (r.lr as f64 - want).abs() / want;
        assert!(e < 1e-6, "step {}: lr {} against {want}", r.step, r.lr);
        assert_eq!(r.images, 32);
    }
    // metrics.csv has each epoch's last rate: base after the warmup
    let m = train::read_metrics(&dir.join("metrics.csv")).unwrap();
    assert!((m[0].lr as f64 - base).abs() < 1e-7);
    let config: TrainConfig =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config.large_batch, cfg.large_batch, "the recipe is stated");
    // the curves draw the rate of every step from it
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_densenet"))
        .arg("plot")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("curves.png").exists());
    let _ = std::fs::remove_dir_all(dir);
}

/// A run with every one of them (and dropout) resumes exactly, and its step log too: the
/// rows of an epoch that has no checkpoint are dropped and run again.
#[test]
fn resume_is_exact_with_warmup_scaling_no_bn_decay_and_accumulation() {
    let mut cfg = small_run(3);
    cfg.model.as_densenet_mut().unwrap().drop_rate = 0.1;
    cfg.large_batch = LargeBatch {
        lr_scaling: Some(LrScaling::Linear {
            reference_batch: 64,
        }),
        warmup_epochs: 2,
        no_bn_decay: true,
        accumulate: 2,
    };
    let (straight, split) = (tmp("lb-straight"), tmp("lb-split"));
    run(&cfg, &straight, None, false);
    run(&cfg, &split, Some(1), false);
    // the steps of an epoch whose checkpoint was never written
    let log = split.join("steps.csv");
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str("4,2,1,64,0.05,2.3\n5,2,2,6");
    std::fs::write(&log, text).unwrap();
    run(&cfg, &split, None, true);
    assert_eq!(weights(&straight), weights(&split), "bit-identical weights");
    let (a, b) = (
        train::read_steps(&straight.join("steps.csv")).unwrap(),
        train::read_steps(&log).unwrap(),
    );
    assert_eq!(a.len(), 9);
    assert_eq!(a, b, "the same steps, once each");
    for d in [straight, split] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// `no_bn_decay`: after one step, the 1-D tensors (BN parameters, the classifier's bias)
/// are those of a run without weight decay, bit for bit; the others are not.
#[test]
fn no_bn_decay_leaves_bn_parameters_and_biases_undecayed() {
    let one_step = |wd: f32, no_bn_decay: bool, name: &str| {
        let mut cfg = small_run(1);
        cfg.batch_size = 192;
        cfg.optimizer.weight_decay = wd;
        cfg.large_batch.no_bn_decay = no_bn_decay;
        let dir = tmp(name);
        run(&cfg, &dir, None, false);
        let f = densenet::weights::read_safetensors(&dir.join("last.safetensors")).unwrap();
        let _ = std::fs::remove_dir_all(dir);
        f.tensors
    };
    let (none, decayed, skipped) = (
        one_step(0.0, false, "nd-0"),
        one_step(0.5, false, "nd-decayed"),
        one_step(0.5, true, "nd-skipped"),
    );
    // 1-D tensors kept from decay, and those that decay changes without the flag (BN
    // weights; biases start at 0, where decay does nothing); the others, decayed
    let mut checked = [0, 0, 0];
    for ((n, d), s) in none.iter().zip(&decayed).zip(&skipped) {
        let stats = ["running", "num_batches"]
            .iter()
            .any(|w| n.name.contains(w));
        if n.name.starts_with("optim.") || stats {
            continue;
        }
        assert_eq!(n.name, s.name);
        if n.tensor.shape.len() == 1 {
            assert_eq!(s.tensor.data, n.tensor.data, "{}: not decayed", n.name);
            checked[0] += 1;
            checked[1] += usize::from(d.tensor.data != n.tensor.data);
        } else {
            assert_ne!(s.tensor.data, n.tensor.data, "{}: decayed", n.name);
            checked[2] += 1;
        }
    }
    assert!(checked.iter().all(|&c| c >= 5), "{checked:?}");
}

/// Resuming a finished run trains nothing and leaves its summary.json as the session
/// that finished it wrote it (it was rewritten with 0 images/s).
#[test]
fn resuming_a_finished_run_keeps_its_summary() {
    let cfg = tiny(1);
    let dir = tmp("finished");
    train::train(&cfg, &RunOptions::new(&dir), &mut Quiet).unwrap();
    let before = std::fs::read(dir.join("summary.json")).unwrap();
    let s: serde_json::Value = serde_json::from_slice(&before).unwrap();
    assert!(s["images_per_s"].as_f64().unwrap() > 0.0, "{s}");
    let resume = RunOptions {
        resume: true,
        ..RunOptions::new(&dir)
    };
    let again = train::train(&cfg, &resume, &mut Quiet).unwrap();
    assert_eq!(again.epochs, 1);
    assert_eq!(std::fs::read(dir.join("summary.json")).unwrap(), before);
    let _ = std::fs::remove_dir_all(&dir);
}
