//! Fine-tuning (`--init`, `--freeze features`, `--lr-features`): what a partial load keeps
//! and re-initialises in both families, what a frozen or slowed epoch changes, that a
//! resumed fine-tuning run continues exactly, and one-line errors for weights that do not
//! fit.

mod common;

use common::digits_run;
use densenet::model::{AnyModel, ModelConfig};
use densenet::train::finetune::{init_from, FinetuneConfig, Freeze, InitError};
use densenet::train::{self, Quiet, RunOptions, TrainConfig};
use densenet::util::tensor::Tensor;
use densenet::weights::{read_safetensors, write_safetensors, NamedTensor};
use densenet::DenseNetConfig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("densenet-finetune-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// DenseNet-BC L=16 k=4 (2 layers per block) on 8×8 inputs.
fn tiny_densenet(classes: usize, in_channels: usize) -> ModelConfig {
    let mut c: ModelConfig = DenseNetConfig::cifar(16, 4, true, 0.5).unwrap().into();
    c.set_io(classes, in_channels, 8);
    c
}

fn preresnet8(classes: usize, in_channels: usize) -> ModelConfig {
    let mut c = ModelConfig::from_name("preresnet-8").unwrap();
    c.set_io(classes, in_channels, 8);
    c
}

/// A model of `cfg` whose every parameter and running statistic is distinct from any
/// fresh initialisation (so a kept tensor cannot pass for a re-initialised one), as named
/// tensors.
fn source(cfg: &ModelConfig, seed: u64) -> Vec<NamedTensor> {
    let mut m = AnyModel::new(cfg, seed);
    let b = m.buffers_mut();
    for (i, v) in b.params.iter_mut().chain(b.stats.iter_mut()).enumerate() {
        *v += 0.5 + (i % 7) as f32 * 0.125;
    }
    m.state_dict()
        .into_iter()
        .map(|(name, tensor)| NamedTensor {
            name,
            tensor,
            dtype: "F32".into(),
        })
        .collect()
}

fn save(tensors: &[NamedTensor], path: &Path) {
    let named: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|t| (t.name.clone(), t.tensor.clone()))
        .collect();
    write_safetensors(path, &named, &[], HashMap::new()).unwrap();
}

fn by_name(tensors: Vec<(String, Tensor)>) -> HashMap<String, Tensor> {
    tensors.into_iter().collect()
}

fn file_tensors(path: &Path) -> HashMap<String, Tensor> {
    read_safetensors(path)
        .unwrap()
        .tensors
        .into_iter()
        .map(|t| (t.name, t.tensor))
        .collect()
}

/// Into a model with another class count and input channel count: every tensor but the
/// classifier and the first convolution is the file's, bit for bit; those three are the
/// fresh model's own initialisation; nothing else is re-initialised or ignored. Both
/// families.
#[test]
fn partial_load_keeps_what_fits_and_reinitialises_the_rest() {
    for (src_cfg, dst_cfg, reinit) in [
        (
            tiny_densenet(5, 3),
            tiny_densenet(10, 1),
            [
                "features.conv0.weight",
                "classifier.weight",
                "classifier.bias",
            ],
        ),
        (
            preresnet8(5, 3),
            preresnet8(10, 1),
            ["conv1.weight", "fc.weight", "fc.bias"],
        ),
    ] {
        let file = source(&src_cfg, 3);
        let src = by_name(
            file.iter()
                .map(|t| (t.name.clone(), t.tensor.clone()))
                .collect(),
        );
        let fresh = by_name(AnyModel::new(&dst_cfg, 11).state_dict());
        let mut net = AnyModel::new(&dst_cfg, 11);
        let report = init_from(&mut *net, &file, "src.safetensors").unwrap();
        let names: Vec<&str> = report
            .reinitialised
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, reinit, "{}", dst_cfg.name());
        assert!(report.ignored.is_empty(), "{:?}", report.ignored);
        let total = net.param_table().entries().len() + net.stats_table().entries().len();
        assert_eq!(report.kept.len() + reinit.len(), total);
        for (name, t) in net.state_dict() {
            let want = if reinit.contains(&name.as_str()) {
                &fresh[&name]
            } else {
                assert!(report.kept.contains(&name), "{name}");
                &src[&name]
            };
            assert_eq!(t.shape, want.shape, "{name}");
            assert!(
                t.data
                    .iter()
                    .zip(&want.data)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}"
            );
        }
        let line = report.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains(&format!("{} [10]", reinit[2])), "{line}");
        assert!(line.contains("the file's is [5]"), "{line}");
    }
    // the same architecture and class count: everything is kept
    let cfg = tiny_densenet(10, 1);
    let mut net = AnyModel::new(&cfg, 1);
    let report = init_from(&mut *net, &source(&cfg, 2), "same").unwrap();
    assert!(report.reinitialised.is_empty());
}

