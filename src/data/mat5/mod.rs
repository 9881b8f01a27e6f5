//! A reader for MATLAB level-5 MAT files (what `save -v6`/`-v7` and `scipy.io.savemat` write),
//! limited to what numeric data sets such as SVHN use.
//!
//! Layout: a 128-byte header (116 bytes of text, 8 bytes subsystem offset, u16 version 0x0100,
//! 2-byte endian indicator `IM` (little-endian) or `MI` (big-endian)), then data elements. Each
//! element has an 8-byte tag (u32 data type, u32 byte count; or, in the "small element" form, u16
//! count and u16 type with up to 4 data bytes in the tag) and its data, padded to 8 bytes.
//! Top-level elements are `miMATRIX` (14) or `miCOMPRESSED` (15, a zlib stream holding one or more
//! elements, not padded). A `miMATRIX` holds: array flags (`miUINT32`, class in the low byte,
//! complex bit 0x800), dimensions (`miINT32`), name (`miINT8`), real part (any numeric type,
//! which may differ from the class, e.g. a double array stored as `miUINT8`), imaginary part.
//!
//! The reader streams: a compressed element is inflated on the fly and only the wanted
//! variables' data is kept, so a large file (SVHN `extra_32x32.mat`, 1.3 GB) needs memory for the
//! wanted arrays only. Non-numeric arrays (cells, structs, chars, sparse) are skipped.
//! MATLAB v7.3 files (HDF5) are not supported.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use flate2::read::ZlibDecoder;

use super::DataError;

/// Data type `miINT8`.
pub const MI_INT8: u32 = 1;
/// Data type `miUINT8`.
pub const MI_UINT8: u32 = 2;
/// Data type `miINT16`.
pub const MI_INT16: u32 = 3;
/// Data type `miUINT16`.
pub const MI_UINT16: u32 = 4;
/// Data type `miINT32`.
pub const MI_INT32: u32 = 5;
/// Data type `miUINT32`.
pub const MI_UINT32: u32 = 6;
/// Data type `miSINGLE`.
pub const MI_SINGLE: u32 = 7;
/// Data type `miDOUBLE`.
pub const MI_DOUBLE: u32 = 9;
/// Data type `miINT64`.
pub const MI_INT64: u32 = 12;
/// Data type `miUINT64`.
pub const MI_UINT64: u32 = 13;
/// Data type `miMATRIX`.
pub const MI_MATRIX: u32 = 14;
/// Data type `miCOMPRESSED`.
pub const MI_COMPRESSED: u32 = 15;
/// Data type `miUTF8`.
pub const MI_UTF8: u32 = 16;

/// Array class `mxDOUBLE_CLASS`.
pub const MX_DOUBLE: u8 = 6;
/// Array class `mxSINGLE_CLASS`.
pub const MX_SINGLE: u8 = 7;
/// Array class `mxINT8_CLASS`.
pub const MX_INT8: u8 = 8;
/// Array class `mxUINT8_CLASS`.
pub const MX_UINT8: u8 = 9;
/// Array class `mxUINT64_CLASS` (the last numeric class; 6..=15 are numeric).
pub const MX_UINT64: u8 = 15;

/// The numeric data of an array, in the data type it was stored with.
#[derive(Clone, Debug, PartialEq)]
pub enum MatData {
    /// `miINT8`.
    I8(Vec<i8>),
    /// `miUINT8`.
    U8(Vec<u8>),
    /// `miINT16`.
    I16(Vec<i16>),
    /// `miUINT16`.
    U16(Vec<u16>),
    /// `miINT32`.
    I32(Vec<i32>),
    /// `miUINT32`.
    U32(Vec<u32>),
    /// `miINT64`.
    I64(Vec<i64>),
    /// `miUINT64`.
    U64(Vec<u64>),
    /// `miSINGLE`.
    F32(Vec<f32>),
    /// `miDOUBLE`.
    F64(Vec<f64>),
}

