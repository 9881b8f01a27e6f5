//! The FP32 peak of this machine, for stating a kernel's rate as a fraction of what the
//! cores could do at most: `threads × FMA units × lanes × 2 FLOPs × GHz`.
//!
//! The clock is the best figure the OS gives without privileges, in this order: the
//! cpufreq driver's maximum (`/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq`), the
//! largest `cpu MHz` of `/proc/cpuinfo`, the `@ 2.40GHz` of its `model name`, else 3 GHz.
//! Virtual machines often have no cpufreq directory and report the nominal clock as
//! `cpu MHz`; a core that boosts above it can then show more than 100% of "peak".
//! [`measured_gflops`] times a loop of nothing but FMAs instead, for the clock the cores
//! really run vector code at.

use super::simd::{simd_entries, F32x};

/// Independent multiply-add chains of [`fma_chains`]: more than 2 FMA pipes × 4 cycles of
/// latency, so the pipes never wait.
pub(crate) const CHAINS: usize = 12;

/// `CHAINS` vectors, chain k from k + 1, each through `iters` steps of `a = a·b + c`;
/// `out` gets the sum of lane 0 of every chain, which keeps the loop from being optimised
/// away (as do `b` and `c` coming from the caller: with constants whose fixed point was
/// the start, LLVM folded the whole loop). Nothing but FMAs on registers: the rate a
/// core's vector pipes reach at the clock they run at.
///
/// # Safety
/// The CPU must run `V`.
#[inline(always)]
unsafe fn fma_chains<V: F32x>(iters: usize, b: f32, c: f32, out: &mut f32) {
    let mut acc = [V::zero(); CHAINS];
    for (k, a) in acc.iter_mut().enumerate() {
        *a = V::splat(&(k as f32 + 1.0));
    }
    let (b, c) = (V::splat(&b), V::splat(&c));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = a.mul_add(b, c);
        }
    }
    let mut lanes = [0f32; 16];
    *out = 0.0;
    for a in acc {
        a.store(lanes.as_mut_ptr());
        *out += lanes[0];
    }
}

simd_entries!(fma_chains => fma_chains_avx2, fma_chains_avx512 (
    iters: usize,
    b: f32,
    c: f32,
    out: &mut f32,
));

/// Signature of [`fma_chains_avx2`] and [`fma_chains_avx512`] (entries of
/// [`super::Direct`]).
pub type FmaChainsFn = unsafe fn(usize, f32, f32, &mut f32);

/// The FP32 rate, in GFLOP/s, that the active kernels table's FMA loop ([`fma_chains`])
/// reaches on every thread of the current rayon pool at once, for about `seconds` (after a
/// warm-up of the same length, so that the cores have raised their clock). `None` for a
/// table without vector kernels (`portable`). A measurement, so it varies with the
/// machine's load; it tells what the nominal [`Peak`] cannot: the clock the cores really
/// run vector code at (a boost above nominal, or an AVX-512 licence below it).
pub fn measured_gflops(seconds: f64) -> Option<f64> {
    let direct = super::active().direct?;
    let lanes = direct.block / 2;
    let threads = rayon::current_num_threads();
    // iterations in `seconds` at a generous 5 GHz × 2 pipes, scaled below by a probe
    let run = |iters: usize| {
        let t = std::time::Instant::now();
        let sums = rayon::broadcast(|_| {
            let mut out = 0.0;
            let (b, c) = std::hint::black_box((0.999, 0.001));
            // SAFETY: the table that holds the entry runs on this CPU.
            unsafe { (direct.fma_chains)(iters, b, c, &mut out) };
            out
        });
        std::hint::black_box(sums);
        t.elapsed().as_secs_f64()
    };
    let probe = 1 << 20;
    let per_iter = run(probe) / probe as f64;
    let iters = ((seconds / per_iter.max(1e-12)) as usize).max(probe);
    run(iters);
    let secs = run(iters);
    Some((threads * iters * CHAINS * lanes * 2) as f64 / secs / 1e9)
}