/// Weights that do not fit are refused with one line naming the file, and the model is
/// left as it was.
#[test]
fn weights_that_do_not_fit_are_refused_in_one_line() {
    let dense = tiny_densenet(10, 1);
    let cases: [(ModelConfig, Vec<NamedTensor>, &str); 4] = [
        // the other family, both ways
        (
            dense.clone(),
            source(&preresnet8(10, 1), 1),
            "holds a ResNet (names like ",
        ),
        (
            preresnet8(10, 1),
            source(&dense, 1),
            "holds a DenseNet (names like features.",
        ),
        // another architecture of the family (growth rate 6, not 4)
        (
            dense.clone(),
            source(&DenseNetConfig::cifar(16, 6, true, 0.5).unwrap().into(), 1),
            "tensors of another shape",
        ),
        // nothing but the classifier
        (
            dense.clone(),
            source(&dense, 1)
                .into_iter()
                .filter(|t| t.name.starts_with("classifier"))
                .collect(),
            "nothing to fine-tune from",
        ),
    ];
    for (cfg, file, want) in cases {
        let mut net = AnyModel::new(&cfg, 5);
        let before = net.state_dict();
        let e: InitError = init_from(&mut *net, &file, "w.safetensors").unwrap_err();
        let e = e.to_string();
        assert!(e.starts_with("w.safetensors: "), "{e}");
        assert!(e.contains(want), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        assert_eq!(net.state_dict(), before);
    }
}

fn finetune_run(model: ModelConfig, epochs: usize, finetune: FinetuneConfig) -> TrainConfig {
    TrainConfig {
        finetune,
        ..digits_run(model, epochs)
    }
}

fn run(cfg: &TrainConfig, dir: &Path, resume: bool, stop_after: Option<usize>) {
    let opts = RunOptions {
        resume,
        stop_after,
        ..RunOptions::new(dir)
    };
    train::train(cfg, &opts, &mut Quiet).unwrap();
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.shape == b.shape
        && a.data
            .iter()
            .zip(&b.data)
            .all(|(x, y)| x.to_bits() == y.to_bits())
}

/// A DenseNet made for 5 classes of 3-channel images, fine-tuned on the digits (10
/// classes, 1 channel) for an epoch with frozen features: every feature tensor, running
/// statistics included, is still the file's (or, for the re-initialised first
/// convolution, the fresh model's), while the re-initialised classifier has trained.
/// With `--lr-features 0` instead, the features' parameters stay the file's but their
/// BN statistics follow the digits.
#[test]
fn frozen_features_stay_the_files_and_the_classifier_trains() {
    let dir = tmp("frozen");
    std::fs::create_dir_all(&dir).unwrap();
    let init = dir.join("src.safetensors");
    let file = source(&tiny_densenet(5, 3), 3);
    save(&file, &init);
    let src = file_tensors(&init);
    let model = tiny_densenet(10, 1);
    let fresh = by_name(AnyModel::new(&model, 7).state_dict());

    let frozen = FinetuneConfig {
        init: Some(init.clone()),
        freeze: Some(Freeze::Features),
        lr_features: None,
    };
    let out = dir.join("frozen");
    run(&finetune_run(model.clone(), 1, frozen), &out, false, None);
    let after = file_tensors(&out.join("last.safetensors"));
    for (name, t) in &after {
        if name.starts_with("optim.") {
            continue;
        }
        if name.starts_with("classifier.") {
            assert_eq!(t.shape, fresh[name].shape, "{name}");
            assert!(!same(t, &fresh[name]), "{name} did not train");
        } else if name == "features.conv0.weight" {
            assert!(
                same(t, &fresh[name]),
                "{name}: not the fresh initialisation"
            );
        } else {
            assert!(same(t, &src[name]), "{name} changed");
        }
    }

    let slowed = FinetuneConfig {
        init: Some(init.clone()),
        freeze: None,
        lr_features: Some(0.0),
    };
    let out = dir.join("lr0");
    run(&finetune_run(model, 1, slowed), &out, false, None);
    let after = file_tensors(&out.join("last.safetensors"));
    let (mut stats_moved, mut checked) = (0, 0);
    for (name, t) in &after {
        if name.starts_with("optim.") || name.starts_with("classifier.") {
            continue;
        }
        let want = if name == "features.conv0.weight" {
            &fresh[name]
        } else {
            &src[name]
        };
        if name.contains("running_") {
            stats_moved += usize::from(!same(t, want));
        } else {
            assert!(same(t, want), "{name} changed at learning rate 0");
            checked += 1;
        }
    }
    assert!(checked > 10 && stats_moved > 10, "{checked} {stats_moved}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same for a pre-activation ResNet: a frozen epoch trains `fc` alone.
#[test]
fn frozen_resnet_features_stay_the_files() {
    let dir = tmp("frozen-resnet");
    std::fs::create_dir_all(&dir).unwrap();
    let init = dir.join("src.safetensors");
    save(&source(&preresnet8(5, 1), 3), &init);
    let src = file_tensors(&init);
    let cfg = finetune_run(
        preresnet8(10, 1),
        1,
        FinetuneConfig {
            init: Some(init),
            freeze: Some(Freeze::Features),
            lr_features: None,
        },
    );
    let out = dir.join("run");
    run(&cfg, &out, false, None);
    let after = file_tensors(&out.join("last.safetensors"));
    for (name, t) in &after {
        if name.starts_with("fc.") {
            assert_eq!(t.shape[0], 10, "{name}");
        } else if !name.starts_with("optim.") {
            assert!(same(t, &src[name]), "{name} changed");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fine-tuning run stopped after its first epoch and resumed ends where the run
/// without a stop ends (the initial weights are loaded once, on the fresh run); a
/// changed fine-tuning setting is refused on resume.
#[test]
fn a_resumed_finetuning_run_continues_exactly() {
    let dir = tmp("resume");
    std::fs::create_dir_all(&dir).unwrap();
    let init = dir.join("src.safetensors");
    save(&source(&tiny_densenet(5, 1), 3), &init);
    let cfg = finetune_run(
        tiny_densenet(10, 1),
        2,
        FinetuneConfig {
            init: Some(init),
            freeze: Some(Freeze::Features),
            lr_features: None,
        },
    );
    let straight = dir.join("straight");
    run(&cfg, &straight, false, None);
    let split = dir.join("split");
    run(&cfg, &split, false, Some(1));
    run(&cfg, &split, true, None);
    let (a, b) = (
        file_tensors(&straight.join("last.safetensors")),
        file_tensors(&split.join("last.safetensors")),
    );
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        assert!(same(t, &b[name]), "{name}");
    }
    let mut changed = cfg.clone();
    changed.finetune.freeze = None;
    let opts = RunOptions {
        resume: true,
        ..RunOptions::new(&split)
    };
    let e = train::train(&changed, &opts, &mut Quiet).unwrap_err();
    assert!(e.to_string().contains("another configuration"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The command line: bad fine-tuning input fails with one line naming the problem.
#[test]
fn command_line_errors_are_one_line() {
    let dir = tmp("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let resnet = dir.join("preresnet.safetensors");
    save(&source(&preresnet8(10, 1), 1), &resnet);
    let missing = dir.join("missing.safetensors");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_densenet"))
            .arg("train")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    };
    let out = dir.join("run");
    let out = out.to_str().unwrap();
    let cases: [(Vec<&str>, String); 4] = [
        (
            vec!["--init", resnet.to_str().unwrap(), "--out", out],
            format!("{}: holds a ResNet (names like ", resnet.display()),
        ),
        (
            vec!["--init", missing.to_str().unwrap(), "--out", out],
            missing.display().to_string(),
        ),
        (
            vec!["--freeze", "features", "--lr-features", "0.01"],
            "cannot be used with".into(),
        ),
        (
            vec!["--freeze", "classifier"],
            "invalid value 'classifier'".into(),
        ),
    ];
    for (i, (args, want)) in cases.into_iter().enumerate() {
        let err = run(&args);
        let line = err.lines().find(|l| l.starts_with("error: "));
        assert!(line.is_some_and(|l| l.contains(&want)), "{args:?}: {err}");
        // ours end the output in one line (clap adds a usage paragraph to its own)
        if i < 2 {
            assert_eq!(err.lines().last(), line, "{args:?}: {err}");
        }
    }
    // a failed fresh run leaves no run directory behind
    assert!(!Path::new(out).exists());
    let _ = std::fs::remove_dir_all(&dir);
}
