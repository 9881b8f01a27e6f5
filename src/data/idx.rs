//! MNIST-style IDX files, for MNIST and Fashion-MNIST.
//!
//! Files: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
//! `t10k-labels-idx1-ubyte`, each optionally gzip-compressed (`.gz`, detected by its magic bytes,
//! not the name); the `train-images.idx3-ubyte` spelling is accepted too. They are looked for in
//! the named directory and in `raw/`, `MNIST/raw/`, `FashionMNIST/raw/` (torchvision's layout).
//!
//! IDX layout (big-endian): two zero bytes, a type byte (0x08 = unsigned byte; the only type these
//! data sets use), the number of dimensions, one u32 per dimension, then the data, row-major.

use std::io::Read;
use std::path::Path;

use flate2::read::MultiGzDecoder;

use super::{find_file, offset_at, read_file, record_at, show_bytes, DataError, Dataset, Split};

/// The Fashion-MNIST class names, by label.
pub const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// An IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The data, row-major.
    pub data: Vec<u8>,
}

/// Loads MNIST (`fashion == false`) or Fashion-MNIST from `dir`.
pub fn load_mnist(dir: &Path, split: Split, fashion: bool) -> Result<Dataset, DataError> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
        Split::Extra => return Err(DataError::Config("mnist has no 'extra' split".into())),
    };
    let subdirs = ["", "raw", "MNIST/raw", "FashionMNIST/raw"];
    let names = |kind: &str, nd: u8| {
        [
            format!("{prefix}-{kind}-idx{nd}-ubyte"),
            format!("{prefix}-{kind}-idx{nd}-ubyte.gz"),
            format!("{prefix}-{kind}.idx{nd}-ubyte"),
        ]
    };
    let img_names = names("images", 3);
    let lbl_names = names("labels", 1);
    let img_path = find_file(dir, &img_names.each_ref().map(String::as_str), &subdirs)?;
    let lbl_path = find_file(dir, &lbl_names.each_ref().map(String::as_str), &subdirs)?;

    let images = read_idx(&img_path)?;
    if images.dims.len() != 3 {
        return Err(DataError::format(
            &img_path,
            offset_at(3),
            "3 dimensions (images x rows x columns)",
            format!("{} dimensions", images.dims.len()),
        ));
    }
    let labels = read_idx(&lbl_path)?;
    if labels.dims.len() != 1 {
        return Err(DataError::format(
            &lbl_path,
            offset_at(3),
            "1 dimension (one label per image)",
            format!("{} dimensions", labels.dims.len()),
        ));
    }
    let (n, h, w) = (images.dims[0], images.dims[1], images.dims[2]);
    if labels.dims[0] != n {
        return Err(DataError::format(
            &lbl_path,
            offset_at(4),
            format!("{n} labels, one per image of {}", img_path.display()),
            format!("{} labels", labels.dims[0]),
        ));
    }
    if let Some(i) = labels.data.iter().position(|&l| l > 9) {
        return Err(DataError::Label {
            path: lbl_path.clone(),
            location: record_at(i as u64, 8 + i as u64),
            label: labels.data[i].to_string(),
            expected: "0..9".into(),
        });
    }
    let (tag, classes): (&str, Vec<String>) = if fashion {
        (
            "fashion-mnist",
            FASHION_CLASSES.iter().map(|s| s.to_string()).collect(),
        )
    } else {
        ("mnist", (0..10).map(|d| d.to_string()).collect())
    };
    Dataset::new(
        format!("{tag}-{split}"),
        1,
        h,
        w,
        images.data,
        labels.data.into_iter().map(u32::from).collect(),
        classes,
        255.0,
    )
}

/// Deflate's largest expansion (a gzip member of `n` bytes inflates to at most about
/// `1032 n` bytes), with slack: what the header of a gzipped IDX file may declare.
const MAX_GZIP_RATIO: u64 = 1040;

