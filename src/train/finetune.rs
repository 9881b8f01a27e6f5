//! Fine-tuning from pretrained weights (`densenet train --init FILE [--freeze features]
//! [--lr-features F]`).
//!
//! - [`init_from`]: a partial load. Every tensor of the model must come from the file with
//!   its shape, except the classifier (another class count) and the first convolution
//!   (another input channel count): those keep the fresh model's initialisation when the
//!   file's differ in shape or are absent. The [`InitReport`] says what was kept,
//!   re-initialised and ignored. A file of the other family, of another architecture, or
//!   one that would give nothing but those two is refused with a one-line [`InitError`].
//! - [`Freeze::Features`]: only the classifier trains. "Features" are everything before
//!   the classifier's linear layer, the final BN included. They run in **evaluation mode**
//!   (running statistics, which are not updated; no dropout), as Keras fine-tunes a frozen
//!   base and as PyTorch does after `model.features.eval()`: the features are then one
//!   fixed function, the same in training and at test time, and no backward pass runs
//!   through them ([`crate::train::DataParallel::step`]). Their
//!   parameters, gradients (zero), running statistics and momentum stay as they are.
//! - `lr_features`: the pretrained part learns at its own base rate, scheduled by the same
//!   factor as the classifier's ([`rates`], [`crate::optim::Sgd::step_ranges`]).

use crate::model::Model;
use crate::weights::{canonical_name, read_checkpoint, NamedTensor, WeightsError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// What part of the network does not train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Freeze {
    /// Everything before the classifier's linear layer (see the module documentation).
    Features,
}

/// The fine-tuning settings of a run (`config.json`'s `finetune`; absent in runs made
/// before fine-tuning existed, which read as the default: none of it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FinetuneConfig {
    /// Weights the fresh run starts from (a checkpoint, a safetensors state dict or a
    /// PyTorch `.pth`); a resumed run reads its own checkpoint instead.
    pub init: Option<PathBuf>,
    /// The part that does not train.
    pub freeze: Option<Freeze>,
    /// Base learning rate of everything but the classifier (default: the run's).
    pub lr_features: Option<f32>,
}

impl FinetuneConfig {
    /// Only the classifier trains, on features in evaluation mode.
    pub fn frozen(&self) -> bool {
        self.freeze == Some(Freeze::Features)
    }

    /// Checks the settings by value (the `--lr-features` rule, for a `config.json` too).
    pub fn check(&self) -> Result<(), String> {
        if let Some(f) = self.lr_features {
            if !(f.is_finite() && f >= 0.0) {
                return Err(format!(
                    "lr_features must be a finite number ≥ 0, got {f:?}"
                ));
            }
            if self.frozen() {
                return Err("lr_features with freeze features: the features do not train".into());
            }
        }
        Ok(())
    }
}

/// A tensor the fine-tuned model does not take from the file.
#[derive(Clone, Debug, PartialEq)]
pub struct Reinit {
    /// Its name.
    pub name: String,
    /// Its shape in the model.
    pub shape: Vec<usize>,
    /// Its shape in the file, if the file has it.
    pub file_shape: Option<Vec<usize>>,
    /// Part of the classifier (else the first convolution).
    pub classifier: bool,
}

/// What [`init_from`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InitReport {
    /// Where the tensors came from.
    pub source: String,
    /// Tensors (parameters and running statistics) copied from the file.
    pub kept: Vec<String>,
    /// Tensors left at the fresh model's initialisation: the classifier, and the first
    /// convolution for another input channel count.
    pub reinitialised: Vec<Reinit>,
    /// The file's tensors no model tensor took (besides those of `reinitialised`,
    /// `num_batches_tracked` and optimizer state).
    pub ignored: Vec<String>,
}

impl InitReport {
    /// A warning for a run with frozen features whose first convolution was
    /// re-initialised: it would stay at its random initialisation.
    pub fn frozen_note(&self, cfg: &FinetuneConfig) -> Option<String> {
        let conv = self.reinitialised.iter().find(|r| !r.classifier)?;
        cfg.frozen().then(|| {
            format!(
                "warning: {} was re-initialised (another input channel count) and \
                 --freeze features keeps it at its random initialisation",
                conv.name
            )
        })
    }
}

