//! Data set layouts and class matching through the `densenet` binary (issue 12, items 5
//! and 14): a folder's val/ classes are matched to train/'s by name, and `eval` on CIFAR
//! reads only the test batch.

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("densenet-layouts-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn png(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(8, 8, image::Rgb([10, 20, 30]))
        .save(path)
        .unwrap();
}

/// One image at each of `paths` under `root`.
fn pngs(root: &Path, paths: &[&str]) {
    paths.iter().for_each(|p| png(&root.join(p)));
}

/// Item 5: a val/ class that train/ lacks stops `train` with an error naming it (it used to
/// index out of bounds, or score val "bird" as train "fish").
#[test]
fn train_refuses_val_classes_the_training_split_lacks() {
    let root = tmp("valclass");
    pngs(
        &root,
        &[
            "train/cat/a.png",
            "train/fish/a.png",
            "val/bird/a.png",
            "val/cat/a.png",
        ],
    );
    let out = root.join("run");
    let o = densenet(&[
        "train",
        "--dataset",
        "folder",
        "--data",
        root.to_str().unwrap(),
        "--epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    assert!(e.contains("'bird' not in the training split"), "{e}");
    let _ = std::fs::remove_dir_all(&root);
}

/// Item 14: `eval` on CIFAR-10 needs only `test_batch.bin`.
#[test]
fn eval_on_cifar_reads_only_the_test_batch() {
    let dir = tmp("cifar-test-only");
    let mut batch = Vec::new();
    for i in 0..4u8 {
        batch.push(i % 10);
        batch.extend((0..3072).map(|j| (j as u8).wrapping_mul(i + 1)));
    }
    std::fs::write(dir.join("test_batch.bin"), &batch).unwrap();
    let w = reference_dir().join("cifar_bc_L40_k12.weights.safetensors");
    let o = densenet(&[
        "eval",
        "--weights",
        w.to_str().unwrap(),
        "--model",
        "densenet-bc-40-12",
        "--dataset",
        "cifar10",
        "--data",
        dir.to_str().unwrap(),
        "--json",
    ]);
    let v = json(&o);
    assert_eq!(v["images"], 4);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run on a folder given by a relative path evaluates from any directory (the data
/// directory is stored absolute), and with two classes `eval` shows no top-5 error (it
/// would be 0% by definition).
#[test]
fn eval_of_a_two_class_run_from_another_directory() {
    let root = tmp("relative");
    pngs(
        &root,
        &[
            "train/cat/a.png",
            "train/fish/a.png",
            "val/cat/a.png",
            "val/fish/a.png",
        ],
    );
    let o = densenet_in(
        &root,
        &[
            &["--threads", "1"][..],
            &TINY_RUN,
            &["--dataset", "folder", "--data", ".", "--out", "run"],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let elsewhere = root.join("train");
    let o = densenet_in(
        &elsewhere,
        &["eval", "--weights", "../run/best.safetensors"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("top-1 error"), "{text}");
    assert!(!text.contains("top-5"), "{text}");
    let _ = std::fs::remove_dir_all(&root);
}
