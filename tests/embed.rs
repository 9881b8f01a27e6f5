//! Feature extraction (`densenet embed`, `densenet::features`): the features against
//! PyTorch's and against the network's own classifier, the three output formats read back
//! by hand, the library call against the command, the stored preprocessing, and one-line
//! errors for bad input.

mod common;

use common::*;
use densenet::features::{extract, feature_shape, Layer};
use densenet::prepare::InputPrep;
use densenet::weights::{read_safetensors, write_safetensors, TensorFile};
use densenet::{AnyModel, MemoryMode, ModelConfig};
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("densenet-embed-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// The command fails with one line on stderr that holds every needle.
fn fails_in_one_line(args: &[&str], needles: &[&str]) {
    let o = densenet(args);
    assert!(!o.status.success(), "expected failure: {args:?}");
    let e = stderr(&o);
    assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
    for n in needles {
        assert!(e.contains(n), "stderr lacks {n:?}: {e}");
    }
}

/// A network with the weights of a reference or fixture file, and its config as given
/// to `--model`.
fn load(w: &TensorFile) -> (AnyModel, String) {
    let json = w.metadata["config"].clone();
    let cfg = ModelConfig::from_name(&json).unwrap();
    let mut net = AnyModel::try_new(&cfg, 0).unwrap();
    net.load_tensors(&w.tensors, "reference").unwrap();
    (net, json)
}

fn fixture(case: &str, kind: &str) -> (TensorFile, PathBuf) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{case}.{kind}.safetensors"));
    (read_safetensors(&p).unwrap(), p)
}

/// `x · Wᵀ + b` per row: the classifier applied by hand.
fn linear(x: &[f32], w: &[f32], b: &[f32], d: usize) -> Vec<f32> {
    let j = b.len();
    x.chunks_exact(d)
        .flat_map(|row| {
            (0..j).map(move |k| {
                let dot: f32 = row.iter().zip(&w[k * d..][..d]).map(|(a, b)| a * b).sum();
                dot + b[k]
            })
        })
        .collect()
}

#[test]
fn layer_names_parse_strictly() {
    assert_eq!("pool".parse::<Layer>().unwrap(), Layer::Pool);
    assert_eq!("block3".parse::<Layer>().unwrap(), Layer::Block(3));
    assert_eq!("stage2".parse::<Layer>().unwrap(), Layer::Stage(2));
    for bad in [
        "", "Pool", "block", "block0", "block+1", "blockx", "layer1", "pool ",
    ] {
        let e = bad.parse::<Layer>().unwrap_err().to_string();
        assert!(e.contains(&format!("unknown layer '{bad}'")), "{e}");
    }
}

/// DenseNet-BC (L=40, k=12), PyTorch's reference: `pool` is PyTorch's pooled features,
/// `block2` its `features.denseblock2`; `pool` through the classifier gives the logits, and
/// the last block through the final BN-ReLU and the average gives `pool`.
#[test]
fn densenet_features_match_pytorch_and_the_classifier() {
    let w = reference("cifar_bc_L40_k12", "weights");
    let r = reference("cifar_bc_L40_k12", "eval");
    let (mut net, _) = load(&w);
    let x = &r.get("input").unwrap().tensor;
    let n = x.shape[0];
    let mut ws = net.workspace(n, MemoryMode::Efficient, false);

    let pool = extract(&mut *net, &mut ws, &x.data, n, Layer::Pool).unwrap();
    let want = &r.get("pooled_features").unwrap().tensor.data;
    check_close("pool", &pool, want, 1e-4, 1e-4).unwrap();

    let block2 = extract(&mut *net, &mut ws, &x.data, n, Layer::Block(2)).unwrap();
    let want = &r.get("act.features.denseblock2").unwrap().tensor;
    assert_eq!(
        feature_shape(&net.model_config(), Layer::Block(2)).unwrap(),
        want.shape[1..]
    );
    check_act("block2", &block2, &want.data, 1e-4).unwrap();

    let logits = net.forward_eval(&mut ws, &x.data, n, None);
    let get = |name: &str| w.get(name).unwrap().tensor.data.clone();
    let d = pool.len() / n;
    let by_hand = linear(&pool, &get("classifier.weight"), &get("classifier.bias"), d);
    check_close("pool·Wᵀ+b", &by_hand, &logits, 1e-4, 1e-4).unwrap();

    // the last block, then BN (running statistics, eps 1e-5), ReLU, mean over H×W
    let block3 = extract(&mut *net, &mut ws, &x.data, n, Layer::Block(3)).unwrap();
    let [c, h, ww] = feature_shape(&net.model_config(), Layer::Block(3)).unwrap()[..] else {
        panic!("a block is C×H×W")
    };
    assert_eq!(c, d);
    let (g, b) = (
        get("features.norm_final.weight"),
        get("features.norm_final.bias"),
    );
    let (m, v) = (
        get("features.norm_final.running_mean"),
        get("features.norm_final.running_var"),
    );
    let hw = h * ww;
    let pooled_by_hand: Vec<f32> = block3
        .chunks_exact(hw)
        .enumerate()
        .map(|(i, map)| {
            let ci = i % c;
            let s = g[ci] / (v[ci] + 1e-5).sqrt();
            map.iter()
                .map(|&a| ((a - m[ci]) * s + b[ci]).max(0.0))
                .sum::<f32>()
                / hw as f32
        })
        .collect();
    check_close("block3→pool", &pooled_by_hand, &pool, 1e-5, 1e-4).unwrap();
}

