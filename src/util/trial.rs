//! A switch for measuring a change to the engine inside one process.
//!
//! On this project's shared 2-core machines, whole runs of a benchmark vary by 20–40%
//! from one minute to the next. That is more than most changes gain. What held up is
//! running the old and the new code in one process, alternating, and taking the median
//! of the per-pair time ratios.
//!
//! So code under trial reads [`on`], and takes the new path while it holds.
//! `bench train --ab` and `bench infer --ab` flip the switch between the two halves of
//! every pair of steps, with the order alternating from pair to pair, and report
//! [`Paired`].
//!
//! Nothing in the engine reads the switch between trials. A run with `--ab` then times
//! the same code twice, and its ratio spread is the noise floor of the pairing.

use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};

static ON: AtomicBool = AtomicBool::new(false);

/// Whether the code under trial should take its new path (off unless a `--ab` benchmark
/// turned it on for this step).
#[inline]
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Turns the switch on or off for the steps that follow.
pub fn set(on: bool) {
    ON.store(on, Ordering::Relaxed)
}

/// Which arm run `j` of the timed runs belongs to: runs come in pairs, the first of
/// pair `k` off where `k` is even and on where it is odd, so that neither arm always
/// runs first (a pass leaves caches and clocks in a state the next one inherits).
pub fn arm(j: usize) -> bool {
    let first_on = (j / 2) % 2 == 1;
    if j.is_multiple_of(2) {
        first_on
    } else {
        !first_on
    }
}

/// The two arms of a `--ab` benchmark, one time per arm for each pair.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Paired {
    /// Pairs timed.
    pub pairs: usize,
    /// Median time with the switch off, seconds.
    pub off_median_s: f64,
    /// Median time with the switch on, seconds.
    pub on_median_s: f64,
    /// Median over the pairs of on ÷ off.
    pub ratio: f64,
    /// Lower and upper quartile of the pairs' ratios.
    pub ratio_q1: f64,
    /// See `ratio_q1`.
    pub ratio_q3: f64,
}

impl Paired {
    /// From the off and on times of each pair, in pair order. `None` without pairs.
    pub fn new(off: &[f64], on: &[f64]) -> Option<Self> {
        assert_eq!(off.len(), on.len(), "one time per arm for each pair");
        if off.is_empty() {
            return None;
        }
        let ratios: Vec<f64> = on.iter().zip(off).map(|(b, a)| b / a).collect();
        Some(Paired {
            pairs: off.len(),
            off_median_s: quantile(off, 0.5),
            on_median_s: quantile(on, 0.5),
            ratio: quantile(&ratios, 0.5),
            ratio_q1: quantile(&ratios, 0.25),
            ratio_q3: quantile(&ratios, 0.75),
        })
    }
}

/// The `q` quantile of `v` (non-empty), interpolating linearly between order statistics
/// (the median of an even count is the mean of the middle two; `bench`'s statistics use
/// it too).
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let x = q * (s.len() - 1) as f64;
    let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (x - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arms_alternate_within_and_across_pairs() {
        let arms: Vec<bool> = (0..8).map(arm).collect();
        assert_eq!(arms, [false, true, true, false, false, true, true, false]);
    }

    #[test]
    fn paired_medians_and_ratio_quartiles() {
        // ratios 0.5, 1.0, 1.5, 2.0, 4.0 (in shuffled pair order)
        let off = [2.0, 1.0, 4.0, 2.0, 1.0];
        let on = [3.0, 2.0, 2.0, 2.0, 4.0];
        let p = Paired::new(&off, &on).unwrap();
        assert_eq!(p.pairs, 5);
        assert_eq!((p.off_median_s, p.on_median_s), (2.0, 2.0));
        assert_eq!((p.ratio_q1, p.ratio, p.ratio_q3), (1.0, 1.5, 2.0));
        // an even count interpolates: ratios 1 and 3
        let p = Paired::new(&[1.0, 1.0], &[1.0, 3.0]).unwrap();
        assert_eq!((p.ratio, p.ratio_q1, p.ratio_q3), (2.0, 1.5, 2.5));
        assert_eq!(Paired::new(&[], &[]), None);
    }
}
