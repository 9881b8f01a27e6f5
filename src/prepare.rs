//! Image files to network inputs, prepared the way the weights were trained: decoded to
//! RGB, made grey for one-channel models, brought to the input size, then normalised with
//! the training mean and std. `predict` and `embed` read images through here, and
//! `summary --weights` shows what it will do.
//!
//! The settings come from, in order:
//! 1. the checkpoint's `preprocess` metadata (written by `train`): mean, std and, for
//!    image folders, the centre crop (resize the shorter side, then crop);
//! 2. for a state dict without it on an ImageNet stem (torchvision weights): ImageNet's
//!    evaluation, the shorter side resized to 256/224 of the input size, the centre
//!    crop, ImageNet's mean and std;
//! 3. otherwise: pixel/255, the image resized to the input size.
//!
//! Without a centre crop the image is resized to the input square whatever its aspect
//! ratio: the data sets trained that way (CIFAR, SVHN, MNIST, digits) store images that
//! already have the input's shape.

use crate::checkpoint::{CenterCrop, Preprocess};
use crate::data::augment::{Geometry, Image, Normalize, Rng, Transform};
use crate::data::folder::decode_file;
use crate::data::DataError;
use crate::densenet::Stem;
use crate::model::ModelConfig;
use std::path::Path;

/// Where an [`InputPrep`]'s settings came from (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrepSource {
    /// The checkpoint's `preprocess` metadata.
    Checkpoint,
    /// ImageNet's evaluation preprocessing, for a state dict of an ImageNet-stem model.
    ImagenetDefault,
    /// pixel/255 and a resize: a state dict of a CIFAR-stem model or a ResNet.
    Plain,
}

/// How an image file becomes one `[C, S, S]` network input.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct InputPrep {
    /// Input channels: 1 (grey, the mean of R, G and B) or 3 (RGB).
    pub channels: usize,
    /// Input height and width S.
    pub size: usize,
    /// Resize the shorter side and crop the centre S×S; `None`: resize to S×S.
    pub center_crop: Option<CenterCrop>,
    /// Mean of pixel/255 subtracted, per channel (or one for all).
    pub mean: Vec<f32>,
    /// Standard deviation of pixel/255 divided by, per channel (or one for all).
    pub std: Vec<f32>,
    /// Where these settings came from.
    pub source: PrepSource,
}

impl InputPrep {
    /// The preparation for model `cfg` whose weights file `weights` stored `stored` (if
    /// anything); errors name the file.
    pub fn new(
        cfg: &ModelConfig,
        stored: Option<&Preprocess>,
        weights: &Path,
    ) -> Result<Self, DataError> {
        let (c, s) = (cfg.in_channels(), cfg.input_size());
        // images are decoded to RGB and made grey for one-channel models: nothing else fits
        if c != 1 && c != 3 {
            return Err(DataError::Config(format!(
                "model {} expects {c}×{s}×{s} inputs; images are made grey (1 channel) or \
                 RGB (3 channels); give --model for the network these weights belong to",
                cfg.name()
            )));
        }
        let imagenet = matches!(cfg, ModelConfig::DenseNet(d) if d.stem == Stem::ImageNet);
        let prep = match stored {
            Some(p) => InputPrep {
                channels: c,
                size: s,
                center_crop: p.center_crop,
                mean: p.mean.clone(),
                std: p.std.clone(),
                source: PrepSource::Checkpoint,
            },
            None if imagenet => {
                let n = Normalize::imagenet();
                InputPrep {
                    channels: c,
                    size: s,
                    // 256 for 224, and the same ratio for other input sizes
                    center_crop: Some(CenterCrop {
                        resize: (s * 256 + 112) / 224,
                        crop: s,
                    }),
                    mean: n.mean,
                    std: n.std,
                    source: PrepSource::ImagenetDefault,
                }
            }
            None => {
                let n = Normalize::none();
                InputPrep {
                    channels: c,
                    size: s,
                    center_crop: None,
                    mean: n.mean,
                    std: n.std,
                    source: PrepSource::Plain,
                }
            }
        };
        let bad = |what: String| DataError::Config(format!("{}: {what}", weights.display()));
        if ![1, c].contains(&prep.mean.len()) || prep.mean.len() != prep.std.len() {
            return Err(bad(format!(
                "its preprocessing has {} means and {} stds for a {c}-channel model",
                prep.mean.len(),
                prep.std.len()
            )));
        }
        if let Some(cc) = prep.center_crop {
            if cc.crop != s || cc.resize < cc.crop {
                return Err(bad(format!(
                    "its preprocessing resizes to {} and crops {}×{}, the model expects \
                     {s}×{s} inputs",
                    cc.resize, cc.crop, cc.crop
                )));
            }
        }
        prep.normalize().check(c).map_err(|e| bad(e.to_string()))?;
        Ok(prep)
    }

