//! CIFAR-10 and CIFAR-100, binary version (`cifar-10-binary.tar.gz`, `cifar-100-binary.tar.gz`).
//!
//! * CIFAR-10: `data_batch_1.bin` .. `data_batch_5.bin` (train, 10000 images each) and
//!   `test_batch.bin`; each record is 1 label byte + 3072 pixel bytes (planes R, G, B of 32x32,
//!   row-major), i.e. already CHW. Class names in `batches.meta.txt`, one per line.
//! * CIFAR-100: `train.bin` (50000) and `test.bin` (10000); each record is 2 label bytes (coarse,
//!   fine) + 3072 pixel bytes. Class names in `fine_label_names.txt` / `coarse_label_names.txt`.
//!
//! Files are looked for in the named directory and in the subdirectory the archive unpacks to
//! (`cifar-10-batches-bin/`, `cifar-100-binary/`). A missing class-name file falls back to the
//! published names (CIFAR-10) or to the class numbers (CIFAR-100).

use std::path::Path;

use super::{find_file, read_file, record_at, DataError, Dataset, LabelKind, Split};

/// Bytes of pixels per CIFAR image (3 x 32 x 32).
pub const IMAGE_BYTES: usize = 3 * 32 * 32;

/// The CIFAR-10 class names, as in `batches.meta.txt`.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Loads a CIFAR-10 split from `dir` (or `dir/cifar-10-batches-bin`).
pub fn load_cifar10(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let subdirs = ["", "cifar-10-batches-bin"];
    let files: Vec<String> = match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".to_string()],
        Split::Extra => return Err(DataError::Config("cifar10 has no 'extra' split".into())),
    };
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for f in &files {
        let path = find_file(dir, &[f], &subdirs).map_err(|e| {
            e.with_hint("expected the CIFAR-10 *binary* version (cifar-10-binary.tar.gz), unpacked")
        })?;
        read_batch(&path, 1, 0, 10, &mut pixels, &mut labels)?;
    }
    let classes = match find_file(dir, &["batches.meta.txt"], &subdirs) {
        Ok(p) => read_names(&p, 10)?,
        Err(_) => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    Dataset::new(
        format!("cifar10-{split}"),
        3,
        32,
        32,
        pixels,
        labels,
        classes,
        255.0,
    )
}

/// Loads a CIFAR-100 split from `dir` (or `dir/cifar-100-binary`), with fine (100 classes) or
/// coarse (20 classes) labels. Both labels of every record are checked.
pub fn load_cifar100(dir: &Path, split: Split, kind: LabelKind) -> Result<Dataset, DataError> {
    let subdirs = ["", "cifar-100-binary"];
    let file = match split {
        Split::Train => "train.bin",
        Split::Test => "test.bin",
        Split::Extra => return Err(DataError::Config("cifar100 has no 'extra' split".into())),
    };
    let path = find_file(dir, &[file], &subdirs).map_err(|e| {
        e.with_hint("expected the CIFAR-100 *binary* version (cifar-100-binary.tar.gz), unpacked")
    })?;
    let (index, n, names_file, tag) = match kind {
        LabelKind::Fine => (1, 100, "fine_label_names.txt", "cifar100"),
        LabelKind::Coarse => (0, 20, "coarse_label_names.txt", "cifar100-coarse"),
    };
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    read_batch(&path, 2, index, n, &mut pixels, &mut labels)?;
    let classes = match find_file(dir, &[names_file], &subdirs) {
        Ok(p) => read_names(&p, n)?,
        Err(_) => (0..n).map(|i| i.to_string()).collect(),
    };
    Dataset::new(
        format!("{tag}-{split}"),
        3,
        32,
        32,
        pixels,
        labels,
        classes,
        255.0,
    )
}

