//! Storages and strides: the dtypes a storage may hold, their decoding to `f32`, and the
//! gathering of a tensor's elements from its storage by offset and strides.

/// Element types of torch storages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// The torch name of the dtype (`torch.<name>`).
    pub(super) fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }

    /// Bytes per element.
    pub(super) fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The dtype of a legacy typed storage class `torch.<name>`.
    /// The legacy storage class of this element type (`FloatStorage`, …).
    pub(super) fn storage_class(self) -> &'static str {
        match self {
            DType::F32 => "FloatStorage",
            DType::F64 => "DoubleStorage",
            DType::F16 => "HalfStorage",
            DType::BF16 => "BFloat16Storage",
            DType::I64 => "LongStorage",
            DType::I32 => "IntStorage",
            DType::I16 => "ShortStorage",
            DType::I8 => "CharStorage",
            DType::U8 => "ByteStorage",
            DType::Bool => "BoolStorage",
        }
    }

    pub(super) fn from_storage_class(name: &str) -> Option<DType> {
        Some(match name {
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            // Untyped storages count bytes.
            "UntypedStorage" => DType::U8,
            _ => return None,
        })
    }

    /// The dtype pickled as the global `torch.<name>` (a `torch.dtype`).
    pub(super) fn from_dtype_name(name: &str) -> Option<DType> {
        Some(match name {
            "float32" | "float" => DType::F32,
            "float64" | "double" => DType::F64,
            "float16" | "half" => DType::F16,
            "bfloat16" => DType::BF16,
            "int64" | "long" => DType::I64,
            "int32" | "int" => DType::I32,
            "int16" | "short" => DType::I16,
            "int8" => DType::I8,
            "uint8" => DType::U8,
            "bool" => DType::Bool,
            _ => return None,
        })
    }
}