impl MatData {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            MatData::I8(v) => v.len(),
            MatData::U8(v) => v.len(),
            MatData::I16(v) => v.len(),
            MatData::U16(v) => v.len(),
            MatData::I32(v) => v.len(),
            MatData::U32(v) => v.len(),
            MatData::I64(v) => v.len(),
            MatData::U64(v) => v.len(),
            MatData::F32(v) => v.len(),
            MatData::F64(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Value `i` as f64 (exact for all but 64-bit integers above 2^53). Panics if out of range.
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            MatData::I8(v) => v[i] as f64,
            MatData::U8(v) => v[i] as f64,
            MatData::I16(v) => v[i] as f64,
            MatData::U16(v) => v[i] as f64,
            MatData::I32(v) => v[i] as f64,
            MatData::U32(v) => v[i] as f64,
            MatData::I64(v) => v[i] as f64,
            MatData::U64(v) => v[i] as f64,
            MatData::F32(v) => v[i] as f64,
            MatData::F64(v) => v[i],
        }
    }

    /// The MAT-file name of the stored data type, e.g. `miUINT8`.
    pub fn type_name(&self) -> &'static str {
        match self {
            MatData::I8(_) => "miINT8",
            MatData::U8(_) => "miUINT8",
            MatData::I16(_) => "miINT16",
            MatData::U16(_) => "miUINT16",
            MatData::I32(_) => "miINT32",
            MatData::U32(_) => "miUINT32",
            MatData::I64(_) => "miINT64",
            MatData::U64(_) => "miUINT64",
            MatData::F32(_) => "miSINGLE",
            MatData::F64(_) => "miDOUBLE",
        }
    }

    /// The values as bytes, if every value is an integer in 0..=255; otherwise the index and
    /// value of the first one that is not. `U8` data is moved, not copied.
    pub fn into_u8(self) -> Result<Vec<u8>, (usize, f64)> {
        if let MatData::U8(v) = self {
            return Ok(v);
        }
        let mut out = Vec::with_capacity(self.len());
        for i in 0..self.len() {
            let x = self.get_f64(i);
            if !(0.0..=255.0).contains(&x) || x.fract() != 0.0 {
                return Err((i, x));
            }
            out.push(x as u8);
        }
        Ok(out)
    }
}

/// A numeric array read from a MAT file.
#[derive(Clone, Debug, PartialEq)]
pub struct MatArray {
    /// Variable name.
    pub name: String,
    /// Array class (`mxDOUBLE_CLASS` = 6 .. `mxUINT64_CLASS` = 15).
    pub class: u8,
    /// Dimensions, MATLAB order (column-major: the first index varies fastest in `data`).
    pub dims: Vec<usize>,
    /// The real part.
    pub data: MatData,
    /// Byte offset of the array's top-level element in the file.
    pub offset: u64,
    /// Whether the array was inside a `miCOMPRESSED` element.
    pub compressed: bool,
}

/// The name of an array class, e.g. `double`, `uint8`.
pub fn class_name(class: u8) -> &'static str {
    match class {
        1 => "cell",
        2 => "struct",
        3 => "object",
        4 => "char",
        5 => "sparse",
        6 => "double",
        7 => "single",
        8 => "int8",
        9 => "uint8",
        10 => "int16",
        11 => "uint16",
        12 => "int32",
        13 => "uint32",
        14 => "int64",
        15 => "uint64",
        _ => "unknown",
    }
}

/// Reads the numeric arrays named in `wanted` from the MAT5 file at `path`; other variables are
/// skipped. Arrays are returned in file order; a wanted name that is absent is simply missing
/// from the result (the caller decides whether that is an error).
pub fn read_mat5(path: &Path, wanted: &[&str]) -> Result<Vec<MatArray>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    parse_mat5(
        BufReader::with_capacity(1 << 20, file),
        path,
        Some(len),
        wanted,
    )
}

