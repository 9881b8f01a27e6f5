//! A bounded, seeded mutation test of the loaders a user's files go through (issue 33):
//! images (an RGB PNG, a palette PNG, a JPEG) through `data::folder::decode_file`, and
//! checkpoints (a small safetensors file, a `.pth`) through `weights::read_checkpoint`.
//!
//! Each case mutates a valid file and loads it. Whatever the bytes, the load must not
//! panic, an error must be one line that names the file, and a checkpoint that loads must
//! hold only finite numbers. The mutations are blind ones (bytes flipped, set, inserted,
//! deleted, the file truncated) and structure-aware ones that get past the checksums to
//! the parsers behind them: a PNG chunk mutated and its CRC made right again (this is how
//! a PLTE of 7 bytes reaches the `png` crate, which panicked on it), a `.pth` member
//! mutated and the zip rebuilt, and NaN or infinity planted among a checkpoint's values.
//!
//! A failure names the seed and the case, and keeps the input in the temporary directory.
//! `tests/robust_inputs.rs` bounds the memory the same loaders take (issue 12).

mod common;

use common::files::*;
use densenet::data::folder;
use densenet::util::rng::Rng;
use densenet::util::tensor::Tensor;
use densenet::weights;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

const SEED: u64 = 33;
/// Mutants per base file: 5,000 cases in all, 2 to 6 s on a 2-core machine (test profile).
const CASES: usize = 1000;

/// One to three blind mutations of `base`; half of the positions fall in the first 64
/// bytes, where the headers are.
fn mutate(base: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(3) {
        if v.is_empty() {
            v.push(rng.next_u64() as u8);
            continue;
        }
        let len = v.len() as u64;
        let pos = if rng.coin() {
            rng.below(len.min(64))
        } else {
            rng.below(len)
        } as usize;
        match rng.below(7) {
            0 => v[pos] = rng.next_u64() as u8,
            1 => v[pos] = [0x00, 0xff, 0x7f, 0x80, 0x01][rng.below(5) as usize],
            2 => v[pos] ^= 1 << rng.below(8),
            3 => {
                let n = 1 + rng.below(8) as usize;
                let b: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                v.splice(pos..pos, b);
            }
            4 | 5 => {
                let end = (pos + 1 + rng.below(8) as usize).min(v.len());
                v.drain(pos..end);
            }
            _ => v.truncate(pos),
        }
    }
    v
}

/// A chunk of the PNG mutated (its length changes with it) and every CRC made right.
fn mutate_png_chunk(base: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut chunks = png_chunks(base);
    let i = rng.below(chunks.len() as u64) as usize;
    chunks[i].1 = mutate(&chunks[i].1, rng);
    png_of(&chunks)
}

/// A member of the `.pth` archive mutated, or a NaN or infinity planted in a storage.
fn mutate_pth_member(base: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut m = unzip(base);
    let i = rng.below(m.len() as u64) as usize;
    if m[i].0.contains("/data/") && m[i].1.len() >= 4 && rng.coin() {
        plant_non_finite(&mut m[i].1, 0, rng);
    } else {
        m[i].1 = mutate(&m[i].1, rng);
    }
    zip(&m)
}

/// A NaN or an infinity (float32, little-endian) at a 4-byte-aligned place of `data[from..]`.
fn plant_non_finite(data: &mut [u8], from: usize, rng: &mut Rng) {
    let slots = (data.len() - from) / 4;
    let at = from + 4 * rng.below(slots as u64) as usize;
    let v = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][rng.below(3) as usize];
    data[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// A NaN or an infinity planted among the safetensors file's values (past its header).
fn plant_in_safetensors(base: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = base.to_vec();
    let header = 8 + u64::from_le_bytes(v[..8].try_into().unwrap()) as usize;
    plant_non_finite(&mut v, header, rng);
    v
}

/// A small checkpoint: two float tensors, an int64 one, and metadata.
fn small_safetensors(dir: &Path) -> Vec<u8> {
    let p = dir.join("base.safetensors");
    let a = Tensor::new(vec![4, 3], (0..12).map(|i| i as f32 * 0.25 - 1.0).collect());
    let b = Tensor::new(vec![5], vec![0.5, -2.0, 3.0, 1e-3, 7.0]);
    let meta = HashMap::from([("config".to_string(), "{\"note\": \"test\"}".to_string())]);
    weights::write_safetensors(
        &p,
        &[("a.weight".into(), a), ("b.bias".into(), b)],
        &[("b.count".into(), vec![1], vec![42])],
        meta,
    )
    .unwrap();
    std::fs::read(&p).unwrap()
}

/// What a load ended in: `Ok` (with the values, for a checkpoint) or the error's text.
type Outcome = Result<Vec<f32>, String>;
/// A mutation of a base file.
type Mutation = fn(&[u8], &mut Rng) -> Vec<u8>;

struct Format<'a> {
    name: &'a str,
    file: &'a str,
    base: Vec<u8>,
    /// A structure-aware mutation, used for every other case.
    aware: Option<Mutation>,
    load: fn(&Path) -> Outcome,
}

