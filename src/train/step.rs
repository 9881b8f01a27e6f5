//! One training step, and what the processes of a run do together. A run is N ≥ 1
//! processes (see [`crate::dist`]); one process alone is the collective of size one
//! ([`Solo`]), so `train`, `bench train` and `mpirun -np N` all run the same
//! [`DataParallel::step`]. Where a sum over one process would only copy, it is skipped
//! here, in one place, and the loop never asks how many processes there are.

use super::TrainError;
use crate::data::pipeline::share_of;
use crate::dist::{checksum, ranks_differing, BnSync, Collective, GradSync, Solo, SyncTimes};
use crate::evaluate::{argmax, evaluate, EvalSet, Evaluation};
use crate::model::{Model, Workspace};
use crate::nn::TrainOptions;
use crate::ops::norm::set_stats_sync;
use crate::optim::{ParamGroup, Sgd};
use crate::util::profile;
use crate::util::rng::mix_seed;
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
    /// Only the classifier trains (see [`super::finetune`]).
    pub frozen: bool,
    /// The learning rate and weight decay of each part of the parameter buffer
    /// ([`super::finetune::rates`], [`crate::optim::param_groups`]).
    pub groups: &'a [ParamGroup],
    /// Passes the share is split into, whose gradients are summed (gradient
    /// accumulation); at least 1, and at most the share's images.
    pub passes: usize,
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
    /// The weights were updated; false when the loss or a gradient was not finite (then
    /// the parameters did not change; see [`StepOutcome::non_finite`]).
    pub updated: bool,
    /// What was not a finite number, when the weights were not updated.
    pub non_finite: Option<NonFinite>,
    /// The gradient sums' time, with more than one process.
    pub sync: Option<SyncTimes>,
}

