//! One training step, and what the processes of a run do together. A run is N ≥ 1
//! processes (see [`crate::dist`]); one process alone is the collective of size one
//! ([`Solo`]), so `train`, `bench train` and `mpirun -np N` all run the same
//! [`DataParallel::step`]. Where a sum over one process would only copy, it is skipped
//! here, in one place, and the loop never asks how many processes there are.

use super::{finetune, TrainError};
use crate::data::pipeline::share_of;
use crate::dist::{checksum, ranks_differing, BnSync, Collective, GradSync, Solo, SyncTimes};
use crate::evaluate::{argmax, evaluate, EvalSet, Evaluation};
use crate::model::{Model, Workspace};
use crate::nn::TrainOptions;
use crate::ops::norm::set_stats_sync;
use crate::optim::Sgd;
use crate::util::profile;
use crate::util::rng::mix_seed;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

/// The processes of a run (one or many), as seen from this one.
pub struct DataParallel {
    comm: Arc<dyn Collective>,
    /// Synchronised batch norm, when the run asks for it and has more than one process
    /// (installed for the process while this lives).
    bn: Option<Arc<BnSync>>,
}

/// This process's part of one step: its share of the batch and how to train on it.
pub struct StepInput<'a> {
    /// This process's images, NCHW.
    pub images: &'a [f32],
    /// Their labels.
    pub labels: &'a [u32],
    /// Images in the whole batch, over all processes (the loss is the mean over these).
    pub whole: usize,
    /// What the dropout masks are drawn from: (seed, epoch, batch) in a run. Each process
    /// adds its rank when there are several.
    pub seed: &'a [u64],
    /// Only the classifier trains (see [`finetune`]).
    pub frozen: bool,
    /// The learning rate of each range of the parameter buffer ([`finetune::rates`]).
    pub rates: &'a [(Range<usize>, f32)],
    /// This process was asked to stop (Ctrl-C) during the step.
    pub stop: bool,
}

/// What one step did, the same on every process.
#[derive(Clone, Copy, Debug)]
pub struct StepOutcome {
    /// Mean loss over the whole batch.
    pub loss: f32,
    /// Images of the whole batch classified right (in training mode).
    pub correct: usize,
    /// Images in the whole batch.
    pub images: usize,
    /// Some process was asked to stop: the run stops after this step.
    pub stop: bool,
    /// The weights were updated; false when the loss was not finite (then nothing changed).
    pub updated: bool,
    /// The gradient sums' time, with more than one process.
    pub sync: Option<SyncTimes>,
}

/// Distinguishes the dropout seeds from the data pipeline's seeds of the same batch.
const DROPOUT_TAG: u64 = 0xd20f;

