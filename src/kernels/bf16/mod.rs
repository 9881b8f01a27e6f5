//! bfloat16 products (`--precision bf16`): the conversions, the pair layout that
//! `vdpbf16ps` and AMX's `tdpbf16ps` read, the product `Y = Σ_t W_t·X[· + tap_t]` in that
//! layout on AVX512-BF16 or AMX ([`amx`]), and a portable reference. Which one runs is the
//! kernels table's [`Products`] entry (`avx512bf16`, `amx`; the other tables run the
//! reference).
//!
//! **The arithmetic** is PyTorch's CPU autocast: both operands rounded to bf16 (round to
//! nearest even), products and sums in f32. A product of two bf16 values is exact in
//! f32 (8 + 8 significant bits), so the result differs from the reference only by the
//! order and rounding of the f32 sums.
//!
//! **The layout.** `vdpbf16ps` multiplies the two bf16 halves of each 32-bit lane of one
//! operand by those of the other and adds both products to the f32 lane. Input channels
//! therefore come in pairs: a pair of rows `2j, 2j + 1` of `X: [I][len]` becomes one row
//! of `len` 32-bit words, `(x[2j][p], x[2j+1][p])` in word `p` ([`pack_pairs`]), and a
//! weight row the same over its input channels ([`pack_weight_pairs`]). An odd channel
//! count gets a zero channel. AMX reads the same input rows as whole tiles of 16 pairs ×
//! 16 positions, and W packed into tiles ([`Products::pack_weights`]).
//!
//! At `--precision bf16`, [`crate::ops::route`] sends evaluation's 1×1 convolutions here
//! (`Route::PointwiseBf16`), and on AMX its 3×3s and its stem too (`Route::Conv3x3Bf16`,
//! `Route::Im2colBf16`; [`crate::ops::bf16`] forms their inputs). `cargo bench --bench
//! bf16` sets each kernel's speed against the f32 pointwise kernel.

pub mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;

/// `v` rounded to bfloat16, to nearest even (NaN stays NaN, quiet), as PyTorch's
/// `tensor.to(torch.bfloat16)` and `vcvtne2ps2bf16` round.
pub fn to_bf16(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        return ((b >> 16) as u16) | 0x40;
    }
    // add half an ulp of bf16, plus one where the kept part is odd (ties to even)
    let round = 0x7fff + ((b >> 16) & 1);
    (b.wrapping_add(round) >> 16) as u16
}

/// The f32 value of the bfloat16 `h` (exact).
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Pairs of channels: `ceil(channels / 2)`.
pub fn pairs(channels: usize) -> usize {
    channels.div_ceil(2)
}

/// One 32-bit word of the pair layout: `lo` in the low half (the even channel).
fn word(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | (to_bf16(hi) as u32) << 16
}

/// `x: [I][len]` (f32) into the pair layout `dst: [ceil(I/2)][len]` of 32-bit words, bf16
/// channel `2j` in the low half of row `j`'s words and `2j + 1` in the high half (zero
/// where `I` is odd); always the portable loop ([`Pair::form_portable`]), as tests'
/// reference for the vector former.
pub fn pack_pairs(dst: &mut [u32], x: &[f32], i_n: usize, len: usize) {
    assert!(x.len() >= i_n * len && dst.len() >= pairs(i_n) * len);
    for (j, row) in dst.chunks_exact_mut(len).take(pairs(i_n)).enumerate() {
        let pair = Pair::of(j, i_n, None);
        let at = |c: usize| &x[c * len..][..len];
        pair.form_portable(row, at(2 * j), pair.odd.then(|| at(2 * j + 1)));
    }
}

/// `w: [O][I][taps]` (f32, PyTorch's OIHW) into `dst: [O][taps][ceil(I/2)]` words, input
/// channels paired as [`pack_pairs`] pairs them (a zero channel past an odd `I`).
pub fn pack_weight_pairs(dst: &mut [u32], w: &[f32], o_n: usize, i_n: usize, taps: usize) {
    let ip = pairs(i_n);
    assert!(w.len() >= o_n * i_n * taps && dst.len() >= o_n * taps * ip);
    let at = |o: usize, i: usize, t: usize| {
        if i < i_n {
            w[(o * i_n + i) * taps + t]
        } else {
            0.0
        }
    };
    for (k, d) in dst[..o_n * taps * ip].iter_mut().enumerate() {
        let (o, t, j) = (k / (taps * ip), k / ip % taps, k % ip);
        *d = word(at(o, 2 * j, t), at(o, 2 * j + 1, t));
    }
}

