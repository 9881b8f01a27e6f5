//! The bf16 products on AMX: `tdpbf16ps` on 16×16 f32 tiles (Sapphire Rapids and later
//! Xeons). Stable Rust has no AMX intrinsics, so the tile instructions are inline `asm!`
//! (Intel syntax); the compiler never touches the tile registers, so they keep their
//! contents from one `asm!` block to the next within a call.
//!
//! **The tiles.** `tdpbf16ps C, A, B` adds `A·B` to `C` (16 × 16 f32), where A is 16 rows
//! of 16 words (32 bf16: 16 pairs of input channels) and B is 16 rows of pair words (one
//! row per pair, 16 positions). B is exactly [`super::pack_pairs`]' layout, read with a
//! stride (the rows of an input tile, or of the 3×3's zero-padded pair planes from each
//! tap's offset). W is packed once into whole A tiles ([`pack_weight_tiles`]):
//! `[O/16][taps][K/16][16 rows][16 words]`, each tile 1 KiB contiguous, zeros past `O`
//! and past the input channels. So K (pairs) and O are multiples of 16 in the kernel; the
//! caller pads the B tile's pair rows with zeros to `K` and its positions to a multiple
//! of 16 with finite values, and the kernel writes only the `n` positions and the rows it
//! is given.
//!
//! **Register blocking.** Eight tile registers: four accumulators (2 output blocks × 2
//! position blocks, 32 × 32), two A and two B tiles: four tile loads per four
//! `tdpbf16ps`, the blocking oneDNN's AMX GEMM uses. It caps this kernel near 1,000
//! GFLOP/s a core (a third of the unit's peak): measured on a Xeon, a loop of tile
//! instructions ran at 3,100 GFLOP/s with no loads, 2,400 with two loads per four
//! products, 1,000 with four (from L1 or L2 alike).
//!
//! **Permission.** Linux keeps the 8 KiB of tile state out of every thread's context until
//! the process asks once (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); the
//! permission covers every thread of the process. [`available`] asks on its first call.

use std::sync::OnceLock;

/// Whether this CPU has AMX-BF16 (with AMX-TILE and AVX512-BF16, which the tile former
/// uses) and the kernel granted the tile state: asked once per process.
pub fn available() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| cpu_has_amx() && super::avx512bf16() && request_permission())
}

/// CPUID leaf 7: AMX-BF16 (EDX bit 22) and AMX-TILE (EDX bit 24).
fn cpu_has_amx() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // leaf 7 reads as zeros on a CPU whose highest leaf is lower
        let leaf = std::arch::x86_64::__cpuid_count(7, 0);
        leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: true where granted.
fn request_permission() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a system call with integer arguments; it only changes what this process
        // may use
        let rc = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        rc == 0
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// Words of W (`taps` taps) packed as whole A tiles: `ceil(O/16)·taps·(K/16)` tiles of
/// 256 words, where `K` is [`k_pairs`]`(i_n)`.
pub fn weight_tiles_len(o_n: usize, i_n: usize, taps: usize) -> usize {
    o_n.div_ceil(16) * taps * k_pairs(i_n) * 16
}

/// Pair rows of the B tile: the pairs of `i_n` channels rounded up to 16.
pub fn k_pairs(i_n: usize) -> usize {
    super::pairs(i_n).div_ceil(16) * 16
}

/// `w: [O][I][taps]` (f32, PyTorch's OIHW) into whole A tiles,
/// `dst: [ceil(O/16)][taps][K/16][16][16]` words, each word the bf16 pair
/// `(w[o][2j][t], w[o][2j+1][t])` as [`super::pack_weight_pairs`] pairs them; zeros past
/// `O` and past `I`.
pub fn pack_weight_tiles(dst: &mut [u32], w: &[f32], o_n: usize, i_n: usize, taps: usize) {
    let kb = k_pairs(i_n) / 16;
    let len = weight_tiles_len(o_n, i_n, taps);
    assert!(w.len() >= o_n * i_n * taps && dst.len() >= len);
    let at = |o: usize, i: usize, t: usize| {
        if o < o_n && i < i_n {
            w[(o * i_n + i) * taps + t]
        } else {
            0.0
        }
    };
    for (n, tile) in dst[..len].chunks_exact_mut(256).enumerate() {
        let (ob, t, k) = (n / (taps * kb), n / kb % taps, n % kb);
        for (r, row) in tile.chunks_exact_mut(16).enumerate() {
            let o = ob * 16 + r;
            for (c, d) in row.iter_mut().enumerate() {
                let j = k * 16 + c;
                *d = super::word(at(o, 2 * j, t), at(o, 2 * j + 1, t));
            }
        }
    }
}

