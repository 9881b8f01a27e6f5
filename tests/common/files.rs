//! Input files made by hand for the robustness tests (issue 33): PNGs chunk by chunk (a
//! palette PNG, whose PLTE the `image` encoder cannot write), PNG chunk surgery with the
//! CRCs fixed up, JPEGs, and `.pth` archives taken apart and put back together.

use std::io::{Cursor, Read, Write};

/// A PNG chunk: length, type, data, and the CRC-32 of type and data.
pub fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    c.extend(kind);
    c.extend(data);
    let mut crc = flate2::Crc::new();
    crc.update(&c[4..]);
    c.extend(crc.sum().to_be_bytes());
    c
}

/// The chunks of a PNG file as `(type, data)`, in order (the signature is skipped).
pub fn png_chunks(png: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 8;
    while at + 12 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let kind: [u8; 4] = png[at + 4..at + 8].try_into().unwrap();
        out.push((kind, png[at + 8..at + 8 + len].to_vec()));
        at += 12 + len;
    }
    out
}

/// A PNG file of `chunks`, each with its right CRC.
pub fn png_of(chunks: &[([u8; 4], Vec<u8>)]) -> Vec<u8> {
    let mut f = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in chunks {
        f.extend(png_chunk(kind, data));
    }
    f
}

/// A `w`×`h` 8-bit palette PNG whose pixel (x, y) is palette entry `(x + y) % 4`, with
/// `plte` as its PLTE chunk (12 bytes, 4 entries, makes a valid file).
pub fn palette_png(w: u32, h: u32, plte: &[u8]) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    // bit depth 8, colour type 3 (indexed), compression, filter, no interlace
    ihdr.extend([8, 3, 0, 0, 0]);
    let mut rows = Vec::new();
    for y in 0..h {
        rows.push(0); // filter: none
        rows.extend((0..w).map(|x| ((x + y) % 4) as u8));
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&rows).unwrap();
    png_of(&[
        (*b"IHDR", ihdr),
        (*b"PLTE", plte.to_vec()),
        (*b"IDAT", z.finish().unwrap()),
        (*b"IEND", Vec::new()),
    ])
}

/// The 4 colours of [`palette_png`]'s valid palette.
pub const PALETTE: [u8; 12] = [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30];

/// A `w`×`h` RGB gradient encoded as `format`.
pub fn encoded(w: u32, h: u32, format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            ((x ^ y) * 7) as u8,
        ])
    });
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), format).unwrap();
    out
}

/// `png` with the last byte of its zlib stream (the Adler-32 checksum's) changed, and the
/// chunk's CRC made right again, so that only the zlib checksum is wrong.
pub fn png_with_bad_adler32(png: &[u8]) -> Vec<u8> {
    let mut chunks = png_chunks(png);
    let last_idat = chunks.iter().rposition(|(k, _)| k == b"IDAT").unwrap();
    let data = &mut chunks[last_idat].1;
    *data.last_mut().unwrap() ^= 0x5a;
    png_of(&chunks)
}

/// The members of a zip archive (a `.pth`), in order.
pub fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut a = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
    (0..a.len())
        .map(|i| {
            let mut f = a.by_index(i).unwrap();
            let name = f.name().unwrap().to_string();
            let mut d = Vec::new();
            f.read_to_end(&mut d).unwrap();
            (name, d)
        })
        .collect()
}

/// A zip archive of stored members, as `torch.save` writes them.
pub fn zip(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in members {
        w.start_file(name.as_str(), opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A committed test fixture's bytes.
pub fn fixture_bytes(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `tests/fixtures/legacy_tiny_densenet.pth` (float32 storages) with element `index` of
/// its first storage member set to `value`.
pub fn pth_with(value: f32, index: usize) -> Vec<u8> {
    let mut m = unzip(&fixture_bytes("legacy_tiny_densenet.pth"));
    let storage = m
        .iter()
        .position(|(n, _)| n.contains("/data/") && !n.contains("serialization"))
        .unwrap();
    m[storage].1[4 * index..4 * index + 4].copy_from_slice(&value.to_le_bytes());
    zip(&m)
}
