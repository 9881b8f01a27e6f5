//! Reader for PyTorch `.pth` checkpoints written by `torch.save`.
//!
//! # The format
//!
//! Since PyTorch 1.6, `torch.save` writes a zip archive (members are
//! *stored*, not compressed, and aligned to 64 bytes) whose members all live
//! under one top-level folder, the *prefix* (the file's stem when saved to a
//! path, `archive` when saved to a buffer):
//!
//! * `<prefix>/data.pkl`: a Python pickle (protocol 2 unless the caller asked
//!   for another) describing the saved object, usually a state dict: an
//!   `OrderedDict` mapping parameter names to tensors.
//! * `<prefix>/data/<key>`: the raw bytes of one tensor storage each, in the
//!   machine's byte order. The pickle refers to them through *persistent
//!   ids*, tuples `('storage', torch.FloatStorage, '<key>', 'cpu', numel)`.
//! * `<prefix>/byteorder` (`little` or `big`; absent in old files, which are
//!   little-endian), plus bookkeeping this reader ignores: `version`,
//!   `.format_version`, `.storage_alignment`, `.data/serialization_id`.
//!
//! Each tensor is pickled as a call
//! `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
//! requires_grad, backward_hooks)`; parameters saved with `keep_vars=True` are
//! wrapped in `torch._utils._rebuild_parameter(tensor, requires_grad, hooks)`.
//!
//! # Why a hand-written pickle subset
//!
//! Unpickling in Python runs whatever callables the stream names (opcodes
//! `GLOBAL` then `REDUCE`), so a checkpoint from an untrusted source can
//! execute code. This module implements a small pickle virtual machine that understands the
//! opcodes `torch.save` emits (protocols 2 to 5) and only *interprets* a fixed
//! whitelist of globals (`collections.OrderedDict`, the `torch._utils`
//! tensor/parameter rebuild functions, the `torch.*Storage` types and the
//! `torch` dtypes). Any other global is rejected with an error naming it;
//! nothing is ever executed.
//!
//! Tensors come back converted to `f32`, contiguous in row-major order, in the
//! order of the state dict. Storage offsets and strides (views such as a
//! transposed tensor share their base's storage) are honoured. Only
//! little-endian checkpoints are accepted.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

/// One tensor read from a checkpoint, converted to f32, row-major contiguous.
#[derive(Debug, Clone, PartialEq)]
pub struct PthTensor {
    /// The state-dict key, e.g. `features.conv0.weight`.
    pub name: String,
    /// The tensor's shape; empty for a scalar (which has one element).
    pub shape: Vec<usize>,
    /// The elements in row-major order, converted to `f32`
    /// (integers and booleans are converted by value, `true` being `1.0`).
    pub data: Vec<f32>,
    /// The dtype stored in the checkpoint, named as torch names it without the
    /// `torch.` prefix: `float32`, `float64`, `float16`, `bfloat16`, `int64`,
    /// `int32`, `int16`, `int8`, `uint8` or `bool`. Callers that want only
    /// learned values skip the integer entries such as BatchNorm's
    /// `num_batches_tracked` (`int64`).
    pub dtype: String,
}

/// Why a checkpoint could not be read. Every message names the source
/// (`what`), and where it applies the archive member and pickle offset.
#[derive(Debug, thiserror::Error)]
pub enum PthError {
    /// The file could not be read from disk.
    #[error("{what}: cannot read the checkpoint file: {error}")]
    Io {
        /// The file's path.
        what: String,
        /// The underlying I/O error.
        error: std::io::Error,
    },
    /// The bytes are not a `torch.save` zip archive, or a member of it is
    /// missing or unreadable.
    #[error("{what}: {member}: {message}")]
    Archive {
        /// The source of the bytes.
        what: String,
        /// The archive member concerned, or `(archive)` for the whole file.
        member: String,
        /// What went wrong and what was expected.
        message: String,
    },
    /// The pickle stream is malformed, truncated or uses something this
    /// reader does not support.
    #[error("{what}: {member}: pickle offset {offset}: {message}")]
    Pickle {
        /// The source of the bytes.
        what: String,
        /// The pickle member, `<prefix>/data.pkl`.
        member: String,
        /// Byte offset of the offending opcode in the pickle.
        offset: usize,
        /// What went wrong and what was expected.
        message: String,
    },
    /// The pickle names a global outside the whitelist (for instance
    /// `os.system`, or a pickled `nn.Module` class). It is never executed.
    #[error(
        "{what}: {member}: pickle offset {offset}: global `{module}.{name}` is not allowed \
         (only torch tensor-rebuilding globals are accepted; pickled code is never executed)"
    )]
    ForbiddenGlobal {
        /// The source of the bytes.
        what: String,
        /// The pickle member, `<prefix>/data.pkl`.
        member: String,
        /// Byte offset of the `GLOBAL`/`STACK_GLOBAL` opcode.
        offset: usize,
        /// The global's module, e.g. `os`.
        module: String,
        /// The global's name, e.g. `system`.
        name: String,
    },
    /// A tensor's view does not fit its storage, or its storage member is
    /// missing.
    #[error("{what}: {member}: tensor `{tensor}` (rebuilt at pickle offset {offset}): {message}")]
    Tensor {
        /// The source of the bytes.
        what: String,
        /// The storage member, `<prefix>/data/<key>`.
        member: String,
        /// The state-dict key of the tensor.
        tensor: String,
        /// Byte offset in `data.pkl` of the `REDUCE` that rebuilt the tensor.
        offset: usize,
        /// What went wrong and what was expected.
        message: String,
    },
}

/// Reads every tensor of the state dict saved in the `.pth` file at `path`.
///
/// The file may hold the state dict itself or a dict wrapping it under
/// `state_dict`, `model_state_dict` or `model`. See [`read_pth_bytes`].
pub fn read_pth(path: &Path) -> Result<Vec<PthTensor>, PthError> {
    let what = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|error| PthError::Io {
        what: what.clone(),
        error,
    })?;
    read_pth_bytes(&bytes, &what)
}

