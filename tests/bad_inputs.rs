//! Issue 33, items 1, 2, 3 and 6: what a user feeds the tool never panics, hangs or is
//! silently guessed at. A malformed palette PNG, a truncated JPEG, a PNG whose zlib stream
//! fails its checksum, a NaN in a checkpoint or a `.pth`, a training run whose numbers
//! stop being finite, and image folders with symlink loops; each fails (or lists) as the
//! issue asks, in one line that names the file. The bounded mutation test is
//! `tests/mutation.rs`.

mod common;

use common::files::*;
use common::*;
use densenet::data::folder::{self, ImageFolder};
use densenet::data::Split;
use densenet::weights::{read_checkpoint, read_safetensors, write_safetensors};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tmp(name: &str) -> PathBuf {
    tmp_in("bad", name)
}

/// A fresh empty directory.
fn fresh_tmp(name: &str) -> PathBuf {
    fresh(tmp(name))
}

/// `e` is one line holding every needle.
fn one_line(e: &str, needles: &[&str]) {
    assert_eq!(e.trim_end().lines().count(), 1, "not one line: {e}");
    for n in needles {
        assert!(e.contains(n), "lacks {n:?}: {e}");
    }
}

/// Runs `densenet args` for at most `limit`, with stdout and stderr in files: the output,
/// or `None` (the process killed) when it did not end in time.
fn densenet_within(args: &[&str], limit: Duration) -> Option<(bool, String, String)> {
    // tests run side by side: each child its own files
    static CHILDREN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CHILDREN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (out, err) = (tmp(&format!("child{n}.out")), tmp(&format!("child{n}.err")));
    let mut child = Command::new(env!("CARGO_BIN_EXE_densenet"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
            return Some((status.success(), read(&out), read(&err)));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The committed small ResNet's weights, and its configuration for `--model`.
fn small_weights() -> (String, String) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/preresnet_basic_w8.weights.safetensors");
    let config = read_safetensors(&p).unwrap().metadata["config"].clone();
    (p.to_str().unwrap().to_string(), config)
}

fn write_png(path: &Path, w: u32, h: u32) {
    std::fs::write(path, encoded(w, h, image::ImageFormat::Png)).unwrap();
}

// ---------------------------------------------------------------------------------------
// item 1: malformed images never panic

/// A palette PNG whose PLTE is not a whole number of entries panicked inside the `png`
/// crate; now it is an error naming the file, and a valid palette PNG still decodes.
#[test]
fn palette_png_with_a_broken_plte_is_an_error_naming_the_file() {
    let good = palette_png(5, 3, &PALETTE);
    let img = folder::decode_bytes(Path::new("good.png"), &good).unwrap();
    assert_eq!((img.channels, img.height, img.width), (3, 3, 5));
    // pixel (1, 0) is entry 1 (green), (3, 1) entry 0 (red); CHW
    assert_eq!(
        [img.data[1], img.data[15 + 1], img.data[30 + 1]],
        [0, 255, 0]
    );
    assert_eq!(
        [img.data[5 + 3], img.data[20 + 3], img.data[35 + 3]],
        [255, 0, 0]
    );

    for len in [4, 7, 11] {
        let bad = palette_png(5, 3, &PALETTE[..len]);
        let path = tmp(&format!("plte{len}.png"));
        std::fs::write(&path, &bad).unwrap();
        let e = std::panic::catch_unwind(|| folder::decode_file(&path))
            .unwrap_or_else(|_| panic!("a {len}-byte PLTE panicked the decoder"))
            .unwrap_err()
            .to_string();
        one_line(&e, &[path.to_str().unwrap()]);
    }
}

/// `predict`, `embed` and folder training on a malformed palette PNG: exit status 2 and
/// one line naming the file, no panic message, no backtrace.
#[test]
fn palette_png_fails_predict_embed_and_training_in_one_line() {
    let (w, model) = small_weights();
    let bad = tmp("broken-palette.png");
    std::fs::write(&bad, palette_png(5, 3, &PALETTE[..7])).unwrap();
    let b = bad.to_str().unwrap();
    let never = tmp("never.npy");
    for args in [
        vec!["predict", "--weights", &w, "--model", &model, b],
        vec!["embed", "--weights", &w, "--model", &model, b, "--out"],
    ] {
        let mut args = args.clone();
        if args[0] == "embed" {
            args.push(never.to_str().unwrap());
        }
        let o = densenet(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        one_line(&stderr(&o), &[b]);
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
    assert!(!never.exists());

    // a training folder holding it: the run stops naming the file (the loader's thread)
    let root = fresh_tmp("palette-folder");
    for class in ["a", "b"] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..3 {
            write_png(&root.join(format!("{class}/{i}.png")), 12, 10);
        }
    }
    let broken = root.join("a/0.png");
    std::fs::write(&broken, palette_png(5, 3, &PALETTE[..7])).unwrap();
    let out = tmp("palette-run");
    let _ = std::fs::remove_dir_all(&out);
    let (ok, _, e) = densenet_within(
        &[
            &TINY_RUN[..],
            &["--dataset", "folder", "--data", root.to_str().unwrap()],
            &["--batch-size", "4", "--out", out.to_str().unwrap()],
        ]
        .concat(),
        Duration::from_secs(120),
    )
    .expect("train ended");
    assert!(!ok);
    assert!(!e.contains("panicked"), "{e}");
    let last = e.trim_end().lines().last().unwrap_or_default();
    one_line(last, &["error:", broken.to_str().unwrap()]);
    assert!(
        !out.exists(),
        "a run that failed in its first epoch leaves nothing"
    );
}

// ---------------------------------------------------------------------------------------
// item 2: damaged images are refused, not guessed

/// A JPEG cut in half decoded with its missing part filled in (PIL refuses it): now it is
/// refused as truncated; a JPEG with bytes after its end still decodes.
#[test]
fn truncated_jpeg_is_refused() {
    let jpg = encoded(64, 48, image::ImageFormat::Jpeg);
    let whole = folder::decode_bytes(Path::new("whole.jpg"), &jpg).unwrap();
    assert_eq!((whole.height, whole.width), (48, 64));
    for cut in [jpg.len() / 2, jpg.len() - 2, jpg.len() - 100] {
        let e = folder::decode_bytes(Path::new("half.jpg"), &jpg[..cut])
            .map(|_| ())
            .unwrap_err()
            .to_string();
        one_line(&e, &["half.jpg", "truncated"]);
    }
    let mut trailing = jpg.clone();
    trailing.extend(b"\0\0trailing bytes");
    folder::decode_bytes(Path::new("trailing.jpg"), &trailing).unwrap();
}

/// A PNG whose zlib stream fails its Adler-32 checksum decoded (the png crate skips the
/// check by default): now it is refused, and so is a corrupt deflate byte whose chunk CRC
/// was made right.
#[test]
fn png_with_a_bad_zlib_checksum_is_refused() {
    let png = encoded(40, 30, image::ImageFormat::Png);
    folder::decode_bytes(Path::new("good.png"), &png).unwrap();
    let bad = png_with_bad_adler32(&png);
    let e = folder::decode_bytes(Path::new("adler.png"), &bad)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    one_line(&e, &["adler.png", "checksum"]);

    // a byte in the middle of the compressed pixels, the chunk's CRC fixed up
    let mut chunks = png_chunks(&png);
    let idat = chunks.iter().position(|(k, _)| k == b"IDAT").unwrap();
    let mid = chunks[idat].1.len() / 2;
    chunks[idat].1[mid] ^= 0x10;
    let e = folder::decode_bytes(Path::new("flipped.png"), &png_of(&chunks))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    one_line(&e, &["flipped.png"]);
}

// ---------------------------------------------------------------------------------------
// item 3: non-finite numbers are refused

/// One NaN (or infinity) in a safetensors checkpoint is refused when it is read, naming
/// the file, the tensor and the element; `predict` fails in one line.
#[test]
fn non_finite_safetensors_tensor_is_named() {
    let (w, _) = small_weights();
    let file = read_safetensors(Path::new(&w)).unwrap();
    let k = file
        .tensors
        .iter()
        .position(|t| t.dtype == "float32" && t.tensor.data.len() > 7)
        .unwrap();
    let name = file.tensors[k].name.clone();
    for (value, word) in [(f32::NAN, "NaN"), (f32::NEG_INFINITY, "-inf")] {
        let tensors: Vec<(String, densenet::util::tensor::Tensor)> = file
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut tensor = t.tensor.clone();
                if i == k {
                    tensor.data[7] = value;
                }
                (t.name.clone(), tensor)
            })
            .collect();
        let p = tmp(&format!("bad-{word}.safetensors"));
        write_safetensors(&p, &tensors, &[], file.metadata.clone()).unwrap();
        let e = read_checkpoint(&p).map(|_| ()).unwrap_err().to_string();
        one_line(&e, &[p.to_str().unwrap(), &name, "element 7", word]);
        let o = densenet(&["predict", "--weights", p.to_str().unwrap(), "/no/image.png"]);
        assert_eq!(o.status.code(), Some(2));
        one_line(&stderr(&o), &[p.to_str().unwrap(), &name, word]);
    }
}

/// One NaN in a `.pth` storage is refused, naming the file, the tensor and the element.
#[test]
fn non_finite_pth_tensor_is_named() {
    let p = tmp("nan.pth");
    std::fs::write(&p, pth_with(f32::NAN, 5)).unwrap();
    let e = read_checkpoint(&p).map(|_| ()).unwrap_err().to_string();
    one_line(
        &e,
        &[
            p.to_str().unwrap(),
            "features.conv0.weight",
            "element 5",
            "NaN",
        ],
    );
    // the fixture itself is fine
    std::fs::write(&p, fixture_bytes("legacy_tiny_densenet.pth")).unwrap();
    read_checkpoint(&p).unwrap();
}

// ---------------------------------------------------------------------------------------
// item 6: image folders are listed once

/// Two classes of one image each, and a link from class a to the folder: 82 images
/// were listed (b's image under class a, 40 levels deep); now 2, each under its class.
#[test]
fn a_link_to_the_parent_lists_every_image_once() {
    let root = fresh_tmp("link-up");
    for class in ["a", "b"] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        write_png(&root.join(format!("{class}/x.png")), 4, 4);
    }
    std::os::unix::fs::symlink("..", root.join("a/up")).unwrap();
    let f = ImageFolder::open(&root).unwrap();
    assert_eq!(f.paths, [root.join("a/x.png"), root.join("b/x.png")]);
    assert_eq!(f.labels, [0, 1]);
    let train = folder::open_split(&root, Split::Train).unwrap();
    assert_eq!(train.len(), 2);
    assert_eq!(folder::image_files(&root.join("a")).unwrap().len(), 2);

    // a link elsewhere is followed, once: a directory outside the folder, linked twice
    let outside = fresh_tmp("link-outside");
    write_png(&outside.join("o.png"), 4, 4);
    std::os::unix::fs::symlink(&outside, root.join("b/more")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("b/again")).unwrap();
    // and a link from a to b's directory lists nothing more: b's images stay b's
    std::os::unix::fs::symlink("../b", root.join("a/to-b")).unwrap();
    let f = ImageFolder::open(&root).unwrap();
    let names: Vec<String> = f
        .paths
        .iter()
        .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["a/x.png", "b/again/o.png", "b/x.png"]);
    assert_eq!(f.labels, [0, 1, 1]);
}

