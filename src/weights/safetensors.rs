//! Safetensors files: reading (every float and integer dtype, converted to f32), parsing
//! bytes already in memory, and atomic writing of f32 and i64 tensors with metadata.

use super::{io_err, WeightsError};
use crate::util::tensor::Tensor;
use ::safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// A tensor read from a file, with the dtype it was stored in.
#[derive(Clone, Debug)]
pub struct NamedTensor {
    /// Name in the file.
    pub name: String,
    /// Values converted to f32.
    pub tensor: Tensor,
    /// Stored dtype, lower case (`float32`, `int64`, …).
    pub dtype: String,
}

/// The tensors and metadata of a safetensors file, in file order.
#[derive(Clone, Debug, Default)]
pub struct TensorFile {
    /// Tensors.
    pub tensors: Vec<NamedTensor>,
    /// `__metadata__` strings.
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&NamedTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Parses safetensors bytes; `path` names the source in errors.
pub fn parse_safetensors(bytes: &[u8], path: &Path) -> Result<TensorFile, WeightsError> {
    let fmt = |message: String| WeightsError::Format {
        path: path.to_path_buf(),
        message,
    };
    let st = SafeTensors::deserialize(bytes).map_err(|e| fmt(e.to_string()))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| fmt(e.to_string()))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    // keep the file's order (offsets), not the hash map's
    let mut views = st.tensors();
    views.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
    let mut tensors = Vec::with_capacity(views.len());
    for (name, v) in views {
        let d = v.data();
        let (data, dtype): (Vec<f32>, &str) = match v.dtype() {
            Dtype::F32 => (le::<4>(d).map(f32::from_le_bytes).collect(), "float32"),
            Dtype::F64 => (
                le::<8>(d).map(|b| f64::from_le_bytes(b) as f32).collect(),
                "float64",
            ),
            Dtype::I64 => (
                le::<8>(d).map(|b| i64::from_le_bytes(b) as f32).collect(),
                "int64",
            ),
            Dtype::I32 => (
                le::<4>(d).map(|b| i32::from_le_bytes(b) as f32).collect(),
                "int32",
            ),
            Dtype::U8 => (d.iter().map(|&b| b as f32).collect(), "uint8"),
            other => {
                return Err(WeightsError::Dtype {
                    path: path.to_path_buf(),
                    name,
                    dtype: format!("{other:?}"),
                })
            }
        };
        tensors.push(NamedTensor {
            name,
            tensor: Tensor::new(v.shape().to_vec(), data),
            dtype: dtype.to_string(),
        });
    }
    Ok(TensorFile { tensors, metadata })
}

fn le<const N: usize>(d: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    d.chunks_exact(N).map(|c| {
        let mut b = [0u8; N];
        b.copy_from_slice(c);
        b
    })
}

/// Writes f32 tensors (and i64 ones, given as `(name, shape, values)`) to a safetensors
/// file, atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    int64: &[(String, Vec<usize>, Vec<i64>)],
    metadata: HashMap<String, String>,
) -> Result<(), WeightsError> {
    let mut bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in tensors {
        let bytes = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        bufs.push((name.clone(), Dtype::F32, t.shape.clone(), bytes));
    }
    for (name, shape, v) in int64 {
        let bytes = v.iter().flat_map(|v| v.to_le_bytes()).collect();
        bufs.push((name.clone(), Dtype::I64, shape.clone(), bytes));
    }
    let fmt = |message: String| WeightsError::Format {
        path: path.to_path_buf(),
        message,
    };
    let mut views = Vec::new();
    for (name, dtype, shape, bytes) in &bufs {
        let v = ::safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
            .map_err(|e| fmt(e.to_string()))?;
        views.push((name.clone(), v));
    }
    let meta = (!metadata.is_empty()).then_some(metadata);
    let bytes = ::safetensors::serialize(views, meta).map_err(|e| fmt(e.to_string()))?;
    crate::util::atomic::write(path, &bytes).map_err(io_err(path))
}