/// Parses a MAT5 stream; `path` is used in error messages, `file_len` (if known) to detect
/// truncation early. See [`read_mat5`].
pub fn parse_mat5<R: Read>(
    reader: R,
    path: &Path,
    file_len: Option<u64>,
    wanted: &[&str],
) -> Result<Vec<MatArray>, DataError> {
    let mut rd = Reader {
        r: Counting {
            inner: reader,
            pos: 0,
        },
        big: false,
        path,
        zlib_at: None,
        limit: file_len.unwrap_or(u64::MAX),
    };
    let mut header = [0u8; 128];
    let got = read_full(&mut rd.r, &mut header).map_err(|e| DataError::io(path, e))?;
    if got < 128 {
        return Err(DataError::format(
            path,
            "offset 0",
            "a 128-byte MAT-file header",
            format!("{got} bytes"),
        ));
    }
    let text = String::from_utf8_lossy(&header[..116]).to_string();
    let hint = "save the file as a MATLAB level-5 MAT file (MATLAB 'save -v7' or scipy.io.savemat)";
    rd.big = match &header[126..128] {
        b"IM" => false,
        b"MI" => true,
        other => {
            let e = DataError::format(
                path,
                "offset 126",
                "endian indicator \"IM\" or \"MI\" of a level-5 MAT file",
                super::show_bytes(other),
            );
            return Err(if header.starts_with(b"\x89HDF") {
                e.with_hint(format!("this is an HDF5 file (MATLAB v7.3); {hint}"))
            } else {
                e.with_hint(hint)
            });
        }
    };
    let version = rd.u16_of([header[124], header[125]]);
    if version != 0x0100 {
        let e = DataError::format(
            path,
            "offset 124",
            "MAT-file version 0x0100",
            format!("0x{version:04x}"),
        );
        return Err(if text.contains("7.3") {
            e.with_hint(format!("MATLAB v7.3 files are HDF5; {hint}"))
        } else {
            e.with_hint(hint)
        });
    }

    let mut found: Vec<MatArray> = Vec::new();
    while found.len() < wanted.len() {
        let Some(tag) = rd.top_tag()? else { break };
        let data_end = tag.offset + 8 + tag.len as u64;
        if !tag.small && data_end > rd.limit {
            return Err(DataError::format(
                path,
                rd.loc(tag.offset),
                format!(
                    "a data element of {} bytes (type {})",
                    tag.len,
                    type_name(tag.ty)
                ),
                format!(
                    "only {} bytes before the end of the file",
                    rd.limit.saturating_sub(tag.offset + 8)
                ),
            )
            .with_hint("the file is truncated"));
        }
        match tag.ty {
            MI_COMPRESSED if !tag.small => {
                let n = tag.len as u64;
                let at = tag.offset;
                {
                    let take = (&mut rd.r).take(n);
                    let mut inner = Reader {
                        r: Counting {
                            inner: ZlibDecoder::new(take),
                            pos: 0,
                        },
                        big: rd.big,
                        path,
                        zlib_at: Some(at),
                        // deflate expands at most ~1032:1
                        limit: n.saturating_mul(1100).saturating_add(4096),
                    };
                    while let Some(t) = inner.top_tag()? {
                        if t.ty != MI_MATRIX || t.small {
                            return Err(DataError::format(
                                path,
                                inner.loc(t.offset),
                                "a miMATRIX element inside the miCOMPRESSED element",
                                format!("data type {}", type_name(t.ty)),
                            ));
                        }
                        if let Some(mut a) = parse_matrix(&mut inner, &t, wanted)? {
                            a.offset = at;
                            a.compressed = true;
                            found.push(a);
                        }
                    }
                }
                // consume whatever the inflater did not (normally nothing)
                let consumed = rd.r.pos - (at + 8);
                if consumed < n {
                    rd.skip(n - consumed, "the rest of the miCOMPRESSED element")?;
                }
            }
            MI_MATRIX if !tag.small => {
                if let Some(a) = parse_matrix(&mut rd, &tag, wanted)? {
                    found.push(a);
                }
                rd.skip_padding_lenient(tag.len as u64);
            }
            _ => {
                if !tag.small {
                    rd.skip(tag.len as u64, "an element of another type")?;
                    rd.skip_padding_lenient(tag.len as u64);
                }
            }
        }
    }
    Ok(found)
}

fn type_name(ty: u32) -> String {
    let name = match ty {
        MI_INT8 => "miINT8",
        MI_UINT8 => "miUINT8",
        MI_INT16 => "miINT16",
        MI_UINT16 => "miUINT16",
        MI_INT32 => "miINT32",
        MI_UINT32 => "miUINT32",
        MI_SINGLE => "miSINGLE",
        MI_DOUBLE => "miDOUBLE",
        MI_INT64 => "miINT64",
        MI_UINT64 => "miUINT64",
        MI_MATRIX => "miMATRIX",
        MI_COMPRESSED => "miCOMPRESSED",
        MI_UTF8 => "miUTF8",
        _ => return format!("{ty} (unknown)"),
    };
    format!("{ty} ({name})")
}

fn elem_size(ty: u32) -> Option<usize> {
    Some(match ty {
        MI_INT8 | MI_UINT8 => 1,
        MI_INT16 | MI_UINT16 => 2,
        MI_INT32 | MI_UINT32 | MI_SINGLE => 4,
        MI_DOUBLE | MI_INT64 | MI_UINT64 => 8,
        _ => return None,
    })
}

