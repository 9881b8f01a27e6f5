//! The fully connected classifier on pooled features, forward and backward.
//!
//! Pooled features are channel-major like every activation, `x: [C][N]`; the weight is
//! PyTorch's `[J][C]` (J outputs), the bias `[J]`, and the output `y: [N][J]` (PyTorch's
//! logits layout). Both families' heads use it.

use crate::kernels::gemm::{sgemm, Mat};

/// `y[N×J] = xᵀ·Wᵀ + b`.
pub fn linear_forward(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: &[f32],
    n: usize,
    c: usize,
    j: usize,
) {
    let y = &mut y[..n * j];
    sgemm(
        n,
        j,
        c,
        y,
        j,
        false,
        Mat::t(&x[..c * n], n),
        Mat::t(&w[..j * c], c),
    );
    for row in y.chunks_mut(j) {
        row.iter_mut().zip(&b[..j]).for_each(|(v, b)| *v += b);
    }
}

/// Backward of [`linear_forward`]: `dW += dyᵀ·xᵀ`, `db += Σ_n dy` (accumulated), and
/// `dx[C×N] = Wᵀ·dyᵀ` (**overwritten**).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    c: usize,
    j: usize,
) {
    let dy = &dy[..n * j];
    sgemm(
        j,
        c,
        n,
        &mut dw[..j * c],
        c,
        true,
        Mat::t(dy, j),
        Mat::t(&x[..c * n], n),
    );
    for row in dy.chunks(j) {
        db[..j].iter_mut().zip(row).for_each(|(d, v)| *d += v);
    }
    sgemm(
        c,
        n,
        j,
        &mut dx[..c * n],
        n,
        false,
        Mat::t(&w[..j * c], c),
        Mat::t(dy, j),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_definition() {
        let (n, c, j) = (3, 4, 2);
        let x: Vec<f32> = (0..c * n).map(|i| i as f32 * 0.5 - 2.0).collect(); // [C][N]
        let w: Vec<f32> = (0..j * c).map(|i| (i as f32 - 3.0) * 0.25).collect();
        let b = [0.5, -1.0];
        let mut y = vec![0.0; n * j];
        linear_forward(&mut y, &x, &w, &b, n, c, j);
        for ni in 0..n {
            for o in 0..j {
                let want: f32 = (0..c).map(|ci| x[ci * n + ni] * w[o * c + ci]).sum::<f32>() + b[o];
                assert!((y[ni * j + o] - want).abs() < 1e-5);
            }
        }
        // loss = Σ dy·y is linear: its gradients are exact
        let dy: Vec<f32> = (0..n * j).map(|i| 1.0 - i as f32 * 0.3).collect();
        let (mut dx, mut dw, mut db) = (vec![9.0; c * n], vec![1.0; j * c], vec![0.0; j]);
        linear_backward(&mut dx, &mut dw, &mut db, &dy, &x, &w, n, c, j);
        for ci in 0..c {
            for ni in 0..n {
                let want: f32 = (0..j).map(|o| w[o * c + ci] * dy[ni * j + o]).sum();
                assert!((dx[ci * n + ni] - want).abs() < 1e-5, "dx overwritten");
            }
            for o in 0..j {
                let want: f32 = 1.0
                    + (0..n)
                        .map(|ni| dy[ni * j + o] * x[ci * n + ni])
                        .sum::<f32>();
                assert!((dw[o * c + ci] - want).abs() < 1e-5, "dw accumulated");
            }
        }
        assert!((db[0] - (dy[0] + dy[2] + dy[4])).abs() < 1e-6);
    }
}