/// Reads one CIFAR batch file of records `label_bytes` label bytes + [`IMAGE_BYTES`] pixel bytes,
/// appending the pixels and label number `label_index` of each record.
///
/// With two label bytes (CIFAR-100), byte 0 (coarse) must be `< 20` and byte 1 (fine) `< 100`;
/// with one, it must be `< num_classes`. Errors name the file, record and offset.
pub fn read_batch(
    path: &Path,
    label_bytes: usize,
    label_index: usize,
    num_classes: usize,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<u32>,
) -> Result<usize, DataError> {
    let bytes = read_file(path)?;
    let rec = label_bytes + IMAGE_BYTES;
    if bytes.is_empty() {
        return Err(DataError::format(
            path,
            "offset 0",
            format!("{rec}-byte records"),
            "an empty file",
        ));
    }
    let whole = bytes.len() / rec;
    let rest = bytes.len() % rec;
    if rest != 0 {
        return Err(DataError::format(
            path,
            record_at(whole as u64, (whole * rec) as u64),
            format!("a {rec}-byte record ({label_bytes} label byte(s) + {IMAGE_BYTES} pixels)"),
            format!("{rest} bytes before the end of the file"),
        )
        .with_hint(if label_bytes == 1 {
            "the file is truncated, or it is not a CIFAR-10 binary batch (CIFAR-100 records have 2 label bytes)"
        } else {
            "the file is truncated, or it is not a CIFAR-100 binary file (CIFAR-10 records have 1 label byte)"
        }));
    }
    let limits: &[usize] = if label_bytes == 2 {
        &[20, 100]
    } else {
        &[num_classes]
    };
    pixels.reserve(whole * IMAGE_BYTES);
    labels.reserve(whole);
    for (r, record) in bytes.chunks_exact(rec).enumerate() {
        for (b, &limit) in limits.iter().enumerate() {
            if record[b] as usize >= limit {
                let which = match (label_bytes, b) {
                    (2, 0) => "coarse ",
                    (2, _) => "fine ",
                    _ => "",
                };
                return Err(DataError::Label {
                    path: path.to_path_buf(),
                    location: format!("{} byte {b}", record_at(r as u64, (r * rec) as u64)),
                    label: format!("{which}{}", record[b]),
                    expected: format!("0..{}", limit - 1),
                });
            }
        }
        labels.push(record[label_index] as u32);
        pixels.extend_from_slice(&record[label_bytes..]);
    }
    Ok(whole)
}