impl std::fmt::Display for InitReport {
    /// `initialised from F: kept 240 tensors; re-initialised classifier.weight [10, 24]
    /// (the file's is [5, 24]), …`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "initialised from {}: kept {} tensors",
            self.source,
            self.kept.len()
        )?;
        if self.reinitialised.is_empty() {
            f.write_str("; re-initialised none")?;
        } else {
            let items: Vec<String> = self
                .reinitialised
                .iter()
                .map(|r| match &r.file_shape {
                    Some(s) => format!("{} {:?} (the file's is {:?})", r.name, r.shape, s),
                    None => format!("{} {:?} (not in the file)", r.name, r.shape),
                })
                .collect();
            write!(f, "; re-initialised {}", items.join(", "))?;
        }
        if !self.ignored.is_empty() {
            write!(f, "; ignored {} of the file's tensors", self.ignored.len())?;
            let shown: Vec<&str> = self.ignored.iter().take(3).map(String::as_str).collect();
            let more = if self.ignored.len() > 3 { ", …" } else { "" };
            write!(f, " ({}{more})", shown.join(", "))?;
        }
        Ok(())
    }
}

/// Why pretrained weights could not initialise a model. One line each.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The file could not be read.
    #[error(transparent)]
    Read(#[from] WeightsError),
    /// The file holds the other family's network.
    #[error(
        "{source_name}: holds a {file_family} (names like {example}), but model {model} is a \
         {model_family}; choose a --model of the file's family"
    )]
    OtherFamily {
        /// The file.
        source_name: String,
        /// What the file holds.
        file_family: &'static str,
        /// One of its names.
        example: String,
        /// The model.
        model: String,
        /// What the model is.
        model_family: &'static str,
    },
    /// Tensors other than the classifier and the first convolution are missing or of
    /// another shape: another architecture.
    #[error(
        "{source_name}: does not fit model {model} ({summary}); only the classifier and the \
         first convolution may differ: check --model"
    )]
    Mismatch {
        /// The file.
        source_name: String,
        /// The model.
        model: String,
        /// The counts and the first problem.
        summary: String,
    },
    /// Nothing but the classifier and the first convolution would come from the file.
    #[error(
        "{source_name}: no tensor of model {model} besides the classifier and the first \
         convolution is in the file; nothing to fine-tune from"
    )]
    NothingKept {
        /// The file.
        source_name: String,
        /// The model.
        model: String,
    },
}

/// Which family a set of state-dict names belongs to: DenseNets name everything
/// `features.*`; the ResNets (pre-activation or torchvision's) have `conv1` and `layer1`.
fn family_of<'a>(mut names: impl Iterator<Item = &'a str>) -> Option<(&'static str, String)> {
    names.find_map(|n| {
        if n.starts_with("features.") {
            Some(("DenseNet", n.to_string()))
        } else if n.starts_with("layer1.") || n == "conv1.weight" {
            Some(("ResNet", n.to_string()))
        } else {
            None
        }
    })
}

