//! Winograd's tests: every tile size and gradient against im2col, and the switch.

use super::weights::weights_f4;
use super::*;
use crate::kernels;
use crate::kernels::testutil::{close, data, say, shape3x3 as shape};
use crate::ops::conv::{im2col_backward, im2col_forward};

/// Says SKIPPED (the `kind` kernel missing) and returns true where the active table
/// has no direct kernels.
fn skipped(kind: &str) -> bool {
    let name = kernels::active().name;
    let none = kernels::active().direct.is_none();
    if none {
        say(&format!(
            "SKIPPED: the {name} kernels have no {kind} kernel"
        ));
    }
    none
}

/// `relu(x·scale + shift)` per channel row of `len` with `bn`, else `x`.
fn bn_relu(x: &[f32], bn: Option<BnRelu>, len: usize) -> Vec<f32> {
    match bn {
        None => x.to_vec(),
        Some(b) => x
            .chunks(len)
            .enumerate()
            .flat_map(|(c, row)| {
                row.iter()
                    .map(move |v| (v * b.scale[c] + b.shift[c]).max(0.0))
            })
            .collect(),
    }
}

/// The F(4×4, 3×3) weight gradient against im2col's (itself tested against a naive
/// convolution in `conv`), added onto a gradient already there: odd and even sizes,
/// 1-row and 1-column images, tile rows that cross tasks, output counts of one and
/// more vectors, with and without a BN-ReLU, one sample per chunk and all in one.
#[test]
fn weight_gradient_matches_im2col() {
    if skipped("outer-product") {
        return;
    }
    let shapes = [
        shape(2, 8, 16, 5, 7),
        shape(1, 12, 32, 9, 6),
        shape(3, 16, 16, 1, 11),
        shape(2, 4, 32, 13, 1),
        shape(2, 20, 48, 14, 13),
        shape(1, 32, 32, 28, 28),
    ];
    for s in shapes {
        let len = s.n * s.h * s.w;
        let x = data(s.cin * len, 1);
        let dy = data(s.cout * len, 3);
        let w = data(s.cout * s.col_rows(), 2);
        let (scale, shift) = (data(s.cin, 4), data(s.cin, 5));
        let start = data(w.len(), 6);
        let mut big = vec![0.0; (s.cin * 9) * len];
        for with_bn in [false, true] {
            let bn = with_bn.then_some(BnRelu {
                scale: &scale,
                shift: &shift,
            });
            let input = bn_relu(&x, bn, len);
            let mut want = start.clone();
            im2col_backward(None, &mut want, &dy, &input, &w, &s, &mut big);
            for samples in [1, s.n] {
                let mut col = vec![f32::NAN; s.cin * Split::new(&s, 4).chan(samples)];
                let mut dw = start.clone();
                assert!(weights_f4(&mut dw, &dy, &x, bn, &s, &mut col), "{s:?}");
                close(
                    &dw,
                    &want,
                    &format!("{s:?} dW bn {with_bn} samples {samples}"),
                );
            }
        }
    }
}

#[test]
fn env_values() {
    for on in [None, Some(""), Some("on"), Some(" 1 "), Some("true")] {
        assert!(parse_env(on).unwrap(), "{on:?}");
    }
    for off in ["off", "0", "false"] {
        assert!(!parse_env(Some(off)).unwrap(), "{off}");
    }
    let e = parse_env(Some("fast")).unwrap_err().to_string();
    assert!(
        e.contains("DENSENET_WINOGRAD=fast") && e.contains("on or off"),
        "{e}"
    );
}

