//! The `densenet` binary end to end: figures in `--json`, the forward command against the
//! reference, weights in `.pth` form with legacy keys, and clear errors for bad input.

mod common;

use common::*;
use densenet::Model;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tmp(name: &str) -> PathBuf {
    tmp_in("cli", name)
}

fn ref_path(name: &str) -> String {
    reference_dir().join(name).display().to_string()
}

#[test]
fn summary_json_gives_the_paper_counts() {
    for (model, classes, params) in [
        ("densenet-40-12", "10", 1_019_722u64),
        ("densenet-bc-100-12", "10", 769_162),
        ("densenet-bc-40-12", "10", 176_122),
        ("densenet121", "1000", 7_978_856),
        ("densenet264", "1000", 33_337_704),
    ] {
        let o = densenet(&["summary", model, "--classes", classes, "--json"]);
        let v = json(&o);
        assert_eq!(v["parameters"].as_u64(), Some(params), "{model}");
        assert!(v["macs"].as_u64().unwrap() > 0);
    }
}

#[test]
fn forward_eval_and_train_match_the_reference() {
    let out = tmp("ref-eval.safetensors");
    let o = densenet(&[
        "forward",
        "--model",
        "densenet-bc-40-12",
        "--weights",
        &ref_path("cifar_bc_L40_k12.weights.safetensors"),
        "--input",
        &ref_path("cifar_bc_L40_k12.eval.safetensors"),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = densenet::weights::read_safetensors(&out).unwrap();
    let want = reference("cifar_bc_L40_k12", "eval");
    check_close(
        "logits",
        &got.get("logits").unwrap().tensor.data,
        &want.get("logits").unwrap().tensor.data,
        1e-4,
        1e-4,
    )
    .unwrap();

    let out = tmp("ref-train.safetensors");
    let o = densenet(&[
        "forward",
        "--model",
        "densenet-bc-40-12",
        "--train",
        "--weights",
        &ref_path("cifar_bc_L40_k12.weights.safetensors"),
        "--input",
        &ref_path("cifar_bc_L40_k12.train.safetensors"),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = densenet::weights::read_safetensors(&out).unwrap();
    let want = reference("cifar_bc_L40_k12", "train");
    let loss = got.get("loss").unwrap().tensor.data[0];
    assert!((loss - want.get("loss").unwrap().tensor.data[0]).abs() < 1e-5);
    let mut grads = 0;
    for t in want
        .tensors
        .iter()
        .filter(|t| t.name.starts_with("grad.") || t.name.starts_with("post."))
    {
        let ours = got
            .get(&t.name)
            .unwrap_or_else(|| panic!("output lacks {}", t.name));
        if t.name.starts_with("grad.") {
            check_rel_l2(&t.name, &ours.tensor.data, &t.tensor.data, 5e-2).unwrap();
            grads += 1;
        } else {
            check_close(&t.name, &ours.tensor.data, &t.tensor.data, 1e-5, 1e-5).unwrap();
        }
    }
    assert_eq!(grads, 119);
}

/// A torchvision checkpoint saved by torch with the legacy `norm.1`/`conv.1` keys (see
/// tests/fixtures/make_pth_fixtures.py) loads, and round-trips to safetensors.
#[test]
fn legacy_pth_checkpoint_loads() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let cfg = densenet::DenseNetConfig::from_json(
        r#"{"family":"imagenet_densenet","growth_rate":4,"block_config":[1,1],
            "init_features":8,"bn_size":2,"num_classes":3}"#,
    )
    .unwrap();
    let mut net = densenet::DenseNet::new(&cfg, 0);
    let pth = fixtures.join("legacy_tiny_densenet.pth");
    let file = densenet::weights::read_checkpoint(&pth).unwrap();
    net.load_tensors(&file.tensors, "legacy_tiny_densenet.pth")
        .unwrap();
    let want = densenet::weights::read_safetensors(
        &fixtures.join("legacy_tiny_densenet.expected.safetensors"),
    )
    .unwrap();
    let sd = net.state_dict();
    assert_eq!(
        sd.len(),
        want.tensors
            .iter()
            .filter(|t| !t.name.ends_with("num_batches_tracked"))
            .count()
    );
    for (name, t) in &sd {
        assert_eq!(&t.data, &want.get(name).unwrap().tensor.data, "{name}");
    }
    // and through the command line, eval logits from the .pth equal those from a re-save
    let st = tmp("legacy.safetensors");
    densenet::weights::write_safetensors(&st, &net.state_dict(), &[], Default::default()).unwrap();
    let x = tmp("legacy-input.safetensors");
    let input = densenet::util::tensor::Tensor::new(
        vec![1, 3, 224, 224],
        (0..3 * 224 * 224)
            .map(|i| ((i % 17) as f32 - 8.0) / 8.0)
            .collect(),
    );
    densenet::weights::write_safetensors(&x, &[("input".into(), input)], &[], Default::default())
        .unwrap();
    let model = r#"{"family":"imagenet_densenet","growth_rate":4,"block_config":[1,1],"init_features":8,"bn_size":2,"num_classes":3}"#;
    let mut logits = vec![];
    for w in [fixtures.join("legacy_tiny_densenet.pth"), st.clone()] {
        let out = tmp("legacy-out.safetensors");
        let o = densenet(&[
            "forward",
            "--model",
            model,
            "--weights",
            w.to_str().unwrap(),
            "--input",
            x.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        logits.push(
            densenet::weights::read_safetensors(&out)
                .unwrap()
                .get("logits")
                .unwrap()
                .tensor
                .data
                .clone(),
        );
    }
    assert_eq!(logits[0], logits[1]);
}

/// Runs `args`, which must fail with every needle in its standard error; returns it.
fn assert_fails(args: &[&str], needles: &[&str]) -> String {
    let o = densenet(args);
    assert!(!o.status.success(), "expected failure: {args:?}");
    let e = stderr(&o);
    for n in needles {
        assert!(e.contains(n), "stderr lacks {n:?}:\n{e}");
    }
    e
}

#[test]
fn bad_input_gives_clear_errors() {
    let w = ref_path("cifar_bc_L40_k12.weights.safetensors");
    let x = ref_path("cifar_bc_L40_k12.eval.safetensors");
    let out = tmp("never.safetensors");
    let out = out.to_str().unwrap();
    // unknown model
    assert_fails(&["summary", "resnet-50"], &["unknown model 'resnet-50'"]);
    assert_fails(
        &[
            "forward",
            "--model",
            "densenet-bc-41-12",
            "--weights",
            &w,
            "--input",
            &x,
            "--output",
            out,
        ],
        &["divisible by 6"],
    );
    // missing weights file
    assert_fails(
        &[
            "forward",
            "--model",
            "densenet-bc-40-12",
            "--weights",
            "/nonexistent/w.safetensors",
            "--input",
            &x,
            "--output",
            out,
        ],
        &["/nonexistent/w.safetensors"],
    );
    // truncated weights file
    let bytes = std::fs::read(&w).unwrap();
    let trunc = tmp("truncated.safetensors");
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(
        &[
            "forward",
            "--model",
            "densenet-bc-40-12",
            "--weights",
            trunc.to_str().unwrap(),
            "--input",
            &x,
            "--output",
            out,
        ],
        &["truncated.safetensors", "not a valid safetensors file"],
    );
    // wrong tensor shapes: the plain DenseNet-40's weights for DenseNet-BC-40, summarised
    // (issue 12, item 15: the counts and the first few of each kind, not 286 lines)
    let plain = ref_path("cifar_densenet_L40_k12.weights.safetensors");
    let args = [
        "forward",
        "--model",
        "densenet-bc-40-12",
        "--weights",
        &plain,
        "--input",
        &x,
        "--out",
        out,
    ];
    assert_fails(
        &args,
        &["nothing was loaded", "106 of the wrong shape, 90 missing, 90 unexpected", "wrong shape: features.conv0.weight is [16, 3, 3, 3] in the file, the model expects [24, 3, 3, 3]", "missing: features.denseblock1.denselayer1.norm2.weight", "unexpected: features.denseblock1.denselayer10.conv1.weight", "… and 88 more unexpected"],
    );
    let lines = stderr(&densenet(&args)).lines().count();
    assert!(lines <= 12, "{lines} lines for a wrong-model weights file");
    // wrong number of classes
    assert_fails(
        &[
            "forward",
            "--model",
            "densenet-bc-40-12",
            "--classes",
            "100",
            "--weights",
            &w,
            "--input",
            &x,
            "--output",
            out,
        ],
        &["classifier.weight is [10, 132] in the file, the model expects [100, 132]"],
    );
    // input of the wrong size
    let small = tmp("small-input.safetensors");
    let t = densenet::util::tensor::Tensor::new(vec![1, 3, 16, 16], vec![0.0; 3 * 256]);
    densenet::weights::write_safetensors(&small, &[("input".into(), t)], &[], Default::default())
        .unwrap();
    assert_fails(
        &[
            "forward",
            "--model",
            "densenet-bc-40-12",
            "--weights",
            &w,
            "--input",
            small.to_str().unwrap(),
            "--output",
            out,
        ],
        &["'input' has shape [1, 3, 16, 16]", "expects [N, 3, 32, 32]"],
    );
    // --train without labels
    assert_fails(
        &[
            "forward",
            "--train",
            "--model",
            "densenet-bc-40-12",
            "--weights",
            &w,
            "--input",
            small.to_str().unwrap(),
            "--output",
            out,
        ],
        &["'input' has shape"],
    );
    assert_fails(
        &[
            "forward",
            "--train",
            "--model",
            "densenet-bc-40-12",
            "--weights",
            &w,
            "--input",
            &x,
            "--output",
            out,
        ],
        &["needs a tensor named 'labels'"],
    );
    assert!(!Path::new(out).exists(), "no output is written on failure");
}

/// `train` → `eval` → `predict` → `plot` on the built-in digits with a tiny model.
#[test]
fn train_eval_predict_plot_pipeline() {
    let dir = tmp("run");
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let o = densenet(&[
        "train",
        "--model",
        "densenet-bc-16-4",
        "--epochs",
        "2",
        "--out",
        d,
        "--json",
    ]);
    let s = json(&o);
    assert_eq!(s["epochs"].as_u64(), Some(2));
    assert!(
        dir.join("curves.png").exists(),
        "train draws the learning curves"
    );
    let best = dir.join("best.safetensors");
    let o = densenet(&["eval", "--weights", best.to_str().unwrap(), "--json"]);
    let e = json(&o);
    assert_eq!(e["images"].as_u64(), Some(297));
    let confusion: u64 = e["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(confusion, 297);
    let top1 = e["top1_accuracy"].as_f64().unwrap();
    let best_acc = s["best_test_accuracy"].as_f64().unwrap();
    assert!(
        (top1 - best_acc).abs() < 1e-9,
        "eval of best.safetensors reproduces the run's best accuracy"
    );
    // a grey 8×8 image through predict: five classes with probabilities summing to ≤ 1
    let png = tmp("digit.png");
    image::GrayImage::from_fn(8, 8, |x, _| image::Luma([if x == 4 { 255 } else { 0 }]))
        .save(&png)
        .unwrap();
    let o = densenet(&[
        "predict",
        "--weights",
        best.to_str().unwrap(),
        "--json",
        png.to_str().unwrap(),
    ]);
    let p = json(&o);
    let top = p[0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 5);
    let total: f64 = top.iter().map(|t| t[1].as_f64().unwrap()).sum();
    assert!(total > 0.0 && total <= 1.0 + 1e-9);
    std::fs::remove_file(dir.join("curves.png")).unwrap();
    let o = densenet(&["plot", d]);
    assert!(
        o.status.success() && dir.join("curves.png").exists(),
        "{}",
        stderr(&o)
    );
    // issue 12, item 13: "wrote …" is a message (stderr); --json says what was written
    assert!(o.stdout.is_empty() && stderr(&o).contains("wrote"));
    let o = densenet(&["plot", d, "--json"]);
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(p["curves"], dir.join("curves.png").to_str().unwrap());
    // errors: a missing run directory, an image that is not an image
    assert_fails(
        &["plot", "/nonexistent/run"],
        &["/nonexistent/run/metrics.csv"],
    );
    let bad = tmp("bad.png");
    std::fs::write(&bad, b"not a png").unwrap();
    assert_fails(
        &[
            "predict",
            "--weights",
            best.to_str().unwrap(),
            bad.to_str().unwrap(),
        ],
        &["bad.png"],
    );
    // (in a directory of their own: a train without --out writes under ./runs)
    let cwd = fresh_dir("pipeline-failures");
    for (args, needle) in [
        (&["train", "--dataset", "cifar10"][..], "cifar10"),
        (
            &[
                "train",
                "--dataset",
                "cifar10",
                "--data",
                "/nonexistent/cifar",
            ],
            "/nonexistent/cifar",
        ),
    ] {
        let o = densenet_in(&cwd, args);
        assert!(
            !o.status.success() && stderr(&o).contains(needle),
            "{}",
            stderr(&o)
        );
    }
}

/// The pre-activation ResNets through the same commands: the paper's parameter counts in
/// `summary --json`, `forward --train` against the PyTorch fixture, and a digits run that
/// `eval`, `predict` and `compare` (beside a DenseNet run) read back.
#[test]
fn preresnet_summary_forward_train_eval_compare() {
    for (model, params) in [
        ("preresnet-164", 1_703_258u64),
        ("preresnet-1001", 10_327_706),
    ] {
        let o = densenet(&["summary", model, "--json"]);
        let v = json(&o);
        assert_eq!(v["parameters"].as_u64(), Some(params), "{model}");
        assert_eq!(v["family"], "preact_resnet");
    }
    let o = densenet(&["summary", "preresnet-110"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("1,730,522") && text.contains("layer3"),
        "{text}"
    );

    // forward --train on the PyTorch fixture, the model given as its JSON configuration
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let case = |kind: &str| {
        fixtures
            .join(format!("preresnet_bottleneck_w8.{kind}.safetensors"))
            .display()
            .to_string()
    };
    let weights = densenet::weights::read_safetensors(Path::new(&case("weights"))).unwrap();
    let out = tmp("resnet-train.safetensors");
    let o = densenet(&[
        "forward",
        "--model",
        &weights.metadata["config"],
        "--weights",
        &case("weights"),
        "--input",
        &case("train"),
        "--output",
        out.to_str().unwrap(),
        "--train",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ours = densenet::weights::read_safetensors(&out).unwrap();
    let want = densenet::weights::read_safetensors(Path::new(&case("train"))).unwrap();
    for name in [
        "loss",
        "logits",
        "grad.layer2.0.shortcut.0.weight",
        "post.bn.running_var",
    ] {
        let (a, b) = (
            &ours.get(name).unwrap().tensor.data,
            &want.get(name).unwrap().tensor.data,
        );
        check_close(name, a, b, 1e-4, 1e-3).unwrap();
    }

    // a DenseNet run and a ResNet run on the digits, side by side
    let runs = tmp("compare-runs");
    let _ = std::fs::remove_dir_all(&runs);
    for model in ["densenet-bc-16-4", "preresnet-8"] {
        let dir = runs.join(model);
        let o = densenet(&[
            "train",
            "--model",
            model,
            "--epochs",
            "1",
            "--out",
            dir.to_str().unwrap(),
            "--json",
        ]);
        assert!(o.status.success(), "{model}: {}", stderr(&o));
    }
    let best = runs.join("preresnet-8/best.safetensors");
    let o = densenet(&["eval", "--weights", best.to_str().unwrap(), "--json"]);
    let e = json(&o);
    assert_eq!(
        (e["images"].as_u64(), e["model"].as_str()),
        (Some(297), Some("preresnet-8"))
    );
    let png = tmp("resnet-digit.png");
    image::GrayImage::from_fn(8, 8, |_, y| image::Luma([if y == 3 { 255 } else { 0 }]))
        .save(&png)
        .unwrap();
    let o = densenet(&[
        "predict",
        "--weights",
        best.to_str().unwrap(),
        png.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fails(
        &["heatmap", "--weights", best.to_str().unwrap()],
        &["pre-activation ResNet"],
    );
    let plot = tmp("compare.png");
    let o = densenet(&[
        "compare",
        runs.join("densenet-bc-16-4").to_str().unwrap(),
        runs.join("preresnet-8").to_str().unwrap(),
        "--out",
        plot.to_str().unwrap(),
        "--json",
    ]);
    let rows = json(&o);
    let families: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["family"].as_str().unwrap())
        .collect();
    assert_eq!(families.len(), 2);
    assert!(families.contains(&"densenet") && families.contains(&"preact_resnet"));
    assert!(rows
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["parameters"].as_u64() > Some(0)));
    assert!(plot.exists());
    // DenseNet-only options are refused for a ResNet
    assert_fails(
        &["summary", "preresnet-110", "--compression", "0.5"],
        &["--compression applies to DenseNets"],
    );
    assert_fails(
        &["summary", "preresnet-111"],
        &["depth 111", "multiple of 6"],
    );
}

/// Runs densenet with its stdout's read end closed before it writes anything (a reader
/// that stopped early, as `| head` does).
fn with_stdout_closed<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_densenet"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn densenet");
    drop(child.stdout.take());
    child.wait_with_output().expect("wait")
}

/// A reader that stops early (`densenet summary --json | head`) is not an error: the
/// command exits 0 and prints nothing on stderr.
#[test]
fn closed_stdout_is_not_an_error() {
    let out = with_stdout_closed(&["summary", "preresnet-1001", "--json"]);
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        stderr(&out)
    );
    assert!(stderr(&out).is_empty(), "stderr: {}", stderr(&out));
}

/// `summary --plan` lists every region of the workspace's one allocation: disjoint, in
/// address order, and adding up (with padding) to what `bench train` allocated and
/// reports as `activation_bytes`; `bench` names the kernels table it ran.
#[test]
fn summary_plan_is_the_workspace_bench_allocates() {
    for (model, batch, memory) in [
        ("densenet-bc-40-12", "4", "efficient"),
        ("densenet-bc-40-12", "4", "naive"),
        ("densenet-40-12", "2", "efficient"),
        ("preresnet-20", "2", "efficient"),
    ] {
        let plan = json(&densenet(&[
            "summary", model, "--plan", "--batch", batch, "--memory", memory, "--json",
        ]));
        let bench = json(&densenet(&[
            "--threads",
            "1",
            "bench",
            "train",
            "--model",
            model,
            "--batch",
            batch,
            "--memory",
            memory,
            "--steps",
            "1",
            "--warmup",
            "0",
            "--json",
        ]));
        let total = plan["total_bytes"].as_u64().unwrap();
        assert_eq!(
            total,
            bench["activation_bytes"].as_u64().unwrap(),
            "{model} {memory}"
        );
        let regions = plan["regions"].as_array().unwrap();
        assert!(regions.len() > 10, "{model}: {} regions", regions.len());
        let mut end = 0;
        for r in regions {
            let (off, bytes) = (r["offset"].as_u64().unwrap(), r["bytes"].as_u64().unwrap());
            assert!(
                off >= end && bytes > 0,
                "{model}: {r} overlaps the region before"
            );
            end = off + bytes;
        }
        assert!(
            end <= total && total - end < 64,
            "{model}: end {end}, total {total}"
        );
        let name = |n: &str| regions.iter().any(|r| r["name"] == n);
        assert!(name("input") && name("head.logits"), "{model}");
        let kernels = bench["kernels"].as_str().unwrap();
        assert!(densenet::kernels::NAMES.contains(&kernels), "{kernels}");
        assert_eq!(bench["gemm"], densenet::kernels::gemm::micro_kernels());
    }
    // the evaluation plan keeps no gradients
    let eval = json(&densenet(&[
        "summary",
        "densenet-bc-40-12",
        "--plan",
        "--eval",
        "--json",
    ]));
    let names: Vec<_> = eval["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert!(!names.iter().any(|n| n.contains("grad")), "{names:?}");
}

/// `bench infer --profile` counts each of the model's convolutions once per pass (a
/// DenseNet-BC-40-12 has 3 blocks of 6 bottleneck layers: 18 1×1 and 18 3×3, plus 2
/// transition 1×1 and the 3×3 stem), per kind and per shape, runs nothing of training,
/// and its rows add up to the mean pass.
#[test]
fn bench_infer_profile_counts_the_models_convolutions() {
    let r = json(&densenet(&[
        "--threads",
        "1",
        "bench",
        "infer",
        "--model",
        "densenet-bc-40-12",
        "--batch",
        "2",
        "--steps",
        "2",
        "--profile",
        "--json",
    ]));
    let rows = r["profile"].as_array().expect("profile rows");
    let calls = |op: &str| {
        rows.iter()
            .find(|row| row["op"] == op)
            .map(|row| row["calls"].as_f64().unwrap())
    };
    assert_eq!(calls("conv 1x1 forward"), Some(20.0), "{rows:?}");
    assert_eq!(calls("conv 3x3 forward"), Some(19.0), "{rows:?}");
    for op in [
        "conv 1x1 backward",
        "conv 3x3 backward",
        "BN-ReLU backward",
        "SGD update",
    ] {
        assert_eq!(calls(op), None, "{op} in an evaluation pass: {rows:?}");
    }
    let sum: f64 = rows.iter().map(|row| row["step_s"].as_f64().unwrap()).sum();
    let mean = r["pass"]["mean_s"].as_f64().unwrap();
    assert!(
        (sum - mean).abs() <= 1e-6 * mean,
        "rows {sum} s, mean pass {mean} s"
    );
    // per shape: the stem (3 → 24 channels over 2 × 32 × 32 positions) once, and each
    // block's 3×3 (48 → 12) six times at 32², 16² and 8²
    let shapes = r["profile_shapes"].as_array().expect("profile_shapes");
    let calls = |op: &str, key: Option<[u64; 4]>| -> f64 {
        let matches = |s: &&serde_json::Value| {
            s["op"] == op
                && key.is_none_or(|[k, cin, cout, positions]| {
                    s["k"] == k
                        && s["cin"] == cin
                        && s["cout"] == cout
                        && s["positions"] == positions
                })
        };
        let rows = shapes.iter().filter(matches);
        rows.map(|s| s["calls"].as_f64().unwrap()).sum()
    };
    assert_eq!(
        calls("conv 3x3 forward", Some([3, 3, 24, 2048])),
        1.0,
        "{shapes:?}"
    );
    for positions in [2048, 512, 128] {
        let key = Some([3, 48, 12, positions]);
        assert_eq!(calls("conv 3x3 forward", key), 6.0, "{shapes:?}");
    }
    assert_eq!(calls("conv 1x1 forward", None), 20.0, "{shapes:?}");
    assert_eq!(calls("conv 3x3 forward", None), 19.0, "{shapes:?}");
}

/// `bench train --ab` and `bench infer --ab`: `--steps` pairs, the step figures from the
/// off arm alone, the ratio inside its quartiles, and a profile still per pass (each
/// convolution once per pass, over both arms' passes).
#[test]
fn bench_ab_times_pairs() {
    let small = [
        "--model",
        "densenet-bc-40-12",
        "--batch",
        "2",
        "--steps",
        "3",
    ];
    let train = json(&densenet(
        &[
            &["--threads", "1", "bench", "train"][..],
            &small,
            &["--ab", "--json"],
        ]
        .concat(),
    ));
    let infer = json(&densenet(
        &[
            &["--threads", "1", "bench", "infer"][..],
            &small,
            &["--ab", "--profile", "--json"],
        ]
        .concat(),
    ));
    for (r, stats) in [(&train, "step"), (&infer, "pass")] {
        let ab = &r["ab"];
        assert_eq!(ab["pairs"], 3, "{r}");
        assert_eq!(r[stats]["times_s"].as_array().map(Vec::len), Some(3), "{r}");
        assert_eq!(ab["off_median_s"], r[stats]["median_s"], "{r}");
        let q = |k: &str| ab[k].as_f64().unwrap();
        assert!(q("on_median_s") > 0.0, "{r}");
        assert!(
            q("ratio_q1") <= q("ratio") && q("ratio") <= q("ratio_q3"),
            "{r}"
        );
    }
    let rows = infer["profile"].as_array().expect("profile rows");
    let conv3 = rows.iter().find(|row| row["op"] == "conv 3x3 forward");
    assert_eq!(conv3.map(|row| row["calls"].as_f64().unwrap()), Some(19.0));
    // without --ab, no such field
    let plain = json(&densenet(
        &[
            &["--threads", "1", "bench", "infer"][..],
            &small,
            &["--json"],
        ]
        .concat(),
    ));
    assert!(plain.get("ab").is_none(), "{plain}");
}

/// One batch-1 `bench infer --json` of a small model with environment variable `var` set
/// to `value` (or removed).
fn bench_infer_with_env(var: &str, value: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_densenet"));
    match value {
        Some(v) => c.env(var, v),
        None => c.env_remove(var),
    };
    c.args([
        "--threads",
        "1",
        "bench",
        "infer",
        "--model",
        "densenet-bc-40-12",
    ])
    .args(["--batch", "1", "--steps", "1", "--json"])
    .output()
    .expect("run densenet")
}

/// A refused environment value: the run fails before any work and names it.
fn refused(out: &Output, what: &str) {
    assert!(!out.status.success());
    assert!(stderr(out).contains(what), "{}", stderr(out));
}

/// `DENSENET_KERNELS` picks the table (and an unknown one is refused before any work).
#[test]
fn densenet_kernels_selects_the_table() {
    let run = |k| bench_infer_with_env("DENSENET_KERNELS", Some(k));
    let portable = json(&run("portable"));
    assert_eq!(portable["kernels"], "portable");
    assert_eq!(
        portable["packed_weight_bytes"], 0,
        "the portable kernels pack nothing"
    );
    refused(&run("sse9"), "DENSENET_KERNELS=sse9");
    // the bf16 tables: chosen where the CPU runs them, else refused in one line that
    // names them
    for name in ["avx512bf16", "amx"] {
        let out = run(name);
        if densenet::kernels::by_name(name).is_some() {
            assert_eq!(json(&out)["kernels"], name);
        } else {
            refused(&out, &format!("DENSENET_KERNELS={name}: this CPU lacks"));
            say(&format!(
                "SKIPPED: the {name} table (this CPU lacks its instructions)"
            ));
        }
    }
}

/// `bench infer` runs the model as a deployment does (`model::Frozen`): the kernels keep
/// the weights they packed, and `--json` says how many bytes. densenet121 on 64×64
/// images: its stem and its 3×3s at 16×16 take the routes that pack.
#[test]
fn bench_infer_reports_the_weights_it_packed_once() {
    let r = json(&densenet(&[
        "bench",
        "infer",
        "--model",
        "densenet121",
        "--input-size",
        "64",
        "--batch",
        "1",
        "--steps",
        "2",
        "--json",
    ]));
    let packed = r["packed_weight_bytes"]
        .as_u64()
        .expect("packed_weight_bytes");
    if r["kernels"] == "portable" {
        say("SKIPPED: the portable kernels pack nothing (this CPU has no AVX2)");
        assert_eq!(packed, 0);
        return;
    }
    // at least the stem's 64 × 3 × 7 × 7 weights and a 16×16 3×3's 32 × 128 × 9
    assert!(packed >= 4 * (64 * 147 + 32 * 128 * 9), "{packed} bytes");
}

/// `DENSENET_ROUTES` sets the route policy (`auto` by default; `bench --json` says which),
/// and an unusable value is refused before any work.
#[test]
fn densenet_routes_sets_the_policy() {
    let run = |v| bench_infer_with_env("DENSENET_ROUTES", v);
    assert_eq!(json(&run(None))["routes"], "auto");
    assert_eq!(json(&run(Some("no-winograd")))["routes"], "no-winograd");
    assert_eq!(json(&run(Some("direct")))["routes"], "direct");
    assert_eq!(json(&run(Some("bf16-all")))["routes"], "bf16-all");
    refused(&run(Some("maybe")), "DENSENET_ROUTES=maybe");
}

/// A fresh temporary directory for commands that write relative paths (`runs/…`).
fn fresh_dir(name: &str) -> PathBuf {
    fresh(tmp(name))
}

/// Issue 12, item 1: `train --out` on an existing run is refused (pointing to --resume
/// and --force) and leaves it as it was; --force replaces it.
#[test]
fn train_out_refuses_an_existing_run() {
    let dir = tmp("existing-run");
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let o = densenet(&[&TINY_RUN[..], &["--out", d]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    // issue 12, item 15: one epoch is "1 epoch"; the schedule is plain text
    let (e, out) = (stderr(&o), String::from_utf8_lossy(&o.stdout).to_string());
    assert!(
        e.contains("for 1 epoch (") && e.contains(", cosine)"),
        "{e}"
    );
    assert!(out.contains("after 1 epoch,"), "{out}");
    let before = std::fs::read(dir.join("last.safetensors")).unwrap();
    let summary = std::fs::read(dir.join("summary.json")).unwrap();
    assert_fails(
        &[&TINY_RUN[..], &["--out", d, "--seed", "3"]].concat(),
        &["holds a run already", &format!("--resume {d}"), "--force"],
    );
    assert_eq!(std::fs::read(dir.join("last.safetensors")).unwrap(), before);
    assert_eq!(std::fs::read(dir.join("summary.json")).unwrap(), summary);
    let o = densenet(&[&TINY_RUN[..], &["--out", d, "--seed", "3", "--force"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(std::fs::read(dir.join("last.safetensors")).unwrap(), before);
}

/// Issue 12, item 1: a default run name that is taken (another run started in the same
/// second) gets a suffix instead of replacing that run.
#[test]
fn default_run_names_are_unique() {
    let cwd = fresh_dir("unique-names");
    // occupy the names of this second and the next few, as runs started now would
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut taken = Vec::new();
    for t in now..now + 20 {
        let o = Command::new("date")
            .args(["-u", "-d", &format!("@{t}"), "+%Y%m%d-%H%M%S"])
            .output()
            .unwrap();
        let stamp = String::from_utf8(o.stdout).unwrap();
        let dir = cwd
            .join("runs")
            .join(format!("{}-digits-densenet-bc-16-4", stamp.trim()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), b"{\"earlier\": true}").unwrap();
        taken.push(dir);
    }
    let o = densenet_in(&cwd, &[&TINY_RUN[..], &["--json"]].concat());
    let s = json(&o);
    let run_dir = s["run_dir"].as_str().unwrap().to_string();
    assert!(run_dir.ends_with("-digits-densenet-bc-16-4-2"), "{run_dir}");
    assert!(cwd.join(&run_dir).join("summary.json").exists());
    for dir in &taken {
        assert_eq!(
            std::fs::read(dir.join("config.json")).unwrap(),
            b"{\"earlier\": true}"
        );
    }
}

/// Issue 12, item 3: a train that fails before its first epoch leaves no directory.
#[test]
fn failed_train_leaves_nothing_behind() {
    let cwd = fresh_dir("failed-train");
    for args in [
        &["train", "--dataset", "foo"][..],
        &["train", "--dataset", "cifar10"],
        &[
            "train",
            "--dataset",
            "cifar10",
            "--data",
            "/nonexistent/cifar",
        ],
        &[&TINY_RUN[..], &["--lr", "nan"]].concat(),
        &[&TINY_RUN[..], &["--lr", "nan", "--out", "mine"]].concat(),
    ] {
        let o = densenet_in(&cwd, args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let left: Vec<_> = std::fs::read_dir(&cwd)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }
}

/// Issue 12, items 2 and 3: `compare` skips unfinished runs with a warning, writes the
/// format the extension names, and never writes over a run's files.
#[test]
fn compare_skips_unfinished_runs_and_keeps_its_inputs() {
    let root = fresh_dir("compare-inputs");
    let (a, b, unfinished) = (root.join("a"), root.join("b"), root.join("c"));
    fake_run(&a, "densenet-bc-16-4", 1000, 5.0);
    fake_run(&b, "preresnet-8", 2000, 6.0);
    std::fs::create_dir_all(&unfinished).unwrap();
    std::fs::write(unfinished.join("config.json"), b"{}").unwrap();
    let runs = [
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        unfinished.to_str().unwrap(),
    ];
    let svg = root.join("compare.svg");
    let o = densenet(
        &[
            &["compare", "--json", "--out", svg.to_str().unwrap()][..],
            &runs,
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning: skipping") && stderr(&o).contains("c: not a finished run")
    );
    assert_eq!(json(&o).as_array().unwrap().len(), 2);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg"), "{}", &text[..text.len().min(80)]);
    let png = root.join("compare.PNG");
    let o = densenet(&[&["compare", "--out", png.to_str().unwrap()][..], &runs].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    // issue 12, item 13: the table is the result (stdout), "wrote …" a message (stderr)
    assert!(!String::from_utf8_lossy(&o.stdout).contains("wrote"));
    assert!(stderr(&o).contains("wrote"));
    let jpg = root.join("compare.jpg");
    assert_fails(
        &[&["compare", "--out", jpg.to_str().unwrap()][..], &runs].concat(),
        &["compare.jpg", ".png or .svg"],
    );
    assert!(!jpg.exists());
    // an output that is one of the inputs, however spelled
    let summary = std::fs::read(a.join("summary.json")).unwrap();
    let spelled = root.join("b/../a/summary.json");
    assert_fails(
        &[&["compare", "--out", spelled.to_str().unwrap()][..], &runs].concat(),
        &["summary.json", "choose another path"],
    );
    assert_eq!(std::fs::read(a.join("summary.json")).unwrap(), summary);
    assert_fails(
        &[
            "compare",
            unfinished.to_str().unwrap(),
            "--out",
            png.to_str().unwrap(),
        ],
        &["no", "finished run"],
    );
}

/// Issue 12, item 2: `forward --output` equal to `--weights` or `--input` (as spelled
/// differently, or a hard link) is refused before anything is written.
#[test]
fn forward_never_writes_over_its_inputs() {
    let root = fresh_dir("forward-inputs");
    let w = root.join("w.safetensors");
    let x = root.join("x.safetensors");
    std::fs::copy(ref_path("cifar_bc_L40_k12.weights.safetensors"), &w).unwrap();
    std::fs::copy(ref_path("cifar_bc_L40_k12.eval.safetensors"), &x).unwrap();
    std::fs::hard_link(&x, root.join("x-link.safetensors")).unwrap();
    let (wb, xb) = (std::fs::read(&w).unwrap(), std::fs::read(&x).unwrap());
    let spelled = root.join(".").join("w.safetensors");
    let args = |out: &Path| {
        let v: Vec<String> = [
            "forward",
            "--model",
            "densenet-bc-40-12",
            "--weights",
            w.to_str().unwrap(),
            "--input",
            x.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v
    };
    for (out, flag) in [
        (spelled, "--weights"),
        (x.clone(), "--input"),
        (root.join("x-link.safetensors"), "--input"),
    ] {
        let a = args(&out);
        let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        assert_fails(&a, &[&format!("is the {flag} file")]);
    }
    assert_eq!(std::fs::read(&w).unwrap(), wb);
    assert_eq!(std::fs::read(&x).unwrap(), xb);
}

/// Issue 12, item 8: every command that prints results ends quietly when its reader
/// stops early (`predict … | head -1` panicked with "failed printing to stdout").
#[test]
fn closed_stdout_ends_every_command_quietly() {
    let root = fresh_dir("closed-stdout");
    let png = root.join("img.png");
    image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, 0]))
        .save(&png)
        .unwrap();
    let w = ref_path("cifar_bc_L40_k12.weights.safetensors");
    fake_run(&root.join("a"), "densenet-bc-16-4", 1000, 5.0);
    let p = png.to_str().unwrap();
    let cases: Vec<Vec<String>> = vec![
        vec![
            "predict",
            "--weights",
            &w,
            "--model",
            "densenet-bc-40-12",
            p,
            p,
            p,
        ],
        vec![
            "compare",
            root.join("a").to_str().unwrap(),
            "--out",
            root.join("c.png").to_str().unwrap(),
        ],
        vec![
            "heatmap",
            "--weights",
            &w,
            "--model",
            "densenet-bc-40-12",
            "--out",
            root.join("heat").to_str().unwrap(),
        ],
    ]
    .into_iter()
    .map(|v| v.into_iter().map(String::from).collect())
    .collect();
    for args in cases {
        let out = with_stdout_closed(&args);
        assert!(
            out.status.success(),
            "{args:?}: exit {:?}: {}",
            out.status,
            stderr(&out)
        );
        assert!(
            !stderr(&out).contains("panicked"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

/// Issue 12, item 9: the paper recipe's milestones scale with --epochs (they stayed at
/// epochs 150 and 225, so a short run never decayed).
#[test]
fn paper_recipe_milestones_follow_epochs() {
    let dir = tmp("paper-epochs");
    let _ = std::fs::remove_dir_all(&dir);
    let o = densenet(&[
        "train",
        "--model",
        "densenet-bc-16-4",
        "--recipe",
        "paper",
        "--epochs",
        "4",
        "--stop-after",
        "3",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["schedule"]["milestones"], serde_json::json!([2, 3]));
    // issue 12, item 15: the schedule as a user would write it, not Rust's Debug text
    let e = stderr(&o);
    assert!(e.contains("step ÷10 after epochs 2, 3)"), "{e}");
    // issue 33, item 9: the header counts epochs as the log does (epoch 2 the last at the
    // first rate, epoch 3 at the next)
    let lr_of = |epoch: &str| {
        let line = e
            .lines()
            .find(|l| l.starts_with(&format!("epoch {epoch:>3}:")))
            .unwrap();
        line.split_whitespace().nth(3).unwrap().to_string()
    };
    assert_eq!(
        (lr_of("2"), lr_of("3")),
        ("0.1000".into(), "0.0100".into()),
        "{e}"
    );
    assert!(!e.contains("Step {"), "{e}");
}

/// Ctrl-C during training: the current step finishes, the unfinished epoch is dropped,
/// the resume command is printed and the exit status is 130; the checkpoint loads.
#[test]
fn ctrl_c_stops_training_with_a_resumable_run() {
    use std::io::BufRead;
    let dir = tmp("ctrl-c");
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_densenet"))
        .args([
            "train",
            "--model",
            "densenet-bc-16-4",
            "--epochs",
            "200",
            "--out",
            d,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn densenet");
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut text = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            panic!("train ended before its first epoch: {text}");
        }
        text.push_str(&line);
        if line.starts_with("epoch   1:") {
            break;
        }
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{text}{rest}");
    assert!(
        rest.contains(&format!("densenet train --resume {d}")),
        "{rest}"
    );
    assert!(!rest.contains("panicked"), "{rest}");
    assert!(!dir.join("summary.json").exists());
    let rows = densenet::train::read_metrics(&dir.join("metrics.csv")).unwrap();
    let m = densenet::checkpoint::read_model(&dir.join("last.safetensors"), None).unwrap();
    assert_eq!(m.dataset.as_deref(), Some("digits"));
    let o = densenet(&[
        "train",
        "--resume",
        d,
        "--stop-after",
        &(rows.len() + 1).to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let again = densenet::train::read_metrics(&dir.join("metrics.csv")).unwrap();
    assert_eq!(again.len(), rows.len() + 1);
}

/// Writes a tiny MNIST-format data set (four 28×28 images a split) into `dir`.
fn tiny_mnist(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for prefix in ["train", "t10k"] {
        let mut images = vec![0, 0, 8, 3, 0, 0, 0, 4, 0, 0, 0, 28, 0, 0, 0, 28];
        images.extend((0..4 * 28 * 28).map(|i| (i % 251) as u8));
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        let labels = vec![0, 0, 8, 1, 0, 0, 0, 4, 0, 1, 2, 3];
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }
}

/// Weights of a small DenseNet for 1×8×8 digits (10 classes), its model in the metadata.
fn digits_weights(name: &str) -> PathBuf {
    let path = tmp(name);
    small_weights(&path, 8);
    path
}

/// Item 4: a data set whose images do not fit the checkpoint's model is refused before
/// any work, naming both shapes and the flags that could fix it (it used to panic).
#[test]
fn eval_refuses_data_of_another_shape() {
    let w = digits_weights("digits-model.safetensors");
    let mnist = tmp("mnist");
    tiny_mnist(&mnist);
    assert_fails(
        &[
            "eval",
            "--weights",
            w.to_str().unwrap(),
            "--dataset",
            "mnist",
            "--data",
            mnist.to_str().unwrap(),
        ],
        &[
            "model densenet-bc-16-4 expects 1×8×8 inputs",
            "data set mnist gives 1×28×28",
            "--model",
            "--dataset",
        ],
    );
}

/// Item 4's sibling in `predict`: a model whose inputs are neither grey nor RGB is refused
/// with both shapes named.
#[test]
fn predict_refuses_models_of_other_channels() {
    let mut cfg = densenet::DenseNetConfig::from_name("densenet-bc-16-4").unwrap();
    (cfg.in_channels, cfg.input_size) = (2, 8);
    let cfg = densenet::ModelConfig::from(cfg);
    let net = densenet::AnyModel::new(&cfg, 0);
    let path = tmp("two-channels.safetensors");
    let meta = std::collections::HashMap::from([(
        "config".to_string(),
        serde_json::to_string(&cfg).unwrap(),
    )]);
    densenet::weights::write_safetensors(&path, &net.state_dict(), &[], meta).unwrap();
    let png = tmp("two-channels.png");
    image::GrayImage::new(8, 8).save(&png).unwrap();
    assert_fails(
        &[
            "predict",
            "--weights",
            path.to_str().unwrap(),
            png.to_str().unwrap(),
        ],
        &[
            "expects 2×8×8 inputs",
            "grey (1 channel) or RGB (3 channels)",
        ],
    );
}

/// Item 6: a checkpoint whose stored model asks for a huge network fails fast with one
/// line naming the field and its bound, in every command that reads weights.
#[test]
fn checkpoints_with_huge_stored_models_fail_fast() {
    let w = digits_weights("huge-model.safetensors");
    let file = densenet::weights::read_safetensors(&w).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&file.metadata["config"]).unwrap();
    cfg["block_config"] = serde_json::json!([2, 2, 1_000_000_000u64]);
    let meta = std::collections::HashMap::from([("config".to_string(), cfg.to_string())]);
    let tensors: Vec<_> = file
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.tensor.clone()))
        .collect();
    let bad = tmp("huge-stored.safetensors");
    densenet::weights::write_safetensors(&bad, &tensors, &[], meta).unwrap();
    let png = tmp("huge-digit.png");
    image::GrayImage::new(8, 8).save(&png).unwrap();
    let b = bad.to_str().unwrap();
    let want = "block_config (layers per dense block) must be in 1..=10000, got 1000000000";
    for args in [
        vec!["eval", "--weights", b, "--dataset", "digits"],
        vec!["predict", "--weights", b, png.to_str().unwrap()],
        vec!["heatmap", "--weights", b, "--out", "/nonexistent/heatmap"],
    ] {
        let t = std::time::Instant::now();
        assert_fails(&args, &["huge-stored.safetensors", want]);
        assert!(t.elapsed().as_secs() < 10, "{args:?} fails fast");
    }
    // a JSON model from the command line meets the same bounds
    assert_fails(
        &[
            "summary",
            r#"{"family":"imagenet_densenet","growth_rate":1000000000,"block_config":[1,1]}"#,
        ],
        &["growth_rate (growth rate k) must be in 1..=65536, got 1000000000"],
    );
}

/// Item 11: numeric flags are checked by value, flags the run would ignore are refused,
/// and a run whose test loss is no number ends with an error.
#[test]
fn flags_are_checked_by_value() {
    for (args, needle) in [
        (
            vec!["train", "--batch-size", "0"],
            "'--batch-size <BATCH_SIZE>'",
        ),
        (
            vec!["train", "--lr=-0.1"],
            "'--lr <LR>': must be a finite number greater than 0",
        ),
        (vec!["train", "--lr", "nan"], "'--lr <LR>'"),
        (
            vec!["train", "--momentum", "2"],
            "'--momentum <MOMENTUM>': must be in [0, 1)",
        ),
        (
            vec!["train", "--weight-decay=-1"],
            "'--weight-decay <WEIGHT_DECAY>'",
        ),
        (vec!["train", "--upscale", "0"], "'--upscale <UPSCALE>'"),
        (vec!["train", "--stop-after", "0"], "'--stop-after <N>'"),
        (vec!["train", "--epochs", "0"], "'--epochs <EPOCHS>'"),
        (
            vec!["train", "--val-split", "1.5"],
            "'--val-split <VAL_SPLIT>'",
        ),
        (vec!["train", "--schedule", "step:0,100"], "at least 1"),
        (vec!["train", "--drop-rate", "1"], "'--drop-rate <P>'"),
        (
            vec!["train", "--compression", "1e308"],
            "'--compression <THETA>': must be in (0, 1]",
        ),
        (
            vec!["train", "--in-channels", "2"],
            "must be 1 (grey) or 3 (RGB)",
        ),
        (
            vec!["train", "--input-size", "100000"],
            "'--input-size <PIXELS>'",
        ),
        (vec!["train", "--classes", "0"], "'--classes <N>'"),
        (
            vec!["--threads", "0", "summary", "densenet-40-12"],
            "'--threads <THREADS>'",
        ),
        (
            vec!["predict", "--top", "0", "--weights", "w", "x.png"],
            "'--top <TOP>'",
        ),
        (
            vec!["eval", "--batch-size", "0", "--weights", "w"],
            "'--batch-size <BATCH_SIZE>'",
        ),
        (vec!["bench", "train", "--steps", "0"], "'--steps <STEPS>'"),
        (
            vec!["bench", "infer", "--batch", "0"],
            "'--batch-size <BATCH>'",
        ),
        // a workspace beyond the machine's memory is refused before it is allocated
        (
            vec![
                "bench",
                "infer",
                "--model",
                "densenet121",
                "--batch",
                "65536",
            ],
            "GiB this machine has available",
        ),
        // ignored before: the model takes the data set's shape and classes
        (
            vec!["train", "--input-size", "16"],
            "use --upscale 2 for 16×16 inputs",
        ),
        (
            vec!["train", "--in-channels", "3"],
            "the digits images have 1 channel",
        ),
        (vec!["train", "--classes", "100"], "digits has 10 classes"),
        (
            vec![
                "train",
                "--dataset",
                "folder",
                "--data",
                "/nonexistent",
                "--input-size",
                "64",
            ],
            "cropped to 224×224",
        ),
        (
            vec!["train", "--schedule", "step:5,100", "--epochs", "10"],
            "milestone 100 is never reached in 10 epochs",
        ),
        // a resumed run keeps its stored settings
        (
            vec!["train", "--resume", "/nonexistent/run", "--epochs", "3"],
            "'--epochs <EPOCHS>'",
        ),
        (
            vec!["train", "--resume", "/nonexistent/run", "--lr", "0.1"],
            "'--lr <LR>'",
        ),
        (
            vec![
                "train",
                "--resume",
                "/nonexistent/run",
                "--model",
                "densenet-40-12",
            ],
            "'--model <MODEL>'",
        ),
        (
            vec![
                "train",
                "--resume",
                "/nonexistent/run",
                "--dataset",
                "mnist",
            ],
            "'--dataset <DATASET>'",
        ),
    ] {
        assert_fails(&args, &[needle]);
    }
    // --resume alone is not a conflict (the defaults are not flags given)
    assert_fails(
        &["train", "--resume", "/nonexistent/run", "--stop-after", "1"],
        &["/nonexistent/run/config.json"],
    );
    // one full batch with an absurd (but finite) rate: the test loss is NaN after it
    let dir = tmp("nan-run");
    let _ = std::fs::remove_dir_all(&dir);
    assert_fails(
        &[
            "train",
            "--model",
            "densenet-bc-16-4",
            "--epochs",
            "1",
            "--batch-size",
            "2000",
            "--lr",
            "1e30",
            "--out",
            dir.to_str().unwrap(),
        ],
        &["the test loss became NaN after epoch 1", "lower --lr"],
    );
}

/// Every (sub)command's help, short and long.
const SUBCOMMANDS: [&[&str]; 13] = [
    &[],
    &["summary"],
    &["forward"],
    &["bench"],
    &["bench", "train"],
    &["bench", "infer"],
    &["bench", "memory"],
    &["train"],
    &["plot"],
    &["eval"],
    &["predict"],
    &["heatmap"],
    &["compare"],
];

/// The long flags a help text defines (the first `--name` of each option line).
fn defined_flags(help: &str) -> Vec<String> {
    help.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| {
            l.split([' ', ','])
                .find(|w| w.starts_with("--"))
                .map(|w| w.split(['=', '[']).next().unwrap().to_string())
        })
        .collect()
}

/// Issue 12: every subcommand's `--help` and `-h` fit 79 columns, and the shared concepts
/// have the same flag everywhere (`--batch-size`, not `--batch`; `--out`, not `--output`).
#[test]
fn help_fits_79_columns_and_flags_agree() {
    let expect: &[(&str, &[&str])] = &[
        (
            "summary",
            &[
                "--model",
                "--batch-size",
                "--json",
                "--threads",
                "--classes",
            ],
        ),
        (
            "forward",
            &[
                "--model",
                "--weights",
                "--out",
                "--json",
                "--threads",
                "--classes",
            ],
        ),
        (
            "bench train",
            &[
                "--model",
                "--batch-size",
                "--json",
                "--threads",
                "--classes",
            ],
        ),
        (
            "bench infer",
            &[
                "--model",
                "--batch-size",
                "--json",
                "--threads",
                "--classes",
            ],
        ),
        (
            "bench memory",
            &["--batch-size", "--out", "--json", "--threads"],
        ),
        (
            "train",
            &[
                "--model",
                "--batch-size",
                "--out",
                "--json",
                "--threads",
                "--classes",
            ],
        ),
        ("plot", &["--json", "--threads"]),
        (
            "eval",
            &[
                "--model",
                "--weights",
                "--batch-size",
                "--json",
                "--classes",
                "--in-channels",
                "--input-size",
            ],
        ),
        (
            "predict",
            &[
                "--model",
                "--weights",
                "--json",
                "--classes",
                "--in-channels",
                "--input-size",
            ],
        ),
        (
            "heatmap",
            &[
                "--model",
                "--weights",
                "--out",
                "--json",
                "--classes",
                "--in-channels",
                "--input-size",
            ],
        ),
        ("compare", &["--out", "--json", "--threads"]),
    ];
    for sub in SUBCOMMANDS {
        for h in ["-h", "--help"] {
            let args: Vec<&str> = sub.iter().copied().chain([h]).collect();
            let o = densenet(&args);
            assert!(o.status.success(), "{args:?}: {}", stderr(&o));
            let help = String::from_utf8(o.stdout).unwrap();
            for line in help.lines() {
                let n = line.chars().count();
                assert!(n <= 79, "{args:?}: a line of {n} columns:\n{line}");
            }
            let flags = defined_flags(&help);
            for other in ["--batch", "--output"] {
                assert!(
                    !flags.iter().any(|f| f == other),
                    "{args:?} defines {other}: {flags:?}"
                );
            }
            let name = sub.join(" ");
            if let Some((_, want)) = expect.iter().find(|(s, _)| *s == name) {
                for w in *want {
                    assert!(
                        flags.iter().any(|f| f == w),
                        "{args:?} lacks {w}: {flags:?}"
                    );
                }
            }
        }
    }
    // the values of --memory and --dataset are listed
    let help = |args: &[&str]| String::from_utf8(densenet(args).stdout).unwrap();
    for sub in [
        &["summary"][..],
        &["forward"],
        &["bench", "train"],
        &["train"],
    ] {
        let h = help(&[sub, &["--help"]].concat());
        assert!(
            h.contains("possible values: efficient, naive"),
            "{sub:?}:\n{h}"
        );
    }
    let h = help(&["eval", "--help"]);
    assert!(h.contains("cifar100-coarse") && h.contains("folder"), "{h}");
}

/// Issue 12, item 13: one command line — the old spellings still work as aliases, the
/// model adjustments reach eval/predict/heatmap, --json describes what forward, plot and
/// heatmap wrote, and "wrote …" goes to stderr.
#[test]
fn one_command_line() {
    let json_of = |args: &[&str]| -> serde_json::Value {
        let o = densenet(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: stdout is not one JSON value ({e}): {}",
                String::from_utf8_lossy(&o.stdout)
            )
        })
    };
    // summary: the positional or -m/--model; --batch-size or its alias --batch
    let a = json_of(&["summary", "densenet-bc-40-12", "--json"]);
    assert_eq!(
        a,
        json_of(&["summary", "--model", "densenet-bc-40-12", "--json"])
    );
    assert_eq!(
        a,
        json_of(&["summary", "-m", "densenet-bc-40-12", "--json"])
    );
    let p = json_of(&[
        "summary",
        "-m",
        "densenet-bc-40-12",
        "--plan",
        "--batch-size",
        "8",
        "--json",
    ]);
    assert_eq!(p["batch"], 8);
    assert_eq!(
        p,
        json_of(&[
            "summary",
            "densenet-bc-40-12",
            "--plan",
            "--batch",
            "8",
            "--json"
        ])
    );
    // forward: --out (and the alias --output), --json lists what was written
    let out = tmp("one-cli-forward.safetensors");
    let _ = std::fs::remove_file(&out);
    let w = ref_path("cifar_bc_L40_k12.weights.safetensors");
    let x = ref_path("cifar_bc_L40_k12.eval.safetensors");
    let args = [
        "forward",
        "-m",
        "densenet-bc-40-12",
        "--weights",
        &w,
        "--input",
        &x,
    ];
    let f = json_of(&[&args[..], &["--out", out.to_str().unwrap(), "--json"]].concat());
    assert_eq!(f["out"], out.to_str().unwrap());
    assert_eq!(f["tensors"][0]["name"], "logits");
    let o = densenet(&[&args[..], &["--output", out.to_str().unwrap()]].concat());
    assert!(o.status.success() && o.stdout.is_empty(), "{}", stderr(&o));
    assert!(stderr(&o).contains("wrote 1 tensor to"), "{}", stderr(&o));
    // heatmap: the model adjustments, --json, "wrote" on stderr
    let dir = tmp("one-cli-heatmap");
    let _ = std::fs::remove_dir_all(&dir);
    let plain = ref_path("cifar_densenet_L40_k12.weights.safetensors");
    let hm = [
        "heatmap",
        "--weights",
        &plain,
        "--out",
        dir.to_str().unwrap(),
    ];
    let o = densenet(
        &[
            &hm[..],
            &[
                "-m",
                "densenet-40-12",
                "--classes",
                "10",
                "--in-channels",
                "3",
                "--input-size",
                "32",
                "--json",
            ],
        ]
        .concat(),
    );
    let h = json(&o);
    assert_eq!(h["blocks"].as_array().unwrap().len(), 3);
    assert_eq!(h["blocks"][0]["layers"], 12);
    assert!(dir.join("heatmap.png").exists() && stderr(&o).contains("wrote"));
    // a different --classes reaches the model: the weights no longer fit it
    assert_fails(
        &[&hm[..], &["-m", "densenet-40-12", "--classes", "7"]].concat(),
        &["nothing was loaded", "classifier.weight"],
    );
    // adjustments without --model are refused, not ignored
    for sub in ["eval", "predict", "heatmap"] {
        let mut a = vec![sub, "--weights", &plain, "--classes", "10"];
        if sub == "predict" {
            a.push("x.png");
        }
        assert_fails(&a, &["adjust a --model"]);
    }
    // booleans: a bare --augment is "on" (--augment false still works)
    assert_fails(
        &["train", "--augment", "--dataset", "foo"],
        &["unknown data set 'foo'", "folder (root/<class>/<image>)"],
    );
    assert_fails(
        &["train", "--augment", "false", "--dataset", "foo"],
        &["unknown data set 'foo'"],
    );
    let e = stderr(&densenet(&["train", "--dataset", "foo"]));
    assert!(!e.contains("imagenet (image folder)"), "{e}");
}

/// Issue 12, item 15: no Rust Debug text, each cause once, a garbage `.pth` called a
/// `.pth`, and "1 thread".
#[test]
fn messages_are_plain_text() {
    let o = densenet(&["eval", "--weights", "/nonexistent/w.safetensors"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert_eq!(e.matches("(os error 2)").count(), 1, "{e}");
    let bad = tmp("garbage.pth");
    std::fs::write(&bad, b"this is not a checkpoint at all").unwrap();
    let o = densenet(&[
        "eval",
        "--weights",
        bad.to_str().unwrap(),
        "-m",
        "densenet-bc-40-12",
    ]);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains(".pth") && !e.contains("safetensors"),
        "{e}"
    );
    let o = densenet(&[
        "--threads",
        "1",
        "bench",
        "train",
        "-m",
        "densenet-bc-16-4",
        "--input-size",
        "8",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains(", efficient memory, 1 thread:"), "{out}");
}

/// The large-batch flags: the help says how batch norm treats accumulated passes, a batch
/// the passes cannot split is refused before anything is created, and a resumed run keeps
/// its own.
#[test]
fn large_batch_flags_are_explained_and_checked() {
    let help = densenet(&["train", "--help"]);
    let text = String::from_utf8_lossy(&help.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for needle in [
        "--accumulate",
        "Batch norm normalises each pass with that pass's own statistics",
        "--lr-scaling",
        "--warmup-epochs",
        "--no-bn-decay",
    ] {
        assert!(text.contains(needle), "help lacks {needle:?}:\n{text}");
    }
    let dir = tmp("accumulate-3");
    let d = dir.to_str().unwrap();
    assert_fails(
        &[
            "train",
            "--batch-size",
            "64",
            "--accumulate",
            "3",
            "--out",
            d,
        ],
        &["accumulate must divide batch_size 64"],
    );
    assert!(!dir.exists(), "nothing was created");
    assert_fails(
        &["train", "--resume", d, "--accumulate", "2"],
        &["--accumulate"],
    );
}

/// `bench scaling` runs the same work at each thread count in alternating rounds and
/// reports every count against the first (issue 31's measuring tool).
#[test]
fn bench_scaling_reports_every_thread_count_against_the_first() {
    let o = densenet(&[
        "bench",
        "scaling",
        "--work",
        "train",
        "-m",
        "densenet-bc-16-4",
        "--batch-size",
        "4",
        "--thread-counts",
        "1,2,3",
        "--rounds",
        "2",
        "--steps",
        "1",
        "--json",
    ]);
    let v = json(&o);
    assert_eq!(
        (v["work"].as_str(), v["rounds"].as_u64()),
        (Some("train"), Some(2))
    );
    let rows = v["rows"].as_array().unwrap();
    let threads: Vec<u64> = rows
        .iter()
        .map(|r| r["threads"].as_u64().unwrap())
        .collect();
    assert_eq!(threads, [1, 2, 3]);
    assert_eq!(rows[0]["speedup"].as_f64(), Some(1.0));
    for r in rows {
        let times = r["time"]["times_s"].as_array().unwrap();
        assert_eq!(times.len(), 2, "one time per round: {r}");
        assert!(times.iter().all(|t| t.as_f64().unwrap() > 0.0), "{r}");
        let (s, e, t) = (
            r["speedup"].as_f64().unwrap(),
            r["efficiency"].as_f64().unwrap(),
            r["threads"].as_f64().unwrap(),
        );
        assert!((e - s / t).abs() < 1e-12, "{r}");
    }
    // a bad work name is refused by the parser, naming the choices
    let o = densenet(&["bench", "scaling", "--work", "fly"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("infer"), "{}", stderr(&o));
}

/// `predict DIR` and `heatmap --out FILE` say what they take, in one line, and
/// `heatmap` makes no directory named like a file.
#[test]
fn predict_and_heatmap_say_what_they_take() {
    let w = reference_dir().join("cifar_bc_L40_k12.weights.safetensors");
    let w = w.to_str().unwrap();
    let dir = tmp("predict-a-dir");
    std::fs::create_dir_all(&dir).unwrap();
    let model = ["--weights", w, "-m", "densenet-bc-40-12"];
    let e = assert_fails(
        &[&["predict"], &model[..], &[dir.to_str().unwrap()]].concat(),
        &["a directory; predict takes image files"],
    );
    assert!(!e.contains("os error"), "{e}");
    let png = dir.join("map.png");
    assert_fails(
        &[&["heatmap"], &model[..], &["--out", png.to_str().unwrap()]].concat(),
        &["names the directory for heatmap.png"],
    );
    assert!(!png.exists(), "no directory named map.png");
    let _ = std::fs::remove_dir_all(&dir);
}
