//! Dropout with masks that are a pure function of (seed, site, element index).
//!
//! Storing a mask would cost memory in every layer; recomputing it costs a hash per element.
//! Because the mask depends only on its coordinates, the memory-efficient backward pass
//! recomputes exactly the mask the forward pass used, and a resumed run draws the same masks.

/// SplitMix64's finaliser: a cheap, well-mixed 64-bit hash.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Multiplies `x` in place by the inverted-dropout mask of `site`: each element is kept
/// with probability `1 − p` and scaled by `1/(1 − p)`, or zeroed.
pub fn apply(x: &mut [f32], p: f32, seed: u64, site: u64) {
    if p <= 0.0 {
        return;
    }
    let keep = 1.0 / (1.0 - p);
    let threshold = (p as f64 * (1u64 << 53) as f64) as u64;
    let base = mix64(seed ^ mix64(site.wrapping_add(0x9e37_79b9_7f4a_7c15)));
    for (i, v) in x.iter_mut().enumerate() {
        let r = mix64(base.wrapping_add(i as u64)) >> 11;
        *v = if r < threshold { 0.0 } else { *v * keep };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_reproducible_and_has_the_right_rate() {
        let mut a = vec![1.0f32; 100_000];
        let mut b = a.clone();
        apply(&mut a, 0.2, 7, 3);
        apply(&mut b, 0.2, 7, 3);
        assert_eq!(a, b);
        let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        assert!((dropped - 0.2).abs() < 0.01, "{dropped}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.25).abs() < 1e-6));
        let mut c = vec![1.0f32; 100_000];
        apply(&mut c, 0.2, 7, 4);
        assert_ne!(a, c, "another site draws another mask");
    }
}
