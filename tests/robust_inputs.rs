//! Mutated input files never panic a loader, never make it allocate more than a stated
//! multiple of the file's size, and fail with a one-line error (issue 12).
//!
//! Each format starts from a valid file (a fixture, or one written here), and a seeded
//! generator applies a few hundred mutations: bytes overwritten with random or extreme
//! values, big-endian and little-endian integers planted (sizes, dimensions), bytes inserted
//! or deleted, the file truncated. Mutations favour the first bytes, where the headers are.
//! For zip (`.pth`) and gzip (IDX) files the inner data is mutated too and the container
//! rebuilt, so the mutations reach the pickle and the IDX header rather than only a checksum.
//!
//! The peak of live heap bytes during each load is measured by a counting global allocator
//! (this test binary has one test, so nothing else allocates meanwhile) and must stay within
//! `BOUND_MULTIPLE` × the file's size + `BOUND_SLACK` (images: the decoder's budget for the
//! pixels the header may claim, see `densenet::data::folder::check_dimensions`).

mod common;

use common::files::{fixture_bytes as fixture, unzip, zip};
use densenet::data::{cifar, folder, idx, mat5};
use densenet::weights;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(n: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

fn shrink(n: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        // frees of blocks allocated before counting started saturate at zero
        let _ = LIVE.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        });
    }
}

// SAFETY: forwards to the system allocator; the counters are atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        // SAFETY: the caller's layout contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrink(layout.size());
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // counted as a new block before the old one is freed (the worst case)
        grow(new_size);
        shrink(layout.size());
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes a load may use at its peak: this many times the file's size …
const BOUND_MULTIPLE: usize = 16;
/// … plus this much.
const BOUND_SLACK: usize = 4 << 20;

/// Mutations per format.
const MUTATIONS: usize = 300;

/// xorshift64*: a seeded, dependency-free generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to three mutations of `base`.
fn mutate(base: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(3) {
        if v.is_empty() {
            v.push(rng.next() as u8);
            continue;
        }
        // favour the headers: half of the positions fall in the first 64 bytes
        let pos = if rng.below(2) == 0 {
            rng.below(v.len().min(64))
        } else {
            rng.below(v.len())
        };
        match rng.below(8) {
            0 => v[pos] = rng.next() as u8,
            1 => v[pos] = [0x00, 0xff, 0x7f, 0x80, 0x01][rng.below(5)],
            2 => v[pos] ^= 1 << rng.below(8),
            3 | 4 => {
                let x: u32 = [u32::MAX, 0x7fff_ffff, 0x8000_0000, 65535, 1 << 20, 0][rng.below(6)];
                let b = if rng.below(2) == 0 {
                    x.to_be_bytes()
                } else {
                    x.to_le_bytes()
                };
                for (i, byte) in b.iter().enumerate() {
                    if let Some(p) = v.get_mut(pos + i) {
                        *p = *byte;
                    }
                }
            }
            5 => {
                let n = 1 + rng.below(8);
                let b: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(pos..pos, b);
            }
            6 => {
                let end = (pos + 1 + rng.below(8)).min(v.len());
                v.drain(pos..end);
            }
            _ => v.truncate(pos),
        }
    }
    v
}

struct Stats {
    name: &'static str,
    loads: usize,
    errors: usize,
    worst: f64,
}

/// Loads `bytes` with `load` (after writing them to `path`, for loaders that read files):
/// no panic, a peak within the bound, and a one-line error if any.
fn check(stats: &mut Stats, bytes: &[u8], path: &Path, extra_bound: usize, load: Load) {
    std::fs::write(path, bytes).unwrap();
    let bound = BOUND_MULTIPLE * bytes.len() + BOUND_SLACK + extra_bound;
    LIVE.store(0, Ordering::SeqCst);
    PEAK.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load(bytes, path)));
    COUNTING.store(false, Ordering::SeqCst);
    let peak = PEAK.load(Ordering::SeqCst);
    stats.loads += 1;
    let result = result.unwrap_or_else(|_| {
        let keep = std::env::temp_dir().join(format!("densenet-panic-{}", stats.name));
        std::fs::write(&keep, bytes).unwrap();
        panic!(
            "{}: the loader panicked (input kept in {})",
            stats.name,
            keep.display()
        )
    });
    assert!(
        peak <= bound,
        "{}: a {}-byte input made the loader use {peak} bytes at its peak (bound {bound})",
        stats.name,
        bytes.len()
    );
    stats.worst = stats.worst.max(peak as f64 / (1 << 20) as f64);
    if let Err(e) = result {
        stats.errors += 1;
        assert!(
            !e.contains('\n') && !e.is_empty(),
            "{}: the error is not one line: {e:?}",
            stats.name
        );
    }
}

