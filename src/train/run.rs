//! [`train`]: a run from its configuration to its last epoch, on one process or on each of
//! many (every process runs this same loop on its share of every batch; rank 0 writes).

use super::checkpoint;
use super::finetune;
use super::metrics::{append_steps, keep_steps, write_metrics, EpochMetrics, RunSummary, StepRow};
use super::run_dir::{claim_run_dir, io, release_run_dir, RunOptions, RUN_FILES};
use super::schedule::warmup_factor;
use super::setup::DataSetup;
use super::step::{DataParallel, NonFinite, StepInput};
use super::{Progress, TrainConfig, TrainError, TrainState};
use crate::data::pipeline::{Loader, LoaderConfig};
use crate::evaluate::EvalSet;
use crate::model::memory::{self, Use};
use crate::model::{AnyModel, ModelConfig};
use crate::nn::{MemoryMode, TensorTable};
use crate::optim::{one_d_ranges, param_groups, Sgd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Trains (or resumes training) as `config` says, writing the run directory.
///
/// A fresh run loads its data and checks its model before it creates anything, and a
/// fresh run that fails (or is interrupted) before its first epoch's checkpoint removes
/// what it created: a run directory exists only for a run with at least one epoch.
pub fn train(
    config: &TrainConfig,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<RunSummary, TrainError> {
    config.check()?;
    let mut dp = DataParallel::new(opts.comm.clone(), config.sync_bn);
    dp.check_batch(config.batch_size, config.large_batch.accumulate)?;
    let data = DataSetup::load(config)?;
    let model = data.fit_model(config.model.clone())?;
    // before the run directory exists: a run that cannot have its memory leaves nothing
    let passes = config.large_batch.accumulate;
    memory::check(
        &model,
        &[
            Use::train(config.batch_size / dp.size() / passes, config.memory),
            Use::eval(eval_batch(config.batch_size)),
        ],
        0,
        "",
    )?;
    if opts.resume {
        return train_in(config, opts.dir, opts, data, model, progress, &mut dp);
    }
    // --force replaces the run's files: never the checkpoint this run starts from
    if let (Some(init), true) = (&config.finetune.init, opts.replace) {
        if let Some(f) = RUN_FILES
            .iter()
            .find(|f| crate::util::paths::same_file(init, &opts.dir.join(f)))
        {
            return Err(TrainError::Config(format!(
                "--init {}: it is {f} of the run in {} that --force replaces; copy it \
                 elsewhere first, or choose another --out",
                init.display(),
                opts.dir.display()
            )));
        }
    }
    let (claimed, dir) = dp.agree_on_dir(|| claim_run_dir(opts).map(|c| (c.dir.clone(), c)))?;
    progress.message(&format!("run directory {}", dir.display()));
    let result = train_in(config, &dir, opts, data, model, progress, &mut dp);
    if let Some(claimed) = claimed.filter(|_| result.is_err()) {
        if !dir.join("last.safetensors").exists() {
            release_run_dir(&claimed);
        }
    }
    result
}

/// Images per evaluation pass of a run with batches of `batch`.
fn eval_batch(batch: usize) -> usize {
    batch.max(100)
}

fn train_in(
    config: &TrainConfig,
    dir: &Path,
    opts: &RunOptions,
    data: DataSetup,
    model: ModelConfig,
    progress: &mut dyn Progress,
    dp: &mut DataParallel,
) -> Result<RunSummary, TrainError> {
    // rank 0 of a data-parallel run writes the run directory; the others only read it
    let writes = dp.writes();
    let mut config = config.clone();
    config.model = model.clone();
    let mut net = AnyModel::new(&model, config.seed);
    let mut opt = Sgd::new(config.optimizer);
    let last = dir.join("last.safetensors");
    let mut state = TrainState::default();
    // the initial weights of a fresh run; a resumed run has its own checkpoint
    if let (Some(init), false) = (&config.finetune.init, opts.resume) {
        let report = finetune::load_init(init, &mut *net)?;
        progress.message(&report.to_string());
        if let Some(note) = report.frozen_note(&config.finetune) {
            progress.message(&note);
        }
    }
    if opts.resume {
        let loaded = checkpoint::load(&last, &mut *net, &mut opt)?;
        if loaded.config != config {
            return Err(TrainError::Config(format!(
                "{}: the checkpoint was made with another configuration; resume with the \
                 run's own settings (see {}/config.json)",
                last.display(),
                dir.display()
            )));
        }
        state = loaded.state;
        progress.message(&format!(
            "resuming {} after epoch {} of {}",
            dir.display(),
            state.epochs_done,
            config.epochs
        ));
    }
    if data.val_indices.is_empty() && !opts.resume {
        progress.message(
            "note: without --val-split, best.safetensors is the epoch with the best test accuracy",
        );
    }
    // written with the first checkpoint, so that a run that dies before it (killed, out
    // of memory) leaves at most an empty directory, which a fresh run may take
    let mut config_json = writes.then(|| serde_json::to_vec_pretty(&config).unwrap_or_default());
    let pre = data.preprocess();

    let passes = config.large_batch.accumulate;
    let loader_cfg = LoaderConfig {
        batch_size: config.batch_size,
        seed: config.seed,
        share: dp.share(),
        min_share: passes,
        ..LoaderConfig::default()
    };
    let loader = Loader::new(
        data.train.clone(),
        Some(data.train_indices.clone()),
        data.train_transform.clone(),
        loader_cfg,
    )?;
    // memory for one pass
    let mut ws = net.workspace(config.batch_size / dp.size() / passes, config.memory, true);
    dp.check_same_weights(&*net, "at the start")?;
    let mut eval_ws = net.workspace(eval_batch(config.batch_size), MemoryMode::Efficient, false);
    let end = opts.stop_after.unwrap_or(config.epochs).min(config.epochs);
    let steps_csv = dir.join("steps.csv");
    if writes && opts.resume {
        keep_steps(&steps_csv, state.epochs_done)?;
    }
    let no_decay = if config.large_batch.no_bn_decay {
        one_d_ranges(net.param_table())
    } else {
        Vec::new()
    };
    let batches = loader.batches_per_epoch();
    let warmup = config.large_batch.warmup_epochs * batches;
    let (base, factor) = (config.base_lr(), config.lr_factor());
    let mut images_trained = 0usize;
    let mut train_seconds = 0f64;
    let interrupted = || opts.interrupt.is_some_and(|f| f.load(Ordering::SeqCst));
    let stop = |state: &TrainState| TrainError::Interrupted {
        dir: dir.to_path_buf(),
        epochs_done: state.epochs_done,
        epochs: config.epochs,
    };
    for epoch in state.epochs_done..end {
        // agreed: a rank that stopped here alone would leave the others waiting in the
        // epoch's first step (a signal reaches the ranks of mpirun at different moments)
        if dp.any(interrupted()) {
            return Err(stop(&state));
        }
        let t0 = Instant::now();
        let scheduled = config.schedule.lr(base, epoch, config.epochs);
        let mut lr = scheduled;
        progress.epoch_start(epoch + 1, config.epochs, batches);
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        let mut step_rows = Vec::with_capacity(batches);
        for (b, batch) in loader.epoch(epoch as u64).enumerate() {
            let batch = batch?;
            let step_no = epoch * batches + b;
            let warm = warmup_factor(step_no, warmup);
            lr = scheduled * warm;
            opt.config.lr = lr;
            let rates = finetune::rates(
                &config.finetune,
                net.classifier_range(),
                net.num_params(),
                lr,
                |f| config.schedule.lr(f * factor, epoch, config.epochs) * warm,
            );
            let groups = param_groups(&rates, config.optimizer.weight_decay, &no_decay);
            let step = dp.step(
                &mut *net,
                &mut ws,
                &mut opt,
                &StepInput {
                    images: &batch.images,
                    labels: &batch.labels,
                    // the whole batch this process has a share of
                    whole: (loader.len() - b * config.batch_size).min(config.batch_size),
                    seed: &[config.seed, epoch as u64, b as u64],
                    frozen: config.finetune.frozen(),
                    groups: &groups,
                    passes,
                    stop: interrupted(),
                },
            );
            if let Some(bad) = step.non_finite {
                let (what, value) = match bad {
                    NonFinite::Loss(v) => ("the loss".to_string(), v),
                    NonFinite::Gradient(i, v) => (
                        format!("the gradient of {}", element(net.param_table(), i)),
                        v,
                    ),
                };
                let at = (epoch + 1, Some(b + 1), lr);
                return Err(diverged(what, value, at, &state, &last));
            }
            step_rows.push(StepRow {
                step: step_no + 1,
                epoch: epoch + 1,
                batch: b + 1,
                images: step.images,
                lr,
                loss: step.loss,
            });
            correct += step.correct;
            loss_sum += step.loss as f64 * step.images as f64;
            seen += step.images;
            let elapsed = t0.elapsed().as_secs_f64();
            progress.batch(
                b + 1,
                loss_sum / seen as f64,
                correct as f64 / seen as f64,
                seen as f64 / elapsed,
            );
            // the step is done; the unfinished epoch is dropped whole (no metrics row, no
            // checkpoint): a resumed run repeats it exactly
            if step.stop {
                return Err(stop(&state));
            }
        }
        // the update can overflow what a finite gradient did not, and the forward pass can
        // fill a running statistic with NaN that ReLU then hides from the loss: nothing that
        // is not finite reaches a checkpoint (one pass over each buffer, once an epoch)
        for (table, values, kind) in [
            (net.param_table(), net.params(), "parameter"),
            (net.stats_table(), net.stats(), "running statistic"),
        ] {
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                let what = format!("{kind} {}", element(table, i));
                let at = (epoch + 1, None, lr);
                return Err(diverged(what, values[i], at, &state, &last));
            }
        }
        let train_time = t0.elapsed().as_secs_f64();
        images_trained += seen;
        train_seconds += train_time;
        let val_accuracy = if data.val_indices.is_empty() {
            None
        } else {
            let val = EvalSet {
                source: &data.train,
                indices: Some(data.val_indices.clone()),
                transform: &data.eval_transform,
            };
            let v = dp.evaluate(&mut *net, &mut eval_ws, val)?;
            Some(v.top1_accuracy)
        };
        let test = EvalSet {
            source: &data.test,
            indices: None,
            transform: &data.eval_transform,
        };
        let test = dp.evaluate(&mut *net, &mut eval_ws, test)?;
        dp.check_same_weights(&*net, &format!("after epoch {}", epoch + 1))?;
        if !test.loss.is_finite() {
            // the weights are no longer usable: keep the last good checkpoint, exit with error
            return Err(TrainError::Config(format!(
                "the test loss became {} after epoch {} (learning rate {lr:?}); training \
                 stopped, no checkpoint of this epoch was written\nhint: lower --lr",
                test.loss,
                epoch + 1
            )));
        }
        let m = EpochMetrics {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            val_accuracy,
            test_loss: test.loss,
            test_accuracy: test.top1_accuracy,
            seconds: t0.elapsed().as_secs_f64(),
        };
        state.epochs_done = epoch + 1;
        state.seconds += m.seconds;
        state.metrics.push(m.clone());
        // the best model is chosen on validation accuracy when there is a held-out split
        let score = m.val_accuracy.unwrap_or(m.test_accuracy);
        let is_best = state.best_epoch == 0 || score > state.best_accuracy;
        if is_best {
            state.best_accuracy = score;
            state.best_epoch = epoch + 1;
        }
        if writes {
            if let Some(json) = config_json.take() {
                crate::util::atomic::write(&dir.join("config.json"), &json).map_err(io(dir))?;
            }
            write_metrics(&dir.join("metrics.csv"), &state.metrics)?;
            append_steps(&steps_csv, &step_rows)?;
            checkpoint::save(&last, &*net, &opt, &config, &state, &pre)?;
            if is_best {
                let best = dir.join("best.safetensors");
                checkpoint::save(&best, &*net, &opt, &config, &state, &pre)?;
            }
        }
        progress.epoch_end(&m);
    }
    let summary = RunSummary::new(&config, &*net, &state, images_trained, train_seconds, dir);
    // a resumed run that had nothing left to train keeps the summary of the session that
    // finished it (this one's rate would be 0 images/s)
    if state.epochs_done == config.epochs && writes && images_trained > 0 {
        let json = serde_json::to_vec_pretty(&summary).unwrap_or_default();
        crate::util::atomic::write(&dir.join("summary.json"), &json).map_err(io(dir))?;
    }
    Ok(summary)
}

/// Element `i` of a flat buffer, by the name of its tensor in `table`:
/// `'features.conv0.weight' (element 17)`.
fn element(table: &TensorTable, i: usize) -> String {
    match table.entries().iter().find(|e| e.range().contains(&i)) {
        Some(e) => format!("'{}' (element {})", e.name, i - e.offset),
        None => format!("element {i}"),
    }
}

/// [`TrainError::Diverged`]: `what` became `value` at `(epoch, batch, learning rate)`;
/// the last good checkpoint is `last` after the epochs `state` has done.
fn diverged(
    what: String,
    value: f32,
    (epoch, batch, lr): (usize, Option<usize>, f32),
    state: &TrainState,
    last: &Path,
) -> TrainError {
    let checkpoint = if state.epochs_done > 0 {
        format!(
            "The last good checkpoint, after epoch {}, is {}",
            state.epochs_done,
            last.display()
        )
    } else {
        "No checkpoint was written yet.".to_string()
    };
    TrainError::Diverged {
        what,
        value,
        epoch,
        batch,
        lr,
        checkpoint,
    }
}
