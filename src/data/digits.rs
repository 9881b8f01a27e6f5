//! The built-in **digits** set: UCI "Optical Recognition of Handwritten Digits" (8x8 images,
//! pixels 0..16, 10 classes; CC BY 4.0, Alpaydin & Kaynak 1998), embedded in the binary from
//! `data/digits/{train,test}.bin` (1500 / 297 images; see `data/digits/README.md`).
//!
//! File format (little-endian): magic `DGT1`, u32 N, u32 H, u32 W, then N*H*W u8 pixels
//! (image-major, row-major, values 0..16), then N u8 labels 0..9. Length = 16 + N*(H*W + 1).

use std::path::{Path, PathBuf};

use super::{offset_at, read_file, show_bytes, DataError, Dataset, Split};

/// The embedded training file (1500 images).
pub static TRAIN_BIN: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/data/digits/train.bin"
));

/// The embedded test file (297 images).
pub static TEST_BIN: &[u8] =
    include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/data/digits/test.bin"));

/// The file magic, `DGT1`.
pub const MAGIC: &[u8; 4] = b"DGT1";

/// The largest pixel value (a count of "on" pixels in a 4x4 block).
pub const MAX_PIXEL: u8 = 16;

/// Loads the embedded split (`Split::Extra` is an error).
pub fn load(split: Split) -> Result<Dataset, DataError> {
    let (bytes, file) = match split {
        Split::Train => (TRAIN_BIN, "train.bin"),
        Split::Test => (TEST_BIN, "test.bin"),
        Split::Extra => return Err(DataError::Config("digits has no 'extra' split".into())),
    };
    let path = PathBuf::from(format!("<embedded>/data/digits/{file}"));
    parse(bytes, &path, &format!("digits-{split}"))
}

/// Loads `dir/train.bin` or `dir/test.bin` in the same format (for a copy on disk).
pub fn load_dir(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let file = match split {
        Split::Train => "train.bin",
        Split::Test => "test.bin",
        Split::Extra => return Err(DataError::Config("digits has no 'extra' split".into())),
    };
    let path = dir.join(file);
    let bytes = read_file(&path)?;
    parse(&bytes, &path, &format!("digits-{split}"))
}

/// Parses a digits file; `path` is used in error messages only.
pub fn parse(bytes: &[u8], path: &Path, name: &str) -> Result<Dataset, DataError> {
    if bytes.len() < 16 {
        return Err(DataError::format(
            path,
            offset_at(0),
            "a 16-byte header",
            format!("{} bytes", bytes.len()),
        ));
    }
    if &bytes[0..4] != MAGIC {
        return Err(DataError::format(
            path,
            offset_at(0),
            "magic \"DGT1\"",
            show_bytes(&bytes[0..4]),
        )
        .with_hint("not a digits file"));
    }
    let u32_at =
        |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as u64;
    let (n, h, w) = (u32_at(4), u32_at(8), u32_at(12));
    if h == 0 || w == 0 || h > 4096 || w > 4096 {
        return Err(DataError::format(
            path,
            offset_at(8),
            "image height and width in 1..4096",
            format!("{h}x{w}"),
        ));
    }
    let expected_len = 16 + n * (h * w + 1);
    if bytes.len() as u64 != expected_len {
        return Err(DataError::format(
            path,
            offset_at(bytes.len().min(expected_len as usize) as u64),
            format!("file length 16 + N*(H*W+1) = {expected_len} for N={n}, H={h}, W={w}"),
            format!("{} bytes", bytes.len()),
        )
        .with_hint(if (bytes.len() as u64) < expected_len {
            "the file is truncated"
        } else {
            "trailing bytes after the labels"
        }));
    }
    let (n, hw) = (n as usize, (h * w) as usize);
    let pixels = &bytes[16..16 + n * hw];
    if let Some(i) = pixels.iter().position(|&p| p > MAX_PIXEL) {
        return Err(DataError::format(
            path,
            format!("image {} (offset {})", i / hw, 16 + i),
            format!("a pixel value 0..{MAX_PIXEL}"),
            pixels[i].to_string(),
        ));
    }
    let labels = &bytes[16 + n * hw..];
    if let Some(i) = labels.iter().position(|&l| l > 9) {
        return Err(DataError::Label {
            path: path.to_path_buf(),
            location: format!("record {i} (offset {})", 16 + n * hw + i),
            label: labels[i].to_string(),
            expected: "0..9".into(),
        });
    }
    let classes = (0..10).map(|d| d.to_string()).collect();
    Dataset::new(
        name,
        1,
        h as usize,
        w as usize,
        pixels.to_vec(),
        labels.iter().map(|&l| l as u32).collect(),
        classes,
        MAX_PIXEL as f32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::TempDir;

    #[test]
    fn embedded_sets_match_readme() {
        let tr = load(Split::Train).unwrap();
        assert_eq!(
            (tr.len(), tr.channels, tr.height, tr.width),
            (1500, 1, 8, 8)
        );
        assert_eq!(
            tr.class_counts(),
            vec![151, 151, 150, 153, 148, 152, 151, 149, 146, 149]
        );
        assert_eq!(tr.max_value, 16.0);
        let te = load(Split::Test).unwrap();
        assert_eq!(te.len(), 297);
        assert_eq!(
            te.class_counts(),
            vec![27, 31, 27, 30, 33, 30, 30, 30, 28, 31]
        );
        assert_eq!(TRAIN_BIN.len(), 97_516);
        assert_eq!(TEST_BIN.len(), 19_321);
        // sklearn's first digit is a 0
        assert_eq!(tr.labels[0], 0);
        assert!(load(Split::Extra).is_err());
    }

    #[test]
    fn corrupt_files_are_rejected() {
        let t = TempDir::new("digits");
        let p = t.path().join("train.bin");
        let mut good = TEST_BIN.to_vec();
        std::fs::write(&p, &good[..good.len() - 3]).unwrap();
        let e = load_dir(t.path(), Split::Train).unwrap_err().to_string();
        assert!(
            e.contains("train.bin") && e.contains("19321 for N=297") && e.contains("19318 bytes"),
            "{e}"
        );
        assert!(e.contains("truncated"), "{e}");

        good[0] = b'X';
        std::fs::write(&p, &good).unwrap();
        let e = load_dir(t.path(), Split::Train).unwrap_err().to_string();
        assert!(e.contains("offset 0") && e.contains("DGT1"), "{e}");

        let mut bad = TEST_BIN.to_vec();
        let last = bad.len() - 1;
        bad[last] = 10;
        std::fs::write(&p, &bad).unwrap();
        let e = load_dir(t.path(), Split::Train).unwrap_err().to_string();
        assert!(e.contains("record 296") && e.contains("label 10"), "{e}");

        let mut bad = TEST_BIN.to_vec();
        bad[16 + 64 + 5] = 17;
        std::fs::write(&p, &bad).unwrap();
        let e = load_dir(t.path(), Split::Train).unwrap_err().to_string();
        assert!(
            e.contains("image 1 (offset 85)") && e.contains("found 17"),
            "{e}"
        );

        std::fs::write(&p, b"DGT1").unwrap();
        let e = load_dir(t.path(), Split::Train).unwrap_err().to_string();
        assert!(
            e.contains("16-byte header") && e.contains("found 4 bytes"),
            "{e}"
        );

        std::fs::write(&p, TEST_BIN).unwrap();
        assert_eq!(load_dir(t.path(), Split::Train).unwrap().len(), 297);
    }
}