/// Initialises `model` from `tensors` as far as they fit (see the module documentation):
/// on success every tensor but the classifier and (for another input channel count) the
/// first convolution comes from the file; on error nothing is changed.
pub fn init_from(
    model: &mut dyn Model,
    tensors: &[NamedTensor],
    source: &str,
) -> Result<InitReport, InitError> {
    let cfg = model.model_config();
    let name = model.name();
    let mut by_name: HashMap<String, &NamedTensor> = HashMap::new();
    for t in tensors {
        // integer bookkeeping, and the source run's optimizer state: a fine-tuning run
        // starts its own momentum
        if t.name.ends_with("num_batches_tracked") || t.name.starts_with("optim.") {
            continue;
        }
        by_name.insert(canonical_name(&t.name), t);
    }
    let mut file_names: Vec<&str> = by_name.keys().map(String::as_str).collect();
    file_names.sort_unstable();
    if let Some((file_family, example)) = family_of(file_names.iter().copied()) {
        if file_family != cfg.family_title() {
            return Err(InitError::OtherFamily {
                source_name: source.to_string(),
                file_family,
                example,
                model: name,
                model_family: cfg.family_title(),
            });
        }
    }
    let head = model.classifier_range();
    // the stem convolution comes first in both families' tables
    let first_conv = model
        .param_table()
        .entries()
        .first()
        .map(|e| e.name.clone());
    let mut report = InitReport {
        source: source.to_string(),
        ..InitReport::default()
    };
    let (mut missing, mut wrong) = (Vec::new(), Vec::new());
    let mut plan = Vec::new();
    // the model's tensors besides those two that the file names, of any shape
    let mut features_named = 0;
    for (table, is_param) in [(model.param_table(), true), (model.stats_table(), false)] {
        for e in table.entries() {
            let in_classifier = is_param && e.offset >= head.start && e.offset < head.end;
            let replaceable = in_classifier || (is_param && Some(&e.name) == first_conv.as_ref());
            let found = by_name.remove(&e.name);
            features_named += usize::from(found.is_some() && !replaceable);
            match found {
                Some(t) if t.tensor.shape == e.shape => {
                    report.kept.push(e.name.clone());
                    plan.push((e.range(), is_param, t.tensor.data.as_slice()));
                }
                found if replaceable => report.reinitialised.push(Reinit {
                    name: e.name.clone(),
                    shape: e.shape.clone(),
                    file_shape: found.map(|t| t.tensor.shape.clone()),
                    classifier: in_classifier,
                }),
                None => missing.push(format!("{} missing", e.name)),
                Some(t) => wrong.push(format!(
                    "{} is {:?} in the file, {:?} in the model",
                    e.name, t.tensor.shape, e.shape
                )),
            }
        }
    }
    let reinit: Vec<&str> = report
        .reinitialised
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    // checked first: a file without one of the model's feature tensors (by name) is the
    // wrong file, however many it misses
    if features_named == 0 {
        return Err(InitError::NothingKept {
            source_name: source.to_string(),
            model: name,
        });
    }
    if !(missing.is_empty() && wrong.is_empty()) {
        let first = wrong
            .first()
            .or(missing.first())
            .cloned()
            .unwrap_or_default();
        return Err(InitError::Mismatch {
            source_name: source.to_string(),
            model: name,
            summary: format!(
                "{} tensors of another shape, {} missing; first: {first}",
                wrong.len(),
                missing.len()
            ),
        });
    }
    let mut ignored: Vec<String> = by_name.into_keys().collect();
    ignored.retain(|n| !reinit.contains(&n.as_str()));
    ignored.sort();
    report.ignored = ignored;
    model.buffers_mut().load(plan);
    Ok(report)
}

/// Reads `path` (a checkpoint, a safetensors state dict or a `.pth`) and initialises
/// `model` from it ([`init_from`]).
pub fn load_init(path: &Path, model: &mut dyn Model) -> Result<InitReport, InitError> {
    let file = read_checkpoint(path)?;
    init_from(model, &file.tensors, &path.display().to_string())
}

/// The learning rates of one epoch for [`crate::optim::Sgd::step_ranges`]: the classifier
/// at `lr` (the scheduled base rate), everything else at the features' rate scheduled by
/// the same factor, or 0 when the features are frozen.
pub fn rates(
    cfg: &FinetuneConfig,
    classifier: Range<usize>,
    params: usize,
    lr: f32,
    features_lr: impl FnOnce(f32) -> f32,
) -> Vec<(Range<usize>, f32)> {
    let features = if cfg.frozen() {
        0.0
    } else {
        cfg.lr_features.map(features_lr).unwrap_or(lr)
    };
    let mut r = Vec::with_capacity(3);
    for (range, rate) in [
        (0..classifier.start, features),
        (classifier.clone(), lr),
        (classifier.end..params, features),
    ] {
        if !range.is_empty() {
            r.push((range, rate));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frozen features warn about a re-initialised first convolution, and only then.
    #[test]
    fn frozen_runs_warn_about_a_random_first_convolution() {
        let reinit = |name: &str, classifier| Reinit {
            name: name.into(),
            shape: vec![1],
            file_shape: None,
            classifier,
        };
        let frozen = FinetuneConfig {
            freeze: Some(Freeze::Features),
            ..FinetuneConfig::default()
        };
        let mut r = InitReport {
            reinitialised: vec![reinit("classifier.weight", true)],
            ..InitReport::default()
        };
        assert_eq!(r.frozen_note(&frozen), None);
        r.reinitialised.push(reinit("features.conv0.weight", false));
        let note = r.frozen_note(&frozen).unwrap();
        assert!(note.contains("features.conv0.weight"), "{note}");
        assert_eq!(r.frozen_note(&FinetuneConfig::default()), None);
    }
}