/// The FP32 peak of `threads` cores, with the figures it is made of.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peak {
    /// Cores (threads) counted.
    pub threads: usize,
    /// f32 lanes per vector instruction of the kernels table.
    pub lanes: usize,
    /// Multiply-add instructions a core issues per cycle.
    pub fma_units: usize,
    /// Clock, GHz.
    pub ghz: f64,
    /// Where [`Peak::ghz`] came from: `cpufreq`, `cpu MHz`, `model name` or `default`.
    pub ghz_source: &'static str,
}

impl Peak {
    /// GFLOP/s at most: `threads × fma_units × lanes × 2 × ghz` (a multiply-add is 2 FLOPs).
    pub fn gflops(&self) -> f64 {
        (self.threads * self.fma_units * self.lanes * 2) as f64 * self.ghz
    }
}

/// f32 lanes of the vectors of a kernels table's instruction set ([`super::Kernels::isa`]):
/// `avx512` 16, `avx2` 8, anything else 4. The portable table is compiled for baseline x86-64, whose 128-bit
/// SSE has no FMA: its peak counts one 4-lane multiply plus one 4-lane add per cycle (see
/// `fma_units_of`). Its convolutions go through the `gemm` crate, which picks AVX2 or
/// AVX-512 micro-kernels itself, so they can show more than 100% of that peak.
pub fn lanes_of(isa: &str) -> usize {
    match isa {
        "avx512" => 16,
        "avx2" => 8,
        _ => 4,
    }
}

/// FMA instructions per cycle for an instruction set on the CPU `cpuinfo` describes: 2 for
/// `avx2` and `avx512`, 1 for the rest (portable: one SSE multiply and one add, a
/// multiply-add's worth). An assumption, not a measurement: AMD Zen 3 and Intel Sapphire
/// Rapids have two 256-bit (Zen 3) or 512-bit (Sapphire Rapids) FMA pipes, but AMD's
/// family 25 (Zen 3 and Zen 4) has 256-bit pipes only, and Zen 4 runs a 512-bit FMA as
/// both halves at once: one `avx512` FMA per cycle there, the same FLOPs as two AVX2 ones.
fn fma_units_of(isa: &str, cpuinfo: &str) -> usize {
    match isa {
        "avx512" if is_amd_family_25(cpuinfo) => 1,
        "avx2" | "avx512" => 2,
        _ => 1,
    }
}

/// Whether the first CPU of a `/proc/cpuinfo` text is an AMD of family 25 (0x19: Zen 3,
/// Zen 4), whose FMA pipes are 256 bits wide.
fn is_amd_family_25(cpuinfo: &str) -> bool {
    let field = |name: &str| {
        cpuinfo
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim())
    };
    field("vendor_id") == Some("AuthenticAMD") && field("cpu family") == Some("25")
}

/// The CPU's model name (Linux: `model name` in /proc/cpuinfo), or `unknown`: what the
/// benchmarks print beside every figure.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The FP32 peak of `threads` cores running f32 kernels of the instruction set `isa`
/// ([`super::Kernels::isa`]; see the module documentation for where the clock comes from).
pub fn peak(threads: usize, isa: &str) -> Peak {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
    let (ghz, ghz_source) = read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
        .and_then(|s| ghz_of_khz(&s))
        .map(|g| (g, "cpufreq"))
        .or_else(|| max_cpu_mhz(&cpuinfo).map(|mhz| (mhz / 1000.0, "cpu MHz")))
        .or_else(|| model_name_ghz(&cpuinfo).map(|g| (g, "model name")))
        .unwrap_or((3.0, "default"));
    Peak {
        threads,
        lanes: lanes_of(isa),
        fma_units: fma_units_of(isa, &cpuinfo),
        ghz,
        ghz_source,
    }
}

/// GHz of a `cpuinfo_max_freq` file (kHz, one integer); `None` unless positive.
fn ghz_of_khz(text: &str) -> Option<f64> {
    let khz: f64 = text.trim().parse().ok()?;
    (khz > 0.0).then_some(khz / 1e6)
}

/// The largest `cpu MHz` value of a `/proc/cpuinfo` text (one line per logical CPU).
fn max_cpu_mhz(cpuinfo: &str) -> Option<f64> {
    cpuinfo
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim() == "cpu MHz")
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .filter(|&mhz| mhz > 0.0)
        .reduce(f64::max)
}

