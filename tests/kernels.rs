//! Every fast kernels table against the portable one, on the same machine (tract's way):
//! convolutions on generated shapes (odd channel counts, 1×1 and 3×3, stride 1 and 2,
//! batch 1, a 3×3 that takes the Winograd route and two that take the broadcast one), the fused BN-ReLU convolutions, and
//! whole training steps of small DenseNets and a ResNet whose channel counts the direct
//! kernels do and do not take.
//!
//! The table in use is process-wide (`kernels::force`), so this file holds one test and
//! switches it in turn. For each table the CPU cannot run (AVX-512 on an AVX2 machine)
//! the test prints SKIPPED and its name.

mod common;

use common::{say, train_step};
use densenet::kernels::{self, BnRelu, ConvShape, Kernels};
use densenet::ops::route::{self, Reads};
use densenet::ops::{conv, fused};
use densenet::util::rng::Rng;
use densenet::{AnyModel, DenseNetConfig, MemoryMode, ModelConfig};

fn data(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

/// max |a − b| ≤ tol · max |b|, with the names of what differs.
fn close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-20);
    let (i, worst) = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .enumerate()
        .fold((0, 0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
    assert!(
        worst <= tol * scale && a.iter().all(|v| v.is_finite()),
        "{what}: max |diff| {worst} at {i} (scale {scale}): {} vs {}",
        a[i],
        b[i]
    );
}

/// Everything one table computes for one convolution shape: y, dx, dw, and the fused
/// BN-ReLU forms of the 1×1 and 3×3 ones.
fn conv_outputs(k: &'static Kernels, s: &ConvShape, seed: u64) -> Vec<(String, Vec<f32>)> {
    kernels::force(k);
    let mut rng = Rng::new(seed);
    let (len_in, len_out) = (s.n * s.h * s.w, s.n * s.ho() * s.wo());
    let x = data(s.cin * len_in, &mut rng);
    let w = data(s.cout * s.col_rows(), &mut rng);
    let dy = data(s.cout * len_out, &mut rng);
    // the routes this table takes (the plan's choice for a stored input)
    let r = route::choose(s, Reads::Stored, true);
    let mut col = vec![0.0; conv::col_len(s, &r, s.n)];
    let mut y = vec![f32::NAN; s.cout * len_out];
    conv::conv_forward(&mut y, &x, &w, s, r.forward, &mut col);
    let (mut dx, mut dw) = (vec![f32::NAN; x.len()], vec![0.25; w.len()]);
    conv::conv_backward(Some(&mut dx), &mut dw, &dy, &x, &w, s, &r, &mut col);
    let mut out = vec![("y".into(), y), ("dx".into(), dx), ("dw".into(), dw)];
    // the weight gradient alone (the stem's: its own route where the table has one)
    let mut dw = vec![0.25; w.len()];
    conv::conv_backward(None, &mut dw, &dy, &x, &w, s, &r, &mut col);
    out.push(("dw alone".into(), dw));
    let scale: Vec<f32> = (0..s.cin).map(|i| 0.5 + (i % 5) as f32 * 0.2).collect();
    let shift: Vec<f32> = (0..s.cin).map(|i| (i % 3) as f32 * 0.1 - 0.1).collect();
    let bn = BnRelu::first(&scale, &shift, s.cin);
    let r = route::choose(s, Reads::BnRelu, true);
    if s.is_pointwise() {
        let mut y = vec![f32::NAN; s.cout * len_out];
        fused::forward(&mut y, &x, &w, bn, s.cout, len_in, r.forward);
        out.push(("fused 1×1 y".into(), y));
    } else if s.k == 3 && s.stride == 1 && s.pad == 1 {
        let mut tmp = vec![0.0; s.cin * len_in];
        let mut y = vec![f32::NAN; s.cout * len_out];
        fused::conv3x3_forward(&mut y, &x, bn, &w, s, r.forward, &mut col, &mut tmp);
        let (mut dx, mut dw) = (vec![f32::NAN; x.len()], vec![0.0; w.len()]);
        fused::conv3x3_backward(
            Some(&mut dx),
            &mut dw,
            &dy,
            &x,
            bn,
            &w,
            s,
            &r,
            &mut col,
            &mut tmp,
        );
        out.extend([
            ("fused 3×3 y".into(), y),
            ("fused 3×3 dx".into(), dx),
            ("fused 3×3 dw".into(), dw),
        ]);
    }
    out
}

/// One training step of `model` (a name or a JSON configuration): loss, logits, every
/// gradient, running statistics and the input gradient.
fn step_outputs(k: &'static Kernels, cfg: &ModelConfig, n: usize) -> Vec<(String, Vec<f32>)> {
    kernels::force(k);
    let mut net = AnyModel::new(cfg, 5);
    let mut rng = Rng::new(11);
    let table = net.param_table().clone();
    {
        let b = net.buffers_mut();
        // non-trivial BN parameters so that every path matters
        for e in table.entries() {
            if e.shape.len() == 1 {
                b.params[e.range()]
                    .iter_mut()
                    .for_each(|v| *v += 0.2 * rng.normal() as f32);
            }
        }
    }
    let s = cfg.input_size();
    let x = data(n * cfg.in_channels() * s * s, &mut rng);
    let y: Vec<u32> = (0..n).map(|i| (i % cfg.num_classes()) as u32).collect();
    let (ws, loss) = train_step(&mut *net, &x, &y, MemoryMode::Efficient, 3, 1.0);
    vec![
        ("loss".into(), vec![loss]),
        (
            "logits".into(),
            ws.logits()[..n * cfg.num_classes()].to_vec(),
        ),
        ("grads".into(), net.grads().to_vec()),
        ("running stats".into(), net.stats().to_vec()),
        ("input grad".into(), ws.input_grad()[..x.len()].to_vec()),
    ]
}

fn shape(
    n: usize,
    cin: usize,
    cout: usize,
    hw: (usize, usize),
    k: usize,
    stride: usize,
) -> ConvShape {
    ConvShape {
        n,
        cin,
        cout,
        h: hw.0,
        w: hw.1,
        k,
        stride,
        pad: k / 2,
    }
}

#[test]
fn fast_kernels_match_the_portable_ones() {
    let portable = kernels::portable();
    // every table this build knows is tested where the CPU runs it, and named where not
    let mut fast = Vec::new();
    for &name in kernels::NAMES.iter().filter(|&&n| n != portable.name) {
        match kernels::by_name(name) {
            // a table whose f32 kernels another one tested are (the bf16 tables: those
            // of `avx512`) is not tested twice
            Some(k) if fast.iter().any(|f: &&kernels::Kernels| f.isa == k.isa) => {}
            Some(k) => fast.push(k),
            None => say(&format!(
                "SKIPPED: the {name} kernels (this CPU lacks their instructions)"
            )),
        }
    }
    if fast.is_empty() {
        return;
    }
    let names: Vec<_> = fast.iter().map(|k| k.name).collect();
    say(&format!(
        "testing the {} kernels against the portable ones",
        names.join(" and ")
    ));
    let shapes = [
        // 1×1: odd input counts, outputs the direct kernel takes (4, 6, 12, 48, 20 = 12 + 8)
        // and does not (7, 130); batch 1
        shape(1, 7, 12, (5, 7), 1, 1),
        shape(2, 33, 48, (6, 6), 1, 1),
        shape(1, 19, 20, (3, 11), 1, 1),
        shape(3, 5, 6, (4, 4), 1, 1),
        shape(1, 13, 7, (5, 5), 1, 1),
        shape(1, 9, 130, (2, 3), 1, 1),
        // 3×3 stride 1: odd inputs (forward and dW only), even ones (dx too), odd outputs
        shape(1, 3, 24, (6, 5), 3, 1),
        shape(2, 9, 12, (7, 9), 3, 1),
        shape(1, 20, 16, (5, 6), 3, 1),
        shape(1, 12, 36, (1, 8), 3, 1),
        shape(2, 8, 5, (4, 4), 3, 1),
        // densenet121's ratio of inputs to outputs with enough tiles (4·8·8 = 256 of 2×2
        // outputs) that the forward and the input gradient go through Winograd F(2×2, 3×3)
        // (`winograd::preferred` on up to 4 threads); an odd width
        shape(4, 64, 32, (16, 15), 3, 1),
        // and through F(4×4, 3×3) (`winograd::tile`: 4·8·8 = 256 tiles of 4×4, covering
        // 32×32 of a 32×31 plane), the weight gradient too: the odd width leaves a last
        // tile of 3 columns
        shape(4, 64, 32, (32, 31), 3, 1),
        // small planes with densenet121's ratio, where the forward takes the route with
        // output channels in the vector (`broadcast::preferred`): an odd plane over three
        // samples, and 48 outputs (a whole number of AVX2 groups, 1½ AVX-512 ones)
        shape(3, 64, 32, (7, 7), 3, 1),
        shape(1, 64, 48, (14, 13), 3, 1),
        // stride 2 and the 7×7 stem: im2col, or a padded copy with output channels in
        // the vector (the stem's 64 outputs over 2 samples), the same answer
        shape(1, 6, 8, (9, 7), 3, 2),
        shape(1, 3, 8, (15, 15), 7, 2),
        shape(2, 3, 64, (23, 21), 7, 2),
    ];
    let small = |depth, k, bottleneck, init, drop, classes, channels| {
        let mut c = DenseNetConfig::cifar(depth, k, bottleneck, 0.5).unwrap();
        (c.init_features, c.drop_rate, c.num_classes) = (init, drop, classes);
        (c.in_channels, c.input_size) = (channels, 8);
        c.validate().unwrap();
        ModelConfig::from(c)
    };
    let models = [
        // BC with an odd stem (17) and growth 10: bottleneck 40 (direct), odd prefixes
        small(16, 10, true, 17, 0.0, 5, 3),
        // plain layers of growth 6 (3×3 with 6 outputs), dropout, one input channel
        small(13, 6, false, 9, 0.2, 4, 1),
        ModelConfig::from_name("densenet-bc-40-12").unwrap(),
        ModelConfig::from_name("preresnet-20").unwrap(),
    ];
    for &k in &fast {
        for s in &shapes {
            let want = conv_outputs(portable, s, 7);
            let got = conv_outputs(k, s, 7);
            for ((name, a), (_, b)) in got.iter().zip(&want) {
                close(&format!("{} {s:?} {name}", k.name), a, b, 1e-4);
            }
        }
        for model in &models {
            for n in [1, 3] {
                let want = step_outputs(portable, model, n);
                let got = step_outputs(k, model, n);
                let model = model.name();
                for ((name, a), (_, b)) in got.iter().zip(&want) {
                    close(&format!("{} {model} batch {n}: {name}", k.name), a, b, 1e-3);
                }
            }
        }
    }
    kernels::force(kernels::available()[0]);
}
