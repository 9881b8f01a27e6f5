//! ONNX export checked by another runtime: each exported model is loaded and run by tract
//! (`tract-onnx`, an independent Rust ONNX implementation), and its logits must equal our
//! `forward_eval`'s, and PyTorch's where the reference files have them, within the parity
//! tolerances of `tests/reference/README.md` (|diff| ≤ 1e-4 + 1e-4·|reference|). Cases: the
//! CIFAR DenseNet-BC-40-12 and torchvision densenet121 of the reference files, both
//! pre-activation ResNet fixtures, a dynamic batch run at two sizes, the metadata as the
//! command line writes it, and the command's one-line errors.

mod common;

use common::*;
use densenet::model::{AnyModel, ModelConfig};
use densenet::onnx::{self, Batch, ExportOptions};
use densenet::weights::{read_safetensors, write_safetensors, TensorFile};
use densenet::MemoryMode;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use tract_onnx::prelude::*;

/// The model of a reference or fixture weights file (its `config` metadata), loaded.
fn model(weights: &TensorFile) -> AnyModel {
    let cfg = ModelConfig::from_name(&weights.metadata["config"]).unwrap();
    let mut net = AnyModel::new(&cfg, 0);
    net.load_tensors(&weights.tensors, "weights").unwrap();
    net
}

/// Our evaluation logits.
fn ours(net: &mut AnyModel, input: &[f32], n: usize) -> Vec<f32> {
    let mut ws = net.workspace(n, MemoryMode::Efficient, false);
    net.forward_eval(&mut ws, input, n, None)
}

/// A model read and optimised by tract, as the file declares it (no shapes overridden).
fn tract_model(bytes: &[u8]) -> TypedRunnableModel<TypedModel> {
    tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .expect("tract reads the exported model")
        .into_optimized()
        .expect("tract optimises it")
        .into_runnable()
        .expect("tract plans it")
}

/// tract's logits for `n` NCHW images of `c`×`s`×`s`.
fn run_tract(
    model: &TypedRunnableModel<TypedModel>,
    input: &[f32],
    n: usize,
    c: usize,
    s: usize,
) -> Vec<f32> {
    let x = tract_ndarray::Array4::from_shape_vec((n, c, s, s), input.to_vec()).unwrap();
    let out = model
        .run(tvec!(Tensor::from(x).into()))
        .expect("tract runs it");
    let y = out[0].to_array_view::<f32>().unwrap();
    assert_eq!(y.shape()[0], n, "batch of tract's output");
    y.iter().copied().collect()
}

fn export(net: &AnyModel, batch: Batch) -> Vec<u8> {
    let opts = ExportOptions {
        batch,
        ..Default::default()
    };
    onnx::export(&**net, &opts).unwrap().bytes
}

/// Exports `net`, runs it in tract on the input of the reference file `r`, and checks
/// the logits against ours and against PyTorch's in `r`.
fn check_case(name: &str, mut net: AnyModel, r: &TensorFile) {
    let input = &r.get("input").unwrap().tensor;
    let torch = &r.get("logits").unwrap().tensor.data;
    let (n, c, s) = (input.shape[0], input.shape[1], input.shape[2]);
    let bytes = export(&net, Batch::Fixed(n));
    let theirs = run_tract(&tract_model(&bytes), &input.data, n, c, s);
    let mine = ours(&mut net, &input.data, n);
    let d = check_close(name, &theirs, &mine, 1e-4, 1e-4).unwrap();
    println!("{name}: tract against ours, logits max |diff| {d:.2e}");
    let d = check_close(name, &theirs, torch, 1e-4, 1e-4).unwrap();
    println!("{name}: tract against PyTorch, logits max |diff| {d:.2e}");
}

#[test]
fn densenet_bc_40_12_runs_in_tract_as_in_pytorch() {
    let w = reference("cifar_bc_L40_k12", "weights");
    let r = reference("cifar_bc_L40_k12", "eval");
    check_case("densenet-bc-40-12", model(&w), &r);
}

#[test]
fn plain_densenet_40_12_runs_in_tract_as_in_pytorch() {
    // no bottleneck: each layer is BN-ReLU-Conv3×3
    let w = reference("cifar_densenet_L40_k12", "weights");
    let r = reference("cifar_densenet_L40_k12", "eval");
    check_case("densenet-40-12", model(&w), &r);
}