/// The portable reference: `y[o][p] = Σ_j w2[o][j]·x2[j][p]` over the pairs `j` (each
/// pair's two exact products added in f32, low half first), `y: [O][len]` overwritten,
/// `w2: [O][ip]`, `x2: [ip][len]` in the pair layout.
pub fn pointwise_reference(
    y: &mut [f32],
    w2: &[u32],
    x2: &[u32],
    o_n: usize,
    ip: usize,
    len: usize,
) {
    assert!(y.len() >= o_n * len && w2.len() >= o_n * ip && x2.len() >= ip * len);
    // SAFETY: the sizes are asserted above
    unsafe {
        reference_ptr(
            y.as_mut_ptr(),
            (len, len),
            w2,
            x2.as_ptr(),
            &[0],
            (o_n, ip, len),
        )
    }
}

/// [`pointwise_reference`] over `taps` (offsets of X, in words) on `n` positions of rows
/// `ldy` (Y) and `ldx` (X) floats apart; W's rows `taps.len()·ip` words, tap-major.
///
/// # Safety
/// `y` must hold `o_n` rows of `ldy ≥ n` floats that nobody else touches meanwhile;
/// for every tap, `x2 + taps[t]` starts `ip` rows of `ldx ≥ n` words; `w2` holds
/// `o_n·taps.len()·ip` words.
unsafe fn reference_ptr(
    y: *mut f32,
    (ldy, ldx): (usize, usize),
    w2: &[u32],
    x2: *const u32,
    taps: &[isize],
    (o_n, ip, n): (usize, usize, usize),
) {
    let kw = taps.len() * ip;
    for o in 0..o_n {
        // SAFETY: row o of y holds n floats (the caller's contract)
        let out = unsafe { std::slice::from_raw_parts_mut(y.add(o * ldy), n) };
        out.fill(0.0);
        for (t, &off) in taps.iter().enumerate() {
            for j in 0..ip {
                let wv = w2[o * kw + t * ip + j];
                let (w0, w1) = (half(wv, false), half(wv, true));
                // SAFETY: the caller's contract
                let row = unsafe { std::slice::from_raw_parts(x2.offset(off).add(j * ldx), n) };
                for (d, &xv) in out.iter_mut().zip(row) {
                    *d += w0 * half(xv, false) + w1 * half(xv, true);
                }
            }
        }
    }
}

/// What runs the bf16 products: one entry of the kernels table ([`super::Kernels::bf16`]),
/// with the weight packing and the tile shape its kernel reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Products {
    /// [`pointwise_reference`]: f32 arithmetic on bf16 operands, any CPU (slow).
    Reference,
    /// The `vdpbf16ps` register-blocked kernel (this file's `avx512` module).
    Avx512Bf16,
    /// AMX `tdpbf16ps` tiles ([`amx`]).
    Amx,
}

impl Products {
    /// The active table's ([`super::active`]).
    pub fn active() -> Products {
        super::active().bf16
    }

    /// Whether these run on the CPU's bf16 instructions (not the slow reference).
    pub fn is_vector(self) -> bool {
        self != Products::Reference
    }

    /// Whether this CPU runs this kernel (the reference everywhere; AMX where Linux
    /// granted the tile state too).
    pub fn runs(self) -> bool {
        match self {
            Products::Reference => true,
            Products::Avx512Bf16 => avx512bf16(),
            Products::Amx => amx::available(),
        }
    }

    /// Words of `W: [O][I][taps]` packed for this kernel ([`Products::pack_weights`]).
    pub fn weight_len(self, o_n: usize, i_n: usize, taps: usize) -> usize {
        match self {
            Products::Amx => amx::weight_tiles_len(o_n, i_n, taps),
            _ => o_n * taps * pairs(i_n),
        }
    }