/// A loader: the input's bytes and the file they were written to.
type Load<'a> = &'a dyn Fn(&[u8], &Path) -> Result<(), String>;
/// A structure-aware mutation (of the members of a container, say).
type Rebuild<'a> = Option<&'a dyn Fn(&[u8], &mut Rng) -> Vec<u8>>;

#[allow(clippy::too_many_arguments)]
fn run(
    name: &'static str,
    bases: &[Vec<u8>],
    file: &str,
    seed: u64,
    extra_bound: &dyn Fn(&[u8]) -> usize,
    rebuild: Rebuild,
    crafted: &[Vec<u8>],
    load: Load,
) -> Stats {
    let dir = tmp_dir();
    let path = dir.join(file);
    let mut stats = Stats {
        name,
        loads: 0,
        errors: 0,
        worst: 0.0,
    };
    let mut rng = Rng(seed);
    for base in bases {
        check(&mut stats, base, &path, extra_bound(base), load);
    }
    assert_eq!(stats.errors, 0, "{name}: a valid input was refused");
    for bytes in crafted {
        check(&mut stats, bytes, &path, extra_bound(bytes), load);
    }
    for i in 0..MUTATIONS {
        let base = &bases[i % bases.len()];
        let bytes = match rebuild {
            Some(f) if i % 2 == 1 => f(base, &mut rng),
            _ => mutate(base, &mut rng),
        };
        check(&mut stats, &bytes, &path, extra_bound(&bytes), load);
    }
    let _ = std::fs::remove_file(&path);
    stats
}

fn tmp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("densenet-robust-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn err<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<(), String> {
    r.map(|_| ()).map_err(|e| e.to_string())
}

/// A MAT5 file whose compressed element declares a 614 MB uint8 array `X` but holds only
/// its header (then 600 KB of padding, so the element's size allows the claim).
fn mat5_claiming_600_mb() -> Vec<u8> {
    let le = |v: u32| v.to_le_bytes();
    let data_len: u32 = 32 * 32 * 3 * 200_000;
    let mut m = Vec::new();
    // array flags (miUINT32, 8 bytes): class 9 = uint8
    m.extend(le(6));
    m.extend(le(8));
    m.extend(le(9));
    m.extend(le(0));
    // dimensions (miINT32, 16 bytes)
    m.extend(le(5));
    m.extend(le(16));
    for d in [32u32, 32, 3, 200_000] {
        m.extend(le(d));
    }
    // name "X" (miINT8, padded)
    m.extend(le(1));
    m.extend(le(1));
    m.extend(b"X\0\0\0\0\0\0\0");
    // data tag (miUINT8), no data
    m.extend(le(2));
    m.extend(le(data_len));
    let mut inner = le(14).to_vec();
    inner.extend(le(m.len() as u32 + data_len));
    inner.extend(m);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&inner).unwrap();
    let mut zlib = z.finish().unwrap();
    zlib.resize(600_000, 0);
    let mut f = vec![b' '; 116];
    f[..10].copy_from_slice(b"MATLAB 5.0");
    f.extend([0u8; 8]);
    f.extend(0x0100u16.to_le_bytes());
    f.extend(b"IM");
    f.extend(le(15));
    f.extend(le(zlib.len() as u32));
    f.extend(zlib);
    f
}