    /// Values per prepared image (C·S·S).
    pub fn len(&self) -> usize {
        self.channels * self.size * self.size
    }

    /// Whether an input holds no values (never, for a valid model).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn normalize(&self) -> Normalize {
        Normalize::new(&self.mean, &self.std)
    }

    /// Decodes the image file `path` and writes it, prepared, into `out` (C·S·S values,
    /// CHW); errors name the file.
    pub fn load_into(&self, path: &Path, out: &mut [f32]) -> Result<(), DataError> {
        let (c, s) = (self.channels, self.size);
        let rgb = decode_file(path)?;
        let img = if c == 1 { grey(&rgb)? } else { rgb };
        let named = |e: DataError| DataError::Config(format!("{}: {e}", path.display()));
        let img = match self.center_crop {
            Some(CenterCrop { resize, crop }) => Transform {
                upscale: 1,
                geometry: Geometry::ResizeCenterCrop { resize, crop },
                hflip: false,
                normalize: self.normalize(),
            }
            // no randomness in a centre crop: the generator is never drawn from
            .apply(img, &mut Rng::new(0))
            .map_err(named)?,
            None => img.resize(s, s).map_err(named)?,
        };
        self.normalize().write(&img, 255.0, out).map_err(named)
    }

    /// [`load_into`](Self::load_into) into a new vector.
    pub fn load(&self, path: &Path) -> Result<Vec<f32>, DataError> {
        let mut x = vec![0f32; self.len()];
        self.load_into(path, &mut x)?;
        Ok(x)
    }

    /// One line for people: `resize 256, centre crop 224, RGB, (pixel/255 − mean) / std
    /// with mean [...] std [...] (from the checkpoint)`.
    pub fn describe(&self) -> String {
        let geometry = match self.center_crop {
            Some(cc) => format!(
                "shorter side resized to {}, centre crop {}",
                cc.resize, cc.crop
            ),
            None => format!("resized to {0}×{0}", self.size),
        };
        let colour = if self.channels == 1 { "grey" } else { "RGB" };
        let source = match self.source {
            PrepSource::Checkpoint => "from the checkpoint",
            PrepSource::ImagenetDefault => "ImageNet's, no preprocessing stored",
            PrepSource::Plain => "no preprocessing stored",
        };
        format!(
            "{geometry}, {colour}, (pixel/255 − mean) / std with mean {:?} std {:?} ({source})",
            self.mean, self.std
        )
    }
}

/// Luminance as the mean of the three channels.
fn grey(rgb: &Image) -> Result<Image, DataError> {
    let plane = rgb.height * rgb.width;
    let data = (0..plane)
        .map(|i| {
            ((rgb.data[i] as u32 + rgb.data[plane + i] as u32 + rgb.data[2 * plane + i] as u32) / 3)
                as u8
        })
        .collect();
    Image::new(1, rgb.height, rgb.width, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the settings come from: torchvision's evaluation for an ImageNet-stem state
    /// dict (256/224, scaled for other sizes), pixel/255 for a CIFAR one, and a checkpoint
    /// written before the centre crop was stored still reads (no crop).
    #[test]
    fn settings_by_source() {
        let path = Path::new("w.pth");
        let d121 = ModelConfig::from_name("densenet121").unwrap();
        let p = InputPrep::new(&d121, None, path).unwrap();
        assert_eq!(p.source, PrepSource::ImagenetDefault);
        let crop = |resize, crop| Some(CenterCrop { resize, crop });
        assert_eq!(p.center_crop, crop(256, 224));
        assert_eq!(p.mean, [0.485, 0.456, 0.406]);
        let mut small = d121.clone();
        small.set_io(1000, 3, 112);
        let p = InputPrep::new(&small, None, path).unwrap();
        assert_eq!(p.center_crop, crop(128, 112));
        let cifar = ModelConfig::from_name("densenet-bc-40-12").unwrap();
        let p = InputPrep::new(&cifar, None, path).unwrap();
        assert_eq!((p.source, p.center_crop), (PrepSource::Plain, None));
        let old: Preprocess = serde_json::from_str(
            r#"{"max_value":16.0,"mean":[0.0],"std":[1.0],"upscale":4,"classes":["0"]}"#,
        )
        .unwrap();
        assert_eq!(old.center_crop, None);
        let p = InputPrep::new(&cifar, Some(&old), path).unwrap();
        assert_eq!((p.source, p.center_crop), (PrepSource::Checkpoint, None));
        // a stored crop that does not give the model's input is refused, naming the file
        let bad = Preprocess {
            center_crop: crop(256, 224),
            ..old
        };
        let e = InputPrep::new(&cifar, Some(&bad), path)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("w.pth: ") && e.contains("expects 32×32"),
            "{e}"
        );
    }
}
