//! A run's data: the training and test sources, the held-out split, and the transforms
//! that make their images inputs ([`DataSetup`]).

use super::{TrainConfig, TrainError};
use crate::checkpoint::{CenterCrop, Preprocess};
use crate::data::augment::{Geometry, Transform};
use crate::data::pipeline::holdout_fraction;
use crate::data::{self, DataError, DatasetKind, Source, Split};
use crate::model::ModelConfig;
use std::sync::Arc;

/// The training and test sources of a run and how their images become inputs.
pub struct DataSetup {
    /// Training source.
    pub train: Arc<Source>,
    /// Test source.
    pub test: Arc<Source>,
    /// Training-set indices used for training.
    pub train_indices: Vec<usize>,
    /// Held-out validation indices.
    pub val_indices: Vec<usize>,
    /// Training transform (with augmentation if enabled).
    pub train_transform: Transform,
    /// Evaluation transform.
    pub eval_transform: Transform,
    /// `(channels, height, width)` of a network input.
    pub input: (usize, usize, usize),
}

impl DataSetup {
    /// Loads the data of `config` (`kind` parsed from `config.dataset`).
    pub fn load(config: &TrainConfig) -> Result<Self, TrainError> {
        let kind: DatasetKind = config
            .dataset
            .parse()
            .map_err(|e: DataError| TrainError::Config(e.to_string()))?;
        let dir = config.data_dir.as_deref();
        let mut train = data::load(kind, dir, Split::Train)?;
        if config.svhn_extra {
            let extra = data::load(kind, dir, Split::Extra)?;
            if let (Source::Memory(t), Source::Memory(e)) = (&mut train, extra) {
                t.append(e)?;
            }
        }
        let mut test = data::load(kind, dir, Split::Test)?;
        // an image folder's val/ may list its classes differently: match them by name
        test.align_classes(train.classes())?;
        let mut train_transform = Transform::preset(kind, true, &train)?;
        let mut eval_transform = Transform::preset(kind, false, &train)?;
        if !config.augment {
            train_transform.geometry = eval_transform.geometry.clone();
            train_transform.hflip = false;
        }
        // the configuration's factor is the resolved one (the recipe's or the user's)
        let up = config.upscale.max(1);
        train_transform.upscale = up;
        eval_transform.upscale = up;
        if kind == DatasetKind::Digits && config.augment {
            // digits: shifts of up to one original pixel; no flips (a mirrored 2 is no digit)
            train_transform.geometry = Geometry::PadCrop {
                pad: up,
                size: 8 * up,
            };
            train_transform.hflip = false;
        }
        let input = match &train {
            Source::Memory(d) => eval_transform.output_shape(d.channels, d.height, d.width)?,
            Source::Folder(_) => (3, 224, 224),
        };
        let (train_indices, val_indices) = if config.val_split > 0.0 {
            holdout_fraction(train.len(), config.val_split, config.seed)?
        } else {
            ((0..train.len()).collect(), vec![])
        };
        Ok(DataSetup {
            train: Arc::new(train),
            test: Arc::new(test),
            train_indices,
            val_indices,
            train_transform,
            eval_transform,
            input,
        })
    }

    /// What `predict` needs to prepare an image like the evaluation transform does.
    pub fn preprocess(&self) -> Preprocess {
        Preprocess {
            max_value: self.train.max_value(),
            mean: self.eval_transform.normalize.mean.clone(),
            std: self.eval_transform.normalize.std.clone(),
            upscale: self.eval_transform.upscale,
            classes: self.train.classes().to_vec(),
            center_crop: match self.eval_transform.geometry {
                Geometry::ResizeCenterCrop { resize, crop } => Some(CenterCrop { resize, crop }),
                _ => None,
            },
        }
    }

    /// Checks that `model` fits this data and returns it with classes, channels and input
    /// size taken from the data.
    pub fn fit_model(&self, mut model: ModelConfig) -> Result<ModelConfig, TrainError> {
        let (c, h, w) = self.input;
        if h != w {
            return Err(TrainError::Config(format!(
                "inputs are {h}×{w}; only square inputs are supported"
            )));
        }
        model.set_io(self.train.num_classes(), c, h);
        model.validate().map_err(|e| {
            TrainError::Config(format!("model {} on {h}×{w} inputs: {e}", model.name()))
        })?;
        Ok(model)
    }
}
