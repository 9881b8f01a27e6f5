//! The route the memory plan names for each convolution (`ops::route`, `summary --plan`)
//! is the route that runs: every product of every convolution of a pass, recorded by
//! `route::trace`, against the workspace's routes, for both families, both memory modes,
//! evaluation and training, the planned batch and a shorter one.

use densenet::nn::TrainOptions;
use densenet::ops::route::{self, Product, Ran, Route, Routes};
use densenet::util::rng::Rng;
use densenet::{AnyModel, DenseNetConfig, MemoryMode, ModelConfig};

/// (input channels, output channels, kernel, stride, input positions) of a product: how a
/// planned convolution and a recorded one are matched (the fused 1×1s record their
/// positions as one row, and a transition pooled first runs on a quarter of them).
type Key = (usize, usize, usize, usize, usize);

/// Every product a pass of `n` images must run, by the plan's routes `r`: each forward,
/// and in training each weight gradient and every input gradient but the stem's.
fn expected(r: &Routes, training: bool) -> Vec<(Key, Product, Route)> {
    let mut out = vec![];
    for (i, c) in r.convs.iter().enumerate() {
        let s = &c.shape;
        let positions = if c.route.pooled_first {
            s.n * (s.h / 2) * (s.w / 2)
        } else {
            s.n * s.h * s.w
        };
        let key = (s.cin, s.cout, s.k, s.stride, positions);
        out.push((key, Product::Forward, c.route.forward));
        if training {
            out.push((key, Product::WeightGrad, c.route.weight_grad.unwrap()));
            if i > 0 {
                out.push((key, Product::InputGrad, c.route.input_grad.unwrap()));
            }
        }
    }
    out.sort_by_key(|e| format!("{e:?}"));
    out.dedup();
    out
}

/// What `ran` holds, once each (the efficient mode's backward runs a bottleneck's forward
/// again where it did not keep its output).
fn recorded(ran: &[Ran]) -> Vec<(Key, Product, Route)> {
    let mut out: Vec<_> = ran
        .iter()
        .map(|r| {
            let s = &r.shape;
            let key = (s.cin, s.cout, s.k, s.stride, s.n * s.h * s.w);
            (key, r.product, r.route)
        })
        .collect();
    out.sort_by_key(|e| format!("{e:?}"));
    out.dedup();
    out
}

/// One pass (forward, and backward in training) of `n` images over a workspace planned
/// for `batch`: what ran, against what the workspace's routes name.
fn check(cfg: &ModelConfig, batch: usize, n: usize, mode: MemoryMode, training: bool) {
    let mut net = AnyModel::new(cfg, 1);
    let (classes, c, s) = net.io();
    let mut rng = Rng::new(2);
    let x: Vec<f32> = (0..n * c * s * s).map(|_| rng.normal() as f32).collect();
    let labels: Vec<u32> = (0..n).map(|i| (i % classes) as u32).collect();
    let mut ws = net.workspace(batch, mode, training);
    let planned = ws.routes().clone();
    assert_eq!(planned.batch, batch);
    let ((), ran) = route::trace(|| {
        if training {
            let opts = TrainOptions::default();
            net.forward_train(&mut ws, &x, &labels, &opts);
            net.backward(&mut ws, &opts);
        } else {
            net.forward_eval(&mut ws, &x, n, None);
        }
    });
    // the routes of this pass: the plan's, chosen again for a shorter batch
    let now = ws.routes();
    assert_eq!((now.batch, now.training), (n, training));
    if n == batch {
        assert_eq!(now, &planned, "{} b{batch}", net.name());
    }
    let (want, got) = (expected(now, training), recorded(&ran));
    let what = format!(
        "{} batch {batch} n {n} {mode:?} training {training}",
        net.name()
    );
    for w in &want {
        assert!(got.contains(w), "{what}: planned {w:?} did not run");
    }
    for g in &got {
        assert!(
            want.contains(g),
            "{what}: {g:?} ran, but the plan names no such route"
        );
    }
}

#[test]
fn planned_routes_are_the_routes_that_run() {
    let small = |name: &str| ModelConfig::from_name(name).unwrap();
    // densenet121 on 64×64 (blocks at 16, 8, 4, 2): Winograd, broadcast, pooled
    // transitions and the stem's padded broadcast, at batches that choose differently
    let mut d121 = DenseNetConfig::from_name("densenet121").unwrap();
    d121.input_size = 64;
    d121.num_classes = 10;
    let d121 = ModelConfig::from(d121);
    // odd channel counts: the direct kernels take none of them (im2col and `gemm`)
    let mut odd = DenseNetConfig::from_name("densenet-bc-40-12").unwrap();
    (odd.growth_rate, odd.init_features) = (5, 7);
    let odd = ModelConfig::from(odd);
    for cfg in [
        &small("densenet-bc-40-12"),
        &d121,
        &odd,
        &small("preresnet-20"),
    ] {
        for mode in [MemoryMode::Efficient, MemoryMode::Naive] {
            check(cfg, 4, 4, mode, true);
            check(cfg, 4, 3, mode, true);
        }
        check(cfg, 4, 4, MemoryMode::Efficient, false);
        check(cfg, 8, 1, MemoryMode::Efficient, false);
    }
    // at least the routes the plan chose somewhere above ran: densenet121 at batch 16 has
    // Winograd (on 16×16, 2×2 tiles: 1024 ≥ 64·threads for up to 16 threads)
    let plan = d121
        .architecture()
        .memory_plan(16, MemoryMode::Efficient, true);
    let routes: Vec<_> = plan.routes.convs.iter().map(|c| c.route.forward).collect();
    if densenet::kernels::active().direct.is_some() {
        assert!(routes.contains(&Route::BroadcastPadded), "{routes:?}");
        assert!(
            routes
                .iter()
                .any(|r| matches!(r, Route::Winograd { .. } | Route::Broadcast3x3)),
            "{routes:?}"
        );
    } else {
        println!("SKIPPED: the portable kernels take every convolution by im2col and gemm");
    }
}