/// Reads an IDX file of unsigned bytes, gunzipping it first if it starts with the gzip magic.
/// Offsets in errors are into the (decompressed) IDX data.
///
/// A gzipped file is inflated only as far as its header says the data goes (one byte more, to
/// tell that more follows), and a header that declares more than the file could inflate to is
/// refused before anything is inflated: a small file cannot make the reader inflate gigabytes.
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    let raw = read_file(path)?;
    let (bytes, gz, more) = if raw.starts_with(&[0x1f, 0x8b]) {
        let (b, more) = gunzip_idx(path, &raw)?;
        (b, true, more)
    } else {
        (raw, false, false)
    };
    let loc = |o: usize| {
        if gz {
            format!("offset {o} (of the decompressed data)")
        } else {
            offset_at(o as u64)
        }
    };
    if bytes.len() < 4 {
        return Err(DataError::format(
            path,
            loc(0),
            "a 4-byte IDX magic number",
            format!("{} bytes", bytes.len()),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::format(
            path,
            loc(0),
            "IDX magic starting with two zero bytes",
            show_bytes(&bytes[..4]),
        )
        .with_hint("not an IDX file (if it is gzip-compressed, its first bytes would be 1f 8b)"));
    }
    if bytes[2] != 0x08 {
        return Err(DataError::format(
            path,
            loc(2),
            "data type 0x08 (unsigned byte)",
            format!("0x{:02x}", bytes[2]),
        ));
    }
    let nd = bytes[3] as usize;
    if nd == 0 {
        return Err(DataError::format(path, loc(3), "at least 1 dimension", "0"));
    }
    let header = 4 + 4 * nd;
    if bytes.len() < header {
        return Err(DataError::format(
            path,
            loc(4),
            format!("{nd} big-endian u32 dimension sizes"),
            format!("{} bytes", bytes.len() - 4),
        )
        .with_hint("the file is truncated"));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .unwrap_or(usize::MAX);
    let have = bytes.len() - header;
    if have != count {
        let dims_s = dims
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x");
        let per = if dims.len() > 1 && dims[0] > 0 {
            count / dims[0]
        } else {
            1
        };
        let record = have.checked_div(per).unwrap_or(0);
        let location = if have < count {
            format!("record {record} (offset {})", header + record * per)
        } else {
            format!("offset {}", header + count)
        };
        return Err(DataError::format(
            path,
            if gz {
                format!("{location} of the decompressed data")
            } else {
                location
            },
            format!("{count} data bytes ({dims_s}) after the {header}-byte header"),
            if more {
                format!("more than {count} bytes")
            } else {
                format!("{have} bytes")
            },
        )
        .with_hint(if have < count {
            "the file is truncated"
        } else {
            "trailing bytes after the data"
        }));
    }
    let mut data = bytes;
    data.drain(..header);
    Ok(IdxArray { dims, data })
}

/// Inflates the IDX header of the gzip file `raw`, then at most the data bytes it declares
/// plus one. Returns the bytes and whether the stream went on past the declared data.
fn gunzip_idx(path: &Path, raw: &[u8]) -> Result<(Vec<u8>, bool), DataError> {
    let mut dec = MultiGzDecoder::new(raw);
    let mut out = Vec::new();
    let fill = |dec: &mut MultiGzDecoder<&[u8]>, out: &mut Vec<u8>, n: u64| {
        let before = out.len();
        dec.take(n).read_to_end(out).map_err(|e| {
            DataError::format(
                path,
                format!("gzip data, after {} decompressed bytes", out.len()),
                "a valid gzip stream",
                e.to_string(),
            )
            .with_hint("the .gz file is truncated or corrupt")
        })?;
        Ok::<bool, DataError>((out.len() - before) as u64 == n)
    };
    // magic, then the dimensions; anything malformed is reported by the caller
    if !fill(&mut dec, &mut out, 4)? || out[0] != 0 || out[1] != 0 || out[2] != 0x08 {
        return Ok((out, false));
    }
    let nd = out[3] as u64;
    if !fill(&mut dec, &mut out, 4 * nd)? {
        return Ok((out, false));
    }
    let count = out[4..]
        .chunks_exact(4)
        .map(|c| u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
        .try_fold(1u64, |a, d| a.checked_mul(d))
        .unwrap_or(u64::MAX);
    let most = (raw.len() as u64).saturating_mul(MAX_GZIP_RATIO);
    if count > most {
        return Err(DataError::format(
            path,
            "offset 4 (of the decompressed data)",
            format!(
                "dimensions whose data fits in the file (a {}-byte gzip file inflates to at \
                 most {most} bytes)",
                raw.len()
            ),
            format!("{count} data bytes declared"),
        )
        .with_hint("the IDX header is corrupt"));
    }
    let more = fill(&mut dec, &mut out, count + 1)?;
    Ok((out, more))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::TempDir;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn write_set(dir: &Path, prefix: &str, n: usize, compress: bool) {
        let px: Vec<u8> = (0..n * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let lb: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let (a, b) = (idx(&[n as u32, 4, 3], &px), idx(&[n as u32], &lb));
        let (ai, bi) = (
            format!("{prefix}-images-idx3-ubyte"),
            format!("{prefix}-labels-idx1-ubyte"),
        );
        if compress {
            std::fs::write(dir.join(ai + ".gz"), gz(&a)).unwrap();
            std::fs::write(dir.join(bi + ".gz"), gz(&b)).unwrap();
        } else {
            std::fs::write(dir.join(ai), a).unwrap();
            std::fs::write(dir.join(bi), b).unwrap();
        }
    }

    #[test]
    fn reads_plain_and_gz() {
        let t = TempDir::new("idx");
        write_set(t.path(), "train", 12, false);
        let raw = t.path().join("raw");
        std::fs::create_dir_all(&raw).unwrap();
        write_set(&raw, "t10k", 5, true);
        let d = load_mnist(t.path(), Split::Train, false).unwrap();
        assert_eq!((d.len(), d.channels, d.height, d.width), (12, 1, 4, 3));
        assert_eq!(d.labels[11], 1);
        assert_eq!(d.pixels_of(1)[0], 84);
        assert_eq!(d.name, "mnist-train");
        let f = load_mnist(t.path(), Split::Test, true).unwrap();
        assert_eq!(f.len(), 5);
        assert_eq!(f.classes[9], "Ankle boot");
        assert_eq!(f.name, "fashion-mnist-test");
    }

    #[test]
    fn truncated_corrupt_and_mismatched() {
        let t = TempDir::new("idxbad");
        write_set(t.path(), "train", 12, false);
        let ip = t.path().join("train-images-idx3-ubyte");
        let full = std::fs::read(&ip).unwrap();
        std::fs::write(&ip, &full[..16 + 12 * 5 + 3]).unwrap();
        let e = load_mnist(t.path(), Split::Train, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train-images-idx3-ubyte: record 5 (offset 76)"),
            "{e}"
        );
        assert!(
            e.contains("expected 144 data bytes (12x4x3)") && e.contains("found 63 bytes"),
            "{e}"
        );

        // gzip that is cut short
        std::fs::remove_file(&ip).unwrap();
        let gp = t.path().join("train-images-idx3-ubyte.gz");
        let z = gz(&full);
        std::fs::write(&gp, &z[..z.len() / 2]).unwrap();
        let e = load_mnist(t.path(), Split::Train, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train-images-idx3-ubyte.gz") && e.contains("gzip"),
            "{e}"
        );

        // wrong magic / type
        std::fs::write(&gp, gz(&[0, 0, 0x0d, 1, 0, 0, 0, 0])).unwrap();
        let e = load_mnist(t.path(), Split::Train, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("offset 2 (of the decompressed data)") && e.contains("found 0x0d"),
            "{e}"
        );
        std::fs::write(&gp, b"PK\x03\x04 zip").unwrap();
        let e = load_mnist(t.path(), Split::Train, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("offset 0") && e.contains("not an IDX file"),
            "{e}"
        );
        std::fs::write(&gp, gz(&full)).unwrap();
        assert!(load_mnist(t.path(), Split::Train, false).is_ok());

        // label out of range
        let lp = t.path().join("train-labels-idx1-ubyte");
        let mut l = std::fs::read(&lp).unwrap();
        l[8 + 7] = 12;
        std::fs::write(&lp, &l).unwrap();
        let e = load_mnist(t.path(), Split::Train, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train-labels-idx1-ubyte: record 7 (offset 15): label 12"),
            "{e}"
        );

        // label count differs from image count
        std::fs::write(&lp, idx(&[11], &[0; 11])).unwrap();
        let e = load_mnist(t.path(), Split::Train, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expected 12 labels") && e.contains("found 11 labels"),
            "{e}"
        );

        let e = load_mnist(t.path(), Split::Test, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("t10k-images-idx3-ubyte: not found"), "{e}");
    }

    /// Issue 12, item 12: a gzip bomb is inflated only as far as the header says the data
    /// goes, and a header that declares more than the file can hold is refused at once.
    #[test]
    fn gzip_is_inflated_only_as_far_as_the_header_says() {
        let t = TempDir::new("idxbomb");
        let p = t.path().join("train-images-idx3-ubyte.gz");
        // 144 declared data bytes followed by 20 MB of zeros (a ~20 KB file)
        let mut big = idx(&[12, 4, 3], &[0; 144]);
        big.resize(big.len() + 20_000_000, 0);
        let z = gz(&big);
        assert!(z.len() < 100_000);
        std::fs::write(&p, &z).unwrap();
        let e = read_idx(&p).unwrap_err().to_string();
        assert!(
            e.contains("expected 144 data bytes") && e.contains("found more than 144 bytes"),
            "{e}"
        );
        assert!(e.contains("trailing bytes"), "{e}");
        // a header declaring 60000x28x28x255 bytes in a tiny file: refused before inflating
        let z = gz(&idx(&[60_000, 28, 28, 255], &[0; 1000]));
        std::fs::write(&p, &z).unwrap();
        let e = read_idx(&p).unwrap_err().to_string();
        assert!(
            e.contains("offset 4 (of the decompressed data)")
                && e.contains("11995200000 data bytes declared"),
            "{e}"
        );
        // exactly the declared data still reads
        std::fs::write(&p, gz(&idx(&[2, 3], &[1, 2, 3, 4, 5, 6]))).unwrap();
        let a = read_idx(&p).unwrap();
        assert_eq!((a.dims, a.data), (vec![2, 3], vec![1, 2, 3, 4, 5, 6]));
    }
}