/// `ldtilecfg`'s 64-byte operand (palette 1): every tile used is 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    _reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Eight tiles of 16 × 64 bytes: tmm0–3 the accumulators, tmm4–5 A, tmm6–7 B.
static CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    _reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Rows `o0..o1` of `y[o][p] = Σ_t Σ_j W_t[o][j]·x2[j][p + taps[t]]` over `n`
/// positions: `y` holds rows of `ldy` floats (row 0 at `y`), `wt` is
/// [`pack_weight_tiles`]' packing of W (`K = kp` pairs, `taps.len()` taps), `x2` the B
/// tile, `kp` rows of `ldx` words, read from `x2 + taps[t]`.
///
/// # Safety
/// [`available`] must hold; `o0` is a multiple of 16; rows `o0..o1` of `y` hold `n`
/// floats that nobody else touches meanwhile; `wt` holds the tiles of every 16-row block
/// that meets `o0..o1`; for every tap, `x2 + taps[t]` starts `kp` rows of `ldx` words
/// with `ceil(n/16)·16` finite bf16 pairs each.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn product(
    y: *mut f32,
    ldy: usize,
    wt: *const u32,
    x2: *const u32,
    ldx: usize,
    taps: &[isize],
    (o0, o1): (usize, usize),
    kp: usize,
    n: usize,
) {
    debug_assert!(o0.is_multiple_of(16) && kp.is_multiple_of(16));
    let (kb, pb) = (kp / 16, n.div_ceil(16));
    // SAFETY: the operand is a valid palette-1 configuration
    unsafe { std::arch::asm!("ldtilecfg [{0}]", in(reg) &CONFIG, options(nostack)) };
    let ob = (o0 / 16, o1.div_ceil(16));
    let mut o = ob.0;
    while o < ob.1 {
        let two_rows = o + 1 < ob.1;
        let mut p = 0;
        while p < pb {
            let two_cols = p + 1 < pb;
            // SAFETY: the caller's contract; the block's tiles lie within wt and x2
            unsafe {
                let a = wt.add(o * taps.len() * kb * 256);
                let b = x2.add(p * 16);
                match (two_rows, two_cols) {
                    (true, true) => block::<true, true>(a, b, ldx, taps, kb),
                    (true, false) => block::<true, false>(a, b, ldx, taps, kb),
                    (false, true) => block::<false, true>(a, b, ldx, taps, kb),
                    (false, false) => block::<false, false>(a, b, ldx, taps, kb),
                }
                let rows = |r: usize| (o1 - (o + r) * 16).min(16);
                let cols = |c: usize| (n - (p + c) * 16).min(16);
                let at = |r: usize, c: usize| y.add((o + r) * 16 * ldy + (p + c) * 16);
                store::<0>(at(0, 0), ldy, rows(0), cols(0));
                if two_cols {
                    store::<1>(at(0, 1), ldy, rows(0), cols(1));
                }
                if two_rows {
                    store::<2>(at(1, 0), ldy, rows(1), cols(0));
                    if two_cols {
                        store::<3>(at(1, 1), ldy, rows(1), cols(1));
                    }
                }
            }
            p += 2;
        }
        o += 2;
    }
    // SAFETY: gives the tile state back (a context switch then saves nothing of it)
    unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
}

