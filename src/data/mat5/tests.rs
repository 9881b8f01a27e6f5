use super::write::{file, header, Var};
use super::*;
use crate::data::testutil::TempDir;

fn sample(compress: bool) -> Vec<u8> {
    let a: Vec<u8> = (0..24u8).collect();
    let b: Vec<u8> = [1.5f64, -2.0, 3.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let s: Vec<u8> = [7i16].iter().flat_map(|x| x.to_le_bytes()).collect();
    file(
        &[
            Var {
                name: "skip",
                class: 9,
                dims: &[2, 2],
                ty: MI_UINT8,
                data: &[1, 2, 3, 4],
            },
            Var {
                name: "A",
                class: 9,
                dims: &[2, 3, 4],
                ty: MI_UINT8,
                data: &a,
            },
            Var {
                name: "b",
                class: 6,
                dims: &[3, 1],
                ty: MI_DOUBLE,
                data: &b,
            },
            Var {
                name: "s",
                class: 6,
                dims: &[1, 1],
                ty: MI_INT16,
                data: &s,
            },
        ],
        compress,
    )
}

#[test]
fn reads_uncompressed_and_compressed() {
    for compress in [false, true] {
        let bytes = sample(compress);
        let got = parse_mat5(
            &bytes[..],
            Path::new("t.mat"),
            Some(bytes.len() as u64),
            &["A", "b", "s"],
        )
        .unwrap();
        assert_eq!(got.len(), 3, "compress={compress}");
        assert_eq!(got[0].name, "A");
        assert_eq!(got[0].dims, vec![2, 3, 4]);
        assert_eq!(got[0].data, MatData::U8((0..24).collect()));
        assert_eq!(got[0].compressed, compress);
        assert_eq!(got[1].data, MatData::F64(vec![1.5, -2.0, 3.0]));
        assert_eq!(got[1].class, MX_DOUBLE);
        // a double stored as miINT16 in a small data element
        assert_eq!(got[2].data, MatData::I16(vec![7]));
        assert_eq!(got[2].data.clone().into_u8(), Ok(vec![7]));
        assert_eq!(got[1].data.clone().into_u8(), Err((0, 1.5)));
    }
}

#[test]
fn corrupted_files_never_panic() {
    let mut rng = crate::data::Rng::new(99);
    for compress in [false, true] {
        let good = sample(compress);
        for _ in 0..400 {
            let mut b = good.clone();
            match rng.below(3) {
                0 => b.truncate(rng.below(b.len() as u64) as usize),
                _ => {
                    for _ in 0..1 + rng.below(4) {
                        let i = 128 + rng.below((b.len() - 128) as u64) as usize;
                        b[i] = rng.next_u64() as u8;
                    }
                }
            }
            let _ = parse_mat5(
                &b[..],
                Path::new("fuzz.mat"),
                Some(b.len() as u64),
                &["A", "b", "s"],
            );
        }
    }
}

#[test]
fn big_endian_file() {
    // header "MI" and big-endian tags/data
    let mut out = header(b"MATLAB 5.0 MAT-file", true);
    let mut body = Vec::new();
    for (ty, data) in [
        (MI_UINT32, [6u32.to_be_bytes(), 0u32.to_be_bytes()].concat()),
        (MI_INT32, [1i32.to_be_bytes(), 2i32.to_be_bytes()].concat()),
    ] {
        body.extend_from_slice(&ty.to_be_bytes());
        body.extend_from_slice(&(data.len() as u32).to_be_bytes());
        body.extend_from_slice(&data);
    }
    body.extend_from_slice(&((1u32 << 16) | MI_INT8).to_be_bytes());
    body.extend_from_slice(b"z\0\0\0");
    body.extend_from_slice(&MI_DOUBLE.to_be_bytes());
    body.extend_from_slice(&16u32.to_be_bytes());
    body.extend_from_slice(&2.5f64.to_be_bytes());
    body.extend_from_slice(&(-1.0f64).to_be_bytes());
    out.extend_from_slice(&MI_MATRIX.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    let got = parse_mat5(&out[..], Path::new("be.mat"), None, &["z"]).unwrap();
    assert_eq!(got[0].dims, vec![1, 2]);
    assert_eq!(got[0].data, MatData::F64(vec![2.5, -1.0]));
}

#[test]
fn errors_name_file_and_offset() {
    let t = TempDir::new("mat5");
    let p = t.path().join("bad.mat");

    std::fs::write(&p, b"MATLAB 5.0").unwrap();
    let e = read_mat5(&p, &["A"]).unwrap_err().to_string();
    assert!(
        e.contains("bad.mat: offset 0")
            && e.contains("128-byte MAT-file header")
            && e.contains("found 10 bytes"),
        "{e}"
    );

    let mut v73 = sample(false);
    v73[124] = 0;
    v73[125] = 2;
    std::fs::write(&p, &v73).unwrap();
    let e = read_mat5(&p, &["A"]).unwrap_err().to_string();
    assert!(
        e.contains("offset 124") && e.contains("0x0200") && e.contains("hint"),
        "{e}"
    );

    // truncated uncompressed: the element claims more bytes than the file has
    let full = sample(false);
    std::fs::write(&p, &full[..full.len() - 20]).unwrap();
    let e = read_mat5(&p, &["A", "b", "s"]).unwrap_err().to_string();
    assert!(
        e.contains("bad.mat: offset ") && e.contains("truncated"),
        "{e}"
    );

    // truncated compressed
    let full = sample(true);
    let cut = full.len() - 10;
    std::fs::write(&p, &full[..cut]).unwrap();
    let e = read_mat5(&p, &["A", "b", "s"]).unwrap_err().to_string();
    assert!(e.contains("bad.mat") && e.contains("truncated"), "{e}");

    // corrupt zlib data in the second compressed element (the one holding A)
    let mut bad = sample(true);
    let first_len = u32::from_le_bytes([bad[132], bad[133], bad[134], bad[135]]) as usize;
    let second = 128 + 8 + first_len;
    for b in &mut bad[second + 10..second + 30] {
        *b ^= 0x5a;
    }
    std::fs::write(&p, &bad).unwrap();
    let e = read_mat5(&p, &["A"]).unwrap_err().to_string();
    assert!(
        e.contains("bad.mat") && e.contains(&format!("miCOMPRESSED element at offset {second}")),
        "{e}"
    );

    // a compressed element whose zlib stream is cut short (tag length adjusted to match)
    let mut cut = sample(true);
    let len_at = 128 + 8 + first_len + 4;
    let second_len = u32::from_le_bytes([
        cut[len_at],
        cut[len_at + 1],
        cut[len_at + 2],
        cut[len_at + 3],
    ]) as usize;
    let keep = second_len / 2;
    cut.truncate(second + 8 + keep);
    cut[len_at..len_at + 4].copy_from_slice(&(keep as u32).to_le_bytes());
    std::fs::write(&p, &cut).unwrap();
    let e = read_mat5(&p, &["A"]).unwrap_err().to_string();
    assert!(
        e.contains("bad.mat") && e.contains(&format!("miCOMPRESSED element at offset {second}")),
        "{e}"
    );
    assert!(
        e.contains("the end of the compressed data") || e.contains("corrupt zlib data"),
        "{e}"
    );

    // dimensions that do not match the data
    let a: Vec<u8> = (0..24u8).collect();
    let bytes = file(
        &[Var {
            name: "A",
            class: 9,
            dims: &[5, 5],
            ty: MI_UINT8,
            data: &a,
        }],
        false,
    );
    std::fs::write(&p, &bytes).unwrap();
    let e = read_mat5(&p, &["A"]).unwrap_err().to_string();
    assert!(
        e.contains("expected 25 values (5x5) of 2 (miUINT8)") && e.contains("found 24 bytes"),
        "{e}"
    );
}
