//! Issue 33, the output side: memory is checked against what the process may really use
//! before it is taken (a limit set with `setrlimit` in the child gives a one-line error,
//! never an abort, and leaves no run directory), and an output never destroys an input
//! or a special file; and the `compare` table tells its runs apart.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tmp(name: &str) -> PathBuf {
    tmp_in("outputs", name)
}

/// A fresh, empty temporary directory.
fn fresh_dir(name: &str) -> PathBuf {
    fresh(tmp(name))
}

/// Runs the binary with `args` in `cwd`, its address space limited to `bytes`
/// (`RLIMIT_AS`, what `ulimit -v` sets), as a user's shell or a batch system would.
fn densenet_limited(cwd: &Path, bytes: u64, args: &[&str]) -> Output {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(env!("CARGO_BIN_EXE_densenet"));
    c.current_dir(cwd).args(args);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(move || {
            let r = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.output().expect("run densenet")
}

/// The command failed with an error of its own (exit status 2, not a signal, not a
/// panic) whose last line is `error: …` and contains every needle; returns that line.
fn fails_cleanly(o: &Output, needles: &[&str]) -> String {
    let e = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "expected a clean error, got {}:\n{e}",
        o.status
    );
    assert!(!e.contains("panicked"), "panicked:\n{e}");
    let line = e.lines().last().unwrap_or_default().to_string();
    assert!(
        line.starts_with("error: "),
        "last line is not the error:\n{e}"
    );
    for n in needles {
        assert!(line.contains(n), "the error lacks {n:?}:\n{e}");
    }
    line
}

const GIB: u64 = 1 << 30;

/// Weights of a small DenseNet for 1-channel images of `size`×`size`, its model in the
/// metadata: a 27 KB file whose model may ask for gigabytes.
fn small_weights(name: &str, size: usize) -> PathBuf {
    let path = tmp(name);
    common::small_weights(&path, size);
    path
}

/// Item 4: a training run whose workspace does not fit the process's address-space limit
/// is refused before its run directory exists (it used to abort in the allocator and
/// leave a directory holding only config.json).
#[test]
fn train_under_a_memory_limit_fails_cleanly_and_leaves_no_run() {
    let cwd = fresh_dir("limited-train");
    // digits at 32×32, batch 1024: 3.5 GiB of activations, under a 2 GiB limit
    let args = [
        "train",
        "--model",
        "densenet-bc-40-12",
        "--upscale",
        "4",
        "--batch-size",
        "1024",
        "--epochs",
        "1",
        "--out",
        "run",
    ];
    let o = densenet_limited(&cwd, 2 * GIB, &args);
    fails_cleanly(
        &o,
        &[
            "densenet-bc-40-12",
            "batches of 1024",
            "RLIMIT_AS",
            "lower the batch size",
        ],
    );
    let left: Vec<_> = std::fs::read_dir(&cwd).unwrap().collect();
    assert!(left.is_empty(), "the failed run left {left:?}");
}

/// Item 4: what a run killed before its first checkpoint leaves is not offered for
/// resuming: an empty directory (config.json now comes with the first checkpoint) has
/// nothing to resume, and the config.json alone of older runs is called what it is.
#[test]
fn a_run_without_a_checkpoint_is_not_offered_for_resuming() {
    let cwd = fresh_dir("no-checkpoint");
    std::fs::create_dir(cwd.join("empty")).unwrap();
    let o = densenet_in(&cwd, &["train", "--resume", "empty"]);
    fails_cleanly(
        &o,
        &[
            "empty/config.json: not found, so no run to resume",
            "--out empty",
        ],
    );
    std::fs::create_dir(cwd.join("killed")).unwrap();
    std::fs::write(cwd.join("killed/config.json"), "{}").unwrap();
    let o = densenet_in(&cwd, &[&TINY_RUN[..], &["--out", "killed"]].concat());
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(e.contains("stopped before its first checkpoint"), "{e}");
    assert!(
        !e.contains("--resume"),
        "offers to resume what cannot be:\n{e}"
    );
}

/// Item 4: a 27 KB checkpoint whose model takes 4096×4096 inputs (within the bounds)
/// makes `predict` and `embed` refuse, naming the file, instead of aborting while
/// allocating 6 GB.
#[test]
fn a_checkpoint_for_huge_inputs_is_refused_before_allocating() {
    let w = small_weights("input-4096.safetensors", 4096);
    assert!(std::fs::metadata(&w).unwrap().len() < 100_000);
    let png = tmp("digit.png");
    image::GrayImage::new(8, 8).save(&png).unwrap();
    let npy = tmp("features.npy");
    let (w, png, npy) = (
        w.to_str().unwrap(),
        png.to_str().unwrap(),
        npy.to_str().unwrap(),
    );
    for args in [
        vec!["predict", "--weights", w, png],
        vec!["embed", "--weights", w, png, "--out", npy],
    ] {
        let o = densenet_limited(&std::env::temp_dir(), 2 * GIB, &args);
        fails_cleanly(
            &o,
            &["input-4096.safetensors", "4096×4096 inputs", "RLIMIT_AS"],
        );
    }
}

/// Item 4: `summary --plan` sizes are checked, not overflowed: a batch beyond the bound
/// of every command and a workspace beyond any machine are one-line errors (the first
/// panicked with "region size overflows").
#[test]
fn summary_plan_with_a_huge_batch_errors_cleanly() {
    let o = densenet(&[
        "summary",
        "densenet-bc-100-12",
        "--plan",
        "--batch-size",
        "18446744073709551615",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("not in 1..=65536") && !e.contains("panicked"),
        "{e}"
    );
    let o = densenet(&[
        "summary",
        "densenet264",
        "--input-size",
        "4096",
        "--plan",
        "--batch-size",
        "65536",
    ]);
    fails_cleanly(
        &o,
        &["densenet264", "batches of 65536", "more than 256 TiB"],
    );
}

/// `mkfifo PATH`.
fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {path:?}"
    );
}

fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// Item 5: `embed --out` naming its own `--weights` (directly or through a link) is
/// refused before any work, and the weights are unchanged (it used to replace them).
#[test]
fn embed_onto_its_own_weights_is_refused() {
    let dir = fresh_dir("embed-self");
    let w = small_weights("embed-self/w.safetensors", 8);
    let before = std::fs::read(&w).unwrap();
    let png = dir.join("digit.png");
    image::GrayImage::new(8, 8).save(&png).unwrap();
    let link = dir.join("link.safetensors");
    std::os::unix::fs::symlink("w.safetensors", &link).unwrap();
    let (w, png, link) = (
        w.to_str().unwrap(),
        png.to_str().unwrap(),
        link.to_str().unwrap(),
    );
    for (weights, out) in [(w, w), (link, w), (w, link)] {
        let o = densenet(&["embed", "--weights", weights, png, "--out", out]);
        fails_cleanly(&o, &["--out", "the --weights file", "choose another path"]);
        assert_eq!(
            std::fs::read(w).unwrap(),
            before,
            "embed changed its weights"
        );
    }
    // and an image given as input is no output either
    let o = densenet(&["embed", "--weights", w, png, "--out", png]);
    assert!(!o.status.success(), "embed wrote over its image");
}

/// Item 5: a symbolic link given as `--out` is written through (the link stays, its
/// target gets the file), and a FIFO is refused and left a FIFO (both used to be
/// replaced by a regular file).
#[test]
fn export_writes_through_links_and_refuses_special_files() {
    let dir = fresh_dir("export-out");
    let w = small_weights("export-out/w.safetensors", 8);
    let w = w.to_str().unwrap();
    let link = dir.join("model.onnx");
    std::os::unix::fs::symlink("models/real.onnx", &link).unwrap();
    std::fs::create_dir(dir.join("models")).unwrap();
    let o = densenet(&["export", "--weights", w, "--out", link.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let meta = std::fs::symlink_metadata(&link).unwrap();
    assert!(
        meta.file_type().is_symlink(),
        "--out's link was replaced by a file"
    );
    let target = std::fs::read(dir.join("models/real.onnx")).unwrap();
    assert!(
        target.len() > 1000,
        "the link's target holds {} bytes",
        target.len()
    );
    let fifo = dir.join("fifo.onnx");
    mkfifo(&fifo);
    let o = densenet(&["export", "--weights", w, "--out", fifo.to_str().unwrap()]);
    fails_cleanly(&o, &["fifo.onnx", "it is a FIFO, not a regular file"]);
    assert!(is_fifo(&fifo), "the FIFO was replaced");
    // a link to a FIFO is refused as the FIFO is
    let to_fifo = dir.join("to-fifo.onnx");
    std::os::unix::fs::symlink("fifo.onnx", &to_fifo).unwrap();
    let o = densenet(&["export", "--weights", w, "--out", to_fifo.to_str().unwrap()]);
    fails_cleanly(&o, &["which is a FIFO"]);
    assert!(is_fifo(&fifo));
}

/// Item 5: `train --force` replaces a run's files, but not the checkpoint it is told
/// to start from (`--init` inside the replaced run used to be deleted before it was read).
#[test]
fn train_force_spares_its_init_checkpoint() {
    let cwd = fresh_dir("force-init");
    let tiny = [&TINY_RUN[..], &["--out", "run"]].concat();
    let o = densenet_in(&cwd, &tiny);
    assert!(o.status.success(), "{}", stderr(&o));
    let best = cwd.join("run/best.safetensors");
    let before = std::fs::read(&best).unwrap();
    let o = densenet_in(
        &cwd,
        &[&tiny[..], &["--force", "--init", "run/best.safetensors"]].concat(),
    );
    fails_cleanly(&o, &["--init run/best.safetensors", "--force replaces"]);
    assert_eq!(std::fs::read(&best).unwrap(), before);
}

/// Item 9: `compare` rows of one model on one data set (two seeds) are told apart by
/// their run directories, in the table and in the figure's legend.
#[test]
fn compare_rows_name_their_runs() {
    let root = fresh_dir("compare-names");
    let (a, b) = (root.join("seed-0"), root.join("seed-1"));
    fake_run(&a, "densenet-bc-16-4", 1000, 5.0);
    fake_run(&b, "densenet-bc-16-4", 1000, 6.0);
    let svg = root.join("compare.svg");
    let o = densenet(&[
        "compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        svg.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert!(
        rows.len() == 2 && rows[0].starts_with("seed-0 ") && rows[1].starts_with("seed-1 "),
        "{table}"
    );
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.contains("seed-0") && svg.contains("seed-1"),
        "the legend names no run"
    );
}