/// Reads every tensor of the state dict saved in `bytes`, the contents of a
/// `.pth` file; `what` names the source in error messages.
///
/// Tensors come back in state-dict order, converted to `f32` and made
/// row-major contiguous; [`PthTensor::dtype`] tells the stored dtype.
pub fn read_pth_bytes(bytes: &[u8], what: &str) -> Result<Vec<PthTensor>, PthError> {
    let archive_err = |member: &str, message: String| PthError::Archive {
        what: what.to_string(),
        member: member.to_string(),
        message,
    };
    // A zip archive starts with a local file header `PK\x03\x04`; the
    // pre-1.6 format is a bare pickle (starting with PROTO, 0x80).
    if !bytes.starts_with(b"PK\x03\x04") {
        let message = if bytes.first() == Some(&0x80) {
            "this is the legacy (pre-1.6, non-zip) torch.save format, which is not supported; \
             re-save it with a current torch (`torch.save(torch.load(f), f)`)"
                .to_string()
        } else {
            format!(
                "not a torch.save checkpoint: expected a zip archive (starting with `PK\\x03\\x04`), \
                 found {} bytes starting with {:02x?}",
                bytes.len(),
                &bytes[..bytes.len().min(8)]
            )
        };
        return Err(archive_err("(archive)", message));
    }
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| {
        archive_err(
            "(archive)",
            format!("not a readable zip archive (truncated or corrupt?): {e}"),
        )
    })?;

    let prefix = find_prefix(&archive).map_err(|m| archive_err("(archive)", m))?;

    // Storages are raw machine-order bytes; only little-endian is decoded.
    let byteorder_name = format!("{prefix}/byteorder");
    if let Some(order) = read_member_opt(&mut archive, &byteorder_name, bytes.len())
        .map_err(|m| archive_err(&byteorder_name, m))?
    {
        match std::str::from_utf8(&order).map(str::trim) {
            Ok("little") => {}
            Ok("big") => {
                return Err(archive_err(
                    &byteorder_name,
                    "the checkpoint was written on a big-endian machine; only little-endian \
                     checkpoints are supported"
                        .to_string(),
                ))
            }
            _ => {
                return Err(archive_err(
                    &byteorder_name,
                    format!(
                        "expected `little` or `big`, found {:?}",
                        String::from_utf8_lossy(&order)
                    ),
                ))
            }
        }
    }

    let pkl_name = format!("{prefix}/data.pkl");
    let pkl = read_member_opt(&mut archive, &pkl_name, bytes.len())
        .map_err(|m| archive_err(&pkl_name, m))?
        .ok_or_else(|| archive_err(&pkl_name, "member missing".to_string()))?;

    let mut vm = Unpickler::new(&pkl, what, &pkl_name);
    let root = vm.run()?;
    let entries = vm.state_dict_entries(root)?;

    // Each storage member is read once, however many tensors view it.
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for (name, meta) in entries {
        let member = format!("{prefix}/data/{}", meta.key);
        let tensor_err = |message: String| PthError::Tensor {
            what: what.to_string(),
            member: member.clone(),
            tensor: name.clone(),
            offset: meta.pickle_offset,
            message,
        };
        let numel = meta
            .size
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| tensor_err(format!("size {:?} overflows", meta.size)))?;
        let mut data = Vec::new();
        if numel > 0 {
            if !storages.contains_key(&meta.key) {
                let bytes = read_member_opt(&mut archive, &member, bytes.len())
                    .map_err(|m| archive_err(&member, m))?
                    .ok_or_else(|| {
                        tensor_err(format!(
                            "storage member `{member}` (persistent id key `{}`) is missing",
                            meta.key
                        ))
                    })?;
                storages.insert(meta.key.clone(), bytes);
            }
            let storage = storages.get(&meta.key).map(Vec::as_slice).unwrap_or(&[]);
            data = gather(storage, &meta, numel).map_err(tensor_err)?;
        }
        out.push(PthTensor {
            name,
            shape: meta.size,
            data,
            dtype: meta.dtype.name().to_string(),
        });
    }
    Ok(out)
}

/// Finds the archive's single top-level folder holding `data.pkl`.
fn find_prefix(archive: &zip::ZipArchive<Cursor<&[u8]>>) -> Result<String, String> {
    let mut seen = Vec::new();
    for name in archive.file_names() {
        let name = name.map_err(|e| format!("unreadable member name: {e}"))?;
        if let Some((prefix, "data.pkl")) = name.split_once('/') {
            return Ok(prefix.to_string());
        }
        if seen.len() < 5 {
            seen.push(name.to_string());
        }
    }
    Err(format!(
        "no `<prefix>/data.pkl` member: not a torch.save checkpoint (first members: {seen:?})"
    ))
}

/// Reads a whole member, or `None` when the archive lacks it;
/// `archive_len` is the archive's size in bytes.
fn read_member_opt(
    archive: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
    archive_len: usize,
) -> Result<Option<Vec<u8>>, String> {
    let mut file = match archive.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(format!("cannot open member: {e}")),
    };
    if file.compression() != zip::CompressionMethod::Stored {
        return Err(format!(
            "member is compressed ({:?}); torch.save stores members uncompressed and this \
             reader supports only that",
            file.compression()
        ));
    }
    // Torch stores members uncompressed (the only method this reader
    // enables), so a member is never larger than the archive; the cap keeps a
    // lying header from causing a huge allocation.
    let cap = usize::try_from(file.size())
        .unwrap_or(usize::MAX)
        .min(archive_len);
    let mut buf = Vec::with_capacity(cap);
    file.read_to_end(&mut buf)
        .map_err(|e| format!("cannot read member (truncated or corrupt?): {e}"))?;
    Ok(Some(buf))
}