/// The pre-activation ResNet fixture: `stage2` is PyTorch's `layer2`, `pool` through `fc`
/// the logits, and a dense block is refused with the layers it has.
#[test]
fn resnet_features_match_pytorch_and_blocks_are_refused() {
    let (w, _) = fixture("preresnet_basic_w8", "weights");
    let (r, _) = fixture("preresnet_basic_w8", "eval");
    let (mut net, _) = load(&w);
    let x = &r.get("input").unwrap().tensor;
    let n = x.shape[0];
    let mut ws = net.workspace(n, MemoryMode::Efficient, false);
    let stage2 = extract(&mut *net, &mut ws, &x.data, n, Layer::Stage(2)).unwrap();
    check_act(
        "stage2",
        &stage2,
        &r.get("act.layer2").unwrap().tensor.data,
        1e-4,
    )
    .unwrap();
    let pool = extract(&mut *net, &mut ws, &x.data, n, Layer::Pool).unwrap();
    let get = |name: &str| w.get(name).unwrap().tensor.data.clone();
    let by_hand = linear(&pool, &get("fc.weight"), &get("fc.bias"), pool.len() / n);
    let logits = &r.get("logits").unwrap().tensor.data;
    check_close("pool·Wᵀ+b", &by_hand, logits, 1e-4, 1e-4).unwrap();
    for layer in [Layer::Block(1), Layer::Stage(4)] {
        let e = extract(&mut *net, &mut ws, &x.data, n, layer)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "has no layer {layer}: it has pool, stage1 … stage3"
            )),
            "{e}"
        );
    }
}

/// Writes an RGB PNG whose pixel (x, y) is `f(x, y)`.
fn png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
        .save(path)
        .unwrap();
}

/// `(shape, values)` of a float32 C-order `.npy` file, read by the format's definition.
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00", "magic and version 1.0");
    let len = u16::from_le_bytes([b[8], b[9]]) as usize;
    assert_eq!((10 + len) % 64, 0, "data aligned to 64 bytes");
    let header = std::str::from_utf8(&b[10..10 + len]).unwrap();
    assert!(header.ends_with('\n'));
    assert!(header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"));
    let shape = header.split("'shape': (").nth(1).unwrap();
    let shape: Vec<usize> = shape[..shape.find(')').unwrap()]
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let data: Vec<f32> = b[10 + len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>());
    (shape, data)
}