/// Reads a class-names file: one name per line, blank lines ignored; there must be `expected`.
pub fn read_names(path: &Path, expected: usize) -> Result<Vec<String>, DataError> {
    let bytes = read_file(path)?;
    let text = String::from_utf8_lossy(&bytes);
    let names: Vec<String> = text
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if names.len() != expected {
        return Err(DataError::format(
            path,
            "whole file",
            format!("{expected} class names, one per line"),
            format!("{} non-empty lines", names.len()),
        ));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::{assert_mentions, TempDir};

    /// A record whose pixels encode (record, plane) so layout can be checked.
    fn record(labels: &[u8], seed: u8) -> Vec<u8> {
        let mut r = labels.to_vec();
        for c in 0..3u8 {
            for i in 0..1024usize {
                r.push(
                    seed.wrapping_mul(7)
                        .wrapping_add(c * 50)
                        .wrapping_add((i % 251) as u8),
                );
            }
        }
        r
    }

    fn write_cifar10(dir: &Path, per_batch: usize) {
        for b in 1..=5 {
            let mut f = Vec::new();
            for i in 0..per_batch {
                f.extend(record(&[((b + i) % 10) as u8], (b * 10 + i) as u8));
            }
            std::fs::write(dir.join(format!("data_batch_{b}.bin")), f).unwrap();
        }
        let mut t = Vec::new();
        for i in 0..3 {
            t.extend(record(&[i as u8], 200 + i as u8));
        }
        std::fs::write(dir.join("test_batch.bin"), t).unwrap();
        std::fs::write(
            dir.join("batches.meta.txt"),
            CIFAR10_CLASSES.join("\n") + "\n\n",
        )
        .unwrap();
    }

    /// The error of loading CIFAR-10's `split` from `dir`, as text.
    fn cifar10_error(dir: &Path, split: Split) -> String {
        load_cifar10(dir, split).unwrap_err().to_string()
    }

    /// Rewrites the file at `path` through `change`.
    fn edit(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = std::fs::read(path).unwrap();
        change(&mut bytes);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn cifar10_reads_all_batches() {
        let t = TempDir::new("c10");
        write_cifar10(t.path(), 2);
        let d = load_cifar10(t.path(), Split::Train).unwrap();
        assert_eq!((d.len(), d.channels, d.height, d.width), (10, 3, 32, 32));
        assert_eq!(d.labels[..4], [1, 2, 2, 3]);
        assert_eq!(d.pixels_of(1), &record(&[0], 11)[1..]);
        assert_eq!(d.classes[9], "truck");
        let te = load_cifar10(t.path(), Split::Test).unwrap();
        assert_eq!(te.labels, vec![0, 1, 2]);
        assert_eq!(te.name, "cifar10-test");
    }

    #[test]
    fn cifar10_in_archive_subdir_without_meta() {
        let t = TempDir::new("c10sub");
        let sub = t.path().join("cifar-10-batches-bin");
        std::fs::create_dir_all(&sub).unwrap();
        write_cifar10(&sub, 1);
        std::fs::remove_file(sub.join("batches.meta.txt")).unwrap();
        let d = load_cifar10(t.path(), Split::Train).unwrap();
        assert_eq!(d.len(), 5);
        assert_eq!(d.classes[0], "airplane");
    }

    #[test]
    fn cifar10_truncated_names_file_and_record() {
        let t = TempDir::new("c10trunc");
        write_cifar10(t.path(), 2);
        edit(&t.path().join("data_batch_3.bin"), |b| {
            b.truncate(3073 + 100)
        });
        let e = cifar10_error(t.path(), Split::Train);
        let parts = [
            "data_batch_3.bin",
            "record 1 (offset 3073)",
            "found 100 bytes",
            "hint",
        ];
        assert_mentions(&e, &parts);
    }

    #[test]
    fn cifar10_label_out_of_range() {
        let t = TempDir::new("c10label");
        write_cifar10(t.path(), 2);
        edit(&t.path().join("test_batch.bin"), |b| b[2 * 3073] = 10);
        let e = cifar10_error(t.path(), Split::Test);
        let parts = [
            "test_batch.bin",
            "record 2 (offset 6146)",
            "label 10 is out of range",
        ];
        assert_mentions(&e, &parts);
    }

    #[test]
    fn cifar10_missing_file_and_bad_meta() {
        let t = TempDir::new("c10missing");
        write_cifar10(t.path(), 1);
        std::fs::write(t.path().join("batches.meta.txt"), "a\nb\n").unwrap();
        let e = cifar10_error(t.path(), Split::Test);
        assert!(
            e.contains("batches.meta.txt") && e.contains("expected 10 class names"),
            "{e}"
        );
        std::fs::remove_file(t.path().join("data_batch_4.bin")).unwrap();
        let e = cifar10_error(t.path(), Split::Train);
        assert!(e.contains("data_batch_4.bin: not found"), "{e}");
        std::fs::write(t.path().join("data_batch_4.bin"), b"").unwrap();
        let e = cifar10_error(t.path(), Split::Train);
        assert!(
            e.contains("data_batch_4.bin: offset 0") && e.contains("empty file"),
            "{e}"
        );
    }

    #[test]
    fn cifar100_fine_and_coarse() {
        let t = TempDir::new("c100");
        let mut f = Vec::new();
        for i in 0..4u8 {
            f.extend(record(&[i * 5, i * 25], i));
        }
        std::fs::write(t.path().join("train.bin"), &f).unwrap();
        let fine: Vec<String> = (0..100).map(|i| format!("fine{i}")).collect();
        std::fs::write(t.path().join("fine_label_names.txt"), fine.join("\n")).unwrap();
        let d = load_cifar100(t.path(), Split::Train, LabelKind::Fine).unwrap();
        assert_eq!(d.labels, vec![0, 25, 50, 75]);
        assert_eq!(d.classes.len(), 100);
        assert_eq!(d.classes[25], "fine25");
        assert_eq!(d.pixels_of(3), &record(&[0, 0], 3)[2..]);
        let c = load_cifar100(t.path(), Split::Train, LabelKind::Coarse).unwrap();
        assert_eq!(c.labels, vec![0, 5, 10, 15]);
        assert_eq!(c.classes.len(), 20);
        assert_eq!(c.name, "cifar100-coarse-train");

        // coarse label 20 is invalid even when fine labels are used
        f[3 * 3074] = 20;
        std::fs::write(t.path().join("train.bin"), &f).unwrap();
        let e = load_cifar100(t.path(), Split::Train, LabelKind::Fine)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train.bin") && e.contains("record 3 (offset 9222) byte 0"),
            "{e}"
        );
        assert!(e.contains("coarse 20"), "{e}");

        // a CIFAR-10 file read as CIFAR-100: length is not a multiple of 3074
        std::fs::write(t.path().join("test.bin"), record(&[1], 0).repeat(3)).unwrap();
        let e = load_cifar100(t.path(), Split::Test, LabelKind::Fine)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.bin") && e.contains("record 2 (offset 6148)"),
            "{e}"
        );
    }
}
