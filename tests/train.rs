//! Training runs on the built-in digits set with a tiny model: resuming is exact, an
//! interrupted checkpoint write leaves the previous checkpoint usable, a diverging loss
//! stops with the last good checkpoint intact, and the run directory has what it promises.

use densenet::optim::SgdConfig;
use densenet::train::{self, checkpoint, Quiet, RunOptions, Schedule, TrainConfig, TrainError};
use densenet::MemoryMode;
use densenet::{DenseNet, DenseNetConfig};
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("densenet-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// DenseNet-BC L=16 k=4 (2 layers per block) on 8×8 digits: a few seconds an epoch… less.
fn tiny(epochs: usize) -> TrainConfig {
    TrainConfig {
        model: DenseNetConfig::cifar(16, 4, true, 0.5).unwrap().into(),
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
    }
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
    let s = train::train(&cfg, &RunOptions::new(&straight), &mut Quiet).unwrap();
    assert_eq!(s.epochs, 2);

    let split = tmp("split");
    let first = train::train(
        &cfg,
        &RunOptions {
            stop_after: Some(1),
            ..RunOptions::new(&split)
        },
        &mut Quiet,
    )
    .unwrap();
    assert_eq!(first.epochs, 1);
    assert!(
        !split.join("summary.json").exists(),
        "an unfinished run has no summary"
    );
    // a checkpoint write interrupted before its rename leaves a partial temporary file
    std::fs::write(split.join(".last.safetensors.tmp"), b"half a checkpoi").unwrap();
    let second = train::train(
        &cfg,
        &RunOptions {
            resume: true,
            ..RunOptions::new(&split)
        },
        &mut Quiet,
    )
    .unwrap();
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
    train::train(
        &cfg,
        &RunOptions {
            stop_after: Some(1),
            ..RunOptions::new(&dir)
        },
        &mut Quiet,
    )
    .unwrap();
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
    let resumed = train::train(
        &cfg,
        &RunOptions {
            resume: true,
            ..RunOptions::new(&dir)
        },
        &mut Quiet,
    )
    .unwrap();
    assert_eq!(resumed.epochs, 2);
    let straight = tmp("interrupt-straight");
    train::train(&cfg, &RunOptions::new(&straight), &mut Quiet).unwrap();
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
