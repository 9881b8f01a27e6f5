//! SVHN, cropped digits (format 2): `train_32x32.mat` (73,257 images), `test_32x32.mat`
//! (26,032), `extra_32x32.mat` (531,131), as distributed at <http://ufldl.stanford.edu/housenumbers/>.
//!
//! Each is a MATLAB level-5 MAT file (read with [`super::mat5`]) with variables `X` (uint8,
//! 32x32x3xN, MATLAB column-major order: row fastest, then column, channel, image) and `y` (N x 1,
//! uint8 or double) whose labels are 1..10, 10 meaning the digit 0 (a 0 is also accepted as 0).
//! `X` is converted to per-image CHW bytes; labels become the digit 0..9.

use std::path::Path;

use super::mat5::{class_name, read_mat5, MatArray};
use super::{find_file, DataError, Dataset, Split};

/// Loads one split from `dir`: `train_32x32.mat`, `test_32x32.mat` or `extra_32x32.mat`.
/// The paper's SVHN training set is train + extra (see [`Dataset::append`]).
pub fn load_svhn(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let file = match split {
        Split::Train => "train_32x32.mat",
        Split::Test => "test_32x32.mat",
        Split::Extra => "extra_32x32.mat",
    };
    let path = find_file(dir, &[file], &[""])
        .map_err(|e| e.with_hint("expected SVHN format 2 (cropped digits) .mat files"))?;
    read_svhn_mat(&path, &format!("svhn-{split}"))
}

/// Reads an SVHN `.mat` file into a data set called `name` (CHW pixels, digit labels 0..9,
/// classes "0".."9").
pub fn read_svhn_mat(path: &Path, name: &str) -> Result<Dataset, DataError> {
    let arrays = read_mat5(path, &["X", "y"])?;
    let mut x: Option<MatArray> = None;
    let mut y: Option<MatArray> = None;
    for a in arrays {
        match a.name.as_str() {
            "X" if x.is_none() => x = Some(a),
            "y" if y.is_none() => y = Some(a),
            _ => {}
        }
    }
    let missing = |v: &str| {
        DataError::format(
            path,
            "whole file",
            format!("a numeric variable '{v}'"),
            "none",
        )
        .with_hint("expected an SVHN cropped-digits file with variables X (32x32x3xN) and y (Nx1)")
    };
    let x = x.ok_or_else(|| missing("X"))?;
    let y = y.ok_or_else(|| missing("y"))?;
    let where_x = format!("variable 'X' (element at offset {})", x.offset);
    let where_y = format!("variable 'y' (element at offset {})", y.offset);

    // MATLAB drops trailing singleton dimensions: 32x32x3 is one image.
    let mut dims = x.dims.clone();
    while dims.len() < 4 {
        dims.push(1);
    }
    if dims.len() != 4 || dims[0] == 0 || dims[1] == 0 || dims[2] == 0 {
        return Err(DataError::format(
            path,
            where_x,
            "dimensions HxWxCxN (32x32x3xN)",
            fmt_dims(&x.dims),
        ));
    }
    let (h, w, c, n) = (dims[0], dims[1], dims[2], dims[3]);
    let y_ok =
        y.dims.len() == 2 && (y.dims[0] == n && y.dims[1] == 1 || y.dims[0] == 1 && y.dims[1] == n);
    if !y_ok {
        return Err(DataError::format(
            path,
            where_y,
            format!("dimensions {n}x1 (one label per image of X)"),
            fmt_dims(&y.dims),
        ));
    }
    let x_class = x.class;
    let x_type = x.data.type_name();
    let mut pixels = x.data.into_u8().map_err(|(i, v)| {
        DataError::format(
            path,
            format!("{where_x}, value {i} (image {})", i / (h * w * c)),
            "pixel values that are integers 0..255",
            format!("{v} in a {} array stored as {x_type}", class_name(x_class)),
        )
    })?;
    // Column-major HxWxC per image ([c][col][row]) -> CHW ([c][row][col]), in place.
    let plane = h * w;
    let mut tmp = vec![0u8; plane];
    for p in pixels.chunks_exact_mut(plane) {
        for col in 0..w {
            for row in 0..h {
                tmp[row * w + col] = p[col * h + row];
            }
        }
        p.copy_from_slice(&tmp);
    }
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let v = y.data.get_f64(i);
        if !(0.0..=10.0).contains(&v) || v.fract() != 0.0 {
            return Err(DataError::Label {
                path: path.to_path_buf(),
                location: format!("{where_y}, record {i}"),
                label: v.to_string(),
                expected: "1..10 (10 meaning the digit 0)".into(),
            });
        }
        labels.push(v as u32 % 10);
    }
    let classes = (0..10).map(|d| d.to_string()).collect();
    Dataset::new(name, c, h, w, pixels, labels, classes, 255.0)
}