/// Two links to the parent made the listing never end: `train` and `embed` hung. Now
/// both finish, on each image once.
#[test]
fn symlink_loops_do_not_hang_train_or_embed() {
    let root = fresh_tmp("loops");
    for class in ["a", "b"] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..2 {
            write_png(&root.join(format!("{class}/{i}.png")), 12, 10);
        }
    }
    std::os::unix::fs::symlink("..", root.join("a/up")).unwrap();
    std::os::unix::fs::symlink("..", root.join("a/up2")).unwrap();
    std::os::unix::fs::symlink(".", root.join("b/here")).unwrap();
    let r = root.to_str().unwrap();
    let limit = Duration::from_secs(60);

    let (w, model) = small_weights();
    let npy = tmp("loops.npy");
    let n = npy.to_str().unwrap();
    let (ok, out, e) = densenet_within(
        &[
            "embed",
            "--weights",
            &w,
            "--model",
            &model,
            r,
            "--out",
            n,
            "--json",
        ],
        limit,
    )
    .expect("embed on a folder with symlink loops did not end within 60 s");
    assert!(ok, "{e}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["images"], 4, "{out}");

    let run = tmp("loops-run");
    let _ = std::fs::remove_dir_all(&run);
    let (ok, _, e) = densenet_within(
        &[
            &TINY_RUN[..],
            &["--dataset", "folder", "--data", r],
            &["--batch-size", "2", "--out", run.to_str().unwrap()],
        ]
        .concat(),
        limit,
    )
    .expect("train on a folder with symlink loops did not end within 60 s");
    assert!(ok, "{e}");
    // one image of each class held out, the other trained on: 2 images in the epoch
    let steps = std::fs::read_to_string(run.join("steps.csv")).unwrap();
    let header: Vec<&str> = steps.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "images").unwrap();
    let images: usize = steps
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(col).unwrap().parse::<usize>().unwrap())
        .sum();
    assert_eq!(images, 2, "{steps}");
}