impl DataParallel {
    /// This process in a run of `comm`'s processes, or alone (`None`).
    pub fn new(comm: Option<Arc<dyn Collective>>, sync_bn: bool) -> Self {
        let comm = comm.unwrap_or_else(|| Arc::new(Solo));
        let bn = (sync_bn && comm.size() > 1).then(|| Arc::new(BnSync::new(comm.clone())));
        if let Some(bn) = &bn {
            set_stats_sync(Some(bn.clone()));
        }
        DataParallel { comm, bn }
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Number of processes.
    pub fn size(&self) -> usize {
        self.comm.size()
    }

    /// Rank 0 writes the run directory.
    pub fn writes(&self) -> bool {
        self.rank() == 0
    }

    /// This process's share of every batch, for the loader.
    pub fn share(&self) -> (usize, usize) {
        (self.rank(), self.size())
    }

    /// One optimizer step on this process's share of a batch: the forward pass, the
    /// figures summed over processes, and unless the loss is not finite the backward
    /// pass (gradients summed over processes in buckets started while it runs), the
    /// running statistics made the same everywhere, and the update.
    ///
    /// Every process's gradient is its part of the whole batch's (the loss is the mean
    /// over the whole batch, see [`TrainOptions::batch_total`]), so their sum is the
    /// one-process gradient.
    pub fn step(
        &mut self,
        net: &mut dyn Model,
        ws: &mut Workspace,
        opt: &mut Sgd,
        input: &StepInput,
    ) -> StepOutcome {
        let n = input.labels.len();
        let many = self.size() > 1;
        let mut seed = input.seed.to_vec();
        seed.push(DROPOUT_TAG);
        if many {
            // each process draws its own dropout masks
            seed.push(self.rank() as u64);
        }
        if let Some(bn) = &self.bn {
            bn.set_share(n, input.whole);
        }
        let step = TrainOptions {
            dropout_seed: mix_seed(&seed),
            batch_total: Some(input.whole),
            ..Default::default()
        };
        let mut loss = if input.frozen {
            net.forward_train_frozen(ws, input.images, input.labels)
        } else {
            net.forward_train(ws, input.images, input.labels, &step)
        };
        let classes = net.model_config().num_classes();
        let logits = ws.logits();
        let mut correct = (0..n)
            .filter(|&i| {
                argmax(&logits[i * classes..(i + 1) * classes]) == input.labels[i] as usize
            })
            .count();
        // every process's figures, and whether any was asked to stop, so that all take
        // the same decisions
        let (mut images, mut stop) = (n, input.stop);
        if many {
            let mut figures = [
                loss as f64 * n as f64,
                correct as f64,
                n as f64,
                stop as u8 as f64,
            ];
            self.comm.sum_f64(&mut figures);
            (loss, correct, images) = (
                (figures[0] / figures[2]) as f32,
                figures[1] as usize,
                figures[2] as usize,
            );
            stop = figures[3] > 0.0;
        }
        let mut outcome = StepOutcome {
            loss,
            correct,
            images,
            stop,
            updated: false,
            sync: None,
        };
        if !loss.is_finite() {
            return outcome;
        }
        outcome.sync = self.backward(net, ws, &step, input.frozen, n, input.whole);
        self.average_running_stats(net);
        {
            let _t = profile::scope(profile::Op::Optimizer);
            let bufs = net.buffers_mut();
            opt.step_ranges(bufs.params, bufs.grads, input.rates);
        }
        outcome.updated = true;
        outcome
    }

    /// The backward pass of [`step`](Self::step), the gradients summed over processes.
    /// With frozen features only the classifier's gradient is computed, from this share's
    /// mean loss; it is weighted by the share's part of the batch before the sum.
    fn backward(
        &mut self,
        net: &mut dyn Model,
        ws: &mut Workspace,
        step: &TrainOptions,
        frozen: bool,
        share: usize,
        whole: usize,
    ) -> Option<SyncTimes> {
        if self.size() == 1 {
            finetune::backward(net, ws, step, frozen);
            return None;
        }
        let comm = &*self.comm;
        let sync = GradSync::new(comm, net.grads().len(), GradSync::BUCKET);
        {
            let ready = |offset: usize, tail: &[f32]| sync.ready(offset, tail);
            let step = TrainOptions {
                grads_ready: Some(&ready),
                ..*step
            };
            finetune::backward(net, ws, &step, frozen);
        }
        if frozen {
            let head = net.classifier_range();
            let k = share as f32 / whole as f32;
            net.buffers_mut().grads[head]
                .iter_mut()
                .for_each(|g| *g *= k);
        }
        Some(sync.finish(net.buffers_mut().grads))
    }

    /// Without synchronised batch norm each process updates its running statistics from
    /// its own share; they are averaged after every step so that every process holds the
    /// same model at all times (one small all-reduce: the statistics are a few thousand
    /// numbers). With it, they are the same everywhere already.
    fn average_running_stats(&self, net: &mut dyn Model) {
        if self.bn.is_some() || self.size() == 1 {
            return;
        }
        let stats = net.buffers_mut().stats;
        self.comm.sum_f32(stats);
        let k = 1.0 / self.size() as f32;
        stats.iter_mut().for_each(|v| *v *= k);
    }

    /// Fails unless every process holds rank 0's parameters and statistics, bit for bit.
    pub fn check_same_weights(&self, net: &dyn Model, when: &str) -> Result<(), TrainError> {
        if self.size() == 1 {
            return Ok(());
        }
        let differ = ranks_differing(&*self.comm, checksum(&[net.params(), net.stats()]));
        if differ.is_empty() {
            return Ok(());
        }
        Err(TrainError::Config(format!(
            "{when}, rank(s) {differ:?} hold other weights than rank 0 (parameter checksums \
             differ): the processes would no longer train one model"
        )))
    }

    /// [`evaluate`] on every process's contiguous share of the set, summed.
    pub fn evaluate(
        &self,
        net: &mut dyn Model,
        ws: &mut Workspace,
        set: EvalSet,
    ) -> Result<Evaluation, TrainError> {
        if self.size() == 1 {
            return Ok(evaluate(net, ws, set)?);
        }
        let all = set
            .indices
            .unwrap_or_else(|| (0..set.source.len()).collect());
        let (first, end) = share_of(all.len(), self.share());
        let indices = Some(all[first..end].to_vec());
        let mine = evaluate(net, ws, EvalSet { indices, ..set })?;
        let n = mine.images as f64;
        let mut sums = vec![n, mine.loss * n, mine.top5_accuracy * n];
        sums.extend(mine.confusion.iter().flatten().map(|&c| c as f64));
        self.comm.sum_f64(&mut sums);
        let classes = mine.confusion.len();
        let confusion = sums[3..]
            .chunks(classes.max(1))
            .map(|row| row.iter().map(|&c| c.round() as u64).collect())
            .collect();
        Ok(Evaluation::from_counts(
            sums[0].round() as usize,
            sums[1],
            sums[2].round() as usize,
            confusion,
        ))
    }

    /// Rank 0's result of creating the run directory, on every process: rank 0 runs
    /// `claim`, the others learn where (or why not).
    pub fn agree_on_dir<T>(
        &self,
        claim: impl FnOnce() -> Result<(PathBuf, T), TrainError>,
    ) -> Result<(Option<T>, PathBuf), TrainError> {
        if self.writes() {
            let claimed = claim();
            let msg = match &claimed {
                Ok((dir, _)) => format!("ok {}", dir.display()),
                Err(e) => format!("error {e}"),
            };
            self.comm.broadcast(msg.into_bytes());
            return claimed.map(|(dir, t)| (Some(t), dir));
        }
        let msg = String::from_utf8_lossy(&self.comm.broadcast(Vec::new())).into_owned();
        match msg.strip_prefix("ok ") {
            Some(dir) => Ok((None, PathBuf::from(dir))),
            None => Err(TrainError::Config(format!(
                "rank 0 could not start the run: {}",
                msg.strip_prefix("error ").unwrap_or(&msg)
            ))),
        }
    }
}

impl Drop for DataParallel {
    fn drop(&mut self) {
        if self.bn.is_some() {
            set_stats_sync(None);
        }
    }
}
