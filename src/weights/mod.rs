//! Weight formats: safetensors (read and write, [`read_safetensors`], [`write_safetensors`])
//! and PyTorch `.pth` checkpoints (read, [`pth`]), with PyTorch/torchvision state-dict
//! names ([`canonical_name`]).
//!
//! Names are torchvision's (`features.denseblock1.denselayer1.norm1.weight`, …); the CIFAR
//! family's final norm is `features.norm_final`. This module only reads and writes named
//! tensors; matching them against a network's parameters (all or nothing, every problem
//! reported as [`WeightsError::Mismatch`]) is [`crate::model::Model::load_tensors`].
//!
//! Both readers, [`read_checkpoint`] and [`read_safetensors`], refuse a tensor holding a
//! NaN or an infinity, naming the file, the tensor and the element
//! ([`WeightsError::NonFinite`]): every command, `--init` and the training loop's resume
//! read weights through them.

mod keys;
pub mod pth;
mod safetensors;

pub use self::keys::canonical_name;
pub use self::safetensors::{parse_safetensors, write_safetensors, NamedTensor, TensorFile};

use crate::util::tensor::Tensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why weights could not be read, written or loaded.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid safetensors.
    #[error("{path}: not a valid safetensors file: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The `.pth` reader failed.
    #[error(transparent)]
    Pth(#[from] pth::PthError),
    /// A tensor has a dtype the engine cannot use.
    #[error("{path}: tensor '{name}' has dtype {dtype}; expected a float or integer type")]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: String,
    },
    /// A tensor holds a NaN or an infinity (after conversion to f32); nothing was loaded.
    #[error(
        "{path}: tensor '{name}' holds {value} at element {index} (of {len}); expected finite \
         numbers (one NaN in the weights makes every output NaN)"
    )]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The first tensor holding one.
        name: String,
        /// The tensor's first such element (row-major).
        index: usize,
        /// Its value as f32: `NaN`, `inf` or `-inf`.
        value: f32,
        /// The tensor's number of elements.
        len: usize,
    },
    /// The tensors do not match the model; nothing was loaded.
    #[error("{source_name} does not match model {model}; nothing was loaded:\n  {}\n\
             hint: check --model and --classes against how the weights were made", problems.join("\n  "))]
    Mismatch {
        /// Where the tensors came from.
        source_name: String,
        /// The model.
        model: String,
        /// A summary: the counts, then the first few of each kind, one line each (a
        /// model of another size can differ in hundreds of tensors).
        problems: Vec<String>,
    },
}

/// `file` if every value of every tensor is a finite number, else the first one that is
/// not, named. Both readers of weights end here ([`read_checkpoint`], [`read_safetensors`]),
/// whatever the format and dtype, after conversion to f32 (where a float64 beyond f32's
/// range becomes an infinity): a NaN in a file is refused where it is read instead of
/// surfacing as a NaN loss or prediction. The parsers below them ([`parse_safetensors`],
/// [`pth::read_pth_bytes`]) convert faithfully and leave the judgement to this.
fn finite(file: TensorFile, path: &Path) -> Result<TensorFile, WeightsError> {
    for t in &file.tensors {
        let data = &t.tensor.data;
        if let Some(index) = data.iter().position(|v| !v.is_finite()) {
            return Err(WeightsError::NonFinite {
                path: path.to_path_buf(),
                name: t.name.clone(),
                index,
                value: data[index],
                len: data.len(),
            });
        }
    }
    Ok(file)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WeightsError + '_ {
    move |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads every tensor of a safetensors file, converting floating and integer dtypes to f32;
/// a value that is not a finite number is an error naming the tensor and the element.
pub fn read_safetensors(path: &Path) -> Result<TensorFile, WeightsError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    finite(parse_safetensors(&bytes, path)?, path)
}

/// Reads a checkpoint in either format: a zip archive (`PK` magic) is a PyTorch `.pth`
/// file (no metadata), anything else is read as safetensors. A value that is not a finite
/// number is an error naming the tensor and the element.
pub fn read_checkpoint(path: &Path) -> Result<TensorFile, WeightsError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    // a zip archive (torch.save), a bare pickle (the legacy torch.save) or a file named as
    // PyTorch names them goes to the .pth reader, whose errors say .pth
    let torch_name = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["pth", "pt", "tar", "ckpt"].contains(&e.to_ascii_lowercase().as_str()));
    if bytes.starts_with(b"PK\x03\x04") || bytes.first() == Some(&0x80) || torch_name {
        let what = path.display().to_string();
        let tensors = pth::read_pth_bytes(&bytes, &what)?
            .into_iter()
            .map(|t| NamedTensor {
                name: t.name,
                tensor: Tensor::new(t.shape, t.data),
                dtype: t.dtype,
            })
            .collect();
        let file = TensorFile {
            tensors,
            metadata: HashMap::new(),
        };
        return finite(file, path);
    }
    finite(parse_safetensors(&bytes, path)?, path)
}