/// Against im2col + GEMM (itself tested against a naive convolution in `conv`): odd
/// and even sizes, 1-row and 1-column images, rows long enough for the vector split
/// and a remainder, tile rows that cross tasks (7×7 has 4
/// tiles a row, 9×9 has 5), blocks of 6 and of 4 outputs, with and without a BN-ReLU,
/// one sample per chunk and the whole batch in one.
#[test]
fn winograd_matches_im2col() {
    if skipped("one-tap") {
        return;
    }
    let shapes = [
        shape(2, 4, 4, 5, 7),
        shape(3, 8, 12, 9, 6),
        shape(1, 4, 8, 1, 11),
        shape(2, 12, 4, 13, 1),
        shape(3, 16, 32, 7, 7),
        shape(2, 20, 16, 14, 14),
        shape(1, 3, 24, 9, 9),
        shape(1, 32, 36, 28, 28),
        // rows split 4 (F(4×4)) or 8 (F(2×2)) columns at a time, with 3 or 1 left
        shape(2, 4, 8, 3, 35),
    ];
    for s in shapes {
        assert!(applies(&s), "{s:?}");
        let x = data(s.cin * s.n * s.h * s.w, 1);
        let w = data(s.cout * s.col_rows(), 2);
        let scale = data(s.cin, 4);
        let shift = data(s.cin, 5);
        let mut big = vec![0.0; (s.cin * 9) * s.n * s.h * s.w];
        for with_bn in [false, true] {
            let bn = with_bn.then_some(BnRelu {
                scale: &scale,
                shift: &shift,
            });
            let input = bn_relu(&x, bn, s.n * s.h * s.w);
            let mut want = vec![0.0; s.cout * s.n * s.h * s.w];
            im2col_forward(&mut want, &input, &w, &s, &mut big);
            for (samples, r) in [1, s.n].into_iter().flat_map(|n| [(n, 2), (n, 4)]) {
                let mut col = vec![f32::NAN; s.cin * Split::new(&s, r).chan(samples)];
                let mut y = vec![f32::NAN; want.len()];
                assert!(forward_in_tiles(&mut y, &x, bn, &w, &s, r, &mut col));
                let what = format!("{s:?} F({r}×{r}) bn {with_bn} samples {samples}");
                close(&y, &want, &what);
            }
        }
        // the input gradient, against im2col's backward (its dw discarded); the one-tap
        // kernel does not take 3 outputs
        let ds = data_shape(&s);
        if !applies(&ds) {
            assert_eq!(s.cin, 3);
            continue;
        }
        let dy = data(s.cout * s.n * s.h * s.w, 3);
        let mut want = vec![0.0; x.len()];
        let mut dw = vec![0.0; w.len()];
        im2col_backward(Some(&mut want), &mut dw, &dy, &x, &w, &s, &mut big);
        for (samples, r) in [1, s.n].into_iter().flat_map(|n| [(n, 2), (n, 4)]) {
            let mut col = vec![f32::NAN; ds.cin * Split::new(&ds, r).chan(samples)];
            let mut dx = vec![f32::NAN; x.len()];
            assert!(backward_data_in_tiles(&mut dx, &dy, &w, &s, r, &mut col));
            close(
                &dx,
                &want,
                &format!("{s:?} F({r}×{r}) dx samples {samples}"),
            );
        }
        // and through the public entry, on the tile it picks
        let mut col = vec![f32::NAN; scratch_len(&ds, s.n)];
        let mut dx = vec![f32::NAN; x.len()];
        assert!(backward_data(&mut dx, &dy, &w, &s, &mut col));
        close(&dx, &want, &format!("{s:?} dx"));
    }
    // too little scratch for one sample: nothing done (and in backward_weights)
    let s4 = shape(1, 4, 16, 6, 6);
    let mut col = vec![0.0; s4.cin * Split::new(&s4, 4).chan(1) - 1];
    let mut dw = vec![1.0; 16 * 4 * 9];
    let (dy, x) = (data(16 * 36, 3), data(4 * 36, 1));
    assert!(!weights_f4(&mut dw, &dy, &x, None, &s4, &mut col));
    assert!(dw.iter().all(|&v| v == 1.0));
    let s = shape(1, 4, 4, 6, 6);
    let mut col = vec![0.0; s.cin * Split::new(&s, tile(&s)).chan(1) - 1];
    let mut y = vec![1.0; 4 * 36];
    assert!(!forward(
        &mut y,
        &data(4 * 36, 1),
        None,
        &data(144, 2),
        &s,
        &mut col
    ));
    assert!(y.iter().all(|&v| v == 1.0));
}
