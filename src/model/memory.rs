//! What a model will take in memory, computed once and checked once, before anything is
//! allocated: every command that builds a workspace (train, eval, predict, embed,
//! forward, bench) asks [`check`] first, and `summary --plan` prints the same
//! [`ModelConfig::memory_regions`].
//!
//! Sizes are computed so that they cannot overflow: the plan is laid out for one image
//! first, and a batch whose workspace would pass [`MAX_WORKSPACE_BYTES`] is refused
//! without laying it out (a workspace grows at most linearly with the batch). The room
//! left is [`crate::util::memory::headroom`]: the machine's available memory, the
//! process's own limits and its control group's, whichever is least.

use super::interface::MemoryPlan;
use super::ModelConfig;
use crate::nn::arena::{total_bytes, Region};
use crate::nn::limits::MAX_BATCH;
use crate::nn::MemoryMode;
use crate::util::memory::{headroom, Bound};

/// Largest workspace laid out (256 TiB): far above any machine, far below `usize::MAX`.
pub const MAX_WORKSPACE_BYTES: u128 = 1 << 48;

/// One workspace a command will hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Use {
    /// Images per pass.
    pub batch: usize,
    /// Memory mode.
    pub mode: MemoryMode,
    /// Whether it supports backward passes.
    pub training: bool,
}

impl Use {
    /// An evaluation workspace (efficient memory) for batches of `batch`.
    pub fn eval(batch: usize) -> Self {
        Use {
            batch,
            mode: MemoryMode::Efficient,
            training: false,
        }
    }

    /// A training workspace for passes of `batch` images.
    pub fn train(batch: usize, mode: MemoryMode) -> Self {
        Use {
            batch,
            mode,
            training: true,
        }
    }
}

/// A model that cannot be given the memory it asks for.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryError {
    /// A batch outside 1..=[`MAX_BATCH`].
    #[error("batches of {batch} images: a batch holds 1 to {MAX_BATCH} images")]
    Batch {
        /// The batch size asked for.
        batch: usize,
    },
    /// A workspace beyond [`MAX_WORKSPACE_BYTES`].
    #[error(
        "{model} with batches of {batch} would need more than 256 TiB of activations; lower \
         the batch size or the input size"
    )]
    TooLarge {
        /// The model's name.
        model: String,
        /// The batch size asked for.
        batch: usize,
    },
    /// More than the process may still take.
    #[error("{what} needs {}, more than the {} {bound}; {hint}", gib(*need), gib(*room))]
    Insufficient {
        /// The model, its input size and batch, and what is counted.
        what: String,
        /// What would make it fit.
        hint: &'static str,
        /// Bytes needed.
        need: u128,
        /// Bytes the tightest limit leaves.
        room: u64,
        /// Which limit that is.
        bound: Bound,
    },
}

fn gib(b: impl Into<u128>) -> String {
    format!("{:.1} GiB", b.into() as f64 / (1u64 << 30) as f64)
}

impl ModelConfig {
    /// The memory plan's region table (name, offset, bytes) of this model's workspace for
    /// batches of up to `batch` images: what a workspace allocates, in one piece. Refuses
    /// a batch outside 1..=[`MAX_BATCH`] and a workspace beyond [`MAX_WORKSPACE_BYTES`].
    pub fn memory_regions(
        &self,
        batch: usize,
        mode: MemoryMode,
        training: bool,
    ) -> Result<Vec<Region>, MemoryError> {
        Ok(self.checked_plan(batch, mode, training)?.regions)
    }

    /// The memory plan (regions and routes) of this model's workspace for batches of up to
    /// `batch` images, with the bounds of [`memory_regions`](Self::memory_regions).
    pub fn checked_plan(
        &self,
        batch: usize,
        mode: MemoryMode,
        training: bool,
    ) -> Result<MemoryPlan, MemoryError> {
        if !(1..=MAX_BATCH).contains(&batch) {
            return Err(MemoryError::Batch { batch });
        }
        let one = total_bytes(&self.regions_unchecked(1, mode, training)) as u128;
        if one.saturating_mul(batch as u128) > MAX_WORKSPACE_BYTES {
            let s = self.input_size();
            return Err(MemoryError::TooLarge {
                model: format!("{} on {s}×{s} inputs", self.name()),
                batch,
            });
        }
        Ok(self.architecture().memory_plan(batch, mode, training))
    }

