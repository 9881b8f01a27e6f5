//! Softmax cross-entropy with mean reduction (PyTorch's `F.cross_entropy`).

/// Returns the mean over the batch of `logsumexp(z_i) − z_i[y_i]` and writes
/// `dlogits = (softmax(z) − onehot(y)) / mean_over`. `logits` is `[N][classes]`;
/// `mean_over` is N, or the whole batch of a data-parallel step of which these N images are a share.
pub fn softmax_cross_entropy(
    dlogits: &mut [f32],
    logits: &[f32],
    labels: &[u32],
    classes: usize,
    mean_over: usize,
) -> f32 {
    let n = labels.len();
    assert!(
        mean_over >= n,
        "a share of {n} images of a batch of {mean_over}"
    );
    let mut total = 0f64;
    for (i, &y) in labels.iter().enumerate() {
        let z = &logits[i * classes..(i + 1) * classes];
        let max = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let sum: f64 = z.iter().map(|&v| ((v - max) as f64).exp()).sum();
        let lse = max as f64 + sum.ln();
        total += lse - z[y as usize] as f64;
        let d = &mut dlogits[i * classes..(i + 1) * classes];
        for (j, dv) in d.iter_mut().enumerate() {
            let p = ((z[j] as f64 - lse).exp()) as f32;
            *dv = (p - if j == y as usize { 1.0 } else { 0.0 }) / mean_over as f32;
        }
    }
    (total / n as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_and_gradient() {
        let logits = [1.0f32, 2.0, 3.0, 0.5, 0.5, 0.5];
        let mut d = [0.0; 6];
        let l = softmax_cross_entropy(&mut d, &logits, &[2, 0], 3, 2);
        let l0 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln() - 3.0;
        let l1 = (3.0f64).ln();
        assert!((l as f64 - (l0 + l1) / 2.0).abs() < 1e-6);
        // each row of the gradient sums to zero
        assert!((d[0] + d[1] + d[2]).abs() < 1e-7);
        assert!((d[3] - (1.0 / 3.0 - 1.0) / 2.0).abs() < 1e-6);
        // as a share of a batch of 4: the same loss, half the gradient
        let mut half = [0.0; 6];
        let l4 = softmax_cross_entropy(&mut half, &logits, &[2, 0], 3, 4);
        assert_eq!(l4, l);
        for (h, g) in half.iter().zip(d) {
            assert!((h - g / 2.0).abs() < 1e-7, "{h} vs {g}/2");
        }
    }
}