/// `embed` on a folder and a file, in batches of 2, to all three formats: they read back
/// to the same `[N, D]` values, in the order of the images, equal to the library call on
/// the same images; `--layer stage2` gives the stage's maps; bad input fails in one line
/// and writes nothing.
#[test]
fn embed_writes_three_formats_that_match_the_library() {
    let (w, wpath) = fixture("preresnet_basic_w8", "weights");
    let (mut net, model) = load(&w);
    let dir = tmp("images");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let images = [dir.join("a.png"), dir.join("sub/b.png"), tmp("c.png")];
    png(&images[0], 24, 16, |x, y| {
        [(x * 10) as u8, (y * 15) as u8, 200]
    });
    png(&images[1], 16, 16, |x, _| [0, 255, (x * 16) as u8]);
    png(&images[2], 9, 30, |x, y| [(x * y) as u8, 90, 30]);
    let (wp, d) = (wpath.to_str().unwrap(), dir.to_str().unwrap());
    let img2 = images[2].to_str().unwrap();
    // the weights and model of every call below
    let embed = ["embed", "--weights", wp, "--model", &model];
    let run = |out: &Path, layer: &str| {
        let out = out.to_str().unwrap();
        let options = [
            "--batch-size",
            "2",
            "--layer",
            layer,
            "--out",
            out,
            "--json",
        ];
        let o = densenet(&[&embed[..], &[d, img2], &options].concat());
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };

    // the library on the same files
    let cfg = net.model_config();
    let prep = InputPrep::new(&cfg, None, &wpath).unwrap();
    let x: Vec<f32> = images.iter().flat_map(|p| prep.load(p).unwrap()).collect();
    let mut ws = net.workspace(3, MemoryMode::Efficient, false);
    let want = extract(&mut *net, &mut ws, &x, 3, Layer::Pool).unwrap();
    let d_pool = want.len() / 3;
    assert_eq!(d_pool, 32, "the last stage's width");

    let npy = tmp("f.npy");
    let report = run(&npy, "pool");
    assert_eq!(report["images"], 3);
    assert_eq!(report["shape"], serde_json::json!([3, 32]));
    let (shape, got) = read_npy(&npy);
    assert_eq!(shape, [3, 32]);
    check_close("npy", &got, &want, 1e-5, 1e-5).unwrap();

    let csv = tmp("f.csv");
    run(&csv, "pool");
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 4, "a header and one row per image");
    assert_eq!(rows[0][0], "image");
    assert_eq!(rows[0].len(), 1 + 32);
    assert_eq!(rows[0][32], "f31");
    for (row, (path, feats)) in rows[1..].iter().zip(images.iter().zip(want.chunks(32))) {
        assert_eq!(
            row[0],
            path.to_str().unwrap(),
            "folder (sorted), then the file"
        );
        let vals: Vec<f32> = row[1..].iter().map(|v| v.parse().unwrap()).collect();
        check_close("csv", &vals, feats, 1e-5, 1e-5).unwrap();
    }

    let st = tmp("f.safetensors");
    run(&st, "pool");
    let f = read_safetensors(&st).unwrap();
    let t = &f.get("features").unwrap().tensor;
    assert_eq!(t.shape, [3, 32]);
    check_close("safetensors", &t.data, &want, 1e-5, 1e-5).unwrap();
    let names: Vec<String> = serde_json::from_str(&f.metadata["images"]).unwrap();
    let want_names: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
    assert_eq!(names, want_names);
    assert_eq!(f.metadata["layer"], "pool");

    let maps = tmp("maps.safetensors");
    run(&maps, "stage2");
    let f = read_safetensors(&maps).unwrap();
    let t = &f.get("features").unwrap().tensor;
    assert_eq!(t.shape, [3, 16, 8, 8]);
    let want = extract(&mut *net, &mut ws, &x, 3, Layer::Stage(2)).unwrap();
    check_close("stage2", &t.data, &want, 1e-5, 1e-5).unwrap();

    // bad input: one line, naming the problem; nothing written
    let bad = tmp("bad.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let never = tmp("never.npy");
    let never_s = never.to_str().unwrap();
    let base = [&embed[..], &["--out", never_s]].concat();
    let bad_s = bad.to_str().unwrap();
    let cases: [(Vec<&str>, &[&str]); 4] = [
        (vec![img2, bad_s], &["bad.png", "cannot decode"]),
        (vec![img2, "--layer", "blocks"], &["unknown layer 'blocks'"]),
        (
            vec![img2, "--layer", "block2"],
            &["has no layer block2: it has pool, stage1 … stage3"],
        ),
        (vec!["/nonexistent/x.png"], &["/nonexistent/x.png"]),
    ];
    for (extra, needles) in cases {
        let mut args = base.to_vec();
        args.extend(extra);
        fails_in_one_line(&args, needles);
        assert!(!never.exists(), "{args:?} wrote {never_s}");
    }
    fails_in_one_line(
        &[&embed[..], &[img2, "--out", "f.txt"]].concat(),
        &["f.txt", ".safetensors, .npy or .csv"],
    );
}

