//! Writing MAT5 files, for tests: the same layout MATLAB and scipy write.

use super::*;
use flate2::write::ZlibEncoder;
use std::io::Write;

/// A numeric variable to write: name, class, dims, data type and little-endian data bytes.
pub struct Var<'a> {
    pub name: &'a str,
    pub class: u8,
    pub dims: &'a [usize],
    pub ty: u32,
    pub data: &'a [u8],
}

fn element(out: &mut Vec<u8>, ty: u32, data: &[u8]) {
    if data.len() <= 4 && ty != MI_MATRIX {
        // small data element
        out.extend_from_slice(&(((data.len() as u32) << 16) | ty).to_le_bytes());
        let mut d = [0u8; 4];
        d[..data.len()].copy_from_slice(data);
        out.extend_from_slice(&d);
        return;
    }
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(8) {
        out.push(0);
    }
}

/// The bytes of a miMATRIX element for `v`.
pub fn matrix(v: &Var) -> Vec<u8> {
    let mut body = Vec::new();
    let mut flags = (v.class as u32).to_le_bytes().to_vec();
    flags.extend_from_slice(&0u32.to_le_bytes());
    element(&mut body, MI_UINT32, &flags);
    let dims: Vec<u8> = v
        .dims
        .iter()
        .flat_map(|&d| (d as i32).to_le_bytes())
        .collect();
    element(&mut body, MI_INT32, &dims);
    element(&mut body, MI_INT8, v.name.as_bytes());
    element(&mut body, v.ty, v.data);
    let mut out = Vec::new();
    element(&mut out, MI_MATRIX, &body);
    out
}

/// The 128-byte header: `text` padded to 116 bytes, no subsystem data, then version
/// 0x0100 and the endian indicator as a little-endian file writes them (`IM`), or with
/// `big_endian` as a big-endian one does (`MI`).
pub fn header(text: &[u8], big_endian: bool) -> Vec<u8> {
    let mut out = text.to_vec();
    out.resize(116, b' ');
    out.extend_from_slice(&[0u8; 8]);
    if big_endian {
        out.extend_from_slice(&0x0100u16.to_be_bytes());
        out.extend_from_slice(b"MI");
    } else {
        out.extend_from_slice(&0x0100u16.to_le_bytes());
        out.extend_from_slice(b"IM");
    }
    out
}

/// A whole MAT5 file; each variable compressed (miCOMPRESSED) or not.
pub fn file(vars: &[Var], compress: bool) -> Vec<u8> {
    let mut out = header(
        b"MATLAB 5.0 MAT-file, written by the densenet data tests",
        false,
    );
    for v in vars {
        let m = matrix(v);
        if compress {
            let mut enc = ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(&m).unwrap();
            let z = enc.finish().unwrap();
            out.extend_from_slice(&MI_COMPRESSED.to_le_bytes());
            out.extend_from_slice(&(z.len() as u32).to_le_bytes());
            out.extend_from_slice(&z);
        } else {
            out.extend_from_slice(&m);
        }
    }
    out
}