/// torchvision densenet121 at 224×224 (2 images), from `../shared/reference`.
#[test]
fn densenet121_runs_in_tract_as_in_pytorch() {
    let Some(dir) = shared_reference_dir() else {
        say("SKIPPED densenet121_runs_in_tract_as_in_pytorch: ../shared/reference is not present");
        return;
    };
    let w = read_safetensors(&dir.join("torchvision_densenet121.weights.safetensors")).unwrap();
    let r = read_safetensors(&dir.join("torchvision_densenet121.eval.safetensors")).unwrap();
    let mut net = AnyModel::new(&ModelConfig::from_name("densenet121").unwrap(), 0);
    net.load_tensors(&w.tensors, "densenet121").unwrap();
    check_case("densenet121", net, &r);
}

#[test]
fn preact_resnets_run_in_tract_as_in_pytorch() {
    for case in ["preresnet_basic_w8", "preresnet_bottleneck_w8"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let w = read_safetensors(&dir.join(format!("{case}.weights.safetensors"))).unwrap();
        let r = read_safetensors(&dir.join(format!("{case}.eval.safetensors"))).unwrap();
        check_case(case, model(&w), &r);
    }
}

#[test]
fn dynamic_batch_runs_at_two_sizes() {
    let w = reference("cifar_bc_L40_k12", "weights");
    let r = reference("cifar_bc_L40_k12", "eval");
    let input = &r.get("input").unwrap().tensor;
    let mut net = model(&w);
    let tract = tract_model(&export(&net, Batch::Dynamic));
    let image = 3 * 32 * 32;
    for n in [1, 3] {
        let x = &input.data[..n * image];
        let theirs = run_tract(&tract, x, n, 3, 32);
        let mine = ours(&mut net, x, n);
        let d = check_close(&format!("batch {n}"), &theirs, &mine, 1e-4, 1e-4).unwrap();
        println!("dynamic batch {n}: max |diff| {d:.2e}");
    }
}

/// The comparison above is not vacuous: a model with other weights (a different
/// initialisation seed) is caught.
#[test]
fn control_other_weights_are_caught() {
    let cfg = ModelConfig::from_name("densenet-bc-40-12").unwrap();
    let exported = AnyModel::new(&cfg, 1);
    let mut other = AnyModel::new(&cfg, 2);
    let r = reference("cifar_bc_L40_k12", "eval");
    let input = &r.get("input").unwrap().tensor;
    let n = input.shape[0];
    let theirs = run_tract(
        &tract_model(&export(&exported, Batch::Fixed(n))),
        &input.data,
        n,
        3,
        32,
    );
    let mine = ours(&mut other, &input.data, n);
    assert!(check_close("logits", &theirs, &mine, 1e-4, 1e-4).is_err());
}

// ---------------------------------------------------------------------------------------
// The command line: the file, its metadata, its errors.

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("densenet-onnx-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The `metadata_props` of an ONNX file as tract's own protobuf schema reads them.
fn metadata(file: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(file).unwrap();
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .unwrap();
    proto
        .metadata_props
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect()
}

/// The one error line of a failed command (exit status 2, "error: …", nothing more).
fn one_line_error(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    err
}

#[test]
fn cli_writes_the_file_its_json_describes() {
    let out = tmp("bc.onnx");
    let weights = reference_dir().join("cifar_bc_L40_k12.weights.safetensors");
    let o = densenet(&[
        "export",
        "--model",
        "densenet-bc-40-12",
        "--weights",
        path(&weights),
        "--out",
        path(&out),
        "--batch",
        "dynamic",
        "--opset",
        "13",
        "--json",
    ]);
    let report = json(&o);
    assert_eq!(report["bytes"], std::fs::metadata(&out).unwrap().len());
    assert_eq!(report["opset"], 13);
    assert_eq!(report["ir_version"], 7);
    assert_eq!(report["batch"], "dynamic");
    // the state dict (119 parameters, 78 running statistics), as the reference README says
    assert_eq!(report["initializers"], 197);
    let meta = metadata(&out);
    assert_eq!(meta["model"], "densenet-bc-40-12");
    assert_eq!(meta["family"], "densenet");
    assert_eq!(meta["num_classes"], "10");
    let cfg: ModelConfig = serde_json::from_str(&meta["config"]).unwrap();
    assert_eq!(cfg, ModelConfig::from_name("densenet-bc-40-12").unwrap());
    // the reference weights record no preprocessing: none is invented
    assert!(!meta.contains_key("preprocess"), "{meta:?}");
    // and the file runs
    let tract = tract_model(&std::fs::read(&out).unwrap());
    let r = reference("cifar_bc_L40_k12", "eval");
    let input = &r.get("input").unwrap().tensor;
    let logits = run_tract(&tract, &input.data[..2 * 3 * 32 * 32], 2, 3, 32);
    check_close(
        "logits",
        &logits,
        &r.get("logits").unwrap().tensor.data[..20],
        1e-4,
        1e-4,
    )
    .unwrap();
}

/// A two-block ImageNet-stem DenseNet, small enough to write in a test (64×64 inputs).
const TINY_IMAGENET: &str = r#"{"family":"imagenet_densenet","growth_rate":4,
    "block_config":[1,1],"init_features":8,"bn_size":2,"num_classes":3}"#;

