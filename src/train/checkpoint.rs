//! Training checkpoints, the write side and resuming: one safetensors file holding the
//! weights and running statistics (state-dict names, so `densenet eval --weights` reads it
//! directly), the optimizer's momentum (`optim.momentum`, laid out like the flat parameter
//! buffer) and, in the metadata, the model and training configuration and the position in
//! the run as JSON.
//!
//! [`save`] and [`load`] are for resuming a run; the commands that only use the network
//! read the same file through [`crate::checkpoint`], which also holds the metadata's
//! shared reader.
//!
//! One file, written atomically (temporary file, then rename): a process killed at any
//! moment leaves either the previous checkpoint or the new one, never a mixture of a new
//! weights file and an old state file.

use super::{TrainConfig, TrainError, TrainState};
use crate::checkpoint::{metadata_field as field, Preprocess, MOMENTUM};
use crate::model::Model;
use crate::optim::Sgd;
use crate::util::tensor::Tensor;
use crate::weights::{read_safetensors, write_safetensors};
use std::collections::HashMap;
use std::path::Path;

/// Writes a checkpoint atomically.
pub fn save(
    path: &Path,
    net: &dyn Model,
    opt: &Sgd,
    config: &TrainConfig,
    state: &TrainState,
    pre: &Preprocess,
) -> Result<(), TrainError> {
    let mut tensors = net.state_dict();
    if !opt.momentum.is_empty() {
        tensors.push((
            MOMENTUM.to_string(),
            Tensor::new(vec![opt.momentum.len()], opt.momentum.clone()),
        ));
    }
    let json = |v: &dyn erased::Json| v.json();
    let mut meta = HashMap::new();
    meta.insert("config".into(), json(&net.model_config()));
    meta.insert("train_config".into(), json(config));
    meta.insert("train_state".into(), json(state));
    meta.insert("preprocess".into(), json(pre));
    meta.insert("format".into(), "densenet-rs/checkpoint/1".into());
    write_safetensors(path, &tensors, &[], meta)?;
    Ok(())
}

/// What a checkpoint holds besides the network.
pub struct Loaded {
    /// The training configuration of the run.
    pub config: TrainConfig,
    /// Position in the run.
    pub state: TrainState,
    /// Input preparation.
    pub preprocess: Preprocess,
}

/// Reads a checkpoint into `net` and `opt`.
pub fn load(path: &Path, net: &mut dyn Model, opt: &mut Sgd) -> Result<Loaded, TrainError> {
    let file = read_safetensors(path)?;
    let required = |key: &str| {
        TrainError::Config(format!(
            "{}: not a training checkpoint (no '{key}' in its metadata)",
            path.display()
        ))
    };
    let meta = &file.metadata;
    let config: TrainConfig =
        field(path, meta, "train_config")?.ok_or_else(|| required("train_config"))?;
    let state: TrainState =
        field(path, meta, "train_state")?.ok_or_else(|| required("train_state"))?;
    let preprocess: Preprocess =
        field(path, meta, "preprocess")?.ok_or_else(|| required("preprocess"))?;
    let (momentum, weights): (Vec<_>, Vec<_>) =
        file.tensors.into_iter().partition(|t| t.name == MOMENTUM);
    net.load_tensors(&weights, &path.display().to_string())?;
    opt.momentum = match momentum.into_iter().next() {
        Some(m) if m.tensor.numel() == net.num_params() => m.tensor.data,
        Some(m) => {
            return Err(TrainError::Config(format!(
                "{}: {MOMENTUM} has {} values, the model has {} parameters",
                path.display(),
                m.tensor.numel(),
                net.num_params()
            )))
        }
        None => Vec::new(),
    };
    Ok(Loaded {
        config,
        state,
        preprocess,
    })
}

/// JSON for metadata (serialising these plain structs cannot fail).
mod erased {
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::read_model;
    use crate::model::{AnyModel, ModelConfig};

