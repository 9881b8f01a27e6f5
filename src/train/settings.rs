//! The rules a training configuration meets, whatever its source: the command line's
//! flags (checked again here), or a run's `config.json` and a checkpoint's `train_config`
//! when a run is resumed. The model inside is checked as it is read
//! ([`crate::model::ModelConfig`]'s deserialisation).

use super::{LrScaling, Schedule, TrainConfig, TrainError};

use crate::nn::limits::MAX_BATCH;
/// Largest upscaling factor (the `--upscale` bound).
pub const MAX_UPSCALE: usize = 64;

impl TrainConfig {
    /// Checks every setting by value; the error names the setting and its allowed range.
    pub fn check(&self) -> Result<(), TrainError> {
        let (o, lb) = (&self.optimizer, &self.large_batch);
        let rules = [
            (
                self.epochs >= 1,
                format!("epochs must be at least 1, got {}", self.epochs),
            ),
            (
                (1..=MAX_BATCH).contains(&self.batch_size),
                format!(
                    "batch_size must be in 1..={MAX_BATCH}, got {}",
                    self.batch_size
                ),
            ),
            (
                (1..=MAX_UPSCALE).contains(&self.upscale),
                format!("upscale must be in 1..={MAX_UPSCALE}, got {}", self.upscale),
            ),
            (
                o.lr.is_finite() && o.lr > 0.0,
                format!("learning rate must be a finite number > 0, got {:?}", o.lr),
            ),
            (
                (0.0..1.0).contains(&o.momentum),
                format!("momentum must be in [0, 1), got {:?}", o.momentum),
            ),
            (
                o.weight_decay.is_finite() && o.weight_decay >= 0.0,
                format!(
                    "weight decay must be a finite number ≥ 0, got {:?}",
                    o.weight_decay
                ),
            ),
            (
                (0.0..1.0).contains(&self.val_split),
                format!("val_split must be in [0, 1), got {:?}", self.val_split),
            ),
            (
                lb.accumulate >= 1 && self.batch_size.is_multiple_of(lb.accumulate.max(1)),
                format!(
                    "accumulate must divide batch_size {} into passes of equal size, got {}",
                    self.batch_size, lb.accumulate
                ),
            ),
            (
                lb.warmup_epochs <= self.epochs,
                format!(
                    "warmup_epochs must be at most the run's {} epochs, got {}",
                    self.epochs, lb.warmup_epochs
                ),
            ),
            (
                !matches!(
                    lb.lr_scaling,
                    Some(LrScaling::Linear { reference_batch: 0 })
                ),
                "lr_scaling's reference_batch must be at least 1".to_string(),
            ),
        ];
        if let Some((_, msg)) = rules.into_iter().find(|r| !r.0) {
            return Err(TrainError::Config(format!("training configuration: {msg}")));
        }
        self.finetune
            .check()
            .map_err(|e| TrainError::Config(format!("training configuration: {e}")))?;
        if let Schedule::Step { gamma, .. } = &self.schedule {
            if !(gamma.is_finite() && *gamma > 0.0 && *gamma <= 1.0) {
                return Err(TrainError::Config(format!(
                    "training configuration: schedule gamma must be in (0, 1], got {gamma:?}"
                )));
            }
        }
        self.model
            .validate()
            .map_err(|e| TrainError::Config(format!("training configuration: model: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use crate::optim::SgdConfig;

    fn config() -> TrainConfig {
        TrainConfig {
            model: ModelConfig::from_name("densenet-bc-16-4").unwrap(),
            dataset: "digits".into(),
            data_dir: None,
            epochs: 3,
            batch_size: 64,
            optimizer: SgdConfig::default(),
            schedule: Schedule::Cosine,
            augment: false,
            upscale: 1,
            val_split: 0.0,
            seed: 0,
            memory: Default::default(),
            svhn_extra: false,
            sync_bn: false,
            finetune: Default::default(),
            large_batch: Default::default(),
        }
    }

    #[test]
    fn stored_training_settings_are_checked_by_value() {
        assert!(config().check().is_ok());
        type Change = fn(&mut TrainConfig);
        let cases: [(Change, &str); 8] = [
            (
                |c| c.large_batch.accumulate = 3,
                "accumulate must divide batch_size 64 into passes of equal size, got 3",
            ),
            (
                |c| c.large_batch.warmup_epochs = 4,
                "warmup_epochs must be at most the run's 3 epochs, got 4",
            ),
            (
                |c| c.batch_size = 0,
                "batch_size must be in 1..=65536, got 0",
            ),
            (
                |c| c.batch_size = usize::MAX,
                "batch_size must be in 1..=65536",
            ),
            (|c| c.epochs = 0, "epochs must be at least 1"),
            (|c| c.upscale = 1 << 40, "upscale must be in 1..=64"),
            (
                |c| c.optimizer.lr = -0.1,
                "learning rate must be a finite number > 0",
            ),
            (
                |c| c.optimizer.momentum = 2.0,
                "momentum must be in [0, 1), got 2.0",
            ),
        ];
        for (change, want) in cases {
            let mut c = config();
            change(&mut c);
            let e = c.check().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