    /// `w: [O][I][taps]` (PyTorch's OIHW) packed for this kernel: [`pack_weight_pairs`]'
    /// `[O][taps][ceil(I/2)]` pair words, or whole AMX tiles ([`amx::pack_weight_tiles`]).
    pub fn pack_weights(self, dst: &mut [u32], w: &[f32], o_n: usize, i_n: usize, taps: usize) {
        match self {
            Products::Amx => amx::pack_weight_tiles(dst, w, o_n, i_n, taps),
            _ => pack_weight_pairs(dst, w, o_n, i_n, taps),
        }
    }

    /// Pair rows of an input tile of `i_n` channels: its pairs, rounded up to whole AMX
    /// tiles (16) for AMX.
    pub fn tile_rows(self, i_n: usize) -> usize {
        match self {
            Products::Amx => amx::k_pairs(i_n),
            _ => pairs(i_n),
        }
    }

    /// Words that a row of an input tile of `n` positions must hold from each tap's start
    /// (a multiple of 16 for AMX, which reads whole tiles).
    pub fn tile_ld(self, n: usize) -> usize {
        match self {
            Products::Amx => n.div_ceil(16) * 16,
            _ => n,
        }
    }

    /// Output rows that a split of the rows keeps together (a register block, an AMX tile).
    pub fn row_block(self) -> usize {
        match self {
            Products::Amx => 16,
            _ => 4,
        }
    }

    /// Zeros in an input tile `x2` (`tile_rows(i_n)` rows of `ld` words) where its former
    /// wrote nothing: past position `n` of its pair rows and the rows past the pairs,
    /// which the AMX kernel reads (0 · a finite weight; an uninitialised NaN would spread).
    pub fn pad_tile(self, x2: &mut [u32], ld: usize, i_n: usize, n: usize) {
        if self != Products::Amx {
            return;
        }
        let (ip, rows) = (pairs(i_n), self.tile_rows(i_n));
        for (j, row) in x2.chunks_exact_mut(ld).take(rows).enumerate() {
            let from = if j < ip { n } else { 0 };
            row[from..].fill(0);
        }
    }

    /// Rows `o0..o1` (`o0` a multiple of [`Products::row_block`]) of
    /// `y[o][p] = Σ_t Σ_i W[o][i][t]·X[i][x0 + p + taps[t]]` in bf16 with f32 sums, over
    /// `n` positions: `wp` is W packed by [`Products::pack_weights`] for `i_n` inputs and
    /// `taps.len()` taps, `x2` input pairs in [`Products::tile_rows`] rows of `ldx` words
    /// (padded as [`Products::pad_tile`] pads), `y` rows of `ldy` floats (row 0 at `y`).
    /// A 1×1 has the one tap 0; a 3×3 on a zero-padded plane the 9 offsets of its window.
    ///
    /// # Safety
    /// `y`'s rows `o0..o1` hold `n` floats that nobody else touches meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn product(
        self,
        y: *mut f32,
        ldy: usize,
        wp: &[u32],
        (x2, x0, ldx): (&[u32], usize, usize),
        taps: &[isize],
        (o0, o1): (usize, usize),
        i_n: usize,
        n: usize,
    ) {
        let (rows, ip) = (self.tile_rows(i_n), pairs(i_n));
        assert!(o0 <= o1 && o0.is_multiple_of(self.row_block()) && ldx >= n);
        assert!(wp.len() >= self.weight_len(o1, i_n, taps.len()));
        // every word read lies inside x2
        for &t in taps {
            let start = x0 as isize + t;
            let end = start + (rows.max(1) as isize - 1) * ldx as isize + self.tile_ld(n) as isize;
            assert!(
                start >= 0 && end <= x2.len() as isize,
                "bf16 product: tap {t} reads outside X"
            );
        }
        // SAFETY: x0 lies inside x2 (asserted above)
        let xp = unsafe { x2.as_ptr().add(x0) };
        match self {
            #[cfg(target_arch = "x86_64")]
            Products::Amx => {
                assert!(self.runs());
                // SAFETY: checked above; the caller's contract
                unsafe { amx::product(y, ldy, wp.as_ptr(), xp, ldx, taps, (o0, o1), rows, n) }
            }
            #[cfg(target_arch = "x86_64")]
            Products::Avx512Bf16 => {
                assert!(self.runs());
                // SAFETY: checked above; the caller's contract
                unsafe {
                    let (y, w) = (y.add(o0 * ldy), wp.as_ptr().add(o0 * taps.len() * ip));
                    avx512::product(y, ldy, w, xp, ldx, taps, o1 - o0, ip, n)
                }
            }
            _ => {
                let w = &wp[o0 * taps.len() * ip..];
                // SAFETY: checked above; the caller's contract
                unsafe { reference_ptr(y.add(o0 * ldy), (ldy, ldx), w, xp, taps, (o1 - o0, ip, n)) }
            }
        }
    }
}