fn fmt_dims(d: &[usize]) -> String {
    d.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::mat5::write::{file, Var};
    use crate::data::mat5::{MI_DOUBLE, MI_UINT8};
    use crate::data::testutil::TempDir;

    /// X(r, c, ch, n) = (r + 2c + 50ch + 100n) mod 256, column-major.
    fn x_bytes(n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(32 * 32 * 3 * n);
        for img in 0..n {
            for ch in 0..3 {
                for c in 0..32 {
                    for r in 0..32 {
                        v.push(((r + 2 * c + 50 * ch + 100 * img) % 256) as u8);
                    }
                }
            }
        }
        v
    }

    fn check(d: &Dataset, labels: &[u32]) {
        assert_eq!(
            (d.len(), d.channels, d.height, d.width),
            (labels.len(), 3, 32, 32)
        );
        assert_eq!(d.labels, labels);
        for n in 0..d.len() {
            let img = d.pixels_of(n);
            for (ch, r, c) in [(0, 0, 0), (0, 1, 0), (0, 0, 1), (2, 31, 5), (1, 7, 30)] {
                assert_eq!(
                    img[ch * 1024 + r * 32 + c] as usize,
                    (r + 2 * c + 50 * ch + 100 * n) % 256
                );
            }
        }
    }

    #[test]
    fn reads_uint8_and_double_labels_compressed_or_not() {
        let t = TempDir::new("svhn");
        let x = x_bytes(2);
        let y8 = [10u8, 3];
        let yd: Vec<u8> = [10.0f64, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        for compress in [false, true] {
            for (ty, class, data) in [(MI_UINT8, 9, &y8[..]), (MI_DOUBLE, 6, &yd[..])] {
                let bytes = file(
                    &[
                        Var {
                            name: "X",
                            class: 9,
                            dims: &[32, 32, 3, 2],
                            ty: MI_UINT8,
                            data: &x,
                        },
                        Var {
                            name: "y",
                            class,
                            dims: &[2, 1],
                            ty,
                            data,
                        },
                    ],
                    compress,
                );
                std::fs::write(t.path().join("train_32x32.mat"), &bytes).unwrap();
                let d = load_svhn(t.path(), Split::Train).unwrap();
                check(&d, &[0, 3]);
                assert_eq!(d.name, "svhn-train");
            }
        }
        assert!(load_svhn(t.path(), Split::Extra)
            .unwrap_err()
            .to_string()
            .contains("extra_32x32.mat: not found"));
    }

    #[test]
    fn bad_labels_and_shapes() {
        let t = TempDir::new("svhnbad");
        let p = t.path().join("test_32x32.mat");
        let x = x_bytes(2);
        let write = |y: &[u8], ydims: &[usize], xdims: &[usize]| {
            let bytes = file(
                &[
                    Var {
                        name: "X",
                        class: 9,
                        dims: xdims,
                        ty: MI_UINT8,
                        data: &x,
                    },
                    Var {
                        name: "y",
                        class: 9,
                        dims: ydims,
                        ty: MI_UINT8,
                        data: y,
                    },
                ],
                true,
            );
            std::fs::write(&p, bytes).unwrap();
        };
        write(&[1, 11], &[2, 1], &[32, 32, 3, 2]);
        let e = load_svhn(t.path(), Split::Test).unwrap_err().to_string();
        assert!(
            e.contains("test_32x32.mat") && e.contains("variable 'y'") && e.contains("record 1"),
            "{e}"
        );
        assert!(e.contains("label 11 is out of range"), "{e}");

        write(&[1, 2, 3], &[3, 1], &[32, 32, 3, 2]);
        let e = load_svhn(t.path(), Split::Test).unwrap_err().to_string();
        assert!(
            e.contains("expected dimensions 2x1") && e.contains("found 3x1"),
            "{e}"
        );

        write(&[1, 2], &[2, 1], &[64, 16, 3, 2]);
        let d = load_svhn(t.path(), Split::Test).unwrap();
        assert_eq!((d.height, d.width), (64, 16));

        let only_x = file(
            &[Var {
                name: "X",
                class: 9,
                dims: &[32, 32, 3, 2],
                ty: MI_UINT8,
                data: &x,
            }],
            false,
        );
        std::fs::write(&p, only_x).unwrap();
        let e = load_svhn(t.path(), Split::Test).unwrap_err().to_string();
        assert!(e.contains("expected a numeric variable 'y'"), "{e}");
    }

    /// The fixture written by scipy.io.savemat (tests/fixtures/make_svhn_fixture.py), compressed,
    /// with X in the pattern of `x_bytes` and y = [10, 3] stored as double.
    #[test]
    fn reads_scipy_fixture() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/svhn_tiny_32x32.mat");
        let d = read_svhn_mat(&p, "fixture").unwrap();
        check(&d, &[0, 3]);
    }
}