/// DenseNet-BC L=16 k=4 trains an epoch on the digits at a sane rate, then its rate is
/// raised 1000× (in the checkpoint's own configuration, so that the run resumes with it):
/// in the second epoch the weights turned NaN while the loss, through batch norm and
/// ReLU, stayed finite, and the run ended "successfully" with NaN checkpoints. Now it
/// stops with an error at the first gradient that is not finite, and the first epoch's
/// checkpoint stays as it was.
#[test]
fn training_that_turns_non_finite_stops_and_keeps_the_last_good_checkpoint() {
    use densenet::train::{self, Quiet, RunOptions, TrainConfig};
    let mut cfg: TrainConfig = serde_json::from_value(serde_json::json!({
        "model": densenet::ModelConfig::from_name("densenet-bc-16-4").unwrap(),
        "dataset": "digits", "epochs": 3, "batch_size": 64,
        "optimizer": densenet::optim::SgdConfig::default(),
        "schedule": {"kind": "constant"}, "augment": false, "upscale": 1,
        "val_split": 0.0, "seed": 0, "memory": "efficient", "svhn_extra": false
    }))
    .unwrap();
    let dir = tmp("non-finite-run");
    let _ = std::fs::remove_dir_all(&dir);
    let first = RunOptions {
        stop_after: Some(1),
        ..RunOptions::new(&dir)
    };
    train::train(&cfg, &first, &mut Quiet).unwrap();
    let last = dir.join("last.safetensors");
    let mut file = read_safetensors(&last).unwrap();
    // the run's configuration as resolved (the model fitted to the data)
    cfg = serde_json::from_str(&file.metadata["train_config"]).unwrap();
    cfg.optimizer.lr *= 1000.0;
    file.metadata
        .insert("train_config".into(), serde_json::to_string(&cfg).unwrap());
    let tensors: Vec<_> = file
        .tensors
        .into_iter()
        .map(|t| (t.name, t.tensor))
        .collect();
    write_safetensors(&last, &tensors, &[], file.metadata).unwrap();
    let good = std::fs::read(&last).unwrap();

    let resume = RunOptions {
        resume: true,
        ..RunOptions::new(&dir)
    };
    let err = train::train(&cfg, &resume, &mut Quiet)
        .map(|s| s.test_accuracy)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("at epoch 2") && err.contains("not a finite number"),
        "{err}"
    );
    assert!(
        err.contains("The last good checkpoint, after epoch 1"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&last).unwrap(),
        good,
        "the checkpoint is kept"
    );
    let metrics = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(
        metrics.lines().count(),
        2,
        "a header and epoch 1: {metrics}"
    );
}

/// The same through the command line with `--lr 100`: the weights turned NaN in the first
/// epochs, and `train` exited 0. Now it exits 2, says which number stopped being finite,
/// and leaves no checkpoint that is not finite.
#[test]
fn train_with_an_absurd_rate_exits_nonzero() {
    let out = tmp("lr100");
    let _ = std::fs::remove_dir_all(&out);
    let o = densenet(&[
        "train",
        "--lr",
        "100",
        "--epochs",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("not a finite number") && e.contains("lower --lr"),
        "{e}"
    );
    for f in ["last.safetensors", "best.safetensors"] {
        if out.join(f).exists() {
            read_checkpoint(&out.join(f)).unwrap();
        }
    }
}