/// The clock in the first `model name` of a `/proc/cpuinfo` text, as Intel writes it:
/// `Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz` gives 2.4. `None` without `GHz` there
/// (AMD names carry no clock).
fn model_name_ghz(cpuinfo: &str) -> Option<f64> {
    let (_, name) = cpuinfo
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == "model name")?;
    let before = &name[..name.find("GHz")?];
    // the number right before "GHz" (after "@ " on Intel's names)
    let start = before
        .rfind(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or(0, |i| i + 1);
    let ghz: f64 = before[start..].parse().ok()?;
    (ghz > 0.0).then_some(ghz)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\n\
        model name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz\ncpu MHz\t\t: 1200.000\n\n\
        processor\t: 1\nmodel name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz\n\
        cpu MHz\t\t: 3300.125\n";
    const AMD: &str = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2\n";

    #[test]
    fn khz_file() {
        assert_eq!(ghz_of_khz("3500000\n"), Some(3.5));
        assert_eq!(ghz_of_khz(""), None);
        assert_eq!(ghz_of_khz("0"), None);
        assert_eq!(ghz_of_khz("fast"), None);
    }

    #[test]
    fn cpu_mhz_takes_the_largest() {
        assert_eq!(max_cpu_mhz(INTEL), Some(3300.125));
        assert_eq!(max_cpu_mhz("cpu MHz\t\t: 2445.404\n"), Some(2445.404));
        assert_eq!(max_cpu_mhz(AMD), None);
        assert_eq!(max_cpu_mhz(""), None);
    }

    #[test]
    fn model_name_clock() {
        assert_eq!(model_name_ghz(INTEL), Some(2.4));
        assert_eq!(model_name_ghz("model name\t: Some CPU @ 3GHz\n"), Some(3.0));
        assert_eq!(model_name_ghz(AMD), None);
        assert_eq!(model_name_ghz("model name\t: Odd GHz chip\n"), None);
        assert_eq!(model_name_ghz(""), None);
    }

    /// The FMA loop of every table this CPU runs computes the recurrence it claims (the
    /// scalar `mul_add` of the same steps, in every chain).
    #[test]
    fn fma_chains_compute_the_recurrence() {
        // chain k from k + 1, towards the fixed point c / (1 − b) = 1.25
        let (b, c) = (0.9, 0.125);
        let mut want = 0f32;
        for k in 0..CHAINS {
            let mut a = k as f32 + 1.0;
            for _ in 0..50 {
                a = a.mul_add(b, c);
            }
            want += a;
        }
        let tables = [
            ("avx2", crate::kernels::avx2()),
            ("avx512", crate::kernels::avx512()),
        ];
        for (name, t) in tables {
            let Some(t) = t else {
                crate::kernels::testutil::say(&format!(
                    "SKIPPED: this CPU does not run the {name} table's FMA loop"
                ));
                continue;
            };
            let direct = t.direct.expect("a vector table has direct kernels");
            let mut out = 0.0;
            // SAFETY: the table is only handed out on a CPU that runs it.
            unsafe { (direct.fma_chains)(50, b, c, &mut out) };
            assert_eq!(out, want, "{}", t.name);
        }
    }

    #[test]
    fn peak_arithmetic() {
        let p = Peak {
            threads: 2,
            lanes: lanes_of("avx2"),
            fma_units: fma_units_of("avx2", ""),
            ghz: 2.5,
            ghz_source: "cpu MHz",
        };
        // 2 threads × 2 FMA × 8 lanes × 2 FLOPs × 2.5 GHz
        assert_eq!(p.gflops(), 160.0);
        assert_eq!(lanes_of("avx512"), 16);
        assert_eq!(lanes_of("portable"), 4);
        assert_eq!(fma_units_of("portable", ""), 1);
        // Zen 4 (family 25, model 17) runs one 512-bit FMA a cycle; Intel two
        let zen4 = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n";
        assert_eq!(fma_units_of("avx512", zen4), 1);
        assert_eq!(fma_units_of("avx2", zen4), 2);
        assert_eq!(fma_units_of("avx512", INTEL), 2);
        let q = peak(3, "portable");
        assert_eq!((q.threads, q.lanes, q.fma_units), (3, 4, 1));
        assert!(q.ghz > 0.0);
    }
}