/// Element types of torch storages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DType {
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
    fn name(self) -> &'static str {
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
    fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The dtype of a legacy typed storage class `torch.<name>`.
    fn from_storage_class(name: &str) -> Option<DType> {
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
    fn from_dtype_name(name: &str) -> Option<DType> {
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
fn f16_to_f32(h: u16) -> f32 {
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
fn decode(dtype: DType, b: &[u8]) -> Option<f32> {
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
const MAX_BROADCAST_NUMEL: usize = 1 << 24;

/// Copies the strided view `meta` out of `storage` into a row-major `Vec`.
fn gather(storage: &[u8], meta: &TensorMeta, numel: usize) -> Result<Vec<f32>, String> {
    let elem = meta.dtype.size();
    // Elements the storage holds: what the persistent id declared, which the
    // member's bytes must cover.
    let declared = meta.storage_bytes / elem as u64;
    let present = (storage.len() / elem) as u64;
    if present < declared {
        return Err(format!(
            "the storage member holds {} bytes but the persistent id declares {} bytes",
            storage.len(),
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

/// Index of an object in the unpickler's arena.
type Id = usize;

/// The whitelisted globals, the only names a pickle may refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    /// `collections.OrderedDict`: calling it with no arguments gives a dict.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype[, metadata])`.
    RebuildTensorV3,
    /// `torch._utils._rebuild_parameter(data, requires_grad, hooks)`.
    RebuildParameter,
    /// `torch._utils._rebuild_parameter_with_state(data, requires_grad, hooks, state)`.
    RebuildParameterWithState,
    /// `torch._tensor._rebuild_from_type_v2(func, type, args, state)`.
    RebuildFromTypeV2,
    /// `torch.Tensor` or `torch.nn.parameter.Parameter`, only as the type
    /// argument of `_rebuild_from_type_v2`.
    TensorType,
    /// A storage class such as `torch.FloatStorage`, inside persistent ids.
    StorageType(DType),
    /// A `torch.dtype` such as `torch.float32`.
    Dtype(DType),
}

impl Global {
    /// Resolves `module.name` against the whitelist.
    fn resolve(module: &str, name: &str) -> Option<Global> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_tensor_v3") => Global::RebuildTensorV3,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
            ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromTypeV2,
            ("torch" | "torch._tensor", "Tensor") | ("torch.nn.parameter", "Parameter") => {
                Global::TensorType
            }
            ("torch" | "torch.storage", "UntypedStorage") => Global::StorageType(DType::U8),
            ("torch", n) if n.ends_with("Storage") => {
                Global::StorageType(DType::from_storage_class(n)?)
            }
            ("torch", n) => Global::Dtype(DType::from_dtype_name(n)?),
            _ => return None,
        })
    }
}

/// A storage named by a persistent id.
#[derive(Debug, Clone)]
struct StorageRef {
    key: String,
    dtype: DType,
    numel: u64,
}

/// A rebuilt tensor: where its elements lie in which storage.
#[derive(Debug, Clone)]
struct TensorMeta {
    /// Persistent-id key: the storage is member `<prefix>/data/<key>`.
    key: String,
    /// Size of the storage in bytes, as the persistent id declares it.
    storage_bytes: u64,
    /// Element type of the tensor.
    dtype: DType,
    /// Storage offset, in elements.
    offset: u64,
    size: Vec<usize>,
    /// Strides, in elements.
    stride: Vec<u64>,
    /// Offset in `data.pkl` of the `REDUCE` that rebuilt it, for errors.
    pickle_offset: usize,
}

/// Hashable dict keys (the kinds Python compares by value that occur here).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    None,
    Int(i64),
    Str(String),
}

/// A dict that keeps insertion order, as Python's does.
#[derive(Debug, Default)]
struct Dict {
    entries: Vec<(Id, Id)>,
    index: HashMap<Key, usize>,
}

/// The values the unpickler builds.
#[derive(Debug)]
enum Obj {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Dict),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorMeta),
}

impl Obj {
    /// A short name of the kind, for error messages.
    fn kind(&self) -> &'static str {
        match self {
            Obj::None => "None",
            Obj::Bool(_) => "bool",
            Obj::Int(_) => "int",
            Obj::Float(_) => "float",
            Obj::Str(_) => "str",
            Obj::Bytes(_) => "bytes",
            Obj::Tuple(_) => "tuple",
            Obj::List(_) => "list",
            Obj::Dict(_) => "dict",
            Obj::Global(_) => "global",
            Obj::Storage(_) => "storage",
            Obj::Tensor(_) => "tensor",
        }
    }
}

/// Keys under which checkpoints commonly wrap their state dict.
const WRAPPER_KEYS: [&str; 3] = ["state_dict", "model_state_dict", "model"];

