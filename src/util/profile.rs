//! Where a step spends its time: wall-clock seconds per kind of operation, and per shape
//! for the convolutions, collected when `densenet bench train --profile` or `bench infer
//! --profile` switches it on (off, a scope costs one atomic load).
//!
//! Scopes are opened at the entry of the engine's operations, on the calling thread (the
//! operations parallelise inside), so the kinds add up to the step without double counting
//! as long as scopes are not nested.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// Kinds of work a training step is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// 1×1 convolutions (bottlenecks, transitions), forward.
    Conv1x1Forward,
    /// 1×1 convolutions, backward (weight and input gradients).
    Conv1x1Backward,
    /// 3×3 convolutions, forward.
    Conv3x3Forward,
    /// 3×3 convolutions, backward.
    Conv3x3Backward,
    /// Other convolutions (the ImageNet stem's 7×7), both directions.
    ConvOther,
    /// Batch-norm statistics and BN-ReLU forward.
    BnForward,
    /// BN-ReLU backward.
    BnBackward,
    /// Pooling, both directions.
    Pool,
    /// The optimizer step.
    Optimizer,
}

const KINDS: [Op; 9] = [
    Op::Conv1x1Forward,
    Op::Conv1x1Backward,
    Op::Conv3x3Forward,
    Op::Conv3x3Backward,
    Op::ConvOther,
    Op::BnForward,
    Op::BnBackward,
    Op::Pool,
    Op::Optimizer,
];

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 9] = [const { AtomicU64::new(0) }; 9];
static CALLS: [AtomicU64; 9] = [const { AtomicU64::new(0) }; 9];

impl Op {
    fn index(self) -> usize {
        KINDS.iter().position(|&k| k == self).unwrap_or(0)
    }
    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Op::Conv1x1Forward => "conv 1x1 forward",
            Op::Conv1x1Backward => "conv 1x1 backward",
            Op::Conv3x3Forward => "conv 3x3 forward",
            Op::Conv3x3Backward => "conv 3x3 backward",
            Op::ConvOther => "conv other (stem)",
            Op::BnForward => "BN-ReLU forward + stats",
            Op::BnBackward => "BN-ReLU backward",
            Op::Pool => "pooling",
            Op::Optimizer => "SGD update",
        }
    }
}

/// Switches collection on or off.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Clears the counters.
pub fn reset() {
    for i in 0..KINDS.len() {
        NANOS[i].store(0, Ordering::Relaxed);
        CALLS[i].store(0, Ordering::Relaxed);
    }
    *SHAPES.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// `(kind, seconds, calls)` for every kind, in declaration order.
pub fn snapshot() -> Vec<(Op, f64, u64)> {
    KINDS
        .iter()
        .map(|&k| {
            let i = k.index();
            (
                k,
                NANOS[i].load(Ordering::Relaxed) as f64 * 1e-9,
                CALLS[i].load(Ordering::Relaxed),
            )
        })
        .collect()
}

/// Time from now until the returned guard is dropped counts for `op`.
#[must_use]
pub fn scope(op: Op) -> Scope {
    Scope {
        op,
        start: ENABLED.load(Ordering::Relaxed).then(Instant::now),
        conv: None,
    }
}

/// A convolution's shape, the key of the per-shape rows ([`shapes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConvKey {
    /// Kernel size (1, 3, 7).
    pub k: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Output positions (samples × height × width).
    pub positions: usize,
}

/// [`scope`] for a convolution of shape `key` that does `products` multiply-adds (its
/// forward `k²·cin·cout·positions`, twice that for a backward with the input gradient):
/// it also counts for that shape.
#[must_use]
pub fn scope_conv(op: Op, key: ConvKey, products: usize) -> Scope {
    // (not `..scope(op)`: that would drop, and count, a second guard)
    Scope {
        op,
        start: ENABLED.load(Ordering::Relaxed).then(Instant::now),
        conv: Some((key, products as u64)),
    }
}

/// Guard of [`scope`] and [`scope_conv`].
pub struct Scope {
    op: Op,
    start: Option<Instant>,
    conv: Option<(ConvKey, u64)>,
}

/// Per (kind, shape): nanoseconds, calls, multiply-adds.
type ShapeTotals = std::collections::HashMap<(Op, ConvKey), (u64, u64, u64)>;

static SHAPES: std::sync::Mutex<Option<ShapeTotals>> = std::sync::Mutex::new(None);

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(t) = self.start {
            let i = self.op.index();
            let nanos = t.elapsed().as_nanos() as u64;
            NANOS[i].fetch_add(nanos, Ordering::Relaxed);
            CALLS[i].fetch_add(1, Ordering::Relaxed);
            if let Some((key, products)) = self.conv {
                // scopes open on the calling thread only (module docs): one lock per
                // convolution, while profiling
                let mut shapes = SHAPES.lock().unwrap_or_else(|e| e.into_inner());
                let e = shapes
                    .get_or_insert_with(Default::default)
                    .entry((self.op, key))
                    .or_default();
                *e = (e.0 + nanos, e.1 + 1, e.2 + products);
            }
        }
    }
}

/// One convolution shape's totals since [`reset`]: kind, shape, seconds, calls and
/// multiply-adds, longest time first.
pub fn shapes() -> Vec<(Op, ConvKey, f64, u64, u64)> {
    let shapes = SHAPES.lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<_> = shapes
        .iter()
        .flatten()
        .map(|(&(op, key), &(nanos, calls, products))| {
            (op, key, nanos as f64 * 1e-9, calls, products)
        })
        .collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_count_only_when_enabled() {
        // the counters are global and other tests run concurrently: use the one kind that
        // only the bench command opens
        let calls = || snapshot()[Op::Optimizer.index()].2;
        let before = calls();
        drop(scope(Op::Optimizer));
        assert_eq!(calls(), before);
        enable(true);
        drop(scope(Op::Optimizer));
        drop(scope(Op::Optimizer));
        enable(false);
        assert_eq!(calls(), before + 2);
    }
}