/// Whether this CPU has the instructions of the AVX512-BF16 kernel and tile former.
pub fn avx512bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The bf16 half of a pair word `v` as f32: the high (odd channel) or low one.
fn half(v: u32, hi: bool) -> f32 {
    from_bf16(if hi { (v >> 16) as u16 } else { v as u16 })
}

/// The pair layout of `relu(x·scale + shift)` at positions `a..b` of `x: [I][len]`
/// (`scale`, `shift`: `[I]`), into `dst: [ceil(I/2)][ld]` words, `ld ≥ b − a`: the fused
/// BN-ReLU's tile, formed and rounded in one pass.
#[allow(clippy::too_many_arguments)]
pub fn bn_relu_pairs(
    dst: &mut [u32],
    ld: usize,
    x: &[f32],
    len: usize,
    scale: &[f32],
    shift: &[f32],
    a: usize,
    b: usize,
) {
    let (i_n, n) = (scale.len(), b - a);
    assert!(shift.len() == i_n && x.len() >= i_n * len && b <= len && ld >= n);
    assert!(dst.len() >= pairs(i_n) * ld);
    affine_pairs(dst, ld, x, len, i_n, Some((scale, shift)), a, b)
}

/// [`bn_relu_pairs`] of a stored input as it is (no BN-ReLU): positions `a..b` of
/// `x: [i_n][len]` as bf16 channel pairs in `dst: [ceil(i_n/2)][ld]`.
pub fn stored_pairs(
    dst: &mut [u32],
    ld: usize,
    x: &[f32],
    i_n: usize,
    len: usize,
    a: usize,
    b: usize,
) {
    let n = b - a;
    assert!(x.len() >= i_n * len && b <= len && ld >= n && dst.len() >= pairs(i_n) * ld);
    affine_pairs(dst, ld, x, len, i_n, None, a, b)
}

/// [`bn_relu_pairs`] (`bn` given) or [`stored_pairs`] (`None`) of `i_n` channels.
#[allow(clippy::too_many_arguments)]
fn affine_pairs(
    dst: &mut [u32],
    ld: usize,
    x: &[f32],
    len: usize,
    i_n: usize,
    bn: Option<(&[f32], &[f32])>,
    a: usize,
    b: usize,
) {
    let n = b - a;
    for j in 0..pairs(i_n) {
        // the next pair's rows, as [`super::BnRelu::fill`] asks for the rows two channels
        // on (densenet121 at --precision bf16, Xeon with AMX, 2 threads, alternating runs:
        // batch 16 0.95–0.97 of the time without, batch 1 0.95–0.98)
        for c in [2 * j + 2, 2 * j + 3] {
            if c < i_n {
                super::prefetch(x[c * len + a..].as_ptr(), n);
            }
        }
        let pair = Pair::of(j, i_n, bn);
        let row = |c: usize| &x[c * len + a..][..n];
        pair.form(
            &mut dst[j * ld..][..n],
            row(2 * j),
            pair.odd.then(|| row(2 * j + 1)),
        );
    }
}

/// One pair of channels `2j, 2j + 1` and their BN-ReLU (or none: a stored input), as a
/// tile former rounds them ([`Pair::form`]).
#[derive(Clone, Copy, Debug)]
pub struct Pair {
    /// Whether the odd channel exists (not the zero channel of an odd count).
    odd: bool,
    /// `[scale, shift]` of the even and the odd channel, where a BN-ReLU applies.
    bn: Option<[f32; 4]>,
}

impl Pair {
    /// Pair `j` of `i_n` channels, with the BN-ReLU of `bn = (scale, shift)` where given.
    pub fn of(j: usize, i_n: usize, bn: Option<(&[f32], &[f32])>) -> Pair {
        let (c0, c1) = (2 * j, 2 * j + 1);
        let odd = c1 < i_n;
        let bn = bn.map(|(scale, shift)| {
            // the odd channel of an odd count is a zero channel: scale and shift 0
            let (s1, t1) = if odd {
                (scale[c1], shift[c1])
            } else {
                (0.0, 0.0)
            };
            [scale[c0], shift[c0], s1, t1]
        });
        Pair { odd, bn }
    }

