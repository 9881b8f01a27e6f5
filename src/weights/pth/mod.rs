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
//! The reader is in four parts: this file (the entry points and errors), [`container`]
//! (the zip container), [`pickle`] (the pickle interpreter) and [`storage`] (dtypes,
//! storage offsets and strides).
//!
//! Tensors come back converted to `f32`, contiguous in row-major order, in the
//! order of the state dict. Storage offsets and strides (views such as a
//! transposed tensor share their base's storage) are honoured. Only
//! little-endian checkpoints are accepted.

mod container;
mod pickle;
mod storage;
#[cfg(test)]
mod tests;

use container::{find_prefix, read_member_opt};
use pickle::Unpickler;
use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;
use storage::gather;

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
                "not a .pth (torch.save) checkpoint: expected a zip archive (starting with `PK\\x03\\x04`), \
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
