//! The data-parallel side of a training run (see [`crate::dist`]): every process runs the
//! same loop on its share of every batch; this holds what they do together.

use super::{evaluate, finetune, Evaluation, TrainError};
use crate::data::augment::Transform;
use crate::data::pipeline::share_of;
use crate::data::Source;
use crate::dist::{checksum, ranks_differing, BnSync, Collective, GradSync, SyncTimes};
use crate::model::{AnyModel, Model};
use crate::nn::TrainOptions;
use crate::ops::norm::set_stats_sync;
use std::path::PathBuf;
use std::sync::Arc;

/// One process of a data-parallel run of more than one.
pub(super) struct Parallel {
    pub comm: Arc<dyn Collective>,
    /// Synchronised batch norm, when the run asks for it (installed for the process
    /// while this lives).
    bn: Option<Arc<BnSync>>,
    /// Where the gradient sums' time went, over the run's steps.
    pub times: SyncTimes,
}

impl Parallel {
    /// Joins a run of `comm.size() > 1` processes.
    pub fn new(comm: Arc<dyn Collective>, sync_bn: bool) -> Self {
        let bn = sync_bn.then(|| Arc::new(BnSync::new(comm.clone())));
        if let Some(bn) = &bn {
            set_stats_sync(Some(bn.clone()));
        }
        Parallel {
            comm,
            bn,
            times: SyncTimes::default(),
        }
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Rank 0 writes the run directory.
    pub fn writes(&self) -> bool {
        self.rank() == 0
    }

    /// This process's share of every batch, for the loader.
    pub fn share(&self) -> (usize, usize) {
        (self.rank(), self.comm.size())
    }

    /// This step: `n` of the batch's `whole` images are this process's.
    pub fn set_share(&self, n: usize, whole: usize) {
        if let Some(bn) = &self.bn {
            bn.set_share(n, whole);
        }
    }

    /// Backward pass with the gradients summed over processes, in buckets started while
    /// the pass runs. Every process's gradient is its part of the whole batch's (the loss
    /// is the mean over the whole batch, see [`TrainOptions::batch_total`]), so their sum
    /// is the one-process gradient.
    ///
    /// With frozen features only the classifier's gradient is computed, from this share's
    /// mean loss; it is weighted by the share's part of the batch before the sum.
    pub fn backward(
        &mut self,
        net: &mut AnyModel,
        ws: &mut <AnyModel as Model>::Workspace,
        step: TrainOptions,
        frozen: bool,
        share: usize,
        whole: usize,
    ) {
        let comm = &*self.comm;
        let sync = GradSync::new(comm, net.grads().len(), GradSync::BUCKET);
        {
            let ready = |offset: usize, tail: &[f32]| sync.ready(offset, tail);
            let step = TrainOptions {
                grads_ready: Some(&ready),
                ..step
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
        let t = sync.finish(net.buffers_mut().grads);
        self.times.all_reduce += t.all_reduce;
        self.times.exposed += t.exposed;
    }

    /// Without synchronised batch norm each process updates its running statistics from
    /// its own share; they are averaged after every step so that every process holds the
    /// same model at all times (one small all-reduce: the statistics are a few thousand
    /// numbers). With it, they are the same everywhere already.
    pub fn average_running_stats(&self, net: &mut AnyModel) {
        if self.bn.is_some() {
            return;
        }
        let stats = net.buffers_mut().stats;
        self.comm.sum_f32(stats);
        let k = 1.0 / self.comm.size() as f32;
        stats.iter_mut().for_each(|v| *v *= k);
    }

    /// The step's figures summed over processes: `[loss·n, correct, n, stop]`.
    pub fn sum_figures(&self, figures: &mut [f64; 4]) {
        self.comm.sum_f64(figures);
    }

    /// Fails unless every process holds rank 0's parameters and statistics, bit for bit.
    pub fn check_same_weights(&self, net: &AnyModel, when: &str) -> Result<(), TrainError> {
        let differ = ranks_differing(&*self.comm, checksum(&[net.params(), net.stats()]));
        if differ.is_empty() {
            return Ok(());
        }
        Err(TrainError::Config(format!(
            "{when}, rank(s) {differ:?} hold other weights than rank 0 (parameter checksums \
             differ): the processes would no longer train one model"
        )))
    }

    /// [`evaluate`] on every process's contiguous share of `indices`, summed.
    pub fn evaluate(
        &self,
        net: &mut AnyModel,
        ws: &mut <AnyModel as Model>::Workspace,
        source: &Arc<Source>,
        indices: Option<Vec<usize>>,
        transform: &Transform,
    ) -> Result<Evaluation, TrainError> {
        let all = indices.unwrap_or_else(|| (0..source.len()).collect());
        let (first, end) = share_of(all.len(), self.share());
        let mine = evaluate(net, ws, source, Some(all[first..end].to_vec()), transform)?;
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

impl Drop for Parallel {
    fn drop(&mut self) {
        if self.bn.is_some() {
            set_stats_sync(None);
        }
    }
}