    /// Bytes of the workspace [`memory_regions`](Self::memory_regions) lays out.
    pub fn workspace_bytes(&self, u: Use) -> Result<u64, MemoryError> {
        Ok(total_bytes(&self.memory_regions(u.batch, u.mode, u.training)?) as u64)
    }

    fn regions_unchecked(&self, batch: usize, mode: MemoryMode, training: bool) -> Vec<Region> {
        self.architecture()
            .memory_plan(batch, mode, training)
            .regions
    }
}

/// Bytes a command holding `cfg`'s weights and the workspaces `uses` takes, plus `extra`
/// bytes of its own: the parameters and their gradients, and momentum when training.
pub fn need(cfg: &ModelConfig, uses: &[Use], extra: u128) -> Result<u128, MemoryError> {
    let mut total = extra;
    for &u in uses {
        total = total.saturating_add(cfg.workspace_bytes(u)? as u128);
    }
    let params = match cfg {
        ModelConfig::DenseNet(c) => c.num_params_checked(),
        ModelConfig::PreActResNet(c) => c.num_params_checked(),
    }
    .unwrap_or(u128::MAX / 16);
    let copies = if uses.iter().any(|u| u.training) {
        3
    } else {
        2
    };
    Ok(total.saturating_add(params * 4 * copies))
}

/// Refuses `cfg` with the workspaces `uses` and `extra` bytes more (described by
/// `extra_what`, e.g. `"the features gathered"`) when that needs more memory than this
/// process may still take; to be called before anything is allocated. Where no limit
/// is known only the sizes are checked.
pub fn check(
    cfg: &ModelConfig,
    uses: &[Use],
    extra: u128,
    extra_what: &str,
) -> Result<(), MemoryError> {
    let need = need(cfg, uses, extra)?;
    let Some(room) = headroom() else {
        return Ok(());
    };
    if need <= room.bytes as u128 {
        return Ok(());
    }
    let s = cfg.input_size();
    let model = format!("{} on {s}×{s} inputs", cfg.name());
    let (what, hint) = match uses.iter().map(|u| u.batch).max() {
        None => (
            format!("{model} (its weights)"),
            "the model is too large for this process",
        ),
        Some(batch) => {
            let extra = if extra_what.is_empty() {
                String::new()
            } else {
                format!(", and {extra_what}")
            };
            (
                format!("{model} with batches of {batch} (weights and activations{extra})"),
                "lower the batch size or the input size",
            )
        }
    };
    Err(MemoryError::Insufficient {
        what,
        hint,
        need,
        room: room.bytes,
        bound: room.bound,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes never overflow: batches out of bounds and workspaces beyond any machine are
    /// refused with their reason, and a real plan agrees with the one-image estimate.
    #[test]
    fn sizes_are_checked_before_they_are_laid_out() {
        let cfg = ModelConfig::from_name("densenet-bc-100-12").unwrap();
        let e = MemoryMode::Efficient;
        assert_eq!(
            cfg.memory_regions(0, e, true),
            Err(MemoryError::Batch { batch: 0 })
        );
        assert!(cfg.memory_regions(MAX_BATCH + 1, e, true).is_err());
        let b64 = cfg.workspace_bytes(Use::train(64, e)).unwrap();
        let b1 = cfg.workspace_bytes(Use::train(1, e)).unwrap();
        assert!(b1 < b64 && b64 <= 64 * b1, "{b1} {b64}");
        let mut huge = cfg.clone();
        huge.set_io(10, 3, crate::nn::limits::MAX_INPUT_SIZE);
        let err = huge.memory_regions(MAX_BATCH, e, true).unwrap_err();
        assert!(err.to_string().contains("more than 256 TiB"), "{err}");
        let err = check(&huge, &[Use::train(MAX_BATCH, e)], 0, "").unwrap_err();
        assert!(matches!(err, MemoryError::TooLarge { .. }), "{err}");
    }
}