/// tmm0 (tmm1 where `C2`, tmm2 where `R2`, tmm3 where both) ← the sums over the taps and
/// `kb` blocks of 16 pairs of `A·B`: A tiles from `a` (1 KiB each, tap-major, the next
/// output block's `taps·kb·256` words on), B tiles from `b + tap` (rows `ldx` words
/// apart, the next 16 positions 16 words on).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block<const R2: bool, const C2: bool>(
    a: *const u32,
    b: *const u32,
    ldx: usize,
    taps: &[isize],
    kb: usize,
) {
    use std::arch::asm;
    let (a_stride, b_stride) = (64usize, ldx * 4);
    // SAFETY (all blocks below): tile instructions on the configured tiles; the loads stay
    // within the caller's tiles
    unsafe {
        asm!("tilezero tmm0", options(nostack, nomem));
        if C2 {
            asm!("tilezero tmm1", options(nostack, nomem));
        }
        if R2 {
            asm!("tilezero tmm2", options(nostack, nomem));
            if C2 {
                asm!("tilezero tmm3", options(nostack, nomem));
            }
        }
        let next = taps.len() * kb * 256;
        for k in 0..taps.len() * kb {
            let (t, k) = (k / kb, k % kb);
            let a0 = a.add((t * kb + k) * 256);
            let b0 = b.offset(taps[t]).add(k * 16 * ldx);
            asm!(
                "tileloadd tmm4, [{a} + {sa}*1]",
                "tileloadd tmm6, [{b} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                a = in(reg) a0, b = in(reg) b0, sa = in(reg) a_stride, sb = in(reg) b_stride,
                options(nostack, readonly)
            );
            if C2 {
                asm!(
                    "tileloadd tmm7, [{b} + {sb}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    b = in(reg) b0.add(16), sb = in(reg) b_stride,
                    options(nostack, readonly)
                );
            }
            if R2 {
                asm!(
                    "tileloadd tmm5, [{a} + {sa}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    a = in(reg) a0.add(next), sa = in(reg) a_stride,
                    options(nostack, readonly)
                );
                if C2 {
                    asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem));
                }
            }
        }
    }
}

/// Writes accumulator `T` (tmm0–3) to `rows × cols` floats at `y`, rows `ldy` apart:
/// straight from the tile where it is whole, else through a buffer.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store<const T: usize>(y: *mut f32, ldy: usize, rows: usize, cols: usize) {
    #[repr(align(64))]
    struct Buf(std::mem::MaybeUninit<[f32; 256]>);
    // left uninitialised: `tilestored` writes all of it before it is read, and the whole
    // tiles (most of them) never touch it
    let mut buf = Buf(std::mem::MaybeUninit::uninit());
    let whole = rows == 16 && cols == 16;
    let (dst, stride) = if whole {
        (y, ldy * 4)
    } else {
        (buf.0.as_mut_ptr() as *mut f32, 64)
    };
    // SAFETY: dst holds 16 rows of `stride` bytes (the caller's rows, or the buffer)
    unsafe {
        match T {
            0 => {
                std::arch::asm!("tilestored [{d} + {s}*1], tmm0", d = in(reg) dst, s = in(reg) stride, options(nostack))
            }
            1 => {
                std::arch::asm!("tilestored [{d} + {s}*1], tmm1", d = in(reg) dst, s = in(reg) stride, options(nostack))
            }
            2 => {
                std::arch::asm!("tilestored [{d} + {s}*1], tmm2", d = in(reg) dst, s = in(reg) stride, options(nostack))
            }
            _ => {
                std::arch::asm!("tilestored [{d} + {s}*1], tmm3", d = in(reg) dst, s = in(reg) stride, options(nostack))
            }
        }
    }
    if !whole {
        let src = buf.0.as_ptr() as *const f32;
        for r in 0..rows {
            // SAFETY: the buffer was written by `tilestored` above; row r of y holds
            // `cols` floats here (the caller's contract)
            unsafe { std::ptr::copy_nonoverlapping(src.add(r * 16), y.add(r * ldy), cols) };
        }
    }
}