#[test]
fn mutated_inputs_never_panic_or_blow_up() {
    let start = std::time::Instant::now();
    let none = |_: &[u8]| 0;
    let mut all = Vec::new();

    // checkpoints: safetensors and .pth, through the loader the commands use
    let st = vec![fixture("preresnet_basic_w8.weights.safetensors")];
    all.push(run(
        "safetensors",
        &st,
        "w.safetensors",
        1,
        &none,
        None,
        &[],
        &|_, p| err(weights::read_checkpoint(p)),
    ));
    let pths: Vec<Vec<u8>> = [
        "legacy_tiny_densenet.pth",
        "edge_wrapped.pth",
        "edge_views.pth",
    ]
    .iter()
    .map(|n| fixture(n))
    .collect();
    let mutate_pickle = |base: &[u8], rng: &mut Rng| {
        let mut m = unzip(base);
        let i = m
            .iter()
            .position(|(n, _)| n.ends_with("data.pkl"))
            .unwrap_or(0);
        // the pickle, or (one time in four) a storage member
        let j = if rng.below(4) == 0 {
            rng.below(m.len())
        } else {
            i
        };
        m[j].1 = mutate(&m[j].1, rng);
        zip(&m)
    };
    all.push(run(
        "pth",
        &pths,
        "w.pth",
        2,
        &none,
        Some(&mutate_pickle),
        &[],
        &|_, p| err(weights::read_checkpoint(p)),
    ));

    // CIFAR binary batch: 20 records
    let mut batch = Vec::new();
    for i in 0..20u32 {
        batch.push((i % 10) as u8);
        batch.extend((0..3072u32).map(|j| (j.wrapping_mul(i + 7) >> 3) as u8));
    }
    all.push(run(
        "cifar",
        &[batch],
        "data_batch_1.bin",
        3,
        &none,
        None,
        &[],
        &|_, p| {
            let (mut px, mut lb) = (Vec::new(), Vec::new());
            err(cifar::read_batch(p, 1, 0, 10, &mut px, &mut lb))
        },
    ));

    // IDX, gzipped: 30 images of 28x28 and their labels
    let mut images = vec![0, 0, 8, 3];
    for d in [30u32, 28, 28] {
        images.extend(d.to_be_bytes());
    }
    images.extend((0..30 * 784u32).map(|i| (i * 31 % 253) as u8));
    let mut labels = vec![0, 0, 8, 1];
    labels.extend(30u32.to_be_bytes());
    labels.extend((0..30u8).map(|i| i % 10));
    let mutate_inner = |base: &[u8], rng: &mut Rng| gzip(&mutate(&gunzip(base), rng));
    // a gzip bomb: the header's 784 bytes, then 64 MB of zeros (a 64 KB file)
    let mut bomb = vec![0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 28, 0, 0, 0, 28];
    bomb.resize(bomb.len() + 784 + (64 << 20), 0);
    all.push(run(
        "idx-gz",
        &[gzip(&images), gzip(&labels)],
        "train-images-idx3-ubyte.gz",
        4,
        &none,
        Some(&mutate_inner),
        &[gzip(&bomb)],
        &|_, p| err(idx::read_idx(p)),
    ));

    // SVHN .mat (MAT5 with a compressed element)
    all.push(run(
        "mat5",
        &[fixture("svhn_tiny_32x32.mat")],
        "train_32x32.mat",
        5,
        &none,
        None,
        &[mat5_claiming_600_mb()],
        &|_, p| err(mat5::read_mat5(p, &["X", "y"])),
    ));

    // PNG and JPEG images: the decoder may allocate for the pixels the header claims,
    // within the limits of `check_dimensions` (at most 8 bytes a pixel while decoding, and
    // 3 + 3 for the RGB copies)
    let img = image::RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 8) as u8, 99])
    });
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let mut jpg = Vec::new();
    img.write_to(&mut Cursor::new(&mut jpg), image::ImageFormat::Jpeg)
        .unwrap();
    // a PNG header claiming 8000x8000 pixels in a 100-byte file
    let mut claim = Vec::new();
    image::GrayImage::from_pixel(8, 8, image::Luma([1]))
        .write_to(&mut Cursor::new(&mut claim), image::ImageFormat::Png)
        .unwrap();
    claim[16..20].copy_from_slice(&8000u32.to_be_bytes());
    claim[20..24].copy_from_slice(&8000u32.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&claim[12..29]);
    claim[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    let pixel_budget = |b: &[u8]| {
        let claimed = (folder::MAX_PIXELS_PER_FILE_BYTE as usize * b.len())
            .max(folder::SMALL_IMAGE_PIXELS as usize);
        14 * claimed
    };
    all.push(run(
        "png/jpeg",
        &[png, jpg],
        "image.img",
        6,
        &pixel_budget,
        None,
        &[claim],
        &|b, p| err(folder::decode_bytes(p, b)),
    ));

    for s in &all {
        eprintln!(
            "{:>12}: {} loads, {} errors, largest peak {:.1} MiB",
            s.name, s.loads, s.errors, s.worst
        );
    }
    eprintln!("{:.1} s", start.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(tmp_dir());
}