/// The number of a step that was not finite, which kept the step from updating the weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NonFinite {
    /// The batch's mean loss.
    Loss(f32),
    /// A gradient (summed over the processes): its index in the flat gradient buffer, and
    /// its value. The loss can stay finite while the gradient overflows: batch norm makes
    /// the loss blind to the scale of huge weights that its backward pass multiplies by.
    Gradient(usize, f32),
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

    /// Refuses a batch of `batch` images that the processes cannot share equally, or that
    /// their shares cannot split into `passes` equal passes.
    pub fn check_batch(&self, batch: usize, passes: usize) -> Result<(), TrainError> {
        let size = self.size();
        if !batch.is_multiple_of(size) {
            return Err(TrainError::Config(format!(
                "--batch-size {batch} cannot be shared by {size} processes: each takes an \
                 equal share of every batch, so the batch size must be a multiple of {size}"
            )));
        }
        if !batch.is_multiple_of(size * passes) {
            return Err(TrainError::Config(format!(
                "--batch-size {batch} cannot be split into {passes} passes on each of {size} \
                 process(es): every pass has an equal part of the batch, so the batch size \
                 must be a multiple of {}",
                size * passes
            )));
        }
        Ok(())
    }

    /// This process's share of every batch, for the loader.
    pub fn share(&self) -> (usize, usize) {
        (self.rank(), self.size())
    }

    /// One optimizer step on this process's share of a batch: the forward pass, the
    /// figures summed over processes, and unless the loss is not finite the backward
    /// pass (gradients summed over processes in buckets started while it runs), then
    /// unless a gradient is not finite the running statistics made the same everywhere,
    /// and the update.
    ///
    /// Every process's gradient is its part of the whole batch's (the loss is the mean
    /// over the whole batch, see [`TrainOptions::batch_total`]), so their sum is the
    /// one-process gradient.
    ///
    /// With [`StepInput::passes`] K > 1 the share is split into K passes run one after
    /// the other, forward and backward, into the same gradients (zeroed once); the same
    /// rule makes the passes' gradients add up to the share's. Batch norm normalises each
    /// pass with its own statistics (over the processes' passes k with synchronised BN),
    /// as PyTorch does when it accumulates, and updates its running statistics once a
    /// pass. The figures are summed after the last forward pass and the gradients during
    /// the last backward pass: once a step, as DDP under `no_sync`.
    pub fn step(
        &mut self,
        net: &mut dyn Model,
        ws: &mut Workspace,
        opt: &mut Sgd,
        input: &StepInput,
    ) -> StepOutcome {
        let n = input.labels.len();
        let passes = input.passes.max(1);
        assert!(
            n >= passes,
            "a share of {n} images cannot make {passes} passes"
        );
        let many = self.size() > 1;
        // the gradients of the passes add up (backward passes accumulate)
        if input.frozen {
            let head = net.classifier_range();
            net.buffers_mut().grads[head].fill(0.0);
        } else {
            net.zero_grad();
        }
        let (mut loss_sum, mut correct) = (0f64, 0);
        for k in 0..passes - 1 {
            let pass = self.forward_pass(net, ws, input, k);
            (loss_sum, correct) = (loss_sum + pass.loss_sum, correct + pass.correct);
            backward_pass(net, ws, &pass, input.frozen, None);
        }
        let last = self.forward_pass(net, ws, input, passes - 1);
        (loss_sum, correct) = (loss_sum + last.loss_sum, correct + last.correct);
        let mut loss = (loss_sum / n as f64) as f32;
        // every process's figures, and whether any was asked to stop, so that all take
        // the same decisions
        let (mut images, mut stop) = (n, input.stop);
        if many {
            let mut figures = [loss_sum, correct as f64, n as f64, stop as u8 as f64];
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
            non_finite: None,
            sync: None,
        };
        if !loss.is_finite() {
            outcome.non_finite = Some(NonFinite::Loss(loss));
            return outcome;
        }
        if many {
            let sync = GradSync::new(&*self.comm, net.grads().len(), GradSync::BUCKET);
            backward_pass(net, ws, &last, input.frozen, Some(&sync));
            outcome.sync = Some(sync.finish(net.buffers_mut().grads));
        } else {
            backward_pass(net, ws, &last, input.frozen, None);
        }
        // the summed gradients are the same on every process, and so is this decision
        let grads = net.grads();
        if let Some(i) = grads.iter().position(|g| !g.is_finite()) {
            outcome.non_finite = Some(NonFinite::Gradient(i, grads[i]));
            return outcome;
        }
        self.average_running_stats(net);
        {
            let _t = profile::scope(profile::Op::Optimizer);
            let bufs = net.buffers_mut();
            opt.step_groups(bufs.params, bufs.grads, input.groups);
        }
        outcome.updated = true;
        outcome
    }

    /// The forward pass of pass `k` of a step, on its part of this process's share.
    fn forward_pass(
        &self,
        net: &mut dyn Model,
        ws: &mut Workspace,
        input: &StepInput,
        k: usize,
    ) -> Pass {
        let passes = input.passes.max(1);
        let (first, end) = share_of(input.labels.len(), (k, passes));
        let per_image = input.images.len() / input.labels.len().max(1);
        let (images, labels) = (
            &input.images[first * per_image..end * per_image],
            &input.labels[first..end],
        );
        if let Some(bn) = &self.bn {
            // the images of pass k over all processes
            let total: usize = (0..self.size())
                .map(|r| {
                    let (a, b) = share_of(input.whole, (r, self.size()));
                    let (c, d) = share_of(b - a, (k, passes));
                    d - c
                })
                .sum();
            bn.set_share(labels.len(), total);
        }
        let mut seed = input.seed.to_vec();
        seed.push(DROPOUT_TAG);
        if self.size() > 1 {
            // each process draws its own dropout masks
            seed.push(self.rank() as u64);
        }
        if passes > 1 {
            // and each pass
            seed.push(k as u64);
        }
        let opts = TrainOptions {
            dropout_seed: mix_seed(&seed),
            batch_total: Some(input.whole),
            ..Default::default()
        };
        let loss = if input.frozen {
            net.forward_train_frozen(ws, images, labels)
        } else {
            net.forward_train(ws, images, labels, &opts)
        };
        let (classes, _, _) = net.io();
        let logits = ws.logits();
        let correct = (0..labels.len())
            .filter(|&i| argmax(&logits[i * classes..(i + 1) * classes]) == labels[i] as usize)
            .count();
        Pass {
            opts,
            loss_sum: loss as f64 * labels.len() as f64,
            correct,
            part: labels.len() as f32 / input.whole as f32,
        }
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

    /// Whether `flag` is raised on any process (a collective: every process must ask).
    pub fn any(&self, flag: bool) -> bool {
        if self.size() == 1 {
            return flag;
        }
        let mut v = [flag as u8 as f64];
        self.comm.sum_f64(&mut v);
        v[0] > 0.0
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

/// One pass of a step, forward done.
struct Pass {
    /// Its training options (dropout seed, the whole batch the loss is the mean over).
    opts: TrainOptions<'static>,
    /// Its images' summed loss.
    loss_sum: f64,
    /// Its images classified right.
    correct: usize,
    /// Its part of the whole batch: the weight of its gradient with frozen features.
    part: f32,
}

/// The backward pass of a forward [`Pass`], added to the gradients, and summed over the
/// processes by `sync` as it goes when given. With frozen features only the classifier's
/// gradient is computed, from the pass's mean loss; it is weighted by the pass's part of
/// the batch as it is added.
fn backward_pass(
    net: &mut dyn Model,
    ws: &mut Workspace,
    pass: &Pass,
    frozen: bool,
    sync: Option<&GradSync>,
) {
    if frozen {
        let head = net.classifier_range();
        let before = net.grads()[head.clone()].to_vec();
        net.buffers_mut().grads[head.clone()].fill(0.0);
        net.backward_classifier(ws);
        let grads = &mut net.buffers_mut().grads[head];
        for (g, b) in grads.iter_mut().zip(before) {
            *g = b + pass.part * *g;
        }
        return;
    }
    match sync {
        None => net.backward(ws, &pass.opts),
        Some(sync) => {
            let ready = |offset: usize, tail: &[f32]| sync.ready(offset, tail);
            let opts = TrainOptions {
                grads_ready: Some(&ready),
                ..pass.opts
            };
            net.backward(ws, &opts);
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