/// A checkpoint's stored preprocessing (mean, std, centre crop) is what `summary
/// --weights` shows and what images get: the centre of a wide image, normalised.
#[test]
fn stored_preprocessing_is_shown_and_applied() {
    let (w, _) = fixture("preresnet_basic_w8", "weights");
    let cfg = ModelConfig::from_name(&w.metadata["config"]).unwrap();
    let preprocess = serde_json::json!({
        "max_value": 255.0, "mean": [0.5], "std": [0.25], "upscale": 1,
        "classes": (0..10).map(|i| format!("c{i}")).collect::<Vec<_>>(),
        "center_crop": {"resize": 16, "crop": 16}
    });
    let meta = std::collections::HashMap::from([
        ("config".to_string(), serde_json::to_string(&cfg).unwrap()),
        ("preprocess".to_string(), preprocess.to_string()),
    ]);
    let tensors: Vec<_> = w
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.tensor.clone()))
        .collect();
    let ckpt = tmp("with-preprocess.safetensors");
    write_safetensors(&ckpt, &tensors, &[], meta).unwrap();
    let c = ckpt.to_str().unwrap();

    let o = densenet(&["summary", "--weights", c, "--json"]);
    let s = json(&o);
    assert_eq!(s["preprocess"]["center_crop"]["resize"], 16);
    assert_eq!(s["preprocess"]["mean"], serde_json::json!([0.5]));
    assert_eq!(s["preprocess"]["source"], "checkpoint");
    assert_eq!(s["model"], "preresnet-basic-w8");
    let o = densenet(&["summary", "--weights", c]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("preprocessing: shorter side resized to 16, centre crop 16"),
        "{text}"
    );

    // 32×16: red, green, blue columns of 8, 16 and 8 pixels; the crop keeps the green
    let wide = tmp("wide.png");
    png(&wide, 32, 16, |x, _| match x {
        0..8 => [255, 0, 0],
        8..24 => [0, 255, 0],
        _ => [0, 0, 255],
    });
    let stored: densenet::checkpoint::Preprocess = serde_json::from_value(preprocess).unwrap();
    let prep = InputPrep::new(&cfg, Some(&stored), &ckpt).unwrap();
    let x = prep.load(&wide).unwrap();
    let plane = 16 * 16;
    // (0 − 0.5) / 0.25 = −2 and (1 − 0.5) / 0.25 = 2
    assert!(x[..plane].iter().all(|&v| v == -2.0), "no red");
    assert!(x[plane..2 * plane].iter().all(|&v| v == 2.0), "all green");
    assert!(x[2 * plane..].iter().all(|&v| v == -2.0), "no blue");
    // without the crop the whole width is squeezed in: red on the left
    let plain = InputPrep::new(&cfg, None, &ckpt).unwrap();
    let x = plain.load(&wide).unwrap();
    assert!(x[0] > 0.9, "red at the top left: {}", x[0]);
    // and embed uses the stored preparation: the same features as the library's
    let out = tmp("wide.npy");
    let o = densenet(&[
        "embed",
        "--weights",
        c,
        wide.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, got) = read_npy(&out);
    let mut net = AnyModel::try_new(&cfg, 0).unwrap();
    net.load_tensors(&w.tensors, "fixture").unwrap();
    let mut ws = net.workspace(1, MemoryMode::Efficient, false);
    let x = prep.load(&wide).unwrap();
    let want = extract(&mut *net, &mut ws, &x, 1, Layer::Pool).unwrap();
    check_close("embed with stored preprocessing", &got, &want, 1e-5, 1e-5).unwrap();
}

/// A run on an image folder stores its evaluation centre crop (ImageNet's 256/224) with
/// its mean and std, so that `predict`, `embed` and `summary --weights` can use it.
#[test]
fn image_folder_runs_store_their_centre_crop() {
    let root = tmp("folder-run");
    for class in ["cat", "dog"] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..10 {
            png(&root.join(format!("{class}/{i}.png")), 6, 4, |x, y| {
                [(x * 40) as u8, (y * 60) as u8, i * 20]
            });
        }
    }
    let config: densenet::train::TrainConfig = serde_json::from_value(serde_json::json!({
        "model": ModelConfig::from_name("densenet121").unwrap(),
        "dataset": "folder", "data_dir": root, "epochs": 1, "batch_size": 1,
        "optimizer": densenet::optim::SgdConfig::default(),
        "schedule": {"kind": "cosine"}, "augment": false, "upscale": 1,
        "val_split": 0.0, "seed": 0, "memory": "efficient", "svhn_extra": false
    }))
    .unwrap();
    let setup = densenet::train::DataSetup::load(&config).unwrap();
    let p = setup.preprocess();
    let crop = p.center_crop.expect("a centre crop");
    assert_eq!((crop.resize, crop.crop), (256, 224));
    assert_eq!(p.mean, [0.485, 0.456, 0.406]);
    assert_eq!(p.classes, ["cat", "dog"]);
}