    /// A two-layer ImageNet-style DenseNet, small enough to write in a test.
    const TINY: &str = r#"{"family":"imagenet_densenet","growth_rate":4,"block_config":[1,1],
        "init_features":8,"bn_size":2,"num_classes":3}"#;

    #[test]
    fn metadata_fields_are_absent_or_parse() {
        let dir = std::env::temp_dir().join(format!("densenet-checkpoint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = ModelConfig::from_name(TINY).unwrap();
        let net = AnyModel::new(&cfg, 0);
        let write = |name: &str, extra: &[(&str, &str)]| {
            let path = dir.join(name);
            let mut meta =
                HashMap::from([("config".to_string(), serde_json::to_string(&cfg).unwrap())]);
            meta.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            write_safetensors(&path, &net.state_dict(), &[], meta).unwrap();
            path
        };
        let error = |path: &Path, model: Option<&str>| match read_model(path, model) {
            Ok(_) => panic!("{} loaded", path.display()),
            Err(e) => e.to_string(),
        };

        // a state dict with only its model: the rest is absent, not an error
        let plain = write("plain.safetensors", &[]);
        let m = read_model(&plain, None).unwrap();
        assert_eq!(m.net.model_config(), cfg);
        assert!(m.dataset.is_none() && m.data_dir.is_none() && m.upscale.is_none());
        assert!(m.preprocess.is_none());

        // present but not a TrainConfig: an error naming the file and the field, also when
        // the model comes from the caller
        let bad = write("bad.safetensors", &[("train_config", r#"{"dataset": 3}"#)]);
        let want = format!("{}: metadata field train_config: ", bad.display());
        for model in [None, Some(TINY)] {
            let e = error(&bad, model);
            assert!(e.starts_with(&want), "{e}");
        }
        let bad = write("bad-preprocess.safetensors", &[("preprocess", "[1, 2")]);
        let e = error(&bad, None);
        assert!(
            e.contains("bad-preprocess.safetensors: metadata field preprocess: "),
            "{e}"
        );

        // resuming reads the same fields the same way
        let mut net = AnyModel::new(&cfg, 0);
        let mut opt = Sgd::new(crate::optim::SgdConfig::default());
        let e = match load(&dir.join("bad.safetensors"), &mut *net, &mut opt) {
            Ok(_) => panic!("loaded"),
            Err(e) => e.to_string(),
        };
        assert!(e.starts_with(&want), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A checkpoint whose stored model settings would ask for gigabytes (or overflow) is
    /// refused on reading, with one line naming the file, the field and its bound, before
    /// any network is built: by `read_model` (eval, predict, heatmap) and by `load`
    /// (resuming) alike.
    #[test]
    fn stored_model_settings_are_validated_before_use() {
        let dir = std::env::temp_dir().join(format!("densenet-ckpt-bounds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = ModelConfig::from_name(TINY).unwrap();
        let net = AnyModel::new(&cfg, 0);
        let base = serde_json::to_value(&cfg).unwrap();
        let cases = [
            (
                "growth_rate",
                serde_json::json!(1_000_000_000u64),
                "growth_rate (growth rate k) must be in 1..=65536, got 1000000000",
            ),
            (
                "block_config",
                serde_json::json!([1, 1_000_000_000_000u64]),
                "block_config (layers per dense block) must be in 1..=10000",
            ),
            (
                "num_classes",
                serde_json::json!(1u64 << 62),
                "num_classes (classifier outputs) must be in 1..=1000000",
            ),
            (
                "input_size",
                serde_json::json!(1u64 << 40),
                "input_size (input height and width) must be in 1..=4096",
            ),
            (
                "bn_size",
                serde_json::json!(1u64 << 40),
                "bn_size (bottleneck width factor) must be in 1..=64",
            ),
            (
                "init_features",
                serde_json::json!(1u64 << 40),
                "init_features (channels of the stem) must be in 1..=65536",
            ),
            (
                "compression",
                serde_json::json!(1e308),
                "compression θ must be in (0, 1], got 1e308",
            ),
        ];
        for (i, (key, value, want)) in cases.into_iter().enumerate() {
            let mut bad = base.clone();
            bad[key] = value;
            let path = dir.join(format!("bad-{i}.safetensors"));
            let train = serde_json::json!({
                "model": bad, "dataset": "digits", "data_dir": null, "epochs": 1,
                "batch_size": 1, "optimizer": crate::optim::SgdConfig::default(),
                "schedule": {"kind": "cosine"}, "augment": false, "upscale": 1,
                "val_split": 0.0, "seed": 0, "memory": "efficient", "svhn_extra": false
            });
            let meta = HashMap::from([
                ("config".to_string(), bad.to_string()),
                ("train_config".to_string(), train.to_string()),
            ]);
            write_safetensors(&path, &net.state_dict(), &[], meta).unwrap();
            let t = std::time::Instant::now();
            let e = match read_model(&path, None) {
                Ok(_) => panic!("{key}: loaded"),
                Err(e) => e.to_string(),
            };
            assert!(
                e.contains(want) && e.contains(&format!("bad-{i}.safetensors")),
                "{key}: {e}"
            );
            assert!(!e.contains('\n'), "{key}: one line: {e}");
            let mut net = AnyModel::new(&cfg, 0);
            let mut opt = Sgd::new(crate::optim::SgdConfig::default());
            let e = match load(&path, &mut *net, &mut opt) {
                Ok(_) => panic!("{key}: resumed"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(want) && e.contains("train_config"), "{key}: {e}");
            assert!(t.elapsed().as_secs() < 5, "{key}: fails fast");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
