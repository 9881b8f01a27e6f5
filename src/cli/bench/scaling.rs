//! `densenet bench scaling`: the same work at each thread count, as separate processes
//! (`densenet --threads T bench infer|train … --json`) in alternating rounds, so that
//! every count sees the machine in the same states; the speed-up over the first count
//! and the parallel efficiency (speed-up ÷ threads ratio), in the manner of hyperfine's
//! `--parameter-list`.

use super::Stats;
use anyhow::Context;
use serde::Serialize;
use std::process::Command;

/// `bench scaling` arguments.
#[derive(clap::Args, Debug)]
pub struct ScalingArgs {
    /// What to time: `infer` (evaluation passes) or `train` (training steps).
    #[arg(long, default_value = "infer", value_parser = ["infer", "train"])]
    pub work: String,
    /// Model name (either family).
    #[arg(long, short = 'm', default_value = "densenet121")]
    pub model: String,
    /// Batch size, 1 to 65536.
    #[arg(long = "batch-size", default_value_t = 1, value_parser = crate::cli::values::batch_size())]
    pub batch: usize,
    /// Thread counts to compare, the first the baseline (default: 1, 2, 4, … up to the
    /// cores this process may use).
    #[arg(long, value_delimiter = ',', value_parser = crate::cli::values::one_to(1024))]
    pub thread_counts: Vec<usize>,
    /// Rounds; each runs every count once, in reverse order every other round.
    #[arg(long, default_value_t = 3, value_parser = crate::cli::values::at_least_one())]
    pub rounds: usize,
    /// Timed passes or steps in each run (after one warm-up).
    #[arg(long, default_value_t = 5, value_parser = crate::cli::values::at_least_one())]
    pub steps: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One thread count's figures.
#[derive(Debug, Serialize)]
pub struct ScalingRow {
    /// Worker threads.
    pub threads: usize,
    /// Each round's median pass or step time.
    pub time: Stats,
    /// Median over rounds of the baseline's time ÷ this count's, in the same round.
    pub speedup: f64,
    /// `speedup` ÷ (threads ÷ the baseline's threads): 1 is perfect scaling.
    pub efficiency: f64,
}

/// Result of `bench scaling`.
#[derive(Debug, Serialize)]
pub struct ScalingReport {
    /// Format version.
    pub version: u32,
    /// `infer` or `train`.
    pub work: String,
    /// Model.
    pub model: String,
    /// Batch size.
    pub batch: usize,
    /// The CPU.
    pub cpu: String,
    /// Rounds.
    pub rounds: usize,
    /// One row per thread count, the baseline first.
    pub rows: Vec<ScalingRow>,
}

/// 1, 2, 4, … up to `cores`, and `cores` itself.
fn default_counts(cores: usize) -> Vec<usize> {
    let mut v: Vec<usize> = std::iter::successors(Some(1), |t| Some(t * 2))
        .take_while(|&t| t < cores)
        .collect();
    v.push(cores.max(1));
    v
}

/// The median time of one run of `work` at `threads`, from the child's `--json`.
fn time_once(a: &ScalingArgs, threads: usize) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("the densenet executable")?;
    let (batch, steps) = (a.batch.to_string(), a.steps.to_string());
    let out = Command::new(exe)
        .args([
            "--threads",
            &threads.to_string(),
            "--precision",
            crate::ops::route::precision().name(),
            "bench",
            &a.work,
            "--model",
        ])
        .args([
            &a.model,
            "--batch-size",
            &batch,
            "--steps",
            &steps,
            "--warmup",
            "1",
        ])
        .arg("--json")
        .output()
        .context("starting densenet bench")?;
    anyhow::ensure!(
        out.status.success(),
        "bench {} at {threads} threads failed: {}",
        a.work,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("bench's JSON output")?;
    v["median_s"]
        .as_f64()
        .or_else(|| v["median_step_s"].as_f64())
        .context("no median time in bench's JSON output")
}

/// Runs `densenet bench scaling`.
pub fn run(a: ScalingArgs) -> anyhow::Result<()> {
    let counts = match a.thread_counts.is_empty() {
        true => default_counts(std::thread::available_parallelism().map_or(1, |n| n.get())),
        false => a.thread_counts.clone(),
    };
    // times[i][r]: count i in round r
    let mut times = vec![Vec::with_capacity(a.rounds); counts.len()];
    for r in 0..a.rounds {
        let order: Vec<usize> = match r % 2 {
            0 => (0..counts.len()).collect(),
            _ => (0..counts.len()).rev().collect(),
        };
        for i in order {
            let t = time_once(&a, counts[i])?;
            if !a.json {
                eprintln!("round {}: {} threads, {t:.4} s", r + 1, counts[i]);
            }
            times[i].push(t);
        }
    }
    let rows = report_rows(&counts, times);
    let r = ScalingReport {
        version: 1,
        work: a.work.clone(),
        model: a.model.clone(),
        batch: a.batch,
        cpu: super::cpu_model(),
        rounds: a.rounds,
        rows,
    };
    if a.json {
        return crate::cli::print_json(&r);
    }
    outln!(
        "{} {}, batch {}, {} rounds on {}:",
        r.model,
        r.work,
        r.batch,
        r.rounds,
        r.cpu
    );
    outln!("  threads   median time   speed-up   efficiency");
    for row in &r.rows {
        outln!(
            "  {:>7}   {:>9.4} s   {:>7.2}×   {:>9.0}%",
            row.threads,
            row.time.median_s,
            row.speedup,
            100.0 * row.efficiency
        );
    }
    Ok(())
}

/// The rows from every count's per-round times (`times[i][r]`), against count 0.
fn report_rows(counts: &[usize], times: Vec<Vec<f64>>) -> Vec<ScalingRow> {
    let base = times[0].clone();
    counts
        .iter()
        .zip(times)
        .map(|(&threads, t)| {
            let mut ratios: Vec<f64> = base.iter().zip(&t).map(|(b, x)| b / x).collect();
            ratios.sort_by(|a, b| a.total_cmp(b));
            let speedup = crate::util::trial::quantile(&ratios, 0.5);
            ScalingRow {
                threads,
                time: Stats::new(t),
                speedup,
                efficiency: speedup * counts[0] as f64 / threads as f64,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_double_up_to_the_cores() {
        assert_eq!(default_counts(1), [1]);
        assert_eq!(default_counts(2), [1, 2]);
        assert_eq!(default_counts(6), [1, 2, 4, 6]);
        assert_eq!(default_counts(16), [1, 2, 4, 8, 16]);
    }

    /// Speed-up is the median of the per-round ratios to the baseline (not the ratio of
    /// medians), and efficiency divides it by the thread ratio.
    #[test]
    fn speedup_pairs_rounds() {
        let rows = report_rows(&[1, 2], vec![vec![2.0, 4.0, 3.0], vec![1.0, 1.0, 3.0]]);
        assert_eq!(rows[0].speedup, 1.0);
        assert_eq!(rows[0].efficiency, 1.0);
        // ratios 2, 4, 1: median 2, where the medians' ratio would be 3 / 1
        assert_eq!(rows[1].speedup, 2.0);
        assert_eq!(rows[1].efficiency, 1.0);
        assert_eq!(rows[1].time.median_s, 1.0);
    }
}
