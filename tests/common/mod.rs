//! Helpers shared by the integration tests: where the reference files are, and
//! `check_*` functions with the tolerances of `reference/README.md` that return an error
//! (so negative controls can assert that a wrong result is caught).
#![allow(dead_code)]

use densenet::weights::{read_safetensors, TensorFile};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Writes `line` to the test process's stderr handle itself: the harness captures the
/// `eprintln!` of a passing test, and a SKIPPED line must reach CI's log.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Runs the `densenet` binary with `args`.
pub fn densenet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_densenet"))
        .args(args)
        .output()
        .expect("run densenet")
}

/// A command's standard error, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The reference files committed with the repository.
pub fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference")
}

/// `../shared/reference`, when this checkout has it (it holds the large densenet121 case).
pub fn shared_reference_dir() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference");
    d.is_dir().then_some(d)
}

/// Reads a committed reference file by case and kind (`weights`, `eval`, `train`).
pub fn reference(case: &str, kind: &str) -> TensorFile {
    let p = reference_dir().join(format!("{case}.{kind}.safetensors"));
    read_safetensors(&p).unwrap_or_else(|e| panic!("{e}"))
}

/// Elementwise `|a−b| ≤ atol + rtol·|b|` (logits, pooled features, running statistics).
pub fn check_close(name: &str, a: &[f32], b: &[f32], atol: f32, rtol: f32) -> Result<f32, String> {
    if a.len() != b.len() {
        return Err(format!("{name}: {} elements vs {}", a.len(), b.len()));
    }
    let mut worst = 0f32;
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs();
        worst = worst.max(d);
        // written so that a NaN fails too
        if d.is_nan() || d > atol + rtol * y.abs() {
            return Err(format!(
                "{name}: element {i}: {x} vs reference {y} (|diff| {d})"
            ));
        }
    }
    Ok(worst)
}

/// `max|a−b| ≤ tol·max(1, max|b|)` (intermediate activations).
pub fn check_act(name: &str, a: &[f32], b: &[f32], tol: f32) -> Result<f32, String> {
    if a.len() != b.len() {
        return Err(format!("{name}: {} elements vs {}", a.len(), b.len()));
    }
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    if worst <= tol * scale {
        Ok(worst)
    } else {
        Err(format!("{name}: max |diff| {worst} > {tol}·{scale}"))
    }
}

/// Relative L2 error `‖a−b‖/‖b‖` (gradients).
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

/// `‖a−b‖ ≤ tol·‖b‖`.
pub fn check_rel_l2(name: &str, a: &[f32], b: &[f32], tol: f64) -> Result<f64, String> {
    if a.len() != b.len() {
        return Err(format!("{name}: {} elements vs {}", a.len(), b.len()));
    }
    let r = rel_l2(a, b);
    if r <= tol {
        Ok(r)
    } else {
        Err(format!("{name}: relative L2 error {r:.3e} > {tol:.0e}"))
    }
}