    /// Whether this is a pair of channels (not one and the zero channel).
    pub fn has_odd(&self) -> bool {
        self.odd
    }

    /// `dst[p] = (f(lo[p]), f(hi[p]))` rounded to bf16 pair words, `f` the BN-ReLU (or
    /// nothing), `hi` `None` for the zero channel; on AVX512-BF16 where the active table's
    /// products are vector ones, else [`Pair::form_portable`].
    pub fn form(&self, dst: &mut [u32], lo: &[f32], hi: Option<&[f32]>) {
        let n = dst.len();
        assert!(lo.len() >= n && hi.is_none_or(|h| h.len() >= n) && hi.is_some() == self.odd);
        #[cfg(target_arch = "x86_64")]
        if Products::active().is_vector() {
            let affine = match self.bn {
                Some(c) => Some(c),
                None => (!self.odd).then_some([1.0, 0.0, 0.0, 0.0]),
            };
            // SAFETY: the vector tables are only active where the CPU has AVX512-BF16;
            // lo, hi (lo itself for the zero channel, scaled by 0) and dst hold n
            unsafe {
                avx512::pairs(
                    dst.as_mut_ptr(),
                    lo.as_ptr(),
                    hi.unwrap_or(lo).as_ptr(),
                    affine,
                    self.bn.is_some(),
                    n,
                )
            };
            return;
        }
        self.form_portable(dst, lo, hi)
    }

    /// [`Pair::form`] in plain Rust, one value at a time ([`to_bf16`]'s rounding).
    pub fn form_portable(&self, dst: &mut [u32], lo: &[f32], hi: Option<&[f32]>) {
        let f = |v: f32, s: f32, t: f32| match self.bn {
            Some(_) => (v * s + t).max(0.0),
            None => v,
        };
        let c = self.bn.unwrap_or([1.0, 0.0, 1.0, 0.0]);
        match hi {
            Some(hi) => {
                for ((d, &u), &v) in dst.iter_mut().zip(lo).zip(hi) {
                    *d = word(f(u, c[0], c[1]), f(v, c[2], c[3]));
                }
            }
            None => {
                for (d, &u) in dst.iter_mut().zip(lo) {
                    *d = word(f(u, c[0], c[1]), 0.0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::data;

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2^-8 is halfway between 1 and the next bf16 (1 + 2^-7): ties go to even (1)
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), to_bf16(1.0));
        // just above halfway rounds up
        let up = f32::from_bits((1.0f32 + 1.0 / 256.0).to_bits() + 1);
        assert_eq!(from_bf16(to_bf16(up)), 1.0 + 1.0 / 128.0);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): up
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 1.0 / 64.0);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        // the largest finite f32 rounds to infinity in bf16, as PyTorch's does
        assert_eq!(from_bf16(to_bf16(f32::MAX)), f32::INFINITY);
    }