fn load_image(p: &Path) -> Outcome {
    folder::decode_file(p)
        .map(|_| Vec::new())
        .map_err(|e| e.to_string())
}

fn load_checkpoint(p: &Path) -> Outcome {
    weights::read_checkpoint(p)
        .map(|f| f.tensors.into_iter().flat_map(|t| t.tensor.data).collect())
        .map_err(|e| e.to_string())
}

/// Loads every mutant of `f`; the first failure (a panic, an error that is not one line
/// naming the file, a non-finite value accepted) as a message naming the seed and case.
fn run(f: &Format, dir: &Path, rng: &mut Rng, counts: &mut Vec<String>) -> Result<(), String> {
    let path = dir.join(f.file);
    let (mut errors, mut loaded) = (0, 0);
    for case in 0..=CASES {
        // case 0 is the valid base file
        let bytes = match (case, f.aware) {
            (0, _) => f.base.clone(),
            (c, Some(aware)) if c % 2 == 0 => aware(&f.base, rng),
            _ => mutate(&f.base, rng),
        };
        std::fs::write(&path, &bytes).unwrap();
        let fail = |what: String| {
            let keep = dir.join(format!("failed-{}-{case}-{}", f.name, f.file));
            std::fs::write(&keep, &bytes).unwrap();
            Err(format!(
                "seed {SEED}, {} case {case}: {what} (the input is kept in {})",
                f.name,
                keep.display()
            ))
        };
        let outcome = match catch_unwind(AssertUnwindSafe(|| (f.load)(&path))) {
            Ok(o) => o,
            Err(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                return fail(format!("the loader panicked: {msg}"));
            }
        };
        match outcome {
            Err(e) if case == 0 => return fail(format!("the valid file was refused: {e}")),
            Err(e) if e.contains('\n') || !e.contains(path.to_str().unwrap()) => {
                return fail(format!("the error is not one line naming the file: {e:?}"))
            }
            Err(_) => errors += 1,
            Ok(values) => {
                if let Some(v) = values.iter().find(|v| !v.is_finite()) {
                    return fail(format!("a checkpoint holding {v} was accepted"));
                }
                loaded += 1;
            }
        }
    }
    counts.push(format!("{}: {loaded} loaded, {errors} refused", f.name));
    Ok(())
}

#[test]
fn mutated_images_and_checkpoints_never_panic_lie_or_go_unnamed() {
    let start = std::time::Instant::now();
    let dir: PathBuf =
        std::env::temp_dir().join(format!("densenet-mutation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let formats = [
        Format {
            name: "png",
            file: "image.png",
            base: encoded(24, 16, image::ImageFormat::Png),
            aware: Some(mutate_png_chunk),
            load: load_image,
        },
        Format {
            name: "palette-png",
            file: "palette.png",
            base: palette_png(7, 5, &PALETTE),
            aware: Some(mutate_png_chunk),
            load: load_image,
        },
        Format {
            name: "jpeg",
            file: "image.jpg",
            base: encoded(24, 16, image::ImageFormat::Jpeg),
            aware: None,
            load: load_image,
        },
        Format {
            name: "safetensors",
            file: "checkpoint.safetensors",
            base: small_safetensors(&dir),
            aware: Some(plant_in_safetensors),
            load: load_checkpoint,
        },
        Format {
            name: "pth",
            file: "state_dict.pth",
            base: fixture_bytes("legacy_tiny_densenet.pth"),
            aware: Some(mutate_pth_member),
            load: load_checkpoint,
        },
    ];
    let mut rng = Rng::new(SEED);
    let mut counts = Vec::new();
    let mut failures = Vec::new();
    for f in &formats {
        if let Err(e) = run(f, &dir, &mut rng, &mut counts) {
            failures.push(e);
        }
    }
    common::say(&format!(
        "mutation: {} in {:.1} s",
        counts.join("; "),
        start.elapsed().as_secs_f64()
    ));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}