/// The pickle virtual machine: a stack, a mark stack and a memo over an arena
/// of objects. Lists and dicts are mutated in place in the arena, so memo
/// references see later `APPENDS`/`SETITEMS`.
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed, for errors.
    op_start: usize,
    objs: Vec<Obj>,
    stack: Vec<Id>,
    /// Stack lengths at each `MARK`.
    marks: Vec<usize>,
    memo: HashMap<usize, Id>,
    what: &'a str,
    member: &'a str,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8], what: &'a str, member: &'a str) -> Self {
        Unpickler {
            data,
            pos: 0,
            op_start: 0,
            objs: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            what,
            member,
        }
    }

    /// A pickle error at the opcode being executed (after `run`, the STOP).
    fn err(&self, message: impl Into<String>) -> PthError {
        PthError::Pickle {
            what: self.what.to_string(),
            member: self.member.to_string(),
            offset: self.op_start,
            message: message.into(),
        }
    }

    fn alloc(&mut self, obj: Obj) -> Id {
        self.objs.push(obj);
        self.objs.len() - 1
    }

    fn push(&mut self, obj: Obj) {
        let id = self.alloc(obj);
        self.stack.push(id);
    }

    fn obj(&self, id: Id) -> &Obj {
        // Ids only come from `alloc`, so they are always in range.
        &self.objs[id]
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], PthError> {
        let data: &'a [u8] = self.data;
        match self
            .pos
            .checked_add(n)
            .and_then(|end| data.get(self.pos..end))
        {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(self.err(format!(
                "truncated: expected {n} bytes of {what}, only {} remain",
                data.len() - self.pos
            ))),
        }
    }

    fn take_array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], PthError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn take_u8(&mut self, what: &str) -> Result<u8, PthError> {
        Ok(self.take_array::<1>(what)?[0])
    }

    fn take_len(&mut self, n: u64, what: &str) -> Result<&'a [u8], PthError> {
        let n = usize::try_from(n).map_err(|_| self.err(format!("{what} length {n} too large")))?;
        self.take(n, what)
    }

    /// Reads a `\n`-terminated line (text opcodes), without the newline.
    fn take_line(&mut self, what: &str) -> Result<&'a str, PthError> {
        let data: &'a [u8] = self.data;
        let rest = &data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err(format!("truncated: expected a newline-terminated {what}")))?;
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).map_err(|_| self.err(format!("{what} is not valid UTF-8")))
    }

    fn pop(&mut self, what: &str) -> Result<Id, PthError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err(format!("stack underflow: expected {what} on the stack")));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.err(format!("stack underflow: expected {what}")))
    }

    fn top(&self, what: &str) -> Result<Id, PthError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        match self.stack.last() {
            Some(&id) if self.stack.len() > floor => Ok(id),
            _ => Err(self.err(format!("stack underflow: expected {what} on the stack"))),
        }
    }

    /// Pops everything down to the last `MARK`.
    fn pop_mark(&mut self) -> Result<Vec<Id>, PthError> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.err("expected a MARK on the stack, found none"))?;
        Ok(self.stack.split_off(m))
    }

    fn memo_get(&mut self, index: usize) -> Result<(), PthError> {
        let id = *self
            .memo
            .get(&index)
            .ok_or_else(|| self.err(format!("memo key {index} was never stored")))?;
        self.stack.push(id);
        Ok(())
    }

    fn memo_put(&mut self, index: usize) -> Result<(), PthError> {
        let id = self.top("a value to memoize")?;
        self.memo.insert(index, id);
        Ok(())
    }

    fn push_str(&mut self, bytes: &[u8]) -> Result<(), PthError> {
        let s = std::str::from_utf8(bytes)
            .map_err(|_| self.err("string is not valid UTF-8"))?
            .to_string();
        self.push(Obj::Str(s));
        Ok(())
    }

    /// Signed little-endian integer of `bytes.len()` bytes (LONG1/LONG4).
    fn long_le(&self, bytes: &[u8]) -> Result<i64, PthError> {
        if bytes.len() > 8 {
            return Err(self.err(format!(
                "integer of {} bytes does not fit in 64 bits",
                bytes.len()
            )));
        }
        let Some(&last) = bytes.last() else {
            return Ok(0);
        };
        let mut buf = if last & 0x80 != 0 { [0xff; 8] } else { [0; 8] };
        buf[..bytes.len()].copy_from_slice(bytes);
        Ok(i64::from_le_bytes(buf))
    }

    fn resolve_global(&mut self, module: &str, name: &str) -> Result<(), PthError> {
        match Global::resolve(module, name) {
            Some(g) => {
                self.push(Obj::Global(g));
                Ok(())
            }
            // A storage class of a dtype this reader cannot convert.
            None if module == "torch" && name.ends_with("Storage") => Err(self.err(format!(
                "unsupported storage type `torch.{name}`: expected a float (Float, Double, Half, \
                 BFloat16), integer (Long, Int, Short, Char, Byte) or Bool storage"
            ))),
            None => Err(PthError::ForbiddenGlobal {
                what: self.what.to_string(),
                member: self.member.to_string(),
                offset: self.op_start,
                module: module.to_string(),
                name: name.to_string(),
            }),
        }
    }

    fn dict_key(&self, id: Id) -> Option<Key> {
        match self.obj(id) {
            Obj::None => Some(Key::None),
            Obj::Bool(b) => Some(Key::Int(i64::from(*b))),
            Obj::Int(i) => Some(Key::Int(*i)),
            Obj::Str(s) => Some(Key::Str(s.clone())),
            _ => None,
        }
    }

    /// `dict[key] = value`, keeping the first insertion's position.
    fn set_items(&mut self, dict: Id, items: &[Id]) -> Result<(), PthError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("SETITEMS expects key/value pairs, found an odd count"));
        }
        let keys: Vec<Option<Key>> = items.chunks(2).map(|kv| self.dict_key(kv[0])).collect();
        let kind = self.obj(dict).kind();
        let Obj::Dict(d) = &mut self.objs[dict] else {
            return Err(self.err(format!("SETITEM(S) on a {kind}, expected a dict")));
        };
        for (kv, key) in items.chunks(2).zip(keys) {
            match key.as_ref().and_then(|k| d.index.get(k)) {
                Some(&i) => d.entries[i].1 = kv[1],
                None => {
                    if let Some(k) = key {
                        d.index.insert(k, d.entries.len());
                    }
                    d.entries.push((kv[0], kv[1]));
                }
            }
        }
        Ok(())
    }

    fn append_items(&mut self, list: Id, items: Vec<Id>) -> Result<(), PthError> {
        let kind = self.obj(list).kind();
        match &mut self.objs[list] {
            Obj::List(l) => {
                l.extend(items);
                Ok(())
            }
            _ => Err(self.err(format!("APPEND(S) on a {kind}, expected a list"))),
        }
    }

    fn int_arg(&self, args: &[Id], i: usize, what: &str) -> Result<u64, PthError> {
        match args.get(i).map(|&a| self.obj(a)) {
            Some(Obj::Int(v)) if *v >= 0 => Ok(*v as u64),
            Some(o) => Err(self.err(format!(
                "argument {i} ({what}): expected a non-negative int, found {}",
                describe(o)
            ))),
            None => Err(self.err(format!("argument {i} ({what}) missing"))),
        }
    }

    fn int_tuple_arg(&self, args: &[Id], i: usize, what: &str) -> Result<Vec<u64>, PthError> {
        let bad = |found: &str| {
            self.err(format!(
                "argument {i} ({what}): expected a tuple of non-negative ints, found {found}"
            ))
        };
        let Some(Obj::Tuple(items)) = args.get(i).map(|&a| self.obj(a)) else {
            return Err(bad(args.get(i).map_or("nothing", |&a| self.obj(a).kind())));
        };
        items
            .iter()
            .map(|&x| match self.obj(x) {
                Obj::Int(v) if *v >= 0 => Ok(*v as u64),
                o => Err(bad(&describe(o))),
            })
            .collect()
    }

    /// Applies a whitelisted callable (`REDUCE`) to its argument tuple.
    fn call(&self, func: Global, args: &[Id]) -> Result<Obj, PthError> {
        let n = args.len();
        let arity = |ok: bool, expected: &str| -> Result<(), PthError> {
            if ok {
                Ok(())
            } else {
                Err(self.err(format!(
                    "{func:?} called with {n} arguments, expected {expected}"
                )))
            }
        };
        match func {
            Global::OrderedDict => {
                arity(n == 0, "0")?;
                Ok(Obj::Dict(Dict::default()))
            }
            Global::RebuildTensorV2 | Global::RebuildTensorV3 => {
                let v3 = func == Global::RebuildTensorV3;
                if v3 {
                    arity(n == 7 || n == 8, "7 or 8")?;
                } else {
                    arity(n == 6 || n == 7, "6 or 7")?;
                }
                let storage = match self.obj(args[0]) {
                    Obj::Storage(s) => s.clone(),
                    o => {
                        return Err(self.err(format!(
                            "argument 0 (storage): expected a persistent-id storage, found {}",
                            describe(o)
                        )))
                    }
                };
                let offset = self.int_arg(args, 1, "storage_offset")?;
                let size = self.int_tuple_arg(args, 2, "size")?;
                let stride = self.int_tuple_arg(args, 3, "stride")?;
                if size.len() != stride.len() {
                    return Err(self.err(format!(
                        "size {size:?} and stride {stride:?} have different lengths"
                    )));
                }
                let size = size
                    .into_iter()
                    .map(usize::try_from)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| self.err("size does not fit in usize"))?;
                let dtype = if v3 {
                    match self.obj(args[6]) {
                        Obj::Global(Global::Dtype(d)) => *d,
                        o => {
                            return Err(self.err(format!(
                                "argument 6 (dtype): expected a torch dtype, found {}",
                                describe(o)
                            )))
                        }
                    }
                } else {
                    storage.dtype
                };
                let storage_bytes = storage
                    .numel
                    .checked_mul(storage.dtype.size() as u64)
                    .ok_or_else(|| self.err("storage size overflows"))?;
                Ok(Obj::Tensor(TensorMeta {
                    key: storage.key,
                    storage_bytes,
                    dtype,
                    offset,
                    size,
                    stride,
                    pickle_offset: self.op_start,
                }))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                if func == Global::RebuildParameter {
                    arity(n == 3, "3")?;
                } else {
                    arity(n == 4, "4")?;
                }
                match self.obj(args[0]) {
                    Obj::Tensor(t) => Ok(Obj::Tensor(t.clone())),
                    o => Err(self.err(format!(
                        "argument 0 (data): expected a tensor, found {}",
                        describe(o)
                    ))),
                }
            }
            Global::RebuildFromTypeV2 => {
                arity(n == 4, "4")?;
                let inner = match self.obj(args[0]) {
                    // Only one level: the wrapped call is a plain rebuild.
                    Obj::Global(g) if *g != Global::RebuildFromTypeV2 => *g,
                    o => {
                        return Err(self.err(format!(
                            "argument 0 (func): expected a rebuild function, found {}",
                            describe(o)
                        )))
                    }
                };
                if !matches!(self.obj(args[1]), Obj::Global(Global::TensorType)) {
                    return Err(self.err(format!(
                        "argument 1 (type): expected torch.Tensor or torch.nn.Parameter, found {}",
                        describe(self.obj(args[1]))
                    )));
                }
                match self.obj(args[2]) {
                    Obj::Tuple(inner_args) => self.call(inner, inner_args),
                    o => Err(self.err(format!(
                        "argument 2 (args): expected a tuple, found {}",
                        describe(o)
                    ))),
                }
            }
            Global::TensorType | Global::StorageType(_) | Global::Dtype(_) => {
                Err(self.err(format!("{func:?} is not callable here")))
            }
        }
    }

    /// Runs the pickle to its `STOP` and returns the resulting object.
    fn run(&mut self) -> Result<Id, PthError> {
        loop {
            self.op_start = self.pos;
            let Some(&op) = self.data.get(self.pos) else {
                return Err(self.err("truncated: the pickle ended before its STOP opcode"));
            };
            self.pos += 1;
            match op {
                // PROTO: protocol version.
                0x80 => {
                    let v = self.take_u8("protocol version")?;
                    if v > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {v}")));
                    }
                }
                // FRAME: an 8-byte frame length; frames are only a buffering hint.
                0x95 => {
                    self.take(8, "frame length")?;
                }
                // STOP
                b'.' => return self.pop("the pickled object"),
                // MARK
                b'(' => self.marks.push(self.stack.len()),
                // POP (or POP_MARK when only a mark is left, like CPython)
                b'0' => {
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() > floor {
                        self.stack.pop();
                    } else {
                        self.pop_mark()?;
                    }
                }
                // POP_MARK
                b'1' => {
                    self.pop_mark()?;
                }
                // DUP
                b'2' => {
                    let id = self.top("a value to duplicate")?;
                    self.stack.push(id);
                }
                b'N' => self.push(Obj::None),
                0x88 => self.push(Obj::Bool(true)),
                0x89 => self.push(Obj::Bool(false)),
                // BININT, BININT1, BININT2
                b'J' => {
                    let v = i32::from_le_bytes(self.take_array("BININT")?);
                    self.push(Obj::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.take_u8("BININT1")?;
                    self.push(Obj::Int(i64::from(v)));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take_array("BININT2")?);
                    self.push(Obj::Int(i64::from(v)));
                }
                // LONG1, LONG4: little-endian two's complement of given length.
                0x8a => {
                    let n = self.take_u8("LONG1 length")?;
                    let b = self.take(usize::from(n), "LONG1")?;
                    let v = self.long_le(b)?;
                    self.push(Obj::Int(v));
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.take_array("LONG4 length")?);
                    let n = u64::try_from(n).map_err(|_| self.err("negative LONG4 length"))?;
                    let b = self.take_len(n, "LONG4")?;
                    let v = self.long_le(b)?;
                    self.push(Obj::Int(v));
                }
                // INT, LONG (protocol 0 text); `I01`/`I00` are True/False.
                b'I' | b'L' => {
                    let line = self.take_line("integer")?;
                    let obj = match line {
                        "01" if op == b'I' => Obj::Bool(true),
                        "00" if op == b'I' => Obj::Bool(false),
                        _ => Obj::Int(
                            line.trim_end_matches('L')
                                .parse()
                                .map_err(|_| self.err(format!("bad integer literal {line:?}")))?,
                        ),
                    };
                    self.push(obj);
                }
                // BINFLOAT: big-endian f64.
                b'G' => {
                    let v = f64::from_be_bytes(self.take_array("BINFLOAT")?);
                    self.push(Obj::Float(v));
                }
                // FLOAT (text)
                b'F' => {
                    let line = self.take_line("float")?;
                    let v = line
                        .parse()
                        .map_err(|_| self.err(format!("bad float literal {line:?}")))?;
                    self.push(Obj::Float(v));
                }
                // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8: UTF-8 strings.
                b'X' => {
                    let n = u32::from_le_bytes(self.take_array("BINUNICODE length")?);
                    let b = self.take_len(u64::from(n), "BINUNICODE")?;
                    self.push_str(b)?;
                }
                0x8c => {
                    let n = self.take_u8("SHORT_BINUNICODE length")?;
                    let b = self.take(usize::from(n), "SHORT_BINUNICODE")?;
                    self.push_str(b)?;
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.take_array("BINUNICODE8 length")?);
                    let b = self.take_len(n, "BINUNICODE8")?;
                    self.push_str(b)?;
                }
                // BINSTRING, SHORT_BINSTRING: Python 2 strings.
                b'T' => {
                    let n = i32::from_le_bytes(self.take_array("BINSTRING length")?);
                    let n = u64::try_from(n).map_err(|_| self.err("negative BINSTRING length"))?;
                    let b = self.take_len(n, "BINSTRING")?;
                    self.push_str(b)?;
                }
                b'U' => {
                    let n = self.take_u8("SHORT_BINSTRING length")?;
                    let b = self.take(usize::from(n), "SHORT_BINSTRING")?;
                    self.push_str(b)?;
                }
                // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                b'B' => {
                    let n = u32::from_le_bytes(self.take_array("BINBYTES length")?);
                    let b = self.take_len(u64::from(n), "BINBYTES")?;
                    self.push(Obj::Bytes(b.to_vec()));
                }
                b'C' => {
                    let n = self.take_u8("SHORT_BINBYTES length")?;
                    let b = self.take(usize::from(n), "SHORT_BINBYTES")?;
                    self.push(Obj::Bytes(b.to_vec()));
                }
                0x8e | 0x96 => {
                    let n = u64::from_le_bytes(self.take_array("BINBYTES8 length")?);
                    let b = self.take_len(n, "BINBYTES8")?;
                    self.push(Obj::Bytes(b.to_vec()));
                }
                // Containers.
                b'}' => self.push(Obj::Dict(Dict::default())),
                b']' => self.push(Obj::List(Vec::new())),
                b')' => self.push(Obj::Tuple(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    let id = self.alloc(Obj::Dict(Dict::default()));
                    self.set_items(id, &items)?;
                    self.stack.push(id);
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::List(items));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop("a tuple item")?);
                    }
                    items.reverse();
                    self.push(Obj::Tuple(items));
                }
                // SETITEM, SETITEMS
                b's' => {
                    let v = self.pop("a dict value")?;
                    let k = self.pop("a dict key")?;
                    let d = self.top("a dict")?;
                    self.set_items(d, &[k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top("a dict")?;
                    self.set_items(d, &items)?;
                }
                // APPEND, APPENDS
                b'a' => {
                    let v = self.pop("a list item")?;
                    let l = self.top("a list")?;
                    self.append_items(l, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let l = self.top("a list")?;
                    self.append_items(l, items)?;
                }
                // Memo: BINPUT, LONG_BINPUT, PUT, MEMOIZE, BINGET, LONG_BINGET, GET.
                b'q' => {
                    let i = self.take_u8("BINPUT index")?;
                    self.memo_put(usize::from(i))?;
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.take_array("LONG_BINPUT index")?);
                    self.memo_put(i as usize)?;
                }
                b'p' => {
                    let line = self.take_line("PUT index")?;
                    let i = line
                        .parse()
                        .map_err(|_| self.err(format!("bad memo index {line:?}")))?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len();
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.take_u8("BINGET index")?;
                    self.memo_get(usize::from(i))?;
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.take_array("LONG_BINGET index")?);
                    self.memo_get(i as usize)?;
                }
                b'g' => {
                    let line = self.take_line("GET index")?;
                    let i = line
                        .parse()
                        .map_err(|_| self.err(format!("bad memo index {line:?}")))?;
                    self.memo_get(i)?;
                }
                // GLOBAL: `module\nname\n`, checked against the whitelist.
                b'c' => {
                    let module = self.take_line("GLOBAL module")?;
                    let name = self.take_line("GLOBAL name")?;
                    self.resolve_global(module, name)?;
                }
                // STACK_GLOBAL: module and name strings from the stack.
                0x93 => {
                    let name = self.pop("a global name")?;
                    let module = self.pop("a global module")?;
                    match (self.obj(module), self.obj(name)) {
                        (Obj::Str(m), Obj::Str(n)) => {
                            let (m, n) = (m.clone(), n.clone());
                            self.resolve_global(&m, &n)?;
                        }
                        (m, n) => {
                            return Err(self.err(format!(
                                "STACK_GLOBAL expects two strings, found {} and {}",
                                m.kind(),
                                n.kind()
                            )))
                        }
                    }
                }
                // REDUCE: callable(*args), for whitelisted callables only.
                b'R' => {
                    let args = self.pop("an argument tuple")?;
                    let func = self.pop("a callable")?;
                    let func = match self.obj(func) {
                        Obj::Global(g) => *g,
                        o => {
                            return Err(self.err(format!(
                                "REDUCE expects a whitelisted global, found {}",
                                describe(o)
                            )))
                        }
                    };
                    let obj = match self.obj(args) {
                        Obj::Tuple(args) => self.call(func, args)?,
                        o => {
                            return Err(self.err(format!(
                                "REDUCE expects an argument tuple, found {}",
                                o.kind()
                            )))
                        }
                    };
                    self.push(obj);
                }
                // NEWOBJ, NEWOBJ_EX: cls.__new__(cls, *args); only OrderedDict.
                0x81 | 0x92 => {
                    if op == 0x92 {
                        self.pop("NEWOBJ_EX keyword arguments")?;
                    }
                    self.pop("NEWOBJ arguments")?;
                    let cls = self.pop("a class")?;
                    match self.obj(cls) {
                        Obj::Global(Global::OrderedDict) => self.push(Obj::Dict(Dict::default())),
                        o => {
                            return Err(self.err(format!(
                                "NEWOBJ expects collections.OrderedDict, found {}",
                                describe(o)
                            )))
                        }
                    }
                }
                // BUILD: sets an object's state. A state dict carries its
                // `_metadata` attribute this way; tensors may carry Python
                // attributes. Both are irrelevant to the values, so dropped.
                b'b' => {
                    self.pop("a state")?;
                    let target = self.top("an object to build")?;
                    match self.obj(target) {
                        Obj::Dict(_) | Obj::Tensor(_) => {}
                        o => {
                            return Err(self.err(format!(
                                "BUILD on a {}, expected an OrderedDict or a tensor",
                                o.kind()
                            )))
                        }
                    }
                }
                // BINPERSID: a reference to a storage outside the pickle.
                b'Q' => {
                    let pid = self.pop("a persistent id")?;
                    let storage = self.persistent_storage(pid)?;
                    self.push(Obj::Storage(storage));
                }
                _ => {
                    return Err(self.err(format!(
                        "unsupported pickle opcode 0x{op:02x} ({:?}); torch.save checkpoints do \
                         not use it",
                        char::from(op)
                    )))
                }
            }
        }
    }

    /// Decodes `('storage', torch.XStorage, key, location, numel)`.
    fn persistent_storage(&self, pid: Id) -> Result<StorageRef, PthError> {
        let expected =
            "expected a persistent id ('storage', <storage type>, <key>, <location>, <numel>)";
        let items = match self.obj(pid) {
            Obj::Tuple(items) if items.len() == 5 => items,
            o => return Err(self.err(format!("{expected}, found {}", describe(o)))),
        };
        let parts: Vec<&Obj> = items.iter().map(|&i| self.obj(i)).collect();
        match parts.as_slice() {
            [Obj::Str(tag), Obj::Global(Global::StorageType(dtype)), Obj::Str(key), Obj::Str(_), Obj::Int(numel)]
                if tag == "storage" && *numel >= 0 =>
            {
                Ok(StorageRef {
                    key: key.clone(),
                    dtype: *dtype,
                    numel: *numel as u64,
                })
            }
            _ => Err(self.err(format!(
                "{expected}, found ({})",
                parts
                    .iter()
                    .map(|o| describe(o))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Finds the state dict in the unpickled object and lists its tensors.
    /// Errors point at the STOP opcode, where the object was complete.
    fn state_dict_entries(&self, root: Id) -> Result<Vec<(String, TensorMeta)>, PthError> {
        let not_sd = |found: &str| {
            self.err(format!(
                "expected a state dict (a dict of name -> tensor), or a dict wrapping one \
                     under {WRAPPER_KEYS:?}; found {found}"
            ))
        };
        let Obj::Dict(top) = self.obj(root) else {
            return Err(not_sd(&format!("a top-level {}", self.obj(root).kind())));
        };
        let mut sd = top;
        for key in WRAPPER_KEYS {
            if let Some(&i) = top.index.get(&Key::Str(key.to_string())) {
                if let Obj::Dict(inner) = self.obj(top.entries[i].1) {
                    sd = inner;
                    break;
                }
            }
        }
        let mut out = Vec::with_capacity(sd.entries.len());
        for &(k, v) in &sd.entries {
            let Obj::Str(name) = self.obj(k) else {
                return Err(not_sd(&format!("a key {}", describe(self.obj(k)))));
            };
            match self.obj(v) {
                Obj::Tensor(t) => out.push((name.clone(), t.clone())),
                o => {
                    let keys: Vec<String> = top
                        .entries
                        .iter()
                        .take(8)
                        .map(|&(k, _)| describe(self.obj(k)))
                        .collect();
                    return Err(not_sd(&format!(
                        "entry `{name}` holding {} (top-level keys: {})",
                        describe(o),
                        keys.join(", ")
                    )));
                }
            }
        }
        Ok(out)
    }
}

/// A short description of a value, for error messages.
fn describe(o: &Obj) -> String {
    match o {
        Obj::Int(i) => format!("int {i}"),
        Obj::Float(f) => format!("float {f}"),
        Obj::Bytes(b) => format!("{} bytes", b.len()),
        Obj::Str(s) if s.len() <= 60 => format!("str {s:?}"),
        Obj::Global(g) => format!("global {g:?}"),
        other => format!("a {}", other.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{FIXTURES}/{name}");
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Expected values: a safetensors file whose metadata lists the
    /// state-dict `order` (comma-separated) and each tensor's torch `dtype.<name>`.
    struct Expected {
        order: Vec<String>,
        dtypes: HashMap<String, String>,
        tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    }

    fn expected(name: &str) -> Expected {
        let bytes = fixture(name);
        let (_, meta) = SafeTensors::read_metadata(&bytes).expect("metadata");
        let meta = meta.metadata().clone().expect("__metadata__");
        let st = SafeTensors::deserialize(&bytes).expect("safetensors");
        let order = meta["order"].split(',').map(str::to_string).collect();
        let dtypes = meta
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("dtype.")?.to_string(), v.clone())))
            .collect();
        let mut tensors = HashMap::new();
        for (n, view) in st.tensors() {
            let data: Vec<f32> = match view.dtype() {
                safetensors::Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                safetensors::Dtype::I64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect(),
                d => panic!("unexpected dtype {d:?} in {name}"),
            };
            tensors.insert(n, (view.shape().to_vec(), data));
        }
        Expected {
            order,
            dtypes,
            tensors,
        }
    }

    /// Compares a checkpoint with its expected file, bit for bit; `rename`
    /// maps checkpoint names to expected names.
    fn check(pth: &str, exp: &str, rename: impl Fn(&str) -> String) {
        let got = read_pth(Path::new(&format!("{FIXTURES}/{pth}"))).expect(pth);
        let exp = expected(exp);
        let names: Vec<String> = got.iter().map(|t| rename(&t.name)).collect();
        assert_eq!(names, exp.order, "{pth}: order");
        for t in &got {
            let name = rename(&t.name);
            let (shape, data) = &exp.tensors[&name];
            assert_eq!(&t.shape, shape, "{name}: shape");
            assert_eq!(t.data.len(), data.len(), "{name}: len");
            for (i, (a, b)) in t.data.iter().zip(data).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{name}[{i}]: {a} vs {b}");
            }
            assert_eq!(t.dtype, exp.dtypes[&name], "{name}: dtype");
        }
    }

    fn modern_name(legacy: &str) -> String {
        ["norm", "relu", "conv"]
            .iter()
            .fold(legacy.to_string(), |s, p| {
                s.replace(&format!(".{p}.1."), &format!(".{p}1."))
                    .replace(&format!(".{p}.2."), &format!(".{p}2."))
            })
    }

    #[test]
    fn legacy_tiny_densenet_matches_modern_expected() {
        check(
            "legacy_tiny_densenet.pth",
            "legacy_tiny_densenet.expected.safetensors",
            modern_name,
        );
        let got = read_pth(Path::new(&format!("{FIXTURES}/legacy_tiny_densenet.pth"))).unwrap();
        assert!(got
            .iter()
            .any(|t| t.name == "features.denseblock1.denselayer1.norm.1.weight"));
        let nbt: Vec<&PthTensor> = got
            .iter()
            .filter(|t| t.name.ends_with("num_batches_tracked"))
            .collect();
        assert!(!nbt.is_empty());
        for t in nbt {
            assert_eq!(t.dtype, "int64");
            assert!(t.shape.is_empty());
            assert_eq!(t.data.len(), 1);
        }
    }

    #[test]
    fn views_offsets_and_strides() {
        check(
            "edge_views.pth",
            "edge_views.expected.safetensors",
            str::to_string,
        );
    }

    #[test]
    fn dtypes_convert_like_torch() {
        check(
            "edge_dtypes.pth",
            "edge_dtypes.expected.safetensors",
            str::to_string,
        );
    }

    #[test]
    fn wrapped_state_dict_with_parameters() {
        check(
            "edge_wrapped.pth",
            "edge_wrapped.expected.safetensors",
            str::to_string,
        );
    }

    #[test]
    fn protocol4_model_wrapper() {
        check(
            "edge_proto4.pth",
            "edge_proto4.expected.safetensors",
            str::to_string,
        );
    }

    #[test]
    fn f16_conversion_is_exact() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        // Every finite half against its defining formula.
        for h in 0..=u16::MAX {
            let (s, e, m) = (h >> 15, i32::from((h >> 10) & 0x1f), f64::from(h & 0x3ff));
            if e == 0x1f {
                continue;
            }
            let mag = if e == 0 {
                m * 2f64.powi(-24)
            } else {
                (1.0 + m / 1024.0) * 2f64.powi(e - 15)
            };
            let want = if s == 1 { -mag } else { mag } as f32;
            assert_eq!(f16_to_f32(h).to_bits(), want.to_bits(), "{h:#06x}");
        }
    }

    fn err_text(bytes: &[u8]) -> String {
        match read_pth_bytes(bytes, "test.pth") {
            Ok(t) => panic!("expected an error, got {} tensors", t.len()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn forbidden_global_is_named() {
        let bytes = fixture("evil_os_system.pth");
        let err = read_pth_bytes(&bytes, "evil.pth").unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, PthError::ForbiddenGlobal { module, name, .. } if module == "os" && name == "system"),
            "{msg}"
        );
        assert!(msg.contains("evil.pth"), "{msg}");
        assert!(msg.contains("archive/data.pkl"), "{msg}");
        assert!(msg.contains("pickle offset"), "{msg}");
        assert!(msg.contains("`os.system`"), "{msg}");
    }

    #[test]
    fn pickled_module_class_is_forbidden() {
        // A whole nn.Module pickled by torch.save names its class.
        let msg = err_text(&fixture("edge_pickled_module.pth"));
        assert!(msg.contains("torch.nn.modules.linear.Linear"), "{msg}");
    }

    #[test]
    fn truncated_file() {
        let bytes = fixture("legacy_tiny_densenet.pth");
        for cut in [bytes.len() / 2, bytes.len() - 10, 30] {
            let msg = err_text(&bytes[..cut]);
            assert!(msg.contains("test.pth"), "{msg}");
            assert!(msg.contains("zip"), "{msg}");
        }
    }

    #[test]
    fn garbage_bytes() {
        let msg = err_text(b"this is not a checkpoint at all");
        assert!(msg.contains("expected a zip archive"), "{msg}");
        let msg = err_text(b"PK\x03\x04garbage garbage garbage garbage garbage");
        assert!(msg.contains("zip"), "{msg}");
        let msg = err_text(b"");
        assert!(msg.contains("expected a zip archive"), "{msg}");
    }

    #[test]
    fn old_non_zip_format_is_explained() {
        let msg = err_text(&fixture("old_serialization.pth"));
        assert!(msg.contains("legacy (pre-1.6"), "{msg}");
    }

    #[test]
    fn big_endian_is_rejected() {
        let msg = err_text(&fixture("big_endian_marker.pth"));
        assert!(msg.contains("archive/byteorder"), "{msg}");
        assert!(msg.contains("big-endian"), "{msg}");
    }

    #[test]
    fn out_of_bounds_view_is_rejected() {
        let msg = err_text(&fixture("bad_storage_bounds.pth"));
        assert!(msg.contains("tensor `w`"), "{msg}");
        assert!(msg.contains("bad_storage_bounds/data/0"), "{msg}");
        assert!(msg.contains("reaches element"), "{msg}");
    }

    /// Zip `members` (stored) under the prefix `archive/`.
    fn zip_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        use std::io::Write;
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, data) in members {
            w.start_file(format!("archive/{name}"), opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn malformed_pickles_give_offsets() {
        // (pickle, expected fragment of the message)
        let cases: &[(&[u8], &str)] = &[
            (
                b"\x80\x02}q\x00(X\x01\x00\x00",
                "pickle offset 6: truncated",
            ),
            (b"\x80\x02}q\x00", "ended before its STOP"),
            (b"\x80\x02h\x05.", "pickle offset 2: memo key 5"),
            (b"\x80\x02s.", "pickle offset 2: stack underflow"),
            (
                b"\x80\x02\xff.",
                "pickle offset 2: unsupported pickle opcode 0xff",
            ),
            (b"\x80\x02K\x01.", "pickle offset 4: expected a state dict"),
            (b"\x80\x02K\x01.", "found a top-level int"),
            (
                b"\x80\x02ctorch\nComplexFloatStorage\n.",
                "unsupported storage type `torch.ComplexFloatStorage`",
            ),
            (
                b"\x80\x02}X\x01\x00\x00\x00aK\x01s.",
                "entry `a` holding int 1",
            ),
            (
                b"\x80\x02cbuiltins\neval\nq\x00.",
                "pickle offset 2: global `builtins.eval` is not allowed",
            ),
            (
                b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93.",
                "global `os.system` is not allowed",
            ),
        ];
        for (pkl, want) in cases {
            let bytes = zip_of(&[("data.pkl", pkl), ("version", b"3\n")]);
            let msg = err_text(&bytes);
            assert!(msg.contains(want), "want {want:?} in {msg}");
            assert!(msg.contains("test.pth: archive/data.pkl"), "{msg}");
        }
    }

    #[test]
    fn missing_members() {
        let msg = err_text(&zip_of(&[("version", b"3\n")]));
        assert!(msg.contains("no `<prefix>/data.pkl`"), "{msg}");
        // A tensor whose storage member is absent.
        let pkl: &[u8] = b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(\
            (X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x02tQ\
            K\x00K\x02\x85K\x01\x85\x89}tRs.";
        let msg = err_text(&zip_of(&[("data.pkl", pkl)]));
        assert!(msg.contains("storage member `archive/data/0`"), "{msg}");
        assert!(msg.contains("is missing"), "{msg}");
        // The same with its storage present reads back.
        let data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let got = read_pth_bytes(&zip_of(&[("data.pkl", pkl), ("data/0", &data)]), "x").unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "w");
        assert_eq!(got[0].shape, vec![2]);
        assert_eq!(got[0].data, vec![1.5, -2.0]);
        assert_eq!(got[0].dtype, "float32");
    }

    /// Corrupting any byte of a real pickle, or cutting it short, gives an
    /// error or a result, never a panic.
    #[test]
    fn corrupted_pickles_never_panic() {
        let bytes = fixture("edge_wrapped.pth");
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes.as_slice())).unwrap();
        let mut members = Vec::new();
        for i in 0..archive.len() {
            let mut f = archive.by_index(i).unwrap();
            let name = f.name().unwrap().to_string();
            let Some(name) = name.strip_prefix("edge_wrapped/").map(str::to_string) else {
                continue;
            };
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            members.push((name, data));
        }
        let pkl = members
            .iter()
            .find(|(n, _)| n == "data.pkl")
            .unwrap()
            .1
            .clone();
        let storages: Vec<(&str, &[u8])> = members
            .iter()
            .filter(|(n, _)| n != "data.pkl")
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        let run = |p: &[u8]| {
            let mut all = vec![("data.pkl", p)];
            all.extend(storages.iter().copied());
            let _ = read_pth_bytes(&zip_of(&all), "fuzz");
        };
        run(&pkl);
        for i in 0..pkl.len() {
            run(&pkl[..i]);
            for v in [0x00u8, 0x7f, 0xff, b'Q'] {
                let mut p = pkl.clone();
                p[i] = v;
                run(&p);
            }
        }
    }
}