    #[test]
    fn packing_pairs_channels_and_pads_an_odd_one() {
        let x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]; // 3 channels of 2 positions
        let mut d = [0u32; 4];
        pack_pairs(&mut d, &x, 3, 2);
        let halves: Vec<(f32, f32)> = d
            .iter()
            .map(|&v| (from_bf16(v as u16), from_bf16((v >> 16) as u16)))
            .collect();
        assert_eq!(halves, [(1.0, 3.0), (2.0, 4.0), (5.0, 0.0), (6.0, 0.0)]);
    }

    /// The reference against f64 sums of the bf16-rounded operands.
    #[test]
    fn reference_is_the_product_of_rounded_operands() {
        let (o_n, i_n, len) = (3, 5, 7);
        let w = data(o_n * i_n, 1);
        let x = data(i_n * len, 2);
        let (mut w2, mut x2) = (vec![0; o_n * pairs(i_n)], vec![0; pairs(i_n) * len]);
        pack_weight_pairs(&mut w2, &w, o_n, i_n, 1);
        pack_pairs(&mut x2, &x, i_n, len);
        let mut y = vec![0f32; o_n * len];
        pointwise_reference(&mut y, &w2, &x2, o_n, pairs(i_n), len);
        let r = |v: f32| from_bf16(to_bf16(v)) as f64;
        for o in 0..o_n {
            for p in 0..len {
                let want: f64 = (0..i_n)
                    .map(|i| r(w[o * i_n + i]) * r(x[i * len + p]))
                    .sum();
                let got = y[o * len + p] as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{o},{p}: {got} vs {want}"
                );
                // and it is not the f32 product: bf16 rounding shows
            }
        }
        let exact: f64 = (0..i_n).map(|i| w[i] as f64 * x[i * len] as f64).sum();
        assert!(
            (y[0] as f64 - exact).abs() > 1e-6,
            "the operands were not rounded"
        );
    }

    /// The fused tile against the BN-ReLU and rounding done one value at a time, bit for
    /// bit: odd channel counts (a zero channel), a window `a..b` off the vector, ties.
    #[test]
    fn bn_relu_pairs_round_each_value_as_to_bf16() {
        let (i_n, len, a, b) = (5, 41, 3, 38);
        // values with ties at bf16 precision (1 + 2^-8 scaled) and negatives for the ReLU
        let x: Vec<f32> = (0..i_n * len)
            .map(|k| (1.0 + (k % 3) as f32 / 256.0) * ((k % 11) as f32 - 4.0))
            .collect();
        let scale = [1.0f32, 0.5, 2.0, 1.5, 0.25];
        let shift = [0.0f32, 0.125, -1.0, 0.5, 0.0];
        let n = b - a;
        let mut got = vec![0u32; pairs(i_n) * n];
        bn_relu_pairs(&mut got, n, &x, len, &scale, &shift, a, b);
        let f = |i: usize, p: usize| (x[i * len + p] * scale[i] + shift[i]).max(0.0);
        for j in 0..pairs(i_n) {
            for p in a..b {
                let hi = if 2 * j + 1 < i_n {
                    f(2 * j + 1, p)
                } else {
                    0.0
                };
                let want = to_bf16(f(2 * j, p)) as u32 | (to_bf16(hi) as u32) << 16;
                assert_eq!(got[j * n + p - a], want, "pair {j}, position {p}");
            }
        }
        // a stored input as it is: negatives kept, the odd channel's partner zero
        bn_relu_pairs(&mut got, n, &x, len, &scale, &shift, a, b);
        stored_pairs(&mut got, n, &x, i_n, len, a, b);
        for j in 0..pairs(i_n) {
            for p in a..b {
                let hi = if 2 * j + 1 < i_n {
                    x[(2 * j + 1) * len + p]
                } else {
                    0.0
                };
                let want = to_bf16(x[2 * j * len + p]) as u32 | (to_bf16(hi) as u32) << 16;
                assert_eq!(got[j * n + p - a], want, "stored: pair {j}, position {p}");
            }
        }
    }

    /// Each bf16 kernel this CPU runs against the reference, through the packing and the
    /// padded tile it reads: odd channel counts, rows off the register block and the
    /// tile, positions off the vector, a window of output rows, a tile wider than its
    /// positions.
    #[test]
    fn each_kernel_matches_the_reference() {
        for p in [Products::Avx512Bf16, Products::Amx] {
            if !p.runs() {
                eprintln!("SKIPPED: this CPU has no {p:?}");
                continue;
            }
            for (o_n, i_n, len) in [
                (1, 1, 1),
                (4, 2, 16),
                (5, 3, 17),
                (32, 128, 49),
                (7, 63, 196),
                (128, 64, 65),
                (48, 40, 33),
                (40, 96, 64),
            ] {
                check_kernel(p, o_n, i_n, len);
            }
        }
    }

    /// Each kernel's sum over taps (the 3×3's offsets into zero-padded planes) against the
    /// reference's: negative and positive offsets, odd channels, a row window.
    #[test]
    fn each_kernel_sums_over_taps_as_the_reference() {
        let taps: [isize; 4] = [-7, -1, 0, 9];
        for p in [Products::Avx512Bf16, Products::Amx] {
            if !p.runs() {
                eprintln!("SKIPPED: this CPU has no {p:?}");
                continue;
            }
            for (o_n, i_n, n) in [(32, 128, 61), (13, 33, 40), (40, 7, 100)] {
                let (x0, ld) = (7, 7 + p.tile_ld(n) + 9 + 16);
                let w = data(o_n * i_n * taps.len(), 5);
                let x = data(i_n * ld, 6);
                let mut x2 = vec![0; p.tile_rows(i_n) * ld];
                pack_pairs(&mut x2, &x, i_n, ld);
                // the reference's weights: [O][taps][ip] pairs
                let ip = pairs(i_n);
                let mut w2 = vec![0; o_n * taps.len() * ip];
                pack_weight_pairs(&mut w2, &w, o_n, i_n, taps.len());
                let mut want = vec![0f32; o_n * n];
                // SAFETY: every tap's rows lie inside x2 (x0 − 7 ≥ 0, x0 + 9 + n ≤ ld)
                unsafe {
                    let xp = x2.as_ptr().add(x0);
                    reference_ptr(want.as_mut_ptr(), (n, ld), &w2, xp, &taps, (o_n, ip, n))
                };
                let mut wp = vec![0; p.weight_len(o_n, i_n, taps.len())];
                p.pack_weights(&mut wp, &w, o_n, i_n, taps.len());
                let mut got = vec![f32::NAN; o_n * n];
                // SAFETY: got holds o_n rows of n
                unsafe {
                    p.product(
                        got.as_mut_ptr(),
                        n,
                        &wp,
                        (&x2, x0, ld),
                        &taps,
                        (0, o_n),
                        i_n,
                        n,
                    )
                };
                for (k, (&g, &r)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - r).abs() <= 1e-4 * (r.abs() + 1.0),
                        "{p:?} {o_n}×{i_n}×{n} at {k}: {g} vs {r}"
                    );
                }
            }
        }
    }

    /// [`Products::product`] of `p` against the reference on one shape: all rows, then the
    /// rows from the second row block on.
    fn check_kernel(p: Products, o_n: usize, i_n: usize, len: usize) {
        let w = data(o_n * i_n, 3);
        let x = data(i_n * len, 4);
        let ip = pairs(i_n);
        let (mut w2, mut x2) = (vec![0; o_n * ip], vec![0; ip * len]);
        pack_weight_pairs(&mut w2, &w, o_n, i_n, 1);
        pack_pairs(&mut x2, &x, i_n, len);
        let mut want = vec![0f32; o_n * len];
        pointwise_reference(&mut want, &w2, &x2, o_n, ip, len);
        let mut wp = vec![0; p.weight_len(o_n, i_n, 1)];
        p.pack_weights(&mut wp, &w, o_n, i_n, 1);
        // a tile 16 words wider than it must be, its padding garbage until pad_tile
        let ld = p.tile_ld(len) + 16;
        let mut xt = vec![u32::MAX; p.tile_rows(i_n) * ld];
        for (d, s) in xt.chunks_exact_mut(ld).zip(x2.chunks_exact(len)) {
            d[..len].copy_from_slice(s);
        }
        p.pad_tile(&mut xt, ld, i_n, len);
        let second = (o_n > p.row_block()).then_some(p.row_block());
        for o0 in [0].into_iter().chain(second) {
            let mut got = vec![f32::NAN; o_n * len + 3];
            // SAFETY: got holds o_n rows of len; the tile and packing are of these shapes
            unsafe {
                p.product(
                    got.as_mut_ptr(),
                    len,
                    &wp,
                    (&xt, 0, ld),
                    &[0],
                    (o0, o_n),
                    i_n,
                    len,
                )
            };
            // the bound: the f32 sums' rounding, over the sum of |products|
            for o in 0..o_n {
                for q in 0..len {
                    let g = got[o * len + q];
                    if o < o0 {
                        assert!(g.is_nan(), "{p:?} {o_n}×{i_n}×{len}: row {o} written");
                        continue;
                    }
                    let mag: f32 = (0..i_n)
                        .map(|i| (w[o * i_n + i] * x[i * len + q]).abs())
                        .sum();
                    let r = want[o * len + q];
                    assert!(
                        (g - r).abs() <= 1e-5 * (mag + 1e-3),
                        "{p:?} {o_n}×{i_n}×{len} from row {o0} at {o},{q}: {g} vs {r}"
                    );
                }
            }
            // nothing written past the rows
            assert!(got[o_n * len..].iter().all(|v| v.is_nan()));
        }
    }
}
