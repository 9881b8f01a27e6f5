//! The read side of a checkpoint, for everything that only runs a model (`eval`,
//! `predict`, `embed`, `heatmap`, `summary`, `export`, [`crate::prepare`],
//! [`crate::onnx`]): its network, how its inputs are prepared ([`Preprocess`], class
//! names included) and what it was trained on. Nothing here imports the training loop;
//! [`crate::train`] writes these fields (and reads them back to resume a run).
//!
//! A checkpoint is a safetensors file: the state dict (PyTorch's names), perhaps the
//! optimizer's momentum ([`MOMENTUM`]), and JSON in the metadata under `config` (the
//! model), `train_config`, `train_state` and `preprocess`. Any safetensors or `.pth` state
//! dict reads too, with the model given by the caller. A field that is present but does
//! not parse is an error naming the file and the field; an absent one is `None`.

use crate::model::{AnyModel, ModelConfig};
use crate::weights::{read_checkpoint, WeightsError};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Name of the momentum tensor in a checkpoint.
pub const MOMENTUM: &str = "optim.momentum";

/// Why a checkpoint could not be read for use.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be read, or its tensors do not fit the model.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// A metadata field or the model it describes is wrong; the message names the file.
    #[error("{0}")]
    Invalid(String),
}

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
    /// The evaluation geometry of data sets whose images come in any size (image folders):
    /// absent in other checkpoints, whose images were resized to the input size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub center_crop: Option<CenterCrop>,
}

/// Resize the shorter side, then take the centre square (torchvision's `Resize` +
/// `CenterCrop`, ImageNet's evaluation: 256 then 224).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CenterCrop {
    /// Length of the shorter side after resizing.
    pub resize: usize,
    /// Height and width of the centre window.
    pub crop: usize,
}

/// A network with its weights, and what its training run recorded (if anything).
pub struct LoadedModel {
    /// The network, with the file's weights.
    pub net: AnyModel,
    /// The data set it was trained on (`train_config`).
    pub dataset: Option<String>,
    /// Where that data set's files were (`train_config`).
    pub data_dir: Option<PathBuf>,
    /// The upscaling factor of its inputs (`train_config`).
    pub upscale: Option<usize>,
    /// Input preparation (`preprocess`).
    pub preprocess: Option<Preprocess>,
}

/// The part of a run's `train_config` that using its model needs: what it was trained on.
/// The rest of the training configuration is the training loop's, and is not read here.
#[derive(Deserialize)]
struct TrainedOn {
    dataset: String,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    upscale: usize,
}

/// Reads weights for use (not for resuming): a training checkpoint, or any safetensors or
/// `.pth` state dict. The network is `model` (a preset name or JSON, as `--model` takes
/// it) if given, else the checkpoint's `config`; its weights must all match. The other
/// fields come from `train_config` and `preprocess` where the file has them.
pub fn read_model(weights: &Path, model: Option<&str>) -> Result<LoadedModel, CheckpointError> {
    let cfg = model
        .map(|name| {
            ModelConfig::from_name(name)
                .map_err(|e| CheckpointError::Invalid(format!("--model {name}: {e}")))
        })
        .transpose()?;
    read_model_config(weights, cfg)
}

/// [`read_model`] with the model, when given, as a configuration (a preset with the
/// command line's adjustments: `--classes`, `--in-channels`, …).
pub fn read_model_config(
    weights: &Path,
    model: Option<ModelConfig>,
) -> Result<LoadedModel, CheckpointError> {
    let file = read_checkpoint(weights)?;
    let meta = &file.metadata;
    let trained: Option<TrainedOn> = metadata_field(weights, meta, "train_config")?;
    let preprocess: Option<Preprocess> = metadata_field(weights, meta, "preprocess")?;
    let cfg = match model {
        Some(cfg) => cfg,
        // a bare DenseNetConfig (every checkpoint before the ResNet) or a tagged ResNet's;
        // not read when `model` replaces it
        None => metadata_field(weights, meta, "config")?.ok_or_else(|| {
            CheckpointError::Invalid(format!(
                "{}: no model configuration inside; give --model",
                weights.display()
            ))
        })?,
    };
    // from a name, already checked; from the metadata, checked as it was read: checked
    // again here, where the network is built, so that no path can skip the rules
    let invalid = |e: &dyn std::fmt::Display| {
        CheckpointError::Invalid(format!("{}: model: {e}", weights.display()))
    };
    cfg.validate().map_err(|e| invalid(&e))?;
    // the weights alone may be more than the process can have (2^30 parameters: 8 GiB)
    crate::model::memory::check(&cfg, &[], 0, "").map_err(|e| invalid(&e))?;
    let mut net = AnyModel::try_new(&cfg, 0).map_err(|e| invalid(&e))?;
    net.load_tensors(&file.tensors, &weights.display().to_string())?;
    Ok(LoadedModel {
        net,
        dataset: trained.as_ref().map(|t| t.dataset.clone()),
        data_dir: trained.as_ref().and_then(|t| t.data_dir.clone()),
        upscale: trained.as_ref().map(|t| t.upscale),
        preprocess,
    })
}

/// Metadata field `key` of the checkpoint at `path` as JSON: `None` if absent, an error
/// naming the file and the field if present but not a `T`.
pub fn metadata_field<T: DeserializeOwned>(
    path: &Path,
    meta: &HashMap<String, String>,
    key: &str,
) -> Result<Option<T>, CheckpointError> {
    meta.get(key)
        .map(|json| serde_json::from_str(json))
        .transpose()
        .map_err(|e| {
            CheckpointError::Invalid(format!("{}: metadata field {key}: {e}", path.display()))
        })
}
