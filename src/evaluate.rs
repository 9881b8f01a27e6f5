//! Evaluation of a model on a data set: loss, top-1 and top-5 accuracy, per-class accuracy
//! and the confusion matrix, in evaluation mode (`densenet eval`, and every epoch of a
//! training run).

use crate::data::augment::Transform;
use crate::data::pipeline::{Batch, Loader, LoaderConfig};
use crate::data::{DataError, Source};
use crate::model::{Frozen, Model, Workspace};
use serde::Serialize;
use std::sync::Arc;

/// Evaluation of a model on a data set.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    /// Images.
    pub images: usize,
    /// Mean cross-entropy loss.
    pub loss: f64,
    /// Top-1 accuracy (fraction).
    pub top1_accuracy: f64,
    /// Top-5 accuracy (fraction; 1 with five classes or fewer).
    pub top5_accuracy: f64,
    /// Per class: accuracy (fraction) and number of images.
    pub per_class: Vec<(f64, usize)>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

/// The images an evaluation runs on: `indices` of `source` (all when `None`), made
/// inputs by `transform`.
#[derive(Clone)]
pub struct EvalSet<'a> {
    /// The data set.
    pub source: &'a Arc<Source>,
    /// Which of its images (all when `None`).
    pub indices: Option<Vec<usize>>,
    /// Images to inputs.
    pub transform: &'a Transform,
}

/// Evaluates `net` in evaluation mode on `set`.
pub fn evaluate(
    net: &mut dyn Model,
    ws: &mut Workspace,
    set: EvalSet,
) -> Result<Evaluation, DataError> {
    let classes = net.model_config().num_classes();
    let batch = LoaderConfig::eval(ws.batch());
    let loader = Loader::new(
        set.source.clone(),
        set.indices,
        set.transform.clone(),
        batch,
    )?;
    let mut confusion = vec![vec![0u64; classes]; classes];
    let (mut loss_sum, mut top5, mut images) = (0f64, 0usize, 0usize);
    // the weights stay put for the whole evaluation: pack them once
    let mut net = Frozen::new(net);
    for batch in loader.epoch(0) {
        let batch: Batch = batch?;
        let n = batch.len();
        let logits = net.forward_eval(ws, &batch.images, n, None);
        for (i, &y) in batch.labels.iter().enumerate() {
            let row = &logits[i * classes..(i + 1) * classes];
            let pred = argmax(row);
            confusion[y as usize][pred] += 1;
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let lse = max as f64
                + row
                    .iter()
                    .map(|&v| ((v - max) as f64).exp())
                    .sum::<f64>()
                    .ln();
            loss_sum += lse - row[y as usize] as f64;
            let better = row.iter().filter(|&&v| v > row[y as usize]).count();
            if better < 5 {
                top5 += 1;
            }
        }
        images += n;
    }
    Ok(Evaluation::from_counts(images, loss_sum, top5, confusion))
}

impl Evaluation {
    /// The figures from their sums: images, the sum of their losses, how many had the
    /// label among the top five, and the confusion matrix.
    pub fn from_counts(
        images: usize,
        loss_sum: f64,
        top5: usize,
        confusion: Vec<Vec<u64>>,
    ) -> Self {
        let classes = confusion.len();
        let correct: u64 = (0..classes).map(|c| confusion[c][c]).sum();
        let per_class = (0..classes)
            .map(|c| {
                let total: u64 = confusion[c].iter().sum();
                (
                    if total > 0 {
                        confusion[c][c] as f64 / total as f64
                    } else {
                        0.0
                    },
                    total as usize,
                )
            })
            .collect();
        let n = images.max(1) as f64;
        Evaluation {
            images,
            loss: loss_sum / n,
            top1_accuracy: correct as f64 / n,
            top5_accuracy: top5 as f64 / n,
            per_class,
            confusion,
        }
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}