/// Converts IEEE half-precision bits to `f32` (exactly; every half is an f32).
pub(super) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: mant * 2^-24, exact in f32.
            let v = mant as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, _) => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((exp + 112) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// Decodes one little-endian element; `b` is exactly `dtype.size()` bytes.
pub(super) fn decode(dtype: DType, b: &[u8]) -> Option<f32> {
    Some(match dtype {
        DType::F32 => f32::from_le_bytes(b.try_into().ok()?),
        DType::F64 => f64::from_le_bytes(b.try_into().ok()?) as f32,
        DType::F16 => f16_to_f32(u16::from_le_bytes(b.try_into().ok()?)),
        DType::BF16 => f32::from_bits(u32::from(u16::from_le_bytes(b.try_into().ok()?)) << 16),
        DType::I64 => i64::from_le_bytes(b.try_into().ok()?) as f32,
        DType::I32 => i32::from_le_bytes(b.try_into().ok()?) as f32,
        DType::I16 => f32::from(i16::from_le_bytes(b.try_into().ok()?)),
        DType::I8 => f32::from(i8::from_le_bytes(b.try_into().ok()?)),
        DType::U8 => f32::from(*b.first()?),
        DType::Bool => f32::from(u8::from(*b.first()? != 0)),
    })
}

/// Most elements a view may have beyond its storage's element count.
pub(super) const MAX_BROADCAST_NUMEL: usize = 1 << 24;

/// Copies the strided view `meta` out of `storage` into a row-major `Vec`.
pub(super) fn gather(storage: &[u8], meta: &TensorMeta, numel: usize) -> Result<Vec<f32>, String> {
    let elem = meta.dtype.size();
    // Elements the storage holds: what the persistent id declared, which the
    // member's bytes must cover.
    // Like `torch.load`, the member must be exactly the declared storage: a member of
    // another size (e.g. float32 bytes under a `HalfStorage` class) would be decoded as
    // garbage.
    let declared = meta.storage_bytes / elem as u64;
    if storage.len() as u64 != meta.storage_bytes {
        let sd = meta.storage_dtype;
        return Err(format!(
            "the storage member holds {} bytes, but the persistent id declares a torch.{} of \
             {} {} elements ({} bytes)",
            storage.len(),
            sd.storage_class(),
            meta.storage_bytes / sd.size() as u64,
            sd.name(),
            meta.storage_bytes
        ));
    }
    // Highest element index the view touches (sizes are all >= 1 here).
    let mut max_index = meta.offset;
    for (&d, &s) in meta.size.iter().zip(&meta.stride) {
        max_index = (d as u64 - 1)
            .checked_mul(s)
            .and_then(|x| x.checked_add(max_index))
            .ok_or_else(|| "size and stride overflow".to_string())?;
    }
    if max_index >= declared {
        return Err(format!(
            "view (storage offset {}, size {:?}, stride {:?}) reaches element {} but the storage \
             holds {} {} elements",
            meta.offset,
            meta.size,
            meta.stride,
            max_index,
            declared,
            meta.dtype.name()
        ));
    }
    // A view can only hold more elements than its storage when strides
    // overlap (e.g. `expand`); cap those so a crafted file cannot make a tiny
    // storage blow up into gigabytes.
    if numel as u64 > declared && numel > MAX_BROADCAST_NUMEL {
        return Err(format!(
            "view of size {:?} (stride {:?}) has {numel} elements from a storage of {declared}; \
             overlapping views are limited to {MAX_BROADCAST_NUMEL} elements",
            meta.size, meta.stride
        ));
    }
    let mut out = Vec::new();
    out.try_reserve_exact(numel)
        .map_err(|e| format!("cannot allocate {numel} elements: {e}"))?;
    let bad = || "internal error: element out of range after bounds check".to_string();

    // Fast path: a contiguous row-major view is one slice of the storage.
    let mut contiguous = true;
    let mut expect = 1u64;
    for (&d, &s) in meta.size.iter().zip(&meta.stride).rev() {
        if d != 1 && s != expect {
            contiguous = false;
        }
        expect *= d as u64;
    }
    let start = meta.offset as usize * elem;
    if contiguous {
        let bytes = storage.get(start..start + numel * elem).ok_or_else(bad)?;
        for chunk in bytes.chunks_exact(elem) {
            out.push(decode(meta.dtype, chunk).ok_or_else(bad)?);
        }
        return Ok(out);
    }

    // General path: walk the multi-index like an odometer, last dim fastest.
    let ndim = meta.size.len();
    let stride: Vec<usize> = meta.stride.iter().map(|&s| s as usize).collect();
    let mut idx = vec![0usize; ndim];
    let mut pos = meta.offset as usize;
    for _ in 0..numel {
        let b = storage.get(pos * elem..(pos + 1) * elem).ok_or_else(bad)?;
        out.push(decode(meta.dtype, b).ok_or_else(bad)?);
        let mut d = ndim;
        while d > 0 {
            d -= 1;
            idx[d] += 1;
            pos += stride[d];
            if idx[d] < meta.size[d] {
                break;
            }
            pos -= stride[d] * meta.size[d];
            idx[d] = 0;
        }
    }
    Ok(out)
}

/// A rebuilt tensor: where its elements lie in which storage.
#[derive(Debug, Clone)]
pub(super) struct TensorMeta {
    /// Persistent-id key: the storage is member `<prefix>/data/<key>`.
    pub(super) key: String,
    /// Size of the storage in bytes, as the persistent id declares it.
    pub(super) storage_bytes: u64,
    /// Element type of the storage, as its persistent id declares it (`torch.FloatStorage`
    /// …); `storage_bytes` is its element count times this type's size.
    pub(super) storage_dtype: DType,
    /// Element type of the tensor.
    pub(super) dtype: DType,
    /// Storage offset, in elements.
    pub(super) offset: u64,
    pub(super) size: Vec<usize>,
    /// Strides, in elements.
    pub(super) stride: Vec<u64>,
    /// Offset in `data.pkl` of the `REDUCE` that rebuilt it, for errors.
    pub(super) pickle_offset: usize,
}