/// Reads until `buf` is full or end of stream; returns the count read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A reader that counts the bytes read through it.
struct Counting<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// An element tag.
struct Tag {
    ty: u32,
    len: u32,
    /// Small data element: the data is in `small_data[..len]`.
    small: bool,
    small_data: [u8; 4],
    /// Offset of the tag (in the file, or in the inflated stream).
    offset: u64,
}

struct Reader<'p, R> {
    r: Counting<R>,
    big: bool,
    path: &'p Path,
    /// File offset of the enclosing miCOMPRESSED element, if inside one.
    zlib_at: Option<u64>,
    /// Upper bound on the stream length (for sanity checks before allocating).
    limit: u64,
}

impl<R: Read> Reader<'_, R> {
    fn pos(&self) -> u64 {
        self.r.pos
    }

    fn loc(&self, pos: u64) -> String {
        match self.zlib_at {
            None => format!("offset {pos}"),
            Some(at) => format!(
                "offset {pos} of the data inflated from the miCOMPRESSED element at offset {at}"
            ),
        }
    }

    fn u16_of(&self, b: [u8; 2]) -> u16 {
        if self.big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32_of(&self, b: [u8; 4]) -> u32 {
        if self.big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    /// Maps a read error at `pos` while reading `what`.
    fn read_error(&self, pos: u64, e: io::Error, n: u64, what: &str) -> DataError {
        let end = if self.zlib_at.is_some() {
            "the end of the compressed data"
        } else {
            "the end of the file"
        };
        if e.kind() == io::ErrorKind::UnexpectedEof {
            DataError::format(
                self.path,
                self.loc(pos),
                format!("{n} bytes of {what}"),
                end,
            )
            .with_hint("the file is truncated")
        } else if self.zlib_at.is_some() {
            DataError::format(
                self.path,
                self.loc(pos),
                format!("{n} bytes of {what}"),
                format!("corrupt zlib data ({e})"),
            )
            .with_hint("the file is corrupt or truncated")
        } else {
            DataError::io(self.path, e)
        }
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), DataError> {
        let pos = self.pos();
        match read_full(&mut self.r, buf) {
            Ok(n) if n == buf.len() => Ok(()),
            Ok(_) => Err(self.read_error(
                pos,
                io::ErrorKind::UnexpectedEof.into(),
                buf.len() as u64,
                what,
            )),
            Err(e) => Err(self.read_error(pos, e, buf.len() as u64, what)),
        }
    }

    fn read_vec(&mut self, n: u64, what: &str) -> Result<Vec<u8>, DataError> {
        let pos = self.pos();
        if n > self.limit.saturating_sub(pos) {
            return Err(DataError::format(
                self.path,
                self.loc(pos),
                format!("{n} bytes of {what}"),
                format!("a stream of at most {} bytes", self.limit),
            )
            .with_hint("the file is corrupt or truncated"));
        }
        // Inside a zlib stream the declared size is only a claim until the bytes are
        // inflated: reserve a little and grow with what arrives (at most `n`), so memory
        // follows the data, not the header. So in a stream of unknown length; a plain file
        // of known length holds its `n` bytes (checked above).
        let reserve = if self.zlib_at.is_some() || self.limit == u64::MAX {
            n.min(1 << 20)
        } else {
            n
        };
        let mut v = Vec::new();
        v.try_reserve_exact(reserve as usize).map_err(|_| {
            DataError::format(
                self.path,
                self.loc(pos),
                format!("{n} bytes of {what}"),
                "not enough memory to hold them",
            )
        })?;
        match (&mut self.r).take(n).read_to_end(&mut v) {
            Ok(got) if got as u64 == n => Ok(v),
            Ok(_) => Err(self.read_error(pos, io::ErrorKind::UnexpectedEof.into(), n, what)),
            Err(e) => Err(self.read_error(pos, e, n, what)),
        }
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<(), DataError> {
        let pos = self.pos();
        match io::copy(&mut (&mut self.r).take(n), &mut io::sink()) {
            Ok(got) if got == n => Ok(()),
            Ok(_) => Err(self.read_error(pos, io::ErrorKind::UnexpectedEof.into(), n, what)),
            Err(e) => Err(self.read_error(pos, e, n, what)),
        }
    }

    /// Skips the padding after a top-level element, tolerating a file that ends without it.
    fn skip_padding_lenient(&mut self, len: u64) {
        let pad = (8 - len % 8) % 8;
        if pad > 0 {
            let _ = io::copy(&mut (&mut self.r).take(pad), &mut io::sink());
        }
    }

    fn parse_tag(&self, b: [u8; 8], offset: u64) -> Tag {
        let first = self.u32_of([b[0], b[1], b[2], b[3]]);
        if first >> 16 != 0 {
            Tag {
                ty: first & 0xffff,
                len: first >> 16,
                small: true,
                small_data: [b[4], b[5], b[6], b[7]],
                offset,
            }
        } else {
            Tag {
                ty: first,
                len: self.u32_of([b[4], b[5], b[6], b[7]]),
                small: false,
                small_data: [0; 4],
                offset,
            }
        }
    }

    /// A top-level tag, or `None` at a clean end of stream.
    fn top_tag(&mut self) -> Result<Option<Tag>, DataError> {
        let pos = self.pos();
        let mut b = [0u8; 8];
        let got = read_full(&mut self.r, &mut b)
            .map_err(|e| self.read_error(pos, e, 8, "a data element tag"))?;
        if got == 0 {
            return Ok(None);
        }
        if got < 8 {
            return Err(self.read_error(
                pos,
                io::ErrorKind::UnexpectedEof.into(),
                8,
                "a data element tag",
            ));
        }
        Ok(Some(self.parse_tag(b, pos)))
    }

    /// A sub-element tag that must end by `end`.
    fn sub_tag(&mut self, end: u64, what: &str) -> Result<Tag, DataError> {
        let pos = self.pos();
        let mut b = [0u8; 8];
        self.read_exact(&mut b, &format!("the tag of {what}"))?;
        let t = self.parse_tag(b, pos);
        let stop = if t.small {
            pos + 8
        } else {
            pos + 8 + t.len as u64
        };
        if stop > end || (t.small && t.len > 4) {
            return Err(DataError::format(
                self.path,
                self.loc(pos),
                format!("{what} within the enclosing miMATRIX element (which ends at {end})"),
                format!("an element of {} bytes", t.len),
            )
            .with_hint("the file is corrupt"));
        }
        Ok(t)
    }

    /// The data bytes of a sub-element, then its padding (not past `end`, the end of the
    /// enclosing element, so a writer that leaves out the last padding is tolerated).
    fn sub_data(&mut self, t: &Tag, what: &str, end: u64) -> Result<Vec<u8>, DataError> {
        if t.small {
            return Ok(t.small_data[..t.len as usize].to_vec());
        }
        let v = self.read_vec(t.len as u64, what)?;
        let pad = ((8 - t.len as u64 % 8) % 8).min(end.saturating_sub(self.pos()));
        if pad > 0 {
            self.skip(pad, "padding to an 8-byte boundary")?;
        }
        Ok(v)
    }

    fn expect_type(&self, t: &Tag, types: &[u32], what: &str) -> Result<(), DataError> {
        if types.contains(&t.ty) {
            Ok(())
        } else {
            let want: Vec<String> = types.iter().map(|&x| type_name(x)).collect();
            Err(DataError::format(
                self.path,
                self.loc(t.offset),
                format!("{what} of type {}", want.join(" or ")),
                format!("type {}", type_name(t.ty)),
            ))
        }
    }

    fn typed(&self, ty: u32, bytes: Vec<u8>) -> MatData {
        macro_rules! conv {
            ($t:ty, $n:expr, $variant:ident) => {
                MatData::$variant(
                    bytes
                        .chunks_exact($n)
                        .map(|c| {
                            let mut a = [0u8; $n];
                            a.copy_from_slice(c);
                            if self.big {
                                <$t>::from_be_bytes(a)
                            } else {
                                <$t>::from_le_bytes(a)
                            }
                        })
                        .collect(),
                )
            };
        }
        match ty {
            MI_UINT8 => MatData::U8(bytes),
            MI_INT8 => MatData::I8(bytes.into_iter().map(|b| b as i8).collect()),
            MI_INT16 => conv!(i16, 2, I16),
            MI_UINT16 => conv!(u16, 2, U16),
            MI_INT32 => conv!(i32, 4, I32),
            MI_UINT32 => conv!(u32, 4, U32),
            MI_SINGLE => conv!(f32, 4, F32),
            MI_DOUBLE => conv!(f64, 8, F64),
            MI_INT64 => conv!(i64, 8, I64),
            _ => conv!(u64, 8, U64),
        }
    }
}

/// Parses the body of a `miMATRIX` element whose tag is `tag`; returns the array if it is
/// numeric and wanted, leaving the reader at the end of the element (before padding).
fn parse_matrix<R: Read>(
    rd: &mut Reader<'_, R>,
    tag: &Tag,
    wanted: &[&str],
) -> Result<Option<MatArray>, DataError> {
    let start = rd.pos();
    let end = start + tag.len as u64;
    if tag.len == 0 {
        return Ok(None); // an empty matrix
    }
    let path = rd.path;
    let ft = rd.sub_tag(end, "the array flags")?;
    rd.expect_type(&ft, &[MI_UINT32], "array flags")?;
    let flags_bytes = rd.sub_data(&ft, "the array flags", end)?;
    if flags_bytes.len() != 8 {
        return Err(DataError::format(
            path,
            rd.loc(ft.offset),
            "8 bytes of array flags",
            format!("{} bytes", flags_bytes.len()),
        ));
    }
    let flags = rd.u32_of([
        flags_bytes[0],
        flags_bytes[1],
        flags_bytes[2],
        flags_bytes[3],
    ]);
    let class = (flags & 0xff) as u8;
    let complex = flags & 0x800 != 0;

    let dt = rd.sub_tag(end, "the dimensions")?;
    rd.expect_type(&dt, &[MI_INT32], "dimensions")?;
    let dbytes = rd.sub_data(&dt, "the dimensions", end)?;
    if dbytes.len() < 8 || dbytes.len() % 4 != 0 {
        return Err(DataError::format(
            path,
            rd.loc(dt.offset),
            "at least 2 dimensions of 4 bytes",
            format!("{} bytes", dbytes.len()),
        ));
    }
    let mut dims = Vec::with_capacity(dbytes.len() / 4);
    for c in dbytes.chunks_exact(4) {
        let d = rd.u32_of([c[0], c[1], c[2], c[3]]) as i32;
        if d < 0 {
            return Err(DataError::format(
                path,
                rd.loc(dt.offset),
                "non-negative dimensions",
                format!("{d}"),
            ));
        }
        dims.push(d as usize);
    }

    let nt = rd.sub_tag(end, "the array name")?;
    rd.expect_type(&nt, &[MI_INT8, MI_UINT8, MI_UTF8], "array name")?;
    let name = String::from_utf8_lossy(&rd.sub_data(&nt, "the array name", end)?).to_string();

    let numeric = (MX_DOUBLE..=MX_UINT64).contains(&class);
    if !numeric || !wanted.contains(&name.as_str()) {
        let here = rd.pos();
        rd.skip(end.saturating_sub(here), "the rest of the miMATRIX element")?;
        return Ok(None);
    }
    if complex {
        return Err(DataError::format(
            path,
            rd.loc(tag.offset),
            format!("variable '{name}' to be a real array"),
            format!("a complex {} array", class_name(class)),
        ));
    }

    let rt = rd.sub_tag(end, &format!("the data of '{name}'"))?;
    let size = elem_size(rt.ty).ok_or_else(|| {
        DataError::format(
            path,
            rd.loc(rt.offset),
            format!("numeric data for variable '{name}'"),
            format!("type {}", type_name(rt.ty)),
        )
    })?;
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .unwrap_or(usize::MAX);
    if !(rt.len as usize).is_multiple_of(size) || rt.len as usize / size != count {
        return Err(DataError::format(
            path,
            rd.loc(rt.offset),
            format!(
                "{count} values ({}) of {} ({size}-byte values) for '{name}'",
                dims.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("x"),
                type_name(rt.ty)
            ),
            format!("{} bytes", rt.len),
        ));
    }
    let bytes = rd.sub_data(&rt, &format!("the data of '{name}'"), end)?;
    let data = rd.typed(rt.ty, bytes);
    let here = rd.pos();
    if here < end {
        rd.skip(end - here, "the rest of the miMATRIX element")?;
    }
    Ok(Some(MatArray {
        name,
        class,
        dims,
        data,
        offset: tag.offset,
        compressed: false,
    }))
}

#[cfg(test)]
pub(crate) mod write;

#[cfg(test)]
mod tests;