#[test]
fn cli_records_the_preprocessing() {
    let mut cfg = ModelConfig::from_name(TINY_IMAGENET).unwrap();
    cfg.set_io(3, 3, 64);
    cfg.validate().unwrap();
    let net = AnyModel::new(&cfg, 0);
    let config = serde_json::to_string(&cfg).unwrap();

    // a state dict without a record, ImageNet stem: torchvision's preprocessing
    let plain = tmp("tiny.safetensors");
    let meta = HashMap::from([("config".to_string(), config.clone())]);
    write_safetensors(&plain, &net.state_dict(), &[], meta).unwrap();
    let out = tmp("tiny.onnx");
    let o = densenet(&["export", "--weights", path(&plain), "--out", path(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p: serde_json::Value = serde_json::from_str(&metadata(&out)["preprocess"]).unwrap();
    assert_eq!(p["source"], "torchvision-imagenet");
    assert_eq!(p["mean"][0].as_f64().unwrap() as f32, 0.485);
    assert_eq!(p["std"][2].as_f64().unwrap() as f32, 0.225);
    assert_eq!(
        (p["crop"].as_u64(), p["resize"].as_u64()),
        (Some(64), Some(73))
    );

    // a training checkpoint: its own record, class names included
    let ckpt = tmp("tiny-ckpt.safetensors");
    let pre = r#"{"max_value":255.0,"mean":[0.5,0.4,0.3],"std":[0.2,0.2,0.2],"upscale":2,
        "classes":["cat","dog","fox"]}"#;
    let meta = HashMap::from([
        ("config".to_string(), config),
        ("preprocess".to_string(), pre.to_string()),
    ]);
    write_safetensors(&ckpt, &net.state_dict(), &[], meta).unwrap();
    let out = tmp("tiny-ckpt.onnx");
    let o = densenet(&["export", "--weights", path(&ckpt), "--out", path(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta = metadata(&out);
    let p: serde_json::Value = serde_json::from_str(&meta["preprocess"]).unwrap();
    assert_eq!(p["source"], "checkpoint");
    assert_eq!(p["mean"][1].as_f64().unwrap() as f32, 0.4);
    // what `predict` does to an image file: resized to the input, never upscaled by the
    // stored factor (issue 33, item 7)
    assert!(p.get("upscale").is_none(), "{p}");
    assert!(p["resize"].is_null() && p["crop"].is_null());
    assert_eq!(
        (p["input_size"].as_u64(), p["max_value"].as_f64()),
        (Some(64), Some(255.0))
    );
    assert_eq!(meta["class_names"], r#"["cat","dog","fox"]"#);
}

#[test]
fn cli_errors_are_one_line() {
    let weights = reference_dir().join("cifar_bc_L40_k12.weights.safetensors");
    let out = tmp("never.onnx");
    let run = |extra: &[&str]| {
        let mut args = vec!["export", "--out", path(&out)];
        args.extend_from_slice(extra);
        densenet(&args)
    };

    // an opset outside 13..=21
    for opset in ["12", "22"] {
        let o = run(&[
            "--model",
            "densenet-bc-40-12",
            "--weights",
            path(&weights),
            "--opset",
            opset,
        ]);
        let e = one_line_error(&o);
        assert!(
            e.contains(&format!("opset {opset} is not supported")),
            "{e}"
        );
        assert!(e.contains("13 to 21"), "{e}");
    }

    // a pre-activation ResNet's weights given to a DenseNet, and the other way round
    let resnet = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/preresnet_basic_w8.weights.safetensors");
    let o = run(&["--model", "densenet-bc-40-12", "--weights", path(&resnet)]);
    let e = one_line_error(&o);
    assert!(e.contains("holds pre-activation ResNet weights"), "{e}");
    assert!(e.contains("--model densenet-bc-40-12 is a DenseNet"), "{e}");
    let o = run(&["--model", "preresnet-20", "--weights", path(&weights)]);
    let e = one_line_error(&o);
    assert!(e.contains("holds DenseNet weights"), "{e}");

    // a file that is not weights at all
    let junk = tmp("junk.safetensors");
    std::fs::write(&junk, b"these are not weights").unwrap();
    let o = run(&["--model", "densenet-bc-40-12", "--weights", path(&junk)]);
    let e = one_line_error(&o);
    assert!(e.contains("junk.safetensors"), "{e}");

    // a batch that is neither a number nor `dynamic` (clap's error, with its usage hint)
    let o = run(&[
        "--model",
        "densenet-bc-40-12",
        "--weights",
        path(&weights),
        "--batch",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("or `dynamic`"));
    assert!(!out.exists(), "a failed export wrote {}", out.display());
}

/// Writes `n` IDX images of 28×28 (a smooth pattern per class, plus noise) and their
/// labels as MNIST's `{prefix}-images-idx3-ubyte` and `{prefix}-labels-idx1-ubyte`.
fn write_mnist(dir: &Path, prefix: &str, n: usize) {
    let mut images = vec![0, 0, 8, 3, 0, 0, 0, n as u8, 0, 0, 0, 28, 0, 0, 0, 28];
    let mut labels = vec![0, 0, 8, 1, 0, 0, 0, n as u8];
    for i in 0..n {
        let class = i % 10;
        labels.push(class as u8);
        images.extend((0..28 * 28).map(|p| {
            let (y, x) = (p / 28, p % 28);
            ((x * (class + 1) + y * 3 + i * 7) % 256) as u8
        }));
    }
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
}

/// An RGB image of `w`×`h` whose colours vary with `seed`: gradients, not noise, so that
/// resizing matters but does not decide everything.
fn pattern(w: u32, h: u32, seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let v = |k: u32| ((x * (seed + k) + y * (3 + k * seed) + seed * 37 * k) % 256) as u8;
        image::Rgb([v(1), v(2), v(3)])
    })
}

/// An image file prepared from the ONNX metadata's `preprocess` alone (its documented
/// steps: RGB, grey as the mean of R, G and B, the resize, the centre crop, then
/// `(pixel / max_value − mean) / std`), `[C, S, S]`.
fn prepare_from_metadata(p: &serde_json::Value, file: &Path) -> Vec<f32> {
    use image::imageops::FilterType;
    assert_eq!(p["resample"], "bilinear", "{p}");
    let rgb = image::open(file).unwrap().to_rgb8();
    let grey = p["channels"] == "grey";
    let img = if grey {
        image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(
            rgb.width(),
            rgb.height(),
            |x, y| {
                let [r, g, b] = rgb.get_pixel(x, y).0;
                image::Luma([((r as u32 + g as u32 + b as u32) / 3) as u8])
            },
        ))
    } else {
        image::DynamicImage::ImageRgb8(rgb)
    };
    let s = p["input_size"].as_u64().unwrap() as u32;
    let img = match (p["resize"].as_u64(), p["crop"].as_u64()) {
        (Some(r), Some(c)) => {
            let (r, c, w, h) = (r as f64, c as u32, img.width() as f64, img.height() as f64);
            let (nw, nh) = if h <= w {
                ((r * w / h) as u32, r as u32)
            } else {
                (r as u32, (r * h / w) as u32)
            };
            let resized = img.resize_exact(nw, nh, FilterType::Triangle);
            resized.crop_imm((nw - c) / 2, (nh - c) / 2, c, c)
        }
        _ => img.resize_exact(s, s, FilterType::Triangle),
    };
    let (channels, raw) = if grey {
        (1, img.to_luma8().into_raw())
    } else {
        (3, img.to_rgb8().into_raw())
    };
    let f = |k: &str, c: usize| {
        let v = p[k].as_array().unwrap();
        v[if v.len() == 1 { 0 } else { c }].as_f64().unwrap() as f32
    };
    let max = p["max_value"].as_f64().unwrap() as f32;
    let plane = (s * s) as usize;
    let mut x = vec![0f32; channels * plane];
    for (i, &v) in raw.iter().enumerate() {
        let (pixel, c) = (i / channels, i % channels);
        x[c * plane + pixel] = (v as f32 / max - f("mean", c)) / f("std", c);
    }
    x
}

/// Probabilities of `logits`.
fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::MIN, |m, &v| m.max(v));
    let exp: Vec<f64> = logits.iter().map(|&v| ((v - max) as f64).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

/// Issue 33, item 7: the preprocessing an exported model's metadata describes is what
/// `predict` does to an image file, for a digits run, a folder run and an MNIST run:
/// tract on inputs prepared from the metadata alone gives `predict`'s top-1 class and
/// every class's probability. (A digits model's metadata said `max_value` 16 and no resize, and
/// `predict` divides by 255 and resizes: following it, 20% of predictions agreed.)
#[test]
fn exported_preprocessing_reproduces_predict() {
    let root = tmp("prep-vs-predict");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    // the images predicted: grey and RGB, square and not, smaller and larger than inputs
    let mut images = Vec::new();
    for (i, (w, h, grey)) in [
        (8, 8, true),
        (28, 28, true),
        (40, 30, false),
        (30, 45, false),
    ]
    .into_iter()
    .enumerate()
    {
        let file = root.join(format!("image{i}.png"));
        let img = pattern(w, h, i as u32 + 1);
        if grey {
            image::DynamicImage::ImageRgb8(img)
                .to_luma8()
                .save(&file)
                .unwrap();
        } else {
            img.save(&file).unwrap();
        }
        images.push(file);
    }
    // an MNIST set and an image folder (held-out images in val/)
    let mnist = root.join("mnist");
    std::fs::create_dir_all(&mnist).unwrap();
    write_mnist(&mnist, "train", 40);
    write_mnist(&mnist, "t10k", 10);
    let folder = root.join("folder");
    for (split, n) in [("train", 2), ("val", 1)] {
        for (c, class) in ["cat", "dog"].iter().enumerate() {
            let dir = folder.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let seed = 10 + 5 * c as u32 + i;
                pattern(48 + 4 * i, 36, seed)
                    .save(dir.join(format!("{i}.png")))
                    .unwrap();
            }
        }
    }
    let runs: [(&str, Vec<&str>); 3] = [
        ("digits", vec![]),
        ("mnist", vec!["--dataset", "mnist", "--data", path(&mnist)]),
        (
            "folder",
            vec!["--dataset", "folder", "--data", path(&folder)],
        ),
    ];
    for (name, data) in runs {
        let run = root.join(format!("run-{name}"));
        let mut args = vec!["train", "--model", "densenet-bc-16-4", "--epochs", "2"];
        args.extend(&data);
        args.extend(["--out", path(&run)]);
        let o = densenet(&args);
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let weights = run.join("best.safetensors");
        let onnx = root.join(format!("{name}.onnx"));
        let o = densenet(&["export", "--weights", path(&weights), "--out", path(&onnx)]);
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let meta = metadata(&onnx);
        let p: serde_json::Value = serde_json::from_str(&meta["preprocess"]).unwrap();
        let names: Vec<String> = serde_json::from_str(&meta["class_names"]).unwrap();
        let model = tract_model(&std::fs::read(&onnx).unwrap());
        let (c, s) = (
            if p["channels"] == "grey" { 1 } else { 3 },
            p["input_size"].as_u64().unwrap() as usize,
        );

        let mut args = vec![
            "predict",
            "--weights",
            path(&weights),
            "--top",
            "10",
            "--json",
        ];
        args.extend(images.iter().map(|f| path(f)));
        let o = densenet(&args);
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let predicted: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        for (file, pred) in images.iter().zip(predicted.as_array().unwrap()) {
            let logits = run_tract(&model, &prepare_from_metadata(&p, file), 1, c, s);
            let probs = softmax(&logits);
            let top = (0..probs.len())
                .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
                .unwrap();
            let shown = pred["top"].as_array().unwrap();
            assert_eq!(
                names[top],
                shown[0][0].as_str().unwrap(),
                "{name}, {}: the top-1 class of the metadata's preprocessing {p} is not \
                 predict's ({pred})",
                file.display()
            );
            // every class's probability, so that a preprocessing that only leaves the
            // top-1 class alone is caught too (a wrong crop moved them by 1e-3 here)
            for (class, prob) in shown
                .iter()
                .map(|t| (t[0].as_str().unwrap(), t[1].as_f64().unwrap()))
            {
                let ours = probs[names.iter().position(|n| n == class).unwrap()];
                assert!(
                    (ours - prob).abs() < 1e-5,
                    "{name}, {}: class {class} has probability {ours:.6} with the metadata's \
                     preprocessing {p}, {prob:.6} in predict",
                    file.display()
                );
            }
        }
    }
}
