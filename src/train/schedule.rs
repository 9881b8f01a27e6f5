//! Learning-rate schedules: the paper's step schedule (÷10 at 50% and 75% of training;
//! ImageNet: at epochs 30 and 60) and the cosine shape of the authors' later code.

use serde::{Deserialize, Serialize};

/// How the learning rate changes over the epochs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Schedule {
    /// Multiply by `gamma` at each milestone epoch.
    Step {
        /// Epochs (0-based) from which the next factor applies.
        milestones: Vec<usize>,
        /// Factor per milestone (0.1 in the paper).
        gamma: f32,
    },
    /// Per-epoch cosine: `lr·½(1 + cos(π·e/E))` for epoch e of E.
    Cosine,
    /// Constant.
    Constant,
}

/// `step ÷10 after epochs 150, 225`, `cosine`, `constant`: as a user would write it, and
/// counting epochs as the log does (from 1: epoch 150 runs at the first rate, epoch 151
/// at the next; a milestone is the number of epochs done before the rate falls).
impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Step { milestones, .. } if milestones.is_empty() => {
                f.write_str("constant (no step inside the run)")
            }
            Schedule::Step { milestones, gamma } => {
                let by = if *gamma > 0.0 && (1.0 / gamma - (1.0 / gamma).round()).abs() < 1e-3 {
                    format!("÷{}", (1.0 / gamma).round())
                } else {
                    format!("×{gamma}")
                };
                let at: Vec<String> = milestones.iter().map(|m| m.to_string()).collect();
                let epochs = if at.len() == 1 { "epoch" } else { "epochs" };
                write!(f, "step {by} after {epochs} {}", at.join(", "))
            }
            Schedule::Cosine => f.write_str("cosine"),
            Schedule::Constant => f.write_str("constant"),
        }
    }
}

impl Schedule {
    /// The paper's CIFAR/SVHN schedule for `epochs`: ÷10 at 50% and 75%.
    pub fn paper(epochs: usize) -> Self {
        Schedule::Step {
            milestones: vec![epochs / 2, epochs * 3 / 4],
            gamma: 0.1,
        }
    }

    /// Learning rate of epoch `epoch` (0-based) of `epochs`.
    pub fn lr(&self, base: f32, epoch: usize, epochs: usize) -> f32 {
        match self {
            Schedule::Step { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| epoch >= m).count();
                base * gamma.powi(passed as i32)
            }
            Schedule::Cosine => {
                let t = epoch as f64 / epochs.max(1) as f64;
                (base as f64 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
            }
            Schedule::Constant => base,
        }
    }
}

/// The warmup's factor on the scheduled rate at step `step` of a run (0-based, counted
/// over the epochs) whose first `warmup` steps warm up: `(step + 1) / warmup`, rising
/// linearly from 1/warmup to 1 at the warmup's last step; 1 from there on (Goyal et al.'s
/// gradual warmup).
pub fn warmup_factor(step: usize, warmup: usize) -> f32 {
    if step >= warmup {
        1.0
    } else {
        (step + 1) as f32 / warmup as f32
    }
}

impl std::str::FromStr for Schedule {
    type Err = String;
    /// `cosine`, `constant`, `step` (the paper's 50%/75%, resolved later) or
    /// `step:30,60` (explicit milestones).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cosine" => Ok(Schedule::Cosine),
            "constant" => Ok(Schedule::Constant),
            "step" => Ok(Schedule::Step {
                milestones: vec![],
                gamma: 0.1,
            }),
            _ => {
                let list = s.strip_prefix("step:").ok_or_else(|| {
                    format!(
                        "unknown schedule '{s}' (expected step, step:E1,E2,…, cosine or constant)"
                    )
                })?;
                let milestones = list
                    .split(',')
                    .map(|v| v.trim().parse::<usize>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| format!("schedule '{s}': milestones must be epoch numbers"))?;
                // a milestone 0 would divide the rate before the first epoch, and the rate
                // falls at each milestone in turn
                if milestones.first() == Some(&0) || milestones.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(format!(
                        "schedule '{s}': milestones must be increasing epoch numbers of at \
                         least 1 (the learning rate falls ÷10 after each)"
                    ));
                }
                Ok(Schedule::Step {
                    milestones,
                    gamma: 0.1,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Schedules print as words, not Rust's Debug form (issue 12, item 15).
    #[test]
    fn schedules_print_as_words() {
        // the log's epoch 150 is the last at the first rate, 151 the first at the next
        let paper = Schedule::paper(300);
        assert_eq!(paper.to_string(), "step ÷10 after epochs 150, 225");
        assert_eq!(
            (paper.lr(1.0, 149, 300), paper.lr(1.0, 150, 300)),
            (1.0, 0.1)
        );
        let none = Schedule::Step {
            milestones: vec![],
            gamma: 0.1,
        };
        assert_eq!(none.to_string(), "constant (no step inside the run)");
        assert_eq!(none.lr(0.1, 0, 1), 0.1);
        assert_eq!(Schedule::Cosine.to_string(), "cosine");
    }

    #[test]
    fn paper_step_schedule() {
        let s = Schedule::paper(300);
        assert_eq!(s.lr(0.1, 0, 300), 0.1);
        assert_eq!(s.lr(0.1, 149, 300), 0.1);
        assert!((s.lr(0.1, 150, 300) - 0.01).abs() < 1e-9);
        assert!((s.lr(0.1, 225, 300) - 0.001).abs() < 1e-9);
        let imagenet: Schedule = "step:30,60".parse().unwrap();
        assert!((imagenet.lr(0.1, 59, 90) - 0.01).abs() < 1e-9);
        assert!((imagenet.lr(0.1, 60, 90) - 0.001).abs() < 1e-9);
    }

    #[test]
    fn cosine_schedule() {
        let s = Schedule::Cosine;
        assert_eq!(s.lr(0.1, 0, 30), 0.1);
        assert!((s.lr(0.1, 15, 30) - 0.05).abs() < 1e-7);
        assert!(s.lr(0.1, 29, 30) < 0.001);
        assert!("bogus".parse::<Schedule>().is_err());
        assert!("step:0,100".parse::<Schedule>().is_err());
        assert!("step:20,10".parse::<Schedule>().is_err());
        assert!("step:10,10".parse::<Schedule>().is_err());
    }

    #[test]
    fn warmup_rises_per_step_to_one() {
        let f: Vec<f32> = (0..6).map(|s| warmup_factor(s, 4)).collect();
        assert_eq!(f, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
        assert_eq!(warmup_factor(0, 0), 1.0);
    }
}
