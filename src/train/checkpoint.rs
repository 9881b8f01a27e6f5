//! Training checkpoints: one safetensors file holding the weights and running statistics
//! (state-dict names, so `densenet eval --weights` reads it directly), the optimizer's
//! momentum (`optim.momentum`, laid out like the flat parameter buffer) and, in the
//! metadata, the model and training configuration and the position in the run as JSON.
//!
//! One file, written atomically (temporary file, then rename): a process killed at any
//! moment leaves either the previous checkpoint or the new one, never a mixture of a new
//! weights file and an old state file.

use super::{TrainConfig, TrainError, TrainState};
use crate::model::Model;
use crate::optim::Sgd;
use crate::util::tensor::Tensor;
use crate::weights::{read_safetensors, write_safetensors};
use std::collections::HashMap;
use std::path::Path;

/// Name of the momentum tensor in a checkpoint.
pub const MOMENTUM: &str = "optim.momentum";

/// How inputs are prepared for the network, stored so `predict` can reproduce it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Preprocess {
    /// Pixel value that maps to 1.0 before normalisation (255, or 16 for digits).
    pub max_value: f32,
    /// Per-channel mean subtracted after scaling.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by.
    pub std: Vec<f32>,
    /// Nearest-neighbour upscaling factor applied to stored images.
    pub upscale: usize,
    /// Class names.
    pub classes: Vec<String>,
}

/// Writes a checkpoint atomically.
pub fn save<M: Model>(
    path: &Path,
    net: &M,
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
pub fn load<M: Model>(path: &Path, net: &mut M, opt: &mut Sgd) -> Result<Loaded, TrainError> {
    let file = read_safetensors(path)?;
    let meta = |key: &str| {
        file.metadata.get(key).ok_or_else(|| {
            TrainError::Config(format!(
                "{}: not a training checkpoint (no '{key}' in its metadata)",
                path.display()
            ))
        })
    };
    let parse_err = |key: &str, e: serde_json::Error| {
        TrainError::Config(format!("{}: metadata '{key}': {e}", path.display()))
    };
    let config: TrainConfig =
        serde_json::from_str(meta("train_config")?).map_err(|e| parse_err("train_config", e))?;
    let state: TrainState =
        serde_json::from_str(meta("train_state")?).map_err(|e| parse_err("train_state", e))?;
    let preprocess: Preprocess =
        serde_json::from_str(meta("preprocess")?).map_err(|e| parse_err("preprocess", e))?;
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
